"""The ``xfbench`` command line.

Bad input (unknown model, unreadable or binary spec file, a report CSV that is malformed, bad batch size,
dtype, a backend named but not installed, a configuration whose memory ledger exceeds this machine's RAM,
...) prints one line ``xfbench: error: ...`` naming the bad value and what is allowed, and exits with code
2; no traceback (``benchmarks/usage.py``). ``xfbench run`` exits with code 5 when it measured nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from xfbench.analytics.catalog import CATALOG
from xfbench.analytics.costs import FRAMEWORKS, canonical_framework
from xfbench.analytics.predict import Prediction, predict
from xfbench.analytics.spec import ModelSpec, SpecError
from xfbench.analytics.units import fmt_bytes, fmt_count, fmt_flops
from xfbench.analytics.vocab import DEFAULT_DTYPE, DEFAULT_OPTIMIZER, DTYPES, OPTIMIZERS
from xfbench.benchmarks import options, usage
from xfbench.benchmarks.argtypes import backend_list, device_arg, positive_int
from xfbench.benchmarks.options import RunOptions
from xfbench.benchmarks.usage import UsageError
from xfbench.benchmarks.workload import parse_list
from xfbench.reports.paths import subprocess_env
from xfbench.reports.table import render_table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; allowed: e.g. 3x224x224 or 40,60") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"{text!r} has a non-positive size; allowed: positive integers")
    return shape


def _framework(text: str) -> str:
    try:
        return canonical_framework(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: {', '.join(FRAMEWORKS)}") from None


def load_model(name: str, args: argparse.Namespace) -> ModelSpec:
    """A catalog model or spec file, with the command's overrides; any failure is a one-line UsageError."""
    return usage.load_model(
        name,
        input_shape=getattr(args, "input_shape", None),
        num_classes=getattr(args, "num_classes", None),
        vocab=getattr(args, "vocab", None),
    )


def _add_model_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, help="per-sample input shape, channels first (e.g. 3x224x224)")
    p.add_argument("--num-classes", type=positive_int, help="override the number of classes")
    p.add_argument("--vocab", type=positive_int, help="override the vocabulary (lstm)")


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name, entry in CATALOG.items():
        spec = load_model(name, args)
        pred = predict(spec)
        rows.append([name, "x".join(map(str, entry.default_input)), fmt_count(pred.params), entry.source])
    print(render_table(["model", "input", "params (tf)", "source"], rows))
    return 0


def _prediction_text(pred: Prediction, binary: bool) -> str:
    rows = [
        [
            lp.index,
            lp.name,
            lp.type,
            "x".join(map(str, lp.output_shape)),
            fmt_count(lp.params),
            fmt_flops(lp.forward_flops),
            fmt_flops(lp.backward_flops),
            fmt_bytes(lp.activation_bytes, binary=binary),
        ]
        for lp in pred.layers
    ]
    out = [
        f"model {pred.model}  batch {pred.batch_size}  dtype {pred.dtype}  optimizer {pred.optimizer}  "
        f"parameter convention {pred.framework}",
        render_table(
            ["#", "layer", "type", "output", "params", "fwd FLOPs", "bwd FLOPs", "output bytes"],
            rows,
        ),
        "",
        f"parameters              {fmt_count(pred.params)}",
        f"forward FLOPs           {fmt_flops(pred.forward_flops)}  (conv/dense/LSTM, 2 per MAC)",
        f"  + bias adds           {fmt_flops(pred.forward_flops_with_bias)}",
        f"  activation / pool     {fmt_flops(pred.total('activation_flops'))} / {fmt_flops(pred.total('pool_flops'))}",
        f"backward FLOPs          {fmt_flops(pred.backward_flops)}",
        "",
    ]
    for ledger, textbook in (
        (pred.inference, pred.textbook_inference_bytes),
        (pred.training, pred.textbook_training_bytes),
    ):
        out.append(f"memory ledger: {ledger.phase}")
        for name, value in ledger.terms:
            out.append(f"  {name:<24}{fmt_bytes(value, binary=binary):>16}")
        out.append(f"  {'peak (predicted)':<24}{fmt_bytes(ledger.peak_bytes, binary=binary):>16}")
        out.append(f"  {'textbook lower bound':<24}{fmt_bytes(textbook, binary=binary):>16}")
    for note in pred.notes:
        out.append(f"note: {note}")
    return "\n".join(out)


def cmd_predict(args: argparse.Namespace) -> int:
    spec = load_model(args.model, args)
    if args.from_report:
        from xfbench.benchmarks.time_cli import predict_from

        return predict_from(args, spec)
    if args.to_report:
        raise UsageError("--to REPORT.csv needs --from REPORT.csv (the other machine's report)")
    try:
        pred = predict(spec, args.batch or 1, args.dtype, args.optimizer, args.framework)
    except (SpecError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    data = pred.as_dict()
    if args.device:
        from xfbench.analytics.roofline import model_time_estimate

        try:
            data["time_estimate"] = model_time_estimate(data, args.device)
        except ValueError as exc:
            raise UsageError(f"--device: {exc}") from None
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(_prediction_text(pred, args.mib))
        from xfbench.analytics.predict import simulated_text

        print(simulated_text(pred, args.mib))
        if args.device:
            est = data["time_estimate"]
            print(
                f"time estimate on {args.device} ({est['label']}, roofline from the device's datasheet peak): "
                f"forward {est['forward_s'] * 1e3:.3f} ms ({est.get('forward_bound', '')}-bound), "
                f"training step {est['training_s'] * 1e3:.3f} ms ({est.get('training_bound', '')}-bound)"
            )
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from xfbench.backends import BACKENDS, is_available
    from xfbench.benchmarks.parity import TOLERANCE, check_parity

    usage.check_tf32_env()
    specs = [load_model(m, args) for m in (args.model or list(CATALOG))]
    wanted = list(dict.fromkeys(args.backend or BACKENDS))
    for b in wanted:  # before anything is built: the inference ledger of each (model, backend) must fit
        for spec in specs:
            usage.require_feasible(
                spec,
                args.batch,
                "inference",
                framework=b,
                device=args.device,
                what=f"--model {spec.name} batch {args.batch}",
            )
    if args.backend:
        # Backends the user names must be usable here; the default set skips absent ones with a reason.
        usage.require_backends(wanted, in_process=True)
        present = wanted
    else:
        present = [b for b in BACKENDS if is_available(b)]
        if not present:
            raise UsageError(
                f"none of the backends {', '.join(BACKENDS)} is installed here; install one "
                "(pip install 'xfbench[torch]') or run it in a framework's tox env (.tox/torch/bin/xfbench parity)"
            )
        for b in BACKENDS:
            if b not in present:
                print(f"skipped {b}: not installed in this environment (tox -e {b})", file=sys.stderr)
    rows, failed = [], 0
    for b in present:
        for spec in specs:
            print(f"parity {b} {spec.name} ...", file=sys.stderr, flush=True)
            r = check_parity(b, spec, batch_size=args.batch, device=args.device)
            failed += not r.passed
            rows.append(
                [
                    r.model,
                    r.backend,
                    fmt_count(r.params_predicted),
                    fmt_count(r.params_counted),
                    "-" if r.max_rel_error is None else f"{r.max_rel_error:.2e}",
                    "pass" if r.passed else "FAIL" + (f" ({r.error})" if r.error else ""),
                ]
            )
    print(render_table(["model", "backend", "params predicted", "params counted", "max rel error", "result"], rows))
    print(f"tolerance: relative error < {TOLERANCE:g} (float32 vs float64 reference, {args.device}); {failed} failed")
    return 1 if failed else 0


def _check_run_options(args: argparse.Namespace) -> RunOptions:
    """What the benchmark conftest checks at configure time, checked here first so that a bad value is one
    ``xfbench: error:`` line (exit 2) before pytest starts: values, spec files, the memory each configuration
    the user named needs, and that every backend named with ``--backend`` imports (in a probe process)."""
    opts = options.parse(vars(args))
    usage.apply_tf32(opts.tf32)  # XFBENCH_TF32 for this process and every subprocess (pytest, its workers)
    usage.check_tf32_env()
    options.select_configs(opts, expand=False)  # this process stays framework-free: `all` is expanded by pytest
    if opts.report_dir is not None:
        usage.check_output_dir(opts.report_dir, "--report-dir")
    usage.require_backends(opts.named_backends)
    return opts


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    """Drives the same pytest run as ``pytest benchmarks --benchmark-only`` (one implementation), with the
    options given forwarded (:func:`options.pytest_args`)."""
    from pathlib import Path

    opts = _check_run_options(args)
    # The benchmark modules of this installation (a checkout's benchmarks/ or site-packages/xfbench/benchmarks);
    # the working directory stays the user's, so reports go to ./reports/runs unless --report-dir says otherwise.
    bench_dir = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += [
        "-o",
        "python_files=bench_*.py",
        "-o",
        "filterwarnings=ignore::xfbench.analytics.shapes.FlooredPaddingWarning",
    ]
    cmd += options.pytest_args(opts)
    cmd += extra
    print("running: " + " ".join(cmd), flush=True)
    return _run_pytest(cmd)


def _run_pytest(cmd: list[str]) -> int:
    """Runs the pytest child with its stderr relayed as it comes, except a usage error (pytest's ``ERROR:``
    lines, exit 4: e.g. an unknown argument passed through), which becomes one ``xfbench: error:`` line."""
    import subprocess
    import threading

    proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE, text=True, errors="replace")
    held: list[str] = []

    def relay() -> None:
        assert proc.stderr is not None
        hold = False
        for line in proc.stderr:
            hold = hold or line.startswith("ERROR: ")
            if hold:
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    pump = threading.Thread(target=relay, daemon=True)
    pump.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # the child got the same Ctrl-C: it stops after writing what it finished
        pump.join()
        sys.stderr.writelines(held)
        raise
    pump.join()
    if code == 4 and held:
        # pytest's usage error is xfbench's bad input: exit 2, one line (the argparse "error:" line if any).
        lines = [ln.strip() for ln in held if ln.strip()]
        detail = next((ln.split(": error: ", 1)[1] for ln in lines if ": error: " in ln), lines[0][len("ERROR: ") :])
        raise UsageError(f"pytest: {detail}")
    sys.stderr.writelines(held)
    return usage.EXIT_USAGE if code == 4 else code


def cmd_compare(args: argparse.Namespace) -> int:
    from xfbench.reports.compare import compare, format_text

    try:
        result = compare(args.files, args.out)
    except ValueError as exc:  # ReportError, SchemaError and the too-little-to-compare errors: one line each
        raise UsageError(usage.one_line(exc)) from None
    print(format_text(result))
    return 0


def latest_per_backend(directory: str) -> list[str]:
    """The newest report CSV of each backend in ``directory`` (what one ``tox -m bench`` just wrote).

    ``ReportError`` (one line naming the file) for a CSV there that is no readable report."""
    from pathlib import Path

    from xfbench.reports.writer import ReportError, read_report

    folder = Path(directory)
    if not folder.is_dir():
        raise ReportError(f"--latest {directory!r}: not a directory; allowed: a directory of report CSVs")
    newest: dict[str, tuple[float, str]] = {}
    for path in sorted(folder.glob("*.csv")):
        backends = set(read_report(path)["backend"])
        mtime = path.stat().st_mtime
        for backend in backends:
            if backend and (backend not in newest or newest[backend][0] < mtime):
                newest[backend] = (mtime, str(path))
    return sorted({p for _, p in newest.values()})


def cmd_merge(args: argparse.Namespace) -> int:
    from xfbench.reports.writer import merge_reports

    files = list(args.files)
    try:
        if args.latest:
            files += latest_per_backend(args.latest)
        if not files:
            raise UsageError("nothing to merge: give report files or --latest DIR with report CSVs in it")
        df = merge_reports(files, args.out)
    except ValueError as exc:  # ReportError, SchemaError: one line naming the file
        raise UsageError(usage.one_line(exc)) from None
    print(f"merged {len(files)} files ({', '.join(files)}), {len(df)} rows -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from xfbench.benchmarks import time_cli

    parser = _Parser(prog="xfbench", description="Deep-learning benchmarks beside analytic predictions.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the model catalog")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="per-layer shapes, params, FLOPs and the memory ledger")
    p.add_argument("model", help=f"catalog name ({', '.join(CATALOG)}) or a .json/.yaml spec file")
    p.add_argument("--batch", type=positive_int, default=None, help="default 1 (with --from: every batch measured)")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE)
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZER)
    p.add_argument("--framework", type=_framework, default="tensorflow", help="parameter convention (LSTM biases)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--mib", action="store_true", help="binary units (MiB) instead of decimal MB")
    p.add_argument("--device", help="estimate step times on a catalog device (h100, a100-80gb, t4, ...)")
    _add_model_overrides(p)
    time_cli.add_predict_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("parity", help="check that every backend computes the numpy reference's function")
    p.add_argument("--backend", type=backend_list, help="comma-separated: torch,tensorflow,mxnet (default: all)")
    p.add_argument("--model", type=parse_list, help="comma-separated catalog names or spec files (default: all)")
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument(
        "--device", type=device_arg, default="cpu", help="cpu, gpu or gpu:N (TF32 is turned off for the check)"
    )
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser(
        "run", help="the benchmark suite (same as: pytest benchmarks --benchmark-only ...); extra args go to pytest"
    )
    options.add_options(p.add_argument)
    p.set_defaults(func=cmd_run, passthrough=True)

    p = sub.add_parser("compare", help="compare benchmark CSVs from different machines")
    p.add_argument("files", nargs="+", help="two or more report CSVs")
    p.add_argument("--out", default="reports/runs/compare", help="directory for comparison.csv/.md and plots")
    p.set_defaults(func=cmd_compare)

    # Subcommands that live beside their implementation: each module has register(sub, UsageError).
    from xfbench.benchmarks import exercises_cli, matmul_cli, scaling_cli

    time_cli.register(sub, UsageError)
    matmul_cli.register(sub, UsageError)
    scaling_cli.register(sub, UsageError)
    exercises_cli.register(sub, UsageError)
    from xfbench.benchmarks import memory_cli

    memory_cli.register(sub, UsageError)

    p = sub.add_parser("merge", help="merge report CSVs (same schema version) into one")
    p.add_argument("files", nargs="*")
    p.add_argument("--latest", metavar="DIR", help="also merge the newest CSV of each backend in DIR")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "passthrough", False):
            return int(args.func(args, extra))
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        return int(args.func(args))

    return usage.run_main(command)


if __name__ == "__main__":
    sys.exit(main())
