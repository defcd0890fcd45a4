"""The journal's SQLite file seen from outside a journal object: a connection for the
readers beside the server, the identity of the file, why it may not open, writing it
again, whether the process that wrote a record runs."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import shutil
import sqlite3
import time
from typing import Any

from ..errors import JournalError
from ..states import State
from . import processes
from .base import HOST, INTERRUPTED

logger = logging.getLogger(__name__)

__all__ = [
    "close_dead",
    "connect_file",
    "connect_writer",
    "file_identity",
    "foreign_reason",
    "is_damaged",
    "refuse_foreign",
    "full_disk_reason",
    "journal_identity",
    "write_refused",
    "process_alive",
    "write_again",
]

LOADED = time.time()
"""When this module was loaded: a job this process recorded was submitted after."""

OPEN_WAIT = 10.0
"""Seconds the opening of a journal by a writer waits for another process's lock."""

LOCK_NOTICE = 1.0
"""Seconds of that wait after which the log says what it waits for."""

BUSY_STEP_MS = 50
"""The busy timeout of the journal's writer connection, in ms: a step of longer waits."""

JOB_COLUMNS = (
    "id",
    "plugin",
    "state",
    "input",
    "output",
    "error",
    "submitted",
    "started",
    "ended",
    "runtime",
    "host",
    "pid",
    "version",
    "module_file",
    "plugin_version",
    "extra",
)
"""The columns of the table ``jobs`` that Dahu reads and writes."""


def connect_writer(path: str, writer: bool = True) -> sqlite3.Connection:
    """The journal's writer connection to ``path`` (created if missing), set up;
    :class:`JournalError` if the file is another program's (:func:`refuse_foreign`).
    Not ``writer`` (a process that only reads other jobs): it does not wait for the
    write lock another process holds (:data:`OPEN_WAIT`), nor check that the file can be
    written.  Past :data:`LOCK_NOTICE` of that wait, the log says what it waits for."""
    notice = min(LOCK_NOTICE, OPEN_WAIT)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=notice)
    try:
        _set_up(db, path, writer)
    except sqlite3.OperationalError as err:
        if getattr(err, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
            db.close()
            raise
        logger.warning(
            "the journal %s is locked by another process (a sqlite3 shell in a transaction, "
            "a prune, another Dahu server?): waiting up to %g s for it%s",
            path,
            OPEN_WAIT,
            _holders(path),
        )
        db.execute(f"PRAGMA busy_timeout={int((OPEN_WAIT - notice) * 1000)}")
        try:
            _set_up(db, path, writer)
        except BaseException:
            db.close()
            raise
    # the journal's writes wait longer, in steps of it (BatchedWriter._patiently)
    db.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")
    db.execute("PRAGMA cache_size=-512")
    return db


def _set_up(db: sqlite3.Connection, path: str, writer: bool) -> None:
    """The settings of :func:`connect_writer` that may wait for another process's lock."""
    refuse_foreign(db, path)  # before WAL mode: nothing is written into another's file
    if writer:
        # takes effect on a new file only: lets prunes give space back in small steps;
        # takes the write lock: a file that cannot be written is refused here
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")


def _holders(path: str) -> str:
    """``; it is open in pid 123 (sqlite3), ...``: the other processes of this host that have
    the file ``path`` open (one of them holds its lock), as far as this user may see."""
    import psutil  # only here: the largest import of a journal otherwise

    found = []
    real = os.path.realpath(path)
    for proc in psutil.process_iter(["pid", "name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and any(f.path == real for f in proc.open_files()):
                found.append(f"pid {proc.pid} ({proc.info['name']})")
    return f"; it is open in {', '.join(found[:5])}" if found else ""


def connect_file(path: str, write: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """A connection to the existing journal file ``path``, read-only unless ``write``
    (for readers beside the server: ``dahu-jobs``, the web page, ``dahu-reprocess``'s
    ids); never creates one.  A read-only connection reads a journal nobody writes even
    where this process cannot write (a read-only archive, another user's directory);
    ``immutable`` reads the file as it is in any case."""
    db = _open(path, write, immutable)
    # plugin names are not case-sensitive, also beyond ASCII (SQLite's NOCASE is not)
    db.create_function("dahu_lower", 1, _lower, deterministic=True)
    return db


def foreign_reason(db: sqlite3.Connection) -> str:
    """Why the database of ``db`` is not a Dahu journal (another program's file), or
    ``""``: a Dahu journal, or a database with no table yet (a new journal).  Reads only."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "jobs" not in tables:
        others = sorted(tables - {"sqlite_sequence"})
        names = ", ".join(repr(name) for name in others[:3]) + (", ..." if others[3:] else "")
        return f"it has tables of its own ({names}) and no jobs table" if others else ""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    missing = [name for name in JOB_COLUMNS if name not in columns]
    if not missing:
        return ""
    return f"its jobs table has no column {', '.join(missing[:3])}{', ...' if missing[3:] else ''}"


def is_damaged(err: sqlite3.Error) -> bool:
    """Whether ``err`` says that a database is damaged (cut short, overwritten), not that
    the file is no database at all."""
    return getattr(err, "sqlite_errorname", "") == "SQLITE_CORRUPT"


def refuse_foreign(db: sqlite3.Connection, path: str) -> None:
    """:class:`JournalError` (one line) if the database of ``db`` at ``path`` is not a
    Dahu journal: another program's file is neither read as one nor written into."""
    try:
        reason = foreign_reason(db)
    except sqlite3.DatabaseError as err:
        if isinstance(err, sqlite3.OperationalError):  # locked, cannot read: not a verdict
            raise
        reason = str(err)  # "file is not a database"
        if is_damaged(err):  # a journal cut short: it is one, and not written either
            db.close()
            raise JournalError(f"{path} is damaged: {reason}; nothing was written to it") from None
    if reason:
        db.close()
        raise JournalError(f"{path} is not a Dahu journal: {reason}; nothing was written to it")


def _lower(text: object) -> object:
    return text.lower() if isinstance(text, str) else text


def _uri_path(path: str) -> str:
    """``path`` in a SQLite URI: the characters that end a URI's path (``?``, ``#``) or
    begin an escape (``%``) escaped, the rest as it is (SQLite reads it as UTF-8);
    not urllib.parse, whose import is 2 ms of every command line's start."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _open(path: str, write: bool, immutable: bool) -> sqlite3.Connection:
    """:func:`connect_file`."""
    uri = f"file:{_uri_path(path)}?mode={'rw' if write else 'ro'}"
    if immutable:
        uri += "&immutable=1"
    db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
    if write or immutable:
        return db
    try:
        db.execute("PRAGMA user_version")
    except sqlite3.OperationalError as err:
        # a reader of a WAL file makes its -shm file if none is there, which it cannot on a
        # read-only file system or in another user's directory; with no -shm file and no
        # -wal content, no process writes the journal: read it as a file that does not change
        idle = not os.path.exists(path + "-shm") and _size(path + "-wal") == 0
        if getattr(err, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_CANTOPEN or not idle:
            raise
        db.close()
        db = sqlite3.connect(
            uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False
        )
    return db


def _size(path: str) -> int:
    """The size of the file at ``path``; 0 if there is none."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def file_identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at ``path``; None if there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def full_disk_reason(workdir: str, err: BaseException | None = None) -> str:
    """Why a journal may not open (`` (its file system is full: ...)``), or ``""``: on a
    full disk SQLite says only ``disk I/O error`` (its shared-memory file cannot grow),
    on a read-only one or in a directory this user cannot write ``unable to open
    database file``, for ``err`` a lock another process kept ``database is locked``, for
    a work directory that is a file Python ``File exists``."""
    if getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
        return f" (another process held its write lock for {OPEN_WAIT:g} s: a sqlite3 shell?)"
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        return " (it is a file, not a directory)"
    with contextlib.suppress(OSError):
        if os.statvfs(workdir).f_flag & os.ST_RDONLY:
            return " (its file system is read-only)"
        if not os.access(workdir, os.W_OK):
            return " (this user cannot write in the directory)"
        free = shutil.disk_usage(workdir).free
        if free < 1 << 20:
            return f" (its file system is full: {free} bytes free)"
    return ""


def write_refused(path: str, err: BaseException) -> JournalError:
    """The error of a write of the journal at ``path`` that SQLite refused with ``err``:
    its reason, and why when the disk is the cause (SQLite's ``database or disk is
    full`` does not say which, nor how full it is; a lock has a message of its own)."""
    busy = getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
    why = "" if busy else full_disk_reason(os.path.dirname(path))
    return JournalError(f"cannot write the journal {path}: {err}{why}")


def write_again(db: sqlite3.Connection, path: str) -> None:
    """Write the journal at ``path`` again, whole, from its open connection ``db`` (its
    file was removed, its work directory deleted): aside first, then swapped in, so that
    a reader never finds half of it; no half copy is left behind (a full disk)."""
    aside = path + ".restoring"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside + suffix)
        copy = sqlite3.connect(aside)
        try:
            db.backup(copy)
        finally:
            copy.close()
        os.replace(aside, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise


def process_alive(
    host: str | None,
    pid: int | None,
    since: float | None,
    gone: set[int] | None = None,
    known: Any = None,
    process: int | None = None,
) -> bool:
    """Whether the process that wrote a record may still be running; ``gone``, the pids
    of this host found running no process, is looked at and added to (asked once each);
    ``known``, the journal's :class:`~.processes.Known` (its pid namespace, its boot),
    ``process`` the record's writer's row there (:data:`~.processes.JOB_PROCESS`)."""
    if host != HOST:
        return True  # another machine: cannot tell, leave its jobs alone
    verdict = None if known is None else known.alive(pid, since, process)
    if verdict is not None:  # another pid namespace, or boot: its pid tells nothing here
        return verdict
    if pid is None or (gone is not None and pid in gone):
        return False
    if pid == os.getpid():  # this process, or one before it with its pid (a container's
        return since is None or since >= LOADED - 1.0  # server started again: pid 1)
    import psutil  # only here: the largest import of a journal otherwise

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():  # killed, not yet reaped by its parent: a zombie, dead
            if proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)
            # a recycled pid belongs to a process started after the job was submitted
            return since is None or proc.create_time() <= since + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        if _hidden(pid):  # may run: its jobs are not closed under it
            return True
        if gone is not None:
            gone.add(pid)
        return False


def _hidden(pid: int) -> bool:
    """Whether ``pid`` runs, as a process of another user that this one cannot look at
    (``/proc`` mounted with ``hidepid``): a signal to it is refused, not unheard of."""
    try:
        os.kill(pid, 0)  # (signal 0: none sent, only the checks)
    except PermissionError:
        return True
    except OSError:
        return False
    return False  # ours: psutil could have looked at it, a zombie


_UNFINISHED = tuple(state for state in State.ALL if state not in State.FINAL)
"""The states a record can have before its job ends (looked up with the state index)."""


def unfinished_owners(journal: Any, pid: int | None = None) -> list[tuple]:
    """``(host, pid, oldest submitted)`` of each process of this host that has unfinished
    jobs in the SQLite ``journal`` (read in the state index: no write, no scan); with
    ``pid``, ``(host, pid, oldest submitted, row in processes)`` of each process of that
    pid (two pid 1 of two containers: :data:`~.processes.JOB_PROCESS`, twice as long)."""
    states = f"state IN ({', '.join('?' * len(_UNFINISHED))}) AND host = ?"
    if pid is None:
        sql = f"SELECT host, pid, MIN(submitted) FROM jobs WHERE {states} GROUP BY pid"
        return journal._read(sql, (*_UNFINISHED, HOST))
    return journal._read(
        f"SELECT host, pid, MIN(submitted), {processes.JOB_PROCESS} AS process FROM jobs "
        f"WHERE {states} AND pid = ? GROUP BY process",
        (*_UNFINISHED, HOST, pid),
    )


def close_dead(db: Any, path: str, named: bool = False) -> tuple[list[int], dict[str, int]]:
    """In the transaction ``db`` of the journal at ``path``: close as
    ``failure``/``interrupted`` the unfinished jobs whose process is gone (``named``: the
    error names it, ``interrupted: its process, pid N on HOST, died``); return their ids,
    and per other host how many unfinished jobs it has (left alone: their process may
    run there)."""
    rows = db.execute(  # a few seeks in the state index, not a scan of the table
        f"SELECT id, host, pid, submitted, {processes.JOB_PROCESS} FROM jobs "
        f"WHERE state IN ({', '.join('?' * len(_UNFINISHED))})",
        _UNFINISHED,
    ).fetchall()
    gone: set[int] = set()  # a dead server's pid: asked once, not once a job
    known = processes.known(lambda sql, args: db.execute(sql, args).fetchall(), path)
    dead = [r for r in rows if not process_alive(*r[1:4], gone, known, r[4])]
    now = time.time()

    def closing(job_id: int, host: str, pid: int) -> tuple:
        error = f"{INTERRUPTED}: its process, pid {pid} on {host}, died" if named else INTERRUPTED
        output = json.dumps({"error": [error]}, separators=(",", ":"))  # as its .out
        return (State.FAILURE, error, now, output, job_id)

    db.executemany(
        "UPDATE jobs SET state = ?, error = ?, ended = ?, output = COALESCE(output, ?) "
        "WHERE id = ?",
        [closing(*r[:3]) for r in dead],
    )
    return [r[0] for r in dead], dict(collections.Counter(str(r[1]) for r in rows if r[1] != HOST))


def follow_restored(journal: Any) -> None:
    """The file at the path of the SQLite ``journal`` (writer lock held) is another one
    than it writes: if it is that journal written again by another process writing it
    (its file removed: a work directory deleted under two servers), holding the newest
    job this one sees, write that one from now on; else (another journal, another
    program's file, an older copy of it) :class:`JournalError`."""
    newest = "SELECT id, submitted, host, pid FROM jobs ORDER BY id DESC LIMIT 1"
    there = mine = None
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(f"file:{_uri_path(journal.path)}?mode=ro", uri=True, timeout=1.0)
        try:
            mine = journal._db.execute(newest).fetchone()
            if mine is not None:
                there = db.execute(f"{newest.split(' ORDER')[0]} WHERE id = ?", mine[:1]).fetchone()
        finally:
            db.close()
    if mine is None or there != mine:
        raise JournalError(
            f"the journal {journal.path} was replaced by another file while this "
            f"process wrote it: what it records from now on is lost when it stops"
        )
    journal._reconnect()
    journal._replaced = False
    logger.warning(
        "journal %s was written again by another process writing it (its file removed): "
        "this process writes that one from now on",
        journal.path,
    )


def journal_token(journal: Any) -> str:
    """The :attr:`~dahu.journal.Journal.identity` of the SQLite ``journal``: made at
    random by the first process that asks, kept in a table of its own (a journal of an
    earlier Dahu gets one then; Dahu versions that do not know the table ignore it)."""
    try:
        with journal.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS identity (token TEXT NOT NULL)")
            db.execute(
                "INSERT INTO identity SELECT ? WHERE NOT EXISTS (SELECT 1 FROM identity)",
                (os.urandom(16).hex(),),
            )
            return db.execute("SELECT token FROM identity ORDER BY rowid LIMIT 1").fetchone()[0]
    except sqlite3.Error as err:
        raise JournalError(
            f"cannot read the identity of the journal {journal.path}: {err}"
        ) from err


journal_identity = functools.cached_property(journal_token)
"""``SQLiteJournal.identity``: asked once per journal object."""
