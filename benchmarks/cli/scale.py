"""``xfbench scale``: data-parallel scaling of a training step on N workers, beside the ring all-reduce model.

``xfbench scale [--backend torch,tensorflow,mxnet] [--model lenet,mlp,cnn3] [--workers 1,2] [--batch 8]
[--global-batch B] [--mode strong,weak] [--steps 5] [--python mxnet=/path/to/python] [--report-dir DIR]``

Writes ``kind=scaling`` and ``kind=allreduce`` rows into a new report CSV and ``<csv stem>-scaling.png``
(speedup vs N: measured, predicted, ideal) beside it.

Across nodes (:mod:`benchmarks.multinode`), the same command on every node with its own rank::

    xfbench scale --backend torch --nnodes 2 --node-rank R --master HOST0:29500 [--workers-per-node K]

node 0 writes the rows (N = 1 on node 0 alone, and N = nnodes x K over all nodes).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from xfbench.analytics.vocab import DEFAULT_OPTIMIZER, OPTIMIZERS
from xfbench.benchmarks.cli.argtypes import positive_int, positive_int_list
from xfbench.benchmarks.cli.usage import EXIT_NOTHING_MEASURED
from xfbench.benchmarks.harness.workload import parse_list


def _node_of(args: argparse.Namespace, usage_error: type[Exception]) -> Any:
    """The :class:`backends.distributed_loop.Node` of ``--nnodes/--node-rank/--master``, or ``None`` without
    ``--nnodes``; raises ``usage_error`` (one line) for a bad or incomplete set."""
    from xfbench.backends.distributed_loop import Node

    multi = {"--node-rank": args.node_rank, "--master": args.master, "--hosts": args.hosts}
    if args.nnodes is None:
        given = [k for k, v in multi.items() if v is not None]
        if given:
            raise usage_error(f"{given[0]} without --nnodes; allowed: with --nnodes N (a multi-node run)")
        return None
    if args.node_rank is None or args.master is None:
        raise usage_error("--nnodes needs --node-rank R and --master HOST:PORT (node 0's address)")
    if not 0 <= args.node_rank < args.nnodes:
        raise usage_error(f"--node-rank {args.node_rank}; allowed: 0..{args.nnodes - 1} (with --nnodes {args.nnodes})")
    _host_port(args.master, "--master", usage_error)
    hosts = tuple(args.hosts or ())
    if hosts and len(hosts) != args.nnodes:
        raise usage_error(f"--hosts names {len(hosts)} node(s); allowed: exactly --nnodes = {args.nnodes}")
    for h in hosts:
        _host_port(h, "--hosts", usage_error)
    return Node(
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        master=args.master,
        workers_per_node=args.workers_per_node,
        hosts=hosts,
        join_timeout_s=float(args.join_timeout),
    )


def _host_port(text: str, option: str, usage_error: type[Exception]) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise usage_error(f"{option} {text!r}; allowed: HOST:PORT with a port 1..65535, e.g. 10.0.0.1:29500")


def _check_resources(plan: Any, backends: list[str], node: Any = None) -> None:
    """Refuses, before any worker starts, what this machine cannot hold: on the CPU more workers than logical
    cores (each worker is one single-threaded process on its own core), and a step whose memory ledger, times
    the workers that each hold it, exceeds this machine's RAM. Across nodes, the workers of this node."""
    from xfbench.analytics.scaling import per_worker_batch
    from xfbench.benchmarks.cli.usage import UsageError, require_feasible

    cores = os.cpu_count() or 1
    if node is not None and plan.device == "cpu" and node.workers_per_node > cores:
        raise UsageError(
            f"--workers-per-node {node.workers_per_node}: this machine has {cores} logical cores and each CPU "
            f"worker is a single-threaded process on its own core; allowed: 1..{cores}"
        )
    if node is None and plan.device == "cpu" and max(plan.workers) > cores:
        raise UsageError(
            f"--workers {max(plan.workers)}: this machine has {cores} logical cores and each CPU worker is a "
            f"single-threaded process on its own core; allowed: 1..{cores}"
        )
    for name in plan.models:
        spec = plan.spec(name)
        for n in plan.workers:
            batches = set()
            if "weak" in plan.modes:
                batches.add(plan.batch)
            if "strong" in plan.modes:
                batches.add(per_worker_batch(plan.strong_batch, n, "strong"))
            for batch in batches:
                for backend in backends:
                    require_feasible(
                        spec,
                        batch,
                        "training",
                        optimizer=plan.optimizer,
                        framework=backend,
                        device=plan.device,
                        copies=n,
                        what=f"--model {name} training at per-worker batch {batch} on {n} workers",
                    )


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds ``scale`` to the ``xfbench`` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
    p = sub.add_parser("scale", help="data-parallel scaling (strong/weak) on N workers vs the ring all-reduce model")
    p.add_argument("--backend", type=parse_list, help="comma-separated: torch,tensorflow,mxnet (default: all)")
    p.add_argument(
        "--model", type=parse_list, help="comma-separated catalog names or spec files (default: lenet,mlp,cnn3)"
    )
    p.add_argument(
        "--workers", type=positive_int_list, help="comma-separated worker counts including 1 (default: 1,2,.. cores)"
    )
    p.add_argument("--batch", type=positive_int, default=8, help="per-worker batch of weak scaling (default 8)")
    p.add_argument("--global-batch", type=positive_int, help="global batch of strong scaling (default batch * max N)")
    p.add_argument("--mode", type=parse_list, default=("strong", "weak"), help="strong, weak or both (default both)")
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZER)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: NCCL / one GPU per worker")
    p.add_argument("--full-input", action="store_true", help="catalog input sizes (default: cnn3 at 3x64x96)")
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="BACKEND=PATH",
        help="interpreter for a backend's workers (repeatable), e.g. mxnet=/venvs/mx/bin/python",
    )
    p.add_argument("--report-dir", default=None, help="default: reports/runs")
    g = p.add_argument_group(
        "across nodes",
        "run the same command on every node, each with its own --node-rank; node 0 writes the rows "
        "(docs/scaling.md: torchrun c10d, TensorFlow MultiWorkerMirroredStrategy, MXNet dist_sync)",
    )
    g.add_argument("--nnodes", type=positive_int, help="machines in the job (with --node-rank and --master)")
    g.add_argument("--node-rank", type=int, help="this machine's rank, 0 .. nnodes-1 (node 0 hosts the rendezvous)")
    g.add_argument("--master", help="HOST:PORT of node 0's rendezvous, reachable from every node")
    g.add_argument("--workers-per-node", type=positive_int, default=1, help="workers on each node (default 1)")
    g.add_argument("--hosts", type=parse_list, help="TensorFlow: every node's HOST:PORT in rank order (TF_CONFIG)")
    g.add_argument(
        "--join-timeout", type=positive_int, default=120, help="seconds to wait for the other nodes (default 120)"
    )
    g.add_argument(
        "--node-timeout", type=positive_int, default=600, help="seconds this node's job may run (default 600)"
    )

    from xfbench.benchmarks.cli.scale_simulate import add_simulate_arguments, run_simulate

    add_simulate_arguments(p)

    def run(args: argparse.Namespace) -> int:
        if args.simulate:
            return run_simulate(args)
        from xfbench.backends import BACKENDS, canonical_name, is_available
        from xfbench.benchmarks.cli.usage import (
            check_output_dir,
            check_tf32_env,
            load_model,
            one_line,
            require_backends,
        )
        from xfbench.benchmarks.scaling import (
            DEFAULT_MODELS,
            ScalingPlan,
            default_workers,
            format_summary,
            plot_path,
            plot_scaling,
            run_scaling,
        )
        from xfbench.reports.writer import ReportError, RunWriter

        check_tf32_env()
        node = _node_of(args, usage_error)

        try:
            backends = [canonical_name(b) for b in args.backend] if args.backend else list(BACKENDS)
            pythons = {}
            for item in args.python:
                name, sep, path = item.partition("=")
                if not sep or not path:
                    raise ValueError(f"--python {item!r}; allowed: BACKEND=PATH")
                if not os.path.exists(path):
                    raise ValueError(f"--python {item!r}: {path} does not exist; allowed: BACKEND=PATH of a python")
                if not os.path.isfile(path) or not os.access(path, os.X_OK):
                    raise ValueError(f"--python {item!r}: {path} is not an executable file; allowed: a python")
                pythons[canonical_name(name)] = path
        except ValueError as exc:
            raise usage_error(str(exc)) from None
        for name in args.model or ():
            load_model(name, option="--model")  # a missing, binary or malformed spec file: one line
        if node is not None and len(backends) != 1:
            raise usage_error(f"--nnodes: one --backend per multi-node job, got {','.join(backends)}")
        if node is not None and args.workers:
            raise usage_error("--workers with --nnodes; allowed: --workers-per-node (workers = nnodes x that)")
        workers = (1, node.world) if node is not None else None
        plan = ScalingPlan(
            models=tuple(args.model) if args.model else DEFAULT_MODELS,
            workers=workers or (tuple(sorted(set(args.workers))) if args.workers else default_workers(args.device)),
            batch=args.batch,
            global_batch=args.global_batch,
            modes=tuple(args.mode),
            steps=args.steps,
            warmup=max(0, args.warmup),
            optimizer=args.optimizer,
            device=args.device,
            full_input=args.full_input,
            python=pythons,
            timeout_s=float(args.node_timeout),
        )
        from xfbench.analytics.spec import SpecError
        from xfbench.benchmarks.scaling import check_plan

        try:
            check_plan(plan)
        except (ValueError, SpecError) as exc:
            raise usage_error(str(exc).splitlines()[0]) from None
        _check_resources(plan, backends, node)
        if args.report_dir is not None:
            check_output_dir(args.report_dir, "--report-dir")
        if args.backend:
            # Backends the user names must import (in their --python where given); the default set skips.
            require_backends(backends, python=pythons)
        progress = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if node is not None:
            from xfbench.benchmarks.scaling import run_multinode

            require_backends(backends, python=pythons)
            node_rows = run_multinode(backends[0], plan, node, progress)
            if node.node_rank != 0 and not node_rows:
                print(f"node {node.node_rank} of {node.nnodes}: done; node 0 writes the rows")
                return 0
        try:
            writer = RunWriter(args.report_dir)
        except ReportError as exc:
            raise usage_error(f"--report-dir: {one_line(exc)}") from None
        with writer:
            if node is not None:
                rows = node_rows
                for row in rows:
                    writer.write_row(row)
            else:
                rows = run_scaling(backends, plan, writer, is_available, progress=progress)
        print(format_summary(rows))
        png = plot_scaling(rows, plot_path(writer.path))
        print(f"report: {writer.path}" + (f"\nplot: {png}" if png else ""))
        if any(r["status"] == "error" for r in rows):
            return 1
        if not any(r["status"] == "ok" for r in rows):
            print(f"xfbench: measured nothing: every selected configuration was skipped (see {writer.path})")
            return EXIT_NOTHING_MEASURED
        return 0

    p.set_defaults(func=run)
