"""Analytic predictions for a model: shapes, parameters, FLOPs, the memory ledger and the simulated step.

FLOPs are for the whole batch, 2 per multiply-accumulate (see :mod:`analytics.costs` for the terms).
Memory is in bytes (see :mod:`analytics.memory`). Beside the static ledger, each phase's first step is
simulated op by op (:func:`analytics.timeline.simulate`, ``warm=False``: the step a fresh process runs, the
one the benchmark rows measure); its peak, the op at the peak and the breakdown by category there are in
``memory.simulated_*`` of :meth:`Prediction.as_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xfbench.analytics.costs import (
    LayerCost,
    backward_flops,
    canonical_framework,
    has_weights,
    needs_input_grad,
    spec_costs,
    tf_profiler_flops,
)
from xfbench.analytics.memory import (
    Ledger,
    dtype_bytes,
    inference_ledger,
    textbook_inference_bytes,
    textbook_training_bytes,
    training_ledger,
)
from xfbench.analytics.shapes import floored_padding_notes, infer_shapes, input_shapes
from xfbench.analytics.spec import LSTM, ModelSpec, SpecError
from xfbench.analytics.timeline import Timeline, simulate
from xfbench.analytics.units import fmt_bytes

COUNTERS = ("torch", "tensorflow", "mxnet")


@dataclass(frozen=True)
class LayerPrediction:
    index: int
    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    forward_flops: int  # matmul/conv/LSTM, whole batch
    bias_flops: int
    activation_flops: int
    pool_flops: int
    other_flops: int
    norm_flops: int  # BatchNorm (inference convention)
    add_flops: int  # Add: element-wise sums
    backward_flops: int  # matmul terms: weight gradient + input gradient where needed
    activation_bytes: int  # this layer's output for the whole batch

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["input_shape"] = list(self.input_shape)
        d["output_shape"] = list(self.output_shape)
        return d


@dataclass(frozen=True)
class Prediction:
    model: str
    framework: str
    batch_size: int
    dtype: str
    optimizer: str
    layers: tuple[LayerPrediction, ...]
    inference: Ledger
    training: Ledger
    textbook_inference_bytes: int
    textbook_training_bytes: int
    notes: tuple[str, ...] = ()
    # The simulated first step of each phase (None where the simulator cannot lower the spec: see notes).
    simulated_inference: Timeline | None = None
    simulated_training: Timeline | None = None
    threads: int = 1  # the framework's intra-op threads the simulated steps assume

    def simulated(self, phase: str) -> Timeline | None:
        """The simulated first step of ``phase`` (inference or training)."""
        if phase not in ("inference", "training"):
            raise ValueError(f"unknown phase {phase!r}; allowed: inference, training")
        return self.simulated_training if phase == "training" else self.simulated_inference

    @property
    def params(self) -> int:
        return sum(lp.params for lp in self.layers)

    def total(self, field: str) -> int:
        return sum(getattr(lp, field) for lp in self.layers)

    @property
    def forward_flops(self) -> int:
        return self.total("forward_flops")

    @property
    def forward_flops_with_bias(self) -> int:
        return self.forward_flops + self.total("bias_flops")

    @property
    def backward_flops(self) -> int:
        return self.total("backward_flops")

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "framework": self.framework,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "threads": self.threads,
            "params": self.params,
            "forward_flops": self.forward_flops,
            "forward_flops_with_bias": self.forward_flops_with_bias,
            "bias_flops": self.total("bias_flops"),
            "activation_flops": self.total("activation_flops"),
            "pool_flops": self.total("pool_flops"),
            "other_flops": self.total("other_flops"),
            "norm_flops": self.total("norm_flops"),
            "add_flops": self.total("add_flops"),
            "backward_flops": self.backward_flops,
            "training_flops": self.forward_flops + self.backward_flops,
            "flops_convention": "2 FLOPs per multiply-accumulate; forward_flops counts conv/dense/LSTM matmuls only",
            "layers": [lp.as_dict() for lp in self.layers],
            "memory": {
                "inference_bytes": self.inference.peak_bytes,
                "training_bytes": self.training.peak_bytes,
                "textbook_inference_bytes": self.textbook_inference_bytes,
                "textbook_training_bytes": self.textbook_training_bytes,
                "inference_ledger": self.inference.as_dict(),
                "training_ledger": self.training.as_dict(),
                "simulated_inference_bytes": _peak(self.simulated_inference),
                "simulated_training_bytes": _peak(self.simulated_training),
                "simulated_inference": _timeline_dict(self.simulated_inference),
                "simulated_training": _timeline_dict(self.simulated_training),
            },
            "notes": list(self.notes),
        }


def _peak(timeline: Timeline | None) -> int | None:
    return None if timeline is None else timeline.peak_bytes


def _timeline_dict(timeline: Timeline | None) -> dict[str, Any] | None:
    """The JSON of a simulated step: peak, the op and stage at the peak, the breakdown there, the basis."""
    if timeline is None:
        return None
    return {
        "peak_bytes": timeline.peak_bytes,
        "peak_op": timeline.peak_event.op,
        "peak_stage": timeline.peak_event.stage,
        "breakdown": dict(timeline.breakdown),
        "events": len(timeline.events),
        "device": timeline.device,
        "first_step": True,
        "notes": list(timeline.notes),
    }


def simulated_text(pred: Prediction, binary: bool = False) -> str:
    """The simulated steps as text (``xfbench predict``): per phase the peak, where it is, and the breakdown."""
    out: list[str] = []
    for phase in ("inference", "training"):
        t = pred.simulated(phase)
        if t is None:
            continue
        out.append(f"simulated first step: {phase} ({t.framework} rules, {t.device})")
        for name, value in t.breakdown:
            if value:
                out.append(f"  {name:<24}{fmt_bytes(value, binary=binary):>16}")
        e = t.peak_event
        out.append(f"  {'peak (simulated)':<24}{fmt_bytes(t.peak_bytes, binary=binary):>16}  at {e.op} ({e.stage})")
        for note in t.notes:
            out.append(f"  note: {note}")
    return "\n".join(out)


def simulate_phases(
    spec: ModelSpec,
    batch_size: int,
    dtype: str,
    optimizer: str,
    framework: str,
    device: str = "cpu",
    threads: int = 1,
) -> tuple[Timeline | None, Timeline | None, tuple[str, ...]]:
    """Both phases' simulated first steps (``threads``: the framework's intra-op threads), and a note for a spec
    the simulator cannot lower."""
    out: list[Timeline | None] = []
    notes: list[str] = []
    for phase in ("inference", "training"):
        try:
            out.append(
                simulate(
                    spec, batch_size, phase, dtype, optimizer, framework, device=device, warm=False, threads=threads
                )
            )
        except (SpecError, ValueError) as exc:
            out.append(None)
            notes.append(f"simulated {phase} step: {exc}")
    return out[0], out[1], tuple(dict.fromkeys(notes))


def layer_matmul_flops(
    spec: ModelSpec, batch_size: int, framework: str, costs: list[LayerCost] | None = None
) -> list[tuple[int, int]]:
    """Per layer, ``(forward, backward)`` matmul FLOPs of the batch: the ``forward_flops`` and ``backward_flops``
    columns of :func:`predict` (backward only for a layer with weights, its input gradient where it needs one)."""
    grads = needs_input_grad(spec)
    return [
        (cost.matmul * batch_size, backward_flops(cost, grads[i]) * batch_size if has_weights(layer) else 0)
        for i, (layer, cost) in enumerate(zip(spec.layers, costs or spec_costs(spec, framework)))
    ]


def count_params(spec: ModelSpec, framework: str = "tensorflow") -> int:
    fw = canonical_framework(framework)
    return sum(cost.params for cost in spec_costs(spec, fw))


def predict(
    spec: ModelSpec,
    batch_size: int = 1,
    dtype: str = "float32",
    optimizer: str = "sgd",
    framework: str = "tensorflow",
    threads: int = 1,
) -> Prediction:
    """Predicts shapes, parameters, FLOPs and memory. ``threads``: the framework's intra-op threads (the simulated
    step's TensorFlow conv-gradient scratch depends on them; nothing here reads the host). Raises
    ``ValueError``/``SpecError`` on bad input."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    width = dtype_bytes(dtype)
    fw = canonical_framework(framework)
    outs = infer_shapes(spec)
    ins = input_shapes(spec)
    costs = spec_costs(spec, fw)
    matmul = layer_matmul_flops(spec, batch_size, fw, costs)
    layers = []
    for i, (layer, in_shape, out_shape, cost) in enumerate(zip(spec.layers, ins, outs, costs)):
        layers.append(
            LayerPrediction(
                index=i,
                name=layer.label if layer.label != layer.type else f"{layer.type.lower()}{i}",
                type=layer.type,
                input_shape=in_shape,
                output_shape=out_shape,
                params=cost.params,
                forward_flops=matmul[i][0],
                bias_flops=cost.bias * batch_size,
                activation_flops=cost.activation * batch_size,
                pool_flops=cost.pool * batch_size,
                other_flops=cost.other * batch_size,
                norm_flops=cost.norm * batch_size,
                add_flops=cost.add * batch_size,
                backward_flops=matmul[i][1],
                activation_bytes=math.prod(out_shape) * batch_size * width,
            )
        )
    params = sum(lp.params for lp in layers)
    notes = tuple(f"layer {i}: {msg}" for i, msg in floored_padding_notes(spec))
    sim_inference, sim_training, sim_notes = simulate_phases(spec, batch_size, dtype, optimizer, fw, threads=threads)
    return Prediction(
        model=spec.name,
        framework=fw,
        batch_size=batch_size,
        dtype=dtype,
        optimizer=optimizer,
        layers=tuple(layers),
        inference=inference_ledger(spec, params, batch_size, dtype),
        training=training_ledger(spec, params, batch_size, dtype, optimizer, fw),
        textbook_inference_bytes=textbook_inference_bytes(spec, params, batch_size, dtype),
        textbook_training_bytes=textbook_training_bytes(spec, params, batch_size, dtype),
        notes=notes + sim_notes,
        simulated_inference=sim_inference,
        simulated_training=sim_training,
        threads=threads,
    )


def counter_prediction(
    spec: ModelSpec, batch_size: int, counter: str, phase: str = "inference", skip_layers: tuple[int, ...] = ()
) -> int:
    """What a framework's FLOP counter should report, under that counter's convention.

    * ``torch`` (``FlopCounterMode``): matmul FLOPs, bias ignored; training adds the backward matmuls.
    * ``tensorflow`` (profiler ``float_ops``): the sum over the aligned op types of
      :func:`analytics.costs.tf_profiler_flops`, which applies the profiler's own registry rules op by op
      (forward Conv2D/MatMul/BiasAdd/pooling/Mean; in training also Conv2DBackpropInput/Filter priced from
      the padded input, the matmul gradients, BiasAddGrad and the pooling gradients). Element-wise ops,
      Softmax and AddN are outside that op set.
    * ``mxnet`` (our count from its symbol graph): matmul FLOPs, bias separate; training adds backward.

    ``skip_layers`` are layer indices the counter does not support (their work is not in its total).
    """
    if counter not in COUNTERS:
        raise ValueError(f"unknown counter {counter!r}; allowed: {', '.join(COUNTERS)}")
    if phase not in ("inference", "training"):
        raise ValueError(f"unknown phase {phase!r}; allowed: inference, training")
    if counter == "tensorflow":
        return sum(tf_profiler_flops(spec, batch_size, phase, skip_layers).values())
    # the FLOP columns of predict()'s layers, without its simulated steps (which a counter does not need)
    flops = layer_matmul_flops(spec, batch_size, canonical_framework(counter))
    return sum(fwd + (bwd if phase == "training" else 0) for i, (fwd, bwd) in enumerate(flops) if i not in skip_layers)


def unsupported_layer_indices(spec: ModelSpec, unsupported: tuple[str, ...]) -> tuple[int, ...]:
    """Layer indices from a counter's ``unsupported`` list (``"3:LSTM"``)."""
    return tuple(int(u.split(":", 1)[0]) for u in unsupported)


def lstm_layers(spec: ModelSpec) -> tuple[int, ...]:
    return tuple(i for i, layer in enumerate(spec.layers) if isinstance(layer, LSTM))
