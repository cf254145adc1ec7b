"""The PyTorch backend against the float64 numpy reference and hand arithmetic.

Parity is ``||out - ref|| / ||ref||`` over the whole output; float32 errors measured on torch 2.13 CPU,
one thread, are 1e-7 (lenet, lstm, mlp) to 3e-6 (vgg19), so the bound 1e-5 leaves a margin of 3x or more.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
from conftest import require_or_skip

torch = require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")

from xfbench.analytics import layers as L  # noqa: E402
from xfbench.analytics.catalog import CATALOG, catalog_model  # noqa: E402
from xfbench.analytics.reference import reference_forward  # noqa: E402
from xfbench.analytics.shapes import infer_shapes  # noqa: E402
from xfbench.analytics.spec import ModelSpec  # noqa: E402
from xfbench.analytics.weights import make_batch, output_kind, random_weights  # noqa: E402
from xfbench.backends import get_backend  # noqa: E402
from xfbench.backends.base import DeviceUnavailable, MemoryStats  # noqa: E402
from xfbench.backends.nvml import nvml_device_info, nvml_process_memory  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]

tb = get_backend("torch")

PARITY_TOL = 1e-5
SMALL = ("cnn3", "lenet", "lstm", "mlp")
NO_GPU = "no CUDA GPU visible to torch"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


def reference(spec: ModelSpec, weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    x64 = x if spec.input_dtype == "int64" else x.astype(np.float64)
    return reference_forward(spec, [w.astype(np.float64) for w in weights], x64)


def loaded_model(spec: ModelSpec, device: str = "cpu", dtype: str = "float32", seed: int = 1):
    model = tb.build_model(spec, device=device, dtype=dtype)
    weights = random_weights(spec, seed=seed)
    tb.set_weights(model, weights)
    return model, weights


# --- every catalog model: shape, parity, weight round trip ---------------------------------------------


@pytest.fixture(scope="module", params=list(CATALOG))
def catalog_case(request):
    """One built model per catalog entry, shared by the tests below (module scope groups them per model)."""
    name = request.param
    spec = catalog_model(name)
    model, weights = loaded_model(spec)
    x, _ = make_batch(spec, 2 if name in SMALL else 1, seed=2)
    out = tb.to_numpy(tb.infer(model, tb.to_device(x, "cpu")))
    yield name, spec, model, weights, x, out
    del model


def test_output_shape(catalog_case):
    _name, spec, _model, _weights, x, out = catalog_case
    assert out.shape == (x.shape[0], *infer_shapes(spec)[-1])
    assert out.dtype == np.float32


def test_parity_with_reference(catalog_case):
    name, spec, _model, weights, x, out = catalog_case
    err = rel_err(out, reference(spec, weights, x))
    assert err < PARITY_TOL, f"{name}: relative error {err:.2e}"


def test_weight_round_trip(catalog_case):
    _name, spec, model, weights, x, out = catalog_case
    exported = tb.get_weights(model)
    assert len(exported) == len(weights)
    for got, want in zip(exported, weights):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    twin = tb.build_model(spec, seed=99)
    tb.set_weights(twin, exported)
    np.testing.assert_array_equal(tb.to_numpy(tb.infer(twin, tb.to_device(x, "cpu"))), out)


def test_set_weights_rejects_wrong_shapes():
    spec = catalog_model("mlp")
    model = tb.build_model(spec)
    weights = random_weights(spec)
    with pytest.raises(ValueError, match="expected 4 weight arrays"):
        tb.set_weights(model, weights[:3])
    with pytest.raises(ValueError, match=r"weight 0 \(hidden\.kernel\): expected shape \(784, 256\), got \(256, 784\)"):
        tb.set_weights(model, [weights[0].T, *weights[1:]])


def test_build_is_deterministic_per_seed():
    spec = catalog_model("lenet")
    a, b, c = (tb.get_weights(tb.build_model(spec, seed=s)) for s in (3, 3, 4))
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a, c))


# --- parameter counts by hand ----------------------------------------------------------------------------


def test_count_params_lstm_has_two_biases():
    h, f, vocab = 128, 60, 60
    lstm = 4 * h * (f + h) + 8 * h  # weight_ih, weight_hh, bias_ih + bias_hh
    dense = h * vocab + vocab
    assert tb.count_params(tb.build_model(catalog_model("lstm"))) == lstm + dense == 105020


def test_count_params_alexnet():
    # 1x224x224: conv1 11/4 pad 1 -> 54, pool 3/2 -> 26, conv2 keeps 26, pool -> 12, conv3-5 keep 12, pool -> 5
    convs = [(1, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    conv = sum(cin * cout * k * k + cout for cin, cout, k in convs)
    dense = (256 * 5 * 5) * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert tb.count_params(tb.build_model(catalog_model("alexnet"))) == conv + dense


# --- layers beyond the catalog ---------------------------------------------------------------------------


def _check_parity(spec: ModelSpec, batch: int = 2, tol: float = PARITY_TOL) -> float:
    model, weights = loaded_model(spec)
    x, _ = make_batch(spec, batch, seed=5)
    out = tb.to_numpy(tb.infer(model, tb.to_device(x, "cpu")))
    assert out.shape == (batch, *infer_shapes(spec)[-1])
    err = rel_err(out, reference(spec, weights, x))
    assert err < tol, f"{spec.name}: relative error {err:.2e}"
    return err


def test_same_padding_even_kernel_stride_2():
    # 9x10 input: same conv k4/s2 pads H by (1, 2) and W by (1, 1); pools pad asymmetrically too.
    spec = ModelSpec(
        "same_even",
        (3, 9, 10),
        (
            L.Conv2D(4, 4, 2, "same", activation="tanh"),
            L.MaxPool2D(4, 2, "same"),
            L.AvgPool2D(2, 2, "same"),
        ),
    )
    assert infer_shapes(spec) == [(4, 5, 5), (4, 3, 3), (4, 2, 2)]
    _check_parity(spec)


def test_same_avg_pool_excludes_padding():
    # A 3x3 'same' average on a 2x2 map of ones: TF divides by the real cells only, so every output is 1.
    spec = ModelSpec("same_avg", (1, 2, 2), (L.AvgPool2D(3, 1, "same"),))
    model = tb.build_model(spec)
    out = tb.to_numpy(tb.infer(model, np.ones((1, 1, 2, 2), np.float32)))
    np.testing.assert_array_equal(out, np.ones((1, 1, 2, 2), np.float32))
    _check_parity(ModelSpec("same_avg_odd", (2, 7, 5), (L.AvgPool2D((2, 3), (2, 1), "same"),)))


def test_explicit_padding_wider_than_half_window():
    # torch's pooling ops refuse padding > window/2: the backend pads itself (-inf for max, zeros for avg).
    spec = ModelSpec(
        "wide_pad",
        (2, 5, 6),
        (L.MaxPool2D(3, 2, 2), L.AvgPool2D(2, 1, 2), L.Conv2D(3, 3, 1, 1, use_bias=False)),
    )
    _check_parity(spec)


def test_other_layers():
    spec = ModelSpec(
        "mixed",
        (6, 8, 8),
        (
            L.Conv2D(8, 3, 1, 1, activation="sigmoid"),
            L.LocalResponseNorm(size=4, alpha=0.5, beta=0.75, k=1.5),
            L.Dropout(0.3),
            L.Conv2D(5, 1),
            L.Activation("tanh"),
            L.GlobalAvgPool2D(),
            L.Dense(7, use_bias=False, activation="relu"),
            L.Dense(4, activation="softmax"),
        ),
    )
    _check_parity(spec)


def test_embedding_lstm_last_step():
    spec = ModelSpec(
        "tokens",
        (6,),
        (L.Embedding(20, 5), L.LSTM(7, return_sequences=False), L.Dense(3)),
        input_dtype="int64",
    )
    _check_parity(spec)


def test_lstm_parameter_layout():
    spec = ModelSpec("lstm_small", (4, 3), (L.LSTM(2, return_sequences=True),))
    model, weights = loaded_model(spec)
    lstm = model.layers[0].lstm
    np.testing.assert_array_equal(lstm.weight_ih_l0.detach().numpy(), weights[0].T)
    np.testing.assert_array_equal(lstm.weight_hh_l0.detach().numpy(), weights[1].T)
    np.testing.assert_array_equal(lstm.bias_ih_l0.detach().numpy(), weights[2])
    np.testing.assert_array_equal(lstm.bias_hh_l0.detach().numpy(), np.zeros(8, np.float32))
    with torch.no_grad():
        lstm.bias_hh_l0.fill_(0.25)
    np.testing.assert_allclose(tb.get_weights(model)[2], weights[2] + np.float32(0.25), rtol=0, atol=1e-7)


# --- training ------------------------------------------------------------------------------------------


def _numpy_loss(spec: ModelSpec, out: np.ndarray, y: np.ndarray) -> float:
    """The loss definitions of the shared context, in float64 numpy."""
    kind = output_kind(spec)
    if kind == "regression":
        return float(np.mean((out - y) ** 2))
    flat = out.reshape(-1, out.shape[-1])
    labels = y.reshape(-1)
    if kind == "logits":
        z = flat - flat.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    else:
        logp = np.log(np.clip(flat, 1e-7, 1 - 1e-7))
    return float(-np.mean(logp[np.arange(labels.size), labels]))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("name", ["lenet", "lstm", "mlp", "cnn3"])
def test_train_step_updates_weights(name, optimizer):
    spec = catalog_model(name)
    model, weights = loaded_model(spec)
    x, y = make_batch(spec, 2, seed=3)
    step = tb.make_train_step(model, spec, optimizer=optimizer)
    loss = step(tb.to_device(x, "cpu"), tb.to_device(y, "cpu"))
    tb.synchronize("cpu")
    assert loss.ndim == 0 and math.isfinite(float(loss))
    # The first step's loss is the loss at the loaded weights (no Dropout in these models).
    expected = _numpy_loss(spec, reference(spec, weights, x), y)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    after = tb.get_weights(model)
    assert all(np.isfinite(w).all() for w in after)
    assert any(not np.array_equal(a, w) for a, w in zip(after, weights)), "no weight changed"
    second = step(x, y)  # numpy inputs are accepted too
    assert math.isfinite(float(second))


def test_train_step_alexnet_one_sgd_step():
    spec = catalog_model("alexnet")
    model, weights = loaded_model(spec)
    x, y = make_batch(spec, 1, seed=3)
    loss = tb.make_train_step(model, spec, "sgd")(tb.to_device(x, "cpu"), tb.to_device(y, "cpu"))
    assert math.isfinite(float(loss))
    fc8 = tb.get_weights(model)[-2]
    assert not np.array_equal(fc8, weights[-2])


def test_unknown_optimizer():
    spec = catalog_model("mlp")
    with pytest.raises(ValueError, match="allowed: sgd, momentum, adam"):
        tb.make_train_step(tb.build_model(spec), spec, optimizer="rmsprop")


def test_sgd_lr_is_used():
    # One SGD step on a bias-free Dense: w' = w - lr * dL/dw with L = mean((x w - y)^2), computed by hand.
    spec = ModelSpec("lin", (3,), (L.Dense(1, use_bias=False), L.Activation("tanh")))
    model = tb.build_model(spec)
    w = np.array([[0.5], [-0.25], [1.0]], np.float32)
    tb.set_weights(model, [w])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], np.float32)
    y = np.array([[0.2], [-0.1]], np.float32)
    tb.make_train_step(model, spec, "sgd", lr=0.1)(x, y)
    x64, y64, w64 = x.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    out = np.tanh(x64 @ w64)
    grad = x64.T @ (2 * (out - y64) / y64.size * (1 - out**2))
    np.testing.assert_allclose(tb.get_weights(model)[0], w64 - 0.1 * grad, rtol=1e-6)


# --- FLOPs -----------------------------------------------------------------------------------------------


LENET_MACS = {
    "conv1": 28 * 28 * 6 * 1 * 5 * 5,  # pad 2 keeps 28x28
    "conv2": 10 * 10 * 16 * 6 * 5 * 5,  # 14 -> 10
    "dense": 400 * 120 + 120 * 84 + 84 * 10,
}


def test_lenet_forward_flops():
    spec = catalog_model("lenet")
    n = 2
    fc = tb.count_flops(tb.build_model(spec), spec, n, "inference")
    conv = 2 * n * (LENET_MACS["conv1"] + LENET_MACS["conv2"])
    dense = 2 * n * LENET_MACS["dense"]
    assert fc.by_op == {"aten.convolution": conv, "aten.addmm": dense}
    assert fc.total == conv + dense == 1666080
    assert fc.unsupported == ()
    assert "2 per MAC" in fc.convention and "FlopCounterMode" in fc.counter


def test_lenet_training_flops():
    # Backward = grad input + grad weight (2x forward) for every layer but conv1, whose input needs no grad.
    spec = catalog_model("lenet")
    n = 2
    model = tb.build_model(spec)
    before = tb.get_weights(model)
    fc = tb.count_flops(model, spec, n, "training")
    fwd = LENET_MACS["conv1"] + LENET_MACS["conv2"] + LENET_MACS["dense"]
    assert fc.total == 2 * n * (3 * fwd - LENET_MACS["conv1"])
    assert set(fc.by_op) == {"aten.convolution", "aten.addmm", "aten.mm", "aten.convolution_backward"}
    for a, b in zip(tb.get_weights(model), before):
        np.testing.assert_array_equal(a, b)
    assert all(p.grad is None for p in model.parameters())


def test_lstm_flops_reports_unsupported_layer_on_cpu():
    spec = catalog_model("lstm")
    n = 2
    fc = tb.count_flops(tb.build_model(spec), spec, n, "inference")
    # aten.lstm is one fused CPU kernel without a FLOP formula: only the Dense (on N*T rows) is counted.
    assert fc.unsupported == ("0:LSTM",)
    assert fc.total == 2 * n * 40 * 128 * 60
    assert tb.count_flops(tb.build_model(spec), spec, n, "training").unsupported == ("0:LSTM",)


def test_unknown_phase():
    spec = catalog_model("mlp")
    with pytest.raises(ValueError, match="allowed: inference, training"):
        tb.count_flops(tb.build_model(spec), spec, 1, "eval")


# --- dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision(dtype):
    spec = catalog_model("lenet")
    model, weights = loaded_model(spec, dtype=dtype)
    assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())
    x, y = make_batch(spec, 2, seed=4)
    xt = tb.to_device(x, "cpu", dtype)
    assert xt.dtype == getattr(torch, dtype)
    try:
        out = tb.to_numpy(tb.infer(model, xt))
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"{dtype} on this CPU build: {exc}")
    assert out.dtype == np.float32
    # bfloat16 keeps 8 mantissa bits (rel. step 4e-3); the error over 8 layers stays well under 5e-2.
    assert rel_err(out, reference(spec, weights, x)) < 5e-2
    loss = tb.make_train_step(model, spec, "adam")(xt, tb.to_device(y, "cpu"))
    assert math.isfinite(float(loss))


def test_unknown_dtype():
    with pytest.raises(ValueError, match="allowed: float32, float16, bfloat16"):
        tb.build_model(catalog_model("mlp"), dtype="int8")


# --- devices and memory ----------------------------------------------------------------------------------


def test_list_devices():
    devices = tb.list_devices()
    assert devices[0] == "cpu"
    assert devices[1:] == [f"gpu:{i}" for i in range(torch.cuda.device_count())]


def test_unavailable_devices():
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a gpu:7")
    with pytest.raises(DeviceUnavailable) as info:
        tb.build_model(catalog_model("mlp"), device="gpu:7")
    assert "gpu:7" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DeviceUnavailable, match="cpu, gpu, gpu:N"):
        tb.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_gpu_on_cpu_only_machine():
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        tb.to_device(np.zeros(2, np.float32), "gpu")


def test_cpu_memory_stats_are_none():
    assert tb.memory_stats("cpu") == MemoryStats(None, None, None, None)
    tb.reset_peak_memory("cpu")  # no-op, must not raise
    free = tb.available_memory("cpu")
    assert free is None or free > 0


def test_is_oom_error():
    assert tb.is_oom_error(MemoryError())
    assert tb.is_oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert tb.is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert not tb.is_oom_error(ValueError("out of range"))
    assert not tb.is_oom_error(RuntimeError("shape mismatch"))


def test_nvml_without_gpu_is_none():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present (see test_gpu_nvml)")
    assert nvml_process_memory(0) is None
    assert nvml_device_info(0) is None


class _FakeProc:
    def __init__(self, pid: int, used: int | None):
        self.pid, self.usedGpuMemory = pid, used


class _FakeNVML:
    """Two GPUs; NVML index 1 runs this process (3 MiB) and another one."""

    def __init__(self, procs_on_1: list[_FakeProc]):
        self.procs_on_1 = procs_on_1
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in (0, 1):
            raise RuntimeError("NVMLError_InvalidArgument")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return {"GPU-aaa": 0, "GPU-bbb": 1}[uuid]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self.procs_on_1 if handle == 1 else []

    def nvmlDeviceGetName(self, handle):
        return b"Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Mem", (), {"total": 80 * 2**30})()

    def nvmlSystemGetDriverVersion(self):
        return "555.42"

    def nvmlDeviceGetUUID(self, handle):
        return ["GPU-aaa", "GPU-bbb"][handle]


def test_nvml_with_fake_library(monkeypatch):
    fake = _FakeNVML([_FakeProc(os.getpid(), 3 * 2**20), _FakeProc(os.getpid() + 1, 2**30)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_process_memory(1) == 3 * 2**20
    assert nvml_process_memory(0) is None  # no compute process listed on that GPU: cannot attribute, not 0 bytes
    assert nvml_process_memory(2) is None
    assert nvml_device_info(1) == {
        "name": "Fake GPU",
        "total_memory": 80 * 2**30,
        "driver_version": "555.42",
        "uuid": "GPU-bbb",
    }
    # CUDA's gpu:0 is NVML's GPU 1 when only that one is visible, by index or by UUID.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert nvml_process_memory(0) == 3 * 2**20
    assert nvml_process_memory(1) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert nvml_device_info(0)["uuid"] == "GPU-bbb"
    # Only other processes' ids (a container's pid namespace): not attributable.
    fake.procs_on_1 = [_FakeProc(os.getpid() + 1, 2**30)]
    assert nvml_process_memory(0) is None
    assert fake.inits == 0  # every call shut NVML down again


# --- GPU -------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", ["lenet", "lstm", "cnn3"])
def test_gpu_parity(name):
    spec = catalog_model(name)
    model, weights = loaded_model(spec, device="gpu")
    x, _ = make_batch(spec, 2, seed=2)
    out = tb.to_numpy(tb.infer(model, tb.to_device(x, "gpu")))
    tb.synchronize("gpu")
    # TF32 convolutions/matmuls (if enabled) keep 10 mantissa bits: allow 1e-3 instead of 1e-5.
    tol = 1e-3 if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32 else PARITY_TOL
    assert rel_err(out, reference(spec, weights, x)) < tol


@pytest.mark.gpu
@needs_gpu
def test_gpu_train_step_and_memory():
    spec = catalog_model("lenet")
    tb.reset_peak_memory("gpu")
    model, weights = loaded_model(spec, device="gpu")
    x, y = make_batch(spec, 2, seed=3)
    loss = tb.make_train_step(model, spec, "momentum")(tb.to_device(x, "gpu"), tb.to_device(y, "gpu"))
    tb.synchronize("gpu")
    assert math.isfinite(float(loss))
    assert any(not np.array_equal(a, w) for a, w in zip(tb.get_weights(model), weights))
    stats = tb.memory_stats("gpu")
    params_bytes = tb.count_params(model) * 4
    assert stats.allocated is not None and stats.allocated >= params_bytes
    assert stats.peak_allocated >= stats.allocated
    assert stats.reserved >= stats.allocated and stats.peak_reserved >= stats.reserved
    tb.reset_peak_memory("gpu")
    assert tb.memory_stats("gpu").peak_allocated <= stats.peak_allocated
    assert tb.available_memory("gpu") > 0


@pytest.mark.gpu
@needs_gpu
def test_gpu_flops_match_cpu_for_lenet():
    spec = catalog_model("lenet")
    fc = tb.count_flops(tb.build_model(spec, device="gpu"), spec, 2, "inference")
    assert fc.total == 1666080


@pytest.mark.gpu
@needs_gpu
def test_gpu_nvml():
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    info = nvml_device_info(0)
    assert info is not None and info["total_memory"] > 0 and info["name"]
    torch.ones(1, device="cuda")  # make sure this process has a CUDA context
    used = nvml_process_memory(0)
    assert used is None or used > 0  # None: NVML reports host pids (containers)
