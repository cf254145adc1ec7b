"""``xfbench report``: one self-contained HTML page per run (or per set of machines), verdict first.

The page holds, in this order: the verdict (what met its target, what missed, and with several machines how
much faster or slower each is than the reference); the provenance once (machines by short alias with a legend:
CPU/GPU, cores, RAM, framework versions, suite commit, dates; never by file name); a summary (rows ok /
skipped / oom / error with their reasons, prediction quality per framework and phase against ``TARGETS``,
each with a text marker beside its colour); per model tables (measured vs predicted time, memory with its
spread, FLOPs; one per phase); plots (inline SVG made with matplotlib, one per group of rows present); with
several machines the pivot against the reference machine (ratio, "x faster/slower", geometric means per
backend and phase with their counts, each machine's own prediction error beside them); and the source rows as
downloadable CSV (``data:`` links). Nothing is fetched: no script, no stylesheet, no image from anywhere; the
page reads the same without JavaScript (it has none).

Rows are read with ``reports.writer.read_report``. Framework-free (matplotlib's Agg only, no pyplot).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from xfbench.reports.compare import alias as machine_alias
from xfbench.reports.compare import geometric_mean
from xfbench.reports.compare import verdict as ratio_verdict
from xfbench.reports.schema import CONFIG_KEY, SCHEMA_VERSION, STATUSES
from xfbench.reports.writer import ReportError, check_distinct, check_no_shared_runs, read_report, read_text_file


@dataclass(frozen=True)
class Target:
    """A prediction-quality target: the largest median and worst |relative error| that meet it."""

    median: float
    worst: float


#: The targets of the prediction quality table: (metric, backend) -> Target; backend ``""`` is the default.
#: Time: median <= 15 %, worst <= 40 %. Memory: median <= 10 % (PyTorch, TensorFlow), <= 15 % (MXNet), worst
#: <= 25 %. FLOPs: 0.0 % (met when every error rounds to 0.0 %, i.e. is below ``FLOPS_TOLERANCE``).
FLOPS_TOLERANCE = 0.0005
TARGETS: dict[tuple[str, str], Target] = {
    ("time", ""): Target(0.15, 0.40),
    ("memory", ""): Target(0.10, 0.25),
    ("memory", "mxnet"): Target(0.15, 0.25),
    ("flops", ""): Target(FLOPS_TOLERANCE, FLOPS_TOLERANCE),
}
#: The error column of each metric (model rows).
ERROR_COLUMNS: dict[str, str] = {"time": "time_rel_error", "memory": "mem_rel_error", "flops": "flops_rel_error"}
#: The row kinds the comparison pairs across machines (calibration and noise rows are the run's own probes).
PAIRED_KINDS: tuple[str, ...] = ("model", "matmul", "scaling", "allreduce", "transfer", "logging", "concurrency")
#: The ids of the page's sections, in page order (``comparison`` only with several machines).
SECTIONS: tuple[str, ...] = ("verdict", "provenance", "summary", "models", "plots", "comparison", "data")


def target_for(metric: str, backend: str) -> Target:
    """The target of ``metric`` (time, memory, flops) for ``backend``."""
    return TARGETS.get((metric, backend), TARGETS[(metric, "")])


def speed_words(ratio: float) -> str:
    """``ratio`` = time(machine) / time(reference) in words: "2.00x slower", "1.25x faster", "same speed"
    (``compare``'s verdict, its "same" spelled out)."""
    words = ratio_verdict(ratio)
    return "same speed" if words == "same" else words


# --- reading ------------------------------------------------------------------------------------------------


@dataclass
class Machine:
    """One machine of the page: the rows of one input file from one host, under a short alias."""

    alias: str
    rows: pd.DataFrame
    source_text: str
    facts: dict[str, str] = field(default_factory=dict)


def _distinct(series: pd.Series) -> list[str]:
    return [str(v) for v in dict.fromkeys(series) if str(v) not in ("", "nan", "<NA>", "None")]


def _bytes_text(value: object) -> str:
    try:
        b = float(str(value))
    except ValueError:
        return str(value)
    return f"{b / 2**30:.1f} GiB" if math.isfinite(b) and b > 0 else ""


def _facts(df: pd.DataFrame) -> dict[str, str]:
    """The provenance of one machine's rows, from the environment columns (``reports.env``)."""

    def one(col: str) -> str:
        return ", ".join(_distinct(df[col]))

    versions = []
    for backend in sorted(_distinct(df["backend"])):
        vs = sorted(_distinct(df[df["backend"] == backend]["framework_version"]))
        if vs:
            versions.append(f"{backend} {', '.join(vs)}")
    stamps = sorted(_distinct(df["timestamp"]))
    kinds = df["kind"].value_counts()
    gpu = one("gpu_name")
    if gpu:
        gpu_mem = ", ".join(_bytes_text(v) for v in _distinct(df["gpu_memory_bytes"]))
        gpu += f" ({gpu_mem}" + (f", driver {one('gpu_driver')}" if one("gpu_driver") else "") + ")"
    return {
        "host": one("machine"),
        "CPU": one("cpu_model"),
        "cores": one("cpu_cores") + (f" (run on CPUs {one('cpu_affinity')})" if one("cpu_affinity") else ""),
        "instruction-set cap": one("cpu_isa_cap") or "none",
        "RAM": ", ".join(_bytes_text(v) for v in _distinct(df["ram_bytes"])),
        "GPU": gpu or "none",
        "frameworks": "; ".join(versions),
        "BLAS": one("blas") or "not reported",
        "OS": one("os"),
        "Python": one("python"),
        "suite commit": one("suite_commit"),
        "runs": str(len(_distinct(df["run_id"]))),
        "dates": f"{stamps[0][:19]}Z to {stamps[-1][:19]}Z (UTC)" if stamps else "",
        "rows": f"{len(df)} (" + ", ".join(f"{k or 'model'} {n}" for k, n in kinds.items()) + ")",
    }


def load_machines(paths: Sequence[str | os.PathLike[str]]) -> list[Machine]:
    """The machines of the input files, in order: each file's hosts, aliased A, B, ...

    ``ReportError`` (one line naming the file) for a file that is no readable report, holds no row, is given
    twice, or shares a run with another file."""
    if not paths:
        raise ReportError("no report file given; allowed: one or more report CSVs")
    check_distinct(paths)
    frames = [read_report(p) for p in paths]
    for p, df in zip(paths, frames):
        if df.empty:
            raise ReportError(f"{p}: no rows (only a header); allowed: a report CSV with at least one row")
    check_no_shared_runs(list(paths), frames)
    machines: list[Machine] = []
    for p, df in zip(paths, frames):
        text = read_text_file(p)
        for host in dict.fromkeys(df["machine"]):
            rows = df[df["machine"] == host].copy()
            alias = machine_alias(len(machines))
            rows["alias"] = alias
            machines.append(Machine(alias, rows, text, _facts(rows)))
    return machines


def _latest(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the latest (by timestamp), as ``xfbench compare`` counts them."""
    rows = rows.sort_values("timestamp", kind="mergesort")
    return rows.drop_duplicates(subset=["alias", *CONFIG_KEY], keep="last")


def model_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of kind model, latest per configuration."""
    kind = rows["kind"].fillna("").astype(str)
    return _latest(rows[kind.isin(["model", ""]) & (rows["status"] == "ok")])


# --- numbers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quality:
    """Median and worst |relative error| of one metric over a group of rows, against its target."""

    metric: str
    count: int
    median: float
    worst: float
    target: Target

    @property
    def met(self) -> bool:
        return self.count > 0 and self.median <= self.target.median and self.worst <= self.target.worst


def quality(rows: pd.DataFrame, metric: str, backend: str) -> Quality:
    """``metric``'s median and worst |error| over ``rows`` (blank errors left out)."""
    errors = [abs(float(v)) for v in rows[ERROR_COLUMNS[metric]] if pd.notna(v) and math.isfinite(float(v))]
    target = target_for(metric, backend)
    if not errors:
        return Quality(metric, 0, math.nan, math.nan, target)
    return Quality(metric, len(errors), float(statistics.median(errors)), max(errors), target)


def quality_table(machines: Sequence[Machine]) -> list[tuple[str, str, str, list[Quality]]]:
    """(alias, backend, phase, [time, memory, flops]) per machine, framework and phase of the model rows."""
    out = []
    for m in machines:
        rows = model_rows(m.rows)
        for (backend, phase), group in rows.groupby(["backend", "phase"], sort=True):
            out.append((m.alias, str(backend), str(phase), [quality(group, k, str(backend)) for k in ERROR_COLUMNS]))
    return out


def _config_text(row: Mapping[Any, object]) -> str:
    """A configuration in words: kind, backend, device, model or shape, phase, batch, the other set keys."""
    parts = []
    for col in CONFIG_KEY:
        value = row.get(col)
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
            continue
        text = str(value)
        if col == "batch_size":
            text = f"batch {text}"
        elif col == "workers":
            text = f"{text} workers"
        elif col == "tf32":
            text = f"tf32 {text}"
        parts.append(text)
    return " ".join(parts)


def pair_with_reference(machines: Sequence[Machine], reference: str) -> pd.DataFrame:
    """Each configuration measured ok on the reference and on another machine: one row per pair with
    ``alias``, ``config``, ``kind``, ``backend``, ``phase``, ``time_ref_s``, ``time_s``, ``ratio`` (time /
    time on the reference; > 1 slower) and the machine's own ``time_rel_error`` and the reference's."""
    keys = list(CONFIG_KEY)
    rows = pd.concat([m.rows for m in machines], ignore_index=True)
    kind = rows["kind"].fillna("").astype(str).replace("", "model")
    t = rows["time_median_s"]
    ok = _latest(rows[kind.isin(PAIRED_KINDS) & (rows["status"] == "ok") & t.notna() & (t > 0)])
    base = ok[ok["alias"] == reference][[*keys, "time_median_s", "time_rel_error"]]
    base = base.rename(columns={"time_median_s": "time_ref_s", "time_rel_error": "ref_rel_error"})
    parts = []
    for m in machines:
        if m.alias == reference:
            continue
        other = ok[ok["alias"] == m.alias][[*keys, "alias", "time_median_s", "time_rel_error"]]
        parts.append(base.merge(other.rename(columns={"time_median_s": "time_s"}), on=keys, how="inner"))
    columns = [*keys, "alias", "time_ref_s", "time_s", "ratio", "time_rel_error", "ref_rel_error", "config"]
    if not parts or all(p.empty for p in parts):
        return pd.DataFrame(columns=columns)
    pairs = pd.concat(parts, ignore_index=True)
    pairs["kind"] = pairs["kind"].fillna("").astype(str).replace("", "model")
    pairs["ratio"] = pairs["time_s"].astype(float) / pairs["time_ref_s"].astype(float)
    pairs["config"] = [_config_text(r) for r in pairs[keys].to_dict("records")]
    return pairs.sort_values(["alias", "kind", "backend", "phase", "config"], kind="mergesort")[columns].reset_index(
        drop=True
    )


def geomeans(pairs: pd.DataFrame) -> pd.DataFrame:
    """Geometric mean of the ratios per machine, kind, backend and phase, with the count and the median
    |time error| of the machine's own prediction and of the reference's over the same configurations."""
    out = []
    for (alias, kind, backend, phase), g in pairs.groupby(["alias", "kind", "backend", "phase"], sort=True):
        own = [abs(float(v)) for v in g["time_rel_error"] if pd.notna(v)]
        ref = [abs(float(v)) for v in g["ref_rel_error"] if pd.notna(v)]
        out.append(
            {
                "alias": alias,
                "kind": kind,
                "backend": backend,
                "phase": phase,
                "count": len(g),
                "geomean": geometric_mean(float(r) for r in g["ratio"]),
                "own_error": statistics.median(own) if own else math.nan,
                "ref_error": statistics.median(ref) if ref else math.nan,
            }
        )
    cols = ["alias", "kind", "backend", "phase", "count", "geomean", "own_error", "ref_error"]
    return pd.DataFrame(out, columns=cols)


# --- HTML pieces --------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#fff}
main{max-width:1400px;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{font-size:1.6rem;margin:.4rem 0}h2{font-size:1.3rem;border-bottom:2px solid #d0d7de;padding-bottom:.2rem;
margin-top:2.2rem}h3{font-size:1.05rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.86rem}
th,td{border:1px solid #d0d7de;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.met{background:#dafbe1;color:#0f5323;font-weight:600}.missed{background:#ffebe9;color:#82071e;font-weight:600}
.none{color:#6e7781}.verdict{font-size:1.05rem}.verdict li{margin:.2rem 0}
.faster{color:#0f5323}.slower{color:#82071e}
figure{margin:1rem 0 2rem}figure svg{max-width:100%;height:auto}figcaption{font-size:.9rem;color:#444}
nav a{margin-right:.9rem}.scroll{overflow-x:auto}dl.legend{display:grid;grid-template-columns:max-content auto;
gap:.1rem 1rem}dl.legend dt{font-weight:600}code{background:#f3f5f7;padding:0 .2rem}
""".strip()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, fmt: str = "{:.4g}") -> str:
    if value is None or value is pd.NA:
        return ""
    try:
        f = float(str(value))
    except ValueError:
        return _e(value)
    return "" if math.isnan(f) else fmt.format(f)


def _pct(value: object, signed: bool = True) -> str:
    return _num(value, "{:+.1%}" if signed else "{:.1%}")


def _bytes(value: object) -> str:
    try:
        b = float(str(value))
    except ValueError:
        return ""
    if math.isnan(b):
        return ""
    return f"{b / 1e6:,.1f} MB"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells are HTML already (escape them first); ``numeric`` columns right-aligned."""
    nums = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            if c.startswith(("<td", "<th")):
                cells.append(c)
            else:
                cells.append(f'<td class="n">{c}</td>' if i in nums else f"<td>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _marker(q: Quality) -> str:
    if q.count == 0:
        return '<td class="none">no data</td>'
    return '<td class="met">met</td>' if q.met else '<td class="missed">missed</td>'


def _target_text(q: Quality) -> str:
    if q.metric == "flops":
        return "0.0%"
    return f"&le;{q.target.median:.0%} / &le;{q.target.worst:.0%}"


# --- plots --------------------------------------------------------------------------------------------------

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_MARKERS = "os^Dvx*+"


def _svg(fig: Figure, prefix: str) -> str:
    """``fig`` as inline SVG: no XML prolog, DOCTYPE, metadata or namespace URL; ids prefixed (unique per page)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "xfbench"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    for ident in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{ident}"', f'id="{prefix}-{ident}"')
        svg = svg.replace(f"#{ident})", f"#{prefix}-{ident})").replace(f'href="#{ident}"', f'href="#{prefix}-{ident}"')
    return svg


def _figure(fig_id: str, title: str, fig: Figure, caption: str) -> str:
    return (
        f'<figure id="{fig_id}" class="plot"><h3>{_e(title)}</h3>{_svg(fig, fig_id)}'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _colors(names: Iterable[str]) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(sorted(set(names)))}


def _plot_predicted_vs_measured(rows: pd.DataFrame, measured: str, predicted: str, unit: str, scale: float) -> Figure:
    data = rows[rows[measured].notna() & rows[predicted].notna() & (rows[measured] > 0) & (rows[predicted] > 0)]
    aliases = list(dict.fromkeys(data["alias"])) or ["A"]
    fig = Figure(figsize=(min(5.0 * len(aliases), 13.0), 4.6))
    axes = fig.subplots(1, len(aliases), squeeze=False)[0]
    colors = _colors(data["backend"].astype(str))
    phases = sorted(set(data["phase"].astype(str)))
    for ax, alias in zip(axes, aliases):
        sub = data[data["alias"] == alias]
        for (backend, phase), g in sub.groupby(["backend", "phase"], sort=True):
            ax.scatter(
                g[predicted].astype(float) / scale,
                g[measured].astype(float) / scale,
                color=colors[str(backend)],
                marker=_MARKERS[phases.index(str(phase)) % len(_MARKERS)],
                label=f"{backend} {phase}",
                s=28,
            )
        if not data.empty:
            lo = float(min(data[measured].min(), data[predicted].min())) / scale
            hi = float(max(data[measured].max(), data[predicted].max())) / scale
            ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="measured = predicted")
            ax.set_xscale("log")
            ax.set_yscale("log")
        if sub.empty:
            ax.text(0.5, 0.5, "no rows with both figures", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"predicted ({unit})")
        ax.set_ylabel(f"measured ({unit})")
        ax.set_title(f"machine {alias}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_throughput(rows: pd.DataFrame) -> Figure:
    data = rows[rows["throughput_samples_per_s"].notna() & (rows["throughput_samples_per_s"] > 0)].copy()
    data["model_label"] = [f"{Path(str(m)).stem} b{b}" for m, b in zip(data["model"], data["batch_size"])]
    panels = [(a, p) for a in dict.fromkeys(data["alias"]) for p in sorted(set(data["phase"].astype(str)))]
    ncols = min(len(panels), 2) or 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    models = sorted(set(data["model_label"]))
    fig = Figure(figsize=(6.5 * ncols, max(3.0, 0.32 * len(models) + 1.2) * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _colors(data["backend"].astype(str))
    backends = sorted(colors)
    height = 0.8 / max(len(backends), 1)
    for ax, (alias, phase) in zip(axes, panels):
        sub = data[(data["alias"] == alias) & (data["phase"] == phase)]
        y = np.arange(len(models))
        for j, backend in enumerate(backends):
            s = sub[sub["backend"] == backend].set_index("model_label")["throughput_samples_per_s"]
            vals = np.array([float(s.get(m, np.nan)) for m in models])
            keep = ~np.isnan(vals)
            ax.barh(y[keep] + (j - (len(backends) - 1) / 2) * height, vals[keep], height, color=colors[backend])
            ax.barh([], [], color=colors[backend], label=backend)
        ax.set_yticks(y)
        ax.set_yticklabels(models, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("samples/s (log)")
        ax.set_title(f"machine {alias}, {phase}")
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _matmul_size(shape: str) -> float:
    dims = [int(d) for d in re.findall(r"\d+", shape)]
    return float(np.prod(dims)) ** (1 / 3) if dims else math.nan


def _plot_matmul(rows: pd.DataFrame) -> tuple[Figure, list[str]]:
    data = rows[rows["gflops_per_s"].notna()].copy()
    data["size"] = [_matmul_size(str(s)) for s in data["shape"]]
    data["dev"] = ["cpu" if str(d).startswith("cpu") else "gpu" for d in data["device"]]
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.subplots()
    colors = _colors(data["backend"].astype(str))
    crossovers = []
    for (alias, backend, dev, transfers), g in data.groupby(["alias", "backend", "dev", "transfers"], sort=True):
        g = g.sort_values("size")
        label = f"{alias} {backend} {dev}" + (f" ({transfers} transfers)" if transfers else "")
        ax.plot(
            g["size"],
            g["gflops_per_s"],
            marker="o",
            linestyle="-" if dev == "cpu" else "--",
            label=label,
            color=colors[str(backend)],
        )
    for (alias, backend), g in data.groupby(["alias", "backend"], sort=True):
        cpu = g[g["dev"] == "cpu"].groupby("size")["time_median_s"].min()
        gpu = g[g["dev"] == "gpu"].groupby("size")["time_median_s"].min()
        both = sorted(set(cpu.index) & set(gpu.index))
        faster = [s for s in both if gpu[s] < cpu[s]]
        if both:
            where = f"from size {faster[0]:.0f}" if faster else "never within the sizes measured"
            crossovers.append(f"{alias} {backend}: the GPU is faster {where}")
            if faster:
                ax.axvline(faster[0], color=colors[str(backend)], linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("matrix size (cube root of M*K*N)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("matmul: CPU vs GPU" if set(data["dev"]) == {"cpu", "gpu"} else "matmul throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, crossovers


def _plot_scaling(rows: pd.DataFrame) -> Figure:
    data = rows[rows["speedup"].notna() & rows["workers"].notna()]
    modes = sorted(set(data["scaling_mode"].astype(str))) or [""]
    fig = Figure(figsize=(12.0, 3.8 * len(modes)))
    axes = fig.subplots(len(modes), 2, squeeze=False)
    colors = _colors(data["backend"].astype(str))
    models = sorted(set(data["model"].astype(str)))
    for row_axes, mode in zip(axes, modes):
        sub = data[data["scaling_mode"] == mode]
        for (alias, backend, model), g in sub.groupby(["alias", "backend", "model"], sort=True):
            g = g.sort_values("workers")
            marker = _MARKERS[models.index(str(model)) % len(_MARKERS)]
            for ax, col in zip(row_axes, ("speedup", "efficiency")):
                c = colors[str(backend)]
                ax.plot(g["workers"], g[col], marker=marker, color=c, label=f"{alias} {backend} {model}")
                ax.plot(g["workers"], g[f"{col}_predicted"], marker=marker, color=c, linestyle=":", alpha=0.7)
        for ax, col in zip(row_axes, ("speedup", "efficiency")):
            ax.set_xlabel("workers")
            ax.set_ylabel(col)
            ax.set_title(f"{mode} scaling: {col} (solid measured, dotted predicted)")
        row_axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def _verdict_class(message: str) -> str:
    found = re.search(r"verdict: ([^|]*)", message)
    text = found.group(1).strip() if found else ""
    for word in ("holds", "wrong", "off by", "unanswered", "pending"):
        if text.startswith(word):
            return word
    return "other" if text else "no verdict"


def _plot_exercises(rows: pd.DataFrame) -> Figure:
    data = rows.copy()
    data["verdict"] = [_verdict_class(str(m)) if s == "ok" else str(s) for m, s in zip(data["message"], data["status"])]
    data["who"] = [f"{a} {b}" for a, b in zip(data["alias"], data["backend"])]
    table = data.groupby(["who", "verdict"]).size().unstack(fill_value=0)
    fig = Figure(figsize=(9.0, 0.5 * len(table) + 1.6))
    ax = fig.subplots()
    left = np.zeros(len(table))
    for i, verdict in enumerate(table.columns):
        vals = table[verdict].to_numpy(dtype=float)
        ax.barh(list(table.index), vals, left=left, color=_PALETTE[i % len(_PALETTE)], label=str(verdict))
        left += vals
    ax.set_xlabel("exercise rows")
    ax.set_title("exercise verdicts per backend")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    return fig


# --- sections -----------------------------------------------------------------------------------------------


def _kind(rows: pd.DataFrame, kind: str) -> pd.DataFrame:
    return rows[rows["kind"].fillna("").astype(str).replace("", "model") == kind]


def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{_e(title)}</h2>{body}</section>'


def _verdict_section(machines: Sequence[Machine], qualities: list, pairs: pd.DataFrame, reference: str) -> str:
    items = []
    for m in machines:
        counts = m.rows["status"].value_counts()
        status = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES)
        per_metric = []
        for metric in ERROR_COLUMNS:
            qs = [q for alias, _, _, group in qualities if alias == m.alias for q in group if q.metric == metric]
            qs = [q for q in qs if q.count]
            if qs:
                met = sum(q.met for q in qs)
                word = "met" if met == len(qs) else "missed"
                per_metric.append(f'{metric} {met} of {len(qs)} (<span class="{word}">{word}</span>)')
        targets = "; prediction targets met, per framework and phase: " + ", ".join(per_metric) if per_metric else ""
        items.append(f"<li>Machine <b>{_e(m.alias)}</b>: {len(m.rows)} rows ({status}){targets}.</li>")
    if not pairs.empty:
        model = pairs[pairs["kind"] == "model"]
        for alias, g in (model if not model.empty else pairs).groupby("alias", sort=False):
            overall = geometric_mean(float(r) for r in g["ratio"])
            cls = "slower" if overall > 1 else "faster"
            what = "model configurations" if not model.empty else "configurations"
            items.append(
                f"<li>Machine <b>{_e(alias)}</b> against the reference <b>{_e(reference)}</b>: "
                f'<span class="{cls}">{speed_words(overall)}</span> (geometric mean of the time ratios over '
                f"{len(g)} {what}; per backend and phase in the comparison).</li>"
            )
    return _section("verdict", "Verdict", f'<ul class="verdict">{"".join(items)}</ul>')


def _provenance_section(machines: Sequence[Machine], command: str, reference: str | None) -> str:
    parts = [
        f"<p>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC by <code>{_e(command)}</code> from "
        f"{len({id(m.source_text) for m in machines})} file(s); "
        f"schema version {SCHEMA_VERSION}. The run's own command line is not a column of the CSV schema: the rows "
        "say what ran (kinds, backends, configurations) below.</p>",
        "<p>Machines are named by alias; the legend:</p>",
    ]
    keys = list(machines[0].facts)
    headers = ["", *(m.alias + (" (reference)" if m.alias == reference else "") for m in machines)]
    rows = [[f"<th>{_e(k)}</th>", *(_e(m.facts[k]) for m in machines)] for k in keys]
    parts.append(_table(headers, rows))
    return _section("provenance", "Provenance", "".join(parts))


def _summary_section(machines: Sequence[Machine], qualities: list) -> str:
    status_rows = []
    reasons = []
    for m in machines:
        counts = m.rows["status"].value_counts()
        status_rows.append([_e(m.alias), *(str(int(counts.get(s, 0))) for s in STATUSES), str(len(m.rows))])
        bad = m.rows[m.rows["status"] != "ok"]
        for (status, message), g in bad.groupby(["status", "message"], sort=True):
            reasons.append([_e(m.alias), _e(status), str(len(g)), _e(message or "(no message)")])
    body = [
        "<h3>Rows by status</h3>",
        _table(["machine", *STATUSES, "rows"], status_rows, numeric=range(1, 6)),
    ]
    if reasons:
        body += ["<h3>Reasons (rows not ok)</h3>", _table(["machine", "status", "rows", "reason"], reasons, [2])]
    else:
        body.append("<p>Every row is ok.</p>")
    qrows = []
    for alias, backend, phase, qs in qualities:
        cells = [_e(alias), _e(backend), _e(phase)]
        for q in qs:
            cells += [str(q.count), _pct(q.median, False), _pct(q.worst, False), _target_text(q), _marker(q)]
        qrows.append(cells)
    headers = ["machine", "framework", "phase"]
    for metric in ERROR_COLUMNS:
        headers += [f"{metric} n", f"{metric} median |err|", f"{metric} worst |err|", f"{metric} target", metric]
    body += [
        "<h3>Prediction quality (model rows, ok)</h3>",
        "<p>|error| = |predicted &minus; measured| / measured (FLOPs: counted against the analytic count); "
        "target: median / worst |error|. "
        "Each verdict is in words (met / missed) as well as colour.</p>",
        _table(headers, qrows, numeric=[i for i in range(len(headers)) if " n" in headers[i] or "err" in headers[i]]),
    ]
    return _section("summary", "Summary", "".join(body))


def _models_section(machines: Sequence[Machine]) -> str:
    rows = pd.concat([model_rows(m.rows) for m in machines], ignore_index=True)
    if rows.empty:
        return _section("models", "Per model", "<p>No model rows with status ok.</p>")
    several = len(machines) > 1
    body = []
    for phase in sorted(set(rows["phase"].astype(str))):
        sub = rows[rows["phase"] == phase].sort_values(["alias", "model", "backend", "batch_size"], kind="mergesort")
        headers = [*(["machine"] if several else []), "model", "framework", "device", "batch", "dtype"]
        headers += ["time measured (s) [lo, hi]", "time predicted (s)", "time err", "within noise"]
        headers += ["memory measured", "spread", "memory predicted", "memory err"]
        headers += ["FLOPs counted", "FLOPs predicted", "FLOPs err", "samples/s"]
        table_rows = []
        for r in sub.to_dict("records"):
            lo, hi = _num(r["time_lo_s"]), _num(r["time_hi_s"])
            table_rows.append(
                [
                    *([_e(r["alias"])] if several else []),
                    _e(r["model"]),
                    _e(r["backend"]),
                    _e(r["device"]),
                    _num(r["batch_size"], "{:.0f}"),
                    _e(r["dtype"]),
                    _num(r["time_median_s"]) + (f" [{lo}, {hi}]" if lo and hi else ""),
                    _num(r["time_predicted_s"]),
                    _pct(r["time_rel_error"]),
                    _e(r["time_within_noise"] or ""),
                    _bytes(r["mem_measured_bytes"]),
                    ("&plusmn;" + _pct(r["mem_spread"], False)) if _pct(r["mem_spread"]) else "",
                    _bytes(r["mem_predicted_bytes"]),
                    _pct(r["mem_rel_error"]),
                    _num(r["flops_counted"], "{:.4g}"),
                    _num(r["flops_predicted_counter"], "{:.4g}"),
                    _pct(r["flops_rel_error"]),
                    _num(r["throughput_samples_per_s"], "{:.4g}"),
                ]
            )
        first = headers.index("time measured (s) [lo, hi]")
        body.append(f'<h3 id="models-{_e(phase)}">{_e(phase)}</h3>')
        body.append(_table(headers, table_rows, numeric=[i for i in range(first, len(headers)) if i != first + 3]))
    body.append(
        "<p>Memory: the median first-step peak over fresh processes; spread = (max &minus; min) / median of those "
        "processes. Per-layer times and memory timelines come from <code>xfbench time</code> and "
        "<code>xfbench memory</code>, whose output is not in the report CSV.</p>"
    )
    return _section("models", "Per model", "".join(body))


def _plots_section(machines: Sequence[Machine]) -> str:
    rows = pd.concat([m.rows for m in machines], ignore_index=True)
    ok = rows[rows["status"] == "ok"]
    models = pd.concat([model_rows(m.rows) for m in machines], ignore_index=True)
    figs = []
    if not models.empty:
        fig = _plot_predicted_vs_measured(models, "time_median_s", "time_predicted_s", "s per step", 1.0)
        figs.append(_figure("plot-time", "Time: predicted vs measured", fig, "Dashed: the identity line."))
        fig = _plot_predicted_vs_measured(models, "mem_measured_bytes", "mem_predicted_bytes", "MB", 1e6)
        figs.append(_figure("plot-memory", "Memory: predicted vs measured", fig, "Dashed: the identity line."))
        fig = _plot_throughput(models)
        figs.append(_figure("plot-throughput", "Throughput by model per framework", fig, "Log scale."))
    matmul = _latest(_kind(ok, "matmul"))
    if not matmul.empty:
        fig, crossovers = _plot_matmul(matmul)
        text = "; ".join(crossovers) or "No GPU rows: no crossover to show."
        figs.append(_figure("plot-matmul", "Matmul: CPU vs GPU", fig, _e(text)))
    scaling = _latest(_kind(ok, "scaling"))
    if not scaling.empty:
        fig = _plot_scaling(scaling)
        figs.append(_figure("plot-scaling", "Scaling: speedup and efficiency vs workers", fig, "Dotted: predicted."))
    exercises = _kind(rows, "exercise")
    if not exercises.empty:
        fig = _plot_exercises(exercises)
        figs.append(_figure("plot-exercises", "Exercise verdicts", fig, "Rows per verdict, from their messages."))
    if not figs:
        figs.append("<p>No rows to plot.</p>")
    return _section("plots", "Plots", "".join(figs))


def _comparison_section(pairs: pd.DataFrame, geo: pd.DataFrame, reference: str) -> str:
    body = [
        f"<p>Reference machine: <b>{_e(reference)}</b>. ratio = time on the machine / time on the reference "
        "(&gt; 1: slower). Configurations measured ok on both; the latest row of each counts.</p>",
        "<h3>Geometric mean per backend and phase</h3>",
    ]
    grows = []
    for r in geo.to_dict("records"):
        cls = "slower" if r["geomean"] > 1 else "faster"
        grows.append(
            [
                _e(r["alias"]),
                _e(r["kind"]),
                _e(r["backend"]),
                _e(r["phase"]),
                str(r["count"]),
                f"{r['geomean']:.3f}",
                f'<td class="{cls}">{_e(speed_words(r["geomean"]))}</td>',
                _pct(r["own_error"], False),
                _pct(r["ref_error"], False),
            ]
        )
    body.append(
        _table(
            [
                "machine",
                "kind",
                "backend",
                "phase",
                "count",
                "geomean ratio",
                "in words",
                "own time |err| (median)",
                "reference's |err| (median)",
            ],
            grows,
            numeric=[4, 5, 7, 8],
        )
    )
    body.append("<h3>Per configuration</h3>")
    prows = []
    for r in pairs.to_dict("records"):
        cls = "slower" if r["ratio"] > 1 else "faster"
        prows.append(
            [
                _e(r["alias"]),
                _e(r["config"]),
                _num(r["time_ref_s"]),
                _num(r["time_s"]),
                f"{r['ratio']:.3f}",
                f'<td class="{cls}">{_e(speed_words(r["ratio"]))}</td>',
                _pct(r["time_rel_error"]),
                _pct(r["ref_rel_error"]),
            ]
        )
    body.append(
        _table(
            [
                "machine",
                "configuration",
                f"time on {reference} (s)",
                "time (s)",
                "ratio",
                "in words",
                "own prediction err",
                "reference's err",
            ],
            prows,
            numeric=[2, 3, 4, 6, 7],
        )
    )
    return _section("comparison", "Comparison with the reference machine", "".join(body))


def _data_section(machines: Sequence[Machine]) -> str:
    links = []
    done: set[int] = set()
    for m in machines:
        key = id(m.source_text)
        if key in done:
            continue
        done.add(key)
        same = [x.alias for x in machines if x.source_text is m.source_text]
        b64 = base64.b64encode(m.source_text.encode("utf-8")).decode("ascii")
        name = "machine-" + "-".join(same) + ".csv"
        rows = sum(len(x.rows) for x in machines if x.source_text is m.source_text)
        links.append(
            f'<li><a download="{_e(name)}" href="data:text/csv;charset=utf-8;base64,{b64}">{_e(name)}</a>: '
            f"the {rows} source rows of machine {_e(', '.join(same))}, as read.</li>"
        )
    return _section(
        "data", "Source rows", f"<p>The page is the whole record: download the CSVs.</p><ul>{''.join(links)}</ul>"
    )


def render(machines: Sequence[Machine], reference: str | None = None, command: str = "xfbench report") -> str:
    """The page (HTML text) for ``machines``; ``reference`` is the alias the others are compared with (default
    the first)."""
    ref = reference or machines[0].alias
    qualities = quality_table(machines)
    several = len(machines) > 1
    pairs = pair_with_reference(machines, ref) if several else pd.DataFrame()
    geo = geomeans(pairs) if several and not pairs.empty else pd.DataFrame(columns=["kind"])
    sections = [
        _verdict_section(machines, qualities, pairs, ref),
        _provenance_section(machines, command, ref if several else None),
        _summary_section(machines, qualities),
        _models_section(machines),
        _plots_section(machines),
    ]
    if several:
        if pairs.empty:
            sections.append(
                _section(
                    "comparison",
                    "Comparison with the reference machine",
                    "<p>No configuration was measured ok on the reference and another machine.</p>",
                )
            )
        else:
            sections.append(_comparison_section(pairs, geo, ref))
    sections.append(_data_section(machines))
    present = [s for s in SECTIONS if several or s != "comparison"]
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in present)
    title = "xfbench report: machine" + ("s " if several else " ") + ", ".join(m.alias for m in machines)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><nav>{nav}</nav>{''.join(sections)}</main></body></html>\n"
    )


def resolve_reference(machines: Sequence[Machine], paths: Sequence[str | os.PathLike[str]], value: str) -> str:
    """The alias ``--reference`` names: an alias (A, B, ...) or one of the files given (its first machine)."""
    aliases = [m.alias for m in machines]
    if value in aliases:
        return value
    try:
        wanted = os.stat(value)
        for p in paths:
            st = os.stat(p)
            if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
                text = read_text_file(p)
                return next(m.alias for m in machines if m.source_text == text)
    except OSError:
        pass
    raise ReportError(
        f"--reference {value!r}: not a machine of this report; allowed: {', '.join(aliases)} or one of the files given"
    )


def check_output(out: str | os.PathLike[str]) -> Path:
    """``ReportError`` unless ``out`` can be written as a file (its folder exists and is writable)."""
    p = Path(out)
    if p.is_dir():
        raise ReportError(f"-o {str(out)!r}: is a directory; allowed: a writable file path (e.g. report.html)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"-o {str(out)!r}: folder {str(parent)!r} does not exist; allowed: a writable file path")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ReportError(f"-o {str(out)!r}: not writable; allowed: a writable file path")
    return p


def write_report_html(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    reference: str | None = None,
    command: str = "xfbench report",
) -> Path:
    """Read ``paths``, render the page and write it to ``out`` (beside it, then renamed into place).

    ``ReportError`` (one line) for an input that is no readable report, an unknown ``reference``, or an
    output path that cannot be written."""
    target = check_output(out)
    machines = load_machines(paths)
    ref = resolve_reference(machines, paths, reference) if reference is not None else None
    text = render(machines, ref, command)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ReportError(f"-o {str(out)!r}: cannot write ({exc.strerror or type(exc).__name__})") from None
    return target
