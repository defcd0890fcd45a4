"""The journal as a SQLite file ``journal.sqlite`` in the work directory (the real one).

WAL mode, a busy timeout, one writer connection behind a lock, a versioned schema; the
contract is that of :class:`~dahu.journal.base.Journal`.

Group commit.  A commit costs far more than the statement it commits (tens of
microseconds of WAL and lock work, against a few for an INSERT), so writes are batched:
a thread that writes queues its statement, then takes the writer lock; whoever holds the
lock commits *every* queued statement in one transaction, and the threads whose
statements it carried find them done when they get the lock.  No thread waits for a
timer and none is added: alone, a write is one transaction as before; under load (the
worker threads ending jobs while the device creates new ones) one commit carries many.

What it keeps: every write method returns only once its statement is committed, so a
job's record exists before its id is returned (``create``) and its outcome is in the
journal before anyone is told it ended (``finish`` returns before the engine sets the
job's state, runs its callbacks, pushes its event or answers ``waitJob``).  A crash
(``kill -9``, a power cut with ``synchronous=NORMAL`` aside) loses at most statements
still queued, whose callers were not answered yet: nothing a client was told.
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

_UNFINISHED = tuple(state for state in State.ALL if state not in State.FINAL)
"""The states a record can have before its job ends (looked up with the state index)."""


class _Write:
    """One statement queued for the next group commit (``rows``: its argument tuples)."""

    __slots__ = ("sql", "rows", "ids", "done", "error", "then")

    def __init__(self, sql: str, rows: list[tuple], then: Any = None):
        self.sql = sql
        self.rows = rows
        self.ids: list[int] = []
        self.done = False
        self.error: BaseException | None = None
        self.then = then  # called with the error (or None) once committed (finish_later)


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
            self._queue_lock = threading.Lock()
            self._queue: list[_Write] = []
            self.commits = 0  # transactions committed by _write (group commit)
            # finish_later: writes whose caller does not wait (reported through ``then``)
            self._pending = 0  # queued or committed, ``then`` not yet run
            self._settled = threading.Condition(threading.Lock())
            self._reporting = threading.local()
            self._closing = False
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
    def _locked(self) -> Iterator[None]:
        """Hold the writer lock; on leaving, commit what others queued meanwhile."""
        self._lock.acquire()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._lock.release()
        # a writer that found the lock taken queued its write and left: the holder
        # commits it (the outermost holder: an inner one is inside a transaction)
        if self._queue and not self._lock._is_owned():  # type: ignore[attr-defined]
            self._drain()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the writer lock and run the block in one IMMEDIATE transaction."""
        with self._locked():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _write(self, sql: str, rows: list[tuple]) -> list[int]:
        """Commit ``sql`` once per row, with every write queued now, in one transaction;
        return the rows' ``lastrowid``."""
        write = _Write(sql, rows)
        with self._queue_lock:
            self._queue.append(write)
        batch: list[_Write] = []
        self._lock.acquire()
        try:
            if not write.done:
                batch = self._take()
                self._commit(batch)
        finally:
            self._release()
        self._report(batch)
        if write.error is not None:
            err = write.error
            raise JournalError(f"cannot write the journal {self.path}: {err}") from err
        return write.ids

    def _write_later(self, write: _Write) -> None:
        """Queue ``write`` (its ``then`` reports it) and commit the queue now if the
        writer lock is free; if not, its holder commits it when it leaves: the caller
        never waits."""
        with self._settled:
            if self._closing:
                raise JournalError(f"the journal {self.path} is closed")
            self._pending += 1
        with self._queue_lock:
            self._queue.append(write)
        self._drain()

    def _drain(self) -> None:
        """Commit the queued writes while the writer lock is free, then report them."""
        while self._queue:
            if not self._lock.acquire(blocking=False):
                return  # its holder commits the queue when it leaves
            try:
                batch = self._take()
                self._commit(batch)
            finally:
                self._lock.release()
            self._report(batch)

    def _take(self) -> list[_Write]:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        return batch

    def _report(self, batch: list[_Write]) -> None:
        """Call the ``then`` of the committed writes of ``batch`` that have one, in order."""
        reported = 0
        self._reporting.active = True
        try:
            for write in batch:
                if write.then is None:
                    continue
                reported += 1
                error = write.error
                if error is not None and not isinstance(error, JournalError):
                    error = JournalError(f"cannot write the journal {self.path}: {error}")
                try:
                    write.then(error)
                except BaseException:  # one report must not stop the others
                    logger.exception("journal: a job's report failed")
        finally:
            self._reporting.active = False
            if reported:
                with self._settled:
                    self._pending -= reported
                    if not self._pending:
                        self._settled.notify_all()

    def _commit(self, batch: list[_Write]) -> None:
        """Commit ``batch`` in one transaction (writer lock held); every write gets its
        ids or the error."""
        if not batch:
            return
        db = self._db
        failure: BaseException | None = None
        if len(batch) == 1 and len(batch[0].rows) == 1:
            # alone: one autocommitted statement costs less than BEGIN + it + COMMIT
            write = batch[0]
            try:
                write.ids = [db.execute(write.sql, write.rows[0]).lastrowid]
                self.commits += 1
            except sqlite3.Error as err:
                failure = err
            finally:
                write.error = failure
                write.done = True
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for write in batch:
                    write.ids = [db.execute(write.sql, row).lastrowid for row in write.rows]
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as err:
            failure = err
        except BaseException as err:  # e.g. KeyboardInterrupt: the others must not hang
            failure = err
            raise
        finally:
            for write in batch:
                write.error = failure
                write.done = True

    def _read(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        try:
            with self._locked():
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
        return self._write(self._INSERT, [self._new_row(plugin, input_data, submitted)])[0]

    def create_many(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[int]:
        return self._write(self._INSERT, [self._new_row(plugin, d, submitted) for d in inputs])

    def state(self, job_id: int) -> str | None:
        rows = self._read("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        self._write(
            "UPDATE jobs SET state = ?, started = COALESCE(?, started) "
            "WHERE id = ? AND state NOT IN (?, ?, ?)",
            [(state, started, job_id, *State.FINAL)],
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
        final_input = encode_final_input(job_id, input_data)
        if final_input is not None:
            self._write(self._FINISH_INPUT, [values + (final_input, job_id)])
        else:
            self._write(self._FINISH, [values + (job_id,)])

    def finish_later(
        self,
        then: Any,
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
        final_input = encode_final_input(job_id, input_data)
        if final_input is not None:
            write = _Write(self._FINISH_INPUT, [values + (final_input, job_id)], then)
        else:
            write = _Write(self._FINISH, [values + (job_id,)], then)
        self._write_later(write)

    def flush(self) -> None:
        if getattr(self._reporting, "active", False):
            return  # from a report: what it would wait for includes itself
        self._drain()
        with self._settled:
            while self._pending:
                self._settled.wait()

    _FINISH = (
        "UPDATE jobs SET state = ?, output = ?, error = ?, started = ?, ended = ?, "
        "runtime = ?, module_file = ?, plugin_version = ? WHERE id = ?"
    )
    _FINISH_INPUT = _FINISH.replace(" WHERE", ", input = ? WHERE")

    def finish_many(
        self,
        outcomes: list[
            tuple[int, str, dict[str, Any] | None, str | None, float | None, float | None]
        ],
    ) -> None:
        rows = []
        for job_id, state, output, error, started, ended in outcomes:
            runtime = (ended - started) if started is not None and ended is not None else None
            text, error = encode_output(output, error)
            rows.append((state, text, error, started, ended, runtime, None, None, job_id))
        self._write(self._FINISH, rows)

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
            rows = db.execute(  # a few seeks in the state index, not a scan of the table
                f"SELECT id, host, pid, submitted FROM jobs "
                f"WHERE state IN ({', '.join('?' * len(_UNFINISHED))})",
                _UNFINISHED,
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
        """Commit and report what :meth:`finish_later` queued, then close."""
        self.flush()
        with self._settled:
            self._closing = True
        with self._lock:
            self._db.close()
