"""What the web page shows, kept in bounded memory: counters, time series, recent jobs.

The engine hands every ended job to :meth:`Monitor.run_ended` (a few microseconds, on
the thread that ended it), those a plugin made too.  The monitor keeps, in memory that does not grow:

* a ring of :data:`BUCKET`-second buckets covering the last hour: jobs ended per state,
  a histogram of their runtimes (log-spaced bins, ten per decade) and the longest queue
  and the most jobs running seen in the bucket (sampled every second by the web server);
* per plugin since the server started: jobs per state, total runtime, a runtime
  histogram, the last failure;
* the latest :data:`RECENT` ended jobs and the latest :data:`FAILURES` failures.

Percentiles come from the histograms: a value is reported as the middle (geometric) of
its bin, so it is within 12 % of the exact one.  Queued and running jobs are read from
the engine when asked (:meth:`Job.live_jobs`), finished jobs of previous runs from the
journal at start (:meth:`Monitor.attach`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..states import State
from ..statistics import plugin_row

__all__ = ["Monitor", "BUCKET", "WINDOW", "RECENT", "FAILURES", "percentile"]

BUCKET = 10  # seconds per time-series bucket
WINDOW = 3600  # seconds of time series kept
RECENT = 200  # ended jobs kept for the "latest jobs" table
FAILURES = 100  # failed or aborted jobs kept for the "failures" table
REASON_CHARS = 300  # a failure's one-line reason is cut to this
BINS_PER_DECADE = 10
SMALLEST = 1e-6  # seconds: the lower edge of the first runtime bin
NBINS = 100  # 1 us ... 10^4 s; longer runtimes fall in the last bin


def runtime_bin(seconds: float) -> int:
    """The histogram bin of a runtime (bins are 10**0.1 = 1.26 times wide)."""
    if seconds <= SMALLEST:
        return 0
    index = int(BINS_PER_DECADE * math.log10(seconds / SMALLEST))
    return index if index < NBINS else NBINS - 1


def bin_value(index: int) -> float:
    """The runtime a bin stands for: its geometric middle, in seconds (4 digits)."""
    return float(f"{SMALLEST * 10 ** ((index + 0.5) / BINS_PER_DECADE):.4g}")


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The runtime below which ``fraction`` of the histogram's jobs lie (None if empty)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bin_value(index)
    return bin_value(max(histogram))


def _started(job: Any) -> float | None:
    """When the job's plugin began (the engine's record of the running job)."""
    run = getattr(job, "_run", None)
    if run is not None:
        return getattr(run, "started", None)
    return getattr(job, "_started_at", None)


def reason_line(error: str) -> str:
    """The first line of an error that is not blank, cut to :data:`REASON_CHARS`."""
    for line in (error or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."
    return ""


class _Bucket:
    """Jobs ended in one :data:`BUCKET`-second interval, and the queue seen then."""

    __slots__ = ("key", "ended", "histogram", "queue", "running")

    def __init__(self, key: int) -> None:
        self.key = key
        self.ended = {State.SUCCESS: 0, State.FAILURE: 0, State.ABORTED: 0}
        self.histogram: dict[int, int] = {}
        self.queue = 0
        self.running = 0


class _PluginStats:
    """One plugin's jobs since the server started."""

    __slots__ = ("ended", "runtime", "histogram", "last_ended", "last_failure")

    def __init__(self) -> None:
        self.ended = {State.SUCCESS: 0, State.FAILURE: 0, State.ABORTED: 0}
        self.runtime = 0.0
        self.histogram: dict[int, int] = {}
        self.last_ended: float | None = None
        self.last_failure: dict[str, Any] | None = None


class Monitor:
    """Bounded, thread-safe summary of the server's jobs for the web page.

    :param clock: the wall clock (``time.time``), replaceable in tests
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: list[_Bucket | None] = [None] * (WINDOW // BUCKET)
        self._plugins: dict[str, _PluginStats] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._failures: deque[dict[str, Any]] = deque(maxlen=FAILURES)
        self.engine: Any = None
        self.started = clock()
        self._rows: dict[int, tuple] = {}  # series rows of the buckets that are over

    # ---- feeding --------------------------------------------------------------------
    def attach(self, engine: Any) -> None:
        """Read the server's engine from now on; the latest jobs of the journal (ended
        before this server started) fill the tables once."""
        if self.engine is engine:
            return
        self.engine = engine
        engine.on_finished = self.run_ended
        last = engine.journal.newest_id()  # not ids a killed server reserved
        seed = [
            r
            for r in engine.journal.select(first=max(1, last - RECENT + 1), data=False)
            if r.state in State.FINAL
        ]
        with self._lock:
            for record in seed:
                item = {
                    "id": record.id,
                    "plugin": record.plugin,
                    "state": record.state,
                    "runtime": record.runtime,
                    "ended": record.ended,
                    "reason": reason_line(record.error or "")
                    if record.state != State.SUCCESS
                    else "",
                }
                self._recent.appendleft(item)
                if record.state != State.SUCCESS:
                    self._failures.appendleft(item)

    def _bucket(self, now: float) -> _Bucket:
        key = int(now // BUCKET)
        slot = key % len(self._ring)
        bucket = self._ring[slot]
        if bucket is None or bucket.key != key:
            bucket = self._ring[slot] = _Bucket(key)
        return bucket

    def job_ended(self, job: Any) -> None:
        """Count one ended job (a :class:`dahu.job.Job`)."""
        self._ended(job.id, job.name, job.status, job.runtime, job.error)

    def run_ended(self, run: Any) -> None:
        """Count one ended job of the engine (its :class:`~dahu.engine.lifecycle.JobRun`;
        the engine calls it, :meth:`attach`)."""
        runtime = None if run.started is None or run.ended is None else run.ended - run.started
        self._ended(run.id, run.plugin_name, run.state, runtime, run.error or "")

    def _ended(
        self, job_id: int, plugin: str, state: str, runtime: float | None, error: str
    ) -> None:
        now = self._clock()
        item = {
            "id": job_id,
            "plugin": plugin,
            "state": state,
            "runtime": runtime,
            "ended": now,
            "reason": reason_line(error) if state != State.SUCCESS else "",
        }
        index = runtime_bin(runtime) if runtime is not None else None
        with self._lock:
            bucket = self._bucket(now)
            bucket.ended[state] = bucket.ended.get(state, 0) + 1
            # one row per plugin, however its jobs spelled it (names are not case-sensitive)
            row = plugin_row(self._plugins, plugin.lower())  # bounded: PLUGIN_ROWS
            stats = self._plugins.get(row)
            if stats is None:
                stats = self._plugins[row] = _PluginStats()
            stats.ended[state] = stats.ended.get(state, 0) + 1
            stats.last_ended = now
            if index is not None:
                bucket.histogram[index] = bucket.histogram.get(index, 0) + 1
                stats.histogram[index] = stats.histogram.get(index, 0) + 1
                stats.runtime += runtime
            self._recent.appendleft(item)
            if state != State.SUCCESS:
                self._failures.appendleft(item)
                stats.last_failure = item

    def sample(self) -> None:
        """Note the queue length and the jobs running now (called every second)."""
        engine = self.engine
        if engine is None:
            return
        counts = engine.executor.counts()
        running = counts["running"] + counts.get("waiting", 0)
        with self._lock:
            bucket = self._bucket(self._clock())
            bucket.queue = max(bucket.queue, counts["queued"])
            bucket.running = max(bucket.running, running)

    # ---- reading --------------------------------------------------------------------
    def _buckets(self, now: float, window: float) -> list[_Bucket]:
        """The live buckets of the last ``window`` seconds, oldest first (lock held)."""
        newest = int(now // BUCKET)
        oldest = newest - int(math.ceil(window / BUCKET)) + 1
        found = [b for b in self._ring if b is not None and oldest <= b.key <= newest]
        return sorted(found, key=lambda b: b.key)

    def counters(self) -> dict[str, Any]:
        """Jobs queued and running now; ended since start and in the last hour."""
        now = self._clock()
        hour = {State.SUCCESS: 0, State.FAILURE: 0, State.ABORTED: 0}
        with self._lock:
            buckets = self._buckets(now, WINDOW)
            for bucket in buckets:
                for state, count in bucket.ended.items():
                    hour[state] += count
            last = [b for b in buckets if b.key >= int(now // BUCKET) - 1]
            recent_count = sum(sum(b.ended.values()) for b in last)
        counts = self.engine.counts() if self.engine is not None else {}
        span = now - (int(now // BUCKET) - 1) * BUCKET  # the last full bucket and this one
        return {
            "time": now,
            "queued": counts.get("queued", 0),
            "running": counts.get("running", 0) + counts.get("waiting", 0),
            "finished": counts.get("finished", 0),
            "succeeded": counts.get(State.SUCCESS, 0),
            "failed": counts.get(State.FAILURE, 0),
            "aborted": counts.get(State.ABORTED, 0),
            "finished_last_hour": sum(hour.values()),
            "succeeded_last_hour": hour[State.SUCCESS],
            "failed_last_hour": hour[State.FAILURE],
            "aborted_last_hour": hour[State.ABORTED],
            "jobs_per_s": recent_count / max(1.0, min(span, now - self.started)),
            "uptime": now - self.started,
            "journal_fault": getattr(self.engine, "journal_fault", None),
        }

    def running(self, limit: int = 50) -> list[dict[str, Any]]:
        """The jobs running now, longest-running first, with their elapsed time."""
        if self.engine is None:
            return []
        from ..job import Job

        now = self._clock()
        jobs = []
        for job in Job.live_jobs(self.engine):
            if job.status != State.RUNNING:
                continue
            started = _started(job)
            jobs.append(
                {
                    "id": job.id,
                    "plugin": job.name,
                    "started": started,
                    "elapsed": (now - started) if started is not None else None,
                }
            )
        jobs.sort(key=lambda j: j["started"] if j["started"] is not None else now)
        return jobs[:limit]

    def recent(
        self, limit: int = 25, state: str | None = None, plugin: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest ended jobs, newest first (optionally of one state or plugin)."""
        with self._lock:
            items = list(self._recent)
        if state is not None:
            items = [i for i in items if i["state"] == state]
        if plugin is not None:
            name = plugin.lower()  # plugin names are not case-sensitive (the factory's)
            items = [i for i in items if i["plugin"].lower() == name]
        return items[:limit]

    def failures(self, limit: int = 25) -> list[dict[str, Any]]:
        """The latest jobs that ended in failure or were aborted, newest first."""
        with self._lock:
            return list(self._failures)[:limit]

    def plugins(self) -> dict[str, dict[str, Any]]:
        """Per plugin since the server started: jobs per state, runtimes, last failure."""
        with self._lock:
            copies = {
                name: (dict(s.ended), s.runtime, dict(s.histogram), s.last_ended, s.last_failure)
                for name, s in self._plugins.items()
            }
        result = {}
        for name, (ended, runtime, histogram, last_ended, last_failure) in sorted(copies.items()):
            timed = sum(histogram.values())
            result[name] = {
                "jobs": sum(ended.values()),
                "success": ended.get(State.SUCCESS, 0),
                "failure": ended.get(State.FAILURE, 0),
                "aborted": ended.get(State.ABORTED, 0),
                "mean_runtime": runtime / timed if timed else None,
                "p50_runtime": percentile(histogram, 0.5),
                "p95_runtime": percentile(histogram, 0.95),
                "last_ended": last_ended,
                "last_failure": last_failure,
            }
        return result

    def series(self, window: float = WINDOW) -> dict[str, Any]:
        """Per :data:`BUCKET` seconds over the last ``window`` s: jobs/s, failures/s,
        runtime percentiles (p50, p90, p99, seconds), longest queue and most running."""
        now = self._clock()
        newest = int(now // BUCKET)
        first = newest - int(math.ceil(window / BUCKET)) + 1
        first = max(first, int(self.started // BUCKET))
        with self._lock:
            # a bucket that is over never changes: its row is computed once
            wanted = {k for k in range(first, newest) if k not in self._rows}
            buckets = {
                b.key: (dict(b.ended), dict(b.histogram), b.queue, b.running)
                for b in self._buckets(now, window)
                if b.key == newest or b.key in wanted
            }
        for key in list(self._rows):
            if key < newest - len(self._ring):
                del self._rows[key]
        names = ("t", "jobs_per_s", "failed_per_s", "p50", "p90", "p99", "queue", "running")
        out: dict[str, Any] = {name: [] for name in names}
        for key in range(first, newest + 1):
            row = self._rows.get(key) if key < newest else None
            if row is None:
                ended, histogram, queue, running = buckets.get(key, ({}, {}, 0, 0))
                span = BUCKET if key < newest else max(1.0, now - key * BUCKET)
                failed = ended.get(State.FAILURE, 0) + ended.get(State.ABORTED, 0)
                row = (
                    key * BUCKET,
                    round(sum(ended.values()) / span, 3),
                    round(failed / span, 3),
                    percentile(histogram, 0.5),
                    percentile(histogram, 0.9),
                    percentile(histogram, 0.99),
                    queue,
                    running,
                )
                if key < newest:
                    self._rows[key] = row
            for name, value in zip(names, row, strict=True):
                out[name].append(value)
        out["bucket"] = BUCKET
        return out

    def summary(self, recent: int = 15, failures: int = 15, running: int = 30) -> dict[str, Any]:
        """Everything the page shows, in one JSON-ready dict."""
        return {
            "counters": self.counters(),
            "running": self.running(running),
            "recent": self.recent(recent),
            "failures": self.failures(failures),
            "plugins": self.plugins(),
            "series": self.series(),
        }
