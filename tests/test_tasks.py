"""lm-eval's tasks through our three runtimes (harness.measure.tasks), held to lm-eval's own hf backend.

The tasks are small local YAML files over documents the tests write (tests/task_files.py): two
multiple-choice tasks (one-word choices; sentence endings whose choices share their context), a
loglikelihood task, a generate_until task and a rolling one, on the default model. lm-eval's
``hf`` backend runs live here on the same torch-fp32 folder and the same tasks; no expected number is
typed in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import task_files

from harness import backends
from harness.errors import UserError
from harness.measure.tasks import TaskSpec, backend_lm, check_tasks, score_tasks

MC_DOCS, STORY_DOCS, LL_DOCS, GEN_DOCS, ROLLING_DOCS = 24, 12, 12, 6, 4
RANK_DROP = 20  # points: wide enough that the 24-document interval of a quantized variant may fit
LOGLIKELIHOOD_ATOL = 2e-3  # summed over a few tokens; fp32 torch in two code paths (ours, lm-eval's batching)
# Another runtime's fp32 kernels: llama.cpp's F32 CPU path differs from torch by up to about 1e-3 per token on
# these short sequences (measured: -0.18559 against -0.18579 for one continuation), which a mean NLL over
# hundreds of tokens averages out and a sum over one continuation does not.
CROSS_RUNTIME_ATOL = 2e-2


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    return {"harness_mc": task_files.multiple_choice(folder, MC_DOCS),
            "harness_story": task_files.stories(folder, STORY_DOCS),
            "harness_ll": task_files.loglikelihood(folder, LL_DOCS),
            "harness_gen": task_files.generate_until(folder, GEN_DOCS),
            "harness_rolling": task_files.rolling(folder, ROLLING_DOCS)}


def ours(variant, tasks: dict[str, Path], tokenizer, names=None) -> dict:
    spec = TaskSpec(tuple(str(tasks[n]) for n in (names or tasks)), limit=None)
    with backends.open_backend(variant, threads=2) as backend:
        return score_tasks(backend_lm(backend, tokenizer), spec)


@pytest.fixture(scope="module")
def tokenizer(prepared):
    """The model's one transformers tokenizer, the torch-fp32 copy's, as compare hands every variant."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepared["torch-fp32"].path)


@pytest.fixture(scope="module")
def torch_scores(prepared, tasks, tokenizer) -> dict:
    return ours(prepared["torch-fp32"], tasks, tokenizer)


@pytest.fixture(scope="module")
def lm_eval_hf(prepared, tasks) -> dict:
    """lm-eval's own hf backend on the torch-fp32 folder: per task, its samples by document."""
    from lm_eval import evaluator

    from harness.measure.tasks import task_manager

    result = evaluator.simple_evaluate(
        model="hf", model_args={"pretrained": prepared["torch-fp32"].path, "dtype": "float32"}, device="cpu",
        batch_size=1, tasks=list(tasks), task_manager=task_manager([str(p) for p in tasks.values()]),
        log_samples=True, bootstrap_iters=0)
    return {task: {s["doc_id"]: s for s in samples} for task, samples in result["samples"].items()}


@pytest.mark.parametrize("task, docs", (("harness_mc", MC_DOCS), ("harness_story", STORY_DOCS)))
def test_multiple_choice_answers_equal_lm_evals_hf_backend_document_by_document(torch_scores, lm_eval_hf, task, docs):
    mine = torch_scores[task]
    assert mine["docs"] == docs and sorted(mine["doc_ids"]) == sorted(lm_eval_hf[task])
    for metric in ("acc", "acc_norm"):
        theirs = [lm_eval_hf[task][d][metric] for d in mine["doc_ids"]]
        assert mine["outcomes"][metric] == theirs, metric


def test_each_choices_log_likelihood_and_greedy_flag_equal_lm_evals_hf_backend(prepared, lm_eval_hf, tokenizer):
    # lm-eval's own requests (context, continuation) answered by our adapter, against its hf backend's answers.
    variant = prepared["torch-fp32"]
    samples = [s for task in ("harness_mc", "harness_story", "harness_ll") for s in lm_eval_hf[task].values()]
    requests = [SimpleNamespace(args=tuple(args)) for s in samples for args in s["arguments"]]
    theirs = [resp[0] for s in samples for resp in s["resps"]]
    with backends.open_backend(variant, threads=2) as backend:
        mine = backend_lm(backend, tokenizer).loglikelihood(requests)
    np.testing.assert_allclose([ll for ll, _ in mine], [float(ll) for ll, _ in theirs], atol=LOGLIKELIHOOD_ATOL)
    assert [greedy for _, greedy in mine] == [bool(greedy) for _, greedy in theirs]


def test_loglikelihood_and_greedy_flags_equal_lm_evals_hf_backend(torch_scores, lm_eval_hf):
    mine = torch_scores["harness_ll"]
    theirs = [lm_eval_hf["harness_ll"][d] for d in mine["doc_ids"]]
    assert mine["outcomes"]["acc"] == [s["acc"] for s in theirs]  # lm-eval's is-greedy flag, per document
    np.testing.assert_allclose(mine["outcomes"]["perplexity"], [s["perplexity"] for s in theirs],
                               atol=LOGLIKELIHOOD_ATOL)


def test_generate_until_answers_equal_lm_evals_hf_backend(torch_scores, lm_eval_hf):
    mine = torch_scores["harness_gen"]
    theirs = [lm_eval_hf["harness_gen"][d] for d in mine["doc_ids"]]
    assert mine["outcomes"]["exact_match"] == [s["exact_match"] for s in theirs]
    assert mine["metrics"]["exact_match"] == pytest.approx(np.mean([s["exact_match"] for s in theirs]))


def test_rolling_perplexities_equal_lm_evals_hf_backend(torch_scores, lm_eval_hf):
    # loglikelihood_rolling: whole texts, token by token. lm-eval keeps each document's (log-likelihood, words)
    # and (log-likelihood, bytes); the task's figures aggregate them over the documents.
    mine = torch_scores["harness_rolling"]
    theirs = list(lm_eval_hf["harness_rolling"].values())
    assert mine["docs"] == len(theirs) == ROLLING_DOCS

    def aggregate(key: str) -> tuple[float, float]:
        return sum(s[key][0] for s in theirs), sum(s[key][1] for s in theirs)

    loglik, words = aggregate("word_perplexity")
    assert mine["metrics"]["word_perplexity"] == pytest.approx(np.exp(-loglik / words), rel=1e-4)
    loglik, n_bytes = aggregate("byte_perplexity")
    assert mine["metrics"]["byte_perplexity"] == pytest.approx(np.exp(-loglik / n_bytes), rel=1e-4)
    assert mine["metrics"]["bits_per_byte"] == pytest.approx(-loglik / n_bytes / np.log(2), rel=1e-4)


def test_fp32_variants_of_the_three_runtimes_agree_document_by_document(prepared, tasks, tokenizer, torch_scores):
    for name in ("ort-fp32", "llamacpp-f32"):
        other = ours(prepared[name], tasks, tokenizer, ["harness_mc", "harness_story", "harness_ll"])
        for task in ("harness_mc", "harness_story", "harness_ll"):
            assert other[task]["doc_ids"] == torch_scores[task]["doc_ids"]
            assert other[task]["outcomes"]["acc"] == torch_scores[task]["outcomes"]["acc"], (name, task)
        np.testing.assert_allclose(other["harness_ll"]["outcomes"]["perplexity"],
                                   torch_scores["harness_ll"]["outcomes"]["perplexity"], atol=CROSS_RUNTIME_ATOL)


# ---- through compare: the row, the paired figures, the table -------------------------------------
SHORT_RUN = ("--ctx", "128", "--max-tokens", "256", "--repetitions", "1", "--max-repetitions", "1", "--warmup", "0",
             "--prompt-tokens", "16", "--gen-tokens", "4", "--agreement-tokens", "4")


def compare(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "compare", *SHORT_RUN, "--out", str(tmp_path / "out"),
                           "--store", str(tmp_path / "runs.sqlite"), *args], capture_output=True, text=True,
                          timeout=1500)


@pytest.fixture(scope="module")
def task_run(prepared, tasks, tmp_path_factory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("task-run")
    proc = compare(tmp, "--variants", "llamacpp-f32,llamacpp-q2_k", "--tasks", str(tasks["harness_mc"]),
                   "--task-limit", str(MC_DOCS), "--rank-by", "harness_mc/acc_norm", "--max-task-drop", str(RANK_DROP))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads((tmp / "out" / "report.json").read_text()), proc.stdout


def test_compare_scores_the_task_on_every_variant_and_shows_its_column(task_run):
    report, printed = task_run
    rows = {r["variant"]: r for r in report["results"]}
    assert report["settings"]["tasks"] == [report["settings"]["tasks"][0]] and report["settings"]["task_limit"] == MC_DOCS
    for row in rows.values():
        scores = row["tasks"]["harness_mc"]
        assert scores["docs"] == MC_DOCS and len(scores["outcomes"]["acc_norm"]) == MC_DOCS
        assert scores["metrics"]["acc_norm"] == pytest.approx(np.mean(scores["outcomes"]["acc_norm"]))
        assert scores["stderr"]["acc_norm"] > 0 and scores["seconds"] > 0
    assert "harness_mc acc_norm" in printed.splitlines()[printed.splitlines().index(
        next(line for line in printed.splitlines() if line.startswith("runtime")))]


def test_the_paired_difference_and_mcnemar_p_equal_a_float64_recomputation(task_run):
    from scipy.stats import binomtest

    report, _ = task_run
    rows = {r["variant"]: r for r in report["results"]}
    ref, quant = (rows[name]["tasks"]["harness_mc"] for name in ("llamacpp-f32", "llamacpp-q2_k"))
    summary = report["summary"]["tasks"]["llamacpp-q2_k"]["harness_mc"]
    for metric in ("acc", "acc_norm"):
        by_doc = dict(zip(ref["doc_ids"], ref["outcomes"][metric]))
        r = np.array([by_doc[d] for d in quant["doc_ids"]], dtype=np.float64)
        v = np.array(quant["outcomes"][metric], dtype=np.float64)
        d = v - r
        half = 1.959963984540054 * d.std(ddof=1) / np.sqrt(len(d))
        assert summary[metric]["delta"] == pytest.approx(d.mean(), abs=1e-12)
        assert summary[metric]["delta_ci"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-12)
        b, c = int(np.sum((r == 1) & (v == 0))), int(np.sum((r == 0) & (v == 1)))
        assert (summary[metric]["only_reference"], summary[metric]["only_variant"]) == (b, c)
        assert summary[metric]["mcnemar_p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
    assert "delta" not in report["summary"]["tasks"]["llamacpp-f32"]["harness_mc"]["acc"]  # the reference itself


def test_the_answer_ranks_on_the_task_within_the_drop_at_the_paired_bound(task_run):
    report, printed = task_run
    label = f"within −{RANK_DROP} points of llamacpp-f32 on harness_mc/acc_norm (95% bound): "
    (fastest,) = [line for line in report["summary"]["recommendations"] if line.startswith("Fastest " + label)]
    assert fastest in printed
    low = report["summary"]["tasks"]["llamacpp-q2_k"]["harness_mc"]["acc_norm"]["delta_ci"][0] * 100
    rows = {r["variant"]: r for r in report["results"]}
    speeds = {name: rows[name]["efficiency"]["decode_tok_s"] for name in rows}
    eligible = ["llamacpp-f32"] + (["llamacpp-q2_k"] if low >= -RANK_DROP else [])
    assert fastest.removeprefix("Fastest " + label).startswith(max(eligible, key=speeds.get) + ",")


@pytest.mark.parametrize("given, said", [
    ("no_such_task_anywhere", "--tasks no_such_task_anywhere: no such lm-eval task or group"),
    ("./missing_task.yaml", "--tasks ./missing_task.yaml: no such task file or folder"),
])
def test_a_task_that_cannot_run_is_one_line_and_exit_2_before_anything_is_measured(tmp_path, given, said):
    proc = compare(tmp_path, "--variants", "llamacpp-q8_0", "--tasks", given)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {said}"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_task_whose_documents_cannot_be_had_offline_names_them(tmp_path, tasks):
    broken = tmp_path / "offline_task.yaml"
    broken.write_text(tasks["harness_mc"].read_text().replace("task: harness_mc", "task: offline_task")
                      .replace(str(tasks["harness_mc"].with_suffix(".jsonl")), str(tmp_path / "gone.jsonl")))
    proc = compare(tmp_path, "--variants", "llamacpp-q8_0", "--tasks", str(broken))
    assert proc.returncode == 2 and "--tasks offline_task: its documents could not be loaded" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]


def test_tasks_without_lm_eval_installed_name_the_command_that_installs_it(monkeypatch, tasks):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # an import of it now fails, as where it is not installed
    with pytest.raises(UserError) as raised:
        check_tasks(TaskSpec((str(tasks["harness_mc"]),)))
    assert raised.value.for_cli().endswith("install the tasks extra: pip install -e '.[tasks]'")


def test_report_html_offers_every_task_metric_as_an_axis_with_its_interval(task_run):
    from harness.report import html as report_html
    from harness.results import RunRecord

    run = RunRecord.from_dict(task_run[0])
    data = report_html.plot_data(run)
    keys = [axis["key"] for axis in data["axes"]["y"]]
    assert {"harness_mc/acc", "harness_mc/acc_norm"} <= set(keys)
    point = next(p for p in data["points"] if p["variant"] == "llamacpp-q2_k")
    scores = run.row("llamacpp-q2_k").tasks["harness_mc"]
    figure = point["figures"]["harness_mc/acc_norm"]
    half = 1.959963984540054 * scores.stderr["acc_norm"]
    assert figure["value"] == scores.metrics["acc_norm"]
    assert (figure["low"], figure["high"]) == pytest.approx((figure["value"] - half, figure["value"] + half), abs=1e-3)


def test_diff_pairs_two_runs_task_scores_by_document(task_run):
    import copy

    from scipy.stats import binomtest

    from harness import report, store
    from harness.results import RunRecord

    run_a = RunRecord.from_dict(task_run[0])
    changed = copy.deepcopy(task_run[0])
    scores = next(r for r in changed["results"] if r["variant"] == "llamacpp-q2_k")["tasks"]["harness_mc"]
    scores["outcomes"]["acc"][:3] = [1.0 - x for x in scores["outcomes"]["acc"][:3]]  # three answers flip
    scores["metrics"]["acc"] = float(np.mean(scores["outcomes"]["acc"]))
    changed["run_id"] = "b"
    run_b = RunRecord.from_dict(changed)
    variant = next(v for v in store.diff(run_a, run_b).variants if v.variant == "llamacpp-q2_k")
    change = next(c for c in variant.tasks if (c.task, c.metric) == ("harness_mc", "acc"))
    a = np.array(run_a.row("llamacpp-q2_k").tasks["harness_mc"].outcomes["acc"])
    b = np.array(scores["outcomes"]["acc"])
    assert change.paired.delta == pytest.approx(float(np.mean(b - a)))
    flips = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    assert (change.paired.only_reference, change.paired.only_variant) == flips and sum(flips) == 3
    assert change.paired.mcnemar_p == pytest.approx(binomtest(min(flips), 3, 0.5).pvalue)
    assert "llamacpp-q2_k: harness_mc acc " in report.render_diff(store.diff(run_a, run_b))


def test_task_yaml_names_are_read_past_lm_evals_own_tags_and_a_folders_templates(tmp_path):
    from harness.measure.tasks import task_names

    (tmp_path / "mine.yaml").write_text("task: mine\nprocess_docs: !function utils.process_docs\ndataset_path: json\n")
    (tmp_path / "_template.yaml").write_text("dataset_path: json\noutput_type: multiple_choice\n")  # included by others
    (tmp_path / "group.yaml").write_text("group: my_group\ntask:\n  - mine\n")
    assert task_names([str(tmp_path)]) == ["my_group", "mine"]
    assert task_names([str(tmp_path / "mine.yaml"), "hellaswag"]) == ["mine", "hellaswag"]
    with pytest.raises(ValueError, match="defines no task or group"):
        task_names([str(tmp_path / "_template.yaml")])


def test_a_hub_dataset_out_of_reach_is_one_line_naming_it(tmp_path):
    # A task whose documents live on the Hugging Face hub, with the hub out of reach (no network here; the hub
    # client is left online, so it tries and retries, logging as it goes): one line of ours, naming the dataset.
    task = tmp_path / "hub_task.yaml"
    task.write_text("task: hub_task\ndataset_path: harness-tests/no-such-dataset\ntest_split: test\n"
                    "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-m", "harness", "compare", "--variants", "llamacpp-q8_0", "--tasks",
                           str(task), "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: --tasks hub_task: its documents could not be loaded")
    assert "harness-tests/no-such-dataset" in lines[0]
