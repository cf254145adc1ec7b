"""Gluon models built from a :class:`ModelSpec`, the neutral weight format, inference and training steps.

The model is an :class:`XfNet` (a ``gluon.nn.HybridSequential``) with exactly one child block per spec
layer, made by its type's builder in :data:`BUILDERS` and named with the prefix ``l<index>_`` so every operator
of the exported symbol graph can be traced back to its spec layer (:mod:`backends.mxnet.flops` relies on this).
Its forward walks the spec's graph
(:func:`analytics.spec.layer_inputs`): each child reads the outputs its layer names (a sequential spec reads
the layer above, the same chain as ``HybridSequential``'s). Layout is NCHW throughout, so inputs and
outputs are in the spec's channels-first layout without transposes.

Where MXNet differs from the spec:

* ``same`` padding: MXNet pads symmetrically only. When TensorFlow's rule gives unequal halves (stride > 1
  or an even window), an explicit ``F.pad`` (zeros for conv, ``-inf`` for max pooling) precedes a
  ``valid`` conv/pool. ``same`` average pooling must not count padded cells (TF rule): with unequal halves
  it is computed as ``avgpool(pad0(x)) / avgpool(pad0(ones))``; with equal halves MXNet's own
  ``count_include_pad=False`` does it.
* Dense is ``nn.Dense(flatten=False)`` (acts on the last axis, so ``(N, T, F)`` works); Flatten is its own
  block. MXNet stores the Dense weight as ``(out, in)``: it is transposed on import/export.
* LSTM is ``gluon.rnn.LSTM(layout="NTC")`` (the fused ``RNN`` operator; gate order i, f, c, o = the
  neutral i, f, g, o). It has two biases: the neutral bias goes to ``i2h_bias``, ``h2h_bias`` is zeroed,
  and export sums them. ``return_sequences=False`` takes the last time step.
* LocalResponseNorm: MXNet's ``LRN`` scales ``alpha`` by ``1/nsize`` like PyTorch and matches it for odd
  sizes; for even sizes its channel window differs, so those (and float64 models: MXNet's ``LRN`` has no
  float64 kernel) are built from ``square``/``Pooling``.
* Softmax (layer or fused activation) is ``softmax`` over the last axis of the channels-first tensor.
* Transformer types (issue 21): LayerNorm is ``nn.LayerNorm(axis=-1)`` (the ``LayerNorm`` operator; its backward
  reads the input and the op's mean and std outputs). ``gelu`` is ``LeakyReLU(act_type="gelu")``, the erf form
  (composed from ``erf`` in float64: that kernel computes in float32); ``gelu_tanh`` is composed (MXNet has only
  the erf form). MultiHeadAttention (MXNet 1.9.1 has no Gluon one) is :class:`_Attention`: four
  ``nn.Dense(flatten=False)``, ``batch_dot`` on ``(N*H, T, K)`` heads, an additive 0/-inf causal mask,
  ``softmax``, ``batch_dot``; neutral kernels are the Dense weights transposed, in the order query, key, value,
  output. PositionEmbedding adds ``slice_axis`` of its ``(length, F)`` table; GlobalAvgPool1D is ``mean(axis=1)``.
  A tied Dense (:class:`_TiedDense`) is ``FullyConnected`` on the Embedding's own Parameter: one parameter, whose
  gradient autograd sums over its two uses (``add_n`` of the lookup's and the head's weight gradients).
* Add is a chain of ``elemwise_add`` (``inputs - 1`` ops); Concatenate is ``Concat`` on the channel axis 1
  of ``(N, C, H, W)``, the last axis otherwise (:func:`analytics.layers.concatenate.concat_axis`).
* BatchNorm is ``nn.BatchNorm`` (the ``BatchNorm`` operator) on axis 1 of ``(N, C, H, W)``, the last axis
  otherwise, ``scale``/``center`` on (``fix_gamma=False``), the spec's ``epsilon``, and Gluon's momentum
  ``1 - m`` (the spec's ``m`` is PyTorch's: running = (1 - m) running + m batch; MXNet's is running =
  momentum running + (1 - momentum) batch). Its four parameters ``gamma``, ``beta``, ``running_mean``,
  ``running_var`` are the neutral slots in that order; the last two have ``grad_req='null'`` (the Trainer
  skips them). Inference (predict mode) normalizes with the running statistics; a training step
  (``train_mode=True``) with the batch's, and MXNet folds the batch's mean and biased variance into the
  running statistics (``tests/test_graph_mxnet.py`` measures the estimator). On the CPU (oneDNN float32 and the
  native float64 kernel alike) this happens in the operator's backward pass (measured: a recorded forward
  without ``backward()`` leaves them unchanged); on a GPU cuDNN's forward-training kernel updates them (source
  reading, not measured here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from xfbench.analytics import layers as L
from xfbench.analytics.layers.add import Add
from xfbench.analytics.layers.base import hw_pads
from xfbench.analytics.layers.batchnorm import BatchNorm
from xfbench.analytics.layers.concatenate import Concatenate, concat_axis
from xfbench.analytics.layers.transformer import GlobalAvgPool1D, LayerNorm, MultiHeadAttention, PositionEmbedding
from xfbench.analytics.shapes import layer_input_shapes, tied_layer
from xfbench.analytics.spec import Layer, ModelSpec, consumers, layer_inputs
from xfbench.analytics.vocab import DTYPES as DTYPE_NAMES
from xfbench.analytics.weights import output_kind, weight_slots
from xfbench.backends.base import NotSupported
from xfbench.backends.common import check_dtype, check_weights, optimizer_settings
from xfbench.backends.mxnet.device import resolve_device

# analytics.vocab's dtypes without bfloat16 (MXNet 1.9 has no bfloat16 GEMM), and float64 (a reference precision).
DTYPES: tuple[str, ...] = (*(d for d in DTYPE_NAMES if d != "bfloat16"), "float64")
# Smallest normal float32: keeps log(p) finite when a probability underflows, and changes nothing else.
_TINY = float(np.finfo(np.float32).tiny)


class XfNet(nn.HybridSequential):
    """A ``HybridSequential`` that remembers its spec, context and the blocks holding each layer's weights, and
    whose forward walks the spec's graph: child ``i`` reads the outputs of the layers its spec layer names."""

    def __init__(self, spec: ModelSpec, ctx: mx.Context, dtype: str) -> None:
        super().__init__(prefix="xf_")
        self.xf_spec = spec
        self.xf_ctx = ctx
        self.xf_dtype = dtype
        # spec layer index -> prefix of the Gluon block owning its parameters (Conv2D, Dense, LSTM, Embedding,
        # BatchNorm). Prefixes, not blocks: Gluon warns about blocks kept in a plain dict.
        self.xf_param_prefix: dict[int, str] = {}
        # per layer, the indices of the layers it reads (-1: the model input), and how many layers read each
        self.xf_inputs: tuple[tuple[int, ...], ...] = layer_inputs(spec)
        self.xf_readers: tuple[int, ...] = tuple(len(c) for c in consumers(spec))

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        outputs: list[Any] = []
        remaining = list(self.xf_readers)
        for block, srcs in zip(self._children.values(), self.xf_inputs):
            outputs.append(block(*(x if j < 0 else outputs[j] for j in srcs)))
            for j in srcs:  # drop what no later layer reads (imperative mode holds the arrays otherwise)
                if j >= 0:
                    remaining[j] -= 1
                    if remaining[j] == 0:
                        outputs[j] = None
        return outputs[-1]


class _Pad(nn.HybridBlock):
    """Explicit (top, bottom, left, right) padding of an NCHW tensor with a constant."""

    def __init__(self, pads: tuple[int, int, int, int], value: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pad_width = (0, 0, 0, 0, *pads)
        self._value = value

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.pad(x, mode="constant", pad_width=self._pad_width, constant_value=self._value)


class _SameAvgPool(nn.HybridBlock):
    """Average pooling over real cells only, with asymmetric (TensorFlow ``same``) padding."""

    def __init__(self, pool: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int], **kwargs: Any):
        super().__init__(**kwargs)
        self._pool = pool
        self._stride = stride
        self._pad_width = (0, 0, 0, 0, *pads)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        def pooled(t: Any) -> Any:
            padded = F.pad(t, mode="constant", pad_width=self._pad_width, constant_value=0.0)
            return F.Pooling(
                padded, kernel=self._pool, stride=self._stride, pool_type="avg", pooling_convention="valid"
            )

        # mean over the window including zeros / fraction of real cells in the window = mean over real cells
        return pooled(x) / pooled(F.ones_like(x))


class _Softmax(nn.HybridBlock):
    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.softmax(x, axis=-1)


class _LastStep(nn.HybridBlock):
    """``(N, T, H) -> (N, H)``: the last time step."""

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.squeeze(F.slice_axis(x, axis=1, begin=-1, end=None), axis=1)


class _LRN(nn.HybridBlock):
    """PyTorch's LRN: ``x / (k + alpha / size * sum_{c - size//2 .. c + (size-1)//2} x^2) ** beta``."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, native: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._size, self._alpha, self._beta, self._k = size, alpha, beta, k
        self._native = native

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        size = self._size
        if size % 2 == 1 and self._native:
            return F.LRN(x, alpha=self._alpha, beta=self._beta, knorm=self._k, nsize=size)
        # Even window: MXNet's LRN centres it differently from PyTorch (and it has no float64 kernel), so
        # average x^2 over channels with explicit zero padding (size//2 before, (size-1)//2 after) by
        # pooling with the channels moved to axis 2.
        sq = F.transpose(F.square(x), axes=(0, 2, 1, 3))  # (N, H, C, W)
        sq = F.pad(sq, mode="constant", pad_width=(0, 0, 0, 0, size // 2, (size - 1) // 2, 0, 0), constant_value=0.0)
        mean = F.Pooling(sq, kernel=(size, 1), stride=(1, 1), pool_type="avg", pooling_convention="valid")
        mean = F.transpose(mean, axes=(0, 2, 1, 3))
        return x / F.power(self._k + self._alpha * mean, self._beta)


class _Add(nn.HybridBlock):
    """The element-wise sum of two or more equal-shape inputs: a chain of ``elemwise_add``."""

    def hybrid_forward(self, F: Any, x: Any, *others: Any) -> Any:
        for other in others:
            x = F.elemwise_add(x, other)
        return x


class _Concat(nn.HybridBlock):
    """``Concat`` of two or more inputs along ``dim`` (of the batched tensor)."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._dim = dim

    def hybrid_forward(self, F: Any, *xs: Any) -> Any:
        return F.concat(*xs, dim=self._dim)


class _Gelu(nn.HybridBlock):
    """GELU, erf form ``0.5 x (1 + erf(x / sqrt 2))``: MXNet's ``LeakyReLU(act_type="gelu")`` (one op). That
    kernel computes in float32 whatever the dtype (mshadow_op.h casts to float; measured: 1.4e-7 from the exact
    form in a float64 model), so a float64 model composes it from ``erf`` (five element-wise ops)."""

    def __init__(self, native: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._native = native

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self._native:
            return F.LeakyReLU(x, act_type="gelu")
        return (F.erf(x * float(1.0 / np.sqrt(2.0))) + 1.0) * x * 0.5


# GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
_GELU_TANH_C = float(np.sqrt(2.0 / np.pi))
_GELU_TANH_A = 0.044715


class _GeluTanh(nn.HybridBlock):
    """GELU, tanh form (MXNet 1.9.1 has only the erf form), composed of nine element-wise ops (= the analytic 9
    FLOPs per element): ``x*x``, ``*a``, ``+1``, ``*x`` (= x + a x^3), ``*c``, ``tanh``, ``+1``, ``*x``,
    ``*0.5``."""

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        inner = (x * x * _GELU_TANH_A + 1.0) * x * _GELU_TANH_C
        return (F.tanh(inner) + 1.0) * x * 0.5


def _activation_block(kind: str, prefix: str, dtype: str = "float32") -> nn.HybridBlock:
    if kind == "softmax":
        return _Softmax(prefix=prefix)
    if kind == "gelu":
        return _Gelu(native=dtype != "float64", prefix=prefix)
    if kind == "gelu_tanh":
        return _GeluTanh(prefix=prefix)
    return nn.Activation(kind, prefix=prefix)


class _Attention(nn.HybridBlock):
    """Multi-head attention composed from explicit ops (MXNet 1.9.1 has no Gluon MultiHeadAttention): four
    ``nn.Dense(flatten=False)`` (``query_``, ``key_``, ``value_``, ``output_``), each projection reshaped
    ``(N, L, H*K) -> (N*H, L, K)``, ``batch_dot(q * 1/sqrt(K), k, transpose_b=True)`` -> scores ``(N*H, T, S)``,
    when causal ``+ log(1 - [s > t])`` (0 or -inf, built from ``arange_like``: no constant, no parameter),
    ``softmax`` over keys, ``batch_dot(p, v)``, back to ``(N, T, H*K)``, output projection."""

    def __init__(self, heads: int, key_dim: int, causal: bool, use_bias: bool, f: int, fk: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._heads, self._key_dim, self._causal = heads, key_dim, causal
        hk = heads * key_dim
        with self.name_scope():
            self.query = nn.Dense(hk, use_bias=use_bias, flatten=False, in_units=f, prefix="query_")
            self.key = nn.Dense(hk, use_bias=use_bias, flatten=False, in_units=fk, prefix="key_")
            self.value = nn.Dense(hk, use_bias=use_bias, flatten=False, in_units=fk, prefix="value_")
            self.output = nn.Dense(f, use_bias=use_bias, flatten=False, in_units=hk, prefix="output_")

    def _heads_first(self, F: Any, x: Any) -> Any:
        """``(N, L, H*K) -> (N*H, L, K)``."""
        x = F.reshape(x, shape=(0, 0, self._heads, self._key_dim))
        return F.reshape(F.transpose(x, axes=(0, 2, 1, 3)), shape=(-3, 0, 0))

    def hybrid_forward(self, F: Any, xq: Any, *kv: Any) -> Any:
        xkv = kv[0] if kv else xq
        q = self._heads_first(F, self.query(xq))
        k = self._heads_first(F, self.key(xkv))
        v = self._heads_first(F, self.value(xkv))
        scores = F.batch_dot(q * (1.0 / float(np.sqrt(self._key_dim))), k, transpose_b=True)  # (N*H, T, S)
        if self._causal:
            rows = F.reshape(F.contrib.arange_like(scores, axis=1), shape=(-1, 1))  # t
            cols = F.reshape(F.contrib.arange_like(scores, axis=2), shape=(1, -1))  # s
            hidden = F.broadcast_greater(cols, rows)  # (T, S): 1 where s > t
            scores = F.broadcast_add(scores, F.expand_dims(F.log(1.0 - hidden), axis=0))
        p = F.softmax(scores, axis=-1)
        o = F.batch_dot(p, v)  # (N*H, T, K)
        o = F.transpose(F.reshape(o, shape=(-4, -1, self._heads, 0, 0)), axes=(0, 2, 1, 3))  # (N, T, H, K)
        return self.output(F.reshape(o, shape=(0, 0, -3)))


class _PositionEmbedding(nn.HybridBlock):
    """``x + table[:T]`` with a learned ``(length, F)`` table (``slice_axis`` when ``length > T``)."""

    def __init__(self, length: int, t: int, f: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._length, self._t = length, t
        with self.name_scope():
            self.embeddings = self.params.get("embeddings", shape=(length, f))

    def hybrid_forward(self, F: Any, x: Any, embeddings: Any) -> Any:
        table = embeddings
        if self._length != self._t:
            table = F.slice_axis(table, axis=0, begin=0, end=self._t)
        return F.broadcast_add(x, F.expand_dims(table, axis=0))


class _Mean1D(nn.HybridBlock):
    """``(N, T, F) -> (N, F)``: the mean over time."""

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.mean(x, axis=1)


class _TiedDense(nn.HybridBlock):
    """A Dense whose weight is an Embedding's ``(vocab, dim)`` Parameter (the same object: one parameter, one
    gradient, summed over its two uses by autograd): ``FullyConnected(x, emb_weight, flatten=False)`` = ``x
    @ emb_weight^T``, plus an own bias with ``use_bias``."""

    def __init__(self, weight: gluon.Parameter, units: int, use_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._units, self._use_bias = units, use_bias
        self.params.update({weight.name: weight})  # collect_params holds it once (same name, same object)
        self.weight = weight
        if use_bias:
            with self.name_scope():
                self.bias = self.params.get("bias", shape=(units,), init="zeros")

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        return F.FullyConnected(x, weight, bias, num_hidden=self._units, no_bias=bias is None, flatten=False)


def _add_block(net: XfNet, i: int, layer: Add, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    return _Add(prefix=prefix)


def _concat_block(net: XfNet, i: int, layer: Concatenate, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    return _Concat(1 + concat_axis(in_shape), prefix=prefix)


def _batchnorm_block(net: XfNet, i: int, layer: BatchNorm, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    channel_axis = 0 if len(in_shape) == 3 else len(in_shape) - 1  # C of (C, H, W), else the last axis
    bn = nn.BatchNorm(
        axis=1 + channel_axis,
        momentum=1.0 - layer.momentum,
        epsilon=layer.epsilon,
        center=True,
        scale=True,
        in_channels=in_shape[channel_axis],
        prefix=prefix,
    )
    net.xf_param_prefix[i] = bn.prefix
    return bn


def _conv_block(net: XfNet, i: int, layer: L.Conv2D, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    pads = hw_pads(layer.padding, in_shape, layer.kernel, layer.stride)  # type: ignore[arg-type]
    symmetric = pads[0] == pads[1] and pads[2] == pads[3]
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        if not symmetric:
            seq.add(_Pad(pads, 0.0, prefix="pad_"))
        fused = layer.activation if layer.activation in ("relu", "sigmoid", "tanh") else None
        conv = nn.Conv2D(
            layer.filters,
            layer.kernel,
            strides=layer.stride,
            padding=(pads[0], pads[2]) if symmetric else (0, 0),
            use_bias=layer.use_bias,
            activation=fused,
            in_channels=in_shape[0],
            prefix="conv_",
        )
        seq.add(conv)
        if layer.activation is not None and fused is None:
            seq.add(_activation_block(layer.activation, f"{layer.activation}_", net.xf_dtype))
    net.xf_param_prefix[i] = conv.prefix
    return seq


def _pool_block(
    net: XfNet, i: int, layer: L.MaxPool2D | L.AvgPool2D, in_shape: tuple[int, ...], prefix: str
) -> nn.HybridBlock:
    """MaxPool2D and AvgPool2D."""
    pads = hw_pads(layer.padding, in_shape, layer.pool, layer.stride)  # type: ignore[arg-type]
    symmetric = pads[0] == pads[1] and pads[2] == pads[3]
    is_max = isinstance(layer, L.MaxPool2D)
    if not symmetric and not is_max:
        return _SameAvgPool(layer.pool, layer.stride, pads, prefix=prefix)  # type: ignore[arg-type]
    pool_cls = nn.MaxPool2D if is_max else nn.AvgPool2D
    kwargs: dict[str, Any] = {"pool_size": layer.pool, "strides": layer.stride, "ceil_mode": False}
    if not is_max:
        # explicit int padding counts the zeros (PyTorch); `same` averages real cells only (TF).
        kwargs["count_include_pad"] = layer.padding != "same"
    if symmetric:
        return pool_cls(padding=(pads[0], pads[2]), prefix=prefix, **kwargs)
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        seq.add(_Pad(pads, -np.inf, prefix="pad_"))  # padded cells never win the max
        seq.add(pool_cls(padding=(0, 0), prefix="pool_", **kwargs))
    return seq


def _global_avg_pool_block(
    net: XfNet, i: int, layer: L.GlobalAvgPool2D, in_shape: tuple[int, ...], prefix: str
) -> nn.HybridBlock:
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        seq.add(nn.GlobalAvgPool2D(prefix="gap_"))
        seq.add(nn.Flatten(prefix="flatten_"))
    return seq


def _dense_block(net: XfNet, i: int, layer: L.Dense, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    fused = layer.activation if layer.activation in ("relu", "sigmoid", "tanh") else None

    def dense(block_prefix: str) -> nn.HybridBlock:
        blk = nn.Dense(
            layer.units,
            activation=fused,
            use_bias=layer.use_bias,
            flatten=False,
            in_units=in_shape[-1],
            prefix=block_prefix,
        )
        net.xf_param_prefix[i] = blk.prefix
        return blk

    def tied(block_prefix: str) -> nn.HybridBlock:
        emb = list(net._children.values())[tied_layer(net.xf_spec, i)]
        blk = _TiedDense(emb.weight, layer.units, layer.use_bias, prefix=block_prefix)
        net.xf_param_prefix[i] = blk.prefix
        return blk

    make = tied if layer.tie else dense
    if layer.activation is None or fused is not None:
        return make(prefix)
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        seq.add(make("dense_"))
        seq.add(_activation_block(layer.activation, f"{layer.activation}_", net.xf_dtype))
    return seq


def _flatten_block(net: XfNet, i: int, layer: L.Flatten, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    return nn.Flatten(prefix=prefix)


def _activation_layer_block(
    net: XfNet, i: int, layer: L.Activation, in_shape: tuple[int, ...], prefix: str
) -> nn.HybridBlock:
    return _activation_block(layer.kind, prefix, net.xf_dtype)


def _dropout_block(net: XfNet, i: int, layer: L.Dropout, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    return nn.Dropout(layer.rate, prefix=prefix)


def _lrn_block(
    net: XfNet,
    i: int,
    layer: L.LocalResponseNorm,
    in_shape: tuple[int, ...],
    prefix: str,
) -> nn.HybridBlock:
    native = net.xf_dtype != "float64"
    return _LRN(layer.size, layer.alpha, layer.beta, layer.k, native=native, prefix=prefix)


def _lstm_block(net: XfNet, i: int, layer: L.LSTM, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    if layer.return_sequences:
        lstm = gluon.rnn.LSTM(layer.units, layout="NTC", input_size=in_shape[-1], prefix=prefix)
        net.xf_param_prefix[i] = lstm.prefix
        return lstm
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        lstm = gluon.rnn.LSTM(layer.units, layout="NTC", input_size=in_shape[-1], prefix="lstm_")
        seq.add(lstm)
        seq.add(_LastStep(prefix="last_"))
    net.xf_param_prefix[i] = lstm.prefix
    return seq


def _embedding_block(net: XfNet, i: int, layer: L.Embedding, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    emb = nn.Embedding(layer.vocab, layer.dim, prefix=prefix)
    net.xf_param_prefix[i] = emb.prefix
    return emb


def _layernorm_block(net: XfNet, i: int, layer: LayerNorm, in_shape: tuple[int, ...], prefix: str) -> nn.HybridBlock:
    ln = nn.LayerNorm(axis=-1, epsilon=layer.epsilon, in_channels=in_shape[-1], prefix=prefix)
    net.xf_param_prefix[i] = ln.prefix
    return ln


def _attention_block(
    net: XfNet, i: int, layer: MultiHeadAttention, in_shape: tuple[int, ...], prefix: str
) -> nn.HybridBlock:
    fk = layer_input_shapes(net.xf_spec)[i][-1][-1]  # the key/value input's features (the query's when one)
    blk = _Attention(layer.heads, layer.key_dim, layer.causal, layer.use_bias, in_shape[-1], fk, prefix=prefix)
    net.xf_param_prefix[i] = blk.prefix
    return blk


def _position_block(
    net: XfNet, i: int, layer: PositionEmbedding, in_shape: tuple[int, ...], prefix: str
) -> nn.HybridBlock:
    blk = _PositionEmbedding(layer.rows([in_shape]), in_shape[0], in_shape[-1], prefix=prefix)
    net.xf_param_prefix[i] = blk.prefix
    return blk


def _global_avg_pool_1d_block(
    net: XfNet, i: int, layer: GlobalAvgPool1D, in_shape: tuple[int, ...], prefix: str
) -> nn.HybridBlock:
    return _Mean1D(prefix=prefix)


#: A builder: ``(net, i, layer, in_shape, prefix) -> block`` for spec layer ``i``, whose (first) input has the
#: per-sample shape ``in_shape``; the block is named ``prefix`` (``l<i>_``), and a block with parameters registers
#: its parameter block's prefix in ``net.xf_param_prefix``.
Builder = Callable[[XfNet, int, Any, tuple[int, ...], str], nn.HybridBlock]

#: One builder per layer type, keyed by its class (tests/test_graph_mxnet.py checks it against
#: analytics.layers.LAYER_TYPES).
BUILDERS: dict[type[Layer], Builder] = {
    L.Conv2D: _conv_block,
    L.MaxPool2D: _pool_block,
    L.AvgPool2D: _pool_block,
    L.GlobalAvgPool2D: _global_avg_pool_block,
    L.Dense: _dense_block,
    L.Flatten: _flatten_block,
    L.Activation: _activation_layer_block,
    L.Dropout: _dropout_block,
    L.LocalResponseNorm: _lrn_block,
    L.LSTM: _lstm_block,
    L.Embedding: _embedding_block,
    Add: _add_block,
    Concatenate: _concat_block,
    BatchNorm: _batchnorm_block,
    LayerNorm: _layernorm_block,
    MultiHeadAttention: _attention_block,
    PositionEmbedding: _position_block,
    GlobalAvgPool1D: _global_avg_pool_1d_block,
}


def _layer_block(net: XfNet, i: int, layer: Layer, in_shape: tuple[int, ...]) -> nn.HybridBlock:
    """One Gluon block for spec layer ``i`` (prefix ``l<i>_``), from its type's builder in :data:`BUILDERS`;
    registers its parameter block on ``net``. ``in_shape``: the per-sample shape of its (first) input."""
    builder = BUILDERS.get(type(layer))
    if builder is None:
        raise NotSupported(f"layer type {layer.type} is not supported with mxnet")
    return builder(net, i, layer, in_shape, f"l{i}_")


def build_model(
    spec: ModelSpec, device: str = "cpu", dtype: str = "float32", seed: int = 0, init: bool = True
) -> XfNet:
    """A hybridized Gluon :class:`XfNet` for ``spec`` (sequential or a graph), initialized on ``device``.

    Weights are Xavier-normal (fan-in, magnitude 2) with zero biases (BatchNorm: gamma 1, beta 0, running mean 0,
    running variance 1, Gluon's own initializers), from MXNet's global RNG seeded
    with ``seed``; ``init=False``: zeros, for a caller that loads weights next (MXNet's CPU draw of
    VGG-11's 129M weights took 7 s on the project's 2-core CPU). ``dtype`` is one of ``float32``,
    ``float16``, ``float64`` (inputs must then be cast by the caller; MXNet's LRN has no
    float64 kernel, and float16 needs a GPU: MXNet has no CPU FP16 GEMM, so it raises :class:`NotSupported` on
    the CPU).
    """
    check_dtype(dtype, "mxnet", DTYPES)
    ctx = resolve_device(device)
    if dtype == "float16" and ctx.device_type == "cpu":
        raise NotSupported("float16 on the CPU is not supported with mxnet (it has no CPU FP16 GEMM)")
    net = XfNet(spec, ctx, dtype)
    for i, (layer, in_shapes) in enumerate(zip(spec.layers, layer_input_shapes(spec))):
        net.add(_layer_block(net, i, layer, tuple(in_shapes[0])))
    if init:
        mx.random.seed(seed)
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2.0), ctx=ctx)
    else:
        # Seeding still runs: it sets up MXNet's random resources, which a first step otherwise pays (measured,
        # mlp inference at batch 64, 3 forked repeats: 7.44 MB without the seed, 2.30 MB with it, as with Xavier).
        mx.random.seed(seed)
        net.initialize(mx.init.Zero(), ctx=ctx)
    if dtype != "float32":
        net.cast(dtype)
    net.hybridize(static_alloc=True)
    return net


def _params_of(model: XfNet, index: int) -> dict[str, gluon.Parameter]:
    """Spec layer ``index``'s parameters keyed by name without the block prefix (``weight``, ``l0_i2h_bias``)."""
    prefix = model.xf_param_prefix[index]
    return {name[len(prefix) :]: p for name, p in model.collect_params().items() if name.startswith(prefix)}


# Neutral BatchNorm slot -> Gluon parameter name (without the block prefix).
_BN_PARAMS = {"gamma": "gamma", "beta": "beta", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _mx_slots(model: XfNet) -> list[tuple[gluon.Parameter, Callable[[np.ndarray], np.ndarray]]]:
    """``(parameter, neutral -> MXNet layout)`` per neutral slot, in :func:`weight_slots` order."""
    out: list[tuple[gluon.Parameter, Callable[[np.ndarray], np.ndarray]]] = []
    for slot in weight_slots(model.xf_spec):
        layer = model.xf_spec.layers[slot.layer]
        params = _params_of(model, slot.layer)
        if isinstance(layer, L.Conv2D):
            out.append((params["weight" if slot.param == "kernel" else "bias"], lambda a: a))
        elif isinstance(layer, MultiHeadAttention):
            proj, kind = slot.param.split("_")
            transpose = kind == "kernel"
            param = params[f"{proj}_{'weight' if transpose else 'bias'}"]
            out.append((param, (lambda a: a.T) if transpose else (lambda a: a)))
        elif isinstance(layer, (LayerNorm, PositionEmbedding)):
            out.append((params[slot.param], lambda a: a))
        elif isinstance(layer, L.Dense):
            if slot.param == "kernel":
                out.append((params["weight"], lambda a: a.T))
            else:
                out.append((params["bias"], lambda a: a))
        elif isinstance(layer, L.LSTM):
            key = {"kernel": "l0_i2h_weight", "recurrent_kernel": "l0_h2h_weight", "bias": "l0_i2h_bias"}[slot.param]
            out.append((params[key], (lambda a: a) if slot.param == "bias" else (lambda a: a.T)))
        elif isinstance(layer, L.Embedding):
            out.append((params["weight"], lambda a: a))
        elif isinstance(layer, BatchNorm):
            out.append((params[_BN_PARAMS[slot.param]], lambda a: a))
        else:
            raise NotSupported(f"weight slot {slot.param} of layer type {layer.type} is not supported with mxnet")
    return out


def set_weights(model: XfNet, weights: Sequence[np.ndarray]) -> None:
    """Loads neutral-format weights (:mod:`analytics.weights`; count and shapes checked by
    :func:`backends.common.check_weights`); zeroes each LSTM's ``h2h_bias``."""
    check_weights(model.xf_spec, weights)
    for (param, to_mx), arr in zip(_mx_slots(model), weights):
        view = to_mx(np.asarray(arr))
        if view.ndim == 2 and not view.flags.c_contiguous and view.T.flags.c_contiguous:
            # A transposed kernel: MXNet's transpose op is faster than numpy's strided copy (VGG's 25088x4096
            # dense kernel: 1.0 s against 1.8 s).
            param.set_data(mx.nd.array(view.T, dtype=param.dtype).T)
        else:
            # param.dtype: the model's, except BatchNorm's in a float16 model (Gluon keeps those float32)
            param.set_data(mx.nd.array(np.ascontiguousarray(view), dtype=param.dtype))
    for i, layer in enumerate(model.xf_spec.layers):
        if isinstance(layer, L.LSTM):
            h2h_bias = _params_of(model, i)["l0_h2h_bias"]
            h2h_bias.set_data(mx.nd.zeros(h2h_bias.shape, dtype=model.xf_dtype))


def get_weights(model: XfNet) -> list[np.ndarray]:
    """The model's weights in the neutral format (each LSTM's two biases summed)."""
    out: list[np.ndarray] = []
    for slot, (param, _) in zip(weight_slots(model.xf_spec), _mx_slots(model)):
        arr = param.data().asnumpy()
        layer = model.xf_spec.layers[slot.layer]
        if (slot.param in ("kernel", "recurrent_kernel") and isinstance(layer, (L.Dense, L.LSTM))) or (
            isinstance(layer, MultiHeadAttention) and slot.param.endswith("_kernel")
        ):
            arr = arr.T
        elif slot.param == "bias" and isinstance(layer, L.LSTM):
            arr = arr + _params_of(model, slot.layer)["l0_h2h_bias"].data().asnumpy()
        out.append(np.ascontiguousarray(arr))
    return out


def count_params(model: nn.Block) -> int:
    """Number of scalars in ``model.collect_params()`` (an MXNet LSTM counts both of its biases, 8h; a BatchNorm
    its running statistics too, 4C: they are parameters with ``grad_req='null'``, as :mod:`analytics.costs`
    counts under ``mxnet``)."""
    return int(sum(int(np.prod(p.shape)) for p in model.collect_params().values()))


def to_device(array: Any, device: str | mx.Context, dtype: str | None = None) -> mx.nd.NDArray:
    """An ``NDArray`` on ``device``; floating arrays are cast to ``dtype`` (default: the array's own)."""
    ctx = resolve_device(device)
    if isinstance(array, mx.nd.NDArray):
        return array.as_in_context(ctx)
    arr = np.asarray(array)
    target = dtype if dtype is not None and np.issubdtype(arr.dtype, np.floating) else arr.dtype
    return mx.nd.array(arr, ctx=ctx, dtype=target)


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy copy of an ``NDArray`` (waits for it to be computed)."""
    if isinstance(tensor, mx.nd.NDArray):
        return tensor.asnumpy()
    return np.asarray(tensor)


def _as_input(model: XfNet, x: Any) -> mx.nd.NDArray:
    """``x`` on the model's context; float inputs in the model's dtype, integer tokens unchanged."""
    if not isinstance(x, mx.nd.NDArray):
        x = to_device(x, model.xf_ctx)
    elif x.context != model.xf_ctx:
        x = x.as_in_context(model.xf_ctx)
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.dtype(model.xf_dtype):
        x = x.astype(model.xf_dtype)
    return x


def infer(model: XfNet, x: Any) -> mx.nd.NDArray:
    """Inference forward pass (predict mode: Dropout is the identity; nothing is recorded for autograd).

    The result is queued asynchronously; :func:`backends.mxnet.device.synchronize` or ``to_numpy`` waits.
    """
    with autograd.predict_mode():
        return model(_as_input(model, x))


def _loss_fn(kind: str) -> Callable[[mx.nd.NDArray, mx.nd.NDArray], mx.nd.NDArray]:
    F = mx.nd
    if kind == "probs":
        # sparse categorical cross-entropy on probabilities, mean over every label position
        return lambda out, y: -F.mean(F.log(F.maximum(F.pick(out, y, axis=-1), _TINY)))
    if kind == "logits":
        return lambda out, y: -F.mean(F.pick(F.log_softmax(out, axis=-1), y, axis=-1))
    return lambda out, y: F.mean(F.square(out - y))


def make_train_step(
    model: XfNet, spec: ModelSpec, optimizer: str = "sgd", lr: float | None = None
) -> Callable[[Any, Any], mx.nd.NDArray]:
    """``step(x, y) -> loss``: forward in train mode (Dropout active, BatchNorm on the batch's statistics), loss,
    backward (on the CPU, where MXNet's BatchNorm also updates its running statistics), one optimizer update.

    The loss is a mean over the batch (:func:`analytics.weights.output_kind`), so ``trainer.step(1)`` is
    called: Gluon's ``step(batch_size)`` divides gradients by ``batch_size``, which would average twice.
    Optimizers: ``sgd``, ``momentum`` (MXNet ``sgd`` with a momentum), ``adam`` (MXNet's beta1 0.9 and beta2
    0.999), with the learning rate, momentum and Adam's epsilon of :func:`backends.common.optimizer_settings`.
    The returned loss ``NDArray`` is not yet synchronized.
    """
    opt = optimizer_settings(optimizer, lr)
    if opt.name == "adam":
        settings = {"learning_rate": opt.lr, "epsilon": opt.epsilon}
        trainer = gluon.Trainer(model.collect_params(), "adam", settings)
    else:
        trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": opt.lr, "momentum": opt.momentum})
    loss_fn = _loss_fn(output_kind(spec))
    regression = output_kind(spec) == "regression"

    def step(x: Any, y: Any) -> mx.nd.NDArray:
        xb = _as_input(model, x)
        yb = y if isinstance(y, mx.nd.NDArray) else to_device(y, model.xf_ctx)
        yb = yb.as_in_context(model.xf_ctx)
        if regression and yb.dtype != np.dtype(model.xf_dtype):
            yb = yb.astype(model.xf_dtype)
        with autograd.record(train_mode=True):
            loss = loss_fn(model(xb), yb)
        loss.backward()
        trainer.step(1)
        return loss

    return step
