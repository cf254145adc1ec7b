"""Devices for the TensorFlow backend: ``"cpu"`` and ``"gpu:N"`` as TensorFlow numbers its physical GPUs.

Importing this module (which every import of the TensorFlow backend does, before any TensorFlow operation)
sets ``TF_FORCE_GPU_ALLOW_GROWTH=true`` unless the variable is already set: TensorFlow reads it when it creates
its GPU allocator (at its first GPU operation) and then grows its GPU memory on demand, instead of reserving
nearly all of it, which would leave nothing to the fresh memory-worker processes of the benchmark suite.
It also applies the run's TF32 policy (:func:`apply_tf32_policy`).
"""

from __future__ import annotations

from xfbench.backends.base import DeviceUnavailable, parse_device
from xfbench.backends.common import effective_tf32, host_available_memory, prepare_framework_env, tf32_policy
from xfbench.backends.nvml import nvml_free_memory

prepare_framework_env("tensorflow")

from xfbench.backends.tensorflow._tf import tf  # noqa: E402  (after the environment is prepared)


def apply_tf32_policy(policy: str | None = None) -> str:
    """Applies the TF32 policy (default: the run's, :func:`backends.common.tf32_policy`) with
    ``tf.config.experimental.enable_tensor_float_32_execution``; returns what the GPU will do
    (``NVIDIA_TF32_OVERRIDE=0`` forces ``off``). TensorFlow's own default is on (Ampere and newer GPUs).
    A runtime setting: it needs no GPU and may be called again at any time."""
    value = policy or tf32_policy()
    tf.config.experimental.enable_tensor_float_32_execution(value == "on")
    return effective_tf32(value)


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


def available_memory(device: str) -> int | None:
    """Free memory in bytes on ``device``: NVML's free figure for the GPU on a GPU (TensorFlow reports only what
    its own allocator holds; ``None`` without ``nvidia-ml-py``, the ``gpu`` extra), the host's
    (:func:`backends.common.host_available_memory`, ``None`` where unreadable) on the CPU.

    TensorFlow numbers its physical GPUs as CUDA does, so ``gpu:N`` is CUDA device N (:mod:`backends.nvml`)."""
    tf_device = resolve_device(device)
    if tf_device.startswith("/GPU"):
        return nvml_free_memory(int(tf_device.split(":")[1]))
    return host_available_memory()


apply_tf32_policy()


__all__ = ["apply_tf32_policy", "available_memory", "list_devices", "resolve_device", "synchronize"]
