"""The MXNet 1.9 (Gluon) backend. Contract: :class:`backends.base.ModelAdapter`.

MXNet 1.9.1 is the last release (the project is retired). It needs numpy < 1.24 (it uses ``np.bool``
and friends) and on import emits dozens of ``DeprecationWarning``s of its own (NEP 32 financial
functions in ``mxnet.numpy.fallback``, ``distutils`` ``LooseVersion``); they are silenced here, for the
import only, so that a ``-W error`` run does not fail inside MXNet.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet  # imported once here, under the filter

from xfbench.backends.mxnet.device import available_memory, list_devices, resolve_device, synchronize
from xfbench.backends.mxnet.flops import ALIGNED_OPS, count_flops
from xfbench.backends.mxnet.memory import is_oom_error, memory_stats, reset_peak_memory
from xfbench.backends.mxnet.model import (
    build_model,
    count_params,
    get_weights,
    infer,
    make_train_step,
    set_weights,
    to_device,
    to_numpy,
)

NAME = "mxnet"
VERSION = str(mxnet.__version__)

# Ledger terms (analytics.memory) that already exist once build_model returns.
# Gluon allocates every parameter's gradient buffer in ``initialize`` (grad_req='write').
BUILT_LEDGER_TERMS: tuple[str, ...] = ("gradients",)

__all__ = [
    "ALIGNED_OPS",
    "BUILT_LEDGER_TERMS",
    "NAME",
    "VERSION",
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
