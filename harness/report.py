"""Turn a finished run (a plain dict) into the answer: the table, the Pareto frontiers, the recommendations.

Pure functions: nothing here reads or writes files (see ``report_files``) or
touches the results store (see ``store``). A run is the dict that
``python -m harness compare`` produces; its rows follow the shared result
schema, and any row may lack any key (failed rows have no accuracy or
efficiency, GPU keys are absent on CPU, divergence keys are null for the
reference).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from tabulate import tabulate

ABSENT = "—"
DEFAULT_MAX_PPL_INCREASE_PCT = 5.0

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


def metric(row: dict, key: str) -> float | None:
    """The finite number under ``key`` in the row's accuracy or efficiency, else None."""
    for section in ("accuracy", "efficiency"):
        value = (row.get(section) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def is_ok(row: dict) -> bool:
    return row.get("status") == "ok"


def pareto_front(rows: Iterable[dict], x_key: str, y_key: str) -> list[dict]:
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
        x, y = metric(row, x_key), metric(row, y_key)
        if is_ok(row) and x is not None and y is not None:
            points.append((sign_x * x, sign_y * y, row))
    front = [
        (x, y, row)
        for x, y, row in points
        if not any(ox <= x and oy <= y and (ox < x or oy < y) for ox, oy, _ in points)
    ]
    return [row for _, _, row in sorted(front, key=lambda p: sign_x * p[0])]


def reference_ppl(run: dict) -> float | None:
    """The PPL of the run's reference variant, or None when it did not run."""
    for row in run.get("results", []):
        if row.get("variant") == run.get("reference") and is_ok(row):
            return metric(row, "ppl")
    return None


def delta_ppl_pct(row: dict, ref_ppl: float | None) -> float | None:
    """How much higher the row's PPL is than the reference's, in percent."""
    ppl = metric(row, "ppl")
    if ppl is None or not ref_ppl:
        return None
    return (ppl / ref_ppl - 1.0) * 100.0


def frontier_names(run: dict) -> dict[str, list[str]]:
    """Variant names on each frontier, keyed ``"<y>_vs_<x>"``, e.g. ``ppl_vs_decode_tok_s``."""
    rows = run.get("results", [])
    return {f"{y}_vs_{x}": [r["variant"] for r in pareto_front(rows, x, y)] for x, y, _ in FRONTIERS}


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


def fmt_ppl(row: dict) -> str:
    """PPL ± its standard error: 4 significant figures, the error to 2."""
    ppl, stderr = metric(row, "ppl"), metric(row, "ppl_stderr")
    if ppl is None:
        return ABSENT
    return fmt_sig(ppl, 4) if stderr is None else f"{fmt_sig(ppl, 4)} ± {fmt_sig(stderr, 2)}"


def fmt_signed_pct(value: float | None) -> str:
    return ABSENT if value is None else f"{value:+.2f}"


def fmt_speed(row: dict, key: str) -> str:
    """A throughput or latency to 3 significant figures, with ``~`` when the run flagged it noisy."""
    value = metric(row, key)
    if value is None:
        return ABSENT
    noisy = key in ((row.get("efficiency") or {}).get("noisy") or [])
    return fmt_sig(value, 3) + ("~" if noisy else "")


def fmt_mb(value_bytes: float | None) -> str:
    return ABSENT if value_bytes is None else f"{value_bytes / 1e6:.1f}"


def table_rows(run: dict) -> list[list[str]]:
    """One list of display strings per variant, in run order, matching ``HEADERS``."""
    rows = run.get("results", [])
    ref_ppl = reference_ppl(run)
    on_front = {mark: {r["variant"] for r in pareto_front(rows, x, y)} for x, y, mark in FRONTIERS}
    table = []
    for row in rows:
        marks = ["ref"] if row.get("variant") == run.get("reference") else []
        marks += [mark for mark, names in on_front.items() if row.get("variant") in names]
        top1 = metric(row, "top1_agreement")
        bits = metric(row, "bits_per_weight")
        rss = metric(row, "peak_rss_mb")
        table.append([
            row.get("runtime") or ABSENT,
            row.get("precision") or ABSENT,
            fmt_mb(metric(row, "size_bytes")),
            ABSENT if bits is None else f"{bits:.2f}",
            fmt_ppl(row),
            fmt_signed_pct(delta_ppl_pct(row, ref_ppl)),
            fmt_sig(metric(row, "kld_mean"), 3),
            ABSENT if top1 is None else f"{top1:.1f}",
            fmt_speed(row, "prefill_tok_s"),
            fmt_speed(row, "decode_tok_s"),
            fmt_speed(row, "ttft_ms"),
            ABSENT if rss is None else f"{rss:.0f}",
            row.get("status") or ABSENT,
            " ".join(marks),
        ])
    return table


def render_table(run: dict, tablefmt: str = "simple") -> str:
    """The results table in any ``tabulate`` format ("simple", "github", "html", ...)."""
    return tabulate(table_rows(run), headers=HEADERS, tablefmt=tablefmt, colalign=COLALIGN, disable_numparse=True)


def resolve_settings(
    run: dict, max_ppl_increase_pct: float | None = None, memory_budget_mb: float | None = None
) -> tuple[float, float | None]:
    """The PPL allowance (%) and memory budget (MB): the arguments, else the run's settings, else 5% and none."""
    settings = run.get("settings") or {}
    if max_ppl_increase_pct is None:
        max_ppl_increase_pct = settings.get("max_ppl_increase_pct")
    if max_ppl_increase_pct is None:
        max_ppl_increase_pct = DEFAULT_MAX_PPL_INCREASE_PCT
    if memory_budget_mb is None:
        memory_budget_mb = settings.get("memory_budget_mb")
    return float(max_ppl_increase_pct), memory_budget_mb


def _describe(row: dict, ref_ppl: float | None) -> str:
    delta = delta_ppl_pct(row, ref_ppl)
    delta_text = "" if delta is None else f" ({delta:+.2f}%)"
    return f"PPL {fmt_sig(metric(row, 'ppl'), 4)}{delta_text}"


def recommendations(
    run: dict, max_ppl_increase_pct: float | None = None, memory_budget_mb: float | None = None
) -> list[str]:
    """Lines answering "which variant should I use?", then one line per failed or unavailable variant.

    Arguments left as None come from ``run["settings"]`` (``max_ppl_increase_pct``
    defaults to 5). Memory means peak RSS; without a budget the most accurate
    variant overall is named.
    """
    max_pct, budget_mb = resolve_settings(run, max_ppl_increase_pct, memory_budget_mb)
    rows = run.get("results", [])
    reference = run.get("reference")
    ref_ppl = reference_ppl(run)
    scored = [r for r in rows if is_ok(r) and metric(r, "ppl") is not None]
    lines = []

    if reference is None:
        lines.append(f"No reference variant (--reference none): nothing to measure a +{max_pct:g}% PPL limit against.")
    elif ref_ppl is None:
        lines.append(f"No PPL for the reference {reference}: cannot judge which variants are within +{max_pct:g}% PPL.")
    else:
        within = [r for r in scored if metric(r, "ppl") <= ref_ppl * (1 + max_pct / 100)]
        fast = [r for r in within if metric(r, "decode_tok_s") is not None]
        sized = [r for r in within if metric(r, "size_bytes") is not None]
        label = f"within +{max_pct:g}% PPL of {reference}"
        if fast:
            best = max(fast, key=lambda r: metric(r, "decode_tok_s"))
            lines.append(
                f"Fastest {label}: {best['variant']}, {fmt_sig(metric(best, 'decode_tok_s'), 3)} decode tok/s, "
                f"{_describe(best, ref_ppl)}."
            )
        else:
            lines.append(f"Fastest {label}: none has a decode speed.")
        if sized:
            best = min(sized, key=lambda r: metric(r, "size_bytes"))
            lines.append(
                f"Smallest {label}: {best['variant']}, {fmt_mb(metric(best, 'size_bytes'))} MB, {_describe(best, ref_ppl)}."
            )
        else:
            lines.append(f"Smallest {label}: none has a size.")

    if budget_mb is None:
        if scored:
            best = min(scored, key=lambda r: metric(r, "ppl"))
            lines.append(f"Most accurate (no memory budget set): {best['variant']}, {_describe(best, ref_ppl)}.")
    else:
        measured = [r for r in scored if metric(r, "peak_rss_mb") is not None]
        fitting = [r for r in measured if metric(r, "peak_rss_mb") <= budget_mb]
        if fitting:
            best = min(fitting, key=lambda r: metric(r, "ppl"))
            lines.append(
                f"Most accurate under {budget_mb:g} MB peak memory: {best['variant']}, "
                f"{_describe(best, ref_ppl)}, peak RSS {metric(best, 'peak_rss_mb'):.0f} MB."
            )
        elif measured:
            least = min(measured, key=lambda r: metric(r, "peak_rss_mb"))
            lines.append(
                f"No variant fits in {budget_mb:g} MB peak memory; the least is {least['variant']} "
                f"at {metric(least, 'peak_rss_mb'):.0f} MB."
            )
        else:
            lines.append(f"No variant has a measured peak memory to compare with {budget_mb:g} MB.")

    for row in rows:
        if row.get("status") in ("failed", "unavailable"):
            reason = row.get("error") or "no reason given"
            lines.append(f"{row['status'].capitalize()}: {row.get('variant')}: {reason}")
    return lines


def summary(run: dict) -> dict[str, Any]:
    """What the report derives from a run, as plain data: ΔPPL, frontiers, recommendation lines."""
    ref_ppl = reference_ppl(run)
    return {
        "reference_ppl": ref_ppl,
        "delta_ppl_pct": {r.get("variant"): delta_ppl_pct(r, ref_ppl) for r in run.get("results", [])},
        "pareto": frontier_names(run),
        "recommendations": recommendations(run),
    }


def header_lines(run: dict) -> list[str]:
    """One-line descriptions of the model, the text scored and the machine."""
    model = run.get("model") or {}
    corpus = run.get("corpus") or {}
    env = run.get("environment") or {}
    sha = (model.get("source_sha256") or "")[:12]
    # The runner decides what the environment holds; show its scalar facts, skip nested ones (versions).
    machine = ", ".join(f"{k} {v}" for k, v in env.items() if isinstance(v, (str, int, float)) and v != "")
    settings = run.get("settings") or {}
    lines = [
        f"run {run.get('run_id', ABSENT)} at {run.get('created_utc', ABSENT)}",
        f"model {model.get('name', ABSENT)}" + (f" (sha256 {sha}…)" if sha else ""),
        f"corpus {corpus.get('name', ABSENT)}, protocol {corpus.get('protocol', ABSENT)}, ctx {corpus.get('ctx', ABSENT)}, "
        f"{corpus.get('tokens_scored', ABSENT)} tokens scored; reference {run.get('reference', ABSENT)}",
    ]
    if machine:
        lines.append(f"machine: {machine}")
    if settings.get("threads") and "threads" not in env:  # older runs kept it in the settings only
        lines.append(f"threads {settings['threads']}")
    return lines


def render_text(run: dict) -> str:
    """The whole answer for a terminal: header, table, legend, recommendations."""
    parts = ["\n".join(header_lines(run)), render_table(run), LEGEND, "\n".join(recommendations(run))]
    return "\n\n".join(parts) + "\n"
