"""Data-parallel training steps with ``tf.distribute.MirroredStrategy`` (Keras 3 on TensorFlow).

Run in a fresh process (``python -m backends.tensorflow.distributed --workers N --job JOB.json --out R.json``):
the logical CPU devices and thread pools must be configured before TensorFlow initializes, which happens at
its first op, so this module configures them in :func:`main` before it imports the backend.

* CPU: the physical CPU is split into N logical devices (``tf.config.set_logical_device_configuration``) and
  the strategy mirrors the model over ``/cpu:0 .. /cpu:N-1``. Threads: intra-op 1 (each kernel runs on one
  thread) and inter-op N (N kernels at once: one per replica), ``OMP_NUM_THREADS=1``.
* GPU (``"device": "gpu"`` in the job): the strategy mirrors over the first N physical GPUs (NCCL all-reduce).

The model is :func:`backends.tensorflow.build_model` called inside ``strategy.scope()``, so its variables are
``MirroredVariable``s; the step is a custom loop: per-replica forward/backward on its shard, the loss divided
by the number of replicas (a mean over the global batch), gradients summed across replicas by the Keras
optimizer's all-reduce, one update.

All-reduce microbenchmark: ``ReplicaContext.all_reduce(SUM)`` of a float32 tensor per replica inside
``strategy.run`` (the collective the optimizer uses for gradients), in a ``tf.function``. Each replica's
input is created on that replica's device (:func:`per_replica_values`; ``experimental_distribute_values_from_function``
calls its function with no device scope, so the values would otherwise all sit on the default device and each
call would first copy them to the replicas), and a timed call waits for the reduction by reading one element of
each replica's result on its own device (:func:`wait_first_elements`), not by copying whole tensors to the host.
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

THREADS_NOTE = "1 thread per replica (TF intra-op threads 1, inter-op threads = N replicas, OMP_NUM_THREADS=1)"


def configure(workers: int, device: str = "cpu") -> list[str]:
    """Splits the CPU into ``workers`` logical devices (or picks ``workers`` GPUs) and pins TF's threads.

    Must run before TensorFlow initializes its runtime. Returns the device names for ``MirroredStrategy``.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from xfbench.backends.tensorflow._tf import tf

    if device == "cpu":
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(workers)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * workers)
        return [f"/cpu:{i}" for i in range(workers)]
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < workers:
        raise RuntimeError(f"{workers} replicas need {workers} GPUs; TensorFlow sees {len(gpus)}")
    return [f"/gpu:{i}" for i in range(workers)]


def per_replica_values(strategy: Any, make: Any) -> Any:
    """``make(replica_id)`` for every replica, each created under that replica's device scope
    (``strategy.extended.worker_devices``), as one distributed value."""
    from xfbench.backends.tensorflow._tf import tf

    devices = strategy.extended.worker_devices

    def value_fn(ctx: Any) -> Any:
        i = ctx.replica_id_in_sync_group
        with tf.device(devices[i]):
            return make(i)

    return strategy.experimental_distribute_values_from_function(value_fn)


def wait_first_elements(strategy: Any, values: Any) -> list[float]:
    """Blocks until every replica's tensor in ``values`` is computed, by reading its first element: a one-element
    slice taken on the tensor's own device, then a 4-byte copy to the host (not the whole tensor)."""
    from xfbench.backends.tensorflow._tf import tf

    out = []
    for t in strategy.experimental_local_results(values):
        with tf.device(t.device):
            first = tf.reshape(t, [-1])[:1]
        out.append(float(first.numpy()[0]))
    return out


def _stats(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "iqr": q[2] - q[0], "min": min(times), "mean": statistics.fmean(times)}


def run_job(job: dict[str, Any], workers: int) -> dict[str, Any]:
    """Runs the job (same format as :mod:`backends.torch.distributed`) on ``workers`` replicas."""
    import numpy as np

    device = job.get("device", "cpu")
    devices = configure(workers, device)
    from xfbench.analytics.spec import spec_from_dict
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.tensorflow import build_model, count_params, get_weights
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.backends.tensorflow.device import apply_tf32_policy
    from xfbench.backends.tensorflow.model import loss_fn, make_optimizer

    tf32 = apply_tf32_policy() if device != "cpu" else ""
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    n = strategy.num_replicas_in_sync
    result: dict[str, Any] = {
        "backend": "tensorflow",
        "framework_version": tf.__version__,
        "workers": n,
        "engine": f"tf.distribute.MirroredStrategy ({type(strategy.extended._cross_device_ops).__name__})",
        "threads": THREADS_NOTE if device == "cpu" else "one GPU per replica",
        "device": device,
        "tf32": tf32,
        "allreduce": [],
        "steps": [],
    }

    def distribute(make: Any) -> Any:
        return per_replica_values(strategy, make)

    def _allreduce(v: Any) -> Any:
        return strategy.run(lambda t: tf.distribute.get_replica_context().all_reduce("sum", t), args=(v,))

    allreduce = tf.function(_allreduce)
    # One replica has nothing to reduce (the ring model gives 0; MirroredStrategy has no destinations).
    for nbytes in job.get("allreduce_sizes", []) if n > 1 else []:
        count = max(1, int(nbytes) // 4)
        values = distribute(lambda i, count=count: tf.ones([count], tf.float32))
        times = []
        for i in range(int(job.get("allreduce_repeats", 10)) + 2):
            t0 = time.perf_counter()
            out = allreduce(values)
            wait_first_elements(strategy, out)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        result["allreduce"].append({"bytes": count * 4, "times": times})

    def make_step(model: Any, spec: Any, opt: Any) -> Any:
        loss_of = loss_fn(spec)

        def replica_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_of(y, model(x, training=True)) / n
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function
        def step(x: Any, y: Any) -> Any:
            return strategy.reduce("sum", strategy.run(replica_step, args=(x, y)), axis=None)

        return step

    def shards(spec: Any, per_replica: int, seed: int, global_xy: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        arrays = []
        for r in range(n):
            if global_xy is None:
                arrays.append(make_batch(spec, per_replica, seed=seed + r))
            else:
                gx, gy = global_xy
                arrays.append(
                    (gx[r * per_replica : (r + 1) * per_replica], gy[r * per_replica : (r + 1) * per_replica])
                )
        x = distribute(lambda i: tf.constant(arrays[i][0]))
        y = distribute(lambda i: tf.constant(np.asarray(arrays[i][1])))
        return x, y

    optimizer = job.get("optimizer", "sgd")
    for entry in job["models"]:
        spec = spec_from_dict(entry["spec"])
        for batch in job["batches"]:
            with strategy.scope():
                model = build_model(spec, seed=0)
                opt = make_optimizer(optimizer)
                opt.build(model.trainable_variables)
            step = make_step(model, spec, opt)
            x, y = shards(spec, int(batch), seed=1)
            for _ in range(int(job.get("warmup", 2))):
                float(step(x, y))
            times = []
            for _ in range(int(job.get("steps", 5))):
                t0 = time.perf_counter()
                float(step(x, y))  # reading the loss waits for the step
                times.append(time.perf_counter() - t0)
            result["steps"].append(
                {
                    "model": entry["name"],
                    "batch_per_worker": int(batch),
                    "times": times,
                    "params": count_params(model),
                    **_stats(times),
                }
            )

    verify = job.get("verify")
    if verify:
        spec = next(spec_from_dict(e["spec"]) for e in job["models"] if e["name"] == verify["model"])
        gb = int(verify["global_batch"])
        gx, gy = make_batch(spec, gb, seed=123)
        with strategy.scope():
            model = build_model(spec, seed=0)
            opt = make_optimizer(optimizer)
            opt.build(model.trainable_variables)
        step = make_step(model, spec, opt)
        x, y = shards(spec, gb // n, seed=0, global_xy=(gx, np.asarray(gy)))
        float(step(x, y))
        np.savez(verify["weights_out"], *get_weights(model))
    return result


def main(argv: list[str] | None = None) -> int:
    """``--workers N --job JOB.json --out RESULT.json`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m backends.tensorflow.distributed")
    p.add_argument("--job", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, required=True, help="replicas (logical CPU devices or GPUs)")
    args = p.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    result = run_job(job, args.workers)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
