"""Where plugin code runs.

:class:`ThreadExecutor` (the default) runs jobs in the server process on a bounded pool
of worker threads: at most ``max_workers`` jobs hold a *slot* at once (one when
``serialize`` is true); more jobs wait in a FIFO queue.  A job that waits for another
job (``Plugin.wait_for``) gives its slot back while it waits, so jobs waiting for each
other can never take every slot and deadlock.  Threads are started on demand and end
after a while without work.  A plugin that ignores an abort for ``abort_grace`` seconds
is abandoned: its job ends ``aborted`` and its slot goes to another thread (a thread
cannot be killed; use the ``process`` executor for plugins that may hang).

An executor runs objects with a ``run()`` method that never raises (``dahu.job.Job``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .runner import Execution

logger = logging.getLogger(__name__)

__all__ = ["Executor", "ThreadExecutor", "Watchdog", "default_workers", "make_executor"]


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

    def execution(
        self, plugin_name: str, input_data: dict, job_id: int, engine: Any, on_plugin: Any
    ) -> Any:
        """The object that runs one job here: ``run() -> Outcome``, ``abort(reason)``."""

    def cancel(self, job: Any) -> bool:
        """Take a queued job off the queue and finish it as aborted."""

    def waiting(self) -> contextlib.AbstractContextManager:
        """A context manager entered while a running job waits for another job."""

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "waiting": n}``."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, return when the queued jobs have run."""


class ThreadExecutor:
    """A bounded pool of worker threads in this process (see the module doc)."""

    name = "thread"
    abandons_hung_jobs = True  # a thread cannot be killed: give its slot away instead

    def __init__(
        self, max_workers: int | None = None, idle_timeout: float = 30.0, abort_grace: float = 5.0
    ):
        self.max_workers = max(1, int(max_workers or default_workers()))
        self.idle_timeout = idle_timeout
        self.abort_grace = abort_grace
        self._abandoned: set[int] = set()
        self._serialize = False
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # idle threads wait here
        self._slot_free = threading.Condition(lock)  # waiters reclaiming their slot, here
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
            self._wake()  # slots freed: start the queued jobs now
            self._slot_free.notify_all()
            self._cond.notify_all()

    @property
    def limit(self) -> int:
        """How many jobs may hold a slot now."""
        return 1 if self._serialize else self.max_workers

    def execution(
        self,
        plugin_name: str,
        input_data: dict,
        job_id: int,
        engine: Any,
        on_plugin: Callable[[float | None], Any] | None = None,
    ) -> Execution:
        """An in-process :class:`~dahu.runner.Execution` (shares ``DataCache``)."""
        return Execution(
            plugin_name,
            input_data,
            job_id,
            factory=engine.factory,
            waiting=self.waiting,
            profile_dir=engine.workdir,
            on_plugin=on_plugin,
        )

    def cancel(self, job: Any) -> bool:
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False  # a worker took it: it will see the abort
        job.run()  # finishes at once as aborted
        return True

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
            self._cond.notify(min(self._idle, len(self._queue)))
        # one more thread per queued job that no idle thread will take, up to the limit
        while len(self._queue) > self._idle and self._running + self._idle < self.limit:
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
                    if threading.get_ident() in self._abandoned:
                        # its slot was given away when the job was abandoned: just end
                        self._abandoned.discard(threading.get_ident())
                        return
                    self._running -= 1
                    if self._reclaiming:
                        self._slot_free.notify_all()
                    if not self._queue and not self._running:
                        self._cond.notify_all()  # for shutdown(wait=True)
                    continue
                if self._shutdown and not self._queue:
                    break
                if self._threads - self._waiting > self.limit:
                    break  # a surplus thread started while others waited: not kept
                self._idle += 1
                woken = self._cond.wait(self.idle_timeout)
                self._idle -= 1
                if not woken and not self._queue:
                    break
            self._threads -= 1
            self._cond.notify_all()
        self._thread_exit()

    def _thread_exit(self) -> None:
        """Called by a pool thread that ends (subclasses free what it owned)."""

    def abandon(self, thread_ident: int) -> bool:
        """Give up on the job running in thread ``thread_ident`` (it ignored an abort).

        Its slot is freed and another thread takes over; the thread itself cannot be
        killed and ends when (if ever) the plugin returns.  Returns False if that thread
        was already abandoned.
        """
        with self._cond:
            if thread_ident in self._abandoned:
                return False
            self._abandoned.add(thread_ident)
            self._running -= 1
            self._threads -= 1
            self._wake()
            self._slot_free.notify_all()
            self._cond.notify_all()
        logger.error("a plugin ignored its abort: its thread %s is abandoned", thread_ident)
        return True

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Give the caller's slot back while it waits for another job; take it back after."""
        with self._cond:
            self._running -= 1
            self._waiting += 1
            self._wake()
            self._slot_free.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._waiting -= 1
                self._reclaiming += 1
                while self._running >= self.limit:
                    self._slot_free.wait()
                self._reclaiming -= 1
                self._running += 1
                self._wake()  # the queue may have waited for the reclaimers

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


class Watchdog:
    """Calls functions after a delay, from one thread (job timeouts, abort grace periods).

    Cancelled calls are dropped lazily; the heap is rebuilt when they dominate it, so a
    server with a default timeout on every job keeps a bounded heap.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []
        self._counter = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, function: Callable[[], Any]) -> list[Any]:
        """Call ``function()`` in ``delay`` seconds; return a handle for :meth:`cancel`."""
        entry = [time.monotonic() + delay, next(self._counter), function]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="dahu-watchdog", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:  # due before all others: the thread must wake sooner
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """Forget a call that has not happened yet."""
        with self._cond:
            if entry[2] is not None:
                entry[2] = None
                self._cancelled += 1
                if self._cancelled > 64 and self._cancelled > len(self._heap) // 2:
                    self._heap = [e for e in self._heap if e[2] is not None]
                    heapq.heapify(self._heap)
                    self._cancelled = 0

    def pending(self) -> int:
        """How many calls are still to come."""
        with self._cond:
            return sum(1 for e in self._heap if e[2] is not None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    delay = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(delay)
                entry = heapq.heappop(self._heap)
                function, entry[2] = entry[2], None
                if function is None:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
            try:
                function()
            except Exception:
                logger.exception("watchdog call %r failed", function)


def make_executor(kind: str = "thread", max_workers: int | None = None, **options: Any) -> Any:
    """Make the executor named ``kind``: ``thread``, ``process`` or ``dask``.

    ``options`` go to its constructor (see :mod:`dahu.process_executor` and
    :mod:`dahu.dask_executor`).
    """
    if kind == "thread":
        return ThreadExecutor(max_workers, **options)
    if kind == "process":
        from .process_executor import ProcessExecutor

        return ProcessExecutor(max_workers, **options)
    if kind == "dask":
        from .dask_executor import DaskExecutor

        return DaskExecutor(max_workers, **options)
    raise ValueError(f"unknown executor {kind!r}: expected thread, process or dask")
