"""The answer to "which variant should I use?": the lines that close the report.

Within one model, "within +5%" is judged on the paired ΔPPL interval against
the model's reference, and variants whose difference from the best is not
significant are named together. Across several models (different tokenizers)
the ranking is on bits per byte of the same text. Speeds measured on
different hardware are said to be so.
"""

from __future__ import annotations

from harness import defaults
from harness.report.divergence import (
    delta_ppl_interval,
    delta_ppl_upper,
    fmt_delta_ppl,
    ties_with_best,
)
from harness.report.format import ABSENT, fmt_mb, fmt_sig
from harness.report.tasks import is_fraction, larger_is_better, paired_with_reference
from harness.results import RunRecord, VariantRow

FALLBACK_MAX_PPL_INCREASE_PCT = defaults.MAX_PPL_INCREASE_PCT  # stored runs that predate the setting


def reference_ppl(run: RunRecord) -> float | None:
    """The PPL of the run's reference variant, or None when it did not run."""
    row = run.row(run.reference) if run.reference else None
    return row.metric("ppl") if row is not None and row.ok else None


def machines(run: RunRecord) -> list[tuple]:
    """The distinct hardware (CPU, GPU) the run's rows were measured on, in order of first use."""
    return list(dict.fromkeys(r.node.hardware() for r in run.results if r.node is not None))


def machine_marks(run: RunRecord) -> dict[tuple, str]:
    """(model, variant) -> "m1", "m2", ...: which machine measured the row; empty when all share one."""
    found = machines(run)
    if len(found) < 2:
        return {}
    return {(r.model, r.variant): f"m{found.index(r.node.hardware()) + 1}" for r in run.results if r.node is not None}


def resolve_settings(
    run: RunRecord, max_ppl_increase_pct: float | None = None, memory_budget_mb: float | None = None
) -> tuple[float, float | None]:
    """The PPL allowance (%) and memory budget (MB): the arguments, else the run's settings."""
    if max_ppl_increase_pct is None:
        max_ppl_increase_pct = run.settings.max_ppl_increase_pct
    if max_ppl_increase_pct is None:
        max_ppl_increase_pct = FALLBACK_MAX_PPL_INCREASE_PCT
    if memory_budget_mb is None:
        memory_budget_mb = run.settings.memory_budget_mb
    return float(max_ppl_increase_pct), memory_budget_mb


def _describe(row: VariantRow, ref_ppl: float | None, reference: str | None = None) -> str:
    delta_text = fmt_delta_ppl(row, ref_ppl, reference)
    delta_text = "" if delta_text == ABSENT else f" ({delta_text}%)"
    return f"PPL {fmt_sig(row.metric('ppl'), 4)}{delta_text}"


# The "best within the limit" lines: (first word, metric, pick the best, how the figure reads, what is missing).
_BEST_BY = (
    ("Fastest", "decode_tok_s", max, lambda v: f"{fmt_sig(v, 3)} decode tok/s", "a decode speed"),
    ("Smallest", "size_bytes", min, lambda v: f"{fmt_mb(v)} MB", "a size"),
)


def _best_lines(run: RunRecord, within: list[VariantRow], label: str, describe) -> list[str]:
    """The fastest and the smallest of ``within``, each described by ``describe(row)``."""
    lines = []
    for word, key, pick, shown, missing in _BEST_BY:
        candidates = [r for r in within if r.metric(key) is not None]
        if not candidates:
            lines.append(f"{word} {label}: none has {missing}.")
            continue
        best = pick(candidates, key=lambda r: r.metric(key))
        mixed = _mixed_machines(run, candidates) if key == "decode_tok_s" else ""
        lines.append(f"{word} {label}: {run.label(best)}, {shown(best.metric(key))}, {describe(best)}{mixed}.")
    return lines


def _mixed_machines(run: RunRecord, rows: list[VariantRow]) -> str:
    """A note when ``rows``' speeds were measured on different hardware, else ""."""
    marks = machine_marks(run)
    used = sorted({marks[(r.model, r.variant)] for r in rows if (r.model, r.variant) in marks})
    return f" (speeds measured on different machines: {', '.join(used)})" if len(used) > 1 else ""


def _within_limit_lines(run: RunRecord, scored: list[VariantRow], max_pct: float) -> list[str]:
    """The fastest and the smallest variant whose ΔPPL interval lies within the limit (its upper end)."""
    ref_ppl = reference_ppl(run)
    if run.reference is None:
        return [f"No reference variant (--reference none): nothing to measure a +{max_pct:g}% PPL limit against."]
    if ref_ppl is None:
        return [f"No PPL for the reference {run.reference}: cannot judge which variants are within +{max_pct:g}% PPL."]
    upper = {r.variant: delta_ppl_upper(r, ref_ppl, run.reference) for r in scored}
    within = [r for r in scored if upper[r.variant] is not None and upper[r.variant] <= max_pct]
    paired = any(r.variant != run.reference and delta_ppl_interval(r, run.reference) for r in scored)
    label = f"within +{max_pct:g}% PPL of {run.reference}" + (" (95% upper bound)" if paired else "")
    return _best_lines(run, within, label, lambda row: _describe(row, ref_ppl, run.reference))


def _task_lines(run: RunRecord, rank_by: str, max_drop: float) -> list[str]:
    """The fastest and the smallest variant whose paired difference on ``rank_by`` (TASK/METRIC) from the
    reference is no worse than ``max_drop`` at its 95 % bound (points for accuracies)."""
    task, _, metric = rank_by.rpartition("/")
    reference = run.row(run.reference) if run.reference else None
    if reference is None or not reference.ok:
        return [f"No reference variant to rank {rank_by} against."]
    rows = [r for r in run.results if r.ok and metric in getattr((r.tasks or {}).get(task), "metrics", {})]
    if not rows:
        return [f"No variant scored {rank_by}: nothing to rank on it."]
    scale, unit = (100.0, "point" if max_drop == 1 else "points") if is_fraction(metric) else (1.0, "")
    sign = 1.0 if larger_is_better(metric) else -1.0

    def worst(row: VariantRow) -> float | None:  # the 95 % bound on the side where the variant is worse
        if row.variant == reference.variant:
            return 0.0
        paired = paired_with_reference(row, reference, task, metric)
        return None if paired is None else min(sign * paired.ci[0], sign * paired.ci[1]) * scale

    def describe(row: VariantRow) -> str:
        value = row.tasks[task].metrics[metric]
        paired = paired_with_reference(row, reference, task, metric)
        delta = "" if paired is None else f" ({paired.delta * scale:+.1f} ± {(paired.ci[1] - paired.ci[0]) * scale / 2:.1f})"
        return f"{metric} {ABSENT if value is None else fmt_sig(value * scale, 3)}{' %' if scale == 100 else ''}{delta}"

    within = [r for r in rows if (bound := worst(r)) is not None and bound >= -max_drop]
    label = f"within −{max_drop:g} {unit} of {run.reference} on {rank_by} (95% bound)".replace("  ", " ")
    return _best_lines(run, within, label, describe)


def _across_models_lines(run: RunRecord, max_pct: float, budget_mb: float | None) -> list[str]:
    """Several models: the fastest and smallest within the limit of the lowest bits per byte, and the most accurate.

    Models tokenize differently, so PPLs do not compare across them; bits per
    byte of the same text do. They are point estimates: two models' tokens
    cannot be paired.
    """
    scored = [r for r in run.results if r.ok and r.metric("bits_per_byte") is not None]
    if not scored:
        return ["No variant has bits per byte: nothing to rank across models."]
    best = min(scored, key=lambda r: r.metric("bits_per_byte"))
    limit = best.metric("bits_per_byte") * (1 + max_pct / 100)
    within = [r for r in scored if r.metric("bits_per_byte") <= limit]
    label = f"within +{max_pct:g}% bits/byte of the lowest (across models)"
    lines = _best_lines(run, within, label, lambda row: f"{fmt_sig(row.metric('bits_per_byte'), 4)} bits/byte")
    fitting = [r for r in scored if budget_mb is None
               or (r.metric("peak_rss_mb") is not None and r.metric("peak_rss_mb") <= budget_mb)]
    scope = "(no memory budget set)" if budget_mb is None else f"under {budget_mb:g} MB peak memory"
    if fitting:
        lowest = min(fitting, key=lambda r: r.metric("bits_per_byte"))
        lines.append(f"Lowest bits/byte {scope}: {run.label(lowest)}, {fmt_sig(lowest.metric('bits_per_byte'), 4)} "
                     f"bits/byte, PPL {fmt_sig(lowest.metric('ppl'), 4)}.")
    else:
        lines.append(f"No variant with bits per byte fits {scope}.")
    return lines


def _most_accurate(run: RunRecord, rows: list[VariantRow], scope: str, tail=None) -> str:
    """The lowest-PPL row of ``rows``, with every row tied with it within noise (``ties_with_best``).

    ``scope`` reads after "Most accurate", e.g. "under 800 MB peak memory" or
    "(no memory budget set)"; ``tail(row)`` adds to the best row's details.
    """
    ref_ppl = reference_ppl(run)
    # Lowest PPL; among equal PPLs the one known most precisely (the reference itself before its twins).
    best = min(rows, key=lambda r: (r.metric("ppl"), r.metric("delta_nll_stderr") or 0.0))
    tied = sorted(ties_with_best(best, rows, run.reference), key=lambda r: r.metric("ppl"))
    details = _describe(best, ref_ppl, run.reference) + (tail(best) if tail else "")
    if len(tied) == 1:
        return f"Most accurate {scope}: {best.variant}, {details}."
    scope = f"{scope[:-1]}; tied within noise)" if scope.endswith(")") else f"{scope} (tied within noise)"
    return f"Most accurate {scope}: {', '.join(r.variant for r in tied)}; lowest PPL {best.variant}, {details}."


def _memory_line(run: RunRecord, scored: list[VariantRow], budget_mb: float | None) -> list[str]:
    """The most accurate variants, under the memory budget when there is one; ties within noise named together."""
    if budget_mb is None:
        return [_most_accurate(run, scored, "(no memory budget set)")] if scored else []
    measured = [r for r in scored if r.metric("peak_rss_mb") is not None]
    fitting = [r for r in measured if r.metric("peak_rss_mb") <= budget_mb]
    if fitting:
        return [_most_accurate(run, fitting, f"under {budget_mb:g} MB peak memory",
                               lambda r: f", peak RSS {r.metric('peak_rss_mb'):.0f} MB")]
    if measured:
        least = min(measured, key=lambda r: r.metric("peak_rss_mb"))
        return [f"No variant fits in {budget_mb:g} MB peak memory; the least is {least.variant} "
                f"at {least.metric('peak_rss_mb'):.0f} MB."]
    return [f"No variant has a measured peak memory to compare with {budget_mb:g} MB."]


def recommendations(
    run: RunRecord, max_ppl_increase_pct: float | None = None, memory_budget_mb: float | None = None
) -> list[str]:
    """Lines answering "which variant should I use?", then one line per failed or unavailable variant.

    Arguments left as None come from ``run.settings``. Memory means peak RSS;
    without a budget the most accurate variant overall is named. "Within +5%"
    means the upper end of the paired 95 % ΔPPL interval is within 5 %; the
    most accurate line names together every variant whose difference from the
    lowest PPL is not significant (``harness.report.divergence.ties_with_best``).
    """
    max_pct, budget_mb = resolve_settings(run, max_ppl_increase_pct, memory_budget_mb)
    if run.multi_model:
        lines = _across_models_lines(run, max_pct, budget_mb)
        for view in run.per_model():
            scored = [r for r in view.results if r.ok and r.metric("ppl") is not None]
            lines += [f"{view.title}: {line}" for line in _within_limit_lines(view, scored, max_pct)]
    else:
        scored = [r for r in run.results if r.ok and r.metric("ppl") is not None]
        lines = _within_limit_lines(run, scored, max_pct) + _memory_line(run, scored, budget_mb)
        if run.settings.rank_by:
            max_drop = run.settings.max_task_drop
            lines += _task_lines(run, run.settings.rank_by, defaults.MAX_TASK_DROP if max_drop is None else max_drop)
    if len(machines(run)) > 1:
        lines.append(f"Rows were measured on {len(machines(run))} different machines (m1, m2, ... in the marks and "
                     "the header): compare speeds only between rows of one machine.")
    for row in run.results:
        if row.status in ("failed", "unavailable"):
            lines.append(f"{row.status.capitalize()}: {run.label(row)}: {row.error or 'no reason given'}")
    return lines
