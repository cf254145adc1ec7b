"""Two "nodes" on 127.0.0.1, started the way docs/scaling.md tells users to start them on a cluster: the same
``xfbench scale --nnodes 2 --node-rank R --master HOST:PORT`` command once per node, as separate processes.

Checks: node 0 writes the rows of N = 1 and N = 2 with ``nodes`` = 2 (node 1 writes none); a node that never
joins ends node 0's run within its join timeout with an error row naming node 1; a node killed mid-run ends node
0's run with an error row naming node 1, after the rows of the models measured before the kill. Every launch has a
wall-clock bound, so nothing hangs. The engines' own loopback tests are tests/test_multinode_<framework>.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_backend_or_skip
from xfbench.reports.paths import subprocess_env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _xfbench() -> list[str]:
    exe = shutil.which("xfbench", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "xfbench.benchmarks.cli"]


def _node(backend: str, rank: int, port: int, out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        *_xfbench(),
        "scale",
        "--backend",
        backend,
        "--nnodes",
        "2",
        "--node-rank",
        str(rank),
        "--master",
        f"127.0.0.1:{port}",
        "--report-dir",
        str(out / f"node{rank}"),
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_node(proc: subprocess.Popen[str]) -> None:
    """Kills a node as a crash would: its command and every process under it (launcher, workers), at once."""
    import psutil

    parent = psutil.Process(proc.pid)
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _rows(directory: Path) -> list[dict[str, str]]:
    files = sorted(directory.glob("*.csv"))
    assert len(files) == 1, files
    with files[0].open(newline="") as f:
        return list(csv.DictReader(f))


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_node(proc)
        out, err = proc.communicate()
        pytest.fail(f"a node did not finish within {timeout_s} s: {err[-1500:]}")
    return proc.returncode, out, err


BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    pytest.param("mxnet", marks=pytest.mark.mxnet),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_loopback_nodes_write_rows_of_both_placements(backend: str, tmp_path: Path) -> None:
    require_backend_or_skip(backend)
    port = _free_port()
    args = ("--model", "lenet", "--batch", "2", "--steps", "2", "--warmup", "1", "--join-timeout", "60")
    zero = _node(backend, 0, port, tmp_path, *args)
    one = _node(backend, 1, port, tmp_path, *args)
    rc1, out1, err1 = _finish(one, 240)
    rc0, out0, err0 = _finish(zero, 240)
    assert rc0 == 0, err0[-2000:]
    assert rc1 == 0 and "node 1 of 2: done" in out1, err1[-2000:]
    assert not (tmp_path / "node1").exists() or not list((tmp_path / "node1").glob("*.csv"))
    rows = [r for r in _rows(tmp_path / "node0") if r["kind"] == "scaling"]
    placed = sorted((r["workers"], r["nodes"], r["workers_per_node"], r["scaling_mode"]) for r in rows)
    assert placed == [
        ("1", "1", "1", "strong"),
        ("1", "1", "1", "weak"),
        ("2", "2", "1", "strong"),
        ("2", "2", "1", "weak"),
    ]
    assert all(r["status"] == "ok" and float(r["time_median_s"]) > 0 for r in rows)
    # Weak scaling at N = 2: two workers each on the N = 1 batch; strong: the global batch split in two.
    two = {r["scaling_mode"]: r for r in rows if r["workers"] == "2"}
    assert two["weak"]["batch_size"] == "2" and two["weak"]["shape"] == "4"
    assert two["strong"]["batch_size"] == "2" and two["strong"]["shape"] == "4"
    assert "2 = 2x1" in out0  # the summary shows the placement


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_node_that_never_joins_ends_the_run_with_a_row_naming_it(backend: str, tmp_path: Path) -> None:
    require_backend_or_skip(backend)
    join = 8
    start = time.monotonic()
    zero = _node(backend, 0, _free_port(), tmp_path, "--model", "lenet", "--join-timeout", str(join))
    rc, _out, err = _finish(zero, 120)
    elapsed = time.monotonic() - start
    assert rc == 1, err[-2000:]
    # The join timeout, plus the launcher's start and the one-worker baseline that node 0 still measures.
    assert elapsed < join + 60, elapsed
    rows = _rows(tmp_path / "node0")
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 1 and "node 1 did not join within 8 s" in errors[0]["message"], errors
    assert errors[0]["nodes"] == "2" and errors[0]["workers"] == "2"
    # The baseline N = 1 is still measured: a user keeps what this node could measure.
    assert {r["workers"] for r in rows if r["status"] == "ok" and r["kind"] == "scaling"} == {"1"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_node_killed_mid_run_ends_the_run_keeping_what_was_measured(backend: str, tmp_path: Path) -> None:
    require_backend_or_skip(backend)
    port = _free_port()
    # lenet first (measured, then kept), then cnn3 with many steps: node 1 is killed while cnn3 runs.
    args = ("--model", "lenet,cnn3", "--batch", "2", "--mode", "weak", "--steps", "150", "--join-timeout", "20")
    zero = _node(backend, 0, port, tmp_path, *args)
    one = _node(backend, 1, port, tmp_path, *args)
    assert zero.stderr is not None
    start = time.monotonic()
    seen = ""
    while "measured lenet" not in seen:
        line = zero.stderr.readline()
        if not line or time.monotonic() - start > 180:
            _kill_node(zero)
            _kill_node(one)
            pytest.fail(f"node 0 never reported lenet measured: {seen[-1500:]}")
        seen += line
    _kill_node(one)
    killed = time.monotonic()
    rc, _out, err = _finish(zero, 120)
    print(f"node 0 ended {time.monotonic() - killed:.1f} s after node 1 was killed; {err[-600:]}")
    one.communicate()
    assert rc == 1, err[-2000:]
    assert time.monotonic() - killed < 60 + 20  # the peer's death is noticed, then the N = 1 baseline runs
    rows = _rows(tmp_path / "node0")
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 1 and "node 1" in errors[0]["message"] and "lenet" in errors[0]["message"], errors
    kept = {(r["model"], r["workers"]) for r in rows if r["kind"] == "scaling" and r["status"] == "ok"}
    assert ("lenet", "2") in kept and ("cnn3", "2") not in kept, kept
