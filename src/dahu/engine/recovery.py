"""At start: the ``.inp``/``.out`` files a dead process left unwritten.

A job's outcome is committed to the journal before its files are written (by the files
thread, after the job's end): a server killed in between leaves ended jobs without
files, and the jobs it left unfinished (closed as ``interrupted`` at the next start)
never get any.  The journal holds everything those files show, so the next start
writes them: those of jobs whose process is gone (a live one, a server beside a worker
process or a tool on its directory, writes its own).  Files are written in the order
jobs end, so only the latest ends are
looked at: the search reads :data:`WINDOW` ids at a time, from the last one down (a
burst can leave tens of thousands unwritten; the first read takes in the ids of the
interrupted jobs and a window below them), until :data:`SETTLED` ended jobs in a row
have both files whole, in the order of their ends, the newest id first among equal ends
(the files follow the order of the commits, close to it; a start writes those of the
jobs it closed, which share one end, in the order of their ids); then, since a
startJobs queues its jobs while other clients' come, it goes on down while a window
holds jobs that ended after the last of them (it stops at once at a window where only
live processes ended jobs).  It looks :data:`REACH`
ids back at most (files a user deleted are not all written again), except for the jobs
an earlier start closed as interrupted, when it was killed writing more than that many
of theirs.  The interrupted jobs all get theirs.  A start killed while it writes them
leaves a row in the journal (:mod:`dahu.journal.pending`): the next start looks at
every job that one had to look at (:func:`_look_at_all`).

It runs in a thread of its own (:class:`Recovery`, started by the engine): the engine,
and the device, answer at once however many jobs were queued at the kill (100,000 took
8 to 15 s to write); the engine's stop and close wait for it (and so does the
process's exit), and :meth:`Recovery.ensure` writes a job's files at once if asked for
them (``cleanJob``) before the thread got to them.  A stop, a close or an exit waits for
it at most its timeout (:meth:`~dahu.engine.core.Engine.shutdown`'s,
:meth:`~dahu.engine.core.Engine.close`'s, :data:`EXIT_WAIT`), then stops it
(:meth:`Recovery.stop`): its row in the journal stays, and the next start writes the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import threading
import weakref
from typing import Any

from ..errors import one_line
from ..journal import INTERRUPTED, job_file_stem, pending, processes, write_job_files
from ..journal.files import job_file_dir, remove_dead_parts
from ..journal.sqlite import process_alive
from ..states import State

logger = logging.getLogger(__name__)

__all__ = ["Recovery", "write_missing_files", "SETTLED", "WINDOW", "REACH"]

SETTLED = 50  # ended jobs in a row with their files: the older ones have theirs
WINDOW = 2000  # ids looked at at once (from the last one down)
REACH = 100_000  # ids looked at, at most: files a user deleted are not all written again
EXIT_WAIT = 30.0  # s a process ending without closing its engine waits for them, at most
KEEP_FREE = 64 << 20
"""Bytes of the work directory's disk these files leave free (at most a twentieth of the
disk), for the journal's own writes: below, the rest waits for the next start."""
ROOM_EVERY = 16  # jobs written between two looks at the room left


class Recovery:
    """Writes, in a thread, the files a dead process left unwritten (see the module):
    ``interrupted``, the jobs closed at this start; ``top``, the last id at the start."""

    def __init__(self, engine: Any, interrupted: list[int], top: int):
        self.engine, self.interrupted, self.top = engine, interrupted, top
        self.written = 0  # jobs that got files so far
        self.done = threading.Event()
        self.lock = threading.Lock()  # one job's files written by one thread at a time
        self.ensured: set[int] = set()  # the jobs whose files ensure() saw to
        self.refused = 0  # jobs whose files the disk refused (full: logged once, counted)
        self.fresh: list[tuple[int, str]] = []  # (id, plugin) written, record not seen since
        self.stopped = False  # the engine stops before the thread is done: no more files
        self.until_look = 0  # jobs to write before the next look at the room left
        self.thread = threading.Thread(target=self._run, name="dahu-recovery", daemon=True)
        self.thread.start()
        # a script that ends without closing its engine: the files written first (before
        # the journal's own atexit close, registered earlier, runs)
        atexit.register(_wait_at_exit, weakref.ref(self), os.getpid())

    def _run(self) -> None:
        try:
            write_missing_files(self)
        except _Stopped:
            pass
        except Exception:  # the journal closed under it (the process exits), a bug
            if not self.stopped:
                logger.exception("the files left unwritten by a dead process: not all written")
        finally:
            self.done.set()

    def stop(self) -> None:
        """Write no more files (the engine stops before they are all written): the
        journal's row of this writing stays (:mod:`dahu.journal.pending`), and the next
        start writes the rest; neither the thread nor the process's exit waits."""
        self.stopped = True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the thread is done; True if it is."""
        return self.done.wait(timeout)

    def ensure(self, job_id: int) -> None:
        """Write now the files of job ``job_id`` if the thread may still have to, and
        they are not whole: a client asking for them does not wait for the thread."""
        if self.done.is_set():
            return
        record = self.engine.journal.get(job_id)
        if record is None or record.state not in State.FINAL:
            return
        with self.lock:
            if job_id not in self.ensured:
                stem = job_file_stem(self.engine.workdir, job_id, record.plugin)
                if not (_whole(stem + ".inp") and _whole(stem + ".out")):
                    self._write(record)
                    self._confirm()
                self.ensured.add(job_id)

    def write(self, record: Any) -> bool:
        """Write the files of ``record``, unless :meth:`ensure` saw to them."""
        with self.lock:
            if self.stopped:
                raise _Stopped
            self._look_at_room()
            written = record.id not in self.ensured and self._write(record)
            if len(self.fresh) >= WINDOW:
                self._confirm()
            return written

    def _look_at_room(self) -> None:
        """Every :data:`ROOM_EVERY` jobs: if the disk has less room than :data:`KEEP_FREE`,
        stop (the journal's own writes come first: these files would take the room made
        on a full disk at once), once, saying so; the next start writes the rest."""
        self.until_look -= 1
        if self.until_look > 0:
            return
        self.until_look = ROOM_EVERY
        try:
            usage = shutil.disk_usage(self.engine.workdir)
        except OSError:  # (the directory removed: the write says why)
            return
        keep = min(KEEP_FREE, usage.total // 20)
        if usage.free < keep:
            self.stopped = True  # its row stays in the journal: the next start goes on
            logger.warning(
                "the disk of %s has %d bytes free, less than the %d kept for the journal: "
                "the .inp/.out files a dead process left unwritten are left to the next start "
                "(%d job(s) got theirs; cleanJob writes a job's)",
                *(self.engine.workdir, usage.free, keep, self.written),
            )
            raise _Stopped

    def confirm(self) -> None:
        """Remove the files just written of jobs whose record is gone since: a prune in
        another process (``dahu-jobs prune``) removes a job's files, then its record,
        then its files again; those written in between go at one step or the other."""
        with self.lock:
            self._confirm()

    def _confirm(self) -> None:
        fresh, self.fresh = self.fresh, []
        if not fresh:
            return
        ids, journal = sorted(job_id for job_id, _ in fresh), self.engine.journal
        if ids[-1] - ids[0] < 4 * len(ids) + WINDOW:  # close together: read at once
            kept = {r.id for r in journal.select(ids[0], ids[-1], data=False)}
        else:  # (a job interrupted after days, far below its queue)
            kept = {i for i in ids if journal.get(i, data=False) is not None}
        for job_id, plugin in fresh:
            if job_id not in kept:
                stem = job_file_stem(self.engine.workdir, job_id, plugin)
                for ext in (".inp", ".out"):
                    with contextlib.suppress(OSError):
                        os.unlink(stem + ext)

    def _write(self, record: Any) -> bool:
        """Write the ``.inp``/``.out`` files of the job of ``record``; False if they
        cannot be (the first refusal is logged, the next ones counted: a full disk)."""
        damaged = sorted(set(record.unreadable) & {"input", "output"})
        if damaged:  # no file from what the journal no longer holds
            reason = " and ".join(damaged)
            logger.warning(
                "job %d: its %s in the journal is unreadable: no files", record.id, reason
            )
            return False
        output = record.output
        if output is None:  # closed without an outcome: the error is what is known
            output = {"error": (record.error or "").splitlines()}
        engine = self.engine
        try:
            row = processes.row_of(engine.journal)
            write_job_files(
                engine.workdir, record.id, record.plugin, record.input, output, True, row
            )
            self.fresh.append((record.id, record.plugin))
            return True
        except Exception as err:  # the disk, or plugin data no JSON text can hold
            engine.files_failed += 1
            self.refused += 1
            if self.refused == 1:
                logger.error(
                    "job %d: cannot write its .inp/.out files: %s (the next ones refused "
                    "at this start are counted, not logged each)",
                    record.id,
                    one_line(str(err)),
                )
            return False


class _Owners(dict):
    """``(host, pid, row in processes)`` -> whether its process runs (asked once each), with what the
    journal knows of the processes (:mod:`dahu.journal.processes`)."""

    def __init__(self, known: Any):
        super().__init__()
        self.known = known


class _Stopped(Exception):
    """The engine stopped the writing (:meth:`Recovery.stop`)."""


def _wait_at_exit(ref: weakref.ref, pid: int) -> None:
    recovery = ref()
    if recovery is not None and pid == os.getpid():  # (a forked child has no such thread)
        if not recovery.stopped and not recovery.wait(EXIT_WAIT):
            recovery.stop()  # its row stays in the journal: the next start goes on
            logger.warning(
                "exiting after %g s: %d job(s) got the .inp/.out files a dead process left "
                "unwritten, the next start writes the rest",
                *(EXIT_WAIT, recovery.written),
            )


def write_missing_files(recovery: Recovery) -> int:
    """Write the missing files of the latest ended jobs of the engine's journal, ids up
    to ``recovery.top``, and of the ``recovery.interrupted`` ones (closed at this
    start); return how many jobs got files (counted in ``recovery.written`` as they do)."""
    engine, write, top = recovery.engine, recovery.write, recovery.top
    journal = engine.journal
    mark = pending.begin(journal, top)  # until done: a kill meanwhile, the next start
    cut_short = pending.left_by_dead(journal)  # looks at all we may not have written
    closed = set(recovery.interrupted)
    written = 0
    for job_id in sorted(closed):  # the interrupted ones never had files, however many
        record = journal.get(job_id)
        if record is not None and write(record):
            written += 1
            recovery.written = written
    # a journal in memory (tests) knows no processes: the files are this process's
    read = getattr(journal, "_read", None)
    known = processes.Known([], None, {}) if read is None else processes.known(read, journal.path)
    alive = _Owners(known)
    present, since = 0, None  # since: once 50 in a row have files, the end of the 50th
    floor = max(0, top - REACH)
    # first the ids of the queue cut short and a window below: the jobs that ended last
    # were submitted among them (a startJobs queues its jobs while other clients' come)
    first = max(1, floor + 1, min(closed, default=top + 1) - WINDOW)
    while top > floor:  # the latest ends, window by window
        records = [r for r in journal.select(first, top, data=False) if r.state in State.FINAL]
        ended = [r for r in records if r.id not in closed]  # not the queue cut short
        if since is not None:  # only the jobs that ended after those 50 may lack files
            ended = [r for r in ended if (r.ended or 0.0) > since]
            if not ended:
                break  # none here: the older ids ended before, with their files
        # the newest id first among equal ends: the jobs a start closed as interrupted
        # (one end time) get their files in the order of their ids; a kill (or a full
        # disk) in the middle left the last ones without
        ended.sort(key=lambda r: (r.ended or 0.0, r.id), reverse=True)
        more, present, looked, settled = _write_missing(engine, ended, alive, present, since, write)
        written += more
        recovery.written = written
        if since is None and settled is None and not looked and len(ended) == len(records):
            break  # only live processes ended jobs here: they write their files
        since = settled if since is None else since
        top = first - 1
        first = max(1, top - WINDOW + 1)
    else:  # REACH ids looked at, files missing all along: a start's interrupted ones?
        if since is None and floor > 0:
            written += _beyond_reach(recovery, floor, alive)
    for last in sorted({start.top for start in cut_short}):  # starts killed while writing
        written += _look_at_all(recovery, last, alive)
        _remove_parts(engine.workdir, last, alive.known)
    recovery.confirm()
    if not recovery.refused:  # (refused: the next start tries again)
        pending.end(journal, [mark, *(start.rowid for start in cut_short)])
    if written:
        logger.warning(
            "%d job(s) ended without their .inp/.out files (their process ended before it "
            "wrote them: killed, or a script that did not clean() them): written now",
            written,
        )
    if recovery.refused > 1:  # the first one was logged with its reason
        logger.error(
            "%d job(s) left by a dead process got no .inp/.out files: the disk refused them",
            recovery.refused,
        )
    return written


def _remove_parts(workdir: str, top: int, known: Any) -> None:
    """Remove the ``.part`` files that a start killed as it wrote the files left unwritten
    up to id ``top`` left in the directories of the :data:`REACH` ids it looked at."""
    removed = sum(
        remove_dead_parts(job_file_dir(workdir, number * 1000), known)
        for number in range(max(0, top - REACH) // 1000, top // 1000 + 1)
    )
    if removed:
        logger.info("%d .part file(s) of a process killed as it wrote them: removed", removed)


def _look_at_all(recovery: Recovery, top: int, alive: _Owners) -> int:
    """A start killed while it wrote the files left unwritten up to id ``top``: every
    ended job of a dead process of the :data:`REACH` ids up to ``top`` gets those it
    lacks (what that start wrote first tells nothing of the rest), and the rest of the
    jobs it closed (:func:`_beyond_reach`); return how many jobs got files."""
    journal, floor, written = recovery.engine.journal, max(0, top - REACH), 0
    while top > floor:
        first = max(1, floor + 1, top - WINDOW + 1)
        ended = [r for r in journal.select(first, top, data=False) if r.state in State.FINAL]
        more = _write_missing(recovery.engine, ended, alive, 0, 0.0, recovery.write)[0]
        written += more
        recovery.written += more
        top = first - 1
    return written + (_beyond_reach(recovery, floor, alive) if floor > 0 else 0)


def _beyond_reach(recovery: Recovery, floor: int, alive: _Owners) -> int:
    """The jobs a start closed as interrupted share one end and got their files in the
    order of their ids: a kill in the middle of more than :data:`REACH` of them left
    the oldest without files below ``floor``.  Those of the closings just above it get
    theirs, window by window down, while a window holds some without; return how many."""
    engine, journal = recovery.engine, recovery.engine.journal
    above = journal.select(floor + 1, floor + WINDOW, data=False)
    ends = {r.ended for r in above if r.state == State.FAILURE and r.error == INTERRUPTED}
    written, top = 0, floor
    while ends and top > 0:
        first = max(1, top - WINDOW + 1)
        closed = [
            r
            for r in journal.select(first, top, data=False)
            if r.state == State.FAILURE and r.error == INTERRUPTED and r.ended in ends
        ]
        more = _write_missing(engine, closed, alive, 0, 0.0, recovery.write)[0]
        if not more:
            break  # (those below got theirs before these)
        written += more
        recovery.written += more
        top = first - 1
    return written


def _write_missing(
    engine: Any,
    records: list[Any],
    alive: _Owners,
    present: int,
    since: float | None,
    write: Any,
) -> tuple[int, int, int, float | None]:
    """Write the files that ``records`` (newest end first) of dead processes lack; until
    :data:`SETTLED` jobs in a row (``present`` so far) have theirs, unless ``since`` is
    known already.  Return how many jobs got files, the jobs in a row that have them, the
    jobs looked at, and the end of the last of :data:`SETTLED` in a row (None: not yet)."""
    written = looked = 0
    for record in records:
        owner = (record.host, record.pid, record.process)
        if owner not in alive:  # newest record first: a pid used again since is told apart
            alive[owner] = process_alive(
                record.host, record.pid, record.submitted, None, alive.known, record.process
            )
        if alive[owner]:
            continue  # its process writes its files (they may be queued there now)
        looked += 1
        stem = job_file_stem(engine.workdir, record.id, record.plugin)
        if _whole(stem + ".inp") and _whole(stem + ".out"):
            present += 1
            if present >= SETTLED and since is None:
                return written, present, looked, record.ended or 0.0
            continue
        present = 0
        whole = next(iter(engine.journal.select(record.id, record.id)), None)  # with its data
        written += write(whole or record)  # (select: a damaged field is named)
    return written, present, looked, None


def _whole(path: str) -> bool:
    """Whether the job file ``path`` is there and whole: a kill between its creation and
    its write (or in the middle of a long one) left it empty, or cut short."""
    try:
        with open(path, "rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) in (b"}", b"]")  # the end of a JSON object or list
    except OSError:  # none, or empty (no byte before its end)
        return False
