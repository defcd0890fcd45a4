"""The journal as a SQLite file ``journal.sqlite`` in the work directory (the real one).

WAL mode, a busy timeout, one writer connection behind a lock, a versioned schema; the
contract is that of :class:`~dahu.journal.base.Journal`.

Writes are batched (group commit, :mod:`dahu.journal.writer`).  What it keeps: a
job's record is committed before anyone learns its id (``create`` returns once
committed; ``create_later`` queues it, and the engine commits it before the job starts
or its id is read: ``settle``), and a job's outcome is committed before anyone is told
it ended (``finish`` returns once committed; ``finish_later`` reports the job from the
thread that committed it).  Job ids come from blocks reserved in ``sqlite_sequence``
(``ID_BLOCK`` at a time): several processes on one journal never share an id, and a
process hands back what it did not give when it closes.  A crash (``kill -9``; a power
cut with ``synchronous=NORMAL`` aside) loses at most writes still queued, whose callers
were not answered: nothing a client was told.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from .. import __version__
from ..errors import JournalError
from ..states import State
from ..statistics import aggregate
from ..utils import utf8_text
from . import processes, sqlitefile
from .base import (
    HOST,
    MAX_ID,
    JobRecord,
    Journal,
    checked_output,
    decode_record,
    default_workdir,
    encode_final_input,
    encode_input,
    encode_noted,
    encode_output,
    storable_id,
)
from .files import highest_file_id
from .sqlitefile import (
    close_dead,
    connect_file,
    connect_writer,
    file_identity,
    full_disk_reason,
    process_alive,
    write_refused,
)
from .writer import BatchedWriter, _Write

logger = logging.getLogger(__name__)

__all__ = ["SQLiteJournal", "SCHEMA_VERSION", "process_alive"]

SCHEMA_VERSION = 1


def _close_at_exit(ref: weakref.ref) -> None:
    journal = ref()
    if journal is not None and journal._pid == os.getpid():  # not in a forked child
        with contextlib.suppress(Exception):
            if journal.flush(timeout=30.0):  # bounded: the process must be able to end
                journal.close()


class SQLiteJournal(BatchedWriter, Journal):
    """The journal as a SQLite file (WAL mode; one writer connection behind a lock)."""

    FILENAME = "journal.sqlite"
    identity = sqlitefile.journal_identity  # a token kept in the file
    _extra = None  # a job's column extra: {"process": its writer's row} (.processes)

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
            self._init_writer()
            # job ids: this process takes them from blocks reserved in sqlite_sequence
            self._ids_lock = threading.Lock()
            self._next_id = 1
            self._block_end = 0  # nothing reserved yet
            self._queued_id, self._queued = 0, None  # the last record queued: id, write
            self._db = connect_writer(self.path, create)
            self._init_schema()
            # reads have their own connection: a write waiting for another process's
            # lock (30 s at most) holds up no read of a finished job
            self._reader, self._read_lock = connect_file(self.path, write=True), threading.Lock()
            self._file = file_identity(self.path)  # the file this connection writes
            self._sides = self._side_files()  # and its -wal and -shm files
            self._replaced = False  # another file took its place (check_file)
        except (OSError, sqlite3.Error) as err:
            raise JournalError(
                f"cannot open the journal in {self.workdir}: {err}{full_disk_reason(self.workdir, err)}"
            ) from err
        self._pid = os.getpid()
        self._closed = False
        self._guarded = create  # a writer's: close puts a removed file back
        # a process that ends without closing its journal still commits what it queued
        atexit.register(_close_at_exit, weakref.ref(self))
        if create:  # a writer: its pid namespace and boot, its lock (.processes)
            processes.register(self)

    def check_file(self) -> None:
        """Put the journal's file back if it was removed while this process wrote it (its
        work directory deleted: lost at the exit): write it again, whole, from the connection.
        Its ``-wal`` or ``-shm`` file removed: what the removed ``-wal`` holds goes into
        the journal file, and new connections make new ones.
        A file replaced by another one is left alone: :class:`JournalError`.  The engine
        calls it twice a second (its lock file too: :func:`.processes.keep_lock`);
        :meth:`close` checks too (unless opened with ``create=False``)."""
        if not self._closed:
            self._check_file()
            processes.keep_lock(self)

    def _check_file(self) -> None:
        with self._locked():
            now = file_identity(self.path)
            self._replaced = now is not None and now != self._file  # no new job then
            if now == self._file:
                if self._side_files() != self._sides:
                    self._side_files_removed()
                return
            if now is not None:  # put back by another writer of it (else JournalError)
                return sqlitefile.follow_restored(self)
            try:
                sqlitefile.write_again(self._db, self.path)
                self._reconnect()
            except (OSError, sqlite3.Error) as err:
                raise JournalError(f"cannot write the journal {self.path} again: {err}") from err
        logger.error(
            "journal %s was removed (its work directory deleted?) while this process "
            "wrote it: written again, with every job, from the open database",
            self.path,
        )

    def _side_files(self) -> tuple:
        """The identities of the journal's ``-wal`` and ``-shm`` files (None: none)."""
        return file_identity(self.path + "-wal"), file_identity(self.path + "-shm")

    def _side_files_removed(self) -> None:
        """Its ``-wal`` or ``-shm`` file was removed (writer lock held): the jobs committed
        since the last checkpoint are only in a file nobody else can read, lost at a kill:
        copied into the journal file, then new connections make new ones."""
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:  # a reader keeps it: the engine's retry tries again
                raise sqlite3.OperationalError("another process reads it: tried again later")
            self._reconnect()
        except sqlite3.Error as err:
            raise JournalError(
                f"cannot write the journal {self.path}: its -wal or -shm file was removed "
                f"while this process wrote it, and it cannot be saved: {err}"
            ) from err
        logger.error(
            "journal %s: its -wal or -shm file was removed while this process wrote it: "
            "what it held is in the journal file now",
            self.path,
        )

    def _reconnect(self) -> None:
        """New writer and reader connections to :attr:`path` (writer lock held), in place
        of those writing files that are no longer there."""
        # first: the old ones closing are not the last ones
        db = connect_writer(self.path, self._guarded)
        with self._read_lock:
            self._db.close()
            self._reader.close()
            self._db, self._reader = db, connect_file(self.path, write=True)
        self._file, self._sides = file_identity(self.path), self._side_files()

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
                    module_file TEXT, plugin_version TEXT, extra TEXT)"""  # extra: JSON
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if not current and (highest := highest_file_id(self.workdir)):  # new: ids after
                db.execute("DELETE FROM sqlite_sequence")  # (none: a new journal)
                db.execute("INSERT INTO sqlite_sequence VALUES ('jobs', ?)", (highest,))
                logger.warning(
                    "new journal %s: job files up to id %d are there, ids go on after them",
                    self.path,
                    highest,
                )
            if current > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path} has schema {current}, newer than this Dahu "
                    f"({SCHEMA_VERSION}): upgrade Dahu"
                )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _read(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        try:
            with self._read_lock:
                rows = self._reader.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from err
        self._commit_in_passing()
        return rows

    _INSERT = (
        "INSERT INTO jobs (id, plugin, state, input, submitted, host, pid, version, extra) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    _HIGHEST = (
        "COALESCE((SELECT MAX(id) FROM jobs), 0), "
        "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0)"
    )
    """The highest id recorded and the highest reserved (``sqlite_sequence``)."""

    ID_BLOCK = 64
    """Job ids reserved at once: one small transaction per block instead of an id from
    each record's INSERT, so that a record can be queued before it is committed."""

    def _ids(self, count: int) -> list[int]:
        """Take ``count`` increasing job ids (larger than any given by any process on
        this journal): the rest of this process's block first, then a new block (which
        follows it when no other process reserved meanwhile)."""
        with self._within(self._ids_lock) as until:  # bounded: for records
            ids = list(range(self._next_id, min(self._next_id + count, self._block_end + 1)))
            self._next_id += len(ids)
            more = count - len(ids)
            if more:
                first = self._reserve(max(more, self.ID_BLOCK), until)
                ids.extend(range(first, first + more))
                self._next_id = first + more
            return ids

    def _id(self) -> int:
        """Take one job id: :meth:`_ids` for a single record, without its lists."""
        with self._within(self._ids_lock) as until:
            job_id = self._next_id
            if job_id > self._block_end:  # the block is used up: a new one
                job_id = self._reserve(self.ID_BLOCK, until)
            self._next_id = job_id + 1
            self._queued_id = job_id
            return job_id

    def _reserve(self, size: int, until: float) -> int:
        """Reserve ``size`` ids in ``sqlite_sequence`` (ids lock held; the locks waited
        for until ``until``, :func:`time.monotonic`); return the first."""
        try:
            with self.transaction(until - time.monotonic()) as db:
                row = db.execute(f"SELECT MAX({self._HIGHEST})").fetchone()
                first = (row[0] or 0) + 1
                end = first + size - 1
                if not db.execute(
                    "UPDATE sqlite_sequence SET seq = ? WHERE name = 'jobs'", (end,)
                ).rowcount:
                    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (end,))
        except sqlite3.Error as err:
            raise write_refused(self.path, err) from err
        self._block_end = end
        return first

    def _give_back_ids(self) -> None:
        """Closing: the ids reserved and not given go back (if nobody reserved after)."""
        with self._ids_lock:
            if self._next_id <= self._block_end:
                with contextlib.suppress(sqlite3.Error), self.transaction() as db:
                    db.execute(
                        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'jobs' AND seq = ?",
                        (self._next_id - 1, self._block_end),
                    )
                self._block_end = self._next_id - 1

    def _records(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[tuple]:
        """The INSERT rows of new jobs, with their ids (every input is encoded, or
        refused, before any id is taken)."""
        self._refuse_if_replaced()
        texts = [encode_input(data) for data in inputs]
        ids = self._ids(len(texts)) if texts else []
        return [
            self._row(job_id, plugin, text, submitted)
            for job_id, text in zip(ids, texts, strict=True)
        ]

    def _refuse_if_replaced(self) -> None:
        if self._replaced:  # a job recorded now would be lost with this file: refused
            raise JournalError(f"the journal {self.path} was replaced by another file: no new job")

    def _row(self, job_id: int, plugin: str, text: str, submitted: float) -> tuple:
        """The INSERT row (:attr:`_INSERT`) of a new job whose input is ``text``."""
        plugin, state = utf8_text(plugin), State.UNINITIALIZED  # extra: its writer's row
        return (job_id, plugin, state, text, submitted, HOST, self._pid, __version__, self._extra)

    def create(self, plugin: str, input_data: dict[str, Any], submitted: float) -> int:
        rows = self._records(plugin, [input_data], submitted)
        self._write(self._INSERT, rows, bounded=True)
        return rows[0][0]

    def create_later(
        self,
        then: Any,
        plugin: str,
        input_data: dict[str, Any],
        submitted: float,
    ) -> tuple[int, Any]:
        self._refuse_if_replaced()
        text = encode_input(input_data)  # refused before an id is taken
        job_id = self._id()
        write = _Write(self._INSERT, [self._row(job_id, plugin, text, submitted)], then, True)
        self._queue_later(write)
        self._queued = write
        return job_id, write

    def create_many(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[int]:
        rows = self._records(plugin, inputs, submitted)
        if rows:
            self._write(self._INSERT, rows, bounded=True)
        return [row[0] for row in rows]

    def _by_id(self, columns: str, job_id: int) -> tuple | None:
        """The ``columns`` of job ``job_id``'s row, or None if there is none (an id
        beyond SQLite's integers is no job: it is not looked up)."""
        if not storable_id(job_id):
            return None
        rows = self._read(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def state(self, job_id: int) -> str | None:
        row = self._by_id("state", job_id)
        return row[0] if row else None

    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        self._write(
            "UPDATE jobs SET state = ?, started = COALESCE(?, started) "
            "WHERE id = ? AND state NOT IN (?, ?, ?)",
            [(state, started, job_id, *State.FINAL)],
        )

    def probe(self) -> None:
        self.check_file()  # the file was removed: put back; replaced: JournalError
        # rewrites the last record's page as it is: a commit that needs room on the disk
        self._write("UPDATE jobs SET state = state WHERE id = (SELECT MAX(id) FROM jobs)", [()])

    def _outcome(
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
        noted: Any = None,
    ) -> _Write:
        """The write recording a job's outcome (arguments of :meth:`finish`)."""
        runtime = (ended - started) if started is not None and ended is not None else None
        text, error = encode_noted(output, error, noted)
        self.note_output(job_id, text)
        module_file, plugin_version = utf8_text(module_file), utf8_text(plugin_version)
        values = (state, text, error, started, ended, runtime, module_file, plugin_version)
        final_input = encode_final_input(job_id, input_data)
        if final_input is not None:
            return _Write(self._FINISH_INPUT, [values + (final_input, job_id)])
        return _Write(self._FINISH, [values + (job_id,)])

    def finish(self, *outcome: Any, **named: Any) -> None:  # arguments: Journal.finish
        write = self._outcome(*outcome, **named)
        self._write(write.sql, write.rows)

    def finish_later(self, then: Any, *outcome: Any, hold: bool = False, **named: Any) -> None:
        write = self._outcome(*outcome, **named)
        write.then = then
        self._write_later(write, hold)

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
            self.note_output(job_id, text)
            rows.append((state, text, error, started, ended, runtime, None, None, job_id))
        self._write(self._FINISH, rows)

    _COLUMNS = (
        "id, plugin, state, input, output, error, submitted, started, ended, runtime, "
        "host, pid, version, module_file, plugin_version, " + processes.JOB_PROCESS
    )
    _HEAD = _COLUMNS.replace("input, output", "NULL, NULL")  # get(data=False)

    @staticmethod
    def _record(row: tuple, strict: bool = True) -> JobRecord:
        return decode_record(row, strict)  # a damaged field: a one-line JournalError

    def get(self, job_id: int, data: bool = True) -> JobRecord | None:
        row = self._by_id(self._COLUMNS if data else self._HEAD, job_id)
        return self._record(row) if row else None

    def input_chars(self, job_id: int) -> int | None:
        row = self._by_id("length(input)", job_id)  # not decoded: 0.7 s for 300 MB
        return row[0] if row else None

    def output_text(self, job_id: int) -> str | None:
        row = self._by_id("output, json_valid(output)", job_id)  # json_valid: no copy
        return checked_output(job_id, *row) if row else None

    def last_id(self) -> int:
        # the highest id ever given: pruned records count too, as ids are never reused;
        # the ids reserved and not given yet do not
        largest, seq = self._read(f"SELECT {self._HIGHEST}")[0]
        with self._ids_lock:
            given = self._next_id - 1
            if seq == self._block_end and self._block_end:
                seq = 0  # our own reservation: what we gave is ``given``
            elif largest and not self._block_end:
                # a process that gave no id (a worker, a reader; a restarted server
                # before its first job): another's reservation, whose given ids are all
                # recorded (a record is committed before its id is handed out)
                seq = 0
        return max(largest or 0, seq or 0, given)

    def newest_id(self) -> int:
        largest = self._read("SELECT COALESCE(MAX(id), 0) FROM jobs")[0][0]
        with self._ids_lock:
            # a record queued is a job (given, in memory) unless refused; not the ids a
            # batch has taken while its transaction is still being written
            refused = self._queued is not None and self._queued.error is not None
            return max(largest, 0 if refused else self._queued_id)

    def select(
        self, first: int | None = None, last: int | None = None, state: str | None = None, data=True
    ) -> Iterator[JobRecord]:
        columns = self._COLUMNS if data else self._HEAD
        sql = f"SELECT {columns} FROM jobs WHERE id >= ? AND id <= ?"
        last = MAX_ID if last is None else last
        args: list[Any] = [min(max(first or 0, 0), MAX_ID), min(max(last, -1), MAX_ID)]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        for row in self._read(sql + " ORDER BY id", args):
            yield self._record(row, strict=False)  # a damaged row does not stop a scan

    def mark_interrupted(self) -> list[int]:
        if self._closed:  # a worker process that ended after the stop: the next start
            return []
        try:
            with self.transaction() as db:
                dead, others = close_dead(db, self.path)
        except sqlite3.Error as err:
            raise write_refused(self.path, err) from err
        if dead:
            logger.warning("journal %s: %d interrupted job(s) marked failed", self.path, len(dead))
        for host, count in sorted(others.items()):
            logger.warning(
                "journal %s: %d unfinished job(s) of another host, %s, left as they are: "
                "their server may run there (only a start there closes them)",
                *(self.path, count, host),
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
        if self._closed:
            return
        self._closed = True
        self.flush()
        with self._settled:
            self._closing = True
        self._give_back_ids()
        if self._guarded:  # the last outcomes are in a file that can be read again
            with contextlib.suppress(JournalError):
                self._check_file()
        processes.release(self)
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()
