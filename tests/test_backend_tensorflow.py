"""The TensorFlow / Keras 3 backend against the float64 numpy reference and hand arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import require_or_skip

require_or_skip("tensorflow", "tensorflow", reason="TensorFlow is not installed (tox -e tensorflow)")
require_or_skip("keras", "tensorflow", reason="Keras 3 is not installed (tox -e tensorflow)")

import xfbench.backends.tensorflow as tfb  # noqa: E402
from xfbench.analytics import layers as L  # noqa: E402
from xfbench.analytics.catalog import CATALOG, catalog_model  # noqa: E402
from xfbench.analytics.reference import reference_forward  # noqa: E402
from xfbench.analytics.shapes import infer_shapes  # noqa: E402
from xfbench.analytics.spec import ModelSpec  # noqa: E402
from xfbench.analytics.weights import make_batch, random_weights, weight_slots  # noqa: E402
from xfbench.backends.base import DeviceUnavailable, FlopCount, MemoryStats  # noqa: E402
from xfbench.backends.tensorflow._tf import keras, tf  # noqa: E402

pytestmark = pytest.mark.tensorflow

HAS_GPU = len(tf.config.list_physical_devices("GPU")) > 0
_skip_without_gpu = pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to TensorFlow on this machine")


def needs_gpu(test: Callable) -> Callable:
    """Marks a test ``gpu`` and skips it, with the reason, where TensorFlow sees no GPU."""
    return pytest.mark.gpu(_skip_without_gpu(test))


# Catalog models at their default inputs, except cnn3 (3x200x300 is large for a 2-core CI box).
SMALL_INPUT = {"cnn3": (3, 40, 60)}
PARITY_RTOL = 1e-5


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _spec(layers: list, input_shape: tuple[int, ...], name: str = "t", input_dtype: str = "float32") -> ModelSpec:
    return ModelSpec(name=name, input_shape=input_shape, layers=tuple(layers), input_dtype=input_dtype)


def _check_parity(
    spec: ModelSpec, batch: int = 2, seed: int = 0, rtol: float = PARITY_RTOL, device: str = "cpu"
) -> float:
    model = tfb.build_model(spec, device=device, seed=seed)
    x, _ = make_batch(spec, batch, seed=seed + 1)
    out = tfb.to_numpy(tfb.infer(model, tfb.to_device(x, device)))
    ref = reference_forward(spec, random_weights(spec, seed=seed), x)
    assert out.shape == ref.shape == (batch, *infer_shapes(spec)[-1])
    err = _rel_err(out, ref)
    assert err < rtol, f"{spec.name}: relative error {err:.3e}"
    return err


# --------------------------------------------------------------------------------------------- catalog


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("vgg") else n for n in CATALOG]
)
def test_catalog_model_shape_parity_and_weight_round_trip(name: str) -> None:
    spec = catalog_model(name, input_shape=SMALL_INPUT.get(name))
    batch = 1 if name.startswith("vgg") else 2
    model = tfb.build_model(spec, seed=3)
    weights = random_weights(spec, seed=3)
    # build_model(seed) loads the neutral random weights; the export gives them back bit for bit.
    exported = tfb.get_weights(model)
    assert [w.shape for w in exported] == [s.shape for s in weight_slots(spec)]
    for got, want in zip(exported, weights):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    x, _ = make_batch(spec, batch, seed=1)
    out = tfb.to_numpy(tfb.infer(model, x))
    assert out.shape == (batch, *infer_shapes(spec)[-1])  # channels-first, as the spec says
    ref = reference_forward(spec, weights, x)
    err = _rel_err(out, ref)
    assert err < PARITY_RTOL, f"{name}: relative error {err:.3e}"
    # and an import of other weights round-trips exactly as well
    other = random_weights(spec, seed=4)
    tfb.set_weights(model, other)
    for got, want in zip(tfb.get_weights(model), other):
        np.testing.assert_array_equal(got, want)


def test_cnn3_default_input_output_is_channels_first() -> None:
    spec = catalog_model("cnn3")
    model = tfb.build_model(spec)
    x, _ = make_batch(spec, 1)
    out = tfb.to_numpy(tfb.infer(model, x))
    assert out.shape == (1, 400, 25, 38)
    assert _rel_err(out, reference_forward(spec, random_weights(spec), x)) < PARITY_RTOL


# --------------------------------------------------------------------------------------------- params


def test_count_params_lstm_hand_sum() -> None:
    # Keras: kernel 60x512 + recurrent 128x512 + one 512 bias; Dense 128x60 + 60.
    expected = 4 * (128 * (60 + 128) + 128) + 128 * 60 + 60
    assert expected == 104508
    assert tfb.count_params(tfb.build_model(catalog_model("lstm"))) == expected


def test_count_params_alexnet_hand_sum() -> None:
    # 1x224x224: conv1 -> 54, pool -> 26, conv2 26, pool -> 12, conv3-5 12, pool -> 5: 256*5*5 = 6400 features.
    convs = [(96, 1, 11), (256, 96, 5), (384, 256, 3), (384, 384, 3), (256, 384, 3)]
    expected = sum(o * i * k * k + o for o, i, k in convs)
    expected += 6400 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert expected == 46764746
    assert tfb.count_params(tfb.build_model(catalog_model("alexnet"))) == expected


# --------------------------------------------------------------------------------------------- layout


def test_dense_after_flatten_gets_rows_permuted_chw_to_hwc() -> None:
    c, h, w, units = 3, 4, 5, 7
    spec = _spec([L.Conv2D(c, 3, padding="same"), L.Flatten(), L.Dense(units)], (2, h, w), name="flat")
    model = tfb.build_model(spec, seed=1)
    neutral = random_weights(spec, seed=1)
    dense = model.get_layer("l2_dense")
    keras_kernel = dense.kernel.numpy()
    # Keras row r = (y*W + x)*C + ch holds the neutral row ch*H*W + y*W + x.
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                np.testing.assert_array_equal(keras_kernel[(y * w + x) * c + ch], neutral[2][ch * h * w + y * w + x])
    # no transpose layer in front of the Flatten
    assert not any(isinstance(layer, keras.layers.Permute) and "to_nchw" in layer.name for layer in model.layers)
    _check_parity(spec, seed=1)
    np.testing.assert_array_equal(tfb.get_weights(model)[2], neutral[2])


def test_flatten_at_the_output_keeps_chw_order() -> None:
    spec = _spec([L.Conv2D(3, 3, padding=1), L.Flatten()], (2, 4, 5), name="flat_out")
    _check_parity(spec)


def test_softmax_on_image_tensor_is_over_the_last_spec_axis() -> None:
    spec = _spec([L.Conv2D(3, 3, padding="same", activation="softmax"), L.Activation("softmax")], (2, 4, 5))
    _check_parity(spec)


# --------------------------------------------------------------------------------------------- padding


def test_same_padding_even_kernel_stride_2_is_asymmetric_conv() -> None:
    # 5 wide, kernel 4, stride 2: out 3, total pad (3-1)*2+4-5 = 3 -> 1 before, 2 after.
    # Windows cover rows [-1..2], [1..4], [3..6]: 3, 4 and 2 real rows.
    spec = _spec([L.Conv2D(1, 4, 2, "same", use_bias=False)], (1, 5, 5), name="same_even")
    model = tfb.build_model(spec)
    tfb.set_weights(model, [np.ones((1, 1, 4, 4), np.float32)])
    out = tfb.to_numpy(tfb.infer(model, np.ones((1, 1, 5, 5), np.float32)))
    counts = np.array([3.0, 4.0, 2.0])
    np.testing.assert_array_equal(out[0, 0], np.outer(counts, counts))
    _check_parity(_spec([L.Conv2D(4, 4, 2, "same", activation="relu")], (3, 9, 10)))


def test_same_padding_even_pool_stride_2_avg_excludes_padding_max_ignores_it() -> None:
    # 5 wide, pool 2, stride 2: out 3, total pad 1 -> 0 before, 1 after; the last window holds one real cell.
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5) - 30.0  # all negative: a zero pad would win a max
    avg = tfb.build_model(_spec([L.AvgPool2D(2, 2, "same")], (1, 5, 5)))
    mx = tfb.build_model(_spec([L.MaxPool2D(2, 2, "same")], (1, 5, 5)))
    a, m = tfb.to_numpy(tfb.infer(avg, x))[0, 0], tfb.to_numpy(tfb.infer(mx, x))[0, 0]
    g = x[0, 0]
    expected_avg = np.empty((3, 3))
    expected_max = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            win = g[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]  # numpy clips at the edge: real cells only
            expected_avg[i, j] = win.mean()
            expected_max[i, j] = win.max()
    np.testing.assert_allclose(a, expected_avg, rtol=1e-6)
    np.testing.assert_array_equal(m, expected_max)
    _check_parity(_spec([L.AvgPool2D(4, 2, "same"), L.MaxPool2D(2, 2, "same")], (3, 9, 10)))


def test_explicit_padding_max_pads_minus_inf_avg_counts_zeros() -> None:
    x = -1.0 - np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    mx = tfb.build_model(_spec([L.MaxPool2D(3, 1, 1)], (1, 4, 4)))
    out = tfb.to_numpy(tfb.infer(mx, x))[0, 0]
    assert out[0, 0] == -1.0  # max of x[0:2, 0:2]; a zero pad would give 0
    assert np.all(out < 0)
    avg = tfb.build_model(_spec([L.AvgPool2D(3, 1, 1)], (1, 4, 4)))
    out = tfb.to_numpy(tfb.infer(avg, x))[0, 0]
    np.testing.assert_allclose(out[0, 0], x[0, 0, :2, :2].sum() / 9.0, rtol=1e-6)  # 5 zeros in the divisor
    _check_parity(_spec([L.Conv2D(4, 3, 2, 2), L.MaxPool2D(3, 2, 1), L.AvgPool2D(3, 2, 1)], (3, 11, 12)))


# --------------------------------------------------------------------------------------------- other layers


@pytest.mark.parametrize("size", [5, 4])
def test_local_response_norm_matches_pytorch_definition(size: int) -> None:
    spec = _spec([L.Conv2D(7, 3, padding="same"), L.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0)], (2, 5, 6))
    _check_parity(spec)


def test_lstm_last_state_gap_and_embedding() -> None:
    _check_parity(_spec([L.LSTM(16), L.Dense(5, activation="tanh")], (7, 3)))
    _check_parity(_spec([L.Conv2D(6, 3), L.GlobalAvgPool2D(), L.Dense(4, activation="sigmoid")], (2, 6, 6)))
    _check_parity(_spec([L.Embedding(11, 4), L.LSTM(6, return_sequences=True)], (5,), input_dtype="int64"))


def test_float64_model_is_close_to_the_reference() -> None:
    spec = catalog_model("lenet")
    model = tfb.build_model(spec, dtype="float64")
    x, _ = make_batch(spec, 2)
    out = tfb.to_numpy(tfb.infer(model, x.astype(np.float64)))
    assert out.dtype == np.float64
    # build_model(dtype="float64") loads random_weights(..., dtype="float64"), not float32-rounded ones
    weights = random_weights(spec, dtype="float64")
    np.testing.assert_array_equal(tfb.get_weights(model)[0], weights[0])
    assert _rel_err(out, reference_forward(spec, weights, x)) < 1e-12


def test_set_weights_rejects_wrong_shapes() -> None:
    spec = catalog_model("mlp")
    model = tfb.build_model(spec)
    weights = random_weights(spec)
    with pytest.raises(ValueError, match="expected 4 weight arrays"):
        tfb.set_weights(model, weights[:3])
    weights[0] = weights[0].T
    with pytest.raises(ValueError, match=r"hidden\.kernel"):
        tfb.set_weights(model, weights)


def test_unknown_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="float32"):
        tfb.build_model(catalog_model("mlp"), dtype="int8")


# --------------------------------------------------------------------------------------------- training


# One AlexNet step is enough on a small CI box; the small models try every optimizer.
TRAIN_CASES = [(n, o) for n in ("lenet", "lstm", "cnn3") for o in ("sgd", "momentum", "adam")] + [("alexnet", "sgd")]


@pytest.mark.parametrize(("name", "optimizer"), TRAIN_CASES)
def test_train_step_changes_weights_with_finite_loss(name: str, optimizer: str) -> None:
    spec = catalog_model(name, input_shape=SMALL_INPUT.get(name))
    model = tfb.build_model(spec)
    before = tfb.get_weights(model)
    step = tfb.make_train_step(model, spec, optimizer)
    x, y = make_batch(spec, 2)
    loss = float(tfb.to_numpy(step(tfb.to_device(x, "cpu"), tfb.to_device(y, "cpu"))))
    assert np.isfinite(loss)
    after = tfb.get_weights(model)
    for i, (a, b) in enumerate(zip(before, after)):
        assert not np.array_equal(a, b), f"weight {i} did not change"
        assert np.all(np.isfinite(b))


@pytest.mark.parametrize("name", ["lenet", "lstm", "cnn3"])
def test_first_step_loss_equals_loss_of_reference_output(name: str) -> None:
    # No dropout in these models, so the training-mode forward equals the reference forward.
    spec = catalog_model(name, input_shape=SMALL_INPUT.get(name))
    model = tfb.build_model(spec)
    x, y = make_batch(spec, 2)
    loss = float(tfb.to_numpy(tfb.make_train_step(model, spec, "sgd")(x, y)))
    ref = reference_forward(spec, random_weights(spec), x)
    if name == "lenet":  # logits
        z = ref - ref.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        expected = -np.take_along_axis(logp, y[..., None], axis=-1).mean()
    elif name == "lstm":  # probabilities
        expected = -np.log(np.take_along_axis(ref, y[..., None], axis=-1)).mean()
    else:  # regression
        expected = np.mean((ref - y) ** 2)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_unknown_optimizer_names_the_allowed_values() -> None:
    spec = catalog_model("mlp")
    with pytest.raises(ValueError, match="sgd, momentum, adam"):
        tfb.make_train_step(tfb.build_model(spec), spec, "rmsprop")


# --------------------------------------------------------------------------------------------- flops


def _lenet_inference_by_op(n: int) -> dict[str, int]:
    # 1x28x28 -> conv1 (pad 2, 5x5, 6) 6x28x28 -> avg 6x14x14 -> conv2 (5x5, 16) 16x10x10 -> avg 16x5x5
    # -> 400 -> 120 -> 84 -> 10.
    conv = 2 * n * (6 * 28 * 28 * 1 * 25 + 16 * 10 * 10 * 6 * 25)
    bias = n * (6 * 28 * 28 + 16 * 10 * 10 + 120 + 84 + 10)
    pool = n * 4 * (6 * 14 * 14 + 16 * 5 * 5)  # one per window element per output
    matmul = 2 * n * (400 * 120 + 120 * 84 + 84 * 10)
    return {"AvgPool": pool, "BiasAdd": bias, "Conv2D": conv, "MatMul": matmul}


def test_profiler_lenet_inference_flops_hand_sum() -> None:
    spec = catalog_model("lenet")
    count = tfb.count_flops(tfb.build_model(spec), spec, 2, "inference")
    expected = _lenet_inference_by_op(2)
    assert isinstance(count, FlopCount)
    assert count.by_op == expected  # sigmoid, pad and the boundary transpose are not counted
    assert count.total == sum(expected.values()) == 1691724
    assert count.unsupported == ()
    assert "2 per MAC" in count.convention


def test_profiler_lenet_training_flops_include_gradients() -> None:
    spec = catalog_model("lenet")
    count = tfb.count_flops(tfb.build_model(spec), spec, 2, "training")
    fwd = _lenet_inference_by_op(2)
    for op in ("AvgPool", "BiasAdd", "Conv2D"):
        assert count.by_op[op] == fwd[op]
    assert count.by_op["MatMul"] == 3 * fwd["MatMul"]  # forward, dW = x^T g, dx = g W^T
    # TF's registered cost of both conv gradients is 2 * kh*kw*Cin*Cout * N*H_in*W_in (the padded input size);
    # conv1's input gradient is in the traced graph although nothing uses it.
    backprop = 2 * 25 * 2 * (1 * 6 * 32 * 32 + 6 * 16 * 14 * 14)
    assert count.by_op["Conv2DBackpropFilter"] == count.by_op["Conv2DBackpropInput"] == backprop == 2496000
    assert count.total == sum(count.by_op.values())


def test_profiler_counts_the_lstm_unrolled() -> None:
    spec = catalog_model("lstm")  # 40 steps x 60 features, 128 units, Dense 60 on every step
    model = tfb.build_model(spec)
    count = tfb.count_flops(model, spec, 2, "inference")
    n, t, f, h, v = 2, 40, 60, 128, 60
    assert count.by_op["MatMul"] == 2 * n * t * (f * 4 * h + h * 4 * h) + 2 * n * t * h * v
    assert count.by_op["BiasAdd"] == n * t * 4 * h + n * t * v
    assert count.unsupported == ()
    assert not any(layer.unroll for layer in model.layers if isinstance(layer, keras.layers.LSTM))


def test_count_flops_rejects_bad_arguments() -> None:
    spec = catalog_model("mlp")
    model = tfb.build_model(spec)
    with pytest.raises(ValueError, match="inference, training"):
        tfb.count_flops(model, spec, 1, "backward")
    with pytest.raises(ValueError, match="batch_size"):
        tfb.count_flops(model, spec, 0)


# --------------------------------------------------------------------------------------------- devices, memory


def test_devices_and_errors() -> None:
    devices = tfb.list_devices()
    assert devices[0] == "cpu"
    assert all(d.startswith("gpu:") for d in devices[1:])
    assert tfb.resolve_device("cpu") == "/CPU:0"
    tfb.synchronize("cpu")
    with pytest.raises(DeviceUnavailable, match="gpu:99"):
        tfb.resolve_device("gpu:99")
    with pytest.raises(DeviceUnavailable):
        tfb.build_model(catalog_model("mlp"), device="tpu")


def test_cpu_memory_stats_are_none_and_oom_errors_are_recognised() -> None:
    assert tfb.memory_stats("cpu") == MemoryStats()
    tfb.reset_peak_memory("cpu")
    assert tfb.is_oom_error(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert tfb.is_oom_error(MemoryError())
    assert not tfb.is_oom_error(ValueError("shape mismatch"))


@pytest.fixture
def no_tf32():
    """TensorFlow runs float32 matmuls/convs in TF32 on Ampere+ GPUs by default (~1e-3 relative error)."""
    old = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(old)


@needs_gpu
def test_gpu_model_parity_and_memory_stats(no_tf32: None) -> None:
    spec = catalog_model("lenet")
    tfb.reset_peak_memory("gpu:0")
    model = tfb.build_model(spec, device="gpu:0")
    x, y = make_batch(spec, 2)
    out = tfb.infer(model, tfb.to_device(x, "gpu:0"))
    assert "GPU" in out.device
    tfb.synchronize("gpu:0")
    assert _rel_err(tfb.to_numpy(out), reference_forward(spec, random_weights(spec), x)) < PARITY_RTOL
    loss = tfb.make_train_step(model, spec, "adam")(tfb.to_device(x, "gpu:0"), tfb.to_device(y, "gpu:0"))
    assert np.isfinite(float(tfb.to_numpy(loss)))
    stats = tfb.memory_stats("gpu:0")
    assert stats.allocated is not None and stats.allocated > 0
    assert stats.peak_allocated is not None and stats.peak_allocated >= stats.allocated


@needs_gpu
def test_gpu_lstm_parity(no_tf32: None) -> None:
    # On a GPU Keras runs the LSTM through cuDNN, which takes the weights in its own layout.
    _check_parity(catalog_model("lstm"), device="gpu:0")
