"""Simulated PyTorch peaks (analytics/timeline.py) against MemTracker, PyTorch's tensor-level memory tracker.

``torch.distributed._tools.mem_tracker.MemTracker`` counts every tensor storage an op returns and frees
it when its last reference dies; its peak is an independent count of the same quantity the simulator
predicts. The input batch, the labels, the parameters (with last step's gradients) and the optimizer
state exist before the tracked step, so they are registered with ``track_external``, and the simulation
is run with ``dispatch_mode=True`` (a TorchDispatchMode changes a few composite ops to out-of-place; see
``simulate``).

Tolerance: 0 bytes. On torch 2.13 CPU (float32) the simulated peak equals MemTracker's to the byte for
every catalog model in both phases (vgg at batch 2, the others at batch 4 to 8) and for specs it was not
tuned on, so any difference means a rule no longer describes the installed PyTorch (a new version, or
oneDNN choosing another LSTM workspace on another CPU); the message names the case and the difference.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import require_or_skip

torch = require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")
# The torch env (XFBENCH_REQUIRE=torch) fails here when its torch has no MemTracker; elsewhere the module skips.
MemTracker = require_or_skip(
    "torch.distributed._tools.mem_tracker", "torch", reason="this torch has no MemTracker"
).MemTracker

from xfbench.analytics.catalog import catalog_model  # noqa: E402
from xfbench.analytics.spec import ModelSpec, spec_from_dict  # noqa: E402
from xfbench.analytics.timeline import simulate  # noqa: E402
from xfbench.analytics.weights import make_batch, random_weights  # noqa: E402
from xfbench.backends import get_backend  # noqa: E402

pytestmark = pytest.mark.torch

# Average pooling with `same` padding, an even kernel, dropout, no-bias layers: none of it in the catalog.
UNTUNED = {
    "name": "untuned",
    "input_shape": [3, 23, 29],
    "layers": [
        {"type": "Conv2D", "filters": 6, "kernel": 4, "stride": 2, "padding": "same", "activation": "relu"},
        {"type": "AvgPool2D", "pool": 2, "padding": "same"},
        {"type": "Dropout", "rate": 0.25},
        {"type": "Conv2D", "filters": 4, "kernel": 2, "use_bias": False, "activation": "tanh"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
    ],
}


def _memtracker_peak(spec: ModelSpec, batch: int, phase: str, optimizer: str, warm: bool) -> int:
    b = get_backend("torch")
    model = b.build_model(spec, device="cpu", dtype="float32", seed=0)
    b.set_weights(model, random_weights(spec, 0))
    x_np, y_np = make_batch(spec, batch, 1)
    x = b.to_device(x_np, "cpu", "float32")
    tracked: list[Any] = [model, x]
    if phase == "training":
        y = b.to_device(y_np, "cpu")
        step = b.make_train_step(model, spec, optimizer)
        if warm:
            step(x, y)  # an earlier step: gradients, optimizer state and caches exist before the tracked one
        tracked += [step.optimizer, y]

        def run() -> None:
            step(x, y)

    else:
        if warm:
            b.infer(model, x)

        def run() -> None:
            b.infer(model, x)

    # PoolLayer's cached cell counts (`same` average pooling) are module state, not parameters or buffers
    tracked += [c for layer in model.layers for c in getattr(layer, "_counts", {}).values()]
    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        run()
    snapshot = tracker.get_tracker_snapshot("peak")
    return int(sum(dev["Total"] for dev in snapshot.values()))


CASES = [
    ("mlp", {}, 8, "sgd", False),
    ("mlp", {}, 4, "momentum", True),
    ("lenet", {}, 4, "sgd", False),
    ("lenet", {}, 4, "adam", True),
    ("lstm", {}, 2, "sgd", False),
    ("lstm", {}, 3, "adam", True),
    ("cnn3", {"input_shape": (3, 40, 60)}, 2, "sgd", False),
    ("nin", {"input_shape": (1, 96, 96)}, 2, "sgd", False),
]


@pytest.mark.parametrize("phase", ["inference", "training"])
@pytest.mark.parametrize(("name", "overrides", "batch", "optimizer", "warm"), CASES)
def test_simulated_peak_equals_memtracker(
    name: str, overrides: dict[str, Any], batch: int, optimizer: str, warm: bool, phase: str
) -> None:
    spec = catalog_model(name, **overrides)
    measured = _memtracker_peak(spec, batch, phase, optimizer, warm)
    simulated = simulate(spec, batch, phase, "float32", optimizer, "torch", warm=warm, dispatch_mode=True)
    assert simulated.peak_bytes == measured, (
        f"{name} {phase} b{batch} {optimizer}: simulated {simulated.peak_bytes:,} B, MemTracker {measured:,} B "
        f"({(simulated.peak_bytes - measured) / measured:+.2%}); peak at {simulated.peak_event.op}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["inference", "training"])
def test_alexnet_at_batch_2(phase: str) -> None:
    spec = catalog_model("alexnet")
    measured = _memtracker_peak(spec, 2, phase, "sgd", False)
    assert simulate(spec, 2, phase, dispatch_mode=True, warm=False).peak_bytes == measured


@pytest.mark.parametrize("phase", ["inference", "training"])
def test_untuned_spec(phase: str) -> None:
    spec = spec_from_dict(UNTUNED)
    measured = _memtracker_peak(spec, 3, phase, "adam", True)
    assert simulate(spec, 3, phase, optimizer="adam", dispatch_mode=True).peak_bytes == measured


def test_mse_loss_keeps_an_input_sized_buffer() -> None:
    # the rule behind cnn3's loss: the mean is a 0-d view of the unreduced loss, which lives as long as it
    a = torch.randn(2, 5, 4, 4)
    loss = torch.nn.functional.mse_loss(a, torch.randn(2, 5, 4, 4))
    assert loss.dim() == 0 and loss.untyped_storage().nbytes() == 2 * 5 * 4 * 4 * 4
