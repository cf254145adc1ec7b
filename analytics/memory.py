"""The memory ledger: predicted bytes for inference and for one training step.

Every figure is in bytes (integers). A ledger is an ordered list of named terms whose sum is the
predicted peak; terms that later measurements show to matter (allocator workspace, framework
overhead) are terms of the same ledger, not a separate fudge factor.

Training terms: parameters, gradients (one per parameter), optimizer state (momentum: 1 slot per
parameter, adam: 2), activations kept for backward (every layer's output that is not a view, the
input batch and the labels), and the largest pair of activation gradients alive at once during the
backward pass. Inference terms: parameters, the input batch, and the largest working set of one layer:
its input and output, plus the pre-activation output where the layer has a fused activation.
``framework_overhead`` (a framework's fixed first-step memory) is measured, not derived: the benchmark
suite fills it from a tiny probe model of the same kernel family (benchmarks/harness/rows.py).

The textbook lower bound (HOML ch14 ex2) is its own line, not the prediction:

* inference: the two largest consecutive layer outputs + parameters;
* training: the sum of all layer outputs x batch + the input batch + parameters (no gradients).

"Layer outputs" there are the outputs of layers that compute something (not Flatten, Dropout or a
separate activation, which frameworks do as views or in place).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from xfbench.analytics.shapes import infer_shapes, layer_input_shapes, padding_amounts
from xfbench.analytics.spec import Activation, AvgPool2D, Conv2D, Dropout, Flatten, MaxPool2D, ModelSpec
from xfbench.analytics.vocab import (  # the vocabulary's dtype and optimizer tables, re-exported here
    DEFAULT_DTYPE,
    DEFAULT_OPTIMIZER,
    DTYPE_BYTES,
    OPTIMIZER_SLOTS,
    dtype_bytes,
)
from xfbench.analytics.vocab import optimizer as vocab_optimizer
from xfbench.analytics.weights import output_kind


@dataclass(frozen=True)
class Ledger:
    """Named byte terms (in order) whose sum is ``peak_bytes``."""

    phase: str  # "inference" | "training"
    terms: tuple[tuple[str, int], ...]

    @property
    def peak_bytes(self) -> int:
        return sum(v for _, v in self.terms)

    def term(self, name: str) -> int:
        return dict(self.terms)[name]

    def as_dict(self) -> dict[str, int]:
        return {**dict(self.terms), "peak": self.peak_bytes}


def _is_view(layer: object) -> bool:
    return isinstance(layer, (Flatten, Dropout, Activation))


def layer_output_elements(spec: ModelSpec) -> list[int]:
    """Per-sample element count of each layer's output."""
    return [math.prod(s) for s in infer_shapes(spec)]


def _batch_bytes(spec: ModelSpec, batch_size: int, width: int) -> tuple[int, int]:
    """(input bytes, label bytes) of one batch: float inputs in ``width`` bytes, int64 labels."""
    x_elems = batch_size * math.prod(spec.input_shape)
    x_bytes = x_elems * (8 if spec.input_dtype == "int64" else width)
    if output_kind(spec) == "regression":
        y_bytes = batch_size * math.prod(infer_shapes(spec)[-1]) * width
    else:
        y_bytes = batch_size * math.prod(infer_shapes(spec)[-1][:-1]) * 8
    return x_bytes, y_bytes


def _largest_consecutive_pair(sizes: list[int]) -> int:
    if len(sizes) == 1:
        return sizes[0]
    return max(a + b for a, b in itertools.pairwise(sizes))


def inference_ledger(spec: ModelSpec, params: int, batch_size: int, dtype: str = DEFAULT_DTYPE) -> Ledger:
    width = dtype_bytes(dtype)
    x_bytes, _ = _batch_bytes(spec, batch_size, width)
    # The caller holds the input for the whole call. Each layer frees its input once its output exists, so
    # a layer's input and output are alive together; a fused activation (Conv2D/Dense ``activation``) makes
    # its result while the pre-activation output is still alive, a third tensor of the output's size.
    live, previous = 0, 0
    for layer, elements in zip(spec.layers, layer_output_elements(spec)):
        if _is_view(layer):
            continue
        out = elements * batch_size * width
        fused = out if getattr(layer, "activation", None) else 0
        live = max(live, previous + out + fused)
        previous = out
    return Ledger(
        "inference",
        (
            ("parameters", params * width),
            ("input_batch", x_bytes),
            ("activations", live),
            ("workspace", 0),
            ("framework_overhead", 0),
        ),
    )


def padding_copy_bytes(spec: ModelSpec, batch_size: int, width: int) -> int:
    """Bytes of padded input copies a framework keeps for backward where it must pad explicitly.

    PyTorch and MXNet pad only symmetrically: a ``same`` window whose TensorFlow-rule padding is uneven
    is computed on an explicitly padded copy of its input (``F.pad``), which the op then saves for its
    weight gradient beside the unpadded activation. TensorFlow pads inside the op.
    """
    total = 0
    shape: tuple[int, ...] = tuple(spec.input_shape)
    for layer, out_shape in zip(spec.layers, infer_shapes(spec)):
        if isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)) and layer.padding == "same":
            window = layer.kernel if isinstance(layer, Conv2D) else layer.pool
            stride = layer.stride
            assert isinstance(window, tuple) and isinstance(stride, tuple)
            pads = [padding_amounts("same", size, k, st) for size, k, st in zip(shape[1:], window, stride)]
            if any(before != after for before, after in pads):
                c, h, w = shape
                total += c * (h + sum(pads[0])) * (w + sum(pads[1])) * batch_size * width
        shape = out_shape
    return total


def training_ledger(
    spec: ModelSpec,
    params: int,
    batch_size: int,
    dtype: str = DEFAULT_DTYPE,
    optimizer: str = DEFAULT_OPTIMIZER,
    framework: str = "tensorflow",
) -> Ledger:
    """The training-step ledger; ``framework`` decides the explicit-padding copies (see above)."""
    width = dtype_bytes(dtype)
    slots = vocab_optimizer(optimizer).slots  # ValueError naming the allowed optimizers
    x_bytes, y_bytes = _batch_bytes(spec, batch_size, width)
    outs = [e * batch_size * width for layer, e in zip(spec.layers, layer_output_elements(spec)) if not _is_view(layer)]
    return Ledger(
        "training",
        (
            ("parameters", params * width),
            ("gradients", params * width),
            ("optimizer_state", slots * params * width),
            ("input_batch", x_bytes + y_bytes),
            ("activations", sum(outs)),
            ("activation_gradients", _largest_consecutive_pair(outs) if outs else 0),
            ("padding_copies", padding_copy_bytes(spec, batch_size, width) if framework in ("torch", "mxnet") else 0),
            ("workspace", 0),
            ("framework_overhead", 0),
        ),
    )


def mxnet_onednn_layout_bytes(
    spec: ModelSpec, batch_size: int, phase: str, block: int, dtype: str = DEFAULT_DTYPE
) -> int:
    """Bytes an MXNet (oneDNN) step holds in oneDNN's blocked layouts beyond its static memory plan: the sum over
    the spec's convolutions of :func:`analytics.timeline_rules.mxnet_onednn_layout_elems` (channels padded to
    ``block``, oneDNN's channel block on the run's CPU: :func:`analytics.timeline_rules.onednn_channel_block`)."""
    from xfbench.analytics.timeline_rules import mxnet_onednn_layout_elems

    width = dtype_bytes(dtype)
    total = 0
    for layer, ins, out in zip(spec.layers, layer_input_shapes(spec), infer_shapes(spec)):
        if not isinstance(layer, Conv2D):
            continue
        cin, h, w = ins[0]
        kernel = layer.kernel
        assert isinstance(kernel, tuple)
        total += mxnet_onednn_layout_elems(
            batch_size, (cin, h * w), out[0], (kernel[0], kernel[1]), phase == "training", block
        )
    return total * width


def mxnet_onednn_rnn_bytes(spec: ModelSpec, batch_size: int, phase: str, dtype: str = DEFAULT_DTYPE) -> int:
    """Bytes an MXNet (oneDNN) training step's LSTM layers hold beyond the simulated step's reserve space: oneDNN's
    RNN workspace (:func:`analytics.timeline_rules.lstm_workspace_bytes`, training layout: with the state
    gradients) minus the gates-and-states reserve the simulated ``RNN`` rule already allocates (``B*T*4H +
    B*(T+1)*2H`` elements). 0 in inference (``forward_inference`` keeps no workspace).

    Basis: the catalog LSTM (b16) and textnet (two LSTMs, b8 and b32) training rows, MXNet 1.9.1 on the AVX-512 CPU
    and under the AVX2 cap: the measured step beyond the static plan grows by 0.50 MB per sample between batches 8
    and 32, the workspace of the two layers by 0.54 MB per sample (``lstm_workspace_bytes`` was checked against
    torch's oneDNN workspace tensor, same oneDNN formula). A fixed part per LSTM layer (2-3 MB: oneDNN's RNN
    primitive, whose allocations memray names ``RnnPrimitive``) is not in this rule (not itemized per layer)."""
    from xfbench.analytics.layers.recurrent import LSTM
    from xfbench.analytics.timeline_rules import lstm_workspace_bytes

    if phase != "training":
        return 0
    width = dtype_bytes(dtype)
    total = 0
    for layer, ins in zip(spec.layers, layer_input_shapes(spec)):
        if not isinstance(layer, LSTM):
            continue
        steps, features = ins[0]
        h, b = layer.units, batch_size
        reserve = (b * steps * 4 * h + b * (steps + 1) * 2 * h) * width
        total += max(lstm_workspace_bytes(b, steps, features, h, width) - reserve, 0)
    return total


def textbook_inference_bytes(spec: ModelSpec, params: int, batch_size: int = 1, dtype: str = DEFAULT_DTYPE) -> int:
    """HOML ch14 ex2 (b): the two largest consecutive layer outputs + parameters."""
    width = dtype_bytes(dtype)
    outs = [e * batch_size * width for layer, e in zip(spec.layers, layer_output_elements(spec)) if not _is_view(layer)]
    return (_largest_consecutive_pair(outs) if outs else 0) + params * width


def textbook_training_bytes(spec: ModelSpec, params: int, batch_size: int, dtype: str = DEFAULT_DTYPE) -> int:
    """HOML ch14 ex2 (c): sum of layer outputs x batch + the input batch + parameters."""
    width = dtype_bytes(dtype)
    outs = [e for layer, e in zip(spec.layers, layer_output_elements(spec)) if not _is_view(layer)]
    return sum(outs) * batch_size * width + batch_size * math.prod(spec.input_shape) * width + params * width


class InfeasibleError(ValueError):
    """A configuration whose predicted memory exceeds what the machine has: refused before any allocation."""


def check_feasible(
    ledger: Ledger,
    capacity_bytes: int,
    what: str,
    where: str = "this machine's RAM",
    allowed: str = "a smaller model or batch",
) -> None:
    """Raises :class:`InfeasibleError` (one line, with the bytes) when ``ledger.peak_bytes > capacity_bytes``.

    The ledger is a lower estimate of a real step (it leaves out allocator slack and most workspace), so a
    configuration it refuses cannot run; one it admits may still run out of memory (an ``oom`` row).
    """
    need = ledger.peak_bytes
    if need > capacity_bytes:
        raise InfeasibleError(
            f"{what}: the {ledger.phase} memory ledger needs {need:,} bytes ({need / 1e9:,.3g} GB), more than "
            f"{where} ({capacity_bytes:,} bytes, {capacity_bytes / 1e9:,.3g} GB); allowed: {allowed}"
        )


__all__ = [
    "DTYPE_BYTES",
    "OPTIMIZER_SLOTS",
    "InfeasibleError",
    "Ledger",
    "check_feasible",
    "dtype_bytes",
    "inference_ledger",
    "mxnet_onednn_layout_bytes",
    "mxnet_onednn_rnn_bytes",
    "textbook_inference_bytes",
    "textbook_training_bytes",
    "training_ledger",
]
