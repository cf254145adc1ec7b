"""Data-parallel scaling in the benchmark suite (``pytest benchmarks --benchmark-only``): for each selected
backend installed here, N = 1, 2, ... cores single-threaded workers of the quick models (or ``--models``),
strong and weak scaling, rows ``kind=scaling``/``allreduce`` in the run's CSV and the plot beside it.

Same code as ``xfbench scale`` (:mod:`benchmarks.scaling`); pytest-benchmark times the whole sweep of one
backend once (its stats are the sweep's wall time; the per-step figures are in the CSV rows).
``--device`` (benchmarks/harness/options.py) picks the kinds to scale on: ``cpu`` and/or ``gpu`` (``gpu:N`` scales over
the GPUs); ``all``: the kinds of every device the backend sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xfbench.analytics.vocab import device_kind
from xfbench.backends import is_available
from xfbench.benchmarks.harness.options import from_pytest_config
from xfbench.benchmarks.scaling import (
    DEFAULT_MODELS,
    ScalingPlan,
    default_workers,
    gpu_count,
    plot_path,
    plot_scaling,
    run_backend,
)


def _kinds(devices: list[str]) -> list[str]:
    """``cpu`` and/or ``gpu``: the kinds of ``devices`` (``gpu:N`` scales over the GPUs), in order."""
    return list(dict.fromkeys(device_kind(d) for d in devices))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scaling_backend" in metafunc.fixturenames:
        opts = from_pytest_config(metafunc.config)
        pairs = [(b, k) for b in opts.backends for k in _kinds(opts.devices_for(b))]
        metafunc.parametrize(("scaling_backend", "scaling_device"), pairs, ids=[f"scale-{b}-{k}" for b, k in pairs])


def test_scaling(
    benchmark: Any,
    scaling_backend: str,
    scaling_device: str,
    request: pytest.FixtureRequest,
    xfbench_writer: Any,
    xfbench_rows: list[dict[str, Any]],
) -> None:
    if not is_available(scaling_backend):
        pytest.skip(f"{scaling_backend} is not installed in this environment (tox -e {scaling_backend})")
    # --models narrows the quick set; models outside it (VGG, AlexNet, ...) are opt-in via `xfbench scale --model`.
    wanted = from_pytest_config(request.config).models
    models = tuple(m for m in DEFAULT_MODELS if not wanted or m in wanted)
    if not models:
        pytest.skip(f"--models selects none of the scaling models {', '.join(DEFAULT_MODELS)} (use xfbench scale)")
    if scaling_device == "gpu" and gpu_count() == 0:
        pytest.skip("no GPU visible: GPU scaling needs at least one (CUDA driver / NVML found none)")
    plan = ScalingPlan(models=models, workers=default_workers(scaling_device), device=scaling_device)
    rows: list[dict[str, Any]] = []

    def sweep() -> None:
        rows.extend(run_backend(scaling_backend, plan))

    benchmark.pedantic(sweep, rounds=1, iterations=1, warmup_rounds=0)
    for row in rows:
        xfbench_writer.write_row(row)
        xfbench_rows.append(row)
    csv_path = Path(xfbench_writer.path)
    png = plot_scaling(rows, plot_path(csv_path).with_name(f"{csv_path.stem}-scaling-{scaling_backend}.png"))
    benchmark.extra_info.update({"rows": len(rows), "plot": str(png) if png else ""})
    errors = [r["message"] for r in rows if r["status"] == "error"]
    assert not errors, errors[0]
