"""The backend contract shared by ``backends.torch``, ``backends.tensorflow`` and ``backends.mxnet``.

Every backend package exposes the same functions (see README, "Backends"):

``list_devices() -> list[str]``
    Devices the framework sees: ``"cpu"``, then ``"gpu:0"``, ``"gpu:1"``, ...
``synchronize(device: str) -> None``
    Blocks until all queued work on ``device`` has finished.
``build_model(spec, device="cpu", dtype="float32", seed=0) -> model``
    The framework's own model object (``torch.nn.Module``, ``tf.keras.Model``, Gluon ``HybridBlock``).
``set_weights(model, weights) / get_weights(model) -> list[np.ndarray]``
    Neutral weight format (:mod:`analytics.weights`).
``count_params(model) -> int``
    Parameters counted from the framework's own objects.
``to_device(array, device, dtype=None) / to_numpy(tensor)``
    Floating arrays are cast to ``dtype`` (float32, float16, bfloat16); integer labels keep theirs.
``infer(model, x) -> tensor``
    Inference (eval mode, no gradient) on a batch already on the model's device.
``make_train_step(model, spec, optimizer="sgd", lr=None) -> step(x, y) -> loss tensor``
    One training step: forward, loss (:func:`analytics.weights.output_kind`), backward, update.
``count_flops(model, spec, batch_size, phase) -> FlopCount``
    The framework's own counter (``phase`` is ``"inference"`` or ``"training"``).
``memory_stats(device) -> MemoryStats / reset_peak_memory(device)``
    Allocator figures where the framework has them (``None`` where it has not).
``is_oom_error(exc) -> bool``
    Out of memory (host or GPU): every backend delegates to :func:`backends.common.is_oom_error`, one table.

Beside the package API, each backend's ``memory`` module has ``release_cached_memory(device)`` (give the GPU
memory the allocator keeps cached back to the driver, before a fresh process needs it; a no-op on the CPU and
for TensorFlow, which cannot) and its ``device`` module ``apply_tf32_policy(policy=None) -> "on" | "off"``
(the run's TF32 policy, :func:`backends.common.tf32_policy`, applied on import and by ``get_backend``).

Module constants: ``NAME`` (the backend's name), ``VERSION`` (the framework's version) and
``ALIGNED_OPS`` (the counter's op names that the analytic FLOP convention covers; ``None``: its total)
and ``BUILT_LEDGER_TERMS`` (memory-ledger terms the framework allocates when the model is built).

A device string is ``"cpu"``, ``"gpu"`` (= ``"gpu:0"``) or ``"gpu:N"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "adam": 0.001}
MOMENTUM = 0.9


class BackendUnavailable(RuntimeError):
    """The framework is not installed in this environment."""


class DeviceUnavailable(RuntimeError, ValueError):
    """The requested device is malformed, or does not exist for this framework on this machine."""


class NotSupported(NotImplementedError):
    """A feature the framework does not offer (message: '... is not supported with <framework>')."""


@dataclass(frozen=True)
class FlopCount:
    """FLOPs counted by a framework's own counter, for the whole batch.

    ``total`` sums the ops the counter supports; ``by_op`` splits it by the counter's op names;
    ``unsupported`` names the spec layers (``"3:LSTM"``) the counter could not count, so their work is
    *not* in ``total``. ``convention`` says what the counter counts (e.g. ``"2 per MAC, no bias"``).
    """

    counter: str
    convention: str
    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemoryStats:
    """Allocator figures in bytes; ``None`` where the framework does not expose them."""

    allocated: int | None = None
    peak_allocated: int | None = None
    reserved: int | None = None
    peak_reserved: int | None = None


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ``("cpu", 0)``; ``"gpu"`` -> ``("gpu", 0)``; ``"gpu:1"`` -> ``("gpu", 1)``.

    Raises :class:`DeviceUnavailable` (one line) for anything else."""
    text = device.strip().lower()
    if text in ("cpu", "cpu:0"):
        return ("cpu", 0)
    if text in ("gpu", "cuda"):
        return ("gpu", 0)
    for prefix in ("gpu:", "cuda:"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return ("gpu", int(text[len(prefix) :]))
    raise DeviceUnavailable(f"device {device!r} is not one of: cpu, gpu, gpu:N")
