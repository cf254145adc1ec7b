"""Per-layer parameter and FLOP rules: one registry, one pure function per layer type.

Convention, everywhere in xfbench: **1 multiply-accumulate = 2 FLOPs**. The work of a layer is split into
separate terms so that totals reconcile with each framework's counter:

* ``matmul``: conv / dense / LSTM multiply-accumulates x 2 (what PyTorch's ``FlopCounterMode`` counts);
* ``bias``: one add per biased output element (TensorFlow's profiler adds these; FlopCounterMode does not);
* ``activation``: 1 FLOP per element per relu/sigmoid/tanh, 3 per element for softmax (exp, sum, divide);
* ``pool``: one FLOP per window element read (max: compare, average: add), per output element;
* ``other``: LRN (2 * size + 2 per element), LSTM cell element-wise products and sums (4h per step).

Backward (matmul terms only, like the counters): weight gradient = forward matmul FLOPs, input gradient
= forward matmul FLOPs, except for the first layer with weights, whose input needs no gradient. For an
LSTM the recurrent input gradient is always needed (back-propagation through time).

Parameter conventions differ by framework only for the LSTM: Keras/TensorFlow keeps one bias per gate
(4h), PyTorch and MXNet two (8h).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from xfbench.analytics.spec import (
    LSTM,
    Activation,
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LocalResponseNorm,
    MaxPool2D,
    ModelSpec,
)

FRAMEWORKS = ("tensorflow", "torch", "mxnet")
FRAMEWORK_ALIASES = {"keras": "tensorflow", "tf": "tensorflow", "pytorch": "torch", "mx": "mxnet"}
ACTIVATION_FLOPS = {"relu": 1, "sigmoid": 1, "tanh": 1, "softmax": 3}

Shape = tuple[int, ...]


def canonical_framework(name: str) -> str:
    key = FRAMEWORK_ALIASES.get(name.lower(), name.lower())
    if key not in FRAMEWORKS:
        raise ValueError(f"unknown framework {name!r}; allowed: {', '.join(FRAMEWORKS)}")
    return key


@dataclass(frozen=True)
class LayerCost:
    """Per-sample cost of one layer (FLOPs for one sample; multiply by the batch)."""

    params: int = 0
    matmul: int = 0
    bias: int = 0
    activation: int = 0
    pool: int = 0
    other: int = 0
    backward_weight: int = 0
    backward_input: int = 0  # gradient w.r.t. the layer's input; skipped for the first layer with weights
    backward_recurrent: int = 0  # LSTM: gradient w.r.t. h_{t-1}, always needed

    @property
    def forward_all(self) -> int:
        return self.matmul + self.bias + self.activation + self.pool + self.other


Rule = Callable[[Layer, Shape, Shape, str], LayerCost]
RULES: dict[type[Layer], Rule] = {}


def rule(*types: type[Layer]) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
        return fn

    return register


def _act(kind: str | None, elements: int) -> int:
    return ACTIVATION_FLOPS[kind] * elements if kind else 0


@rule(Conv2D)
def _conv(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, Conv2D) and isinstance(layer.kernel, tuple)
    kh, kw = layer.kernel
    c_in = in_shape[0]
    out_elems = math.prod(out_shape)
    macs = out_elems * c_in * kh * kw
    return LayerCost(
        params=layer.filters * c_in * kh * kw + (layer.filters if layer.use_bias else 0),
        matmul=2 * macs,
        bias=out_elems if layer.use_bias else 0,
        activation=_act(layer.activation, out_elems),
        backward_weight=2 * macs,
        backward_input=2 * macs,
    )


@rule(Dense)
def _dense(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, Dense)
    rows = math.prod(in_shape[:-1])  # 1, or T for a time-distributed dense
    macs = rows * in_shape[-1] * layer.units
    out_elems = math.prod(out_shape)
    return LayerCost(
        params=in_shape[-1] * layer.units + (layer.units if layer.use_bias else 0),
        matmul=2 * macs,
        bias=out_elems if layer.use_bias else 0,
        activation=_act(layer.activation, out_elems),
        backward_weight=2 * macs,
        backward_input=2 * macs,
    )


@rule(LSTM)
def _lstm(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, LSTM)
    steps, features = in_shape
    h = layer.units
    biases = 1 if framework == "tensorflow" else 2
    input_macs = steps * features * 4 * h
    recurrent_macs = steps * h * 4 * h
    return LayerCost(
        params=4 * h * (features + h) + biases * 4 * h,
        matmul=2 * (input_macs + recurrent_macs),
        bias=steps * biases * 4 * h,
        activation=steps * 5 * h,  # three sigmoid gates, tanh(g), tanh(c)
        other=steps * 4 * h,  # f*c, i*g, their sum, o*tanh(c)
        backward_weight=2 * (input_macs + recurrent_macs),
        backward_input=2 * input_macs,
        backward_recurrent=2 * recurrent_macs,
    )


@rule(MaxPool2D, AvgPool2D)
def _pool(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, (MaxPool2D, AvgPool2D)) and isinstance(layer.pool, tuple)
    return LayerCost(pool=math.prod(out_shape) * layer.pool[0] * layer.pool[1])


@rule(GlobalAvgPool2D)
def _gap(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    return LayerCost(pool=math.prod(in_shape))


@rule(Activation)
def _activation(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, Activation)
    return LayerCost(activation=_act(layer.kind, math.prod(out_shape)))


@rule(LocalResponseNorm)
def _lrn(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, LocalResponseNorm)
    return LayerCost(other=math.prod(out_shape) * (2 * layer.size + 2))


@rule(Embedding)
def _embedding(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    assert isinstance(layer, Embedding)
    return LayerCost(params=layer.vocab * layer.dim)


@rule(Flatten, Dropout)
def _free(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str) -> LayerCost:
    return LayerCost()


def layer_cost(layer: Layer, in_shape: Shape, out_shape: Shape, framework: str = "tensorflow") -> LayerCost:
    return RULES[type(layer)](layer, in_shape, out_shape, canonical_framework(framework))


def has_weights(layer: Layer) -> bool:
    return isinstance(layer, (Conv2D, Dense, LSTM, Embedding))


def needs_input_grad(spec: ModelSpec) -> list[bool]:
    """Whether each layer must compute the gradient of its input (a layer with weights lies before it)."""
    flags: list[bool] = []
    seen_weights = False
    for layer in spec.layers:
        flags.append(seen_weights)
        # An Embedding's input is integer tokens: nothing after it changes that the gather has no input grad.
        seen_weights = seen_weights or has_weights(layer)
    return flags


def backward_flops(cost: LayerCost, needs_grad: bool) -> int:
    """Backward matmul FLOPs of one layer: weight gradient + input gradient (if needed) + recurrent part."""
    return cost.backward_weight + (cost.backward_input if needs_grad else 0) + cost.backward_recurrent
