"""Harness overhead: the median step time xfbench reports (pytest-benchmark, one call per round, as the
model benchmarks use it) against ``torch.utils.benchmark.Timer`` on the same callable.

The goal (within 3%) is checked here by measurement and reported (``extra_info`` and the terminal),
not asserted: a timed assertion would fail on a busy machine for reasons that are not the harness's.
"""

from __future__ import annotations

from typing import Any

import pytest
from xfbench.backends import is_available


@pytest.mark.parametrize("size", [256, 512])
def test_harness_overhead_vs_torch_timer(benchmark: Any, size: int, capsys: pytest.CaptureFixture[str]) -> None:
    if not is_available("torch"):
        pytest.skip("the reference timer is torch.utils.benchmark: torch is not installed (tox -e torch)")
    import torch
    from torch.utils.benchmark import Timer

    torch.manual_seed(0)
    a, b = torch.randn(size, size), torch.randn(size, size)

    def step() -> Any:
        return a @ b

    # Timer runs single-threaded unless told otherwise; the harness times with torch's own thread count.
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    reference = timer.blocked_autorange(min_run_time=1.0)
    benchmark.pedantic(step, rounds=200, warmup_rounds=10, iterations=1)
    ours = float(benchmark.stats.stats.median)
    theirs = float(reference.median)
    benchmark.extra_info.update(
        {"harness_median_s": ours, "torch_timer_median_s": theirs, "relative_difference": ours / theirs - 1}
    )
    with capsys.disabled():
        print(
            f"\nharness overhead, {size}x{size} matmul: xfbench median {ours * 1e6:.1f} us, "
            f"torch Timer median {theirs * 1e6:.1f} us, difference {100 * (ours / theirs - 1):+.1f}%"
        )
