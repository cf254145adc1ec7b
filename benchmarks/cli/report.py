"""``xfbench report``: one self-contained HTML page of one or more benchmark CSVs (``reports/html.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.usage import UsageError


def cmd_report(args: argparse.Namespace) -> int:
    if args.markdown is not None:
        return _cmd_markdown(args)
    from xfbench.reports.html import write_report_html

    try:
        out = write_report_html(args.files, args.out, args.reference)
    except ValueError as exc:  # ReportError, SchemaError: one line naming the file or option
        raise UsageError(usage.one_line(exc)) from None
    print(out)
    return 0


def _cmd_markdown(args: argparse.Namespace) -> int:
    """``xfbench report --markdown DIR``: the measured pages of docs/ from the reference CSVs (reports/markdown.py)."""
    from xfbench.reports.markdown import write_all

    if args.files:
        raise UsageError(
            f"--markdown reads the committed reference CSVs, not {args.files[0]!r}; allowed: --markdown DIR alone"
        )
    try:
        paths = write_all(args.markdown)
    except ValueError as exc:  # ReportError, SchemaError: one line
        raise UsageError(usage.one_line(exc)) from None
    for path in paths:
        print(path)
    return 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of benchmark CSVs (several: a comparison)")
    p.add_argument("files", nargs="*", help="report CSVs; several: one machine (or run) each")
    p.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument(
        "--reference",
        help="the machine the others are compared with: its alias (A, B, ...) or its file (default: the first)",
    )
    p.add_argument(
        "--markdown",
        metavar="DIR",
        help="write the measured Markdown pages of docs/ (from reports/reference/*.csv, reports/markdown.py) "
        "into DIR instead of an HTML page",
    )
    p.set_defaults(func=cmd_report)
