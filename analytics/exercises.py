"""The exercise catalog and the framework-free arithmetic that checks it.

The catalog is data: ``exercise_claims.json`` beside this module (the source texts, the HOML ch14 ex3
remedies and every exercise's question, claim, check and gap sentence), loaded once at import into
:data:`SEEDS`, :data:`REMEDIES` and :data:`EXERCISES`. What is code stays here: the ad-hoc models the
exercises name (:data:`ADHOC_MODELS`), the predictions and the verdict rules.

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

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xfbench.analytics import layers as L
from xfbench.analytics.catalog import catalog_model
from xfbench.analytics.memory import dtype_bytes
from xfbench.analytics.predict import Prediction, predict
from xfbench.analytics.shapes import infer_shapes, input_shapes
from xfbench.analytics.spec import Layer, ModelSpec, SpecError
from xfbench.analytics.weights import weight_slots

CLAIM_KINDS = ("value", "lower_bound", "shape", "label", "less", "greater", "none")
WITHIN = 0.10  # "holds within X%" up to this relative distance
WRONG_FACTOR = 10.0  # a number off by this factor or more is "wrong"
VERDICT_WORDS = ("holds", "holds within", "off by", "wrong", "unanswered", "pending")
# The failures of a prediction an exercise may declare (Check.expected_error): documented answers, not bugs.
EXPECTED_ERRORS: dict[str, type[Exception]] = {"SpecError": SpecError}


# ------------------------------------------------------------------------------------------- data types
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
    layer_type: str = ""  # layer_count: a type name, optionally ":<flag>" (e.g. "MultiHeadAttention:causal")

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
    "layer_count",  # layers of check.layer_type in the model (":causal": those whose flag is set)
)


# ------------------------------------------------------------------------------------------ ad-hoc models
def _conv_case(c_in: int, c_out: int, size: int, kernel: int, padding: int, name: str) -> ModelSpec:
    # No bias, so that every framework counter (torch: no bias adds; TF: bias adds) reports the same figure.
    layer = L.Conv2D(c_out, kernel, 1, padding, use_bias=False, name="conv")
    return ModelSpec(name, (c_in, size, size), (layer,), source="D2L 6.4 exercises (seed 001)")


def _cnn3_variant(stride1: int = 2, layers: int = 3) -> ModelSpec:
    convs: list[Layer] = [
        L.Conv2D(f, 3, stride1 if i == 0 else 2, "same", activation="relu", name=f"conv{i + 1}")
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
        if layer.label == "conv1" and isinstance(layer, L.Conv2D):
            layer = L.Conv2D(96, 11, stride1, 1, activation="relu", name="conv1")
        layers.append(layer)
    name = "alexnet" + (f"-stride{stride1}" if stride1 != 4 else "") + ("-noconv4" if drop_conv4 else "")
    return ModelSpec(name, base.input_shape, tuple(layers), source="HOML ch14 ex3 remedy on AlexNet")


def _single_layer(layer: Layer, input_shape: tuple[int, ...], name: str) -> ModelSpec:
    return ModelSpec(name, input_shape, (layer,), source="exercise check")


def _transformer_original(tokens: int = 16) -> ModelSpec:
    """Vaswani et al. 2017's base Transformer (HOML ch16 ex6): 6 encoder layers (self-attention, FF), 6 decoder
    layers (masked self-attention, attention over the encoder's output, FF), d=512, 8 heads, FF 2048 (ReLU),
    post-LayerNorm, a 37,000-token vocabulary shared by both sides and the output layer (tied). The spec has one
    input: source and target are the same token sequence here (the counts do not depend on it); learned
    positions stand for the paper's sinusoids (its Table 3 (E): nearly identical results)."""
    d, heads, ff, vocab = 512, 8, 2048, 37000
    k = d // heads
    layers: list[Layer] = [L.Embedding(vocab, d, name="embed"), L.PositionEmbedding(name="pos")]

    def sub(tag: str, prev: str, body: list[Layer]) -> list[Layer]:
        last = body[-1].label
        return [*body, L.Add(name=f"{tag}_add", inputs=(prev, last)), L.LayerNorm(name=f"{tag}_ln")]

    prev = "pos"
    for i in range(6):
        layers += sub(f"enc{i}_a", prev, [L.MultiHeadAttention(heads, k, name=f"enc{i}_attn", inputs=(prev,))])
        a = f"enc{i}_a_ln"
        layers += sub(
            f"enc{i}_f", a, [L.Dense(ff, activation="relu", name=f"enc{i}_fc"), L.Dense(d, name=f"enc{i}_proj")]
        )
        prev = f"enc{i}_f_ln"
    memory = prev
    prev = "pos"
    for i in range(6):
        layers += sub(
            f"dec{i}_s", prev, [L.MultiHeadAttention(heads, k, causal=True, name=f"dec{i}_self", inputs=(prev,))]
        )
        s1 = f"dec{i}_s_ln"
        layers += sub(f"dec{i}_c", s1, [L.MultiHeadAttention(heads, k, name=f"dec{i}_cross", inputs=(s1, memory))])
        c1 = f"dec{i}_c_ln"
        layers += sub(
            f"dec{i}_f", c1, [L.Dense(ff, activation="relu", name=f"dec{i}_fc"), L.Dense(d, name=f"dec{i}_proj")]
        )
        prev = f"dec{i}_f_ln"
    layers.append(L.Dense(vocab, use_bias=False, tie="embed", name="generator"))
    return ModelSpec("transformer-original", (tokens,), tuple(layers), "Vaswani et al. 2017 (base)", "int64")


def attention_layers(spec: ModelSpec) -> list[int]:
    """Indices of the MultiHeadAttention layers of ``spec``."""
    return [i for i, layer in enumerate(spec.layers) if isinstance(layer, L.MultiHeadAttention)]


def count_layers(spec: ModelSpec, layer_type: str) -> int:
    """Layers of ``layer_type`` (``"Type"`` or ``"Type:flag"``: those whose boolean field ``flag`` is set)."""
    type_name, _, flag = layer_type.partition(":")
    if type_name not in L.LAYER_TYPES:
        raise ValueError(f"unknown layer type {type_name!r}; allowed: {', '.join(L.LAYER_TYPES)}")
    return sum(1 for layer in spec.layers if layer.type == type_name and (not flag or bool(getattr(layer, flag))))


ADHOC_MODELS: dict[str, Callable[[], ModelSpec]] = {
    # D2L 6.4 ex2-4: one convolution, c_i x h x w input, c_o x c_i x k x k kernel.
    "conv-base": lambda: _conv_case(32, 64, 56, 3, 1, "conv-base"),
    "conv-2x-channels": lambda: _conv_case(64, 128, 56, 3, 1, "conv-2x-channels"),
    "conv-2x-padding": lambda: _conv_case(32, 64, 56, 3, 2, "conv-2x-padding"),
    "conv-1x1": lambda: _conv_case(32, 64, 56, 1, 0, "conv-1x1"),
    # HOML ch15 ex2: an RNN layer of 32 units on [5, 10, 2] (LSTM: the spec's recurrent layer; shapes agree).
    "rnn32-seq": lambda: _single_layer(L.LSTM(32, return_sequences=True, name="rnn"), (10, 2), "rnn32-seq"),
    "rnn32-last": lambda: _single_layer(L.LSTM(32, return_sequences=False, name="rnn"), (10, 2), "rnn32-last"),
    # Course notebook 5.1.1-5.1.4 (seed 003).
    "course-5.1.1": lambda: _single_layer(L.Conv2D(1, 5, name="conv"), (3, 28, 28), "course-5.1.1"),
    "course-5.1.2": lambda: _single_layer(L.Conv2D(1, 5, 1, 2, name="conv"), (3, 28, 28), "course-5.1.2"),
    "course-5.1.3": lambda: _single_layer(L.Conv2D(1, 5, 2, 2, name="conv"), (3, 28, 28), "course-5.1.3"),
    "course-5.1.4": lambda: _single_layer(L.MaxPool2D(2, 2, name="pool"), (1, 28, 28), "course-5.1.4"),
    # DLWP ch5 basic MNIST convnet (seed 004), with its Flatten/Dense head.
    "dlwp-convnet": lambda: ModelSpec(
        "dlwp-convnet",
        (1, 28, 28),
        (
            L.Conv2D(32, 3, activation="relu", name="conv1"),
            L.MaxPool2D(2, name="pool1"),
            L.Conv2D(64, 3, activation="relu", name="conv2"),
            L.MaxPool2D(2, name="pool2"),
            L.Conv2D(64, 3, activation="relu", name="conv3"),
            L.Flatten(name="flatten"),
            L.Dense(64, activation="relu", name="dense1"),
            L.Dense(10, activation="softmax", name="dense2"),
        ),
        source="Deep Learning with Python ch5 (seed 004)",
    ),
    # HOML ch14 ex3 remedies.
    "cnn3-stride4": lambda: _cnn3_variant(stride1=4),
    "cnn3-2layers": lambda: _cnn3_variant(layers=2),
    "alexnet-stride8": lambda: _alexnet_variant(stride1=8),
    "alexnet-noconv4": lambda: _alexnet_variant(drop_conv4=True),
    # HOML ch16 ex6: the original Transformer.
    "transformer-original": _transformer_original,
}


def model_spec(name: str) -> ModelSpec:
    """A catalog model or an ad-hoc exercise model by name."""
    if name in ADHOC_MODELS:
        return ADHOC_MODELS[name]()
    return catalog_model(name)


# ------------------------------------------------------------------------------------------------ catalog
CLAIMS_FILE = Path(__file__).resolve().parent / "exercise_claims.json"  # package data: shipped in the wheel
_ENTRY_KEYS = ("id", "seed", "number", "question", "claim", "check", "gap")


def _exercise(entry: dict[str, Any], seeds: dict[str, str]) -> Exercise:
    """One entry of :data:`CLAIMS_FILE` as an :class:`Exercise`: lists become tuples, the claim's ``value_from``
    (documentation) is dropped; a key, seed or quantity that does not exist is a one-line ``ValueError``."""
    where = f"{CLAIMS_FILE.name}: exercise {entry.get('id')!r}"
    if sorted(entry) != sorted(_ENTRY_KEYS):
        raise ValueError(f"{where}: keys {', '.join(sorted(entry))}; allowed: {', '.join(_ENTRY_KEYS)}")
    claim: dict[str, Any] = {k: tuple(v) if k == "shape" else v for k, v in entry["claim"].items() if k != "value_from"}
    check: dict[str, Any] = {k: tuple(v) if k in ("variants", "batches") else v for k, v in entry["check"].items()}
    if entry["seed"] not in seeds:
        raise ValueError(f"{where}: unknown seed {entry['seed']!r}; allowed: {', '.join(seeds)}")
    if check.get("quantity") not in QUANTITIES:
        raise ValueError(f"{where}: unknown quantity {check.get('quantity')!r}; allowed: {', '.join(QUANTITIES)}")
    try:
        claim_, check_ = Claim(**claim), Check(**check)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return Exercise(entry["id"], entry["seed"], entry["number"], entry["question"], claim_, check_, entry["gap"])


def _load_claims() -> tuple[dict[str, str], dict[str, dict[str, tuple[str, int, str, int]]], tuple[Exercise, ...]]:
    """``(SEEDS, REMEDIES, EXERCISES)`` from :data:`CLAIMS_FILE`."""
    data = json.loads(CLAIMS_FILE.read_text(encoding="utf-8"))
    seeds: dict[str, str] = data["seeds"]
    remedies = {
        model: {name: (r["model"], r["batch_divisor"], r["dtype"], r["devices"]) for name, r in variants.items()}
        for model, variants in data["remedies"].items()
    }
    return seeds, remedies, tuple(_exercise(entry, seeds) for entry in data["exercises"])


SEEDS: dict[str, str]  # seed -> source text file (/work/shared/seeds/<file>)
# HOML ch14 ex3: each remedy as (model, batch divisor, dtype, devices).
REMEDIES: dict[str, dict[str, tuple[str, int, str, int]]]
EXERCISES: tuple[Exercise, ...]
SEEDS, REMEDIES, EXERCISES = _load_claims()


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
        if isinstance(layer, (L.Conv2D, L.Dense, L.LSTM)):
            name = layer.label if layer.label != layer.type else f"{layer.type.lower()}{i}"
            alone = dataclasses.replace(layer, inputs=None)  # its graph inputs are this spec's model input
            out.append(ModelSpec(name, tuple(shape), (alone,), source=f"{spec.name} layer {i}"))
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
    if unit == "layers":
        return f"{value:g} layers"
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
    if q == "layer_count":
        return Figure(count_layers(model_spec(c.model), c.layer_type), "layers", note=f"{c.layer_type} in the spec")
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
    "CLAIMS_FILE",
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
