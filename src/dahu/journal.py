"""The job journal: a persistent record of every job, so that no job is ever lost.

Interface (:class:`Journal`), implemented by :class:`SQLiteJournal` (the real one, a
SQLite file ``journal.sqlite`` in the work directory) and :class:`MemoryJournal` (for
tests and throw-away runs).  ``tests/test_journal.py`` holds the contract both obey.

The life of a record: :meth:`Journal.create` (state ``uninitialized``, committed before
the id is returned) → :meth:`Journal.set_state` (``running``) → :meth:`Journal.finish`
(final state, output, error, times, plugin provenance).  When a journal is opened,
records left unfinished by a process that no longer runs are closed as ``failure`` with
the error ``interrupted``.

The ``.inp``/``.out`` files that Dahu users know are written by :func:`write_job_files`.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import DahuError, __version__
from .states import State
from .statistics import aggregate
from .utils import NumpyEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "JobRecord",
    "Journal",
    "JournalError",
    "MemoryJournal",
    "SQLiteJournal",
    "default_workdir",
    "job_file_stem",
    "write_job_files",
    "INTERRUPTED",
]

INTERRUPTED = "interrupted"
SCHEMA_VERSION = 1
HOST = socket.gethostname()


class JournalError(DahuError):
    """The journal cannot be read or written."""


def default_workdir() -> str:
    """The stable work directory: ``$DAHU_WORKDIR``, else ``$XDG_STATE_HOME/dahu``
    (``~/.local/state/dahu``)."""
    env = os.environ.get("DAHU_WORKDIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state_home, "dahu")


@dataclass
class JobRecord:
    """Everything the journal knows about one job."""

    id: int
    plugin: str
    state: str
    input: dict[str, Any]
    output: dict[str, Any] | None = None
    error: str | None = None
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    runtime: float | None = None
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    module_file: str | None = None
    plugin_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_COMPACT = NumpyEncoder()
_PRETTY = NumpyEncoder(indent=4)  # the original's indentation
_known_dirs: set[str] = set()


def _dumps(obj: Any) -> str:
    return _COMPACT.encode(obj)


class Journal(abc.ABC):
    """The documented interface of a job journal (thread-safe in every implementation)."""

    @abc.abstractmethod
    def create(self, plugin: str, input_data: dict[str, Any], submitted: float) -> int:
        """Record a new job (state ``uninitialized``); return its id, larger than any before."""

    def create_many(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[int]:
        """Record several jobs at once (one transaction where possible); return their ids."""
        return [self.create(plugin, data, submitted) for data in inputs]

    @abc.abstractmethod
    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        """Record a non-final state change (``starting``, ``running``); a job whose final
        state is recorded already keeps it."""

    def state(self, job_id: int) -> str | None:
        """The state of ``job_id`` only (None if unknown): cheaper than :meth:`get`."""
        record = self.get(job_id)
        return record.state if record is not None else None

    @abc.abstractmethod
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
        """Record the final state of a job, its output or error, and its times; with
        ``input_data``, replace the recorded input (the plugin's final input)."""

    @abc.abstractmethod
    def get(self, job_id: int) -> JobRecord | None:
        """Return the record of ``job_id`` (its input with ``job_id`` set), or None."""

    @abc.abstractmethod
    def last_id(self) -> int:
        """The highest id recorded, 0 when empty."""

    @abc.abstractmethod
    def select(
        self, first: int | None = None, last: int | None = None, state: str | None = None
    ) -> Iterator[JobRecord]:
        """Iterate over the records with ``first <= id <= last`` (and ``state``), by id."""

    @abc.abstractmethod
    def mark_interrupted(self) -> list[int]:
        """Close as ``failure``/``interrupted`` the unfinished jobs of dead processes."""

    @abc.abstractmethod
    def summary(self, first: int = 0) -> dict[str, Any]:
        """Aggregates of the jobs with ``id >= first`` (see :meth:`SQLiteJournal.summary`)."""

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release the journal's resources."""


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
                    module_file TEXT, plugin_version TEXT, extra TEXT)"""
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

    _INSERT = (
        "INSERT INTO jobs (plugin, state, input, submitted, host, pid, version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )

    def _new_row(self, plugin: str, input_data: dict[str, Any], submitted: float) -> tuple:
        text = _dumps(input_data)
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
        try:
            with self._lock:
                row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from err
        return row[0] if row else None

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
        try:
            text = _dumps(output) if output is not None else None
        except (TypeError, ValueError) as err:
            text = _dumps({"unserializable_output": repr(output)[:1000]})
            error = (error + "\n" if error else "") + f"output not JSON-serialisable: {err}"
        values = (state, text, error, started, ended, runtime, module_file, plugin_version)
        sql = (
            "UPDATE jobs SET state = ?, output = ?, error = ?, started = ?, ended = ?, "
            "runtime = ?, module_file = ?, plugin_version = ?"
        )
        if input_data is not None:
            try:
                values += (_dumps(input_data),)
                sql += ", input = ?"
            except (TypeError, ValueError):
                logger.warning("job %s: its final input is not JSON-serialisable", job_id)
        self._write(sql + " WHERE id = ?", values + (job_id,))

    _COLUMNS = (
        "id, plugin, state, input, output, error, submitted, started, ended, runtime, "
        "host, pid, version, module_file, plugin_version, extra"
    )

    @staticmethod
    def _record(row: tuple) -> JobRecord:
        data = list(row)
        inp = json.loads(data[3]) if data[3] else {}
        if isinstance(inp, dict):
            inp["job_id"] = data[0]
        data[3] = inp
        data[4] = json.loads(data[4]) if data[4] else None
        data[15] = json.loads(data[15]) if data[15] else {}
        return JobRecord(*data)

    def get(self, job_id: int) -> JobRecord | None:
        try:
            with self._lock:
                row = self._db.execute(
                    f"SELECT {self._COLUMNS} FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from err
        return self._record(row) if row else None

    def last_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM jobs").fetchone()
        return row[0] or 0

    def select(
        self, first: int | None = None, last: int | None = None, state: str | None = None
    ) -> Iterator[JobRecord]:
        sql = f"SELECT {self._COLUMNS} FROM jobs WHERE id >= ? AND id <= ?"
        args: list[Any] = [first or 0, last if last is not None else 2**62]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        for row in rows:
            yield self._record(row)

    def mark_interrupted(self) -> list[int]:
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
        if dead:
            logger.warning("journal %s: %d interrupted job(s) marked failed", self.path, len(dead))
        return dead

    def summary(self, first: int = 0) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute(
                "SELECT plugin, state, started, ended, runtime FROM jobs WHERE id >= ? ORDER BY id",
                (first,),
            ).fetchall()
        return aggregate(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryJournal(Journal):
    """A journal kept in memory: same contract, nothing survives the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, JobRecord] = {}
        self._last = 0
        self.workdir = None

    def create(self, plugin: str, input_data: dict[str, Any], submitted: float) -> int:
        text = _dumps(input_data)  # same failure modes as the SQLite journal
        with self._lock:
            self._last += 1
            self._records[self._last] = JobRecord(
                self._last,
                plugin,
                State.UNINITIALIZED,
                json.loads(text),
                submitted=submitted,
                host=HOST,
                pid=os.getpid(),
                version=__version__,
            )
            return self._last

    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        with self._lock:
            record = self._records[job_id]
            if record.state in State.FINAL:
                return
            record.state = state
            record.started = started if started is not None else record.started

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
        text = _dumps(output) if output is not None else None
        with self._lock:
            record = self._records[job_id]
            if input_data is not None:
                record.input = json.loads(_dumps(input_data))
            record.state, record.error = state, error
            record.output = json.loads(text) if text is not None else None
            record.started, record.ended = started, ended
            if started is not None and ended is not None:
                record.runtime = ended - started
            record.module_file, record.plugin_version = module_file, plugin_version

    def get(self, job_id: int) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return None
            copy = JobRecord(**{**record.__dict__})
            copy.input = json.loads(_dumps(record.input))
            copy.input["job_id"] = job_id
            return copy

    def last_id(self) -> int:
        with self._lock:
            return self._last

    def select(
        self, first: int | None = None, last: int | None = None, state: str | None = None
    ) -> Iterator[JobRecord]:
        with self._lock:
            ids = sorted(self._records)
        for job_id in ids:
            if (first is None or job_id >= first) and (last is None or job_id <= last):
                record = self.get(job_id)
                if record is not None and (state is None or record.state == state):
                    yield record

    def mark_interrupted(self) -> list[int]:
        return []  # nothing outlives the process that holds it

    def summary(self, first: int = 0) -> dict[str, Any]:
        with self._lock:
            rows = [
                (r.plugin, r.state, r.started, r.ended, r.runtime)
                for i, r in sorted(self._records.items())
                if i >= first
            ]
        return aggregate(rows)


def job_file_stem(workdir: str, job_id: int, plugin: str) -> str:
    """``<workdir>/NNNN/NNNNN_<plugin>``: the path of a job's files, without extension."""
    return os.path.join(workdir, f"{job_id // 1000:04d}", f"{job_id:05d}_{plugin}")


def write_job_files(
    workdir: str, job_id: int, plugin: str, input_data: Any, output_data: Any
) -> tuple[str, str]:
    """Write ``<stem>.inp`` and ``<stem>.out`` (indented, numpy-aware JSON); return the paths."""
    stem = job_file_stem(workdir, job_id, plugin)
    directory = os.path.dirname(stem)
    if directory not in _known_dirs:
        os.makedirs(directory, exist_ok=True)
        _known_dirs.add(directory)
    paths = []
    for ext, data in ((".inp", input_data), (".out", output_data)):
        path = stem + ext
        text = _PRETTY.encode(data).encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the directory was removed behind our back
            os.makedirs(directory, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        paths.append(path)
    return paths[0], paths[1]
