"""Sequence layers: ``LSTM`` and ``Embedding``, and ``LocalResponseNorm`` (AlexNet's channel normalization).

* ``LSTM``: single layer, zero initial state, gates i, f, g(c), o; sigmoid gates, tanh cell. Parameters
  ``4h (F + h)`` plus one bias per gate in Keras/TensorFlow (4h), two in PyTorch and MXNet (8h). FLOPs: the input
  and recurrent matmuls, the biases, 5h activations and 4h cell products per step; backward: weight gradients,
  the input gradient where needed and the recurrent gradient (back-propagation through time). Neutral weights:
  kernel ``(in, 4h)``, recurrent_kernel ``(h, 4h)``, one bias ``(4h,)``.
* ``Embedding``: integer tokens ``(T,) -> (T, dim)``; ``vocab * dim`` parameters; no FLOPs (a gather).
* ``LocalResponseNorm``: PyTorch's ``x / (k + alpha / size * sum(x^2))^beta`` over ``size`` neighbouring
  channels; ``2 * size + 2`` FLOPs per element (``other``).
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
    WorkSite,
    check_positive_int,
    image_input,
    input_of_rank,
    one_input,
    simple_op,
)


@dataclass(frozen=True)
class LocalResponseNorm(Layer):
    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    name: str = ""

    NHWC_INPUT: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        check_positive_int(index, "size", self.size)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return image_input(index, self, in_shapes)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(other=math.prod(out_shape) * (2 * self.size + 2))

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return []

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import local_response_norm

        return local_response_norm(inputs[0], self.size, self.alpha, self.beta, self.k)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        if model.low.c.framework != "torch":
            return simple_op(model, label, "LRN", xs[0], model.b * math.prod(out_shape))
        return _torch_lrn(model, label, self, xs[0], in_shapes[0])

    def work(self, b: Any, site: WorkSite) -> None:
        w, B = b.w, site.batch
        in_elems = B * math.prod(site.in_shapes[0])
        other = self.cost(site.in_shapes, site.out_shape, site.framework).other
        b.mem(site.i, "forward", "lrn", 4 * in_elems * w, 4, other * B, out=2 * in_elems * w)
        if site.need_dx:
            b.mem(site.i, "input_grad", "lrn grad", 8 * in_elems * w, 8, 2 * other * B, out=in_elems * w)


@dataclass(frozen=True)
class LSTM(Layer):
    """Single-layer LSTM, zero initial state, gates i, f, g(c), o; sigmoid gates, tanh cell."""

    units: int
    return_sequences: bool = False
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        check_positive_int(index, "units", self.units)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        rank = len(one_input(index, self, in_shapes))
        hint = f" ({rank + 1}-D with the batch)"
        t, _ = input_of_rank(index, self, in_shapes, 2, "(time, features)", hint)
        return (t, self.units) if self.return_sequences else (self.units,)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        steps, features = in_shapes[0]
        h = self.units
        biases = 1 if framework == "tensorflow" else 2
        input_macs = steps * features * 4 * h
        recurrent_macs = steps * h * 4 * h
        return LayerCost(
            params=4 * h * (features + h) + biases * 4 * h,
            matmul=2 * (input_macs + recurrent_macs),
            bias=steps * biases * 4 * h,
            activation=steps * 5 * h,  # three sigmoid gates, tanh(g), tanh(c)
            other=steps * 4 * h,  # f*c, i*g, their sum, o*tanh(c)
            backward_weight=2 * (input_macs + recurrent_macs),
            backward_input=2 * input_macs,
            backward_recurrent=2 * recurrent_macs,
        )

    def param_tensors(self, framework: str) -> int:
        return 3 if framework == "tensorflow" else 4  # kernels and one bias (Keras), or two biases

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        h = self.units
        return [
            ("kernel", (in_shapes[0][-1], 4 * h), True),
            ("recurrent_kernel", (h, 4 * h), True),
            ("bias", (4 * h,), True),
        ]

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        from xfbench.analytics.reference import lstm

        return lstm(inputs[0], params[0], params[1], params[2], self.return_sequences)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        if model.low.c.framework == "torch":
            return _torch_lstm(model, label, self, xs[0], in_shapes[0])
        low, x = model.low, xs[0]
        tf = low.c.framework == "tensorflow"
        t, f = in_shapes[0]
        h = self.units
        params = {"weight": (4 * h * (f + h) + 4 * h * (1 if tf else 2)) * low.c.width}
        low.params.append((f"{label}.weights", params["weight"]))
        gates = model.b * t * 4 * h + model.b * (t + 1) * 2 * h
        sizes = {"input": x.elems, "output": model.b * t * h, "gates": gates}
        y = low.out("LSTM" if tf else "RNN", {"input": x}, sizes, label=label, params=params)
        if not self.return_sequences:
            y = low.alias(y, model.b * h)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """``fused`` (oneDNN): the input projection of all steps as one GEMM, then per step the recurrent GEMM and
        the fused cell; ``per-step`` (Keras' While loop): two GEMMs and the cell's element-wise ops per step; the
        backward mirrors it (cell gradient, dh, dX where needed, dW_x and dW_h, the bias gradient)."""
        from xfbench.analytics.steptime import probe_key

        fw, w, B = b.fw, b.w, site.batch
        steps, features = site.in_shapes[0]
        h = self.units
        g = 4 * h
        cell = B * g  # gate pre-activations per step
        per_step = fw.lstm == "per-step"
        # the whole layer is one exact-shape probe: the first item of the forward and of the backward carries the time
        # (and one dispatch), the others none
        dims = {"batch": B, "steps": steps, "features": features, "units": h, "sequences": self.return_sequences}
        fwd = {"probe": probe_key("lstm", dims, "forward")}
        back = probe_key("lstm", dims, "backward" if site.need_dx else "backward_first")
        bwd, rest = {"probe": back, "probe_share": 1.0}, {"probe": back, "probe_share": 0.0}
        if per_step:
            b.gemm(site.i, "forward", "lstm x-proj", B, features, g, repeat=steps, **fwd)
        else:
            b.gemm(site.i, "forward", "lstm x-proj", steps * B, features, g, ops=fw.lstm_wrapper_ops + 1, **fwd)
        fwd_rest = {"probe": fwd["probe"], "probe_share": 0.0}
        b.gemm(site.i, "forward", "lstm h-proj", B, h, g, repeat=steps, ops=steps if per_step else 0, **fwd_rest)
        b.mem(
            site.i,
            "forward",
            "lstm cell",
            steps * 4 * cell * w,
            steps * fw.lstm_step_ops,
            steps * 5 * B * h,
            out=steps * 2 * B * h * w,
            **fwd_rest,
        )
        if not site.training:
            return
        b.mem(
            site.i,
            "input_grad",
            "lstm cell grad",
            steps * 6 * cell * w,
            steps * fw.lstm_step_bwd_ops,
            out=steps * cell * w,
            **bwd,
        )
        b.gemm(site.i, "input_grad", "lstm dh", B, g, h, repeat=steps, ops=steps if per_step else 1, **rest)
        if site.need_dx:
            if per_step:
                b.gemm(site.i, "input_grad", "lstm dX", B, g, features, repeat=steps, **rest)
            else:
                b.gemm(site.i, "input_grad", "lstm dX", steps * B, g, features, ops=0, **rest)
        if per_step:
            b.gemm(site.i, "weight_grad", "lstm dW_x", features, B, g, repeat=steps, **rest)
            b.gemm(site.i, "weight_grad", "lstm dW_h", h, B, g, repeat=steps, **rest)
        else:
            b.gemm(site.i, "weight_grad", "lstm dW_x", features, steps * B, g, ops=0, **rest)
            b.gemm(site.i, "weight_grad", "lstm dW_h", h, steps * B, g, ops=0, **rest)
        b.mem(site.i, "weight_grad", "bias grad", steps * cell * w, steps if per_step else 0, **rest)


@dataclass(frozen=True)
class Embedding(Layer):
    """Integer tokens ``(T,) -> (T, dim)``."""

    vocab: int
    dim: int
    name: str = ""

    ENDS_IMAGE: ClassVar[bool] = True

    def validate(self, index: int) -> None:
        check_positive_int(index, "vocab", self.vocab)
        check_positive_int(index, "dim", self.dim)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return (input_of_rank(index, self, in_shapes, 1, "(time,) token")[0], self.dim)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        return LayerCost(params=self.vocab * self.dim)

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        return [("embeddings", (self.vocab, self.dim), True)]

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        tokens = np.asarray(inputs[0])
        if not np.issubdtype(tokens.dtype, np.integer):
            if not np.all(tokens == np.round(tokens)):
                raise ValueError("Embedding input must hold integer token ids")
            tokens = tokens.astype(np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab):
            raise ValueError(
                f"Embedding token ids must lie in [0, {self.vocab}), got range [{tokens.min()}, {tokens.max()}]"
            )
        return params[0][tokens]

    def work(self, b: Any, site: WorkSite) -> None:
        """A gather; in training the scatter-add of the gradient into a table-sized gradient."""
        w = b.w
        out_elems = site.batch * math.prod(site.out_shape)
        b.mem(site.i, "forward", "gather", 2 * out_elems * w, out=out_elems * w)
        if site.training:
            table = self.vocab * self.dim
            b.mem(site.i, "weight_grad", "scatter-add", (table + 2 * out_elems) * w, 2, out=table * w)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        low, x = model.low, xs[0]
        out_elems = model.b * math.prod(out_shape)
        if low.c.framework == "torch":
            w = model.param(label, "weight", self.vocab * self.dim)
            op = "embedding"
        else:
            w = self.vocab * self.dim * low.c.width
            low.params.append((f"{label}.weights", w))
            op = "Embedding"
        y = low.out(op, {"input": x}, {"output": out_elems}, label=label, params={"weight": w})
        low.drop(x, label)
        return y


def _torch_lrn(model: Any, label: str, layer: LocalResponseNorm, x: Any, in_shape: Shape) -> Any:
    """torch.nn.functional.local_response_norm on a 4-D input (torch/nn/functional.py)."""
    low = model.low
    c, h, w = in_shape
    n = x.elems
    padded = model.b * (c + layer.size - 1) * h * w
    sq = low.out("mul_self", {"input": x}, {"input": n, "output": n}, label=label, name="x*x")
    sq5 = low.view(sq, label) if sq.requires_grad else low.alias(sq)
    low.drop(sq, label)
    p = low.out("constant_pad_nd", {"input": sq5}, {"input": n, "output": padded}, label=label, name="pad")
    low.drop(sq5, label)
    a = low.out("avg_pool3d", {"input": p}, {"input": padded, "output": n}, label=label)
    low.drop(p, label)
    ms = low.out("mul_scalar", {"input": a}, {"input": n, "output": n}, label=label, name="mul_alpha")
    ad = low.out("add_scalar", {"input": ms}, {"input": n, "output": n}, label=label, name="add_k")
    low.drop(ms, label)
    pw = low.out("pow_scalar", {"input": ad}, {"input": n, "output": n}, label=label, name="pow_beta")
    low.drop(ad, label)
    low.drop(a, label)
    y = low.out("div", {"input": x, "other": pw}, {"input": n, "output": n}, label=label)
    low.drop(pw, label)
    low.drop(x, label)
    return y


def _torch_lstm(model: Any, label: str, layer: LSTM, x: Any, in_shape: Shape) -> Any:
    """nn.LSTM (batch_first) on the CPU: zero initial states, mkldnn_rnn_layer (oneDNN's workspace) in training,
    one aten.lstm op to an observer in inference mode; the last step selected when it returns no sequence."""
    from xfbench.analytics.timeline_rules import lstm_workspace_bytes

    low = model.low
    t, f = in_shape
    h = layer.units
    b = model.b
    params = {
        "weight_ih": model.param(label, "weight_ih", 4 * h * f),
        "weight_hh": model.param(label, "weight_hh", 4 * h * h),
        "bias_ih": model.param(label, "bias_ih", 4 * h),
        "bias_hh": model.param(label, "bias_hh", 4 * h),
    }
    state = b * h
    h0 = low.scratch("h0", state, "x", label)  # nn.LSTM.forward: zeros for h_0 and c_0
    c0 = low.scratch("c0", state, "x", label)
    seq = b * t * h
    contiguous = b == 1 or t == 1  # the batch_first output is a transposed (T, B, H) buffer
    if low.c.training:
        src = x
        if not contiguous:  # the batch_first input transposed to (T, B, F): a contiguous copy
            src = low.out("clone", {"input": x}, {"output": x.elems}, label=label, name="contiguous")
        ws = 0
        if low.c.device == "cpu":
            ws = lstm_workspace_bytes(b, t, f, h)
        else:
            low.notes.append("LSTM on a GPU: cuDNN's reserve space is not modelled (not yet measured)")
        sizes = {"input": src.elems, "output": seq, "state": state, "workspace": ws // 4}
        outs = low.run("mkldnn_rnn_layer", {"input": src, "hx": h0, "cx": c0}, sizes, label=label, params=params)
        low.p.tensors[outs["aux:workspace"].tid].category = "workspace"
        y = outs["output"]
        hn = low.scratch("h_n", state, "x", label)  # torch.stack of the final states, discarded by the model
        cn = low.scratch("c_n", state, "x", label)
        if src is not x:
            low.drop(src, label)
        out = low.view(y, label, contiguous=contiguous)
        low.drop(y, label)
        low.drop(hn, label)
        low.drop(cn, label)
    else:
        # inference mode: aten.lstm is one op to an observer; output, h_n, c_n are its results. Inside it (real run
        # only; torch.profiler memory events) the transposed input is first made contiguous.
        copy = None
        if not contiguous and not low.c.dispatch_mode:
            copy = low.scratch("input_contiguous", x.elems, "x", label)
        out = low.scratch("output", seq, "x", label)
        out.contiguous = contiguous
        hn = low.scratch("h_n", state, "x", label)
        cn = low.scratch("c_n", state, "x", label)
        if copy is not None:
            low.drop(copy, label)
        low.drop(hn, label)
        low.drop(cn, label)
    low.drop(h0, label)
    low.drop(c0, label)
    if not layer.return_sequences:
        if out.requires_grad:
            sel = low.out(
                "select_backward",
                {"input": out},
                {"input": seq, "output": state},
                label=label,
                name="select",
                contiguous=False,
            )
        else:
            sel = low.alias(out, state, contiguous=False)
        low.drop(out, label)
        out = sel
    low.drop(x, label)
    return out
