"""The three runtime adapters on the real default model: equal weights give equal answers, and memory stays bounded.

Every runtime runs with one thread: the cores of a shared test machine are
busy, and two OpenMP threads contending for them slow PyTorch down 10x.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import naive
import numpy as np
import pytest
from packaging.version import Version

from harness.backends import SETTINGS_CLASSES, open_backend, runtime_unavailable_reason
from harness.backends.eos import eos_ids
from harness.backends.llamacpp.config import LlamaCppSettings
from harness.backends.ort.config import OrtSettings
from harness.backends.pytorch.config import TorchSettings

REPO = Path(__file__).resolve().parent.parent
THREADS = 1
WINDOW_TOKENS = 512
FP32 = ("torch-fp32", "ort-fp32", "llamacpp-f32")
GEN_TOKENS = 16
TIE_MARGIN = 1e-3  # a greedy divergence is accepted only where the two tokens' logits tie this closely


@pytest.fixture(scope="module")
def token_ids(prepared, real_text) -> np.ndarray:
    """The first ~10k tokens of real text (WikiText-2's test set), through the one tokenizer all variants share."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(prepared["torch-fp32"].tokenizer_path, "tokenizer.json")))
    return np.asarray(tokenizer.encode(real_text[:60_000], add_special_tokens=False).ids, dtype=np.int64)


@pytest.fixture(scope="module")
def windows(token_ids) -> list[np.ndarray]:
    return [token_ids[i * WINDOW_TOKENS : (i + 1) * WINDOW_TOKENS] for i in range(2)]


@pytest.fixture(scope="module")
def fp32_logprobs(prepared, windows) -> dict[str, np.ndarray]:
    """Log-probs of the 2 x 512 tokens from each fp32 variant, and the llama.cpp KV-cache type."""
    out = {}
    for name in FP32:
        with open_backend(prepared[name], threads=THREADS) as backend:
            out[name] = np.concatenate(backend.logprobs(windows))
            if backend.runtime == "llamacpp":
                out["kv_cache_type"] = backend.describe()["kv_cache_type"]
                out["flash_attn"] = backend.describe()["flash_attn"]
    return out


def test_registry_finds_all_three_runtimes():
    for runtime in ("torch", "ort", "llamacpp"):
        assert runtime_unavailable_reason(runtime) is None


def test_equal_weights_agree_on_mean_and_per_token_nll(fp32_logprobs):
    kv = fp32_logprobs["kv_cache_type"]
    assert kv == "f16", "this test's tolerances are stated for llama.cpp's default f16 KV cache"
    ref = fp32_logprobs["torch-fp32"]
    assert ref.shape == (2 * (WINDOW_TOKENS - 1),)
    for name in ("ort-fp32", "llamacpp-f32"):
        lp = fp32_logprobs[name]
        rel = abs(lp.mean() / ref.mean() - 1)
        worst = np.abs(lp - ref).max()
        print(f"{name} vs torch-fp32 (llama.cpp KV cache {kv}, flash attention "
              f"{fp32_logprobs['flash_attn']}): mean NLL {-lp.mean():.6f} vs {-ref.mean():.6f}, "
              f"relative {rel:.2e}, worst token {worst:.2e} nats")
        assert rel < 1e-4, name
        assert worst < 2e-2, name
    # ONNX Runtime and PyTorch run the same fp32 math without a half-precision cache: much closer.
    assert np.abs(fp32_logprobs["ort-fp32"] - ref).max() < 1e-3


def _margin_at(backend, prompt: np.ndarray, prefix: list[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| of ``backend`` after ``prompt + prefix``."""
    seq = np.concatenate([prompt, prefix, [a]]).astype(np.int64)
    *_, last = backend.logit_blocks(seq, start=len(seq) - 2)
    return float(abs(last.logits[-1, a] - last.logits[-1, b]))


def _check_generation(backend, gen) -> None:
    assert 1 <= len(gen.token_ids) == len(gen.token_times_s) <= GEN_TOKENS
    assert gen.start_s < gen.token_times_s[0] and np.all(gen.inter_token_s >= 0)
    assert len(gen.token_ids) == GEN_TOKENS or gen.token_ids[-1] in backend.eos_token_ids


def test_fp32_variants_greedy_generate_the_same_tokens(prepared, token_ids):
    # Five prompts of different lengths from different places in the text.
    prompts = [token_ids[s : s + n] for s, n in ((1000, 8), (2000, 24), (3000, 40), (4000, 64), (5000, 100))]
    outputs = {}
    ties = []
    with open_backend(prepared["torch-fp32"], threads=THREADS) as reference:
        outputs["torch-fp32"] = [reference.generate(p, GEN_TOKENS) for p in prompts]
        for gen in outputs["torch-fp32"]:
            _check_generation(reference, gen)
        for name in FP32[1:]:
            with open_backend(prepared[name], threads=THREADS) as backend:
                outputs[name] = [backend.generate(p, GEN_TOKENS) for p in prompts]
                for gen in outputs[name]:
                    _check_generation(backend, gen)
            for i, prompt in enumerate(prompts):
                ref, got = outputs["torch-fp32"][i].token_ids, outputs[name][i].token_ids
                pos = next((k for k, (x, y) in enumerate(zip(ref, got)) if x != y), None)
                if pos is None:
                    assert got == ref, (name, i, ref, got)  # equal, not one a prefix of the other
                    continue
                margin = _margin_at(reference, prompt, ref[:pos], ref[pos], got[pos])
                print(f"prompt {i}: {name} leaves torch-fp32 at position {pos} "
                      f"({ref[pos]} vs {got[pos]}), torch logit margin {margin:.2e}")
                ties.append((name, i, pos, margin))
    print(f"greedy divergences among the fp32 variants (name, prompt, position, margin): {ties or 'none'}")
    assert all(margin < TIE_MARGIN for *_, margin in ties), ties


@pytest.mark.parametrize("name", FP32)
def test_generate_ends_where_its_stop_says_and_is_a_prefix_of_the_whole_continuation(prepared, token_ids, name):
    """lm-eval's stop sequences reach a runtime as ``generate``'s stop: decoding ends at the token it names."""
    prompt = token_ids[2000:2024]
    asked = []

    def stop(produced: list[int]) -> bool:
        asked.append(list(produced))
        return len(produced) == 3

    with open_backend(prepared[name], threads=THREADS) as backend:
        whole = backend.generate(prompt, GEN_TOKENS).token_ids
        cut = backend.generate(prompt, GEN_TOKENS, stop)
        again = backend.generate(prompt, GEN_TOKENS).token_ids  # the stop is generate's own: gone again
    assert len(whole) > 3, "the prompt must not end in EOS within 3 tokens"
    assert cut.token_ids == whole[:3] and len(cut.token_times_s) == 3
    assert asked == [whole[:1], whole[:2], whole[:3]]
    assert again == whole


def _whole_and_blocks(backend, seq):
    whole = np.concatenate([b.logits for b in backend.logit_blocks(seq, start=0, block_rows=256)])
    blocks = list(backend.logit_blocks(seq, start=30, block_rows=7))
    assert whole.shape == (79, 49152) and whole.dtype == np.float32
    assert [b.start for b in blocks] == list(range(30, 79, 7)) and all(len(b.targets) <= 7 for b in blocks)
    assert all(b.logits.flags.c_contiguous and b.logits.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b.targets for b in blocks]), seq[31:])
    return whole, np.concatenate([b.logits for b in blocks])


@pytest.mark.parametrize("name", FP32)
def test_start_and_block_size_do_not_change_the_logits(prepared, windows, name):
    seq = windows[1][:80]
    with open_backend(prepared[name], threads=THREADS) as backend:
        whole, blocked = _whole_and_blocks(backend, seq)
    if name.startswith("llamacpp"):
        # llama.cpp's flash attention (on by default, as in llama-bench and llama-perplexity) rounds
        # through f16 differently when a sequence arrives in several decode calls: up to ~0.03 in a
        # logit and ~0.01 nats in a target's log-probability. The exact check is the next test.
        np.testing.assert_allclose(blocked, whole[30:], atol=5e-2, rtol=0)
        np.testing.assert_allclose(naive.token_nll(blocked, seq[31:]), naive.token_nll(whole[30:], seq[31:]),
                                   atol=2e-2, rtol=0)
    else:
        # Chunked evaluation reorders float sums a little; no more.
        np.testing.assert_allclose(blocked, whole[30:], atol=2e-3, rtol=0)


def test_llamacpp_blocks_are_bit_identical_without_flash_attention(prepared, windows):
    """With flash attention off llama.cpp's logits do not depend on the split: any misalignment would show."""
    seq = windows[1][:80]
    with open_backend(prepared["llamacpp-f32"], THREADS, settings=LlamaCppSettings(flash_attn=False)) as backend:
        assert backend.describe()["flash_attn"] is False  # the setting reached the runtime's record
        whole, blocked = _whole_and_blocks(backend, seq)
    np.testing.assert_array_equal(blocked, whole[30:])


def test_every_variant_answers_logprobs_and_generate(prepared, windows):
    seq = windows[0][:64]
    for name, variant in prepared.items():
        backend = open_backend(variant, threads=THREADS)
        with pytest.raises(RuntimeError, match="call load"):
            backend.native
        with backend:
            assert backend.native is not None, name
            (lp,) = backend.logprobs([seq])
            assert lp.shape == (63,) and np.all(np.isfinite(lp)) and np.all(lp <= 0), name
            assert 1.0 < -lp.mean() < 8.0, (name, -lp.mean())  # a working model, not noise (ln 49152 = 10.8)
            gen = backend.generate(seq[:16], 4)
            assert 1 <= len(gen.token_ids) <= 4 and len(gen.token_times_s) == len(gen.token_ids), name
            described = backend.describe()
            assert described["runtime"] == variant.runtime and described["threads"] == THREADS, described
            assert {"version", "device", "dtype"} <= set(described), described
            assert backend.eos_token_ids, name


def test_mean_nll_rises_as_llamacpp_quantization_coarsens(prepared, windows, fp32_logprobs):
    nll = {"llamacpp-f32": -fp32_logprobs["llamacpp-f32"].mean()}
    for name in ("llamacpp-q8_0", "llamacpp-q4_k_m", "llamacpp-q2_k"):
        with open_backend(prepared[name], threads=THREADS) as backend:
            nll[name] = -np.concatenate(backend.logprobs(windows)).mean()
    print("mean NLL over 2 x 512 tokens of real text:", {k: round(float(v), 5) for k, v in nll.items()})
    values = list(nll.values())
    assert values == sorted(values) and len(set(values)) == len(values), nll


def _variant_dir(variant) -> str:
    path = Path(variant.path)
    return str(path if path.is_dir() else path.parent)  # a GGUF variant's path is its file


# Runs in a fresh process: load, warm up (llama.cpp maps its weights lazily), note
# the resident set, reset the peak (VmHWM; ru_maxrss would carry the forking
# pytest's peak across exec), score 4,096 tokens block by block with the full
# logits, and read the peak.
_MEMORY_CHILD = """
import json, sys
import numpy as np
from harness.backends import open_backend
from harness.kernels import token_nll
from harness.manifest import Variant

def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

variant, ids = Variant.load(sys.argv[1]), np.load(sys.argv[2])
with open_backend(variant, threads=1) as backend:
    backend.logprobs([ids[:64]])
    loaded_mb = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    rows = 0
    for block in backend.logit_blocks(ids):
        token_nll(block.logits, block.targets)
        rows += len(block.targets)
    print(json.dumps({"loaded_rss_mb": loaded_mb, "scored_peak_mb": status_mb("VmHWM"), "rows": rows}))
"""


@pytest.mark.parametrize("name", FP32)
def test_scoring_4096_tokens_with_full_logits_keeps_peak_rss_under_1gb_over_the_model(prepared, token_ids, name, tmp_path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak RSS")
    ids_path = tmp_path / "ids.npy"
    np.save(ids_path, token_ids[:4096])
    child = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, _variant_dir(prepared[name]), str(ids_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    rise_mb = seen["scored_peak_mb"] - seen["loaded_rss_mb"]
    print(f"{name}: RSS {seen['loaded_rss_mb']:.0f} MB loaded -> {seen['scored_peak_mb']:.0f} MB after scoring "
          f"{seen['rows']} positions: +{rise_mb:.0f} MB (all logits as float32 would be 805 MB)")
    assert seen["rows"] == 4095
    assert rise_mb < 1024


# ---- settings, describe() and the native handle --------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: LlamaCppSettings(type_k="f8"),
    lambda: LlamaCppSettings(n_ubatch=1024),  # above n_batch
    lambda: OrtSettings(provider=""),
    lambda: TorchSettings(attn_implementation="flash"),
])
def test_settings_refuse_a_bad_value_saying_what_to_pass(make):
    with pytest.raises(ValueError, match=r"=.*: pass "):
        make()


def test_open_backend_passes_its_runtimes_settings_and_refuses_anothers(prepared):
    llama = prepared["llamacpp-f32"]
    settings = LlamaCppSettings(n_ctx=1024, n_batch=256, n_ubatch=128, type_k="q8_0", type_v="f16", use_mmap=False)
    described = open_backend(llama, threads=THREADS, settings=settings).describe()  # describe() needs no load
    assert {k: described[k] for k in ("n_ctx", "n_batch", "n_ubatch", "type_k", "type_v", "use_mmap", "flash_attn")} \
        == {"n_ctx": 1024, "n_batch": 256, "n_ubatch": 128, "type_k": "q8_0", "type_v": "f16", "use_mmap": False,
            "flash_attn": True}
    assert described["kv_cache_type"] == "k=q8_0,v=f16"
    with pytest.raises(TypeError, match="LlamaCppSettings"):
        open_backend(llama, settings=OrtSettings())
    for name in FP32:
        backend = open_backend(prepared[name], threads=THREADS)
        assert backend.settings == SETTINGS_CLASSES[backend.runtime](), name  # None means the runtime's defaults
    assert open_backend(prepared["ort-fp32"], settings=OrtSettings(provider="cpu")).describe()["provider"] == "cpu"


def test_native_is_the_runtimes_own_loaded_object(prepared):
    import llama_cpp
    import onnxruntime_genai as og
    import transformers

    expected = {"llamacpp-f32": llama_cpp.Llama, "ort-fp32": og.Model, "torch-fp32": transformers.PreTrainedModel}
    for name, cls in expected.items():
        with open_backend(prepared[name], threads=THREADS) as backend:
            assert isinstance(backend.native, cls), (name, type(backend.native))
        with pytest.raises(RuntimeError, match="call load"):
            backend.native  # closed


def test_torch_describe_reads_the_thread_count_without_setting_it(prepared):
    import torch

    before = torch.get_num_threads()
    with open_backend(prepared["torch-fp32"], threads=THREADS) as backend:
        try:
            torch.set_num_threads(THREADS + 1)  # as numba's OpenMP layer does when the kernels first run
            assert backend.describe()["threads"] == THREADS
            assert torch.get_num_threads() == THREADS + 1
        finally:
            torch.set_num_threads(before)


def test_eos_ids_joins_the_tokenizers_ids_and_each_runtimes_declared_forms(prepared, tmp_path):
    shared = eos_ids(prepared["torch-fp32"].tokenizer_path)
    assert shared  # SmolLM2's tokenizer names its EOS token
    # None, one id, a list, GGUF metadata's numeric string, llama.cpp's -1 for "no such token":
    assert eos_ids(tmp_path, None, 7, [8, 9], "10", -1) == {7, 8, 9, 10}
    assert eos_ids(prepared["torch-fp32"].tokenizer_path, 7) == shared | {7}


# ---- the KV cache of the torch backend, and the transformers release it needs ---------------------

def _greedy_by_recomputation(backend, prompt: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens from full forward passes without any cache, and each step's top-two logit margin."""
    tokens: list[int] = []
    margins: list[float] = []
    for _ in range(n):
        seq = np.concatenate([prompt, tokens, [0]]).astype(np.int64)  # the 0 is only a target
        *_, last = backend.logit_blocks(seq, start=len(seq) - 2)
        logits = last.logits[-1]
        top2 = np.partition(logits, -2)[-2:]
        tokens.append(int(np.argmax(logits)))
        margins.append(float(top2[1] - top2[0]))
        if tokens[-1] in backend.eos_token_ids:
            break
    return tokens, margins


def test_torch_greedy_generate_with_its_kv_cache_equals_recomputing_without_one(prepared, token_ids):
    """A KV cache that transformers silently ignored (cache= lost in **kwargs) would decode from one token."""
    prompts = [token_ids[s : s + n] for s, n in ((1500, 12), (3500, 48))]
    with open_backend(prepared["torch-fp32"], threads=THREADS) as backend:
        for prompt in prompts:
            got = backend.generate(prompt, GEN_TOKENS).token_ids
            want, margins = _greedy_by_recomputation(backend, prompt, len(got))
            pos = next((k for k, (x, y) in enumerate(zip(want, got)) if x != y), None)
            # Only an exact tie may flip a token between the two ways of computing the same math.
            assert pos is None or margins[pos] < TIE_MARGIN, (pos, want, got)
            if pos is None:
                assert got == want and (len(got) == GEN_TOKENS or got[-1] in backend.eos_token_ids)


def test_installed_transformers_meets_the_floor_the_kv_cache_call_needs():
    from harness.backends.pytorch.backend import _check_takes_cache

    floor = re.search(r'"transformers>=([0-9.]+)', (REPO / "pyproject.toml").read_text()).group(1)
    assert Version(version("transformers")) >= Version(floor)
    # 5.24 is the first release whose models take forward(cache=...); the torch backend passes cache=.
    assert Version(floor) >= Version("5.24"), floor

    class OldForward:  # a transformers 5.23 model: cache= would fall into **kwargs
        def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs): ...

    with pytest.raises(RuntimeError, match="without its KV cache"):
        _check_takes_cache(OldForward())
