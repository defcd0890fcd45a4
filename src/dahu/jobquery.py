"""Queries over the journal of a work directory, for ``dahu-jobs`` and the retention.

Another process (a running ``dahu_server``) may be writing the same journal: reading is
done on a read-only SQLite connection, which WAL mode lets run beside the server's writer
without blocking it.  A work directory that does not exist, has no ``journal.sqlite``, or
whose file is not a Dahu journal is refused with a :class:`NotAJournal` whose message is
one line.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .journal import SCHEMA_VERSION, JobRecord, JournalError, SQLiteJournal
from .journal.base import MAX_ID, as_text, storable_id, unreadable_numbers
from .journal.sqlitefile import connect_file, foreign_reason, is_damaged
from .states import State

__all__ = [
    "NotAJournal",
    "Filters",
    "journal_states",
    "plugin_condition",
    "open_journal",
    "count",
    "latest",
    "records",
    "get",
    "statistics",
    "percentile",
    "LIGHT_COLUMNS",
]

LIGHT_COLUMNS = "id, plugin, state, submitted, started, ended, runtime, substr(error, 1, 2000)"
"""The columns of a listing: no input nor output, the error cut."""
_BATCH = 1000


class NotAJournal(JournalError):
    """The work directory is missing, or holds no Dahu journal."""


@dataclass
class Filters:
    """Which jobs: by plugin, state and submission time (epoch seconds, inclusive)."""

    plugin: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its arguments."""
        clauses, args = ["1"], []
        if self.plugin is not None:
            clause, value = plugin_condition(self.plugin)
            clauses.append(clause)
            args.append(value)
        if self.state is not None:
            clauses.append(f"state IN ({', '.join('?' * len(journal_states(self.state)))})")
            args += journal_states(self.state)
        if self.since is not None:
            clauses.append("submitted >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("submitted <= ?")
            args.append(self.until)
        return " AND ".join(clauses), args


def plugin_condition(plugin: str) -> tuple[str, str]:
    """The SQL condition (one ``?``) and its argument for the jobs of ``plugin``, in any
    case as for the factory (``str.lower``): SQLite's ``NOCASE`` for an ASCII name, the
    connection's ``dahu_lower`` beyond (``ÉTUDE.Fit`` is ``étude.fit``)."""
    if plugin.isascii():
        return "plugin = ? COLLATE NOCASE", plugin
    return "dahu_lower(plugin) = ?", plugin.lower()


def journal_states(state: str) -> tuple[str, ...]:
    """The states a journal records for jobs in ``state``: it writes no ``starting``, so a
    queued job stays ``uninitialized`` there until it is noted running."""
    return (State.UNINITIALIZED, State.STARTING) if state == State.STARTING else (state,)


def _connect(path: str, write: bool, immutable: bool = False) -> tuple[Any, set[str], int]:
    db = connect_file(path, write, immutable)
    try:
        db.execute("PRAGMA busy_timeout=30000")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error:
        db.close()
        raise
    return db, tables, version


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def _unwritable(workdir: str) -> str:
    return "" if os.access(workdir, os.W_OK) else " (this process cannot write its directory)"


def open_journal(workdir: str, write: bool = False) -> sqlite3.Connection:
    """A connection to the journal of ``workdir`` (read-only unless ``write``); never
    creates one."""
    workdir = os.path.abspath(workdir)
    if not os.path.exists(workdir):
        raise NotAJournal(f"no such work directory: {workdir}")
    if not os.path.isdir(workdir):
        raise NotAJournal(f"{workdir} is not a directory")
    path = os.path.join(workdir, SQLiteJournal.FILENAME)
    if not os.path.isfile(path):
        raise NotAJournal(
            f"{workdir} is not a Dahu work directory: it has no {SQLiteJournal.FILENAME}"
        )
    try:
        try:
            db, tables, version = _connect(path, write)
        except sqlite3.OperationalError:
            if write or _wal_bytes(path):
                raise
            # a directory this process cannot write (another account's, read-only media)
            # and no server writing there (no -wal file, or an empty one): SQLite cannot
            # make the -shm file a reader of a WAL journal needs, so the file is read as is
            db, tables, version = _connect(path, write, immutable=True)
    except sqlite3.DatabaseError as err:
        if isinstance(err, sqlite3.OperationalError):  # could not open or read it
            raise NotAJournal(f"cannot open {path}: {err}{_unwritable(workdir)}") from None
        what = "damaged" if is_damaged(err) else "not a Dahu journal"  # cut short: damaged
        raise NotAJournal(f"{path} is {what}: {err}") from None
    if "jobs" not in tables:
        db.close()
        raise NotAJournal(f"{path} is not a Dahu journal: it has no jobs table")
    try:
        foreign = foreign_reason(db)  # a jobs table of another program's
    except sqlite3.Error as err:
        db.close()
        raise NotAJournal(f"cannot read {path}: {err}") from None
    if foreign:
        db.close()
        raise NotAJournal(f"{path} is not a Dahu journal: {foreign}")
    if version > SCHEMA_VERSION:
        db.close()
        raise NotAJournal(
            f"{path} has schema {version}, newer than this Dahu ({SCHEMA_VERSION}): upgrade Dahu"
        )
    return db


def _read(db: sqlite3.Connection, sql: str, args: Any = ()) -> list[tuple]:
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error as err:
        raise _unreadable(db, err) from None


def _unreadable(db: sqlite3.Connection, err: sqlite3.Error) -> JournalError:
    """One line naming the journal: damaged past its first page (found by a query, not
    when opened), ``PATH is damaged: ...`` as when opened (until 2026-11-30 ``cannot read
    the journal: ...``)."""
    try:
        path = db.execute("PRAGMA database_list").fetchone()[2] or "the journal"
    except sqlite3.Error:
        path = "the journal"
    if is_damaged(err):
        return JournalError(f"{path} is damaged: {err}")
    return JournalError(f"cannot read {path}: {err}")


def count(db: sqlite3.Connection, filters: Filters) -> int:
    """How many jobs match."""
    where, args = filters.where()
    return _read(db, f"SELECT COUNT(*) FROM jobs WHERE {where}", args)[0][0]


_LIGHT_NUMBERS = {3: "submitted", 4: "started", 5: "ended", 6: "runtime"}
Unreadable = Callable[[int, str, str], Any]
"""Told ``(job_id, field, reason)`` of each field of a record that cannot be read."""


def _ignore(job_id: int, name: str, reason: str) -> None:
    pass


def latest(
    db: sqlite3.Connection, filters: Filters, limit: int | None, unreadable: Unreadable = _ignore
) -> list[tuple]:
    """The ``limit`` most recent matching jobs (all when None), oldest first, as rows of
    :data:`LIGHT_COLUMNS`; a time that is not a number (a damaged row) is None, and told
    to ``unreadable``."""
    where, args = filters.where()
    sql = f"SELECT {LIGHT_COLUMNS} FROM jobs WHERE {where} ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args = [*args, min(limit, MAX_ID)]  # SQLite's integers have 64 bits
    rows = _read(db, sql, args)
    rows.reverse()
    for index, row in enumerate(rows):
        if not all(type(value) in _NUMBER_TYPES for value in row[3:7]) or bytes in map(type, row):
            data = list(row)
            as_text(data, (1, 2, 7))  # a blob in a text column
            for name, reason in unreadable_numbers(data, _LIGHT_NUMBERS).items():
                unreadable(row[0], name, reason)
            rows[index] = tuple(data)
    return rows


_NUMBER_TYPES = {int, float, type(None)}


def records(db: sqlite3.Connection, filters: Filters) -> Iterator[JobRecord]:
    """Every matching job, whole (input and output), by id; read in batches.  A field that
    cannot be read (a damaged row) is None, named in the record's ``unreadable``."""
    where, args = filters.where()
    last = 0
    while True:
        rows = _read(
            db,
            f"SELECT {SQLiteJournal._COLUMNS} FROM jobs WHERE {where} AND id > ? "
            f"ORDER BY id LIMIT {_BATCH}",
            [*args, last],
        )
        for row in rows:
            yield SQLiteJournal._record(row, strict=False)
        if len(rows) < _BATCH:
            return
        last = rows[-1][0]


def resolve(db: sqlite3.Connection, job_id: int) -> int:
    """``job_id``, a negative one counted back from the newest job recorded (``-1``)."""
    if job_id < 0:
        job_id += _read(db, "SELECT COALESCE(MAX(id), 0) FROM jobs")[0][0] + 1
    return job_id


def highest_id(db: sqlite3.Connection) -> int:
    """The highest id ever given (or reserved): pruned records count, 0 if none."""
    return _read(db, f"SELECT MAX({SQLiteJournal._HIGHEST})")[0][0] or 0


def missing(db: sqlite3.Connection, job_id: int, workdir: str) -> str:
    """Why :func:`get` found no job ``job_id``, in one line: ``no job 3 (-2): it is no
    longer in the journal of DIR (pruned) or was never given``, as the device says."""
    where = f"the journal of {workdir}"
    if not _read(db, "SELECT COUNT(*) FROM jobs")[0][0]:  # none yet, or all pruned
        return f"no job {job_id}: {where} is empty"
    if 1 <= (wanted := resolve(db, job_id)) <= highest_id(db):
        named = f"{wanted} ({job_id})" if job_id < 0 else str(job_id)
        return f"no job {named}: it is no longer in {where} (pruned) or was never given"
    return f"no job {job_id} in {where}"


def get(db: sqlite3.Connection, job_id: int) -> JobRecord | None:
    """The whole record of ``job_id`` (as :func:`records`), or None; a negative id counts back from the newest
    job (``-1``: the last one), as the device's."""
    job_id = resolve(db, job_id)
    if not storable_id(job_id):
        return None
    rows = _read(db, f"SELECT {SQLiteJournal._COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    return SQLiteJournal._record(rows[0], strict=False) if rows else None


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile of sorted ``values`` (nearest rank), None if empty."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def _runtime_figures(entry: dict[str, Any], values: list[float]) -> None:
    values.sort()
    entry["timed"] = len(values)
    entry["mean_s"] = sum(values) / len(values) if values else None
    entry["p95_s"] = percentile(values, 0.95)
    entry["max_s"] = values[-1] if values else None


def _blank() -> dict[str, Any]:
    return {"jobs": 0, **{s: 0 for s in State.ALL}}


def statistics(
    db: sqlite3.Connection, filters: Filters, unreadable: Unreadable = _ignore
) -> dict[str, Any]:
    """``{"plugins": {name: entry}, "total": entry}``: per plugin and in all, the number
    of jobs, the count per state, and the runtime mean / p95 / max of the ended jobs
    (``timed``: how many have a runtime; one that is not a number is told to
    ``unreadable``)."""
    where, args = filters.where()
    per: dict[str, dict[str, Any]] = {}
    runtimes: dict[str, list[float]] = {}
    total = _blank()
    try:
        for job_id, name, state, runtime in db.execute(
            f"SELECT id, plugin, state, runtime FROM jobs WHERE {where}", args
        ):
            if isinstance(name, bytes):  # a blob in a hand-edited row
                name = name.decode("utf-8", "replace")
            plugin = name.lower()  # one plugin however its jobs spelled it, as the factory
            entry = per.get(plugin)
            if entry is None:
                entry = per[plugin] = _blank()
                runtimes[plugin] = []
            for target in (entry, total):
                target["jobs"] += 1
                target[state] = target.get(state, 0) + 1
            if type(runtime) not in _NUMBER_TYPES:
                unreadable(
                    job_id, "runtime", unreadable_numbers([runtime], {0: "runtime"})["runtime"]
                )
            elif runtime is not None:
                runtimes[plugin].append(runtime)
    except sqlite3.Error as err:
        raise _unreadable(db, err) from None
    everything: list[float] = []
    for plugin, entry in per.items():
        everything += runtimes[plugin]
        _runtime_figures(entry, runtimes[plugin])
    _runtime_figures(total, everything)
    return {"plugins": dict(sorted(per.items())), "total": total}
