"""Memory figures for MXNet. Its storage pool exposes no allocated/peak counters through the Python API.

On a GPU, ``mx.context.gpu_memory_info(N)`` gives CUDA's ``(free, total)`` for the whole device, so
``reserved`` is ``total - free``: everything in use on the GPU (MXNet's pooled memory, the CUDA context,
and any other process). There are no peak figures, so :func:`reset_peak_memory` is a no-op.
"""

from __future__ import annotations

import mxnet as mx
from xfbench.backends.base import MemoryStats
from xfbench.backends.mxnet.device import resolve_device

# MXNet reports allocation failures as MXNetError; the message names the failed CUDA call.
_OOM_MARKERS = ("out of memory", "cudamalloc", "cuda_error_out_of_memory", "failed to allocate")


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


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure: ``MemoryError``, or an ``MXNetError`` naming one."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, mx.base.MXNetError):
        text = str(exc).lower()
        return any(m in text for m in _OOM_MARKERS)
    return False
