"""The one interface every runtime adapter implements.

Subclasses provide raw float32 next-token logits (``_forward_logits``) and
greedy decoding (``_generate``). ``logit_blocks`` is the template method: it
checks the sequence, takes the subclass's logits block by block and pairs each
block with its targets. Production scoring hands those blocks to
``harness.kernels`` in ``harness/measure/accuracy.py``, so every runtime's accuracy
comes from the same math; ``logprobs`` is a convenience over the same blocks.
``window_logit_blocks`` hands out several windows' blocks, which a runtime may
compute in one forward pass (llama.cpp, torch); ``choice_logit_blocks`` those of
contexts each with several continuations (lm-eval's choices), a context computed
once for all of them where the runtime can. ``start_batch`` and
``generate_batch`` decode several sequences together on top of a filled cache:
an operating point (``harness.measure.efficiency.measure_point``).

On a GPU a runtime that computes its logits there may hand them over where they
are (a CUDA torch tensor): ``harness.kernels`` scores them on the device, so a
block never crosses PCIe. ``device_unavailable_reason`` says when a runtime's
installed build cannot run on a device, and what installs one that can.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from harness.machine.environment import thread_count
from harness.machine.nvml import cuda_index
from harness.manifest import Variant

# Rows of float32 logits handed out at once: 256 x 49,152 x 4 B = 50 MB for SmolLM2.
DEFAULT_BLOCK_ROWS = 256


@dataclass(frozen=True)
class LogitBlock:
    """Next-token logits for positions ``start .. start + len(targets) - 1`` of one sequence.

    ``logits[i]`` is the float32 distribution over the vocabulary at position
    ``start + i``; ``targets[i]`` is the token that actually follows it.
    """

    start: int
    logits: Any  # (n, V) float32, C-contiguous: a numpy array, or a GPU array (harness.kernels.is_device_array)
    targets: np.ndarray  # (n,) int64


@dataclass(frozen=True)
class Generation:
    """Greedy continuation with one ``time.perf_counter()`` stamp per produced token."""

    token_ids: list[int]
    start_s: float  # clock read just before the prompt was submitted
    token_times_s: list[float]  # clock read after each new token was available

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] - self.start_s if self.token_times_s else float("nan")

    @property
    def inter_token_s(self) -> np.ndarray:
        return np.diff(np.asarray(self.token_times_s))


@dataclass(frozen=True)
class BatchGeneration:
    """Greedy continuations of several sequences decoded together, with one clock stamp per step.

    Step ``k`` produced token ``k`` of every sequence at once: ``token_ids[:, k]``.
    """

    token_ids: np.ndarray  # (sequences, steps) int64
    start_s: float  # clock read just before the prompts were submitted
    step_times_s: list[float]  # clock read after each step's tokens were available
    logits: np.ndarray | None = None  # (sequences, steps, V) float32: each step's next-token logits, when kept

    @property
    def ttft_s(self) -> float:
        return self.step_times_s[0] - self.start_s if self.step_times_s else float("nan")

    @property
    def inter_token_s(self) -> np.ndarray:
        return np.diff(np.asarray(self.step_times_s))


class Backend(abc.ABC):
    """A loaded variant in its runtime. Use as a context manager.

    ``settings`` is the runtime's own settings object (``settings_class``, a
    frozen dataclass from its ``config.py``); None means its defaults.
    """

    runtime: str = ""
    settings_class: type | None = None

    def __init__(self, variant: Variant, threads: int | None = None, device: str = "cpu", settings: Any = None):
        self.variant = variant
        self.threads = thread_count(threads)
        self.device = device
        self.settings = _checked_settings(type(self), settings)
        self.eos_token_ids: frozenset[int] = frozenset()
        self._native: Any = None  # the runtime's loaded object: set by load(), None again after close()

    # ---- life cycle -------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Backend":
        self.load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def native(self) -> Any:
        """The runtime's own loaded object, for code that drives it directly (benchmarks/direct_loops.py).

        ``llama_cpp.Llama``, the transformers model or the ``onnxruntime_genai.Model``.
        """
        return self._require_loaded()

    def _require_loaded(self) -> Any:
        if self._native is None:
            raise RuntimeError(f"{self.variant.name}: call load() (or use the backend as a context manager) first")
        return self._native

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op on the CPU."""

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        """None when this runtime's installed build runs on ``device``, else why not and the command that fixes it.

        Called before a backend is made (``harness.backends.open_backend``); the
        CPU always passes. A runtime without GPU support overrides nothing.
        """
        if cuda_index(device) is None:
            return None
        return f"the {cls.runtime or cls.__name__} backend has no GPU support"

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime and version, device, threads, dtype, and every setting that moves the numbers.

        Reads only: it changes no process or runtime state.
        """

    # ---- scoring ----------------------------------------------------------
    @abc.abstractmethod
    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        """Run ``token_ids`` (T,) through the model from an empty cache.

        Yield float32 (n, V) blocks of next-token logits for positions
        ``start .. T - 2`` in order, each of at most ``block_rows`` rows: numpy
        arrays, or GPU arrays where the kernels can score them there
        (``harness.kernels.device_scoring_available``).
        """

    def logit_blocks(
        self, token_ids: Sequence[int], start: int = 0, block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> Iterator[LogitBlock]:
        """Next-token logits of one sequence, block by block, with their targets."""
        ids = checked_sequence(token_ids, start)
        yield from self._paired(ids, start, self._forward_logits(ids, start, block_rows))

    def window_logit_blocks(
        self, windows: Sequence[tuple[Sequence[int], int]], block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> Iterator[Iterator[LogitBlock]]:
        """``logit_blocks`` of each (token_ids, start) of ``windows``, in order: one iterator per window.

        Consume each window's blocks before asking for the next window: a runtime that decodes several
        windows in one forward pass (llama.cpp, as llama-perplexity packs its chunks) hands out blocks of
        a buffer the next pass overwrites. Consecutive windows share a pass while ``_joins`` says so
        (by default never: one window at a time).
        """
        for pack in packs(windows, self._joins):
            if len(pack) == 1:
                yield self.logit_blocks(pack[0][0], pack[0][1], block_rows)
            else:
                yield from self._packed_blocks(pack, block_rows)

    def choice_logit_blocks(
        self, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> Iterator[Iterator[Iterator[LogitBlock]]]:
        """For each (context, continuations) of ``groups``, in order, one iterator per continuation of the
        ``logit_blocks`` of context + continuation from the context's last token on: its targets are the
        continuation. A multiple-choice document's choices share its context.

        A runtime may compute a context once for all its continuations, and several groups in one
        forward pass (``_shared_blocks``); consume the blocks in order, as ``window_logit_blocks``'s. By
        default each continuation is a window of its own, through ``window_logit_blocks``.
        """
        groups = [(checked_tokens(context, "a context"), [checked_tokens(c, "a continuation") for c in continuations])
                  for context, continuations in groups]
        yield from self._shared_blocks(groups, block_rows)

    def _shared_blocks(self, groups: list[tuple[np.ndarray, list[np.ndarray]]], block_rows: int):
        windows = [(np.concatenate([context, c]), len(context) - 1) for context, cs in groups for c in cs]
        blocks = self.window_logit_blocks(windows, block_rows)
        for _, continuations in groups:
            yield (next(blocks) for _ in continuations)

    def _joins(self, pack: list, window: tuple) -> bool:
        """Whether ``window`` shares ``pack``'s forward pass (``_packed_blocks``); by default none does."""
        return False

    def _packed_blocks(self, pack: list, block_rows: int) -> Iterator[Iterator[LogitBlock]]:
        """One forward pass of every window of ``pack``, then each window's blocks, in order."""
        raise NotImplementedError(f"the {self.runtime or type(self).__name__} backend packs no windows")

    def _paired(self, ids: np.ndarray, start: int, logits: Iterator) -> Iterator[LogitBlock]:
        """Each (n, V) block of ``logits`` with its targets, for positions ``start .. len(ids) - 2`` in order."""
        pos = start
        for block in logits:
            n = block.shape[0]
            yield LogitBlock(pos, block, ids[pos + 1 : pos + 1 + n])
            pos += n
        if pos != len(ids) - 1:
            raise RuntimeError(f"{self.variant.name}: backend yielded logits up to {pos}, expected {len(ids) - 1}")

    def logprobs(self, sequences: Sequence[Sequence[int]], start: int = 0) -> list[np.ndarray]:
        """Log-probability of each next token: one float64 (T - 1 - start,) array per sequence.

        A convenience for tests and quick checks; the harness scores through
        ``logit_blocks`` (``harness.measure.accuracy``), which never holds a whole sequence's logits.
        """
        from harness.kernels import token_nll

        out = []
        for seq in sequences:
            parts = [-token_nll(b.logits, b.targets) for b in self.logit_blocks(seq, start)]
            out.append(np.concatenate(parts))
        return out

    # ---- generation -------------------------------------------------------
    @abc.abstractmethod
    def _generate(self, prompt_ids: np.ndarray, max_new_tokens: int, stamp: list[float]) -> list[int]:
        """Greedy-decode up to ``max_new_tokens``; append ``time.perf_counter()`` to ``stamp`` per token.

        Stop once ``self._finished(produced)`` says so (after an EOS token, which counts as produced).
        Call ``self.synchronize()`` before each clock read.
        """

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 stop: Callable[[list[int]], bool] | None = None) -> Generation:
        """Greedy continuation of ``prompt_ids``, up to ``max_new_tokens``, with a clock stamp per token.

        It ends after an EOS token, or once ``stop`` (when given) says so of the tokens produced so far:
        lm-eval's stop sequences, which are text (``harness.measure.tasks``).
        """
        ids = np.ascontiguousarray(prompt_ids, dtype=np.int64)
        stamps: list[float] = []
        self._stop = stop
        try:
            self.synchronize()
            start = time.perf_counter()
            tokens = self._generate(ids, max_new_tokens, stamps)
        finally:
            self._stop = None
        return Generation(list(tokens), start, stamps)

    _stop: Callable[[list[int]], bool] | None = None  # generate's stop, while it runs

    def _finished(self, produced: list[int]) -> bool:
        """Whether a greedy continuation ends after ``produced``: an EOS token, or ``generate``'s stop."""
        return produced[-1] in self.eos_token_ids or (self._stop is not None and self._stop(produced))

    # ---- several sequences at once, on top of a filled cache (an operating point) ---------------
    def _start_batch(self, depth_ids: np.ndarray, room: int) -> None:
        """Make a cache for ``len(depth_ids)`` sequences of ``depth + room`` tokens each, and fill it with
        ``depth_ids`` (sequences, depth), one row per sequence; depth may be 0. Rows all alike may be
        computed once and copied into each sequence's own cache (llama-batched-bench's shared prompt)."""
        raise NotImplementedError(f"the {self.runtime or type(self).__name__} backend decodes no batches")

    def _generate_batch(self, prompt_ids: np.ndarray, steps: int, stamp: list[float],
                        logits: list | None = None) -> np.ndarray:
        """Prefill ``prompt_ids`` (sequences, P) on top of the filled depth, all sequences in the same
        forward passes, then decode ``steps`` greedy tokens per sequence, one step for all sequences at
        once; append ``time.perf_counter()`` to ``stamp`` per step; return the (sequences, steps) tokens.
        With a ``logits`` list, append each step's (sequences, V) float32 logits to it (tests).

        EOS does not stop a sequence (a fixed length, as llama-batched-bench's). Afterwards the cache
        holds the depth again, so the next call starts from it.
        """
        raise NotImplementedError(f"the {self.runtime or type(self).__name__} backend decodes no batches")

    def kv_cache_bytes(self) -> int | None:
        """The most bytes the KV cache held at the end of a ``generate_batch`` since ``start_batch``, where
        the runtime says; None where it does not."""
        return getattr(self, "_kv_bytes", None)

    def start_batch(self, depth_ids: np.ndarray, room: int) -> None:
        """Fill a cache of ``len(depth_ids)`` sequences with their ``depth_ids`` rows, untimed, as
        llama-bench's ``-d`` does; ``generate_batch`` then runs on top of it, as often as wanted,
        each call of at most ``room`` prompt and generated tokens per sequence."""
        ids = np.ascontiguousarray(depth_ids, dtype=np.int64)
        if ids.ndim != 2 or len(ids) < 1 or room < 1:
            raise ValueError(f"depth_ids must be (sequences >= 1, depth), got shape {ids.shape}; room={room} >= 1")
        self._batch_shape = ids.shape
        self._batch_room = room
        self._kv_bytes = None
        self._start_batch(ids, room)

    def generate_batch(self, prompt_ids: np.ndarray, steps: int, keep_logits: bool = False) -> BatchGeneration:
        """Greedy continuation of each row of ``prompt_ids``, on top of the cache ``start_batch`` filled;
        ``keep_logits`` keeps each step's logits (for tests: it copies V floats per sequence and step)."""
        ids = np.ascontiguousarray(prompt_ids, dtype=np.int64)
        shape = getattr(self, "_batch_shape", None)
        if shape is None:
            raise RuntimeError(f"{self.variant.name}: call start_batch() before generate_batch()")
        if ids.ndim != 2 or ids.shape[0] != shape[0] or ids.shape[1] < 1 or steps < 1:
            raise ValueError(f"prompt_ids must be ({shape[0]}, >= 1) and steps >= 1, got {ids.shape} and {steps}")
        if ids.shape[1] + steps > self._batch_room:
            raise ValueError(f"{ids.shape[1]} prompt + {steps} generated tokens exceed the room of {self._batch_room}")
        stamps: list[float] = []
        self.synchronize()
        start = time.perf_counter()
        kept: list | None = [] if keep_logits else None
        tokens = self._generate_batch(ids, steps, stamps, kept)
        logits = np.stack(kept, axis=1) if kept else None
        return BatchGeneration(np.asarray(tokens, dtype=np.int64).reshape(shape[0], -1), start, stamps, logits)


def checked_sequence(token_ids: Sequence[int], start: int) -> np.ndarray:
    """``token_ids`` as one int64 sequence of at least 2 tokens, with ``start`` among its scored positions."""
    ids = np.ascontiguousarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"token_ids must be one sequence of at least 2 tokens, got shape {ids.shape}")
    if not 0 <= start <= len(ids) - 2:
        raise ValueError(f"start={start} must lie in [0, {len(ids) - 2}] for {len(ids)} tokens")
    return ids


def packs(items: Sequence, joins) -> Iterator[list]:
    """``items`` in order, cut into runs of consecutive items: an item joins the run before it while
    ``joins(run, item)`` says so."""
    i = 0
    while i < len(items):
        pack = [items[i]]
        while i + len(pack) < len(items) and joins(pack, items[i + len(pack)]):
            pack.append(items[i + len(pack)])
        yield pack
        i += len(pack)


def checked_tokens(token_ids: Sequence[int], what: str) -> np.ndarray:
    """``token_ids`` as one int64 sequence of at least 1 token (``what`` names it in the error)."""
    ids = np.ascontiguousarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 1:
        raise ValueError(f"{what} must be one sequence of at least 1 token, got shape {ids.shape}")
    return ids


def _checked_settings(backend: type, settings: Any) -> Any:
    """``settings``, or the defaults of ``backend.settings_class``; a settings object of another runtime is a TypeError."""
    cls = backend.settings_class
    if settings is None:
        return cls() if cls is not None else None
    if cls is None or not isinstance(settings, cls):
        expected = cls.__name__ if cls is not None else "None"
        raise TypeError(
            f"{backend.__name__} takes {expected} settings (or None for the defaults), got {type(settings).__name__}"
        )
    return settings
