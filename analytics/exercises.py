"""The exercise catalog (data) and the framework-free arithmetic that checks it.

Each :class:`Exercise` names its source text (``/work/shared/seeds/<file>``) and exercise number, quotes the
question, records the text's answer as a :class:`Claim` (a number with its unit and stated precision, a shape,
a layer name, a direction, or no answer at all) and says how to check it (:class:`Check`: which model or layer,
batch, dtype and which quantity). The measuring is done elsewhere (``benchmarks/exercises.py`` through the
backends and the fresh-process memory worker); this module predicts every quantity analytically and turns a
claim and a reference value into a verdict:

* ``holds``: within the claim's own stated precision (``12.6 MB`` is read as 12.6 +- 0.05 MB);
* ``holds within X%``: within 10 %;
* ``off by X%``: a number more than 10 % away (signed: claim relative to the reference);
* ``wrong``: a different shape, layer or direction, or a number off by 10x or more;
* ``unanswered -> <answer>``: the text gives no answer; ours follows the arrow.

A lower-bound claim ("at least 12.6 MB") holds when the reference is not below it; the explanation says how
far above the bound the measurement lies and why.

Units: bytes (decimal MB = 10^6 bytes, as the texts count), FLOPs (2 per multiply-accumulate), parameters
(scalars), seconds. No deep-learning framework is imported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from xfbench.analytics.catalog import catalog_model
from xfbench.analytics.memory import dtype_bytes
from xfbench.analytics.predict import Prediction, predict
from xfbench.analytics.shapes import infer_shapes, input_shapes
from xfbench.analytics.spec import (
    LSTM,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    ModelSpec,
    SpecError,
)
from xfbench.analytics.weights import weight_slots

SEEDS = {
    "000": "000_f3e221419468b9de.txt",
    "001": "001_5bbac0261d73ea2c.txt",
    "002": "002_4f4f53459a0b1518.txt",
    "003": "003_86c903331c3686d2.txt",
    "004": "004_2cb1bcf67471018b.txt",
}
CLAIM_KINDS = ("value", "lower_bound", "shape", "label", "less", "greater", "none")
WITHIN = 0.10  # "holds within X%" up to this relative distance
WRONG_FACTOR = 10.0  # a number off by this factor or more is "wrong"
VERDICT_WORDS = ("holds", "holds within", "off by", "wrong", "unanswered", "pending")
# The failures of a prediction an exercise may declare (Check.expected_error): documented answers, not bugs.
EXPECTED_ERRORS: dict[str, type[Exception]] = {"SpecError": SpecError}


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Claim:
    """What the text answers. ``value`` is in ``unit`` (bytes, params, FLOPs, ratio); ``stated`` is the text's
    own figure as written (its decimals give the precision); ``label`` is a layer name for "which layer"
    answers; ``shape`` a tensor shape in the spec's channels-first layout, batch first."""

    kind: str
    quote: str
    value: float | None = None
    unit: str = ""
    stated: str = ""
    label: str = ""
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CLAIM_KINDS:
            raise ValueError(f"unknown claim kind {self.kind!r}; allowed: {', '.join(CLAIM_KINDS)}")


@dataclass(frozen=True)
class Check:
    """How to check a claim.

    ``quantity`` is one of :data:`QUANTITIES`; ``model`` a catalog name or a key of :data:`ADHOC_MODELS`;
    ``other`` a second model for ratios (time, FLOPs, memory of ``model`` over ``other``);
    ``variants`` the remedy names for ``remedies``; ``batches`` the batch sizes of a memory curve.
    ``basis`` chooses the analytic figure a footprint claim is compared with in the framework-free row:
    ``"textbook"`` (the HOML ch14 ex2 method) or ``"ledger"`` (the full memory ledger).
    ``expected_error`` declares a documented failure of the prediction (a key of :data:`EXPECTED_ERRORS`,
    e.g. ``"SpecError"`` for a model the text describes but the spec rules reject): raised by the
    prediction, it gives a blank prediction with its message; any other exception is a bug
    (see :func:`predicted_or_blank`)."""

    quantity: str
    model: str
    phase: str = "inference"
    batch: int = 1
    dtype: str = "float32"
    other: str = ""
    basis: str = "ledger"
    variants: tuple[str, ...] = ()
    batches: tuple[int, ...] = ()
    per_sample: bool = False
    expected_error: str = ""

    def __post_init__(self) -> None:
        if self.expected_error and self.expected_error not in EXPECTED_ERRORS:
            raise ValueError(f"unknown expected_error {self.expected_error!r}; allowed: {', '.join(EXPECTED_ERRORS)}")


@dataclass(frozen=True)
class Exercise:
    id: str
    seed: str  # "000".."004"
    number: str
    question: str
    claim: Claim
    check: Check
    gap: str  # the sentence that explains a gap between claim, prediction and measurement

    @property
    def source(self) -> str:
        return SEEDS[self.seed]


QUANTITIES = (
    "params",  # parameter count (framework objects)
    "largest_layer_params",  # (layer, params) of the layer with the most parameters
    "largest_layer_flops",  # (layer, forward FLOPs per sample) of the costliest layer
    "output_shape",  # the model's output shape for the batch
    "layer_shape",  # the first layer's output shape for the batch
    "footprint",  # peak bytes of one step: measured step peak + parameters + input batch
    "flops",  # forward FLOPs of the batch (2 per MAC, no bias: the specs are bias-free)
    "backward_flops",  # training FLOPs - forward FLOPs
    "flops_ratio",  # forward FLOPs of model / other
    "time_ratio",  # step time of model / other (prediction: FLOP ratio)
    "memory_ratio",  # footprint of model / other
    "remedies",  # footprint of each remedy / footprint of the baseline
    "memory_curve",  # footprint vs batch: bytes per sample (fit), and the largest batch in a budget
    "activation_crossover",  # the training batch above which activations outweigh the largest layer
    "matmul",  # from benchmarks/matmul.py
)


# ------------------------------------------------------------------------------------------ ad-hoc models
def _conv_case(c_in: int, c_out: int, size: int, kernel: int, padding: int, name: str) -> ModelSpec:
    # No bias, so that every framework counter (torch: no bias adds; TF: bias adds) reports the same figure.
    layer = Conv2D(c_out, kernel, 1, padding, use_bias=False, name="conv")
    return ModelSpec(name, (c_in, size, size), (layer,), source="D2L 6.4 exercises (seed 001)")


def _cnn3_variant(stride1: int = 2, layers: int = 3) -> ModelSpec:
    convs: list[Layer] = [
        Conv2D(f, 3, stride1 if i == 0 else 2, "same", activation="relu", name=f"conv{i + 1}")
        for i, f in enumerate((100, 200, 400)[:layers])
    ]
    name = "cnn3" + (f"-stride{stride1}" if stride1 != 2 else "") + (f"-{layers}layers" if layers != 3 else "")
    return ModelSpec(name, (3, 200, 300), tuple(convs), source="HOML ch14 ex3 remedy on cnn3")


def _alexnet_variant(stride1: int = 4, drop_conv4: bool = False) -> ModelSpec:
    base = catalog_model("alexnet")
    layers: list[Layer] = []
    for layer in base.layers:
        if drop_conv4 and layer.label == "conv4":
            continue
        if layer.label == "conv1" and isinstance(layer, Conv2D):
            layer = Conv2D(96, 11, stride1, 1, activation="relu", name="conv1")
        layers.append(layer)
    name = "alexnet" + (f"-stride{stride1}" if stride1 != 4 else "") + ("-noconv4" if drop_conv4 else "")
    return ModelSpec(name, base.input_shape, tuple(layers), source="HOML ch14 ex3 remedy on AlexNet")


def _single_layer(layer: Layer, input_shape: tuple[int, ...], name: str) -> ModelSpec:
    return ModelSpec(name, input_shape, (layer,), source="exercise check")


ADHOC_MODELS: dict[str, Callable[[], ModelSpec]] = {
    # D2L 6.4 ex2-4: one convolution, c_i x h x w input, c_o x c_i x k x k kernel.
    "conv-base": lambda: _conv_case(32, 64, 56, 3, 1, "conv-base"),
    "conv-2x-channels": lambda: _conv_case(64, 128, 56, 3, 1, "conv-2x-channels"),
    "conv-2x-padding": lambda: _conv_case(32, 64, 56, 3, 2, "conv-2x-padding"),
    "conv-1x1": lambda: _conv_case(32, 64, 56, 1, 0, "conv-1x1"),
    # HOML ch15 ex2: an RNN layer of 32 units on [5, 10, 2] (LSTM: the spec's recurrent layer; shapes agree).
    "rnn32-seq": lambda: _single_layer(LSTM(32, return_sequences=True, name="rnn"), (10, 2), "rnn32-seq"),
    "rnn32-last": lambda: _single_layer(LSTM(32, return_sequences=False, name="rnn"), (10, 2), "rnn32-last"),
    # Course notebook 5.1.1-5.1.4 (seed 003).
    "course-5.1.1": lambda: _single_layer(Conv2D(1, 5, name="conv"), (3, 28, 28), "course-5.1.1"),
    "course-5.1.2": lambda: _single_layer(Conv2D(1, 5, 1, 2, name="conv"), (3, 28, 28), "course-5.1.2"),
    "course-5.1.3": lambda: _single_layer(Conv2D(1, 5, 2, 2, name="conv"), (3, 28, 28), "course-5.1.3"),
    "course-5.1.4": lambda: _single_layer(MaxPool2D(2, 2, name="pool"), (1, 28, 28), "course-5.1.4"),
    # DLWP ch5 basic MNIST convnet (seed 004), with its Flatten/Dense head.
    "dlwp-convnet": lambda: ModelSpec(
        "dlwp-convnet",
        (1, 28, 28),
        (
            Conv2D(32, 3, activation="relu", name="conv1"),
            MaxPool2D(2, name="pool1"),
            Conv2D(64, 3, activation="relu", name="conv2"),
            MaxPool2D(2, name="pool2"),
            Conv2D(64, 3, activation="relu", name="conv3"),
            Flatten(name="flatten"),
            Dense(64, activation="relu", name="dense1"),
            Dense(10, activation="softmax", name="dense2"),
        ),
        source="Deep Learning with Python ch5 (seed 004)",
    ),
    # HOML ch14 ex3 remedies.
    "cnn3-stride4": lambda: _cnn3_variant(stride1=4),
    "cnn3-2layers": lambda: _cnn3_variant(layers=2),
    "alexnet-stride8": lambda: _alexnet_variant(stride1=8),
    "alexnet-noconv4": lambda: _alexnet_variant(drop_conv4=True),
}

# HOML ch14 ex3: each remedy as (model, batch divisor, dtype, devices).
REMEDIES: dict[str, dict[str, tuple[str, int, str, int]]] = {
    "cnn3": {
        "baseline": ("cnn3", 1, "float32", 1),
        "smaller batch": ("cnn3", 2, "float32", 1),
        "larger stride": ("cnn3-stride4", 1, "float32", 1),
        "fewer layers": ("cnn3-2layers", 1, "float32", 1),
        "16-bit floats": ("cnn3", 1, "float16", 1),
        "two devices": ("cnn3", 2, "float32", 2),
    },
    "alexnet": {
        "baseline": ("alexnet", 1, "float32", 1),
        "smaller batch": ("alexnet", 2, "float32", 1),
        "larger stride": ("alexnet-stride8", 1, "float32", 1),
        "fewer layers": ("alexnet-noconv4", 1, "float32", 1),
        "16-bit floats": ("alexnet", 1, "float16", 1),
        "two devices": ("alexnet", 2, "float32", 2),
    },
}


def model_spec(name: str) -> ModelSpec:
    """A catalog model or an ad-hoc exercise model by name."""
    if name in ADHOC_MODELS:
        return ADHOC_MODELS[name]()
    return catalog_model(name)


# ------------------------------------------------------------------------------------------------ catalog
_Q_HOML2 = (
    "Three conv layers, 3x3 kernels, stride 2, 'same' padding, 100/200/400 feature maps, RGB 200x300 input: "
    "(a) parameters, (b) RAM for one instance (32-bit), (c) RAM for training on a mini-batch of 50"
)
_REMEDY_NAMES = ("smaller batch", "larger stride", "fewer layers", "16-bit floats", "two devices")

EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "homl14-2a-000",
        "000",
        "HOML ch14 ex2 (a)",
        _Q_HOML2,
        Claim("value", "the CNN has 2,800 + 180,200 + 720,400 = 903,400 parameters", 903_400, "params", "903,400"),
        Check("params", "cnn3"),
        "",
    ),
    Exercise(
        "homl14-2a-002",
        "002",
        "HOML ch14 ex2 (a)",
        _Q_HOML2,
        Claim("value", "28 x 100 + 901 x 200 + 1,801 x 400 = 903,400 parameters", 903_400, "params", "903,400"),
        Check("params", "cnn3"),
        "",
    ),
    Exercise(
        "homl14-2b-000",
        "000",
        "HOML ch14 ex2 (b)",
        _Q_HOML2,
        Claim(
            "lower_bound",
            "The total RAM required is therefore (at least) 12,613,600 bytes (about 12.6 MB)",
            12.6e6,
            "bytes",
            "12.6 MB",
        ),
        Check("footprint", "cnn3", "inference", 1, basis="textbook"),
        "The bound counts the two largest layer outputs and the parameters only; a framework also holds its "
        "input batch, convolution workspace (im2col / oneDNN scratch) and allocator slack.",
    ),
    Exercise(
        "homl14-2b-002",
        "002",
        "HOML ch14 ex2 (b)",
        _Q_HOML2,
        Claim(
            "lower_bound",
            "72,000,000 bits, or 9 MB ... another 28,908,800 bits, or 3.61 MB ... a total of 12.61 MB",
            12.61e6,
            "bytes",
            "12.61 MB",
        ),
        Check("footprint", "cnn3", "inference", 1, basis="textbook"),
        "The bound counts the two largest layer outputs and the parameters only; a framework also holds its "
        "input batch, convolution workspace (im2col / oneDNN scratch) and allocator slack.",
    ),
    Exercise(
        "homl14-2c-000",
        "000",
        "HOML ch14 ex2 (c)",
        _Q_HOML2,
        Claim(
            "lower_bound",
            "roughly 525 + 36 + 3.6 = 564.6 MB, and that's really an optimistic bare minimum",
            564.6e6,
            "bytes",
            "564.6 MB",
        ),
        Check("footprint", "cnn3", "training", 50, basis="textbook"),
        "000 rounds the third layer's 1.52 MB per instance down to 1.5 MB (525 MB instead of 526 MB); the bound "
        "ignores gradients (weights and activations), ReLU masks and workspace, which a real step holds.",
    ),
    Exercise(
        "homl14-2c-002",
        "002",
        "HOML ch14 ex2 (c)",
        _Q_HOML2,
        Claim(
            "lower_bound",
            "526 MB ... Plus ... 3.61 MB ... Plus ... 36 MB ... This totals 565.61 MB "
            "(not including memory required to store the gradients)",
            565.61e6,
            "bytes",
            "565.61 MB",
        ),
        Check("footprint", "cnn3", "training", 50, basis="textbook"),
        "The bound ignores gradients (weights and activations), ReLU masks and workspace, which a real step holds.",
    ),
    Exercise(
        "homl14-3-cnn3",
        "000",
        "HOML ch14 ex3",
        "If your GPU runs out of memory while training a CNN, what are five things you could try?",
        Claim(
            "less",
            "Reduce the mini-batch size; larger stride; remove layers; 16-bit floats; distribute the CNN "
            "across multiple devices (002 lists the same five)",
        ),
        Check("remedies", "cnn3", "training", 8, variants=_REMEDY_NAMES),
        "Each remedy shrinks a different ledger term: batch and stride the activations, 16-bit everything, fewer "
        "layers mostly activations, two devices halve the per-device batch but copy the parameters.",
    ),
    Exercise(
        "homl14-3-alexnet",
        "000",
        "HOML ch14 ex3",
        "If your GPU runs out of memory while training a CNN, what are five things you could try?",
        Claim(
            "less",
            "Reduce the mini-batch size; larger stride; remove layers; 16-bit floats; distribute the CNN "
            "across multiple devices (002 lists the same five)",
        ),
        Check("remedies", "alexnet", "training", 8, variants=_REMEDY_NAMES),
        "On AlexNet the 47 M parameters (x2 with gradients) are a large fixed term, so batch and stride "
        "remedies save less than on cnn3; dropping conv4 removes only 1.3 M parameters and one 55 kB map.",
    ),
    Exercise(
        "homl15-2-seq",
        "000",
        "HOML ch15 ex2",
        "How many dimensions must the inputs of an RNN layer have? ... What about its outputs?",
        Claim(
            "shape",
            "an RNN layer with 32 neurons processes the batch [5, 10, 2] ... the output will have a shape "
            "of [5, 10, 32]",
            shape=(5, 10, 32),
        ),
        Check("output_shape", "rnn32-seq", "inference", 5),
        "The answer describes a sequence-returning layer (Keras return_sequences=True).",
    ),
    Exercise(
        "homl15-2-last",
        "000",
        "HOML ch15 ex2",
        "How many dimensions must the inputs of an RNN layer have? ... What about its outputs?",
        Claim("shape", "The outputs are also three-dimensional ... [5, 10, 32]", shape=(5, 10, 32)),
        Check("output_shape", "rnn32-last", "inference", 5),
        "Keras's default (return_sequences=False) returns only the last step: two dimensions, [5, 32].",
    ),
    Exercise(
        "d2l-4.7.6-3-inference",
        "001",
        "D2L 4.7.6 ex3",
        "Compute the memory footprint for training and inference in the model described in the current chapter.",
        Claim(
            "value",
            "Inference: only need memory for W(1), W(2), b(1), b(2)",
            203_530 * 4,
            "bytes",
            "203,530 params x 4 B",
        ),
        Check("footprint", "mlp", "inference", 256),
        "Inference also holds the input batch (784 floats per sample) and the hidden activations, which at "
        "batch 256 exceed the 0.8 MB of weights.",
    ),
    Exercise(
        "d2l-4.7.6-3-training",
        "001",
        "D2L 4.7.6 ex3",
        "Compute the memory footprint for training and inference in the model described in the current chapter.",
        # W1, W2 (784x256 + 256x10), dJ/do (256x10), phi'(z) (256x256), x (256x784) at batch 256, float32.
        Claim("value", "Training: need memory for dJ/do, W(2), W(1), phi'(z), x", 1_888_256, "bytes", "1,888,256 B"),
        Check("footprint", "mlp", "training", 256),
        "The list leaves out the weight gradients (as large as the weights), the biases, the hidden "
        "activations h kept for dJ/dW(2) and the labels.",
    ),
    Exercise(
        "d2l-6.4-2-forward",
        "001",
        "D2L 6.4 ex2",
        "Input c_i x h x w, kernel c_o x c_i x k_h x k_w, padding (p_h, p_w), stride (s_h, s_w): computational cost "
        "of the forward computation? (case: 32 -> 64 channels, 56x56, 3x3, padding 1, stride 1, batch 1)",
        Claim("none", "(blank: the O(...) is written under 'memory footprint')"),
        Check("flops", "conv-base", "inference", 1),
        "2 c_i c_o k_h k_w m_h m_w FLOPs with m = floor((h + 2p - k)/s) + 1 (one multiply and one add per MAC).",
    ),
    Exercise(
        "d2l-6.4-2-memory",
        "001",
        "D2L 6.4 ex2",
        "What is the memory footprint? (same case, batch 1, float32)",
        Claim(
            "value", "$O(c_i c_o k_h k_w m_h m_w)$", 32 * 64 * 9 * 56 * 56 * 4, "bytes", "c_i c_o k_h k_w m_h m_w x 4 B"
        ),
        Check("footprint", "conv-base", "inference", 1),
        "That product is the number of multiply-accumulates, not of stored numbers: the footprint is "
        "input + output + kernel = (c_i h w + c_o m_h m_w + c_o c_i k_h k_w) x 4 bytes.",
    ),
    Exercise(
        "d2l-6.4-2-backward",
        "001",
        "D2L 6.4 ex2",
        "What is the computational cost for the backward computation? (same case)",
        Claim("none", "(blank)"),
        Check("backward_flops", "conv-base", "training", 1),
        "Backward = weight gradient (as many FLOPs as the forward) + input gradient (as many again), but a first "
        "layer needs no input gradient, so here it equals the forward cost.",
    ),
    Exercise(
        "d2l-6.4-3-channels",
        "001",
        "D2L 6.4 ex3",
        "By what factor does the number of calculations increase if we double c_i and c_o?",
        Claim("none", "(blank)"),
        Check("flops_ratio", "conv-2x-channels", other="conv-base"),
        "FLOPs scale with c_i x c_o: doubling both is 4x; the measured time ratio is below 4 when the small case "
        "does not saturate the cores.",
    ),
    Exercise(
        "d2l-6.4-3-channels-time",
        "001",
        "D2L 6.4 ex3",
        "By what factor does the number of calculations increase if we double c_i and c_o? (measured time)",
        Claim("none", "(blank)"),
        Check("time_ratio", "conv-2x-channels", other="conv-base", batch=8),
        "Time follows the FLOPs only where both cases run at the same FLOP rate.",
    ),
    Exercise(
        "d2l-6.4-3-padding",
        "001",
        "D2L 6.4 ex3",
        "What happens if we double the padding? (56x56, 3x3: padding 1 -> 2)",
        Claim("none", "(blank)"),
        Check("flops_ratio", "conv-2x-padding", other="conv-base"),
        "Padding only enlarges the output map: (h + 2p - k + 1)^2 goes from 56^2 to 58^2, about +7 %.",
    ),
    Exercise(
        "d2l-6.4-4",
        "001",
        "D2L 6.4 ex4",
        "If k_h = k_w = 1, what is the complexity of the forward computation? (32 -> 64 channels, 56x56)",
        Claim("value", "$O(c_i*c_o*h*w)$", 32 * 64 * 56 * 56, "MACs", "c_i c_o h w"),
        Check("flops", "conv-1x1", "inference", 1),
        "The formula counts multiply-accumulates; one MAC is two FLOPs, which is what the counters count.",
    ),
    Exercise(
        "d2l-6.4-4-time",
        "001",
        "D2L 6.4 ex4",
        "1x1 kernel vs 3x3 kernel (same channels and map): forward time ratio",
        Claim("none", "(blank)"),
        Check("time_ratio", "conv-1x1", other="conv-base", batch=8),
        "A 1x1 convolution is a plain matrix product; the 3x3 one pays for im2col/workspace on top of 9x the "
        "FLOPs, so the time ratio need not be exactly 1/9.",
    ),
    Exercise(
        "d2l-6.7-3",
        "001",
        "D2L 6.7 ex3",
        "Modify the batch size, and observe the changes in accuracy and GPU memory (AlexNet, 224x224, training).",
        Claim("none", "(blank)"),
        Check("memory_curve", "alexnet", "training", batches=(1, 2, 4, 8, 16)),
        "Peak memory is a fixed part (parameters, gradients, framework) plus a per-sample part (activations "
        "kept for backward, their gradients, workspace); the largest batch is set by the per-sample part.",
    ),
    Exercise(
        "d2l-6.7-4a",
        "001",
        "D2L 6.7 ex4a",
        "What is the dominant part for the memory footprint of AlexNet?",
        Claim("value", "Dense1 - 26 millions of parameters", 26e6, "params", "26 millions", label="fc6"),
        Check("largest_layer_params", "alexnet"),
        "fc6 maps the 256x5x5 = 6,400 flattened features to 4,096 units: 26,218,496 parameters (105 MB).",
    ),
    Exercise(
        "d2l-6.7-4a-batch",
        "001",
        "D2L 6.7 ex4a",
        "Is fc6 still the dominant memory part when training at D2L's batch size of 128?",
        Claim("label", "Dense1 - 26 millions of parameters", label="fc6"),
        Check("activation_crossover", "alexnet", "training", 128),
        "fc6 dominates only at small batches: the activations kept for backward grow with the batch and "
        "outweigh fc6's weights and gradients above the crossover batch.",
    ),
    Exercise(
        "d2l-6.7-4b",
        "001",
        "D2L 6.7 ex4b",
        "What is the dominant part for computation in AlexNet?",
        Claim("value", "Conv2 - 16 millions of FLOP", 16e6, "FLOPs", "16 millions", label="conv2"),
        Check("largest_layer_flops", "alexnet"),
        "conv2 is the costliest layer, but at 26x26x256 outputs x 96x5x5 inputs it does 415 M MACs (830 M FLOPs) "
        "per 224x224 sample, about 50x the 16 M claimed.",
    ),
    Exercise(
        "d2l-6.8-2-time",
        "001",
        "D2L 6.8 ex2",
        "Compared with AlexNet, VGG is much slower in terms of computation ... (VGG-11 / AlexNet training step)",
        Claim("greater", "VGG is much slower in terms of computation (the question's premise; no answer given)"),
        Check("time_ratio", "vgg11", "training", 2, other="alexnet"),
        "VGG-11 runs its 3x3 convolutions at 224x224 and 112x112 with 64-128 channels: about 8x AlexNet's FLOPs.",
    ),
    Exercise(
        "d2l-6.8-2-memory",
        "001",
        "D2L 6.8 ex2",
        "... and it also needs more GPU memory (VGG-11 / AlexNet training peak)",
        Claim("greater", "it also needs more GPU memory (the question's premise; no answer given)"),
        Check("memory_ratio", "vgg11", "training", 2, other="alexnet"),
        "VGG-11 keeps full-resolution 64-channel maps for backward and has 129 M parameters (fc6: 25088 x 4096) "
        "against AlexNet's 47 M.",
    ),
    Exercise(
        "d2l-6.9-3a",
        "001",
        "D2L 6.9 ex3a",
        "Calculate the resource usage for NiN: what is the number of parameters?",
        Claim("none", "(an image, not in the text)"),
        Check("params", "nin"),
        "",
    ),
    Exercise(
        "d2l-6.9-3b",
        "001",
        "D2L 6.9 ex3b",
        "What is the amount of computation? (forward FLOPs, one 224x224 sample)",
        Claim("none", "(an image, not in the text)"),
        Check("flops", "nin", "inference", 1),
        "The framework counters add bias adds (TensorFlow) and pooling (TensorFlow) on top of the conv MACs.",
    ),
    Exercise(
        "d2l-6.9-3c",
        "001",
        "D2L 6.9 ex3c",
        "What is the amount of memory needed during training? (batch 4)",
        Claim("none", "(an image, not in the text)"),
        Check("footprint", "nin", "training", 4),
        "",
    ),
    Exercise(
        "d2l-6.9-3d",
        "001",
        "D2L 6.9 ex3d",
        "What is the amount of memory needed during inference? (batch 1)",
        Claim("none", "(an image, not in the text)"),
        Check("footprint", "nin", "inference", 1),
        "",
    ),
    Exercise(
        "d2l-5.6.5-1",
        "001",
        "D2L 5.6.5 ex1",
        "Multiply large matrices on CPU and GPU: the difference in speed? And for a small amount of calculation?",
        Claim("none", "(code only; no timing printed)"),
        Check("matmul", "matmul"),
        "",
    ),
    Exercise(
        "d2l-5.6.5-3",
        "001",
        "D2L 5.6.5 ex3",
        "1000 100x100 matmuls, log tr(MM^T) one at a time vs keep the log on the device and transfer once",
        Claim("none", "(code only; no timing printed)"),
        Check("matmul", "logging"),
        "",
    ),
    Exercise(
        "d2l-5.6.5-4",
        "001",
        "D2L 5.6.5 ex4",
        "Two matmuls on two GPUs at the same time vs in sequence on one GPU (hint: almost linear scaling)",
        Claim(
            "value",
            "in sequence 0.0090 s; at the same time 0.0049 s (one GPU, batched dot)",
            0.009020805358886719 / 0.004949331283569336,
            "ratio",
            "1.82",
        ),
        Check("matmul", "concurrency"),
        "The timings in 001 run without wait_to_read (asynchronous launches), and the 'same time' case is one "
        "batched dot on one GPU, not two GPUs.",
    ),
    Exercise(
        "course-5.1.1",
        "003",
        "Ex. 5.1.1",
        "One conv layer with a single 5x5x3 filter: how many weights (parameters)? Hint: don't forget the bias",
        Claim("none", "(no answer in the notebook)"),
        Check("params", "course-5.1.1"),
        "",
    ),
    Exercise(
        "course-5.1.2",
        "003",
        "Ex. 5.1.2",
        "28x28x3 input, padding 2, stride 1, one 5x5x3 filter: dimensionality of the activation map?",
        Claim("none", "(no answer in the notebook)"),
        Check("layer_shape", "course-5.1.2"),
        "(28 - 5 + 2*2)/1 + 1 = 28: 'same' size, one channel.",
    ),
    Exercise(
        "course-5.1.3",
        "003",
        "Ex. 5.1.3",
        "Stride 2 instead of 1: what problem does this immediately cause?",
        Claim("none", "(no answer in the notebook)"),
        Check("layer_shape", "course-5.1.3"),
        "(28 - 5 + 4)/2 + 1 = 14.5 is not an integer: the frameworks floor it to 14 and drop the last padded "
        "row and column.",
    ),
    Exercise(
        "course-5.1.4",
        "003",
        "Ex. 5.1.4",
        "Max-pool (2x2, stride 2) a 10x28x28x1 activation map in Keras and report the dimensionality",
        Claim("none", "(no answer in the notebook)"),
        Check("layer_shape", "course-5.1.4", "inference", 10),
        "Channels-first here; Keras reports (10, 14, 14, 1).",
    ),
    Exercise(
        "dlwp5-convnet-params",
        "004",
        "DLWP ch5 basic convnet, model.summary()",
        "The basic MNIST convnet (conv32-pool-conv64-pool-conv64, Flatten, Dense 64, Dense 10): its summary",
        Claim("none", "(model.summary() is called; its output is not in the notes)"),
        Check("params", "dlwp-convnet"),
        "",
    ),
    Exercise(
        "dlwp5-convnet-shrink",
        "004",
        "DLWP ch5 basic convnet",
        "Conv2D(32, (3, 3)) on a 28x28x1 input: the output size",
        Claim(
            "shape",
            "The output is always smaller than the input by 1 (vertically and horizontally)",
            shape=(1, 32, 27, 27),
        ),
        Check("layer_shape", "dlwp-convnet"),
        "A 'valid' k x k convolution shrinks each side by k - 1: by 2 for 3x3 (28 -> 26), by 1 only for 2x2.",
    ),
    Exercise(
        "dlwp5-convnet-output",
        "004",
        "DLWP ch5 basic convnet",
        "The convnet's output for one MNIST image (after the Dense softmax head)",
        Claim("none", "(not given)"),
        Check("output_shape", "dlwp-convnet"),
        "",
    ),
)


def exercise_ids() -> list[str]:
    return [e.id for e in EXERCISES]


def get_exercise(ex_id: str) -> Exercise:
    for e in EXERCISES:
        if e.id == ex_id:
            return e
    raise KeyError(f"unknown exercise {ex_id!r}; allowed: {', '.join(exercise_ids())}")


def select(only: Sequence[str] | None) -> list[Exercise]:
    """Exercises whose id equals or starts with one of ``only`` (all when empty)."""
    if not only:
        return list(EXERCISES)
    out = [e for e in EXERCISES if any(e.id == o or e.id.startswith(o) for o in only)]
    if not out:
        raise KeyError(f"no exercise matches {', '.join(only)}; allowed: {', '.join(exercise_ids())}")
    return out


# ---------------------------------------------------------------------------------------------- arithmetic
def stated_precision(claim: Claim) -> float:
    """Half a unit in the last stated digit, in the claim's unit (``12.6 MB`` -> 0.05e6 bytes)."""
    if claim.value is None:
        return 0.0
    m = re.search(r"\d[\d,]*(\.\d+)?", claim.stated)
    if not m:
        return 0.0
    number = float(m.group(0).replace(",", ""))
    if number == 0:
        return 0.0
    decimals = len(m.group(1)) - 1 if m.group(1) else 0
    return 0.5 * 10.0**-decimals * abs(claim.value) / number


def claim_in(claim: Claim, unit: str) -> float | None:
    """The claim's number in ``unit`` (MACs are converted to FLOPs at 2 FLOPs each)."""
    if claim.value is None:
        return None
    if claim.unit == "MACs" and unit == "FLOPs":
        return 2.0 * claim.value
    return float(claim.value)


@dataclass(frozen=True)
class Verdict:
    label: str  # holds | holds within X% | off by X% | wrong | unanswered -> answer | pending: ...
    rel_error: float | None = None  # (claim - reference) / reference

    @property
    def word(self) -> str:
        for w in VERDICT_WORDS:
            if self.label.startswith(w):
                return w
        return self.label


def _pct(x: float) -> str:
    a = abs(x) * 100
    text = f"{a:.2g}" if a < 10 else f"{a:.0f}"
    return text


def verdict(
    claim: Claim,
    reference: float | str | tuple[int, ...] | None,
    unit: str = "",
    answer: str = "",
    label: str = "",
) -> Verdict:
    """The verdict of ``claim`` against ``reference`` (a number in ``unit``, a shape, or a layer name).

    ``answer`` is the text shown after ``unanswered ->``; ``label`` the reference's layer name where the claim
    names one. A reference of ``None`` gives ``pending``.
    """
    if reference is None:
        return Verdict("pending: not measured")
    if claim.kind == "none":
        return Verdict(f"unanswered -> {answer or reference}")
    if claim.label and label and claim.label != label:
        return Verdict(f"wrong (the text names {claim.label}, the reference is {label})")
    if claim.kind == "shape":
        if tuple(claim.shape) == tuple(reference):  # type: ignore[arg-type]
            return Verdict("holds", 0.0)
        return Verdict("wrong")
    if claim.kind == "label":
        return Verdict("holds" if claim.label == reference else "wrong")
    if claim.kind in ("less", "greater"):
        assert isinstance(reference, (int, float))
        ok = reference < 1.0 if claim.kind == "less" else reference > 1.0
        return Verdict("holds" if ok else "wrong", float(reference) - 1.0)
    assert isinstance(reference, (int, float)) and not isinstance(reference, bool)
    value = claim_in(claim, unit)
    assert value is not None
    ref = float(reference)
    if ref == 0:
        return Verdict("holds" if value == 0 else "wrong")
    rel = (value - ref) / ref
    tol = stated_precision(claim) / abs(value) if value else 0.0
    if claim.kind == "lower_bound":
        if value <= ref * (1 + tol):
            return Verdict("holds", rel)
    elif abs(rel) <= tol:
        return Verdict("holds", rel)
    if value > 0 and ref > 0 and max(value / ref, ref / value) >= WRONG_FACTOR:
        return Verdict(f"wrong ({value / ref:.3g}x)", rel)
    if claim.kind == "value" and abs(rel) <= WITHIN:
        return Verdict(f"holds within {_pct(rel)}%", rel)
    sign = "+" if rel > 0 else "-"
    return Verdict(f"off by {sign}{_pct(rel)}%", rel)


# ---------------------------------------------------------------------------------------------- predictions
def prediction(name: str, batch: int = 1, dtype: str = "float32", framework: str = "tensorflow") -> Prediction:
    return predict(model_spec(name), batch, dtype, "sgd", framework)


def footprint_bytes(pred: Prediction, phase: str) -> int:
    """The ledger's whole predicted peak for ``phase`` (parameters and the input batch included)."""
    return pred.training.peak_bytes if phase == "training" else pred.inference.peak_bytes


def baseline_terms_bytes(pred: Prediction, phase: str) -> int:
    """What the memory worker's baseline already holds before the step: parameters + the input batch."""
    ledger = pred.training if phase == "training" else pred.inference
    return ledger.term("parameters") + ledger.term("input_batch")


def measured_footprint(step_peak_bytes: int, pred: Prediction, phase: str) -> int:
    """The measured step peak (above the post-build baseline) + the baseline's parameters and input batch."""
    return step_peak_bytes + baseline_terms_bytes(pred, phase)


def layer_params(spec: ModelSpec) -> dict[str, int]:
    """Parameters per layer name (layers without weights left out)."""
    out: dict[str, int] = {}
    for slot in weight_slots(spec):
        out[slot.layer_name] = out.get(slot.layer_name, 0) + math.prod(slot.shape)
    return out


def group_weights(spec: ModelSpec, sizes: Sequence[int]) -> dict[str, int]:
    """Parameters per layer name from a framework's neutral weight list (``sizes``: element counts in order)."""
    slots = weight_slots(spec)
    if len(slots) != len(sizes):
        raise ValueError(f"{len(sizes)} weight arrays for {len(slots)} slots of {spec.name}")
    out: dict[str, int] = {}
    for slot, n in zip(slots, sizes):
        out[slot.layer_name] = out.get(slot.layer_name, 0) + int(n)
    return out


def largest(items: dict[str, int]) -> tuple[str, int]:
    name = max(items, key=lambda k: items[k])
    return name, items[name]


def layer_flops(spec: ModelSpec) -> dict[str, int]:
    """Forward matmul FLOPs per layer for one sample (layers with weights)."""
    pred = predict(spec, 1)
    return {lp.name: lp.forward_flops for lp in pred.layers if lp.forward_flops}


def single_layer_specs(spec: ModelSpec) -> list[ModelSpec]:
    """Each layer with weights of ``spec`` alone, with its input shape (to count its FLOPs in isolation)."""
    out: list[ModelSpec] = []
    for i, (layer, shape) in enumerate(zip(spec.layers, input_shapes(spec))):
        if isinstance(layer, (Conv2D, Dense, LSTM)):
            name = layer.label if layer.label != layer.type else f"{layer.type.lower()}{i}"
            out.append(ModelSpec(name, tuple(shape), (layer,), source=f"{spec.name} layer {i}"))
    return out


def output_shape(name: str, batch: int, first_layer: bool = False) -> tuple[int, ...]:
    shapes = infer_shapes(model_spec(name))
    return (batch, *(shapes[0] if first_layer else shapes[-1]))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = intercept + slope * x``; returns ``(intercept, slope)``."""
    n = len(xs)
    if n < 2 or n != len(ys):
        raise ValueError("need at least two (x, y) points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("x values are all equal")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def largest_batch_within(budget: float, intercept: float, slope: float) -> int:
    """The largest batch ``b >= 0`` with ``intercept + slope * b <= budget`` (0 when even batch 1 does not fit)."""
    if slope <= 0:
        raise ValueError("slope must be positive")
    return max(math.floor((budget - intercept) / slope), 0)


def crossover_batch(fixed_bytes: float, per_sample_bytes: float) -> float:
    """The batch above which ``per_sample_bytes * batch`` exceeds ``fixed_bytes``."""
    return fixed_bytes / per_sample_bytes


@dataclass
class Search:
    """The probes a batch-size search made: ``(batch, fits)`` in order."""

    probes: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def largest_fit(self) -> int:
        fits = [b for b, ok in self.probes if ok]
        return max(fits) if fits else 0


def bisect_largest_batch(fits: Callable[[int], bool], start: int, limit: int = 4096) -> Search:
    """The largest batch for which ``fits(batch)`` is true, assuming it is monotone (fits up to a point).

    Starts at ``start`` (e.g. the predicted largest batch), doubles or halves until it brackets the edge,
    then bisects: about ``2 log2(error of the start) + 2`` calls to ``fits``. A ``start`` within a factor 2
    of the answer takes 3-5 calls.
    """
    search = Search()

    def probe(b: int) -> bool:
        ok = fits(b)
        search.probes.append((b, ok))
        return ok

    start = max(1, min(start, limit))
    if probe(start):
        lo, hi = start, None
        b = start
        while hi is None:
            if b >= limit:
                return search
            b = min(b * 2, limit)
            if probe(b):
                lo = b
            else:
                hi = b
    else:
        hi, lo = start, None
        b = start
        while lo is None:
            if b == 1:
                return search
            b = max(b // 2, 1)
            if probe(b):
                lo = b
            else:
                hi = b
    assert lo is not None and hi is not None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return search


def remedy_prediction(model: str, batch: int, remedy: str) -> tuple[int, int]:
    """(predicted training footprint of the remedy, of the baseline) in bytes, per device.

    Two devices: data parallel, each device holds all parameters, gradients and half the batch.
    """
    name, divisor, dtype, _devices = REMEDIES[model][remedy]
    base = footprint_bytes(prediction(model, batch), "training")
    var = footprint_bytes(prediction(name, max(batch // divisor, 1), dtype), "training")
    return var, base


def dtype_width(dtype: str) -> int:
    return dtype_bytes(dtype)


# ------------------------------------------------------------------------------------------ per exercise
@dataclass(frozen=True)
class Figure:
    """A predicted or measured figure: ``value`` (number in ``unit``, a shape, or ``None``) and an optional
    layer ``label``; ``note`` says what it is."""

    value: float | tuple[int, ...] | str | None
    unit: str = ""
    label: str = ""
    note: str = ""


def fmt(value: float | tuple[int, ...] | str | None, unit: str = "") -> str:
    """Human text of a figure: decimal MB for bytes, thousands separators for counts, 3 digits for ratios."""
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    if unit == "bytes":
        return f"{value / 1e6:,.2f} MB"
    if unit in ("FLOPs", "MACs"):
        return f"{value / 1e6:,.1f} M{unit[:-1]}" if value < 1e9 else f"{value / 1e9:,.3f} G{unit[:-1]}"
    if unit == "params":
        return f"{int(value):,}"
    if unit == "ratio":
        return f"{value:.3g}x"
    if unit == "s":
        return f"{value * 1e3:.3g} ms"
    if unit == "bytes/sample":
        return f"{value / 1e6:,.2f} MB/sample"
    if unit == "batch":
        return f"{value:.4g}"
    return f"{value:g}"


def claim_text(claim: Claim) -> str:
    if claim.kind == "none":
        return "no answer given"
    if claim.kind == "shape":
        return fmt(claim.shape)
    if claim.kind in ("less", "greater"):
        return claim.kind + " (direction)"
    if claim.kind == "label":
        return claim.label
    text = claim.stated or fmt(claim.value, claim.unit)
    if claim.label:
        text = f"{claim.label}: {text}"
    return ("at least " if claim.kind == "lower_bound" else "") + text


def _forward_training_flops(pred: Prediction, phase: str) -> int:
    return pred.forward_flops + (pred.backward_flops if phase == "training" else 0)


def predicted_figure(ex: Exercise, framework: str = "tensorflow") -> Figure:
    """The analytic figure for ``ex`` (framework: the parameter convention; only LSTMs differ)."""
    c = ex.check
    q = c.quantity
    if q == "params":
        return Figure(prediction(c.model, framework=framework).params, "params")
    if q == "largest_layer_params":
        name, n = largest(layer_params(model_spec(c.model)))
        return Figure(n, "params", name)
    if q == "largest_layer_flops":
        name, n = largest(layer_flops(model_spec(c.model)))
        return Figure(n, "FLOPs", name, "forward FLOPs per sample")
    if q in ("output_shape", "layer_shape"):
        return Figure(output_shape(c.model, c.batch, first_layer=q == "layer_shape"), "shape")
    if q == "footprint":
        pred = prediction(c.model, c.batch, c.dtype, framework)
        if c.basis == "textbook":
            tb = pred.textbook_training_bytes if c.phase == "training" else pred.textbook_inference_bytes
            return Figure(tb, "bytes", note="textbook method")
        return Figure(footprint_bytes(pred, c.phase), "bytes", note="ledger peak")
    if q == "flops":
        return Figure(prediction(c.model, c.batch).forward_flops, "FLOPs")
    if q == "backward_flops":
        return Figure(prediction(c.model, c.batch).backward_flops, "FLOPs")
    if q in ("flops_ratio", "time_ratio"):
        a = _forward_training_flops(prediction(c.model, c.batch), c.phase)
        b = _forward_training_flops(prediction(c.other, c.batch), c.phase)
        return Figure(a / b, "ratio", note="FLOP ratio")
    if q == "memory_ratio":
        a = footprint_bytes(prediction(c.model, c.batch), c.phase)
        b = footprint_bytes(prediction(c.other, c.batch), c.phase)
        return Figure(a / b, "ratio", note="ledger ratio")
    if q == "memory_curve":
        xs = list(c.batches)
        ys = [footprint_bytes(prediction(c.model, b), "training") for b in xs]
        _, slope = fit_line(xs, ys)
        return Figure(slope, "bytes/sample", note="ledger bytes per sample")
    if q == "activation_crossover":
        per_sample = per_sample_bytes(c.model)
        fixed = 2 * largest(layer_params(model_spec(c.model)))[1] * dtype_bytes(c.dtype)
        cross = crossover_batch(fixed, per_sample)
        return Figure(cross, "batch", note="crossover batch (predicted)")
    if q == "matmul":
        return Figure(None, note="see xfbench matmul")
    if q == "remedies":
        return Figure(None, "ratio", note="per remedy")
    raise ValueError(f"unknown quantity {q!r}; allowed: {', '.join(QUANTITIES)}")


def predicted_or_blank(ex: Exercise, framework: str = "tensorflow") -> tuple[Figure, str]:
    """``(predicted_figure(ex, framework), "")``, or ``(Figure(None), "no prediction: <Type>: <message>")``
    when the prediction raises the failure the exercise declares (``Check.expected_error``).

    Any other exception propagates: it is a bug, and the caller must make its row an ``error`` row (status
    ``error``, the message naming the exception), never an ``ok`` row with a blank prediction.
    """
    declared = EXPECTED_ERRORS.get(ex.check.expected_error) if ex.check.expected_error else None
    try:
        return predicted_figure(ex, framework), ""
    except Exception as exc:
        if declared is None or not isinstance(exc, declared):
            raise
        return Figure(None), f"no prediction: {type(exc).__name__}: {exc}".splitlines()[0][:300]


def per_sample_bytes(model: str) -> float:
    """Predicted training bytes per additional sample (the ledger's slope between batch 1 and 2)."""
    return float(footprint_bytes(prediction(model, 2), "training") - footprint_bytes(prediction(model, 1), "training"))


def dominant_part(model: str, batch: int, per_sample: float, dtype: str = "float32") -> str:
    """``fc6``-style name of the largest layer if its weights + gradients outweigh ``per_sample * batch``
    bytes of activations at ``batch``, else ``"activations"``."""
    name, n = largest(layer_params(model_spec(model)))
    return name if 2 * n * dtype_bytes(dtype) >= per_sample * batch else "activations"


def analytic_verdict(ex: Exercise) -> tuple[Figure, Verdict]:
    """The claim against the analytic prediction (the framework-free row of the report). A failure the exercise
    declares gives a blank figure and a ``pending: no prediction: ...`` verdict; any other exception propagates
    (see :func:`predicted_or_blank`)."""
    fig, why = predicted_or_blank(ex)
    if why:
        return fig, Verdict(f"pending: {why}")
    c = ex.check
    if c.quantity == "activation_crossover":
        part = dominant_part(c.model, c.batch, per_sample_bytes(c.model), c.dtype)
        v = verdict(ex.claim, part)
        return fig, v
    if c.quantity in ("remedies", "matmul") or fig.value is None:
        return fig, Verdict(
            "pending: measured per backend" if c.quantity == "remedies" else "pending: run xfbench matmul"
        )
    answer = fmt(fig.value, fig.unit) + (f" ({fig.label})" if fig.label else "")
    claim = ex.claim
    if c.basis == "textbook" and claim.kind == "lower_bound":
        # Against the textbook's own method the claim is an arithmetic result, not a bound: check the digits.
        claim = Claim("value", claim.quote, claim.value, claim.unit, claim.stated, claim.label, claim.shape)
    return fig, verdict(claim, fig.value, fig.unit, answer=answer, label=fig.label)


__all__ = [
    "ADHOC_MODELS",
    "EXERCISES",
    "EXPECTED_ERRORS",
    "QUANTITIES",
    "REMEDIES",
    "SEEDS",
    "Check",
    "Claim",
    "Exercise",
    "Figure",
    "Search",
    "Verdict",
    "analytic_verdict",
    "bisect_largest_batch",
    "claim_in",
    "claim_text",
    "crossover_batch",
    "fit_line",
    "fmt",
    "footprint_bytes",
    "get_exercise",
    "group_weights",
    "largest",
    "largest_batch_within",
    "layer_flops",
    "layer_params",
    "measured_footprint",
    "model_spec",
    "output_shape",
    "predicted_figure",
    "predicted_or_blank",
    "prediction",
    "remedy_prediction",
    "select",
    "single_layer_specs",
    "stated_precision",
    "verdict",
]
