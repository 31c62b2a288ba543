"""Reports: a finished run (``harness.results``) turned into the table, the answer, the files and history.

May import the schema (``harness.results``), ``harness.defaults`` and ``harness.stats``; never a backend, a
kernel, the measurement, a runner or a command: a report reads results, it measures nothing.
This package's interface is below: ``table`` (the table and the text a run prints), ``answer`` (the
recommendations), ``divergence`` (ΔPPL and KLD read against the reference), ``tasks`` (lm-eval task
scores read against the reference), ``format`` (how a figure is written) and ``history``
(``history``/``diff``); ``files`` and ``html`` write a run's files and are imported by name.
"""

from harness.report.answer import (
    machine_marks,
    machines,
    recommendations,
    reference_ppl,
    resolve_settings,
)
from harness.report.divergence import (
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
from harness.report.format import (
    ABSENT,
    fmt_fixed,
    fmt_mb,
    fmt_ppl,
    fmt_sig,
    fmt_signed_pct,
    fmt_speed,
    precision_label,
)
from harness.report.history import render_diff, render_history
from harness.report.table import (
    COLALIGN,
    FRONTIERS,
    HEADERS,
    LARGER_IS_BETTER,
    LEGEND,
    MODEL_HEADER,
    NODE_HEADER,
    accuracy_key,
    frontier_names,
    frontiers,
    header_lines,
    headers,
    pareto_front,
    pareto_names,
    render_table,
    render_text,
    summary,
    table_rows,
)
from harness.report.sweep import point_lines, point_table, points_in_order, sweep_summary
from harness.report.tasks import task_columns, task_lines, task_summary

__all__ = [
    "ABSENT", "COLALIGN", "DEFAULT_KLD_NOISE_FLOOR", "FRONTIERS", "HEADERS", "LARGER_IS_BETTER", "LEGEND",
    "MODEL_HEADER", "NODE_HEADER", "accuracy_key", "delta_ppl_interval", "delta_ppl_pct", "delta_ppl_upper",
    "divergence_lines", "fmt_delta_ppl", "fmt_fixed", "fmt_mb", "fmt_ppl", "fmt_sig", "fmt_signed_pct", "fmt_speed",
    "precision_label", "frontier_names", "frontiers", "header_lines", "headers", "indistinguishable", "kld_noise_floor",
    "machine_marks", "machines", "pareto_front", "pareto_names", "recommendations", "reference_ppl",
    "point_lines", "point_table", "points_in_order", "render_diff", "render_history", "render_table", "render_text", "resolve_settings", "summary", "table_rows",
    "task_columns", "task_lines", "task_summary", "ties_with_best",
]
