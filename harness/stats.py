"""Summary statistics of repeated measurements: pure, immutable values and the intervals behind them.

A timed figure is the median of its repetitions; its 95 % interval is a
percentile bootstrap of that median (``median_interval``), and a change
between two runs is the ratio of their medians with a bootstrap interval
(``ratio_of_medians``). Why the bootstrap of the median and not a t-interval:
the figure shown is the median, and timings on a shared machine have a long
tail of slow repetitions (a neighbour took the core) that drags a mean and
inflates its t-interval while the median and its bootstrap stay put. The price
is small samples: with 3 to 6 repetitions the percentile bootstrap of a median
is the [min, max] range of the repetitions, which covers the true median less
often than 95 % (75 % with 3, 94 % with 5); from about 7 it narrows to inner
order statistics. The resampling is seeded, so the same values always give
the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000  # the 2.5 % tail holds 100 resamples: the interval's ends move by < 1 rank between seeds
BOOTSTRAP_SEED = 0
MIN_VALUES_FOR_INTERVAL = 2  # one value says nothing about its spread


def _finite_1d(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"values must be finite, got {array.tolist()}")
    return array


def _bootstrap_medians(array: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The medians of ``resamples`` resamples (with replacement) of ``array``: (resamples,)."""
    picks = rng.integers(0, array.size, size=(resamples, array.size))
    return np.median(array[picks], axis=1)


def _tails(confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = 1.0 - confidence
    return alpha / 2, 1.0 - alpha / 2


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """The percentile-bootstrap ``confidence`` interval of the median of ``values``; None for fewer than 2."""
    array = _finite_1d(values)
    if array.size < MIN_VALUES_FOR_INTERVAL:
        return None
    medians = _bootstrap_medians(array, np.random.default_rng(seed), resamples)
    low, high = np.quantile(medians, _tails(confidence))
    return float(low), float(high)


@dataclass(frozen=True)
class Ratio:
    """``median(b) / median(a)`` with its bootstrap interval; significant when the interval leaves out 1."""

    ratio: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 1.0 or self.high < 1.0


def ratio_of_medians(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Ratio:
    """B/A of two independent samples' medians, each resampled on its own (a two-sample bootstrap).

    With 3 values on each side the interval is [min b / max a, max b / min a],
    so a change is significant exactly when the two [min, max] ranges do not
    overlap; with more repetitions it narrows. Values must be positive.
    """
    array_a, array_b = _finite_1d(a), _finite_1d(b)
    if (array_a <= 0).any() or (array_b <= 0).any():
        raise ValueError("ratio_of_medians needs positive values (speeds, times, energies)")
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_medians(array_b, rng, resamples) / _bootstrap_medians(array_a, rng, resamples)
    low, high = np.quantile(ratios, _tails(confidence))
    return Ratio(float(np.median(array_b) / np.median(array_a)), float(low), float(high))


@dataclass(frozen=True)
class Stats:
    """Median, extremes, interquartile range and the median's 95 % interval of ``n`` measured repetitions."""

    median: float
    min: float
    max: float
    iqr: float
    n: int
    unit: str
    ci: tuple[float, float] | None = None  # None below MIN_VALUES_FOR_INTERVAL values

    @classmethod
    def from_values(cls, values: Sequence[float], unit: str) -> "Stats":
        """Summarise measured values (warmups already left out); NaNs are an error, not skipped."""
        array = _finite_1d(values)
        q25, median, q75 = np.percentile(array, [25, 50, 75])
        return cls(float(median), float(array.min()), float(array.max()), float(q75 - q25), int(array.size), unit,
                   median_interval(array))

    @property
    def spread(self) -> list[float]:
        """``[min, max]``, the form the result schema stores next to each figure."""
        return [self.min, self.max]

    @property
    def interval(self) -> list[float] | None:
        """``[low, high]`` of the 95 % interval, as the schema stores it, or None."""
        return None if self.ci is None else [self.ci[0], self.ci[1]]

    @property
    def half_width_pct(self) -> float:
        """Half the interval's width in percent of the median; infinite without an interval or with a zero median."""
        if self.ci is None or self.median == 0:
            return float("inf")
        return 100.0 * (self.ci[1] - self.ci[0]) / 2.0 / abs(self.median)

    def within(self, target_pct: float) -> bool:
        """True when the interval's half-width is at most ``target_pct`` % of the median."""
        return self.half_width_pct <= target_pct


# ---- two variants on the same documents ----------------------------------------------------------
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class PairedOutcomes:
    """A variant against its reference on the same documents: the mean of the per-document differences.

    ``delta`` is mean(variant - reference), ``ci`` its 95 % normal interval from the differences'
    standard error (the paired interval: a document both get right or both get wrong adds nothing to
    it). For outcomes of 0 and 1, ``mcnemar_p`` is the exact McNemar test's two-sided p-value, from the
    documents where the two disagree (``only_reference`` right on the reference alone, ``only_variant``
    on the variant alone); None for other outcomes.
    """

    docs: int
    delta: float
    ci: tuple[float, float]
    only_reference: int | None = None
    only_variant: int | None = None
    mcnemar_p: float | None = None

    @property
    def tied(self) -> bool:
        """Indistinguishable from the reference: the interval holds 0 (and McNemar does not reject at 5 %)."""
        within = self.ci[0] <= 0.0 <= self.ci[1]
        return within and (self.mcnemar_p is None or self.mcnemar_p >= 1 - CONFIDENCE)


def paired_outcomes(variant: Sequence[float], reference: Sequence[float]) -> PairedOutcomes:
    """The paired difference of two equally long per-document outcome lists (same documents, same order)."""
    v, r = np.asarray(variant, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if v.shape != r.shape or v.ndim != 1 or len(v) == 0:
        raise ValueError(f"paired outcomes need two lists over the same documents, got {v.shape} and {r.shape}")
    d = v - r
    delta = float(d.mean())
    half = Z_95 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    if not np.isin(np.concatenate([v, r]), (0.0, 1.0)).all():
        return PairedOutcomes(len(d), delta, (delta - half, delta + half))
    only_reference, only_variant = int(np.sum((r == 1) & (v == 0))), int(np.sum((r == 0) & (v == 1)))
    return PairedOutcomes(len(d), delta, (delta - half, delta + half), only_reference, only_variant,
                          mcnemar_exact_p(only_reference, only_variant))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``min(b, c)`` of ``b + c`` discordant pairs at 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)
