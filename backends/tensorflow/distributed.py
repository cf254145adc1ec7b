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

import os
import sys
from collections.abc import Callable
from typing import Any

from xfbench.backends.distributed_loop import Engine, Job, Result, Trainee, VerifyJob, replicas_main, run

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


def run_job(job: Job, workers: int) -> Result:
    """Runs the job (:class:`backends.distributed_loop.Job`) on ``workers`` replicas."""
    import numpy as np

    device = job["device"]
    devices = configure(workers, device)
    from xfbench.analytics.spec import ModelSpec
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.tensorflow import build_model, count_params, get_weights
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.backends.tensorflow.device import apply_tf32_policy
    from xfbench.backends.tensorflow.model import loss_fn, make_optimizer

    tf32 = apply_tf32_policy() if device != "cpu" else ""
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    n = strategy.num_replicas_in_sync

    def distribute(make: Any) -> Any:
        return per_replica_values(strategy, make)

    @tf.function
    def reduce_sum(v: Any) -> Any:
        return strategy.run(lambda t: tf.distribute.get_replica_context().all_reduce("sum", t), args=(v,))

    def allreduce(slot: int, nbytes: int) -> tuple[int, Callable[[], object]]:
        count = max(1, nbytes // 4)
        values = distribute(lambda i: tf.ones([count], tf.float32))
        return count * 4, lambda: wait_first_elements(strategy, reduce_sum(values))

    def make_step(spec: ModelSpec) -> tuple[Any, Any]:
        with strategy.scope():
            model = build_model(spec, seed=0)
            opt = make_optimizer(job["optimizer"])
            opt.build(model.trainable_variables)
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

        return model, step

    def shards(arrays: list[tuple[Any, Any]]) -> tuple[Any, Any]:
        x = distribute(lambda i: tf.constant(arrays[i][0]))
        y = distribute(lambda i: tf.constant(np.asarray(arrays[i][1])))
        return x, y

    def build(spec: ModelSpec, batch: int) -> Trainee:
        model, step = make_step(spec)
        x, y = shards([make_batch(spec, batch, seed=1 + r) for r in range(n)])
        return Trainee(step=lambda: float(step(x, y)), params=count_params(model))  # the loss read waits

    def verify(spec: ModelSpec, check: VerifyJob) -> None:
        gb = int(check["global_batch"])
        gx, gy = make_batch(spec, gb, seed=123)
        gy, per = np.asarray(gy), gb // n
        model, step = make_step(spec)
        float(step(*shards([(gx[r * per : (r + 1) * per], gy[r * per : (r + 1) * per]) for r in range(n)])))
        np.savez(check["weights_out"], *get_weights(model))

    engine = Engine(
        header={
            "backend": "tensorflow",
            "framework_version": tf.__version__,
            "workers": n,
            "engine": f"tf.distribute.MirroredStrategy ({type(strategy.extended._cross_device_ops).__name__})",
            "threads": THREADS_NOTE if device == "cpu" else "one GPU per replica",
            "device": device,
            "tf32": tf32,
        },
        build=build,
        verify=verify,
        # One replica has nothing to reduce (the ring model gives 0; MirroredStrategy has no destinations).
        allreduce=allreduce if n > 1 else None,
    )
    return run(job, engine)


def main(argv: list[str] | None = None) -> int:
    """``--workers N --job JOB.json --out RESULT.json`` (see the module docstring)."""
    return replicas_main(
        "python -m backends.tensorflow.distributed", run_job, "replicas (logical CPU devices or GPUs)", argv
    )


if __name__ == "__main__":
    sys.exit(main())
