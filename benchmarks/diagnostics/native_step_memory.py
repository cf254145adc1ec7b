"""Who holds the memory at a step's peak, to the native allocation: memray's high-water mark, itemized.

The suite's process-level memory figure is the RSS high-water mark above the baseline over a model's first step
in a fresh process (``benchmarks/harness/worker.py``, ``rss-hwm``). Where it differs from the simulated step and
neither the tensor level (``MemTracker``) nor a framework's allocator records account for the difference, the
difference is memory that no tensor holds: first-call state of a library, a runtime's own buffers, Python
objects. This script names it, with `memray <https://bloomberg.github.io/memray/>`_ (``pip install memray``),
which intercepts every ``malloc``/``calloc``/``realloc``/``posix_memalign``/``mmap`` of the process, C and C++
libraries included, with its native stack.

Method, per case (backend, model, phase, batch), each figure in a fresh interpreter, glibc's mmap threshold
pinned before the framework's import and the shared libraries faulted in, model, weights and batch from the
suite's ``build`` (as ``torch_conv_scratch.py`` and ``tf_step_memory.py`` do):

* ``rss``: the suite's figure, ``measure_cpu_step`` over the first step, untraced.
* ``traced``: the first step again in another fresh process, under ``memray.Tracker(native_traces=True)``
  started after the build: the RSS figure under the tracker, memray's heap high-water mark over the step
  (``metadata.peak_memory``: bytes allocated during the step and still live at its peak; a pre-existing
  allocation the step frees is not subtracted) and the allocations live at that peak
  (``get_high_watermark_allocation_records``), each attributed to an **owner**: the innermost frame of its
  native stack that matches one of ``OWNERS`` (the allocator family that asked: c10's CPU allocator for a torch
  tensor, MKL's buffer manager, oneDNN, TensorFlow's allocators, MXNet's storage manager split by its caller
  into NDArrays, temp space and oneDNN-layout copies (``REFINE``), the OpenMP runtime, the interpreter, thread
  stacks), and to a **site**: the innermost frame naming an operator (``at::_ops::X``,
  a TensorFlow kernel's ``Compute``, an MXNet operator) or else the first frame above the allocator's plumbing;
  per owner and site the bytes in blocks below glibc's mmap threshold (128 KiB, pinned) are shown apart: those
  come from the heap and are resident, a larger block is mapped and resident only where written.

* ``at the RSS peak``: memray also reads the process's RSS every millisecond (``memory_interval_ms=1``); the
  allocations live at the reading with the highest RSS (memray's temporal records: each allocation's interval
  between snapshots), itemized the same way: who holds memory when the resident set is largest, which need not
  be the moment the most bytes are allocated.
* ``glibc``: in the untraced process, glibc's ``mallinfo2()`` before and after the step: heap in use, free
  blocks the heap keeps (resident where written: memory no allocation holds, which RSS counts and memray does
  not), mapped blocks.
* ``held after``: the allocations made during the step and still live at its end (memray's every event replayed),
  per owner, with the bytes of their pages resident then (``mincore``; a block below the mmap threshold counted
  whole): for what a step keeps (a library's first-call state, a framework's caches, reordered weights) this
  is resident memory, not allocation, beside the traced RSS figure held after the step.

memray counts bytes allocated, the kernel counts pages touched: an allocation never written (oneDNN's and
TensorFlow's large scratch buffers are written in part) counts here and not in RSS, and heap that glibc keeps
after a free counts in RSS and not here. The tracker's own buffers add to the traced RSS figure, which is why
the untraced one is taken beside it. The attribution is what this measurement settles: whose allocations the
step's peak holds.

Run from the repository root, in the framework's env with memray installed (``pip install memray``)::

    nice -n 10 .tox/torch/bin/python benchmarks/diagnostics/native_step_memory.py torch mlp inference 64
    nice -n 10 .tox/tensorflow/bin/python benchmarks/diagnostics/native_step_memory.py tensorflow nin training 2
    .tox/mxnet/bin/python benchmarks/diagnostics/native_step_memory.py mxnet lstm training 16 --json out.json
    .tox/tensorflow/bin/python benchmarks/diagnostics/native_step_memory.py tensorflow cnn3 training 8,16,32

With several batches, each owner's bytes at the peak are fitted as fixed + per_sample x batch (least squares),
beside the same fit of the RSS figure and of the simulated step: which owner's growth the prediction misses.

One process at a time (the figures are memory, not time, but two steps at once on 2 cores slow both).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# glibc's mmap threshold as the suite's worker pins it (imports no framework): a smaller block comes from the
# heap, whose pages its neighbours and malloc's own headers touch; a larger one is mapped and counts in RSS only
# where written.
from xfbench.benchmarks.harness.worker import MMAP_THRESHOLD_BYTES as MMAP_THRESHOLD  # noqa: E402

MB = 1e6
BACKENDS = ("torch", "tensorflow", "mxnet")
PHASES = ("inference", "training")

#: owner -> pattern of a native frame (symbol) that marks it; tried frame by frame from the innermost, the first
#: frame matching any pattern names the owner (so a tensor that oneDNN asks c10's allocator for is c10's).
OWNERS: tuple[tuple[str, str], ...] = (
    ("torch tensors (c10 CPU allocator)", r"^c10::alloc_cpu|^c10::DefaultCPUAllocator"),
    ("MKL buffers (mkl_serv_allocate)", r"^mkl_serv_(allocate|malloc)"),
    ("oneDNN (own allocations)", r"^dnnl::|^dnnl_|^zendnn::"),
    ("TensorFlow allocator (tensors)", r"^(tensorflow|tsl)::.*(Allocat|AlignedMalloc)|^(tensorflow|tsl)::port::Malloc"),
    ("Eigen", r"^Eigen::"),
    ("MXNet storage (NDArray)", r"^mxnet::.*[Ss]torage"),
    ("OpenMP runtime", r"^gomp_|^GOMP_|^__kmp|^kmp_"),
    ("thread stacks, thread-local storage", r"^allocate_stack|^pthread_create|^_dl_allocate_tls"),
    ("Python interpreter (objects, code)", r"^_?Py[A-Z_]|^list_resize|^dictresize|^new_keys_object"),
    ("torch runtime (other)", r"^(torch|at|c10|caffe2|ideep)::"),
    ("TensorFlow runtime (other)", r"^(tensorflow|tsl|xla|mlir|absl|google::protobuf)::"),
    ("MXNet runtime (other)", r"^(mxnet|nnvm|dmlc)::"),
)
#: (owner, pattern of any frame of the stack, refined owner): where one allocator serves several purposes, the
#: caller that tells them apart (MXNet's storage manager hands out NDArrays, the temporary workspace of
#: ``Resource::get_space`` and the oneDNN-layout copies of arrays alike).
REFINE: tuple[tuple[str, str, str], ...] = (
    ("MXNet storage (NDArray)", r"^mxnet::Resource::get_(host_)?space", "MXNet temp space (Resource::get_space)"),
    ("MXNet storage (NDArray)", r"SetMKLMem|MKLDNNDataReorder|CreateMKLDNNMem", "MXNet oneDNN-layout copies"),
    ("oneDNN (own allocations)", r"^mxnet::NDArray::Chunk::MKLDNNDataReorder", "MXNet oneDNN-layout copies"),
)
#: Frames that are allocator plumbing, never a site.
PLUMBING = re.compile(
    r"^(malloc|calloc|realloc|free|posix_memalign|aligned_alloc|memalign|valloc|mmap|mmap64|operator new|"
    r"__libc_|_int_malloc|mm_internal_malloc|c10::alloc_cpu|c10::DefaultCPUAllocator|std::|__gnu_cxx::)"
)
#: A frame naming the operator on whose behalf memory was allocated, in order of preference (the innermost frame
#: matching the first pattern that matches any).
SITES = (
    re.compile(r"^at::_ops::(\w+)::call"),
    re.compile(r"^tensorflow::(?:\w+::)*(\w+Op)(?:<[^>]*>)?::Compute"),
    re.compile(r"^mxnet::op::(\w+)"),
    re.compile(r"^mkl_blas_\w*?gemm"),
    re.compile(r"^dnnl::impl::(\w+)"),
)


def symbol(frame: Any) -> str:
    """A memray native frame ``(function, file, line)``, or a bare string, as its symbol."""
    return str(frame[0] if isinstance(frame, (tuple, list)) else frame)


def attribute(stack: Sequence[Any]) -> tuple[str, str]:
    """(owner, site) of one allocation, from its native stack (innermost frame first)."""
    names = [symbol(f) for f in stack]
    owner = "other"
    for name in names:
        hit = next((label for label, pattern in OWNERS if re.search(pattern, name)), None)
        if hit is not None:
            owner = hit
            break
    for base, frame_pattern, refined in REFINE:
        if owner == base and any(re.search(frame_pattern, name) for name in names):
            owner = refined
            break
    for site_pattern in SITES:  # in order: the framework's operator before the library's routine
        for name in names:
            m = site_pattern.match(name)
            if m:
                return owner, m.group(0)
    site = next((n for n in names if not PLUMBING.match(n)), names[0] if names else "?")
    return owner, site.split("(")[0][:120]


def itemize(records: Iterable[tuple[int, int, Sequence[Any]]], top: int = 12) -> dict[str, Any]:
    """Sums (bytes, allocation count) per owner and per (owner, site) over ``(size, count, stack)`` records."""
    owners: dict[str, list[int]] = {}
    sites: dict[tuple[str, str], list[int]] = {}
    total = 0
    for size, count, stack in records:
        owner, site = attribute(stack)
        total += size
        small = size if count and size / count < MMAP_THRESHOLD else 0
        for table, key in ((owners, owner), (sites, (owner, site))):
            entry = table.setdefault(key, [0, 0, 0])  # type: ignore[arg-type]
            entry[0] += size
            entry[1] += count
            entry[2] += small
    by_owner = sorted(owners.items(), key=lambda kv: -kv[1][0])
    by_site = sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "total_bytes": total,
        "owners": [{"owner": k, "bytes": v[0], "allocations": v[1], "small_bytes": v[2]} for k, v in by_owner],
        "sites": [
            {"owner": k[0], "site": k[1], "bytes": v[0], "allocations": v[1], "small_bytes": v[2]} for k, v in by_site
        ],
    }


def live_at_end(events: Iterable[tuple[str, int, int, Any]]) -> dict[int, tuple[int, Any]]:
    """The allocations still live after a sequence of memray events ``(kind, address, size, key)`` (kind an
    ``AllocatorType`` name; memray records a ``realloc`` as a ``FREE`` of the old block and a ``REALLOC`` of the
    new one): address -> (size, key). A ``MUNMAP`` removes the mapped pages from the start or the end of a live
    mapping it overlaps, or splits it."""
    live: dict[int, tuple[int, Any]] = {}
    for kind, address, size, key in events:
        if kind in ("FREE", "PYMALLOC_FREE"):
            live.pop(address, None)
        elif kind == "MUNMAP":
            end = address + size
            for start, (length, k) in list(live.items()):
                stop = start + length
                if start >= end or stop <= address:
                    continue
                del live[start]
                if start < address:
                    live[start] = (address - start, k)
                if stop > end:
                    live[end] = (stop - end, k)
        else:
            live[address] = (size, key)
    return live


@functools.cache
def _mincore() -> Any:
    """libc's ``mincore``, loaded once."""
    import ctypes

    fn = ctypes.CDLL("libc.so.6", use_errno=True).mincore
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return fn


def resident_bytes(address: int, size: int) -> int | None:
    """Bytes of the pages of ``[address, address + size)`` resident now (``mincore``), or ``None`` where the call
    fails."""
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    start = address - address % page
    pages = (address + size - start + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    if _mincore()(start, pages * page, vec) != 0:
        return None
    return sum(v & 1 for v in vec) * page


def _held_after(reader: Any, memray: Any) -> list[dict[str, Any]]:
    """Per owner, what the step allocated and still holds at its end: bytes, and bytes resident now (a block
    below the mmap threshold counted whole: heap pages; a mapped one by ``mincore``)."""
    kinds = memray.AllocatorType
    events, owner_of = [], {}  # owner per native stack, attributed once
    for r in reader.get_allocation_records():
        kind = kinds(r.allocator).name
        key = (r.native_stack_id, r.native_segment_generation)
        if kind not in ("FREE", "PYMALLOC_FREE", "MUNMAP") and key not in owner_of:
            owner_of[key] = attribute([symbol(f) for f in r.native_stack_trace(max_stacks=40)])[0]
        events.append((kind, int(r.address), int(r.size), key))
    owners: dict[str, list[int]] = {}
    for address, (size, key) in live_at_end(events).items():
        owner = owner_of.get(key, "other")
        resident = size if size < MMAP_THRESHOLD else resident_bytes(address, size)
        entry = owners.setdefault(owner, [0, 0, 0])
        entry[0] += size
        entry[1] += resident if resident is not None else 0
        entry[2] += 1
    return [
        {"owner": k, "bytes": v[0], "resident_bytes": v[1], "allocations": v[2]}
        for k, v in sorted(owners.items(), key=lambda kv: -kv[1][1])
    ]


def live_at_snapshot(intervals: Iterable[tuple[int, int | None, int, int]], snapshot: int) -> tuple[int, int]:
    """(bytes, allocations) live when memray took snapshot ``snapshot``, from one stack's intervals
    ``(allocated_before_snapshot, deallocated_before_snapshot or None, n_allocations, n_bytes)``: an allocation
    made before snapshot ``a`` and freed before snapshot ``d`` is live at the snapshots ``a <= k < d``."""
    size = count = 0
    for allocated, deallocated, n, nbytes in intervals:
        if allocated <= snapshot and (deallocated is None or deallocated > snapshot):
            size += nbytes
            count += n
    return size, count


def _at_rss_peak(reader: Any, top: int) -> dict[str, Any]:
    """The allocations live at the snapshot (every millisecond) where memray read the highest RSS of the step,
    itemized as at the allocation peak: who holds memory when the resident set is largest."""
    snaps = list(reader.get_memory_snapshots())
    if not snaps:
        return {}
    k = max(range(len(snaps)), key=lambda i: snaps[i].rss)  # intervals count snapshots by their position
    peak = snaps[k]
    records = []
    for r in reader.get_temporal_allocation_records(merge_threads=True):
        spans = [
            (i.allocated_before_snapshot, i.deallocated_before_snapshot, i.n_allocations, i.n_bytes)
            for i in r.intervals
        ]
        size, count = live_at_snapshot(spans, k)
        if size:
            records.append((size, count, [symbol(f) for f in r.native_stack_trace(max_stacks=40)]))
    out = itemize(records, top)
    out.update(
        snapshot=k,
        snapshots=len(snaps),
        rss_above_first_snapshot_bytes=int(peak.rss - snaps[0].rss),
        ms_after_first_snapshot=int(peak.time - snaps[0].time),
    )
    return out


def glibc_heap() -> dict[str, int] | None:
    """glibc's ``mallinfo2()`` over all arenas, bytes: ``in_use`` (``uordblks``, allocated from the heap),
    ``free_held`` (``fordblks``, freed blocks the heap keeps: resident where they were written), ``mapped``
    (``hblkhd``, blocks served by ``mmap``), ``arena`` (``arena``, heap obtained by ``sbrk`` and arenas); ``None``
    where the C library has no ``mallinfo2`` (glibc < 2.33, musl)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    info = fn()
    return {"in_use": info.uordblks, "free_held": info.fordblks, "mapped": info.hblkhd, "arena": info.arena}


# ------------------------------------------------------------------------------------------- in the child


def child(backend: str, model: str, phase: str, batch: int, traced: bool, top: int, stacks: int = 0) -> dict[str, Any]:
    import gc

    from xfbench.benchmarks.harness.worker import (
        Arrays,
        _release_free_heap,
        build,
        measure_cpu_step,
        pin_malloc_threshold,
        populate_file_mappings,
    )
    from xfbench.benchmarks.harness.workload import Config

    pin_malloc_threshold()  # before the framework's import, as the suite's worker does
    config = Config(backend=backend, model=model, phase=phase, batch_size=batch, optimizer="sgd")
    arrays = Arrays(config)
    work = build(config, arrays)
    arrays.weights = []
    gc.collect()
    _release_free_heap()
    populate_file_mappings()
    out: dict[str, Any] = {"traced": traced}
    if not traced:
        before = glibc_heap()
        out["rss_bytes"] = measure_cpu_step(work.step)[1]
        after = glibc_heap()
        if before and after:
            out["glibc_before"], out["glibc_after"] = before, after
        return out
    import memray
    from xfbench.benchmarks.harness.worker import rss_and_hwm

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "step.bin")
        with memray.Tracker(path, native_traces=True, follow_fork=False, memory_interval_ms=1):
            baseline, out["rss_bytes"], _ = measure_cpu_step(work.step)
            out["rss_held_after_bytes"] = rss_and_hwm()[0] - baseline
        reader = memray.FileReader(path)
        out["memray_peak_bytes"] = int(reader.metadata.peak_memory)
        records = [
            (int(r.size), int(r.n_allocations), [symbol(f) for f in r.native_stack_trace(max_stacks=40)])
            for r in reader.get_high_watermark_allocation_records(merge_threads=True)
        ]
        out["held_after"] = _held_after(reader, memray)
        out["at_rss_peak"] = _at_rss_peak(reader, top)
    out.update(itemize(records, top))
    largest = sorted(records, key=lambda r: -r[0])[:stacks]
    out["largest"] = [{"bytes": size, "allocations": count, "stack": stack[:30]} for size, count, stack in largest]
    return out


def _run_child(
    backend: str, model: str, phase: str, batch: int, traced: bool, top: int, stacks: int = 0
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, model, phase, str(batch)]
    cmd += ["--top", str(top), "--stacks", str(stacks)] + (["--traced"] if traced else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-800:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def predicted(backend: str, model: str, phase: str, batch: int) -> dict[str, float]:
    """The suite's prediction for the row (process level) and the simulated tensor-level step, MB."""
    import warnings

    from xfbench.benchmarks.harness.rows import simulated_step_bytes
    from xfbench.benchmarks.harness.workload import Config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = Config(backend, model, phase, batch)
        return {"simulated_step_mb": (simulated_step_bytes(config) or 0) / MB}


def report(case: dict[str, Any]) -> str:
    t = case["traced"]
    lines = [
        f"{case['backend']} {case['model']} {case['phase']} batch {case['batch']}: first step RSS above baseline "
        f"{case['rss']['rss_bytes'] / MB:.2f} MB untraced, {t['rss_bytes'] / MB:.2f} MB traced; memray's heap "
        f"high-water mark over the step {t['memray_peak_bytes'] / MB:.2f} MB "
        f"(the simulated step without the probe's overhead: {case['predicted']['simulated_step_mb']:.2f} MB)",
        "",
        f"{'owner at the peak':44s} {'MB':>9s} {'< 128 KiB':>9s} {'allocs':>7s}",
    ]
    g0, g1 = case["rss"].get("glibc_before"), case["rss"].get("glibc_after")
    if g0 and g1:
        lines.insert(
            1,
            "glibc's heap over the untraced step (mallinfo2, change): "
            + ", ".join(f"{k} {(g1[k] - g0[k]) / MB:+.2f} MB" for k in ("in_use", "free_held", "mapped", "arena"))
            + f"; free blocks it holds after the step {g1['free_held'] / MB:.2f} MB",
        )
    lines += [
        f"{o['owner']:44s} {o['bytes'] / MB:9.3f} {o['small_bytes'] / MB:9.3f} {o['allocations']:7d}"
        for o in t["owners"]
    ]
    lines += ["", f"{'owner':36s} {'site':52s} {'MB':>9s} {'< 128 KiB':>9s} {'allocs':>7s}"]
    lines += [
        f"{s['owner'][:36]:36s} {s['site'][:52]:52s} {s['bytes'] / MB:9.3f} {s['small_bytes'] / MB:9.3f} "
        f"{s['allocations']:7d}"
        for s in t["sites"]
    ]
    if t.get("at_rss_peak"):
        p = t["at_rss_peak"]
        lines += [
            "",
            f"at the RSS peak (memray's snapshot {p['snapshot']} of {p['snapshots']}, "
            f"{p['ms_after_first_snapshot']} ms in, RSS {p['rss_above_first_snapshot_bytes'] / MB:.2f} MB above the "
            "first snapshot): live allocations "
            f"of the step {p['total_bytes'] / MB:.2f} MB",
            f"{'owner':44s} {'MB':>9s} {'< 128 KiB':>9s} {'allocs':>7s}",
        ]
        lines += [
            f"{o['owner'][:44]:44s} {o['bytes'] / MB:9.3f} {o['small_bytes'] / MB:9.3f} {o['allocations']:7d}"
            for o in p["owners"]
        ]
        lines += [f"  {s['owner'][:34]:34s} {s['site'][:52]:52s} {s['bytes'] / MB:9.3f}" for s in p["sites"]]
    if "held_after" in t:
        lines += [
            "",
            f"held after the step: RSS {t['rss_held_after_bytes'] / MB:.2f} MB above the baseline (traced); "
            "allocations of the step still live, per owner:",
            f"{'owner':44s} {'MB':>9s} {'resident':>9s} {'allocs':>7s}",
        ]
        lines += [
            f"{o['owner'][:44]:44s} {o['bytes'] / MB:9.3f} {o['resident_bytes'] / MB:9.3f} {o['allocations']:7d}"
            for o in t["held_after"]
        ]
    for rec in t.get("largest", []):
        lines += ["", f"{rec['bytes'] / MB:.3f} MB in {rec['allocations']} allocation(s):"]
        lines += [f"    {frame.split('(')[0][:150]}" for frame in rec["stack"]]
    return "\n".join(lines)


def slopes(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per owner, the bytes at memray's peak at each batch and the least-squares fit bytes = fixed +
    per_sample x batch; the untraced RSS figure and the simulated step alongside (MB)."""
    batches = [c["batch"] for c in cases]

    def fit(values: list[float]) -> tuple[float, float]:
        n, mx, my = len(batches), sum(batches) / len(batches), sum(values) / len(values)
        sxx = sum((b - mx) ** 2 for b in batches)
        slope = sum((b - mx) * (v - my) for b, v in zip(batches, values)) / sxx if n > 1 and sxx else 0.0
        return my - slope * mx, slope

    series: dict[str, list[float]] = {
        "RSS above baseline (untraced)": [c["rss"]["rss_bytes"] / MB for c in cases],
        "memray's peak (all owners)": [c["traced"]["memray_peak_bytes"] / MB for c in cases],
        "simulated step (no overhead term)": [c["predicted"]["simulated_step_mb"] for c in cases],
    }
    for owner in dict.fromkeys(o["owner"] for c in cases for o in c["traced"]["owners"]):
        series[owner] = [sum(o["bytes"] for o in c["traced"]["owners"] if o["owner"] == owner) / MB for c in cases]
    if all(c["traced"].get("at_rss_peak") for c in cases):
        peaks = [c["traced"]["at_rss_peak"] for c in cases]
        for owner in dict.fromkeys(o["owner"] for p in peaks for o in p["owners"]):
            series[f"at the RSS peak: {owner}"] = [
                sum(o["bytes"] for o in p["owners"] if o["owner"] == owner) / MB for p in peaks
            ]
    out = []
    for name, values in series.items():
        fixed, per_sample = fit(values)
        out.append({"series": name, "mb": values, "fixed_mb": fixed, "per_sample_mb": per_sample})
    return out


def slope_table(rows: list[dict[str, Any]], batches: Sequence[int]) -> str:
    head = f"{'MB at the peak, by batch':44s} " + " ".join(f"{'b' + str(b):>9s}" for b in batches)
    lines = [head + f" {'fixed':>9s} {'/sample':>9s}"]
    for r in rows:
        cells = " ".join(f"{v:9.3f}" for v in r["mb"])
        lines.append(f"{r['series'][:44]:44s} {cells} {r['fixed_mb']:9.3f} {r['per_sample_mb']:9.4f}")
    return "\n".join(lines)


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch {text!r} is not a list of integers, e.g. 8 or 8,16,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch {text!r} must be positive integers, e.g. 8 or 8,16,32")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("model", help="catalog model or spec file")
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("batch", type=_batches, help="a batch, or several (8,16,32): then each owner's slope too")
    parser.add_argument("--top", type=int, default=12, help="sites to list (default 12)")
    parser.add_argument("--stacks", type=int, default=0, help="print the native stacks of the N largest records")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        batch = args.batch[0]
        print(json.dumps(child(args.backend, args.model, args.phase, batch, args.traced, args.top, args.stacks)))
        return 0
    try:
        import memray  # noqa: F401
    except ImportError:
        print("native_step_memory: memray is not installed in this env; install it with: pip install memray")
        return 2
    from xfbench.analytics.spec import SpecError
    from xfbench.benchmarks.harness.workload import Config

    try:  # the model, in the parent: a bad name is one line, not a child's traceback
        Config(args.backend, args.model, args.phase, args.batch[0]).spec()
    except SpecError as exc:
        print(f"native_step_memory: {exc}")
        return 2
    cases: list[dict[str, Any]] = []
    failed: list[int] = []
    for batch in args.batch:
        case: dict[str, Any] = {"backend": args.backend, "model": args.model, "phase": args.phase, "batch": batch}
        try:
            case["rss"] = _run_child(args.backend, args.model, args.phase, batch, False, args.top)
            case["traced"] = _run_child(args.backend, args.model, args.phase, batch, True, args.top, args.stacks)
        except RuntimeError as exc:  # the child's own error, its last line; the other batches still run
            print(f"native_step_memory: batch {batch} failed: {str(exc).strip().splitlines()[-1]}", flush=True)
            failed.append(batch)
            continue
        case["predicted"] = predicted(args.backend, args.model, args.phase, batch)
        cases.append(case)
        print(report(case), end="\n\n", flush=True)
    if not cases:
        return 1
    out: dict[str, Any] = cases[0] if len(cases) == 1 else {"cases": cases, "slopes": slopes(cases)}
    if len(cases) > 1:
        print(slope_table(out["slopes"], [c["batch"] for c in cases]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
