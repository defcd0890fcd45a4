"""Which job the calling thread works for, and how it gives its executor slot back while
it waits for another job.

An executor marks the thread that runs a job (the plugin, then the job's callbacks) with
:func:`serving`.  Every wait for another job made from that thread (``Plugin.wait_for``,
``Job.join``, ``Job.synchronize_job``, ``Job.synchronize_all``) goes through
:func:`released`, which gives the slot back while it waits: jobs waiting for jobs that
wait for a slot never deadlock, as in the original (one thread per job).  The mark also
tells a job that waits for itself, which the original refused at once
(``RuntimeError: cannot join current thread``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["serving", "released", "SlotHook", "current_job_id", "serves", "SELF_JOIN"]

SELF_JOIN = "cannot join current thread"
"""The error of a job that waits for itself (the original's ``Thread.join`` text)."""

_local = threading.local()


class _Serving:
    __slots__ = ("job_id", "task", "waiting")

    def __init__(self, job_id: int | None, task: Any, waiting: Callable[[], Any] | None):
        self.job_id = job_id
        self.task = task
        self.waiting = waiting  # None while the slot is given back (nested waits)


@contextlib.contextmanager
def serving(
    job_id: int | None, waiting: Callable[[], Any] | None, task: Any = None
) -> Iterator[None]:
    """Mark the calling thread as running job ``job_id`` (``task``, if the executor has
    it) on a slot that ``waiting()`` gives back; a mark already there for the same job
    (the executor's) is kept."""
    outer = getattr(_local, "serving", None)
    if outer is not None and outer.job_id == job_id:
        yield
        return
    _local.serving = _Serving(job_id, task, waiting)
    try:
        yield
    finally:
        _local.serving = outer


def current_job_id() -> int | None:
    """The id of the job the calling thread runs (plugin or callbacks), or None."""
    mark = getattr(_local, "serving", None)
    return mark.job_id if mark is not None else None


def serves(task: Any) -> bool:
    """True if the calling thread runs ``task`` (the executor's task object)."""
    mark = getattr(_local, "serving", None)
    return mark is not None and mark.task is not None and mark.task is task


@contextlib.contextmanager
def released(fallback: Callable[[], Any] | None = None) -> Iterator[None]:
    """Give the calling thread's slot back while the block waits, and take it back
    after.  In a thread that runs no job (e.g. one a plugin started), enter
    ``fallback()`` instead, if given.  Nested, the slot is given back once."""
    mark = getattr(_local, "serving", None)
    if mark is None:
        with fallback() if fallback is not None else contextlib.nullcontext():
            yield
        return
    waiting, mark.waiting = mark.waiting, None
    try:
        with waiting() if waiting is not None else contextlib.nullcontext():
            yield
    finally:
        mark.waiting = waiting


class SlotHook:
    """A plugin's ``_dahu_waiting`` while it runs a job: :func:`released` with the
    executor's ``fallback`` (a wait from a thread the plugin started frees the slot too).

    A copy of the plugin (``copy.deepcopy(self)``) shares it; a pickled plugin
    (``pickle.dumps(self)``, ``pool.map(self.method, ...)``) gets the plain
    :func:`released`: the executor's own objects (locks) cannot be copied nor pickled,
    and plugins of the original copy and pickle themselves."""

    __slots__ = ("fallback",)

    def __init__(self, fallback: Callable[[], Any]):
        self.fallback = fallback

    def __call__(self) -> Any:
        return released(self.fallback)

    def __deepcopy__(self, memo: dict) -> SlotHook:
        return self

    def __reduce__(self) -> tuple:
        return (_plain, ())


def _plain() -> Callable[..., Any]:
    """What a pickled :class:`SlotHook` becomes: :func:`released`."""
    return released
