"""``Concatenate``: joins its inputs along channels (images ``(C, H, W)``) or features (sequences ``(T, F)``,
vectors ``(F,)``): the first axis of a 3-D per-sample shape, the last otherwise.

* shape: the inputs agree on every other axis; the joined axis is the sum;
* parameters and FLOPs: none (a copy);
* reference: ``np.concatenate``; backward: each input's gradient is a slice of the incoming one;
* simulated step: one new output (a copy of every input); nothing saved. PyTorch's ``cat`` backward returns
  ``narrow`` views of the gradient (no allocation); TensorFlow's ``ConcatV2`` gradient slices copies
  (array_grad.py ``_ConcatGradHelper``: ``Slice`` ops); MXNet's ``Concat`` backward writes each input's
  gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from xfbench.analytics.layers.base import Layer, LayerCost, Shape, SpecError, WorkSite
from xfbench.analytics.timeline_rules import Buf, OpRule

_OUTPUT = (Buf("output", "output"),)
#: Operand roles of a Concatenate's inputs in the simulated step (``input``, ``input1``, ...).
MAX_INPUTS = 16
_ROLES = ("input", *(f"input{k}" for k in range(1, MAX_INPUTS)))
_SLICES = tuple(Buf(f"grad:{r}", r) for r in _ROLES)


def concat_axis(shape: Shape) -> int:
    """The per-sample axis a Concatenate joins: channels of ``(C, H, W)``, else the last."""
    return 0 if len(shape) == 3 else len(shape) - 1


@dataclass(frozen=True)
class Concatenate(Layer):
    """Joins its inputs (two or more) along channels ``(C, H, W)`` or features ``(T, F)``."""

    name: str = ""

    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        "torch": {
            "cat": OpRule(
                _OUTPUT,
                (),
                (),
                "tools/autograd/derivatives.yaml cat: cat_tensors_backward returns narrow() views of the gradient "
                "(no allocation; the gradient lives while a slice does)",
                passthrough=True,
            )
        },
        "tensorflow": {
            "ConcatV2": OpRule(
                _OUTPUT, (), _SLICES, "python/ops/array_grad.py _ConcatGradHelper: one Slice (a copy) per input"
            )
        },
        "mxnet": {
            "Concat": OpRule(
                _OUTPUT, (), _SLICES, "src/operator/nn/concat.cc _backward_Concat writes each input's gradient"
            )
        },
    }

    def validate(self, index: int) -> None:
        if self.inputs is not None and len(self.inputs) > MAX_INPUTS:
            raise SpecError(f"at most {MAX_INPUTS} inputs", layer=index, field="inputs", value=list(self.inputs))
        if self.inputs is None or len(self.inputs) < 2:
            raise SpecError(
                "Concatenate needs two or more inputs (name them)",
                layer=index,
                field="inputs",
                value=None if self.inputs is None else list(self.inputs),
            )

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        first = tuple(in_shapes[0])
        axis = concat_axis(first)
        total = 0
        for k, shape in enumerate(in_shapes):
            rest = tuple(s for a, s in enumerate(shape) if a != axis)
            first_rest = tuple(s for a, s in enumerate(first) if a != axis)
            if len(shape) != len(first) or rest != first_rest:
                raise SpecError(
                    f"Concatenate joins axis {axis} of per-sample shapes; the other axes must agree: input 0 is "
                    f"{first}, input {k} is {tuple(shape)}",
                    layer=index,
                    field="inputs",
                    value=list(self.inputs or ()),
                )
            total += shape[axis]
        out = list(first)
        out[axis] = total
        return tuple(out)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost()

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        return np.concatenate(inputs, axis=1 + concat_axis(inputs[0].shape[1:]))

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        low = model.low
        op = {"torch": "cat", "tensorflow": "ConcatV2", "mxnet": "Concat"}[low.c.framework]
        ins = {("input" if k == 0 else f"input{k}"): x for k, x in enumerate(xs)}
        sizes = {"output": model.b * math.prod(out_shape)}
        sizes.update({("input" if k == 0 else f"input{k}"): x.elems for k, x in enumerate(xs)})
        y = low.out(op, ins, sizes, label=label)
        for x in xs:
            low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """A copy: reads every input once, writes the output; the backward slices the gradient (a copy where the
        framework copies it)."""
        elems = site.batch * math.prod(site.out_shape)
        b.mem(site.i, "forward", "concat", 2 * elems * b.w, len(site.in_shapes), 0, out=elems * b.w)
        if site.need_dx and site.framework != "torch":
            b.mem(
                site.i, "input_grad", "concat grad (slices)", 2 * elems * b.w, len(site.in_shapes), 0, out=elems * b.w
            )
