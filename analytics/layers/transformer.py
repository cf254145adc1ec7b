"""The transformer's layer types: ``LayerNorm``, ``MultiHeadAttention``, ``PositionEmbedding``,
``GlobalAvgPool1D`` (the GELU activations are kinds of :class:`~analytics.layers.elementwise.Activation`; the tied
head is ``Dense(tie=...)``, :mod:`analytics.layers.dense`).

Fields and defaults are the file format (README, "Custom models"):

* ``LayerNorm`` (``epsilon: 1e-5``): over the last axis of a ``(T, F)`` or ``(F,)`` input, biased variance, with
  scale ``gamma`` and shift ``beta`` (``F`` each). FLOPs (``norm`` column, per element): the statistics (a sum; a
  centred square and its sum: 1 + 3), normalize (subtract, multiply by the inverse deviation: 2), scale and shift
  (2): 8. Its backward is not in ``backward_flops``, which counts the backward's products (matmuls), as
  BatchNorm's is not.
* ``MultiHeadAttention`` (``heads``, ``key_dim``, ``causal: false``, ``use_bias: true``): one input is
  self-attention, two are ``[query, key_value]``; query ``(T, F)``, key/value ``(S, Fk)``. Query, key and value are
  each a Dense ``F -> heads * key_dim`` (``Fk ->`` for key and value), the output a Dense ``heads * key_dim -> F``;
  scores ``Q K^T / sqrt(key_dim)`` per head, softmax over keys (``causal``: key ``s`` hidden from query ``t`` when
  ``s > t``), ``P V``. Output: the query's shape. Neutral weights, in order: ``query_kernel (F, HK)``,
  ``query_bias (HK,)``, ``key_kernel (Fk, HK)``, ``key_bias``, ``value_kernel (Fk, HK)``, ``value_bias``,
  ``output_kernel (HK, F)``, ``output_bias (F,)`` (no biases without ``use_bias``); head ``h`` owns columns
  ``h*K .. (h+1)*K`` of each projection. FLOPs per sample (H heads, K = key_dim): projections
  ``2 (T F HK + 2 S Fk HK + T HK F)`` and the two products ``Q K^T`` and ``P V``, ``2 H T S K`` each, the full
  ``T x S`` products as the frameworks compute them, causal or not (``matmul``); biases (``bias``); the query's
  scaling by ``1/sqrt(K)`` (``T HK``, ``other``) and, when causal, the mask (``H T S``, ``other``); softmax
  ``3 H T S`` (``activation``). Backward: the projections' weight gradients (``backward_weight``) and input
  gradients (``backward_input``); the gradients through the two products (``4 x 2 H T S K``) are always needed,
  as they reach the layer's own projections (``backward_recurrent``).
* ``PositionEmbedding`` (``length``: the table's rows, default the input's ``T``): adds the first ``T`` rows of a
  learned ``(length, F)`` table to its ``(T, F)`` input (GPT-2 and BERT keep a table longer than the sequence they
  are run at: 1024 and 512 rows). ``length * F`` parameters (``embeddings``); ``T F`` additions (``add``).
* ``GlobalAvgPool1D``: mean over time, ``(T, F) -> (F,)``; ``T F`` FLOPs (``pool``), as ``GlobalAvgPool2D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from xfbench.analytics.layers.base import (
    Layer,
    LayerCost,
    Shape,
    SpecError,
    check_positive_int,
    input_of_rank,
)


def _check_bool(index: int, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise SpecError("must be true or false", layer=index, field=name, value=value)


def _check_one_input(index: int, layer: Layer) -> None:
    if layer.inputs is not None and len(layer.inputs) != 1:
        raise SpecError(f"{layer.type} reads one input", layer=index, field="inputs", value=list(layer.inputs))


#: LayerNorm's FLOPs per element, forward and backward (see the module docstring).
LAYERNORM_FLOPS = 8


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalization over the last axis with scale and shift (see the module docstring)."""

    epsilon: float = 1e-5
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise SpecError("must be a positive number", layer=index, field="epsilon", value=eps)
        _check_one_input(index, self)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        shape = tuple(in_shapes[0])
        if len(in_shapes) != 1 or len(shape) not in (1, 2):
            raise SpecError(
                f"LayerNorm needs a (T, F) or (F,) input, got {len(shape)}-D per sample",
                layer=index,
                field="input",
                value=shape,
            )
        return shape

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        elems = math.prod(out_shape)
        return LayerCost(params=2 * out_shape[-1], norm=LAYERNORM_FLOPS * elems)

    def param_tensors(self, framework: str) -> int:
        return 2

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        f = in_shapes[0][-1]
        return [("gamma", (f,), True), ("beta", (f,), True)]

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        x = inputs[0]
        gamma, beta = params
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.epsilon) * gamma + beta


@dataclass(frozen=True)
class MultiHeadAttention(Layer):
    """Scaled dot-product attention with ``heads`` heads of width ``key_dim`` (see the module docstring)."""

    heads: int
    key_dim: int
    causal: bool = False
    use_bias: bool = True
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        check_positive_int(index, "heads", self.heads)
        check_positive_int(index, "key_dim", self.key_dim)
        _check_bool(index, "causal", self.causal)
        _check_bool(index, "use_bias", self.use_bias)
        if self.inputs is not None and len(self.inputs) not in (1, 2):
            raise SpecError(
                "MultiHeadAttention reads one input (self-attention) or two ([query, key_value])",
                layer=index,
                field="inputs",
                value=list(self.inputs),
            )

    def _shapes(self, index: int, in_shapes: list[Shape]) -> tuple[Shape, Shape]:
        if len(in_shapes) not in (1, 2):
            raise SpecError(
                f"MultiHeadAttention reads one or two inputs, got {len(in_shapes)}",
                layer=index,
                field="inputs",
                value=list(self.inputs or ()),
            )
        for k, shape in enumerate(in_shapes):
            if len(shape) != 2:
                raise SpecError(
                    f"MultiHeadAttention needs (time, features) inputs, input {k} is {len(shape)}-D per sample",
                    layer=index,
                    field="input",
                    value=tuple(shape),
                )
        return tuple(in_shapes[0]), tuple(in_shapes[-1])

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return self._shapes(index, in_shapes)[0]

    def sizes(self, in_shapes: list[Shape]) -> tuple[int, int, int, int, int, int]:
        """``(T, F, S, Fk, H, K)``: query length and width, key/value length and width, heads, key_dim."""
        (t, f), (s, fk) = tuple(in_shapes[0]), tuple(in_shapes[-1])
        return t, f, s, fk, self.heads, self.key_dim

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        t, f, s, fk, h, k = self.sizes(in_shapes)
        hk = h * k
        proj_macs = t * f * hk + 2 * s * fk * hk + t * hk * f
        attn_macs = 2 * h * t * s * k  # Q K^T and P V
        params = f * hk + 2 * fk * hk + hk * f + ((3 * hk + f) if self.use_bias else 0)
        return LayerCost(
            params=params,
            matmul=2 * (proj_macs + attn_macs),
            bias=(t * hk + 2 * s * hk + t * f) if self.use_bias else 0,
            activation=3 * h * t * s,
            other=t * hk + (h * t * s if self.causal else 0),
            backward_weight=2 * proj_macs,
            backward_input=2 * proj_macs,
            backward_recurrent=2 * 2 * attn_macs,
        )

    def param_tensors(self, framework: str) -> int:
        return 8 if self.use_bias else 4

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        f, fk = in_shapes[0][-1], in_shapes[-1][-1]
        hk = self.heads * self.key_dim
        slots: list[tuple[str, Shape, bool]] = []
        for proj, shape in (("query", (f, hk)), ("key", (fk, hk)), ("value", (fk, hk)), ("output", (hk, f))):
            slots.append((f"{proj}_kernel", shape, True))
            if self.use_bias:
                slots.append((f"{proj}_bias", (shape[1],), True))
        return slots

    def split_params(self, params: list[np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """``{"query": (kernel, bias or None), "key": ..., "value": ..., "output": ...}`` from the neutral list."""
        step = 2 if self.use_bias else 1
        return {
            proj: (params[step * n], params[step * n + 1] if self.use_bias else None)
            for n, proj in enumerate(("query", "key", "value", "output"))
        }

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import softmax

        xq, xkv = inputs[0], inputs[-1]
        p = self.split_params(params)
        n, t, _ = xq.shape
        s = xkv.shape[1]
        h, k = self.heads, self.key_dim

        def project(x: np.ndarray, which: str, length: int) -> np.ndarray:
            kernel, bias = p[which]
            y = x @ kernel + (bias if bias is not None else 0.0)
            return y.reshape(n, length, h, k).transpose(0, 2, 1, 3)  # (N, H, length, K)

        q, key, v = project(xq, "query", t), project(xkv, "key", s), project(xkv, "value", s)
        scores = (q / math.sqrt(k)) @ key.transpose(0, 1, 3, 2)  # (N, H, T, S)
        if self.causal:
            hidden = np.triu(np.ones((t, s), dtype=bool), k=1)
            scores = np.where(hidden, -np.inf, scores)
        o = softmax(scores) @ v  # (N, H, T, K)
        kernel, bias = p["output"]
        out = o.transpose(0, 2, 1, 3).reshape(n, t, h * k) @ kernel
        return out + bias if bias is not None else out


@dataclass(frozen=True)
class PositionEmbedding(Layer):
    """A learned ``(length, F)`` table whose first ``T`` rows are added to the ``(T, F)`` input."""

    length: int | None = None
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        if self.length is not None:
            check_positive_int(index, "length", self.length)
        _check_one_input(index, self)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        t, f = input_of_rank(index, self, in_shapes, 2, "(time, features)")
        if self.length is not None and t > self.length:
            raise SpecError(
                f"PositionEmbedding has {self.length} positions, its input has {t} time steps",
                layer=index,
                field="length",
                value=self.length,
            )
        return (t, f)

    def rows(self, in_shapes: list[Shape]) -> int:
        return self.length if self.length is not None else in_shapes[0][0]

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(params=self.rows(in_shapes) * in_shapes[0][-1], add=math.prod(out_shape))

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return [("embeddings", (self.rows(in_shapes), in_shapes[0][-1]), True)]

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        x = inputs[0]
        return x + params[0][: x.shape[1]]


@dataclass(frozen=True)
class GlobalAvgPool1D(Layer):
    """Mean over time: ``(T, F) -> (F,)``."""

    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        _check_one_input(index, self)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return (input_of_rank(index, self, in_shapes, 2, "(time, features)")[1],)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(pool=math.prod(in_shapes[0]))

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        return inputs[0].mean(axis=1)
