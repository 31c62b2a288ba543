// report.html's own behaviour: the axis choosers, the table's sorting and the detail panel.
// The chart itself is plotly.js (embedded above); every figure, interval and frontier comes
// precomputed from harness/report/html.py in the JSON of #report-data.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const plot = document.getElementById("plot");
  const xSelect = document.getElementById("x-axis");
  const ySelect = document.getElementById("y-axis");
  const table = document.getElementById("results");
  let selected = null;

  function fillSelect(select, axes, chosen) {
    for (const axis of axes) {
      const option = document.createElement("option");
      option.value = axis.key;
      option.textContent = axis.label;
      select.appendChild(option);
    }
    if (chosen) select.value = chosen;
  }

  function axisOf(side, key) {
    return data.axes[side].find((axis) => axis.key === key);
  }

  // Error bar lengths from the precomputed [low, high]; null where a point has no interval.
  function errorBar(figures, key) {
    const plus = figures.map((f) => (f[key].high == null ? null : f[key].high - f[key].value));
    const minus = figures.map((f) => (f[key].low == null ? null : f[key].value - f[key].low));
    return { type: "data", symmetric: false, array: plus, arrayminus: minus, thickness: 1.2, width: 3,
             visible: plus.some((v) => v != null) };
  }

  function hoverText(point, x, y) {
    const f = point.figures;
    const lines = ["<b>" + point.variant + "</b>", data.labels[x] + ": " + f[x].text, data.labels[y] + ": " + f[y].text];
    for (const key of ["ppl", "delta_ppl_pct", "kld_mean", "top1_agreement", "decode_tok_s", "prefill_tok_s",
                       "ttft_ms", "peak_rss_mb", "size_mb"]) {
      if (key !== x && key !== y && f[key]) lines.push(data.labels[key] + ": " + f[key].text);
    }
    return lines.join("<br>");
  }

  function traces(x, y) {
    const shown = data.points.filter((p) => p.figures[x] && p.figures[y]);
    const out = [];
    for (const runtime of [...new Set(shown.map((p) => p.runtime))]) {
      const group = shown.filter((p) => p.runtime === runtime);
      const figures = group.map((p) => p.figures);
      out.push({
        type: "scatter", mode: "markers", name: runtime,
        x: figures.map((f) => f[x].value), y: figures.map((f) => f[y].value),
        error_x: errorBar(figures, x), error_y: errorBar(figures, y),
        marker: { color: group[0].colour, symbol: group.map((p) => p.symbol), size: 12,
                  line: { color: "#000", width: 0.6 } },
        text: group.map((p) => hoverText(p, x, y)), customdata: group.map((p) => p.variant),
        hovertemplate: "%{text}<extra></extra>",
      });
    }
    const front = (data.frontiers[x + "|" + y] || []).map((name) => shown.find((p) => p.variant === name));
    if (front.length) {
      out.unshift({
        type: "scatter", mode: "lines+markers", name: "Pareto frontier", hoverinfo: "skip",
        x: front.map((p) => p.figures[x].value), y: front.map((p) => p.figures[y].value),
        line: { color: data.frontier_colour, width: 3 },
        marker: { symbol: "circle-open", size: 20, color: data.frontier_colour, line: { width: 2 } },
      });
    }
    for (const [model, symbol] of data.models) {  // several models: a legend entry per marker shape
      out.push({ type: "scatter", mode: "markers", name: model, x: [null], y: [null], hoverinfo: "skip",
                 marker: { symbol: symbol, color: "#888", size: 12 } });
    }
    const chosen = shown.find((p) => p.variant === selected);
    if (chosen) {
      out.push({ type: "scatter", mode: "markers", name: "selected", showlegend: false, hoverinfo: "skip",
                 x: [chosen.figures[x].value], y: [chosen.figures[y].value],
                 marker: { symbol: "circle-open", size: 28, color: "#000", line: { width: 3 } } });
    }
    return [out, shown];
  }

  function draw() {
    const x = xSelect.value, y = ySelect.value;
    if (typeof Plotly === "undefined" || !x || !y) {
      plot.textContent = typeof Plotly === "undefined" ? "plotly.js did not load: no plot." : "Nothing to plot.";
      return Promise.resolve();
    }
    const [out, shown] = traces(x, y);
    const ys = shown.map((p) => p.figures[y].value);
    // A Q2_K outlier would flatten every other variant, as in tradeoff.png.
    const logY = ys.length > 1 && Math.min(...ys) > 0 && Math.max(...ys) / Math.min(...ys) > 3;
    const layout = {
      title: { text: axisOf("y", y).label + " against " + axisOf("x", x).label + " (" + shown.length + " variants)" },
      xaxis: { title: { text: axisOf("x", x).title }, zeroline: false },
      yaxis: { title: { text: axisOf("y", y).title }, type: logY ? "log" : "linear", zeroline: false },
      hovermode: "closest", margin: { l: 70, r: 20, t: 50, b: 60 }, legend: { orientation: "h", y: -0.16 },
      paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    };
    return Plotly.react(plot, out, layout, { displaylogo: false, responsive: true });
  }

  function sortBy(column) {
    const th = table.tHead.rows[0].cells[column];
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const numeric = th.dataset.type === "num";
    const keyOf = (tr) => {
      const td = tr.cells[column];
      if (numeric) return td.dataset.sort === undefined ? null : parseFloat(td.dataset.sort);
      const text = td.textContent.trim();
      return text === "—" || text === "" ? null : text;
    };
    const rows = Array.from(table.tBodies[0].rows);
    rows.sort((a, b) => {
      const ka = keyOf(a), kb = keyOf(b);
      if (ka === null || kb === null) return (ka === null) - (kb === null) || a.dataset.order - b.dataset.order;
      const c = numeric ? ka - kb : ka.localeCompare(kb, undefined, { numeric: true });
      return (ascending ? c : -c) || a.dataset.order - b.dataset.order;  // stable; absent figures last
    });
    for (const tr of rows) table.tBodies[0].appendChild(tr);
  }

  function showDetail(variant) {
    selected = variant;
    document.getElementById("detail-hint").hidden = true;
    for (const section of document.querySelectorAll(".variant-detail")) {
      section.hidden = section.dataset.variant !== variant;
    }
    for (const tr of table.tBodies[0].rows) tr.classList.toggle("selected", tr.cells[0].dataset.variant === variant);
    return draw();
  }

  // --sweep: curves of a point figure (y) along a swept axis (x), one line per variant and per value of the
  // other swept axes, from the JSON of #sweep-data (null without points).
  function drawSweepWhenPresent() {
    const sweep = JSON.parse(document.getElementById("sweep-data").textContent);
    if (!sweep) return;
    const box = document.getElementById("sweep-plot");
    const xs = document.getElementById("sweep-x"), ys = document.getElementById("sweep-y");
    fillSelect(xs, sweep.axes.map((a) => ({ key: a, label: a })), sweep.axes[0]);
    fillSelect(ys, sweep.figures, sweep.figures.length ? sweep.figures[0].key : null);
    function drawSweep() {
      const x = xs.value, y = ys.value;
      if (typeof Plotly === "undefined" || !x || !y) return;
      const held = sweep.axes.filter((a) => a !== x);
      const lines = new Map();
      for (const e of sweep.entries.filter((e) => e.figures[y])) {
        const name = e.variant + held.map((a) => ", " + a + " " + e.point[a]).join("");
        if (!lines.has(name)) lines.set(name, []);
        lines.get(name).push(e);
      }
      const dashes = ["solid", "dash", "dot", "dashdot"];
      const heldKeys = [...new Set([...lines.values()].map((g) => held.map((a) => g[0].point[a]).join("/")))];
      const traces = [...lines.entries()].map(([name, group]) => {
        group.sort((a, b) => a.point[x] - b.point[x]);
        const f = group.map((e) => e.figures[y]);
        return {
          type: "scatter", mode: "lines+markers", name: name, customdata: group.map((e) => e.variant),
          x: group.map((e) => e.point[x]), y: f.map((v) => v.value),
          error_y: { type: "data", symmetric: false, thickness: 1.2, width: 3,
                     array: f.map((v) => (v.high == null ? null : v.high - v.value)),
                     arrayminus: f.map((v) => (v.low == null ? null : v.value - v.low)) },
          line: { color: group[0].colour, dash: dashes[heldKeys.indexOf(held.map((a) => group[0].point[a]).join("/")) % 4] },
          marker: { color: group[0].colour, size: 8 },
        };
      });
      const label = sweep.figures.find((f) => f.key === y);
      Plotly.react(box, traces, {
        title: { text: label.label + " along " + x },
        xaxis: { title: { text: x }, type: "linear" }, yaxis: { title: { text: label.title }, rangemode: "tozero" },
        hovermode: "closest", margin: { l: 70, r: 20, t: 50, b: 60 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
      }, { displaylogo: false, responsive: true });
    }
    xs.addEventListener("change", drawSweep);
    ys.addEventListener("change", drawSweep);
    drawSweep();
  }

  Array.from(table.tBodies[0].rows).forEach((tr, i) => { tr.dataset.order = i; });
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
    th.addEventListener("click", () => sortBy(i));
    th.addEventListener("keydown", (ev) => { if (ev.key === "Enter") sortBy(i); });
  });
  table.tBodies[0].addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr");
    if (tr) showDetail(tr.cells[0].dataset.variant);
  });
  fillSelect(xSelect, data.axes.x, data.default.x);
  fillSelect(ySelect, data.axes.y, data.default.y);
  xSelect.addEventListener("change", draw);
  ySelect.addEventListener("change", draw);
  drawSweepWhenPresent();
  draw().then(() => {
    if (plot.on) plot.on("plotly_click", (ev) => { if (ev.points[0].customdata) showDetail(ev.points[0].customdata); });
  }).finally(() => { document.body.dataset.ready = "1"; });
})();
