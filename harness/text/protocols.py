"""Evaluation protocols: which windows of the token stream a model sees, and which tokens are scored.

Both protocols start from the token ids of the whole text, tokenized once per
model with no special tokens, and take ``bos_id`` (the BOS the model's tokenizer
adds, or None when it adds none).

``chunked`` reproduces ``llama-perplexity`` (tools/perplexity/perplexity.cpp,
``perplexity()``) exactly. It tokenizes with ``add_special = true``, so with BOS
the stream is ``[BOS] + ids``; there are ``len(stream) // ctx`` chunks of
``stream[i*ctx : (i+1)*ctx]``; the first token of each chunk is replaced by BOS
(a no-op for chunk 0); with ``first = ctx // 2`` the logits at positions
``first .. ctx-2`` are scored against the tokens at ``first+1 .. ctx-1``, i.e.
``ctx - 1 - ctx//2`` tokens per chunk. The text token a BOS overwrites is never
seen nor scored, as in llama.cpp.

``strided`` is the sliding window done right. Each window holds BOS (when the
model adds one) and up to ``ctx - 1`` text tokens (``ctx`` without BOS); window
``k`` ends ``min(stride, room)`` tokens after window ``k-1``, starts as far back
as its room allows, and scores only the tokens past the previous window's end.
So every text token is scored exactly once (all of them with BOS; all but the
first without, since nothing predicts it), each with at least ``ctx - stride``
tokens before it in its window (BOS included) once the text allows, and BOS is
never a target. The transformers recipe's three bugs are absent: no off-by-one
at window edges (targets are text positions, not shifted labels), averaging is
per token in ``harness.measure.accuracy``, and every window, not just the first, starts
with BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from harness.errors import UserError

PROTOCOLS = ("chunked", "strided")


@dataclass(frozen=True, eq=False)
class Window:
    """One model input and which of its next-token predictions are scored.

    ``backend.logit_blocks(token_ids, start=score_start)`` yields exactly the
    scored logits; the ``i``-th scored row predicts ``token_ids[score_start + 1 + i]``,
    which is the text's token ``target_positions[i]``.
    """

    token_ids: np.ndarray  # (L,) int64, what the model sees, BOS included
    score_start: int  # first position whose next-token logits are scored
    target_positions: np.ndarray  # (L - 1 - score_start,) int64, indices into the text's token ids

    @property
    def n_scored(self) -> int:
        return len(self.target_positions)


def build_windows(
    token_ids: Sequence[int] | np.ndarray,
    protocol: str,
    ctx: int,
    stride: int | None = None,
    bos_id: int | None = None,
    max_tokens: int | None = None,
    max_chunks: int | None = None,
    text_name: str = "the text",
) -> list[Window]:
    """The windows of ``protocol`` over the text's first ``max_tokens`` tokens, at most ``max_chunks`` of them.

    ``stride`` applies to ``strided`` only (default ``ctx // 2``). A text too
    short for one window raises ``UserError`` naming ``text_name``.
    """
    ids = np.ascontiguousarray(token_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {ids.shape}")
    if ctx < 2:
        raise UserError("a window needs at least 2 tokens; pass 2 or more", setting="ctx", value=ctx)
    if max_tokens is not None:
        if max_tokens < 1:
            raise UserError("must be at least 1", setting="max_tokens", value=max_tokens)
        ids = ids[:max_tokens]
    if max_chunks is not None and max_chunks < 1:
        raise UserError("must be at least 1", setting="max_chunks", value=max_chunks)
    n_stream = len(ids) + (bos_id is not None)
    if n_stream < ctx:
        if max_tokens is None:
            problem = f"{text_name} has {len(ids)} tokens, fewer than one window; pass a longer text or shorter windows"
        else:
            problem = (f"{text_name} has {len(ids)} tokens within the token budget of {max_tokens}, fewer than "
                       "one window; pass a longer text, a larger token budget or shorter windows")
        raise UserError(problem, setting="ctx", value=ctx)
    if protocol == "chunked":
        return chunked_windows(ids, ctx, bos_id, max_chunks)
    if protocol == "strided":
        stride = ctx // 2 if stride is None else stride
        if not 1 <= stride <= ctx:
            raise UserError(f"must lie in [1, {ctx}], the window length", setting="stride", value=stride)
        return strided_windows(ids, ctx, stride, bos_id, max_chunks)
    raise UserError(f"unknown protocol; use one of {', '.join(PROTOCOLS)}", setting="protocol", value=protocol)


def chunked_windows(ids: np.ndarray, ctx: int, bos_id: int | None = None, max_chunks: int | None = None) -> list[Window]:
    """llama-perplexity's non-overlapping chunks, scoring the second half of each (see the module doc)."""
    offset = 1 if bos_id is not None else 0
    stream = np.concatenate(([bos_id], ids)).astype(np.int64) if offset else np.asarray(ids, dtype=np.int64)
    n_chunks = len(stream) // ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    first = ctx // 2
    windows = []
    for i in range(n_chunks):
        chunk = stream[i * ctx : (i + 1) * ctx].copy()
        if offset:
            chunk[0] = bos_id
        # Window position j holds stream position i*ctx + j, i.e. text token i*ctx + j - offset.
        targets = np.arange(i * ctx + first + 1, (i + 1) * ctx, dtype=np.int64) - offset
        windows.append(Window(chunk, first, targets))
    return windows


def strided_windows(
    ids: np.ndarray, ctx: int, stride: int, bos_id: int | None = None, max_chunks: int | None = None
) -> list[Window]:
    """Sliding windows that score every text token exactly once (see the module doc)."""
    offset = 1 if bos_id is not None else 0
    room = ctx - offset  # text tokens per window
    step = min(stride, room)  # with BOS and stride == ctx, a window has only ctx - 1 new tokens
    n_tokens = len(ids)
    scored_end = 0 if offset else 1  # without BOS nothing predicts token 0
    windows = []
    while scored_end < n_tokens and (max_chunks is None or len(windows) < max_chunks):
        end = min(n_tokens, room if not windows else scored_end + step)
        begin = max(0, end - room)
        content = ids[begin:end]
        tokens = np.concatenate(([bos_id], content)).astype(np.int64) if offset else content.copy()
        # Text token c sits at window position c - begin + offset; its logit is one position earlier.
        score_start = scored_end - begin + offset - 1
        windows.append(Window(tokens, score_start, np.arange(scored_end, end, dtype=np.int64)))
        scored_end = end
    return windows
