"""Devices as MXNet sees them: ``"cpu"``, ``"gpu"``/``"gpu:N"`` (``mx.gpu(N)``).

Importing this module applies the run's TF32 policy (:func:`apply_tf32_policy`) before any MXNet operation.
"""

from __future__ import annotations

import mxnet as mx
from xfbench.backends.base import DeviceUnavailable, parse_device
from xfbench.backends.common import effective_tf32, host_available_memory, prepare_framework_env, tf32_policy


def apply_tf32_policy(policy: str | None = None) -> str:
    """Applies the TF32 policy (default: the run's, :func:`backends.common.tf32_policy`); returns what the GPU
    will do.

    MXNet 1.9 has no TF32 switch: on Ampere and newer GPUs its float32 GEMMs and convolutions use TF32 by
    default (``mxnet.test_utils.effective_dtype`` says so), and the only way to turn that off is NVIDIA's
    process-wide ``NVIDIA_TF32_OVERRIDE=0``, which cuBLAS and cuDNN read when they initialise, i.e. at MXNet's
    first GPU operation. So ``off`` sets that variable (effective only before the first GPU operation of this
    process, and inherited by its subprocesses); ``on`` keeps MXNet's default and cannot undo an override
    already in force (then the result is ``off``)."""
    value = policy or tf32_policy()
    prepare_framework_env("mxnet", value)
    return effective_tf32(value)


def _num_gpus() -> int:
    # A CPU-only MXNet build answers 0; a CUDA build on a machine without a driver raises instead.
    try:
        return int(mx.context.num_gpus())
    except mx.base.MXNetError:
        return 0


def list_devices() -> list[str]:
    """``["cpu", "gpu:0", ...]``: the CPU, then every GPU MXNet can use."""
    return ["cpu", *(f"gpu:{i}" for i in range(_num_gpus()))]


def resolve_device(device: str | mx.Context) -> mx.Context:
    """The ``mx.Context`` for a device string; raises :class:`DeviceUnavailable` (one line) if unusable."""
    if isinstance(device, mx.Context):
        device = "cpu" if device.device_type == "cpu" else f"gpu:{device.device_id}"
    kind, index = parse_device(str(device))
    if kind == "cpu":
        return mx.cpu()
    count = _num_gpus()
    if count == 0:
        raise DeviceUnavailable(
            f"device {device!r} is not available with mxnet {mx.__version__}: no GPU (CPU-only build or no CUDA driver)"
        )
    if index >= count:
        raise DeviceUnavailable(
            f"device {device!r} is not available with mxnet: it sees {count} GPU(s) (gpu:0..gpu:{count - 1})"
        )
    return mx.gpu(index)


def synchronize(device: str | mx.Context) -> None:
    """Blocks until all queued work has finished.

    MXNet's engine is asynchronous on every device (the CPU included); ``mx.nd.waitall()`` waits for all
    of it, there is no per-device wait.
    """
    resolve_device(device)
    mx.nd.waitall()


def available_memory(device: str | mx.Context) -> int | None:
    """Free memory in bytes on ``device``: CUDA's free figure on a GPU (``mx.context.gpu_memory_info``), the
    host's (:func:`backends.common.host_available_memory`, ``None`` where unreadable) on the CPU."""
    ctx = resolve_device(device)
    if ctx.device_type == "gpu":
        free, _total = mx.context.gpu_memory_info(ctx.device_id)
        return int(free)
    return host_available_memory()


apply_tf32_policy()


__all__ = ["apply_tf32_policy", "available_memory", "list_devices", "resolve_device", "synchronize"]
