"""Figures that hold run to run (issue 20): a row's time over several processes, the noise probe's verdict, the
calibration's physical bounds and its reuse. Expected values are hand arithmetic on synthetic inputs; the
framework tests run the real timing server and the real calibration (small tables) in each framework's env."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import require_or_skip
from xfbench.benchmarks.harness import noise, timing
from xfbench.benchmarks.harness import peaks as peaks_mod

FRAMEWORKS = ("torch", "tensorflow", "mxnet")
MARKED = [pytest.param(f, marks=getattr(pytest.mark, f)) for f in FRAMEWORKS]


# ---- the row's time from several processes ----------------------------------------------------------------------


def test_combine_takes_the_median_of_process_medians_by_hand() -> None:
    # process medians 1, 3, 4 -> median 3 (the pooled median of the 7 rounds would be 1)
    cols = timing.combine([[1.0, 1.0, 1.0, 1.0, 1.0], [3.0], [4.0]])
    assert cols["time_median_s"] == 3.0
    assert (cols["time_lo_s"], cols["time_hi_s"]) == (1.0, 4.0)
    assert cols["time_processes"] == 3
    assert cols["rounds"] == 7
    assert cols["time_min_s"] == 1.0
    assert cols["time_mean_s"] == pytest.approx(12.0 / 7, rel=1e-12)


def test_combine_pooled_iqr_by_hand() -> None:
    # 9 pooled rounds 1..9 (n = 4*2 + 1, m = 2): q1 = x[1]/4 + 3 x[2]/4 = 2.75, q3 = 3 x[6]/4 + x[7]/4 = 7.25
    cols = timing.combine([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert cols["time_iqr_s"] == pytest.approx(4.5, rel=1e-12)
    assert cols["time_median_s"] == 5.0


def test_row_columns_throughput_by_hand() -> None:
    cols = timing.row_columns([[0.5], [0.25, 0.25], [1.0]], 4)
    assert cols["time_median_s"] == 0.5  # medians 0.5, 0.25, 1.0
    assert cols["throughput_samples_per_s"] == 8.0  # 4 samples / 0.5 s


def test_combine_refuses_an_empty_process() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        timing.combine([[1.0], []])
    with pytest.raises(ValueError):
        timing.combine([])


def test_within_noise_is_the_between_process_interval() -> None:
    row = {"time_lo_s": 0.010, "time_hi_s": 0.012}
    assert timing.within_noise(0.011, row) == "yes"
    assert timing.within_noise(0.010, row) == "yes"
    assert timing.within_noise(0.0125, row) == "no"
    assert timing.within_noise(0.009, row) == "no"
    assert timing.within_noise(None, row) is None
    assert timing.within_noise(0.011, {}) is None


def test_time_processes_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(timing.TIME_PROCESSES_ENV, raising=False)
    assert timing.time_processes() == 3
    monkeypatch.setenv(timing.TIME_PROCESSES_ENV, "5")
    assert timing.time_processes() == 5
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(timing.TIME_PROCESSES_ENV, bad)
        with pytest.raises(ValueError, match="allowed: a positive integer"):
            timing.time_processes()


def test_a_gpu_row_is_timed_in_one_process() -> None:
    from xfbench.benchmarks.harness.workload import Config

    result = timing.other_processes(Config("torch", "mlp", "inference", 2, "gpu:0"), 2, 1, 3)
    assert result["status"] == "skipped" and "gpu:0" in result["message"]
    assert timing.other_processes(Config("torch", "mlp", "inference", 2), 0, 1, 3) == {"status": "ok", "times": []}


# ---- the noise probe ---------------------------------------------------------------------------------------------


def _probe_row(where: str, median_s: float, load: float = 0.5) -> dict[str, Any]:
    return {
        "kind": "noise",
        "shape": f"noise:{where}",
        "time_median_s": median_s,
        "message": f"noise probe ({where}): numpy 512^3 float32 GEMM, load average {load:.2f}, affinity 2 CPUs (0-1)",
    }


def test_noise_verdict_by_hand() -> None:
    quiet = [_probe_row("start", 0.0100), _probe_row("middle", 0.0104), _probe_row("end", 0.0102)]
    noisy, line = noise.verdict(quiet, cores=2)  # type: ignore[misc]
    assert not noisy and "quiet" in line and "spread 4.0%" in line  # (10.4 - 10.0) / 10.0
    moved = [_probe_row("start", 0.0100), _probe_row("end", 0.0112)]
    noisy, line = noise.verdict(moved, cores=2)  # type: ignore[misc]
    assert noisy and "probe moved 12%" in line
    loaded = [_probe_row("start", 0.0100, load=3.5), _probe_row("end", 0.0100)]
    noisy, line = noise.verdict(loaded, cores=2)  # type: ignore[misc]
    assert noisy and "load average 3.50 > 3.0" in line  # 2 cores + a margin of 1
    assert noise.verdict(quiet[:1]) is None


def test_noise_probe_row_is_a_gemm_timing() -> None:
    row = noise.probe("start")
    assert row["kind"] == "noise" and row["shape"] == "noise:start"
    assert row["rounds"] == noise.PROBE_CALLS * noise.PROBE_PROCESSES
    assert row["time_min_s"] <= row["time_median_s"]
    assert row["gflops_per_s"] == pytest.approx(2 * 512**3 / row["time_median_s"] / 1e9, rel=1e-12)


# ---- the calibration's bounds ------------------------------------------------------------------------------------


def test_out_of_bounds_refuses_an_impossible_bandwidth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peaks_mod, "max_clock_hz", lambda: 3.0e9)
    monkeypatch.setattr(peaks_mod, "COPY_SIZES", (262144,))
    monkeypatch.setattr(peaks_mod, "GEMM_GRID", ())
    monkeypatch.setattr(peaks_mod, "CONV_GRID", {"forward": ()})
    # 2 threads x 192 B x 3 GHz = 1152 GB/s. The 256 KiB in-place add moves 2 x 262144 B = 524288 B.
    raw = {"dispatch:1": 3e-6, "dispatch:201": 3e-6 + 200 * 2.7e-6, "stream:4": 5e-6, "stream-moved-per-byte": 2.0}
    ok = peaks_mod.out_of_bounds({**raw, "stream:262144": 10e-6}, 2, "cpu")  # net 5 us: 105 GB/s
    assert ok == {}
    bad = peaks_mod.out_of_bounds(
        {**raw, "stream:262144": 5.3e-6}, 2, "cpu"
    )  # net 0.3 us: 524288 / 0.3e-6 = 1747.6 GB/s
    assert set(bad) == {"stream:262144"} and "1747.6 GB/s" in bad["stream:262144"]
    slower_than_call = peaks_mod.out_of_bounds({**raw, "stream:262144": 4e-6}, 2, "cpu")
    assert "no time beyond the call" in slower_than_call["stream:262144"]
    assert peaks_mod.out_of_bounds({**raw, "stream:262144": 5.3e-6}, 2, "gpu:0") == {}  # no CPU ceiling on a GPU


def test_out_of_bounds_flop_ceiling_and_op_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peaks_mod, "max_clock_hz", lambda: 3.0e9)
    monkeypatch.setattr(peaks_mod, "COPY_SIZES", ())
    monkeypatch.setattr(peaks_mod, "GEMM_GRID", ((1024, 1024, 1024),))
    monkeypatch.setattr(peaks_mod, "CONV_GRID", {"forward": ()})
    # proxy of 1024^3 under the 1.2e9 cap: largest dimension halved to 512 -> 2 * 512 * 1024 * 1024 FLOPs
    flops = 2.0 * 512 * 1024 * 1024
    cap = 2 * 64 * 3.0e9  # 384 GFLOP/s
    raw = {"dispatch:1": 3e-6, "dispatch:201": 3e-6 + 200 * 2.7e-6, "gemm:1x1x1": 1e-6}
    assert peaks_mod.out_of_bounds({**raw, "gemm:1024x1024x1024": 1e-6 + flops / (0.5 * cap)}, 2, "cpu") == {}
    bad = peaks_mod.out_of_bounds({**raw, "gemm:1024x1024x1024": 1e-6 + flops / (2 * cap)}, 2, "cpu")
    assert set(bad) == {"gemm:1024x1024x1024"}
    floor = peaks_mod.out_of_bounds({**raw, "rate:pool": 1e-9}, 2, "cpu")
    assert set(floor) == {"rate:pool"}
    flat = peaks_mod.out_of_bounds({"dispatch:1": 3e-6, "dispatch:201": 3e-6}, 2, "cpu")
    assert "dispatch:201" in flat  # no per-op cost at all


# ---- the calibration's reuse -------------------------------------------------------------------------------------

KEY = {"version": 2, "machine": "m", "backend": "torch", "device": "cpu", "threads": 2}


def test_kept_calibration_round_trip_and_refusals(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XFBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(peaks_mod.MAX_AGE_ENV, raising=False)
    raw = {"gemm:1x1x1": 1e-6, "stream:4": 5e-6}
    path = peaks_mod.keep(KEY, raw)
    assert path is not None and path.startswith(str(tmp_path))
    kept = peaks_mod.load_kept(KEY)
    assert kept is not None and kept["raw"] == raw
    assert peaks_mod.load_kept({**KEY, "threads": 1}) is None  # another setting: not this calibration
    assert peaks_mod.load_kept(KEY, now=time.time() + 8 * 24 * 3600) is None  # older than 7 days
    monkeypatch.setenv(peaks_mod.MAX_AGE_ENV, "1")
    assert peaks_mod.load_kept(KEY, now=time.time() + 2 * 3600) is None  # older than the 1 hour asked for
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("{not json")
    assert peaks_mod.load_kept(KEY) is None


def test_kept_calibration_key_mismatch_in_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XFBENCH_CACHE_DIR", str(tmp_path))
    path = peaks_mod.keep(KEY, {"a": 1.0})
    assert path is not None
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    data["key"]["machine"] = "another"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    assert peaks_mod.load_kept(KEY) is None


def test_calibration_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(peaks_mod.CALIBRATION_ENV, "sometimes")
    with pytest.raises(ValueError, match="allowed: reuse, fresh, off"):
        peaks_mod.calibration_mode()
    monkeypatch.setenv(peaks_mod.MAX_AGE_ENV, "-3")
    with pytest.raises(ValueError, match="positive number of hours"):
        peaks_mod.max_age_h()
    monkeypatch.setenv(peaks_mod.CALIBRATION_REPEATS_ENV, "0")
    with pytest.raises(ValueError, match="positive integer"):
        peaks_mod.calibration_repeats()


def test_isa_cap_and_affinity_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfbench.reports.env import cpu_affinity, isa_cap

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert isa_cap() == "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 5, 7, 8}, raising=False)
    assert cpu_affinity() == "0-2,5,7-8"


# ---- in each framework's env: the real timing server and a reused calibration -----------------------------------

TINY = {"name": "stab", "input_shape": [8], "layers": [{"type": "Dense", "units": 4}]}


def _framework(name: str) -> None:
    module = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}[name]
    require_or_skip(module, name, reason=f"{name} is not installed (tox -e {name})")


@pytest.mark.parametrize("framework", MARKED)
def test_timing_server_times_in_other_processes(framework: str, tmp_path: Any) -> None:
    _framework(framework)
    from xfbench.benchmarks.harness.workload import Config

    spec = tmp_path / "stab.json"
    spec.write_text(json.dumps(TINY))
    cfg = Config(framework, str(spec), "training", 2)
    try:
        result = timing.other_processes(cfg, 2, 1, 3)
    finally:
        timing.close_servers()
    assert result["status"] == "ok", result
    assert len(result["times"]) == 2 and all(len(t) == 3 for t in result["times"])
    assert all(0 < t < 60 for times in result["times"] for t in times)


@pytest.mark.parametrize("framework", MARKED)
def test_a_kept_calibration_is_reused_with_the_same_predictions(
    framework: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _framework(framework)
    from xfbench.analytics.spec import spec_from_dict
    from xfbench.analytics.steptime import predict_step

    monkeypatch.setenv("XFBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(peaks_mod.CALIBRATION_REPEATS_ENV, "1")
    monkeypatch.delenv(peaks_mod.CALIBRATION_ENV, raising=False)
    monkeypatch.setattr(peaks_mod, "GEMM_GRID", tuple((m, k, n) for m in (1, 64) for k in (16, 64) for n in (16, 64)))
    monkeypatch.setattr(peaks_mod, "COPY_SIZES", (1 << 16, 1 << 20))
    monkeypatch.setattr(peaks_mod, "FAULT_PROBE_BYTES", 1 << 20)
    small = tuple((m, k, n) for m in (16, 64) for k in (27, 144) for n in (8, 16))
    monkeypatch.setattr(peaks_mod, "CONV_GRID", {"forward": small, "backward": small, "backward_first": small})
    peaks_mod._cached.cache_clear()
    try:
        first, raw = peaks_mod._cached(framework, "cpu")
        assert first.basis == "measured-peaks"
        assert list(tmp_path.glob("calibration/*.json")), "a fresh calibration is kept"
        peaks_mod._cached.cache_clear()
        second, raw2 = peaks_mod._cached(framework, "cpu")
    finally:
        peaks_mod._cached.cache_clear()
    assert second.basis.startswith("measured-peaks (reused: calibrated ")
    assert dict(raw2) == dict(raw)
    spec = spec_from_dict(TINY)
    a = predict_step(spec, 2, "training", first, framework=framework).total_s
    b = predict_step(spec, 2, "training", second, framework=framework).total_s
    assert a == b
