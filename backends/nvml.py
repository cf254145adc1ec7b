"""GPU figures from NVIDIA's management library (NVML), independent of any deep-learning framework.

``pynvml`` (the ``nvidia-ml-py`` package) is imported lazily; every function returns ``None`` when it is
not installed, when NVML cannot start (no driver) or when the GPU does not exist, so callers never need a
GPU to import this module.

GPU indices are the frameworks' (CUDA's) indices. CUDA numbers the GPUs it lets a process see
(``CUDA_VISIBLE_DEVICES``) in its own order (``CUDA_DEVICE_ORDER``, by default fastest first), while NVML
numbers every GPU of the machine by PCI bus id, so an index is never passed through as it is: CUDA device
``gpu_index`` is looked up in the CUDA driver (``libcuda``, through ctypes, no framework) for its PCI bus id,
and NVML's handle is taken by that bus id. Without the driver call (or where NVML does not know that bus id),
the ``CUDA_VISIBLE_DEVICES`` entry is used: a UUID is looked up by UUID, a number as NVML's index.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# --- the CUDA driver (libcuda), for the CUDA -> PCI mapping and the GPU count a framework will see ------------

_LIBCUDA_NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def _load_libcuda() -> Any:
    """The CUDA driver library, or ``None`` where there is no NVIDIA driver."""
    for name in _LIBCUDA_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _cuda(loader: Callable[[], Any] | None = None) -> Any:
    """The initialised CUDA driver (``cuInit(0)`` succeeded; no context is created), or ``None``."""
    lib = (loader or _load_libcuda)()
    if lib is None:
        return None
    try:
        return lib if lib.cuInit(0) == 0 else None
    except (AttributeError, OSError):
        return None


def cuda_device_count(loader: Callable[[], Any] | None = None) -> int | None:
    """GPUs CUDA shows this process (``CUDA_VISIBLE_DEVICES`` applied), from ``cuDeviceGetCount``; ``None``
    without an NVIDIA driver."""
    lib = _cuda(loader)
    if lib is None:
        return None
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    return int(count.value)


def cuda_pci_bus_id(gpu_index: int, loader: Callable[[], Any] | None = None) -> str | None:
    """PCI bus id (``"0000:3B:00.0"``) of CUDA device ``gpu_index`` as this process numbers it; ``None`` without
    the driver or the device."""
    if gpu_index < 0:
        return None
    lib = _cuda(loader)
    if lib is None:
        return None
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), ctypes.c_int(gpu_index)) != 0:
        return None
    buf = ctypes.create_string_buffer(64)
    if lib.cuDeviceGetPCIBusId(buf, ctypes.c_int(len(buf)), dev) != 0:
        return None
    text = buf.value.decode("ascii", "replace").strip()
    return text or None


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
    """NVML handle of CUDA device ``gpu_index`` (``None`` if there is no such device): by PCI bus id from the CUDA
    driver, else through ``CUDA_VISIBLE_DEVICES`` (module docstring)."""
    if gpu_index < 0:
        return None
    bus_id = cuda_pci_bus_id(gpu_index)
    if bus_id is not None:
        for lookup in ("nvmlDeviceGetHandleByPciBusId_v2", "nvmlDeviceGetHandleByPciBusId"):
            try:
                return getattr(nvml, lookup)(bus_id)
            except Exception:  # older binding without _v2, or NVML does not know the id: try the next way
                continue
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


def _query(gpu_index: int, read: Callable[[Any, Any], Any]) -> Any:
    """``read(nvml, handle)`` for CUDA device ``gpu_index``; ``None`` without NVML or the GPU, or when NVML raises
    (a figure some drivers, vGPUs or partially supported devices do not give: report nothing rather than guess)."""
    with _nvml() as nvml:
        if nvml is None:
            return None
        handle = _handle(nvml, gpu_index)
        if handle is None:
            return None
        try:
            return read(nvml, handle)
        except Exception:  # NVMLError_NotSupported / NoPermission / ...
            return None


def _own_process_memory(nvml: Any, handle: Any) -> int | None:
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    if not procs:
        return None
    pid = os.getpid()
    used = [p.usedGpuMemory for p in procs if p.pid == pid]
    if not used or any(u is None for u in used):
        return None
    return int(sum(used))


def nvml_process_memory(gpu_index: int) -> int | None:
    """Bytes of GPU memory NVML attributes to *this* process on GPU ``gpu_index`` (CUDA context included).

    ``None`` when the figure cannot be attributed: without NVML or the GPU, when the driver hides per-process
    figures, when NVML lists no compute process on that GPU at all (an empty list is what a driver that hides
    processes, e.g. in a container, also returns, so it is not evidence of 0 bytes), or when this process's id
    is not among those listed (in a container NVML reports host process ids).
    """
    result: int | None = _query(gpu_index, _own_process_memory)
    return result


def nvml_free_memory(gpu_index: int) -> int | None:
    """Free bytes on GPU ``gpu_index`` (the whole device, as ``cudaMemGetInfo`` reports it), or ``None``."""
    free = _query(gpu_index, lambda nvml, handle: nvml.nvmlDeviceGetMemoryInfo(handle).free)
    return None if free is None else int(free)


def nvml_device_info(gpu_index: int) -> dict[str, Any] | None:
    """``{"name", "total_memory" (bytes), "driver_version", "uuid"}`` of GPU ``gpu_index``, or ``None``."""
    info: dict[str, Any] | None = _query(
        gpu_index,
        lambda nvml, handle: {
            "name": _text(nvml.nvmlDeviceGetName(handle)),
            "total_memory": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
            "driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
            "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        },
    )
    return info


def visible_gpu_count() -> int:
    """GPUs a framework in this process would see: CUDA's count (``CUDA_VISIBLE_DEVICES`` applied); without the
    CUDA driver's answer, NVML's count through ``CUDA_VISIBLE_DEVICES``; 0 without either."""
    count = cuda_device_count()
    if count is not None:
        return count
    with _nvml() as nvml:
        if nvml is None:
            return 0
        n = 0
        while _handle(nvml, n) is not None:
            n += 1
            if n >= 1024:  # a fake or broken library that answers every index
                break
        return n
