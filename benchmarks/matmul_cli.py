"""``xfbench matmul``: the CPU-vs-GPU matmul sweep beside the roofline model (:mod:`benchmarks.matmul`).

``xfbench matmul [--backend numpy,torch] [--device cpu,gpu:0] [--sizes 64,256,1024] [--shapes 1760x1760x16]
[--dtypes float32,bfloat16] [--quick] [--predict-gpu h100] [--report-dir DIR]``
"""

from __future__ import annotations

import argparse
from typing import Any

from xfbench.analytics.roofline import DEVICE_CATALOG, get_device

_BACKENDS = ("numpy", "torch", "tensorflow", "mxnet")
_ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "mx": "mxnet", "np": "numpy"}
_DTYPES = ("float32", "float16", "bfloat16")


def _items(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _backends(text: str) -> tuple[str, ...]:
    out = []
    for item in _items(text):
        name = _ALIASES.get(item.lower(), item.lower())
        if name not in _BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown backend {item!r}; allowed: {', '.join(_BACKENDS)}")
        out.append(name)
    if not out:
        raise argparse.ArgumentTypeError(f"no backend given; allowed: {', '.join(_BACKENDS)}")
    return tuple(out)


def _devices(text: str) -> tuple[str, ...] | None:
    items = _items(text)
    if items == ["all"]:
        return None
    for d in items:
        if d not in ("cpu", "gpu") and not (d.startswith("gpu:") and d[4:].isdigit()):
            raise argparse.ArgumentTypeError(f"unknown device {d!r}; allowed: cpu, gpu, gpu:N or all")
    if not items:
        raise argparse.ArgumentTypeError("no device given; allowed: cpu, gpu, gpu:N or all")
    return tuple(items)


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
    for t in items:
        if t not in _DTYPES:
            raise argparse.ArgumentTypeError(f"unknown dtype {t!r}; allowed: {', '.join(_DTYPES)}")
    if not items:
        raise argparse.ArgumentTypeError(f"no dtype given; allowed: {', '.join(_DTYPES)}")
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


def cmd_matmul(args: argparse.Namespace) -> int:
    from xfbench.benchmarks.matmul import QUICK, SweepConfig, run_sweep, summary_table, with_overrides
    from xfbench.reports.writer import RunWriter

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
    with RunWriter(args.report_dir) as writer:
        result = run_sweep(cfg, writer)
    print(summary_table(result.rows))
    print()
    for note in result.notes:
        print(note)
    print(f"report: {result.csv_path}")
    if result.png_path is not None:
        print(f"plot: {result.png_path}")
    failed = [r for r in result.rows if r.get("status") == "error"]
    return 1 if failed else 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds ``matmul`` to the ``xfbench`` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
    p = sub.add_parser("matmul", help="CPU vs GPU matmul sweep with the roofline model, D2L 5.6.5 ex3/ex4")
    p.add_argument("--backend", type=_backends, help="comma-separated: numpy,torch,tensorflow,mxnet (default: all)")
    p.add_argument("--device", type=_devices, help="comma-separated: cpu, gpu, gpu:N, or all (default: all)")
    p.add_argument("--sizes", type=_sizes, help="square sizes n, comma-separated (default: 64..8192, powers of 2)")
    p.add_argument(
        "--shapes", type=_shapes, help="extra MxKxN shapes or 'none' (default: DeepBench 4096x4096x7000, 1760x1760x16)"
    )
    p.add_argument("--dtypes", type=_dtypes, help="comma-separated (default: float32,float16,bfloat16 where native)")
    p.add_argument("--quick", action="store_true", help="sizes 64..1024, short timing budget, small peak probes")
    p.add_argument("--min-time", type=_positive_float, help="seconds of timed calls per configuration (default 0.2)")
    p.add_argument("--predict-gpu", type=_gpu_name, help="catalog GPU for the crossover prediction (default h100)")
    p.add_argument("--no-exercises", action="store_true", help="skip D2L 5.6.5 ex3/ex4")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.add_argument("--report-dir", default=None, help="where the CSV and PNG go (default: reports/runs)")
    p.set_defaults(func=cmd_matmul)
