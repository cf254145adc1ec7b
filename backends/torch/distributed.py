"""Data-parallel training steps with ``torch.distributed`` + ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU).

One module, two roles (``python -m xfbench.backends.torch.distributed --job JOB.json --out RESULT.json``):

* **worker** (``RANK`` is in the environment): joins the process group through the ``env://`` rendezvous
  exactly as ``torchrun`` sets it up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``), runs the job (an all-reduce microbenchmark, then timed DDP training steps of each model at
  each per-worker batch), and rank 0 writes the result JSON. So the same command runs on several machines::

      torchrun --nnodes=2 --nproc-per-node=4 --node-rank=<0|1> \\
          --rdzv-backend=c10d --rdzv-endpoint=<host0>:29500 \\
          -m xfbench.backends.torch.distributed --job job.json --out result.json

* **local launcher** (no ``RANK``; ``--nprocs N``): starts N copies of itself on this machine with those
  variables set (a free port on 127.0.0.1) and waits for them, like ``torchrun --standalone``.

Threads: on the CPU every worker runs one compute thread (``torch.set_num_threads(1)``,
``set_num_interop_threads(1)``, ``OMP_NUM_THREADS=1``), so N workers use N cores and a speedup is a speedup
of workers, not of threads. On GPUs (``--device gpu``) each rank takes ``cuda:LOCAL_RANK`` and the NCCL backend;
every tensor a collective touches (the all-reduce microbenchmark, the per-step times reduced to their maximum
over ranks) lives on the rank's collective device (:func:`collective_setup`): NCCL reduces CUDA tensors only.

The job and the result (JSON) are :class:`backends.distributed_loop.Job` and ``Result``; the loop (all-reduce
microbenchmark, warm-up, timed steps, verify) is :func:`backends.distributed_loop.run`, to which this module gives
its hooks (:func:`_engine`). Its extra: each (model, batch) is also timed without DDP (``compute_only_times``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from xfbench.backends.distributed_loop import (
    Engine,
    Job,
    Node,
    NodeProcess,
    Trainee,
    VerifyJob,
    dist_timeout_s,
    job_parser,
    mark_status,
    read_job,
    run,
    write_result,
)

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


def _engine(job: Job, rank: int, world: int, local_rank: int) -> Engine:
    """Joins the process group and returns this rank's hooks for :func:`backends.distributed_loop.run`."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from xfbench.analytics.spec import ModelSpec
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.torch.model import build_model, count_params, get_weights, loss_fn, make_optimizer

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only possible before any parallel work)
        pass
    gpu = job["device"] != "cpu"
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
        pg_backend, init_method="env://", timeout=timedelta(seconds=dist_timeout_s()), device_id=dev if gpu else None
    )
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    leader = local_rank == 0
    dist.barrier()
    mark_status("joined", leader)
    model_device = f"gpu:{local_rank}" if gpu else "cpu"
    optimizer = job["optimizer"]

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(dev)

    def settle() -> None:
        sync()
        # NCCL's barrier otherwise guesses the rank's device (and warns); gloo takes no device ids.
        if gpu:
            dist.barrier(device_ids=[local_rank])
        else:
            dist.barrier()
        sync()

    def allreduce(slot: int, nbytes: int) -> tuple[int, Callable[[], object]]:
        # The collective DDP uses for gradients, over a float32 tensor.
        t = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=dev)
        return int(t.numel() * 4), lambda: dist.all_reduce(t)

    def train_step(net: Any, opt: Any, loss_of: Any, x: Any, y: Any) -> Callable[[], None]:
        def step() -> None:
            net.train()
            opt.zero_grad(set_to_none=True)
            loss_of(net(x), y).backward()
            opt.step()

        return step

    def on_device(x: Any, y: Any) -> tuple[Any, Any]:
        return torch.from_numpy(x).to(dev), torch.from_numpy(np.asarray(y)).to(dev)

    def build(spec: ModelSpec, batch: int) -> Trainee:
        model = build_model(spec, device=model_device, seed=0)
        ddp = DDP(model, device_ids=[local_rank] if gpu else None)
        xt, yt = on_device(*make_batch(spec, batch, seed=1 + rank))
        loss_of = loss_fn(spec)
        return Trainee(
            step=train_step(ddp, make_optimizer(ddp, optimizer), loss_of, xt, yt),
            params=count_params(model),
            # Diagnostic: the same step without DDP (no all-reduce) while all N workers compute, which shows how
            # much of a gap to the prediction is CPU sharing rather than communication.
            compute_only=train_step(model, make_optimizer(model, optimizer), loss_of, xt, yt),
        )

    def verify(spec: ModelSpec, check: VerifyJob) -> None:
        gb = int(check["global_batch"])
        x, y = make_batch(spec, gb, seed=123)
        lo, hi = rank * gb // world, (rank + 1) * gb // world
        model = build_model(spec, device=model_device, seed=0)
        ddp = DDP(model, device_ids=[local_rank] if gpu else None)
        train_step(ddp, make_optimizer(ddp, optimizer), loss_fn(spec), *on_device(x[lo:hi], np.asarray(y)[lo:hi]))()
        sync()
        if rank == 0:
            np.savez(check["weights_out"], *get_weights(model))

    return Engine(
        header={
            "backend": "torch",
            "framework_version": torch.__version__,
            "workers": world,
            "engine": f"torch.distributed {dist.get_backend()} + DistributedDataParallel",
            "threads": THREADS_NOTE if not gpu else "one GPU per worker process (NCCL)",
            "device": "gpu" if gpu else "cpu",
            "tf32": tf32,
            "nodes": max(1, world // max(1, local_world)),
            "workers_per_node": local_world,
        },
        build=build,
        verify=verify,
        allreduce=allreduce,
        sync=sync,
        settle=settle,
        # The slowest rank sets the pace: per step, the maximum over ranks.
        reduce=lambda times: max_over_ranks(times, dev),
        leader=leader,
    )


def _worker(job: Job, out_path: str) -> None:
    """One rank: runs the job; each node's first process (LOCAL_RANK 0) writes the result to ``out_path`` (the
    step times are reduced over all ranks, so every node's result holds them; under torchrun's c10d rendezvous
    global rank 0 may be on any node)."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    engine = _engine(job, rank, world, int(os.environ.get("LOCAL_RANK", "0")))
    result = run(job, engine, out_path)
    engine.settle()
    if engine.leader:
        write_result(out_path, result)
    dist.destroy_process_group()


def node_processes(job_path: str, out_path: str, node: Node, python: str) -> list[NodeProcess]:
    """What one node of a multi-node job starts: ``torchrun`` (``python -m torch.distributed.run``) with the
    c10d rendezvous at ``node.master`` (node 0 hosts its store), ``node.workers_per_node`` workers of this module.
    The same command a user types on each node of a cluster::

        torchrun --nnodes=2 --nproc-per-node=1 --node-rank=R --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \\
            --rdzv-id=xfbench --max-restarts=0 -m xfbench.backends.torch.distributed --job job.json --out r.json
    """
    conf = f"join_timeout={node.join_timeout_s:g},is_host={'true' if node.node_rank == 0 else 'false'}"
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={node.nnodes}",
        f"--nproc-per-node={node.workers_per_node}",
        f"--node-rank={node.node_rank}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={node.master}",
        f"--rdzv-id=xfbench-{node.master_port}",
        f"--rdzv-conf={conf}",
        "--max-restarts=0",
        "--monitor-interval=1",
        "-m",
        "xfbench.backends.torch.distributed",
        "--job",
        job_path,
        "--out",
        out_path,
    ]
    return [NodeProcess("worker", cmd, dict(THREAD_ENV))]


def main(argv: list[str] | None = None) -> int:
    """Worker (``RANK`` set) or local launcher (``--nprocs N``); see the module docstring."""
    p = job_parser("python -m xfbench.backends.torch.distributed")
    p.add_argument("--nprocs", type=int, default=None, help="launcher: start N local workers (no torchrun)")
    args = p.parse_args(argv)
    if "RANK" in os.environ:
        _worker(read_job(args.job), args.out)
        return 0
    if not args.nprocs:
        p.error("RANK is not set: start under torchrun, or give --nprocs N to launch N local workers")
    res = launch_local(args.nprocs, args.job, args.out)
    sys.stderr.write(res.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
