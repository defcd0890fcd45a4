// One job: its information, full error, input and output (from /api/jobs/ID), refreshed
// every 2 s until the job has ended (through errors: a server that restarts is waited for).
"use strict";

const FINAL = ["success", "failure", "aborted"];
const REFRESH_MS = 2000;
let shown = false;  // the job was shown once

function $(id) { return document.getElementById(id); }

// in the browser's time zone, which is named: the server's may be another (dahu-jobs, logs)
function when(t) {
  return t ? new Date(t * 1000).toLocaleString([], { hour12: false, timeZoneName: "short" }) : "–";
}

// three significant digits, no exponent: 0.4, 3.21, 58.6, 105
function significant(v) { return v < 100 ? String(Number(v.toPrecision(3))) : v.toFixed(0); }

function runtime(s) {  // 3.21 µs, 0.178 ms, 2.500 s, 1 h 2 min 5.0 s: not 3725000.000 ms
  if (s === null) return "–";
  if (typeof s !== "number" || !isFinite(s) || s <= 0) return s + " s";  // 0 s, "Infinity" s
  if (s < 0.9995e-3) return significant(s * 1e6) + " µs";  // 40 µs, 0.4 µs: not 0.000 ms
  if (s < 1) return (s * 1000).toFixed(3) + " ms";
  if (s < 60) return s.toFixed(3) + " s";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + " h " : "") + m + " min " + (s % 60).toFixed(1) + " s";
}

function tooLarge(what, bytes, id) {
  return "(not shown: the " + what + " is " + (bytes / 1e6).toFixed(1) + " MB of JSON, more than " +
    "the 1 MB this page shows; `dahu-jobs show " + id + "` prints it)";
}

function show(job) {
  document.title = "Dahu job " + job.id;
  $("title").textContent = "job " + job.id + " · " + job.plugin;
  const rows = [
    ["state", job.state], ["plugin", job.plugin], ["reason", job.reason || "–"],
    ["submitted", when(job.submitted)], ["started", when(job.started)], ["ended", when(job.ended)],
    ["runtime", runtime(job.runtime)],
    ["host / pid", (job.host || "–") + " / " + (job.pid || "–")],
    ["Dahu version", job.version || "–"], ["plugin module", job.module_file || "–"],
    ["plugin version", job.plugin_version || "–"],
  ];
  $("info").tBodies[0].replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = k;
    const td = document.createElement("td");
    td.textContent = String(v);
    if (k === "state") td.className = "state-" + v;
    tr.append(th, td);
    return tr;
  }));
  const omitted = job.omitted || {};
  $("error").textContent = (job.error || "(no error)") + ("error" in omitted ? "\n… (cut: the " +
    "error has " + omitted.error.toLocaleString("en") + " characters, more than the " +
    "1,000,000 this page shows; `dahu-jobs show " + job.id + "` prints it)" : "");
  const unreadable = job.unreadable || {};  // a damaged journal row
  $("input").textContent = "input" in omitted ? tooLarge("input", omitted.input, job.id) :
    "input" in unreadable ? "(unreadable: " + unreadable.input + ")" :
    JSON.stringify(job.input, null, 2);
  $("output").textContent = "output" in omitted ? tooLarge("output", omitted.output, job.id) :
    "output" in unreadable ? "(unreadable: " + unreadable.output + ")" :
    job.output === null ? "(no output yet)" : JSON.stringify(job.output, null, 2);
  return FINAL.includes(job.state);
}

// the next refresh; none while the tab is hidden (a job page left in the background had
// the server read and encode its input and output, up to 2 MB, every 2 s for hours)
function later() {
  if (!document.hidden) { setTimeout(load, REFRESH_MS); return; }
  const shown = () => {
    if (document.hidden) return;
    document.removeEventListener("visibilitychange", shown);
    load();
  };
  document.addEventListener("visibilitychange", shown);
}

function load() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  fetch("../api/jobs/" + encodeURIComponent(id), { cache: "no-store", credentials: "same-origin" })
    .then(r => r.json().catch(() => ({})).then(body => ({ r, body })))
    .then(({ r, body }) => {
      if (!r.ok) {
        const error = new Error((body.error || "HTTP " + r.status + " " + r.statusText) +
          (r.status === 401 ? ": the server's access token has changed (was it restarted with " +
            "a new one?): open the address it printed, with its ?token=" : ""));
        error.retry = r.status >= 500;  // a proxy's 502, the server starting (503): try again
        throw error;
      }
      $("problem").hidden = true;
      shown = true;
      if (!show(body)) later();
    })
    .catch(err => {
      // a network error (the server restarting) is tried again; a 4xx answer is final
      const retry = err.retry !== false;
      $("problem").hidden = false;
      $("problem").textContent = err.message +
        (retry ? ": trying again every " + REFRESH_MS / 1000 + " s" + (shown ? " (the state below may be old)" : "") : "");
      if (!shown) $("title").textContent = "job " + id;
      if (retry) later();
    });
}

// the token of a shared link is kept as a cookie: out of the address bar, history, bookmarks
if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
load();
