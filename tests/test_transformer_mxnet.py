"""Transformer layer types (LayerNorm, MultiHeadAttention, PositionEmbedding, GlobalAvgPool1D, gelu/gelu_tanh,
the tied Dense) on the MXNet 1.9.1 Gluon backend, against the float64 numpy reference and hand arithmetic."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from conftest import require_or_skip

require_or_skip("mxnet", "mxnet", reason="MXNet 1.9.1 is not installed (tox -e mxnet)")

import mxnet as mx  # noqa: E402
import xfbench.backends.mxnet as B  # noqa: E402
from xfbench.analytics.catalog import catalog_model  # noqa: E402
from xfbench.analytics.layers.transformer import MultiHeadAttention  # noqa: E402
from xfbench.analytics.predict import count_params as predicted_params  # noqa: E402
from xfbench.analytics.predict import counter_prediction  # noqa: E402
from xfbench.analytics.reference import reference_forward  # noqa: E402
from xfbench.analytics.spec import ModelSpec, spec_from_dict  # noqa: E402
from xfbench.analytics.weights import make_batch, random_weights, weight_slots  # noqa: E402
from xfbench.backends.mxnet.flops import model_symbol  # noqa: E402
from xfbench.backends.mxnet.model import _Attention  # noqa: E402

pytestmark = pytest.mark.mxnet

PARITY_RTOL = 1e-5
T = 16  # tokens for the catalog models (their default 64 is slower than a unit test needs)


def _spec(name: str, input_shape: list[int], layers: list[dict[str, Any]]) -> ModelSpec:
    return spec_from_dict({"name": name, "input_shape": input_shape, "layers": layers})


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _built(spec: ModelSpec, seed: int = 1, dtype: str = "float32") -> tuple[Any, list[np.ndarray]]:
    net = B.build_model(spec, "cpu", dtype=dtype, seed=seed)
    weights = random_weights(spec, seed=seed, dtype=dtype)
    B.set_weights(net, weights)
    return net, weights


def gpt2_tiny() -> ModelSpec:
    return catalog_model("gpt2_tiny", input_shape=(T,))


def bert_tiny() -> ModelSpec:
    return catalog_model("bert_tiny", input_shape=(T,))


def cross_gelu() -> ModelSpec:
    """Non-causal self-attention without biases; a cross-attention whose key/value stream is narrower (12 vs
    8 features); erf GELU; a PositionEmbedding longer than T; GlobalAvgPool1D; logits."""
    return _spec(
        "cross_gelu",
        [5, 8],
        [
            {"type": "PositionEmbedding", "length": 9, "name": "pos"},
            {"type": "MultiHeadAttention", "heads": 2, "key_dim": 3, "use_bias": False, "name": "self"},
            {"type": "Add", "inputs": ["pos", "self"], "name": "r1"},
            {"type": "LayerNorm", "epsilon": 1e-3, "name": "n1"},
            {"type": "Dense", "units": 12, "activation": "gelu", "inputs": ["input"], "name": "mem"},
            {"type": "MultiHeadAttention", "heads": 3, "key_dim": 4, "inputs": ["n1", "mem"], "name": "cross"},
            {"type": "LayerNorm", "name": "n2"},
            {"type": "GlobalAvgPool1D"},
            {"type": "Dense", "units": 4},
        ],
    )


def causal_tanh() -> ModelSpec:
    """Causal attention (heads x key_dim = 3 x 5 = 15 != 8 features), gelu_tanh as a Dense's activation and as
    its own layer, a (T, classes) output: a per-token loss."""
    return _spec(
        "causal_tanh",
        [6, 8],
        [
            {"type": "LayerNorm", "name": "ln"},
            {"type": "MultiHeadAttention", "heads": 3, "key_dim": 5, "causal": True, "name": "attn"},
            {"type": "Dense", "units": 10, "activation": "gelu_tanh"},
            {"type": "Dense", "units": 8},
            {"type": "Activation", "kind": "gelu_tanh", "name": "act"},
            {"type": "Add", "inputs": ["attn", "act"]},
            {"type": "Dense", "units": 7},
        ],
    )


MODELS = {"gpt2_tiny": gpt2_tiny, "bert_tiny": bert_tiny, "cross_gelu": cross_gelu, "causal_tanh": causal_tanh}


# ---------------------------------------------------------------- inference parity, weights, parameters


@pytest.mark.parametrize("name", list(MODELS))
def test_parity_and_weight_round_trip(name: str) -> None:
    spec = MODELS[name]()
    net, weights = _built(spec)
    x, _ = make_batch(spec, 2, seed=2)
    out = B.to_numpy(B.infer(net, x))
    ref = reference_forward(spec, weights, x)
    assert out.shape == ref.shape
    err = _rel_err(out, ref)
    assert err < PARITY_RTOL, f"{name}: relative error {err:.3g}"
    back = B.get_weights(net)
    assert [a.shape for a in back] == [s.shape for s in weight_slots(spec)]
    for a, b in zip(weights, back):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["gpt2_tiny", "cross_gelu", "causal_tanh"])
def test_float64_parity(name: str) -> None:
    """In float64 the erf GELU (LeakyReLU act_type="gelu"), the composed tanh GELU, LayerNorm and the attention
    match the reference to rounding, so each is the reference's formula, not an approximation of it."""
    spec = MODELS[name]()
    net, weights = _built(spec, seed=3, dtype="float64")
    x, _ = make_batch(spec, 2, seed=4)
    out = B.to_numpy(B.infer(net, B.to_device(x, "cpu", "float64")))
    assert out.dtype == np.float64
    assert _rel_err(out, reference_forward(spec, weights, x)) < 1e-12


def test_gelu_is_the_erf_form_and_gelu_tanh_the_approximation() -> None:
    """float32 (MXNet's LeakyReLU act_type="gelu"): within float32 rounding of the erf form, 100x closer than to
    the tanh form; float64 (composed from erf): the erf form to double rounding. gelu_tanh: the tanh form."""
    xs = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    erf_form = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in xs])
    tanh_form = 0.5 * xs * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (xs + 0.044715 * xs**3)))
    assert np.abs(erf_form - tanh_form).max() > 1e-4  # the two forms differ: the checks below tell them apart

    def run(kind: str, dtype: str) -> np.ndarray:
        net = B.build_model(_spec("g", [7], [{"type": "Activation", "kind": kind}]), dtype=dtype)
        return B.to_numpy(B.infer(net, mx.nd.array(xs.reshape(1, 7), dtype=dtype)))[0].astype(np.float64)

    assert np.abs(run("gelu", "float32") - erf_form).max() < 1e-6
    np.testing.assert_allclose(run("gelu", "float64"), erf_form, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(run("gelu_tanh", "float64"), tanh_form, rtol=1e-12, atol=1e-15)
    assert np.abs(run("gelu_tanh", "float32") - tanh_form).max() < 1e-6
    sym = model_symbol(B.build_model(_spec("g", [7], [{"type": "Activation", "kind": "gelu"}])))
    assert [n["attrs"]["act_type"] for n in json.loads(sym.tojson())["nodes"] if n["op"] == "LeakyReLU"] == ["gelu"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_cross_attention_of_different_lengths(causal: bool, use_bias: bool) -> None:
    """The attention block on a query of T = 5 and a key/value stream of S = 7 (a spec's inputs share one length,
    so the block is driven directly): it equals the reference's MultiHeadAttention.forward."""
    layer = MultiHeadAttention(heads=2, key_dim=3, causal=causal, use_bias=use_bias)
    t, s, f, fk = 5, 7, 4, 6
    block = _Attention(2, 3, causal, use_bias, f, fk, prefix="att_")
    block.initialize(ctx=mx.cpu())
    block.cast("float64")
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(shape) for _, shape, _ in layer.weight_slots([(t, f), (s, fk)])]
    dense = {"query": block.query, "key": block.key, "value": block.value, "output": block.output}
    for proj, (kernel, bias) in layer.split_params(params).items():
        dense[proj].weight.set_data(mx.nd.array(kernel.T, dtype="float64"))
        if bias is not None:
            dense[proj].bias.set_data(mx.nd.array(bias, dtype="float64"))
    xq, xkv = rng.standard_normal((2, t, f)), rng.standard_normal((2, s, fk))
    block.hybridize()
    got = block(mx.nd.array(xq, dtype="float64"), mx.nd.array(xkv, dtype="float64")).asnumpy()
    want = layer.forward([xq, xkv], params, training=False)
    assert got.shape == (2, t, f)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


def test_causal_outputs_ignore_later_tokens() -> None:
    """gpt2_tiny (causal): changing the last token leaves every earlier position's logits bit-identical and
    changes the last one; bert-like non-causal attention (cross_gelu's first block) lets it reach every position."""
    spec = gpt2_tiny()
    net, _ = _built(spec)
    x, _ = make_batch(spec, 1, seed=5)
    x2 = x.copy()
    x2[0, -1] = (x[0, -1] + 1) % 8192
    a, b = B.to_numpy(B.infer(net, x)), B.to_numpy(B.infer(net, x2))
    assert np.array_equal(a[:, :-1], b[:, :-1])
    assert not np.allclose(a[:, -1], b[:, -1])

    spec = _spec("bidir", [4, 6], [{"type": "MultiHeadAttention", "heads": 2, "key_dim": 3}])
    net, _ = _built(spec)
    xf, _ = make_batch(spec, 1, seed=6)
    xf2 = xf.copy()
    xf2[0, -1] += 1.0
    a, b = B.to_numpy(B.infer(net, xf)), B.to_numpy(B.infer(net, xf2))
    assert not np.allclose(a[:, 0], b[:, 0])


@pytest.mark.parametrize("name", list(MODELS))
def test_count_params_matches_the_analytic_mxnet_convention(name: str) -> None:
    spec = MODELS[name]()
    assert B.count_params(B.build_model(spec)) == predicted_params(spec, "mxnet")


def test_gpt2_parameter_count() -> None:
    spec = catalog_model("gpt2")
    net = B.build_model(spec, init=False)
    assert B.count_params(net) == predicted_params(spec, "mxnet") == 124_439_808


def test_tied_head_has_one_parameter() -> None:
    """The head reads the embedding's Parameter: no kernel of its own, and the Trainer sees the matrix once."""
    spec = gpt2_tiny()
    net = B.build_model(spec)
    params = net.collect_params()
    shaped = [name for name, p in params.items() if p.shape == (8192, 128)]
    assert shaped == ["l0_weight"]
    assert not [name for name in params if name.startswith("l17_")]  # lm_head: use_bias false, no kernel
    nodes = json.loads(model_symbol(net).tojson())["nodes"]
    fcs = [n for n in nodes if n["name"] == "l17_fullyconnected0"]
    assert [nodes[src]["name"] for src, _, _ in fcs[0]["inputs"]] == ["l16_layernorm0", "l0_weight"]


# ---------------------------------------------------------------- training


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny", "causal_tanh"])
def test_train_step_at_lr_zero_gives_the_reference_loss(name: str) -> None:
    """lr 0: the loss is the mean token (or sample) cross-entropy of the reference logits, computed here in
    numpy, and no weight moves."""
    spec = MODELS[name]()
    net, weights = _built(spec, seed=7)
    x, y = make_batch(spec, 2, seed=8)
    logits = reference_forward(spec, weights, x, training=True)
    want = float(-np.take_along_axis(_log_softmax(logits), y[..., None], axis=-1).mean())
    loss = float(B.to_numpy(B.make_train_step(net, spec, "sgd", lr=0.0)(x, y)).reshape(-1)[0])
    assert loss == pytest.approx(want, rel=1e-5)
    for a, b in zip(weights, B.get_weights(net)):
        assert np.array_equal(a, b)


def test_tied_embedding_gets_one_summed_gradient() -> None:
    """One SGD step (lr 0.1) on gpt2_tiny moves the tied embedding by the sum of its two gradients: the same step
    on the untied twin (the head a Dense with its own kernel, initialized to the embedding transposed) gives the
    lookup's gradient on the embedding and the head's on its kernel; the tied step's matrix is their sum (the rows
    of tokens the batch never reads move by the head's gradient alone)."""
    lr = 0.1
    spec = gpt2_tiny()
    net, weights = _built(spec, seed=9, dtype="float64")  # float64: the steps' differences are exact enough
    x, y = make_batch(spec, 2, seed=10)
    B.make_train_step(net, spec, "sgd", lr=lr)(x, y)
    tied_after = B.get_weights(net)[0]
    assert not np.allclose(tied_after, weights[0])

    untied = dataclasses.replace(spec, layers=(*spec.layers[:-1], dataclasses.replace(spec.layers[-1], tie=None)))
    slots = weight_slots(untied)
    assert slots[-1].param == "kernel" and len(slots) == len(weights) + 1
    untied_w = [*weights, np.ascontiguousarray(weights[0].T)]
    net2 = B.build_model(untied, seed=9, dtype="float64")
    B.set_weights(net2, untied_w)
    B.make_train_step(net2, untied, "sgd", lr=lr)(x, y)
    after2 = B.get_weights(net2)
    emb_step, head_step = after2[0] - weights[0], after2[-1] - weights[0].T
    assert np.abs(head_step).max() > 0 and np.abs(emb_step).max() > 0
    np.testing.assert_allclose(tied_after - weights[0], emb_step + head_step.T, rtol=1e-9, atol=1e-15)


# ---------------------------------------------------------------- FLOPs


def _gpt2_tiny_hand(n: int) -> tuple[int, int, int]:
    """(dense matmuls, batch_dot, total) forward FLOPs of gpt2_tiny at T tokens: d = 128, 2 heads of 64, FF 512,
    vocab 8192, 2 blocks; 2 per MAC."""
    d, h, k, ff, vocab = 128, 2, 64, 512, 8192
    per_block_dense = 2 * T * (4 * d * d + 2 * d * ff)
    per_block_attn = 2 * (2 * h * T * T * k)  # Q K^T and P V
    dense = n * (2 * per_block_dense + 2 * T * d * vocab)
    attn = n * 2 * per_block_attn
    return dense, attn, dense + attn


def _bert_tiny_hand(n: int) -> tuple[int, int, int]:
    d, h, k, ff = 128, 2, 64, 512
    dense = n * (2 * 2 * T * (4 * d * d + 2 * d * ff) + 2 * d * d + 2 * d * 2)
    attn = n * 2 * 2 * (2 * h * T * T * k)
    return dense, attn, dense + attn


HAND = {"gpt2_tiny": _gpt2_tiny_hand, "bert_tiny": _bert_tiny_hand}


@pytest.mark.parametrize("name", list(HAND))
def test_flops_reconcile_op_by_op(name: str) -> None:
    n = 2
    spec = MODELS[name]()
    net = B.build_model(spec)
    dense, attn, total = HAND[name](n)
    assert (name, total) in (("gpt2_tiny", 92_798_976), ("bert_tiny", 25_756_672))
    inf = B.count_flops(net, spec, n, "inference")
    assert inf.by_op["FullyConnected"] == dense
    assert inf.by_op["batch_dot"] == attn
    assert inf.total == total == counter_prediction(spec, n, "mxnet", "inference")
    assert inf.unsupported == ()
    # training: every dense layer's input depends on a parameter (the embedding), so weight and input gradients
    # everywhere; each batch_dot's two gradients are batch_dots of its own size: 3x the forward
    tr = B.count_flops(net, spec, n, "training")
    assert tr.by_op["FullyConnected.grad_weight"] == tr.by_op["FullyConnected.grad_input"] == dense
    assert tr.by_op["batch_dot.grad_lhs"] == tr.by_op["batch_dot.grad_rhs"] == attn
    assert tr.total == 3 * total == counter_prediction(spec, n, "mxnet", "training")
    assert tr.unsupported == ()
    if name == "bert_tiny":  # GlobalAvgPool1D's mean: one FLOP per input element (the analytic pool column)
        assert inf.by_op["mean"] == n * T * 128


@pytest.mark.parametrize("name", ["cross_gelu", "causal_tanh"])
def test_flops_reconcile_hand_specs(name: str) -> None:
    spec = MODELS[name]()
    net = B.build_model(spec)
    for phase in ("inference", "training"):
        fl = B.count_flops(net, spec, 3, phase)
        assert fl.total == counter_prediction(spec, 3, "mxnet", phase), phase
        assert fl.unsupported == ()


def test_flops_causal_mask_and_gelu_tanh_ops() -> None:
    """causal_tanh at batch 2: the scores are (N*H, T, S) = (6, 6, 6); the mask is added once per score
    (broadcast_add) and has no gradient of its own; gelu_tanh is nine element-wise ops per element."""
    spec = causal_tanh()
    fl = B.count_flops(B.build_model(spec), spec, 2, "training")
    assert fl.by_op["batch_dot"] == 2 * (2 * 6 * 6 * 6 * 5)
    assert fl.by_op["softmax"] == fl.by_op["softmax.grad"] == 6 * 6 * 6
    assert "log.grad" not in fl.by_op and "broadcast_greater.grad" not in fl.by_op
    assert fl.by_op["log"] == 6 * 6
    assert fl.by_op["tanh"] == 2 * 6 * 10 + 2 * 6 * 8  # one tanh per element of each gelu_tanh
