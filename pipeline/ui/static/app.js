// Fitstream dashboard: fills each page from the JSON API; the run page follows the run live (SSE).
"use strict";
(function () {
  const context = JSON.parse(document.getElementById("context").textContent);
  const main = document.getElementById("main");
  const token = new URLSearchParams(location.search).get("token");
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }
  async function api(url) {
    const response = await fetch(withToken(url));
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
    return response;
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value; else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(5).replace(/\.?0+$/, "");
    return String(value);
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function sparkline(values) {
    const points = values.map((v, i) => [i, v]).filter(([, v]) => typeof v === "number" && isFinite(v));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "spark"); svg.setAttribute("viewBox", "0 0 100 20"); svg.setAttribute("preserveAspectRatio", "none");
    if (points.length < 2) return svg;
    const ys = points.map(([, v]) => v), lo = Math.min(...ys), hi = Math.max(...ys), n = values.length - 1 || 1;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.map(([i, v]) => `${(i / n) * 100},${hi === lo ? 10 : 18 - ((v - lo) / (hi - lo)) * 16}`).join(" "));
    svg.append(line);
    return svg;
  }
  function table(headers, rows, attrs) {
    return el("table", attrs || {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
  }
  function family(metric) { return metric.startsWith("val_") ? metric.slice(4) : metric; }
  function arrow(mode) { return mode === "min" ? "↓" : mode === "max" ? "↑" : ""; }

  // -- charts ------------------------------------------------------------------------------------
  // One chart per metric family; series: [{label, colour, dash, points: Map(x -> y)}].
  function marksPlugin(marks) {
    return { hooks: { draw: [(u) => {
      const ctx = u.ctx;
      ctx.save();
      for (const mark of marks) {
        const x = u.valToPos(mark.x, "x", true);
        if (!isFinite(x)) continue;
        ctx.strokeStyle = mark.colour; ctx.setLineDash(mark.dash || [4, 4]); ctx.lineWidth = 1.5 * devicePixelRatio;
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillStyle = mark.colour; ctx.font = `${11 * devicePixelRatio}px sans-serif`;
        ctx.fillText(mark.label, x + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
      }
      ctx.restore();
    }] } };
  }
  class Chart {
    constructor(container, title, series, marks, xLabel) {
      this.series = series;
      this.box = el("div", { class: "chart", "data-family": title, "data-points": "0" });
      container.append(this.box);
      const opts = {
        title, width: Math.max(320, Math.min(900, container.clientWidth || 800)), height: 260,
        scales: { x: { time: false } },
        axes: [{ label: xLabel }, {}],
        series: [{ label: xLabel }, ...series.map((s) => ({ label: s.label, stroke: s.colour, dash: s.dash, width: 1.5, spanGaps: true,
          points: { show: s.points ? s.points.size < 60 : false } }))],
        plugins: [marksPlugin(marks || [])],
      };
      this.plot = new uPlot(opts, this.data(), this.box);
      this.count();
    }
    data() {
      const xs = [...new Set(this.series.flatMap((s) => [...s.points.keys()]))].sort((a, b) => a - b);
      return [xs, ...this.series.map((s) => xs.map((x) => (s.points.has(x) ? s.points.get(x) : null)))];
    }
    redraw() { this.plot.setData(this.data()); this.count(); }
    count() { this.box.dataset.points = String(this.series.reduce((n, s) => n + s.points.size, 0)); }
  }
  function seriesByFamily(metricsByRun, runs) {
    const families = new Map();
    runs.forEach((run, r) => {
      for (const [metric, points] of Object.entries(metricsByRun[run.run_id] || {})) {
        if (!families.has(family(metric))) families.set(family(metric), []);
        families.get(family(metric)).push({
          run: run.run_id, metric, label: runs.length > 1 ? `${run.name || run.run_id.slice(0, 8)} ${metric}` : metric,
          colour: runs.length > 1 ? COLOURS[r % COLOURS.length] : COLOURS[families.get(family(metric)).length % COLOURS.length],
          dash: metric.startsWith("val_") && runs.length > 1 ? [6, 4] : undefined,
          points: new Map(points.map(([x, y]) => [x, y])),
        });
      }
    });
    return families;
  }

  // -- pages -----------------------------------------------------------------------------------------
  async function runsPage() {
    const filters = el("form", { class: "filters" },
      el("select", { name: "status" }, ["", "running", "completed", "early_stopped", "failed", "cancelled", "pruned"].map((s) =>
        el("option", { value: s, selected: s === (context.status || "") ? "" : null }, s || "any status"))),
      el("input", { name: "name", placeholder: "name", value: context.name || "" }),
      el("input", { name: "sweep", placeholder: "sweep id", value: context.sweep || "" }));
    const holder = el("div", { id: "runs" });
    main.replaceChildren(el("h1", {}, "Runs"), filters, holder);
    async function load() {
      const query = new URLSearchParams([...new FormData(filters)].filter(([, v]) => v)).toString();
      const runs = await (await api("/api/runs" + (query ? "?" + query : ""))).json();
      holder.replaceChildren(table(["status", "name", "run", "started", "duration", "epochs", "best", "curve", "sweep"],
        runs.map((r) => [el("span", { class: "status " + r.status }, r.status), el("a", { href: withToken("/runs/" + r.run_id) }, r.name || r.run_id),
          el("code", {}, r.run_id.slice(0, 8)), (r.started_at || "").replace("T", " ").slice(0, 19), duration(r.duration_s), r.epochs_completed,
          r.monitor ? `${r.monitor}${arrow(r.mode)} ${fmt(r.best_value)}` : "", sparkline(r.curve || []), r.sweep_id ? r.sweep_id.slice(0, 8) : ""]),
        { id: "runs-table" }));
      holder.dataset.count = String(runs.length);
    }
    filters.addEventListener("change", load);
    filters.addEventListener("submit", (e) => { e.preventDefault(); load(); });
    await load();
    setInterval(() => load().catch(() => {}), 5000);
  }

  async function runPage() {
    const id = context.run_id;
    const [facts, metricsResponse] = await Promise.all([api(`/api/runs/${encodeURIComponent(id)}`).then((r) => r.json()),
      api(`/api/runs/${encodeURIComponent(id)}/metrics`)]);
    const after = metricsResponse.headers.get("X-Fitstream-Stream-Id") || "0-0";
    const metrics = await metricsResponse.json();
    const run = facts.run;
    const status = el("span", { class: "status " + run.status, id: "run-status" }, run.status);
    const header = el("div", { class: "facts" },
      el("h1", {}, run.name || run.run_id), status, " ", el("code", {}, run.run_id),
      el("p", {}, `epochs ${run.epochs_completed}  ·  monitor ${run.monitor || "–"}${arrow(run.mode)}  ·  best ${fmt(run.best_value)} at epoch ${fmt(run.best_epoch)}`
        + (run.stopped_epoch !== null ? `  ·  early stop at epoch ${run.stopped_epoch}` : "")));
    const charts = el("div", { id: "charts" });
    main.replaceChildren(header, charts);
    const marks = [];
    if (facts.marks.best_epoch !== null) marks.push({ x: facts.marks.best_epoch, label: "best", colour: "#2ca02c" });
    if (facts.marks.stopped_epoch !== null) marks.push({ x: facts.marks.stopped_epoch, label: "early stop", colour: "#d62728", dash: [2, 3] });
    for (const change of facts.marks.lr_changes) marks.push({ x: change.epoch, label: `lr ${fmt(change.to)}`, colour: "#9467bd", dash: [1, 3] });
    for (const epoch of facts.marks.checkpoints) marks.push({ x: epoch, label: "ckpt", colour: "#7f7f7f", dash: [1, 5] });
    for (const alert of facts.marks.alerts) marks.push({ x: alert.epoch, label: `${alert.state === "firing" ? "⚠" : "✓"} ${alert.rule}`, colour: "#ff7f0e", dash: [3, 2] });
    const families = seriesByFamily({ [run.run_id]: metrics }, [run]);
    const byMetric = new Map();
    const chartOf = new Map();
    function chartFor(fam) {
      if (!chartOf.has(fam)) {
        const chart = new Chart(charts, fam, families.get(fam), marks, "epoch");
        chartOf.set(fam, chart);
        for (const s of families.get(fam)) byMetric.set(s.metric, { chart, s });
      }
      return chartOf.get(fam);
    }
    // The monitored metric's family first, then the others by name.
    const order = [...families.keys()].sort((a, b) => (a === family(run.monitor || "") ? -1 : b === family(run.monitor || "") ? 1 : a.localeCompare(b)));
    for (const fam of order) chartFor(fam);
    const batch = await (await api(`/api/runs/${encodeURIComponent(id)}/metrics?level=batch`)).json();
    if (Object.keys(batch).length) {
      charts.append(el("h2", {}, "per batch"));
      for (const [fam, series] of seriesByFamily({ [run.run_id]: batch }, [run])) new Chart(charts, fam + " (batches)", series, [], "step");
    }
    main.append(el("h2", {}, "params"), table(["key", "value"], Object.entries(facts.params).map(([k, v]) => [k, String(v)])),
      el("h2", {}, "checkpoints"), table(["epoch", "monitor", "value", "size", "path"], facts.checkpoints.map((c) => [c.epoch, c.monitor, fmt(c.value), c.size_bytes, c.path])),
      el("h2", {}, "alerts"), table(["rule", "state", "epoch", "severity", "channel", "delivery", "at"], facts.alerts.map((a) => [a.rule, a.state, fmt(a.epoch), a.severity, a.channel, a.status, a.created_at])),
      el("h2", {}, "model versions"), table(["name", "version", "aliases", "epoch", "metric", "value"], facts.models.map((m) => [m.name, m.version, (m.aliases || []).join(", "), m.epoch, m.metric, fmt(m.value)])));
    follow(id, after, (event) => {
      if (event.type === "epoch_end") {
        const touched = new Set();
        for (const [metric, value] of Object.entries(event.metrics)) {
          if (!byMetric.has(metric)) {
            const fam = family(metric);
            if (!families.has(fam)) families.set(fam, []);
            families.get(fam).push({ run: run.run_id, metric, label: metric, colour: COLOURS[families.get(fam).length % COLOURS.length], points: new Map() });
            if (chartOf.has(fam)) { chartOf.get(fam).plot.destroy(); chartOf.get(fam).box.remove(); chartOf.delete(fam); }
            chartFor(fam);
          }
          const { chart, s } = byMetric.get(metric);
          s.points.set(event.epoch, value);  // one point per epoch: a replayed event replaces itself
          touched.add(chart);
        }
        touched.forEach((chart) => chart.redraw());
      } else if (event.type === "run_finished" || event.type === "run_failed") {
        status.textContent = event.status || "failed";
        status.className = "status " + (event.status || "failed");
      }
    });
  }

  function follow(id, after, onEvent) {
    const live = document.getElementById("live");
    const source = new EventSource(withToken(`/api/runs/${encodeURIComponent(id)}/events?after=${encodeURIComponent(after)}`));
    const types = ["run_queued", "run_started", "epoch_end", "checkpoint_saved", "early_stopped", "learning_rate_changed", "run_finished", "run_failed"];
    window.fitstreamReceived = [];  // [stream id, event type, epoch]: what arrived, in order (tests read it)
    for (const type of types) source.addEventListener(type, (message) => {
      const event = JSON.parse(message.data);
      window.fitstreamReceived.push([message.lastEventId, event.type, event.epoch === undefined ? null : event.epoch]);
      onEvent(event);
    });
    source.onopen = () => { live.textContent = "● live"; live.className = "on"; };
    source.onerror = () => { live.textContent = "○ reconnecting"; live.className = "off"; };
    window.fitstreamSource = source;
  }

  async function comparePage() {
    const refs = (context.runs || "").split(",").filter(Boolean);
    const compared = await (await api("/api/compare?runs=" + encodeURIComponent(refs.join(",")))).json();
    const metricsByRun = {};
    await Promise.all(compared.runs.map(async (r) => { metricsByRun[r.run_id] = await (await api(`/api/runs/${r.run_id}/metrics`)).json(); }));
    const charts = el("div", { id: "charts" });
    main.replaceChildren(el("h1", {}, `Compare ${compared.runs.length} runs`),
      table(["run", "name", "status", "epochs", "best", ...compared.differing],
        compared.runs.map((r) => [el("a", { href: withToken("/runs/" + r.run_id) }, r.run_id.slice(0, 8)), r.name, r.status, r.epochs,
          `${r.metric || ""}${arrow(r.mode)} ${fmt(r.best_value)}${r.best ? " ★" : ""}`, ...compared.differing.map((k) => fmt(r.params[k]))]),
        { id: "compare-table" }), charts);
    for (const [fam, series] of seriesByFamily(metricsByRun, compared.runs)) new Chart(charts, fam, series, [], "epoch");
  }

  async function modelsPage() {
    const models = await (await api("/api/models")).json();
    main.replaceChildren(el("h1", {}, "Models"), table(["name", "version", "aliases", "run", "epoch", "metric", "value", "data fingerprint", "created"],
      models.map((m) => [m.name, m.version, (m.aliases || []).join(", "), el("a", { href: withToken("/runs/" + m.run_id) }, (m.run_id || "").slice(0, 8)),
        m.epoch, m.metric, fmt(m.value), (m.data_fingerprint || "").slice(0, 12), (m.created_at || "").replace("T", " ").slice(0, 19)]), { id: "models-table" }));
  }

  const pages = { runs: runsPage, run: runPage, compare: comparePage, models: modelsPage };
  pages[context.page]().then(() => { document.body.dataset.ready = "1"; }).catch((error) => {
    main.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
    document.body.dataset.ready = "error";
  });
})();
