"""Benchmark of a long life: do commands cost more when the journal holds many jobs?

For each size given with ``--jobs`` (default 1,000 and 1,000,000), fills a fresh work
directory's journal with that many ended ``example.square`` jobs through the journal's
bulk path (``create_many`` and ``finish_many``, thousands of records per transaction),
starts ``dahu_server -nodb`` on it (the servers of every size run side by side) and
times, from one client, the median round trip of ``startJob``, ``getJobState`` of the
oldest and of a new id, ``getJobOutput`` of an old id and ``getStatistics``, the sizes
taking turns of 20 calls of each command so that a slow minute of the machine weighs on
all, and how long ``collectStatistics`` takes until the statistics are ready.  It also
reports the journal's bytes per job.  ``ratios_largest_over_smallest`` compares the
largest size with the smallest (1.0: flat); ``ratios_by_round`` gives that ratio for
each round of turns (a slow episode shows in a few rounds, a cost of the size in all),
and ``steal_percent`` the CPU time the hypervisor gave to others meanwhile
(``bench/machine.py``).  Prints JSON.

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

from machine import StealMeter  # next to this file

# This directory holds a tango.py: keep it out of the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from dahu.app.localserver import LocalServer  # noqa: E402
from dahu.journal import SQLiteJournal  # noqa: E402

DEVICE = "id00/dahu/longlife"
CHUNK = 10000
CALLS_PER_TURN = 20
# The client's timeout for each command: well above the server's waitJob limit (2 s), which
# a loaded machine's reply can pass (Tango's default, 3 s, left 0.8 s).
CLIENT_TIMEOUT_MS = 30_000


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


def timed_ms(call, count: int) -> list[float]:
    """The durations of ``count`` calls of ``call()``, in milliseconds."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def journal_bytes(workdir: str) -> int:
    """The size of the journal once its write-ahead log is folded in."""
    path = os.path.join(workdir, SQLiteJournal.FILENAME)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return os.path.getsize(path)


class Subject:
    """A server started on a journal filled with ``count`` ended jobs."""

    def __init__(self, base: str, count: int):
        self.count = count
        workdir = os.path.join(base, f"jobs-{count}")
        self.fill_s = fill(workdir, count)
        self.size = journal_bytes(workdir)
        self.server = LocalServer(
            workdir,
            os.path.join(base, f"server-{count}.log"),
            device=f"{DEVICE}{count}",
            instance=f"longlife{count}",
        )
        t0 = time.perf_counter()
        self.proxy = proxy = self.server.start(timeout=120)
        self.startup = time.perf_counter() - t0
        proxy.set_timeout_millis(CLIENT_TIMEOUT_MS)
        self.first = proxy.startJob(["example.square", '{"x": 1}'])
        while proxy.waitJob(self.first) not in ("success", "failure", "aborted"):
            pass
        proxy.getStatistics()  # warm
        self.times: dict[str, list[float]] = {}

    def commands(self) -> dict:
        proxy, first, count = self.proxy, self.first, self.count
        return {
            "startJob": lambda: proxy.startJob(["example.square", '{"x": 2}']),
            "getJobState_old": lambda: proxy.getJobState(1),
            "getJobState_new": lambda: proxy.getJobState(first),
            "getJobOutput_old": lambda: proxy.getJobOutput(max(count // 2, 1)),
            "getStatistics": proxy.getStatistics,
        }

    def time_round(self, calls: int) -> dict[str, float]:
        """Time ``calls`` calls of each command; the medians of this round (ms)."""
        medians = {}
        for name, call in self.commands().items():
            times = timed_ms(call, calls)
            self.times.setdefault(name, []).extend(times)
            medians[name] = statistics.median(times)
        return medians

    def result(self) -> dict:
        t0 = time.perf_counter()
        self.proxy.collectStatistics()
        self.proxy.getStatistics()  # waits for the collection
        collect = time.perf_counter() - t0
        return {
            "jobs": self.count,
            "fill_s": round(self.fill_s, 2),
            "server_startup_s": round(self.startup, 3),
            "median_ms": {
                name: round(statistics.median(times), 4) for name, times in self.times.items()
            },
            "collectStatistics_s": round(collect, 4),
            "journal_bytes_per_job": round(self.size / max(self.count, 1), 1),
        }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 1000000])
    parser.add_argument("--calls", type=int, default=300, help="calls timed per command")
    parser.add_argument("--workdir", help="parent of the work directories (default: temp)")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="dahu-bench-longlife-", dir=args.workdir)
    subjects: list[Subject] = []
    try:
        for count in sorted(args.jobs):
            subjects.append(Subject(base, count))
        # every server runs meanwhile; they are timed in turns of a few calls each, so
        # that the machine's moods (2x from one minute to the next here) weigh on all
        rounds = max(1, args.calls // CALLS_PER_TURN)
        turns: dict[str, list[float]] = {}  # per command: largest over smallest, per round
        with StealMeter() as steal:
            for _ in range(rounds):
                medians = [subject.time_round(max(1, args.calls // rounds)) for subject in subjects]
                for name, value in medians[-1].items():
                    turns.setdefault(name, []).append(round(value / medians[0][name], 2))
        sizes = [subject.result() for subject in subjects]
    finally:
        for subject in subjects:
            subject.server.stop(60)
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
        "ratios_by_round": turns,
        "target_ratio_max": 1.2,
        "steal_percent": steal.percent,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
