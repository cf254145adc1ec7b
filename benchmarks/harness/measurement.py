"""One timing measurement: the raw samples, and every statistic a report row takes from them.

Modelled on ``torch.utils.benchmark``'s ``Measurement``: the raw times are kept (seconds, in the order they were
taken), the statistics are computed from them on first use, and a measurement too noisy to trust says so
(there: "Interquartile range is X% of the median measurement"; here :data:`NOISY_NOTE`, when the interquartile
range exceeds :data:`NOISY_IQR_FRACTION` of the median). Every timed row of a report (model steps, matmuls,
transfers, scaling steps) is built from one of these, so ``time_median_s``, ``time_iqr_s``, ``time_mean_s``,
``time_min_s`` and ``rounds`` follow one rule everywhere.

The quantile rule is pytest-benchmark's (``pytest_benchmark.stats.Stats.q1``/``q3``, 5.x; the model rows are timed
by pytest-benchmark, so their figures are the same whichever of the two computes them). With the ``n`` samples
sorted as ``x[0] <= ... <= x[n-1]`` (0-based):

* ``n == 1``: ``q1 = q3 = x[0]``;
* ``n`` even (Tukey's hinges, Wikipedia "Quartile", method 2): ``q1`` is the median of the lower half
  ``x[0 .. n/2-1]``, ``q3`` the median of the upper half ``x[n/2 .. n-1]``;
* ``n = 4m + 1`` (method 3): ``q1 = x[m-1]/4 + 3 x[m]/4``, ``q3 = 3 x[3m]/4 + x[3m+1]/4``;
* ``n = 4m + 3`` (method 3): ``q1 = 3 x[m]/4 + x[m+1]/4``, ``q3 = x[3m+1]/4 + 3 x[3m+2]/4``.

``iqr = q3 - q1``; the median is ``statistics.median`` and the mean ``statistics.mean`` (exact, as pytest-benchmark).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

#: A measurement whose interquartile range exceeds this fraction of its median is flagged as noisy.
NOISY_IQR_FRACTION = 0.1
#: What a noisy row's message says.
NOISY_NOTE = "IQR > 10% of the median: noisy timing"


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def quartiles(sorted_times: Sequence[float]) -> tuple[float, float]:
    """``(q1, q3)`` of already sorted samples, by the rule in the module docstring."""
    x, n = sorted_times, len(sorted_times)
    if n == 0:
        raise ValueError("no samples: a measurement needs at least one time")
    if n == 1:
        return x[0], x[0]
    if n % 2 == 0:
        return _median(x[: n // 2]), _median(x[n // 2 :])
    m = n // 4
    if n % 4 == 1:
        return 0.25 * x[m - 1] + 0.75 * x[m], 0.75 * x[3 * m] + 0.25 * x[3 * m + 1]
    return 0.75 * x[m] + 0.25 * x[m + 1], 0.25 * x[3 * m + 1] + 0.75 * x[3 * m + 2]


@dataclass(frozen=True)
class Measurement:
    """Seconds per call of one timed callable: ``times`` are the raw samples (at least one), in order taken."""

    times: tuple[float, ...]

    def __post_init__(self) -> None:
        times = tuple(float(t) for t in self.times)
        if not times:
            raise ValueError("no samples: a measurement needs at least one time")
        object.__setattr__(self, "times", times)

    @classmethod
    def of(cls, times: Iterable[float]) -> Measurement:
        """From any iterable of seconds (a list, a JSON array, pytest-benchmark's ``Stats.data``)."""
        return cls(tuple(times))

    @classmethod
    def from_stats(cls, stats: Any) -> Measurement:
        """From pytest-benchmark's ``Stats`` (``benchmark.stats.stats``): its raw ``data``, seconds per round."""
        return cls.of(stats.data)

    @cached_property
    def sorted_times(self) -> tuple[float, ...]:
        return tuple(sorted(self.times))

    @property
    def rounds(self) -> int:
        return len(self.times)

    @cached_property
    def median(self) -> float:
        return _median(self.times)

    @cached_property
    def mean(self) -> float:
        return float(statistics.mean(self.times))

    @property
    def min(self) -> float:
        return self.sorted_times[0]

    @property
    def max(self) -> float:
        return self.sorted_times[-1]

    @property
    def q1(self) -> float:
        return quartiles(self.sorted_times)[0]

    @property
    def q3(self) -> float:
        return quartiles(self.sorted_times)[1]

    @cached_property
    def iqr(self) -> float:
        q1, q3 = quartiles(self.sorted_times)
        return q3 - q1

    @property
    def noisy(self) -> bool:
        """The interquartile range exceeds :data:`NOISY_IQR_FRACTION` of the median."""
        return self.iqr > NOISY_IQR_FRACTION * self.median

    @property
    def warning(self) -> str:
        """:data:`NOISY_NOTE` for a noisy measurement, else ``""`` (for a row's ``message``)."""
        return NOISY_NOTE if self.noisy else ""

    def columns(self) -> dict[str, Any]:
        """The report's time columns: ``time_median_s``, ``time_iqr_s``, ``time_mean_s``, ``time_min_s``,
        ``rounds``."""
        return {
            "time_median_s": self.median,
            "time_iqr_s": self.iqr,
            "time_mean_s": self.mean,
            "time_min_s": self.min,
            "rounds": self.rounds,
        }


__all__ = ["NOISY_IQR_FRACTION", "NOISY_NOTE", "Measurement", "quartiles"]
