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
from harness.results import RunRecord, VariantRow

ABSENT = "—"
FALLBACK_MAX_PPL_INCREASE_PCT = CompareConfig.max_ppl_increase  # stored runs that predate the setting

# Which way is better for each metric the frontier or the recommendations rank by.
LARGER_IS_BETTER = {
    "decode_tok_s": True,
    "prefill_tok_s": True,
    "top1_agreement": True,
    "ppl": False,
    "kld_mean": False,
    "peak_rss_mb": False,
    "size_bytes": False,
    "ttft_ms": False,
}

# The two frontiers the table marks: (x, y, mark).
FRONTIERS = (
    ("decode_tok_s", "ppl", "S"),
    ("peak_rss_mb", "ppl", "M"),
)

HEADERS = (
    "runtime",
    "precision",
    "size MB",
    "bits/w",
    "PPL ±",
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
COLALIGN = ("left", "left") + ("right",) * 10 + ("left", "left")

LEGEND = (
    "marks: ref = the reference; S = on the PPL-vs-decode-speed Pareto frontier; "
    "M = on the PPL-vs-peak-memory Pareto frontier. "
    "~ after a speed: noisy (max-min spread > 10% of the median)."
)


def pareto_front(rows: Iterable[VariantRow], x_key: str, y_key: str) -> list[VariantRow]:
    """The ok rows no other ok row beats on both ``x_key`` and ``y_key``, sorted by x ascending.

    Directions come from ``LARGER_IS_BETTER`` (e.g. more decode tok/s, lower
    PPL). A row is dominated when another is at least as good on both keys and
    strictly better on one, so rows with identical values all stay on the
    frontier. Rows lacking either value are left out.
    """
    for key in (x_key, y_key):
        if key not in LARGER_IS_BETTER:
            raise ValueError(f"pareto_front: no known direction for {key!r}; use one of {sorted(LARGER_IS_BETTER)}")
    # Negate larger-is-better metrics so "smaller is better" holds for both.
    sign_x = -1.0 if LARGER_IS_BETTER[x_key] else 1.0
    sign_y = -1.0 if LARGER_IS_BETTER[y_key] else 1.0
    points = []
    for row in rows:
        x, y = row.metric(x_key), row.metric(y_key)
        if row.ok and x is not None and y is not None:
            points.append((sign_x * x, sign_y * y, row))
    front = [
        (x, y, row)
        for x, y, row in points
        if not any(ox <= x and oy <= y and (ox < x or oy < y) for ox, oy, _ in points)
    ]
    return [row for _, _, row in sorted(front, key=lambda p: sign_x * p[0])]


def reference_ppl(run: RunRecord) -> float | None:
    """The PPL of the run's reference variant, or None when it did not run."""
    row = run.row(run.reference) if run.reference else None
    return row.metric("ppl") if row is not None and row.ok else None


def delta_ppl_pct(row: VariantRow, ref_ppl: float | None) -> float | None:
    """How much higher the row's PPL is than the reference's, in percent."""
    ppl = row.metric("ppl")
    if ppl is None or not ref_ppl:
        return None
    return (ppl / ref_ppl - 1.0) * 100.0


def frontier_names(run: RunRecord) -> dict[str, list[str]]:
    """Variant names on each frontier, keyed ``"<y>_vs_<x>"``, e.g. ``ppl_vs_decode_tok_s``."""
    return {f"{y}_vs_{x}": [r.variant for r in pareto_front(run.results, x, y)] for x, y, _ in FRONTIERS}


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
    """A throughput or latency to 3 significant figures, with ``~`` when the run flagged it noisy."""
    value = row.metric(key)
    if value is None:
        return ABSENT
    return fmt_sig(value, 3) + ("~" if row.is_noisy(key) else "")


def fmt_mb(value_bytes: float | None) -> str:
    return ABSENT if value_bytes is None else f"{value_bytes / 1e6:.1f}"


def _fixed(value: float | None, digits: int) -> str:
    return ABSENT if value is None else f"{value:.{digits}f}"


def table_rows(run: RunRecord) -> list[list[str]]:
    """One list of display strings per variant, in run order, matching ``HEADERS``."""
    ref_ppl = reference_ppl(run)
    on_front = {mark: {r.variant for r in pareto_front(run.results, x, y)} for x, y, mark in FRONTIERS}
    table = []
    for row in run.results:
        marks = ["ref"] if row.variant == run.reference else []
        marks += [mark for mark, names in on_front.items() if row.variant in names]
        table.append([
            row.runtime or ABSENT,
            row.precision or ABSENT,
            fmt_mb(row.metric("size_bytes")),
            _fixed(row.metric("bits_per_weight"), 2),
            fmt_ppl(row),
            fmt_signed_pct(delta_ppl_pct(row, ref_ppl)),
            fmt_sig(row.metric("kld_mean"), 3),
            _fixed(row.metric("top1_agreement"), 1),
            fmt_speed(row, "prefill_tok_s"),
            fmt_speed(row, "decode_tok_s"),
            fmt_speed(row, "ttft_ms"),
            _fixed(row.metric("peak_rss_mb"), 0),
            row.status or ABSENT,
            " ".join(marks),
        ])
    return table


def render_table(run: RunRecord, tablefmt: str = "simple") -> str:
    """The results table in any ``tabulate`` format ("simple", "github", "html", ...)."""
    return tabulate(table_rows(run), headers=HEADERS, tablefmt=tablefmt, colalign=COLALIGN, disable_numparse=True)


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


def _describe(row: VariantRow, ref_ppl: float | None) -> str:
    delta = delta_ppl_pct(row, ref_ppl)
    delta_text = "" if delta is None else f" ({delta:+.2f}%)"
    return f"PPL {fmt_sig(row.metric('ppl'), 4)}{delta_text}"


def _within_limit_lines(run: RunRecord, scored: list[VariantRow], max_pct: float) -> list[str]:
    """The fastest and the smallest variant within the PPL limit of the reference."""
    ref_ppl = reference_ppl(run)
    if run.reference is None:
        return [f"No reference variant (--reference none): nothing to measure a +{max_pct:g}% PPL limit against."]
    if ref_ppl is None:
        return [f"No PPL for the reference {run.reference}: cannot judge which variants are within +{max_pct:g}% PPL."]
    within = [r for r in scored if r.metric("ppl") <= ref_ppl * (1 + max_pct / 100)]
    label = f"within +{max_pct:g}% PPL of {run.reference}"
    lines = []
    fast = [r for r in within if r.metric("decode_tok_s") is not None]
    if fast:
        best = max(fast, key=lambda r: r.metric("decode_tok_s"))
        lines.append(f"Fastest {label}: {best.variant}, {fmt_sig(best.metric('decode_tok_s'), 3)} decode tok/s, "
                     f"{_describe(best, ref_ppl)}.")
    else:
        lines.append(f"Fastest {label}: none has a decode speed.")
    sized = [r for r in within if r.metric("size_bytes") is not None]
    if sized:
        best = min(sized, key=lambda r: r.metric("size_bytes"))
        lines.append(f"Smallest {label}: {best.variant}, {fmt_mb(best.metric('size_bytes'))} MB, "
                     f"{_describe(best, ref_ppl)}.")
    else:
        lines.append(f"Smallest {label}: none has a size.")
    return lines


def _memory_line(run: RunRecord, scored: list[VariantRow], budget_mb: float | None) -> list[str]:
    """The most accurate variant, under the memory budget when there is one."""
    ref_ppl = reference_ppl(run)
    if budget_mb is None:
        if not scored:
            return []
        best = min(scored, key=lambda r: r.metric("ppl"))
        return [f"Most accurate (no memory budget set): {best.variant}, {_describe(best, ref_ppl)}."]
    measured = [r for r in scored if r.metric("peak_rss_mb") is not None]
    fitting = [r for r in measured if r.metric("peak_rss_mb") <= budget_mb]
    if fitting:
        best = min(fitting, key=lambda r: r.metric("ppl"))
        return [f"Most accurate under {budget_mb:g} MB peak memory: {best.variant}, {_describe(best, ref_ppl)}, "
                f"peak RSS {best.metric('peak_rss_mb'):.0f} MB."]
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
    without a budget the most accurate variant overall is named.
    """
    max_pct, budget_mb = resolve_settings(run, max_ppl_increase_pct, memory_budget_mb)
    scored = [r for r in run.results if r.ok and r.metric("ppl") is not None]
    lines = _within_limit_lines(run, scored, max_pct) + _memory_line(run, scored, budget_mb)
    for row in run.results:
        if row.status in ("failed", "unavailable"):
            lines.append(f"{row.status.capitalize()}: {row.variant}: {row.error or 'no reason given'}")
    return lines


def summary(run: RunRecord) -> dict[str, Any]:
    """What the report derives from a run, as plain data: ΔPPL, frontiers, recommendation lines."""
    ref_ppl = reference_ppl(run)
    return {
        "reference_ppl": ref_ppl,
        "delta_ppl_pct": {r.variant: delta_ppl_pct(r, ref_ppl) for r in run.results},
        "pareto": frontier_names(run),
        "recommendations": recommendations(run),
    }


def header_lines(run: RunRecord) -> list[str]:
    """One-line descriptions of the model, the text scored and the machine."""
    model, corpus = run.model, run.corpus
    sha = (model.source_sha256 or "")[:12]
    # The environment's scalar facts; nested ones (versions, gpus) stay in report.json.
    machine = ", ".join(f"{k} {v}" for k, v in run.environment.items() if isinstance(v, (str, int, float)) and v != "")
    shown = {key: ABSENT if value is None else value for key, value in
             (("name", corpus.name), ("protocol", corpus.protocol), ("ctx", corpus.ctx),
              ("tokens", corpus.tokens_scored))}
    lines = [
        f"run {run.run_id or ABSENT} at {run.created_utc or ABSENT}",
        f"model {model.name or ABSENT}" + (f" (sha256 {sha}…)" if sha else ""),
        f"corpus {shown['name']}, protocol {shown['protocol']}, ctx {shown['ctx']}, "
        f"{shown['tokens']} tokens scored; reference {run.reference}",
    ]
    if machine:
        lines.append(f"machine: {machine}")
    if run.settings.threads and "threads" not in run.environment:  # older runs kept it in the settings only
        lines.append(f"threads {run.settings.threads}")
    return lines


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


def _diff_cell(change) -> str:
    sig = _DIFF_SIG.get(change.key, 4)
    if change.a is None and change.b is None:
        return ABSENT
    text = f"{fmt_sig(change.a, sig)} → {fmt_sig(change.b, sig)}"
    if change.delta_pct is not None:
        text += f" ({change.delta_pct:+.1f}%)"
    if change.is_speed and change.a is not None and change.b is not None:
        text += _NOISE_MARK[change.beyond_noise]
    return text


def render_diff(run_diff) -> str:
    """What changed from run A to run B (``store.RunDiff``), per variant, with the speed noise verdicts."""
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
    lines.append(
        "speeds: * = beyond the measured noise (the [min, max] ranges of the two runs' repetitions do not overlap); "
        "no mark = within it; ? = a run has no spread."
    )
    return "\n".join(lines) + "\n"
