"""Several models in one run: the schema, the table, the cross-model answer, show, diff and the store, on synthetic runs.

A real two-model ``compare`` is in tests/test_compare_e2e.py.
"""

from __future__ import annotations

import json

import pytest
from test_report import ok_row, sample_dict
from test_report_html import PLOT_STATE, VISIBLE_DETAIL, Chromium, needs_chromium

from harness import cli, report, store
from harness.report import files as report_files
from harness.report import html as report_html
from harness.results import SCHEMA_VERSION, RunRecord


def with_bpb(row: dict, bits_per_byte: float, model: str, decode: float | None = None) -> dict:
    row = json.loads(json.dumps(row))
    row["accuracy"]["bits_per_byte"] = bits_per_byte
    row["model"] = model
    if decode is not None:
        row["efficiency"]["decode_tok_s"] = decode
    return row


def big_rows() -> list[dict]:
    """A larger model: lower bits per byte, slower; its own PPLs (another tokenizer) around 8.

    Without paired figures (``ok_row`` pairs against a PPL of 10), so ΔPPL is the ratio to its own reference.
    """
    rows = [ok_row("llamacpp-f32", 8.0, 15, 2000, 1600), ok_row("llamacpp-q4_k_m", 8.3, 40, 700, 450),
            ok_row("llamacpp-q2_k", 10.5, 70, 400, 300)]
    for row in rows:
        row["accuracy"].update({k: None for k in row["accuracy"] if k.startswith("delta_")})
    rows[0]["accuracy"].update({k: None for k in rows[0]["accuracy"] if k.startswith("kld_")})
    return [with_bpb(row, bpb, "big") for row, bpb in zip(rows, (0.90, 0.93, 1.05))]


def two_model_dict() -> dict:
    """The sample run (model "small", bits/byte from 1.0) and a bigger model "big" (bits/byte from 0.90)."""
    small = sample_dict()
    bpb = {"torch-fp32": 1.0, "torch-bf16": 1.001, "ort-fp32": 1.0, "llamacpp-f32": 1.00, "llamacpp-q8_0": 1.004,
           "llamacpp-q6_k": 1.008, "llamacpp-q4_k_m": 1.02, "llamacpp-q4_0": 1.025, "llamacpp-q2_k": 1.30}
    small_rows = [with_bpb(r, bpb[r["variant"]], "small") if r["status"] == "ok" else {**r, "model": "small"}
                  for r in small["results"]]
    return {
        "schema_version": SCHEMA_VERSION, "run_id": "20261127T120000-beef", "created_utc": "2026-11-27T12:00:00Z",
        "models": [
            {"name": "small", "source": "/m/small.gguf", "source_sha256": "aa" * 32, "reference": "llamacpp-f32",
             "tokenizer": "llama.cpp", "tokens_scored": 4096, "windows": 8},
            {"name": "big", "source": "/m/big", "source_sha256": "bb" * 32, "reference": "llamacpp-f32",
             "tokenizer": "transformers", "tokens_scored": 3500, "windows": 7},
        ],
        "corpus": {"name": "wiki-sample", "protocol": "chunked", "ctx": 512, "text_bytes": 20000},
        "environment": small["environment"], "settings": small["settings"],
        "results": small_rows + big_rows(),
    }


def two_model_run() -> RunRecord:
    return RunRecord.from_dict(two_model_dict())


def test_a_version_1_run_reads_as_one_model_with_its_reference_and_token_facts():
    old = sample_dict()
    run = RunRecord.from_dict(old)
    assert run.schema_version == SCHEMA_VERSION and not run.multi_model
    (model,) = run.models
    assert (model.name, model.reference, model.tokens_scored) == ("smollm2-135m", "llamacpp-f32", 4096)
    assert {r.model for r in run.results} == {"smollm2-135m"} and run.reference == "llamacpp-f32"
    assert RunRecord.from_dict(json.loads(json.dumps(run.to_dict()))) == run  # and it stays so


def test_the_table_names_each_rows_model_and_reads_its_delta_against_its_own_reference():
    run = two_model_run()
    assert report.headers(run)[0] == "model" and "bits/byte" in report.headers(run)
    table = {(cells[0], cells[1], cells[2]): dict(zip(report.headers(run), cells)) for cells in report.table_rows(run)}
    assert table["big", "llamacpp", "f32"]["ΔPPL %"] == "+0.00" and "ref" in table["big", "llamacpp", "f32"]["marks"]
    # big's q4_k_m is +3.75% against big's reference (8.0), not -17% against small's (10.0)
    assert table["big", "llamacpp", "q4_k_m"]["ΔPPL %"].startswith("+3.75")
    assert table["big", "llamacpp", "f32"]["bits/byte"] == "0.9000"


def test_frontiers_and_the_answer_rank_across_models_on_bits_per_byte():
    run = two_model_run()
    # big's q2_k (70 tok/s, 1.05) is beaten by small's q4_k_m (80, 1.02): one frontier across both models
    assert report.frontier_names(run)["bits_per_byte_vs_decode_tok_s"] == [
        "big/llamacpp-f32", "big/llamacpp-q4_k_m", "small/llamacpp-q8_0", "small/llamacpp-q4_k_m",
        "small/llamacpp-q4_0", "small/llamacpp-q2_k"]
    lines = report.recommendations(run)
    # within 5% of big's 0.90 bits/byte: big's f32 and q4_k_m only; by PPL alone small's rows would win
    assert lines[0] == ("Fastest within +5% bits/byte of the lowest (across models): big/llamacpp-q4_k_m, "
                        "40.0 decode tok/s, 0.9300 bits/byte.")
    assert lines[2].startswith("Lowest bits/byte (no memory budget set): big/llamacpp-f32")
    assert any(line.startswith("small: Fastest within +5% PPL of llamacpp-f32") for line in lines)
    assert any(line.startswith("Failed: small/llamacpp-q3_k_m") for line in lines)


def test_rows_from_different_hardware_are_marked_and_the_answer_says_so():
    data = two_model_dict()
    for row in data["results"]:
        row["node"] = {"host": "n1", "cpu": "CPU A"}
    data["results"][-2]["node"] = {"host": "n2", "cpu": "CPU B"}  # big/llamacpp-q4_k_m
    run = RunRecord.from_dict(data)
    marks = {(c[0], c[2]): c[-1] for c in report.table_rows(run)}
    assert marks["big", "q4_k_m"].endswith("m2") and marks["big", "f32"].endswith("m1")
    assert "(speeds measured on different machines: m1, m2)" in report.recommendations(run)[0]
    assert any("m1 = CPU A; m2 = CPU B" in line for line in report.header_lines(run))
    one_machine = two_model_run()  # no node recorded: nothing to say
    assert not report.machine_marks(one_machine) and "machines" not in " ".join(report.recommendations(one_machine))


def test_show_and_diff_name_rows_by_model_and_variant(tmp_path, capsys):
    db = tmp_path / "store.sqlite"
    run_a = two_model_run()
    data_b = two_model_dict()
    data_b["run_id"] = "20261127T130000-cafe"
    data_b["results"][-2]["accuracy"]["ppl"] = 8.6  # big/llamacpp-q4_k_m moved; small's rows did not
    store.save(run_a, db)
    store.save(RunRecord.from_dict(data_b), db)
    (listed_b, listed_a) = store.list_runs(db)
    assert listed_a.model == "small vs big" and listed_a.tokens_scored is None

    changed = {v.variant: v.changes[0] for v in store.diff(run_a, RunRecord.from_dict(data_b)).variants}
    assert changed["big/llamacpp-q4_k_m"].significant and changed["big/llamacpp-q4_k_m"].basis == store.EXACT
    assert not changed["small/llamacpp-q4_k_m"].significant

    assert cli.main(["show", run_a.run_id, "--variant", "big/llamacpp-q4_k_m", "--store", str(db)]) == 0
    assert capsys.readouterr().out.startswith(f"run {run_a.run_id}: big/llamacpp-q4_k_m against llamacpp-f32")
    assert cli.main(["show", run_a.run_id, "--variant", "llamacpp-q4_k_m", "--store", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a variant of several models; give model/variant" in err[0]


def test_the_page_marks_models_apart_and_keys_points_by_model_and_variant():
    data = report_html.plot_data(two_model_run())
    assert data["default"]["y"] == "bits_per_byte" and data["models"] == [("small", "circle"), ("big", "square")]
    by_name = {p["variant"]: p for p in data["points"]}
    assert by_name["big/llamacpp-q4_k_m"]["symbol"] == "square" and by_name["small/llamacpp-f32"]["symbol"] == "circle"
    # ΔPPL of each point against its own model's reference
    assert by_name["big/llamacpp-q2_k"]["figures"]["delta_ppl_pct"]["value"] == pytest.approx(31.25)


def test_the_same_model_given_twice_is_one_line(capsys):
    assert cli.main(["compare", "--model", "smollm2-135m", "--model", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --model smollm2-135m: the same model as --model smollm2-135m; give each model once"]


@needs_chromium
def test_a_two_model_page_draws_each_model_in_its_own_shape_and_opens_a_rows_details_in_chromium(tmp_path):
    page = report_files.write_report(two_model_run(), tmp_path / "out")["report.html"]
    with Chromium(tmp_path / "profile") as browser:
        assert browser.open(page)
        state = browser.evaluate(PLOT_STATE)
        assert state["y_title"].startswith("bits per byte") and state["ys"]["big/llamacpp-f32"] == 0.90
        symbols = browser.evaluate("Object.fromEntries(document.getElementById('plot').data.filter(t => t.customdata)"
                                   ".flatMap(t => t.customdata.map((v, i) => [v, t.marker.symbol[i]])))")
        assert symbols["big/llamacpp-q4_k_m"] == "square" and symbols["small/llamacpp-q4_k_m"] == "circle"
        legend = browser.evaluate("document.getElementById('plot').data.map(t => t.name)")
        assert "small" in legend and "big" in legend
        browser.click("Array.from(document.querySelectorAll('#results tbody tr'))"
                      ".find(tr => tr.cells[0].dataset.variant === 'big/llamacpp-q4_k_m').cells[2]")
        assert browser.wait_for(f"{VISIBLE_DETAIL} === 'big/llamacpp-q4_k_m'")
        assert not browser.exceptions()


def test_rows_from_several_nodes_get_a_node_column_but_one_machine_gets_no_hardware_mark():
    data = sample_dict()
    for i, row in enumerate(data["results"]):  # two Ray nodes on one host, the same hardware
        row["node"] = {"host": "box", "cpu": "CPU A", "ray_node": "a819244a97d3" if i % 2 else "33d27552ee95"}
    run = RunRecord.from_dict(data)
    headers = report.headers(run)
    assert headers[-3:] == ("node", "status", "marks")
    cells = [dict(zip(headers, c)) for c in report.table_rows(run)]
    assert {c["node"] for c in cells} == {"box/a819244a", "box/33d27552"}
    assert not any(c["marks"].split()[-1:] in (["m1"], ["m2"]) for c in cells)  # same CPU: speeds compare
    assert "node" in report.render_table(run).splitlines()[0]
    assert "node" not in report.headers(sample_run_one_node())


def sample_run_one_node() -> RunRecord:
    data = sample_dict()
    for row in data["results"]:
        row["node"] = {"host": "box", "cpu": "CPU A"}
    return RunRecord.from_dict(data)
