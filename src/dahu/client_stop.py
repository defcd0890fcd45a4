"""The pending futures of :mod:`dahu.client` once their server has stopped for good: none
waits for ever for a server that does not come back.  Called by the watcher
(:mod:`dahu.client_watch`) when the server cannot be asked; see ``docs/client.md``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .client_probe import stopped
from .futures import JobAborted, ServerError
from .states import State

logger = logging.getLogger("dahu.client")

__all__ = ["end_stopped", "answered"]


def answered(client: Any) -> None:
    """The server answered: it is not stopped (any more)."""
    client._stopped_since = None


def end_stopped(client: Any) -> None:
    """The server cannot be asked: if it has stopped for good (nothing listens at its
    address, or its device is gone: stopped by its admin device's ``Kill``, whose device
    is gone when the events of the jobs it aborted come), the futures whose jobs were
    told failed fail now instead of waiting for its return, maybe for ever (their outcomes
    are in its journal): :class:`JobAborted`.  A success whose output is unread, and the
    jobs whose end was never told (their events lost as the server ended, or none sent:
    a crash), fail once it has been seen stopped for ``max_sweep_interval``
    s without coming back (a restart gives their real outcome): ``ServerError``
    (``Dahu_ServerStopped``)."""
    with client._lock:
        pending = list(client._pending.values())
    # answered at once by a server that runs: one that does not is not known stopped
    if not pending or not stopped(client.device, min(client._patience(), 0.5)):
        answered(client)  # (or away: stopped by a signal, swapping)
        return
    now = time.monotonic()
    since = client._stopped_since = getattr(client, "_stopped_since", None) or now
    gone = now - since >= client.max_sweep_interval
    told, untold = [], []
    with client._lock:  # taken, logged, then settled: the warning comes before their ends
        for future in pending:
            if client._pending.get(future.job_id) is not future:
                continue  # settled meanwhile
            if gone or future._told not in (None, State.SUCCESS):
                del client._pending[future.job_id]
                (told if future._told else untold).append(future)
    if told:
        first, client._stop_seen = not getattr(client, "_stop_seen", False), True
        logger.log(  # once for a stop (the resolvers hand the jobs over a few at a time)
            logging.WARNING if first else logging.DEBUG,
            "%s: the server has stopped: the futures of the jobs it told ended fail, "
            "their outcomes unread (%d now)",
            client.device,
            len(told),
        )
    if untold:
        logger.warning(
            "%s: the server has been stopped for %.0f s, not back: the futures of the "
            "%d job(s) whose end it did not tell fail",
            client.device,
            now - since,
            len(untold),
        )
    for future in told:
        _fail_told(future, client.max_sweep_interval)
    for future in untold:
        job_id = future.job_id
        reason = (
            f"job {job_id}: its server stopped before it told how the job ended, and has "
            f"not come back within {client.max_sweep_interval:g} s: 'dahu-jobs show "
            f"{job_id}' on its work directory says"
        )
        future._settle(None, error=ServerError(reason, "Dahu_ServerStopped"))


def _fail_told(future: Any, waited: float) -> None:
    job_id = future.job_id
    if future._told == State.SUCCESS:
        reason = (
            f"job {job_id} succeeded, but its server stopped before its output could "
            f"be read, and has not come back within {waited:g} s: 'dahu-jobs show "
            f"{job_id}' on its work directory gives it"
        )
        future._settle(State.SUCCESS, error=ServerError(reason, "Dahu_ServerStopped"))
        return
    reason = (
        f"its server stopped before its outcome could be read (aborted by the stop, "
        f"or failed just before: 'dahu-jobs show {job_id}' on its work directory says)"
    )
    future._settle(None, error=JobAborted(job_id, "aborted", reason))
