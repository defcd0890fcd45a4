"""The engine: it owns the jobs of the process from creation to their recorded end.

* :mod:`.core`: :class:`Engine` (one current per process: :func:`get_engine`,
  :func:`configure`, :func:`activate`): journal, executor, work directory, counters,
  the background writer of ``.inp``/``.out`` files, shutdown;
* :mod:`.table`: the job table (live jobs, ended jobs still referenced);
* :mod:`.lifecycle`: every state transition of a job, in one place (:mod:`.flag`: the
  flag its waiters wait for).

The journal (:mod:`dahu.journal`) and the executors (:mod:`dahu.executors`) are rooms of
their own, used by the engine; neither imports it.  ``dahu.job.Job`` is the public face.
"""

from .core import Engine, activate, configure, get_engine
from .lifecycle import NOTE_RUNNING_AFTER, SHUTDOWN_REASON, JobRun, nonblocking

__all__ = [
    "Engine",
    "JobRun",
    "activate",
    "configure",
    "get_engine",
    "NOTE_RUNNING_AFTER",
    "SHUTDOWN_REASON",
    "nonblocking",
]
