"""benchmarks.harness.measurement: quartiles, IQR and the noisy-timing flag against hand-computed values, and against
pytest-benchmark's own ``Stats`` on the same samples (the model rows' figures must not change).

Hand rule (Wikipedia "Quartile", methods 2 and 3, 1-based positions): even n, the medians of the lower and upper
halves; n = 4m+1, q1 = 25% of the m-th + 75% of the (m+1)-th value, q3 = 75% of the (3m+1)-th + 25% of the
(3m+2)-th; n = 4m+3, q1 = 75% of the (m+1)-th + 25% of the (m+2)-th, q3 = 25% of the (3m+2)-th + 75% of the
(3m+3)-th.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from xfbench.benchmarks.harness.measurement import NOISY_NOTE, Measurement, quartiles


@pytest.mark.parametrize(
    "times, q1, q3",
    [
        ((3.0,), 3.0, 3.0),  # one sample: every quartile is it
        ((4.0, 1.0, 3.0, 2.0), 1.5, 3.5),  # halves 1,2 and 3,4
        ((2.0, 1.0), 1.0, 2.0),  # halves of one each
        ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), 2.0, 5.0),  # halves 1,2,3 and 4,5,6
        ((5.0, 4.0, 3.0, 2.0, 1.0), 1.75, 4.25),  # 4m+1, m=1: .25*1 + .75*2 ; .75*4 + .25*5
        ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0), 2.75, 7.25),  # m=2: .25*2 + .75*3 ; .75*7 + .25*8
        ((7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0), 2.25, 5.75),  # 4m+3, m=1: .75*2 + .25*3 ; .25*5 + .75*6
        ((0.30, 0.10, 0.20), 0.125, 0.275),  # m=0: .75*.1 + .25*.2 ; .25*.2 + .75*.3
    ],
)
def test_quartiles_by_hand(times: tuple[float, ...], q1: float, q3: float) -> None:
    m = Measurement(times)
    assert (m.q1, m.q3) == (pytest.approx(q1, abs=1e-15), pytest.approx(q3, abs=1e-15))
    assert m.iqr == pytest.approx(q3 - q1, abs=1e-15)
    assert quartiles(sorted(times)) == (m.q1, m.q3)


def test_median_mean_min_rounds_and_columns_by_hand() -> None:
    m = Measurement.of([0.4, 0.1, 0.3, 0.2])
    assert m.times == (0.4, 0.1, 0.3, 0.2)  # raw, in the order taken
    assert m.rounds == 4 and m.min == 0.1 and m.max == 0.4
    assert m.median == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert m.mean == pytest.approx(0.25)  # 1.0 / 4
    assert m.columns() == {
        "time_median_s": m.median,
        "time_iqr_s": pytest.approx(0.2),  # halves 0.1,0.2 and 0.3,0.4: 0.35 - 0.15
        "time_mean_s": m.mean,
        "time_min_s": 0.1,
        "rounds": 4,
    }


def test_the_rule_is_neither_numpy_nor_statistics_default() -> None:
    # 1, 2, 3, 4: numpy's linear rule gives 3.25 - 1.75 = 1.5, statistics.quantiles (exclusive) 3.75 - 1.25 = 2.5;
    # the halves' medians give 3.5 - 1.5 = 2.
    assert Measurement((1.0, 2.0, 3.0, 4.0)).iqr == 2.0


def test_noisy_flag_at_and_above_ten_percent_of_the_median() -> None:
    at = Measurement((9.5, 9.5, 10.5, 10.5))  # iqr 1.0, median 10.0: exactly 10%, not above
    assert at.iqr == 1.0 and at.median == 10.0
    assert not at.noisy and at.warning == ""
    above = Measurement((9.5, 9.5, 10.5, 11.0))  # iqr 10.75 - 9.5 = 1.25 > 1.0
    assert above.noisy and above.warning == NOISY_NOTE == "IQR > 10% of the median: noisy timing"
    assert not Measurement((0.2,)).noisy  # one sample: iqr 0


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Measurement(())


def test_same_figures_as_pytest_benchmark_stats() -> None:
    stats_mod = pytest.importorskip("pytest_benchmark.stats")
    rng = random.Random(12)
    for n in range(1, 41):
        for _ in range(3):
            times = [rng.lognormvariate(-5.0, 0.4) for _ in range(n)]
            stats = stats_mod.Stats()
            for t in times:
                stats.update(t)
            m = Measurement.from_stats(stats)
            assert m.times == tuple(times)
            # Exactly equal: the same rule on the same floats (the model rows' time_iqr_s must not move).
            assert (m.q1, m.q3, m.iqr) == (stats.q1, stats.q3, stats.iqr), n
            assert (m.median, m.mean, m.min, m.rounds) == (stats.median, stats.mean, stats.min, stats.rounds), n


def test_time_columns_of_a_model_row() -> None:
    from xfbench.benchmarks.harness.rows import time_columns

    cols = time_columns(Measurement((0.5, 0.4, 0.75)), 4)
    assert cols["time_median_s"] == 0.5 and cols["rounds"] == 3
    assert cols["throughput_samples_per_s"] == 8.0  # 4 samples / 0.5 s
    # pytest-benchmark's Stats: through its raw rounds, the same columns.
    assert time_columns(SimpleNamespace(data=[0.5, 0.4, 0.75]), 4) == cols
