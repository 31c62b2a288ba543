"""PyTorch through transformers: scoring from one forward pass, greedy decoding with our own KV-cache loop.

On a CUDA device the logit blocks stay on the GPU, as float32 tensors, when
the CUDA scoring kernels can run (``harness.kernels.device_scoring_available``);
else they are copied to the host for the CPU kernels.
"""

from __future__ import annotations

import inspect
import itertools
import time
from typing import Any, Iterator

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache

from harness.kernels import device_scoring_available
from harness.machine.nvml import cuda_index

from ..base import Backend, checked_sequence, packs
from ..eos import eos_ids
from .config import CUDA_INSTALL, RUNTIME, TORCH_DTYPES, TorchSettings


PACK_TOKENS = 2048  # tokens of one packed scoring forward pass, padding included (llama-perplexity's -b)


class TorchBackend(Backend):
    """A transformers causal LM in eval mode under ``torch.inference_mode``."""

    runtime = RUNTIME
    settings_class = TorchSettings
    settings: TorchSettings

    def __init__(self, *args: Any, **kwargs: Any):  # Backend's arguments
        super().__init__(*args, **kwargs)
        precision = self.variant.precision
        if precision not in TORCH_DTYPES:
            raise ValueError(f"{self.variant.name}: precision {precision!r} is not one of {', '.join(TORCH_DTYPES)}")
        self.dtype = getattr(torch, TORCH_DTYPES[precision])
        self.scores_on_device = False  # set at load: logit blocks handed over as CUDA tensors
        self._many: DynamicCache | None = None  # start_batch's cache, filled to self._depth
        self._depth = 0

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        index = cuda_index(device)
        if index is None:
            return None
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a CPU-only build; install a CUDA build: {CUDA_INSTALL}"
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU; check the NVIDIA driver"
        if index >= torch.cuda.device_count():
            return f"torch sees {torch.cuda.device_count()} GPU(s); pass cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        return None

    def _apply_threads(self) -> None:
        # torch's thread count is the process's OpenMP setting, and other OpenMP users
        # reset it (numba's omp threading layer sets it to all cores when the kernels
        # first run), so it is re-applied before every run, not only at load.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def load(self) -> None:
        self._apply_threads()
        model = AutoModelForCausalLM.from_pretrained(
            self.variant.path, dtype=self.dtype, attn_implementation=self.settings.attn_implementation
        )
        _check_takes_cache(model)
        self._native = model.to(self.device).eval()
        self.scores_on_device = cuda_index(self.device) is not None and device_scoring_available()
        self.eos_token_ids = eos_ids(self.variant.tokenizer_path, self._native.generation_config.eos_token_id)

    def close(self) -> None:
        self._native = self._many = None

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        model = self._native
        return {
            "runtime": RUNTIME,
            "version": torch.__version__,
            "transformers_version": transformers.__version__,
            "device": self.device,
            # Applied before every forward pass, block and generation (see _apply_threads).
            "threads": self.threads,
            "dtype": str(self.dtype).removeprefix("torch."),
            # The kernel transformers chose (it may fall back from the setting); it has no public accessor.
            "attn_implementation": model.config._attn_implementation if model else self.settings.attn_implementation,
            # "highest" keeps float32 matmuls in float32 on a GPU (no TF32), as the CPU computes them.
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "scoring": "cuda kernels" if self.scores_on_device else "cpu kernels",
        }

    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        # The hidden states of every position are small (T x 576); the logits are not
        # (T x 49,152), so the head runs per block and only one float32 block lives at a time.
        model = self._require_loaded()
        self._apply_threads()
        with torch.inference_mode():
            input_ids = torch.from_numpy(token_ids[:-1]).unsqueeze(0).to(self.device)
            hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[0]  # (T-1, H)
        yield from self._head_blocks(model.get_output_embeddings(), hidden, start, block_rows)

    def _joins(self, pack: list, window: tuple) -> bool:
        """Windows (or lm-eval requests) share a forward pass while their longest times their number fits
        ``PACK_TOKENS``: right-padded to the longest, which a causal model never attends to, so each
        sequence's logits are its own; the head still runs one block of rows at a time."""
        longest = max(len(ids) for ids, _ in [*pack, window])
        return (len(pack) + 1) * longest <= PACK_TOKENS

    def _packed_blocks(self, pack, block_rows: int):
        model = self._require_loaded()
        self._apply_threads()
        sequences = [checked_sequence(ids, start) for ids, start in pack]
        inputs = np.zeros((len(pack), max(len(ids) for ids in sequences) - 1), dtype=np.int64)
        for row, ids in zip(inputs, sequences):
            row[: len(ids) - 1] = ids[:-1]  # the rest is padding after the sequence: no real token sees it
        with torch.inference_mode():
            hidden = model.base_model(input_ids=torch.from_numpy(inputs).to(self.device), use_cache=False)
            hidden = hidden.last_hidden_state  # (sequences, longest, H)
        head = model.get_output_embeddings()
        for j, (ids, (_, start)) in enumerate(zip(sequences, pack)):
            yield self._paired(ids, start, self._head_blocks(head, hidden[j, : len(ids) - 1], start, block_rows))

    # ---- contexts shared by their continuations (lm-eval's choices) -------------------------------------
    def _shared_blocks(self, groups, block_rows: int):
        """Several groups per pack: one forward of their contexts (right-padded), whose cache every
        continuation of a group then attends to, in a second forward of all the continuations together."""
        for pack in packs(groups, _shares_pack):
            yield from self._shared_pack(pack, block_rows)

    def _shared_pack(self, pack, block_rows: int):
        model = self._require_loaded()
        self._apply_threads()
        lengths = torch.tensor([len(context) for context, _ in pack])
        width = int(lengths.max())
        contexts = np.zeros((len(pack), width), dtype=np.int64)
        for row, (context, _) in zip(contexts, pack):
            row[: len(context)] = context  # padding after a context: none of its tokens sees it
        # Each continuation but its last token (only a target) runs on its group's cached context.
        owners = [g for g, (_, continuations) in enumerate(pack) for c in continuations if len(c) > 1]
        tails = [c[:-1] for _, continuations in pack for c in continuations if len(c) > 1]
        cache = DynamicCache(config=model.config)
        to_device = lambda a: torch.as_tensor(a).to(self.device)  # noqa: E731
        with torch.inference_mode():
            last = model.base_model(input_ids=to_device(contexts), cache=cache, use_cache=bool(tails)).last_hidden_state
            last = last[torch.arange(len(pack)), lengths - 1]  # (groups, H): each context's last position
            if tails:
                owner = torch.tensor(owners)
                cache.batch_select_indices(to_device(owner))
                longest = max(len(t) for t in tails)
                inputs = np.zeros((len(tails), longest), dtype=np.int64)
                for row, tail in zip(inputs, tails):
                    row[: len(tail)] = tail
                # The cache's padding cells are masked; a tail's positions go on from its own context's end.
                mask = torch.ones(len(tails), width + longest, dtype=torch.long)
                mask[:, :width] = (torch.arange(width) < lengths[owner, None]).long()
                rest = model.base_model(input_ids=to_device(inputs), attention_mask=to_device(mask),
                                        position_ids=to_device(lengths[owner, None] + torch.arange(longest)),
                                        cache=cache, use_cache=True).last_hidden_state  # (tails, longest, H)
            # The rows the head runs on, in the order they are handed out: per group its context's last, then
            # each continuation's own. The head runs on them block_rows at a time across groups: one row at a
            # time, it would read its whole weight (V x H) for each context.
            rows, own = [], iter(rest if tails else ())  # own: each continuation's hidden states, in order
            for g, (_, continuations) in enumerate(pack):
                rows.append(last[g : g + 1])
                rows += [next(own)[: len(c) - 1] for c in continuations if len(c) > 1]
            hidden = torch.cat(rows)
        logits = _Rows(self._head_blocks(model.get_output_embeddings(), hidden, 0, block_rows))
        for context, continuations in pack:
            shared = next(logits.take(1))  # the context's last logits, for every continuation
            yield (self._paired(np.concatenate([context, c]), len(context) - 1,
                                itertools.chain([shared], logits.take(len(c) - 1))) for c in continuations)

    def _head_blocks(self, head, hidden, start: int, block_rows: int):
        """The logits of ``hidden``'s rows from ``start`` on, ``block_rows`` at a time (host or device blocks)."""
        for lo in range(start, hidden.shape[0], block_rows):
            self._apply_threads()  # the caller's kernels ran between blocks
            with torch.inference_mode():
                logits = head(hidden[lo : lo + block_rows]).float().contiguous()  # (n, V)
                yield logits if self.scores_on_device else np.ascontiguousarray(logits.cpu().numpy())

    def _generate(self, prompt_ids: np.ndarray, max_new_tokens: int, stamp: list[float]) -> list[int]:
        model = self._require_loaded()
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
                if self._finished(produced):
                    break
                step_ids = torch.tensor([[token]], device=self.device)
        return produced


    def _start_batch(self, depth_ids: np.ndarray, room: int) -> None:
        # The sequences of a point have equal lengths (llama-batched-bench's too), so one rectangular
        # forward runs them all: no padding, and the positions follow from the cache's length.
        model = self._require_loaded()
        self._apply_threads()
        self._many, self._depth = DynamicCache(config=model.config), depth_ids.shape[1]
        alike = bool((depth_ids == depth_ids[:1]).all())  # one fill, repeated for every sequence
        if self._depth:
            with torch.inference_mode():
                model(input_ids=torch.from_numpy(depth_ids[:1] if alike else depth_ids).to(self.device),
                      cache=self._many, use_cache=True, logits_to_keep=1)
                if alike and len(depth_ids) > 1:
                    self._many.batch_repeat_interleave(len(depth_ids))

    def _generate_batch(self, prompt_ids: np.ndarray, steps: int, stamp: list[float],
                        logits: list | None = None) -> np.ndarray:
        model = self._require_loaded()
        self._apply_threads()
        produced = []
        with torch.inference_mode():
            step_ids = torch.from_numpy(prompt_ids).to(self.device)
            for _ in range(steps):
                out = model(input_ids=step_ids, cache=self._many, use_cache=True, logits_to_keep=1)
                step_ids = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # (sequences, 1)
                if logits is not None:
                    logits.append(out.logits[:, -1].float().cpu().numpy())
                produced.append(step_ids.cpu())  # waits for the device
                self.synchronize()
                stamp.append(time.perf_counter())
        held = sum(t.nbytes for layer in self._many.layers for t in (layer.keys, layer.values) if t is not None)
        self._kv_bytes = max(self._kv_bytes or 0, held)
        self._rewind()
        return torch.cat(produced, dim=1).numpy()

    def _rewind(self) -> None:
        """The batch cache back at the depth: cut what the last call appended (a fresh cache at depth 0)."""
        if self._depth == 0:
            self._many = DynamicCache(config=self._native.config)
        else:
            self._many.crop(self._depth - self._many.get_seq_length())  # crop takes minus the tokens to drop


class _Rows:
    """Rows of logit blocks handed out in order, as many at a time as asked, a block computed when reached."""

    def __init__(self, blocks: Iterator):
        self._blocks, self._block, self._at = blocks, None, 0

    def take(self, n: int) -> Iterator:
        """The next ``n`` rows, as views of one block or pieces of two (each view keeps its block alive)."""
        while n > 0:
            if self._block is None or self._at == len(self._block):
                self._block, self._at = next(self._blocks), 0
            k = min(n, len(self._block) - self._at)
            rows = self._block[self._at : self._at + k]
            self._at, n = self._at + k, n - k  # before the yield: a caller may take one piece and stop
            yield rows


def _shares_pack(pack: list, group: tuple) -> bool:
    """A group joins a pack while the contexts, right-padded, and the continuations, right-padded, each
    fit ``PACK_TOKENS``."""
    groups = [*pack, group]
    contexts = len(groups) * max(len(context) for context, _ in groups)
    tails = [len(c) - 1 for _, continuations in groups for c in continuations]
    return contexts <= PACK_TOKENS and len(tails) * max(tails) <= PACK_TOKENS


def _check_takes_cache(model) -> None:
    """Refuse a model whose forward has no ``cache`` parameter: ``cache=`` would vanish into its **kwargs.

    transformers 5.24 renamed ``past_key_values`` to ``cache``; before it, _generate's
    cache is silently unused and every step after the first sees one token only.
    """
    if "cache" not in inspect.signature(model.forward).parameters:
        raise RuntimeError(
            f"transformers {transformers.__version__}: {type(model).__name__}.forward takes no cache=, so decoding "
            "would run without its KV cache; install transformers>=5.24 (pyproject's floor)"
        )
