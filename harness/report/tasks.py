"""lm-eval task scores read against the reference: each variant's main metric, and its paired difference.

A variant and its model's reference scored the same documents, so a task's difference is paired by
document (``harness.stats.paired_outcomes``): its 95 % interval and, for right/wrong outcomes, the
exact McNemar p-value come from the documents where the two disagree. Pure functions over results.
"""

from __future__ import annotations

from typing import Any

from harness.report.format import ABSENT, fmt_sig
from harness.results import RunRecord, TaskScores, VariantRow
from harness.stats import PairedOutcomes, paired_outcomes

# Metrics whose outcomes are fractions in [0, 1]: shown in % and their differences in points.
FRACTION_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc")
# Metrics where lower is better (lm-eval's higher_is_better: false); every other one is higher-is-better.
LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter")


def task_columns(run: RunRecord) -> list[tuple[str, str]]:
    """(task, its main metric) for every task some ok row scored, in the order first met."""
    columns: dict[str, str] = {}
    for row in run.results:
        for task, scores in (row.tasks or {}).items():
            if task not in columns and scores.main_metric is not None:
                columns[task] = scores.main_metric
    return list(columns.items())


def is_fraction(metric: str) -> bool:
    return metric.split(",")[0] in FRACTION_METRICS


def larger_is_better(metric: str) -> bool:
    return metric.split(",")[0] not in LOWER_IS_BETTER


def task_key(task: str, metric: str) -> str:
    """The name a task metric goes by as an axis or a ranking: ``hellaswag/acc_norm``."""
    return f"{task}/{metric}"


def paired_with_reference(row: VariantRow, reference: VariantRow | None, task: str,
                          metric: str) -> PairedOutcomes | None:
    """``row`` against ``reference`` on ``task``'s ``metric``, document by document; None when they cannot pair
    (no reference, the reference itself, a metric without per-document outcomes, other documents)."""
    if reference is None or reference is row or reference.variant == row.variant:
        return None
    mine, theirs = _scores(row, task), _scores(reference, task)
    if mine is None or theirs is None or metric not in mine.outcomes or metric not in theirs.outcomes:
        return None
    if sorted(mine.doc_ids) != sorted(theirs.doc_ids):
        return None
    by_doc = dict(zip(theirs.doc_ids, theirs.outcomes[metric]))
    return paired_outcomes(mine.outcomes[metric], [by_doc[d] for d in mine.doc_ids])


def _scores(row: VariantRow, task: str) -> TaskScores | None:
    return (row.tasks or {}).get(task) if row.ok else None


def fmt_task_cell(row: VariantRow, reference: VariantRow | None, task: str, metric: str) -> str:
    """``45.0 ± 5.0`` (the metric and its standard error; fractions in %), then the paired difference from the
    reference with half its 95 % interval (points for fractions) and ``≈`` where the two are tied."""
    scores = _scores(row, task)
    value = None if scores is None else scores.metrics.get(metric)
    if value is None:
        return ABSENT
    scale = 100.0 if is_fraction(metric) else 1.0
    stderr = scores.stderr.get(metric)
    text = _fmt(value * scale) + ("" if stderr is None else f" ± {_fmt(stderr * scale)}")
    paired = paired_with_reference(row, reference, task, metric)
    if paired is not None:
        half = (paired.ci[1] - paired.ci[0]) / 2 * scale
        text += f" ({paired.delta * scale:+.1f} ± {_fmt(half)}{' ≈' if paired.tied else ''})"
    return text


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else fmt_sig(value, 3)


def task_summary(row: VariantRow, reference: VariantRow | None) -> dict[str, Any]:
    """Per task and metric: the value, its standard error and, against the reference, the paired difference."""
    out: dict[str, Any] = {}
    for task, scores in (row.tasks or {}).items():
        out[task] = {}
        for metric, value in scores.metrics.items():
            entry: dict[str, Any] = {"value": value, "stderr": scores.stderr.get(metric)}
            paired = paired_with_reference(row, reference, task, metric)
            if paired is not None:
                entry.update(delta=paired.delta, delta_ci=list(paired.ci), mcnemar_p=paired.mcnemar_p,
                             only_reference=paired.only_reference, only_variant=paired.only_variant,
                             tied=paired.tied)
            out[task][metric] = entry
    return out


def task_lines(row: VariantRow, reference: VariantRow | None) -> list[str]:
    """``show --variant``'s lines for each task: every metric, and its paired difference from the reference."""
    lines = []
    for task, scores in (row.tasks or {}).items():
        seconds = "" if scores.seconds is None else f", {scores.seconds:.1f} s"
        lines.append(f"task {task} ({scores.docs} documents{seconds}):")
        for metric, value in scores.metrics.items():
            scale, unit = (100.0, " %") if is_fraction(metric) else (1.0, "")
            stderr = scores.stderr.get(metric)
            text = f"  {metric:<16} {ABSENT if value is None else _fmt(value * scale)}"
            text += "" if stderr is None else f" ± {_fmt(stderr * scale)}"
            text += unit
            paired = paired_with_reference(row, reference, task, metric)
            if paired is not None:
                points = " points" if scale == 100.0 else ""
                text += (f"; against the reference {paired.delta * scale:+.2f}{points}, 95 % "
                         f"[{paired.ci[0] * scale:+.2f}, {paired.ci[1] * scale:+.2f}]")
                if paired.mcnemar_p is not None:
                    text += (f", McNemar p {paired.mcnemar_p:.3g} (right only on the reference: "
                             f"{paired.only_reference} documents, only on this variant: {paired.only_variant})")
            lines.append(text)
    return lines
