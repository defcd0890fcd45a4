"""The web page of ``dahu_server --http``: a real server, real HTTP, a real headless Chromium.

The page is looked at as a person does (Debian's ``chromium``, installed by ``.ci/run``);
the JSON endpoints and the access rule are checked with plain HTTP requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import tornado
from tango.test_context import DeviceTestContext

import dahu.engine.core
from dahu.app.localserver import LocalServer
from dahu.errors import MAX_ERROR_CHARS
from dahu.server import DahuDS
from dahu.web import Monitor, WebError, WebService
from dahu.web.browser import Browser, find_chromium
from dahu.web.history import MAX_SHOWN
from dahu.web.monitor import BUCKET, RECENT, WINDOW, percentile, runtime_bin

from .conftest import child_env, finish


def http(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 10.0):
    """(status, headers, body text) of one request; errors are answers too."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def get_json(url: str, **kwargs):
    status, headers, body = http(url, **kwargs)
    assert headers["Content-Type"].startswith("application/json"), (status, body)
    return status, json.loads(body)


def wait_until(condition, timeout: float = 30.0, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition of another process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``dahu_server --http PORT`` (database-less), with its Tango proxy."""
    base = tmp_path_factory.mktemp("web")
    # a port the server picks as it binds (a port free when picked here could be taken
    # before the server bound it): its log says which
    local = LocalServer(
        str(base / "work"),
        str(base / "server.log"),
        max_workers=2,
        device="test/dahu/web",
        extra_args=["--http", "0"],
    )
    proxy = local.start(timeout=60)
    said = re.search(r"web page at (http://127\.0\.0\.1:\d+)/", (base / "server.log").read_text())
    assert said, (base / "server.log").read_text()[-2000:]
    local.http = said.group(1)
    try:
        yield local, proxy
    finally:
        assert local.stop() == 0, (base / "server.log").read_text()


@pytest.fixture(scope="module")
def jobs(server):
    """A success, a failure and an aborted job, ended."""
    local, proxy = server
    ok = proxy.startJob(["example.square", json.dumps({"x": 6})])
    bad = proxy.startJob(["example.error", json.dumps({"message": "detector on fire"})])
    slow = proxy.startJob(["example.sleep", json.dumps({"t": 60})])
    wait_until(lambda: proxy.getJobState(slow) == "running", what="the slow job to run")
    proxy.abort(slow)
    states = {job: finish(proxy, job) for job in (ok, bad, slow)}
    assert states == {ok: "success", bad: "failure", slow: "aborted"}
    return {"ok": ok, "bad": bad, "aborted": slow}


@pytest.fixture
def browser():
    if find_chromium() is None:
        pytest.skip("chromium is not installed and could not be (.ci/run installs Debian's)")
    with Browser(width=1400, height=1000) as b:
        yield b


def test_a_closed_browser_leaves_nothing_in_the_temporary_directory(monkeypatch):
    # bug: each browser left a directory of its own (org.chromium.Chromium.XXXXXX, its
    # singleton socket) in the temporary directory: hundreds after a few test runs
    if find_chromium() is None:
        pytest.skip("chromium is not installed and could not be (.ci/run installs Debian's)")
    # a short directory: a unix socket's path (chromium's, in there) is at most 107 bytes
    short = Path(tempfile.mkdtemp(prefix="dahu-t-", dir="/tmp"))
    try:
        monkeypatch.setenv("TMPDIR", str(short))
        monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
        with Browser(width=400, height=300) as b:
            assert b.profile.startswith(str(short))
            helpers = [psutil.Process(pid) for pid in b.pids()[1:]]
            assert helpers  # a network service, a renderer...
        # bug: its helper processes outlived it for a moment, writing into the removed
        # profile (half a profile left behind now and then)
        still = [p.pid for p in helpers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert still == []
        assert list(short.iterdir()) == []
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_browser_starts_under_a_long_temporary_directory(monkeypatch, tmp_path):
    # bug: chromium aborted as it started (status -6) when TMPDIR's path was longer than
    # about 38 bytes: its singleton socket in the profile did not fit a unix socket path
    if find_chromium() is None:
        pytest.skip("chromium is not installed and could not be (.ci/run installs Debian's)")
    long = tmp_path / ("x" * 60)
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with Browser(width=400, height=300) as b:
        assert b.evaluate("1 + 1") == 2


# ---- the page, in a browser ---------------------------------------------------------------
ROWS = "Array.from(document.querySelectorAll('#{table} tbody tr')).map(r => r.innerText)"


def has_row(table: str, job_id: int) -> str:
    """JavaScript: does the table have a row for this job (its first cell)?"""
    return (
        f"Array.from(document.querySelectorAll('#{table} tbody tr'))"
        f".some(r => r.cells[0].innerText.trim() === '{job_id}')"
    )


def rows(browser, table: str) -> list[str]:
    return browser.evaluate(ROWS.format(table=table))


def shows(browser, table: str, pattern: str) -> bool:
    found = rows(browser, table)
    assert any(re.search(pattern, row) for row in found), (pattern, found)
    return True


def test_page_shows_jobs_live_without_reload(server, browser):
    local, proxy = server
    browser.open(local.http + "/")
    browser.wait_for("document.getElementById('live').textContent.includes('server-sent')")
    browser.evaluate("window.notReloaded = true")  # gone if the page reloads
    before = int(
        browser.wait_for(
            "document.getElementById('c-finished').textContent.trim() !== '–' && document.getElementById('c-finished').textContent"
        )
    )

    ids = [proxy.startJob(["example.square", json.dumps({"x": x})]) for x in (2, 3)]
    bad = proxy.startJob(["example.error", json.dumps({"message": "beam lost on purpose"})])
    slow = proxy.startJob(["example.sleep", json.dumps({"t": 60})])

    # the running job appears with its elapsed time, which grows
    browser.wait_for(has_row("running", slow))
    first = [r for r in rows(browser, "running") if r.startswith(str(slow))][0]
    assert "example.sleep" in first and re.search(r"\d+(\.\d)? (ms|s)", first), first
    proxy.abort(slow)
    for job in (*ids, bad, slow):
        finish(proxy, job)

    # ended jobs: in the latest jobs with state and runtime, the failure with its reason
    browser.wait_for(has_row("failures", slow))
    assert shows(
        browser, "failures", rf"^{bad}\s+example\.error\s+failure\s+.*beam lost on purpose"
    )
    assert shows(browser, "failures", rf"^{slow}\s+example\.sleep\s+aborted\s+aborted by a client")
    for job in ids:
        assert shows(browser, "recent", rf"^{job}\s+example\.square\s+success\s+[\d.]+ (µs|ms)")
    assert not [r for r in rows(browser, "running") if r.startswith(f"{slow}\t")]
    finished = int(browser.text("#c-finished"))
    assert finished >= before + 4
    assert int(browser.text("#c-failed")) >= 1 and int(browser.text("#c-aborted")) >= 1
    plugins = " ".join(rows(browser, "plugins"))
    assert "example.error" in plugins and "beam lost on purpose" in plugins
    # the plots are drawn (one SVG per plot, with data)
    assert browser.evaluate("document.querySelectorAll('.chart .main-svg').length") >= 3
    assert browser.evaluate("document.getElementById('plot-rate').data[0].y.some(v => v > 0)"), (
        "no jobs/s plotted"
    )
    assert browser.evaluate("window.notReloaded === true"), "the page was reloaded"
    assert list(browser.errors) == []

    # the failure links to the full error, input and output
    href = browser.evaluate(f"document.querySelector('#failures a[href=\"jobs/{bad}\"]').href")
    browser.open(href)
    browser.wait_for("document.getElementById('error').textContent.includes('Traceback')")
    assert "beam lost on purpose" in browser.text("#error")
    assert json.loads(browser.text("#input"))["message"] == "beam lost on purpose"
    assert "failure" in browser.text("#info")
    assert list(browser.errors) == []


def test_page_falls_back_to_polling(server, browser):
    local, proxy = server
    browser.open(local.http + "/?transport=poll")
    browser.wait_for("document.getElementById('live').textContent.includes('polling')")
    job = proxy.startJob(["example.cube", json.dumps({"x": 4})])
    finish(proxy, job)
    browser.wait_for(has_row("recent", job))
    assert shows(browser, "recent", rf"^{job}\s+example\.cube\s+success")
    assert list(browser.errors) == []


VISIBLE_POINTS = (
    "Array.from(document.querySelectorAll('#plot-runtime .point'))"
    ".filter(p => p.getBBox().width > 0).length"
)


def test_runtimes_of_a_short_burst_are_drawn(engine, monkeypatch, browser):
    """A burst of jobs within one 10-s bucket, none before nor after: no line joins its
    percentiles to anything, yet they must be seen."""
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    summary = service.monitor.summary

    def one_burst():
        data = summary()
        t0 = data["series"]["t"][-1] - 20
        data["series"] = {
            "t": [t0, t0 + 10, t0 + 20],
            "jobs_per_s": [0, 500.0, 0],
            "failed_per_s": [0, 0, 0],
            **{p: [None, 0.002, None] for p in ("p50", "p90", "p99")},
            "queue": [0, 0, 0],
            "running": [0, 0, 0],
            "bucket": 10,
        }
        return data

    monkeypatch.setattr(service.monitor, "summary", one_burst)
    service.start()
    try:
        browser.open(f"http://127.0.0.1:{service.port}/")
        browser.wait_for(f"{VISIBLE_POINTS} === 3", timeout=10)  # p50, p90 and p99
        assert list(browser.errors) == []
    finally:
        service.stop()


def test_a_busy_server_just_started_shows_its_longest_running_and_a_bucket(
    engine, monkeypatch, browser
):
    """The running table says when it shows only some; and (bug) in the first 10 s of a
    server (one bucket to draw), Plotly's own range of the time axis was a millisecond:
    ticks read 14:25:19.999, 14:25:19.9995, 14:25:20..."""
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    summary = service.monitor.summary

    def busy():
        data = summary()
        data["counters"]["running"] = 64  # a big server: the summary lists the longest 30
        data["running"] = [
            {"id": i, "plugin": "p.q", "started": 0.0, "elapsed": 1.0} for i in range(1, 31)
        ]
        series = data["series"]  # one bucket, whatever the clock (a boundary may pass)
        data["series"] = {key: values[-1:] for key, values in series.items() if key != "bucket"}
        data["series"]["bucket"] = series["bucket"]
        return data

    monkeypatch.setattr(service.monitor, "summary", busy)
    service.start()
    try:
        browser.open(f"http://127.0.0.1:{service.port}/")
        browser.wait_for("document.querySelectorAll('#running tbody tr').length === 30", 10)
        assert browser.text("#n-running") == "(the 30 longest of 64)"
        plot = "document.getElementById('{}')"
        browser.wait_for(f"!!{plot.format('plot-queue')}._fullLayout", timeout=10)
        assert browser.evaluate(f"{plot.format('plot-rate')}.data[0].x.length") == 1
        span = "(r => r[1] - r[0])({}._fullLayout.xaxis.range.map(Date.parse))"
        for name in ("plot-rate", "plot-runtime", "plot-queue"):  # ms: a bucket at least
            assert browser.evaluate(span.format(plot.format(name))) >= 10_000, name
        assert list(browser.errors) == []
    finally:
        service.stop()


class Gateway:
    """A reverse proxy in front of the web server (as a beamline puts one for TLS): it
    passes requests on, or, after :meth:`fail` (the server restarting behind it), answers
    502 Bad Gateway until :meth:`recover`."""

    def __init__(self, backend_url: str, prefix: str = "") -> None:
        self.backend = int(backend_url.rsplit(":", 1)[1])
        self.prefix = prefix.encode()  # served under this path: /dahu/api/... -> /api/...
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.down = False
        self.refused = 0  # requests answered 502
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            self.sockets.append(client)
            down = self.down
        if down:
            with contextlib.suppress(OSError):
                client.recv(65536)
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                self.refused += 1
            self._cut([client])
            return
        backend = socket.create_connection(("127.0.0.1", self.backend))
        with self.lock:
            self.sockets.append(backend)
        threading.Thread(target=self._pipe, args=(backend, client), daemon=True).start()
        self._pipe(client, backend, self.prefix)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket, prefix: bytes = b"") -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if prefix:  # the request lines of a page's small requests come whole
                    data = re.sub(rb"^(GET|POST) /", rb"\1 /outside-the-proxy/", data, flags=re.M)
                    outside = rb"^(GET|POST) /outside-the-proxy" + re.escape(prefix)
                    data = re.sub(outside, rb"\1 ", data, flags=re.M)  # only PREFIX/... passes
                target.sendall(data)
        Gateway._cut([source, target])

    @staticmethod
    def _cut(sockets: list[socket.socket]) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def fail(self) -> None:
        """Cut every open connection and answer 502 from now on."""
        with self.lock:
            self.down = True
            self._cut(self.sockets)

    def recover(self) -> None:
        self.down = False

    def close(self) -> None:
        self.listener.close()
        self.fail()
        with self.lock:
            for sock in self.sockets:
                sock.close()


@pytest.fixture
def gateway(server):
    proxy = Gateway(server[0].http)
    yield proxy
    proxy.close()


LIVE = "document.getElementById('live').textContent"


def test_page_recovers_when_its_stream_was_refused_for_a_while(server, gateway, browser):
    _, proxy = server
    browser.open(gateway.url + "/")
    browser.wait_for(f"{LIVE}.includes('server-sent')")
    gateway.fail()  # the server restarts behind the proxy: 502 for a while
    browser.wait_for(f"{LIVE}.includes('reconnecting')")
    wait_until(lambda: gateway.refused >= 2, what="the page to ask again and be refused")
    job = proxy.startJob(["example.cube", json.dumps({"x": 5})])
    finish(proxy, job)
    gateway.recover()
    browser.wait_for(has_row("recent", job))  # live again, without a reload
    browser.wait_for(f"{LIVE} === 'live: server-sent events'")
    assert list(browser.errors) == []


def test_the_badge_does_not_flicker_while_the_server_is_down(server, gateway, browser):
    # bug: while the server was away, the reconnections wrote "reconnecting… (next try in
    # 4 s)" and the stale-check "reconnecting… no update for 6 s" into the badge in turn:
    # it changed its words (and width) every second, back and forth
    browser.open(gateway.url + "/")
    browser.wait_for(f"{LIVE}.includes('server-sent')")
    browser.evaluate(
        "window.badges = []; new MutationObserver(() => badges.push("
        f"{LIVE}.replace(/[0-9]+/g, '#'))).observe(document.getElementById('live'), "
        "{childList: true, characterData: true, subtree: true})"
    )
    gateway.fail()
    browser.wait_for(f"/no update for (1[2-9]|[2-9][0-9]) s/.test({LIVE})", 30)
    seen = browser.evaluate("badges.filter((b, i) => i === 0 || b !== badges[i - 1])")
    assert len(seen) == len(set(seen)), seen  # no wording comes back after another one
    assert seen[-1] == "reconnecting…, no update for # s", seen
    gateway.recover()
    browser.wait_for(f"{LIVE} === 'live: server-sent events'", 30)


def test_page_works_under_a_proxy_path(server, jobs, browser):
    """A reverse proxy that serves the page at https://host/dahu/ (as a facility's one
    front end for many servers): the page asks for its files and data under that path."""
    gateway = Gateway(server[0].http, prefix="/dahu")
    try:
        browser.open(gateway.url + "/dahu/")
        browser.wait_for(has_row("failures", jobs["bad"]), 20)
        assert "server-sent" in browser.text("#live")
        browser.evaluate(f"document.querySelector('#failures a[href$=\"/{jobs['bad']}\"]').click()")
        browser.wait_for(
            "(document.getElementById('error') || {textContent: ''}).textContent.includes('detector on fire')",
            20,
        )
        assert browser.evaluate("location.pathname") == f"/dahu/jobs/{jobs['bad']}"
        assert list(browser.errors) == []
    finally:
        gateway.close()


def test_job_page_keeps_refreshing_through_a_server_restart(server, gateway, browser):
    _, proxy = server
    job = proxy.startJob(["example.sleep", json.dumps({"t": 60})])
    try:
        browser.open(f"{gateway.url}/jobs/{job}")
        browser.wait_for("document.getElementById('info').innerText.includes('running')")
        gateway.fail()  # the server restarts behind the proxy
        browser.wait_for("!document.getElementById('problem').hidden")
        problem = browser.text("#problem")
    finally:
        proxy.abort(job)
    assert finish(proxy, job) == "aborted"
    gateway.recover()
    browser.wait_for("document.getElementById('info').innerText.includes('aborted')")
    assert browser.evaluate("document.getElementById('problem').hidden")
    assert "aborted by a client" in browser.text("#error")
    assert "trying again every 2 s" in problem, problem


def test_job_page_of_an_unknown_job_says_so(server, browser):
    local, _ = server
    browser.open(local.http + "/jobs/987654")
    browser.wait_for("!document.getElementById('problem').hidden")
    assert "no job 987654" in browser.text("#problem")


def test_job_page_wraps_a_long_reason(server, browser):
    local, proxy = server
    path = "/data/visitor/ma1234/id00/20261130/RAW_DATA/" + "sample_scan_0001/" * 20 + "x.h5"
    # ValueError: could not convert string to float: '/data/...' (example.error is others')
    job = proxy.startJob(["example.sleep", json.dumps({"t": path})])
    finish(proxy, job)
    browser.open(f"{local.http}/jobs/{job}")
    browser.wait_for("document.getElementById('info').innerText.includes('sample_scan')")
    # the page fits the window: no sideways scrolling to read the reason
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_job_page_names_the_time_zone_of_its_times(server, jobs, browser):
    # a user in Japan reading a job of a server in France: "10:00:01" alone was taken
    # for the server's time (dahu-jobs', the logs')
    local, _ = server
    browser.call("Emulation.setTimezoneOverride", timezoneId="Asia/Tokyo")
    browser.open(f"{local.http}/jobs/{jobs['ok']}")
    browser.wait_for("document.getElementById('info').innerText.includes('success')", 10)
    submitted = browser.evaluate("document.getElementById('info').rows[3].cells[1].innerText")
    _, details = get_json(f"{local.http}/api/jobs/{jobs['ok']}")
    tokyo = time.gmtime(details["submitted"] + 9 * 3600)
    assert submitted.endswith(time.strftime("%H:%M:%S GMT+9", tokyo)), submitted


def test_job_page_gives_a_long_runtime_in_seconds(server, browser):
    local, proxy = server
    job = proxy.startJob(["example.sleep", json.dumps({"t": 1.2})])
    finish(proxy, job)
    browser.open(f"{local.http}/jobs/{job}")
    browser.wait_for("document.getElementById('info').innerText.includes('runtime')", 10)
    shown = browser.evaluate("document.getElementById('info').rows[6].cells[1].innerText")
    assert re.fullmatch(r"1\.2\d\d s", shown), shown  # not 1200.345 ms


# ---- the JSON endpoints ------------------------------------------------------------------
def test_every_endpoint_answers_json(server, jobs):
    local, _ = server
    base = local.http
    status, index = get_json(base + "/api")
    assert status == 200 and "/api/summary" in index["endpoints"]

    status, counters = get_json(base + "/api/counters")
    assert status == 200
    assert counters["finished"] >= 3 and counters["failed"] >= 1 and counters["aborted"] >= 1
    assert counters["finished_last_hour"] >= 3 and counters["failed_last_hour"] >= 1

    status, summary = get_json(base + "/api/summary")
    assert status == 200
    assert set(summary) == {"counters", "running", "recent", "failures", "plugins", "series"}

    _, recent = get_json(base + "/api/jobs?limit=500")
    by_id = {j["id"]: j for j in recent["jobs"]}
    assert by_id[jobs["ok"]]["state"] == "success" and by_id[jobs["ok"]]["runtime"] > 0
    assert by_id[jobs["bad"]]["reason"].endswith("detector on fire")
    _, failed = get_json(base + "/api/jobs?state=failure&limit=5")
    assert failed["jobs"] and all(j["state"] == "failure" for j in failed["jobs"])
    _, spelled = get_json(base + "/api/jobs?state=Failure&limit=5")  # any case, as plugin=
    assert spelled["jobs"] == failed["jobs"]
    _, only = get_json(base + "/api/jobs?plugin=example.square")
    assert only["jobs"] and {j["plugin"] for j in only["jobs"]} == {"example.square"}
    _, spelled = get_json(base + "/api/jobs?plugin=Example.Square")
    assert [j["id"] for j in spelled["jobs"]] == [j["id"] for j in only["jobs"]]
    _, spaced = get_json(base + "/api/jobs?plugin=%20example.square%09")  # as the device
    assert [j["id"] for j in spaced["jobs"]] == [j["id"] for j in only["jobs"]]
    _, failures = get_json(base + "/api/failures?limit=100")
    assert {jobs["bad"], jobs["aborted"]} <= {j["id"] for j in failures["failures"]}

    _, plugins = get_json(base + "/api/plugins")
    error = plugins["plugins"]["example.error"]
    assert error["failure"] >= 1 and "detector on fire" in error["last_failure"]["reason"]
    assert plugins["plugins"]["example.square"]["p50_runtime"] > 0

    _, series = get_json(base + "/api/series?window=60")
    assert series["bucket"] == BUCKET and len(series["t"]) <= 60 // BUCKET + 1
    assert sum(series["jobs_per_s"]) > 0
    assert {"p50", "p90", "p99", "queue", "running", "failed_per_s"} <= set(series)

    _, running = get_json(base + "/api/running")
    assert running == {"running": []}


def test_queued_jobs_are_listed_as_starting(server):
    local, proxy = server
    jobs = [proxy.startJob(["example.sleep", json.dumps({"t": 60})]) for _ in range(3)]
    try:  # two job slots: the third waits
        running = lambda: [proxy.getJobState(j) for j in jobs[:2]] == ["running"] * 2  # noqa: E731
        wait_until(running, what="the first two jobs to run")
        assert proxy.getJobState(jobs[2]) == "starting"
        _, answer = get_json(local.http + "/api/jobs?state=starting")
        assert [(j["id"], j["state"]) for j in answer["jobs"]] == [(jobs[2], "starting")]
    finally:
        for job in jobs:
            proxy.abort(job)
        for job in jobs:
            finish(proxy, job)


def test_a_job_that_just_started_is_listed_as_running(engine, monkeypatch):
    # bug: a job running for under NOTE_RUNNING_AFTER (0.5 s) is still "uninitialized"
    # in the journal: /api/jobs?state=running missed it and ?state=starting dropped it
    # (its live state is running): it was listed under no state
    monkeypatch.setattr(dahu.engine.core, "NOTE_RUNNING_AFTER", 3600.0)  # that window, held
    from dahu.job import Job

    jobs = [Job("example.sleep", {"t": 60}) for _ in range(6)]  # four slots: two queued
    for job in jobs:
        job.start()
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    try:
        wait_until(lambda: [j.status for j in jobs[:4]] == ["running"] * 4, what="four to run")
        base = f"http://127.0.0.1:{service.port}/api/jobs"
        _, running = get_json(base + "?state=running&limit=3")
        _, starting = get_json(base + "?state=starting")
        assert [(j["id"], j["state"]) for j in running["jobs"]] == [
            (job.id, "running") for job in jobs[3:0:-1]
        ]
        assert [(j["id"], j["state"]) for j in starting["jobs"]] == [
            (job.id, "starting") for job in jobs[:3:-1]
        ]
    finally:
        service.stop()
        for job in jobs:
            job.abort()


def test_jobs_a_plugin_makes_are_counted_on_the_page(engine):
    # bug: the page counted only the jobs started through the device (its job callback
    # fed the page): a job a plugin made (Job(...) in its process(), run by the server's
    # engine) was in the device's counters and the journal, but not in the last hour's
    # counts, the latest jobs or the plugin table (a parent of 5 children: 6 succeeded,
    # 1 in the last hour)
    from dahu.job import Job

    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    try:
        job = Job("example.square", {"x": 4})  # made as a plugin makes one: no device
        job.start()
        job.join()
        _, counters = get_json(f"http://127.0.0.1:{service.port}/api/counters")
        _, summary = get_json(f"http://127.0.0.1:{service.port}/api/summary")
    finally:
        service.stop()
    assert (counters["succeeded"], counters["succeeded_last_hour"]) == (1, 1)
    assert [item["id"] for item in summary["recent"]] == [job.id]
    assert summary["plugins"]["example.square"]["jobs"] == 1


def test_job_endpoint_gives_error_input_and_output(server, jobs):
    base = server[0].http
    status, ok = get_json(f"{base}/api/jobs/{jobs['ok']}")
    assert status == 200
    assert ok["state"] == "success" and ok["output"]["result"] == 36 and ok["input"]["x"] == 6
    _, bad = get_json(f"{base}/api/jobs/{jobs['bad']}")
    assert bad["state"] == "failure" and bad["reason"].endswith("detector on fire")
    assert "Traceback" in bad["error"] and bad["input"]["message"] == "detector on fire"
    _, aborted = get_json(f"{base}/api/jobs/{jobs['aborted']}")
    assert aborted["state"] == "aborted" and aborted["reason"] == "aborted by a client"


def test_job_listings_search_the_journal_beyond_the_latest_jobs(server, jobs):
    local, proxy = server
    inputs = [{"x": x} for x in range(RECENT + 20)]  # more than the monitor keeps
    ids = [int(i) for i in proxy.startJobs(["example.square", json.dumps(inputs)])]
    assert {finish(proxy, job) for job in ids} == {"success"}
    base = local.http
    _, failed = get_json(base + "/api/jobs?state=failure&limit=1000")
    assert jobs["bad"] in [j["id"] for j in failed["jobs"]]
    assert {j["state"] for j in failed["jobs"]} == {"failure"}
    _, by_plugin = get_json(base + "/api/jobs?plugin=example.error")
    bad = [j for j in by_plugin["jobs"] if j["id"] == jobs["bad"]]
    assert bad and bad[0]["reason"].endswith("detector on fire")
    _, spelled = get_json(base + "/api/jobs?plugin=EXAMPLE.error")
    assert jobs["bad"] in [j["id"] for j in spelled["jobs"]]
    _, failures = get_json(base + "/api/failures?limit=1000")
    assert {jobs["bad"], jobs["aborted"]} <= {j["id"] for j in failures["failures"]}
    _, many = get_json(base + "/api/jobs?limit=1000")
    listed = [j["id"] for j in many["jobs"]]
    assert len(listed) > RECENT + 20 and set(ids) <= set(listed)
    assert listed == sorted(listed, reverse=True)  # the newest first


def test_the_plugin_filter_ignores_case_beyond_ascii(engine):
    # bug: /api/jobs?plugin=étude.fit missed the jobs a client sent as ÉTUDE.Fit (the
    # factory runs both, and the plugins table counts them as one)
    for name in ("ÉTUDE.Fit", "étude.fit", "etude.fit"):
        job_id = engine.journal.create(name, {}, time.time())
        engine.journal.finish(job_id, "success", {}, None, time.time(), time.time())
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    try:
        url = f"http://127.0.0.1:{service.port}/api/jobs?plugin=%C3%A9tude.FIT"
        _, found = get_json(url)
        assert [j["plugin"] for j in found["jobs"]] == ["étude.fit", "ÉTUDE.Fit"]
    finally:
        service.stop()


def strict_json(text: str):
    """Parse as a browser does: NaN and Infinity are not JSON."""

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_a_job_with_nan_and_infinity_can_be_viewed(server, browser):
    local, proxy = server
    job = proxy.startJob(["example.noop", '{"x": [1.5, NaN, Infinity, -Infinity]}'])
    assert finish(proxy, job) == "success"
    status, _, body = http(f"{local.http}/api/jobs/{job}")
    assert status == 200
    details = strict_json(body)
    expected = [1.5, "NaN", "Infinity", "-Infinity"]
    assert details["input"]["x"] == expected and details["output"]["result"] == expected
    # the job page shows the job, not a parse error
    browser.open(f"{local.http}/jobs/{job}")
    browser.wait_for("document.getElementById('output').textContent.includes('Infinity')")
    assert '"NaN"' in browser.text("#input") and '"-Infinity"' in browser.text("#output")
    assert browser.evaluate("document.getElementById('problem').hidden")
    assert list(browser.errors) == []


def test_a_huge_input_or_output_is_left_out_of_the_job_page(server, browser):
    local, proxy = server
    big = "x" * (MAX_SHOWN + 1000)
    job = proxy.startJob(["example.noop", json.dumps({"x": big})])  # output = input
    small = proxy.startJob(["example.noop", json.dumps({"x": big[:1000]})])
    assert finish(proxy, job) == finish(proxy, small) == "success"
    status, _, body = http(f"{local.http}/api/jobs/{job}")
    details = json.loads(body)
    assert status == 200 and len(body) < 10_000
    assert details["input"] is None and details["output"] is None
    assert details["omitted"]["input"] > MAX_SHOWN and details["omitted"]["output"] > MAX_SHOWN
    _, below = get_json(f"{local.http}/api/jobs/{small}")
    assert below["omitted"] == {} and below["output"]["result"] == big[:1000]
    browser.open(f"{local.http}/jobs/{job}")
    browser.wait_for("document.getElementById('output').textContent.includes('not shown')")
    assert "1.0 MB of JSON" in browser.text("#output")
    assert f"dahu-jobs show {job}" in browser.text("#input")


def test_a_huge_error_is_cut_on_the_job_page(server, browser):
    # bug: a plugin raising with a 5 MB message (a big list in it) gave a 15 MB answer:
    # the message as the reason, in the error, and the page trying to show all of it.
    # The job's error is now held to MAX_ERROR_CHARS when the job ends (its head and
    # tail kept): the page shows that whole; only the input, which holds the message,
    # is left out
    local, proxy = server
    message = "bad frame " * (MAX_SHOWN // 2)  # 5 MB on one line
    job = proxy.startJob(["example.error", json.dumps({"message": message})])
    assert finish(proxy, job) == "failure"
    status, _, body = http(f"{local.http}/api/jobs/{job}")
    details = json.loads(body)
    assert status == 200 and len(body) < 2 * MAX_ERROR_CHARS + 10_000
    assert details["omitted"]["input"] > len(message) and "error" not in details["omitted"]
    assert 10_000 < len(details["error"]) <= MAX_ERROR_CHARS
    assert "characters cut" in details["error"] and len(details["reason"]) < 1000
    browser.open(f"{local.http}/jobs/{job}")
    browser.wait_for("document.getElementById('error').textContent.includes('characters cut')")
    assert browser.text("#error").rstrip().endswith(details["error"].rstrip()[-100:])


def test_running_jobs_have_their_elapsed_time(server):
    local, proxy = server
    job = proxy.startJob(["example.sleep", json.dumps({"t": 60})])
    try:
        wait_until(lambda: proxy.getJobState(job) == "running", what="the job to run")

        def listed():
            return [
                j for j in get_json(local.http + "/api/running")[1]["running"] if j["id"] == job
            ]

        first = wait_until(listed, what="the job in /api/running")[0]
        later = wait_until(lambda: [j for j in listed() if j["elapsed"] > first["elapsed"]])[0]
        assert later["plugin"] == "example.sleep" and later["started"] == first["started"]
        _, details = get_json(f"{local.http}/api/jobs/{job}")
        assert details["state"] == "running"  # the live state, ahead of the journal
    finally:
        proxy.abort(job)
        finish(proxy, job)


def test_event_stream_sends_summaries(server, jobs):
    request = urllib.request.Request(server[0].http + "/api/events")
    with urllib.request.urlopen(request, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events = []
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
    assert events[0]["counters"]["finished"] >= 3
    assert events[1]["counters"]["time"] > events[0]["counters"]["time"]


def test_event_stream_is_standard_json_with_nan(engine, monkeypatch):
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    monkeypatch.setattr(service.monitor, "summary", lambda: {"p50": float("nan")})
    service.start()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{service.port}/api/events")
        with urllib.request.urlopen(request, timeout=10) as stream:
            data = next(line for line in stream if line.startswith(b"data: "))
        assert strict_json(data[6:].decode()) == {"p50": "NaN"}
    finally:
        service.stop()


def test_requests_do_not_fill_the_server_log(engine, caplog):
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    caplog.set_level(logging.INFO)
    caplog.clear()  # what the start said
    try:
        base = f"http://127.0.0.1:{service.port}"
        for path in ("/api/counters", "/api/summary", "/api/jobs/987654", "/favicon.ico"):
            http(base + path)  # what a page and a monitoring script ask all day long
    finally:
        service.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


def test_stopping_with_a_page_open_logs_no_error(engine, caplog):
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    request = urllib.request.Request(f"http://127.0.0.1:{service.port}/api/events")
    with urllib.request.urlopen(request, timeout=10) as stream:
        next(line for line in stream if line.startswith(b"data: "))  # the page is open
        service.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_stopping_closes_the_idle_connections_of_pages(engine):
    """A browser keeps its connection open between two requests (keep-alive): a stop
    left it open, so the page's next request waited for ever on a service that was gone
    (a page of a service stopped and started again in the same process never came back)."""
    import http.client

    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    connection.request("GET", "/api/counters")
    assert connection.getresponse().read()  # the connection stays open, idle
    service.stop()
    assert connection.sock.recv(100) == b""  # closed by the server (not a 10 s timeout)


@pytest.mark.parametrize(
    "path, status, reason",
    [
        ("/api/jobs/abc", 400, "a job id is an integer"),
        ("/api/jobs/0", 404, "no job 0"),
        ("/api/jobs/99999999", 404, "no job 99999999: job ids run from 1 to"),
        ("/api/jobs/" + "9" * 30, 404, f"no job {'9' * 30}: job ids run from 1 to"),
        ("/api/jobs/" + "9" * 5000, 404, "no job 99999999999999999999... (too many digits): job"),
        ("/api/jobs?limit=" + "9" * 5000, 400, "limit must be from 1 to 1000, not 99999999999999"),
        ("/api/jobs/-99999999", 404, "no job -99999999: job ids run from 1 to"),
        ("/api/jobs?limit=0", 400, "limit must be from 1 to 1000"),
        ("/api/jobs?limit=ten", 400, "limit must be an integer"),
        # bug: "limit must be an integer, not ''" (Tornado strips the blanks it was given)
        ("/api/jobs?limit=%20", 400, "limit is empty: give an integer from 1 to 1000"),
        ("/api/series?window=", 400, "window is empty: give an integer from 10 to 3600"),
        ("/api/jobs?state=exploded", 400, "state must be one of"),
        # bug: an empty plugin (a script's unset variable) answered no job at all, 200
        ("/api/jobs?plugin=", 400, "plugin must be a plugin name, not empty"),
        ("/api/jobs?plugin=%20", 400, "plugin must be a plugin name, not empty"),
        ("/api/running?limit=-3", 400, "limit must be from 1"),
        ("/api/failures?limit=1e9", 400, "limit must be an integer"),
        ("/api/series?window=5", 400, "window must be from 10 to 3600"),
        ("/api/series?window=x", 400, "window must be an integer"),
        # bug: Python's int() read these: /api/jobs/1_0 was job 10, a limit of '١٠' was 10
        ("/api/jobs/1_0", 400, "a job id is an integer, not '1_0'"),
        ("/api/jobs/%D9%A3", 400, "a job id is an integer, not '\u0663'"),
        ("/api/jobs?limit=1_0", 400, "limit must be an integer, not '1_0'"),
        ("/api/series?window=%EF%BC%91%EF%BC%90", 400, "window must be an integer"),
        ("/api/nothing", 404, "no such page"),
        ("/static/../server.py", 404, "no such page"),
        # bug: a static file that is not there was {"error": "Not Found"}, naming nothing
        ("/static/nothing.js", 404, "no such page: /static/nothing.js"),
        # bug: a parameter given twice kept the last one: only the aborted jobs were listed
        ("/api/jobs?state=failure&state=aborted", 400, "state is given 2 times: give it once"),
        ("/api/jobs?limit=5&limit=7", 400, "limit is given 2 times: give it once"),
        ("/api/jobs?plugin=a&plugin=b", 400, "plugin is given 2 times: give it once"),
        # bug: past Tornado's 64 KiB of headers, the connection closed without an answer
        ("/api/jobs?plugin=" + "x" * 70000, 431, "longer than 65536 bytes: ask with a shorter"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, jobs, path, status, reason):
    got, headers, body = http(server[0].http + path)
    assert got == status, body
    error = json.loads(body)["error"]
    assert reason in error and "\n" not in error and "Traceback" not in body


# Tornado reads a Host header since 6.5: before, two of them or host@evil.com went to the page
HOSTS = pytest.mark.skipif(tornado.version_info < (6, 5), reason="Tornado < 6.5 lets them pass")


@pytest.mark.parametrize(
    "head",
    [
        pytest.param("GET /api/counters HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n", marks=HOSTS),
        pytest.param("GET /api/counters HTTP/1.1\r\nHost: {host}@evil.com\r\n", marks=HOSTS),
        "GET /api/counters HTTP/1.1\r\nHost: {host}\r\nContent-Length: x\r\n",
        "GET /api/counters HTTP/1.1\r\nHost: {host}\r\nno colon here\r\n",
        "GARBAGE\r\n",
    ],
)
def test_a_request_that_is_not_http_gets_the_one_line_json_400(server, head):
    # bug: Tornado's own 400 for a request it could not read had an empty body
    host = server[0].http.split("//", 1)[1]
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=10) as connection:
        connection.sendall((head.format(host=host) + "\r\n").encode())
        answer = b""
        while chunk := connection.recv(65536):  # the server closes the connection
            answer += chunk
    status, body = answer.split(b"\r\n", 1)[0], answer.split(b"\r\n\r\n", 1)[1]
    assert status == b"HTTP/1.1 400 Bad Request"
    assert json.loads(body) == {"error": json.loads(body)["error"], "status": 400}
    assert json.loads(body)["error"].startswith("the request is not HTTP this server can read")


def test_a_damaged_row_is_shown_with_its_unreadable_field(server):
    # bug: a hand-edited input that is not JSON made /api/jobs/ID a JSONDecodeError
    local, proxy = server
    job = proxy.startJob(["example.square", json.dumps({"x": 7})])
    assert finish(proxy, job) == "success"
    path = os.path.join(local.workdir, "journal.sqlite")

    def set_input(text: str, runtime) -> None:
        with sqlite3.connect(path, timeout=30) as db:
            db.execute("UPDATE jobs SET input = ?, runtime = ? WHERE id = ?", (text, runtime, job))
        db.close()

    _, whole = get_json(f"{local.http}/api/jobs/{job}")
    set_input("{bad", "x")
    try:
        status, details = get_json(f"{local.http}/api/jobs/{job}")
        assert status == 200 and details["input"] is None and details["runtime"] is None
        assert details["unreadable"]["input"].startswith("not JSON (Expecting property name")
        assert details["output"]["result"] == 49
        _, listed = get_json(f"{local.http}/api/jobs?limit=1000")
        assert [item["runtime"] for item in listed["jobs"] if item["id"] == job] == [None]
    finally:  # the other tests' last job is whole again
        set_input('{"x": 7}', whole["runtime"])


def test_minus_one_is_the_last_job_as_for_the_device(server, jobs):
    # bug: /api/jobs/-1 answered 404 while the device's getJobInfo(-1) is the last job
    local, proxy = server
    last = json.loads(proxy.getJobInfo(-1))["id"]
    status, details = get_json(f"{local.http}/api/jobs/-1")
    assert status == 200 and details["id"] == last
    _, before = get_json(f"{local.http}/api/jobs/-2")
    assert before["id"] == last - 1


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_nothing_can_be_changed_through_the_page(server, jobs, method):
    local, proxy = server
    for path in ("/api/jobs", f"/api/jobs/{jobs['ok']}", "/api/summary", "/"):
        status, _, body = http(local.http + path, method=method)
        assert status == 405 and "read-only" in json.loads(body)["error"], (path, body)
    assert proxy.getJobState(jobs["ok"]) == "success"


def test_served_on_loopback_only_and_not_to_other_host_names(server):
    local, _ = server
    port = int(local.http.rsplit(":", 1)[1])
    listening = [
        c.laddr
        for c in psutil.Process(local.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert [addr.ip for addr in listening] == ["127.0.0.1"]
    status, _, body = http(local.http + "/api/counters", headers={"Host": "attacker.example"})
    assert status == 403 and "refused" in body
    # bug: host names are not case-sensitive, but "curl http://LOCALHOST:PORT/" got 403
    status, _, body = http(local.http + "/api/counters", headers={"Host": f"LocalHost:{port}"})
    assert status == 200, body


# ---- the access token ---------------------------------------------------------------------
def test_a_non_loopback_bind_without_a_token_is_refused():
    with pytest.raises(WebError, match="needs an access token"):
        WebService("0.0.0.0:0", token=None)
    with pytest.raises(WebError, match="at least 16 characters"):
        WebService("127.0.0.1:0", token="short")
    with pytest.raises(WebError, match="expected PORT or HOST:PORT"):
        WebService("127.0.0.1:http")
    # bug: the error quoted what followed the last colon: "web address ''", "'8080/'"
    for address in ("localhost:", "[::1]", "http://127.0.0.1:8080/"):
        with pytest.raises(WebError) as info:
            WebService(address)
        assert str(info.value) == f"web address {address!r}: expected PORT or HOST:PORT"


def start_server(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    # Tango's port picked as it binds: a port free when picked here could be taken
    # before the server bound it (these tests do not call the device)
    command = [
        sys.executable,
        "-m",
        "dahu.app.server",
        "tok",
        "-nodb",
        "-port",
        "0",
        "-dlist",
        "test/dahu/token",
        "--workdir",
        str(tmp_path / "work"),
        *args,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env or child_env(),
    )


def web_port(line: str) -> int:
    """The port of the page in the server's line ``web page at http://HOST:PORT/...``."""
    return int(re.search(r"web page at http://\S+?:(\d+)/", line).group(1))


def read_stderr_until(process: subprocess.Popen, pattern: str, timeout: float = 60.0) -> str:
    """Lines of the server's stderr up to the one matching ``pattern``."""
    deadline = time.monotonic() + timeout
    seen = []
    for line in process.stderr:
        seen.append(line)
        if re.search(pattern, line):
            return line
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError("server exited: " + "".join(seen))


def test_other_address_gets_a_generated_token_and_refuses_requests_without_it(tmp_path):
    process = start_server(tmp_path, "--http", "0.0.0.0:0")  # a port it picks as it binds
    try:
        line = read_stderr_until(process, r"web page at http://")
        port = web_port(line)
        token = re.search(r"\?token=([\w-]+)", line).group(1)
        assert len(token) >= 16
        base = f"http://127.0.0.1:{port}"
        read_stderr_until(process, r"ready")
        for path in ("/", "/api/counters", "/api/events", "/static/dashboard.js"):
            status, _, body = http(base + path)
            assert status == 401 and "access token is required" in body, path
        assert http(base + "/api/counters?token=" + "x" * len(token))[0] == 401
        status, headers, _ = http(f"{base}/?token={token}")
        assert status == 200 and f"dahu_token_{port}=" in headers["Set-Cookie"]
        assert "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert http(base + "/api/counters", headers={"Cookie": cookie})[0] == 200
        bearer = {"Authorization": f"Bearer {token}"}
        assert http(base + "/api/summary", headers=bearer)[0] == 200
        # not a loopback server: any host name is fine once the token is given
        assert http(base + "/api/summary", headers={**bearer, "Host": "beamline"})[0] == 200
    finally:
        process.terminate()
        process.wait(30)


def test_given_token_is_required_on_loopback_too(tmp_path, browser):
    token = "beamline-secret-0123456789"
    process = start_server(tmp_path, "--http", "0", env=child_env(DAHU_HTTP_TOKEN=token))
    try:
        line = read_stderr_until(process, r"web page at http://")
        assert token in line
        port = web_port(line)
        read_stderr_until(process, r"ready")
        base = f"http://127.0.0.1:{port}"
        assert http(base + "/api/counters")[0] == 401
        # the page opened with the token works, and its own requests carry it (cookie)
        browser.open(f"{base}/?token={token}")
        browser.wait_for("document.getElementById('live').textContent.includes('server-sent')")
        assert "token" not in browser.evaluate("location.href")
        assert list(browser.errors) == []
    finally:
        process.terminate()
        process.wait(30)


def test_the_printed_address_of_a_wildcard_bind_answers(engine):
    for wildcard in ("0.0.0.0", "[::]"):
        try:
            service = WebService(f"{wildcard}:0", token="t" * 16)
        except WebError:  # a machine without IPv6
            assert wildcard == "[::]"
            continue
        service.monitor.attach(engine)
        service.start()
        try:
            assert http(service.url)[0] == 200, service.url
        finally:
            service.stop()


@pytest.mark.parametrize(
    "token",
    ["ab+cd/ef=gh+ij/kl=mnopq==", "my secret pass phrase; été 123"],  # openssl rand -base64
)
def test_the_printed_address_works_with_any_token(engine, token):
    service = WebService("127.0.0.1:0", token=token)
    service.monitor.attach(engine)
    service.start()
    try:
        status, headers, _ = http(service.url)  # the address dahu_server prints
        assert status == 200
        cookie = headers["Set-Cookie"].split(";")[0]
        assert (
            http(service.url.split("?")[0] + "api/counters", headers={"Cookie": cookie})[0] == 200
        )
    finally:
        service.stop()


def test_a_job_link_with_the_token_drops_it_from_the_address_bar(engine, browser):
    token = "beamline-secret-0123456789"
    service = WebService("127.0.0.1:0", token=token)
    service.monitor.attach(engine)
    service.start()
    try:
        browser.open(f"http://127.0.0.1:{service.port}/jobs/1?token={token}")
        browser.wait_for("document.getElementById('problem').textContent.includes('no job 1')")
        assert browser.evaluate("location.href") == f"http://127.0.0.1:{service.port}/jobs/1"
    finally:
        service.stop()


def test_two_servers_of_one_machine_keep_their_own_tokens(engine, browser):
    """Cookies are shared by every port of a host: the page of one server must not lose
    its token when the page of another one is opened."""
    services = [WebService("127.0.0.1:0", token=f"secret-of-server-{n}-0123") for n in (1, 2)]
    for service in services:
        service.monitor.attach(engine)
        service.start()
    try:
        for service in services:
            browser.open(f"http://127.0.0.1:{service.port}/?token={service.token}")
            browser.wait_for("document.getElementById('live').textContent.includes('live')")
        first = services[0]
        browser.open(f"http://127.0.0.1:{first.port}/jobs/1")  # a link of the first page
        assert "401" not in browser.evaluate("document.body.innerText")  # its token works
        browser.wait_for("document.getElementById('problem').textContent.includes('no job 1')")
    finally:
        for service in services:
            service.stop()


@pytest.fixture
def counted_requests(monkeypatch):
    """The paths of the requests the web services of this process answer."""
    import dahu.web.app

    asked: list[str] = []
    prepare = dahu.web.app._Base.prepare

    def counted(handler):
        asked.append(handler.request.path)
        return prepare(handler)

    monkeypatch.setattr(dahu.web.app._Base, "prepare", counted)
    return asked


@pytest.mark.parametrize("transport", ["", "&transport=poll"])
def test_a_page_whose_token_changed_says_so_and_stops(engine, browser, counted_requests, transport):
    """The server restarted with a new generated token while the page stayed open: the
    page said "reconnecting" and asked again forever, all day; it must say that access is
    refused and stop asking."""
    asked = counted_requests
    first = WebService("127.0.0.1:0", token="the-first-token-0123")
    first.monitor.attach(engine)
    first.start()
    browser.open(first.url + transport)
    browser.wait_for(f"{LIVE}.startsWith('live')")
    first.stop()
    restarted = WebService(f"127.0.0.1:{first.port}", token="a-new-generated-token-4567")
    restarted.monitor.attach(engine)
    restarted.start()
    try:
        browser.wait_for("!document.getElementById('refused').hidden", 30)
        said = browser.text("#refused")
        assert "access token has changed" in said and "HTTP 401" in said, said
        assert "updates stopped" in browser.text("#live")
        before = len(asked)
        time.sleep(2.5)  # nothing must come: the page asked again after 1 s, then 2 s, ...
        assert len(asked) == before, asked[before:]
        assert browser.text("#live") == "access refused: updates stopped"
    finally:
        restarted.stop()


def test_a_page_with_the_new_token_beside_a_refused_one_goes_live(engine, browser):
    # bug: a page refused after a restart with a new token still said every second that
    # it streamed for the others: a page opened with the new token followed it, and
    # stayed at "connecting…" for good
    first = WebService("127.0.0.1:0", token="the-first-token-0123")
    first.monitor.attach(engine)
    first.start()
    browser.open(first.url)  # the page that streams
    browser.wait_for(f"{LIVE}.startsWith('live')")
    first.stop()
    restarted = WebService(f"127.0.0.1:{first.port}", token="a-new-generated-token-4567")
    restarted.monitor.attach(engine)
    restarted.start()
    try:
        browser.wait_for("!document.getElementById('refused').hidden", 30)
        browser.call("Target.createTarget", url=restarted.url, newWindow=True)  # new token
        wait_until(lambda: restarted.broadcaster.clients, 20, "the new page's stream")
    finally:
        restarted.stop()


def test_jobs_of_another_day_show_their_date(engine, monkeypatch, browser):
    # bug: after a restart, the latest jobs (read from the journal) ended three days ago
    # read "03:40:52" only, as if they had ended today
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    summary = service.monitor.summary
    now = time.time()
    jobs = [
        {"id": n, "plugin": "p.q", "state": "success", "runtime": 1.0, "ended": ended}
        for n, ended in ((2, now), (1, now - 3 * 86400))
    ]

    def restarted():
        return {**summary(), "recent": jobs}

    monkeypatch.setattr(service.monitor, "summary", restarted)
    service.start()
    try:
        browser.open(f"http://127.0.0.1:{service.port}/")
        browser.wait_for("document.querySelectorAll('#recent tbody tr').length === 2", 10)
        ended = browser.evaluate(
            "Array.from(document.querySelectorAll('#recent tbody tr')).map(r => r.cells[4].innerText)"
        )
        day = f"new Date({jobs[1]['ended'] * 1000}).toLocaleDateString([], {{month: 'short', day: 'numeric'}})"
        assert ended[1].startswith(browser.evaluate(day) + " "), ended
        assert re.fullmatch(r"\d\d:\d\d:\d\d", ended[0]), ended  # today: the time only
    finally:
        service.stop()


def test_many_tabs_of_the_page_leave_room_for_one_more(engine, browser, counted_requests):
    """A browser opens at most 6 connections to a server and each open page held one for
    its event stream: with 6 tabs of the page (in the background), a 7th tab, a job page,
    did not even load.  A hidden tab now holds no stream."""
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    url = f"http://127.0.0.1:{service.port}/"
    try:
        for _ in range(6):
            browser.call("Target.createTarget", url=url, background=True)  # hidden tabs
        wait_until(lambda: counted_requests.count("/static/plotly.min.js") == 6, 60)
        browser.open(url)  # the 7th tab
        browser.wait_for(f"{LIVE}.startsWith('live')", 20)
        assert len(service.broadcaster.clients) == 1
        # this tab hidden (another one in front): its stream goes after 5 s, and comes
        # back when it is shown again
        this = browser.call("Target.getTargetInfo")["targetInfo"]["targetId"]
        browser.call("Target.createTarget", url="about:blank")
        wait_until(
            lambda: not service.broadcaster.clients, 20, "the hidden tab to close its stream"
        )
        assert browser.text("#live") == "paused while this tab is hidden"
        browser.call("Target.activateTarget", targetId=this)
        browser.wait_for(f"{LIVE} === 'live: server-sent events'", 20)
        assert len(service.broadcaster.clients) == 1 and list(browser.errors) == []
    finally:
        service.stop()


def test_pages_shown_at_once_share_one_stream(engine, browser, counted_requests):
    """Six pages shown at once (windows side by side on a control-room screen) held the
    browser's six connections to the server: a seventh, or a job page, did not load.
    The tabs of one browser now share one stream: the one that streams passes each
    summary on to the others, and another one takes over when it is closed."""
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    url = f"http://127.0.0.1:{service.port}/"
    try:
        windows = [
            browser.call("Target.createTarget", url=url, newWindow=True)["targetId"]
            for _ in range(6)
        ]
        wait_until(lambda: counted_requests.count("/static/plotly.min.js") == 6, 60)
        browser.open(url)  # the 7th page, shown too
        browser.wait_for(f"{LIVE}.startsWith('live')", 20)
        assert browser.evaluate("document.visibilityState") == "visible"
        # one stream for the seven (under load a page may take over from a leader slow to
        # pass a summary on: two streams for a moment, then one again)
        wait_until(lambda: len(service.broadcaster.clients) == 1, 20, "one stream")
        for target in windows:  # the one streaming goes too: another one takes over
            browser.call("Target.closeTarget", targetId=target)
        wait_until(lambda: len(service.broadcaster.clients) == 1, 20, "a new stream")
        browser.wait_for(f"{LIVE} === 'live: server-sent events'", 20)
        assert list(browser.errors) == []
    finally:
        service.stop()


def test_a_hidden_job_page_does_not_refresh(engine, browser, counted_requests):
    """A job page of a running job refreshes every 2 s, and the server reads and encodes
    its input and output (up to 2 MB) each time: left in the background for hours, it
    did so all along.  Hidden, it waits; shown again, it refreshes at once."""
    from dahu.job import Job

    job = Job("example.sleep", {"t": 60, "data": "x" * 100_000})
    job.start()
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    service.start()
    path = f"/api/jobs/{job.id}"
    try:
        browser.open(f"http://127.0.0.1:{service.port}/jobs/{job.id}")
        browser.wait_for("document.getElementById('info').innerText.includes('running')", 20)
        this = browser.call("Target.getTargetInfo")["targetInfo"]["targetId"]
        browser.call("Target.createTarget", url="about:blank")  # in front of the job page
        browser.wait_for("document.hidden", 10)
        before = counted_requests.count(path)
        time.sleep(6.5)  # three refresh periods: nothing must be asked
        assert counted_requests.count(path) <= before + 1  # one already on its way at most
        job.abort()
        job.join(30)
        browser.call("Target.activateTarget", targetId=this)
        browser.wait_for("document.getElementById('info').innerText.includes('aborted')", 20)
    finally:
        job.abort()
        service.stop()


def test_reloading_a_page_whose_token_changed_says_what_to_do(engine):
    # bug: after a restart with a new token, reloading the page showed raw JSON
    service = WebService("127.0.0.1:0", token="a-new-generated-token-4567")
    service.monitor.attach(engine)
    service.start()
    try:
        base = f"http://127.0.0.1:{service.port}"
        cookie = {"Cookie": f"dahu_token_{service.port}=the-first-token-0123"}
        for path in ("/", "/jobs/1"):
            status, headers, body = http(base + path, headers=cookie)
            assert status == 401 and headers["Content-Type"].startswith("text/html")
            assert "access token is required" in body and "new token" in body
        status, headers, _ = http(base + "/api/counters", headers=cookie)
        assert status == 401 and headers["Content-Type"].startswith("application/json")
    finally:
        service.stop()


def test_the_page_fits_a_phone(engine, monkeypatch, browser):
    """375 px wide: the page scrolled sideways (the plugin and failure tables); now a
    table wider than the screen scrolls inside its panel, the page does not."""
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    summary = service.monitor.summary

    def busy():
        data = summary()
        plugin = "id00.azimuthal_integration_multi_geometry"
        job = {"id": 123456, "plugin": plugin, "state": "failure", "runtime": 4e-6}
        job.update(ended=time.time(), reason="ValueError: " + "no beam on the sample " * 8)
        data["recent"], data["failures"] = [job] * 15, [job] * 15
        data["running"] = [{"id": 1234567, "plugin": plugin, "started": 0.0, "elapsed": 86400}]
        stats = {"jobs": 123456, "success": 100000, "failure": 23450, "aborted": 6}
        stats.update(mean_runtime=4e-6, p50_runtime=3.5e-7, p95_runtime=1234.5)
        data["plugins"] = {plugin: {**stats, "last_ended": time.time(), "last_failure": job}}
        return data

    monkeypatch.setattr(service.monitor, "summary", busy)
    service.start()
    try:
        browser.viewport(375, 800)
        browser.open(f"http://127.0.0.1:{service.port}/")
        browser.wait_for("document.querySelectorAll('#plugins tbody tr td').length > 3", 10)
        assert browser.evaluate("document.documentElement.scrollWidth") <= 375
        # runtimes of a few µs (and under one) are not written 0
        assert (
            browser.evaluate("document.querySelector('#recent tbody tr').cells[3].innerText")
            == "4 µs"
        )
        cells = browser.evaluate(
            "Array.from(document.querySelector('#plugins tbody tr').cells).map(c => c.innerText)"
        )
        assert cells[5:8] == ["4 µs", "0.35 µs", "20 min 34 s"], cells
        assert list(browser.errors) == []
    finally:
        service.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--http", "0.0.0.0:1", "--http-token", "short"], "at least 16 characters"),
        (["--http", "localhost:notaport"], "expected PORT or HOST:PORT"),
        # bug: --http "$ADDR" with ADDR unset served no page, without a word
        (["--http", ""], "argument --http: web address '': expected PORT or HOST:PORT"),
    ],
)
def test_bad_web_options_stop_the_server_in_one_line(tmp_path, args, message):
    process = start_server(tmp_path, *args)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2  # bad usage, as for dahu-register (was 1, or served)
    assert err.strip().splitlines()[-1].startswith("dahu_server: ") and message in err


def test_a_busy_port_is_reported_at_start(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        process = start_server(tmp_path, "--http", str(port))
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"cannot serve the web page on 127.0.0.1:{port}" in err


def speaks_http(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def test_without_http_nothing_but_tango_listens(tmp_path):
    server = LocalServer(str(tmp_path / "work"), str(tmp_path / "server.log"), device="t/w/1")
    proxy = server.start(timeout=60)
    try:
        assert proxy.getJobState(proxy.startJob(["example.square", "{}"])) in (
            "starting",
            "running",
            "success",
        )
        ports = {
            c.laddr.port
            for c in psutil.Process(server.process.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert server.port in ports
        assert not [port for port in ports if speaks_http(port)]
    finally:
        assert server.stop() == 0


def test_device_property_serves_the_page(tmp_path):
    properties = {"workdir": str(tmp_path / "work"), "http": "127.0.0.1:0"}  # picked as bound
    with DeviceTestContext(DahuDS, process=True, properties=properties, timeout=60) as proxy:
        port = int(re.search(r"web page: http://127\.0\.0\.1:(\d+)/", proxy.status()).group(1))
        job = proxy.startJob(["example.square", json.dumps({"x": 9})])
        finish(proxy, job)
        status, details = get_json(f"http://127.0.0.1:{port}/api/jobs/{job}")
        assert status == 200 and details["output"]["result"] == 81
        _, recent = get_json(f"http://127.0.0.1:{port}/api/jobs")
        assert recent["jobs"][0]["id"] == job
        assert f"web page: http://127.0.0.1:{port}/" in proxy.status()


def test_status_gives_a_usable_ipv6_address(engine):
    from types import SimpleNamespace

    from dahu.server_status import status_text

    text = status_text(engine, SimpleNamespace(host="::1", port=8080), 1000, "", "")
    assert "web page: http://[::1]:8080/" in text


def test_status_says_why_the_page_of_the_http_property_is_not_served(engine, monkeypatch):
    # bug: a page the http property asked for that could not be served (its port busy)
    # was said in the log only: Status gave no word of a page
    import socket

    from dahu import server_settings
    from dahu.server_status import status_text

    monkeypatch.setattr(server_settings, "_web", None)  # no page served in this process
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        assert server_settings.attach_web(engine, address, "") is None
        lines = status_text(engine, None, 1000, "", "").splitlines()
    assert lines[1].startswith("no web page: ") and address in lines[1], lines
    assert server_settings.attach_web(engine, "", "") is None  # the property taken out
    assert "web page" not in status_text(engine, None, 1000, "", "")


def test_device_property_page_takes_the_token_of_the_environment(tmp_path, monkeypatch):
    token = "beamline-secret-0123456789"
    monkeypatch.setenv("DAHU_HTTP_TOKEN", token)  # the documented default of the token
    properties = {"workdir": str(tmp_path / "work"), "http": "127.0.0.1:0"}  # picked as bound
    with DeviceTestContext(DahuDS, process=True, properties=properties, timeout=60) as proxy:
        port = int(re.search(r"web page: http://127\.0\.0\.1:(\d+)/", proxy.status()).group(1))
        base = f"http://127.0.0.1:{port}"
        assert http(base + "/api/counters")[0] == 401
        assert http(base + "/api/counters", headers={"Authorization": f"Bearer {token}"})[0] == 200


# ---- the monitor's bounded memory ----------------------------------------------------------
class FakeJob:
    def __init__(self, job_id: int, state: str, runtime: float, plugin: str = "p.q"):
        self.id, self.status, self.runtime, self.name = job_id, state, runtime, plugin
        self.error = "" if state == "success" else f"ValueError: job {job_id}\nTraceback ..."


def test_percentiles_are_within_their_bin():
    histogram: dict[int, int] = {}
    values = [0.001 * (1 + i) for i in range(1000)]  # 1 ms ... 1 s
    for value in values:
        index = runtime_bin(value)
        histogram[index] = histogram.get(index, 0) + 1
    for fraction in (0.5, 0.9, 0.99):
        exact = values[int(fraction * len(values)) - 1]
        assert abs(percentile(histogram, fraction) / exact - 1) < 0.13
    assert percentile({}, 0.5) is None


def test_one_plugin_row_however_its_jobs_spell_it():
    monitor = Monitor()
    for job_id, name in enumerate(["EXAMPLE.Square", "example.square", "Example.Square"], 1):
        monitor.job_ended(FakeJob(job_id, "success", 0.002, plugin=name))
    plugins = monitor.plugins()
    assert list(plugins) == ["example.square"] and plugins["example.square"]["jobs"] == 3


def test_monitor_memory_is_bounded_over_hours():
    now = [1_000_000.0]
    monitor = Monitor(clock=lambda: now[0])
    job_id = 0
    for _second in range(2 * WINDOW):  # two hours, ten jobs a second
        for _ in range(10):
            job_id += 1
            state = "failure" if job_id % 100 == 0 else "success"
            monitor.job_ended(FakeJob(job_id, state, 0.002))
        now[0] += 1.0
    assert sum(b is not None for b in monitor._ring) <= WINDOW // BUCKET
    assert len(monitor.recent(10_000)) == RECENT
    series = monitor.series()
    assert len(series["t"]) == WINDOW // BUCKET
    assert 9 <= series["jobs_per_s"][-2] <= 11  # a full bucket: ten jobs a second
    assert abs(series["p50"][-2] / 0.002 - 1) < 0.13
    counters = monitor.counters()
    assert counters["finished_last_hour"] <= 10 * (WINDOW + BUCKET)
    assert counters["failed_last_hour"] == pytest.approx(
        counters["finished_last_hour"] / 100, rel=0.05
    )
    failures = monitor.failures(5)
    assert failures[0]["reason"] == f"ValueError: job {job_id // 100 * 100}"


def test_a_page_that_stops_reading_is_disconnected(engine, monkeypatch):
    """A stalled event stream is dropped instead of piling up in the server's memory."""
    import dahu.web.app

    monkeypatch.setattr(dahu.web.app, "STALLED_PUSHES", 3)
    service = WebService("127.0.0.1:0")
    service.monitor.attach(engine)
    big = {"padding": "x" * 2_000_000}  # each event fills the socket's buffers at once
    monkeypatch.setattr(service.monitor, "summary", lambda: big)
    service.start()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", service.port))
            sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            wait_until(lambda: service.broadcaster.clients, 10, "the stream to open")
            # never read: the server gives up on this page within a few pushes
            wait_until(lambda: not service.broadcaster.clients, 30, "the page to be dropped")
            assert service.broadcaster.sent >= 3
    finally:
        service.stop()
