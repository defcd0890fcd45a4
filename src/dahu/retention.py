"""Pruning the journal: old finished jobs lose their record and their ``.inp``/``.out``
files, and the space is given back.  ``dahu-jobs prune`` and the server's retention
setting run the same :func:`prune`.

Safe beside a running server:

* only jobs in a final state (``success``, ``failure``, ``aborted``) are removed, and
  only those that ended at least ``min_age`` seconds ago (the server writes a job's files
  just after it ends); a job still queued or running is never touched, nor one whose
  files its live process (a script, before its ``clean()``) has yet to write;
* records are deleted in short transactions of at most ``batch`` jobs, so the server's
  own writes wait milliseconds, not the whole prune;
* a job's files are removed before its record: if the prune is interrupted, what is left
  is a record whose files are gone (a later prune removes it), never files that no
  record names; and again after it while a start writes the files a dead process left
  (those it wrote in between: it removes those it writes of a job whose record is gone,
  :mod:`dahu.engine.recovery`);
* the space is reclaimed in small steps (``PRAGMA incremental_vacuum``), then the WAL
  file is truncated (unless a reader keeps an older snapshot for over 0.2 s: later).
  A journal made before this version is rewritten once by
  ``VACUUM`` (the server's writes wait during that one rewrite).

Job ids are never reused after a prune: new jobs keep counting from the highest id ever
given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import DahuError
from .jobquery import open_journal
from .journal import JournalError, SQLiteJournal, job_file_stem, processes
from .journal.base import HOST, MAX_ID
from .journal.files import remove_dead_parts
from .journal.sqlitefile import process_alive
from .properties import MAX_RETENTION_INTERVAL
from .states import State
from .timespec import BadTime, parse_duration, quoted

logger = logging.getLogger(__name__)

__all__ = [
    "PruneReport",
    "Retention",
    "RetentionSchedule",
    "prune",
    "parse_retention",
    "DEFAULT_MIN_AGE",
]

DEFAULT_MIN_AGE = 60.0
"""Seconds a job must have ended since before it may be pruned."""
_FINAL = tuple(sorted(State.FINAL))


@dataclass
class PruneReport:
    """What a prune removed (or, with ``dry_run``, would remove)."""

    workdir: str
    dry_run: bool
    matched: int = 0
    removed: int = 0
    kept_unfinished: int = 0
    kept_recent: int = 0
    kept_stuck: int = 0  # finished, but a file of theirs could not be removed
    kept_owed: int = 0  # finished, their files not written yet by their live process
    files_removed: int = 0
    file_bytes: int = 0
    journal_bytes_before: int = 0
    journal_bytes_after: int = 0
    first_id: int | None = None
    last_id: int | None = None
    seconds: float = 0.0
    unfinished_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)

    def summary(self) -> str:
        """One line for people."""
        verb = "would remove" if self.dry_run else "removed"
        # none removed (every file stuck): no ids (until 2026-11-30 "removed 0 job(s) (ids 1-3)")
        ids = f" (ids {self.first_id}-{self.last_id})" if self.removed else ""
        text = f"{verb} {self.removed} job(s){ids} and {self.files_removed} file(s), " + (
            f"{_size(self.file_bytes)} of files"
        )
        if not self.dry_run:
            freed = self.journal_bytes_before - self.journal_bytes_after
            text += (
                f"; journal {_size(self.journal_bytes_before)} -> {_size(self.journal_bytes_after)}"
            )
            text += f" ({_size(max(freed, 0))} reclaimed)"
        kept = []
        if self.kept_unfinished:
            kept.append(f"{self.kept_unfinished} unfinished")
        if self.kept_recent:
            kept.append(f"{self.kept_recent} ended less than the minimum age ago")
        if self.kept_stuck:
            kept.append(f"{self.kept_stuck} whose files could not be removed")
        if self.kept_owed:
            kept.append(f"{self.kept_owed} whose files a live process has yet to write")
        if kept:
            text += "; kept " + " and ".join(kept)
        return text


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _journal_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


def prune(
    workdir: str,
    before: float | None = None,
    keep_last: int | None = None,
    dry_run: bool = False,
    min_age: float = DEFAULT_MIN_AGE,
    batch: int = 500,
    now: float | None = None,
    settled: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PruneReport:
    """Remove the finished jobs submitted before ``before`` (epoch s) and/or not among the
    ``keep_last`` most recent finished jobs, with their files; reclaim the space.

    At least one of ``before`` and ``keep_last`` must be given (both: a job must match
    both to go).  ``dry_run`` only counts.  A job must have ended ``min_age`` s before
    ``now`` and, when ``settled`` is given (the server knows when its file writer has
    caught up: :meth:`dahu.engine.Engine.files_settled`), before ``settled``.  See the
    module's documentation for safety.  ``progress(done, total)`` is called after each
    batch of jobs removed (``total``: the jobs that go); the space is reclaimed after the
    last one.
    """
    if before is None and keep_last is None:
        raise DahuError("prune needs a date (before) or a number of jobs to keep (keep_last)")
    if keep_last is not None and keep_last < 0:
        raise DahuError(f"keep_last must be 0 or more, not {keep_last}")
    started = time.monotonic()
    now = time.time() if now is None else now
    cutoff = now - min_age if settled is None else min(now - min_age, settled)
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, SQLiteJournal.FILENAME)
    report = PruneReport(workdir, dry_run, journal_bytes_before=_journal_bytes(path))
    db = open_journal(workdir, write=not dry_run)
    try:
        if not dry_run:  # a journal SQLite opened read-only (a read-only file system, a
            with _transaction(db):  # file of another account's): refused before any file
                db.execute("DELETE FROM jobs WHERE 0")  # goes (until 2026-11-30 after)
        clauses, args = [], []
        if before is not None:
            clauses.append("submitted < ?")
            args.append(before)
        if keep_last is not None:
            row = db.execute(  # the last N that ended: those queued or running are
                "SELECT id FROM jobs WHERE state IN (?, ?, ?) "  # kept besides (until
                "ORDER BY id DESC LIMIT 1 OFFSET ?",  # 2026-11-30 they were among the N)
                (*_FINAL, min(keep_last, MAX_ID)),  # SQLite's integers have 64 bits
            ).fetchone()
            # the unfinished ones are kept, and counted, wherever they are
            unfinished = "state NOT IN (?, ?, ?)"
            if row is None:  # no more than keep_last ended jobs: nothing to remove
                clauses.append(unfinished)
                args.extend(_FINAL)
            else:
                clauses.append(f"(id <= ? OR {unfinished})")
                args.extend([row[0], *_FINAL])
        match = " AND ".join(clauses)
        report.matched = db.execute(f"SELECT COUNT(*) FROM jobs WHERE {match}", args).fetchone()[0]
        unfinished = db.execute(
            f"SELECT id FROM jobs WHERE {match} AND state NOT IN (?, ?, ?) ORDER BY id",
            [*args, *_FINAL],
        ).fetchall()
        report.kept_unfinished = len(unfinished)
        report.unfinished_ids = [row[0] for row in unfinished[:100]]
        settled = "state IN (?, ?, ?) AND (ended IS NULL OR ended <= ?)"
        eligible = f"{match} AND {settled}"
        eligible_args = [*args, *_FINAL, cutoff]
        report.kept_recent = db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE {match} AND state IN (?, ?, ?) AND ended > ?",
            [*args, *_FINAL, cutoff],
        ).fetchone()[0]
        directories: set[str] = set()
        known = processes.known(lambda sql, args: db.execute(sql, args).fetchall(), path)
        owed = _Owed(workdir, known)
        last = 0
        going = report.matched - report.kept_unfinished - report.kept_recent
        while True:
            rows = db.execute(
                f"SELECT id, plugin, host, pid, submitted, {processes.JOB_PROCESS} FROM jobs "
                f"WHERE {eligible} AND id > ? ORDER BY id LIMIT ?",
                [*eligible_args, last, batch],
            ).fetchall()
            if not rows:
                break
            last, batch_rows = rows[-1][0], len(rows)
            rows = [row[:2] for row in rows if not owed(*row)]
            report.kept_owed += batch_rows - len(rows)
            batch_rows = len(rows)
            if not rows:
                continue
            if report.first_id is None:
                report.first_id = rows[0][0]
            report.last_id = last
            # a job whose file stays keeps its record: no file is left that no record names
            rows = [r for r in rows if _remove_files(workdir, *r, dry_run, report, directories)]
            report.kept_stuck += batch_rows - len(rows)
            gone = len(rows)
            if not dry_run and rows:
                marks = ",".join("?" * len(rows))
                with _transaction(db):
                    gone = db.execute(  # not those another prune (the server's) took first
                        f"DELETE FROM jobs WHERE id IN ({marks}) AND state IN (?, ?, ?)",
                        [*(r[0] for r in rows), *_FINAL],
                    ).rowcount
                if _recovering(db):  # again: those a start's recovery wrote meanwhile
                    for job_id, plugin in rows:
                        _remove_files(workdir, job_id, plugin, dry_run, report, directories)
            report.removed += gone
            if progress is not None:
                progress(report.removed, going)
        if not dry_run:
            if report.first_id is not None:  # and those a prune killed before left empty
                directories.update(_job_dirs_below(workdir, report.first_id))
            for directory in sorted(directories):
                try:
                    remove_dead_parts(directory, known)  # (a killed start's: no job's file)
                    os.rmdir(directory)  # only if empty: the server may write there again
                except OSError:
                    pass
            if report.removed:
                _reclaim(db)
    except sqlite3.Error as err:
        busy = getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
        why = " (another process held its write lock for 30 s: a sqlite3 shell?)" if busy else ""
        raise JournalError(f"cannot prune the journal {path}: {err}{why}") from None
    finally:
        db.close()
    report.journal_bytes_after = _journal_bytes(path)
    report.seconds = time.monotonic() - started
    return report


class _Owed:
    """Whether a finished job's files are still to be written by its process, alive: a
    script holding its ended jobs writes them at its ``clean()``, maybe hours later (a
    server writes them as the job ends).  Its record stays until they are there, or its
    process is gone (the next start writes them): else its files would name no record.
    The writer is known by its row in ``processes`` (:mod:`.journal.processes`); none
    there: it closed its journal, writes no more (or an older Dahu's, another host's)."""

    def __init__(self, workdir: str, known: processes.Known):
        self.workdir, self.known = workdir, known
        self.verdicts: dict[int, bool] = {}  # row in processes -> whether it runs

    def __call__(self, job_id: int, plugin: str, host: Any, pid: Any, since: Any, row: Any) -> bool:
        if host != HOST or row not in self.known.by_id or pid == os.getpid():
            return False  # (this process: the server's retention knows when it wrote them)
        if row not in self.verdicts:
            self.verdicts[row] = process_alive(host, pid, since, None, self.known, row)
        stem = job_file_stem(self.workdir, job_id, plugin)  # (a dead one's: not looked at)
        return self.verdicts[row] and not (
            os.path.exists(stem + ".inp") and os.path.exists(stem + ".out")
        )


def _job_dirs_below(workdir: str, job_id: int) -> list[str]:
    """The job directories (``NNNN``) of ``workdir`` below that of ``job_id``: a prune
    killed before its end left those it had emptied (each is removed only if empty)."""
    try:
        names = os.listdir(workdir)
    except OSError:
        return []
    below = job_id // 1000
    return [
        os.path.join(workdir, name)
        for name in names
        if name.isdigit() and name == f"{int(name):04d}" and int(name) < below
    ]


def _recovering(db: sqlite3.Connection) -> bool:
    """Whether a start writes (or was killed writing) the files a dead process left
    unwritten (:mod:`dahu.journal.pending`): one that began after the records were
    deleted finds them gone, and removes what it wrote."""
    try:
        return db.execute("SELECT 1 FROM recoveries LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError:  # no such table: no start ever wrote them
        return False


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


def _remove_files(
    workdir: str, job_id: int, plugin: str, dry_run: bool, report: PruneReport, dirs: set[str]
) -> bool:
    """Remove the job's files; whether none is left."""
    stem = job_file_stem(workdir, job_id, plugin)
    dirs.add(os.path.dirname(stem))
    removed = True
    for ext in (".inp", ".out"):
        try:
            size = os.stat(stem + ext).st_size
            if not dry_run:
                os.unlink(stem + ext)
        except FileNotFoundError:
            continue
        except OSError as err:
            logger.warning("job %s: cannot remove %s: %s: the job is kept", job_id, stem + ext, err)
            removed = False
            continue
        report.files_removed += 1
        report.file_bytes += size
    return removed


def _reclaim(db: sqlite3.Connection) -> None:
    """Give the freed pages back to the file system, in small steps when possible."""
    mode = db.execute("PRAGMA auto_vacuum").fetchone()[0]
    if mode != 2:  # a journal made before incremental vacuum: convert it, once
        logger.info("journal: rewriting it once (VACUUM) so that later prunes are incremental")
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
    else:
        while db.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            db.execute("PRAGMA incremental_vacuum(2000)").fetchall()
    # a TRUNCATE checkpoint waits for the readers (a long `dahu-jobs list`, a sqlite3
    # shell) holding the journal's write lock: the server could record no job meanwhile
    # (30 s). A moment only, else the WAL file is truncated by a later prune
    db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
    with contextlib.suppress(sqlite3.OperationalError):  # the server kept its lock
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


CHECKPOINT_WAIT_MS = 200
"""How long the checkpoint that ends a prune may keep the server's writes waiting."""


# ---- the server's retention setting ------------------------------------------------------
@dataclass(frozen=True)
class Retention:
    """What the server keeps: jobs younger than ``max_age`` s, or the ``keep_last`` most
    recent jobs."""

    max_age: float | None = None
    keep_last: int | None = None

    def describe(self) -> str:
        """The setting in words, for the log."""
        if self.keep_last is not None:
            return f"the last {self.keep_last} jobs"
        return f"jobs submitted in the last {self.max_age:g} s"


def parse_retention(text: str) -> Retention | None:
    """The retention written ``30d`` (a duration: keep the jobs submitted since then) or
    ``100000`` (a count: keep that many most recent jobs that ended); None for an empty text (keep
    everything)."""
    value = (text or "").strip()
    if not value:
        return None
    if value.isdigit():  # past 19 digits, more than any journal holds (int() refused 4,300)
        return Retention(keep_last=int(value) if len(value.lstrip("0")) <= 19 else MAX_ID)
    try:
        return Retention(max_age=parse_duration(value))
    except BadTime:
        raise BadTime(
            f"bad retention {quoted(text)}: expected a duration such as 30d or 12h, "
            "or a number of jobs to keep such as 100000"
        ) from None


class RetentionSchedule:
    """Prunes a work directory by a :class:`Retention` every ``interval`` seconds, in a
    thread of its own (the first run soon after :meth:`start`).

    ``settled`` (a callable giving the ``settled`` time of :func:`prune`) lets the
    server's schedule prune jobs as soon as their files are written, instead of waiting
    ``min_age`` seconds after they ended.
    """

    def __init__(
        self,
        workdir: str,
        retention: Retention,
        interval: float,
        min_age: float = DEFAULT_MIN_AGE,
        first_delay: float = 1.0,
        settled: Callable[[], float] | None = None,
    ):
        self.workdir = workdir
        self.retention = retention
        self.interval = float(interval)
        self.min_age = min_age
        self.settled = settled
        self.first_delay = first_delay
        self.last: PruneReport | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dahu-retention", daemon=True)

    def start(self) -> RetentionSchedule:
        """Start the thread; return self."""
        logger.info(
            "retention: keeping %s in %s, pruned every %g s",
            self.retention.describe(),
            self.workdir,
            self.interval,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the prune in progress, if any."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run_once(self) -> PruneReport:
        """Prune now."""
        retention = self.retention
        before = time.time() - retention.max_age if retention.max_age is not None else None
        report = prune(
            self.workdir,
            before=before,
            keep_last=retention.keep_last,
            min_age=self.min_age,
            settled=self.settled() if self.settled is not None else None,
        )
        self.last = report
        self.runs += 1
        if report.removed:
            logger.info("retention: %s", report.summary())
        return report

    def _run(self) -> None:
        delay = self.first_delay
        while not self._stop.wait(delay):
            try:
                self.run_once()
            except Exception:  # a loop boundary: try again at the next period
                logger.exception("retention: pruning %s failed", self.workdir)
            delay = max(0.1, min(self.interval, MAX_RETENTION_INTERVAL))  # 1e10: OverflowError
