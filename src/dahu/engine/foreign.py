"""A job that another process runs, as this one sees it: ``Job.getJobFromID`` of a job of
a second server on the work directory, or of a job a plugin made in a worker process.

Its run is rebuilt from the journal (:meth:`~.lifecycle.JobRun.from_record`); while the
journal says it has not ended, its state is read again when asked (``Job.status``,
``is_alive``) and ``Job.join`` follows it in the journal until it ends
(``Job.synchronize_job``).  Until
2026-11-30 such a ``Job`` kept the state it had when it was looked up, and ``join()``
returned at once while it ran on."""

from __future__ import annotations

from typing import Any

from ..errors import JournalError
from ..states import State

__all__ = ["settled"]


def settled(run: Any, source: Any) -> str:
    """The state of ``run``; for one of another process that had not ended, read again
    from the journal of ``source`` (an engine or a reader), with its error and times."""
    if run.from_journal and run.state not in State.FINAL:
        try:
            record = source.journal.get(run.id, data=False)
        except JournalError:  # unreadable now: as last seen
            return run.state
        if record is not None:
            run.error, run.started, run.ended = record.error, record.started, record.ended
            run.state = record.state
    return run.state
