"""The journal as a SQLite file ``journal.sqlite`` in the work directory (the real one).

WAL mode, a busy timeout, one writer connection behind a lock, a versioned schema; the
contract is that of :class:`~dahu.journal.base.Journal`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

from .. import __version__
from ..errors import JournalError
from ..states import State
from ..statistics import aggregate
from .base import (
    HOST,
    INTERRUPTED,
    JobRecord,
    Journal,
    default_workdir,
    encode_final_input,
    encode_input,
    encode_output,
)

logger = logging.getLogger(__name__)

__all__ = ["SQLiteJournal", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


def _process_alive(host: str | None, pid: int | None, since: float | None) -> bool:
    """Whether the process that wrote a record may still be running."""
    if host != HOST:
        return True  # another machine: cannot tell, leave its jobs alone
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        # a recycled pid belongs to a process started after the job was submitted
        return since is None or proc.create_time() <= since + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class SQLiteJournal(Journal):
    """The journal as a SQLite file (WAL mode; one writer connection behind a lock)."""

    FILENAME = "journal.sqlite"

    def __init__(
        self, workdir: str | None = None, filename: str | None = None, create: bool = True
    ):
        """Open (or, with ``create``, create) the journal of ``workdir``."""
        self.workdir = os.path.abspath(workdir or default_workdir())
        self.path = os.path.join(self.workdir, filename or self.FILENAME)
        if not create and not os.path.isfile(self.path):
            raise JournalError(f"no journal in {self.workdir}")
        try:
            os.makedirs(self.workdir, exist_ok=True)
            self._lock = threading.RLock()
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            # takes effect on a new file only: lets prunes give space back in small steps
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA cache_size=-512")
            self._init_schema()
        except (OSError, sqlite3.Error) as err:
            raise JournalError(f"cannot open the journal in {self.workdir}: {err}") from err
        self._pid = os.getpid()

    def _init_schema(self) -> None:
        current = self._db.execute("PRAGMA user_version").fetchone()[0]
        if current == SCHEMA_VERSION:
            return  # nothing to write: reading another directory's journal changes nothing
        with self.transaction() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    plugin TEXT NOT NULL, state TEXT NOT NULL,
                    input TEXT, output TEXT, error TEXT,
                    submitted REAL, started REAL, ended REAL, runtime REAL,
                    host TEXT, pid INTEGER, version TEXT,
                    module_file TEXT, plugin_version TEXT, extra TEXT)"""  # extra: unused, kept for schema 1
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path} has schema {current}, newer than this Dahu "
                    f"({SCHEMA_VERSION}): upgrade Dahu"
                )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the writer lock and run the block in one IMMEDIATE transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, args)  # autocommit: one statement, one commit
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from err

    def _read(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from err

    _INSERT = (
        "INSERT INTO jobs (plugin, state, input, submitted, host, pid, version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )

    def _new_row(self, plugin: str, input_data: dict[str, Any], submitted: float) -> tuple:
        text = encode_input(input_data)
        return (plugin, State.UNINITIALIZED, text, submitted, HOST, self._pid, __version__)

    def create(self, plugin: str, input_data: dict[str, Any], submitted: float) -> int:
        # one autocommitted statement: cheaper than a transaction for a single record
        return self._write(self._INSERT, self._new_row(plugin, input_data, submitted)).lastrowid

    def create_many(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[int]:
        rows = [self._new_row(plugin, data, submitted) for data in inputs]
        try:
            with self.transaction() as db:
                return [db.execute(self._INSERT, row).lastrowid for row in rows]
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from err

    def state(self, job_id: int) -> str | None:
        rows = self._read("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        self._write(
            "UPDATE jobs SET state = ?, started = COALESCE(?, started) "
            "WHERE id = ? AND state NOT IN (?, ?, ?)",
            (state, started, job_id, *State.FINAL),
        )

    def finish(
        self,
        job_id: int,
        state: str,
        output: dict[str, Any] | None,
        error: str | None,
        started: float | None,
        ended: float | None,
        module_file: str | None = None,
        plugin_version: str | None = None,
        input_data: dict[str, Any] | None = None,
    ) -> None:
        runtime = (ended - started) if started is not None and ended is not None else None
        text, error = encode_output(output, error)
        values = (state, text, error, started, ended, runtime, module_file, plugin_version)
        sql = (
            "UPDATE jobs SET state = ?, output = ?, error = ?, started = ?, ended = ?, "
            "runtime = ?, module_file = ?, plugin_version = ?"
        )
        final_input = encode_final_input(job_id, input_data)
        if final_input is not None:
            values += (final_input,)
            sql += ", input = ?"
        self._write(sql + " WHERE id = ?", values + (job_id,))

    _COLUMNS = (
        "id, plugin, state, input, output, error, submitted, started, ended, runtime, "
        "host, pid, version, module_file, plugin_version"
    )

    @staticmethod
    def _record(row: tuple) -> JobRecord:
        data = list(row)
        inp = json.loads(data[3]) if data[3] else {}
        if isinstance(inp, dict):
            inp["job_id"] = data[0]
        data[3] = inp
        data[4] = json.loads(data[4]) if data[4] else None
        return JobRecord(*data)

    def get(self, job_id: int) -> JobRecord | None:
        rows = self._read(f"SELECT {self._COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return self._record(rows[0]) if rows else None

    def last_id(self) -> int:
        # the highest id ever given: pruned records count too, as ids are never reused
        return (
            self._read(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM jobs), 0), "
                "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0))"
            )[0][0]
            or 0
        )

    def select(
        self, first: int | None = None, last: int | None = None, state: str | None = None
    ) -> Iterator[JobRecord]:
        sql = f"SELECT {self._COLUMNS} FROM jobs WHERE id >= ? AND id <= ?"
        args: list[Any] = [first or 0, last if last is not None else 2**62]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        for row in self._read(sql + " ORDER BY id", args):
            yield self._record(row)

    def mark_interrupted(self) -> list[int]:
        try:
            dead = self._close_dead()
        except sqlite3.Error as err:
            raise JournalError(f"cannot write the journal {self.path}: {err}") from err
        if dead:
            logger.warning("journal %s: %d interrupted job(s) marked failed", self.path, len(dead))
        return dead

    def _close_dead(self) -> list[int]:
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id, host, pid, submitted FROM jobs WHERE state NOT IN (?, ?, ?)",
                tuple(State.FINAL),
            ).fetchall()
            dead = [r[0] for r in rows if not _process_alive(r[1], r[2], r[3])]
            now = time.time()
            db.executemany(
                "UPDATE jobs SET state = ?, error = ?, ended = ? WHERE id = ?",
                [(State.FAILURE, INTERRUPTED, now, i) for i in dead],
            )
        return dead

    def summary(self, first: int = 0) -> dict[str, Any]:
        rows = self._read(
            "SELECT plugin, state, started, ended, runtime FROM jobs WHERE id >= ? ORDER BY id",
            (first,),
        )
        return aggregate(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
