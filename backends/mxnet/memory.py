"""Memory figures for MXNet. Its storage pool exposes no allocated/peak counters through the Python API.

On a GPU, ``mx.context.gpu_memory_info(N)`` gives CUDA's ``(free, total)`` for the whole device, so
``reserved`` is ``total - free``: everything in use on the GPU (MXNet's pooled memory, the CUDA context,
and any other process). There are no peak figures, so :func:`reset_peak_memory` is a no-op.

``is_oom_error`` is :func:`backends.common.is_oom_error`, the one classifier of every backend (``MemoryError``, an
``MXNetError`` such as 'cudaMalloc retry failed: out of memory').
"""

from __future__ import annotations

import mxnet as mx
from xfbench.backends.base import MemoryStats
from xfbench.backends.common import is_oom_error
from xfbench.backends.mxnet.device import resolve_device


def memory_stats(device: str | mx.Context) -> MemoryStats:
    """``reserved`` = GPU total - free in bytes (device-wide); every other figure ``None``; all ``None`` on the CPU."""
    ctx = resolve_device(device)
    if ctx.device_type != "gpu":
        return MemoryStats()
    free, total = mx.context.gpu_memory_info(ctx.device_id)
    return MemoryStats(reserved=int(total) - int(free))


def reset_peak_memory(device: str | mx.Context) -> None:
    """No-op: MXNet keeps no peak-memory counters to reset (the device is still checked)."""
    resolve_device(device)


def release_cached_memory(device: str | mx.Context) -> None:
    """Returns the unused blocks of MXNet's GPU memory pool to the driver (``Context.empty_cache``), so that a
    fresh process started next finds that memory free. No-op on the CPU."""
    ctx = resolve_device(device)
    if ctx.device_type == "gpu":
        mx.nd.waitall()
        ctx.empty_cache()


__all__ = ["is_oom_error", "memory_stats", "release_cached_memory", "reset_peak_memory"]
