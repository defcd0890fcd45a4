"""The engine: the journal, the executor and the work directory that jobs share.

One engine is current per process.  It is made on first use from the environment
(``DAHU_WORKDIR``, see :func:`dahu.journal.default_workdir`) or explicitly with
:func:`configure` (the server and ``dahu-reprocess`` do).  Opening an engine on a work
directory closes, as ``failure``/``interrupted``, the jobs that a dead process left
unfinished there, and job ids continue after the highest recorded one.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .executor import Watchdog, make_executor
from .factory import Factory, plugin_factory
from .journal import Journal, SQLiteJournal
from .states import State

logger = logging.getLogger(__name__)

__all__ = ["Engine", "configure", "get_engine"]


class Engine:
    """Holds what every job of the process shares.

    :param workdir: the stable work directory (journal, ``.inp``/``.out`` files)
    :param journal: a journal; default a :class:`~dahu.journal.SQLiteJournal` in ``workdir``
    :param executor: where plugins run; default a :class:`~dahu.executor.ThreadExecutor`
    :param max_workers: slots of the executor (default: number of CPUs)
    :param executor_kind: ``thread`` (default), ``process`` or ``dask`` when no executor
        is given; ``executor_options`` go to its constructor
    :param default_timeout: seconds after which a running job is aborted as timed out
        (None: no limit); a plugin's ``JOB_TIMEOUT`` or the input key ``job_timeout``
        override it
    :param recover: close the unfinished jobs of dead processes as ``interrupted``
    """

    def __init__(
        self,
        workdir: str | None = None,
        journal: Journal | None = None,
        executor: Any = None,
        max_workers: int | None = None,
        factory: Factory = plugin_factory,
        executor_kind: str = "thread",
        executor_options: dict[str, Any] | None = None,
        default_timeout: float | None = None,
        recover: bool = True,
    ):
        self.journal = journal if journal is not None else SQLiteJournal(workdir)
        self.workdir = os.path.abspath(
            workdir or getattr(self.journal, "workdir", None) or os.getcwd()
        )
        self.interrupted = self.journal.mark_interrupted() if recover else []
        self.first_id = self.journal.last_id() + 1
        self.factory = factory
        self.default_timeout = default_timeout
        self.watchdog = Watchdog()
        if executor is None:
            executor = make_executor(executor_kind, max_workers, **(executor_options or {}))
        self.executor = executor
        if hasattr(executor, "attach"):
            executor.attach(self)
        self.journal_fault: str | None = None
        self._lock = threading.Lock()
        self.finished = {State.SUCCESS: 0, State.FAILURE: 0, State.ABORTED: 0}

    def count_finished(self, state: str) -> None:
        """Count one job ended in ``state``."""
        with self._lock:
            self.finished[state] = self.finished.get(state, 0) + 1

    def counts(self) -> dict[str, int]:
        """Jobs queued, running and finished (per final state) since the engine started."""
        counts = dict(self.executor.counts())
        with self._lock:
            counts.update(self.finished)
        counts["finished"] = sum(self.finished.values())
        return counts

    def close(self) -> None:
        """Stop the executor (waiting for its jobs) and close the journal."""
        self.executor.shutdown(wait=True)
        self.journal.close()


_current: Engine | None = None
_current_lock = threading.Lock()


def get_engine() -> Engine:
    """Return the process's engine, making the default one on first use."""
    global _current
    engine = _current
    if engine is None:
        with _current_lock:
            if _current is None:
                _current = Engine()
            engine = _current
    return engine


def configure(**kwargs: Any) -> Engine:
    """Make a new engine (arguments as :class:`Engine`) the process's current one.

    Jobs of a previous engine keep their journal; new jobs use the new one.
    """
    global _current
    engine = Engine(**kwargs)
    with _current_lock:
        _current = engine
    return engine
