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
from conftest import require_backend_or_skip
from xfbench.benchmarks.scaling import ScalingPlan, _job, run_job
from xfbench.reports.paths import subprocess_env

PLAN = ScalingPlan(
    models=("lenet",), workers=(1, 2), batch=2, steps=2, warmup=1, allreduce_sizes=(4096, 65536), min_time_s=0.0
)


def _need(backend: str) -> None:
    require_backend_or_skip(backend)


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
    # Raw step times only (benchmarks.scaling computes the statistics): the protocol's StepTimes keys.
    assert all(len(s["times"]) == 2 and min(s["times"]) > 0 for s in one["steps"] + two["steps"])
    raw = {"model", "batch_per_worker", "times", "params", "compute_only_times"}
    assert all(set(s) <= raw and s["params"] > 0 for s in one["steps"] + two["steps"])
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
    # torch also times each step without DDP, as many steps as the DDP step.
    assert all(len(s["compute_only_times"]) == 2 for s in two["steps"])


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
    """A distributed module's result JSON: one step entry per per-worker batch, raw times with the given medians."""
    steps = [{"model": "mlp", "batch_per_worker": b, "times": [m] * 3} for b, m in medians.items()]
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


# --- the shared loop and the job protocol (backends.distributed_loop; framework-free) ---------------------------


HEADER = {
    "backend": "fake",
    "framework_version": "0",
    "workers": 1,
    "engine": "fake engine",
    "threads": "1 thread",
    "device": "cpu",
    "tf32": "",
}


def _lenet_job(**changes: object) -> dict:
    job = dict(_job(PLAN, 2))
    job.update(
        batches=[4, 2], steps=3, warmup=2, allreduce_sizes=[4096, 100], allreduce_repeats=4, overhead_probe=False
    )
    job.update(changes)
    return job


def test_the_loop_calls_each_hook_as_the_job_says() -> None:
    from xfbench.backends.distributed_loop import ALLREDUCE_WARMUP, Engine, Trainee, run

    log: list[str] = []
    built: list[tuple[str, int]] = []

    def build(spec: object, batch: int) -> Trainee:
        built.append((getattr(spec, "name", "?"), batch))
        return Trainee(step=lambda: log.append(f"step{batch}"), params=7, compute_only=lambda: log.append("alone"))

    def allreduce(slot: int, nbytes: int) -> tuple[int, object]:
        return nbytes // 4 * 4 or 4, lambda: log.append(f"ar{slot}")

    engine = Engine(
        header={**HEADER, "workers": 2},  # type: ignore[typeddict-item]
        build=build,
        verify=lambda spec, v: log.append(f"verify {v['model']}"),
        allreduce=allreduce,  # type: ignore[arg-type]
        settle=lambda: log.append("settle"),
        reduce=lambda times: [float(len(times))] * len(times),  # marks the reduced lists
    )
    verify = {"model": "lenet", "global_batch": 4, "weights_out": "w.npz"}
    result = run(_lenet_job(verify=verify), engine)  # type: ignore[arg-type]
    # Per size: ALLREDUCE_WARMUP untimed + 4 timed all-reduces, each after a settle; the reported bytes are the
    # hook's. (That the loop takes its warm-up count from the constant: test_the_allreduce_warmup_is_the_modules_
    # constant, which changes it.)
    n = 2 * (ALLREDUCE_WARMUP + 4)  # log entries per size
    assert log[:n] == ["settle", "ar0"] * (ALLREDUCE_WARMUP + 4) and log[n : 2 * n] == ["settle", "ar1"] * (n // 2)
    assert [(a["bytes"], len(a["times"])) for a in result["allreduce"]] == [(4096, 4), (100, 4)]
    # Per batch: 2 warm-up steps each followed by a compute-only step, a settle, one timed step that sets the count
    # (reduced over the workers: 1.0 s here, and min_time_s is 0, so `steps` = 3 stands), a settle, then 3 timed
    # steps each followed by a timed compute-only step (interleaved).
    per_batch = ["step4", "alone"] * 2 + ["settle", "step4", "settle"] + ["step4", "alone"] * 3
    k = len(per_batch)
    assert log[2 * n : 2 * n + k] == per_batch
    assert log[2 * n + k : 2 * n + 2 * k] == [x.replace("step4", "step2") for x in per_batch]
    assert log[2 * n + 2 * k :] == ["verify lenet"]
    assert built == [("lenet", 4), ("lenet", 2)]
    steps = result["steps"]
    assert [(s["model"], s["batch_per_worker"], len(s["times"]), s["params"]) for s in steps] == [
        ("lenet", 4, 3, 7),
        ("lenet", 2, 3, 7),
    ]
    assert all(s["times"] == s["compute_only_times"] == [3.0] * 3 for s in steps)  # both went through reduce
    assert {k: result[k] for k in HEADER} == {**HEADER, "workers": 2}  # the header, as the engine gave it


def test_a_time_budget_sets_the_step_count_and_the_probe_runs_first() -> None:
    """``min_time_s`` 0.5 s with a first step of 0.1 s (what reduce returns here): ceil(0.5 / 0.1) = 5 timed steps
    (more than ``steps`` = 2), capped by ``max_steps``; ``overhead_probe`` times the 18-parameter probe model
    first, at batch 1, and reports it apart from the models' steps."""
    from xfbench.backends.distributed_loop import OVERHEAD_PROBE_SPEC, Engine, Trainee, run, steps_for

    built: list[tuple[str, int]] = []

    def build(spec: object, batch: int) -> Trainee:
        built.append((getattr(spec, "name", "?"), batch))
        return Trainee(step=lambda: None, params=3, compute_only=lambda: None)

    engine = Engine(
        header=HEADER,  # type: ignore[arg-type]
        build=build,
        verify=print,  # type: ignore[arg-type]
        allreduce=lambda slot, nbytes: (nbytes, lambda: None),  # type: ignore[arg-type,return-value]
        reduce=lambda times: [0.1] * len(times),
    )
    job = _lenet_job(batches=[2], steps=2, warmup=0, allreduce_sizes=[], min_time_s=0.5, overhead_probe=True)
    result = run(job, engine)  # type: ignore[arg-type]
    assert built == [(OVERHEAD_PROBE_SPEC["name"], 1), ("lenet", 2)]
    assert len(result["steps"][0]["times"]) == 5 and len(result["steps"][0]["compute_only_times"]) == 5
    probe = result["overhead"]  # type: ignore[typeddict-item]
    assert probe["batch_per_worker"] == 1 and len(probe["times"]) == 5
    assert steps_for({**job, "max_steps": 4}, 0.1) == 4  # type: ignore[typeddict-item]
    assert steps_for(job, 1.0) == 2  # a slow step: `steps` stands  # type: ignore[arg-type]
    assert steps_for({**job, "min_time_s": 0.0}, 1e-6) == 2  # no budget  # type: ignore[typeddict-item]


def test_the_allreduce_warmup_is_the_modules_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop reads ALLREDUCE_WARMUP when it runs: with 3 (not the shipped 2), 3 untimed + 2 timed reductions
    per size, by hand, and 2 times reported. A loop that hard-coded its warm-up count would make 4 calls."""
    from xfbench.backends import distributed_loop
    from xfbench.backends.distributed_loop import Engine, Trainee, run

    monkeypatch.setattr(distributed_loop, "ALLREDUCE_WARMUP", 3)
    calls: list[int] = []
    engine = Engine(
        header=HEADER,  # type: ignore[arg-type]
        build=lambda spec, batch: Trainee(step=lambda: None, params=1),
        verify=print,  # type: ignore[arg-type]
        allreduce=lambda slot, nbytes: (nbytes, lambda: calls.append(slot)),  # type: ignore[arg-type,return-value]
    )
    job = _lenet_job(batches=[2], steps=1, warmup=0, allreduce_sizes=[4096, 100], allreduce_repeats=2)
    result = run(job, engine)  # type: ignore[arg-type]
    assert calls == [0] * (3 + 2) + [1] * (3 + 2)
    assert [len(a["times"]) for a in result["allreduce"]] == [2, 2]


def test_time_calls_reduces_and_measures() -> None:
    from xfbench.backends.distributed_loop import time_calls

    calls: list[str] = []
    times = time_calls(lambda: calls.append("c"), 3, warmup=1, sync=lambda: calls.append("s"))
    assert calls == ["c", "s"] * 4 and len(times) == 3 and all(t >= 0 for t in times)


def test_read_job_fills_defaults_and_needs_models_and_batches(tmp_path: Path) -> None:
    import json

    from xfbench.backends.distributed_loop import JOB_DEFAULTS, read_job

    path = tmp_path / "job.json"
    path.write_text(json.dumps({"models": [], "batches": [2], "steps": 9}))
    job = read_job(path)
    assert job["steps"] == 9 and job["warmup"] == 2 and job["device"] == "cpu" and job["allreduce_repeats"] == 10
    assert set(JOB_DEFAULTS) | {"models", "batches"} == set(job)
    path.write_text(json.dumps({"models": []}))
    with pytest.raises(ValueError, match="missing batches"):
        read_job(path)
    # The job benchmarks.scaling writes has every key the workers read, so no default applies to it.
    assert set(JOB_DEFAULTS) | {"models", "batches"} == set(_job(PLAN, 1))


def test_a_verify_model_outside_the_job_is_an_error() -> None:
    from xfbench.backends.distributed_loop import Engine, Trainee, run

    engine = Engine(HEADER, build=lambda s, b: Trainee(lambda: None, 1), verify=print)  # type: ignore[arg-type]
    job = _lenet_job(batches=[2], steps=1, warmup=0, verify={"model": "vgg11", "global_batch": 2, "weights_out": "w"})
    with pytest.raises(ValueError, match="verify model 'vgg11'"):
        run(job, engine)  # type: ignore[arg-type]
