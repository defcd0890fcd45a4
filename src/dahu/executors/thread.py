"""The ``thread`` executor: plugin code runs in the server process.

:class:`ThreadExecutor` (the default) runs jobs in the server process on a bounded pool
of worker threads: at most ``max_workers`` jobs hold a *slot* at once (one when
``serialize`` is true); more jobs wait in a FIFO queue.  A job that waits for another
job (``Plugin.wait_for``, ``Job.join``..., from its plugin or its callbacks) gives its
slot back while it waits, so jobs waiting for each other can never take every slot and
deadlock (see :mod:`.slot`).  Threads are started on demand and end
after a while without work.  A plugin that ignores an abort for ``abort_grace`` seconds
is abandoned: its job ends ``aborted`` and its slot goes to another thread.  A thread
cannot be killed: an abandoned plugin runs on (and keeps its CPU busy if it spins) until
it returns or the process ends; use the ``process`` executor for plugins that may hang.

It runs the :class:`~dahu.executors.base.Task` objects of the engine (see
:mod:`dahu.executors.base`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
import operator
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ExecutorError, error_line
from ..factory import plugin_factory
from ..properties import MAX_WORKERS
from ..states import State
from .base import Task, execute
from .runner import Execution, Outcome
from .slot import serving

logger = logging.getLogger(__name__)

__all__ = ["MAX_WORKERS", "ThreadExecutor", "default_workers", "option_number"]


def default_workers() -> int:
    """The default number of job slots: the number of CPUs."""
    return max(1, os.cpu_count() or 1)


def worker_count(value: Any) -> int:
    """The job slots ``max_workers`` asks for: None or 0 is the number of CPUs; a
    negative or fractional number, or not a number, is a ``ValueError`` (until
    2026-11-30 it was taken as 1, or rounded down, without a word), and so is one past
    :data:`MAX_WORKERS` (until 2026-11-30 taken)."""
    if value is None:
        return default_workers()
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4.0 from a configuration file
    try:
        whole = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        whole = None
    if whole is None or whole < 0:
        raise ValueError(
            f"max_workers must be a whole number of job slots, 0 (the number of CPUs) or "
            f"more, not {value!r}"
        )
    if whole > MAX_WORKERS:
        raise ValueError(f"max_workers must be at most {MAX_WORKERS} job slots, not {whole}")
    return whole or default_workers()


def option_number(
    name: str, value: Any, unit: str, never: str = "", whole: bool = False, most: float = math.inf
) -> Any:
    """``value`` of the option ``name`` (an executor's, ``default_timeout``): a number of
    ``unit`` from 0 to ``most`` (``whole``: a whole number; finite, unless ``never`` says
    what None, 0 or infinity mean), else a one-line ``ValueError`` naming it (until
    2026-11-30 text such as ``"5"`` was taken and failed later, or meant ``never``, as did
    a negative one)."""
    if never and value is None:
        return None
    kind = numbers.Integral if whole else numbers.Real
    if isinstance(value, kind) and not isinstance(value, bool):
        if 0 <= value <= most and (math.isfinite(value) or (never and not whole)):  # not NaN
            return value
    also = f" ({never})" if never else ""
    number = "a whole number" if whole else "a number"
    span = "0 or more" if most == math.inf else f"from 0 to {most:g}"
    raise ValueError(f"{name} must be {number} of {unit}, {span}{also}, not {value!r}")


def _aborted(task: Any) -> bool:
    """Whether the engine is aborting ``task`` (None: a thread that runs no task)."""
    return getattr(task, "abort_reason", None) is not None


class ThreadExecutor:
    """A bounded pool of worker threads in this process (see the module doc)."""

    name = "thread"
    _count = staticmethod(worker_count)  # the slots a max_workers gives
    abandons_hung_jobs = True  # a thread cannot be killed: give its slot away instead
    isolates_plugins = False

    def __init__(
        self, max_workers: int | None = None, idle_timeout: float = 30.0, abort_grace: float = 5.0
    ):
        self._max_workers = self._count(max_workers)
        # a wait of 1e10 s overflows the system's timers: the pool thread died
        self.idle_timeout = option_number("idle_timeout", idle_timeout, "seconds", most=86400)
        self.abort_grace = option_number("abort_grace", abort_grace, "seconds")
        self._abandoned: set[int] = set()
        self._threads_of: dict[int, int] = {}  # job id -> the pool thread running it
        self._tasks: dict[int, Task] = {}  # pool thread -> the task it runs
        # pool thread -> waits its job is in (its plugin's threads' too): slot given back
        self._waiters: dict[int, int] = {}
        self.host: Any = None
        self._serialize = False
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # idle threads wait here
        self._slot_free = threading.Condition(lock)  # waiters reclaiming their slot, here
        self._drained = threading.Condition(lock)  # shutdown(wait=True) waits here
        # queued tasks in order; a dict so that cancelling one (shutdown aborts thousands
        # of the newest) is O(1): remove() on a deque of 70,000 took 14 s for 5,800
        self._queue: OrderedDict[Any, None] = OrderedDict()
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
    def max_workers(self) -> int:
        """Jobs running at once (unless ``serialize``)."""
        return self._max_workers

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        slots = self._count(value)
        with self._cond:
            self._max_workers = slots
            self._wake()  # more slots: start the queued jobs now
            self._cond.notify_all()  # fewer: the idle threads over the limit end

    @property
    def limit(self) -> int:
        """How many jobs may hold a slot now."""
        return 1 if self._serialize else self.max_workers

    def attach(self, host: Any) -> None:
        """Learn the engine's work directory, factory and watchdog."""
        self.host = host

    def execution(self, task: Task) -> Any:
        """An in-process :class:`~dahu.executors.runner.Execution` (shares ``DataCache``)."""
        host = self.host
        return Execution(
            task.plugin_name,
            task.input_data,
            task.job_id,
            factory=host.factory if host is not None else plugin_factory,
            waiting=functools.partial(self.waiting, job_id=task.job_id),
            profile_dir=host.workdir if host is not None else None,
            on_plugin=task.plugin_loaded,
        )

    def cancel(self, task: Task) -> bool:
        """Take ``task`` off the queue; False if a pool thread took it already."""
        with self._cond:
            if task not in self._queue:
                return False  # a worker took it: it will see the abort
            del self._queue[task]
        return True

    def backlog(self) -> int:
        """How many jobs wait for a slot (read without the lock: a hint)."""
        return len(self._queue)

    def submit(self, task: Task) -> None:
        """Queue ``task``; a pool thread runs it when a slot is free."""
        with self._cond:
            if self._shutdown:
                raise ExecutorError("the executor is shut down")
            self._queue[task] = None
            failed = self._wake()
            if failed is not None and not (self._idle or self._running or self._waiting):
                # no thread at all to run it, now or later: refuse it, the job fails
                del self._queue[task]
                raise ExecutorError(f"cannot start a thread to run it: {failed}")

    def _wake(self) -> RuntimeError | None:
        """Make sure a thread will take the queue's head if a slot is free (lock held).
        Returns the error if a new thread could not be started (the process may start no
        more: a limit on threads, no memory); the threads there are take the queue."""
        if not self._queue or self._running + self._reclaiming >= self.limit:
            return None
        if self._idle:
            self._cond.notify(min(self._idle, len(self._queue)))
        # one more thread per queued job that no idle thread will take, up to the limit
        while len(self._queue) > self._idle and self._running + self._idle < self.limit:
            self._threads += 1
            self._idle += 1  # counted as idle until it takes a job
            try:
                threading.Thread(target=self._worker, name="dahu-worker", daemon=True).start()
            except RuntimeError as err:  # "can't start new thread": not counted, tried again
                self._threads -= 1
                self._idle -= 1
                logger.error(
                    "cannot start a pool thread (%d jobs running, %d threads abandoned): %s",
                    self._running,
                    len(self._abandoned),
                    err,
                )
                return err
        return None

    def _worker(self) -> None:
        with self._cond:
            self._idle -= 1
            while True:
                if self._queue and self._running + self._reclaiming < self.limit:
                    task = self._queue.popitem(last=False)[0]
                    self._running += 1
                    self._threads_of[task.job_id] = threading.get_ident()
                    self._tasks[threading.get_ident()] = task
                    self._cond.release()
                    try:
                        # the plugin and the callbacks give the slot back while they wait
                        with serving(task.job_id, self.waiting, task):
                            self._run(task)
                    finally:
                        self._cond.acquire()
                        self._threads_of.pop(task.job_id, None)
                        self._tasks.pop(threading.get_ident(), None)
                        task = None  # a finished job must not outlive its run here
                    if threading.get_ident() in self._abandoned:
                        # its slot was given away when the job was abandoned: just end
                        self._abandoned.discard(threading.get_ident())
                        return
                    self._release(threading.get_ident())
                    if self._reclaiming:
                        self._slot_free.notify_all()
                    if not self._queue and not self._running:
                        self._drained.notify_all()  # for shutdown(wait=True) only
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

    def _run(self, task: Task) -> None:
        """Run one task in this pool thread; never raises."""
        try:
            execution = self.execution(task)
        except Exception as err:  # e.g. a worker process that cannot be started
            logger.exception("job %s: cannot start", task.job_id)
            reason = f"cannot start the job: {error_line(err)}"
            task.finish(Outcome(State.FAILURE, {}, reason, None, time.time()))
            return
        try:
            execute(task, execution)
        except BaseException:
            logger.exception("job %s: unexpected error in the executor", task.job_id)

    def _thread_exit(self) -> None:
        """Called by a pool thread that ends (subclasses free what it owned)."""

    def abandon(self, task: Task) -> bool:
        """Give up on ``task``, whose plugin ignored its abort.

        Its slot is freed and another thread takes over; the thread itself cannot be
        killed and ends when (if ever) the plugin returns.  Returns False if the task is
        not running here or was already abandoned.
        """
        with self._cond:
            thread_ident = self._threads_of.get(task.job_id)
            if thread_ident is None or thread_ident in self._abandoned:
                return False
            self._abandoned.add(thread_ident)
            self._release(thread_ident)
            self._threads -= 1
            self._wake()
            self._slot_free.notify_all()
            self._cond.notify_all()
            self._drained.notify_all()
        logger.error("a plugin ignored its abort: its thread %s is abandoned", thread_ident)
        return True

    def _release(self, owner: int) -> None:
        """The job of pool thread ``owner`` ends here (done or abandoned): free its slot,
        or, if it gave it back to wait (its plugin's threads may still), count it as
        waiting no more (lock held)."""
        if self._waiters.pop(owner, None) is not None:
            self._waiting -= 1
        else:
            self._running -= 1

    @contextlib.contextmanager
    def waiting(
        self, ended: Callable[[], bool] | None = None, job_id: int | None = None
    ) -> Iterator[None]:
        """Give the slot of the caller's job back while it waits for another job; take
        it back after.

        The job is the one of the calling pool thread, or ``job_id`` for a thread its
        plugin started; it gives its slot back once, however many of its threads wait.
        A thread abandoned (its plugin ignored an abort) holds no slot: it gives none
        back and takes none.  A job that is ending, aborted or ``ended()`` (its worker
        died), takes its slot back at once, over the limit if need be.
        """
        with self._cond:
            owner = threading.get_ident() if job_id is None else self._threads_of.get(job_id)
            held = owner is not None and owner not in self._abandoned
            if held:
                count = self._waiters.get(owner, 0)
                self._waiters[owner] = count + 1
                if not count:  # the job's first wait
                    self._running -= 1
                    self._waiting += 1
                    self._wake()
                    self._slot_free.notify_all()
        try:
            yield
        finally:
            if held:
                with self._cond:
                    self._reclaim(owner, ended)

    def _reclaim(self, owner: Any, ended: Callable[[], bool] | None) -> None:
        """One wait of the job of pool thread ``owner`` is over: its last one takes the
        slot back (lock held)."""
        count = self._waiters.get(owner)
        if count is None:  # its job ended or was abandoned meanwhile: no slot to take
            return
        if count > 1:
            self._waiters[owner] = count - 1
            return
        del self._waiters[owner]
        self._waiting -= 1
        self._reclaiming += 1
        task = self._tasks.get(owner)
        # an aborted job ends: it takes its slot at once, over the limit if need be,
        # rather than wait behind long jobs to say so
        while self._running >= self.limit and not (
            _aborted(task) or (ended is not None and ended())
        ):
            self._slot_free.wait()
        self._reclaiming -= 1
        self._running += 1
        self._wake()  # the queue may have waited for the reclaimers

    def aborting(self, task: Task) -> None:
        """``task`` is being aborted: if it waits to take its slot back after a wait for
        another job, it takes it now (see :meth:`waiting`)."""
        with self._cond:
            if self._reclaiming:
                self._slot_free.notify_all()

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "waiting": n}``."""
        with self._cond:
            return {"queued": len(self._queue), "running": self._running, "waiting": self._waiting}

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs; with ``wait``, return when the queued jobs have run."""
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            if wait:
                self._drained.wait_for(
                    lambda: not self._queue and not self._running and not self._waiting, timeout
                )
