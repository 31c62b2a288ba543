"""Stats: median, spread and the noisy flag of repeated measurements."""

from __future__ import annotations

import dataclasses

import pytest

from harness.stats import Stats


def test_stats_of_odd_count_give_middle_value_extremes_and_iqr():
    stats = Stats.from_values([5.0, 1.0, 3.0, 2.0, 4.0], "tok/s")
    assert (stats.median, stats.min, stats.max, stats.n, stats.unit) == (3.0, 1.0, 5.0, 5, "tok/s")
    assert stats.iqr == pytest.approx(2.0)  # numpy's linear quartiles: 4 - 2
    assert stats.spread == [1.0, 5.0]


def test_median_of_even_count_is_mean_of_middle_two():
    assert Stats.from_values([1.0, 2.0, 10.0, 20.0], "ms").median == 6.0


def test_noisy_when_spread_exceeds_ten_percent_of_median_only():
    assert not Stats.from_values([100.0, 104.0, 110.0], "tok/s").noisy  # 10 < 10.4
    assert Stats.from_values([100.0, 105.0, 111.0], "tok/s").noisy  # 11 > 10.5
    assert not Stats.from_values([7.0], "ms").noisy


def test_noisy_uses_median_magnitude_for_negative_values():
    assert not Stats.from_values([-100.0, -101.0, -102.0], "J").noisy


def test_rejects_empty_and_non_finite_values():
    with pytest.raises(ValueError, match="non-empty"):
        Stats.from_values([], "s")
    with pytest.raises(ValueError, match="finite"):
        Stats.from_values([1.0, float("nan")], "s")


def test_stats_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Stats.from_values([1.0], "s").median = 2.0
