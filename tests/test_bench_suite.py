"""The benchmark suite end to end (torch env): rows with every measurement beside its prediction,
OOM rows without stopping the run, and nothing lost when the run is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_or_skip
from xfbench.reports.writer import read_report

pytestmark = pytest.mark.torch
require_or_skip("torch", "torch", reason="PyTorch is not installed (tox -e torch)")

REPO = Path(__file__).resolve().parents[1]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_models.py", "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += ["--backend", "torch", "--report-dir", str(tmp_path), "--rounds", "3", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _report(tmp_path: Path):  # type: ignore[no-untyped-def]
    files = sorted(tmp_path.glob("*.csv"))
    assert len(files) == 1, files
    df = read_report(files[0])
    return df[df["kind"] == "model"].reset_index(drop=True)  # the run's calibration rows come first


def test_row_has_measurements_beside_predictions(tmp_path: Path) -> None:
    proc = _bench(tmp_path, "--models", "mlp", "--phase", "training", "--batch", "16")
    assert proc.returncode == 0, proc.stdout[-2000:]
    df = _report(tmp_path)
    row = df.iloc[0]
    assert row["status"] == "ok" and row["kind"] == "model"
    assert row["params_counted"] == row["params_predicted"] == 784 * 256 + 256 + 256 * 10 + 10
    assert row["flops_counted"] == row["flops_predicted_counter"]  # FlopCounterMode, 2 per MAC
    # forward 2*16*(784*256 + 256*10); backward: weight grads for both + input grad of the second only
    fwd = 2 * 16 * (784 * 256 + 256 * 10)
    assert row["flops_predicted"] == fwd + 2 * 16 * (784 * 256 + 256 * 10) + 2 * 16 * 256 * 10
    # --rounds 3 in each of the 3 processes (the benchmark process and two forked from the timing server)
    assert row["time_processes"] == 3 and row["rounds"] == 3 * 3
    assert 0 < row["time_lo_s"] <= row["time_median_s"] <= row["time_hi_s"]
    assert row["time_within_noise"] == (
        "yes" if row["time_lo_s"] <= row["time_predicted_s"] <= row["time_hi_s"] else "no"
    )
    assert row["mem_method"] in ("rss-hwm", "rss-sampled") and row["mem_measured_bytes"] > 0
    assert row["mem_predicted_bytes"] > 0 and row["mem_rel_error"] == pytest.approx(
        (row["mem_predicted_bytes"] - row["mem_measured_bytes"]) / row["mem_measured_bytes"]
    )
    assert Path(str(_report_path(tmp_path)).replace(".csv", ".json")).exists()  # pytest-benchmark JSON
    assert "xfbench summary" in proc.stdout


def _report_path(tmp_path: Path) -> Path:
    return sorted(tmp_path.glob("*.csv"))[0]


def test_oom_is_a_row_and_the_run_goes_on(tmp_path: Path) -> None:
    # AlexNet training at batch 512 needs > 2 GB; the cap applies to the memory process only.
    proc = _bench(tmp_path, "--models", "alexnet,mlp", "--phase", "training", "--batch", "512", "--memory-limit", "2GB")
    assert proc.returncode == 0, proc.stdout[-2000:]
    df = _report(tmp_path).set_index("model")
    assert df.loc["alexnet", "status"] == "oom"
    assert "allocate" in df.loc["alexnet", "message"] or "Memory" in df.loc["alexnet", "message"]
    assert df.loc["mlp", "status"] == "ok"


def test_killed_run_keeps_finished_rows(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_models.py", "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += ["--backend", "torch", "--report-dir", str(tmp_path), "--models", "mlp,vgg16", "--batch", "8"]
    cmd += ["--phase", "inference", "--rounds", "200"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            files = list(tmp_path.glob("*.csv"))
            if files and ",model,torch," in files[0].read_text():  # kind=model, backend=torch: a finished model row
                break
            time.sleep(0.5)
        else:
            raise AssertionError("no row written within 300 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    df = _report(tmp_path)
    assert list(df["model"]) == ["mlp"] and df.iloc[0]["status"] == "ok"
