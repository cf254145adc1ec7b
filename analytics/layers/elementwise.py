"""The layers that keep or only reshape their input, without weights: ``Flatten`` (channels-first (C, H, W)
order), ``Activation`` (relu, sigmoid, tanh, softmax over the last axis; 1 FLOP per element, softmax 3) and
``Dropout`` (the identity in inference and in the reference; a mask in a framework's training step)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from xfbench.analytics.layers.base import (
    ACTIVATIONS,
    Layer,
    LayerCost,
    Shape,
    SpecError,
    WorkSite,
    activation_flops,
    one_input,
)


@dataclass(frozen=True)
class _NoWeights(Layer):
    """A one-input layer without weights whose output has its input's shape."""

    def validate(self, index: int) -> None:
        pass

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return one_input(index, self, in_shapes)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost()

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []


@dataclass(frozen=True)
class Flatten(_NoWeights):
    """Flattens in channels-first (C, H, W) order."""

    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return (math.prod(one_input(index, self, in_shapes)),)

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        x = inputs[0]
        return x.reshape(x.shape[0], -1)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """A view where the input is contiguous (autograd records it when the input needs a gradient); PyTorch
        copies a non-contiguous input (reshape)."""
        low, x = model.low, xs[0]
        if x.contiguous or low.c.framework != "torch":
            y = low.view(x, label) if x.requires_grad else low.alias(x)
        else:
            y = low.out("clone", {"input": x}, {"output": x.elems}, label=label)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        b.mem(site.i, "forward", "flatten (view)", 0.0, 1)


@dataclass(frozen=True)
class Activation(_NoWeights):
    kind: str
    name: str = ""

    def validate(self, index: int) -> None:
        if self.kind not in ACTIVATIONS:
            raise SpecError(f"allowed: {', '.join(ACTIVATIONS)}", layer=index, field="kind", value=self.kind)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(activation=activation_flops(self.kind, math.prod(out_shape)))

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import activate

        return activate(inputs[0], self.kind)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        y = model.act(label, self.kind, xs[0])
        model.low.drop(xs[0], label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        b.activation(site.i, self.kind, site.batch * math.prod(site.out_shape), site.training, False)


@dataclass(frozen=True)
class Dropout(_NoWeights):
    rate: float = 0.5
    name: str = ""

    def validate(self, index: int) -> None:
        if not isinstance(self.rate, (int, float)) or not 0 <= self.rate < 1:
            raise SpecError("must be in [0, 1)", layer=index, field="rate", value=self.rate)

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        return inputs[0]

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """Eval mode, or p == 0: the input itself (aten dropout returns it); in training a new output (and a mask,
        per the framework's rules)."""
        low, x = model.low, xs[0]
        if not low.c.training or self.rate == 0:
            y = low.alias(x)
        else:
            fw = low.c.framework
            op = "Dropout" if fw != "torch" else ("dropout" if low.c.device == "cpu" else "native_dropout")
            y = low.out(op, {"input": x}, {"input": x.elems, "output": x.elems}, label=label)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """Training only: a random mask (compute: one random number per element) and the masked product; the
        gradient one product."""
        if site.training:
            w, in_elems = b.w, site.batch * math.prod(site.in_shapes[0])
            b.mem(site.i, "forward", "dropout", 3 * in_elems * w, 2, in_elems, out=2 * in_elems * w)
            if site.need_dx:
                b.mem(site.i, "input_grad", "dropout grad", 3 * in_elems * w, out=in_elems * w)
