"""Aborting a job that another process runs: a second server on the work directory, or
a worker process whose plugin made the job (``process`` and ``dask`` executors).

The asker writes a request in the journal (:mod:`dahu.journal.aborts`) and waits, at
most :data:`ANSWER_WAIT` seconds, for the engine that runs the job to take it: each
engine reads the requests in the sweep it makes every
:data:`~dahu.engine.lifecycle.NOTE_RUNNING_AFTER` seconds while it has jobs, marks
those of its jobs taken, aborts them (as a local ``abort`` does) and answers.  Until 2026-11-30 such an
abort answered False and the job ran on."""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from ..errors import JournalError, one_line
from ..journal import aborts
from ..states import State

logger = logging.getLogger(__name__)

__all__ = ["ANSWER_WAIT", "TAKEN_WAIT", "abort_elsewhere", "take_asked"]

ANSWER_WAIT = 1.5
"""Seconds an abort of another process's job waits at most for that process to take it
(its engine looks every 0.5 s; a device's client waits 3 s for a command)."""

TAKEN_WAIT = 1.2
"""Seconds more it waits for the answer of a process that took it (a plugin's
``abort()`` is waited for 1 s at most)."""


def abort_elsewhere(journal: Any, job_id: int, reason: str) -> bool:
    """Ask the process that runs ``job_id`` to abort it with ``reason``; True if it was
    queued or running there and is now stopping.  False if it ended, or if its process
    did not take the request within :data:`ANSWER_WAIT` s (dead, stopping, or a Dahu
    that does not read such requests): the request is withdrawn then (atomically: a
    request taken is carried out, one withdrawn never), the job runs on."""
    try:
        rowid = aborts.ask(journal, job_id, reason)
        if rowid is None:
            return False
        deadline = time.monotonic() + ANSWER_WAIT
        delay = 0.01
        while time.monotonic() < deadline:
            answer = aborts.answer_of(journal, rowid)
            if answer is not None:
                return answer
            if journal.state(job_id) in State.FINAL:  # (its process may end with it)
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        answer = aborts.withdraw(journal, rowid)
        taken = time.monotonic() + TAKEN_WAIT  # (taken: its plugin's abort() may take 1 s)
        while answer == aborts.TAKEN and time.monotonic() < taken:
            time.sleep(delay)
            answer = aborts.answer_of(journal, rowid)
            answer = aborts.TAKEN if answer is None else answer
        if answer == aborts.TAKEN:  # (its process gone since? the row goes in an hour)
            answer = True  # taken: it is being aborted there
    except (JournalError, sqlite3.Error) as err:
        logger.warning("job %s: cannot ask its process to abort it: %s", job_id, one_line(str(err)))
        return False
    if answer is None and time.monotonic() >= deadline:
        logger.warning(
            "job %s: its process did not take the abort within %g s: not aborted",
            *(job_id, ANSWER_WAIT),
        )
    return bool(answer)


def take_asked(engine: Any, live: list[Any]) -> None:
    """In the engine's sweep: abort the jobs of ``live`` (its jobs queued or running)
    that another process asked to abort, and answer each; in a thread of its own (the
    read may wait for the journal; a plugin's ``abort()`` may take a second): nothing
    holds up the watchdog, whose clocks time the jobs out."""
    if live:  # (none: no request can be for it)
        engine.watchdog.call_later(0.0, lambda: _take(engine), own_thread=True)


def _take(engine: Any) -> None:
    taking = engine.__dict__.setdefault("_aborts_taken", set())
    try:
        asked = aborts.asked(engine.journal)
    except Exception:  # a bug must not end the sweep
        logger.exception("the aborts asked by other processes: not read")
        return
    for rowid, job_id, reason in asked:
        run = engine.find(job_id)  # (None: another process's job, or one ended long ago)
        if run is None or run.from_journal or rowid in taking:  # (taken, still at it)
            continue
        taking.add(rowid)
        try:
            if not aborts.take(engine.journal, rowid):  # its asker gave up: not aborted
                taking.discard(rowid)
                continue
            stopping = engine.cycle.abort(run, reason)
            aborts.answer(engine.journal, rowid, stopping)
            taking.discard(rowid)  # (answered: no look sees it again)
        except Exception:  # (kept in ``taking``: not aborted twice)
            logger.exception("job %s: the abort asked by another process failed", job_id)
