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


def percentile(values: np.ndarray, fraction: float) -> float:
    """llama-perplexity's ``percentile``: linear between sorted ranks floor(f (N - 1)) and the next."""
    values = np.sort(values)
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return float((1 - (position - low)) * values[low] + (position - low) * values[high])


def llama_kld_statistics(ref_nll, test_nll, kld, delta_p, same_top) -> dict:
    """What llama-perplexity --kl-divergence prints, from per-token float64 arrays, by its own formulas (N > 10).

    ``mean_and_uncertainty(sum, sum2, N) = (sum/N, sqrt((sum2/N - (sum/N)^2) / (N - 1)))`` and
    ``covariance(a, b) = (sum(ab)/N - mean(a) mean(b)) / (N - 1)``, from plain sums.
    """
    n = len(ref_nll)
    assert n > 10, "llama-perplexity prints 0 uncertainties below 11 tokens"

    def mean_and_uncertainty(x):
        mean = x.sum() / n
        return mean, np.sqrt((np.square(x).sum() / n - mean * mean) / (n - 1))

    test_mean, test_unc = mean_and_uncertainty(test_nll)
    ref_mean, ref_unc = mean_and_uncertainty(ref_nll)
    cov = ((ref_nll * test_nll).sum() / n - test_mean * ref_mean) / (n - 1)
    kld_mean, kld_unc = mean_and_uncertainty(kld)
    dp_mean, dp_unc = mean_and_uncertainty(delta_p)
    mse, mse_unc = mean_and_uncertainty(np.square(delta_p))
    same = np.count_nonzero(same_top) / n
    return {
        "ln_ratio": test_mean - ref_mean,
        "ln_ratio_unc": np.sqrt(test_unc**2 + ref_unc**2 - 2 * cov),
        "cor": cov / (test_unc * ref_unc),
        "kld_mean": kld_mean, "kld_unc": kld_unc,
        "delta_p_mean": dp_mean, "delta_p_unc": dp_unc,
        "rms": np.sqrt(mse), "rms_unc": 0.5 / np.sqrt(mse) * mse_unc,
        "same_top": 100 * same, "same_top_unc": 100 * np.sqrt(same * (1 - same) / (n - 1)),
    }
