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

from xfbench.analytics.shapes import infer_shapes, input_shapes, layer_input_shapes
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
    layer_inputs,
)
from xfbench.analytics.vocab import canonical_backend
from xfbench.analytics.weights import output_kind

# The parameter conventions, Keras/TensorFlow's (the default) first; names and aliases are the vocabulary's.
FRAMEWORKS = ("tensorflow", "torch", "mxnet")
ACTIVATION_FLOPS = {"relu": 1, "sigmoid": 1, "tanh": 1, "softmax": 3}

Shape = tuple[int, ...]


def canonical_framework(name: str) -> str:
    """A framework's canonical name from a user's spelling (``vocab.canonical_backend``'s aliases)."""
    try:
        return canonical_backend(name, FRAMEWORKS)
    except ValueError:
        raise ValueError(f"unknown framework {name!r}; allowed: {', '.join(FRAMEWORKS)}") from None


@dataclass(frozen=True)
class LayerCost:
    """Per-sample cost of one layer (FLOPs for one sample; multiply by the batch)."""

    params: int = 0
    matmul: int = 0
    bias: int = 0
    activation: int = 0
    pool: int = 0
    other: int = 0
    norm: int = 0  # BatchNorm: normalize, scale and shift (inference convention; see analytics/layers/batchnorm.py)
    add: int = 0  # Add: element-wise sums of the inputs
    backward_weight: int = 0
    backward_input: int = 0  # gradient w.r.t. the layer's input; skipped for the first layer with weights
    backward_recurrent: int = 0  # LSTM: gradient w.r.t. h_{t-1}, always needed

    @property
    def forward_all(self) -> int:
        return self.matmul + self.bias + self.activation + self.pool + self.other + self.norm + self.add


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


def layer_cost(
    layer: Layer,
    in_shape: Shape,
    out_shape: Shape,
    framework: str = "tensorflow",
    in_shapes: list[Shape] | None = None,
) -> LayerCost:
    """Per-sample cost of one layer. ``in_shapes``: every input's shape (a layer with several inputs needs them;
    default ``[in_shape]``). A type with no rule is an error, never a zero."""
    fw = canonical_framework(framework)
    unit = getattr(layer, "cost", None)
    if unit is not None:
        return unit(in_shapes if in_shapes is not None else [in_shape], out_shape, fw)  # type: ignore[no-any-return]
    rule_fn = RULES.get(type(layer))
    if rule_fn is None:
        raise ValueError(f"no cost rule for layer type {layer.type}")
    return rule_fn(layer, in_shape, out_shape, fw)


def spec_costs(spec: ModelSpec, framework: str = "tensorflow") -> list[LayerCost]:
    """:func:`layer_cost` of every layer of ``spec``, over its graph."""
    outs = infer_shapes(spec)
    return [
        layer_cost(layer, ins[0], out, framework, ins)
        for layer, ins, out in zip(spec.layers, layer_input_shapes(spec), outs)
    ]


#: The types with trainable weights among those that are not units (a unit says so with ``weight_slots``).
_WEIGHTED = (Conv2D, Dense, LSTM, Embedding)


def has_weights(layer: Layer) -> bool:
    """Whether the layer has trainable weights (so that the layers after it need input gradients)."""
    if isinstance(layer, _WEIGHTED):
        return True
    slots = getattr(layer, "weight_slots", None)
    if slots is None:
        return False
    # a unit's trainable slots do not depend on the input's size: ask with a 1-channel placeholder
    return any(trainable for _, _, trainable in slots([(1, 1, 1)]))


def needs_input_grad(spec: ModelSpec) -> list[bool]:
    """Whether each layer must compute the gradient of its input (a layer with weights lies before it on some
    path from the model's input)."""
    flags: list[bool] = []
    # seen[i]: a layer with weights lies on or before layer i on some path from the input
    seen: list[bool] = []
    for layer, srcs in zip(spec.layers, layer_inputs(spec)):
        before = any(seen[j] for j in srcs if j >= 0)
        flags.append(before)
        # An Embedding's input is integer tokens: nothing after it changes that the gather has no input grad.
        seen.append(before or has_weights(layer))
    return flags


def backward_flops(cost: LayerCost, needs_grad: bool) -> int:
    """Backward matmul FLOPs of one layer: weight gradient + input gradient (if needed) + recurrent part."""
    return cost.backward_weight + (cost.backward_input if needs_grad else 0) + cost.backward_recurrent


# --------------------------------------------------------------------------------------------------------------
# TensorFlow's profiler, op by op
# --------------------------------------------------------------------------------------------------------------

# The op types whose ``float_ops`` :func:`tf_profiler_flops` predicts: conv / dense / LSTM matmuls, bias adds,
# pooling, the global average pool's (and the loss's) Mean, and in training their gradient ops. The profiler
# also counts element-wise ops (the LSTM cell's Add/Mul, dropout's masks, the loss's arithmetic), Softmax and
# the gradient accumulation across LSTM steps (AddN); those are outside this set.
TF_PROFILER_OPS: tuple[str, ...] = (
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "MatMul",
    "BatchMatMulV2",
    "BiasAdd",
    "BiasAddGrad",
    "MaxPool",
    "MaxPoolGrad",
    "AvgPool",
    "AvgPoolGrad",
    "Mean",
)


def _tf_conv_grad(batch: int, tf_in: Shape, kernel_elems: int, stride: tuple[int, int]) -> int:
    """TensorFlow's registry rule for Conv2DBackpropInput and Conv2DBackpropFilter (the two are equal).

    ``2 * elements(conv input) * elements(kernel) / (C_in * stride_h * stride_w)``, where the conv input is
    the tensor the Conv2D op reads (after any explicit ZeroPadding2D), evaluated in floating point and
    truncated to an integer as the profiler's logger does (``int(stats.value)``). It equals the forward
    count only where ``H_in * W_in / (s_h * s_w) == H_out * W_out`` (``same`` padding with a stride dividing
    the input); ``valid`` or explicit padding makes it larger, a ``same`` stride that does not divide the
    input makes it smaller.
    """
    c_in, h, w = tf_in
    return int(2 * (batch * h * w * c_in) * kernel_elems / (c_in * stride[0] * stride[1]))


def tf_profiler_flops(
    spec: ModelSpec, batch_size: int, phase: str = "inference", skip_layers: tuple[int, ...] = ()
) -> dict[str, int]:
    """What TensorFlow's v1 profiler reports per op type in :data:`TF_PROFILER_OPS`, for one batch.

    The rules are the profiler's registry (``tensorflow/python/profiler/internal/flops_registry.py`` and the
    ``RegisterStatistics`` of Conv2D/BiasAdd in ``nn_ops.py``) applied to the graph xfbench's Keras model
    builds (``backends/tensorflow/model.py``), for ``N = batch_size``:

    * Conv2D ``2*N*Ho*Wo*Cout*Cin*kh*kw``; MatMul ``2*M*K*N``; BiasAdd one per output element; MaxPool and
      AvgPool ``kh*kw`` per output element; Mean (global average pool) one per input element.
      Keras adds a bias with ``BiasAdd`` only when it has more than one element: a one-filter conv's or a
      one-unit dense's bias is an ``AddV2`` (its gradient a ``Sum``), outside this set.
    * Training adds the loss's ``Mean`` (one per per-sample loss value: ``N`` for a classifier, ``N*T`` on
      a sequence, ``N*elements`` for the mean squared error) and the gradient ops:
      - Conv2DBackpropInput and Conv2DBackpropFilter, each priced from the conv's (padded) input divided
        by the stride area (:func:`_tf_conv_grad`); TensorFlow's Conv2D gradient emits both, so the first
        conv's input gradient is counted too;
      - MatMul: the weight gradient, and the input gradient only where a layer with weights lies before
        (TensorFlow's MatMul gradient skips inputs the tape does not need);
      - LSTM: per step the two weight gradients, the input gradient where needed, and the recurrent gradient
        for ``T - 1`` steps (the initial state is a constant, so step 0's ``h U`` has no input gradient);
      - BiasAddGrad, a sum reduction: ``elements - C`` (per step for an LSTM);
      - MaxPoolGrad ``(kh*kw + 1)`` per pooled output; AvgPoolGrad ``2*kh*kw`` per pooled output; a pool
        gets a gradient only where a layer with weights lies before it. (The global average pool's gradient
        is a RealDiv, outside this set.)

    ``skip_layers``: layer indices the counter does not count (their forward and gradient ops are left out).
    """
    if phase not in ("inference", "training"):
        raise ValueError(f"unknown phase {phase!r}; allowed: inference, training")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    n = batch_size
    training = phase == "training"
    outs = infer_shapes(spec)
    ins = input_shapes(spec)
    grads = needs_input_grad(spec)
    out: dict[str, int] = dict.fromkeys(TF_PROFILER_OPS, 0)
    for i, (layer, in_shape, out_shape) in enumerate(zip(spec.layers, ins, outs)):
        if i in skip_layers:
            continue
        out_elems = n * math.prod(out_shape)
        if isinstance(layer, Conv2D):
            assert isinstance(layer.kernel, tuple) and isinstance(layer.stride, tuple)
            c_in, h, w = in_shape
            pad = layer.padding if isinstance(layer.padding, int) else 0
            kernel_elems = layer.kernel[0] * layer.kernel[1] * c_in * layer.filters
            bias = layer.use_bias and layer.filters > 1
            out["Conv2D"] += 2 * out_elems * c_in * layer.kernel[0] * layer.kernel[1]
            out["BiasAdd"] += out_elems if bias else 0
            if training:
                backprop = _tf_conv_grad(n, (c_in, h + 2 * pad, w + 2 * pad), kernel_elems, layer.stride)
                out["Conv2DBackpropInput"] += backprop
                out["Conv2DBackpropFilter"] += backprop
                out["BiasAddGrad"] += out_elems - layer.filters if bias else 0
        elif isinstance(layer, Dense):
            bias = layer.use_bias and layer.units > 1
            matmul = 2 * n * math.prod(in_shape) * layer.units
            out["MatMul"] += matmul
            out["BiasAdd"] += out_elems if bias else 0
            if training:
                out["MatMul"] += matmul * (2 if grads[i] else 1)
                out["BiasAddGrad"] += out_elems - layer.units if bias else 0
        elif isinstance(layer, LSTM):
            steps, features = in_shape
            gates = 4 * layer.units
            x_step, h_step = 2 * n * features * gates, 2 * n * layer.units * gates
            out["MatMul"] += steps * (x_step + h_step)
            out["BiasAdd"] += steps * n * gates
            if training:
                out["MatMul"] += steps * (x_step + h_step)  # weight gradients, every step
                out["MatMul"] += steps * x_step if grads[i] else 0  # input gradient
                out["MatMul"] += (steps - 1) * h_step  # recurrent gradient: h_0 is a constant
                out["BiasAddGrad"] += steps * (n * gates - gates)
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            assert isinstance(layer.pool, tuple)
            area = layer.pool[0] * layer.pool[1]
            kind = "MaxPool" if isinstance(layer, MaxPool2D) else "AvgPool"
            out[kind] += area * out_elems
            if training and grads[i]:
                out[kind + "Grad"] += (area + 1) * out_elems if kind == "MaxPool" else 2 * area * out_elems
        elif isinstance(layer, GlobalAvgPool2D):
            out["Mean"] += n * math.prod(in_shape)
    if training:
        kind = output_kind(spec)
        out["Mean"] += n * math.prod(outs[-1] if kind == "regression" else outs[-1][:-1])
    return out
