"""FLOPs counted from MXNet's own symbol graph (MXNet has no FLOP counter).

:func:`model_symbol` obtains the ``Symbol`` Gluon builds for the hybridized net: calling a
``HybridBlock`` on ``mx.sym.var("data")`` runs the same code path that builds the graph ``net.export``
writes (``HybridBlock._get_graph``), without running a forward pass. :func:`count_flops` walks its
JSON, infers every node's shapes with MXNet's own shape inference for the given batch size, and counts
each operator MXNet actually built with its rule: a small function in the registry :data:`SUPPORTED_OPS`
(operator name -> rule, as fvcore's ``_DEFAULT_SUPPORTED_OPS``), its formula in its docstring; an operator
without an entry gets :data:`DEFAULT_RULE`:

* ``Convolution``, ``FullyConnected``: :func:`matmul_rule`, ``2 * N * Hout * Wout * Cout * (Cin / groups) *
  kh * kw`` (2 per MAC) or ``2 * rows * in * out``; bias adds under ``"<op>.bias"``.
* ``RNN`` (mode ``lstm``: 4 gates; ``gru``: 3; ``rnn_*``: 1): :func:`rnn_rule`, per time step and sample
  ``2 * G*h * in`` for the input matrix product plus ``2 * G*h * h`` for the recurrent one; its two biases
  (``2 * G*h`` = 8h adds for an LSTM) under ``"RNN.bias"``. The gates' element-wise math is not counted.
* ``batch_dot`` (attention's ``Q K^T`` and ``P V``): :func:`batch_dot_rule`, ``2 * B * M * N * K`` (the
  full products, causal or not: the mask is an added ``(T, S)`` of 0/-inf); backward: one ``batch_dot`` of the
  same size per input that depends on a parameter (``"batch_dot.grad_lhs"``, ``"batch_dot.grad_rhs"``).
* ``Pooling``: :func:`pooling_rule`, one FLOP per window element per output (``kh * kw`` or ``H * W`` for
  global pooling); ``mean`` (GlobalAvgPool1D): :func:`reduce_mean_rule`, one per input element.
* ``Dropout``: :func:`dropout_rule`, one FLOP per output element, in the training phase only.
* data movement (``Reshape``, ``Flatten``, ``SwapAxis``, ``Pad``, ``_zeros``, ``Embedding``,
  ``_contrib_arange_like``...): :func:`free_rule`, 0. ``arange_like`` reads only its input's shape, so what
  follows it (the causal mask's ``broadcast_greater``, ``log``) depends on no parameter and has no gradient.
* every other operator that computes (``Activation``, ``softmax``, ``LRN``, ``elemwise_div``...):
  :data:`DEFAULT_RULE` = :func:`elementwise_rule`, one FLOP per output element under its MXNet name.

Graph specs (:mod:`backends.mxnet.model` walks the spec's graph) are counted on the same symbol graph; the
layer types without a matrix product fall to the rules above: an ``Add`` of ``k`` inputs is ``k - 1``
``elemwise_add`` ops, one FLOP per output element each (= the analytic ``add`` column; its ``.grad`` term in
training when any of its inputs depends on a parameter); a ``Concatenate`` is
``Concat``, data movement (0, as analytically); a ``BatchNorm`` is the ``BatchNorm`` operator under
:data:`DEFAULT_RULE`, one FLOP per output element (and ``"BatchNorm.grad"`` as many again in training when its
input depends on a parameter), not the analytic ``norm`` column's 4 per element (8 in a training step's forward).
None of them is in ``total`` nor in the analytic count it is compared with (matrix products only), so none is
listed in ``unsupported``: that names a weighted spec layer whose matrix product the walk did not find.

Transformer layers: a ``MultiHeadAttention`` is four ``FullyConnected`` and two ``batch_dot``; a tied ``Dense`` is a
``FullyConnected`` reading the embedding's matrix (its ``grad_weight`` adds into that one gradient); ``LayerNorm``
is the ``LayerNorm`` operator under :data:`DEFAULT_RULE` (1 per element, as ``BatchNorm``; the analytic ``norm``
column has 8); ``gelu`` is ``LeakyReLU`` (1 per element; the analytic column has 5), ``gelu_tanh`` nine
element-wise ops (9 per element, as the analytic column).

``total`` is the matrix-product work only: ``Convolution + FullyConnected + RNN + batch_dot`` (2 per MAC, no
bias, no activation/pooling); ``by_op`` has all of the above.

Training (``phase="training"``) = forward + backward. Backward of ``Convolution``/``FullyConnected``:
weight gradient (2 per MAC, ``"<op>.grad_weight"``) plus input gradient (2 per MAC,
``"<op>.grad_input"``), the latter omitted when the op's data input does not depend on any parameter
(e.g. it is the graph input ``data``: no gradient is propagated to it). ``RNN``: weight gradients of both
products, the gradient through the recurrent product (``"RNN.grad_state"``), and the input gradient under
the same rule. Bias gradients (``"<op>.bias_grad"``, one add per output element) and other operators'
backward (``"<op>.grad"``, one per output element, when their input depends on a parameter) are in
``by_op`` but not in ``total``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mxnet as mx
from xfbench.analytics.layers.transformer import MultiHeadAttention
from xfbench.analytics.spec import LSTM, Conv2D, Dense, ModelSpec
from xfbench.backends.base import FlopCount

COUNTER = "mxnet-symbol-graph"
_MATMUL_OPS = ("Convolution", "FullyConnected", "RNN", "batch_dot")
# Operators all of whose inputs are data (an Add's ``elemwise_add``): a gradient flows back when any input
# depends on a parameter, not only input 0 (the spec's Add may name the model input first).
_ALL_DATA_OPS = ("elemwise_add", "_Plus", "add_n", "ElementWiseSum")
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

# The counter's total is already what the analytic count predicts under its convention.
ALIGNED_OPS: tuple[str, ...] | None = None


@dataclass(frozen=True)
class OpNode:
    """One operator node of the symbol graph, as a rule sees it.

    ``out_shape``: its first output's shape; ``in_dep``: whether its data input (input 0) depends on a
    trainable parameter, i.e. a gradient must flow back into that input; ``training``: the phase counted is
    forward + backward. :meth:`input_shape` gives the shape of input ``i`` (0: data, 1: weight, ...).
    """

    op: str
    attrs: dict[str, str]
    out_shape: tuple[int, ...]
    in_dep: bool
    training: bool
    inputs: tuple[tuple[int, int], ...]  # (source node, output index) per input
    graph_shapes: list[list[tuple[int, ...]]]  # per node of the graph, the shapes of its outputs
    # per input, whether it depends on a trainable parameter (rules with several data inputs: batch_dot);
    # empty: only ``in_dep`` (input 0) is known
    in_deps: tuple[bool, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.out_shape)

    def input_shape(self, i: int) -> tuple[int, ...]:
        src, out = self.inputs[i]
        return self.graph_shapes[src][out]


# One term of a rule: (key in ``by_op``, FLOPs, whether they count toward ``total``).
Term = tuple[str, int, bool]
Rule = Callable[[OpNode], list[Term]]


def matmul_rule(node: OpNode) -> list[Term]:
    """``Convolution`` and ``FullyConnected``: ``2 * numel(out) * prod(weight.shape[1:])`` FLOPs (2 per MAC;
    ``weight.shape[1:]`` is ``(Cin/groups, kh, kw)`` or ``(in,)``), in ``total``. Bias adds (``numel(out)``,
    unless ``no_bias``) under ``"<op>.bias"``, not in ``total``.

    Training adds ``"<op>.grad_weight"`` = the forward FLOPs and, when ``in_dep``, ``"<op>.grad_input"`` = the
    forward FLOPs again (both in ``total``), and ``"<op>.bias_grad"`` = ``numel(out)`` (not in ``total``).
    """
    flops = 2 * node.numel * math.prod(node.input_shape(1)[1:])
    has_bias = node.attrs.get("no_bias", "False") != "True"
    terms: list[Term] = [(node.op, flops, True)]
    if has_bias:
        terms.append((f"{node.op}.bias", node.numel, False))
    if node.training:
        terms.append((f"{node.op}.grad_weight", flops, True))
        if node.in_dep:
            terms.append((f"{node.op}.grad_input", flops, True))
        if has_bias:
            terms.append((f"{node.op}.bias_grad", node.numel, False))
    return terms


def batch_dot_rule(node: OpNode) -> list[Term]:
    """``batch_dot`` (attention's ``Q K^T`` and ``P V``): ``out (B..., M, N)``, with the contracted length ``K``
    read from the first input, ``(B..., M, K)`` or, with ``transpose_a``, ``(B..., K, M)``:
    ``2 * numel(out) * K`` = ``2 * B * M * N * K`` FLOPs (2 per MAC), in ``total``.

    Training adds, per input that depends on a parameter (``in_deps``; ``in_dep`` for both when unknown), its
    gradient, itself a ``batch_dot`` of the same ``2 * B * M * N * K`` FLOPs: ``"batch_dot.grad_lhs"`` and
    ``"batch_dot.grad_rhs"``, in ``total``.
    """
    lhs = node.input_shape(0)
    contracted = lhs[-2] if node.attrs.get("transpose_a", "False") in ("True", "1", "true") else lhs[-1]
    flops = 2 * node.numel * contracted
    terms: list[Term] = [(node.op, flops, True)]
    if node.training:
        deps = node.in_deps or (node.in_dep, node.in_dep)
        if deps[0]:
            terms.append((f"{node.op}.grad_lhs", flops, True))
        if deps[1]:
            terms.append((f"{node.op}.grad_rhs", flops, True))
    return terms


def reduce_mean_rule(node: OpNode) -> list[Term]:
    """``mean`` (GlobalAvgPool1D's mean over time): one FLOP per input element, ``numel(input)`` (as
    :func:`pooling_rule` prices a global pool); training adds ``"mean.grad"``, as many again, when ``in_dep``.
    Not in ``total``."""
    flops = math.prod(node.input_shape(0))
    terms: list[Term] = [(node.op, flops, False)]
    if node.training and node.in_dep:
        terms.append((f"{node.op}.grad", flops, False))
    return terms


def _rnn_macs(attrs: dict[str, str], data_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(input MACs of layer 0, input MACs of later layers, recurrent MACs, bias adds)`` of a fused RNN op.

    ``data_shape`` is ``(T, N, F)`` (the operator's own TNC layout).
    """
    t, n, f = data_shape
    h = int(attrs["state_size"])
    layers = int(attrs.get("num_layers", "1"))
    dirs = 2 if attrs.get("bidirectional", "False") == "True" else 1
    gates = _GATES[attrs.get("mode", "lstm")]
    steps = t * n * dirs
    first_input = steps * gates * h * f
    later_input = steps * gates * h * dirs * h * (layers - 1)
    recurrent = steps * gates * h * h * layers
    bias = steps * 2 * gates * h * layers
    return first_input, later_input, recurrent, bias


def rnn_rule(node: OpNode) -> list[Term]:
    """``RNN`` (fused; data ``(T, N, F)``, ``G`` gates, ``h`` = ``state_size``, ``D`` directions, ``L`` layers):
    per time step, sample and direction ``2 * G*h * F`` for layer 0's input product, ``2 * G*h * D*h`` per later
    layer's, ``2 * G*h * h`` per layer for the recurrent product: all in ``total``. Its two biases
    (``2 * G*h`` per layer, 8h adds for an LSTM) under ``"RNN.bias"``, not in ``total``.

    Training adds ``"RNN.grad_weight"`` = the forward FLOPs, ``"RNN.grad_state"`` = 2 x (recurrent + later
    layers' input MACs), and, when ``in_dep``, ``"RNN.grad_input"`` = 2 x layer 0's input MACs (all in
    ``total``); ``"RNN.bias_grad"`` = half the bias adds (not in ``total``).
    """
    first_in, later_in, recurrent, bias = _rnn_macs(node.attrs, node.input_shape(0))
    flops = 2 * (first_in + later_in + recurrent)
    terms: list[Term] = [(node.op, flops, True), ("RNN.bias", bias, False)]
    if node.training:
        terms += [("RNN.grad_weight", flops, True), ("RNN.grad_state", 2 * (recurrent + later_in), True)]
        if node.in_dep:
            terms.append(("RNN.grad_input", 2 * first_in, True))
        terms.append(("RNN.bias_grad", bias // 2, False))
    return terms


def pooling_rule(node: OpNode) -> list[Term]:
    """``Pooling``: ``numel(out) * window`` FLOPs, one per window element per output; the window is
    ``kh * kw`` or, for global pooling, the input's ``H * W``. Training adds ``"Pooling.grad"``, as many again,
    when ``in_dep``. Not in ``total``."""
    if node.attrs.get("global_pool", "False") == "True":
        area = math.prod(node.input_shape(0)[2:])
    else:
        area = math.prod(int(v) for v in node.attrs["kernel"].strip("()").split(",") if v.strip())
    terms: list[Term] = [(node.op, node.numel * area, False)]
    if node.training and node.in_dep:
        terms.append((f"{node.op}.grad", node.numel * area, False))
    return terms


def dropout_rule(node: OpNode) -> list[Term]:
    """``Dropout``: in the training phase only (inference skips it), ``numel(out)`` FLOPs, and
    ``"Dropout.grad"``, as many again, when ``in_dep``. Not in ``total``."""
    if not node.training:
        return []
    return elementwise_rule(node)


def elementwise_rule(node: OpNode) -> list[Term]:
    """Any other computing operator (``Activation``, ``softmax``, ``LRN``, ``elemwise_div``...): ``numel(out)``
    FLOPs, one per output element, under its MXNet name; training adds ``"<op>.grad"``, as many again, when
    ``in_dep``. Not in ``total``."""
    terms: list[Term] = [(node.op, node.numel, False)]
    if node.training and node.in_dep:
        terms.append((f"{node.op}.grad", node.numel, False))
    return terms


def free_rule(node: OpNode) -> list[Term]:
    """Operators that only move, reshape, pad, cast or create data: 0 FLOPs."""
    return []


# Operators that only move, reshape, pad or create data: no arithmetic.
_FREE_OPS = (
    "Reshape",
    "reshape",
    "Flatten",
    "flatten",
    "SwapAxis",
    "swapaxes",
    "transpose",
    "expand_dims",
    "squeeze",
    "slice_axis",
    "slice",
    "_slice",
    "Pad",
    "pad",
    "_zeros",
    "_ones",
    "zeros_like",
    "ones_like",
    "_rnn_param_concat",
    "Concat",
    "concat",
    "_copy",
    "identity",
    "BlockGrad",
    "stop_gradient",
    "Cast",
    "cast",
    "Embedding",
    "_contrib_arange_like",
)
# Operators that read only their input's shape (attention's causal mask is built from ``arange_like``): their
# value depends on no parameter, whatever their input does.
_SHAPE_ONLY_OPS = ("_contrib_arange_like", "zeros_like", "ones_like")
# Operator name -> its rule (as fvcore's ``_DEFAULT_SUPPORTED_OPS``); any other operator gets DEFAULT_RULE.
SUPPORTED_OPS: dict[str, Rule] = {
    "Convolution": matmul_rule,
    "FullyConnected": matmul_rule,
    "RNN": rnn_rule,
    "batch_dot": batch_dot_rule,
    "mean": reduce_mean_rule,
    "Pooling": pooling_rule,
    "Dropout": dropout_rule,
    **dict.fromkeys(_FREE_OPS, free_rule),
}
DEFAULT_RULE: Rule = elementwise_rule


def model_symbol(model: Any) -> mx.sym.Symbol:
    """The model's symbol graph with one input named ``data`` (the graph ``net.export`` writes)."""
    return model(mx.sym.var("data"))


def _node_output_shapes(
    nodes: list[dict[str, Any]], internals: mx.sym.Symbol, shapes: list[tuple[int, ...]]
) -> list[list[tuple[int, ...]]]:
    """Per JSON node, the shapes of its outputs (``get_internals`` lists them node by node, in order)."""
    names = internals.list_outputs()
    out: list[list[tuple[int, ...]]] = []
    pos = 0
    for node in nodes:
        name = node["name"]
        if node["op"] == "null":
            if names[pos] != name:
                raise RuntimeError(f"symbol walk out of step at variable {name!r} (internals has {names[pos]!r})")
            out.append([tuple(shapes[pos])])
            pos += 1
            continue
        mine: list[tuple[int, ...]] = []
        while pos < len(names) and names[pos].startswith(name + "_") and names[pos].endswith("output"):
            mine.append(tuple(shapes[pos]))
            pos += 1
        if not mine:
            raise RuntimeError(f"symbol walk found no output for operator {name!r}")
        out.append(mine)
    if pos != len(names):
        raise RuntimeError(f"symbol walk consumed {pos} of {len(names)} internal outputs")
    return out


def _param_dependence(nodes: list[dict[str, Any]], data_name: str) -> list[bool]:
    """Per node: whether its value depends on a trainable parameter (so a gradient must flow into it)."""
    dep: list[bool] = []
    for node in nodes:
        if node["op"] == "null":
            dep.append(node["name"] != data_name)
        elif node["op"] in _SHAPE_ONLY_OPS:
            dep.append(False)
        else:
            dep.append(any(dep[src] for src, _, _ in node["inputs"]))
    return dep


def count_flops(model: Any, spec: ModelSpec, batch_size: int, phase: str = "inference") -> FlopCount:
    """FLOPs of one batch of ``batch_size`` counted on the model's MXNet symbol graph (see module docstring)."""
    if phase not in ("inference", "training"):
        raise ValueError(f"phase {phase!r} is not one of: inference, training")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    training = phase == "training"
    sym = model_symbol(model)
    internals = sym.get_internals()
    _, shapes, _ = internals.infer_shape(data=(batch_size, *spec.input_shape))
    if shapes is None:
        raise RuntimeError("MXNet could not infer the symbol graph's shapes")
    nodes = json.loads(sym.tojson())["nodes"]
    node_shapes = _node_output_shapes(nodes, internals, shapes)
    needs_grad = _param_dependence(nodes, "data")

    by_op: dict[str, int] = {}
    total = 0
    seen_layers: set[int] = set()
    for idx, node in enumerate(nodes):
        op = node["op"]
        if op == "null":
            continue
        name = node["name"]
        inputs = node["inputs"]
        if op in _MATMUL_OPS and name.startswith("l") and name[1:].split("_", 1)[0].isdigit():
            seen_layers.add(int(name[1:].split("_", 1)[0]))
        op_node = OpNode(
            op=op,
            attrs=node.get("attrs", {}),
            out_shape=node_shapes[idx][0],
            in_dep=bool(inputs)
            and (any(needs_grad[src] for src, _, _ in inputs) if op in _ALL_DATA_OPS else needs_grad[inputs[0][0]]),
            training=training,
            inputs=tuple((src, out) for src, out, _ in inputs),
            graph_shapes=node_shapes,
            in_deps=tuple(needs_grad[src] for src, _, _ in inputs),
        )
        for key, value, in_total in SUPPORTED_OPS.get(op, DEFAULT_RULE)(op_node):
            if value:
                by_op[key] = by_op.get(key, 0) + int(value)
            if in_total:
                total += value

    # A weighted spec layer without a matrix-product operator of its own would be work the walk missed.
    unsupported = tuple(
        f"{i}:{layer.type}"
        for i, layer in enumerate(spec.layers)
        if isinstance(layer, (Conv2D, Dense, LSTM, MultiHeadAttention)) and i not in seen_layers
    )
    convention = (
        "MXNet symbol graph walked by xfbench: total = Convolution + FullyConnected + RNN + batch_dot matrix "
        "products, "
        "2 FLOPs per MAC, no bias, no activations/pooling"
    )
    if training:
        convention += (
            "; training = forward + backward (weight gradient + input gradient per conv/dense/RNN, the "
            "input gradient omitted where the op's input does not depend on a parameter, e.g. the graph input; "
            "batch_dot: one gradient batch_dot per input that depends on a parameter)"
        )
    return FlopCount(counter=COUNTER, convention=convention, total=int(total), by_op=by_op, unsupported=unsupported)
