// portproxy's page: polls the JSON API every two seconds and shows the daemon's status,
// its mappings (with a delete button each), the manual forwards (add, edit, delete) and its
// counters with a chart of one of them.
// Plain DOM and canvas; no framework, nothing loaded from elsewhere.
"use strict";

const POLL_MS = 2000;
/// Samples kept for the chart: five minutes of polls.
const SAMPLES = 150;

const $ = (id) => document.getElementById(id);
let session = { password_set: false, logged_in: false };
/// The chosen counter's totals, oldest first: [seconds, total].
let samples = [];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  let body = null;
  try { body = await response.json(); } catch (_) { /* no JSON body */ }
  if (!response.ok) {
    throw new Error((body && body.error) || response.status + " " + response.statusText);
  }
  return body;
}

function duration(secs) {
  if (secs === null || secs === undefined) return "until deleted";
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s";
}

function since(unix) {
  if (!unix) return "–";
  const d = new Date(unix * 1000);
  const ago = Math.max(0, Math.round(Date.now() / 1000 - unix));
  return d.toLocaleString() + " (" + duration(ago) + " ago)";
}

function speaks(s) {
  if (!s) return "not probed yet";
  const names = [];
  if (s.pcp) names.push("PCP");
  if (s.nat_pmp) names.push("NAT-PMP");
  if (s.upnp) names.push("UPnP IGD");
  return names.length ? names.join(", ") : "nothing (no answer to any probe)";
}

function showSession() {
  $("login").hidden = !session.password_set || session.logged_in;
  $("logged-in").hidden = !session.logged_in;
  $("read-only").hidden = session.password_set;
  for (const b of document.querySelectorAll("button.delete, button.edit, #fw-submit")) {
    b.disabled = !session.logged_in;
  }
}

async function loadSession() {
  session = await api("/api/session");
  showSession();
}

function showStatus(s) {
  const state = $("state");
  state.textContent = s.state === "relaying" ? "relaying" : s.state + (s.detail ? ": " + s.detail : "");
  state.className = "badge " + (s.state === "relaying" ? "ok" : "bad");
  const sw = s.softwire || {};
  const tunnel = sw.local || sw.remote ? (sw.local || "?") + " → " + (sw.remote || "?") : null;
  const rows = [
    ["Data path", (s.data_path || "").replace("_", " ") + (s.fallback_reason ? " (" + s.fallback_reason + ")" : "")],
    ["Mode", s.mode + (s.port_control ? ": " + s.port_control : "")],
    ["LAN", s.lan.iface + " " + s.lan.address],
    // No address while no data path runs (nor a kind while the interface is not there).
    ["Softwire", s.wan.iface + (sw.kind ? " (" + sw.kind + ")" : "") + (s.wan.address ? " " + s.wan.address : "")],
    ["Tunnel", tunnel],
    ["Softwire IPv6", sw.ipv6 && sw.ipv6.length ? sw.ipv6.join(", ") : null],
    ["CGN", s.cgn_address],
    ["CGN speaks", speaks(s.cgn_speaks)],
    ["External address", s.external_address || "not known yet"],
    ["Mappings", s.mappings],
    ["Up since", since(s.started)],
    ["Version", s.version],
  ];
  const dl = $("status");
  dl.replaceChildren();
  for (const [name, value] of rows) {
    if (value === null || value === undefined) continue;
    dl.append(el("dt", name), el("dd", value));
  }
}

/// The table's rows by mapping (HOST/PROTOCOL/PORT), updated in place at each poll so that
/// a focused delete button keeps its focus.
const rows = new Map();

function mappingRow(m, what) {
  const tr = el("tr");
  const cells = [];
  // The column headings again, for the narrow layout where each row is a card.
  const headings = [...$("mappings").tHead.rows[0].cells].map((th) => th.textContent);
  [null, null, "num", null, null, null, "wrap", "num"].forEach((cls, i) => {
    const td = el("td", "", cls);
    td.dataset.label = headings[i];
    cells.push(td);
    tr.append(td);
  });
  const cell = el("td");
  const button = el("button", "Delete", "delete danger");
  button.type = "button";
  button.setAttribute("aria-label", "Delete mapping " + what);
  const row = { tr, cells, button, mapping: m };
  button.addEventListener("click", () => remove(row.mapping, what, button));
  cell.append(button);
  tr.append(cell);
  return row;
}

function showMappings(list) {
  const body = $("mappings").tBodies[0];
  const seen = new Set();
  for (const m of list) {
    const key = m.host + "/" + m.protocol + "/" + m.internal_port;
    const what = m.host + ":" + m.internal_port + " " + m.protocol;
    seen.add(key);
    let row = rows.get(key);
    if (!row) {
      row = mappingRow(m, what);
      rows.set(key, row);
      body.append(row.tr);
    }
    row.mapping = m;
    const values = [
      m.host_name || m.mac || "–",
      m.host,
      m.internal_port,
      m.protocol.toUpperCase(),
      m.external_address + ":" + m.external_port,
      m.origin + (m.upstream && m.upstream !== "relayed" ? " via " + m.upstream : ""),
      m.description || "",
      duration(m.expires_in_secs),
    ];
    values.forEach((value, i) => {
      if (row.cells[i].textContent !== String(value)) row.cells[i].textContent = String(value);
    });
    row.button.disabled = !session.logged_in;
    row.button.title = session.logged_in ? "Delete " + what + " at the CGN" : "Log in to delete";
  }
  for (const [key, row] of rows) {
    if (!seen.has(key)) {
      row.tr.remove();
      rows.delete(key);
    }
  }
  $("no-mappings").hidden = list.length > 0;
}

async function remove(m, what, button) {
  button.disabled = true;
  try {
    const r = await api("/api/mappings/" + m.host + "/" + m.protocol + "/" + m.internal_port, { method: "DELETE" });
    say("Deleted " + what + " (at the CGN: " + r.at_cgn + ").");
  } catch (e) {
    say("Deleting " + what + ": " + e.message, true);
  }
  await refresh();
}

/// The forward being edited (its HOST/PROTOCOL/PORT), or null when the form adds one.
let editing = null;
/// The forwards as last shown, so the table is rebuilt (and a focused button lost) only
/// when they change.
let shownForwards = "";

function forwardStatus(s) {
  if (s.state === "active") return "active at " + s.external;
  if (s.state === "failed") return "failed: " + s.reason + " (again in " + duration(s.retry_in_secs) + ")";
  return "pending: " + s.reason;
}

function showForwards(list) {
  const json = JSON.stringify(list) + session.logged_in;
  if (json === shownForwards) return;
  shownForwards = json;
  const body = $("forwards").tBodies[0];
  const headings = [...$("forwards").tHead.rows[0].cells].map((th) => th.textContent);
  body.replaceChildren();
  for (const f of list) {
    const what = f.host + ":" + f.internal_port + " " + f.protocol;
    const tr = el("tr");
    tr.dataset.forward = f.host + "/" + f.protocol + "/" + f.internal_port;
    [
      [f.host], [f.internal_port, "num"], [f.protocol.toUpperCase()],
      [f.external_port || "any", "num"], [f.description, "wrap"],
      [forwardStatus(f.status), "status " + f.status.state],
    ].forEach(([value, cls], i) => {
      const td = el("td", value, cls);
      td.dataset.label = headings[i];
      tr.append(td);
    });
    const cell = el("td");
    const edit = el("button", "Edit", "edit");
    edit.type = "button";
    edit.setAttribute("aria-label", "Edit forward " + what);
    edit.addEventListener("click", () => startEdit(f));
    const del = el("button", "Delete", "delete danger");
    del.type = "button";
    del.setAttribute("aria-label", "Delete forward " + what);
    del.addEventListener("click", () => removeForward(f, what, del));
    for (const b of [edit, del]) b.disabled = !session.logged_in;
    cell.append(edit, " ", del);
    tr.append(cell);
    body.append(tr);
  }
  $("no-forwards").hidden = list.length > 0;
}

function forwardPath(f) {
  return "/api/forwards/" + f.host + "/" + f.protocol + "/" + f.internal_port;
}

function startEdit(f) {
  editing = forwardPath(f);
  $("fw-host").value = f.host;
  $("fw-port").value = f.internal_port;
  $("fw-protocol").value = f.protocol;
  $("fw-external").value = f.external_port || "";
  $("fw-description").value = f.description;
  $("forward-legend").textContent = "Edit the forward of " + f.host + ":" + f.internal_port + " " + f.protocol;
  $("fw-submit").textContent = "Save forward";
  $("fw-cancel").hidden = false;
  $("fw-host").focus();
}

function stopEdit() {
  editing = null;
  $("forward-form").reset();
  $("forward-legend").textContent = "Add a forward";
  $("fw-submit").textContent = "Add forward";
  $("fw-cancel").hidden = true;
}

async function saveForward(event) {
  event.preventDefault();
  const external = $("fw-external").value;
  const spec = {
    host: $("fw-host").value.trim(),
    internal_port: Number($("fw-port").value),
    protocol: $("fw-protocol").value,
    external_port: external ? Number(external) : null,
    description: $("fw-description").value,
  };
  const what = spec.host + ":" + spec.internal_port + " " + spec.protocol;
  try {
    const view = await api(editing || "/api/forwards", {
      method: editing ? "PUT" : "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(spec),
    });
    say((editing ? "Changed" : "Added") + " the forward of " + what + ": " + forwardStatus(view.status) + ".");
    stopEdit();
  } catch (e) {
    say("Saving the forward of " + what + ": " + e.message, true);
  }
  await refresh();
}

async function removeForward(f, what, button) {
  button.disabled = true;
  try {
    await api(forwardPath(f), { method: "DELETE" });
    say("Deleted the forward of " + what + ".");
    if (editing === forwardPath(f)) stopEdit();
  } catch (e) {
    say("Deleting the forward of " + what + ": " + e.message, true);
  }
  await refresh();
}

function total(count) {
  return (count.kernel || 0) + (count.daemon || 0);
}

function showCounters(c) {
  const select = $("chart-counter");
  const ids = Object.keys(c.counters);
  if (select.options.length !== ids.length) {
    const chosen = select.value || "nat_pmp_to_cgn";
    select.replaceChildren();
    for (const id of ids) select.append(new Option(id.replace(/_/g, " "), id));
    select.value = ids.includes(chosen) ? chosen : ids[0];
  }
  const body = $("counters").tBodies[0];
  body.replaceChildren();
  for (const id of ids) {
    const count = c.counters[id];
    const tr = el("tr");
    tr.append(
      el("td", id.replace(/_/g, " ")),
      el("td", count.kernel === undefined ? "–" : count.kernel, "num"),
      el("td", count.daemon === undefined ? "–" : count.daemon, "num"),
    );
    body.append(tr);
  }
  const chosen = c.counters[select.value];
  if (chosen) {
    samples.push([Date.now() / 1000, total(chosen)]);
    if (samples.length > SAMPLES) samples.shift();
  }
  drawChart();
}

/// The per-second rates between samples: [seconds, rate].
function rates() {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i][0] - samples[i - 1][0];
    out.push([samples[i][0], dt > 0 ? Math.max(0, samples[i][1] - samples[i - 1][1]) / dt : 0]);
  }
  return out;
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const fg = style.getPropertyValue("--fg").trim(), line = style.getPropertyValue("--line").trim();
  const accent = style.getPropertyValue("--accent").trim();
  const points = rates();
  const max = Math.max(1, ...points.map((p) => p[1]));
  const left = 48, bottom = height - 20, top = 10, right = width - 8;
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = fg;
  g.strokeStyle = line;
  g.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = bottom - f * (bottom - top);
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    g.fillText((max * f).toFixed(max * f < 10 && f > 0 ? 1 : 0) + "/s", 4, y + 4);
  }
  g.fillText("last " + Math.round((SAMPLES * POLL_MS) / 60000) + " min", left, height - 4);
  const now = Date.now() / 1000, span = (SAMPLES * POLL_MS) / 1000;
  g.strokeStyle = accent;
  g.lineWidth = 2;
  g.beginPath();
  points.forEach(([t, r], i) => {
    const x = right - ((now - t) / span) * (right - left);
    const y = bottom - (r / max) * (bottom - top);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  const last = points.length ? points[points.length - 1][1] : 0;
  $("chart-rate").textContent = "now " + last.toFixed(1) + "/s";
}

async function refresh() {
  try {
    const [status, mappings, forwards, counters] = await Promise.all([
      api("/api/status"), api("/api/mappings"), api("/api/forwards"), api("/api/counters"),
    ]);
    showStatus(status);
    showMappings(mappings);
    showForwards(forwards);
    showCounters(counters);
  } catch (e) {
    say("Reading the daemon: " + e.message, true);
  }
}

async function login(event) {
  event.preventDefault();
  const password = $("password");
  try {
    await api("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password: password.value }),
    });
    password.value = "";
    say("Logged in.");
  } catch (e) {
    say("Logging in: " + e.message, true);
  }
  await loadSession();
  await refresh();
}

async function logout() {
  try {
    await api("/api/logout", { method: "POST" });
    say("Logged out.");
  } catch (e) {
    say("Logging out: " + e.message, true);
  }
  await loadSession();
  await refresh();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("forward-form").addEventListener("submit", saveForward);
  $("fw-cancel").addEventListener("click", stopEdit);
  $("chart-counter").addEventListener("change", () => { samples = []; drawChart(); });
  window.addEventListener("resize", drawChart);
  try { await loadSession(); } catch (e) { say("Reading the session: " + e.message, true); }
  await refresh();
  setInterval(refresh, POLL_MS);
});
