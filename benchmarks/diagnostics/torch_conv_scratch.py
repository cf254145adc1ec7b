"""Where torch's CPU training step holds memory that is not tensors: RSS high-water mark per ATen op.

Gap A of the memory comparison: cnn3 training at batch 8 (torch, CPU, float32, sgd) measures 277 MB of process
memory above the baseline over its first step (``benchmarks/harness/worker.py``, ``rss-hwm``), while the
tensor level (``MemTracker``, the simulated timeline) peaks at 225.6 MB. This script attributes the difference
to single ATen ops.

Method (each configuration in a fresh interpreter, glibc's mmap threshold pinned before ``import torch`` and the
shared libraries faulted in, as the suite's worker does; model, weights and batch from the suite's ``build``):

* ``whole``: the suite's figure, ``measure_cpu_step`` over the first step and over the second.
* ``ops``: the same first (and second) step under a ``TorchDispatchMode`` that, around every ATen op the step
  dispatches (forward, loss, every backward formula, the optimizer), resets the kernel's high-water mark
  (``5`` into ``/proc/self/clear_refs``) and reads ``VmRSS``/``VmHWM`` from ``/proc/self/status``. The stretches
  between ops (Python, the autograd engine, frees) are segments of their own, so the maximum over all segments
  is the step's high-water mark. For each op: ``new`` = bytes of the storages it returns that none of its
  inputs holds (what the tensor level counts), ``held`` = RSS after - RSS before, ``peak`` = HWM - RSS before,
  ``scratch`` = HWM - RSS after (memory the op had mapped while it ran and released before returning: not a
  tensor it returned). With the mmap threshold pinned at 128 KiB, every block of 128 KiB or more is mapped
  and unmapped, so RSS follows what is held.
* ``alloc``: the first step under ``torch.profiler`` (``profile_memory``), which records every allocation of
  c10's CPU allocator (internal ``at::empty`` calls of a kernel included); for the top-level ops the peak of
  the allocator's live bytes within the op above its start. An op whose RSS ``scratch`` is absent here
  allocated it outside PyTorch's allocator (oneDNN's own ``malloc``).

Each of these runs with oneDNN on (default) and off (``torch.backends.mkldnn.flags(enabled=False)``: the
convolution falls back to ATen's ``slow_conv2d`` with its im2col buffer), at the batches given.

Run from the repository root (every mode, batches 8 and 16, oneDNN on and off: about 4 minutes on 2 cores)::

    nice -n 10 .tox/torch/bin/python benchmarks/diagnostics/torch_conv_scratch.py
    nice -n 10 .tox/torch/bin/python benchmarks/diagnostics/torch_conv_scratch.py --batches 8 16 --json out.json

One process at a time; prints a table per configuration and, with ``--json``, writes every figure.
"""

from __future__ import annotations

import argparse
import json
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


def _workload(batch: int, model: str = "cnn3", phase: str = "training") -> Any:
    from xfbench.benchmarks.harness.worker import Arrays, build
    from xfbench.benchmarks.harness.workload import Config

    config = Config(backend="torch", model=model, phase=phase, batch_size=batch, optimizer="sgd")
    return build(config, Arrays(config))


def _prepare() -> None:
    import gc

    from xfbench.benchmarks.harness.worker import _release_free_heap, populate_file_mappings

    gc.collect()
    _release_free_heap()
    populate_file_mappings()


def _storages(obj: Any, out: dict[int, int]) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        out[st.data_ptr()] = st.nbytes()
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _storages(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _storages(o, out)


def _ops_step(work: Any) -> dict[str, Any]:
    """One step under the per-op high-water-mark mode; returns the op records and the step's peak."""
    from torch.utils._python_dispatch import TorchDispatchMode

    records: list[dict[str, Any]] = []
    gaps: list[int] = []

    class HwmMode(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            rss0, hwm_gap = _status()
            gaps.append(hwm_gap - base)
            _reset_hwm()
            out = func(*args, **(kwargs or {}))
            rss1, hwm = _status()
            ins: dict[int, int] = {}
            _storages((args, kwargs), ins)
            outs: dict[int, int] = {}
            _storages(out, outs)
            new = sum(n for p, n in outs.items() if p not in ins)
            records.append(
                {
                    "op": str(func.overloadpacket.__name__),
                    "rss_before": rss0 - base,
                    "new": new,
                    "held": rss1 - rss0,
                    "peak": hwm - rss0,
                    "scratch": hwm - rss1,
                    "hwm": hwm - base,
                }
            )
            _reset_hwm()
            return out

    _prepare()
    base, _ = _status()
    _reset_hwm()
    with HwmMode():
        work.step()
    _, hwm_end = _status()
    gaps.append(hwm_end - base)
    step_peak = max([r["hwm"] for r in records] + gaps)
    return {"records": records, "step_peak": step_peak, "gap_peak": max(gaps)}


def _alloc_step(work: Any) -> dict[str, Any]:
    """One step under torch.profiler: per top-level op, the CPU allocator's peak live bytes above its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work.step()
    events = list(prof.profiler.kineto_results.events())  # type: ignore[union-attr]
    mem = sorted((e.start_ns(), int(e.nbytes())) for e in events if e.name() == "[memory]")
    ops = sorted(
        (
            (e.start_ns(), e.start_ns() + e.duration_ns(), e.name())
            for e in events
            if e.name().startswith("aten::") or e.name().startswith("autograd::engine")
        ),
        key=lambda t: (t[0], -t[1]),
    )
    top: list[tuple[int, int, str]] = []
    for s, e, name in ops:  # outermost aten ops only (nested calls fall inside their parent)
        if name.startswith("autograd::engine"):
            continue
        if top and s < top[-1][1]:
            continue
        top.append((s, e, name))
    live, k, out = 0, 0, []
    overall = 0
    for s, e, name in top:
        while k < len(mem) and mem[k][0] < s:
            live += mem[k][1]
            overall = max(overall, live)
            k += 1
        start, peak = live, live
        while k < len(mem) and mem[k][0] <= e:
            live += mem[k][1]
            peak = max(peak, live)
            k += 1
        overall = max(overall, peak)
        out.append({"op": name.removeprefix("aten::"), "alloc_peak": peak - start, "alloc_held": live - start})
    while k < len(mem):
        live += mem[k][1]
        overall = max(overall, live)
        k += 1
    return {"alloc_ops": out, "alloc_step_peak": overall}


def child(mode: str, batch: int, mkldnn: bool, model: str = "cnn3", phase: str = "training") -> dict[str, Any]:
    from xfbench.benchmarks.harness.worker import measure_cpu_step, pin_malloc_threshold

    pin_malloc_threshold()  # before the framework's import, as the suite's worker does
    import torch

    result: dict[str, Any] = {"mode": mode, "batch": batch, "mkldnn": mkldnn, "threads": torch.get_num_threads()}
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        work = _workload(batch, model, phase)
        if mode == "whole":
            _prepare()
            result["first_step"] = measure_cpu_step(work.step)[1]
            result["second_step"] = measure_cpu_step(work.step)[1]
        elif mode == "ops":
            result["first"] = _ops_step(work)
            result["second"] = _ops_step(work)
        else:
            result.update(_alloc_step(work))
    return result


def _run_child(mode: str, batch: int, mkldnn: bool, model: str, phase: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(batch), "1" if mkldnn else "0"]
    cmd += [model, phase]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-800:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _top_table(records: list[dict[str, Any]], n: int) -> str:
    rows = sorted(enumerate(records), key=lambda r: -r[1]["scratch"])[:n]
    lines = [f"{'#':>4} {'op':<28} {'rss_before':>10} {'new':>8} {'held':>8} {'peak':>8} {'scratch':>8} {'hwm':>8}"]
    for i, r in sorted(rows):
        lines.append(
            f"{i:>4} {r['op']:<28} {r['rss_before'] / MB:>10.1f} {r['new'] / MB:>8.1f} {r['held'] / MB:>8.1f} "
            f"{r['peak'] / MB:>8.1f} {r['scratch'] / MB:>8.1f} {r['hwm'] / MB:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--modes", nargs="+", default=["whole", "ops", "alloc"], choices=["whole", "ops", "alloc"])
    p.add_argument("--mkldnn", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--top", type=int, default=12, help="ops listed per configuration (largest scratch)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--model", default="cnn3", help="catalog name or spec file (default cnn3, gap A)")
    p.add_argument("--phase", default="training", choices=["training", "inference"])
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, batch, mk, model, phase = args.child
        print(json.dumps(child(mode, int(batch), mk == "1", model, phase)))
        return 0
    results = []
    for mk in args.mkldnn:
        for batch in args.batches:
            for mode in args.modes:
                r = _run_child(mode, batch, mk == "on", args.model, args.phase)
                results.append(r)
                head = f"== mkldnn {mk}, batch {batch}, {mode}"
                if mode == "whole":
                    print(f"{head}: first step {r['first_step'] / MB:.1f} MB, second {r['second_step'] / MB:.1f} MB")
                elif mode == "ops":
                    for which in ("first", "second"):
                        s = r[which]
                        print(
                            f"{head} ({which} step): peak {s['step_peak'] / MB:.1f} MB "
                            f"(between ops {s['gap_peak'] / MB:.1f} MB)"
                        )
                        print(_top_table(s["records"], args.top))
                else:
                    print(f"{head}: allocator peak over the step {r['alloc_step_peak'] / MB:.1f} MB")
                    for i, o in enumerate(r["alloc_ops"]):
                        if o["alloc_peak"] - max(o["alloc_held"], 0) > 1e6:
                            print(
                                f"  {i:>3} {o['op']:<28} alloc peak {o['alloc_peak'] / MB:8.1f} "
                                f"held {o['alloc_held'] / MB:8.1f}"
                            )
                sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
