"""``Add``: the element-wise sum of two or more inputs of equal shape (a residual connection).

* shape: every input's shape, which must be equal;
* parameters: none; FLOPs: ``(inputs - 1)`` additions per output element, in the ``add`` column;
* reference: ``sum(inputs)``; backward: the incoming gradient goes to every input unchanged (autograd's
  ``AddBackward0`` returns it for both operands; no allocation);
* simulated step: one new output of the inputs' size; every framework's add keeps nothing for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from xfbench.analytics.layers.base import Layer, LayerCost, Shape, SpecError, WorkSite
from xfbench.analytics.timeline_rules import Buf, OpRule

_OUTPUT = (Buf("output", "output"),)


@dataclass(frozen=True)
class Add(Layer):
    """Element-wise sum of its inputs (two or more, equal shapes)."""

    name: str = ""

    #: Simulated-step rules per framework: one output, nothing saved, the gradient handed to every operand.
    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        fw: {op: OpRule(_OUTPUT, (), (), basis, passthrough=True)}
        for fw, op, basis in (
            (
                "torch",
                "add",
                "tools/autograd/derivatives.yaml add.Tensor: self: grad, other: grad * alpha (saves nothing)",
            ),
            (
                "tensorflow",
                "AddV2",
                "python/ops/math_grad.py _AddV2Grad: the gradient to both (a sum only to broadcast)",
            ),
            (
                "mxnet",
                "elemwise_add",
                "elemwise_binary_op_basic.cc: _backward_add, ElemwiseGradUseNone (first approx.)",
            ),
        )
    }

    def validate(self, index: int) -> None:
        if self.inputs is not None and len(self.inputs) < 2:
            raise SpecError("Add needs two or more inputs", layer=index, field="inputs", value=list(self.inputs))
        if self.inputs is None:
            raise SpecError("Add needs two or more inputs (name them)", layer=index, field="inputs", value=None)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        first = in_shapes[0]
        for k, shape in enumerate(in_shapes[1:], start=1):
            if tuple(shape) != tuple(first):
                raise SpecError(
                    f"Add needs inputs of equal shape: input 0 is {first}, input {k} is {shape}",
                    layer=index,
                    field="inputs",
                    value=list(self.inputs or ()),
                )
        return tuple(first)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(add=(len(in_shapes) - 1) * math.prod(out_shape))

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        out = inputs[0].copy()
        for x in inputs[1:]:
            out += x
        return out

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """torch ``aten.add`` (derivatives.yaml: ``self: grad``, ``other: maybe_multiply(grad, alpha)``: saves
        nothing), TensorFlow ``AddV2`` (math_grad.py ``_AddGrad``: the gradient passes through, a reduction only
        under broadcasting), MXNet ``elemwise_add`` (``ElemwiseGradUseNone``): one output, no saved operand."""
        low = model.low
        op = {"torch": "add", "tensorflow": "AddV2", "mxnet": "elemwise_add"}[low.c.framework]
        y = xs[0]
        for k, x in enumerate(xs[1:], start=1):
            z = low.out(op, {"input": y, "other": x}, {"output": x.elems}, label=label, name=f"add{k}")
            if k > 1:
                low.drop(y, label)
            y = z
        for x in xs:
            low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """Each addition reads two operands and writes one output (memory-bound); the backward hands the
        gradient on (no work)."""
        elems = site.batch * math.prod(site.out_shape)
        for _ in site.in_shapes[1:]:
            b.mem(site.i, "forward", "add", 3 * elems * b.w, 1, 0, out=elems * b.w)
