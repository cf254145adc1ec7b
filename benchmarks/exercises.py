"""Runs the exercise catalog (:mod:`analytics.exercises`) through the backends and the memory worker.

For every exercise: one framework-free row (the claim against the analytic prediction) and one row per
(backend, device) with the measured figure and the verdict against it. Measurements:

* parameters, shapes, FLOPs: the backend's own objects and counter, in this process;
* time: the workload's step callable, median of ``TIME_ROUNDS`` runs after one warm-up;
* memory: :func:`benchmarks.harness.rows.memory_in_fresh_process` (a fresh worker per configuration); the
  measured footprint is the worker's step peak above its post-build baseline + the parameters and the input
  batch that baseline holds (so it is comparable with the textbooks' whole-footprint figures);
* the largest AlexNet batch in a memory budget: bisection on real out-of-memory failures of the worker,
  under ``RLIMIT_AS`` on the CPU (``--memory-limit``: caps the worker's *virtual address space*, not its
  resident memory, and only the worker's) or the GPU's own memory.

Reports: ``reports/exercises/exercises-<run id>.md`` and the schema-3 CSV (``kind=exercise``, ``shape`` = the
exercise id) written with :class:`reports.writer.RunWriter` into ``reports/exercises/``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from xfbench.analytics.exercises import (
    REMEDIES,
    Exercise,
    Figure,
    Verdict,
    analytic_verdict,
    attention_layers,
    bisect_largest_batch,
    claim_text,
    crossover_batch,
    dominant_part,
    fit_line,
    fmt,
    footprint_bytes,
    group_weights,
    largest,
    largest_batch_within,
    layer_params,
    measured_footprint,
    model_spec,
    predicted_figure,
    predicted_or_blank,
    prediction,
    single_layer_specs,
    verdict,
)
from xfbench.analytics.shapes import layer_input_shapes
from xfbench.analytics.spec import ModelSpec
from xfbench.analytics.weights import make_batch
from xfbench.backends.common import is_oom_message
from xfbench.benchmarks.harness.rows import memory_in_fresh_process
from xfbench.benchmarks.harness.worker import parse_size
from xfbench.benchmarks.harness.workload import Config, prepare
from xfbench.reports.paths import reports_dir, subprocess_env

TIME_ROUNDS = 3
QUICK_CURVE = (1, 2, 4, 8)
DEFAULT_BUDGET_MARGIN = 256 * 2**20  # auto budget: batch-1 address space rounded up to 256 MiB, + this


@dataclass
class Result:
    """One report row: an exercise (or a remedy of it) on one backend/device, or the analytic row."""

    exercise: Exercise
    backend: str  # "analytic" for the framework-free row
    device: str
    claim: str
    predicted: str
    measured: str
    verdict: str
    explanation: str
    status: str = "ok"
    sub: str = ""  # remedy name or curve point
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.exercise.id + (f":{self.sub}" if self.sub else "")


def _is_oom(result: dict[str, Any]) -> bool:
    """A worker result that ran out of memory: status ``oom``, or an ``error`` whose message the one OOM table
    (:func:`backends.common.is_oom_message`) recognises, or a worker killed by SIGABRT (``exited -6``: an
    uncaught ``std::bad_alloc`` in a framework's C++ code aborts the process before Python sees it)."""
    if result.get("status") == "oom":
        return True
    msg = str(result.get("message", ""))
    return result.get("status") == "error" and (is_oom_message(msg) or "exited -6" in msg)


class Runner:
    """Measures exercises on one backend and device. Worker results are cached per configuration."""

    def __init__(self, backend: str, device: str = "cpu", budget: str | None = None, quick: bool = True) -> None:
        from xfbench.backends import get_backend

        self.backend = backend
        self.device = device
        self.b = get_backend(backend)
        self.quick = quick
        self.budget = budget
        self._tmp = tempfile.TemporaryDirectory(prefix="xfbench-exercises-")
        self._worker_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._curve_cache: dict[str, tuple[list[int], list[int]]] = {}
        self.worker_runs = 0

    def close(self) -> None:
        self._tmp.cleanup()

    # ------------------------------------------------------------------ plumbing
    def model_ref(self, name: str) -> str:
        """A name the workload/worker can resolve: catalog name, or a spec file written for an ad-hoc model."""
        from xfbench.analytics.catalog import CATALOG

        if name in CATALOG:
            return name
        path = Path(self._tmp.name) / f"{name}.json"
        if not path.exists():
            path.write_text(json.dumps(model_spec(name).to_dict()))
        return str(path)

    def spec_ref(self, spec: ModelSpec) -> str:
        path = Path(self._tmp.name) / f"{spec.name}.json"
        path.write_text(json.dumps(spec.to_dict()))
        return str(path)

    def config(self, model: str, phase: str, batch: int, dtype: str = "float32") -> Config:
        return Config(self.backend, self.model_ref(model), phase, batch, self.device, dtype)

    def worker(
        self, model: str, phase: str, batch: int, dtype: str = "float32", limit: str | None = None
    ) -> dict[str, Any]:
        key = (model, phase, batch, dtype, limit)
        if key not in self._worker_cache:
            self.worker_runs += 1
            self._worker_cache[key] = memory_in_fresh_process(
                self.config(model, phase, batch, dtype), limit, repeats=1, tensor=False
            )
        return self._worker_cache[key]

    def footprint(self, model: str, phase: str, batch: int, dtype: str = "float32") -> tuple[int | None, str]:
        """(measured footprint in bytes or None, message)."""
        res = self.worker(model, phase, batch, dtype)
        if res.get("status") != "ok" or res.get("measured_bytes") is None:
            return None, f"{res.get('status')}: {res.get('message', '')}"
        pred = prediction(model, batch, dtype, self.backend)
        return measured_footprint(int(res["measured_bytes"]), pred, phase), str(res.get("method", ""))

    def build(self, spec: ModelSpec, dtype: str = "float32") -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.b.build_model(spec, device=self.device, dtype=dtype, seed=0)

    def flops(self, spec: ModelSpec, batch: int, phase: str = "inference") -> int:
        return int(self.b.count_flops(self.build(spec), spec, batch, phase).total)

    def step_time(self, model: str, phase: str, batch: int) -> float:
        work = prepare(self.config(model, phase, batch))
        work.step()
        times = []
        for _ in range(TIME_ROUNDS):
            t0 = time.perf_counter()
            work.step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def out_shape(self, spec: ModelSpec, batch: int) -> tuple[int, ...]:
        model = self.build(spec)
        x, _ = make_batch(spec, batch, 1)
        out = self.b.infer(model, self.b.to_device(x, self.device))
        return tuple(int(v) for v in self.b.to_numpy(out).shape)

    # ------------------------------------------------------------------ measurements per quantity
    def measure(self, ex: Exercise) -> list[Result]:
        c = ex.check
        q = c.quantity
        try:
            if q == "remedies":
                return self.remedies(ex)
            if q == "memory_curve":
                return self.memory_curve(ex)
            if q == "matmul":
                return [self.matmul(ex)]
            fig, message = self.measured_figure(ex)
        except Exception as exc:  # one exercise failing must not stop the others
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            return [self.result(ex, Figure(None), Verdict("pending: error"), text, status="error")]
        if fig.value is None:
            return [self.result(ex, fig, Verdict(f"pending: {message}"), message, status="error")]
        if q == "activation_crossover":
            v = verdict(ex.claim, fig.label)
        else:
            answer = fmt(fig.value, fig.unit) + (f" ({fig.label})" if fig.label else "")
            v = verdict(ex.claim, fig.value, fig.unit, answer=answer, label=fig.label)
        return [self.result(ex, fig, v, message)]

    def measured_figure(self, ex: Exercise) -> tuple[Figure, str]:
        c = ex.check
        q = c.quantity
        spec = model_spec(c.model)
        if q == "params":
            return Figure(int(self.b.count_params(self.build(spec))), "params"), "count_params"
        if q == "largest_layer_params":
            sizes = [int(w.size) for w in self.b.get_weights(self.build(spec))]
            name, n = largest(group_weights(spec, sizes))
            return Figure(n, "params", name), "framework weights"
        if q == "largest_layer_flops":
            counts = {s.name: self.flops(s, 1) for s in single_layer_specs(spec)}
            name, n = largest(counts)
            return Figure(n, "FLOPs", name), "counter per layer: " + ", ".join(
                f"{k} {v / 1e6:.0f}M" for k, v in counts.items()
            )
        if q == "output_shape":
            return Figure(self.out_shape(spec, c.batch), "shape"), "infer"
        if q == "layer_shape":
            first = ModelSpec(spec.name + "-first", spec.input_shape, spec.layers[:1])
            return Figure(self.out_shape(first, c.batch), "shape"), "infer (first layer)"
        if q == "footprint":
            value, msg = self.footprint(c.model, c.phase, c.batch, c.dtype)
            return Figure(value, "bytes"), msg
        if q == "flops":
            return Figure(self.flops(spec, c.batch), "FLOPs"), "counter"
        if q == "backward_flops":
            total = self.flops(spec, c.batch, "training")
            return Figure(total - self.flops(spec, c.batch), "FLOPs"), "counter: training - inference"
        if q == "flops_ratio":
            return Figure(self.flops(spec, c.batch) / self.flops(model_spec(c.other), c.batch), "ratio"), "counter"
        if q == "time_ratio":
            ta = self.step_time(c.model, c.phase, c.batch)
            tb = self.step_time(c.other, c.phase, c.batch)
            return Figure(ta / tb, "ratio"), f"median step {ta * 1e3:.3g} ms / {tb * 1e3:.3g} ms"
        if q == "memory_ratio":
            a, ma = self.footprint(c.model, c.phase, c.batch)
            b, mb = self.footprint(c.other, c.phase, c.batch)
            if a is None or b is None:
                return Figure(None), ma if a is None else mb
            return Figure(a / b, "ratio"), f"{fmt(a, 'bytes')} / {fmt(b, 'bytes')} ({ma})"
        if q == "activation_crossover":
            xs, ys = self.curve(c.model)
            _, slope = fit_line(xs, ys)
            fixed = 2 * largest(layer_params(spec))[1] * 4
            cross = crossover_batch(fixed, slope)
            part = dominant_part(c.model, c.batch, slope)
            return Figure(cross, "batch", part), (
                f"measured {fmt(slope, 'bytes/sample')} vs fc6 weights+gradients {fmt(fixed, 'bytes')}: "
                f"at batch {c.batch} the dominant part is {part}"
            )
        if q == "layer_count":
            return self.layer_count(spec, c.layer_type)
        raise ValueError(f"no measurement for quantity {q!r}")

    def layer_count(self, spec: ModelSpec, layer_type: str) -> tuple[Figure, str]:
        """Attention layers counted from what the framework runs: ``MultiHeadAttention``, the FLOPs of the
        counter's batched products (torch bmm, TensorFlow BatchMatMul, MXNet batch_dot) over one layer's two
        products (every layer of the model has the same); ``MultiHeadAttention:causal``, each attention layer
        built alone (self-attention on its query's shape) and run twice, the last token's input changed: a
        layer whose first output row stays the same hides later positions."""
        type_name, _, flag = layer_type.partition(":")
        if type_name != "MultiHeadAttention" or flag not in ("", "causal"):
            raise ValueError(f"no measurement for layer_count of {layer_type!r}")
        layers = attention_layers(spec)
        if not flag:
            ins = layer_input_shapes(spec)
            sizes = {spec.layers[i].sizes(ins[i]) for i in layers}  # type: ignore[attr-defined]
            if len(sizes) != 1:
                raise ValueError("the attention layers differ in size: the counter cannot tell them apart")
            t, _, s_len, _, h, k = sizes.pop()
            per_layer = 2 * 2 * h * t * s_len * k
            by_op = self.b.count_flops(self.build(spec), spec, 1, "inference").by_op
            batched = {op: n for op, n in by_op.items() if _is_batched_product(op)}
            total = sum(batched.values())
            return Figure(total / per_layer, "layers"), (
                f"counter: {', '.join(f'{op} {n / 1e6:.1f}M' for op, n in batched.items()) or 'no batched product'}"
                f" / {per_layer / 1e6:.1f}M FLOPs per layer"
            )
        masked = 0
        for i in layers:
            alone = dataclasses.replace(spec.layers[i], inputs=None)
            shape = layer_input_shapes(spec)[i][0]
            one = ModelSpec(f"{spec.name}-attn{i}", tuple(shape), (alone,), source=f"{spec.name} layer {i}")
            model = self.build(one)
            x, _ = make_batch(one, 1, 3)
            x2 = x.copy()
            x2[:, -1, :] += 1.0
            a = self.b.to_numpy(self.b.infer(model, self.b.to_device(x, self.device)))
            b = self.b.to_numpy(self.b.infer(model, self.b.to_device(x2, self.device)))
            masked += bool(np.array_equal(a[:, 0], b[:, 0]))
        return Figure(masked, "layers"), f"{len(layers)} attention layers run alone, last token changed"

    def curve(self, model: str) -> tuple[list[int], list[int]]:
        if model not in self._curve_cache:
            xs, ys = [], []
            for b in QUICK_CURVE:
                value, _ = self.footprint(model, "training", b)
                if value is not None:
                    xs.append(b)
                    ys.append(value)
            self._curve_cache[model] = (xs, ys)
        return self._curve_cache[model]

    def remedies(self, ex: Exercise) -> list[Result]:
        c = ex.check
        out = []
        base, base_msg = self.footprint(c.model, "training", c.batch)
        for remedy in ("baseline", *c.variants):
            name, divisor, dtype, devices = REMEDIES[c.model][remedy]
            batch = max(c.batch // divisor, 1)
            pred_var = footprint_bytes(prediction(name, batch, dtype, self.backend), "training")
            pred_base = footprint_bytes(prediction(c.model, c.batch, "float32", self.backend), "training")
            pred_ratio = pred_var / pred_base
            predicted = Figure(pred_ratio, "ratio")
            label = f"{name} b{batch} {dtype}" + (f" x{devices} devices" if devices > 1 else "")
            if devices > 1 and len([d for d in self.b.list_devices() if d.startswith("gpu")]) < devices:
                msg = (
                    f"needs {devices} devices ({self.backend} sees {', '.join(self.b.list_devices())}); "
                    f"predicted per device: {fmt(pred_var, 'bytes')} (data parallel: all weights, half the batch)"
                )
                out.append(
                    self.result(
                        ex, Figure(None), Verdict("pending: needs 2 devices"), msg, predicted, remedy, "skipped"
                    )
                )
                continue
            value, msg = self.footprint(name, "training", batch, dtype)
            if value is None or base is None:
                why = msg if value is None else base_msg
                unsupported = "NotSupported" in why
                pending = Verdict("pending: not supported" if unsupported else "pending: error")
                status = "skipped" if unsupported else "error"
                out.append(self.result(ex, Figure(None), pending, why, predicted, remedy, status))
                continue
            ratio = value / base
            if remedy == "baseline":
                v = Verdict("baseline")
                text = f"{label}: measured {fmt(value, 'bytes')}, predicted {fmt(pred_var, 'bytes')}"
            else:
                v = verdict(ex.claim, ratio)
                text = f"{label}: {fmt(base, 'bytes')} -> {fmt(value, 'bytes')} ({(ratio - 1) * 100:+.0f}%)"
            r = self.result(ex, Figure(ratio, "ratio"), v, text, predicted, remedy)
            r.numbers.update(mem_measured_bytes=value, mem_predicted_bytes=pred_var, batch_size=batch, dtype=dtype)
            out.append(r)
        return out

    def memory_curve(self, ex: Exercise) -> list[Result]:
        c = ex.check
        out = []
        xs, ys = self.curve(c.model)
        for b, y in zip(xs, ys):
            pred = footprint_bytes(prediction(c.model, b, "float32", self.backend), "training")
            r = self.result(
                ex,
                Figure(y, "bytes"),
                Verdict("curve point"),
                f"batch {b}",
                Figure(pred, "bytes"),
                f"b{b}",
            )
            r.numbers.update(batch_size=b, mem_measured_bytes=y, mem_predicted_bytes=pred)
            out.append(r)
        if len(xs) < 2:
            out.append(self.result(ex, Figure(None), Verdict("pending: error"), "fewer than two curve points"))
            return out
        intercept, slope = fit_line(xs, ys)
        pred_slope = _number(predicted_figure(ex, self.backend).value, 0.0)
        answer = (
            f"{fmt(slope, 'bytes/sample')} measured ({fmt(pred_slope, 'bytes/sample')} predicted) "
            f"+ {fmt(intercept, 'bytes')} fixed"
        )
        out.append(
            self.result(
                ex,
                Figure(slope, "bytes/sample"),
                verdict(ex.claim, slope, answer=answer),
                f"least-squares fit over batches {xs}",
                sub="slope",
            )
        )
        out.append(self.largest_batch(ex, slope))
        return out

    def address_space_at_batch1(self, model: str) -> int:
        """Peak virtual address space (VmPeak) of a worker-like process that builds ``model`` and runs one
        training step at batch 1, in bytes: what RLIMIT_AS must allow before any batch-dependent memory."""
        cfg = self.config(model, "training", 1)
        code = (
            "import sys; from xfbench.benchmarks.harness.workload import Config, prepare; "
            f"w = prepare(Config({cfg.backend!r}, {cfg.model!r}, 'training', 1, {cfg.device!r})); w.step(); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), check=False
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip().isdigit()]
        if not lines:
            raise RuntimeError(f"address-space probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return int(lines[-1]) * 1024

    def largest_batch(self, ex: Exercise, slope: float) -> Result:
        c = ex.check
        pred_slope = _number(predicted_figure(ex, self.backend).value, slope)
        if self.device.startswith("gpu"):
            limit = None
            budget_text = f"{self.device} memory"
            start = 64
            predicted_max: int | None = None
        else:
            vm1 = self.address_space_at_batch1(c.model)
            if self.budget in (None, "auto"):
                budget = (vm1 // DEFAULT_BUDGET_MARGIN + 1) * DEFAULT_BUDGET_MARGIN + DEFAULT_BUDGET_MARGIN
            else:
                budget = parse_size(str(self.budget))
            limit = str(budget)
            budget_text = f"RLIMIT_AS {budget / 2**30:.2f} GiB (address space; batch-1 VmPeak {vm1 / 2**30:.2f} GiB)"
            # The batch-1 run already holds one sample's activations: the rest of the budget is for more samples.
            predicted_max = 1 + largest_batch_within(budget, vm1, pred_slope)
            # Start the search where the measured curve points (fewer, cheaper worker runs than the ledger's
            # optimistic slope would need); the ledger's answer is reported beside the found one.
            start = max(1 + largest_batch_within(budget, vm1, slope), 1)

        failures: list[str] = []

        def fits(batch: int) -> bool:
            res = self.worker(c.model, "training", batch, limit=limit)
            if res.get("status") == "ok":
                return True
            if not _is_oom(res):
                failures.append(f"b{batch}: {res.get('message', '')[:120]}")
            return False

        search = bisect_largest_batch(fits, start, limit=512)
        probes = ", ".join(f"{b}{'+' if ok else '-'}" for b, ok in search.probes)
        found = search.largest_fit
        msg = f"{budget_text}; worker runs (batch+ fits, batch- OOM): {probes}"
        if failures:
            msg += "; non-OOM failures: " + "; ".join(failures)
        pred_text = Figure(predicted_max, "batch") if predicted_max is not None else Figure(None)
        v = (
            verdict(ex.claim, found, answer=f"{found} (predicted {predicted_max})")
            if found
            else Verdict("pending: batch 1 does not fit")
        )
        r = self.result(ex, Figure(found, "batch"), v, msg, pred_text, "max-batch")
        r.numbers.update(batch_size=found)
        return r

    def matmul(self, ex: Exercise) -> Result:
        """D2L 5.6.5 ex1/3/4 from the newest ``xfbench matmul`` rows (this backend, or numpy for ex4)."""
        kind = ex.check.model
        rows = _matmul_rows(kind, self.backend)
        if not rows:
            return self.result(
                ex,
                Figure(None),
                Verdict("pending: run xfbench matmul"),
                f"no '{kind}' rows for {self.backend} in reports/runs or reports/reference yet "
                "(the D2L 5.6.5 measurements live in benchmarks/matmul.py)",
                status="skipped",
            )
        if kind == "matmul":
            square = [r for r in rows if _is_square(r["shape"]) and r.get("transfers") == "excluded"]
            square = [r for r in square if not r.get("message", "").startswith("compute-peak probe")]
            if not square:
                return self.result(ex, Figure(None), Verdict("pending: no square sizes measured"), "", status="skipped")
            small = min(square, key=lambda r: int(r["shape"].split("x")[0]))
            large = max(square, key=lambda r: int(r["shape"].split("x")[0]))
            rate_small, rate_large = float(small["gflops_per_s"]), float(large["gflops_per_s"])
            devices = sorted({r["device"] for r in rows})
            crossover = _matmul_rows("exercise", "numpy")
            cross = next((r["message"].split(";")[0] for r in crossover if r.get("shape") == "crossover"), "")
            answer = (
                f"{rate_large:.0f} GFLOP/s at n={large['shape'].split('x')[0]} vs {rate_small:.0f} at "
                f"n={small['shape'].split('x')[0]} ({', '.join(devices)})"
            )
            gpu_note = "" if any(d.startswith("gpu") for d in devices) else f"; no GPU here: {cross}"
            return self.result(
                ex, Figure(rate_large, "GFLOP/s"), Verdict(f"unanswered -> {answer}"), f"{answer}{gpu_note}"
            )
        if kind == "logging":
            by = {r["transfers"]: float(r["time_median_s"]) for r in rows if r.get("time_median_s")}
            if not {"per-step-read", "one-read"} <= set(by):
                return self.result(ex, Figure(None), Verdict("pending: incomplete rows"), "", status="skipped")
            ratio = by["per-step-read"] / by["one-read"]
            answer = f"per-step reads {by['per-step-read'] * 1e3:.1f} ms vs one read {by['one-read'] * 1e3:.1f} ms"
            return self.result(
                ex, Figure(round(ratio, 3), "x"), Verdict(f"unanswered -> {ratio:.2f}x ({answer})"), answer
            )
        # concurrency (ex4): the row with a speedup is the "at the same time" one
        with_speedup = [r for r in rows if r.get("speedup")]
        if not with_speedup:
            return self.result(ex, Figure(None), Verdict("pending: incomplete rows"), "", status="skipped")
        row = with_speedup[0]
        speedup = float(row["speedup"])
        how = row["message"].split(":", 1)[-1].strip()
        v = verdict(ex.claim, speedup, answer=f"{speedup:.2f}x")
        return self.result(
            ex, Figure(round(speedup, 3), "x"), v, f"measured {speedup:.2f}x with {how} (the claim is two GPUs)"
        )

    # ------------------------------------------------------------------ rows
    def result(
        self,
        ex: Exercise,
        measured: Figure,
        v: Verdict,
        message: str,
        predicted: Figure | None = None,
        sub: str = "",
        status: str = "ok",
    ) -> Result:
        pred = predicted
        if pred is None:
            try:
                pred, why = predicted_or_blank(ex, self.backend)
            except Exception as exc:  # a bug in the prediction: an error row, never an ok row with a blank
                pred, why = Figure(None), f"prediction failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
                status = "error"
            if why:
                message = f"{why}; {message}" if message.strip() else why
        return Result(
            ex,
            self.backend,
            self.device,
            claim_text(ex.claim),
            fmt(pred.value, pred.unit) + (f" ({pred.label})" if pred.label else ""),
            fmt(measured.value, measured.unit) + (f" ({measured.label})" if measured.label else ""),
            v.label,
            _explain(ex, message),
            status,
            sub,
            {"measured": measured.value, "predicted": pred.value, "unit": measured.unit or pred.unit},
        )


def _is_batched_product(op: str) -> bool:
    """A FLOP counter's batched matrix product (torch ``aten.bmm``, TensorFlow ``BatchMatMulV2``/``V3``, MXNet
    ``batch_dot``), forward only."""
    low = op.lower()
    return ("bmm" in low or "batchmatmul" in low or "batch_dot" in low) and "backward" not in low


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) else default


def _explain(ex: Exercise, message: str) -> str:
    return " ".join(p for p in (message.strip().rstrip(".") + "." if message.strip() else "", ex.gap) if p)


def _is_square(shape: str) -> bool:
    parts = shape.split("x")
    return len(parts) == 3 and len(set(parts)) == 1


def _matmul_rows(kind: str, backend: str) -> list[dict[str, str]]:
    """The ``xfbench matmul`` rows of ``kind`` for ``backend`` (or numpy) from the newest report file that
    has any: one run's rows, never a mix of runs."""
    import csv

    files = sorted((reports_dir()).glob("*/*.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        if path.parent.name == "exercises":
            continue
        try:
            with path.open(encoding="utf-8") as fh:
                lines = [ln for ln in fh if not ln.startswith("#")]
            rows = list(csv.DictReader(lines))
        except (OSError, UnicodeDecodeError, csv.Error):  # not a report (binary, unreadable): not matmul rows either
            continue
        found = [
            dict(row)
            for row in rows
            if row.get("kind") == kind and row.get("backend") in (backend, "numpy") and row.get("status") == "ok"
        ]
        if found:
            return found
    return []


def analytic_results(exercises: list[Exercise]) -> list[Result]:
    out = []
    for ex in exercises:
        status, explanation = "ok", ex.gap
        try:
            fig, v = analytic_verdict(ex)
        except Exception as exc:  # a bug in the prediction: an error row, never an ok row with a blank
            fig, v = Figure(None), Verdict("pending: error")
            status = "error"
            explanation = _explain(ex, f"prediction failed: {type(exc).__name__}: {exc}".splitlines()[0][:300])
        out.append(
            Result(
                ex,
                "analytic",
                "-",
                claim_text(ex.claim),
                fmt(fig.value, fig.unit) + (f" ({fig.label})" if fig.label else ""),
                "-",
                v.label,
                explanation,
                status,
                numbers={"predicted": fig.value, "unit": fig.unit},
            )
        )
    return out


def run_backend(
    backend: str, device: str, exercises: list[Exercise], budget: str | None = None, progress: Any = None
) -> list[Result]:
    runner = Runner(backend, device, budget)
    out: list[Result] = []
    try:
        for ex in exercises:
            t0 = time.perf_counter()
            rows = runner.measure(ex)
            out.extend(rows)
            if progress is not None:
                progress(f"  {backend}/{device} {ex.id}: {rows[-1].verdict} ({time.perf_counter() - t0:.1f} s)")
    finally:
        runner.close()
    return out


# ---------------------------------------------------------------------- reports
TABLE_HEADERS = ["exercise", "backend", "device", "claim", "predicted", "measured", "verdict"]


def table_rows(results: list[Result]) -> list[list[str]]:
    return [[r.id, r.backend, r.device, r.claim, r.predicted, r.measured, r.verdict] for r in results]


def csv_row(r: Result) -> dict[str, Any]:
    ex = r.exercise
    c = ex.check
    row: dict[str, Any] = {
        "kind": "exercise",
        "shape": r.id,
        "model": c.model,
        "backend": r.backend,
        "device": r.device,
        "batch_size": c.batch,
        "dtype": c.dtype,
        "phase": c.phase,
        "status": r.status if r.status in ("ok", "skipped", "oom", "error") else "error",
        "message": (
            f"{ex.source} {ex.number} | claim: {r.claim} | predicted: {r.predicted} | measured: {r.measured} | "
            f"verdict: {r.verdict} | {r.explanation}"
        ),
    }
    unit = r.numbers.get("unit")
    measured, predicted = r.numbers.get("measured"), r.numbers.get("predicted")
    if unit == "bytes":
        if isinstance(measured, (int, float)):
            row["mem_measured_bytes"] = measured
        if isinstance(predicted, (int, float)):
            row["mem_predicted_bytes"] = predicted
    elif unit == "FLOPs":
        if isinstance(measured, (int, float)):
            row["flops_counted"] = measured
        if isinstance(predicted, (int, float)):
            row["flops_predicted"] = predicted
    elif unit == "params":
        if isinstance(measured, (int, float)):
            row["params_counted"] = int(measured)
        if isinstance(predicted, (int, float)):
            row["params_predicted"] = int(predicted)
    for key in ("mem_measured_bytes", "mem_predicted_bytes", "batch_size", "dtype"):
        if key in r.numbers:
            row[key] = r.numbers[key]
    return row


def markdown(results: list[Result], title: str, command: str) -> str:
    lines = [f"# {title}", "", f"Reproduce: `{command}`", ""]
    lines.append("| " + " | ".join([*TABLE_HEADERS, "why"]) + " |")
    lines.append("|" + "---|" * (len(TABLE_HEADERS) + 1))
    for r in results:
        cells = [*table_rows([r])[0], r.explanation]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines += ["", "Sources: /work/shared/seeds/ (" + ", ".join(sorted({r.exercise.source for r in results})) + ")."]
    return "\n".join(lines) + "\n"


def write_reports(results: list[Result], command: str, directory: Path | None = None) -> tuple[Path, Path]:
    """Writes the CSV (schema 3, one row per result) and the markdown report; returns their paths."""
    from xfbench.backends import get_backend
    from xfbench.reports.writer import RunWriter

    directory = directory if directory is not None else reports_dir() / "exercises"
    directory.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    for name in sorted({r.backend for r in results} - {"analytic"}):
        try:
            versions[name] = str(get_backend(name).VERSION)
        except Exception:
            versions[name] = ""
    writer = RunWriter(directory, framework_versions=versions)
    for r in results:
        row = csv_row(r)
        if r.backend in versions:
            row["framework_version"] = versions[r.backend]
        writer.write_row(row)
    md_path = Path(str(writer.path).removesuffix(".csv") + ".md")
    md_path.write_text(markdown(results, "xfbench exercises", command))
    return Path(writer.path), md_path


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


__all__ = ["Result", "Runner", "analytic_results", "markdown", "run_backend", "table_rows", "write_reports"]
