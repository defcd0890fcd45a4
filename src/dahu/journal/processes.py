"""The processes that write a journal, as far as a host name and a pid cannot tell them
apart: each one records its boot and pid namespace in the journal's table
``processes``, and holds a lock for its life on one byte of the file beside it
(``journal.sqlite-processes``, the byte of its row).

A pid means a process only in its pid namespace, and only until the machine restarts:
two containers of one host name (``--network host``) with their own pid namespaces
took each other's pids for dead, and closed each other's running jobs.  A process whose
row names another namespace of this boot is alive while its lock is held (a lock goes
with its process, whichever namespace looks at it).  One of another boot (this
machine's before it restarted, or a journal copied from a machine of the same name), or
without a row (an older Dahu, no lock file), is judged by its pid as before.

Each job records its writer's row (in the column ``extra`` of ``jobs``, a JSON object:
``{"process": ROWID}``), so that two such processes with the same pid (both pid 1 of
their containers) are told apart: a job is judged by its own writer's row, not by the
last process begun with its pid.  A job without (an older Dahu's) is judged by that one.

Each row's lock file is named too (its device and inode, in the table
``process_locks``): the file deleted while processes hold their locks on it (a clean-up
of the work directory), a new one made by the next writer holds none of theirs; a
process whose row names another file than the one there may run (it is not taken for
dead), and a live one takes its lock again on the new file (:func:`keep_lock`, twice a
second), naming it.

A clean close deletes the process's row: the table keeps those of processes killed.
Locks are open-file-description locks (``F_OFD_SETLK``): closing another descriptor of
the file in the process does not release them; a process forked from the writer holds
its lock until it ends too.  The table and the file are additions: a Dahu that does not
know them ignores them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import struct
import time
from typing import Any

from .base import HOST

logger = logging.getLogger(__name__)

__all__ = [
    "BOOT",
    "PIDNS",
    "JOB_PROCESS",
    "Known",
    "keep_lock",
    "known",
    "lock_path",
    "register",
    "release",
    "row_of",
]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS processes "
    "(host TEXT, pid INTEGER, started REAL, boot TEXT, pidns TEXT, lock INTEGER)"
)


_LOCKS = "CREATE TABLE IF NOT EXISTS process_locks (process INTEGER PRIMARY KEY, dev INTEGER, ino INTEGER)"
JOB_PROCESS = "CASE WHEN json_valid(extra) THEN json_extract(extra, '$.process') END"
"""SQL of a job's writer's rowid in ``processes`` (NULL: an older Dahu's job, or damaged)."""


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip() or None
    except (OSError, ValueError):
        return None


def _namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None


BOOT = _read_text("/proc/sys/kernel/random/boot_id")
"""This machine's boot (Linux: a new one at each start of the kernel), None: unknown."""
PIDNS = _namespace()
"""This process's pid namespace (None: unknown)."""

_OFD = getattr(fcntl, "F_OFD_SETLK", None), getattr(fcntl, "F_OFD_GETLK", None)
WAIT = 1.0
"""Seconds a row's write waits at most for another process's lock (then: none)."""
_FLOCK = "hhqqi4x"  # struct flock (64-bit Linux): type, whence, start, len, pid


def lock_path(journal: Any) -> str:
    """The file whose bytes the writers of ``journal`` lock."""
    return journal.path + "-processes"


def _lock(fd: int, offset: int, kind: int, command: int) -> int:
    """``fcntl`` of one byte at ``offset``; the lock type it answers."""
    answer = fcntl.fcntl(fd, command, struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0))
    return struct.unpack(_FLOCK, answer)[0]


def _identity(fd: int) -> tuple[int, int]:
    """The device and inode of the open file ``fd``."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _name_file(db: Any, rowid: int, fd: int) -> None:
    """In the transaction ``db``: the lock of row ``rowid`` is on the file ``fd``."""
    db.execute(_LOCKS)
    db.execute("INSERT OR REPLACE INTO process_locks VALUES (?, ?, ?)", (rowid, *_identity(fd)))


def register(journal: Any) -> None:
    """Record this process as a writer of the SQLite ``journal``, its lock held until
    :func:`release` (best effort: without a row or a lock, its pid tells as before)."""
    journal._alive, journal._extra = None, None
    if BOOT is None or PIDNS is None:
        return
    setlk = _OFD[0]
    fd = None
    try:
        if setlk is not None:
            with contextlib.suppress(OSError):
                fd = os.open(lock_path(journal), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with journal.transaction(WAIT) as db:
            db.execute(_TABLE)
            row = (HOST, os.getpid(), time.time(), BOOT, PIDNS)
            rowid = db.execute("INSERT INTO processes VALUES (?, ?, ?, ?, ?, NULL)", row).lastrowid
            if fd is not None:
                try:  # within the transaction: nobody sees the row before the lock
                    _lock(fd, rowid, fcntl.F_WRLCK, setlk)
                    db.execute("UPDATE processes SET lock = ? WHERE rowid = ?", (rowid, rowid))
                    _name_file(db, rowid, fd)
                except OSError:  # a file system without such locks: the pid tells
                    os.close(fd)
                    fd = None
    except Exception as err:  # a full disk, a read-only journal: as before
        logger.debug("journal %s: this process not recorded: %s", journal.path, err)
        if fd is not None:
            os.close(fd)
        return
    journal._alive, journal._extra = (fd, rowid), f'{{"process":{rowid}}}'


def row_of(journal: Any) -> int | None:
    """This process's row in ``processes`` of ``journal`` (None: none recorded)."""
    alive = getattr(journal, "_alive", None)
    return None if alive is None else alive[1]


def release(journal: Any) -> None:
    """The journal closes, its outcomes committed: its row goes (the table keeps only
    those of processes killed, or whose writing of a dead one's files was cut short:
    :mod:`.pending`, the next start tells them by it), then its lock."""
    alive, journal._alive = getattr(journal, "_alive", None), None
    if alive is None:
        return
    fd, rowid = alive
    with contextlib.suppress(Exception), journal.transaction(WAIT) as db:
        try:  # (a row of this pid without a process: an older Dahu's, maybe ours)
            db.execute(
                "DELETE FROM processes WHERE rowid = ? AND NOT EXISTS (SELECT 1 FROM "
                "recoveries r LEFT JOIN recovery_processes p ON p.recovery = r.rowid WHERE "
                "p.process = ? OR p.process IS NULL AND r.host = ? AND r.pid = ?)",
                (rowid, rowid, HOST, os.getpid()),
            )
        except sqlite3.OperationalError:  # no such table: no start recorded one
            db.execute("DELETE FROM processes WHERE rowid = ?", (rowid,))
        with contextlib.suppress(sqlite3.OperationalError):  # (no such table: none)
            db.execute(
                "DELETE FROM process_locks WHERE process = ? AND NOT EXISTS "
                "(SELECT 1 FROM processes WHERE rowid = ?)",
                (rowid, rowid),
            )
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def keep_lock(journal: Any) -> None:
    """If the lock file of the SQLite ``journal`` was removed or replaced while this
    process held its lock there, take the lock again on the file there now (made if
    none), and name that file in its row: meanwhile the others take it for a process
    that may run (its row names another file), from then on they see its lock."""
    alive = getattr(journal, "_alive", None)
    if alive is None or alive[0] is None:
        return
    fd, rowid = alive
    path = lock_path(journal)
    try:
        there = os.stat(path)
        if (there.st_dev, there.st_ino) == _identity(fd):
            return
    except FileNotFoundError:
        pass
    except OSError:  # cannot tell now: the next check
        return
    new = None
    try:
        new = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        _lock(new, rowid, fcntl.F_WRLCK, _OFD[0])
        with journal.transaction(WAIT) as db:
            _name_file(db, rowid, new)
    except Exception as err:  # a full disk, the journal locked: the next check
        logger.debug("journal %s: lock not taken again: %s", journal.path, err)
        if new is not None:
            os.close(new)
        return
    journal._alive = (new, rowid)
    os.close(fd)
    logger.warning(
        "journal %s: its lock file %s was removed or replaced while this process ran: "
        "its lock is taken again on the file there now",
        *(journal.path, path),
    )


def _held(fd: int, offset: int) -> bool:
    """Whether a process holds the lock of byte ``offset`` (its own included)."""
    try:
        return _lock(fd, offset, fcntl.F_WRLCK, _OFD[1]) != fcntl.F_UNLCK
    except (OSError, TypeError):  # cannot tell: it may run
        return True


class Known:
    """The rows of ``processes`` of this host, read once: :meth:`alive` tells of a
    process what its pid cannot."""

    def __init__(self, rows: list[tuple], path: str | None, files: dict | None = None):
        self.rows: dict[int, list[tuple]] = {}
        self.by_id: dict[int, tuple] = {}
        for rowid, pid, started, boot, pidns, lock in rows:
            row = (started or 0.0, boot, pidns, lock, rowid)
            self.rows.setdefault(pid, []).append(row)
            self.by_id[rowid] = (pid, row)
        self.path = path
        self.files = files or {}  # rowid -> (device, inode) of the file of its lock

    def alive(
        self, pid: int | None, since: float | None, process: int | None = None
    ) -> bool | None:
        """Whether the process ``pid`` of this host that recorded a job submitted at
        ``since`` (its row ``process``, if the job names it) runs; None: its pid tells
        (this namespace of this boot, or no row)."""
        mine = self.by_id.get(process) if process is not None else None  # type: ignore[arg-type]
        row = None
        if mine is not None and mine[0] == pid and (since is None or mine[1][0] <= since + 1.0):
            row = mine[1]  # (else not its writer: a later process's row, its rowid used again)
        if row is None:
            rows = sorted(self.rows.get(pid, ()), key=lambda row: row[0])  # type: ignore[arg-type]
            if since is not None:  # the process that was ``pid`` then: the last one begun
                rows = [row for row in rows if row[0] <= since + 1.0]
            if not rows:
                return None
            row = rows[-1]
        started, boot, pidns, lock, rowid = row
        if boot != BOOT or pidns == PIDNS:  # (another boot: this machine's before, whose
            return None  # pids are gone, or a journal copied from one of its name)
        if lock is None or self.path is None:
            return True  # another namespace, no lock: cannot tell, it may run
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return True
        try:
            if self.files.get(rowid, _identity(fd)) != _identity(fd):
                return True  # its lock is on a file removed since: it may run
            return _held(fd, lock)
        finally:
            os.close(fd)


def known(read: Any, journal_path: str) -> Known:
    """The :class:`Known` of the journal at ``journal_path``, read with ``read(sql,
    args)`` (its rows); empty if it has no such table (no Dahu recorded one)."""
    try:
        sql = "SELECT rowid, pid, started, boot, pidns, lock FROM processes WHERE host = ?"
        rows = read(sql, (HOST,))
    except Exception:  # no such table (an older journal), or unreadable now
        rows = []
    try:
        files = {
            row[0]: tuple(row[1:])
            for row in read("SELECT process, dev, ino FROM process_locks", ())
        }
    except Exception:  # no such table: no process named its file
        files = {}
    path = journal_path + "-processes"
    return Known(list(rows), path if os.path.exists(path) else None, files)
