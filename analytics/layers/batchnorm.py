"""``BatchNorm``: per channel of ``(C, H, W)``, per feature (last axis) otherwise.

Fields (the file format): ``epsilon`` (1e-5), ``momentum`` (0.1, PyTorch's convention: running = (1 - m) running
+ m batch). Each backend converts: Keras ``momentum = 1 - m``, Gluon ``momentum = 1 - m``.

* parameters: trainable ``gamma`` and ``beta`` (``C`` each), state ``moving_mean`` and ``moving_variance``
  (``C`` each). Per framework convention: PyTorch's ``parameters()`` holds 2C (the statistics are buffers);
  Keras' ``count_params`` and Gluon's ``collect_params`` hold 4C (the statistics are non-trainable weights,
  ``grad_req='null'`` in Gluon);
* neutral weight format: the four arrays in that order (the state travels with the weights, so that a model
  exported after a training step carries its running statistics);
* FLOPs (``norm`` column, per element): inference ``(x - mean) * inv_std * gamma + beta``: 4; a training step's
  forward adds the batch statistics (a sum, and a centred sum of squares: 1 + 3): 8;
* reference: inference normalizes with the running statistics; a training step's forward with the batch's
  (mean and biased variance over N and the spatial axes); :func:`running_update` gives the new running
  statistics: PyTorch folds in the unbiased variance (``n / (n - 1)``), Keras and MXNet the biased one.
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
    check_positive_number,
)
from xfbench.analytics.timeline_rules import Buf, OpRule

_STATS = (Buf("output", "output"), Buf("aux:save_mean", "stat"), Buf("aux:save_var", "stat"))
_GRADS = (Buf("grad:input", "input"), Buf("param:weight", "weight"), Buf("param:bias", "bias"))


#: The running-variance estimator each framework folds into its statistics (measured by the backends' tests).
UNBIASED_RUNNING_VARIANCE = {"torch": True, "tensorflow": False, "mxnet": False}


def _channels(shape: Shape) -> int:
    return shape[0] if len(shape) == 3 else shape[-1]


def _reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    """Batch axes of ``x`` (N first): all but the channel axis 1 of an image, all but the last otherwise."""
    if x.ndim == 4:
        return (0, 2, 3)
    return tuple(range(x.ndim - 1))


def _broadcast(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return v.reshape(1, -1, 1, 1) if x.ndim == 4 else v


def running_update(
    x: np.ndarray, moving_mean: np.ndarray, moving_variance: np.ndarray, momentum: float, framework: str
) -> tuple[np.ndarray, np.ndarray]:
    """The running statistics after one training step on ``x`` (N first), under ``framework``'s estimator."""
    axes = _reduce_axes(x)
    n = math.prod(x.shape[a] for a in axes)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    if UNBIASED_RUNNING_VARIANCE[framework]:
        var = var * n / max(n - 1, 1)
    return (1 - momentum) * moving_mean + momentum * mean, (1 - momentum) * moving_variance + momentum * var


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization with trainable scale and shift and running statistics (see the module docstring)."""

    epsilon: float = 1e-5
    momentum: float = 0.1
    name: str = ""

    #: The simulated step's op names per framework (their rules: RULES below).
    NHWC_INPUT: ClassVar[bool] = True  # Keras normalizes an image channels-last (axis -1)
    OPS: ClassVar[dict[str, str]] = {
        "torch": "native_batch_norm",
        "tensorflow": "BatchNormTrain",
        "mxnet": "BatchNorm",
    }
    RULES: ClassVar[dict[str, dict[str, OpRule]]] = {
        "torch": {
            "native_batch_norm": OpRule(
                _STATS,
                ("input", "aux:save_mean", "aux:save_var"),
                _GRADS,
                "tools/autograd/derivatives.yaml native_batch_norm: native_batch_norm_backward(grad, input, weight, "
                "running_mean, running_var, result1, result2, ...) saves the input and the batch mean and invstd",
            )
        },
        # Keras 3.15 has no fused path (keras/src/backend/tensorflow/nn.py batch_normalization calls
        # tf.nn.batch_normalization; the traced graph, tests/test_graph_tensorflow.py): x * scale (Mul, full size),
        # + shift (AddV2, the output); a training step first computes the moments (SquaredDifference, full size,
        # and two Means) and keeps x for the gradients of Mul and SquaredDifference, whose backward makes several
        # full-size temporaries (Tile, RealDiv, Mul, Sub) before the AddN of the input gradient
        "tensorflow": {
            "BatchNormTrain": OpRule(
                (Buf("aux:squared_difference", "input"), Buf("aux:scaled", "input"), *_STATS),
                ("input", "aux:save_mean", "aux:save_var"),
                (Buf("temp", "input"), Buf("temp", "input"), Buf("temp", "input"), *_GRADS),
                "tf.nn.moments + tf.nn.batch_normalization as traced on TF 2.21 / Keras 3.15 (op types read from the "
                "graph; the temporaries' lifetimes are a first approximation, not measured)",
            ),
            "BatchNormInfer": OpRule(
                (Buf("aux:scaled", "input"), Buf("output", "output")),
                (),
                (),
                "tf.nn.batch_normalization: Mul (x * scale), then AddV2 (the output); first approximation",
            ),
        },
        "mxnet": {
            "BatchNorm": OpRule(
                _STATS,
                ("input", "aux:save_mean", "aux:save_var"),
                _GRADS,
                "src/operator/nn/batch_norm.cc: the backward reads the input and the saved mean and variance "
                "(first approximation, not measured)",
            )
        },
    }

    def validate(self, index: int) -> None:
        check_positive_number(index, "epsilon", self.epsilon)
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
            raise SpecError("must be in [0, 1] (PyTorch's convention)", layer=index, field="momentum", value=m)
        check_one_input(index, self)

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        shape = tuple(in_shapes[0])
        if len(shape) not in (1, 2, 3):
            raise SpecError(
                f"BatchNorm needs a (C, H, W), (T, F) or (F,) input, got {len(shape)}-D per sample",
                layer=index,
                field="input",
                value=shape,
            )
        return shape

    def trainable_params(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> int:
        return 2 * _channels(in_shapes[0])

    def param_tensors(self, framework: str) -> int:
        return 2  # gamma and beta (the running statistics have no update)

    def cost(self, in_shapes: list[Shape], out_shape: Shape, framework: str) -> LayerCost:
        c = _channels(in_shapes[0])
        return LayerCost(params=(2 if framework == "torch" else 4) * c, norm=4 * math.prod(out_shape))

    def training_norm_flops(self, out_shape: Shape) -> int:
        """Per-sample FLOPs of a training step's forward: the statistics (4 per element) on top of :meth:`cost`."""
        return 4 * math.prod(out_shape)

    def weight_slots(self, in_shapes: list[Shape]) -> list[tuple[str, Shape, bool]]:
        c = _channels(in_shapes[0])
        return [
            ("gamma", (c,), True),
            ("beta", (c,), True),
            ("moving_mean", (c,), False),
            ("moving_variance", (c,), False),
        ]

    def forward(self, inputs: list[np.ndarray], params: list[np.ndarray], training: bool) -> np.ndarray:
        x = inputs[0]
        gamma, beta, moving_mean, moving_variance = params
        if training:
            axes = _reduce_axes(x)
            mean, var = x.mean(axis=axes), x.var(axis=axes)
        else:
            mean, var = moving_mean, moving_variance
        inv = gamma / np.sqrt(var + self.epsilon)
        return (x - _broadcast(mean, x)) * _broadcast(inv, x) + _broadcast(beta, x)

    def simulate(self, model: Any, label: str, xs: list[Any], in_shapes: list[Shape], out_shape: Shape) -> Any:
        low = model.low
        fw = low.c.framework
        x = xs[0]
        c = _channels(in_shapes[0])
        width = low.c.width
        params = {"weight": c * width, "bias": c * width}
        for name in ("weight", "bias"):
            low.params.append((f"{label}.{name}", c * width))
        for name in ("running_mean", "running_var"):
            low.buffers.append((f"{label}.{name}", c * width))
        op = self.OPS[fw] if low.c.training or fw != "tensorflow" else "BatchNormInfer"
        sizes = {"input": x.elems, "output": x.elems, "stat": c}
        y = low.out(op, {"input": x}, sizes, label=label, params=params)
        low.drop(x, label)
        return y

    def work(self, b: Any, site: WorkSite) -> None:
        """Inference: the normalization's passes over memory (TensorFlow: Mul then AddV2, two ops). A training
        step: the forward (batch statistics, running-statistics update, output) and the backward (input, scale and
        shift gradients), each priced from the run's BatchNorm probes (``batchnorm_fwd``/``_bwd``: elements per
        second, ``_call``: a fixed cost per call; ``benchmarks/harness/peaks.py``), with the memory passes as the
        floor where a probe is missing."""
        elems = site.batch * math.prod(site.out_shape)
        w = b.w
        if not site.training:
            ops = 2 if site.framework == "tensorflow" else 1
            b.mem(site.i, "forward", "batchnorm", 2 * ops * elems * w, ops, 0, out=elems * w)
            return
        b.mem(site.i, "forward", "batchnorm", 4 * elems * w, 1, elems, out=elems * w, rate="batchnorm_fwd")
        b.mem(site.i, "forward", "batchnorm (fixed)", 0.0, 0, 1, rate="batchnorm_fwd_call")
        b.mem(site.i, "input_grad", "batchnorm grad", 5 * elems * w, 1, elems, out=elems * w, rate="batchnorm_bwd")
        b.mem(site.i, "input_grad", "batchnorm grad (fixed)", 0.0, 0, 1, rate="batchnorm_bwd_call")
