"""Memory of one configuration, measured in fresh processes (``python -m benchmarks.harness.worker ... --repeats N``).

Allocator caches make a second reading in the same process meaningless, so every figure comes from a
process that has run nothing but this configuration; the worker prints one JSON object as its last stdout
line. Each figure is the median of ``--repeats`` such processes (default 1 here; the suite asks for 3), with
the spread ``(max - min) / median`` beside it.

Repeats on the CPU fork this process after the framework's import (and after the neutral weights and the
batch are made, in numpy), before the framework has computed anything: each child builds the model, measures
one step and exits, so the import (2-6 s) and the random weights are paid once, not N times. Measured on
this project's 2-core machine with torch 2.13, TensorFlow 2.21 and MXNet 1.9.1: all three run correctly in
a child forked after import (``FORK_AFTER_IMPORT``); the forked figures match fresh interpreters' (cnn3,
training, batch 8: torch 342 MB in 3 children and 343 MB fresh, MXNet 482 MB and 481 MB). GPU repeats are
fresh interpreters (a CUDA context must never cross a fork).

Before the import, glibc's mmap threshold is pinned at 128 KiB (:func:`pin_malloc_threshold`): left dynamic,
how much freed heap a step keeps resident depends on the order in which the framework's threads free their
blocks, and the same step's figure varied by 26% between processes (numbers there).

CPU method ``rss-hwm``: after import, build and input creation, freed heap is trimmed, the file-backed
mappings (the frameworks' shared libraries) are faulted in (``MADV_POPULATE_READ``), and the process's
resident set is the baseline; the kernel's high-water mark (``VmHWM``) is reset to it by writing ``5`` to
``/proc/self/clear_refs``; after one step, ``VmHWM - baseline`` is the step's peak. This is the exact
kernel peak, not a sample (memory-profiler samples every 0.1 s and can miss short peaks); where
``clear_refs`` is not writable the module falls back to a 1 ms psutil sampling thread (``rss-sampled``).
Faulting the libraries in first makes the figure the memory the step allocates, not the library code it
happens to touch first; without it a forked child, which inherits no file-backed page-table entries, counted
about 7 MB more code pages than a fresh interpreter in each framework (measured: torch 23 vs 16 MB,
TensorFlow 17 vs 9 MB, MXNet 15 vs 8 MB of file pages faulted during the step).

GPU method ``allocator+nvml``: the framework allocator's peak above the post-build allocation (torch
``max_memory_allocated``, TensorFlow ``get_memory_info()['peak']``) and what NVML reports for the
process (CUDA context and allocator reserve included).

Tensor level (``tensor_measured_bytes``): PyTorch's ``MemTracker`` (:mod:`backends.torch.memtrack`) over a
steady-state step, the third, in the first repeat's process after its RSS readings (so it never inflates
them, and no model is built for it alone). TensorFlow and MXNet expose no tensor-level figure on the CPU
(TensorFlow: ``Allocator stats not available for device 'CPU:0'``), which the result's ``tensor_message`` says.
Forking after the model is built would save the builds, but a torch child forked after its OpenMP pool ran
hangs (measured), and with the pool kept single-threaded during the build the children measured 278 MB where
fresh builds measured 238 MB (AlexNet training, batch 8): the build is repeated in each child.

``--timeline PATH`` (``xfbench memory``): one more forked child samples its RSS over one first step with
memory-profiler's ``memory_usage`` (1 ms), and, for torch, the parent records the CPU allocator's events over
one step with ``torch.profiler`` (``profile_memory``); both go to PATH as JSON.

With ``--memory-limit`` (e.g. ``4GB``), a CPU worker's address space is capped with ``RLIMIT_AS``
before the framework is imported, so an over-budget step fails with an out-of-memory error in this
process only, never the machine. GPU workers are not capped (:func:`address_space_limit`): RLIMIT_AS does
not bound GPU memory, and a CUDA context reserves large ranges of virtual address space (unified
addressing), so a host-sized cap would likely make CUDA's initialisation itself fail (not yet measured).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_and_hwm() -> tuple[int, int]:
    """This process's resident set and its high-water mark (``VmRSS``, ``VmHWM``), bytes."""
    return _status_kb("VmRSS"), _status_kb("VmHWM")


def reset_hwm() -> None:
    """Resets this process's RSS high-water mark to its current RSS (``5`` into ``/proc/self/clear_refs``);
    ``OSError`` where the kernel cannot."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _can_reset_hwm() -> bool:
    try:
        reset_hwm()
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
        reset_hwm()
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


#: Frameworks measured to run correctly in a child forked after their import (CPU; see the module docstring).
FORK_AFTER_IMPORT = ("torch", "tensorflow", "mxnet")
MADV_POPULATE_READ = 22  # Linux >= 5.14


def populate_file_mappings() -> bool:
    """Faults in every readable file-backed mapping of this process (shared libraries), so that a step's RSS
    figure does not count code pages it touches first. ``False`` where the kernel cannot (before 5.14)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as fh:
            lines = fh.read().splitlines()
    except (OSError, AttributeError):
        return False
    ok = True
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or not parts[5].startswith("/") or "r" not in parts[1]:
            continue
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if libc.madvise(lo, hi - lo, MADV_POPULATE_READ) != 0:
            ok = False
    return ok


def config_from_args(args: argparse.Namespace) -> Any:
    from xfbench.benchmarks.harness.workload import Config

    return Config(
        backend=args.backend,
        model=args.model,
        phase=args.phase,
        batch_size=args.batch,
        device=args.device,
        dtype=args.dtype,
        optimizer=args.optimizer,
        input_shape=tuple(int(v) for v in args.input_shape.split("x")) if args.input_shape else None,
    )


class Arrays:
    """What a configuration's processes share, made in numpy before any fork: the neutral weights and one batch."""

    def __init__(self, config: Any, seed: int = 0) -> None:
        from xfbench.analytics.weights import make_batch, random_weights

        self.spec = config.spec()
        self.weights = random_weights(self.spec, seed)
        self.x, self.y = make_batch(self.spec, config.batch_size, seed + 1)


def build(config: Any, arrays: Arrays) -> Any:
    """What :func:`benchmarks.harness.workload.prepare` builds (same backend calls, same weights and batch), from
    ``arrays``; returns a ``Workload`` whose ``tracked`` attribute lists what exists before the step (model,
    input batch, labels, optimizer), for the tensor-level tracker."""
    from xfbench.backends import get_backend
    from xfbench.benchmarks.harness.workload import Workload

    b = get_backend(config.backend)
    spec = arrays.spec
    model = b.build_model(spec, device=config.device, dtype=config.dtype, seed=0, init=False)
    b.set_weights(model, arrays.weights)
    x = b.to_device(arrays.x, config.device, config.dtype)
    device = config.device
    tracked: list[Any] = [model, x]
    if config.phase == "training":
        y = b.to_device(arrays.y, config.device, config.dtype)
        train = b.make_train_step(model, spec, config.optimizer)
        tracked += [y, getattr(train, "optimizer", None)]

        def step() -> Any:
            loss = train(x, y)
            b.synchronize(device)
            return loss

    else:

        def step() -> Any:
            out = b.infer(model, x)
            b.synchronize(device)
            return out

    work = Workload(config, spec, b, model, step)
    work.tracked = [t for t in tracked if t is not None]  # type: ignore[attr-defined]
    return work


def measure_once(
    config: Any, arrays: Arrays, second_step: bool = True, tensor: bool = False, forked: bool = False
) -> dict[str, Any]:
    """One process's figures: build, then the first step's peak (and the second's); ``tensor``: then the
    tensor-level figure of the next, steady-state step (:func:`tensor_step`), after every RSS reading.
    ``forked``: a child's copy of the neutral weights is dropped once the model holds them, as a fresh process
    frees them, so that its address space (``--memory-limit``) is a fresh process's."""
    work = build(config, arrays)
    if forked:
        from xfbench.analytics.weights import clear_weight_cache

        arrays.weights = []
        clear_weight_cache()
        gc.collect()
    result = _process_level(work, config, second_step)
    if tensor:
        try:
            result.update(tensor_step(work, steps_done=2 if second_step else 1))
        except Exception as exc:
            result["tensor_message"] = f"tensor-level measurement failed: {_failure(exc)['message']}"
    return result


def _process_level(work: Any, config: Any, second_step: bool) -> dict[str, Any]:
    b = work.backend
    result: dict[str, Any] = {}
    if config.device == "cpu":
        populated = populate_file_mappings()
        baseline, peak, method = measure_cpu_step(work.step)
        result.update(method=method, baseline_bytes=baseline, measured_bytes=peak, file_pages_prefaulted=populated)
        if second_step:
            result["second_step_bytes"] = measure_cpu_step(work.step)[1]
        return result
    from xfbench.backends.nvml import nvml_process_memory

    gpu_index = int(config.device.split(":")[1]) if ":" in config.device else 0
    b.synchronize(config.device)
    b.reset_peak_memory(config.device)
    before = b.memory_stats(config.device)
    work.step()
    after = b.memory_stats(config.device)
    nvml = nvml_process_memory(gpu_index)
    base = before.allocated or 0
    result.update(
        method="allocator+nvml",
        baseline_bytes=base,
        measured_bytes=None if after.peak_allocated is None else after.peak_allocated - base,
        allocator_peak_bytes=after.peak_allocated,
        allocator_reserved_bytes=after.peak_reserved,
        nvml_bytes=nvml,
    )
    if second_step:
        b.reset_peak_memory(config.device)
        work.step()
        second = b.memory_stats(config.device)
        result["second_step_bytes"] = None if second.peak_allocated is None else second.peak_allocated - base
    return result


def worker_exit_result(code: int, stderr_tail: str) -> dict[str, Any]:
    """A memory worker process that ended without a result: SIGKILL (the kernel's OOM killer) is ``oom``,
    anything else an ``error`` naming the exit code and the last line of its stderr."""
    if code in (-9, 137):
        return {"status": "oom", "message": "memory worker killed (SIGKILL: out of host memory?)"}
    return {"status": "error", "message": f"memory worker exited {code}: {stderr_tail}"}


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"status": "oom", "message": f"MemoryError: {exc}"}
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    return {"status": "oom" if _is_oom(exc) else "error", "message": text}


def start_child(work: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Forks a child that runs ``work()`` and writes its result (JSON) to a pipe; returns (pid, read end)."""
    import os

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        code = 0
        try:
            try:
                result = {"status": "ok", **work()}
            except BaseException as exc:
                result = _failure(exc)
            with os.fdopen(write_fd, "w") as out:
                out.write(json.dumps(result))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def collect_child(pid: int, read_fd: int, timeout_s: float | None = None) -> dict[str, Any]:
    """The result of a child from :func:`start_child`; a child killed by a signal (the kernel's OOM killer:
    SIGKILL) is an ``oom`` result, any other death or a timeout an ``error``."""
    import os
    import select
    import signal

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    chunks: list[bytes] = []
    while True:  # until EOF: the child exited (or died)
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        ready, _, _ = select.select([read_fd], [], [], wait)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return {"status": "error", "message": f"repeat timed out after {timeout_s:.0f} s"}
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks).decode()
    if data:
        return dict(json.loads(data))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return {"status": "oom", "message": "repeat killed (SIGKILL: out of host memory?)"}
        return {"status": "error", "message": f"repeat died of signal {sig}"}
    return {"status": "error", "message": f"repeat exited {os.WEXITSTATUS(status)} without a result"}


def in_child(work: Callable[[], dict[str, Any]], timeout_s: float | None = None) -> dict[str, Any]:
    """Runs ``work()`` in a child forked from this process and returns its result (a JSON-able dict)."""
    return collect_child(*start_child(work), timeout_s)


def in_children(
    works: Sequence[Callable[[], dict[str, Any]]], parallel: int = 1, timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """Each of ``works`` in its own forked child, at most ``parallel`` at once; results in order. Each child's
    resident memory is its own, so running repeats side by side changes their time, not their figures."""
    results: list[dict[str, Any]] = []
    running: list[tuple[int, int]] = []
    pending = list(works)
    while pending and len(running) < max(parallel, 1):
        running.append(start_child(pending.pop(0)))
    while running:
        pid, fd = running.pop(0)
        results.append(collect_child(pid, fd, timeout_s))
        if pending:
            running.append(start_child(pending.pop(0)))
    return results


def in_fresh_interpreter(argv: list[str], tensor: bool = False) -> dict[str, Any]:
    """One repeat in a fresh interpreter (``--repeats 1``; ``--no-tensor`` unless ``tensor``): GPU repeats,
    where no fork is safe."""
    import subprocess

    from xfbench.reports.paths import subprocess_env

    cmd = [sys.executable, "-m", "xfbench.benchmarks.harness.worker", *argv, "--repeats", "1"]
    cmd += [] if tensor else ["--no-tensor"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return dict(json.loads(lines[-1]))
    if proc.returncode in (-9, 137):
        return {"status": "oom", "message": "repeat killed (SIGKILL: out of host memory?)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"status": "error", "message": f"repeat exited {proc.returncode}: {tail}"}


def spread(values: list[float]) -> float | None:
    """``(max - min) / median`` of the repeats' figures; ``None`` for fewer than two or a zero median."""
    import statistics

    if len(values) < 2:
        return None
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median else None


MEDIAN_FIELDS = ("measured_bytes", "baseline_bytes", "allocator_peak_bytes", "allocator_reserved_bytes", "nvml_bytes")


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats as one result: each figure the median over the repeats (``<figure>_all`` lists them),
    ``spread`` of ``measured_bytes``; the first failure (oom before error) if any repeat failed."""
    import statistics

    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        worst = next((r for r in failed if r.get("status") == "oom"), failed[0])
        return {"status": worst["status"], "message": worst.get("message", ""), "repeats": len(results)}
    out: dict[str, Any] = {"status": "ok", "repeats": len(results), "method": results[0].get("method", "")}
    for field in MEDIAN_FIELDS:
        values = [r[field] for r in results if r.get(field) is not None]
        if len(values) == len(results):
            out[field] = int(statistics.median(values))
            out[f"{field}_all"] = values
    out["spread"] = spread(out.get("measured_bytes_all", []))
    if results[0].get("second_step_bytes") is not None:
        out["second_step_bytes"] = results[0]["second_step_bytes"]  # measured in the first repeat only
    for key in ("tensor_method", "tensor_measured_bytes", "tensor_breakdown", "tensor_message"):
        if key in results[0]:
            out[key] = results[0][key]  # the first repeat's, after its process-level readings
    if not all(r.get("file_pages_prefaulted", True) for r in results):
        out["message"] = "file-backed pages not pre-faulted (kernel without MADV_POPULATE_READ)"
    return out


def tensor_unavailable(config: Any) -> str | None:
    """Why this configuration has no tensor-level figure (one line), or ``None`` where it has one (torch)."""
    where = f"{config.backend} {'CPU' if config.device == 'cpu' else 'GPU'}"
    if config.backend != "torch":
        return f"no tensor-level figure on {where}"
    from xfbench.backends.torch import memtrack

    why = memtrack.available()
    return None if why is None else f"no tensor-level figure on {where}: {why}"


def tensor_step(work: Any, steps_done: int = 0) -> dict[str, Any]:
    """torch: MemTracker's peak of one more step of ``work`` (a steady-state step: the gradients of the last
    step, the optimizer state and the caches exist), with what exists before it registered as external.
    ``steps_done``: steps ``work`` has already run (two are run before the tracked one)."""
    from xfbench.backends.torch import memtrack

    for _ in range(max(2 - steps_done, 0)):
        work.step()
    peak = memtrack.track_step(work.step, work.tracked, work.model)
    return {
        "tensor_method": "MemTracker",
        "tensor_measured_bytes": peak.peak_bytes,
        "tensor_breakdown": peak.breakdown_text(),
    }


def rss_timeline(config: Any, arrays: Arrays, interval_s: float = 0.001) -> dict[str, Any]:
    """RSS above the baseline over one first step, sampled with memory-profiler (``memory_usage``): seconds
    since the step began and bytes. Falls back to psutil sampling where memory-profiler is missing."""
    work = build(config, arrays)
    gc.collect()
    _release_free_heap()
    populate_file_mappings()
    try:
        from memory_profiler import memory_usage
    except ImportError:
        memory_usage = None
    if memory_usage is None:
        import psutil

        proc = psutil.Process()
        base = proc.memory_info().rss
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.perf_counter()
            while not stop.is_set():
                samples.append((time.perf_counter() - t0, proc.memory_info().rss - base))
                time.sleep(interval_s)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        work.step()
        stop.set()
        thread.join()
        return {"rss_sampler": "psutil", "rss_t": [t for t, _ in samples], "rss_bytes": [v for _, v in samples]}
    base = _status_kb("VmRSS")
    usage = memory_usage((work.step, (), {}), interval=interval_s, timestamps=True, include_children=False)
    t0 = usage[0][1] if usage else 0.0
    return {
        "rss_sampler": "memory-profiler",
        "rss_t": [t - t0 for _, t in usage],
        "rss_bytes": [int(mib * 2**20) - base for mib, _ in usage],
    }


def allocator_timeline(config: Any, arrays: Arrays) -> dict[str, Any]:
    """torch: the CPU allocator's live bytes over one first step, from ``torch.profiler``'s memory events."""
    if config.backend != "torch" or config.device != "cpu":
        return {}
    from torch.profiler import ProfilerActivity, profile

    work = build(config, arrays)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work.step()
    events = sorted(
        (e.start_ns(), int(e.nbytes())) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    if not events:
        return {}
    t0, live = events[0][0], 0
    times, values = [], []
    for ns, nbytes in events:
        live += nbytes
        times.append((ns - t0) / 1e9)
        values.append(live)
    return {"allocator_t": times, "allocator_bytes": values, "allocator_source": "torch.profiler profile_memory"}


def _limited(limit: int, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()`` in a child of the memory server, under the address-space cap a fresh worker would have had."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return work()


def run(args: argparse.Namespace, child_limit: int | None = None) -> dict[str, Any]:
    """The figures of ``args``' configuration. ``child_limit``: ``RLIMIT_AS`` for each forked repeat (the memory
    server's requests; a stand-alone worker caps itself before the import instead)."""
    config = config_from_args(args)
    repeats = max(int(args.repeats), 1)
    fork = config.device == "cpu" and config.backend in FORK_AFTER_IMPORT and hasattr(__import__("os"), "fork")
    if not fork and repeats > 1:
        argv, skip = [], False
        for a in args.argv or []:
            if skip or a == "--timeline":
                skip = not skip and a == "--timeline"
                continue
            argv.append(a)
        results = [in_fresh_interpreter(argv, tensor=k == 0 and not args.no_tensor) for k in range(repeats)]
        result = aggregate(results)
        result.update(config=config.id, fork=False)
        return result
    from xfbench.backends import get_backend

    get_backend(config.backend)  # the import, once, before any fork
    arrays = Arrays(config)
    no_tensor = None if args.no_tensor else tensor_unavailable(config)
    tensor = not args.no_tensor and no_tensor is None
    if fork:
        works = [
            functools.partial(measure_once, config, arrays, second_step=k == 0, tensor=tensor and k == 0, forked=True)
            for k in range(repeats)
        ]
        if child_limit is not None:
            works = [functools.partial(_limited, child_limit, w) for w in works]
        results = in_children(works, args.parallel, args.repeat_timeout)
    else:
        try:
            results = [{"status": "ok", **measure_once(config, arrays, tensor=tensor)}]
        except Exception as exc:
            results = [_failure(exc)]
    result = aggregate(results)
    result.update(config=config.id, fork=fork)
    if no_tensor:
        result["tensor_message"] = no_tensor
    if result["status"] != "ok" or not args.timeline:
        return result
    timeline = in_child(lambda: rss_timeline(config, arrays)) if fork else rss_timeline(config, arrays)
    timeline.pop("status", None)
    timeline.update(allocator_timeline(config, arrays))
    with open(args.timeline, "w") as fh:
        json.dump(timeline, fh)
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


#: glibc's mmap threshold for the worker (bytes): allocations this large or larger are mapped and unmapped.
MMAP_THRESHOLD_BYTES = 128 * 1024
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def pin_malloc_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``; its default starts at 128 KiB and rises
    to the size of any mapped block that is freed, up to 32 MiB). With the default, which allocations of a
    step come from the heap, and how much freed heap stays resident, depends on the order in which the
    framework's threads free their blocks: torch cnn3 training at batch 8 measured 359-460 MB over 5 forked
    repeats (spread 26%; also with ``MALLOC_ARENA_MAX=1`` or ``OMP_NUM_THREADS=1``) and 278 MB in all 5 with
    the threshold pinned (spread 0.1%). Pinned, a step's RSS follows the memory it holds, not the heap's
    history. ``False`` where this is not glibc."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness.worker")
    p.add_argument("--backend", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--phase", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--input-shape", default=None)
    p.add_argument("--memory-limit", default=None, help="cap this process's address space, e.g. 4GB")
    p.add_argument("--repeats", type=int, default=1, help="processes per figure (median; default 1)")
    p.add_argument("--no-tensor", action="store_true", help="skip the tensor-level figure (MemTracker)")
    p.add_argument("--timeline", default=None, help="also write the step's RSS (and allocator) timeline to this JSON")
    p.add_argument("--repeat-timeout", type=float, default=None, help="seconds per forked repeat")
    p.add_argument("--parallel", type=int, default=1, help="forked repeats running at once (default 1)")
    return p


def answer(args: argparse.Namespace, limit: int | None, child_limit: int | None = None) -> dict[str, Any]:
    """:func:`run`'s result, or the failure as a result (``oom``/``error``, one line), with the note that a
    ``--memory-limit`` was not applied on a GPU."""
    try:
        result = run(args, child_limit)
        if args.memory_limit and limit is None:
            result["message"] = f"--memory-limit {args.memory_limit} not applied on {args.device} (CPU workers only)"
    except Exception as exc:  # MemoryError included: _failure makes it an oom result
        result = _failure(exc)
    return result


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--serve"]:
        return serve(raw[1] if len(raw) > 1 else "")
    args = build_parser().parse_args(raw)
    args.argv = raw
    pin_malloc_threshold()  # before the framework is imported
    limit = address_space_limit(args.device, args.memory_limit)
    if limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = answer(args, limit)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


# --- the memory server ------------------------------------------------------------------------------------------
# Starting a worker per configuration paid the framework's import each time (2-6 s; TensorFlow's is the
# slowest), twice per configuration with the overhead probes. A server imports the framework once per backend
# and run, then serves each CPU configuration exactly as a stand-alone worker would after its import: the
# neutral weights and batch made in numpy, every repeat a child forked from the server (nothing framework-side
# has computed in the server, which the fork-after-import rule needs), ``--memory-limit`` applied in each child.
# Requests and answers are one JSON line each (answers prefixed with SERVER_PREFIX, because a framework may
# print on stdout).
SERVER_PREFIX = "XFBENCH-RESULT "


def serve(backend: str) -> int:
    """``python -m xfbench.benchmarks.harness.worker --serve BACKEND``: answers worker argument lists (JSON arrays, one
    per stdin line) for CPU configurations of ``backend`` until stdin closes."""
    import os

    if backend not in FORK_AFTER_IMPORT or not hasattr(os, "fork"):
        print(f"--serve {backend!r}: allowed: {', '.join(FORK_AFTER_IMPORT)} on a system with fork()", file=sys.stderr)
        return 2
    pin_malloc_threshold()  # before the framework is imported
    from xfbench.backends import get_backend

    get_backend(backend)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            argv = [str(a) for a in json.loads(line)]
            args = build_parser().parse_args(argv)
        except (ValueError, SystemExit) as exc:
            result: dict[str, Any] = {"status": "error", "message": f"bad server request {line.strip()[:200]!r}: {exc}"}
        else:
            args.argv = argv
            if args.backend != backend or args.device != "cpu" or args.timeline:
                result = {"status": "error", "message": f"the {backend} memory server serves CPU configurations only"}
            else:
                limit = address_space_limit(args.device, args.memory_limit)
                result = answer(args, limit, child_limit=limit)
        sys.stdout.write(SERVER_PREFIX + json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


class MemoryServer:
    """Client of one :func:`serve` process (started on the first request)."""

    def __init__(
        self, backend: str, module: str = "xfbench.benchmarks.harness.worker", prefix: str = SERVER_PREFIX
    ) -> None:
        self.backend = backend
        self.module = module  # the server's ``python -m`` module (the timing server shares this client)
        self.prefix = prefix
        self.proc: Any = None
        self.stderr: Any = None
        self.buffer = b""

    def _start(self) -> None:
        import subprocess
        import tempfile

        from xfbench.reports.paths import subprocess_env

        self.stderr = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", self.module, "--serve", self.backend]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=subprocess_env()
        )
        self.buffer = b""

    def _stderr_tail(self) -> str:
        if self.stderr is None:
            return "no output"
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return (lines or ["no output"])[-1][:300]

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _died(self, timed_out: float | None = None) -> dict[str, Any]:
        if timed_out is not None:
            self.proc.kill()
        code = self.proc.wait()
        self.proc = None
        if timed_out is not None:
            return {"status": "error", "message": f"memory worker timed out after {timed_out:.0f} s"}
        return worker_exit_result(code, self._stderr_tail())

    def request(self, argv: list[str] | dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The server's answer for one request (a worker argument list: a stand-alone worker's JSON result)."""
        import os
        import select

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write((json.dumps(argv if isinstance(argv, dict) else list(argv)) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(self.prefix):
                    return dict(json.loads(text[len(self.prefix) :]))
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                return self._died(timed_out=timeout_s)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return self._died()
            self.buffer += chunk


_SERVERS: dict[str, MemoryServer] = {}


def can_serve(device: str, backend: str, timeline: str | None = None) -> bool:
    """Whether a configuration's repeats can come from the backend's memory server (CPU, forkable, no timeline)."""
    import os

    return device == "cpu" and backend in FORK_AFTER_IMPORT and hasattr(os, "fork") and not timeline


def served(backend: str, argv: list[str], timeout_s: float) -> dict[str, Any]:
    """A worker's result for ``argv`` from ``backend``'s memory server (one per backend per process)."""
    if not _SERVERS:
        import atexit

        atexit.register(close_servers)
    server = _SERVERS.setdefault(backend, MemoryServer(backend))
    return server.request(argv, timeout_s)


def close_servers() -> None:
    for server in _SERVERS.values():
        server.close()
    _SERVERS.clear()


if __name__ == "__main__":
    sys.exit(main())
