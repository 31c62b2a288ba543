"""Fused token negative log-likelihood: log-sum-exp minus the target logit, per row."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .config import small_row_tasks
from .rows import row_logsumexp
from .validate import check_logits, check_targets, raise_for_bad_rows


@njit(cache=True, parallel=True)
def _token_nll(logits, targets):
    n_rows, width = logits.shape  # (N, V) float32; targets (N,) int64
    flat = logits.reshape(-1)
    nll = np.empty(n_rows)  # (N,) float64
    for i in prange(n_rows):
        start = i * width
        nll[i] = row_logsumexp(flat, start, width) - flat[start + targets[i]]
    return nll


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of each row's target token: float64 (N,) from logits (N, V).

    A target whose logit is -inf gets +inf. Each row is read twice at most,
    the second time from cache; the log-softmax is never materialised.
    """
    logits = check_logits(logits)
    targets = check_targets(targets, logits.shape[0], logits.shape[1])
    with small_row_tasks():
        nll = _token_nll(logits, targets)
    raise_for_bad_rows(nll, {"logits": logits})
    return nll
