"""This machine's peaks for step-time prediction, measured by the framework itself, once per run per backend.

What is measured (each with :func:`benchmarks.matmul.time_callable`; the fastest call, a capability, as
``xfbench matmul`` takes its peaks: see :func:`_best`):

1. the GEMM table (:data:`analytics.steptime.GEMM_GRID`, 64 shape classes from tiny to square) with the
   backend's own matmul (``backends.<fw>.ops.matmul_timer``, the callables ``xfbench matmul`` times); each
   rate is net of one call's dispatch (the 1x1x1 product) and capped at the rate of the large products (a
   small product's net time is a difference of two noisy times). A class whose FLOPs exceed
   :data:`GEMM_FLOP_CAP` is timed on a proxy with its largest dimensions halved (not below 256): such shapes
   are compute-bound, their rate has saturated;
2. the bandwidth of an in-place add over :data:`analytics.steptime.COPY_SIZES` bytes
   (``profile.stream_callable``, net of the call: physical traffic and no new output - TensorFlow's
   ``ops.copy_bandwidth_callable`` allocates one each call, which page-faults above 32 MiB), and the
   page-fault cost of a fresh :data:`FAULT_PROBE_BYTES` allocation (``profile.alloc_callable``);
3. the dispatch overhead per op in the step's execution mode (``backends.<fw>.profile.dispatch_callable``:
   the slope between chains of 1 and :data:`CHAIN` tiny ops);
4. element rates of the framework's non-streaming kernels: a sigmoid, a 3x3/2 max pooling, an NCHW->NHWC
   transpose (``profile.elementwise_callable``, ``pool_callable``, ``transpose_callable``);
5. the fixed cost of one step, inference and training: a one-layer probe model (:data:`STEP_PROBE`) stepped
   through the real backend (``benchmarks.harness.workload.prepare``), minus what its work items predict;
6. the framework's own convolution kernels over :data:`analytics.steptime.CONV_GRID` (3x3 probe convolutions
   of im2col shape M x K x N, ``profile.conv_callable``): forward, backward (input and weight gradients) and
   a first layer's backward (weight gradient only). On a CPU the frameworks run convolutions as oneDNN
   direct/brgemm kernels, whose efficiency at a shape differs from the matmul's at the same im2col shape
   (up to 2x, measured): the matmul table prices dense layers and LSTMs, this table convolutions.

A few seconds per backend on a 2-core CPU. :func:`measured_peaks` caches per (backend, device) in the
process; :func:`time_prediction_columns` is what a model row adds.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cache
from typing import Any

from xfbench.analytics.spec import spec_from_dict
from xfbench.analytics.steptime import (
    CONV_GRID,
    COPY_SIZES,
    FRESH_THRESHOLD,
    GEMM_GRID,
    MEASURED_BASIS,
    MachinePeaks,
    calibrated_step_overhead,
    peaks_to_rows,
    predict_step,
)
from xfbench.benchmarks.matmul import load_ops, time_callable

GEMM_FLOP_CAP = 1.2e9  # FLOPs of one timed GEMM at most (a proxy shape above this)
CONV_FLOP_CAP = 2e9  # forward FLOPs of one probe convolution at most
LARGE_GEMM_FLOPS = 1e8  # products at least this large set the cap on every class's rate
CHAIN = 201  # ops in the long dispatch chain
RATE_ELEMENTS = 1 << 20
# (channels, side) of the BatchNorm probes: 128 x 16 x 16 (32 K elements, a late ResNet stage at batch 1) and
# 64 x 128 x 128 (1 M elements, a stem's).
BATCHNORM_PROBES: tuple[tuple[int, int], ...] = ((128, 16), (64, 128))
FAULT_PROBE_BYTES = 64 << 20
MIN_TIME_S = 0.005
RATIO_BOUNDS = (0.2, 10.0)
STEP_PROBE: dict[str, Any] = {"name": "steptime-probe", "input_shape": [8], "layers": [{"type": "Dense", "units": 4}]}


def proxy_shape(m: int, k: int, n: int, cap: float = GEMM_FLOP_CAP) -> tuple[int, int, int]:
    """The shape actually timed for class (m, k, n): its largest dimension halved (not below 256) until
    ``2 m k n <= cap`` or no dimension can shrink."""
    dims = [m, k, n]
    while 2 * dims[0] * dims[1] * dims[2] > cap:
        j = max(range(3), key=lambda d: dims[d])
        if dims[j] // 2 < 256:
            break
        dims[j] //= 2
    return dims[0], dims[1], dims[2]


def gemm_rates(
    raw: dict[str, float], call_s: float, fault_bw: float | None, width: int = 4
) -> dict[tuple[int, int, int], float]:
    """FLOP/s per GEMM class from the raw medians ``raw["gemm:MxKxN"]`` (the proxy's time): net of one call's
    dispatch ``call_s`` and of the page faults of an output above the fresh-allocation threshold, at least 5%
    of the time, capped at the best rate of the products of at least :data:`LARGE_GEMM_FLOPS`."""
    rates: dict[tuple[int, int, int], float] = {}
    large: list[float] = []
    for m, k, n in GEMM_GRID:
        t = raw[f"gemm:{m}x{k}x{n}"]
        pm, pk, pn = proxy_shape(m, k, n)
        out = width * pm * pn
        faults = out / fault_bw if fault_bw and out > FRESH_THRESHOLD else 0.0
        net = max(t - call_s - faults, 0.05 * t)
        flops = 2.0 * pm * pk * pn
        rates[(m, k, n)] = flops / net
        if flops >= LARGE_GEMM_FLOPS:
            large.append(flops / net)
    if large:
        cap = max(large)
        rates = {key: min(rate, cap) for key, rate in rates.items()}
    return rates


def _profile_module(backend: str) -> Any:
    return importlib.import_module(f"xfbench.backends.{backend}.profile")


def _best(fn: Callable[[], object], min_rounds: int = 3) -> float:
    """The fastest call of ``fn`` after one warm-up call (at least ``min_rounds`` calls and :data:`MIN_TIME_S`
    seconds; 2 calls where one takes more than 20 ms): a capability, like ``xfbench matmul``'s peaks. On a
    shared CPU a call only gets slower (another process takes a core mid-call: an OpenMP region then waits a
    time slice), so the fastest call is the stable figure; a median would carry those stalls into every rate."""
    fn()
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > 0.02:
        start = time.perf_counter()
        fn()
        return min(first, time.perf_counter() - start)
    return time_callable(fn, min_time_s=MIN_TIME_S, min_rounds=min_rounds, max_rounds=200, warmup=0).min


def measure(
    backend: str, device: str = "cpu", log: Callable[[str], None] | None = None
) -> tuple[MachinePeaks, dict[str, float]]:
    """Measures the peaks of ``backend`` on ``device`` now (module docstring); returns them and the raw medians
    (seconds) by calibration item. Raises whatever the framework raises (the caller records it)."""
    ops = load_ops(backend)
    prof = _profile_module(backend)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    say(f"step-time calibration: {backend} {device} ({prof.threads()} threads) ...")
    raw: dict[str, float] = {}
    call = _best(ops.matmul_timer(1, 1, 1, "float32", device), 20)
    raw["gemm:1x1x1"] = call
    for m, k, n in GEMM_GRID:
        raw[f"gemm:{m}x{k}x{n}"] = _best(ops.matmul_timer(*proxy_shape(m, k, n), "float32", device))
    short = _best(prof.dispatch_callable(1, device), 20)
    long = _best(prof.dispatch_callable(CHAIN, device), 5)
    raw["dispatch:1"], raw[f"dispatch:{CHAIN}"] = short, long
    bandwidth: dict[int, float] = {}
    for size in COPY_SIZES:
        fn, moved = prof.stream_callable(size, device)
        t = _best(fn)
        raw[f"stream:{size}"] = t
        bandwidth[size] = moved / max(t - short, 0.05 * t)
    fault_bw = _fault_bandwidth(prof, device, bandwidth, raw, short)
    gemm = gemm_rates(raw, call, fault_bw)
    rates = {}
    for name, make, elements in (
        ("elementwise", prof.elementwise_callable, RATE_ELEMENTS),
        ("pool", prof.pool_callable, None),
        ("transpose", prof.transpose_callable, RATE_ELEMENTS),
    ):
        fn, count = (make(elements, device), elements) if elements else make(device)
        t = _best(fn)
        raw[f"rate:{name}"] = t
        rates[name] = count / t
    rates.update(batchnorm_rates(prof, device, raw, short))
    peaks = MachinePeaks(
        label=f"{device} ({backend}, measured)",
        basis=MEASURED_BASIS,
        gemm=gemm,
        bandwidth=bandwidth,
        op_overhead_s=max((long - short) / (CHAIN - 1), 0.0),
        rates=rates,
        threads=prof.threads(),
        fault_bw=fault_bw,
    )
    steps = {phase: _probe_step(backend, device, phase, peaks, raw) for phase in ("inference", "training")}
    peaks = replace(peaks, step_overhead_s=steps)
    peaks = replace(peaks, conv=conv_rates(backend, device, raw, short))
    say(peaks.summary())
    return peaks, raw


def _fault_bandwidth(
    prof: Any, device: str, bandwidth: dict[int, float], raw: dict[str, float], call_s: float = 0.0
) -> float | None:
    """Bytes/s of page-faulting a fresh allocation of :data:`FAULT_PROBE_BYTES` (the framework allocates and
    fills a new tensor) beyond writing it at the copy bandwidth; ``None`` where the allocator keeps the block
    (the fresh fill costs less than 20% more than the write)."""
    nbytes = FAULT_PROBE_BYTES
    t = _best(prof.alloc_callable(nbytes, device))
    raw[f"alloc:{nbytes}"] = t
    write = 2 * nbytes / bandwidth[max(bandwidth)]  # a new block's write: read for ownership + write
    extra = t - call_s - write
    if extra < 0.2 * write:
        return None
    return nbytes / extra


def _step_best(backend: str, device: str, spec_dict: dict[str, Any], phase: str, batch: int = 1) -> float:
    """Median step time of a probe spec through the real backend (``benchmarks.harness.workload.prepare``)."""
    from xfbench.benchmarks.harness.workload import Config, prepare

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{spec_dict['name']}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(spec_dict, fh)
        work = prepare(Config(backend, path, phase, batch, device, "float32", "sgd"))
    return _best(work.step, 10)


def _probe_step(backend: str, device: str, phase: str, partial: MachinePeaks, raw: dict[str, float]) -> float:
    """The fixed cost of one ``phase`` step: the probe model's measured median minus its predicted work."""
    t = _step_best(backend, device, STEP_PROBE, phase, 2)
    raw[f"probe-step:{phase}"] = t
    pred = predict_step(spec_from_dict(STEP_PROBE), 2, phase, partial, framework=backend, optimizer="sgd")
    return calibrated_step_overhead(t, pred)


def conv_probe_side(m: int, k: int, n: int, cap: float = CONV_FLOP_CAP) -> int:
    """The spatial side of the probe convolution timed for class (m, k, n): sqrt(m), halved (not below 14)
    while the forward FLOPs exceed ``cap``."""
    side = max(1, round(m**0.5))
    while 2.0 * side * side * k * n > cap and side // 2 >= 14:
        side //= 2
    return side


def batchnorm_rates(prof: Any, device: str, raw: dict[str, float], call_s: float = 0.0) -> dict[str, float]:
    """A training-mode BatchNorm's cost as the framework runs it (``profile.batchnorm_callable``), forward and
    backward each fitted as ``fixed + elements / rate`` from two probe sizes (:data:`BATCHNORM_PROBES`): rates
    ``batchnorm_fwd`` / ``batchnorm_bwd`` (elements per second) and ``batchnorm_fwd_call`` / ``batchnorm_bwd_call``
    (1 / the fixed seconds beyond one op's dispatch, ``call_s``). On torch 2.13 CPU (2 threads) the forward's fixed
    part is about 50 us and its slope about 1 ns per element (measured), neither of which the bandwidth model
    gives: the statistics are per-channel reductions. A fit that is not increasing leaves its rate out (the
    prediction then falls back to the memory-bound passes)."""
    times: dict[tuple[str, int], float] = {}
    sizes = []
    for channels, side in BATCHNORM_PROBES:
        elements = channels * side * side
        sizes.append(elements)
        for kind in ("forward", "training"):
            t = _best(prof.batchnorm_callable(kind, channels, side, device))
            raw[f"batchnorm-{kind}:{channels}x{side}x{side}"] = t
            times[(kind, elements)] = t
    small, large = sorted(sizes)
    rates: dict[str, float] = {}
    for name, t_small, t_large in (
        ("batchnorm_fwd", times[("forward", small)], times[("forward", large)]),
        (
            "batchnorm_bwd",
            times[("training", small)] - times[("forward", small)],
            times[("training", large)] - times[("forward", large)],
        ),
    ):
        if t_large <= t_small or t_small <= 0:
            continue
        slope = (large - small) / (t_large - t_small)
        rates[name] = slope
        fixed = t_small - small / slope - call_s
        if fixed > 0:
            rates[f"{name}_call"] = 1.0 / fixed
    return rates


def conv_rates(
    backend: str, device: str, raw: dict[str, float], call_s: float = 0.0
) -> dict[str, dict[tuple[int, int, int], float]]:
    """FLOP/s of the framework's convolution kernels over :data:`analytics.steptime.CONV_GRID`, timed with
    ``profile.conv_callable``: forward = 2MKN / (t(forward) - ``call_s``, the cost of calling a one-op function);
    backward = 4MKN / (t(forward + input and weight
    gradients) - t(forward)); backward_first = 2MKN / (t(forward + weight gradient) - t(forward))."""
    prof = _profile_module(backend)
    fwd_t: dict[tuple[int, int, int], float] = {}
    table: dict[str, dict[tuple[int, int, int], float]] = {}
    for kernel in ("forward", "backward", "backward_first"):
        table[kernel] = {}
        for m, k, n in CONV_GRID[kernel]:
            side = conv_probe_side(m, k, n)
            flops = 2.0 * side * side * k * n
            key = (m, k, n)
            if key not in fwd_t or kernel == "forward":
                fwd_t[key] = _best(prof.conv_callable("forward", k // 9, side, n, device))
                raw[f"conv-forward:{m}x{k}x{n}"] = fwd_t[key]
            if kernel == "forward":
                table[kernel][key] = flops / max(fwd_t[key] - call_s, 0.05 * fwd_t[key])
                continue
            t = _best(prof.conv_callable(kernel, k // 9, side, n, device))
            raw[f"conv-{kernel}:{m}x{k}x{n}"] = t
            grads = 2 if kernel == "backward" else 1
            table[kernel][key] = grads * flops / max(t - fwd_t[key], 0.05 * t)
    return table


_written: set[tuple[int, str, str]] = set()


@cache
def _cached(backend: str, device: str) -> tuple[MachinePeaks, tuple[tuple[str, float], ...]]:
    peaks, raw = measure(backend, device)
    return peaks, tuple(raw.items())


def measured_peaks(backend: str, device: str = "cpu", writer: Any = None) -> MachinePeaks:
    """This process's peaks for (``backend``, ``device``): measured on first use, then cached. With a
    ``writer`` (a :class:`reports.writer.RunWriter`), the calibration rows go to its report once."""
    peaks, raw = _cached(backend, device)
    if writer is not None and (id(writer), backend, device) not in _written:
        _written.add((id(writer), backend, device))
        for row in peaks_to_rows(peaks, backend, device, dict(raw)):
            writer.write_row(row)
    return peaks


def time_prediction_columns(config: Any, row: Mapping[str, Any], writer: Any = None) -> dict[str, Any]:
    """What a model row adds: ``time_predicted_s`` (the roofline of :mod:`analytics.steptime` with this run's
    peaks, measured on the first row of each backend and device, whose calibration rows then go to ``writer``),
    ``time_rel_error`` against the row's ``time_median_s`` and ``prediction_basis``. A calibration or
    prediction that fails leaves them out and says why in ``message``: the measured row is never lost."""
    try:
        peaks = measured_peaks(config.backend, config.device, writer)
        pred = predict_step(
            config.spec(),
            config.batch_size,
            config.phase,
            peaks,
            framework=config.backend,
            dtype=config.dtype,
            optimizer=config.optimizer,
        )
    except Exception as exc:
        note = f"time prediction failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        return {"message": (str(row.get("message") or "") + "; " + note).lstrip("; ")}
    out: dict[str, Any] = {"time_predicted_s": pred.total_s, "prediction_basis": peaks.basis}
    measured = row.get("time_median_s")
    if measured:
        out["time_rel_error"] = (pred.total_s - measured) / measured
    return out


__all__ = [
    "CHAIN",
    "GEMM_FLOP_CAP",
    "conv_probe_side",
    "conv_rates",
    "gemm_rates",
    "measure",
    "measured_peaks",
    "proxy_shape",
    "time_prediction_columns",
]
