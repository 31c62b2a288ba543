"""Settings of the llama.cpp (llama-cpp-python) backend; no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIME = "llamacpp"

# llama-cpp-python compiles llama.cpp when it installs: with CUDA only when asked (nvcc must be on PATH).
CUDA_INSTALL = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'

# KV-cache element types llama.cpp accepts (names of ggml types, as llama-bench's -ctk/-ctv).
KV_CACHE_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def _sizes(help: str) -> dict:
    """Field metadata of a token count (``help``, and how harness.cli reads the flag)."""
    return {"help": help, "parse": "positive_int", "metavar": "N"}


@dataclass(frozen=True)
class LlamaCppSettings:
    """How llama.cpp runs a GGUF; n_batch/n_ubatch/flash_attn are the knobs llama-bench also sweeps."""

    n_ctx: int = field(default=4096, metadata=_sizes("context size: the longest sequence scored or generated"))
    n_batch: int = field(default=512, metadata=_sizes("logical batch: tokens per llama_decode call"))
    n_ubatch: int = field(default=512, metadata=_sizes("physical batch: tokens per graph evaluation"))
    score_batch: int = field(default=2048, metadata=_sizes(
        "cache cells per llama_decode when scoring: windows decoded together while their lengths, padded to 256, "
        "fit (llama-perplexity's -b: four windows of 512); task documents, each context once, while their tokens fit"))
    # On: llama-bench's default (auto) turns it on for the CPU, and leaving it off
    # (llama-cpp-python's default) cost 10-30% of prefill speed where we measured it.
    flash_attn: bool = field(default=True, metadata={"help": "use llama.cpp's flash-attention kernels"})
    type_k: str = field(default="f16", metadata={"help": "KV-cache type of K (llama-bench's -ctk)", "choices": KV_CACHE_TYPES})
    type_v: str = field(default="f16", metadata={"help": "KV-cache type of V (llama-bench's -ctv)", "choices": KV_CACHE_TYPES})
    use_mmap: bool = field(default=True, metadata={"help": "map the GGUF instead of reading it into memory"})

    def __post_init__(self) -> None:
        """Validates only."""
        for name in ("type_k", "type_v"):
            if getattr(self, name) not in KV_CACHE_TYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}: pass one of {', '.join(KV_CACHE_TYPES)}")
        if not 0 < self.n_ubatch <= self.n_batch <= self.n_ctx:
            raise ValueError(
                f"n_ubatch={self.n_ubatch}, n_batch={self.n_batch}, n_ctx={self.n_ctx}: "
                "pass sizes with 0 < n_ubatch <= n_batch <= n_ctx"
            )
        if self.score_batch < 1:
            raise ValueError(f"score_batch={self.score_batch}: pass 1 or more")
