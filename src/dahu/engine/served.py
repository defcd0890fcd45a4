"""The engine of the jobs a plugin makes in a process that serves several servers (a Dask
worker on a scheduler they share): its own server's work directory, not the first one's.

A Dask task runs its plugin within :func:`dahu.journal.reader.reading` of its server's work
directory; a job its plugin makes there (``Job(...)``) goes to an engine of that directory
(:func:`making_engine`).  Until 2026-11-30 it went to the process's engine, opened on the
work directory of the first server that sent the worker a job: another server's plugin
could not ``wait_for`` the job it made (``Not synchronizing job, invalid id``), nor that
server answer for it.
"""

from __future__ import annotations

import os
import threading

from ..journal.base import default_workdir
from ..journal.reader import task_workdir
from . import core

__all__ = ["making_engine"]

_engines: dict[str, core.Engine] = {}  # by work directory, besides the process's own
_lock = threading.Lock()


def making_engine() -> core.Engine:
    """The engine a job made now goes to: the process's (:func:`.core.get_engine`), or in
    a Dask task of another work directory than its, one of that directory (made on first
    use, kept for the process's life)."""
    workdir = task_workdir()
    if workdir is None:
        return core.get_engine()
    workdir = os.path.abspath(workdir)
    current = core._current
    if current is None and default_workdir() == workdir:  # the one made on first use
        return core.get_engine()
    if current is not None and current.workdir == workdir:
        return current
    with _lock:
        engine = _engines.get(workdir)
        if engine is None:
            engine = _engines[workdir] = core.Engine(workdir=workdir)
        return engine
