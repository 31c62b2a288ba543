"""Per-row building blocks of the kernels: chunked max, exp-sums and online log-sum-exp.

Each row is walked in chunks of `CHUNK` elements: a max pass streams the chunk
from memory into L1, then the exp pass reads it from L1. Chunk sums are float32
(vectorised) and join a float64 running total rescaled to the row's running max.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .config import CHUNK, FASTMATH
from .intrinsics import exp_f32, max_f32, prefer_512bit_vectors, prefetch

# Elements per 64-byte cache line of float32.
_LINE = 16


@njit(cache=True, fastmath=FASTMATH)
def chunk_max(chunk):
    """Largest element of a float32 chunk (C,); NaN if any is NaN, -inf if empty."""
    prefer_512bit_vectors()
    top = np.float32(-np.inf)
    for j in range(chunk.size):
        top = max_f32(top, chunk[j])
    return top


@njit(cache=True, fastmath=FASTMATH)
def chunk_exp_sum(chunk, shift):
    """Sum of exp(chunk - shift) over a float32 chunk (C,), with shift >= max(chunk).

    float32 keeps the loop at 16 lanes (a float64 sum costs ~2x here); the
    chunk's ~6e-8 relative rounding is random across chunks and rows, far
    inside the 1e-5 per-row and 1e-7 relative summed-NLL budgets.
    """
    prefer_512bit_vectors()
    total = np.float32(0.0)
    for j in range(chunk.size):
        total += exp_f32(chunk[j] - shift)
    return total


@njit(cache=True, fastmath=FASTMATH)
def chunk_kl_sums(ref, test, ref_shift, test_shift):
    """Sums over two float32 chunks (C,): exp(ref - rs), exp(test - ts) and exp(ref - rs) * (ref - test).

    All three are float64. The ratio of the first and last, E_ref[ref - test],
    is then a weighted mean with no rounding of its own (it can be ~100 nats
    when KLD is, where float32 would leave ~1e-5 of error), and identical
    inputs give identical sums, so KLD is exactly 0 and Δp exactly 0.
    """
    prefer_512bit_vectors()
    ref_sum = 0.0
    test_sum = 0.0
    weighted = 0.0
    for j in range(ref.size):
        p = exp_f32(ref[j] - ref_shift)
        ref_sum += np.float64(p)
        test_sum += np.float64(exp_f32(test[j] - test_shift))
        log_ratio = np.float64(ref[j]) - np.float64(test[j])
        # p == 0 exactly where ref is -inf, where the difference may be NaN.
        weighted += np.float64(p) * log_ratio if ref[j] > -np.inf else 0.0
    return ref_sum, test_sum, weighted


@njit(cache=True)
def first_index_of(chunk, value):
    """Index of the first element equal to `value` in chunk (C,), or -1."""
    for j in range(chunk.size):
        if chunk[j] == value:
            return j
    return -1


@njit(cache=True)
def prefetch_span(flat, start, stop):
    """Ask for flat[start:stop] (clipped to the array) to be brought into cache."""
    stop = min(stop, flat.size)
    for j in range(start, stop, _LINE):
        prefetch(flat, j)


@njit(cache=True)
def rescale_to(top, total, chunk_top, chunk_total):
    """Merge a chunk's (max, sum of exp(x - max)) into a row's running (max, sum)."""
    if chunk_top > top:
        return chunk_top, total * math.exp(top - chunk_top) + chunk_total
    return top, total + chunk_total * math.exp(chunk_top - top)


@njit(cache=True)
def row_logsumexp(flat, start, width):
    """log(sum(exp(row))) in float64 for the row flat[start:start + width] (float32)."""
    top = -np.inf
    total = 0.0
    for c0 in range(0, width, CHUNK):
        c1 = min(c0 + CHUNK, width)
        # The next chunk (or the next row's first) streams in while this one computes.
        prefetch_span(flat, start + c1, start + c1 + CHUNK)
        chunk = flat[start + c0:start + c1]
        chunk_top = chunk_max(chunk)
        if chunk_top == -np.inf:
            continue  # fully masked chunk: adds exactly 0
        chunk_total = chunk_exp_sum(chunk, chunk_top)
        top, total = rescale_to(top, total, np.float64(chunk_top), np.float64(chunk_total))
    return top + math.log(total)


@njit(cache=True)
def row_divergence(ref_flat, test_flat, start, width, target):
    """(KL(ref || test), top-1 agreement, p_test(target) - p_ref(target), ref NLL, test NLL) for one row pair.

    Both NLLs come from the same float64 row sums as the KL, so identical rows
    give identical NLLs (a paired difference of exactly 0).
    """
    ref_top = -np.inf
    ref_total = 0.0
    ref_weighted = 0.0  # sum of exp(ref - ref_top) * (ref - test)
    test_top = -np.inf
    test_total = 0.0
    ref_argmax = 0
    test_argmax = 0
    for c0 in range(0, width, CHUNK):
        c1 = min(c0 + CHUNK, width)
        prefetch_span(ref_flat, start + c1, start + c1 + CHUNK)
        prefetch_span(test_flat, start + c1, start + c1 + CHUNK)
        ref = ref_flat[start + c0:start + c1]
        test = test_flat[start + c0:start + c1]
        ref_chunk_top = chunk_max(ref)
        test_chunk_top = chunk_max(test)
        # Strict `>` keeps the first index among ties, as np.argmax does.
        if ref_chunk_top > ref_top:
            ref_argmax = c0 + first_index_of(ref, ref_chunk_top)
        if test_chunk_top > test_top:
            test_argmax = c0 + first_index_of(test, test_chunk_top)
        # A fully masked side shifts by 0 instead: its exps are then exactly 0.
        ref_shift = ref_chunk_top if ref_chunk_top > -np.inf else np.float32(0.0)
        test_shift = test_chunk_top if test_chunk_top > -np.inf else np.float32(0.0)
        ref_sum, test_sum, weighted = chunk_kl_sums(ref, test, ref_shift, test_shift)
        if test_chunk_top != -np.inf:
            test_top, test_total = rescale_to(test_top, test_total, np.float64(test_chunk_top), test_sum)
        if ref_chunk_top != -np.inf:
            if ref_chunk_top > ref_top:
                scale = math.exp(ref_top - ref_chunk_top)
                ref_total = ref_total * scale + ref_sum
                ref_weighted = ref_weighted * scale + weighted
                ref_top = np.float64(ref_chunk_top)
            else:
                scale = math.exp(ref_chunk_top - ref_top)
                ref_total += ref_sum * scale
                ref_weighted += weighted * scale
    ref_lse = ref_top + math.log(ref_total)
    test_lse = test_top + math.log(test_total)
    # KL = E_ref[ref - test] - ref_lse + test_lse; the sums above hold E_ref[ref - test].
    kld = ref_weighted / ref_total - ref_lse + test_lse
    ref_nll = ref_lse - ref_flat[start + target]
    test_nll = test_lse - test_flat[start + target]
    delta_p = math.exp(-test_nll) - math.exp(-ref_nll)
    return kld, ref_argmax == test_argmax, delta_p, ref_nll, test_nll
