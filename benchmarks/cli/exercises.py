"""``xfbench exercises [--backend ..] [--device ..] [--only ID] [--memory-budget 3GB] [--analytic-only]``.

Checks the textbook exercises of :mod:`analytics.exercises`: prints a table (claim, predicted, measured,
verdict) and writes a markdown + CSV report under ``reports/exercises/``. Backends that are not installed in
this environment are reported as skipped (run the command once per framework environment).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    from xfbench.analytics.exercises import select
    from xfbench.analytics.vocab import expand_devices
    from xfbench.backends import BACKENDS, canonical_name, is_available
    from xfbench.benchmarks.cli.usage import require_backends
    from xfbench.benchmarks.exercises import TABLE_HEADERS, analytic_results, run_backend, table_rows, write_reports
    from xfbench.benchmarks.harness.worker import parse_size
    from xfbench.reports.table import render_table

    try:
        exercises = select(args.only)
    except KeyError as exc:
        raise usage_error(str(exc.args[0])) from None
    try:
        wanted = [canonical_name(b) for b in args.backend] if args.backend else list(BACKENDS)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    if args.memory_budget not in (None, "auto"):
        try:
            budget = parse_size(args.memory_budget)
        except ValueError as exc:
            raise usage_error(f"--memory-budget: {exc}") from None
        _check_budget(args.memory_budget, budget, usage_error)
    if args.backend and not args.analytic_only:
        # Backends the user names must import here; the default set reports absent ones as skipped.
        require_backends(wanted, in_process=True)

    results = analytic_results(exercises)
    skipped: list[str] = []
    if not args.analytic_only:
        for backend in wanted:
            if not is_available(backend):
                skipped.append(f"{backend}: not installed in this environment")
                continue
            from xfbench.backends import get_backend

            try:
                devices = get_backend(backend).list_devices()
            except Exception as exc:
                skipped.append(f"{backend}: {type(exc).__name__}: {exc}")
                continue
            for dev in expand_devices(args.device, devices):
                if dev not in devices:
                    skipped.append(f"{backend}: device {dev} not visible (has: {', '.join(devices)})")
                    continue
                print(f"running {len(exercises)} exercises on {backend}/{dev} ...", file=sys.stderr, flush=True)
                results += run_backend(
                    backend,
                    dev,
                    exercises,
                    args.memory_budget,
                    progress=lambda m: print(m, file=sys.stderr, flush=True),
                )
    order = {e.id: i for i, e in enumerate(exercises)}
    results.sort(key=lambda r: (order[r.exercise.id], r.backend != "analytic"))
    print(render_table(TABLE_HEADERS, table_rows(results)))
    for s in skipped:
        print(f"skipped: {s}")
    command = "xfbench exercises " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "xfbench exercises"
    if not args.no_report:
        csv_path, md_path = write_reports(results, command)
        print(f"report: {md_path}\nCSV: {csv_path}")
    return 0


def _check_budget(text: str, budget: int, usage_error: type[Exception]) -> None:
    """The largest-batch search raises the batch until the worker fails under RLIMIT_AS = ``budget``. Address
    space is at least the resident memory, so a budget above RAM + swap lets the search exhaust the machine
    (the kernel's OOM killer) before the limit is reached: refused, with the bytes."""
    import psutil

    ram, swap = int(psutil.virtual_memory().total), int(psutil.swap_memory().total)
    if budget > ram + swap:
        raise usage_error(
            f"--memory-budget {text!r}: {budget:,} bytes is more than this machine's RAM + swap "
            f"({ram + swap:,} bytes); allowed: up to {ram + swap:,} bytes, or auto"
        )


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds the subcommand to the `xfbench` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
    from xfbench.analytics.vocab import DEVICE_HELP
    from xfbench.benchmarks.cli.argtypes import device_list

    def _list(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    p = sub.add_parser("exercises", help="check the textbook exercises: claim, prediction, measurement, verdict")
    p.add_argument("--backend", type=_list, default=None, help="comma-separated backends (default: all installed)")
    p.add_argument(
        "--device",
        type=device_list,
        default=["cpu"],
        help=f"comma-separated devices: {DEVICE_HELP}; 'all' means every device the backend sees (default: cpu)",
    )
    p.add_argument("--only", type=_list, default=None, help="exercise ids or id prefixes, comma-separated")
    p.add_argument(
        "--memory-budget",
        default="auto",
        help="CPU budget for the largest-batch search, enforced on the worker with RLIMIT_AS (virtual address "
        "space), e.g. 3GB; 'auto' = the batch-1 address space rounded up to 256 MiB, + 256 MiB",
    )
    p.add_argument("--analytic-only", action="store_true", help="only the framework-free rows (no measurement)")
    p.add_argument("--no-report", action="store_true", help="print the table only")
    p.set_defaults(func=lambda args: _cmd(args, usage_error))
