"""Resource trackers and the efficiency measurement, on fake backends (the real runtimes run in benchmarks/)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fakes import FakeBackend, TimingOnlyBackend, fake_variant

from harness.backends.base import Generation
from harness.config import CompareConfig
from harness.machine.monitor import GpuMonitor, ResourceMonitor, nvml_available
from harness.measure.efficiency import TIMED_KEYS, load_seconds, measure_efficiency
from harness.run.local import run_in_child
from harness.text.tokenizer import speed_token_pool

EXTRA_MB = 500
NO_POWERCAP = "/nonexistent/powercap"  # the CPU energy figures are absent whatever this machine exposes


# ---- child targets ----------------------------------------------------------------------------
def allocate_and_touch(extra_mb: int) -> dict:
    """Peak RSS seen while holding ``extra_mb`` of touched memory, in a fresh process."""
    with ResourceMonitor() as monitor:
        block = np.ones(extra_mb * 2**20, dtype=np.uint8)  # ones, not zeros: every page is written
        time.sleep(0.2)  # long enough for several samples at >= 100 Hz
        del block
    usage = monitor.usage
    return {
        "baseline": usage.baseline_rss_mb,
        "sampled": usage.sampled_peak_rss_mb,
        "os": usage.os_peak_rss_mb,
        "peak": usage.peak_rss_mb,
        "samples": usage.samples,
    }


def cpu_usage(busy: bool) -> float:
    with ResourceMonitor() as monitor:
        end = time.perf_counter() + 0.3
        while busy and time.perf_counter() < end:
            pass
        if not busy:
            time.sleep(0.3)
    return monitor.usage.cpu_util_pct


# ---- memory and CPU ---------------------------------------------------------------------------
def test_peak_rss_of_a_child_that_touches_500_mb_shows_them_sampled_and_by_the_os():
    outcome = run_in_child(allocate_and_touch, (EXTRA_MB,), timeout_s=120)
    assert outcome.ok, outcome.traceback
    usage = outcome.value
    assert usage["sampled"] - usage["baseline"] >= 0.9 * EXTRA_MB, usage
    assert usage["os"] - usage["baseline"] >= 0.9 * EXTRA_MB, usage
    assert usage["peak"] >= usage["sampled"] and usage["peak"] >= usage["os"]
    assert usage["samples"] >= 5  # the sampler ran during the block, not just at its ends


def test_cpu_utilisation_is_high_for_a_busy_loop_and_near_zero_for_a_sleep():
    busy = run_in_child(cpu_usage, (True,), timeout_s=60).value
    idle = run_in_child(cpu_usage, (False,), timeout_s=60).value
    assert idle < 15.0
    assert busy > idle + 15.0


def test_monitor_stops_its_sampler_and_records_usage_when_the_block_raises():
    monitor = ResourceMonitor()
    with pytest.raises(KeyError):
        with monitor:
            raise KeyError("boom")
    assert monitor.usage is not None and monitor.usage.samples >= 1
    assert not monitor._sampler._thread.is_alive()


@pytest.mark.skipif(nvml_available(), reason="this machine has an NVIDIA GPU")
def test_gpu_monitor_without_nvidia_driver_yields_no_keys_not_zeros():
    with GpuMonitor(0) as gpu:
        pass
    assert gpu.metrics == {}


# ---- efficiency -------------------------------------------------------------------------------
class ScriptedBackend(TimingOnlyBackend):
    """Generations with scripted clock stamps, so throughput and latency have exact expected values.

    Each ``generate`` call takes the next seconds-per-token from ``step_s``; a
    prompt costs ``prompt_s_per_token`` each; it stops after ``stop_after`` tokens.
    """

    runtime = "scripted"

    def __init__(self, step_s: list[float], prompt_s_per_token: float = 0.001, stop_after: int | None = None):
        super().__init__(fake_variant("scripted-fp32", size_bytes=1234, bits_per_weight=4.5))
        self.step_s = step_s
        self.prompt_s_per_token = prompt_s_per_token
        self.stop_after = stop_after
        self.calls = 0
        self.prompts: list[np.ndarray] = []
        self.budgets: list[int] = []  # max_new_tokens of each call

    def generate(self, prompt_ids, max_new_tokens: int) -> Generation:
        step = self.step_s[self.calls % len(self.step_s)]
        self.calls += 1
        self.prompts.append(np.asarray(prompt_ids))
        self.budgets.append(max_new_tokens)
        n = min(max_new_tokens, self.stop_after or max_new_tokens)
        first = len(prompt_ids) * self.prompt_s_per_token if len(prompt_ids) > 1 else step
        times = [100.0 + first + i * step for i in range(n)]
        return Generation(list(range(n)), 100.0, times)


def test_efficiency_formulas_on_scripted_stamps():
    # Calls alternate prefill (generate(prompt, 1)) and decode; warmup=0 so every call is measured.
    backend = ScriptedBackend(step_s=[0.01, 0.01, 0.01, 0.02, 0.01, 0.01], prompt_s_per_token=0.002)
    eff = measure_efficiency(backend, prompt_tokens=100, gen_tokens=8, warmup=0, repetitions=3, max_repetitions=3,
                             token_pool=np.arange(50), powercap_root=NO_POWERCAP)
    assert eff.prefill_tok_s == pytest.approx(500.0)  # 100 tokens in 0.2 s
    assert eff.ttft_ms == pytest.approx(200.0) and eff.ttft_ms_ci == pytest.approx([200.0, 200.0])
    # Decode runs at 10 ms, 20 ms, 10 ms a token: 8 tokens from a one-token prompt take 8 steps.
    assert eff.repetition_values["decode_tok_s"] == pytest.approx([100.0, 50.0, 100.0])
    assert eff.decode_tok_s == pytest.approx(100.0)
    assert eff.decode_tok_s_spread == pytest.approx([50.0, 100.0])
    assert eff.decode_tok_s_ci == pytest.approx([50.0, 100.0])  # 3 repetitions: the bootstrap gives the range
    assert eff.itl_p50_ms == pytest.approx(10.0) and eff.itl_p99_ms_spread == pytest.approx([10.0, 20.0])
    # The target is missed where the interval is wider than 3 % of the median: 25 % for decode.
    assert eff.noisy == ["decode_tok_s", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms"]
    assert (eff.precision_target_pct, eff.repetitions) == (3.0, 3)
    assert (eff.size_bytes, eff.bits_per_weight, eff.load_s) == (1234, 4.5, None)


def test_decode_counts_the_tokens_actually_produced_when_eos_stops_early():
    backend = ScriptedBackend(step_s=[0.01], stop_after=4)
    eff = measure_efficiency(backend, prompt_tokens=16, gen_tokens=128, warmup=0, repetitions=2, token_pool=np.arange(50))
    assert eff.decode_tok_s == pytest.approx(100.0)  # 4 tokens in 40 ms, not 128 in 40 ms


def test_each_repetition_draws_a_fresh_prompt_of_allowed_ids_only_after_discarded_warmups():
    backend = ScriptedBackend(step_s=[0.01])
    pool = np.array([3, 7, 11, 19])
    measure_efficiency(backend, prompt_tokens=64, gen_tokens=4, warmup=2, repetitions=5, token_pool=pool)
    assert backend.calls == 2 * (2 + 5)
    long_prompts = [p for p in backend.prompts if len(p) == 64]
    assert len(long_prompts) == 7 and len({p.tobytes() for p in long_prompts}) == 7  # no prefix cache can help
    assert all(np.isin(p, pool).all() for p in backend.prompts)
    assert sorted(len(p) for p in backend.prompts).count(1) == 7  # decode starts from one token, as llama-bench tg
    assert backend.budgets == [1, 4] * 7  # warm-ups and measured runs alike: a full prefill and a full decode


def test_efficiency_of_a_fake_backend_has_every_schema_key_with_spreads_and_no_gpu_keys():
    backend = FakeBackend(vocab_size=16, seed=3)
    load_s = load_seconds(backend)
    eff = measure_efficiency(backend, prompt_tokens=32, gen_tokens=8, warmup=1, repetitions=5, load_s=load_s,
                             token_pool=np.arange(16), powercap_root=NO_POWERCAP)
    for key in ("load_s", "size_bytes", "bits_per_weight", "peak_rss_mb", "cpu_util_pct", "speed_wall_s", *TIMED_KEYS):
        assert isinstance(getattr(eff, key), (int, float)) and getattr(eff, key) >= 0, key
    for key in TIMED_KEYS:
        low, high = getattr(eff, f"{key}_spread")
        ci_low, ci_high = getattr(eff, f"{key}_ci")
        assert low <= ci_low <= getattr(eff, key) <= ci_high <= high, key
        assert len(eff.repetition_values[key]) >= 5, key
    assert 5 <= eff.repetitions <= CompareConfig.max_repetitions
    assert set(eff.noisy) <= set(TIMED_KEYS)
    assert eff.itl_p50_ms <= eff.itl_p90_ms <= eff.itl_p99_ms
    assert not [k for k in eff.to_dict() if k.startswith(("gpu_", "energy", "cpu_energy"))]
    assert eff.peak_rss_mb > 10  # this process's own RSS at least: the OS high-water mark was read


def test_speed_token_pool_leaves_out_special_tokens_of_tokenizer_json_and_gguf(tmp_path):
    from tokenizers import AddedToken, Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"<eos>": 0, "x": 1, "y": 2, "z": 3}, unk_token="x"))
    tokenizer.add_special_tokens([AddedToken("<eos>", special=True)])
    tokenizer.add_tokens(["zz"])  # an added token that is text, not special
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert speed_token_pool(tmp_path).tolist() == [1, 2, 3, 4]

    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_token_list(["a", "<unk>", "<s>", "b", "<0x0A>"])
    writer.add_token_types([1, 2, 3, 4, 6])  # normal, unknown, control, user-defined, byte
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert speed_token_pool(tmp_path / "m.gguf").tolist() == [0, 3, 4]
