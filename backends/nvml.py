"""GPU figures from NVIDIA's management library (NVML), independent of any deep-learning framework.

``pynvml`` (the ``nvidia-ml-py`` package) is imported lazily; every function returns ``None`` when it is
not installed, when NVML cannot start (no driver) or when the GPU does not exist, so callers never need a
GPU to import this module.

GPU indices are the frameworks' (CUDA's) indices: when ``CUDA_VISIBLE_DEVICES`` is set, ``gpu_index`` is
mapped through it to NVML's own numbering (which ignores that variable).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _nvml() -> Iterator[Any]:
    """Yields the initialised ``pynvml`` module, or ``None``; NVML is shut down afterwards."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...: no usable GPU
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # nothing useful to do if shutdown fails
            pass


def _handle(nvml: Any, gpu_index: int) -> Any:
    """NVML handle of CUDA device ``gpu_index`` (``None`` if there is no such device)."""
    if gpu_index < 0:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        if visible is not None:
            entries = [e.strip() for e in visible.split(",") if e.strip()]
            if gpu_index >= len(entries):
                return None
            entry = entries[gpu_index]
            if entry.isdigit():
                return nvml.nvmlDeviceGetHandleByIndex(int(entry))
            uuid = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
        return nvml.nvmlDeviceGetHandleByIndex(gpu_index)
    except Exception:  # NVMLError_InvalidArgument / NotFound: no such GPU
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_process_memory(gpu_index: int) -> int | None:
    """Bytes of GPU memory NVML attributes to *this* process on GPU ``gpu_index`` (CUDA context included).

    ``0`` when NVML lists no compute process on that GPU at all; ``None`` without NVML or the GPU, when the
    driver hides per-process figures, or when this process's id is not among those listed (in a container
    NVML reports host process ids, so the figure cannot be attributed).
    """
    with _nvml() as nvml:
        if nvml is None:
            return None
        handle = _handle(nvml, gpu_index)
        if handle is None:
            return None
        try:
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # NotSupported on some drivers / vGPUs
            return None
        if not procs:
            return 0
        pid = os.getpid()
        used = [p.usedGpuMemory for p in procs if p.pid == pid]
        if not used or any(u is None for u in used):
            return None
        return int(sum(used))


def nvml_device_info(gpu_index: int) -> dict[str, Any] | None:
    """``{"name", "total_memory" (bytes), "driver_version", "uuid"}`` of GPU ``gpu_index``, or ``None``."""
    with _nvml() as nvml:
        if nvml is None:
            return None
        handle = _handle(nvml, gpu_index)
        if handle is None:
            return None
        try:
            return {
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "total_memory": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                "driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
            }
        except Exception:  # a partially supported device: report nothing rather than guess
            return None
