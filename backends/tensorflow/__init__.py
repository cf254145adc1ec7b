"""The TensorFlow / Keras 3 backend (contract: :class:`backends.base.ModelAdapter`).

Importing this package imports TensorFlow (with ``TF_CPP_MIN_LOG_LEVEL=2`` unless already set, so its C++
start-up messages stay quiet) and Keras 3 on the TensorFlow backend.
"""

from __future__ import annotations

from xfbench.backends.tensorflow._tf import keras, tf
from xfbench.backends.tensorflow.device import available_memory, list_devices, resolve_device, synchronize
from xfbench.backends.tensorflow.flops import ALIGNED_OPS, count_flops
from xfbench.backends.tensorflow.memory import is_oom_error, memory_stats, reset_peak_memory
from xfbench.backends.tensorflow.model import (
    build_model,
    count_params,
    get_weights,
    infer,
    make_train_step,
    set_weights,
    to_device,
    to_numpy,
)

NAME = "tensorflow"
VERSION = tf.__version__
KERAS_VERSION = keras.__version__

# Ledger terms (analytics.memory) that already exist once build_model returns.
# Keras creates gradients per step and optimizer slots in the first apply.
BUILT_LEDGER_TERMS: tuple[str, ...] = ()

__all__ = [
    "ALIGNED_OPS",
    "BUILT_LEDGER_TERMS",
    "KERAS_VERSION",
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
