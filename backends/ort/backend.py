"""ONNX Runtime through onnxruntime-genai: one model for scoring and for greedy decoding with its KV cache.

On ``cuda:N`` the CUDA execution provider runs the variant on GPU N (the CUDA
variants' graphs, built with the builder's ``-e cuda``); ``get_output`` hands
the logits to the host, where the CPU kernels score them.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnxruntime_genai as og

from harness.machine.nvml import cuda_index

from ..base import Backend
from ..eos import eos_ids
from .config import CUDA_INSTALL, GENAI_CONFIG, RUNTIME, OrtSettings


class OrtBackend(Backend):
    """An onnxruntime-genai model directory (model builder output with ``genai_config.json``)."""

    runtime = RUNTIME
    settings_class = OrtSettings
    _min_length = 0  # the KV cache length a generator needs at least (a sliding window; set by load)
    settings: OrtSettings

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        if cuda_index(device) is None or og.is_cuda_available():
            return None
        return (f"onnxruntime-genai {_version('onnxruntime-genai') or og.__version__} has no CUDA provider "
                f"(the CPU build); install the CUDA build in its place: {CUDA_INSTALL}")

    @property
    def provider(self) -> str:
        """The execution provider: the setting, else cuda on a cuda device, else cpu."""
        return self.settings.provider or ("cuda" if self.device.startswith("cuda") else "cpu")

    def load(self) -> None:
        genai = json.loads(Path(self.variant.path, GENAI_CONFIG).read_text())
        config = og.Config(self.variant.path)
        session = {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        config.clear_providers()  # no provider left is the CPU
        if self.provider.lower() not in ("cpu", "cpuexecutionprovider"):
            config.append_provider(self.provider)
            if self.provider == "cuda" and cuda_index(self.device) is not None:
                config.set_provider_option("cuda", "device_id", str(cuda_index(self.device)))
        self._native = og.Model(config)
        # A sliding-window model's attention (Gemma 3) needs a KV cache at least as long as the window.
        self._min_length = int((genai["model"]["decoder"].get("sliding_window") or {}).get("window_size") or 0)
        self.eos_token_ids = eos_ids(self.variant.tokenizer_path, genai["model"].get("eos_token_id"))

    def close(self) -> None:
        self._native = self._many = None

    _many = None  # start_batch's generator, filled to self._depth
    _depth = 0

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": RUNTIME,
            "version": _version("onnxruntime-genai"),
            "onnxruntime_version": _version("onnxruntime"),
            "device": self.device,
            "threads": self.threads,
            "dtype": self.variant.precision,
            "provider": self.provider,
        }

    def _generator(self, max_length: int, sequences: int = 0):
        """A greedy generator with a cache of ``max_length`` tokens; with ``sequences``, that many decoded
        together, none stopped by EOS before ``max_length`` (a point's fixed number of tokens)."""
        model = self._require_loaded()
        params = og.GeneratorParams(model)
        length = max(max_length, self._min_length)
        # The cache's capacity; the callers stop on their own counts, so a longer one changes no result.
        options = dict(do_sample=False, max_length=length)
        if sequences:
            options.update(batch_size=sequences, min_length=length)
        params.set_search_options(**options)
        return og.Generator(model, params)

    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        # Appending the sequence chunk by chunk gives, after each append, the logits
        # of that chunk's positions only (bit-identical to one append of the whole
        # sequence, measured with 0.18.0), so memory stays at one block.
        n = len(token_ids) - 1  # the last token is only a target
        generator = self._generator(n)
        ids = token_ids.astype(np.int32)
        lo = 0
        while lo < n:
            hi = min(n, lo + block_rows) if lo >= start else min(start, lo + block_rows)
            generator.append_tokens(ids[lo:hi])
            if lo >= start:
                logits = generator.get_output("logits")  # (1, hi - lo, V)
                yield np.ascontiguousarray(logits[0], dtype=np.float32)
            lo = hi

    def _shared_blocks(self, groups, block_rows: int):
        """A group's context appended once; each continuation appended on top of it, and the generator
        rewound to the context's end for the next. Not a batch: onnxruntime-genai takes a batch's tokens
        in one append, so its rows could not share a context, and it pads them with the pad token, which
        can be a real token of a request (SmolLM2's pad is its end-of-turn token)."""
        for context, continuations in groups:
            generator = self._generator(len(context) + max(len(c) for c in continuations) - 1)
            for lo in range(0, len(context), block_rows):  # only the context's last logits are wanted
                generator.append_tokens(context[lo : lo + block_rows].astype(np.int32))
            last = np.array(generator.get_output("logits")[0, -1:], dtype=np.float32)  # (1, V)
            yield (self._paired(np.concatenate([context, c]), len(context) - 1,
                                self._continued(generator, last, c, len(context), block_rows))
                   for c in continuations)

    def _continued(self, generator, last: np.ndarray, continuation: np.ndarray, depth: int, block_rows: int):
        """The context's last logits, then those of ``continuation`` but its last token appended on top of
        the context; the generator is left back at the context's ``depth``."""
        yield last  # the same array for every continuation: scoring only reads it
        for lo in range(0, len(continuation) - 1, block_rows):
            generator.append_tokens(continuation[lo : min(lo + block_rows, len(continuation) - 1)].astype(np.int32))
            yield np.ascontiguousarray(generator.get_output("logits")[0], dtype=np.float32)
        if len(continuation) > 1:
            generator.rewind_to(depth)

    def _generate(self, prompt_ids: np.ndarray, max_new_tokens: int, stamp: list[float]) -> list[int]:
        generator = self._generator(len(prompt_ids) + max_new_tokens)
        generator.append_tokens(prompt_ids.astype(np.int32))
        produced: list[int] = []
        while len(produced) < max_new_tokens and not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            stamp.append(time.perf_counter())
            produced.append(token)
            if self._finished(produced):
                break
        return produced


    def _start_batch(self, depth_ids: np.ndarray, room: int) -> None:
        sequences, depth = depth_ids.shape
        if sequences > 1 and depth:
            raise NotImplementedError(
                "onnxruntime-genai takes a batch's tokens in one append (AppendTokens once for batch_size > 1), "
                "so it cannot time prompts on top of a filled cache of several sequences")
        # No EOS ends a sequence early: a point decodes a fixed number of tokens (min_length).
        self._many = self._generator(depth + room, sequences)
        self._depth = depth
        if depth:
            self._many.append_tokens(depth_ids.astype(np.int32))

    def _generate_batch(self, prompt_ids: np.ndarray, steps: int, stamp: list[float],
                        logits: list | None = None) -> np.ndarray:
        generator = self._many
        generator.append_tokens(prompt_ids.astype(np.int32))
        produced = []
        for _ in range(steps):
            generator.generate_next_token()
            produced.append(np.array(generator.get_next_tokens(), dtype=np.int64))
            if logits is not None:  # what the token was chosen from: EOS's logit is the lowest (min_length)
                logits.append(np.array(generator.get_output("logits")[:, -1], dtype=np.float32))
            stamp.append(time.perf_counter())
        generator.rewind_to(self._depth)  # a batch of several may only start again from 0
        return np.stack(produced, axis=1)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
