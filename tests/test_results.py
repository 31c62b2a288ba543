"""The result schema: frozen types that round-trip through plain dicts, and docs/schema.md that lists them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import results
from harness.results import Accuracy, Efficiency, RunRecord, VariantRow

SCHEMA_DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
SCHEMA_TYPES = ("RunRecord", "ModelInfo", "CorpusInfo", "RunSettings", "VariantRow", "NodeInfo", "Point",
                "TaskScores", "Accuracy", "Efficiency")


def documented_fields() -> dict[str, list[str]]:
    """docs/schema.md's report.json items: ``- `Type`...: `field`, `field` (...)`` -> the backticked fields in order."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    items = re.findall(r"^- `(\w+)`(.*?)(?=^- `|^\n|\Z)", text, flags=re.M | re.S)
    return {name: re.findall(r"`(\w+)`", body) for name, body in items if name in SCHEMA_TYPES}


def test_the_schema_doc_lists_exactly_the_fields_each_type_defines_in_order():
    documented = documented_fields()
    assert sorted(documented) == sorted(SCHEMA_TYPES)
    for name in SCHEMA_TYPES:
        assert documented[name] == list(getattr(results, name).field_names()), name


def test_the_schema_doc_check_can_fail():
    """A field missing from docs/schema.md would be seen: the parsed lists are not vacuous."""
    documented = documented_fields()
    assert "kld_mean" in documented["Accuracy"] and len(documented["Efficiency"]) == len(Efficiency.field_names())
    assert documented["Accuracy"] != list(Efficiency.field_names())


def full_row() -> dict:
    return {
        "variant": "llamacpp-q8_0", "runtime": "llamacpp", "precision": "q8_0", "status": "ok", "error": None,
        "backend": {"threads": 2, "type_k": "f16"},
        "accuracy": {"ppl": 12.7, "ppl_stderr": 1.5, "nll_mean": 2.54, "tokens_scored": 510, "word_ppl": 40.0,
                     "byte_ppl": 1.9, "bits_per_byte": 0.93, "delta_nll_mean": 0.0107, "delta_nll_stderr": 0.002,
                     "delta_ppl_pct": 1.076, "delta_ppl_pct_ci": [0.68, 1.47], "nll_correlation": 0.9993,
                     "delta_bits_per_byte": 0.004, "delta_bits_per_byte_ci": [0.0025, 0.0055],
                     "paired_sums": {"n": 510, "sum_d": 5.46, "sum_d2": 1.1, "sum_nll_ref": 1290.0,
                                     "sum_nll_ref2": 6400.0, "sum_nll_test": 1295.5, "sum_nll_test2": 6430.0,
                                     "sum_nll_ref_nll_test": 6414.0, "bytes": 2048},
                     "kld_mean": 0.004, "kld_stderr": 0.0003, "kld_max": 0.1, "kld_p999": 0.09, "kld_p99": 0.03,
                     "kld_p95": 0.015, "kld_p90": 0.009, "kld_p50": 0.002, "kld_p10": 1e-4, "kld_p05": 5e-5,
                     "kld_p01": 1e-5, "kld_p001": 1e-6, "kld_min": 0.0, "top1_agreement": 96.9,
                     "top1_agreement_stderr": 0.77, "delta_p_mean": -0.001, "delta_p_stderr": 0.0009,
                     "delta_p_max": 0.2, "delta_p_p999": 0.15, "delta_p_p99": 0.05, "delta_p_p95": 0.02,
                     "delta_p_p90": 0.01, "delta_p_p75": 0.002, "delta_p_p50": 0.0, "delta_p_p25": -0.002,
                     "delta_p_p10": -0.01, "delta_p_p05": -0.02, "delta_p_p01": -0.05, "delta_p_p001": -0.15,
                     "delta_p_min": -0.25, "delta_p_rms": 0.02, "delta_p_rms_stderr": 0.001,
                     "generation_divergence": [None, 7], "wall_s": 3.2},
        "efficiency": {"load_s": 0.1, "size_bytes": 144_800_000, "bits_per_weight": 8.61, "prefill_tok_s": 357.0,
                       "prefill_tok_s_spread": [340.0, 360.0], "decode_tok_s": 69.5,
                       "decode_tok_s_spread": [60.0, 71.0], "ttft_ms": 1434.0, "ttft_ms_spread": [1400.0, 1500.0],
                       "itl_p50_ms": 14.0, "itl_p50_ms_spread": [13.0, 15.0], "itl_p90_ms": 15.0,
                       "itl_p90_ms_spread": [14.0, 16.0], "itl_p99_ms": 16.0, "itl_p99_ms_spread": [15.0, 17.0],
                       "peak_rss_mb": 385.0, "cpu_util_pct": 190.0, "noisy": ["decode_tok_s"], "prompt_tokens": 512,
                       "gen_tokens": 32, "repetitions": 5},
    }


def test_a_row_round_trips_through_json_unchanged_and_gpu_figures_stay_absent_on_a_cpu():
    row = full_row()
    typed = VariantRow.from_dict(json.loads(json.dumps(row)))
    assert typed.to_dict() == row
    assert "gpu_peak_mem_mb" not in typed.to_dict()["efficiency"] and "traceback" not in typed.to_dict()
    assert typed.metric("kld_mean") == 0.004 and typed.metric("decode_tok_s") == 69.5 and typed.is_noisy("decode_tok_s")
    assert typed.efficiency.spread("decode_tok_s") == (60.0, 71.0)


def test_a_run_round_trips_and_older_runs_missing_keys_still_load():
    run = {"schema_version": 1, "run_id": "r", "created_utc": "t", "model": {"name": "m"},
           "corpus": {"name": "c", "ctx": 512}, "environment": {"cpu": "x"}, "reference": "llamacpp-f32",
           "settings": {"threads": 2, "max_ppl_increase_pct": 5.0}, "wall_s": 1.0, "results": [full_row()],
           "summary": {"derived": True}}
    record = RunRecord.from_dict(run)
    assert record.results[0].accuracy.ppl == 12.7 and record.settings.memory_budget_mb is None
    again = RunRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and "summary" not in record.to_dict()


def test_the_failed_row_is_made_in_one_place_and_has_no_figures():
    row = VariantRow.failed("ort-int4", "ort", "int4", "killed by SIGKILL", traceback="Traceback ...")
    assert (row.status, row.ok, row.accuracy, row.efficiency) == ("failed", False, None, None)
    assert row.to_dict()["traceback"] == "Traceback ..." and row.metric("ppl") is None
    assert VariantRow.unavailable("ort-int4", "ort", "int4", "not installed").status == "unavailable"


def test_types_are_frozen():
    with pytest.raises(AttributeError):
        Accuracy(ppl=1.0).ppl = 2.0  # type: ignore[misc]
