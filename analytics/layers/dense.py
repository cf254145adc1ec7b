"""``Dense``: an affine map on the last axis, ``(F,) -> (units,)`` or, per time step, ``(T, F) -> (T, units)``;
optional bias and activation.

* parameters: ``F * units`` (+ ``units``); FLOPs: ``2 * rows * F * units`` (rows: 1, or T), one bias add per
  output element, the activation's; backward: weight and input gradients as the forward matmul each;
* neutral weights: kernel ``(in, out)`` (after a Flatten the ``in`` axis is in (C, H, W) order), bias;
* ``tie: <Embedding layer name>`` (GPT-2's language-model head): the kernel is that embedding's ``(vocab, dim)``
  matrix transposed, so ``units`` must equal its ``vocab`` and the input's features its ``dim`` (checked by
  :func:`analytics.shapes.infer_shapes`); no kernel of its own (no kernel slot, no kernel parameters: the matrix
  is counted once, at the embedding), a bias only with ``use_bias``. Its FLOPs are a dense layer's; its weight
  gradient adds into the embedding's single gradient. The reference passes the tied matrix as ``params[0]``.
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
    check_activation,
    check_positive_int,
    gemm_cost,
    keras_gluon_gemm,
    keras_gluon_params,
    one_input,
)


@dataclass(frozen=True)
class Dense(Layer):
    """Affine map on the last axis: ``(F,) -> (units,)`` or ``(T, F) -> (T, units)``."""

    units: int
    use_bias: bool = True
    activation: str | None = None
    tie: str | None = None
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        check_positive_int(index, "units", self.units)
        check_activation(index, self.activation)
        if self.tie is not None and (not isinstance(self.tie, str) or not self.tie):
            raise SpecError("must name an Embedding layer", layer=index, field="tie", value=self.tie)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        shape = one_input(index, self, in_shapes)
        if len(shape) not in (1, 2):
            raise SpecError(
                f"Dense needs a (features,) or (time, features) input, got {len(shape)}-D per sample; "
                "add a Flatten first",
                layer=index,
                field="input",
                value=shape,
            )
        return (*shape[:-1], self.units)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        in_shape = in_shapes[0]
        rows = math.prod(in_shape[:-1])  # 1, or T for a time-distributed dense
        params = (0 if self.tie else in_shape[-1] * self.units) + (self.units if self.use_bias else 0)
        return gemm_cost(params, rows * in_shape[-1] * self.units, math.prod(out_shape), self.use_bias, self.activation)

    def param_tensors(self, framework: str) -> int:
        return (0 if self.tie else 1) + (1 if self.use_bias else 0)

    @property
    def trainable(self) -> bool:
        return True  # a tied head trains the embedding's matrix

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        slots: list[tuple[str, Shape, bool]] = []
        if not self.tie:
            slots.append(("kernel", (in_shapes[0][-1], self.units), True))
        if self.use_bias:
            slots.append(("bias", (self.units,), True))
        return slots

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import activate

        x = inputs[0]
        kernel = params[0].T if self.tie else params[0]  # tied: the embedding's (vocab, dim) matrix
        out = np.tensordot(x, kernel, axes=([x.ndim - 1], [0]))
        if self.use_bias:
            out = out + params[1]
        return activate(out, self.activation)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        out_elems = model.b * math.prod(out_shape)
        if self.tie:
            return _tied_dense(model, label, self, xs[0], in_shapes[0], out_elems)
        if model.low.c.framework == "torch":
            return _torch_dense(model, label, self, xs[0], in_shapes[0], out_elems)
        tf = model.low.c.framework == "tensorflow"
        in_shape = in_shapes[0]
        params = keras_gluon_params(model, label, in_shape[-1] * self.units + (self.units if self.use_bias else 0))
        sizes = {"input": xs[0].elems, "output": out_elems}
        return keras_gluon_gemm(model, self, label, xs[0], xs[0], "MatMul" if tf else "FullyConnected", sizes, params)

    def work(self, b: Any, site: WorkSite) -> None:
        """GEMMs ``(B*rows) x F x units``: forward, input gradient (where needed), weight gradient; bias and
        activation passes where the framework does not fuse them; each GEMM names its exact-shape probe."""
        from xfbench.analytics.steptime import probe_key

        fw, w, B = b.fw, b.w, site.batch
        in_shape = site.in_shapes[0]
        out_elems = B * math.prod(site.out_shape)
        rows = B * math.prod(in_shape[:-1])
        f_in, units = in_shape[-1], self.units
        # a tied head (``tie``) is the same three GEMMs on the embedding's matrix; its weight gradient is added into
        # the embedding's (one more pass over the matrix)
        dims = {"rows": rows, "features": f_in, "units": units}
        back = "backward" if site.need_dx else "backward_first"
        b.gemm(site.i, "forward", "dense", rows, f_in, units, probe=probe_key("dense", dims, "forward"))
        if self.use_bias and not fw.bias_fused:
            b.mem(site.i, "forward", "bias", 2 * out_elems * w)
        b.activation(site.i, self.activation, out_elems, site.training, fw.act_fused)
        if site.training:
            if site.need_dx:
                b.gemm(
                    site.i,
                    "input_grad",
                    "dense dX",
                    rows,
                    units,
                    f_in,
                    probe=probe_key("dense", dims, back),
                    probe_share=0.5,
                )
            dw_share = 0.5 if site.need_dx else 1.0
            b.gemm(
                site.i,
                "weight_grad",
                "dense dW",
                f_in,
                rows,
                units,
                probe=probe_key("dense", dims, back),
                probe_share=dw_share,
            )
            if self.tie:
                table = f_in * units
                b.mem(site.i, "weight_grad", "tied gradient accumulation", 3 * table * w, 1, inplace=True)
            if self.use_bias:
                b.mem(site.i, "weight_grad", "bias grad", out_elems * w, 1)


def _tied_dense(model: Any, label: str, layer: Dense, x: Any, in_shape: Shape, out_elems: int) -> Any:
    """A head tied to an Embedding (``tie``): no parameter of its own but the bias; its op reads the embedding's
    matrix, and its weight gradient and the embedding's accumulate into the one gradient of that matrix
    (``_Lowering.tie``). PyTorch: ``F.linear(x, emb.weight, bias)``, the ops of nn.Linear; TensorFlow
    ``tf.matmul(x, emb, transpose_b=True)`` (+ BiasAdd); MXNet ``FullyConnected`` on the shared weight."""
    from xfbench.analytics.shapes import tied_layer

    low = model.low
    i = int(label.split(":", 1)[0])
    j = tied_layer(model.spec, i)
    emb = model.spec.layers[j]
    emb_label = f"{j}:{emb.label}"
    weight = emb.vocab * emb.dim * low.c.width  # type: ignore[attr-defined]
    group = f"tie:{emb_label}"
    low.tie(emb_label, "weight", group)
    shared = {"weight": group}
    if low.c.framework == "torch":
        return _torch_dense(model, label, layer, x, in_shape, out_elems, weight=weight, shared=shared)
    tf = low.c.framework == "tensorflow"
    params = {"weight": weight}
    if layer.use_bias:
        bias = layer.units * low.c.width
        low.params.append((f"{label}.bias", bias))
        if not tf:  # FullyConnected takes the bias: its gradient is the op's
            params["bias"] = bias
    sizes = {"input": x.elems, "output": out_elems}
    y = low.out("MatMul" if tf else "FullyConnected", {"input": x}, sizes, label=label, params=params, shared=shared)
    if tf and layer.use_bias:
        z = low.out("BiasAdd", {"input": y}, {"output": out_elems}, label=label)
        low.drop(y, label)
        y = z
    if layer.activation:
        z = model.act(label, layer.activation, y)
        low.drop(y, label)
        y = z
    low.drop(x, label)
    return y


def _torch_dense(
    model: Any,
    label: str,
    layer: Dense,
    x: Any,
    in_shape: Shape,
    out_elems: int,
    weight: int | None = None,
    shared: dict[str, str] | None = None,
) -> Any:
    """nn.Linear: addmm (mm without a bias) on a 2-D or contiguous input; on a non-contiguous 3-D input at::matmul
    (a reshape copy, mm, the bias added in place, or out of place under a dispatch mode); the activation.
    ``weight``/``shared``: a tied head's matrix (bytes; declared by its embedding) and its gradient group."""
    low = model.low
    w = model.param(label, "weight", in_shape[-1] * layer.units) if weight is None else weight
    params = {"weight": w}
    if layer.use_bias:
        params["bias"] = model.param(label, "bias", layer.units)
    sizes = {"input": x.elems, "output": out_elems}
    if len(in_shape) == 1 or (x.contiguous and layer.use_bias):
        # addmm (2-D, or 3-D contiguous through _flatten_nd_linear); mm without a bias
        op = "addmm" if layer.use_bias else "mm"
        y = low.out(op, {"input": x}, sizes, label=label, params=params, shared=shared)
    elif not low.c.training and low.c.dispatch_mode:
        # inference mode: an observer sees aten.linear as one op, i.e. only its result (the real run below,
        # copy + mm + add_, is what torch.profiler's memory events show inside aten::linear)
        y = low.out("linear", {"input": x}, sizes, label=label)
    else:
        # at::matmul: a non-contiguous input is copied by reshape, then mm, then the bias add
        src = x
        if not x.contiguous:
            src = low.out("clone", {"input": x}, {"output": x.elems}, label=label, name="reshape_copy")
        y = low.out(
            "mm_folded",
            {"input": src},
            {"input": src.elems, "output": out_elems},
            label=label,
            params={"weight": w},
            name="mm",
            shared=shared,
        )
        if src is not x:
            low.drop(src, label)
        if not layer.use_bias and y.requires_grad and not x.contiguous:
            z = low.out("unsafe_view", {"input": y}, {"input": out_elems, "output": out_elems}, label=label)
            low.drop(y, label)
            y = z
        if layer.use_bias:
            bias = {"bias": params["bias"]}
            if low.c.dispatch_mode:  # out-of-place add (isTensorSubclassLike under a dispatch mode)
                z = low.out("add_bias", {"input": y}, {"output": out_elems}, label=label, params=bias)
                low.drop(y, label)
                y = z
            else:  # output.add_(bias): in place
                z = low.out("add_bias_", {"input": y}, {"output": out_elems}, label=label, params=bias)
                low.drop(y, label)
                y = z
    result = y
    if layer.activation:
        result = model.act(label, layer.activation, y)
        low.drop(y, label)
    low.drop(x, label)
    return result
