"""While an engine runs: the jobs that another process of this host left unfinished in
its journal when it died (a second server on the work directory, a ``dahu-reprocess``
or a script writing the server's journal, killed with ``kill -9``).

A start closes such jobs (:meth:`~dahu.journal.Journal.mark_interrupted`); a live
process has to notice the death itself, or its clients wait on those jobs for good
(``waitJob`` answers ``running``).  Every :data:`CHECK_EVERY` seconds the engine's
watchdog reads which processes of this host have unfinished jobs in the journal (in the
state index: nothing is added to a job's path; less often when that takes long); if one
of them is gone, its jobs are closed as ``failure``, their error ``interrupted: its
process, pid N on HOST, died``, and their ``.inp``/``.out`` files written by the
start's recovery (:class:`~.recovery.Recovery`), with those of the jobs it ended
without files: once the start's own is done (their closing does not wait for it)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import DahuError, one_line
from ..journal import SQLiteJournal, processes
from ..journal.sqlite import process_alive
from ..journal.sqlitefile import close_dead, unfinished_owners
from .recovery import Recovery

logger = logging.getLogger(__name__)

__all__ = ["CHECK_EVERY", "recover_and_watch", "watch_dead"]

CHECK_EVERY = 2.0
"""Seconds between two looks for the unfinished jobs of a process that died."""


def recover_and_watch(engine: Any) -> Recovery:
    """At the engine's start: write the files the dead processes left unwritten (a
    :class:`~.recovery.Recovery` of the jobs it closed), :func:`watch_dead`, and check
    the journal's files twice a second (the sweep of
    :meth:`~dahu.engine.core.Engine.watch_running`) from now on, not from its first job:
    its file or its lock file removed meanwhile is seen at once."""
    watch_dead(engine)
    engine.watch_running()
    return Recovery(engine, engine.interrupted, engine.first_id - 1)


def watch_dead(engine: Any) -> None:
    """Have the engine's watchdog look every :data:`CHECK_EVERY` s for the unfinished
    jobs of a dead process of this host in the engine's journal, and close them."""
    if not isinstance(engine.journal, SQLiteJournal):  # nothing outlives the process
        return

    refused = [""]  # the journal's last refusal to close them (logged once)

    def check() -> None:
        if engine._closed:
            return
        begun = time.monotonic()
        try:
            owners = unfinished_owners(engine.journal)
            dead = [] if not owners else _dead(engine.journal, owners)
        except DahuError as err:  # the journal cannot be read now: the next look
            logger.debug("dead processes: not looked for: %s", err)
            dead = []
        except Exception:  # a bug must not end the looks
            logger.exception("dead processes: the look failed")
            dead = []
        if dead:
            engine.watchdog.call_later(0.0, lambda: close(engine, dead), own_thread=True)
        else:  # 100,000 jobs of its own queued: 70 ms a look, at most 2% of the time
            later = max(CHECK_EVERY, 50 * (time.monotonic() - begun))
            engine.watchdog.call_later(later, check)

    def close(engine: Any, dead: list[tuple[str, int]]) -> None:
        """In a thread of its own (the journal's lock may make it wait): close the jobs
        of the processes ``dead``, have their files written, then look again later."""
        if engine._closed:
            return
        try:
            journal = engine.journal
            with journal.transaction() as db:
                closed, _ = close_dead(db, journal.path, named=True)
            refused[0] = ""
            if closed:
                names = ", ".join(f"pid {pid} on {host}" for host, pid in dead)
                logger.warning(
                    "journal %s: %d unfinished job(s) of a process that died (%s) "
                    "closed as failed: interrupted",
                    *(journal.path, len(closed), names),
                )
                earlier = engine.recovery  # (the start's, under way: one at a time)
                if earlier is not None:
                    earlier.wait()
                if not engine._closed:  # (else the next start writes their files)
                    engine.recovery = Recovery(engine, closed, journal.last_id())
        except Exception as err:  # the journal refused (a full disk): the next look tries
            text = one_line(str(err) or type(err).__name__)
            if text != refused[0]:  # (a full disk: once, not every look)
                logger.error("the jobs of a dead process: not closed: %s", text)
            refused[0] = text
        finally:
            if not engine._closed:
                engine.watchdog.call_later(CHECK_EVERY, check)

    engine.watchdog.call_later(CHECK_EVERY, check)


def _dead(journal: Any, owners: list[tuple]) -> list[tuple[str, int]]:
    """The ``(host, pid)`` of ``owners`` (with the oldest submission of each) whose
    process is gone, as far as the journal's :mod:`~dahu.journal.processes` tell too
    (a pid of several processes, in several namespaces: each of its own jobs)."""
    known = processes.known(journal._read, journal.path)
    dead = []
    for host, pid, since in owners:
        each = [(host, pid, since, None)]
        if len(known.rows.get(pid, ())) > 1:
            each = unfinished_owners(journal, pid)
        if any(not process_alive(*owner[:3], None, known, owner[3]) for owner in each):
            dead.append((host, pid))
    return dead
