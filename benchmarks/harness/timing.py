"""A model row's step time from several processes, as pyperf and asv time: the process is a unit of variation.

Why: two back-to-back ``tox -m bench`` runs on one 2-core EPYC moved the same configuration's median step time by
a median of 11-19% per framework (issue 20), while each row's ``time_iqr_s`` (the spread within its one process)
said nothing of it; this machine's process-to-process spread for a fixed 1024^3 GEMM is about 12%. Where a
process lands (its heap layout, which core its threads start on, what the allocator has cached from earlier
configurations) is part of the measurement, so one process is one sample of it.

How: the row's first process is the benchmark process itself (pytest-benchmark's rounds, as before); the others
are children forked, one at a time (never two timing at once on 2 cores), from a *timing server*: a process per
backend that has imported the framework once and computed nothing (the fork-after-import rule of
:mod:`benchmarks.harness.worker`: a torch child forked after its OpenMP pool ran hangs). Each child builds the
model with the suite's weights and batch, runs the same warm-up rounds and the same timed rounds as the
benchmark process, and returns its raw seconds. Unlike the memory server, the timing server leaves glibc's mmap
threshold dynamic (as in a user's process): a pinned threshold makes every large buffer a fresh ``mmap`` and its
page faults part of each step.

The row (:func:`combine`): ``time_median_s`` is the median of the processes' medians, ``time_lo_s`` and
``time_hi_s`` the lowest and highest process median (the between-process interval), ``time_processes`` how many
processes; ``time_iqr_s``, ``time_mean_s``, ``time_min_s`` and ``rounds`` are over every round of every process.
GPU configurations (where no fork is safe) and backends that cannot fork are timed in the benchmark process only
(``time_processes`` = 1, said in the row's message).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from xfbench.benchmarks.harness.measurement import Measurement

#: Processes per model row, the benchmark process included (``XFBENCH_TIME_PROCESSES``; 1 = in-process only).
TIME_PROCESSES_ENV = "XFBENCH_TIME_PROCESSES"
DEFAULT_TIME_PROCESSES = 3
TIMING_TIMEOUT_S = 900
SERVER_PREFIX = "XFBENCH-TIMES "


def time_processes() -> int:
    """Processes per model row: ``XFBENCH_TIME_PROCESSES`` (a positive integer), else 3."""
    from xfbench.benchmarks.harness.rows import _positive_env

    return _positive_env(TIME_PROCESSES_ENV, DEFAULT_TIME_PROCESSES)


def combine(processes: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The time columns of a row from each process's raw rounds (seconds; at least one process, each non-empty):
    median of the process medians, its between-process interval, and the pooled statistics (module docstring)."""
    if not processes or any(not times for times in processes):
        raise ValueError("combine needs at least one process, each with at least one round")
    medians = [statistics.median(times) for times in processes]
    pooled = Measurement.of(t for times in processes for t in times)
    cols = pooled.columns()
    cols.update(
        time_median_s=float(statistics.median(medians)),
        time_lo_s=float(min(medians)),
        time_hi_s=float(max(medians)),
        time_processes=len(processes),
    )
    return cols


def row_columns(processes: Sequence[Sequence[float]], batch_size: int) -> dict[str, Any]:
    """A model row's time columns (:func:`combine`) and its throughput (``batch_size / time_median_s``)."""
    cols = combine(processes)
    median = cols["time_median_s"]
    cols["throughput_samples_per_s"] = batch_size / median if median > 0 else None
    return cols


def within_noise(predicted: float | None, row: dict[str, Any]) -> str | None:
    """``yes`` where ``predicted`` lies in the row's between-process interval ``[time_lo_s, time_hi_s]``, ``no``
    outside it, ``None`` without a prediction or an interval."""
    lo, hi = row.get("time_lo_s"), row.get("time_hi_s")
    if predicted is None or lo is None or hi is None:
        return None
    return "yes" if lo <= predicted <= hi else "no"


def _time_child(config: Any, arrays: Any, warmup: int, rounds: int) -> dict[str, Any]:
    """In a forked child: build ``config`` from ``arrays``, ``warmup`` untimed steps, then ``rounds`` timed ones."""
    from xfbench.benchmarks.harness.worker import build

    work = build(config, arrays)
    for _ in range(warmup):
        work.step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work.step()
        times.append(time.perf_counter() - start)
    return {"times": times}


def _probe_child(request: dict[str, Any]) -> dict[str, Any]:
    """In a forked child: :func:`benchmarks.harness.peaks.measure_probes` of the request's ``probes`` (keys)."""
    from xfbench.benchmarks.harness.peaks import measure_probes

    found, refused = measure_probes(
        str(request["backend"]),
        str(request["device"]),
        [str(k) for k in request["probes"]],
        float(request["call_s"]),
        request.get("threads"),
    )
    return {"found": found, "refused": refused}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The server's reply to one request: ``{"times": [[...], ...]}`` (one list per process) or a failure; a
    request naming ``probes`` (exact-shape probe keys) is answered ``{"found": ..., "refused": ...}`` from one
    forked child (:func:`benchmarks.harness.peaks.probes_in_fresh_process`)."""
    from xfbench.benchmarks.harness.worker import Arrays, build_parser, config_from_args, in_child

    if "probes" in request:
        result = in_child(lambda: _probe_child(request), TIMING_TIMEOUT_S)
        if result.get("status") != "ok":
            return {"status": result.get("status", "error"), "message": result.get("message", "")}
        return {"status": "ok", "found": result["found"], "refused": result["refused"]}
    args = build_parser().parse_args([str(a) for a in request["argv"]])
    config = config_from_args(args)
    arrays = Arrays(config)
    processes = int(request["processes"])
    results = []
    for _ in range(processes):
        result = in_child(
            lambda: _time_child(config, arrays, int(request["warmup"]), int(request["rounds"])),
            TIMING_TIMEOUT_S,
        )
        if result.get("status") != "ok":
            return {"status": result.get("status", "error"), "message": result.get("message", "")}
        results.append(result["times"])
    return {"status": "ok", "times": results}


def serve(backend: str) -> int:
    """``python -m xfbench.benchmarks.harness.timing --serve BACKEND``: answers timing requests (one JSON object
    per stdin line: ``argv`` (a worker's configuration arguments), ``processes``, ``warmup``, ``rounds``)."""
    from xfbench.backends import get_backend

    get_backend(backend)  # the import, once; nothing is computed here (children fork from this state)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = answer(json.loads(line))
        except Exception as exc:  # a bad request or a failed build: one line back, the server lives on
            result = {"status": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        except SystemExit as exc:
            result = {"status": "error", "message": f"bad timing request: {exc}"}
        sys.stdout.write(SERVER_PREFIX + json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


def TimingServer(backend: str) -> Any:
    """Client of one :func:`serve` process: the memory server's client (``worker.MemoryServer``: started on the
    first request, one JSON line each way) on this module's server."""
    from xfbench.benchmarks.harness.worker import MemoryServer

    return MemoryServer(backend, module="xfbench.benchmarks.harness.timing", prefix=SERVER_PREFIX)


_SERVERS: dict[str, Any] = {}


def server_for(backend: str) -> Any:
    """This process's timing server of ``backend`` (started on its first request; closed at exit)."""
    if not _SERVERS:
        import atexit

        atexit.register(close_servers)
    if backend not in _SERVERS:
        _SERVERS[backend] = TimingServer(backend)
    return _SERVERS[backend]


def close_servers() -> None:
    for server in _SERVERS.values():
        server.close()
    _SERVERS.clear()


def can_fork(config: Any) -> bool:
    return can_fork_backend(config.backend, config.device)


def can_fork_backend(backend: str, device: str) -> bool:
    """Whether ``backend`` on ``device`` can be timed in a child forked from its timing server (CPU only)."""
    from xfbench.benchmarks.harness.worker import FORK_AFTER_IMPORT

    return device == "cpu" and backend in FORK_AFTER_IMPORT and hasattr(os, "fork")


def other_processes(config: Any, processes: int, warmup: int, rounds: int) -> dict[str, Any]:
    """``processes`` more timings of ``config`` from the backend's timing server: ``{"status": "ok", "times":
    [[seconds, ...], ...]}``, or a failure (``status``, ``message``) the row reports without losing its own."""
    if processes <= 0:
        return {"status": "ok", "times": []}
    if not can_fork(config):
        return {"status": "skipped", "message": f"timed in one process ({config.device}: no fork-safe server)"}
    server = server_for(config.backend)
    payload = {"argv": config.worker_args(), "processes": processes, "warmup": warmup, "rounds": rounds}
    return server.request(payload, TIMING_TIMEOUT_S * (processes + 1))


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--serve"] and len(raw) == 2:
        return serve(raw[1])
    print("usage: python -m xfbench.benchmarks.harness.timing --serve BACKEND", file=sys.stderr)
    return 2


__all__ = [
    "DEFAULT_TIME_PROCESSES",
    "TIME_PROCESSES_ENV",
    "combine",
    "other_processes",
    "row_columns",
    "time_processes",
    "within_noise",
]

if __name__ == "__main__":
    sys.exit(main())
