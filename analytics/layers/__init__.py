"""Layer types that are one unit each: a module per type holds its fields and validation, its shape rule, its
parameters per framework convention, its FLOPs, its weight slots, its numpy reference and its simulated-step ops.

A unit is a frozen dataclass subclassing :class:`analytics.spec.Layer` with these methods (the facets every
dispatch in the suite calls; ``tests/test_graph_spec.py`` walks :data:`UNIT_TYPES` and fails when one lacks a
facet or a backend builder):

* ``validate(index)``: its own fields (raises :class:`~analytics.spec.SpecError`);
* ``output_shape(index, in_shapes)``: per-sample output shape from the per-sample input shapes;
* ``cost(in_shapes, out_shape, framework)``: :class:`~analytics.costs.LayerCost` per sample;
* ``weight_slots(in_shapes)``: ``[(param, shape, trainable), ...]`` in the neutral weight format;
* ``forward(inputs, params, training)``: float64 numpy reference (``training``: a training step's forward);
* ``simulate(model, label, xs, in_shapes, out_shape)``: the ops of the simulated step (``analytics/timeline.py``);
* ``work(b, i, batch, in_shapes, out_shape, need_dx, training, framework)``: the step-time work items
  (``analytics/steptime.py``).

See ``docs/architecture.md``, "Add a layer type", for the files a new type touches, in order.
"""

from __future__ import annotations

from xfbench.analytics.layers.add import Add
from xfbench.analytics.layers.batchnorm import BatchNorm
from xfbench.analytics.layers.concatenate import Concatenate

UNIT_TYPES = (Add, Concatenate, BatchNorm)

__all__ = ["UNIT_TYPES", "Add", "BatchNorm", "Concatenate"]
