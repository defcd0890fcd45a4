"""The interface between the engine and the executors (where plugin code runs).

The engine hands an executor one :class:`Task` per job; the executor runs it when it has
room and hands back an :class:`~dahu.executors.runner.Outcome`.  That is all an executor
knows of a job: it never sees a ``dahu.job.Job``, the journal or the job table.

For each task, an executor

1. calls ``task.begin(execution)`` when the job gets a slot, with the object that will
   run the plugin (``abort(reason)``, ``plugin``, ``in_process``; optionally
   ``time_left(limit)``: when the job's time of ``limit`` s seems up, the seconds more
   it gets, its plugin having begun later than the engine thinks).  ``False`` means the
   job was aborted while queued: the engine has ended it, the executor drops it;
2. calls ``task.plugin_loaded(job_timeout)`` once the plugin's ``JOB_TIMEOUT`` is known
   (the engine arms the job's clock), if it can learn it;
3. calls ``task.finish(outcome)`` exactly once with what the run produced.  The engine
   records the outcome, runs the callbacks and wakes the waiters.

:func:`execute` does the three steps for an execution that runs in the calling thread.
To add an executor, implement :class:`Executor` in a module of this package and name it
in :func:`dahu.executors.make_executor`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Protocol

from ..errors import error_line
from ..states import State
from .runner import Outcome

__all__ = ["Task", "Executor", "execute", "close_orphans"]

logger = logging.getLogger(__name__)


class Task(Protocol):
    """One job as an executor sees it (made by the engine's life cycle)."""

    job_id: int
    plugin_name: str
    input_data: dict[str, Any]
    abort_reason: str | None  # set once the engine aborts the job

    def begin(self, execution: Any) -> bool:
        """The job gets a slot and runs with ``execution``; False if it was aborted."""

    def plugin_loaded(self, job_timeout: float | None) -> None:
        """The plugin is instantiated; ``job_timeout`` is its ``JOB_TIMEOUT``."""

    def finish(self, outcome: Outcome) -> None:
        """The run ended with ``outcome`` (called once; never raises)."""


class Executor(Protocol):
    """What the engine needs from an executor.

    ``attach(host)`` is called once by the engine, with an object that has ``workdir``,
    ``factory`` (its ``directories`` are the plugin directories), ``watchdog`` and
    ``journal`` (only its ``mark_interrupted()``: the process executor closes the jobs
    made in a worker process that ended).
    ``isolates_plugins``: plugin code never runs in the engine's process (the server
    then checks plugin names without importing plugin modules).  ``abandons_hung_jobs``:
    a plugin that ignores its abort cannot be killed, the engine abandons it after
    ``abort_grace`` seconds (:meth:`abandon`).  An executor may also have
    ``aborting(task)``, which the engine calls when it aborts a running task (the pools
    of threads let a job back from waiting for another one end without a free slot).
    """

    name: str
    max_workers: int
    serialize: bool
    abort_grace: float
    abandons_hung_jobs: bool
    isolates_plugins: bool

    def attach(self, host: Any) -> None:
        """Learn the engine's work directory, factory and watchdog."""

    def submit(self, task: Task) -> None:
        """Queue ``task``; it begins when a slot is free."""

    def cancel(self, task: Task) -> bool:
        """Take a queued task off the queue (True), or False if it began already."""

    def abandon(self, task: Task) -> bool:
        """Give the slot of a task whose plugin ignores its abort to another job."""

    def waiting(self) -> contextlib.AbstractContextManager:
        """A context manager entered while a running job waits for another job."""

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "waiting": n}``."""

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs; with ``wait``, return when the queued jobs have run."""


def execute(task: Task, execution: Any) -> None:
    """Begin ``task``, run ``execution`` in this thread, finish the task; never raises."""
    if not task.begin(execution):
        return
    started = time.time()
    try:
        outcome = execution.run()
    except BaseException as err:  # Execution.run does not raise: an executor's bug
        outcome = Outcome(State.FAILURE, {}, f"executor error: {error_line(err)}", started)
        outcome.ended = time.time()
    task.finish(outcome)


def close_orphans(host: Any) -> None:
    """A process that ran plugins ended (a worker recycled, killed or dead): the jobs its
    plugins made (``Job(...)``), which ran in it, can end no more; their records are
    closed as ``interrupted`` (the journal's check of dead processes, as at a start)."""
    close = getattr(getattr(host, "journal", None), "mark_interrupted", None)
    if close is None:
        return
    try:
        close()
    except Exception as err:  # the journal says why in its own errors
        logger.warning("cannot close the jobs of an ended worker process: %s", err)
