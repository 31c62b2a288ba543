"""The results store: save, list, load by prefix, and diff with the noise rule."""

from __future__ import annotations

import copy
import sqlite3

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


def test_speed_changes_are_beyond_noise_only_when_the_ranges_do_not_overlap():
    a = make_run("A", "1", [
        row("llamacpp-q8_0", 10.00, 50.0, (48.0, 52.0)),    # -> 58 [57, 59]: beyond
        row("llamacpp-q4_0", 10.40, 80.0, (70.0, 90.0)),    # -> 85 [75, 95]: within, though +6%
        row("llamacpp-q2_k", 13.00, 90.0, (89.0, 91.0)),    # -> no spread: unknown
        row("torch-fp32", 10.00, 20.0, (19.0, 21.0)),       # dropped in B
    ])
    b = copy.deepcopy(a)
    b["run_id"] = "B"
    b["corpus"]["ctx"] = 1024
    q8, q4, q2 = b["results"][:3]
    q8["efficiency"].update(decode_tok_s=58.0, decode_tok_s_spread=[57.0, 59.0])
    q8["accuracy"]["ppl"] = 10.05
    q4["efficiency"].update(decode_tok_s=85.0, decode_tok_s_spread=[75.0, 95.0])
    q2["efficiency"].update(decode_tok_s=99.0)
    del q2["efficiency"]["decode_tok_s_spread"]
    b["results"] = [q8, q4, q2, {"variant": "ort-int4", "runtime": "ort", "precision": "int4", "status": "unavailable",
                                 "error": "not installed"}]

    result = store.diff(RunRecord.from_dict(a), RunRecord.from_dict(b))
    by_name = {v.variant: v for v in result.variants}
    assert list(by_name) == ["llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q2_k", "torch-fp32", "ort-int4"]

    def change(name, key):
        return next(c for c in by_name[name].changes if c.key == key)

    assert change("llamacpp-q8_0", "decode_tok_s").beyond_noise is True
    assert change("llamacpp-q8_0", "decode_tok_s").delta_pct == pytest.approx(16.0)
    assert change("llamacpp-q8_0", "ppl").delta_pct == pytest.approx(0.5)
    assert change("llamacpp-q8_0", "prefill_tok_s").beyond_noise is False  # identical ranges
    assert change("llamacpp-q4_0", "decode_tok_s").beyond_noise is False
    assert change("llamacpp-q2_k", "decode_tok_s").beyond_noise is None
    assert (by_name["torch-fp32"].status_a, by_name["torch-fp32"].status_b) == ("ok", None)
    assert change("torch-fp32", "ppl").b is None
    assert by_name["ort-int4"].status_a is None and by_name["ort-int4"].status_b == "unavailable"
    assert result.context == ("corpus.ctx: 512 -> 1024",)

    text = report.render_diff(result)
    assert "The runs differ in: corpus.ctx: 512 -> 1024" in text
    q8_line = next(line for line in text.splitlines() if line.startswith("llamacpp-q8_0"))
    assert "50.0 → 58.0 (+16.0%) *" in q8_line and "10.00 → 10.05 (+0.5%)" in q8_line
    q4_line = next(line for line in text.splitlines() if line.startswith("llamacpp-q4_0"))
    assert "80.0 → 85.0 (+6.2%)" in q4_line and "*" not in q4_line
    assert "99.0 (+10.0%) ?" in next(line for line in text.splitlines() if line.startswith("llamacpp-q2_k"))
    assert "ok → (absent)" in next(line for line in text.splitlines() if line.startswith("torch-fp32"))


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
