"""Data-parallel training steps with MXNet 1.9 Gluon over several contexts and a ``kvstore``.

Run in a fresh process (``python -m backends.mxnet.distributed --workers N --job JOB.json --out R.json``):
``OMP_NUM_THREADS`` must be set before MXNet is imported, which :func:`main` does.

* CPU: N contexts ``mx.cpu(0) .. mx.cpu(N-1)``. They share the memory but MXNet's threaded engine keeps one
  worker pool per context, so the replicas' kernels run concurrently; each kernel runs on one OpenMP thread
  (``OMP_NUM_THREADS=1``, ``MXNET_CPU_WORKER_NTHREADS=1``) and the kvstore reduces on one thread
  (``MXNET_KVSTORE_REDUCTION_NTHREADS=1``). KVStore ``local``.
* GPU (``"device": "gpu"`` in the job): ``mx.gpu(0) .. mx.gpu(N-1)`` with KVStore ``device`` (reduction on GPU,
  peer-to-peer where available).

The model is :func:`backends.mxnet.build_model` with its parameters copied to all contexts
(``reset_ctx``); each step splits the batch with ``gluon.utils.split_and_load``, records forward/backward on
each context, and ``Trainer.step(N)`` sums the N per-context mean-loss gradients through the kvstore and
divides by N (a mean over the global batch).

All-reduce microbenchmark: ``kvstore.push`` of one float32 array per context (sum) + ``pull`` to every context,
the path the Trainer takes for gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MXNET_CPU_WORKER_NTHREADS": "1",
    "MXNET_KVSTORE_REDUCTION_NTHREADS": "1",
}
THREADS_NOTE = (
    "1 thread per context (OMP_NUM_THREADS=1, MXNET_CPU_WORKER_NTHREADS=1, MXNET_KVSTORE_REDUCTION_NTHREADS=1)"
)


def _stats(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "iqr": q[2] - q[0], "min": min(times), "mean": statistics.fmean(times)}


def run_job(job: dict[str, Any], workers: int) -> dict[str, Any]:
    """Runs the job (same format as :mod:`backends.torch.distributed`) on ``workers`` contexts."""
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    import numpy as np
    from xfbench.analytics.spec import spec_from_dict
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.mxnet import build_model, count_params, get_weights

    import mxnet as mx  # isort: skip - after backends.mxnet, which silences its import warnings
    from mxnet import autograd, gluon
    from xfbench.analytics.weights import output_kind
    from xfbench.backends.mxnet.device import _num_gpus, apply_tf32_policy
    from xfbench.backends.mxnet.model import _loss_fn

    device = job.get("device", "cpu")
    tf32 = ""
    if device != "cpu":
        if _num_gpus() < workers:
            raise RuntimeError(f"{workers} contexts need {workers} GPUs; MXNet sees {_num_gpus()}")
        tf32 = apply_tf32_policy()  # before the first GPU operation (backends.mxnet.device applied it at import)
    ctxs = [mx.cpu(i) if device == "cpu" else mx.gpu(i) for i in range(workers)]
    kv_type = "local" if device == "cpu" else "device"
    result: dict[str, Any] = {
        "backend": "mxnet",
        "framework_version": mx.__version__,
        "workers": workers,
        "engine": f"gluon Trainer + kvstore '{kv_type}' over {workers} context(s)",
        "threads": THREADS_NOTE if device == "cpu" else "one GPU per context",
        "device": device,
        "tf32": tf32,
        "allreduce": [],
        "steps": [],
    }

    kv = mx.kv.create(kv_type)
    for slot, nbytes in enumerate(job.get("allreduce_sizes", []) if workers > 1 else []):
        count = max(1, int(nbytes) // 4)
        kv.init(slot, mx.nd.zeros((count,), ctx=ctxs[0]))
        grads = [mx.nd.ones((count,), ctx=c) for c in ctxs]
        outs = [mx.nd.zeros((count,), ctx=c) for c in ctxs]
        mx.nd.waitall()
        times = []
        for i in range(int(job.get("allreduce_repeats", 10)) + 2):
            t0 = time.perf_counter()
            kv.push(slot, grads)
            kv.pull(slot, out=outs)
            mx.nd.waitall()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        result["allreduce"].append({"bytes": count * 4, "times": times})

    optimizer = job.get("optimizer", "sgd")

    def make(spec: Any) -> tuple[Any, Any, Any]:
        net = build_model(spec, seed=0)
        net.collect_params().reset_ctx(ctxs)
        if optimizer == "adam":
            trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.001}, kvstore=kv_type)
        else:
            momentum = 0.9 if optimizer == "momentum" else 0.0
            trainer = gluon.Trainer(
                net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": momentum}, kvstore=kv_type
            )
        return net, trainer, _loss_fn(output_kind(spec))

    def train_step(net: Any, trainer: Any, loss_of: Any, xs: list[Any], ys: list[Any]) -> None:
        with autograd.record(train_mode=True):
            losses = [loss_of(net(x), y) for x, y in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(workers)  # kvstore sums N per-context mean gradients; /N = mean over the global batch
        mx.nd.waitall()

    def load(spec: Any, x: Any, y: Any) -> tuple[list[Any], list[Any]]:
        y = np.asarray(y)
        if output_kind(spec) == "regression":
            y = y.astype(np.float32)
        return (
            gluon.utils.split_and_load(mx.nd.array(x, dtype=x.dtype), ctxs),
            gluon.utils.split_and_load(mx.nd.array(y, dtype=y.dtype), ctxs),
        )

    for entry in job["models"]:
        spec = spec_from_dict(entry["spec"])
        for batch in job["batches"]:
            net, trainer, loss_of = make(spec)
            x, y = make_batch(spec, int(batch) * workers, seed=1)
            xs, ys = load(spec, x, y)
            for _ in range(int(job.get("warmup", 2))):
                train_step(net, trainer, loss_of, xs, ys)
            times = []
            for _ in range(int(job.get("steps", 5))):
                t0 = time.perf_counter()
                train_step(net, trainer, loss_of, xs, ys)
                times.append(time.perf_counter() - t0)
            result["steps"].append(
                {
                    "model": entry["name"],
                    "batch_per_worker": int(batch),
                    "times": times,
                    "params": count_params(net),
                    **_stats(times),
                }
            )

    verify = job.get("verify")
    if verify:
        spec = next(spec_from_dict(e["spec"]) for e in job["models"] if e["name"] == verify["model"])
        x, y = make_batch(spec, int(verify["global_batch"]), seed=123)
        net, trainer, loss_of = make(spec)
        xs, ys = load(spec, x, y)
        train_step(net, trainer, loss_of, xs, ys)
        net.collect_params().reset_ctx(ctxs[0])  # get_weights reads the (now identical) first copy
        np.savez(verify["weights_out"], *get_weights(net))
    return result


def main(argv: list[str] | None = None) -> int:
    """``--workers N --job JOB.json --out RESULT.json`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m backends.mxnet.distributed")
    p.add_argument("--job", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, required=True, help="contexts (CPU contexts or GPUs)")
    args = p.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    result = run_job(job, args.workers)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
