"""Models the runtimes cannot take: one line and exit 2 when none can, unavailable variants when one cannot,
and nothing half-written in the cache either way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tiny_models

from harness.manifest import MANIFEST_NAME

BPE_REFUSAL = ("llama.cpp's converter cannot take it: NotImplementedError: "
               "BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")


def prepare(model: Path, cache: Path, *variants: str) -> subprocess.CompletedProcess:
    args = ("--variants", ",".join(variants)) if variants else ()
    return subprocess.run([sys.executable, "-m", "harness", "prepare", "--model", str(model), *args,
                           "--cache-dir", str(cache)], capture_output=True, text=True, timeout=600)


def assert_one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def half_written(cache: Path) -> list[Path]:
    return list(cache.rglob(".tmp-*"))


def files_in(cache: Path) -> list[Path]:
    return list(cache.rglob("*"))


def converters_under(pid: int) -> list[psutil.Process]:
    """The llama.cpp converter processes among ``pid``'s descendants."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if any("convert_hf_to_gguf" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # a child that ended meanwhile
            continue
    return found


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    return tiny_models.write_trained_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture
def unknown_bpe_model(tmp_path, small_tokenizer) -> Path:
    """A tiny Llama whose BPE (trained here) has a pre-tokenizer hash that llama.cpp's converter does not know."""
    return tiny_models.build("llama", tmp_path / "models", small_tokenizer)


def test_a_config_that_names_no_architecture_is_one_line(tmp_path, unknown_bpe_model):
    config = json.loads((unknown_bpe_model / "config.json").read_text())
    del config["model_type"], config["architectures"]
    (unknown_bpe_model / "config.json").write_text(json.dumps(config))
    assert_one_line(prepare(unknown_bpe_model, tmp_path / "c"), str(unknown_bpe_model), "names no architecture")
    assert not (tmp_path / "c").exists()


def test_a_folder_without_a_tokenizer_is_one_line(tmp_path, unknown_bpe_model):
    (unknown_bpe_model / "tokenizer.json").unlink()
    assert_one_line(prepare(unknown_bpe_model, tmp_path / "c"), str(unknown_bpe_model), "no tokenizer",
                    "tokenizer.save_pretrained")
    assert not (tmp_path / "c").exists()


def test_an_architecture_no_runtime_knows_is_one_line_and_leaves_the_cache_empty(tmp_path, unknown_bpe_model):
    config = json.loads((unknown_bpe_model / "config.json").read_text())
    config.update(model_type="foonet", architectures=["FooNetForCausalLM"])
    (unknown_bpe_model / "config.json").write_text(json.dumps(config))
    line = assert_one_line(prepare(unknown_bpe_model, tmp_path / "c"), str(unknown_bpe_model),
                           "no runtime can take it")
    assert "transformers cannot take it" in line and "`foonet`" in line  # each runtime's own reason
    assert "llama.cpp's converter cannot take it: Model FooNetForCausalLM is not supported" in line
    assert files_in(tmp_path / "c") == []


def test_a_gguf_whose_architecture_llamacpp_does_not_know_is_one_line(tmp_path):
    import gguf

    path = tmp_path / "foonet.gguf"
    writer = gguf.GGUFWriter(path, "foonet")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("token_embd.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_one_line(prepare(path, tmp_path / "c"), "foonet.gguf", "unknown model architecture: 'foonet'",
                    "transformers folder")
    assert files_in(tmp_path / "c") == []


def test_a_converter_that_refuses_the_model_makes_the_llamacpp_variants_unavailable(tmp_path, unknown_bpe_model):
    cache = tmp_path / "c"
    proc = prepare(unknown_bpe_model, cache, "torch-fp32", "llamacpp-q8_0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"unavailable llamacpp-f32: {BPE_REFUSAL}\n" in proc.stderr
    assert f"unavailable llamacpp-q8_0: made from llamacpp-f32, which is unavailable: {BPE_REFUSAL}\n" in proc.stderr
    built = sorted(p.parent.name for p in cache.rglob(MANIFEST_NAME))
    assert built == ["torch-fp32"]  # the other runtime built all the same
    assert not half_written(cache) and not list(cache.rglob("llamacpp-*"))


@pytest.fixture(scope="module")
def convertible_model(tmp_path_factory) -> Path:
    """A tiny Llama with the default model's tokenizer, which llama.cpp's converter takes."""
    from harness.build.sources import resolve_source
    from harness.build.variants import prepare as prepare_variants

    base = Path(prepare_variants(resolve_source(None), ["torch-fp32"]).variants["torch-fp32"].path)
    tokenizer = tiny_models.write_tokenizer(base, tmp_path_factory.mktemp("tokenizer"))
    return tiny_models.build("llama", tmp_path_factory.mktemp("models"), tokenizer)


def test_a_converter_killed_half_way_leaves_nothing_and_the_next_prepare_converts(tmp_path, convertible_model):
    cache = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "prepare", "--model", str(convertible_model),
                             "--variants", "llamacpp-f32", "--cache-dir", str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (converters := converters_under(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before converting"
        time.sleep(0.02)
    converters[0].send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)

    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    assert "skipped llamacpp-f32: RuntimeError: llama.cpp's converter ended with status -9" in stderr
    assert not half_written(cache) and not list(cache.rglob("llamacpp-f32"))
    again = prepare(convertible_model, cache, "llamacpp-f32")
    assert again.returncode == 0, again.stderr
    assert len(list(cache.rglob(f"llamacpp-f32/{MANIFEST_NAME}"))) == 1
