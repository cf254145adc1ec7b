"""The contracts every backend (``backends.torch``, ``backends.tensorflow``, ``backends.mxnet``) implements.

A backend is a package of modules; each module the benchmarks import satisfies one ``typing.Protocol`` below
(:data:`CONTRACTS`). The Protocols are written from what the adapters expose and what ``benchmarks/`` calls;
``tests/test_contracts.py`` checks every installed backend against them (names, parameters, defaults), and
mypy checks the modules against them statically (the ``TYPE_CHECKING`` block at the end). The members are
written as methods because a module satisfies a Protocol through its functions (``self`` is not part of the
call); module constants are read-only properties.

* ``backends.<fw>`` (the package): :class:`ModelAdapter`; the model benchmarks, parity, exercises, the memory
  worker.
* ``backends.<fw>.device``: :class:`DeviceModule`; ``get_backend`` and parity (``apply_tf32_policy``).
* ``backends.<fw>.memory``: :class:`MemoryModule`; the model benchmarks (``release_cached_memory``).
* ``backends.<fw>.ops``: :class:`MatmulOps`; ``xfbench matmul`` and the step-time calibration.
* ``backends.<fw>.profile``: :class:`Profiler`; ``xfbench time`` and the step-time calibration.
* ``backends.<fw>.distributed``: :class:`DistributedWorker`; ``xfbench scale`` (a fresh process per job).

Where a framework offers more, an optional Protocol names it (:data:`OPTIONAL_CONTRACTS`: torch's
``two_stream_matmul``); callers test for it with ``hasattr``.

Conventions of every contract: a device string is ``"cpu"``, ``"gpu"`` (= ``"gpu:0"``) or ``"gpu:N"``
(:func:`parse_device`); dtype, phase and optimizer names are :mod:`analytics.vocab`'s; weights are the neutral
format of :mod:`analytics.weights`; errors are one line naming the bad value and what is allowed
(:class:`DeviceUnavailable`, :class:`NotSupported`, ``ValueError``). Out-of-memory classification, host memory,
weight validation, the optimizer table and the TF32 policy are shared in :mod:`backends.common`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from xfbench.analytics.vocab import normalize_device

if TYPE_CHECKING:
    import numpy as np
    from xfbench.analytics.spec import ModelSpec


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


# Framework spellings accepted beside the vocabulary's (analytics.vocab.normalize_device): cuda, cuda:N, cpu:0.
_FRAMEWORK_SPELLINGS = {"cuda": "gpu", "cpu:0": "cpu"}


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ``("cpu", 0)``; ``"gpu"`` -> ``("gpu", 0)``; ``"gpu:1"`` -> ``("gpu", 1)``.

    :func:`analytics.vocab.normalize_device`, which also accepts the framework spellings ``cuda``, ``cuda:N``
    and ``cpu:0``. Raises :class:`DeviceUnavailable` (one line) for anything else."""
    text = device.strip().lower()
    text = _FRAMEWORK_SPELLINGS.get(text, "gpu:" + text[5:] if text.startswith("cuda:") else text)
    try:
        name = normalize_device(text)
    except ValueError:
        raise DeviceUnavailable(f"device {device!r} is not one of: cpu, gpu, gpu:N") from None
    return ("cpu", 0) if name == "cpu" else ("gpu", int(name.split(":")[1]))


# --- the contracts -------------------------------------------------------------------------------------------


@runtime_checkable
class Devices(Protocol):
    """The devices a framework sees (part of :class:`ModelAdapter` and :class:`DeviceModule`)."""

    def list_devices(self) -> list[str]:
        """``["cpu", "gpu:0", ...]``: the CPU, then every GPU the framework can use."""
        ...

    def resolve_device(self, device: str) -> Any:
        """The framework's device object for a device string; :class:`DeviceUnavailable` if unusable."""
        ...

    def synchronize(self, device: str) -> None:
        """Blocks until all queued work on ``device`` has finished."""
        ...

    def available_memory(self, device: str) -> int | None:
        """Free bytes on ``device``: the driver's free figure on a GPU, the host's
        (:func:`backends.common.host_available_memory`) on the CPU; ``None`` where it cannot be read."""
        ...


@runtime_checkable
class Memory(Protocol):
    """Allocator figures and the OOM test (part of :class:`ModelAdapter` and :class:`MemoryModule`)."""

    def memory_stats(self, device: str) -> MemoryStats:
        """Allocator figures where the framework has them (``None`` fields where it has not)."""
        ...

    def reset_peak_memory(self, device: str) -> None:
        """Restarts the peak figures of :meth:`memory_stats` (a no-op where there are none)."""
        ...

    def is_oom_error(self, exc: BaseException) -> bool:
        """Out of memory (host or GPU): :func:`backends.common.is_oom_error`, the one table."""
        ...


@runtime_checkable
class ModelAdapter(Devices, Memory, Protocol):
    """The package ``backends.<fw>``: builds a :class:`~analytics.spec.ModelSpec` as the framework's model and
    runs it. Models are the framework's own objects (``torch.nn.Module``, ``keras.Model``, Gluon ``HybridBlock``);
    tensors are the framework's, on the model's device."""

    @property
    def NAME(self) -> str:
        """The backend's name (``torch``, ``tensorflow``, ``mxnet``)."""
        ...

    @property
    def VERSION(self) -> str:
        """The framework's version."""
        ...

    @property
    def ALIGNED_OPS(self) -> tuple[str, ...] | None:
        """The FLOP counter's op names the analytic convention covers; ``None``: its total."""
        ...

    @property
    def BUILT_LEDGER_TERMS(self) -> tuple[str, ...]:
        """Memory-ledger terms (:mod:`analytics.memory`) the framework allocates when the model is built."""
        ...

    def build_model(
        self, spec: ModelSpec, device: str = "cpu", dtype: str = "float32", seed: int = 0, init: bool = True
    ) -> Any:
        """The spec as the framework's model on ``device`` in ``dtype``, initialised from ``seed``;
        ``init=False``: its parameters are allocated but not drawn (the caller loads weights with
        :meth:`set_weights` next; VGG-16's draw took MXNet 7 s)."""
        ...

    def set_weights(self, model: Any, weights: Sequence[np.ndarray]) -> None:
        """Loads neutral-format weights (validated by :func:`backends.common.check_weights`)."""
        ...

    def get_weights(self, model: Any) -> list[np.ndarray]:
        """The model's weights in the neutral format."""
        ...

    def count_params(self, model: Any) -> int:
        """Parameters counted from the framework's own objects."""
        ...

    def to_device(self, array: Any, device: str, dtype: str | None = None) -> Any:
        """A tensor on ``device``; floating data cast to ``dtype`` if given, integer labels keep theirs."""
        ...

    def to_numpy(self, tensor: Any) -> np.ndarray:
        """A host numpy copy of ``tensor`` (waits for it)."""
        ...

    def infer(self, model: Any, x: Any) -> Any:
        """Inference (eval mode, no gradient) on a batch already on the model's device; not synchronized."""
        ...

    def make_train_step(
        self, model: Any, spec: ModelSpec, optimizer: str = "sgd", lr: float | None = None
    ) -> Callable[[Any, Any], Any]:
        """``step(x, y) -> loss``: forward, loss (:func:`analytics.weights.output_kind`), backward, one update
        of ``optimizer`` (:data:`analytics.vocab.OPTIMIZERS`: lr, momentum, Adam's epsilon)."""
        ...

    def count_flops(self, model: Any, spec: ModelSpec, batch_size: int, phase: str = "inference") -> FlopCount:
        """The framework's own FLOP counter for a batch (``phase``: :data:`analytics.vocab.PHASES`)."""
        ...


@runtime_checkable
class DeviceModule(Devices, Protocol):
    """``backends.<fw>.device``: the devices, and the run's TF32 policy (applied on import and by ``get_backend``)."""

    def apply_tf32_policy(self, policy: str | None = None) -> str:
        """Applies ``policy`` (default: :func:`backends.common.tf32_policy`); returns what the GPU will do."""
        ...


@runtime_checkable
class MemoryModule(Memory, Protocol):
    """``backends.<fw>.memory``: allocator figures, and giving cached GPU memory back before a fresh process."""

    def release_cached_memory(self, device: str) -> None:
        """Returns the allocator's unused GPU blocks to the driver (a no-op on the CPU and for TensorFlow)."""
        ...


@runtime_checkable
class MatmulOps(Protocol):
    """``backends.<fw>.ops``: the primitives ``xfbench matmul`` times. Every ``*_callable``/``*_timer`` prepares
    its data once and returns a zero-argument callable that does the operation and waits for it."""

    @property
    def NAME(self) -> str: ...

    @property
    def VERSION(self) -> str: ...

    def list_devices(self) -> list[str]: ...

    def dtype_support(self, device: str, dtype: str) -> str | None:
        """``None`` if ``device`` computes ``dtype`` natively, else the reason (one line)."""
        ...

    def matmul_timer(
        self,
        m: int,
        k: int,
        n: int,
        dtype: str = "float32",
        device: str = "cpu",
        transfers: bool = False,
        seed: int = 0,
    ) -> Callable[[], None]:
        """(m x k) @ (k x n) on ``device``; with ``transfers`` the operands go host -> device and back each call."""
        ...

    def copy_bandwidth_callable(self, nbytes: int, device: str = "cpu") -> Callable[[], None]:
        """A device-to-device copy of ``nbytes`` (traffic 2 x nbytes)."""
        ...

    def host_transfer_callable(self, nbytes: int, device: str, direction: str = "h2d") -> Callable[[], None]:
        """A host -> device (``h2d``) or device -> host (``d2h``) copy of ``nbytes`` on a GPU."""
        ...

    def scalar_read_callable(self, device: str = "cpu") -> Callable[[], float]:
        """A blocking read of one value held on ``device``."""
        ...

    def trace_logging(
        self, device: str = "cpu", steps: int = 1000, size: int = 100, per_step_read: bool = True, seed: int = 0
    ) -> Callable[[], np.ndarray]:
        """D2L 5.6.5 ex3: ``steps`` matmuls logging tr(M M^T), read per step or once; returns the log."""
        ...

    def two_device_matmul(
        self, size: int, devices: tuple[str, str], concurrent: bool, dtype: str = "float32"
    ) -> Callable[[], None]:
        """D2L 5.6.5 ex4: one matmul on each of two devices at once (``concurrent``) or both on the first."""
        ...


@runtime_checkable
class StreamOps(Protocol):
    """Optional beside :class:`MatmulOps` (torch): two matmuls on two streams of one GPU."""

    def two_stream_matmul(self, size: int, device: str, concurrent: bool, dtype: str = "float32") -> Callable[[], None]:
        """D2L 5.6.5 ex4 on one GPU: two matmuls on two streams at once (``concurrent``) or in sequence."""
        ...


@runtime_checkable
class Profiler(Protocol):
    """``backends.<fw>.profile``: per-layer measured time from the framework's profiler, and the step-time
    calibration probes (each a synchronized zero-argument callable; see ``backends.torch.profile``)."""

    @property
    def NAME(self) -> str: ...

    def threads(self) -> int:
        """Intra-op threads the framework uses."""
        ...

    def dispatch_callable(self, n_ops: int, device: str = "cpu") -> Callable[[], None]: ...

    def elementwise_callable(self, elements: int, device: str = "cpu") -> Callable[[], None]: ...

    def softmax_callable(self, elements: int, device: str = "cpu") -> Callable[[], None]: ...

    def layernorm_callable(self, elements: int, device: str = "cpu") -> Callable[[], None]: ...

    def gelu_callable(self, elements: int, device: str = "cpu", approximate: bool = False) -> Callable[[], None]: ...

    def pool_callable(self, device: str = "cpu") -> tuple[Callable[[], None], int]: ...

    def transpose_callable(self, elements: int, device: str = "cpu") -> Callable[[], None]: ...

    def conv_callable(
        self, kind: str, channels: int, side: int, filters: int, device: str = "cpu"
    ) -> Callable[[], None]: ...

    def layer_probe_callable(
        self, op: str, dims: Mapping[str, Any], kind: str, device: str = "cpu"
    ) -> Callable[[], None]:
        """The model's own ``conv`` or ``dense`` op at one layer's exact shape (``analytics.steptime.probe_key``'s
        ``dims``): ``forward``, ``backward`` (+ input and weight gradients) or ``backward_first`` (+ weight
        gradients only); each call returns the op's output."""
        ...

    def batchnorm_callable(self, kind: str, channels: int, side: int, device: str = "cpu") -> Callable[[], None]:
        """A training-mode BatchNorm of a ``(1, channels, side, side)`` input: ``forward`` or ``training``."""
        ...

    def stream_callable(self, nbytes: int, device: str = "cpu") -> tuple[Callable[[], None], int]: ...

    def alloc_callable(self, nbytes: int, device: str = "cpu") -> Callable[[], None]: ...

    def profile_layers(self, work: Any, steps: int = 3) -> dict[tuple[int, str], float]:
        """Measured seconds per (spec layer, phase) of one step of a prepared workload."""
        ...


@runtime_checkable
class DistributedWorker(Protocol):
    """``backends.<fw>.distributed``: run as ``python -m xfbench.backends.<fw>.distributed --job JOB.json
    --out RESULT.json`` plus ``--nprocs N`` (torch) or ``--workers N``; the job and result JSON are defined in
    :mod:`backends.distributed_loop`."""

    @property
    def THREADS_NOTE(self) -> str:
        """How many threads each CPU worker computes with (recorded in the result)."""
        ...

    def main(self, argv: list[str] | None = None) -> int:
        """Reads the job, runs it, writes the result; returns the exit status."""
        ...

    def node_processes(self, job_path: str, out_path: str, node: Any, python: str) -> list[Any]:
        """The processes one node of a multi-node job starts (:class:`backends.distributed_loop.NodeProcess`
        for this :class:`~backends.distributed_loop.Node`), on the framework's own multi-node engine; importing
        the module imports no framework."""
        ...


# Submodule of ``backends.<fw>`` ("" is the package itself) -> the contracts it satisfies.
CONTRACTS: dict[str, tuple[type, ...]] = {
    "": (ModelAdapter,),
    "device": (DeviceModule,),
    "memory": (MemoryModule,),
    "ops": (MatmulOps,),
    "profile": (Profiler,),
    "distributed": (DistributedWorker,),
}
# Contracts a backend's submodule may also satisfy (callers check with hasattr).
OPTIONAL_CONTRACTS: dict[str, tuple[type, ...]] = {"ops": (StreamOps,)}


if TYPE_CHECKING:  # mypy checks each adapter module against its contracts here; never executed
    from xfbench.backends import mxnet as _mx
    from xfbench.backends import tensorflow as _tensorflow
    from xfbench.backends import torch as _torch
    from xfbench.backends.mxnet import device as _mx_device
    from xfbench.backends.mxnet import distributed as _mx_distributed
    from xfbench.backends.mxnet import memory as _mx_memory
    from xfbench.backends.mxnet import ops as _mx_ops
    from xfbench.backends.mxnet import profile as _mx_profile
    from xfbench.backends.tensorflow import device as _tf_device
    from xfbench.backends.tensorflow import distributed as _tf_distributed
    from xfbench.backends.tensorflow import memory as _tf_memory
    from xfbench.backends.tensorflow import ops as _tf_ops
    from xfbench.backends.tensorflow import profile as _tf_profile
    from xfbench.backends.torch import device as _torch_device
    from xfbench.backends.torch import distributed as _torch_distributed
    from xfbench.backends.torch import memory as _torch_memory
    from xfbench.backends.torch import ops as _torch_ops
    from xfbench.backends.torch import profile as _torch_profile

    # ModelAdapter and MemoryModule are not checked here: their signatures name this module's dataclasses
    # (MemoryStats, FlopCount), which tox's mypy run (this file as ``backends.base``, the adapters through the
    # installed ``xfbench.backends``) sees under two module names; tests/test_contracts.py checks them.
    _ADAPTER_MODULES = (_torch, _tensorflow, _mx, _torch_memory, _tf_memory, _mx_memory)
    _DEVICES: tuple[DeviceModule, ...] = (_torch_device, _tf_device, _mx_device)
    _OPS: tuple[MatmulOps, ...] = (_torch_ops, _tf_ops, _mx_ops)
    _STREAM_OPS: StreamOps = _torch_ops
    _PROFILERS: tuple[Profiler, ...] = (_torch_profile, _tf_profile, _mx_profile)
    _WORKERS: tuple[DistributedWorker, ...] = (_torch_distributed, _tf_distributed, _mx_distributed)


__all__ = [
    "CONTRACTS",
    "OPTIONAL_CONTRACTS",
    "BackendUnavailable",
    "DeviceModule",
    "DeviceUnavailable",
    "Devices",
    "DistributedWorker",
    "FlopCount",
    "MatmulOps",
    "Memory",
    "MemoryModule",
    "MemoryStats",
    "ModelAdapter",
    "NotSupported",
    "Profiler",
    "StreamOps",
    "parse_device",
]
