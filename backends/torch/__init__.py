"""The PyTorch backend (contract: :class:`backends.base.ModelAdapter`). Importing this module imports torch."""

from __future__ import annotations

import torch
from xfbench.backends.torch.device import available_memory, list_devices, resolve_device, synchronize
from xfbench.backends.torch.flops import ALIGNED_OPS, count_flops
from xfbench.backends.torch.memory import is_oom_error, memory_stats, reset_peak_memory
from xfbench.backends.torch.model import (
    TorchModel,
    build_model,
    count_params,
    get_weights,
    infer,
    make_train_step,
    set_weights,
    to_device,
    to_numpy,
)

NAME = "torch"
VERSION = torch.__version__

# Ledger terms (analytics.memory) that already exist once build_model returns.
# PyTorch allocates ``.grad`` in the first backward and optimizer state in the first step.
BUILT_LEDGER_TERMS: tuple[str, ...] = ()

__all__ = [
    "ALIGNED_OPS",
    "BUILT_LEDGER_TERMS",
    "NAME",
    "VERSION",
    "TorchModel",
    "available_memory",
    "build_model",
    "count_flops",
    "count_params",
    "get_weights",
    "infer",
    "is_oom_error",
    "list_devices",
    "make_train_step",
    "memory_stats",
    "reset_peak_memory",
    "resolve_device",
    "set_weights",
    "synchronize",
    "to_device",
    "to_numpy",
]
