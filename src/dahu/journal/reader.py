"""Reading other jobs' records without an engine: what a plugin's ``wait_for`` needs in a
worker process or a Dask task.

A :class:`JournalReader` opens the shared journal of a work directory for reading only
(it never creates one, nor closes anyone's jobs) and follows a job until it ends by
polling its state, with a growing delay.  A worker calls :func:`use_reader` once: the
class-level lookups of ``dahu.job.Job`` then answer from the shared journal instead of
making an engine in the worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import JournalError
from ..states import State
from .base import JobRecord, Journal

__all__ = ["JournalReader", "follow", "use_reader", "current_reader", "reading", "task_workdir"]

_current: JournalReader | None = None
_readers: dict[str, JournalReader] = {}  # by work directory, for :func:`reading`
_readers_lock = threading.Lock()
_task_reader: contextvars.ContextVar[JournalReader | None] = contextvars.ContextVar(
    "dahu_task_reader", default=None
)


def follow(journal: Journal, job_id: int, timeout: float | None = None) -> str:
    """Poll the state of ``job_id`` in ``journal`` until it is final or unknown, or
    ``timeout`` seconds passed; return the state then (``inexistant`` if unknown)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        state = journal.state(job_id) or State.INEXISTANT
        if state in State.FINAL or state == State.INEXISTANT:
            return state
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return state
        time.sleep(delay if remaining is None else min(delay, remaining))
        delay = min(delay * 2, 0.1)


class JournalReader:
    """Read-only access to the journal of ``workdir`` (opened on first use)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._journal: Journal | None = None
        self._lock = threading.Lock()

    @property
    def journal(self) -> Journal:
        """The journal, opened on first use (:class:`JournalError` if there is none)."""
        with self._lock:
            if self._journal is None:
                from .sqlite import SQLiteJournal

                self._journal = SQLiteJournal(self.workdir, create=False)
            return self._journal

    def state(self, job_id: int) -> str:
        """The recorded state of ``job_id`` (``inexistant`` if unknown or unreadable)."""
        try:
            return self.journal.state(job_id) or State.INEXISTANT
        except JournalError:
            return State.INEXISTANT

    def get(self, job_id: int) -> JobRecord | None:
        """The record of ``job_id``, or None."""
        try:
            return self.journal.get(job_id)
        except JournalError:
            return None

    def wait(self, job_id: int, timeout: float | None = None) -> str:
        """Wait (at most ``timeout`` s) until ``job_id`` ends; return its state then."""
        try:
            return follow(self.journal, job_id, timeout)
        except JournalError:
            return State.INEXISTANT

    def find(self, job_id: int) -> None:
        """No job lives in a reader's process: always None (as :meth:`Engine.find`)."""
        return None

    def last_id(self) -> int:
        """The id of the newest job recorded (0 if none)."""
        try:
            return self.journal.newest_id()
        except JournalError:
            return 0

    def close(self) -> Any:
        """Close the journal if it was opened."""
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


def use_reader(workdir: str) -> JournalReader:
    """Make the reader of ``workdir`` the one this process answers job lookups from."""
    global _current
    reader = _current
    if reader is None or reader.workdir != workdir:
        reader = _current = JournalReader(workdir)
    return reader


@contextlib.contextmanager
def reading(workdir: str) -> Iterator[JournalReader]:
    """Within it, the job lookups of this thread answer from the journal of ``workdir``,
    whatever the process's reader: a Dask task's, on a worker serving several servers
    (until 2026-11-30 a worker answered from the work directory of the last server new
    to it: a plugin's ``wait_for`` got the other server's job of that id, its output).
    A thread the plugin starts answers from the process's reader (:func:`use_reader`)."""
    with _readers_lock:
        reader = _readers.get(workdir)
        if reader is None:
            reader = _readers[workdir] = JournalReader(workdir)
    token = _task_reader.set(reader)
    try:
        yield reader
    finally:
        _task_reader.reset(token)


def current_reader() -> JournalReader | None:
    """The reader of this thread's :func:`reading`, else the one set by
    :func:`use_reader` (None in a process that holds an engine)."""
    return _task_reader.get() or _current


def task_workdir() -> str | None:
    """The work directory of this thread's :func:`reading` (a Dask task's server's), else
    None."""
    reader = _task_reader.get()
    return None if reader is None else reader.workdir
