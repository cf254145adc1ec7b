"""Conformance tests: one set, run against every backend (each in its own tox env).

A framework that is not installed is a skip with a reason. Expected values come from the numpy
reference (float64) and from analytic counts checked against hand arithmetic in test_analytics.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import require_backend_or_skip
from xfbench.analytics import CATALOG, catalog_model
from xfbench.analytics.predict import count_params, counter_prediction, unsupported_layer_indices
from xfbench.analytics.weights import make_batch, random_weights
from xfbench.backends import get_backend
from xfbench.benchmarks.parity import TOLERANCE, check_parity

BACKEND_PARAMS = [
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    pytest.param("mxnet", marks=pytest.mark.mxnet),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    name = request.param
    require_backend_or_skip(name)
    return name


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_parity_with_numpy_reference(backend: str, model: str) -> None:
    batch = 1 if model.startswith("vgg") else 2
    result = check_parity(backend, catalog_model(model), batch_size=batch)
    assert not result.error, result.error
    assert result.output_shape == result.expected_shape
    assert result.params_counted == result.params_predicted == count_params(catalog_model(model), backend)
    assert result.max_rel_error is not None and result.max_rel_error < TOLERANCE, result


SMALL = {
    "cnn3": {"input_shape": (3, 20, 30)},
    "lenet": {},
    "lstm": {"input_shape": (8, 60)},
    "mlp": {},
}


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("model", sorted(SMALL))
def test_train_step_changes_every_weight_tensor(backend: str, model: str, optimizer: str) -> None:
    b = get_backend(backend)
    spec = catalog_model(model, **SMALL[model])
    net = b.build_model(spec, seed=3)
    b.set_weights(net, random_weights(spec, seed=3))
    before = b.get_weights(net)
    x, y = make_batch(spec, 4, seed=5)
    step = b.make_train_step(net, spec, optimizer)
    loss = float(b.to_numpy(step(b.to_device(x, "cpu"), b.to_device(y, "cpu"))))
    after = b.get_weights(net)
    assert np.isfinite(loss) and loss > 0
    assert len(after) == len(before)
    changed = [not np.array_equal(a, c) for a, c in zip(before, after)]
    assert all(changed), f"unchanged weight tensors at {[i for i, c in enumerate(changed) if not c]}"


def test_unknown_optimizer_is_rejected(backend: str) -> None:
    b = get_backend(backend)
    spec = catalog_model("mlp")
    with pytest.raises(ValueError, match="adam"):
        b.make_train_step(b.build_model(spec), spec, "lbfgs")


@pytest.mark.parametrize("model", ["cnn3", "lstm", "nin"])
def test_weight_round_trip_gives_identical_outputs(backend: str, model: str) -> None:
    b = get_backend(backend)
    spec = catalog_model(model, **SMALL.get(model, {"input_shape": (1, 96, 96)}))
    first = b.build_model(spec, seed=1)
    exported = b.get_weights(first)  # the framework's own initialisation
    second = b.build_model(spec, seed=2)
    b.set_weights(second, exported)
    for a, c in zip(exported, b.get_weights(second)):
        np.testing.assert_array_equal(a, c)
    x, _ = make_batch(spec, 2, seed=4)
    out1 = b.to_numpy(b.infer(first, b.to_device(x, "cpu")))
    out2 = b.to_numpy(b.infer(second, b.to_device(x, "cpu")))
    np.testing.assert_array_equal(out1, out2)


def test_module_constants(backend: str) -> None:
    b = get_backend(backend)
    assert b.NAME == backend
    assert isinstance(b.VERSION, str) and b.VERSION[0].isdigit()


def test_unknown_device_is_a_clear_error(backend: str) -> None:
    from xfbench.backends import DeviceUnavailable

    b = get_backend(backend)
    assert b.list_devices()[0] == "cpu"
    with pytest.raises(DeviceUnavailable, match="gpu:7"):
        b.build_model(catalog_model("mlp"), device="gpu:7")


@pytest.mark.gpu
def test_gpu_build_and_infer(backend: str) -> None:
    b = get_backend(backend)
    gpus = [d for d in b.list_devices() if d.startswith("gpu")]
    if not gpus:
        pytest.skip(f"no GPU visible to {backend} on this machine")
    spec = catalog_model("lenet")
    net = b.build_model(spec, device=gpus[0])
    b.set_weights(net, random_weights(spec))
    x, y = make_batch(spec, 4)
    out = b.to_numpy(b.infer(net, b.to_device(x, gpus[0])))
    assert out.shape == (4, 10)
    step = b.make_train_step(net, spec, "adam")
    loss = step(b.to_device(x, gpus[0]), b.to_device(y, gpus[0]))
    b.synchronize(gpus[0])
    assert np.isfinite(float(b.to_numpy(loss)))


def _quiet_spec(model: str, **overrides: object):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return catalog_model(model, **overrides)  # type: ignore[arg-type]


__all__ = ["counter_prediction", "unsupported_layer_indices"]


FLOP_MODELS = {
    "cnn3": {"input_shape": (3, 40, 60)},
    "alexnet": {},
    "lenet": {},
    "lstm": {},
    "mlp": {},
    "nin": {"input_shape": (1, 96, 96)},
    "vgg11": {"input_shape": (1, 64, 64)},
}


@pytest.mark.parametrize("model", sorted(FLOP_MODELS))
def test_flop_counter_equals_prediction_under_its_convention(backend: str, model: str) -> None:
    b = get_backend(backend)
    spec = _quiet_spec(model, **FLOP_MODELS[model])
    net = b.build_model(spec)
    count = b.count_flops(net, spec, 2, "inference")
    skip = unsupported_layer_indices(spec, tuple(count.unsupported))
    expected = counter_prediction(spec, 2, backend, "inference", skip)
    ops = b.ALIGNED_OPS  # the counter's op types that the analytic convention covers (None: all)
    counted = count.total if ops is None else sum(v for k, v in count.by_op.items() if k in ops)
    assert counted == expected, (count.by_op, count.unsupported)
    if backend == "torch" and model == "lstm":
        # PyTorch's CPU LSTM kernel is invisible to FlopCounterMode: reported, not counted as 0.
        assert count.unsupported == ("0:LSTM",)
