"""Policies shared by the three backends, framework-free (importing this imports no framework).

* **TF32** (:func:`tf32_policy`): one value per run, read from ``XFBENCH_TF32`` (``on`` or ``off``; default
  :data:`DEFAULT_TF32`). Each backend applies it through one function, ``apply_tf32_policy`` in its
  ``device`` module (torch: ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``;
  TensorFlow: ``tf.config.experimental.enable_tensor_float_32_execution``; MXNet: ``NVIDIA_TF32_OVERRIDE=0``
  before its first GPU operation, since MXNet has no switch of its own). Report rows record
  :func:`tf32_row_value`.
* **Environment before a framework starts** (:func:`prepare_framework_env`): TensorFlow grows its GPU memory
  on demand (``TF_FORCE_GPU_ALLOW_GROWTH=true``) instead of taking the whole GPU at its first operation, so
  the fresh memory-worker processes that run beside it still find GPU memory.
* **Out of memory** (:func:`is_oom_error`, :func:`is_oom_message`): the one classifier the backends, the memory
  worker, the matmul sweep and the exercises use.
* **Host memory** (:func:`host_available_memory`): the CPU half of every adapter's ``available_memory``
  (the kernel's ``MemAvailable`` estimate of memory a new allocation can get without swapping).
* **Weights** (:func:`check_weights`): the count and shapes of neutral-format weights against the spec's slots
  (:func:`analytics.weights.weight_slots`), with one message for every adapter's ``set_weights``.
* **Optimizers** (:func:`optimizer_settings`): learning rate, momentum and Adam's epsilon from
  :data:`analytics.vocab.OPTIMIZERS`, so the three adapters build the same update.
* **dtypes** (:func:`check_dtype`, :func:`gpu_dtype_support`): names are :mod:`analytics.vocab`'s (its message
  where a backend allows exactly vocab's set); which GPUs compute float16/bfloat16 natively, by CUDA compute
  capability (NVIDIA's: native half arithmetic from 5.3, bfloat16 tensor cores from 8.0, Ampere).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xfbench.analytics.vocab import ADAM_EPSILON, DTYPES, dtype_bytes, optimizer

if TYPE_CHECKING:
    from xfbench.analytics.spec import ModelSpec
    from xfbench.analytics.weights import WeightSlot

# --- TF32 --------------------------------------------------------------------------------------------------

TF32_ENV = "XFBENCH_TF32"
TF32_POLICIES = ("on", "off")
# "off": float32 means IEEE float32 in all three frameworks, so that they compute the same function.
DEFAULT_TF32 = "off"
# NVIDIA's process-wide switch read by cuBLAS and cuDNN: "0" disables TF32 whatever a framework asks.
NVIDIA_TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


def tf32_policy(environ: Mapping[str, str] | None = None) -> str:
    """The run's TF32 policy: ``XFBENCH_TF32`` (``on``/``off``, case-insensitive), else :data:`DEFAULT_TF32`.

    Raises ``ValueError`` (one line naming the value and what is allowed) for anything else."""
    env = os.environ if environ is None else environ
    raw = env.get(TF32_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TF32
    value = raw.strip().lower()
    if value not in TF32_POLICIES:
        raise ValueError(f"{TF32_ENV}={raw!r} is not a TF32 policy; allowed: {', '.join(TF32_POLICIES)}")
    return value


def effective_tf32(policy: str, environ: Mapping[str, str] | None = None) -> str:
    """What the GPU libraries will do under ``policy``: ``NVIDIA_TF32_OVERRIDE=0`` turns TF32 off regardless."""
    env = os.environ if environ is None else environ
    return "off" if env.get(NVIDIA_TF32_OVERRIDE, "").strip() == "0" else policy


def tf32_row_value(device: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The report's ``tf32`` cell for a row on ``device``: ``on``/``off`` on a GPU, ``""`` on the CPU (or none)."""
    if not device or not str(device).lower().startswith(("gpu", "cuda")):
        return ""
    return effective_tf32(tf32_policy(environ), environ)


# --- environment before a framework is imported ------------------------------------------------------------


def framework_env_defaults(backend: str, policy: str | None = None) -> dict[str, str]:
    """Variables ``backend`` must see before it initialises a GPU (applied with ``setdefault`` semantics
    except the TF32 switch, which the run's policy decides).

    TensorFlow: ``TF_FORCE_GPU_ALLOW_GROWTH=true`` (read when its GPU allocator is created, at its first GPU
    operation). MXNet: ``NVIDIA_TF32_OVERRIDE=0`` when the policy is ``off`` (MXNet has no TF32 switch; cuBLAS
    and cuDNN read this variable when they initialise).
    """
    value = policy or tf32_policy()
    out: dict[str, str] = {}
    if backend == "tensorflow":
        out["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    if backend == "mxnet" and value == "off":
        out[NVIDIA_TF32_OVERRIDE] = "0"
    return out


def prepare_framework_env(backend: str, policy: str | None = None) -> dict[str, str]:
    """Puts :func:`framework_env_defaults` into ``os.environ`` (a variable the user set is kept, except
    ``NVIDIA_TF32_OVERRIDE`` for an ``off`` policy). Returns what it set. Call before the framework starts."""
    changed: dict[str, str] = {}
    for key, value in framework_env_defaults(backend, policy).items():
        if key == NVIDIA_TF32_OVERRIDE:
            if os.environ.get(key) != value:
                os.environ[key] = changed[key] = value
        elif key not in os.environ:
            os.environ[key] = changed[key] = value
    return changed


# --- out of memory -------------------------------------------------------------------------------------------

# Exception classes that mean out-of-memory by their type, matched by name anywhere in the class's MRO so that
# no framework is imported: torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError), TensorFlow's
# ResourceExhaustedError, Python's MemoryError.
OOM_EXCEPTION_NAMES = ("OutOfMemoryError", "ResourceExhaustedError", "MemoryError")

# Lower-case fragments of allocation-failure messages, with where each comes from.
OOM_MESSAGES: tuple[tuple[str, str], ...] = (
    (
        "out of memory",
        "CUDA ('CUDA out of memory', cudaErrorMemoryAllocation), MXNet ('cudaMalloc retry failed: "
        "out of memory', 'Out of memory'), TensorFlow GPU allocator",
    ),
    ("oom when allocating", "TensorFlow ResourceExhaustedError: 'OOM when allocating tensor with shape ...'"),
    ("resourceexhausted", "TensorFlow error name in a worker's message"),
    ("resource exhausted", "TensorFlow / XLA status text"),
    ("cublas_status_alloc_failed", "cuBLAS workspace allocation"),
    ("cudnn_status_alloc_failed", "cuDNN workspace allocation"),
    ("can't allocate memory", "PyTorch DefaultCPUAllocator"),
    ("cannot allocate memory", "ENOMEM text (mmap, fork)"),
    ("not enough memory", "PyTorch CPU allocator on Windows"),
    ("bad_alloc", "C++ std::bad_alloc surfaced as text"),
    ("failed to allocate", "MXNet 'Failed to allocate CPU Memory', TensorFlow allocator logs"),
    ("memory allocation failed", "MXNet storage"),
    ("memoryerror", "Python MemoryError named in a worker's message"),
)

# Exception types whose *message* is trusted: the frameworks raise allocation failures as these (torch and MXNet:
# RuntimeError subclasses; TensorFlow: OpError subclasses). A ValueError that mentions memory is not an OOM.
_MESSAGE_TRUSTED = ("RuntimeError", "OpError", "MXNetError", "OSError")


def is_oom_message(text: str) -> bool:
    """Whether ``text`` (an error message) reports an allocation failure (:data:`OOM_MESSAGES`)."""
    low = text.lower()
    return any(fragment in low for fragment, _ in OOM_MESSAGES)


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure of any backend (host or GPU).

    True for an exception whose type is (or derives from) one named in :data:`OOM_EXCEPTION_NAMES`, and for a
    framework error (RuntimeError, TensorFlow OpError, MXNetError, OSError) whose message matches
    :data:`OOM_MESSAGES`; the exception it was raised from (``__cause__``) is checked the same way.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = _type_names(current)
        if names & set(OOM_EXCEPTION_NAMES):
            return True
        if names & set(_MESSAGE_TRUSTED) and is_oom_message(str(current)):
            return True
        current = current.__cause__
    return False


# --- host memory ---------------------------------------------------------------------------------------------

MEMINFO = "/proc/meminfo"


def probe_conv_padding(dims: Mapping[str, Any]) -> tuple[int, int, tuple[int, int]]:
    """``(height, width, (pad_h, pad_w))`` of an exact-shape conv probe (``analytics.steptime.probe_key``'s dims) in
    a framework whose convolution pads symmetrically (PyTorch, MXNet): symmetric pads go to the op; asymmetric ones
    become an input padded beforehand and no op padding, as the models pad with an op of their own."""
    t, b, left, r = dims["pads"]
    if t == b and left == r:
        return dims["height"], dims["width"], (t, left)
    return dims["height"] + t + b, dims["width"] + left + r, (0, 0)


def calibration_conv_dims(channels: int, side: int, filters: int) -> dict[str, Any]:
    """The exact-shape probe dims (``analytics.steptime.probe_key``'s) of the calibration table's convolution: a
    3x3 stride-1 convolution of a ``(1, channels, side, side)`` input into ``filters`` maps, padded 1 on every side
    (TensorFlow's ``SAME`` for that window)."""
    return {
        "batch": 1,
        "channels": channels,
        "height": side,
        "width": side,
        "filters": filters,
        "kernel": (3, 3),
        "stride": (1, 1),
        "pads": (1, 1, 1, 1),
    }


def host_available_memory(meminfo: str = MEMINFO) -> int | None:
    """Bytes of host memory available to a new allocation: ``MemAvailable`` of ``/proc/meminfo`` (reported in
    kB); ``None`` where it cannot be read (no such file, e.g. not Linux)."""
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- weights -------------------------------------------------------------------------------------------------


def check_weights(spec: ModelSpec, weights: Sequence[Any]) -> list[WeightSlot]:
    """The spec's weight slots (:func:`analytics.weights.weight_slots`) after checking ``weights`` against them:
    one array per slot, each of the slot's shape. Raises ``ValueError`` (one line naming the model, the slot
    and both shapes) otherwise."""
    import numpy as np
    from xfbench.analytics.weights import weight_slots  # imports numpy: not at this module's import

    slots = weight_slots(spec)
    if len(weights) != len(slots):
        raise ValueError(f"{spec.name}: expected {len(slots)} weight arrays, got {len(weights)}")
    for k, (slot, arr) in enumerate(zip(slots, weights)):
        shape = tuple(np.shape(arr))
        if shape != slot.shape:
            raise ValueError(
                f"{spec.name}: weight {k} ({slot.layer_name}.{slot.param}): expected shape {slot.shape}, got {shape}"
            )
    return slots


# --- optimizers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSettings:
    """What an adapter builds for one optimizer name: ``lr`` (the given one, else vocab's default), ``momentum``
    (0 for plain SGD and Adam) and Adam's ``epsilon`` (:data:`analytics.vocab.ADAM_EPSILON`)."""

    name: str
    lr: float
    momentum: float
    epsilon: float = ADAM_EPSILON


def optimizer_settings(name: str, lr: float | None = None) -> OptimizerSettings:
    """The settings of optimizer ``name`` (:data:`analytics.vocab.OPTIMIZERS`); raises ``ValueError`` (vocab's
    one line) for an unknown name."""
    opt = optimizer(name)
    return OptimizerSettings(opt.name, opt.lr if lr is None else float(lr), opt.momentum)


# --- dtypes --------------------------------------------------------------------------------------------------


def check_dtype(dtype: str, framework: str, allowed: Sequence[str] = DTYPES) -> str:
    """``dtype`` if it is one of ``allowed``, else ``ValueError`` (one line): vocab's message when ``allowed`` is
    vocab's :data:`~analytics.vocab.DTYPES`, else one naming ``framework`` and its allowed names."""
    if tuple(allowed) == DTYPES:
        dtype_bytes(dtype)  # raises vocab's "unknown dtype ...; allowed: ..."
    elif dtype not in allowed:
        raise ValueError(f"dtype {dtype!r} is not supported with {framework}; allowed: {', '.join(allowed)}")
    return dtype


def gpu_dtype_support(capability: tuple[int, int], dtype: str) -> str | None:
    """``None`` if a GPU of CUDA compute ``capability`` computes ``dtype`` natively, else the reason (one line)."""
    major, minor = capability
    if dtype == "bfloat16" and major < 8:
        return f"compute capability {major}.{minor} has no bfloat16 tensor cores (needs 8.0+)"
    if dtype == "float16" and (major, minor) < (5, 3):
        return f"compute capability {major}.{minor} has no native float16 (needs 5.3+)"
    return None


__all__ = [
    "DEFAULT_TF32",
    "MEMINFO",
    "OOM_EXCEPTION_NAMES",
    "OOM_MESSAGES",
    "TF32_ENV",
    "TF32_POLICIES",
    "OptimizerSettings",
    "calibration_conv_dims",
    "check_dtype",
    "check_weights",
    "effective_tf32",
    "framework_env_defaults",
    "gpu_dtype_support",
    "host_available_memory",
    "is_oom_error",
    "is_oom_message",
    "optimizer_settings",
    "prepare_framework_env",
    "probe_conv_padding",
    "tf32_policy",
    "tf32_row_value",
]
