"""``xfbench merge``: report CSVs (same schema version) into one."""

from __future__ import annotations

import argparse
from typing import Any

from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.usage import UsageError


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


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser("merge", help="merge report CSVs (same schema version) into one")
    p.add_argument("files", nargs="*")
    p.add_argument("--latest", metavar="DIR", help="also merge the newest CSV of each backend in DIR")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd_merge)
