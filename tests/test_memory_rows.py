"""Memory measured three ways in the report rows (issue 10): the median of N processes with its spread, the
tensor-level figure (PyTorch's MemTracker) beside the simulated step, and the schema columns that carry them.

Expected values are hand arithmetic: a Dense(3) layer on 4 features at batch 2 holds its parameters
(4*3 + 3 floats = 60 bytes), the input (2*4 floats = 32 bytes) and its output (2*3 floats = 24 bytes) at
the inference peak: 116 bytes. D2L's MLP (784-256-10) at batch 4: parameters 203,530 floats (814,120 bytes),
the input 4*784 floats (12,544 bytes) and, at the peak, the hidden layer's matmul result and its ReLU
(2 * 4*256 floats = 8,192 bytes): 834,856 bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import require_backend_or_skip
from xfbench.analytics.catalog import resolve_model
from xfbench.analytics.predict import predict
from xfbench.analytics.spec import spec_from_dict
from xfbench.benchmarks.harness import rows as measure
from xfbench.benchmarks.harness import worker
from xfbench.benchmarks.harness.workload import Config
from xfbench.reports import schema
from xfbench.reports.writer import RunWriter, SchemaError, read_report

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny_dense", "input_shape": [4], "layers": [{"type": "Dense", "units": 3}]}
TINY_INFERENCE_PEAK = (4 * 3 + 3) * 4 + 2 * 4 * 4 + 2 * 3 * 4  # 116 bytes
MLP_PARAMS = 784 * 256 + 256 + 256 * 10 + 10  # 203,530
MLP_B4_INFERENCE_PEAK = MLP_PARAMS * 4 + 4 * 784 * 4 + 2 * 4 * 256 * 4  # 834,856 bytes
NEW_COLUMNS = (
    "mem_tensor_measured_bytes",
    "mem_tensor_predicted_bytes",
    "mem_tensor_breakdown",
    "mem_repeats",
    "mem_spread",
)

# ------------------------------------------------------------------------------------------ framework-free


def test_new_columns_are_in_schema_version_3() -> None:
    assert schema.SCHEMA_VERSION >= 3
    for col in NEW_COLUMNS:
        assert col in schema.COLUMN_NAMES
        assert schema.ADDED_IN[col] == 3
        assert col not in schema.columns_of_version(2)
    assert "memory repeats" in schema.HISTORY_COMMENT


def test_version_2_file_reads_with_the_new_columns_blank(tmp_path: Path) -> None:
    v2 = schema.columns_of_version(2)
    path = tmp_path / "old.csv"
    row = {c: "" for c in v2} | {"schema_version": "2", "kind": "model", "status": "ok", "model": "mlp"}
    path.write_text("# old\n" + ",".join(v2) + "\n" + ",".join(row[c] for c in v2) + "\n")
    df = read_report(path)
    assert df.iloc[0]["model"] == "mlp"
    for col in NEW_COLUMNS:
        assert str(df.iloc[0][col]) in ("", "nan", "<NA>")


def test_version_3_file_written_before_the_new_columns_reads_with_them_blank(tmp_path: Path) -> None:
    # version 3 gained these columns before its release, after v3 files (the committed reference CSVs) existed
    cols = [c for c in schema.COLUMN_NAMES if c not in NEW_COLUMNS]
    path = tmp_path / "early-v3.csv"
    row = {c: "" for c in cols} | {"schema_version": "3", "kind": "model", "status": "ok", "model": "lenet"}
    path.write_text(",".join(cols) + "\n" + ",".join(row[c] for c in cols) + "\n")
    df = read_report(path)
    assert df.iloc[0]["model"] == "lenet"
    for col in NEW_COLUMNS:
        assert str(df.iloc[0][col]) in ("", "nan", "<NA>")
    for reference in sorted((REPO / "reports" / "reference").glob("cpu-*.csv")):
        assert len(read_report(reference)) > 0  # every committed benchmark reference still reads


def test_version_3_file_missing_an_older_column_is_still_refused_in_one_line(tmp_path: Path) -> None:
    cols = [c for c in schema.COLUMN_NAMES if c != "tf32"]
    path = tmp_path / "broken-v3.csv"
    row = {c: "" for c in cols} | {"schema_version": "3", "kind": "model", "status": "ok"}
    path.write_text(",".join(cols) + "\n" + ",".join(row[c] for c in cols) + "\n")
    with pytest.raises(SchemaError) as info:
        read_report(path)
    message = str(info.value)
    assert "\n" not in message and "tf32" in message and str(path) in message


def test_writer_accepts_the_new_columns(tmp_path: Path) -> None:
    with RunWriter(tmp_path) as w:
        w.write_row(
            {
                "kind": "model",
                "status": "ok",
                "mem_repeats": 3,
                "mem_spread": 0.25,
                "mem_tensor_measured_bytes": 116,
                "mem_tensor_predicted_bytes": 116,
                "mem_tensor_breakdown": "Parameter=60;Activation=24;Other=32",
            }
        )
        path = w.path
    row = read_report(path).iloc[0]
    assert int(row["mem_repeats"]) == 3 and float(row["mem_spread"]) == 0.25
    assert row["mem_tensor_breakdown"] == "Parameter=60;Activation=24;Other=32"


def test_aggregate_takes_medians_and_the_spread_by_hand() -> None:
    results = [
        {"status": "ok", "method": "rss-hwm", "measured_bytes": 100, "baseline_bytes": 7, "second_step_bytes": 40},
        {"status": "ok", "method": "rss-hwm", "measured_bytes": 130, "baseline_bytes": 9},
        {"status": "ok", "method": "rss-hwm", "measured_bytes": 110, "baseline_bytes": 8},
    ]
    out = worker.aggregate(results)
    assert out["status"] == "ok" and out["repeats"] == 3 and out["method"] == "rss-hwm"
    assert out["measured_bytes"] == 110 and out["measured_bytes_all"] == [100, 130, 110]
    assert out["baseline_bytes"] == 8
    assert out["spread"] == pytest.approx((130 - 100) / 110)
    assert out["second_step_bytes"] == 40  # the first repeat's


def test_aggregate_of_one_repeat_has_no_spread() -> None:
    out = worker.aggregate([{"status": "ok", "method": "rss-hwm", "measured_bytes": 5}])
    assert out["measured_bytes"] == 5 and out["spread"] is None and out["repeats"] == 1


def test_aggregate_reports_an_oom_before_an_error() -> None:
    results = [
        {"status": "ok", "measured_bytes": 1},
        {"status": "error", "message": "boom"},
        {"status": "oom", "message": "MemoryError: x"},
    ]
    out = worker.aggregate(results)
    assert out["status"] == "oom" and out["message"] == "MemoryError: x"


def test_forked_repeat_returns_its_result() -> None:
    assert worker.in_child(lambda: {"measured_bytes": 42}) == {"status": "ok", "measured_bytes": 42}


def test_forked_repeat_that_runs_out_of_memory_is_oom() -> None:
    def fail() -> dict[str, Any]:
        raise MemoryError("cannot allocate")

    out = worker.in_child(fail)
    assert out["status"] == "oom" and "cannot allocate" in out["message"]


def test_forked_repeat_killed_by_sigkill_is_oom() -> None:
    def die() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    assert worker.in_child(die)["status"] == "oom"


def test_forked_repeat_that_hangs_times_out() -> None:
    def hang() -> dict[str, Any]:
        import time

        time.sleep(60)
        return {}

    out = worker.in_child(hang, timeout_s=0.5)
    assert out["status"] == "error" and "timed out" in out["message"]


def test_memory_repeats_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(measure.MEMORY_REPEATS_ENV, raising=False)
    assert measure.memory_repeats() == 3
    monkeypatch.setenv(measure.MEMORY_REPEATS_ENV, "5")
    assert measure.memory_repeats() == 5
    monkeypatch.setenv(measure.MEMORY_REPEATS_ENV, "0")
    with pytest.raises(ValueError, match="XFBENCH_MEMORY_REPEATS='0'"):
        measure.memory_repeats()


def test_worker_command_carries_repeats_and_the_tensor_message(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        out = {"status": "ok", "measured_bytes": 1, "tensor_message": "no tensor-level figure on mxnet CPU"}
        return subprocess.CompletedProcess(cmd, 0, stdout="noise\n" + json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr(measure.subprocess, "run", fake_run)
    monkeypatch.setenv(measure.MEMORY_SERVER_ENV, "0")  # a worker process per configuration
    monkeypatch.setenv(measure.MEMORY_REPEATS_ENV, "4")
    result = measure.memory_in_fresh_process(Config("mxnet", "mlp", "training", 2), tensor=False)
    cmd = seen[0]
    assert cmd[cmd.index("--repeats") + 1] == "4" and "--no-tensor" in cmd
    assert result["message"] == "no tensor-level figure on mxnet CPU"
    measure.memory_in_fresh_process(Config("mxnet", "mlp", "training", 2), repeats=2)
    assert seen[1][seen[1].index("--repeats") + 1] == "2" and "--no-tensor" not in seen[1]


def test_memory_columns_carry_the_new_figures() -> None:
    result = {
        "status": "ok",
        "method": "rss-hwm",
        "measured_bytes": 200,
        "repeats": 3,
        "spread": 0.1,
        "tensor_measured_bytes": 150,
        "tensor_breakdown": "Parameter=100;Activation=50",
    }
    cols = measure.memory_columns(result, 150)
    assert cols["mem_measured_bytes"] == 200 and cols["mem_rel_error"] == pytest.approx(-0.25)
    assert cols["mem_repeats"] == 3 and cols["mem_spread"] == 0.1
    assert cols["mem_tensor_measured_bytes"] == 150
    assert cols["mem_tensor_breakdown"] == "Parameter=100;Activation=50"
    assert set(cols) <= set(schema.COLUMN_NAMES)


def test_prediction_carries_both_simulated_phases() -> None:
    pred = predict(spec_from_dict(TINY), 2, framework="torch")
    assert pred.simulated("inference") is not None
    assert pred.simulated("inference").peak_bytes == TINY_INFERENCE_PEAK  # type: ignore[union-attr]
    memory = pred.as_dict()["memory"]
    assert memory["simulated_inference_bytes"] == TINY_INFERENCE_PEAK
    assert memory["simulated_inference"]["breakdown"]["parameters"] == 60
    assert memory["simulated_inference"]["breakdown"]["input_batch"] == 32
    assert memory["simulated_inference"]["peak_stage"] == "forward"
    assert memory["simulated_training_bytes"] > memory["simulated_inference_bytes"]
    with pytest.raises(ValueError, match="allowed: inference, training"):
        pred.simulated("backward")


def test_predict_json_and_text_show_the_simulated_step() -> None:
    cmd = [sys.executable, "-m", "xfbench.benchmarks.cli", "predict", "mlp", "--batch", "4", "--framework", "torch"]
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    memory = json.loads(proc.stdout)["memory"]
    # warm=False and no dispatch mode: the real first step; the MLP's inference peak is the same either way
    assert memory["simulated_inference_bytes"] == MLP_B4_INFERENCE_PEAK
    assert memory["simulated_inference"]["peak_op"].endswith("relu")
    text = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False).stdout
    assert "simulated first step: training" in text and "peak (simulated)" in text


# ----------------------------------------------------------------------------------------------- PyTorch


def _need(backend: str) -> None:
    require_backend_or_skip(backend)


def _worker(tmp_path: Path, backend: str, *args: str) -> dict[str, Any]:
    spec = tmp_path / "tiny_dense.json"
    spec.write_text(json.dumps(TINY))
    cmd = [sys.executable, "-m", "xfbench.benchmarks.harness.worker", "--backend", backend, "--model", str(spec)]
    cmd += ["--batch", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-2000:]
    return dict(json.loads(lines[-1]))


@pytest.mark.torch
def test_torch_worker_forks_repeats_and_measures_memtracker(tmp_path: Path) -> None:
    _need("torch")
    out = _worker(tmp_path, "torch", "--phase", "inference", "--repeats", "2")
    assert out["status"] == "ok", out
    assert out["fork"] is True and out["repeats"] == 2 and len(out["measured_bytes_all"]) == 2
    assert out["method"] == "rss-hwm"
    assert out["tensor_method"] == "MemTracker"
    assert out["tensor_measured_bytes"] == TINY_INFERENCE_PEAK
    parts = dict(p.split("=") for p in out["tensor_breakdown"].split(";"))
    assert int(parts["Parameter"]) == 60  # MemTracker's own category: 4*3 + 3 floats


@pytest.mark.torch
def test_torch_row_predicted_tensor_peak_is_the_hand_count(tmp_path: Path) -> None:
    _need("torch")
    spec = tmp_path / "tiny_dense.json"
    spec.write_text(json.dumps(TINY))
    cols = measure.prediction_columns(Config("torch", str(spec), "inference", 2))
    assert cols["mem_tensor_predicted_bytes"] == TINY_INFERENCE_PEAK
    # the process-level model part: the peak minus parameters and input batch, i.e. the output (2*3 floats)
    assert measure.simulated_step_bytes(Config("torch", str(spec), "inference", 2)) == 24


@pytest.mark.torch
@pytest.mark.slow
def test_bench_row_has_repeats_spread_and_tensor_level(tmp_path: Path) -> None:
    _need("torch")
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_models.py", "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += ["--backend", "torch", "--report-dir", str(tmp_path), "--rounds", "1", "--models", "mlp"]
    cmd += ["--phase", "inference", "--batch", "4", "--memory-repeats", "2", "--suite", "models"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (path,) = sorted(tmp_path.glob("*.csv"))
    df = read_report(path)
    (row,) = (r for _, r in df.iterrows() if r["kind"] == "model")
    assert row["status"] == "ok"
    assert int(row["mem_repeats"]) == 2 and str(row["mem_spread"]) not in ("", "nan")
    assert int(float(row["mem_tensor_measured_bytes"])) == MLP_B4_INFERENCE_PEAK  # MemTracker
    assert int(float(row["mem_tensor_predicted_bytes"])) == MLP_B4_INFERENCE_PEAK  # the simulation
    assert "Parameter=814120" in row["mem_tensor_breakdown"]


def test_bad_memory_repeats_is_one_usage_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_models.py", "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += ["--report-dir", str(tmp_path), "--memory-repeats", "0", "--models", "mlp"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 4
    assert "ERROR: --memory-repeats '0': allowed: a positive integer" in proc.stderr


# ------------------------------------------------------------------------------------ TensorFlow / MXNet


@pytest.mark.tensorflow
def test_tensorflow_worker_forks_and_says_no_tensor_figure(tmp_path: Path) -> None:
    _need("tensorflow")
    out = _worker(tmp_path, "tensorflow", "--phase", "training", "--repeats", "2")
    assert out["status"] == "ok", out
    assert out["fork"] is True and len(out["measured_bytes_all"]) == 2
    assert "tensor_measured_bytes" not in out
    assert out["tensor_message"] == "no tensor-level figure on tensorflow CPU"


@pytest.mark.mxnet
def test_mxnet_worker_forks_and_says_no_tensor_figure(tmp_path: Path) -> None:
    _need("mxnet")
    out = _worker(tmp_path, "mxnet", "--phase", "training", "--repeats", "2")
    assert out["status"] == "ok", out
    assert out["fork"] is True and len(out["measured_bytes_all"]) == 2
    assert out["tensor_message"] == "no tensor-level figure on mxnet CPU"


def test_catalog_mlp_hand_count_matches_its_shape() -> None:
    # the hand arithmetic above assumes D2L's MLP is Flatten, Dense(256, relu), Dense(10)
    spec = resolve_model("mlp")
    assert [layer.type for layer in spec.layers] == ["Flatten", "Dense", "Dense"]
    assert predict(spec, 4).params == MLP_PARAMS


def test_gpu_repeats_are_fresh_interpreters_and_their_figures_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    # the GPU path's logic on the CPU: no fork (a CUDA context must never cross one), one fresh interpreter
    # per repeat (faked here), the allocator and NVML figures each the median of the repeats
    calls: list[list[str]] = []
    fakes = iter(
        [
            {
                "status": "ok",
                "method": "allocator+nvml",
                "measured_bytes": 300,
                "allocator_peak_bytes": 900,
                "nvml_bytes": 5000,
                "second_step_bytes": 250,
            },
            {
                "status": "ok",
                "method": "allocator+nvml",
                "measured_bytes": 100,
                "allocator_peak_bytes": 700,
                "nvml_bytes": 5200,
            },
            {
                "status": "ok",
                "method": "allocator+nvml",
                "measured_bytes": 200,
                "allocator_peak_bytes": 800,
                "nvml_bytes": 5100,
            },
        ]
    )

    def fake_fresh(argv: list[str], tensor: bool = False) -> dict[str, Any]:
        calls.append([*argv, f"tensor={tensor}"])
        return next(fakes)

    monkeypatch.setattr(worker, "in_fresh_interpreter", fake_fresh)
    argv = ["--backend", "torch", "--model", "mlp", "--phase", "training", "--batch", "2", "--device", "gpu:0"]
    args = worker.build_parser().parse_args([*argv, "--repeats", "3", "--no-tensor"])
    args.argv = [*argv, "--repeats", "3", "--no-tensor"]
    out = worker.run(args)
    assert len(calls) == 3 and out["fork"] is False and out["status"] == "ok"
    assert [c[-1] for c in calls] == ["tensor=False"] * 3  # --no-tensor was given
    assert out["measured_bytes"] == 200 and out["spread"] == pytest.approx((300 - 100) / 200)
    assert out["allocator_peak_bytes"] == 800 and out["nvml_bytes"] == 5100
    assert out["second_step_bytes"] == 250 and out["method"] == "allocator+nvml"


def test_cpu_figures_come_from_the_memory_server_with_the_same_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the worker's argument list goes to the backend's server, not to a new process."""
    asked: list[tuple[str, list[str]]] = []

    def fake_served(backend: str, argv: list[str], timeout_s: float) -> dict[str, Any]:
        asked.append((backend, argv))
        return {"status": "ok", "measured_bytes": 7, "tensor_message": "no tensor-level figure on mxnet CPU"}

    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a worker process was started for a CPU configuration")

    monkeypatch.setattr(worker, "served", fake_served)
    monkeypatch.setattr(measure.subprocess, "run", no_process)
    monkeypatch.delenv(measure.MEMORY_SERVER_ENV, raising=False)
    monkeypatch.setenv(measure.MEMORY_PARALLEL_ENV, "3")
    result = measure.memory_in_fresh_process(Config("mxnet", "mlp", "training", 2), repeats=5, memory_limit="4GB")
    backend, argv = asked[0]
    assert backend == "mxnet" and argv[argv.index("--backend") + 1] == "mxnet"
    assert argv[argv.index("--repeats") + 1] == "5" and argv[argv.index("--parallel") + 1] == "3"
    assert argv[argv.index("--memory-limit") + 1] == "4GB"
    assert (result["status"], result["measured_bytes"]) == ("ok", 7)
    assert result["message"] == "no tensor-level figure on mxnet CPU"


def test_memory_parallel_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(measure.MEMORY_PARALLEL_ENV, raising=False)
    assert measure.memory_parallel() == 2
    monkeypatch.setenv(measure.MEMORY_PARALLEL_ENV, "x")
    with pytest.raises(ValueError, match="XFBENCH_MEMORY_PARALLEL='x'"):
        measure.memory_parallel()


def test_the_memory_server_refuses_what_it_cannot_serve() -> None:
    """A server for an unknown backend exits 2 naming the allowed ones; a request it cannot serve is an error
    answer, and the server goes on to answer the next one."""
    from xfbench.reports.paths import subprocess_env

    proc = subprocess.run(
        [sys.executable, "-m", "xfbench.benchmarks.harness.worker", "--serve", "numpy"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "allowed: torch, tensorflow, mxnet" in proc.stderr
    assert worker.can_serve("cpu", "torch") and not worker.can_serve("gpu:0", "torch")
    assert not worker.can_serve("cpu", "torch", timeline="t.json") and not worker.can_serve("cpu", "numpy")


@pytest.mark.torch
def test_the_memory_servers_figures_are_a_fresh_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server forks each repeat from a process that has served other configurations before; its figures
    must be a fresh worker's (measured on the 2-core CPU: cnn3 training b8 276.9 vs 277.3 MB)."""
    require_backend_or_skip("torch")
    worker.close_servers()
    config = Config("torch", "cnn3", "training", 2)  # about 70 MB: the model's memory, not runtime noise, dominates
    measure.memory_in_fresh_process(Config("torch", "mlp", "inference", 4), repeats=1, tensor=False)  # served before
    served = measure.memory_in_fresh_process(config, repeats=2, tensor=False)
    monkeypatch.setenv(measure.MEMORY_SERVER_ENV, "0")
    fresh = measure.memory_in_fresh_process(config, repeats=2, tensor=False)
    worker.close_servers()
    assert served["status"] == fresh["status"] == "ok"
    # 3%: the repeats' own spread is up to 2.4% for rows above 100 MB; a tiny model (lenet, 2.3 MB) differed by
    # 140 KB (6%), the size of first-call runtime state, which is why a model of tens of MB is measured here.
    assert abs(served["measured_bytes"] - fresh["measured_bytes"]) <= 0.03 * fresh["measured_bytes"]
