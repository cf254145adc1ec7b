"""The MXNet 1.9 Gluon backend against the float64 numpy reference and hand arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import require_or_skip

require_or_skip("mxnet", "mxnet", reason="MXNet 1.9.1 is not installed (tox -e mxnet)")

import mxnet as mx  # noqa: E402
import xfbench.backends.mxnet as B  # noqa: E402
from xfbench.analytics import layers as L  # noqa: E402
from xfbench.analytics.catalog import CATALOG, catalog_model  # noqa: E402
from xfbench.analytics.reference import reference_forward  # noqa: E402
from xfbench.analytics.shapes import infer_shapes  # noqa: E402
from xfbench.analytics.spec import ModelSpec  # noqa: E402
from xfbench.analytics.weights import make_batch, random_weights, weight_slots  # noqa: E402
from xfbench.backends.base import DeviceUnavailable, MemoryStats, NotSupported  # noqa: E402

pytestmark = pytest.mark.mxnet

PARITY_RTOL = 1e-5
# Big models at batch 1 keep the float64 reference (and the two shared cores) fast enough.
_BATCH = {"alexnet": 1, "vgg11": 1, "vgg16": 1, "vgg19": 1, "nin": 1}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _check_parity(spec: ModelSpec, batch: int, seed: int = 1) -> float:
    net = B.build_model(spec, "cpu", seed=seed)
    weights = random_weights(spec, seed=seed)
    B.set_weights(net, weights)
    x, _ = make_batch(spec, batch, seed=seed + 1)
    out = B.to_numpy(B.infer(net, B.to_device(x, "cpu")))
    assert out.shape == (batch, *infer_shapes(spec)[-1])
    err = _rel_err(out, reference_forward(spec, weights, x))
    assert err < PARITY_RTOL, f"{spec.name}: relative error {err:.3g}"
    back = B.get_weights(net)
    assert [a.shape for a in back] == [s.shape for s in weight_slots(spec)]
    for a, b in zip(weights, back):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    return err


# ---------------------------------------------------------------- devices and memory


def test_devices() -> None:
    assert B.list_devices()[0] == "cpu"
    assert B.resolve_device("cpu") == mx.cpu()
    with pytest.raises(DeviceUnavailable):
        B.resolve_device("tpu")
    with pytest.raises(DeviceUnavailable):
        B.resolve_device(f"gpu:{mx.context.num_gpus()}")
    B.synchronize("cpu")


def test_memory_on_cpu_and_oom_detection() -> None:
    assert B.memory_stats("cpu") == MemoryStats()
    B.reset_peak_memory("cpu")
    assert B.is_oom_error(MemoryError())
    assert B.is_oom_error(mx.base.MXNetError("[07:00:00] storage.cc: cudaMalloc retry failed: out of memory"))
    assert not B.is_oom_error(mx.base.MXNetError("Check failed: shape mismatch"))
    assert not B.is_oom_error(ValueError("out of memory"))


# ---------------------------------------------------------------- catalog parity


@pytest.mark.parametrize("name", list(CATALOG))
def test_catalog_parity_and_weight_round_trip(name: str) -> None:
    _check_parity(catalog_model(name), _BATCH.get(name, 2))


def test_layer_variants_parity() -> None:
    """Asymmetric `same` padding (conv, max, avg), explicit avg padding, LRN (even/odd), softmax variants."""
    spec = ModelSpec(
        "variants",
        (3, 9, 10),
        (
            L.Conv2D(4, 4, 2, "same", activation="softmax"),
            L.MaxPool2D(2, 2, "same"),
            L.AvgPool2D(3, 2, "same"),
            L.AvgPool2D(3, 1, "same"),
            L.AvgPool2D(2, 2, 1),
            L.LocalResponseNorm(4, 0.1, 0.75, 1.0),
            L.LocalResponseNorm(3, 0.1, 0.6, 2.0),
            L.MaxPool2D(3, 1, 1),
            L.Activation("tanh"),
            L.Flatten(),
            L.Dense(6, activation="tanh"),
            L.Activation("softmax"),
        ),
    )
    _check_parity(spec, 2)


def test_embedding_lstm_last_step_parity() -> None:
    layers = (L.Embedding(50, 8), L.LSTM(16), L.Dense(5, activation="softmax"))
    spec = ModelSpec("emb", (7,), layers, input_dtype="int64")
    _check_parity(spec, 2)


def test_dtypes() -> None:
    """float64 runs (LRN through the composite path: MXNet's LRN has no float64 kernel); CPU float16 is refused."""
    spec = ModelSpec("lrn64", (7, 4, 4), (L.LocalResponseNorm(5, 0.1, 0.75, 1.0), L.Conv2D(3, 3, 2, "same")))
    net = B.build_model(spec, dtype="float64")
    weights = random_weights(spec, dtype="float64")
    B.set_weights(net, weights)
    x, _ = make_batch(spec, 2)
    out = B.to_numpy(B.infer(net, x.astype(np.float64)))
    assert out.dtype == np.float64
    assert _rel_err(out, reference_forward(spec, weights, x)) < 1e-12
    with pytest.raises(NotSupported, match="not supported with mxnet"):
        B.build_model(spec, "cpu", dtype="float16")
    with pytest.raises(ValueError, match="float32"):
        B.build_model(spec, dtype="int8")


def test_same_padding_even_kernel_stride_2() -> None:
    """5x5 ones, 2x2 ones kernel, stride 2, `same`: TF pads 1 AFTER (none before), so windows cover 2, 2, 1 cells."""
    spec = ModelSpec("same", (1, 5, 5), (L.Conv2D(1, 2, 2, "same", use_bias=False),))
    net = B.build_model(spec)
    B.set_weights(net, [np.ones((1, 1, 2, 2), np.float32)])
    out = B.to_numpy(B.infer(net, np.ones((1, 1, 5, 5), np.float32)))
    counts = np.array([2.0, 2.0, 1.0])
    np.testing.assert_array_equal(out[0, 0], np.outer(counts, counts))
    # max pooling pads with -inf: on an all-negative input the padded cells must not win
    spec = ModelSpec("same_max", (1, 5, 5), (L.MaxPool2D(2, 2, "same"),))
    x = -np.arange(1, 26, dtype=np.float32).reshape(1, 1, 5, 5)
    out = B.to_numpy(B.infer(B.build_model(spec), x))
    np.testing.assert_array_equal(out[0, 0], x[0, 0, ::2, ::2])  # the top-left cell of each window is largest


# ---------------------------------------------------------------- parameters


def test_count_params_lstm_hand_sum() -> None:
    # MXNet's LSTM has two biases (i2h and h2h): 8h, not 4h.
    expected = 4 * 128 * (60 + 128) + 8 * 128 + 128 * 60 + 60
    assert B.count_params(B.build_model(catalog_model("lstm"))) == expected


def test_count_params_alexnet_hand_sum() -> None:
    convs = [(1, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    expected = sum(cin * cout * k * k + cout for cin, cout, k in convs)
    expected += (256 * 5 * 5) * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert B.count_params(B.build_model(catalog_model("alexnet"))) == expected


def test_set_weights_rejects_wrong_shape() -> None:
    spec = catalog_model("mlp")
    net = B.build_model(spec)
    weights = random_weights(spec)
    weights[0] = weights[0].T
    with pytest.raises(ValueError, match="shape"):
        B.set_weights(net, weights)
    with pytest.raises(ValueError, match="expected 4"):
        B.set_weights(net, weights[:3])


# ---------------------------------------------------------------- training


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _expected_loss(spec: ModelSpec, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    out = reference_forward(spec, weights, x)
    if spec.name == "lenet":  # logits
        return float(-np.take_along_axis(_log_softmax(out), y[..., None], axis=-1).mean())
    if spec.name == "lstm":  # probabilities
        return float(-np.log(np.take_along_axis(out, y[..., None], axis=-1)).mean())
    return float(((out - y) ** 2).mean())  # regression


_TRAIN_SPECS = {
    "lenet": lambda: catalog_model("lenet"),
    "lstm": lambda: catalog_model("lstm", input_shape=(6, 60)),
    "cnn3": lambda: catalog_model("cnn3", input_shape=(3, 16, 20)),
}


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("model", list(_TRAIN_SPECS))
def test_train_step_updates_weights(model: str, optimizer: str) -> None:
    spec = _TRAIN_SPECS[model]()
    net = B.build_model(spec)
    weights = random_weights(spec, seed=5)
    B.set_weights(net, weights)
    x, y = make_batch(spec, 2, seed=6)
    step = B.make_train_step(net, spec, optimizer)
    loss = float(B.to_numpy(step(x, y)).reshape(-1)[0])
    assert math.isfinite(loss)
    # the first step's loss is the loss of the initial weights (no Dropout in these models)
    assert loss == pytest.approx(_expected_loss(spec, weights, x, y), rel=1e-4)
    after = B.get_weights(net)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, after))
    if optimizer == "adam":
        # Adam's first step moves every weight by lr * g / (|g| + eps) <= lr (0.001); an LSTM's exported
        # bias is the sum of two MXNet biases, each moved by up to lr.
        for slot, a, b in zip(weight_slots(spec), weights, after):
            limit = 2e-3 if (slot.param == "bias" and model == "lstm") else 1e-3
            assert np.abs(b - a).max() <= limit * (1 + 1e-3)
    second = float(B.to_numpy(step(x, y)).reshape(-1)[0])
    assert math.isfinite(second)


def test_sgd_and_momentum_first_steps_agree() -> None:
    """MXNet's momentum buffer starts at 0, so the first momentum step equals a plain SGD step."""
    spec = catalog_model("mlp")
    weights = random_weights(spec, seed=2)
    x, y = make_batch(spec, 2, seed=3)
    results = []
    for opt in ("sgd", "momentum"):
        net = B.build_model(spec)
        B.set_weights(net, weights)
        B.make_train_step(net, spec, opt)(x, y)
        results.append(B.get_weights(net))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_unknown_optimizer() -> None:
    spec = catalog_model("mlp")
    with pytest.raises(ValueError, match="sgd, momentum, adam"):
        B.make_train_step(B.build_model(spec), spec, "rmsprop")


# ---------------------------------------------------------------- FLOPs from the symbol graph


def test_flops_lenet_inference_hand_sum() -> None:
    n = 2
    conv = 2 * n * (6 * 28 * 28 * 1 * 5 * 5 + 16 * 10 * 10 * 6 * 5 * 5)
    fc = 2 * n * (400 * 120 + 120 * 84 + 84 * 10)
    spec = catalog_model("lenet")
    fl = B.count_flops(B.build_model(spec), spec, n, "inference")
    assert fl.total == conv + fc
    assert fl.by_op["Convolution"] == conv
    assert fl.by_op["FullyConnected"] == fc
    assert fl.by_op["Convolution.bias"] == n * (6 * 28 * 28 + 16 * 10 * 10)
    assert fl.by_op["FullyConnected.bias"] == n * (120 + 84 + 10)
    assert fl.by_op["Pooling"] == n * (6 * 14 * 14 + 16 * 5 * 5) * 4
    assert fl.unsupported == ()
    assert "2 FLOPs per MAC" in fl.convention


def test_flops_lenet_training_hand_sum() -> None:
    n = 2
    conv1, conv2 = 2 * n * 6 * 28 * 28 * 25, 2 * n * 16 * 10 * 10 * 6 * 25
    fc = 2 * n * (400 * 120 + 120 * 84 + 84 * 10)
    # forward + weight gradients + input gradients (none for conv1: its input is the graph input)
    expected = 2 * (conv1 + conv2 + fc) + conv2 + fc
    spec = catalog_model("lenet")
    fl = B.count_flops(B.build_model(spec), spec, n, "training")
    assert fl.total == expected
    assert fl.by_op["Convolution.grad_input"] == conv2


def test_flops_lstm_hand_sum() -> None:
    n, t, f, h, v = 2, 40, 60, 128, 60
    rnn = 2 * n * t * (4 * h * f + 4 * h * h)
    dense = 2 * n * t * h * v
    spec = catalog_model("lstm")
    fl = B.count_flops(B.build_model(spec), spec, n, "inference")
    assert fl.by_op["RNN"] == rnn
    assert fl.by_op["RNN.bias"] == n * t * 8 * h
    assert fl.total == rnn + dense


def test_flops_walk_the_exported_graph(tmp_path: Path) -> None:
    """The graph count_flops walks is the one `net.export` writes after a real forward pass."""
    from xfbench.backends.mxnet.flops import model_symbol

    spec = catalog_model("lstm", input_shape=(5, 60))
    net = B.build_model(spec)
    B.infer(net, make_batch(spec, 2)[0]).wait_to_read()
    net.export(str(tmp_path / "net"))
    exported = json.loads((tmp_path / "net-symbol.json").read_text())["nodes"]
    walked = json.loads(model_symbol(net).tojson())["nodes"]
    assert [(n["op"], n["name"]) for n in exported] == [(n["op"], n["name"]) for n in walked]


def test_flops_bad_phase() -> None:
    spec = catalog_model("mlp")
    with pytest.raises(ValueError, match="inference, training"):
        B.count_flops(B.build_model(spec), spec, 1, "backward")


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(mx.context.num_gpus() == 0, reason="no GPU visible to MXNet (CPU-only build or no GPU)")
def test_gpu_parity_and_memory() -> None:
    spec = catalog_model("lenet")
    net = B.build_model(spec, "gpu:0")
    weights = random_weights(spec)
    B.set_weights(net, weights)
    x, y = make_batch(spec, 2)
    out = B.to_numpy(B.infer(net, B.to_device(x, "gpu:0")))
    assert _rel_err(out, reference_forward(spec, weights, x)) < PARITY_RTOL
    loss = B.make_train_step(net, spec, "adam")(B.to_device(x, "gpu:0"), B.to_device(y, "gpu:0"))
    assert math.isfinite(float(B.to_numpy(loss).reshape(-1)[0]))
    B.synchronize("gpu:0")
    stats = B.memory_stats("gpu:0")
    assert stats.reserved is not None and stats.reserved > 0
    assert stats.peak_allocated is None
