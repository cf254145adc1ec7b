"""Every derived column of a report row agrees with the columns it is computed from.

The row is assembled by the real benchmark code (``benchmarks.bench_models.test_model_step``) for a tiny
model on each backend, with a stand-in for pytest-benchmark's fixture (it runs and times the real step) and a
synthetic memory-worker result (no subprocess). Checked: ``flops_rel_error`` from ``flops_counted`` and
``flops_predicted_counter``; ``flops_counted`` from the counter's own per-op count over the backend's
aligned op set; ``achieved_flops_per_s`` from ``flops_predicted`` and ``time_median_s``; throughput from
the batch and the median time; ``mem_predicted_bytes`` against the step's bytes worked out by hand (plus the
probe's overhead); ``mem_rel_error`` from ``mem_predicted_bytes`` and ``mem_measured_bytes``.
And every column the row (and the run's calibration rows) fills is one ``reports.schema.COLUMNS`` gives its kind.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import require_backend_or_skip
from xfbench.analytics.spec import spec_from_dict
from xfbench.backends import get_backend
from xfbench.backends.base import FlopCount
from xfbench.benchmarks.harness.rows import flop_columns, memory_columns, time_columns
from xfbench.benchmarks.harness.workload import Config, Workload
from xfbench.reports.schema import COLUMN

REL = 1e-12

# Softmax (TensorFlow counts it, 5 per element, outside its aligned op set) and dropout (training: masks
# and products, also outside) make TensorFlow's total differ from its aligned subset.
TINY = {
    "name": "derived",
    "input_shape": [1, 8, 8],
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel": 3, "activation": "relu"},
        {"type": "MaxPool2D", "pool": 2},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.5},
        {"type": "Dense", "units": 5, "activation": "softmax"},
    ],
}
BATCH = 2
# Analytic matmul FLOPs by hand (N=2): conv 1->4, 3x3, 8x8 -> 6x6: 2*2*36*4*9 = 5184; dense 36 -> 5:
# 2*2*36*5 = 720. Training adds the conv's weight gradient (first layer: no input gradient) 5184 and the
# dense's weight and input gradients 2*720.
FLOPS_PREDICTED = {"inference": 5184 + 720, "training": 5184 + 720 + 5184 + 2 * 720}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b))


# ---- framework-free: the helpers on synthetic inputs, by hand --------------------------------------------


def test_memory_columns_rel_error_by_hand() -> None:
    cols = memory_columns({"method": "rss-hwm", "measured_bytes": 200, "baseline_bytes": 7}, 150)
    assert cols["mem_measured_bytes"] == 200
    assert cols["mem_rel_error"] == -0.25  # (150 - 200) / 200
    assert cols["mem_baseline_bytes"] == 7
    assert memory_columns({"measured_bytes": None}, 150)["mem_rel_error"] is None


def test_time_columns_throughput_by_hand() -> None:
    stats = SimpleNamespace(data=[0.4, 0.5, 0.75])  # pytest-benchmark's raw rounds: median 0.5 s
    cols = time_columns(stats, 4)
    assert cols["time_median_s"] == 0.5
    assert cols["throughput_samples_per_s"] == 8.0  # 4 samples / 0.5 s


def test_flop_columns_error_comes_from_the_counted_subset() -> None:
    """A counter whose total holds more than its aligned ops: the error must use the aligned figure."""
    spec = spec_from_dict(
        {"name": "d", "input_shape": [4], "layers": [{"type": "Dense", "units": 3, "use_bias": False}]}
    )
    # PyTorch's convention for this dense, N=2: 2*2*4*3 = 48 (by hand). The fake counter reports it under
    # "mm" and 52 more under an op outside the aligned set.
    count = FlopCount(counter="fake", convention="", total=100, by_op={"mm": 48, "extra": 52})
    backend = SimpleNamespace(ALIGNED_OPS=("mm",), count_flops=lambda model, spec, batch, phase: count)
    work = Workload(Config("torch", "d", "inference", 2), spec, backend, None, lambda: None)  # type: ignore[arg-type]
    cols = flop_columns(work)
    assert cols["flops_counted"] == 48
    assert cols["flops_predicted_counter"] == 48
    assert cols["flops_rel_error"] == 0.0  # the old bug gave (100 - 48) / 48
    assert cols["flops_counter"] == "fake (mm)"


def test_flop_columns_name_the_op_that_differs() -> None:
    """TensorFlow is predicted op by op: a row off by more than 0.1% names each op whose count differs."""
    spec = spec_from_dict(
        {"name": "d", "input_shape": [4], "layers": [{"type": "Dense", "units": 3, "use_bias": False}]}
    )
    # The profiler's MatMul for this dense, N=2, inference: 2*2*4*3 = 48 (by hand); the fake reports 60.
    count = FlopCount(counter="fake", convention="", total=70, by_op={"MatMul": 60, "Softmax": 10})
    backend = SimpleNamespace(ALIGNED_OPS=("MatMul", "BiasAdd"), count_flops=lambda model, spec, batch, phase: count)
    work = Workload(Config("tensorflow", "d", "inference", 2), spec, backend, None, lambda: None)  # type: ignore[arg-type]
    cols = flop_columns(work)
    assert cols["flops_counted"] == 60 and cols["flops_predicted_counter"] == 48
    assert cols["flops_rel_error"] == 0.25  # (60 - 48) / 48
    assert cols["flops_unsupported"] == "differs: MatMul counted 60 predicted 48"


# ---- every backend: the row bench_models assembles ------------------------------------------------------

BACKEND_PARAMS = [
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    pytest.param("mxnet", marks=pytest.mark.mxnet),
]


class _Benchmark:
    """pytest-benchmark's fixture, as far as ``test_model_step`` uses it: ``pedantic`` times the real step."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}
        self.stats: Any = None
        self.times: list[float] = []

    def pedantic(self, fn: Any, rounds: int, warmup_rounds: int = 0, iterations: int = 1) -> None:
        for _ in range(warmup_rounds):
            fn()
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            self.times.append(time.perf_counter() - start)
        q = statistics.quantiles(self.times, n=4)
        self.stats = SimpleNamespace(
            stats=SimpleNamespace(
                median=statistics.median(self.times),
                iqr=q[2] - q[0],
                mean=statistics.fmean(self.times),
                min=min(self.times),
                rounds=rounds,
                data=list(self.times),  # pytest-benchmark's raw samples, seconds per round
            )
        )


class _Writer:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write_row(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))


WORKER_RESULT = {
    "status": "ok",
    "method": "rss-hwm",
    "measured_bytes": 40_000_000,
    "baseline_bytes": 300_000_000,
    "second_step_bytes": 10_000_000,
}
OVERHEAD = 5_000_000

# The memory prediction's model part (mem_predicted_bytes - the probe's overhead) for TINY at batch 2, by hand, in
# bytes (float32: 4 B). Sizes: x 2*1*8*8 = 128 floats = 512 B, labels 2 int64 = 16 B; conv output 2*4*6*6 = 288
# floats = 1,152 B; pool output 2*4*3*3 = 72 floats = 288 B; logits 2*5 = 10 floats = 40 B; parameters: conv
# 4*1*3*3 + 4 = 40 floats = 160 B, dense 36*5 + 5 = 185 floats = 740 B (900 B in all, as are the gradients).
# The prediction is the step's peak less what exists before the step (parameters and the batch; MXNet also its
# gradient buffers, made at build time).
MEM_STEP_BY_HAND: dict[tuple[str, ...], int] = {
    # torch: the simulated first step (rows.PROCESS_PREDICTION). Inference peaks when relu's output is made while
    # the conv output is still referenced: 1,152 + 1,152.
    ("torch", "inference"): 1_152 + 1_152,
    # training peaks inside the conv's backward: every gradient (900), the gradient into the conv output (1,152),
    # the backward seed (4), the loss (4) and oneDNN's backward scratch (first layer, 1 input channel, AVX2 block
    # 8: X + Y = 2*8*64 + 2*8*36 = 1,600 floats = 6,400 B).
    ("torch", "training"): 900 + 1_152 + 4 + 4 + 6_400,
    # tensorflow: simulated; BiasAdd and Relu write into the conv output, so inference peaks when the pool output
    # is made beside it: 1,152 + 288.
    ("tensorflow", "inference"): 1_152 + 288,
    # training peaks at the conv filter gradient's im2col buffer (36 positions x 9 = 324 floats per image, both
    # images: 2,592 B), beside every gradient (900), the gradient into the conv output (1,152), the seed (4) and the
    # kept per-sample loss terms (40).
    ("tensorflow", "training"): 900 + 1_152 + 4 + 40 + 2_592,
    # mxnet, where rows.PROCESS_PREDICTION says "ledger": the static ledger (analytics/memory.py). Inference: the
    # largest one-layer working set, the conv's output and its pre-activation output (its input is the batch):
    # 1,152 + 1,152.
    ("mxnet", "inference", "ledger"): 1_152 + 1_152,
    # training: the outputs kept for backward, conv 1,152 + pool 288 + dense 40 (flatten and dropout: views / in
    # place), and the largest pair of activation gradients, conv's 1,152 + pool's 288.
    ("mxnet", "training", "ledger"): (1_152 + 288 + 40) + (1_152 + 288),
    # mxnet, where it says "planned": the static memory plan over the step's arrays (every entry kept: the sum of
    # each storage entry's largest request; a free entry is reused for a request within 16x of its size) plus
    # oneDNN's blocked copies (AVX2 block 8; an input of <= 4 channels read plain). Inference plan: conv output
    # 1,152, pool output 288, then the dense output 40 and the softmax 40 (the freed 1,152 is more than 16x 40):
    # 1,520; the blocked weight ceil8(4)*1*3*3 = 72 floats = 288 B.
    ("mxnet", "inference", "planned"): (1_152 + 288 + 40 + 40) + 288,
    # training plan: conv output A 1,152, pool output B 288, dropout mask C 288 and output D 288, dense output E
    # 40, softmax F 40; the loss terms reuse E; seed G 4, loss gradient H 40, softmax gradient I 40; the dense
    # input gradient 288 grows H (largest free entry within 16x) to 288; the dropout gradient reuses D; the pool
    # gradient 1,152 grows H to 1,152; the relu gradient 1,152 grows C to 1,152. Entries: 3 x 1,152 + 2 x 288 +
    # 3 x 40 + 4 = 4,156. Blocked copies: the weight 72 floats + 1.5 x the input 2*1*64 = 192 floats: 264 floats
    # = 1,056 B.
    ("mxnet", "training", "planned"): (3 * 1_152 + 2 * 288 + 3 * 40 + 4) + 4 * (72 + 192),
}


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    name = request.param
    require_backend_or_skip(name)
    return str(name)


@pytest.mark.parametrize("phase", ["inference", "training"])
def test_derived_columns_agree_with_their_sources(
    backend: str, phase: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xfbench.benchmarks import bench_models
    from xfbench.benchmarks.harness.profiles import Plan

    spec_path = tmp_path / "derived.json"
    spec_path.write_text(json.dumps(TINY))
    cfg = Config(backend, str(spec_path), phase, BATCH)
    calls: list[Config] = []

    def fake_worker(config: Config, memory_limit: str | None = None) -> dict[str, Any]:
        calls.append(config)
        return dict(WORKER_RESULT)

    monkeypatch.setattr(bench_models, "memory_in_fresh_process", fake_worker)
    monkeypatch.setattr(bench_models, "framework_overhead", lambda *args: OVERHEAD)
    # The row is timed in this process only (no other timing processes), so its median is this process's.
    monkeypatch.setenv("XFBENCH_TIME_PROCESSES", "1")
    # The hand figures assume oneDNN's AVX2 blocking and TensorFlow's own (non-oneDNN) CPU kernels, the machine of
    # the measurements the rules come from; these caps make a prediction that follows the CPU take the same.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    bench, writer, rows = _Benchmark(), _Writer(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench_models.test_model_step(bench, (cfg, Plan((BATCH,), 3)), writer, rows, None, True, None)
    assert calls == [cfg]
    model_rows = [r for r in writer.rows if r.get("kind") == "model"]  # the run's calibration rows come first
    assert len(model_rows) == 1 and rows == model_rows
    row = model_rows[0]
    assert row["status"] == "ok", row.get("message")

    # FLOPs: the error is computed from exactly the counted figure ...
    counted, expected = row["flops_counted"], row["flops_predicted_counter"]
    assert expected > 0
    assert _close(row["flops_rel_error"], (counted - expected) / expected)
    # ... which is the counter's own count over the backend's aligned op set, named in flops_counter
    b = get_backend(backend)
    spec = spec_from_dict(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        count = b.count_flops(b.build_model(spec), spec, BATCH, phase)
    if b.ALIGNED_OPS is None:
        assert counted == count.total
    else:
        assert counted == sum(count.by_op.get(op, 0) for op in b.ALIGNED_OPS)
        assert count.total > counted  # the subset is a real subset: an error taken from the total would differ
        assert all(op in row["flops_counter"] for op in b.ALIGNED_OPS)
    assert abs(row["flops_rel_error"]) <= 1e-3, row["flops_unsupported"]

    # achieved FLOP/s and throughput from the predicted FLOPs, the batch and the median time
    assert row["flops_predicted"] == FLOPS_PREDICTED[phase]
    assert len(bench.times) == 3 and row["time_median_s"] == sorted(bench.times)[1]  # the middle of 3 rounds
    assert _close(row["achieved_flops_per_s"], row["flops_predicted"] / row["time_median_s"])
    assert _close(row["throughput_samples_per_s"], BATCH / row["time_median_s"])
    # the step-time prediction's error from the predicted and the measured median time
    assert row["time_predicted_s"] > 0 and row["prediction_basis"]
    assert _close(row["time_rel_error"], (row["time_predicted_s"] - row["time_median_s"]) / row["time_median_s"])
    assert row["rounds"] == 3 == len(bench.times)
    # one process (XFBENCH_TIME_PROCESSES=1): its median is both ends of the between-process interval, and the
    # within-noise verdict follows from the prediction and that interval
    assert row["time_processes"] == 1 and row["time_lo_s"] == row["time_hi_s"] == row["time_median_s"]
    lo, hi, pred = row["time_lo_s"], row["time_hi_s"], row["time_predicted_s"]
    assert row["time_within_noise"] == ("yes" if lo <= pred <= hi else "no")

    # memory: the prediction is the step's bytes (by hand, MEM_STEP_BY_HAND) plus the probe's overhead; the error
    # is from the two
    assert row["mem_measured_bytes"] == WORKER_RESULT["measured_bytes"]
    if backend == "mxnet":  # which of its documented predictions this checkout makes (a table, not a figure)
        from xfbench.benchmarks.harness.rows import PROCESS_PREDICTION

        step_by_hand = MEM_STEP_BY_HAND[(backend, phase, PROCESS_PREDICTION["mxnet"])]
    else:
        step_by_hand = MEM_STEP_BY_HAND[(backend, phase)]
    assert row["mem_predicted_bytes"] == step_by_hand + OVERHEAD
    measured, predicted = row["mem_measured_bytes"], row["mem_predicted_bytes"]
    assert _close(row["mem_rel_error"], (predicted - measured) / measured)
    assert row["mem_rel_error"] < 0  # 5 MB and a few kB predicted against the worker's 40 MB
    assert row["mem_baseline_bytes"] == WORKER_RESULT["baseline_bytes"]
    assert row["mem_second_step_bytes"] == WORKER_RESULT["second_step_bytes"]

    # The schema's table gives each column the row kinds that fill it: the model row and the run's calibration
    # rows fill no other column.
    for r in writer.rows:
        stray = [c for c, v in r.items() if v is not None and v != "" and r["kind"] not in COLUMN[c].kinds]
        assert stray == [], f"a {r['kind']} row fills {stray}"


def test_scaling_columns_agree_with_their_sources(backend: str) -> None:
    """The rows ``xfbench scale`` writes (a real 1- and 2-worker run of lenet on this backend's engine): speedup from
    the N = 1 base and this row's median, efficiency = speedup / N, both again for the prediction, the relative error,
    the throughput, and the noise verdict from the row's quartiles, each recomputed here by hand."""
    from xfbench.benchmarks.scaling import ScalingPlan, run_backend

    plan = ScalingPlan(
        models=("lenet",),
        workers=(1, 2),
        batch=2,
        steps=3,
        warmup=1,
        min_time_s=0.0,
        allreduce_sizes=(4096, 65536),
        allreduce_repeats=3,
    )
    rows = run_backend(backend, plan)
    assert [r["message"] for r in rows if r["status"] != "ok"] == []
    scaling = [r for r in rows if r["kind"] == "scaling"]
    assert sorted((r["workers"], r["scaling_mode"]) for r in scaling) == [
        (1, "strong"),
        (1, "weak"),
        (2, "strong"),
        (2, "weak"),
    ]
    base = {r["scaling_mode"]: r["time_median_s"] for r in scaling if r["workers"] == 1}
    for r in scaling:
        n, mode, t, pred = r["workers"], r["scaling_mode"], r["time_median_s"], r["time_predicted_s"]
        per_sample = n if mode == "weak" else 1
        assert r["speedup"] == pytest.approx(base[mode] / t * per_sample, rel=REL)
        assert r["efficiency"] == pytest.approx(r["speedup"] / n, rel=REL)
        assert r["speedup_predicted"] == pytest.approx(base[mode] / pred * per_sample, rel=REL)
        assert r["efficiency_predicted"] == pytest.approx(r["speedup_predicted"] / n, rel=REL)
        assert r["time_rel_error"] == pytest.approx((pred - t) / t, rel=REL, abs=1e-15)
        assert r["throughput_samples_per_s"] == pytest.approx(r["batch_size"] * n / t, rel=REL)
        assert r["shape"] == r["batch_size"] * n and (r["nodes"], r["workers_per_node"]) == (1, n)
        assert r["time_lo_s"] <= t <= r["time_hi_s"]
        assert r["time_within_noise"] == ("yes" if r["time_lo_s"] <= pred <= r["time_hi_s"] else "no")
        stray = [c for c, v in r.items() if v is not None and v != "" and r["kind"] not in COLUMN[c].kinds]
        assert stray == []
    for r in [r for r in rows if r["kind"] == "allreduce"]:
        assert r["time_rel_error"] == pytest.approx((r["time_predicted_s"] - r["time_median_s"]) / r["time_median_s"])
