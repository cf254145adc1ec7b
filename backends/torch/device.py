"""Devices as PyTorch sees them: ``"cpu"``, ``"gpu"``/``"gpu:N"`` (CUDA device N).

Importing this module applies the run's TF32 policy (:func:`apply_tf32_policy`).
"""

from __future__ import annotations

import torch
from xfbench.backends.base import DeviceUnavailable, parse_device
from xfbench.backends.common import effective_tf32, host_available_memory, tf32_policy


def apply_tf32_policy(policy: str | None = None) -> str:
    """Applies the TF32 policy (default: the run's, :func:`backends.common.tf32_policy`) to cuBLAS matmuls
    and cuDNN convolutions; returns what the GPU will do (``NVIDIA_TF32_OVERRIDE=0`` forces ``off``).

    PyTorch's own defaults differ between the two (matmul off, cuDNN on), so both flags are always set.
    The flags are plain settings: this needs no GPU and may be called again at any time."""
    value = policy or tf32_policy()
    torch.backends.cuda.matmul.allow_tf32 = value == "on"
    torch.backends.cudnn.allow_tf32 = value == "on"
    return effective_tf32(value)


def list_devices() -> list[str]:
    """``["cpu", "gpu:0", ...]``: the CPU, then every CUDA device torch can use."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *(f"gpu:{i}" for i in range(gpus))]


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` for a device string; raises :class:`DeviceUnavailable` (one line) if unusable."""
    if isinstance(device, torch.device):
        device = "cpu" if device.type == "cpu" else f"gpu:{device.index or 0}"
    kind, index = parse_device(str(device))
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        raise DeviceUnavailable(
            f"device {device!r} is not available with torch {torch.__version__} ({build}): no CUDA GPU"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(
            f"device {device!r} is not available with torch: it sees {count} GPU(s) (gpu:0..gpu:{count - 1})"
        )
    return torch.device("cuda", index)


def synchronize(device: str | torch.device) -> None:
    """Blocks until all queued work on ``device`` has finished (a no-op on the CPU, which runs eagerly)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def available_memory(device: str | torch.device) -> int | None:
    """Free memory in bytes on ``device``: CUDA's free figure on a GPU (``torch.cuda.mem_get_info``), the host's
    (:func:`backends.common.host_available_memory`, ``None`` where unreadable) on the CPU."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    return host_available_memory()


apply_tf32_policy()


__all__ = ["apply_tf32_policy", "available_memory", "list_devices", "resolve_device", "synchronize"]
