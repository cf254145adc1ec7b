"""Writing and reading report CSV files (schema: ``reports.schema``).

One file per run under ``reports/runs/`` (git-ignored), named
``<UTC yyyymmddTHHMMSS>-<host>-<pid>-<8 hex>.csv`` and opened exclusively, so concurrent runs never share a
file. Each row is flushed and fsync'ed as soon as it is written: a crash or kill loses nothing already measured.

The files are plain CSV, so every tool opens them with its defaults (``pandas.read_csv(path)``,
``csv.DictReader``, a spreadsheet, DuckDB): the first line is the header ``COLUMN_NAMES``, then one row per
line; the schema version is the ``schema_version`` column of every row, and the schema's history lives in
``reports.schema``. Files written before issue 22 began with a ``#`` history line (``HISTORY_COMMENT``);
``read_report`` still reads them, skipping leading ``#`` lines.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import numbers
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
from xfbench.reports.env import ENV_COLUMNS, fingerprint
from xfbench.reports.paths import runs_dir
from xfbench.reports.schema import (
    COLUMN_NAMES,
    COLUMNS,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    STATUSES,
    WRITER_COLUMNS,
    columns_of_type,
    columns_of_version,
)

# The cell types of the schema's table (reports.schema.COLUMNS): integers (nullable), floats; every other column
# is text ("" when empty). write_row refuses a row whose cell is not of its column's type; read_report checks and
# parses them.
INT_COLUMNS: tuple[str, ...] = columns_of_type("int")
FLOAT_COLUMNS: tuple[str, ...] = columns_of_type("float")
_NUMERIC: tuple[tuple[str, bool], ...] = tuple((c.name, c.type == "int") for c in COLUMNS if c.type != "str")
SORT_COLUMNS = ("machine", "backend", "model", "phase", "batch_size")


class ReportError(ValueError):
    """A report file that cannot be read or written: the message is one line naming the file and the fault."""


class SchemaError(ReportError):
    """A report file of another schema version, or missing columns."""


def _format(value: Any) -> str:
    """One CSV cell: ints exact, floats with round-trip (repr) precision, NaN/None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        return "" if math.isnan(f) else repr(f)
    return str(value)


def _safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", host) or "host"


class RunWriter:
    """Appends rows of one benchmark run to a new CSV file, durably (flush + fsync per row).

    ``directory`` defaults to ``reports/runs/``. ``framework_versions`` (backend -> version) fills
    ``framework_version`` for rows that omit it; ``blas`` fills the ``blas`` column.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        framework_versions: Mapping[str, str] | None = None,
        blas: str = "",
    ) -> None:
        self._dir = Path(directory) if directory is not None else runs_dir()
        self._versions = dict(framework_versions or {})
        self._blas = blas
        now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self._run_id = f"{now}-{_safe_host(socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._path = self._dir / f"{self._run_id}.csv"
        # "x": exclusive creation, so even a (vanishingly unlikely) name clash fails instead of interleaving.
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._fh: io.TextIOWrapper | None = open(self._path, "x", encoding="utf-8", newline="")
        except OSError as exc:
            raise ReportError(
                f"{self._dir}: cannot create a report file there ({exc.strerror or type(exc).__name__}); "
                "allowed: a writable directory"
            ) from None
        self._counts: Counter[str] = Counter()
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._csv.writerow(COLUMN_NAMES)  # plain CSV: the header is the first line
        self._sync()

    @property
    def run_id(self) -> str:
        """The file stem; also the ``run_id`` column of every row."""
        return self._run_id

    @property
    def path(self) -> Path:
        """The CSV file of this run."""
        return self._path

    @property
    def json_path(self) -> Path:
        """Where pytest-benchmark's JSON for this run goes (same stem, ``.json``)."""
        return self._path.with_suffix(".json")

    def _sync(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Validate, complete (schema_version, run_id, timestamp, environment) and durably write one row.

        Raises ``ValueError`` (and writes nothing) for unknown columns, columns the writer owns, a missing/unknown
        ``status``, or a cell that is not of its column's type (``INT_COLUMNS``, ``FLOAT_COLUMNS``: a number or
        blank), which would make the file unreadable for ``read_report``.
        """
        if self._fh is None:
            raise ValueError(f"{self._path}: writer is closed")
        unknown = sorted(set(row) - set(COLUMN_NAMES))
        if unknown:
            raise ValueError(f"unknown report column(s): {', '.join(unknown)}")
        owned = sorted(set(row) & set(WRITER_COLUMNS))
        if owned:
            raise ValueError(f"column(s) set by the writer, not the caller: {', '.join(owned)}")
        status = row.get("status")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        full: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self._run_id,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }
        env = fingerprint(self._versions, self._blas)
        for col in ENV_COLUMNS:
            full[col] = env.get(col, "")
        backend = row.get("backend")
        if isinstance(backend, str) and backend in self._versions:
            full["framework_version"] = self._versions[backend]
        # Caller values win over the fingerprint, except blanks (None / "") which do not erase it.
        for key, value in row.items():
            if value is None or value == "":
                full.setdefault(key, "")
            else:
                full[key] = value
        cells = {col: _format(full.get(col, "")) for col in COLUMN_NAMES}
        for col, integer in _NUMERIC:
            fault = _number_fault(col, cells[col], integer)
            if fault:
                raise ValueError(fault)
        self._csv.writerow(cells.values())
        self._sync()
        self._counts[str(status)] += 1

    @property
    def status_counts(self) -> dict[str, int]:
        """Rows written so far per ``status`` (ok, skipped, oom, error)."""
        return dict(self._counts)

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._fh is not None:
            self._sync()
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _readable_text() -> str:
    older = [str(v) for v in READABLE_VERSIONS if v != SCHEMA_VERSION]
    return f"version {SCHEMA_VERSION}" + (f" (and older {', '.join(older)})" if older else "")


def _version_error(path: str | os.PathLike[str], found: str) -> SchemaError:
    return SchemaError(
        f"{path}: schema version {found}, this xfbench reads {_readable_text()}; "
        "re-run the benchmarks or use the xfbench release that wrote it"
    )


def read_text_file(path: str | os.PathLike[str], what: str = "a report CSV") -> str:
    """The UTF-8 text of a regular file; ``ReportError`` (one line naming the file) for anything else:
    missing, a directory, a device or pipe, unreadable, binary (a NUL byte) or not UTF-8."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ReportError(f"{path}: is a directory; allowed: {what} file")
        if p.exists() and not p.is_file():
            raise ReportError(f"{path}: not a regular file (a device, pipe or socket); allowed: {what} file")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file; allowed: {what} file") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror or type(exc).__name__}); allowed: {what} file") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ReportError(f"{path}: binary content (a NUL byte at offset {nul}); allowed: {what} file (text)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not UTF-8 text (byte {exc.start}); allowed: {what} file (text)") from None


def _number_fault(column: str, cell: str, integer: bool) -> str | None:
    """Why ``cell`` is not a value of a numeric column (one line), or ``None``: blank, or a number (an integer
    column's number must be a whole one; " 3 " and "3.0" are 3)."""
    text = cell.strip()
    if not text:
        return None
    try:
        value: float | None = float(text)
    except ValueError:
        value = None
    if value is None or (integer and not (math.isfinite(value) and value == int(value))):
        kind = "an integer" if integer else "a number"
        return f"column {column} = {cell!r} is not {kind}; allowed: {kind} or blank"
    return None


def read_report(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one report file into a DataFrame with the schema's columns, typed (see INT_/FLOAT_COLUMNS).

    Leading ``#`` comment lines are skipped (files written before issue 22 began with a history line; files
    written now are plain CSV). Files of every version in ``READABLE_VERSIONS`` are read; the
    columns an older version lacks (``ADDED_IN``) are blank. Raises ``SchemaError`` for a file without a
    ``schema_version`` column, of another schema version, or with missing columns, and ``ReportError`` (one
    line naming the file, and the line where it applies) for a file that is not a readable report: missing,
    a directory, binary, empty, malformed CSV, a truncated row, a non-numeric cell in a numeric column or an
    unknown status.
    """
    text = read_text_file(path)
    lines = text.splitlines(keepends=True)
    # Only leading comments: a '#' inside a quoted message further down is data.
    skip = 0
    while skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    body = "".join(lines[skip:])
    if not body.strip():
        raise _version_error(path, "missing (empty file)")
    reader = csv.reader(io.StringIO(body), strict=True)
    records: list[tuple[int, list[str]]] = []  # (line number in the file where the record ends, fields)
    try:
        for record in reader:
            if record:  # blank lines are no rows
                records.append((skip + reader.line_num, record))
    except csv.Error as exc:
        raise ReportError(f"{path}: line {skip + reader.line_num}: malformed CSV ({exc})") from None
    header_line, header = records[0]
    if "schema_version" not in header:
        raise _version_error(path, "missing (no schema_version column)")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise ReportError(f"{path}: line {header_line}: column(s) {', '.join(dupes)} appear more than once")
    width = len(header)
    rows = []
    for line, record in records[1:]:
        if len(record) < width:
            raise ReportError(
                f"{path}: line {line}: truncated row ({len(record)} of {width} fields; a run killed while "
                "writing it?); delete that line to use the rest"
            )
        if len(record) > width:
            raise ReportError(f"{path}: line {line}: {len(record)} fields, the header has {width}")
        rows.append((line, dict(zip(header, record))))
    versions = sorted({r["schema_version"].strip() for _, r in rows})
    readable = {str(v) for v in READABLE_VERSIONS}
    if any(v not in readable for v in versions):
        raise _version_error(path, ", ".join(v or "blank" for v in versions))
    newest = max((int(v) for v in versions), default=READABLE_VERSIONS[0])
    missing = [c for c in columns_of_version(newest) if c not in header]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {', '.join(missing)} of schema version {newest}")
    for line, row in rows:
        for col, integer in _NUMERIC:
            fault = _number_fault(col, row.get(col, ""), integer)
            if fault:
                raise ReportError(f"{path}: line {line}: {fault}")
        if row["status"] not in STATUSES:
            raise ReportError(f"{path}: line {line}: status {row['status']!r}; allowed: {', '.join(STATUSES)}")
    df = pd.DataFrame([[row.get(c, "") for c in COLUMN_NAMES] for _, row in rows], columns=list(COLUMN_NAMES))
    # Every cell was checked above: blank -> missing, else the number (" 3 " and "3.0" are 3 in an int column).
    for col in INT_COLUMNS:
        df[col] = pd.array([_as_int(v) for v in df[col]], dtype="Int64")
    for col in FLOAT_COLUMNS:
        df[col] = pd.array([float(v) if v.strip() else math.nan for v in df[col]], dtype="float64")
    return df


def _as_int(text: str) -> int | None:
    t = text.strip()
    if not t:
        return None
    try:
        return int(t)
    except ValueError:
        return int(float(t))


def write_report(df: pd.DataFrame, out_path: str | os.PathLike[str]) -> Path:
    """Write a frame of schema rows (e.g. merged) as plain CSV (header first); floats round-trip exactly.

    The file is written beside its destination and renamed into place, so a crash never leaves half a file
    where a finished one was. ``ReportError`` (one line) when ``out_path`` is a directory or cannot be written.
    """
    out = Path(out_path)
    if out.is_dir():
        raise ReportError(f"{out}: is a directory; allowed: a file path for the merged CSV")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMN_NAMES)
            for rec in df[list(COLUMN_NAMES)].itertuples(index=False, name=None):
                writer.writerow([_format(None if v is pd.NA else v) for v in rec])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ReportError(f"{out}: cannot write ({exc.strerror or type(exc).__name__})") from None
    return out


def check_distinct(paths: Iterable[str | os.PathLike[str]]) -> None:
    """``ReportError`` when one file is given twice (by any spelling of its path, or through a link)."""
    seen: dict[tuple[int, int] | str, str] = {}
    for p in paths:
        try:
            st = os.stat(p)
            key: tuple[int, int] | str = (st.st_dev, st.st_ino)
        except OSError:
            key = os.path.abspath(p)
        if key in seen:
            same = "" if seen[key] == str(p) else f" (also given as {seen[key]})"
            raise ReportError(f"{p}: the same file is given twice{same}; allowed: each report file once")
        seen[key] = str(p)


def check_no_shared_runs(paths: list[str | os.PathLike[str]], frames: list[pd.DataFrame]) -> None:
    """``ReportError`` when two files hold rows of the same run (a copy, or a merged file with one of its
    sources): merging or comparing them would count those rows twice."""
    owner: dict[str, str] = {}
    for p, df in zip(paths, frames):
        for run in dict.fromkeys(df["run_id"]):
            if not run:
                continue
            if run in owner and owner[run] != str(p):
                raise ReportError(
                    f"{p}: run {run} is also in {owner[run]} (a copy, or a merged file with one of its sources); "
                    "allowed: each run once"
                )
            owner[run] = str(p)


def merge_reports(paths: Iterable[str | os.PathLike[str]], out_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Concatenate report files (each must pass ``read_report``), sort by machine/backend/model/phase/batch,
    write them to ``out_path`` and return the merged frame.

    ``ReportError`` when a file is given twice or two files hold the same run (rows would be doubled)."""
    paths = list(paths)
    if not paths:
        raise ReportError("merge_reports: no report files given")
    check_distinct(paths)
    frames = [read_report(p) for p in paths]
    check_no_shared_runs(paths, frames)
    merged = pd.concat(frames, ignore_index=True)
    merged = merged.sort_values(list(SORT_COLUMNS), kind="mergesort", na_position="last").reset_index(drop=True)
    write_report(merged, out_path)
    return merged
