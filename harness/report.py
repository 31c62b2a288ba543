"""Turn a finished run into the answer: the table, the Pareto frontiers, the recommendations, history and diffs.

Pure functions over ``harness.results`` types: nothing here reads or writes
files (see ``report_files``) or touches the results store (see ``store``).
Any row may lack any figure (failed rows have no accuracy or efficiency, GPU
figures are absent on a CPU, divergence is None for the reference).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from tabulate import tabulate

from harness.config import CompareConfig
from harness.divergence_report import (  # noqa: F401  delta_ppl_pct and divergence_lines belong to this interface
    DEFAULT_KLD_NOISE_FLOOR,
    delta_ppl_interval,
    delta_ppl_pct,
    delta_ppl_upper,
    divergence_lines,
    fmt_delta_ppl,
    indistinguishable,
    kld_noise_floor,
    ties_with_best,
)
from harness.results import ModelInfo, RunRecord, VariantRow

ABSENT = "—"
FALLBACK_MAX_PPL_INCREASE_PCT = CompareConfig.max_ppl_increase  # stored runs that predate the setting

# Which way is better for each metric the frontier or the recommendations rank by.
LARGER_IS_BETTER = {
    "decode_tok_s": True,
    "prefill_tok_s": True,
    "top1_agreement": True,
    "ppl": False,
    "bits_per_byte": False,
    "kld_mean": False,
    "peak_rss_mb": False,
    "size_bytes": False,
    "ttft_ms": False,
}

# The two frontiers the table marks: (x, y, mark); y is ``accuracy_key(run)`` where it reads "ppl".
FRONTIERS = (
    ("decode_tok_s", "ppl", "S"),
    ("peak_rss_mb", "ppl", "M"),
)
MODEL_HEADER = "model"  # the first column when a run holds several models

HEADERS = (
    "runtime",
    "precision",
    "size MB",
    "bits/w",
    "PPL ±",
    "bits/byte",
    "ΔPPL %",
    "KLD",
    "top-1 %",
    "prefill tok/s",
    "decode tok/s",
    "TTFT ms",
    "peak RSS MB",
    "status",
    "marks",
)
# Text columns align left, numbers right; "PPL ±" centres on the ± well enough right-aligned.
COLALIGN = ("left", "left") + ("right",) * 11 + ("left", "left")

LEGEND = (
    "marks: ref = the reference (ΔPPL % ± = half the paired 95% interval); "
    "≈ = indistinguishable from the reference: its KLD's 95% interval reaches down to the noise floor "
    f"(the largest KLD of another runtime's fp32 variant, else {DEFAULT_KLD_NOISE_FLOOR:g}); "
    "S = on the PPL-vs-decode-speed Pareto frontier; "
    "M = on the PPL-vs-peak-memory Pareto frontier (with several models: bits/byte instead of PPL, across all of "
    "them; PPL and ΔPPL stay within each model, against its own reference); m1, m2, ...: the machine that measured "
    "the row, when rows come from different hardware. "
    "±h% after a speed: half the width of its 95% interval (a bootstrap of the median over the repetitions), in % "
    f"of the median; ~: that interval missed the precision target ({CompareConfig.precision_target:g}% unless "
    "--precision-target was given): the repetitions stopped at the speed budget or the maximum count."
)


def pareto_names(points: dict[str, tuple[float, float]], x_larger: bool, y_larger: bool) -> list[str]:
    """The names no other point beats on both coordinates, sorted by x ascending.

    A point is dominated when another is at least as good on both and strictly
    better on one, so identical points all stay on the frontier.
    """
    sign_x, sign_y = (-1.0 if x_larger else 1.0), (-1.0 if y_larger else 1.0)  # make smaller better on both
    costs = {name: (sign_x * x, sign_y * y) for name, (x, y) in points.items()}
    front = [name for name, (x, y) in costs.items()
             if not any(ox <= x and oy <= y and (ox < x or oy < y) for ox, oy in costs.values())]
    return sorted(front, key=lambda name: points[name][0])


def pareto_front(rows: Iterable[VariantRow], x_key: str, y_key: str) -> list[VariantRow]:
    """The ok rows no other ok row beats on both ``x_key`` and ``y_key``, sorted by x ascending.

    Directions come from ``LARGER_IS_BETTER`` (e.g. more decode tok/s, lower
    PPL). Rows lacking either value are left out.
    """
    for key in (x_key, y_key):
        if key not in LARGER_IS_BETTER:
            raise ValueError(f"pareto_front: no known direction for {key!r}; use one of {sorted(LARGER_IS_BETTER)}")
    by_key = {(row.model, row.variant): row for row in rows
              if row.ok and row.metric(x_key) is not None and row.metric(y_key) is not None}
    points = {key: (row.metric(x_key), row.metric(y_key)) for key, row in by_key.items()}
    return [by_key[key] for key in pareto_names(points, LARGER_IS_BETTER[x_key], LARGER_IS_BETTER[y_key])]


def accuracy_key(run: RunRecord) -> str:
    """What accuracy is ranked by: PPL within one model; bits per byte across several (tokenizers differ)."""
    return "bits_per_byte" if run.multi_model else "ppl"


def frontiers(run: RunRecord) -> list[tuple[str, str, str]]:
    """``FRONTIERS`` with this run's accuracy axis."""
    return [(x, accuracy_key(run) if y == "ppl" else y, mark) for x, y, mark in FRONTIERS]


def reference_ppl(run: RunRecord) -> float | None:
    """The PPL of the run's reference variant, or None when it did not run."""
    row = run.row(run.reference) if run.reference else None
    return row.metric("ppl") if row is not None and row.ok else None


def frontier_names(run: RunRecord) -> dict[str, list[str]]:
    """Row labels on each frontier, keyed ``"<y>_vs_<x>"``, e.g. ``ppl_vs_decode_tok_s``."""
    return {f"{y}_vs_{x}": [run.label(r) for r in pareto_front(run.results, x, y)] for x, y, _ in frontiers(run)}


def machines(run: RunRecord) -> list[tuple]:
    """The distinct hardware (CPU, GPU) the run's rows were measured on, in order of first use."""
    return list(dict.fromkeys(r.node.hardware() for r in run.results if r.node is not None))


def machine_marks(run: RunRecord) -> dict[tuple, str]:
    """(model, variant) -> "m1", "m2", ...: which machine measured the row; empty when all share one."""
    found = machines(run)
    if len(found) < 2:
        return {}
    return {(r.model, r.variant): f"m{found.index(r.node.hardware()) + 1}" for r in run.results if r.node is not None}


def fmt_sig(value: float | None, sig: int = 4) -> str:
    """``value`` to ``sig`` significant figures in fixed notation (tiny values in e-notation), or '—'."""
    if value is None:
        return ABSENT
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -3:
        return f"{value:.{sig - 1}e}"
    return f"{value:.{max(sig - 1 - magnitude, 0)}f}"


def fmt_ppl(row: VariantRow) -> str:
    """PPL ± its standard error: 4 significant figures, the error to 2."""
    ppl, stderr = row.metric("ppl"), row.metric("ppl_stderr")
    if ppl is None:
        return ABSENT
    return fmt_sig(ppl, 4) if stderr is None else f"{fmt_sig(ppl, 4)} ± {fmt_sig(stderr, 2)}"


def fmt_signed_pct(value: float | None) -> str:
    return ABSENT if value is None else f"{value:+.2f}"


def fmt_speed(row: VariantRow, key: str) -> str:
    """A repeated figure to 3 significant figures, ``±h%`` half its 95 % interval, ``~`` when it missed the target.

    ``69.5±2.1%``; ``69.5±6.3%~``. A run stored before intervals shows no ``±``
    (its ``~`` then meant a [min, max] spread over 10 % of the median).
    """
    value = row.metric(key)
    if value is None:
        return ABSENT
    text = fmt_sig(value, 3)
    interval = row.efficiency.interval(key) if row.efficiency is not None else None
    if interval is not None and value != 0:
        half_pct = 100.0 * (interval[1] - interval[0]) / 2.0 / abs(value)
        text += f"±{half_pct:.1f}%" if half_pct < 9.95 else f"±{half_pct:.0f}%"
    return text + ("~" if row.is_noisy(key) else "")


def fmt_mb(value_bytes: float | None) -> str:
    return ABSENT if value_bytes is None else f"{value_bytes / 1e6:.1f}"


def _fixed(value: float | None, digits: int) -> str:
    return ABSENT if value is None else f"{value:.{digits}f}"


def headers(run: RunRecord) -> tuple[str, ...]:
    return ((MODEL_HEADER,) if run.multi_model else ()) + HEADERS


def table_rows(run: RunRecord) -> list[list[str]]:
    """One list of display strings per row, in run order, matching ``headers(run)``.

    PPL, ΔPPL, KLD and the ≈ mark are read within each model (against its own
    reference); the frontier marks across all rows.
    """
    on_front = {mark: {(r.model, r.variant) for r in pareto_front(run.results, x, y)} for x, y, mark in frontiers(run)}
    machine = machine_marks(run)
    table = []
    for view in run.per_model():
        ref_ppl = reference_ppl(view)
        floor, _ = kld_noise_floor(view)
        for row in view.results:
            key = (row.model, row.variant)
            marks = ["ref"] if row.variant == view.reference else []
            marks += ["≈"] if row.variant != view.reference and indistinguishable(row, floor) else []
            marks += [mark for mark, keys in on_front.items() if key in keys]
            marks += [machine[key]] if key in machine else []
            cells = [
                row.runtime or ABSENT,
                row.precision or ABSENT,
                fmt_mb(row.metric("size_bytes")),
                _fixed(row.metric("bits_per_weight"), 2),
                fmt_ppl(row),
                fmt_sig(row.metric("bits_per_byte"), 4),
                fmt_delta_ppl(row, ref_ppl, view.reference),
                fmt_sig(row.metric("kld_mean"), 3),
                _fixed(row.metric("top1_agreement"), 1),
                fmt_speed(row, "prefill_tok_s"),
                fmt_speed(row, "decode_tok_s"),
                fmt_speed(row, "ttft_ms"),
                _fixed(row.metric("peak_rss_mb"), 0),
                row.status or ABSENT,
                " ".join(marks),
            ]
            table.append(([row.model or ABSENT] if run.multi_model else []) + cells)
    return table


def render_table(run: RunRecord, tablefmt: str = "simple") -> str:
    """The results table in any ``tabulate`` format ("simple", "github", "html", ...)."""
    colalign = (("left",) if run.multi_model else ()) + COLALIGN
    return tabulate(table_rows(run), headers=headers(run), tablefmt=tablefmt, colalign=colalign,
                    disable_numparse=True)


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
    lowest PPL is not significant (``divergence_report.ties_with_best``).
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
    if len(machines(run)) > 1:
        lines.append(f"Rows were measured on {len(machines(run))} different machines (m1, m2, ... in the marks and "
                     "the header): compare speeds only between rows of one machine.")
    for row in run.results:
        if row.status in ("failed", "unavailable"):
            lines.append(f"{row.status.capitalize()}: {run.label(row)}: {row.error or 'no reason given'}")
    return lines


def summary(run: RunRecord) -> dict[str, Any]:
    """What the report derives from a run, as plain data: ΔPPL, the KLD noise floor, frontiers, recommendations.

    With several models the per-model part sits under ``models``, by model name.
    """
    across = {"pareto": frontier_names(run), "recommendations": recommendations(run)}
    if run.multi_model:
        return {"models": {view.title: _model_summary(view) for view in run.per_model()},
                "accuracy_key": accuracy_key(run), **across}
    return {**_model_summary(run), **across}


def _model_summary(run: RunRecord) -> dict[str, Any]:
    ref_ppl = reference_ppl(run)
    floor, floor_source = kld_noise_floor(run)
    return {
        "reference_ppl": ref_ppl,
        "delta_ppl_pct": {r.variant: delta_ppl_pct(r, ref_ppl) for r in run.results},
        "kld_noise_floor": floor,
        "kld_noise_floor_source": floor_source,
        "indistinguishable_from_reference": [
            r.variant for r in run.results if r.variant != run.reference and indistinguishable(r, floor)
        ],
    }


def header_lines(run: RunRecord) -> list[str]:
    """One-line descriptions of the models, the text scored and the machines."""
    corpus = run.corpus
    shown = {key: ABSENT if value is None else value for key, value in
             (("name", corpus.name), ("protocol", corpus.protocol), ("ctx", corpus.ctx))}
    lines = [f"run {run.run_id or ABSENT} at {run.created_utc or ABSENT}"]
    text = f"corpus {shown['name']}, protocol {shown['protocol']}, ctx {shown['ctx']}"
    if run.multi_model:
        lines += [f"model {_model_line(m)}: {_or_absent(m.tokens_scored)} tokens scored ({m.tokenizer or ABSENT} "
                  f"tokenizer); reference {m.reference}" for m in run.models]
        lines.append(f"{text}; every model scored the same {_or_absent(corpus.text_bytes)} bytes of text")
    else:
        model = run.models[0] if run.models else ModelInfo()
        lines += [f"model {_model_line(model)}",
                  f"{text}, {_or_absent(model.tokens_scored)} tokens scored; reference {run.reference}"]
    # The environment's scalar facts; nested ones (versions, gpus) stay in report.json.
    machine = ", ".join(f"{k} {v}" for k, v in run.environment.items() if isinstance(v, (str, int, float)) and v != "")
    if machine:
        lines.append(f"machine: {machine}")
    found = machines(run)
    if len(found) > 1:
        lines.append("rows measured on: " + "; ".join(
            f"m{i} = {cpu or ABSENT}" + (f" with {gpu}" if gpu else "") for i, (cpu, gpu) in enumerate(found, 1)))
    if run.settings.threads and "threads" not in run.environment:  # older runs kept it in the settings only
        lines.append(f"threads {run.settings.threads}")
    return lines


def _model_line(model: ModelInfo) -> str:
    sha = (model.source_sha256 or "")[:12]
    return f"{model.name or ABSENT}" + (f" (sha256 {sha}…)" if sha else "")


def _or_absent(value: Any) -> Any:
    return ABSENT if value is None else value


def render_text(run: RunRecord) -> str:
    """The whole answer for a terminal: header, table, legend, recommendations."""
    parts = ["\n".join(header_lines(run)), render_table(run), LEGEND, "\n".join(recommendations(run))]
    return "\n\n".join(parts) + "\n"


# ---- the results store: history and diffs ----------------------------------------------------------
def render_history(runs: list) -> str:
    """The stored runs (``store.RunSummary``) as a table, newest first."""
    if not runs:
        return "No stored runs; `python -m harness compare` stores one."
    table = [
        [r.run_id, r.created_utc, r.model or ABSENT, r.corpus or ABSENT,
         ABSENT if r.tokens_scored is None else r.tokens_scored, r.reference or ABSENT, f"{r.n_ok}/{r.n_variants}"]
        for r in runs
    ]
    headers = ("run", "created (UTC)", "model", "corpus", "tokens", "reference", "ok/variants")
    return tabulate(table, headers=headers, disable_numparse=True)


_DIFF_SIG = {"ppl": 4, "kld_mean": 3, "prefill_tok_s": 3, "decode_tok_s": 3, "peak_rss_mb": 3}
_NOISE_MARK = {True: " *", False: "", None: " ?"}
_JUDGED = ("ppl", "kld_mean", "prefill_tok_s", "decode_tok_s")  # the metrics a diff says are real or not
DIFF_LEGEND = (
    "B/A: the ratio of run B's figure to run A's with its 95% interval; * = a change beyond the measured noise, "
    "no mark = within it, ? = cannot be judged (a run lacks the repetitions or the standard error). "
    "Speeds: the ratio of the medians, its interval a two-sample bootstrap of the two runs' repetitions, * when it "
    "leaves out 1 (runs stored without repetitions: `range rule`, * when the [min, max] ranges do not overlap). "
    "PPL, KLD: `exact` when both runs scored the same tokens (same model file, corpus and windows; for KLD the same "
    "reference too): accuracy is then deterministic and any difference is real; otherwise the interval comes from "
    "each run's standard error."
)


def _diff_cell(change) -> str:
    """``a → b`` with B/A and its interval (or how the change was judged) and its mark."""
    sig = _DIFF_SIG.get(change.key, 4)
    if change.a is None and change.b is None:
        return ABSENT
    text = f"{fmt_sig(change.a, sig)} → {fmt_sig(change.b, sig)}"
    if change.ratio is None:
        return text
    if change.basis == "exact":
        text += f" ({change.delta_pct:+.2f}%, exact)"
    elif change.ratio_ci is not None:
        text += f" (×{change.ratio:.3f} [{change.ratio_ci[0]:.3f}, {change.ratio_ci[1]:.3f}])"
    elif change.basis == "range":
        text += f" (×{change.ratio:.3f}, range rule)"
    elif change.key in _JUDGED:
        text += f" (×{change.ratio:.3f})"
    else:
        return text + f" ({change.delta_pct:+.1f}%)"
    return text + _NOISE_MARK[change.significant]


def render_diff(run_diff) -> str:
    """What changed from run A to run B (``store.RunDiff``), per variant, each change judged real or not."""
    lines = [f"A = {run_diff.run_a}, B = {run_diff.run_b}"]
    if run_diff.context:
        lines.append("The runs differ in: " + "; ".join(run_diff.context))
    table = []
    for v in run_diff.variants:
        absent = "(absent)"
        status = (v.status_a or absent) if v.status_a == v.status_b else f"{v.status_a or absent} → {v.status_b or absent}"
        table.append([v.variant, status] + [_diff_cell(c) for c in v.changes])
    headers = ("variant", "status", "PPL", "KLD", "prefill tok/s", "decode tok/s", "peak RSS MB")
    lines.append(tabulate(table, headers=headers, disable_numparse=True))
    lines.append(DIFF_LEGEND)
    return "\n".join(lines) + "\n"
