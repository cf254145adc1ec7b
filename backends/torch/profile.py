"""PyTorch: per-layer measured time from ``torch.profiler``, and the step-time calibration probes.

Importing this imports torch. Same interface in ``backends.tensorflow.profile`` and ``backends.mxnet.profile``
(the contract :class:`backends.base.Profiler`):

* :func:`threads` - intra-op threads the framework uses;
* :func:`dispatch_callable(n_ops, device)` - a callable running ``n_ops`` tiny element-wise ops in the step's
  execution mode (here: eager), synchronized; the slope over ``n_ops`` is the per-op dispatch overhead;
* :func:`elementwise_callable(elements, device)` - one transcendental op (``sigmoid``) over ``elements``;
* :func:`softmax_callable(elements, device)`, :func:`layernorm_callable(elements, device)`,
  :func:`gelu_callable(elements, device, approximate)` - the transformer's compute-bound element-wise kernels
  (softmax over rows of :data:`SOFTMAX_ROW`, layer norm over rows of :data:`LAYERNORM_ROW`, GELU erf or tanh form)
  over ``elements`` values, as the model runs them;
* :func:`pool_callable(device)` - a 3x3 stride-2 max pooling, and its window elements;
* :func:`transpose_callable(elements, device)` - an NCHW -> NHWC transpose of about ``elements`` values;
* :func:`alloc_callable(nbytes, device)` - a fresh ``nbytes`` tensor filled (allocation + first touch);
* :func:`conv_callable(kind, channels, side, filters, device)` - a 3x3 probe convolution, ``forward``,
  ``backward`` (input and weight gradients) or ``backward_first`` (weight gradient only);
* :func:`profile_layers(workload, steps)` - measured seconds per (layer, phase) of one step, from the profiler.

Per-layer attribution: each spec layer's forward runs inside a ``record_function("xf::layer<i>")`` range
(module hooks); the autograd engine's backward events (``autograd::engine::evaluate_function: ...``) carry
the ``sequence_nr`` of the forward op that created them, which maps them to the layer whose range held that
op; ``Optimizer.step#...`` is the update; forward ops outside every layer range are the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from xfbench.backends.common import calibration_conv_dims, probe_conv_padding
from xfbench.backends.torch.device import resolve_device, synchronize

NAME = "torch"
LAYER_PREFIX = "xf::layer"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def threads() -> int:
    return int(torch.get_num_threads())


def dispatch_callable(n_ops: int, device: str = "cpu") -> Callable[[], None]:
    """``n_ops`` chained adds on an 8-element tensor (eager, autograd off), then a device sync."""
    dev = resolve_device(device)
    x = torch.ones(8, device=dev)

    def run() -> None:
        with torch.no_grad():
            y = x
            for _ in range(n_ops):
                y = y + 1.0
        synchronize(dev)

    return run


def elementwise_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``torch.sigmoid`` over ``elements`` float32 values (into a preallocated output), then a device sync."""
    dev = resolve_device(device)
    x = torch.randn(elements, device=dev)
    out = torch.empty_like(x)

    def run() -> None:
        torch.sigmoid(x, out=out)
        synchronize(dev)

    return run


SOFTMAX_ROW = 64  # softmax probe: rows of this many values (an attention row over 64 keys)
LAYERNORM_ROW = 128  # layer-norm probe: rows of this many features


def _rows(elements: int, width: int) -> int:
    return max(1, elements // width)


def softmax_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``torch.softmax`` over the last axis of a ``(elements / 64, 64)`` float32 tensor (inference mode), then a
    device sync."""
    dev = resolve_device(device)
    x = torch.randn(_rows(elements, SOFTMAX_ROW), SOFTMAX_ROW, device=dev)

    def run() -> None:
        with torch.inference_mode():
            torch.softmax(x, dim=-1)
        synchronize(dev)

    return run


def layernorm_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``F.layer_norm`` (with scale and shift, as ``nn.LayerNorm``) over rows of 128 of ``elements`` float32 values
    (inference mode), then a device sync."""
    import torch.nn.functional as F

    dev = resolve_device(device)
    x = torch.randn(_rows(elements, LAYERNORM_ROW), LAYERNORM_ROW, device=dev)
    weight = torch.ones(LAYERNORM_ROW, device=dev)
    bias = torch.zeros(LAYERNORM_ROW, device=dev)

    def run() -> None:
        with torch.inference_mode():
            F.layer_norm(x, (LAYERNORM_ROW,), weight, bias, 1e-5)
        synchronize(dev)

    return run


def gelu_callable(elements: int, device: str = "cpu", approximate: bool = False) -> Callable[[], None]:
    """``F.gelu`` over ``elements`` float32 values, the erf form or (``approximate``) the tanh form, as the model's
    ``gelu`` / ``gelu_tanh`` activations (inference mode), then a device sync."""
    import torch.nn.functional as F

    dev = resolve_device(device)
    x = torch.randn(elements, device=dev)
    mode = "tanh" if approximate else "none"

    def run() -> None:
        with torch.inference_mode():
            F.gelu(x, approximate=mode)
        synchronize(dev)

    return run


POOL_PROBE_SHAPE = (2, 64, 56, 56)  # 3x3 stride-2 max pooling -> 27 x 27 outputs per plane


def pool_callable(device: str = "cpu") -> tuple[Callable[[], None], int]:
    """A 3x3 stride-2 max pooling of :data:`POOL_PROBE_SHAPE` and its number of window elements."""
    import torch.nn.functional as F

    dev = resolve_device(device)
    x = torch.randn(POOL_PROBE_SHAPE, device=dev)
    n, c, h, w = POOL_PROBE_SHAPE
    windows = n * c * ((h - 3) // 2 + 1) * ((w - 3) // 2 + 1) * 9

    def run() -> None:
        F.max_pool2d(x, 3, 2)
        synchronize(dev)

    return run, windows


def transpose_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """An NCHW -> NHWC transpose (materialized) of a ``(1, 16, H, W)`` tensor of about ``elements`` values."""
    dev = resolve_device(device)
    side = max(1, int((elements / 16) ** 0.5))
    x = torch.randn(1, 16, side, side, device=dev)

    def run() -> None:
        x.permute(0, 2, 3, 1).contiguous()
        synchronize(dev)

    return run


def conv_callable(kind: str, channels: int, side: int, filters: int, device: str = "cpu") -> Callable[[], None]:
    """A 3x3 convolution (stride 1, padding 1, bias) of a ``(1, channels, side, side)`` input into ``filters``
    maps: ``forward`` (no autograd), ``backward`` (forward + input and weight gradients) or ``backward_first``
    (forward + weight and bias gradients only, as for a model's first layer): the calibration table's case of
    :func:`layer_probe_callable`."""
    return layer_probe_callable("conv", calibration_conv_dims(channels, side, filters), kind, device)


def layer_probe_callable(op: str, dims: Mapping[str, Any], kind: str, device: str = "cpu") -> Callable[[], None]:
    """The model's own op at one layer's exact shape (``analytics.steptime.probe_key``'s ``dims``): ``conv`` as
    backends/torch/model.py runs it (``F.conv2d`` with symmetric padding, an ``F.pad`` copy first where the padding
    is asymmetric, which is not timed: the model prices that pad apart), ``dense`` as ``F.linear``, ``lstm`` as
    ``nn.LSTM(batch_first=True)`` (the last step where the layer returns one); ``kind``
    ``forward`` (inference mode), ``backward`` (forward + input and weight gradients) or ``backward_first``
    (forward + weight gradients only)."""
    import torch.nn.functional as F

    if kind not in ("forward", "backward", "backward_first"):
        raise ValueError(f"unknown probe kind {kind!r}; allowed: forward, backward, backward_first")
    dev = resolve_device(device)
    grad = kind != "forward"
    if op == "conv":
        h, w, padding = probe_conv_padding(dims)
        x = torch.randn(dims["batch"], dims["channels"], h, w, device=dev, requires_grad=kind == "backward")
        weight = torch.randn(dims["filters"], dims["channels"], *dims["kernel"], device=dev, requires_grad=grad)
        bias = torch.randn(dims["filters"], device=dev, requires_grad=grad)

        def apply() -> Any:
            return F.conv2d(x, weight, bias, stride=tuple(dims["stride"]), padding=padding)

    elif op == "dense":
        x = torch.randn(dims["rows"], dims["features"], device=dev, requires_grad=kind == "backward")
        weight = torch.randn(dims["units"], dims["features"], device=dev, requires_grad=grad)
        bias = torch.randn(dims["units"], device=dev, requires_grad=grad)

        def apply() -> Any:
            return F.linear(x, weight, bias)

    elif op == "lstm":
        lstm = torch.nn.LSTM(dims["features"], dims["units"], batch_first=True).to(dev)
        x = torch.randn(dims["batch"], dims["steps"], dims["features"], device=dev, requires_grad=kind == "backward")
        params = list(lstm.parameters())

        def apply() -> Any:
            out, _ = lstm(x)  # zero initial state, as backends/torch/model.py's LSTMLayer
            return out if dims["sequences"] else out[:, -1]

    else:
        raise ValueError(f"unknown probe op {op!r}; allowed: conv, dense, lstm")
    if op == "lstm":
        wrt = ([x] if kind == "backward" else []) + params
    else:
        wrt = [x, weight, bias] if kind == "backward" else [weight, bias]

    def run() -> Any:
        if kind == "forward":
            with torch.inference_mode():
                y = apply()
        else:
            y = apply()
            torch.autograd.grad(y, wrt, torch.ones_like(y))
        synchronize(dev)
        return y

    return run


def batchnorm_callable(kind: str, channels: int, side: int, device: str = "cpu") -> Callable[[], None]:
    """A training-mode ``nn.BatchNorm2d`` of a ``(1, channels, side, side)`` input: ``forward`` (the batch
    statistics, the running-statistics update, the normalized output) or ``training`` (forward + the input, scale
    and shift gradients), as a model's training step runs it."""
    if kind not in ("forward", "training"):
        raise ValueError(f"unknown batchnorm probe {kind!r}; allowed: forward, training")
    dev = resolve_device(device)
    bn = torch.nn.BatchNorm2d(channels).to(dev).train()
    x = torch.randn(1, channels, side, side, device=dev, requires_grad=kind == "training")
    wrt = [x, bn.weight, bn.bias]

    def run() -> None:
        y = bn(x)
        if kind == "training":
            torch.autograd.grad(y, wrt, torch.ones_like(y))
        synchronize(dev)

    return run


def stream_callable(nbytes: int, device: str = "cpu") -> tuple[Callable[[], None], int]:
    """An in-place add (``x += 1``) over an ``nbytes`` tensor, and the bytes it moves (each element read and
    written once: ``2 * nbytes``)."""
    dev = resolve_device(device)
    x = torch.zeros(max(1, nbytes // 4), device=dev)

    def run() -> None:
        x.add_(1.0)
        synchronize(dev)

    return run, 2 * 4 * x.numel()


def alloc_callable(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    """A new ``nbytes`` tensor filled with ones (allocation + first touch), then a device sync."""
    dev = resolve_device(device)
    count = max(1, nbytes // 4)

    def run() -> None:
        torch.ones(count, device=dev)
        synchronize(dev)

    return run


def _attach_ranges(model: Any) -> list[Any]:
    """Forward hooks that open/close ``xf::layer<i>`` around each spec layer; returns the hook handles."""
    open_ranges: dict[int, Any] = {}
    handles = []
    for i, layer in enumerate(model.layers):

        def pre(_mod: Any, _inp: Any, i: int = i) -> None:
            rf = torch.profiler.record_function(f"{LAYER_PREFIX}{i}")
            rf.__enter__()
            open_ranges[i] = rf

        def post(_mod: Any, _inp: Any, _out: Any, i: int = i) -> None:
            rf = open_ranges.pop(i, None)
            if rf is not None:
                rf.__exit__(None, None, None)

        handles.append(layer.register_forward_pre_hook(pre))
        handles.append(layer.register_forward_hook(post))
    return handles


def attribute_events(events: list[Any], n_layers: int, steps: int) -> dict[tuple[int, str], float]:
    """``{(layer, phase): seconds per step}`` from profiler events (``name``, ``start_us``, ``end_us``,
    ``sequence_nr``, ``top_level``), phases ``forward``, ``backward``, ``update``; layer -1 = the loss and
    the rest of the step outside the layers. Pure (testable without torch)."""
    ranges: list[tuple[float, float, int]] = []
    for e in events:
        if e["name"].startswith(LAYER_PREFIX):
            ranges.append((e["start_us"], e["end_us"], int(e["name"][len(LAYER_PREFIX) :])))
    ranges.sort()

    def layer_at(t: float) -> int | None:
        for start, end, i in ranges:
            if start <= t <= end:
                return i
        return None

    seq_layer: dict[int, int] = {}
    out: dict[tuple[int, str], float] = {}

    def add(key: tuple[int, str], us: float) -> None:
        out[key] = out.get(key, 0.0) + us * 1e-6 / steps

    for e in events:
        seq = e.get("sequence_nr", -1)
        if seq is not None and seq >= 0 and not e["name"].startswith(BACKWARD_PREFIX):
            i = layer_at(e["start_us"])
            if i is not None:
                seq_layer.setdefault(seq, i)
    for start, end, i in ranges:
        add((i, "forward"), end - start)
    for e in events:
        name = e["name"]
        dur = e["end_us"] - e["start_us"]
        if name.startswith(BACKWARD_PREFIX):
            if "AccumulateGrad" in name:
                add((-1, "backward"), dur)
                continue
            layer = seq_layer.get(e.get("sequence_nr", -1), -1)
            add((layer, "backward"), dur)
        elif name.startswith("Optimizer.step#"):
            add((-1, "update"), dur)
        elif e.get("top_level") and not name.startswith(LAYER_PREFIX) and not name.startswith("Optimizer."):
            if layer_at(e["start_us"]) is None:
                add((-1, "forward"), dur)
    return out


def profile_layers(work: Any, steps: int = 3) -> dict[tuple[int, str], float]:
    """Measured seconds per (spec layer, phase) of one step of a prepared :class:`benchmarks.harness.workload.Workload`
    (averaged over ``steps`` profiled steps after one warm-up step), from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    handles = _attach_ranges(work.model)
    try:
        work.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                work.step()
    finally:
        for h in handles:
            h.remove()
    events = []
    for e in prof.events():
        events.append(
            {
                "name": e.name,
                "start_us": float(e.time_range.start),
                "end_us": float(e.time_range.end),
                "sequence_nr": int(getattr(e, "sequence_nr", -1)),
                "top_level": e.cpu_parent is None,
            }
        )
    return attribute_events(events, len(work.model.layers), steps)


__all__ = [
    "NAME",
    "alloc_callable",
    "attribute_events",
    "batchnorm_callable",
    "conv_callable",
    "dispatch_callable",
    "elementwise_callable",
    "gelu_callable",
    "layer_probe_callable",
    "layernorm_callable",
    "pool_callable",
    "profile_layers",
    "softmax_callable",
    "stream_callable",
    "threads",
    "transpose_callable",
]
