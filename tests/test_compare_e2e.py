"""``python -m harness compare`` end to end on the real model, three runtimes, a small budget.

Two runs go into one store, so ``history``, ``show`` and ``diff`` have
something real to read; the files of the first run are checked against the
report schema the README documents.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

# One variant per runtime and the reference; tiny speed budgets (the figures are not judged here).
# One thread: OpenMP runtimes slow down many times over when another job holds the other core.
VARIANTS = "llamacpp-q4_k_m,ort-int4,torch-bf16"
SMALL_BUDGET = ("--max-tokens", "1024", "--repetitions", "2", "--max-repetitions", "2", "--warmup", "0",
                "--prompt-tokens", "32", "--gen-tokens", "8", "--threads", "1")
REPORT_FILES = ("report.json", "results.csv", "report.md", "tradeoff.png", "report.html", "results.jsonl")
ACCURACY_KEYS = ("ppl", "ppl_stderr", "nll_mean", "word_ppl", "bits_per_byte", "kld_mean", "kld_p99",
                 "top1_agreement", "delta_p_rms")
EFFICIENCY_KEYS = ("load_s", "size_bytes", "bits_per_weight", "prefill_tok_s", "decode_tok_s", "ttft_ms",
                   "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "peak_rss_mb", "cpu_util_pct")
TIMED_KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms")


def harness(*args: str, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_runs(prepared, tmp_path_factory):
    """Two stored compare runs: A with all four variants, B without torch-bf16."""
    root = tmp_path_factory.mktemp("e2e")
    store = str(root / "runs.sqlite")
    first = harness("compare", "--variants", VARIANTS, *SMALL_BUDGET, "--out", "a", "--store", store, cwd=root)
    second = harness("compare", "--variants", "llamacpp-q4_k_m,ort-int4", *SMALL_BUDGET, "--out", "b",
                     "--store", store, "--json", "-", cwd=root)
    return root, store, first, second


def test_compare_prints_the_table_and_writes_every_file(two_runs):
    root, _, first, _ = two_runs
    for name in ("llamacpp-q4_k_m", "ort-int4", "torch-bf16"):
        runtime, precision = name.split("-", 1)
        assert any(line.split()[:2] == [runtime, precision] for line in first.stdout.splitlines()), first.stdout
    assert "Fastest within +5% PPL of llamacpp-f32" in first.stdout
    for name in REPORT_FILES:
        assert (root / "a" / name).stat().st_size > 0, name
    assert (root / "a" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(root / "a" / "results.csv", newline="") as handle:
        assert sorted(r["variant"] for r in csv.DictReader(handle)) == sorted(
            ["llamacpp-f32", "llamacpp-q4_k_m", "ort-int4", "torch-bf16"])


def test_report_json_follows_the_documented_schema(two_runs):
    root, *_ = two_runs
    report = json.loads((root / "a" / "report.json").read_text())
    assert report["schema_version"] == 4
    (model,) = report["models"]
    assert (model["name"], model["reference"], model["tokenizer"]) == ("smollm2-135m", "llamacpp-f32", "llama.cpp")
    corpus = report["corpus"]
    assert (corpus["name"], corpus["protocol"], corpus["ctx"]) == ("pydoc-topics", "chunked", 512)
    assert model["tokens_scored"] == 2 * 255  # two windows of 512, second halves (the last target has no next)
    assert corpus["text_bytes"] > 1024  # the bytes the 1,024-token budget covers
    assert report["environment"]["threads"] == 1 and report["environment"]["versions"]["llama_cpp"]
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"llamacpp-f32", "llamacpp-q4_k_m", "ort-int4", "torch-bf16"}
    for name, row in rows.items():
        assert row["status"] == "ok" and row["error"] is None, (name, row.get("error"))
        assert row["runtime"] == name.split("-")[0] and row["precision"] == name.split("-", 1)[1]
        assert set(ACCURACY_KEYS) <= set(row["accuracy"]), name
        assert set(EFFICIENCY_KEYS) <= set(row["efficiency"]), name
        assert row["accuracy"]["tokens_scored"] == model["tokens_scored"] and row["model"] == "smollm2-135m"
        assert row["node"]["cpu"] == report["environment"]["cpu"] and row["started_unix"] < row["ended_unix"]
        for key in TIMED_KEYS:
            low, high = row["efficiency"][f"{key}_spread"]
            assert low <= row["efficiency"][key] <= high, (name, key)
            assert row["efficiency"][f"{key}_ci"] == [low, high], (name, key)  # 2 repetitions: the interval is the range
            assert len(row["efficiency"]["repetition_values"][key]) == 2, (name, key)
        assert "gpu_peak_mem_mb" not in row["efficiency"]  # no GPU here: absent, not zero
        assert row["backend"]["threads"] == 1, (name, row["backend"])  # --threads reaches every runtime
    # The reference has no divergence from itself; every other variant has one, and quantization costs some.
    assert rows["llamacpp-f32"]["accuracy"]["kld_mean"] is None
    assert 0 < rows["torch-bf16"]["accuracy"]["kld_mean"] < rows["llamacpp-q4_k_m"]["accuracy"]["kld_mean"]
    assert rows["llamacpp-q4_k_m"]["accuracy"]["ppl"] > rows["llamacpp-f32"]["accuracy"]["ppl"]


def test_json_to_stdout_is_the_report_and_the_table_goes_to_stderr(two_runs):
    root, _, _, second = two_runs
    report = json.loads(second.stdout)
    assert report == json.loads((root / "b" / "report.json").read_text())
    assert "llamacpp" in second.stderr and "q4_k_m" in second.stderr


def test_history_show_and_diff_read_both_stored_runs(two_runs):
    root, store, *_ = two_runs
    run_a = (root / "a" / "run_id").read_text().strip()
    run_b = (root / "b" / "run_id").read_text().strip()
    history = harness("history", "--store", store, cwd=root).stdout
    assert history.index(run_b) < history.index(run_a)  # newest first
    assert "4/4" in history and "3/3" in history

    shown = harness("show", run_a[:-2], "--store", store, cwd=root).stdout  # a unique prefix is enough
    assert run_a in shown and "torch" in shown and "bf16" in shown

    diff = harness("diff", run_a, run_b, "--store", store, cwd=root).stdout
    lines = {line.split()[0]: line for line in diff.splitlines() if line.startswith(("torch-", "ort-", "llamacpp-"))}
    assert set(lines) == {"llamacpp-f32", "llamacpp-q4_k_m", "ort-int4", "torch-bf16"}
    assert "(absent)" in lines["torch-bf16"]
    # Accuracy is deterministic: the same tokens give the same PPL in both runs.
    ppl_a, ppl_b = re.search(r"ok\s+([\d.]+) → ([\d.]+) \(", lines["llamacpp-q4_k_m"]).groups()
    assert ppl_a == ppl_b
    assert "beyond the measured noise" in diff


def test_resume_of_a_finished_run_redoes_nothing(two_runs):
    root, store, *_ = two_runs
    before = (root / "b" / "results.jsonl").read_text()
    done = harness("compare", "--variants", "llamacpp-q4_k_m,ort-int4", *SMALL_BUDGET, "--out", "b", "--resume",
                   "--store", store, cwd=root)
    assert (root / "b" / "results.jsonl").read_text() == before
    assert "q4_k_m" in done.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="headless Chromium check runs on Linux")
def test_report_html_of_a_real_run_shows_plot_and_table_in_chromium(two_runs, tmp_path):
    from test_report_html import CHROMIUM, assert_shows_plot_above_table, screenshot

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    root, *_ = two_runs
    assert_shows_plot_above_table(screenshot(root / "a" / "report.html", tmp_path))


def test_each_childs_output_goes_to_its_log_and_none_reaches_the_terminal(two_runs):
    root, _, first, second = two_runs
    logs = sorted(p.name for p in (root / "a" / "logs").iterdir())
    assert logs == ["llamacpp-f32.log", "llamacpp-q4_k_m.log", "ort-int4.log", "torch-bf16.log"]
    for done in (first, second):
        # llama.cpp's own lines (llama_model_loader:, llama_context:, ggml_...) stay out of the terminal.
        assert not re.search(r"^(llama|ggml|load_tensors|print_info)\w*:", done.stdout + done.stderr, re.M)


@pytest.fixture(scope="module")
def two_models(prepared, tmp_path_factory):
    """The default model and a tiny random Llama (its own folder, the default model's tokenizer) in one run."""
    import tiny_models

    root = tmp_path_factory.mktemp("two-models")
    tokenizer = tiny_models.write_tokenizer(Path(prepared["torch-fp32"].path), root / "tokenizer")
    tiny = tiny_models.build("llama", root, tokenizer)
    store = str(root / "runs.sqlite")
    done = harness("compare", "--model", "smollm2-135m", "--model", str(tiny), "--variants",
                   "llamacpp-f32,llamacpp-q8_0", *SMALL_BUDGET, "--cache-dir", str(root / "cache"), "--out", "mm",
                   "--store", store, "--json", "-", cwd=root)
    return root, store, done, json.loads(done.stdout)


def test_two_models_score_the_same_text_each_against_its_own_reference(two_models):
    root, store, done, report = two_models
    assert [m["name"] for m in report["models"]] == ["smollm2-135m", "tiny-llama"]
    assert all(m["reference"] == "llamacpp-f32" for m in report["models"])
    # One tokenizer for both: the same bytes of text make the same tokens, so both scored as many.
    assert report["models"][0]["tokens_scored"] == report["models"][1]["tokens_scored"] > 0
    rows = {(r["model"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {(m, v) for m in ("smollm2-135m", "tiny-llama") for v in ("llamacpp-f32", "llamacpp-q8_0")}
    assert all(r["status"] == "ok" for r in rows.values()), [r.get("error") for r in rows.values()]
    for model in ("smollm2-135m", "tiny-llama"):
        ref, q8 = rows[model, "llamacpp-f32"]["accuracy"], rows[model, "llamacpp-q8_0"]["accuracy"]
        assert ref["kld_mean"] is None and 0 < q8["kld_mean"] < 0.05  # against its own model's f32, not the other's
        assert q8["tokens_scored"] == ref["tokens_scored"]
    # A trained model predicts English far better than random weights: fewer bits per byte, whatever the tokens.
    assert rows["smollm2-135m", "llamacpp-f32"]["accuracy"]["bits_per_byte"] < 0.5 * rows[
        "tiny-llama", "llamacpp-f32"]["accuracy"]["bits_per_byte"]
    assert report["summary"]["accuracy_key"] == "bits_per_byte"
    assert report["summary"]["recommendations"][0].startswith(
        "Fastest within +5% bits/byte of the lowest (across models): smollm2-135m/")
    header = done.stderr.splitlines()
    assert any(line.split()[:1] == ["model"] and "tiny-llama" not in line for line in header)  # the table's header row
    assert sorted(p.name for p in (root / "mm" / "logs").iterdir()) == ["smollm2-135m", "tiny-llama"]


def test_show_takes_model_slash_variant_and_history_lists_both_models(two_models):
    root, store, _, report = two_models
    history = harness("history", "--store", store, cwd=root).stdout
    assert "smollm2-135m vs tiny-llama" in history
    shown = harness("show", report["run_id"], "--variant", "tiny-llama/llamacpp-q8_0", "--store", store, cwd=root)
    assert "tiny-llama/llamacpp-q8_0 against llamacpp-f32" in shown.stdout and "Mean    KLD" in shown.stdout
