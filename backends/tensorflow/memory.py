"""GPU allocator figures from TensorFlow's BFC allocator (``tf.config.experimental.get_memory_info``)."""

from __future__ import annotations

from xfbench.backends.base import MemoryStats
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


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (``ResourceExhaustedError`` or host ``MemoryError``)."""
    if isinstance(exc, (tf.errors.ResourceExhaustedError, MemoryError)):
        return True
    return "out of memory" in str(exc).lower() and isinstance(exc, tf.errors.OpError)
