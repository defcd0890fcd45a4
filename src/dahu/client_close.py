"""The closing of a :mod:`dahu.client` client: unsubscribe, stop its threads, fail the
futures still pending, and wait for its threads no longer than their device calls may
take (a server stopped by a signal holds a Tango call for two or three timeouts and 3 s
of reconnection), see ``docs/client.md``.  Also the end of a client nobody closed nor
holds any more: it is collected, and its threads stop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from typing import Any

import tango

from .client_args import wait_time
from .client_calls import GRACE, ending, patience

logger = logging.getLogger("dahu.client")

__all__ = [
    "close",
    "unsubscribe",
    "unsubscribe_all",
    "resolver_call",
    "handler",
    "resolver",
    "abandoned",
    "hold",
    "release_if_idle",
]

SLICE = 0.1  # s: how often close() looks whether a thread it waits for entered a call


def resolver_call(client: Any, future: Any, millis: int, function: Any, *args: Any) -> Any:
    """``function(*args)``, a device call of a resolver thread fetching ``future``'s
    outcome (allowed ``millis`` ms if more than the client's timeout): :func:`close` waits
    for it no longer than the client's timeout (an outcome's longer allowance neither),
    not Tango's two or three timeouts and 3 s of reconnection, then fails ``future``
    with ``ClientClosed`` (its answer is dropped); the exit waits for it (its thread in
    a Tango call as Python finalizes kills the process) as long as it may take."""
    thread = threading.current_thread()
    span = max(patience(client), millis / 1000)
    client._in_call[thread] = (future, time.monotonic() + patience(client) + GRACE, span)
    try:
        return function(*args)
    finally:
        client._in_call.pop(thread, None)


def unsubscribe(client: Any) -> None:
    """Remove ``client``'s event subscriptions (those that are left)."""
    unsubscribe_all(client._events_proxy, client._subscriptions, client.device)


def unsubscribe_all(proxy: tango.DeviceProxy, subscriptions: list[int], device: str) -> None:
    """Remove the event ``subscriptions`` made through ``proxy`` (the list is emptied)."""
    for subscription in subscriptions:
        try:
            proxy.unsubscribe_event(subscription)
        except tango.DevFailed as err:
            logger.debug("%s: unsubscribe: %s", device, err.args[0].desc)
        except KeyError:  # unsubscribed already, by someone else
            logger.debug("%s: subscription %s was gone", device, subscription)
    subscriptions.clear()  # the watcher's reference to it sees it too


# ---- a client nobody closed nor holds any more -------------------------------------------
# Its threads and event handlers hold it weakly, so that it is collected like any object
# (a script that made a client per scan without closing it kept six threads and two
# subscriptions of each, for ever); then its resolvers stop, and its watcher unsubscribes.
# Not while it has futures pending: their callbacks must run, whoever holds them.
_busy: set[Any] = set()  # clients with futures pending, or submitting


def hold(client: Any) -> None:
    """``client`` has futures pending (called under its lock): it is not collected."""
    _busy.add(client)


def release_if_idle(client: Any, locked: bool = False) -> None:
    """``client`` may be collected once nobody holds it, unless futures are pending
    (asked as its last pending job ends, and by each round of its watcher; ``locked``:
    its lock is held).  Its futures ended are held by the queue of outcomes until read."""
    if not locked:
        with client._lock:
            return release_if_idle(client, locked=True)
    if client._closed or not (client._pending or client._submitting):
        _busy.discard(client)


def handler(ref: weakref.ref, name: str) -> Any:
    """The handler of the change events of ``name`` for the client ``ref`` refers to."""

    def on_event(event: Any) -> None:
        client = ref()
        if client is not None:
            client._event(name, event)

    return on_event


def resolver(ref: weakref.ref, outcomes: queue.SimpleQueue) -> None:
    """The loop of a resolver thread: fetch the outcome of each ended job and settle its
    future, holding the client only meanwhile."""
    with tango.EnsureOmniThread():
        while (item := outcomes.get()) is not None:
            client = ref()
            if client is None:
                return
            client._resolve(*item)
            del client, item


def abandoned(
    outcomes: queue.SimpleQueue, wake: threading.Event, threads: list[threading.Thread]
) -> None:
    """A client was collected without being closed: stop its ``threads`` (the watcher
    unsubscribes: not here, which may run in Tango's event thread), which the exit waits
    for (one in a Tango call as Python finalizes kills the process)."""
    for _ in threads:
        outcomes.put(None)
    wake.set()
    ending[:] = [thread for thread in ending if thread.is_alive()] + threads


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
    client._finalizer.detach()  # closed: nothing for the collector to do
    _busy.discard(client)
    if client._pid == os.getpid():  # in a forked child, Tango's calls abort the process
        unsubscribe(client)  # (omniORB's INV_OBJREF): its subscriptions are the parent's
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
    for future, *_ in list(client._in_call.values()):  # calls not answered in their time
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
