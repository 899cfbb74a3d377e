// corral's dashboard page: polls /api/status about once a second and draws what it says.
// Every key of the status may be missing (an older broker says less): each panel shows what
// it is given.  Text from the status (names, tracebacks) is set as text, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const STREAM_SPAN = 60;  // the most seconds of tasks the task stream shows (the least: 10)
const COUNTS = [["queued", "queued"], ["running", "running"], ["waiting", "waiting"], ["done", "done"],
                ["failed", "failed"], ["connected", "workers"], ["departed", "departed"],
                ["unschedulable", "unschedulable"]];

function $(id) { return document.getElementById(id); }

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function label(parent, attrs, words) {  // an SVG text node with words, added to parent
  const node = svg("text", attrs);
  node.textContent = words;
  parent.append(node);
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function secs(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}

function bar(fractions) {  // [[class, 0..1], ...] stacked from the left
  const b = el("span", {class: "bar"});
  let left = 0;
  for (const [cls, f] of fractions) {
    const part = el("span", {class: cls});
    part.style.left = (100 * left) + "%";
    part.style.width = (100 * Math.max(0, Math.min(1, f))) + "%";
    left += f;
    b.append(part);
  }
  return b;
}

function renderCounts(status, history) {
  const counts = status.counts || {};
  const box = $("counts");
  box.replaceChildren();
  for (const [key, label] of COUNTS) {
    if (counts[key] === undefined || counts[key] === null) continue;
    if ((key === "waiting" || key === "unschedulable" || key === "departed") && !counts[key]) continue;
    box.append(el("div", {class: "tile " + key, id: "count-" + key},
      el("div", {class: "label"}, label), el("div", {class: "value"}, counts[key])));
  }
  const last = history.length ? history[history.length - 1] : null;
  const rate = status.rate && status.rate.done_per_s !== undefined ? status.rate.done_per_s
             : last && last.done_per_s !== undefined ? last.done_per_s : null;
  if (rate !== null) {
    box.append(el("div", {class: "tile rate", id: "count-rate"},
      el("div", {class: "label"}, "done / s"), el("div", {class: "value"}, rate.toFixed(1))));
  }
}

function renderMaps(maps) {
  const panel = $("maps-panel");
  panel.hidden = !maps || !maps.length;
  if (panel.hidden) return;
  const box = $("maps");
  box.replaceChildren();
  for (const m of maps.slice().reverse()) {
    const total = m.total ?? m.submitted;
    const ended = m.done + m.failed + (m.cancelled || 0);
    const pct = total ? Math.floor(100 * ended / total) : 0;
    const words = `${ended} / ${m.total ?? "?"} (${pct}%)` + (m.failed ? `, ${m.failed} failed` : "")
      + (m.cancelled ? `, ${m.cancelled} cancelled` : "") + (m.finished ? `, ${secs(m.finished - m.started)}` : "");
    box.append(el("div", {class: "map", "data-map": m.id},
      el("span", {class: "name", title: m.name}, `#${m.id} ${m.name}`),
      bar([["done", total ? m.done / total : 0], ["failed", total ? m.failed / total : 0]]),
      el("span", {class: "progress"}, words)));
  }
}

function line(chart, points, cls, x, y) {
  if (points.length < 2) return;
  chart.append(svg("polyline", {class: cls, points: points.map(([t, v]) => `${x(t)},${y(v)}`).join(" ")}));
}

function renderChart(id, history, series) {
  const chart = $(id);
  chart.replaceChildren();
  const W = 600, H = 160, pad = 18;
  const rows = history.filter(r => series.some(([key]) => typeof r[key] === "number"));
  if (rows.length < 2) {
    label(chart, {x: 10, y: 20}, "waiting for data");
    return;
  }
  const t0 = rows[0].t, t1 = rows[rows.length - 1].t;
  let top = 1;
  for (const r of rows) for (const [key] of series) if (typeof r[key] === "number") top = Math.max(top, r[key]);
  const x = t => ((t - t0) / Math.max(1e-9, t1 - t0)) * W;
  const y = v => H - pad - (v / top) * (H - 2 * pad);
  chart.append(svg("line", {class: "axis", x1: 0, x2: W, y1: y(0), y2: y(0)}));
  label(chart, {x: 4, y: 12}, top.toFixed(top < 10 ? 1 : 0));
  label(chart, {x: 4, y: H - 4}, "-" + secs(t1 - t0));
  for (const [key, cls] of series) {
    line(chart, rows.filter(r => typeof r[key] === "number").map(r => [r.t, r[key]]), cls, x, y);
  }
}

function renderWorkers(workers) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  const here = workers.filter(w => w.state !== "gone");
  $("workers-count").textContent = `(${here.length} connected` +
    (workers.length > here.length ? `, ${workers.length - here.length} gone)` : ")");
  for (const w of workers) {
    const state = w.state || (w.left ? "gone" : "idle");
    const running = (w.running || []).map(r => (r.task === null || r.task === undefined ? "other client's" :
      "task " + r.task) + (r.for_s !== undefined ? " for " + secs(r.for_s) : "")).join(", ");
    const share = typeof w.busy_share === "number" ? w.busy_share : null;
    body.append(el("tr", {class: state, "data-worker": w.worker},
      el("td", {}, w.worker ?? "(starting)"), el("td", {}, w.host ?? ""), el("td", {class: "num"}, w.pid ?? ""),
      el("td", {}, el("span", {class: "badge " + state}, state)), el("td", {}, running),
      el("td", {class: "num"}, w.tasks ?? ""),
      el("td", {}, share === null ? (w.busy_s !== undefined ? secs(w.busy_s) : "") :
        el("span", {}, bar([["busy", share]]), " " + Math.round(100 * share) + "%")),
      el("td", {class: "num"}, bytes(w.rss)), el("td", {class: "num"}, w.errors ?? ""),
      el("td", {}, (w.queues || []).join(", ")), el("td", {}, w.left ?? "")));
  }
}

function renderStream(events, now) {
  const chart = $("stream");
  chart.replaceChildren();
  const recent = (events || []).filter(e => e.finished && now - e.finished < STREAM_SPAN);
  $("stream-empty").hidden = recent.length > 0;
  chart.style.display = recent.length ? "" : "none";
  if (!recent.length) return;
  const names = [...new Set(recent.map(e => e.worker ?? "?"))].sort();
  const rowH = 16, W = 1000, left = 130, H = names.length * rowH + 4;
  const oldest = Math.min(...recent.map(e => e.started ?? e.finished));
  const span = Math.max(10, Math.min(STREAM_SPAN, now - oldest));
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  $("stream-span").textContent = `(the last ${Math.round(span)} s; one row per worker)`;
  chart.style.height = H + "px";
  const x = t => left + Math.max(0, (t - (now - span)) / span) * (W - left);
  names.forEach((n, i) => label(chart, {x: 2, y: i * rowH + 13}, n));
  for (const e of recent) {
    const row = names.indexOf(e.worker ?? "?");
    const start = e.started ?? e.finished;
    const r = svg("rect", {class: e.state || "done", x: x(start), y: row * rowH + 3, height: rowH - 4,
                            width: Math.max(1.5, x(e.finished) - x(start))});
    r.append(svg("title")); r.firstChild.textContent = `task ${e.task}: ${e.state}, ${secs(e.finished - start)}`;
    chart.append(r);
  }
}

function renderFailures(events) {
  const failed = (events || []).filter(e => e.state && e.state !== "done");
  $("failures-count").textContent = failed.length ? `(${failed.length} recent)` : "";
  const box = $("failures");
  const shown = failed.slice(-20).reverse();
  const key = shown.map(e => e.task + e.state).join();
  if (box.dataset.key === key) return;  // unchanged: keep what the user opened
  box.dataset.key = key;
  box.replaceChildren();
  if (!shown.length) { box.append(el("p", {class: "muted"}, "None.")); return; }
  for (const e of shown) {
    const first = (e.error || "").trim().split("\n").pop() || e.state;
    box.append(el("details", {class: "failure", "data-task": e.task},
      el("summary", {}, `task ${e.task} ${e.state}` + (e.worker ? ` on ${e.worker}` : "") + `: ${first}`),
      el("pre", {}, e.error || "(no traceback)")));
  }
}

function renderTable(panelId, tableId, rows) {
  $(panelId).hidden = !rows.length;
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const cells of rows) body.append(el("tr", {}, ...cells.map((c, i) => el("td", i ? {class: "num"} : {}, c))));
}

function renderExtra(status) {
  const box = $("extra");
  box.replaceChildren();
  const add = (k, v) => box.append(el("dt", {}, k), el("dd", {}, v));
  const l = status.launches;
  if (l) {
    add("launched", `${l.launched ?? ""} (${l.in_flight ?? 0} in flight, ${l.pending ?? 0} pending)`);
    add("launch failures", l.launch_failures ?? 0);
    add("retired idle", l.retired ?? 0);
  }
  const o = status.objects;
  if (o && o.stored) add("objects stored", `${o.stored} (${bytes(o.bytes)}; ${bytes(o.sent_bytes)} sent)`);
  $("extra-panel").hidden = !box.childNodes.length;
}

function render(data) {
  const status = data.status || {};
  const history = data.history || [];
  $("address").textContent = status.address || "";
  $("updated").textContent = status.time ? "as of " + new Date(status.time * 1000).toLocaleTimeString() : "";
  $("error").hidden = !data.error;
  $("error").textContent = data.error ? "The broker did not answer: " + data.error : "";
  renderCounts(status, history);
  renderMaps(status.maps);
  renderChart("throughput", history, [["done_per_s", "done"], ["failed_per_s", "failed"]]);
  renderChart("inflight", history, [["running", "running"], ["queued", "queued"]]);
  renderWorkers(status.workers || []);
  renderStream(status.events, status.time || data.now);
  renderFailures(status.events);
  renderTable("queues-panel", "queues", Object.entries(status.queues || {}).map(([name, q]) =>
    [name, q.queued ?? "", Object.entries(q.priorities || {}).map(([p, n]) => `${p}: ${n}`).join(", ")]));
  renderTable("clients-panel", "clients", (status.clients || []).map(c =>
    [c.client, c.submitted ?? "", c.done ?? "", c.failed ?? "", c.queued ?? "", c.running ?? ""]));
  renderExtra(status);
}

function setConnection(ok, text) {
  const badge = $("connection");
  badge.className = "badge " + (ok ? "ok" : "down");
  badge.textContent = text;
}

async function poll() {
  let period = 1.0;
  try {
    const reply = await fetch("/api/status", {cache: "no-store"});
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const data = await reply.json();
    period = data.period || period;
    render(data);
    setConnection(!data.error, data.error ? "broker not answering" : "live");
  } catch (err) {
    console.error(err);
    setConnection(false, "dashboard not answering");
  }
  setTimeout(poll, period * 1000);
}

document.addEventListener("DOMContentLoaded", poll);
