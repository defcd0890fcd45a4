"""Jobs read from the journal: the listings of ``/api/jobs`` and ``/api/failures``, and
one job for ``/api/jobs/ID``.

The monitor keeps only the latest jobs in memory; these listings search the journal
instead, on a read-only connection of their own (SQLite's WAL lets it read beside the
server's writer without blocking it), in a worker thread of the web server.  Every query
is one seek per state in the journal's state index, newest id first, so it costs the
same on a journal of a million jobs as on a new one.  The journal has no index on the
plugin: a plugin filter searches only the latest :data:`PLUGIN_SCAN` jobs.

An input or output larger than :data:`MAX_SHOWN` bytes of JSON is not read for
``/api/jobs/ID`` (a few parallel requests for a 100 MB output held copies of it and kept
the web thread busy for seconds): the answer says it was left out and how large it is.
An error larger than that is cut to its first :data:`MAX_SHOWN` characters.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..errors import JournalError
from ..jobquery import plugin_condition
from ..journal import JobRecord, SQLiteJournal
from ..journal.base import storable_id
from ..journal.sqlitefile import connect_file
from ..states import State
from .monitor import reason_line

__all__ = ["latest_jobs", "live_jobs", "job_details", "PLUGIN_SCAN", "MAX_SHOWN", "ENDED", "FAILED"]

PLUGIN_SCAN = 100_000  # job ids back from the newest that a plugin filter searches
ENDED = (State.SUCCESS, State.FAILURE, State.ABORTED)
FAILED = (State.FAILURE, State.ABORTED)
MAX_SHOWN = 1_000_000  # bytes of JSON of an input or output that /api/jobs/ID sends
_NUMBER = "CASE WHEN typeof({0}) IN ('integer', 'real') THEN {0} END"  # a damaged one: null
_COLUMNS = (
    f"id, plugin, state, {_NUMBER.format('runtime')}, {_NUMBER.format('ended')}, "
    "substr(error, 1, 2000)"
)
_DETAILS = (
    f"id, plugin, state, typeof(input), typeof(output), substr(error, 1, {MAX_SHOWN}), "
    "submitted, started, ended, runtime, host, pid, version, module_file, plugin_version, "
    "length(error)"
)


def _connect(journal: SQLiteJournal) -> sqlite3.Connection:
    """A read-only connection to the journal's file."""
    return connect_file(journal.path)


def latest_jobs(
    journal: Any, limit: int, states: tuple[str, ...], plugin: str | None = None
) -> list[dict[str, Any]] | None:
    """The ``limit`` newest jobs of the journal in one of ``states`` (and of ``plugin``),
    newest id first, as the monitor's items; None when the journal is not a SQLite file
    (then only the monitor knows the jobs)."""
    if not isinstance(journal, SQLiteJournal):
        return None
    rows: list[tuple] = []
    try:
        db = _connect(journal)
        try:
            where, args = "state = ?", []
            if plugin is not None:
                newest = db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
                clause, name = plugin_condition(plugin)
                where += f" AND {clause} AND id > ?"
                args = [name, newest - PLUGIN_SCAN]
            sql = f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY id DESC LIMIT ?"
            for state in states:
                rows += db.execute(sql, [state, *args, limit]).fetchall()
        finally:
            db.close()
    except sqlite3.Error as err:
        raise JournalError(f"cannot read the journal {journal.path}: {err}") from None
    rows.sort(key=lambda row: row[0], reverse=True)
    return [
        {
            "id": job_id,
            "plugin": name,
            "state": state,
            "runtime": runtime,
            "ended": ended,
            "reason": reason_line(error or "") if state != State.SUCCESS else "",
        }
        for job_id, name, state, runtime, ended, error in rows[:limit]
    ]


def live_jobs(engine: Any, state: str, plugin: str | None = None) -> list[dict[str, Any]]:
    """The jobs of this server queued (``starting``) or running now, as the items of
    :func:`latest_jobs`: the journal notes a job running only after
    :data:`~dahu.engine.lifecycle.NOTE_RUNNING_AFTER`, and never notes it queued."""
    name = None if plugin is None else plugin.lower()
    return [
        {
            "id": run.id,
            "plugin": run.plugin_name,
            "state": state,
            "runtime": None,
            "ended": None,
            "reason": "",
        }
        for run in engine.live()
        if run.state == state and (name is None or run.plugin_name.lower() == name)
    ]


def _bounded_record(journal: Any, job_id: int) -> tuple[JobRecord | None, dict[str, int]]:
    """The job's record, without an input or output larger than :data:`MAX_SHOWN`, and
    the sizes of those left out."""
    if not isinstance(journal, SQLiteJournal):
        return journal.get(job_id), {}
    if not storable_id(job_id):
        return None, {}
    try:
        db = _connect(journal)
        try:
            db.execute("BEGIN")  # one snapshot of the record
            row = db.execute(f"SELECT {_DETAILS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None, {}
            data, omitted = list(row[:-1]), {}
            if (row[-1] or 0) > MAX_SHOWN:  # its first MAX_SHOWN characters only
                omitted["error"] = row[-1]  # its length in characters
            for index, column in ((3, "input"), (4, "output")):
                if data[index] == "null":  # typeof() reads the type only, not the text
                    data[index] = None
                    continue
                # its size without reading it, then the text only when it is not too large
                with db.blobopen("jobs", column, job_id, readonly=True) as blob:
                    size = len(blob)
                    if size > MAX_SHOWN:
                        omitted[column], data[index] = size, None
                    else:
                        data[index] = blob.read().decode("utf-8", errors="replace")
        finally:
            db.close()
    except sqlite3.Error as err:
        raise JournalError(f"cannot read the journal {journal.path}: {err}") from None
    return SQLiteJournal._record(tuple(data), strict=False), omitted  # a damaged field: None


def job_details(engine: Any, job_id: int) -> dict[str, Any] | None:
    """Everything about one job (journal + live state); runs off the event loop."""
    from ..job import Job

    record, omitted = _bounded_record(engine.journal, job_id)
    if record is None:
        return None
    state = Job.getStatusFromID(job_id)  # a live job knows its state before the journal
    if state == State.INEXISTANT:
        state = record.state
    return {
        "id": record.id,
        "plugin": record.plugin,
        "state": state,
        "submitted": record.submitted,
        "started": record.started,
        "ended": record.ended,
        "runtime": record.runtime,
        "reason": reason_line(record.error or ""),
        "error": record.error or "",
        "input": None if "input" in omitted or "input" in record.unreadable else record.input,
        "output": None if "output" in omitted else record.output,
        "omitted": omitted,
        "unreadable": record.unreadable,
        "host": record.host,
        "pid": record.pid,
        "version": record.version,
        "module_file": record.module_file,
        "plugin_version": record.plugin_version,
    }
