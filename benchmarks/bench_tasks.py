"""lm-eval's tasks through the harness against lm-eval's own hf backend: the same answers, and the wall time.

On local multiple-choice tasks (documents made up by ``tests/task_files.py``, 200 each by default):
``harness_mc``, one-word choices, and ``harness_story``, shaped as HellaSwag (a context of two sentences,
four endings of a sentence: the choices share their context). In alternating rounds in this one process:
the harness's torch-fp32 (``harness.measure.tasks`` over our torch backend) against lm-eval's ``hf``
backend on the same folder, and the harness's ort-fp32 against lm-eval's ``onnxruntime-genai`` backend on
that folder, each round loading its model and scoring every document. Prints, per task, the median wall
times with their min-max, the ratio harness / lm-eval (goal: <= 1.0), whether the per-document answers
are identical, and, with ``--runtimes``, the other fp32 variants through the harness once: their
per-document agreement with the first variant (goal: >= 99 %) and accuracy, with its standard error.

    python benchmarks/bench_tasks.py                        # both tasks, 200 documents, 3 rounds, torch and ort
    python benchmarks/bench_tasks.py --tasks harness_story --variants torch-fp32 --runtimes --rounds 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import prepared_variants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import task_files  # noqa: E402  the tests' task writer: the same made-up documents

from harness.machine.environment import usable_cpus  # noqa: E402
from harness.measure.tasks import TaskSpec, backend_lm, score_tasks, task_manager  # noqa: E402

# The tasks, by name: their writers in tests/task_files.py.
TASKS = {"harness_mc": task_files.multiple_choice, "harness_story": task_files.stories}


def harness_round(variant, task: Path, threads: int, tokenizer_folder: str) -> tuple[float, dict]:
    """What a variant's child does for --tasks: load the tokenizer and the model, score every document."""
    from transformers import AutoTokenizer

    from harness.backends import open_backend

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    with open_backend(variant, threads=threads) as backend:
        scores = score_tasks(backend_lm(backend, tokenizer), TaskSpec((str(task),), limit=None))[task.stem]
    return time.perf_counter() - start, scores


# Our variant -> lm-eval's own backend for the same folder, and its arguments.
LM_EVAL_BACKENDS = {
    "torch-fp32": ("hf", lambda folder: {"pretrained": folder, "dtype": "float32"}),
    "ort-fp32": ("onnxruntime-genai", lambda folder: {"pretrained": folder, "execution_provider": "cpu"}),
}


def lm_eval_round(variant, task: Path) -> tuple[float, dict]:
    from lm_eval import evaluator

    model, model_args = LM_EVAL_BACKENDS[variant.name]
    start = time.perf_counter()
    result = evaluator.simple_evaluate(
        model=model, model_args=model_args(variant.path), device="cpu", batch_size=1,
        tasks=[task.stem], task_manager=task_manager([str(task)]), log_samples=True, bootstrap_iters=0)
    seconds = time.perf_counter() - start
    samples = sorted(result["samples"][task.stem], key=lambda s: s["doc_id"])
    return seconds, {"doc_ids": [s["doc_id"] for s in samples], "outcomes": {"acc": [s["acc"] for s in samples]},
                     "metrics": {"acc": result["results"][task.stem]["acc,none"]}}


def spread(values: list[float]) -> str:
    return f"{np.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="documents of each task")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--variants", nargs="+", default=["torch-fp32", "ort-fp32"], choices=sorted(LM_EVAL_BACKENDS),
                        help="variants to run beside lm-eval's own backend for their folder")
    parser.add_argument("--runtimes", action="store_true",
                        help="also score ort-fp32 and llamacpp-f32 once through the harness: agreement per document")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    import torch  # loaded before either side's clock starts

    torch.set_num_threads(args.threads)
    variants = prepared_variants()
    tokenizer_folder = variants["torch-fp32"].path  # the model's one transformers tokenizer, as compare hands it
    folder = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    figures: dict = {"docs": args.docs, "threads": args.threads}
    for task_name in args.tasks:
        task = TASKS[task_name](folder, args.docs, name=task_name)
        figures[task_name] = task_figures = {}
        for name in args.variants:
            task_figures[name] = against_lm_eval(variants[name], task, args.threads, args.rounds, tokenizer_folder)
            if not args.json:
                print(f"{task_name}, {name}: {summary(task_figures[name], LM_EVAL_BACKENDS[name][0])}", flush=True)
        reference = task_figures[args.variants[0]]
        for name in ("ort-fp32", "llamacpp-f32") if args.runtimes else ():
            seconds, other = harness_round(variants[name], task, args.threads, tokenizer_folder)
            agree = float(np.mean(np.equal(other["outcomes"]["acc"], reference["outcomes"])))
            task_figures[f"{name} (harness only)"] = f = {
                "seconds": seconds, "agreement": agree, "acc": other["metrics"]["acc"],
                "acc_stderr": other["stderr"]["acc"]}
            if not args.json:
                print(f"{task_name}, {name}: {f['seconds']:.1f} s, per-document agreement with {args.variants[0]} "
                      f"{f['agreement'] * 100:.1f} % (goal >= 99 %), acc {f['acc']:.3f} ± {f['acc_stderr']:.3f}",
                      flush=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{args.docs} documents per four-choice task, {args.threads} threads, {args.rounds} alternating rounds")


def summary(f: dict, lm_eval_backend: str) -> str:
    return (f"harness {spread(f['harness_s'])}; lm-eval {lm_eval_backend} {spread(f['lm_eval_s'])}; ratio harness / "
            f"lm-eval (medians) {f['ratio']:.2f} (goal <= 1.0); identical per-document answers: "
            f"{f['identical_answers']}; acc {f['acc']:.3f} ± {f['acc_stderr']:.3f}")


def against_lm_eval(variant, task: Path, threads: int, rounds: int, tokenizer_folder: str) -> dict:
    """Alternating rounds of the harness and lm-eval's own backend on one variant's folder."""
    ours_s, theirs_s, ours, theirs = [], [], None, None
    for _ in range(rounds):
        seconds, ours = harness_round(variant, task, threads, tokenizer_folder)
        ours_s.append(seconds)
        seconds, theirs = lm_eval_round(variant, task)
        theirs_s.append(seconds)
    same = ours["doc_ids"] == theirs["doc_ids"] and ours["outcomes"]["acc"] == theirs["outcomes"]["acc"]
    return {"harness_s": ours_s, "lm_eval_s": theirs_s, "ratio": float(np.median(ours_s) / np.median(theirs_s)),
            "identical_answers": same, "acc": ours["metrics"]["acc"], "acc_stderr": ours["stderr"]["acc"],
            "lm_eval_acc": theirs["metrics"]["acc"], "outcomes": ours["outcomes"]["acc"]}


if __name__ == "__main__":
    main()
