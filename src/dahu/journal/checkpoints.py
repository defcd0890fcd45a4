"""The journal's checkpoints (the copy of its ``-wal`` file into ``journal.sqlite``),
made by the journal itself, each once it has seen that the file at its path is still
the one it writes.

SQLite's own (``wal_autocheckpoint``, as a commit takes the ``-wal`` past 1,000 pages)
are off: the journal's file removed under two writers (only ``journal.sqlite``: its
``-wal`` and ``-shm`` files left) and written again by one of them, the other one
shares that ``-wal`` with it until its check sees the new file (0.5 s at most).  A
checkpoint it made meanwhile copied the shared ``-wal`` into the removed file, and
marked it copied: the jobs it held, of both processes, went missing from the file
written again (until 2026-11-30).
"""

from __future__ import annotations

import time
from typing import Any

from .sqlitefile import checkpoint, file_identity

__all__ = ["EVERY", "Checkpoints"]

EVERY = 0.05
"""Seconds between two checkpoints at most while the journal commits: the ``-wal`` holds
what a twentieth of a second commits (a few MB at the most, as SQLite's own kept it)."""


class Checkpoints:
    """Checkpoints after commits (a mixin of :class:`~.sqlite.SQLiteJournal`, before
    :class:`~.writer.BatchedWriter`, whose commits it follows); its
    :meth:`~.sqlite.SQLiteJournal.check_file` makes one twice a second too."""

    _checkpointed = 0.0  # time.monotonic() of the last one
    _db: Any  # (the journal's: its writer connection, the file it writes, its path)
    _file: Any
    path: str

    def _commit(self, *args: Any, **named: Any) -> bool:
        done = super()._commit(*args, **named)  # type: ignore[misc]
        if time.monotonic() - self._checkpointed >= EVERY and not self._db.in_transaction:
            self._checkpointed = time.monotonic()
            if file_identity(self.path) == getattr(self, "_file", None):  # not a removed one
                checkpoint(self._db)
        return done
