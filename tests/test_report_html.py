"""report.html in a real browser: headless Chromium shows the plot and the table, not a blank page."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness import report_files
from harness.results import RunRecord

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
WIDTH, HEIGHT = 1400, 1800
TABLE_HEADER_COLOUR = "#dde6f3"  # th background in report_files.HTML_STYLE

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")


def row(variant, ppl, decode, rss, size_mb):
    runtime, precision = variant.split("-", 1)
    return {
        "variant": variant, "runtime": runtime, "precision": precision, "status": "ok", "error": None,
        "accuracy": {"ppl": ppl, "ppl_stderr": ppl / 80, "kld_mean": (ppl - 10) / 50, "top1_agreement": 99.0},
        "efficiency": {
            "size_bytes": size_mb * 1e6, "bits_per_weight": 8.5, "prefill_tok_s": decode * 8,
            "decode_tok_s": decode, "decode_tok_s_spread": [decode * 0.9, decode * 1.1],
            "ttft_ms": 900 / decode, "peak_rss_mb": rss, "noisy": [],
        },
    }


def run_with_thirteen_variants():
    rows = [row("torch-fp32", 10.0, 18, 900, 540), row("torch-bf16", 10.02, 9, 620, 270),
            row("ort-fp32", 10.0, 28, 820, 540), row("ort-int4", 10.9, 60, 350, 120),
            row("llamacpp-f32", 10.0, 33, 700, 540)]
    quants = ["q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]
    for i, quant in enumerate(quants):
        rows.append(row(f"llamacpp-{quant}", 10.0 * math.exp(0.004 * i * i), 50 + 7 * i, 300 - 20 * i, 145 - 9 * i))
    rows[6] = {"variant": "llamacpp-q6_k", "runtime": "llamacpp", "precision": "q6_k", "status": "failed",
               "error": "RuntimeError: out of memory"}
    return RunRecord.from_dict({
        "schema_version": 1, "run_id": "html-test", "created_utc": "2026-11-26T20:00:00Z",
        "model": {"name": "smollm2-135m", "source": "x.gguf", "source_sha256": "0" * 64},
        "corpus": {"name": "sample", "protocol": "sliding", "ctx": 512, "tokens_scored": 2048},
        "environment": {"cpu": "test"}, "reference": "llamacpp-f32",
        "settings": {"threads": 2, "max_ppl_increase_pct": 5.0, "memory_budget_mb": 500}, "results": rows,
    })


def screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    import matplotlib.image

    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert shot.exists(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return matplotlib.image.imread(shot)[..., :3]


def pixels_near(image: np.ndarray, hex_colour: str, tolerance: float = 0.03) -> np.ndarray:
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.all(np.abs(image - rgb) < tolerance, axis=-1)


def assert_shows_plot_above_table(image: np.ndarray) -> None:
    """The screenshot of a report page shows the trade-off plot, and the table below it, not a blank page."""
    assert image.shape[:2] == (HEIGHT, WIDTH)
    distinct = len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert distinct > 200, f"only {distinct} distinct colours: the page looks blank"

    # The frontier line is drawn only inside the plot: its colour on screen means the image rendered.
    frontier = pixels_near(image, report_files.FRONTIER_COLOUR)
    assert frontier.sum() > 300, "no Pareto frontier on screen: the embedded plot did not render"
    # The table's header cells: a colour nothing else on the page uses.
    header = pixels_near(image, TABLE_HEADER_COLOUR, tolerance=0.01)
    assert header.sum() > 5000, "no table header on screen"
    plot_rows = np.nonzero(frontier.any(axis=1))[0]
    table_rows = np.nonzero(header.any(axis=1))[0]
    assert plot_rows.max() < table_rows.min(), "the plot should sit above the table"
    # Inside the box the frontier spans, markers, gridlines and labels are drawn too.
    plot_cols = np.nonzero(frontier.any(axis=0))[0]
    box = image[plot_rows.min():plot_rows.max() + 1, plot_cols.min():plot_cols.max() + 1]
    other_ink = int(((box.min(axis=-1) < 0.9) & ~pixels_near(box, report_files.FRONTIER_COLOUR)).sum())
    assert other_ink > 5000, f"only {other_ink} drawn pixels besides the frontier in the plot area"


def test_report_html_shows_the_plot_and_the_table_in_chromium(tmp_path):
    paths = report_files.write_report(run_with_thirteen_variants(), tmp_path / "out")
    assert_shows_plot_above_table(screenshot(paths["report.html"], tmp_path))


def test_a_page_without_the_plot_fails_the_same_check(tmp_path):
    """The check above is not vacuous: a page whose image is broken shows no frontier colour."""
    paths = report_files.write_report(run_with_thirteen_variants(), tmp_path / "out")
    page = paths["report.html"].read_text()
    start = page.index("base64,") + len("base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(page[:start] + "AAAA" + page[page.index('"', start):])
    image = screenshot(broken, tmp_path)
    assert pixels_near(image, report_files.FRONTIER_COLOUR).sum() == 0
