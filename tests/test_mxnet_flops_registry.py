"""The MXNet FLOP counter's registry of per-operator rules (``backends/mxnet/flops.py``).

The operator names below are copied by hand from the if/elif chain the registry replaced (issue 12): its
``Convolution``/``FullyConnected``, ``RNN``, ``Pooling`` and ``Dropout`` branches and its ``_FREE_OPS`` set of
data-movement operators (skipped); every other operator fell to the chain's element-wise ``else``. Each rule is
then fed a hand-made node and its terms compared with hand arithmetic.
"""

from __future__ import annotations

import pytest
from conftest import require_or_skip

require_or_skip("mxnet", "mxnet", reason="MXNet 1.9.1 is not installed (tox -e mxnet)")

from xfbench.backends.mxnet.flops import (  # noqa: E402
    DEFAULT_RULE,
    SUPPORTED_OPS,
    OpNode,
    elementwise_rule,
    free_rule,
)

pytestmark = pytest.mark.mxnet

# The branches of the old chain, by hand.
OLD_CHAIN_BRANCHES = {"Convolution", "FullyConnected", "RNN", "Pooling", "Dropout"}
OLD_FREE_OPS = set(
    "Reshape reshape Flatten flatten SwapAxis swapaxes transpose expand_dims squeeze slice_axis slice _slice "
    "Pad pad _zeros _ones zeros_like ones_like _rnn_param_concat Concat concat _copy identity BlockGrad "
    "stop_gradient Cast cast Embedding".split()
)
# Added for the transformer (issue 21): attention's batched products, GlobalAvgPool1D's mean, and the causal
# mask's shape-only arange (data creation, free).
TRANSFORMER_RULES = {"batch_dot", "mean"}
TRANSFORMER_FREE_OPS = {"_contrib_arange_like"}


def node(
    op: str,
    out: tuple[int, ...],
    *inputs: tuple[int, ...],
    attrs: dict[str, str] | None = None,
    training: bool = False,
    in_dep: bool = False,
) -> OpNode:
    """A node whose inputs are graph nodes 0, 1, ... with the given shapes."""
    return OpNode(
        op=op,
        attrs=attrs or {},
        out_shape=out,
        in_dep=in_dep,
        training=training,
        inputs=tuple((i, 0) for i in range(len(inputs))),
        graph_shapes=[[s] for s in inputs],
    )


def test_registry_covers_exactly_the_old_chain() -> None:
    assert set(SUPPORTED_OPS) == OLD_CHAIN_BRANCHES | OLD_FREE_OPS | TRANSFORMER_RULES | TRANSFORMER_FREE_OPS
    assert {op for op, rule in SUPPORTED_OPS.items() if rule is free_rule} == OLD_FREE_OPS | TRANSFORMER_FREE_OPS
    assert DEFAULT_RULE is elementwise_rule  # the old chain's `else`


def test_every_rule_states_its_formula() -> None:
    for rule in {*SUPPORTED_OPS.values(), DEFAULT_RULE}:
        assert rule.__doc__ and "FLOP" in rule.__doc__, rule.__name__


def test_convolution_rule_by_hand() -> None:
    # batch 2, 32 -> 64 channels, 3x3 kernel, 56x56 output, with bias; the input is the graph input (no grad).
    flops = 2 * (2 * 64 * 56 * 56) * (32 * 3 * 3)
    outputs = 2 * 64 * 56 * 56
    conv = node("Convolution", (2, 64, 56, 56), (2, 32, 56, 56), (64, 32, 3, 3))
    assert SUPPORTED_OPS["Convolution"](conv) == [("Convolution", flops, True), ("Convolution.bias", outputs, False)]
    conv = node("Convolution", (2, 64, 56, 56), (2, 32, 56, 56), (64, 32, 3, 3), training=True)
    assert SUPPORTED_OPS["Convolution"](conv) == [
        ("Convolution", flops, True),
        ("Convolution.bias", outputs, False),
        ("Convolution.grad_weight", flops, True),
        ("Convolution.bias_grad", outputs, False),
    ]


def test_fully_connected_rule_by_hand() -> None:
    # 4 rows, 256 -> 10, no bias, input depends on a parameter: weight and input gradients, 20,480 FLOPs each.
    fc = node("FullyConnected", (4, 10), (4, 256), (10, 256), attrs={"no_bias": "True"}, training=True, in_dep=True)
    flops = 2 * 4 * 10 * 256
    assert flops == 20_480
    assert SUPPORTED_OPS["FullyConnected"](fc) == [
        ("FullyConnected", flops, True),
        ("FullyConnected.grad_weight", flops, True),
        ("FullyConnected.grad_input", flops, True),
    ]


def test_rnn_rule_by_hand() -> None:
    # One LSTM layer (4 gates), h = 7, on T=5 steps x N=2 samples x F=3 features.
    first_input = 5 * 2 * 4 * 7 * 3  # 840 MACs
    recurrent = 5 * 2 * 4 * 7 * 7  # 1,960 MACs
    bias = 5 * 2 * 2 * 4 * 7  # two biases of 4h per step and sample: 560 adds
    rnn = node("RNN", (5, 2, 7), (5, 2, 3), attrs={"state_size": "7", "mode": "lstm"}, training=True)
    assert SUPPORTED_OPS["RNN"](rnn) == [
        ("RNN", 2 * (840 + 1960), True),
        ("RNN.bias", 560, False),
        ("RNN.grad_weight", 2 * (first_input + recurrent), True),
        ("RNN.grad_state", 2 * recurrent, True),
        ("RNN.bias_grad", bias // 2, False),
    ]
    # A GRU (3 gates) whose input needs a gradient, inference: no backward terms.
    gru = node("RNN", (5, 2, 7), (5, 2, 3), attrs={"state_size": "7", "mode": "gru"}, in_dep=True)
    assert SUPPORTED_OPS["RNN"](gru) == [
        ("RNN", 2 * (5 * 2 * 3 * 7 * 3 + 5 * 2 * 3 * 7 * 7), True),
        ("RNN.bias", 420, False),
    ]


def test_pooling_rule_by_hand() -> None:
    pool = node("Pooling", (1, 3, 4, 4), (1, 3, 8, 8), attrs={"kernel": "(2, 2)"}, training=True, in_dep=True)
    assert SUPPORTED_OPS["Pooling"](pool) == [("Pooling", 48 * 4, False), ("Pooling.grad", 48 * 4, False)]
    glob = node("Pooling", (1, 3, 1, 1), (1, 3, 7, 7), attrs={"global_pool": "True", "kernel": "(1, 1)"})
    assert SUPPORTED_OPS["Pooling"](glob) == [("Pooling", 3 * 7 * 7, False)]


def test_dropout_elementwise_and_free_rules_by_hand() -> None:
    assert SUPPORTED_OPS["Dropout"](node("Dropout", (4, 10), (4, 10))) == []  # inference: not counted
    drop = node("Dropout", (4, 10), (4, 10), training=True, in_dep=True)
    assert SUPPORTED_OPS["Dropout"](drop) == [("Dropout", 40, False), ("Dropout.grad", 40, False)]
    act = node("Activation", (4, 10), (4, 10), training=True, in_dep=False)
    assert DEFAULT_RULE(act) == [("Activation", 40, False)]  # no gradient into an input that needs none
    assert SUPPORTED_OPS["Reshape"](node("Reshape", (4, 10), (40,))) == []


def test_batch_dot_rule_by_hand() -> None:
    # Q K^T of 2 samples x 3 heads (B = 6), T = 5 queries, S = 7 keys, K = 4: out (6, 5, 7), 2 * 6*5*7*4 FLOPs.
    scores = node("batch_dot", (6, 5, 7), (6, 5, 4), (6, 7, 4), attrs={"transpose_b": "True"})
    assert SUPPORTED_OPS["batch_dot"](scores) == [("batch_dot", 1680, True)]
    assert 2 * 6 * 5 * 7 * 4 == 1680
    # P V: (6, 5, 7) x (6, 7, 4) -> (6, 5, 4), contracted over S = 7; training, both inputs need a gradient
    pv = node("batch_dot", (6, 5, 4), (6, 5, 7), (6, 7, 4), training=True, in_dep=True)
    assert SUPPORTED_OPS["batch_dot"](pv) == [
        ("batch_dot", 1680, True),
        ("batch_dot.grad_lhs", 1680, True),
        ("batch_dot.grad_rhs", 1680, True),
    ]
    # transpose_a: the contracted length is the first input's second-to-last axis (here 3, not 5)
    ta = node("batch_dot", (2, 5, 4), (2, 3, 5), (2, 3, 4), attrs={"transpose_a": "True"})
    assert SUPPORTED_OPS["batch_dot"](ta) == [("batch_dot", 2 * 2 * 5 * 4 * 3, True)]
    # only the right input depends on a parameter: one gradient
    one = node("batch_dot", (6, 5, 4), (6, 5, 7), (6, 7, 4), training=True, in_dep=False)
    one = OpNode(**{**one.__dict__, "in_deps": (False, True)})
    assert SUPPORTED_OPS["batch_dot"](one) == [("batch_dot", 1680, True), ("batch_dot.grad_rhs", 1680, True)]


def test_mean_rule_by_hand() -> None:
    # mean over T = 6 of (2, 6, 5): one FLOP per input element, 60; its gradient as many again
    mean = node("mean", (2, 5), (2, 6, 5), attrs={"axis": "1"}, training=True, in_dep=True)
    assert SUPPORTED_OPS["mean"](mean) == [("mean", 60, False), ("mean.grad", 60, False)]
