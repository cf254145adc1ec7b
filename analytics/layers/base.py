"""What every layer type shares: the :class:`Layer` base and its facets' contract, :class:`SpecError`, the
per-sample cost record :class:`LayerCost`, and the window and padding arithmetic of convolutions and pools.

This module imports nothing from the rest of ``analytics`` (the types import it; ``analytics.spec`` re-exports
it), so a layer type never sits in an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

import numpy as np

ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "gelu", "gelu_tanh")
#: FLOPs per element of each activation (softmax: exp, sum, divide; gelu, the erf form
#: ``0.5 x (1 + erf(x / sqrt 2))``: scale, erf, add, two products = 5; gelu_tanh, GPT-2's
#: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``: cube (2), scale, add, scale, tanh, add, two products = 9).
ACTIVATION_FLOPS = {"relu": 1, "sigmoid": 1, "tanh": 1, "softmax": 3, "gelu": 5, "gelu_tanh": 9}
PaddingT = str | int
Shape = tuple[int, ...]


class SpecError(ValueError):
    """A model spec is invalid. The message names the layer index, the field and the value."""

    def __init__(self, message: str, *, layer: int | None = None, field: str | None = None, value: Any = None):
        self.layer = layer
        self.field = field
        self.value = value
        prefix = ""
        if layer is not None:
            prefix = f"layer {layer}"
            if field is not None:
                prefix += f" field '{field}'={value!r}"
            prefix += ": "
        elif field is not None:
            prefix = f"field '{field}'={value!r}: "
        super().__init__(prefix + message)


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


@dataclass(frozen=True)
class LayerCost:
    """Per-sample cost of one layer (FLOPs for one sample; multiply by the batch). 1 MAC = 2 FLOPs."""

    params: int = 0
    matmul: int = 0
    bias: int = 0
    activation: int = 0
    pool: int = 0
    other: int = 0
    norm: int = 0  # BatchNorm: normalize, scale and shift (inference convention; see analytics/layers/batchnorm.py)
    add: int = 0  # Add: element-wise sums of the inputs
    backward_weight: int = 0
    backward_input: int = 0  # gradient w.r.t. the layer's input; skipped for the first layer with weights
    # always needed, even for the first layer with weights: LSTM's gradient w.r.t. h_{t-1}; attention's gradients
    # through its score and value products (they reach its own projections' weights)
    backward_recurrent: int = 0

    @property
    def forward_all(self) -> int:
        return self.matmul + self.bias + self.activation + self.pool + self.other + self.norm + self.add


def activation_flops(kind: str | None, elements: int) -> int:
    return ACTIVATION_FLOPS[kind] * elements if kind else 0


class WorkSite(NamedTuple):
    """Where a layer's step-time work happens: its index, the batch, its input and output shapes (per sample),
    whether its input gradient is needed, the phase and the framework."""

    i: int
    batch: int
    in_shapes: list[Shape]
    out_shape: Shape
    need_dx: bool
    training: bool
    framework: str


@dataclass(frozen=True)
class Layer:
    """Base class of all layers. ``name`` is optional; predictions name unnamed layers by type.

    ``inputs`` (keyword-only, every type): the names of the layers this one reads, ``input`` for the model's
    input; ``None`` reads the layer just above.

    The facets every type implements (``tests/test_graph_spec.py`` fails for a type that lacks one; the base
    raises, so a dispatch never reads a missing facet as zero): :meth:`validate`, :meth:`output_shape`,
    :meth:`cost`, :meth:`weight_slots`, :meth:`forward`; the unit types of ``analytics/layers/`` also carry their
    simulated-step (``simulate``, ``RULES``) and step-time (``work``) facets.
    """

    inputs: tuple[str, ...] | None = field(default=None, kw_only=True)

    #: Layout facts for frameworks that run images channels-last (Keras): the type reads a (C, H, W) input in
    #: NHWC (a transpose before the first one), or its output is no image any more (the layout ends).
    NHWC_INPUT: ClassVar[bool] = False
    ENDS_IMAGE: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The layer's ``name`` (every subclass declares ``name: str = ""`` last), or its type."""
        return str(getattr(self, "name", "")) or self.type

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name == "name" and not v):
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    # ------------------------------------------------------------------------------------------------ facets

    def validate(self, index: int) -> None:
        """Checks the layer's own fields (not shapes); raises :class:`SpecError`."""
        raise SpecError(f"layer type {self.type} has no validation", layer=index, field="type", value=self.type)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        """Per-sample output shape from the per-sample input shapes (window arithmetic notes go to ``notes``)."""
        raise SpecError(f"unsupported layer type {self.type}", layer=index, field="type", value=self.type)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        """Parameters (in ``framework``'s convention) and FLOPs of one sample."""
        raise ValueError(f"no cost rule for layer type {self.type}")

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        """The neutral weight format's arrays: ``(param, shape, trainable)``."""
        raise ValueError(f"no weight-slot rule for layer type {self.type}")

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        """The float64 numpy reference (``training``: a training step's forward)."""
        raise ValueError(f"reference_forward does not support layer type {self.type}")

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        """The ops of the simulated step (``analytics/timeline.py``'s lowering ``model``: its ``low`` records the
        allocations; ``model.act`` lowers an activation); returns the output value."""
        raise SpecError(f"layer type {self.type} is not simulated", field="type", value=self.type)

    def work(self, b: Any, site: WorkSite) -> None:
        """The step-time work items of one step (``analytics/steptime.py``'s builder ``b``, its convention
        ``b.fw`` and element width ``b.w``)."""
        raise ValueError(f"no step-time work rule for layer type {self.type}")

    def trainable_params(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> int:
        """Parameters the optimizer updates (the count of :meth:`cost` unless some are state)."""
        return self.cost(in_shapes, out_shape, framework).params

    def param_tensors(self, framework: str) -> int:
        """Parameter tensors the optimizer visits (one update op each)."""
        return 1

    @property
    def trainable(self) -> bool:
        """Whether the layer has trainable weights (the layers after it then need input gradients)."""
        return any(t for _, _, t in self.weight_slots([(1, 1, 1)]))


def one_input(index: int, layer: Layer, in_shapes: list[Shape]) -> Shape:
    """The single input's shape of a one-input layer (an error naming the layer otherwise)."""
    if len(in_shapes) != 1:
        raise SpecError(
            f"{layer.type} reads one input, got {len(in_shapes)}",
            layer=index,
            field="inputs",
            value=list(layer.inputs or ()),
        )
    return tuple(in_shapes[0])


def check_positive_int(index: int, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError("must be a positive integer", layer=index, field=name, value=value)


def check_positive_number(index: int, name: str, value: Any) -> None:
    """A positive int or float (not a bool), e.g. a normalization's ``epsilon``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError("must be a positive number", layer=index, field=name, value=value)


def check_one_input(index: int, layer: Layer) -> None:
    """A one-input layer names at most one input (``inputs`` of one name, or none: the layer above)."""
    if layer.inputs is not None and len(layer.inputs) != 1:
        raise SpecError(f"{layer.type} reads one input", layer=index, field="inputs", value=list(layer.inputs))


def check_padding(index: int, padding: Any) -> None:
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise SpecError(
                "allowed: 'same', 'valid' or a non-negative integer", layer=index, field="padding", value=padding
            )
    elif isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise SpecError(
            "allowed: 'same', 'valid' or a non-negative integer", layer=index, field="padding", value=padding
        )


def check_activation(index: int, activation: Any) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise SpecError(f"allowed: {', '.join(ACTIVATIONS)} or null", layer=index, field="activation", value=activation)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``same`` padding for one spatial axis: ``(before, after)`` in elements."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def padding_amounts(padding: str | int, size: int, kernel: int, stride: int) -> tuple[int, int]:
    """``(before, after)`` padding for one axis under the spec's padding rule."""
    if padding == "same":
        return same_padding(size, kernel, stride)
    if padding == "valid":
        return 0, 0
    assert isinstance(padding, int)
    return padding, padding


def window_out(
    index: int,
    layer: Layer,
    window_field: str,
    axis: str,
    size: int,
    kernel: int,
    stride: int,
    padding: str | int,
    notes: list[str],
) -> int:
    """Output size of a window (conv or pool) along one axis; non-integer arithmetic under explicit padding is a
    note (the frameworks floor it), a window larger than its padded input an error."""
    if padding == "same":
        return math.ceil(size / stride)
    p = 0 if padding == "valid" else int(padding)
    padded = size + 2 * p
    if kernel > padded:
        raise SpecError(
            f"{layer.type} window {kernel} on axis {axis} is larger than its padded input {padded} "
            f"(input {size} + 2*padding {p})",
            layer=index,
            field=window_field,
            value=kernel,
        )
    span = padded - kernel
    if span % stride and not isinstance(padding, str):
        notes.append(
            f"axis {axis}: (W - F + 2P)/S + 1 = ({size} - {kernel} + 2*{p})/{stride} + 1 = {span / stride + 1:g} "
            f"is not an integer; the frameworks floor it to {span // stride + 1}, so the last {span % stride} "
            "padded input column(s) are dropped"
        )
    return span // stride + 1


def input_of_rank(index: int, layer: Layer, in_shapes: list[Shape], rank: int, what: str, hint: str = "") -> Shape:
    """The one input of a layer that needs a ``rank``-D per-sample input (``what`` names it, e.g. "(time,) token");
    an error naming the layer otherwise."""
    shape = one_input(index, layer, in_shapes)
    if len(shape) != rank:
        raise SpecError(
            f"{layer.type} needs a {what} input, got {len(shape)}-D per sample{hint}",
            layer=index,
            field="input",
            value=shape,
        )
    return shape


def image_input(index: int, layer: Layer, in_shapes: list[Shape]) -> Shape:
    """The one ``(C, H, W)`` input of an image layer (an error naming the layer otherwise)."""
    return input_of_rank(index, layer, in_shapes, 3, "(channels, height, width)")


def check_window(index: int, layer: Any, window_field: str) -> None:
    """A conv's or pool's window and stride (positive pairs) and padding."""
    for fname in (window_field, "stride"):
        for v in getattr(layer, fname):
            check_positive_int(index, fname, v)
    check_padding(index, layer.padding)


def gemm_cost(params: int, macs: int, out_elems: int, use_bias: bool, activation: str | None) -> LayerCost:
    """A conv's or dense's cost: ``2 * macs`` (one MAC = 2 FLOPs) forward and for each gradient, a bias add per
    output element, its activation."""
    return LayerCost(
        params=params,
        matmul=2 * macs,
        bias=out_elems if use_bias else 0,
        activation=activation_flops(activation, out_elems),
        backward_weight=2 * macs,
        backward_input=2 * macs,
    )


def pad_work(
    b: Any,
    i: int,
    padding: str | int,
    hw: tuple[int, int],
    window: tuple[int, int],
    stride: tuple[int, int],
    planes: int,
    in_elems: int,
    need_dx: bool,
) -> None:
    """Step-time work of a pad op before a conv or pool where the framework makes one: asymmetric ``same``
    padding outside TensorFlow, and any int padding where pads are their own ops (Keras). Its gradient is a
    slice."""
    fw = b.fw
    pads = padding_amounts(padding, hw[0], window[0], stride[0]) + padding_amounts(padding, hw[1], window[1], stride[1])
    if padding == "same":
        needed = not fw.same_pad_native and (pads[0] != pads[1] or pads[2] != pads[3])
    else:
        needed = fw.explicit_pad_ops and isinstance(padding, int) and padding > 0
    if not needed:
        return
    padded = planes * (hw[0] + pads[0] + pads[1]) * (hw[1] + pads[2] + pads[3])
    w = b.w
    b.mem(i, "forward", "pad", (in_elems + padded) * w, out=padded * w)
    if need_dx:
        b.mem(i, "input_grad", "pad grad", (in_elems + padded) * w, out=in_elems * w)


# ------------------------------------------------------------------------------------ the simulated step's helpers


def hw_pads(
    padding: str | int, shape: Shape, window: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a window layer's padding on a ``(C, H, W)`` input."""
    top, bottom = padding_amounts(padding, shape[1], window[0], stride[0])
    left, right = padding_amounts(padding, shape[2], window[1], stride[1])
    return top, bottom, left, right


def keras_gluon_params(model: Any, label: str, n: int) -> dict[str, int]:
    """TensorFlow and MXNet lowerings: a GEMM layer's parameters, declared as one entry."""
    b = n * model.low.c.width
    model.low.params.append((f"{label}.weights", b))
    return {"weight": b}


def keras_gluon_gemm(
    model: Any,
    layer: Any,
    label: str,
    x: Any,
    src: Any,
    op: str,
    sizes: dict[str, int],
    params: dict[str, int],
    drop_input: bool = True,
) -> Any:
    """TensorFlow and MXNet lowerings of a conv or dense after its pad: the GEMM op, Keras' BiasAdd, the activation
    (written into the GEMM's output where the rules say so). ``drop_input=False``: the layer's input was let go
    already (by its pad), and is not let go twice (in a graph it may have other readers)."""
    low = model.low
    tf = low.c.framework == "tensorflow"
    y = low.out(op, {"input": src}, sizes, label=label, params=params)
    if src is not x:
        low.drop(src, label)
    if tf and getattr(layer, "use_bias", False):
        z = low.out("BiasAdd", {"input": y}, {"output": sizes["output"]}, label=label)
        low.drop(y, label)
        y = z
    if layer.activation:
        z = model.act(label, layer.activation, y)
        low.drop(y, label)
        y = z
    if drop_input:
        low.drop(x, label)
    return y


def simple_op(model: Any, label: str, op: str, x: Any, out_elems: int, **kw: Any) -> Any:
    """One op reading ``x`` and writing a new output; the layer's input is let go."""
    low = model.low
    y = low.out(op, {"input": x}, {"input": x.elems, "output": out_elems}, label=label, **kw)
    low.drop(x, label)
    return y
