"""Job statistics: per-plugin counts and runtimes, wall time, speed-up, and the linear
regression of execution time against job order (is the server getting slower?)."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from .states import State

__all__ = ["aggregate", "format_statistics"]


def aggregate(rows: list[tuple[str, str, float | None, float | None, float | None]]) -> dict:
    """Per-plugin counts and runtimes, wall time and the runtime-vs-order regression."""
    plugins: dict[str, dict[str, Any]] = {}
    starts, ends, runtimes = [], [], []
    for plugin, state, started, ended, runtime in rows:
        entry = plugins.setdefault(
            plugin, {"count": 0, **{s: 0 for s in State.ALL}, "runtime": 0.0}
        )
        entry["count"] += 1
        entry[state] = entry.get(state, 0) + 1
        if runtime is not None:
            entry["runtime"] += runtime
            runtimes.append(runtime)
        if started is not None:
            starts.append(started)
        if ended is not None:
            ends.append(ended)
    for entry in plugins.values():
        done = entry["success"] + entry["failure"] + entry["aborted"]
        entry["mean"] = entry["runtime"] / done if done else 0.0
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
        "finished": n,
        "total_runtime": total,
        "wall_time": wall,
        "speedup": (total / wall) if wall > 0 else 0.0,
        "regression": {"intercept": intercept, "slope": slope},
    }


def format_statistics(summary: dict[str, Any]) -> str:
    """The statistics of :func:`aggregate` as a readable text table."""
    rows = [
        [
            name,
            entry["count"],
            entry["success"],
            entry["failure"],
            entry["aborted"],
            f"{entry['runtime']:.3f}",
            f"{entry['mean'] * 1000:.3f}",
        ]
        for name, entry in sorted(summary["plugins"].items())
    ]
    table = tabulate(
        rows,
        headers=["plugin", "jobs", "success", "failure", "aborted", "total s", "mean ms"],
    )
    reg = summary["regression"]
    lines = [
        table,
        "",
        f"jobs: {summary['jobs']}, finished: {summary['finished']}",
        f"total execution time: {summary['total_runtime']:.3f} s",
        f"total wall time: {summary['wall_time']:.3f} s",
        f"speed-up: {summary['speedup']:.2f}",
        "execution time regression: "
        f"{reg['intercept'] * 1000:.3f} ms + {reg['slope'] * 1000:.6f} ms per job",
    ]
    return "\n".join(lines)
