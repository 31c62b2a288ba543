"""report.html in a real browser: headless Chromium, driven through the Chrome DevTools Protocol.

The tests click the table's headers and rows and the plot's points with the
browser's own mouse events (``Input.dispatchMouseEvent`` at the element's place
on screen), switch an axis with the keyboard, read the plot's state from
plotly's div, and check screenshots for the plot and the table.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from dataclasses import replace

import numpy as np
import pytest

from harness import report
from harness.report import files as report_files
from harness.report import html as report_html
from harness.results import Efficiency, Point, RunRecord, VariantRow

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
WIDTH, HEIGHT = 1400, 1800
TABLE_HEADER_COLOUR = report_html.TABLE_HEADER_COLOUR  # th background in harness/report/page.css

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")


def row(variant, ppl, decode, rss, size_mb):
    runtime, precision = variant.split("-", 1)
    kld = (ppl - 10) / 50
    return {
        "variant": variant, "runtime": runtime, "precision": precision, "status": "ok", "error": None,
        "backend": {"runtime_version": "1.0", "threads": 2, "settings": {"n_ctx": 4096, "flash_attn": True}},
        "accuracy": {"ppl": ppl, "ppl_stderr": ppl / 80, "kld_mean": kld, "kld_stderr": kld / 20,
                     "kld_p99": kld * 9, "kld_max": kld * 30, "top1_agreement": 99.0 - kld * 100,
                     "delta_ppl_pct": ppl * 10 - 100, "delta_ppl_pct_ci": [ppl * 10 - 100.4, ppl * 10 - 99.6]},
        "efficiency": {
            "size_bytes": size_mb * 1e6, "bits_per_weight": 8.5, "prefill_tok_s": decode * 8,
            "prefill_tok_s_ci": [decode * 7.8, decode * 8.2], "prefill_tok_s_spread": [decode * 7.5, decode * 8.6],
            "decode_tok_s": decode,
            "decode_tok_s_spread": [decode * 0.9, decode * 1.1], "ttft_ms": 900 / decode,
            "itl_p50_ms": 1000 / decode, "itl_p90_ms": 1100 / decode, "itl_p99_ms": 1300 / decode,
            "peak_rss_mb": rss, "noisy": [], "repetitions": 5, "cpu_energy_per_token_j": 40 / decode,
        },
    }


def run_with_thirteen_variants():
    rows = [row("torch-fp32", 10.0, 18, 900, 540), row("torch-bf16", 10.02, 9, 620, 270),
            row("ort-fp32", 10.0, 28, 820, 540), row("ort-int4", 10.9, 60, 350, 120),
            row("llamacpp-f32", 10.0, 33, 700, 540)]
    quants = ["q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]
    for i, quant in enumerate(quants):
        rows.append(row(f"llamacpp-{quant}", 10.0 * math.exp(0.004 * i * i), 50 + 7 * i, 300 - 20 * i, 145 - 9 * i))
    rows[4]["accuracy"].update(kld_mean=None, kld_stderr=None, kld_p99=None, kld_max=None, top1_agreement=None)
    rows[6] = {"variant": "llamacpp-q6_k", "runtime": "llamacpp", "precision": "q6_k", "status": "failed",
               "error": "RuntimeError: out of memory"}
    return RunRecord.from_dict({
        "schema_version": 1, "run_id": "html-test", "created_utc": "2026-11-26T20:00:00Z",
        "model": {"name": "smollm2-135m", "source": "x.gguf", "source_sha256": "0" * 64},
        "corpus": {"name": "sample", "protocol": "sliding", "ctx": 512, "tokens_scored": 2048},
        "environment": {"cpu": "test", "versions": {"torch": "2.13"}}, "reference": "llamacpp-f32",
        "settings": {"threads": 2, "max_ppl_increase_pct": 5.0, "memory_budget_mb": 500}, "results": rows,
    })


# ---- what the page is made of, without a browser ---------------------------------------------------
def test_every_frontier_the_report_marks_is_the_page_frontier_for_that_pair():
    run = run_with_thirteen_variants()
    frontiers = report_html.plot_data(run)["frontiers"]
    assert len(frontiers) == len(report_html.plot_data(run)["axes"]["x"]) * 4 >= 5 * 4  # every pair
    for x, y, _ in report.FRONTIERS:
        assert frontiers[f"{x}|{y}"] == [r.variant for r in report.pareto_front(run.results, x, y)]
    # Lower TTFT is better: from the quickest first token (q2_k) to the quickest of the lowest PPL (q8_0, as
    # accurate as the reference and quicker, so the reference is off it).
    assert frontiers["ttft_ms|ppl"][0] == "llamacpp-q2_k" and frontiers["ttft_ms|ppl"][-1] == "llamacpp-q8_0"
    assert "llamacpp-f32" not in frontiers["ttft_ms|ppl"]
    # Higher top-1 is better: the reference has none, so it is on no top-1 frontier.
    assert frontiers["decode_tok_s|top1_agreement"][-1] == "llamacpp-q2_k" and \
        all("llamacpp-f32" not in names for key, names in frontiers.items() if key.endswith("top1_agreement"))


def test_intervals_prefer_a_95_percent_interval_to_the_repetitions_spread():
    timed = SimpleNamespace(decode_tok_s=50.0, decode_tok_s_ci=[48.0, 52.0], decode_tok_s_spread=[40.0, 60.0],
                            ttft_ms=20.0, ttft_ms_spread=[19.0, 23.0], peak_rss_mb=300.0, size_bytes=2.5e8)
    scored = SimpleNamespace(ppl=10.0, ppl_stderr=0.5, delta_ppl_pct=1.0, delta_ppl_pct_ci=[0.5, 1.5])
    row = VariantRow("llamacpp-q8_0", "llamacpp", "q8_0", accuracy=scored, efficiency=timed)
    assert report_html.metric_interval(row, "decode_tok_s", 9.9) == (48.0, 52.0, report_html.CI_95)
    assert report_html.metric_interval(row, "ttft_ms", 9.9) == (19.0, 23.0, report_html.SPREAD)
    assert report_html.metric_interval(row, "ppl", 9.9) == (10.0 - 0.98, 10.0 + 0.98, report_html.CI_95)
    assert report_html.metric_interval(row, "delta_ppl_pct", 9.9) == (0.5, 1.5, report_html.CI_95)
    assert report_html.metric_interval(row, "peak_rss_mb", 9.9) is None
    assert report_html.metric_value(row, "size_mb", 9.9) == 250.0


def test_table_cells_carry_numeric_sort_keys():
    assert [report_html.sort_key(c) for c in ("12.74 ± 1.5", "+1.10 ± 0.21", "357~", "3.85e-03", "—", "ok")] == \
        [12.74, 1.10, 357.0, 0.00385, None, None]
    table = report_html.table_html(run_with_thirteen_variants())
    assert table.count("<tr>") == 14 and '<th class="num" data-type="num" tabindex="0">decode tok/s</th>' in table
    assert '<th class="text" data-type="text" tabindex="0">status</th>' in table


def test_details_show_the_fields_when_report_has_no_divergence_lines(monkeypatch):
    run = run_with_thirteen_variants()
    q4 = run.row("llamacpp-q4_k_m")
    monkeypatch.delattr(report, "divergence_lines", raising=False)
    panel = report_html.detail_html(q4, run.row("llamacpp-f32"))
    assert "<dt>kld_p99</dt>" in panel and f"<dd>{report.fmt_sig(q4.metric('kld_p99'), 4)}</dd>" in panel
    assert "<dt>itl_p90_ms</dt>" in panel and "<dt>n_ctx</dt><dd>4096</dd>" in panel


def test_no_text_in_the_run_can_close_the_pages_script():
    data = run_with_thirteen_variants().to_dict()
    data["results"][0]["variant"] = "torch-</script><script>alert(1)</script>"
    page = report_files.report_html(RunRecord.from_dict(data), b"")
    assert page.count("<script") == 4 and "alert(1)</script>" not in page  # report data, sweep data, plotly, page.js


class Chromium:
    """Headless Chromium with one page, driven over the DevTools Protocol (a websocket)."""

    def __init__(self, profile: Path, width: int = WIDTH, height: int = HEIGHT):
        self.profile, self.size, self.events, self.next_id = profile, (width, height), [], 0

    def __enter__(self) -> "Chromium":
        import websocket  # websocket-client, a test extra

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            port = self._wait_for_port()
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
            page = next(t for t in targets if t["type"] == "page")
            self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_for_port(self, timeout_s: float = 60) -> int:
        active = self.profile / "DevToolsActivePort"  # Chromium writes the port it chose here
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError("chromium wrote no DevToolsActivePort")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({expression})"):
                return True
            time.sleep(0.05)
        return False

    def open(self, page: Path) -> bool:
        """Load ``page``; True once its script reports the plot drawn (False for a page that never does)."""
        self.call("Page.navigate", url=page.resolve().as_uri())
        self.wait_for("document.readyState === 'complete'")
        return self.wait_for("document.body && document.body.dataset.ready === '1'", timeout_s=20)

    def click(self, selector_expression: str) -> None:
        """A real left click at the centre of the element ``selector_expression`` evaluates to."""
        box = self.evaluate(f"(() => {{ const el = {selector_expression}; el.scrollIntoView({{block: 'center'}}); "
                            "const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none",
                      clickCount=1)

    def press(self, key: str, code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def screenshot(self) -> np.ndarray:
        import matplotlib.image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]

    def exceptions(self) -> list[str]:
        """Uncaught JavaScript errors so far."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", str(e["params"]))
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


def screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    """The page as Chromium shows it at WIDTH x HEIGHT, once its plot is drawn (or after a timeout)."""
    with Chromium(tmp_path / f"profile-{time.monotonic_ns()}") as browser:
        browser.open(page)
        return browser.screenshot()


def pixels_near(image: np.ndarray, hex_colour: str, tolerance: float = 0.03) -> np.ndarray:
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.all(np.abs(image - rgb) < tolerance, axis=-1)


def assert_shows_plot_above_table(image: np.ndarray) -> None:
    """The screenshot of a report page shows the trade-off plot, and the table below it, not a blank page."""
    assert image.shape[:2] == (HEIGHT, WIDTH)
    distinct = len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert distinct > 200, f"only {distinct} distinct colours: the page looks blank"

    # The frontier is drawn only by the plot: its colour on screen means the plot rendered.
    frontier = pixels_near(image, report_files.FRONTIER_COLOUR)
    assert frontier.sum() > 300, "no Pareto frontier on screen: the plot did not render"
    # The table's header cells: a colour nothing else on the page uses.
    header = pixels_near(image, TABLE_HEADER_COLOUR, tolerance=0.01)
    assert header.sum() > 5000, "no table header on screen"
    plot_rows = np.nonzero(frontier.any(axis=1))[0]
    table_rows = np.nonzero(header.any(axis=1))[0]
    assert plot_rows.max() < table_rows.min(), "the plot should sit above the table"
    # Around the frontier, inside the plot, markers, error bars, gridlines and labels are drawn too. The box is
    # the frontier's own with a margin that stays within the plot (its title and axis labels lie further out):
    # a real run's frontier can be short (two or three points) on the paired ΔPPL axis.
    plot_cols = np.nonzero(frontier.any(axis=0))[0]
    top, left = max(plot_rows.min() - 40, 0), max(plot_cols.min() - 60, 0)
    box = image[top:plot_rows.max() + 41, left:plot_cols.max() + 61]
    other_ink = int(((box.min(axis=-1) < 0.9) & ~pixels_near(box, report_files.FRONTIER_COLOUR)).sum())
    assert other_ink > 5000, f"only {other_ink} drawn pixels besides the frontier in the plot area"


PLOT_STATE = """(() => {
  const gd = document.getElementById('plot');
  if (!gd || !gd.data || !gd.layout) return null;
  const points = gd.data.filter(t => t.customdata);
  return {x_title: gd.layout.xaxis.title.text, y_title: gd.layout.yaxis.title.text,
          xs: Object.fromEntries(points.flatMap(t => t.customdata.map((v, i) => [v, t.x[i]]))),
          ys: Object.fromEntries(points.flatMap(t => t.customdata.map((v, i) => [v, t.y[i]]))),
          x_plus: Object.fromEntries(points.flatMap(t => t.customdata.map((v, i) => [v, t.error_x.array[i]]))),
          y_plus: Object.fromEntries(points.flatMap(t => t.customdata.map((v, i) => [v, t.error_y.array[i]]))),
          frontier: (gd.data.find(t => t.name === 'Pareto frontier') || {x: []}).x};
})()"""
FIRST_ROW = "document.querySelector('#results tbody tr').cells[0].dataset.variant"
HEADER = "Array.from(document.querySelectorAll('#results th')).find(th => th.textContent.startsWith({!r}))"
VISIBLE_DETAIL = "(document.querySelector('.variant-detail:not([hidden])') || {}).dataset?.variant"


def plot_area_colours(image: np.ndarray, rect: dict) -> dict[str, int]:
    """How many pixels of each runtime's colour and of the frontier's lie inside the plot's box on screen."""
    top, left = int(rect["top"]), int(rect["left"])
    box = image[top:top + int(rect["height"]), left:left + int(rect["width"])]
    colours = {**report_files.RUNTIME_COLOURS, "frontier": report_files.FRONTIER_COLOUR}
    return {name: int(pixels_near(box, colour, tolerance=0.05).sum()) for name, colour in colours.items()}


@needs_chromium
def test_report_html_sorts_switches_axes_and_opens_details_in_chromium(tmp_path):
    run = run_with_thirteen_variants()
    page = report_files.write_report(run, tmp_path / "out")["report.html"]
    with Chromium(tmp_path / "profile") as browser:
        assert browser.open(page), "the page never drew its plot"
        assert all(url.startswith(("file:", "data:")) for url in browser.requested_urls()), browser.requested_urls()
        state = browser.evaluate(PLOT_STATE)
        # The page opens on the paired ΔPPL %, its error bar the paired interval, not the PPL's own (wider) one.
        assert state["x_title"].startswith("decode tok/s") and state["y_title"].startswith("ΔPPL %")
        assert state["xs"]["ort-int4"] == 60 and "llamacpp-q6_k" not in state["xs"]  # the failed row is not plotted
        int4 = run.row("ort-int4").accuracy
        assert state["ys"]["ort-int4"] == pytest.approx(int4.delta_ppl_pct)
        assert state["y_plus"]["ort-int4"] == pytest.approx(int4.delta_ppl_pct_ci[1] - int4.delta_ppl_pct)
        assert state["y_plus"]["ort-int4"] != pytest.approx(1.96 * int4.ppl_stderr)
        # At 1400 px the whole table shows beside the detail panel: none of its columns is cut off.
        box = browser.evaluate("(() => { const b = document.getElementById('table-box'); "
                               "return [b.scrollWidth, b.clientWidth]; })()")
        assert WIDTH == 1400 and box[0] <= box[1], box

        # Sort: the first click on "decode tok/s" puts the slowest first, the second the fastest.
        speeds = {r.variant: r.metric("decode_tok_s") for r in run.results if r.metric("decode_tok_s")}
        browser.click(HEADER.format("decode tok/s"))
        assert browser.evaluate(FIRST_ROW) == min(speeds, key=speeds.get) == "torch-bf16"
        browser.click(HEADER.format("decode tok/s"))
        assert browser.evaluate(FIRST_ROW) == max(speeds, key=speeds.get) == "llamacpp-q2_k"
        assert browser.evaluate("document.querySelector('#results tbody tr:last-child').cells[0].dataset.variant") \
            == "llamacpp-q6_k"  # no speed: last either way

        # Switch the x axis with the keyboard (the select's next option is prefill tok/s).
        browser.evaluate("document.getElementById('x-axis').focus()")
        browser.press("ArrowDown", 40)
        assert browser.wait_for("document.getElementById('plot').layout.xaxis.title.text.startsWith('prefill')")
        state = browser.evaluate(PLOT_STATE)
        assert state["xs"]["ort-int4"] == 480 and state["xs"]["torch-bf16"] == 72
        values = {r.variant: (r.metric("prefill_tok_s"), r.metric("delta_ppl_pct")) for r in run.results if r.ok}
        front = report.pareto_names(values, True, False)
        assert state["frontier"] == [values[name][0] for name in front] and len(front) > 1
        # Error bars from the intervals: the 95% one where the run has it, else the repetitions' min–max.
        _, high, _ = report_html.metric_interval(run.row("ort-int4"), "prefill_tok_s", 10.0)
        assert state["x_plus"]["ort-int4"] == pytest.approx(high - 480)
        assert high == pytest.approx(492 if "prefill_tok_s_ci" in Efficiency.field_names() else 516)
        browser.evaluate("window.scrollTo(0, 0)")
        image = browser.screenshot()
        shown = plot_area_colours(image, browser.evaluate(
            "JSON.parse(JSON.stringify(document.getElementById('plot').getBoundingClientRect()))"))
        # Every runtime's markers and the frontier are on screen, inside the plot.
        assert min(shown.values()) > 150 and shown["frontier"] > 1000, shown

        # A click on a row opens its detail panel: divergence statistics, latencies, backend settings.
        assert browser.evaluate(VISIBLE_DETAIL) is None
        browser.click("Array.from(document.querySelectorAll('#results tbody td')).find("
                      "td => td.dataset.variant === 'llamacpp-q4_k_m')")
        assert browser.evaluate(VISIBLE_DETAIL) == "llamacpp-q4_k_m"
        text = browser.evaluate("document.querySelector('.variant-detail:not([hidden])').innerText")
        q4 = run.row("llamacpp-q4_k_m")
        kld = q4.metric("kld_mean")
        assert (f"{kld:.6f}" if hasattr(report, "divergence_lines") else report.fmt_sig(kld, 4)) in text
        assert "itl_p99_ms" in text and report.fmt_sig(q4.metric("itl_p99_ms"), 4) in text
        assert "n_ctx" in text and "4096" in text

        # A click on a plotted point opens that variant's panel.
        point = ("(() => { const gd = document.getElementById('plot'); const t = gd.data.findIndex("
                 "d => d.customdata && d.customdata.includes('ort-int4')); return document.querySelectorAll("
                 "'#plot .scatterlayer .trace')[t].querySelectorAll('path.point')[gd.data[t].customdata"
                 ".indexOf('ort-int4')]; })()")
        browser.click(point)
        assert browser.wait_for("document.querySelector('.variant-detail[data-variant=\"ort-int4\"]:not([hidden])')")
        assert browser.exceptions() == []
        # The pointer rests on the point: its hover label names the variant and its figures on both axes.
        hover = browser.evaluate("document.querySelector('#plot .hoverlayer').textContent")
        assert "ort-int4" in hover and "prefill tok/s: 480" in hover and "PPL: 10.9" in hover, hover


@needs_chromium
def test_every_axis_pair_draws_and_the_page_shows_plot_above_table(tmp_path):
    """Every offered axis pair draws; the plot and the table show in the screenshot."""
    run = run_with_thirteen_variants()
    page = report_files.write_report(run, tmp_path / "out")["report.html"]
    points = report_html.plot_data(run)["points"]
    with Chromium(tmp_path / "profile") as browser:
        assert browser.open(page)
        assert_shows_plot_above_table(browser.screenshot())
        axes = browser.evaluate("['x-axis', 'y-axis'].map(id => Array.from(document.getElementById(id).options)"
                                ".map(o => o.value))")
        energy = ["cpu_energy_per_token_j"] if "cpu_energy_per_token_j" in Efficiency.field_names() else []
        assert axes == [["decode_tok_s", "prefill_tok_s", "ttft_ms", "peak_rss_mb", "size_mb"] + energy,
                        ["ppl", "delta_ppl_pct", "kld_mean", "top1_agreement"]]
        for x in axes[0]:
            for y in axes[1]:
                browser.evaluate(f"document.getElementById('x-axis').value = {x!r}; "
                                 f"document.getElementById('y-axis').value = {y!r}; "
                                 "document.getElementById('y-axis').dispatchEvent(new Event('change'))")
                state = browser.evaluate(PLOT_STATE)
                both = [p for p in points if x in p["figures"] and y in p["figures"]]
                assert state["xs"] == {p["variant"]: p["figures"][x]["value"] for p in both}, (x, y)
                assert state["ys"] == {p["variant"]: p["figures"][y]["value"] for p in both}, (x, y)
                assert len(both) == (11 if y in ("kld_mean", "top1_agreement") else 12), (x, y)  # a failed row; the reference: no KLD


def broken(page: Path, old: str, new: str, tmp_path: Path) -> Path:
    text = page.read_text()
    assert old in text
    out = tmp_path / "broken.html"
    out.write_text(text.replace(old, new, 1))
    return out


@needs_chromium
def test_a_run_with_nothing_scored_still_shows_its_table_and_details(tmp_path):
    run = RunRecord.from_dict({"results": [{"variant": "ort-int4", "runtime": "ort", "precision": "int4",
                                            "status": "failed", "error": "RuntimeError: boom"}]})
    page = report_files.write_report(run, tmp_path / "out")["report.html"]
    with Chromium(tmp_path / "profile") as browser:
        assert browser.open(page)
        assert browser.evaluate("document.getElementById('plot').textContent") == "Nothing to plot."
        browser.click("document.querySelector('#results tbody td')")
        assert "RuntimeError: boom" in browser.evaluate("document.querySelector('.variant-detail:not([hidden])')"
                                                        ".innerText")
        assert browser.exceptions() == []


@needs_chromium
def test_a_page_without_the_plot_or_the_table_fails_the_same_checks(tmp_path):
    """The checks above are not vacuous: without plotly.js, or without the table, they fail."""
    page = report_files.write_report(run_with_thirteen_variants(), tmp_path / "out")["report.html"]
    no_plotly = broken(page, "<script>/**\n* plotly.js", "<script type=\"text/plain\">/**\n* plotly.js", tmp_path)
    with Chromium(tmp_path / "profile") as browser:
        browser.open(no_plotly)
        assert browser.evaluate(PLOT_STATE) is None
        with pytest.raises(AssertionError, match="plot did not render"):
            assert_shows_plot_above_table(browser.screenshot())
    no_table = broken(page, '<table id="results">', '<table id="results" style="display:none">', tmp_path)
    with pytest.raises(AssertionError, match="no table header"):
        assert_shows_plot_above_table(screenshot(no_table, tmp_path))


def run_with_points():
    """The thirteen variants' run, with three of them measured at four operating points (depth x batch)."""
    run = run_with_thirteen_variants()
    points = []
    for variant, base in (("llamacpp-q8_0", 50.0), ("llamacpp-q4_0", 85.0), ("ort-int4", 60.0)):
        original = run.row(variant)
        for depth in (0, 4096):
            for batch in (1, 8):
                decode = base * (0.6 if depth else 1.0) * (3.0 if batch == 8 else 1.0)
                if variant == "ort-int4" and depth and batch > 1:  # as the runtime answers it
                    points.append(VariantRow(variant, original.runtime, original.precision, "unavailable",
                                             "no depth with several sequences", model=original.model,
                                             point=Point(depth, batch, 2, 512, 32)))
                    continue
                efficiency = Efficiency(decode_tok_s=decode, decode_tok_s_ci=[decode * 0.97, decode * 1.03],
                                        decode_seq_tok_s=decode / batch, prefill_tok_s=decode * 8,
                                        prefill_tok_s_ci=[decode * 7.9, decode * 8.1], ttft_ms=batch * 512 / decode,
                                        peak_rss_mb=300.0 + batch * 10, kv_cache_mb=(depth + 545) * batch * 0.023)
                points.append(VariantRow(variant, original.runtime, original.precision, efficiency=efficiency,
                                         model=original.model, point=Point(depth, batch, 2, 512, 32)))
    return replace(run, points=tuple(points),
                   settings=replace(run.settings, sweep={"depth": [0, 4096], "batch": [1, 8]}))


SWEEP_STATE = """(() => {
  const gd = document.getElementById('sweep-plot');
  if (!gd || !gd.data) return null;
  return {title: gd.layout.title.text, names: gd.data.map(t => t.name),
          lines: Object.fromEntries(gd.data.map(t => [t.name, [t.x, t.y]]))};
})()"""


@needs_chromium
def test_report_html_draws_the_sweeps_curves_and_switches_their_axes(tmp_path):
    run = run_with_points()
    page = report_files.write_report(run, tmp_path / "out")["report.html"]
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Chromium(tmp_path / "profile") as browser:
        assert browser.open(page)
        state = browser.evaluate(SWEEP_STATE)
        # x opens on depth (the first swept axis), y on aggregate decode; a line per variant and batch.
        assert state["title"] == "decode tok/s, all sequences along depth"
        assert sorted(state["names"]) == sorted(f"{v}, batch {b}" for v in ("llamacpp-q8_0", "llamacpp-q4_0", "ort-int4")
                                                for b in (1, 8))
        assert state["lines"]["llamacpp-q4_0, batch 8"] == [[0, 4096], [255.0, pytest.approx(153.0)]]
        assert state["lines"]["ort-int4, batch 8"] == [[0], [180.0]]  # its unavailable point is not drawn
        browser.evaluate("const x = document.getElementById('sweep-x'); x.value = 'batch'; "
                         "x.dispatchEvent(new Event('change'))")
        browser.evaluate("const y = document.getElementById('sweep-y'); y.value = 'kv_cache_mb'; "
                         "y.dispatchEvent(new Event('change'))")
        state = browser.evaluate(SWEEP_STATE)
        assert state["title"] == "KV cache MB along batch"
        xs, kv = state["lines"]["llamacpp-q8_0, depth 4096"]
        assert xs == [1, 8] and kv == [pytest.approx(4641 * 0.023), pytest.approx(4641 * 8 * 0.023)]
        text = browser.evaluate("document.getElementById('sweep').innerText")
        # Only q8_0 is within +5% PPL here (q4_0 is 10% worse): the answer holds at every point.
        assert "At d4096, b8, t2 (pp512, tg32): fastest within +5% PPL is llamacpp-q8_0, 90.0 decode tok/s." in text
        assert "Unavailable: ort-int4 at d4096, b8, t2: no depth with several sequences" in text
        assert "pp512+tg32 @ d4096, b8, t2" in text  # the points' table
        assert browser.exceptions() == []


def test_a_run_without_points_has_no_sweep_section():
    run = run_with_thirteen_variants()
    page = report_files.report_html(run, b"")
    assert 'id="sweep"' not in page and '<script type="application/json" id="sweep-data">null</script>' in page
