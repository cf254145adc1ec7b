"""pytest-benchmark version of the matmul sweep: backend x device x square size, each beside its roofline.

Run: ``pytest benchmarks/bench_matmul.py --benchmark-only [--backend torch] [--device cpu,gpu:0|all]``
(options from benchmarks/harness/options.py; ``numpy`` is always measured as the baseline, on the CPU). Each
case writes a ``kind="matmul"`` row to the run's CSV and puts the prediction in pytest-benchmark's ``extra_info``.
The full sweep with exercises and plot is ``xfbench matmul``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from xfbench.analytics.roofline import bound, matmul_bytes, matmul_flops, roofline_time
from xfbench.analytics.vocab import device_kind
from xfbench.backends import is_available
from xfbench.backends.common import tf32_row_value
from xfbench.benchmarks.harness.measurement import Measurement
from xfbench.benchmarks.harness.options import from_pytest_config
from xfbench.benchmarks.matmul import load_ops, time_callable

SIZES = (64, 256, 1024)
DTYPE = "float32"  # this module's one dtype; the sweep over dtypes is `xfbench matmul --dtypes`
PEAK_SIZE = {"cpu": 1024, "gpu": 8192}
COPY_BYTES = {"cpu": 64 << 20, "gpu": 1 << 30}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "matmul_case" not in metafunc.fixturenames:
        return
    opts = from_pytest_config(metafunc.config)
    cases = [
        (b, d, n)
        for b in ["numpy", *opts.backends]
        for d in opts.devices_for(b)
        for n in SIZES
        if not (b == "numpy" and d != "cpu")
    ]
    metafunc.parametrize("matmul_case", cases, ids=[f"{b}-{d}-{n}" for b, d, n in cases])


@cache
def _peaks(backend: str, device: str) -> tuple[float, float, float]:
    """(compute FLOP/s, bandwidth B/s, launch overhead s) of ``backend`` on ``device``, measured now."""
    ops = load_ops(backend)
    kind = device_kind(device)
    n, nbytes = PEAK_SIZE[kind], COPY_BYTES[kind]
    flops = matmul_flops(n, n, n) / time_callable(ops.matmul_timer(n, n, n, DTYPE, device), 0.2).min
    bw = 2 * nbytes / time_callable(ops.copy_bandwidth_callable(nbytes, device), 0.1).min
    overhead = time_callable(ops.matmul_timer(1, 1, 1, DTYPE, device), 0.02, 20).median
    return flops, bw, overhead


def test_matmul(benchmark: Any, matmul_case: tuple[str, str, int], xfbench_writer: Any) -> None:
    backend, device, n = matmul_case
    row: dict[str, Any] = {"kind": "matmul", "backend": backend, "device": device, "dtype": DTYPE}
    row["tf32"] = tf32_row_value(device)
    row.update(shape=f"{n}x{n}x{n}", transfers="excluded")
    if backend != "numpy" and not is_available(backend):
        reason = f"{backend} is not installed in this environment (tox -e {backend})"
        xfbench_writer.write_row({**row, "status": "skipped", "message": reason})
        pytest.skip(reason)
    ops = load_ops(backend)
    if device not in ops.list_devices():
        reason = f"device {device} not visible to {backend} (has: {', '.join(ops.list_devices())})"
        xfbench_writer.write_row({**row, "status": "skipped", "message": reason})
        pytest.skip(reason)
    peak, bw, overhead = _peaks(backend, device)
    flops, nbytes = matmul_flops(n, n, n), matmul_bytes(n, n, n, DTYPE)
    predicted = roofline_time(flops, nbytes, peak, bw, overhead)
    fn = ops.matmul_timer(n, n, n, DTYPE, device)
    rounds = max(3, min(200, int(0.2 / max(predicted, 1e-6))))
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    timing = Measurement.from_stats(benchmark.stats.stats)
    median = timing.median
    limit = bound(flops, nbytes, peak, bw)
    achieved = flops / median
    fraction = achieved / peak if limit == "compute" else nbytes / median / bw
    info = {
        "flops": flops,
        "gflops_per_s": achieved / 1e9,
        "peak_fraction": fraction,
        "time_predicted_s": predicted,
        "time_rel_error": (predicted - median) / median,
        "prediction_basis": "measured-peaks",
        "bound": limit,
    }
    benchmark.extra_info.update(info)
    xfbench_writer.write_row(
        {
            **row,
            "status": "ok",
            "framework_version": ops.VERSION,
            **timing.columns(),
            "flops_predicted": flops,
            "achieved_flops_per_s": achieved,
            **{k: v for k, v in info.items() if k not in ("flops", "bound")},
            "message": f"roofline: {limit}-bound (peaks measured by this backend: {peak / 1e9:.1f} GFLOP/s, "
            f"{bw / 1e9:.1f} GB/s, {overhead * 1e6:.1f} us)",
        }
    )
    assert median > 0
