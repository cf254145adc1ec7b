"""``xfbench memory``: the fixed + per-sample fit, its report, bad input, and one real run (torch env).

The fits are checked against numpy's least squares (a second implementation) and hand arithmetic; the
end-to-end run checks the tensor-level series of D2L's MLP against the hand count: per sample the input
(784 floats) and, at the inference peak, the hidden layer's matmul result and its ReLU (2 * 256 floats),
(784 + 512) * 4 = 5,184 bytes; fixed: the parameters, 203,530 floats = 814,120 bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend_or_skip
from xfbench.backends import is_available
from xfbench.benchmarks.cli.memory import Point, fit_line, fit_quadratic, fits, format_report, plot, rel_error

REPO = Path(__file__).resolve().parents[1]
MLP_FIXED = (784 * 256 + 256 + 256 * 10 + 10) * 4  # 814,120
MLP_PER_SAMPLE = (784 + 2 * 256) * 4  # 5,184


def _xfbench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "xfbench.benchmarks.cli", "memory", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, check=False)


def test_fit_of_an_exact_line_by_hand() -> None:
    f = fit_line([8, 16, 32], [100 + 10 * 8, 100 + 10 * 16, 100 + 10 * 32])
    assert f is not None and f.points == 3
    assert f.fixed == pytest.approx(100) and f.per_sample == pytest.approx(10)


def test_fit_of_noisy_points_equals_numpy_least_squares() -> None:
    batches, values = [8, 16, 32, 64], [180.0, 275.0, 410.0, 770.0]
    f = fit_line(batches, values)
    slope, intercept = np.polyfit(batches, values, 1)
    assert f is not None
    assert f.per_sample == pytest.approx(slope) and f.fixed == pytest.approx(intercept)


def test_fit_needs_two_distinct_batches() -> None:
    assert fit_line([8], [100.0]) is None
    assert fit_line([8, 8], [100.0, 110.0]) is None


def test_report_compares_fixed_and_per_sample() -> None:
    # measured: 50 MB + 10 MB/sample; predicted: 40 MB + 11 MB/sample (hand: -20% and +10%)
    points = [
        Point(b, measured=int(50e6 + 10e6 * b), predicted=int(40e6 + 11e6 * b), spread=0.01, measured_all=[1, 2])
        for b in (8, 16)
    ]
    f = fits(points)
    assert f["measured"] is not None and f["predicted"] is not None
    assert rel_error(f["predicted"].fixed, f["measured"].fixed) == pytest.approx(-0.2)
    assert rel_error(f["predicted"].per_sample, f["measured"].per_sample) == pytest.approx(0.1)
    text = format_report("cnn3 training", points, 2)
    assert "fixed measured 50.000 MB, predicted 40.000 MB (-20.0%)" in text
    assert "per sample measured 10.000 MB, predicted 11.000 MB (+10.0%)" in text
    assert "tensor level" not in text  # no tensor-level series: nothing claimed


def test_report_says_when_a_backend_has_no_tensor_figure_and_when_a_batch_failed() -> None:
    points = [Point(b, measured=10 * b, predicted=9 * b, tensor_predicted=5_000_000 + 1_000_000 * b) for b in (8, 16)]
    text = format_report("t", points, 3)
    assert "tensor level: no measurement on this backend; predicted fixed 5.000 MB + 1.000 MB/sample" in text
    text = format_report("t", [points[0], Point(16, status="oom", message="killed")], 3)
    assert "oom" in text and "killed" in text
    assert "fit: needs measurements at two or more distinct batches" in text


def test_sequence_sweep_fits_per_token_and_the_quadratic_term() -> None:
    # measured: 10 MB + 20 kB/token + 100 B/token^2 at T = 64, 128, 256 (hand: 64 -> 10e6 + 1.28e6 + 409,600 B)
    def mem(t: int, c: float) -> int:
        return int(10e6 + 20e3 * t + c * t * t)

    points = [Point(2, tokens=t, measured=mem(t, 100.0), predicted=mem(t, 110.0)) for t in (64, 128, 256)]
    assert points[0].measured == 11_689_600
    text = format_report("gpt2_tiny training", points, 3)
    assert text.splitlines()[1].split()[0] == "tokens"  # the swept column is the sequence length
    assert "per token measured" in text
    assert "quadratic fit: measured 20,000 B/token + 100.00 B/token^2; predicted 20,000 B/token + 110.00" in text
    assert fit_quadratic([1, 2], [1.0, 2.0]) is None  # three lengths needed


def test_plot_writes_a_png_with_the_simulated_curve(tmp_path: Path) -> None:
    from xfbench.benchmarks.harness.workload import Config

    points = [
        Point(2, measured=3_000_000, predicted=2_500_000, timeline={"rss_t": [0.0, 0.1, 0.2], "rss_bytes": [0, 2, 1]})
    ]
    path = plot(points, {2: Config("torch", "mlp", "training", 2)}, tmp_path / "m.png", "mlp")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nosuchmodel", "--backend", "torch"], "nosuchmodel"),
        (["mlp", "--backend", "caffe"], "caffe"),
        (["mlp", "--backend", "torch", "--batch", "8,0"], "--batch"),
        (["mlp", "--backend", "torch", "--batch", "x"], "--batch"),
        (["mlp", "--backend", "torch", "--device", "tpu"], "tpu"),
        (["mlp", "--backend", "torch", "--phase", "backward"], "backward"),
        (["mlp", "--backend", "torch", "--repeats", "0"], "--repeats"),
        (["mlp"], "--backend"),
        (["mlp", "--backend", "torch", "--batch", "10000000000"], "bytes"),
        (["mlp", "--backend", "torch", "--batch", "2", "--seq", "16,32"], "token models"),
        (["gpt2_tiny", "--backend", "torch", "--batch", "2,4", "--seq", "16,32"], "one batch"),
        (["gpt2_tiny", "--backend", "torch", "--batch", "2", "--seq", "16,0"], "--seq"),
        (["gpt2_tiny", "--backend", "torch", "--batch", "2", "--seq", "16,512"], "256 positions"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = _xfbench(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfbench: error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_backend_not_installed_names_the_install_command() -> None:
    missing = next((b for b in ("mxnet", "tensorflow", "torch") if not is_available(b)), None)
    if missing is None:
        pytest.skip("every backend is installed in this environment: nothing is missing to name")
    proc = _xfbench("mlp", "--backend", missing, "--batch", "2")
    assert proc.returncode == 2
    assert proc.stderr.startswith("xfbench: error: --backend ") and "pip install" in proc.stderr


@pytest.mark.torch
@pytest.mark.slow
def test_torch_run_fits_the_hand_counted_tensor_level_series(tmp_path: Path) -> None:
    require_backend_or_skip("torch")
    from xfbench.benchmarks.cli.memory import measure_point
    from xfbench.benchmarks.harness.workload import Config

    points = [measure_point(Config("torch", "mlp", "inference", b), 2, True, 0) for b in (4, 8)]
    assert all(p.status == "ok" for p in points), [p.message for p in points]
    for p in points:
        assert p.tensor_measured == MLP_FIXED + MLP_PER_SAMPLE * p.batch  # MemTracker, by hand
        assert len(p.measured_all) == 2 and p.timeline.get("rss_t") and p.timeline.get("allocator_t")
    f = fits(points)["tensor_measured"]
    assert f is not None and f.fixed == pytest.approx(MLP_FIXED) and f.per_sample == pytest.approx(MLP_PER_SAMPLE)

    proc = _xfbench(
        "mlp", "--backend", "torch", "--batch", "4,8", "--phase", "inference", "--repeats", "2", "--out", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tensor level: fixed measured 0.814 MB, predicted 0.814 MB (+0.0%)" in proc.stdout
    assert "per sample measured 0.005 MB, predicted 0.005 MB (+0.0%)" in proc.stdout
    (png,) = tmp_path.glob("*.png")
    assert png.name == "mlp-torch-inference-cpu.png" and png.read_bytes()[:4] == b"\x89PNG"
