"""Where plugin code runs.

:class:`ThreadExecutor` (the default) runs jobs in the server process on a bounded pool
of worker threads: at most ``max_workers`` jobs hold a *slot* at once (one when
``serialize`` is true); more jobs wait in a FIFO queue.  A job that waits for another
job (``Plugin.wait_for``) gives its slot back while it waits, so jobs waiting for each
other can never take every slot and deadlock.  Threads are started on demand and end
after a while without work.

An executor runs objects with a ``run()`` method that never raises (``dahu.job.Job``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

logger = logging.getLogger(__name__)

__all__ = ["Executor", "ThreadExecutor", "default_workers"]


def default_workers() -> int:
    """The default number of job slots: the number of CPUs."""
    return max(1, os.cpu_count() or 1)


class Executor(Protocol):
    """What the engine needs from an executor."""

    name: str
    max_workers: int
    serialize: bool

    def submit(self, job: Any) -> None:
        """Queue ``job``; its ``run()`` is called when a slot is free."""

    def waiting(self) -> contextlib.AbstractContextManager:
        """A context manager entered while a running job waits for another job."""

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "waiting": n}``."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, return when the queued jobs have run."""


class ThreadExecutor:
    """A bounded pool of worker threads in this process (see the module doc)."""

    name = "thread"

    def __init__(self, max_workers: int | None = None, idle_timeout: float = 30.0):
        self.max_workers = max(1, int(max_workers or default_workers()))
        self.idle_timeout = idle_timeout
        self._serialize = False
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Any] = deque()
        self._running = 0  # jobs holding a slot
        self._waiting = 0  # jobs that gave their slot back while waiting for another
        self._reclaiming = 0  # waiters that want their slot back: served first
        self._idle = 0
        self._threads = 0
        self._shutdown = False

    @property
    def serialize(self) -> bool:
        """When true, jobs run one at a time."""
        return self._serialize

    @serialize.setter
    def serialize(self, value: bool) -> None:
        with self._cond:
            self._serialize = bool(value)
            self._cond.notify_all()

    @property
    def limit(self) -> int:
        """How many jobs may hold a slot now."""
        return 1 if self._serialize else self.max_workers

    def submit(self, job: Any) -> None:
        with self._cond:
            if self._shutdown:
                raise RuntimeError("the executor is shut down")
            self._queue.append(job)
            self._wake()

    def _wake(self) -> None:
        """Make sure a thread will take the queue's head if a slot is free (lock held)."""
        if not self._queue or self._running + self._reclaiming >= self.limit:
            return
        if self._idle:
            self._cond.notify()
        if len(self._queue) > self._idle and self._running + self._idle < self.limit:
            self._threads += 1
            self._idle += 1  # counted as idle until it takes a job
            threading.Thread(target=self._worker, name="dahu-worker", daemon=True).start()

    def _worker(self) -> None:
        with self._cond:
            self._idle -= 1
            while True:
                if self._queue and self._running + self._reclaiming < self.limit:
                    job = self._queue.popleft()
                    self._running += 1
                    self._cond.release()
                    try:
                        job.run()
                    except Exception:
                        logger.exception("job %s: unexpected error in the executor", job)
                    finally:
                        job = None  # a finished job must not outlive its run here
                        self._cond.acquire()
                        self._running -= 1
                        if self._reclaiming or (not self._queue and not self._running):
                            self._cond.notify_all()
                    continue
                if self._shutdown and not self._queue:
                    break
                self._idle += 1
                woken = self._cond.wait(self.idle_timeout)
                self._idle -= 1
                if not woken and not self._queue:
                    break
            self._threads -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Give the caller's slot back while it waits for another job; take it back after."""
        with self._cond:
            self._running -= 1
            self._waiting += 1
            self._wake()
        try:
            yield
        finally:
            with self._cond:
                self._waiting -= 1
                self._reclaiming += 1
                while self._running >= self.limit:
                    self._cond.wait()
                self._reclaiming -= 1
                self._running += 1

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {"queued": len(self._queue), "running": self._running, "waiting": self._waiting}

    def drain(self) -> list[Any]:
        """Remove and return the jobs still queued."""
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            return jobs

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            if wait:
                self._cond.wait_for(
                    lambda: not self._queue and not self._running and not self._waiting, timeout
                )
