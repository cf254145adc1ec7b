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

Several nodes (``--dist``, one worker process per ``DMLC_ROLE=worker``; :func:`node_processes` says what a node
starts for :mod:`benchmarks.multinode`): the ``dist_sync`` kvstore of ps-lite. Node 0 runs the scheduler
(``DMLC_ROLE=scheduler``: importing ``mxnet`` runs it, ``mxnet/kvstore/kvstore_server.py``), every node one
server (``DMLC_ROLE=server``, likewise) and its workers; they find each other through ``DMLC_PS_ROOT_URI`` /
``DMLC_PS_ROOT_PORT`` (the scheduler), ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER`` and ``DMLC_NODE_HOST`` (the
address this node's processes bind and announce). See :func:`_dist_engine` for what a worker does and how the
arithmetic of a synchronous step works out.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from xfbench.backends.distributed_loop import (
    TIMEOUT_ENV,
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

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MXNET_CPU_WORKER_NTHREADS": "1",
    "MXNET_KVSTORE_REDUCTION_NTHREADS": "1",
}
THREADS_NOTE = (
    "1 thread per context (OMP_NUM_THREADS=1, MXNET_CPU_WORKER_NTHREADS=1, MXNET_KVSTORE_REDUCTION_NTHREADS=1)"
)


def _gluon_optimizer(opt: Any) -> tuple[str, dict[str, float]]:
    """``gluon.Trainer``'s optimizer name and parameters for the job's optimizer (both engines)."""
    if opt.name == "adam":
        return "adam", {"learning_rate": opt.lr}
    return "sgd", {"learning_rate": opt.lr, "momentum": opt.momentum}


def _labels(spec: Any, y: Any) -> Any:
    """The batch's labels as the loss takes them (float32 for a regression head)."""
    import numpy as np
    from xfbench.analytics.weights import output_kind

    y = np.asarray(y)
    return y.astype(np.float32) if output_kind(spec) == "regression" else y


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

    def trainer_step(spec: ModelSpec, x: Any, y: Any) -> tuple[Any, Callable[[], None], Callable[[], None]]:
        """The model on every context, one data-parallel step on the global batch ``(x, y)``, and the same step's
        forward and backward alone."""
        net = build_model(spec, seed=0)
        net.collect_params().reset_ctx(ctxs)
        trainer = gluon.Trainer(net.collect_params(), *_gluon_optimizer(opt), kvstore=kv_type)
        loss_of = _loss_fn(output_kind(spec))
        y = _labels(spec, y)
        xs = gluon.utils.split_and_load(mx.nd.array(x, dtype=x.dtype), ctxs)
        ys = gluon.utils.split_and_load(mx.nd.array(y, dtype=y.dtype), ctxs)

        def forward_backward() -> None:
            with autograd.record(train_mode=True):
                losses = [loss_of(net(xi), yi) for xi, yi in zip(xs, ys)]
            autograd.backward(losses)

        def step() -> None:
            forward_backward()
            trainer.step(workers)  # kvstore sums N per-context mean gradients; /N = mean over the global batch

        return net, step, forward_backward

    def build(spec: ModelSpec, batch: int) -> Trainee:
        net, step, forward_backward = trainer_step(spec, *make_batch(spec, batch * workers, seed=1))
        # compute_only: forward and backward on every context at once, without the kvstore's reduction and the
        # update (the SGD update of these models' parameters is a small part of their step).
        return Trainee(step=step, params=count_params(net), compute_only=forward_backward)

    def verify(spec: ModelSpec, check: VerifyJob) -> None:
        net, step, _ = trainer_step(spec, *make_batch(spec, int(check["global_batch"]), seed=123))
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


# --- several nodes: the dist_sync kvstore (ps-lite) ---------------------------------------------------------

#: ``1`` on the first worker process of each node (:func:`node_processes`): it writes the node's result, status
#: lines and verify weights.
LEADER_ENV = "XFBENCH_NODE_LEADER"
#: The job's node count and workers per node, for the result's header (:func:`node_processes` sets them).
NODES_ENV = "XFBENCH_NNODES"
PER_NODE_ENV = "XFBENCH_WORKERS_PER_NODE"
#: Exit status of a worker whose :class:`_Watchdog` gave up waiting for the other processes of the job.
WATCHDOG_EXIT = 3
DIST_THREADS_NOTE = (
    "1 thread per worker process (OMP_NUM_THREADS=1, MXNET_CPU_WORKER_NTHREADS=1, MXNET_KVSTORE_REDUCTION_NTHREADS=1)"
)


class _Watchdog:
    """Ends the worker (exit :data:`WATCHDOG_EXIT`, one line on stderr) when no kvstore operation has completed for
    ``timeout_s`` seconds (:func:`backends.distributed_loop.dist_timeout_s`).

    ps-lite has no timeout by default: a worker waits for ever to join (``mx.kv.create`` returns once the
    scheduler has heard from every worker and server), and a push, pull or barrier waits for ever for a peer that
    died (measured with MXNet 1.9.1: still waiting 25 s after the kill, with ``PS_HEARTBEAT_INTERVAL=1`` and
    ``PS_HEARTBEAT_TIMEOUT=3``, whose heartbeats only serve the recovery of a restarted node). ``PS_RESEND=1``
    (acknowledges every message and re-sends unacknowledged ones) aborts the process after 10 re-sends, about
    10 x ``PS_RESEND_TIMEOUT`` ms (measured: SIGABRT 5 s after the kill at 500 ms), but only once joined and at the
    price of an ACK for every message of the timed steps; it is left to the environment. So this thread bounds
    joining and each collective, as the torch engine's process-group timeout does; it never touches the kvstore."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.what = "starting"
        self.last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="xfbench-watchdog", daemon=True).start()

    def beat(self, what: str | None = None) -> None:
        """Something completed (and, with ``what``, what the worker waits for next)."""
        self.last = time.monotonic()
        if what is not None:
            self.what = what

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(0.25):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                sys.stderr.write(
                    f"xfbench mxnet dist_sync worker: timed out, no kvstore progress for {idle:.0f} s "
                    f"(limit {self.timeout_s:g} s, {TIMEOUT_ENV}) while {self.what}: "
                    "a node died or never joined; exiting\n"
                )
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT)


def _key_range_class(kvstore_class: type) -> type:
    """A view of a kvstore under the keys ``offset + key`` (MXNet's ``KVStore`` subclassed, sharing the handle).

    Every ``gluon.Trainer`` keys its parameters ``0 .. P-1``; a native kvstore initializes a key once, and the one
    ``dist_sync`` kvstore of a process (ps-lite's postoffice is a process-wide singleton) serves every model of the
    job, so each Trainer gets a view on keys of its own. Every call goes straight to the C API of the one store."""

    class KeyRange(kvstore_class):  # type: ignore[misc, valid-type]
        def __init__(self, kv: Any, offset: int) -> None:  # no super().__init__: ``kv`` owns (and frees) the handle
            self.handle = kv.handle
            self._inner = kv
            self._offset = offset
            self._updater = None
            self._updater_func = None
            self._str_updater_func = None
            self._is_p3 = False

        def __del__(self) -> None:
            pass

        def _k(self, key: Any) -> Any:
            if isinstance(key, (list, tuple)):
                return [self._k(k) for k in key]
            if isinstance(key, str):
                raise TypeError("a KeyRange view takes int keys (gluon.Trainer's)")
            return self._offset + int(key)

        def init(self, key: Any, value: Any) -> None:
            super().init(self._k(key), value)

        def push(self, key: Any, value: Any, priority: int = 0) -> None:
            super().push(self._k(key), value, priority)

        def pull(self, key: Any, out: Any = None, priority: int = 0, ignore_sparse: bool = True) -> None:
            super().pull(self._k(key), out, priority, ignore_sparse)

        def pushpull(self, key: Any, value: Any, out: Any = None, priority: int = 0) -> None:
            super().pushpull(self._k(key), value, out, priority)

        def broadcast(self, key: Any, value: Any, out: Any, priority: int = 0) -> None:
            super().broadcast(self._k(key), value, out, priority)

        def row_sparse_pull(self, key: Any, out: Any = None, priority: int = 0, row_ids: Any = None) -> None:
            super().row_sparse_pull(self._k(key), out, priority, row_ids)

        def set_optimizer(self, optimizer: Any) -> None:
            raise RuntimeError(
                "the servers only sum here (update_on_kvstore=False): an optimizer would update every key"
            )

    return KeyRange


def _dist_engine(job: Job, kv: Any, dog: _Watchdog, leader: bool) -> Engine:
    """This worker's hooks for :func:`backends.distributed_loop.run` on the joined ``dist_sync`` kvstore ``kv``."""
    import numpy as np
    from xfbench.analytics.spec import ModelSpec
    from xfbench.analytics.vocab import optimizer as optimizer_named
    from xfbench.analytics.weights import make_batch, output_kind
    from xfbench.backends.mxnet import build_model, count_params, get_weights

    import mxnet as mx  # isort: skip - after backends.mxnet, which silences its import warnings
    from mxnet import autograd, gluon
    from xfbench.backends.mxnet.model import _loss_fn

    if job["device"] != "cpu":
        raise ValueError(
            f"device {job['device']!r}: the dist_sync engine runs one CPU context per worker; allowed: cpu"
        )
    rank, world = int(kv.rank), int(kv.num_workers)
    servers = int(os.environ.get("DMLC_NUM_SERVER", "1"))
    nodes = int(os.environ.get(NODES_ENV) or servers)
    per_node = int(os.environ.get(PER_NODE_ENV) or max(1, world // max(1, nodes)))
    ctx = mx.cpu()
    opt = optimizer_named(job["optimizer"])
    key_range = _key_range_class(type(kv))
    next_key = [0]

    def take_keys(n: int) -> int:
        first = next_key[0]
        next_key[0] += n
        return first

    def sync() -> None:
        mx.nd.waitall()
        dog.beat()

    def settle() -> None:
        mx.nd.waitall()
        kv._barrier()  # ps-lite's barrier of every worker
        dog.beat()

    def allreduce(slot: int, nbytes: int) -> tuple[int, Callable[[], object]]:
        # The Trainer's path (push to the servers, which sum over the workers, then pull). Zeros: MXNet's CPU dist
        # kvstore pulls into the pushed array too, so any other value would grow by N at each round.
        count = max(1, nbytes // 4)
        key = take_keys(1)
        kv.init(key, mx.nd.zeros((count,), ctx=ctx))
        grad, out = mx.nd.zeros((count,), ctx=ctx), mx.nd.zeros((count,), ctx=ctx)
        mx.nd.waitall()

        def push_pull() -> None:
            kv.push(key, grad)
            kv.pull(key, out=out)

        return count * 4, push_pull

    time_keys: dict[int, int] = {}

    def max_over_workers(times: list[float]) -> list[float]:
        """Per step, the slowest worker's time: each worker pushes its times in its row of a (workers, steps)
        table, the servers sum the tables (an all-gather), every worker takes the column maxima."""
        n = len(times)
        if n not in time_keys:
            time_keys[n] = take_keys(1)
            kv.init(time_keys[n], mx.nd.zeros((world, n), ctx=ctx))
        table = np.zeros((world, n), dtype=np.float32)
        table[rank] = times
        out = mx.nd.zeros((world, n), ctx=ctx)
        kv.push(time_keys[n], mx.nd.array(table, ctx=ctx))
        kv.pull(time_keys[n], out=out)
        got = out.asnumpy()
        dog.beat()
        return [float(v) for v in got.max(axis=0)]

    def trainer_step(spec: ModelSpec, x: Any, y: Any, scale: float = 1.0) -> tuple[Any, Callable[[], None]]:
        """The model (seed 0 on every worker) and one synchronous data-parallel step on this worker's ``(x, y)``.

        The arithmetic: each worker's loss is the mean over its shard (times ``scale``); the Trainer pushes the
        gradients, the servers sum them over the N workers, every worker pulls the sum into its gradients and
        ``trainer.step(N)`` divides by N before its (local, identical) update. With equal shards and ``scale`` 1
        that is the mean over the global batch, as on one worker. ``update_on_kvstore=False``: with the default
        (the optimizer on the servers, pickled to them) every later push to any key would be an optimizer update,
        which rules out the sums of the all-reduce keys and of the step times."""
        net = build_model(spec, seed=0)
        net.collect_params().reset_ctx(ctx)
        view = key_range(kv, take_keys(len(list(net.collect_params().values()))))
        trainer = gluon.Trainer(net.collect_params(), *_gluon_optimizer(opt), kvstore=view, update_on_kvstore=False)
        # Gluon creates the keys lazily, in the first step(): there its broadcast of the initial weights (rank 0's
        # init, then a pull into the weights) is not ordered against the push of the gradients to the same key (other
        # arrays), and with update_on_kvstore=False the key's value turns from the weights into the gradient sum once
        # every worker pushed: a worker could pull that sum as its weights (seen here, 1 run in 5). So the keys are
        # made and the weights pulled now, before any worker pushes.
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()
        kv._barrier()
        loss_of = _loss_fn(output_kind(spec))
        y = _labels(spec, y)
        xs, ys = mx.nd.array(x, dtype=x.dtype, ctx=ctx), mx.nd.array(y, dtype=y.dtype, ctx=ctx)

        def step() -> None:
            with autograd.record(train_mode=True):
                loss = loss_of(net(xs), ys) * scale if scale != 1.0 else loss_of(net(xs), ys)
            loss.backward()
            trainer.step(world)  # the kvstore sums the N workers' gradients; /N = the mean over the global batch

        return net, step

    def build(spec: ModelSpec, batch: int) -> Trainee:
        net, step = trainer_step(spec, *make_batch(spec, batch, seed=1 + rank))  # this worker's shard
        return Trainee(step=step, params=count_params(net))

    def verify(spec: ModelSpec, check: VerifyJob) -> None:
        gb = int(check["global_batch"])
        if gb < world:
            raise ValueError(f"verify global_batch {gb}: at least one sample per worker ({world} workers)")
        x, y = make_batch(spec, gb, seed=123)
        lo, hi = rank * gb // world, (rank + 1) * gb // world
        # scale n_k*N/gb: sum_k (n_k*N/gb * mean_k) / N = sum over the global batch / gb, whatever the shard sizes.
        net, step = trainer_step(spec, x[lo:hi], np.asarray(y)[lo:hi], scale=(hi - lo) * world / gb)
        step()
        sync()
        if leader:  # every node's leader (identical weights); written whole, then renamed, as nodes may share a disk
            tmp = f"{check['weights_out']}.{rank}.tmp.npz"
            np.savez(tmp, *get_weights(net))
            os.replace(tmp, check["weights_out"])

    return Engine(
        header={
            "backend": "mxnet",
            "framework_version": mx.__version__,
            "workers": world,
            "engine": (
                f"gluon Trainer(update_on_kvstore=False) + kvstore '{kv.type}' (ps-lite: 1 scheduler, {servers} "
                f"server(s), {world} worker process(es); synchronous steps, each step's time the slowest worker's)"
            ),
            "threads": DIST_THREADS_NOTE,
            "device": "cpu",
            "tf32": "",
            "nodes": nodes,
            "workers_per_node": per_node,
        },
        build=build,
        verify=verify,
        allreduce=allreduce,
        sync=sync,
        settle=settle,
        reduce=max_over_workers,
        leader=leader,
    )


def _dist_worker(job: Job, out_path: str) -> None:
    """One ``DMLC_ROLE=worker`` process: joins the ``dist_sync`` kvstore, runs the job (:func:`_dist_engine`),
    the node's leader (:data:`LEADER_ENV`) writes the result; then the kvstore is freed, whose destructor is
    ps-lite's final barrier of every process of the job (the servers and the scheduler exit after it)."""
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    leader = os.environ.get(LEADER_ENV) == "1"
    dog = _Watchdog(dist_timeout_s())
    dog.beat(
        f"joining (the scheduler at {os.environ.get('DMLC_PS_ROOT_URI')}:{os.environ.get('DMLC_PS_ROOT_PORT')} waits "
        f"for {os.environ.get('DMLC_NUM_WORKER')} worker(s) and {os.environ.get('DMLC_NUM_SERVER')} server(s))"
    )
    import xfbench.backends.mxnet  # noqa: F401 - silences MXNet's import warnings

    import mxnet as mx  # isort: skip

    kv = mx.kv.create("dist_sync")
    kv._barrier()
    dog.beat("running the job (a push, pull or barrier waits for every worker)")
    mark_status("joined", leader)
    engine = _dist_engine(job, kv, dog, leader)
    result = run(job, engine, out_path)
    engine.settle()
    if leader:
        write_result(out_path, result)
    del engine, result
    gc.collect()  # the Trainers and their kvstore views
    dog.beat("leaving (ps-lite's final barrier of every worker, server and the scheduler)")
    del kv  # KVStoreDist's destructor: ps::Finalize, a barrier of the whole job
    gc.collect()
    dog.stop()


def _node_host(node: Node) -> str | None:
    """The address this node's processes bind and announce (``DMLC_NODE_HOST``): this node's host in
    ``node.hosts``; else 127.0.0.1 when the master is on the loopback (every node on this machine); else none
    (ps-lite takes the first interface that is up and not the loopback, or ``DMLC_INTERFACE``)."""
    if node.hosts:
        return node.hosts[node.node_rank].rpartition(":")[0] or None
    if node.master_host in ("localhost", "::1") or node.master_host.startswith("127."):
        return "127.0.0.1"
    return None


def node_processes(job_path: str, out_path: str, node: Node, python: str) -> list[NodeProcess]:
    """What one node of a multi-node job starts for the ``dist_sync`` kvstore: node 0 the scheduler, every node one
    server and ``node.workers_per_node`` workers (``--dist``); the first worker is the node's leader. The same
    processes a user starts on each node of a cluster (``DMLC_ROLE`` scheduler/server: ``python -c 'import
    mxnet'``). ``DMLC_NODE_HOST`` or ``DMLC_INTERFACE`` already in the environment win over :func:`_node_host`."""
    common = {
        **THREAD_ENV,
        "DMLC_PS_ROOT_URI": node.master_host,
        "DMLC_PS_ROOT_PORT": str(node.master_port),
        "DMLC_NUM_SERVER": str(node.nnodes),
        "DMLC_NUM_WORKER": str(node.world),
        NODES_ENV: str(node.nnodes),
        PER_NODE_ENV: str(node.workers_per_node),
    }
    host = _node_host(node)
    if host and not (os.environ.get("DMLC_NODE_HOST") or os.environ.get("DMLC_INTERFACE")):
        common["DMLC_NODE_HOST"] = host
    helper = [python, "-c", "import mxnet"]
    procs = []
    if node.node_rank == 0:
        procs.append(NodeProcess("scheduler", helper, {**common, "DMLC_ROLE": "scheduler"}))
    procs.append(NodeProcess("server", helper, {**common, "DMLC_ROLE": "server"}))
    worker = [python, "-m", "xfbench.backends.mxnet.distributed", "--dist", "--job", job_path, "--out", out_path]
    for i in range(node.workers_per_node):
        env = {**common, "DMLC_ROLE": "worker", LEADER_ENV: "1" if i == 0 else "0"}
        procs.append(NodeProcess("worker", worker, env))
    return procs


def main(argv: list[str] | None = None) -> int:
    """``--workers N --job JOB.json --out RESULT.json`` (one process, N contexts), or ``--dist --job JOB.json --out
    RESULT.json`` (one ``dist_sync`` worker; see the module docstring)."""
    args_in = sys.argv[1:] if argv is None else argv
    if "--dist" in args_in:
        p = job_parser("python -m xfbench.backends.mxnet.distributed --dist")
        p.add_argument("--dist", action="store_true", help="a worker of the dist_sync kvstore (DMLC_ROLE=worker)")
        args = p.parse_args(args_in)
        _dist_worker(read_job(args.job), args.out)
        return 0
    return replicas_main("python -m backends.mxnet.distributed", run_job, "contexts (CPU contexts or GPUs)", argv)


if __name__ == "__main__":
    sys.exit(main())
