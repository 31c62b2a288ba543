"""report.html: one self-contained, offline page to explore a run.

The plot is drawn by plotly.js, embedded whole (no network); ``page.js``
beside this module only switches the axes, sorts the table and opens a
variant's detail panel. Everything the page shows is computed here, in Python:
each variant's figures with their intervals, the Pareto frontier of every
axis pair, the table cells, the detail panels and the environment.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from importlib import resources
from typing import Any, Iterable

from harness import report
from harness.report.tasks import larger_is_better, task_key
from harness.results import Efficiency, Point, RunRecord, VariantRow, finite_pair

RUNTIME_COLOURS = {"torch": "#1f77b4", "ort": "#2ca02c", "llamacpp": "#d62728"}
OTHER_COLOUR = "#9467bd"
FRONTIER_COLOUR = "#ff7f0e"
TABLE_HEADER_COLOUR = "#dde6f3"
Z_95 = 1.96  # two-sided 95 % normal quantile: a standard error becomes an interval

# The axes a reader can choose: (key, label, larger is better). Offered when some ok variant has the figure.
ACCURACY_AXES = (
    ("ppl", "PPL", False),
    ("delta_ppl_pct", "ΔPPL %", False),
    ("kld_mean", "KLD", False),
    ("bits_per_byte", "bits per byte", False),
    ("delta_bits_per_byte", "Δ bits per byte", False),
    ("top1_agreement", "top-1 %", True),
)
EFFICIENCY_AXES = (
    ("decode_tok_s", "decode tok/s", True),
    ("prefill_tok_s", "prefill tok/s", True),
    ("ttft_ms", "TTFT ms", False),
    ("peak_rss_mb", "peak RSS MB", False),
    ("size_mb", "size MB", False),
    ("energy_per_token_j", "GPU energy per token J", False),
    ("cpu_energy_per_token_j", "CPU energy per token J", False),
)
# report.LARGER_IS_BETTER, extended to every axis above.
LARGER_IS_BETTER = {**report.LARGER_IS_BETTER, **{key: up for key, _, up in ACCURACY_AXES + EFFICIENCY_AXES}}
# x, y: the page opens on the paired ΔPPL %, whose interval is the paired one (each variant's own PPL
# interval is far wider and overlaps the reference's where the paired difference is clear); with several
# models, bits per byte, which compares the models too. PPL stays a choice.
DEFAULT_X = "decode_tok_s"
DEFAULT_Y = {"ppl": "delta_ppl_pct", "bits_per_byte": "bits_per_byte"}  # by report.accuracy_key(run)
# Marker shapes that tell models apart (plotly names; colour stays the runtime's).
MODEL_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star", "hexagon", "triangle-down")
# Figures whose standard error gives their interval; the others take `<key>_ci`, else the repetitions' spread.
STDERR_OF = {"ppl": "ppl_stderr", "kld_mean": "kld_stderr", "top1_agreement": "top1_agreement_stderr"}
CI_95, SPREAD = "95% interval", "min–max over the repetitions"

_LEADING_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


def _field(row: VariantRow, name: str) -> Any:
    """``name`` from the row's accuracy or efficiency section; None when neither has it (older runs)."""
    for section in (row.accuracy, row.efficiency):
        value = getattr(section, name, None)
        if value is not None:
            return value
    return None


def task_axes(run: RunRecord) -> tuple[tuple[str, str, bool], ...]:
    """Every lm-eval task metric some row scored, as an accuracy axis: (``task/metric``, label, larger is better)."""
    found: dict[str, tuple[str, bool]] = {}
    for row in run.results:
        for task, scores in (row.tasks or {}).items():
            for metric in scores.metrics:
                found.setdefault(task_key(task, metric), (f"{task} {metric}", larger_is_better(metric)))
    return tuple((key, label, up) for key, (label, up) in found.items())


def _task_figure(row: VariantRow, key: str, section: str) -> float | None:
    """A task metric's value (``section`` "metrics") or standard error ("stderr") from ``task/metric``."""
    task, _, metric = key.rpartition("/")
    scores = (row.tasks or {}).get(task)
    return None if scores is None else getattr(scores, section).get(metric)


def metric_value(row: VariantRow, key: str, ref_ppl: float | None) -> float | None:
    """The figure an axis plots: ``row.metric``, with ΔPPL % derived, the size in MB and task metrics."""
    if "/" in key:
        return _task_figure(row, key, "metrics")
    if key == "delta_ppl_pct":
        return report.delta_ppl_pct(row, ref_ppl)
    if key == "size_mb":
        size = row.metric("size_bytes")
        return None if size is None else size / 1e6
    return row.metric(key)


def metric_interval(row: VariantRow, key: str, ref_ppl: float | None) -> tuple[float, float, str] | None:
    """``(low, high, kind)`` around an axis figure: a 95 % interval, else the repetitions' [min, max]."""
    value = metric_value(row, key, ref_ppl)
    if value is None:
        return None
    if key in STDERR_OF or "/" in key:
        stderr = _task_figure(row, key, "stderr") if "/" in key else row.metric(STDERR_OF[key])
        return None if stderr is None else (value - Z_95 * stderr, value + Z_95 * stderr, CI_95)
    ci = finite_pair(_field(row, f"{key}_ci"))
    if ci is not None:
        return ci[0], ci[1], CI_95
    spread = finite_pair(_field(row, f"{key}_spread"))
    return None if spread is None else (spread[0], spread[1], SPREAD)


def _fmt_figure(value: float | None, interval: tuple[float, float, str] | None) -> str:
    if value is None:
        return report.ABSENT
    text = report.fmt_sig(value, 4)
    if interval is not None:
        text += f" [{report.fmt_sig(interval[0], 3)}, {report.fmt_sig(interval[1], 3)}] ({interval[2]})"
    return text


def plot_data(run: RunRecord) -> dict[str, Any]:
    """What the page's plot needs, as plain JSON: axes, points with intervals, and every pair's frontier.

    A point is named by its row's label (``model/variant`` when the run has
    several models), takes its colour from its runtime and its marker shape
    from its model; ΔPPL is against its own model's reference.
    """
    ref_ppls = {view.models[0].name: report.reference_ppl(view) for view in run.per_model()}
    symbols = {m.name: MODEL_SYMBOLS[i % len(MODEL_SYMBOLS)] for i, m in enumerate(run.models)}
    rows = [r for r in run.results if r.ok]
    axes = {"x": [], "y": []}
    values: dict[str, dict[str, float]] = {}
    tasks = task_axes(run)
    larger = {**LARGER_IS_BETTER, **{key: up for key, _, up in tasks}}
    for side, catalogue in (("y", ACCURACY_AXES + tasks), ("x", EFFICIENCY_AXES)):
        for key, label, up in catalogue:
            present = {run.label(r): v for r in rows if (v := metric_value(r, key, ref_ppls.get(r.model))) is not None}
            if present:
                better = "higher" if up else "lower"
                axes[side].append({"key": key, "label": label, "title": f"{label} ({better} is better)"})
                values[key] = present
    points = []
    for row in rows:
        name, figures = run.label(row), {}
        for key, named in values.items():
            if name in named:
                interval = metric_interval(row, key, ref_ppls.get(row.model))
                figures[key] = {"value": named[name], "low": interval and interval[0],
                                "high": interval and interval[1], "text": _fmt_figure(named[name], interval)}
        points.append({"variant": name, "model": row.model, "runtime": row.runtime, "precision": row.precision,
                       "colour": RUNTIME_COLOURS.get(row.runtime, OTHER_COLOUR),
                       "symbol": symbols.get(row.model, MODEL_SYMBOLS[0]), "figures": figures})
    frontiers = {}
    for x in (a["key"] for a in axes["x"]):
        for y in (a["key"] for a in axes["y"]):
            both = {name: (values[x][name], values[y][name]) for name in values[x] if name in values[y]}
            frontiers[f"{x}|{y}"] = report.pareto_names(both, larger[x], larger[y])
    keys = [a["key"] for a in axes["x"] + axes["y"]]
    default = [k if k in keys else (axes[side][0]["key"] if axes[side] else None)
               for k, side in zip((DEFAULT_X, DEFAULT_Y[report.accuracy_key(run)]), ("x", "y"))]
    return {"axes": axes, "points": points, "frontiers": frontiers, "default": {"x": default[0], "y": default[1]},
            "frontier_colour": FRONTIER_COLOUR,
            "labels": {k: lab for k, lab, _ in ACCURACY_AXES + EFFICIENCY_AXES + tasks},
            "models": list(symbols.items()) if run.multi_model else []}


# A point's figures the curves offer as y (x is any swept axis): (key, label, larger is better).
SWEEP_FIGURES = (
    ("decode_tok_s", "decode tok/s, all sequences", True),
    ("decode_seq_tok_s", "decode tok/s per sequence", True),
    ("prefill_tok_s", "prefill tok/s, all sequences", True),
    ("ttft_ms", "TTFT ms", False),
    ("itl_p50_ms", "ITL p50 ms", False),
    ("itl_p99_ms", "ITL p99 ms", False),
    ("peak_rss_mb", "peak RSS MB", False),
    ("kv_cache_mb", "KV cache MB", False),
)


def sweep_data(run: RunRecord) -> dict[str, Any] | None:
    """What the page's curves need (``--sweep``): the swept axes, the figures, and each point row's coordinates
    and figures with their intervals; None without points. The page draws one line per variant and per value
    of the swept axes other than x."""
    points = report.points_in_order(run)
    if not points:
        return None
    swept = [a for a in Point.AXES if len({p.coordinate(a) for p in points}) > 1] or ["batch"]
    rows = [r for r in run.points if r.ok and r.point is not None]
    figures = [{"key": key, "label": label, "title": f"{label} ({'higher' if up else 'lower'} is better)"}
               for key, label, up in SWEEP_FIGURES if any(r.metric(key) is not None for r in rows)]
    entries = []
    for row in rows:
        values = {}
        for figure in figures:
            value = row.metric(figure["key"])
            if value is not None:
                low_high = finite_pair(_field(row, f"{figure['key']}_ci"))
                values[figure["key"]] = {"value": value, "low": low_high and low_high[0],
                                         "high": low_high and low_high[1]}
        entries.append({"variant": run.label(row), "runtime": row.runtime,
                        "colour": RUNTIME_COLOURS.get(row.runtime, OTHER_COLOUR),
                        "point": row.point.to_dict(), "figures": values})
    return {"axes": swept, "figures": figures, "entries": entries}


def sweep_html(run: RunRecord) -> str:
    """The operating points' section: the curves' choosers and plot, the answer at each point, the table."""
    if not run.points:
        return ""
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in report.point_lines(run))
    return ('<section id="sweep"><h2>Operating points</h2>'
            '<div id="sweep-axes"><label>y <select id="sweep-y"></select></label> '
            '<label>x <select id="sweep-x"></select></label> '
            '<span class="meta">one line per variant (and per value of the other swept axes); '
            'error bars: 95% intervals</span></div>\n<div id="sweep-plot"></div>\n'
            f"<ul>{lines}</ul>\n"
            f'<div class="table-scroll">{report.point_table(run, "html")}</div></section>\n')


def sort_key(cell: str) -> float | None:
    """The number a table cell starts with (``"12.7 ± 1.5"`` → 12.7, ``"357~"`` → 357), or None."""
    match = _LEADING_NUMBER.match(cell)
    return float(match.group(1)) if match else None


def table_html(run: RunRecord) -> str:
    """The report's table (``report.table_rows``), each numeric cell with its sort key in ``data-sort``."""
    rows = report.table_rows(run)
    numeric = [all(cell == report.ABSENT or sort_key(cell) is not None for cell in column)
               and any(cell != report.ABSENT for cell in column) for column in zip(*rows)] if rows else []
    headers = report.headers(run)
    numeric += [False] * (len(headers) - len(numeric))
    head = "".join(f'<th class="{"num" if n else "text"}" data-type="{"num" if n else "text"}" tabindex="0">'
                   f"{html.escape(h)}</th>" for h, n in zip(headers, numeric))
    body = []
    for row, cells in zip(run.results, rows):
        tds = []
        for i, (cell, is_num) in enumerate(zip(cells, numeric)):
            attrs = f' data-variant="{html.escape(run.label(row))}"' if i == 0 else ""
            key = sort_key(cell) if is_num else None
            attrs += f' class="num" data-sort="{key!r}"' if key is not None else (' class="num"' if is_num else "")
            tds.append(f"<td{attrs}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table id="results"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table>")


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return report.fmt_sig(value, 4) if math.isfinite(value) else report.ABSENT
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return report.ABSENT if value is None else str(value)


def definition_list(items: Iterable[tuple[str, Any]]) -> str:
    """``<dl>`` of name/value pairs; nested dicts become nested lists, None is left out."""
    parts = []
    for name, value in items:
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, dict):
            shown = definition_list(value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            shown = "".join(definition_list(v.items()) for v in value)
        else:
            shown = html.escape(_value_text(value))
        parts.append(f"<dt>{html.escape(str(name))}</dt><dd>{shown}</dd>")
    return "<dl>" + "".join(parts) + "</dl>" if parts else ""


ACCURACY_DETAIL = ("ppl", "ppl_stderr", "delta_ppl_pct", "delta_ppl_pct_ci", "delta_nll_mean", "delta_nll_stderr",
                   "nll_correlation", "bits_per_byte", "delta_bits_per_byte", "delta_bits_per_byte_ci",
                   "word_ppl", "byte_ppl", "tokens_scored", "generation_divergence")
DIVERGENCE_DETAIL = ("kld_mean", "kld_stderr", "kld_max", "kld_p999", "kld_p99", "kld_p95", "kld_p90", "kld_p50",
                     "kld_p10", "kld_p05", "kld_p01", "kld_p001", "kld_min", "top1_agreement",
                     "top1_agreement_stderr", "delta_p_mean", "delta_p_stderr", "delta_p_rms", "delta_p_rms_stderr")
RESOURCE_DETAIL = ("load_s", "size_bytes", "bits_per_weight", "peak_rss_mb", "cpu_util_pct", "gpu_peak_mem_mb",
                   "gpu_util_pct", "repetitions", "prompt_tokens", "gen_tokens")
ENERGY_DETAIL = ("energy_j", "energy_per_token_j", "cpu_energy_j", "cpu_energy_per_token_j")


def _timing_items(row: VariantRow) -> list[tuple[str, str]]:
    """Each timed figure and energy as median, 95 % interval and [min, max], marked when the run flagged it noisy."""
    keys = tuple(getattr(Efficiency, "TIMED", ())) + tuple(getattr(Efficiency, "ENERGY", ())) + ENERGY_DETAIL
    items = []
    for key in dict.fromkeys(keys):
        median = row.metric(key)
        if median is None:
            continue
        text = report.fmt_sig(median, 4)
        ci, spread = finite_pair(_field(row, f"{key}_ci")), finite_pair(_field(row, f"{key}_spread"))
        if ci is not None:
            text += f", 95% [{report.fmt_sig(ci[0], 4)}, {report.fmt_sig(ci[1], 4)}]"
        if spread is not None:
            text += f", min–max [{report.fmt_sig(spread[0], 4)}, {report.fmt_sig(spread[1], 4)}]"
        items.append((key, text + (" (noisy)" if row.is_noisy(key) else "")))
    return items


def _divergence_html(row: VariantRow, reference_row: VariantRow | None) -> str:
    lines_of = getattr(report, "divergence_lines", None)
    if lines_of is not None:
        return f'<pre class="divergence">{html.escape(chr(10).join(lines_of(row, reference_row)))}</pre>'
    return definition_list((key, _field(row, key)) for key in DIVERGENCE_DETAIL)


def detail_html(row: VariantRow, reference_row: VariantRow | None, label: str | None = None) -> str:
    """One variant's panel: status, accuracy, divergence statistics, latencies, resources, backend settings.

    ``label`` names it (the run's ``label(row)``); default the variant's name.
    """
    title = html.escape(label or row.variant)
    node = row.node.to_dict() if row.node is not None else {}
    parts = [f"<h3>{title}</h3>",
             definition_list([("model", row.model), ("runtime", row.runtime), ("precision", row.precision),
                              ("status", row.status), ("error", row.error),
                              *((f"measured on ({key})", value) for key, value in node.items())])]
    if row.traceback:
        parts.append(f'<details><summary>traceback</summary><pre>{html.escape(row.traceback)}</pre></details>')
    sections = (
        ("Accuracy", definition_list((key, _field(row, key)) for key in ACCURACY_DETAIL)),
        ("Divergence from the reference", _divergence_html(row, reference_row) if row.ok else ""),
        ("Speed, latency and energy", definition_list(_timing_items(row))),
        ("Resources", definition_list((key, _field(row, key)) for key in RESOURCE_DETAIL)),
        ("Backend settings", definition_list((row.backend or {}).items())),
    )
    parts += [f"<h4>{name}</h4>{body}" for name, body in sections if body]
    return (f'<section class="variant-detail" data-variant="{title}" hidden>' + "".join(parts) + "</section>")


def environment_html(run: RunRecord) -> str:
    """The header lines, then the environment and the settings the run used."""
    lines = "".join(f"<div>{html.escape(line)}</div>" for line in report.header_lines(run))
    settings = run.settings.to_dict() if run.settings is not None else {}
    return (f'<section id="environment"><h2>Environment</h2><div class="meta">{lines}</div>'
            f"<h4>Machine and software</h4>{definition_list(run.environment.items())}"
            f"<h4>Settings</h4>{definition_list(settings.items())}</section>")


def _script_json(data: Any) -> str:
    # "<" escaped so no string in the data can close the <script> element.
    return json.dumps(data, allow_nan=False, ensure_ascii=False).replace("<", "\\u003c")


def _reference_row(run: RunRecord, row: VariantRow) -> VariantRow | None:
    view = run.for_model(row.model)
    return view.row(view.reference) if view.reference else None


def _asset(name: str) -> str:
    return resources.files("harness.report").joinpath(name).read_text(encoding="utf-8")


def report_html(run: RunRecord, png: bytes) -> str:
    """The page: header, recommendations, the plot and its axis choosers, the table, details, environment.

    ``png`` (tradeoff.png) is kept inside the page, folded, for printing or pasting as a picture.
    """
    from plotly.offline import (
        get_plotlyjs,  # the library's own minified bundle, embedded whole
    )

    title = html.escape(f"harness compare: {run.title}")
    recs = "".join(f"<li>{html.escape(line)}</li>" for line in report.recommendations(run))
    details = "\n".join(detail_html(row, _reference_row(run, row), run.label(row)) for row in run.results)
    header = report.header_lines(run)
    meta = "".join(f"<div>{html.escape(line)}</div>" for line in header if not line.startswith("machine:"))
    image = base64.b64encode(png).decode("ascii")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_asset('page.css')}</style></head><body>\n"
        f'<h1>{title}</h1><div class="meta">{meta}</div>\n<h2>Recommendations</h2><ul>{recs}</ul>\n'
        '<main><div id="explore"><div id="axes"><label>accuracy (y) <select id="y-axis"></select></label> '
        '<label>efficiency (x) <select id="x-axis"></select></label> '
        '<span class="meta">error bars: 95% intervals; a speed without one shows its min–max</span></div>\n'
        '<div id="plot"></div>\n'
        '<p class="meta">Click a column header to sort, a row or a point for its details.</p>\n'
        f'<div id="table-box">{table_html(run)}</div>\n<p class="meta">{html.escape(report.LEGEND)}</p>\n'
        f"{sweep_html(run)}"
        '<details id="static-plot"><summary>The same plot as a picture (tradeoff.png)</summary>'
        f'<img alt="PPL against decode speed" src="data:image/png;base64,{image}"></details>\n'
        f"{environment_html(run)}</div>\n"
        '<aside id="detail"><p id="detail-hint" class="meta">Click a row or a point to see a variant\'s '
        f"divergence statistics, latencies and backend settings.</p>\n{details}</aside></main>\n"
        f'<script type="application/json" id="report-data">{_script_json(plot_data(run))}</script>\n'
        f'<script type="application/json" id="sweep-data">{_script_json(sweep_data(run))}</script>\n'
        f"<script>{get_plotlyjs()}</script>\n<script>{_asset('page.js')}</script>\n"
        "</body></html>\n"
    )
