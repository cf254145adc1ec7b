"""The transformer's layer types in the TensorFlow / Keras 3 backend (LayerNorm, MultiHeadAttention composed from
explicit ops, PositionEmbedding, GlobalAvgPool1D, the GELU forms, the tied head), against the float64 numpy
reference, hand arithmetic and TensorFlow's own profiler."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from conftest import require_or_skip

require_or_skip("tensorflow", "tensorflow", reason="TensorFlow is not installed (tox -e tensorflow)")
require_or_skip("keras", "tensorflow", reason="Keras 3 is not installed (tox -e tensorflow)")

import xfbench.backends.tensorflow as tfb  # noqa: E402
import xfbench.backends.tensorflow.model as tf_model  # noqa: E402
from xfbench.analytics import layers as L  # noqa: E402
from xfbench.analytics.catalog import catalog_model  # noqa: E402
from xfbench.analytics.costs import TF_PROFILER_OPS, tf_profiler_flops  # noqa: E402
from xfbench.analytics.predict import count_params as predicted_params  # noqa: E402
from xfbench.analytics.predict import counter_prediction  # noqa: E402
from xfbench.analytics.reference import reference_forward  # noqa: E402
from xfbench.analytics.shapes import infer_shapes  # noqa: E402
from xfbench.analytics.spec import ModelSpec, spec_from_dict  # noqa: E402
from xfbench.analytics.weights import make_batch, random_weights, weight_slots  # noqa: E402
from xfbench.backends.tensorflow._tf import keras, tf  # noqa: E402
from xfbench.backends.tensorflow.flops import _node_flops, _trace  # noqa: E402

pytestmark = pytest.mark.tensorflow

PARITY_RTOL = 1e-5

# Self-attention, causal, on a float (T, F) input: pre-LN block with GELU (erf and tanh forms as a Dense's and as
# an Activation's), a position table longer than the sequence, per-step logits.
CAUSAL_BLOCK = {
    "name": "causal_block",
    "input_shape": [6, 8],
    "layers": [
        {"type": "PositionEmbedding", "name": "pos", "length": 10},
        {"type": "LayerNorm", "name": "ln1"},
        {"type": "MultiHeadAttention", "name": "attn", "heads": 2, "key_dim": 3, "causal": True},
        {"type": "Add", "name": "res", "inputs": ["pos", "attn"]},
        {"type": "LayerNorm", "name": "ln2", "epsilon": 1e-3},
        {"type": "Dense", "name": "fc", "units": 12, "activation": "gelu"},
        {"type": "Dense", "name": "proj", "units": 8},
        {"type": "gelu_tanh", "name": "act"},
        {"type": "Dense", "name": "logits", "units": 5},
    ],
}

# Cross-attention: the query is the model input (8 features), key/value a Dense of it (5 features); no biases,
# not causal; mean over time, logits.
CROSS = {
    "name": "cross",
    "input_shape": [6, 8],
    "layers": [
        {"type": "Dense", "name": "kv", "units": 5, "activation": "gelu_tanh", "inputs": ["input"]},
        {
            "type": "MultiHeadAttention",
            "name": "attn",
            "heads": 2,
            "key_dim": 3,
            "use_bias": False,
            "inputs": ["input", "kv"],
        },
        {"type": "GlobalAvgPool1D", "name": "gap"},
        {"type": "Dense", "name": "fc", "units": 3},
    ],
}

# Tokens, positions, a post-LN self-attention block with gelu, mean over time, a tanh pooler and logits.
TOKENS = {
    "name": "tokens",
    "input_shape": [7],
    "layers": [
        {"type": "Embedding", "name": "emb", "vocab": 20, "dim": 8},
        {"type": "PositionEmbedding", "name": "pos"},
        {"type": "MultiHeadAttention", "name": "attn", "heads": 4, "key_dim": 2},
        {"type": "Add", "name": "res", "inputs": ["pos", "attn"]},
        {"type": "LayerNorm", "name": "ln"},
        {"type": "gelu", "name": "act"},
        {"type": "GlobalAvgPool1D", "name": "gap"},
        {"type": "Dense", "name": "pool", "units": 8, "activation": "tanh"},
        {"type": "Dense", "name": "fc", "units": 2},
    ],
}

# A language model with a biased tied head on a causal one-head attention (positions longer than the sequence).
TIED_LM = {
    "name": "tied_lm",
    "input_shape": [7],
    "layers": [
        {"type": "Embedding", "name": "emb", "vocab": 20, "dim": 8},
        {"type": "PositionEmbedding", "name": "pos", "length": 9},
        {"type": "MultiHeadAttention", "name": "attn", "heads": 1, "key_dim": 8, "causal": True},
        {"type": "LayerNorm", "name": "ln"},
        {"type": "Dense", "name": "head", "units": 20, "tie": "emb"},
    ],
}

# A tied head on a (dim,) vector, ending in a softmax (probabilities).
TIED_VECTOR = {
    "name": "tied_vector",
    "input_shape": [5],
    "layers": [
        {"type": "Embedding", "name": "emb", "vocab": 12, "dim": 6},
        {"type": "GlobalAvgPool1D", "name": "gap"},
        {"type": "Dense", "name": "head", "units": 12, "tie": "emb", "use_bias": False, "activation": "softmax"},
    ],
}

SPECS = {d["name"]: d for d in (CAUSAL_BLOCK, CROSS, TOKENS, TIED_LM, TIED_VECTOR)}


def _spec(name: str) -> ModelSpec:
    if name in SPECS:
        return spec_from_dict(SPECS[name])
    return catalog_model(name, input_shape=(16,))  # gpt2_tiny, bert_tiny at 16 tokens


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _token_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """The mean softmax cross-entropy over every sample (and token) of float64 logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(logp, y[..., None], axis=-1).mean())


# --------------------------------------------------------------------------------------------- builders


def test_the_transformer_types_have_builders() -> None:
    for cls in (L.LayerNorm, L.MultiHeadAttention, L.PositionEmbedding, L.GlobalAvgPool1D):
        assert cls in tf_model.BUILDERS


def test_gelu_is_the_erf_form_and_gelu_tanh_the_approximation() -> None:
    x = np.linspace(-3.0, 3.0, 13)
    # by hand at x = 1: erf form 0.5 (1 + erf(1/sqrt 2)) = 0.841344746..., tanh form 0.841191990... (the forms
    # differ by 1.5e-4; TensorFlow's float64 erfc and tanh kernels are good to about 1e-8 here)
    one = tf.constant([1.0], tf.float64)
    assert float(tf_model._keras_activation("gelu")(one)[0]) == pytest.approx(0.8413447460685429, abs=1e-8)
    assert float(tf_model._keras_activation("gelu_tanh")(one)[0]) == pytest.approx(0.8411919906082768, abs=1e-8)
    # keras.ops.gelu's default is the tanh form: not the spec's gelu
    default = np.asarray(keras.ops.gelu(tf.constant(x)))
    np.testing.assert_allclose(default, np.asarray(tf_model._keras_activation("gelu_tanh")(tf.constant(x))))
    assert np.max(np.abs(default - np.asarray(tf_model._keras_activation("gelu")(tf.constant(x))))) > 1e-4


# --------------------------------------------------------------------------------------------- parameters


def test_gpt2_parameters_are_the_predicted_count_with_one_tied_matrix() -> None:
    spec = catalog_model("gpt2")
    model = tfb.build_model(spec, init=False)
    assert tfb.count_params(model) == predicted_params(spec, "tensorflow") == 124_439_808
    # the head owns no kernel: the (50257, 768) matrix is one variable, the embedding's
    assert sum(tuple(v.shape) == (50257, 768) for v in model.trainable_variables) == 1


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny", *SPECS])
def test_count_params_equals_the_prediction(name: str) -> None:
    spec = _spec(name)
    model = tfb.build_model(spec, init=False)
    assert tfb.count_params(model) == predicted_params(spec, "tensorflow")
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == tfb.count_params(model)


def test_attention_parameters_by_hand() -> None:
    # CROSS: kv 8*5 + 5; attention without biases: query 8x6, key 5x6, value 5x6, output 6x8; fc 8*3 + 3
    model = tfb.build_model(_spec("cross"), init=False)
    assert tfb.count_params(model) == 45 + (48 + 30 + 30 + 48) + 27 == 228


# --------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny", *SPECS])
def test_inference_matches_reference_and_weights_round_trip(name: str) -> None:
    spec = _spec(name)
    model = tfb.build_model(spec, seed=1)
    w = random_weights(spec, seed=1)
    got = tfb.get_weights(model)
    assert len(got) == len(w) == len(weight_slots(spec))
    for slot, a, b in zip(weight_slots(spec), got, w):
        np.testing.assert_array_equal(a, b, err_msg=f"{slot.layer_name}.{slot.param}")
    x, _ = make_batch(spec, 2, seed=2)
    out = tfb.to_numpy(tfb.infer(model, tfb.to_device(x, "cpu")))
    ref = reference_forward(spec, w, x)
    assert out.shape == ref.shape == (2, *infer_shapes(spec)[-1])
    assert _rel_err(out, ref) < PARITY_RTOL


def test_float64_attention_block_is_close_to_the_reference() -> None:
    spec = _spec("causal_block")
    model = tfb.build_model(spec, dtype="float64", seed=3)
    x, _ = make_batch(spec, 2, seed=4)
    out = tfb.to_numpy(tfb.infer(model, tfb.to_device(x, "cpu", "float64")))
    # float64 up to TensorFlow's erfc kernel (the erf GELU), good to about 1e-8
    assert _rel_err(out, reference_forward(spec, random_weights(spec, seed=3, dtype="float64"), x)) < 1e-7


def _layer_attention(causal: bool, use_bias: bool, t: int, s: int) -> tuple[Any, L.MultiHeadAttention, list]:
    """A Keras attention layer (query 8 features, key/value 4) with the neutral weights of the spec's layer."""
    spec_layer = L.MultiHeadAttention(2, 3, causal=causal, use_bias=use_bias)
    layer = tf_model._MultiHeadAttention(8, 2, 3, causal, use_bias, name="attn", dtype="float64")
    layer.build((None, t, 8), (None, s, 4))
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(shape) for _, shape, _ in spec_layer.weight_slots([(t, 8), (s, 4)])]
    variables = []
    for proj in (layer.query, layer.key, layer.value, layer.out):
        variables += [proj.kernel] + ([proj.bias] if use_bias else [])
    for var, value in zip(variables, params):
        var.assign(value)
    return layer, spec_layer, params


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_cross_attention_of_different_lengths_matches_the_reference(causal: bool, use_bias: bool) -> None:
    # The spec's graph cannot make two sequences of different lengths from one input; the layer can meet them.
    t, s = 5, 7
    layer, spec_layer, params = _layer_attention(causal, use_bias, t, s)
    rng = np.random.default_rng(8)
    xq, xkv = rng.standard_normal((2, t, 8)), rng.standard_normal((2, s, 4))
    out = np.asarray(layer(tf.constant(xq), tf.constant(xkv)))
    ref = spec_layer.forward([xq, xkv], params, training=False)
    assert out.shape == ref.shape == (2, t, 8)
    assert _rel_err(out, ref) < 1e-12


def test_causal_output_does_not_see_later_tokens() -> None:
    spec = _spec("gpt2_tiny")
    model = tfb.build_model(spec, seed=1)
    x, _ = make_batch(spec, 2, seed=3)
    later = x.copy()
    later[:, 10:] = (later[:, 10:] + 1) % 8192  # change tokens 10..15
    a = tfb.to_numpy(tfb.infer(model, x))
    b = tfb.to_numpy(tfb.infer(model, later))
    np.testing.assert_allclose(a[:, :10], b[:, :10], rtol=0, atol=1e-5 * np.abs(a).max())
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3 * np.abs(a).max()
    # ... while a non-causal attention's first outputs do change (the check can fail)
    enc = _spec("tokens")
    model = tfb.build_model(enc, seed=1)
    attn = keras.Model(model.input, model.get_layer("l2_attn").output)
    xs, _ = make_batch(enc, 2, seed=3)
    changed = xs.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 20
    first, second = np.asarray(attn(xs)), np.asarray(attn(changed))
    assert np.abs(first[:, 0] - second[:, 0]).max() > 1e-6


# --------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny", "causal_block", "cross", "tied_lm"])
def test_step_at_lr_zero_loss_is_the_reference_cross_entropy(name: str) -> None:
    spec = _spec(name)
    model = tfb.build_model(spec, seed=4)
    w = random_weights(spec, seed=4)
    x, y = make_batch(spec, 2, seed=5)
    loss = float(tfb.to_numpy(tfb.make_train_step(model, spec, "sgd", lr=0.0)(x, y)))
    assert loss == pytest.approx(_token_cross_entropy(reference_forward(spec, w, x, training=True), y), rel=1e-5)
    for slot, a, b in zip(weight_slots(spec), tfb.get_weights(model), w):
        np.testing.assert_array_equal(a, b, err_msg=f"{slot.layer_name}.{slot.param}")


def test_tied_embedding_is_one_variable_moved_by_both_gradients() -> None:
    spec = _spec("gpt2_tiny")
    vocab, dim, t, n, lr = 8192, 128, 16, 2, 0.5
    model = tfb.build_model(spec, dtype="float64", seed=4)  # float64: the update is not lost in rounding
    w = random_weights(spec, seed=4, dtype="float64")
    x, y = make_batch(spec, n, seed=5)
    tied = [v for v in model.trainable_variables if tuple(v.shape) == (vocab, dim)]
    assert len(tied) == 1 and tied[0] is model.get_layer("l0_wte").embeddings
    assert tf_model._info(model).entries[-1].layer.trainable_variables == []  # the head has no weight of its own
    tfb.make_train_step(model, spec, "sgd", lr=lr)(x, y)
    after = tfb.get_weights(model)
    slots = weight_slots(spec)
    k_wte = next(k for k, s in enumerate(slots) if s.layer_name == "wte")
    k_wpe = next(k for k, s in enumerate(slots) if s.layer_name == "wpe")
    delta = after[k_wte] - w[k_wte]
    # A row no token looks up and no label names moves by the head's gradient alone:
    # dE[v] = sum_{n,t} softmax(logits)[n,t,v] h[n,t] / (N T), h = the final LayerNorm's output (numpy reference).
    logits = reference_forward(spec, w, x, training=True)
    h = reference_forward(dataclasses.replace(spec, layers=spec.layers[:-1]), w, x, training=True)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    head_grad = np.einsum("ntv,ntd->vd", p, h) / (n * t)
    untouched = np.setdiff1d(np.arange(vocab), np.union1d(x.ravel(), y.ravel()))
    assert len(untouched) > vocab // 2
    np.testing.assert_allclose(delta[untouched], -lr * head_grad[untouched], rtol=1e-5, atol=1e-10)
    # a looked-up row gets the lookup's gradient as well: it moves by more than the head's share
    looked_up = np.setdiff1d(np.unique(x), y.ravel())
    assert np.abs(delta[looked_up] + lr * head_grad[looked_up]).max() > 1e-4
    # position rows past the 16 tokens get no gradient; the first 16 do
    pos_delta = np.abs(after[k_wpe] - w[k_wpe]).max(axis=1)
    assert pos_delta[t:].max() == 0.0 and pos_delta[:t].min() > 0.0


# --------------------------------------------------------------------------------------------- flops


def _aligned(by_op: dict[str, int]) -> dict[str, int]:
    return {op: v for op, v in by_op.items() if op in TF_PROFILER_OPS and v}


@pytest.mark.parametrize("phase", ["inference", "training"])
@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny"])
def test_profiler_reconciles_op_by_op(name: str, phase: str) -> None:
    spec = catalog_model(name)  # the catalog's 64 tokens
    count = tfb.count_flops(tfb.build_model(spec), spec, 2, phase)
    predicted = tf_profiler_flops(spec, 2, phase)
    assert count.unsupported == ()
    assert _aligned(count.by_op) == {op: v for op, v in predicted.items() if v}
    assert sum(_aligned(count.by_op).values()) == counter_prediction(spec, 2, "tensorflow", phase)
    # the two attention products of each of the 2 blocks: 2 N H T S K each (N=2, H=2, T=S=64, K=64)
    product = 2 * 2 * 2 * 64 * 64 * 64
    assert count.by_op["BatchMatMulV2"] == 2 * 2 * product * (1 if phase == "inference" else 3)
    # outside the aligned set but counted: softmax (5 per score element), never predicted
    assert count.by_op["Softmax"] == 5 * 2 * (2 * 2 * 64 * 64)


@pytest.mark.parametrize("phase", ["inference", "training"])
@pytest.mark.parametrize("name", list(SPECS))
def test_profiler_reconciles_on_small_specs(name: str, phase: str) -> None:
    spec = _spec(name)
    count = tfb.count_flops(tfb.build_model(spec), spec, 2, phase)
    assert count.unsupported == ()
    assert _aligned(count.by_op) == {op: v for op, v in tf_profiler_flops(spec, 2, phase).items() if v}


def test_profiler_counts_cross_attention_by_hand() -> None:
    spec = _spec("cross")  # N = 2, T = S = 6, F = 8, Fk = 5, H = 2, K = 3
    n = 2
    inference = {
        # kv 2*N*6*8*5; query 2*N*6*8*6, key and value 2*N*6*5*6, output 2*N*6*6*8; fc 2*N*8*3
        "MatMul": 960 + 1152 + 720 + 720 + 1152 + 96,
        "BiasAdd": n * 6 * 5 + n * 3,  # kv and fc (the attention has no biases)
        "BatchMatMulV2": 2 * (2 * n * 2 * 6 * 6 * 3),
        "Mean": n * 6 * 8,  # GlobalAvgPool1D
    }
    training = {
        # kv: no input gradient; query: reads the model input, no input gradient; key, value: input gradients
        # (kv has weights); output and fc: input gradients
        "MatMul": 2 * 960 + 2 * 1152 + 3 * 720 + 3 * 720 + 3 * 1152 + 3 * 96,
        "BiasAdd": inference["BiasAdd"],
        "BiasAddGrad": (n * 6 * 5 - 5) + (n * 3 - 3),
        "BatchMatMulV2": 3 * inference["BatchMatMulV2"],
        "Mean": inference["Mean"] + n,  # and the loss's mean over samples
    }
    model = tfb.build_model(spec)
    for phase, expected in (("inference", inference), ("training", training)):
        count = tfb.count_flops(model, spec, n, phase)
        assert _aligned(count.by_op) == expected, phase
        assert {op: v for op, v in tf_profiler_flops(spec, n, phase).items() if v} == expected


def test_profiler_prices_the_adj_x_gradient_products_from_s_not_t() -> None:
    # The registry reads BatchMatMulV2's ``transpose_a``, which that op calls ``adj_x``: dK = dS^T Q and
    # dV = P^T dO are priced with k = S (the un-transposed a operand's last axis) instead of T.
    n, t, s, h, k = 2, 5, 7, 2, 3
    layer, _, _ = _layer_attention(False, True, t, s)

    def step(xq: Any, xkv: Any) -> Any:
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(layer(xq, xkv))
        return tape.gradient(value, layer.trainable_variables)

    spec_in = (tf.TensorSpec([n, t, 8], tf.float64), tf.TensorSpec([n, s, 4], tf.float64))
    graph = tf.function(step).get_concrete_function(*spec_in).graph
    flops = _node_flops(graph)
    bmm = sum(f for name, f in flops.items() if graph.get_operation_by_name(name).type == "BatchMatMulV2")
    true_product = 2 * n * h * t * s * k  # 840
    assert bmm == 4 * true_product + 2 * (2 * n * h * s * s * k)  # 3360 + 2352 (the true count: 6 * 840)
    assert bmm != 6 * true_product


def test_attention_keeps_the_probabilities_not_the_scores_for_backward() -> None:
    # The gradient reads the softmax output P (Softmax's gradient and dV = P^T dO) and the scaled query, the
    # transposed key and value; the pre-softmax scores feed no gradient op.
    spec = _spec("gpt2_tiny")
    graph = _trace(tfb.build_model(spec), spec, 2, "training")
    saved: dict[str, set[str]] = {}
    for op in graph.get_operations():
        if "l3_h0_attn" not in op.name or op.name.startswith("gradient_tape"):
            continue
        for out in op.outputs:
            users = {c.type for c in out.consumers() if c.name.startswith("gradient_tape")}
            if users and out.shape.rank == 4:
                saved[op.type] = saved.get(op.type, set()) | users
    assert saved == {"Softmax": {"BatchMatMulV2", "Mul"}, "Mul": {"BatchMatMulV2"}, "Transpose": {"BatchMatMulV2"}}
