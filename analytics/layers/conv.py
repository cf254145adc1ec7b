"""``Conv2D``: 2-D cross-correlation over ``(C, H, W)``, groups 1, optional bias and activation (Keras' order:
conv, bias, activation).

* shape: ``same`` ``ceil(W / S)``; ``valid`` ``floor((W - F) / S) + 1``; an int P ``floor((W + 2P - F) / S) + 1``;
* parameters: ``filters * C_in * kh * kw`` (+ ``filters`` with a bias), the same in every framework;
* FLOPs: ``2 * out_elements * C_in * kh * kw`` (``matmul``), one bias add per output element, the activation's;
  backward: the weight gradient and the input gradient each as many as the forward matmul;
* neutral weights: kernel OIHW, bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from xfbench.analytics.layers.base import (
    Layer,
    LayerCost,
    PaddingT,
    Shape,
    WorkSite,
    _pair,
    check_activation,
    check_positive_int,
    check_window,
    gemm_cost,
    hw_pads,
    image_input,
    keras_gluon_gemm,
    keras_gluon_params,
    pad_work,
    window_out,
)


@dataclass(frozen=True)
class Conv2D(Layer):
    filters: int
    kernel: tuple[int, int] | int
    stride: tuple[int, int] | int = 1
    padding: PaddingT = "valid"
    use_bias: bool = True
    activation: str | None = None
    name: str = ""

    NHWC_INPUT: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _pair(self.kernel))
        object.__setattr__(self, "stride", _pair(self.stride))

    def validate(self, index: int) -> None:
        check_positive_int(index, "filters", self.filters)
        check_window(index, self, "kernel")
        check_activation(index, self.activation)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        _, h, w = image_input(index, self, in_shapes)
        kernel, stride = self.kernel, self.stride
        assert isinstance(kernel, tuple) and isinstance(stride, tuple)
        oh = window_out(index, self, "kernel", "H", h, kernel[0], stride[0], self.padding, notes)
        ow = window_out(index, self, "kernel", "W", w, kernel[1], stride[1], self.padding, notes)
        return (self.filters, oh, ow)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        assert isinstance(self.kernel, tuple)
        kh, kw = self.kernel
        c_in = in_shapes[0][0]
        out_elems = math.prod(out_shape)
        params = self.filters * c_in * kh * kw + (self.filters if self.use_bias else 0)
        return gemm_cost(params, out_elems * c_in * kh * kw, out_elems, self.use_bias, self.activation)

    def param_tensors(self, framework: str) -> int:
        return 2 if self.use_bias else 1

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        kh, kw = self.kernel  # type: ignore[misc]
        slots: list[tuple[str, Shape, bool]] = [("kernel", (self.filters, in_shapes[0][0], kh, kw), True)]
        if self.use_bias:
            slots.append(("bias", (self.filters,), True))
        return slots

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import activate, conv2d

        bias = params[1] if self.use_bias else None
        out = conv2d(inputs[0], params[0], bias, self.stride, self.padding)  # type: ignore[arg-type]
        return activate(out, self.activation)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        if model.low.c.framework == "torch":
            return _torch_conv(model, label, self, xs[0], in_shapes[0], out_shape)
        return _keras_gluon_conv(model, label, self, xs[0], in_shapes[0], out_shape)

    def work(self, b: Any, site: WorkSite) -> None:
        """im2col GEMMs: forward ``(B*Ho*Wo) x (C_in*kh*kw) x C_out``; input gradient (where needed) and weight
        gradient the same GEMM transposed; a pad op where the framework makes one; bias and activation passes where
        the framework does not fuse them. Each GEMM names its exact-shape probe (:func:`analytics.steptime.probe_key`),
        which prices it where the run timed that probe."""
        from xfbench.analytics.steptime import probe_key

        assert isinstance(self.kernel, tuple) and isinstance(self.stride, tuple)
        fw, w, B = b.fw, b.w, site.batch
        in_shape = site.in_shapes[0]
        in_elems, out_elems = B * math.prod(in_shape), B * math.prod(site.out_shape)
        c_in, h, wd = in_shape
        c_out, ho, wo = site.out_shape
        kh, kw = self.kernel
        m, k, n = B * ho * wo, c_in * kh * kw, c_out
        pad_work(b, site.i, self.padding, (h, wd), (kh, kw), self.stride, B * c_in, in_elems, site.need_dx)
        shape = (m, k, n)
        dims = {
            "batch": B,
            "channels": c_in,
            "height": h,
            "width": wd,
            "filters": c_out,
            "kernel": (kh, kw),
            "stride": self.stride,
            "pads": hw_pads(self.padding, in_shape, (kh, kw), self.stride),
        }
        back = "backward" if site.need_dx else "backward_first"
        b.gemm(
            site.i,
            "forward",
            "conv",
            m,
            k,
            n,
            kernel="forward",
            conv_shape=shape,
            probe=probe_key("conv", dims, "forward"),
        )
        if self.use_bias and not fw.bias_fused:
            b.mem(site.i, "forward", "bias", 2 * out_elems * w)
        b.activation(site.i, self.activation, out_elems, site.training, fw.act_fused)
        if site.training:
            if site.need_dx:
                b.gemm(
                    site.i,
                    "input_grad",
                    "conv dX",
                    m,
                    n,
                    k,
                    ops=fw.conv_backward_ops - 1,
                    kernel="backward",
                    conv_shape=shape,
                    probe=probe_key("conv", dims, back),
                    probe_share=0.5,
                )
            b.gemm(
                site.i,
                "weight_grad",
                "conv dW",
                k,
                m,
                n,
                ops=1,
                kernel="backward" if site.need_dx else "backward_first",
                conv_shape=shape,
                probe=probe_key("conv", dims, back),
                probe_share=0.5 if site.need_dx else 1.0,
            )
            if self.use_bias:
                b.mem(site.i, "weight_grad", "bias grad", out_elems * w, fw.conv_backward_ops - 1)


def _torch_conv(model: Any, label: str, layer: Conv2D, x: Any, in_shape: Shape, out_shape: Shape) -> Any:
    """backends/torch/model.py ConvLayer: F.pad for asymmetric ``same`` padding, the convolution (oneDNN's blocked
    copies as kernel scratch at process level), the activation."""
    from xfbench.analytics.timeline_rules import (
        torch_onednn_conv_forward_scratch_elems,
        torch_onednn_conv_scratch_elems,
    )

    low = model.low
    out_elems = model.b * math.prod(out_shape)
    kernel, stride = layer.kernel, layer.stride
    assert isinstance(kernel, tuple) and isinstance(stride, tuple)
    c_in = in_shape[0]
    w = model.param(label, "weight", layer.filters * c_in * kernel[0] * kernel[1])
    params = {"weight": w}
    if layer.use_bias:
        params["bias"] = model.param(label, "bias", layer.filters)
    src, padded = x, None
    if layer.padding == "same":
        top, bottom, left, right = hw_pads("same", in_shape, kernel, stride)
        if top != bottom or left != right:  # F.pad, then a valid conv (model.py ConvLayer.forward)
            n = model.b * c_in * (in_shape[1] + top + bottom) * (in_shape[2] + left + right)
            padded = low.out("constant_pad_nd", {"input": x}, {"input": x.elems, "output": n}, label=label, name="pad")
            src = padded
    sizes = {"input": src.elems, "output": out_elems, "scratch": 0}
    forward_scratch = 0
    if low.c.kernel_scratch and low.c.device == "cpu":
        in_ch_hw = (c_in, src.elems // (model.b * c_in))
        out_ch_hw = (layer.filters, math.prod(out_shape[1:]))
        forward_scratch = torch_onednn_conv_forward_scratch_elems(model.b, in_ch_hw, out_ch_hw, kernel)
        sizes["scratch"] = torch_onednn_conv_scratch_elems(
            model.b, in_ch_hw, out_ch_hw, kernel, stride, src.requires_grad
        )
    y = low.out("convolution", {"input": src}, sizes, label=label, params=params)
    if forward_scratch:  # held while the op runs, beside its output, and released before it returns
        tid = low.p.alloc(f"{label}.scratch", forward_scratch * low.c.width, "workspace", label, low.stage, "tmp")
        low.p.drop(tid, "tmp", label, low.stage)
    result = model.act(label, layer.activation, y) if layer.activation else y
    if padded is not None:  # ConvLayer.forward's locals: the padded input, then the conv result
        low.drop(padded, label)
    if layer.activation:
        low.drop(y, label)
    low.drop(x, label)
    return result


def _keras_gluon_conv(model: Any, label: str, layer: Conv2D, x: Any, in_shape: Shape, out_shape: Shape) -> Any:
    """Keras: ``same`` padding inside the op, ``ZeroPadding2D`` for an int padding (whose input is freed once the
    Pad has run), the im2col buffers of the gradient (measured); Gluon: an explicit pad copy where the padding is
    asymmetric."""
    from xfbench.analytics.timeline_rules import tf_conv_grad_col_elems

    low = model.low
    tf = low.c.framework == "tensorflow"
    out_elems = model.b * math.prod(out_shape)
    kh, kw = layer.kernel  # type: ignore[misc]
    n = layer.filters * in_shape[0] * kh * kw + (layer.filters if layer.use_bias else 0)
    params = keras_gluon_params(model, label, n)
    src, dropped = x, False
    kernel, stride = layer.kernel, layer.stride
    assert isinstance(kernel, tuple) and isinstance(stride, tuple)
    t, bt, lf, rt = hw_pads(layer.padding, in_shape, kernel, stride)
    explicit = (tf and isinstance(layer.padding, int) and layer.padding > 0) or (not tf and (t != bt or lf != rt))
    if explicit:
        n = model.b * in_shape[0] * (in_shape[1] + t + bt) * (in_shape[2] + lf + rt)
        src = low.out("Pad", {"input": x}, {"input": x.elems, "output": n}, label=label)
        if tf:
            # TensorFlow's executor frees a tensor once its last consumer has run: the Pad is the only consumer of
            # the layer's input (measured: tf_step_memory.py --gap C, VGG-16 conv1_2)
            low.drop(x, label)
            dropped = True
    sizes = {"input": src.elems, "output": out_elems}
    if tf:
        col_in, col_filter = tf_conv_grad_col_elems(
            model.b, out_shape[1] * out_shape[2], kh * kw * in_shape[0], layer.filters, low.c.threads
        )
        sizes["col_input"] = col_in if src.requires_grad else 0
        sizes["col_filter"] = col_filter
    op = "Conv2D" if tf else "Convolution"
    return keras_gluon_gemm(model, layer, label, x, src, op, sizes, params, drop_input=not dropped)
