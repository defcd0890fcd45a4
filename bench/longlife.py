"""Benchmark of a long life: do commands cost more when the journal holds many jobs?

For each size given with ``--jobs`` (default 1,000 and 1,000,000), fills a fresh work
directory's journal with that many ended ``example.square`` jobs through the journal's
bulk path (``create_many`` and ``finish_many``, thousands of records per transaction),
starts ``dahu_server -nodb`` on it and times, from one client, the median round trip
of ``startJob``, ``getJobState`` of the oldest and of a new id, ``getJobOutput`` of an
old id and ``getStatistics``, and how long ``collectStatistics`` takes until the
statistics are ready.  It also reports the journal's bytes per job.  ``ratios`` compares
the largest size with the smallest (1.0: flat).  Prints JSON.

    python bench/longlife.py [--jobs 1000 1000000] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

# This directory holds a tango.py: keep it out of the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from dahu.app.localserver import LocalServer  # noqa: E402
from dahu.journal import SQLiteJournal  # noqa: E402

DEVICE = "id00/dahu/longlife"
CHUNK = 10000


def fill(workdir: str, count: int) -> float:
    """Record ``count`` ended trivial jobs in the journal of ``workdir``; seconds taken."""
    started = time.perf_counter()
    journal = SQLiteJournal(workdir)
    try:
        done = 0
        while done < count:
            size = min(CHUNK, count - done)
            inputs = [{"x": done + i, "plugin_name": "example.square"} for i in range(size)]
            now = time.time()
            ids = journal.create_many("example.square", inputs, now)
            journal.finish_many(
                [
                    (job_id, "success", {"result": (done + i) ** 2}, None, now, now + 1e-4)
                    for i, job_id in enumerate(ids)
                ]
            )
            done += size
    finally:
        journal.close()
    return time.perf_counter() - started


def median_ms(call, count: int) -> float:
    """The median duration of ``call()`` in milliseconds over ``count`` calls."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 4)


def journal_bytes(workdir: str) -> int:
    """The size of the journal once its write-ahead log is folded in."""
    path = os.path.join(workdir, SQLiteJournal.FILENAME)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return os.path.getsize(path)


def measure(base: str, count: int, calls: int) -> dict:
    """Fill a journal with ``count`` jobs, start a server on it and time its commands."""
    workdir = os.path.join(base, f"jobs-{count}")
    fill_s = fill(workdir, count)
    size = journal_bytes(workdir)
    server = LocalServer(
        workdir, os.path.join(base, f"server-{count}.log"), device=DEVICE, instance="longlife"
    )
    t0 = time.perf_counter()
    proxy = server.start(timeout=120)
    startup = time.perf_counter() - t0
    try:
        first = proxy.startJob(["example.square", '{"x": 1}'])
        proxy.waitJob(first)
        proxy.getStatistics()  # warm
        figures = {
            "startJob": median_ms(lambda: proxy.startJob(["example.square", '{"x": 2}']), calls),
            "getJobState_old": median_ms(lambda: proxy.getJobState(1), calls),
            "getJobState_new": median_ms(lambda: proxy.getJobState(first), calls),
            "getJobOutput_old": median_ms(lambda: proxy.getJobOutput(max(count // 2, 1)), calls),
            "getStatistics": median_ms(proxy.getStatistics, calls),
        }
        t0 = time.perf_counter()
        proxy.collectStatistics()
        proxy.getStatistics()  # waits for the collection
        collect = time.perf_counter() - t0
    finally:
        server.stop(60)
    return {
        "jobs": count,
        "fill_s": round(fill_s, 2),
        "server_startup_s": round(startup, 3),
        "median_ms": figures,
        "collectStatistics_s": round(collect, 4),
        "journal_bytes_per_job": round(size / max(count, 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 1000000])
    parser.add_argument("--calls", type=int, default=300, help="calls timed per command")
    parser.add_argument("--workdir", help="parent of the work directories (default: temp)")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="dahu-bench-longlife-", dir=args.workdir)
    try:
        sizes = [measure(base, count, args.calls) for count in sorted(args.jobs)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    small, large = sizes[0], sizes[-1]
    ratios = {
        name: round(large["median_ms"][name] / small["median_ms"][name], 3)
        for name in small["median_ms"]
    }
    result = {
        "benchmark": "longlife",
        "sizes": sizes,
        "ratios_largest_over_smallest": ratios,
        "target_ratio_max": 1.2,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
