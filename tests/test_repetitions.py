"""The adaptive repetitions of the speed tests, on a backend that advances a fake clock by scripted durations.

Each test knows the exact round at which the loop must stop: because the
intervals reach the precision target, because the next round would end past
the time budget, or at the maximum count; and what the CPU energy is when a
fake powercap tree counts each run's joules.
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from fakes import TimingOnlyBackend, fake_variant

from harness.backends.base import Generation
from harness.measure.efficiency import (
    LONG_PREFILL_S,
    WARMUP_PROBE_TOKENS,
    RepetitionPlan,
    measure_efficiency,
)

PROMPT_TOKENS = 100
GEN_TOKENS = 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockedBackend(TimingOnlyBackend):
    """A prefill of ``PROMPT_TOKENS`` takes ``prefill_s`` (others in proportion); each decode runs at the next
    speed of ``decode_tok_s`` (cycled).

    Every call moves the shared fake clock to its last token's stamp, so the
    loop's budget sees the scripted durations; ``on_run(kind, produced)`` lets
    a test count energy per run. ``calls`` records "prefill" or "decode" per call.
    """

    runtime = "clocked"

    def __init__(self, clock: FakeClock, prefill_s: float, decode_tok_s: list[float],
                 on_run: Callable[[str, int], None] | None = None):
        super().__init__(fake_variant("clocked-fp32"))
        self.clock = clock
        self.prefill_s = prefill_s
        self.speeds = cycle(decode_tok_s)
        self.on_run = on_run
        self.calls: list[str] = []
        self.prompt_lengths: list[int] = []

    def generate(self, prompt_ids, max_new_tokens: int) -> Generation:
        start = self.clock.now
        kind = "prefill" if len(prompt_ids) > 1 else "decode"
        self.prompt_lengths.append(len(prompt_ids))
        if kind == "prefill":
            times = [start + self.prefill_s * len(prompt_ids) / PROMPT_TOKENS] * max_new_tokens
        else:
            step = 1.0 / next(self.speeds)
            times = [start + (i + 1) * step for i in range(max_new_tokens)]
        self.clock.now = times[-1]
        self.calls.append(kind)
        if self.on_run is not None:
            self.on_run(kind, max_new_tokens)
        return Generation(list(range(max_new_tokens)), start, times)


def measure(backend: ClockedBackend, **kwargs: Any):
    options = dict(warmup=0, repetitions=3, max_repetitions=30, precision_target_pct=3.0, budget_s=1000.0,
                   token_pool=np.arange(50), clock=backend.clock, powercap_root=Path("/nonexistent/powercap"))
    options.update(kwargs)
    return measure_efficiency(backend, PROMPT_TOKENS, GEN_TOKENS, **options)


def test_decode_repeats_until_its_interval_is_within_the_target_while_a_precise_prefill_stops_at_the_minimum():
    # Decode speeds 100, 80, 120, then 100 for good. Up to 6 runs the 80 and the 120 stay inside the median's
    # bootstrap interval ([90, 110] at 6: 10 % wide); at 7 each is drawn 4 times in 7 only 1 % of the time,
    # so the interval is [100, 100].
    backend = ClockedBackend(FakeClock(), prefill_s=0.5, decode_tok_s=[100.0, 80.0, 120.0] + [100.0] * 50)
    eff = measure(backend)
    assert backend.calls == ["prefill", "decode"] * 3 + ["decode"] * 4
    assert eff.repetitions == 7
    assert eff.repetition_values["decode_tok_s"] == pytest.approx([100, 80, 120, 100, 100, 100, 100])
    assert eff.repetition_values["prefill_tok_s"] == pytest.approx([200.0] * 3)
    assert eff.decode_tok_s == pytest.approx(100.0) and eff.decode_tok_s_ci == pytest.approx([100.0, 100.0])
    assert eff.decode_tok_s_spread == pytest.approx([80.0, 120.0])
    assert eff.noisy == [] and eff.precision_target_pct == 3.0
    assert eff.speed_wall_s == pytest.approx(3 * 0.5 + 0.1 + 0.125 + 1 / 12 + 4 * 0.1)


def test_the_next_round_starts_only_when_it_is_expected_to_end_within_the_budget():
    # Warm-up: probe 1.28 s (64 of 100 tokens) + prefill 2 s + decode at 10 tok/s (1 s) = 4.28 s.
    # Rounds: 2 + 2 (5 tok/s), 2 + 1, 2 + 2 -> 15.28 s. Prefill is constant, so only decode goes on:
    # expected 5/3 s -> 16.9 <= 18.28, runs (1 s) -> 16.28; expected 6/4 -> 17.78, runs (2 s) -> 18.28;
    # expected 8/5 -> 19.88 > 18.28: stop.
    backend = ClockedBackend(FakeClock(), prefill_s=2.0, decode_tok_s=[10.0, 5.0])
    eff = measure(backend, warmup=1, budget_s=18.28)
    assert backend.calls == ["prefill"] + ["prefill", "decode"] * 4 + ["decode"] * 2
    assert eff.repetitions == 5 and len(eff.repetition_values["prefill_tok_s"]) == 3
    assert eff.repetition_values["decode_tok_s"] == pytest.approx([5, 10, 5, 10, 5])
    assert eff.speed_wall_s == pytest.approx(18.28)
    assert "decode_tok_s" in eff.noisy and "prefill_tok_s" not in eff.noisy


def test_a_budget_shorter_than_the_minimum_still_runs_the_minimum_and_nothing_more():
    # The torch-bf16 case: a 7-second prefill on a CPU without native bf16 runs its 3 repetitions, no more.
    backend = ClockedBackend(FakeClock(), prefill_s=7.0, decode_tok_s=[10.0, 5.0])
    eff = measure(backend, warmup=1, budget_s=1.0)
    assert backend.calls == ["prefill", "decode"] * 4  # the warm-up's probe projects 7 s: no full-prompt warm-up
    assert eff.repetitions == 3 and "decode_tok_s" in eff.noisy and "prefill_tok_s" not in eff.noisy
    # The probe (64 of 100 tokens), the warm-up decode and 3 rounds, past the budget.
    assert eff.speed_wall_s == pytest.approx(0.64 * 7.0 + 1 + 3 * 7.0 + (2 + 1 + 2))


@pytest.mark.parametrize("prefill_s, warm_up_prompts", [
    (1.0, [WARMUP_PROBE_TOKENS, PROMPT_TOKENS, 1]),  # projected 1 s: the full prompt too, its first-call costs paid
    (LONG_PREFILL_S * 0.99, [WARMUP_PROBE_TOKENS, PROMPT_TOKENS, 1]),
    (LONG_PREFILL_S, [WARMUP_PROBE_TOKENS, 1]),  # projected long: they are small beside one run, so skipped
])
def test_the_warm_up_probes_the_prefill_and_runs_the_full_prompt_only_when_it_is_not_long(prefill_s, warm_up_prompts):
    backend = ClockedBackend(FakeClock(), prefill_s=prefill_s, decode_tok_s=[100.0])
    eff = measure(backend, warmup=1, max_repetitions=3)
    warm_up = len(warm_up_prompts)
    assert backend.prompt_lengths[:warm_up] == warm_up_prompts
    assert backend.prompt_lengths[warm_up:] == [PROMPT_TOKENS, 1] * 3  # the measured rounds are untouched
    assert eff.repetition_values["ttft_ms"] == pytest.approx([1000 * prefill_s] * 3)


def test_two_warm_ups_each_probe_and_a_prompt_no_longer_than_the_probe_is_warmed_once():
    backend = ClockedBackend(FakeClock(), prefill_s=1.0, decode_tok_s=[100.0])
    measure(backend, warmup=2, max_repetitions=3)
    assert backend.prompt_lengths[:6] == [WARMUP_PROBE_TOKENS, PROMPT_TOKENS, 1] * 2
    short = ClockedBackend(FakeClock(), prefill_s=1.0, decode_tok_s=[100.0])
    measure_efficiency(short, 16, GEN_TOKENS, warmup=1, repetitions=3, max_repetitions=3, token_pool=np.arange(50),
                       clock=short.clock, powercap_root=Path("/nonexistent/powercap"))
    assert short.prompt_lengths == [16, 1] + [16, 1] * 3  # the probe is the whole prompt


def test_the_maximum_count_ends_a_test_that_never_gets_precise():
    backend = ClockedBackend(FakeClock(), prefill_s=0.5, decode_tok_s=[50.0, 100.0])
    eff = measure(backend, max_repetitions=6)
    assert backend.calls == ["prefill", "decode"] * 3 + ["decode"] * 3
    assert eff.repetitions == 6 and len(eff.repetition_values["decode_tok_s"]) == 6
    assert eff.noisy == ["decode_tok_s", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms"]


def test_a_fixed_count_when_the_maximum_is_the_minimum():
    backend = ClockedBackend(FakeClock(), prefill_s=0.5, decode_tok_s=[50.0, 100.0])
    eff = measure(backend, repetitions=4, max_repetitions=4, precision_target_pct=0.0)
    assert backend.calls == ["prefill", "decode"] * 4 and eff.repetitions == 4


def test_the_plan_refuses_a_maximum_below_the_minimum_and_a_non_positive_budget():
    with pytest.raises(ValueError, match="max_repetitions"):
        RepetitionPlan(min_repetitions=5, max_repetitions=4)
    with pytest.raises(ValueError, match="budget_s"):
        RepetitionPlan(budget_s=0.0)


def test_cpu_energy_counts_the_timed_decode_runs_only_per_run_and_per_token(tmp_path):
    # One package whose counter starts 1 J below its range, so the first measured decode wraps it.
    package = tmp_path / "intel-rapl:0"
    package.mkdir()
    (package / "name").write_text("package-0\n")
    range_uj = 50_000_000
    (package / "max_energy_range_uj").write_text(f"{range_uj}\n")
    counter = {"uj": range_uj - 1_000_000}
    (package / "energy_uj").write_text(f"{counter['uj']}\n")
    decode_joules = iter([2.0, 3.0, 2.5])

    def on_run(kind: str, produced: int) -> None:
        joules = 40.0 if kind == "prefill" else next(decode_joules)  # prefill energy must not count
        counter["uj"] = (counter["uj"] + int(joules * 1e6)) % range_uj
        (package / "energy_uj").write_text(f"{counter['uj']}\n")

    backend = ClockedBackend(FakeClock(), prefill_s=0.5, decode_tok_s=[100.0], on_run=on_run)
    eff = measure(backend, max_repetitions=3, powercap_root=tmp_path)
    assert eff.repetition_values["cpu_energy_j"] == pytest.approx([2.0, 3.0, 2.5])
    assert eff.cpu_energy_j == pytest.approx(2.5) and eff.cpu_energy_j_spread == pytest.approx([2.0, 3.0])
    assert eff.cpu_energy_per_token_j == pytest.approx(0.25)
    assert eff.cpu_energy_per_token_j_ci == pytest.approx([0.2, 0.3])  # 3 runs: the range
    assert "cpu_energy_j" in eff.noisy  # [2, 3] is 20 % either side of 2.5


def test_cpu_energy_is_absent_not_zero_without_a_readable_powercap_tree():
    backend = ClockedBackend(FakeClock(), prefill_s=0.5, decode_tok_s=[100.0])
    eff = measure(backend)
    assert not [key for key in eff.to_dict() if "energy" in key]
    assert not [key for key in eff.repetition_values if "energy" in key]


def test_the_speed_settings_come_from_the_configuration_and_the_command_line():
    import inspect

    from harness import cli
    from harness.config import CompareConfig
    from harness.errors import UserError

    parameters = inspect.signature(measure_efficiency).parameters
    for parameter, setting in (("repetitions", "repetitions"), ("max_repetitions", "max_repetitions"),
                               ("precision_target_pct", "precision_target_pct"), ("budget_s", "speed_budget_s")):
        assert parameters[parameter].default == getattr(CompareConfig, setting), parameter
    args = cli.build_parser().parse_args(["compare", "--repetitions", "4", "--max-repetitions", "9",
                                          "--precision-target", "2.5%", "--speed-budget", "20"])
    config = cli.config_from_args(CompareConfig, args)
    assert (config.repetitions, config.max_repetitions, config.precision_target_pct, config.speed_budget_s) == (4, 9, 2.5, 20)
    with pytest.raises(UserError) as caught:
        CompareConfig(repetitions=8, max_repetitions=5)
    assert caught.value.for_cli().startswith("--max-repetitions 5: must be at least the minimum, repetitions=8")
