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
  gradients (``backward_input``, query/key/value: counted where the layer's input needs a gradient; with two
  inputs of which only one needs it, the other's projection gradient is still counted: one flag per layer);
  the output projection's input gradient and the gradients through the two products (``4 x 2 H T S K``) are
  always needed, as they reach the layer's own projections (``backward_recurrent``).
* ``PositionEmbedding`` (``length``: the table's rows, default the input's ``T``): adds the first ``T`` rows of a
  learned ``(length, F)`` table to its ``(T, F)`` input (GPT-2 and BERT keep a table longer than the sequence they
  are run at: 1024 and 512 rows). ``length * F`` parameters (``embeddings``); ``T F`` additions (``add``).
* ``GlobalAvgPool1D``: mean over time, ``(T, F) -> (F,)``; ``T F`` FLOPs (``pool``), as ``GlobalAvgPool2D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from xfbench.analytics.layers.base import (
    Layer,
    LayerCost,
    Shape,
    SpecError,
    WorkSite,
    check_one_input,
    check_positive_int,
    check_positive_number,
    input_of_rank,
    keras_gluon_gemm,
    keras_gluon_params,
)
from xfbench.analytics.timeline_rules import Buf, OpRule

_DY = "tools/autograd/derivatives.yaml"
_OUT = (Buf("output", "output"),)
_GRAD_IN = (Buf("grad:input", "input"),)


def _check_bool(index: int, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise SpecError("must be true or false", layer=index, field=name, value=value)


#: LayerNorm's FLOPs per element, forward and backward (see the module docstring).
LAYERNORM_FLOPS = 8


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalization over the last axis with scale and shift (see the module docstring)."""

    epsilon: float = 1e-5
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True
    #: Simulated-step rules per framework (``stat``: one element per normalized row, N*T).
    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        "torch": {
            "native_layer_norm": OpRule(
                (Buf("output", "output"), Buf("aux:mean", "stat"), Buf("aux:rstd", "stat")),
                ("input", "aux:mean", "aux:rstd"),
                (Buf("grad:input", "input"), Buf("param:weight", "weight"), Buf("param:bias", "bias")),
                f"{_DY} native_layer_norm: native_layer_norm_backward(grad, input, normalized_shape, result1, "
                "result2, weight, bias, ...) saves the input, mean and rstd (one per row) and returns the input, "
                "weight and bias gradients, in that order (measured with MemTracker)",
            ),
            "layer_norm": OpRule(
                _OUT,
                (),
                (),
                "inference mode under a TorchDispatchMode: aten.layer_norm is one op to an observer (its mean and "
                "rstd are not tensors it sees; measured with MemTracker)",
            ),
        },
        # Keras 3 ops.layer_normalization (keras/src/ops/nn.py _layer_normalization): tf.nn.moments (a
        # SquaredDifference of the input's size), inv = rsqrt(var + eps) * gamma and res = -mean * inv + beta
        # broadcast to the input's size, then x * inv + res; Mul's gradient keeps x and inv
        "tensorflow": {
            "LayerNormalization": OpRule(
                (
                    Buf("aux:squared_difference", "input"),
                    Buf("aux:inv", "input"),
                    Buf("aux:shift", "input"),
                    Buf("aux:scaled", "input"),
                    Buf("output", "output"),
                ),
                ("input", "aux:inv"),
                (
                    Buf("temp", "input"),
                    Buf("temp", "input"),
                    Buf("temp", "input"),
                    Buf("grad:input", "input"),
                    Buf("param:weight", "weight"),
                ),
                "keras/src/ops/nn.py _layer_normalization on tf.nn.moments; math_grad.py _MulGrad keeps x and the "
                "broadcast inverse deviation; first approximation (not measured)",
            ),
        },
        "mxnet": {
            "LayerNorm": OpRule(
                (Buf("output", "output"), Buf("aux:mean", "stat"), Buf("aux:std", "stat")),
                ("input", "aux:mean", "aux:std"),
                (Buf("grad:input", "input"), Buf("param:weight", "weight")),
                "src/operator/nn/layer_norm.cc: outputs out, mean and std; LayerNormGrad reads the data, gamma, "
                "mean and std; first approximation (not measured)",
            ),
        },
    }

    def validate(self, index: int) -> None:
        check_positive_number(index, "epsilon", self.epsilon)
        check_one_input(index, self)

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

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """PyTorch ``native_layer_norm`` (in inference under a dispatch mode, ``layer_norm``: its output only),
        Keras' composed normalization, Gluon's ``LayerNorm``; scale and shift are the layer's parameters."""
        low = model.low
        fw = low.c.framework
        x = xs[0]
        f = in_shapes[0][-1]
        if fw == "torch":
            params = {"weight": model.param(label, "weight", f), "bias": model.param(label, "bias", f)}
            op = "layer_norm" if not low.c.training and low.c.dispatch_mode else "native_layer_norm"
        else:
            params = keras_gluon_params(model, label, 2 * f)
            op = "LayerNormalization" if fw == "tensorflow" else "LayerNorm"
        sizes = {"input": x.elems, "output": x.elems, "stat": x.elems // f}
        y = low.out(op, {"input": x}, sizes, label=label, params=params)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """Memory-bound: the forward reads the input and writes the output (one kernel in PyTorch and MXNet; Keras
        composes about 9 ops, 12 passes over the input's size); the backward reads the gradient and the input and
        writes the input gradient, then reduces the scale and shift gradients (Keras: about 14 ops). The forward
        and the input gradient are also compute (row statistics, rsqrt): their elements are priced at the measured
        ``layernorm`` rate (the framework's layer norm, all its ops, timed as the model runs it; the backward at the
        forward's rate, a first convention), the bytes still bounding from below; without that rate, bandwidth
        alone."""
        elems = site.batch * math.prod(site.out_shape)
        w = b.w
        tf = site.framework == "tensorflow"
        b.mem(
            site.i,
            "forward",
            "layernorm",
            (12 if tf else 2) * elems * w,
            9 if tf else 1,
            elems,
            out=elems * w,
            rate="layernorm",
        )
        if site.training:
            if site.need_dx:
                b.mem(
                    site.i,
                    "input_grad",
                    "layernorm grad",
                    (14 if tf else 3) * elems * w,
                    8 if tf else 1,
                    elems,
                    out=elems * w,
                    rate="layernorm",
                )
            b.mem(site.i, "weight_grad", "layernorm scale/shift grad", (6 if tf else 2) * elems * w, 6 if tf else 0)


@dataclass(frozen=True)
class MultiHeadAttention(Layer):
    """Scaled dot-product attention with ``heads`` heads of width ``key_dim`` (see the module docstring)."""

    heads: int
    key_dim: int
    causal: bool = False
    use_bias: bool = True
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True
    #: The attention's own ops (the projections, products, softmax and copies are in
    #: analytics/timeline_rules.py: addmm, bmm, clone, _softmax, view_grad_copy; MatMul, BatchMatMulV2, Transpose;
    #: FullyConnected, batch_dot, transpose): the causal mask.
    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        "torch": {
            "causal_mask": OpRule(
                _OUT,
                (),
                _GRAD_IN,
                f"{_DY} masked_fill.Scalar: self: grad.masked_fill(mask, 0) (keeps only the bool mask, a module "
                "buffer; measured with MemTracker: one new (N, H, T, S) tensor each way)",
            ),
        },
        "tensorflow": {
            "causal_mask": OpRule(
                _OUT,
                (),
                (),
                "math_grad.py _AddV2Grad: scores + a constant -inf mask, the gradient passes through; first "
                "approximation",
                passthrough=True,
            ),
        },
        "mxnet": {
            "causal_mask": OpRule(
                _OUT,
                (),
                (),
                "src/operator/tensor/elemwise_binary_broadcast_op_basic.cc broadcast_add of the mask: the gradient "
                "passes through; first approximation",
                passthrough=True,
            ),
        },
    }

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
            # the query/key/value projections' input gradients: only where the layer's input needs one
            backward_input=2 * (t * f * hk + 2 * s * fk * hk),
            # always: the output projection's input gradient and the gradients through the two products, which
            # reach the layer's own query/key/value weights
            backward_recurrent=2 * t * hk * f + 2 * 2 * attn_macs,
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

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """The math path of each backend (the design's ops). PyTorch: four nn.Linear (addmm on the contiguous
        input), the head split a view whose backward copies the gradient (it arrives transposed), ``q * scale``,
        ``matmul`` (a copy of each non-viewable operand, ``bmm`` saving both), ``masked_fill``, ``_softmax``
        (its output saved by itself and by the second ``bmm``), the head merge a copy; ``q``, ``k``, ``v`` and
        the scores live as Python locals until the forward returns. In inference under a dispatch mode each
        ``matmul`` is one op. TensorFlow and MXNet (first approximation): the projections, a transpose copy per
        head split and merge, the scale, two batched products saving their operands, the mask, softmax."""
        low = model.low
        t, f, s, fk, h, k = self.sizes(in_shapes)
        n, hk = model.b, h * k
        xq, xkv = xs[0], xs[-1]
        # the projections read xq once and xkv twice; each lets its input go once
        reads: dict[int, int] = {}
        for v in (xq, xkv, xkv):
            reads[v.vid] = reads.get(v.vid, 0) + 1
        for v in xs:
            reads[v.vid] -= 1
        for vid, extra in reads.items():
            if extra > 0:
                low.uses[vid] = low.uses.get(vid, 1) + extra
        nq, nkv, ns, nout = n * t * hk, n * s * hk, n * h * t * s, n * t * f
        if low.c.framework == "torch":
            return self._torch(model, label, xq, xkv, (t, f, s, fk, hk), (nq, nkv, ns, nout))
        return self._keras_gluon(model, label, xq, xkv, (t, f, s, fk, hk), (nq, nkv, ns, nout))

    def _torch(self, model: Any, label: str, xq: Any, xkv: Any, dims: tuple[int, ...], n: tuple[int, ...]) -> Any:
        from xfbench.analytics.layers.dense import Dense, _torch_dense

        low = model.low
        t, f, s, fk, hk = dims
        nq, nkv, ns, nout = n
        if self.causal:  # the bool triu mask, a non-persistent (T, S) buffer
            low.buffers.append((f"{label}.mask", t * s))
        proj = Dense(hk, use_bias=self.use_bias)

        def heads(x: Any, which: str, width: int, rows: int, elems: int) -> Any:
            y = _torch_dense(model, f"{label}.{which}", proj, x, (rows, width), elems)
            z = low.out(
                "view_grad_copy",
                {"input": y},
                {"input": elems, "output": elems},
                label=label,
                name=f"{which}_heads",
                contiguous=False,
            )
            low.drop(y, label)
            return z

        q = heads(xq, "query", f, t, nq)
        key = heads(xkv, "key", fk, s, nkv)
        v = heads(xkv, "value", fk, s, nkv)
        qs = low.out(
            "mul_scalar", {"input": q}, {"input": nq, "output": nq}, label=label, name="scale", contiguous=False
        )
        one_op = not low.c.training and low.c.dispatch_mode

        def matmul(a: Any, b: Any, copy_a: bool, out: int, name: str) -> Any:
            if one_op:
                return low.out("matmul", {"input": a}, {"output": out}, label=label, name=name)
            ac = low.out("clone", {"input": a}, {"output": a.elems}, label=label, name=f"{name}_lhs") if copy_a else a
            bc = low.out("clone", {"input": b}, {"output": b.elems}, label=label, name=f"{name}_rhs")
            y = low.out(
                "bmm",
                {"input": ac, "other": bc},
                {"input": ac.elems, "other": bc.elems, "output": out},
                label=label,
                name=name,
            )
            if copy_a:
                low.drop(ac, label)
            low.drop(bc, label)
            return y

        scores = matmul(qs, key, True, ns, "scores")
        low.drop(qs, label)
        if self.causal:
            masked = low.out("causal_mask", {"input": scores}, {"input": ns, "output": ns}, label=label)
            low.drop(scores, label)  # `scores` is rebound to the masked copy
            scores = masked
        p = low.out("_softmax", {"input": scores}, {"input": ns, "output": ns}, label=label, name="softmax")
        o = matmul(p, v, False, nq, "context")
        o4 = low.out(
            "view_grad_copy",
            {"input": o},
            {"input": nq, "output": nq},
            label=label,
            name="merge_view",
            contiguous=False,
        )
        low.drop(o, label)
        merged = low.out("clone", {"input": o4}, {"output": nq}, label=label, name="merge_heads")
        low.drop(o4, label)
        y = _torch_dense(model, f"{label}.output", Dense(f, use_bias=self.use_bias), merged, (t, hk), nout)
        for val in (q, key, v, scores, p):  # Python locals, let go when the forward returns
            low.drop(val, label)
        return y

    def _keras_gluon(self, model: Any, label: str, xq: Any, xkv: Any, dims: tuple[int, ...], n: tuple[int, ...]) -> Any:
        from xfbench.analytics.layers.dense import Dense

        low = model.low
        tf = low.c.framework == "tensorflow"
        _, f, _, fk, hk = dims
        nq, nkv, ns, nout = n
        gemm = "MatMul" if tf else "FullyConnected"
        transpose = "Transpose" if tf else "transpose"
        batched = "BatchMatMulV2" if tf else "batch_dot"

        def project(x: Any, which: str, fin: int, units: int, elems: int) -> Any:
            tag = f"{label}.{which}"
            params = keras_gluon_params(model, tag, fin * units + (units if self.use_bias else 0))
            sizes = {"input": x.elems, "output": elems}
            return keras_gluon_gemm(model, Dense(units, use_bias=self.use_bias), tag, x, x, gemm, sizes, params)

        def op(name: str, x: Any, out: int, tag: str, **inputs: Any) -> Any:
            sizes = {"input": x.elems, "output": out, **{k: v.elems for k, v in inputs.items()}}
            y = low.out(name, {"input": x, **inputs}, sizes, label=label, name=tag)
            low.drop(x, label)
            for v in inputs.values():
                low.drop(v, label)
            return y

        q = op(transpose, project(xq, "query", f, hk, nq), nq, "query_heads")
        key = op(transpose, project(xkv, "key", fk, hk, nkv), nkv, "key_heads")
        v = op(transpose, project(xkv, "value", fk, hk, nkv), nkv, "value_heads")
        qs = op("MulScale" if tf else "_mul_scalar", q, nq, "scale")
        scores = op(batched, qs, ns, "scores", other=key)
        if self.causal:
            scores = op("causal_mask", scores, ns, "causal_mask")
        p = op("Softmax" if tf else "softmax", scores, ns, "softmax")
        o = op(batched, p, nq, "context", other=v)
        merged = op(transpose, o, nq, "merge_heads")
        return project(merged, "output", hk, f, nout)

    def work(self, b: Any, site: WorkSite) -> None:
        """The four projections as GEMMs; attention's two batched products as ``B*H`` GEMMs of ``T x K x S`` and
        ``T x S x K`` (one op each); the scale, the head split and merge copies (PyTorch: matmul's reshape
        copies; Keras and Gluon: transposes), the causal mask and the softmax as memory-bound passes (the softmax's
        elements, forward and backward, also priced at the measured ``softmax`` rate: exp and row reductions; its
        forward at the sigmoid's rate where that was not measured, its backward at bandwidth alone). Training:
        the products' four gradient GEMMs, softmax's and the mask's backward, the copies' gradients, and the
        projections' input and weight gradients (the query, key and value input gradients summed)."""
        fw, w, B = b.fw, b.w, site.batch
        t, f, s, fk, h, k = self.sizes(site.in_shapes)
        hk = h * k
        nq, nkv, ns = B * t * hk, B * s * hk, B * h * t * s
        i = site.i
        projections = (
            ("query", B * t, f, hk),
            ("key", B * s, fk, hk),
            ("value", B * s, fk, hk),
            ("output", B * t, hk, f),
        )
        for name, rows, fin, fout in projections:
            b.gemm(i, "forward", f"attention {name}", rows, fin, fout)
            if self.use_bias and not fw.bias_fused:
                b.mem(i, "forward", f"{name} bias", 2 * rows * fout * w)
        copies = nq + 2 * nkv + nq
        b.mem(i, "forward", "head split/merge copies", 2 * copies * w, 4, out=copies * w)
        b.mem(i, "forward", "scale", 2 * nq * w, out=nq * w)
        b.gemm(i, "forward", "attention QK^T", t, k, s, repeat=B * h, ops=1)
        if self.causal:
            b.mem(i, "forward", "causal mask", 2 * ns * w + t * s, out=ns * w)
        b.mem(i, "forward", "softmax", 2 * ns * w, 1, ns, out=ns * w, rate="softmax", fallback="elementwise")
        b.gemm(i, "forward", "attention PV", t, s, k, repeat=B * h, ops=1)
        if not site.training:
            return
        # backward through the output projection (its input gradient is always needed) and the products
        b.gemm(i, "input_grad", "attention output dX", B * t, f, hk)
        b.gemm(i, "weight_grad", "attention output dW", hk, B * t, f)
        b.mem(i, "input_grad", "head merge grad copy", 2 * nq * w, out=nq * w)
        b.gemm(i, "input_grad", "attention dP", t, k, s, repeat=B * h, ops=1)
        b.gemm(i, "input_grad", "attention dV", s, t, k, repeat=B * h, ops=1)
        b.mem(i, "input_grad", "softmax grad", 3 * ns * w, 1, ns, out=ns * w, rate="softmax")
        if self.causal:
            b.mem(i, "input_grad", "causal mask grad", 2 * ns * w + t * s, out=ns * w)
        b.gemm(i, "input_grad", "attention dQ", t, s, k, repeat=B * h, ops=1)
        b.gemm(i, "input_grad", "attention dK", s, t, k, repeat=B * h, ops=1)
        b.mem(i, "input_grad", "scale grad", 2 * nq * w, out=nq * w)
        b.mem(i, "input_grad", "head split grad copies", 2 * (nq + 2 * nkv) * w, 3, out=(nq + 2 * nkv) * w)
        for name, rows, fin, fout in projections[:3]:
            b.gemm(i, "weight_grad", f"attention {name} dW", fin, rows, fout)
            if self.use_bias:
                b.mem(i, "weight_grad", f"{name} bias grad", rows * fout * w, 1)
            if site.need_dx:
                b.gemm(i, "input_grad", f"attention {name} dX", rows, fout, fin)
        if self.use_bias:
            b.mem(i, "weight_grad", "output bias grad", B * t * f * w, 1)
        if site.need_dx:  # the three input gradients summed (two additions)
            b.mem(i, "input_grad", "input grad sum", 2 * 3 * B * t * f * w, 2, out=2 * B * t * f * w)


@dataclass(frozen=True)
class PositionEmbedding(Layer):
    """A learned ``(length, F)`` table whose first ``T`` rows are added to the ``(T, F)`` input."""

    length: int | None = None
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True
    #: ``rows``: the (T, F) sum of the gradient over the batch (the broadcast's reduction), ``weight``: the table.
    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        "torch": {
            "add_position": OpRule(
                _OUT,
                (),
                (Buf("temp", "rows"), Buf("param:weight", "weight")),
                f"{_DY} add.Tensor: self: grad (passed on), other: grad reduced to the table slice's (T, F) shape "
                f"(sum_to: a sum over the batch); {_DY} slice.Tensor: slice_backward_wrapper(grad, ...) writes it "
                "into a zero (length, F) gradient of the table (measured with MemTracker)",
                passthrough=True,
            ),
        },
        "tensorflow": {
            "add_position": OpRule(
                _OUT,
                (),
                (Buf("temp", "rows"), Buf("param:weight", "weight")),
                "math_grad.py _AddV2Grad: the input's gradient passed on, the table's summed over the batch; "
                "array_grad.py _StridedSliceGrad: a (length, F) gradient of the table; first approximation",
                passthrough=True,
            ),
        },
        "mxnet": {
            "add_position": OpRule(
                _OUT,
                (),
                (Buf("temp", "rows"), Buf("param:weight", "weight")),
                "src/operator/tensor/elemwise_binary_broadcast_op_basic.cc broadcast_add: the gradient passed on "
                "and summed over the batch for the table; slice_axis' backward a (length, F) gradient; first "
                "approximation",
                passthrough=True,
            ),
        },
    }

    def validate(self, index: int) -> None:
        if self.length is not None:
            check_positive_int(index, "length", self.length)
        check_one_input(index, self)

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

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """``x + table[:T]``: one new output; in training the table's gradient (its full ``(length, F)``) after a
        ``(T, F)`` sum over the batch; the input's gradient is the incoming one."""
        low = model.low
        x = xs[0]
        t, f = in_shapes[0]
        table = self.rows(in_shapes) * f
        if low.c.framework == "torch":
            params = {"weight": model.param(label, "table", table)}
        else:
            params = keras_gluon_params(model, label, table)
        y = low.out("add_position", {"input": x}, {"output": x.elems, "rows": t * f}, label=label, params=params)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """The addition reads the input and the table's rows and writes the output; training: the sum of the
        gradient over the batch and the table's gradient (zeroed, the rows written)."""
        w = b.w
        t, f = site.in_shapes[0]
        elems = site.batch * t * f
        b.mem(site.i, "forward", "position add", (2 * elems + t * f) * w, out=elems * w)
        if site.training:
            table = self.rows(site.in_shapes) * f
            b.mem(
                site.i,
                "weight_grad",
                "position table grad",
                (elems + t * f + table + t * f) * w,
                2,
                out=(t * f + table) * w,
            )


@dataclass(frozen=True)
class GlobalAvgPool1D(Layer):
    """Mean over time: ``(T, F) -> (F,)``."""

    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True
    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        "torch": {
            "mean_time": OpRule(
                _OUT,
                (),
                _GRAD_IN,
                f"{_DY} mean.dim: mean_backward(grad, sizes, dim, numel, keepdim) (an expand, then one division: "
                "the input's size); x.mean(dim=1) saves nothing",
            ),
        },
        "tensorflow": {
            "mean_time": OpRule(_OUT, (), _GRAD_IN, "math_grad.py _MeanGrad: only shapes (a tiled gradient)"),
        },
        "mxnet": {
            "mean_time": OpRule(
                _OUT,
                (),
                _GRAD_IN,
                "src/operator/tensor/broadcast_reduce_op_value.cc mean: the backward broadcasts the gradient "
                "(first approximation)",
            ),
        },
    }

    def validate(self, index: int) -> None:
        check_one_input(index, self)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return (input_of_rank(index, self, in_shapes, 2, "(time, features)")[1],)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(pool=math.prod(in_shapes[0]))

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        return inputs[0].mean(axis=1)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        low, x = model.low, xs[0]
        y = low.out("mean_time", {"input": x}, {"input": x.elems, "output": model.b * out_shape[0]}, label=label)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """A reduction over time (reads the input, writes one row per sample); its gradient is broadcast back."""
        w = b.w
        in_elems = site.batch * math.prod(site.in_shapes[0])
        out_elems = site.batch * math.prod(site.out_shape)
        b.mem(site.i, "forward", "mean over time", (in_elems + out_elems) * w, out=out_elems * w)
        if site.need_dx:
            b.mem(site.i, "input_grad", "mean grad", (in_elems + out_elems) * w, out=in_elems * w)
