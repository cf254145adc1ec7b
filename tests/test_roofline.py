"""The roofline model and device catalog: hand-computed times, crossover search, errors (framework-free)."""

from __future__ import annotations

import math

import pytest
from xfbench.analytics.roofline import (
    DEVICE_CATALOG,
    DeviceSpec,
    get_device,
    matmul_bytes,
    matmul_flops,
    matmul_time,
    model_time_estimate,
    predict_crossover,
    roofline_time,
    transfer_time,
)


def test_matmul_flops_and_bytes_by_hand() -> None:
    assert matmul_flops(1024, 1024, 1024) == 2_147_483_648
    assert matmul_flops(1760, 1760, 16) == 2 * 1760 * 1760 * 16 == 99_123_200
    # A (2x3), B (3x4), C (2x4): 6 + 12 + 8 = 26 elements.
    assert matmul_bytes(2, 3, 4, "float32") == 104
    assert matmul_bytes(2, 3, 4, "bfloat16") == 52


def test_roofline_time_by_hand() -> None:
    # 2 * 1024^3 FLOPs at 1e12 FLOP/s = 2.147483648e-3 s; 12 MiB at 1e12 B/s is 1.26e-5 s: compute-bound.
    assert roofline_time(2 * 1024**3, 12 * 2**20, 1e12, 1e12) == pytest.approx(2.147483648e-3, rel=1e-12)
    # Memory-bound: 1e6 FLOPs at 1e12 (1 us) vs 1e6 bytes at 1e9 B/s (1 ms), plus 5 us overhead.
    assert roofline_time(1e6, 1e6, 1e12, 1e9, 5e-6) == pytest.approx(1.005e-3, rel=1e-12)
    with pytest.raises(ValueError):
        roofline_time(1.0, 1.0, 0.0, 1.0)


def test_transfer_time_by_hand() -> None:
    # 64 MB over 32 GB/s = 2 ms, plus 10 us latency.
    assert transfer_time(64e6, 32e9, 10e-6) == pytest.approx(2.01e-3, rel=1e-12)
    assert transfer_time(0, 1e9) == 0.0


SLOW_CPU = DeviceSpec("cpu", "cpu", {"float32": 100e9}, 10e9, None, 0.0, "synthetic")
FAST_GPU = DeviceSpec("gpu", "gpu", {"float32": 10e12}, 1e12, 10e9, 10e-6, "synthetic", 0.0)


def test_matmul_time_with_transfers_by_hand() -> None:
    n = 1000
    # GPU: compute 2e9 / 1e13 = 2e-4 s vs memory 12e6 / 1e12 = 1.2e-5 s -> 2e-4 + 1e-5 launch = 2.1e-4 s;
    # transfers: 3 x 4e6 bytes / 1e10 = 1.2e-3 s -> 1.41e-3 s.
    assert matmul_time(n, n, n, FAST_GPU, "float32") == pytest.approx(2.1e-4, rel=1e-12)
    assert matmul_time(n, n, n, FAST_GPU, "float32", transfers=True) == pytest.approx(1.41e-3, rel=1e-12)
    # CPU: 2e9 / 1e11 = 0.02 s; no host link, so transfers add nothing.
    assert matmul_time(n, n, n, SLOW_CPU, "float32", transfers=True) == pytest.approx(0.02, rel=1e-12)


def test_crossover_on_synthetic_devices_by_hand() -> None:
    # CPU time: 2n^3/1e11 (compute-bound for n >= 8: 2n^3/1e11 vs 12n^2/1e10 -> n > 6).
    # GPU time: 2n^3/1e13 + 1e-5 + 12n^2/1e10 (transfers; the GPU's own memory term 12n^2/1e12 < 2n^3/1e13
    # for n > 6). GPU wins when 2n^3 (1e-11 - 1e-13) > 1e-5 + 1.2e-9 n^2:
    #   n = 20: 1.584e-8 vs 1.048e-5 (no)  ...  n = 100: 1.98e-5 vs 2.2e-5 (no); n = 110: 2.635e-5 vs 2.452e-5 (yes)
    sizes = range(10, 201, 10)
    assert predict_crossover(SLOW_CPU, FAST_GPU, sizes) == 110
    assert predict_crossover(SLOW_CPU, FAST_GPU, [110, 20, 100]) == 110
    # A GPU behind a very slow link never wins on small sizes.
    slow_link = DeviceSpec("gpu", "gpu", {"float32": 10e12}, 1e12, 1e6, 10e-6, "synthetic")
    assert predict_crossover(SLOW_CPU, slow_link, [64, 128, 256]) is None


def test_catalog_entries_are_sane() -> None:
    assert {"h100", "h200", "a100-80gb", "a100-40gb", "v100", "t4", "l4", "rtx4090"} <= set(DEVICE_CATALOG)
    assert sum(s.kind == "cpu" for s in DEVICE_CATALOG.values()) >= 2
    for spec in DEVICE_CATALOG.values():
        assert spec.source and spec.mem_bandwidth > 0 and "float32" in spec.peak_flops
        assert (spec.host_link_bandwidth is None) == (spec.kind == "cpu")
    h100 = get_device("H100")
    assert h100.peak("float32") == 67e12 and h100.mem_bandwidth == 3.35e12
    assert get_device("a100") is DEVICE_CATALOG["a100-80gb"]
    with pytest.raises(ValueError, match="no bfloat16"):
        get_device("v100").peak("bfloat16")


def test_unknown_device_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"unknown device 'tpu9'.*h100.*t4"):
        get_device("tpu9")
    with pytest.raises(ValueError, match="allowed"):
        model_time_estimate({"forward_flops": 1, "memory": {"inference_bytes": 1}}, "tpu9")


def test_model_time_estimate_is_datasheet_based() -> None:
    pred = {
        "forward_flops": 67_000_000_000,
        "backward_flops": 134_000_000_000,
        "dtype": "float32",
        "memory": {"inference_bytes": 3_350_000, "training_bytes": 33_500_000_000},
    }
    est = model_time_estimate(pred, "h100")
    assert est["label"] == "datasheet-based" and est["prediction_basis"] == "datasheet:h100"
    # forward: 6.7e10 / 6.7e13 = 1 ms compute vs 3.35e6 / 3.35e12 = 1 us memory, + 5 us launch.
    assert est["forward_s"] == pytest.approx(1e-3 + 5e-6, rel=1e-12) and est["forward_bound"] == "compute"
    # training: 2.01e11 / 6.7e13 = 3 ms compute vs 3.35e10 / 3.35e12 = 10 ms memory -> memory-bound.
    assert est["training_s"] == pytest.approx(10e-3 + 5e-6, rel=1e-12) and est["training_bound"] == "memory"
    assert math.isclose(
        model_time_estimate(forward_flops=6.7e10, inference_bytes=0, device_name="h100")["forward_s"], 1e-3 + 5e-6
    )
