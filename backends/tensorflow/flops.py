"""FLOPs from TensorFlow's own counter: the v1 profiler's ``float_ops`` over a traced graph.

The model is traced into a ``tf.function`` concrete graph with a fixed batch size (the profiler needs
static shapes) and profiled with ``ProfileOptionBuilder.float_operation()``. The profiler adds up the
``flops`` statistics TensorFlow registers per op type (``tensorflow/python/profiler/internal/flops_registry.py``
and ``RegisterStatistics`` in ``nn_ops.py``); what it counts on this version (TF 2.21, Keras 3):

* ``Conv2D``: 2 per multiply-accumulate (``2*N*Hout*Wout*Cout*Cin*kh*kw``); ``MatMul``: ``2*M*K*N``
  (Dense, also through ``Tensordot`` on sequences, and the LSTM's two matrix products);
* ``BiasAdd``: 1 per output element (Keras adds Conv2D/Dense biases with ``BiasAdd``);
* ``AvgPool`` and ``MaxPool``: one per window element per output (``kh*kw*N*Hout*Wout*C``);
* ``Mean``: one per input element (the global average pool; in training also the loss's mean);
* element-wise ``AddV2``/``Mul``/... : 1 per element (the LSTM's gate arithmetic, dropout, the loss);
* ``Softmax``: 5 per element;
* not counted: ReLU, Sigmoid, Tanh, Pad, Transpose (the NCHW<->NHWC boundary), Reshape, LRN.

The training phase traces forward (``training=True``), loss and gradients (no optimizer update). The
gradient ops and their registry rules:

* ``Conv2DBackpropInput`` and ``Conv2DBackpropFilter``: each ``2 * elements(conv input) * elements(kernel)
  / (C_in * stride_h * stride_w)``, i.e. priced from the conv's input (after an explicit ZeroPadding2D)
  rather than its output, truncated to an integer; the Conv2D gradient emits both, so the first conv's
  input gradient is counted too;
* ``MatMul`` of gradients: weight gradient ``2*M*K*N``, and the input gradient only where the tape needs it
  (not for the first Dense, nor an LSTM's ``x W`` in the first layer, nor step 0's ``h U``);
* ``BiasAddGrad``: a sum, ``elements - C``; ``MaxPoolGrad``: ``(kh*kw + 1)`` per pooled output;
  ``AvgPoolGrad``: ``2*kh*kw`` per pooled output;
* not in the aligned set: ``AddN`` (an LSTM's weight gradients summed over steps), element-wise gradient
  arithmetic, the global average pool's gradient (a ``RealDiv``).

:data:`ALIGNED_OPS` is that op set; :func:`xfbench.analytics.costs.tf_profiler_flops` predicts it op by op.

Graph layers on this version: Add is one ``AddV2`` per pair of inputs (1 per element, outside the aligned set,
as the analytic ``add`` column); Concatenate is a ``ConcatV2`` (no registered FLOPs; its gradient is
``ConcatOffset`` + ``Slice``, none counted). Keras 3's BatchNormalization emits no ``FusedBatchNormV3``: it calls
``tf.nn.batch_normalization`` (inference: ``AddV2``/``Rsqrt``/``Mul``/``Sub`` on the statistics, then a ``Mul``
and an ``AddV2`` per element), and in a training step first ``moments`` (``Mean``, ``StopGradient``,
``SquaredDifference``, ``Mean``, ``Squeeze``) and the running-statistic updates (``Mul``/``AddV2`` per channel,
``AssignVariableOp``); its gradient is ``Sum``/``Mul``/``RealDiv``/``Tile``/``RsqrtGrad``/... . The profiler
counts many of these (the ``Mean`` ones inside the aligned set), none under a rule xfbench predicts: every
BatchNorm layer (:data:`UNCOUNTED_TYPES`) is named in ``unsupported`` and its ops, forward and gradient, are
left out of ``total`` and ``by_op``.

Transformer layers on this version (verified on TF 2.21 / Keras 3.15; the rules are
:func:`xfbench.analytics.costs.tf_profiler_flops`'s):

* MultiHeadAttention (composed in ``backends/tensorflow/model.py``): four projections, each ``Tensordot`` ->
  ``MatMul`` + ``BiasAdd``; ``Q K^T`` and ``P V`` are ``BatchMatMulV2`` (``2*N*H*T*S*K`` each, causal or not).
  The registry's BatchMatMul rule reads ``transpose_a``, which BatchMatMulV2 names ``adj_x``, so it always takes
  ``k`` from the first operand's last axis: right for the forward products and the two ``dX`` gradients, but
  the two ``adj_x`` gradients (``dK = dS^T Q``, ``dV = P^T dO``) are priced ``2*N*H*S*S*K`` instead of
  ``2*N*H*T*S*K`` (the same for self-attention). The query's scaling (``Mul``), the causal mask (``AddV2``),
  ``Softmax`` (5 per score) and the softmax gradient (``Mul``/``Sum``/``Sub``) are counted outside the aligned
  set. Keras' own ``MultiHeadAttention`` projects with ``Einsum``, which the registry does not count.
* LayerNorm (Keras 3 ``LayerNormalization``): ``tf.nn.moments`` -- two ``Mean`` (one per input element each,
  in the aligned set), ``SquaredDifference``, ``StopGradient`` -- then ``AddV2``/``Rsqrt``/``Mul``/``Neg``
  (beta is an ``AddV2``, not a BiasAdd); its gradient (``Sum``, ``Mul``, ``RealDiv``, ``Tile``, ``RsqrtGrad``,
  ``Sub``) has no aligned op.
* GELU: the erf form is ``Mul``/``Neg``/``Erfc`` (``Erfc`` has no registry entry: the profiler counts 0 for
  it), the tanh form ``Pow``/``Mul``/``AddV2``/``Tanh`` (``Tanh`` not counted); neither is in the aligned set.
* PositionEmbedding: ``StridedSlice`` + ``AddV2`` (gradient: a ``Sum`` over the batch); GlobalAvgPool1D: ``Mean``
  (aligned; gradient a ``RealDiv``); the tied head: one ``MatMul`` with ``transpose_b`` on the embedding's
  variable (its gradients are aligned ``MatMul``); the embedding's two gradients are summed by an ``AddN``.

Keras runs an LSTM as a ``tf.while_loop`` (or a cuDNN kernel on GPU); the profiler does not look inside
the loop body and would count one step out of ``T``. For counting, each LSTM is traced unrolled
(``unroll=True``: the same per-step ops, once per step); should a loop remain anyway, that layer goes to
``unsupported`` and its ops are left out of ``total``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from xfbench.analytics.costs import TF_PROFILER_OPS
from xfbench.analytics.layers import BatchNorm
from xfbench.analytics.spec import LSTM, ModelSpec
from xfbench.analytics.vocab import check_phase
from xfbench.analytics.weights import make_batch
from xfbench.backends.base import FlopCount
from xfbench.backends.tensorflow._tf import keras, tf
from xfbench.backends.tensorflow.model import _info, loss_fn

COUNTER = "tf.compat.v1.profiler float_operation"
CONVENTION = (
    "TF profiler float_ops: multiply and add counted separately (2 per MAC in Conv2D/MatMul), bias adds "
    "included (BiasAdd, 1 per element), pooling 1 per window element, element-wise ops 1 per element, "
    "Softmax 5 per element; ReLU/sigmoid/tanh, Erfc (erf GELU), padding and transposes not counted; LSTM counted "
    "unrolled; conv gradients priced from the conv's input size over the stride area, BiasAddGrad elements - C; "
    "attention's Q K^T and P V as BatchMatMulV2 (full T x S, causal or not; the adj_x gradients priced with S "
    "for T); LayerNorm's statistics as two Mean"
)
_LOOP_OPS = ("While", "StatelessWhile")
# The profiler's op types that xfbench predicts op by op under this counter's convention (forward and
# gradient: see the module docstring). The profiler also counts element-wise ops, Softmax and AddN, outside it.
ALIGNED_OPS: tuple[str, ...] = TF_PROFILER_OPS
# Spec layer types whose work the aligned op set does not count (see the module docstring): always named in
# ``unsupported``, their ops left out of ``total`` and ``by_op``.
UNCOUNTED_TYPES: tuple[type, ...] = (BatchNorm,)


@contextlib.contextmanager
def _lstms_unrolled(model: Any) -> Iterator[None]:
    """Sets ``unroll=True`` on the model's Keras LSTMs while tracing, restoring the old values after."""
    saved = [(layer, layer.unroll) for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    try:
        for layer, _ in saved:
            layer.unroll = True
        yield
    finally:
        for layer, old in saved:
            layer.unroll = old


def _quiet() -> contextlib.AbstractContextManager:
    """Silences the profiler's v1 deprecation warnings, where TensorFlow offers a switch for them."""
    try:
        from tensorflow.python.util import deprecation

        return deprecation.silence()
    except (ImportError, AttributeError):  # pragma: no cover - private module moved
        return contextlib.nullcontext()


def _trace(model: Any, spec: ModelSpec, batch_size: int, phase: str) -> Any:
    info = _info(model)
    in_dtype = tf.int64 if spec.input_dtype == "int64" else tf.as_dtype(info.dtype)
    x_spec = tf.TensorSpec([batch_size, *spec.input_shape], in_dtype)
    if phase == "inference":

        def forward(x: Any) -> Any:
            return model(x, training=False)

        with tf.device(info.tf_device):
            return tf.function(forward).get_concrete_function(x_spec).graph
    _, y = make_batch(spec, 1)
    y_dtype = tf.int64 if y.dtype == np.int64 else tf.as_dtype(info.dtype)
    y_spec = tf.TensorSpec([batch_size, *y.shape[1:]], y_dtype)
    loss = loss_fn(spec)
    variables = model.trainable_variables

    def train(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return value, tape.gradient(value, variables)

    with tf.device(info.tf_device):
        return tf.function(train).get_concrete_function(x_spec, y_spec).graph


def _node_flops(graph: Any) -> dict[str, int]:
    """``{op name: float_ops}`` for every graph op the profiler gives a non-zero count."""
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    with _quiet():
        root = tf.compat.v1.profiler.profile(graph, cmd="scope", options=options)
    out: dict[str, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node.float_ops:
            out[node.name] = out.get(node.name, 0) + int(node.float_ops)
        stack.extend(node.children)
    return out


def _layer_of(op_name: str, n_layers: int, model_name: str) -> int | None:
    """The spec layer index of a graph op, from the ``l<i>_`` Keras layer-name scope in its name."""
    for part in op_name.split("/"):
        if part == model_name or part.startswith(model_name + "_"):  # the model's own scope, e.g. "lenet_1"
            continue
        if part.startswith("l") and "_" in part:
            head = part[1 : part.index("_")]
            if head.isdigit() and int(head) < n_layers:
                return int(head)
    return None


def count_flops(model: Any, spec: ModelSpec, batch_size: int, phase: str = "inference") -> FlopCount:
    """FLOPs of one batch of ``batch_size`` as the TensorFlow profiler counts them (see module docstring).

    ``by_op`` splits ``total`` by TensorFlow op type (``Conv2D``, ``MatMul``, ``BiasAdd``, ``AvgPool``, ...).
    """
    check_phase(phase)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with _lstms_unrolled(model):
        graph = _trace(model, spec, batch_size, phase)
    n_layers = len(spec.layers)
    looped: set[int] = set()
    for op in graph.get_operations():
        if op.type in _LOOP_OPS:
            index = _layer_of(op.name, n_layers, model.name)
            if index is not None and isinstance(spec.layers[index], LSTM):
                looped.add(index)
    # Layers outside the aligned convention: their ops (forward and gradient) are left out of ``total``.
    uncounted = looped | {i for i, layer in enumerate(spec.layers) if isinstance(layer, UNCOUNTED_TYPES)}
    by_op: dict[str, int] = {}
    for name, flops in _node_flops(graph).items():
        if _layer_of(name, n_layers, model.name) in uncounted:
            continue
        try:
            op_type = graph.get_operation_by_name(name).type
        except (KeyError, ValueError):
            op_type = name.rsplit("/", 1)[-1]
        by_op[op_type] = by_op.get(op_type, 0) + flops
    unsupported = tuple(f"{i}:{spec.layers[i].type}" for i in sorted(uncounted))
    return FlopCount(
        counter=COUNTER,
        convention=CONVENTION,
        total=sum(by_op.values()),
        by_op=dict(sorted(by_op.items())),
        unsupported=unsupported,
    )
