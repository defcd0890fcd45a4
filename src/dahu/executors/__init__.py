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

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from ..properties import EXECUTORS
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
    "make_executor_with",
    "scheduler_address",
    "KINDS",
]

KINDS = EXECUTORS
"""The executors :func:`make_executor` knows."""


def make_executor(kind: str = "thread", max_workers: int | None = None, **options: Any) -> Any:
    """Make the executor named ``kind``: ``thread``, ``process`` or ``dask`` (any case,
    blanks around it ignored).

    ``options`` go to its constructor (see :mod:`dahu.executors.process` and
    :mod:`dahu.executors.cluster`); one it does not take is a one-line ``TypeError``.
    """
    return make_executor_with(kind, max_workers, options)


def make_executor_with(kind: str, max_workers: int | None, options: dict[str, Any] | None) -> Any:
    """:func:`make_executor` with its options in a dict (``executor_options``), where a
    ``max_workers`` is refused in one line."""
    if not isinstance(options, Mapping | None):
        raise TypeError(f"executor options are a dict, not {type(options).__name__}")
    options = dict(options or {})
    if "max_workers" in options:
        raise TypeError(
            "max_workers is not one of the executor options: give it as its own argument "
            "(max_workers=N)"
        )
    name = kind.strip().lower() if isinstance(kind, str) else kind
    if name == "thread":
        klass: Any = ThreadExecutor
    elif name == "process":
        from .process import ProcessExecutor as klass
    elif name == "dask":
        from .cluster import DaskExecutor as klass
    else:
        raise ValueError(f"unknown executor {kind!r}: expected thread, process or dask")
    check_options(name, klass, options)
    return klass(max_workers, **options)


def scheduler_address(text: str | None) -> str:
    """The dask executor's scheduler: an address as given, blanks around it ignored, or
    ``local`` (also for none, or ``Local``: a word, read in any case)."""
    address = (text or "").strip()
    return "local" if address.lower() in ("", "local") else address


def check_options(kind: str, klass: Any, options: dict[str, Any]) -> None:
    """Refuse, in one line, an option the ``kind`` executor does not take."""
    known = [p for p in inspect.signature(klass).parameters if p != "max_workers"]
    for option in options:
        if option not in known:
            near = difflib.get_close_matches(str(option), known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"it takes {', '.join(known)}"
            raise TypeError(f"the {kind} executor has no option {option!r}: {hint}")
