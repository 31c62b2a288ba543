"""Write a finished run as files: report.json, results.csv, report.md, tradeoff.png, report.html.

Each file is written under a temporary name in the same directory and renamed
into place, so a reader never sees half a file and an interrupted run leaves
no truncated report behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from harness import report
from harness.report import html as html_page
from harness.report.html import FRONTIER_COLOUR, OTHER_COLOUR, RUNTIME_COLOURS
from harness.results import Point, RunRecord, VariantRow, json_safe

FILE_NAMES = ("report.json", "results.csv", "report.md", "tradeoff.png", "report.html")
SWEEP_PNG = "sweep.png"  # written beside them when the run has operating points (--sweep)
MODEL_MARKERS = ("o", "s", "D", "^", "P", "*", "h", "v")  # tradeoff.png's marker shape per model


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def report_json(run: RunRecord) -> str:
    """The run plus what the report derives from it (``summary``), as strict JSON."""
    document = run.to_dict()
    document["summary"] = report.summary(run)
    return json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n"


def _flat_row(row: VariantRow, ref_ppl: float | None, settings=None) -> dict:
    """One CSV line: the row's identity, its operating point's coordinates (a variant's own row: the run's
    point), ΔPPL %, then every accuracy and efficiency key."""
    flat = {k: getattr(row, k) for k in ("model", "variant", "runtime", "precision", "status", "error")}
    point = row.point or (Point(0, 1, settings.threads, settings.prompt_tokens, settings.gen_tokens) if settings
                          else Point())
    flat.update(point.to_dict())
    flat["delta_ppl_pct"] = report.delta_ppl_pct(row, ref_ppl)
    for section in (row.accuracy, row.efficiency):
        for key, value in (section.to_dict() if section is not None else {}).items():
            if key == "delta_ppl_pct":
                continue  # the column above: the report's value, which the reference has too (0)
            if key.endswith("_spread") and isinstance(value, (list, tuple)) and len(value) == 2:
                flat[f"{key}_min"], flat[f"{key}_max"] = value
            elif key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
                flat[f"{key}_low"], flat[f"{key}_high"] = value
            elif isinstance(value, (list, tuple, dict)):
                flat[key] = json.dumps(value)  # e.g. generation_divergence, noisy
            else:
                flat[key] = value
    return flat


def results_csv(run: RunRecord) -> str:
    """One CSV line per row, the variants' own then their operating points' (``--sweep``): model, variant,
    identity, the point's coordinates, ΔPPL % (against its model's reference), then every accuracy and
    efficiency key.

    Spreads become ``_min``/``_max`` columns and intervals ``_ci_low``/``_ci_high``.
    """
    flats = [_flat_row(row, report.reference_ppl(view), run.settings) for view in run.per_model()
             for row in view.results + view.points]
    columns = list(dict.fromkeys(key for flat in flats for key in flat))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for flat in flats:
        writer.writerow({k: "" if v is None else v for k, v in json_safe(flat).items()})
    return out.getvalue()


def report_markdown(run: RunRecord) -> str:
    """The answer as Markdown: header, table, legend, recommendations, plot."""
    header = "\n".join(f"- {line}" for line in report.header_lines(run))
    recs = "\n".join(f"- {line}" for line in report.recommendations(run))
    return (
        f"# harness compare: {run.title}\n\n{header}\n\n"
        f"{report.render_table(run, 'github')}\n\n{report.LEGEND}\n\n"
        f"## Recommendations\n\n{recs}\n\n![accuracy against decode speed](tradeoff.png)\n"
        + (f"\n## Operating points\n\n{report.point_table(run, 'github')}\n\n"
           + "\n".join(f"- {line}" for line in report.point_lines(run)) + f"\n\n![speed at each point]({SWEEP_PNG})\n"
           if run.points else "")
    )


LABEL_RADII_PT = (6, 13, 21, 30, 40, 52, 66, 82, 100, 120, 145)
# Upper right first, then around the clock: the first free place wins, so the result is deterministic.
LABEL_DIRECTIONS = ((1, 1), (1, 0), (1, -1), (0, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1))


def _errors(rows: list[VariantRow], key: str, ref_ppl: float | None):
    """Matplotlib's ``[[below...], [above...]]`` from each row's interval (0 without one), or None if none has one."""
    below, above = [], []
    for row in rows:
        value = html_page.metric_value(row, key, ref_ppl)
        interval = html_page.metric_interval(row, key, ref_ppl)
        below.append(max(value - interval[0], 0.0) if interval else 0.0)
        above.append(max(interval[1] - value, 0.0) if interval else 0.0)
    return [below, above] if any(below) or any(above) else None


def _candidate(ann, radius: float, dx: int, dy: int, renderer):
    """Move ``ann``'s text ``radius`` points from its point towards (dx, dy) and return its box on screen."""
    norm = math.hypot(dx, dy)
    ann.set_position((radius * dx / norm, radius * dy / norm))
    ann.set_horizontalalignment({1: "left", 0: "center", -1: "right"}[dx])
    ann.set_verticalalignment({1: "bottom", 0: "center", -1: "top"}[dy])
    return ann.get_window_extent(renderer).padded(1.0)


def place_labels(ax, xy: list[tuple[float, float]], texts: list[str], marker_radius_px: list[float]) -> list:
    """Label each point where its text overlaps no other label and stays inside the axes (greedy, deterministic).

    Candidates lie on rings of growing radius around the point, tried in a fixed
    order; a place is free when its box overlaps no label placed before and lies
    inside the axes. The first free place that covers no marker wins; when every
    free place covers one, the first covering the fewest. A label moved past the
    first ring gets a thin leader line to its point. Returns the label
    annotations, in the order of ``texts``.
    """
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(xy) if xy else []
    markers = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for (cx, cy), r in zip(centres, marker_radius_px)]
    placed, labels = [], []
    for (x, y), text in zip(xy, texts):
        ann = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8, zorder=5)
        best = None  # (markers covered, radius, dx, dy)
        for radius in LABEL_RADII_PT:
            for dx, dy in LABEL_DIRECTIONS:
                box = _candidate(ann, radius, dx, dy, renderer)
                if not frame.contains(box.x0, box.y0) or not frame.contains(box.x1, box.y1):
                    continue
                if any(box.overlaps(other) for other in placed):
                    continue
                covered = sum(box.overlaps(m) for m in markers)
                if best is None or covered < best[0]:
                    best = (covered, radius, dx, dy)
            if best is not None and best[0] == 0:
                break
        _, radius, dx, dy = best or (0, LABEL_RADII_PT[-1], 1, 1)  # nowhere free: the farthest place
        placed.append(_candidate(ann, radius, dx, dy, renderer))
        labels.append(ann)
        if radius > LABEL_RADII_PT[0]:
            ax.annotate("", (x, y), xytext=ann.get_position(), textcoords="offset points", zorder=4,
                        arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4})
    return labels


def tradeoff_figure(run: RunRecord):
    """PPL (bits per byte with several models) against decode tok/s: marker area by peak RSS, colour by runtime,
    shape by model, error bars from the intervals, the speed frontier drawn, labels placed apart.
    The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    y_key = report.accuracy_key(run)
    rows = [r for r in run.results if r.ok and r.metric(y_key) is not None and r.metric("decode_tok_s") is not None]
    ref_ppl = report.reference_ppl(run)  # None with several models
    shapes = {m.name: MODEL_MARKERS[i % len(MODEL_MARKERS)] for i, m in enumerate(run.models)}
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=100)
    rss = [r.metric("peak_rss_mb") for r in rows]
    rss_max = max((m for m in rss if m is not None), default=None)
    # Area proportional to memory, 40..600 pt^2; unknown memory gets the smallest marker.
    areas = [40 + 560 * (mem / rss_max) if mem and rss_max else 40 for mem in rss]
    xy = [(r.metric("decode_tok_s"), r.metric(y_key)) for r in rows]
    colours = [RUNTIME_COLOURS.get(r.runtime, OTHER_COLOUR) for r in rows]
    xerr, yerr = _errors(rows, "decode_tok_s", ref_ppl), _errors(rows, y_key, ref_ppl)
    for i, ((x, y), colour) in enumerate(zip(xy, colours)):  # one call per point: ecolor takes one colour
        ax.errorbar([x], [y], xerr=None if xerr is None else [[xerr[0][i]], [xerr[1][i]]],
                    yerr=None if yerr is None else [[yerr[0][i]], [yerr[1][i]]],
                    fmt="none", ecolor=colour, elinewidth=1, capsize=2, alpha=0.6, zorder=1)
    for shape in dict.fromkeys(shapes.get(r.model, "o") for r in rows):  # one scatter per marker shape
        mine = [i for i, r in enumerate(rows) if shapes.get(r.model, "o") == shape]
        ax.scatter([xy[i][0] for i in mine], [xy[i][1] for i in mine], s=[areas[i] for i in mine],
                   c=[colours[i] for i in mine], marker=shape, alpha=0.7, edgecolors="black", linewidths=0.5, zorder=2)
    front = report.pareto_front(rows, "decode_tok_s", y_key)
    if len(front) > 1:
        ax.plot([r.metric("decode_tok_s") for r in front], [r.metric(y_key) for r in front],
                color=FRONTIER_COLOUR, linewidth=2, zorder=0, label="Pareto frontier (speed)")
    if ref_ppl is not None:
        max_pct, _ = report.resolve_settings(run)
        ax.axhline(ref_ppl * (1 + max_pct / 100), color="grey", linestyle="--", linewidth=1,
                   label=f"reference PPL +{max_pct:g}%")
    for runtime, colour in RUNTIME_COLOURS.items():
        if any(r.runtime == runtime for r in rows):
            ax.scatter([], [], color=colour, label=runtime)
    if run.multi_model:
        for model, shape in shapes.items():
            ax.scatter([], [], color="grey", marker=shape, label=model)
    ppls = [p[1] for p in xy]
    if ppls and max(ppls) / min(ppls) > 3:
        ax.set_yscale("log")  # a Q2_K outlier would flatten every other variant
    if not rows:
        ax.text(0.5, 0.5, f"no variant has both {'bits per byte' if run.multi_model else 'a PPL'} and a decode speed",
                ha="center", transform=ax.transAxes)
    ax.margins(0.12)
    ax.set_xlabel("decode tok/s (higher is better)")
    ax.set_ylabel(f"{'bits per byte' if run.multi_model else 'perplexity'} (lower is better)")
    ax.set_title(f"{run.title + ': ' if run.title else ''}accuracy against speed (marker area: peak RSS)\n"
                 "error bars: 95% intervals (a speed without one: min–max over the repetitions)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: never over a label
    fig.tight_layout()
    fig.canvas.draw()  # the final layout, so the labels are placed where they will be drawn
    radii = [math.sqrt(a) / 2 * fig.dpi / 72 for a in areas]
    place_labels(ax, xy, [run.label(r) if run.multi_model else report.precision_label(r) for r in rows], radii)
    return fig


def tradeoff_png(run: RunRecord) -> bytes:
    """tradeoff.png: ``tradeoff_figure`` as PNG bytes."""
    return _png(tradeoff_figure(run))


def sweep_figure(run: RunRecord):
    """Decode and prefill tok/s (all sequences) along the headline swept axis, one line per variant (and per
    value of the other swept axes), with the 95 % intervals. The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report.points_in_order(run)
    swept = [a for a in (run.settings.sweep or {}) if a in Point.AXES and len({p.coordinate(a) for p in points}) > 1]
    axis = swept[0] if swept else "batch"
    others = swept[1:]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=100)
    lines: dict[tuple, list[VariantRow]] = {}
    for row in run.points:
        if row.ok and row.point is not None:
            lines.setdefault((run.label(row), *(row.point.coordinate(a) for a in others)), []).append(row)
    styles = {held: ("-", "--", ":", "-.")[i % 4] for i, held in enumerate(dict.fromkeys(k[1:] for k in lines))}
    for ax, key, title in zip(axes, ("decode_tok_s", "prefill_tok_s"), ("decode", "prefill")):
        for (label, *held), rows in lines.items():
            rows.sort(key=lambda r: r.point.coordinate(axis))
            x = [r.point.coordinate(axis) for r in rows]
            y = [r.metric(key) for r in rows]
            ci = [r.efficiency.interval(key) or (v, v) for r, v in zip(rows, y)]
            name = label + "".join(f", {a} {v}" for a, v in zip(others, held))
            ax.errorbar(x, y, yerr=[[v - lo for v, (lo, _) in zip(y, ci)], [hi - v for v, (_, hi) in zip(y, ci)]],
                        marker="o", capsize=3, label=name, color=RUNTIME_COLOURS.get(rows[0].runtime),
                        linestyle=styles[tuple(held)])
        ax.set_xlabel(axis + (" (tokens in the cache first)" if axis == "depth" else ""))
        ax.set_ylabel(f"{title} tok/s, all sequences (higher is better)")
        ax.set_title(f"{title} speed along {axis}", fontsize=10)
        ax.grid(True, alpha=0.3)
    if lines:
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(f"{run.title + ': ' if run.title else ''}operating points (error bars: 95% intervals)", fontsize=11)
    fig.tight_layout()
    return fig


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def report_html(run: RunRecord, png: bytes) -> str:
    """The interactive page (``harness.report.html``)."""
    return html_page.report_html(run, png)


def write_report(run: RunRecord, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write every report file into ``out_dir`` (created if missing); returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = tradeoff_png(run)
    contents = {
        "report.json": report_json(run).encode(),
        "results.csv": results_csv(run).encode(),
        "report.md": report_markdown(run).encode(),
        "tradeoff.png": png,
        "report.html": report_html(run, png).encode(),
    }
    if run.points:
        contents[SWEEP_PNG] = _png(sweep_figure(run))
    paths = {}
    for name in (*FILE_NAMES, SWEEP_PNG):
        if name in contents:
            paths[name] = out / name
            write_atomic(paths[name], contents[name])
    return paths
