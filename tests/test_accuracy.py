"""Accuracy figures on small synthetic logits whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.accuracy import (
    aligned_rows,
    first_divergence,
    first_divergences,
    score_variant,
)
from harness.backends.base import LogitBlock
from harness.results import Accuracy
from harness.tokenizer import TokenizedText, token_text_counts
from harness.protocols import Window, build_windows
from fakes import FakeBackend, fake_variant

LN2 = math.log(2)
DIVERGENCE_KEYS = ("kld_mean", "kld_stderr", "kld_p50", "kld_p90", "kld_p99", "kld_max", "top1_agreement",
                   "delta_p_mean", "delta_p_rms")
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


def test_reference_against_itself_has_zero_divergence(hand_case):
    tokenized, window, ref, _ = hand_case
    twin = loaded(FakeBackend(fake_variant("twin"), vocab_size=4, logits_fn=constant(P_REF)))
    acc = score_variant(twin, [window], ref, text=tokenized)
    assert acc.kld_mean == pytest.approx(0.0, abs=1e-7) and acc.kld_max == pytest.approx(0.0, abs=1e-7)
    assert acc.top1_agreement == 100.0
    assert acc.delta_p_rms == pytest.approx(0.0, abs=1e-7)
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
    assert acc.top1_agreement == pytest.approx(100 * 4 / 6)


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
