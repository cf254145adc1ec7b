"""``xfbench scale``: data-parallel scaling of a training step on N workers, beside the ring all-reduce model.

``xfbench scale [--backend torch,tensorflow,mxnet] [--model lenet,mlp,cnn3] [--workers 1,2] [--batch 8]
[--global-batch B] [--mode strong,weak] [--steps 5] [--python mxnet=/path/to/python] [--report-dir DIR]``

Writes ``kind=scaling`` and ``kind=allreduce`` rows into a new report CSV and ``<csv stem>-scaling.png``
(speedup vs N: measured, predicted, ideal) beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from xfbench.analytics.vocab import DEFAULT_OPTIMIZER, OPTIMIZERS
from xfbench.benchmarks.cli.argtypes import positive_int
from xfbench.benchmarks.cli.usage import EXIT_NOTHING_MEASURED
from xfbench.benchmarks.harness.workload import parse_list


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: comma-separated positive integers, e.g. 1,2,4") from None
    if not out or any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: comma-separated positive integers, e.g. 1,2,4")
    return out


def _check_resources(plan: Any, backends: list[str]) -> None:
    """Refuses, before any worker starts, what this machine cannot hold: on the CPU more workers than logical
    cores (each worker is one single-threaded process on its own core), and a step whose memory ledger, times
    the workers that each hold it, exceeds this machine's RAM."""
    from xfbench.analytics.scaling import per_worker_batch
    from xfbench.benchmarks.cli.usage import UsageError, require_feasible

    cores = os.cpu_count() or 1
    if plan.device == "cpu" and max(plan.workers) > cores:
        raise UsageError(
            f"--workers {max(plan.workers)}: this machine has {cores} logical cores and each CPU worker is a "
            f"single-threaded process on its own core; allowed: 1..{cores}"
        )
    for name in plan.models:
        spec = plan.spec(name)
        for n in plan.workers:
            batches = set()
            if "weak" in plan.modes:
                batches.add(plan.batch)
            if "strong" in plan.modes:
                batches.add(per_worker_batch(plan.strong_batch, n, "strong"))
            for batch in batches:
                for backend in backends:
                    require_feasible(
                        spec,
                        batch,
                        "training",
                        optimizer=plan.optimizer,
                        framework=backend,
                        device=plan.device,
                        copies=n,
                        what=f"--model {name} training at per-worker batch {batch} on {n} workers",
                    )


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds ``scale`` to the ``xfbench`` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
    p = sub.add_parser("scale", help="data-parallel scaling (strong/weak) on N workers vs the ring all-reduce model")
    p.add_argument("--backend", type=parse_list, help="comma-separated: torch,tensorflow,mxnet (default: all)")
    p.add_argument(
        "--model", type=parse_list, help="comma-separated catalog names or spec files (default: lenet,mlp,cnn3)"
    )
    p.add_argument("--workers", type=_ints, help="comma-separated worker counts including 1 (default: 1,2,.. cores)")
    p.add_argument("--batch", type=positive_int, default=8, help="per-worker batch of weak scaling (default 8)")
    p.add_argument("--global-batch", type=positive_int, help="global batch of strong scaling (default batch * max N)")
    p.add_argument("--mode", type=parse_list, default=("strong", "weak"), help="strong, weak or both (default both)")
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZER)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: NCCL / one GPU per worker")
    p.add_argument("--full-input", action="store_true", help="catalog input sizes (default: cnn3 at 3x64x96)")
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="BACKEND=PATH",
        help="interpreter for a backend's workers (repeatable), e.g. mxnet=/venvs/mx/bin/python",
    )
    p.add_argument("--report-dir", default=None, help="default: reports/runs")

    def run(args: argparse.Namespace) -> int:
        from xfbench.backends import BACKENDS, canonical_name, is_available
        from xfbench.benchmarks.cli.usage import (
            check_output_dir,
            check_tf32_env,
            load_model,
            one_line,
            require_backends,
        )
        from xfbench.benchmarks.scaling import (
            DEFAULT_MODELS,
            ScalingPlan,
            default_workers,
            format_summary,
            plot_path,
            plot_scaling,
            run_scaling,
        )
        from xfbench.reports.writer import ReportError, RunWriter

        check_tf32_env()

        try:
            backends = [canonical_name(b) for b in args.backend] if args.backend else list(BACKENDS)
            pythons = {}
            for item in args.python:
                name, sep, path = item.partition("=")
                if not sep or not path:
                    raise ValueError(f"--python {item!r}; allowed: BACKEND=PATH")
                if not os.path.exists(path):
                    raise ValueError(f"--python {item!r}: {path} does not exist; allowed: BACKEND=PATH of a python")
                if not os.path.isfile(path) or not os.access(path, os.X_OK):
                    raise ValueError(f"--python {item!r}: {path} is not an executable file; allowed: a python")
                pythons[canonical_name(name)] = path
        except ValueError as exc:
            raise usage_error(str(exc)) from None
        for name in args.model or ():
            load_model(name, option="--model")  # a missing, binary or malformed spec file: one line
        plan = ScalingPlan(
            models=tuple(args.model) if args.model else DEFAULT_MODELS,
            workers=tuple(sorted(set(args.workers))) if args.workers else default_workers(args.device),
            batch=args.batch,
            global_batch=args.global_batch,
            modes=tuple(args.mode),
            steps=args.steps,
            warmup=max(0, args.warmup),
            optimizer=args.optimizer,
            device=args.device,
            full_input=args.full_input,
            python=pythons,
        )
        from xfbench.analytics.spec import SpecError
        from xfbench.benchmarks.scaling import check_plan

        try:
            check_plan(plan)
        except (ValueError, SpecError) as exc:
            raise usage_error(str(exc).splitlines()[0]) from None
        _check_resources(plan, backends)
        if args.report_dir is not None:
            check_output_dir(args.report_dir, "--report-dir")
        if args.backend:
            # Backends the user names must import (in their --python where given); the default set skips.
            require_backends(backends, python=pythons)
        try:
            writer = RunWriter(args.report_dir)
        except ReportError as exc:
            raise usage_error(f"--report-dir: {one_line(exc)}") from None
        with writer:
            rows = run_scaling(
                backends, plan, writer, is_available, progress=lambda m: print(m, file=sys.stderr, flush=True)
            )
        print(format_summary(rows))
        png = plot_scaling(rows, plot_path(writer.path))
        print(f"report: {writer.path}" + (f"\nplot: {png}" if png else ""))
        if any(r["status"] == "error" for r in rows):
            return 1
        if not any(r["status"] == "ok" for r in rows):
            print(f"xfbench: measured nothing: every selected configuration was skipped (see {writer.path})")
            return EXIT_NOTHING_MEASURED
        return 0

    p.set_defaults(func=run)
