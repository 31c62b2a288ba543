"""The table of a finished run: the header, the rows with their Pareto frontiers, the text a run prints.

Pure functions over ``harness.results`` types: nothing here reads or writes
files (``harness.report.files``) or touches the results store.
Any row may lack any figure (failed rows have no accuracy or efficiency, GPU
figures are absent on a CPU, divergence is None for the reference).
"""

from __future__ import annotations

from typing import Any, Iterable

from tabulate import tabulate

from harness import defaults
from harness.report.answer import (
    machine_marks,
    machines,
    recommendations,
    reference_ppl,
)
from harness.report.divergence import (
    DEFAULT_KLD_NOISE_FLOOR,
    delta_ppl_pct,
    fmt_delta_ppl,
    indistinguishable,
    kld_noise_floor,
)
from harness.report.format import ABSENT, fmt_fixed, fmt_mb, fmt_ppl, fmt_sig, fmt_speed, precision_label
from harness.report.tasks import fmt_task_cell, task_columns, task_summary
from harness.report.sweep import point_lines, point_table, sweep_summary
from harness.results import ModelInfo, RunRecord, VariantRow

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
NODE_HEADER = "node"  # before the status when the rows were measured on several nodes (--ray)

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
    f"of the median; ~: that interval missed the precision target ({defaults.PRECISION_TARGET_PCT:g}% unless "
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


def frontier_names(run: RunRecord) -> dict[str, list[str]]:
    """Row labels on each frontier, keyed ``"<y>_vs_<x>"``, e.g. ``ppl_vs_decode_tok_s``."""
    return {f"{y}_vs_{x}": [run.label(r) for r in pareto_front(run.results, x, y)] for x, y, _ in frontiers(run)}


def headers(run: RunRecord) -> tuple[str, ...]:
    """``HEADERS``, after a model column when the run has several models, with a column per lm-eval task and a
    node column when it used several nodes, both before the status."""
    columns = ((MODEL_HEADER,) if run.multi_model else ()) + HEADERS
    extra = tuple(f"{task} {metric}" for task, metric in task_columns(run))
    extra += (NODE_HEADER,) if _several_nodes(run) else ()
    return columns[:-2] + extra + columns[-2:]


def _several_nodes(run: RunRecord) -> bool:
    """Whether the rows were measured on more than one node (a Ray run, or rows of several runs)."""
    return len({r.node.label for r in run.results if r.node is not None}) > 1


def table_rows(run: RunRecord) -> list[list[str]]:
    """One list of display strings per row, in run order, matching ``headers(run)``.

    PPL, ΔPPL, KLD and the ≈ mark are read within each model (against its own
    reference); the frontier marks across all rows.
    """
    on_front = {mark: {(r.model, r.variant) for r in pareto_front(run.results, x, y)} for x, y, mark in frontiers(run)}
    machine = machine_marks(run)
    nodes = _several_nodes(run)
    tasks = task_columns(run)
    table = []
    for view in run.per_model():
        ref_ppl = reference_ppl(view)
        ref_row = view.row(view.reference) if view.reference else None
        floor, _ = kld_noise_floor(view)
        for row in view.results:
            key = (row.model, row.variant)
            marks = ["ref"] if row.variant == view.reference else []
            marks += ["≈"] if row.variant != view.reference and indistinguishable(row, floor) else []
            marks += [mark for mark, keys in on_front.items() if key in keys]
            marks += [machine[key]] if key in machine else []
            cells = [
                row.runtime or ABSENT,
                precision_label(row),
                fmt_mb(row.metric("size_bytes")),
                fmt_fixed(row.metric("bits_per_weight"), 2),
                fmt_ppl(row),
                fmt_sig(row.metric("bits_per_byte"), 4),
                fmt_delta_ppl(row, ref_ppl, view.reference),
                fmt_sig(row.metric("kld_mean"), 3),
                fmt_fixed(row.metric("top1_agreement"), 1),
                fmt_speed(row, "prefill_tok_s"),
                fmt_speed(row, "decode_tok_s"),
                fmt_speed(row, "ttft_ms"),
                fmt_fixed(row.metric("peak_rss_mb"), 0),
                *(fmt_task_cell(row, ref_row, task, metric) for task, metric in tasks),
                *([row.node.label if row.node is not None else ABSENT] if nodes else []),
                row.status or ABSENT,
                " ".join(marks),
            ]
            table.append(([row.model or ABSENT] if run.multi_model else []) + cells)
    return table


def render_table(run: RunRecord, tablefmt: str = "simple") -> str:
    """The results table in any ``tabulate`` format ("simple", "github", "html", ...)."""
    colalign = (("left",) if run.multi_model else ()) + COLALIGN
    extra = ("right",) * len(task_columns(run)) + (("left",) if _several_nodes(run) else ())
    colalign = colalign[:-2] + extra + colalign[-2:]
    return tabulate(table_rows(run), headers=headers(run), tablefmt=tablefmt, colalign=colalign,
                    disable_numparse=True)


def summary(run: RunRecord) -> dict[str, Any]:
    """What the report derives from a run, as plain data: ΔPPL, the KLD noise floor, frontiers, recommendations.

    With several models the per-model part sits under ``models``, by model name.
    """
    across = {"pareto": frontier_names(run), "recommendations": recommendations(run)}
    if run.multi_model:
        return {"models": {view.title: _model_summary(view) for view in run.per_model()},
                "accuracy_key": accuracy_key(run), **across}
    return {**_model_summary(run), **across, **({"sweep": sweep_summary(run)} if run.points else {})}


def _model_summary(run: RunRecord) -> dict[str, Any]:
    ref_ppl = reference_ppl(run)
    floor, floor_source = kld_noise_floor(run)
    ref_row = run.row(run.reference) if run.reference else None
    tasks = {r.variant: task_summary(r, ref_row) for r in run.results if r.tasks}
    return {
        **({"tasks": tasks} if tasks else {}),
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
    """The whole answer for a terminal: header, table, legend, recommendations; with --sweep, the points'
    table and the answer at each point."""
    parts = ["\n".join(header_lines(run)), render_table(run), LEGEND, "\n".join(recommendations(run))]
    if run.points:
        parts += ["Operating points (--sweep; decode and prefill tok/s count every sequence's tokens):\n"
                  + point_table(run), "\n".join(point_lines(run))]
    return "\n\n".join(parts) + "\n"


