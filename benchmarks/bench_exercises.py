"""The exercise checker as benchmark modules: one benchmark per (exercise, backend, device).

Run: ``pytest benchmarks/bench_exercises.py --benchmark-only [--backend torch] [--device cpu|all] [-k homl14]``
(options from benchmarks/harness/options.py).
Each exercise is measured once (``rounds=1``: its own measurement repeats what it needs, e.g. the median of
timed steps) and its rows go to the run's CSV (``kind=exercise``, ``shape`` = the exercise id) as soon as
they exist; the verdicts are in the ``message`` column and in pytest-benchmark's ``extra_info``.
"""

from __future__ import annotations

from typing import Any

import pytest
from xfbench.analytics.exercises import EXERCISES, Exercise
from xfbench.backends import get_backend, is_available
from xfbench.benchmarks.exercises import Runner, csv_row
from xfbench.benchmarks.harness.options import from_pytest_config


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "exercise_case" not in metafunc.fixturenames:
        return
    opts = from_pytest_config(metafunc.config)
    cases = [(ex, b, d) for b in opts.backends for d in opts.devices_for(b) for ex in EXERCISES]
    metafunc.parametrize("exercise_case", cases, ids=[f"{ex.id}-{b}-{d}" for ex, b, d in cases])


_RUNNERS: dict[tuple[str, str], Runner] = {}


def _runner(backend: str, device: str) -> Runner:
    key = (backend, device)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(backend, device)
    return _RUNNERS[key]


def test_exercise(
    benchmark: Any,
    exercise_case: tuple[Exercise, str, str],
    xfbench_writer: Any,
    xfbench_rows: list[dict[str, Any]],
) -> None:
    ex, backend, device = exercise_case
    if not is_available(backend):
        pytest.skip(f"{backend} is not installed in this environment")
    if device not in get_backend(backend).list_devices():
        pytest.skip(f"device {device} not visible to {backend}")
    runner = _runner(backend, device)
    results = benchmark.pedantic(runner.measure, args=(ex,), rounds=1, iterations=1)
    for r in results:
        row = csv_row(r)
        xfbench_writer.write_row(row)
        xfbench_rows.append(row)
    benchmark.extra_info.update({r.id: f"{r.verdict} (claim {r.claim}, measured {r.measured})" for r in results})
    assert all(r.status != "error" for r in results), "; ".join(r.explanation for r in results)
