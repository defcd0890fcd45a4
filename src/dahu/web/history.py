"""Ended jobs read from the journal, for ``/api/jobs`` and ``/api/failures``.

The monitor keeps only the latest jobs in memory; these listings search the journal
instead, on a read-only connection of their own (SQLite's WAL lets it read beside the
server's writer without blocking it), in a worker thread of the web server.  Every query
is one seek per state in the journal's state index, newest id first, so it costs the
same on a journal of a million jobs as on a new one.  The journal has no index on the
plugin: a plugin filter searches only the latest :data:`PLUGIN_SCAN` jobs.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from typing import Any

from ..errors import JournalError
from ..journal import SQLiteJournal
from ..states import State
from .monitor import reason_line

__all__ = ["latest_jobs", "PLUGIN_SCAN", "ENDED", "FAILED"]

PLUGIN_SCAN = 100_000  # job ids back from the newest that a plugin filter searches
ENDED = (State.SUCCESS, State.FAILURE, State.ABORTED)
FAILED = (State.FAILURE, State.ABORTED)
_COLUMNS = "id, plugin, state, runtime, ended, substr(error, 1, 2000)"


def latest_jobs(
    journal: Any, limit: int, states: tuple[str, ...], plugin: str | None = None
) -> list[dict[str, Any]] | None:
    """The ``limit`` newest jobs of the journal in one of ``states`` (and of ``plugin``),
    newest id first, as the monitor's items; None when the journal is not a SQLite file
    (then only the monitor knows the jobs)."""
    if not isinstance(journal, SQLiteJournal):
        return None
    uri = f"file:{urllib.parse.quote(journal.path)}?mode=ro"
    rows: list[tuple] = []
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        try:
            where, args = "state = ?", []
            if plugin is not None:
                newest = db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
                where += " AND plugin = ? AND id > ?"
                args = [plugin, newest - PLUGIN_SCAN]
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
