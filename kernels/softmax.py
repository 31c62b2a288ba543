"""Row-wise log-softmax of (N, V) logits."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .config import FASTMATH, small_row_tasks
from .intrinsics import prefer_512bit_vectors
from .rows import row_logsumexp
from .validate import check_logits, raise_for_bad_rows


@njit(cache=True, fastmath=FASTMATH)
def _subtract(row, shift, out):
    prefer_512bit_vectors()
    # In float64, so that the float32 output is rounded once, not twice.
    for j in range(row.size):
        out[j] = np.float32(np.float64(row[j]) - shift)


@njit(cache=True, parallel=True)
def _log_softmax(logits, out):
    n_rows, width = logits.shape  # (N, V) float32
    flat = logits.reshape(-1)
    lse = np.empty(n_rows)  # (N,) float64
    for i in prange(n_rows):
        lse[i] = row_logsumexp(flat, i * width, width)
        # The row is still in L2 from the pass above.
        _subtract(logits[i], lse[i], out[i])
    return lse


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over each row of logits (N, V): float32 (N, V); -inf logits stay -inf."""
    logits = check_logits(logits)
    out = np.empty(logits.shape, dtype=np.float32)
    with small_row_tasks():
        lse = _log_softmax(logits, out)
    # A NaN, +inf or fully masked row gives a non-finite lse.
    raise_for_bad_rows(np.where(np.isfinite(lse), 0.0, np.nan), {"logits": logits})
    return out
