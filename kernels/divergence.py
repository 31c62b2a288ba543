"""Fused divergence of test logits from reference logits: KL, top-1 agreement, Δp and both NLLs per row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .config import small_row_tasks
from .rows import row_divergence
from .validate import check_logits, check_same_shape, check_targets, raise_for_bad_rows


@dataclass(frozen=True)
class Divergence:
    """Per-row comparison of a test distribution with the reference one."""

    kld: np.ndarray  # (N,) float64, KL(ref || test) in nats
    top1_agree: np.ndarray  # (N,) bool, argmax(ref) == argmax(test), first index among ties
    delta_p: np.ndarray  # (N,) float64, p_test(target) - p_ref(target)
    ref_nll: np.ndarray  # (N,) float64, -log p_ref(target) in nats
    test_nll: np.ndarray  # (N,) float64, -log p_test(target) in nats


@njit(cache=True, parallel=True)
def _divergence(ref_logits, test_logits, targets):
    n_rows, width = ref_logits.shape  # (N, V) float32 both; targets (N,) int64
    ref_flat = ref_logits.reshape(-1)
    test_flat = test_logits.reshape(-1)
    kld = np.empty(n_rows)
    top1_agree = np.empty(n_rows, dtype=np.bool_)
    delta_p = np.empty(n_rows)
    ref_nll = np.empty(n_rows)
    test_nll = np.empty(n_rows)
    for i in prange(n_rows):
        kld[i], top1_agree[i], delta_p[i], ref_nll[i], test_nll[i] = row_divergence(
            ref_flat, test_flat, i * width, width, targets[i]
        )
    return kld, top1_agree, delta_p, ref_nll, test_nll


def divergence(ref_logits: np.ndarray, test_logits: np.ndarray, targets: np.ndarray) -> Divergence:
    """Compare test logits with reference logits, both (N, V), row by row.

    KL is +inf where the test masks (-inf) a token the reference gives mass to,
    and an NLL is +inf where that side masks the target. Top-1 ties resolve to
    the lowest token id, as greedy decoding with argmax does. The NLLs are the
    reference's log-softmax (and the test's) at the target, which the KL pass
    computes anyway: scoring a variant against a reference needs no separate
    ``token_nll`` pass, and the paired difference ``test_nll - ref_nll`` of two
    identical rows is exactly 0.
    """
    ref_logits = check_logits(ref_logits, "ref_logits")
    test_logits = check_logits(test_logits, "test_logits")
    check_same_shape(ref_logits, test_logits)
    targets = check_targets(targets, ref_logits.shape[0], ref_logits.shape[1])
    with small_row_tasks():
        kld, top1_agree, delta_p, ref_nll, test_nll = _divergence(ref_logits, test_logits, targets)
    raise_for_bad_rows(kld + delta_p, {"ref_logits": ref_logits, "test_logits": test_logits})
    return Divergence(kld=kld, top1_agree=top1_agree, delta_p=delta_p, ref_nll=ref_nll, test_nll=test_nll)
