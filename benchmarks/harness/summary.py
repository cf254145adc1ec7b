"""The end-of-run summary table."""

from __future__ import annotations

import statistics
from typing import Any

from xfbench.analytics.units import fmt_bytes, fmt_flops
from xfbench.reports.table import render_table


def _ms(v: Any) -> str:
    return "-" if v in (None, "") else f"{float(v) * 1e3:.2f} ms"


def _ratio(measured: Any, predicted: Any) -> str:
    if not measured or predicted in (None, ""):
        return "-"
    return f"{float(predicted) / float(measured):.2f}"


def _interval(r: dict[str, Any]) -> str:
    lo, hi = r.get("time_lo_s"), r.get("time_hi_s")
    if lo in (None, "") or hi in (None, ""):
        return "-"
    return f"{float(lo) * 1e3:.2f}..{float(hi) * 1e3:.2f}"


def _pred(r: dict[str, Any]) -> str:
    p = r.get("time_predicted_s")
    if p in (None, ""):
        return "-"
    mark = {"yes": " (in)", "no": ""}.get(str(r.get("time_within_noise") or ""), "")
    return f"{float(p) * 1e3:.2f} ms{mark}"


def verdict_lines(rows: list[dict[str, Any]], noise_rows: list[dict[str, Any]] | None = None) -> list[str]:
    """The lines under the table: the noise probe's verdict, and how many time predictions fall within the
    measurement's between-process interval ("within noise") or outside it."""
    from xfbench.benchmarks.harness.noise import verdict

    lines = []
    noisy = verdict(noise_rows or [])
    if noisy is not None:
        lines.append(noisy[1])
    judged = [r for r in rows if r.get("time_within_noise") in ("yes", "no")]
    if judged:
        inside = sum(1 for r in judged if r["time_within_noise"] == "yes")
        errors = sorted(abs(float(r["time_rel_error"])) for r in judged if r.get("time_rel_error") not in (None, ""))
        error = f"; median |error| {statistics.median(errors):.1%}, worst {errors[-1]:.1%}" if errors else ""
        lines.append(
            f"time predictions: {inside} of {len(judged)} rows within noise (inside the between-process interval), "
            f"{len(judged) - inside} outside{error}"
        )
    return lines


def summary_table(rows: list[dict[str, Any]], noise_rows: list[dict[str, Any]] | None = None) -> str:
    """The table of the run's model rows, then :func:`verdict_lines`."""
    body = []
    for r in rows:
        body.append(
            [
                r.get("model", ""),
                r.get("backend", ""),
                r.get("device", ""),
                r.get("phase", ""),
                r.get("batch_size", ""),
                r.get("status", ""),
                _ms(r.get("time_median_s")),
                _interval(r),
                _pred(r),
                "-" if not r.get("throughput_samples_per_s") else f"{float(r['throughput_samples_per_s']):.1f}",
                fmt_flops(r.get("flops_counted")),
                fmt_flops(r.get("flops_predicted_counter")),
                fmt_bytes(r.get("mem_measured_bytes")),
                fmt_bytes(r.get("mem_predicted_bytes")),
                _ratio(r.get("mem_measured_bytes"), r.get("mem_predicted_bytes")),
            ]
        )
    return render_table(
        [
            "model",
            "backend",
            "device",
            "phase",
            "batch",
            "status",
            "time (median)",
            "between processes (ms)",
            "time predicted",
            "samples/s",
            "FLOPs counted",
            "FLOPs predicted",
            "mem measured",
            "mem predicted",
            "pred/meas",
        ],
        body,
    ) + "".join("\n" + line for line in verdict_lines(rows, noise_rows))
