"""Pooling: ``MaxPool2D`` and ``AvgPool2D`` (a window with a stride, defaulting to the window) and
``GlobalAvgPool2D`` (the mean over H and W).

* shape: the window rule of :mod:`analytics.layers.conv`; global: ``(C, H, W) -> (C,)``;
* parameters: none; FLOPs (``pool``): one per window element read, per output element; global: one per input
  element;
* reference: max pooling pads with ``-inf``; average pooling with explicit padding counts the padded zeros
  (PyTorch ``count_include_pad=True``), with ``same`` it averages only the real cells (TensorFlow).
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
    check_window,
    hw_pads,
    image_input,
    pad_work,
    simple_op,
    window_out,
)


@dataclass(frozen=True)
class _Pool(Layer):
    pool: tuple[int, int] | int
    stride: tuple[int, int] | int | None = None
    padding: PaddingT = "valid"
    name: str = ""

    NHWC_INPUT: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", _pair(self.pool))
        object.__setattr__(self, "stride", _pair(self.stride if self.stride is not None else self.pool))

    def validate(self, index: int) -> None:
        check_window(index, self, "pool")

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        c, h, w = image_input(index, self, in_shapes)
        pool, stride = self.pool, self.stride
        assert isinstance(pool, tuple) and isinstance(stride, tuple)
        oh = window_out(index, self, "pool", "H", h, pool[0], stride[0], self.padding, notes)
        ow = window_out(index, self, "pool", "W", w, pool[1], stride[1], self.padding, notes)
        return (c, oh, ow)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        assert isinstance(self.pool, tuple)
        return LayerCost(pool=math.prod(out_shape) * self.pool[0] * self.pool[1])

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        fw = model.low.c.framework
        if fw == "torch":
            return _torch_pool(model, label, self, xs[0], in_shapes[0], out_shape)
        is_max = isinstance(self, MaxPool2D)
        op = ("MaxPool" if is_max else "AvgPool") if fw == "tensorflow" else "Pooling"
        return simple_op(model, label, op, xs[0], model.b * math.prod(out_shape))

    def work(self, b: Any, site: WorkSite) -> None:
        """One pass reading the input and writing the output (``pool`` rate over the window elements); max
        pooling in training also writes the argmax indices (int64) for the backward; the gradient reads the
        input, the output and the indices and writes the input's gradient."""
        assert isinstance(self.pool, tuple) and isinstance(self.stride, tuple)
        w, B = b.w, site.batch
        in_shape = site.in_shapes[0]
        in_elems, out_elems = B * math.prod(in_shape), B * math.prod(site.out_shape)
        c, h, wd = in_shape
        pad_work(b, site.i, self.padding, (h, wd), self.pool, self.stride, B * c, in_elems, site.need_dx)
        window = out_elems * self.pool[0] * self.pool[1]
        indices = 2 * out_elems * w if site.training and isinstance(self, MaxPool2D) else 0
        b.mem(
            site.i,
            "forward",
            "pool",
            (in_elems + out_elems) * w + indices,
            1,
            window,
            out=out_elems * w + indices,
            rate="pool",
        )
        if site.need_dx:
            b.mem(site.i, "input_grad", "pool grad", (2 * in_elems + out_elems) * w + indices, out=in_elems * w)


@dataclass(frozen=True)
class MaxPool2D(_Pool):
    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import max_pool2d

        return max_pool2d(inputs[0], self.pool, self.stride, self.padding)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AvgPool2D(_Pool):
    """Average pooling; explicit padding zeros count in the average (PyTorch ``count_include_pad``)."""

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import avg_pool2d

        return avg_pool2d(inputs[0], self.pool, self.stride, self.padding)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GlobalAvgPool2D(Layer):
    """Mean over H and W: ``(C, H, W) -> (C,)``."""

    name: str = ""

    NHWC_INPUT: ClassVar[bool] = True
    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        pass

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return (image_input(index, self, in_shapes)[0],)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(pool=math.prod(in_shapes[0]))

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        return inputs[0].mean(axis=(2, 3))

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        op = {"torch": "mean_hw", "tensorflow": "Mean"}.get(model.low.c.framework, "Pooling")
        return simple_op(model, label, op, xs[0], model.b * math.prod(out_shape))

    def work(self, b: Any, site: WorkSite) -> None:
        w, B = b.w, site.batch
        in_elems, out_elems = B * math.prod(site.in_shapes[0]), B * math.prod(site.out_shape)
        b.mem(site.i, "forward", "global pool", (in_elems + out_elems) * w, out=out_elems * w)
        if site.need_dx:
            b.mem(site.i, "input_grad", "global pool grad", (in_elems + out_elems) * w, out=in_elems * w)


def _torch_pool(model: Any, label: str, layer: _Pool, x: Any, in_shape: Shape, out_shape: Shape) -> Any:
    """backends/torch/model.py PoolLayer: ``same`` padding with F.pad (-inf for max; for average the window sum of
    the zero-padded input divided by a cached count of real cells), oversized int padding with F.pad, else the
    kernel's own padding."""
    low = model.low
    pool, stride = layer.pool, layer.stride
    assert isinstance(pool, tuple) and isinstance(stride, tuple)
    is_max = isinstance(layer, MaxPool2D)
    out_elems = model.b * math.prod(out_shape)
    c, h, w = in_shape

    def padded_elems(t: int, bt: int, lf: int, rt: int) -> int:
        return model.b * c * (h + t + bt) * (w + lf + rt)

    def pad(t: int, bt: int, lf: int, rt: int) -> Any:
        sizes = {"input": x.elems, "output": padded_elems(t, bt, lf, rt)}
        return low.out("constant_pad_nd", {"input": x}, sizes, label=label, name="pad")

    if layer.padding == "same":
        t, bt, lf, rt = hw_pads("same", in_shape, pool, stride)
        if not any((t, bt, lf, rt)):
            y = model.window(label, is_max, x, out_elems)
        elif is_max:
            p = pad(t, bt, lf, rt)
            y = model.window(label, True, p, out_elems)
            low.drop(p, label)
        else:
            # model.py: window sum of the zero-padded input / the cached count of real cells
            p = pad(t, bt, lf, rt)
            s = model.window(label, False, p, out_elems)
            low.drop(p, label)
            model.count_cache(label, (h, w), (t, bt, lf, rt), out_shape[1] * out_shape[2])
            y = low.out("div_count", {"input": s}, {"input": s.elems, "output": out_elems}, label=label, name="div")
            low.drop(s, label)
    else:
        amount = 0 if layer.padding == "valid" else int(layer.padding)
        if amount and not all(2 * amount <= k for k in pool):
            p = pad(amount, amount, amount, amount)
            y = model.window(label, is_max, p, out_elems)
            low.drop(p, label)
        else:
            y = model.window(label, is_max, x, out_elems)
    low.drop(x, label)
    return y
