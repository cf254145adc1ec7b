"""The end-of-run summary table."""

from __future__ import annotations

from typing import Any

from xfbench.analytics.units import fmt_bytes, fmt_flops
from xfbench.reports.table import render_table


def _ms(v: Any) -> str:
    return "-" if v in (None, "") else f"{float(v) * 1e3:.2f} ms"


def _ratio(measured: Any, predicted: Any) -> str:
    if not measured or predicted in (None, ""):
        return "-"
    return f"{float(predicted) / float(measured):.2f}"


def summary_table(rows: list[dict[str, Any]]) -> str:
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
            "samples/s",
            "FLOPs counted",
            "FLOPs predicted",
            "mem measured",
            "mem predicted",
            "pred/meas",
        ],
        body,
    )
