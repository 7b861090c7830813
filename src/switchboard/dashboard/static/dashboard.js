// The Switchboard dashboard: renders each server-sent event of GET /admin/events (fleet snapshot + metrics).
// Plain DOM, no build step. Text from the server always goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const STATES = ["warm", "starting", "draining", "cold"];
const PHASE_COLORS = { spawn: "#8aa4d6", load: "#3b6fd8", warmup: "#e8a317", ready: "#1f9d55" };
const history = { at: null, totals: {}, rates: {}, spark: [] };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else if (k === "style") el.style.cssText = v;
    else if (k === "title") el.title = v;
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return `${(s / 60).toFixed(1)} min`;
}
function fmtUsd(x) {
  if (!x) return "$0";
  if (x < 0.01) return `$${x.toFixed(6)}`;
  if (x < 100) return `$${x.toFixed(4)}`;
  return `$${x.toFixed(2)}`;
}
function fmtInt(n) {
  n = n || 0;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}
function fmtRate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }
function ago(atS, nowS) {
  const d = Math.max(0, nowS - atS);
  if (d < 60) return `${d.toFixed(0)}s ago`;
  if (d < 3600) return `${(d / 60).toFixed(0)}m ago`;
  return `${(d / 3600).toFixed(1)}h ago`;
}

// Policy reasons state times as wall-clock epochs ("keep until 1795321157s"): say them relative to now.
function relTimes(text, nowS) {
  return String(text || "").replace(/\b(\d{10})(?:\.\d+)?s\b/g, (_, epoch) => {
    const d = Number(epoch) - nowS;
    return Math.abs(d) < 0.5 ? "now" : d > 0 ? `in ${d.toFixed(0)}s` : `${(-d).toFixed(0)}s ago`;
  });
}

// Requests per second per expert from successive totals, smoothed (EMA) so the numbers don't flicker.
function updateRates(ev) {
  const now = ev.at;
  const totals = {};
  for (const [id, e] of Object.entries(ev.metrics.experts)) {
    totals[id] = Object.values(e.requests).reduce((a, b) => a + b, 0);
  }
  if (history.at !== null && now > history.at) {
    const dt = now - history.at;
    let sum = 0;
    for (const [id, n] of Object.entries(totals)) {
      const raw = Math.max(0, (n - (history.totals[id] || 0)) / dt);
      const prev = history.rates[id];
      history.rates[id] = prev === undefined ? raw : 0.5 * prev + 0.5 * raw;
      sum += history.rates[id];
    }
    history.spark.push(sum);
    if (history.spark.length > 60) history.spark.shift();
  }
  history.at = now;
  history.totals = totals;
}

function renderKpis(ev) {
  const m = ev.metrics, t = m.totals, fleet = ev.fleet;
  const rate = history.spark.length ? history.spark[history.spark.length - 1] : 0;
  $("kpi-rate").textContent = fmtRate(rate);
  const max = Math.max(1e-9, ...history.spark);
  const offset = 60 - history.spark.length;  // the newest point sits at the right edge; the line grows leftwards
  const pts = history.spark.map((v, i) => `${((i + offset) * 120) / 59},${28 - (v / max) * 26 - 1}`).join(" ");
  document.querySelector("#spark polyline").setAttribute("points", pts);

  $("kpi-requests").textContent = fmtInt(t.requests);
  const o = t.by_outcome || {};
  const failed = (o.error || 0) + (o.timeout || 0);
  $("kpi-outcomes").textContent = `ok ${fmtInt(o.ok)} · failed ${fmtInt(failed)} · rejected ${fmtInt(o.rejected)} · invalid ${fmtInt(o.invalid)}`;
  const l = m.latency_s;
  $("kpi-latency").textContent = l.p50 === null ? "–" : `${fmtSeconds(l.p50)} · ${fmtSeconds(l.p95)} · ${fmtSeconds(l.p99)}`;
  $("kpi-ttft").textContent = m.ttft_s.p50 === null ? "TTFT: no streamed answers yet" : `TTFT p50 ${fmtSeconds(m.ttft_s.p50)} · p95 ${fmtSeconds(m.ttft_s.p95)}`;
  $("kpi-usd").textContent = fmtUsd(t.usd);
  $("kpi-tokens").textContent = `${fmtInt(t.tokens_in)} tokens in · ${fmtInt(t.tokens_out)} out`;

  let warm = 0, live = 0, queued = 0, running = 0;
  for (const e of fleet.experts) {
    queued += e.num_unplaced || 0;
    for (const r of e.replicas) {
      live += 1;
      if (r.state === "warm") warm += 1;
      queued += r.num_queued || 0;
      running += r.num_running || 0;
    }
  }
  $("kpi-replicas").textContent = `${warm} / ${live}`;
  $("kpi-queue").textContent = `${running} running · ${queued} queued`;
  $("kpi-cold").textContent = fmtInt(t.cold_starts);
  const last = ev.cold_starts[ev.cold_starts.length - 1];
  $("kpi-cold-last").textContent = last ? `last: ${last.expert} ${fmtSeconds(last.phases.ready_s)} (${ago(last.at, ev.at)})` : "none yet";
}

function replicaChip(r) {
  const ofBatch = (n) => (n ? ` (${n} of a batch)` : "");
  const busy = [r.num_running ? `${r.num_running} running${ofBatch(r.num_running_background)}` : "",
                r.num_queued ? `${r.num_queued} queued${ofBatch(r.num_queued_background)}` : ""].filter(Boolean).join(", ");
  const load = busy ? h("span", { class: "load", text: `· ${busy}` }) : null;
  return h("span", {
    class: "chip replica", "data-state": r.state, "data-expert": r.expert, "data-replica": r.replica_id,
    title: `${r.replica_id} on ${r.worker} (${r.hardware}${r.devices && r.devices.length ? ` devices ${r.devices.join(", ")}` : ""}): ${r.state}; served ${r.num_served || 0}, running ${r.num_running || 0}, queued ${r.num_queued || 0}`,
  }, r.replica_id, load);
}

function renderFleet(ev) {
  const byWorker = {};
  for (const e of ev.fleet.experts) for (const r of e.replicas) (byWorker[r.worker] ||= []).push(r);
  const kinds = {};
  for (const w of ev.fleet.workers) (kinds[w.hardware] ||= []).push(w);
  if (byWorker.upstream) kinds.remote = [{ worker_id: "upstream", hardware: "remote", memory_gb: 0, usd_per_hour: 0 }];
  const out = [];
  for (const kind of Object.keys(kinds).sort()) {
    const box = h("div", { class: "kind", "data-hardware": kind }, h("h3", { text: kind }));
    for (const w of kinds[kind]) {
      const reps = (byWorker[w.worker_id] || []).slice().sort((a, b) => STATES.indexOf(a.state) - STATES.indexOf(b.state));
      const used = w.memory_used_gb || 0;
      const head = h("div", { class: "head" }, h("b", { text: w.worker_id }),
        w.hardware === "remote" ? "external APIs" : `${used.toFixed(1)} / ${w.memory_gb} GB · $${w.usd_per_hour}/h`);
      const mem = w.memory_gb ? h("div", { class: "mem" }, h("div", { style: `width:${Math.min(100, (100 * used) / w.memory_gb)}%` })) : null;
      const chips = h("div", { class: "replicas" }, ...(reps.length ? reps.map(replicaChip) : [h("span", { class: "empty", text: "no replicas (scaled to zero)" })]));
      box.append(h("div", { class: "worker", "data-worker": w.worker_id }, head, mem, chips));
    }
    out.push(box);
  }
  $("fleet").replaceChildren(...out);
}

// One row per worker that declares devices, one cell per device. An asleep replica keeps its devices (it wakes
// on them; placement gives them to another replica only by evicting it first), so its cells read "asleep".
function deviceCell(c, worker) {
  const title = `device ${c.index} (${c.hardware}) on ${worker}: ` + (c.state === "free" ? "free"
    : c.state === "asleep" ? `kept by ${c.replica}, which is asleep and wakes here (another start takes it only by evicting it)`
    : `held by ${c.replica}, ${c.state}`);
  return h("div", { class: "device", "data-index": c.index, "data-state": c.state, "data-expert": c.expert || "", "data-replica": c.replica || "", title },
    h("span", { class: "index", text: `${c.hardware} ${c.index}` }),
    h("span", { class: "who", text: c.state === "free" ? "free" : c.expert }),
    c.state === "free" ? null : h("span", { class: "state", text: `${c.state} · ${c.replica.slice(c.replica.lastIndexOf("#"))}` }));
}

function renderDevices(ev) {
  const rows = ev.fleet.workers.filter((w) => (w.devices || []).length).map((w) => {
    const numFree = w.devices.filter((c) => c.state === "free").length;
    return h("div", { class: "device-row", "data-worker": w.worker_id },
      h("div", { class: "head" }, h("b", { text: w.worker_id }), `${w.hardware} · ${numFree} of ${w.devices.length} free`),
      h("div", { class: "cells" }, ...w.devices.map((c) => deviceCell(c, w.worker_id))));
  });
  $("devices-panel").hidden = !rows.length;
  document.querySelector("main").classList.toggle("with-devices", rows.length > 0);
  $("devices").replaceChildren(...rows);
}

function renderExperts(ev) {
  const rows = [];
  const maxRate = Math.max(1e-9, ...Object.values(history.rates));
  for (const e of ev.fleet.experts) {
    const m = ev.metrics.experts[e.id] || { requests: {}, tokens_in: 0, tokens_out: 0, usd: 0 };
    const req = m.requests;
    const failed = (req.error || 0) + (req.timeout || 0) + (req.rejected || 0);
    const counts = {};
    let running = 0, queued = e.num_unplaced || 0;
    for (const r of e.replicas) { counts[r.state] = (counts[r.state] || 0) + 1; running += r.num_running || 0; queued += r.num_queued || 0; }
    const states = STATES.filter((s) => counts[s]).map((s) => h("span", { class: "chip", "data-state": s, text: `${counts[s]} ${s}` }));
    const rate = history.rates[e.id] || 0;
    const ka = e.keepalive ? `${e.keepalive.action}: ${relTimes(e.keepalive.reason, ev.at)}` : "";
    const row = h("tr", { "data-expert": e.id },
      h("td", { class: "expert", title: `${e.backend} · ${e.params_b}B params · $${e.usd_per_mtok_input}/$${e.usd_per_mtok_output} per Mtok in/out`, text: e.id }),
      h("td", { class: "states" }, ...(states.length ? states : [h("span", { class: "chip", "data-state": "cold", text: "cold" })])),
      h("td", { class: "num rate" }, h("span", { class: "bar", style: `width:${Math.round((40 * rate) / maxRate)}px` }), fmtRate(rate)),
      h("td", { class: "num ok", text: fmtInt(req.ok) }),
      h("td", { class: "num" + (failed ? " bad" : ""), text: fmtInt(failed), title: `error ${req.error || 0}, timeout ${req.timeout || 0}, rejected ${req.rejected || 0}` }),
      h("td", { class: "num", text: running }),
      h("td", { class: "num" + (queued ? " bad" : ""), text: queued }),
      h("td", { class: "num", text: fmtSeconds(m.latency_s && m.latency_s.p50) }),
      h("td", { class: "num", text: fmtSeconds(m.latency_s && m.latency_s.p95) }),
      h("td", { class: "num", text: fmtSeconds(m.ttft_s && m.ttft_s.p50) }),
      h("td", { class: "num", text: `${fmtInt(m.tokens_in)} / ${fmtInt(m.tokens_out)}` }),
      h("td", { class: "num usd", text: fmtUsd(m.usd) }),
      h("td", { class: "keepalive", title: ka, text: ka }),
    );
    const old = document.querySelector(`#experts tbody tr[data-expert="${CSS.escape(e.id)}"] td.ok`);
    if (old && old.textContent !== fmtInt(req.ok)) row.classList.add("flash");
    rows.push(row);
  }
  document.querySelector("#experts tbody").replaceChildren(...rows);
}

function renderDecisions(ev) {
  const items = ev.fleet.decisions.slice().reverse().map((d) => h("li", { "data-action": d.action },
    h("span", { class: "when", text: ago(d.at, ev.at) }),
    h("span", {}, h("span", { class: "action", "data-action": d.action, text: d.action }), " ", d.expert),
    h("span", { class: "reason", title: d.replica || "" }, d.code ? h("span", { class: "code", text: d.code }) : null, relTimes(d.reason, ev.at)),
  ));
  $("decisions").replaceChildren(...(items.length ? items : [h("li", { class: "empty", text: "no decisions yet" })]));
}

function renderColdStarts(ev) {
  const items = ev.cold_starts.slice().reverse().map((c) => {
    const total = c.phases.ready_s || 0;
    const bar = h("div", { class: "phases" });
    for (const [phase, s] of Object.entries(c.phases)) {
      if (phase === "ready_s" || !total) continue;
      bar.append(h("span", { title: `${phase.replace("_s", "")}: ${fmtSeconds(s)}`, style: `width:${(100 * s) / total}%;background:${PHASE_COLORS[phase.replace("_s", "")] || "#999"}` }));
    }
    return h("li", { "data-replica": c.replica },
      h("span", { class: "when", text: ago(c.at, ev.at) }),
      h("span", {}, h("b", { text: c.replica })),
      h("span", {}, `${c.hardware} · ready in ${fmtSeconds(total)}`, bar.children.length ? bar : null));
  });
  $("coldstarts").replaceChildren(...(items.length ? items : [h("li", { class: "empty", text: "no cold starts measured yet" })]));
}

function renderRoutes(ev) {
  const items = ev.routes.slice().reverse().map((r) => {
    const moved = r.router_choice !== r.expert;
    const why = r.fleet ? [h("span", { class: "code", text: r.fleet }), r.fleet_reason] : [r.reason];
    return h("li", { "data-expert": r.expert },
      h("span", { class: "when", text: ago(r.at, ev.at) }),
      h("span", {}, h("b", { text: r.expert }), moved ? h("span", { class: "muted", text: ` (router: ${r.router_choice})` }) : null),
      h("span", { class: "reason", title: r.reason }, ...why));
  });
  $("routes").replaceChildren(...(items.length ? items : [h("li", { class: "empty", text: 'no requests for model "auto" yet' })]));
}

function errors(n) { return `${fmtInt(n)} error${n === 1 ? "" : "s"}`; }

// Running batches first (requests done of their total, a bar), then the last ended, newest first; the panel shows
// once this gateway has run one.
function renderBatches(ev) {
  const batches = ev.batches || { running: [], ended: [] };
  const running = batches.running.map((b) => h("li", { "data-batch": b.id, "data-status": b.status },
    h("span", { class: "when", text: b.status === "cancelling" ? "cancelling" : "running" }),
    h("span", { title: b.id }, h("b", { text: b.id.slice(0, 14) + "…" }), " ", b.endpoint),
    h("span", {}, `${fmtInt(b.done)} of ${fmtInt(b.total)} done${b.failed ? `, ${errors(b.failed)}` : ""}`,
      h("span", { class: "bar" }, h("span", { style: `width:${b.total ? (100 * b.done) / b.total : 0}%` })))));
  const ended = batches.ended.slice().reverse().map((b) => h("li", { "data-batch": b.id, "data-status": b.status },
    h("span", { class: "when", text: ago(b.at, ev.at) }),
    h("span", { title: b.id }, h("b", { text: b.id.slice(0, 14) + "…" }), " ", b.endpoint),
    h("span", { class: "reason" }, h("span", { class: "code", text: b.status }), b.status === "failed" && !b.total ? " its input was refused"
      : ` ${fmtInt(b.completed)} answered, ${errors(b.failed)} of ${fmtInt(b.total)}`)));
  $("batches-panel").hidden = !running.length && !ended.length;
  $("batches").replaceChildren(...running, ...ended);
}

function render(ev) {
  updateRates(ev);
  renderKpis(ev);
  renderFleet(ev);
  renderDevices(ev);
  renderExperts(ev);
  renderDecisions(ev);
  renderColdStarts(ev);
  renderRoutes(ev);
  renderBatches(ev);
  $("clock").textContent = new Date(ev.at * 1000).toLocaleTimeString();
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

// The feed is read with fetch rather than EventSource: EventSource cannot send the admin key that
// /admin/events needs when the gateway has auth on. The key is kept for this tab only (sessionStorage).
const KEY_ITEM = "switchboard-admin-key";
const RECONNECT_MS = 1000;

function setConn(state, text) { $("conn").dataset.state = state; $("conn").textContent = text; }

function askForKey(message) {
  setConn("lost", "admin key needed");
  $("auth-message").textContent = message;
  $("auth").hidden = false;
  $("auth-key").focus();
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("auth-key").value.trim());
  $("auth-key").value = "";
  $("auth").hidden = true;
  connect();
});

async function connect() {
  const key = sessionStorage.getItem(KEY_ITEM);
  let response;
  try {
    response = await fetch("/admin/events", { headers: key ? { Authorization: "Bearer " + key } : {}, cache: "no-store" });
  } catch (e) {
    return reconnect();
  }
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(KEY_ITEM);
    return askForKey(key ? "That key was not accepted: the dashboard needs the admin key." : "This gateway needs its admin key.");
  }
  if (!response.ok || !response.body) return reconnect();
  setConn("live", "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    // the connection dropped mid-stream: reconnect below
  }
  reconnect();
}

function reconnect() {
  setConn("lost", "reconnecting…");
  setTimeout(connect, RECONNECT_MS);
}

connect();
