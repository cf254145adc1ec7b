"""The data-parallel scaling model (analytics.scaling) and the sweep's row building, without any framework.

Expected values are hand computations of t = 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency.
"""

from __future__ import annotations

import math

import pytest
from xfbench.analytics.catalog import catalog_model
from xfbench.analytics.scaling import (
    efficiency,
    fit_allreduce,
    gradient_bytes,
    per_worker_batch,
    predict_dp_step,
    predict_step_time,
    prediction_basis,
    ring_allreduce_time,
    speedup,
)
from xfbench.benchmarks.cli import main
from xfbench.benchmarks.scaling import ScalingPlan, build_rows, check_plan, plot_scaling


def test_ring_formula_by_hand() -> None:
    # N=4, 1 MB, 1 GB/s, 10 us: 2*3/4 * 1e6/1e9 = 1.5e-3 s, plus 2*3 * 1e-5 = 6e-5 s.
    assert ring_allreduce_time(1e6, 4, 1e9, 1e-5) == pytest.approx(1.56e-3, rel=1e-12)
    # N=2: 2*1/2 * 8e6/2e9 = 4e-3 s, plus 2 * 5e-5 = 1e-4 s.
    assert ring_allreduce_time(8e6, 2, 2e9, 5e-5) == pytest.approx(4.1e-3, rel=1e-12)
    # N=8, no latency: 2*7/8 * 1.6e7 / 1e10 = 2.8e-3 s.
    assert ring_allreduce_time(1.6e7, 8, 1e10, 0.0) == pytest.approx(2.8e-3, rel=1e-12)


def test_ring_one_worker_is_free_and_bad_input_raises() -> None:
    assert ring_allreduce_time(1e9, 1, 1.0, 1.0) == 0.0
    assert ring_allreduce_time(1e6, 2, math.inf, 0.0) == 0.0
    for args in ((1e6, 0, 1e9, 0.0), (1e6, 2, 0.0, 0.0), (-1, 2, 1e9, 0.0), (1e6, 2, 1e9, -1.0)):
        with pytest.raises(ValueError):
            ring_allreduce_time(*args)


def test_fit_recovers_bandwidth_and_latency() -> None:
    bw, lat = 2.5e9, 40e-6
    sizes = [4096, 65536, 1 << 20, 4 << 20, 16 << 20]
    # N=2: t = s / bw + 2 * lat (hand-expanded for N=2), so the fit must return bw and lat.
    times = [s / bw + 2 * lat for s in sizes]
    got_bw, got_lat = fit_allreduce(sizes, times, 2)
    assert got_bw == pytest.approx(bw, rel=1e-9)
    assert got_lat == pytest.approx(lat, rel=1e-9)
    # Mixed worker counts: N=4 gives t = 1.5 s / bw + 6 lat.
    sizes4 = [1 << 16, 1 << 22]
    times4 = [1.5 * s / bw + 6 * lat for s in sizes4]
    got_bw, got_lat = fit_allreduce(sizes + sizes4, times + times4, [2] * len(sizes) + [4, 4])
    assert (got_bw, got_lat) == (pytest.approx(bw, rel=1e-9), pytest.approx(lat, rel=1e-9))


def test_fit_clamps_negative_latency_and_needs_two_samples() -> None:
    # Times below a pure-bandwidth line at the small end would fit a negative latency: clamped to 0.
    sizes = [1e3, 1e6, 1e7]
    times = [0.5e-6, 1e-3, 1e-2]  # bytes/s per sample: 2e9, 1e9, 1e9
    bw, lat = fit_allreduce(sizes, times, 2)
    # Relative least squares of t = s / bw: 1/bw = sum(r) / sum(r^2) with r = s/t -> bw = 6e18 / 4e9 = 1.5e9.
    assert lat == 0.0
    assert bw == pytest.approx(1.5e9, rel=1e-9)
    with pytest.raises(ValueError):
        fit_allreduce([1e6], [1e-3], 2)
    with pytest.raises(ValueError):
        fit_allreduce([1e6, 2e6], [1e-3, 2e-3], 1)  # one worker: nothing to fit


def test_predicted_step_and_speedups_by_hand() -> None:
    # 10 ms per sample, 4 samples per worker, 4 MB of gradients, N=2 at 1 GB/s and 100 us:
    # 0.04 + (4e6 / 1e9 + 2e-4) = 0.0442 s.
    assert predict_step_time(0.01, 4, 4e6, 2, 1e9, 1e-4) == pytest.approx(0.0442, rel=1e-12)
    assert predict_step_time(0.01, 8, 4e6, 1, 1e9, 1e-4) == pytest.approx(0.08, rel=1e-12)
    # strong: 0.08 / 0.05 = 1.6, efficiency 0.8; weak: 2 * 0.04 / 0.05 = 1.6 per sample, efficiency 0.8.
    assert speedup(0.08, 0.05, 2, "strong") == pytest.approx(1.6)
    assert efficiency(0.08, 0.05, 2, "strong") == pytest.approx(0.8)
    assert speedup(0.04, 0.05, 2, "weak") == pytest.approx(1.6)
    assert efficiency(0.04, 0.05, 2, "weak") == pytest.approx(0.8)
    with pytest.raises(ValueError):
        speedup(1.0, 1.0, 2, "medium")


def test_batches_and_gradient_bytes() -> None:
    assert per_worker_batch(16, 2, "strong") == 8
    assert per_worker_batch(16, 2, "weak") == 16
    with pytest.raises(ValueError):
        per_worker_batch(10, 4, "strong")
    # mlp: (784*256 + 256) + (256*10 + 10) = 203530 parameters, 4 bytes each.
    assert gradient_bytes(catalog_model("mlp"), "torch") == 203530 * 4
    assert prediction_basis(1.5e9, 2.5e-5) == "ring-model bw=1.5GB/s lat=25us"


def _fake_results() -> dict[int, dict]:
    def step(model: str, b: int, t: float) -> dict:
        return {"model": model, "batch_per_worker": b, "times": [t] * 3}

    bw, lat = 1e9, 1e-4
    ar = [{"bytes": s, "times": [s / bw + 2 * lat] * 3} for s in (1 << 16, 1 << 20, 1 << 22)]
    return {
        1: {"workers": 1, "allreduce": [], "steps": [step("mlp", 16, 0.016), step("mlp", 8, 0.008)]},
        2: {"workers": 2, "allreduce": ar, "steps": [step("mlp", 8, 0.010)]},
    }


def test_build_rows_from_results(tmp_path) -> None:
    plan = ScalingPlan(models=("mlp",), workers=(1, 2), batch=8)
    check_plan(plan)
    assert plan.batches_at(1) == [16, 8] and plan.batches_at(2) == [8]
    rows = build_rows("torch", plan, _fake_results())
    scaling = {(r["scaling_mode"], r["workers"]): r for r in rows if r["kind"] == "scaling"}
    allreduce = [r for r in rows if r["kind"] == "allreduce"]
    assert len(allreduce) == 3 and all(abs(r["time_rel_error"]) < 1e-9 for r in allreduce)
    grads = 203530 * 4
    t_pred = 0.008 + grads / 1e9 + 2e-4  # compute at N=1 with 8 samples + ring all-reduce for N=2
    strong, weak = scaling[("strong", 2)], scaling[("weak", 2)]
    assert strong["time_predicted_s"] == pytest.approx(t_pred, rel=1e-9)
    assert strong["speedup"] == pytest.approx(0.016 / 0.010)
    assert strong["speedup_predicted"] == pytest.approx(0.016 / t_pred, rel=1e-9)
    assert weak["efficiency"] == pytest.approx(0.008 / 0.010)
    assert weak["efficiency_predicted"] == pytest.approx(0.008 / t_pred, rel=1e-9)
    assert strong["shape"] == 16 and strong["batch_size"] == 8
    assert scaling[("strong", 1)]["speedup"] == 1.0 and scaling[("weak", 1)]["efficiency_predicted"] == 1.0
    assert strong["prediction_basis"].startswith("ring-model bw=1GB/s lat=100us")
    assert strong["time_iqr_s"] == 0.0 and strong["rounds"] == 3 and strong["time_min_s"] == 0.010
    png = plot_scaling(rows, tmp_path / "s.png")
    assert png is not None and png.stat().st_size > 1000


def test_the_prediction_uses_the_probes_where_the_run_has_them() -> None:
    """With a compute-only step at N = 2 (9 ms) and the overhead probe (DP step 2.5 ms, its compute-only step
    0.5 ms: 2 ms of engine cost per step), the N = 2 prediction is 9 ms + 2 ms + the ring's bandwidth term
    2(N-1)/N * grads / bw = grads / 1e9 (bandwidth 1 GB/s, from the all-reduce rows), by hand."""
    results = _fake_results()
    results[2]["steps"][0]["compute_only_times"] = [0.009] * 3
    results[2]["overhead"] = {"model": "probe", "batch_per_worker": 1, "times": [0.0025] * 3}
    plan = ScalingPlan(models=("mlp",), workers=(1, 2), batch=8)
    # Without the probe's compute-only times there is no overhead figure: the ring model of before.
    old = [r for r in build_rows("torch", plan, results) if r["kind"] == "scaling" and r["workers"] == 2]
    assert old[0]["time_predicted_s"] == pytest.approx(0.008 + 203530 * 4 / 1e9 + 2e-4, rel=1e-9)
    results[2]["overhead"]["compute_only_times"] = [0.0005] * 3
    rows = [r for r in build_rows("torch", plan, results) if r["kind"] == "scaling" and r["workers"] == 2]
    expected = 0.009 + 0.002 + 203530 * 4 / 1e9
    assert [r["time_predicted_s"] for r in rows] == [pytest.approx(expected, rel=1e-9)] * 2
    assert "overhead 2 ms" in rows[0]["prediction_basis"] and "compute 9 ms (probe)" in rows[0]["prediction_basis"]
    # The model's update on one worker: its N=1 step at batch 8 (8 ms) minus its compute-only step there (7 ms);
    # the probe at N=1 (0.4 ms step, 0.3 ms compute-only: 0.1 ms) is already in that term, so the overhead at N=2
    # becomes 2 - 0.1 = 1.9 ms.
    results[1]["steps"][1]["compute_only_times"] = [0.007] * 3
    results[1]["overhead"] = {"model": "probe", "batch_per_worker": 1, "times": [4e-4] * 3}
    results[1]["overhead"]["compute_only_times"] = [3e-4] * 3
    rows = [r for r in build_rows("torch", plan, results) if r["kind"] == "scaling" and r["workers"] == 2]
    expected = 0.009 + 0.001 + 0.0019 + 203530 * 4 / 1e9
    assert [r["time_predicted_s"] for r in rows] == [pytest.approx(expected, rel=1e-9)] * 2
    # Measured steps 10 ms each: the quartiles are 10 ms, and 12.7 ms predicted lies outside them.
    assert rows[0]["time_lo_s"] == rows[0]["time_hi_s"] == 0.010 and rows[0]["time_within_noise"] == "no"
    assert predict_dp_step(0.009, 0.002, 1e6, 1, 1e9) == 0.009  # one worker: compute only


def test_step_statistics_come_from_the_raw_times() -> None:
    """A step's time columns are computed here from the worker's raw times (benchmarks.harness.measurement's rule)."""
    results = _fake_results()
    # N=2, batch 8: four raw steps. Sorted 0.010, 0.011, 0.012, 0.020: median (0.011 + 0.012) / 2 = 0.0115;
    # quartiles the medians of the halves, 0.0105 and 0.016; mean 0.053 / 4 = 0.01325.
    results[2]["steps"][0]["times"] = [0.012, 0.010, 0.020, 0.011]
    plan = ScalingPlan(models=("mlp",), workers=(1, 2), batch=8)
    rows = [r for r in build_rows("torch", plan, results) if r["kind"] == "scaling" and r["workers"] == 2]
    assert len(rows) == 2  # strong and weak both run 8 per worker at N=2
    for r in rows:
        assert r["time_median_s"] == pytest.approx(0.0115, rel=1e-12)
        assert r["time_iqr_s"] == pytest.approx(0.0055, rel=1e-9)
        assert r["time_mean_s"] == pytest.approx(0.01325, rel=1e-12)
        assert (r["time_min_s"], r["rounds"]) == (0.010, 4)
        assert r["throughput_samples_per_s"] == pytest.approx(16 / 0.0115, rel=1e-12)


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--workers", "2"], "must include 1"),
        (["--workers", "1,3", "--batch", "3", "--global-batch", "8"], "does not split"),
        (["--mode", "medium"], "scaling mode"),
        (["--model", "nosuch"], "unknown model"),
        (["--backend", "caffe"], "unknown backend"),
        (["--workers", "1,x"], "comma-separated positive integers"),
        (["--nnodes", "2", "--node-rank", "2", "--master", "h:1", "--backend", "torch"], "allowed: 0..1"),
        (["--node-rank", "1"], "--node-rank without --nnodes"),
        (["--nnodes", "2", "--node-rank", "0"], "needs --node-rank R and --master HOST:PORT"),
        (["--nnodes", "2", "--node-rank", "0", "--master", "nohost"], "--master 'nohost'; allowed: HOST:PORT"),
        (["--nnodes", "2", "--node-rank", "0", "--master", "h:1", "--hosts", "a:1"], "exactly --nnodes = 2"),
        (["--nnodes", "2", "--node-rank", "0", "--master", "h:1"], "one --backend per multi-node job"),
        (
            ["--nnodes", "2", "--node-rank", "0", "--master", "h:1", "--backend", "torch", "--workers", "1,2"],
            "--workers",
        ),
        (["--simulate", "--network", "25Gbit"], "--network"),
    ],
)
def test_cli_usage_errors(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scale", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xfbench: error:") and text in err and err.count("\n") == 1
