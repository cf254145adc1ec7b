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
   (``profile.stream_callable``, net of the same call on one element: physical traffic and no new output - TensorFlow's
   ``ops.copy_bandwidth_callable`` allocates one each call, which page-faults above 32 MiB), and the
   page-fault cost of a fresh :data:`FAULT_PROBE_BYTES` allocation (``profile.alloc_callable``);
3. the dispatch overhead per op in the step's execution mode (``backends.<fw>.profile.dispatch_callable``:
   the slope between chains of 1 and :data:`CHAIN` tiny ops);
4. element rates of the framework's non-streaming kernels: a sigmoid, a 3x3/2 max pooling, an NCHW->NHWC
   transpose (``profile.elementwise_callable``, ``pool_callable``, ``transpose_callable``), and the transformer's
   compute-bound element-wise kernels (:data:`TRANSFORMER_RATES`: softmax over rows of 64, layer norm over rows of
   128, GELU in its erf and tanh forms: ``profile.softmax_callable``, ``layernorm_callable``, ``gelu_callable``),
   these net of one call's dispatch (``dispatch:1``); a kept calibration without them prices those kernels as
   before (the sigmoid's rate, or bandwidth alone);
5. the fixed cost of one step, inference and training: a one-layer probe model (:data:`STEP_PROBE`) stepped
   through the real backend (``benchmarks.harness.workload.prepare``), minus what its work items predict; and the
   fixed cost of each further layer (module calls, graph bookkeeping), from the same probe 8 layers longer
   (:data:`STEP_PROBE_DEEP`): its residual's growth per extra layer (``layer_and_step_overhead``). Small models at
   batch 1 are made of these costs (issue 20: the held-out specs at batch 1 ran 25-67% slower than predicted
   without them);
6. the framework's own convolution kernels over :data:`analytics.steptime.CONV_GRID` (3x3 probe convolutions
   of im2col shape M x K x N, ``profile.conv_callable``): forward, backward (input and weight gradients) and
   a first layer's backward (weight gradient only). On a CPU the frameworks run convolutions as oneDNN
   direct/brgemm kernels, whose efficiency at a shape differs from the matmul's at the same im2col shape
   (up to 2x, measured): the matmul table prices dense layers and LSTMs, this table convolutions.

Robust and bounded (issue 20): a calibration is :func:`calibration_repeats` sweeps over every item, each figure the
median of the sweeps' fastest calls; each figure is checked against physical bounds (:func:`out_of_bounds`: no
bandwidth or FLOP rate above what the cores can do at their top clock, no op faster than a C call), re-measured
when outside them and refused (left out, and a ``skipped`` calibration row says why) when it stays outside.
Reused: a calibration is kept on disk and reused by later runs of the same machine, framework and settings
(:func:`calibration_key`, :data:`DEFAULT_MAX_AGE_H`), so that the same configuration's prediction does not move
with each run's calibration noise; the rows' ``prediction_basis`` says which. :func:`measured_peaks` caches per
(backend, device) in the process; :func:`time_prediction_columns` is what a model row adds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import statistics
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
    layer_and_step_overhead,
    parse_probe_key,
    peaks_to_rows,
    predict_step,
    probe_keys,
)
from xfbench.benchmarks.matmul import load_ops, time_callable

GEMM_FLOP_CAP = 1.2e9  # FLOPs of one timed GEMM at most (a proxy shape above this)
CONV_FLOP_CAP = 2e9  # forward FLOPs of one probe convolution at most
LARGE_GEMM_FLOPS = 1e8  # products at least this large set the cap on every class's rate
CHAIN = 201  # ops in the long dispatch chain
RATE_ELEMENTS = 1 << 20
#: The transformer kernels' element rates (``rate:<name>``, each over :data:`RATE_ELEMENTS` values): name -> how
#: the backend's profile module makes the probe.
TRANSFORMER_RATES: dict[str, Callable[[Any, int, str], Callable[[], object]]] = {
    "softmax": lambda prof, n, device: prof.softmax_callable(n, device),
    "layernorm": lambda prof, n, device: prof.layernorm_callable(n, device),
    "gelu": lambda prof, n, device: prof.gelu_callable(n, device, False),
    "gelu_tanh": lambda prof, n, device: prof.gelu_callable(n, device, True),
}
# (channels, side) of the BatchNorm probes: 128 x 16 x 16 (32 K elements, a late ResNet stage at batch 1) and
# 64 x 128 x 128 (1 M elements, a stem's).
BATCHNORM_PROBES: tuple[tuple[int, int], ...] = ((128, 16), (64, 128))
FAULT_PROBE_BYTES = 64 << 20
MIN_TIME_S = 0.005
RATIO_BOUNDS = (0.2, 10.0)
STEP_PROBE: dict[str, Any] = {"name": "steptime-probe", "input_shape": [8], "layers": [{"type": "Dense", "units": 4}]}
#: The same probe 8 layers longer: its extra step time beyond its extra work items is the per-layer overhead.
STEP_PROBE_DEEP: dict[str, Any] = {
    "name": "steptime-probe-deep",
    "input_shape": [8],
    "layers": [{"type": "Dense", "units": 8}] * 8 + [{"type": "Dense", "units": 4}],
}


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
        t = raw.get(f"gemm:{m}x{k}x{n}")
        if t is None:
            continue  # refused (outside its bounds)
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


#: Sweeps over every calibration item per calibration (``XFBENCH_CALIBRATION_REPEATS``): each figure is the median
#: of the sweeps' fastest calls (a robust statistic: one stalled sweep moves no figure).
DEFAULT_CALIBRATION_REPEATS = 3
CALIBRATION_REPEATS_ENV = "XFBENCH_CALIBRATION_REPEATS"
#: Re-measurements of a figure outside its physical bounds before it is refused.
REMEASURE = 2


def calibration_repeats() -> int:
    from xfbench.benchmarks.harness.rows import _positive_env

    return _positive_env(CALIBRATION_REPEATS_ENV, DEFAULT_CALIBRATION_REPEATS)


def calibration_items(backend: str, device: str) -> dict[str, tuple[Callable[[], Callable[[], object]], int]]:
    """Every timed figure of a calibration, in order: ``raw key -> (make the callable, minimum rounds)``. The
    callables are made when timed (each sweep allocates its own operands and frees them)."""
    ops = load_ops(backend)
    prof = _profile_module(backend)
    items: dict[str, tuple[Callable[[], Callable[[], object]], int]] = {}

    def add(key: str, make: Callable[[], Callable[[], object]], rounds: int = 3) -> None:
        items[key] = (make, rounds)

    add("gemm:1x1x1", lambda: ops.matmul_timer(1, 1, 1, "float32", device), 20)
    for m, k, n in GEMM_GRID:
        add(f"gemm:{m}x{k}x{n}", functools.partial(ops.matmul_timer, *proxy_shape(m, k, n), "float32", device))
    add("dispatch:1", lambda: prof.dispatch_callable(1, device), 20)
    add(f"dispatch:{CHAIN}", lambda: prof.dispatch_callable(CHAIN, device), 5)
    # the stream callable on one element: the call's own cost, which every stream figure is net of
    add(f"stream:{STREAM_CALL_BYTES}", lambda: prof.stream_callable(STREAM_CALL_BYTES, device)[0], 20)
    for size in COPY_SIZES:
        add(f"stream:{size}", functools.partial(lambda sz: prof.stream_callable(sz, device)[0], size))
    add(f"alloc:{FAULT_PROBE_BYTES}", lambda: prof.alloc_callable(FAULT_PROBE_BYTES, device))
    add("rate:elementwise", lambda: prof.elementwise_callable(RATE_ELEMENTS, device))
    add("rate:pool", lambda: prof.pool_callable(device)[0])
    add("rate:transpose", lambda: prof.transpose_callable(RATE_ELEMENTS, device))
    for name, make in TRANSFORMER_RATES.items():
        add(f"rate:{name}", functools.partial(make, prof, RATE_ELEMENTS, device))
    for channels, side in BATCHNORM_PROBES:
        for kind in ("forward", "training"):
            add(
                f"batchnorm-{kind}:{channels}x{side}x{side}",
                functools.partial(prof.batchnorm_callable, kind, channels, side, device),
            )
    for kernel in ("forward", "backward", "backward_first"):
        for m, k, n in CONV_GRID[kernel]:
            side = conv_probe_side(m, k, n)
            fwd = f"conv-forward:{m}x{k}x{n}"
            if fwd not in items:
                add(fwd, functools.partial(prof.conv_callable, "forward", k // 9, side, n, device))
            if kernel != "forward":
                add(
                    f"conv-{kernel}:{m}x{k}x{n}", functools.partial(prof.conv_callable, kernel, k // 9, side, n, device)
                )
    for phase in ("inference", "training"):
        add(f"probe-step:{phase}", functools.partial(_step_callable, backend, device, STEP_PROBE, phase, 2), 10)
        add(
            f"probe-step-deep:{phase}",
            functools.partial(_step_callable, backend, device, STEP_PROBE_DEEP, phase, 2),
            10,
        )
    return items


def stream_moved(raw: Mapping[str, float], size: int) -> float:
    """Bytes the backend's stream probe over ``size`` bytes moves (2 or 3 per byte: ``stream-moved-per-byte``)."""
    return raw.get("stream-moved-per-byte", 2.0) * 4 * max(1, size // 4)


def _pool_count(backend: str, device: str) -> int:
    return int(_profile_module(backend).pool_callable(device)[1])


def sweep(items: Mapping[str, tuple[Callable[[], Callable[[], object]], int]], keys: list[str]) -> dict[str, float]:
    """One pass over ``keys``: each callable made, then its fastest call (:func:`_best`)."""
    out: dict[str, float] = {}
    for key in keys:
        make, rounds = items[key]
        out[key] = _best(make(), rounds)
    return out


def derive(backend: str, device: str, raw: Mapping[str, float], threads: int | None) -> MachinePeaks:
    """The peaks from the raw fastest times of a calibration (module docstring); pure arithmetic."""
    call = raw["gemm:1x1x1"]
    short, long = raw.get("dispatch:1", call), raw.get(f"dispatch:{CHAIN}")
    # a refused chain (its per-op cost below the physical floor: a noisy sweep) prices an op at that floor
    op_overhead = MIN_OP_S if long is None else max((long - short) / (CHAIN - 1), 0.0)
    stream_call = raw.get(f"stream:{STREAM_CALL_BYTES}", short)
    bandwidth: dict[int, float] = {}
    for size in COPY_SIZES:
        key = f"stream:{size}"
        if key not in raw:
            continue  # refused (outside its bounds)
        t = raw[key]
        bandwidth[size] = stream_moved(raw, size) / max(t - stream_call, 0.05 * t)
    fault_bw = _fault_from_raw(raw, bandwidth, short)
    gemm = gemm_rates(dict(raw), call, fault_bw)
    rates: dict[str, float] = {}
    for name, count in (
        ("elementwise", RATE_ELEMENTS),
        ("pool", raw.get("pool-count", 0)),
        ("transpose", RATE_ELEMENTS),
    ):
        rt = raw.get(f"rate:{name}")
        if rt and count:
            rates[name] = count / rt
    for name in TRANSFORMER_RATES:  # absent from an older raw (or refused): the pricing falls back
        rt = raw.get(f"rate:{name}")
        if rt:
            rates[name] = RATE_ELEMENTS / max(rt - short, 0.05 * rt)
    rates.update(_batchnorm_from_raw(raw, short))
    peaks = MachinePeaks(
        label=f"{device} ({backend}, measured)",
        basis=MEASURED_BASIS,
        gemm=gemm,
        bandwidth=bandwidth,
        op_overhead_s=op_overhead,
        rates=rates,
        threads=threads,
        fault_bw=fault_bw,
    )
    steps, layers = {}, {}
    extra = len(STEP_PROBE_DEEP["layers"]) - len(STEP_PROBE["layers"])
    for phase in ("inference", "training"):
        pt = raw.get(f"probe-step:{phase}")
        if pt is None:
            continue
        pred = predict_step(spec_from_dict(STEP_PROBE), 2, phase, peaks, framework=backend, optimizer="sgd")
        steps[phase] = calibrated_step_overhead(pt, pred)
        deep = raw.get(f"probe-step-deep:{phase}")
        if deep is None:  # a calibration kept before the deep probe: no per-layer term
            continue
        pred_deep = predict_step(spec_from_dict(STEP_PROBE_DEEP), 2, phase, peaks, framework=backend, optimizer="sgd")
        layers[phase], steps[phase] = layer_and_step_overhead(pt - pred.total_s, deep - pred_deep.total_s, extra)
    return replace(peaks, step_overhead_s=steps, layer_overhead_s=layers, conv=_conv_from_raw(raw, call_s=short))


def measure(
    backend: str, device: str = "cpu", log: Callable[[str], None] | None = None, repeats: int | None = None
) -> tuple[MachinePeaks, dict[str, float]]:
    """Measures the peaks of ``backend`` on ``device`` now (module docstring): :func:`calibration_repeats` sweeps
    over every item, each figure the median of the sweeps' fastest calls; a figure outside its physical bounds
    (:func:`out_of_bounds`) is re-measured (:data:`REMEASURE` times), then refused (left out of the tables, the
    prediction interpolating over its neighbours) and said so in ``raw["refused:<key>"]`` (the reason's bound in
    seconds). Returns the peaks and the raw figures by item. Raises whatever the framework raises."""
    prof = _profile_module(backend)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    n = calibration_repeats() if repeats is None else repeats
    say(f"step-time calibration: {backend} {device} ({prof.threads()} threads, {n} sweeps) ...")
    items = calibration_items(backend, device)
    keys = list(items)
    sweeps = [sweep(items, keys) for _ in range(n)]
    raw: dict[str, float] = {key: float(statistics.median(s[key] for s in sweeps)) for key in keys}
    raw["pool-count"] = float(_pool_count(backend, device))
    _, moved = prof.stream_callable(STREAM_CALL_BYTES, device)
    raw["stream-moved-per-byte"] = moved / (4 * max(1, STREAM_CALL_BYTES // 4))
    raw["sweeps"] = float(n)
    if n > 1:
        raw["sweep-spread"] = float(
            statistics.median((max(s[k] for s in sweeps) - min(s[k] for s in sweeps)) / raw[k] for k in keys if raw[k])
        )
    threads = prof.threads()
    for attempt in range(REMEASURE + 1):
        bad = out_of_bounds(raw, threads, device)
        if not bad:
            break
        if attempt < REMEASURE:
            again = [sweep(items, list(bad)) for _ in range(max(n, 1))]
            for key in bad:
                raw[key] = float(statistics.median(s[key] for s in again))
            continue
        for key, why in bad.items():
            say(f"step-time calibration: {backend} refused {key}: {why}")
            raw[f"refused:{key}"] = raw.pop(key)
            REFUSED.setdefault((backend, device), {})[key] = why
    peaks = derive(backend, device, raw, threads)
    say(peaks.summary())
    return peaks, raw


#: Why each refused figure was refused, per (backend, device), for the report's calibration rows.
REFUSED: dict[tuple[str, str], dict[str, str]] = {}
#: The stream probe's one-element call (its fixed cost).
STREAM_CALL_BYTES = 4
#: Ceilings no CPU figure may pass, per thread per cycle: memory traffic (an AVX-512 core's L1: two 64-byte loads
#: and one 64-byte store per cycle at most, 192 B; every stream figure is in L2 or beyond) and FP32 FLOPs (two
#: 16-lane FMA units, 64); the clock is the CPU's maximum where the OS says, else :data:`DEFAULT_MAX_HZ`.
BYTES_PER_CYCLE = 192
FLOPS_PER_CYCLE = 64
DEFAULT_MAX_HZ = 6.0e9
#: One framework op costs at least this much (a C call from Python, measured ~0.1 us at best on any CPU).
MIN_OP_S = 5e-8


def max_clock_hz() -> float:
    """The CPU's maximum clock (``cpuinfo_max_freq``), else :data:`DEFAULT_MAX_HZ` (no faster CPU exists)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as fh:
            return float(fh.read().strip()) * 1e3
    except (OSError, ValueError):
        return DEFAULT_MAX_HZ


def out_of_bounds(raw: Mapping[str, float], threads: int | None, device: str) -> dict[str, str]:
    """The raw figures no machine of this kind can produce, each with why (one line): a stream figure whose net
    bandwidth exceeds ``threads x`` :data:`BYTES_PER_CYCLE` ``x`` the clock (torch's 256 KiB in-place add once read
    1528 GB/s on two cores: its call cost had been taken from another op), a GEMM or convolution above
    ``threads x`` :data:`FLOPS_PER_CYCLE` ``x`` the clock, an op (every figure is one) faster than :data:`MIN_OP_S`
    or a per-op dispatch cost below it. GPUs: only the last two (no ceiling is known here)."""
    bad: dict[str, str] = {}
    for key, t in raw.items():
        if key.startswith(("refused:", "pool-count", "sweep", "stream-moved")):
            continue
        if t < MIN_OP_S:
            bad[key] = f"{t * 1e6:.3f} us is below one op's minimum cost {MIN_OP_S * 1e6:.2f} us"
    short, long = raw.get("dispatch:1"), raw.get(f"dispatch:{CHAIN}")
    if short is not None and long is not None and (long - short) / (CHAIN - 1) < MIN_OP_S:
        bad[f"dispatch:{CHAIN}"] = (
            f"per-op dispatch {(long - short) / (CHAIN - 1) * 1e6:.3f} us below {MIN_OP_S * 1e6} us"
        )
    if device != "cpu":
        return bad
    cores = max(threads or 1, 1)
    clock = max_clock_hz()
    bw_cap = cores * BYTES_PER_CYCLE * clock
    flop_cap = cores * FLOPS_PER_CYCLE * clock
    call = raw.get(f"stream:{STREAM_CALL_BYTES}", short or 0.0)
    for size in COPY_SIZES:
        st = raw.get(f"stream:{size}")
        if st is None:
            continue
        net = st - call
        moved = stream_moved(raw, size)
        if net <= 0 or moved / net > bw_cap:
            implied = "no time beyond the call" if net <= 0 else f"{moved / net / 1e9:.1f} GB/s"
            bad[f"stream:{size}"] = (
                f"{st * 1e6:.3f} us ({implied}) above {bw_cap / 1e9:.0f} GB/s = {cores} threads x {BYTES_PER_CYCLE} B"
                f" x {clock / 1e9:.1f} GHz"
            )
    gemm_call = raw.get("gemm:1x1x1", 0.0)
    for m, k, n in GEMM_GRID:
        key = f"gemm:{m}x{k}x{n}"
        gt = raw.get(key)
        pm, pk, pn = proxy_shape(m, k, n)
        flops = 2.0 * pm * pk * pn
        if gt is not None and flops >= LARGE_GEMM_FLOPS and flops / max(gt - gemm_call, 1e-12) > flop_cap:
            bad[key] = f"{flops / (gt - gemm_call) / 1e9:.0f} GFLOP/s above {flop_cap / 1e9:.0f} GFLOP/s"
    for kernel in ("forward",):
        for m, k, n in CONV_GRID[kernel]:
            key = f"conv-{kernel}:{m}x{k}x{n}"
            ct = raw.get(key)
            side = conv_probe_side(m, k, n)
            flops = 2.0 * side * side * k * n
            if ct is not None and flops >= LARGE_GEMM_FLOPS and flops / ct > flop_cap:
                bad[key] = f"{flops / ct / 1e9:.0f} GFLOP/s above {flop_cap / 1e9:.0f} GFLOP/s"
    return bad


def _step_callable(
    backend: str, device: str, spec_dict: dict[str, Any], phase: str, batch: int
) -> Callable[[], object]:
    """One step of a probe spec through the real backend (``benchmarks.harness.workload.prepare``)."""
    from xfbench.benchmarks.harness.workload import Config, prepare

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{spec_dict['name']}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(spec_dict, fh)
        work = prepare(Config(backend, path, phase, batch, device, "float32", "sgd"))
    return work.step


def _fault_from_raw(raw: Mapping[str, float], bandwidth: Mapping[int, float], call_s: float) -> float | None:
    """Bytes/s of page-faulting a fresh allocation of :data:`FAULT_PROBE_BYTES` (the framework allocates and
    fills a new tensor) beyond writing it at the copy bandwidth; ``None`` where the allocator keeps the block
    (the fresh fill costs less than 20% more than the write)."""
    nbytes = FAULT_PROBE_BYTES
    t = raw.get(f"alloc:{nbytes}")
    if t is None or not bandwidth:
        return None
    write = 2 * nbytes / bandwidth[max(bandwidth)]  # a new block's write: read for ownership + write
    extra = t - call_s - write
    if extra < 0.2 * write:
        return None
    return nbytes / extra


def conv_probe_side(m: int, k: int, n: int, cap: float = CONV_FLOP_CAP) -> int:
    """The spatial side of the probe convolution timed for class (m, k, n): sqrt(m), halved (not below 14)
    while the forward FLOPs exceed ``cap``."""
    side = max(1, round(m**0.5))
    while 2.0 * side * side * k * n > cap and side // 2 >= 14:
        side //= 2
    return side


def _batchnorm_from_raw(raw: Mapping[str, float], call_s: float = 0.0) -> dict[str, float]:
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
            t = raw.get(f"batchnorm-{kind}:{channels}x{side}x{side}")
            if t is None:
                return {}
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


def _conv_from_raw(raw: Mapping[str, float], call_s: float = 0.0) -> dict[str, dict[tuple[int, int, int], float]]:
    """FLOP/s of the framework's convolution kernels over :data:`analytics.steptime.CONV_GRID`, from the times of
    ``profile.conv_callable``: forward = 2MKN / (t(forward) - ``call_s``, the cost of calling a one-op function);
    backward = 4MKN / (t(forward + input and weight gradients) - t(forward)); backward_first = 2MKN / (t(forward +
    weight gradient) - t(forward)). A refused figure leaves its class out."""
    table: dict[str, dict[tuple[int, int, int], float]] = {}
    for kernel in ("forward", "backward", "backward_first"):
        table[kernel] = {}
        for m, k, n in CONV_GRID[kernel]:
            side = conv_probe_side(m, k, n)
            flops = 2.0 * side * side * k * n
            key = (m, k, n)
            fwd = raw.get(f"conv-forward:{m}x{k}x{n}")
            if fwd is None:
                continue
            if kernel == "forward":
                table[kernel][key] = flops / max(fwd - call_s, 0.05 * fwd)
                continue
            t = raw.get(f"conv-{kernel}:{m}x{k}x{n}")
            if t is None:
                continue
            grads = 2 if kernel == "backward" else 1
            table[kernel][key] = grads * flops / max(t - fwd, 0.05 * t)
    return table


_written: set[tuple[int, str, str]] = set()


# --- reuse: a recent calibration of the same machine and framework -------------------------------------------
# Calibrating anew in every run made the same configuration's prediction move more than its measurement (issue
# 20: two runs' calibration figures in a ratio of 0.74 at the 10th percentile and 1.65 at the 90th, predictions
# 8-13% apart at the median, up to 152%). A calibration is therefore kept (its raw figures, JSON) under
# :func:`cache_dir` and reused by any run of the same machine, framework and settings (:func:`calibration_key`)
# within :data:`DEFAULT_MAX_AGE_H` hours; the rows' ``prediction_basis`` says which (``measured-peaks`` for a fresh
# calibration, ``measured-peaks (reused: calibrated <time>)`` for a reused one). ``XFBENCH_CALIBRATION=fresh``
# calibrates anew (and replaces the kept one); ``XFBENCH_CALIBRATION=off`` neither reads nor writes it.
CALIBRATION_ENV = "XFBENCH_CALIBRATION"
CALIBRATION_MODES = ("reuse", "fresh", "off")
MAX_AGE_ENV = "XFBENCH_CALIBRATION_MAX_AGE_H"
DEFAULT_MAX_AGE_H = 7 * 24.0
#: Bumped whenever what a calibration times or how its raw figures are read changes (a kept one is then stale).
CALIBRATION_VERSION = 5  # 3: transformer rates (TRANSFORMER_RATES); 4: MXNet's sigmoid; 5: per-layer overhead


def calibration_mode() -> str:
    mode = os.environ.get(CALIBRATION_ENV, "").strip() or "reuse"
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"{CALIBRATION_ENV}={mode!r}; allowed: {', '.join(CALIBRATION_MODES)}")
    return mode


def max_age_h() -> float:
    text = os.environ.get(MAX_AGE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_AGE_H
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{MAX_AGE_ENV}={text!r}; allowed: a positive number of hours")
    return value


def cache_dir() -> str:
    """``$XFBENCH_CACHE_DIR/calibration``, else ``$XDG_CACHE_HOME/xfbench/calibration`` (``~/.cache``)."""
    root = os.environ.get("XFBENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xfbench"
    )
    return os.path.join(root, "calibration")


def calibration_key(backend: str, device: str, threads: int | None, framework_version: str) -> dict[str, Any]:
    """What a kept calibration must match to be reused: the machine (CPU model, logical cores, affinity, ISA caps),
    the framework and its version, the device, the threads, and what the calibration times (the grids)."""
    from xfbench.reports.env import cpu_affinity, isa_cap
    from xfbench.reports.env import fingerprint as env_fingerprint

    env = env_fingerprint()
    grids = json.dumps(
        [GEMM_GRID, COPY_SIZES, sorted((k, list(v)) for k, v in CONV_GRID.items()), STEP_PROBE, STEP_PROBE_DEEP]
    )
    return {
        "version": CALIBRATION_VERSION,
        "machine": env.get("machine", ""),
        "cpu_model": env.get("cpu_model", ""),
        "cpu_cores": env.get("cpu_cores", ""),
        "cpu_affinity": cpu_affinity(),
        "cpu_isa_cap": isa_cap(),
        "backend": backend,
        "framework_version": framework_version,
        "device": device,
        "threads": threads,
        "grids": hashlib.sha256(grids.encode()).hexdigest()[:16],
    }


def _cache_path(key: Mapping[str, Any], subdir: str = "") -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = os.path.join(cache_dir(), subdir) if subdir else cache_dir()
    return os.path.join(folder, f"{key['backend']}-{key['device'].replace(':', '')}-{digest}.json")


def load_kept(key: Mapping[str, Any], now: float | None = None, subdir: str = "") -> dict[str, Any] | None:
    """The kept calibration for ``key`` (its JSON: ``created`` epoch seconds, ``raw``), or ``None`` where there is
    none, it is older than :func:`max_age_h`, or it cannot be read. ``subdir``: another kind of kept figure under
    :func:`cache_dir` (the memory probes')."""
    path = _cache_path(key, subdir)
    try:
        with open(path, encoding="utf-8") as fh:
            kept = json.load(fh)
    except (OSError, ValueError):
        return None
    if kept.get("key") != dict(key):
        return None
    age_h = ((time.time() if now is None else now) - float(kept.get("created", 0))) / 3600
    if not 0 <= age_h <= max_age_h():
        return None
    return dict(kept)


def keep(key: Mapping[str, Any], raw: Mapping[str, float], subdir: str = "") -> str | None:
    """Writes a calibration for reuse (atomically); returns its path, or ``None`` where the folder is not writable."""
    path = _cache_path(key, subdir)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"key": dict(key), "created": time.time(), "raw": dict(raw)}, fh)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


@cache
def _cached(backend: str, device: str) -> tuple[MachinePeaks, tuple[tuple[str, float], ...]]:
    """This process's calibration of (``backend``, ``device``): a kept one where :func:`calibration_mode` allows and
    one matches, else measured now (and kept)."""
    mode = calibration_mode()
    prof = _profile_module(backend)
    threads = prof.threads()
    key = None
    if mode != "off":
        from xfbench.backends import get_backend

        key = calibration_key(backend, device, threads, str(get_backend(backend).VERSION))
    kept = load_kept(key) if key is not None and mode == "reuse" else None
    if kept is not None:
        raw = {str(k): float(v) for k, v in kept["raw"].items()}
        stamp = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(float(kept["created"])))
        peaks = derive(backend, device, raw, threads)
        sweeps = int(raw.get("sweeps", 1))
        peaks = replace(peaks, basis=f"{MEASURED_BASIS} (reused: calibrated {stamp}, {sweeps} sweeps)")
        print(f"step-time calibration: {backend} {device}: reused a kept calibration ({stamp})", file=sys.stderr)
        return peaks, tuple(raw.items())
    peaks, raw = measure(backend, device)
    if key is not None:
        keep(key, raw)
    return peaks, tuple(raw.items())


def measured_peaks(backend: str, device: str = "cpu", writer: Any = None) -> MachinePeaks:
    """This process's peaks for (``backend``, ``device``): a recent kept calibration, else measured on first use;
    then cached in the process. With a ``writer`` (a :class:`reports.writer.RunWriter`), the calibration rows go
    to its report once (a refused figure as a ``skipped`` row saying why)."""
    peaks, raw = _cached(backend, device)
    if writer is not None and (id(writer), backend, device) not in _written:
        _written.add((id(writer), backend, device))
        for row in peaks_to_rows(peaks, backend, device, dict(raw)):
            writer.write_row({**row, "threads": peaks.threads})
        for key, value in raw:
            if key.startswith("refused:"):
                writer.write_row(
                    {
                        "kind": "calibration",
                        "backend": backend,
                        "device": device,
                        "status": "skipped",
                        "shape": key.split(":", 1)[1],
                        "time_median_s": value,
                        "prediction_basis": peaks.basis,
                        "message": "refused: outside its physical bounds after re-measuring; "
                        + REFUSED.get((backend, device), {}).get(key.split(":", 1)[1], ""),
                    }
                )
    return peaks


# --- exact-shape layer probes ---------------------------------------------------------------------------------

#: Forward FLOPs of one exact-shape probe at most: a larger layer is timed on fewer samples (rows) and scaled.
EXACT_FLOP_CAP = 1.6e10
#: Where the exact-shape probes are kept (under :func:`cache_dir`, keyed as the calibration).
EXACT_SUBDIR = "layer-probes"
#: The probe that times the probe mechanism itself (a function call, a tape): every probe is net of it.
NULL_PROBE = "dense:1x1>1"
#: ``XFBENCH_EXACT_PROBES=off``: price every layer from the calibration's tables alone.
EXACT_ENV = "XFBENCH_EXACT_PROBES"


def probe_timed_dims(op: str, dims: Mapping[str, Any], cap: float = EXACT_FLOP_CAP) -> tuple[dict[str, Any], float]:
    """The dims actually timed for a probe of ``dims`` (the batch or rows cut so the forward has at most ``cap``
    FLOPs, not below one sample) and the factor its time is scaled by (samples asked / samples timed)."""
    field_name = "rows" if op == "dense" else "batch"
    per = probe_flops(op, {**dims, field_name: 1})  # one sample's (row's) forward FLOPs
    asked = int(dims[field_name])
    timed = max(1, min(asked, int(cap // max(per, 1.0))))
    return {**dims, field_name: timed}, asked / timed


def probe_flops(op: str, dims: Mapping[str, Any]) -> float:
    """Forward FLOPs of the op at ``dims`` (the matmul count, 2 per multiply-add)."""
    if op == "conv":
        kh, kw = dims["kernel"]
        sh, sw = dims["stride"]
        t, b, left, r = dims["pads"]
        ho = (dims["height"] + t + b - kh) // sh + 1
        wo = (dims["width"] + left + r - kw) // sw + 1
        return 2.0 * dims["batch"] * ho * wo * dims["channels"] * kh * kw * dims["filters"]
    if op == "lstm":  # per step the input and the recurrent projections into the 4 gates
        return 2.0 * dims["batch"] * dims["steps"] * 4 * dims["units"] * (dims["features"] + dims["units"])
    return 2.0 * dims["rows"] * dims["features"] * dims["units"]


def _typical(fn: Callable[[], object]) -> float:
    """The median call of ``fn`` after one warm-up call (at least 3 calls and :data:`MIN_TIME_S` seconds): the
    statistic a model row reports (its median step), where the calibration's tables take the fastest call. With the
    fastest, torch's catalog rows ran a median 24% slower than predicted in both runs of a pair (issue 20)."""
    return time_callable(fn, min_time_s=MIN_TIME_S, min_rounds=3, max_rounds=50, warmup=1).median


def measure_probes(
    backend: str, device: str, keys: list[str], call_s: float, threads: int | None, sweeps: int = 3
) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds of each exact-shape probe (``analytics.steptime.probe_key``): the framework's op at the layer's
    shape (``profile.layer_probe_callable``), each callable made once, then ``sweeps`` passes taking each one's
    median call (:func:`_typical`), the median of the passes. ``forward`` = t(forward) - the call (the larger of
    ``call_s`` and the forward of :data:`NULL_PROBE`, a 1 x 1 x 1 dense layer through the same mechanism: a
    ``tf.function`` call costs about 0.3 ms, measured); ``backward`` and ``backward_first`` = t(forward + gradients)
    - t(forward) - the null probe's gradient part; scaled from the timed batch (:func:`probe_timed_dims`).
    A figure above the CPU's FLOP ceiling (:func:`out_of_bounds`'s) is refused: returned apart with why, so the
    item falls back to the tables."""
    prof = _profile_module(backend)
    wanted: dict[str, tuple[str, dict[str, Any], float]] = {}  # body|kind -> (op, timed dims, scale)
    for kind in ("forward", "backward"):  # the probe mechanism's own cost: a 1 x 1 x 1 dense layer
        wanted[f"{NULL_PROBE}|{kind}"] = ("dense", {"rows": 1, "features": 1, "units": 1}, 1.0)
    for key in keys:
        op, dims, kind = parse_probe_key(key)
        timed, scale = probe_timed_dims(op, dims)
        body = key.partition("|")[0]
        for k in {"forward", kind}:
            wanted[f"{body}|{k}"] = (op, timed, scale)
    fns = {k: prof.layer_probe_callable(op, dims, k.partition("|")[2], device) for k, (op, dims, _) in wanted.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, sweeps)):
        for k, fn in fns.items():
            times[k].append(_typical(fn))
    fns.clear()
    best = {k: statistics.median(v) for k, v in times.items()}
    cap = max(threads or 1, 1) * FLOPS_PER_CYCLE * max_clock_hz() if device == "cpu" else float("inf")
    out: dict[str, float] = {}
    refused: dict[str, str] = {}
    null_f, null_b = best[f"{NULL_PROBE}|forward"], best[f"{NULL_PROBE}|backward"]
    call = max(null_f, call_s)
    for key in keys:
        op, _dims, kind = parse_probe_key(key)
        body = key.partition("|")[0]
        _, timed, scale = wanted[key]
        fwd = best[f"{body}|forward"]
        if kind == "forward":
            net = max(fwd - call, 0.05 * fwd)
            flops = probe_flops(op, timed)
        else:
            t = best[key]
            net = max(t - fwd - max(null_b - null_f, 0.0), 0.05 * t)
            flops = probe_flops(op, timed) * (2 if kind == "backward" else 1)
        if flops / net > cap:
            refused[key] = f"{flops / net / 1e9:.0f} GFLOP/s above {cap / 1e9:.0f} GFLOP/s"
            continue
        out[key] = net * scale
    return out, refused


def probes_in_fresh_process(
    backend: str, device: str, keys: list[str], call_s: float, threads: int | None
) -> tuple[dict[str, float], dict[str, str]]:
    """:func:`measure_probes` in a child forked from the backend's timing server (``benchmarks.harness.timing``: a
    process that imported the framework and computed nothing), as a model row's other processes are timed; in this
    process where no fork is safe (GPU, a backend without the server) or the server fails.

    Why, measured (issue 20, MXNet, 2-core EPYC): inside a ``tox -m bench`` process that had built and timed the
    catalog's models, Gluon's fused LSTM probe read 5.86 ms forward and 8.95 ms for its weight gradients, LeNet's
    first convolution 0.88 ms; the same probes in a fresh process the next day 2.87, 3.61 and 0.52-0.58 ms, against
    the model's own step of 2.7-3.3 ms (LSTM inference) and a profiled convolution of 0.59 ms, while the machine ran
    the noise probe's GEMM 1.4-2x slower than during the bench (so the in-process figures were inflated more than
    these ratios). Which state of the benchmark process slows them (framework threads, heap) is not isolated; the
    forked child, like the model rows' other processes, starts from a process that computed nothing."""
    from xfbench.benchmarks.harness import timing

    if not timing.can_fork_backend(backend, device):
        return measure_probes(backend, device, keys, call_s, threads)
    server = timing.server_for(backend)
    request = {"probes": keys, "backend": backend, "device": device, "call_s": call_s, "threads": threads}
    reply = server.request(request, timing.TIMING_TIMEOUT_S)
    if reply.get("status") != "ok":
        print(
            f"exact-shape probes: {backend}: the forked probe process failed ({reply.get('message', '')}); "
            "timing them in this process",
            file=sys.stderr,
        )
        return measure_probes(backend, device, keys, call_s, threads)
    return {str(k): float(v) for k, v in reply["found"].items()}, {str(k): str(v) for k, v in reply["refused"].items()}


def exact_probes_enabled() -> bool:
    return os.environ.get(EXACT_ENV, "").strip().lower() not in ("off", "0", "no")


_exact_kept: dict[tuple[str, str], dict[str, float]] = {}


def with_exact_probes(
    peaks: MachinePeaks,
    backend: str,
    device: str,
    spec: Any,
    batch: int,
    phase: str,
    dtype: str = "float32",
    optimizer: str = "sgd",
) -> MachinePeaks:
    """``peaks`` with the exact-shape probes of one step of ``spec`` (:func:`analytics.steptime.probe_keys`) in
    :attr:`MachinePeaks.exact`: kept ones reused (same key as the calibration, :data:`EXACT_SUBDIR`), the rest
    measured now and kept. float32 only (the probes are float32); ``XFBENCH_EXACT_PROBES=off`` or
    ``XFBENCH_CALIBRATION=off`` leaves ``peaks`` as it is. The basis says how many layer ops were probed."""
    if dtype != "float32" or not exact_probes_enabled() or calibration_mode() == "off":
        return peaks
    keys = probe_keys(spec, batch, phase, dtype, backend, optimizer)
    if not keys:
        return peaks
    from xfbench.backends import get_backend

    prof = _profile_module(backend)
    threads = prof.threads()
    ckey = calibration_key(backend, device, threads, str(get_backend(backend).VERSION))
    store = _exact_kept.get((backend, device))
    if store is None:
        kept = load_kept(ckey, subdir=EXACT_SUBDIR) if calibration_mode() == "reuse" else None
        store = {str(k): float(v) for k, v in (kept or {}).get("raw", {}).items()}
        _exact_kept[(backend, device)] = store
    missing = [k for k in keys if k not in store and f"refused:{k}" not in store]
    if missing:
        raw = dict(_cached(backend, device)[1])
        found, refused = probes_in_fresh_process(backend, device, missing, raw.get("gemm:1x1x1", 0.0), threads)
        store.update(found)
        store.update({f"refused:{k}": 0.0 for k in refused})
        keep(ckey, store, subdir=EXACT_SUBDIR)
    exact = {k: store[k] for k in keys if k in store}
    note = f"; {len(exact)} of {len(keys)} layer ops from exact-shape probes"
    return replace(peaks, exact={**peaks.exact, **exact}, basis=peaks.basis + note)


def time_prediction_columns(config: Any, row: Mapping[str, Any], writer: Any = None) -> dict[str, Any]:
    """What a model row adds: ``time_predicted_s`` (the roofline of :mod:`analytics.steptime` with this run's
    peaks, measured on the first row of each backend and device, whose calibration rows then go to ``writer``),
    ``time_rel_error`` against the row's ``time_median_s`` and ``prediction_basis``. A calibration or
    prediction that fails leaves them out and says why in ``message``: the measured row is never lost; exact-shape
    probes that fail leave the layers to the tables, also said in ``message``."""
    probe_note = ""
    try:
        peaks = measured_peaks(config.backend, config.device, writer)
        try:
            peaks = with_exact_probes(
                peaks,
                config.backend,
                config.device,
                config.spec(),
                config.batch_size,
                config.phase,
                config.dtype,
                config.optimizer,
            )
        except Exception as exc:  # the tables still price every layer
            probe_note = f"exact-shape probes failed ({type(exc).__name__}: {exc}); layers priced from the tables"
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
    if probe_note:
        out["message"] = (str(row.get("message") or "") + "; " + probe_note.splitlines()[0][:300]).lstrip("; ")
    measured = row.get("time_median_s")
    if measured:
        out["time_rel_error"] = (pred.total_s - measured) / measured
    return out


__all__ = [
    "CHAIN",
    "GEMM_FLOP_CAP",
    "conv_probe_side",
    "gemm_rates",
    "measure",
    "measured_peaks",
    "proxy_shape",
    "time_prediction_columns",
    "with_exact_probes",
]
