"""Write a finished run as files: report.json, results.csv, report.md, tradeoff.png, report.html.

Each file is written under a temporary name in the same directory and renamed
into place, so a reader never sees half a file and an interrupted run leaves
no truncated report behind.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from harness import report
from harness.results import RunRecord, VariantRow
RUNTIME_COLOURS = {"torch": "#1f77b4", "ort": "#2ca02c", "llamacpp": "#d62728"}
OTHER_COLOUR = "#9467bd"
FRONTIER_COLOUR = "#ff7f0e"

FILE_NAMES = ("report.json", "results.csv", "report.md", "tradeoff.png", "report.html")


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


def json_safe(value):
    """``value`` with numpy scalars made plain and NaN/infinities replaced by None, so the JSON is strict."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def report_json(run: RunRecord) -> str:
    """The run plus what the report derives from it (``summary``), as strict JSON."""
    document = run.to_dict()
    document["summary"] = report.summary(run)
    return json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n"


def _flat_row(row: VariantRow, ref_ppl: float | None) -> dict:
    flat = {k: getattr(row, k) for k in ("variant", "runtime", "precision", "status", "error")}
    flat["delta_ppl_pct"] = report.delta_ppl_pct(row, ref_ppl)
    for section in (row.accuracy, row.efficiency):
        for key, value in (section.to_dict() if section is not None else {}).items():
            if key.endswith("_spread") and isinstance(value, (list, tuple)) and len(value) == 2:
                flat[f"{key}_min"], flat[f"{key}_max"] = value
            elif isinstance(value, (list, tuple, dict)):
                flat[key] = json.dumps(value)  # e.g. generation_divergence, noisy
            else:
                flat[key] = value
    return flat


def results_csv(run: RunRecord) -> str:
    """One CSV line per variant: identity, ΔPPL %, then every accuracy and efficiency key (spreads as _min/_max)."""
    ref_ppl = report.reference_ppl(run)
    flats = [_flat_row(row, ref_ppl) for row in run.results]
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
        f"# harness compare: {run.model.name or ''}\n\n{header}\n\n"
        f"{report.render_table(run, 'github')}\n\n{report.LEGEND}\n\n"
        f"## Recommendations\n\n{recs}\n\n![PPL against decode speed](tradeoff.png)\n"
    )


def tradeoff_png(run: RunRecord) -> bytes:
    """PPL against decode tok/s, marker area by peak RSS, colour by runtime, the speed frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    rows = [r for r in run.results if r.ok and r.metric("ppl") is not None and r.metric("decode_tok_s") is not None]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    try:
        rss = [r.metric("peak_rss_mb") for r in rows]
        rss_max = max((m for m in rss if m is not None), default=None)
        for row, mem in zip(rows, rss):
            x, y = row.metric("decode_tok_s"), row.metric("ppl")
            # Area proportional to memory, 40..600 pt^2; unknown memory gets the smallest marker.
            area = 40 + 560 * (mem / rss_max) if mem and rss_max else 40
            colour = RUNTIME_COLOURS.get(row.runtime, OTHER_COLOUR)
            ax.scatter([x], [y], s=area, color=colour, alpha=0.7, edgecolors="black", linewidths=0.5)
            ax.annotate(row.precision or row.variant, (x, y), xytext=(7, 5), textcoords="offset points", fontsize=8)
        front = report.pareto_front(rows, "decode_tok_s", "ppl")
        if len(front) > 1:
            ax.plot(
                [r.metric("decode_tok_s") for r in front],
                [r.metric("ppl") for r in front],
                color=FRONTIER_COLOUR, linewidth=2, zorder=0, label="Pareto frontier (speed)",
            )
        ref_ppl = report.reference_ppl(run)
        if ref_ppl is not None:
            max_pct, _ = report.resolve_settings(run)
            ax.axhline(ref_ppl * (1 + max_pct / 100), color="grey", linestyle="--", linewidth=1,
                       label=f"reference PPL +{max_pct:g}%")
        for runtime, colour in RUNTIME_COLOURS.items():
            if any(r.runtime == runtime for r in rows):
                ax.scatter([], [], color=colour, label=runtime)
        ppls = [r.metric("ppl") for r in rows]
        if ppls and max(ppls) / min(ppls) > 3:
            ax.set_yscale("log")  # a Q2_K outlier would flatten every other variant
        if not rows:
            ax.text(0.5, 0.5, "no variant has both a PPL and a decode speed", ha="center", transform=ax.transAxes)
        ax.set_xlabel("decode tok/s (higher is better)")
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_title(f"{run.model.name or ''}: accuracy against speed (marker area: peak RSS)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


HTML_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
table { border-collapse: collapse; font-size: 13px; }
th { background: #dde6f3; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2), th:nth-child(n+13), td:nth-child(n+13) { text-align: left; }
img { max-width: 900px; display: block; margin: 12px 0; }
.meta { color: #555; font-size: 13px; }
"""


def report_html(run: RunRecord, png: bytes) -> str:
    """A self-contained page: header, recommendations, the plot inlined as base64, the table."""
    title = f"harness compare: {run.model.name or ''}"
    meta = "".join(f"<div>{html.escape(line)}</div>" for line in report.header_lines(run))
    recs = "".join(f"<li>{html.escape(line)}</li>" for line in report.recommendations(run))
    image = base64.b64encode(png).decode("ascii")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{HTML_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><div class=\"meta\">{meta}</div>\n"
        f"<h2>Recommendations</h2><ul>{recs}</ul>\n"
        f"<img alt=\"PPL against decode speed\" src=\"data:image/png;base64,{image}\">\n"
        f"{report.render_table(run, 'html')}\n<p class=\"meta\">{html.escape(report.LEGEND)}</p>\n"
        "</body></html>\n"
    )


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
    paths = {}
    for name in FILE_NAMES:
        paths[name] = out / name
        write_atomic(paths[name], contents[name])
    return paths
