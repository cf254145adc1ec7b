"""Shape inference with the frameworks' own rules.

* explicit padding P: ``floor((W + 2P - F) / S) + 1`` (PyTorch, MXNet, and Keras after ZeroPadding2D);
* ``same``: ``ceil(W / S)``, padding split TensorFlow's way (smaller half first);
* ``valid``: ``floor((W - F) / S) + 1``.
"""

from __future__ import annotations

import warnings

from xfbench.analytics.layers.base import padding_amounts, same_padding
from xfbench.analytics.spec import Layer, ModelSpec, SpecError, layer_inputs

Shape = tuple[int, ...]

__all__ = [
    "FlooredPaddingWarning",
    "floored_padding_notes",
    "infer_shapes",
    "input_shapes",
    "layer_input_shapes",
    "layer_output_shape",
    "padding_amounts",
    "same_padding",
]


class FlooredPaddingWarning(UserWarning):
    """``(W - F + 2P) / S + 1`` is not an integer: the frameworks floor it and drop input columns."""


def layer_output_shape(index: int, layer: Layer, shape: Shape, notes: list[str] | None = None) -> Shape:
    """Output shape of a one-input ``layer`` (at position ``index``) for a per-sample input ``shape``: its type's
    rule (``output_shape``). Non-integer window arithmetic under explicit padding is appended to ``notes``."""
    return tuple(layer.output_shape(index, [tuple(shape)], [] if notes is None else notes))


def tied_layer(spec: ModelSpec, index: int) -> int:
    """The index of the Embedding whose matrix layer ``index`` (a ``Dense`` with ``tie``) uses."""
    name = spec.layers[index].tie  # type: ignore[attr-defined]
    for j, other in enumerate(spec.layers[:index]):
        if other.label == name:
            return j
    raise SpecError("must name an earlier Embedding layer", layer=index, field="tie", value=name)


def _check_tie(spec: ModelSpec, i: int, layer: Layer, in_shape: Shape) -> None:
    j = tied_layer(spec, i)
    emb = spec.layers[j]
    if emb.type != "Embedding":
        raise SpecError(f"names a {emb.type}; a tie needs an Embedding layer", layer=i, field="tie", value=emb.label)
    vocab, dim = emb.vocab, emb.dim  # type: ignore[attr-defined]
    if layer.units != vocab:  # type: ignore[attr-defined]
        raise SpecError(
            f"a head tied to {emb.label} needs units == its vocab {vocab}",
            layer=i,
            field="units",
            value=layer.units,  # type: ignore[attr-defined]
        )
    if in_shape[-1] != dim:
        raise SpecError(
            f"a head tied to {emb.label} needs {dim} input features (its dim), got {in_shape[-1]}",
            layer=i,
            field="tie",
            value=emb.label,
        )


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
        outs.append(tuple(layer.output_shape(i, in_shapes, notes)))
        if getattr(layer, "tie", None):
            _check_tie(spec, i, layer, in_shapes[0])
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
