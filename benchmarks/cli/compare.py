"""``xfbench compare``: benchmark CSVs of different machines side by side, the verdict first.

It prints the machines' legend (alias = file: machine), the geometric mean of the time ratios per backend and
phase (the verdict, "x faster/slower" than the reference, the first file), then the paired rows, model rows
first; calibration and noise rows only with ``--all``. ``--format md`` prints the same as Markdown tables.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.usage import UsageError

FORMATS = ("text", "md")


def cmd_compare(args: argparse.Namespace) -> int:
    from xfbench.reports.compare import compare, format_markdown, format_text

    try:
        result = compare(args.files, args.out, include_all=args.all)
    except ValueError as exc:  # ReportError, SchemaError and the too-little-to-compare errors: one line each
        raise UsageError(usage.one_line(exc)) from None
    if args.format == "md":
        print(format_markdown(result), end="")
        files = [result.csv_path, result.md_path, *result.plot_paths]
        print("written: " + ", ".join(str(f) for f in files), file=sys.stderr)
    else:
        print(format_text(result))
    return 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser(
        "compare",
        help="compare benchmark CSVs from different machines: geometric means first, then the rows",
        description="Pair equal configurations across report CSVs (the first file is the reference machine) and "
        "print the geometric mean of the time ratios per backend and phase, then the rows.",
    )
    p.add_argument("files", nargs="+", help="two or more report CSVs; the first is the reference machine")
    p.add_argument("--all", action="store_true", help="also show calibration and noise rows (gemm:..., noise:...)")
    p.add_argument("--format", choices=FORMATS, default="text", help="text (default) or md (Markdown tables)")
    p.add_argument("--out", default="reports/runs/compare", help="directory for comparison.csv/.md and plots")
    p.set_defaults(func=cmd_compare)
