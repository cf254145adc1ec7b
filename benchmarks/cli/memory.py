"""``xfbench memory``: one model's step memory at several batches, measured beside its predictions, split into
a fixed part and a per-sample part.

``xfbench memory MODEL --backend B --batch 8,16,32 [--seq 64,128,256] [--device cpu] [--phase training]
[--repeats 3] [--optimizer sgd] [--dtype float32] [--out DIR] [--no-plot]``

``--seq`` sweeps the sequence length of a token model (its input ``(T,)``) at one batch instead: the fits are
then per token, and with three or more lengths a quadratic ``fixed + per_token x T + per_token2 x T^2`` shows
attention's ``T^2`` term (the score and probability matrices) beside the linear one.

For each batch the memory worker (:mod:`benchmarks.harness.worker`) measures the first step in ``--repeats`` fresh
processes: the process-level peak above the post-build baseline (median and spread) and, with torch, the
tensor-level peak (``MemTracker``). Beside them: the process-level prediction (the row's
``mem_predicted_bytes``: the simulated step above the baseline plus the framework overhead measured on a probe
model) and the simulated tensor-level peak. A least-squares line ``bytes = fixed + per_sample x batch`` is
fitted to each series; the output compares the fits. The PNG (one panel per batch) shows memory over the step:
RSS above the baseline sampled with memory-profiler (``memory_usage``, 1 ms), torch's CPU allocator from its
profiler's memory events where available, and the simulated timeline (op by op, above its baseline) overlaid,
each on its own step's 0..1 progress axis.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xfbench.analytics.vocab import BACKENDS, DEFAULT_DTYPE, DEFAULT_OPTIMIZER, DTYPES, OPTIMIZERS, PHASES, device_kind
from xfbench.benchmarks.cli.argtypes import device_arg, one_backend, positive_int


@dataclass
class Point:
    """One batch: the measurements and the predictions (bytes; ``None`` where there is none)."""

    batch: int
    status: str = "ok"
    message: str = ""
    measured: int | None = None  # process level, median over the repeats
    measured_all: list[int] = field(default_factory=list)
    spread: float | None = None
    predicted: int | None = None  # process level (mem_predicted_bytes)
    tensor_measured: int | None = None
    tensor_predicted: int | None = None
    timeline: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None  # the sequence length of a --seq sweep (None: a batch sweep)

    @property
    def x(self) -> int:
        """The swept variable: the sequence length in a --seq sweep, the batch otherwise."""
        return self.batch if self.tokens is None else self.tokens


@dataclass(frozen=True)
class Fit:
    """``bytes = fixed + per_sample x batch``, least squares."""

    fixed: float
    per_sample: float
    points: int


def fit_line(batches: list[int], values: list[float]) -> Fit | None:
    """The least-squares line through ``(batch, bytes)``; ``None`` with fewer than two distinct batches."""
    pairs = [(b, v) for b, v in zip(batches, values) if v is not None]
    if len({b for b, _ in pairs}) < 2:
        return None
    n = len(pairs)
    mean_b = sum(b for b, _ in pairs) / n
    mean_v = sum(v for _, v in pairs) / n
    sxx = sum((b - mean_b) ** 2 for b, _ in pairs)
    sxy = sum((b - mean_b) * (v - mean_v) for b, v in pairs)
    slope = sxy / sxx
    return Fit(mean_v - slope * mean_b, slope, n)


def fit_quadratic(xs: list[int], values: list[float | None]) -> tuple[float, float, float] | None:
    """Least squares ``bytes = a + b x + c x^2`` (``(a, b, c)``); ``None`` with fewer than three distinct x."""
    import numpy as np

    pairs = [(x, v) for x, v in zip(xs, values) if v is not None]
    if len({x for x, _ in pairs}) < 3:
        return None
    x = np.array([p[0] for p in pairs], dtype=float)
    a = np.stack([np.ones_like(x), x, x * x], axis=1)
    coef = np.linalg.lstsq(a, np.array([p[1] for p in pairs], dtype=float), rcond=None)[0]
    return float(coef[0]), float(coef[1]), float(coef[2])


def rel_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured == 0:
        return None
    return (predicted - measured) / abs(measured)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.3f}"


def fits(points: list[Point]) -> dict[str, Fit | None]:
    """The four series' fits: process level measured/predicted, tensor level measured/predicted."""
    ok = [p for p in points if p.status == "ok"]
    batches = [p.x for p in ok]
    series = {
        "measured": [p.measured for p in ok],
        "predicted": [p.predicted for p in ok],
        "tensor_measured": [p.tensor_measured for p in ok],
        "tensor_predicted": [p.tensor_predicted for p in ok],
    }
    return {name: fit_line(batches, values) for name, values in series.items()}  # type: ignore[arg-type]


def format_report(title: str, points: list[Point], repeats: int) -> str:
    """The text ``xfbench memory`` prints: a table per batch and the fits, in MB (10^6 bytes)."""
    from xfbench.reports.table import render_table

    unit = "tokens" if any(p.tokens is not None for p in points) else "batch"
    per = "token" if unit == "tokens" else "sample"
    rows = []
    for p in points:
        if p.status != "ok":
            rows.append([p.x, p.status, p.message[:60], "", "", "", "", "", ""])
            continue
        rows.append(
            [
                p.x,
                _mb(p.measured),
                "-" if p.spread is None else f"{p.spread:.1%}",
                _mb(p.predicted),
                _pct(rel_error(p.predicted, p.measured)),
                _mb(p.tensor_measured),
                _mb(p.tensor_predicted),
                _pct(rel_error(p.tensor_predicted, p.tensor_measured)),
                " ".join(f"{v / 1e6:.1f}" for v in p.measured_all),
            ]
        )
    out = [
        title,
        render_table(
            [
                unit,
                "measured MB",
                "spread",
                "predicted MB",
                "error",
                "tensor meas. MB",
                "tensor pred. MB",
                "error",
                f"repeats ({repeats}) MB",
            ],
            rows,
        ),
        "",
    ]
    f = fits(points)
    if len({p.x for p in points if p.status == "ok"}) < 2:
        out.append(f"fit: needs measurements at two or more distinct {'lengths' if unit == 'tokens' else 'batches'}")
        return "\n".join(out)
    labels = (("process level", "measured", "predicted"), ("tensor level", "tensor_measured", "tensor_predicted"))
    for label, meas_key, pred_key in labels:
        meas, pred = f[meas_key], f[pred_key]
        if meas is None and pred is None:
            continue
        if meas is None:
            assert pred is not None
            out.append(
                f"{label}: no measurement on this backend; predicted fixed {_mb(pred.fixed)} MB + "
                f"{_mb(pred.per_sample)} MB/{per}"
            )
        elif pred is None:
            out.append(f"{label}: measured fixed {_mb(meas.fixed)} MB + {_mb(meas.per_sample)} MB/{per}; no prediction")
        else:
            out.append(
                f"{label}: fixed measured {_mb(meas.fixed)} MB, predicted {_mb(pred.fixed)} MB "
                f"({_pct(rel_error(pred.fixed, meas.fixed))}); per {per} measured {_mb(meas.per_sample)} MB, "
                f"predicted {_mb(pred.per_sample)} MB ({_pct(rel_error(pred.per_sample, meas.per_sample))})"
            )
        if unit == "tokens":
            ok = [p for p in points if p.status == "ok"]
            xs = [p.x for p in ok]
            qm = fit_quadratic(xs, [getattr(p, meas_key) for p in ok])
            qp = fit_quadratic(xs, [getattr(p, pred_key) for p in ok])
            if qm is not None or qp is not None:
                parts = [
                    f"{name} {q[1]:,.0f} B/token + {q[2]:,.2f} B/token^2"
                    for name, q in (("measured", qm), ("predicted", qp))
                    if q is not None
                ]
                out.append(f"{label}, quadratic fit: " + "; ".join(parts))
    return "\n".join(out)


def _simulated_curve(config: Any) -> tuple[list[float], list[float]]:
    """The simulated first step above its baseline (what exists after the setup events): progress, bytes."""
    from xfbench.benchmarks.harness.rows import simulated_timeline

    timeline = simulated_timeline(config)
    if timeline is None:
        return [], []
    events = timeline.events
    first = next((i for i, e in enumerate(events) if e.stage != "setup"), len(events))
    base = events[first - 1].live_bytes if first else 0
    rest = events[first:]
    if not rest:
        return [], []
    n = max(len(rest) - 1, 1)
    return [i / n for i in range(len(rest))], [e.live_bytes - base for e in rest]


def _progress(times: list[float]) -> list[float]:
    if not times:
        return []
    t0, t1 = times[0], times[-1]
    span = (t1 - t0) or 1.0
    return [(t - t0) / span for t in times]


def plot(points: list[Point], configs: dict[int, Any], path: Path, title: str) -> Path:
    """One panel per batch: RSS (memory-profiler), torch's allocator, the simulated step; MB over progress."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if p.status == "ok"]
    fig, axes = plt.subplots(1, max(len(ok), 1), figsize=(5 * max(len(ok), 1), 4), squeeze=False)
    for ax, p in zip(axes[0], ok):
        tl = p.timeline
        if tl.get("rss_t"):
            ax.plot(
                _progress(tl["rss_t"]),
                [v / 1e6 for v in tl["rss_bytes"]],
                label=f"RSS above baseline ({tl.get('rss_sampler', 'sampled')})",
                color="tab:blue",
            )
        if tl.get("allocator_t"):
            ax.plot(
                _progress(tl["allocator_t"]),
                [v / 1e6 for v in tl["allocator_bytes"]],
                label="torch CPU allocator (profiler)",
                color="tab:green",
            )
        x, y = _simulated_curve(configs[p.x])
        if x:
            ax.plot(
                x,
                [v / 1e6 for v in y],
                label="simulated step (tensors + kernel scratch)",
                color="tab:orange",
                linestyle="--",
            )
        if p.measured is not None:
            ax.axhline(p.measured / 1e6, color="tab:blue", linestyle=":", label="measured peak (median)")
        if p.predicted is not None:
            ax.axhline(p.predicted / 1e6, color="tab:red", linestyle=":", label="predicted peak (process)")
        ax.set_title(f"batch {p.batch}" if p.tokens is None else f"{p.tokens} tokens, batch {p.batch}")
        ax.set_xlabel("progress through the step (time; op order for the simulation)")
        ax.set_ylabel("MB above the baseline")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure_point(config: Any, repeats: int, timeline: bool, overhead: int | None) -> Point:
    """One batch: the worker's figures (median, spread, tensor level) and the predictions."""
    from xfbench.benchmarks.harness.rows import memory_in_fresh_process, prediction_columns

    point = Point(config.batch_size)
    predicted = prediction_columns(config)
    point.tensor_predicted = predicted.get("mem_tensor_predicted_bytes")
    point.predicted = None if overhead is None else predicted["mem_predicted_bytes"] + overhead
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.json") if timeline else None
        result = memory_in_fresh_process(config, repeats=repeats, timeline=path)
        if path and os.path.exists(path):
            with open(path) as fh:
                point.timeline = json.load(fh)
    point.status = str(result.get("status", "error"))
    point.message = str(result.get("message", ""))
    point.measured = result.get("measured_bytes")
    point.measured_all = list(result.get("measured_bytes_all", []))
    point.spread = result.get("spread")
    point.tensor_measured = result.get("tensor_measured_bytes")
    return point


def _batches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}; allowed: comma-separated positive integers, e.g. 8,16,32"
        ) from None
    if not out or any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: comma-separated positive integers, e.g. 8,16,32")
    return tuple(dict.fromkeys(out))


def cmd_memory(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    from xfbench.benchmarks.cli.usage import check_output_dir, load_model, require_backends, require_feasible
    from xfbench.benchmarks.harness.rows import framework_overhead, probe_family
    from xfbench.benchmarks.harness.workload import Config

    spec = load_model(args.model, option="model")
    seqs: tuple[int | None, ...] = (None,)
    if args.seq:
        if len(args.batch) != 1:
            raise usage_error(
                f"--batch {','.join(map(str, args.batch))}: --seq sweeps the sequence length at one batch; "
                "allowed: one batch"
            )
        if len(spec.input_shape) != 1 or spec.input_dtype != "int64":
            raise usage_error(
                f"--seq {','.join(map(str, args.seq))}: {args.model} takes a {tuple(spec.input_shape)} input; "
                "allowed only for token models (input (T,))"
            )
        seqs = tuple(args.seq)
    shapes = {t: None if t is None else (t,) for t in seqs}
    for batch in args.batch:
        for t in seqs:
            sized = spec if t is None else load_model(args.model, option="model", input_shape=(t,))
            require_feasible(
                sized,
                batch,
                args.phase,
                dtype=args.dtype,
                optimizer=args.optimizer,
                framework=args.backend,
                device=device_kind(args.device),
                what=f"{args.model} {args.phase} at batch {batch}" + ("" if t is None else f", {t} tokens"),
            )
    out_dir = args.out or os.path.join("reports", "runs", "memory")
    if not args.no_plot:
        check_output_dir(out_dir, "--out")
    require_backends([args.backend])  # in a probe process: this one stays framework-free
    configs = {
        (b if t is None else t): Config(
            args.backend, args.model, args.phase, b, args.device, args.dtype, args.optimizer, shapes[t]
        )
        for b in args.batch
        for t in seqs
    }
    family = probe_family(spec)
    points = []
    for config in configs.values():
        what = "" if config.input_shape is None else f", {config.input_shape[0]} tokens"
        print(f"measuring {config.id}{what} ({args.repeats} processes) ...", flush=True)
        # the probe at this batch: a framework's fixed first-step memory switches with the batch (rows.py)
        overhead = framework_overhead(args.backend, args.device, args.phase, args.optimizer, family, config.batch_size)
        point = measure_point(config, args.repeats, not args.no_plot, overhead)
        point.tokens = None if config.input_shape is None else config.input_shape[0]
        points.append(point)
    where = "CPU" if args.device == "cpu" else args.device
    title = f"{spec.name} {args.phase} on {args.backend} {where} ({args.dtype}, {args.optimizer})"
    print(format_report(title, points, args.repeats))
    if overhead is None:
        print(f"note: the {family} probe's overhead could not be measured: no process-level prediction")
    else:
        print(f"predicted includes the framework overhead {overhead / 1e6:.2f} MB measured on the {family} probe")
    if not args.no_plot and any(p.status == "ok" for p in points):
        name = f"{Path(args.model).stem}-{args.backend}-{args.phase}-{where.replace(':', '')}.png".lower()
        print(f"plot: {plot(points, configs, Path(out_dir) / name, title)}")
    return 0 if all(p.status == "ok" for p in points) else 1


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds ``memory`` to the ``xfbench`` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
    from xfbench.benchmarks.harness.rows import DEFAULT_MEMORY_REPEATS

    p = sub.add_parser("memory", help="step memory at several batches: fixed + per-sample, measured vs predicted")
    p.add_argument("model", help="catalog name or a .json/.yaml spec file")
    p.add_argument("--backend", type=one_backend, required=True, help=", ".join(BACKENDS))
    p.add_argument("--batch", type=_batches, default=(8, 16, 32), help="comma-separated batches (default 8,16,32)")
    p.add_argument(
        "--seq",
        type=_batches,
        default=None,
        help="comma-separated sequence lengths of a token model, swept at one --batch (fits per token)",
    )
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, gpu or gpu:N (default cpu)")
    p.add_argument("--phase", choices=PHASES, default="training", help="inference or training (default training)")
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=DEFAULT_MEMORY_REPEATS,
        help=f"fresh processes per batch (median; default {DEFAULT_MEMORY_REPEATS})",
    )
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZER)
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE)
    p.add_argument("--out", default=None, help="directory of the PNG (default: reports/runs/memory)")
    p.add_argument("--no-plot", action="store_true", help="no PNG (and no timeline sampling)")
    p.set_defaults(func=lambda args: cmd_memory(args, usage_error))


__all__ = ["Fit", "Point", "cmd_memory", "fit_line", "fit_quadratic", "fits", "format_report", "register", "rel_error"]
