"""TensorFlow's multi-node engine (``MultiWorkerMirroredStrategy``, its cluster in ``TF_CONFIG``) as two "nodes" on
127.0.0.1, each run by :func:`benchmarks.multinode.run_node_job` as on its own machine: the two workers take the same
step as one worker on the whole batch, and a node that never joins or dies mid-run ends the other's run within a
stated time with a :class:`benchmarks.multinode.NodeFailure` that names it and keeps what was measured.

Each test starts fresh TensorFlow processes (about 5 s each to import on a small machine); every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_backend_or_skip
from xfbench.backends.distributed_loop import Job, Node, Result
from xfbench.benchmarks.multinode import NodeFailure, run_node_job
from xfbench.benchmarks.scaling import ScalingPlan, _job, run_job
from xfbench.reports.paths import subprocess_env

pytestmark = pytest.mark.tensorflow

PLAN = ScalingPlan(
    models=("lenet",), workers=(1, 2), batch=2, steps=2, warmup=1, allreduce_sizes=(4096, 65536), min_time_s=0.0
)
#: Seconds a node's run may take in these tests (run_node_job's timeout_s); the faults must end well before.
JOB_TIMEOUT_S = 120.0
#: The workers' join and collective timeout in the fault tests.
FAULT_JOIN_S = 8.0
#: A fault must end node 0's run within this many seconds: TensorFlow's start (up to ~10 s on 2 busy cores), the
#: join timeout, the worker's own 5 s backstop past it, and slack.
FAULT_BOUND_S = 45.0


def _need() -> None:
    require_backend_or_skip("tensorflow")


def _free_master(host: str = "127.0.0.1") -> str:
    """``host:PORT`` with PORT+1 and PORT+2 free: the two workers' addresses (:meth:`Node.host_list`)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port + 2 > 65535:
            continue
        try:
            for p in (port + 1, port + 2):
                with socket.socket() as s:
                    s.bind((host, p))
        except OSError:
            continue
        return f"{host}:{port}"
    raise RuntimeError("no three consecutive free ports")


def _node(rank: int, master: str, join_timeout_s: float) -> Node:
    return Node(nnodes=2, node_rank=rank, master=master, join_timeout_s=join_timeout_s)


def _in_thread(job: Job, node: Node, timeout_s: float = JOB_TIMEOUT_S) -> tuple[threading.Thread, dict[str, Any]]:
    """Runs ``node``'s part of ``job`` in a thread; the dict gets ``result`` or ``error``, and ``elapsed``."""
    box: dict[str, Any] = {}

    def go() -> None:
        t0 = time.monotonic()
        try:
            box["result"] = run_node_job("tensorflow", job, node, timeout_s=timeout_s)
        except NodeFailure as exc:
            box["error"] = exc
        finally:
            box["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, box


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


def test_two_nodes_take_one_workers_step(tmp_path: Path) -> None:
    _need()
    master = _free_master()
    w2 = tmp_path / "w2.npz"
    job = _job(PLAN, 2, verify={"model": "lenet", "global_batch": 4, "weights_out": str(w2)})
    job["allreduce_repeats"] = 3
    runs = [_in_thread(job, _node(rank, master, 60.0)) for rank in (0, 1)]
    for thread, _ in runs:
        thread.join(JOB_TIMEOUT_S + 30)
        assert not thread.is_alive(), "run_node_job outlived its own timeout"
    results: list[Result] = []
    for rank, (_, box) in enumerate(runs):
        assert "result" in box, f"node {rank}: {box.get('error')}"
        results.append(box["result"])
    for res in results:
        assert res["backend"] == "tensorflow" and res["workers"] == 2 and res["nodes"] == 2
        assert res["workers_per_node"] == 1
        assert "MultiWorkerMirroredStrategy" in res["engine"] and "RING" in res["engine"]
        assert "intra-op threads 1" in res["threads"]
        assert [a["bytes"] for a in res["allreduce"]] == [4096, 65536]
        assert all(len(a["times"]) == 3 and min(a["times"]) > 0 for a in res["allreduce"])
        assert [(s["model"], s["batch_per_worker"]) for s in res["steps"]] == [("lenet", 2)]
        assert all(len(s["times"]) == 2 and min(s["times"]) > 0 and s["params"] > 0 for s in res["steps"]), res["steps"]
        assert len(res["overhead"]["times"]) == 2  # type: ignore[typeddict-item]  # the per-step overhead probe
    # Step times are the slowest worker's (a gather over the workers): the same on both nodes.
    assert results[0]["steps"][0]["times"] == results[1]["steps"][0]["times"]
    # Two workers on halves of a global batch take the same SGD step as one worker on the whole batch.
    w1 = tmp_path / "w1.npz"
    one = _job(PLAN, 1, verify={"model": "lenet", "global_batch": 4, "weights_out": str(w1)})
    one["batches"], one["steps"], one["warmup"], one["overhead_probe"] = (
        [2],
        1,
        0,
        False,
    )  # only its verify step matters here
    assert run_job("tensorflow", 1, one, timeout_s=JOB_TIMEOUT_S)["workers"] == 1
    a, b = _weights(w1), _weights(w2)
    assert len(a) == len(b) == 10
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_a_node_that_never_joins_ends_the_run(tmp_path: Path) -> None:
    _need()
    thread, box = _in_thread(_job(PLAN, 2), _node(0, _free_master(), FAULT_JOIN_S), timeout_s=JOB_TIMEOUT_S)
    thread.join(JOB_TIMEOUT_S + 30)
    assert not thread.is_alive()
    assert "error" in box, "node 0 ran without node 1"
    assert box["elapsed"] < FAULT_BOUND_S, (box["elapsed"], str(box["error"]))
    message = str(box["error"])
    # The worker gave up at the join timeout without joining: the runner names the node it waited for.
    assert f"node 1 did not join within {FAULT_JOIN_S:g} s" in message, message
    assert box["error"].partial is None


_NODE_1 = """
import json, sys
from xfbench.backends.distributed_loop import Node
from xfbench.benchmarks.multinode import run_node_job
job, master, join_s, timeout_s = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
run_node_job("tensorflow", job, Node(nnodes=2, node_rank=1, master=master, join_timeout_s=join_s), timeout_s=timeout_s)
"""


def test_a_node_that_dies_mid_run_ends_the_run_and_keeps_what_was_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need()
    master = _free_master()
    job = _job(PLAN, 2)
    # Many steps: node 1 is killed while node 0 is still in them (after the all-reduce microbenchmark).
    job["allreduce_sizes"], job["allreduce_repeats"], job["batches"] = [4096], 3, [2]
    job["steps"], job["warmup"], job["overhead_probe"] = 2000, 1, False
    # Node 0's run_node_job keeps its status file in a temporary folder: this test's, to watch it.
    node0_tmp = tmp_path / "node0"
    node0_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(node0_tmp))
    node1_tmp = tmp_path / "node1"
    node1_tmp.mkdir()
    env = subprocess_env({"TMPDIR": str(node1_tmp)})
    cmd = [sys.executable, "-c", _NODE_1, json.dumps(job), master, f"{FAULT_JOIN_S:g}", f"{JOB_TIMEOUT_S:g}"]
    node1 = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        thread, box = _in_thread(job, _node(0, master, FAULT_JOIN_S))
        deadline = time.monotonic() + 90
        status: list[str] = []
        while time.monotonic() < deadline and thread.is_alive() and "measured all-reduce" not in status:
            found = list(node0_tmp.glob("xfbench-node0-*/status.txt"))
            status = found[0].read_text().splitlines() if found else []
            time.sleep(0.05)
        assert "measured all-reduce" in status, f"node 0 never measured the all-reduce: {status} {box}"
        assert "joined" in status
        os.killpg(node1.pid, signal.SIGKILL)
        killed = time.monotonic()
        thread.join(JOB_TIMEOUT_S + 30)
        ended = time.monotonic() - killed
    finally:
        if node1.poll() is None:
            os.killpg(node1.pid, signal.SIGKILL)
        node1.wait(timeout=30)
        if node1.stderr is not None:
            node1.stderr.close()
    assert not thread.is_alive()
    assert "error" in box, "node 0 finished 2000 steps with node 1 dead"
    assert ended < FAULT_BOUND_S, (ended, str(box["error"]))
    message = str(box["error"])
    assert "node 1" in message and "after every node joined" in message, message
    assert "last measured: all-reduce" in message, message
    partial = box["error"].partial
    assert partial is not None and partial["workers"] == 2 and partial["nodes"] == 2
    assert [a["bytes"] for a in partial["allreduce"]] == [4096]
    assert all(t > 0 for t in partial["allreduce"][0]["times"])


def test_node_processes_give_the_cluster_in_tf_config_unless_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    _need()
    from xfbench.backends.tensorflow.distributed import node_processes

    monkeypatch.delenv("TF_CONFIG", raising=False)
    [proc] = node_processes("j.json", "o.json", Node(nnodes=2, node_rank=1, master="10.0.0.1:2000"), "py")
    module = ["py", "-m", "xfbench.backends.tensorflow.distributed", "--multi-worker"]
    assert proc.role == "worker" and proc.cmd == [*module, "--job", "j.json", "--out", "o.json"]
    assert json.loads(proc.env["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.1:2001", "10.0.0.1:2002"]},
        "task": {"type": "worker", "index": 1},
    }
    # A cluster manager that sets TF_CONFIG itself keeps it.
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}')
    assert "TF_CONFIG" not in node_processes("j", "o", Node(nnodes=1, node_rank=0, master="a:0"), "py")[0].env
