"""Operating points (``--sweep``): each variant's speed at each point, the answer per point, and where it flips.

A point row (``RunRecord.points``) carries speed only; whether its variant is within the PPL limit is read from
the variant's own row (``RunRecord.results``), against its model's reference, as the main answer reads it.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from harness.report.answer import reference_ppl, resolve_settings
from harness.report.divergence import delta_ppl_upper
from harness.report.format import ABSENT, fmt_fixed, fmt_sig, fmt_speed
from harness.results import Point, RunRecord, VariantRow

# (figure, header): the point table's columns after the variant and the point
POINT_COLUMNS = (
    ("prefill_tok_s", "prefill tok/s"),
    ("decode_tok_s", "decode tok/s"),
    ("decode_seq_tok_s", "per seq tok/s"),
    ("ttft_ms", "TTFT ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p99_ms", "ITL p99 ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("kv_cache_mb", "KV MB"),
)
_REPEATED = {"prefill_tok_s", "decode_tok_s", "ttft_ms", "itl_p50_ms", "itl_p99_ms"}  # shown with their interval
ANSWER_KEY = "decode_tok_s"  # what "fastest" means at a point: all sequences' decode tokens per second


def points_in_order(run: RunRecord) -> list[Point]:
    """The run's points, each once, in the order they were measured."""
    return list({row.point.key: row.point for row in run.points if row.point is not None}.values())


def point_table(run: RunRecord, tablefmt: str = "simple") -> str:
    """One line per (variant, point), points named as llama-bench names its tests; "" without points."""
    if not run.points:
        return ""
    lines = []
    for row in run.points:
        cell = [run.label(row), row.point.label if row.point else ABSENT]
        for key, _ in POINT_COLUMNS:
            cell.append(fmt_speed(row, key) if key in _REPEATED else _plain(row, key))
        lines.append(cell + [row.status])
    headers = ["variant", "point", *(h for _, h in POINT_COLUMNS), "status"]
    return tabulate(lines, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                    colalign=("left", "left", *("right",) * len(POINT_COLUMNS), "left"))


def _plain(row: VariantRow, key: str) -> str:
    value = row.metric(key)
    return fmt_fixed(value, 0) if key == "peak_rss_mb" else fmt_sig(value, 3)


def within_limit(run: RunRecord, max_pct: float) -> set[tuple]:
    """(model, variant) of every variant whose paired ΔPPL upper bound is within ``max_pct`` of its reference."""
    keys = set()
    for view in run.per_model():
        ref_ppl = reference_ppl(view)
        if view.reference is None or ref_ppl is None:
            continue
        for row in view.results:
            upper = delta_ppl_upper(row, ref_ppl, view.reference) if row.ok else None
            if upper is not None and upper <= max_pct:
                keys.add((row.model, row.variant))
    return keys


def winners(run: RunRecord, max_pct: float) -> dict[str, list[VariantRow]]:
    """Point key -> the rows within the limit that tie for fastest there: the fastest first, then every row
    whose 95 % interval reaches the fastest's (an empty list: none measured)."""
    eligible = within_limit(run, max_pct)
    at: dict[str, list[VariantRow]] = {p.key: [] for p in points_in_order(run)}
    for row in run.points:
        if row.ok and row.metric(ANSWER_KEY) is not None and (row.model, row.variant) in eligible:
            at[row.point.key].append(row)
    return {key: _tied_for_fastest(rows) for key, rows in at.items()}


def _tied_for_fastest(rows: list[VariantRow]) -> list[VariantRow]:
    if not rows:
        return []
    best = max(rows, key=lambda r: r.metric(ANSWER_KEY))
    low = _interval(best)[0]
    return [best] + sorted((r for r in rows if r is not best and _interval(r)[1] >= low),
                           key=lambda r: -r.metric(ANSWER_KEY))


def _interval(row: VariantRow) -> tuple[float, float]:
    value = row.metric(ANSWER_KEY)
    return row.efficiency.interval(ANSWER_KEY) or (value, value)


def point_lines(run: RunRecord, max_ppl_increase_pct: float | None = None) -> list[str]:
    """The answer at each point, then each place along a swept axis where it changes."""
    if not run.points:
        return []
    max_pct, _ = resolve_settings(run, max_ppl_increase_pct)
    best = winners(run, max_pct)
    if not any(best.values()):
        return [f"At no point is a variant within +{max_pct:g}% PPL of its reference measured: no answer per point."
                ] + not_measured_lines(run)
    lines = []
    for point in points_in_order(run):
        tied = best[point.key]
        shown = "none measured"
        if tied:
            shown = f"{run.label(tied[0])}, {fmt_sig(tied[0].metric(ANSWER_KEY), 3)} decode tok/s"
            if len(tied) > 1:
                shown += f" (tied within noise: {', '.join(run.label(r) for r in tied[1:])})"
        lines.append(f"At {point.where} (pp{point.prompt}, tg{point.gen}): fastest within +{max_pct:g}% PPL is {shown}.")
    return lines + flip_lines(run, best) + not_measured_lines(run)


def not_measured_lines(run: RunRecord) -> list[str]:
    """One line per point row that failed or that its runtime cannot run, with the reason."""
    return [f"{row.status.capitalize()}: {run.label(row)} at {row.point.where}: {row.error or 'no reason given'}"
            for row in run.points if not row.ok and row.point is not None]


def flip_lines(run: RunRecord, best: dict[str, list[VariantRow]]) -> list[str]:
    """Where the fastest variant changes along one swept axis, the other coordinates held: the one before is
    no longer among those tied for fastest, and the new one was not tied before."""
    points = points_in_order(run)
    lines = []
    for axis in Point.AXES:
        values = sorted({p.coordinate(axis) for p in points})
        if len(values) < 2:
            continue
        others = [a for a in Point.AXES if a != axis]
        groups: dict[tuple, list[Point]] = {}
        for p in points:
            groups.setdefault(tuple(p.coordinate(a) for a in others), []).append(p)
        for group in groups.values():
            group.sort(key=lambda p: p.coordinate(axis))
            for before, after in zip(group, group[1:]):
                was, now = best[before.key], best[after.key]
                if not was or not now or _named(was[0]) in map(_named, now) or _named(now[0]) in map(_named, was):
                    continue
                was, now = was[0], now[0]
                held = ", ".join(f"{a} {after.coordinate(a)}" for a in others
                                 if len({p.coordinate(a) for p in points}) > 1)
                lines.append(f"From {axis} {after.coordinate(axis)} on{f' (at {held})' if held else ''}: "
                             f"{run.label(now)} instead of {run.label(was)}.")
    return lines


def _named(row: VariantRow) -> tuple:
    return row.model, row.variant


def sweep_summary(run: RunRecord) -> dict[str, Any]:
    """Point key -> its coordinates, its fastest variant within the limit and those tied with it, for report.json."""
    max_pct, _ = resolve_settings(run)
    best = winners(run, max_pct)
    return {p.key: {**p.to_dict(), "label": p.label,
                    "fastest_within_limit": run.label(best[p.key][0]) if best[p.key] else None,
                    "tied_within_noise": [run.label(r) for r in best[p.key][1:]]}
            for p in points_in_order(run)}
