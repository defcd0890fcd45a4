"""The starts whose writing of the files a dead process left unwritten is under way
(:mod:`dahu.engine.recovery`), kept in the journal: a start killed in the middle of it
leaves its row, and the next start looks again at every job that one had to look at.

Without them the next start saw, first, the files that start had written (those of the
jobs it closed as interrupted, or of the jobs it ran meanwhile), took the older ends for
written, and the rest never got theirs.  A row names its process: its host and pid,
and its row in ``processes`` (:mod:`.processes`; in the table ``recovery_processes``,
an addition a Dahu that does not know it ignores), so that two processes of one pid in
two pid namespaces are told apart; the rows of a live one (another server on the
directory, a worker process's own engine) are left to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..errors import JournalError, one_line
from . import processes
from .base import HOST
from .sqlite import SQLiteJournal
from .sqlitefile import process_alive

logger = logging.getLogger(__name__)

__all__ = ["Pending", "begin", "end", "left_by_dead"]

WAIT = 5.0
"""Seconds a row waits at most for another process's lock (then: no row, no harm but
a longer look at the next start)."""

_TABLE = "CREATE TABLE IF NOT EXISTS recoveries (host TEXT, pid INTEGER, started REAL, top INTEGER)"
_PROCESSES = (
    "CREATE TABLE IF NOT EXISTS recovery_processes (recovery INTEGER PRIMARY KEY, process INTEGER)"
)


@dataclass
class Pending:
    """A start's writing of files, under way or cut short: ``top``, its last id then."""

    rowid: int
    host: str | None
    pid: int | None
    started: float | None
    top: int
    process: int | None = None  # its row in ``processes`` (None: an older Dahu's)


def begin(journal: Any, top: int) -> int | None:
    """Record that this process starts writing the files left unwritten up to id ``top``;
    its row id (None: not a SQLite journal, or the journal refused it)."""
    if not isinstance(journal, SQLiteJournal):
        return None  # (a journal in memory outlives no process)
    try:
        with journal.transaction(WAIT) as db:
            db.execute(_TABLE)
            row = (HOST, os.getpid(), time.time(), top)
            rowid = db.execute("INSERT INTO recoveries VALUES (?, ?, ?, ?)", row).lastrowid
            db.execute(_PROCESSES)  # (and not an older Dahu's row of that rowid)
            process = (rowid, processes.row_of(journal))
            db.execute("INSERT OR REPLACE INTO recovery_processes VALUES (?, ?)", process)
            return rowid
    except (JournalError, sqlite3.Error) as err:  # a full disk: the files are written anyway
        logger.warning("journal %s: cannot record this start: %s", journal.path, one_line(str(err)))
        return None


def left_by_dead(journal: Any) -> list[Pending]:
    """The starts of processes that are gone, whose writing was cut short."""
    if not isinstance(journal, SQLiteJournal):
        return []
    columns = "r.rowid, r.host, r.pid, r.started, r.top"
    try:
        rows = journal._read(
            f"SELECT {columns}, p.process FROM recoveries r "
            "LEFT JOIN recovery_processes p ON p.recovery = r.rowid"
        )
    except JournalError:  # no such table: rows of an older Dahu only, or none
        try:
            rows = journal._read(f"SELECT {columns} FROM recoveries r")
        except JournalError:
            return []
    pending = [Pending(*row) for row in rows]
    known = processes.known(journal._read, journal.path)
    return [
        p for p in pending if not process_alive(p.host, p.pid, p.started, None, known, p.process)
    ]


def end(journal: Any, rowids: list[int | None]) -> None:
    """The writing of the rows ``rowids`` is done: they go."""
    rowids = [rowid for rowid in rowids if rowid is not None]
    if rowids:
        with contextlib.suppress(JournalError, sqlite3.Error), journal.transaction(WAIT) as db:
            marks = ",".join("?" * len(rowids))
            db.execute(f"DELETE FROM recoveries WHERE rowid IN ({marks})", rowids)
            with contextlib.suppress(sqlite3.OperationalError):  # (no such table: none)
                db.execute(f"DELETE FROM recovery_processes WHERE recovery IN ({marks})", rowids)
