"""Tango's request threads keep their Python thread state from one command to the next.

The threads that run the device's commands are omniORB's, not Python's.  For each command
PyTango makes a Python thread state for the thread (``PyGILState_Ensure``) and deletes it
when the command returns.  Each time, the interpreter maps and unmaps its frame stack
(16 kB: an ``mmap`` and a ``munmap``, whose TLB shoot-down interrupts the other CPUs) and
sets the state up again.  In the events benchmark that was one mapping made and unmade
per ``startJob``.

:func:`keep_thread_state`, called by every command (``client_errors``), takes one more
hold on the thread's state the first time a thread runs a command.  PyTango's release at
the end of the command then leaves the state in place, and the next command on that
thread finds it.

A kept state lives as long as the process, even if omniORB ends its thread.  At most
:data:`MAX_KEPT` threads keep theirs (about 20 kB each), so the memory this can hold is
bounded; threads past that run as before.  omniORB's request threads are few and
long-lived.  A server with three clients measured here used three, reused when the
clients came back.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import TryAgain

__all__ = ["MAX_KEPT", "keep_thread_state", "kept_threads", "within"]

T = TypeVar("T")

MAX_KEPT = 64
"""Threads whose Python state is kept (each about 20 kB until the process ends)."""

_kept = threading.local()  # lives in the thread's state: gone when PyTango deletes it
_lock = threading.Lock()
_count = 0
_ensure = getattr(getattr(ctypes, "pythonapi", None), "PyGILState_Ensure", None)


def keep_thread_state() -> None:
    """Keep the calling thread's Python state after the command that runs in it returns
    (once per thread, for at most :data:`MAX_KEPT` threads; a no-op after that)."""
    global _count
    if _ensure is None or getattr(_kept, "done", False) or _count >= MAX_KEPT:
        return
    with _lock:
        if _count >= MAX_KEPT:
            return
        _count += 1
    _kept.done = True
    # the thread holds the GIL: this only counts one more user of its state, never
    # released, so that PyTango's release at the end of the command does not delete it
    _ensure()


def kept_threads() -> int:
    """How many threads keep their Python state (the memory it holds is bounded)."""
    return _count


def within(seconds: float, function: Callable[[], T], busy: str) -> T:
    """``function()``, run in a thread of its own: its result (or what it raised) if it
    ends within ``seconds``, else :class:`~dahu.errors.TryAgain` with ``busy``.  The
    function goes on, and a later call finds its work done (a module imported stays
    imported): a command never waits longer than the client's patience for slow work."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = function()
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, name="dahu-bounded", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TryAgain(busy)
    if "error" in box:
        raise box["error"]
    return box["result"]
