"""Devices for the TensorFlow backend: ``"cpu"`` and ``"gpu:N"`` as TensorFlow numbers its physical GPUs."""

from __future__ import annotations

from xfbench.backends.base import DeviceUnavailable, parse_device
from xfbench.backends.tensorflow._tf import tf


def _gpu_count() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def list_devices() -> list[str]:
    """``["cpu", "gpu:0", ...]``: the CPU and every physical GPU TensorFlow sees."""
    return ["cpu"] + [f"gpu:{i}" for i in range(_gpu_count())]


def resolve_device(device: str) -> str:
    """TensorFlow's device name for a contract device string: ``"cpu"`` -> ``"/CPU:0"``, ``"gpu:1"`` -> ``"/GPU:1"``.

    Raises :class:`DeviceUnavailable` for a malformed string or a GPU TensorFlow does not see.
    """
    kind, index = parse_device(str(device))
    if kind == "cpu":
        return "/CPU:0"
    count = _gpu_count()
    if index >= count:
        seen = ", ".join(list_devices())
        raise DeviceUnavailable(f"device {device!r} is not available to TensorFlow on this machine; available: {seen}")
    return f"/GPU:{index}"


def synchronize(device: str) -> None:
    """Blocks until the work queued on ``device`` has finished.

    TensorFlow runs eagerly-dispatched GPU kernels asynchronously; ``tf.test.experimental.sync_devices``
    waits for all of them (it is a no-op on CPU). Reading a result with ``.numpy()`` is also a sync.
    """
    tf_device = resolve_device(device)
    if tf_device.startswith("/GPU"):
        sync = getattr(getattr(tf.test, "experimental", None), "sync_devices", None)
        if sync is not None:
            sync()
        else:  # older TensorFlow: a host read of a value computed on the device drains its stream
            with tf.device(tf_device):
                tf.constant(0.0).numpy()
