"""How a local Dask cluster's worker process ended: its nanny (in this process) knows the
exit code, Dask's ``KilledWorker`` does not tell it.  :class:`ExitWatch` notes it, so
that a job whose worker died reads ``worker process died: signal 6 (SIGABRT)`` as under
the process executor."""

from __future__ import annotations

import threading
import time
from typing import Any

from distributed.diagnostics.plugin import NannyPlugin

from .process import exit_text

__all__ = ["EXIT_WAIT", "ExitWatch", "death_reason", "exit_code"]

KEEP = 1000
"""How many worker exits are remembered (an address is not given again soon)."""

_exits: dict[str, int] = {}  # worker address -> exit code (negative: the signal)
_exits_lock = threading.Lock()


class ExitWatch(NannyPlugin):
    """Registered on a local cluster: each nanny notes the exit code of its worker
    process, by the worker's address, before it starts a new one."""

    name = "dahu-exit-watch"
    idempotent = True

    def setup(self, nanny: Any) -> None:
        def watch(on_exit: Any) -> Any:
            def noted(exitcode: int) -> None:
                address = getattr(nanny.process, "worker_address", None)
                if address is not None:
                    with _exits_lock:
                        if len(_exits) >= KEEP:  # the oldest first (dicts keep order)
                            del _exits[next(iter(_exits))]
                        _exits[address] = exitcode
                on_exit(exitcode)

            return noted

        # the nanny reuses its WorkerProcess across restarts, or makes one with this
        nanny._on_worker_exit_sync = watch(nanny._on_worker_exit_sync)
        if nanny.process is not None:
            nanny.process.on_exit = watch(nanny.process.on_exit)


EXIT_WAIT = 10.0
"""Seconds the server waits for a dead worker's exit code.  The scheduler may report the
task lost well before the process exits: one whose plugin closed the worker's sockets
(``os.closerange``) lives on some 5 s, the Dask client in it giving up closing its
dead connections after 3 s at exit (until 2026-11-30 the wait was 5 s, and such a job
failed ``worker process died (...); Dask does not say how``)."""


def exit_code(address: str | None, wait: float = EXIT_WAIT) -> int | None:
    """The exit code of the worker process at ``address`` once its nanny noted it (the
    scheduler may report the task lost before: :data:`EXIT_WAIT`), None if not within
    ``wait`` s (a nanny in another process: an external cluster)."""
    deadline = time.monotonic() + wait
    while address is not None:
        with _exits_lock:
            if address in _exits:  # kept: the tasks queued on it died with it too
                return _exits[address]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return None


def death_reason(error: Any, local: bool) -> str:
    """Why a task's worker died (a ``KilledWorker`` ``error``), in one line: its exit code
    if a nanny of the ``local`` cluster noted it, else the worker's address."""
    address = getattr(getattr(error, "last_worker", None), "address", None)
    code = exit_code(address) if local else None
    if code is not None:
        return f"worker process died: {exit_text(code)}"
    where = f" ({address})" if address else ""
    return f"worker process died{where}; Dask does not say how: see that worker's log"
