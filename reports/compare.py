"""Compare report files from different machines: the verdict (geometric means) first, then the rows.

Machines are named by short aliases, ``A``, ``B``, ... in the order the files are given (one alias per file and
host name in it), each with a legend line that maps the alias to its file and its machine (host, CPU model,
cores, GPU; the environment columns). The first file's machine is the reference. Configurations
(``schema.CONFIG_KEY``) measured with status ``ok`` on the reference and on another machine are paired; the
ratio is ``time_median_s(other) / time_median_s(reference)`` (> 1: the other machine is slower, < 1: faster);
beside it, the other machine's own step-time prediction (``time_predicted_s``, ``time_rel_error``,
``prediction_basis``). The verdict is the geometric mean of the ratios per kind, backend, device and phase per
machine, with its row count and "x faster/slower"; model rows come first. When a machine has the same
configuration several times (runs repeated), the latest row (by timestamp) counts.

Rows of kind ``calibration`` (the peaks a run measures for its prediction, ``gemm:1x16x16`` ...) and ``noise``
are paired too (``comparison.csv`` holds every pair), but the text and Markdown views show them, and their
geometric means, only when asked (``include_all``, ``xfbench compare --all``).

Outputs in ``out_dir``: ``comparison.csv`` (one row per pair), ``comparison.md`` (the Markdown view),
``time_by_model_<backend>.png`` (one per backend: a panel per phase, at most ``MAX_PLOT_PX`` pixels wide,
long phases split over several panels) and ``memory_measured_vs_predicted.png``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from xfbench.reports.schema import COLUMN, CONFIG_KEY, ROW_KINDS
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
GEOMEAN_COLUMNS: tuple[str, ...] = (
    "kind",
    "backend",
    "device",
    "phase",
    "baseline",
    "machine",
    "benchmarks",
    "geomean_ratio",
)
# Rows that calibrate a run rather than benchmark it: shown (and their geometric means) only with --all.
CALIBRATION_KINDS: tuple[str, ...] = ("calibration", "noise")
# The order kinds are shown in: model rows first (the verdict), then the other benchmarks, calibration last.
KIND_ORDER: tuple[str, ...] = (
    "model",
    *(k for k in ROW_KINDS if k not in ("model", *CALIBRATION_KINDS)),
    *CALIBRATION_KINDS,
)
# Plots are read at 100% on a laptop screen: no wider than this (pixels at PLOT_DPI).
MAX_PLOT_PX = 1600
PLOT_DPI = 100
# The key columns of a model row that tell its bars apart (model and phase: the bar label and the panel).
_MODEL_PLOT_KEYS: tuple[str, ...] = tuple(
    c for c in CONFIG_KEY if "model" in COLUMN[c].kinds and c not in ("kind", "model", "phase")
)


@dataclass(frozen=True)
class Machine:
    """One compared machine: its alias, the file its rows come from, and its fingerprint (env columns)."""

    alias: str
    path: str
    host: str
    cpu_model: str
    cpu_cores: str
    gpu_name: str
    several_hosts_in_file: bool = False

    def describe(self) -> str:
        """The machine in words: host, CPU model, cores, GPU (what the env columns hold)."""
        parts = [f"host {self.host or '?'}", self.cpu_model or "CPU unknown"]
        if self.cpu_cores:
            parts.append(f"{self.cpu_cores} cores")
        if self.gpu_name:
            parts.append(self.gpu_name)
        return ", ".join(parts)

    def source(self) -> str:
        """The file, and the host within it when the file holds several machines (a merged file)."""
        return f"{self.path} (host {self.host})" if self.several_hosts_in_file else self.path

    def legend(self, reference: str) -> str:
        """``A = file: host h, CPU, N cores (reference)``."""
        mark = " (reference)" if self.alias == reference else ""
        return f"{self.alias} = {self.source()}: {self.describe()}{mark}"


@dataclass(frozen=True, eq=False)
class CompareResult:
    """What ``compare`` computed and wrote. Times in seconds; ratios are other / reference (``baseline``)."""

    baseline: str  # the reference machine's alias
    labels: tuple[str, ...]  # every machine's alias, in order
    ratios: pd.DataFrame  # RATIO_COLUMNS, one row per paired configuration and non-reference machine
    geomeans: pd.DataFrame  # GEOMEAN_COLUMNS, every kind (calibration included)
    csv_path: Path
    md_path: Path
    plot_paths: tuple[Path, ...]
    machines: tuple[Machine, ...] = ()
    include_all: bool = False


def alias(index: int) -> str:
    """The ``index``-th alias (0-based): A, B, ..., Z, AA, AB, ..."""
    name = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        name = chr(ord("A") + rem) + name
    return name


def _common(values: pd.Series) -> str:
    """The most frequent non-blank text of a column ("" when none)."""
    text = [str(v).strip() for v in values if v is not None and v is not pd.NA and str(v).strip() not in ("", "nan")]
    if not text:
        return ""
    return max(dict.fromkeys(text), key=text.count)


def _label_rows(paths: Sequence[str | os.PathLike[str]]) -> tuple[pd.DataFrame, list[Machine]]:
    """All rows of all files with a ``label`` column (the machine's alias), and the machines in order."""
    check_distinct(paths)
    frames = [read_report(p) for p in paths]
    check_no_shared_runs(list(paths), frames)
    labelled = []
    machines: list[Machine] = []
    for path, df in zip(paths, frames):
        hosts = list(dict.fromkeys(df["machine"]))
        mapping = {}
        for host in hosts:
            mine = df[df["machine"] == host]
            cores = mine["cpu_cores"].dropna()
            machine = Machine(
                alias=alias(len(machines)),
                path=str(path),
                host=str(host),
                cpu_model=_common(mine["cpu_model"]),
                cpu_cores=str(int(cores.mode().iloc[0])) if len(cores) else "",
                gpu_name=_common(mine["gpu_name"]),
                several_hosts_in_file=len(hosts) > 1,
            )
            machines.append(machine)
            mapping[host] = machine.alias
        df = df.copy()
        df["label"] = df["machine"].map(mapping)
        labelled.append(df)
    rows = pd.concat(labelled, ignore_index=True)
    present = set(rows["label"])
    return rows, [m for m in machines if m.alias in present]


def _ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    t = rows["time_median_s"]
    ok = rows[(rows["status"] == "ok") & t.notna() & (t > 0)]
    ok = ok.sort_values("timestamp", kind="mergesort")
    return ok.drop_duplicates(subset=["label", *CONFIG_KEY], keep="last")


def _kind_rank(kinds: pd.Series) -> pd.Series:
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    return kinds.fillna("").astype(str).map(lambda k: order.get(k or "model", len(order)))


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
    ratios = ratios[list(RATIO_COLUMNS)].copy()
    ratios["_rank"] = _kind_rank(ratios["kind"])
    ratios = ratios.sort_values(
        ["_rank", "machine", "backend", "device", "phase", "model", "batch_size"], kind="mergesort"
    )
    return ratios.drop(columns="_rank").reset_index(drop=True)


def geometric_mean(values: Iterable[float]) -> float:
    """exp(mean(log v)) of positive values; NaN for none (``compare``'s and ``report``'s verdicts)."""
    logs = [math.log(float(v)) for v in values]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def _geomean(r: pd.Series) -> float:
    return geometric_mean(r)


def _geomeans(ratios: pd.DataFrame) -> pd.DataFrame:
    keys = ["kind", "backend", "device", "phase", "baseline", "machine"]
    grouped = ratios.groupby(keys, sort=True, dropna=False)["ratio"]
    out = grouped.agg(benchmarks="count", geomean_ratio=_geomean).reset_index()
    out["_rank"] = _kind_rank(out["kind"])
    out = out.sort_values(["_rank", "machine", "backend", "device", "phase"], kind="mergesort")
    return out.drop(columns="_rank").reset_index(drop=True)[list(GEOMEAN_COLUMNS)]


def _is_calibration(kinds: pd.Series) -> pd.Series:
    return kinds.fillna("").astype(str).isin(CALIBRATION_KINDS)


def verdict(ratio: float, machine: str = "", reference: str = "") -> str:
    """``1.25x slower`` / ``2.00x faster`` / ``same`` for a ratio other / reference (two decimals)."""
    if not math.isfinite(ratio) or ratio <= 0:
        return ""
    if f"{ratio:.2f}" == "1.00":
        text = "same"
    elif ratio > 1:
        text = f"{ratio:.2f}x slower"
    else:
        text = f"{1 / ratio:.2f}x faster"
    if machine and reference:
        text = f"{machine} {text} " + ("as" if text == "same" else "than") + f" {reference}"
    return text


def _cell(value: object) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _config_label(row: pd.Series, varying: Sequence[str]) -> str:
    model = str(row["model"])
    # A spec file's model is its path: the stem is what tells the bars apart on an axis.
    parts = [Path(model).stem if "/" in model or model.endswith((".json", ".yaml", ".yml")) else model]
    for key in varying:
        prefix = "b" if key == "batch_size" else ""
        parts.append(f"{prefix}{row[key]}")
    return "\n".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "none"


def _plot_times(ok: pd.DataFrame, machines: Sequence[Machine], out: Path) -> list[Path]:
    """Median time per model per machine: one PNG per backend, a panel per phase (a long phase over several
    panels), never wider than ``MAX_PLOT_PX``. Matmul, scaling, calibration ... rows are not plotted here."""
    kind = ok["kind"].fillna("").astype(str)
    ok = ok[kind.isin(["model", ""])]
    if ok.empty:
        return []
    labels = [m.alias for m in machines]
    # The machines' legend on every figure: a plot read alone still says which file and machine each bar is.
    legend = "\n".join(
        f"{m.alias} = {Path(m.path).name}"
        + (f" (host {m.host})" if m.several_hosts_in_file else "")
        + f": {m.describe()}"
        + (" (reference)" if i == 0 else "")
        for i, m in enumerate(machines)
    )
    n = max(len(labels), 1)
    group_in = 0.22 * n + 0.3  # inches per configuration (its bars and the gap)
    max_in = MAX_PLOT_PX / PLOT_DPI
    per_panel = max(3, int((max_in - 1.2) / group_in))
    varying = [k for k in _MODEL_PLOT_KEYS if ok[k].nunique(dropna=False) > 1 and k != "backend"]
    paths = []
    for backend in sorted(ok["backend"].astype(str).unique()):
        sub_b = ok[ok["backend"].astype(str) == backend]
        panels: list[tuple[str, pd.DataFrame, list[str]]] = []
        for phase in sorted(sub_b["phase"].astype(str).unique()):
            sub = sub_b[sub_b["phase"].astype(str) == phase].copy()
            sub["config"] = [_config_label(r, varying) for _, r in sub.iterrows()]
            sub = sub.drop_duplicates(subset=["label", "config"], keep="last")
            configs = list(dict.fromkeys(sub.sort_values(["model", *varying], kind="mergesort")["config"]))
            chunks = [configs[i : i + per_panel] for i in range(0, len(configs), per_panel)]
            for i, chunk in enumerate(chunks):
                part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
                panels.append((f"{backend}, {phase or 'no phase'}: median time per step{part}", sub, chunk))
        widest = max(len(chunk) for _, _, chunk in panels)
        width = min(max_in, max(6.4, 1.2 + widest * group_in))
        # Figure without pyplot: Agg rendering, no display and no global pyplot state.
        fig = Figure(figsize=(width, 3.4 * len(panels) + 0.18 * len(machines)), layout="constrained")
        fig.suptitle(legend, fontsize=8)
        axes_list = list(fig.subplots(len(panels), 1, squeeze=False)[:, 0])
        bar = 0.8 / n
        for ax, (title, sub, chunk) in zip(axes_list, panels):
            x = np.arange(len(chunk))
            for j, label in enumerate(labels):
                times = sub[sub["label"] == label].set_index("config")["time_median_s"]
                heights = np.array([float(times.get(c, np.nan)) for c in chunk])
                keep = ~np.isnan(heights)
                ax.bar(x[keep] + (j - (n - 1) / 2) * bar, heights[keep], bar, label=label)
            ax.set_xticks(x)
            ax.set_xticklabels(chunk, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("median s per step")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        path = out / f"time_by_model_{_safe_name(backend)}.png"
        fig.savefig(path, dpi=PLOT_DPI)
        paths.append(path)
    return paths


def _plot_memory(rows: pd.DataFrame, out: Path) -> Path:
    m, p = rows["mem_measured_bytes"], rows["mem_predicted_bytes"]
    data = rows[m.notna() & p.notna() & (m > 0) & (p > 0)]
    fig = Figure(figsize=(7.0, 5.5))
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
    path = out / "memory_measured_vs_predicted.png"
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def compare(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, include_all: bool = False
) -> CompareResult:
    """Pair equal configurations across machines and write the comparison (see the module docstring).

    ``include_all``: the Markdown file shows calibration and noise rows too (``comparison.csv`` always holds
    every pair). Raises ``reports.writer.SchemaError`` for a file of another schema version,
    ``reports.writer.ReportError`` for a file that is no readable report, a file given twice, two files holding
    the same run, or an output directory that cannot be made, and ``ValueError`` when fewer than two files or
    machines are given or no configuration pairs. Every message is one line.
    """
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two report files (one per machine); got {len(paths)}")
    rows, machines = _label_rows(paths)
    if rows.empty:
        raise ValueError("compare: the report files contain no rows")
    labels = [m.alias for m in machines]
    if len(labels) < 2:
        only = machines[0]
        raise ValueError(
            f"compare needs rows from at least two machines; all rows are from {only.host!r} ({only.path})"
        )
    baseline = str(rows["label"].iloc[0])
    ok = _ok_rows(rows)
    ratios = _pair(ok, baseline, labels)
    if ratios.empty:
        ref = machines[0]
        raise ValueError(
            f"compare: no configuration ({', '.join(CONFIG_KEY)}) has status ok on both the reference "
            f"{ref.path} and another machine"
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
    result = CompareResult(
        baseline=baseline,
        labels=tuple(labels),
        ratios=ratios,
        geomeans=geomeans,
        csv_path=out / "comparison.csv",
        md_path=out / "comparison.md",
        plot_paths=(),
        machines=tuple(machines),
        include_all=include_all,
    )
    try:
        for stale in out.glob("time_by_model*.png"):  # an earlier run's backends must not read as this one's
            stale.unlink()
        ratios.to_csv(result.csv_path, index=False)
        plots = (*_plot_times(ok, machines, out), _plot_memory(rows, out))
        result = replace(result, plot_paths=plots)
        result.md_path.write_text(format_markdown(result), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the comparison ({exc.strerror or type(exc).__name__})") from None
    return result


# --- the views ------------------------------------------------------------------------------------------------


def _shown(result: CompareResult, include_all: bool | None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The ratios and geometric means to show, and how many calibration/noise pairs are left out."""
    every = result.include_all if include_all is None else include_all
    r, g = result.ratios, result.geomeans
    if every:
        return r, g, 0
    hidden = _is_calibration(r["kind"])
    return r[~hidden], g[~_is_calibration(g["kind"])], int(hidden.sum())


def _geomean_rows(g: pd.DataFrame, result: CompareResult) -> tuple[list[str], list[list[str]]]:
    devices = len(set(g["device"].astype(str))) > 1
    headers = ["machine", "kind", "backend", *(["device"] if devices else []), "phase", "rows", "geomean", "verdict"]
    body = [
        [
            str(row["machine"]),
            str(row["kind"] or "model"),
            str(row["backend"] or "-"),
            *([str(row["device"] or "-")] if devices else []),
            str(row["phase"] or "-"),
            str(row["benchmarks"]),
            f"{row['geomean_ratio']:.3f}",
            verdict(float(row["geomean_ratio"]), str(row["machine"]), result.baseline),
        ]
        for row in g.to_dict("records")
    ]
    return headers, body


def _row_table(r: pd.DataFrame, result: CompareResult, short: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the paired rows; ``short``: the prediction basis without its parenthesis (the
    terminal view; the Markdown view and comparison.csv keep it whole)."""
    # The configuration columns any pair uses (optimizer, tf32, shape, workers, ... when set): two rows that
    # differ only there are different benchmarks and must read as such.
    keys = ["backend", "device", "model", "phase", "batch_size", "dtype"]
    keys += [c for c in CONFIG_KEY if c not in keys and c != "kind" and any(_cell(v) for v in r[c])]
    if len(set(r["kind"].astype(str))) > 1:
        keys.insert(0, "kind")
    keys = [c for c in keys if any(_cell(v) for v in r[c])]
    names = {"batch_size": "batch", "scaling_mode": "mode"}
    ref = result.baseline
    headers = [
        "machine",
        *(names.get(c, c) for c in keys),
        f"{ref} s",
        "time s",
        "ratio",
        "verdict",
        "predicted s",
        "error",
        "basis",
    ]
    body = [
        [
            str(row["machine"]),
            *(_cell(row[c]) for c in keys),
            f"{row['time_baseline_s']:.4g}",
            f"{row['time_s']:.4g}",
            f"{row['ratio']:.3f}",
            verdict(float(row["ratio"])),
            _cell(row["time_predicted_s"]),
            "" if _cell(row["time_rel_error"]) == "" else f"{float(row['time_rel_error']):+.1%}",
            _cell(row["prediction_basis"]).split(" (")[0] if short else _cell(row["prediction_basis"]),
        ]
        for _, row in r.iterrows()
    ]
    return headers, body


def _sections(r: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The row tables in the order shown: model rows, the other benchmarks, calibration and noise."""
    kinds = r["kind"].fillna("").astype(str)
    model = kinds.isin(["model", ""])
    calib = kinds.isin(CALIBRATION_KINDS)
    other = ~model & ~calib
    out = []
    if model.any():
        out.append(("model rows", r[model]))
    if other.any():
        names = ", ".join(k for k in KIND_ORDER if k in set(kinds[other]))
        out.append((f"other benchmarks ({names})", r[other]))
    if calib.any():
        out.append(("calibration and noise rows", r[calib]))
    return out


def _intro(result: CompareResult) -> str:
    ref = result.baseline
    return f"ratio = time on the machine / time on the reference {ref} (< 1: faster than {ref}, > 1: slower)"


def format_text(result: CompareResult, include_all: bool | None = None) -> str:
    """The terminal view: the legend, the geometric means (the verdict), then the rows (model rows first);
    calibration and noise rows only with ``include_all`` (default: what ``compare`` was given)."""
    r, g, hidden = _shown(result, include_all)
    lines = [f"xfbench compare: {_intro(result)}"]
    lines += [m.legend(result.baseline) for m in result.machines]
    lines += ["", "geometric mean of the time ratios per backend and phase (rows: pairs it is taken over):"]
    if g.empty:
        lines.append("(no pairs besides calibration and noise rows)")
    else:
        lines.append(render_table(*_geomean_rows(g, result)))
    if hidden:
        lines.append(f"({hidden} calibration and noise pairs not shown; --all shows them)")
    for title, part in _sections(r):
        lines += ["", f"{title}:", render_table(*_row_table(part, result, short=True))]
    files = [result.csv_path, result.md_path, *result.plot_paths]
    lines += ["", "written: " + ", ".join(str(f) for f in files)]
    return "\n".join(lines)


def _md_table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def format_markdown(result: CompareResult, include_all: bool | None = None) -> str:
    """The Markdown view (``xfbench compare --format md``, and ``comparison.md``): the same content as
    ``format_text``, as a legend table and Markdown tables."""
    r, g, hidden = _shown(result, include_all)
    machines = [
        [m.alias + (" (reference)" if m.alias == result.baseline else ""), m.source(), m.describe()]
        for m in result.machines
    ]
    md = [
        "# xfbench comparison",
        "",
        _intro(result)[0].upper() + _intro(result)[1:] + ".",
        "",
        _md_table(["alias", "file", "machine"], machines),
        "",
        "## Geometric mean of the time ratios per backend and phase",
        "",
        _md_table(*_geomean_rows(g, result)) if not g.empty else "No pairs besides calibration and noise rows.",
    ]
    if hidden:
        md += ["", f"{hidden} calibration and noise pairs are not shown (`xfbench compare --all` shows them)."]
    for title, part in _sections(r):
        md += ["", f"## {title[0].upper()}{title[1:]}", "", _md_table(*_row_table(part, result))]
    return "\n".join(md) + "\n"
