"""A reference recorded once and read back gives every variant the same accuracy as the reference run live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import FakeBackend, fake_variant

from harness.backends import open_backend
from harness.measure.accuracy import score_variant
from harness.measure.reference_record import (
    LOGITS_NAME,
    LogitRecorder,
    RecordedReference,
)
from harness.text.protocols import build_windows

PROMPTS = [[1, 2, 3], [4, 5]]
NEW_TOKENS = 6


def _without_wall(accuracy) -> dict:
    return {k: v for k, v in accuracy.to_dict().items() if k != "wall_s"}


def assert_same_figures(recorded, live) -> None:
    """Every figure equal to float rounding; keys without a value (None) must be None in both.

    ``pytest.approx(None)`` is a TypeError from pytest 9 on, so None is compared as it is.
    """
    recorded, live = _without_wall(recorded), _without_wall(live)
    assert recorded.keys() == live.keys()
    for key, value in live.items():
        if value is None or (isinstance(value, list) and not all(isinstance(v, float) for v in value)):
            assert recorded[key] == value, key  # None, or token positions: exactly equal
        else:  # a figure, an interval or a dict of sums: equal to float rounding (blocks cut differently)
            assert recorded[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def _record(reference, windows, directory, limit=1 << 30, prompts=PROMPTS):
    with LogitRecorder(directory, limit) as recorder:  # as measure_variant records
        return score_variant(reference, windows, None, prompts=prompts, max_new_tokens=NEW_TOKENS, record=recorder)


def test_real_model_recorded_reference_scores_a_variant_exactly_as_the_live_one(prepared, real_text, tmp_path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(prepared["torch-fp32"].tokenizer_path, "tokenizer.json")))
    ids = tokenizer.encode(real_text[:20_000], add_special_tokens=False).ids
    # Chunked windows score only each window's second half, so the record's row offsets are exercised.
    windows = build_windows(ids, "chunked", 256, None, None, max_tokens=768)
    assert len(windows) == 3 and all(w.score_start > 0 for w in windows)
    with open_backend(prepared["llamacpp-f32"], threads=1) as ref, open_backend(prepared["llamacpp-q8_0"], threads=1) as test:
        plain_own = score_variant(ref, windows, None)
        recorded_own = _record(ref, windows, tmp_path, prompts=PROMPTS)
        # Same block size as the record: with flash attention llama.cpp's logits depend on how a window is split.
        live = score_variant(test, windows, ref, prompts=PROMPTS, max_new_tokens=NEW_TOKENS)
        recorded = score_variant(test, windows, RecordedReference(tmp_path, windows), prompts=PROMPTS,
                                 max_new_tokens=NEW_TOKENS)
    assert _without_wall(recorded_own) == _without_wall(plain_own)  # recording leaves the reference's own row alone
    assert (tmp_path / LOGITS_NAME).stat().st_size == sum(w.n_scored for w in windows) * 49152 * 4
    assert_same_figures(recorded, live)
    assert live.kld_mean > 0 and live.generation_divergence is not None


@pytest.fixture
def fake_pair():
    ref = FakeBackend(fake_variant("ref"), vocab_size=32, seed=1)
    test = FakeBackend(fake_variant("test"), vocab_size=32, seed=2)
    ref.load()
    test.load()
    windows = build_windows(np.arange(200) % 29, "chunked", 64, None, None)
    return ref, test, windows


def test_a_record_past_its_limit_is_dropped_and_the_variant_runs_the_reference_live(fake_pair, tmp_path):
    ref, test, windows = fake_pair
    own = _record(ref, windows, tmp_path, limit=1000)  # 32 floats a row: well under one window
    assert own.ppl > 0
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    assert RecordedReference.open_if_complete(tmp_path, windows) is None


def test_an_unfinished_record_is_never_read(fake_pair, tmp_path):
    ref, _, windows = fake_pair
    recorder = LogitRecorder(tmp_path, 1 << 20)
    blocks = recorder.tee(ref.logit_blocks(windows[0].token_ids, windows[0].score_start))
    next(blocks)  # the reference's child dies here
    assert RecordedReference.open_if_complete(tmp_path, windows) is None
    recorder.discard()
    assert list(tmp_path.iterdir()) == []


def test_fake_recorded_reference_matches_live_with_other_block_cuts(fake_pair, tmp_path):
    ref, test, windows = fake_pair
    _record(ref, windows, tmp_path)
    live = score_variant(test, windows, ref, prompts=PROMPTS, max_new_tokens=NEW_TOKENS, block_rows=5)
    recorded = score_variant(test, windows, RecordedReference(tmp_path, windows), prompts=PROMPTS,
                             max_new_tokens=NEW_TOKENS, block_rows=7)
    assert_same_figures(recorded, live)
    assert live.kld_mean > 0 and live.word_ppl is None  # no text given: word_ppl None in both, compared as None


def test_a_variant_child_reads_the_record_and_never_loads_the_reference(prepared, real_text, tmp_path, monkeypatch):
    """What compare's children do: the reference's child records, a variant's child scores from the record."""
    from tokenizers import Tokenizer

    import harness.backends
    from harness.measure.variant import MeasureInputs, measure_variant

    tokenizer = Tokenizer.from_file(str(Path(prepared["torch-fp32"].tokenizer_path, "tokenizer.json")))
    windows = build_windows(tokenizer.encode(real_text[:8_000], add_special_tokens=False).ids, "chunked", 128, None, None,
                            max_tokens=256)
    ref, variant = prepared["llamacpp-f32"], prepared["llamacpp-q8_0"]
    inputs = MeasureInputs(ref, windows, None, PROMPTS, None, threads=1, device="cpu", prompt_tokens=16, gen_tokens=4,
                           warmup=0, repetitions=1, agreement_tokens=4)
    ref_row = measure_variant(ref, inputs, record_dir=str(tmp_path))
    assert ref_row["status"] == "ok"
    assert (tmp_path / LOGITS_NAME).stat().st_size == sum(w.n_scored for w in windows) * 49152 * 4

    opened = []
    real_open = harness.backends.open_backend
    monkeypatch.setattr(harness.backends, "open_backend", lambda v, **kw: opened.append(v.name) or real_open(v, **kw))
    row = measure_variant(variant, inputs, record_dir=str(tmp_path))
    assert opened == [variant.name]  # the reference came from the record
    assert row["status"] == "ok" and row["accuracy"]["kld_mean"] > 0 and row["accuracy"]["generation_divergence"]
    assert len(row["accuracy"]["generation_divergence"]) == len(PROMPTS)


def test_a_recorder_that_cannot_open_its_file_records_nothing_and_scoring_goes_on(fake_pair, tmp_path):
    ref, _, windows = fake_pair
    own = _record(ref, windows, tmp_path / "missing-folder")
    assert own.ppl > 0
    assert RecordedReference.open_if_complete(tmp_path / "missing-folder", windows) is None
