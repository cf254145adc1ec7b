"""A few exercises measured through each framework (marked per framework; skipped where it is absent).

Expected values are hand arithmetic: 903,400 = 28*100 + 901*200 + 1801*400 parameters (HOML ch14 ex2a),
[5, 10, 32] (HOML ch15 ex2), floor((28 - 5 + 4) / 2) + 1 = 14 (course 5.1.3), 2 * 32 * 64 * 56 * 56 FLOPs for
a 1x1 convolution (D2L 6.4 ex4).
"""

from __future__ import annotations

import pytest
from conftest import require_backend_or_skip, required_frameworks
from xfbench.analytics.exercises import get_exercise

BACKENDS = [
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("tensorflow", marks=pytest.mark.tensorflow),
    pytest.param("mxnet", marks=pytest.mark.mxnet),
]


def _runner(backend: str):  # type: ignore[no-untyped-def]
    require_backend_or_skip(backend)
    from xfbench.backends import BackendUnavailable
    from xfbench.benchmarks.exercises import Runner

    try:
        return Runner(backend, "cpu")
    except BackendUnavailable as exc:
        if backend in required_frameworks():
            raise  # its own env: a framework that does not import is a failure
        pytest.skip(str(exc))


@pytest.mark.parametrize("backend", BACKENDS)
def test_measured_exercises(backend: str) -> None:
    runner = _runner(backend)
    try:
        (r,) = runner.measure(get_exercise("homl14-2a-000"))
        assert r.numbers["measured"] == 28 * 100 + 901 * 200 + 1801 * 400
        assert r.verdict == "holds"

        (r,) = runner.measure(get_exercise("homl15-2-seq"))
        assert r.numbers["measured"] == (5, 10, 32)
        assert r.verdict == "holds"
        (r,) = runner.measure(get_exercise("homl15-2-last"))
        assert r.numbers["measured"] == (5, 32)
        assert r.verdict == "wrong"

        (r,) = runner.measure(get_exercise("course-5.1.3"))
        assert r.numbers["measured"] == (1, 1, (28 - 5 + 4) // 2 + 1, 14)

        (r,) = runner.measure(get_exercise("d2l-6.4-4"))
        assert r.numbers["measured"] == 2 * 32 * 64 * 56 * 56
        assert r.verdict == "holds"
    finally:
        runner.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_measured_footprint_in_fresh_worker(backend: str) -> None:
    runner = _runner(backend)
    try:
        (r,) = runner.measure(get_exercise("d2l-6.4-2-memory"))
        assert r.status == "ok", r.explanation
        # At least input + output + kernel: (32*56*56 + 64*56*56 + 64*32*9) * 4 bytes.
        assert r.numbers["measured"] >= (32 * 56 * 56 + 64 * 56 * 56 + 64 * 32 * 9) * 4
        assert not r.verdict.startswith("holds")  # the claimed O(c_i c_o k_h k_w m_h m_w) is 1e8+ bytes
    finally:
        runner.close()
