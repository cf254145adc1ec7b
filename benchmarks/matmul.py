"""The matmul sweep: CPU vs GPU timing of matrix products beside the roofline model (``xfbench matmul``).

Order of work (:func:`run_sweep`):

1. Peaks, measured on this machine in this run, per (backend, device) - from the fastest timed call, since a
   peak is a capability and a shared machine only ever slows calls down: the launch overhead (a 1x1x1
   matmul), device-memory bandwidth (a large copy: 2 x bytes / time), host<->device bandwidth and latency
   (GPU), the latency of one blocking scalar read, and the compute peak per dtype (a large square matmul).
   A device's peak and bandwidth are the best any backend reached; a backend's overheads are its own.
2. The sweep: every (backend, device, dtype, shape), with transfers excluded and (on a GPU) included. Each
   row carries the measured median and the roofline prediction ``max(F / peak, B / bandwidth) + overhead``
   (+ three host<->device copies when transfers are included), ``prediction_basis = "measured-peaks"``.
3. The crossover: the smallest square size at which the GPU, transfers included, beats the CPU - measured
   where a GPU exists; otherwise predicted from this CPU's measured figures against the datasheet figures
   of :data:`analytics.roofline.DEVICE_CATALOG` (labelled datasheet-based).
4. D2L 5.6.5 ex3 (``kind="logging"``): 1000 products of 100x100 matrices logging tr(M M^T), a blocking
   device->host read per step vs the log kept on the device and read once.
5. D2L 5.6.5 ex4 (``kind="concurrency"``): two matmuls at the same time vs in sequence: on two GPUs where
   there are two, on two CUDA streams of one GPU (torch), and on the CPU as two worker processes with one
   thread each vs one such process doing both.

Timing: one honest warm-up call, then calls until both ``min_rounds`` and ``min_time_s`` are reached (at
most ``max_rounds``); each call synchronizes its device. Times are medians; each row's time statistics are one
:class:`benchmarks.harness.measurement.Measurement` of its calls. ``numpy`` is the plain CPU baseline backend.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from xfbench.analytics.roofline import (
    DEVICE_CATALOG,
    DeviceSpec,
    bound,
    dtype_bytes,
    get_device,
    matmul_bytes,
    matmul_flops,
    matmul_time,
    measured_device,
    predict_crossover,
    roofline_time,
    transfer_time,
)
from xfbench.analytics.vocab import DTYPES, device_kind, normalize_device
from xfbench.backends.common import is_oom_error, tf32_row_value
from xfbench.benchmarks.harness.measurement import Measurement

ALL_BACKENDS = ("numpy", "torch", "tensorflow", "mxnet")
DEFAULT_SIZES: tuple[int, ...] = tuple(2**i for i in range(6, 14))  # 64 .. 8192
QUICK_SIZES: tuple[int, ...] = (64, 128, 256, 512, 1024)
# DeepBench GEMM shapes are quoted as M x N x K; stored here as (m, k, n) to match the MxKxN shape column.
DEEPBENCH_SHAPES: tuple[tuple[int, int, int], ...] = ((4096, 4096, 7000), (1760, 1760, 16))
_CPU_FLAGS_FOR = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


@dataclass(frozen=True)
class SweepConfig:
    """What to measure. ``devices`` ``None`` = every device each backend sees. Sizes are square n;
    ``shapes`` are extra (m, k, n). ``peak_size``/``copy_bytes``: the CPU's peak probes (``None`` = 2048 /
    256 MiB); ``gpu_peak_size``/``gpu_copy_bytes``: a GPU's (``None`` = 8192 / 1 GiB, whatever the profile:
    a smaller matmul or copy does not fill a GPU, and would understate its peaks and so every roofline
    prediction). ``predict_gpu``: catalog GPU for the crossover prediction without a GPU.
    """

    backends: tuple[str, ...] = ALL_BACKENDS
    devices: tuple[str, ...] | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    shapes: tuple[tuple[int, int, int], ...] = DEEPBENCH_SHAPES
    dtypes: tuple[str, ...] = DTYPES
    min_time_s: float = 0.2
    min_rounds: int = 3
    max_rounds: int = 200
    peak_size: int | None = None
    copy_bytes: int | None = None
    gpu_peak_size: int | None = None
    gpu_copy_bytes: int | None = None
    logging_steps: int = 1000
    logging_size: int = 100
    concurrency_size: int | None = None
    exercises: bool = True
    predict_gpu: str = "h100"
    plot: bool = True


QUICK = SweepConfig(sizes=QUICK_SIZES, shapes=((1760, 1760, 16),), min_time_s=0.05, peak_size=1024, copy_bytes=64 << 20)


def time_callable(
    fn: Callable[[], object], min_time_s: float = 0.2, min_rounds: int = 3, max_rounds: int = 200, warmup: int = 1
) -> Measurement:
    """Times ``fn`` (which must synchronize its device): ``warmup`` untimed calls, then timed calls until
    ``min_rounds`` calls and ``min_time_s`` seconds are reached, at most ``max_rounds``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < max_rounds and (len(times) < min_rounds or sum(times) < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Measurement.of(times)


# --- numpy, the plain CPU baseline: the same interface as backends.<fw>.ops ---------------------------------


def _np_matmul_timer(
    m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", transfers: bool = False, seed: int = 0
) -> Callable[[], None]:
    if dtype != "float32":
        raise ValueError(f"numpy baseline: dtype {dtype!r} not measured (no bfloat16; float16 has no BLAS)")
    a = np.random.default_rng(seed).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(seed + 1).standard_normal((k, n), dtype=np.float32)

    def run() -> None:
        np.matmul(a, b)

    return run


def _np_copy(nbytes: int, device: str = "cpu") -> Callable[[], None]:
    src = np.ones(max(1, nbytes // 4), dtype=np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def _np_scalar_read(device: str = "cpu") -> Callable[[], float]:
    x = np.ones((), dtype=np.float32)
    return lambda: float(x)


NUMPY_OPS = SimpleNamespace(
    NAME="numpy",
    VERSION=np.__version__,
    list_devices=lambda: ["cpu"],
    dtype_support=lambda device, dtype: None if dtype == "float32" else "numpy has no bfloat16 / BLAS float16",
    matmul_timer=_np_matmul_timer,
    copy_bandwidth_callable=_np_copy,
    scalar_read_callable=_np_scalar_read,
)


def load_ops(backend: str) -> Any:
    """The ops module of ``backend`` (``numpy`` is built in); raises ``ImportError`` if it cannot load."""
    if backend == "numpy":
        return NUMPY_OPS
    return importlib.import_module(f"xfbench.backends.{backend}.ops")


def cpu_native_dtype(dtype: str) -> str | None:
    """``None`` if this CPU computes ``dtype`` natively, else why not (read from /proc/cpuinfo flags)."""
    needed = _CPU_FLAGS_FOR.get(dtype)
    if not needed:
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        flags = []
    if any(f in flags for f in needed):
        return None
    return f"this CPU has no native {dtype} arithmetic (no {' / '.join(needed)} flag); frameworks would emulate it"


def _shape_text(m: int, k: int, n: int) -> str:
    return f"{m}x{k}x{n}"


def probe_sizes(cfg: SweepConfig, device: str) -> tuple[int, int]:
    """(square size of the compute-peak matmul, bytes of the bandwidth copy) for ``device`` under ``cfg``."""
    if device_kind(device) == "gpu":
        return cfg.gpu_peak_size or 8192, cfg.gpu_copy_bytes or (1 << 30)
    return cfg.peak_size or 2048, cfg.copy_bytes or (256 << 20)


# --- peaks ---------------------------------------------------------------------------------------------------


@dataclass
class Peaks:
    """What step 1 measured. Keys: (backend, device) or (device, dtype)/(device,)."""

    overhead: dict[tuple[str, str], float] = field(default_factory=dict)
    read_latency: dict[tuple[str, str], float] = field(default_factory=dict)
    copy_bw: dict[tuple[str, str], float] = field(default_factory=dict)
    h2d_bw: dict[tuple[str, str], float] = field(default_factory=dict)
    d2h_bw: dict[tuple[str, str], float] = field(default_factory=dict)
    link_latency: dict[tuple[str, str], float] = field(default_factory=dict)
    flops: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (backend, device, dtype)

    def device_flops(self, device: str, dtype: str) -> float | None:
        vals = [v for (_, d, t), v in self.flops.items() if d == device and t == dtype]
        return max(vals) if vals else None

    def device_bw(self, device: str) -> float | None:
        vals = [v for (_, d), v in self.copy_bw.items() if d == device]
        return max(vals) if vals else None

    def spec(self, backend: str, device: str) -> DeviceSpec | None:
        """This device as measured (peaks: best backend; overheads and link: ``backend``'s)."""
        bw = self.device_bw(device)
        flops = {t: v for t in DTYPES if (v := self.device_flops(device, t)) is not None}
        if bw is None or not flops or (backend, device) not in self.overhead:
            return None
        return measured_device(
            f"{device} (measured, {backend})",
            device_kind(device),
            flops,
            bw,
            self.overhead[(backend, device)],
            self.h2d_bw.get((backend, device)),
            self.link_latency.get((backend, device), 0.0),
        )


# --- the sweep -----------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    png_path: Path | None = None
    peaks: Peaks = field(default_factory=Peaks)


class _Sweep:
    def __init__(self, cfg: SweepConfig, writer: Any, log: Callable[[str], None]) -> None:
        self.cfg, self.writer, self.log = cfg, writer, log
        self.result = SweepResult(csv_path=getattr(writer, "path", None))
        self.peaks = self.result.peaks
        self.ops: dict[str, Any] = {}
        self.devices: dict[str, list[str]] = {}
        self._env: dict[str, Any] | None = None

    # rows
    def device_name(self, device: str) -> str:
        if self._env is None:
            from xfbench.reports.env import fingerprint

            self._env = dict(fingerprint())
        return str(self._env.get("cpu_model" if device == "cpu" else "gpu_name", ""))

    def emit(self, row: dict[str, Any]) -> dict[str, Any]:
        row.setdefault("status", "ok")
        if row.get("device"):
            row.setdefault("device_name", self.device_name(row["device"]))
            row.setdefault("tf32", tf32_row_value(row["device"]))
        if row.get("backend") in self.ops:
            row.setdefault("framework_version", self.ops[row["backend"]].VERSION)
        if self.writer is not None:
            self.writer.write_row(row)
        self.result.rows.append(row)
        return row

    def timing(self, fn: Callable[[], object], min_rounds: int | None = None) -> Measurement:
        c = self.cfg
        return time_callable(fn, c.min_time_s, min_rounds or c.min_rounds, c.max_rounds)

    # step 0
    def load(self) -> None:
        for b in self.cfg.backends:
            try:
                ops = load_ops(b)
            except Exception as exc:  # a framework that is absent or fails to import: one skipped row
                reason = f"{b} not usable here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                self.emit({"kind": "matmul", "backend": b, "status": "skipped", "message": reason})
                self.log(f"skipped {b}: {reason}")
                continue
            self.ops[b] = ops
            seen = list(ops.list_devices())
            want = seen if self.cfg.devices is None else [normalize_device(d) for d in self.cfg.devices]
            self.devices[b] = [d for d in want if d in seen]
            for d in want:
                if d not in seen:
                    msg = f"device {d} not visible to {b} (has: {', '.join(seen)})"
                    self.emit({"kind": "matmul", "backend": b, "device": d, "status": "skipped", "message": msg})

    def dtype_skip(self, b: str, device: str, dtype: str) -> str | None:
        if device == "cpu" and (reason := cpu_native_dtype(dtype)):
            return reason
        return self.ops[b].dtype_support(device, dtype)  # type: ignore[no-any-return]

    # step 1
    def measure_peaks(self) -> None:
        c, p = self.cfg, self.peaks
        peak_rows: list[dict[str, Any]] = []
        for b, ops in self.ops.items():
            for d in self.devices[b]:
                gpu = device_kind(d) == "gpu"
                self.log(f"peaks: {b} {d} ...")
                p.overhead[(b, d)] = self.timing(ops.matmul_timer(1, 1, 1, "float32", d), 20).median
                p.read_latency[(b, d)] = self.timing(ops.scalar_read_callable(d), 20).median
                peak_n, nbytes = probe_sizes(c, d)
                t = self.timing(ops.copy_bandwidth_callable(nbytes, d))
                p.copy_bw[(b, d)] = 2 * nbytes / t.min  # a capability: the fastest call
                self.emit(
                    {
                        "kind": "transfer",
                        "backend": b,
                        "device": d,
                        "dtype": "float32",
                        "shape": f"device-copy:{nbytes}",
                        **t.columns(),
                        "message": f"device memory bandwidth {p.copy_bw[(b, d)] / 1e9:.2f} GB/s "
                        f"(2 x {nbytes} bytes read+written); launch overhead {p.overhead[(b, d)] * 1e6:.1f} us; "
                        f"scalar read {p.read_latency[(b, d)] * 1e6:.1f} us",
                    }
                )
                if gpu:
                    small = self.timing(ops.host_transfer_callable(4, d, "h2d"), 20)
                    p.link_latency[(b, d)] = small.median
                    for direction, store in (("h2d", p.h2d_bw), ("d2h", p.d2h_bw)):
                        t = self.timing(ops.host_transfer_callable(nbytes // 4, d, direction))
                        store[(b, d)] = (nbytes // 4) / t.min
                        self.emit(
                            {
                                "kind": "transfer",
                                "backend": b,
                                "device": d,
                                "dtype": "float32",
                                "shape": f"{direction}:{nbytes // 4}",
                                **t.columns(),
                                "message": f"host link {direction} {store[(b, d)] / 1e9:.2f} GB/s (pageable host "
                                f"memory); 4-byte copy latency {small.median * 1e6:.1f} us",
                            }
                        )
                for dtype in c.dtypes:
                    if self.dtype_skip(b, d, dtype):
                        continue
                    n = peak_n
                    try:
                        t = self.timing(ops.matmul_timer(n, n, n, dtype, d))
                    except Exception as exc:
                        self.log(f"peak probe {b} {d} {dtype} failed: {type(exc).__name__}: {exc}")
                        continue
                    p.flops[(b, d, dtype)] = matmul_flops(n, n, n) / t.min
                    peak_rows.append({"backend": b, "device": d, "dtype": dtype, "n": n, "t": t})
        for r in peak_rows:
            b, d, dtype, n, t = r["backend"], r["device"], r["dtype"], r["n"], r["t"]
            achieved = matmul_flops(n, n, n) / t.median  # the row reports the median; the peak used t.min
            peak = p.device_flops(d, dtype) or achieved
            pred = self.predict_row(b, d, dtype, n, n, n, False)
            self.emit(
                {
                    "kind": "matmul",
                    "backend": b,
                    "device": d,
                    "dtype": dtype,
                    "shape": _shape_text(n, n, n),
                    "transfers": "excluded",
                    **t.columns(),
                    "flops_predicted": matmul_flops(n, n, n),
                    "achieved_flops_per_s": achieved,
                    "gflops_per_s": achieved / 1e9,
                    "peak_fraction": achieved / peak,
                    "time_predicted_s": pred["time_predicted_s"],
                    "time_rel_error": (pred["time_predicted_s"] - t.median) / t.median,
                    "prediction_basis": "measured-peaks",
                    "message": "compute-peak probe (the device peak: the best backend's fastest call of this probe)",
                }
            )

    # step 2
    def predict_row(self, b: str, d: str, dtype: str, m: int, k: int, n: int, transfers: bool) -> dict[str, Any]:
        p = self.peaks
        peak, bw = p.device_flops(d, dtype), p.device_bw(d)
        if peak is None or bw is None:
            return {}
        flops, nbytes = matmul_flops(m, k, n), matmul_bytes(m, k, n, dtype)
        t = roofline_time(flops, nbytes, peak, bw, p.overhead[(b, d)])
        if transfers and (b, d) in p.h2d_bw:
            eb, lat = dtype_bytes(dtype), p.link_latency[(b, d)]
            t += transfer_time((m * k + k * n) * eb, p.h2d_bw[(b, d)], 2 * lat)
            t += transfer_time(m * n * eb, p.d2h_bw[(b, d)], lat)
        return {"time_predicted_s": t, "bound": bound(flops, nbytes, peak, bw), "peak": peak, "bw": bw}

    def sweep(self) -> None:
        c = self.cfg
        shapes = [(s, s, s) for s in sorted(set(c.sizes))] + [tuple(s) for s in c.shapes]
        for b, ops in self.ops.items():
            for d in self.devices[b]:
                for dtype in c.dtypes:
                    base = {"kind": "matmul", "backend": b, "device": d, "dtype": dtype}
                    reason = self.dtype_skip(b, d, dtype)
                    if reason is None and self.peaks.device_flops(d, dtype) is None:
                        reason = "no compute peak measured for this dtype (peak probe failed)"
                    if reason:
                        self.emit({**base, "status": "skipped", "message": reason})
                        self.log(f"skipped {b} {d} {dtype}: {reason}")
                        continue
                    for m, k, n in shapes:
                        for transfers in (False, True) if device_kind(d) == "gpu" else (False,):
                            self.one(ops, base, m, k, n, transfers)

    def one(self, ops: Any, base: dict[str, Any], m: int, k: int, n: int, transfers: bool) -> None:
        b, d, dtype = base["backend"], base["device"], base["dtype"]
        row = {**base, "shape": _shape_text(m, k, n), "transfers": "included" if transfers else "excluded"}
        try:
            t = self.timing(ops.matmul_timer(m, k, n, dtype, d, transfers))
        except Exception as exc:
            text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            oom = is_oom_error(exc)
            self.emit({**row, "status": "oom" if oom else "error", "message": text})
            self.log(f"{b} {d} {dtype} {row['shape']}: {text}")
            return
        flops = matmul_flops(m, k, n)
        pred = self.predict_row(b, d, dtype, m, k, n, transfers)
        achieved = flops / t.median
        if pred["bound"] == "compute":
            fraction = achieved / pred["peak"]
        else:
            fraction = matmul_bytes(m, k, n, dtype) / t.median / pred["bw"]
        deepbench = (m, k, n) in DEEPBENCH_SHAPES
        note = f"roofline: {pred['bound']}-bound; peak_fraction vs measured {pred['bound']} peak"
        if deepbench:
            note += f"; DeepBench M={m} N={n} K={k}"
        self.emit(
            {
                **row,
                **t.columns(),
                "flops_predicted": flops,
                "achieved_flops_per_s": achieved,
                "gflops_per_s": achieved / 1e9,
                "peak_fraction": fraction,
                "time_predicted_s": pred["time_predicted_s"],
                "time_rel_error": (pred["time_predicted_s"] - t.median) / t.median,
                "prediction_basis": "measured-peaks",
                "message": note,
            }
        )

    # step 3
    def crossover(self) -> None:
        c, p = self.cfg, self.peaks
        grid = list(range(8, 16385, 8))
        squares = sorted(set(c.sizes))
        any_gpu = False
        for b in self.ops:
            gpus = [d for d in self.devices[b] if device_kind(d) == "gpu"]
            if "cpu" not in self.devices[b]:
                continue
            for g in gpus:
                any_gpu = True
                gpu_t = self._medians(b, g, "included")
                cpu_t = self._medians(b, "cpu", "excluded")
                measured = next((n for n in squares if n in gpu_t and n in cpu_t and gpu_t[n] < cpu_t[n]), None)
                cpu_spec, gpu_spec = p.spec(b, "cpu"), p.spec(b, g)
                predicted = predict_crossover(cpu_spec, gpu_spec, grid) if cpu_spec and gpu_spec else None
                text = (
                    f"{b}: {g} (transfers included) beats the CPU from n = {measured} (measured on sizes "
                    f"{', '.join(map(str, squares))}); roofline with measured peaks predicts n = {predicted}"
                    if measured
                    else f"{b}: {g} (transfers included) never beat the CPU on sizes {', '.join(map(str, squares))}; "
                    f"roofline with measured peaks predicts n = {predicted}"
                )
                self.note(text)
                self.emit(
                    {
                        "kind": "exercise",
                        "backend": b,
                        "device": g,
                        "dtype": "float32",
                        "shape": "crossover",
                        "prediction_basis": "measured-peaks",
                        "message": text,
                    }
                )
        if any_gpu:
            return
        cpu_backends = [b for b in self.ops if "cpu" in self.devices[b]]
        if not cpu_backends:
            return
        # The fastest CPU backend's overhead with the best measured peaks: the CPU at its best.
        best = min(cpu_backends, key=lambda b: p.overhead[(b, "cpu")])
        cpu_spec = p.spec(best, "cpu")
        if cpu_spec is None:
            return
        self.note(
            "no GPU on this machine: the crossover is predicted from this CPU's measured peaks "
            f"({cpu_spec.peak('float32') / 1e9:.1f} GFLOP/s float32, {cpu_spec.mem_bandwidth / 1e9:.1f} GB/s, "
            f"{cpu_spec.launch_overhead_s * 1e6:.1f} us per call) against datasheet GPU figures (datasheet-based)"
        )
        targets = [c.predict_gpu] + [k for k, v in DEVICE_CATALOG.items() if v.kind == "gpu" and k != c.predict_gpu]
        for name in targets:
            gpu_spec = get_device(name)
            n = predict_crossover(cpu_spec, gpu_spec, grid)
            text = (
                f"predicted (datasheet-based, {name}): the GPU incl. transfers would beat this CPU from n = {n} "
                f"(square float32 matmul; searched 8..16384)"
            )
            self.note(text)
            self.emit(
                {
                    "kind": "exercise",
                    "backend": best,
                    "device": "cpu",
                    "dtype": "float32",
                    "shape": "crossover",
                    "prediction_basis": f"datasheet:{name}",
                    "time_predicted_s": matmul_time(n, n, n, gpu_spec, "float32", True) if n else None,
                    "message": text + f"; no GPU present; {name}: {gpu_spec.source}",
                }
            )

    def _medians(self, b: str, d: str, transfers: str) -> dict[int, float]:
        out = {}
        for r in self.result.rows:
            if (
                r.get("kind") == "matmul"
                and r.get("backend") == b
                and r.get("device") == d
                and r.get("dtype") == "float32"
                and r.get("transfers") == transfers
                and r.get("status") == "ok"
                and r.get("time_predicted_s") is not None
            ):
                m, k, n = map(int, r["shape"].split("x"))
                if m == k == n:
                    out[n] = float(r["time_median_s"])
        return out

    def note(self, text: str) -> None:
        self.result.notes.append(text)
        self.log(text)

    # step 4
    def logging_exercise(self) -> None:
        c, p = self.cfg, self.peaks
        s, steps = c.logging_size, c.logging_steps
        for b, ops in self.ops.items():
            if not hasattr(ops, "trace_logging"):
                continue
            for d in self.devices[b]:
                logs = {}
                for per_step in (True, False):
                    fn = ops.trace_logging(d, steps, s, per_step)
                    t = time_callable(fn, min_time_s=0.0, min_rounds=3, max_rounds=3)
                    logs[per_step] = fn()
                    pr = self.predict_row(b, d, "float32", s, s, s, False)
                    # per step: the matmul, M*M and the sum (three launches); then the reads.
                    step = pr["time_predicted_s"] + 2 * p.overhead[(b, d)] if pr else None
                    reads = steps if per_step else 1
                    predicted = steps * step + reads * p.read_latency[(b, d)] if step is not None else None
                    self.emit(
                        {
                            "kind": "logging",
                            "backend": b,
                            "device": d,
                            "dtype": "float32",
                            "shape": _shape_text(s, s, s),
                            "transfers": "per-step-read" if per_step else "one-read",
                            "batch_size": steps,
                            **t.columns(),
                            "flops_predicted": steps * matmul_flops(s, s, s),
                            "time_predicted_s": predicted,
                            "time_rel_error": (predicted - t.median) / t.median if predicted else None,
                            "prediction_basis": "measured-peaks",
                            "message": f"D2L 5.6.5 ex3: {steps} products logging tr(MM^T); "
                            + (f"{steps} blocking device->host reads" if per_step else "log on the device, one read"),
                        }
                    )
                same = bool(np.allclose(logs[True], logs[False], rtol=1e-5))
                per, once = self._last_two("logging", b, d)
                self.note(
                    f"ex3 {b} {d}: per-step reads {per * 1e3:.1f} ms, one read {once * 1e3:.1f} ms "
                    f"({per / once:.2f}x); logs identical: {same}"
                )

    def _last_two(self, kind: str, b: str, d: str) -> tuple[float, float]:
        rows = [r for r in self.result.rows if r.get("kind") == kind and r["backend"] == b and r["device"] == d]
        return float(rows[-2]["time_median_s"]), float(rows[-1]["time_median_s"])

    # step 5
    def concurrency_exercise(self) -> None:
        c = self.cfg
        done_gpu = False
        for b, ops in self.ops.items():
            gpus = [d for d in self.devices[b] if device_kind(d) == "gpu"]
            size = c.concurrency_size or 8192
            if len(gpus) >= 2 and hasattr(ops, "two_device_matmul"):
                pair = (gpus[0], gpus[1])
                seq = self.timing(ops.two_device_matmul(size, pair, False))
                conc = self.timing(ops.two_device_matmul(size, pair, True))
                self._concurrency_rows(b, pair[0], size, seq, conc, 2.0, f"two GPUs ({pair[0]}, {pair[1]})")
                done_gpu = True
            elif len(gpus) == 1 and hasattr(ops, "two_stream_matmul"):
                seq = self.timing(ops.two_stream_matmul(size, gpus[0], False))
                conc = self.timing(ops.two_stream_matmul(size, gpus[0], True))
                self._concurrency_rows(
                    b,
                    gpus[0],
                    size,
                    seq,
                    conc,
                    1.0,
                    f"one GPU: two CUDA streams on {gpus[0]} (predicted 1.0: one large matmul fills the GPU)",
                )
                done_gpu = True
            elif len(gpus) == 1:
                self.emit(
                    {
                        "kind": "concurrency",
                        "backend": b,
                        "device": gpus[0],
                        "status": "skipped",
                        "message": f"one GPU: the two-stream variant is implemented for torch only, not {b}",
                    }
                )
        # The CPU variant always runs (framework-free: numpy in worker processes).
        size = c.concurrency_size or 1024
        cores = os.cpu_count() or 1
        seq, conc = process_concurrency(size, 5)
        self._concurrency_rows(
            "numpy",
            "cpu",
            size,
            seq,
            conc,
            float(min(2, cores)),
            f"two CPU worker processes, 1 thread each, vs one such process doing both ({cores} logical cores)",
        )
        if not done_gpu:
            self.note("ex4: no two GPUs here; ran the CPU variant (two worker processes)")

    def _concurrency_rows(
        self, b: str, d: str, n: int, seq: Measurement, conc: Measurement, speedup_pred: float, how: str
    ) -> None:
        speedup = seq.median / conc.median
        base = {"kind": "concurrency", "backend": b, "device": d, "dtype": "float32", "shape": _shape_text(n, n, n)}
        self.emit({**base, "workers": 1, **seq.columns(), "message": f"D2L 5.6.5 ex4, in sequence: {how}"})
        self.emit(
            {
                **base,
                "workers": 2,
                **conc.columns(),
                "speedup": speedup,
                "speedup_predicted": speedup_pred,
                "efficiency": speedup / 2,
                "efficiency_predicted": speedup_pred / 2,
                "time_predicted_s": seq.median / speedup_pred,
                "time_rel_error": (seq.median / speedup_pred - conc.median) / conc.median,
                "prediction_basis": "measured-peaks",
                "message": f"D2L 5.6.5 ex4, at the same time: {how}",
            }
        )
        self.note(
            f"ex4 {b} {d} n={n}: sequence {seq.median * 1e3:.1f} ms, concurrent {conc.median * 1e3:.1f} ms, "
            f"speedup {speedup:.2f} (predicted {speedup_pred:.1f}) - {how}"
        )


def _worker_loop() -> None:
    """A worker of :func:`process_concurrency` (run as ``python -c``; argv: n count seed): warms up, says
    ``ready``, then for each ``go`` line on stdin does ``count`` matmuls and prints ``t0 t1``."""
    n, count, seed = (int(v) for v in sys.argv[1:4])
    a = np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(seed + 1).standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: pages touched, BLAS initialised
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()  # CLOCK_MONOTONIC on Linux: comparable across processes
        for _ in range(count):
            a @ b
        print(f"{t0!r} {time.perf_counter()!r}", flush=True)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def process_concurrency(n: int, rounds: int = 5) -> tuple[Measurement, Measurement]:
    """D2L ex4 on the CPU: one 1-thread process doing two n^3 matmuls in sequence vs two 1-thread
    processes doing one each at the same time. Returns (sequence, concurrent) wall times: from the first
    start to the last finish of each round; the parent releases the workers of a round together.
    """
    import subprocess

    from xfbench.reports.paths import subprocess_env

    env = subprocess_env({k: "1" for k in _THREAD_VARS})
    code = "from xfbench.benchmarks.matmul import _worker_loop; _worker_loop()"
    out = []
    for workers, count in ((1, 2), (2, 1)):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(n), str(count), str(10 * i)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(workers)
        ]
        try:
            for pr in procs:
                assert pr.stdout is not None
                if pr.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"concurrency worker exited {pr.wait()} before it was ready")
            walls = []
            for _ in range(rounds + 1):  # the first round is a warm-up
                for pr in procs:
                    assert pr.stdin is not None
                    pr.stdin.write("go\n")
                    pr.stdin.flush()
                spans = [tuple(map(float, pr.stdout.readline().split())) for pr in procs if pr.stdout]
                walls.append(max(s[1] for s in spans) - min(s[0] for s in spans))
            walls = walls[1:]
        finally:
            for pr in procs:
                if pr.stdin:
                    pr.stdin.close()
                pr.wait(timeout=60)
        out.append(Measurement.of(walls))
    return out[0], out[1]


# --- report --------------------------------------------------------------------------------------------------


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The matmul rows as a readable table."""
    from xfbench.reports.table import render_table

    body = []
    for r in rows:
        if r.get("kind") != "matmul" or r.get("status") != "ok":
            continue
        body.append(
            [
                r["backend"],
                r["device"],
                r["dtype"],
                r["shape"],
                r.get("transfers", ""),
                f"{r['time_median_s'] * 1e3:.3f}",
                "-" if r.get("time_predicted_s") is None else f"{r['time_predicted_s'] * 1e3:.3f}",
                "-" if r.get("time_rel_error") is None else f"{r['time_rel_error']:+.0%}",
                f"{r['gflops_per_s']:.1f}",
                f"{r['peak_fraction']:.2f}",
            ]
        )
    headers = ["backend", "device", "dtype", "MxKxN", "transfers", "ms", "ms pred", "pred err", "GFLOP/s", "of peak"]
    return render_table(headers, body)


def plot(rows: Sequence[dict[str, Any]], peaks: Peaks, path: Path) -> Path | None:
    """GFLOP/s vs square size per (backend, device, dtype, transfers), with each device's roofline
    (min(compute peak, bandwidth x arithmetic intensity), measured peaks). Returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("kind") != "matmul" or r.get("status") != "ok" or r.get("time_predicted_s") is None:
            continue
        if str(r.get("message", "")).startswith("compute-peak probe"):
            continue  # the probe sets the roofline; plotting it beside the sweep's own point doubles the size
        m, k, n = map(int, r["shape"].split("x"))
        if m == k == n:
            key = (r["backend"], r["device"], r["dtype"], r["transfers"])
            series.setdefault(key, []).append((n, float(r["gflops_per_s"])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 6))
    for (b, d, t, tr), pts in sorted(series.items()):
        pts.sort()
        style = "--" if tr == "included" else "-"
        ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", label=f"{b} {d} {t} transfers {tr}")
    sizes = np.array(sorted({x for pts in series.values() for x, _ in pts}), dtype=float)
    xs = np.geomspace(sizes.min(), sizes.max(), 64)
    for d, t in sorted({(d, t) for (_, d, t, _) in series}):
        peak, bw = peaks.device_flops(d, t), peaks.device_bw(d)
        if peak is None or bw is None:
            continue
        intensity = 2 * xs / (3 * dtype_bytes(t))  # 2n^3 FLOPs over 3n^2 elements
        ax.plot(xs, np.minimum(peak, bw * intensity) / 1e9, ":", color="gray", linewidth=2)
        ax.annotate(
            f"roofline {d} {t}: {peak / 1e9:.0f} GFLOP/s, {bw / 1e9:.0f} GB/s",
            (xs[-1], peak / 1e9),
            fontsize=8,
            ha="right",
            va="bottom",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n (square n x n x n matmul)")
    ax.set_ylabel("GFLOP/s (2 per multiply-accumulate)")
    ax.set_title("Achieved matmul throughput vs the roofline of measured peaks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_sweep(cfg: SweepConfig, writer: Any = None, log: Callable[[str], None] | None = None) -> SweepResult:
    """Runs steps 1-5 (module docstring); rows go to ``writer`` (a :class:`reports.writer.RunWriter`, or
    ``None`` to keep them in memory only). ``log`` gets progress lines (default: stderr)."""

    def _stderr(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    sweep = _Sweep(cfg, writer, log or _stderr)
    sweep.load()
    sweep.measure_peaks()
    sweep.sweep()
    sweep.crossover()
    if cfg.exercises:
        sweep.logging_exercise()
        sweep.concurrency_exercise()
    result = sweep.result
    if cfg.plot and result.csv_path is not None:
        result.png_path = plot(
            result.rows, sweep.peaks, result.csv_path.with_name(result.csv_path.stem + "-matmul.png")
        )
    return result


def with_overrides(cfg: SweepConfig, **changes: Any) -> SweepConfig:
    """``cfg`` with the non-``None`` ``changes`` applied."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


__all__ = [
    "ALL_BACKENDS",
    "DEEPBENCH_SHAPES",
    "DEFAULT_SIZES",
    "QUICK",
    "QUICK_SIZES",
    "SweepConfig",
    "SweepResult",
    "cpu_native_dtype",
    "load_ops",
    "plot",
    "probe_sizes",
    "process_concurrency",
    "run_sweep",
    "summary_table",
    "time_callable",
    "with_overrides",
]
