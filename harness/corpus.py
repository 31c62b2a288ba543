"""The text every variant is scored on: loading it, and tokenizing it once per model.

Sources, chosen by ``load_corpus``:

- a plain UTF-8 file, read like ``llama-perplexity -f`` reads it: verbatim,
  except that one trailing newline is dropped (llama.cpp's ``-f`` pops it);
- WikiText-2 raw (``wiki.*.raw``): the same rule, so the token ids are the ones
  ``llama-perplexity -f wiki.test.raw`` sees;
- JSONL: one JSON object per line, its ``text_field`` ("text") taken from each,
  the documents joined by a blank line;
- ``dataset="wikitext-2"``: a local ``wiki.<split>.raw`` found by ``find_wikitext2``,
  else (online, with the optional ``datasets`` package) the Hugging Face rows
  turned back into the raw file's bytes;
- the embedded default ``pydoc-topics``: the topic help texts CPython ships in
  ``pydoc_data.topics`` (real English written by the Python documenters, offline
  right after set-up), joined in sorted key order with a blank line between.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.errors import UserError
from harness.paths import cache_dir

DEFAULT_CORPUS = "pydoc-topics"
WIKITEXT2 = "wikitext-2"
DATASETS = (DEFAULT_CORPUS, WIKITEXT2)
WIKITEXT2_DIR = "wikitext-2-raw"
WIKITEXT2_ENV = "HARNESS_WIKITEXT2"  # a wiki.*.raw file or the folder holding them
# Documents in JSONL and pydoc topics are separated like paragraphs.
DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """A text to score: a short ``name`` for tables and where it came from (``source``)."""

    name: str
    text: str
    source: str

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


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


# ---- loading ------------------------------------------------------------------


def load_corpus(
    text: str | os.PathLike | None = None,
    dataset: str | None = None,
    text_field: str = "text",
    split: str = "test",
) -> Corpus:
    """The corpus named by ``--text FILE`` or ``--dataset NAME``; the embedded default when neither is given."""
    if text is not None and dataset is not None:
        raise UserError(f"--text {text} and --dataset {dataset}: pass one of them, not both")
    if text is not None:
        return load_text_file(text, text_field=text_field)
    if dataset in (None, DEFAULT_CORPUS):
        return pydoc_topics_corpus()
    if dataset in (WIKITEXT2, "wikitext-2-raw", "wikitext2"):
        return wikitext2_corpus(split=split)
    raise UserError(f"--dataset {dataset}: unknown dataset; use one of {', '.join(DATASETS)} or pass --text FILE")


def load_text_file(path: str | os.PathLike, text_field: str = "text") -> Corpus:
    """A plain-text, WikiText raw or JSONL (``.jsonl``/``.ndjson``) file."""
    path = Path(path).expanduser()
    label = f"--text {path}"
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise UserError(f"{label}: {what}; pass a UTF-8 text, wiki.*.raw or .jsonl file")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{label}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}); "
            "convert it first, e.g. `iconv -t UTF-8`"
        ) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        content = _join_jsonl(content, label, text_field)
    elif content.endswith("\n"):
        content = content[:-1]  # llama.cpp's -f drops exactly one trailing newline
    if not content.strip():
        raise UserError(f"{label}: the text is empty; pass a file with text in it")
    name = f"wikitext-2:{path.name}" if re.fullmatch(r"wiki\.\w+\.raw", path.name) else path.name
    return Corpus(name, content, str(path.resolve()))


def _join_jsonl(content: str, label: str, text_field: str) -> str:
    docs = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label}: line {line_no} is not JSON ({exc.msg}); write one JSON object per line") from None
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise UserError(
                f"{label}: line {line_no} has no string field {text_field!r}; choose the field with --text-field"
            )
        docs.append(value)
    return DOC_SEPARATOR.join(docs)


def pydoc_topics_corpus() -> Corpus:
    """CPython's ``pydoc_data.topics`` help texts, sorted by topic name, joined by a blank line."""
    from pydoc_data.topics import topics

    text = DOC_SEPARATOR.join(topics[key] for key in sorted(topics))
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus(DEFAULT_CORPUS, text, f"pydoc_data.topics of Python {version} ({len(topics)} topics)")


def wikitext2_search_paths(split: str = "test") -> list[Path]:
    """Where ``find_wikitext2`` looks for ``wiki.<split>.raw``, in order."""
    name = f"wiki.{split}.raw"
    repo_root = Path(__file__).resolve().parent.parent
    folders = []
    if os.environ.get(WIKITEXT2_ENV):
        env = Path(os.environ[WIKITEXT2_ENV]).expanduser()
        folders.append(env.parent if env.name == name else env)
    for base in (Path.cwd(), repo_root):
        folders += [base / "data" / WIKITEXT2_DIR, base.parent / "shared" / "data" / WIKITEXT2_DIR, base / WIKITEXT2_DIR]
    folders.append(cache_dir() / "data" / WIKITEXT2_DIR)
    unique = list(dict.fromkeys(folder.resolve() for folder in folders))
    return [folder / name for folder in unique]


def find_wikitext2(split: str = "test") -> Path | None:
    """The first local ``wiki.<split>.raw`` among ``wikitext2_search_paths``, or None."""
    return next((p for p in wikitext2_search_paths(split) if p.is_file()), None)


def wikitext2_corpus(path: str | os.PathLike | None = None, split: str = "test") -> Corpus:
    """WikiText-2 raw from ``path``, a local copy, or the ``datasets`` library when it is installed."""
    if path is not None:
        return load_text_file(path)
    local = find_wikitext2(split)
    if local is not None:
        return load_text_file(local)
    try:
        import datasets  # optional, and only useful online
    except ImportError:
        datasets = None
    if datasets is None:
        looked = ", ".join(str(p.parent) for p in wikitext2_search_paths(split))
        raise UserError(
            f"--dataset {WIKITEXT2}: no local wiki.{split}.raw (looked in {looked}) and the `datasets` "
            f"package is not installed; pass --text path/to/wiki.{split}.raw or set ${WIKITEXT2_ENV}"
        )
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as exc:  # offline, or the hub refused: say so in one line
        raise UserError(
            f"--dataset {WIKITEXT2}: could not fetch it with `datasets` ({type(exc).__name__}); "
            f"pass --text path/to/wiki.{split}.raw"
        ) from None
    # HF rows are the file's lines with each blank line " \n" turned into "";
    # undo that so the text is byte-identical to wiki.<split>.raw (minus -f's final newline).
    text = "".join(row if row else " \n" for row in rows)
    return Corpus(f"wikitext-2:wiki.{split}.raw", text[:-1] if text.endswith("\n") else text, "datasets:wikitext-2-raw-v1")


# ---- tokenizing -----------------------------------------------------------------


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
