"""The job table: which jobs of this engine live in memory, and where to find them by id.

* ``live``: jobs not ended yet (queued or running; held strongly);
* ``unrecorded``: jobs ended whose outcome the journal could not take (held strongly, so
  that nothing is lost while the journal is at fault);
* ``recent``: ended jobs that something still references (held weakly).

A finished job needs nothing in memory: once nobody references it, the journal answers.
The files thread hands the plugin instances of the jobs it ended to :func:`drop_later`
(a slow ``__del__``), a wave at a time (:data:`DROP_AFTER`, :data:`DROP_WAVE`).
"""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Any

__all__ = ["JobTable", "drop_later"]

DROP_AFTER, DROP_WAVE = 0.2, 256
"""The files thread hands the plugins of the jobs it ended to :func:`drop_later` once it
has had nothing to do for ``DROP_AFTER`` s, or ``DROP_WAVE`` at a time: one wake of the
dropping thread per job cost about 10% of the device's events rate."""

_to_drop: queue.SimpleQueue = queue.SimpleQueue()
_dropper: list[threading.Thread] = []
_dropper_lock = threading.Lock()


def drop_later(held: list) -> None:
    """Let go of what the list ``held`` holds (an ended job's plugin, its only reference
    moved there) in the dropping thread, not in the caller's: a plugin's ``__del__`` may
    take seconds (closing a device), and the files thread that ends its job writes other
    jobs' files and pushes their events.  The plugin is finalised where its last
    reference goes: there, or in the thread that ran it, if that one still holds it."""
    if not held:
        return
    with _dropper_lock:
        if not _dropper:
            _dropper.append(threading.Thread(target=_drop, name="dahu-drop", daemon=True))
            _dropper[0].start()
    _to_drop.put(held)


def _drop() -> None:
    while True:
        _to_drop.get().clear()


class JobTable:
    """Job runs of one engine by id (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._live: dict[int, Any] = {}
        self._unrecorded: dict[int, Any] = {}
        self._recent: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def add(self, run: Any) -> None:
        """A new job, not ended."""
        with self.lock:
            self._live[run.id] = run

    def ended(self, run: Any, recorded: bool) -> None:
        """``run`` ended; ``recorded``: its outcome is in the journal (lock held)."""
        if self._live.pop(run.id, None) is None:
            return
        if recorded:
            self._recent[run.id] = run
        else:
            self._unrecorded[run.id] = run

    def unrecorded(self) -> list[Any]:
        """The ended runs whose outcome the journal has not taken yet, oldest first."""
        with self.lock:
            return sorted(self._unrecorded.values(), key=lambda run: run.id)

    def recorded(self, run: Any) -> None:
        """The journal took the outcome of ``run`` late: hold it weakly from now on."""
        with self.lock:
            if self._unrecorded.pop(run.id, None) is not None:
                self._recent[run.id] = run

    def forget(self, run: Any) -> None:
        """A job whose record could not be written, never started: it does not exist."""
        with self.lock:
            self._live.pop(run.id, None)

    def find(self, job_id: int) -> Any:
        """The run of ``job_id`` if it is in memory, else None."""
        with self.lock:
            return (
                self._live.get(job_id) or self._unrecorded.get(job_id) or self._recent.get(job_id)
            )

    def live(self) -> list[Any]:
        """The runs not ended yet."""
        with self.lock:
            return list(self._live.values())

    def __len__(self) -> int:
        with self.lock:
            return len(self._live)
