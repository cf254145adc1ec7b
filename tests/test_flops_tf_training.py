"""TensorFlow's profiler in training: gradient ops counted and predicted under the profiler's own rules.

Every expected figure below is hand arithmetic written out in the test (the registry formulas of
``tensorflow/python/profiler/internal/flops_registry.py`` applied to the layer shapes by hand), never the
output of :func:`xfbench.analytics.costs.tf_profiler_flops`. The framework-free tests check the analytic
prediction against those figures; the ``tensorflow`` tests check TensorFlow's own counter against the same
figures and against the prediction (|error| <= 0.1%).
"""

from __future__ import annotations

import warnings

import pytest
from conftest import require_backend_or_skip
from xfbench.analytics import catalog_model
from xfbench.analytics.costs import TF_PROFILER_OPS, tf_profiler_flops
from xfbench.analytics.spec import ModelSpec, spec_from_dict
from xfbench.backends import get_backend

# A conv whose gradient the profiler prices from its 8x8 input (valid padding), a max pool, a dense head.
TINY_CONV = {
    "name": "tinyconv",
    "input_shape": [1, 8, 8],
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
        {"type": "MaxPool2D", "pool": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 5},
    ],
}
# N = 2. Conv: 1 -> 4 maps, 3x3, 8x8 -> 6x6; pool 2x2 -> 4x3x3 = 36 features; dense 36 -> 5 (logits).
TINY_CONV_TRAINING_N2 = {
    "Conv2D": 2 * 2 * 6 * 6 * 4 * 1 * 3 * 3,  # 5184: 2 per MAC over the 6x6 output
    # 2 * elements(input 2x8x8x1) * elements(kernel 3x3x1x4) / (C_in 1 * stride area 1) = 2*128*36 = 9216:
    # priced from the 8x8 input, not the 6x6 output; the first conv's input gradient is counted too.
    "Conv2DBackpropInput": 2 * (2 * 8 * 8 * 1) * (3 * 3 * 1 * 4) // (1 * 1),
    "Conv2DBackpropFilter": 2 * (2 * 8 * 8 * 1) * (3 * 3 * 1 * 4) // (1 * 1),
    # forward 2*2*36*5 = 720; weight gradient 720; input gradient 720 (the conv before needs it)
    "MatMul": 3 * (2 * 2 * 36 * 5),
    "BatchMatMulV2": 0,
    "BiasAdd": 2 * 4 * 6 * 6 + 2 * 5,  # 288 + 10
    "BiasAddGrad": (2 * 4 * 6 * 6 - 4) + (2 * 5 - 5),  # a sum: elements - C = 284 + 5
    "MaxPool": 2 * 2 * (2 * 4 * 3 * 3),  # window 2x2 per pooled output: 288
    "MaxPoolGrad": (2 * 2 + 1) * (2 * 4 * 3 * 3),  # (window + 1) per pooled output: 360
    "AvgPool": 0,
    "AvgPoolGrad": 0,
    "Mean": 2,  # the loss: mean over the batch's 2 per-sample losses
}

# A stride-2 'same' conv on 5x5 (output 3x3): the registry's input/stride-area rule gives 2*25*9/4 = 112.5,
# truncated to 112, below the forward 162. Its bias has one element, which Keras adds with AddV2 (gradient:
# Sum), not BiasAdd: no BiasAdd/BiasAddGrad for the conv.
STRIDED = {
    "name": "strided",
    "input_shape": [1, 5, 5],
    "layers": [
        {"type": "Conv2D", "filters": 1, "kernel": 3, "stride": 2, "padding": "same"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2},
    ],
}
STRIDED_TRAINING_N1 = {
    "Conv2D": 2 * 1 * 3 * 3 * 1 * 1 * 3 * 3,  # 162
    "Conv2DBackpropInput": 112,  # int(2 * 25 * 9 / 4) = int(112.5)
    "Conv2DBackpropFilter": 112,
    "MatMul": 3 * (2 * 1 * 9 * 2),  # forward, weight and input gradient: 108
    "BiasAdd": 2,  # the dense's only
    "BiasAddGrad": 2 - 2,  # batch 1: the dense bias gradient sums nothing
    "Mean": 1,
}

# An LSTM (T=3, F=4, h=2, gates 4h=8) then a dense 2 -> 3; N = 2.
TINY_LSTM = {
    "name": "tinylstm",
    "input_shape": [3, 4],
    "layers": [{"type": "LSTM", "units": 2}, {"type": "Dense", "units": 3}],
}
_X_STEP = 2 * 2 * 4 * 8  # x W per step: 128
_H_STEP = 2 * 2 * 2 * 8  # h U per step: 64
TINY_LSTM_TRAINING_N2 = {
    # forward 3*(128+64); weight gradients the same; no x gradient (first layer); h gradient for 2 of 3
    # steps (h_0 is a constant); dense 2*2*2*3 = 24, three times (forward, weight, input gradient)
    "MatMul": 3 * (_X_STEP + _H_STEP) * 2 + 2 * _H_STEP + 3 * 24,  # 1352
    "BiasAdd": 3 * 2 * 8 + 2 * 3,  # one bias per gate per step (Keras), plus the dense's: 54
    "BiasAddGrad": 3 * (2 * 8 - 8) + (2 * 3 - 3),  # 27
    "Mean": 2,
}

# mlp 784-256-10, N = 2, training, by hand.
MLP_TRAINING_N2 = {
    # hidden: forward 2*2*784*256 = 802816 and its weight gradient (its input is the data: no gradient);
    # out: 2*2*256*10 = 10240 for forward, weight and input gradient
    "MatMul": 2 * 802816 + 3 * 10240,  # 1636352
    "BiasAdd": 2 * 256 + 2 * 10,
    "BiasAddGrad": (2 * 256 - 256) + (2 * 10 - 10),
    "Mean": 2,
}


def _spec(d: dict) -> ModelSpec:
    return spec_from_dict(d)


def _nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


# ---- the analytic prediction against hand arithmetic (framework-free) ------------------------------------


def test_prediction_tiny_conv_training_by_hand() -> None:
    assert tf_profiler_flops(_spec(TINY_CONV), 2, "training") == TINY_CONV_TRAINING_N2
    assert TINY_CONV_TRAINING_N2["Conv2DBackpropFilter"] == 9216


def test_prediction_strided_same_conv_truncates() -> None:
    got = _nonzero(tf_profiler_flops(_spec(STRIDED), 1, "training"))
    assert got == _nonzero(STRIDED_TRAINING_N1)


def test_prediction_lstm_recurrent_gradient_skips_step_zero() -> None:
    assert _nonzero(tf_profiler_flops(_spec(TINY_LSTM), 2, "training")) == TINY_LSTM_TRAINING_N2
    assert TINY_LSTM_TRAINING_N2["MatMul"] == 1352


def test_prediction_mlp_training_by_hand() -> None:
    assert _nonzero(tf_profiler_flops(catalog_model("mlp"), 2, "training")) == MLP_TRAINING_N2


def test_prediction_inference_has_no_gradient_ops() -> None:
    pred = tf_profiler_flops(_spec(TINY_CONV), 2, "inference")
    # forward only: conv 5184 + bias 288, pool 288, dense 720 + bias 10; no loss
    assert _nonzero(pred) == {"Conv2D": 5184, "BiasAdd": 298, "MaxPool": 288, "MatMul": 720}


def test_prediction_rejects_bad_phase_and_batch() -> None:
    with pytest.raises(ValueError, match="phase 'backward'"):
        tf_profiler_flops(_spec(TINY_CONV), 2, "backward")
    with pytest.raises(ValueError, match="batch size"):
        tf_profiler_flops(_spec(TINY_CONV), 0, "training")


# ---- TensorFlow's own counter -----------------------------------------------------------------------------


@pytest.fixture
def tf_backend():  # type: ignore[no-untyped-def]
    require_backend_or_skip("tensorflow")
    return get_backend("tensorflow")


def _count(b, spec: ModelSpec, batch: int, phase: str = "training"):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return b.count_flops(b.build_model(spec), spec, batch, phase)


def _aligned(by_op: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in by_op.items() if k in TF_PROFILER_OPS and v}


@pytest.mark.tensorflow
def test_aligned_ops_hold_the_gradient_ops(tf_backend) -> None:  # type: ignore[no-untyped-def]
    for op in ("Conv2DBackpropInput", "Conv2DBackpropFilter", "BiasAddGrad", "MaxPoolGrad", "AvgPoolGrad"):
        assert op in tf_backend.ALIGNED_OPS


@pytest.mark.tensorflow
def test_counter_tiny_conv_training_equals_hand_figures(tf_backend) -> None:  # type: ignore[no-untyped-def]
    count = _count(tf_backend, _spec(TINY_CONV), 2)
    assert _aligned(count.by_op) == _nonzero(TINY_CONV_TRAINING_N2)
    # ... and the profiler counts more than the aligned set (loss arithmetic): the subset is a real subset
    assert count.total > sum(TINY_CONV_TRAINING_N2.values())


@pytest.mark.tensorflow
def test_counter_strided_conv_gradient_truncated(tf_backend) -> None:  # type: ignore[no-untyped-def]
    assert _aligned(_count(tf_backend, _spec(STRIDED), 1).by_op) == _nonzero(STRIDED_TRAINING_N1)


@pytest.mark.tensorflow
def test_counter_lstm_training_equals_hand_figures(tf_backend) -> None:  # type: ignore[no-untyped-def]
    count = _count(tf_backend, _spec(TINY_LSTM), 2)
    assert count.unsupported == ()
    assert _aligned(count.by_op) == TINY_LSTM_TRAINING_N2


@pytest.mark.tensorflow
def test_counter_mlp_training_equals_hand_figures(tf_backend) -> None:  # type: ignore[no-untyped-def]
    assert _aligned(_count(tf_backend, catalog_model("mlp"), 2).by_op) == MLP_TRAINING_N2


@pytest.mark.tensorflow
@pytest.mark.parametrize("phase", ["inference", "training"])
@pytest.mark.parametrize(
    "name,spec,batch",
    [
        ("mlp", None, 4),
        ("lenet", None, 3),
        ("tinyconv", TINY_CONV, 2),
        ("strided", STRIDED, 2),
        ("tinylstm", TINY_LSTM, 2),
        ("nin-small", None, 2),
    ],
)
def test_counter_equals_prediction_within_0_1_percent(
    tf_backend,  # type: ignore[no-untyped-def]
    name: str,
    spec: dict | None,
    batch: int,
    phase: str,
) -> None:
    if spec is not None:
        model_spec = _spec(spec)
    elif name == "nin-small":  # global average pool (Mean), max pools, explicit padding, 1x1 convs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_spec = catalog_model("nin", input_shape=(1, 67, 67))
    else:
        model_spec = catalog_model(name)
    count = _count(tf_backend, model_spec, batch, phase)
    predicted = tf_profiler_flops(model_spec, batch, phase)
    counted = sum(v for k, v in count.by_op.items() if k in tf_backend.ALIGNED_OPS)
    assert abs(counted - sum(predicted.values())) <= 1e-3 * sum(predicted.values()), (count.by_op, predicted)
    # op by op, not only in total
    assert _aligned(count.by_op) == _nonzero(predicted)
