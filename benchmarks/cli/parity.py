"""``xfbench parity``: every backend computes the numpy reference's function."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xfbench.analytics.catalog import CATALOG
from xfbench.analytics.units import fmt_count
from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.argtypes import (
    backend_list,
    device_arg,
    load_model,
    positive_int,
)
from xfbench.benchmarks.cli.usage import UsageError
from xfbench.benchmarks.harness.workload import parse_list
from xfbench.reports.table import render_table


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


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser("parity", help="check that every backend computes the numpy reference's function")
    p.add_argument("--backend", type=backend_list, help="comma-separated: torch,tensorflow,mxnet (default: all)")
    p.add_argument("--model", type=parse_list, help="comma-separated catalog names or spec files (default: all)")
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument(
        "--device", type=device_arg, default="cpu", help="cpu, gpu or gpu:N (TF32 is turned off for the check)"
    )
    p.set_defaults(func=cmd_parity)
