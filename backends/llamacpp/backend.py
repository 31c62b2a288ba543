"""llama.cpp in process through llama-cpp-python, driven with ``llama_decode`` on our own batches.

The high-level ``Llama.eval`` keeps an (n_ctx, V) ``scores`` array when every
position's logits are wanted (805 MB at 4,096 x 49,152) on top of llama.cpp's
own output buffer; decoding block by block and copying each block out of
``llama_get_logits`` before the next decode keeps one block in memory.

On ``cuda:N`` every layer is offloaded to that one GPU (``n_gpu_layers=-1``,
no split across GPUs); the logits still come to the host, where the CPU
kernels score them.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any, Iterator

import llama_cpp
import numpy as np

from harness.machine.nvml import cuda_index

from ..base import Backend, checked_sequence, packs
from ..eos import eos_ids
from .config import CUDA_INSTALL, RUNTIME, LlamaCppSettings


CTX_PAD = 256  # llama.cpp rounds n_ctx up to a multiple of 256
MAX_SHARED_SEQUENCES = 64  # the continuations of the groups of one shared-context pack (llama-perplexity: 128)


def _rows_alike(rows: np.ndarray) -> bool:
    return bool((rows == rows[:1]).all())


def _padded(tokens: int) -> int:
    return -(-tokens // CTX_PAD) * CTX_PAD


def _group_tokens(group: tuple) -> int:
    """The tokens a (context, continuations) group decodes: its context once, each continuation but its last."""
    context, continuations = group
    return len(context) + sum(len(c) - 1 for c in continuations)


class LlamaCppBackend(Backend):
    """A GGUF file in llama.cpp, one sequence at a time, the KV cache cleared per sequence."""

    runtime = RUNTIME
    settings_class = LlamaCppSettings
    settings: LlamaCppSettings

    def __init__(self, *args: Any, **kwargs: Any):  # Backend's arguments
        super().__init__(*args, **kwargs)
        self._stack = ExitStack()
        # Set by load(), dropped by close(): raw handles into the llama_cpp.Llama in self._native.
        self._ctx = None
        self._batch = None
        self._one = self._one_batch = None
        self._n_vocab = 0
        self._gpu = cuda_index(self.device)  # None on the CPU
        # start_batch's context of several sequences, made when the one it has is too small, and its depth.
        self._many = None
        self._many_shape = (0, 0, 0, 0, False)  # (sequences, tokens per sequence, n_batch, n_ubatch, unified)
        self._score_batch = None  # a llama_batch of score_batch tokens (_scoring_batch)
        self._depth = 0

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        if cuda_index(device) is None or llama_cpp.llama_supports_gpu_offload():
            return None
        # A CPU build would take n_gpu_layers and quietly run on the CPU.
        return (f"llama-cpp-python {llama_cpp.__version__} was built without GPU offload; rebuild it with CUDA: "
                f"{CUDA_INSTALL}")

    def synchronize(self) -> None:
        if self._gpu is not None:
            for ctx in (self._ctx, self._many):
                if ctx is not None:
                    llama_cpp.llama_synchronize(ctx)

    def _offload(self) -> dict[str, int]:
        """Every layer on the device's one GPU (the default split would spread them over every GPU); none on the CPU.

        The CPU passes no split mode: llama.cpp refuses main_gpu=0 with split mode none where it has no GPU.
        """
        if self._gpu is None:
            return {"n_gpu_layers": 0}
        return {"n_gpu_layers": -1, "split_mode": llama_cpp.LLAMA_SPLIT_MODE_NONE, "main_gpu": self._gpu}

    def load(self) -> None:
        s = self.settings
        llm = llama_cpp.Llama(
            self.variant.path,
            **self._offload(),
            n_ctx=s.n_ctx,
            n_batch=s.n_batch,
            n_ubatch=s.n_ubatch,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            flash_attn=s.flash_attn,
            type_k=getattr(llama_cpp, f"GGML_TYPE_{s.type_k.upper()}"),
            type_v=getattr(llama_cpp, f"GGML_TYPE_{s.type_v.upper()}"),
            use_mmap=s.use_mmap,
            logits_all=False,  # we request per-token logits in our own batches
            # llama-cpp-python's process-wide log callback then passes on only errors (to sys.stderr),
            # as in benchmarks/direct_loops.py and harness/text/tokenizer.py; where those lines end up is the
            # caller's business (the runner sends a child's native output to its log).
            verbose=False,
        )
        self._stack.callback(llm.close)
        self._native = llm
        self._batch = llama_cpp.llama_batch_init(s.n_batch, 0, 1)
        self._stack.callback(llama_cpp.llama_batch_free, self._batch)
        self._ctx = llm.ctx
        self._n_vocab = llm.n_vocab()
        self._one = (llama_cpp.llama_token * 1)()
        self._one_batch = llama_cpp.llama_batch_get_one(self._one, 1)
        eot = llm.metadata.get("tokenizer.ggml.eot_token_id")
        self.eos_token_ids = eos_ids(self.variant.tokenizer_path, llm.token_eos(), eot)

    def close(self) -> None:
        self._free_many()
        self._stack.close()
        self._native = self._ctx = self._batch = self._one = self._one_batch = self._score_batch = None

    def _free_many(self) -> None:
        if self._many is not None:
            llama_cpp.llama_free(self._many)
        self._many, self._many_shape = None, (0, 0, 0, 0, False)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        ctx = self._ctx
        return {
            "runtime": RUNTIME,
            "version": llama_cpp.__version__,
            "device": self.device,
            "threads": llama_cpp.llama_n_threads(ctx) if ctx else self.threads,
            "threads_batch": llama_cpp.llama_n_threads_batch(ctx) if ctx else self.threads,
            "dtype": self.variant.precision,
            "kv_cache_type": s.type_k if s.type_k == s.type_v else f"k={s.type_k},v={s.type_v}",
            "type_k": s.type_k,
            "type_v": s.type_v,
            "n_ctx": s.n_ctx,
            "n_batch": s.n_batch,
            "n_ubatch": s.n_ubatch,
            "score_batch": s.score_batch,
            "flash_attn": s.flash_attn,
            "use_mmap": s.use_mmap,
            "n_gpu_layers": -1 if self._gpu is not None else 0,
        }

    # ---- llama_decode helpers --------------------------------------------
    def _clear(self) -> None:
        self._require_loaded()
        # Positions only, as llama-bench does: data=True would also zero the whole KV buffer
        # (94 MB at n_ctx 4096 for SmolLM2-135M), a cost inside every timed generate.
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), False)

    def _decode_span(self, ids: np.ndarray, pos0: int, logits: str) -> None:
        """Decode ``ids`` at positions ``pos0..``; ``logits`` is "all", "last" or "none"."""
        n = len(ids)
        wanted = np.full(n, logits == "all")
        wanted[-1] |= logits == "last"
        self._decode_tokens(self._ctx, ids, pos0 + np.arange(n), np.zeros(n, dtype=np.int64), wanted)

    def _decode_tokens(self, ctx, ids, positions, seqs, wanted, batch=None) -> None:
        """One ``llama_decode`` of tokens ``ids`` at ``positions`` of sequences ``seqs``, logits where ``wanted``
        (in ``batch``, default the one of ``n_batch`` tokens). An item of ``seqs`` is a sequence id, or a
        tuple of the ids of the sequences that share the token (a shared context's)."""
        batch = batch or self._batch
        seqs = seqs.tolist() if isinstance(seqs, np.ndarray) else seqs
        for i, (token, pos, seq, want) in enumerate(zip(ids.tolist(), positions.tolist(), seqs, wanted.tolist())):
            batch.token[i] = token
            batch.pos[i] = pos
            owners = seq if isinstance(seq, tuple) else (seq,)
            batch.n_seq_id[i] = len(owners)
            for j, owner in enumerate(owners):
                batch.seq_id[i][j] = owner
            batch.logits[i] = want
        batch.n_tokens = len(ids)
        self._check(llama_cpp.llama_decode(ctx, batch))

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise RuntimeError(f"{self.variant.name}: llama_decode returned {rc}")

    def _check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.settings.n_ctx:
            raise ValueError(
                f"{self.variant.name}: {n_tokens} tokens exceed the llama.cpp context n_ctx={self.settings.n_ctx}; "
                "raise LlamaCppSettings.n_ctx"
            )

    # ---- scoring and generation ----------------------------------------------
    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        # n_batch tokens per llama_decode, logits asked from ``start`` on, as llama-perplexity decodes a chunk
        # (one batch, outputs from its first scored position): with flash attention llama.cpp's logits depend
        # on where a sequence is cut into decodes, so a window is not cut at ``start`` or per block.
        n = len(token_ids) - 1  # the last token is only a target
        self._check_fits(n)
        self._clear()
        for lo in range(0, n, self.settings.n_batch):
            hi = min(n, lo + self.settings.n_batch)
            positions = np.arange(lo, hi)
            self._decode_tokens(self._ctx, token_ids[lo:hi], positions, np.zeros(hi - lo, dtype=np.int64),
                                positions >= start)
            if hi <= start:
                continue
            # llama_get_logits puts the outputs back in batch order; the buffer is overwritten by the next
            # decode, so each block is copied out.
            outputs = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx),
                                            shape=(hi - max(lo, start), self._n_vocab))
            for row in range(0, len(outputs), block_rows):
                yield outputs[row : row + block_rows].copy()

    # ---- several sequences (an operating point) ------------------------------------------------------
    def _many_context(self, sequences: int, tokens: int, n_batch: int | None = None, larger: bool = False,
                      unified: bool = False):
        """A context of ``sequences`` sequences with room for ``tokens`` each, taking ``n_batch`` tokens per
        ``llama_decode`` (default the setting's): the one kept, or a new one. With ``larger`` a kept context
        with room for more sequences or tokens serves too (scoring: a new context costs its allocation).

        Each sequence gets its own part of the cache (llama.cpp's default, not unified), as in
        llama-batched-bench, whose context holds ``n_seq_max`` = the most parallel sequences. With
        ``unified`` the sequences share one cache of ``tokens`` cells, as llama-perplexity's multiple-choice
        scores keep it: a shared context's cells belong to several sequences.
        """
        tokens = _padded(tokens)  # llama.cpp pads a context to this: each sequence gets a whole share
        n_batch = n_batch or self.settings.n_batch
        n_ubatch = n_batch if larger else self.settings.n_ubatch  # scoring: a pack is one micro-batch
        shape = (sequences, tokens, n_batch, n_ubatch, unified)
        kept_sequences, kept_tokens, *kept = self._many_shape
        fits = larger and kept == [*shape[2:]] and kept_sequences >= sequences and kept_tokens >= tokens
        if self._many_shape != shape and not fits:
            self._free_many()
            params = llama_cpp.llama_context_params.from_buffer_copy(self._require_loaded().context_params)
            params.n_seq_max = sequences
            params.n_ctx = tokens if unified else sequences * tokens
            params.n_batch, params.n_ubatch = n_batch, n_ubatch
            params.kv_unified = unified
            self._many = llama_cpp.llama_init_from_model(self._native.model, params)
            if self._many is None:
                raise RuntimeError(f"{self.variant.name}: llama.cpp could not make a context of {sequences} "
                                   f"sequences x {tokens} tokens")
            self._many_shape = shape
        return self._many

    # ---- several windows scored in one pass, as llama-perplexity packs its chunks ---------------------
    def _joins(self, pack: list, window: tuple) -> bool:
        """Windows of one length share a ``llama_decode``, one sequence each, while their cache cells (each
        sequence's length, padded as llama.cpp pads a context) fit in ``score_batch``: four windows of 512,
        as llama-perplexity's default packs its chunks. A window alone (or of another length than its
        neighbours) takes the one-sequence path, which computes it the same way."""
        length = len(pack[0][0])
        return (len(pack) < llama_cpp.llama_max_parallel_sequences() and len(window[0]) == length
                and (len(pack) + 1) * _padded(length) <= self.settings.score_batch)

    def _packed_blocks(self, pack, block_rows: int):
        """One ``llama_decode`` of every window of ``pack`` (all of one length), then each window's blocks.

        The pack is one micro-batch (the scoring context's n_ubatch is score_batch), and its sequences are
        of one length: llama.cpp's logits change with the shape of the batch a row is computed in (where a
        sequence is cut into micro-batches, how many rows share a matrix product: measured up to 0.5 nats
        on a token of Q8_0 for a cut at 85 tokens, 1e-2 for F32 rows beside others of other lengths), and
        so each window comes out exactly as it does alone (``tests/test_batched.py``).
        """
        sequences = [checked_sequence(ids, start) for ids, start in pack]
        width = len(sequences[0]) - 1  # the last token of each is only a target
        ctx = self._many_context(len(pack), width + 1, self.settings.score_batch, larger=True)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)
        positions = np.tile(np.arange(width), len(pack))
        seqs = np.repeat(np.arange(len(pack)), width)
        wanted = np.concatenate([np.arange(width) >= start for _, start in pack])
        flat = np.concatenate([ids[:-1] for ids in sequences])
        self._decode_tokens(ctx, flat, positions, seqs, wanted, self._scoring_batch())
        outputs = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(int(wanted.sum()), self._n_vocab))
        first = 0
        for ids, (_, start) in zip(sequences, pack):
            n = width - start
            yield self._paired(ids, start, (outputs[lo : min(lo + block_rows, first + n)].copy()
                                            for lo in range(first, first + n, block_rows)))
            first += n

    # ---- contexts shared by their continuations, as llama-perplexity scores multiple choice ---------
    def _shared_blocks(self, groups, block_rows: int):
        """Groups packed into one ``llama_decode`` while their tokens fit ``score_batch``, as
        llama-perplexity's ``--hellaswag`` packs its tasks: a context's tokens once, belonging to every one of
        its continuations' sequences, each continuation's tokens in a sequence of its own, in one cache
        shared by all (unified) and one micro-batch. A group too long for a pack, or of more continuations
        than a pack's sequences, is scored as windows.

        Against scoring each choice alone, the logits move: with flash attention llama.cpp's CPU kernel
        computes a row differently by how many cache cells its decode attends over (60 or 61 cells against
        68, 100 or 360, which agree, in this build; not at all without flash attention). On random tokens F32 moved by up to 0.03
        nats per choice, as far from torch's fp32 as alone (0.003 on average either way); Q8_0 by up to 0.9
        nats, again as far from F32 as alone. Which other groups share a pack changes nothing.
        """
        for pack in packs(groups, self._shares_pack):
            if _group_tokens(pack[0]) > self.settings.score_batch or len(pack[0][1]) > MAX_SHARED_SEQUENCES:
                yield from super()._shared_blocks(pack, block_rows)
            else:
                yield from self._shared_pack(pack, block_rows)

    def _shares_pack(self, pack: list, group: tuple) -> bool:
        groups = [*pack, group]
        return (sum(map(_group_tokens, groups)) <= self.settings.score_batch
                and sum(len(continuations) for _, continuations in groups) <= MAX_SHARED_SEQUENCES)

    def _shared_pack(self, pack, block_rows: int):
        ctx = self._many_context(MAX_SHARED_SEQUENCES, self.settings.score_batch, self.settings.score_batch,
                                 larger=True, unified=True)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)
        ids, positions, seqs, wanted = [], [], [], []
        rows = []  # per group: the output row of its context's last token, and of each continuation's first
        seq = out = 0
        for context, continuations in pack:
            n = len(context)
            ids.append(context)
            positions.append(np.arange(n))
            seqs += [tuple(range(seq, seq + len(continuations)))] * n
            wanted.append(np.arange(n) == n - 1)
            last, firsts, out = out, [], out + 1
            for c in continuations:  # but its last token, only a target
                ids.append(c[:-1])
                positions.append(n + np.arange(len(c) - 1))
                seqs += [seq] * (len(c) - 1)
                wanted.append(np.ones(len(c) - 1, dtype=bool))
                firsts.append(out)
                seq, out = seq + 1, out + len(c) - 1
            rows.append((last, firsts))
        self._decode_tokens(ctx, np.concatenate(ids), np.concatenate(positions), seqs, np.concatenate(wanted),
                            self._scoring_batch())
        outputs = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(out, self._n_vocab))
        for (context, continuations), (last, firsts) in zip(pack, rows):
            yield (self._paired(np.concatenate([context, c]), len(context) - 1,
                                self._output_rows(outputs, last, first, len(c) - 1, block_rows))
                   for c, first in zip(continuations, firsts))

    def _scoring_batch(self):
        """The ``llama_batch`` of ``score_batch`` tokens that packs are decoded in, made when first wanted;
        a token may belong to up to ``MAX_SHARED_SEQUENCES`` sequences."""
        if self._score_batch is None:
            self._score_batch = llama_cpp.llama_batch_init(self.settings.score_batch, 0, MAX_SHARED_SEQUENCES)
            self._stack.callback(llama_cpp.llama_batch_free, self._score_batch)
        return self._score_batch

    @staticmethod
    def _output_rows(outputs: np.ndarray, last: int, first: int, n: int, block_rows: int):
        """Copies of output row ``last`` (a context's last token), then of rows ``first .. first + n - 1``."""
        yield outputs[last : last + 1].copy()
        for lo in range(first, first + n, block_rows):
            yield outputs[lo : min(lo + block_rows, first + n)].copy()

    def _decode_rows(self, ctx, rows: np.ndarray, pos0: int, last_logits: bool, kept: np.ndarray | None = None):
        """Decode each row of ``rows`` as its own sequence from ``pos0``; with ``last_logits`` the argmax at each
        row's last token (and its logits copied into ``kept``, (sequences, V), when given).

        A ``llama_decode`` holds whole rows, as many as fit ``n_batch`` tokens, or one piece of one row:
        llama.cpp splits a batch of several sequences into equal shares per sequence, and a sequence cut
        unevenly beside another came out wrong (a logit off by 13 in a test of this build), so no decode
        mixes a piece of one row with another row. For prompts of 512 and n_batch 512 this is
        llama-batched-bench's own batching.
        """
        sequences, width = rows.shape
        argmax = np.empty(sequences, dtype=np.int64)
        step = self.settings.n_batch
        together = max(1, step // width) if width else sequences
        for first in range(0, sequences, together):
            seqs = np.arange(first, min(sequences, first + together))
            for lo in range(0, width, step):  # whole rows when together > 1, else pieces of one row
                hi = min(width, lo + step)
                wanted = np.tile(np.arange(lo, hi) == width - 1, len(seqs)) & last_logits
                self._decode_tokens(ctx, rows[seqs, lo:hi].reshape(-1), np.tile(pos0 + np.arange(lo, hi), len(seqs)),
                                    np.repeat(seqs, hi - lo), wanted)
                for i in np.flatnonzero(wanted):  # read before the next call overwrites them
                    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, int(i)), shape=(self._n_vocab,))
                    seq = seqs[i // (hi - lo)]
                    argmax[seq] = int(np.argmax(row))
                    if kept is not None:
                        kept[seq] = row
        return argmax if last_logits else None

    def _start_batch(self, depth_ids: np.ndarray, room: int) -> None:
        sequences, depth = depth_ids.shape
        ctx = self._many_context(sequences, depth + room)
        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(memory, False)
        if depth and _rows_alike(depth_ids):  # one fill, copied to every sequence's own cells
            self._decode_rows(ctx, depth_ids[:1], 0, last_logits=False)
            for seq in range(1, sequences):
                llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        elif depth:
            self._decode_rows(ctx, depth_ids, 0, last_logits=False)
        self._depth = depth

    def _generate_batch(self, prompt_ids: np.ndarray, steps: int, stamp: list[float],
                        logits: list | None = None) -> np.ndarray:
        ctx, depth = self._many, self._depth
        sequences, width = prompt_ids.shape
        tokens = np.empty((sequences, steps), dtype=np.int64)
        first = np.empty((sequences, self._n_vocab), dtype=np.float32) if logits is not None else None
        tokens[:, 0] = self._decode_rows(ctx, prompt_ids, depth, last_logits=True, kept=first)
        if logits is not None:
            logits.append(first)
        self.synchronize()
        stamp.append(time.perf_counter())
        seqs, wanted = np.arange(sequences), np.ones(sequences, dtype=bool)
        for k in range(1, steps):
            self._decode_tokens(ctx, tokens[:, k - 1], np.full(sequences, depth + width + k - 1), seqs, wanted)
            step = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(sequences, self._n_vocab))
            tokens[:, k] = step.argmax(axis=1)
            if logits is not None:
                logits.append(step.copy())
            stamp.append(time.perf_counter())
        # The cache's bytes as llama.cpp would save them (every sequence's cells), at its fullest.
        held = sum(llama_cpp.llama_state_seq_get_size(ctx, seq) for seq in range(sequences))
        self._kv_bytes = max(self._kv_bytes or 0, held)
        # Back to the depth: every sequence's positions from it on are dropped.
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), -1, depth, -1)
        return tokens

    def _argmax_last(self) -> int:
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self._n_vocab,))))

    def _generate(self, prompt_ids: np.ndarray, max_new_tokens: int, stamp: list[float]) -> list[int]:
        if len(prompt_ids) == 0:
            raise ValueError(f"{self.variant.name}: generate needs a prompt of at least one token")
        self._check_fits(len(prompt_ids) + max_new_tokens)
        self._clear()
        produced: list[int] = []
        if max_new_tokens <= 0:
            return produced
        step = self.settings.n_batch
        for lo in range(0, len(prompt_ids), step):
            last = lo + step >= len(prompt_ids)
            self._decode_span(prompt_ids[lo : lo + step], lo, "last" if last else "none")
        while True:
            token = self._argmax_last()
            stamp.append(time.perf_counter())
            produced.append(token)
            if self._finished(produced) or len(produced) >= max_new_tokens:
                return produced
            self._one[0] = token
            self._check(llama_cpp.llama_decode(self._ctx, self._one_batch))
