"""``xfbench compare``: benchmark CSVs of different machines side by side."""

from __future__ import annotations

import argparse
from typing import Any

from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.usage import UsageError


def cmd_compare(args: argparse.Namespace) -> int:
    from xfbench.reports.compare import compare, format_text

    try:
        result = compare(args.files, args.out)
    except ValueError as exc:  # ReportError, SchemaError and the too-little-to-compare errors: one line each
        raise UsageError(usage.one_line(exc)) from None
    print(format_text(result))
    return 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser("compare", help="compare benchmark CSVs from different machines")
    p.add_argument("files", nargs="+", help="two or more report CSVs")
    p.add_argument("--out", default="reports/runs/compare", help="directory for comparison.csv/.md and plots")
    p.set_defaults(func=cmd_compare)
