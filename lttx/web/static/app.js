// The LTtx status page: polls /status.json, /connections.json, /history.json and
// /healthz every two seconds and redraws.  No library, no network but this daemon.
"use strict";

const PERIOD_MS = 2000;
const WINDOW_S = 15 * 60;
const LABELS = { rate: "messages/s", messages: "messages", subscribers: "subscribers",
                 conflating: "conflating" };
let samples = [];

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function show(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") {
    return Number.isInteger(value) ? value.toLocaleString("en")
                                   : value.toLocaleString("en", { maximumFractionDigits: 1 });
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function bytes(n) {
  if (typeof n !== "number") return show(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function duration(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) { window.location.assign("/login"); throw new Error("401"); }
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function fillTable(table, columns, rows) {
  table.replaceChildren();
  const head = el("tr");
  for (const c of columns) {
    head.appendChild(el("th", { scope: "col", class: c.text ? "text" : "" }, c.label));
  }
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  if (!rows.length) {
    body.appendChild(el("tr")).appendChild(el("td", { colspan: columns.length, class: "empty" },
                                              "none"));
    return;
  }
  for (const row of rows) {
    const tr = body.appendChild(el("tr"));
    for (const c of columns) {
      tr.appendChild(el("td", { "data-key": c.key, class: c.text ? "text" : "" }, c.show(row)));
    }
  }
}

function tiles(report) {
  const ch = report.channels || {};
  const rate = Object.values(ch.channels || {}).reduce((sum, c) => sum + (c.rate || 0), 0);
  const journal = report.journal;
  const items = [
    ["connections", show(report.connections)],
    ["variables", show(report.variables)],
    ["channels", show(Object.keys(ch.channels || {}).length)],
    ["messages/s", show(rate)],
    ["subscribers", show(ch.subscribers)],
  ];
  if (report.files) items.push(["files", show(report.files.files)]);
  if (journal) items.push(["journal", journal.writable ? "writable" : "NOT WRITABLE",
                           !journal.writable]);
  if (report.engine) items.push(["redis", show(report.engine.role)]);
  const box = document.getElementById("tiles");
  box.replaceChildren();
  for (const [label, value, bad] of items) {
    const tile = box.appendChild(el("div", { class: bad ? "tile bad" : "tile" }));
    tile.appendChild(el("div", { class: "value" }, value));
    tile.appendChild(el("div", { class: "label" }, label));
  }
}

function channels(report) {
  const ch = report.channels || {};
  const rows = Object.entries(ch.channels || {}).map(([name, figures]) => ({ name, ...figures }));
  const keys = [];
  for (const row of rows) for (const k of Object.keys(row)) {
    if (k !== "name" && !keys.includes(k)) keys.push(k);
  }
  const columns = [{ label: "channel", key: "name", show: r => r.name }].concat(
    keys.map(k => ({ label: LABELS[k] || k.replace(/_/g, " "), key: k, show: r => show(r[k]) })));
  fillTable(document.getElementById("channels"), columns, rows);
  const totals = Object.entries(ch).filter(([k, v]) => typeof v !== "object")
    .map(([k, v]) => k.replace(/_/g, " ") + " " + show(v));
  document.getElementById("channel-totals").textContent = totals.join(" · ");
}

function connections(doc) {
  const now = Date.now() / 1000;
  fillTable(document.getElementById("connections"), [
    { label: "peer", key: "peer", show: r => r.peer },
    { label: "token", key: "token", show: r => show(r.token), text: true },
    { label: "kind", key: "kind", show: r => r.kind, text: true },
    { label: "connected for", key: "since",
      show: r => r.since ? duration(now - r.since) : "–" },
    { label: "in", key: "bytes_in", show: r => bytes(r.bytes_in) },
    { label: "out", key: "bytes_out", show: r => bytes(r.bytes_out) },
    { label: "subscriptions", key: "subscriptions", show: r => show(r.subscriptions) },
    { label: "transfer", key: "transfer", text: true, show: r => r.transfer
      ? r.transfer.kind + " " + r.transfer.name + " " +
        (r.transfer.size ? Math.floor(100 * r.transfer.done / r.transfer.size) : 100) + "%"
      : "" },
  ], doc.connections);
}

// The engine's view (--engine redis): each daemon on the Redis, its addresses and
// when it was last heard from; how far each Redis replica is behind the master.
const ENGINE_TABLES = ["daemons", "replication"];

function engineView(report) {
  const engine = report.engine;
  const box = document.getElementById("engine-view");
  box.hidden = !(engine && engine.daemons);
  if (box.hidden) return;
  const rows = Object.entries(engine.daemons).map(([id, d]) => ({ id, ...d }));
  fillTable(document.getElementById("daemons"), [
    { label: "daemon", key: "id", text: true,
      show: r => r.id + (r.id === engine.id ? " (this one)" : "") },
    { label: "host", key: "host", text: true, show: r => show(r.host) },
    { label: "pid", key: "pid", show: r => show(r.pid) },
    { label: "listening", key: "listening", text: true,
      show: r => (r.listening || []).join(" ") || "–" },
    { label: "files folder", key: "files_id", text: true, show: r => show(r.files_id) },
    { label: "last seen", key: "seen_ago",
      show: r => typeof r.seen_ago === "number" ? r.seen_ago.toFixed(1) + " s ago" : "–" },
  ], rows);
  const repl = engine.replication;
  document.getElementById("replication").textContent = !repl ? "not known (Redis disconnected)"
    : repl.role === "master" ? "master offset " + show(repl.offset)
    : "connected to a " + repl.role + " of " + show(repl.master) + ", link " + show(repl.link);
  fillTable(document.getElementById("replicas"), [
    { label: "replica", key: "address", text: true, show: r => r.address },
    { label: "state", key: "state", text: true, show: r => r.state },
    { label: "offset", key: "offset", show: r => show(r.offset) },
    { label: "behind", key: "lag_bytes", show: r => bytes(r.lag_bytes) },
    { label: "last ack", key: "lag_s", show: r => show(r.lag_s) + " s" },
  ], (repl && repl.replicas) || []);
}

function parts(report) {
  const box = document.getElementById("parts");
  box.replaceChildren();
  for (const [name, figures] of Object.entries(report)) {
    if (name === "channels" || !figures || typeof figures !== "object") continue;
    const part = box.appendChild(el("section", { class: "part", id: "part-" + name }));
    part.appendChild(el("h2", {}, name));
    const dl = part.appendChild(el("dl"));
    for (const [k, v] of Object.entries(figures)) {
      if (name === "engine" && ENGINE_TABLES.includes(k)) continue;  // engineView shows them
      dl.appendChild(el("dt", {}, k.replace(/_/g, " ")));
      dl.appendChild(el("dd", {}, /bytes$/.test(k) ? bytes(v) : show(v)));
    }
  }
}

function niceCeil(x) {
  const power = Math.pow(10, Math.floor(Math.log10(x)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= x) return step * power;
  return 10 * power;
}

function chart(id, series) {
  const box = document.getElementById(id);
  const W = 600, H = 180, top = 14, bottom = 16;
  box.replaceChildren();
  // The last 15 minutes, or since the first sample if the daemon is younger.
  const end = samples.length ? samples[samples.length - 1][0] : Date.now() / 1000;
  const first = samples.length ? samples[0][0] : end;
  const span = Math.min(WINDOW_S, Math.max(60, end - first));
  const start = end - span;
  let max = 1;
  for (const s of samples) for (const { column } of series) max = Math.max(max, s[column]);
  max = niceCeil(max * 1.05);
  for (const f of [0, 0.5, 1]) {
    const y = top + (H - top - bottom) * (1 - f);
    box.appendChild(svg("line", { class: "grid", x1: 0, x2: W, y1: y, y2: y }));
    const label = box.appendChild(svg("text", { x: 4, y: y - 3 }));
    label.textContent = show(max * f);
  }
  const axis = box.appendChild(svg("text", { x: W - 4, y: H - 3, "text-anchor": "end" }));
  axis.textContent = "now";
  const axis0 = box.appendChild(svg("text", { x: 40, y: H - 3 }));
  axis0.textContent = "−" + Math.round(span / 60) + " min";
  for (const { column, cls } of series) {
    const points = samples.filter(s => s[0] >= start).map(s => {
      const x = (s[0] - start) / span * W;
      const y = top + (H - top - bottom) * (1 - s[column] / max);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    box.appendChild(svg("polyline", { class: "line " + cls, points: points.join(" ") }));
  }
}

async function health() {
  const badge = document.getElementById("live");
  try {
    const response = await fetch("/healthz", { cache: "no-store" });
    const text = (await response.text()).trim();
    badge.textContent = response.ok ? "healthy" : text;
    badge.className = response.ok ? "badge ok" : "badge bad";
  } catch (e) {
    badge.textContent = "daemon unreachable";
    badge.className = "badge bad";
  }
}

async function refresh() {
  try {
    const since = samples.length ? samples[samples.length - 1][0] : 0;
    const [report, conns, history] = await Promise.all([
      getJson("/status.json"), getJson("/connections.json"),
      getJson("/history.json?since=" + since)]);
    samples = samples.concat(history.samples).slice(-WINDOW_S * 2);
    document.getElementById("version").textContent = "version " + report.version;
    document.getElementById("uptime").textContent = "up " + duration(report.uptime);
    tiles(report);
    channels(report);
    connections(conns);
    engineView(report);
    parts(report);
    chart("chart-rates", [{ column: 1, cls: "published" }, { column: 2, cls: "delivered" }]);
    chart("chart-connections", [{ column: 3, cls: "connections" }]);
    document.body.setAttribute("data-updated", String(Date.now()));
  } catch (e) {
    console.error(e);
  }
  await health();
}

refresh();
setInterval(refresh, PERIOD_MS);
