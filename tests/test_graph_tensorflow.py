"""Graph specs (named ``inputs``) and the Add, Concatenate and BatchNorm layers in the TensorFlow / Keras 3 backend,
against the float64 numpy reference and hand arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import require_or_skip

require_or_skip("tensorflow", "tensorflow", reason="TensorFlow is not installed (tox -e tensorflow)")
require_or_skip("keras", "tensorflow", reason="Keras 3 is not installed (tox -e tensorflow)")

import xfbench.backends.tensorflow as tfb  # noqa: E402
import xfbench.backends.tensorflow.model as tf_model  # noqa: E402
from xfbench.analytics.costs import TF_PROFILER_OPS, tf_profiler_flops  # noqa: E402
from xfbench.analytics.layers import LAYER_TYPES  # noqa: E402
from xfbench.analytics.layers.batchnorm import UNBIASED_RUNNING_VARIANCE  # noqa: E402
from xfbench.analytics.predict import count_params as predicted_params  # noqa: E402
from xfbench.analytics.reference import reference_forward, reference_state_after_step  # noqa: E402
from xfbench.analytics.shapes import infer_shapes  # noqa: E402
from xfbench.analytics.spec import ModelSpec, is_sequential, spec_from_dict  # noqa: E402
from xfbench.analytics.weights import make_batch, output_kind, random_weights, weight_slots  # noqa: E402
from xfbench.backends.base import NotSupported  # noqa: E402
from xfbench.backends.tensorflow._tf import keras  # noqa: E402

pytestmark = pytest.mark.tensorflow

PARITY_RTOL = 1e-5


def _conv(name: str, filters: int, kernel: int, **kw: Any) -> dict[str, Any]:
    return {"type": "Conv2D", "name": name, "filters": filters, "kernel": kernel, **kw}


# A basic residual block: conv -> BN -> relu -> conv -> BN, identity shortcut from the model input (NCHW) added
# to the block's NHWC branch, relu, global average pool, logits.
RESIDUAL = {
    "name": "residual",
    "input_shape": [4, 6, 6],
    "layers": [
        _conv("c1", 4, 3, padding="same", use_bias=False),
        {"type": "BatchNorm", "name": "bn1"},
        {"type": "relu", "name": "r1"},
        _conv("c2", 4, 3, padding=1, use_bias=False),
        {"type": "BatchNorm", "name": "bn2", "momentum": 0.2, "epsilon": 1e-3},
        {"type": "Add", "name": "add", "inputs": ["bn2", "input"]},
        {"type": "relu", "name": "out"},
        {"type": "GlobalAvgPool2D", "name": "gap"},
        {"type": "Dense", "name": "fc", "units": 3},
    ],
}

# A projection shortcut: stride-2 3x3 branch and a stride-2 1x1 conv + BN on the shortcut; then Flatten -> BN on
# the (F,) vector -> Dense (the Flatten's order must be restored to (C, H, W) for the BN).
PROJECTION = {
    "name": "projection",
    "input_shape": [3, 8, 8],
    "layers": [
        _conv("stem", 4, 3, padding="same"),
        {"type": "BatchNorm", "name": "stem_bn"},
        {"type": "relu", "name": "stem_relu"},
        _conv("b_c1", 6, 3, stride=2, padding=1, use_bias=False),
        {"type": "BatchNorm", "name": "b_bn1"},
        {"type": "relu", "name": "b_r1"},
        _conv("b_c2", 6, 3, padding=1, use_bias=False),
        {"type": "BatchNorm", "name": "b_bn2"},
        _conv("down", 6, 1, stride=2, use_bias=False, inputs=["stem_relu"]),
        {"type": "BatchNorm", "name": "down_bn"},
        {"type": "Add", "name": "add", "inputs": ["b_bn2", "down_bn"]},
        {"type": "relu", "name": "out"},
        {"type": "Flatten", "name": "flat"},
        {"type": "BatchNorm", "name": "flat_bn"},
        {"type": "Dense", "name": "fc", "units": 5},
    ],
}

# An Inception-like module: 1x1, 1x1 -> 3x3, 1x1 (one filter) -> 5x5, 3x3 max pool -> 1x1, and the module's
# input itself, joined along channels; the output is the (C, H, W) feature map (mean squared error).
INCEPTION = {
    "name": "inception",
    "input_shape": [4, 6, 6],
    "layers": [
        _conv("b1", 2, 1, activation="relu", inputs=["input"]),
        _conv("b2r", 2, 1, activation="relu", inputs=["input"]),
        _conv("b2", 3, 3, padding="same", activation="relu"),
        _conv("b3r", 1, 1, activation="relu", inputs=["input"]),
        _conv("b3", 2, 5, padding="same"),
        {"type": "MaxPool2D", "name": "b4p", "pool": 3, "stride": 1, "padding": "same", "inputs": ["input"]},
        _conv("b4", 2, 1),
        {"type": "Concatenate", "name": "cat", "inputs": ["b1", "b2", "b3", "b4", "input"]},
        {"type": "BatchNorm", "name": "cat_bn"},
    ],
}

# Channels joined in the spec's NCHW layout (no layer needs NHWC before the join), then a dense head.
NCHW_CONCAT = {
    "name": "nchw_concat",
    "input_shape": [2, 3, 4],
    "layers": [
        {"type": "tanh", "name": "t"},
        {"type": "Concatenate", "name": "cat", "inputs": ["input", "t"]},
        {"type": "Flatten", "name": "flat"},
        {"type": "Dense", "name": "fc", "units": 3},
    ],
}

# A (T, F) sequence: LSTM -> BN over features, a per-step Dense of the raw input, joined on features, BN, logits
# per step.
SEQUENCE = {
    "name": "sequence",
    "input_shape": [5, 6],
    "layers": [
        {"type": "LSTM", "name": "lstm", "units": 4, "return_sequences": True},
        {"type": "BatchNorm", "name": "bn1"},
        {"type": "Dense", "name": "proj", "units": 3, "inputs": ["input"]},
        {"type": "Concatenate", "name": "cat", "inputs": ["bn1", "proj"]},
        {"type": "BatchNorm", "name": "bn2", "momentum": 0.3},
        {"type": "Dense", "name": "fc", "units": 2},
    ],
}

GRAPHS = {d["name"]: d for d in (RESIDUAL, PROJECTION, INCEPTION, NCHW_CONCAT, SEQUENCE)}


def _spec(name: str) -> ModelSpec:
    return spec_from_dict(GRAPHS[name])


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _numpy_loss(spec: ModelSpec, out: np.ndarray, y: np.ndarray) -> float:
    """The training loss of :func:`output_kind` on a float64 model output (the mean over samples/steps)."""
    kind = output_kind(spec)
    if kind == "logits":
        z = out - out.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return float(-np.take_along_axis(logp, y[..., None], axis=-1).mean())
    if kind == "probs":
        return float(-np.log(np.take_along_axis(out, y[..., None], axis=-1)).mean())
    return float(np.mean((out - y) ** 2))


# --------------------------------------------------------------------------------------------- the builder registry


def test_every_layer_type_has_a_tensorflow_builder() -> None:
    assert set(tf_model.BUILDERS) == set(LAYER_TYPES.values())


def test_a_layer_type_without_a_builder_is_refused(unbuildable_spec: ModelSpec) -> None:
    with pytest.raises(NotSupported, match=r"layer 0 \(Mystery\) is not supported with tensorflow"):
        tfb.build_model(unbuildable_spec)


# --------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_inference_matches_reference_and_weights_round_trip(name: str) -> None:
    spec = _spec(name)
    assert not is_sequential(spec)
    model = tfb.build_model(spec, seed=1)
    w = random_weights(spec, seed=1)
    got = tfb.get_weights(model)
    assert len(got) == len(w) == len(weight_slots(spec))
    for slot, a, b in zip(weight_slots(spec), got, w):
        np.testing.assert_array_equal(a, b, err_msg=f"{slot.layer_name}.{slot.param}")
    x, _ = make_batch(spec, 3, seed=2)
    out = tfb.to_numpy(tfb.infer(model, tfb.to_device(x, "cpu")))
    ref = reference_forward(spec, w, x)  # BatchNorm with the running statistics
    assert out.shape == ref.shape == (3, *infer_shapes(spec)[-1])
    assert _rel_err(out, ref) < PARITY_RTOL


def test_image_output_of_a_graph_is_channels_first() -> None:
    spec = _spec("inception")
    model = tfb.build_model(spec)
    assert model.output.shape[1:] == (2 + 3 + 2 + 2 + 4, 6, 6) == infer_shapes(spec)[-1]
    # the model input is transposed once for its four NHWC readers (three convs and the pool) and the join
    assert sum(isinstance(layer, keras.layers.Permute) for layer in model.layers) == 2  # in, and out


def test_batchnorm_maps_to_keras_with_converted_momentum_and_epsilon() -> None:
    spec = _spec("residual")
    model = tfb.build_model(spec)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [(b.momentum, b.epsilon, b.axis) for b in bns] == [
        (pytest.approx(0.9), pytest.approx(1e-5), -1),  # spec momentum 0.1 (PyTorch's) -> Keras 0.9
        (pytest.approx(0.8), pytest.approx(1e-3), -1),
    ]


def test_set_weights_moves_the_running_statistics() -> None:
    spec = _spec("residual")
    model = tfb.build_model(spec)
    w = random_weights(spec, seed=5)
    slots = weight_slots(spec)
    assert [s.param for s in slots if s.layer == 1] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert [s.trainable for s in slots if s.layer == 1] == [True, True, False, False]
    tfb.set_weights(model, w)
    bn = model.get_layer("l1_bn1")
    pos = [k for k, s in enumerate(slots) if s.layer == 1]
    for k, var in zip(pos, (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)):
        np.testing.assert_array_equal(var.numpy(), w[k])
    x, _ = make_batch(spec, 2, seed=6)
    out = tfb.to_numpy(tfb.infer(model, x))
    assert _rel_err(out, reference_forward(spec, w, x)) < PARITY_RTOL


def test_float64_graph_is_close_to_the_reference() -> None:
    spec = _spec("projection")
    model = tfb.build_model(spec, dtype="float64", seed=2)
    x, _ = make_batch(spec, 2, seed=3)
    out = tfb.to_numpy(tfb.infer(model, tfb.to_device(x, "cpu", "float64")))
    assert out.dtype == np.float64
    assert _rel_err(out, reference_forward(spec, random_weights(spec, seed=2, dtype="float64"), x)) < 1e-12


# --------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["residual", "projection", "inception", "sequence"])
def test_first_step_loss_and_running_statistics_equal_the_reference(name: str) -> None:
    spec = _spec(name)
    model = tfb.build_model(spec, seed=4)
    w = random_weights(spec, seed=4)
    x, y = make_batch(spec, 4, seed=5)
    loss = float(tfb.to_numpy(tfb.make_train_step(model, spec, "sgd")(x, y)))
    # the training step normalizes with the batch's statistics
    expected = _numpy_loss(spec, reference_forward(spec, w, x, training=True), y)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss != pytest.approx(_numpy_loss(spec, reference_forward(spec, w, x), y), rel=1e-3)
    after = tfb.get_weights(model)
    state = reference_state_after_step(spec, w, x, "tensorflow")
    slots = weight_slots(spec)
    assert any(not s.trainable for s in slots)
    # The optimizer moves the trainable slots (a bias or beta right before a BatchNorm has a zero gradient: the
    # batch mean removes it); the running statistics are the reference's, with Keras' estimator.
    moved = [not np.array_equal(a, before) for slot, a, before in zip(slots, after, w) if slot.trainable]
    assert sum(moved) >= len(moved) // 2
    for slot, a, ref in zip(slots, after, state):
        where = f"{slot.layer_name}.{slot.param}"
        assert np.all(np.isfinite(a)), where
        if not slot.trainable:
            np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-7, err_msg=where)


def test_keras_running_variance_is_the_biased_batch_variance() -> None:
    # momentum 1 (PyTorch's convention; Keras 0): the running statistics become the batch's. Two samples of
    # (F,): the biased variance is ((a - b) / 2)^2, the unbiased one twice that.
    spec = spec_from_dict(
        {
            "name": "bnonly",
            "input_shape": [3],
            "layers": [{"type": "BatchNorm", "momentum": 1.0}, {"type": "Dense", "units": 2}],
        }
    )
    model = tfb.build_model(spec)
    x = np.array([[1.0, 2.0, -1.0], [3.0, 6.0, 0.5]], dtype=np.float32)
    y = np.array([0, 1])
    tfb.make_train_step(model, spec, "sgd")(x, y)
    _, _, mean, var = tfb.get_weights(model)[:4]
    np.testing.assert_allclose(mean, [2.0, 4.0, -0.25], rtol=1e-6)
    np.testing.assert_allclose(var, [1.0, 4.0, 0.5625], rtol=1e-6)  # biased: divided by n, not n - 1
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-6)
    assert UNBIASED_RUNNING_VARIANCE["tensorflow"] is False  # analytics' table says what this measures


# --------------------------------------------------------------------------------------------- parameters


def test_count_params_follows_keras_four_per_batchnorm_channel() -> None:
    spec = spec_from_dict(
        {
            "name": "convbn",
            "input_shape": [3, 5, 5],
            "layers": [
                _conv("c", 4, 3, padding="same"),
                {"type": "BatchNorm", "name": "bn"},
                _conv("short", 4, 1, use_bias=False, inputs=["input"]),
                {"type": "Add", "name": "add", "inputs": ["bn", "short"]},
                {"type": "Concatenate", "name": "cat", "inputs": ["add", "input"]},
                {"type": "GlobalAvgPool2D", "name": "gap"},
                {"type": "Dense", "name": "fc", "units": 2},
            ],
        }
    )
    conv = 4 * 3 * 3 * 3 + 4  # 112
    bn = 4 * 4  # gamma, beta, moving mean, moving variance: Keras counts the statistics
    short = 4 * 3  # 1x1, no bias
    fc = (4 + 3) * 2 + 2  # the join has 7 channels
    model = tfb.build_model(spec)
    assert tfb.count_params(model) == conv + bn + short + fc == 156
    assert predicted_params(spec, "tensorflow") == 156
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 156 - 2 * 4


# --------------------------------------------------------------------------------------------- flops

# conv 3 -> 4 (3x3 same, bias) -> BN -> relu, plus a 1x1 conv of the input (bias), added; global average pool,
# then a dense 4 -> 2.
FLOPS_GRAPH = {
    "name": "flopsgraph",
    "input_shape": [3, 6, 6],
    "layers": [
        _conv("c1", 4, 3, padding="same"),
        {"type": "BatchNorm", "name": "bn"},
        {"type": "relu", "name": "r"},
        _conv("c2", 4, 1, inputs=["input"]),
        {"type": "Add", "name": "add", "inputs": ["r", "c2"]},
        {"type": "Concatenate", "name": "cat", "inputs": ["add", "c2"]},
        {"type": "GlobalAvgPool2D", "name": "gap"},
        {"type": "Dense", "name": "fc", "units": 2},
    ],
}


def test_profiler_counts_a_graph_and_names_batchnorm_unsupported() -> None:
    spec = spec_from_dict(FLOPS_GRAPH)
    n = 2
    count = tfb.count_flops(tfb.build_model(spec), spec, n, "inference")
    out = n * 4 * 6 * 6  # elements of each conv output (NHWC 2x6x6x4)
    expected = {
        "Conv2D": 2 * out * 3 * 3 * 3 + 2 * out * 3,  # 2 per MAC: 3x3x3 and 1x1x3 windows
        "BiasAdd": out + out + n * 2,
        "Mean": n * 8 * 6 * 6,  # the global average pool over the 8 joined channels
        "MatMul": 2 * n * 8 * 2,
    }
    aligned = {op: v for op, v in count.by_op.items() if op in TF_PROFILER_OPS}
    assert aligned == expected
    assert count.by_op["AddV2"] == out  # the Add layer: one addition per element (outside the aligned set)
    assert "ConcatV2" not in count.by_op  # a copy: the registry gives it no FLOPs
    assert count.unsupported == ("1:BatchNorm",)  # its ops are left out of total
    assert count.total == sum(count.by_op.values())
    predicted = tf_profiler_flops(spec, n, "inference", (1,))
    assert {op: v for op, v in predicted.items() if v} == expected


def test_profiler_training_graph_matches_the_prediction_with_batchnorm_skipped() -> None:
    spec = spec_from_dict(FLOPS_GRAPH)
    count = tfb.count_flops(tfb.build_model(spec), spec, 2, "training")
    assert count.unsupported == ("1:BatchNorm",)
    aligned = {op: v for op, v in count.by_op.items() if op in TF_PROFILER_OPS and v}
    predicted = {op: v for op, v in tf_profiler_flops(spec, 2, "training", (1,)).items() if v}
    assert aligned == predicted
    # both convs get their input and filter gradients, priced from the 6x6 input (3x3x3x4 and 1x1x3x4 kernels)
    assert count.by_op["Conv2DBackpropFilter"] == 2 * (2 * 3 * 6 * 6) * (27 * 4 + 3 * 4) // 3


def test_batchnorm_emits_unfused_ops_in_keras_3() -> None:
    # Keras 3's BatchNormalization calls tf.nn.batch_normalization (and, in a training step, moments): no
    # FusedBatchNormV3 in the traced graph; see backends/tensorflow/flops.py.
    from xfbench.backends.tensorflow.flops import _trace

    spec = spec_from_dict(FLOPS_GRAPH)
    model = tfb.build_model(spec)
    for phase, extra in (("inference", set()), ("training", {"Mean", "SquaredDifference", "AssignVariableOp"})):
        types = {op.type for op in _trace(model, spec, 2, phase).get_operations() if "/l1_bn" in op.name}
        assert not any(t.startswith("FusedBatchNorm") for t in types)
        assert {"Rsqrt", "Mul", "Sub", "AddV2"} | extra <= types
