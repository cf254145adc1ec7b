"""Data-parallel scaling of a training step on N workers, measured beside the ring all-reduce model.

For each backend and each worker count N, one fresh run of the backend's distributed module
(``backends.<backend>.distributed``) does, on its own engine:

* an all-reduce microbenchmark (float32 arrays of a few sizes), and
* timed training steps of each model at each per-worker batch that N needs
  (strong scaling: global batch / N; weak scaling: the fixed per-worker batch).

PyTorch runs N processes joined by ``torch.distributed`` (gloo on CPU, NCCL on GPU) with DDP, started with
``torchrun``'s environment; TensorFlow mirrors the model over N logical CPU devices (or GPUs); MXNet uses N
contexts and a kvstore. Every CPU worker runs one compute thread, so N workers use N cores. The job each run gets
and the result it returns (raw times, seconds) are :class:`backends.distributed_loop.Job` and ``Result``; each row's
time statistics are one :class:`benchmarks.harness.measurement.Measurement` of those times.

Prediction (:mod:`analytics.scaling`): the per-worker compute time measured at N=1 at the per-worker batch,
plus one ring all-reduce of the gradients, with bandwidth and latency fitted to this run's microbenchmark.
Rows: ``kind="scaling"`` (one per backend, model, mode, N) and ``kind="allreduce"`` (one per N and size).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from xfbench.analytics.catalog import resolve_model
from xfbench.analytics.scaling import (
    SCALING_MODES,
    fit_allreduce,
    gradient_bytes,
    per_worker_batch,
    predict_dp_step,
    predict_step_time,
    prediction_basis,
    ring_allreduce_time,
    speedup,
)
from xfbench.analytics.spec import ModelSpec
from xfbench.backends.common import tf32_row_value
from xfbench.backends.distributed_loop import Job, Node, Result, StepTimes, VerifyJob
from xfbench.benchmarks.harness.measurement import Measurement
from xfbench.reports.paths import subprocess_env

DEFAULT_MODELS = ("lenet", "mlp", "cnn3")
# cnn3's catalog input (3x200x300) takes seconds per step on one thread; the quick sweep uses a smaller image.
QUICK_INPUT: dict[str, tuple[int, ...]] = {"cnn3": (3, 64, 96)}
DEFAULT_ALLREDUCE_SIZES = (4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20)


def gpu_count() -> int:
    """GPUs the workers can use: CUDA's count for this process (``CUDA_VISIBLE_DEVICES`` applied), from the
    driver or NVML, without importing a framework (:func:`backends.nvml.visible_gpu_count`); 0 without a GPU."""
    from xfbench.backends.nvml import visible_gpu_count

    return visible_gpu_count()


def default_workers(device: str = "cpu") -> tuple[int, ...]:
    """1, 2, 4, ... up to the cores on the CPU (one single-threaded worker per core); on GPUs (one GPU per
    worker) 1, 2, 4, ... up to the GPU count, which ends the list when it is not a power of 2 (3 GPUs: 1, 2, 3).
    Without a visible GPU: ``(1,)`` (and :func:`check_plan` refuses the plan)."""
    if device != "cpu":
        gpus = gpu_count()
        out, n = [], 1
        while n <= gpus:
            out.append(n)
            n *= 2
        if gpus > 0 and out[-1] != gpus:
            out.append(gpus)
        return tuple(out) or (1,)
    cores = os.cpu_count() or 1
    out, n = [], 1
    while n <= cores:
        out.append(n)
        n *= 2
    return tuple(out)


@dataclass(frozen=True)
class ScalingPlan:
    """What one scaling sweep runs. ``batch``: per-worker batch of weak scaling; ``global_batch``: the fixed
    global batch of strong scaling (default ``batch * max(workers)``, so both modes meet at the largest N)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    workers: tuple[int, ...] = (1, 2)
    batch: int = 8
    global_batch: int | None = None
    modes: tuple[str, ...] = SCALING_MODES
    steps: int = 5
    warmup: int = 2
    optimizer: str = "sgd"
    device: str = "cpu"
    full_input: bool = False
    allreduce_sizes: tuple[int, ...] = DEFAULT_ALLREDUCE_SIZES
    allreduce_repeats: int = 10
    #: Each configuration is timed for at least this long (more steps than ``steps`` where a step is short): five
    #: steps of a 1 ms model moved its efficiency by 20 points between runs (issue 23).
    min_time_s: float = 1.0
    max_steps: int = 1000
    #: Time the engine's per-step cost on an 18-parameter model first (the prediction's overhead term).
    overhead_probe: bool = True
    timeout_s: float = 600.0
    python: dict[str, str] = field(default_factory=dict)  # backend -> interpreter (default: this one)

    @property
    def strong_batch(self) -> int:
        return self.global_batch if self.global_batch is not None else self.batch * max(self.workers)

    def spec(self, name: str) -> ModelSpec:
        shape = None if self.full_input else QUICK_INPUT.get(name)
        return resolve_model(name, input_shape=shape)

    def batches_at(self, workers: int) -> list[int]:
        """Per-worker batches to time at N=``workers`` (N=1 also times every other N's strong per-worker batch,
        the compute term of their prediction)."""
        need: set[int] = set()
        if "weak" in self.modes:
            need.add(self.batch)
        if "strong" in self.modes:
            counts = self.workers if workers == 1 else (workers,)
            need.update(per_worker_batch(self.strong_batch, n, "strong") for n in counts)
        return sorted(need, reverse=True)


def check_plan(plan: ScalingPlan) -> None:
    """Raises ``ValueError`` (one line) for a plan that cannot run."""
    if not plan.workers or any(n < 1 for n in plan.workers):
        raise ValueError(f"workers {plan.workers}: allowed: positive integers")
    if 1 not in plan.workers:
        raise ValueError("workers must include 1: speedups and predictions are relative to one worker")
    if plan.device != "cpu":
        gpus = gpu_count()
        if max(plan.workers) > gpus:
            allowed = f"1..{gpus}" if gpus else "none (no GPU visible: use --device cpu)"
            raise ValueError(
                f"workers {max(plan.workers)} on {plan.device}: one GPU per worker, and this machine shows "
                f"{gpus} GPU(s); allowed: {allowed}"
            )
    for mode in plan.modes:
        if mode not in SCALING_MODES:
            raise ValueError(f"scaling mode {mode!r}; allowed: {', '.join(SCALING_MODES)}")
    if "strong" in plan.modes:
        for n in plan.workers:
            if plan.strong_batch % n:
                raise ValueError(f"global batch {plan.strong_batch} does not split evenly over {n} workers")
    for name in plan.models:
        plan.spec(name)


def _job(plan: ScalingPlan, workers: int, verify: VerifyJob | None = None) -> Job:
    """The job of N=``workers`` (:class:`backends.distributed_loop.Job`, the protocol of the distributed modules)."""
    job: Job = {
        "models": [{"name": m, "spec": plan.spec(m).to_dict()} for m in plan.models],
        "batches": plan.batches_at(workers),
        "steps": plan.steps,
        "warmup": plan.warmup,
        "optimizer": plan.optimizer,
        "device": plan.device,
        "allreduce_sizes": list(plan.allreduce_sizes),
        "allreduce_repeats": plan.allreduce_repeats,
        "min_time_s": plan.min_time_s,
        "max_steps": plan.max_steps,
        "overhead_probe": plan.overhead_probe,
    }
    if verify:
        job["verify"] = verify
    return job


def worker_command(backend: str, workers: int, job_path: str, out_path: str, python: str | None = None) -> list[str]:
    """The command that runs one job on ``workers`` workers of ``backend`` (a fresh process)."""
    py = python or sys.executable
    base = [py, "-m", f"xfbench.backends.{backend}.distributed", "--job", job_path, "--out", out_path]
    return base + (["--nprocs", str(workers)] if backend == "torch" else ["--workers", str(workers)])


def run_job(backend: str, workers: int, job: Job, python: str | None = None, timeout_s: float = 600.0) -> Result:
    """Runs ``job`` on ``workers`` workers in a fresh process; returns the result JSON (raw times).

    Raises ``RuntimeError`` with the stderr tail when the run fails.
    """
    with tempfile.TemporaryDirectory(prefix="xfbench-scale-") as tmp:
        job_path, out_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        Path(job_path).write_text(json.dumps(job))
        env = subprocess_env()
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["OMP_NUM_THREADS"] = "1"
        cmd = worker_command(backend, workers, job_path, out_path, python)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{backend} N={workers}: timed out after {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not os.path.exists(out_path):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            raise RuntimeError(f"{backend} N={workers}: exit {proc.returncode}: " + " | ".join(tail))
        result: Result = json.loads(Path(out_path).read_text())
        return result


def _load_note() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return ""


def _by_step(result: Result) -> dict[tuple[str, int], StepTimes]:
    return {(s["model"], s["batch_per_worker"]): s for s in result["steps"]}


def build_rows(backend: str, plan: ScalingPlan, results: dict[int, Result]) -> list[dict[str, Any]]:
    """Scaling and all-reduce rows from the per-N results (``{N: result JSON}``); every time statistic is a
    :class:`Measurement` of the result's raw times."""
    sizes, times, counts = [], [], []
    for n, res in results.items():
        for a in res.get("allreduce", []):
            if n > 1:
                sizes.append(a["bytes"])
                times.append(Measurement.of(a["times"]).median)
                counts.append(n)
    if sizes:
        bandwidth, latency = fit_allreduce(sizes, times, counts)
    else:
        bandwidth, latency = math.inf, 0.0
    basis = prediction_basis(bandwidth, latency)
    one = results[1]
    version = one.get("framework_version", "")
    common = {
        "backend": backend,
        "framework_version": version,
        "device": plan.device,
        "dtype": "float32",
        "tf32": one.get("tf32", tf32_row_value(plan.device)),
    }
    rows: list[dict[str, Any]] = []
    for n, res in sorted(results.items()):
        for a in res.get("allreduce", []) if n > 1 else []:
            m = Measurement.of(a["times"])
            med = m.median
            pred = ring_allreduce_time(a["bytes"], n, bandwidth, latency)
            rows.append(
                {
                    **common,
                    "kind": "allreduce",
                    "status": "ok",
                    "workers": n,
                    "nodes": res.get("nodes", 1),
                    "workers_per_node": res.get("workers_per_node", n),
                    "shape": a["bytes"],
                    "time_median_s": med,
                    "time_min_s": m.min,
                    "rounds": m.rounds,
                    "time_predicted_s": pred,
                    "time_rel_error": (pred - med) / med,
                    "prediction_basis": basis + " (fitted to all N of this run)",
                    "message": f"{res.get('engine', '')}; float32 all-reduce of {a['bytes']} bytes",
                }
            )
    t1 = _by_step(one)
    for n, res in sorted(results.items()):
        tn = _by_step(res)
        overhead = _overhead(res)
        if overhead is not None and n > 1:
            # The update and bookkeeping a one-worker step already pays are in the model's own N=1 term.
            overhead -= _overhead(one) or 0.0
        note = f"{res.get('threads', '')}; {res.get('engine', '')}"
        placement = {"nodes": res.get("nodes", 1), "workers_per_node": res.get("workers_per_node", n)}
        for model in plan.models:
            spec = plan.spec(model)
            nbytes = gradient_bytes(spec, backend)
            for mode in plan.modes:
                b = per_worker_batch(plan.strong_batch if mode == "strong" else plan.batch, n, mode)
                base_batch = plan.strong_batch if mode == "strong" else plan.batch
                if (model, b) not in tn:  # a partial result (the run failed before this model)
                    continue
                entry = tn[(model, b)]
                meas = Measurement.of(entry["times"])
                base = Measurement.of(t1[(model, base_batch)]["times"]).median
                compute = Measurement.of(t1[(model, b)]["times"]).median
                alone = Measurement.of(entry["compute_only_times"]).median if "compute_only_times" in entry else None
                update = _beyond_compute(t1.get((model, b))) if backend in UPDATE_AS_AT_ONE else 0.0
                if n > 1 and alone is not None and overhead is not None:
                    t_pred = predict_dp_step(alone + update, overhead, nbytes, n, bandwidth)
                    how = (
                        f"{basis.split(' lat=')[0]}; compute = this step without all-reduce while {n} workers "
                        f"compute {alone * 1e3:.3g} ms (probe) + its update on one worker {update * 1e3:.3g} ms "
                        f"(N=1 step minus its compute-only step); per-step overhead {overhead * 1e3:.3g} ms (probe: "
                        f"the 18-parameter model's data-parallel step minus its compute-only step); grads {nbytes} B"
                    )
                else:
                    t_pred = predict_step_time(compute / b, b, nbytes, n, bandwidth, latency)
                    how = f"{basis}; compute = N=1 step at batch {b}; grads {nbytes} B"
                sp = speedup(base, meas.median, n, mode)
                sp_pred = speedup(base, t_pred, n, mode)
                extra = ""
                if "compute_only_times" in entry:
                    extra = (
                        f"; same step without all-reduce while {n} worker(s) compute: "
                        f"{Measurement.of(entry['compute_only_times']).median * 1e3:.2f} ms "
                        f"(the prediction's N=1 compute: {compute * 1e3:.2f} ms)"
                    )
                rows.append(
                    {
                        **common,
                        "kind": "scaling",
                        "status": "ok",
                        "model": model,
                        "phase": "training",
                        "optimizer": plan.optimizer,
                        "batch_size": b,
                        "shape": b * n,
                        "workers": n,
                        **placement,
                        "scaling_mode": mode,
                        **meas.columns(),
                        "time_lo_s": meas.q1,
                        "time_hi_s": meas.q3,
                        "time_within_noise": "yes" if meas.q1 <= t_pred <= meas.q3 else "no",
                        "throughput_samples_per_s": b * n / meas.median,
                        "params_counted": entry.get("params"),
                        "time_predicted_s": t_pred,
                        "time_rel_error": (t_pred - meas.median) / meas.median,
                        "prediction_basis": how,
                        "speedup": sp,
                        "speedup_predicted": sp_pred,
                        "efficiency": sp / n,
                        "efficiency_predicted": sp_pred / n,
                        "message": f"{note}; batch_size = per-worker batch, shape = global batch; {_load_note()}"
                        + extra,
                    }
                )
    return rows


def run_backend(backend: str, plan: ScalingPlan, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measures every N for one backend; returns its rows.

    When the run of some N fails, the rows of the N already measured are kept (they need N=1, the basis of every
    speedup and prediction), followed by one ``error`` row for the failing N; larger N are not attempted (the
    row's message lists them)."""
    results: dict[int, Result] = {}
    counts = sorted(set(plan.workers))
    for i, n in enumerate(counts):
        if progress:
            progress(f"scale {backend} N={n} ...")
        try:
            results[n] = run_job(backend, n, _job(plan, n), plan.python.get(backend), plan.timeout_s)
        except RuntimeError as exc:
            rest = counts[i + 1 :]
            note = f"; not run after this failure: N={','.join(map(str, rest))}" if rest else ""
            error = {
                "kind": "scaling",
                "backend": backend,
                "device": plan.device,
                "workers": n,
                "status": "error",
                "message": str(exc)[:1000] + note,
            }
            return ([*build_rows(backend, plan, results)] if 1 in results else []) + [error]
    return build_rows(backend, plan, results)


#: Engines whose one-worker step updates the weights the way their N-worker step does, so that the one-worker
#: update cost carries over: DDP at world size 1 runs the same reducer and optimizer; MirroredStrategy applies on
#: its one replica as on N. MXNet's Gluon Trainer does not: with one context it makes no kvstore and updates each
#: context itself (``Trainer._init_kvstore``: ``kvstore = None`` for one device, not dist), with N contexts the
#: kvstore reduces and updates; its N-context update is left to the all-reduce terms.
UPDATE_AS_AT_ONE = ("torch", "tensorflow")


def _beyond_compute(one: StepTimes | None) -> float:
    """What a one-worker step costs beyond its forward and backward (the update and the engine's bookkeeping):
    its step minus its compute-only step (medians), 0 where either is missing or the difference is negative."""
    if not one or not one.get("compute_only_times"):
        return 0.0
    return max(0.0, Measurement.of(one["times"]).median - Measurement.of(one["compute_only_times"]).median)


def _overhead(res: Result) -> float | None:
    """The engine's per-step cost at this N from the overhead probe (its data-parallel step minus its
    compute-only step, medians), or ``None`` where the result has no probe with both."""
    probe = cast("dict[str, Any] | None", res.get("overhead"))
    if not probe or not probe.get("compute_only_times"):
        return None
    return Measurement.of(probe["times"]).median - Measurement.of(probe["compute_only_times"]).median


def run_multinode(
    backend: str,
    plan: ScalingPlan,
    node: Node,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """This node's part of a multi-node sweep (:mod:`benchmarks.multinode`): the job on ``node.world`` workers
    over ``node.nnodes`` nodes; then, on node 0 only, the one-worker baseline on this node, and the rows.

    Node 0 returns the rows (the all-reduce and scaling rows of N = 1 and N = ``node.world``, with ``nodes`` and
    ``workers_per_node``); another node returns ``[]`` when its part succeeded. A failure gives an ``error`` row
    naming the node(s) waited for, after the rows of what the job measured before it."""
    from xfbench.benchmarks.multinode import NodeFailure, run_node_job

    world = node.world
    plan = replace(plan, workers=(1, world))
    check_plan(plan)
    if progress:
        progress(f"scale {backend} N={world} on {node.nnodes} nodes (this is node {node.node_rank}) ...")
    failure: NodeFailure | None = None
    multi: Result | None
    try:
        multi = run_node_job(backend, _job(plan, world), node, plan.python.get(backend), plan.timeout_s, progress)
    except NodeFailure as exc:
        failure, multi = exc, exc.partial
    if node.node_rank != 0:
        return [] if failure is None else [_node_error(backend, plan, node, str(failure))]
    results: dict[int, Result] = {}
    try:
        if progress:
            progress(f"scale {backend} N=1 (the baseline, on node 0 alone) ...")
        results[1] = run_job(backend, 1, _job(plan, 1), plan.python.get(backend), plan.timeout_s)
    except RuntimeError as exc:
        errors = [] if failure is None else [_node_error(backend, plan, node, str(failure))]
        return [*errors, _node_error(backend, plan, node, f"the one-worker baseline failed: {exc}", workers=1)]
    if multi is not None:
        results[world] = multi
    rows = build_rows(backend, plan, results)
    return rows if failure is None else [*rows, _node_error(backend, plan, node, str(failure))]


def _node_error(
    backend: str, plan: ScalingPlan, node: Node, message: str, workers: int | None = None
) -> dict[str, Any]:
    return {
        "kind": "scaling",
        "backend": backend,
        "device": plan.device,
        "workers": node.world if workers is None else workers,
        "nodes": node.nnodes if workers is None else 1,
        "workers_per_node": node.workers_per_node if workers is None else 1,
        "status": "error",
        "message": message[:1000],
    }


def plot_scaling(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Speedup vs N (measured solid, predicted dashed, ideal dotted), one panel per backend and mode."""
    data = [r for r in rows if r.get("kind") == "scaling" and r.get("status") == "ok"]
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r["backend"] for r in data})
    modes = [m for m in SCALING_MODES if any(r["scaling_mode"] == m for r in data)]
    fig, axes = plt.subplots(len(modes), len(backends), figsize=(4.2 * len(backends), 3.6 * len(modes)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = sorted({r["model"] for r in data})
    for i, mode in enumerate(modes):
        for j, backend in enumerate(backends):
            ax = axes[i][j]
            sel = [r for r in data if r["backend"] == backend and r["scaling_mode"] == mode]
            ns = sorted({int(r["workers"]) for r in sel}) or [1]
            ax.plot(ns, ns, "k:", label="ideal")
            for k, model in enumerate(models):
                pts = sorted((int(r["workers"]), r) for r in sel if r["model"] == model)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                c = colors[k % len(colors)]
                ax.plot(xs, [float(p[1]["speedup"]) for p in pts], "o-", color=c, label=f"{model} measured")
                ax.plot(xs, [float(p[1]["speedup_predicted"]) for p in pts], "s--", color=c, label=f"{model} predicted")
            ax.set_title(f"{backend}, {mode} scaling")
            ax.set_xlabel("workers N")
            ax.set_ylabel("speedup")
            ax.set_xticks(ns)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_path(csv_path: str | os.PathLike[str]) -> Path:
    """Where the plot of a report goes: beside it, ``<stem>-scaling.png``."""
    p = Path(csv_path)
    return p.with_name(p.stem + "-scaling.png")


def run_scaling(
    backends: Sequence[str],
    plan: ScalingPlan,
    writer: Any,
    available: Callable[[str], bool],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The whole sweep: rows written to ``writer`` as each backend finishes; absent backends get a skipped row."""
    check_plan(plan)
    rows: list[dict[str, Any]] = []
    for backend in backends:
        if backend not in plan.python and not available(backend):
            row = {
                "kind": "scaling",
                "backend": backend,
                "device": plan.device,
                "status": "skipped",
                "message": f"{backend} is not installed in this environment (give --python {backend}=PATH)",
            }
            backend_rows = [row]
        else:
            backend_rows = run_backend(backend, plan, progress)
        for row in backend_rows:
            writer.write_row(row)
        rows.extend(backend_rows)
    return rows


def _placement(row: dict[str, Any]) -> str:
    """``N``, or ``N = nodes x per node`` for a row across nodes."""
    nodes = row.get("nodes")
    if nodes in (None, "", 1) or int(nodes) == 1:
        return str(row["workers"])
    return f"{row['workers']} = {nodes}x{row.get('workers_per_node', '?')}"


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """A text table of the scaling rows and the fitted all-reduce model."""
    from xfbench.reports.table import render_table

    body = []
    for r in rows:
        if r.get("kind") != "scaling":
            continue
        if r.get("status") != "ok":
            body.append([r.get("backend", ""), "-", "-", r.get("workers", "-"), r["status"], r.get("message", "")[:60]])
            continue
        body.append(
            [
                r["backend"],
                r["model"],
                r["scaling_mode"],
                _placement(r),
                f"{r['time_median_s'] * 1e3:.2f} / {r['time_predicted_s'] * 1e3:.2f} ms",
                f"{r['speedup']:.2f} / {r['speedup_predicted']:.2f}",
                f"{100 * r['efficiency']:.0f}% / {100 * r['efficiency_predicted']:.0f}%",
            ]
        )
    table = render_table(["backend", "model", "mode", "N", "step measured / predicted", "speedup", "efficiency"], body)
    bases = sorted(
        {
            f"{r['backend']}: {r['prediction_basis'].split(';')[0]}"
            for r in rows
            if r.get("kind") == "scaling" and r.get("prediction_basis")
        }
    )
    return "\n".join([table, *bases])


__all__ = [
    "DEFAULT_MODELS",
    "ScalingPlan",
    "build_rows",
    "check_plan",
    "default_workers",
    "gpu_count",
    "plot_path",
    "plot_scaling",
    "run_backend",
    "run_job",
    "run_multinode",
    "run_scaling",
]
