"""Imports TensorFlow and Keras 3 quietly and checks that Keras runs on the TensorFlow backend."""

from __future__ import annotations

import os

# Before the import, so TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) stays out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import tensorflow as tf
from xfbench.backends.base import BackendUnavailable

if keras.backend.backend() != "tensorflow":
    raise BackendUnavailable(
        f"backend 'tensorflow' needs Keras on the TensorFlow backend, but KERAS_BACKEND={keras.backend.backend()!r}"
    )

__all__ = ["keras", "tf"]
