"""Shape inference with the frameworks' own rules.

* explicit padding P: ``floor((W + 2P - F) / S) + 1`` (PyTorch, MXNet, and Keras after ZeroPadding2D);
* ``same``: ``ceil(W / S)``, padding split TensorFlow's way (smaller half first);
* ``valid``: ``floor((W - F) / S) + 1``.
"""

from __future__ import annotations

import math
import warnings

from xfbench.analytics.spec import (
    LSTM,
    Activation,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LocalResponseNorm,
    ModelSpec,
    SpecError,
    _Pool,
    layer_inputs,
)

Shape = tuple[int, ...]


class FlooredPaddingWarning(UserWarning):
    """``(W - F + 2P) / S + 1`` is not an integer: the frameworks floor it and drop input columns."""


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``same`` padding for one spatial axis: ``(before, after)`` in elements."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def padding_amounts(padding: str | int, size: int, kernel: int, stride: int) -> tuple[int, int]:
    """``(before, after)`` padding for one axis under the spec's padding rule."""
    if padding == "same":
        return same_padding(size, kernel, stride)
    if padding == "valid":
        return 0, 0
    assert isinstance(padding, int)
    return padding, padding


def _window_out(
    index: int, layer: Layer, axis: str, size: int, kernel: int, stride: int, padding: str | int, notes: list[str]
) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    p = 0 if padding == "valid" else int(padding)
    padded = size + 2 * p
    if kernel > padded:
        field = "pool" if isinstance(layer, _Pool) else "kernel"
        raise SpecError(
            f"{layer.type} window {kernel} on axis {axis} is larger than its padded input {padded} "
            f"(input {size} + 2*padding {p})",
            layer=index,
            field=field,
            value=kernel,
        )
    span = padded - kernel
    if span % stride and not isinstance(padding, str):
        notes.append(
            f"axis {axis}: (W - F + 2P)/S + 1 = ({size} - {kernel} + 2*{p})/{stride} + 1 = {span / stride + 1:g} "
            f"is not an integer; the frameworks floor it to {span // stride + 1}, so the last {span % stride} "
            "padded input column(s) are dropped"
        )
    return span // stride + 1


def layer_output_shape(index: int, layer: Layer, shape: Shape, notes: list[str] | None = None) -> Shape:
    """Output shape of ``layer`` (at position ``index``) for a per-sample input ``shape``.

    Non-integer window arithmetic under explicit padding is appended to ``notes``.
    """
    if notes is None:
        notes = []
    if isinstance(layer, (Conv2D, _Pool, GlobalAvgPool2D, LocalResponseNorm)):
        if len(shape) != 3:
            raise SpecError(
                f"{layer.type} needs a (channels, height, width) input, got {len(shape)}-D per sample",
                layer=index,
                field="input",
                value=shape,
            )
        c, h, w = shape
        if isinstance(layer, GlobalAvgPool2D):
            return (c,)
        if isinstance(layer, LocalResponseNorm):
            return shape
        if isinstance(layer, Conv2D):
            kernel, stride, padding, out_c = layer.kernel, layer.stride, layer.padding, layer.filters
        else:
            assert layer.stride is not None
            kernel, stride, padding, out_c = layer.pool, layer.stride, layer.padding, c
        assert isinstance(kernel, tuple) and isinstance(stride, tuple)
        oh = _window_out(index, layer, "H", h, kernel[0], stride[0], padding, notes)
        ow = _window_out(index, layer, "W", w, kernel[1], stride[1], padding, notes)
        return (out_c, oh, ow)
    if isinstance(layer, Dense):
        if len(shape) not in (1, 2):
            raise SpecError(
                f"Dense needs a (features,) or (time, features) input, got {len(shape)}-D per sample; "
                "add a Flatten first",
                layer=index,
                field="input",
                value=shape,
            )
        return (*shape[:-1], layer.units)
    if isinstance(layer, Flatten):
        return (math.prod(shape),)
    if isinstance(layer, (Activation, Dropout)):
        return shape
    if isinstance(layer, LSTM):
        if len(shape) != 2:
            raise SpecError(
                f"LSTM needs a (time, features) input, got {len(shape)}-D per sample "
                f"({len(shape) + 1}-D with the batch)",
                layer=index,
                field="input",
                value=shape,
            )
        t, _ = shape
        return (t, layer.units) if layer.return_sequences else (layer.units,)
    if isinstance(layer, Embedding):
        if len(shape) != 1:
            raise SpecError(
                f"Embedding needs a (time,) token input, got {len(shape)}-D per sample",
                layer=index,
                field="input",
                value=shape,
            )
        return (shape[0], layer.dim)
    raise SpecError(f"unsupported layer type {layer.type}", layer=index, field="type", value=layer.type)


def _layer_shape(index: int, layer: Layer, in_shapes: list[Shape], notes: list[str]) -> Shape:
    """A unit type's own rule (``analytics/layers/``), else the rules above for a one-input layer."""
    unit = getattr(layer, "output_shape", None)
    if unit is not None:
        return tuple(unit(index, in_shapes))
    if len(in_shapes) != 1:
        raise SpecError(
            f"{layer.type} reads one input, got {len(in_shapes)}",
            layer=index,
            field="inputs",
            value=list(layer.inputs or ()),
        )
    return layer_output_shape(index, layer, in_shapes[0], notes)


def _walk(spec: ModelSpec) -> tuple[list[Shape], list[list[Shape]], list[tuple[int, str]]]:
    """Output shapes, input shapes (per layer, in ``inputs`` order) and floored-padding notes, over the graph."""
    shape: Shape = tuple(spec.input_shape)
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise SpecError("sizes must be positive integers", field="input_shape", value=shape)
    if not spec.layers:
        raise SpecError("a model needs at least one layer", field="layers", value=[])
    outs: list[Shape] = []
    ins: list[list[Shape]] = []
    found: list[tuple[int, str]] = []
    for i, (layer, srcs) in enumerate(zip(spec.layers, layer_inputs(spec))):
        notes: list[str] = []
        in_shapes = [shape if j < 0 else outs[j] for j in srcs]
        ins.append(in_shapes)
        outs.append(_layer_shape(i, layer, in_shapes, notes))
        if notes:
            found.append((i, "; ".join(notes)))
    return outs, ins, found


def infer_shapes(spec: ModelSpec, *, warn: bool = False) -> list[Shape]:
    """Per-sample output shape of every layer, in order. Raises :class:`SpecError` on invalid specs.

    With ``warn=True``, emits a :class:`FlooredPaddingWarning` for each layer whose explicit padding
    makes ``(W - F + 2P)/S + 1`` non-integer (see :func:`floored_padding_notes`).
    """
    outs, _, found = _walk(spec)
    if warn:
        for i, msg in found:
            warnings.warn(f"layer {i} ({spec.layers[i].label}): {msg}", FlooredPaddingWarning, stacklevel=2)
    return outs


def floored_padding_notes(spec: ModelSpec) -> list[tuple[int, str]]:
    """``(layer index, message)`` for each layer whose explicit padding does not divide evenly."""
    return _walk(spec)[2]


def input_shapes(spec: ModelSpec) -> list[Shape]:
    """Per-sample shape of every layer's (first) input: the previous layer's output in a sequential model."""
    return [ins[0] for ins in _walk(spec)[1]]


def layer_input_shapes(spec: ModelSpec) -> list[list[Shape]]:
    """Per-sample shapes of every layer's inputs, in ``inputs`` order."""
    return _walk(spec)[1]
