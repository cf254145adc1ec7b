"""A float64 numpy reference forward pass for every layer type of :mod:`analytics.spec`.

This is the ground truth that backend parity checks compare against. It follows the spec's conventions
exactly (see the :mod:`analytics.spec` docstring):

* images are ``(N, C, H, W)``, sequences ``(N, T, F)``, tokens ``(N, T)``;
* ``same`` padding is TensorFlow's asymmetric rule (:func:`analytics.shapes.padding_amounts`), explicit
  int padding is symmetric;
* max pooling pads with ``-inf``; average pooling with explicit padding counts the padded zeros
  (PyTorch ``count_include_pad=True``), with ``same`` padding it averages only the real cells (TF);
* Flatten is in (C, H, W) order; Dense acts on the last axis;
* LRN is PyTorch's ``x / (k + alpha / size * sum_window x^2) ** beta``, the channel window reaching
  ``size // 2`` channels before and ``(size - 1) // 2`` after;
* LSTM starts from a zero state, gates i, f, g, o, one bias;
* Dropout is the identity (inference);
* graphs: each layer reads the outputs its ``inputs`` name (:func:`analytics.spec.layer_inputs`); a unit type
  (``analytics/layers/``) computes its own forward, in inference or in a training step's forward
  (``training=True``: BatchNorm normalizes with the batch's statistics).

Weights are the neutral format of :mod:`analytics.weights`. Only numpy is used; convolutions are
im2col (``sliding_window_view``) followed by one matrix product per block of output rows.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from xfbench.analytics.shapes import infer_shapes, padding_amounts, tied_layer
from xfbench.analytics.spec import BatchNorm, Embedding, ModelSpec, consumers, layer_inputs
from xfbench.analytics.weights import weight_slots

# Upper bound, in bytes, on one im2col block; keeps VGG's 224x224 layers from materialising ~230 MB at once.
_IM2COL_BUDGET = 32 * 1024 * 1024


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: mathematically identical to 1 / (1 + exp(-x)) and never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (max subtracted first)."""
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def activate(x: np.ndarray, kind: str | None) -> np.ndarray:
    """Applies a spec activation (``None`` is the identity; softmax is over the last axis)."""
    if kind is None:
        return x
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "sigmoid":
        return _sigmoid(x)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "softmax":
        return softmax(x)
    if kind == "gelu":  # the erf form, erf exact to double precision (math.erf)
        return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    if kind == "gelu_tanh":  # GPT-2's tanh approximation
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"unknown activation {kind!r}; allowed: relu, sigmoid, tanh, softmax, gelu, gelu_tanh")


_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    """Element-wise erf in float64 (numpy has none; ``math.erf`` is exact to double precision)."""
    return np.asarray(_ERF(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def _pad_hw(x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]], value: float) -> np.ndarray:
    (pt, pb), (pl, pr) = pads
    if pt == pb == pl == pr == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode="constant", constant_values=value)


def _windows(xp: np.ndarray, window: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Strided view ``(N, C, OH, OW, kh, kw)`` of the windows of an already padded ``(N, C, H, W)`` array."""
    view = sliding_window_view(xp, window, axis=(2, 3))
    oh, ow = out_hw
    return view[:, :, :: stride[0], :: stride[1]][:, :, :oh, :ow]


def _hw_pads(
    padding: str | int, hw: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    return (
        padding_amounts(padding, hw[0], window[0], stride[0]),
        padding_amounts(padding, hw[1], window[1], stride[1]),
    )


def conv2d(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    padding: str | int,
) -> np.ndarray:
    """2-D cross-correlation: ``x`` ``(N, C, H, W)``, ``kernel`` OIHW, groups 1 -> ``(N, O, OH, OW)``."""
    n, _, h, w = x.shape
    o, _, kh, kw = kernel.shape
    pads = _hw_pads(padding, (h, w), (kh, kw), stride)
    xp = _pad_hw(x, pads, 0.0)
    oh = (xp.shape[2] - kh) // stride[0] + 1
    ow = (xp.shape[3] - kw) // stride[1] + 1
    win = _windows(xp, (kh, kw), stride, (oh, ow))
    out = np.empty((n, o, oh, ow), dtype=np.float64)
    row_bytes = max(1, n * ow * x.shape[1] * kh * kw * 8)
    rows = max(1, _IM2COL_BUDGET // row_bytes)
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        # (N, rows, OW, O) after contracting C, kh, kw.
        block = np.tensordot(win[:, :, r0:r1], kernel, axes=([1, 4, 5], [1, 2, 3]))
        out[:, :, r0:r1] = block.transpose(0, 3, 1, 2)
    if bias is not None:
        out += bias.reshape(1, o, 1, 1)
    return out


def max_pool2d(x: np.ndarray, pool: tuple[int, int], stride: tuple[int, int], padding: str | int) -> np.ndarray:
    """Max pooling; padded cells are ``-inf`` so they never win."""
    h, w = x.shape[2:]
    xp = _pad_hw(x, _hw_pads(padding, (h, w), pool, stride), -np.inf)
    oh = (xp.shape[2] - pool[0]) // stride[0] + 1
    ow = (xp.shape[3] - pool[1]) // stride[1] + 1
    return _windows(xp, pool, stride, (oh, ow)).max(axis=(-2, -1))


def avg_pool2d(x: np.ndarray, pool: tuple[int, int], stride: tuple[int, int], padding: str | int) -> np.ndarray:
    """Average pooling: explicit padding counts zeros (PyTorch), ``same`` averages real cells only (TF)."""
    h, w = x.shape[2:]
    pads = _hw_pads(padding, (h, w), pool, stride)
    xp = _pad_hw(x, pads, 0.0)
    oh = (xp.shape[2] - pool[0]) // stride[0] + 1
    ow = (xp.shape[3] - pool[1]) // stride[1] + 1
    sums = _windows(xp, pool, stride, (oh, ow)).sum(axis=(-2, -1))
    if padding == "same":
        mask = _pad_hw(np.ones((1, 1, h, w)), pads, 0.0)
        counts = _windows(mask, pool, stride, (oh, ow)).sum(axis=(-2, -1))
        return sums / counts
    return sums / float(pool[0] * pool[1])


def local_response_norm(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """PyTorch's LRN across channels of ``(N, C, H, W)``."""
    sq = np.pad(x * x, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    c = x.shape[1]
    # shifted-slice sum rather than a cumsum difference: exact to rounding even when k is 0.
    window = np.zeros_like(x, dtype=np.float64)
    for d in range(size):
        window += sq[:, d : d + c]
    return x / (k + alpha / size * window) ** beta


def lstm(
    x: np.ndarray,
    kernel: np.ndarray,
    recurrent_kernel: np.ndarray,
    bias: np.ndarray,
    return_sequences: bool,
) -> np.ndarray:
    """LSTM over ``(N, T, F)`` from a zero state; gates i, f, g, o. Returns ``(N, T, h)`` or ``(N, h)``."""
    n, t, _ = x.shape
    units = recurrent_kernel.shape[0]
    h = np.zeros((n, units))
    c = np.zeros((n, units))
    xz = np.tensordot(x, kernel, axes=([2], [0])) + bias  # input contribution of all steps at once
    outs = np.empty((n, t, units))
    for step in range(t):
        z = xz[:, step] + h @ recurrent_kernel
        i = _sigmoid(z[:, :units])
        f = _sigmoid(z[:, units : 2 * units])
        g = np.tanh(z[:, 2 * units : 3 * units])
        o = _sigmoid(z[:, 3 * units :])
        c = f * c + i * g
        h = o * np.tanh(c)
        outs[:, step] = h
    return outs if return_sequences else h


def _check_weights(spec: ModelSpec, weights: list[np.ndarray]) -> None:
    slots = weight_slots(spec)
    for pos, (slot, arr) in enumerate(zip(slots, weights)):
        shape = tuple(np.shape(arr))
        if shape != slot.shape:
            raise ValueError(
                f"weight {pos} ({slot.layer_name}.{slot.param}, layer {slot.layer}) has shape {shape}, "
                f"expected {slot.shape}"
            )
    if len(weights) < len(slots):
        slot = slots[len(weights)]
        raise ValueError(
            f"got {len(weights)} weight arrays, expected {len(slots)}; first missing: weight {len(weights)} "
            f"({slot.layer_name}.{slot.param}, layer {slot.layer}) of shape {slot.shape}"
        )
    if len(weights) > len(slots):
        raise ValueError(
            f"got {len(weights)} weight arrays, expected {len(slots)}; first unexpected: weight {len(slots)} "
            f"of shape {tuple(np.shape(weights[len(slots)]))}"
        )


def reference_forward(
    spec: ModelSpec,
    weights: list[np.ndarray],
    x: np.ndarray,
    *,
    return_all: bool = False,
    training: bool = False,
) -> np.ndarray | list[np.ndarray]:
    """Forward pass of ``spec`` in float64 (``training``: a training step's forward; Dropout stays the identity).

    ``x`` is a batch ``(N, *spec.input_shape)`` (float images/sequences, or integer tokens when the
    model starts with an Embedding). ``weights`` is the neutral weight list (:func:`weight_slots`).
    Returns the final output ``(N, *output_shape)`` as float64, or with ``return_all`` the output of
    every layer in order. Raises ``ValueError`` when the weights or the input do not match the spec,
    naming the first mismatching weight slot.
    """
    return _run(spec, weights, x, training, return_all)[0]


def reference_state_after_step(
    spec: ModelSpec, weights: list[np.ndarray], x: np.ndarray, framework: str
) -> list[np.ndarray]:
    """The neutral weight list with every state slot (BatchNorm's running statistics) as ``framework`` leaves it
    after one training step on ``x``; trainable slots are returned unchanged (the optimizer moves those)."""
    from xfbench.analytics.layers.batchnorm import running_update

    inputs = _run(spec, weights, x, True, False, keep_bn_inputs=True)[1]
    out = [np.asarray(w, dtype=np.float64) for w in weights]
    slots = weight_slots(spec)
    for pos, slot in enumerate(slots):
        layer = spec.layers[slot.layer]
        if isinstance(layer, BatchNorm) and slot.param == "moving_mean":
            mean, var = running_update(inputs[slot.layer][0], out[pos], out[pos + 1], layer.momentum, framework)
            out[pos], out[pos + 1] = mean, var
    return out


def _run(
    spec: ModelSpec,
    weights: list[np.ndarray],
    x: np.ndarray,
    training: bool,
    return_all: bool,
    keep_bn_inputs: bool = False,
) -> tuple[np.ndarray | list[np.ndarray], dict[int, list[np.ndarray]]]:
    """The forward walk over the graph: (the output or every output, each BatchNorm's inputs where
    ``keep_bn_inputs``; otherwise none is kept, so that an input no later layer reads is freed)."""
    out_shapes = infer_shapes(spec)
    _check_weights(spec, weights)
    x = np.asarray(x)
    if x.ndim != len(spec.input_shape) + 1 or tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ValueError(f"input has shape {x.shape}, expected (N, {', '.join(map(str, spec.input_shape))})")
    starts_with_tokens = isinstance(spec.layers[0], Embedding)
    h = x if starts_with_tokens else x.astype(np.float64)
    params_by_layer: dict[int, list[np.ndarray]] = {}
    for slot, arr in zip(weight_slots(spec), weights):
        params_by_layer.setdefault(slot.layer, []).append(np.asarray(arr, dtype=np.float64))
    remaining = [len(c) for c in consumers(spec)]
    outputs: list[np.ndarray | None] = []
    bn_inputs: dict[int, list[np.ndarray]] = {}
    for i, (layer, srcs) in enumerate(zip(spec.layers, layer_inputs(spec))):
        args = [h if j < 0 else outputs[j] for j in srcs]
        ins = [a for a in args if a is not None]
        params = params_by_layer.get(i, [])
        if getattr(layer, "tie", None):  # a tied head reads its embedding's matrix
            params = [params_by_layer[tied_layer(spec, i)][0], *params]
        out = layer.forward(ins, params, training)  # the type's own reference
        if keep_bn_inputs and isinstance(layer, BatchNorm):  # its running statistics follow from its input
            bn_inputs[i] = ins
        expected = (x.shape[0], *out_shapes[i])
        if out.shape != expected:  # a disagreement with analytics.shapes is a bug in one of the two
            raise RuntimeError(f"layer {i} ({layer.type}) produced {out.shape}, shape inference says {expected}")
        outputs.append(out)
        if not return_all:  # free what no later layer reads (a ResNet's activations would add up otherwise)
            for j in srcs:
                if j >= 0:
                    remaining[j] -= 1
                    if remaining[j] == 0:
                        outputs[j] = None
    if return_all:
        return [o for o in outputs if o is not None], bn_inputs
    last = outputs[-1]
    assert last is not None
    return last, bn_inputs
