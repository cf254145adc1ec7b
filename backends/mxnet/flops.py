"""FLOPs counted from MXNet's own symbol graph (MXNet has no FLOP counter).

:func:`model_symbol` obtains the ``Symbol`` Gluon builds for the hybridized net: calling a
``HybridBlock`` on ``mx.sym.var("data")`` runs the same code path that builds the graph ``net.export``
writes (``HybridBlock._get_graph``), without running a forward pass. :func:`count_flops` walks its
JSON, infers every node's shapes with MXNet's own shape inference for the given batch size, and counts
each operator MXNet actually built:

* ``Convolution``: ``2 * N * Hout * Wout * Cout * (Cin / groups) * kh * kw`` (2 per MAC); its bias adds
  (``N * Hout * Wout * Cout``, when ``no_bias`` is false) go to ``"Convolution.bias"``.
* ``FullyConnected``: ``2 * rows * in * out`` and ``"FullyConnected.bias"``: ``rows * out``.
* ``RNN`` (mode ``lstm``: 4 gates; ``gru``: 3; ``rnn_*``: 1): per time step and sample, ``2 * G*h * in``
  for the input matrix product plus ``2 * G*h * h`` for the recurrent one; its two biases
  (``2 * G*h`` = 8h adds for an LSTM) go to ``"RNN.bias"``. The gates' element-wise math is not counted.
* ``Pooling``: one FLOP per window element per output (``kh * kw`` or ``H * W`` for global pooling).
* every other operator that computes: one FLOP per output element, under its MXNet name (``Activation``,
  ``softmax``, ``LRN``, ``elemwise_div``...); ``Dropout`` only in the training phase.
* data movement (``Reshape``, ``Flatten``, ``SwapAxis``, ``Pad``, ``_zeros``, ``Embedding``...): 0.

``total`` is the matrix-product work only: ``Convolution + FullyConnected + RNN`` (2 per MAC, no bias,
no activation/pooling); ``by_op`` has all of the above.

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
from typing import Any

import mxnet as mx
from xfbench.analytics.spec import LSTM, Conv2D, Dense, ModelSpec
from xfbench.backends.base import FlopCount

COUNTER = "mxnet-symbol-graph"
_MATMUL_OPS = ("Convolution", "FullyConnected", "RNN")
# Operators that only move, reshape, pad or create data: no arithmetic.
_FREE_OPS = frozenset(
    {
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
    }
)
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

# The counter's total is already what the analytic count predicts under its convention.
ALIGNED_OPS: tuple[str, ...] | None = None


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
        else:
            dep.append(any(dep[src] for src, _, _ in node["inputs"]))
    return dep


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

    def add(key: str, value: int) -> None:
        if value:
            by_op[key] = by_op.get(key, 0) + int(value)

    for idx, node in enumerate(nodes):
        op = node["op"]
        if op == "null" or op in _FREE_OPS:
            continue
        attrs = node.get("attrs", {})
        name = node["name"]
        out_shape = node_shapes[idx][0]
        inputs = node["inputs"]
        in_dep = bool(inputs) and needs_grad[inputs[0][0]]
        numel = math.prod(out_shape)
        if op in _MATMUL_OPS and name.startswith("l") and name[1:].split("_", 1)[0].isdigit():
            seen_layers.add(int(name[1:].split("_", 1)[0]))
        if op in ("Convolution", "FullyConnected"):
            w_shape = node_shapes[inputs[1][0]][inputs[1][1]]
            per_out = math.prod(w_shape[1:])  # (Cin/groups)*kh*kw, or `in` for FullyConnected
            flops = 2 * numel * per_out
            add(op, flops)
            total += flops
            has_bias = attrs.get("no_bias", "False") != "True"
            if has_bias:
                add(f"{op}.bias", numel)
            if training:
                add(f"{op}.grad_weight", flops)
                total += flops
                if in_dep:
                    add(f"{op}.grad_input", flops)
                    total += flops
                if has_bias:
                    add(f"{op}.bias_grad", numel)
        elif op == "RNN":
            data_shape = node_shapes[inputs[0][0]][inputs[0][1]]
            first_in, later_in, recurrent, bias = _rnn_macs(attrs, data_shape)
            flops = 2 * (first_in + later_in + recurrent)
            add(op, flops)
            total += flops
            add("RNN.bias", bias)
            if training:
                add("RNN.grad_weight", flops)
                add("RNN.grad_state", 2 * (recurrent + later_in))
                total += flops + 2 * (recurrent + later_in)
                if in_dep:
                    add("RNN.grad_input", 2 * first_in)
                    total += 2 * first_in
                add("RNN.bias_grad", bias // 2)
        elif op == "Pooling":
            if attrs.get("global_pool", "False") == "True":
                in_shape = node_shapes[inputs[0][0]][inputs[0][1]]
                area = math.prod(in_shape[2:])
            else:
                area = math.prod(int(v) for v in attrs["kernel"].strip("()").split(",") if v.strip())
            add(op, numel * area)
            if training and in_dep:
                add(f"{op}.grad", numel * area)
        elif op == "Dropout":
            if training:
                add(op, numel)
                if in_dep:
                    add(f"{op}.grad", numel)
        else:
            add(op, numel)
            if training and in_dep:
                add(f"{op}.grad", numel)

    # A weighted spec layer without a matrix-product operator of its own would be work the walk missed.
    unsupported = tuple(
        f"{i}:{layer.type}"
        for i, layer in enumerate(spec.layers)
        if isinstance(layer, (Conv2D, Dense, LSTM)) and i not in seen_layers
    )
    convention = (
        "MXNet symbol graph walked by xfbench: total = Convolution + FullyConnected + RNN matrix products, "
        "2 FLOPs per MAC, no bias, no activations/pooling"
    )
    if training:
        convention += (
            "; training = forward + backward (weight gradient + input gradient per conv/dense/RNN, the "
            "input gradient omitted where the op's input does not depend on a parameter, e.g. the graph input)"
        )
    return FlopCount(counter=COUNTER, convention=convention, total=int(total), by_op=by_op, unsupported=unsupported)
