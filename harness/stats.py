"""Summary statistics of repeated measurements: a pure, immutable value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A figure whose min-max spread exceeds this fraction of its median is flagged noisy.
NOISY_SPREAD_FRACTION = 0.10


@dataclass(frozen=True)
class Stats:
    """Median, extremes and interquartile range of ``n`` measured repetitions, in ``unit``."""

    median: float
    min: float
    max: float
    iqr: float
    n: int
    unit: str

    @classmethod
    def from_values(cls, values: Sequence[float], unit: str) -> "Stats":
        """Summarise measured values (warmups already left out); NaNs are an error, not skipped."""
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"need a non-empty 1-D sequence of values, got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"values must be finite, got {array.tolist()}")
        q25, median, q75 = np.percentile(array, [25, 50, 75])
        return cls(float(median), float(array.min()), float(array.max()), float(q75 - q25), int(array.size), unit)

    @property
    def spread(self) -> list[float]:
        """``[min, max]``, the form the result schema stores next to each figure."""
        return [self.min, self.max]

    @property
    def noisy(self) -> bool:
        """True when (max - min) exceeds 10% of the median."""
        return (self.max - self.min) > NOISY_SPREAD_FRACTION * abs(self.median)
