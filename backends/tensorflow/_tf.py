"""Imports TensorFlow and Keras 3 quietly and checks that Keras runs on the TensorFlow backend."""

from __future__ import annotations

import os

# Before the import, so TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) stays out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
from xfbench.backends.common import prepare_framework_env  # framework-free

prepare_framework_env("tensorflow")  # e.g. TF_FORCE_GPU_ALLOW_GROWTH, before TensorFlow creates its GPU devices

import keras  # noqa: E402  (after the environment above)
import tensorflow as tf  # noqa: E402
from xfbench.backends.base import BackendUnavailable  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise BackendUnavailable(
        f"backend 'tensorflow' needs Keras on the TensorFlow backend, but KERAS_BACKEND={keras.backend.backend()!r}"
    )

__all__ = ["keras", "tf"]
