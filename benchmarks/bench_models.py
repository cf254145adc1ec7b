"""Time, FLOPs and memory of every selected (backend, model, phase, batch, device), beside predictions.

Run: ``pytest benchmarks --benchmark-only`` (options in benchmarks/harness/options.py; the configurations are selected
once per session in benchmarks/conftest.py, ``--device all`` expanded to each backend's devices). Each
configuration appends one row to the run's CSV as soon as it finishes.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from xfbench.backends import get_backend, is_available
from xfbench.backends.common import is_oom_error
from xfbench.benchmarks.harness import noise
from xfbench.benchmarks.harness.measurement import Measurement
from xfbench.benchmarks.harness.peaks import time_prediction_columns
from xfbench.benchmarks.harness.phases import PhaseLog
from xfbench.benchmarks.harness.profiles import Plan
from xfbench.benchmarks.harness.rows import (
    flop_columns,
    framework_overhead,
    memory_columns,
    memory_in_fresh_process,
    prediction_columns,
    probe_family,
    take_reused_probes,
)
from xfbench.benchmarks.harness.timing import other_processes, row_columns, time_processes, within_noise
from xfbench.benchmarks.harness.workload import Config, base_row, prepare

_base_row = base_row


def release_gpu_cache(backend: str, device: str) -> None:
    """Before a fresh memory-worker process starts on a GPU: this process's framework gives the GPU memory its
    allocator keeps cached (from earlier configurations) back to the driver, so the worker finds it free
    (``release_cached_memory`` of the backend's ``memory`` module: torch ``empty_cache``, MXNet
    ``Context.empty_cache``; TensorFlow cannot release, and grows on demand instead). No-op on the CPU."""
    if device == "cpu":
        return
    memory = importlib.import_module(f"xfbench.backends.{backend}.memory")
    release = getattr(memory, "release_cached_memory", None)
    if release is not None:
        release(device)


def _finish(writer: Any, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    writer.write_row(row)
    rows.append(row)


def test_model_step(
    benchmark: Any,
    bench_config: tuple[Config, Plan],
    xfbench_writer: Any,
    xfbench_rows: list[dict[str, Any]],
    rounds_override: int | None,
    measure_memory: bool,
    memory_limit: str | None,
) -> None:
    cfg, plan = bench_config
    row = _base_row(cfg)
    if not is_available(cfg.backend):
        reason = f"{cfg.backend} is not installed in this environment (tox -e {cfg.backend})"
        _finish(xfbench_writer, xfbench_rows, {**row, "status": "skipped", "message": reason})
        pytest.skip(reason)
    b = get_backend(cfg.backend)
    row["framework_version"] = b.VERSION
    devices = b.list_devices()
    if cfg.device not in devices:  # named explicitly (`--device all` selected only the visible ones)
        reason = f"device {cfg.device} not visible to {cfg.backend} (has: {', '.join(devices)})"
        _finish(xfbench_writer, xfbench_rows, {**row, "status": "skipped", "message": reason})
        pytest.skip(reason)

    noise.start()  # the run's noise probe, before its first measurement (benchmarks/harness/noise.py)
    phases = PhaseLog(f"{cfg.backend} {cfg.model} {cfg.phase} b{cfg.batch_size}")
    row.update(prediction_columns(cfg))
    if measure_memory:
        release_gpu_cache(cfg.backend, cfg.device)
        family = probe_family(cfg.spec())
        overhead = framework_overhead(cfg.backend, cfg.device, cfg.phase, cfg.optimizer, family, cfg.batch_size)
        reused = take_reused_probes()
        if overhead is not None:
            row["mem_predicted_bytes"] += overhead
            row["message"] = (
                f"prediction includes framework_overhead {overhead / 1e6:.1f} MB (measured on the {family} probe"
                + (f"; reused: probed {min(reused.values())}" if reused else "")
                + ")"
            )
        phases.mark("memory overhead probe")
        mem = memory_in_fresh_process(cfg, memory_limit)
        phases.mark("memory processes")
        if mem.get("status") == "oom":
            _finish(xfbench_writer, xfbench_rows, {**row, "status": "oom", "message": mem.get("message", "")})
            pytest.skip(f"out of memory: {mem.get('message', '')}")
        if mem.get("status") == "error":
            row["message"] = f"memory: {mem.get('message', '')}; " + row.get("message", "")
        else:
            row.update(memory_columns(mem, row["mem_predicted_bytes"]))
            if mem.get("message"):
                row["message"] = (row.get("message", "") + f"; memory: {mem['message']}").lstrip("; ")

    try:
        work = prepare(cfg)
        row["params_counted"] = int(b.count_params(work.model))
        rounds = rounds_override or plan.rounds
        phases.mark("build")
        benchmark.pedantic(work.step, rounds=rounds, warmup_rounds=plan.warmup_rounds, iterations=1)
        timing = Measurement.from_stats(benchmark.stats.stats)
        phases.mark("timing in-process")
        # The other processes (benchmarks/harness/timing.py), one at a time, after this one's rounds.
        processes = [list(timing.times)]
        others = other_processes(cfg, time_processes() - 1, plan.warmup_rounds, rounds)
        if others.get("status") == "ok":
            processes += others["times"]
        else:
            note = f"time: {others.get('status')}: {others.get('message', '')}"
            row["message"] = (row.get("message", "") + "; " + note).lstrip("; ")
        phases.mark("timing other processes")
        row.update(row_columns(processes, cfg.batch_size))
        row.update(time_prediction_columns(cfg, row, xfbench_writer))
        phases.mark("time prediction")
        row["time_within_noise"] = within_noise(row.get("time_predicted_s"), row)
        row["threads"] = importlib.import_module(f"xfbench.backends.{cfg.backend}.profile").threads()
        if timing.noisy:
            row["message"] = (row.get("message", "") + "; " + timing.warning).lstrip("; ")
        try:
            row.update(flop_columns(work))
        except NotImplementedError as exc:
            row["flops_counter"] = f"unsupported: {exc}"
        phases.mark("flop counter")
        phases.write()
        if row.get("time_median_s") and row.get("flops_predicted"):
            row["achieved_flops_per_s"] = row["flops_predicted"] / row["time_median_s"]
        benchmark.extra_info.update({k: v for k, v in row.items() if v is not None})
    except Exception as exc:
        if is_oom_error(exc):
            _finish(xfbench_writer, xfbench_rows, {**row, "status": "oom", "message": str(exc).splitlines()[0]})
            pytest.skip(f"out of memory: {exc}")
        _finish(
            xfbench_writer,
            xfbench_rows,
            {**row, "status": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]},
        )
        raise
    _finish(xfbench_writer, xfbench_rows, {**row, "status": "ok"})
