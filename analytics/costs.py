"""Parameters and FLOPs over a model: each layer type's ``cost`` facet (``analytics/layers/``), the graph's input
gradients, and TensorFlow's profiler convention op by op.

Convention, everywhere in xfbench: **1 multiply-accumulate = 2 FLOPs**. The work of a layer is split into
separate terms so that totals reconcile with each framework's counter:

* ``matmul``: conv / dense / LSTM multiply-accumulates x 2 (what PyTorch's ``FlopCounterMode`` counts);
* ``bias``: one add per biased output element (TensorFlow's profiler adds these; FlopCounterMode does not);
* ``activation``: 1 FLOP per element per relu/sigmoid/tanh, 3 per element for softmax (exp, sum, divide);
* ``pool``: one FLOP per window element read (max: compare, average: add), per output element;
* ``other``: LRN (2 * size + 2 per element), LSTM cell element-wise products and sums (4h per step);
* ``norm``: BatchNorm (4 per element); ``add``: Add (one per element per extra input).

Backward (matmul terms only, like the counters): weight gradient = forward matmul FLOPs, input gradient
= forward matmul FLOPs, except for the first layer with weights, whose input needs no gradient. For an
LSTM the recurrent input gradient is always needed (back-propagation through time).

Parameter conventions differ by framework for the LSTM (Keras/TensorFlow keeps one bias per gate, 4h; PyTorch
and MXNet two, 8h) and BatchNorm (PyTorch 2C; Keras and Gluon count the running statistics too, 4C).
"""

from __future__ import annotations

import math

from xfbench.analytics.layers import (
    LSTM,
    AvgPool2D,
    Conv2D,
    Dense,
    GlobalAvgPool1D,
    GlobalAvgPool2D,
    LayerNorm,
    MaxPool2D,
    MultiHeadAttention,
)
from xfbench.analytics.layers.base import LayerCost
from xfbench.analytics.shapes import infer_shapes, input_shapes, layer_input_shapes
from xfbench.analytics.spec import Layer, ModelSpec, layer_inputs
from xfbench.analytics.vocab import canonical_backend
from xfbench.analytics.weights import output_kind

# The parameter conventions, Keras/TensorFlow's (the default) first; names and aliases are the vocabulary's.
FRAMEWORKS = ("tensorflow", "torch", "mxnet")
Shape = tuple[int, ...]

__all__ = [
    "FRAMEWORKS",
    "TF_PROFILER_OPS",
    "LayerCost",
    "backward_flops",
    "canonical_framework",
    "has_weights",
    "layer_cost",
    "needs_input_grad",
    "spec_costs",
    "tf_profiler_flops",
]


def canonical_framework(name: str) -> str:
    """A framework's canonical name from a user's spelling (``vocab.canonical_backend``'s aliases)."""
    try:
        return canonical_backend(name, FRAMEWORKS)
    except ValueError:
        raise ValueError(f"unknown framework {name!r}; allowed: {', '.join(FRAMEWORKS)}") from None


def layer_cost(
    layer: Layer,
    in_shape: Shape,
    out_shape: Shape,
    framework: str = "tensorflow",
    in_shapes: list[Shape] | None = None,
) -> LayerCost:
    """Per-sample cost of one layer, by its type's ``cost`` (``analytics/layers/``). ``in_shapes``: every input's
    shape (a layer with several inputs needs them; default ``[in_shape]``). A type with no rule is an error."""
    return layer.cost(in_shapes if in_shapes is not None else [in_shape], out_shape, canonical_framework(framework))


def spec_costs(spec: ModelSpec, framework: str = "tensorflow") -> list[LayerCost]:
    """:func:`layer_cost` of every layer of ``spec``, over its graph."""
    outs = infer_shapes(spec)
    return [
        layer_cost(layer, ins[0], out, framework, ins)
        for layer, ins, out in zip(spec.layers, layer_input_shapes(spec), outs)
    ]


def has_weights(layer: Layer) -> bool:
    """Whether the layer has trainable weights (so that the layers after it need input gradients)."""
    return layer.trainable


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

# The op types whose ``float_ops`` :func:`tf_profiler_flops` predicts: conv / dense / LSTM / attention-projection
# matmuls, attention's two batched products (BatchMatMulV2), bias adds, pooling, the global average pools' (and
# the loss's and LayerNorm's statistics') Mean, and in training their gradient ops. The profiler also counts
# element-wise ops (the LSTM cell's Add/Mul, dropout's masks, the loss's arithmetic, LayerNorm's normalization,
# GELU's arithmetic, attention's scaling and mask), Softmax and the gradient accumulation (AddN); those are
# outside this set.
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

    The transformer's layers (Keras 3 as ``backends/tensorflow/model.py`` builds them):

    * MultiHeadAttention (query ``(T, F)``, key/value ``(S, Fk)``, ``H`` heads of ``K``): four Dense projections,
      each a ``MatMul`` of ``2 * rows * in * out`` (rows ``N*T`` for query and output, ``N*S`` for key and
      value) and a ``BiasAdd`` (``use_bias``, more than one unit); ``Q K^T`` and ``P V`` are ``BatchMatMulV2``,
      ``2*N*H*T*S*K`` each (the full ``T x S`` products, causal or not). Training: each projection's weight
      gradient; the input gradients of query (key, value) where a layer with weights lies before the query
      (key/value) input, the output projection's always; ``BiasAddGrad`` ``elements - units``; four
      ``BatchMatMulV2`` gradients: the two ``dX`` products are ``2*N*H*T*S*K`` each, the two ``dY``
      products (``adj_x``: ``Q^T``-side ``dK = dS^T Q`` and ``dV = P^T dO``) are priced by the registry,
      which reads ``transpose_a`` (a ``MatMul`` attribute; BatchMatMulV2 names it ``adj_x``), from the
      un-transposed ``a`` operand's last axis ``S`` instead of ``T``: ``2*N*H*S*S*K`` each (equal to the
      true count for self-attention, ``S == T``). The scaling (``Mul``), the mask (``AddV2``), ``Softmax``
      and its gradient are outside this set.
    * LayerNorm: Keras 3 takes ``tf.nn.moments`` (two ``Mean``: one per input element each) and normalizes
      with element-wise ops (``AddV2``, ``Mul``, ``Rsqrt``, ``Neg``; the shift is an ``AddV2``, no BiasAdd);
      its gradient has no op of this set.
    * GlobalAvgPool1D: ``Mean``, one per input element (its gradient a RealDiv). PositionEmbedding: an
      ``AddV2`` (gradient ``Sum``), outside this set. A tied Dense is a Dense (one ``MatMul`` on the
      embedding's matrix with ``transpose_b``; the two gradients into the embedding are summed by ``AddN``,
      outside this set).

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
    all_ins = layer_input_shapes(spec)
    sources = layer_inputs(spec)
    grads = needs_input_grad(spec)
    # weighted[j]: a layer with weights lies on or before layer j (so its output needs a gradient)
    weighted = [g or has_weights(layer) for g, layer in zip(grads, spec.layers)]
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
        elif isinstance(layer, MultiHeadAttention):
            t, f, s, fk, h, k = layer.sizes(all_ins[i])
            hk = h * k
            q_src, kv_src = sources[i][0], sources[i][-1]
            q_grad = q_src >= 0 and weighted[q_src]
            kv_grad = kv_src >= 0 and weighted[kv_src]
            projections = (  # (forward matmul FLOPs, input gradient needed): query, key, value, output
                (2 * n * t * f * hk, q_grad),
                (2 * n * s * fk * hk, kv_grad),
                (2 * n * s * fk * hk, kv_grad),
                (2 * n * t * hk * f, True),
            )
            for matmul, needs_dx in projections:
                # forward; in training the weight gradient and, where needed, the input gradient
                out["MatMul"] += matmul * ((2 + needs_dx) if training else 1)
            product = 2 * n * h * t * s * k  # one of Q K^T, P V
            out["BatchMatMulV2"] += 2 * product
            if training:
                out["BatchMatMulV2"] += 2 * product + 2 * (2 * n * h * s * s * k)
            if layer.use_bias:
                for elems, units in ((n * t * hk, hk), (n * s * hk, hk), (n * s * hk, hk), (n * t * f, f)):
                    if units > 1:
                        out["BiasAdd"] += elems
                        out["BiasAddGrad"] += elems - units if training else 0
        elif isinstance(layer, LayerNorm):
            out["Mean"] += 2 * n * math.prod(in_shape)  # tf.nn.moments: the mean, and the squared deviations'
        elif isinstance(layer, (GlobalAvgPool2D, GlobalAvgPool1D)):
            out["Mean"] += n * math.prod(in_shape)
    if training:
        kind = output_kind(spec)
        out["Mean"] += n * math.prod(outs[-1] if kind == "regression" else outs[-1][:-1])
    return out
