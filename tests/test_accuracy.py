"""Accuracy figures on small synthetic logits whose answers are worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import naive
import numpy as np
import pytest
from fakes import FakeBackend, fake_variant

from harness.backends.base import LogitBlock
from harness.measure.accuracy import (
    aligned_rows,
    first_divergence,
    first_divergences,
    score_variant,
)
from harness.measure.divergence_stats import PAIRED_SUM_KEYS
from harness.results import Accuracy
from harness.text.protocols import Window, build_windows
from harness.text.tokenizer import TokenizedText, token_text_counts

LN2 = math.log(2)
Z = 1.96
_NAMES = Accuracy.field_names()
# Every figure measured against the reference: from the paired NLL to the RMS of Δp.
DIVERGENCE_KEYS = _NAMES[_NAMES.index("delta_nll_mean"):_NAMES.index("delta_p_rms_stderr") + 1]
P_REF = np.array([1 / 2, 1 / 4, 1 / 8, 1 / 8])
P_TEST = np.array([1 / 4, 1 / 2, 1 / 8, 1 / 8])


def constant(p: np.ndarray):
    """Logits whose softmax is ``p`` after every prefix."""
    return lambda prefix: np.log(p)


def loaded(backend: FakeBackend) -> FakeBackend:
    backend.load()
    return backend


@pytest.fixture
def hand_case():
    """"The cat sat." as tokens "The" " cat" " sat" "." (ids 3 0 1 2), one window scoring the last three."""
    text = "The cat sat."
    token_bytes, token_words = token_text_counts(text, np.array([3, 7, 11, 12]))
    tokenized = TokenizedText("hand", np.array([3, 0, 1, 2]), token_bytes, token_words)
    window = Window(np.array([3, 0, 1, 2], dtype=np.int64), 0, np.array([1, 2, 3]))
    ref = loaded(FakeBackend(fake_variant("ref"), vocab_size=4, logits_fn=constant(P_REF)))
    test = loaded(FakeBackend(fake_variant("test"), vocab_size=4, logits_fn=constant(P_TEST)))
    return tokenized, window, ref, test


def test_hand_case_token_perplexity_and_its_error_bar(hand_case):
    tokenized, window, ref, test = hand_case
    acc = score_variant(test, [window], ref, text=tokenized)
    # targets 0, 1, 2 under P_TEST: NLL = 2 ln2, ln2, 3 ln2; mean 2 ln2 -> PPL 4
    assert acc.tokens_scored == 3
    assert acc.nll_mean == pytest.approx(2 * LN2, rel=1e-6)
    assert acc.ppl == pytest.approx(4.0, rel=1e-6)
    # llama.cpp: var = mean(x^2) - mean^2 = (14/3 - 4) ln2^2 = 2/3 ln2^2; +/- PPL sqrt(var/(N-1)) = 4 ln2/sqrt(3)
    assert acc.ppl_stderr == pytest.approx(4 * LN2 / math.sqrt(3), rel=1e-5)


def test_hand_case_word_and_byte_perplexity(hand_case):
    tokenized, window, ref, test = hand_case
    acc = score_variant(test, [window], ref, text=tokenized)
    # scored spans " cat", " sat", ".": 4 + 4 + 1 = 9 bytes, words "cat" and "sat" start in them: 2
    assert acc.word_ppl == pytest.approx(math.exp(6 * LN2 / 2), rel=1e-6)  # = 8
    assert acc.word_ppl == pytest.approx(8.0, rel=1e-6)
    assert acc.byte_ppl == pytest.approx(2 ** (6 / 9), rel=1e-6)
    assert acc.bits_per_byte == pytest.approx(2 / 3, rel=1e-6)


def test_hand_case_divergence_from_the_reference(hand_case):
    tokenized, window, ref, test = hand_case
    acc = score_variant(test, [window], ref, text=tokenized)
    # KL(ref||test) per row = 1/2 ln(2) + 1/4 ln(1/2) + 0 + 0 = ln2/4, the same on every row
    assert acc.kld_mean == pytest.approx(LN2 / 4, rel=1e-5)
    assert acc.kld_stderr == pytest.approx(0.0, abs=1e-6)
    for key in ("kld_p50", "kld_p90", "kld_p99", "kld_max"):
        assert getattr(acc, key) == pytest.approx(LN2 / 4, rel=1e-5)
    assert acc.top1_agreement == 0.0  # argmax 0 for the reference, 1 for the variant
    # delta p on targets 0, 1, 2: 1/4 - 1/2, 1/2 - 1/4, 1/8 - 1/8 -> mean 0, rms sqrt((1/16 + 1/16) / 3)
    assert acc.delta_p_mean == pytest.approx(0.0, abs=1e-7)
    assert acc.delta_p_rms == pytest.approx(math.sqrt(1 / 24), rel=1e-6)


def test_hand_case_paired_difference_from_the_reference(hand_case):
    tokenized, window, ref, test = hand_case
    acc = score_variant(test, [window], ref, text=tokenized)
    # targets 0, 1, 2: variant NLL (2, 1, 3) ln2, reference (1, 2, 3) ln2 -> d = (1, -1, 0) ln2
    assert acc.delta_nll_mean == pytest.approx(0.0, abs=1e-12) and acc.delta_ppl_pct == pytest.approx(0.0, abs=1e-9)
    # sample sd of d = ln2, so stderr = ln2 / sqrt(3)
    stderr = LN2 / math.sqrt(3)
    assert acc.delta_nll_stderr == pytest.approx(stderr, rel=1e-6)
    low, high = acc.delta_ppl_pct_ci
    assert low == pytest.approx(100 * (math.exp(-Z * stderr) - 1), rel=1e-6)
    assert high == pytest.approx(100 * (math.exp(Z * stderr) - 1), rel=1e-6)  # asymmetric: +119 %, -54 %
    # deviations (0, -1, 1) and (-1, 0, 1): cov 1, variances 2 and 2 -> r = 1/2
    assert acc.nll_correlation == pytest.approx(0.5, rel=1e-9)
    # sum d = 0 over 9 bytes; half-width 1.96 * N * stderr / ln2 / bytes = 1.96 sqrt(3) / 9
    assert acc.delta_bits_per_byte == pytest.approx(0.0, abs=1e-12)
    assert acc.delta_bits_per_byte_ci == pytest.approx([-Z * math.sqrt(3) / 9, Z * math.sqrt(3) / 9], rel=1e-6)
    sums = acc.paired_sums
    assert list(sums) == list(PAIRED_SUM_KEYS) and sums["n"] == 3 and sums["bytes"] == 9
    assert [sums[k] / LN2 for k in ("sum_d", "sum_nll_ref", "sum_nll_test")] == pytest.approx([0, 6, 6], abs=1e-6)
    squares = [sums[k] / LN2**2 for k in ("sum_d2", "sum_nll_ref2", "sum_nll_test2", "sum_nll_ref_nll_test")]
    assert squares == pytest.approx([2, 14, 14, 13], rel=1e-6)


def test_hand_case_variant_worse_on_two_tokens_of_three(hand_case):
    tokenized, _, ref, test = hand_case
    # "The" " The" " The" " cat": targets 0, 0, 1 -> variant NLL (2, 2, 1) ln2, reference (1, 1, 2) ln2
    window = Window(np.array([3, 0, 0, 1], dtype=np.int64), 0, np.array([1, 2, 3]))
    acc = score_variant(test, [window], ref)
    # d = (1, 1, -1) ln2: mean ln2/3, sample variance 4/3 ln2^2 -> stderr 2 ln2 / 3
    mean, stderr = LN2 / 3, 2 * LN2 / 3
    assert acc.delta_nll_mean == pytest.approx(mean, rel=1e-6)
    assert acc.delta_ppl_pct == pytest.approx(100 * (2 ** (1 / 3) - 1), rel=1e-6)  # +25.99 %
    assert acc.delta_nll_stderr == pytest.approx(stderr, rel=1e-6)
    assert acc.delta_ppl_pct_ci == pytest.approx([100 * (math.exp(mean + s * Z * stderr) - 1) for s in (-1, 1)],
                                                 rel=1e-6)
    assert acc.nll_correlation == pytest.approx(-1.0, abs=1e-9)  # one goes up exactly where the other goes down
    # the same paired d as PPL / PPL_ref - 1
    assert acc.delta_ppl_pct == pytest.approx(100 * (acc.ppl / math.exp((1 + 1 + 2) * LN2 / 3) - 1), rel=1e-6)
    # without the text no bytes: bits per byte stay None
    assert acc.delta_bits_per_byte is None and acc.delta_bits_per_byte_ci is None and "bytes" not in acc.paired_sums


def test_reference_against_itself_has_zero_divergence(hand_case):
    tokenized, window, ref, _ = hand_case
    twin = loaded(FakeBackend(fake_variant("twin"), vocab_size=4, logits_fn=constant(P_REF)))
    acc = score_variant(twin, [window], ref, text=tokenized)
    assert acc.kld_mean == pytest.approx(0.0, abs=1e-7) and acc.kld_max == pytest.approx(0.0, abs=1e-7)
    assert acc.top1_agreement == 100.0 and acc.top1_agreement_stderr == 0.0
    assert acc.delta_p_rms == pytest.approx(0.0, abs=1e-7) and acc.delta_p_rms_stderr == 0.0
    # identical logits: every paired difference is exactly 0, the runs perfectly correlated
    assert acc.delta_nll_mean == 0.0 and acc.delta_nll_stderr == 0.0 and acc.delta_ppl_pct_ci == [0.0, 0.0]
    assert acc.nll_correlation == pytest.approx(1.0, abs=1e-12)
    # targets 0, 1, 2 under P_REF: NLL ln2, 2 ln2, 3 ln2 -> PPL 4 as well
    assert acc.ppl == pytest.approx(4.0, rel=1e-6)


def test_without_reference_divergence_keys_are_none_and_all_keys_present(hand_case):
    tokenized, window, _, test = hand_case
    acc = score_variant(test, [window], text=tokenized)
    assert isinstance(acc, Accuracy) and acc.ppl == pytest.approx(4.0, rel=1e-6)
    assert all(getattr(acc, key) is None for key in DIVERGENCE_KEYS)
    assert acc.generation_divergence is None
    assert acc.wall_s >= 0
    acc = score_variant(test, [window])
    assert acc.word_ppl is None and acc.byte_ppl is None and acc.bits_per_byte is None


def test_kld_quantiles_and_top1_with_varying_rows():
    # after token 0 the variant matches the reference; after any other token it is P_TEST
    ref = loaded(FakeBackend(vocab_size=4, logits_fn=constant(P_REF)))
    test = loaded(FakeBackend(vocab_size=4, logits_fn=lambda prefix: np.log(P_REF if prefix[-1] == 0 else P_TEST)))
    # positions 0..5 see last tokens 0, 3, 0, 0, 2, 0 -> KLD 0, a, 0, 0, a, 0 with a = ln2/4
    window = Window(np.array([0, 3, 0, 0, 2, 0, 1], dtype=np.int64), 0, np.arange(1, 7))
    acc = score_variant(test, [window], ref)
    a = LN2 / 4
    assert acc.kld_mean == pytest.approx(2 * a / 6, rel=1e-5)
    # llama.cpp's stderr: sqrt((mean(k^2) - mean(k)^2) / (N-1)) = sqrt((a^2/3 - a^2/9) / 5)
    assert acc.kld_stderr == pytest.approx(math.sqrt((a * a / 3 - a * a / 9) / 5), rel=1e-4)
    assert acc.kld_p50 == pytest.approx(0.0, abs=1e-7)  # sorted 0 0 0 0 a a: median 0
    assert acc.kld_p90 == pytest.approx(a, rel=1e-5)  # linear position 4.5 lies between a and a
    assert acc.kld_max == pytest.approx(a, rel=1e-5)
    assert acc.kld_p999 == pytest.approx(a, rel=1e-5) and acc.kld_p95 == pytest.approx(a, rel=1e-5)
    # position 0.75 * 5 = 3.75 lies between the last 0 and the first a
    assert acc.kld_min == pytest.approx(0.0, abs=1e-7) and acc.kld_p10 == pytest.approx(0.0, abs=1e-7)
    assert acc.top1_agreement == pytest.approx(100 * 4 / 6)
    assert acc.top1_agreement_stderr == pytest.approx(100 * math.sqrt(4 / 6 * 2 / 6 / 5), rel=1e-12)
    # targets 3 0 0 2 0 1; after tokens 3 and 2 the variant gives target 0 p 1/4 for the reference's 1/2
    delta_p = np.array([0, -1 / 4, 0, 0, -1 / 4, 0])
    assert acc.delta_p_mean == pytest.approx(-1 / 12, rel=1e-6)
    assert acc.delta_p_stderr == pytest.approx(delta_p.std(ddof=1) / math.sqrt(6), rel=1e-6)
    assert acc.delta_p_max == pytest.approx(0.0, abs=1e-7) and acc.delta_p_min == pytest.approx(-1 / 4, rel=1e-6)
    # sorted -1/4 -1/4 0 0 0 0: the 25 % point sits at position 1.25, between -1/4 and 0
    assert acc.delta_p_p25 == pytest.approx(-3 / 16, rel=1e-6) and acc.delta_p_p10 == pytest.approx(-1 / 4, rel=1e-6)
    assert acc.delta_p_p50 == pytest.approx(0.0, abs=1e-7) and acc.delta_p_p75 == pytest.approx(0.0, abs=1e-7)
    # llama.cpp's RMS uncertainty: 0.5 / rms * stderr of Δp^2 (Δp^2 = 1/16 on two tokens of six)
    rms = math.sqrt(1 / 48)
    squared_stderr = np.square(delta_p).std(ddof=1) / math.sqrt(6)
    assert acc.delta_p_rms == pytest.approx(rms, rel=1e-6)
    assert acc.delta_p_rms_stderr == pytest.approx(0.5 / rms * squared_stderr, rel=1e-6)


def per_token_float64(ref: FakeBackend, test: FakeBackend, windows):
    """The per-token (ref NLL, test NLL, KLD, Δp, same top-1) arrays in float64, straight from the fakes' logits."""
    ref_rows, test_rows, targets = [], [], []
    for w in windows:
        for t in range(w.score_start, len(w.token_ids) - 1):
            ref_rows.append(ref.next_logits(w.token_ids[: t + 1]))
            test_rows.append(test.next_logits(w.token_ids[: t + 1]))
            targets.append(w.token_ids[t + 1])
    ref_logits = np.array(ref_rows, dtype=np.float32)
    test_logits = np.array(test_rows, dtype=np.float32)
    targets = np.array(targets)
    kld, same_top, delta_p = naive.divergence(ref_logits, test_logits, targets)
    return naive.token_nll(ref_logits, targets), naive.token_nll(test_logits, targets), kld, delta_p, same_top


def test_paired_and_divergence_statistics_match_llama_perplexity_formulas():
    ids = (np.arange(200, dtype=np.int64) * 7) % 32
    windows = build_windows(ids, "chunked", ctx=40, bos_id=31)
    ref = loaded(FakeBackend(seed=4))
    test = loaded(FakeBackend(seed=4, noise=0.7))
    acc = score_variant(test, windows, ref, block_rows=7)
    ref_nll, test_nll, kld, delta_p, same_top = per_token_float64(ref, test, windows)
    want = naive.llama_kld_statistics(ref_nll, test_nll, kld, delta_p, same_top)
    assert acc.tokens_scored == len(kld) > 50
    assert acc.delta_nll_mean == pytest.approx(want["ln_ratio"], abs=1e-7)
    assert acc.delta_nll_stderr == pytest.approx(want["ln_ratio_unc"], rel=1e-5)
    assert acc.nll_correlation == pytest.approx(want["cor"], rel=1e-6)
    assert 0 < acc.nll_correlation < 0.999 and acc.delta_nll_stderr > 0.01  # a case where pairing matters
    assert acc.delta_ppl_pct == pytest.approx(100 * (math.exp(want["ln_ratio"]) - 1), abs=1e-5)
    assert (acc.kld_mean, acc.kld_stderr) == pytest.approx((want["kld_mean"], want["kld_unc"]), rel=1e-5)
    assert (acc.delta_p_mean, acc.delta_p_stderr) == pytest.approx((want["delta_p_mean"], want["delta_p_unc"]),
                                                                   abs=1e-7)
    assert (acc.delta_p_rms, acc.delta_p_rms_stderr) == pytest.approx((want["rms"], want["rms_unc"]), rel=1e-5)
    assert (acc.top1_agreement, acc.top1_agreement_stderr) == pytest.approx((want["same_top"],
                                                                             want["same_top_unc"]), rel=1e-12)
    for key, fraction in (("kld_p999", 0.999), ("kld_p95", 0.95), ("kld_p10", 0.1), ("kld_p001", 0.001)):
        assert getattr(acc, key) == pytest.approx(naive.percentile(kld, fraction), abs=1e-6), key
    for key, fraction in (("delta_p_p99", 0.99), ("delta_p_p75", 0.75), ("delta_p_p05", 0.05)):
        assert getattr(acc, key) == pytest.approx(naive.percentile(delta_p, fraction), abs=1e-7), key
    assert acc.kld_min == pytest.approx(kld.min(), abs=1e-6)
    assert acc.delta_p_max == pytest.approx(delta_p.max(), abs=1e-7)


def test_paired_sums_recompute_every_paired_figure():
    ids = (np.arange(120, dtype=np.int64) * 5) % 32
    windows = build_windows(ids, "chunked", ctx=30)
    acc = score_variant(loaded(FakeBackend(seed=6, noise=0.3)), windows, loaded(FakeBackend(seed=6)))
    s = acc.paired_sums
    n = s["n"]
    mean = s["sum_d"] / n
    stderr = math.sqrt((s["sum_d2"] / n - mean * mean) / (n - 1))
    assert n == acc.tokens_scored and acc.delta_nll_mean == pytest.approx(mean, rel=1e-12)
    assert acc.delta_nll_stderr == pytest.approx(stderr, rel=1e-9)
    assert s["sum_nll_test"] / n == pytest.approx(acc.nll_mean, rel=1e-12)
    cov = s["sum_nll_ref_nll_test"] / n - s["sum_nll_ref"] / n * s["sum_nll_test"] / n
    var_ref = s["sum_nll_ref2"] / n - (s["sum_nll_ref"] / n) ** 2
    var_test = s["sum_nll_test2"] / n - (s["sum_nll_test"] / n) ** 2
    assert acc.nll_correlation == pytest.approx(cov / math.sqrt(var_ref * var_test), rel=1e-9)
    # d = test - ref, so sum d^2 = sum test^2 + sum ref^2 - 2 sum ref * test
    assert s["sum_d2"] == pytest.approx(s["sum_nll_test2"] + s["sum_nll_ref2"] - 2 * s["sum_nll_ref_nll_test"],
                                        rel=1e-9)


def test_real_model_paired_delta_ppl_equals_the_ratio_of_the_two_perplexities(prepared, real_text):
    from tokenizers import Tokenizer

    from harness.backends import open_backend

    tokenizer = Tokenizer.from_file(str(Path(prepared["torch-fp32"].tokenizer_path, "tokenizer.json")))
    ids = tokenizer.encode(real_text[:20_000], add_special_tokens=False).ids
    windows = build_windows(ids, "chunked", 256, None, None, max_tokens=768)
    with open_backend(prepared["llamacpp-f32"], threads=2) as ref, \
            open_backend(prepared["llamacpp-q4_k_m"], threads=2) as test:
        own = score_variant(ref, windows, None)
        acc = score_variant(test, windows, ref)
    # Both scored the same tokens: the paired mean is exactly ln(PPL / PPL_ref), up to float rounding
    # (the reference's own row sums its NLL in token_nll, the paired pass in the divergence kernel).
    assert acc.tokens_scored == own.tokens_scored == sum(w.n_scored for w in windows) > 300
    assert acc.delta_ppl_pct == pytest.approx((acc.ppl / own.ppl - 1) * 100, abs=1e-4)
    assert acc.paired_sums["sum_nll_ref"] / acc.tokens_scored == pytest.approx(own.nll_mean, abs=1e-6)
    low, high = acc.delta_ppl_pct_ci
    assert low < acc.delta_ppl_pct < high and acc.delta_ppl_pct > 0  # q4_k_m is worse than F32
    # Pairing is the point: the per-token NLLs correlate, so the paired error bar is far tighter than either PPL's.
    assert acc.nll_correlation > 0.9
    assert acc.delta_nll_stderr < 0.25 * own.ppl_stderr / own.ppl


def test_recipe_bug_per_window_averaging_is_absent():
    # Strided windows score 5, 4, 4, 4, 2 tokens: a mean of window means would weigh them equally.
    ids = np.arange(1, 21, dtype=np.int64) % 16
    windows = build_windows(ids, "strided", ctx=6, stride=4, bos_id=None)
    assert len({w.n_scored for w in windows}) > 1
    test = loaded(FakeBackend(vocab_size=16, seed=3))
    per_window = []
    for w in windows:  # the expected NLLs straight from the fake model's logits, in float64
        positions = range(w.score_start, len(w.token_ids) - 1)
        rows = [test.next_logits(w.token_ids[: t + 1]).astype(np.float64) for t in positions]
        targets = w.token_ids[w.score_start + 1 :]
        per_window.append([np.log(np.exp(r - r.max()).sum()) + r.max() - r[y] for r, y in zip(rows, targets)])
    per_token = np.concatenate(per_window)
    acc = score_variant(test, windows)
    assert acc.tokens_scored == len(per_token) == len(ids) - 1
    assert acc.ppl == pytest.approx(math.exp(per_token.mean()), rel=1e-5)
    wrong = math.exp(np.mean([np.mean(n) for n in per_window]))
    assert abs(acc.ppl - wrong) > 1e-3 * acc.ppl  # the test can tell the two apart


def test_lockstep_streams_blocks_of_different_sizes_without_holding_more_than_one_each():
    ids = np.arange(40, dtype=np.int64) % 16
    windows = build_windows(ids, "chunked", ctx=16, bos_id=15)
    ref = loaded(FakeBackend(vocab_size=16, seed=1, yield_rows=3))
    test = loaded(FakeBackend(vocab_size=16, seed=1, noise=2.0, yield_rows=5))
    same_ref = loaded(FakeBackend(vocab_size=16, seed=1))
    even = score_variant(loaded(FakeBackend(vocab_size=16, seed=1, noise=2.0)), windows, same_ref, block_rows=64)
    uneven = score_variant(test, windows, ref, block_rows=4)
    for key in ("ppl", "kld_mean", "kld_max", "top1_agreement", "delta_p_rms"):
        assert getattr(uneven, key) == pytest.approx(getattr(even, key), rel=1e-6)
    assert 0 < uneven.kld_mean and uneven.top1_agreement < 100
    assert ref.max_rows_yielded == 3 and test.max_rows_yielded == 5


def test_aligned_rows_refuses_streams_of_different_lengths():
    logits = np.zeros((3, 4), dtype=np.float32)
    short = [LogitBlock(0, logits[:2], np.zeros(2, dtype=np.int64))]
    full = [LogitBlock(0, logits, np.zeros(3, dtype=np.int64))]
    with pytest.raises(RuntimeError, match="different numbers of positions"):
        list(aligned_rows(short, full))


def test_stronger_noise_gives_larger_divergence():
    ids = np.arange(64, dtype=np.int64) % 32
    windows = build_windows(ids, "chunked", ctx=16)
    ref = loaded(FakeBackend(seed=2))
    results = [score_variant(loaded(FakeBackend(seed=2, noise=s)), windows, ref) for s in (0.1, 0.5, 2.0)]
    klds = [r.kld_mean for r in results]
    assert klds == sorted(klds) and klds[0] > 0
    assert results[0].top1_agreement >= results[-1].top1_agreement


# ---- generation agreement -------------------------------------------------------------


def test_first_divergence_positions():
    assert first_divergence([5, 6, 7], [5, 6, 7]) is None
    assert first_divergence([5, 6, 7], [5, 9, 7]) == 1
    assert first_divergence([5, 6, 7], [4, 6, 7]) == 0
    assert first_divergence([5, 6, 2], [5, 6]) == 2  # the variant stopped where the reference went on
    assert first_divergences([[1, 2], [1, 2]], [[1, 2], [1, 3]]) == [None, 1]
    with pytest.raises(ValueError):
        first_divergences([[1]], [])


def test_generation_divergence_from_greedy_continuations(hand_case):
    tokenized, window, _, _ = hand_case
    # the reference counts up mod 8; the variant jumps to 0 after 3; EOS is 7
    def count_up(prefix):
        return np.eye(8)[(prefix[-1] + 1) % 8] * 10

    def skip_after_three(prefix):
        return np.eye(8)[0] * 10 if prefix[-1] == 3 else count_up(prefix)

    ref = loaded(FakeBackend(vocab_size=8, logits_fn=count_up, eos_token_id=7))
    test = loaded(FakeBackend(vocab_size=8, logits_fn=skip_after_three, eos_token_id=7))
    acc = score_variant(test, [window], ref, prompts=[[0], [4], [3]], max_new_tokens=6)
    # [0]: ref 1 2 3 4 5 6, variant 1 2 3 0 1 2 -> 3; [4]: ref and variant 5 6 7(EOS) -> None; [3]: 4 vs 0 -> 0
    assert acc.generation_divergence == [3, None, 0]
