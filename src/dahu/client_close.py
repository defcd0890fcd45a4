"""The closing of a :mod:`dahu.client` client: unsubscribe, stop its threads, fail the
futures still pending, and wait for its threads no longer than their device calls may
take (a server stopped by a signal holds a Tango call for two or three timeouts and 3 s
of reconnection), see ``docs/client.md``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import tango

from .client_args import wait_time
from .client_calls import GRACE, patience

logger = logging.getLogger("dahu.client")

__all__ = ["close", "unsubscribe", "resolver_call"]

SLICE = 0.1  # s: how often close() looks whether a thread it waits for entered a call


def resolver_call(client: Any, future: Any, millis: int, function: Any, *args: Any) -> Any:
    """``function(*args)``, a device call of a resolver thread fetching ``future``'s
    outcome (allowed ``millis`` ms if more than the client's timeout): :func:`close` waits
    for it as long as the call may take, not Tango's two or three timeouts and 3 s of
    reconnection, then fails ``future`` with ``ClientClosed`` (its answer is dropped)."""
    thread = threading.current_thread()
    span = max(patience(client), millis / 1000) + GRACE
    client._in_call[thread] = (future, time.monotonic() + span)
    try:
        return function(*args)
    finally:
        client._in_call.pop(thread, None)


def unsubscribe(client: Any) -> None:
    """Remove ``client``'s event subscriptions (those that are left)."""
    for subscription in client._subscriptions:
        try:
            client._events_proxy.unsubscribe_event(subscription)
        except tango.DevFailed as err:
            logger.debug("%s: unsubscribe: %s", client.device, err.args[0].desc)
        except KeyError:  # unsubscribed already, by someone else
            logger.debug("%s: subscription %s was gone", client.device, subscription)
    client._subscriptions = []


def close(client: Any, timeout: float = 10.0) -> None:
    """Unsubscribe, stop the client's threads and fail the futures still pending with
    :class:`ClientClosed` (their jobs go on on the server).

    Waits for the client's threads at most ``timeout`` s, and for one in a device call no
    longer than that call may take (the client's timeout): a call to a server that does
    not answer is left to Tango, and its future fails with ``ClientClosed``."""
    timeout = wait_time("timeout", timeout)  # before anything is closed
    with client._lock:
        if client._closed:
            return
        client._closed = True
        pending = list(client._pending.values())
        client._pending.clear()
    unsubscribe(client)
    if client._callers is not None:  # a call it makes now may still end, unheard
        client._callers.shutdown(wait=False, cancel_futures=True)
    client._wake.set()
    for _ in client._threads:
        client._outcomes.put(None)
    for future in pending:  # first: a callback of our threads may wait for one
        future._settle(None, error=client._closed_error(future))
    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    for thread in client._threads:
        while thread is not current and thread.is_alive():
            call = client._in_call.get(thread)
            end = deadline if call is None else min(deadline, call[1])
            if end <= time.monotonic():
                break
            thread.join(max(0.0, min(SLICE, end - time.monotonic())))
    for future, _ in list(client._in_call.values()):  # calls not answered in their time
        future._settle(None, error=client._closed_error(future))
    # outcomes fetched by nobody: their futures must not hang either
    while True:
        try:
            item = client._outcomes.get_nowait()
        except queue.Empty:
            break
        if item is not None and not item[0].done():
            item[0]._settle(None, error=client._closed_error(item[0]))
    for thread in client._threads:  # still running (a callback calling close(), a call
        if thread.is_alive():  # not waited for): its stop signal was drained above
            client._outcomes.put(None)
