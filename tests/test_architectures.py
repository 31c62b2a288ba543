"""Every architecture family through every runtime that takes it, from a folder and from its GGUF.

Tiny random-weight models (tests/tiny_models.py) go through ``prepare`` and one short
multi-model ``compare``: first as transformers folders (the llama.cpp variants through
llama.cpp's own converter), then as the F32 GGUF files that conversion made, the way
most users arrive (the torch and ONNX variants through transformers' GGUF reader and
the onnxruntime-genai builder). Random weights are enough for parity: the three fp32
variants hold the same weights, so their mean NLL over the same tokens must agree.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models

FOLDER_VARIANTS = ("torch-fp32", "ort-fp32", "llamacpp-f32", "llamacpp-q8_0")
GGUF_VARIANTS = ("torch-fp32", "ort-fp32", "llamacpp-f32")
FP32 = ("torch-fp32", "ort-fp32", "llamacpp-f32")
# 2 windows of 128 tokens, 126 scored; minimal speed tests (the figures are not judged here); one thread.
SHORT_RUN = ("--ctx", "128", "--max-tokens", "256", "--repetitions", "1", "--max-repetitions", "1", "--warmup", "0",
             "--prompt-tokens", "16", "--gen-tokens", "4", "--agreement-tokens", "4", "--threads", "1")
NLL_RTOL = 1e-4
# The fp32 variants of another runtime than the reference's hold its weights: their KLD is kernel noise only
# (about 1e-5 on these random models, whose logits are wider than a trained model's).
FP32_KLD_MAX = 1e-4
# A runtime that cannot take a family, and its own reason: none of these families today. (Gemma 3's ONNX
# variants need the builder's view of its config, harness.build.ort.builder_input; a builder that refuses a
# family outright is tested in test_prepare.py.)
UNAVAILABLE: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The default model's tokenizer (from its torch-fp32 variant, built in the user's cache if missing)."""
    from harness.build.sources import resolve_source
    from harness.build.variants import prepare

    base = prepare(resolve_source(None), ["torch-fp32"]).variants["torch-fp32"]
    return tiny_models.write_tokenizer(Path(base.path), tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: tiny_models.build(family, root, tokenizer_dir, seed=i)
            for i, family in enumerate(tiny_models.FAMILIES)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def compare(models: list[Path], variants: tuple[str, ...], cache: Path, out: Path) -> dict:
    """One ``compare`` of every model; its report.json, with its exit status and stderr."""
    args = [arg for model in models for arg in ("--model", str(model))]
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "compare", *args, "--variants", ",".join(variants), *SHORT_RUN,
         "--cache-dir", str(cache), "--out", str(out), "--store", str(out.parent / "runs.sqlite"),
         "--json", str(out.parent / f"{out.name}.json")],
        capture_output=True, text=True, timeout=1500)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads((out.parent / f"{out.name}.json").read_text())
    return {"returncode": proc.returncode, "stderr": proc.stderr, "report": report}


def rows_by_family(run: dict, folders: dict[str, Path]) -> dict[str, dict[str, dict]]:
    """{family: {variant: row}} from a run whose models are named after the tiny models' folders."""
    family_of = {path.name.removesuffix(".gguf"): family for family, path in folders.items()}
    rows: dict[str, dict[str, dict]] = {}
    for row in run["report"]["results"]:
        rows.setdefault(family_of[row["model"]], {})[row["variant"]] = row
    return rows


@pytest.fixture(scope="module")
def folder_run(folders, cache, tmp_path_factory) -> dict:
    return compare(list(folders.values()), FOLDER_VARIANTS, cache, tmp_path_factory.mktemp("runs") / "folders")


@pytest.fixture(scope="module")
def ggufs(folder_run, folders, cache, tmp_path_factory) -> dict[str, Path]:
    """Each family's F32 GGUF as llama.cpp's converter made it from the folder, under the folder's name."""
    from harness.build.sources import resolve_source

    root = tmp_path_factory.mktemp("ggufs")
    out = {}
    for family, folder in folders.items():
        converted = cache / resolve_source(str(folder)).cache_key / "llamacpp-f32" / "model.gguf"
        out[family] = root / f"{folder.name}.gguf"
        os.link(converted, out[family])
    return out


@pytest.fixture(scope="module")
def gguf_run(ggufs, cache, tmp_path_factory) -> dict:
    return compare(list(ggufs.values()), GGUF_VARIANTS, cache, tmp_path_factory.mktemp("runs") / "ggufs")


def assert_every_runtime_that_takes_it_scores(rows: dict[str, dict[str, dict]], variants: tuple[str, ...]) -> None:
    assert set(rows) == set(tiny_models.FAMILIES)
    for family, by_variant in rows.items():
        assert set(by_variant) == set(variants), (family, sorted(by_variant))
        for name, row in by_variant.items():
            if (family, name) in UNAVAILABLE:
                assert (row["status"], row["error"]) == ("unavailable", UNAVAILABLE[family, name]), (family, row)
            else:
                assert row["status"] == "ok", (family, name, row["error"])
                assert row["accuracy"]["tokens_scored"] == 126, (family, name)


def assert_fp32_variants_agree(rows: dict[str, dict[str, dict]], vocab_size: int) -> None:
    for family, by_variant in rows.items():
        reference = by_variant["llamacpp-f32"]["accuracy"]["nll_mean"]
        # Far from a uniform guess (ln V), so a runtime that read a weight wrongly would move it by far more.
        assert reference > math.log(vocab_size) + 0.1, (family, reference)
        for name in FP32:
            if by_variant[name]["status"] != "ok":
                continue
            nll = by_variant[name]["accuracy"]["nll_mean"]
            assert abs(nll - reference) <= NLL_RTOL * reference, (family, name, nll, reference)
            if name != "llamacpp-f32":
                assert by_variant[name]["accuracy"]["kld_mean"] < FP32_KLD_MAX, (family, name)


def print_table(title: str, rows: dict[str, dict[str, dict]], variants: tuple[str, ...]) -> None:
    """The per-family table (shown with ``pytest -s``): who built and scored, each one's mean NLL and its
    relative difference from llama.cpp's F32."""
    print(f"\n{title}\nfamily    " + "".join(f"{name:>26}" for name in variants))
    for family, by_variant in rows.items():
        reference = by_variant["llamacpp-f32"]["accuracy"]["nll_mean"]
        cells = []
        for row in (by_variant[name] for name in variants):
            nll = row["accuracy"]["nll_mean"] if row["status"] == "ok" else None
            cells.append(row["status"] if nll is None else f"ok {nll:.6f} ({(nll - reference) / reference:+.1e})")
        print(f"{family:<10}" + "".join(f"{cell:>26}" for cell in cells))


def vocab_size(folders: dict[str, Path]) -> int:
    return json.loads((next(iter(folders.values())) / "config.json").read_text())["vocab_size"]


def test_every_family_from_a_folder_builds_and_scores_in_every_runtime_that_takes_it(folder_run, folders):
    rows = rows_by_family(folder_run, folders)
    print_table("folder sources", rows, FOLDER_VARIANTS)
    assert_every_runtime_that_takes_it_scores(rows, FOLDER_VARIANTS)
    assert folder_run["returncode"] == (1 if UNAVAILABLE else 0)


def test_fp32_variants_of_a_folder_agree_on_mean_nll(folder_run, folders):
    assert_fp32_variants_agree(rows_by_family(folder_run, folders), vocab_size(folders))


def test_every_family_from_its_gguf_builds_and_scores_in_every_runtime_that_takes_it(gguf_run, folders):
    rows = rows_by_family(gguf_run, folders)
    print_table("GGUF sources (the folders converted by llama.cpp)", rows, GGUF_VARIANTS)
    assert_every_runtime_that_takes_it_scores(rows, GGUF_VARIANTS)


def test_fp32_variants_of_a_gguf_agree_on_mean_nll(gguf_run, folders):
    assert_fp32_variants_agree(rows_by_family(gguf_run, folders), vocab_size(folders))


def test_a_folder_and_its_gguf_score_the_same_tokens(folder_run, gguf_run, folders):
    """The folder is tokenized by transformers, its GGUF by llama.cpp: the same ids give llamacpp-f32 the same NLL."""
    by_folder, by_gguf = rows_by_family(folder_run, folders), rows_by_family(gguf_run, folders)
    for family in tiny_models.FAMILIES:
        scored = [{key: value for key, value in rows[family]["llamacpp-f32"]["accuracy"].items() if key != "wall_s"}
                  for rows in (by_folder, by_gguf)]
        assert scored[0] == scored[1], family
    tokenizers = {run_name: {m["name"]: m["tokenizer"] for m in run["report"]["models"]}
                  for run_name, run in (("folder", folder_run), ("gguf", gguf_run))}
    assert set(tokenizers["folder"].values()) == {"transformers"} and set(tokenizers["gguf"].values()) == {"llama.cpp"}


@pytest.mark.parametrize("family", list(tiny_models.FAMILIES))
def test_a_folder_and_its_gguf_tokenize_the_default_corpus_to_the_same_ids(family, folders, ggufs):
    import numpy as np

    from harness.text.corpus import pydoc_topics_corpus
    from harness.text.tokenizer import load_tokenizer

    corpus = pydoc_topics_corpus()
    by_transformers = load_tokenizer("hf", folders[family], None).tokenize_corpus(corpus)
    by_llamacpp = load_tokenizer("gguf", ggufs[family], None).tokenize_corpus(corpus)
    assert len(by_llamacpp) > 100_000
    np.testing.assert_array_equal(by_transformers.token_ids, by_llamacpp.token_ids)
    np.testing.assert_array_equal(by_transformers.token_bytes, by_llamacpp.token_bytes)
