"""Benchmark of ``dahu.client`` against raw Tango calls doing the same: prints JSON.

Starts ``dahu_server`` without a database on a free port and, on the same server, runs
``--jobs`` trivial jobs (``example.square``) each way, every output read:

* ``client_map_per_s``: ``DahuClient.map`` (one ``startJobs``) + ``as_completed`` +
  ``result()``;
* ``raw_map_per_s``: the same by hand: ``startJobs``, a ``jobSuccess`` subscription,
  ``getJobOutput`` of each job as its event arrives;
* ``client_submit_per_s``: ``DahuClient.submit`` one job at a time, then
  ``as_completed`` + ``result()``;
* ``raw_submit_per_s``: ``startJob`` back to back, events, ``getJobOutput`` of each;
* ``tango_events_per_s`` and ``tango_batch_done_per_s``: ``bench/tango.py``'s own
  figures on the same server (``startJob`` back to back until every event arrived;
  ``startJobs`` until every job ran), which read no output.

    python bench/client.py [--small] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import shutil
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

# The same ZeroMQ buffers as bench/tango.py, at both ends, for every way measured.
os.environ.setdefault("TANGO_EVENT_BUFFER_HWM", "200000")
os.environ.setdefault("TANGO_DS_EVENT_BUFFER_HWM", "200000")

import tango  # noqa: E402

from dahu.app.localserver import LocalServer  # noqa: E402
from dahu.client import DahuClient, as_completed  # noqa: E402

DEVICE = "id00/dahu/benchclient"


def tango_bench():
    """``bench/tango.py`` as a module (its name is PyTango's: loaded by path)."""
    spec = importlib.util.spec_from_file_location("bench_tango", os.path.join(_HERE, "tango.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(results: list[int], count: int) -> None:
    if sorted(results) != sorted(x * x for x in range(count)):
        raise SystemExit("wrong results")


def client_map(client: DahuClient, count: int) -> float:
    started = time.perf_counter()
    futures = client.map("example.square", [{"x": x} for x in range(count)])
    results = [f.result()["result"] for f in as_completed(futures, timeout=600)]
    rate = count / (time.perf_counter() - started)
    check(results, count)
    return rate


def client_submit(client: DahuClient, count: int) -> float:
    started = time.perf_counter()
    futures = [client.submit("example.square", x=x) for x in range(count)]
    results = [f.result()["result"] for f in as_completed(futures, timeout=600)]
    rate = count / (time.perf_counter() - started)
    check(results, count)
    return rate


def raw(proxy: tango.DeviceProxy, count: int, batch: bool) -> float:
    """By hand: start the jobs, follow ``jobSuccess`` events, read each output."""
    ended: queue.SimpleQueue = queue.SimpleQueue()

    def on_event(event: tango.EventData) -> None:
        if not event.err and event.attr_value is not None:
            ended.put(int(event.attr_value.value))

    subscription = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:
        while not ended.empty():  # the value current at subscription
            ended.get()
        started = time.perf_counter()
        if batch:
            patience = proxy.get_timeout_millis()
            proxy.set_timeout_millis(max(patience, 60000))
            text = json.dumps([{"x": x} for x in range(count)])
            ids = {int(i) for i in proxy.startJobs(["example.square", text])}
            proxy.set_timeout_millis(patience)
        else:
            ids = {proxy.startJob(["example.square", f'{{"x": {x}}}']) for x in range(count)}
        results = []
        while ids:
            job_id = ended.get(timeout=120)
            if job_id in ids:
                ids.discard(job_id)
                results.append(json.loads(proxy.getJobOutput(job_id))["result"])
        rate = count / (time.perf_counter() - started)
    finally:
        proxy.unsubscribe_event(subscription)
    check(results, count)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per way measured")
    parser.add_argument(
        "--workdir", metavar="DIR", help="parent of the server's work directory (default: tmp)"
    )
    args = parser.parse_args(argv)
    if args.small:
        args.jobs = 200
    workdir = tempfile.mkdtemp(prefix="dahu-bench-client-", dir=args.workdir)
    server = LocalServer(
        workdir, os.path.join(workdir, "server.log"), device=DEVICE, instance="benchclient"
    )
    bench = tango_bench()
    proxy = server.start(timeout=60)
    proxy.set_timeout_millis(bench.CLIENT_TIMEOUT_MS)
    try:
        with DahuClient(server.url) as client:
            client.submit("example.square", x=1).result(60)  # load the plugin module
            count = args.jobs
            figures = {
                "raw_map_per_s": raw(proxy, count, batch=True),
                "client_map_per_s": client_map(client, count),
                "raw_submit_per_s": raw(proxy, count, batch=False),
                "client_submit_per_s": client_submit(client, count),
            }
        figures["tango_events_per_s"] = bench.events_rate(proxy, count)
        figures["tango_batch_per_s"], figures["tango_batch_done_per_s"] = bench.batch_rates(
            proxy, count
        )
        result = {
            "benchmark": "client",
            "jobs": count,
            **{key: round(value, 1) for key, value in figures.items()},
            "map_vs_raw": round(figures["client_map_per_s"] / figures["raw_map_per_s"], 3),
            "submit_vs_raw": round(figures["client_submit_per_s"] / figures["raw_submit_per_s"], 3),
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
