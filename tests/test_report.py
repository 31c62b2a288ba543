"""The report: Pareto frontiers, table cells, recommendations and the files, on synthetic runs."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest

from harness import report, results
from harness.report import files as report_files
from harness.results import RunRecord, VariantRow

REF_PPL = 10.0  # the sample run's reference


def paired(ppl, delta_se):
    """The paired fields of a row with PPL ``ppl`` scored on the reference's tokens, its Δln PPL ± ``delta_se``."""
    mean = math.log(ppl / REF_PPL)
    return {"delta_nll_mean": mean, "delta_nll_stderr": delta_se, "delta_ppl_pct": 100 * (ppl / REF_PPL - 1),
            "delta_ppl_pct_ci": [100 * (math.exp(mean + s * 1.96 * delta_se) - 1) for s in (-1, 1)]}


def ok_row(variant, ppl, decode, rss, size_mb, kld=0.01, noisy=(), delta_se=0.001):
    runtime, precision = variant.split("-", 1)
    return {
        "variant": variant, "runtime": runtime, "precision": precision, "status": "ok", "error": None,
        "accuracy": {
            "ppl": ppl, "ppl_stderr": ppl / 100, "nll_mean": math.log(ppl), "tokens_scored": 4096,
            **paired(ppl, delta_se),
            "kld_mean": kld, "kld_stderr": kld / 10, "kld_p99": kld * 10, "top1_agreement": 100 - kld * 100,
            "delta_p_rms": kld, "generation_divergence": [None, 12],
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
    ref["accuracy"].update({key: None for key in ref["accuracy"] if key.startswith(("delta_", "kld_"))},
                           top1_agreement=None)
    return {
        "schema_version": 1, "run_id": "20261126T194630-abcd", "created_utc": "2026-11-26T19:46:30Z",
        "model": {"name": "smollm2-135m", "source": "/models/smol.gguf", "source_sha256": "ab" * 32},
        "corpus": {"name": "wiki-sample", "protocol": "sliding", "ctx": 512, "tokens_scored": 4096},
        "environment": {"cpu": "Test CPU", "cpu_count": 2, "versions": {"numpy": "2.0"}},
        "reference": "llamacpp-f32",
        "settings": {"threads": 2, "max_ppl_increase_pct": 5.0, "memory_budget_mb": None},
        "results": [
            ok_row("torch-fp32", 10.00, 20, 900, 540, kld=5e-7),  # kernel noise: the KLD floor
            ok_row("torch-bf16", 10.02, 12, 600, 270),
            ok_row("ort-fp32", 10.00, 30, 800, 540, kld=4e-7),
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
    # 100 (exp(ln 1.04 +/- 1.96 * 0.001) - 1) = [3.796, 4.204]: half-width 0.204
    assert q4["ΔPPL %"] == "+4.00 ± 0.20" and q4["decode tok/s"] == "80.0" and q4["prefill tok/s"] == "800"
    assert q4["TTFT ms"] == "12.5" and q4["marks"] == "S M" and q4["KLD"] == "0.0100"
    assert rows["llamacpp-q4_0"]["marks"] == "S"
    assert rows["torch-bf16"]["marks"] == "M"
    # KLD 5e-7 and 4e-7: the other runtimes' fp32 rows are the noise floor itself
    assert rows["torch-fp32"]["marks"] == "≈" and rows["ort-fp32"]["marks"] == "≈"
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
    assert lines[0] == ("Fastest within +5% PPL of llamacpp-f32 (95% upper bound): llamacpp-q4_0, 90.0 decode tok/s, "
                        "PPL 10.45 (+4.50 ± 0.20%).")
    assert lines[1].startswith("Smallest within +5% PPL of llamacpp-f32 (95% upper bound): llamacpp-q4_k_m, 100.0 MB")
    # The fp32 variants are more accurate but need 700+ MB. q8_0's Δ is 0.0030 from bf16's, inside
    # 1.96 (0.001 + 0.001) = 0.0039: a tie; q6_k's 0.0080 is not.
    assert lines[2] == ("Most accurate under 650 MB peak memory (tied within noise): torch-bf16, llamacpp-q8_0; "
                        "lowest PPL torch-bf16, PPL 10.02 (+0.20 ± 0.20%), peak RSS 600 MB.")
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
    assert lines[1].startswith("Most accurate (no memory budget set; tied within noise): torch-fp32, ort-fp32, "
                               "torch-bf16; lowest PPL torch-fp32")


def test_recommendations_of_a_run_with_reference_none_say_so():
    run = sample_dict()
    run["reference"] = None
    lines = report.recommendations(RunRecord.from_dict(run))
    assert lines[0].startswith("No reference variant (--reference none)")
    # no paired statistics to judge noise by: only identical PPLs tie
    assert lines[1].startswith("Most accurate (no memory budget set; tied within noise): torch-fp32, ort-fp32, "
                               "llamacpp-f32; lowest PPL llamacpp-f32, PPL 10.00.")


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
    assert document["schema_version"] == results.SCHEMA_VERSION and document["models"][0]["reference"] == "llamacpp-f32"
    assert document["corpus"]["name"] == run["corpus"]["name"] and len(document["results"]) == 11
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
    assert re.search(r"\| llamacpp +\| q4_k_m", markdown) and "![accuracy against decode speed](tradeoff.png)" in markdown
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


# ---- paired intervals, ties, the KLD noise floor, llama-perplexity's layout ----------------------------
def with_rows(**changes) -> dict:
    """The sample run with some rows' accuracy fields changed: ``{variant: {field: value}}``."""
    run = sample_dict()
    for row in run["results"]:
        row.get("accuracy", {}).update(changes.get(row["variant"].replace("-", "_"), {}))
    return run


def cells(run: dict) -> dict:
    return {f"{r[0]}-{r[1]}": dict(zip(report.HEADERS, r)) for r in report.table_rows(RunRecord.from_dict(run))}


def test_delta_ppl_cell_is_the_half_width_of_an_asymmetric_interval_and_old_runs_show_the_point():
    run = with_rows(llamacpp_q2_k=paired(13.0, 0.05))
    # exp(ln 1.3 -/+ 0.098) - 1: [+17.86, +43.39], half-width 12.76 (the delta method's 1.96 * 0.05 * 130 = 12.74)
    assert cells(run)["llamacpp-q2_k"]["ΔPPL %"] == "+30.00 ± 12.76"
    stored = with_rows(llamacpp_q2_k={"delta_ppl_pct": None, "delta_ppl_pct_ci": None})
    assert cells(stored)["llamacpp-q2_k"]["ΔPPL %"] == "+30.00"  # from PPL / PPL_ref, as before
    # the paired value wins over the ratio when both are there (they differ only by rounding in a real run)
    shifted = with_rows(llamacpp_q2_k={"delta_ppl_pct": 29.5})
    assert report.summary(RunRecord.from_dict(shifted))["delta_ppl_pct"]["llamacpp-q2_k"] == 29.5


def test_within_the_limit_means_the_upper_end_of_the_interval():
    # q4_0 is +4.50% but known only to +/- 0.01 nats: its upper end, 100 (1.045 e^0.0196 - 1) = 6.57%, is past 5%.
    run = RunRecord.from_dict(with_rows(llamacpp_q4_0=paired(10.45, 0.01)))
    lines = report.recommendations(run, max_ppl_increase_pct=5.0)
    assert lines[0].startswith("Fastest within +5% PPL of llamacpp-f32 (95% upper bound): llamacpp-q4_k_m, 80.0")
    assert report.delta_ppl_upper(run.row("llamacpp-q4_0"), 10.0, run.reference) == pytest.approx(
        100 * (1.045 * math.exp(1.96 * 0.01) - 1))
    # a stored run without intervals is judged on the point value, and the line does not claim a bound
    stored = sample_dict()
    for row in stored["results"]:
        row.get("accuracy", {}).update(delta_ppl_pct_ci=None)
    lines = report.recommendations(RunRecord.from_dict(stored), max_ppl_increase_pct=5.0)
    assert lines[0].startswith("Fastest within +5% PPL of llamacpp-f32: llamacpp-q4_0, 90.0 decode tok/s, "
                               "PPL 10.45 (+4.50%)")


def test_ties_use_the_conservative_sum_of_standard_errors():
    # bf16 and q8_0 both at se 0.002; their Δ's differ by 1.5 * 1.96 * 0.002 = 0.00588: significant under a
    # pooled sqrt(2) * 0.002 error (0.00554), but not under the worst-case sum 0.004 (0.00784): a tie.
    bf16 = math.log(1.002)
    q8 = bf16 + 1.5 * 1.96 * 0.002
    run = with_rows(torch_bf16=paired(10.02, 0.002), llamacpp_q8_0=paired(10 * math.exp(q8), 0.002))
    run["results"][5]["accuracy"]["ppl"] = 10 * math.exp(q8)
    line = report.recommendations(RunRecord.from_dict(run), memory_budget_mb=650)[2]
    assert line.startswith("Most accurate under 650 MB peak memory (tied within noise): torch-bf16, llamacpp-q8_0;")
    # known precisely, the same gap is a clear winner, named alone
    run = with_rows(torch_bf16=paired(10.02, 1e-4), llamacpp_q8_0=paired(10.05, 1e-4))
    line = report.recommendations(RunRecord.from_dict(run), memory_budget_mb=650)[2]
    assert line == "Most accurate under 650 MB peak memory: torch-bf16, PPL 10.02 (+0.20 ± 0.02%), peak RSS 600 MB."


def test_noise_floor_comes_from_other_runtimes_fp32_rows_else_the_constant():
    run = RunRecord.from_dict(sample_dict())
    assert report.kld_noise_floor(run) == (5e-7, "torch-fp32")  # the larger of torch-fp32 and ort-fp32
    # 1e-6 - 1.96 * 3e-7 = 4.1e-7 reaches the floor; 2e-6 - 5.9e-7 does not
    near = with_rows(llamacpp_q8_0={"kld_mean": 1e-6, "kld_stderr": 3e-7},
                     llamacpp_q6_k={"kld_mean": 2e-6, "kld_stderr": 3e-7})
    marks = {name: row["marks"] for name, row in cells(near).items()}
    assert marks["llamacpp-q8_0"] == "≈ S M" and "≈" not in marks["llamacpp-q6_k"]
    assert marks["llamacpp-f32"] == "ref S M"
    summary = report.summary(RunRecord.from_dict(near))
    assert summary["kld_noise_floor"] == 5e-7 and summary["kld_noise_floor_source"] == "torch-fp32"
    assert summary["indistinguishable_from_reference"] == ["torch-fp32", "ort-fp32", "llamacpp-q8_0"]
    # with the reference in torch, llamacpp-f32 is the other runtime's fp32; torch-fp32 itself never counts
    moved = near | {"reference": "torch-fp32"}
    moved["results"][4]["accuracy"].update(kld_mean=8e-7)
    assert report.kld_noise_floor(RunRecord.from_dict(moved)) == (8e-7, "llamacpp-f32")
    alone = sample_dict()
    alone["results"] = [r for r in alone["results"] if r["variant"] not in ("torch-fp32", "ort-fp32")]
    assert report.kld_noise_floor(RunRecord.from_dict(alone)) == (report.DEFAULT_KLD_NOISE_FLOOR, None)
    assert "≈ = indistinguishable from the reference" in report.LEGEND


def llama_row() -> VariantRow:
    """A q8_0 row with every statistic llama-perplexity prints, round numbers to read the layout by."""
    fields = {"ppl": 12.744223, "ppl_stderr": 1.5, "nll_mean": math.log(12.744223), "tokens_scored": 510,
              "delta_nll_mean": 0.010902, "delta_nll_stderr": 0.002, "nll_correlation": 0.99926,
              "paired_sums": {"n": 510, "sum_nll_ref": 510 * math.log(12.606037), "sum_nll_ref2": 510 * 10.0},
              "kld_mean": 0.003835, "kld_stderr": 0.00014, "kld_max": 0.1234, "kld_p999": 0.1, "kld_p99": 0.03,
              "kld_p95": 0.012, "kld_p90": 0.009, "kld_p50": 0.002, "kld_p10": 0.0001, "kld_p05": 0.00005,
              "kld_p01": 0.00001, "kld_p001": 0.000001, "kld_min": 0.0, "top1_agreement": 96.6667,
              "top1_agreement_stderr": 0.795, "delta_p_mean": -0.00123, "delta_p_stderr": 0.00045,
              "delta_p_max": 0.2, "delta_p_p999": 0.15, "delta_p_p99": 0.05, "delta_p_p95": 0.02,
              "delta_p_p90": 0.01, "delta_p_p75": 0.002, "delta_p_p50": 0.0, "delta_p_p25": -0.002,
              "delta_p_p10": -0.01, "delta_p_p05": -0.02, "delta_p_p01": -0.05, "delta_p_p001": -0.15,
              "delta_p_min": -0.25, "delta_p_rms": 0.02345, "delta_p_rms_stderr": 0.00123}
    return VariantRow.from_dict({"variant": "llamacpp-q8_0", "runtime": "llamacpp", "precision": "q8_0",
                                 "accuracy": fields})


def test_divergence_lines_follow_llama_perplexity_layout():
    ref = VariantRow.from_dict({"variant": "llamacpp-f32", "runtime": "llamacpp", "precision": "f32",
                                "accuracy": {"ppl": 12.606037, "ppl_stderr": 1.45}})
    lines = report.divergence_lines(llama_row(), ref)
    titles = [line for line in lines if line.startswith("======")]
    assert titles == ["====== Perplexity statistics ======", "====== KL divergence statistics ======",
                      "====== Token probability statistics ======"]
    # PPL(base) from the paired sums: exp(mean) ± PPL sqrt((10 - mean^2) / 509)
    base_se = 12.606037 * math.sqrt((10.0 - math.log(12.606037) ** 2) / 509)
    assert lines[1] == "Mean PPL(Q)                   :  12.744223 ±   1.500000"
    assert lines[2] == f"Mean PPL(base)                :  12.606037 ± {base_se:10.6f}"
    assert lines[3] == "Cor(ln(PPL(Q)), ln(PPL(base))):  99.93%"
    assert lines[4] == "Mean ln(PPL(Q)/PPL(base))     :   0.010902 ±   0.002000"
    ratio = math.exp(0.010902)
    assert lines[5] == f"Mean PPL(Q)/PPL(base)         : {ratio:10.6f} ± {ratio * 0.002:10.6f}"
    for expected in ("Mean    KLD:   0.003835 ±   0.000140", "Maximum KLD:   0.123400", "99.9%   KLD:   0.100000",
                     "Median  KLD:   0.002000", " 0.1%   KLD:   0.000001", "Minimum KLD:   0.000000",
                     "Mean    Δp: -0.123 ± 0.045 %", "Maximum Δp: 20.000%", "75.0%   Δp:  0.200%",
                     "Minimum Δp: -25.000%", "RMS Δp    :  2.345 ± 0.123 %", "Same top p: 96.667 ± 0.795 %"):
        assert expected in lines, expected
    assert len(lines) == 7 + 1 + 13 + 1 + 17  # llama-perplexity's lines, one for one


def test_divergence_lines_of_the_reference_an_old_run_and_a_failed_row():
    ref = VariantRow.from_dict({"variant": "llamacpp-f32", "runtime": "llamacpp", "precision": "f32",
                                "accuracy": {"ppl": 12.6, "ppl_stderr": 1.45}})
    assert report.divergence_lines(ref, ref)[-1] == "llamacpp-f32 is the reference: nothing to diverge from."
    old = VariantRow.from_dict({"variant": "llamacpp-q8_0", "runtime": "llamacpp", "precision": "q8_0",
                                "accuracy": {"ppl": 12.7, "kld_mean": 0.004, "kld_p99": 0.03}})
    lines = report.divergence_lines(old, ref)
    assert "99.0%   KLD:   0.030000" in lines and "99.9%   KLD:          —" in lines
    assert "Mean PPL(base)                :  12.600000 ±   1.450000" in lines  # from the reference row
    failed = VariantRow.failed("ort-int4", "ort", "int4", "killed by SIGKILL")
    assert report.divergence_lines(failed, ref) == ["ort-int4: failed: killed by SIGKILL; no statistics."]


def test_show_variant_prints_llama_perplexity_layout_and_an_unknown_name_is_one_line(tmp_path, capsys):
    from harness import cli, store

    run = sample_dict()
    run["results"][5] = llama_row().to_dict() | {"efficiency": run["results"][5]["efficiency"]}
    path = tmp_path / "store.sqlite"
    store.save(RunRecord.from_dict(run), path)
    assert cli.main(["show", "20261126T19", "--variant", "llamacpp-q8_0", "--store", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("run 20261126T194630-abcd: llamacpp-q8_0 against llamacpp-f32, 510 tokens scored "
                      "of wiki-sample (ctx 512)")
    assert out[1:] == report.divergence_lines(RunRecord.from_dict(run).row("llamacpp-q8_0"),
                                              RunRecord.from_dict(run).row("llamacpp-f32"))
    assert "Same top p: 96.667 ± 0.795 %" in out
    assert cli.main(["show", "20261126T19", "--variant", "llamacpp-q9", "--store", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --variant llamacpp-q9: run 20261126T194630-abcd: 'llamacpp-q9' is not in it")
    assert "llamacpp-q8_0" in err[0] and "torch-fp32" in err[0]


def crowded_run() -> RunRecord:
    """Thirteen variants within 1% of each other on both axes: every default label position collides."""
    rows = [ok_row(f"llamacpp-q{i}_k", 10.0 + 0.01 * (i % 4), 50 + 0.4 * i, 300, 100) for i in range(13)]
    return RunRecord.from_dict({"reference": "llamacpp-q0_k", "results": rows})


def label_boxes(fig):
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text()]  # leader lines are annotations without text
    return labels, [t.get_window_extent(renderer) for t in labels], ax.get_window_extent(renderer)


def test_tradeoff_labels_do_not_overlap_on_a_crowded_run():
    import matplotlib.pyplot as plt

    fig = report_files.tradeoff_figure(crowded_run())
    try:
        labels, boxes, frame = label_boxes(fig)
        assert sorted(t.get_text() for t in labels) == sorted(f"q{i}_k" for i in range(13))
        overlaps = [(a.get_text(), b.get_text()) for i, (a, p) in enumerate(zip(labels, boxes))
                    for b, q in zip(labels[i + 1:], boxes[i + 1:]) if p.overlaps(q)]
        assert overlaps == []
        assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
        # The run is crowded for real: every label at the first candidate place would collide.
        for label in labels:
            label.set_position((report_files.LABEL_RADII_PT[0], report_files.LABEL_RADII_PT[0]))
            label.set_horizontalalignment("left")
            label.set_verticalalignment("bottom")
        naive = label_boxes(fig)[1]
        assert sum(p.overlaps(q) for i, p in enumerate(naive) for q in naive[i + 1:]) > 5
    finally:
        plt.close(fig)


def test_tradeoff_error_bars_span_the_intervals():
    """Each point's error bars run from the low to the high end of its interval on both axes."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    fig = report_files.tradeoff_figure(sample_run())
    try:
        segments = [s for c in fig.axes[0].collections if isinstance(c, LineCollection) for s in c.get_segments()]
        spans = {(round(s[0][0], 6), round(s[0][1], 6), round(s[1][0], 6), round(s[1][1], 6)) for s in segments}
        # llamacpp-q8_0: PPL 10.05 ± 1.96 × 0.1005, decode 60 with its repetitions' [57, 63].
        ppl, half = 10.05, 1.96 * 0.1005
        assert (57.0, ppl, 63.0, ppl) in spans
        assert (60.0, round(ppl - half, 6), 60.0, round(ppl + half, 6)) in spans
    finally:
        plt.close(fig)


def speed_row(**efficiency) -> VariantRow:
    return VariantRow.from_dict({"variant": "llamacpp-q8_0", "runtime": "llamacpp", "precision": "q8_0",
                                 "efficiency": efficiency})


def test_speed_cell_shows_half_its_interval_in_percent_and_marks_a_missed_target():
    # [68.0, 71.0] around 69.5: half-width 1.5 = 2.16 % of the median.
    precise = speed_row(decode_tok_s=69.5, decode_tok_s_ci=[68.0, 71.0], noisy=[])
    assert report.fmt_speed(precise, "decode_tok_s") == "69.5±2.2%"
    missed = speed_row(decode_tok_s=69.5, decode_tok_s_ci=[60.0, 76.0], noisy=["decode_tok_s"])
    assert report.fmt_speed(missed, "decode_tok_s") == "69.5±12%~"  # 8 / 69.5 = 11.5 %: whole percent past 10
    old = speed_row(decode_tok_s=69.5, decode_tok_s_spread=[60.0, 76.0], noisy=["decode_tok_s"])
    assert report.fmt_speed(old, "decode_tok_s") == "69.5~"  # stored before intervals: no ±
    assert report.fmt_speed(speed_row(), "decode_tok_s") == "—"
    assert "missed the precision target (3%" in report.LEGEND
