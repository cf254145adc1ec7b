"""PyTorch primitives for the matmul benchmarks (:mod:`benchmarks.matmul`). Importing this imports torch.

Every ``*_callable``/``*_timer`` function prepares its data once and returns a zero-argument callable that
does the operation and waits for it to finish (device synchronized), so timing the callable times the
operation. Host data is pageable CPU memory (what ordinary code has), the same for the bandwidth probe and
the matmul transfers, so the transfer model and the measurement see the same link. Same interface in
``backends.tensorflow.ops`` and ``backends.mxnet.ops`` (the contract :class:`backends.base.MatmulOps`; the
two-stream exercise, :class:`backends.base.StreamOps`, is torch's only). dtype names are
:data:`analytics.vocab.DTYPES`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from xfbench.backends.base import DeviceUnavailable
from xfbench.backends.common import check_dtype, gpu_dtype_support
from xfbench.backends.torch.device import list_devices, resolve_device, synchronize
from xfbench.backends.torch.model import DTYPES

NAME = "torch"
VERSION = torch.__version__


def _dtype(name: str) -> torch.dtype:
    return DTYPES[check_dtype(name, NAME)]


def _host(shape: tuple[int, ...], dtype: str, seed: int) -> torch.Tensor:
    # numpy's generator so that every framework multiplies the same numbers.
    data = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return torch.from_numpy(data).to(_dtype(dtype))


def dtype_support(device: str, dtype: str) -> str | None:
    """``None`` if ``device`` computes ``dtype`` natively in torch, else the reason (one line).

    The CPU is not judged here (torch emulates fp16/bf16 there; the driver checks the CPU's flags).
    """
    _dtype(dtype)
    dev = resolve_device(device)
    if dev.type == "cuda":
        return gpu_dtype_support(torch.cuda.get_device_capability(dev), dtype)
    return None


def matmul_timer(
    m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", transfers: bool = False, seed: int = 0
) -> Callable[[], None]:
    """A callable computing (m x k) @ (k x n) on ``device`` and synchronizing.

    With ``transfers`` each call copies A and B from the host to the device and the result back (``.cpu()``
    blocks until the product is done); on the CPU those copies are no-ops.
    """
    dev = resolve_device(device)
    ha, hb = _host((m, k), dtype, seed), _host((k, n), dtype, seed + 1)
    if transfers:

        def run_with_transfers() -> None:
            a, b = ha.to(dev), hb.to(dev)
            (a @ b).cpu()

        return run_with_transfers
    a, b = ha.to(dev), hb.to(dev)

    def run() -> None:
        torch.matmul(a, b)
        synchronize(dev)

    return run


def copy_bandwidth_callable(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    """A callable copying a ``nbytes`` buffer to another on ``device`` (traffic: 2 x nbytes, read + write)."""
    dev = resolve_device(device)
    src = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)

    def run() -> None:
        dst.copy_(src)
        synchronize(dev)

    return run


def host_transfer_callable(nbytes: int, device: str, direction: str = "h2d") -> Callable[[], None]:
    """A callable copying ``nbytes`` host->device (``"h2d"``) or device->host (``"d2h"``) on a GPU."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        raise DeviceUnavailable(f"device {device!r} has no host link: it is the host")
    count = max(1, nbytes // 4)
    if direction == "h2d":
        host = torch.ones(count, dtype=torch.float32)

        def h2d() -> None:
            host.to(dev)
            synchronize(dev)

        return h2d
    if direction == "d2h":
        on_dev = torch.ones(count, dtype=torch.float32, device=dev)

        def d2h() -> None:
            on_dev.cpu()

        return d2h
    raise ValueError(f"unknown direction {direction!r}; allowed: h2d, d2h")


def scalar_read_callable(device: str = "cpu") -> Callable[[], float]:
    """A callable reading one value computed on ``device`` back to Python (``.item()``: a blocking read)."""
    dev = resolve_device(device)
    x = torch.ones((), dtype=torch.float32, device=dev)
    return lambda: float(x.item())


def trace_logging(
    device: str = "cpu", steps: int = 1000, size: int = 100, per_step_read: bool = True, seed: int = 0
) -> Callable[[], np.ndarray]:
    """D2L 5.6.5 ex3: ``steps`` products M = A @ B of ``size`` x ``size`` matrices, logging tr(M M^T) each time.

    tr(M M^T) is computed as sum(M * M) (the same number, without a second matmul). With ``per_step_read``
    each step reads its value to the host (one blocking device->host read per step); otherwise the values
    stay on the device and one read at the end fetches the whole log. The callable returns the log.
    """
    dev = resolve_device(device)
    scale = 1.0 / np.sqrt(size)
    a = (_host((size, size), "float32", seed) * scale).to(dev)
    b = (_host((size, size), "float32", seed + 1) * scale).to(dev)

    def run() -> np.ndarray:
        if per_step_read:
            log = []
            for _ in range(steps):
                m = a @ b
                log.append(float((m * m).sum().item()))
            return np.asarray(log)
        vals = []
        for _ in range(steps):
            m = a @ b
            vals.append((m * m).sum())
        return torch.stack(vals).cpu().numpy()

    return run


def _operands(size: int, dtype: str, dev: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _host((size, size), dtype, seed).to(dev), _host((size, size), dtype, seed + 1).to(dev)


def two_stream_matmul(size: int, device: str, concurrent: bool, dtype: str = "float32") -> Callable[[], None]:
    """D2L 5.6.5 ex4 on one GPU: two independent size^3 matmuls on two CUDA streams at once (``concurrent``),
    or one after the other on the default stream.
    """
    dev = resolve_device(device)
    if dev.type != "cuda":
        raise DeviceUnavailable(f"device {device!r} has no CUDA streams")
    a, b = _operands(size, dtype, dev, 0)
    c, d = _operands(size, dtype, dev, 2)
    s1, s2 = torch.cuda.Stream(dev), torch.cuda.Stream(dev)

    def run() -> None:
        if concurrent:
            current = torch.cuda.current_stream(dev)
            s1.wait_stream(current)
            s2.wait_stream(current)
            with torch.cuda.stream(s1):
                a @ b
            with torch.cuda.stream(s2):
                c @ d
        else:
            a @ b
            c @ d
        torch.cuda.synchronize(dev)

    return run


def two_device_matmul(
    size: int, devices: tuple[str, str], concurrent: bool, dtype: str = "float32"
) -> Callable[[], None]:
    """D2L 5.6.5 ex4: one size^3 matmul on each of two devices at the same time (``concurrent``; CUDA work is
    queued asynchronously, so both run while the host waits), or both in sequence on ``devices[0]``.
    """
    d0, d1 = resolve_device(devices[0]), resolve_device(devices[1])
    a, b = _operands(size, dtype, d0, 0)
    c, d = _operands(size, dtype, d1 if concurrent else d0, 2)

    def run() -> None:
        a @ b
        c @ d
        synchronize(d0)
        synchronize(d1)

    return run


__all__ = [
    "NAME",
    "VERSION",
    "copy_bandwidth_callable",
    "dtype_support",
    "host_transfer_callable",
    "list_devices",
    "matmul_timer",
    "scalar_read_callable",
    "trace_logging",
    "two_device_matmul",
    "two_stream_matmul",
]
