"""Windows of the chunked (llama-perplexity) and strided protocols: which tokens are seen and scored."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import UserError
from harness.text.protocols import build_windows, chunked_windows, strided_windows

BOS = 999  # never a text token below, so a scored BOS would show


def text_ids(n: int) -> np.ndarray:
    return np.arange(100, 100 + n, dtype=np.int64)


def llama_perplexity_scored(ids: np.ndarray, n_ctx: int, add_bos: bool) -> tuple[list[list[int]], list[int]]:
    """A line-by-line transliteration of perplexity.cpp's ``perplexity()``: chunk inputs and scored tokens.

    Returns what each chunk feeds llama_decode and the stream indices of the
    tokens whose probabilities enter ``nll`` (``tokens_data[i + 1]``).
    """
    tokens = ([BOS] if add_bos else []) + ids.tolist()  # common_tokenize(ctx, prompt, add_special=true)
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    inputs, scored = [], []
    for i in range(n_chunk):
        start = i * n_ctx
        batch = tokens[start : start + n_ctx]
        if add_bos:
            batch[0] = BOS  # tokens[seq_start] = llama_vocab_bos(vocab) for the first batch
        inputs.append(batch)
        # process_logits(logits of positions first.., tokens + start + first, n_ctx - 1 - first)
        scored += [start + first + k + 1 for k in range(n_ctx - 1 - first)]
    return inputs, scored


# ---- chunked ------------------------------------------------------------------


def test_chunked_hand_example_with_bos_matches_llama_perplexity():
    # stream = [BOS, 100..108] (10 tokens), ctx 4 -> 2 chunks; first = 2 scores position 2 -> token at 3.
    windows = chunked_windows(text_ids(9), ctx=4, bos_id=BOS)
    assert [w.token_ids.tolist() for w in windows] == [[BOS, 100, 101, 102], [BOS, 104, 105, 106]]
    assert [w.score_start for w in windows] == [2, 2]
    assert [w.target_positions.tolist() for w in windows] == [[2], [6]]  # text tokens 102 and 106
    # token 103 sits under the second chunk's BOS: never seen, never scored, exactly as in llama.cpp


def test_chunked_hand_example_without_bos():
    windows = chunked_windows(text_ids(13), ctx=6)  # 13 // 6 = 2 chunks, first = 3 scores positions 3, 4
    assert [w.token_ids.tolist() for w in windows] == [list(range(100, 106)), list(range(106, 112))]
    assert [w.target_positions.tolist() for w in windows] == [[4, 5], [10, 11]]


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("n_ctx", [2, 3, 8, 9, 64])
@pytest.mark.parametrize("n_tokens", [64, 65, 127, 200])
def test_chunked_scores_exactly_the_positions_llama_perplexity_scores(add_bos, n_ctx, n_tokens):
    ids = text_ids(n_tokens)
    windows = chunked_windows(ids, n_ctx, BOS if add_bos else None)
    inputs, scored_stream = llama_perplexity_scored(ids, n_ctx, add_bos)
    assert [w.token_ids.tolist() for w in windows] == inputs
    offset = 1 if add_bos else 0
    assert np.concatenate([w.target_positions for w in windows]).tolist() == [s - offset for s in scored_stream]
    for w in windows:
        assert w.token_ids.dtype == np.int64 and len(w.token_ids) == n_ctx
        # the rows logit_blocks(start=score_start) yields are exactly the scored ones
        assert len(w.token_ids) - 1 - w.score_start == w.n_scored == n_ctx - 1 - n_ctx // 2
        np.testing.assert_array_equal(w.token_ids[w.score_start + 1 :], ids[w.target_positions])


def test_chunked_counts_the_bos_in_the_stream_like_llama_cpp():
    # 1023 text tokens + BOS = 1024 = 2 chunks of 512; without counting BOS it would be 1
    assert len(chunked_windows(text_ids(1023), 512, BOS)) == 2
    assert len(chunked_windows(text_ids(1023), 512, None)) == 1


# ---- strided ------------------------------------------------------------------


STRIDED_CASES = [
    (n_tokens, ctx, stride, bos)
    for n_tokens in (7, 8, 33, 100)
    for ctx in (4, 7, 16)
    for stride in (1, 2, 3, ctx // 2, ctx - 1, ctx)
    for bos in (True, False)
    if 1 <= stride <= ctx and n_tokens + bos >= ctx
]


@pytest.mark.parametrize("n_tokens,ctx,stride,bos", STRIDED_CASES)
def test_strided_scores_each_token_once_with_context_and_never_bos(n_tokens, ctx, stride, bos):
    ids = text_ids(n_tokens)
    windows = strided_windows(ids, ctx, stride, BOS if bos else None)
    scored = np.concatenate([w.target_positions for w in windows])
    # with BOS even token 0 is predicted; without it nothing can predict token 0
    assert sorted(scored.tolist()) == list(range(0 if bos else 1, n_tokens))
    assert len(scored) == len(set(scored.tolist()))
    for w in windows:
        assert 2 <= len(w.token_ids) <= ctx
        assert (w.token_ids[0] == BOS) == bos  # BOS starts every window, not only the first
        assert BOS not in w.token_ids[1:]
        targets = w.token_ids[w.score_start + 1 :]
        np.testing.assert_array_equal(targets, ids[w.target_positions])  # no off-by-one, no padding
        # tokens before each target inside its window (BOS counts as context)
        context = np.arange(w.score_start + 1, len(w.token_ids))
        np.testing.assert_array_less(np.minimum(ctx - stride, w.target_positions + bos) - 1, context)


def test_strided_hand_example_with_bos():
    # ctx 4 with BOS leaves room for 3 text tokens; each later window ends 2 further on
    windows = strided_windows(text_ids(8), ctx=4, stride=2, bos_id=BOS)
    assert [w.token_ids.tolist() for w in windows] == [
        [BOS, 100, 101, 102],
        [BOS, 102, 103, 104],
        [BOS, 104, 105, 106],
        [BOS, 105, 106, 107],
    ]
    assert [w.score_start for w in windows] == [0, 1, 1, 2]
    assert [w.target_positions.tolist() for w in windows] == [[0, 1, 2], [3, 4], [5, 6], [7]]


def test_strided_hand_example_without_bos():
    windows = strided_windows(text_ids(7), ctx=4, stride=2)
    assert [w.token_ids.tolist() for w in windows] == [[100, 101, 102, 103], [102, 103, 104, 105], [103, 104, 105, 106]]
    assert [w.target_positions.tolist() for w in windows] == [[1, 2, 3], [4, 5], [6]]
    assert [w.score_start for w in windows] == [0, 1, 2]


def test_recipe_bug_off_by_one_at_window_edges_is_absent():
    # The recipe weights each window's mean loss by trg_len although the shifted
    # labels score trg_len - 1 tokens, and the token at each window edge is lost.
    windows = strided_windows(text_ids(20), ctx=8, stride=4)
    edges = [int(w.target_positions[0]) for w in windows[1:]]
    for previous, window in zip(windows, windows[1:]):
        assert previous.target_positions[-1] + 1 == window.target_positions[0]  # contiguous: nothing lost
    assert all(sum(e in w.target_positions for w in windows) == 1 for e in edges)  # nothing doubled
    assert sum(w.n_scored for w in windows) == 19


def test_recipe_bug_bos_only_in_first_window_is_absent():
    windows = build_windows(text_ids(50), "strided", ctx=10, stride=5, bos_id=BOS)
    assert len(windows) > 3 and all(w.token_ids[0] == BOS for w in windows)
    chunks = build_windows(text_ids(50), "chunked", ctx=10, bos_id=BOS)
    assert len(chunks) == 5 and all(w.token_ids[0] == BOS for w in chunks)


def test_strided_with_stride_equal_ctx_and_bos_loses_no_token():
    windows = strided_windows(text_ids(10), ctx=4, stride=4, bos_id=BOS)
    assert [w.target_positions.tolist() for w in windows] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


# ---- budgets and errors -----------------------------------------------------------


def test_max_tokens_cuts_the_text_and_max_chunks_the_windows():
    assert len(build_windows(text_ids(100), "chunked", ctx=10, max_tokens=40)) == 4
    assert len(build_windows(text_ids(100), "chunked", ctx=10, max_chunks=3)) == 3
    windows = build_windows(text_ids(100), "strided", ctx=10, stride=5, max_tokens=30)
    assert max(w.target_positions.max() for w in windows) == 29
    assert len(build_windows(text_ids(100), "strided", ctx=10, max_chunks=2)) == 2


def test_text_shorter_than_one_window_is_a_user_error_about_the_window_length():
    with pytest.raises(UserError, match=r"wiki\.raw has 9 tokens, fewer than one window") as exc:
        build_windows(text_ids(9), "chunked", ctx=10, text_name="wiki.raw")
    assert (exc.value.setting, exc.value.value) == ("ctx", 10)
    assert len(build_windows(text_ids(9), "chunked", ctx=10, bos_id=BOS)) == 1  # BOS makes it one window
    with pytest.raises(UserError, match="within the token budget of 5") as exc:
        build_windows(text_ids(100), "chunked", ctx=10, max_tokens=5)
    assert exc.value.setting == "ctx"


@pytest.mark.parametrize(
    "kwargs,setting,value",
    [
        ({"protocol": "rolling"}, "protocol", "rolling"),
        ({"protocol": "strided", "stride": 11}, "stride", 11),
        ({"protocol": "strided", "stride": 0}, "stride", 0),
        ({"ctx": 1}, "ctx", 1),
        ({"max_tokens": 0}, "max_tokens", 0),
        ({"max_chunks": 0}, "max_chunks", 0),
    ],
)
def test_bad_protocol_settings_are_user_errors_naming_the_setting(kwargs, setting, value):
    with pytest.raises(UserError) as exc:
        build_windows(text_ids(100), **{"protocol": "chunked", "ctx": 10, **kwargs})
    assert (exc.value.setting, exc.value.value) == (setting, value)
    assert "--" not in exc.value.problem  # the CLI adds the flag; the library speaks of settings


def test_a_programming_error_is_a_value_error_not_a_user_error():
    with pytest.raises(ValueError, match="1-D"):
        build_windows(np.zeros((2, 10), dtype=np.int64), "chunked", ctx=4)
