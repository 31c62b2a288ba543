"""Stats: median, spread and the bootstrap intervals of repeated measurements, against hand-computed cases."""

from __future__ import annotations

import dataclasses
from math import comb

import numpy as np
import pytest

from harness.stats import Stats, median_interval, ratio_of_medians


def test_stats_of_odd_count_give_middle_value_extremes_and_iqr():
    stats = Stats.from_values([5.0, 1.0, 3.0, 2.0, 4.0], "tok/s")
    assert (stats.median, stats.min, stats.max, stats.n, stats.unit) == (3.0, 1.0, 5.0, 5, "tok/s")
    assert stats.iqr == pytest.approx(2.0)  # numpy's linear quartiles: 4 - 2
    assert stats.spread == [1.0, 5.0]


def test_median_of_even_count_is_mean_of_middle_two():
    assert Stats.from_values([1.0, 2.0, 10.0, 20.0], "ms").median == 6.0


def bootstrap_median_cdf(n: int, j: int) -> float:
    """P(the median of a resample of n distinct values is at most the j-th smallest), n odd: Bin(n, j/n) >= (n+1)/2."""
    p, k = j / n, (n + 1) // 2
    return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_median_interval_of_three_to_five_repetitions_is_their_range():
    # n = 3: the resample median is the minimum with probability 7/27 = 0.26, far above 2.5 %.
    assert bootstrap_median_cdf(3, 1) == pytest.approx(7 / 27)
    assert median_interval([10.0, 13.0, 11.0]) == (10.0, 13.0)
    assert bootstrap_median_cdf(5, 1) == pytest.approx(0.05792)  # still above 2.5 %
    assert median_interval([10.0, 12.0, 11.0, 14.0, 13.0]) == (10.0, 14.0)


def test_median_interval_of_seven_leaves_out_the_extremes_so_an_outlier_does_not_widen_it():
    # n = 7: P(median* = x(1)) = P(Bin(7, 1/7) >= 4) = 1.0 % < 2.5 % < P(median* <= x(2)) = 10.8 %.
    assert bootstrap_median_cdf(7, 1) == pytest.approx(0.01015, abs=1e-5)
    assert bootstrap_median_cdf(7, 2) == pytest.approx(0.1083, abs=1e-4)
    assert median_interval([100.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]) == (11.0, 15.0)
    # A t-interval on the same values would reach past 40 on each side of the mean.
    stats = Stats.from_values([100.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0], "ms")
    assert stats.ci == (11.0, 15.0) and stats.interval == [11.0, 15.0]
    assert stats.half_width_pct == pytest.approx(100 * 2 / 13)


def test_an_interval_needs_two_values_and_is_the_same_for_the_same_values():
    assert median_interval([7.0]) is None
    single = Stats.from_values([7.0], "ms")
    assert single.ci is None and single.half_width_pct == float("inf") and not single.within(100.0)
    values = np.random.default_rng(5).normal(100, 3, 12)
    assert median_interval(values) == median_interval(values.copy())
    low, high = median_interval(values)
    assert values.min() < low < np.median(values) < high < values.max()


def test_within_target_compares_the_half_width_with_the_median():
    stats = Stats.from_values([97.0, 100.0, 103.0], "tok/s")  # interval [97, 103]: half-width 3 % of 100
    assert stats.within(3.0) and not stats.within(2.9)
    assert Stats.from_values([5.0, 5.0, 5.0], "ms").within(0.0)


def test_ratio_of_medians_of_three_a_side_is_the_range_rule():
    a, b = [48.0, 50.0, 52.0], [57.0, 58.0, 59.0]
    ratio = ratio_of_medians(a, b)
    # Each end has probability (7/27)^2 = 6.7 % > 2.5 %: the interval is [min b / max a, max b / min a].
    assert (ratio.ratio, ratio.low, ratio.high) == pytest.approx((58 / 50, 57 / 52, 59 / 48))
    assert ratio.significant
    overlapping = ratio_of_medians([70.0, 80.0, 90.0], [75.0, 85.0, 95.0])
    assert overlapping.low == pytest.approx(75 / 90) and overlapping.high == pytest.approx(95 / 70)
    assert not overlapping.significant


def test_ratio_of_medians_finds_a_one_percent_change_in_quiet_samples_and_none_in_equal_ones():
    rng = np.random.default_rng(1)
    a = 100.0 * (1 + 0.002 * rng.standard_normal(15))
    b = 101.0 * (1 + 0.002 * rng.standard_normal(15))
    faster = ratio_of_medians(a, b)
    assert faster.significant and 1.0 < faster.low < 1.01 < faster.high < 1.02
    same = ratio_of_medians(a, a[::-1])
    assert same.ratio == 1.0 and same.low < 1.0 < same.high and not same.significant


def test_ratio_of_medians_rejects_non_positive_values():
    with pytest.raises(ValueError, match="positive"):
        ratio_of_medians([1.0, 0.0], [1.0, 2.0])


def test_rejects_empty_and_non_finite_values():
    with pytest.raises(ValueError, match="non-empty"):
        Stats.from_values([], "s")
    with pytest.raises(ValueError, match="finite"):
        Stats.from_values([1.0, float("nan")], "s")


def test_stats_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Stats.from_values([1.0], "s").median = 2.0
