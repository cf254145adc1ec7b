"""The project's vocabulary, in one place: every layer (benchmarks, backends, analytics, reports) imports it.

Framework-free. What lives here is what a user types or a report stores as a word: dtype names and their
widths, phases, optimizers (learning rate, momentum, state slots per parameter), backend names and their
aliases, device strings and what ``all`` means. The frameworks' own objects for these words (``torch.float16``,
``keras.optimizers.Adam``) stay in each backend, keyed by the names defined here.

Errors are ``ValueError`` with one line naming the bad value and what is allowed; the CLI turns them into
``xfbench: error:`` lines (exit 2), pytest into a usage error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- dtypes -------------------------------------------------------------------------------------------------
#: Bytes of one element of every type the suite names: the model dtypes, the matmul benchmark's (float64, tf32: a
#: float32 in memory) and the non-model tensors of the simulated step (int64 indices and labels, bool masks).
ELEMENT_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "tf32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "bool": 1,
}
#: The dtypes a model runs in.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
DTYPE_BYTES: dict[str, int] = {name: ELEMENT_BYTES[name] for name in DTYPES}
#: The dtypes of the matmul benchmark and the device roofline.
MATMUL_DTYPES: tuple[str, ...] = ("float64", "float32", "tf32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"


def dtype_bytes(dtype: str) -> int:
    """Width of one element of ``dtype`` in bytes."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPE_BYTES[dtype]


# --- phases -------------------------------------------------------------------------------------------------
PHASES: tuple[str, ...] = ("inference", "training")


def check_phase(phase: str) -> str:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; allowed: {', '.join(PHASES)}")
    return phase


# --- optimizers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Optimizer:
    """One optimizer as every backend builds it: default learning rate, momentum, and how many tensors of
    state it keeps per parameter (``slots``; the memory ledger's ``optimizer_state`` term)."""

    name: str
    lr: float
    slots: int
    momentum: float = 0.0


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer("sgd", lr=0.01, slots=0),
    "momentum": Optimizer("momentum", lr=0.01, slots=1, momentum=0.9),
    "adam": Optimizer("adam", lr=0.001, slots=2),
}
DEFAULT_OPTIMIZER = "sgd"
OPTIMIZER_SLOTS: dict[str, int] = {k: o.slots for k, o in OPTIMIZERS.items()}
DEFAULT_LR: dict[str, float] = {k: o.lr for k, o in OPTIMIZERS.items()}
MOMENTUM = OPTIMIZERS["momentum"].momentum
ADAM_EPSILON = 1e-8  # torch's and MXNet's default; Keras (default 1e-7) is given this one so the steps agree


def optimizer(name: str) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


# --- backends -----------------------------------------------------------------------------------------------
BACKENDS: tuple[str, ...] = ("torch", "tensorflow", "mxnet")
BACKEND_ALIASES: dict[str, str] = {
    "pytorch": "torch",
    "tf": "tensorflow",
    "keras": "tensorflow",
    "mx": "mxnet",
    "np": "numpy",
}


def canonical_backend(name: str, allowed: tuple[str, ...] = BACKENDS) -> str:
    """A backend's canonical name from a user's spelling (case-insensitive, aliases accepted)."""
    key = BACKEND_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in allowed:
        raise ValueError(f"unknown backend {name!r}; allowed: {', '.join(allowed)}")
    return key


# --- devices ------------------------------------------------------------------------------------------------
_DEVICE = re.compile(r"^(cpu|gpu|gpu:\d+)$")
DEVICE_HELP = "cpu, gpu, gpu:N or all"


def normalize_device(device: str) -> str:
    """``cpu`` or ``gpu:N`` (``gpu`` means ``gpu:0``)."""
    d = device.strip().lower()
    if not _DEVICE.match(d):
        raise ValueError(f"unknown device {device!r}; allowed: cpu, gpu, gpu:N")
    return "gpu:0" if d == "gpu" else d


def device_kind(device: str) -> str:
    """``cpu`` or ``gpu``."""
    return "cpu" if device == "cpu" else "gpu"


def parse_devices(text: str | None, default: str = "cpu") -> list[str]:
    """``--device``: a comma-separated list of ``cpu``, ``gpu``, ``gpu:N``, or ``all``.

    Returns normalized devices (``gpu`` -> ``gpu:0``), in order, without repeats; ``["all"]`` stays as is and
    means, everywhere: every device the backend sees (:func:`expand_devices`)."""
    items = [t.strip().lower() for t in (text or default).split(",") if t.strip()]
    if items == ["all"]:
        return ["all"]
    if not items:
        raise ValueError(f"no device given; allowed: {DEVICE_HELP}")
    out: list[str] = []
    for item in items:
        if item == "all":
            raise ValueError(f"'all' cannot be combined with other devices ({text!r}); allowed: {DEVICE_HELP}")
        d = normalize_device(item) if _DEVICE.match(item) else None
        if d is None:
            raise ValueError(f"unknown device {item!r}; allowed: {DEVICE_HELP}")
        if d not in out:
            out.append(d)
    return out


def expand_devices(requested: list[str], visible: list[str]) -> list[str]:
    """``all`` -> every visible device (the CPU, then each GPU); explicit devices are kept as requested (a
    requested device that is not visible is the caller's skip, with its reason)."""
    return list(visible) if requested == ["all"] else list(requested)
