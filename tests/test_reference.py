"""Tests of the float64 numpy reference forward (analytics/reference.py).

Expected values are worked out by hand (derivations in the comments) or by naive loops written here,
never by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from xfbench.analytics import CATALOG, catalog_model, infer_shapes
from xfbench.analytics import layers as L
from xfbench.analytics.reference import reference_forward
from xfbench.analytics.spec import ModelSpec
from xfbench.analytics.weights import make_batch, random_weights, weight_slots


def _spec(input_shape: tuple[int, ...], *layers, input_dtype: str = "float32") -> ModelSpec:
    return ModelSpec("t", tuple(input_shape), tuple(layers), input_dtype=input_dtype)


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# --------------------------------------------------------------------------------------------- conv


def test_conv_valid_3x3_by_hand() -> None:
    # x[r, c] = 4r + c; kernel picks x[i,j] + 2 x[i,j+1] + x[i+1,j+1] - x[i+2,j+2], bias 0.5:
    # (4i+j) + 2(4i+j+1) + (4i+j+5) - (4i+j+10) + 0.5 = 12i + 3j - 2.5
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    kernel = np.array([[1, 2, 0], [0, 1, 0], [0, 0, -1]], dtype=np.float64).reshape(1, 1, 3, 3)
    bias = np.array([0.5])
    spec = _spec((1, 4, 4), L.Conv2D(1, 3, 1, "valid"))
    out = reference_forward(spec, [kernel, bias], x)
    np.testing.assert_allclose(out, [[[[-2.5, 0.5], [9.5, 12.5]]]])


def test_conv_same_even_kernel_stride2_pads_after() -> None:
    # 5x5 input, kernel 2, stride 2: out ceil(5/2)=3, total pad (3-1)*2+2-5 = 1 -> 0 before, 1 after.
    # x[r,c] = 5r + c; kernel [[1,2],[3,4]] at window top-left (a,b)=(2i,2j):
    #   interior: 10*x[a,b] + 41 -> 41, 61 / 141, 161
    #   last column (b=4, cols 5 padded): x[a,4] + 3 x[a+1,4] = 40i + 31 -> 31, 71
    #   last row (a=4, row 5 padded): x[4,b] + 2 x[4,b+1] = 62 + 6j -> 62, 68
    #   corner: x[4,4] = 24
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    kernel = np.array([[1, 2], [3, 4]], dtype=np.float64).reshape(1, 1, 2, 2)
    spec = _spec((1, 5, 5), L.Conv2D(1, 2, 2, "same", use_bias=False))
    out = reference_forward(spec, [kernel], x)
    np.testing.assert_allclose(out[0, 0], [[41, 61, 31], [141, 161, 71], [62, 68, 24]])


def _naive_conv(x: np.ndarray, k: np.ndarray, b: np.ndarray, stride: int, pad: tuple[int, int]) -> np.ndarray:
    n, c, h, w = x.shape
    o, _, kh, kw = k.shape
    xp = np.zeros((n, c, h + pad[0] + pad[1], w + pad[0] + pad[1]))
    xp[:, :, pad[0] : pad[0] + h, pad[0] : pad[0] + w] = x
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            for i in range(oh):
                for j in range(ow):
                    acc = b[oi]
                    for ci in range(c):
                        for p in range(kh):
                            for q in range(kw):
                                acc += xp[ni, ci, i * stride + p, j * stride + q] * k[oi, ci, p, q]
                    out[ni, oi, i, j] = acc
    return out


@pytest.mark.parametrize(
    ("padding", "stride", "pads"),
    [(1, 2, (1, 1)), (0, 1, (0, 0)), ("same", 2, (0, 1)), ("same", 1, (1, 1))],
)
def test_conv_multichannel_against_naive_loop(padding, stride, pads) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6))
    k = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    # 6x6, kernel 3: same stride 2 -> out 3, total (3-1)*2+3-6 = 1 (0 before, 1 after);
    # same stride 1 -> total 2 (1, 1).
    spec = _spec((3, 6, 6), L.Conv2D(4, 3, stride, padding))
    out = reference_forward(spec, [k, b], x)
    np.testing.assert_allclose(out, _naive_conv(x, k, b, stride, pads), rtol=1e-12, atol=1e-12)


def test_conv_fused_relu() -> None:
    x = np.array([[[[1.0, -2.0]]]])  # (1, 1, 1, 2)
    spec = _spec((1, 1, 2), L.Conv2D(2, 1, activation="relu"))
    k = np.array([1.0, -1.0]).reshape(2, 1, 1, 1)
    out = reference_forward(spec, [k, np.zeros(2)], x)
    np.testing.assert_allclose(out[0], [[[1.0, 0.0]], [[0.0, 2.0]]])


# --------------------------------------------------------------------------------------------- pools

_NEG = -(np.arange(9, dtype=np.float64) + 1).reshape(1, 1, 3, 3)  # [[-1,-2,-3],[-4,-5,-6],[-7,-8,-9]]
_POS = (np.arange(9, dtype=np.float64) + 1).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]


def test_max_pool_explicit_padding_is_minus_inf() -> None:
    # pool 2 stride 2 pad 1: windows over original rows/cols (-1,0) and (1,2); zero padding would give 0s.
    out = reference_forward(_spec((1, 3, 3), L.MaxPool2D(2, 2, 1)), [], _NEG)
    np.testing.assert_array_equal(out[0, 0], [[-1, -2], [-4, -5]])


def test_max_pool_same_pads_after() -> None:
    # 3x3, pool 2 stride 2 same: out 2, total pad 1, all after -> windows (0,1) and (2,pad).
    out = reference_forward(_spec((1, 3, 3), L.MaxPool2D(2, 2, "same")), [], _NEG)
    np.testing.assert_array_equal(out[0, 0], [[-1, -3], [-7, -9]])


def test_avg_pool_explicit_padding_counts_zeros() -> None:
    # pool 2 stride 2 pad 1, always divided by 4: 1/4, (2+3)/4, (4+7)/4, (5+6+8+9)/4
    out = reference_forward(_spec((1, 3, 3), L.AvgPool2D(2, 2, 1)), [], _POS)
    np.testing.assert_allclose(out[0, 0], [[0.25, 1.25], [2.75, 7.0]])


def test_avg_pool_same_excludes_padding() -> None:
    # pad after by 1: (1+2+4+5)/4, (3+6)/2, (7+8)/2, 9/1
    out = reference_forward(_spec((1, 3, 3), L.AvgPool2D(2, 2, "same")), [], _POS)
    np.testing.assert_allclose(out[0, 0], [[3.0, 4.5], [7.5, 9.0]])


def test_global_avg_pool() -> None:
    x = np.stack([_POS[0, 0], 2 * _POS[0, 0]])[None]  # (1, 2, 3, 3); means 5 and 10
    out = reference_forward(_spec((2, 3, 3), L.GlobalAvgPool2D()), [], x)
    np.testing.assert_allclose(out, [[5.0, 10.0]])


# --------------------------------------------------------------------------------------------- flatten / dense


def test_flatten_is_chw_then_dense() -> None:
    # (C, H, W) = (2, 1, 2): channel 0 = [1, 2], channel 1 = [3, 4]; CHW flatten -> [1, 2, 3, 4].
    # kernel [1, 10, 100, 1000]: 1 + 20 + 300 + 4000 = 4321 (HWC order would give 4231), + bias 0.5.
    x = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    spec = _spec((2, 1, 2), L.Flatten(), L.Dense(1))
    outs = reference_forward(spec, [np.array([[1.0], [10.0], [100.0], [1000.0]]), np.array([0.5])], x, return_all=True)
    np.testing.assert_array_equal(outs[0], [[1, 2, 3, 4]])
    np.testing.assert_allclose(outs[1], [[4321.5]])


def test_dense_on_sequences_acts_on_last_axis() -> None:
    x = np.array([[[1.0, 2.0], [3.0, 4.0], [0.0, -1.0]]])  # (1, T=3, F=2)
    k = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # (2, 3)
    # rows: [1, 2, 2-2=0], [3, 4, 6-4=2], [0, -1, 0+1=1]
    out = reference_forward(_spec((3, 2), L.Dense(3, use_bias=False)), [k], x)
    np.testing.assert_allclose(out, [[[1, 2, 0], [3, 4, 2], [0, -1, 1]]])


# --------------------------------------------------------------------------------------------- activations


def test_softmax_hand_values_and_rows_sum_to_one() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]; a shift of 1000 must not overflow.
    x = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0 + math.log(3.0)]])
    out = reference_forward(_spec((2,), L.Activation("softmax")), [], x)
    np.testing.assert_allclose(out, [[0.25, 0.75], [0.25, 0.75]], rtol=1e-12)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 5, 7)) * 20
    s = reference_forward(_spec((5, 7), L.Activation("softmax")), [], z)
    np.testing.assert_allclose(s.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(s >= 0)


def test_other_activations_and_dropout_identity() -> None:
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(reference_forward(_spec((3,), L.Activation("relu")), [], x), [[0, 0, 3]])
    np.testing.assert_allclose(
        reference_forward(_spec((3,), L.Activation("sigmoid")), [], x), [[_sig(-2), 0.5, _sig(3)]], rtol=1e-12
    )
    np.testing.assert_allclose(
        reference_forward(_spec((3,), L.Activation("tanh")), [], x), [[math.tanh(-2), 0.0, math.tanh(3)]], rtol=1e-12
    )
    np.testing.assert_array_equal(reference_forward(_spec((3,), L.Dropout(0.5)), [], x), x)


def _loop_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for ni in range(n):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    s = 0.0
                    for cj in range(ci - size // 2, ci + (size - 1) // 2 + 1):
                        if 0 <= cj < c:
                            s += x[ni, cj, i, j] ** 2
                    out[ni, ci, i, j] = x[ni, ci, i, j] / (k + alpha / size * s) ** beta
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn_against_loop(size: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 6, 3, 2)) * 3
    layer = L.LocalResponseNorm(size=size, alpha=0.3, beta=0.75, k=1.5)
    out = reference_forward(_spec((6, 3, 2), layer), [], x)
    np.testing.assert_allclose(out, _loop_lrn(x, size, 0.3, 0.75, 1.5), rtol=1e-12)


def test_lrn_single_channel_hand_value() -> None:
    # size 3, one channel holding 2: 2 / (1 + 0.3/3 * 4)^0.5 = 2 / sqrt(1.4)
    x = np.full((1, 1, 1, 1), 2.0)
    out = reference_forward(_spec((1, 1, 1), L.LocalResponseNorm(3, 0.3, 0.5, 1.0)), [], x)
    np.testing.assert_allclose(out.ravel(), [2.0 / math.sqrt(1.4)], rtol=1e-12)


# --------------------------------------------------------------------------------------------- LSTM

_K = np.array([[0.5, -0.5, 1.0, 2.0]])  # (in=1, 4h): i, f, g, o
_R = np.array([[0.3, 0.2, -0.4, 0.1]])  # (h=1, 4h)
_B = np.array([0.1, 0.2, 0.3, -0.1])


def _hand_lstm_step(x: float, h: float, c: float) -> tuple[float, float]:
    zi = 0.5 * x + 0.3 * h + 0.1
    zf = -0.5 * x + 0.2 * h + 0.2
    zg = 1.0 * x - 0.4 * h + 0.3
    zo = 2.0 * x + 0.1 * h - 0.1
    c_new = _sig(zf) * c + _sig(zi) * math.tanh(zg)
    return _sig(zo) * math.tanh(c_new), c_new


def test_lstm_one_step_by_hand() -> None:
    # h0 = c0 = 0, x = 1: i = sig(0.6), f irrelevant, g = tanh(1.3), o = sig(1.9); c = i*g; h = o*tanh(c)
    c1 = _sig(0.6) * math.tanh(1.3)
    h1 = _sig(1.9) * math.tanh(c1)
    spec = _spec((1, 1), L.LSTM(1))
    out = reference_forward(spec, [_K, _R, _B], np.array([[[1.0]]]))
    np.testing.assert_allclose(out, [[h1]], rtol=1e-12)


def test_lstm_two_steps_by_hand() -> None:
    h1, c1 = _hand_lstm_step(1.0, 0.0, 0.0)
    h2, _ = _hand_lstm_step(-2.0, h1, c1)
    x = np.array([[[1.0], [-2.0]]])
    seq = reference_forward(_spec((2, 1), L.LSTM(1, return_sequences=True)), [_K, _R, _B], x)
    np.testing.assert_allclose(seq, [[[h1], [h2]]], rtol=1e-12)
    last = reference_forward(_spec((2, 1), L.LSTM(1)), [_K, _R, _B], x)
    np.testing.assert_allclose(last, [[h2]], rtol=1e-12)


def test_lstm_batch_rows_are_independent() -> None:
    spec = _spec((3, 2), L.LSTM(4, return_sequences=True))
    w = random_weights(spec, seed=3, dtype="float64")
    x = np.random.default_rng(4).standard_normal((3, 3, 2))
    both = reference_forward(spec, w, x)
    for i in range(3):
        np.testing.assert_allclose(both[i : i + 1], reference_forward(spec, w, x[i : i + 1]), rtol=1e-12)


# --------------------------------------------------------------------------------------------- embedding


def test_embedding_gathers_rows() -> None:
    table = np.arange(12, dtype=np.float64).reshape(4, 3)  # row r = [3r, 3r+1, 3r+2]
    spec = _spec((3,), L.Embedding(4, 3), input_dtype="int64")
    out = reference_forward(spec, [table], np.array([[2, 0, 3]]))
    np.testing.assert_array_equal(out, [[[6, 7, 8], [0, 1, 2], [9, 10, 11]]])
    with pytest.raises(ValueError, match="token"):
        reference_forward(spec, [table], np.array([[4, 0, 0]]))


# --------------------------------------------------------------------------------------------- validation


def test_weight_shape_mismatch_names_slot() -> None:
    spec = _spec((1, 4, 4), L.Conv2D(2, 3, name="c1"), L.Flatten(), L.Dense(3, name="fc1"))
    good = [np.zeros(s.shape) for s in weight_slots(spec)]
    bad = list(good)
    bad[2] = np.zeros((7, 3))  # fc1.kernel should be (8, 3)
    with pytest.raises(ValueError, match=r"fc1\.kernel"):
        reference_forward(spec, bad, np.zeros((1, 1, 4, 4)))


def test_weight_count_mismatch_names_missing_slot() -> None:
    spec = _spec((1, 4, 4), L.Conv2D(2, 3, name="c1"), L.Flatten(), L.Dense(3, name="fc1"))
    good = [np.zeros(s.shape) for s in weight_slots(spec)]
    with pytest.raises(ValueError, match=r"fc1\.bias"):
        reference_forward(spec, good[:3], np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="expected 4"):
        reference_forward(spec, [*good, np.zeros(1)], np.zeros((1, 1, 4, 4)))


def test_input_shape_mismatch() -> None:
    spec = _spec((1, 4, 4), L.Flatten())
    with pytest.raises(ValueError, match="input"):
        reference_forward(spec, [], np.zeros((1, 1, 4, 5)))


# --------------------------------------------------------------------------------------------- catalog

# Full-width VGG classifiers at 224x224 need ~1 GB of float64 fc6 weights; 32x32 keeps every layer.
_SMALL = {"vgg11": (1, 32, 32), "vgg16": (3, 32, 32), "vgg19": (3, 32, 32)}


@pytest.mark.parametrize("name", list(CATALOG))
def test_catalog_model_runs_with_predicted_shapes(name: str) -> None:
    spec = catalog_model(name, input_shape=_SMALL.get(name))
    weights = random_weights(spec, seed=0)
    x, _ = make_batch(spec, 1, seed=0)
    outs = reference_forward(spec, weights, x, return_all=True)
    shapes = infer_shapes(spec)
    assert len(outs) == len(spec.layers)
    for out, shape in zip(outs, shapes):
        assert out.shape == (1, *shape)
        assert out.dtype == np.float64
        assert np.all(np.isfinite(out))
    if name == "lstm":
        np.testing.assert_allclose(outs[-1].sum(axis=-1), 1.0, rtol=1e-12)


def test_catalog_defaults_kept_for_core_models() -> None:
    assert "cnn3" not in _SMALL and "alexnet" not in _SMALL and "lstm" not in _SMALL
    assert catalog_model("cnn3").input_shape == (3, 200, 300)
