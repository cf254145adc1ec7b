"""Data-parallel training steps with ``tf.distribute.MirroredStrategy`` (one process) and
``tf.distribute.MultiWorkerMirroredStrategy`` (one process per node), Keras 3 on TensorFlow.

Run in a fresh process (``python -m backends.tensorflow.distributed --workers N --job JOB.json --out R.json``):
the logical CPU devices and thread pools must be configured before TensorFlow initializes, which happens at
its first op, so this module configures them in :func:`main` before it imports the backend.

Several nodes (``--multi-worker``, :func:`multi_worker_main`; started by :mod:`benchmarks.multinode` through
:func:`node_processes`): one worker per node joins the cluster in ``TF_CONFIG`` under ``MultiWorkerMirroredStrategy``
(CPU: ring all-reduce over gRPC; intra-op threads 1, inter-op 2, ``OMP_NUM_THREADS=1``), each worker on its own
shard of the global batch (per-worker batch x workers), and runs the same job as above; every worker writes its
node's result. Each timed step waits for the worker's loss, and the step times are per step the slowest worker's
(:meth:`Strategy.gather` over the workers). Faults end within the join timeout
(:func:`backends.distributed_loop.dist_timeout_s`): a worker whose peers never join exits (a ``faulthandler``
timer: TensorFlow waits for them holding the GIL, and catches SIGTERM); a dead peer fails the next collective
(gRPC "connection refused", or the coordination service's heartbeat timeout, set to the join timeout).

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

from xfbench.backends.distributed_loop import (
    Engine,
    Job,
    Node,
    NodeProcess,
    Result,
    Trainee,
    VerifyJob,
    dist_timeout_s,
    job_parser,
    mark_status,
    read_job,
    replicas_main,
    run,
    write_result,
)

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
    """``make(replica_id)`` for every local replica, each created under that replica's device scope
    (``strategy.extended.worker_devices``), as one distributed value; ``replica_id`` is the replica's id in the
    whole group (under ``MultiWorkerMirroredStrategy``, over all workers)."""
    from xfbench.backends.tensorflow._tf import tf

    devices = strategy.extended.worker_devices

    def value_fn(ctx: Any) -> Any:
        i = ctx.replica_id_in_sync_group  # global: under MultiWorkerMirroredStrategy, worker * local + local id
        with tf.device(devices[i % len(devices)]):
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


def _hooks(job: Job, strategy: Any, saves_weights: bool, multi_worker: bool = False) -> dict[str, Any]:
    """The :class:`backends.distributed_loop.Engine` hooks both strategies share: ``build``, ``verify`` and
    ``allreduce`` (``None`` with one replica). ``saves_weights``: whether this process writes the verify weights
    (the one process of a MirroredStrategy run; the first worker of a multi-worker run); ``multi_worker``: under
    ``MultiWorkerMirroredStrategy``."""
    import numpy as np
    from xfbench.analytics.spec import ModelSpec
    from xfbench.analytics.weights import make_batch
    from xfbench.backends.tensorflow import build_model, count_params, get_weights
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.backends.tensorflow.model import loss_fn, make_optimizer

    n = strategy.num_replicas_in_sync

    def distribute(make: Any) -> Any:
        return per_replica_values(strategy, make)

    def replica_sum(t: Any) -> Any:
        # Under MultiWorkerMirroredStrategy a tf.function's input has no device (a placeholder) and all_reduce needs
        # one: an identity places a copy on the replica's device (a memcpy, beside the network's all-reduce).
        return tf.distribute.get_replica_context().all_reduce("sum", tf.identity(t) if multi_worker else t)

    @tf.function
    def reduce_sum(v: Any) -> Any:
        return strategy.run(replica_sum, args=(v,))

    def allreduce(slot: int, nbytes: int) -> tuple[int, Callable[[], object]]:
        count = max(1, nbytes // 4)
        values = distribute(lambda i: tf.ones([count], tf.float32))
        return count * 4, lambda: wait_first_elements(strategy, reduce_sum(values))

    def make_step(spec: ModelSpec) -> tuple[Any, Any, Any]:
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
            # The sum of this process's replicas' losses: no collective besides the gradients' all-reduce (a
            # strategy.reduce would add one across the workers under MultiWorkerMirroredStrategy).
            return tf.add_n(list(strategy.experimental_local_results(strategy.run(replica_step, args=(x, y)))))

        def replica_compute(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_of(y, model(x, training=True)) / n
            grads = tape.gradient(loss, model.trainable_variables)
            # Every gradient feeds the result, so that none of the backward pass is pruned from the graph.
            return loss + 0.0 * tf.add_n([tf.reduce_sum(g) for g in grads])

        @tf.function
        def compute(x: Any, y: Any) -> Any:
            # The step without its all-reduce and update: forward and backward on every replica at once.
            return tf.add_n(list(strategy.experimental_local_results(strategy.run(replica_compute, args=(x, y)))))

        return model, step, compute

    def shards(make: Callable[[int], tuple[Any, Any]]) -> tuple[Any, Any]:
        """Replica ``r``'s ``(x, y) = make(r)`` (``r`` over all workers), each on its replica's device."""
        x = distribute(lambda r: tf.constant(make(r)[0]))
        y = distribute(lambda r: tf.constant(np.asarray(make(r)[1])))
        return x, y

    def build(spec: ModelSpec, batch: int) -> Trainee:
        model, step, compute = make_step(spec)
        x, y = shards(lambda r: make_batch(spec, batch, seed=1 + r))
        return Trainee(
            step=lambda: float(step(x, y)),  # the loss read waits
            params=count_params(model),
            # Under MultiWorkerMirroredStrategy the workers' compute-only steps would drift apart between the
            # collective steps; the diagnostic is the one-process engine's.
            compute_only=None if multi_worker else (lambda: float(compute(x, y))),
        )

    def verify(spec: ModelSpec, check: VerifyJob) -> None:
        gb = int(check["global_batch"])
        gx, gy = make_batch(spec, gb, seed=123)
        gy, per = np.asarray(gy), gb // n
        model, step, _ = make_step(spec)
        float(step(*shards(lambda r: (gx[r * per : (r + 1) * per], gy[r * per : (r + 1) * per]))))
        if saves_weights:
            np.savez(check["weights_out"], *get_weights(model))

    return {
        "build": build,
        "verify": verify,
        # One replica has nothing to reduce (the ring model gives 0; MirroredStrategy has no destinations).
        "allreduce": allreduce if n > 1 else None,
    }


def run_job(job: Job, workers: int) -> Result:
    """Runs the job (:class:`backends.distributed_loop.Job`) on ``workers`` replicas."""
    device = job["device"]
    devices = configure(workers, device)
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.backends.tensorflow.device import apply_tf32_policy

    tf32 = apply_tf32_policy() if device != "cpu" else ""
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    engine = Engine(
        header={
            "backend": "tensorflow",
            "framework_version": tf.__version__,
            "workers": strategy.num_replicas_in_sync,
            "engine": f"tf.distribute.MirroredStrategy ({type(strategy.extended._cross_device_ops).__name__})",
            "threads": THREADS_NOTE if device == "cpu" else "one GPU per replica",
            "device": device,
            "tf32": tf32,
        },
        **_hooks(job, strategy, saves_weights=True),
    )
    return run(job, engine)


# ------------------------------------------------------------------------------------------ multi-worker role

#: Inter-op threads of a multi-worker process (its one replica's kernels, and the collectives' work beside them).
MULTI_WORKER_INTER_OP = 2
MULTI_WORKER_THREADS_NOTE = (
    f"1 replica per worker process (TF intra-op threads 1, inter-op {MULTI_WORKER_INTER_OP}, OMP_NUM_THREADS=1)"
)
#: Seconds past :func:`backends.distributed_loop.dist_timeout_s` after which a worker that has not joined exits
#: (TensorFlow 2.21 waits in its context start-up past the coordination service's registration timeout).
JOIN_GRACE_S = 2.0


def tf_config(node: Node) -> dict[str, Any]:
    """The ``TF_CONFIG`` of ``node``'s one worker: every node's worker in rank order, this one ``node_rank``."""
    return {"cluster": {"worker": node.host_list()}, "task": {"type": "worker", "index": node.node_rank}}


class _JoinWatchdog:
    """Ends the process (exit 1) unless :meth:`joined` is called within ``timeout_s``: ``faulthandler``'s timer, a
    C thread, since a worker waiting for its peers waits inside TensorFlow holding the GIL (a Python thread or signal
    handler would never run) and TensorFlow catches SIGTERM. The stacks it dumps (always TensorFlow's context
    start-up) go to ``os.devnull``, so the log ends with the line saying why."""

    def __init__(self, timeout_s: float, workers: int) -> None:
        import faulthandler

        self._sink = open(os.devnull, "w")  # kept open for the timer; joined() closes it
        sys.stderr.write(f"xfbench: waiting up to {timeout_s:g} s for all {workers} workers to join, then exit 1\n")
        sys.stderr.flush()
        faulthandler.dump_traceback_later(timeout_s, exit=True, file=self._sink)

    def joined(self) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        self._sink.close()
        sys.stderr.write("xfbench: every worker joined\n")


def _configure_coordination(workers: int, timeout_s: float) -> None:
    """TensorFlow's coordination service, which ``MultiWorkerMirroredStrategy`` otherwise sets up with its defaults,
    with ``timeout_s`` as the heartbeat timeout (a dead worker is noticed within it: the other's next collective
    fails), to register every worker and at the shutdown barrier. TensorFlow 2.21 did not end a wait for a worker
    that never starts at the registration timeout (the join watchdog does). Best effort, through TensorFlow's
    private API: where that differs, TensorFlow's defaults stay (the watchdog and the collectives' timeout still
    bound the run)."""
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # type: ignore[import-untyped]
        from tensorflow.python.eager import context  # type: ignore[import-untyped]

        ms = int(timeout_s * 1000)
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader="/job:worker/replica:0/task:0",
            cluster_register_timeout_in_ms=ms,
            heartbeat_timeout_in_ms=ms,
            shutdown_barrier_timeout_in_ms=ms,
            coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=workers)],
        )
    except (ImportError, AttributeError, TypeError) as exc:  # pragma: no cover - other TensorFlow versions
        sys.stderr.write(f"xfbench: TensorFlow's coordination service keeps its defaults ({exc})\n")


def _multi_worker_engine(job: Job) -> Engine:
    """Joins the cluster of ``TF_CONFIG`` (``MultiWorkerMirroredStrategy``, one replica per worker) and returns this
    worker's hooks for :func:`backends.distributed_loop.run`; marks ``joined`` once every worker answered a first
    collective. A worker that is not joined within :func:`backends.distributed_loop.dist_timeout_s` exits."""
    import json

    timeout_s = dist_timeout_s()
    config = json.loads(os.environ["TF_CONFIG"])
    workers = len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", []))
    watchdog = _JoinWatchdog(timeout_s + JOIN_GRACE_S, workers)
    index = int(config["task"]["index"])
    device = job["device"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.backends.tensorflow.device import apply_tf32_policy

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(MULTI_WORKER_INTER_OP)
    impl = tf.distribute.experimental.CommunicationImplementation
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
        implementation = impl.RING
    else:  # one GPU per worker (NCCL): the first one this process sees
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise RuntimeError("a GPU worker needs a GPU; TensorFlow sees none")
        tf.config.set_visible_devices(gpus[:1], "GPU")
        implementation = impl.AUTO
    tf32 = apply_tf32_policy() if device != "cpu" else ""
    _configure_coordination(workers, timeout_s)
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation, timeout_seconds=timeout_s)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    n = strategy.num_replicas_in_sync
    ones = per_replica_values(strategy, lambda i: tf.ones([], tf.float32))

    def settle() -> None:
        """A barrier: a one-number all-reduce over the workers, waited for."""
        float(strategy.reduce("sum", ones, axis=None))

    settle()  # every worker answered: the cluster is formed
    watchdog.joined()
    mark_status("joined")

    def slowest(times: list[float]) -> list[float]:
        """Per step, the maximum over the workers (an all-gather; ``ReplicaContext.all_reduce`` has no max)."""
        mine = per_replica_values(strategy, lambda i: tf.constant([times], tf.float64))
        every = strategy.gather(mine, axis=0)  # (workers, steps) on every worker
        return [float(v) for v in tf.reduce_max(every, axis=0).numpy()]

    return Engine(
        header={
            "backend": "tensorflow",
            "framework_version": tf.__version__,
            "workers": n,
            "engine": f"tf.distribute.MultiWorkerMirroredStrategy (CollectiveAllReduce, {implementation.name})",
            "threads": MULTI_WORKER_THREADS_NOTE if device == "cpu" else "one GPU per worker process",
            "device": device,
            "tf32": tf32,
            "nodes": workers,
            "workers_per_node": 1,
        },
        **_hooks(job, strategy, saves_weights=index == 0, multi_worker=True),
        settle=settle,
        reduce=slowest,
        # One worker per node: each writes its node's status and result.
        leader=True,
    )


def multi_worker_main(job_path: str, out_path: str) -> int:
    """One worker of a multi-worker job (``TF_CONFIG`` set): runs the job; every worker writes its result (the step
    times are the slowest worker's on every one)."""
    job = read_job(job_path)
    engine = _multi_worker_engine(job)
    result = run(job, engine, out_path)
    engine.settle()  # no worker leaves while another still needs it
    write_result(out_path, result)
    return 0


def node_processes(job_path: str, out_path: str, node: Node, python: str) -> list[NodeProcess]:
    """What one node of a multi-node job starts: one worker of this module under ``MultiWorkerMirroredStrategy``,
    its cluster in ``TF_CONFIG`` (:func:`tf_config`; a ``TF_CONFIG`` already in the environment, set by a cluster
    manager, is left as it is). The same command a user runs on each node of a cluster::

        TF_CONFIG='{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": R}}' \\
            python -m xfbench.backends.tensorflow.distributed --multi-worker --job job.json --out result.json
    """
    import json

    env = {"OMP_NUM_THREADS": "1"}
    if "TF_CONFIG" not in os.environ:
        env["TF_CONFIG"] = json.dumps(tf_config(node))
    cmd = [python, "-m", "xfbench.backends.tensorflow.distributed", "--multi-worker"]
    return [NodeProcess("worker", [*cmd, "--job", job_path, "--out", out_path], env)]


def main(argv: list[str] | None = None) -> int:
    """``--workers N --job JOB.json --out RESULT.json`` (replicas in this process) or ``--multi-worker --job JOB.json
    --out RESULT.json`` (one worker of the cluster in ``TF_CONFIG``); see the module docstring."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--multi-worker" in args:
        args.remove("--multi-worker")
        if "TF_CONFIG" not in os.environ:
            sys.exit("--multi-worker needs TF_CONFIG (the cluster and this worker's index) in the environment")
        parsed = job_parser("python -m xfbench.backends.tensorflow.distributed --multi-worker").parse_args(args)
        return multi_worker_main(parsed.job, parsed.out)
    return replicas_main(
        "python -m backends.tensorflow.distributed", run_job, "replicas (logical CPU devices or GPUs)", args
    )


if __name__ == "__main__":
    sys.exit(main())
