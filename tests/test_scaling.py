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
