"""Speed, latency, memory and energy of one loaded backend, measured the way llama-bench does.

Prompts are random token ids drawn from the vocabulary without its special
tokens, so speed does not depend on the corpus, and a fresh prompt per
repetition so no runtime can serve one from a prefix cache. Two tests, as
llama-bench's ``pp`` and ``tg``:

- prefill: ``backend.generate(ids, 1)`` of a ``prompt_tokens`` prompt: its time
  to first token, and ``prompt_tokens / TTFT`` as the prefill speed.
- decode: ``backend.generate`` of ``gen_tokens`` from a one-token prompt, so
  each produced token costs one single-token step from an empty cache, as
  llama-bench's ``tg``; ``tokens produced / seconds`` and the per-token stamps
  give the inter-token latency percentiles.

Warmups, each a full prefill and a full decode, are run and discarded: a
shorter decode warm-up than the measured one left decode slower than
llama-bench's. The ``repetitions`` measured ones alternate prefill and decode,
so a drift in machine speed touches both alike.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from harness.backends.base import Backend
from harness.config import CompareConfig
from harness.monitor import GpuMonitor, ResourceMonitor
from harness.results import Efficiency
from harness.stats import Stats
from harness.tokenizer import speed_token_pool

DECODE_PROMPT_TOKENS = 1  # llama-bench tg: generation starts from an empty cache
MAX_DECODE_ATTEMPTS = 5  # prompts to try when one ends in EOS before a second token

# Keys with a median over repetitions, hence a ``_spread`` and a place in ``noisy``.
TIMED_KEYS = Efficiency.TIMED


def load_seconds(backend: Backend, clock: Callable[[], float] = time.perf_counter) -> float:
    """Load ``backend`` and return the wall time it took, device work included (cold in a fresh child)."""
    backend.synchronize()
    t0 = clock()
    backend.load()
    backend.synchronize()
    return clock() - t0


def _prefill_seconds(backend: Backend, prompt: np.ndarray) -> float:
    """Time to the first token of ``prompt``: the prefill, as a deployment sees it."""
    generation = backend.generate(prompt, 1)
    if not generation.token_times_s:
        raise RuntimeError(f"{backend.variant.name}: generate(prompt, 1) produced no token")
    return generation.ttft_s


def _decode(backend: Backend, draw: Callable[[int], np.ndarray], gen_tokens: int):
    """A generation of at least two tokens (so it has an inter-token latency), from fresh one-token prompts."""
    for _ in range(MAX_DECODE_ATTEMPTS):
        generation = backend.generate(draw(DECODE_PROMPT_TOKENS), gen_tokens)
        if len(generation.token_times_s) >= min(2, gen_tokens):
            return generation
    raise RuntimeError(f"{backend.variant.name}: {MAX_DECODE_ATTEMPTS} random prompts each ended after one token")


def _gpu_index(device: str) -> int | None:
    """The CUDA device index of ``device`` ('cuda', 'cuda:1'), None for anything else."""
    if not device.startswith("cuda"):
        return None
    return int(device.split(":", 1)[1]) if ":" in device else 0


def measure_efficiency(
    backend: Backend,
    prompt_tokens: int = CompareConfig.prompt_tokens,
    gen_tokens: int = CompareConfig.gen_tokens,
    warmup: int = CompareConfig.warmup,
    repetitions: int = CompareConfig.repetitions,
    seed: int = 0,
    *,
    load_s: float | None = None,
    token_pool: np.ndarray | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Efficiency:
    """The efficiency of a loaded ``backend``.

    ``load_s`` is the cold load time the caller measured (``load_seconds``).
    ``peak_rss_mb`` is the process's peak since it started, so call this
    before the accuracy pass in a fresh child: the figure is then the load
    plus the inference of this variant. ``token_pool`` overrides the ids
    drawn from the variant's tokenizer.
    """
    if prompt_tokens < 1 or gen_tokens < 1:
        raise ValueError(f"prompt_tokens={prompt_tokens} and gen_tokens={gen_tokens} must be at least 1")
    if repetitions < 1 or warmup < 0:
        raise ValueError(f"repetitions={repetitions} must be >= 1 and warmup={warmup} >= 0")
    pool = speed_token_pool(backend.variant.tokenizer_path) if token_pool is None else np.asarray(token_pool)
    rng = np.random.default_rng(seed)

    def draw(n: int) -> np.ndarray:
        return rng.choice(pool, size=n).astype(np.int64)

    for _ in range(warmup):
        _prefill_seconds(backend, draw(prompt_tokens))
        _decode(backend, draw, gen_tokens)

    with ResourceMonitor(clock=clock) as resources:
        runs = _timed_runs(backend, draw, prompt_tokens, gen_tokens, repetitions)
    figures = _timed_figures(runs, prompt_tokens)
    timed: dict[str, Any] = {}
    for key, stats in figures.items():
        timed[key] = stats.median
        timed[f"{key}_spread"] = stats.spread
    usage = resources.usage
    return Efficiency(
        load_s=load_s,
        size_bytes=backend.variant.size_bytes,
        bits_per_weight=backend.variant.bits_per_weight,
        **timed,
        peak_rss_mb=usage.peak_rss_mb,
        cpu_util_pct=usage.cpu_util_pct,
        **_gpu_figures(runs["gpu"]),
        noisy=[key for key, stats in figures.items() if stats.noisy],
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        repetitions=repetitions,
    )


def _timed_runs(backend: Backend, draw, prompt_tokens: int, gen_tokens: int, repetitions: int) -> dict[str, list]:
    """The measured repetitions, prefill and decode alternating: TTFTs, decode speeds, ITL percentiles, GPU metrics."""
    gpu_index = _gpu_index(backend.device)
    runs: dict[str, list] = {"ttft_s": [], "decode_tok_s": [], "itl_ms": [], "gpu": []}
    for _ in range(repetitions):
        with _gpu_monitor(gpu_index) as gpu:
            runs["ttft_s"].append(_prefill_seconds(backend, draw(prompt_tokens)))
        runs["gpu"].append((gpu.metrics, None))
        with _gpu_monitor(gpu_index) as gpu:
            generation = _decode(backend, draw, gen_tokens)
        produced = len(generation.token_times_s)
        runs["decode_tok_s"].append(produced / (generation.token_times_s[-1] - generation.start_s))
        gaps_ms = 1000.0 * generation.inter_token_s
        runs["itl_ms"].append(np.percentile(gaps_ms, [50, 90, 99]) if len(gaps_ms) else np.full(3, np.nan))
        runs["gpu"].append((gpu.metrics, produced))
    return runs


def _timed_figures(runs: dict[str, list], prompt_tokens: int) -> dict[str, Stats]:
    ttft_s = runs["ttft_s"]
    figures = {
        "prefill_tok_s": Stats.from_values([prompt_tokens / s for s in ttft_s], "tok/s"),
        "decode_tok_s": Stats.from_values(runs["decode_tok_s"], "tok/s"),
        "ttft_ms": Stats.from_values([1000.0 * s for s in ttft_s], "ms"),
    }
    itl = np.asarray(runs["itl_ms"])  # (repetitions, 3): p50, p90, p99 of each decode run
    if np.isfinite(itl).all():  # gen_tokens == 1 has no gaps between tokens
        for column, key in enumerate(("itl_p50_ms", "itl_p90_ms", "itl_p99_ms")):
            figures[key] = Stats.from_values(itl[:, column], "ms")
    return figures


def _gpu_monitor(gpu_index: int | None):
    return GpuMonitor(gpu_index) if gpu_index is not None else _NoGpu()


class _NoGpu:
    """Stands in for ``GpuMonitor`` on a CPU device: no metrics."""

    metrics: dict[str, float] = {}

    def __enter__(self) -> "_NoGpu":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _gpu_figures(runs: list[tuple[dict[str, float], int | None]]) -> dict[str, Any]:
    """GPU peak memory (max), utilisation (median) and decode energy (median per run and per token); {} on CPU."""
    out: dict[str, Any] = {}
    peaks = [m["gpu_peak_mem_mb"] for m, _ in runs if "gpu_peak_mem_mb" in m]
    if peaks:
        out["gpu_peak_mem_mb"] = max(peaks)
    utils = [m["gpu_util_pct"] for m, _ in runs if "gpu_util_pct" in m]
    if utils:
        out["gpu_util_pct"] = float(np.median(utils))
    decode = [(m["energy_j"], n) for m, n in runs if n and "energy_j" in m]
    if decode:
        energy = Stats.from_values([e for e, _ in decode], "J")
        per_token = Stats.from_values([e / n for e, n in decode], "J/token")
        out["energy_j"], out["energy_j_spread"] = energy.median, energy.spread
        out["energy_per_token_j"], out["energy_per_token_j_spread"] = per_token.median, per_token.spread
    return out

