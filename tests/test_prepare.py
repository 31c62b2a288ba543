"""The variant pipeline on the real default model: names, exact F32 weights, atomicity, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.build import pytorch as build_torch
from harness.build import variants
from harness.build.reference_policy import (
    NO_REFERENCE,
    REFERENCE_ORDER,
    choose_reference,
    with_reference,
)
from harness.build.sources import resolve_source
from harness.build.variants import load_prepared, prepare
from harness.errors import UserError, one_line
from harness.manifest import MANIFEST_NAME, Variant

ALL_VARIANTS = {
    "torch-fp32", "torch-bf16", "ort-fp32", "ort-int4",
    "llamacpp-f32", "llamacpp-f16", "llamacpp-q8_0", "llamacpp-q6_k", "llamacpp-q5_k_m",
    "llamacpp-q4_k_m", "llamacpp-q3_k_m", "llamacpp-q2_k", "llamacpp-q4_1",
}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=timeout)


def test_prepare_builds_all_thirteen_named_variants_with_manifests(prepared, source):
    assert set(prepared) == ALL_VARIANTS
    for variant in prepared.values():
        assert Path(variant.path).exists(), variant.path
        assert variant.source_sha256 == source.sha256
        assert variant.size_bytes > 50e6 and 4 < variant.bits_per_weight < 33, variant
        assert variant.tools, variant.name
    bits = {name: v.bits_per_weight for name, v in prepared.items()}
    assert bits["llamacpp-f32"] > bits["llamacpp-f16"] > bits["llamacpp-q8_0"] > bits["llamacpp-q4_k_m"] > bits["llamacpp-q2_k"]
    assert bits["ort-fp32"] > 4 * bits["ort-int4"] / 1.3


def test_second_prepare_does_no_work(prepared, source, monkeypatch):
    from harness.build import llamacpp as build_gguf

    def no_read(path):
        raise AssertionError("a prepare with nothing to build parsed the source GGUF")

    monkeypatch.setattr(build_gguf, "read_gguf", no_read)  # the source's file type (q4_1) comes from the cache
    result = prepare(source)
    assert result.built == []
    assert set(result.variants) == ALL_VARIANTS


def test_f32_gguf_holds_exactly_the_reference_weights(prepared):
    import gguf
    from safetensors.numpy import load_file

    reference = load_file(Path(prepared["torch-fp32"].path, "model.safetensors"))
    reader = gguf.GGUFReader(prepared["llamacpp-f32"].path)
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_head_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(reader.fields["llama.block_count"].contents()))
    compared = 0
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor.name
        hf_name = next(k for k in reference if names.get_name(k, try_suffixes=(".weight",)) == tensor.name)
        expected = reference[hf_name]
        # llama.cpp's converter permutes q/k rows for its rotary layout; transformers undoes it.
        if tensor.name.endswith("attn_q.weight"):
            expected = _llama_permute(expected, n_head)
        elif tensor.name.endswith("attn_k.weight"):
            expected = _llama_permute(expected, n_head_kv)
        got = np.asarray(tensor.data).reshape(expected.shape)
        assert np.array_equal(got, expected), tensor.name
        compared += 1
    assert compared == len(reader.tensors) == 272


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture
def scratch_cache(tmp_path, prepared, source):
    """A private cache holding hard links to the finished variants, to rebuild some cheaply."""
    cache = tmp_path / "cache"
    model_dir = cache / source.cache_key
    model_dir.mkdir(parents=True)
    for name, variant in prepared.items():
        shutil.copytree(Path(variant.path).parent if variant.runtime == "llamacpp" else variant.path,
                        model_dir / name, copy_function=os.link)
    return cache


def test_killed_write_leaves_nothing_a_later_prepare_or_load_mistakes_for_finished(scratch_cache, source):
    model_dir = scratch_cache / source.cache_key
    shutil.rmtree(model_dir / "torch-bf16")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "prepare", "--variants", "torch-bf16",
                             "--cache-dir", str(scratch_cache)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(model_dir.glob(".tmp-torch-bf16-*/*.safetensors")):  # mid-write
        assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert list(model_dir.glob(".tmp-torch-bf16-*")), "the kill should have left a temporary directory"
    assert not (model_dir / "torch-bf16").exists()
    assert "torch-bf16" not in load_prepared(source, scratch_cache)

    result = prepare(source, ["torch-bf16"], scratch_cache)
    assert result.built == ["torch-bf16"]
    assert not list(model_dir.glob(".tmp-*"))
    assert Variant.load(model_dir / "torch-bf16").precision == "bf16"


def test_quantized_variant_rebuilds_from_f32_in_private_cache(scratch_cache, source):
    shutil.rmtree(scratch_cache / source.cache_key / "llamacpp-q8_0")
    result = prepare(source, ["llamacpp-q8_0"], scratch_cache)
    assert result.built == ["llamacpp-q8_0"]
    assert (scratch_cache / source.cache_key / "llamacpp-q8_0" / MANIFEST_NAME).is_file()


# ---- bad input: one line, non-zero exit, no traceback ----------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_path_is_one_line(tmp_path):
    assert_one_line_error(run_cli("prepare", "--model", str(tmp_path / "nope.gguf")), "nope.gguf", "no such file")


def test_file_that_is_not_a_gguf_is_one_line(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    assert_one_line_error(run_cli("prepare", "--model", str(bogus)), "notes.txt", "not a GGUF")


def test_directory_that_is_not_a_model_is_one_line(tmp_path):
    assert_one_line_error(run_cli("prepare", "--model", str(tmp_path)), "config.json")


def test_truncated_gguf_is_one_line(tmp_path, source):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(source.path.read_bytes()[: 20 * 2**20])
    assert_one_line_error(run_cli("prepare", "--model", str(truncated), "--cache-dir", str(tmp_path / "c")),
                          "truncated.gguf", "truncated or corrupt")
    assert not list((tmp_path / "c").rglob(MANIFEST_NAME))


def test_corrupt_gguf_header_is_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    assert_one_line_error(run_cli("prepare", "--model", str(corrupt), "--cache-dir", str(tmp_path / "c")),
                          "corrupt.gguf", "truncated or corrupt")


def test_unknown_variant_is_one_line():
    assert_one_line_error(run_cli("prepare", "--variants", "llamacpp-q9_9"), "llamacpp-q9_9", "choose from")


TINY_ARCH = "olmo"  # an architecture llama.cpp reads and transformers cannot read from GGUF


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    """A one-tensor F32 GGUF with a 4-token vocabulary: llama.cpp reads it, its variants build in a blink."""
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(path, TINY_ARCH)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab", "<s>"])
    writer.add_token_types([1, 1, 1, 3])
    writer.add_token_merges(["a b"])
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_architecture_transformers_cannot_read_makes_torch_unavailable_and_builds_the_rest(tmp_path, tiny_gguf):
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch, path = TINY_ARCH, tiny_gguf
    assert arch not in GGUF_SUPPORTED_ARCHITECTURES
    proc = run_cli("prepare", "--model", str(path), "--variants", "llamacpp-f32,torch-fp32",
                   "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 1
    expected = f"unavailable torch-fp32: transformers cannot take it: GGUF model with architecture {arch} is not"
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "llamacpp-f32" in proc.stdout  # built all the same
    built = list((tmp_path / "c").rglob(f"llamacpp-f32/{MANIFEST_NAME}"))
    assert len(built) == 1


def test_full_disk_is_one_line_and_leaves_no_variant(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here to fill")
    try:
        proc = run_cli("prepare", "--variants", "torch-fp32", "--cache-dir", str(mount))
        assert_one_line_error(proc, "disk full", "--cache-dir")
        assert not list(mount.rglob(MANIFEST_NAME))
        assert not list(mount.rglob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(mount)])


# ---- which build failures are skips, and which are bugs ----------------------------


def raising(exc: BaseException):
    """A stand-in builder that fails with ``exc``."""

    def builder(*args):
        raise exc

    return builder


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("onnxruntime-genai builder failed (1): killed"),
        NotImplementedError("no dequantize kernel for this type"),
        ValueError("unrecognized configuration"),
        OSError("tokenizer.json: no such file"),
        ModuleNotFoundError("No module named 'llama_cpp'"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_an_expected_build_failure_skips_the_variant_and_those_made_from_it(tmp_path, tiny_gguf, monkeypatch, failure):
    monkeypatch.setattr(build_torch, "fp32_from_gguf", raising(failure))
    result = prepare(resolve_source(str(tiny_gguf)), ["torch-bf16", "llamacpp-f32"], tmp_path / "c")
    assert result.skipped == {"torch-fp32": one_line(failure), "torch-bf16": "needs torch-fp32, which was skipped"}
    assert result.built == ["llamacpp-f32"]
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def fake_fp32_copy(gguf_path, dest):
    """A stand-in torch-fp32 build: one small safetensors file."""
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((4, 4), dtype=np.float32)}, str(dest / "model.safetensors"))


def test_a_runtime_that_cannot_take_the_model_makes_its_variants_unavailable(tmp_path, tiny_gguf, monkeypatch):
    monkeypatch.setattr(build_torch, "fp32_from_gguf", raising(build_torch.UnsupportedArchitecture("no such arch")))
    result = prepare(resolve_source(str(tiny_gguf)), ["torch-bf16", "ort-int4", "llamacpp-f32"], tmp_path / "c")
    made_from = "made from torch-fp32, which is unavailable: no such arch"
    assert result.unavailable == {"torch-fp32": "no such arch", "torch-bf16": made_from, "ort-int4": made_from}
    assert result.skipped == {} and result.built == ["llamacpp-f32"]
    assert not list((tmp_path / "c").rglob(".tmp-*"))
    # Without a transformers copy the GGUF's own vocabulary is the tokenizer, and speed prompts draw from it.
    from harness.text.tokenizer import speed_token_pool

    f32 = result.variants["llamacpp-f32"]
    assert f32.tokenizer_path == f32.path and f32.path.endswith(".gguf") and len(speed_token_pool(f32.tokenizer_path))


@pytest.mark.parametrize("last_line, unavailable", [
    ("NotImplementedError: The FooForCausalLM model is not currently supported.", True),
    ("KeyError: 'rope_type'", True),
    ("MemoryError", False),
    ("killed", False),
])
def test_the_onnx_builder_refusing_the_model_is_unavailable_and_its_crash_a_skip(
        tmp_path, tiny_gguf, monkeypatch, last_line, unavailable):
    from harness.build import ort as build_ort

    monkeypatch.setattr(build_torch, "fp32_from_gguf", fake_fp32_copy)
    failure = RuntimeError(f"onnxruntime-genai builder failed (1): {last_line}")
    monkeypatch.setattr(build_ort, "build_ort", raising(failure))
    result = prepare(resolve_source(str(tiny_gguf)), ["ort-fp32"], tmp_path / "c")
    assert result.built == ["torch-fp32"]
    if unavailable:
        assert result.unavailable == {"ort-fp32": f"the onnxruntime-genai builder cannot take it: {last_line}"}
    else:
        assert list(result.skipped) == ["ort-fp32"] and not result.unavailable


def test_a_model_no_runtime_can_take_is_a_user_error_and_leaves_no_folder(tmp_path, tiny_gguf, monkeypatch):
    monkeypatch.setattr(build_torch, "fp32_from_gguf", raising(build_torch.UnsupportedArchitecture("torch: no")))
    source = resolve_source(str(tiny_gguf))
    with pytest.raises(UserError, match=r"no runtime can take it \(torch: no\)") as exc:
        prepare(source, ["torch-bf16"], tmp_path / "c")
    assert exc.value.setting == "model"
    assert not (tmp_path / "c" / source.cache_key / "torch-fp32").exists()
    assert not list((tmp_path / "c").rglob(".tmp-*"))


@pytest.mark.parametrize("bug", [TypeError("f() takes 2 arguments"), KeyError("torch-fp32"),
                                 AttributeError("'NoneType' object has no attribute 'path'"), NameError("reader")],
                         ids=lambda exc: type(exc).__name__)
def test_a_bug_in_the_harness_raises_instead_of_passing_for_a_skipped_variant(tmp_path, tiny_gguf, monkeypatch, bug):
    monkeypatch.setattr(build_torch, "fp32_from_gguf", raising(bug))
    with pytest.raises(type(bug)):
        prepare(resolve_source(str(tiny_gguf)), ["torch-fp32"], tmp_path / "c")
    assert not list((tmp_path / "c").rglob(".tmp-*")) and not list((tmp_path / "c").rglob(MANIFEST_NAME))


def test_prepare_result_holds_the_whole_catalogue_in_order(tmp_path, tiny_gguf, monkeypatch):
    monkeypatch.setattr(build_torch, "fp32_from_gguf", raising(RuntimeError("no")))
    source = resolve_source(str(tiny_gguf))
    result = prepare(source, ["llamacpp-f32"], tmp_path / "c")
    assert list(result.specs) == [s.name for s in variants.catalogue(source, "f32")]
    assert (result.specs["ort-int4"].runtime, result.specs["ort-int4"].precision) == ("ort", "int4")
    assert "ort-int4" not in result.variants  # not asked for: in the catalogue only


def test_progress_off_a_terminal_is_one_line_per_variant_built_or_skipped(tmp_path, tiny_gguf, monkeypatch, capsys):
    from harness.prepare import prepare_with_progress

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "1" if name != "TRANSFORMERS_VERBOSITY" else "error")  # restored afterwards
    monkeypatch.setattr(build_torch, "fp32_from_gguf", raising(RuntimeError("no")))
    source = resolve_source(str(tiny_gguf))
    prepare_with_progress(source, ["llamacpp-f32"], tmp_path / "c", 1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[:2] for line in lines] == [["skipped", "torch-fp32"], ["built", "llamacpp-f32"]], lines
    assert lines[0].endswith(" s: RuntimeError: no") and " after " in lines[0]
    assert lines[1].startswith("built llamacpp-f32 in ") and lines[1].endswith(" s")
    prepare_with_progress(source, ["llamacpp-f32"], tmp_path / "c", 1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[:2] for line in lines] == [["skipped", "torch-fp32"]], lines  # the cached one is silent


# ---- the reference ------------------------------------------------------------------


def _variant(name: str) -> Variant:
    runtime, precision = name.split("-", 1)
    return Variant(name=name, runtime=runtime, precision=precision, path="/nowhere", tokenizer_path="/nowhere",
                   source_sha256="0" * 64, size_bytes=1, n_params=1, bits_per_weight=8.0, tools={})


@pytest.fixture
def runtimes_that_import(monkeypatch):
    """Pretend only some runtimes import here: ``runtimes_that_import({"torch"})``."""
    import harness.backends

    def pretend(available: set[str]) -> None:
        monkeypatch.setattr(harness.backends, "runtime_unavailable_reason",
                            lambda runtime, device="cpu": None if runtime in available else f"{runtime}: not installed")

    return pretend


def test_the_fallback_reference_is_the_first_full_precision_variant_whose_runtime_imports(runtimes_that_import):
    runs = [_variant(n) for n in ("torch-fp32", "ort-fp32", "llamacpp-f32", "llamacpp-q8_0")]
    runtimes_that_import({"torch", "ort", "llamacpp"})
    assert choose_reference(None, runs).name == REFERENCE_ORDER[0] == "llamacpp-f32"
    runtimes_that_import({"torch", "ort"})
    assert choose_reference(None, runs).name == "ort-fp32"
    assert choose_reference(None, [_variant("llamacpp-q8_0")]) is None
    assert with_reference(["llamacpp-q8_0"], None) == ["llamacpp-q8_0", "ort-fp32"]


def test_a_named_reference_is_used_or_refused_by_name(runtimes_that_import):
    runtimes_that_import(set())  # a named reference does not depend on what imports
    runs = [_variant(n) for n in ("torch-fp32", "llamacpp-q8_0")]
    assert choose_reference("llamacpp-q8_0", runs).name == "llamacpp-q8_0"
    assert choose_reference(NO_REFERENCE, runs) is None
    with pytest.raises(UserError, match="not a variant of this run; choose from torch-fp32, llamacpp-q8_0, none") \
            as exc:
        choose_reference("ort-fp32", runs)
    assert (exc.value.setting, exc.value.value) == ("reference", "ort-fp32")
    assert with_reference(["torch-bf16"], "torch-fp32") == ["torch-bf16", "torch-fp32"]
    assert with_reference(["torch-fp32"], "torch-fp32") == ["torch-fp32"]
    assert with_reference(["torch-bf16"], NO_REFERENCE) == ["torch-bf16"]
    assert with_reference(None, "ort-fp32") is None  # every variant is prepared anyway


def test_a_transformers_source_has_the_llamacpp_family_and_its_reference(tmp_path, runtimes_that_import):
    runtimes_that_import({"torch", "ort", "llamacpp"})
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    hf_source = resolve_source(str(tmp_path))
    names = [s.name for s in variants.catalogue(hf_source, None)]
    assert names == [n for n in [s.name for s in variants.catalogue(resolve_source(None), "q4_1")]
                     if n != "llamacpp-q4_1"]  # every variant but a GGUF source's own file
    assert with_reference(["torch-bf16"], None, hf_source) == ["torch-bf16", "llamacpp-f32"]
    runtimes_that_import({"torch", "ort"})
    assert with_reference(["torch-bf16"], None, hf_source) == ["torch-bf16", "ort-fp32"]


def test_the_onnx_builder_reads_gemma3_through_legacy_rope_keys_that_transformers_reads_back(tmp_path):
    # transformers 5 writes Gemma 3's RoPE per layer type; the builder reads one flat rope_parameters with
    # rope_type and the sliding layers' base as rope_local_base_freq. The view gives it those keys, and
    # transformers, reading the view, gets back the per-layer-type parameters the model was made with.
    from transformers import AutoConfig, Gemma3TextConfig

    from harness.build.ort import builder_input

    config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=32, vocab_size=100, rope_theta=500_000.0,
                              rope_local_base_freq=20_000.0)
    base = tmp_path / "base"
    config.save_pretrained(base)
    (base / "model.safetensors").write_bytes(b"weights")
    view = builder_input(base, tmp_path / "work")
    assert view != base and (view / "model.safetensors").read_bytes() == b"weights"
    flat = json.loads((view / "config.json").read_text())["rope_parameters"]
    assert flat == {"rope_type": "default", "rope_theta": 500_000.0, "rope_local_base_freq": 20_000.0}
    reread = AutoConfig.from_pretrained(view).rope_parameters
    assert {kind: reread[kind] for kind in ("full_attention", "sliding_attention")} == config.rope_parameters
    # A flat config (Llama and most families) is handed over as it is.
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}))
    assert builder_input(llama, tmp_path / "work2") == llama
