"""Where plugin code runs: the executors, and the one interface they share with the engine.

* :mod:`.base`: the interface (:class:`~.base.Task` in, :class:`~.runner.Outcome` out);
* :mod:`.runner`: one run of one plugin (setup → process → teardown → outcome);
* :mod:`.thread`: the default pool of threads in the server process;
* :mod:`.watchdog`: delayed calls (timeouts, abort grace periods);
* :mod:`.process` + :mod:`.worker`: long-lived isolated worker processes;
* :mod:`.cluster`: a Dask distributed cluster.

Nothing here imports the engine or ``dahu.job``.
"""

from __future__ import annotations

from typing import Any

from .base import Executor, Task, execute
from .runner import Execution, Outcome
from .thread import ThreadExecutor, default_workers
from .watchdog import Watchdog

__all__ = [
    "Executor",
    "Task",
    "execute",
    "Execution",
    "Outcome",
    "ThreadExecutor",
    "Watchdog",
    "default_workers",
    "make_executor",
    "KINDS",
]

KINDS = ("thread", "process", "dask")
"""The executors :func:`make_executor` knows."""


def make_executor(kind: str = "thread", max_workers: int | None = None, **options: Any) -> Any:
    """Make the executor named ``kind``: ``thread``, ``process`` or ``dask``.

    ``options`` go to its constructor (see :mod:`dahu.executors.process` and
    :mod:`dahu.executors.cluster`).
    """
    if kind == "thread":
        return ThreadExecutor(max_workers, **options)
    if kind == "process":
        from .process import ProcessExecutor

        return ProcessExecutor(max_workers, **options)
    if kind == "dask":
        from .cluster import DaskExecutor

        return DaskExecutor(max_workers, **options)
    raise ValueError(f"unknown executor {kind!r}: expected thread, process or dask")
