"""The neutral weight format and deterministic test data.

Weights are one numpy array per parameter, in spec order, with this layout:

=================  ==========================================  ===========================
layer              arrays                                      layout
=================  ==========================================  ===========================
Conv2D             kernel, bias (if ``use_bias``)              kernel ``(out, in, kh, kw)`` (OIHW)
Dense              kernel, bias (if ``use_bias``)              kernel ``(in, out)``; after a Flatten
                                                               the ``in`` axis is in (C, H, W) order
LSTM               kernel, recurrent_kernel, bias              ``(in, 4h)``, ``(h, 4h)``, ``(4h,)``;
                                                               gates in order i, f, g, o; one bias
                                                               (PyTorch/MXNet's two biases are summed
                                                               on export, put in ``bias_ih`` on import)
Embedding          embeddings                                  ``(vocab, dim)``
BatchNorm          gamma, beta, moving_mean, moving_variance   ``(C,)`` each; the last two are
                                                               state (not trainable), carried so
                                                               that running statistics travel
=================  ==========================================  ===========================

All other layers have no weights. Each type declares its slots (``weight_slots``, ``analytics/layers/``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from xfbench.analytics.shapes import infer_shapes, layer_input_shapes
from xfbench.analytics.spec import Activation, Dense, Embedding, ModelSpec


@dataclass(frozen=True)
class WeightSlot:
    layer: int
    layer_name: str
    param: str  # "kernel", "bias", "recurrent_kernel", "embeddings", "gamma", ...
    shape: tuple[int, ...]
    trainable: bool = True  # False: state the step updates without a gradient (BatchNorm's running statistics)


def weight_slots(spec: ModelSpec) -> list[WeightSlot]:
    """The neutral weight list's entries, in order."""
    slots: list[WeightSlot] = []
    for i, (layer, in_shapes) in enumerate(zip(spec.layers, layer_input_shapes(spec))):
        lname = layer.label if layer.label != layer.type else f"{layer.type.lower()}{i}"
        slots.extend(
            WeightSlot(i, lname, param, shape, trainable) for param, shape, trainable in layer.weight_slots(in_shapes)
        )
    return slots


# The last weights made, by (spec, seed, dtype): a VGG-16's 138M values take about 0.8 s to draw, and one benchmark
# configuration drew them up to six times (the timed build, TensorFlow's build_model, the memory worker and each
# of its forked repeats, which inherit this cache instead). One entry bounds what it holds to one model.
_LAST: list[tuple[tuple[ModelSpec, int, str], list[np.ndarray]]] = []


def clear_weight_cache() -> None:
    """Drops the cached weights (a forked memory repeat frees them once its model holds a copy, as a fresh
    process would)."""
    _LAST.clear()


def random_weights(spec: ModelSpec, seed: int = 0, dtype: str = "float32") -> list[np.ndarray]:
    """Random weights in the neutral format, scaled (He/Glorot-like) so activations stay O(1).

    Deterministic in (spec, seed, dtype); the last result is cached and returned again as a new list of the
    same arrays, which callers copy into their framework and must not modify."""
    key = (spec, seed, dtype)
    if _LAST and _LAST[0][0] == key:
        return list(_LAST[0][1])
    out = _draw_weights(spec, seed, dtype)
    _LAST[:] = [(key, out)]
    return list(out)


def _draw_weights(spec: ModelSpec, seed: int, dtype: str) -> list[np.ndarray]:
    """Uniform draws with the variance of the named scheme: kernels He (variance 2 / fan_in), embeddings unit
    variance, biases in [-0.1, 0.1). Drawn in float32 (float64 for a float64 model) with numpy's uniform
    generator, about 4x faster than a float64 normal draw and cast (VGG-16's 138M values: 0.8 s against 3.9 s
    on the project's 2-core CPU), which the benchmark suite pays per process and model."""
    rng = np.random.default_rng(seed)
    draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    out: list[np.ndarray] = []
    for slot in weight_slots(spec):
        if slot.param in ("gamma", "moving_variance"):  # positive scales: uniform [0.5, 1.5)
            out.append((rng.random(slot.shape, dtype=draw) + 0.5).astype(dtype, copy=False))
            continue
        if slot.param in ("bias", "beta", "moving_mean") or slot.param.endswith("_bias"):
            limit = 0.1
        elif slot.param == "embeddings":
            limit = math.sqrt(3.0)
        else:
            fan_in = math.prod(slot.shape[1:]) if len(slot.shape) == 4 else slot.shape[0]
            limit = math.sqrt(3.0 * 2.0 / fan_in)  # uniform(-a, a) has variance a^2 / 3
        arr = rng.random(slot.shape, dtype=draw)
        arr *= 2.0 * limit
        arr -= limit
        out.append(arr if arr.dtype == np.dtype(dtype) else arr.astype(dtype))
    return out


def output_kind(spec: ModelSpec) -> str:
    """How a training step computes its loss from the model output.

    * ``"probs"``: the model ends in a softmax; sparse categorical cross-entropy on probabilities;
    * ``"logits"``: the output is ``(K,)`` or ``(T, K)`` class scores; softmax cross-entropy from logits;
    * ``"regression"``: anything else (feature maps, e.g. cnn3); mean squared error against a target.
    """
    last = spec.layers[-1]
    out_shape = infer_shapes(spec)[-1]
    if (isinstance(last, Activation) and last.kind == "softmax") or (
        isinstance(last, Dense) and last.activation == "softmax"
    ):
        return "probs"
    if len(out_shape) in (1, 2) and not isinstance(last, Activation):
        return "logits"
    return "regression"


def make_batch(spec: ModelSpec, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random input batch ``x`` and target ``y`` (never zeros: some kernels are faster on zeros).

    ``x``: float32 normal of shape ``(N, *input_shape)`` (int64 tokens for Embedding models).
    ``y``: int64 class labels ``(N,)`` or ``(N, T)`` for classifiers, float32 of the output shape
    for regression outputs (see :func:`output_kind`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rng = np.random.default_rng(seed)
    x: np.ndarray
    y: np.ndarray
    if spec.input_dtype == "int64":
        first = spec.layers[0]
        vocab = first.vocab if isinstance(first, Embedding) else 2
        x = rng.integers(0, vocab, size=(batch_size, *spec.input_shape), dtype=np.int64)
    else:
        x = rng.standard_normal((batch_size, *spec.input_shape)).astype(np.float32)
    out_shape = infer_shapes(spec)[-1]
    kind = output_kind(spec)
    if kind == "regression":
        y = rng.standard_normal((batch_size, *out_shape)).astype(np.float32)
    else:
        y = rng.integers(0, out_shape[-1], size=(batch_size, *out_shape[:-1]), dtype=np.int64)
    return x, y
