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

Warm-ups are run and discarded. Each is a full decode (a shorter decode
warm-up than the measured one left decode slower than llama-bench's) and a
prefill: first a ``WARMUP_PROBE_TOKENS`` prompt, which touches every weight
and times the prefill, then the full prompt, whose shape-specific first-call
costs (ORT's and torch's buffers: about 0.1 s on a 1-second prefill,
``benchmarks/bench_warmup.py``) would otherwise land in the first measured
prefill. The full prompt is skipped when the probe projects a prefill of at
least ``LONG_PREFILL_S``: such a cost is then under 3 % of one run, and the
skipped warm-up is the longest single step of the speed tests (torch bf16 on a
CPU without native bf16: 7 s).

The measured repetitions come in rounds of one prefill and one decode, so a
drift in machine speed touches both alike. After the minimum
(``repetitions``) a test runs again only while the 95 % interval of its speed
(``harness.stats``) is wider than the precision target, up to
``max_repetitions``; a round starts only when it is expected to end within
``budget_s`` of the speed tests' start, warm-ups included, judged by the mean
time each test's runs took so far. A cheap decode thus keeps repeating after
an expensive prefill has stopped.

Energy is read over each timed decode run: the GPU's from NVML on a CUDA
device, the CPU packages' from RAPL where the machine exposes it
(``harness.machine.energy``); either is absent, not zero, where it cannot be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness import defaults
from harness.backends.base import Backend
from harness.machine.energy import POWERCAP_ROOT, PackageEnergy
from harness.machine.monitor import GpuMonitor, ResourceMonitor
from harness.machine.nvml import cuda_index
from harness.results import Efficiency, Point
from harness.stats import Stats
from harness.text.tokenizer import speed_token_pool

DECODE_PROMPT_TOKENS = 1  # llama-bench tg: generation starts from an empty cache
WARMUP_PROBE_TOKENS = 64  # the warm-up's first prefill: its time projects the full prompt's
WARMUP_DECODE_STEPS = 2  # at an operating point, the warm-up's first decode: its time projects the full one's
LONG_PREFILL_S = 4.0  # a projected prefill this long skips the full-prompt warm-up (module docstring)
MAX_DECODE_ATTEMPTS = 5  # prompts to try when one ends in EOS before a second token

# Keys with a median over repetitions, hence a ``_spread``, a ``_ci`` and a place in ``noisy`` (energies too).
TIMED_KEYS = Efficiency.TIMED
TESTS = ("prefill", "decode")  # each repeats until its speed, prefill_tok_s or decode_tok_s, is precise


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


def warms_up_full_prompt(probe_s: float, probe_tokens: int, prompt_tokens: int) -> bool:
    """Whether the warm-up runs the full prompt after a ``probe_tokens`` probe that took ``probe_s``."""
    return probe_tokens < prompt_tokens and probe_s * prompt_tokens / probe_tokens < LONG_PREFILL_S


def _warm_up(backend: Backend, draw: Callable[[int], np.ndarray], prompt_tokens: int, gen_tokens: int) -> None:
    """One discarded warm-up: a probe prefill, the full prefill unless the probe projects a long one, a decode."""
    probe_tokens = min(WARMUP_PROBE_TOKENS, prompt_tokens)
    if warms_up_full_prompt(_prefill_seconds(backend, draw(probe_tokens)), probe_tokens, prompt_tokens):
        _prefill_seconds(backend, draw(prompt_tokens))
    _decode(backend, draw, gen_tokens)


@dataclass(frozen=True)
class RepetitionPlan:
    """How many measured repetitions each speed test gets: at least, at most, how precise, and in how long."""

    min_repetitions: int = defaults.REPETITIONS
    max_repetitions: int = defaults.MAX_REPETITIONS
    precision_target_pct: float = defaults.PRECISION_TARGET_PCT
    budget_s: float = defaults.SPEED_BUDGET_S

    def __post_init__(self) -> None:
        if not 1 <= self.min_repetitions <= self.max_repetitions:
            raise ValueError(f"need 1 <= repetitions={self.min_repetitions} <= max_repetitions={self.max_repetitions}")
        if self.precision_target_pct < 0 or self.budget_s <= 0:
            raise ValueError(f"precision_target_pct={self.precision_target_pct} must be >= 0 and "
                             f"budget_s={self.budget_s} > 0")


def _prompt_drawer(pool, seed: int) -> Callable[[int], np.ndarray]:
    """``draw(n)``: n token ids from ``pool``, a fresh random prompt each call (no prefix cache can serve it)."""
    ids, rng = np.asarray(pool), np.random.default_rng(seed)
    return lambda n: rng.choice(ids, size=n).astype(np.int64)


def measure_efficiency(
    backend: Backend,
    prompt_tokens: int = defaults.PROMPT_TOKENS,
    gen_tokens: int = defaults.GEN_TOKENS,
    warmup: int = defaults.WARMUP,
    repetitions: int = defaults.REPETITIONS,
    seed: int = 0,
    *,
    max_repetitions: int = defaults.MAX_REPETITIONS,
    precision_target_pct: float = defaults.PRECISION_TARGET_PCT,
    budget_s: float = defaults.SPEED_BUDGET_S,
    load_s: float | None = None,
    token_pool: np.ndarray | None = None,
    clock: Callable[[], float] = time.perf_counter,
    powercap_root: str | Path = POWERCAP_ROOT,
) -> Efficiency:
    """The efficiency of a loaded ``backend``.

    ``repetitions`` is the minimum number of measured runs of each test; more
    follow as the module docstring says (pass ``max_repetitions=repetitions``
    for a fixed count). ``load_s`` is the cold load time the caller measured
    (``load_seconds``). ``peak_rss_mb`` is the process's peak since it
    started, so call this before the accuracy pass in a fresh child: the
    figure is then the load plus the inference of this variant.
    ``token_pool`` overrides the ids drawn from the variant's tokenizer;
    ``powercap_root`` is where the CPU energy counters are read (``harness.machine.energy``).
    """
    if prompt_tokens < 1 or gen_tokens < 1 or warmup < 0:
        raise ValueError(f"prompt_tokens={prompt_tokens} and gen_tokens={gen_tokens} must be at least 1, "
                         f"warmup={warmup} at least 0")
    plan = RepetitionPlan(repetitions, max_repetitions, precision_target_pct, budget_s)
    draw = _prompt_drawer(speed_token_pool(backend.variant.tokenizer_path) if token_pool is None else token_pool, seed)

    def prefill() -> float:
        return _prefill_seconds(backend, draw(prompt_tokens))

    def decode() -> tuple[float, list[float], int]:
        generation = _decode(backend, draw, gen_tokens)
        return generation.start_s, generation.token_times_s, 1

    start = clock()
    for _ in range(warmup):
        _warm_up(backend, draw, prompt_tokens, gen_tokens)
    tests = _Tests(prefill, decode, prompt_tokens)
    return _timed(backend, tests, plan, start, load_s, prompt_tokens, gen_tokens, clock, powercap_root)


def measure_point(
    backend: Backend,
    point: Point,
    warmup: int = defaults.WARMUP,
    repetitions: int = defaults.REPETITIONS,
    seed: int = 0,
    *,
    max_repetitions: int = defaults.MAX_REPETITIONS,
    precision_target_pct: float = defaults.PRECISION_TARGET_PCT,
    budget_s: float = defaults.SPEED_BUDGET_S,
    load_s: float | None = None,
    token_pool: np.ndarray | None = None,
    clock: Callable[[], float] = time.perf_counter,
    powercap_root: str | Path = POWERCAP_ROOT,
) -> Efficiency:
    """The efficiency of a loaded ``backend`` at an operating point (``harness.results.Point``).

    Each sequence's cache is filled with the same ``point.depth`` random tokens once, untimed (llama-bench's
    ``-d``; computed once and copied into every sequence's own cache); every test then runs on top of it and
    leaves it at the depth again. Prefill: ``point.batch``
    prompts of ``point.prompt`` tokens, prefilled together to their first tokens; its speed is all their
    tokens over that time (llama-batched-bench's S_PP). Decode: one token per sequence, then
    ``point.gen`` steps of all sequences at once; its speed is every sequence's tokens over the time
    (S_TG), ``decode_seq_tok_s`` one sequence's share. Repetitions and the budget are as for the run's own
    point (``measure_efficiency``), the warm-ups as ``_warm_up_point`` says; the threads are the backend's.
    """
    if point.prompt < 1 or point.gen < 1 or point.batch < 1 or point.depth < 0 or warmup < 0:
        raise ValueError(f"{point}: prompt, gen and batch must be at least 1, depth and warmup={warmup} at least 0")
    plan = RepetitionPlan(repetitions, max_repetitions, precision_target_pct, budget_s)
    draw = _prompt_drawer(speed_token_pool(backend.variant.tokenizer_path) if token_pool is None else token_pool, seed)
    rows = point.batch

    def prefill(tokens: int = point.prompt) -> float:
        return backend.generate_batch(draw(rows * tokens).reshape(rows, -1), 1).ttft_s

    def decode(steps: int = point.gen) -> tuple[float, list[float], int]:
        generation = backend.generate_batch(draw(rows).reshape(rows, 1), steps)
        return generation.start_s, generation.step_times_s, rows

    # One depth for every sequence: the runtime fills it once and copies it into each sequence's own cache,
    # so a deep point's untimed fill costs one sequence's prefill, not batch of them.
    backend.start_batch(np.repeat(draw(point.depth)[None, :], rows, axis=0), max(point.prompt, point.gen) + 1)
    tests = _Tests(prefill, decode, rows * point.prompt)
    start = clock()
    for _ in range(warmup):
        _warm_up_point(prefill, decode, point)
    efficiency = _timed(backend, tests, plan, start, load_s, point.prompt, point.gen, clock, powercap_root)
    kv_bytes = backend.kv_cache_bytes()
    return replace(efficiency, decode_seq_tok_s=efficiency.decode_tok_s / rows if efficiency.decode_tok_s else None,
                   kv_cache_mb=kv_bytes / 1e6 if kv_bytes else None)


def _warm_up_point(prefill, decode, point: Point) -> None:
    """The run's own warm-up, at a point: a probe prefill, the full one unless the probe projects a long one
    (``warms_up_full_prompt``), then a two-step decode and the full one unless it projects a long one. At a
    deep cache of many sequences each full warm-up would take tens of seconds, under 3 % of a run there."""
    probe_tokens = min(WARMUP_PROBE_TOKENS, point.prompt)
    if warms_up_full_prompt(prefill(probe_tokens), probe_tokens, point.prompt):
        prefill()
    probe_steps = min(WARMUP_DECODE_STEPS, point.gen)
    start_s, step_times_s, _ = decode(probe_steps)
    if warms_up_full_prompt(step_times_s[-1] - start_s, probe_steps, point.gen):
        decode()


def _timed(backend: Backend, tests: "_Tests", plan: RepetitionPlan, start: float, load_s: float | None,
           prompt_tokens: int, gen_tokens: int, clock, powercap_root) -> Efficiency:
    """The measured rounds of ``tests`` after the warm-ups that began at ``start``, as an Efficiency."""
    runs = _Runs(backend, tests, PackageEnergy(powercap_root), clock)
    with ResourceMonitor(clock=clock) as resources:
        runs.repeat(plan, start)
    speed_wall_s = clock() - start
    values = runs.figure_values()
    figures = {key: Stats.from_values(v, unit) for key, (v, unit) in values.items()}
    usage = resources.usage
    return Efficiency(
        load_s=load_s,
        size_bytes=backend.variant.size_bytes,
        bits_per_weight=backend.variant.bits_per_weight,
        **_schema_figures(figures),
        peak_rss_mb=usage.peak_rss_mb,
        cpu_util_pct=usage.cpu_util_pct,
        **_gpu_resources(runs.gpu),
        noisy=[key for key, stats in figures.items() if not stats.within(plan.precision_target_pct)],
        precision_target_pct=plan.precision_target_pct,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        repetitions=runs.rounds,
        speed_wall_s=speed_wall_s,
        repetition_values={key: [float(x) for x in v] for key, (v, _) in values.items()},
    )


@dataclass(frozen=True)
class _Tests:
    """The two speed tests of a point: ``prefill()`` -> its seconds to the first tokens, of ``prefill_tokens``
    prompt tokens in all; ``decode()`` -> (clock at submission, clock per step, sequences per step)."""

    prefill: Callable[[], float]
    decode: Callable[[], tuple[float, list[float], int]]
    prefill_tokens: int


def _schema_figures(figures: dict[str, Stats]) -> dict[str, Any]:
    """Each figure's median, ``_spread`` and ``_ci``, as the schema names them."""
    out: dict[str, Any] = {}
    for key, stats in figures.items():
        out.update({key: stats.median, f"{key}_spread": stats.spread, f"{key}_ci": stats.interval})
    return out


class _Runs:
    """The measured runs of both tests, in rounds, and what each produced."""

    def __init__(self, backend: Backend, tests: _Tests, packages: PackageEnergy, clock):
        self.tests, self.clock = tests, clock
        self.prefill_tokens = tests.prefill_tokens
        self.packages = packages
        self.gpu_index = cuda_index(backend.device)
        self.seconds: dict[str, list[float]] = {test: [] for test in TESTS}  # wall time of each run, to plan ahead
        self.ttft_s: list[float] = []
        self.decode_tok_s: list[float] = []
        self.itl_ms: list[np.ndarray] = []  # per decode run: p50, p90, p99 of its gaps
        self.gpu: list[tuple[dict[str, float], int | None]] = []  # (metrics, tokens produced or None for prefill)
        self.cpu_energy: list[tuple[float, int]] = []  # (joules, tokens produced) per decode run
        self.rounds = 0

    def _count(self, test: str) -> int:
        return len(self.seconds[test])

    def _stop_values(self, test: str) -> list[float]:
        return [self.prefill_tokens / s for s in self.ttft_s] if test == "prefill" else self.decode_tok_s

    def needs(self, test: str, plan: RepetitionPlan) -> bool:
        """Whether ``test`` runs again: below the minimum, or below the maximum and not yet precise."""
        n = self._count(test)
        if n < plan.min_repetitions:
            return True
        if n >= plan.max_repetitions:
            return False
        return not Stats.from_values(self._stop_values(test), "").within(plan.precision_target_pct)

    def repeat(self, plan: RepetitionPlan, start: float) -> None:
        """Rounds of the tests that still need runs, until none does or the next round would end past the budget."""
        while True:
            todo = [test for test in TESTS if self.needs(test, plan)]
            if not todo:
                return
            past_minimum = all(self._count(test) >= plan.min_repetitions for test in TESTS)
            expected_s = sum(float(np.mean(self.seconds[test])) for test in todo) if past_minimum else 0.0
            if past_minimum and self.clock() - start + expected_s > plan.budget_s:
                return
            self.rounds += 1
            for test in todo:
                run = self._prefill if test == "prefill" else self._decode
                t0 = self.clock()
                run()
                self.seconds[test].append(self.clock() - t0)

    def _prefill(self) -> None:
        with _gpu_monitor(self.gpu_index) as gpu:
            self.ttft_s.append(self.tests.prefill())
        self.gpu.append((gpu.metrics, None))

    def _decode(self) -> None:
        with _gpu_monitor(self.gpu_index) as gpu, self.packages.measure() as cpu:
            start_s, step_times_s, sequences = self.tests.decode()
        produced = len(step_times_s) * sequences
        self.decode_tok_s.append(produced / (step_times_s[-1] - start_s))
        gaps_ms = 1000.0 * np.diff(step_times_s)
        self.itl_ms.append(np.percentile(gaps_ms, [50, 90, 99]) if len(gaps_ms) else np.full(3, np.nan))
        self.gpu.append((gpu.metrics, produced))
        if "cpu_energy_j" in cpu.metrics:
            self.cpu_energy.append((cpu.metrics["cpu_energy_j"], produced))

    def figure_values(self) -> dict[str, tuple[list[float], str]]:
        """Each repeated figure's measured values and unit; ITL only with gaps, energies only where read."""
        figures = {
            "prefill_tok_s": ([self.prefill_tokens / s for s in self.ttft_s], "tok/s"),
            "decode_tok_s": (list(self.decode_tok_s), "tok/s"),
            "ttft_ms": ([1000.0 * s for s in self.ttft_s], "ms"),
        }
        itl = np.asarray(self.itl_ms)  # (decode runs, 3): p50, p90, p99 of each
        if np.isfinite(itl).all():  # gen_tokens == 1 has no gaps between tokens
            for column, key in enumerate(("itl_p50_ms", "itl_p90_ms", "itl_p99_ms")):
                figures[key] = (itl[:, column].tolist(), "ms")
        gpu_energy = [(m["energy_j"], n) for m, n in self.gpu if n and "energy_j" in m]
        for prefix, measured in (("", gpu_energy), ("cpu_", self.cpu_energy)):
            if measured:
                figures[f"{prefix}energy_j"] = ([e for e, _ in measured], "J")
                figures[f"{prefix}energy_per_token_j"] = ([e / n for e, n in measured], "J/token")
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


def _gpu_resources(runs: list[tuple[dict[str, float], int | None]]) -> dict[str, Any]:
    """GPU peak memory (max over runs) and utilisation (median); {} on a CPU."""
    out: dict[str, Any] = {}
    peaks = [m["gpu_peak_mem_mb"] for m, _ in runs if "gpu_peak_mem_mb" in m]
    if peaks:
        out["gpu_peak_mem_mb"] = max(peaks)
    utils = [m["gpu_util_pct"] for m, _ in runs if "gpu_util_pct" in m]
    if utils:
        out["gpu_util_pct"] = float(np.median(utils))
    return out
