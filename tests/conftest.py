"""Shared fixtures: the real default model and its variants, built once per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import harness  # noqa: F401  first: it takes the checkout's root off sys.path (its kernels/ shadows transformers')

# The tests never reach a model hub: everything comes from the installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="session")
def source():
    from harness.build.sources import resolve_source

    return resolve_source(None)


@pytest.fixture(scope="session")
def prepared(source) -> dict:
    """Every variant of the default model, {name: Variant}, from the user's cache (built if missing)."""
    from harness.build.variants import prepare

    result = prepare(source)
    assert not result.skipped, result.skipped
    return result.variants


@pytest.fixture(scope="session")
def real_text() -> str:
    """Real English for the model tests: WikiText-2's test set when the shared data lies beside the
    repo, else the embedded default corpus, so the tests on the real model never skip for want of text."""
    if WIKITEXT.is_file():
        return WIKITEXT.read_text(encoding="utf-8")
    from harness.text.corpus import pydoc_topics_corpus

    return pydoc_topics_corpus().text
