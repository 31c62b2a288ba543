"""End-of-sequence ids every backend stops generation on, read from the shared tokenizer files; no heavy imports."""

from __future__ import annotations

import json
from pathlib import Path


def eos_ids(tokenizer_path: str | Path, *declared) -> frozenset[int]:
    """The ids a backend stops on: the shared tokenizer's, plus those its runtime's model declares.

    Each of ``declared`` is what a model config holds: None, one id or a list of
    ids (as ints or numeric strings, as GGUF metadata stores them). Negative ids,
    llama.cpp's "no such token", are dropped.
    """
    ids = set(tokenizer_eos_ids(tokenizer_path))
    for value in declared:
        ids |= int_ids(value)
    return frozenset(i for i in ids if i >= 0)


def tokenizer_eos_ids(tokenizer_path: str | Path) -> frozenset[int]:
    """EOS ids of the shared tokenizer directory: tokenizer_config's eos_token plus config/generation_config ids.

    Reads JSON only, so every backend can call it without importing transformers.
    A path that is not a transformers directory (e.g. a GGUF file) gives no ids.
    """
    root = Path(tokenizer_path)
    if not root.is_dir():
        return frozenset()
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        ids |= int_ids(_read_json(root / name).get("eos_token_id"))
    eos = _read_json(root / "tokenizer_config.json").get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if isinstance(eos, str):
        vocab = _token_ids(root / "tokenizer.json")
        if eos in vocab:
            ids.add(vocab[eos])
    return frozenset(ids)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def int_ids(value) -> set[int]:
    """An id field of a config as a set: None -> {}, 2 -> {2}, [2, "3"] -> {2, 3}."""
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def _token_ids(tokenizer_json: Path) -> dict[str, int]:
    data = _read_json(tokenizer_json)
    ids = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    vocab = data.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        ids = {**vocab, **ids}
    return ids
