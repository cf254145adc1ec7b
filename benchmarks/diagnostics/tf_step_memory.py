"""What one TensorFlow CPU step allocates, taken apart: grappler's remapper, the allocator's own record, tracing,
the first call, and the conv-backprop kernels' scratch.

Run from the repository root (one measuring process at a time; each case is a child forked after the import,
as the suite's memory worker forks its repeats)::

    .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py            # gaps C and D (~8 min, 2 cores)
    .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py --gap C    # inference of conv nets only
    .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py --gap E    # VGG-11 b1/b2, AlexNet b8 training
    .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py --gap F    # LeNet b32, LSTM b16 training
    .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py --gap D --only nin --batch 2 --what profile
    TF_ENABLE_ONEDNN_OPTS=1 .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py --gap D   # oneDNN
    MALLOC_PERTURB_=165 .tox/tensorflow/bin/python benchmarks/diagnostics/tf_step_memory.py --gap D --what measure

Every case builds the model exactly as the suite does (:func:`benchmarks.harness.worker.build`: same backend
calls, weights and batch), with glibc's mmap threshold pinned before the import.

``--what measure`` cases: the file mappings are faulted in, then per step the suite's ``rss-hwm`` figure
(:func:`benchmarks.harness.worker.measure_cpu_step`: ``VmHWM`` above the post-trim ``VmRSS``, after writing ``5`` to
``/proc/self/clear_refs``), columns ``step1``..``step3``. Switches:

* ``remap``: grappler's remapper on (TensorFlow's default: ``Conv2D+BiasAdd+Relu`` become one ``_FusedConv2D``,
  ``MatMul+BiasAdd(+Relu)`` one ``_FusedMatMul``) or off (``tf.config.optimizer.set_experimental_options``); column
  ``ops``: op counts of the optimized graph (``context.export_run_metadata``, in a child of its own).
* ``alloc``: TensorFlow's default CPU allocator (``malloc``) or its BFC allocator (``TF_CPU_ALLOCATOR_USE_BFC=true``,
  set before the import). With BFC, ``tf.config.experimental.get_memory_info('CPU:0')`` works on the CPU (with the
  default allocator it raises ``Allocator stats not available``): ``t1``..``t3`` are BFC's peak bytes in use (reset
  before the step) above what it held before; BFC counts whole chunks, so this over-counts tensors (see profile).
  With ``TF_ENABLE_ONEDNN_OPTS=1`` the "malloc" rows run oneDNN's own CPU allocator (it reports stats too).
* ``trace``: ``first`` traces the ``tf.function`` (``get_concrete_function``: Python graph building, no execution)
  as a measured step of its own (``trace_b``) before step 1, so step 1 is the first execution only (grappler, kernel
  creation, the tensors); ``in-step`` leaves the trace inside step 1, as the suite measures.

``--what profile`` cases (BFC): steps 1 and 2 under ``tf.profiler`` (host tracer level 3), whose BFC allocator
records each allocation and free with its op, shape, requested bytes and kind (``output``/``temp``), replayed by
:func:`replay`: ``tensor_peak`` (requested bytes live above the pre-step level), ``touched_peak`` (the same with
each Eigen conv-backprop im2col buffer counted for ``min(shard, batch)`` of its ``shard`` images, the part its
kernel writes), BFC's ``chunk_peak``, what is live at the peak by kind, the largest scratch, allocations per op.

Beside every case: the simulated step above the baseline (:func:`benchmarks.harness.rows.simulated_step_bytes`)
and the largest (input + output) of one spec layer. ``--json PATH`` keeps every figure (bytes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1e6
PROBE = str(ROOT / "benchmarks" / "probes" / "conv.json")

#: Gap C: inference of conv nets (model, batch); gap D: training at small batches (model, batch).
GAP_C = [("alexnet", 8), ("vgg11", 1), ("vgg16", 1), ("cnn3", 8), (PROBE, 8)]
GAP_D = [("nin", 1), ("nin", 2), ("nin", 4), ("nin", 8), ("cnn3", 1), ("cnn3", 2), ("cnn3", 4), ("cnn3", 8), (PROBE, 8)]
#: Gap E: VGG-11 training, whose step measures less than its parameter gradients at batch 1 and grows by 468 MB
#: from batch 1 to 2; AlexNet training (batch 8) beside it.
GAP_E = [("vgg11", 1), ("vgg11", 2), ("alexnet", 8)]
#: Gap F: the small training rows still under-predicted (LeNet batch 32, the LSTM batch 16).
GAP_F = [("lenet", 32), ("lstm", 16)]
#: Gap G: graphs (issue 19): ResNet-18 and the inception model at batch 1, training, measured at about twice the
#: simulated step.
GAP_G = [("resnet18", 1), ("inception", 1)]
_TRAINING_GAPS = {"D": GAP_D, "E": GAP_E, "F": GAP_F, "G": GAP_G}


def _cases(gap: str) -> list[dict[str, Any]]:
    """The cases of one gap, grouped by allocator (each allocator is one process that forks the cases)."""
    out: list[dict[str, Any]] = []
    if gap == "C":
        for alloc in ("malloc", "bfc"):
            for model, batch in GAP_C:
                for remap in (True, False):
                    out.append(
                        dict(
                            model=model,
                            phase="inference",
                            batch=batch,
                            remap=remap,
                            alloc=alloc,
                            trace="in-step",
                            graph=alloc == "malloc",
                        )
                    )
    else:
        for alloc in ("malloc", "bfc"):
            for model, batch in _TRAINING_GAPS[gap]:
                for trace in ("in-step", "first") if alloc == "malloc" else ("first",):
                    out.append(
                        dict(
                            model=model,
                            phase="training",
                            batch=batch,
                            remap=True,
                            alloc=alloc,
                            trace=trace,
                            graph=False,
                        )
                    )
    profiled = GAP_C if gap == "C" else _TRAINING_GAPS[gap]
    for model, batch in profiled:
        for remap in (True, False) if gap == "C" else (True,):
            phase = "inference" if gap == "C" else "training"
            out.append(
                dict(model=model, phase=phase, batch=batch, remap=remap, alloc="bfc", trace="in-step", profile=True)
            )
    return out


# ------------------------------------------------------------------------------------------- in the child


def _closure(fn: Any) -> dict[str, Any]:
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))


def _step_function(work: Any) -> tuple[Any, tuple[Any, ...], str]:
    """The step's ``tf.function``, its arguments and the device scope it runs under (from the suite's closures)."""
    from xfbench.backends.tensorflow.model import _compiled_infer, _info

    cells = _closure(work.step)
    device = _info(work.model).tf_device
    if "train" in cells:
        return _closure(cells["train"])["step"], (cells["x"], cells["y"]), device
    return _compiled_infer(work.model), (cells["x"],), device


def _allocator(tf: Any) -> dict[str, int] | None:
    try:
        return dict(tf.config.experimental.get_memory_info("CPU:0"))
    except ValueError:
        return None


def measure_case(case: dict[str, Any]) -> dict[str, Any]:
    """One case's figures (bytes), in a process that has computed nothing yet."""
    import gc

    from xfbench.analytics.weights import clear_weight_cache
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.benchmarks.harness.worker import Arrays, build, measure_cpu_step, populate_file_mappings
    from xfbench.benchmarks.harness.workload import Config

    if not case["remap"]:
        tf.config.optimizer.set_experimental_options({"remapping": False})
    config = Config("tensorflow", case["model"], case["phase"], case["batch"])
    arrays = Arrays(config)
    work = build(config, arrays)
    arrays.weights = []
    clear_weight_cache()
    gc.collect()
    fn, args, device = _step_function(work)
    populate_file_mappings()
    out: dict[str, Any] = {}
    info = _allocator(tf)
    out["allocator_stats"] = info is not None
    if info is not None:
        out["allocator_held_before"] = info["current"]
        out["allocator_build_peak"] = info["peak"]
    if case["trace"] == "first":

        def trace() -> None:
            with tf.device(device):
                fn.get_concrete_function(*args)

        out["trace_bytes"] = measure_cpu_step(trace)[1]
    for k in (1, 2, 3):
        before = _allocator(tf)
        if before is not None:
            tf.config.experimental.reset_memory_stats("CPU:0")
        baseline, peak, method = measure_cpu_step(work.step)
        out[f"step{k}"] = peak
        if k == 1:
            out["baseline"], out["method"] = baseline, method
        after = _allocator(tf)
        if before is not None and after is not None:
            out[f"t{k}"] = after["peak"] - before["current"]
    out["traces"] = int(fn.experimental_get_tracing_count())
    return out


def graph_case(case: dict[str, Any]) -> dict[str, Any]:
    """The op counts of the step's optimized graph, in a child of its own (the graph is recorded only when the
    function is first instantiated, which a measured child has done without run metadata)."""
    from xfbench.backends.tensorflow._tf import tf
    from xfbench.benchmarks.harness.worker import Arrays, build
    from xfbench.benchmarks.harness.workload import Config

    if not case["remap"]:
        tf.config.optimizer.set_experimental_options({"remapping": False})
    config = Config("tensorflow", case["model"], case["phase"], case["batch"])
    return {"ops": _graph_ops(build(config, Arrays(config)))}


def _graph_ops(work: Any) -> dict[str, int]:
    """Op counts of the optimized graph of one more step (``context.export_run_metadata``)."""
    from collections import Counter

    from tensorflow.python.eager import context

    context.enable_run_metadata()
    try:
        work.step()
        meta = context.export_run_metadata()
    finally:
        context.disable_run_metadata()
    counts: Counter[str] = Counter()
    for fg in meta.function_graphs:
        counts.update(n.op for n in fg.post_optimization_graph.node)
    keep = ("Conv2D", "_FusedConv2D", "BiasAdd", "Relu", "MatMul", "_FusedMatMul", "Pad", "AddV2", "MaxPool")
    return {k: counts[k] for k in keep if counts[k]}


def _stat(plane: Any, stat: Any) -> Any:
    if stat.HasField("ref_value"):
        return plane.stat_metadata[stat.ref_value].name
    for field in ("str_value", "int64_value", "uint64_value", "double_value"):
        if stat.HasField(field):
            return getattr(stat, field)
    return None


def _allocator_events(logdir: str) -> list[dict[str, Any]]:
    """The allocator's ``MemoryAllocation``/``MemoryDeallocation`` events of a profile, in time order."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1], "rb") as fh:
        space.ParseFromString(fh.read())
    events: list[dict[str, Any]] = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                kind = names.get(ev.metadata_id, "")
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                rec = {stat_names.get(st.metadata_id, ""): _stat(plane, st) for st in ev.stats}
                rec.update(kind=kind, t=line.timestamp_ns * 1000 + ev.offset_ps)
                events.append(rec)
    return sorted(events, key=lambda e: e["t"])


def _touched(e: dict[str, Any], batch: int) -> int:
    """Bytes of an allocation a kernel writes, estimated: a conv-backprop ``temp`` of shape ``[shard, rows, cols]``
    (Eigen's im2col buffer of ``Conv2DCustomBackpropFilter/Input``, sized for ``shard`` images by a 30 MiB
    working-set target whatever the batch) is written for ``min(shard, batch)`` images only; anything else fully."""
    req = int(e.get("requested_bytes") or 0)
    shape = str(e.get("shape") or "").strip("[]").split(",")
    if e.get("region_type") == "temp" and "Backprop" in str(e.get("tf_op") or "") and len(shape) == 3:
        try:
            shard = int(shape[0])
        except ValueError:
            return req
        return req * min(shard, batch) // max(shard, 1)
    return req


def replay(events: list[dict[str, Any]], batch: int = 0) -> dict[str, Any]:
    """The step's tensor-level peak from the allocator's events: the requested bytes allocated during the step and
    not yet freed (a free of a tensor allocated before the step counts negative), the live tensors at that peak,
    and the allocations per kind of op (a ``BiasAdd``/``Relu`` that forwards its input's buffer allocates none).
    ``touched_peak``: the same replay with each conv-backprop im2col buffer counted as :func:`_touched` (what RSS
    can see: pages never written are never resident)."""
    live: dict[Any, dict[str, Any]] = {}
    level = peak = 0
    touched_level = touched_peak = 0
    at_peak: list[dict[str, Any]] = []
    per_op: dict[str, int] = {}
    temp_max = 0
    for e in events:
        req = int(e.get("requested_bytes") or 0)
        if e["kind"] == "MemoryAllocation":
            live[e.get("addr")] = e
            level += req
            touched_level += _touched(e, batch)
            touched_peak = max(touched_peak, touched_level)
            op = str(e.get("tf_op") or "").rsplit("/", 1)[-1].split("_")[0] or "?"
            per_op[op] = per_op.get(op, 0) + 1
            if e.get("region_type") == "temp":
                temp_max = max(temp_max, req)
            if level > peak:
                peak, at_peak = level, list(live.values())
        else:
            gone = live.pop(e.get("addr"), None)
            level -= int(gone.get("requested_bytes") or 0) if gone is not None else req
            touched_level -= _touched(gone, batch) if gone is not None else req
    by_region: dict[str, int] = {}
    for e in at_peak:
        key = str(e.get("region_type") or "untagged")
        by_region[key] = by_region.get(key, 0) + int(e.get("requested_bytes") or 0)
    top = sorted(at_peak, key=lambda e: -int(e.get("requested_bytes") or 0))[:6]
    return {
        "peak": peak,
        "touched_peak": touched_peak,
        "by_region": by_region,
        "top": [
            (str(e.get("tf_op") or "?"), str(e.get("shape") or ""), int(e.get("requested_bytes") or 0)) for e in top
        ],
        "allocs_per_op": per_op,
        "temp_max": temp_max,
        "chunk_peak": max((int(e.get("bytes_allocated") or 0) for e in events), default=0),
    }


def profile_case(case: dict[str, Any]) -> dict[str, Any]:
    """Steps 1 and 2 under ``tf.profiler`` (needs ``TF_CPU_ALLOCATOR_USE_BFC=true``: the BFC allocator is what
    records each allocation with its op, shape and kind), replayed by :func:`replay`."""
    import tempfile

    from xfbench.backends.tensorflow._tf import tf
    from xfbench.benchmarks.harness.worker import Arrays, build
    from xfbench.benchmarks.harness.workload import Config

    if not case["remap"]:
        tf.config.optimizer.set_experimental_options({"remapping": False})
    config = Config("tensorflow", case["model"], case["phase"], case["batch"])
    work = build(config, Arrays(config))
    out: dict[str, Any] = {}
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3)
    for k in (1, 2):
        before = _allocator(tf) or {"current": 0}
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir, options=options)
            work.step()
            tf.profiler.experimental.stop()
            result = replay(_allocator_events(logdir), case["batch"])
        result["chunk_peak"] = max(result["chunk_peak"] - before["current"], 0)
        out[f"profile{k}"] = result
    return out


def run_group(cases: list[dict[str, Any]]) -> int:
    """Imports TensorFlow once (allocator chosen by the environment), then forks one child per case, in turn."""
    from xfbench.benchmarks.harness.worker import collect_child, pin_malloc_threshold, start_child

    pin_malloc_threshold()  # before the framework's import, as the suite's worker
    from xfbench.backends import get_backend

    get_backend("tensorflow")
    for case in cases:
        task = functools.partial(profile_case if case.get("profile") else measure_case, case)
        pid, fd = start_child(task)
        result = collect_child(pid, fd, timeout_s=900)
        if case.get("graph") and result.get("status") == "ok":
            pid, fd = start_child(functools.partial(graph_case, case))
            result["ops"] = collect_child(pid, fd, timeout_s=900).get("ops", "failed")
        print("CASE " + json.dumps({**case, **result}), flush=True)
    return 0


# ------------------------------------------------------------------------------------------- in the parent


def predicted(model: str, phase: str, batch: int) -> dict[str, Any]:
    """The simulated step above the baseline, its peak op, and the largest (input + output) of one spec layer."""
    import math
    import warnings

    from xfbench.analytics.memory import dtype_bytes
    from xfbench.analytics.shapes import infer_shapes, input_shapes
    from xfbench.benchmarks.harness.rows import simulated_step_bytes, simulated_timeline
    from xfbench.benchmarks.harness.workload import Config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = Config("tensorflow", model, phase, batch)
        spec = config.spec()
        timeline = simulated_timeline(config)
        width = dtype_bytes("float32")
        pairs = [batch * width * (math.prod(i) + math.prod(o)) for i, o in zip(input_shapes(spec), infer_shapes(spec))]
        return {
            "sim_step": (simulated_step_bytes(config) or 0) / MB,
            "sim_peak_op": timeline.peak_event.op if timeline else "",
            "max_pair": max(pairs) / MB,
        }


def _name(model: str) -> str:
    return "probe-conv" if model == PROBE else model


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value / MB:.1f}" if isinstance(value, (int, float)) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "model",
        "batch",
        "phase",
        "alloc",
        "remap",
        "trace",
        "trace_b",
        "step1",
        "step2",
        "step3",
        "t1",
        "t2",
        "held",
        "sim_step",
        "max_pair",
        "ops",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {_name(r['model'])} | {r['batch']} | {r['phase']} | {r['alloc']} | {r['remap']} | "
                f"{r['trace']} | {r.get('status')}: {r.get('message', '')} |"
            )
            continue
        cells = [
            _name(r["model"]),
            r["batch"],
            r["phase"],
            r["alloc"],
            "on" if r["remap"] else "off",
            r["trace"],
            _fmt(r.get("trace_bytes")),
            _fmt(r["step1"]),
            _fmt(r["step2"]),
            _fmt(r["step3"]),
            _fmt(r.get("t1")),
            _fmt(r.get("t2")),
            _fmt(r.get("allocator_held_before")),
            f"{r['sim_step']:.1f}",
            f"{r['max_pair']:.1f}",
            json.dumps(r.get("ops", "")).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def profile_table(rows: list[dict[str, Any]]) -> str:
    """The profiled cases: per step, the tensor-level peak (requested bytes), BFC's chunk-level peak, what is live
    at the peak by kind, the largest scratch (``temp``) allocation, the ops that allocated, the largest live."""
    cols = [
        "model",
        "batch",
        "phase",
        "remap",
        "step",
        "tensor_peak",
        "chunk_peak",
        "at_peak_by_kind",
        "temp_max",
        "allocations_per_op",
        "largest_live_at_peak",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        for k in (1, 2):
            p = r.get(f"profile{k}")
            if r.get("status") != "ok" or p is None:
                lines.append(f"| {_name(r['model'])} | {r['batch']} | {r.get('status')}: {r.get('message', '')} |")
                break
            kinds = ", ".join(f"{key} {v / MB:.1f}" for key, v in sorted(p["by_region"].items()))
            ops = ", ".join(f"{key} {v}" for key, v in sorted(p["allocs_per_op"].items()))
            top = "; ".join(f"{op.rsplit('/', 1)[-1]} {shape} {b / MB:.1f}" for op, shape, b in p["top"][:3])
            cells = [
                _name(r["model"]),
                r["batch"],
                r["phase"],
                "on" if r["remap"] else "off",
                k,
                _fmt(p["peak"]),
                _fmt(p["touched_peak"]),
                _fmt(p["chunk_peak"]),
                kinds,
                _fmt(p["temp_max"]),
                ops,
                top,
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--gap", choices=("C", "D", "E", "F", "G", "all"), default="all")
    p.add_argument("--only", default=None, help="comma-separated models (catalog names, probe-conv) to keep")
    p.add_argument("--batch", type=int, default=None, help="keep only cases at this batch size")
    p.add_argument("--what", choices=("measure", "profile", "both"), default="both")
    p.add_argument("--json", default=None, help="also write every case's figures (bytes) to this file")
    p.add_argument("--group", default=None, help=argparse.SUPPRESS)  # internal: a JSON list of cases
    args = p.parse_args(argv)
    if args.group is not None:
        return run_group(json.loads(args.group))
    cases = [c for g in (("C", "D") if args.gap == "all" else (args.gap,)) for c in _cases(g)]
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if _name(c["model"]) in keep]
    if args.batch is not None:
        cases = [c for c in cases if c["batch"] == args.batch]
    if args.what != "both":
        cases = [c for c in cases if bool(c.get("profile")) == (args.what == "profile")]
    rows: list[dict[str, Any]] = []
    for alloc in ("malloc", "bfc"):
        group = [c for c in cases if c["alloc"] == alloc]
        if not group:
            continue
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        if alloc == "bfc":
            env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
        else:
            env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--group", json.dumps(group)]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("CASE "):
                row = json.loads(line[5:])
                row.update(predicted(row["model"], row["phase"], row["batch"]))
                row["TF_ENABLE_ONEDNN_OPTS"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")
                rows.append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k != "model"} | {"model": _name(row["model"])}),
                    flush=True,
                )
    print(table([r for r in rows if not r.get("profile")]))
    print()
    print(profile_table([r for r in rows if r.get("profile")]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
