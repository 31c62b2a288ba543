"""A deterministic fake ``Backend`` for tests of the logic around runtimes (accuracy, runner, report).

Its logits at position ``t`` are a function of the prefix ``token_ids[: t + 1]``
only, like a causal language model's: by default seeded Gaussian noise keyed by
a hash of the prefix, or any ``logits_fn(prefix) -> (V,)`` a test supplies to get
numbers it can work out by hand. ``noise`` adds a second, prefix-keyed
perturbation, so a fake "quantized" variant diverges from its fake reference by
a controllable amount. Never use it as the only test of a real runtime.

Import it as ``from fakes import FakeBackend, fake_variant``: pytest puts
``tests/`` on ``sys.path`` (the folder has a conftest.py and no __init__.py).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Iterator

import numpy as np

from harness.backends.base import Backend
from harness.manifest import Variant

LogitsFn = Callable[[np.ndarray], np.ndarray]


def fake_variant(name: str = "fake-fp32", runtime: str = "fake", precision: str = "fp32", **fields: Any) -> Variant:
    """A ``Variant`` that points at nothing, for a backend that loads nothing."""
    values = dict(
        name=name,
        runtime=runtime,
        precision=precision,
        path="/nonexistent/fake",
        tokenizer_path="/nonexistent/fake",
        source_sha256="0" * 64,
        size_bytes=1000,
        n_params=250,
        bits_per_weight=32.0,
    )
    values.update(fields)
    return Variant(**values)


class TimingOnlyBackend(Backend):
    """A backend for the speed tests alone: subclasses script ``generate``; it scores nothing."""

    def load(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime}

    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _generate(self, prompt_ids, max_new_tokens, stamp):
        raise NotImplementedError


class FakeBackend(Backend):
    """Logits from a seeded function of the prefix; greedy decoding by argmax; stops at EOS."""

    runtime = "fake"

    def __init__(
        self,
        variant: Variant | None = None,
        *,
        vocab_size: int = 32,
        seed: int = 0,
        logits_fn: LogitsFn | None = None,
        noise: float = 0.0,
        noise_seed: int = 1,
        eos_token_id: int | None = None,
        yield_rows: int | None = None,
        threads: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(variant or fake_variant(), threads=threads, device=device)
        self.vocab_size = vocab_size
        self.seed = seed
        self.logits_fn = logits_fn
        self.noise = noise
        self.noise_seed = noise_seed
        self.eos_token_ids = frozenset() if eos_token_id is None else frozenset({eos_token_id})
        self.yield_rows = yield_rows  # cut blocks to this size whatever the caller asks, like a runtime with its own batch
        self.loaded = False
        self.forward_calls = 0
        self.max_rows_yielded = 0

    # ---- life cycle -------------------------------------------------------
    def load(self) -> None:
        self.loaded = True

    def close(self) -> None:
        self.loaded = False

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "version": "0", "device": self.device, "threads": self.threads, "dtype": "float32"}

    # ---- the model --------------------------------------------------------
    def next_logits(self, prefix: np.ndarray) -> np.ndarray:
        """The (V,) float32 logits after ``prefix``; what a test uses as its expected value."""
        if self.logits_fn is not None:
            logits = np.asarray(self.logits_fn(np.asarray(prefix)), dtype=np.float64)
        else:
            logits = _keyed_normal(0, self.seed, prefix, self.vocab_size) * 3.0
        if self.noise:
            logits = logits + self.noise * _keyed_normal(1, self.noise_seed, prefix, len(logits))
        return logits.astype(np.float32)

    def _forward_logits(self, token_ids: np.ndarray, start: int, block_rows: int) -> Iterator[np.ndarray]:
        if not self.loaded:
            raise RuntimeError("FakeBackend used before load()")
        self.forward_calls += 1
        rows = self.yield_rows or block_rows
        for block_start in range(start, len(token_ids) - 1, rows):
            block_end = min(block_start + rows, len(token_ids) - 1)
            block = np.stack([self.next_logits(token_ids[: t + 1]) for t in range(block_start, block_end)])
            self.max_rows_yielded = max(self.max_rows_yielded, len(block))
            yield np.ascontiguousarray(block)

    def _generate(self, prompt_ids: np.ndarray, max_new_tokens: int, stamp: list[float]) -> list[int]:
        if not self.loaded:
            raise RuntimeError("FakeBackend used before load()")
        sequence = list(prompt_ids)
        produced: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.next_logits(np.asarray(sequence, dtype=np.int64))))
            produced.append(token)
            sequence.append(token)
            stamp.append(time.perf_counter())
            if self._finished(produced):
                break
        return produced


def _keyed_normal(stream: int, seed: int, prefix: np.ndarray, size: int) -> np.ndarray:
    """Standard normal (size,) values determined by ``stream`` (model or noise), ``seed`` and the whole prefix."""
    digest = hashlib.blake2b(np.asarray(prefix, dtype=np.int64).tobytes(), digest_size=16).digest()
    return np.random.default_rng([stream, seed, *np.frombuffer(digest, dtype=np.uint32).tolist()]).standard_normal(size)
