"""TensorFlow primitives for the matmul benchmarks (:mod:`benchmarks.matmul`). Importing this imports TensorFlow.

Same interface as :mod:`backends.torch.ops` (read its docstring). Float32 matmuls on a GPU run with TF32
turned off (TensorFlow turns it on by default on Ampere and later), so "float32" means the same arithmetic
in every framework.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xfbench.backends.base import DeviceUnavailable
from xfbench.backends.tensorflow._tf import tf
from xfbench.backends.tensorflow.device import list_devices, resolve_device, synchronize

NAME = "tensorflow"
VERSION = tf.__version__
_DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}


def _dtype(name: str) -> tf.DType:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _host(shape: tuple[int, ...], dtype: str, seed: int, scale: float = 1.0) -> tf.Tensor:
    data = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(scale)
    with tf.device("/CPU:0"):
        return tf.cast(tf.constant(data), _dtype(dtype))


def _strict_fp32(tf_device: str, dtype: str) -> None:
    if dtype == "float32" and tf_device.startswith("/GPU"):
        tf.config.experimental.enable_tensor_float_32_execution(False)


def dtype_support(device: str, dtype: str) -> str | None:
    """``None`` if ``device`` computes ``dtype`` natively, else the reason (the CPU is judged by the driver)."""
    _dtype(dtype)
    tf_device = resolve_device(device)
    if tf_device.startswith("/GPU"):
        index = int(tf_device.split(":")[1])
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[index])
        major, minor = details.get("compute_capability", (0, 0))
        if dtype == "bfloat16" and major < 8:
            return f"compute capability {major}.{minor} has no bfloat16 tensor cores (needs 8.0+)"
        if dtype == "float16" and (major, minor) < (5, 3):
            return f"compute capability {major}.{minor} has no native float16 (needs 5.3+)"
    return None


def matmul_timer(
    m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", transfers: bool = False, seed: int = 0
) -> Callable[[], None]:
    """A callable computing (m x k) @ (k x n) on ``device`` and synchronizing.

    With ``transfers`` each call copies A and B to the device (``tf.identity`` placed there) and the result
    back (``.numpy()``, blocking); on the CPU those copies are no-ops.
    """
    d = resolve_device(device)
    _strict_fp32(d, dtype)
    ha, hb = _host((m, k), dtype, seed), _host((k, n), dtype, seed + 1)
    if transfers:

        def run_with_transfers() -> None:
            with tf.device(d):
                c = tf.matmul(tf.identity(ha), tf.identity(hb))
            c.numpy()

        return run_with_transfers
    with tf.device(d):
        a, b = tf.identity(ha), tf.identity(hb)

    def run() -> None:
        with tf.device(d):
            tf.matmul(a, b)
        synchronize(device)

    return run


def copy_bandwidth_callable(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    """A callable reading a ``nbytes`` buffer on ``device`` and writing its negation to another
    (traffic: 2 x nbytes). ``tf.identity`` would alias instead of copying.
    """
    d = resolve_device(device)
    with tf.device(d):
        src = tf.ones(max(1, nbytes // 4), dtype=tf.float32)

    def run() -> None:
        with tf.device(d):
            tf.negative(src)
        synchronize(device)

    return run


def host_transfer_callable(nbytes: int, device: str, direction: str = "h2d") -> Callable[[], None]:
    """A callable copying ``nbytes`` host->device (``"h2d"``) or device->host (``"d2h"``) on a GPU."""
    d = resolve_device(device)
    if not d.startswith("/GPU"):
        raise DeviceUnavailable(f"device {device!r} has no host link: it is the host")
    count = max(1, nbytes // 4)
    if direction == "h2d":
        host = _host((count,), "float32", 0)

        def h2d() -> None:
            with tf.device(d):
                tf.identity(host)
            synchronize(device)

        return h2d
    if direction == "d2h":
        with tf.device(d):
            on_dev = tf.ones(count, dtype=tf.float32)

        def d2h() -> None:
            on_dev.numpy()

        return d2h
    raise ValueError(f"unknown direction {direction!r}; allowed: h2d, d2h")


def scalar_read_callable(device: str = "cpu") -> Callable[[], float]:
    """A callable reading one value held on ``device`` back to Python (``.numpy()``: a blocking read)."""
    with tf.device(resolve_device(device)):
        x = tf.ones((), dtype=tf.float32)
    return lambda: float(x.numpy())


def trace_logging(
    device: str = "cpu", steps: int = 1000, size: int = 100, per_step_read: bool = True, seed: int = 0
) -> Callable[[], np.ndarray]:
    """D2L 5.6.5 ex3 (see :func:`backends.torch.ops.trace_logging`): log tr(M M^T) = sum(M * M) per step,
    read each step (``per_step_read``) or kept on the device and read once at the end.
    """
    d = resolve_device(device)
    scale = 1.0 / np.sqrt(size)
    with tf.device(d):
        a = tf.identity(_host((size, size), "float32", seed, scale))
        b = tf.identity(_host((size, size), "float32", seed + 1, scale))

    def run() -> np.ndarray:
        with tf.device(d):
            if per_step_read:
                log = []
                for _ in range(steps):
                    m = tf.matmul(a, b)
                    log.append(float(tf.reduce_sum(m * m).numpy()))
                return np.asarray(log)
            vals = []
            for _ in range(steps):
                m = tf.matmul(a, b)
                vals.append(tf.reduce_sum(m * m))
            return np.asarray(tf.stack(vals).numpy())

    return run


def two_device_matmul(
    size: int, devices: tuple[str, str], concurrent: bool, dtype: str = "float32"
) -> Callable[[], None]:
    """D2L 5.6.5 ex4: one size^3 matmul on each of two devices at once (``concurrent``; GPU kernels are
    queued asynchronously), or both in sequence on ``devices[0]``.
    """
    d0, d1 = resolve_device(devices[0]), resolve_device(devices[1])
    second = d1 if concurrent else d0
    _strict_fp32(d0, dtype)
    with tf.device(d0):
        a, b = tf.identity(_host((size, size), dtype, 0)), tf.identity(_host((size, size), dtype, 1))
    with tf.device(second):
        c, d = tf.identity(_host((size, size), dtype, 2)), tf.identity(_host((size, size), dtype, 3))

    def run() -> None:
        with tf.device(d0):
            tf.matmul(a, b)
        with tf.device(second):
            tf.matmul(c, d)
        synchronize(devices[0])
        synchronize(devices[1])

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
