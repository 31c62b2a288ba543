"""The report: Pareto frontiers, table cells, recommendations and the files, on synthetic runs."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest

from harness import report, report_files
from harness.results import RunRecord, VariantRow


def ok_row(variant, ppl, decode, rss, size_mb, kld=0.01, noisy=()):
    runtime, precision = variant.split("-", 1)
    return {
        "variant": variant, "runtime": runtime, "precision": precision, "status": "ok", "error": None,
        "accuracy": {
            "ppl": ppl, "ppl_stderr": ppl / 100, "nll_mean": math.log(ppl), "tokens_scored": 4096,
            "kld_mean": kld, "kld_p99": kld * 10, "top1_agreement": 100 - kld * 100, "delta_p_rms": kld,
            "generation_divergence": [None, 12],
        },
        "efficiency": {
            "size_bytes": size_mb * 1e6, "bits_per_weight": size_mb / 135e6 * 8e6, "load_s": 0.5,
            "prefill_tok_s": decode * 10, "prefill_tok_s_spread": [decode * 9.5, decode * 10.5],
            "decode_tok_s": decode, "decode_tok_s_spread": [decode * 0.95, decode * 1.05],
            "ttft_ms": 1000 / decode, "ttft_ms_spread": [900 / decode, 1100 / decode],
            "peak_rss_mb": rss, "cpu_util_pct": 180.0, "noisy": list(noisy),
        },
        "backend": {"name": runtime},
    }


def bad_row(variant, status, error):
    runtime, precision = variant.split("-", 1)
    return {"variant": variant, "runtime": runtime, "precision": precision, "status": status, "error": error}


def rows_of(dicts):
    return [VariantRow.from_dict(d) for d in dicts]


def sample_run() -> RunRecord:
    return RunRecord.from_dict(sample_dict())


def sample_dict() -> dict:
    ref = ok_row("llamacpp-f32", 10.00, 35, 700, 540)
    ref["accuracy"].update(kld_mean=None, kld_p99=None, top1_agreement=None, delta_p_rms=None)
    return {
        "schema_version": 1, "run_id": "20261126T194630-abcd", "created_utc": "2026-11-26T19:46:30Z",
        "model": {"name": "smollm2-135m", "source": "/models/smol.gguf", "source_sha256": "ab" * 32},
        "corpus": {"name": "wiki-sample", "protocol": "sliding", "ctx": 512, "tokens_scored": 4096},
        "environment": {"cpu": "Test CPU", "cpu_count": 2, "versions": {"numpy": "2.0"}},
        "reference": "llamacpp-f32",
        "settings": {"threads": 2, "max_ppl_increase_pct": 5.0, "memory_budget_mb": None},
        "results": [
            ok_row("torch-fp32", 10.00, 20, 900, 540),
            ok_row("torch-bf16", 10.02, 12, 600, 270),
            ok_row("ort-fp32", 10.00, 30, 800, 540),
            bad_row("ort-int4", "unavailable", "onnxruntime-genai is not installed"),
            ref,
            ok_row("llamacpp-q8_0", 10.05, 60, 300, 145),
            ok_row("llamacpp-q6_k", 10.10, 55, 280, 112, noisy=("decode_tok_s",)),
            ok_row("llamacpp-q4_k_m", 10.40, 80, 200, 100),
            ok_row("llamacpp-q4_0", 10.45, 90, 210, 105),
            ok_row("llamacpp-q2_k", 13.00, 95, 150, 70),
            bad_row("llamacpp-q3_k_m", "failed", "RuntimeError: llama_decode returned -1"),
        ],
    }


def names(rows):
    return [r.variant for r in rows]


def test_speed_frontier_keeps_only_undominated_rows_sorted_by_speed():
    front = report.pareto_front(sample_run().results, "decode_tok_s", "ppl")
    # ort-fp32 ties llamacpp-f32 on PPL but is slower; q6_k is slower and worse than q8_0.
    assert names(front) == ["llamacpp-f32", "llamacpp-q8_0", "llamacpp-q4_k_m", "llamacpp-q4_0", "llamacpp-q2_k"]


def test_memory_frontier_differs_from_speed_frontier():
    front = report.pareto_front(sample_run().results, "peak_rss_mb", "ppl")
    # torch-bf16 is slow but uses less memory than every more accurate variant.
    assert names(front) == [
        "llamacpp-q2_k", "llamacpp-q4_k_m", "llamacpp-q6_k", "llamacpp-q8_0", "torch-bf16", "llamacpp-f32",
    ]


def test_frontier_keeps_exact_ties_and_skips_rows_without_values():
    rows = [ok_row("a-x", 10.0, 50, 100, 1), ok_row("b-x", 10.0, 50, 100, 1), ok_row("c-x", 11.0, 40, 100, 1)]
    rows.append(bad_row("d-x", "failed", "boom"))
    rows.append({"variant": "e-x", "runtime": "e", "precision": "x", "status": "ok", "accuracy": {"ppl": 1.0},
                 "efficiency": {}})  # no speed
    rows.append({"variant": "f-x", "runtime": "f", "precision": "x", "status": "ok", "accuracy": {"ppl": float("nan")},
                 "efficiency": {"decode_tok_s": 99}})
    assert names(report.pareto_front(rows_of(rows), "decode_tok_s", "ppl")) == ["a-x", "b-x"]


def test_frontier_rejects_a_metric_with_no_known_direction():
    with pytest.raises(ValueError, match="load_s"):
        report.pareto_front([], "load_s", "ppl")


def test_table_cells_for_reference_quantised_noisy_and_failed_rows():
    run = sample_run()
    rows = {f"{r[0]}-{r[1]}": dict(zip(report.HEADERS, r)) for r in report.table_rows(run)}
    assert list(rows) == [r.variant for r in run.results]  # run order kept
    ref = rows["llamacpp-f32"]
    assert ref["marks"] == "ref S M" and ref["ΔPPL %"] == "+0.00" and ref["KLD"] == "—" and ref["top-1 %"] == "—"
    assert ref["PPL ±"] == "10.00 ± 0.10" and ref["size MB"] == "540.0" and ref["peak RSS MB"] == "700"
    q4 = rows["llamacpp-q4_k_m"]
    assert q4["ΔPPL %"] == "+4.00" and q4["decode tok/s"] == "80.0" and q4["prefill tok/s"] == "800"
    assert q4["TTFT ms"] == "12.5" and q4["marks"] == "S M" and q4["KLD"] == "0.0100"
    assert rows["llamacpp-q4_0"]["marks"] == "S"
    assert rows["torch-bf16"]["marks"] == "M"
    assert rows["torch-fp32"]["marks"] == ""
    assert rows["llamacpp-q6_k"]["decode tok/s"] == "55.0~"
    failed = rows["llamacpp-q3_k_m"]
    assert failed["status"] == "failed"
    assert all(failed[h] == "—" for h in report.HEADERS[2:12])


def test_render_table_aligns_and_labels_units():
    text = report.render_table(sample_run())
    header = text.splitlines()[0]
    for label in ("size MB", "PPL ±", "ΔPPL %", "decode tok/s", "TTFT ms", "peak RSS MB", "status"):
        assert label in header
    assert len(text.splitlines()) == 2 + len(sample_run().results)


def test_recommendations_respect_the_ppl_limit_and_memory_budget():
    lines = report.recommendations(sample_run(), max_ppl_increase_pct=5.0, memory_budget_mb=650)
    # q2_k is faster and smaller but 30% worse: outside the limit.
    assert lines[0].startswith("Fastest within +5% PPL of llamacpp-f32: llamacpp-q4_0, 90.0 decode tok/s")
    assert lines[1].startswith("Smallest within +5% PPL of llamacpp-f32: llamacpp-q4_k_m, 100.0 MB")
    # The fp32 variants are more accurate but need 700+ MB.
    assert lines[2].startswith("Most accurate under 650 MB peak memory: torch-bf16, PPL 10.02 (+0.20%)")
    assert lines[3:] == [
        "Unavailable: ort-int4: onnxruntime-genai is not installed",
        "Failed: llamacpp-q3_k_m: RuntimeError: llama_decode returned -1",
    ]


def test_recommendations_take_defaults_from_settings_and_widen_with_the_limit():
    run = sample_dict()
    run["settings"]["max_ppl_increase_pct"] = 50.0
    run["settings"]["memory_budget_mb"] = 100
    lines = report.recommendations(RunRecord.from_dict(run))
    assert "llamacpp-q2_k" in lines[0] and "llamacpp-q2_k" in lines[1]
    assert lines[2] == "No variant fits in 100 MB peak memory; the least is llamacpp-q2_k at 150 MB."


def test_recommendations_without_a_reference_say_so():
    run = sample_dict()
    run["results"] = [r for r in run["results"] if r["variant"] != "llamacpp-f32"]
    lines = report.recommendations(RunRecord.from_dict(run))
    assert lines[0].startswith("No PPL for the reference llamacpp-f32")
    assert lines[1].startswith("Most accurate (no memory budget set): torch-fp32")


def test_recommendations_of_a_run_with_reference_none_say_so():
    run = sample_dict()
    run["reference"] = None
    lines = report.recommendations(RunRecord.from_dict(run))
    assert lines[0].startswith("No reference variant (--reference none)")
    assert lines[1].startswith("Most accurate (no memory budget set)")


def test_render_text_survives_rows_with_missing_sections():
    run = {"run_id": "r1", "reference": "x-f32",
           "results": [{"variant": "x-f32", "runtime": "x", "precision": "f32", "status": "ok"}]}
    text = report.render_text(RunRecord.from_dict(run))
    assert "x" in text and "No PPL for the reference x-f32" in text


@pytest.mark.parametrize(
    "value, sig, expected",
    [(12345.6, 4, "12346"), (1.23456, 4, "1.235"), (0.0123456, 3, "0.0123"), (0.0000123, 3, "1.23e-05"),
     (0.0, 3, "0"), (None, 3, "—"), (-2.5, 2, "-2.5")],
)
def test_fmt_sig(value, sig, expected):
    assert report.fmt_sig(value, sig) == expected


def test_write_report_writes_every_file_atomically(tmp_path):
    run = sample_dict()
    run["results"][1]["accuracy"]["ppl_stderr"] = float("nan")  # must not leak into strict JSON
    (tmp_path / "report.json").write_text("old")
    paths = report_files.write_report(RunRecord.from_dict(run), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(report_files.FILE_NAMES)  # no temp files left

    document = json.loads(paths["report.json"].read_text())
    assert document["schema_version"] == 1 and document["reference"] == "llamacpp-f32"
    assert document["corpus"].items() >= run["corpus"].items() and len(document["results"]) == 11
    assert document["results"][1]["accuracy"]["ppl_stderr"] is None
    assert document["summary"]["pareto"]["ppl_vs_decode_tok_s"][0] == "llamacpp-f32"
    assert document["summary"]["delta_ppl_pct"]["llamacpp-q2_k"] == pytest.approx(30.0)
    assert document["summary"]["recommendations"][0].startswith("Fastest")

    table = list(csv.DictReader(io.StringIO(paths["results.csv"].read_text())))
    assert [r["variant"] for r in table] == [r["variant"] for r in run["results"]]
    q8 = table[5]
    assert float(q8["decode_tok_s_spread_min"]) == pytest.approx(57.0) and float(q8["delta_ppl_pct"]) == pytest.approx(0.5)
    assert table[3]["status"] == "unavailable" and table[3]["ppl"] == ""

    markdown = paths["report.md"].read_text()
    assert re.search(r"\| llamacpp +\| q4_k_m", markdown) and "![PPL against decode speed](tradeoff.png)" in markdown
    page = paths["report.html"].read_text()
    assert page.count("<tr>") == 12 and "data:image/png;base64,iVBORw0KGgo" in page


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(report_files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        report_files.write_atomic(target, b"new")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def colour_pixels(png_bytes, hex_colour, tolerance=0.04):
    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(png_bytes), format="png")[..., :3]
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(np.all(np.abs(image - rgb) < tolerance, axis=-1).sum())


def test_tradeoff_plot_draws_the_frontier_and_the_runtimes():
    png = report_files.tradeoff_png(sample_run())
    assert png.startswith(b"\x89PNG")
    assert colour_pixels(png, report_files.FRONTIER_COLOUR) > 200  # the frontier line
    without_front = sample_dict()
    without_front["results"] = without_front["results"][:3]  # torch only: one-point frontier, no line
    assert colour_pixels(report_files.tradeoff_png(RunRecord.from_dict(without_front)), report_files.FRONTIER_COLOUR) == 0


def test_tradeoff_plot_of_a_run_with_nothing_scored_is_still_written():
    run = {"results": [bad_row("ort-int4", "failed", "boom")]}
    assert report_files.tradeoff_png(RunRecord.from_dict(run)).startswith(b"\x89PNG")
