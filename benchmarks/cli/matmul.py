"""``xfbench matmul``: the CPU-vs-GPU matmul sweep beside the roofline model (:mod:`benchmarks.matmul`).

``xfbench matmul [--backend numpy,torch] [--device cpu,gpu:0] [--sizes 64,256,1024] [--shapes 1760x1760x16]
[--dtypes float32,bfloat16] [--quick] [--predict-gpu h100] [--report-dir DIR]``
"""

from __future__ import annotations

import argparse
from typing import Any

from xfbench.analytics import vocab
from xfbench.analytics.roofline import DEVICE_CATALOG, get_device
from xfbench.benchmarks.cli.argtypes import device_list
from xfbench.benchmarks.cli.usage import EXIT_NOTHING_MEASURED
from xfbench.benchmarks.cli.usage import UsageError as _UsageError
from xfbench.benchmarks.harness.workload import parse_list as _items

_BACKENDS = ("numpy", *vocab.BACKENDS)  # numpy: the baseline every backend is compared with


def _backends(text: str) -> tuple[str, ...]:
    try:
        out = tuple(vocab.canonical_backend(item, _BACKENDS) for item in _items(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not out:
        raise argparse.ArgumentTypeError(f"no backend given; allowed: {', '.join(_BACKENDS)}")
    return out


def _devices(text: str) -> tuple[str, ...] | None:
    """``None`` for ``all``: every device each backend sees (the sweep lists them)."""
    devices = device_list(text)
    return None if devices == ["all"] else tuple(devices)


def _sizes(text: str) -> tuple[int, ...]:
    out = []
    for item in _items(text):
        if not item.isdigit() or int(item) <= 0:
            raise argparse.ArgumentTypeError(f"size {item!r} is not a positive integer; allowed: e.g. 64,256,1024")
        out.append(int(item))
    if not out:
        raise argparse.ArgumentTypeError("no size given; allowed: positive integers, comma-separated")
    return tuple(out)


def _shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    if text.strip().lower() == "none":
        return ()
    out = []
    for item in _items(text):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"shape {item!r} is not MxKxN; allowed: e.g. 1760x1760x16, or none")
        m, k, n = (int(p) for p in parts)
        out.append((m, k, n))
    return tuple(out)


def _dtypes(text: str) -> tuple[str, ...]:
    items = _items(text)
    try:
        for t in items:
            vocab.dtype_bytes(t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not items:
        raise argparse.ArgumentTypeError(f"no dtype given; allowed: {', '.join(vocab.DTYPES)}")
    return tuple(items)


def _gpu_name(text: str) -> str:
    try:
        spec = get_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if spec.kind != "gpu":
        gpus = [k for k, v in DEVICE_CATALOG.items() if v.kind == "gpu"]
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU; allowed: {', '.join(gpus)}")
    return spec.name


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: seconds > 0") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive; allowed: seconds > 0")
    return value


def _check_feasible(cfg: Any) -> None:
    """The largest product's operands and result (A, B, C; two copies of each where a GPU is timed with
    transfers, one on each side) must fit this machine's RAM: an absurd size is refused before allocation."""
    from xfbench.analytics.memory import InfeasibleError, Ledger, check_feasible
    from xfbench.analytics.roofline import matmul_bytes
    from xfbench.benchmarks.cli.usage import host_ram_bytes

    shapes = [(n, n, n) for n in cfg.sizes] + list(cfg.shapes)
    if not shapes:
        return
    need, (m, k, n), dtype = max((matmul_bytes(s[0], s[1], s[2], dt), s, dt) for s in shapes for dt in cfg.dtypes)
    gpu = cfg.devices is None or any(d != "cpu" for d in cfg.devices)
    copies = 2 if gpu else 1
    ledger = Ledger("matmul", (("A, B and C", need), ("host copies for transfers", need * (copies - 1))))
    what = f"--sizes/--shapes {m}x{k}x{n} {dtype}"
    try:
        check_feasible(ledger, host_ram_bytes(), what, allowed="smaller sizes or shapes")
    except InfeasibleError as exc:
        raise _UsageError(str(exc)) from None


def cmd_matmul(args: argparse.Namespace) -> int:
    from xfbench.benchmarks.cli.usage import apply_tf32, check_output_dir, check_tf32_env, one_line, require_backends
    from xfbench.benchmarks.matmul import QUICK, SweepConfig, run_sweep, summary_table, with_overrides
    from xfbench.reports.writer import ReportError, RunWriter

    base = QUICK if args.quick else SweepConfig()
    cfg = with_overrides(
        base,
        backends=args.backend,
        sizes=args.sizes,
        shapes=args.shapes,
        dtypes=args.dtypes,
        min_time_s=args.min_time,
        predict_gpu=args.predict_gpu,
    )
    cfg = with_overrides(cfg, devices=args.device, exercises=False if args.no_exercises else None)
    if args.no_plot:
        cfg = with_overrides(cfg, plot=False)
    _check_feasible(cfg)
    if args.report_dir is not None:
        check_output_dir(args.report_dir, "--report-dir")
    apply_tf32(args.tf32)  # before any backend is imported: get_backend applies the policy it finds
    check_tf32_env()
    if args.backend:
        # Backends the user names must import here; the default set records absent ones as skipped rows.
        require_backends([b for b in args.backend if b != "numpy"], in_process=True)
    try:
        writer = RunWriter(args.report_dir)
    except ReportError as exc:
        raise _UsageError(f"--report-dir: {one_line(exc)}") from None
    with writer:
        result = run_sweep(cfg, writer)
    print(summary_table(result.rows))
    print()
    for note in result.notes:
        print(note)
    print(f"report: {result.csv_path}")
    if result.png_path is not None:
        print(f"plot: {result.png_path}")
    failed = [r for r in result.rows if r.get("status") == "error"]
    if failed:
        return 1
    if not any(r.get("status") == "ok" for r in result.rows):
        print(f"xfbench: measured nothing: every selected configuration was skipped (see {result.csv_path})")
        return EXIT_NOTHING_MEASURED
    return 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds ``matmul`` to the ``xfbench`` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
    from xfbench.benchmarks.cli.argtypes import tf32_arg

    p = sub.add_parser("matmul", help="CPU vs GPU matmul sweep with the roofline model, D2L 5.6.5 ex3/ex4")
    p.add_argument("--backend", type=_backends, help="comma-separated: numpy,torch,tensorflow,mxnet (default: all)")
    p.add_argument("--device", type=_devices, help="comma-separated: cpu, gpu, gpu:N, or all (default: all)")
    p.add_argument("--sizes", type=_sizes, help="square sizes n, comma-separated (default: 64..8192, powers of 2)")
    p.add_argument(
        "--shapes", type=_shapes, help="extra MxKxN shapes or 'none' (default: DeepBench 4096x4096x7000, 1760x1760x16)"
    )
    p.add_argument("--dtypes", type=_dtypes, help="comma-separated (default: float32,float16,bfloat16 where native)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="sizes 64..1024, short timing budget, small CPU peak probes (GPU probes keep their size)",
    )
    p.add_argument("--min-time", type=_positive_float, help="seconds of timed calls per configuration (default 0.2)")
    p.add_argument("--predict-gpu", type=_gpu_name, help="catalog GPU for the crossover prediction (default h100)")
    p.add_argument("--no-exercises", action="store_true", help="skip D2L 5.6.5 ex3/ex4")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.add_argument("--report-dir", default=None, help="where the CSV and PNG go (default: reports/runs)")
    p.add_argument("--tf32", type=tf32_arg, help="TF32 matmuls on GPUs: on or off (sets XFBENCH_TF32)")
    p.set_defaults(func=cmd_matmul)
