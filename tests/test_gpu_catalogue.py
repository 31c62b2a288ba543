"""What a GPU run is made of, checked on a machine without one: the per-device catalogue, the CUDA builds of the
ONNX variants, and the unavailable rows of runtimes whose GPU build is not installed.

The ONNX builder writes CUDA graphs on a CPU too, so that build is real here;
the runtimes installed here are the CPU builds (torch +cpu, onnxruntime-genai,
llama-cpp-python without CUDA), so each must say it cannot run on ``cuda`` and
what installs the build that can.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.backends import (
    RuntimeUnavailable,
    open_backend,
    runtime_unavailable_reason,
)
from harness.build.reference_policy import with_reference
from harness.build.variants import catalogue, prepare
from harness.config import CompareConfig
from harness.errors import UserError
from harness.machine.monitor import nvml_available

CPU_ONLY = pytest.mark.skipif(nvml_available(), reason="this machine has an NVIDIA GPU")


def _names(source, device):
    return [s.name for s in catalogue(source, "q4_1", device)]


def test_the_gpu_catalogue_has_cuda_onnx_variants_in_place_of_the_cpu_ones(source):
    cpu, gpu = _names(source, "cpu"), _names(source, "cuda")
    assert [n for n in cpu if n.startswith("ort-")] == ["ort-fp32", "ort-int4"]
    assert [n for n in gpu if n.startswith("ort-")] == ["ort-cuda-fp16", "ort-cuda-int4"]
    # torch and llama.cpp variants are the same files on every device: same names, same cache folders
    assert [n for n in gpu if not n.startswith("ort-")] == [n for n in cpu if not n.startswith("ort-")]
    assert _names(source, "cuda:1") == gpu


def test_cuda_onnx_variants_are_built_for_cuda_from_torch_fp32(source):
    specs = {s.name: s for s in catalogue(source, "q4_1", "cuda")}
    assert {(s.precision, s.made_from, s.target) for n, s in specs.items() if n.startswith("ort-")} == {
        ("fp16", "torch-fp32", "cuda"), ("int4", "torch-fp32", "cuda")}
    assert {s.target for n, s in specs.items() if not n.startswith("ort-")} == {"cpu"}


def test_a_cpu_variant_name_is_unknown_to_a_gpu_run_and_says_which_exist(source, tmp_path):
    with pytest.raises(UserError, match="unknown variant; choose from .*ort-cuda-fp16"):
        prepare(source, ["ort-int4"], tmp_path, device="cuda")


def test_the_cuda_onnx_build_writes_a_cuda_graph_cached_apart_from_the_cpu_one(source, prepared, tmp_path):
    """A real build with the builder's -e cuda, from the cached torch-fp32 (linked into a fresh cache)."""
    model_dir = tmp_path / Path(prepared["torch-fp32"].path).parent.name
    model_dir.mkdir()
    shutil.copytree(prepared["torch-fp32"].path, model_dir / "torch-fp32", copy_function=os.link)
    (model_dir / "source-file-type").write_text("q4_1\n")
    result = prepare(source, ["ort-cuda-fp16"], tmp_path, threads=1, device="cuda")
    assert result.built == ["ort-cuda-fp16"] and not result.skipped
    variant = result.variants["ort-cuda-fp16"]
    genai = json.loads(Path(variant.path, "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {"enable_cuda_graph": "0"}}]
    assert Path(variant.path).name == "ort-cuda-fp16" and variant.precision == "fp16"
    assert 15.5 < variant.bits_per_weight < 16.5  # fp16 weights
    assert prepared["ort-fp32"].path != variant.path


def test_build_ort_refuses_a_target_the_builder_has_not(tmp_path):
    from harness.build.ort import build_ort

    with pytest.raises(ValueError, match="built for one of cpu, cuda"):
        build_ort(tmp_path, tmp_path / "out", "fp16", tmp_path / "work", target="rocm")


# ---- the CPU builds installed here cannot run on cuda -------------------------------------------------------

FIXES = {
    "torch": "--index-url https://download.pytorch.org/whl/cu128",
    "ort": "pip uninstall -y onnxruntime onnxruntime-genai && pip install --force-reinstall onnxruntime-gpu "
           "onnxruntime-genai-cuda",
    "llamacpp": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install',
}


@CPU_ONLY
@pytest.mark.parametrize("runtime", sorted(FIXES))
def test_a_runtime_without_its_gpu_build_is_unavailable_on_cuda_with_the_command_that_fixes_it(runtime):
    assert runtime_unavailable_reason(runtime) is None  # the CPU is fine
    reason = runtime_unavailable_reason(runtime, "cuda:0")
    assert reason.startswith(f"{runtime} on cuda:0: ") and FIXES[runtime] in reason, reason


@CPU_ONLY
@pytest.mark.parametrize("name", ["torch-fp32", "ort-fp32", "llamacpp-f32"])
def test_opening_a_variant_on_cuda_without_the_gpu_build_raises_runtime_unavailable(prepared, name):
    with pytest.raises(RuntimeUnavailable, match=r"on cuda: .*pip"):
        open_backend(prepared[name], threads=1, device="cuda")


@CPU_ONLY
def test_a_variant_on_cuda_without_the_gpu_build_gives_an_unavailable_row_not_a_failure(prepared):
    from harness.measure.variant import MeasureInputs, measure_variant

    inputs = MeasureInputs(reference=None, windows=(), text=None, prompts=(), token_pool=np.arange(10), threads=1,
                           device="cuda", prompt_tokens=4, gen_tokens=2, warmup=0, repetitions=1,
                           agreement_tokens=2)
    for name in ("torch-bf16", "llamacpp-q8_0"):
        row = measure_variant(prepared[name], inputs)
        assert row["status"] == "unavailable", row
        assert "on cuda: " in row["error"] and "pip install" in row["error"], row["error"]


@CPU_ONLY
def test_the_reference_fallback_on_cuda_skips_runtimes_that_cannot_run_there(source):
    assert with_reference(["torch-bf16"], None, source) == ["torch-bf16", "llamacpp-f32"]
    assert with_reference(["torch-bf16"], None, source, "cuda") == ["torch-bf16"]  # none runs on cuda here


# ---- the device setting --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:7"])
def test_device_accepts_cpu_cuda_and_cuda_n(device):
    assert CompareConfig(device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:-1"])
def test_device_refuses_anything_else_saying_what_to_pass(device):
    with pytest.raises(UserError, match=r"pass one of cpu, cuda or cuda:N"):
        CompareConfig(device=device)
