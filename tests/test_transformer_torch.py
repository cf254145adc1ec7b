"""Transformers in PyTorch (issue 21): LayerNorm, MultiHeadAttention (math path), PositionEmbedding, GlobalAvgPool1D,
gelu / gelu_tanh and the tied head, against the numpy reference (inference and a training step), a hand-computed
attention, the causal mask, the tied embedding's single gradient and FlopCounterMode against the analytic count."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import require_or_skip

torch = require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")

from xfbench.analytics import layers as L  # noqa: E402
from xfbench.analytics.catalog import catalog_model  # noqa: E402
from xfbench.analytics.predict import count_params, counter_prediction  # noqa: E402
from xfbench.analytics.reference import reference_forward  # noqa: E402
from xfbench.analytics.spec import ModelSpec, spec_from_dict  # noqa: E402
from xfbench.analytics.weights import make_batch, random_weights  # noqa: E402
from xfbench.backends import get_backend  # noqa: E402
from xfbench.backends.torch import model as torch_model  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]
tb = get_backend("torch")


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


def _token_ce(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy over every (sample, token) of ``(N, T, V)`` logits (or ``(N, V)``), in float64."""
    z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(z)), y.reshape(-1)].mean())


def _mixed_spec(causal: bool, use_bias: bool) -> ModelSpec:
    """A float (5, 4) input; cross-attention (query: a gelu Dense to 6 features plus a 9-row position table,
    key/value: the raw 4-feature input), LayerNorm, gelu_tanh, self-attention, mean over time, a 3-class head."""
    return spec_from_dict(
        {
            "input_shape": [5, 4],
            "layers": [
                {"type": "Dense", "units": 6, "activation": "gelu", "name": "d"},
                {"type": "PositionEmbedding", "length": 9, "name": "pe"},
                {
                    "type": "MultiHeadAttention",
                    "heads": 2,
                    "key_dim": 3,
                    "causal": causal,
                    "use_bias": use_bias,
                    "inputs": ["pe", "input"],
                    "name": "cross",
                },
                {"type": "LayerNorm", "epsilon": 1e-5},
                {"type": "Activation", "kind": "gelu_tanh"},
                {"type": "MultiHeadAttention", "heads": 3, "key_dim": 2, "causal": causal, "use_bias": use_bias},
                {"type": "GlobalAvgPool1D"},
                {"type": "Dense", "units": 3},
            ],
        }
    )


def _token_spec(causal: bool) -> ModelSpec:
    """Tokens (8,) over a vocabulary of 11; learned positions (12 rows); one attention layer; a Dense per token."""
    return spec_from_dict(
        {
            "input_shape": [8],
            "layers": [
                {"type": "Embedding", "vocab": 11, "dim": 6},
                {"type": "PositionEmbedding", "length": 12},
                {"type": "MultiHeadAttention", "heads": 2, "key_dim": 3, "causal": causal},
                {"type": "Dense", "units": 5},
            ],
        }
    )


def test_every_new_type_has_a_builder() -> None:
    for cls in (L.LayerNorm, L.MultiHeadAttention, L.PositionEmbedding, L.GlobalAvgPool1D):
        assert cls in torch_model.BUILDERS


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny"])
def test_catalog_inference_parity(name: str) -> None:
    spec = catalog_model(name, input_shape=(16,))
    w = random_weights(spec)
    x, _ = make_batch(spec, 2, seed=1)
    model = tb.build_model(spec)
    tb.set_weights(model, w)
    assert _rel(tb.to_numpy(tb.infer(model, x)), reference_forward(spec, w, x)) < 1e-5
    assert tb.count_params(model) == count_params(spec, "torch")
    # the neutral format round-trips (a tied head without a bias exports nothing)
    back = tb.get_weights(model)
    assert len(back) == len(w)
    assert all(np.array_equal(a, b) for a, b in zip(back, w))


def test_gpt2_parameters_count_the_tied_matrix_once() -> None:
    """124,439,808 (the issue's figure for GPT-2 small, Hugging Face's GPT2LMHeadModel): the 50,257 x 768 matrix
    once. Counting it twice would give 124,439,808 + 38,597,376."""
    spec = catalog_model("gpt2")
    model = tb.build_model(spec, init=False)
    assert tb.count_params(model) == 124_439_808 == count_params(spec, "torch")


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_mixed_spec_parity(causal: bool, use_bias: bool) -> None:
    spec = _mixed_spec(causal, use_bias)
    w = random_weights(spec, seed=3)
    x, y = make_batch(spec, 3, seed=4)
    model = tb.build_model(spec)
    tb.set_weights(model, w)
    assert _rel(tb.to_numpy(tb.infer(model, x)), reference_forward(spec, w, x)) < 1e-5
    assert tb.count_params(model) == count_params(spec, "torch")
    assert all(np.array_equal(a, b) for a, b in zip(tb.get_weights(model), w))
    loss = float(tb.make_train_step(model, spec, "sgd", lr=0.0)(x, y))
    assert loss == pytest.approx(_token_ce(reference_forward(spec, w, x, training=True), y), rel=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_cross_attention_of_different_lengths(causal: bool) -> None:
    """A query of 3 steps attends to a key/value of 5 steps with other features (a spec has one input, so the
    layer is built alone): the module against the type's numpy reference."""
    layer = L.MultiHeadAttention(heads=2, key_dim=3, causal=causal)
    shapes = [(3, 4), (5, 7)]
    module = torch_model.BUILDERS[L.MultiHeadAttention](layer, shapes)
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(shape) * 0.5 for _, shape, _ in layer.weight_slots(shapes)]
    module.set_neutral([p.astype(np.float32) for p in params])
    xq = rng.standard_normal((2, *shapes[0])).astype(np.float32)
    xkv = rng.standard_normal((2, *shapes[1])).astype(np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(xq), torch.from_numpy(xkv)).numpy()
    ref = layer.forward([xq.astype(np.float64), xkv.astype(np.float64)], [p.astype(np.float32) for p in params], False)
    assert out.shape == (2, 3, 4)
    assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize(("causal", "expected"), [(False, [3.5, 3.8]), (True, [2.0, 3.8])])
def test_hand_computed_attention(causal: bool, expected: list[float]) -> None:
    """One head, key_dim 1, T = 2, one feature, no biases; x = [1, 2], query kernel ln 3, key and value kernels 1,
    output kernel 2. q = [ln 3, 2 ln 3], k = v = [1, 2]; scores (scaled by 1/sqrt(1)) q_t k_s:
      row 0: [ln 3, 2 ln 3] -> exp [3, 9]  -> p = [1/4, 3/4] -> o = 1/4 + 3/2 = 1.75 -> out 3.5
      row 1: [2 ln 3, 4 ln 3] -> exp [9, 81] -> p = [1/10, 9/10] -> o = 0.1 + 1.8 = 1.9 -> out 3.8
    Causal: row 0 sees only key 0 (p = [1, 0], o = 1, out 2.0); row 1 sees both (3.8)."""
    spec = spec_from_dict(
        {
            "input_shape": [2, 1],
            "layers": [{"type": "MultiHeadAttention", "heads": 1, "key_dim": 1, "causal": causal, "use_bias": False}],
        }
    )
    model = tb.build_model(spec)
    tb.set_weights(model, [np.array([[math.log(3.0)]]), np.array([[1.0]]), np.array([[1.0]]), np.array([[2.0]])])
    out = tb.to_numpy(tb.infer(model, np.array([[[1.0], [2.0]]], np.float32)))
    np.testing.assert_allclose(out[0, :, 0], expected, rtol=1e-6)


def test_hand_computed_layernorm_and_gelu() -> None:
    """LayerNorm of [1, 2, 3, 6] (mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5) with gamma 2 and beta 1:
    2 (x - 3) / sqrt(3.5 + 1e-5) + 1; then gelu(z) = z Phi(z) at z = the LayerNorm output."""
    spec = spec_from_dict(
        {"input_shape": [4], "layers": [{"type": "LayerNorm", "epsilon": 1e-5}, {"type": "Activation", "kind": "gelu"}]}
    )
    model = tb.build_model(spec)
    tb.set_weights(model, [np.full(4, 2.0, np.float32), np.ones(4, np.float32)])
    x = np.array([[1.0, 2.0, 3.0, 6.0]], np.float32)
    z = 2.0 * (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / math.sqrt(3.5 + 1e-5) + 1.0
    expected = [v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z]
    np.testing.assert_allclose(tb.to_numpy(tb.infer(model, x))[0], expected, rtol=1e-6)


def test_gelu_forms_differ() -> None:
    """gelu (erf) and gelu_tanh at 1.0: 0.5 (1 + erf(1/sqrt 2)) = 0.841345; 0.5 (1 + tanh(sqrt(2/pi) (1 +
    0.044715))) = 0.841192."""
    x = torch.tensor([1.0], dtype=torch.float64)
    gelu, gelu_tanh = torch_model._activation_fn("gelu"), torch_model._activation_fn("gelu_tanh")
    assert gelu is not None and gelu_tanh is not None
    assert float(gelu(x)) == pytest.approx(0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0))), rel=1e-12)
    inner = math.sqrt(2.0 / math.pi) * (1.0 + 0.044715)
    assert float(gelu_tanh(x)) == pytest.approx(0.5 * (1.0 + math.tanh(inner)), rel=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_mask_hides_later_tokens(causal: bool) -> None:
    """Changing token 5 of 8: with the mask, outputs 0..4 stay as they were and 5 changes; without it, every
    output changes."""
    spec = _token_spec(causal)
    model = tb.build_model(spec)
    tb.set_weights(model, random_weights(spec, seed=6))
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 8]], np.int64)
    x2 = x.copy()
    x2[0, 5] = 0
    a, b = tb.to_numpy(tb.infer(model, x)), tb.to_numpy(tb.infer(model, x2))
    moved = np.abs(a - b).max(axis=-1)[0]  # per position
    if causal:
        assert moved[:5].max() <= 1e-6
        assert moved[5:].min() > 1e-4
    else:
        assert moved.min() > 1e-4


def test_causal_mask_after_uninitialised_build() -> None:
    """``init=False`` materialises the model with ``to_empty`` (buffers uninitialised): the mask is refilled."""
    spec = catalog_model("gpt2_tiny", input_shape=(16,))
    w = random_weights(spec)
    x, _ = make_batch(spec, 1, seed=2)
    model = tb.build_model(spec, init=False)
    tb.set_weights(model, w)
    assert _rel(tb.to_numpy(tb.infer(model, x)), reference_forward(spec, w, x)) < 1e-5


def test_gpt2_tiny_training_step_loss() -> None:
    """lr 0: the step's loss is the mean token cross-entropy of the reference's logits."""
    spec = catalog_model("gpt2_tiny", input_shape=(16,))
    w = random_weights(spec)
    x, y = make_batch(spec, 2, seed=3)
    model = tb.build_model(spec)
    tb.set_weights(model, w)
    loss = float(tb.make_train_step(model, spec, "sgd", lr=0.0)(x, y))
    assert loss == pytest.approx(_token_ce(reference_forward(spec, w, x, training=True), y), rel=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(tb.get_weights(model), w))


def test_tied_embedding_gets_one_summed_gradient() -> None:
    """One SGD step on gpt2_tiny: the matrix the token gather and the head share is one Parameter; its step is
    -lr times the derivative of the loss through both uses. Checked against central differences of the float64
    reference (which feeds the same matrix to the gather and the head) along three directions: rows of tokens in
    the batch (gather and head), rows of tokens not in it (head only), and all rows. A gradient with only the
    head's part fails the first, one with only the gather's part fails the second."""
    spec = catalog_model("gpt2_tiny", input_shape=(16,))
    w = random_weights(spec)
    x, y = make_batch(spec, 2, seed=3)
    model = tb.build_model(spec)
    tb.set_weights(model, w)
    layers: Any = model.layers
    emb = layers[0].embedding.weight
    # hand count of gpt2_tiny's tensors: wte 1, wpe 1, per block ln 2 + attention 8 + ln 2 + fc 2 + proj 2
    # (2 blocks), ln_f 2, the tied head 0
    params = list(model.parameters())
    assert len(params) == 1 + 1 + 2 * 16 + 2 + 0
    assert sum(p is emb for p in params) == 1
    lr = 0.5
    before = tb.to_numpy(emb).astype(np.float64)
    tb.make_train_step(model, spec, "sgd", lr=lr)(x, y)
    assert layers[-1]._tie[0].embedding.weight is emb  # the head still reads the one Parameter
    grad = (before - tb.to_numpy(emb).astype(np.float64)) / lr
    assert np.abs(grad).max() > 0

    def loss_at(matrix: np.ndarray) -> float:
        return _token_ce(reference_forward(spec, [matrix, *w[1:]], x, training=True), y)

    rng = np.random.default_rng(7)
    used = np.zeros(before.shape[0], bool)
    used[np.unique(x)] = True
    w0 = np.asarray(w[0], np.float64)
    for rows in (used, ~used, np.ones_like(used)):
        direction = rng.standard_normal(before.shape) * rows[:, None]
        eps = 1e-4
        numeric = (loss_at(w0 + eps * direction) - loss_at(w0 - eps * direction)) / (2 * eps)
        assert float((grad * direction).sum()) == pytest.approx(numeric, rel=2e-3)


# FlopCounterMode on the math path: the projections are addmm (mm without a bias, and in backward), the two
# attention products per head are bmm (forward 2, backward 4: d(scores) and d(values) for P V, d(q) and d(k) for
# Q K^T, all bmm); the token gather, LayerNorm, softmax, GELU and the mask are not counted.
MATMUL_OPS = {"aten.addmm", "aten.mm", "aten.bmm"}


@pytest.mark.parametrize("phase", ["inference", "training"])
@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny"])
def test_flop_counter_reconciles(name: str, phase: str) -> None:
    spec = catalog_model(name)
    fc = tb.count_flops(tb.build_model(spec), spec, 2, phase)
    assert fc.total == counter_prediction(spec, 2, "torch", phase)
    assert set(fc.by_op) <= MATMUL_OPS
    assert fc.unsupported == ()
    # the attention products by hand: N=2, H=2, T=S=64, K=64, 2 blocks; each product 2 N H T S K = 2,097,152;
    # forward Q K^T and P V, backward 4 more
    per_product = 2 * 2 * 2 * 64 * 64 * 64
    assert fc.by_op["aten.bmm"] == (2 if phase == "inference" else 6) * 2 * per_product


def test_flop_counter_attention_on_the_model_input() -> None:
    """Attention reading the raw (float) model input in training: FlopCounterMode counts the output projection's
    input gradient, 2 N T HK F = 2 * 2 * 5 * 6 * 4 = 480 FLOPs, which the layer needs for its own weights, but not
    the query/key/value input gradients (the model input wants none)."""
    spec = spec_from_dict(
        {
            "input_shape": [5, 4],
            "layers": [
                {"type": "MultiHeadAttention", "heads": 2, "key_dim": 3},
                {"type": "GlobalAvgPool1D"},
                {"type": "Dense", "units": 3},
            ],
        }
    )
    fc = tb.count_flops(tb.build_model(spec), spec, 2, "training")
    assert fc.total == counter_prediction(spec, 2, "torch", "training")
