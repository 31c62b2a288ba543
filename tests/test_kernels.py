"""The Numba kernels against naive float64 formulas, plus input validation and streaming stats."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from harness.kernels import (
    Quantiles,
    RunningStats,
    divergence,
    log_softmax,
    set_num_threads,
    token_nll,
)
from harness.kernels.config import CHUNK

NLL_ATOL = 1e-5
NLL_SUM_RTOL = 1e-7
KLD_ATOL = 1e-6


def _logits(rng, n, v, scale):
    return (rng.uniform(-1.0, 1.0, (n, v)) * scale).astype(np.float32)


def _pair(rng, n, v, scale, noise):
    """Reference logits and a perturbed 'quantised' copy of them."""
    ref = _logits(rng, n, v, scale)
    test = (ref + rng.normal(0.0, noise, ref.shape)).astype(np.float32)
    return ref, test


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 30.0])
def test_token_nll_matches_float64_within_1e5_and_row_sum_within_1e7(scale):
    rng = np.random.default_rng(0)
    logits = _logits(rng, 64, 20_000, scale)
    targets = rng.integers(0, 20_000, 64)
    want = naive.token_nll(logits, targets)
    got = token_nll(logits, targets)
    assert got.dtype == np.float64 and got.shape == (64,)
    np.testing.assert_allclose(got, want, rtol=0, atol=NLL_ATOL)
    assert abs(got.sum() - want.sum()) <= NLL_SUM_RTOL * abs(want.sum())


@pytest.mark.parametrize("width", [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_token_nll_is_exact_across_chunk_boundaries(width):
    rng = np.random.default_rng(width)
    logits = _logits(rng, 8, width, 20.0)
    # The row maximum sits in the last (partial) chunk, so the running max must be rescaled.
    logits[:, -1] = 25.0
    targets = rng.integers(0, width, 8)
    np.testing.assert_allclose(token_nll(logits, targets), naive.token_nll(logits, targets), rtol=0, atol=NLL_ATOL)


def test_log_softmax_matches_float64_and_normalises():
    rng = np.random.default_rng(1)
    logits = _logits(rng, 16, 5000, 30.0)
    logits[3, ::7] = -np.inf
    got = log_softmax(logits)
    assert got.dtype == np.float32 and got.shape == logits.shape
    want = naive.log_softmax(logits)
    assert np.array_equal(np.isneginf(got), np.isneginf(logits))
    finite = np.isfinite(want)
    # float32 output: ~1 ulp of values down to about -60.
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.exp(got.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("scale,noise", [(1.0, 0.05), (10.0, 0.5), (30.0, 2.0), (30.0, 30.0)])
def test_divergence_matches_float64(scale, noise):
    rng = np.random.default_rng(2)
    ref, test = _pair(rng, 48, 10_000, scale, noise)
    targets = rng.integers(0, 10_000, 48)
    kld, agree, delta_p = naive.divergence(ref, test, targets)
    got = divergence(ref, test, targets)
    np.testing.assert_allclose(got.kld, kld, rtol=0, atol=KLD_ATOL)
    np.testing.assert_array_equal(got.top1_agree, agree)
    np.testing.assert_allclose(got.delta_p, delta_p, rtol=0, atol=1e-7)
    assert got.top1_agree.dtype == np.bool_
    assert_nlls_match_float64(got, ref, test, targets)


def assert_nlls_match_float64(got, ref, test, targets):
    """Both runs' NLL from the divergence pass: within 1e-5 per row, their difference within 2e-7 summed."""
    want_ref, want_test = naive.token_nll(ref, targets), naive.token_nll(test, targets)
    assert got.ref_nll.dtype == got.test_nll.dtype == np.float64
    np.testing.assert_allclose(got.ref_nll, want_ref, rtol=0, atol=NLL_ATOL)
    np.testing.assert_allclose(got.test_nll, want_test, rtol=0, atol=NLL_ATOL)
    # float64 row sums: the paired difference keeps far more digits than the 1e-5 budget per row.
    want_d, got_d = want_test - want_ref, got.test_nll - got.ref_nll
    assert abs(got_d.sum() - want_d.sum()) <= 2e-7 * max(1.0, np.abs(want_d).sum())


def test_divergence_of_unrelated_distributions_with_kld_over_50_nats_within_1e6():
    rng = np.random.default_rng(3)
    ref = (rng.standard_normal((8, 30_000)) * 30).astype(np.float32)
    test = (rng.standard_normal((8, 30_000)) * 30 + 7).astype(np.float32)
    targets = rng.integers(0, 30_000, 8)
    kld, _, _ = naive.divergence(ref, test, targets)
    assert kld.min() > 50
    np.testing.assert_allclose(divergence(ref, test, targets).kld, kld, rtol=0, atol=KLD_ATOL)


def test_divergence_of_identical_logits_is_zero_and_agrees():
    rng = np.random.default_rng(4)
    ref = _logits(rng, 8, 7000, 30.0)
    targets = rng.integers(0, 7000, 8)
    got = divergence(ref, ref.copy(), targets)
    assert np.all(got.kld == 0.0)
    assert got.top1_agree.all()
    assert np.all(got.delta_p == 0.0)
    # The paired NLL difference of identical rows is exactly 0, not rounding noise.
    assert np.array_equal(got.ref_nll, got.test_nll)
    np.testing.assert_allclose(got.ref_nll, naive.token_nll(ref, targets), rtol=0, atol=NLL_ATOL)


def test_256k_vocabulary_row():
    rng = np.random.default_rng(5)
    ref, test = _pair(rng, 2, 262_144, 30.0, 1.0)
    targets = np.array([0, 262_143])
    np.testing.assert_allclose(token_nll(ref, targets), naive.token_nll(ref, targets), rtol=0, atol=NLL_ATOL)
    kld, agree, delta_p = naive.divergence(ref, test, targets)
    got = divergence(ref, test, targets)
    np.testing.assert_allclose(got.kld, kld, rtol=0, atol=KLD_ATOL)
    np.testing.assert_array_equal(got.top1_agree, agree)
    np.testing.assert_allclose(got.delta_p, delta_p, rtol=0, atol=1e-7)


def test_masked_tokens_count_as_zero_probability():
    logits = np.array([[0.0, -np.inf, 1.0, -np.inf]], dtype=np.float32)
    # Masked entries must not add exp(-87)-sized mass or NaN.
    np.testing.assert_allclose(token_nll(logits, [2]), [np.log1p(np.exp(-1.0))], rtol=0, atol=1e-7)
    assert token_nll(logits, [1])[0] == np.inf
    same_mask = divergence(logits, logits + np.float32(0.5), [0])
    assert same_mask.kld[0] == pytest.approx(0.0, abs=1e-7)


def test_fully_masked_chunk_before_the_max_is_skipped():
    logits = np.full((1, 3 * CHUNK), -np.inf, dtype=np.float32)
    logits[0, 2 * CHUNK + 3] = 2.0
    logits[0, 2 * CHUNK + 4] = 1.0
    np.testing.assert_allclose(token_nll(logits, [2 * CHUNK + 4]), [1.0 + np.log1p(np.exp(-1.0))], atol=1e-7)
    got = divergence(logits, logits, [2 * CHUNK + 3])
    assert got.kld[0] == pytest.approx(0.0, abs=1e-7) and got.top1_agree[0]


def test_test_masking_a_reference_token_gives_infinite_kld():
    ref = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    test = np.array([[0.0, -np.inf, 2.0]], dtype=np.float32)
    got = divergence(ref, test, [2])
    assert got.kld[0] == np.inf
    masked_target = divergence(ref, test, [1])
    assert masked_target.test_nll[0] == np.inf and np.isfinite(masked_target.ref_nll[0])
    # The reverse direction is finite: the reference has mass wherever the test has.
    kld, _, _ = naive.divergence(test, ref, np.array([2]))
    np.testing.assert_allclose(divergence(test, ref, [2]).kld, kld, atol=KLD_ATOL)


def test_top1_ties_resolve_to_the_lowest_token_id_like_argmax():
    ref = np.zeros((3, CHUNK + 10), dtype=np.float32)
    test = np.zeros_like(ref)
    ref[:, [5, CHUNK + 2]] = 3.0  # tie across two chunks: argmax is 5
    test[0, [5, CHUNK + 2]] = 3.0  # same tie -> agree
    test[1, CHUNK + 2] = 3.0  # only the later tied token -> disagree
    test[2, 5] = 3.0  # only the first tied token -> agree
    got = divergence(ref, test, np.zeros(3, dtype=np.int64))
    assert got.top1_agree.tolist() == [True, False, True]


def test_float16_logits_give_the_float32_result():
    rng = np.random.default_rng(6)
    half = _logits(rng, 4, 3000, 10.0).astype(np.float16)
    targets = rng.integers(0, 3000, 4)
    assert np.array_equal(token_nll(half, targets), token_nll(half.astype(np.float32), targets))


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(7)
    ref, test = _pair(rng, 33, 4000, 10.0, 1.0)
    targets = rng.integers(0, 4000, 33)
    try:
        assert set_num_threads(1) == 1
        one_nll, one_div = token_nll(ref, targets), divergence(ref, test, targets)
        set_num_threads(2)
        two_nll, two_div = token_nll(ref, targets), divergence(ref, test, targets)
    finally:
        set_num_threads(2)
    assert np.array_equal(one_nll, two_nll)
    assert np.array_equal(one_div.kld, two_div.kld)


def test_set_num_threads_caps_at_numba_maximum_and_rejects_zero():
    import numba

    assert set_num_threads(10_000) == numba.config.NUMBA_NUM_THREADS
    with pytest.raises(ValueError, match="positive int"):
        set_num_threads(0)


def test_empty_batch_gives_empty_results():
    empty = np.zeros((0, 10), dtype=np.float32)
    assert token_nll(empty, np.zeros(0, dtype=np.int64)).shape == (0,)
    assert divergence(empty, empty, np.zeros(0, dtype=np.int64)).kld.shape == (0,)


# -- property-based -----------------------------------------------------------


@st.composite
def scored_blocks(draw):
    """A random (ref, test, targets) block: any shape, scale, -inf mask and tie density."""
    n = draw(st.integers(1, 6))
    width = draw(st.integers(1, 3 * CHUNK + 3))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 8.0, 30.0]))
    mask_fraction = draw(st.sampled_from([0.0, 0.3, 0.95]))
    integer_logits = draw(st.booleans())  # integer logits make top-1 ties common
    noise = draw(st.sampled_from([0.0, 0.01, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ref = rng.uniform(-scale, scale, (n, width))
    if integer_logits:
        ref = np.round(ref)
    test = ref + rng.normal(0.0, noise, ref.shape)
    if integer_logits:
        test = np.round(test)
    mask = rng.random((n, width)) < mask_fraction
    mask[np.arange(n), rng.integers(0, width, n)] = False  # every row keeps a token
    ref[mask] = -np.inf
    test[mask] = -np.inf
    targets = np.array([rng.choice(np.flatnonzero(~m)) for m in mask])
    return ref.astype(np.float32), test.astype(np.float32), targets


@settings(max_examples=60, deadline=None)
@given(scored_blocks())
def test_property_kernels_match_float64_reference(block):
    ref, test, targets = block
    want_nll = naive.token_nll(ref, targets)
    got_nll = token_nll(ref, targets)
    np.testing.assert_allclose(got_nll, want_nll, rtol=0, atol=NLL_ATOL)
    # Each row's float32 chunk sums round by ~6e-8, randomly: on a block of a
    # few rows with NLL near 0 that floor, not the relative bound, is what binds.
    assert abs(got_nll.sum() - want_nll.sum()) <= NLL_SUM_RTOL * abs(want_nll.sum()) + 1e-7 * np.sqrt(len(targets))
    kld, agree, delta_p = naive.divergence(ref, test, targets)
    got = divergence(ref, test, targets)
    np.testing.assert_allclose(got.kld, kld, rtol=0, atol=KLD_ATOL)
    np.testing.assert_array_equal(got.top1_agree, agree)
    np.testing.assert_allclose(got.delta_p, delta_p, rtol=0, atol=1e-7)
    assert_nlls_match_float64(got, ref, test, targets)


@settings(max_examples=30, deadline=None)
@given(scored_blocks(), st.floats(-50.0, 50.0))
def test_property_nll_ignores_a_constant_added_to_a_row(block, shift):
    ref, _, targets = block
    shifted = (ref + np.float32(shift)).astype(np.float32)
    # Adding the constant rounds each logit by up to half an ulp of ~80, hence 1e-5.
    np.testing.assert_allclose(
        token_nll(shifted, targets), naive.token_nll(shifted, targets), rtol=0, atol=NLL_ATOL
    )
    assert np.all(token_nll(ref, targets) >= -1e-7)


# -- validation ---------------------------------------------------------------


def _ok():
    return np.zeros((2, 5), dtype=np.float32), np.array([0, 4])


@pytest.mark.parametrize(
    "logits,error,message",
    [
        (np.zeros((2, 5)), TypeError, r"astype\(np.float32\)"),
        (np.zeros(5, dtype=np.float32), ValueError, "2-D"),
        (np.zeros((2, 10), dtype=np.float32)[:, ::2], ValueError, "ascontiguousarray"),
        (np.zeros((2, 0), dtype=np.float32), ValueError, "empty vocabulary"),
        ([[0.0] * 5] * 2, TypeError, "numpy array"),
    ],
)
def test_bad_logits_raise_saying_how_to_fix(logits, error, message):
    with pytest.raises(error, match=message):
        token_nll(logits, np.array([0, 4]))


@pytest.mark.parametrize(
    "targets,error,message",
    [
        (np.array([0, 5]), ValueError, r"targets\[1\] = 5 is outside the vocabulary \[0, 5\)"),
        (np.array([-100, 0]), ValueError, "drop ignored positions"),
        (np.array([0.0, 1.0]), TypeError, "integer token ids"),
        (np.array([0, 1, 2]), ValueError, r"expected \(2,\)"),
    ],
)
def test_bad_targets_raise_saying_how_to_fix(targets, error, message):
    logits, _ = _ok()
    with pytest.raises(error, match=message):
        token_nll(logits, targets)


@pytest.mark.parametrize(
    "value,message",
    [(np.nan, r"logits\[1\] contains NaN"), (np.inf, r"logits\[1\] contains \+inf")],
)
def test_nan_and_positive_inf_are_reported_with_their_row(value, message):
    logits, targets = _ok()
    logits[1, 3] = value
    with pytest.raises(ValueError, match=message):
        token_nll(logits, targets)
    with pytest.raises(ValueError, match=message):
        log_softmax(logits)


def test_nan_hidden_in_a_fully_masked_chunk_is_still_reported():
    logits = np.full((1, 2 * CHUNK), -np.inf, dtype=np.float32)
    logits[0, 0] = np.nan
    logits[0, CHUNK] = 1.0
    with pytest.raises(ValueError, match="contains NaN"):
        token_nll(logits, [CHUNK])


def test_fully_masked_row_is_reported():
    logits, targets = _ok()
    logits[0] = -np.inf
    with pytest.raises(ValueError, match=r"logits\[0\] is entirely -inf"):
        token_nll(logits, targets)


def test_divergence_reports_which_input_is_bad_and_shape_mismatch():
    ref, targets = _ok()
    test = ref.copy()
    test[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"test_logits\[0\] contains NaN"):
        divergence(ref, test, targets)
    with pytest.raises(ValueError, match="differ"):
        divergence(ref, np.zeros((2, 6), dtype=np.float32), targets)


# -- streaming aggregation ----------------------------------------------------


def test_running_stats_over_blocks_equal_numpy_over_all_values():
    rng = np.random.default_rng(8)
    # A large common offset: sumsq/n - mean**2 would lose every digit of the spread.
    blocks = [1e8 + rng.normal(0.0, 1.0, size) for size in (1, 7, 1000, 0, 33)]
    values = np.concatenate(blocks)
    stats = RunningStats()
    for block in blocks:
        stats.add(block)
    assert stats.count == values.size
    assert stats.mean == pytest.approx(values.mean(), rel=1e-15)
    assert stats.std == pytest.approx(values.std(ddof=1), rel=1e-9)
    assert stats.sem == pytest.approx(values.std(ddof=1) / np.sqrt(values.size), rel=1e-9)
    assert stats.sum == pytest.approx(values.sum(), rel=1e-15)
    assert stats.sumsq == pytest.approx(np.square(values).sum(), rel=1e-15)


def test_running_stats_empty_and_single_value_are_nan_not_errors():
    stats = RunningStats()
    assert np.isnan(stats.mean) and np.isnan(stats.std)
    stats.add([2.5])
    assert stats.mean == 2.5 and np.isnan(stats.sem)
    with pytest.raises(ValueError, match="NaN"):
        stats.add([np.nan])


def test_quantiles_are_exact_over_blocks():
    rng = np.random.default_rng(9)
    blocks = [rng.exponential(0.01, size) for size in (5, 1000, 1, 311)]
    values = np.concatenate(blocks)
    quantiles = Quantiles()
    for block in blocks:
        quantiles.add(block)
    for q in (0.5, 0.9, 0.99):
        assert quantiles.quantile(q) == np.quantile(values, q)
    assert quantiles.max == values.max() and quantiles.count == values.size
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantiles.quantile(90)
    assert np.isnan(Quantiles().quantile(0.5))


def test_quantiles_at_once_and_min_match_numpy_and_llama_percentiles():
    rng = np.random.default_rng(10)
    blocks = [rng.normal(0.0, 0.1, size) for size in (3, 500, 9)]
    values = np.sort(np.concatenate(blocks))
    quantiles = Quantiles()
    for block in blocks:
        quantiles.add(block)
    qs = [0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001]
    got = quantiles.quantiles(qs)
    # llama-perplexity's percentile: linear between ranks floor(q (N - 1)) and the next.
    position = np.array(qs) * (values.size - 1)
    low = np.floor(position).astype(int)
    want = values[low] + (position - low) * (values[np.minimum(low + 1, values.size - 1)] - values[low])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # even N: the median is the mean of the two middle values, as llama-perplexity takes it
    middle = values.size // 2
    assert values.size % 2 == 0 and got[5] == pytest.approx(0.5 * (values[middle - 1] + values[middle]), rel=1e-12)
    assert quantiles.min == values[0] and quantiles.max == values[-1]
    assert np.isnan(Quantiles().min) and np.isnan(Quantiles().quantiles([0.5, 0.9])).all()
    with pytest.raises(ValueError, match=r"q=1.5 must be in \[0, 1\]"):
        quantiles.quantiles([0.5, 1.5])


def test_running_stats_m2_is_the_sum_of_squared_deviations_without_cancellation():
    rng = np.random.default_rng(11)
    blocks = [1e8 + rng.normal(0.0, 1.0, size) for size in (4, 900, 1)]
    values = np.concatenate(blocks)
    stats = RunningStats()
    assert stats.m2 == 0.0
    for block in blocks:
        stats.add(block)
    assert stats.m2 == pytest.approx(np.square(values - values.mean()).sum(), rel=1e-9)
