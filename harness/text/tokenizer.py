"""Tokenizing, in one place: the model's one tokenizer, the corpus tokenized once, and the speed vocabulary.

Every variant scores the same token ids. For a GGUF source the tokenizer is
llama.cpp's own tokenizer of that GGUF (loaded vocabulary-only), which is what
``llama-perplexity`` uses: transformers' conversion of a GGUF tokenizer can
pre-tokenize differently (SmolLM2's digits and runs of spaces). For a
transformers directory it is that directory's tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness.text.corpus import Corpus

# The first buffer a token's piece is read into; llama.cpp says how many bytes a longer piece needs.
PIECE_BUFFER_BYTES = 256
# llama.cpp token types that are no text: 2 unknown, 3 control, 5 unused
# (normal 1, user-defined 4 and byte 6 are text).
GGUF_NON_TEXT_TOKEN_TYPES = (2, 3, 5)


@dataclass(frozen=True)
class TokenizedText:
    """A corpus tokenized once for one model, with how much text each token covers.

    Token ``k`` covers the characters ``char_ends[k-1] .. char_ends[k]`` of the
    corpus (from 0 for ``k = 0``; the last token also takes any trailing text), so
    the tokens partition the text. ``token_bytes[k]`` counts the UTF-8 bytes of that
    span and ``token_words[k]`` the words that *start* in it (a word is a maximal
    run of non-whitespace), so summing over any set of tokens never counts a byte
    or a word twice, and over all tokens gives the text's bytes and words.
    """

    corpus_name: str
    token_ids: np.ndarray  # (T,) int64, no BOS/EOS added
    token_bytes: np.ndarray  # (T,) int64
    token_words: np.ndarray  # (T,) int64

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class ModelTokenizer:
    """The one tokenizer of a model, as the harness uses it."""

    kind: str  # "llama.cpp" | "transformers"
    bos_id: int | None  # put at the start of each window when the model adds BOS
    encode: Callable[[str], list[int]]  # text -> ids, no special tokens added
    tokenize_corpus: Callable[[Corpus], TokenizedText]


def load_tokenizer(source_kind: str, source_path: Path, hf_dir: Path | None) -> ModelTokenizer:
    """llama.cpp's tokenizer of a GGUF source, else the transformers tokenizer of ``hf_dir`` (or the source dir)."""
    if source_kind == "gguf":
        return _llamacpp_tokenizer(source_path)
    return _hf_tokenizer(hf_dir or source_path)


def _llamacpp_tokenizer(gguf_path: Path) -> ModelTokenizer:
    import os

    import llama_cpp

    from harness.machine.native_output import native_stderr_to

    with native_stderr_to(os.devnull):  # verbose=False still lets a context warning through
        vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    adds_bos = vocab.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def encode(text: str) -> list[int]:
        return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def tokenize_corpus(corpus: Corpus) -> TokenizedText:
        ids = encode(corpus.text)
        pieces = {t: _piece(vocab, t) for t in set(ids)}
        return tokenized_from_pieces(corpus, ids, [pieces[t] for t in ids])

    return ModelTokenizer("llama.cpp", vocab.token_bos() if adds_bos else None, encode, tokenize_corpus)


def _piece(vocab, token: int) -> bytes:
    """A token's exact bytes. ``Llama.detokenize`` returns b"" for pieces over 32 bytes
    (SmolLM2 has runs of 33 spaces), so ask llama.cpp with a buffer that fits."""
    import ctypes

    import llama_cpp

    size = PIECE_BUFFER_BYTES
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llama_cpp.llama_model_get_vocab(vocab.model), token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def _hf_tokenizer(model_dir: Path) -> ModelTokenizer:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    return ModelTokenizer(
        "transformers",
        bos_to_add(hf),
        lambda text: hf(text, add_special_tokens=False)["input_ids"],
        lambda corpus: tokenize(hf, corpus),
    )


# ---- the corpus as token ids, and how much text each covers ----------------------


def tokenize(tokenizer: Any, corpus: Corpus) -> TokenizedText:
    """Tokenize the whole corpus once with a Hugging Face tokenizer, adding no special tokens.

    A fast tokenizer's character offsets tie each token to its span of the
    original text. Without offsets, each token's decoded piece stands in for its
    span (byte-level pieces that split a character then count U+FFFD's 3 bytes).
    """
    text = corpus.text
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        token_ids = np.asarray(enc["input_ids"], dtype=np.int64)
        char_ends = np.asarray([end for _, end in enc["offset_mapping"]], dtype=np.int64)
    else:
        token_ids = np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)
        pieces = {t: tokenizer.decode([t]) for t in np.unique(token_ids).tolist()}
        text = "".join(pieces[t] for t in token_ids.tolist())
        char_ends = np.cumsum([len(pieces[t]) for t in token_ids.tolist()], dtype=np.int64)
    token_bytes, token_words = token_text_counts(text, char_ends)
    return TokenizedText(corpus.name, token_ids, token_bytes, token_words)


def tokenized_from_pieces(corpus: Corpus, token_ids: Sequence[int], piece_bytes: Sequence[bytes]) -> TokenizedText:
    """A ``TokenizedText`` from any tokenizer that gives each token's exact bytes, e.g. llama.cpp's.

    ``piece_bytes[k]`` is token ``k``'s piece (llama.cpp: ``Llama.detokenize([id])``); the
    pieces must join to the corpus's UTF-8 bytes. A character split across tokens
    belongs to the token holding its first byte.
    """
    text_bytes = corpus.text.encode("utf-8")
    lengths = np.fromiter((len(piece) for piece in piece_bytes), dtype=np.int64, count=len(piece_bytes))
    if len(lengths) != len(token_ids) or b"".join(piece_bytes) != text_bytes:
        raise ValueError(f"{corpus.name}: the token pieces do not join to the text; the tokenizer is not lossless")
    code_points = np.frombuffer(corpus.text.encode("utf-32-le"), dtype=np.uint32)
    char_first_byte = np.concatenate(([0], np.cumsum(_utf8_lengths(code_points))[:-1]))
    char_ends = np.searchsorted(char_first_byte, np.cumsum(lengths), side="left")
    token_bytes, token_words = token_text_counts(corpus.text, char_ends)
    return TokenizedText(corpus.name, np.asarray(token_ids, dtype=np.int64), token_bytes, token_words)


def _utf8_lengths(code_points: np.ndarray) -> np.ndarray:
    return 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000).astype(np.int64)


def token_text_counts(text: str, char_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and word starts of each token's span, given each token's end offset in ``text``.

    Offsets may overlap or trim whitespace (byte-level BPE, ``trim_offsets``); a
    running maximum keeps the spans ordered and disjoint, and the last span runs
    to the end of the text.
    """
    ends = np.maximum.accumulate(np.clip(np.asarray(char_ends, dtype=np.int64), 0, len(text)))
    if len(ends):
        ends[-1] = len(text)
    starts = np.concatenate(([0], ends[:-1]))
    char_bytes = _utf8_lengths(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    byte_cum = np.concatenate(([0], np.cumsum(char_bytes, dtype=np.int64)))
    word_start = np.zeros(len(text) + 1, dtype=np.int64)
    word_start[[m.start() + 1 for m in re.finditer(r"\S+", text)]] = 1
    word_cum = np.cumsum(word_start)
    return byte_cum[ends] - byte_cum[starts], word_cum[ends] - word_cum[starts]


def bos_to_add(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts before a text when it adds special tokens, else None."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(with_special) > len(without) and with_special[0] == bos:
        return int(bos)
    return None


# ---- the vocabulary of speed prompts ------------------------------------------------


def speed_token_pool(tokenizer_path: str | Path) -> np.ndarray:
    """Ids a speed prompt may hold: the whole vocabulary except special (control) tokens.

    ``tokenizer_path`` is a GGUF file or a directory with ``tokenizer.json``.
    """
    path = Path(tokenizer_path)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_pool(path)
    tokenizer_json = path / "tokenizer.json" if path.is_dir() else path
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"{tokenizer_path}: no GGUF file nor tokenizer.json to draw speed prompts from")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    ids = np.arange(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    return ids[~np.isin(ids, list(special))]


def _gguf_pool(path: Path) -> np.ndarray:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields["tokenizer.ggml.token_type"]
    token_types = np.array([field.parts[i][0] for i in field.data])
    return np.flatnonzero(~np.isin(token_types, GGUF_NON_TEXT_TOKEN_TYPES)).astype(np.int64)
