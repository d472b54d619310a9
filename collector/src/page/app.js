// The live page: reads /api/v1/* every second and redraws. No framework,
// no third-party code. Charts are SVG; every drawn value also sits in a
// data-* attribute, so what is drawn can be checked against the API.
"use strict";

const REFRESH_MS = 1000;
const PAGE_SIZE = 50;
const QUANTILES = ["0.5", "0.9", "0.99", "0.999"];
const QUANTILE_COLORS = { "0.5": "#2f6fdf", "0.9": "#1b7f3b", "0.99": "#d97706", "0.999": "#b3261e" };
const SVG = "http://www.w3.org/2000/svg";

// A token given as #token=... goes to the API as a bearer token.
const token = new URLSearchParams(location.hash.slice(1)).get("token");

const state = { search: "", offset: 0, selected: null, lastHealth: null, busy: false, chartGeneration: 0 };

// Smallest and largest finite values (a loop: spreading tens of thousands of
// arguments into Math.min throws in some engines). null when none.
function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (typeof v === "number" && Number.isFinite(v)) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo === Infinity ? null : [lo, hi];
}

async function api(path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch("api/v1/" + path + query, { headers, cache: "no-store" });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error || response.status + " " + response.statusText);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function ago(seconds) {
  if (seconds < 1) return "now";
  if (seconds < 120) return seconds + " s ago";
  if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function labelText(labels) {
  return Object.entries(labels).map(([k, v]) => k + '="' + v + '"').join(", ");
}

// ---- fleet ----------------------------------------------------------------

function drawFleet(data) {
  const body = document.querySelector("#instances tbody");
  body.replaceChildren();
  for (const i of data.instances) {
    const rest = Object.fromEntries(Object.entries(i.labels).filter(([k]) => k !== "service"));
    const row = el("tr", { "data-instance": i.id, "data-silent": String(i.silent), class: i.silent ? "silent" : "" },
      el("td", {}, i.service || "–"),
      el("td", {}, i.id),
      el("td", { class: "muted" }, labelText(rest)),
      el("td", {}, ago(i.seconds_since_seen)),
      el("td", { class: "num" }, i.batches_per_sec.toFixed(2)),
      el("td", { class: "num" }, i.series),
      el("td", { class: i.silent ? "state-silent" : "state-ok" }, i.silent ? "silent" : "reporting"));
    body.append(row);
  }
  const silent = data.instances.filter((i) => i.silent).length;
  document.getElementById("fleet-summary").textContent =
    data.services.length + " services, " + data.instances.length + " instances" + (silent ? ", " + silent + " silent" : "");
  document.getElementById("empty").hidden = data.instances.length > 0;
}

// ---- health ---------------------------------------------------------------

function drawHealth(h) {
  const prev = state.lastHealth;
  const now = performance.now();
  let batchRate = null;
  let valueRate = null;
  if (prev) {
    const dt = (now - prev.at) / 1000;
    batchRate = (h.ingest.batches_received - prev.h.ingest.batches_received) / dt;
    valueRate = (h.ingest.values_received - prev.h.ingest.values_received) / dt;
  }
  state.lastHealth = { at: now, h };
  const balance = h.conservation.values.balance;
  const figures = [
    ["batches/s in", batchRate === null ? "–" : batchRate.toFixed(1)],
    ["values/s in", valueRate === null ? "–" : fmt(Math.round(valueRate))],
    ["series", h.series],
    ["instances", h.instances],
    ["ingest queue", h.queue.depth + " (peak " + h.queue.peak + ")"],
    ["conservation balance", balance, balance !== 0],
  ];
  const dl = document.getElementById("health-figures");
  dl.replaceChildren(...figures.map(([name, value, bad]) =>
    el("div", { "data-figure": name }, el("dt", {}, name), el("dd", { class: bad ? "bad" : "" }, value))));

  const rejections = document.querySelector("#rejections tbody");
  const rows = Object.entries(h.rejections).filter(([, r]) => r.batches || r.series_updates || r.values);
  rejections.replaceChildren(...(rows.length ? rows.map(([reason, r]) =>
    el("tr", { "data-reason": reason }, el("td", {}, reason), el("td", { class: "num" }, r.batches),
      el("td", { class: "num" }, r.series_updates), el("td", { class: "num" }, r.values)))
    : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "nothing rejected"))]));

  const targets = document.querySelector("#remote-write tbody");
  targets.replaceChildren(...(h.remote_write.length ? h.remote_write.map((t) =>
    el("tr", {}, el("td", {}, t.url), el("td", { class: "num" }, t.samples_sent + t.histograms_sent),
      el("td", { class: "num" }, t.requests_failed), el("td", { class: "num" }, t.samples_dropped),
      el("td", { class: "num" }, t.queue_len)))
    : [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no remote-write target configured"))]));
}

// ---- series browser -------------------------------------------------------

function searchParams() {
  const params = { offset: state.offset, limit: PAGE_SIZE };
  if (state.search) params.match = state.search;
  return params;
}

function drawSeriesList(page) {
  if (page.total > 0 && page.offset >= page.total) {
    // The list shrank under the current page: go to its last page.
    state.offset = Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE;
  }
  const list = document.getElementById("series-list");
  list.replaceChildren(...page.series.map((s) => {
    const item = el("li", { "data-series": s.series, class: state.selected && state.selected.series === s.series ? "selected" : "" },
      el("span", { class: "kind" }, s.kind), s.series);
    item.addEventListener("click", () => select(s));
    return item;
  }));
  const last = Math.min(page.offset + page.series.length, page.total);
  document.getElementById("series-count").textContent =
    page.total ? (page.offset + 1) + "–" + last + " of " + page.total : "no series match";
  document.getElementById("prev").disabled = page.offset === 0;
  document.getElementById("next").disabled = last >= page.total;
}

function select(series) {
  state.selected = series;
  for (const li of document.querySelectorAll("#series-list li")) {
    li.classList.toggle("selected", li.dataset.series === series.series);
  }
  refreshChart().catch(showError);
}

// ---- charts ---------------------------------------------------------------

const W = 760;
const H = 240;
const PAD = { left: 64, right: 12, top: 10, bottom: 24 };

function scaleX(points, step) {
  const t0 = points[0].start;
  const t1 = points[points.length - 1].end;
  const span = Math.max(t1 - t0, step);
  return (t) => PAD.left + ((t - t0) / span) * (W - PAD.left - PAD.right);
}

function scaleY(lo, hi) {
  if (hi === lo) { hi = lo + 1; lo = lo - (lo === 0 ? 0 : 1); }
  return (v) => H - PAD.bottom - ((v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
}

function frame(title, lo, hi, points) {
  const root = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
  const y = scaleY(lo, hi);
  for (const v of [lo, (lo + hi) / 2, hi]) {
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), stroke: "#eef0f4" }));
    const t = svg("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" });
    t.textContent = fmt(v);
    root.append(t);
  }
  const first = new Date(points[0].start * 1000).toLocaleTimeString();
  const last = new Date(points[points.length - 1].end * 1000).toLocaleTimeString();
  const a = svg("text", { x: PAD.left, y: H - 6 });
  a.textContent = first;
  const b = svg("text", { x: W - PAD.right, y: H - 6, "text-anchor": "end" });
  b.textContent = last;
  root.append(a, b);
  return { root, y };
}

// Intervals with no point between the first and the last: shaded, and the
// lines break there. No data is never drawn as zero.
function drawGaps(root, points, step, x) {
  for (let k = 1; k < points.length; k++) {
    if (points[k].start > points[k - 1].end) {
      const gap = svg("rect", { class: "gap", x: x(points[k - 1].end), y: PAD.top, width: x(points[k].start) - x(points[k - 1].end),
        height: H - PAD.top - PAD.bottom, "data-gap-start": points[k - 1].end, "data-gap-end": points[k].start });
      const title = svg("title");
      title.textContent = "no data";
      gap.append(title);
      root.append(gap);
    }
  }
}

function line(root, points, value, x, y, attrs) {
  let d = "";
  let prevEnd = null;
  for (const p of points) {
    const v = value(p);
    if (v === null || v === undefined) { prevEnd = null; continue; }
    const px = x((p.start + p.end) / 2);
    d += (prevEnd === p.start ? "L" : "M") + px.toFixed(1) + " " + y(v).toFixed(1);
    prevEnd = p.end;
    root.append(svg("circle", Object.assign({ cx: px, cy: y(v), r: 2, fill: attrs.stroke, "data-start": p.start, "data-value": v }, attrs.dot || {})));
  }
  root.append(svg("path", Object.assign({ d, fill: "none", "stroke-width": 1.6 }, attrs.path)));
}

function legend(root, entries) {
  let x = PAD.left + 4;
  for (const [text, color] of entries) {
    root.append(svg("rect", { x, y: PAD.top + 2, width: 10, height: 10, fill: color }));
    const t = svg("text", { x: x + 14, y: PAD.top + 11 });
    t.textContent = text;
    root.append(t);
    x += 24 + text.length * 6;
  }
}

function drawScalar(series, step, kind) {
  const points = series.points;
  const value = kind === "counter" ? (p) => p.value / step : (p) => p.value;
  const range = extent(points.map(value));
  if (!range) return null;
  const lo = kind === "counter" ? Math.min(0, range[0]) : range[0];
  const { root, y } = frame(series.series, lo, range[1], points);
  const x = scaleX(points, step);
  drawGaps(root, points, step, x);
  line(root, points, value, x, y, { stroke: "#2f6fdf", path: { stroke: "#2f6fdf", class: "series-line" } });
  legend(root, [[kind === "counter" ? "rate /s" : "value (" + series.rule + " over instances)", "#2f6fdf"]]);
  return root;
}

function drawQuantiles(series, step) {
  const points = series.points.filter((p) => p.count > 0);
  const values = [];
  for (const p of points) for (const q of QUANTILES) values.push(p.quantiles[q]);
  const range = extent(values);
  if (!range) return null;
  const { root, y } = frame(series.series, Math.min(0, range[0]), range[1], points);
  const x = scaleX(points, step);
  drawGaps(root, points, step, x);
  for (const q of QUANTILES) {
    const color = QUANTILE_COLORS[q];
    line(root, points, (p) => p.quantiles[q], x, y,
      { stroke: color, path: { stroke: color, class: "quantile-line", "data-quantile": q }, dot: { "data-quantile": q } });
  }
  legend(root, QUANTILES.map((q) => ["p" + (parseFloat(q) * 100), QUANTILE_COLORS[q]]));
  return root;
}

// Every merged bucket of every interval: a column per interval, a cell per
// bucket, darker for more samples. The sketch's buckets are exact counts.
function drawHeatmap(series, step) {
  const points = series.points.filter((p) => p.count > 0 && p.buckets && p.buckets.length);
  const bounds = [];
  for (const p of points) for (const [lo, hi] of p.buckets) bounds.push(lo, hi);
  const all = extent(bounds);
  if (!all) return null;
  const positive = extent(bounds.filter((b) => b > 0));
  const logScale = all[0] >= 0 && positive !== null;
  const floor = logScale ? positive[0] : all[0];
  const ceil = all[1];
  const t = (v) => (logScale ? Math.log(Math.max(v, floor)) : v);
  const { root } = frame(series.series + " buckets", 0, 1, points);
  root.querySelectorAll("text").forEach((n, i) => { if (i < 3) n.remove(); });
  const yOf = (v) => H - PAD.bottom - ((t(v) - t(floor)) / ((t(ceil) - t(floor)) || 1)) * (H - PAD.top - PAD.bottom);
  const x = scaleX(points, step);
  let max = 1;
  for (const p of points) for (const b of p.buckets) if (b[2] > max) max = b[2];
  for (const p of points) {
    for (const [lo, hi, n] of p.buckets) {
      const top = yOf(hi);
      const cell = svg("rect", { class: "bucket", x: x(p.start), y: top, width: Math.max(1, x(p.end) - x(p.start) - 1),
        height: Math.max(1, yOf(lo) - top), fill: "#b3261e", "fill-opacity": (0.12 + 0.88 * Math.log1p(n) / Math.log1p(max)).toFixed(3),
        "data-start": p.start, "data-lower": lo, "data-upper": hi, "data-count": n });
      const title = svg("title");
      title.textContent = "(" + fmt(lo) + ", " + fmt(hi) + "]: " + n;
      cell.append(title);
      root.append(cell);
    }
  }
  for (const v of [floor, ceil]) {
    const label = svg("text", { x: PAD.left - 6, y: yOf(v) + 4, "text-anchor": "end" });
    label.textContent = fmt(v);
    root.append(label);
  }
  return root;
}

async function refreshChart() {
  const s = state.selected;
  if (!s) return;
  const generation = ++state.chartGeneration;
  const params = { name: s.name, series: s.series, buckets: "true", quantiles: QUANTILES.join(","), limit: 1 };
  const data = await api("query", params);
  if (generation !== state.chartGeneration) return; // a newer selection drew already
  const series = data.series.find((x) => x.series === s.series);
  const chart = document.getElementById("chart");
  const heatmap = document.getElementById("heatmap");
  document.getElementById("chart-title").textContent = s.series;
  if (!series || series.points.length === 0) {
    document.getElementById("chart-note").textContent = "no points retained for this series yet";
    chart.replaceChildren();
    heatmap.replaceChildren();
    return;
  }
  const note = series.kind === "counter" ? "increase per second in each " + data.step_secs + " s interval"
    : series.kind === "gauge" ? "rolled up by " + series.rule + " over live instances, as each interval closed"
      : "quantiles of each " + data.step_secs + " s interval, and its merged buckets";
  document.getElementById("chart-note").textContent = note;
  chart.dataset.series = series.series;
  chart.dataset.kind = series.kind;
  const drawn = series.kind === "histogram"
    ? [drawQuantiles(series, data.step_secs), drawHeatmap(series, data.step_secs)]
    : [drawScalar(series, data.step_secs, series.kind), null];
  if (!drawn[0]) {
    document.getElementById("chart-note").textContent = "no finite values in the retained intervals";
  }
  chart.replaceChildren(...(drawn[0] ? [drawn[0]] : []));
  heatmap.replaceChildren(...(drawn[1] ? [drawn[1]] : []));
}

// ---- refresh loop ---------------------------------------------------------

function showError(e) {
  const status = document.getElementById("status");
  status.textContent = "refresh failed: " + e.message;
  status.dataset.error = "true";
}

async function refresh() {
  if (state.busy) {
    // A search or page change while a refresh is in flight: run again
    // right after it, so the new list is never a second late.
    state.again = true;
    return;
  }
  state.busy = true;
  state.again = false;
  try {
    const [fleet, health, page] = await Promise.all([api("instances"), api("health"), api("series", searchParams())]);
    drawFleet(fleet);
    drawHealth(health);
    drawSeriesList(page);
    await refreshChart();
    const status = document.getElementById("status");
    status.textContent = "updated " + new Date().toLocaleTimeString() + " · every " + REFRESH_MS / 1000 + " s";
    status.dataset.error = "false";
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    showError(e);
  } finally {
    state.busy = false;
    if (state.again) refresh();
  }
}

let searchTimer = null;
document.getElementById("search").addEventListener("input", (e) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.search = e.target.value.trim(); state.offset = 0; refresh(); }, 200);
});
document.getElementById("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); refresh(); });
document.getElementById("next").addEventListener("click", () => { state.offset += PAGE_SIZE; refresh(); });
document.getElementById("grpc-hint").textContent = location.hostname + ":7171";

refresh();
setInterval(refresh, REFRESH_MS);
