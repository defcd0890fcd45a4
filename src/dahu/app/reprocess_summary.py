"""The summary of a ``dahu-reprocess`` run: per-plugin counts and runtimes, failures,
the comparison with the archive, the exit status; as JSON-ready data or text tables
(see ``docs/reprocess.md``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from ..states import State
from .jobtable import shown

__all__ = [
    "summarize",
    "format_summary",
    "print_summary",
    "summary_stdout",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
ENDED = (State.SUCCESS, State.FAILURE)  # the jobs --compare compares (not those aborted)


def _brief(result: Any, **more: Any) -> dict[str, Any]:
    return {"source": result.source, "plugin": result.plugin, "job_id": result.job_id, **more}


def _row() -> dict[str, Any]:
    return {
        "jobs": 0,
        "success": 0,
        "failure": 0,
        "aborted": 0,
        "invalid": 0,
        "runtime": 0.0,
        "ran": 0,
    }


def summarize(run: Any, output_dir: str) -> dict[str, Any]:
    """The summary of a run as JSON-ready data (see ``docs/reprocess.md``)."""
    # one row per plugin however its inputs spelled it (the factory ignores the case)
    runtimes: dict[str, dict[str, Any]] = {}
    for name, stats in run.engine.statistics()["plugins"].items():
        times = runtimes.setdefault(name.lower(), {"runtime": 0.0, "ran": 0})
        times["runtime"] += stats.get("runtime", 0.0)
        times["ran"] += stats.get("ran", 0)
    plugins: dict[str, dict[str, Any]] = {}
    for result in run.results:
        entry = plugins.setdefault(result.plugin.lower(), _row())
        entry["jobs"] += 1
        entry[result.state] = entry.get(result.state, 0) + 1
        entry["invalid"] += result.invalid
    total = _row()
    for name, entry in plugins.items():
        entry["runtime"] = runtimes.get(name, {}).get("runtime", 0.0)
        entry["ran"] = runtimes.get(name, {}).get("ran", 0)
        for key in total:
            total[key] += entry[key]
    for entry in (*plugins.values(), total):  # the jobs that ran: not those Ctrl-C cancelled
        entry["mean"] = entry["runtime"] / entry["ran"] if entry["ran"] else 0.0
    ran = total["jobs"] - total["invalid"]
    wall = run.ended - run.started
    compared = [r for r in run.results if r.compared]
    differ = sorted((r for r in compared if r.difference), key=lambda r: r.job_id or 0)
    summary: dict[str, Any] = {
        "output_dir": output_dir,
        "plugins": dict(sorted(plugins.items())),
        "total": total,
        "not_started": len(run.items) - len(run.results) - len(run.pending),
        "still_running": len(run.pending),
        "wall_time": wall,
        "jobs_per_s": ran / wall if wall > 0 else 0.0,
        "errors": [_brief(r, error=r.error) for r in run.results if r.state == State.FAILURE],
        "aborted_jobs": [_brief(r, error=r.error) for r in run.results if r.state == State.ABORTED],
        "compare": None,
        "interrupted": run.stop.is_set(),
    }
    # a job listed from a live server's journal that had not ended there (queued, running)
    # has no archived output: not "without archive" as if its job had given none
    unfinished = {item.label for item in run.items if getattr(item, "unfinished", False)}
    if run.args.compare:
        summary["compare"] = {
            "compared": len(compared),
            "same": len(compared) - len(differ),
            "differ": len(differ),
            "no_archive": sum(
                1
                for r in run.results
                if r.job_id is not None
                and r.state in ENDED
                and not (r.compared or r.incomplete_archive)
                and r.source not in unfinished
            ),
            "incomplete_archive": sum(1 for r in run.results if r.incomplete_archive),
            "unfinished_archive": sum(
                1 for r in run.results if r.source in unfinished and r.state in ENDED
            ),
            "rtol": run.args.rtol,
            "atol": run.args.atol,
            "differences": [
                _brief(r, key=r.difference.path, reason=r.difference.reason) for r in differ
            ],
        }
    if summary["interrupted"] or run.forced:
        status = EXIT_INTERRUPTED
    elif total["failure"] or total["aborted"] or (summary["compare"] or {}).get("differ"):
        status = EXIT_FAILED
    else:
        status = EXIT_OK
    summary["exit_status"] = status
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the text tables ``dahu-reprocess`` prints."""
    from tabulate import tabulate  # here: it imports importlib.metadata, slow to import

    headers = ["plugin", "jobs", "success", "failure", "aborted", "total s", "mean ms"]
    rows = [
        [
            _escaped(name),
            e["jobs"],
            e["success"],
            e["failure"],
            e["aborted"],
            e["runtime"],
            e["mean"] * 1e3,
        ]
        for name, e in [*summary["plugins"].items(), ("total", summary["total"])]
    ]
    lines = [tabulate(rows, headers=headers, floatfmt=".3f"), ""]
    total = summary["total"]
    lines.append(
        f"{total['jobs'] - total['invalid']} job(s) in {summary['wall_time']:.2f} s "
        f"({summary['jobs_per_s']:.1f} jobs/s); output in {_escaped(summary['output_dir'])}"
    )
    if total["invalid"]:
        lines.append(f"{total['invalid']} input(s) could not be run")
    if summary["interrupted"]:
        lines.append(
            f"interrupted: {summary['not_started']} input(s) not started, "
            f"{summary['still_running']} job(s) still running at exit"
        )
    comparison = summary["compare"]
    if comparison is not None:
        lines.append(
            f"compared {comparison['compared']} output(s) with their archive: "
            f"{comparison['same']} the same, {comparison['differ']} differ, "
            f"{comparison['no_archive']} without archive"
            + (
                f", {comparison['incomplete_archive']} whose archived job was aborted or interrupted "
                "(not compared)"
                if comparison.get("incomplete_archive")
                else ""
            )
            + (
                f", {comparison['unfinished_archive']} whose job had not ended in the journal "
                "(queued or running: no archive)"
                if comparison.get("unfinished_archive")
                else ""
            )
        )
        if comparison["differences"]:
            table = [
                [
                    d["job_id"],
                    _escaped(d["source"]),
                    _escaped(d["plugin"]),
                    _escaped(d["key"] or "(output)"),
                    _escaped(d["reason"]),
                ]
                for d in comparison["differences"]
            ]
            headers = ["job", "source", "plugin", "first difference", "detail"]
            lines += ["", "jobs that differ from their archive:", tabulate(table, headers)]
    return "\n".join(lines)


def _escaped(name: str) -> str:
    """A file name with the bytes that are not UTF-8 escaped (``caf\\udce9.inp``), and
    its control characters (``\\n``, ``\\x1b``): one row of a table each."""
    return shown(name).encode("utf-8", "backslashreplace").decode("utf-8")


def print_summary(summary: dict[str, Any], as_json: bool, out: TextIO | None = None) -> bool:
    """Print the summary on ``out`` (standard output), as JSON or tables; a reader that
    went away (``| head``) is not an error: the run still ends as it should.  Whether the
    summary could be written: not on a full disk (``--json > report.json``), which is
    said in one line on standard error (until 2026-11-30 a traceback, the journal left
    open)."""
    out = out or sys.stdout
    try:
        text = json.dumps(summary, indent=2) if as_json else format_summary(summary)
        print(text, file=out, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    except OSError as err:
        sys.stderr.write(f"dahu-reprocess: cannot write the summary: {err.strerror or err}\n")
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # its buffer would fail again
        return False
    return True


@contextlib.contextmanager
def summary_stdout() -> Iterator[TextIO]:
    """Standard output kept for the summary alone: meanwhile file descriptor 1 is standard
    error, so that what plugins print (``print``, C libraries, worker processes) does not
    spoil it (``--json > report.json``).  Yields the file to print the summary on."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no standard output to keep
        yield sys.stdout
        return
    os.dup2(2, 1)
    # the descriptor is closed below, once restored; a file name that is not UTF-8 (an
    # archive from a Latin-1 share: "caf\udce9.inp") is written escaped, as on stderr
    # (until 2026-11-30 a UnicodeEncodeError traceback instead of the summary)
    out = open(saved, "w", encoding=sys.stdout.encoding, errors="backslashreplace", closefd=False)
    try:
        yield out
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            out.close()
        os.dup2(saved, 1)
        os.close(saved)
