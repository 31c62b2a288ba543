"""The configuration is the one home of every default, and the command line is derived from it."""

from __future__ import annotations

import dataclasses

import pytest

from harness import cli
from harness.backends.llamacpp.config import LlamaCppSettings
from harness.config import DEFAULT_MAX_TOKENS, CompareConfig, PrepareConfig, same_named
from harness.errors import UserError, flag_name


def parse(*argv: str):
    args = cli.build_parser().parse_args(argv)
    config_class = CompareConfig if args.command == "compare" else PrepareConfig
    return cli.config_from_args(config_class, args)


def test_no_flags_give_exactly_the_configurations_defaults():
    assert parse("compare") == CompareConfig()
    assert parse("prepare") == PrepareConfig()


def test_every_field_has_help_and_a_flag():
    compare_help = cli.build_parser()._subparsers._group_actions[0].choices["compare"].format_help()
    for f in dataclasses.fields(CompareConfig):
        assert f.metadata.get("help"), f.name
        if not f.metadata.get("runtime_settings"):
            assert f"{flag_name(f.name)} " in compare_help, f.name
    for inner in dataclasses.fields(LlamaCppSettings):
        assert inner.metadata.get("help"), inner.name
        assert f"--llamacpp-{inner.name.replace('_', '-')}" in compare_help


def test_flags_reach_the_configuration_runtime_settings_included():
    config = parse("compare", "--ctx", "256", "--variants", "llamacpp-q8_0, ort-int4", "--max-ppl-increase", "2.5%",
                   "--memory-budget", "2GB", "--llamacpp-type-k", "q8_0", "--no-llamacpp-flash-attn",
                   "--torch-attn-implementation", "eager")
    assert config.ctx == 256 and config.variants == ("llamacpp-q8_0", "ort-int4")
    assert config.max_ppl_increase_pct == 2.5 and config.memory_budget_mb == 2048.0
    assert config.llamacpp == LlamaCppSettings(type_k="q8_0", flash_attn=False)
    assert config.torch.attn_implementation == "eager"
    assert config.runtime_settings_dicts()["llamacpp"]["type_k"] == "q8_0"


def test_the_token_budget_defaults_only_when_no_budget_is_given():
    assert CompareConfig().token_budget == DEFAULT_MAX_TOKENS
    assert CompareConfig(max_chunks=40).token_budget is None  # 40 chunks, not the default's 2
    assert CompareConfig(full=True).token_budget is None
    assert CompareConfig(max_tokens=1000, max_chunks=40).token_budget == 1000


@pytest.mark.parametrize("changes, setting, flag", [
    ({"ctx": 1}, "ctx", "--ctx"), ({"warmup": -1}, "warmup", "--warmup"),
    ({"repetitions": 0}, "repetitions", "--repetitions"), ({"threads": 0}, "threads", "--threads"),
    ({"memory_budget_mb": 0.0}, "memory_budget_mb", "--memory-budget"), ({"timeout_s": 0}, "timeout_s", "--timeout"),
    ({"precision_target_pct": -1.0}, "precision_target_pct", "--precision-target"), ({"variants": ()}, "variants", "--variants")])
def test_a_bad_value_names_its_setting_and_the_cli_its_flag(changes, setting, flag):
    with pytest.raises(UserError) as caught:
        CompareConfig(**changes)
    assert caught.value.setting == setting
    assert caught.value.for_cli().startswith(f"{flag} ")


def test_library_defaults_are_the_configurations():
    """Functions that take a budget default to the configuration's value, not a number of their own."""
    import inspect

    from harness.measure import accuracy, efficiency
    from harness.run import local as runner

    signature = inspect.signature(efficiency.measure_efficiency).parameters
    for name in ("prompt_tokens", "gen_tokens", "warmup", "repetitions"):
        assert signature[name].default == getattr(CompareConfig, name), name
    assert accuracy.DEFAULT_MAX_NEW_TOKENS == CompareConfig.agreement_tokens
    assert runner.DEFAULT_TIMEOUT_S == CompareConfig.timeout_s


def test_what_the_command_hands_on_keeps_the_configurations_names():
    """RunSettings and MeasureInputs are filled by name (config.same_named): each of their settings is a field of
    the configuration under the same name, unit included, so none is silently left unset."""
    from harness.measure.variant import MeasureInputs
    from harness.results import RunSettings

    configured = {f.name for f in dataclasses.fields(CompareConfig)}
    given = {"max_tokens", "runtimes"}  # derived by the command: the token budget, each runtime's settings as a dict
    assert {f.name for f in dataclasses.fields(RunSettings)} - given <= configured
    per_model = {"reference", "windows", "text", "prompts", "token_pool", "runtime_settings", "variant_settings"}
    assert {f.name for f in dataclasses.fields(MeasureInputs)} - per_model <= configured
    settings = same_named(RunSettings, CompareConfig(timeout_s=30, speed_budget_s=4), max_tokens=None, runtimes={})
    assert (settings.timeout_s, settings.speed_budget_s, settings.precision_target_pct) == (30, 4, 3.0)


def test_a_runtime_setting_from_the_command_line_reaches_the_backend_and_the_row(prepared, tmp_path):
    """--llamacpp-type-k/-v travel config -> MeasureInputs -> the child's backend, and the row records them."""
    import numpy as np

    from harness.measure.variant import MeasureInputs, measure_variant
    from harness.text.protocols import build_windows

    config = parse("compare", "--llamacpp-type-k", "q8_0", "--llamacpp-type-v", "q8_0", "--llamacpp-n-ubatch", "256")
    windows = build_windows(np.arange(300) % 5000 + 100, "chunked", 128, None, None, max_tokens=256)
    inputs = MeasureInputs(None, windows, None, [], None, threads=1, device="cpu", prompt_tokens=8, gen_tokens=2,
                           warmup=0, repetitions=1, agreement_tokens=2, runtime_settings=config.runtime_settings())
    row = measure_variant(prepared["llamacpp-q8_0"], inputs)
    assert row["status"] == "ok", row["error"]
    backend = row["backend"]
    assert (backend["type_k"], backend["type_v"], backend["n_ubatch"]) == ("q8_0", "q8_0", 256)
    default_row = measure_variant(prepared["llamacpp-q8_0"], MeasureInputs(**{**inputs.__dict__, "runtime_settings": {}}))
    assert (default_row["backend"]["type_k"], default_row["backend"]["n_ubatch"]) == ("f16", 512)
    # A quantized KV cache moves the logits: the setting is really used, not only recorded.
    assert row["accuracy"]["nll_mean"] != default_row["accuracy"]["nll_mean"]
