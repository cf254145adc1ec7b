"""Which MXNet switch moves the process memory of a CPU training step: RSS high-water mark per variant and phase.

Gap B of the memory comparison: cnn3 training at batch 8 (MXNet 1.9.1, CPU, float32, sgd) measures 466 MB of
process memory above the baseline over its first step (``benchmarks/harness/worker.py``, ``rss-hwm``), where
the tensor-level simulation peaks at 226 MB. The suite's model is hybridized with ``static_alloc=True``
(``backends/mxnet/model.py``). This script measures the same step under variants, each in a fresh interpreter
(MXNet reads its environment at import), glibc's mmap threshold pinned before ``import mxnet`` and the shared
libraries faulted in, as the suite's worker does; weights and batch are the suite's (``Arrays``):

* hybridization: ``static_alloc=True`` (the suite), ``static_alloc=True, static_shape=True``, ``static_alloc=False``
  (``hybridize()``), not hybridized (``hybridize(active=False)``, imperative Gluon); ``*_bulk1``: the cached
  graph's bulk segments set to one op (``forward_bulk_size=1, backward_bulk_size=1``);
* environment: ``MXNET_MKLDNN_ENABLED=0`` (MXNet's native convolution instead of oneDNN),
  ``MXNET_ENGINE_TYPE=NaiveEngine`` (every op synchronous, one at a time), ``MXNET_EXEC_BULK_EXEC_TRAIN=0`` (no
  bulk execution of consecutive training ops: a bulk runs as one engine operation, and the arrays its ops
  release are deleted only after the whole bulk).

Measurements per variant (each a fresh process):

* ``whole``: the suite's figure, ``measure_cpu_step`` over the first step (forward and loss under
  ``autograd.record``, ``backward``, ``trainer.step(1)``, ``waitall``) and over the second step.
* ``phases``: the first step again with ``mx.nd.waitall()`` after the forward (+loss), after ``backward`` and
  after ``trainer.step``, resetting the kernel's high-water mark (``5`` into ``/proc/self/clear_refs``) at each
  boundary: per phase the RSS before it, its peak above the step's baseline and what it leaves held; a thread
  samples ``VmRSS`` every millisecond meanwhile and sums the drops before the phase's highest sample (memory the
  phase released while still growing toward its peak; the sampler may miss drops shorter than ~1 ms).

* ``storage`` (``--storage``): the first step under MXNet's profiler with ``profile_memory``: its ``Device Storage``
  counter (NDArray storage handed out by MXNet's storage manager since profiling began), each change attributed to
  the operator running then, beside ``VmRSS`` sampled every millisecond on the same clock. With oneDNN the counter
  runs above RSS (storage handed out but not all touched), so it attributes allocations, not resident bytes.

Run from the repository root (every variant: about 8 minutes on 2 cores)::

    nice -n 10 .tox/mxnet/bin/python benchmarks/diagnostics/mxnet_step_memory.py --inference --json out.json
    nice -n 10 .tox/mxnet/bin/python benchmarks/diagnostics/mxnet_step_memory.py --variants suite imperative_nobulk
    nice -n 10 .tox/mxnet/bin/python benchmarks/diagnostics/mxnet_step_memory.py --variants imperative --storage

``--inference`` adds the inference step per variant (at the first of ``--batches``); ``--model`` measures another
catalog model or spec (default cnn3), ``--no-phases`` skips the per-phase runs, e.g. the suite's settings against
all three switches off for one quick-profile row::

    .tox/mxnet/bin/python benchmarks/diagnostics/mxnet_step_memory.py --model lstm --batches 16 --inference \
        --no-phases --variants suite imperative_nobulk_nomkldnn

Which layouts and kernels oneDNN runs (issue 20 item 4; the basis of ``analytics/timeline_rules.py``
``mxnet_onednn_layout_elems``): the suite's worker with oneDNN's verbose log, one fresh process, e.g.::

    DNNL_VERBOSE=1 nice -n 10 .tox/mxnet/bin/python -m xfbench.benchmarks.harness.worker --backend mxnet \
        --model resnet18 --phase inference --batch 1 --repeats 1 --no-tensor | grep exec

lists every primitive of the first and second step with its implementation (``brgconv:avx512_core``,
``jit:avx2``, ``gemm:jit``), its memory formats (``abcd`` plain, ``aBcd8b``/``aBcd16b`` blocked) and the reorders
(weights into blocked formats in each forward, and once more after an inference forward: the kept copies).

One process at a time. Not a switch here:
``MXNET_EXEC_ENABLE_INPLACE`` (the name does not occur in MXNet 1.9.1's ``libmxnet.so``, so 1.9.1 does not read
it); ``MXNET_MEM_PLAN_VERBOSE_LOGGING=1`` logs only the outer imperative graph (``_CachedOp`` and the loss), not
the cached graph's static plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# RSS and its high-water mark, read and reset as the suite's memory worker does (imports no framework).
from xfbench.benchmarks.harness.worker import reset_hwm as _reset_hwm  # noqa: E402
from xfbench.benchmarks.harness.worker import rss_and_hwm as _status  # noqa: E402

MB = 1e6

#: name -> (hybridize keyword arguments, or None for imperative; extra environment)
VARIANTS: dict[str, tuple[dict[str, Any] | None, dict[str, str]]] = {
    "suite": ({"static_alloc": True}, {}),
    "static_shape": ({"static_alloc": True, "static_shape": True}, {}),
    "dynamic": ({"static_alloc": False}, {}),
    "imperative": (None, {}),
    "suite_nomkldnn": ({"static_alloc": True}, {"MXNET_MKLDNN_ENABLED": "0"}),
    "imperative_nomkldnn": (None, {"MXNET_MKLDNN_ENABLED": "0"}),
    "dynamic_nomkldnn": ({"static_alloc": False}, {"MXNET_MKLDNN_ENABLED": "0"}),
    "suite_naive": ({"static_alloc": True}, {"MXNET_ENGINE_TYPE": "NaiveEngine"}),
    "suite_nobulk": ({"static_alloc": True}, {"MXNET_EXEC_BULK_EXEC_TRAIN": "0"}),
    "dynamic_nobulk": ({"static_alloc": False}, {"MXNET_EXEC_BULK_EXEC_TRAIN": "0"}),
    "suite_bulk1": ({"static_alloc": True, "forward_bulk_size": 1, "backward_bulk_size": 1}, {}),
    "dynamic_bulk1": ({"static_alloc": False, "forward_bulk_size": 1, "backward_bulk_size": 1}, {}),
    "dynamic_bulk1_nobulk": (
        {"static_alloc": False, "forward_bulk_size": 1, "backward_bulk_size": 1},
        {"MXNET_EXEC_BULK_EXEC_TRAIN": "0"},
    ),
    "imperative_nobulk": (None, {"MXNET_EXEC_BULK_EXEC_TRAIN": "0"}),
    "imperative_nobulk_nomkldnn": (None, {"MXNET_EXEC_BULK_EXEC_TRAIN": "0", "MXNET_MKLDNN_ENABLED": "0"}),
    "dynamic_nobulk_nomkldnn": (
        {"static_alloc": False},
        {"MXNET_EXEC_BULK_EXEC_TRAIN": "0", "MXNET_MKLDNN_ENABLED": "0"},
    ),
}


class _Trace:
    """VmRSS sampled every millisecond in a thread (MXNet's C calls release the GIL): how much RSS fell before the
    phase's highest sample, i.e. memory released while the phase was still growing toward its peak."""

    def __init__(self) -> None:
        import threading

        self.samples: list[int] = []
        self.times_us: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            self.times_us.append(int(time.time() * 1e6))
            self.samples.append(_status()[0])
            time.sleep(0.001)

    def __enter__(self) -> _Trace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        import time

        self.times_us.append(int(time.time() * 1e6))
        self.samples.append(_status()[0])

    def released_before_peak(self) -> int:
        if not self.samples:
            return 0
        top = max(range(len(self.samples)), key=self.samples.__getitem__)
        return sum(max(a - b, 0) for a, b in zip(self.samples[:top], self.samples[1 : top + 1]))


def _prepare() -> None:
    import gc

    from xfbench.benchmarks.harness.worker import _release_free_heap, populate_file_mappings

    gc.collect()
    _release_free_heap()
    populate_file_mappings()


def child(variant: str, batch: int, mode: str, phase: str, model_name: str = "cnn3") -> dict[str, Any]:
    from xfbench.benchmarks.harness.worker import Arrays, measure_cpu_step, pin_malloc_threshold

    pin_malloc_threshold()  # before the framework's import, as the suite's worker does
    import mxnet as mx
    from mxnet import autograd, gluon
    from xfbench.analytics.weights import output_kind
    from xfbench.backends import get_backend
    from xfbench.backends.common import optimizer_settings
    from xfbench.backends.mxnet.model import _as_input, _loss_fn
    from xfbench.benchmarks.harness.workload import Config

    flags, _env = VARIANTS[variant]
    config = Config(backend="mxnet", model=model_name, phase=phase, batch_size=batch, optimizer="sgd")
    arrays = Arrays(config)
    b = get_backend("mxnet")
    model = b.build_model(arrays.spec, device="cpu", dtype="float32", seed=0)
    b.set_weights(model, arrays.weights)
    if flags is None:
        model.hybridize(active=False)
    else:
        model.hybridize(**flags)
    x = b.to_device(arrays.x, "cpu", "float32")
    y = b.to_device(arrays.y, "cpu", "float32")
    result: dict[str, Any] = {"variant": variant, "model": model_name, "batch": batch, "mode": mode, "phase": phase}
    if phase == "inference":

        def step() -> None:
            b.infer(model, x)
            mx.nd.waitall()

        _prepare()
        result["first_step"] = measure_cpu_step(step)[1]
        result["second_step"] = measure_cpu_step(step)[1]
        return result
    if mode == "whole":
        train = b.make_train_step(model, arrays.spec, "sgd")

        def train_step() -> None:
            train(x, y)
            mx.nd.waitall()

        _prepare()
        result["first_step"] = measure_cpu_step(train_step)[1]
        result["second_step"] = measure_cpu_step(train_step)[1]
        return result
    if mode == "storage":
        train = b.make_train_step(model, arrays.spec, "sgd")
        result.update(_storage_step(lambda: train(x, y), mx))
        return result
    opt = optimizer_settings("sgd", None)
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": opt.lr, "momentum": opt.momentum})
    loss_fn = _loss_fn(output_kind(arrays.spec))
    phases: list[dict[str, Any]] = []
    _prepare()
    base, _ = _status()
    _reset_hwm()
    state: dict[str, Any] = {}

    def forward() -> None:
        xb = _as_input(model, x)
        with autograd.record(train_mode=True):
            state["loss"] = loss_fn(model(xb), y)

    def backward() -> None:
        state["loss"].backward()

    def update() -> None:
        trainer.step(1)

    for name, fn in (("forward+loss", forward), ("backward", backward), ("trainer.step", update)):
        rss0, _ = _status()
        _reset_hwm()
        with _Trace() as trace:
            fn()
            mx.nd.waitall()
        rss1, hwm = _status()
        phases.append(
            {
                "phase": name,
                "rss_before": rss0 - base,
                "peak": hwm - base,
                "held_after": rss1 - base,
                "released_before_peak": trace.released_before_peak(),
                "samples": len(trace.samples),
            }
        )
    result["phases"] = phases
    result["step_peak"] = max(p["peak"] for p in phases)
    return result


def _storage_step(step: Any, mx: Any) -> dict[str, Any]:
    """The first step under MXNet's profiler with ``profile_memory``: its ``Device Storage`` counter (bytes of
    NDArray storage MXNet's storage manager has handed out since profiling began) against the operator events, so
    that each change of the counter is attributed to the operator running at that moment."""
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        mx.profiler.set_config(profile_all=True, profile_memory=True, filename=path, aggregate_stats=False)
        _prepare()
        base, _ = _status()
        mx.profiler.set_state("run")
        with _Trace() as trace:
            step()
            mx.nd.waitall()
        mx.profiler.set_state("stop")
        mx.profiler.dump(finished=True)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    finally:
        os.unlink(path)
    timeline: list[tuple[int, int, str, Any]] = []
    for e in events:
        if e.get("cat") == "Device Storage" and str(e.get("name", "")).startswith("Memory: cpu"):
            timeline.append((int(e["ts"]), 1, "mem", int(next(iter(e["args"].values())))))
        elif e.get("cat") == "operator" and e.get("ph") in ("B", "E"):
            timeline.append((int(e["ts"]), 0 if e["ph"] == "B" else 2, e["ph"], str(e["name"])))
    for t, rss in zip(trace.times_us, trace.samples):
        timeline.append((t, 3, "rss", rss - base))
    timeline.sort(key=lambda t: (t[0], t[1]))
    running: list[str] = []
    level, last_op = 0, "(before the first op)"
    ops: list[dict[str, Any]] = []
    jumps: list[dict[str, Any]] = []
    peak, peak_op = 0, ""
    rss_now, rss_peak, storage_at_rss_peak = 0, 0, 0
    for _, _, kind, value in timeline:
        if kind == "rss":
            rss_now = value
            if value > rss_peak:
                rss_peak, storage_at_rss_peak = value, level
            if jumps and "rss_after" not in jumps[-1]:
                jumps[-1]["rss_after"] = value
            continue
        if kind == "B":
            running.append(value)
            if value != "DeleteVariable":
                ops.append({"op": value, "start": level, "max": level})
                last_op = value
        elif kind == "E":
            if value in running:
                running.remove(value)
        else:
            delta, level = value - level, value
            where = next((r for r in reversed(running) if r != "DeleteVariable"), last_op)
            if "DeleteVariable" in running and delta < 0:
                where = f"DeleteVariable (after {last_op})"
            if abs(delta) >= 1_000_000:
                jumps.append({"op": where, "delta": delta, "level": level, "rss_before": rss_now})
            if ops:
                ops[-1]["max"] = max(ops[-1]["max"], level)
            if level > peak:
                peak, peak_op = level, where
    return {
        "storage_peak": peak,
        "storage_peak_op": peak_op,
        "storage_ops": ops,
        "storage_jumps": jumps,
        "rss_peak": rss_peak,
        "storage_at_rss_peak": storage_at_rss_peak,
    }


def _run_child(variant: str, batch: int, mode: str, phase: str, model: str = "cnn3") -> dict[str, Any]:
    env = dict(os.environ)
    env.update(VARIANTS[variant][1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, str(batch), mode, phase, model]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-800:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", default="cnn3", help="catalog model or spec file (default cnn3)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--phase-batch", type=int, default=8, help="batch of the per-phase runs (default 8)")
    p.add_argument("--storage", action="store_true", help="also MXNet's storage counter per op (profiler)")
    p.add_argument("--no-phases", action="store_true", help="skip the per-phase runs")
    p.add_argument(
        "--inference", action="store_true", help="also the inference step per variant (at the first of --batches)"
    )
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        variant, batch, mode, phase, model = args.child
        print(json.dumps(child(variant, int(batch), mode, phase, model)))
        return 0
    results: list[dict[str, Any]] = []
    for variant in args.variants:
        for batch in args.batches:
            r = _run_child(variant, batch, "whole", "training", args.model)
            results.append(r)
            print(
                f"{args.model} {variant:<20} b{batch:<3} training  first step {r['first_step'] / MB:7.1f} MB, "
                f"second {r['second_step'] / MB:7.1f} MB",
                flush=True,
            )
        if not args.no_phases:
            r = _run_child(variant, args.phase_batch, "phases", "training", args.model)
            results.append(r)
            for ph in r["phases"]:
                print(
                    f"{'':<20} b{args.phase_batch:<3} {ph['phase']:<14} rss before {ph['rss_before'] / MB:7.1f}  "
                    f"peak {ph['peak'] / MB:7.1f}  held after {ph['held_after'] / MB:7.1f} MB  "
                    f"(released before its peak {ph['released_before_peak'] / MB:.1f} MB, {ph['samples']} samples)",
                    flush=True,
                )
        if args.storage:
            r = _run_child(variant, args.phase_batch, "storage", "training", args.model)
            results.append(r)
            print(
                f"{'':<20} b{args.phase_batch:<3} storage (MXNet profiler) peak {r['storage_peak'] / MB:7.1f} MB "
                f"during {r['storage_peak_op']}; sampled RSS peak {r['rss_peak'] / MB:.1f} MB (storage then "
                f"{r['storage_at_rss_peak'] / MB:.1f} MB)",
                flush=True,
            )
            for j in r["storage_jumps"]:
                print(
                    f"{'':<26} {j['op']:<44} storage {j['delta'] / MB:+8.1f} -> {j['level'] / MB:7.1f} MB   "
                    f"RSS {j['rss_before'] / MB:7.1f} -> {j.get('rss_after', j['rss_before']) / MB:7.1f} MB",
                    flush=True,
                )
        if args.inference:
            r = _run_child(variant, args.batches[0], "whole", "inference", args.model)
            results.append(r)
            print(
                f"{args.model} {variant:<20} b{args.batches[0]:<3} inference first step "
                f"{r['first_step'] / MB:7.1f} MB, "
                f"second {r['second_step'] / MB:7.1f} MB",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
