"""Data-parallel training steps with ``torch.distributed`` + ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU).

One module, two roles (``python -m backends.torch.distributed --job JOB.json --out RESULT.json``):

* **worker** (``RANK`` is in the environment): joins the process group through the ``env://`` rendezvous
  exactly as ``torchrun`` sets it up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``), runs the job (an all-reduce microbenchmark, then timed DDP training steps of each model at
  each per-worker batch), and rank 0 writes the result JSON. So the same command runs on several machines::

      torchrun --nnodes=2 --nproc-per-node=4 --node-rank=<0|1> \\
          --rdzv-backend=c10d --rdzv-endpoint=<host0>:29500 \\
          -m backends.torch.distributed --job job.json --out result.json

* **local launcher** (no ``RANK``; ``--nprocs N``): starts N copies of itself on this machine with those
  variables set (a free port on 127.0.0.1) and waits for them, like ``torchrun --standalone``.

Threads: on the CPU every worker runs one compute thread (``torch.set_num_threads(1)``,
``set_num_interop_threads(1)``, ``OMP_NUM_THREADS=1``), so N workers use N cores and a speedup is a speedup
of workers, not of threads. On GPUs (``--device gpu``) each rank takes ``cuda:LOCAL_RANK`` and the NCCL backend;
every tensor a collective touches (the all-reduce microbenchmark, the per-step times reduced to their maximum
over ranks) lives on the rank's collective device (:func:`collective_setup`): NCCL reduces CUDA tensors only.

The job (JSON): ``models`` (``[{"name", "spec"}]`` with ``spec`` = :meth:`ModelSpec.to_dict`), ``batches``
(per-worker batch sizes), ``steps``, ``warmup``, ``optimizer``, ``allreduce_sizes`` (bytes),
``allreduce_repeats``, optional ``device`` (``cpu``/``gpu``), optional ``verify`` (``{"model", "global_batch",
"weights_out"}``: one step on the rank's shard of a fixed global batch, rank 0 saves the weights as ``.npz``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
THREADS_NOTE = "1 compute thread per worker process (torch.set_num_threads(1), interop 1, OMP_NUM_THREADS=1)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it; the launcher retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def torchrun_env(rank: int, world_size: int, port: int, addr: str = "127.0.0.1") -> dict[str, str]:
    """The rendezvous variables ``torchrun`` gives a single-node worker of rank ``rank``."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
    }


def launch_local(
    nprocs: int, job_path: str, out_path: str, timeout_s: float = 600.0, attempts: int = 2
) -> subprocess.CompletedProcess[str]:
    """Runs ``nprocs`` workers of this module on this machine (env:// rendezvous on a free port).

    Returns rank 0's completed process; raises ``RuntimeError`` with the failing rank's stderr tail when a
    worker fails (retried once with a new port, in case another process took the port in between).
    """
    last_err = ""
    for _ in range(attempts):
        port = free_port()
        procs = []
        for rank in range(nprocs):
            env = {**os.environ, **THREAD_ENV, **torchrun_env(rank, nprocs, port)}
            cmd = [sys.executable, "-m", "xfbench.backends.torch.distributed", "--job", job_path, "--out", out_path]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + timeout_s
        results: list[subprocess.CompletedProcess[str]] = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                out, err = p.communicate()
                err += f"\nworker timed out after {timeout_s:.0f} s"
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        failed = [(r, res) for r, res in enumerate(results) if res.returncode != 0]
        if not failed:
            return results[0]
        rank, res = failed[0]
        last_err = f"rank {rank} exited {res.returncode}: {res.stderr.strip()[-2000:]}"
        if "address already in use" not in res.stderr.lower():
            break
    raise RuntimeError(last_err)


# ----------------------------------------------------------------------------------------------- worker role


def collective_setup(gpu: bool, local_rank: int) -> tuple[str, str]:
    """``(process-group backend, device of the tensors its collectives reduce)``: ``("nccl", "cuda:LOCAL_RANK")``
    on GPUs, ``("gloo", "cpu")`` on the CPU."""
    return ("nccl", f"cuda:{local_rank}") if gpu else ("gloo", "cpu")


def max_over_ranks(values: list[float], device: Any) -> list[float]:
    """Element-wise maximum of ``values`` over all ranks (an all-reduce MAX of a float64 tensor created on
    ``device``, the collective device of :func:`collective_setup`); returns it as Python floats on every rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=torch.device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.cpu().tolist()]


def _median_iqr(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "iqr": q[2] - q[0], "min": min(times), "mean": statistics.fmean(times)}


def _worker(job: dict[str, Any], out_path: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from xfbench.analytics.spec import spec_from_dict
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.torch.model import build_model, count_params, get_weights, loss_fn, make_optimizer

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only possible before any parallel work)
        pass
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = job.get("device", "cpu") != "cpu"
    pg_backend, coll_device = collective_setup(gpu, local_rank)
    dev = torch.device(coll_device)
    tf32 = ""
    if gpu:
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise RuntimeError(
                f"rank {rank} (LOCAL_RANK {local_rank}) needs GPU {local_rank}, but this process sees {visible} "
                f"GPU(s): run at most {visible} workers per node with --device gpu"
            )
        torch.cuda.set_device(dev)
        from xfbench.backends.torch.device import apply_tf32_policy

        tf32 = apply_tf32_policy()
    dist.init_process_group(
        pg_backend, init_method="env://", timeout=timedelta(seconds=300), device_id=dev if gpu else None
    )

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(dev)

    def barrier() -> None:
        # NCCL's barrier otherwise guesses the rank's device (and warns); gloo takes no device ids.
        if gpu:
            dist.barrier(device_ids=[local_rank])
        else:
            dist.barrier()

    result: dict[str, Any] = {
        "backend": "torch",
        "framework_version": torch.__version__,
        "workers": world,
        "engine": f"torch.distributed {dist.get_backend()} + DistributedDataParallel",
        "threads": THREADS_NOTE if not gpu else "one GPU per worker process (NCCL)",
        "device": "gpu" if gpu else "cpu",
        "tf32": tf32,
        "allreduce": [],
        "steps": [],
    }

    # All-reduce microbenchmark: the collective DDP uses for gradients, over float32 tensors.
    for nbytes in job.get("allreduce_sizes", []):
        t = torch.ones(max(1, int(nbytes) // 4), dtype=torch.float32, device=dev)
        times = []
        for i in range(int(job.get("allreduce_repeats", 10)) + 2):
            barrier()
            sync()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            sync()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        result["allreduce"].append({"bytes": int(t.numel() * 4), "times": times})

    optimizer = job.get("optimizer", "sgd")
    for entry in job["models"]:
        spec = spec_from_dict(entry["spec"])
        loss_of = loss_fn(spec)
        for batch in job["batches"]:
            model = build_model(spec, device=f"gpu:{local_rank}" if gpu else "cpu", seed=0)
            ddp = DDP(model, device_ids=[local_rank] if gpu else None)
            opt = make_optimizer(ddp, optimizer)
            x, y = make_batch(spec, int(batch), seed=1 + rank)
            xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(np.asarray(y)).to(dev)

            def step(ddp: Any = ddp, opt: Any = opt, xt: Any = xt, yt: Any = yt, loss_of: Any = loss_of) -> None:
                ddp.train()
                opt.zero_grad(set_to_none=True)
                loss_of(ddp(xt), yt).backward()
                opt.step()

            for _ in range(int(job.get("warmup", 2))):
                step()
            sync()
            barrier()
            times = []
            for _ in range(int(job.get("steps", 5))):
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
            # The slowest rank sets the pace: report, per step, the maximum over ranks.
            step_times = max_over_ranks(times, dev)
            # Diagnostic: the same step without DDP (no all-reduce) while all N workers compute, which shows how
            # much of a gap to the prediction is CPU sharing rather than communication.
            plain_opt = make_optimizer(model, optimizer)

            def plain(
                model: Any = model, opt: Any = plain_opt, xt: Any = xt, yt: Any = yt, loss_of: Any = loss_of
            ) -> None:
                model.train()
                opt.zero_grad(set_to_none=True)
                loss_of(model(xt), yt).backward()
                opt.step()

            barrier()
            alone = []
            for _ in range(int(job.get("steps", 5))):
                t0 = time.perf_counter()
                plain()
                sync()
                alone.append(time.perf_counter() - t0)
            alone_times = max_over_ranks(alone, dev)
            result["steps"].append(
                {
                    "model": entry["name"],
                    "batch_per_worker": int(batch),
                    "times": step_times,
                    "params": count_params(model),
                    "compute_only_median": statistics.median(alone_times),
                    **_median_iqr(step_times),
                }
            )
            del ddp, opt

    verify = job.get("verify")
    if verify:
        spec = next(spec_from_dict(e["spec"]) for e in job["models"] if e["name"] == verify["model"])
        gb = int(verify["global_batch"])
        x, y = make_batch(spec, gb, seed=123)
        lo, hi = rank * gb // world, (rank + 1) * gb // world
        model = build_model(spec, device=f"gpu:{local_rank}" if gpu else "cpu", seed=0)
        ddp = DDP(model, device_ids=[local_rank] if gpu else None)
        opt = make_optimizer(ddp, optimizer)
        ddp.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(spec)(
            ddp(torch.from_numpy(x[lo:hi]).to(dev)), torch.from_numpy(np.asarray(y)[lo:hi]).to(dev)
        ).backward()
        opt.step()
        sync()
        if rank == 0:
            np.savez(verify["weights_out"], *get_weights(model))

    barrier()
    if rank == 0:
        Path(out_path).write_text(json.dumps(result))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Worker (``RANK`` set) or local launcher (``--nprocs N``); see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m backends.torch.distributed")
    p.add_argument("--job", required=True, help="job JSON (see module docstring)")
    p.add_argument("--out", required=True, help="rank 0 writes the result JSON here")
    p.add_argument("--nprocs", type=int, default=None, help="launcher: start N local workers (no torchrun)")
    args = p.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    if "RANK" in os.environ:
        _worker(job, args.out)
        return 0
    if not args.nprocs:
        p.error("RANK is not set: start under torchrun, or give --nprocs N to launch N local workers")
    res = launch_local(args.nprocs, args.job, args.out)
    sys.stderr.write(res.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
