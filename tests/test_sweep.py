"""``--sweep``: operating points checked before anything runs, measured per (variant, point), reported and resumed.

The end-to-end run uses the real model in all three runtimes, with small points and budgets (the figures are
not judged here: ``benchmarks/bench_sweep.py`` holds them to llama-bench and llama-batched-bench).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from test_cli_errors import assert_one_line, run_cli

from harness.errors import UserError
from harness.results import Point, RunRecord, VariantRow
from harness.sweep import check_fits, kv_variant_name, parse_sweep

SMALL = ("--max-tokens", "1024", "--repetitions", "1", "--max-repetitions", "2", "--warmup", "0",
         "--prompt-tokens", "16", "--gen-tokens", "4", "--threads", "1", "--speed-budget", "1")
VARIANTS = "llamacpp-q8_0,ort-fp32,torch-fp32"
POINTS = ("--sweep", "depth=0,32", "--sweep", "batch=1,2")


# ---- the axes ---------------------------------------------------------------------------------------
def test_points_are_the_product_of_the_axes_given_the_rest_at_the_runs_values():
    sweep = parse_sweep(("depth=0,4096", "batch=1,8,8"))
    points = sweep.points(threads=2, prompt=512, gen=32)
    assert [(p.depth, p.batch) for p in points] == [(0, 1), (0, 8), (4096, 1), (4096, 8)]
    assert {(p.threads, p.prompt, p.gen) for p in points} == {(2, 512, 32)}
    assert points[3].label == "pp512+tg32 @ d4096, b8, t2"
    assert len({p.key for p in points}) == 4
    assert parse_sweep(None).points(2, 512, 32) == [] and parse_sweep(None).empty


def test_kv_types_become_rows_of_their_own_and_the_default_is_not_repeated():
    from harness.backends.llamacpp.config import LlamaCppSettings

    sweep = parse_sweep(("llamacpp-type-k=f16,q8_0",))
    assert sweep.points(1, 16, 4) == []  # no point axis: the variants' own point only
    combos = sweep.setting_combinations(LlamaCppSettings())  # type_k f16 is the default
    assert combos == [{"type_k": "q8_0"}]
    assert kv_variant_name("llamacpp-q8_0", combos[0]) == "llamacpp-q8_0+ctk-q8_0"


@pytest.mark.parametrize("item, fragment", [
    ("width=1,2", "unknown axis 'width'"),
    ("depth", "AXIS=V1,V2"),
    ("depth=", "at least one value"),
    ("depth=0,4k", "'4k' is not a whole number"),
    ("batch=0", "batch must be at least 1"),
    ("depth=-1", "depth must be at least 0"),
    ("llamacpp-type-k=q9", "'q9' is not a KV-cache type"),
])
def test_a_bad_axis_or_value_is_a_user_error(item, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_sweep((item,))


def test_an_axis_given_twice_is_a_user_error():
    with pytest.raises(UserError, match="swept twice"):
        parse_sweep(("depth=0", "depth=4096"))


def test_a_point_past_the_trained_context_or_the_cores_is_a_user_error():
    sweep = parse_sweep(("depth=0,8000", "threads=1,64"))
    points = sweep.points(1, 512, 32)
    with pytest.raises(UserError, match="past m's trained context of 8192"):
        check_fits(sweep, points, 8192, 64, "m")
    with pytest.raises(UserError, match="sweep threads up to 2"):
        check_fits(sweep, [p for p in points if p.depth == 0], 8192, 2, "m")


@pytest.mark.parametrize("args, fragments", [
    (("--sweep", "depth=0,lots"), ("--sweep depth=0,lots", "not a whole number")),
    (("--sweep", "speed=1"), ("--sweep speed=1", "unknown axis")),
    (("--sweep", "depth=8192"), ("--sweep depth=8192", "trained context of 8192")),
    (("--sweep", "threads=1,512"), ("--sweep threads=1,512", "cores")),
])
def test_bad_sweep_on_the_command_line_is_one_line_before_anything_runs(tmp_path, prepared, args, fragments):
    assert_one_line(run_cli("compare", "--variants", "llamacpp-q8_0", *args, cwd=tmp_path), *fragments)
    assert not any(tmp_path.iterdir())


def test_schema_4_keeps_points_apart_and_reads_a_run_without_them():
    row = VariantRow("a", "llamacpp", "q8_0", point=Point(4096, 8, 2, 512, 32))
    run = RunRecord(results=(VariantRow("a", "llamacpp", "q8_0"),), points=(row,))
    back = RunRecord.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back.points[0].point == row.point and back.results[0].point is None
    assert back.points[0].key != back.results[0].key
    old = {k: v for k, v in run.to_dict().items() if k != "points"}
    assert RunRecord.from_dict({**old, "schema_version": 3}).points == ()


# ---- a real sweep ------------------------------------------------------------------------------------
def _compare(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "compare", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def sweep_run(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    done = _compare("--variants", VARIANTS, *SMALL, *POINTS, "--sweep", "llamacpp-type-k=f16,q8_0",
                    "--out", "run", "--store", str(root / "runs.sqlite"), cwd=root)
    return root, done


def test_sweep_measures_every_variant_at_every_point(sweep_run):
    root, done = sweep_run
    assert done.returncode == 1, done.stderr[-3000:]  # ORT's filled cache of two sequences is unavailable
    assert "sweep: 6 variants x 4 points = 24 measurements, about" in done.stderr
    report = json.loads((root / "run" / "report.json").read_text())
    assert report["schema_version"] == 4
    assert report["settings"]["sweep"] == {"depth": [0, 32], "batch": [1, 2], "llamacpp-type-k": ["f16", "q8_0"]}
    points = [VariantRow.from_dict(r) for r in report["points"]]
    names = {"llamacpp-f32", "llamacpp-f32+ctk-q8_0", "llamacpp-q8_0", "llamacpp-q8_0+ctk-q8_0", "ort-fp32",
             "torch-fp32"}
    assert {r.variant for r in points} == names
    assert len(points) == len(names) * 4
    for row in points:
        assert (row.point.threads, row.point.prompt, row.point.gen) == (1, 16, 4)
        if row.runtime == "ort" and row.point.depth and row.point.batch > 1:
            assert row.status == "unavailable" and "AppendTokens once" in row.error
            continue
        assert row.ok, (row.variant, row.point, row.error)
        eff = row.efficiency
        assert eff.decode_tok_s > 0 and eff.prefill_tok_s > 0 and eff.ttft_ms > 0
        assert eff.decode_seq_tok_s == pytest.approx(eff.decode_tok_s / row.point.batch)
        if row.runtime != "ort":  # the cache's size where the runtime says it
            assert eff.kv_cache_mb > 0
        assert row.backend["threads"] == 1
    by = {(r.variant, r.point.depth, r.point.batch): r for r in points}
    # The KV cache grows with the depth and with the sequences it holds.
    kv = {key[1:]: r.efficiency.kv_cache_mb for key, r in by.items() if key[0] == "llamacpp-q8_0"}
    assert kv[(32, 1)] > kv[(0, 1)] and kv[(0, 2)] == pytest.approx(2 * kv[(0, 1)], rel=0.05)
    assert by["llamacpp-q8_0+ctk-q8_0", 0, 1].backend["type_k"] == "q8_0"


def test_kv_type_rows_carry_accuracy_against_the_reference(sweep_run):
    root, _ = sweep_run
    run = RunRecord.from_dict(json.loads((root / "run" / "report.json").read_text()))
    row = run.row("llamacpp-q8_0+ctk-q8_0")
    assert row.ok and row.backend["type_k"] == "q8_0" and row.backend["type_v"] == "f16"
    assert row.accuracy.kld_mean > 0 and row.accuracy.delta_ppl_pct_ci is not None
    # A quantized K cache moves the reference's own weights too: its KLD against the f16 cache is not zero.
    assert run.row("llamacpp-f32+ctk-q8_0").accuracy.kld_mean > 0


def test_sweep_is_reported_in_the_table_the_answer_and_the_csv(sweep_run):
    root, done = sweep_run
    out = done.stdout
    assert "Operating points" in out and "pp16+tg4 @ d32, b2, t1" in out
    assert "At d0, b1, t1 (pp16, tg4): fastest within +5% PPL is" in out
    assert "Unavailable: ort-fp32 at d32, b2, t1" in out
    assert "q8_0 +ctk-q8_0" in out  # the KV-type row in the main table
    with open(root / "run" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    points = [r for r in rows if r["batch"] == "2"]
    assert points and all(r["depth"] in ("0", "32") and r["threads"] == "1" for r in points)
    assert (root / "run" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_redoes_only_the_points_without_a_row(sweep_run, tmp_path):
    root, _ = sweep_run
    results = (root / "run" / "results.jsonl").read_text().splitlines()
    kept = [line for line in results if '"depth": 32, "batch": 2' not in line]
    assert len(results) - len(kept) == 6  # one point's row for each variant
    resumed = tmp_path / "run"
    resumed.mkdir()
    (resumed / "results.jsonl").write_text("\n".join(kept) + "\n")
    done = _compare("--variants", VARIANTS, *SMALL, *POINTS, "--sweep", "llamacpp-type-k=f16,q8_0", "--resume",
                    "--out", str(resumed), "--store", str(tmp_path / "runs.sqlite"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and all("@ d32, b2, t1" in line for line in progress), progress
    report = json.loads((resumed / "report.json").read_text())
    assert len(report["points"]) == 24


# ---- the answer per point (report logic on made-up rows) ------------------------------------------------
def _variant(name: str, ppl: float) -> VariantRow:
    from harness.results import Accuracy

    return VariantRow(name, "llamacpp", name.split("-")[-1], accuracy=Accuracy(ppl=ppl), model="m")


def _at(name: str, depth: int, batch: int, decode: float, half: float = 0.5) -> VariantRow:
    from harness.results import Efficiency

    efficiency = Efficiency(decode_tok_s=decode, decode_tok_s_ci=[decode - half, decode + half])
    return VariantRow(name, "llamacpp", name.split("-")[-1], efficiency=efficiency, model="m",
                      point=Point(depth, batch, 2, 512, 32))


def _run(points: list[VariantRow]) -> RunRecord:
    from harness.results import ModelInfo, RunSettings

    variants = (_variant("llamacpp-f32", 10.0), _variant("llamacpp-q8_0", 10.1), _variant("llamacpp-q4_0", 10.3),
                _variant("llamacpp-q2_k", 14.0))  # q2_k is 40 % worse: never an answer
    return RunRecord(models=(ModelInfo(name="m", reference="llamacpp-f32"),), results=variants, points=tuple(points),
                     settings=RunSettings(max_ppl_increase_pct=5.0, sweep={"depth": [0, 4096], "batch": [1, 8]}))


def test_the_answer_is_given_per_point_and_says_where_it_flips():
    from harness.report import point_lines

    run = _run([_at("llamacpp-q4_0", 0, 1, 90), _at("llamacpp-q8_0", 0, 1, 70), _at("llamacpp-q2_k", 0, 1, 200),
                _at("llamacpp-q4_0", 0, 8, 150), _at("llamacpp-q8_0", 0, 8, 180),
                _at("llamacpp-q4_0", 4096, 1, 40), _at("llamacpp-q8_0", 4096, 1, 30),
                _at("llamacpp-q4_0", 4096, 8, 60), _at("llamacpp-q8_0", 4096, 8, 80)])
    lines = point_lines(run)
    assert "At d0, b1, t2 (pp512, tg32): fastest within +5% PPL is llamacpp-q4_0, 90.0 decode tok/s." in lines
    assert "At d4096, b8, t2 (pp512, tg32): fastest within +5% PPL is llamacpp-q8_0, 80.0 decode tok/s." in lines
    assert "From batch 8 on (at depth 0): llamacpp-q8_0 instead of llamacpp-q4_0." in lines
    assert "From batch 8 on (at depth 4096): llamacpp-q8_0 instead of llamacpp-q4_0." in lines
    assert not any("llamacpp-q2_k" in line for line in lines)
    assert not any(line.startswith("From depth") for line in lines)  # the winner holds along depth


def test_a_lead_within_noise_is_a_tie_and_no_flip():
    from harness.report import point_lines

    run = _run([_at("llamacpp-q4_0", 0, 1, 90), _at("llamacpp-q8_0", 0, 1, 70),
                _at("llamacpp-q4_0", 0, 8, 150, half=10), _at("llamacpp-q8_0", 0, 8, 155, half=10)])
    lines = point_lines(run)
    assert ("At d0, b8, t2 (pp512, tg32): fastest within +5% PPL is llamacpp-q8_0, 155 decode tok/s "
            "(tied within noise: llamacpp-q4_0).") in lines
    assert not any(line.startswith("From") for line in lines)
