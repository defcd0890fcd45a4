"""Batched writes to one SQLite connection (group commit), for the SQLite journal.

A commit costs far more than the statement it commits (tens of microseconds of WAL and
lock work, against a few for an INSERT), so writes share commits.  Every write goes
through one queue, in order; whoever holds the writer lock commits *everything* queued
in one transaction.  Two kinds of writes:

* :meth:`BatchedWriter._write`: the caller waits until its statement is committed (by
  itself, or by the thread that held the lock and carried it);
* :meth:`BatchedWriter._write_later` / ``_queue_later``: the caller does not wait.  Its
  write is committed now if the lock is free, else by the holder, which commits what was
  queued meanwhile when it leaves the lock; the write's ``then(error)`` is called by the
  thread that committed it, after the commit (the engine reports a job ended there).
  A write queued with ``hold`` waits for others until a batch is worth a commit; its
  caller sees to a commit soon if none comes (the engine arms a timer).

Committed batches are reported in commit order, by one thread at a time.  A thread that
answers a caller (it waited for its write, or read) commits and reports at most one batch
for others, then hands what is left to :attr:`BatchedWriter.hand_off` (the engine's
watchdog calls :meth:`BatchedWriter.drain_some`); writers that do not wait give way to a
thread blocked on the lock, and past :data:`BatchedWriter.MAX_QUEUED` queued writes they
wait for it (backpressure).

The writer itself waits for no timer and adds no thread.  Nothing is reported before it is
committed; a crash loses at most writes still queued, whose callers were not answered
and whose ``then`` did not run.  :meth:`BatchedWriter.flush` waits until every queued
write is committed and reported.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import JournalError
from .sqlitefile import write_refused

logger = logging.getLogger(__name__)

__all__ = ["BAD_ROW", "BatchedWriter", "JournalLocked"]

BAD_ROW = (UnicodeError, OverflowError, sqlite3.InterfaceError)
"""What SQLite raises for a row it cannot bind (text that is not UTF-8, an int beyond
64 bits): an error of that write alone, not of the journal."""


class JournalLocked(JournalError):
    """Another process held the journal's lock for longer than a job's record waits."""


class _Write:
    """One statement queued for the next group commit (``rows``: its argument tuples)."""

    __slots__ = ("sql", "rows", "ids", "done", "error", "then", "bounded", "claimed", "withdrawn")

    def __init__(self, sql: str, rows: list[tuple], then: Any = None, bounded: bool = False):
        self.sql = sql
        self.rows = rows
        self.ids: list[int] = []
        self.done = False
        self.error: BaseException | None = None
        self.then = then  # called with the error (or None) once committed (finish_later)
        # a record: its caller withdraws it after RECORD_WAIT s, unless a commit claimed it
        self.bounded = bounded
        self.claimed = self.withdrawn = False


class BatchedWriter:
    """The write path of a journal at ``self.path`` over ``self._db`` (autocommit mode)."""

    _db: sqlite3.Connection
    path: str

    def _init_writer(self) -> None:
        self._lock = threading.RLock()  # the writer lock (reads take it too)
        # threads blocked on the writer lock (a read, a record a client waits for): the
        # threads that commit in passing let them have it first, or under a stream of
        # outcomes they would take it back each time and starve them (seconds)
        self._waiters = 0
        self._waiters_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Write] = []
        self.commits = 0  # transactions committed
        self._pending = 0  # writes that do not wait: queued or committed, not reported
        self._settled = threading.Condition(threading.Lock())
        self._reporting = threading.local()
        self._closing = False
        # committed batches whose writes have a `then`, in commit order; one thread at a
        # time reports them (the lock is re-entrant: a report may write and report)
        self._reports: collections.deque[list[_Write]] = collections.deque()
        self._report_lock = threading.RLock()
        self.hand_off: Callable[[], None] | None = None
        """Called when a thread that must not linger (one that waited for its own write,
        or read) leaves writes or reports for others: it must see to a call of
        :meth:`drain_some` soon, from another thread (the engine: its watchdog).  None:
        such a thread commits and reports everything queued itself."""
        self._handed = False  # a hand-off is on its way: one is enough

    @contextlib.contextmanager
    def _locked(self, wait: float | None = None) -> Iterator[None]:
        """Hold the writer lock (within ``wait`` s, else refused); on leaving, commit the queue."""
        if not self._acquire(wait):
            raise self._locked_error()
        done = False
        try:
            yield
            done = True
        finally:
            if done or wait is None:
                self._release()
            else:  # refused: its caller waits for no other write on the way out
                self._lock.release()

    def _acquire(self, wait: float | None = None) -> bool:
        """Take the writer lock, before the threads that commit in passing (within
        ``wait`` seconds if given: False if it could not)."""
        if not self._waiters and self._lock.acquire(blocking=False):
            return True
        with self._waiters_lock:
            self._waiters += 1
        try:
            return self._lock.acquire(timeout=-1 if wait is None else max(wait, 0.0))
        finally:
            with self._waiters_lock:
                self._waiters -= 1

    RECORD_WAIT = 1.25
    """Seconds a job's record waits at most while another process holds the journal's
    lock (a ``sqlite3`` shell, a prune's ``VACUUM``), and as long for a block of ids (2.5 s
    in all: a Tango client gives up after 3 s): then the job is refused, never run."""

    @contextlib.contextmanager
    def _within(self, lock: Any) -> Iterator[float]:
        """Hold ``lock`` taken within :data:`RECORD_WAIT` s, else refuse; yield the deadline."""
        until = time.monotonic() + self.RECORD_WAIT
        if not lock.acquire(timeout=self.RECORD_WAIT):
            raise self._locked_error()
        try:
            yield until
        finally:
            lock.release()

    def _locked_error(self) -> JournalError:
        return JournalLocked(
            f"the journal {self.path} is locked by another process (a sqlite3 shell, a "
            f"prune, another server?): job not recorded"
        )

    LOCK_WAIT = 30.0
    """Seconds a write waits at most for another process's lock (a record: less)."""

    def _patiently(self, sql: str, args: tuple = (), wait: float | None = None) -> Any:
        """Execute ``sql`` (a write), waiting ``wait`` s (else :data:`LOCK_WAIT`) at most for
        another process's lock, in steps of the connection's short busy timeout."""
        until = time.monotonic() + (self.LOCK_WAIT if wait is None else wait)
        while True:
            try:
                return self._db.execute(sql, args)
            except sqlite3.OperationalError as err:
                busy = getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or (wait is None and time.monotonic() >= until):
                    raise
                if time.monotonic() >= until:
                    raise self._locked_error() from err

    def _release(self) -> None:
        self._lock.release()
        # a writer that found the lock taken queued its write and left: the holder
        # commits it (the outermost holder: an inner one is inside a transaction)
        self._commit_in_passing()

    def _commit_in_passing(self) -> None:
        """From a thread that answers a caller (a read, a record): commit one batch of
        what others queued and report one, if the writer lock is free, then hand what is
        left over (under a stream of outcomes there is always more) rather than work for
        others until the stream stops."""
        if self._queue and not self._lock._is_owned():  # type: ignore[attr-defined]
            self._drain(bounded=True)

    @contextlib.contextmanager
    def transaction(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """Hold the writer lock and run the block in one IMMEDIATE transaction
        (``wait``: seconds at most for the locks, else :class:`JournalError`)."""
        until = None if wait is None else time.monotonic() + wait
        with self._locked(wait):
            self._patiently("BEGIN IMMEDIATE", (), until and until - time.monotonic())
            try:
                yield self._db
            except BaseException:
                self._end_transaction()
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._end_transaction()
                raise

    def _write(self, sql: str, rows: list[tuple], bounded: bool = False) -> list[int]:
        """Commit ``sql`` once per row, with every write queued now, in one transaction;
        return ``[lastrowid]`` for a one-row write (``[]`` for more); ``bounded``: records."""
        write = _Write(sql, rows, bounded=bounded)
        with self._queue_lock:
            self._queue.append(write)
        self._wait_for(write)
        return write.ids

    def _wait_for(self, write: _Write) -> None:
        """Return once the queued ``write`` is committed (committing the queue if no other
        thread did); :class:`JournalError` if it could not be.  A record (``bounded``) waits
        :data:`RECORD_WAIT` s at most, then is withdrawn unless a commit claimed it."""
        until = time.monotonic() + self.RECORD_WAIT if write.bounded else None
        refused = False
        if self._acquire(None if until is None else self.RECORD_WAIT):
            try:
                if not write.done:
                    left = None if until is None else until - time.monotonic()
                    refused = not self._commit(self._take(), left)
            finally:  # refused: its caller waits for no other write on the way out
                refused = refused or isinstance(write.error, JournalLocked)
                self._lock.release() if refused else self._release()
        elif self._withdraw(write):
            raise self._locked_error()
        elif not write.done:  # a commit under way claimed it: it holds SQLite's lock
            self._acquire()
            self._release()
        refused = refused or isinstance(write.error, JournalLocked)
        self._report_queued(bounded=True)
        self._leftovers(drain=not refused)
        if write.error is not None:
            err = write.error
            if isinstance(err, JournalLocked):  # refused: its own error, one per write
                raise err
            raise write_refused(self.path, err) from err

    HOLD_WRITES = 32
    """Writes queued with ``hold`` that make a batch worth committing at once."""

    def _write_later(self, write: _Write, hold: bool = False) -> None:
        """Queue ``write`` (its ``then`` reports it) and commit the queue now if the
        writer lock is free; if not, its holder commits it when it leaves: the caller
        never waits.  With ``hold``, commit only once :data:`HOLD_WRITES` writes are
        queued: the caller has more coming, and sees to a commit soon
        (:meth:`commit_soon`) if none follows."""
        self._queue_later(write)
        if len(self._queue) > self.MAX_QUEUED:
            self._catch_up()
        elif not hold or len(self._queue) >= self.HOLD_WRITES:
            self._drain()

    MAX_QUEUED = 512
    """Writes queued past which a writer that does not wait waits for the writer lock
    after all, and commits: a burst of jobs faster than the commits otherwise grows the
    queue without end, and one commit of tens of thousands of writes held the lock for
    seconds against every client's command."""

    def _catch_up(self) -> None:
        """Wait for the writer lock and commit the queue, then report (backpressure)."""
        self._acquire()
        try:
            self._commit(self._take())
        finally:
            self._lock.release()
        self._drain()  # what was queued meanwhile: its writers left it to this holder

    def _queue_later(self, write: _Write) -> None:
        """Queue ``write``, whose caller does not wait (its ``then`` reports it)."""
        with self._settled:
            if self._closing:
                raise JournalError(f"the journal {self.path} is closed")
            self._pending += 1
        with self._queue_lock:
            self._queue.append(write)

    def _drain(self, bounded: bool = False) -> None:
        """Commit the queued writes while the writer lock is free, then report them.
        ``bounded``: one batch of each, then the rest is handed over (:attr:`hand_off`)."""
        while self._queue:
            if self._waiters or not self._lock.acquire(blocking=False):
                break  # the holder (or the waiter, next) commits the queue when it leaves
            try:  # in passing: no long wait for another process's lock (handed over)
                batch = self._take(self.BOUNDED_BATCH if bounded else None)
                committed = self._commit(batch, self.PASSING_WAIT if bounded else None, bounded)
            finally:
                self._lock.release()
            self._report_queued(bounded)
            if bounded or not committed:
                break
        if bounded:
            self._leftovers()
        else:
            self._report_queued()

    def _report_queued(self, bounded: bool = False) -> None:
        """Report the committed batches in commit order (``bounded``: one at most).  If
        another thread is reporting, it reports these too."""
        while self._reports:
            if not self._report_lock.acquire(blocking=False):
                return
            try:
                while self._reports:
                    try:
                        batch = self._reports.popleft()
                    except IndexError:  # a nested report took it
                        break
                    self._report(batch)
                    if bounded:
                        return
            finally:
                self._report_lock.release()

    def _leftovers(self, drain: bool = True) -> None:
        """Writes or reports left by a thread that must not linger: hand them over
        (with no :attr:`hand_off`, commit them here, unless not ``drain``)."""
        if not (self._queue or self._reports):
            return
        hand_off = self.hand_off
        if hand_off is None:
            if drain:
                self._drain()
        elif not self._handed:
            self._handed = True
            try:
                hand_off()
            except Exception:  # no thread to hand to: do it here after all
                self._handed = False
                logger.exception("journal: cannot hand over the writes left")
                self._drain()

    def drain_some(self, budget: float = 0.02) -> None:
        """Commit and report for about ``budget`` s at most, then hand over what is left
        (for the thread :attr:`hand_off` wakes: it has other work too)."""
        self._handed = False  # from now on, what is left over needs a new hand-off
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            progressed = False
            if self._queue and not self._waiters and self._lock.acquire(blocking=False):
                try:
                    self._commit(self._take(self.BOUNDED_BATCH))
                finally:
                    self._lock.release()
                progressed = True
            if self._reports and self._report_lock.acquire(blocking=False):
                try:
                    if self._reports:
                        self._report(self._reports.popleft())
                        progressed = True
                finally:
                    self._report_lock.release()
            if not progressed:
                return  # nothing left, or the threads holding the locks see to it
        self._leftovers()

    PASSING_WAIT = 0.1  # s a commit in passing waits for another process's lock

    BOUNDED_BATCH = 512
    """Writes a thread that must not linger commits at once (a burst queues thousands)."""

    def _take(self, limit: int | None = None) -> list[_Write]:
        with self._queue_lock:
            if limit is None or len(self._queue) <= limit:
                batch, self._queue = self._queue, []
            else:
                batch, self._queue = self._queue[:limit], self._queue[limit:]
        return batch

    def _report(self, batch: list[_Write]) -> None:
        """Call the ``then`` of the committed writes of ``batch`` that have one, in order."""
        reported = 0
        # a report may write (and report others) in turn: depth, not a flag
        self._reporting.depth = getattr(self._reporting, "depth", 0) + 1
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
            self._reporting.depth -= 1
            if reported:
                with self._settled:
                    self._pending -= reported
                    if not self._pending:
                        self._settled.notify_all()

    def _commit(self, batch: list[_Write], wait: float | None = None, keep: bool = False) -> bool:
        """Commit ``batch`` in one transaction (writer lock held); every write gets its ids
        or the error.  False if another process kept its lock ``wait`` s: the batch's job
        records are refused (``keep``: queued again, as its other writes)."""
        if not batch:
            return True
        db = self._db
        # alone: one autocommitted statement costs less than BEGIN + it + COMMIT (not a
        # record: it is claimed once SQLite's lock is held, and may be withdrawn before)
        alone = len(batch) == 1 and len(batch[0].rows) == 1 and not batch[0].bounded
        failure: BaseException | None = None
        refused = False
        try:
            if not alone:
                self._patiently("BEGIN IMMEDIATE", (), wait)
            batch = self._claim(batch)
            for write in batch:
                try:
                    if len(write.rows) == 1:
                        write.ids = [self._patiently(write.sql, write.rows[0], wait).lastrowid]
                    else:  # many rows: one call (their callers know their ids)
                        db.execute("SAVEPOINT many")
                        try:
                            db.executemany(write.sql, write.rows)
                        except BAD_ROW:
                            db.execute("ROLLBACK TO many")
                            db.execute("RELEASE many")
                            raise
                        db.execute("RELEASE many")
                except BAD_ROW as err:  # that write alone fails: none of it was written
                    write.error = err
            if not alone:
                db.execute("COMMIT")
            self.commits += 1
        except JournalLocked:  # nothing begun: records refused (or, in passing, queued again)
            refused = True
            self._refuse(batch, not keep)
        except Exception as err:  # the journal's (disk full...) or a bug: the batch fails
            failure = err
            self._end_transaction()
        except BaseException as err:  # e.g. KeyboardInterrupt: the others must not hang
            failure = err
            self._end_transaction()
            raise
        finally:
            if not refused:
                if failure is not None:  # maybe before the claim: some were withdrawn since
                    batch = self._claim(batch)
                for write in batch:
                    if failure is not None:
                        write.error = failure
                    write.done = True
                if any(write.then is not None for write in batch):
                    self._reports.append(batch)
        return not refused

    def _claim(self, batch: list[_Write]) -> list[_Write]:
        """The writes of ``batch`` not withdrawn, now claimed (no longer withdrawable)."""
        with self._queue_lock:
            kept = [write for write in batch if not write.withdrawn]
            for write in kept:
                write.claimed = True
        return kept

    def _withdraw(self, write: _Write) -> bool:
        """Withdraw a job's record (another process holds the lock); False if claimed."""
        with self._queue_lock:
            if write.claimed or write.done:
                return False
            write.withdrawn = True
            with contextlib.suppress(ValueError):
                self._queue.remove(write)
        self._drop(write, self._locked_error())
        return True

    def _refuse(self, batch: list[_Write], refuse_records: bool) -> None:
        """Another process kept its lock: refuse the job records, queue the rest again."""
        with self._queue_lock:
            records = [w for w in batch if refuse_records and w.bounded and not w.withdrawn]
            for write in records:
                write.withdrawn = True
            self._queue[:0] = [w for w in batch if not w.withdrawn]
        for write in records:
            self._drop(write, self._locked_error())

    def _drop(self, write: _Write, err: JournalError) -> None:
        """Not written: its caller gets ``err``, no ``then`` (a job refused, not failed)."""
        write.error, write.done = err, True
        if write.then is not None:
            write.then = None
            with self._settled:
                self._pending -= 1
                if not self._pending:
                    self._settled.notify_all()

    def _end_transaction(self) -> None:
        """After a failed write: roll back what is left of the transaction.  SQLite may
        have rolled it back itself (disk full, I/O error): then there is nothing to do,
        and the failure's own error, not ROLLBACK's, is the one reported.  A transaction
        left open would make every later write fail."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("journal %s: cannot roll back", self.path)

    def commit_soon(self) -> None:
        """Commit the queue now if the writer lock is free (else its holder does)."""
        self._drain()

    def settle(self, token: Any) -> None:
        """Return once the write ``token`` (from :meth:`create_later`) is committed."""
        if token is not None:
            self._wait_for(token)

    def flush(self, timeout: float | None = None) -> bool:
        """Commit what is queued and wait until every write that does not wait is
        committed and reported (at most ``timeout`` s); True if so."""
        if getattr(self._reporting, "depth", 0):
            return False  # from a report: what it would wait for includes itself
        self._drain()
        with self._settled:
            return self._settled.wait_for(lambda: not self._pending, timeout)
