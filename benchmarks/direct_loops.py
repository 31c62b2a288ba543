"""Minimal direct loops on each runtime, the yardstick for the harness's own overhead.

Each loop does what a hand-written deployment script would: a prompt through
the model (only the last position's logits), and greedy decoding one token at
a time from a one-token prompt, reading the clock only around the work.

Each takes the model object the harness backend already loaded (``shared``),
so the two loops drive one model in one process and differ only in the code
around them, which is what the harness's overhead is. (A second ORT load of
the same file, which the direct loop once made, ran decode 6-9% faster than
the harness in three runs, while the same two loops on one loaded model
differed by 2-3% either way.) Without ``shared`` each loads the variant itself.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from harness.manifest import Variant


class DirectLlama:
    """A bare llama-cpp-python loop: ``llama_decode`` on a reused batch, argmax of the last logits."""

    def __init__(self, variant: Variant, threads: int, shared=None, flash_attn: bool = True):
        import llama_cpp

        self.lib = llama_cpp
        self.owned = shared is None
        self.llm = shared or llama_cpp.Llama(
            variant.path,
            n_ctx=2048,
            n_batch=2048,
            n_ubatch=512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash_attn,
            verbose=False,
        )
        self.ctx = self.llm.ctx
        self.n_vocab = self.llm.n_vocab()
        self.one = (llama_cpp.llama_token * 1)()
        self.one_batch = llama_cpp.llama_batch_get_one(self.one, 1)

    def _clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), False)

    def _argmax(self) -> int:
        logits = self.lib.llama_get_logits_ith(self.ctx, -1)  # waits for the graph to finish
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.n_vocab,))))

    def _decode(self, batch) -> None:
        rc = self.lib.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def prefill_s(self, ids: Sequence[int]) -> float:
        self._clear()
        tokens = (self.lib.llama_token * len(ids))(*ids)
        t0 = time.perf_counter()
        self._decode(self.lib.llama_batch_get_one(tokens, len(ids)))
        self._argmax()
        return time.perf_counter() - t0

    def decode(self, first: int, n: int) -> tuple[int, float]:
        self._clear()
        token = first
        t0 = time.perf_counter()
        for _ in range(n):
            self.one[0] = token
            self._decode(self.one_batch)
            token = self._argmax()
        return n, time.perf_counter() - t0

    def close(self) -> None:
        if self.owned:
            self.llm.close()


class DirectOrt:
    """A bare onnxruntime-genai generator loop, greedy, with ``threads`` intra-op threads."""

    def __init__(self, variant: Variant, threads: int, shared=None):
        import onnxruntime_genai as og

        self.og = og
        if shared is not None:
            self.model = shared
            return
        config = og.Config(variant.path)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)

    def _generator(self, max_length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=max_length)
        return self.og.Generator(self.model, params)

    def prefill_s(self, ids: Sequence[int]) -> float:
        generator = self._generator(len(ids) + 1)
        t0 = time.perf_counter()
        generator.append_tokens(np.asarray(ids, dtype=np.int32))
        generator.generate_next_token()  # picks the first token from the prompt's logits
        generator.get_next_tokens()
        return time.perf_counter() - t0

    def decode(self, first: int, n: int) -> tuple[int, float]:
        generator = self._generator(n + 1)
        produced = 0
        t0 = time.perf_counter()
        generator.append_tokens(np.asarray([first], dtype=np.int32))
        while produced < n and not generator.is_done():
            generator.generate_next_token()
            generator.get_next_tokens()
            produced += 1
        return produced, time.perf_counter() - t0

    def close(self) -> None:
        del self.model


class DirectTorch:
    """A bare transformers loop: forward with a KV cache, last-position logits only, argmax."""

    def __init__(self, variant: Variant, threads: int, shared=None):
        import torch
        from transformers import AutoModelForCausalLM, DynamicCache

        self.torch = torch
        self.DynamicCache = DynamicCache
        torch.set_num_threads(threads)
        dtype = torch.bfloat16 if variant.precision == "bf16" else torch.float32
        self.model = shared or AutoModelForCausalLM.from_pretrained(variant.path, dtype=dtype).eval()

    def prefill_s(self, ids: Sequence[int]) -> float:
        torch = self.torch
        input_ids = torch.tensor([list(ids)])
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(input_ids, cache=self.DynamicCache(config=self.model.config), use_cache=True, logits_to_keep=1)
            int(out.logits[0, -1].argmax())
            return time.perf_counter() - t0

    def decode(self, first: int, n: int) -> tuple[int, float]:
        torch = self.torch
        token = torch.tensor([[first]])
        cache = self.DynamicCache(config=self.model.config)
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(n):
                out = self.model(token, cache=cache, use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            int(token)
            return n, time.perf_counter() - t0

    def close(self) -> None:
        del self.model


DIRECT = {"llamacpp": DirectLlama, "ort": DirectOrt, "torch": DirectTorch}
