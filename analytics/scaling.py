"""Data-parallel scaling model: ring all-reduce time, its fit from a microbenchmark, predicted step times.

Units: seconds, bytes, bytes per second (bandwidth), samples.

Ring all-reduce of ``nbytes`` over ``N`` workers (reduce-scatter then all-gather, ``2(N-1)`` steps, each
moving ``nbytes/N`` per worker):

    t = 2(N-1)/N * nbytes / bandwidth + 2(N-1) * latency        (t = 0 for N = 1)

A data-parallel training step on ``N`` workers is predicted as the per-worker compute time (measured on one
worker at the per-worker batch) plus one all-reduce of the gradients (``params * dtype bytes``), with no
overlap of the two (DDP overlaps them in buckets, so the prediction is an upper bound where it does).

Scaling modes:

* ``strong``: fixed global batch ``B``; each of ``N`` workers gets ``B/N``.
  speedup = T(1, B) / T(N, B/N), efficiency = speedup / N.
* ``weak``: fixed per-worker batch ``b``; ``N`` workers process ``N*b`` samples per step.
  speedup (per sample) = N * T(1, b) / T(N, b), efficiency = speedup / N = T(1, b) / T(N, b).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from xfbench.analytics.memory import DTYPE_BYTES
from xfbench.analytics.predict import count_params
from xfbench.analytics.spec import ModelSpec

SCALING_MODES = ("strong", "weak")


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


def ring_allreduce_time(nbytes: float, workers: int, bandwidth: float, latency: float) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` bytes over ``workers`` workers.

    ``bandwidth`` in bytes/s (``inf`` allowed: no transfer cost), ``latency`` in seconds per ring step.
    ``t = 2(N-1)/N * nbytes / bandwidth + 2(N-1) * latency``; 0 for one worker.
    """
    n = _check_workers(workers)
    if nbytes < 0 or bandwidth <= 0 or latency < 0:
        raise ValueError(f"need nbytes >= 0, bandwidth > 0, latency >= 0; got {nbytes}, {bandwidth}, {latency}")
    if n == 1:
        return 0.0
    return 2.0 * (n - 1) / n * float(nbytes) / float(bandwidth) + 2.0 * (n - 1) * float(latency)


def fit_allreduce(sizes: Sequence[float], times: Sequence[float], workers: int | Sequence[int]) -> tuple[float, float]:
    """``(bandwidth bytes/s, latency s)`` of the ring model fitted to measured all-reduce times.

    ``sizes`` in bytes, ``times`` in seconds, ``workers`` one count for all samples or one per sample
    (samples with one worker carry no information and are ignored). Least squares on the relative error
    (each equation divided by its measured time), so small and large messages weigh alike and the latency
    term is not swamped by the largest transfers. A negative latency is refitted as 0 (bandwidth only);
    a non-positive slope gives ``bandwidth = inf``. Raises ``ValueError`` without two usable samples.
    """
    s = np.asarray(sizes, dtype=float)
    t = np.asarray(times, dtype=float)
    n = np.broadcast_to(np.asarray(workers, dtype=float), s.shape).astype(float)
    if s.shape != t.shape or s.ndim != 1:
        raise ValueError(f"sizes and times must be 1-D of equal length, got {s.shape} and {t.shape}")
    use = (n > 1) & (t > 0) & np.isfinite(t)
    if use.sum() < 2:
        raise ValueError("fit_allreduce needs at least two samples with more than one worker and a positive time")
    s, t, n = s[use], t[use], n[use]
    x_bw = 2.0 * (n - 1) / n * s  # coefficient of 1/bandwidth
    x_lat = 2.0 * (n - 1)  # coefficient of latency
    a = np.stack([x_bw, x_lat], axis=1) / t[:, None]
    b = np.ones_like(t)
    inv_bw, lat = np.linalg.lstsq(a, b, rcond=None)[0]
    if lat < 0:
        lat = 0.0
        col = a[:, 0]
        inv_bw = float(col @ b / (col @ col)) if col @ col > 0 else 0.0
    if inv_bw <= 0:
        # Only latency explains the data: refit latency alone.
        col = a[:, 1]
        return math.inf, max(float(col @ b / (col @ col)), 0.0)
    return 1.0 / float(inv_bw), float(lat)


def gradient_bytes(spec: ModelSpec, framework: str = "torch", dtype: str = "float32") -> int:
    """Bytes of one gradient all-reduce: parameters (``framework``'s convention) times the dtype's bytes."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    return int(count_params(spec, framework)) * int(DTYPE_BYTES[dtype])


def predict_step_time(
    t1_per_sample: float,
    batch_per_worker: int,
    grad_bytes: float,
    workers: int,
    bandwidth: float,
    latency: float,
) -> float:
    """Predicted seconds of one data-parallel step: compute + one gradient all-reduce.

    ``t1_per_sample``: seconds per sample of a one-worker step (measured at N=1, ideally at this per-worker
    batch, so that fixed per-step costs are in it); compute = ``t1_per_sample * batch_per_worker``.
    """
    if t1_per_sample < 0 or batch_per_worker <= 0:
        raise ValueError(f"need t1_per_sample >= 0 and batch_per_worker > 0, got {t1_per_sample}, {batch_per_worker}")
    return float(t1_per_sample) * int(batch_per_worker) + ring_allreduce_time(grad_bytes, workers, bandwidth, latency)


def predict_dp_step(compute_s: float, overhead_s: float, grad_bytes: float, workers: int, bandwidth: float) -> float:
    """Predicted seconds of one data-parallel step from measured terms (issue 23):

    ``compute_s``: the same step without its all-reduce, timed while all ``workers`` compute (the cost of workers
    sharing cores and memory is in it); ``overhead_s``: the engine's per-step cost beyond compute (its
    synchronization, launch and one small all-reduce's latency: the overhead probe's data-parallel step minus its
    compute-only step); plus the bandwidth term of a ring all-reduce of ``grad_bytes``,
    ``2(N-1)/N * grad_bytes / bandwidth``. One worker: ``compute_s``.
    """
    n = _check_workers(workers)
    if compute_s < 0 or grad_bytes < 0 or bandwidth <= 0:
        raise ValueError(
            f"need compute_s >= 0, grad_bytes >= 0, bandwidth > 0; got {compute_s}, {grad_bytes}, {bandwidth}"
        )
    if n == 1:
        return float(compute_s)
    return float(compute_s) + max(0.0, float(overhead_s)) + 2.0 * (n - 1) / n * float(grad_bytes) / float(bandwidth)


def speedup(t1: float, tn: float, workers: int, mode: str) -> float:
    """Speedup of ``N`` workers over one from step times ``t1 = T(1)`` and ``tn = T(N)`` (seconds).

    ``strong``: ``t1 / tn`` (same global batch). ``weak``: ``N * t1 / tn`` (N times the samples per step).
    """
    n = _check_workers(workers)
    if mode not in SCALING_MODES:
        raise ValueError(f"scaling mode {mode!r}; allowed: {', '.join(SCALING_MODES)}")
    if t1 <= 0 or tn <= 0:
        raise ValueError(f"step times must be positive, got {t1}, {tn}")
    return float(t1) / float(tn) * (n if mode == "weak" else 1)


def efficiency(t1: float, tn: float, workers: int, mode: str) -> float:
    """Parallel efficiency ``speedup / N`` (1.0 = perfect scaling)."""
    return speedup(t1, tn, workers, mode) / _check_workers(workers)


def per_worker_batch(batch: int, workers: int, mode: str) -> int:
    """Samples per worker: ``batch / N`` for strong scaling (``batch`` = global batch, must divide),
    ``batch`` for weak scaling (``batch`` = per-worker batch). Raises ``ValueError`` otherwise."""
    n = _check_workers(workers)
    if mode == "weak":
        return int(batch)
    if mode != "strong":
        raise ValueError(f"scaling mode {mode!r}; allowed: {', '.join(SCALING_MODES)}")
    if batch % n:
        raise ValueError(f"global batch {batch} does not split evenly over {n} workers")
    return int(batch) // n


def prediction_basis(bandwidth: float, latency: float) -> str:
    """The ``prediction_basis`` column text: ``ring-model bw=1.23GB/s lat=45.6us``."""
    bw = "inf" if math.isinf(bandwidth) else f"{bandwidth / 1e9:.3g}"
    return f"ring-model bw={bw}GB/s lat={latency * 1e6:.3g}us"
