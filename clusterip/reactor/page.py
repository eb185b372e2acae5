"""The live status page (served by clusterip.reactor.web at `/`): one self-contained file.

No external asset and no framework: plain DOM code renders the document embedded at load
(`/*INITIAL*/null` is replaced by it) and then polls `/status.json` every second. Rows carry
data attributes (node, state, buckets) so that a test can read the DOM as a person reads it.
"""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clusterip agent</title>
<style>
  :root { --fg:#1d2330; --mute:#6b7385; --line:#e3e6ec; --bg:#f7f8fa; --card:#fff;
          --ok:#2f9e60; --warn:#d08a10; --bad:#cf3b3b; --bar:#3b6fd6; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
         color:var(--fg); background:var(--bg); }
  header { padding:14px 22px; background:#1d2330; color:#fff; display:flex; gap:22px;
           align-items:baseline; flex-wrap:wrap; }
  header h1 { font-size:18px; margin:0; font-weight:600; }
  header span { color:#c9cfdb; }
  #stale { color:#ffb4b4; font-weight:600; }
  main { padding:16px 22px; display:grid; gap:16px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:8px;
          padding:14px 16px; }
  .card h2 { font-size:15px; margin:0 0 10px; }
  .sub { color:var(--mute); font-weight:400; }
  table { border-collapse:collapse; width:100%; }
  th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line);
           white-space:nowrap; }
  th { color:var(--mute); font-weight:500; font-size:12px; text-transform:uppercase; }
  td.num { text-align:right; font-variant-numeric:tabular-nums; }
  .bar { background:#e8edf7; border-radius:4px; height:14px; width:260px; overflow:hidden; }
  .bar > div { background:var(--bar); height:100%; }
  tr[data-state="dead"] .bar > div, tr[data-state="left"] .bar > div { background:var(--bad); }
  .st { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
        color:#fff; background:var(--mute); }
  .st.active { background:var(--ok); } .st.draining, .st.restarting { background:var(--warn); }
  .st.dead, .st.left, .st.passive, .st.isolated { background:var(--bad); }
  .grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:10px; }
  .tile { border:1px solid var(--line); border-radius:6px; padding:8px 10px; }
  .tile b { display:block; font-size:20px; font-variant-numeric:tabular-nums; }
  .tile span { color:var(--mute); font-size:12px; }
  .ev td:first-child { color:var(--mute); font-variant-numeric:tabular-nums; }
  .kind-death { color:var(--bad); font-weight:600; } .kind-join { color:var(--ok); }
  .kind-move { color:var(--bar); }
  .note { color:var(--mute); font-size:12px; margin-top:8px; }
</style>
</head>
<body>
<header>
  <h1>clusterip</h1>
  <span id="who"></span><span id="xdp"></span><span id="updated"></span><span id="stale"></span>
</header>
<main id="vips"></main>
<main>
  <section class="card"><h2>Recent events <span class="sub">(newest first)</span></h2>
    <table class="ev"><tbody id="events"></tbody></table></section>
  <p class="note">This page shows what <code>clusterip status</code> shows on this node
  (addresses, node ids, counters); no key or secret. It refreshes every second.</p>
</main>
<script>
"use strict";
let doc = /*INITIAL*/null;
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
};
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], {hour12: false}) +
  "." + String(Math.floor((t % 1) * 1000)).padStart(3, "0");
const n = (x) => (x === undefined || x === null) ? "-" : Number(x).toLocaleString("en");

function rows(v, events) {
  const total = v.buckets || 1;
  const out = [{id: v.node_id, state: v.state, weight: v.weight, buckets: v.owned_count,
                where: "this node", heard: "-"}];
  const present = new Set([v.node_id]);
  for (const m of v.members) {
    present.add(m.id);
    out.push({id: m.id, state: m.state, weight: m.weight, buckets: m.buckets,
              where: m.address || ("via node " + m.via), heard: m.last_heard_ms + " ms ago",
              counted: m.counted});
  }
  // Nodes that died or left and are not back: from the event history.
  const gone = new Map();
  for (const e of events.slice().reverse()) {   // oldest first
    if (e.vip !== v.vip || e.node === null) continue;
    if (e.kind === "death") gone.set(e.node, e); else if (e.kind === "join") gone.delete(e.node);
  }
  for (const [id, e] of gone) {
    if (present.has(id)) continue;
    const left = e.text.includes("(leave)");
    out.push({id: id, state: left ? "left" : "dead", weight: "-", buckets: 0,
              where: (left ? "left at " : "dead since ") + clock(e.t), heard: "-"});
  }
  out.sort((a, b) => a.id - b.id);
  return out.map((r) => {
    const pct = Math.round(1000 * r.buckets / total) / 10;
    return el("tr", {"data-node": r.id, "data-state": r.state, "data-buckets": r.buckets},
      el("td", {}, "node " + r.id + (r.id === v.node_id ? " (here)" : "")),
      el("td", {}, el("span", {class: "st " + r.state}, r.state)),
      el("td", {class: "num"}, r.weight),
      el("td", {class: "num"}, n(r.buckets)),
      el("td", {}, el("div", {class: "bar", title: pct + "%"},
                      el("div", {style: "width:" + pct + "%"}))),
      el("td", {class: "num"}, pct + "%"),
      el("td", {}, r.where), el("td", {}, r.heard));
  });
}

function tiles(v) {
  const c = v.counters || {};
  const x = (v.xdp && v.xdp.counters) || null;
  const pk = (name) => c[name] ? c[name].packets : 0;
  const list = [["accepted", pk("accepted")], ["foreign (nft)", pk("foreign")],
                ["kept", pk("kept")], ["midflow", pk("midflow")]];
  if (x) {
    list.push(["XDP dropped", x.dropped], ["XDP fast path", x.owned]);
    if (x.forged) list.push(["XDP forged source", x.forged]);
  }
  const rej = v.rejected || {};
  for (const [cause, count] of Object.entries(rej)) {
    if (count) list.push(["refused: " + cause, count]);
  }
  if (!Object.values(rej).some((c) => c)) list.push(["refusals", 0]);
  return el("div", {class: "grid"}, ...list.map(([k, val]) =>
    el("div", {class: "tile", "data-counter": k}, el("b", {}, n(val)), el("span", {}, k))));
}

function windows(v, now) {
  const parts = [];
  if (v.guarded && v.guarded.length && v.guard_until !== null && v.guard_until !== undefined)
    parts.push(v.guarded.length + " bucket(s) guarded until " + clock(now + v.guard_until));
  if (v.draining && v.draining.length) {
    const end = (v.drain_until !== null && v.drain_until !== undefined)
      ? " until " + clock(now + v.drain_until) + " at the latest" : "";
    parts.push(v.draining.length + " bucket(s) draining" + end);
  }
  if (v.orphaned) parts.push(v.orphaned + " bucket(s) treated as orphans (a node died)");
  return parts.length ? parts.join("; ") : "no guard or drain window open";
}

function render() {
  if (!doc) return;
  const a = doc.agent || {};
  $("who").textContent = "node " + a.node_id + ", weight " + a.weight + ", up " +
    a.uptime_s + " s" + (a.draining ? ", DRAINING" : "");
  $("xdp").textContent = "XDP: " + (a.xdp || "off");
  $("updated").textContent = "updated " + clock(doc.time);
  const events = doc.events || [];
  const box = $("vips");
  box.replaceChildren();
  for (const v of doc.vips || []) {
    const head = el("tr", {}, ...["node", "state", "weight", "buckets", "share", "", "where",
                                  "last heard"].map((h) => el("th", {}, h)));
    box.append(el("section", {class: "card", "data-vip": v.vip},
      el("h2", {}, v.vip + " ", el("span", {class: "sub"}, "on " + v.interface + ", " +
         v.buckets + " buckets, " + v.hashmode + ", state " + v.state + " (" + v.reason + ")")),
      el("table", {class: "members"}, el("thead", {}, head), el("tbody", {}, ...rows(v, events))),
      el("p", {class: "note"}, windows(v, doc.time)),
      tiles(v)));
  }
  $("events").replaceChildren(...events.slice(0, 40).map((e) => el("tr", {},
    el("td", {}, clock(e.t)), el("td", {}, e.vip),
    el("td", {class: "kind-" + e.kind}, e.kind), el("td", {}, e.text))));
}

async function poll() {
  try {
    const r = await fetch("/status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    doc = await r.json();
    $("stale").textContent = "";
    render();
  } catch (err) {
    $("stale").textContent = "agent unreachable: " + err.message;
  }
}
render();
setInterval(poll, 1000);
</script>
</body>
</html>
"""
