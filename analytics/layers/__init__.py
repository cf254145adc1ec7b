"""The layer types, one unit each: a type's fields and validation, its shape rule, its parameters per framework
convention, its FLOPs, its weight slots and its numpy reference live in its class (the facets of
:class:`~analytics.layers.base.Layer`), in one module of this package; every dispatch in the suite calls them.

The types of the graph wave (:data:`UNIT_TYPES`: Add, Concatenate, BatchNorm) also carry their simulated-step ops
and rules (``simulate``, ``RULES``) and their step-time work (``work``); the first wave's simulated-step and
step-time rules still live in ``analytics/timeline.py`` and ``analytics/steptime.py`` (each with an error for a
type it has no case for).

* ``validate(index)``: its own fields (raises :class:`~analytics.layers.base.SpecError`);
* ``output_shape(index, in_shapes, notes)``: per-sample output shape from the per-sample input shapes;
* ``cost(in_shapes, out_shape, framework)``: :class:`~analytics.layers.base.LayerCost` per sample;
* ``weight_slots(in_shapes)``: ``[(param, shape, trainable), ...]`` in the neutral weight format;
* ``forward(inputs, params, training)``: float64 numpy reference (``training``: a training step's forward);
* ``simulate(model, label, xs, in_shapes, out_shape)``: the ops of the simulated step (``analytics/timeline.py``);
* ``work(b, i, batch, in_shapes, out_shape, need_dx, training, framework)``: the step-time work items
  (``analytics/steptime.py``).

``tests/test_graph_spec.py`` walks :data:`LAYER_TYPES` and fails when a type lacks a facet; each backend's
builder registry is checked against it in that backend's tests. See ``docs/architecture.md``, "Add a layer
type", for the files a new type touches, in order.
"""

from __future__ import annotations

from xfbench.analytics.layers.add import Add
from xfbench.analytics.layers.base import Layer
from xfbench.analytics.layers.batchnorm import BatchNorm
from xfbench.analytics.layers.concatenate import Concatenate
from xfbench.analytics.layers.conv import Conv2D
from xfbench.analytics.layers.dense import Dense
from xfbench.analytics.layers.elementwise import Activation, Dropout, Flatten
from xfbench.analytics.layers.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D, _Pool
from xfbench.analytics.layers.recurrent import LSTM, Embedding, LocalResponseNorm
from xfbench.analytics.layers.transformer import GlobalAvgPool1D, LayerNorm, MultiHeadAttention, PositionEmbedding

#: Every layer type a spec may name, by its canonical name (the registry every dispatch goes through).
LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (
        Conv2D,
        MaxPool2D,
        AvgPool2D,
        GlobalAvgPool2D,
        Dense,
        Flatten,
        Activation,
        Dropout,
        LocalResponseNorm,
        LSTM,
        Embedding,
        Add,
        Concatenate,
        BatchNorm,
        LayerNorm,
        MultiHeadAttention,
        PositionEmbedding,
        GlobalAvgPool1D,
    )
}
#: The graph wave's types, whose simulated-step and step-time facets are in their own modules too.
UNIT_TYPES = (Add, Concatenate, BatchNorm, LayerNorm, MultiHeadAttention, PositionEmbedding, GlobalAvgPool1D)

__all__ = [
    "LAYER_TYPES",
    "LSTM",
    "UNIT_TYPES",
    "Activation",
    "Add",
    "AvgPool2D",
    "BatchNorm",
    "Concatenate",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GlobalAvgPool1D",
    "GlobalAvgPool2D",
    "LayerNorm",
    "LocalResponseNorm",
    "MaxPool2D",
    "MultiHeadAttention",
    "PositionEmbedding",
    "_Pool",
]
