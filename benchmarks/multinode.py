"""Data-parallel scaling across nodes, on each framework's own multi-node engine.

Every node runs the same command with its own ``--node-rank`` (``xfbench scale --nnodes N --node-rank R
--master HOST:PORT``); this module starts what that node needs and watches it:

* torch: ``torchrun --nnodes N --nproc-per-node K --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` running the
  installed module ``xfbench.backends.torch.distributed`` (node 0 hosts the rendezvous store);
* TensorFlow: one worker per node under ``MultiWorkerMirroredStrategy``, its cluster given in ``TF_CONFIG``;
* MXNet: the ``dist_sync`` kvstore, its scheduler (node 0), one server per node and the workers, joined through
  the ``DMLC_*`` variables.

Each backend's ``backends/<fw>/distributed.py`` says which processes a node starts (``node_processes``, a list of
:class:`backends.distributed_loop.NodeProcess`); the job (:class:`backends.distributed_loop.Job`) is built here
from the scaling plan, never written by hand. Node 0 also times the one-worker baseline (N=1, on this node alone,
after the multi-node job) that every speedup and prediction needs, and writes the rows; the other nodes write
none (their measurements reach node 0 through the collectives: step times are the slowest worker's).

Faults end the run within stated times and keep what was measured: a worker waits ``join_timeout_s`` for the
other nodes (joining and each collective; :data:`backends.distributed_loop.TIMEOUT_ENV`), and the node's whole
job is stopped after ``timeout_s``. A node that never joins, or dies mid-run, gives an ``error`` row naming the
node(s) this one was waiting for and the last thing measured (the node-status file), after the rows of the
models the job measured before it failed (the worker's partial result).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from xfbench.backends.distributed_loop import (
    STATUS_ENV,
    TIMEOUT_ENV,
    Job,
    Node,
    NodeProcess,
    Result,
    partial_path,
)
from xfbench.reports.paths import subprocess_env

POLL_S = 0.2


@dataclass
class NodeFailure(Exception):
    """A node's part of a multi-node job failed; ``message`` says how (one line), ``partial`` is what it
    measured before (or ``None``)."""

    message: str
    partial: Result | None = None

    def __str__(self) -> str:
        return self.message


def node_processes(
    backend: str, job_path: str, out_path: str, node: Node, python: str | None = None
) -> list[NodeProcess]:
    """The processes ``backend`` starts on this node (its ``distributed`` module's ``node_processes``).

    The module is loaded from its file, not through ``xfbench.backends.<backend>``, whose ``__init__`` imports the
    framework: the runner may run where the framework is not installed (``--python BACKEND=PATH``) and must not
    import MXNet (which becomes a ps-lite server or scheduler when ``DMLC_ROLE`` is set)."""
    import importlib.util

    import xfbench.backends

    path = Path(xfbench.backends.__file__).parent / backend / "distributed.py"
    spec = importlib.util.spec_from_file_location(f"xfbench_{backend}_distributed_hooks", path)
    if spec is None or spec.loader is None:
        raise NodeFailure(f"{backend}: no multi-node engine at {path}")
    distributed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distributed)
    processes: list[NodeProcess] = distributed.node_processes(job_path, out_path, node, python or sys.executable)
    return processes


def _others(node: Node) -> str:
    others = [str(r) for r in range(node.nnodes) if r != node.node_rank]
    return ("node " if len(others) == 1 else "nodes ") + ",".join(others)


def _tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    keep = [ln.strip() for ln in text if ln.strip()][-lines:]
    return " | ".join(keep)[-800:]


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 3.0) -> None:
    """Stops each process and everything it started (torchrun's workers, ...): SIGTERM, then SIGKILL after
    ``grace_s``."""
    import psutil

    tree: list[psutil.Process] = []
    for p in procs:
        try:
            parent = psutil.Process(p.pid)
            tree += [*parent.children(recursive=True), parent]
        except psutil.NoSuchProcess:
            continue
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        p.wait()


def run_node_job(
    backend: str,
    job: Job,
    node: Node,
    python: str | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Runs this node's part of ``job`` on ``backend``'s multi-node engine; returns the result (the same on every
    node: step times are reduced over all workers). Raises :class:`NodeFailure` (one line, with what was measured)
    when a worker fails, the other nodes do not join within ``node.join_timeout_s``, or the job outlives
    ``timeout_s``; every process it started is stopped first."""
    with tempfile.TemporaryDirectory(prefix=f"xfbench-node{node.node_rank}-") as tmp:
        job_path, out_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        status = Path(tmp) / "status.txt"
        status.touch()
        Path(job_path).write_text(json.dumps(job))
        base = subprocess_env(
            {
                TIMEOUT_ENV: f"{node.join_timeout_s:g}",
                STATUS_ENV: str(status),
                "OMP_NUM_THREADS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        specs = node_processes(backend, job_path, out_path, node, python)
        procs: list[tuple[NodeProcess, subprocess.Popen[bytes], Path]] = []
        logs: list[IO[bytes]] = []
        try:
            for i, spec in enumerate(specs):
                log_path = Path(tmp) / f"{i}-{spec.role}.log"
                log = open(log_path, "wb")  # closed in the finally below
                logs.append(log)
                proc = subprocess.Popen(spec.cmd, env={**base, **spec.env}, stdout=log, stderr=subprocess.STDOUT)
                procs.append((spec, proc, log_path))
            if progress:
                progress(f"{backend} node {node.node_rank}/{node.nnodes}: {len(specs)} process(es) started")
            failure = _watch(backend, node, procs, status, timeout_s, progress)
        finally:
            _stop([p for _, p, _ in procs])
            for opened in logs:
                opened.close()
        if failure is None and os.path.exists(out_path):
            result: Result = json.loads(Path(out_path).read_text())
            return result
        partial = partial_path(out_path)
        measured: Result | None = json.loads(partial.read_text()) if partial.exists() else None
        raise NodeFailure(failure or f"{backend} node {node.node_rank}: the workers wrote no result", measured)


def _watch(
    backend: str,
    node: Node,
    procs: list[tuple[NodeProcess, subprocess.Popen[bytes], Path]],
    status: Path,
    timeout_s: float,
    progress: Callable[[str], None] | None = None,
) -> str | None:
    """Waits for the workers; ``None`` when all exited 0, else the failure's one-line message. Each new line of
    the node-status file (``joined``, ``measured ...``) goes to ``progress``."""
    started = time.monotonic()
    deadline = started + timeout_s
    workers = [(s, p, log) for s, p, log in procs if s.role == "worker"]
    where = f"{backend} node {node.node_rank} of {node.nnodes} (master {node.master})"
    seen = 0
    while True:
        done = [p.poll() for _, p, _ in workers]
        bad = [(s, p, log) for (s, p, log), rc in zip(workers, done) if rc not in (None, 0)]
        lines = status.read_text().splitlines()
        if progress:
            for line in lines[seen:]:
                progress(f"{backend} node {node.node_rank}/{node.nnodes}: {line}")
        seen = len(lines)
        joined = "joined" in lines
        last = next((ln for ln in reversed(lines) if ln.startswith("measured")), "")
        got = f"; last measured: {last[len('measured ') :]}" if last else "; nothing measured"
        if bad:
            _, p, log = bad[0]
            tail = _tail(log)
            waited = time.monotonic() - started
            if joined:
                cause = f"a worker failed after every node joined ({_others(node)} died or stopped answering?)"
            elif waited >= node.join_timeout_s:  # every engine's worker gives up at the join timeout
                cause = f"{_others(node)} did not join within {node.join_timeout_s:g} s"
            else:
                cause = f"a worker failed before every node joined (waiting for {_others(node)})"
            return f"{where}: {cause}: exit {p.returncode}{got}; {tail}"
        if all(rc == 0 for rc in done):
            return None
        if time.monotonic() > deadline:
            cause = (
                f"the job did not finish within {timeout_s:g} s after every node joined"
                if joined
                else f"{_others(node)} did not join within {timeout_s:g} s"
            )
            return f"{where}: {cause}{got}"
        helpers_dead = [s for s, p, _ in procs if s.role != "worker" and p.poll() not in (None, 0)]
        if helpers_dead:
            s, p, log = next((s, p, log) for s, p, log in procs if s is helpers_dead[0])
            return f"{where}: its {s.role} exited {p.returncode}{got}; {_tail(log)}"
        time.sleep(POLL_S)


__all__ = ["NodeFailure", "node_processes", "run_node_job"]
