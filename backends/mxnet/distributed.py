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

import os
import sys
from collections.abc import Callable
from typing import Any

from xfbench.backends.distributed_loop import Engine, Job, Result, Trainee, VerifyJob, replicas_main, run

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MXNET_CPU_WORKER_NTHREADS": "1",
    "MXNET_KVSTORE_REDUCTION_NTHREADS": "1",
}
THREADS_NOTE = (
    "1 thread per context (OMP_NUM_THREADS=1, MXNET_CPU_WORKER_NTHREADS=1, MXNET_KVSTORE_REDUCTION_NTHREADS=1)"
)


def run_job(job: Job, workers: int) -> Result:
    """Runs the job (:class:`backends.distributed_loop.Job`) on ``workers`` contexts."""
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    import numpy as np
    from xfbench.analytics.spec import ModelSpec
    from xfbench.analytics.vocab import optimizer as optimizer_named
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.mxnet import build_model, count_params, get_weights

    import mxnet as mx  # isort: skip - after backends.mxnet, which silences its import warnings
    from mxnet import autograd, gluon
    from xfbench.analytics.weights import output_kind
    from xfbench.backends.mxnet.device import _num_gpus, apply_tf32_policy
    from xfbench.backends.mxnet.model import _loss_fn

    device = job["device"]
    tf32 = ""
    if device != "cpu":
        if _num_gpus() < workers:
            raise RuntimeError(f"{workers} contexts need {workers} GPUs; MXNet sees {_num_gpus()}")
        tf32 = apply_tf32_policy()  # before the first GPU operation (backends.mxnet.device applied it at import)
    ctxs = [mx.cpu(i) if device == "cpu" else mx.gpu(i) for i in range(workers)]
    kv_type = "local" if device == "cpu" else "device"
    kv = mx.kv.create(kv_type)
    opt = optimizer_named(job["optimizer"])

    def allreduce(slot: int, nbytes: int) -> tuple[int, Callable[[], object]]:
        count = max(1, nbytes // 4)
        kv.init(slot, mx.nd.zeros((count,), ctx=ctxs[0]))
        grads = [mx.nd.ones((count,), ctx=c) for c in ctxs]
        outs = [mx.nd.zeros((count,), ctx=c) for c in ctxs]
        mx.nd.waitall()

        def push_pull() -> None:
            kv.push(slot, grads)
            kv.pull(slot, out=outs)

        return count * 4, push_pull

    def trainer_step(spec: ModelSpec, x: Any, y: Any) -> tuple[Any, Callable[[], None]]:
        """The model on every context and one data-parallel step on the global batch ``(x, y)``."""
        net = build_model(spec, seed=0)
        net.collect_params().reset_ctx(ctxs)
        if opt.name == "adam":
            params = {"learning_rate": opt.lr}
        else:
            params = {"learning_rate": opt.lr, "momentum": opt.momentum}
        trainer = gluon.Trainer(net.collect_params(), "adam" if opt.name == "adam" else "sgd", params, kvstore=kv_type)
        loss_of = _loss_fn(output_kind(spec))
        y = np.asarray(y)
        if output_kind(spec) == "regression":
            y = y.astype(np.float32)
        xs = gluon.utils.split_and_load(mx.nd.array(x, dtype=x.dtype), ctxs)
        ys = gluon.utils.split_and_load(mx.nd.array(y, dtype=y.dtype), ctxs)

        def step() -> None:
            with autograd.record(train_mode=True):
                losses = [loss_of(net(xi), yi) for xi, yi in zip(xs, ys)]
            autograd.backward(losses)
            trainer.step(workers)  # kvstore sums N per-context mean gradients; /N = mean over the global batch

        return net, step

    def build(spec: ModelSpec, batch: int) -> Trainee:
        net, step = trainer_step(spec, *make_batch(spec, batch * workers, seed=1))
        return Trainee(step=step, params=count_params(net))

    def verify(spec: ModelSpec, check: VerifyJob) -> None:
        net, step = trainer_step(spec, *make_batch(spec, int(check["global_batch"]), seed=123))
        step()
        mx.nd.waitall()
        net.collect_params().reset_ctx(ctxs[0])  # get_weights reads the (now identical) first copy
        np.savez(check["weights_out"], *get_weights(net))

    engine = Engine(
        header={
            "backend": "mxnet",
            "framework_version": mx.__version__,
            "workers": workers,
            "engine": f"gluon Trainer + kvstore '{kv_type}' over {workers} context(s)",
            "threads": THREADS_NOTE if device == "cpu" else "one GPU per context",
            "device": device,
            "tf32": tf32,
        },
        build=build,
        verify=verify,
        allreduce=allreduce if workers > 1 else None,
        sync=mx.nd.waitall,
    )
    return run(job, engine)


def main(argv: list[str] | None = None) -> int:
    """``--workers N --job JOB.json --out RESULT.json`` (see the module docstring)."""
    return replicas_main("python -m backends.mxnet.distributed", run_job, "contexts (CPU contexts or GPUs)", argv)


if __name__ == "__main__":
    sys.exit(main())
