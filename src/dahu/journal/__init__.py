"""The job journal: a persistent record of every job, so that no job is ever lost.

:mod:`dahu.journal.base` states the interface and its contract;
:mod:`dahu.journal.sqlite` is the real backend (a SQLite file in the work directory),
:mod:`dahu.journal.memory` the one for tests; :mod:`dahu.journal.files` writes the
``.inp``/``.out`` files users know; :mod:`dahu.journal.reader` reads other jobs' records
in processes that run plugins but hold no engine (worker processes, Dask workers).

The journal depends on nothing but the state strings, the errors and the JSON encoder,
so the engine and the executors can both use it.
"""

from ..errors import JournalError
from .base import INTERRUPTED, JobRecord, Journal, default_workdir
from .files import job_file_name, job_file_stem, write_job_files
from .memory import MemoryJournal
from .sqlite import SCHEMA_VERSION, SQLiteJournal

__all__ = [
    "JobRecord",
    "Journal",
    "JournalError",
    "MemoryJournal",
    "SQLiteJournal",
    "default_workdir",
    "job_file_name",
    "job_file_stem",
    "write_job_files",
    "INTERRUPTED",
    "SCHEMA_VERSION",
]
