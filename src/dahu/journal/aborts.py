"""Aborts asked of jobs that another process runs, carried by the journal.

A job runs in the process whose engine started it: a second server on the work
directory, a worker process whose plugin made it (``process`` or ``dask`` executor).
Another process cannot stop it itself; it writes a row in the table ``abort_requests``
(an addition: a Dahu that does not know it ignores it), which every engine that runs
jobs reads in its sweep (:mod:`dahu.engine.aborts`), and waits for the answer the
owning engine writes in the row: whether it was queued or running there and is now
stopping.  The engine marks a row taken (:func:`take`) before it aborts the job; a row
nobody took in time is withdrawn (its asker says False): a request taken is carried
out, one withdrawn never, whatever the timing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any

from ..errors import JournalError
from ..states import State
from .sqlite import SQLiteJournal

__all__ = ["TAKEN", "WAIT", "ask", "asked", "answer", "answer_of", "take", "withdraw"]

WAIT = 1.25
"""Seconds a row waits at most for another process's write lock."""

KEEP = 3600.0
"""Seconds after which a row left behind (its asker killed while it waited) goes."""

_TABLE = (
    "CREATE TABLE IF NOT EXISTS abort_requests "
    "(job INTEGER, reason TEXT, asked REAL, answer INTEGER)"
)
_FINAL = tuple(State.FINAL)


def ask(journal: Any, job_id: int, reason: str) -> int | None:
    """Write the request to abort ``job_id`` with ``reason``; its row id, or None when
    the job has ended (or is unknown) in ``journal``: nothing to ask."""
    if not isinstance(journal, SQLiteJournal):
        return None  # (a journal in memory is no other process's)
    now = time.time()
    marks = ", ".join("?" * len(_FINAL))
    with journal.transaction(WAIT) as db:
        unfinished = db.execute(
            f"SELECT 1 FROM jobs WHERE id = ? AND state NOT IN ({marks})", (job_id, *_FINAL)
        ).fetchone()
        if unfinished is None:
            return None
        db.execute(_TABLE)
        db.execute("DELETE FROM abort_requests WHERE asked < ?", (now - KEEP,))
        row = (job_id, reason, now)
        return db.execute("INSERT INTO abort_requests VALUES (?, ?, ?, NULL)", row).lastrowid


TAKEN = -1
"""The answer column of a request its owning engine took and is carrying out."""


def answer_of(journal: Any, rowid: int) -> bool | None:
    """The answer written in the row ``rowid`` (deleted once read), or None: none yet
    (or taken, not answered yet)."""
    rows = journal._read("SELECT answer FROM abort_requests WHERE rowid = ?", (rowid,))
    if not rows or rows[0][0] in (None, TAKEN):
        return None
    withdraw(journal, rowid, answered=True)
    return bool(rows[0][0])


def withdraw(journal: Any, rowid: int, answered: bool = False) -> int | None:
    """Delete the row ``rowid`` unless its engine took it (``answered``: in any case):
    None if it was withdrawn so (or is not there), :data:`TAKEN` if it was taken and is
    left to its answer, else the answer written meanwhile (1 or 0)."""
    with journal.transaction(WAIT) as db:
        if not answered:
            rows = db.execute("SELECT answer FROM abort_requests WHERE rowid = ?", (rowid,))
            found = rows.fetchone()
            if found is not None and found[0] == TAKEN:
                return TAKEN
            if found is not None and found[0] is not None:
                db.execute("DELETE FROM abort_requests WHERE rowid = ?", (rowid,))
                return int(found[0])
        db.execute("DELETE FROM abort_requests WHERE rowid = ?", (rowid,))
    return None


def asked(journal: Any) -> list[tuple[int, int, str]]:
    """``(rowid, job id, reason)`` of the requests not answered yet (none when the
    table is not there: no abort was ever asked so)."""
    if not isinstance(journal, SQLiteJournal):
        return []
    try:
        return journal._read("SELECT rowid, job, reason FROM abort_requests WHERE answer IS NULL")
    except JournalError:  # no such table (or unreadable now: the next sweep)
        return []


def take(journal: Any, rowid: int) -> bool:
    """Mark the row ``rowid`` taken by its owning engine; False if its asker withdrew it
    (it answered False: the job must not be aborted)."""
    with journal.transaction(WAIT) as db:
        sql = "UPDATE abort_requests SET answer = ? WHERE rowid = ? AND answer IS NULL"
        return db.execute(sql, (TAKEN, rowid)).rowcount == 1


def answer(journal: Any, rowid: int, stopping: bool) -> None:
    """Write the answer of the owning engine in the row ``rowid`` (if still there)."""
    with contextlib.suppress(sqlite3.OperationalError), journal.transaction(WAIT) as db:
        db.execute("UPDATE abort_requests SET answer = ? WHERE rowid = ?", (int(stopping), rowid))
