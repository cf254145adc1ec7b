"""The shared vocabulary (analytics/vocab.py): dtype widths, phases, optimizers, backend names, devices.

Expected values are independent of the module: dtype widths from the C layouts ``struct`` packs (IEEE 754
binary32 and binary16) and bfloat16's definition (16 bits); optimizer state from what each update rule keeps
per parameter (SGD nothing, momentum a velocity, Adam two moment estimates); learning rates and Adam's epsilon
from the frameworks' documented defaults; device strings and aliases written out by hand.
"""

from __future__ import annotations

import struct

import pytest
from xfbench.analytics import vocab


def _one_line_error(exc: pytest.ExceptionInfo[ValueError], *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and "allowed" in text, text
    for needle in needles:
        assert needle in text, (needle, text)


# --- dtypes -------------------------------------------------------------------------------------------------


def test_dtype_widths_match_the_ieee_layouts() -> None:
    assert vocab.dtype_bytes("float32") == struct.calcsize("<f") == 4  # binary32
    assert vocab.dtype_bytes("float16") == struct.calcsize("<e") == 2  # binary16
    assert vocab.dtype_bytes("bfloat16") == 16 // 8  # 1 sign + 8 exponent + 7 mantissa bits
    assert vocab.DTYPES == ("float32", "float16", "bfloat16") and vocab.DEFAULT_DTYPE == "float32"


@pytest.mark.parametrize("bad", ["int8", "Float32", "fp16", ""])
def test_unknown_dtype_is_one_line_naming_it(bad: str) -> None:
    with pytest.raises(ValueError) as exc:
        vocab.dtype_bytes(bad)
    _one_line_error(exc, repr(bad), "float32, float16, bfloat16")


# --- phases -------------------------------------------------------------------------------------------------


def test_phases() -> None:
    assert vocab.PHASES == ("inference", "training")
    assert vocab.check_phase("training") == "training"
    with pytest.raises(ValueError) as exc:
        vocab.check_phase("eval")
    _one_line_error(exc, "'eval'", "inference, training")


# --- optimizers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slots", "lr", "momentum"),
    [
        ("sgd", 0, 0.01, 0.0),  # w -= lr * g: no state; Keras SGD's default learning rate 0.01
        ("momentum", 1, 0.01, 0.9),  # v = 0.9 v + g: one velocity tensor per parameter
        ("adam", 2, 0.001, 0.0),  # first and second moment estimates; Adam's default step size 1e-3
    ],
)
def test_optimizer_state_and_defaults(name: str, slots: int, lr: float, momentum: float) -> None:
    opt = vocab.optimizer(name)
    assert (opt.name, opt.slots, opt.lr, opt.momentum) == (name, slots, lr, momentum)
    assert vocab.OPTIMIZER_SLOTS[name] == slots and vocab.DEFAULT_LR[name] == lr


def test_optimizer_table_and_errors() -> None:
    assert list(vocab.OPTIMIZERS) == ["sgd", "momentum", "adam"] and vocab.DEFAULT_OPTIMIZER == "sgd"
    assert vocab.MOMENTUM == 0.9
    assert vocab.ADAM_EPSILON == 1e-8  # torch.optim.Adam's and mxnet.optimizer.Adam's default eps
    with pytest.raises(ValueError) as exc:
        vocab.optimizer("rmsprop")
    _one_line_error(exc, "'rmsprop'", "sgd, momentum, adam")


# --- backends -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("torch", "torch"),
        ("PyTorch", "torch"),
        ("tf", "tensorflow"),
        (" TensorFlow ", "tensorflow"),
        ("keras", "tensorflow"),
        ("MX", "mxnet"),
        ("mxnet", "mxnet"),
    ],
)
def test_backend_spellings(spelling: str, name: str) -> None:
    assert vocab.canonical_backend(spelling) == name


def test_numpy_only_where_allowed() -> None:
    assert vocab.canonical_backend("np", ("numpy", "torch")) == "numpy"
    with pytest.raises(ValueError) as exc:
        vocab.canonical_backend("np")
    _one_line_error(exc, "'np'", "torch, tensorflow, mxnet")
    with pytest.raises(ValueError) as exc:
        vocab.canonical_backend("caffe")
    _one_line_error(exc, "unknown backend 'caffe'")


def test_every_layer_uses_the_one_backend_and_dtype_table() -> None:
    from xfbench.analytics import costs, memory
    from xfbench.backends import ALIASES, BACKENDS, canonical_name

    assert BACKENDS == ("torch", "tensorflow", "mxnet")
    assert ALIASES == {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "mx": "mxnet"}
    assert canonical_name("Keras") == "tensorflow"
    with pytest.raises(ValueError, match="unknown backend 'np'"):
        canonical_name("np")  # numpy is the matmul baseline, not a model backend
    assert costs.canonical_framework("pytorch") == "torch"
    with pytest.raises(ValueError, match=r"unknown framework 'jax'; allowed: tensorflow, torch, mxnet"):
        costs.canonical_framework("jax")
    assert memory.DTYPE_BYTES == {"float32": 4, "float16": 2, "bfloat16": 2}
    assert memory.OPTIMIZER_SLOTS == {"sgd": 0, "momentum": 1, "adam": 2}
    from xfbench.analytics.catalog import resolve_model

    mlp = resolve_model("mlp")
    params = 784 * 256 + 256 + 256 * 10 + 10
    # Adam's state in the ledger: 2 slots x params x 4 bytes (float32).
    assert memory.training_ledger(mlp, params, 1, "float32", "adam").term("optimizer_state") == 2 * params * 4
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'; allowed: sgd, momentum, adam"):
        memory.training_ledger(mlp, params, 1, "float32", "rmsprop")


# --- devices ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "device"), [("cpu", "cpu"), ("CPU", "cpu"), ("gpu", "gpu:0"), (" GPU ", "gpu:0"), ("gpu:3", "gpu:3")]
)
def test_normalize_device(text: str, device: str) -> None:
    assert vocab.normalize_device(text) == device


@pytest.mark.parametrize("bad", ["tpu", "gpu:", "gpu:x", "gpu0", "cuda:0", "all"])
def test_normalize_device_refuses(bad: str) -> None:
    with pytest.raises(ValueError) as exc:
        vocab.normalize_device(bad)
    _one_line_error(exc, repr(bad), "cpu, gpu, gpu:N")


def test_device_kind() -> None:
    assert [vocab.device_kind(d) for d in ("cpu", "gpu:0", "gpu:7")] == ["cpu", "gpu", "gpu"]


@pytest.mark.parametrize(
    ("text", "default", "devices"),
    [
        (None, "cpu", ["cpu"]),
        ("", "cpu", ["cpu"]),
        (None, "gpu", ["gpu:0"]),
        ("gpu,cpu,gpu:0", "cpu", ["gpu:0", "cpu"]),  # gpu is gpu:0: once, where it first appears
        (" gpu:1 , cpu ", "cpu", ["gpu:1", "cpu"]),
        ("ALL", "cpu", ["all"]),
        (" all ", "cpu", ["all"]),
    ],
)
def test_parse_devices(text: str | None, default: str, devices: list[str]) -> None:
    assert vocab.parse_devices(text, default) == devices


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("tpu", ["'tpu'", "cpu, gpu, gpu:N or all"]),
        ("cpu,gpu:x", ["'gpu:x'"]),
        ("all,cpu", ["'all' cannot be combined", "'all,cpu'"]),
        (",,", ["no device given"]),
    ],
)
def test_parse_devices_refuses(text: str, needles: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        vocab.parse_devices(text)
    _one_line_error(exc, *needles)


def test_all_means_every_visible_device() -> None:
    visible = ["cpu", "gpu:0", "gpu:1"]
    expanded = vocab.expand_devices(["all"], visible)
    assert expanded == ["cpu", "gpu:0", "gpu:1"]
    expanded.append("gpu:9")
    assert visible == ["cpu", "gpu:0", "gpu:1"]  # a new list: the caller's is untouched
    # Explicit devices stay as requested, visible or not (the caller skips the others with a reason).
    assert vocab.expand_devices(["gpu:1"], ["cpu"]) == ["gpu:1"]
    assert vocab.expand_devices(["cpu", "gpu:0"], visible) == ["cpu", "gpu:0"]
