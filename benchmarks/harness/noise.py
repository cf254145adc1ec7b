"""The run's noise probe: one fixed workload timed at the start, middle and end of a benchmark run.

A benchmark run cannot tell a slower machine from a busier one by its own rows; a fixed workload timed three
times can. The probe is framework-free (numpy's BLAS, so it runs in every framework's environment): a 512^3
float32 GEMM, 30 calls after 3 warm-up calls, in each of :data:`PROBE_PROCESSES` fresh processes (the median of
their medians), with the 1-minute load average and the CPU affinity. A run is flagged *noisy* when the probe's
slowest median exceeds its fastest by more than :data:`NOISY_PROBE_SPREAD`, or when the 1-minute load average
exceeds the run's CPUs by more than :data:`LOAD_MARGIN`. Each probe is a report row (``kind = noise``); the
pytest summary says whether the run was flagged.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from xfbench.reports.env import cpu_affinity

NOISE_KIND = "noise"
PROBE_N = 512
PROBE_CALLS = 30
PROBE_WARMUP = 3
#: (slowest - fastest) / fastest of the run's probe medians above which the run is flagged noisy.
NOISY_PROBE_SPREAD = 0.10
#: 1-minute load average above the run's affinity (cores it may use) plus this margin flags the run.
LOAD_MARGIN = 1.0


def affinity() -> list[int]:
    """The CPUs this process may run on (``os.sched_getaffinity``; every logical CPU where unsupported)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


#: Fresh processes per probe: the probe runs outside the benchmark process, whose framework threads (TensorFlow's
#: spinning Eigen pool, torch's OpenMP team) slowed the same GEMM by up to 50% in-process (measured: torch run's
#: start probe 2.12 ms then 1.35 ms; TensorFlow's 1.44 ms then 2.07 ms, quiet machine); the process-to-process
#: spread of one GEMM (about 12% here) is why it is the median of several.
PROBE_PROCESSES = 3
_PROBE_CODE = """
import json, statistics, time
import numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal(({n}, {n}), dtype=np.float32)
b = rng.standard_normal(({n}, {n}), dtype=np.float32)
for _ in range({warmup}):
    a @ b
times = []
for _ in range({calls}):
    start = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def _one_process() -> list[float]:
    import json
    import subprocess
    import sys

    code = _PROBE_CODE.format(n=PROBE_N, warmup=PROBE_WARMUP, calls=PROBE_CALLS)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return [float(t) for t in json.loads(proc.stdout.strip().splitlines()[-1])]


def probe(where: str) -> dict[str, Any]:
    """Times the fixed workload now in :data:`PROBE_PROCESSES` fresh processes (one at a time); returns its report
    row (``shape`` = ``noise:<where>``, ``time_median_s`` the median of the processes' medians)."""
    runs = [_one_process() for _ in range(PROBE_PROCESSES)]
    times = [t for run in runs for t in run]
    load1, _, _ = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"), 0.0, 0.0)
    cpus = affinity()
    median = statistics.median(statistics.median(run) for run in runs)
    q = statistics.quantiles(times, n=4)
    return {
        "kind": NOISE_KIND,
        "backend": "",
        "device": "cpu",
        "status": "ok",
        "shape": f"noise:{where}",
        "dtype": "float32",
        "time_median_s": median,
        "time_min_s": min(times),
        "time_iqr_s": q[2] - q[0],
        "rounds": len(times),
        "gflops_per_s": 2.0 * PROBE_N**3 / median / 1e9,
        "message": f"noise probe ({where}): numpy {PROBE_N}^3 float32 GEMM in {PROBE_PROCESSES} fresh processes, "
        f"load average {load1:.2f}, affinity {len(cpus)} CPUs ({cpu_affinity()})",
    }


def _load(row: Mapping[str, Any]) -> float | None:
    msg = str(row.get("message") or "")
    if "load average " not in msg:
        return None
    try:
        return float(msg.split("load average ", 1)[1].split(",", 1)[0])
    except ValueError:
        return None


def verdict(rows: Iterable[Mapping[str, Any]], cores: int | None = None) -> tuple[bool, str] | None:
    """``(noisy, one line)`` from a run's noise rows, or ``None`` where it has fewer than two. ``cores``: the
    CPUs the run could use (default: this process's affinity); the run's own busy processes count up to that."""
    probes = [r for r in rows if r.get("kind") == NOISE_KIND and r.get("time_median_s") not in (None, "")]
    if len(probes) < 2:
        return None
    medians = [float(r["time_median_s"]) for r in probes]
    spread = (max(medians) - min(medians)) / min(medians)
    loads = [x for x in (_load(r) for r in probes) if x is not None]
    limit = (cores or len(affinity())) + LOAD_MARGIN
    busy = [x for x in loads if x > limit]
    noisy = spread > NOISY_PROBE_SPREAD or bool(busy)
    where = ", ".join(
        f"{str(r.get('shape', '')).split(':', 1)[-1]} {float(r['time_median_s']) * 1e3:.2f} ms" for r in probes
    )
    why = []
    if spread > NOISY_PROBE_SPREAD:
        why.append(f"probe moved {spread:.0%} > {NOISY_PROBE_SPREAD:.0%}")
    if busy:
        why.append(f"load average {max(busy):.2f} > {limit:.1f}")
    line = (
        f"noise probe: {'NOISY' if noisy else 'quiet'} run ({where}; spread {spread:.1%}"
        + (f", load average up to {max(loads):.2f}" if loads else "")
        + ")"
        + (f": {'; '.join(why)}" if why else "")
    )
    return noisy, line


# --- the run's probes: attached to the run's writer by the benchmark conftest ------------------------------------
#: ``writer``: the run's report (None: no probes, as when a test calls a benchmark function directly); ``total``:
#: the run's model tests (``bench_models.py``); ``done``: those finished; ``rows``: the probes taken.
RUN: dict[str, Any] = {"writer": None, "total": 0, "done": 0, "rows": []}
#: ``XFBENCH_NOISE_PROBE=0`` turns the probe off.
PROBE_ENV = "XFBENCH_NOISE_PROBE"


def attach(writer: Any, total: int) -> None:
    RUN.update(writer=writer, total=total, done=0, rows=[])


def _take(where: str) -> None:
    writer = RUN["writer"]
    if writer is None or os.environ.get(PROBE_ENV, "1") == "0":
        return
    row = probe(where)
    writer.write_row(row)
    RUN["rows"].append(row)


def start() -> None:
    """The start probe, before the run's first measurement (a run that measures nothing has no noise rows)."""
    if not RUN["rows"]:
        _take("start")


def finished_one() -> None:
    """A model test finished: the middle probe after half of them, the end probe after the last (where the start
    probe was taken). The end probe comes after the model rows, not after the suites that follow them: after the
    scaling suite (its worker processes exiting) the probe read 2.52 ms where it had read 1.35-1.42 ms (torch, quiet
    machine)."""
    RUN["done"] += 1
    if not RUN["rows"]:
        return
    if RUN["total"] >= 2 and RUN["done"] == RUN["total"] // 2:
        _take("middle")
    if RUN["done"] == RUN["total"]:
        _take("end")


def end() -> None:
    """At the session's end: the end probe where the last model test did not take it."""
    if RUN["rows"] and not any(r["shape"] == "noise:end" for r in RUN["rows"]):
        _take("end")


__all__ = ["NOISE_KIND", "NOISY_PROBE_SPREAD", "RUN", "affinity", "attach", "end", "probe", "start", "verdict"]
