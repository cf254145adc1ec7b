"""Devices as PyTorch sees them: ``"cpu"``, ``"gpu"``/``"gpu:N"`` (CUDA device N)."""

from __future__ import annotations

import torch
from xfbench.backends.base import DeviceUnavailable, parse_device


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
    """Free memory in bytes on ``device``: CUDA's free figure on a GPU, ``MemAvailable`` of the host on the CPU.

    ``None`` where the figure cannot be read (e.g. no ``/proc/meminfo``).
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file reports kB
    except OSError:
        pass
    return None
