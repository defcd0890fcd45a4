// The live page of a Dahu server: one summary per second from /api/events (server-sent
// events), or from /api/summary every 2 s when the event stream is not available
// (?transport=poll forces polling).  Everything is rebuilt from each summary, so the
// page keeps no history of its own and its memory does not grow.
"use strict";

const POLL_MS = 2000;
const STALE_MS = 5000;
const RETRY_MS = [1000, 2000, 4000, 8000, 15000];  // back-off of the stream's reconnections
// A browser opens at most 6 connections to a server, and an open stream holds one: with 6
// tabs of the page, a 7th tab (a job page too) could not even load. A tab hidden this long
// closes its stream, and opens it again when shown (a summary comes at once).
const HIDDEN_MS = 5000;
let lastUpdate = 0;
let transport = "";
let trouble = "";  // why updates stopped, while the page is trying again
let streamed = false;  // an event came through the stream once: it works on this network
let retries = 0;
let refused = "";  // the server refused this page (its token changed): updates stopped
let paused = false;  // no stream while the tab is hidden
let closeStream = () => false;  // closes the open stream; whether one was open
let hiding = null;  // the timer closing the stream of a hidden tab
// The tabs of this page of one server share one stream, which holds one of the browser's 6
// connections to the server: six pages shown at once (windows side by side) left none for a
// 7th or a job page. The tab that streams (the leader) passes each summary on to the others
// over a BroadcastChannel and says it is there every second; when it goes (closed, hidden,
// silent for TAKEOVER_MS), a shown tab takes over. Two leaders that hear each other: the
// one with the lowest id stays.
const TAKEOVER_MS = 3000;
const SHARE = window.BroadcastChannel ?
  new BroadcastChannel("dahu page " + new URL(".", location.href).pathname) : null;
const me = Math.random();
let sharing = false;  // this page takes part (not with ?transport=poll)
let leading = false;  // this tab holds the stream
let heard = 0;  // when the leader last spoke
let latest = null;  // a summary passed on while this tab was hidden: drawn when shown

function $(id) { return document.getElementById(id); }

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function jobLink(id) {
  const td = document.createElement("td");
  const a = document.createElement("a");
  a.href = "jobs/" + encodeURIComponent(id);  // relative: the page may sit under a proxy's path
  a.textContent = String(id);
  a.title = "error, input and output of job " + id;
  td.appendChild(a);
  return td;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c);
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  if (!rows.length) {
    const td = cell(empty, "muted");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    rows = [row([td])];
  }
  body.replaceChildren(...rows);
}

// three significant digits, no exponent: 0.4, 3.21, 58.6, 105
function significant(v) { return v < 100 ? String(Number(v.toPrecision(3))) : v.toFixed(0); }

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (typeof s !== "number" || !isFinite(s) || s <= 0) return s + " s";  // 0 s, "Infinity" s
  if (s < 0.9995e-3) return significant(s * 1e6) + " µs";  // 0.4 µs, not 0 µs
  if (s < 0.9995) return significant(s * 1e3) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

// the time of day; with the date for another day (the journal's jobs of earlier runs)
function clock(t) {
  if (!t) return "–";
  const when = new Date(t * 1000), now = new Date();
  const time = when.toLocaleTimeString([], { hour12: false });
  if (when.toDateString() === now.toDateString()) return time;
  const day = { month: "short", day: "numeric" };
  if (when.getFullYear() !== now.getFullYear()) day.year = "numeric";
  return when.toLocaleDateString([], day) + " " + time;
}

function stateCell(state) { return cell(state, "state-" + state); }

function renderCounters(c) {
  $("c-queued").textContent = c.queued;
  $("c-running").textContent = c.running;
  $("c-finished").textContent = c.finished_last_hour;
  $("c-failed").textContent = c.failed_last_hour;
  $("c-aborted").textContent = c.aborted_last_hour;
  $("c-rate").textContent = c.jobs_per_s < 10 ? c.jobs_per_s.toFixed(1) : Math.round(c.jobs_per_s);
  $("c-total").textContent = c.finished + " finished: " + c.succeeded + " ok, " + c.failed +
    " failed, " + c.aborted + " aborted (up " + duration(c.uptime) + ")";
  const fault = $("fault");
  fault.hidden = !c.journal_fault;
  fault.textContent = c.journal_fault ? "The journal cannot be written: " + c.journal_fault : "";
}

function renderTables(s) {
  // the summary lists the 30 longest-running jobs: say so when more run
  const shown = s.running.length, all = Math.max(shown, s.counters.running);
  $("n-running").textContent = !shown ? "" : all > shown ? "(the " + shown + " longest of " + all + ")" : "(" + shown + ")";
  fill("running", s.running.map(j => row([jobLink(j.id), cell(j.plugin), cell(duration(j.elapsed), "num")])),
       "no job running");
  fill("failures", s.failures.map(j => row([jobLink(j.id), cell(j.plugin), stateCell(j.state),
       cell(j.reason, "reason"), cell(clock(j.ended))])), "no failure");
  fill("recent", s.recent.map(j => row([jobLink(j.id), cell(j.plugin), stateCell(j.state),
       cell(duration(j.runtime), "num"), cell(clock(j.ended))])), "no job yet");
  const plugins = Object.entries(s.plugins).map(([name, p]) => {
    const last = p.last_failure;
    const lastCell = last ? jobLink(last.id) : cell("");
    lastCell.className = "reason";
    if (last) { lastCell.title = last.reason; lastCell.appendChild(document.createTextNode(" " + last.reason.slice(0, 60))); }
    return row([cell(name), cell(p.jobs, "num"), cell(p.success, "num state-success"),
      cell(p.failure, "num" + (p.failure ? " state-failure" : "")),
      cell(p.aborted, "num" + (p.aborted ? " state-aborted" : "")),
      cell(duration(p.mean_runtime), "num"), cell(duration(p.p50_runtime), "num"),
      cell(duration(p.p95_runtime), "num"), lastCell]);
  });
  fill("plugins", plugins, "no job yet");
}

const LAYOUT = {
  margin: { l: 48, r: 10, t: 6, b: 28 }, showlegend: true,
  legend: { orientation: "h", x: 0, y: 1.14, font: { size: 11 } },
  xaxis: { type: "date", tickfont: { size: 10 } },
  yaxis: { rangemode: "tozero", tickfont: { size: 10 }, automargin: true },
  font: { family: "system-ui, sans-serif", size: 11 },
  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
};
const CONFIG = { displayModeBar: false, responsive: true };

function layout(extra) { return Object.assign({}, LAYOUT, extra); }

function toMs(v) { return v === null ? null : v * 1000; }

// a percentile line; a bucket with no ended job on either side (a short burst) has no
// line to draw through it, so it gets a marker of its own
function percentileTrace(x, values, name, color) {
  const y = values.map(toMs);
  const alone = y.map((v, i) => v !== null && (y[i - 1] ?? null) === null && (y[i + 1] ?? null) === null);
  return { x, y, name, type: "scatter", mode: "lines+markers", line: { color },
           marker: { color, size: alone.map(a => (a ? 6 : 0)) } };
}

// the time axis; a server just started has one bucket, whose own range Plotly makes a
// millisecond wide (ticks of 14:25:19.9995): a bucket on either side of it instead
function timeAxis(x, bucket) {
  if (x.length !== 1) return LAYOUT.xaxis;
  return Object.assign({}, LAYOUT.xaxis, { range: [x[0] - bucket * 1000, x[0] + bucket * 1000] });
}

function renderPlots(series) {
  if (!window.Plotly) return;
  const x = series.t.map(t => t * 1000);
  const xaxis = timeAxis(x, series.bucket || 10);
  Plotly.react("plot-rate", [
    { x, y: series.jobs_per_s, name: "ended", type: "scatter", mode: "lines", line: { color: "#2457c5" }, fill: "tozeroy" },
    { x, y: series.failed_per_s, name: "failed or aborted", type: "scatter", mode: "lines", line: { color: "#c62828" } },
  ], layout({ xaxis, yaxis: Object.assign({}, LAYOUT.yaxis, { title: { text: "jobs/s" } }) }), CONFIG);
  Plotly.react("plot-runtime", [
    percentileTrace(x, series.p50, "p50", "#1a7f37"),
    percentileTrace(x, series.p90, "p90", "#b26a00"),
    percentileTrace(x, series.p99, "p99", "#c62828"),
  ], layout({ xaxis, yaxis: { type: "log", dtick: "D2", title: { text: "ms" }, tickfont: { size: 10 }, automargin: true } }), CONFIG);
  Plotly.react("plot-queue", [
    { x, y: series.queue, name: "queued", type: "scatter", mode: "lines", line: { color: "#6a3d9a", shape: "hv" }, fill: "tozeroy" },
    { x, y: series.running, name: "running", type: "scatter", mode: "lines", line: { color: "#2457c5", shape: "hv" } },
  ], layout({ xaxis, yaxis: Object.assign({}, LAYOUT.yaxis, { title: { text: "jobs" } }) }), CONFIG);
}

function share(message) {
  if (leading) SHARE.postMessage(Object.assign({ from: me }, message));
}

function claim() {
  if (leading || refused || document.hidden || Date.now() - heard < TAKEOVER_MS) return;
  leading = true;
  share({});  // the others do not claim too
  stream();
}

function resign() {
  if (!leading) return;
  share({ bye: true });
  leading = false;
  heard = Date.now();
  closeStream();
}

// a message of the leader (of a tab that thinks it leads)
function hear(e) {
  const m = e.data;
  if (refused) return;
  if (m.bye) {  // a shown tab takes over
    if (!leading) { heard = 0; setTimeout(claim, 100 + 400 * Math.random()); }
    return;
  }
  if (leading && m.from > me) return;  // two leaders: the lowest id stays
  resign();
  heard = Date.now();
  if (m.refused) refuse(m.refused[0], m.refused[1]);
  else if (m.badge) setLive(m.badge, "down");
  else if (m.summary && document.hidden) latest = m;
  else if (m.summary) follow(m);
}

function follow(m) {
  transport = m.transport + ", through another tab";
  render(m.summary);
}

function render(summary) {
  share({ summary, transport });
  lastUpdate = Date.now();
  trouble = "";
  renderCounters(summary.counters);
  renderTables(summary);
  renderPlots(summary.series);
  setLive("live: " + transport, "");
}

// the badge while no update comes: why (trouble) and for how long, in one wording (the
// reconnections and the stale check once wrote two in turn: the badge flickered)
function showTrouble() {
  const age = Date.now() - lastUpdate;
  const stale = lastUpdate && age > STALE_MS ? "no update for " + Math.round(age / 1000) + " s" : "";
  setLive([trouble, stale].filter(Boolean).join(", "), "down");
  share({ badge: $("live").textContent });
}

function setLive(text, cls) {
  const live = $("live");
  live.textContent = text;
  live.className = "live" + (cls ? " " + cls : "");
}

// An answer that will not change by asking again: access refused (401: the server was
// restarted with another token; 403: this address is refused). Updates stop, saying why.
function refuse(status, body) {
  refused = "Updates stopped: the server refused this page (HTTP " + status + ": " +
    ((body && body.error) || "access refused") + "). " + (status === 401 ?
    "Its access token has changed (the server was restarted with a new one?): open the " +
    "address it printed, with its ?token=, to go on." : "");
  share({ refused: [status, body] });
  resign();  // a page opened later with the new token must not wait for this one
  setLive("access refused: updates stopped", "down");
  const problem = $("refused");
  problem.textContent = refused;
  problem.hidden = false;
}

function isRefusal(status) { return status === 401 || status === 403; }

// the answer to a request of the page: its JSON, or an error carrying the status and body
function answer(r) {
  if (r.ok) return r.json();
  return r.json().catch(() => ({})).then(body => {
    const error = new Error("HTTP " + r.status);
    Object.assign(error, { status: r.status, body });
    throw error;
  });
}

function poll(reason) {
  transport = "polling every " + POLL_MS / 1000 + " s";
  if (reason) console.info("dahu: polling /api/summary: " + reason);
  const once = () => {
    if (sharing && !leading) return;  // another tab leads now
    fetch("api/summary", { cache: "no-store", credentials: "same-origin" })
      .then(answer)
      .then(render)
      .then(() => setTimeout(once, POLL_MS))
      .catch(err => {
        if (isRefusal(err.status)) { refuse(err.status, err.body); return; }
        trouble = "server unreachable (" + err.message + "), retrying";
        showTrouble();
        setTimeout(once, POLL_MS);
      });
  };
  once();
}

function stream() {
  if (sharing && !leading) return;  // another tab leads now
  transport = "server-sent events";
  paused = document.hidden;
  if (paused) { resign(); setLive("paused while this tab is hidden", "stale"); return; }
  closeStream();  // one at a time (a retry due after this tab led, resigned, led again)
  const source = new EventSource("api/events");
  let received = false;
  let over = false;
  closeStream = () => { if (over) return false; over = true; source.close(); return true; };
  const fallBack = why => { if (!over) { over = true; source.close(); poll(why); } };
  source.addEventListener("summary", e => {
    received = streamed = true;
    retries = 0;
    render(JSON.parse(e.data));
  });
  source.onerror = () => {
    if (over) return;
    if (source.readyState !== EventSource.CLOSED) {
      if (!streamed) { fallBack("the event stream failed"); return; }
      trouble = "reconnecting…";
      showTrouble();  // a network error: EventSource retries by itself
      return;
    }
    // an answer that is not the stream: EventSource gives up for good and does not say
    // which; a refusal (401: the token changed) stops the page, anything else (a proxy's
    // 502 while the server restarts, its 503 while it starts) is tried again here
    over = true;
    source.close();
    fetch("api/counters", { cache: "no-store", credentials: "same-origin" })
      .then(answer)
      .then(() => null, err => err)
      .then(err => {
        if (err && isRefusal(err.status)) refuse(err.status, err.body);
        else if (!streamed) poll("the event stream failed");
        else {
          trouble = "reconnecting…";
          const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
          retries += 1;
          showTrouble();
          setTimeout(stream, wait);
        }
      });
  };
  if (!streamed) setTimeout(() => { if (!received) fallBack("no event within 5 s"); }, STALE_MS);
}

function visibility() {
  clearTimeout(hiding);
  if (sharing && document.hidden) hiding = setTimeout(() => { if (leading) stream(); }, HIDDEN_MS);
  else if (document.hidden) hiding = setTimeout(() => { if (closeStream()) stream(); }, HIDDEN_MS);
  else if (sharing) {  // shown: the latest summary passed on, or this tab streams at once
    if (latest) follow(latest);
    latest = null;
    claim();
  } else if (paused && !refused) stream();
}

function watch() {
  if (sharing && !leading) {
    if (!refused && Date.now() - heard > TAKEOVER_MS) claim();  // no leader (any more)
    return;
  }
  share({});  // this tab still leads
  if (refused || paused) return;
  if (lastUpdate && Date.now() - lastUpdate > STALE_MS) showTrouble();
}

function start() {
  $("server").textContent = location.host;
  const params = new URLSearchParams(location.search);
  if (params.has("token")) history.replaceState(null, "", location.pathname);  // kept as a cookie
  if (params.get("transport") === "poll" || !window.EventSource) poll("asked for");
  else if (SHARE) {
    sharing = true;
    SHARE.onmessage = hear;
    addEventListener("pagehide", resign);
    document.addEventListener("visibilitychange", visibility);
    heard = Date.now() - TAKEOVER_MS + 1500;  // a leader speaks each second: or lead
  } else {
    stream();
    document.addEventListener("visibilitychange", visibility);
  }
  setInterval(watch, 1000);
}

start();
