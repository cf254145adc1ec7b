"""TensorFlow primitives for the matmul benchmarks (:mod:`benchmarks.matmul`). Importing this imports TensorFlow.

Same interface as :mod:`backends.torch.ops` (read its docstring). Float32 matmuls on a GPU follow the run's
TF32 policy (``XFBENCH_TF32``, applied once per process by :func:`backends.tensorflow.device.apply_tf32_policy`,
the same for the model benchmarks): nothing here changes it.

Host->device copies: every timed copy starts from a *new* host tensor (:func:`fresh_device_copy`). Placing the
same host ``EagerTensor`` on a GPU again (``tf.identity(host)`` under ``/GPU``) is not a copy after the first
time: TensorFlow keeps the device copy as a mirror of that host handle and reuses it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xfbench.backends.base import DeviceUnavailable
from xfbench.backends.common import check_dtype, gpu_dtype_support
from xfbench.backends.tensorflow._tf import tf
from xfbench.backends.tensorflow.device import list_devices, resolve_device, synchronize

NAME = "tensorflow"
VERSION = tf.__version__


def _dtype(name: str) -> tf.DType:
    """TensorFlow's dtype for one of :data:`analytics.vocab.DTYPES` (vocab's error for another name)."""
    return tf.as_dtype(check_dtype(name, NAME))


def _host(shape: tuple[int, ...], dtype: str, seed: int, scale: float = 1.0) -> tf.Tensor:
    data = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(scale)
    with tf.device("/CPU:0"):
        return tf.cast(tf.constant(data), _dtype(dtype))


def _host_array(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Host data in ``dtype`` as a numpy array (bfloat16 through TensorFlow's numpy dtype), the same numbers as
    :func:`_host`."""
    return np.asarray(_host(shape, dtype, seed).numpy())


def fresh_device_copy(host: np.ndarray, tf_device: str) -> tf.Tensor:
    """A tensor on ``tf_device`` holding ``host``, copied from a host tensor made for this call.

    ``tf.constant`` under the device scope builds a new host tensor from the numpy array and copies it to the
    device, so every call pays one real host->device copy (no mirror of an earlier call can be reused)."""
    with tf.device(tf_device):
        return tf.constant(host)


def dtype_support(device: str, dtype: str) -> str | None:
    """``None`` if ``device`` computes ``dtype`` natively, else the reason (the CPU is judged by the driver)."""
    _dtype(dtype)
    tf_device = resolve_device(device)
    if tf_device.startswith("/GPU"):
        index = int(tf_device.split(":")[1])
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[index])
        return gpu_dtype_support(details.get("compute_capability", (0, 0)), dtype)
    return None


def matmul_timer(
    m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", transfers: bool = False, seed: int = 0
) -> Callable[[], None]:
    """A callable computing (m x k) @ (k x n) on ``device`` and synchronizing.

    With ``transfers`` each call copies A and B from host memory to the device (:func:`fresh_device_copy`: new
    tensors each call) and the result back (``.numpy()``, blocking); on the CPU no device copy is involved.
    """
    d = resolve_device(device)
    if transfers:
        na, nb = _host_array((m, k), dtype, seed), _host_array((k, n), dtype, seed + 1)

        def run_with_transfers() -> None:
            a, b = fresh_device_copy(na, d), fresh_device_copy(nb, d)
            with tf.device(d):
                c = tf.matmul(a, b)
            c.numpy()

        return run_with_transfers
    ha, hb = _host((m, k), dtype, seed), _host((k, n), dtype, seed + 1)
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
        host = _host_array((count,), "float32", 0)

        def h2d() -> None:
            fresh_device_copy(host, d)
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
    "fresh_device_copy",
    "host_transfer_callable",
    "list_devices",
    "matmul_timer",
    "scalar_read_callable",
    "trace_logging",
    "two_device_matmul",
]
