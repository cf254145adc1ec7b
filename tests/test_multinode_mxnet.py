"""MXNet's multi-node engine: the ``dist_sync`` kvstore (ps-lite's scheduler, one server per node, the workers) as two
"nodes" on 127.0.0.1, each run by :func:`benchmarks.multinode.run_node_job` as ``xfbench scale --node-rank R`` runs
it; and the two faults a node can have: it never joins, or it dies mid-run.

Bounds: a worker gives up after ``join_timeout_s`` without kvstore progress (ps-lite itself waits for ever; the
worker's watchdog, :class:`backends.mxnet.distributed._Watchdog`), so a failure ends within ``join_timeout_s`` plus
the start-up and the runner's poll; the runner's own ``timeout_s`` (40 s here) would end a hang it missed.
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
from xfbench.backends.distributed_loop import Node
from xfbench.benchmarks.multinode import NodeFailure, run_node_job
from xfbench.benchmarks.scaling import ScalingPlan, _job, run_job
from xfbench.reports.paths import subprocess_env

pytestmark = pytest.mark.mxnet

PLAN = ScalingPlan(
    models=("lenet",), workers=(1, 2), batch=2, steps=2, warmup=1, allreduce_sizes=(4096, 65536), min_time_s=0.0
)
#: The runner's limit for a node's whole job: what ends a hang the workers' watchdog would miss.
RUNNER_TIMEOUT_S = 40.0
#: Slack over ``join_timeout_s`` for a failing node: the worker's start (importing MXNet on a busy 2-core
#: machine), the watchdog's and the runner's polls, stopping the processes.
SLACK_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


def _job_with(workers: int, weights: Path | None = None, **changes: Any) -> dict:
    verify = {"model": "lenet", "global_batch": 4, "weights_out": str(weights)} if weights else None
    job = dict(_job(PLAN, workers, verify=verify))  # type: ignore[arg-type]
    job["allreduce_repeats"] = 3
    job.update(changes)
    return job


def _node(rank: int, port: int, join_timeout_s: float) -> Node:
    return Node(nnodes=2, node_rank=rank, master=f"127.0.0.1:{port}", join_timeout_s=join_timeout_s)


def test_two_nodes_dist_sync_equal_one_worker_on_the_whole_batch(tmp_path: Path) -> None:
    require_backend_or_skip("mxnet")
    one = run_job("mxnet", 1, _job_with(1, tmp_path / "w1.npz"), timeout_s=120)  # type: ignore[arg-type]
    job = _job_with(2, tmp_path / "w2.npz")
    port = _free_port()
    results: dict[int, Any] = {}

    def node(rank: int) -> None:
        try:
            results[rank] = run_node_job("mxnet", job, _node(rank, port, 20.0), timeout_s=RUNNER_TIMEOUT_S)  # type: ignore[arg-type]
        except NodeFailure as e:
            results[rank] = e

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUNNER_TIMEOUT_S + 20)
    elapsed = time.monotonic() - t0
    assert not any(isinstance(r, NodeFailure) for r in results.values()), results
    assert sorted(results) == [0, 1], f"a node thread did not end within {RUNNER_TIMEOUT_S + 20:g} s"
    for r in (0, 1):
        res = results[r]
        assert (res["workers"], res["nodes"], res["workers_per_node"]) == (2, 2, 1)
        assert "dist_sync" in res["engine"] and "ps-lite" in res["engine"] and res["backend"] == "mxnet"
        assert [s["batch_per_worker"] for s in res["steps"]] == [2]
        assert all(len(s["times"]) == 2 and min(s["times"]) > 0 and s["params"] > 0 for s in res["steps"])
        assert [a["bytes"] for a in res["allreduce"]] == [4096, 65536]
        assert all(len(a["times"]) == 3 and min(a["times"]) > 0 for a in res["allreduce"])
        assert len(res["overhead"]["times"]) == 2 and min(res["overhead"]["times"]) > 0  # the per-step probe
    # The step times are reduced over the workers (the slowest one per step): both nodes report the same.
    assert results[0]["steps"] == results[1]["steps"] and results[0]["overhead"] == results[1]["overhead"]
    assert results[0]["steps"][0]["params"] == next(s["params"] for s in one["steps"])
    # Two workers on halves of the global batch take the step one worker takes on the whole batch.
    w1, w2 = _weights(tmp_path / "w1.npz"), _weights(tmp_path / "w2.npz")
    assert len(w1) == len(w2) == 10
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert elapsed < RUNNER_TIMEOUT_S


def test_a_node_that_never_joins_ends_node_0_within_its_join_timeout(tmp_path: Path) -> None:
    require_backend_or_skip("mxnet")
    join_s = 5.0
    t0 = time.monotonic()
    with pytest.raises(NodeFailure) as err:
        run_node_job("mxnet", _job_with(2), _node(0, _free_port(), join_s), timeout_s=RUNNER_TIMEOUT_S)  # type: ignore[arg-type]
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert elapsed < join_s + SLACK_S, f"{elapsed:.1f} s: {message}"
    assert "node 1 did not join" in message, message
    # The worker's watchdog ended it (exit 3), not the runner's timeout.
    assert "exit 3" in message and "no kvstore progress" in message and "while joining" in message, message
    assert err.value.partial is None


def _status_files(root: Path) -> list[Path]:
    return list(root.glob("xfbench-node0-*/status.txt"))


def test_a_node_that_dies_mid_run_ends_node_0_within_its_join_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_backend_or_skip("mxnet")
    join_s = 10.0
    port = _free_port()
    # Long enough that node 1 dies mid-run: the all-reduces, the probe, then 2000 timed steps.
    job = _job_with(2, steps=2000, max_steps=2000)
    (tmp_path / "job.json").write_text(json.dumps(job))
    node1 = (
        "import json, sys\n"
        "from xfbench.backends.distributed_loop import Node\n"
        "from xfbench.benchmarks.multinode import run_node_job\n"
        "job = json.load(open(sys.argv[1]))\n"
        f"run_node_job('mxnet', job, Node(2, 1, '127.0.0.1:{port}', join_timeout_s={join_s}), timeout_s=60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", node1, str(tmp_path / "job.json")],
        env=subprocess_env({"OMP_NUM_THREADS": "1"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Node 0 runs here; its temporary directory (and status file) under tmp_path/n0, to see when it joined.
    (tmp_path / "n0").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "n0"))
    outcome: dict[str, Any] = {}

    def node0() -> None:
        try:
            outcome["result"] = run_node_job("mxnet", job, _node(0, port, join_s), timeout_s=RUNNER_TIMEOUT_S)  # type: ignore[arg-type]
        except NodeFailure as e:
            outcome["failure"] = e
        outcome["end"] = time.monotonic()

    thread = threading.Thread(target=node0)
    thread.start()
    killed_at = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and thread.is_alive():
            files = _status_files(tmp_path / "n0")
            if files and "joined" in files[0].read_text().splitlines():
                os.killpg(proc.pid, signal.SIGKILL)  # node 1: its runner, server and worker
                killed_at = time.monotonic()
                break
            time.sleep(0.1)
        thread.join(RUNNER_TIMEOUT_S + 20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert killed_at is not None, f"node 0 did not join within 30 s: {outcome}"
    assert not thread.is_alive(), "node 0's runner did not return"
    failure = outcome.get("failure")
    assert failure is not None, f"node 0 finished 2000 steps without node 1? {outcome}"
    ended = outcome["end"] - killed_at
    message = str(failure)
    assert ended < join_s + SLACK_S, f"{ended:.1f} s after the kill: {message}"
    assert "after every node joined" in message and "node 1 died or stopped answering" in message, message
    # The worker's watchdog ended it (exit 3), not the runner's timeout.
    assert "exit 3" in message and "no kvstore progress" in message, message
    # What was measured before (the all-reduces) came back.
    assert failure.partial is not None and [a["bytes"] for a in failure.partial["allreduce"]] == [4096, 65536]
