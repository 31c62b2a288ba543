"""Naive float64 references for the kernels: the textbook formulas, no chunking, no tricks."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax of each row of (N, V); -inf stays -inf."""
    x = logits.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row, float64 (N,)."""
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def divergence(ref: np.ndarray, test: np.ndarray, targets: np.ndarray):
    """(KL(ref || test), argmax agreement, p_test(target) - p_ref(target)) per row, in float64."""
    log_p = log_softmax(ref)
    log_q = log_softmax(test)
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    rows = np.arange(len(targets))
    delta_p = np.exp(log_q[rows, targets]) - p[rows, targets]
    return terms.sum(axis=1), ref.argmax(axis=1) == test.argmax(axis=1), delta_p
