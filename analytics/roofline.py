"""Roofline time models for matmuls and whole models, and a catalog of datasheet device figures.

Framework-free. Units: seconds, bytes, FLOPs (2 per multiply-accumulate), FLOP/s, bytes/s.

The model of one operation on one device is

    time = max(flops / peak_flops, bytes / mem_bandwidth) + launch_overhead

and a host<->device copy takes ``latency + bytes / host_link_bandwidth``. With *measured* peaks (a large
matmul, a large copy, a tiny op, all timed on the same machine in the same run) the prediction basis is
``"measured-peaks"``; with the figures of :data:`DEVICE_CATALOG` it is ``"datasheet:<name>"``, and such
numbers are labelled "datasheet-based": datasheet peaks are upper bounds a real kernel rarely reaches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from xfbench.analytics.vocab import ELEMENT_BYTES, MATMUL_DTYPES

# the matmul dtypes' widths (analytics/vocab.py's one table)
DTYPE_BYTES: dict[str, int] = {name: ELEMENT_BYTES[name] for name in MATMUL_DTYPES}
DATASHEET_LABEL = "datasheet-based"


@dataclass(frozen=True)
class DeviceSpec:
    """Peak figures of one device.

    ``peak_flops``: dtype -> FLOP/s (dense, no structured sparsity). On GPUs ``"float32"`` is the plain
    (non-tensor-core) FP32 rate, ``"tf32"`` the tensor-core TF32 rate; a dtype the device cannot compute
    natively is absent. ``mem_bandwidth``: bytes/s of device memory. ``host_link_bandwidth``: bytes/s of the
    host<->device link, one direction (``None`` for a CPU, whose memory is the host's).
    ``launch_overhead_s``: the fixed cost of one operation (kernel launch / dispatch), seconds.
    ``host_link_latency_s``: fixed cost of one host<->device copy, seconds. ``source``: where the figures come from.
    """

    name: str
    kind: str
    peak_flops: Mapping[str, float]
    mem_bandwidth: float
    host_link_bandwidth: float | None
    launch_overhead_s: float
    source: str
    host_link_latency_s: float = 0.0

    def peak(self, dtype: str) -> float:
        """FLOP/s for ``dtype``; raises ``ValueError`` naming the dtypes the device has."""
        if dtype not in self.peak_flops:
            raise ValueError(f"device {self.name!r} has no {dtype} peak; it has: {', '.join(sorted(self.peak_flops))}")
        return float(self.peak_flops[dtype])


# A kernel launch plus its synchronisation is typically ~5 us on CUDA; a host<->device copy ~10 us.
# These two are typical measured values, not datasheet figures.
_GPU_LAUNCH_S = 5e-6
_GPU_COPY_LATENCY_S = 10e-6
_CPU_CALL_S = 1e-6
# PCIe per direction: Gen3 x16 ~16 GB/s, Gen4 x16 ~32 GB/s, Gen5 x16 ~64 GB/s (the datasheets quote both
# directions together: 32/64/128 GB/s).
_PCIE3, _PCIE4, _PCIE5 = 16e9, 32e9, 64e9
_T = 1e12


def _gpu(
    name: str, peaks: dict[str, float], bandwidth: float, link: float, source: str, overhead: float = _GPU_LAUNCH_S
) -> DeviceSpec:
    return DeviceSpec(name, "gpu", peaks, bandwidth, link, overhead, source, _GPU_COPY_LATENCY_S)


DEVICE_CATALOG: dict[str, DeviceSpec] = {
    "h100": _gpu(
        "h100",
        {"float64": 34 * _T, "float32": 67 * _T, "tf32": 494.7 * _T, "float16": 989.4 * _T, "bfloat16": 989.4 * _T},
        3.35e12,
        _PCIE5,
        "NVIDIA H100 SXM5 80GB datasheet: FP32 67 TFLOPS, TF32/FP16/BF16 tensor 495/989/989 TFLOPS dense "
        "(datasheet doubles them with sparsity), HBM3 3.35 TB/s, PCIe Gen5 128 GB/s both directions",
    ),
    "h200": _gpu(
        "h200",
        {"float64": 34 * _T, "float32": 67 * _T, "tf32": 494.7 * _T, "float16": 989.4 * _T, "bfloat16": 989.4 * _T},
        4.8e12,
        _PCIE5,
        "NVIDIA H200 SXM 141GB datasheet: FP32 67 TFLOPS, TF32/FP16/BF16 tensor 495/989/989 TFLOPS dense, "
        "HBM3e 4.8 TB/s, PCIe Gen5 128 GB/s both directions",
    ),
    "a100-80gb": _gpu(
        "a100-80gb",
        {"float64": 9.7 * _T, "float32": 19.5 * _T, "tf32": 156 * _T, "float16": 312 * _T, "bfloat16": 312 * _T},
        2.039e12,
        _PCIE4,
        "NVIDIA A100 80GB SXM datasheet: FP32 19.5 TFLOPS, TF32/FP16/BF16 tensor 156/312/312 TFLOPS dense, "
        "HBM2e 2,039 GB/s, PCIe Gen4 64 GB/s both directions",
    ),
    "a100-40gb": _gpu(
        "a100-40gb",
        {"float64": 9.7 * _T, "float32": 19.5 * _T, "tf32": 156 * _T, "float16": 312 * _T, "bfloat16": 312 * _T},
        1.555e12,
        _PCIE4,
        "NVIDIA A100 40GB SXM datasheet: FP32 19.5 TFLOPS, TF32/FP16/BF16 tensor 156/312/312 TFLOPS dense, "
        "HBM2 1,555 GB/s, PCIe Gen4 64 GB/s both directions",
    ),
    "v100": _gpu(
        "v100",
        {"float64": 7.8 * _T, "float32": 15.7 * _T, "float16": 125 * _T},
        900e9,
        _PCIE3,
        "NVIDIA V100 SXM2 datasheet: FP32 15.7 TFLOPS, FP16 tensor 125 TFLOPS, HBM2 900 GB/s, PCIe Gen3 "
        "32 GB/s both directions; no bfloat16",
    ),
    "t4": _gpu(
        "t4",
        {"float32": 8.1 * _T, "float16": 65 * _T},
        320e9,
        _PCIE3,
        "NVIDIA T4 datasheet: FP32 8.1 TFLOPS, FP16/FP32-mixed tensor 65 TFLOPS, GDDR6 320 GB/s, PCIe Gen3 x16; "
        "no bfloat16",
    ),
    "l4": _gpu(
        "l4",
        {"float32": 30.3 * _T, "tf32": 60 * _T, "float16": 121 * _T, "bfloat16": 121 * _T},
        300e9,
        _PCIE4,
        "NVIDIA L4 datasheet: FP32 30.3 TFLOPS, TF32/FP16/BF16 tensor 60/121/121 TFLOPS dense (datasheet "
        "quotes 120/242/242 with sparsity), GDDR6 300 GB/s, PCIe Gen4 x16 64 GB/s both directions",
    ),
    "rtx4090": _gpu(
        "rtx4090",
        {"float32": 82.6 * _T, "tf32": 82.6 * _T, "float16": 165.2 * _T, "bfloat16": 165.2 * _T},
        1.008e12,
        _PCIE4,
        "NVIDIA Ada Lovelace (RTX 4090) whitepaper: FP32 82.6 TFLOPS, FP16/BF16 tensor with FP32 accumulate "
        "165.2 TFLOPS dense, TF32 82.6, GDDR6X 1,008 GB/s, PCIe Gen4 x16",
    ),
    "cpu-laptop-2core": DeviceSpec(
        "cpu-laptop-2core",
        "cpu",
        # 2 cores x 3.0 GHz x 32 FP32 FLOP/cycle (two 256-bit FMA units: 2 x 8 lanes x 2); FP64 half that.
        {"float64": 96e9, "float32": 192e9},
        51.2e9,
        None,
        _CPU_CALL_S,
        "derived, not a datasheet: generic 2-core AVX2+FMA laptop-class CPU at 3.0 GHz "
        "(2 cores x 3.0e9 x 32 FLOP/cycle FP32), dual-channel DDR4-3200 (2 x 25.6 GB/s); no native fp16/bf16",
    ),
    "epyc7763": DeviceSpec(
        "epyc7763",
        "cpu",
        # 64 cores x 2.45 GHz base x 32 FP32 FLOP/cycle (Zen 3: two 256-bit FMA pipes).
        {"float64": 64 * 2.45e9 * 16, "float32": 64 * 2.45e9 * 32},
        204.8e9,
        None,
        _CPU_CALL_S,
        "AMD EPYC 7763 (64-core server, Zen 3) product page: 64 cores, 2.45 GHz base, 8 channels DDR4-3200 "
        "(204.8 GB/s); peak derived as cores x base clock x 32 FP32 FLOP/cycle (AVX2, two FMA pipes)",
    ),
}
ALIASES: dict[str, str] = {
    "h100-sxm": "h100",
    "h200-sxm": "h200",
    "a100": "a100-80gb",
    "a100-sxm": "a100-80gb",
    "v100-sxm2": "v100",
    "4090": "rtx4090",
    "laptop": "cpu-laptop-2core",
    "server": "epyc7763",
}


def device_names() -> list[str]:
    """The catalog's device names (aliases excluded)."""
    return list(DEVICE_CATALOG)


def get_device(name: str) -> DeviceSpec:
    """The catalog entry for ``name`` (case-insensitive; aliases such as ``a100`` allowed).

    Raises ``ValueError`` naming the allowed names.
    """
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in DEVICE_CATALOG:
        raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICE_CATALOG)}")
    return DEVICE_CATALOG[key]


def catalog_match(device_name: str) -> DeviceSpec | None:
    """The catalog entry a reported device name (e.g. ``"NVIDIA H100 80GB HBM3"``) refers to, else ``None``."""
    text = device_name.lower().replace(" ", "")
    if "a100" in text:
        return DEVICE_CATALOG["a100-40gb" if "40gb" in text else "a100-80gb"]
    for key in ("h200", "h100", "v100", "t4", "l4", "rtx4090"):
        probe = "4090" if key == "rtx4090" else key
        if probe in text:
            return DEVICE_CATALOG[key]
    return None


def dtype_bytes(dtype: str) -> int:
    """Bytes per element; raises ``ValueError`` naming the allowed dtypes."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: 2 m k n (one multiply and one add per MAC)."""
    return 2 * m * k * n


def matmul_bytes(m: int, k: int, n: int, dtype: str = "float32") -> int:
    """Minimum device-memory traffic of the product, bytes: read A (m k) and B (k n), write C (m n)."""
    return (m * k + k * n + m * n) * dtype_bytes(dtype)


def roofline_time(flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead_s: float = 0.0) -> float:
    """Seconds: ``max(flops / peak_flops, nbytes / bandwidth) + overhead_s``."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError("peak_flops and bandwidth must be positive")
    return max(flops / peak_flops, nbytes / bandwidth) + overhead_s


def bound(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> str:
    """``"compute"`` or ``"memory"``: which roof limits the operation."""
    return "compute" if flops / peak_flops >= nbytes / bandwidth else "memory"


def transfer_time(nbytes: float, bandwidth: float, latency_s: float = 0.0) -> float:
    """Seconds for one host<->device copy: ``latency_s + nbytes / bandwidth``."""
    if bandwidth <= 0:
        raise ValueError("bandwidth must be positive")
    return latency_s + nbytes / bandwidth


def matmul_time(m: int, k: int, n: int, device: DeviceSpec, dtype: str = "float32", transfers: bool = False) -> float:
    """Predicted seconds of one matmul on ``device``; with ``transfers`` A and B go to the device and C comes
    back over the host link (three copies). A CPU has no host link: ``transfers`` adds nothing there.
    """
    t = roofline_time(
        matmul_flops(m, k, n),
        matmul_bytes(m, k, n, dtype),
        device.peak(dtype),
        device.mem_bandwidth,
        device.launch_overhead_s,
    )
    if transfers and device.host_link_bandwidth is not None:
        b = dtype_bytes(dtype)
        for elems in (m * k, k * n, m * n):
            t += transfer_time(elems * b, device.host_link_bandwidth, device.host_link_latency_s)
    return t


def predict_crossover(cpu: DeviceSpec, gpu: DeviceSpec, sizes: Iterable[int], dtype: str = "float32") -> int | None:
    """The smallest square size n (of ``sizes``) at which the GPU, transfers included, is faster than the CPU.

    ``None`` if the GPU never wins on ``sizes``.
    """
    for n in sorted(set(sizes)):
        if matmul_time(n, n, n, gpu, dtype, transfers=True) < matmul_time(n, n, n, cpu, dtype):
            return n
    return None


def predict_model_time(flops_total: float, bytes_total: float, device: DeviceSpec, dtype: str = "float32") -> float:
    """Seconds for ``flops_total`` FLOPs touching ``bytes_total`` bytes on ``device`` (one roofline, one launch)."""
    return roofline_time(flops_total, bytes_total, device.peak(dtype), device.mem_bandwidth, device.launch_overhead_s)


def _lookup(pred: Mapping[str, Any], *keys: str) -> Any:
    value: Any = pred
    for k in keys:
        if not isinstance(value, Mapping) or k not in value:
            return None
        value = value[k]
    return value


def model_time_estimate(
    prediction: Mapping[str, Any] | None = None,
    device_name: str = "h100",
    *,
    forward_flops: float | None = None,
    training_flops: float | None = None,
    inference_bytes: float | None = None,
    training_bytes: float | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Datasheet-based step times of a model on a catalog device (``xfbench predict --device``).

    ``prediction`` is :meth:`analytics.predict.Prediction.as_dict` (``forward_flops``, ``training_flops``,
    ``memory.inference_bytes``, ``memory.training_bytes``, ``dtype``); keyword values override it.
    Memory traffic is taken as the ledger's peak bytes, each touched once: a lower bound, so the times
    are optimistic. Returns seconds for one forward step and one training step, the bound of each,
    and ``label`` = ``"datasheet-based"``. Raises ``ValueError`` for an unknown device or missing figures.
    """
    spec = get_device(device_name)
    pred = prediction or {}
    fwd = forward_flops if forward_flops is not None else _lookup(pred, "forward_flops")
    train = training_flops if training_flops is not None else _lookup(pred, "training_flops")
    if train is None and fwd is not None and _lookup(pred, "backward_flops") is not None:
        train = fwd + _lookup(pred, "backward_flops")
    inf_b = inference_bytes if inference_bytes is not None else _lookup(pred, "memory", "inference_bytes")
    train_b = training_bytes if training_bytes is not None else _lookup(pred, "memory", "training_bytes")
    dt = dtype or _lookup(pred, "dtype") or "float32"
    if fwd is None or inf_b is None:
        raise ValueError("model_time_estimate needs forward_flops and inference_bytes (a Prediction.as_dict())")
    peak, bw = spec.peak(dt), spec.mem_bandwidth
    out: dict[str, Any] = {
        "device": spec.name,
        "dtype": dt,
        "label": DATASHEET_LABEL,
        "prediction_basis": f"datasheet:{spec.name}",
        "peak_flops": peak,
        "mem_bandwidth": bw,
        "forward_s": predict_model_time(fwd, inf_b, spec, dt),
        "forward_bound": bound(fwd, inf_b, peak, bw),
        "training_s": None,
        "training_bound": None,
        "source": spec.source,
        "note": "roofline with datasheet peaks, one launch per step, each ledger byte touched once: a lower bound",
    }
    if train is not None and train_b is not None:
        out["training_s"] = predict_model_time(train, train_b, spec, dt)
        out["training_bound"] = bound(train, train_b, peak, bw)
    return out


def measured_device(
    name: str,
    kind: str,
    peak_flops: Mapping[str, float],
    mem_bandwidth: float,
    launch_overhead_s: float,
    host_link_bandwidth: float | None = None,
    host_link_latency_s: float = 0.0,
) -> DeviceSpec:
    """A :class:`DeviceSpec` from figures measured in this run (``source`` says so)."""
    if not all(math.isfinite(v) and v > 0 for v in peak_flops.values()) or mem_bandwidth <= 0:
        raise ValueError("measured peaks and bandwidth must be positive")
    return DeviceSpec(
        name,
        kind,
        dict(peak_flops),
        mem_bandwidth,
        host_link_bandwidth,
        launch_overhead_s,
        "measured on this machine in this run",
        host_link_latency_s,
    )


__all__ = [
    "DATASHEET_LABEL",
    "DEVICE_CATALOG",
    "DTYPE_BYTES",
    "DeviceSpec",
    "bound",
    "catalog_match",
    "device_names",
    "dtype_bytes",
    "get_device",
    "matmul_bytes",
    "matmul_flops",
    "matmul_time",
    "measured_device",
    "model_time_estimate",
    "predict_crossover",
    "predict_model_time",
    "roofline_time",
    "transfer_time",
]
