"""At start: the ``.inp``/``.out`` files a dead process left unwritten.

A job's outcome is committed to the journal before its files are written (by the files
thread, after the job's end): a server killed in between leaves ended jobs without
files, and the jobs it left unfinished (closed as ``interrupted`` at the next start)
never get any.  The journal holds everything those files show, so the next start
writes them: those of jobs whose process is gone (a live one, a server beside a worker
process or a tool on its directory, writes its own).  Files are written in the order
jobs end, so only the latest ends are
looked at: the search stops after :data:`SETTLED` ended jobs in a row that have both
files, and never looks further back than :data:`WINDOW` ids, but for the interrupted
jobs, which all get theirs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..journal import job_file_stem
from ..journal.sqlite import process_alive
from ..states import State

logger = logging.getLogger(__name__)

__all__ = ["write_missing_files", "SETTLED", "WINDOW"]

SETTLED = 50  # ended jobs in a row with their files: the older ones have theirs
WINDOW = 2000  # ids looked at, at most (from the last one down)


def write_missing_files(engine: Any, interrupted: list[int]) -> int:
    """Write the missing files of the latest ended jobs of ``engine``'s journal and of
    the ``interrupted`` ones (closed at this start); return how many jobs got files."""
    journal = engine.journal
    last = journal.last_id()
    if not last:
        return 0
    closed = set(interrupted)
    first = max(1, last - WINDOW + 1)
    records = [r for r in journal.select(first=first) if r.state in State.FINAL]
    # interrupted ones older than the window (a long queue cut short): each by its id
    records += filter(None, (journal.get(i) for i in sorted(closed) if i < first))
    records.sort(key=lambda r: (r.id in closed, r.ended or 0.0), reverse=True)
    alive: dict[tuple, bool] = {}  # (host, pid) -> its process runs (asked once each)
    written = present = 0
    for record in records:
        owner = (record.host, record.pid)
        if owner not in alive:  # newest record first: a pid used again since is told apart
            alive[owner] = process_alive(record.host, record.pid, record.submitted)
        if alive[owner] and record.id not in closed:
            continue  # its process writes its files (they may be queued there now)
        stem = job_file_stem(engine.workdir, record.id, record.plugin)
        if os.path.exists(stem + ".inp") and os.path.exists(stem + ".out"):
            present += 1
            if present >= SETTLED and record.id not in closed:
                break
            continue
        present = 0
        output = record.output
        if output is None:  # closed without an outcome: the error is what is known
            output = {"error": (record.error or "").splitlines()}
        if engine.write_files(record.id, record.plugin, record.input, output):
            written += 1
    if written:
        logger.warning(
            "%d job(s) ended without their .inp/.out files (a process died): written now",
            written,
        )
    return written
