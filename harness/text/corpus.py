"""The text every variant is scored on: loading it (``harness.text.tokenizer`` tokenizes it).

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


def load_corpus(
    text: str | os.PathLike | None = None,
    dataset: str | None = None,
    text_field: str = "text",
    split: str = "test",
) -> Corpus:
    """The corpus of the ``text`` file or the named ``dataset``; the embedded default when neither is given."""
    if text is not None and dataset is not None:
        raise UserError(f"a dataset ({dataset}) is named too; give a text file or a dataset, not both",
                        setting="text", value=text)
    if text is not None:
        return load_text_file(text, text_field=text_field)
    if dataset in (None, DEFAULT_CORPUS):
        return pydoc_topics_corpus()
    if dataset in (WIKITEXT2, "wikitext-2-raw", "wikitext2"):
        return wikitext2_corpus(split=split)
    raise UserError(f"unknown dataset; use one of {', '.join(DATASETS)} or give a text file",
                    setting="dataset", value=dataset)


def load_text_file(path: str | os.PathLike, text_field: str = "text") -> Corpus:
    """A plain-text, WikiText raw or JSONL (``.jsonl``/``.ndjson``) file."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise UserError(f"{what}; give a UTF-8 text, wiki.*.raw or .jsonl file", setting="text", value=path)
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}); "
            "convert it first, e.g. `iconv -t UTF-8`", setting="text", value=path,
        ) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        content = _join_jsonl(content, path, text_field)
    elif content.endswith("\n"):
        content = content[:-1]  # llama.cpp's -f drops exactly one trailing newline
    if not content.strip():
        raise UserError("the text is empty; give a file with text in it", setting="text", value=path)
    name = f"wikitext-2:{path.name}" if re.fullmatch(r"wiki\.\w+\.raw", path.name) else path.name
    return Corpus(name, content, str(path.resolve()))


def _join_jsonl(content: str, path: Path, text_field: str) -> str:
    docs = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"line {line_no} is not JSON ({exc.msg}); write one JSON object per line",
                            setting="text", value=path) from None
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise UserError(f"line {line_no} of {path} has no string field {text_field!r}; "
                            "name the field that holds each record's text", setting="text_field", value=text_field)
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
    repo_root = Path(__file__).resolve().parents[2]  # harness/text/corpus.py
    folders = []
    if os.environ.get(WIKITEXT2_ENV):
        env = Path(os.environ[WIKITEXT2_ENV]).expanduser()
        folders.append(env.parent if env.name == name else env)
    for base in (Path.cwd(), repo_root):
        folders += [base / "data" / WIKITEXT2_DIR, base / WIKITEXT2_DIR]
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
        try:
            return load_text_file(local)
        except UserError as exc:  # about the file found, not a file the user named
            raise UserError(f"{local}: {exc.problem}", setting="dataset", value=WIKITEXT2) from None
    try:
        import datasets  # optional, and only useful online
    except ImportError:
        datasets = None
    if datasets is None:
        looked = ", ".join(str(p.parent) for p in wikitext2_search_paths(split))
        raise UserError(
            f"no local wiki.{split}.raw (looked in {looked}) and the `datasets` package is not installed; "
            f"give path/to/wiki.{split}.raw as the text file or set ${WIKITEXT2_ENV} to it",
            setting="dataset", value=WIKITEXT2,
        )
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as exc:  # offline, or the hub refused (datasets raises many types): say so in one line
        raise UserError(f"could not fetch it with `datasets` ({type(exc).__name__}); "
                        f"give path/to/wiki.{split}.raw as the text file", setting="dataset", value=WIKITEXT2) from None
    # HF rows are the file's lines with each blank line " \n" turned into "";
    # undo that so the text is byte-identical to wiki.<split>.raw (minus -f's final newline).
    text = "".join(row if row else " \n" for row in rows)
    return Corpus(f"wikitext-2:wiki.{split}.raw", text[:-1] if text.endswith("\n") else text, "datasets:wikitext-2-raw-v1")
