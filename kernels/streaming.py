"""Streaming aggregation of per-token values over many blocks without keeping the blocks."""

from __future__ import annotations

import math

import numpy as np


def _as_values(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(values).any():
        raise ValueError("values contain NaN; score only valid positions")
    return values


class RunningStats:
    """Count, sum, sum of squares, mean and spread of values added block by block.

    The spread comes from Chan's pairwise merge of (count, mean, M2), which
    stays accurate where sumsq/count - mean**2 would cancel.
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean

    def add(self, values) -> None:
        """Fold a block of values (any shape) into the statistics."""
        values = _as_values(values)
        n = values.size
        if n == 0:
            return
        block_mean = float(values.mean())
        block_m2 = float(np.square(values - block_mean).sum())
        total = self.count + n
        delta = block_mean - self._mean
        self._mean += delta * n / total
        self._m2 += block_m2 + delta * delta * self.count * n / total
        self.count = total
        self.sum += float(values.sum())
        self.sumsq += float(np.square(values).sum())

    @property
    def mean(self) -> float:
        """Mean of the values; NaN before any were added."""
        return self._mean if self.count else math.nan

    @property
    def m2(self) -> float:
        """Sum of squared deviations from the mean (0.0 before any values): the numerator of the variance."""
        return self._m2

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN with fewer than two values."""
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else math.nan

    @property
    def sem(self) -> float:
        """Standard error of the mean, std / sqrt(count); NaN with fewer than two values."""
        return self.std / math.sqrt(self.count) if self.count > 1 else math.nan


class Quantiles:
    """Exact quantiles, min and max of values added block by block.

    Keeps one float64 per value (8 MB per million tokens), not the blocks
    they came from, so quantiles are exact rather than sketched.
    """

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self.count = 0

    def add(self, values) -> None:
        """Keep a block of values (any shape)."""
        values = _as_values(values)
        if values.size:
            self._parts.append(values.copy())
            self.count += values.size

    def _values(self) -> np.ndarray:
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0] if self._parts else np.empty(0)

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1, linear interpolation as np.quantile); NaN if empty."""
        return float(self.quantiles([q])[0])

    def quantiles(self, qs) -> np.ndarray:
        """Several quantiles at once (one partial sort), float64 (len(qs),); NaN where empty.

        Linear interpolation between the two nearest ranks at q * (count - 1),
        as np.quantile and llama-perplexity's ``percentile`` do (its median, the
        mean of the two middle values, is the same number).
        """
        qs = np.asarray(qs, dtype=np.float64).reshape(-1)
        bad = qs[~((qs >= 0.0) & (qs <= 1.0))]
        if bad.size:
            raise ValueError(f"quantile q={bad[0]} must be in [0, 1]; pass 0.9 for p90")
        values = self._values()
        return np.quantile(values, qs) if values.size else np.full(qs.shape, math.nan)

    @property
    def max(self) -> float:
        """Largest value; NaN if empty."""
        values = self._values()
        return float(values.max()) if values.size else math.nan

    @property
    def min(self) -> float:
        """Smallest value; NaN if empty."""
        values = self._values()
        return float(values.min()) if values.size else math.nan
