"""TensorFlow: per-layer measured time from TensorFlow's profiler trace, and the step-time calibration probes.

Importing this imports TensorFlow. Same interface as ``backends.torch.profile`` (see there).

Per-layer attribution: ``tf.profiler.experimental`` writes an XSpace trace (``*.xplane.pb``, parsed with
TensorFlow's own ``xplane_pb2``); each executed op is one event named ``<scope>/<op>:<OpType>``. The Keras
model names spec layer ``i`` ``l<i>_<name>`` (``backends.tensorflow.model``), so an op under ``l<i>_`` belongs to
layer ``i``: ``forward`` normally, ``backward`` under ``gradient_tape/``; the optimizer's ops (``sgd/``,
``adam/``...) are the ``update``; everything else (loss, the output transpose) is layer -1. Ops run on several
executor threads at once (inter-op parallelism), so the per-layer sums can exceed the wall-clock step.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from xfbench.backends.common import calibration_conv_dims
from xfbench.backends.tensorflow._tf import tf
from xfbench.backends.tensorflow.device import resolve_device

NAME = "tensorflow"
_LAYER = re.compile(r"(?:^|/)l(\d+)_")
_OPTIMIZER_SCOPES = ("sgd", "adam", "SGD", "Adam", "optimizer", "momentum")


def threads() -> int:
    """Intra-op threads: as configured (``tf.config.threading`` or ``TF_NUM_INTRAOP_THREADS``), else the cores."""
    n = tf.config.threading.get_intra_op_parallelism_threads()
    env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    if not n and env.isdigit():
        n = int(env)
    return int(n) if n else int(os.cpu_count() or 1)


def dispatch_callable(n_ops: int, device: str = "cpu") -> Callable[[], None]:
    """A ``tf.function`` of ``n_ops`` chained ops (add of an input, relu: not foldable) on 8 elements."""
    with tf.device(resolve_device(device)):
        x = tf.ones([8])

        @tf.function
        def chain(v: Any) -> Any:
            y = v
            for j in range(n_ops):
                y = y + v if j % 2 == 0 else tf.nn.relu(y)
            return y

        chain(x)

    def run() -> None:
        with tf.device(resolve_device(device)):
            chain(x).numpy()

    return run


def elementwise_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``tf.sigmoid`` over ``elements`` float32 values in a ``tf.function``."""
    with tf.device(resolve_device(device)):
        x = tf.random.normal([elements])

        @tf.function
        def sig(v: Any) -> Any:
            return tf.sigmoid(v)

        sig(x)

    def run() -> None:
        with tf.device(resolve_device(device)):
            sig(x)

    return run


SOFTMAX_ROW = 64  # softmax probe: rows of this many values (an attention row over 64 keys)
LAYERNORM_ROW = 128  # layer-norm probe: rows of this many features


def _graph_callable(fn: Callable[[Any], Any], x: Any, device: str) -> Callable[[], None]:
    """``fn`` traced once as a ``tf.function`` (as the model's step runs), called on ``x``."""
    with tf.device(resolve_device(device)):
        graph = tf.function(fn)
        graph(x)

    def run() -> None:
        with tf.device(resolve_device(device)):
            graph(x)

    return run


def softmax_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``tf.nn.softmax`` over the last axis of a ``(elements / 64, 64)`` float32 tensor in a ``tf.function``."""
    with tf.device(resolve_device(device)):
        x = tf.random.normal([max(1, elements // SOFTMAX_ROW), SOFTMAX_ROW])
    return _graph_callable(lambda v: tf.nn.softmax(v, axis=-1), x, device)


def layernorm_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """``keras.layers.LayerNormalization(axis=-1)`` (as the model builds it: ``tf.nn.moments``, the normalization,
    scale and shift) over rows of 128 of ``elements`` float32 values, in a ``tf.function``."""
    from xfbench.backends.tensorflow._tf import keras

    with tf.device(resolve_device(device)):
        x = tf.random.normal([max(1, elements // LAYERNORM_ROW), LAYERNORM_ROW])
        ln = keras.layers.LayerNormalization(axis=-1, epsilon=1e-5)
        ln.build(x.shape)
    return _graph_callable(lambda v: ln(v), x, device)


def gelu_callable(elements: int, device: str = "cpu", approximate: bool = False) -> Callable[[], None]:
    """``keras.activations.gelu`` over ``elements`` float32 values, the erf form or (``approximate``) the tanh form,
    as the model's ``gelu`` / ``gelu_tanh`` activations, in a ``tf.function``."""
    from xfbench.backends.tensorflow._tf import keras

    with tf.device(resolve_device(device)):
        x = tf.random.normal([elements])
    return _graph_callable(lambda v: keras.activations.gelu(v, approximate=approximate), x, device)


POOL_PROBE_SHAPE = (2, 56, 56, 64)  # NHWC; 3x3 stride-2 max pooling -> 27 x 27 outputs per plane


def pool_callable(device: str = "cpu") -> tuple[Callable[[], None], int]:
    """A 3x3 stride-2 max pooling (NHWC, ``tf.function``) and its number of window elements."""
    n, h, w, c = POOL_PROBE_SHAPE
    with tf.device(resolve_device(device)):
        x = tf.random.normal(POOL_PROBE_SHAPE)

        @tf.function
        def pool(v: Any) -> Any:
            return tf.nn.max_pool2d(v, 3, 2, "VALID")

        pool(x)

    def run() -> None:
        with tf.device(resolve_device(device)):
            pool(x)

    return run, n * c * ((h - 3) // 2 + 1) * ((w - 3) // 2 + 1) * 9


def transpose_callable(elements: int, device: str = "cpu") -> Callable[[], None]:
    """An NCHW -> NHWC transpose of a ``(1, 16, H, W)`` tensor of about ``elements`` values (``tf.function``)."""
    side = max(1, int((elements / 16) ** 0.5))
    with tf.device(resolve_device(device)):
        x = tf.random.normal([1, 16, side, side])

        @tf.function
        def transpose(v: Any) -> Any:
            return tf.transpose(v, [0, 2, 3, 1])

        transpose(x)

    def run() -> None:
        with tf.device(resolve_device(device)):
            transpose(x)

    return run


def conv_callable(kind: str, channels: int, side: int, filters: int, device: str = "cpu") -> Callable[[], None]:
    """A 3x3 ``same`` convolution with bias (NHWC, ``tf.function``) of a ``(1, side, side, channels)`` input:
    ``forward``, ``backward`` (forward + input, weight and bias gradients) or ``backward_first`` (forward +
    weight and bias gradients): the calibration table's case of :func:`layer_probe_callable`."""
    return layer_probe_callable("conv", calibration_conv_dims(channels, side, filters), kind, device)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one axis (the extra cell at the end)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def layer_probe_callable(op: str, dims: Mapping[str, Any], kind: str, device: str = "cpu") -> Callable[[], None]:
    """The model's own op at one layer's exact shape (``analytics.steptime.probe_key``'s ``dims``), in a
    ``tf.function`` as the model's step: ``conv`` NHWC with ``SAME`` where the pads are TensorFlow's ``SAME`` ones
    (Keras ``padding="same"``), else ``VALID`` on an input padded beforehand (Keras' ``ZeroPadding2D`` + ``valid``;
    the pad op is priced apart); ``dense`` a MatMul + BiasAdd; ``lstm`` Keras' ``LSTM`` layer (its While loop);
    ``kind`` ``forward``, ``backward`` (forward + input
    and weight gradients) or ``backward_first`` (forward + weight gradients only)."""
    if kind not in ("forward", "backward", "backward_first"):
        raise ValueError(f"unknown probe kind {kind!r}; allowed: forward, backward, backward_first")
    with tf.device(resolve_device(device)):
        if op == "conv":
            t, b_, left, r = dims["pads"]
            kh, kw = dims["kernel"]
            sh, sw = dims["stride"]
            h, w = dims["height"], dims["width"]
            same = (t, b_) == _same_pads(h, kh, sh) and (left, r) == _same_pads(w, kw, sw) and t + b_ + left + r > 0
            if not same:
                h, w = h + t + b_, w + left + r
            x = tf.random.normal([dims["batch"], h, w, dims["channels"]])
            weight = tf.Variable(tf.random.normal([kh, kw, dims["channels"], dims["filters"]]))
            bias = tf.Variable(tf.random.normal([dims["filters"]]))
            padding = "SAME" if same else "VALID"

            def apply(v: Any) -> Any:
                return tf.nn.bias_add(tf.nn.conv2d(v, weight, (sh, sw), padding), bias)

        elif op == "dense":
            x = tf.random.normal([dims["rows"], dims["features"]])
            weight = tf.Variable(tf.random.normal([dims["features"], dims["units"]]))
            bias = tf.Variable(tf.random.normal([dims["units"]]))

            def apply(v: Any) -> Any:
                return tf.nn.bias_add(tf.matmul(v, weight), bias)

        elif op == "lstm":
            keras = tf.keras
            x = tf.random.normal([dims["batch"], dims["steps"], dims["features"]])
            lstm = keras.layers.LSTM(dims["units"], return_sequences=dims["sequences"], unit_forget_bias=False)
            lstm.build(x.shape)
            variables = list(lstm.trainable_variables)

            def apply(v: Any) -> Any:
                return lstm(v)

        else:
            raise ValueError(f"unknown probe op {op!r}; allowed: conv, dense, lstm")
        if op != "lstm":
            variables = [weight, bias]

        @tf.function
        def forward(v: Any) -> Any:
            return apply(v)

        @tf.function
        def backward(v: Any) -> Any:
            with tf.GradientTape() as tape:
                if kind == "backward":
                    tape.watch(v)
                y = apply(v)
            sources = [v, *variables] if kind == "backward" else variables
            # returned, so that grappler keeps them (an unused gradient is pruned from the graph)
            return y, tape.gradient(y, sources)

        fn = forward if kind == "forward" else backward
        fn(x)

    def run() -> Any:
        with tf.device(resolve_device(device)):
            out = fn(x)
        return out if kind == "forward" else out[0]

    return run


def batchnorm_callable(kind: str, channels: int, side: int, device: str = "cpu") -> Callable[[], None]:
    """Keras' ``BatchNormalization`` in training mode (``tf.function``, NHWC, as the model builds it) of a
    ``(1, side, side, channels)`` input: ``forward`` (the batch statistics, the moving-statistics update, the
    normalized output) or ``training`` (forward + the input, scale and shift gradients)."""
    if kind not in ("forward", "training"):
        raise ValueError(f"unknown batchnorm probe {kind!r}; allowed: forward, training")
    with tf.device(resolve_device(device)):
        x = tf.random.normal([1, side, side, channels])
        bn = tf.keras.layers.BatchNormalization(axis=-1, momentum=0.9, epsilon=1e-5)
        bn.build(x.shape)

        @tf.function
        def forward(v: Any) -> Any:
            return bn(v, training=True)

        @tf.function
        def training(v: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = bn(v, training=True)
            return tape.gradient(y, [v, *bn.trainable_variables])

        fn = forward if kind == "forward" else training
        fn(x)

    def run() -> None:
        with tf.device(resolve_device(device)):
            fn(x)

    return run


def stream_callable(nbytes: int, device: str = "cpu") -> tuple[Callable[[], None], int]:
    """An in-place add of a tensor into a variable (``assign_add`` in a ``tf.function``) over ``nbytes``, and the
    bytes it moves (both read, the variable written in place: ``3 * nbytes``; no new buffer)."""
    count = max(1, nbytes // 4)
    with tf.device(resolve_device(device)):
        x = tf.Variable(tf.zeros([count]))
        c = tf.ones([count])

        @tf.function
        def add(v: Any) -> Any:
            x.assign_add(v)
            return tf.constant(0.0)

        add(c)

    def run() -> None:
        with tf.device(resolve_device(device)):
            add(c)

    return run, 3 * 4 * count


def alloc_callable(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    """A new ``nbytes`` tensor filled with a runtime value (``tf.fill``) in a ``tf.function``."""
    count = max(1, nbytes // 4)
    with tf.device(resolve_device(device)):
        value = tf.constant(1.0)

        @tf.function
        def fill(v: Any) -> Any:
            return tf.fill([count], v)

        fill(value)

    def run() -> None:
        with tf.device(resolve_device(device)):
            fill(value)

    return run


def attribute_ops(ops: list[tuple[str, float]], steps: int) -> dict[tuple[int, str], float]:
    """``{(layer, phase): seconds per step}`` from ``(op name, seconds)`` pairs (module docstring). Pure."""
    out: dict[tuple[int, str], float] = {}
    for name, seconds in ops:
        scope = name.split(":", 1)[0]
        top = scope.split("/", 1)[0]
        if top in _OPTIMIZER_SCOPES or top.lower().startswith(("sgd", "adam")):
            key = (-1, "update")
        else:
            phase = "backward" if scope.startswith("gradient_tape/") else "forward"
            match = _LAYER.search(scope)
            key = (int(match.group(1)) if match else -1, phase)
        out[key] = out.get(key, 0.0) + seconds / steps
    return out


def _trace_ops(logdir: str) -> list[tuple[str, float]]:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"the TensorFlow profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as fh:
        space.ParseFromString(fh.read())
    ops = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                m = meta[event.metadata_id]
                if m.display_name and ":" in m.name:
                    ops.append((m.name, event.duration_ps * 1e-12))
    return ops


def profile_layers(work: Any, steps: int = 3) -> dict[tuple[int, str], float]:
    """Measured seconds per (spec layer, phase) of one step of a prepared workload, from the profiler trace
    of ``steps`` steps after one warm-up step (module docstring)."""
    work.step()
    logdir = tempfile.mkdtemp(prefix="xfbench-tfprof-")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                work.step()
        finally:
            tf.profiler.experimental.stop()
        return attribute_ops(_trace_ops(logdir), steps)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


__all__ = [
    "NAME",
    "alloc_callable",
    "attribute_ops",
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
