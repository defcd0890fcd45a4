"""Benchmark of the web page's cost to the server: prints JSON.

Starts a database-less ``dahu_server --http`` and keeps it under a steady load of
``--rate`` jobs per second (``example.square`` submitted by ``startJobs`` every 0.1 s
from this process).  Then, alternately, for ``--phase`` seconds each and ``--rounds``
times, the page is closed (the browser shows ``about:blank``) or open in headless
Chromium, and the server's CPU time is read from ``/proc`` (psutil):

* ``server_cpu_closed_pct`` / ``server_cpu_open_pct``: the server's CPU, in % of one
  core, page closed / open (medians of the rounds); ``page_cost_pct``: the median of the
  per-round differences, the page's cost;
* ``no_http_cpu_pct`` (``--baseline``): the same load on a server without ``--http``,
  so ``http_cost_pct`` is the cost of counting the jobs for the page at all;
* ``browser_cpu_pct``: Chromium's own CPU while the page is open (not the server's);
* the soak: the page stays open ``--soak`` seconds (``--full``: 30 minutes) under the
  same load; the server's RSS and the page's JavaScript heap (after a garbage
  collection) are sampled, at the start and at the end.

    python bench/dashboard.py [--rate 1000] [--phase 20] [--rounds 3] [--soak 300]
    python bench/dashboard.py --full          # the 30-minute soak
    python bench/dashboard.py --small         # a few seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

# bench/tango.py is named like PyTango's package: keep this directory out of the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import psutil  # noqa: E402
import tango  # noqa: E402

from dahu.app.localserver import LocalServer, free_port  # noqa: E402
from dahu.web.browser import Browser, find_chromium  # noqa: E402

DEVICE = "id00/dahu/dashboard"
TICK = 0.1  # seconds between two startJobs calls


class Load(threading.Thread):
    """Submits ``rate`` jobs per second in batches every :data:`TICK` s until stopped."""

    def __init__(self, url: str, rate: int) -> None:
        super().__init__(name="load", daemon=True)
        self.proxy = tango.DeviceProxy(url)
        self.proxy.set_timeout_millis(10000)
        self.batch = max(1, round(rate * TICK))
        self.payload = json.dumps([{"x": i} for i in range(self.batch)])
        self.stop_event = threading.Event()
        self.submitted = 0
        self.late = 0  # ticks that could not be kept: the server did not keep up

    def run(self) -> None:
        start = time.monotonic()
        tick = 0
        while not self.stop_event.is_set():
            self.proxy.startJobs(["example.square", self.payload])
            self.submitted += self.batch
            tick += 1
            delay = start + tick * TICK - time.monotonic()
            if delay < 0:
                self.late += 1
            elif self.stop_event.wait(delay):
                return

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            found[pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings (a process that ended counts for nothing
    after its last reading; a new one for all it used)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def web_thread_cpu(page: str | None) -> float:
    """CPU seconds of the server's web thread (every request and push runs there)."""
    if page is None:
        return 0.0
    with urllib.request.urlopen(page + "api", timeout=10) as response:
        return json.load(response)["web_thread_cpu_s"]


def measure(
    server_pid: int, seconds: float, other: list[int] | None = None, page: str | None = None
) -> dict:
    """CPU of the server, of its web thread and of ``other`` processes, % of one core,
    over ``seconds``."""
    browser = other[0] if other else None
    web0 = web_thread_cpu(page)
    wall0, cpu0 = time.monotonic(), cpu_seconds([server_pid])
    oth0 = cpu_by_pid(browser_pids(browser))
    time.sleep(seconds)  # the measurement window itself
    wall = time.monotonic() - wall0
    return {
        "server": 100 * (cpu_seconds([server_pid]) - cpu0) / wall,
        "web": 100 * (web_thread_cpu(page) - web0) / wall,
        "other": 100 * spent(oth0, cpu_by_pid(browser_pids(browser))) / wall,
    }


def browser_pids(root: int | None) -> list[int]:
    """The browser's process and all its children, now."""
    if root is None:
        return []
    try:
        process = psutil.Process(root)
        return [root, *(child.pid for child in process.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def job_ended_cost(jobs: int = 200_000) -> float:
    """Microseconds the monitor spends per ended job (``Monitor.run_ended``, which the
    engine calls on the thread that ends the job)."""
    from dahu.web.monitor import Monitor

    class Ended:  # what run_ended reads of a JobRun
        def __init__(self, job_id: int) -> None:
            self.id, self.plugin_name = job_id, "example.square"
            self.started, self.ended = 1000.0, 1000.0 + 2e-5 * (1 + job_id % 9)
            self.state = "failure" if job_id % 100 == 0 else "success"
            self.error = "ValueError: no\nTraceback" if self.state == "failure" else ""

    monitor = Monitor()
    sample = [Ended(i) for i in range(1000)]
    started = time.perf_counter()
    for _ in range(jobs // len(sample)):
        for run in sample:
            monitor.run_ended(run)
    return 1e6 * (time.perf_counter() - started) / jobs


def finished(proxy: tango.DeviceProxy) -> int:
    return int(proxy.read_attribute("jobsFinished").value)


def run_server(base: str, name: str, http_port: int | None, workdir: str | None) -> LocalServer:
    args = ["--http", str(http_port)] if http_port else []
    work = os.path.join(workdir or base, f"work-{name}")
    server = LocalServer(work, os.path.join(base, f"{name}.log"), device=DEVICE, extra_args=args)
    server.start(timeout=60)
    return server


def baseline(base: str, args: argparse.Namespace) -> dict:
    """The same load on a server without ``--http``."""
    server = run_server(base, "no-http", None, args.workdir)
    load = Load(server.url, args.rate)
    try:
        load.start()
        time.sleep(args.warmup)  # let the server reach its steady state
        cpu = measure(server.process.pid, args.phase * args.rounds)["server"]
    finally:
        load.stop()
        server.stop()
    return {"no_http_cpu_pct": round(cpu, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="jobs per second (1000)")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("--rounds", type=int, default=3, help="closed/open rounds (3)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--soak", type=float, default=300.0, help="seconds page open (300)")
    parser.add_argument("--full", action="store_true", help="soak for 30 minutes")
    parser.add_argument("--baseline", action="store_true", help="also run without --http")
    parser.add_argument("--small", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--workdir", help="where the journals go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.full:
        args.soak = 1800.0
    if args.small:
        args.rate, args.phase, args.rounds, args.warmup, args.soak = 100, 2.0, 1, 1.0, 4.0

    base = tempfile.mkdtemp(prefix="dahu-bench-dashboard-")
    figures: dict = {
        "benchmark": "dashboard",
        "rate_target": args.rate,
        "phase_s": args.phase,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
    }
    chromium = find_chromium()
    http_port = free_port()
    server = run_server(base, "http", http_port, args.workdir)
    page = f"http://127.0.0.1:{http_port}/"
    load = Load(server.url, args.rate)
    pid = server.process.pid
    browser = Browser() if chromium else None
    try:
        load.start()
        done0, t0 = finished(server.proxy), time.monotonic()
        time.sleep(args.warmup)  # let the server reach its steady state
        closed, opened, browser_cpu, rounds, web_closed, web_open = [], [], [], [], [], []
        for _ in range(args.rounds):
            if browser is not None:
                browser.open("about:blank")
            cpu = measure(pid, args.phase, page=page)
            closed.append(cpu["server"])
            web_closed.append(cpu["web"])
            if browser is None:
                continue
            browser.open(page)
            browser.wait_for("document.getElementById('live').textContent.includes('server')")
            cpu = measure(pid, args.phase, browser.pids(), page)
            opened.append(cpu["server"])
            web_open.append(cpu["web"])
            browser_cpu.append(cpu["other"])
            rounds.append(round(opened[-1] - closed[-1], 2))
        figures["rate_achieved"] = round(
            (finished(server.proxy) - done0) / (time.monotonic() - t0), 1
        )
        figures["server_cpu_closed_pct"] = round(statistics.median(closed), 2)
        figures["server_cpu_open_pct"] = round(statistics.median(opened), 2) if opened else None
        figures["page_cost_pct"] = round(statistics.median(rounds), 2) if rounds else None
        figures["page_cost_per_round_pct"] = rounds
        figures["web_thread_cpu_closed_pct"] = round(statistics.median(web_closed), 3)
        figures["web_thread_cpu_open_pct"] = (
            round(statistics.median(web_open), 3) if web_open else None
        )
        figures["job_ended_us"] = round(job_ended_cost(), 2)
        figures["job_ended_cpu_pct_at_rate"] = round(figures["job_ended_us"] * args.rate / 1e4, 2)
        figures["browser_cpu_pct"] = round(statistics.median(browser_cpu), 2) if opened else None
        figures["load_ticks_late"] = load.late

        # the soak: page open, same load; memory at the start and at the end
        if browser is not None:
            browser.open(page)
            browser.wait_for("document.getElementById('live').textContent.includes('server')")
            time.sleep(min(10.0, args.soak / 4))  # the page has drawn everything once
            samples = []
            start = time.monotonic()
            while True:
                elapsed = time.monotonic() - start
                samples.append(
                    {
                        "t": round(elapsed, 1),
                        "server_rss_mb": round(psutil.Process(pid).memory_info().rss / 2**20, 1),
                        "js_heap_mb": round(browser.js_heap() / 2**20, 2),
                    }
                )
                if elapsed >= args.soak:
                    break
                time.sleep(min(60.0, max(1.0, args.soak / 10), args.soak - elapsed))
            figures["soak_s"] = round(samples[-1]["t"], 1)
            figures["soak_samples"] = samples
            figures["server_rss_mb_start"] = samples[0]["server_rss_mb"]
            figures["server_rss_mb_end"] = samples[-1]["server_rss_mb"]
            figures["js_heap_mb_start"] = samples[0]["js_heap_mb"]
            figures["js_heap_mb_end"] = samples[-1]["js_heap_mb"]
            figures["page_errors"] = list(browser.errors)
        else:
            figures["browser"] = "chromium is not installed: page-open figures not measured"
    finally:
        load.stop()
        if browser is not None:
            browser.close()
        server.stop()
    if args.baseline:
        figures.update(baseline(base, args))
        figures["http_cost_pct"] = round(
            figures["server_cpu_closed_pct"] - figures["no_http_cpu_pct"], 2
        )
    print(json.dumps(figures), flush=True)
    shutil.rmtree(base, ignore_errors=True)  # long after a soak: millions of job files
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
