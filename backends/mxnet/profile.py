"""MXNet: per-layer measured time from MXNet's profiler, and the step-time calibration probes.

Importing this imports MXNet. Same interface as ``backends.torch.profile`` (see there).

Per-layer attribution: a hybridized model runs its ops in bulk segments the profiler names only
``ImperativeBulk``, so for profiling the model runs imperatively (``hybridize(active=False)``; restored after).
Gluon forward hooks on each spec layer's block wait for the engine and drop a profiler marker before and after
the layer, so each forward op event lies in its layer's window. The backward runs in one ``loss.backward()``:
its ``_backward_<Op>`` events come in reverse layer order, and are matched against each layer's forward op
types taken in reverse. ``*_update`` ops are the optimizer; everything else is layer -1.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import mxnet as mx
from mxnet import autograd
from xfbench.backends.common import probe_conv_padding
from xfbench.backends.mxnet.device import resolve_device

NAME = "mxnet"
_MARK = "xf-layer"
_CONFIGURED = False


def threads() -> int:
    """OpenMP threads MXNet's CPU operators use (``OMP_NUM_THREADS``, else the cores)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else int(os.cpu_count() or 1)


def _wait() -> None:
    mx.nd.waitall()


def dispatch_callable(n_ops: int, device: str = "cpu") -> Callable[[], None]:
    """A hybridized block (static memory plan, as the models) of ``n_ops`` chained tiny ops on 8 elements."""
    from mxnet.gluon import nn

    class Chain(nn.HybridBlock):
        def hybrid_forward(self, F: Any, x: Any) -> Any:
            y = x
            for j in range(n_ops):
                y = y + x if j % 2 == 0 else F.relu(y)
            return y

    ctx = resolve_device(device)
    block = Chain()
    block.hybridize(static_alloc=True)
    x = mx.nd.ones(8, ctx=ctx)
    block(x)
    _wait()

    def run() -> None:
        block(x).wait_to_read()

    return run


def elementwise_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """A sigmoid over ``elements`` float32 values as the models run it: the ``Activation`` op (Gluon's
    ``nn.Activation``, oneDNN's eltwise kernel) in a hybridized block. The standalone ``sigmoid`` operator is another
    kernel, 8x slower on 2 threads (4.2 against 0.5 ms on 2^20 values, measured), and priced LeNet's sigmoids 8x too
    slowly."""
    ctx = resolve_device(device)
    x = mx.nd.random.normal(shape=(elements,), ctx=ctx)
    return _block_callable(lambda F, v: F.Activation(v, act_type="sigmoid"), x)


SOFTMAX_ROW = 64  # softmax probe: rows of this many values (an attention row over 64 keys)
LAYERNORM_ROW = 128  # layer-norm probe: rows of this many features
# GPT-2's tanh approximation, composed as the model's _GeluTanh block: 0.5 x (1 + tanh(sqrt(2/pi) (x + a x^3)))
_GELU_TANH_C = float((2.0 / 3.141592653589793) ** 0.5)
_GELU_TANH_A = 0.044715


def _block_callable(forward: Callable[..., Any], *inputs: Any) -> Callable[[], None]:
    """``forward(F, *inputs)`` as a hybridized block (static memory plan, as the models), called on ``inputs``."""
    from mxnet.gluon import nn

    class Probe(nn.HybridBlock):
        def hybrid_forward(self, F: Any, *vs: Any) -> Any:
            return forward(F, *vs)

    block = Probe()
    block.hybridize(static_alloc=True)
    block(*inputs)
    _wait()

    def run() -> None:
        block(*inputs).wait_to_read()

    return run


def softmax_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``softmax`` over the last axis of a ``(elements / 64, 64)`` float32 array (hybridized)."""
    ctx = resolve_device(device)
    x = mx.nd.random.normal(shape=(max(1, elements // SOFTMAX_ROW), SOFTMAX_ROW), ctx=ctx)
    return _block_callable(lambda F, v: F.softmax(v, axis=-1), x)


def layernorm_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """The ``LayerNorm`` operator (Gluon's ``nn.LayerNorm(axis=-1)``) over rows of 128 of ``elements`` float32
    values (hybridized)."""
    ctx = resolve_device(device)
    x = mx.nd.random.normal(shape=(max(1, elements // LAYERNORM_ROW), LAYERNORM_ROW), ctx=ctx)
    gamma = mx.nd.ones((LAYERNORM_ROW,), ctx=ctx)
    beta = mx.nd.zeros((LAYERNORM_ROW,), ctx=ctx)
    return _block_callable(lambda F, v, g, b: F.LayerNorm(v, g, b, axis=-1, eps=1e-5), x, gamma, beta)


def gelu_callable(elements: int, device: str = "cpu", approximate: bool = False) -> Callable[[], None]:
    """GELU over ``elements`` float32 values as the model computes it (hybridized): the erf form is
    ``LeakyReLU(act_type="gelu")`` (one op); the tanh form (``approximate``) is composed of nine element-wise ops,
    as the model's ``_GeluTanh``."""
    ctx = resolve_device(device)
    x = mx.nd.random.normal(shape=(elements,), ctx=ctx)

    def erf_form(F: Any, v: Any) -> Any:
        return F.LeakyReLU(v, act_type="gelu")

    def tanh_form(F: Any, v: Any) -> Any:
        inner = (v * v * _GELU_TANH_A + 1.0) * v * _GELU_TANH_C
        return (F.tanh(inner) + 1.0) * v * 0.5

    return _block_callable(tanh_form if approximate else erf_form, x)


POOL_PROBE_SHAPE = (2, 64, 56, 56)


def pool_callable(device: str = "cpu") -> tuple[Callable[[], None], int]:
    """A 3x3 stride-2 max pooling of :data:`POOL_PROBE_SHAPE` and its number of window elements."""
    ctx = resolve_device(device)
    x = mx.nd.random.normal(shape=POOL_PROBE_SHAPE, ctx=ctx)
    _wait()
    n, c, h, w = POOL_PROBE_SHAPE

    def run() -> None:
        mx.nd.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type="max").wait_to_read()

    return run, n * c * ((h - 3) // 2 + 1) * ((w - 3) // 2 + 1) * 9


def transpose_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """An NCHW -> NHWC transpose of a ``(1, 16, H, W)`` tensor of about ``elements`` values."""
    ctx = resolve_device(device)
    side = max(1, int((elements / 16) ** 0.5))
    x = mx.nd.random.normal(shape=(1, 16, side, side), ctx=ctx)
    _wait()

    def run() -> None:
        mx.nd.transpose(x, axes=(0, 2, 3, 1)).wait_to_read()

    return run


def batchnorm_callable(kind: str, channels: int, side: int, device: str = "cpu") -> Callable[[], None]:
    """Gluon's ``nn.BatchNorm`` recorded in training mode (as the model's step runs it) on a ``(1, channels, side,
    side)`` input: ``forward`` (the batch statistics, the normalized output) or ``training`` (forward + backward:
    the input, scale and shift gradients; MXNet updates the running statistics in the backward on a CPU)."""
    if kind not in ("forward", "training"):
        raise ValueError(f"unknown batchnorm probe {kind!r}; allowed: forward, training")
    ctx = resolve_device(device)
    bn = mx.gluon.nn.BatchNorm(axis=1, momentum=0.9, epsilon=1e-5, in_channels=channels)
    bn.initialize(ctx=ctx)
    x = mx.nd.random.normal(shape=(1, channels, side, side), ctx=ctx)
    x.attach_grad()
    _wait()

    def run() -> None:
        with autograd.record(train_mode=True):
            y = bn(x)
        if kind == "training":
            y.backward()
            x.grad.wait_to_read()
        else:
            y.wait_to_read()

    return run


def stream_callable(nbytes: int, device: str = "cpu") -> tuple[Callable[[], None], int]:
    """An in-place add (``x += 1``) over ``nbytes`` and the bytes it moves (``2 * nbytes``)."""
    ctx = resolve_device(device)
    count = max(1, nbytes // 4)
    x = mx.nd.zeros((count,), ctx=ctx)
    _wait()

    def run() -> None:
        nonlocal x
        x += 1.0
        x.wait_to_read()

    return run, 2 * 4 * count


def alloc_callable(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    """A new ``nbytes`` array filled with ones (allocation + first touch)."""
    ctx = resolve_device(device)
    count = max(1, nbytes // 4)

    def run() -> None:
        mx.nd.ones((count,), ctx=ctx).wait_to_read()

    return run


def conv_callable(kind: str, channels: int, side: int, filters: int, device: str = "cpu") -> Callable[[], None]:
    """A 3x3 convolution (stride 1, padding 1, bias) of a ``(1, channels, side, side)`` input: ``forward``,
    ``backward`` (forward + input, weight and bias gradients) or ``backward_first`` (forward + weight and bias
    gradients)."""
    if kind not in ("forward", "backward", "backward_first"):
        raise ValueError(f"unknown conv probe {kind!r}; allowed: forward, backward, backward_first")
    ctx = resolve_device(device)
    x = mx.nd.random.normal(shape=(1, channels, side, side), ctx=ctx)
    w = mx.nd.random.normal(shape=(filters, channels, 3, 3), ctx=ctx)
    b = mx.nd.random.normal(shape=(filters,), ctx=ctx)
    if kind != "forward":
        w.attach_grad()
        b.attach_grad()
        if kind == "backward":
            x.attach_grad()
    _wait()

    def conv() -> Any:
        return mx.nd.Convolution(x, w, b, kernel=(3, 3), pad=(1, 1), num_filter=filters)

    def run() -> None:
        if kind == "forward":
            conv().wait_to_read()
            return
        with autograd.record():
            y = conv()
        y.backward()
        _wait()

    return run


def layer_probe_callable(op: str, dims: Mapping[str, Any], kind: str, device: str = "cpu") -> Callable[[], None]:
    """The model's own op at one layer's exact shape (``analytics.steptime.probe_key``'s ``dims``) in a hybridized
    block with a static memory plan, as the models run: ``conv`` a ``Convolution`` with symmetric padding (an input
    padded beforehand where the padding is asymmetric: the model's pad op, priced apart), ``dense`` a
    ``FullyConnected``, ``lstm`` Gluon's fused ``rnn.LSTM``; ``kind`` ``forward``, ``backward`` (forward + input
    and weight gradients) or ``backward_first`` (forward + weight gradients only)."""
    from mxnet.gluon import nn

    if kind not in ("forward", "backward", "backward_first"):
        raise ValueError(f"unknown probe kind {kind!r}; allowed: forward, backward, backward_first")
    ctx = resolve_device(device)
    if op == "conv":
        h, w, pad = probe_conv_padding(dims)
        x = mx.nd.random.normal(shape=(dims["batch"], dims["channels"], h, w), ctx=ctx)
        weight = mx.nd.random.normal(shape=(dims["filters"], dims["channels"], *dims["kernel"]), ctx=ctx)
        bias = mx.nd.random.normal(shape=(dims["filters"],), ctx=ctx)

        def apply(F: Any, v: Any, wt: Any, bs: Any) -> Any:
            return F.Convolution(
                v,
                wt,
                bs,
                kernel=tuple(dims["kernel"]),
                stride=tuple(dims["stride"]),
                pad=pad,
                num_filter=dims["filters"],
            )

    elif op == "dense":
        x = mx.nd.random.normal(shape=(dims["rows"], dims["features"]), ctx=ctx)
        weight = mx.nd.random.normal(shape=(dims["units"], dims["features"]), ctx=ctx)
        bias = mx.nd.random.normal(shape=(dims["units"],), ctx=ctx)

        def apply(F: Any, v: Any, wt: Any, bs: Any) -> Any:
            return F.FullyConnected(v, wt, bs, num_hidden=dims["units"], flatten=False)

    elif op == "lstm":
        return _lstm_probe(dims, kind, ctx)
    else:
        raise ValueError(f"unknown probe op {op!r}; allowed: conv, dense, lstm")
    if kind != "forward":
        weight.attach_grad()
        bias.attach_grad()
        if kind == "backward":
            x.attach_grad()

    class Probe(nn.HybridBlock):
        def hybrid_forward(self, F: Any, v: Any, wt: Any, bs: Any) -> Any:
            return apply(F, v, wt, bs)

    block = Probe()
    block.hybridize(static_alloc=True, static_shape=True)

    def run() -> Any:
        if kind == "forward":
            y = block(x, weight, bias)
            y.wait_to_read()
            return y
        with autograd.record():
            y = block(x, weight, bias)
        y.backward()
        _wait()
        return y

    run()
    return run


def _lstm_probe(dims: Mapping[str, Any], kind: str, ctx: Any) -> Callable[[], None]:
    """Gluon's fused ``rnn.LSTM(layout="NTC")`` (the last step sliced where the layer returns one), hybridized with a
    static memory plan as backends/mxnet/model.py builds it."""
    from mxnet.gluon import nn, rnn

    class Probe(nn.HybridBlock):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.lstm = rnn.LSTM(dims["units"], layout="NTC", input_size=dims["features"])

        def hybrid_forward(self, F: Any, v: Any) -> Any:
            out = self.lstm(v)
            return out if dims["sequences"] else F.squeeze(F.slice_axis(out, axis=1, begin=-1, end=None), axis=1)

    block = Probe()
    block.initialize(ctx=ctx)
    block.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(shape=(dims["batch"], dims["steps"], dims["features"]), ctx=ctx)
    if kind == "backward":
        x.attach_grad()

    def run() -> Any:
        if kind == "forward":
            y = block(x)
            y.wait_to_read()
            return y
        with autograd.record():
            y = block(x)
        y.backward()
        _wait()
        return y

    run()
    return run


# --- per-layer profile ----------------------------------------------------------------------------------------


def attribute_trace(events: list[dict[str, Any]], n_layers: int, steps: int) -> dict[tuple[int, str], float]:
    """``{(layer, phase): seconds per step}`` from MXNet trace events (module docstring). Pure.

    ``events``: the trace's ``traceEvents``: operator spans (``ph`` ``B``/``E`` pairs or ``X`` with ``dur``,
    ``cat`` ``operator``) and the markers ``xf-layer <i> begin|end`` (``ph`` ``i``/``I``/``R``)."""
    windows: list[tuple[float, float, int]] = []
    begins: dict[int, list[float]] = {}
    spans: list[tuple[float, float, str]] = []
    open_spans: dict[tuple[Any, str], list[float]] = {}
    for e in sorted(events, key=lambda ev: float(ev.get("ts", 0))):
        name = str(e.get("name", ""))
        ts = float(e.get("ts", 0))
        if name.startswith(_MARK):
            _, index, edge = name.split()
            i = int(index)
            if edge == "begin":
                begins.setdefault(i, []).append(ts)
            elif begins.get(i):
                windows.append((begins[i].pop(), ts, i))
            continue
        if e.get("cat") != "operator" or name in ("DeleteVariable", "ImperativeBulk", "SetValueOp"):
            continue
        ph = e.get("ph")
        if ph == "X":
            spans.append((ts, ts + float(e.get("dur", 0)), name))
        elif ph == "B":
            open_spans.setdefault((e.get("tid"), name), []).append(ts)
        elif ph == "E":
            stack = open_spans.get((e.get("tid"), name))
            if stack:
                spans.append((stack.pop(), ts, name))
    spans.sort()
    out: dict[tuple[int, str], float] = {}

    def add(key: tuple[int, str], us: float) -> None:
        out[key] = out.get(key, 0.0) + us * 1e-6 / steps

    forward_types: dict[int, list[str]] = {}
    backward: list[tuple[float, float, str]] = []
    for start, end, name in spans:
        if name.endswith("_update"):
            add((-1, "update"), end - start)
            continue
        if name.startswith("_backward_"):
            backward.append((start, end, name))
            continue
        layer = next((i for a, b, i in windows if a <= start <= b), None)
        if layer is None:
            add((-1, "forward"), end - start)
            continue
        add((layer, "forward"), end - start)
        types = forward_types.setdefault(layer, [])
        if len(types) < 64:
            types.append(name)
    # The backward ops of one step come in reverse layer order: match each against the forward op types.
    per_step_types = {i: t[: max(1, len(t) // max(steps, 1))] for i, t in forward_types.items()}
    order = [(i, name) for i in sorted(per_step_types, reverse=True) for name in reversed(per_step_types[i])]
    cursor = 0
    for start, end, name in backward:
        base = name[len("_backward_") :]
        found = None
        for j in range(cursor, len(order)):
            if order[j][1] == base:
                found = j
                break
        if found is None:
            # the loss's own ops, or a new step: restart the match from the last layer
            restart = next((j for j, (_, n) in enumerate(order) if n == base), None)
            if restart is None:
                add((-1, "backward"), end - start)
                continue
            found = restart
        cursor = found + 1
        add((order[found][0], "backward"), end - start)
    return out


def _trace_events(text: str) -> list[dict[str, Any]]:
    """The ``traceEvents`` of MXNet's chrome-trace dump. MXNet 1.9 writes its markers without the comma that
    should follow them, so where the file is not valid JSON each event object (4-space indented in the
    array) is decoded on its own."""
    try:
        return list(json.loads(text).get("traceEvents", []))
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    events = []
    for match in re.finditer(r"\n    \{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start() + 5)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    if not events:
        raise RuntimeError("MXNet's profiler wrote a trace that cannot be read")
    return events


def _now_us(domain: Any) -> float:
    """A marker's timestamp on the profiler's clock: drops one and reads nothing back, so use the process
    clock the profiler uses (microseconds since the epoch, ``std::chrono::system_clock``)."""
    import time

    return time.time() * 1e6 - 1e3


def _finish_profiler(path: str) -> None:
    """At exit: ends the process's profiling and removes its file. Left running, MXNet writes the file's closing
    bytes again when the process ends, after ``profile_layers`` removed it (a 39-byte file per process was left
    in the temp folder; checked by hand: with this handler none is)."""
    mx.profiler.dump(finished=True)
    if os.path.exists(path):
        os.remove(path)


def profile_layers(work: Any, steps: int = 3) -> dict[tuple[int, str], float]:
    """Measured seconds per (spec layer, phase) of one step of a prepared workload, from MXNet's profiler
    (module docstring). The model runs imperatively while profiled and is hybridized again after."""
    global _CONFIGURED
    model = work.model
    domain = mx.profiler.Domain("xfbench")
    path = os.path.join(tempfile.gettempdir(), f"xfbench-mxprof-{os.getpid()}.json")
    handles = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.hybridize(active=False)
    for i, block in enumerate(model._children.values()):

        def pre(_block: Any, _inputs: Any, i: int = i) -> None:
            _wait()
            mx.profiler.Marker(domain, f"{_MARK} {i} begin").mark("process")

        def post(_block: Any, _inputs: Any, _outputs: Any, i: int = i) -> None:
            _wait()
            mx.profiler.Marker(domain, f"{_MARK} {i} end").mark("process")

        handles.append(block.register_forward_pre_hook(pre))
        handles.append(block.register_forward_hook(post))
    try:
        work.step()
        _wait()
        if not _CONFIGURED:  # MXNet accepts one profiler configuration per process
            mx.profiler.set_config(profile_all=True, filename=path, aggregate_stats=False)
            _CONFIGURED = True
            atexit.register(_finish_profiler, path)
        mx.profiler.set_state("run")
        session_start = _now_us(domain)
        try:
            for _ in range(steps):
                work.step()
            _wait()
        finally:
            mx.profiler.set_state("stop")
        mx.profiler.dump(finished=False)  # finished=True would end profiling for the process
        with open(path, encoding="utf-8") as fh:
            events = _trace_events(fh.read())
        events = [e for e in events if float(e.get("ts", 0)) >= session_start]
    finally:
        for h in handles:
            h.detach()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.hybridize(static_alloc=True)
        if os.path.exists(path):
            os.remove(path)
    return attribute_trace(events, len(model._children), steps)


__all__ = [
    "NAME",
    "alloc_callable",
    "attribute_trace",
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
