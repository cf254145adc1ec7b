"""Writing and reading report CSV files (schema: ``reports.schema``).

One file per run under ``reports/runs/`` (git-ignored), named
``<UTC yyyymmddTHHMMSS>-<host>-<pid>-<8 hex>.csv`` and opened exclusively, so concurrent runs never share a
file. Each row is flushed and fsync'ed as soon as it is written: a crash or kill loses nothing already measured.
The file starts with ``HISTORY_COMMENT`` and the header ``COLUMN_NAMES``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
from xfbench.reports.env import ENV_COLUMNS, fingerprint
from xfbench.reports.paths import runs_dir
from xfbench.reports.schema import COLUMN_NAMES, HISTORY_COMMENT, SCHEMA_VERSION, STATUSES

# Column types for read_report: integers (nullable), floats; every other column is text ("" when empty).
INT_COLUMNS: tuple[str, ...] = (
    "schema_version",
    "batch_size",
    "rounds",
    "params_counted",
    "params_predicted",
    "cpu_cores",
    "ram_bytes",
    "gpu_memory_bytes",
    "workers",
)
FLOAT_COLUMNS: tuple[str, ...] = (
    "gflops_per_s",
    "peak_fraction",
    "time_predicted_s",
    "time_rel_error",
    "speedup",
    "speedup_predicted",
    "efficiency",
    "efficiency_predicted",
    "time_median_s",
    "time_iqr_s",
    "time_mean_s",
    "time_min_s",
    "throughput_samples_per_s",
    "flops_counted",
    "flops_predicted_counter",
    "flops_rel_error",
    "flops_predicted",
    "achieved_flops_per_s",
    "mem_measured_bytes",
    "mem_predicted_bytes",
    "mem_rel_error",
    "mem_baseline_bytes",
    "mem_second_step_bytes",
    "mem_allocator_peak_bytes",
    "mem_nvml_bytes",
    "mem_textbook_bytes",
)
_WRITER_COLUMNS = ("schema_version", "run_id", "timestamp")
SORT_COLUMNS = ("machine", "backend", "model", "phase", "batch_size")


class SchemaError(ValueError):
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
        self._dir.mkdir(parents=True, exist_ok=True)
        self._versions = dict(framework_versions or {})
        self._blas = blas
        now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self._run_id = f"{now}-{_safe_host(socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._path = self._dir / f"{self._run_id}.csv"
        # "x": exclusive creation, so even a (vanishingly unlikely) name clash fails instead of interleaving.
        self._fh: io.TextIOWrapper | None = open(self._path, "x", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._fh.write(HISTORY_COMMENT + "\n")
        self._csv.writerow(COLUMN_NAMES)
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

        Raises ``ValueError`` for unknown columns, columns the writer owns, or a missing/unknown ``status``.
        """
        if self._fh is None:
            raise ValueError(f"{self._path}: writer is closed")
        unknown = sorted(set(row) - set(COLUMN_NAMES))
        if unknown:
            raise ValueError(f"unknown report column(s): {', '.join(unknown)}")
        owned = sorted(set(row) & set(_WRITER_COLUMNS))
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
        self._csv.writerow([_format(full.get(col, "")) for col in COLUMN_NAMES])
        self._sync()

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


def _version_error(path: str | os.PathLike[str], found: str) -> SchemaError:
    return SchemaError(
        f"{path}: schema version {found}, this xfbench reads version {SCHEMA_VERSION}; "
        "re-run the benchmarks or use the xfbench release that wrote it"
    )


def read_report(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one report file into a DataFrame with the schema's columns, typed (see INT_/FLOAT_COLUMNS).

    Leading ``#`` comment lines are skipped. Raises ``SchemaError`` for a file without a ``schema_version``
    column, of another schema version, or with missing columns.
    """
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    lines = text.splitlines(keepends=True)
    # Only leading comments: a '#' inside a quoted message further down is data.
    skip = 0
    while skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    body = "".join(lines[skip:])
    if not body.strip():
        raise _version_error(path, "missing (empty file)")
    df = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)
    if "schema_version" not in df.columns:
        raise _version_error(path, "missing (no schema_version column)")
    versions = sorted(set(df["schema_version"].str.strip()))
    if any(v != str(SCHEMA_VERSION) for v in versions):
        raise _version_error(path, ", ".join(v or "blank" for v in versions))
    missing = [c for c in COLUMN_NAMES if c not in df.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {', '.join(missing)} of schema version {SCHEMA_VERSION}")
    df = df[list(COLUMN_NAMES)].copy()
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce").astype("Int64")
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce").astype("float64")
    return df


def write_report(df: pd.DataFrame, out_path: str | os.PathLike[str]) -> Path:
    """Write a frame of schema rows (e.g. merged) with the history comment; floats round-trip exactly."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(HISTORY_COMMENT + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMN_NAMES)
        for rec in df[list(COLUMN_NAMES)].itertuples(index=False, name=None):
            writer.writerow([_format(None if v is pd.NA else v) for v in rec])
    return out


def merge_reports(paths: Iterable[str | os.PathLike[str]], out_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Concatenate report files (each must pass ``read_report``), sort by machine/backend/model/phase/batch,
    write them to ``out_path`` and return the merged frame."""
    frames = [read_report(p) for p in paths]
    if not frames:
        raise ValueError("merge_reports: no report files given")
    merged = pd.concat(frames, ignore_index=True)
    merged = merged.sort_values(list(SORT_COLUMNS), kind="mergesort", na_position="last").reset_index(drop=True)
    write_report(merged, out_path)
    return merged
