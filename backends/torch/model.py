"""Builds a spec as a ``torch.nn.Module`` and moves weights in and out in the neutral format.

The model holds one module per spec layer in ``model.layers`` (an ``nn.ModuleList``), so spec layer ``i``
is ``model.layers[i]``. Layouts (see :mod:`analytics.weights`): PyTorch is channels-first like the spec,
so conv kernels (OIHW) and Flatten order need no permutation; ``nn.Linear`` stores ``kernel.T``; ``nn.LSTM``
stores ``kernel.T`` / ``recurrent_kernel.T`` with the same gate order (i, f, g, o) and two biases
(the neutral bias goes to ``bias_ih``, zeros to ``bias_hh``; export sums them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from xfbench.analytics import layers as L
from xfbench.analytics.shapes import infer_shapes, layer_input_shapes, same_padding, tied_layer
from xfbench.analytics.spec import Layer, ModelSpec, SpecError, consumers, is_sequential, layer_inputs
from xfbench.analytics.vocab import DTYPES as DTYPE_NAMES
from xfbench.analytics.weights import output_kind
from xfbench.backends.common import check_dtype, check_weights, optimizer_settings
from xfbench.backends.torch.device import resolve_device

# analytics.vocab's dtype names -> torch's dtypes (torch.float32, torch.float16, torch.bfloat16).
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Keras clips probabilities to [eps, 1 - eps] before the log in sparse categorical cross-entropy.
PROB_EPS = 1e-7


def _activation_fn(kind: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if kind is None:
        return None
    if kind == "relu":
        return F.relu
    if kind == "sigmoid":
        return torch.sigmoid
    if kind == "tanh":
        return torch.tanh
    if kind == "softmax":
        return lambda t: torch.softmax(t, dim=-1)
    if kind == "gelu":  # the erf form
        return F.gelu
    if kind == "gelu_tanh":  # GPT-2's tanh approximation
        return lambda t: F.gelu(t, approximate="tanh")
    raise ValueError(f"activation {kind!r}; allowed: relu, sigmoid, tanh, softmax, gelu, gelu_tanh")


def _same_pad(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """``F.pad`` amounts ``(left, right, top, bottom)`` of TensorFlow's ``same`` rule for ``x``'s H and W."""
    top, bottom = same_padding(int(x.shape[-2]), kernel[0], stride[0])
    left, right = same_padding(int(x.shape[-1]), kernel[1], stride[1])
    return (left, right, top, bottom)


class SpecLayer(nn.Module):
    """One spec layer. Subclasses with weights override the neutral import/export."""

    def get_neutral(self) -> list[np.ndarray]:
        return []

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        if arrays:
            raise ValueError(f"{type(self).__name__} has no weights")

    def neutral_count(self) -> int:
        return 0


def _export(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # exact upcast; numpy has no bfloat16
    return t.cpu().numpy().copy()


def _assign(param: torch.Tensor, array: np.ndarray) -> None:
    """Copies ``array`` (any non-negative strides, e.g. a transposed view) into ``param``: ``copy_`` does the
    layout change and the dtype cast in one pass (numpy's transposed copy of VGG's 25088x4096 kernel took 1 s)."""
    array = np.asarray(array)
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    with torch.no_grad():
        param.copy_(torch.from_numpy(array))


class ConvLayer(SpecLayer):
    def __init__(self, layer: L.Conv2D, in_channels: int):
        super().__init__()
        kernel, stride = layer.kernel, layer.stride
        assert isinstance(kernel, tuple) and isinstance(stride, tuple)
        self.kernel, self.stride = kernel, stride
        self.same = layer.padding == "same"
        pad = 0 if layer.padding in ("same", "valid") else int(layer.padding)
        self.conv = nn.Conv2d(in_channels, layer.filters, kernel, stride, padding=pad, bias=layer.use_bias)
        self.act = _activation_fn(layer.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            left, right, top, bottom = _same_pad(x, self.kernel, self.stride)
            if left == right and top == bottom:
                # Even halves: the convolution pads inside the op, no padded copy of the input is kept.
                c = self.conv
                y = F.conv2d(x, c.weight, c.bias, c.stride, (top, left))
                return self.act(y) if self.act is not None else y
            x = F.pad(x, (left, right, top, bottom))
        y = self.conv(x)
        return self.act(y) if self.act is not None else y

    def neutral_count(self) -> int:
        return 2 if self.conv.bias is not None else 1

    def get_neutral(self) -> list[np.ndarray]:
        out = [_export(self.conv.weight)]
        if self.conv.bias is not None:
            out.append(_export(self.conv.bias))
        return out

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        _assign(self.conv.weight, arrays[0])
        if self.conv.bias is not None:
            _assign(self.conv.bias, arrays[1])


class PoolLayer(SpecLayer):
    """Max or average pooling; asymmetric (``same``) or oversized padding is applied with ``F.pad`` first."""

    def __init__(self, layer: L.MaxPool2D | L.AvgPool2D):
        super().__init__()
        pool, stride = layer.pool, layer.stride
        assert isinstance(pool, tuple) and isinstance(stride, tuple)
        self.pool, self.stride = pool, stride
        self.is_max = isinstance(layer, L.MaxPool2D)
        self.same = layer.padding == "same"
        self.pad = 0 if layer.padding in ("same", "valid") else int(layer.padding)
        # torch's pooling kernels accept padding only up to half the window.
        self.native_pad = self.pad if all(2 * self.pad <= k for k in pool) else 0
        self._counts: dict[tuple[Any, ...], torch.Tensor] = {}

    def _window(self, x: torch.Tensor, padding: int = 0, *, summed: bool = False) -> torch.Tensor:
        if self.is_max:
            return F.max_pool2d(x, self.pool, self.stride, padding)
        return F.avg_pool2d(
            x, self.pool, self.stride, padding, count_include_pad=True, divisor_override=1 if summed else None
        )

    def _cell_count(self, x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        """How many real (unpadded) cells each ``same`` window covers, shape ``(1, 1, Hout, Wout)``."""
        key = (tuple(x.shape[-2:]), x.device, x.dtype)
        count = self._counts.get(key)
        if count is None:
            ones = F.pad(torch.ones((1, 1, *x.shape[-2:]), device=x.device, dtype=x.dtype), pad)
            count = self._window(ones, summed=True)
            self._counts[key] = count
        return count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            pad = _same_pad(x, self.pool, self.stride)
            if not any(pad):
                return self._window(x)
            if self.is_max:
                return self._window(F.pad(x, pad, value=float("-inf")))
            # TF's `same` average excludes padded cells: window sum / number of real cells.
            return self._window(F.pad(x, pad), summed=True) / self._cell_count(x, pad)
        if self.pad and not self.native_pad:
            fill = float("-inf") if self.is_max else 0.0
            return self._window(F.pad(x, (self.pad,) * 4, value=fill))
        return self._window(x, self.native_pad)


class GlobalAvgPoolLayer(SpecLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class DenseLayer(SpecLayer):
    """``nn.Linear``; a tied head (``tie``) has no weight of its own: :class:`TorchModel` points it at its
    embedding (:meth:`tie_to`) and it computes ``F.linear(x, embedding.weight, bias)``, so the matrix is one
    Parameter with one gradient (the gather's and the head's contributions summed by autograd)."""

    def __init__(self, layer: L.Dense, in_features: int):
        super().__init__()
        self.tied = layer.tie is not None
        if self.tied:
            self.linear: nn.Linear | None = None
            self.bias = nn.Parameter(torch.zeros(layer.units)) if layer.use_bias else None
        else:
            self.linear = nn.Linear(in_features, layer.units, bias=layer.use_bias)
        # the tied EmbeddingLayer, in a tuple so that it is not registered twice as a submodule (its Parameter
        # is read at each forward: moving or materialising the model may replace the Parameter object)
        self._tie: tuple[EmbeddingLayer, ...] = ()
        self.act = _activation_fn(layer.activation)

    def tie_to(self, embedding: EmbeddingLayer) -> None:
        self._tie = (embedding,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear is not None:
            y = self.linear(x)
        else:
            if not self._tie:
                raise RuntimeError("a tied Dense needs tie_to(embedding) before its first forward")
            y = F.linear(x, self._tie[0].embedding.weight, self.bias)
        return self.act(y) if self.act is not None else y

    def _bias(self) -> torch.Tensor | None:
        return self.bias if self.linear is None else self.linear.bias

    def neutral_count(self) -> int:
        return (0 if self.tied else 1) + (1 if self._bias() is not None else 0)

    def get_neutral(self) -> list[np.ndarray]:
        out = [] if self.linear is None else [_export(self.linear.weight).T.copy()]
        bias = self._bias()
        if bias is not None:
            out.append(_export(bias))
        return out

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        pos = 0
        if self.linear is not None:
            _assign(self.linear.weight, np.asarray(arrays[0]).T)
            pos = 1
        bias = self._bias()
        if bias is not None:
            _assign(bias, arrays[pos])


class FlattenLayer(SpecLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)  # NCHW is already the spec's (C, H, W) order


class ActivationLayer(SpecLayer):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        fn = _activation_fn(kind)
        assert fn is not None
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class DropoutLayer(SpecLayer):
    def __init__(self, rate: float):
        super().__init__()
        self.dropout = nn.Dropout(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x)


class LRNLayer(SpecLayer):
    def __init__(self, layer: L.LocalResponseNorm):
        super().__init__()
        # nn.LocalResponseNorm is exactly the spec's definition (alpha divided by size).
        self.lrn = nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrn(x)


class LSTMLayer(SpecLayer):
    def __init__(self, layer: L.LSTM, in_features: int):
        super().__init__()
        self.return_sequences = layer.return_sequences
        self.lstm = nn.LSTM(in_features, layer.units, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # zero initial state
        return out if self.return_sequences else out[:, -1]

    def neutral_count(self) -> int:
        return 3

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0`` (gate rows in order i, f, g, o)."""
        w_ih, w_hh, b_ih, b_hh = (
            self.lstm.get_parameter(n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        )
        return w_ih, w_hh, b_ih, b_hh

    def get_neutral(self) -> list[np.ndarray]:
        w_ih, w_hh, b_ih, b_hh = self._params()
        return [_export(w_ih).T.copy(), _export(w_hh).T.copy(), _export(b_ih) + _export(b_hh)]

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        w_ih, w_hh, b_ih, b_hh = self._params()
        _assign(w_ih, np.asarray(arrays[0]).T)
        _assign(w_hh, np.asarray(arrays[1]).T)
        _assign(b_ih, arrays[2])
        with torch.no_grad():
            b_hh.zero_()


class EmbeddingLayer(SpecLayer):
    def __init__(self, layer: L.Embedding):
        super().__init__()
        self.embedding = nn.Embedding(layer.vocab, layer.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long())

    def neutral_count(self) -> int:
        return 1

    def get_neutral(self) -> list[np.ndarray]:
        return [_export(self.embedding.weight)]

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        _assign(self.embedding.weight, arrays[0])


class AddLayer(SpecLayer):
    """``Add``: the sum of its inputs."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out + x
        return out


class ConcatLayer(SpecLayer):
    """``Concatenate``: channels of ``(N, C, H, W)``, the last axis otherwise."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1 if xs[0].dim() == 4 else -1)


class BatchNormLayer(SpecLayer):
    """``BatchNorm``: ``nn.BatchNorm2d`` per channel of an image, ``nn.BatchNorm1d`` per feature otherwise (a
    ``(N, T, F)`` input is normalized as ``(N*T, F)``: the statistics run over N and T). The spec's momentum is
    PyTorch's own; the running variance PyTorch stores is the unbiased one (``analytics/layers/batchnorm.py``)."""

    def __init__(self, layer: L.BatchNorm, in_shape: tuple[int, ...]):
        super().__init__()
        c = in_shape[0] if len(in_shape) == 3 else in_shape[-1]
        cls = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        self.bn = cls(c, eps=layer.epsilon, momentum=layer.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            n, t, f = x.shape
            return self.bn(x.reshape(n * t, f)).reshape(n, t, f)
        return self.bn(x)

    def neutral_count(self) -> int:
        return 4

    def get_neutral(self) -> list[np.ndarray]:
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        return [_export(bn.weight), _export(bn.bias), _export(bn.running_mean), _export(bn.running_var)]

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        for target, array in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), arrays):
            _assign(target, array)


class LayerNormLayer(SpecLayer):
    """``LayerNorm``: ``nn.LayerNorm`` over the last axis (aten.native_layer_norm; saves the input, mean and
    rstd for backward). Neutral weights: gamma, beta."""

    def __init__(self, layer: L.LayerNorm, in_shape: tuple[int, ...]):
        super().__init__()
        self.norm = nn.LayerNorm(in_shape[-1], eps=layer.epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def neutral_count(self) -> int:
        return 2

    def get_neutral(self) -> list[np.ndarray]:
        return [_export(self.norm.weight), _export(self.norm.bias)]

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        _assign(self.norm.weight, arrays[0])
        _assign(self.norm.bias, arrays[1])


class MultiHeadAttentionLayer(SpecLayer):
    """``MultiHeadAttention`` on the math path (no ``scaled_dot_product_attention``): four ``nn.Linear``
    (query, key, value, output), ``matmul(q / sqrt(K), k^T)`` per head (bmm), the causal mask by
    ``masked_fill`` with -inf, ``softmax``, ``matmul(p, v)`` (bmm), the output projection. FlopCounterMode sees
    every product. Kept for backward (torch 2.13 CPU, traced): the projections' inputs, at::matmul's contiguous
    copies of ``q / sqrt(K)`` ``(N*H, T, K)``, ``k^T`` ``(N*H, K, S)`` and ``v`` ``(N*H, S, K)``, the probability
    matrix per head (softmax's output, read by its backward and by ``P V``'s), the merged heads ``(N, T, HK)``
    for the output projection, and the mask; not the scores (masked_fill's backward needs only the mask).
    One input: self-attention; two: ``[query, key_value]``.

    Neutral weights (:mod:`analytics.layers.transformer`): kernels ``(in, out)`` = ``Linear.weight.T`` and
    biases, in the order query, key, value, output."""

    mask: torch.Tensor  # (T, S) bool, True where key s is hidden from query t (causal only)

    def __init__(self, layer: L.MultiHeadAttention, in_shapes: Sequence[tuple[int, ...]]):
        super().__init__()
        t, f = in_shapes[0]
        s, fk = in_shapes[-1]
        h, k = layer.heads, layer.key_dim
        self.heads, self.key_dim, self.causal = h, k, layer.causal
        bias = layer.use_bias
        self.query = nn.Linear(f, h * k, bias=bias)
        self.key = nn.Linear(fk, h * k, bias=bias)
        self.value = nn.Linear(fk, h * k, bias=bias)
        self.output = nn.Linear(h * k, f, bias=bias)
        if self.causal:
            # key s is hidden from query t where s > t; sliced to (T, S) at each call
            self.register_buffer("mask", torch.ones(t, s, dtype=torch.bool).triu(1), persistent=False)

    def init_buffers(self) -> None:
        """Refills the causal mask (``Module.to_empty`` leaves buffers uninitialised)."""
        if self.causal:
            with torch.no_grad():
                self.mask.copy_(torch.ones_like(self.mask).triu(1))

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor | None = None) -> torch.Tensor:
        if xkv is None:
            xkv = xq
        n, t, _ = xq.shape
        s = xkv.shape[1]
        h, k = self.heads, self.key_dim
        q = self.query(xq).view(n, t, h, k).transpose(1, 2)  # (N, H, T, K)
        key = self.key(xkv).view(n, s, h, k).transpose(1, 2)  # (N, H, S, K)
        v = self.value(xkv).view(n, s, h, k).transpose(1, 2)
        scores = torch.matmul(q * (1.0 / math.sqrt(k)), key.transpose(-2, -1))  # (N, H, T, S)
        if self.causal:
            scores = scores.masked_fill(self.mask[:t, :s], float("-inf"))
        p = torch.softmax(scores, dim=-1)
        o = torch.matmul(p, v).transpose(1, 2).reshape(n, t, h * k)
        return self.output(o)

    def _linears(self) -> list[nn.Linear]:
        return [self.query, self.key, self.value, self.output]

    def neutral_count(self) -> int:
        return 8 if self.query.bias is not None else 4

    def get_neutral(self) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for lin in self._linears():
            out.append(_export(lin.weight).T.copy())
            if lin.bias is not None:
                out.append(_export(lin.bias))
        return out

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        pos = 0
        for lin in self._linears():
            _assign(lin.weight, np.asarray(arrays[pos]).T)
            pos += 1
            if lin.bias is not None:
                _assign(lin.bias, arrays[pos])
                pos += 1


class PositionEmbeddingLayer(SpecLayer):
    """``PositionEmbedding``: a ``(length, F)`` Parameter whose first ``T`` rows are added to the input."""

    def __init__(self, layer: L.PositionEmbedding, in_shape: tuple[int, ...]):
        super().__init__()
        t, f = in_shape
        self.table = nn.Parameter(torch.zeros(layer.length if layer.length is not None else t, f))
        nn.init.normal_(self.table)  # nn.Embedding's default initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[1]]

    def neutral_count(self) -> int:
        return 1

    def get_neutral(self) -> list[np.ndarray]:
        return [_export(self.table)]

    def set_neutral(self, arrays: Sequence[np.ndarray]) -> None:
        _assign(self.table, arrays[0])


class GlobalAvgPool1DLayer(SpecLayer):
    """``GlobalAvgPool1D``: mean over time, ``(N, T, F) -> (N, F)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


#: One builder per layer type, from the layer and its inputs' per-sample shapes (the completeness test in
#: tests/test_graph_torch.py checks it against analytics.layers.LAYER_TYPES).
BUILDERS: dict[type[Layer], Callable[[Any, list[tuple[int, ...]]], SpecLayer]] = {
    L.Conv2D: lambda layer, shapes: ConvLayer(layer, shapes[0][0]),
    L.MaxPool2D: lambda layer, shapes: PoolLayer(layer),
    L.AvgPool2D: lambda layer, shapes: PoolLayer(layer),
    L.GlobalAvgPool2D: lambda layer, shapes: GlobalAvgPoolLayer(),
    L.Dense: lambda layer, shapes: DenseLayer(layer, shapes[0][-1]),
    L.Flatten: lambda layer, shapes: FlattenLayer(),
    L.Activation: lambda layer, shapes: ActivationLayer(layer.kind),
    L.Dropout: lambda layer, shapes: DropoutLayer(layer.rate),
    L.LocalResponseNorm: lambda layer, shapes: LRNLayer(layer),
    L.LSTM: lambda layer, shapes: LSTMLayer(layer, shapes[0][-1]),
    L.Embedding: lambda layer, shapes: EmbeddingLayer(layer),
    L.Add: lambda layer, shapes: AddLayer(),
    L.Concatenate: lambda layer, shapes: ConcatLayer(),
    L.BatchNorm: lambda layer, shapes: BatchNormLayer(layer, shapes[0]),
    L.LayerNorm: lambda layer, shapes: LayerNormLayer(layer, shapes[0]),
    L.MultiHeadAttention: lambda layer, shapes: MultiHeadAttentionLayer(layer, shapes),
    L.PositionEmbedding: lambda layer, shapes: PositionEmbeddingLayer(layer, shapes[0]),
    L.GlobalAvgPool1D: lambda layer, shapes: GlobalAvgPool1DLayer(),
}


def _make_layer(index: int, layer: Layer, in_shapes: list[tuple[int, ...]]) -> SpecLayer:
    builder = BUILDERS.get(type(layer))
    if builder is None:
        raise SpecError(
            f"layer type {layer.type} is not supported with torch", layer=index, field="type", value=layer.type
        )
    return builder(layer, [tuple(s) for s in in_shapes])


class TorchModel(nn.Module):
    """A sequential model built from a :class:`ModelSpec`; ``layers[i]`` is spec layer ``i``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        infer_shapes(spec)  # raises SpecError before any module is built
        self.spec = spec
        self.layers = nn.ModuleList(
            _make_layer(i, layer, shapes)
            for i, (layer, shapes) in enumerate(zip(spec.layers, layer_input_shapes(spec)))
        )
        for i, layer in enumerate(spec.layers):  # tied heads read their embedding's one Parameter
            if getattr(layer, "tie", None):
                head, emb = self.layers[i], self.layers[tied_layer(spec, i)]
                assert isinstance(head, DenseLayer) and isinstance(emb, EmbeddingLayer)
                head.tie_to(emb)
        self.xf_device = torch.device("cpu")
        self.xf_dtype = torch.float32
        self.sources = layer_inputs(spec)
        self.sequential = is_sequential(spec)
        # graphs: after layer i runs, the outputs no later layer reads are let go (their memory, unless autograd
        # saved them)
        readers = consumers(spec)
        last_read = {j: max(r) for j, r in enumerate(readers) if r}
        last_read[-1] = max(i for i, srcs in enumerate(self.sources) if -1 in srcs)
        self.release_after: list[tuple[int, ...]] = [
            tuple(j for j, last in last_read.items() if last == i) for i in range(len(spec.layers))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequential:
            for layer in self.layers:
                x = layer(x)
            return x
        values: dict[int, torch.Tensor] = {-1: x}
        del x
        out = None
        for i, (layer, srcs) in enumerate(zip(self.layers, self.sources)):
            out = layer(*(values[j] for j in srcs))
            for j in self.release_after[i]:
                del values[j]
            values[i] = out
        assert out is not None
        return out

    def spec_layers(self) -> list[SpecLayer]:
        """``layers`` typed as :class:`SpecLayer` (``nn.ModuleList`` yields plain modules)."""
        return [cast(SpecLayer, layer) for layer in self.layers]


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        dtype = str(dtype).removeprefix("torch.")
    return DTYPES[check_dtype(dtype, "torch")]


def build_model(
    spec: ModelSpec, device: str = "cpu", dtype: str = "float32", seed: int = 0, init: bool = True
) -> TorchModel:
    """The spec as a :class:`TorchModel` on ``device`` in ``dtype``, with PyTorch's default initialisation
    drawn from a generator seeded with ``seed`` (the global RNG is left untouched). ``init=False``: built on
    the ``meta`` device and materialised uninitialised (``Module.to_empty``), for a caller that loads weights
    next.

    Raises :class:`~backends.base.DeviceUnavailable`, :class:`~analytics.spec.SpecError` or ``ValueError``
    (unknown dtype).
    """
    dev = resolve_device(device)
    dt = _torch_dtype(dtype)
    if init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TorchModel(spec)
    else:
        with torch.device("meta"):
            model = TorchModel(spec)
        model.to_empty(device=dev)
        for module in model.modules():  # buffers that are not weights (set_weights does not load them)
            if isinstance(module, MultiHeadAttentionLayer):
                module.init_buffers()
    model.to(device=dev, dtype=dt)
    model.xf_device, model.xf_dtype = dev, dt
    return model


def set_weights(model: TorchModel, weights: Sequence[np.ndarray]) -> None:
    """Loads neutral-format weights (:mod:`analytics.weights`). Raises ``ValueError`` on a count or shape mismatch
    (:func:`backends.common.check_weights`)."""
    check_weights(model.spec, weights)
    pos = 0
    for layer in model.spec_layers():
        n = layer.neutral_count()
        layer.set_neutral(weights[pos : pos + n])
        pos += n


def get_weights(model: TorchModel) -> list[np.ndarray]:
    """The model's weights in the neutral format (float16/bfloat16 models export exact float32 copies)."""
    out: list[np.ndarray] = []
    for layer in model.spec_layers():
        out.extend(layer.get_neutral())
    return out


def count_params(model: nn.Module) -> int:
    """Number of scalars in ``model.parameters()`` (an LSTM counts both of PyTorch's biases, 8h; a BatchNorm's
    running statistics are buffers, not counted)."""
    return int(sum(p.numel() for p in model.parameters()))


def to_device(array: Any, device: str | torch.device, dtype: str | torch.dtype | None = None) -> torch.Tensor:
    """A tensor on ``device`` from a numpy array (or tensor); floating data is cast to ``dtype`` if given,
    integer data (labels, tokens) keeps its type."""
    dev = resolve_device(device)
    t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None and t.is_floating_point():
        return t.to(device=dev, dtype=_torch_dtype(dtype))
    return t.to(device=dev)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host numpy copy of ``tensor`` (float16/bfloat16 are upcast to float32, exactly)."""
    return _export(tensor)


def model_placement(model: TorchModel) -> tuple[torch.device, torch.dtype]:
    """Where the model's parameters live now (it may have been moved with ``.to`` since it was built)."""
    for p in model.parameters():
        return p.device, p.dtype
    return model.xf_device, model.xf_dtype


def _as_input(model: TorchModel, x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return to_device(x, *model_placement(model))


def infer(model: TorchModel, x: Any) -> torch.Tensor:
    """Forward pass in eval mode without autograd. ``x`` should already be on the model's device (a numpy
    array is copied there first). Returns the output tensor without synchronizing."""
    model.eval()
    with torch.inference_mode():
        return model(_as_input(model, x))


def loss_fn(spec: ModelSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss for the spec's output kind (:func:`analytics.weights.output_kind`), a scalar mean."""
    kind = output_kind(spec)
    if kind == "probs":

        def probs_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logp = torch.log(out.clamp(PROB_EPS, 1.0 - PROB_EPS))
            return F.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1).long())

        return probs_loss
    if kind == "logits":

        def logits_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1).long())

        return logits_loss

    def mse_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, y.to(out.dtype))

    return mse_loss


def make_optimizer(model: nn.Module, optimizer: str = "sgd", lr: float | None = None) -> torch.optim.Optimizer:
    """``sgd`` / ``momentum`` / ``adam`` over the model's parameters, with the learning rate, momentum and Adam's
    epsilon of :func:`backends.common.optimizer_settings`. Raises ``ValueError`` for another name."""
    opt = optimizer_settings(optimizer, lr)
    params = list(model.parameters())
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, eps=opt.epsilon)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum)


def make_train_step(
    model: TorchModel, spec: ModelSpec, optimizer: str = "sgd", lr: float | None = None
) -> Callable[[Any, Any], torch.Tensor]:
    """``step(x, y) -> loss``: forward (train mode), loss, backward, optimizer update.

    The returned loss is a detached 0-d tensor on the model's device; the caller synchronizes.
    ``step.optimizer`` is the ``torch.optim`` object.
    """
    opt = make_optimizer(model, optimizer, lr)
    loss_of = loss_fn(spec)

    def step(x: Any, y: Any) -> torch.Tensor:
        model.train()
        opt.zero_grad(set_to_none=True)
        xt = _as_input(model, x)
        yt = y if isinstance(y, torch.Tensor) else to_device(y, xt.device)
        loss = loss_of(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step
