"""Compare report files from different machines: per-benchmark time ratios and their geometric means.

Each row is labelled with its machine (the ``machine`` column, or the file stem when two files share a host
name). The first file's machine is the baseline. Configurations (``schema.CONFIG_KEY``) measured with status
``ok`` on the baseline and on another machine are paired; the ratio is
``time_median_s(other) / time_median_s(baseline)`` (> 1: the other machine is slower); beside it, the other
machine's own step-time prediction (``time_predicted_s``, ``time_rel_error``, ``prediction_basis``). The
geometric mean of the ratios is taken per (backend, phase) per machine. When a label has the same
configuration several times (runs repeated), the latest row (by timestamp) counts.

Outputs in ``out_dir``: ``comparison.csv`` (one row per pair), ``comparison.md`` (markdown tables),
``time_by_model.png`` and ``memory_measured_vs_predicted.png``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from xfbench.reports.schema import COLUMN, CONFIG_KEY
from xfbench.reports.table import render_table
from xfbench.reports.writer import ReportError, check_distinct, check_no_shared_runs, read_report

# The other machine's own step-time prediction beside its measurement (model rows; blank where it has none).
PREDICTION_COLUMNS: tuple[str, ...] = ("time_predicted_s", "time_rel_error", "prediction_basis")
RATIO_COLUMNS: tuple[str, ...] = (
    *CONFIG_KEY,
    "baseline",
    "machine",
    "time_baseline_s",
    "time_s",
    "ratio",
    *PREDICTION_COLUMNS,
)
GEOMEAN_COLUMNS: tuple[str, ...] = ("backend", "phase", "baseline", "machine", "benchmarks", "geomean_ratio")
# The key columns of a model row that tell its bars apart (model and phase: the bar label and the panel).
_MODEL_PLOT_KEYS: tuple[str, ...] = tuple(
    c for c in CONFIG_KEY if "model" in COLUMN[c].kinds and c not in ("kind", "model", "phase")
)


@dataclass(frozen=True, eq=False)
class CompareResult:
    """What ``compare`` computed and wrote. Times in seconds; ratios are other / baseline."""

    baseline: str
    labels: tuple[str, ...]
    ratios: pd.DataFrame  # RATIO_COLUMNS, one row per paired configuration and non-baseline machine
    geomeans: pd.DataFrame  # GEOMEAN_COLUMNS
    csv_path: Path
    md_path: Path
    plot_paths: tuple[Path, ...]


def _label_rows(paths: Sequence[str | os.PathLike[str]]) -> tuple[pd.DataFrame, list[str]]:
    """All rows of all files with a ``label`` column, and the labels in order of first appearance."""
    check_distinct(paths)
    frames = [read_report(p) for p in paths]
    check_no_shared_runs(list(paths), frames)
    files_per_host: Counter[str] = Counter()
    for df in frames:
        files_per_host.update(set(df["machine"]))
    labelled = []
    for path, df in zip(paths, frames):
        stem = Path(path).stem
        hosts = list(dict.fromkeys(df["machine"]))
        mapping = {}
        for host in hosts:
            if files_per_host[host] > 1:
                mapping[host] = stem if len(hosts) == 1 else f"{stem}:{host}"
            else:
                mapping[host] = host or stem
        df = df.copy()
        df["label"] = df["machine"].map(mapping)
        labelled.append(df)
    rows = pd.concat(labelled, ignore_index=True)
    return rows, list(dict.fromkeys(rows["label"]))


def _ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    t = rows["time_median_s"]
    ok = rows[(rows["status"] == "ok") & t.notna() & (t > 0)]
    ok = ok.sort_values("timestamp", kind="mergesort")
    return ok.drop_duplicates(subset=["label", *CONFIG_KEY], keep="last")


def _pair(ok: pd.DataFrame, baseline: str, labels: Sequence[str]) -> pd.DataFrame:
    keys = list(CONFIG_KEY)
    base = ok[ok["label"] == baseline][[*keys, "time_median_s"]].rename(columns={"time_median_s": "time_baseline_s"})
    parts = []
    for label in labels:
        if label == baseline:
            continue
        other = ok[ok["label"] == label][[*keys, "time_median_s", *PREDICTION_COLUMNS]]
        other = other.rename(columns={"time_median_s": "time_s"})
        pairs = base.merge(other, on=keys, how="inner")
        pairs["baseline"] = baseline
        pairs["machine"] = label
        parts.append(pairs)
    ratios = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(RATIO_COLUMNS))
    ratios["ratio"] = ratios["time_s"].astype(float) / ratios["time_baseline_s"].astype(float)
    ratios = ratios[list(RATIO_COLUMNS)]
    return ratios.sort_values(["machine", "backend", "phase", "model", "batch_size"], kind="mergesort").reset_index(
        drop=True
    )


def _geomeans(ratios: pd.DataFrame) -> pd.DataFrame:
    grouped = ratios.groupby(["backend", "phase", "baseline", "machine"], sort=True)["ratio"]
    out = grouped.agg(benchmarks="count", geomean_ratio=lambda r: float(np.exp(np.log(r.astype(float)).mean())))
    return out.reset_index()[list(GEOMEAN_COLUMNS)]


def _cell(value: object) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _markdown_table(df: pd.DataFrame) -> str:
    # Key columns that no row uses (e.g. matmul shape on model rows) only widen the table.
    empty = [c for c in df.columns if all(_cell(v) == "" for v in df[c])]
    df = df.drop(columns=empty)
    headers = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for rec in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in rec) + " |")
    return "\n".join(lines)


def _config_label(row: pd.Series, varying: Sequence[str]) -> str:
    parts = [str(row["model"])]
    for key in varying:
        prefix = "b" if key == "batch_size" else ""
        parts.append(f"{prefix}{row[key]}")
    return "\n".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _plot_times(ok: pd.DataFrame, labels: Sequence[str], out: Path) -> Path:
    # Time per *model* per machine: matmul, scaling and exercise rows have their own plots.
    kind = ok["kind"].fillna("").astype(str)
    ok = ok[kind.isin(["model", ""])]
    keys = _MODEL_PLOT_KEYS
    varying = [k for k in keys if ok[k].nunique(dropna=False) > 1]
    phases = sorted(ok["phase"].unique()) or ["(none)"]
    # Figure without pyplot: Agg rendering, no display and no global pyplot state.
    fig = Figure(figsize=(max(6.0, 1.2 * len(ok) / max(len(labels), 1)), 4.0 * len(phases)))
    axes_list = list(fig.subplots(len(phases), 1, squeeze=False)[:, 0])
    width = 0.8 / max(len(labels), 1)
    for ax, phase in zip(axes_list, phases):
        sub = ok[ok["phase"] == phase].copy()
        sub["config"] = [_config_label(r, varying) for _, r in sub.iterrows()]
        sub = sub.drop_duplicates(subset=["label", "config"], keep="last")
        configs = list(dict.fromkeys(sub.sort_values(["model", *varying], kind="mergesort")["config"]))
        x = np.arange(len(configs))
        for j, label in enumerate(labels):
            times = sub[sub["label"] == label].set_index("config")["time_median_s"]
            heights = np.array([float(times.get(c, np.nan)) for c in configs])
            keep = ~np.isnan(heights)
            ax.bar(x[keep] + (j - (len(labels) - 1) / 2) * width, heights[keep], width, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels(configs, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median time per step (s)")
        ax.set_title(f"{phase}: time per model per machine")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def _plot_memory(rows: pd.DataFrame, out: Path) -> Path:
    m, p = rows["mem_measured_bytes"], rows["mem_predicted_bytes"]
    data = rows[m.notna() & p.notna() & (m > 0) & (p > 0)]
    fig = Figure(figsize=(6.0, 5.5))
    ax = fig.subplots()
    if data.empty:
        ax.text(0.5, 0.5, "no rows with both measured and predicted memory", ha="center", va="center")
        ax.set_axis_off()
    else:
        markers = "os^Dvx*+"
        labels = list(dict.fromkeys(data["label"]))
        for backend, group in data.groupby("backend", sort=True):
            color = None
            for i, label in enumerate(labels):
                g = group[group["label"] == label]
                if g.empty:
                    continue
                pts = ax.scatter(
                    g["mem_predicted_bytes"],
                    g["mem_measured_bytes"],
                    marker=markers[i % len(markers)],
                    color=color,
                    label=f"{backend} ({label})",
                )
                color = pts.get_facecolor()[0] if color is None else color
        lo = float(min(data["mem_measured_bytes"].min(), data["mem_predicted_bytes"].min()))
        hi = float(max(data["mem_measured_bytes"].max(), data["mem_predicted_bytes"].max()))
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="measured = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted peak memory (bytes)")
        ax.set_ylabel("measured peak memory (bytes)")
        ax.set_title("memory: measured vs predicted")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def compare(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> CompareResult:
    """Pair equal configurations across machines and write the comparison (see the module docstring).

    Raises ``reports.writer.SchemaError`` for a file of another schema version, ``reports.writer.ReportError``
    for a file that is no readable report, a file given twice, two files holding the same run, or an output
    directory that cannot be made, and ``ValueError`` when fewer than two files or machines are given or no
    configuration pairs. Every message is one line.
    """
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two report files (one per machine); got {len(paths)}")
    rows, labels = _label_rows(paths)
    if rows.empty:
        raise ValueError("compare: the report files contain no rows")
    if len(labels) < 2:
        raise ValueError(f"compare needs rows from at least two machines; all rows are from {labels[0]!r}")
    baseline = str(rows["label"].iloc[0])
    ok = _ok_rows(rows)
    ratios = _pair(ok, baseline, labels)
    if ratios.empty:
        raise ValueError(
            f"compare: no configuration ({', '.join(CONFIG_KEY)}) has status ok on both the baseline "
            f"{baseline!r} and another machine"
        )
    geomeans = _geomeans(ratios)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(
            f"{out}: cannot create the output directory ({exc.strerror or type(exc).__name__}); "
            "allowed: a writable directory (--out)"
        ) from None
    csv_path = out / "comparison.csv"
    md_path = out / "comparison.md"
    try:
        plots = _write_outputs(out, csv_path, md_path, baseline, labels, ratios, geomeans, ok, rows)
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the comparison ({exc.strerror or type(exc).__name__})") from None
    return CompareResult(
        baseline=baseline,
        labels=tuple(labels),
        ratios=ratios,
        geomeans=geomeans,
        csv_path=csv_path,
        md_path=md_path,
        plot_paths=plots,
    )


def _write_outputs(
    out: Path,
    csv_path: Path,
    md_path: Path,
    baseline: str,
    labels: Sequence[str],
    ratios: pd.DataFrame,
    geomeans: pd.DataFrame,
    ok: pd.DataFrame,
    rows: pd.DataFrame,
) -> tuple[Path, ...]:
    ratios.to_csv(csv_path, index=False)
    md = [
        "# xfbench comparison",
        "",
        f"Baseline: **{baseline}**; ratio = time_median_s(machine) / time_median_s(baseline) (> 1: slower).",
        f"Machines: {', '.join(labels)}.",
        "",
        "## Per benchmark",
        "",
        _markdown_table(ratios),
        "",
        "## Geometric mean of the ratios per backend and phase",
        "",
        _markdown_table(geomeans),
        "",
    ]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return (
        _plot_times(ok, labels, out / "time_by_model.png"),
        _plot_memory(rows, out / "memory_measured_vs_predicted.png"),
    )


def format_text(result: CompareResult) -> str:
    """Plain-text summary for the terminal: per-benchmark ratios, geometric means, files written."""
    r = result.ratios
    # The configuration columns any pair uses (optimizer, tf32, shape, workers, ... when set): two rows that
    # differ only there are different benchmarks and must read as such.
    keys = ["backend", "device", "model", "phase", "batch_size", "dtype"]
    keys += [c for c in CONFIG_KEY if c not in keys and c != "kind" and any(_cell(v) for v in r[c])]
    names = {"batch_size": "batch", "scaling_mode": "mode"}
    per = render_table(
        ["machine", *(names.get(c, c) for c in keys), "baseline s", "time s", "ratio", "predicted s", "error", "basis"],
        [
            [
                str(row["machine"]),
                *(_cell(row[c]) for c in keys),
                f"{row['time_baseline_s']:.4g}",
                f"{row['time_s']:.4g}",
                f"{row['ratio']:.3f}",
                _cell(row["time_predicted_s"]),
                "" if _cell(row["time_rel_error"]) == "" else f"{float(row['time_rel_error']):+.1%}",
                _cell(row["prediction_basis"]),
            ]
            for _, row in r.iterrows()
        ],
    )
    geo = render_table(
        ["machine", "backend", "phase", "benchmarks", "geomean ratio"],
        [
            [row.machine, row.backend, row.phase, str(row.benchmarks), f"{row.geomean_ratio:.3f}"]
            for row in result.geomeans.itertuples(index=False)
        ],
    )
    files = [result.csv_path, result.md_path, *result.plot_paths]
    return "\n".join(
        [
            f"baseline: {result.baseline}   (ratio = time on machine / time on baseline; > 1 is slower)",
            "",
            per,
            "",
            "geometric mean of the ratios per backend and phase:",
            geo,
            "",
            "written: " + ", ".join(str(f) for f in files),
        ]
    )
