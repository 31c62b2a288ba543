"""Shared fixtures: the real default model and its variants, built once per machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests never reach a model hub: everything comes from the installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="session")
def source():
    from harness.sources import resolve_source

    return resolve_source(None)


@pytest.fixture(scope="session")
def prepared(source) -> dict:
    """Every variant of the default model, {name: Variant}, from the user's cache (built if missing)."""
    from harness.variants import prepare

    result = prepare(source)
    assert not result.skipped, result.skipped
    return result.variants


@pytest.fixture(scope="session")
def wikitext_text() -> str:
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} is not present (it ships in the shared data folder beside the repo)")
    return WIKITEXT.read_text(encoding="utf-8")
