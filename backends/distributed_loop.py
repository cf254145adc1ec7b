"""The data-parallel scaling job, once for the three frameworks: its JSON protocol and the loop that runs it.

Framework-free (importing it imports no framework). :mod:`benchmarks.scaling` writes a :class:`Job` as JSON and
runs ``python -m xfbench.backends.<backend>.distributed --job JOB.json --out RESULT.json`` (torch: ``--nprocs N``
processes; TensorFlow and MXNet: ``--workers N`` replicas in one process); the module writes a :class:`Result`.

What every framework does the same way is :func:`run`:

1. an all-reduce microbenchmark: per size, :data:`ALLREDUCE_WARMUP` untimed then ``allreduce_repeats`` timed
   reductions of a float32 array;
2. per model and per-worker batch: build, ``warmup`` untimed steps, then ``steps`` timed data-parallel training
   steps (and, where the framework offers it, the same step without the all-reduce while every worker computes);
3. ``verify`` (optional): one step on a fixed global batch, the weights saved for the equivalence test.

What differs is an :class:`Engine` of hooks each ``backends/<fw>/distributed.py`` supplies: how a model is built
and stepped (:class:`Trainee`), how one all-reduce runs, how a timed call waits for its device (``sync``), how the
workers line up before timing (``settle``), and how per-worker step times become one (``reduce``: torch, one
process per worker, takes the maximum over ranks, the slowest worker setting the pace).

The result carries RAW times (seconds); :mod:`benchmarks.scaling` turns them into the report's statistics
(:class:`benchmarks.harness.measurement.Measurement`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from xfbench.analytics.spec import ModelSpec, spec_from_dict

#: Untimed all-reduces before the timed ones (the first calls set up communicators and buffers).
ALLREDUCE_WARMUP = 2


# --- the protocol -------------------------------------------------------------------------------------------


class ModelEntry(TypedDict):
    """One model of a job: its name (the report's ``model``) and its spec (:meth:`ModelSpec.to_dict`)."""

    name: str
    spec: dict[str, Any]


class VerifyJob(TypedDict):
    """One training step of ``model`` on a fixed global batch of ``global_batch`` samples (seed 123), split over
    the workers; the weights after it are saved to ``weights_out`` (``.npz``, by the first worker)."""

    model: str
    global_batch: int
    weights_out: str


class _JobFields(TypedDict):
    models: list[ModelEntry]
    batches: list[int]
    steps: int
    warmup: int
    optimizer: str
    device: str
    allreduce_sizes: list[int]
    allreduce_repeats: int


class Job(_JobFields, total=False):
    """What one run of a distributed module does (the job JSON).

    ``models``; ``batches``: per-worker batch sizes, each timed for every model; ``steps`` timed and ``warmup``
    untimed training steps per (model, batch); ``optimizer`` (``sgd``, ``momentum``, ``adam``); ``device``
    (``cpu`` or ``gpu``: one GPU per worker); ``allreduce_sizes`` (bytes of float32 arrays) and
    ``allreduce_repeats`` (timed reductions per size); optional ``verify`` (:class:`VerifyJob`); optional
    ``min_time_s`` (time each configuration for at least this long: more steps than ``steps`` where one step is
    short, at most ``max_steps``) and ``overhead_probe`` (time the engine's per-step cost on
    :data:`OVERHEAD_PROBE_SPEC` first). A job file may leave out what :data:`JOB_DEFAULTS` gives
    (:func:`read_job`); ``models`` and ``batches`` it must give.
    """

    verify: VerifyJob
    min_time_s: float
    max_steps: int
    overhead_probe: bool


JOB_DEFAULTS: dict[str, Any] = {
    "steps": 5,
    "warmup": 2,
    "optimizer": "sgd",
    "device": "cpu",
    "allreduce_sizes": [],
    "allreduce_repeats": 10,
    "min_time_s": 0.0,
    "max_steps": 1000,
    "overhead_probe": False,
}


class AllreduceTimes(TypedDict):
    """``times``: seconds of each timed all-reduce of ``bytes`` bytes (float32) over all workers."""

    bytes: int
    times: list[float]


class _StepFields(TypedDict):
    model: str
    batch_per_worker: int
    times: list[float]
    params: int


class StepTimes(_StepFields, total=False):
    """``times``: seconds of each timed training step of ``model`` at ``batch_per_worker`` samples per worker
    (already reduced over the workers); ``params``: the model's parameters as the framework counts them;
    ``compute_only_times`` (torch): the same step without the all-reduce while every worker computes."""

    compute_only_times: list[float]


class _HeaderFields(TypedDict):
    backend: str
    framework_version: str
    workers: int
    engine: str
    threads: str
    device: str
    tf32: str


class Header(_HeaderFields, total=False):
    """Who ran a job and how: ``backend``, ``framework_version``, ``workers`` (the N that ran, over all nodes),
    ``engine`` and ``threads`` (for the rows' messages), ``device`` (``cpu``/``gpu``), ``tf32`` (``on``/``off``
    on GPUs, ``""`` on the CPU); a multi-node run adds ``nodes`` and ``workers_per_node``."""

    nodes: int
    workers_per_node: int


class Result(Header):
    """What a distributed module writes (the result JSON): the :class:`Header`, then ``allreduce`` and ``steps``
    (raw times)."""

    allreduce: list[AllreduceTimes]
    steps: list[StepTimes]


class ResultWithProbe(Result, total=False):
    """A result whose job asked for the overhead probe: ``overhead``, the probe's step times (and, where the
    engine has it, its compute-only times)."""

    overhead: StepTimes


def read_job(path: str | Path) -> Job:
    """The job in ``path`` with :data:`JOB_DEFAULTS` filled in. Raises ``ValueError`` without models or batches."""
    raw = json.loads(Path(path).read_text())
    missing = [key for key in ("models", "batches") if key not in raw]
    if missing:
        raise ValueError(f"job {path}: missing {', '.join(missing)}; a job needs models and batches")
    return cast(Job, {**JOB_DEFAULTS, **raw})


def write_result(path: str | Path, result: Result) -> None:
    Path(path).write_text(json.dumps(result))


# --- the loop -----------------------------------------------------------------------------------------------


def _nothing() -> None:
    return None


def _same(times: list[float]) -> list[float]:
    return times


@dataclass
class Trainee:
    """One model at one per-worker batch, built with its data on every worker: ``step()`` runs one data-parallel
    training step; ``compute_only()``, where given, the same step without the all-reduce (a diagnostic)."""

    step: Callable[[], object]
    params: int
    compute_only: Callable[[], object] | None = None


@dataclass
class Engine:
    """One framework's hooks for :func:`run`, and the result's :class:`Header`.

    ``build(spec, per_worker_batch)`` -> :class:`Trainee`; ``verify(spec, verify_job)`` does the verify step and
    saves the weights; ``allreduce(slot, nbytes)`` -> ``(bytes reduced, call)`` where ``call()`` runs one
    all-reduce (``None``: not measured, e.g. one replica with nothing to reduce); ``sync()`` runs after each timed
    call, inside the timing (a GPU's queue drained); ``settle()`` lines the workers up, untimed, before each
    timed all-reduce and before each run of timed steps; ``reduce(times)`` makes per-worker step times one list.
    """

    header: Header
    build: Callable[[ModelSpec, int], Trainee]
    verify: Callable[[ModelSpec, VerifyJob], None]
    allreduce: Callable[[int, int], tuple[int, Callable[[], object]]] | None = None
    sync: Callable[[], None] = _nothing
    settle: Callable[[], None] = _nothing
    reduce: Callable[[list[float]], list[float]] = _same
    #: Whether this process reports for its node (the node-status file and the partial result of
    #: :func:`report_progress`): one process per node (torch: LOCAL_RANK 0), every process of a one-process engine.
    leader: bool = True


#: Environment variable naming the file where a node's leader writes how far the job got (``joined`` once the
#: workers of all nodes formed their group, then ``measured <model> batch <b>``); the multi-node runner
#: (:mod:`benchmarks.multinode`) reads it to say whether a failure came before or after every node joined.
STATUS_ENV = "XFBENCH_NODE_STATUS"
#: Seconds a worker waits for the other nodes (joining, and each collective), set by the multi-node runner.
TIMEOUT_ENV = "XFBENCH_DIST_TIMEOUT_S"


def dist_timeout_s(default: float = 300.0) -> float:
    """The workers' join and collective timeout: :data:`TIMEOUT_ENV` when set (a positive number), else
    ``default``."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def mark_status(text: str, leader: bool = True) -> None:
    """Appends ``text`` as one line to the node-status file (:data:`STATUS_ENV`) when set and ``leader``."""
    path = os.environ.get(STATUS_ENV)
    if path and leader:
        with open(path, "a") as f:
            f.write(text + "\n")


def partial_path(out_path: str | Path) -> Path:
    """Where a worker keeps the result measured so far (written after each model and batch)."""
    return Path(str(out_path) + ".partial")


def time_calls(
    call: Callable[[], object],
    rounds: int,
    *,
    warmup: int = 0,
    sync: Callable[[], None] = _nothing,
    before: Callable[[], None] = _nothing,
    start: Callable[[], None] = _nothing,
) -> list[float]:
    """Seconds of ``rounds`` timed calls: ``warmup`` untimed ``before(); call(); sync()``, then ``start()`` once,
    then per round ``before()`` untimed and ``call(); sync()`` timed."""
    for _ in range(warmup):
        before()
        call()
        sync()
    start()
    times = []
    for _ in range(rounds):
        before()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


#: The overhead probe's model: one Dense layer of 18 parameters. Its data-parallel step is nearly all framework:
#: the per-step synchronization and launch cost of the engine and one all-reduce of 72 bytes (its latency).
OVERHEAD_PROBE_SPEC: dict[str, Any] = {
    "name": "dp-overhead-probe",
    "source": "xfbench: the per-step cost of a data-parallel engine (one Dense layer, 18 parameters)",
    "input_shape": [8],
    "layers": [{"type": "Dense", "units": 2, "use_bias": True, "name": "out"}],
}


def steps_for(job: Job, one_step_s: float) -> int:
    """Timed steps of one configuration: ``steps``, or more where ``min_time_s`` asks for it (enough steps to
    last that long at ``one_step_s`` seconds each), at most ``max_steps``."""
    steps = int(job["steps"])
    budget = float(job.get("min_time_s", 0.0) or 0.0)
    if budget > 0 and one_step_s > 0:
        steps = max(steps, math.ceil(budget / one_step_s))
    return min(steps, int(job.get("max_steps", 1000) or 1000))


def _measure(e: Engine, trainee: Trainee, job: Job, name: str, batch: int) -> StepTimes:
    """Times ``trainee``: ``warmup`` untimed steps, one timed step that sets the count (:func:`steps_for`, the
    slowest worker's time, so every worker runs the same count), then the timed steps; where the trainee has
    a ``compute_only`` step, each timed step is followed by one timed compute-only step (interleaved, so both
    see the same machine)."""
    for _ in range(int(job["warmup"])):
        trainee.step()
        e.sync()
        if trainee.compute_only is not None:
            trainee.compute_only()
            e.sync()
    e.settle()
    first = e.reduce(time_calls(trainee.step, 1, sync=e.sync))[0]
    steps = steps_for(job, first)
    e.settle()
    times: list[float] = []
    alone: list[float] = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainee.step()
        e.sync()
        times.append(time.perf_counter() - t0)
        if trainee.compute_only is not None:
            t0 = time.perf_counter()
            trainee.compute_only()
            e.sync()
            alone.append(time.perf_counter() - t0)
    out: StepTimes = {"model": name, "batch_per_worker": batch, "times": e.reduce(times), "params": trainee.params}
    if trainee.compute_only is not None:
        out["compute_only_times"] = e.reduce(alone)
    return out


def run(job: Job, engine: Engine, out_path: str | Path | None = None) -> Result:
    """Runs ``job`` through ``engine``'s hooks (steps 1-3 of the module docstring); returns the result.

    With ``out_path``, the leader keeps the result measured so far in :func:`partial_path` (after the
    all-reduce microbenchmark and after each model and batch) and notes each in the node-status file, so that
    a run that dies keeps what it measured."""
    e = engine
    result: ResultWithProbe = {**e.header, "allreduce": [], "steps": []}

    def progress(what: str) -> None:
        mark_status(what, e.leader)
        if out_path is not None and e.leader:
            write_result(partial_path(out_path), result)

    if e.allreduce is not None:
        for slot, nbytes in enumerate(job["allreduce_sizes"]):
            size, call = e.allreduce(slot, int(nbytes))
            times = time_calls(
                call, int(job["allreduce_repeats"]), warmup=ALLREDUCE_WARMUP, sync=e.sync, before=e.settle
            )
            result["allreduce"].append({"bytes": size, "times": times})
        progress("measured all-reduce")
    if job.get("overhead_probe") and e.allreduce is not None:
        name = OVERHEAD_PROBE_SPEC["name"]
        result["overhead"] = _measure(e, e.build(spec_from_dict(OVERHEAD_PROBE_SPEC), 1), job, name, 1)
        progress("measured the per-step overhead probe")
    for entry in job["models"]:
        spec = spec_from_dict(entry["spec"])
        for batch in job["batches"]:
            result["steps"].append(_measure(e, e.build(spec, int(batch)), job, entry["name"], int(batch)))
            progress(f"measured {entry['name']} batch {batch}")
    verify = job.get("verify")
    if verify:
        entries = {m["name"]: m for m in job["models"]}
        if verify["model"] not in entries:
            raise ValueError(f"verify model {verify['model']!r}; allowed: a model of the job ({', '.join(entries)})")
        e.verify(spec_from_dict(entries[verify["model"]]["spec"]), verify)
    return result


# --- the command line ----------------------------------------------------------------------------------------


def job_parser(prog: str) -> argparse.ArgumentParser:
    """``--job JOB.json --out RESULT.json``, the arguments every distributed module takes."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--job", required=True, help="job JSON (backends.distributed_loop.Job)")
    p.add_argument("--out", required=True, help="the result JSON is written here (backends.distributed_loop.Result)")
    return p


def replicas_main(
    prog: str, run_job: Callable[[Job, int], Result], workers_help: str, argv: list[str] | None = None
) -> int:
    """The command line of a one-process module (``--workers N --job JOB.json --out RESULT.json``)."""
    p = job_parser(prog)
    p.add_argument("--workers", type=int, required=True, help=workers_help)
    args = p.parse_args(argv)
    write_result(args.out, run_job(read_job(args.job), args.workers))
    return 0


# --- several nodes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """This machine's place in a multi-node job: ``nnodes`` nodes, this one ``node_rank`` (0 .. nnodes-1);
    ``master`` (``host:port``) is where the job's rendezvous lives (torch's c10d store, MXNet's scheduler, the
    first TensorFlow worker), reachable from every node; ``workers_per_node`` processes (or replicas) per node;
    ``hosts``: every node's ``host:port`` in rank order where an engine needs them all (TensorFlow's cluster
    spec; default: the master's host with ports ``port+1+rank``, which is right on one machine's loopback);
    ``join_timeout_s``: how long a worker waits for the others (joining, then each collective)."""

    nnodes: int
    node_rank: int
    master: str
    workers_per_node: int = 1
    hosts: tuple[str, ...] = ()
    join_timeout_s: float = 60.0

    @property
    def master_host(self) -> str:
        return self.master.rpartition(":")[0]

    @property
    def master_port(self) -> int:
        return int(self.master.rpartition(":")[2])

    @property
    def world(self) -> int:
        """Workers over all nodes."""
        return self.nnodes * self.workers_per_node

    def host_list(self) -> list[str]:
        """Every node's ``host:port`` in rank order (``hosts``, else the loopback default of the docstring)."""
        if self.hosts:
            return list(self.hosts)
        return [f"{self.master_host}:{self.master_port + 1 + r}" for r in range(self.nnodes)]


@dataclass(frozen=True)
class NodeProcess:
    """One process a node starts for a multi-node job: ``role`` ``worker`` (the runner waits for every worker
    and reads the result the node's leader writes) or a helper role (``server``, ``scheduler``: stopped once
    the workers are done); ``cmd`` the command, ``env`` variables added to the environment."""

    role: str
    cmd: list[str]
    env: dict[str, str]
