"""How an engine stops (:meth:`~dahu.engine.core.Engine.shutdown`): no job starts from
the moment the stop begins, so that every job it waits for is known to it and every
outcome is recorded before the journal closes."""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from typing import Any

from ..executors.runner import Outcome
from ..states import State
from .lifecycle import SHUTDOWN_REASON
from .refusals import tell_refused

logger = logging.getLogger(__name__)

__all__ = ["shut_down", "close", "CLOSING", "wait_at_exit"]

CLOSING = "the engine is closing"


FOREVER = 1e9
"""Seconds that stand for no bound (``inf``, ``1e10``: they overflow the system's timers)."""


def shut_down(engine: Any, abort: bool, timeout: float, since: float | None) -> bool:
    """See :meth:`~dahu.engine.core.Engine.shutdown`."""
    timeout = min(timeout, FOREVER)
    deadline = (time.monotonic() if since is None else since) + timeout
    cycle = engine.cycle
    if not abort:  # let finish: also the jobs they start meanwhile, until none is left
        while (live := engine.live()) and time.monotonic() < deadline:
            for run in live:
                run.done.wait(max(0.0, deadline - time.monotonic()))
    with cycle.lock:  # from here on a Job.start is refused (its job ends aborted)
        cycle.refusing = SHUTDOWN_REASON
        if abort and cycle.halted is None:
            cycle.halted = SHUTDOWN_REASON  # a queued job a slot takes now: aborted
        # a job still running at the deadline is recorded below, not abandoned meanwhile
        cycle.stop_deadline = min(cycle.stop_deadline, deadline)
    runs = engine.live()  # all of them: none can start any more
    if abort and (aborted := engine.abort_all(runs, SHUTDOWN_REASON)):
        logger.info("shutting down: %d job(s) aborted", aborted)
    for run in runs:
        run.done.wait(max(0.0, deadline - time.monotonic()))
    unfinished = [run.id for run in runs if run.state not in State.FINAL]
    if unfinished:
        logger.error("shutting down with %d job(s) still running: %s", len(unfinished), unfinished)
    for run in runs:  # recorded now: once the process ends nobody else would
        if run.state not in State.FINAL:
            reason = run.abort_reason or "the server stopped"
            note = f"{reason} (the plugin had not stopped after {timeout:g} s)"
            cycle.finish(run, Outcome(State.ABORTED, {}, note, run.started, time.time()))
    with cycle.stop_lock:  # a start refused from now on leaves the journal alone
        cycle.journal_closing = True
    engine._closed = True
    engine.executor.shutdown(wait=False)
    engine.journal.flush()  # the outcomes queued are committed and reported
    cleaner = engine._cleaner
    if cleaner is not None:
        engine._to_clean.put(None)
        cleaner.join(max(1.0, deadline - time.monotonic()))
    _files_of_the_dead(engine, deadline, timeout)
    tell_refused(engine)
    lost = _last_retry(engine)
    engine.journal.close()
    return not unfinished and not lost


def _files_of_the_dead(engine: Any, deadline: float, timeout: float) -> None:
    """Wait until ``deadline`` at most for the files a dead process left unwritten
    (:mod:`.recovery`); past it, leave the rest to the next start and say so."""
    if not engine.wait_recovered(0):  # the files a dead process left: all written first
        logger.info(
            "stopping: the .inp/.out files a dead process left unwritten are written first "
            "(%d so far; a kill now leaves the rest to the next start)",
            engine.recovered,
        )
    if not engine.wait_recovered(max(0.0, deadline - time.monotonic())):
        engine.recovery.stop()  # its row stays in the journal: the next start goes on
        logger.warning(
            "stopping after %g s: %d job(s) got the .inp/.out files a dead process left "
            "unwritten, the next start writes the rest",
            *(timeout, engine.recovered),
        )


def close(engine: Any, timeout: float | None) -> int:
    """See :meth:`~dahu.engine.core.Engine.close`."""
    timeout = FOREVER if timeout is None else min(timeout, FOREVER)
    cycle = engine.cycle
    engine._closed = True
    with cycle.lock:  # a job starting from now on ends aborted, not "cannot queue the job"
        if cycle.refusing is None:
            cycle.refusing = CLOSING
    engine.executor.shutdown(wait=True)
    engine.journal.flush()  # the outcomes queued are committed and reported
    engine.flush_files()
    _files_of_the_dead(engine, time.monotonic() + timeout, timeout)
    tell_refused(engine)
    lost = _last_retry(engine)
    with cycle.stop_lock:  # a start refused from now on leaves the journal alone
        cycle.journal_closing = True
    engine.journal.close()
    return lost


def _last_retry(engine: Any) -> int:
    """Before the journal closes: retry it if at fault; return how many outcomes it
    still refuses (lost, logged)."""
    if engine.journal_fault is None or engine.retry_journal():
        return 0
    lost = len(engine.table.unrecorded())
    if lost:
        logger.error(
            "%d job outcome(s) the journal refused are lost: those jobs will read "
            "failed (interrupted) at the next start",
            lost,
        )
    return lost


def wait_at_exit(engine: Any) -> None:
    """At the exit of a process that did not stop ``engine`` (a script that started jobs
    and did not join them), wait for the jobs it started to end, as the original's job
    threads made Python wait (registered after the journal's own atexit close, so run
    before it: their outcomes are recorded)."""
    atexit.register(_jobs_at_exit, weakref.ref(engine), os.getpid())


def _jobs_at_exit(ref: weakref.ref, pid: int) -> None:
    engine = ref()
    if engine is None or engine._closed or pid != os.getpid():  # (a forked child: not its)
        return
    started = _started(engine)
    if started:
        logger.info("exiting: waiting for %d job(s) started to end", len(started))
    try:
        while started:  # (and the jobs they start meanwhile: until none is left)
            for run in started:
                while not run.done.wait(0.5) and not run.abort_reason:  # (a Ctrl-C heard)
                    if getattr(engine.executor, "_shutdown", False):
                        return  # its executor was stopped (not the engine): none ends now
            started = _started(engine)
    except KeyboardInterrupt:  # the rest: recorded failed (interrupted) by the next start
        logger.warning("exiting without waiting for %d job(s): interrupted", len(started))


def _started(engine: Any) -> list:
    """The jobs of ``engine`` started and not ended, but those told to abort (a plugin
    that ignores it: ``dahu-reprocess`` gave up on them, and so does the exit)."""
    return [r for r in engine.live() if r.state != State.UNINITIALIZED and not r.abort_reason]
