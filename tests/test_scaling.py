"""The distributed engines on 2 CPU workers: each framework's data-parallel step equals one worker's step on the
whole batch, the all-reduce microbenchmark runs, and torch's launcher/torchrun rendezvous works.

One file for three frameworks, so each test carries its framework's mark and skips with a reason when that
framework is not installed in this environment (a module-level importorskip would skip them all).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from xfbench.backends import is_available
from xfbench.benchmarks.scaling import ScalingPlan, _job, run_job
from xfbench.reports.paths import subprocess_env

PLAN = ScalingPlan(models=("lenet",), workers=(1, 2), batch=2, steps=2, warmup=1, allreduce_sizes=(4096, 65536))


def _need(backend: str) -> None:
    if not is_available(backend):
        pytest.skip(f"{backend} is not installed in this environment (tox -e {backend})")


def _run(backend: str, workers: int, tmp_path: Path) -> tuple[dict, list[np.ndarray]]:
    weights = tmp_path / f"w{workers}.npz"
    job = _job(PLAN, workers, verify={"model": "lenet", "global_batch": 4, "weights_out": str(weights)})
    job["allreduce_repeats"] = 3
    result = run_job(backend, workers, job, timeout_s=300)
    with np.load(weights) as z:
        return result, [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


def _check_equal_steps(backend: str, tmp_path: Path) -> dict:
    one, w1 = _run(backend, 1, tmp_path)
    two, w2 = _run(backend, 2, tmp_path)
    assert one["workers"] == 1 and two["workers"] == 2 and two["backend"] == backend
    # Timed steps: N=1 at per-worker batches 4 (strong) and 2 (weak); N=2 at 2.
    assert sorted(s["batch_per_worker"] for s in one["steps"]) == [2, 4]
    assert [s["batch_per_worker"] for s in two["steps"]] == [2]
    assert all(len(s["times"]) == 2 and s["median"] > 0 for s in one["steps"] + two["steps"])
    assert [a["bytes"] for a in two["allreduce"]] == [4096, 65536]
    assert all(t > 0 for a in two["allreduce"] for t in a["times"])
    # Two workers on halves of a batch take the same SGD step as one worker on the whole batch.
    assert len(w1) == len(w2) == 10
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    return two


@pytest.mark.torch
def test_torch_ddp_two_gloo_processes(tmp_path: Path) -> None:
    _need("torch")
    two = _check_equal_steps("torch", tmp_path)
    assert "gloo" in two["engine"] and "DistributedDataParallel" in two["engine"]
    assert "torch.set_num_threads(1)" in two["threads"]


@pytest.mark.torch
def test_torch_worker_under_torchrun(tmp_path: Path) -> None:
    _need("torch")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on this interpreter's PATH")
    import json

    job = _job(PLAN, 2)
    job.update(models=job["models"], batches=[2], steps=1, warmup=0, allreduce_sizes=[4096], allreduce_repeats=1)
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = subprocess_env({"OMP_NUM_THREADS": "1"})
    cmd = [
        str(torchrun if torchrun.exists() else shutil.which("torchrun")),
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "xfbench.backends.torch.distributed",
        "--job",
        str(tmp_path / "job.json"),
        "--out",
        str(tmp_path / "out.json"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["workers"] == 2 and out["steps"][0]["model"] == "lenet"


@pytest.mark.tensorflow
def test_tensorflow_mirrored_two_logical_cpus(tmp_path: Path) -> None:
    _need("tensorflow")
    two = _check_equal_steps("tensorflow", tmp_path)
    assert "MirroredStrategy" in two["engine"] and "intra-op threads 1" in two["threads"]


@pytest.mark.mxnet
def test_mxnet_two_contexts_local_kvstore(tmp_path: Path) -> None:
    _need("mxnet")
    two = _check_equal_steps("mxnet", tmp_path)
    assert "kvstore 'local'" in two["engine"] and "OMP_NUM_THREADS=1" in two["threads"]


@pytest.mark.gpu
@pytest.mark.torch
def test_torch_nccl_two_gpus(tmp_path: Path) -> None:
    _need("torch")
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"NCCL data parallelism needs 2 GPUs; this machine has {torch.cuda.device_count()}")
    job = _job(PLAN, 2)
    job["device"] = "gpu"
    out = run_job("torch", 2, job, timeout_s=300)
    assert "nccl" in out["engine"]


# --- worker counts and partial failures (framework-free, no GPU needed) ---------------------------------------


@pytest.mark.parametrize(
    "gpus, expected", [(0, (1,)), (1, (1,)), (2, (1, 2)), (3, (1, 2, 3)), (4, (1, 2, 4)), (6, (1, 2, 4, 6))]
)
def test_default_workers_on_gpus_stop_at_the_gpu_count(
    gpus: int, expected: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    from xfbench.benchmarks import scaling

    monkeypatch.setattr(scaling, "gpu_count", lambda: gpus)
    monkeypatch.setattr(scaling.os, "cpu_count", lambda: 16)
    assert scaling.default_workers("gpu") == expected
    # The CPU keeps one single-threaded worker per core: 16 cores, whatever the GPUs.
    assert scaling.default_workers("cpu") == (1, 2, 4, 8, 16)


def test_check_plan_caps_gpu_workers_at_the_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfbench.benchmarks import scaling

    plan = ScalingPlan(models=("mlp",), workers=(1, 2), batch=2, device="gpu")
    monkeypatch.setattr(scaling, "gpu_count", lambda: 1)
    with pytest.raises(ValueError) as err:
        scaling.check_plan(plan)
    assert "workers 2" in str(err.value) and "1 GPU(s)" in str(err.value) and "allowed: 1..1" in str(err.value)
    monkeypatch.setattr(scaling, "gpu_count", lambda: 0)
    with pytest.raises(ValueError, match="no GPU visible"):
        scaling.check_plan(ScalingPlan(models=("mlp",), workers=(1,), batch=2, device="gpu"))
    monkeypatch.setattr(scaling, "gpu_count", lambda: 2)
    scaling.check_plan(plan)  # two GPUs: fine
    scaling.check_plan(ScalingPlan(models=("mlp",), workers=(1, 2), batch=2))  # the CPU is not capped by GPUs


def _fake_result(medians: dict[int, float]) -> dict:
    """A distributed module's result JSON: one step entry per per-worker batch, with the given medians."""
    steps = [
        {"model": "mlp", "batch_per_worker": b, "times": [m] * 3, "median": m, "iqr": 0.0, "min": m, "mean": m}
        for b, m in medians.items()
    ]
    return {"framework_version": "9.9", "engine": "fake engine", "threads": "1 thread", "allreduce": [], "steps": steps}


def test_a_failing_n_keeps_the_rows_already_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfbench.benchmarks import scaling

    calls: list[int] = []

    def fake_run_job(backend: str, workers: int, job: dict, python: str | None, timeout_s: float) -> dict:
        calls.append(workers)
        if workers == 2:
            raise RuntimeError("torch N=2: exit 1: NCCL error")
        # N=1 times every per-worker batch: weak 8, strong 32/1, 32/2, 32/4.
        assert sorted(job["batches"]) == [8, 16, 32]
        return _fake_result({32: 0.4, 16: 0.2, 8: 0.1})

    monkeypatch.setattr(scaling, "run_job", fake_run_job)
    plan = ScalingPlan(models=("mlp",), workers=(1, 2, 4), batch=8)
    rows = scaling.run_backend("torch", plan)
    assert calls == [1, 2]  # N=4 is not attempted after N=2 failed
    ok = [r for r in rows if r["status"] == "ok"]
    assert [(r["workers"], r["scaling_mode"], r["batch_size"], r["time_median_s"]) for r in ok] == [
        (1, "strong", 32, 0.4),
        (1, "weak", 8, 0.1),
    ]
    assert all(r["speedup"] == 1.0 and r["tf32"] == "" for r in ok)  # N=1 against itself; CPU rows: no TF32
    error = rows[-1]
    assert error["status"] == "error" and error["workers"] == 2
    assert "NCCL error" in error["message"] and "not run after this failure: N=4" in error["message"]


def test_a_failing_n1_leaves_only_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from xfbench.benchmarks import scaling

    def fail(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("torch N=1: exit 1: no GPU")

    monkeypatch.setattr(scaling, "run_job", fail)
    rows = scaling.run_backend("torch", ScalingPlan(models=("mlp",), workers=(1, 2), batch=8))
    assert [(r["status"], r["workers"]) for r in rows] == [("error", 1)]
    assert "not run after this failure: N=2" in rows[0]["message"]
