"""Tensor-level memory of one step, measured with PyTorch's own ``MemTracker``.

``torch.distributed._tools.mem_tracker.MemTracker`` (a ``TorchDispatchMode``) counts every tensor storage an
op returns, by category (``Parameter``, ``Buffer``, ``Gradient``, ``Activation``, ``Temp``, ``Optstate``,
``Other``), and frees it when its last reference dies. Its peak is the tensor-level figure of a row
(``mem_tensor_measured_bytes``); xfbench uses it as is and does not re-implement it.

What exists before the step (the model with its parameters, the optimizer, the input batch and the labels)
is registered with ``track_external``, so the peak counts them, as the simulated timeline does
(:func:`analytics.timeline.simulate` with ``dispatch_mode=True``: a dispatch mode makes a few composite ops
allocate out of place). The benchmark worker tracks a steady-state step (the third of its first repeat:
``simulate(..., warm=True)``), after that process's RSS readings, which the tracker's references never see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

try:  # torch >= 2.5
    from torch.distributed._tools.mem_tracker import MemTracker
except ImportError:  # pragma: no cover - depends on the torch build
    MemTracker = None


@dataclass(frozen=True)
class TensorPeak:
    """MemTracker's peak of one step: the total and its categories (bytes), on the step's device."""

    peak_bytes: int
    breakdown: tuple[tuple[str, int], ...]  # MemTracker's category names, in its order; zero categories left out

    def breakdown_text(self) -> str:
        """``Parameter=123;Gradient=456;...`` (the row's ``mem_tensor_breakdown``)."""
        return ";".join(f"{name}={value}" for name, value in self.breakdown)


def available() -> str | None:
    """``None`` when MemTracker can be used here, else why not (one line)."""
    if MemTracker is None:
        return f"this torch ({torch.__version__}) has no torch.distributed._tools.mem_tracker.MemTracker"
    return None


def _module_state(model: Any) -> list[torch.Tensor]:
    """Tensors the model keeps outside parameters and buffers (``PoolLayer``'s cached cell counts)."""
    layers = getattr(model, "layers", [])
    return [t for layer in layers for t in getattr(layer, "_counts", {}).values() if isinstance(t, torch.Tensor)]


def track_step(run: Callable[[], Any], external: list[Any], model: Any = None) -> TensorPeak:
    """Runs ``run()`` once under a MemTracker that already knows ``external`` (modules, optimizers, tensors)."""
    why = available()
    if why is not None:
        raise RuntimeError(why)
    assert MemTracker is not None
    tracked = list(external)
    if model is not None:
        tracked += _module_state(model)
    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        run()
    snapshot = tracker.get_tracker_snapshot("peak")
    totals: dict[str, int] = {}
    for per_device in snapshot.values():
        for key, value in per_device.items():
            name = str(getattr(key, "value", key))  # MemTracker's keys are _MemRefType members, and "Total"
            totals[name] = totals.get(name, 0) + int(value)
    total = totals.pop("Total", sum(totals.values()))
    return TensorPeak(int(total), tuple((name, value) for name, value in totals.items() if value))


__all__ = ["TensorPeak", "available", "track_step"]
