"""Job statistics: per-plugin counts and runtimes, wall time, speed-up, and the linear
regression of execution time against job order (is the server getting slower?)."""

from __future__ import annotations

import threading
from typing import Any

from .errors import shown_name
from .states import State

__all__ = ["aggregate", "format_statistics", "RunningStatistics", "PLUGIN_ROWS", "plugin_row"]

PLUGIN_ROWS = 256
"""Plugins a server counts apart; the jobs of any further name are counted together, as
:data:`OTHER_PLUGINS` (clients naming ever new plugins that do not exist, the module
existing, would otherwise grow the tables for ever)."""
OTHER_PLUGINS = "(other plugins)"


def plugin_row(rows: dict[str, Any], name: str) -> str:
    """The row of ``rows`` (by plugin name) that counts the jobs of ``name``."""
    return name if name in rows or len(rows) < PLUGIN_ROWS else OTHER_PLUGINS


def aggregate(rows: list[tuple[str, str, float | None, float | None, float | None]]) -> dict:
    """Per-plugin counts and runtimes, wall time and the runtime-vs-order regression."""
    plugins: dict[str, dict[str, Any]] = {}
    starts, ends, runtimes = [], [], []
    for plugin, state, started, ended, runtime in rows:
        entry = plugins.setdefault(
            plugin, {"count": 0, **{s: 0 for s in State.ALL}, "runtime": 0.0, "ran": 0}
        )
        entry["count"] += 1
        entry[state] = entry.get(state, 0) + 1
        if runtime is not None:
            entry["runtime"] += runtime
            entry["ran"] += 1
            runtimes.append(runtime)
        if started is not None:
            starts.append(started)
        if ended is not None:
            ends.append(ended)
    for entry in plugins.values():  # the mean of the jobs that ran (not those never started)
        entry["mean"] = entry["runtime"] / entry["ran"] if entry["ran"] else 0.0
    wall = (max(ends) - min(starts)) if starts and ends else 0.0
    total = sum(runtimes)
    n = len(runtimes)
    slope = intercept = 0.0
    if n >= 2:
        mean_x = (n - 1) / 2
        mean_y = total / n
        sxx = sum((i - mean_x) ** 2 for i in range(n))
        sxy = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(runtimes))
        slope = sxy / sxx if sxx else 0.0
        intercept = mean_y - slope * mean_x
    elif n == 1:
        intercept = total
    return {
        "plugins": plugins,
        "jobs": len(rows),
        "finished": sum(state in State.FINAL for _, state, *_ in rows),  # jobsFinished's
        "ran": n,  # of those, the jobs that ran (a job aborted in the queue did not)
        "total_runtime": total,
        "wall_time": wall,
        "speedup": (total / wall) if wall > 0 else 0.0,
        "regression": {"intercept": intercept, "slope": slope},
    }


class RunningStatistics:
    """The figures of :func:`aggregate`, kept up to date as jobs are created and end.

    Per-plugin counters and sums, the earliest start, the latest end and the sums of the
    runtime-vs-order regression: reading them costs the same with ten jobs or a million
    (no scan of the journal).  The order of the regression is the order in which jobs
    ended.  Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plugins: dict[str, dict[str, Any]] = {}
        self._jobs = 0
        self._ended = 0
        self._ran = 0  # of those, the jobs that ran
        self._sum_y = 0.0
        self._sum_iy = 0.0
        self._first_start: float | None = None
        self._last_end: float | None = None

    def _entry(self, plugin: str) -> dict[str, Any]:
        # one row however the jobs spell the name (it is case-insensitive), as dahu-jobs
        plugin = plugin_row(self._plugins, plugin.lower())
        entry = self._plugins.get(plugin)
        if entry is None:
            entry = self._plugins[plugin] = {"count": 0, "ran": 0, "runtime": 0.0}
            entry.update((state, 0) for state in State.FINAL)
        return entry

    def created(self, plugin: str, count: int = 1) -> None:
        """``count`` new jobs of ``plugin``."""
        with self._lock:
            self._entry(plugin)["count"] += count
            self._jobs += count

    def ended(self, plugin: str, state: str, started: float | None, ended: float | None) -> None:
        """A job of ``plugin`` ended in ``state`` (its times as recorded)."""
        with self._lock:
            entry = self._entry(plugin)
            entry[state] = entry.get(state, 0) + 1
            self._ended += 1
            if started is not None:
                if self._first_start is None or started < self._first_start:
                    self._first_start = started
                if ended is not None:
                    runtime = ended - started
                    entry["runtime"] += runtime
                    entry["ran"] += 1
                    self._sum_iy += self._ran * runtime
                    self._sum_y += runtime
                    self._ran += 1
            if ended is not None and (self._last_end is None or ended > self._last_end):
                self._last_end = ended

    def summary(self, unfinished: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
        """The figures, shaped as :func:`aggregate`'s; ``unfinished`` gives the jobs not
        ended yet by plugin and state (the engine knows them)."""
        with self._lock:
            live: dict[str, dict[str, int]] = {}  # the rows of the jobs not ended
            for name, states in (unfinished or {}).items():
                name = name.lower()
                row = live.setdefault(name if name in self._plugins else OTHER_PLUGINS, {})
                for state, count in states.items():
                    row[state] = row.get(state, 0) + count
            plugins = {}
            for name, counters in self._plugins.items():
                entry = {"count": counters["count"], **{s: 0 for s in State.ALL}}
                for state in State.FINAL:
                    entry[state] = counters[state]
                entry.update(live.get(name, {}))
                entry["runtime"], entry["ran"] = counters["runtime"], counters["ran"]
                entry["mean"] = counters["runtime"] / counters["ran"] if counters["ran"] else 0.0
                plugins[name] = entry
            n, total, sum_iy = self._ran, self._sum_y, self._sum_iy
            first, last, jobs, ended = self._first_start, self._last_end, self._jobs, self._ended
        wall = (last - first) if first is not None and last is not None else 0.0
        slope = intercept = 0.0
        if n >= 2:
            mean_x = (n - 1) / 2
            sxx = n * (n * n - 1) / 12  # the sum of (i - mean_x)^2 for i in 0..n-1
            slope = (sum_iy - mean_x * total) / sxx
            intercept = total / n - slope * mean_x
        elif n == 1:
            intercept = total
        return {
            "plugins": plugins,
            "jobs": jobs,
            "finished": ended,
            "ran": n,
            "total_runtime": total,
            "wall_time": wall,
            "speedup": (total / wall) if wall > 0 else 0.0,
            "regression": {"intercept": intercept, "slope": slope},
        }


def format_statistics(summary: dict[str, Any]) -> str:
    """The statistics of :func:`aggregate` as a readable text table."""
    from tabulate import tabulate  # here: it imports importlib.metadata, slow to import

    rows = [
        [
            shown_name(name),  # a name of a megabyte would widen every row to it
            entry["count"],
            entry["success"],
            entry["failure"],
            entry["aborted"],
            float(entry["runtime"]),
            entry["mean"] * 1000,
        ]
        for name, entry in sorted(summary["plugins"].items())
    ]
    table = tabulate(  # floats written so, not read again from text (1.23457e+06)
        rows,
        headers=["plugin", "jobs", "success", "failure", "aborted", "total s", "mean ms"],
        floatfmt=".3f",
    )
    reg = summary["regression"]
    slope = f"{'-' if reg['slope'] < 0 else '+'} {abs(reg['slope']) * 1000:.6f}"
    lines = [
        table,
        "",
        f"jobs: {summary['jobs']}, finished: {summary['finished']}, ran: {summary['ran']}",
        f"total execution time: {summary['total_runtime']:.3f} s",
        f"total wall time: {summary['wall_time']:.3f} s",
        f"speed-up: {summary['speedup']:.2f}",
        f"execution time regression: {reg['intercept'] * 1000:.3f} ms {slope} ms per job",
    ]
    return "\n".join(lines)
