"""How a local Dask cluster's worker process ended: its nanny (in this process) knows the
exit code, Dask's ``KilledWorker`` does not tell it.  :class:`ExitWatch` notes it, so
that a job whose worker died reads ``worker process died: signal 6 (SIGABRT)`` as under
the process executor.  :class:`NoInterrupt` keeps a terminal's Ctrl-C from ending them."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

from .process import exit_text

__all__ = [
    "EXIT_WAIT",
    "ExitWatch",
    "NoInterrupt",
    "STOP_WAIT",
    "death_reason",
    "exit_code",
    "memory_note",
    "stopped_meanwhile",
    "watch_workers",
]

KEEP = 1000
"""How many worker exits are remembered (a pid or an address is not given again soon)."""

WATCHED = "_dahu_exits_watched"  # marks a nanny's WorkerProcess whose exits are noted

_exits: dict[int | str, int] = {}  # worker pid (or address) -> exit code (<0: the signal)
_exits_lock = threading.Lock()


def _note(key: int | str, exitcode: int) -> None:
    with _exits_lock:
        if len(_exits) >= KEEP:  # the oldest first (dicts keep order)
            del _exits[next(iter(_exits))]
        _exits[key] = exitcode


class ExitWatch(NannyPlugin):
    """Registered on a local cluster: each nanny notes the exit code of its worker
    process, by the process's pid (the scheduler knows a worker's), before it starts a
    new one.  Until 2026-11-30 it was noted by the worker's address as the nanny knew it:
    the last worker's for a worker dying before the nanny heard from it (a plugin crashing
    a freshly restarted worker), whose job failed 10 s later ``... Dask does not say how``."""

    name = "dahu-exit-watch"
    idempotent = True

    def setup(self, nanny: Any) -> None:
        def watch(process: Any) -> None:  # the nanny's WorkerProcess, kept across restarts
            if process is None or getattr(process, WATCHED, False):
                return
            setattr(process, WATCHED, True)
            on_exit, on_worker_exit = process._on_exit, process.on_exit

            def noted(ended: Any) -> None:  # a worker process (AsyncProcess) that ended
                _note(ended.pid, ended.exitcode)
                on_exit(ended)

            process._on_exit = noted  # the exit callback of each worker process it starts
            if process.process is not None:  # the one running now, with its callback
                pid = process.process.pid

                def exited(exitcode: int) -> None:
                    process.on_exit = on_worker_exit
                    _note(pid, exitcode)
                    on_worker_exit(exitcode)

                process.on_exit = exited

        on_worker_exit = nanny._on_worker_exit_sync

        def exited(exitcode: int) -> None:
            # a WorkerProcess the nanny made since (one starting): its first worker's exit
            # is noted by its address, if the nanny heard from it, the next ones by pid
            process = nanny.process
            address = getattr(process, "worker_address", None)
            if address is not None and not getattr(process, WATCHED, False):
                _note(address, exitcode)
            watch(process)
            on_worker_exit(exitcode)

        nanny._on_worker_exit_sync = exited  # given to the WorkerProcess it makes
        if nanny.process is None:  # a new nanny: its plugins are set up before its worker
            instantiate = nanny.instantiate

            async def instantiated() -> Any:
                # its worker, started, noted by pid too (until 2026-11-30 a new nanny's
                # first worker was noted by the address the nanny heard: one dying before
                # it greeted its nanny failed its job "... Dask does not say how")
                try:
                    return await instantiate()
                finally:
                    watch(nanny.process)

            nanny.instantiate = instantiated
        watch(nanny.process)


class NoInterrupt(WorkerPlugin):
    """Registered on a local cluster: its worker processes ignore SIGINT, as the process
    executor's do.  They are in the server's process group, and a terminal's Ctrl-C
    reached them too: each closed, Dask's way, as the server began to stop; until
    2026-11-30 a job whose outcome came before the server's abort failed ``worker process
    died (tcp://...); Dask does not say how`` after 10 s, which the stop waited for.  The
    server stops its cluster itself."""

    name = "dahu-no-interrupt"
    idempotent = True

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # (where Dask runs it)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def watch_workers(client: Any) -> None:
    """Register :class:`ExitWatch` and :class:`NoInterrupt` on the local cluster of
    ``client``."""
    client.register_plugin(ExitWatch())
    client.register_plugin(NoInterrupt())


EXIT_WAIT = 10.0
"""Seconds the server waits for a dead worker's exit code.  The scheduler may report the
task lost well before the process exits: one whose plugin closed the worker's sockets
(``os.closerange``) lives on some 5 s, the Dask client in it giving up closing its
dead connections after 3 s at exit (until 2026-11-30 the wait was 5 s, and such a job
failed ``worker process died (...); Dask does not say how``)."""


def exit_code(address: str | None, pid: int | None = None, wait: float = EXIT_WAIT) -> int | None:
    """The exit code of the worker process ``pid`` (at ``address``) once its nanny noted
    it (the scheduler may report the task lost before: :data:`EXIT_WAIT`), None if not
    within ``wait`` s (a nanny in another process: an external cluster)."""
    deadline = time.monotonic() + wait
    keys = [key for key in (pid, address) if key is not None]
    while keys:
        with _exits_lock:  # kept: the tasks queued on it died with it too
            for key in keys:
                if key in _exits:
                    return _exits[key]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return None


MEMORY = "worker-restart-memory"
"""The topic of the event a Dask nanny logs on the scheduler as it ends its worker for
its memory (``distributed.worker.memory.terminate``)."""


def memory_note(client: Any, worker: Any) -> str:
    """``, ended by its nanny: its memory ...`` if the nanny of ``worker`` (the
    scheduler's ``WorkerState`` of a dead worker) ended it for its memory, else ``""``."""
    from dask.utils import format_bytes

    pid = getattr(worker, "pid", None)
    try:
        events = client.get_events(MEMORY) if pid else ()
    except Exception:  # no scheduler to ask: the exit code says what it can
        return ""
    for _, event in reversed(events):
        if isinstance(event, dict) and event.get("pid") == pid:
            rss = format_bytes(event.get("rss") or 0)
            limit = format_bytes(getattr(worker, "memory_limit", None) or 0)
            return (
                f", ended by its nanny: its memory, {rss}, passed the worker's budget "
                f"(distributed.worker.memory.terminate of its {limit} memory limit)"
            )
    return ""


def death_reason(error: Any, local: bool, client: Any = None) -> str:
    """Why a task's worker died (a ``KilledWorker`` ``error``), in one line: its exit code
    if a nanny of the ``local`` cluster noted it, else the worker's address; and whether
    its nanny ended it for its memory, if the scheduler of ``client`` says so (until
    2026-11-30 such a job failed ``worker process died: signal 15 (SIGTERM)``, no more)."""
    worker = getattr(error, "last_worker", None)
    address = getattr(worker, "address", None)
    code = exit_code(address, getattr(worker, "pid", None)) if local else None
    memory = memory_note(client, worker)
    if code is not None:
        return f"worker process died: {exit_text(code)}{memory}"
    where = f" ({address})" if address else ""
    if memory:
        return f"worker process died{where}{memory}"
    return f"worker process died{where}; Dask does not say how: see that worker's log"


STOP_WAIT = 2.0
"""Seconds the outcome of a job whose local worker died of a SIGTERM (not its nanny's, for
its memory) waits for its server's stop to begin: systemd stops a service with a SIGTERM
to each of its processes at once, and the workers may die of it before the server, which
got it too, aborts their jobs."""


def stopped_meanwhile(execution: Any, reason: str) -> None:
    """The worker of the ``DaskExecution`` ``execution`` died for ``reason``: if that is a
    SIGTERM, and its server begins to stop within :data:`STOP_WAIT` s, the job is one the
    stop aborts (its ``abort_reason``), as under the other executors (until 2026-11-30
    a systemd stop failed it ``worker process died: signal 15 (SIGTERM)``)."""
    if reason != f"worker process died: {exit_text(-signal.SIGTERM)}":
        return
    cycle = getattr(execution.executor.host, "cycle", None)
    deadline = time.monotonic() + STOP_WAIT
    while execution.abort_reason is None and time.monotonic() < deadline:
        halted = getattr(cycle, "halted", None)
        if halted is not None:  # the stop has begun: it aborts the job too
            execution.abort_reason = halted
            return
        time.sleep(0.01)
