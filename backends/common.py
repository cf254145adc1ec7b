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
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


__all__ = [
    "DEFAULT_TF32",
    "OOM_EXCEPTION_NAMES",
    "OOM_MESSAGES",
    "TF32_ENV",
    "TF32_POLICIES",
    "effective_tf32",
    "framework_env_defaults",
    "is_oom_error",
    "is_oom_message",
    "prepare_framework_env",
    "tf32_policy",
    "tf32_row_value",
]
