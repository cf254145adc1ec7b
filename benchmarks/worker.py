"""Memory of one configuration, measured in a fresh process (``python -m benchmarks.worker ...``).

Allocator caches make a second reading in the same process meaningless, so the benchmark suite runs
this module once per configuration and reads one JSON object from its last stdout line.

CPU method ``rss-hwm``: after import, build and input creation the process's resident set is the
baseline; the kernel's high-water mark (``VmHWM``) is reset to it by writing ``5`` to
``/proc/self/clear_refs``; after one step, ``VmHWM - baseline`` is the step's peak. This is the exact
kernel peak, not a sample (memory-profiler samples every 0.1 s and can miss short peaks); where
``clear_refs`` is not writable the module falls back to a 1 ms psutil sampling thread (``rss-sampled``).

GPU method ``allocator+nvml``: the framework allocator's peak above the post-build allocation (torch
``max_memory_allocated``, TensorFlow ``get_memory_info()['peak']``) and what NVML reports for the
process (CUDA context and allocator reserve included).

With ``--memory-limit`` (e.g. ``4GB``), a CPU worker's address space is capped with ``RLIMIT_AS``
before the framework is imported, so an over-budget step fails with an out-of-memory error in this
process only, never the machine. GPU workers are not capped (:func:`address_space_limit`): RLIMIT_AS does
not bound GPU memory, and a CUDA context reserves large ranges of virtual address space (unified
addressing), so a host-sized cap would likely make CUDA's initialisation itself fail (not yet measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    """Fallback: samples RSS every millisecond in a thread."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc ``malloc_trim``), so that memory freed while building
    the model is not silently reused by the step without raising RSS above the baseline."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def measure_cpu_step(step: Callable[[], Any]) -> tuple[int, int, str]:
    """(baseline RSS, peak RSS above baseline during ``step``, method), bytes."""
    gc.collect()
    _release_free_heap()
    if _can_reset_hwm():
        baseline = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        step()
        return baseline, max(_status_kb("VmHWM") - baseline, 0), "rss-hwm"
    import psutil

    baseline = psutil.Process().memory_info().rss
    with _Sampler() as sampler:
        step()
    return baseline, max(sampler.peak - baseline, 0), "rss-sampled"


def parse_size(text: str) -> int:
    """``4GB`` -> 4e9 bytes, ``512MiB`` -> 512 * 2**20; a bare number is bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    t = text.strip().lower()
    for suffix, multiplier in units.items():
        if t.endswith(suffix):
            number, factor = t[: -len(suffix)].strip(), multiplier
            break
    else:
        number, factor = t, 1
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"memory size {text!r} is not a size; allowed: e.g. 4GB, 512MiB, 1000000") from None
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return int(value * factor)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from xfbench.benchmarks.workload import Config, prepare

    config = Config(
        backend=args.backend,
        model=args.model,
        phase=args.phase,
        batch_size=args.batch,
        device=args.device,
        dtype=args.dtype,
        optimizer=args.optimizer,
        input_shape=tuple(int(v) for v in args.input_shape.split("x")) if args.input_shape else None,
    )
    work = prepare(config)
    b = work.backend
    result: dict[str, Any] = {"status": "ok", "config": config.id}
    if config.device == "cpu":
        baseline, peak, method = measure_cpu_step(work.step)
        _, second, _ = measure_cpu_step(work.step)
        result.update(method=method, baseline_bytes=baseline, measured_bytes=peak, second_step_bytes=second)
    else:
        from xfbench.backends.nvml import nvml_process_memory

        gpu_index = int(config.device.split(":")[1]) if ":" in config.device else 0
        b.synchronize(config.device)
        b.reset_peak_memory(config.device)
        before = b.memory_stats(config.device)
        work.step()
        after = b.memory_stats(config.device)
        nvml = nvml_process_memory(gpu_index)
        b.reset_peak_memory(config.device)
        work.step()
        second = b.memory_stats(config.device)
        base = before.allocated or 0
        result.update(
            method="allocator+nvml",
            baseline_bytes=base,
            measured_bytes=None if after.peak_allocated is None else after.peak_allocated - base,
            second_step_bytes=None if second.peak_allocated is None else second.peak_allocated - base,
            allocator_peak_bytes=after.peak_allocated,
            allocator_reserved_bytes=after.peak_reserved,
            nvml_bytes=nvml,
        )
    return result


def _is_oom(exc: BaseException) -> bool:
    """The one OOM classifier of every backend (:func:`backends.common.is_oom_error`: CUDA, TensorFlow,
    MXNet and host allocation failures); it imports no framework."""
    from xfbench.backends.common import is_oom_error

    return is_oom_error(exc)


def address_space_limit(device: str, memory_limit: str | None) -> int | None:
    """Bytes to cap this worker's address space to (``RLIMIT_AS``), or ``None``: only CPU workers are capped."""
    if not memory_limit:
        return None
    from xfbench.backends.base import parse_device

    kind, _ = parse_device(device)
    if kind != "cpu":
        return None
    return parse_size(memory_limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    p.add_argument("--backend", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--phase", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--input-shape", default=None)
    p.add_argument("--memory-limit", default=None, help="cap this process's address space, e.g. 4GB")
    args = p.parse_args(argv)
    limit = address_space_limit(args.device, args.memory_limit)
    if limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = run(args)
        if args.memory_limit and limit is None:
            result["message"] = f"--memory-limit {args.memory_limit} not applied on {args.device} (CPU workers only)"
    except MemoryError as exc:
        result = {"status": "oom", "message": f"MemoryError: {exc}"}
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        result = {"status": "oom" if _is_oom(exc) else "error", "message": text}
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
