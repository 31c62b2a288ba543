"""Batched decoding at an operating point, in the three runtimes on the real default model.

Several sequences decoded together on top of a filled cache must give each sequence the tokens it gets alone,
and the logits the harness scores it with alone (``logit_blocks``), within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.backends import open_backend

FP32 = ("torch-fp32", "ort-fp32", "llamacpp-f32")
SEQUENCES, DEPTH, PROMPT, STEPS = 4, 24, 9, 6
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def token_ids_pool(prepared) -> np.ndarray:
    from harness.text.tokenizer import speed_token_pool

    return np.asarray(speed_token_pool(prepared["torch-fp32"].tokenizer_path))


def _draw(pool: np.ndarray, seed: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).choice(pool, size=shape).astype(np.int64)


def _depth(runtime: str) -> int:
    # onnxruntime-genai appends a batch's tokens once: it has no depth with several sequences (unavailable there).
    return 0 if runtime == "ort" else DEPTH


@pytest.mark.parametrize("shared", (False, True), ids=("own-depths", "one-depth-copied"))
@pytest.mark.parametrize("name", FP32)
def test_batched_decoding_equals_each_sequence_alone(prepared, token_ids_pool, name, shared):
    """Each sequence its own depth, or one depth filled once and copied into every sequence's cache (what a
    point does): either way each sequence decodes as it does alone."""
    variant = prepared[name]
    with open_backend(variant, threads=1) as backend:
        depth = _depth(backend.runtime)
        depth_ids = _draw(token_ids_pool, 1, (1 if shared else SEQUENCES, depth))
        depth_ids = np.repeat(depth_ids, SEQUENCES, axis=0) if shared else depth_ids
        prompts = _draw(token_ids_pool, 2, (SEQUENCES, PROMPT))
        backend.start_batch(depth_ids, PROMPT + STEPS)
        batched = backend.generate_batch(prompts, STEPS, keep_logits=True)
        again = backend.generate_batch(prompts, STEPS)  # the cache went back to the depth
        assert batched.token_ids.shape == (SEQUENCES, STEPS) and len(batched.step_times_s) == STEPS
        assert np.array_equal(again.token_ids, batched.token_ids)
        eos = sorted(backend.eos_token_ids)
        worst = 0.0
        for i in range(SEQUENCES):
            context = np.concatenate([depth_ids[i], prompts[i]])
            alone = backend.generate(context, STEPS).token_ids  # stops after an EOS; the batch does not
            assert batched.token_ids[i, : len(alone)].tolist() == alone, f"{name}: sequence {i}"
            sequence = np.concatenate([context, batched.token_ids[i]])
            scored = np.concatenate([b.logits for b in backend.logit_blocks(sequence, start=len(context) - 1)])
            mine, theirs = batched.logits[i].copy(), scored[:STEPS].copy()
            mine[:, eos] = theirs[:, eos] = 0  # ORT's batch masks EOS so no sequence stops early
            worst = max(worst, float(np.abs(mine - theirs).max()))
        print(f"{name}: batched vs alone, max |logit difference| {worst:.2e}")
        assert worst <= LOGIT_TOLERANCE, name


def test_llamacpp_batch_keeps_each_sequence_in_its_own_cache(prepared, token_ids_pool):
    """Sequences that share nothing must not see each other: swapping two rows swaps their answers."""
    with open_backend(prepared["llamacpp-q8_0"], threads=1) as backend:
        depth_ids = _draw(token_ids_pool, 3, (3, DEPTH))
        prompts = _draw(token_ids_pool, 4, (3, PROMPT))
        backend.start_batch(depth_ids, PROMPT + STEPS)
        first = backend.generate_batch(prompts, STEPS).token_ids
        backend.start_batch(depth_ids[::-1].copy(), PROMPT + STEPS)
        swapped = backend.generate_batch(prompts[::-1].copy(), STEPS).token_ids
        assert np.array_equal(swapped, first[::-1])


def test_ort_refuses_a_filled_cache_of_several_sequences(prepared):
    with open_backend(prepared["ort-fp32"], threads=1) as backend:
        with pytest.raises(NotImplementedError, match="AppendTokens once"):
            backend.start_batch(np.ones((2, 8), dtype=np.int64), 4)


def test_generate_batch_checks_its_arguments(prepared):
    with open_backend(prepared["llamacpp-q8_0"], threads=1) as backend:
        with pytest.raises(RuntimeError, match="start_batch"):
            backend.generate_batch(np.ones((1, 4), dtype=np.int64), 2)
        backend.start_batch(np.ones((2, 3), dtype=np.int64), 5)
        with pytest.raises(ValueError, match="room"):
            backend.generate_batch(np.ones((2, 4), dtype=np.int64), 2)
        with pytest.raises(ValueError, match="prompt_ids must be"):
            backend.generate_batch(np.ones((3, 2), dtype=np.int64), 2)


@pytest.mark.parametrize("name", ("llamacpp-f32", "llamacpp-q8_0", "torch-fp32", "ort-fp32"))
def test_windows_scored_together_equal_each_window_scored_alone(prepared, token_ids_pool, name):
    """Perplexity's windows and lm-eval's requests may share a forward pass (llama.cpp packs those of one
    length, torch any): every window's logits are its own, bit for bit in llama.cpp and where the windows are
    alike, within 1e-4 otherwise."""
    from harness.kernels import token_nll

    ids = _draw(token_ids_pool, 5, (1, 4 * 128 + 90))[0]
    windows = [(ids[i * 128 : (i + 1) * 128], 0 if i == 0 else 64) for i in range(4)]
    windows += [(ids[512:512 + 40], 30), (ids[512:512 + 90], 5)]  # two short ones of other lengths
    with open_backend(prepared[name], threads=1) as backend:
        alone = [np.concatenate([token_nll(b.logits, b.targets) for b in backend.logit_blocks(w, s, 64)])
                 for w, s in windows]
        together = [np.concatenate([token_nll(b.logits, b.targets) for b in blocks])
                    for blocks in backend.window_logit_blocks(windows, 64)]
    assert [len(x) for x in together] == [len(x) for x in alone]
    worst_alike = max(float(np.abs(a - t).max()) for a, t in zip(alone[:4], together[:4]))
    worst = max(float(np.abs(a - t).max()) for a, t in zip(alone, together))
    print(f"{name}: packed vs alone, max |NLL difference| {worst_alike:.1e} (alike), {worst:.1e} (all)")
    assert worst <= 1e-4, name
    assert worst_alike == 0.0 or backend.runtime == "torch", name  # torch: one float's rounding per GEMM shape
    if backend.runtime == "llamacpp":
        assert worst == 0.0, name


def _choice_groups(pool: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Contexts of 1 to 150 tokens, each with choices of 1 to 30 tokens (one-token choices included)."""
    rng = np.random.default_rng(7)
    lengths = [(60, (1, 1, 1, 1)), (150, (12, 3, 30)), (1, (5, 1)), (25, (8, 9)), (90, (2,) * 6)]
    return [(rng.choice(pool, size=n), [rng.choice(pool, size=k) for k in ks]) for n, ks in lengths]


def _choice_nll(blocks) -> np.ndarray:
    from harness.kernels import token_nll

    return np.concatenate([token_nll(b.logits, b.targets) for b in blocks])


@pytest.mark.parametrize("name", FP32)
def test_choices_sharing_their_context_score_as_each_choice_alone(prepared, token_ids_pool, name):
    """lm-eval's choices of a document share its context (``choice_logit_blocks``): each choice's NLL per token
    is the one it has scored alone, within 1e-4 for torch and ORT (a cache reused: one float's rounding).
    llama.cpp packs the groups as llama-perplexity's --hellaswag does, and its logits move with the batch a
    row is computed in: there each choice's total stays within 0.05 nats of alone, and as close to torch's
    fp32 as alone is (within 0.01 nats on average)."""
    groups = _choice_groups(token_ids_pool)
    windows = [(np.concatenate([context, c]), len(context) - 1) for context, cs in groups for c in cs]
    with open_backend(prepared[name], threads=1) as backend:
        alone = [_choice_nll(backend.logit_blocks(ids, start)) for ids, start in windows]
        shared = [_choice_nll(blocks) for group in backend.choice_logit_blocks(groups, 8) for blocks in group]
    assert [len(x) for x in shared] == [len(c) for _, cs in groups for c in cs]
    worst = max(float(np.abs(a - s).max()) for a, s in zip(alone, shared))
    worst_total = max(abs(float(a.sum() - s.sum())) for a, s in zip(alone, shared))
    print(f"{name}: shared context vs alone, max |NLL difference| {worst:.1e} per token, {worst_total:.1e} per choice")
    if backend.runtime != "llamacpp":
        assert worst <= 1e-4, name
        return
    assert worst_total <= 0.05
    with open_backend(prepared["torch-fp32"], threads=1) as torch_backend:
        reference = [_choice_nll(torch_backend.logit_blocks(ids, start)).sum() for ids, start in windows]
    off_alone = np.mean([abs(a.sum() - r) for a, r in zip(alone, reference)])
    off_shared = np.mean([abs(s.sum() - r) for s, r in zip(shared, reference)])
    print(f"{name}: mean |NLL - torch-fp32's| per choice: alone {off_alone:.1e}, shared {off_shared:.1e}")
    assert off_shared <= off_alone + 0.01


@pytest.mark.parametrize("too", ("long", "many"))
def test_llamacpp_scores_a_group_too_long_to_pack_as_windows(prepared, token_ids_pool, too):
    """A group of more tokens than score_batch, or of more choices than a pack's sequences, is scored choice by
    choice, as windows, bit for bit."""
    from harness.backends import SETTINGS_CLASSES
    from harness.backends.llamacpp.backend import MAX_SHARED_SEQUENCES

    groups = _choice_groups(token_ids_pool)
    if too == "long":
        settings = SETTINGS_CLASSES["llamacpp"](score_batch=128)  # the second group (150 + 44 tokens) is too long
    else:
        settings, (context, cs) = None, groups[1]
        groups[1] = (context, (cs * MAX_SHARED_SEQUENCES)[: MAX_SHARED_SEQUENCES + 1])
    with open_backend(prepared["llamacpp-f32"], threads=1, settings=settings) as backend:
        shared = [_choice_nll(blocks) for group in backend.choice_logit_blocks(groups) for blocks in group]
        context, cs = groups[1]
        alone = [_choice_nll(backend.logit_blocks(np.concatenate([context, c]), len(context) - 1)) for c in cs]
    first = len(groups[0][1])
    assert all(np.array_equal(a, s) for a, s in zip(alone, shared[first : first + len(cs)]))


@pytest.mark.parametrize("name", ("llamacpp-q8_0", "llamacpp-f32"))
def test_llamacpp_scores_a_document_the_same_whichever_documents_share_its_pack(prepared, token_ids_pool, name):
    """A document's choices come out bit for bit the same beside any other documents. (What does move
    llama.cpp's logits, with flash attention, is how many cache cells a decode attends over: 60 cells against
    68 or more moved a Q8_0 logit by 1.7 in this build; nothing does without it.)"""
    groups = _choice_groups(token_ids_pool)
    with open_backend(prepared[name], threads=1) as backend:
        scored = {}
        for partners in ((1,), (3, 4), (1, 2, 3, 4)):  # packs of 252, 196 and 353 cells
            pack = [groups[0]] + [groups[i] for i in partners]
            scored[partners] = [_choice_nll(blocks) for blocks in next(backend.choice_logit_blocks(pack))]
    first, *others = scored.values()
    assert all(np.array_equal(a, b) for other in others for a, b in zip(first, other))
