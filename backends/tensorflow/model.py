"""Builds a Keras 3 model from a :class:`~analytics.spec.ModelSpec`, and moves weights in and out of it.

Keras runs channels-last (NHWC) on every device here, so the model itself transposes at its boundary:
the input is ``(N, C, H, W)`` as the contract says, a ``Permute`` turns it into NHWC before the first
image layer, and a ``Permute`` turns an image-shaped output back into NCHW. No transpose is inserted in
front of a Flatten that feeds a Dense: Keras then flattens in (H, W, C) order, and the Dense kernel's rows
are permuted from the neutral (C, H, W) order on import and back on export.

Layer mapping (spec -> Keras, channels-last; one builder per type in :data:`BUILDERS`):

* Conv2D ``same`` -> ``Conv2D(padding="same")`` (TensorFlow's rule, which is the spec's);
  explicit ``P`` -> ``ZeroPadding2D(P)`` + ``valid``.
* MaxPool2D ``same`` -> ``MaxPooling2D(padding="same")`` (padded cells never win);
  explicit ``P`` -> a ``-inf`` constant pad + ``valid``.
* AvgPool2D ``same`` -> ``AveragePooling2D(padding="same")`` (padded cells excluded from the mean);
  explicit ``P`` -> ``ZeroPadding2D(P)`` + ``valid`` (the zeros count, as PyTorch's ``count_include_pad``).
* LocalResponseNorm (odd ``size``) -> ``tf.nn.local_response_normalization(depth_radius=size//2,
  bias=k, alpha=alpha/size, beta=beta)``; even sizes and float64 use an equivalent sum of shifted squares.
* LSTM -> ``keras.layers.LSTM`` (gate order i, f, c, o = the neutral i, f, g, o; one bias of ``4h``).
* softmax on an image tensor is taken over the spec's last axis (W), which is axis 2 in NHWC.
* BatchNorm -> ``BatchNormalization(axis=-1, momentum=1 - m, epsilon=eps)`` (Keras' momentum weighs the old
  statistics, the spec's the batch's); an image input is transposed to NHWC first, so the axis is the channels;
  on ``(T, F)`` and ``(F,)`` it is the features. Weights: gamma, beta, moving mean, moving variance (the last
  two non-trainable; ``count_params`` counts all four). Keras 3 folds the biased batch variance into the
  running variance.
* Add -> ``keras.layers.Add``; Concatenate -> ``keras.layers.Concatenate`` on channels (axis -1 of NHWC, axis 1
  of NCHW) or on the last (feature) axis of a sequence or vector.
* Activations ``gelu`` -> ``keras.activations.gelu(x, approximate=False)`` (the erf form; ``keras.ops.gelu``
  defaults to the tanh form), ``gelu_tanh`` -> ``approximate=True``; also as a Conv2D's or Dense's activation.
* LayerNorm -> ``keras.layers.LayerNormalization(axis=-1, epsilon=eps)`` (Keras 3: ``tf.nn.moments`` -- ``Mean``,
  ``SquaredDifference``, ``Mean`` -- then ``Rsqrt``, ``Mul``, ``Neg``; the shift ``beta`` is an ``AddV2``).
* MultiHeadAttention -> :class:`_MultiHeadAttention`, composed from explicit ops so that TensorFlow's profiler
  sees every product (Keras' own ``MultiHeadAttention`` projects with ``Einsum``, which the profiler does not
  count): four ``keras.layers.Dense`` (query, key, value, output: ``Tensordot`` -> ``MatMul``, bias
  ``BiasAdd``), reshape and transpose to ``(N, H, T, K)``, ``tf.matmul(q * 1/sqrt(K), k, transpose_b=True)``
  (``BatchMatMulV2``, ``adj_y``), a ``-inf`` mask added above the diagonal when causal, ``tf.nn.softmax``,
  ``tf.matmul(p, v)`` (``BatchMatMulV2``), transpose back, the output projection.
* PositionEmbedding -> :class:`_PositionEmbedding`: a ``(length, F)`` weight, ``x + table[:T]``;
  GlobalAvgPool1D -> ``keras.layers.GlobalAveragePooling1D`` (``Mean`` over time).
* Dense with ``tie`` -> :class:`_TiedDense`: ``tf.matmul(x, E, transpose_b=True)`` (a ``(N*T, D)`` reshape of a
  sequence, one ``MatMul``) on the tied Embedding's own variable ``E`` (one variable, one gradient: the head's
  and the lookup's gradients are summed into it), its bias added with ``BiasAdd``.

Graphs: each layer reads the Keras tensors of the layers its ``inputs`` name (:func:`analytics.spec.layer_inputs`),
and each tensor remembers whether it is NHWC. A layer that needs NHWC transposes its NCHW input (one ``Permute``
per source tensor, shared by its readers); image inputs of an Add or Concatenate meet in NHWC where any of them
already is, else in NCHW. A Flatten of an NHWC tensor keeps Keras' (H, W, C) order only where every path from
it reaches a Dense through element-wise layers (Dropout, activations other than softmax).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from xfbench.analytics import layers as L
from xfbench.analytics.shapes import infer_shapes, layer_input_shapes, tied_layer
from xfbench.analytics.spec import Layer, ModelSpec, consumers, layer_inputs
from xfbench.analytics.vocab import DTYPES as DTYPE_NAMES
from xfbench.analytics.weights import output_kind, random_weights
from xfbench.backends.base import NotSupported
from xfbench.backends.common import check_dtype, check_weights, optimizer_settings
from xfbench.backends.tensorflow._tf import keras, tf
from xfbench.backends.tensorflow.device import resolve_device

# analytics.vocab's dtypes without bfloat16 (not built here), and float64 (a reference precision for parity).
DTYPES: tuple[str, ...] = (*(d for d in DTYPE_NAMES if d != "bfloat16"), "float64")


@dataclass(frozen=True)
class _WeightEntry:
    """One spec layer with weights: its Keras layer and, for a Dense fed by a Flatten of an NHWC tensor,
    the (C, H, W) shape whose flattening order differs between the spec and Keras."""

    index: int
    kind: str  # "conv", "dense", "lstm", "embedding", "batchnorm", "layernorm", "attention", "positions", "tied"
    layer: Any
    flatten_chw: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class _ModelInfo:
    spec: ModelSpec
    tf_device: str
    dtype: str
    entries: tuple[_WeightEntry, ...]


class _ConstantPad2D(keras.layers.Layer):
    """Pads H and W of an NHWC tensor with a constant (``-inf`` for max pooling, so padding never wins)."""

    def __init__(self, padding: int, value: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)
        self.value = float(value)

    def call(self, x: Any) -> Any:
        p = self.padding
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=tf.cast(self.value, x.dtype))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        n, h, w, c = input_shape
        p = 2 * self.padding
        return (n, None if h is None else h + p, None if w is None else w + p, c)


class _LocalResponseNorm(keras.layers.Layer):
    """PyTorch's LRN on an NHWC tensor: ``x / (k + alpha/size * sum_window x^2)^beta`` over channels.

    The window of channel ``c`` is ``[c - size//2, c + (size-1)//2]`` (zeros outside), as in PyTorch.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def call(self, x: Any) -> Any:
        if self.size % 2 == 1 and x.dtype in (tf.float32, tf.float16, tf.bfloat16):
            return tf.nn.local_response_normalization(
                x, depth_radius=self.size // 2, bias=self.k, alpha=self.alpha / self.size, beta=self.beta
            )
        # tf.nn.lrn has only a symmetric (odd) window and no float64 kernel: sum the shifted squares instead.
        sq = tf.square(x)
        channels = x.shape[-1]
        padded = tf.pad(sq, [[0, 0], [0, 0], [0, 0], [self.size // 2, (self.size - 1) // 2]])
        window = tf.add_n([padded[..., j : j + channels] for j in range(self.size)])
        return x / tf.pow(self.k + (self.alpha / self.size) * window, self.beta)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def _gelu(x: Any) -> Any:
    """GELU, the erf form (``keras.ops.gelu`` defaults to the tanh form)."""
    return keras.activations.gelu(x, approximate=False)


def _gelu_tanh(x: Any) -> Any:
    """GELU, the tanh approximation (GPT-2's)."""
    return keras.activations.gelu(x, approximate=True)


def _keras_activation(kind: str | None) -> Any:
    """The Keras activation of a spec activation kind (a name Keras knows, or one of the GELU functions)."""
    return {"gelu": _gelu, "gelu_tanh": _gelu_tanh}.get(kind, kind) if kind is not None else None


class _MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention composed from explicit ops (see the module docstring); query ``(N, T, F)``,
    key/value ``(N, S, Fk)`` (the query itself for self-attention)."""

    def __init__(self, features: int, heads: int, key_dim: int, causal: bool, use_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heads, self.key_dim, self.causal, self.use_bias = int(heads), int(key_dim), bool(causal), bool(use_bias)
        dtype = kwargs.get("dtype")
        hk = self.heads * self.key_dim

        def dense(name: str, units: int) -> Any:
            return keras.layers.Dense(units, use_bias=self.use_bias, kernel_initializer="zeros", name=name, dtype=dtype)

        self.query, self.key, self.value = dense("query", hk), dense("key", hk), dense("value", hk)
        self.out = dense("output", int(features))  # back to the query's features

    def build(self, query_shape: tuple, key_value_shape: tuple | None = None) -> None:
        kv_shape = query_shape if key_value_shape is None else key_value_shape
        self.query.build(query_shape)
        self.key.build(kv_shape)
        self.value.build(kv_shape)
        self.out.build((*query_shape[:-1], self.heads * self.key_dim))
        self.built = True

    def _heads(self, x: Any, length: int) -> Any:
        """``(N, length, H*K) -> (N, H, length, K)``."""
        return tf.transpose(tf.reshape(x, (-1, length, self.heads, self.key_dim)), (0, 2, 1, 3))

    def call(self, query: Any, key_value: Any = None) -> Any:
        kv = query if key_value is None else key_value
        t, s = int(query.shape[1]), int(kv.shape[1])
        q = self._heads(self.query(query), t)
        k = self._heads(self.key(kv), s)
        v = self._heads(self.value(kv), s)
        scores = tf.matmul(q * tf.cast(1.0 / np.sqrt(self.key_dim), q.dtype), k, transpose_b=True)  # (N,H,T,S)
        if self.causal:
            hidden = np.triu(np.ones((t, s), dtype=bool), k=1)
            mask = np.where(hidden, -np.inf, 0.0).astype(scores.dtype.as_numpy_dtype)
            scores = scores + tf.constant(mask)
        p = tf.nn.softmax(scores, axis=-1)
        o = tf.reshape(tf.transpose(tf.matmul(p, v), (0, 2, 1, 3)), (-1, t, self.heads * self.key_dim))
        return self.out(o)

    def compute_output_shape(self, query_shape: tuple, key_value_shape: tuple | None = None) -> tuple:
        return tuple(query_shape)


class _PositionEmbedding(keras.layers.Layer):
    """A learned ``(length, F)`` table whose first ``T`` rows are added to the ``(N, T, F)`` input."""

    def __init__(self, length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length = int(length)

    def build(self, input_shape: tuple) -> None:
        self.embeddings = self.add_weight(
            shape=(self.length, int(input_shape[-1])), initializer="zeros", name="embeddings"
        )
        self.built = True

    def call(self, x: Any) -> Any:
        table = tf.convert_to_tensor(self.embeddings)
        t = int(x.shape[1])
        return x + (table if t == self.length else table[:t])

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)


class _Tie:
    """Holds the tied Embedding layer out of Keras' tracking (its variable stays the Embedding's alone)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer


class _TiedDense(keras.layers.Layer):
    """A Dense whose kernel is an Embedding's ``(vocab, dim)`` matrix transposed (GPT-2's head): no kernel of
    its own, the bias (``use_bias``) its only weight."""

    def __init__(self, embedding: Any, units: int, use_bias: bool, activation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tie = _Tie(embedding)
        self.units, self.use_bias = int(units), bool(use_bias)
        self.activation = keras.activations.get(activation) if activation is not None else None
        self.bias = None

    def build(self, input_shape: tuple) -> None:
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.built = True

    def call(self, x: Any) -> Any:
        table = tf.convert_to_tensor(self._tie.layer.embeddings)  # (vocab, dim)
        if len(x.shape) == 3:  # (N, T, D): one (N*T, D) x (D, vocab) MatMul
            t, d = int(x.shape[1]), int(x.shape[2])
            y = tf.reshape(tf.matmul(tf.reshape(x, (-1, d)), table, transpose_b=True), (-1, t, self.units))
        else:
            y = tf.matmul(x, table, transpose_b=True)
        if self.bias is not None:
            y = keras.ops.add(y, self.bias)  # BiasAdd, as keras.layers.Dense
        if self.activation is not None:
            y = self.activation(y)
        return y

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.units)


def _keras_name(index: int, layer: Any, suffix: str = "") -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", layer.name or layer.type.lower())
    return f"l{index}_{base}{suffix}"


def _info(model: Any) -> _ModelInfo:
    info = getattr(model, "_xf_info", None)
    if not isinstance(info, _ModelInfo):
        raise ValueError("this model was not built by backends.tensorflow.build_model")
    return info


def _flatten_feeds_dense(spec: ModelSpec, flatten_index: int) -> bool:
    """Whether every path from the Flatten's output reaches a Dense through element-wise one-input layers only
    (Dropout, non-softmax activations), so that the Dense kernels can absorb Keras' (H, W, C) flattening order."""
    readers = consumers(spec)

    def absorbed(j: int) -> bool:
        if not readers[j]:  # the model's output: nothing absorbs the order
            return False
        for c in readers[j]:
            layer = spec.layers[c]
            if isinstance(layer, L.Dense):
                continue
            if isinstance(layer, L.Dropout) or (isinstance(layer, L.Activation) and layer.kind != "softmax"):
                if absorbed(c):
                    continue
            return False
        return True

    return absorbed(flatten_index)


@dataclass
class _Out:
    """One spec layer's output in the Keras graph: the tensor, whether an image tensor is NHWC, and, for a
    Flatten of an NHWC tensor whose order the Dense after it absorbs, the (C, H, W) shape before flattening."""

    tensor: Any
    nhwc: bool = False
    chw: tuple[int, int, int] | None = None


# The layer types that run on NHWC image tensors (the spec's (C, H, W) is transposed in front of them).
_NHWC_TYPES = (L.Conv2D, L.MaxPool2D, L.AvgPool2D, L.GlobalAvgPool2D, L.LocalResponseNorm, L.BatchNorm)
# The layer types that join two or more inputs (their image inputs first meet in one layout), and attention
# (``[query, key_value]``).
_JOIN_TYPES = (L.Add, L.Concatenate, L.MultiHeadAttention)


@dataclass
class _Step:
    """One spec layer being built, for its type's builder: what it reads, and the layout facts it updates.

    ``x`` is the input tensor (a list of them for Add, Concatenate and MultiHeadAttention), already NHWC where the
    type needs it; ``channels_last`` says whether an image tensor is NHWC (a builder whose output is no image any
    more sets it to False); ``chw`` is the (C, H, W) shape a Dense kernel must absorb (:class:`_Out`).
    """

    spec: ModelSpec
    index: int
    name: str
    common: dict[str, Any]
    seed: int
    shape: tuple[int, ...]  # the per-sample shape of the (first) input
    x: Any
    channels_last: bool
    chw: tuple[int, int, int] | None
    entries: list[_WeightEntry]
    # a one-input layer's input in the spec's NCHW (a transpose shared with other readers where it is NHWC)
    as_nchw: Callable[[], Any] | None = None

    @property
    def image_in(self) -> bool:
        return len(self.shape) == 3


def _add(s: _Step, layer: L.Add) -> Any:
    return keras.layers.Add(name=s.name, **s.common)(s.x)


def _concatenate(s: _Step, layer: L.Concatenate) -> Any:
    # the spec joins channels of (C, H, W), features of (T, F) and (F,)
    axis = (-1 if s.channels_last else 1) if s.image_in else -1
    return keras.layers.Concatenate(axis=axis, name=s.name, **s.common)(s.x)


def _conv(s: _Step, layer: L.Conv2D) -> Any:
    x = s.x
    pad = layer.padding
    if isinstance(pad, int) and pad > 0:
        x = keras.layers.ZeroPadding2D(pad, name=_keras_name(s.index, layer, "_pad"), **s.common)(x)
    softmax = layer.activation == "softmax"
    conv = keras.layers.Conv2D(
        layer.filters,
        layer.kernel,
        strides=layer.stride,
        padding="same" if pad == "same" else "valid",
        use_bias=layer.use_bias,
        activation=None if softmax else _keras_activation(layer.activation),
        kernel_initializer="zeros",
        name=s.name,
        **s.common,
    )
    x = conv(x)
    if softmax:
        x = keras.layers.Softmax(axis=2, name=_keras_name(s.index, layer, "_softmax"), **s.common)(x)
    s.entries.append(_WeightEntry(s.index, "conv", conv))
    return x


def _pool(s: _Step, layer: L.MaxPool2D | L.AvgPool2D) -> Any:
    """MaxPool2D and AvgPool2D."""
    x = s.x
    pad = layer.padding
    is_max = isinstance(layer, L.MaxPool2D)
    if isinstance(pad, int) and pad > 0:
        pad_name = _keras_name(s.index, layer, "_pad")
        if is_max:
            x = _ConstantPad2D(pad, float("-inf"), name=pad_name, **s.common)(x)
        else:
            x = keras.layers.ZeroPadding2D(pad, name=pad_name, **s.common)(x)
    cls = keras.layers.MaxPooling2D if is_max else keras.layers.AveragePooling2D
    return cls(layer.pool, strides=layer.stride, padding="same" if pad == "same" else "valid", name=s.name, **s.common)(
        x
    )


def _global_avg_pool(s: _Step, layer: L.GlobalAvgPool2D) -> Any:
    s.channels_last = False
    return keras.layers.GlobalAveragePooling2D(name=s.name, **s.common)(s.x)


def _local_response_norm(s: _Step, layer: L.LocalResponseNorm) -> Any:
    return _LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k, name=s.name, **s.common)(s.x)


def _batchnorm(s: _Step, layer: L.BatchNorm) -> Any:
    # Keras' momentum weighs the old statistics (PyTorch's the batch's): 1 - m. Channels are the last axis
    # of NHWC images and of (T, F) and (F,) tensors.
    bn = keras.layers.BatchNormalization(
        axis=-1,
        momentum=1.0 - layer.momentum,
        epsilon=layer.epsilon,
        name=s.name,
        **s.common,
    )
    s.entries.append(_WeightEntry(s.index, "batchnorm", bn))
    s.chw = None
    return bn(s.x)


def _flatten(s: _Step, layer: L.Flatten) -> Any:
    x = s.x
    s.chw = None
    if s.image_in and s.channels_last:
        if _flatten_feeds_dense(s.spec, s.index):
            shape = s.shape
            s.chw = (int(shape[0]), int(shape[1]), int(shape[2]))
        else:  # nothing downstream can absorb the (H, W, C) order: restore (C, H, W) first
            assert s.as_nchw is not None
            x = s.as_nchw()
    s.channels_last = False
    return keras.layers.Flatten(name=s.name, **s.common)(x)


def _dense(s: _Step, layer: L.Dense) -> Any:
    if layer.tie:
        j = tied_layer(s.spec, s.index)
        emb = next(e.layer for e in s.entries if e.index == j and e.kind == "embedding")
        tied = _TiedDense(
            emb, layer.units, layer.use_bias, _keras_activation(layer.activation), name=s.name, **s.common
        )
        x = tied(s.x)
        s.entries.append(_WeightEntry(s.index, "tied", tied))
        s.chw = None
        return x
    dense = keras.layers.Dense(
        layer.units,
        use_bias=layer.use_bias,
        activation=_keras_activation(layer.activation),
        kernel_initializer="zeros",
        name=s.name,
        **s.common,
    )
    x = dense(s.x)
    s.entries.append(_WeightEntry(s.index, "dense", dense, s.chw))
    s.chw = None
    return x


def _activation(s: _Step, layer: L.Activation) -> Any:
    if layer.kind == "softmax":
        axis = 2 if (s.image_in and s.channels_last) else -1
        return keras.layers.Softmax(axis=axis, name=s.name, **s.common)(s.x)
    return keras.layers.Activation(_keras_activation(layer.kind), name=s.name, **s.common)(s.x)


def _dropout(s: _Step, layer: L.Dropout) -> Any:
    return keras.layers.Dropout(layer.rate, seed=s.seed + s.index, name=s.name, **s.common)(s.x)


def _lstm(s: _Step, layer: L.LSTM) -> Any:
    lstm = keras.layers.LSTM(
        layer.units,
        return_sequences=layer.return_sequences,
        kernel_initializer="zeros",
        recurrent_initializer="zeros",
        unit_forget_bias=False,
        name=s.name,
        **s.common,
    )
    x = lstm(s.x)
    s.entries.append(_WeightEntry(s.index, "lstm", lstm))
    return x


def _embedding(s: _Step, layer: L.Embedding) -> Any:
    emb = keras.layers.Embedding(layer.vocab, layer.dim, embeddings_initializer="zeros", name=s.name, **s.common)
    x = emb(s.x)
    s.entries.append(_WeightEntry(s.index, "embedding", emb))
    return x


def _layer_norm(s: _Step, layer: L.LayerNorm) -> Any:
    ln = keras.layers.LayerNormalization(axis=-1, epsilon=layer.epsilon, name=s.name, **s.common)
    x = ln(s.x)
    s.entries.append(_WeightEntry(s.index, "layernorm", ln))
    s.chw = None
    return x


def _attention(s: _Step, layer: L.MultiHeadAttention) -> Any:
    attn = _MultiHeadAttention(
        int(s.shape[-1]), layer.heads, layer.key_dim, layer.causal, layer.use_bias, name=s.name, **s.common
    )
    x = attn(s.x[0]) if len(s.x) == 1 else attn(s.x[0], s.x[1])
    s.entries.append(_WeightEntry(s.index, "attention", attn))
    return x


def _position_embedding(s: _Step, layer: L.PositionEmbedding) -> Any:
    length = layer.length if layer.length is not None else int(s.shape[0])
    pos = _PositionEmbedding(length, name=s.name, **s.common)
    x = pos(s.x)
    s.entries.append(_WeightEntry(s.index, "positions", pos))
    return x


def _global_avg_pool_1d(s: _Step, layer: L.GlobalAvgPool1D) -> Any:
    return keras.layers.GlobalAveragePooling1D(name=s.name, **s.common)(s.x)


#: A builder: ``(step, layer) -> output tensor``; it records a layer with weights in ``step.entries`` and updates
#: ``step.channels_last`` and ``step.chw`` where its output's layout differs from its input's.
Builder = Callable[[_Step, Any], Any]

#: One builder per layer type, keyed by its class (tests/test_graph_tensorflow.py checks it against
#: analytics.layers.LAYER_TYPES).
BUILDERS: dict[type[Layer], Builder] = {
    L.Conv2D: _conv,
    L.MaxPool2D: _pool,
    L.AvgPool2D: _pool,
    L.GlobalAvgPool2D: _global_avg_pool,
    L.Dense: _dense,
    L.Flatten: _flatten,
    L.Activation: _activation,
    L.Dropout: _dropout,
    L.LocalResponseNorm: _local_response_norm,
    L.LSTM: _lstm,
    L.Embedding: _embedding,
    L.Add: _add,
    L.Concatenate: _concatenate,
    L.BatchNorm: _batchnorm,
    L.LayerNorm: _layer_norm,
    L.MultiHeadAttention: _attention,
    L.PositionEmbedding: _position_embedding,
    L.GlobalAvgPool1D: _global_avg_pool_1d,
}


def _build_graph(spec: ModelSpec, dtype: str, seed: int) -> tuple[Any, tuple[_WeightEntry, ...]]:
    """The Keras functional graph of ``spec``: each layer reads the outputs its ``inputs`` name
    (:func:`analytics.spec.layer_inputs`); a sequential spec is the chain it always was. The layout (NHWC or
    NCHW) of each layer's input is decided here; its Keras layers come from its type's builder in
    :data:`BUILDERS`."""
    in_dtype = "int64" if spec.input_dtype == "int64" else dtype
    inputs = keras.Input(shape=tuple(spec.input_shape), dtype=in_dtype, name="input")
    entries: list[_WeightEntry] = []
    in_shapes_all = layer_input_shapes(spec)
    out_shapes = infer_shapes(spec)
    common = {"dtype": dtype}
    outs: list[_Out] = []
    model_in = _Out(inputs)
    # one transpose per source tensor, shared by every layer that needs it in the other layout
    nhwc_cache: dict[int, Any] = {}
    nchw_cache: dict[int, Any] = {}

    def source(j: int) -> _Out:
        return model_in if j < 0 else outs[j]

    def as_nhwc(j: int, i: int) -> Any:
        src = source(j)
        if src.nhwc:
            return src.tensor
        if j not in nhwc_cache:
            nhwc_cache[j] = keras.layers.Permute((2, 3, 1), name=f"l{i}_to_nhwc", **common)(src.tensor)
        return nhwc_cache[j]

    def as_nchw(j: int, i: int) -> Any:
        src = source(j)
        if not src.nhwc:
            return src.tensor
        if j not in nchw_cache:
            nchw_cache[j] = keras.layers.Permute((3, 1, 2), name=f"l{i}_to_nchw", **common)(src.tensor)
        return nchw_cache[j]

    for i, (layer, srcs, in_shapes) in enumerate(zip(spec.layers, layer_inputs(spec), in_shapes_all)):
        builder = BUILDERS.get(type(layer))
        if builder is None:
            raise NotSupported(f"layer {i} ({layer.type}) is not supported with tensorflow")
        shape = tuple(in_shapes[0])
        image_in = len(shape) == 3
        x: Any
        chw: tuple[int, int, int] | None
        restore: Callable[[], Any] | None = None
        if isinstance(layer, _JOIN_TYPES):
            # Image inputs meet in one layout: NHWC where any of them already is, else the spec's NCHW.
            channels_last = image_in and any(source(j).nhwc for j in srcs)
            x = [as_nhwc(j, i) if channels_last else as_nchw(j, i) for j in srcs]
            chw = None
        else:
            if len(srcs) != 1:  # analytics.shapes refuses this first; kept for a spec built around it
                raise NotSupported(f"layer {i} ({layer.type}) reads {len(srcs)} inputs; it takes one")
            j = srcs[0]
            src = source(j)
            if image_in and isinstance(layer, _NHWC_TYPES):
                x, channels_last = as_nhwc(j, i), True
            else:
                x, channels_last = src.tensor, src.nhwc
            chw = src.chw
            restore = functools.partial(as_nchw, j, i)
        step = _Step(spec, i, _keras_name(i, layer), common, seed, shape, x, channels_last, chw, entries, restore)
        y = builder(step, layer)
        image_out = len(out_shapes[i]) == 3
        outs.append(_Out(y, nhwc=step.channels_last and image_out, chw=step.chw))
    last = outs[-1]
    x = last.tensor
    if len(out_shapes[-1]) == 3 and last.nhwc:
        x = keras.layers.Permute((3, 1, 2), name="to_nchw", **common)(x)
    model = keras.Model(inputs, x, name=re.sub(r"[^A-Za-z0-9_]", "_", spec.name) or "model")
    return model, tuple(entries)


def build_model(spec: ModelSpec, device: str = "cpu", dtype: str = "float32", seed: int = 0, init: bool = True) -> Any:
    """A ``keras.Model`` for ``spec`` with its variables on ``device``.

    The weights are :func:`analytics.weights.random_weights` ``(spec, seed)``, so every backend starts from
    the same numbers for the same seed; ``init=False``: the layers' zero initialisers, for a caller that loads
    weights next. The model takes NCHW (or ``(N, T, F)``) input and returns the
    spec's channels-first output.
    """
    check_dtype(dtype, "tensorflow", DTYPES)
    tf_device = resolve_device(device)
    with tf.device(tf_device):
        model, entries = _build_graph(spec, dtype, seed)
        model._xf_info = _ModelInfo(spec=spec, tf_device=tf_device, dtype=dtype, entries=entries)
        if init:
            set_weights(model, random_weights(spec, seed=seed, dtype=dtype))
    return model


def _to_keras(entry: _WeightEntry, param: str, arr: np.ndarray) -> np.ndarray:
    if entry.kind == "conv" and param == "kernel":
        return np.transpose(arr, (2, 3, 1, 0))  # OIHW -> HWIO
    if entry.kind == "dense" and param == "kernel" and entry.flatten_chw is not None:
        c, h, w = entry.flatten_chw
        return arr.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)  # rows CHW -> HWC
    return arr


def _from_keras(entry: _WeightEntry, param: str, arr: np.ndarray) -> np.ndarray:
    if entry.kind == "conv" and param == "kernel":
        return np.transpose(arr, (3, 2, 0, 1))  # HWIO -> OIHW
    if entry.kind == "dense" and param == "kernel" and entry.flatten_chw is not None:
        c, h, w = entry.flatten_chw
        return arr.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)  # rows HWC -> CHW
    return arr


def _layer_params(entry: _WeightEntry) -> list[tuple[str, Any]]:
    """The Keras variables of one layer in neutral order, as ``(param, variable)``."""
    layer = entry.layer
    if entry.kind == "embedding":
        return [("embeddings", layer.embeddings)]
    if entry.kind == "batchnorm":  # the neutral order: gamma, beta, then the running statistics
        return [
            ("gamma", layer.gamma),
            ("beta", layer.beta),
            ("moving_mean", layer.moving_mean),
            ("moving_variance", layer.moving_variance),
        ]
    if entry.kind == "layernorm":
        return [("gamma", layer.gamma), ("beta", layer.beta)]
    if entry.kind == "positions":
        return [("embeddings", layer.embeddings)]
    if entry.kind == "attention":  # the neutral order: query, key, value, output; kernel then bias
        out: list[tuple[str, Any]] = []
        for proj, dense in (("query", layer.query), ("key", layer.key), ("value", layer.value), ("output", layer.out)):
            out.append((f"{proj}_kernel", dense.kernel))
            if dense.bias is not None:
                out.append((f"{proj}_bias", dense.bias))
        return out
    if entry.kind == "tied":  # the kernel is the Embedding's, exported there
        return [("bias", layer.bias)] if layer.bias is not None else []
    if entry.kind == "lstm":
        cell = layer.cell
        return [("kernel", cell.kernel), ("recurrent_kernel", cell.recurrent_kernel), ("bias", cell.bias)]
    params = [("kernel", layer.kernel)]
    if layer.bias is not None:
        params.append(("bias", layer.bias))
    return params


def set_weights(model: Any, weights: Sequence[np.ndarray]) -> None:
    """Loads neutral-format weights (:mod:`analytics.weights`) into ``model``; values are cast to its dtype.

    Raises ``ValueError`` naming the slot when the count or a shape does not match
    (:func:`backends.common.check_weights`).
    """
    info = _info(model)
    slots = check_weights(info.spec, weights)
    by_layer = {e.index: e for e in info.entries}
    pos = 0
    for entry in info.entries:
        for param, var in _layer_params(entry):
            slot, arr = slots[pos], np.asarray(weights[pos])
            pos += 1
            if slot.layer != entry.index or slot.param != param:  # the two orders are built from the same spec
                raise AssertionError(f"weight order mismatch at {slot}")
            var.assign(np.ascontiguousarray(_to_keras(by_layer[slot.layer], param, arr)).astype(info.dtype))


def get_weights(model: Any) -> list[np.ndarray]:
    """The model's weights in the neutral format, as numpy arrays of the model's dtype."""
    info = _info(model)
    out: list[np.ndarray] = []
    for entry in info.entries:
        for param, var in _layer_params(entry):
            out.append(np.ascontiguousarray(_from_keras(entry, param, np.asarray(var.numpy()))))
    return out


def count_params(model: Any) -> int:
    """Parameters as Keras counts them (``model.count_params()``; an LSTM has one ``4h`` bias)."""
    return int(model.count_params())


def to_device(array: Any, device: str, dtype: str | None = None) -> Any:
    """A ``tf.Tensor`` copy of ``array`` placed on ``device``; floating arrays are cast to ``dtype``."""
    with tf.device(resolve_device(device)):
        tensor = tf.convert_to_tensor(array)
        if dtype is not None and tensor.dtype.is_floating:
            tensor = tf.cast(tensor, dtype)
        return tf.identity(tensor)


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array of ``tensor`` (reading it waits for the device)."""
    if hasattr(tensor, "numpy"):
        return np.asarray(tensor.numpy())
    return np.asarray(tensor)


def _forward(model: Any, x: Any) -> Any:
    return model(x, training=False)


def _compiled_infer(model: Any) -> Callable[[Any], Any]:
    fn = getattr(model, "_xf_infer", None)
    if fn is None:
        # A partial, not a closure: tf.function counts retraces per code object, so closures of many models
        # would add up to a spurious "excessive retracing" warning.
        fn = tf.function(functools.partial(_forward, model))
        model._xf_infer = fn
    return fn


def infer(model: Any, x: Any) -> Any:
    """Inference (``training=False``) of a batch through a ``tf.function``; returns a channels-first tensor."""
    info = _info(model)
    with tf.device(info.tf_device):
        return _compiled_infer(model)(x)


def loss_fn(spec: ModelSpec) -> Callable[[Any, Any], Any]:
    """The training loss of :func:`analytics.weights.output_kind` as ``loss(y, out) -> scalar`` (mean)."""
    kind = output_kind(spec)
    if kind == "probs":
        return lambda y, out: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out))
    if kind == "logits":
        return lambda y, out: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True))
    return lambda y, out: tf.reduce_mean(tf.square(out - tf.cast(y, out.dtype)))


def make_optimizer(optimizer: str = "sgd", lr: float | None = None) -> Any:
    """A Keras optimizer: ``sgd``, ``momentum`` or ``adam``, with the learning rate, momentum and Adam's epsilon of
    :func:`backends.common.optimizer_settings` (Keras's own Adam default epsilon, 1e-7, is not used, so the three
    backends' steps agree)."""
    opt = optimizer_settings(optimizer, lr)
    if opt.name == "adam":
        return keras.optimizers.Adam(learning_rate=opt.lr, epsilon=opt.epsilon)
    return keras.optimizers.SGD(learning_rate=opt.lr, momentum=opt.momentum)


def _train_step(model: Any, loss: Callable[[Any, Any], Any], opt: Any, variables: list, x: Any, y: Any) -> Any:
    with tf.GradientTape() as tape:
        value = loss(y, model(x, training=True))
    grads = tape.gradient(value, variables)
    opt.apply_gradients(zip(grads, variables))
    return value


def make_train_step(
    model: Any, spec: ModelSpec, optimizer: str = "sgd", lr: float | None = None
) -> Callable[[Any, Any], Any]:
    """``step(x, y) -> loss``: forward (``training=True``), loss, gradients, one optimizer update.

    The step is a ``tf.function``; the returned loss is a scalar ``tf.Tensor`` of the model's dtype.
    """
    info = _info(model)
    opt = make_optimizer(optimizer, lr)
    loss = loss_fn(spec)
    variables = model.trainable_variables
    with tf.device(info.tf_device):
        opt.build(variables)  # eagerly: creating slot variables inside the first trace is fragile

    step = tf.function(functools.partial(_train_step, model, loss, opt, variables))

    def run(x: Any, y: Any) -> Any:
        with tf.device(info.tf_device):
            return step(x, y)

    return run
