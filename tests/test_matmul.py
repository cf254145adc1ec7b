"""The matmul sweep: a tiny numpy sweep (no framework), the CLI's bad input, and tiny per-framework sweeps.

The framework parts are marked (``-m torch`` etc.) and skip with a reason where the framework is absent.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import require_or_skip
from xfbench.benchmarks.matmul import SweepConfig, run_sweep, time_callable

REPO = Path(__file__).resolve().parents[1]
FILLED = (
    "time_median_s",
    "time_predicted_s",
    "time_rel_error",
    "gflops_per_s",
    "peak_fraction",
    "flops_predicted",
    "achieved_flops_per_s",
)


def tiny(backends: tuple[str, ...], **kw: Any) -> SweepConfig:
    defaults: dict[str, Any] = dict(
        backends=backends,
        devices=("cpu",),
        sizes=(64, 128),
        shapes=((96, 64, 32),),
        dtypes=("float32",),
        min_time_s=0.01,
        peak_size=256,
        copy_bytes=4 << 20,
        exercises=False,
        plot=False,
    )
    defaults.update(kw)
    return SweepConfig(**defaults)


def check_rows(rows: list[dict[str, Any]], backend: str) -> None:
    got = [r for r in rows if r["kind"] == "matmul" and r["backend"] == backend and r["status"] == "ok"]
    shapes = {r["shape"] for r in got}
    assert {"64x64x64", "128x128x128", "96x64x32", "256x256x256"} <= shapes
    for r in got:
        for col in FILLED:
            assert r.get(col) is not None and math.isfinite(r[col]), (r["shape"], col)
        m, k, n = map(int, r["shape"].split("x"))
        # FLOPs independent of the code: 2 per multiply-accumulate.
        assert r["flops_predicted"] == 2 * m * k * n
        assert r["gflops_per_s"] == pytest.approx(2 * m * k * n / r["time_median_s"] / 1e9)
        assert r["time_rel_error"] == pytest.approx((r["time_predicted_s"] - r["time_median_s"]) / r["time_median_s"])
        assert r["prediction_basis"] == "measured-peaks" and r["transfers"] == "excluded" and r["peak_fraction"] > 0


def test_time_callable_counts_rounds() -> None:
    calls = []
    t = time_callable(lambda: calls.append(1), min_time_s=0.0, min_rounds=5, max_rounds=5, warmup=2)
    assert t.rounds == 5 and len(calls) == 7 and t.min <= t.median
    # The raw times are kept (benchmarks.harness.measurement.Measurement): the statistics are theirs.
    assert len(t.times) == 5 and t.min == min(t.times) and t.columns()["rounds"] == 5


def test_gpu_means_gpu0_and_an_invisible_device_is_a_skipped_row() -> None:
    result = run_sweep(tiny(("numpy",), devices=("gpu",)), None, lambda _line: None)
    assert [(r["device"], r["status"]) for r in result.rows] == [("gpu:0", "skipped")]
    assert result.rows[0]["message"] == "device gpu:0 not visible to numpy (has: cpu)"


def test_numpy_sweep_rows_and_crossover_prediction(tmp_path: Path) -> None:
    from xfbench.reports.writer import RunWriter, read_report

    with RunWriter(tmp_path) as writer:
        result = run_sweep(tiny(("numpy",), plot=True), writer, log=lambda _line: None)
    check_rows(result.rows, "numpy")
    kinds = {r["kind"] for r in result.rows}
    assert {"matmul", "transfer", "exercise"} <= kinds
    # No GPU in this test: the crossover is predicted, labelled datasheet-based, for the catalog GPUs.
    cross = [r for r in result.rows if r["shape"] == "crossover"]
    assert any(r["prediction_basis"] == "datasheet:h100" for r in cross)
    assert any("no GPU" in n for n in result.notes)
    df = read_report(writer.path)
    assert len(df) == len(result.rows)
    assert result.png_path is not None and result.png_path.stat().st_size > 1000


def test_cpu_concurrency_exercise_runs_two_processes() -> None:
    result = run_sweep(
        tiny(("numpy",), exercises=True, concurrency_size=128, sizes=(64,), shapes=()), None, log=lambda _l: None
    )
    conc = [r for r in result.rows if r["kind"] == "concurrency"]
    assert [r["workers"] for r in conc] == [1, 2]
    assert "two CPU worker processes" in conc[1]["message"] and conc[1]["speedup"] > 0


@pytest.mark.parametrize(
    "args, word",
    [
        (["matmul", "--sizes", "abc"], "'abc'"),
        (["matmul", "--sizes", "64,-1"], "'-1'"),
        (["matmul", "--backend", "jax"], "'jax'"),
        (["matmul", "--shapes", "4x4"], "'4x4'"),
        (["matmul", "--predict-gpu", "tpu"], "'tpu'"),
        (["matmul", "--dtypes", "int8"], "'int8'"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], word: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xfbench.benchmarks.cli", *args], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfbench: error:") and word in lines[0]
    assert "allowed" in lines[0]


def _framework_sweep(backend: str, module: str) -> None:
    require_or_skip(module, backend, reason=f"{module} is not installed in this environment (tox -e {backend})")
    result = run_sweep(tiny((backend,), exercises=True, logging_steps=20, concurrency_size=64), None, lambda _l: None)
    check_rows(result.rows, backend)
    logging = [r for r in result.rows if r["kind"] == "logging"]
    assert [r["transfers"] for r in logging] == ["per-step-read", "one-read"]
    assert all(r["time_predicted_s"] > 0 and r["time_median_s"] > 0 for r in logging)
    assert any(f"ex3 {backend} cpu" in n and "logs identical: True" in n for n in result.notes)


@pytest.mark.torch
def test_torch_tiny_sweep() -> None:
    _framework_sweep("torch", "torch")


@pytest.mark.torch
def test_torch_trace_logging_values() -> None:
    require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")
    import numpy as np
    from xfbench.backends.torch.ops import trace_logging

    per_step, once = trace_logging("cpu", 3, 8, True)(), trace_logging("cpu", 3, 8, False)()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8), dtype=np.float32) / np.sqrt(8)
    b = np.random.default_rng(1).standard_normal((8, 8), dtype=np.float32) / np.sqrt(8)
    m = a.astype(np.float64) @ b.astype(np.float64)
    expected = np.trace(m @ m.T)
    assert per_step.shape == once.shape == (3,)
    assert np.allclose(per_step, expected, rtol=1e-5) and np.allclose(once, expected, rtol=1e-5)


@pytest.mark.tensorflow
def test_tensorflow_tiny_sweep() -> None:
    _framework_sweep("tensorflow", "tensorflow")


@pytest.mark.mxnet
def test_mxnet_tiny_sweep() -> None:
    _framework_sweep("mxnet", "mxnet")


@pytest.mark.gpu
@pytest.mark.torch
def test_torch_gpu_transfers_rows() -> None:
    torch = require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    result = run_sweep(tiny(("torch",), devices=("cpu", "gpu:0")), None, lambda _l: None)
    gpu = [r for r in result.rows if r["kind"] == "matmul" and r["device"] == "gpu:0" and r["status"] == "ok"]
    assert {r["transfers"] for r in gpu} == {"included", "excluded"}
    assert any(r["shape"] == "crossover" and r["prediction_basis"] == "measured-peaks" for r in result.rows)


def test_gpu_peak_probes_keep_large_sizes_in_quick() -> None:
    from xfbench.benchmarks.matmul import QUICK, probe_sizes

    # --quick shrinks the CPU's probes only: a 1024 matmul or a 64 MiB copy does not fill a GPU.
    assert probe_sizes(QUICK, "cpu") == (1024, 64 << 20)
    assert probe_sizes(QUICK, "gpu:0") == (8192, 1 << 30)
    assert probe_sizes(SweepConfig(), "cpu") == (2048, 256 << 20)
    assert probe_sizes(SweepConfig(gpu_peak_size=4096, gpu_copy_bytes=1 << 28), "gpu:1") == (4096, 1 << 28)


def test_oom_in_the_sweep_is_an_oom_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorFlow's GPU OOM (ResourceExhaustedError 'OOM when allocating ...') and torch's both become ``oom``
    rows; any other failure an ``error`` row. Built from the frameworks' messages, no framework needed."""
    from xfbench.benchmarks import matmul

    resource_exhausted = type("ResourceExhaustedError", (type("OpError", (Exception,), {}),), {})
    failures = {
        (96, 64, 32): resource_exhausted("OOM when allocating tensor with shape[96,32] and type float on GPU:0"),
        (128, 128, 128): type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate"),
        (64, 64, 64): ValueError("unsupported layout"),
    }
    real = matmul.NUMPY_OPS.matmul_timer

    def timer(m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", transfers: bool = False) -> Any:
        if (m, k, n) in failures:
            raise failures[(m, k, n)]
        return real(m, k, n, dtype, device, transfers)

    monkeypatch.setattr(matmul.NUMPY_OPS, "matmul_timer", timer)
    result = run_sweep(tiny(("numpy",)), None, log=lambda _l: None)
    status = {r["shape"]: r["status"] for r in result.rows if r["kind"] == "matmul" and r["shape"] != "256x256x256"}
    assert status == {"96x64x32": "oom", "128x128x128": "oom", "64x64x64": "error"}
    assert all(r["tf32"] == "" for r in result.rows if r.get("device") == "cpu")
