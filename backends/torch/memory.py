"""Allocator figures from PyTorch's CUDA caching allocator (the CPU allocator exposes none).

``is_oom_error`` is :func:`backends.common.is_oom_error`, the one classifier of every backend
(``torch.OutOfMemoryError``, ``MemoryError``, allocator messages).
"""

from __future__ import annotations

import gc

import torch
from xfbench.backends.base import MemoryStats
from xfbench.backends.common import is_oom_error
from xfbench.backends.torch.device import resolve_device


def memory_stats(device: str | torch.device) -> MemoryStats:
    """Bytes allocated / peak allocated / reserved / peak reserved on a GPU; all ``None`` on the CPU."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return MemoryStats()
    return MemoryStats(
        allocated=int(torch.cuda.memory_allocated(dev)),
        peak_allocated=int(torch.cuda.max_memory_allocated(dev)),
        reserved=int(torch.cuda.memory_reserved(dev)),
        peak_reserved=int(torch.cuda.max_memory_reserved(dev)),
    )


def reset_peak_memory(device: str | torch.device) -> None:
    """Restarts the peak figures of :func:`memory_stats` from the current usage (no-op on the CPU).

    ``torch.cuda.init()`` first (idempotent): resetting the statistics of a device whose caching allocator
    has not been initialised yet (no CUDA work in this process so far) is not guaranteed to work."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(dev)


def release_cached_memory(device: str | torch.device) -> None:
    """Returns the caching allocator's unused GPU blocks to the driver (``torch.cuda.empty_cache()``), after
    collecting garbage, so that a fresh process started next finds that memory free. No-op on the CPU."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        gc.collect()
        with torch.cuda.device(dev):
            torch.cuda.empty_cache()


__all__ = ["is_oom_error", "memory_stats", "release_cached_memory", "reset_peak_memory"]
