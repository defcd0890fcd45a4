"""The fallback of :mod:`dahu.client` for lost events: no future waits for an event that
will never come (events dropped, a broken subscription, a job that ended before the
client subscribed, a server restart).  Runs in one thread of each client; see
``docs/client.md``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import tango

from .states import State

logger = logging.getLogger("dahu.client")

__all__ = ["watch"]


def watch(client: Any) -> None:
    """The loop of ``client``'s watcher thread (``client`` is a ``DahuClient``).  Once no event has settled a job of ours for
    ``poll_interval`` s: ``waitJob`` on the oldest pending job, and every
    ``sweep_interval`` s (doubling while nothing is found; back to the start when
    jobs are submitted) a check of every pending job, for those that ended behind a
    long one.  After an event error: a check of every pending job at once."""
    period = client.sweep_interval
    next_sweep = time.monotonic() + period
    with tango.EnsureOmniThread():
        while not client._closed:
            client._wake.wait(client.poll_interval)
            client._wake.clear()
            while not client._closed:
                with client._lock:
                    head = next(iter(client._pending.values()), None)
                    fresh, client._fresh = client._fresh, False
                if head is None:
                    break
                now = time.monotonic()
                if fresh:
                    period = client.sweep_interval
                    next_sweep = min(next_sweep, now + period)
                if client._suspect:
                    if _sweep(client, forced=True) < 0:
                        break  # the server is away: try again after a pause
                    continue
                if now - max(client._last_event, head._since) < client.poll_interval:
                    period = client.sweep_interval  # events are flowing: leave it to them
                    next_sweep = now + period
                    break
                if now >= next_sweep:
                    found = _sweep(client, forced=False)
                    if found < 0:
                        next_sweep = time.monotonic() + period
                        break
                    period = (
                        client.sweep_interval
                        if found
                        else min(2 * period, client.max_sweep_interval)
                    )
                    next_sweep = time.monotonic() + period
                    continue
                if not _wait_head(client, head):
                    break


def _wait_head(client: Any, head: Any) -> bool:
    """``waitJob`` on the oldest pending job; True if it has ended."""
    try:
        state = client._proxy().command_inout("waitJob", head.job_id)
    except tango.DevFailed as err:
        if err.args[0].reason == "Dahu_UnknownJob":
            client._ended(head.job_id, None)  # the resolver reports it
            return True
        return False  # timed out on our side, or the server is away: next round
    if state in State.FINAL:
        client._ended(head.job_id, state)
        return True
    return False


def _sweep(client: Any, forced: bool) -> int:
    """Ask the state of every pending job (older than ``poll_interval``); return how
    many had ended unnoticed, -1 if the server could not be asked (a forced sweep
    is then tried again)."""
    client._suspect = False
    cutoff = time.monotonic() - (0 if forced else client.poll_interval)
    with client._lock:
        futures = [f for f in client._pending.values() if f._since <= cutoff]
    found = 0
    proxy = client._proxy()
    for future in futures:
        if client._closed:
            break
        try:
            state = proxy.command_inout("getJobState", future.job_id)
        except tango.DevFailed as err:
            if err.args[0].reason != "Dahu_UnknownJob":
                client._suspect = client._suspect or forced  # the server is away
                return -1
            state = None
        if state is None or state in State.FINAL:
            with client._lock:
                ended = client._pending.get(future.job_id) is future
            if ended:
                found += 1
                client._ended(future.job_id, state)
    if found:
        logger.info("%s: %d job(s) ended without an event", client.device, found)
    return found
