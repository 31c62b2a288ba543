"""Loading the text (files, WikiText-2, JSONL, the embedded default) and tokenizing it once."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from harness.errors import UserError
from harness.text import corpus as corpus_mod
from harness.text.corpus import (
    DEFAULT_CORPUS,
    Corpus,
    find_wikitext2,
    load_corpus,
    load_text_file,
    pydoc_topics_corpus,
)
from harness.text.tokenizer import (
    bos_to_add,
    token_text_counts,
    tokenize,
    tokenized_from_pieces,
)

WIKI_TEST_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ---- files ---------------------------------------------------------------------


def test_plain_file_is_read_verbatim_except_one_final_newline(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(" = Title = \n \r\n body\tA é\n\n".encode())
    corpus = load_text_file(path)
    assert corpus == Corpus("notes.txt", " = Title = \n \r\n body\tA é\n", str(path.resolve()))  # like llama.cpp's -f


def test_wikitext_raw_file_keeps_its_bytes_and_is_named_as_wikitext(tmp_path):
    path = tmp_path / "wiki.valid.raw"
    path.write_bytes(b" \n = Homarus gammarus = \n \n")
    corpus = load_text_file(path)
    assert corpus.name == "wikitext-2:wiki.valid.raw"
    assert corpus.text == " \n = Homarus gammarus = \n "


def test_shared_wikitext2_test_file_is_found_and_read_as_llama_perplexity_reads_it(monkeypatch):
    from conftest import WIKITEXT

    if WIKITEXT.is_file():  # the development workspace's copy, found as a user's would be
        monkeypatch.setenv(corpus_mod.WIKITEXT2_ENV, str(WIKITEXT.parent))
    path = find_wikitext2("test")
    if path is None:
        pytest.skip("no local wiki.test.raw")
    corpus = load_corpus(dataset="wikitext-2")
    assert corpus.source == str(path.resolve())
    assert hashlib.sha256((corpus.text + "\n").encode()).hexdigest() == WIKI_TEST_SHA256
    assert len(corpus.text.split()) == 241_211


def test_wikitext2_location_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "wiki.test.raw").write_text(" = A = \n text \n")
    monkeypatch.setenv(corpus_mod.WIKITEXT2_ENV, str(tmp_path))
    assert find_wikitext2("test") == (tmp_path / "wiki.test.raw").resolve()
    assert load_corpus(dataset="wikitext-2").text == " = A = \n text "


def test_jsonl_joins_the_chosen_field_of_each_record(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "first doc", "body": "A"}, {"text": "second\ndoc", "body": "B"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_text_file(path).text == "first doc\n\nsecond\ndoc"
    assert load_corpus(path, text_field="body").text == "A\n\nB"


@pytest.mark.parametrize(
    "content,needle,setting",
    [
        ('{"text": "ok"}\n{"body": "no text"}\n', "line 2 of {path} has no string field 'text'", "text_field"),
        ('{"text": "ok"}\nnot json\n', "line 2 is not JSON", "text"),
        ('["a list"]\n', "line 1 of {path} has no string field", "text_field"),
    ],
)
def test_bad_jsonl_names_the_line_and_the_setting_to_change(tmp_path, content, needle, setting):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as exc:
        load_text_file(path)
    assert needle.format(path=path) in one_line(exc) and str(path) in str(exc.value)
    assert exc.value.setting == setting


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"caf\xe9 au lait", "not valid UTF-8 (byte 3"),
        (b"", "the text is empty"),
        (b" \n\n \t\n", "the text is empty"),
    ],
)
def test_unusable_file_is_a_one_line_user_error_naming_it(tmp_path, content, needle):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        load_corpus(path)
    assert needle in one_line(exc)
    assert (exc.value.setting, exc.value.value) == ("text", path)
    assert exc.value.for_cli().startswith(f"--text {path}: ")


def test_missing_file_and_bad_choices_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file") as exc:
        load_corpus(tmp_path / "nope.txt")
    one_line(exc)
    with pytest.raises(UserError, match="is a directory"):
        load_corpus(tmp_path)
    with pytest.raises(UserError, match="unknown dataset") as exc:
        load_corpus(dataset="penn-treebank")
    assert (exc.value.setting, exc.value.value) == ("dataset", "penn-treebank")
    with pytest.raises(UserError, match="not both"):
        load_corpus(tmp_path / "a.txt", dataset="wikitext-2")


def test_a_bad_wikitext2_file_found_by_search_is_an_error_about_the_dataset(tmp_path, monkeypatch):
    (tmp_path / "wiki.test.raw").write_bytes(b"caf\xe9")
    monkeypatch.setenv(corpus_mod.WIKITEXT2_ENV, str(tmp_path))
    with pytest.raises(UserError, match="not valid UTF-8") as exc:
        load_corpus(dataset="wikitext-2")
    assert (exc.value.setting, exc.value.value) == ("dataset", "wikitext-2")
    assert str(tmp_path / "wiki.test.raw") in exc.value.problem


# ---- the embedded default ----------------------------------------------------------


def test_default_corpus_is_pydoc_topics_joined_in_sorted_key_order():
    from pydoc_data.topics import topics

    corpus = load_corpus()
    assert corpus.name == DEFAULT_CORPUS and corpus == pydoc_topics_corpus()
    keys = sorted(topics)
    assert corpus.text.startswith(topics[keys[0]] + "\n\n" + topics[keys[1]])
    assert corpus.text.endswith(topics[keys[-1]])
    assert len(corpus.text) == sum(map(len, topics.values())) + 2 * (len(topics) - 1)
    assert len(corpus.text.split()) > 50_000  # enough for many 512-token windows


# ---- tokenizing -------------------------------------------------------------------


def test_token_text_counts_by_hand():
    # "The café sat." as "The" " caf" "é" " sat" "." -> bytes 3 4 2 4 1, word starts 1 1 0 1 0
    token_bytes, token_words = token_text_counts("The café sat.", np.array([3, 7, 8, 12, 13]))
    assert token_bytes.tolist() == [3, 4, 2, 4, 1]
    assert token_words.tolist() == [1, 1, 0, 1, 0]


def test_token_text_counts_with_overlapping_and_trimmed_offsets():
    # byte-level pieces of one character share its offsets (2, 3); a trimmed offset drops the leading space;
    # the trailing newline no token claims goes to the last token
    token_bytes, token_words = token_text_counts("a 日 b\n", np.array([1, 3, 3, 3, 5]))
    assert token_bytes.tolist() == [1, 4, 0, 0, 3]
    assert token_words.tolist() == [1, 1, 0, 0, 1]


def test_tokenized_from_byte_pieces_gives_a_split_character_to_its_first_byte():
    # llama.cpp-style pieces: "é" (c3 a9) split across two tokens
    corpus = Corpus("t", "The café sat.", "test")
    tokenized = tokenized_from_pieces(corpus, [7, 8, 9, 10, 11], [b"The", b" caf", b"\xc3", b"\xa9 sat", b"."])
    assert tokenized.token_ids.tolist() == [7, 8, 9, 10, 11]
    assert tokenized.token_bytes.tolist() == [3, 4, 2, 4, 1]
    assert tokenized.token_words.tolist() == [1, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="not lossless"):
        tokenized_from_pieces(corpus, [7, 8], [b"The", b" cat sat."])


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A real Hugging Face fast tokenizer (byte-level BPE, GPT-2 style), trained here on a few lines."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    lines = ["The café sat on the mat. Naïve résumé, 日本."] * 5
    bpe.train_from_iterator(lines, vocab_size=300, min_frequency=1, show_progress=False)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>")


def test_tokenize_partitions_the_text_into_bytes_and_words(byte_level_tokenizer):
    text = "The café  sat.\n\n 日本 on\tthe mat, naïvely"
    tokenized = tokenize(byte_level_tokenizer, Corpus("t", text, "test"))
    assert tokenized.token_ids.tolist() == byte_level_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenized.token_bytes.sum() == len(text.encode())
    assert tokenized.token_words.sum() == len(text.split())
    assert (tokenized.token_bytes >= 0).all() and len(tokenized) == len(tokenized.token_words)


def test_bos_to_add_follows_the_tokenizer(byte_level_tokenizer):
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    assert bos_to_add(byte_level_tokenizer) is None  # GPT-2 style: no BOS
    tok = Tokenizer.from_str(byte_level_tokenizer.backend_tokenizer.to_str())  # a copy: the fixture is shared
    bos_id = byte_level_tokenizer.convert_tokens_to_ids("<s>")
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    import transformers

    with_bos = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")
    assert isinstance(bos_id, int) and bos_to_add(with_bos) == bos_id
