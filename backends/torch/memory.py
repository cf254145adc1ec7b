"""Allocator figures from PyTorch's CUDA caching allocator (the CPU allocator exposes none)."""

from __future__ import annotations

import torch
from xfbench.backends.base import MemoryStats
from xfbench.backends.torch.device import resolve_device

# Messages of allocation failures that older torch versions (or cuBLAS/cuDNN paths) raise as a plain
# RuntimeError instead of torch.cuda.OutOfMemoryError; the last one is the CPU allocator's.
_OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory")


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
    """Restarts the peak figures of :func:`memory_stats` from the current usage (no-op on the CPU)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (CUDA or host)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)
