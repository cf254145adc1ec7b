"""The framework-neutral model spec: a list of layers that may form a graph.

A layer reads the layer just above it (the first layer reads the model input) unless it names its
``inputs``: a list of earlier layer names, or ``input`` for the model's input. The model's output is the
last layer; every other layer's output must be read by some layer (see :func:`layer_inputs`).

Conventions (every backend and every prediction follows them):

* Shapes are per sample, without the batch dimension. Images are channels-first ``(C, H, W)``,
  sequences are ``(T, F)`` (time, features), token sequences for :class:`Embedding` are ``(T,)``.
* ``padding`` is ``"valid"``, ``"same"`` (TensorFlow's rule: output ``ceil(W / S)``, total padding
  ``max((ceil(W/S) - 1) * S + F - W, 0)``, the smaller half before, the larger half after) or an
  explicit non-negative int applied symmetrically (output ``floor((W + 2P - F) / S) + 1``).
* ``activation`` on :class:`Conv2D` and :class:`Dense` is applied to the layer's output, as in Keras.
* :class:`LocalResponseNorm` follows PyTorch's definition: ``x / (k + alpha / size * sum(x^2))^beta``
  over ``size`` neighbouring channels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any

from xfbench.analytics import layers as _layers
from xfbench.analytics.layers import *  # noqa: F403 (the layer types: the spec's vocabulary, re-exported)
from xfbench.analytics.layers.base import ACTIVATIONS, Layer, PaddingT, SpecError, _pair  # noqa: F401

# Short aliases accepted in spec files.
_ALIASES = {
    "conv2d": "Conv2D",
    "conv": "Conv2D",
    "maxpool2d": "MaxPool2D",
    "maxpool": "MaxPool2D",
    "avgpool2d": "AvgPool2D",
    "avgpool": "AvgPool2D",
    "globalavgpool2d": "GlobalAvgPool2D",
    "dense": "Dense",
    "linear": "Dense",
    "flatten": "Flatten",
    "activation": "Activation",
    "dropout": "Dropout",
    "localresponsenorm": "LocalResponseNorm",
    "lrn": "LocalResponseNorm",
    "lstm": "LSTM",
    "embedding": "Embedding",
    "add": "Add",
    "concatenate": "Concatenate",
    "concat": "Concatenate",
    "batchnorm": "BatchNorm",
    "batchnormalization": "BatchNorm",
    "layernorm": "LayerNorm",
    "layernormalization": "LayerNorm",
    "multiheadattention": "MultiHeadAttention",
    "mha": "MultiHeadAttention",
    "attention": "MultiHeadAttention",
    "positionembedding": "PositionEmbedding",
    "globalavgpool1d": "GlobalAvgPool1D",
    # activations as layer types
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
}


@dataclass(frozen=True)
class ModelSpec:
    """A sequential model: ``input_shape`` (per sample) followed by ``layers``."""

    name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    source: str = ""
    input_dtype: str = "float32"  # "int64" for token inputs (Embedding)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def layer_from_dict(index: int, raw: Any) -> Layer:
    """Builds one layer from a mapping such as ``{"type": "Conv2D", "filters": 8, "kernel": 3}``."""
    if not isinstance(raw, dict):
        raise SpecError("a layer must be a mapping with a 'type' key", layer=index, field="layer", value=raw)
    data = dict(raw)
    type_name = data.pop("type", None)
    if not isinstance(type_name, str):
        raise SpecError(
            f"missing or non-string layer type; allowed: {', '.join(_layers.LAYER_TYPES)}",
            layer=index,
            field="type",
            value=type_name,
        )
    canonical = _ALIASES.get(type_name.lower(), type_name)
    if canonical in ACTIVATIONS:
        data.setdefault("kind", canonical)
        canonical = "Activation"
    cls = _layers.LAYER_TYPES.get(canonical)
    if cls is None:
        raise SpecError(
            f"unknown layer type; allowed: {', '.join(_layers.LAYER_TYPES)}", layer=index, field="type", value=type_name
        )
    allowed = {f.name for f in fields(cls)}
    if "inputs" in data:
        data["inputs"] = _inputs_field(index, data["inputs"])
    for key in data:
        if key not in allowed:
            raise SpecError(
                f"unknown field for {canonical}; allowed: {', '.join(sorted(allowed))}",
                layer=index,
                field=key,
                value=data[key],
            )
    try:
        layer = cls(**data)
    except TypeError as exc:  # missing required field
        raise SpecError(f"{canonical}: {exc}", layer=index) from None
    except ValueError as exc:  # bad kernel/stride pair
        raise SpecError(f"{canonical}: {exc}", layer=index) from None
    validate_layer(index, layer)
    return layer


def _inputs_field(index: int, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(v, str) and v for v in raw):
        raise SpecError(
            "must be a non-empty list of earlier layer names or 'input'", layer=index, field="inputs", value=raw
        )
    return tuple(raw)


def validate_layer(index: int, layer: Layer) -> None:
    """Checks a layer's own fields (not shapes), by its type's ``validate``. Raises :class:`SpecError`."""
    layer.validate(index)


def spec_from_dict(data: Any, *, default_name: str = "custom") -> ModelSpec:
    """Builds a :class:`ModelSpec` from parsed JSON/YAML (see README, "Custom models")."""
    if not isinstance(data, dict):
        raise SpecError("a model spec must be a mapping with 'input_shape' and 'layers'")
    unknown = set(data) - {"name", "source", "input_shape", "layers", "input_dtype"}
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(
            "unknown top-level key; allowed: name, source, input_shape, input_dtype, layers",
            field=key,
            value=data[key],
        )
    shape = data.get("input_shape")
    if not isinstance(shape, (list, tuple)) or not shape:
        raise SpecError("must be a non-empty list of positive integers", field="input_shape", value=shape)
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise SpecError("must be a non-empty list of positive integers", field="input_shape", value=shape)
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SpecError("must be a non-empty list of layers", field="layers", value=raw_layers)
    layers = tuple(layer_from_dict(i, raw) for i, raw in enumerate(raw_layers))
    layer_inputs_of(layers)  # names, references and unread outputs: one-line errors before any shape
    input_dtype = data.get("input_dtype")
    if input_dtype is None:
        input_dtype = "int64" if isinstance(layers[0], _layers.Embedding) else "float32"
    if input_dtype not in ("float32", "int64"):
        raise SpecError("allowed: float32, int64", field="input_dtype", value=input_dtype)
    return ModelSpec(
        name=str(data.get("name", default_name)),
        input_shape=tuple(int(v) for v in shape),
        layers=layers,
        source=str(data.get("source", "")),
        input_dtype=input_dtype,
    )


# ------------------------------------------------------------------------------------------------ the graph

#: The name ``inputs`` uses for the model's input.
MODEL_INPUT = "input"


def layer_inputs_of(layers: tuple[Layer, ...]) -> tuple[tuple[int, ...], ...]:
    """For each layer, the indices of the layers it reads (``-1``: the model input), in ``inputs`` order.

    Raises :class:`SpecError` (one line: the layer, the field, the value) for a duplicate name, a name that is
    unknown or refers to a later layer (a cycle), and a layer other than the last whose output nothing reads.
    """
    by_name: dict[str, int] = {}
    for i, layer in enumerate(layers):
        name = str(getattr(layer, "name", ""))
        if not name:
            continue
        if name == MODEL_INPUT:
            raise SpecError(f"'{MODEL_INPUT}' names the model's input", layer=i, field="name", value=name)
        if name in by_name:
            raise SpecError(f"duplicate layer name (also layer {by_name[name]})", layer=i, field="name", value=name)
        by_name[name] = i
    out: list[tuple[int, ...]] = []
    for i, layer in enumerate(layers):
        if layer.inputs is None:
            out.append((i - 1,))
            continue
        srcs: list[int] = []
        for ref in layer.inputs:
            if ref == MODEL_INPUT:
                srcs.append(-1)
                continue
            j = by_name.get(ref)
            if j is None:
                raise SpecError(
                    f"unknown layer name; allowed: '{MODEL_INPUT}' or an earlier layer's name",
                    layer=i,
                    field="inputs",
                    value=ref,
                )
            if j >= i:
                raise SpecError(
                    f"names layer {j}, which is not earlier (a cycle or a forward reference)",
                    layer=i,
                    field="inputs",
                    value=ref,
                )
            srcs.append(j)
        out.append(tuple(srcs))
    read = {j for srcs in out for j in srcs}
    for i, layer in enumerate(layers[:-1]):
        if i not in read:
            raise SpecError(
                "this layer's output is never read (only the last layer may be the output); "
                "name it in a later layer's inputs or remove it",
                layer=i,
                field="name",
                value=layer.label,
            )
    return tuple(out)


def layer_inputs(spec: ModelSpec) -> tuple[tuple[int, ...], ...]:
    """:func:`layer_inputs_of` for a spec (cached: specs are frozen)."""
    return _cached_inputs(spec.layers)


_cached_inputs = functools.lru_cache(maxsize=64)(layer_inputs_of)


def is_sequential(spec: ModelSpec) -> bool:
    """Every layer reads the one above it (no branch, no skip): the sequential model of the first waves."""
    return all(srcs == (i - 1,) for i, srcs in enumerate(layer_inputs(spec)))


def consumers(spec: ModelSpec) -> tuple[tuple[int, ...], ...]:
    """For each layer, the indices of the layers that read its output (in order; a layer reading it twice
    appears twice)."""
    out: list[list[int]] = [[] for _ in spec.layers]
    for i, srcs in enumerate(layer_inputs(spec)):
        for j in srcs:
            if j >= 0:
                out[j].append(i)
    return tuple(tuple(c) for c in out)
