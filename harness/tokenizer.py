"""The one tokenizer of a model: every variant scores the same token ids.

For a GGUF source it is llama.cpp's own tokenizer of that GGUF (loaded
vocabulary-only), which is what ``llama-perplexity`` uses: transformers'
conversion of a GGUF tokenizer can pre-tokenize differently (SmolLM2's digits
and runs of spaces). For a transformers directory it is that directory's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.corpus import Corpus, TokenizedText, bos_to_add, tokenize, tokenized_from_pieces


@dataclass(frozen=True)
class ModelTokenizer:
    kind: str  # "llama.cpp" | "transformers"
    bos_id: int | None  # put at the start of each window when the model adds BOS
    eos_ids: frozenset[int]
    encode: Callable[[str], list[int]]  # text -> ids, no special tokens added
    tokenize_corpus: Callable[[Corpus], TokenizedText]


def load_tokenizer(source_kind: str, source_path: Path, hf_dir: Path | None) -> ModelTokenizer:
    if source_kind == "gguf":
        return _llamacpp_tokenizer(source_path)
    return _hf_tokenizer(hf_dir or source_path)


def _llamacpp_tokenizer(gguf_path: Path) -> ModelTokenizer:
    import os

    import llama_cpp

    from harness.build_gguf import native_stderr_to

    with native_stderr_to(os.devnull):  # verbose=False still lets a context warning through
        vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    meta = vocab.metadata
    adds_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
    eos = {vocab.token_eos()} | {int(meta[k]) for k in ("tokenizer.ggml.eot_token_id",) if k in meta}

    def encode(text: str) -> list[int]:
        return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def tokenize_corpus(corpus: Corpus) -> TokenizedText:
        ids = encode(corpus.text)
        pieces = {t: _piece(vocab, t) for t in set(ids)}
        return tokenized_from_pieces(corpus, ids, [pieces[t] for t in ids])

    return ModelTokenizer("llama.cpp", vocab.token_bos() if adds_bos else None, frozenset(eos), encode, tokenize_corpus)


def _piece(vocab, token: int) -> bytes:
    """A token's exact bytes. ``Llama.detokenize`` returns b"" for pieces over 32 bytes
    (SmolLM2 has runs of 33 spaces), so ask llama.cpp with a buffer that fits."""
    import ctypes

    import llama_cpp

    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llama_cpp.llama_model_get_vocab(vocab.model), token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def _hf_tokenizer(model_dir: Path) -> ModelTokenizer:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    eos = hf.eos_token_id
    eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ModelTokenizer(
        "transformers",
        bos_to_add(hf),
        eos_ids,
        lambda text: hf(text, add_special_tokens=False)["input_ids"],
        lambda corpus: tokenize(hf, corpus),
    )
