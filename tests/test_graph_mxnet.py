"""Graph specs (named ``inputs``) and the Add, Concatenate and BatchNorm layer types on the MXNet 1.9 Gluon
backend, against the float64 numpy reference and hand arithmetic."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from conftest import require_or_skip

require_or_skip("mxnet", "mxnet", reason="MXNet 1.9.1 is not installed (tox -e mxnet)")

import mxnet as mx  # noqa: E402
import xfbench.backends.mxnet as B  # noqa: E402
import xfbench.backends.mxnet.model as mx_model  # noqa: E402
from xfbench.analytics.layers import LAYER_TYPES  # noqa: E402
from xfbench.analytics.layers.batchnorm import UNBIASED_RUNNING_VARIANCE  # noqa: E402
from xfbench.analytics.predict import count_params as predicted_params  # noqa: E402
from xfbench.analytics.predict import counter_prediction, predict  # noqa: E402
from xfbench.analytics.reference import reference_forward, reference_state_after_step  # noqa: E402
from xfbench.analytics.shapes import infer_shapes  # noqa: E402
from xfbench.analytics.spec import ModelSpec, is_sequential, spec_from_dict  # noqa: E402
from xfbench.analytics.weights import make_batch, output_kind, random_weights, weight_slots  # noqa: E402
from xfbench.backends.base import NotSupported  # noqa: E402
from xfbench.backends.mxnet.flops import model_symbol  # noqa: E402

pytestmark = pytest.mark.mxnet

PARITY_RTOL = 1e-5


def _spec(name: str, input_shape: list[int], layers: list[dict[str, Any]]) -> ModelSpec:
    return spec_from_dict({"name": name, "input_shape": input_shape, "layers": layers})


def residual() -> ModelSpec:
    """conv-BN-relu-conv-BN plus the identity (the model input), then relu."""
    return _spec(
        "residual",
        [4, 8, 8],
        [
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "use_bias": False, "name": "c1"},
            {"type": "batchnorm", "name": "b1"},
            {"type": "relu", "name": "r1"},
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "use_bias": False, "name": "c2"},
            {"type": "batchnorm", "name": "b2", "momentum": 0.3, "epsilon": 1e-3},
            {"type": "add", "inputs": ["b2", "input"], "name": "sum"},
            {"type": "relu"},
        ],
    )


def projection() -> ModelSpec:
    """A stride-2 residual block whose shortcut is a 1x1 stride-2 conv + BN; a classifier head (logits)."""
    return _spec(
        "projection",
        [3, 8, 8],
        [
            {"type": "conv2d", "filters": 6, "kernel": 3, "stride": 2, "padding": "same", "name": "c1"},
            {"type": "batchnorm", "name": "b1"},
            {"type": "relu", "name": "r1"},
            {"type": "conv2d", "filters": 6, "kernel": 3, "padding": 1, "name": "c2"},
            {"type": "batchnorm", "name": "b2"},
            {"type": "conv2d", "filters": 6, "kernel": 1, "stride": 2, "inputs": ["input"], "name": "proj"},
            {"type": "batchnorm", "name": "bp"},
            {"type": "add", "inputs": ["b2", "bp"], "name": "sum"},
            {"type": "relu", "name": "r2"},
            {"type": "globalavgpool2d"},
            {"type": "dense", "units": 5},
        ],
    )


def inception() -> ModelSpec:
    """A stem, then four branches (1x1; 1x1-3x3; 1x1-5x5; 3x3 max pool-1x1) concatenated on channels, then BN."""
    return _spec(
        "inception",
        [4, 8, 8],
        [
            {"type": "conv2d", "filters": 8, "kernel": 1, "activation": "relu", "name": "stem"},
            {"type": "conv2d", "filters": 4, "kernel": 1, "activation": "relu", "name": "b1", "inputs": ["stem"]},
            {"type": "conv2d", "filters": 3, "kernel": 1, "activation": "relu", "inputs": ["stem"]},
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu", "name": "b2"},
            {"type": "conv2d", "filters": 2, "kernel": 1, "activation": "relu", "inputs": ["stem"]},
            {"type": "conv2d", "filters": 3, "kernel": 5, "padding": 2, "activation": "relu", "name": "b3"},
            {"type": "maxpool2d", "pool": 3, "stride": 1, "padding": "same", "inputs": ["stem"]},
            {"type": "conv2d", "filters": 2, "kernel": 1, "name": "b4"},
            {"type": "concatenate", "inputs": ["b1", "b2", "b3", "b4"], "name": "cat"},
            {"type": "batchnorm"},
        ],
    )


def sequence() -> ModelSpec:
    """(T, F) = (6, 5): two Dense branches (one through BN on features) concatenated on features, BN, a
    three-input Add, then BN on a flattened (F,) vector and a Dense classifier."""
    return _spec(
        "sequence",
        [6, 5],
        [
            {"type": "dense", "units": 8, "name": "d1"},
            {"type": "batchnorm", "name": "bn1"},
            {"type": "relu", "name": "a1"},
            {"type": "dense", "units": 3, "inputs": ["input"], "name": "d2"},
            {"type": "concatenate", "inputs": ["a1", "d2"], "name": "cat"},
            {"type": "batchnorm", "name": "bn2", "momentum": 0.25},
            {"type": "dense", "units": 11, "inputs": ["input"], "name": "d3"},
            {"type": "add", "inputs": ["bn2", "d3", "cat"], "name": "sum"},
            {"type": "flatten"},
            {"type": "batchnorm", "name": "bn3"},
            {"type": "dense", "units": 4},
        ],
    )


GRAPHS = {"residual": residual, "projection": projection, "inception": inception, "sequence": sequence}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _nodes(sym: Any) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = json.loads(sym.tojson())["nodes"]
    return nodes


def _built(spec: ModelSpec, seed: int = 1) -> tuple[Any, list[np.ndarray]]:
    net = B.build_model(spec, "cpu", seed=seed)
    weights = random_weights(spec, seed=seed)
    B.set_weights(net, weights)
    return net, weights


# ---------------------------------------------------------------- the builder registry


def test_every_layer_type_has_a_mxnet_builder() -> None:
    assert set(mx_model.BUILDERS) == set(LAYER_TYPES.values())


def test_a_layer_type_without_a_builder_is_refused(unbuildable_spec: ModelSpec) -> None:
    with pytest.raises(NotSupported, match="layer type Mystery is not supported with mxnet"):
        B.build_model(unbuildable_spec)


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_parity_and_weight_round_trip(name: str) -> None:
    spec = GRAPHS[name]()
    assert not is_sequential(spec)
    net, weights = _built(spec)
    x, _ = make_batch(spec, 3, seed=2)
    out = B.to_numpy(B.infer(net, B.to_device(x, "cpu")))
    assert out.shape == (3, *infer_shapes(spec)[-1])
    err = _rel_err(out, reference_forward(spec, weights, x))
    assert err < PARITY_RTOL, f"{name}: relative error {err:.3g}"
    # inference leaves the running statistics alone; every slot round-trips exactly, in neutral order
    back = B.get_weights(net)
    assert [a.shape for a in back] == [s.shape for s in weight_slots(spec)]
    for a, b in zip(weights, back):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_batchnorm_maps_to_gluon_params_in_neutral_order() -> None:
    spec = residual()
    net, weights = _built(spec)
    params = net.collect_params()
    slots = weight_slots(spec)
    bn = [(s, w) for s, w in zip(slots, weights) if s.layer == 1]
    assert [s.param for s, _ in bn] == ["gamma", "beta", "moving_mean", "moving_variance"]
    for (_, w), gluon_name in zip(bn, ("gamma", "beta", "running_mean", "running_var")):
        np.testing.assert_array_equal(params[f"l1_{gluon_name}"].data().asnumpy(), w)
    assert params["l1_running_mean"].grad_req == "null" and params["l1_running_var"].grad_req == "null"
    assert params["l1_gamma"].grad_req == "write"
    # the BatchNorm operator as built: channel axis, Gluon momentum = 1 - m, epsilon, a trainable gamma
    nodes = {n["name"]: n for n in _nodes(model_symbol(net))}
    attrs = nodes["l4_fwd"]["attrs"]
    assert attrs["axis"] == "1" and float(attrs["momentum"]) == pytest.approx(0.7) and float(attrs["eps"]) == 1e-3
    assert attrs["fix_gamma"] == "False"
    seq_nodes = {n["name"]: n for n in _nodes(model_symbol(B.build_model(sequence())))}
    assert seq_nodes["l1_fwd"]["attrs"]["axis"] == "2"  # (N, T, F): the features
    assert seq_nodes["l9_fwd"]["attrs"]["axis"] == "1"  # (N, F)
    assert seq_nodes["l4_concat0"]["attrs"]["dim"] == "2"


def test_float64_graph_parity() -> None:
    spec = sequence()
    net = B.build_model(spec, dtype="float64")
    weights = random_weights(spec, seed=3, dtype="float64")
    B.set_weights(net, weights)
    x, _ = make_batch(spec, 2, seed=4)
    out = B.to_numpy(B.infer(net, B.to_device(x, "cpu", "float64")))
    assert out.dtype == np.float64
    assert _rel_err(out, reference_forward(spec, weights, x)) < 1e-12


def test_sequential_spec_builds_the_same_symbol_graph() -> None:
    """A sequential spec's graph walk is HybridSequential's chain: the same operators under the same names."""
    from xfbench.analytics.catalog import catalog_model

    spec = catalog_model("lenet")
    net = B.build_model(spec)
    ours = _nodes(model_symbol(net))
    chained = _nodes(mx.gluon.nn.HybridSequential.hybrid_forward(net, mx.sym, mx.sym.var("data")))
    assert [(n["op"], n["name"]) for n in ours] == [(n["op"], n["name"]) for n in chained]


# ---------------------------------------------------------------- training


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _numpy_loss(spec: ModelSpec, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The first training step's loss: a training forward (BatchNorm on the batch's statistics)."""
    out = reference_forward(spec, weights, x, training=True)
    assert isinstance(out, np.ndarray)
    kind = output_kind(spec)
    if kind == "logits":
        return float(-np.take_along_axis(_log_softmax(out), y[..., None], axis=-1).mean())
    assert kind == "regression"
    return float(((out - y) ** 2).mean())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_train_step_loss_and_running_statistics(name: str, optimizer: str) -> None:
    spec = GRAPHS[name]()
    net, weights = _built(spec, seed=5)
    x, y = make_batch(spec, 2, seed=6)
    step = B.make_train_step(net, spec, optimizer)
    loss = float(B.to_numpy(step(x, y)).reshape(-1)[0])
    assert loss == pytest.approx(_numpy_loss(spec, weights, x, y), rel=1e-5)
    after = B.get_weights(net)
    expected = reference_state_after_step(spec, weights, x, "mxnet")
    for slot, w, got, want in zip(weight_slots(spec), weights, after, expected):
        if slot.trainable:
            assert got.shape == w.shape
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"{slot.layer_name}.{slot.param}")
    # BatchNorm's gamma and beta are trained (a conv bias right before a BatchNorm gets a zero gradient up to
    # rounding, so not every slot need move under SGD)
    for slot, w, a in zip(weight_slots(spec), weights, after):
        if slot.param in ("gamma", "beta"):
            assert not np.array_equal(w, a), f"{slot.layer_name}.{slot.param}"
    # a second step runs, and inference afterwards normalizes with the updated running statistics
    assert math.isfinite(float(B.to_numpy(step(x, y)).reshape(-1)[0]))
    out = B.to_numpy(B.infer(net, x))
    assert _rel_err(out, reference_forward(spec, B.get_weights(net), x)) < PARITY_RTOL


def test_running_variance_is_the_biased_estimator() -> None:
    """MXNet 1.9.1 folds the biased batch variance (divide by n) into running_var, not the unbiased one
    (analytics.layers.batchnorm.UNBIASED_RUNNING_VARIANCE["mxnet"] is False). Here n = N*T = 12 per feature
    for bn1/bn2 (the two estimators differ by 12/11) and N = 2 for bn3 (by a factor 2)."""
    assert UNBIASED_RUNNING_VARIANCE["mxnet"] is False
    spec = sequence()
    net, weights = _built(spec, seed=7)
    x, y = make_batch(spec, 2, seed=8)
    B.make_train_step(net, spec, "sgd")(x, y)
    after = B.get_weights(net)
    biased = reference_state_after_step(spec, weights, x, "mxnet")
    unbiased = reference_state_after_step(spec, weights, x, "torch")
    checked = 0
    for pos, slot in enumerate(weight_slots(spec)):
        if slot.param == "moving_variance":
            np.testing.assert_allclose(after[pos], biased[pos], rtol=1e-5)
            assert not np.allclose(after[pos], unbiased[pos], rtol=1e-3)
            checked += 1
    assert checked == 3


def test_running_statistics_update_in_the_backward_on_cpu() -> None:
    """On the CPU, MXNet's BatchNorm updates its running statistics in the backward pass: a recorded
    train-mode forward without backward() leaves them as they were."""
    spec = residual()
    net, weights = _built(spec)
    x, _ = make_batch(spec, 2, seed=2)
    with mx.autograd.record(train_mode=True):
        out = net(mx.nd.array(x))
    out.wait_to_read()
    assert all(np.array_equal(a, b) for a, b in zip(weights, B.get_weights(net)))
    out.backward()
    mx.nd.waitall()
    expected = reference_state_after_step(spec, weights, x, "mxnet")
    for slot, got, want in zip(weight_slots(spec), B.get_weights(net), expected):
        if not slot.trainable:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- parameters


def test_count_params_conv_and_batchnorm_hand_sum() -> None:
    spec = _spec("convbn", [3, 8, 8], [{"type": "conv2d", "filters": 4, "kernel": 3}, {"type": "batchnorm"}])
    conv = 4 * 3 * 3 * 3 + 4
    bn = 4 * 4  # gamma, beta, running mean, running variance: Gluon's collect_params holds all four
    assert conv == 112 and bn == 16
    assert B.count_params(B.build_model(spec)) == conv + bn
    assert predicted_params(spec, "mxnet") == conv + bn


@pytest.mark.parametrize("name", list(GRAPHS))
def test_count_params_matches_the_analytic_mxnet_convention(name: str) -> None:
    spec = GRAPHS[name]()
    assert B.count_params(B.build_model(spec)) == predicted_params(spec, "mxnet")


# ---------------------------------------------------------------- FLOPs


def test_flops_projection_block_hand_sum() -> None:
    n = 2
    c1 = 2 * n * 6 * 4 * 4 * 3 * 3 * 3  # 3 -> 6, 3x3, stride 2 ('same', padded explicitly): 4x4 out
    c2 = 2 * n * 6 * 4 * 4 * 6 * 3 * 3  # 6 -> 6, 3x3, padding 1
    proj = 2 * n * 6 * 4 * 4 * 3  # 3 -> 6, 1x1, stride 2
    fc = 2 * n * 6 * 5
    spec = projection()
    net = B.build_model(spec)
    fl = B.count_flops(net, spec, n, "inference")
    assert fl.by_op["Convolution"] == c1 + c2 + proj
    assert fl.by_op["FullyConnected"] == fc
    assert fl.total == c1 + c2 + proj + fc == counter_prediction(spec, n, "mxnet", "inference")
    bn_elems = n * 3 * 6 * 4 * 4
    assert fl.by_op["BatchNorm"] == bn_elems  # DEFAULT_RULE: 1 per element (the analytic norm column has 4)
    assert fl.by_op["elemwise_add"] == n * 6 * 4 * 4 == predict(spec, n, framework="mxnet").layers[7].add_flops
    assert fl.unsupported == ()

    # training: weight gradients everywhere; input gradients only where the conv's input depends on a
    # parameter (c2 and the dense layer; c1 and proj read the graph input)
    tr = B.count_flops(net, spec, n, "training")
    assert tr.by_op["Convolution.grad_weight"] == c1 + c2 + proj
    assert tr.by_op["Convolution.grad_input"] == c2
    assert tr.by_op["FullyConnected.grad_input"] == fc
    assert tr.total == 2 * (c1 + c2 + proj + fc) + c2 + fc == counter_prediction(spec, n, "mxnet", "training")
    assert tr.unsupported == ()


def test_flops_inception_concat_is_free() -> None:
    n = 1
    hw = 8 * 8
    convs = [(4, 8, 1), (4, 8, 1), (8, 3, 1), (3, 4, 9), (8, 2, 1), (2, 3, 25), (8, 2, 1)]  # (in, out, kh*kw)
    spec = inception()
    fl = B.count_flops(B.build_model(spec), spec, n, "inference")
    assert fl.total == sum(2 * n * hw * cin * cout * k for cin, cout, k in convs)
    assert fl.total == counter_prediction(spec, n, "mxnet", "inference")
    assert "Concat" not in fl.by_op and fl.unsupported == ()
    assert (
        counter_prediction(spec, n, "mxnet", "training")
        == B.count_flops(B.build_model(spec), spec, n, "training").total
    )


def test_flops_sequence_three_input_add() -> None:
    n, t = 2, 6
    spec = sequence()
    fl = B.count_flops(B.build_model(spec), spec, n, "inference")
    dense = 2 * n * t * (5 * 8 + 5 * 3 + 5 * 11) + 2 * n * 66 * 4
    assert fl.by_op["FullyConnected"] == dense == fl.total
    assert fl.by_op["elemwise_add"] == 2 * n * t * 11  # three inputs: two adds
    assert fl.total == counter_prediction(spec, n, "mxnet", "inference")


def test_flops_add_gradient_when_only_a_later_input_depends_on_a_parameter() -> None:
    """An Add naming the model input first still passes a gradient back (to the conv's branch)."""
    n = 2
    spec = _spec(
        "skip_first",
        [2, 5, 5],
        [
            {"type": "conv2d", "filters": 2, "kernel": 3, "padding": 1, "name": "c1"},
            {"type": "add", "inputs": ["input", "c1"]},
        ],
    )
    tr = B.count_flops(B.build_model(spec), spec, n, "training")
    assert tr.by_op["elemwise_add"] == tr.by_op["elemwise_add.grad"] == n * 2 * 5 * 5
    assert tr.total == 2 * (2 * n * 2 * 5 * 5 * 2 * 9) == counter_prediction(spec, n, "mxnet", "training")


def test_flops_walk_the_exported_graph(tmp_path: Any) -> None:
    """A graph model hybridizes and exports; the graph count_flops walks is the exported one."""
    spec = inception()
    net = B.build_model(spec)
    B.infer(net, make_batch(spec, 2)[0]).wait_to_read()
    net.export(str(tmp_path / "net"))
    exported = json.loads((tmp_path / "net-symbol.json").read_text())["nodes"]
    assert [(n["op"], n["name"]) for n in exported] == [(n["op"], n["name"]) for n in _nodes(model_symbol(net))]
    assert sum(n["op"] == "Concat" for n in exported) == 1 and sum(n["op"] == "BatchNorm" for n in exported) == 1
