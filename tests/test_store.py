"""The results store: save, list, load by prefix, and diff: each change judged real or within the noise."""

from __future__ import annotations

import copy
import re
import sqlite3

import numpy as np
import pytest

from harness import report, store
from harness.errors import UserError
from harness.results import RunRecord


def save(run: dict, path=None) -> str:
    return store.save(RunRecord.from_dict(run), path=path)


def row(variant, ppl, decode, decode_spread, rss=300.0, prefill=500.0, prefill_spread=(480.0, 520.0)):
    runtime, precision = variant.split("-", 1)
    return {
        "variant": variant, "runtime": runtime, "precision": precision, "status": "ok", "error": None,
        "accuracy": {"ppl": ppl, "ppl_stderr": 0.1, "kld_mean": 0.02},
        "efficiency": {
            "decode_tok_s": decode, "decode_tok_s_spread": list(decode_spread),
            "prefill_tok_s": prefill, "prefill_tok_s_spread": list(prefill_spread),
            "peak_rss_mb": rss, "noisy": [],
        },
    }


def make_run(run_id, created, results, ctx=512):
    return {
        "schema_version": 1, "run_id": run_id, "created_utc": created,
        "model": {"name": "smollm2-135m", "source": "m.gguf", "source_sha256": "ab" * 32},
        "corpus": {"name": "sample", "protocol": "sliding", "ctx": ctx, "tokens_scored": 1024},
        "environment": {"cpu": "test", "versions": {"llama_cpp": "0.3.7"}},
        "reference": "llamacpp-f32", "settings": {"threads": 2}, "results": results,
    }


@pytest.fixture
def db(tmp_path):
    return tmp_path / "nested" / "store.sqlite"


def test_saved_runs_load_back_equal_and_list_newest_first(db):
    old = make_run("20261126T100000-aaaa", "2026-11-26T10:00:00Z", [row("llamacpp-f32", 10.0, 30, (29, 31))])
    new = make_run("20261126T110000-bbbb", "2026-11-26T11:00:00Z", [
        row("llamacpp-f32", 10.0, 30, (29, 31)),
        {"variant": "ort-int4", "runtime": "ort", "precision": "int4", "status": "failed", "error": "boom"},
    ])
    save(old, path=db)
    save(new, path=db)
    assert store.load(old["run_id"], path=db) == RunRecord.from_dict(old)
    runs = store.list_runs(path=db)
    assert [r.run_id for r in runs] == [new["run_id"], old["run_id"]]
    assert (runs[0].n_ok, runs[0].n_variants, runs[0].tokens_scored, runs[0].model) == (1, 2, 1024, "smollm2-135m")
    history = report.render_history(runs)
    assert "20261126T110000-bbbb" in history and "1/2" in history


def test_saving_the_same_run_again_replaces_it(db):
    run = make_run("r-1", "2026-11-26T10:00:00Z", [row("llamacpp-f32", 10.0, 30, (29, 31))])
    save(run, path=db)
    run["results"].append(row("llamacpp-q8_0", 10.1, 50, (49, 51)))
    save(run, path=db)
    assert len(store.list_runs(path=db)) == 1 and len(store.load("r-1", path=db).results) == 2


def test_load_accepts_a_unique_prefix_and_rejects_unknown_or_ambiguous_ids(db):
    for run_id in ("20261126T100000-aaaa", "20261126T100000-abbb", "20261127T090000-cccc"):
        save(make_run(run_id, run_id, []), path=db)
    assert store.load("20261127", path=db).run_id == "20261127T090000-cccc"
    assert store.load("20261126T100000-ab", path=db).run_id == "20261126T100000-abbb"
    with pytest.raises(UserError, match="ambiguous.*20261126T100000-aaaa, 20261126T100000-abbb"):
        store.load("20261126", path=db)
    with pytest.raises(UserError, match="'zzz': no such run"):
        store.load("zzz", path=db)
    with pytest.raises(UserError, match="no results store"):
        store.load("x", path=db.with_name("missing.sqlite"))


def test_prefix_matching_treats_sql_wildcards_literally(db):
    save(make_run("run_1", "a", []), path=db)
    save(make_run("runX1", "b", []), path=db)
    assert store.load("run_", path=db).run_id == "run_1"  # "_" is not LIKE's any-character here


def test_list_runs_on_a_missing_store_is_empty_and_creates_nothing(db):
    assert store.list_runs(path=db) == [] and not db.exists()
    assert "No stored runs" in report.render_history([])


def test_default_path_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(store.STORE_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert store.default_path() == (tmp_path / "data" / "harness" / "harness.sqlite").resolve()
    monkeypatch.setenv(store.STORE_ENV, str(tmp_path / "elsewhere.sqlite"))
    assert store.default_path() == (tmp_path / "elsewhere.sqlite").resolve()
    save(make_run("env-run", "t", []))
    assert sqlite3.connect(tmp_path / "elsewhere.sqlite").execute("SELECT run_id FROM runs").fetchall() == [("env-run",)]


def with_values(run_row: dict, key: str, values: list[float]) -> dict:
    """``run_row`` with ``key``'s repetitions stored, its median and spread from them, as a run records them now."""
    run_row["efficiency"].update({key: float(np.median(values)), f"{key}_spread": [min(values), max(values)]})
    run_row["efficiency"].setdefault("repetition_values", {})[key] = values
    return run_row


def changes_of(result) -> dict:
    return {(v.variant, c.key): c for v in result.variants for c in v.changes}


def line_of(text: str, variant: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(variant))


def test_speed_changes_are_judged_by_a_bootstrap_of_the_ratio_of_medians_and_old_runs_by_their_ranges():
    a = make_run("A", "1", [
        with_values(row("llamacpp-q8_0", 10.0, 0, ()), "decode_tok_s", [49.0, 50.0, 51.0, 50.0, 52.0, 48.0, 50.0]),
        with_values(row("llamacpp-q4_0", 10.4, 0, ()), "decode_tok_s", [70.0, 80.0, 90.0, 85.0, 75.0]),
        row("llamacpp-q2_k", 13.0, 90.0, (89.0, 91.0)),  # stored before repetitions were kept
        row("llamacpp-q3_k_m", 12.0, 90.0, (89.0, 91.0)),
        row("torch-fp32", 10.0, 20.0, (19.0, 21.0)),  # dropped in B
    ])
    b = copy.deepcopy(a)
    b["run_id"] = "B"
    q8, q4, q2, q3 = b["results"][:4]
    with_values(q8, "decode_tok_s", [57.0, 58.0, 59.0, 58.0, 58.0, 57.0, 59.0])  # every repetition faster
    with_values(q4, "decode_tok_s", [75.0, 85.0, 95.0, 80.0, 90.0])  # +6 % of the median, inside the noise
    q2["efficiency"].update(decode_tok_s=99.0, decode_tok_s_spread=[98.0, 100.0])
    q3["efficiency"].update(decode_tok_s=91.0)
    del q3["efficiency"]["decode_tok_s_spread"]
    b["results"] = [q8, q4, q2, q3, {"variant": "ort-int4", "runtime": "ort", "precision": "int4",
                                     "status": "unavailable", "error": "not installed"}]

    result = store.diff(RunRecord.from_dict(a), RunRecord.from_dict(b))
    assert [v.variant for v in result.variants] == [
        "llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q2_k", "llamacpp-q3_k_m", "torch-fp32", "ort-int4"]
    changes = changes_of(result)
    q8_decode = changes["llamacpp-q8_0", "decode_tok_s"]
    assert (q8_decode.basis, q8_decode.significant, q8_decode.ratio) == ("bootstrap", True, pytest.approx(1.16))
    assert 57 / 52 <= q8_decode.ratio_ci[0] < 1.16 < q8_decode.ratio_ci[1] <= 59 / 48
    q4_decode = changes["llamacpp-q4_0", "decode_tok_s"]
    assert q4_decode.basis == "bootstrap" and not q4_decode.significant
    assert q4_decode.ratio_ci[0] < 1.0 < q4_decode.ratio_ci[1]
    assert (changes["llamacpp-q2_k", "decode_tok_s"].basis, changes["llamacpp-q2_k", "decode_tok_s"].significant) == (
        "range", True)  # [89, 91] -> [98, 100]
    assert changes["llamacpp-q8_0", "prefill_tok_s"].significant is False  # old-style identical ranges
    assert changes["llamacpp-q3_k_m", "decode_tok_s"].significant is None  # no spread in B: cannot tell
    assert (result.variants[4].status_a, result.variants[4].status_b) == ("ok", None)
    assert changes["torch-fp32", "ppl"].b is None and changes["ort-int4", "ppl"].a is None

    text = report.render_diff(result)
    q8_cell = re.search(r"50\.0 → 58\.0 \(×1\.160 \[(\d\.\d+), (\d\.\d+)\]\) \*", line_of(text, "llamacpp-q8_0"))
    assert q8_cell and float(q8_cell.group(1)) > 1.0
    assert "80.0 → 85.0 (×1.062 [" in line_of(text, "llamacpp-q4_0") and "*" not in line_of(text, "llamacpp-q4_0")
    assert "90.0 → 99.0 (×1.100, range rule) *" in line_of(text, "llamacpp-q2_k")
    assert "90.0 → 91.0 (×1.011) ?" in line_of(text, "llamacpp-q3_k_m")
    assert "ok → (absent)" in line_of(text, "torch-fp32")
    assert "beyond the measured noise" in text and "two-sample bootstrap" in text


def test_accuracy_changes_on_the_same_tokens_are_exact_and_otherwise_judged_by_each_runs_stderr():
    a = make_run("A", "1", [row("llamacpp-q8_0", 10.00, 50, (49, 51)), row("llamacpp-q4_0", 10.40, 80, (79, 81))])
    b = copy.deepcopy(a)
    b["run_id"] = "B"
    b["results"][0]["accuracy"]["ppl"] = 10.05  # a new runtime version moved it: real, whatever its size
    same = store.diff(RunRecord.from_dict(a), RunRecord.from_dict(b))
    assert same.same_tokens
    changes = changes_of(same)
    assert (changes["llamacpp-q8_0", "ppl"].basis, changes["llamacpp-q8_0", "ppl"].significant) == ("exact", True)
    assert (changes["llamacpp-q4_0", "ppl"].basis, changes["llamacpp-q4_0", "ppl"].significant) == ("exact", False)
    assert changes["llamacpp-q4_0", "kld_mean"].basis == "exact"
    text = report.render_diff(same)
    assert "10.00 → 10.05 (+0.50%, exact) *" in line_of(text, "llamacpp-q8_0")
    assert "10.40 → 10.40 (+0.00%, exact)  " in line_of(text, "llamacpp-q4_0") + "  "

    b["corpus"]["ctx"] = 1024  # other windows: other tokens scored, so each run's PPL is an estimate
    b["results"][0]["accuracy"].update(ppl=11.0, ppl_stderr=0.1)
    b["results"][1]["accuracy"].update(ppl=10.45)
    other = store.diff(RunRecord.from_dict(a), RunRecord.from_dict(b))
    assert not other.same_tokens and other.context == ("corpus.ctx: 512 -> 1024",)
    changes = changes_of(other)
    q8 = changes["llamacpp-q8_0", "ppl"]
    # se of ln(B/A) = hypot(0.1 / 10, 0.1 / 11) = 0.013514; 1.1 * exp(-/+ 1.96 * 0.013514) = [1.07125, 1.12953]
    assert (q8.basis, q8.significant) == ("stderr", True)
    assert q8.ratio_ci == pytest.approx((1.07125, 1.12953), abs=1e-4)
    q4 = changes["llamacpp-q4_0", "ppl"]
    assert q4.basis == "stderr" and not q4.significant and q4.ratio_ci[0] < 1 < q4.ratio_ci[1]


def test_kld_is_not_exact_against_another_reference_even_on_the_same_tokens():
    a = make_run("A", "1", [row("llamacpp-q8_0", 10.0, 50, (49, 51))])
    b = copy.deepcopy(a)
    b["run_id"], b["reference"] = "B", "torch-fp32"
    kld = changes_of(store.diff(RunRecord.from_dict(a), RunRecord.from_dict(b)))["llamacpp-q8_0", "kld_mean"]
    assert kld.basis is None and kld.significant is None  # the sample rows have no kld_stderr to fall back on


def test_numpy_scalars_and_nan_are_stored_as_plain_json(db):
    import numpy as np

    run = make_run("np-run", "t", [row("llamacpp-f32", np.float32(10.5), np.float64(30.0), (29, 31))])
    run["results"][0]["accuracy"]["kld_mean"] = np.float64("nan")
    run["corpus"]["tokens_scored"] = np.int64(1024)
    save(run, path=db)
    loaded = store.load("np-run", path=db)
    assert loaded.results[0].accuracy.ppl == 10.5 and loaded.results[0].accuracy.kld_mean is None
    assert store.list_runs(path=db)[0].tokens_scored == 1024


@pytest.mark.parametrize("content", [b"not a database, just text\n", b"SQLite format 3\x00" + b"\x07" * 200])
def test_a_file_that_is_no_store_is_a_one_line_user_error_for_every_command(tmp_path, content):
    bad = tmp_path / "some.txt"
    bad.write_bytes(content)
    for call in (lambda: store.check(bad), lambda: store.list_runs(bad), lambda: store.load("x", bad),
                 lambda: save(make_run("r", "t", []), path=bad)):
        with pytest.raises(UserError, match="not a harness results store") as caught:
            call()
        assert caught.value.for_cli().startswith(f"--store {bad}: ")
    assert bad.read_bytes() == content  # nothing written into it


def test_a_sqlite_database_of_something_else_is_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    with pytest.raises(UserError, match="database of something else"):
        store.check(other)


def test_a_store_in_a_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a writable folder"):
        store.check(tmp_path / "file" / "store.sqlite")
