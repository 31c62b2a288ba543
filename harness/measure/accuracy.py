"""Accuracy of one variant: perplexity with its error bar, text-normalised perplexities, and divergence.

All the math runs in ``harness.kernels``. The variant's logits and the
reference's (a second loaded model, or its record read back from disk, see
``harness.measure.reference_record``) are streamed block by block in lockstep, so at
most one block of each is alive at a time: memory for logits is bounded by
``2 x block_rows x V x 4`` bytes (256 x 49,152 x 4 B x 2 = 100 MB for SmolLM2),
whatever the text's length.

Definitions (N scored tokens with negative log-likelihoods ``nll_i``, in nats):

- ``ppl = exp(mean nll)``; ``ppl_stderr = ppl * sqrt(var / (N - 1))`` with
  ``var = mean(nll^2) - mean(nll)^2``, the formula of llama-perplexity's
  "Final estimate: PPL = x +/- y" (computed as ``RunningStats.sem``, which is
  the same number without the cancellation).
- Averages are per token over the whole run, never per window.
- ``word_ppl = exp(sum nll / words)``, ``byte_ppl = exp(sum nll / bytes)``,
  ``bits_per_byte = sum nll / ln 2 / bytes``. ``bytes`` and ``words`` count the
  text the scored tokens cover: each scored token owns the span of the original
  text from the previous token's end offset to its own (see
  ``harness.text.tokenizer.TokenizedText``); ``bytes`` sums the UTF-8 bytes of those
  spans and ``words`` the words (maximal runs of non-whitespace) that start in
  them. Tokens that are never scored (the first half of each chunk) count
  nothing, so a word split across a scored and an unscored span counts once if
  its first character is scored, else not at all.
- Against a reference (see ``harness.measure.divergence_stats`` for every field and
  how it relates to llama-perplexity's ``--kl-divergence`` printout): both
  runs' per-token NLL on the same targets, paired (``delta_nll_mean``, its
  stderr, ``delta_ppl_pct`` with a 95 % interval, their correlation, the same
  in bits per byte); ``kld = KL(p_ref || p_test)`` per token, its mean with
  the same stderr formula as ``ppl`` and its exact quantiles; ``top1_agreement``
  = percent of tokens whose argmax matches; ``delta_p = p_test(target) -
  p_ref(target)`` (a probability, not a percentage), its mean, quantiles and
  root mean square. With a reference the variant's own NLL comes from the
  divergence kernel's pass (the same row sums as the reference's), so the
  variant's logits are read once.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from harness import defaults
from harness.backends.base import DEFAULT_BLOCK_ROWS, Backend, LogitBlock
from harness.kernels import RunningStats, divergence, token_nll
from harness.measure.divergence_stats import (
    ReferenceComparison,
    mean_and_stderr,
    safe_exp,
)
from harness.measure.reference_record import LogitRecorder, RecordedReference
from harness.results import Accuracy
from harness.text.protocols import Window
from harness.text.tokenizer import TokenizedText

# Prompts for generation agreement: short, plain, and answerable by a small model.
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little girl who",
    "The three primary colors are",
    "To make a cup of tea, first",
)
DEFAULT_MAX_NEW_TOKENS = defaults.AGREEMENT_TOKENS


def score_variant(
    backend: Backend,
    windows: Sequence[Window],
    reference: Backend | RecordedReference | None = None,
    *,
    text: TokenizedText | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    record: LogitRecorder | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Accuracy:
    """The accuracy of ``backend`` on ``windows``.

    Both backends must be loaded. With ``reference`` (another variant, never
    ``backend`` itself, or its record) the divergence keys are filled, else
    they are None. ``record`` (reference=None only) keeps the scored logits and
    the greedy continuations of ``prompts`` for later variants.
    ``text`` (the tokenization the windows came from) gives word and byte
    perplexity; without it they are None. ``prompts`` (token ids) give
    ``generation_divergence`` when there is a reference. ``wall_s`` times the
    whole call: scoring, and generation when there are prompts.
    """
    if reference is backend or (record is not None and reference is not None):
        raise ValueError("score (and record) the reference's own row with reference=None, not against itself")
    start_s = clock()
    nll = RunningStats()
    against = ReferenceComparison() if reference is not None else None
    n_bytes = n_words = 0
    # The variant's windows may come several to a forward pass (llama.cpp); each is consumed before the next.
    packed = backend.window_logit_blocks([(w.token_ids, w.score_start) for w in windows], block_rows)
    for index, (window, blocks) in enumerate(zip(windows, packed)):
        if reference is None:
            for block in blocks if record is None else record.tee(blocks):
                nll.add(token_nll(block.logits, block.targets))
        else:
            for ref_logits, test_logits, targets in aligned_rows(_reference_blocks(reference, index, window, block_rows),
                                                                 blocks):
                rows = divergence(ref_logits, test_logits, targets)
                nll.add(rows.test_nll)
                against.add(rows)
        if text is not None:
            n_bytes += int(text.token_bytes[window.target_positions].sum())
            n_words += int(text.token_words[window.target_positions].sum())

    if record is not None:
        record.finish(greedy_continuations(backend, prompts or (), max_new_tokens))
    generation_divergence = None
    if reference is not None and prompts:
        generation_divergence = _generation_divergence(backend, reference, prompts, max_new_tokens)
    total_nll = nll.sum
    return Accuracy(
        **nll_summary(nll),
        word_ppl=safe_exp(total_nll / n_words) if n_words else None,
        byte_ppl=safe_exp(total_nll / n_bytes) if n_bytes else None,
        bits_per_byte=total_nll / math.log(2) / n_bytes if n_bytes else None,
        **(against.summary(n_bytes if text is not None else None) if against is not None else {}),
        generation_divergence=generation_divergence,
        wall_s=clock() - start_s,
    )


def _reference_blocks(reference: Backend | RecordedReference, index: int, window: Window, block_rows: int):
    """The reference's logit blocks of window ``index``: read from its record, or computed live."""
    if isinstance(reference, RecordedReference):
        return reference.window_blocks(index, block_rows)
    return reference.logit_blocks(window.token_ids, start=window.score_start, block_rows=block_rows)


def _generation_divergence(backend, reference, prompts, max_new_tokens: int) -> list[int | None]:
    if isinstance(reference, RecordedReference):
        ref_continuations = reference.continuations
    else:
        ref_continuations = greedy_continuations(reference, prompts, max_new_tokens)
    return first_divergences(ref_continuations, greedy_continuations(backend, prompts, max_new_tokens))


def nll_summary(nll: RunningStats) -> dict:
    """``ppl``, ``ppl_stderr``, ``nll_mean`` and ``tokens_scored`` from the streamed NLLs."""
    if nll.count == 0:
        return {"ppl": None, "ppl_stderr": None, "nll_mean": None, "tokens_scored": 0}
    mean, stderr = mean_and_stderr(nll)
    ppl = safe_exp(mean)
    return {
        "ppl": ppl,
        "ppl_stderr": ppl * stderr if stderr is not None else None,
        "nll_mean": mean,
        "tokens_scored": int(nll.count),
    }


def aligned_rows(
    ref_blocks: Iterable[LogitBlock], test_blocks: Iterable[LogitBlock]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Advance two block streams of one sequence together, yielding ``(ref_logits, test_logits, targets)`` row ranges.

    Runtimes may cut blocks differently; each yield covers the rows both
    current blocks still hold, so at most one block of each stream is alive.
    """
    refs, tests = iter(ref_blocks), iter(test_blocks)
    ref = test = None
    ref_row = test_row = 0
    while True:
        while ref is None or ref_row == len(ref.targets):
            ref, ref_row = next(refs, None), 0
            if ref is None:
                break
        while test is None or test_row == len(test.targets):
            test, test_row = next(tests, None), 0
            if test is None:
                break
        if ref is None or test is None:
            if ref is not None or test is not None:
                raise RuntimeError("reference and variant yielded logits for different numbers of positions")
            return
        if ref.start + ref_row != test.start + test_row:
            raise RuntimeError(f"reference at position {ref.start + ref_row}, variant at {test.start + test_row}")
        n = min(len(ref.targets) - ref_row, len(test.targets) - test_row)
        yield (
            ref.logits[ref_row : ref_row + n],
            test.logits[test_row : test_row + n],
            test.targets[test_row : test_row + n],
        )
        ref_row += n
        test_row += n


def greedy_continuations(backend: Backend, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids) from ``backend``."""
    return [backend.generate(prompt, max_new_tokens).token_ids for prompt in prompts]


def first_divergence(reference: Sequence[int], test: Sequence[int]) -> int | None:
    """The first position where ``test`` leaves ``reference``; None when they are identical.

    When one ends early (EOS, or a shorter budget) and is a prefix of the
    other, they part where the shorter one ends.
    """
    for position, (ref_token, test_token) in enumerate(zip(reference, test)):
        if ref_token != test_token:
            return position
    return None if len(reference) == len(test) else min(len(reference), len(test))


def first_divergences(references: Sequence[Sequence[int]], tests: Sequence[Sequence[int]]) -> list[int | None]:
    """``first_divergence`` per prompt: the schema's ``generation_divergence``."""
    if len(references) != len(tests):
        raise ValueError(f"{len(references)} reference continuations but {len(tests)} from the variant")
    return [first_divergence(ref, test) for ref, test in zip(references, tests)]
