"""Benchmark of the DahuDS Tango device: prints JSON.

Starts ``dahu_server`` without a database (``-nodb``) on a free port, with a fresh work
directory, and measures from Python clients:

* ``trivial_per_s``: round trips of a trivial command (``State``) from one client, the
  bound of anything done one request at a time (best of a run before and after);
* ``pairs_per_s``: ``startJob`` + ``waitJob`` pairs (``example.square``) from one client;
  a pair is two round trips, so ``pairs_vs_bound`` compares it with ``trivial_per_s / 2``;
* ``events_per_s``: ``startJob`` calls, back to back, until every job's ``jobSuccess``
  change event has reached the client (one round trip per job: compared with the bound);
* ``batch_per_s``: jobs per second submitted by one ``startJobs`` call (and
  ``batch_done_per_s`` until they have all run);
* ``latency_ms``: another client's ``startJob`` latency while ``--waiters`` clients (in a
  separate process) are blocked in ``waitJob`` on jobs that do not end.

    python bench/tango.py [--small] [--pairs 2000] [--events 5000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# This file is named like PyTango's package: keep its directory out of the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

# Large ZeroMQ buffers at both ends: a slow moment of the client must not drop events.
os.environ.setdefault("TANGO_EVENT_BUFFER_HWM", "200000")
os.environ.setdefault("TANGO_DS_EVENT_BUFFER_HWM", "200000")

import tango  # noqa: E402

from dahu.app.localserver import LocalServer  # noqa: E402

DEVICE = "id00/dahu/bench"


def trivial_rate(proxy: tango.DeviceProxy, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        proxy.state()
    return count / (time.perf_counter() - started)


def python_command_rate(proxy: tango.DeviceProxy, job_id: int, count: int) -> float:
    """Round trips of the cheapest Python command of the device (getJobState of a job
    that ended): what any command implemented in Python costs, for comparison."""
    started = time.perf_counter()
    for _ in range(count):
        proxy.getJobState(job_id)
    return count / (time.perf_counter() - started)


def pairs_rate(proxy: tango.DeviceProxy, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        job_id = proxy.startJob(["example.square", f'{{"x": {i}}}'])
        state = proxy.waitJob(job_id)
        while state not in ("success", "failure", "aborted"):
            state = proxy.waitJob(job_id)
        if state != "success":
            raise SystemExit(f"job {job_id} ended {state}")
    return count / (time.perf_counter() - started)


def events_rate(proxy: tango.DeviceProxy, count: int) -> float:
    base = proxy.startJob(["example.noop", "{}"])  # every job below gets a larger id
    proxy.waitJob(base)
    seen: set[int] = set()
    done = threading.Event()

    def on_event(event: tango.EventData) -> None:
        if event.err or event.attr_value is None:
            return
        value = int(event.attr_value.value)
        if value > base:
            seen.add(value)
            if len(seen) >= count:
                done.set()

    event_id = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:
        started = time.perf_counter()
        for i in range(count):
            proxy.startJob(["example.square", f'{{"x": {i}}}'])
        if not done.wait(120):
            raise SystemExit(f"only {len(seen)} of {count} jobSuccess events received")
        return count / (time.perf_counter() - started)
    finally:
        proxy.unsubscribe_event(event_id)


def event_latency_ms(proxy: tango.DeviceProxy, count: int, rate: float) -> dict:
    """Milliseconds from ``startJob`` returning to the job's ``jobSuccess`` event reaching
    the client, with jobs started at ``rate`` per second."""
    returned: dict[int, float] = {}
    arrived: dict[int, float] = {}
    done = threading.Event()
    lock = threading.Lock()

    def on_event(event: tango.EventData) -> None:
        now = time.perf_counter()
        if event.err or event.attr_value is None:
            return
        with lock:
            arrived.setdefault(int(event.attr_value.value), now)
            if len(arrived) >= count and all(i in arrived for i in returned):
                done.set()

    event_id = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:
        with lock:
            arrived.clear()  # the event sent on subscription
        period = 1.0 / rate
        started = time.perf_counter()
        for i in range(count):
            pause = started + i * period - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            job_id = proxy.startJob(["example.square", f'{{"x": {i}}}'])
            with lock:
                returned[job_id] = time.perf_counter()
        deadline = time.monotonic() + 60
        while not all(i in arrived for i in returned) and time.monotonic() < deadline:
            done.wait(0.1)
    finally:
        proxy.unsubscribe_event(event_id)
    # an event may overtake the reply of its own startJob: that is a latency of 0
    times = sorted(max(arrived[i] - t, 0.0) * 1000 for i, t in returned.items() if i in arrived)
    if len(times) < count:
        raise SystemExit(f"only {len(times)} of {count} jobSuccess events received")
    return {
        "rate_per_s": rate,
        "median": round(statistics.median(times), 3),
        "p99": round(times[max(int(len(times) * 0.99) - 1, 0)], 3),
        "max": round(times[-1], 3),
    }


def batch_rates(proxy: tango.DeviceProxy, count: int) -> tuple[float, float]:
    inputs = json.dumps([{"x": i} for i in range(count)])
    finished0 = proxy.jobsFinished
    proxy.set_timeout_millis(60000)
    try:
        started = time.perf_counter()
        ids = proxy.startJobs(["example.square", inputs])
        submitted = time.perf_counter()
    finally:
        proxy.set_timeout_millis(3000)
    if len(ids) != count:
        raise SystemExit(f"startJobs returned {len(ids)} ids for {count} inputs")
    while proxy.jobsFinished - finished0 < count:
        if time.perf_counter() - started > 300:
            raise SystemExit("the batch did not finish within 300 s")
        time.sleep(0.01)
    done = time.perf_counter()
    return count / (submitted - started), count / (done - started)


def waiter_main(url: str, ids: list[int]) -> int:
    """Helper process: one client per id, each blocked in waitJob until killed."""
    proxies = [tango.DeviceProxy(url) for _ in ids]
    calls = [0] * len(ids)

    def wait(index: int) -> None:
        while True:
            proxies[index].waitJob(ids[index])
            calls[index] += 1

    for index in range(len(ids)):
        threading.Thread(target=wait, args=(index,), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes it
    return 0


def latency_ms(proxy: tango.DeviceProxy, url: str, waiters: int, samples: int) -> dict:
    ids = [proxy.startJob(["example.sleep", '{"t": 600}']) for _ in range(waiters)]
    helper = subprocess.Popen(
        [sys.executable, __file__, "--waiter", url, *map(str, ids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if helper.stdout.readline().strip() != "ready":
            raise SystemExit("the waiting clients did not start")
        time.sleep(1.0)  # let every waiter reach the server and block there
        times = []
        for i in range(samples):
            started = time.perf_counter()
            proxy.startJob(["example.noop", "{}"])
            times.append((time.perf_counter() - started) * 1000)
            if i % 20 == 19:
                time.sleep(0.05)  # spread the samples over the waiters' cycles
    finally:
        helper.stdin.close()
        helper.kill()
        helper.wait()
        for job_id in ids:
            proxy.abort(job_id)
    times.sort()
    return {
        "median": round(statistics.median(times), 3),
        "p99": round(times[int(len(times) * 0.99) - 1], 3),
        "max": round(times[-1], 3),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--waiter":
        return waiter_main(argv[1], [int(i) for i in argv[2:]])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--trivial", type=int, default=5000)
    parser.add_argument("--waiters", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=2000, help="jobs at 500/s")
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="parent of the server's work directory (default: the system's temporary "
        "directory; /dev/shm takes the disk out of the figures)",
    )
    args = parser.parse_args(argv)
    if args.small:
        args.pairs, args.events, args.batch, args.trivial = 20, 50, 200, 200
        args.waiters, args.samples, args.latency_jobs = 2, 20, 50
    workdir = tempfile.mkdtemp(prefix="dahu-bench-tango-", dir=args.workdir)
    server = LocalServer(
        workdir, os.path.join(workdir, "server.log"), device=DEVICE, instance="bench"
    )
    proxy = server.start(timeout=60)
    try:
        first = proxy.startJob(["example.square", "{}"])  # load the plugin module
        proxy.startJob(["example.noop", "{}"])
        proxy.waitJob(first)
        trivial_before = trivial_rate(proxy, args.trivial)
        # the bound varies from one moment to the next on a shared machine: measured
        # before each workload and at the end, the best of them is the bound (the
        # ratios are the least favourable of the run)
        python_runs = [python_command_rate(proxy, first, args.trivial)]
        pairs = pairs_rate(proxy, args.pairs)
        python_runs.append(python_command_rate(proxy, first, args.trivial))
        events = events_rate(proxy, args.events)
        event_latency = event_latency_ms(proxy, args.latency_jobs, 500.0)
        batch, batch_done = batch_rates(proxy, args.batch)
        latency = latency_ms(proxy, server.url, args.waiters, args.samples)
        trivial = max(trivial_before, trivial_rate(proxy, args.trivial))
        python_runs.append(python_command_rate(proxy, first, args.trivial))
        python_trivial = max(python_runs)
        result = {
            "benchmark": "tango",
            "trivial_per_s": round(trivial, 1),
            "pairs": args.pairs,
            "pairs_per_s": round(pairs, 1),
            "pairs_vs_bound": round(pairs / (trivial / 2), 3),
            "python_command_per_s": round(python_trivial, 1),
            "python_command_runs_per_s": [round(rate, 1) for rate in python_runs],
            "pairs_vs_python_command": round(pairs / (python_trivial / 2), 3),
            "events": args.events,
            "events_per_s": round(events, 1),
            "events_vs_bound": round(events / trivial, 3),
            "events_vs_python_command": round(events / python_trivial, 3),
            "event_latency_ms": event_latency,
            "batch": args.batch,
            "batch_per_s": round(batch, 1),
            "batch_done_per_s": round(batch_done, 1),
            "waiters": args.waiters,
            "latency_ms": latency,
            "workdir": os.path.dirname(workdir),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "pytango": tango.__version__,
        }
    finally:
        server.stop(60)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
