"""MXNet primitives for the matmul benchmarks (:mod:`benchmarks.matmul`). Importing this imports MXNet.

Same interface as :mod:`backends.torch.ops` (read its docstring). MXNet's engine is asynchronous on every
device, the CPU included, so each callable waits on its result (``wait_to_read``) or reads it to the host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xfbench.backends.base import DeviceUnavailable
from xfbench.backends.common import check_dtype

# Through the package, whose __init__ silences MXNet's import-time DeprecationWarnings.
from xfbench.backends.mxnet.device import list_devices, mx, resolve_device

NAME = "mxnet"
VERSION = mx.__version__


def _host(shape: tuple[int, ...], dtype: str, seed: int, scale: float = 1.0) -> mx.nd.NDArray:
    check_dtype(dtype, NAME)
    data = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(scale)
    return mx.nd.array(data, ctx=mx.cpu(), dtype=np.float32).astype(dtype)


def dtype_support(device: str, dtype: str) -> str | None:
    """``None`` if MXNet computes ``dtype`` on ``device``, else the reason (one line)."""
    check_dtype(dtype, NAME)
    ctx = resolve_device(device)
    if dtype == "bfloat16":
        return "MXNet 1.9 has no bfloat16 dot kernel (bfloat16 is limited to some oneDNN CPU operators)"
    if dtype == "float16" and ctx.device_type == "cpu":
        return "MXNet 1.9 has no float16 dot on the CPU"
    return None


def matmul_timer(
    m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", transfers: bool = False, seed: int = 0
) -> Callable[[], None]:
    """A callable computing (m x k) @ (k x n) on ``device`` and waiting for it.

    With ``transfers`` each call copies A and B to the device (``as_in_context``) and the result back
    (``asnumpy``, blocking); on the CPU those copies are no-ops.
    """
    ctx = resolve_device(device)
    ha, hb = _host((m, k), dtype, seed), _host((k, n), dtype, seed + 1)
    if transfers:

        def run_with_transfers() -> None:
            mx.nd.dot(ha.as_in_context(ctx), hb.as_in_context(ctx)).asnumpy()

        return run_with_transfers
    a, b = ha.as_in_context(ctx), hb.as_in_context(ctx)
    mx.nd.waitall()

    def run() -> None:
        mx.nd.dot(a, b).wait_to_read()

    return run


def copy_bandwidth_callable(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    """A callable copying a ``nbytes`` buffer to another on ``device`` (traffic: 2 x nbytes)."""
    ctx = resolve_device(device)
    src = mx.nd.ones(max(1, nbytes // 4), ctx=ctx, dtype=np.float32)
    dst = mx.nd.empty(src.shape, ctx=ctx, dtype=np.float32)
    mx.nd.waitall()

    def run() -> None:
        src.copyto(dst)
        dst.wait_to_read()

    return run


def host_transfer_callable(nbytes: int, device: str, direction: str = "h2d") -> Callable[[], None]:
    """A callable copying ``nbytes`` host->device (``"h2d"``) or device->host (``"d2h"``) on a GPU."""
    ctx = resolve_device(device)
    if ctx.device_type != "gpu":
        raise DeviceUnavailable(f"device {device!r} has no host link: it is the host")
    count = max(1, nbytes // 4)
    if direction == "h2d":
        host = mx.nd.ones(count, ctx=mx.cpu(), dtype=np.float32)
        on_dev = mx.nd.empty((count,), ctx=ctx, dtype=np.float32)
        mx.nd.waitall()

        def h2d() -> None:
            host.copyto(on_dev)
            on_dev.wait_to_read()

        return h2d
    if direction == "d2h":
        src = mx.nd.ones(count, ctx=ctx, dtype=np.float32)
        mx.nd.waitall()

        def d2h() -> None:
            src.asnumpy()

        return d2h
    raise ValueError(f"unknown direction {direction!r}; allowed: h2d, d2h")


def scalar_read_callable(device: str = "cpu") -> Callable[[], float]:
    """A callable reading one value held on ``device`` back to Python (``asscalar``: a blocking read)."""
    x = mx.nd.ones((1,), ctx=resolve_device(device), dtype=np.float32)
    return lambda: float(x.asscalar())


def trace_logging(
    device: str = "cpu", steps: int = 1000, size: int = 100, per_step_read: bool = True, seed: int = 0
) -> Callable[[], np.ndarray]:
    """D2L 5.6.5 ex3 (see :func:`backends.torch.ops.trace_logging`): log tr(M M^T) = sum(M * M) per step,
    read each step (``per_step_read``) or kept on the device and read once at the end.
    """
    ctx = resolve_device(device)
    scale = 1.0 / np.sqrt(size)
    a = _host((size, size), "float32", seed, scale).as_in_context(ctx)
    b = _host((size, size), "float32", seed + 1, scale).as_in_context(ctx)

    def run() -> np.ndarray:
        if per_step_read:
            log = []
            for _ in range(steps):
                m = mx.nd.dot(a, b)
                log.append(float(mx.nd.sum(m * m).asscalar()))
            return np.asarray(log)
        vals = []
        for _ in range(steps):
            m = mx.nd.dot(a, b)
            vals.append(mx.nd.sum(m * m))
        return np.asarray(mx.nd.concat(*vals, dim=0).asnumpy())

    return run


def two_device_matmul(
    size: int, devices: tuple[str, str], concurrent: bool, dtype: str = "float32"
) -> Callable[[], None]:
    """D2L 5.6.5 ex4: one size^3 matmul on each of two devices at once (``concurrent``; MXNet's engine
    queues both asynchronously), or both in sequence on ``devices[0]``.
    """
    c0, c1 = resolve_device(devices[0]), resolve_device(devices[1])
    second = c1 if concurrent else c0
    a, b = _host((size, size), dtype, 0).as_in_context(c0), _host((size, size), dtype, 1).as_in_context(c0)
    c, d = _host((size, size), dtype, 2).as_in_context(second), _host((size, size), dtype, 3).as_in_context(second)
    mx.nd.waitall()

    def run() -> None:
        x = mx.nd.dot(a, b)
        y = mx.nd.dot(c, d)
        x.wait_to_read()
        y.wait_to_read()

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
]
