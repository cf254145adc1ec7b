"""GPU allocator figures from TensorFlow's BFC allocator (``tf.config.experimental.get_memory_info``).

``is_oom_error`` is :func:`backends.common.is_oom_error`, the one classifier of every backend
(``ResourceExhaustedError`` 'OOM when allocating ...', ``MemoryError``, allocator messages).
"""

from __future__ import annotations

from xfbench.backends.base import MemoryStats
from xfbench.backends.common import is_oom_error
from xfbench.backends.tensorflow._tf import tf
from xfbench.backends.tensorflow.device import resolve_device


def _gpu_name(device: str) -> str | None:
    """``"GPU:N"`` for a GPU device, ``None`` for the CPU (TensorFlow keeps no CPU allocator figures)."""
    tf_device = resolve_device(device)
    return tf_device.lstrip("/") if tf_device.startswith("/GPU") else None


def memory_stats(device: str) -> MemoryStats:
    """Bytes in use (``allocated``) and the peak since the last reset (``peak_allocated``) on a GPU.

    TensorFlow does not report reserved (pooled) bytes, so ``reserved``/``peak_reserved`` are ``None``;
    on the CPU every field is ``None``.
    """
    name = _gpu_name(device)
    if name is None:
        return MemoryStats()
    info = tf.config.experimental.get_memory_info(name)
    return MemoryStats(allocated=int(info["current"]), peak_allocated=int(info["peak"]))


def reset_peak_memory(device: str) -> None:
    """Resets the GPU's peak figure to the current usage (nothing to reset on the CPU)."""
    name = _gpu_name(device)
    if name is not None:
        tf.config.experimental.reset_memory_stats(name)


def release_cached_memory(device: str) -> None:
    """No-op (the device is still checked): TensorFlow's BFC allocator never returns GPU memory to the driver.
    With ``TF_FORCE_GPU_ALLOW_GROWTH=true`` (set by :mod:`backends.tensorflow.device`) it has only taken what
    its work so far needed, so a fresh process still finds the rest free."""
    resolve_device(device)


__all__ = ["is_oom_error", "memory_stats", "release_cached_memory", "reset_peak_memory"]
