"""PyTorch through transformers: scoring from one forward pass, greedy decoding with our own KV-cache loop."""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache

from harness.backends.base import Backend
from harness.backends.eos import tokenizer_eos_ids
from harness.backends.pytorch.config import RUNTIME, TORCH_DTYPES, TorchSettings
from harness.manifest import Variant


class TorchBackend(Backend):
    """A transformers causal LM in eval mode under ``torch.inference_mode``."""

    runtime = RUNTIME

    def __init__(self, variant: Variant, threads: int | None = None, device: str = "cpu",
                 settings: TorchSettings = TorchSettings()):
        super().__init__(variant, threads, device)
        if variant.precision not in TORCH_DTYPES:
            raise ValueError(f"{variant.name}: precision {variant.precision!r} is not one of {', '.join(TORCH_DTYPES)}")
        self.settings = settings
        self.dtype = getattr(torch, TORCH_DTYPES[variant.precision])
        self._model = None

    def _apply_threads(self) -> None:
        # torch's thread count is the process's OpenMP setting, and other OpenMP users
        # reset it (numba's omp threading layer sets it to all cores when the kernels
        # first run), so it is re-applied before every run, not only at load.
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def load(self) -> None:
        self._apply_threads()
        model = AutoModelForCausalLM.from_pretrained(
            self.variant.path, dtype=self.dtype, attn_implementation=self.settings.attn_implementation
        )
        self._model = model.to(self.device).eval()
        config_eos = self._model.generation_config.eos_token_id
        config_eos = config_eos if isinstance(config_eos, list) else [] if config_eos is None else [config_eos]
        self.eos_token_ids = tokenizer_eos_ids(self.variant.tokenizer_path) | frozenset(int(t) for t in config_eos)

    def close(self) -> None:
        self._model = None

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        self._apply_threads()
        return {
            "runtime": RUNTIME,
            "version": torch.__version__,
            "transformers_version": transformers.__version__,
            "device": self.device,
            "threads": torch.get_num_threads(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attn_implementation": self._model.config._attn_implementation if self._model else None,
        }

    @property
    def model(self):
        if self._model is None:
            raise RuntimeError(f"{self.variant.name}: call load() (or use the backend as a context manager) first")
        return self._model

    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        # The hidden states of every position are small (T x 576); the logits are not
        # (T x 49,152), so the head runs per block and only one float32 block lives at a time.
        model = self.model
        self._apply_threads()
        with torch.inference_mode():
            input_ids = torch.from_numpy(token_ids[:-1]).unsqueeze(0).to(self.device)
            hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[0]  # (T-1, H)
        head = model.get_output_embeddings()
        for lo in range(start, hidden.shape[0], block_rows):
            self._apply_threads()  # the caller's kernels ran between blocks
            with torch.inference_mode():
                logits = head(hidden[lo : lo + block_rows]).float()  # (n, V)
                block = logits.cpu().numpy()
            yield np.ascontiguousarray(block)

    def _generate(self, prompt_ids: np.ndarray, max_new_tokens: int, stamp: list[float]) -> list[int]:
        model = self.model
        self._apply_threads()
        cache = DynamicCache(config=model.config)
        produced: list[int] = []
        with torch.inference_mode():
            step_ids = torch.from_numpy(prompt_ids).unsqueeze(0).to(self.device)
            while len(produced) < max_new_tokens:
                out = model(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1)
                token = int(out.logits[0, -1].argmax())  # int() waits for the device
                self.synchronize()
                stamp.append(time.perf_counter())
                produced.append(token)
                if token in self.eos_token_ids:
                    break
                step_ids = torch.tensor([[token]], device=self.device)
        return produced
