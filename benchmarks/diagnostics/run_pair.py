"""Two benchmark runs of one machine against issue 20's targets: do their figures hold run to run?

    python benchmarks/diagnostics/run_pair.py RUN1.csv RUN2.csv [--label "AVX-512"] [--markdown]

Model rows (status ok) pair on the configuration key (backend, model, phase, batch, device, dtype, optimizer). Per
backend, it prints:

* measured time: the median and worst ``|t2 - t1| / t1`` of ``time_median_s``, the rows moving beyond 20%, and the
  share of (row, direction) pairs where one run's between-process interval ``[time_lo_s, time_hi_s]`` covers the
  other run's median (target: at least 80%);
* predicted time: the median and worst ``|p2 - p1| / p1`` of ``time_predicted_s`` (target: 3% median, 10% worst);
* time error in each run: median and worst ``|time_rel_error|``, rows beyond 40%, rows within noise
  (``time_within_noise``); and memory error: median and worst ``|mem_rel_error|``, rows beyond 25%;
* each run's noise-probe verdict (``kind = noise`` rows).

Framework-free (csv and the suite's noise rule): run it with any environment that has xfbench installed, e.g.
``.tox/core/bin/python benchmarks/diagnostics/run_pair.py A B``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xfbench.benchmarks.harness.noise import verdict

KEY = ("backend", "model", "phase", "batch_size", "device", "dtype", "optimizer")


def read_rows(path: str) -> list[dict[str, str]]:
    """The rows of a report CSV, or of every CSV in a folder (one run's per-backend reports)."""
    files = sorted(Path(path).glob("*.csv")) if Path(path).is_dir() else [Path(path)]
    rows: list[dict[str, str]] = []
    for file in files:
        with open(file, encoding="utf-8") as fh:
            rows += list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return rows


def _f(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _short(model: str) -> str:
    return Path(model).stem if "/" in model else model


def model_rows(rows: Iterable[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    return {tuple(r.get(k, "") for k in KEY): r for r in rows if r.get("kind") == "model" and r.get("status") == "ok"}


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1%} / {max(values):.1%}"


def noise_line(rows: list[dict[str, str]]) -> str:
    """The run's noise-probe verdict, by the suite's own rule (:func:`benchmarks.harness.noise.verdict`)."""
    judged = verdict(rows)
    return "no noise probe" if judged is None else judged[1]


def compare(rows1: list[dict[str, str]], rows2: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per backend: the figures of the module docstring, as numbers (see :func:`render`)."""
    a, b = model_rows(rows1), model_rows(rows2)
    out: dict[str, dict[str, Any]] = {}
    for backend in sorted({k[0] for k in a} | {k[0] for k in b}):
        keys = sorted(k for k in a if k in b and k[0] == backend)
        moved, covered, pairs, pmoved, worst_rows = [], 0, 0, [], []
        for k in keys:
            t1, t2 = _f(a[k].get("time_median_s")), _f(b[k].get("time_median_s"))
            if t1 and t2:
                moved.append(abs(t2 - t1) / t1)
                worst_rows.append((abs(t2 - t1) / t1, f"{_short(k[1])} {k[2]} b{k[3]}"))
                for this, other in ((a[k], t2), (b[k], t1)):
                    lo, hi = _f(this.get("time_lo_s")), _f(this.get("time_hi_s"))
                    if lo is not None and hi is not None:
                        pairs += 1
                        covered += lo <= other <= hi
            p1, p2 = _f(a[k].get("time_predicted_s")), _f(b[k].get("time_predicted_s"))
            if p1 and p2:
                pmoved.append(abs(p2 - p1) / p1)
        per_run = []
        for rows in (a, b):
            mine = [r for k, r in rows.items() if k[0] == backend]
            terr = [abs(v) for v in (_f(r.get("time_rel_error")) for r in mine) if v is not None]
            merr = [abs(v) for v in (_f(r.get("mem_rel_error")) for r in mine) if v is not None]
            within = sum(1 for r in mine if r.get("time_within_noise") == "yes")
            judged = sum(1 for r in mine if r.get("time_within_noise") in ("yes", "no"))
            worst_t = sorted(
                (
                    (abs(_f(r.get("time_rel_error")) or 0), f"{_short(r['model'])} {r['phase']} b{r['batch_size']}")
                    for r in mine
                ),
                reverse=True,
            )[:3]
            worst_m = sorted(
                (
                    (abs(_f(r.get("mem_rel_error")) or 0), f"{_short(r['model'])} {r['phase']} b{r['batch_size']}")
                    for r in mine
                ),
                reverse=True,
            )[:3]
            per_run.append(
                {
                    "rows": len(mine),
                    "time_error": terr,
                    "time_beyond_40": sum(v > 0.40 for v in terr),
                    "within_noise": (within, judged),
                    "mem_error": merr,
                    "mem_beyond_25": sum(v > 0.25 for v in merr),
                    "worst_time": worst_t,
                    "worst_mem": worst_m,
                }
            )
        out[backend] = {
            "paired": len(keys),
            "moved": moved,
            "moved_beyond_20": sum(v > 0.20 for v in moved),
            "worst_moved": sorted(worst_rows, reverse=True)[:3],
            "covered": (covered, pairs),
            "predicted_moved": pmoved,
            "runs": per_run,
        }
    return out


def render(result: dict[str, dict[str, Any]], rows1: list[dict[str, str]], rows2: list[dict[str, str]]) -> str:
    lines = [
        f"run 1: {noise_line(rows1)}; run 2: {noise_line(rows2)}",
        "",
        "| backend | rows | measured time moved (median / worst; >20%) | interval covers other run | predicted time "
        "moved (median / worst) | time error run 1 / run 2 (median / worst; >40%) | within noise run 1 / run 2 | "
        "memory error run 1 / run 2 (median / worst; >25%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, r in result.items():
        cov, pairs = r["covered"]
        r1, r2 = r["runs"]
        coverage = f"{cov}/{pairs} ({cov / pairs:.0%})" if pairs else "-"
        lines.append(
            f"| {backend} | {r['paired']} | {_stats(r['moved'])}; {r['moved_beyond_20']} | "
            f"{coverage} | {_stats(r['predicted_moved'])} | "
            f"{_stats(r1['time_error'])}; {r1['time_beyond_40']} / "
            f"{_stats(r2['time_error'])}; {r2['time_beyond_40']} | "
            f"{r1['within_noise'][0]}/{r1['within_noise'][1]} / {r2['within_noise'][0]}/{r2['within_noise'][1]} | "
            f"{_stats(r1['mem_error'])}; {r1['mem_beyond_25']} / {_stats(r2['mem_error'])}; {r2['mem_beyond_25']} |"
        )
    lines.append("")
    for backend, r in result.items():
        moved = ", ".join(f"{name} {v:.0%}" for v, name in r["worst_moved"])
        worst_t = ", ".join(f"{name} {v:.0%}" for v, name in r["runs"][0]["worst_time"])
        worst_m = ", ".join(f"{name} {v:.0%}" for v, name in r["runs"][0]["worst_mem"])
        lines.append(f"- {backend}: moved most: {moved}; worst time error (run 1): {worst_t}; worst memory: {worst_m}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run1", help="a report CSV, or a folder of one run's CSVs")
    p.add_argument("run2", help="the same for the other run")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    rows1, rows2 = read_rows(args.run1), read_rows(args.run2)
    if args.label:
        print(f"### {args.label}\n")
    print(render(compare(rows1, rows2), rows1, rows2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
