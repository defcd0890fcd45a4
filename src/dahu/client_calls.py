"""The device calls of :mod:`dahu.client`: a ``DevFailed`` as one line, a connection
refused tried again within the call's timeout (a server restarting), and the calls made
for the client's users bounded in time (a server stopped by a signal), see
``docs/client.md``.  Also the closing of the clients
still open when the interpreter exits.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import math
import os
import threading
import time
import weakref
from typing import Any

import tango

from .futures import ClientError, JobNotFound, ServerError

__all__ = [
    "new_proxy",
    "spare_proxies",
    "call",
    "ask",
    "within",
    "plugin_list",
    "patience",
    "close_at_exit",
    "caller_thread",
    "callers",
    "same_process",
    "subscribed",
    "TANGO_TIMEOUT",
    "ending",
]

TANGO_TIMEOUT = 3.0  # s: a DeviceProxy's timeout when the client sets none
GRACE = 0.25  # s given to a bounded call past its deadline
RECONNECTION_DELAY = 1.0  # s: Tango tries to connect again after this long at most
# the call never reached the server: nothing was done, it can be made again
REFUSED = ("API_CantConnectToDevice", "API_ServerNotRunning", "API_DeviceNotDefined")


def patience(client: Any) -> float:
    """Seconds a call of ``client`` may take: its timeout."""
    return TANGO_TIMEOUT if client.timeout is None else client.timeout


def new_proxy(client: Any) -> tango.DeviceProxy:
    """A proxy of ``client``'s device for one thread: one of the spares made while the
    server answered (:func:`spare_proxies`), else one made now.  Making one connects
    holding Python's lock: a thread making its own while the server was stopped by a
    signal froze every thread of the client for 3 s (calls bounded to 0.5 s took 3 to
    10 s).  Not a copy of another proxy: copies share their timeout."""
    try:
        proxy = client._spares.pop()
    except (AttributeError, IndexError):  # none made yet, or none left
        try:
            proxy = tango.DeviceProxy(client.device)
        except tango.DevFailed as err:
            raise ServerError.from_devfailed(err, f"cannot connect to {client.device}") from None
    if client.timeout is not None:  # 0: no timeout at all
        proxy.set_timeout_millis(max(1, int(client.timeout * 1000)))
    return proxy


def spare_proxies(client: Any, threads: int) -> list[tango.DeviceProxy]:
    """Proxies for the client's own threads (``threads`` of them besides its callers'),
    made now, while the server answers, for :func:`new_proxy` to hand out."""
    return [new_proxy(client) for _ in range(threads + CALLERS)]


def call(client: Any, command: str, argument: Any = None, millis: int = 0) -> Any:
    """Run a device command of ``client``, allowing it at least ``millis`` ms; a
    ``DevFailed`` becomes a one-line :class:`ServerError`.

    A connection refused (the server is down, or restarting) is tried again until the
    client's timeout is over (not ``millis``, the time the server may take to answer),
    once a second: Tango does not try to connect again sooner (a call within 1 s of a
    refused one fails at once, "The connection request was delayed"), so that a server
    back within the timeout gets the call, once its journal is checked (the server back
    may number its jobs in another one)."""
    deadline, refused = time.monotonic() + patience(client), None
    while True:
        if refused is None or _same_journal(client, argument):
            try:
                return _call_once(client, command, argument, millis)
            except ServerError as err:
                if err.reason not in REFUSED:
                    raise
                refused = err
        left = deadline - time.monotonic()
        if left <= 0:
            raise refused
        client._journal_seen = -math.inf  # the server back may be another one
        time.sleep(min(left, RECONNECTION_DELAY))


def _same_journal(client: Any, argument: Any) -> bool:
    """Before a refused call is made again: the server back may have been restarted on
    another journal, whose ids are of other jobs (a ``startJob`` then made the future of
    the new server's job fail, ``Dahu_JournalChanged``; a job's command would read or
    abort another job).  False while the server cannot be asked."""
    before = client._journal
    if not client._check_journal(math.inf):
        return False
    if client._journal != before and isinstance(argument, int):  # a job id
        raise JobNotFound(
            f"job {argument}: the server {client.device} now has another journal (restarted "
            f"on another work directory?): its job {argument} is another job",
            "Dahu_JournalChanged",
        )
    return True


def _call_once(client: Any, command: str, argument: Any, millis: int) -> Any:
    try:
        proxy = client._proxy()
        base = proxy.get_timeout_millis()
        if millis > base:
            proxy.set_timeout_millis(millis)
        try:
            return proxy.command_inout(command, argument)
        finally:
            if millis > base:
                proxy.set_timeout_millis(base)
    except tango.DevFailed as err:
        raise ServerError.from_devfailed(err, command) from None


logger = logging.getLogger("dahu.client")
_caller_thread = threading.local()  # is_it: in a caller thread of a client


CALLERS = 8  # threads of a client making the calls of its users (a few may be stuck)


def caller_thread() -> None:
    """Mark the running thread as a caller thread of a client (its initializer)."""
    _caller_thread.is_it = True


def same_process(client: Any) -> None:
    """Raise :class:`ClientError` in a process forked from the one that made ``client``:
    its threads stayed there (a call waited for its timeout, then blamed the server:
    "did not answer within 3 s (is its server running...)"; a ``result()`` for ever)."""
    if client._pid != os.getpid():
        raise ClientError(
            f"the client of {client.device} was made in process {client._pid}, not in this "
            f"one ({os.getpid()}, forked from it): make a DahuClient in each process"
        )


_events_pid = 0  # the process whose clients subscribed to events first


def subscribed(client: Any) -> None:
    """``client`` subscribed to its events: warn if this process was forked from one whose
    clients had subscribed, which cppTango then sends no events (measured with PyTango
    10.3: no event reached a client made in a fork, whose futures all ended through the
    watcher's rounds, a second or two each)."""
    global _events_pid
    if _events_pid and _events_pid != os.getpid():
        logger.warning(
            "%s: this process was forked from process %d, which had subscribed to Tango "
            "events: Tango sends it none, and its jobs are known to end only when the "
            "client asks (every poll_interval, sweep_interval s); make clients in processes "
            "started by multiprocessing's 'spawn' or 'forkserver'",
            client.device,
            _events_pid,
        )
    else:
        _events_pid = os.getpid()


def callers(client: Any) -> concurrent.futures.ThreadPoolExecutor | None:
    """The threads of ``client`` that make the calls of :func:`within` (None once the
    client is closed)."""
    same_process(client)
    with client._lock:
        if client._closed:
            return None
        if client._callers is None:
            client._callers = concurrent.futures.ThreadPoolExecutor(
                CALLERS, thread_name_prefix="dahu-client-call", initializer=caller_thread
            )
        return client._callers


def ask(
    client: Any, command: str, argument: Any = None, millis: int = 0, deadline: float = 0.0
) -> Any:
    """:func:`call` made for a user of the client (``submit``, ``state``...): answered,
    or failed with ``API_DeviceTimedOut``, within the client's timeout (``millis`` ms if
    longer), or by ``deadline`` if given.  Never made again once sent: a ``startJob``
    whose answer is lost is reported, not repeated (it would make a second job)."""
    span = max(patience(client), millis / 1000)
    deadline = deadline or time.monotonic() + span
    return within(client, deadline, command, call, client, command, argument, millis, span=span)


def within(
    client: Any, deadline: float, what: str, function: Any, *args: Any, span: float = 0.0
) -> Any:
    """``function(*args)`` run by one of the client's caller threads, waited for until
    ``deadline`` (``time.monotonic()``): a server that does not answer (stopped by a
    signal, swapping) makes Tango take two or three times the timeout for one call, and
    its 3 s of reconnection.  Past the deadline, :class:`ServerError`
    (``API_DeviceTimedOut``: not answered within ``span`` s, the client's timeout if 0)
    in one line; the call may still reach the server later."""
    executor = client._caller()
    if executor is None or getattr(_caller_thread, "is_it", False):
        return function(*args)  # closed, or in a callback run by that thread: no waiting
    try:
        work = executor.submit(function, *args)
    except RuntimeError:  # closed since (the executor shut down): nothing to wait with
        return function(*args)
    try:  # a little longer: a call refused all along then fails with its own reason
        return work.result(max(0.0, deadline - time.monotonic()) + GRACE)
    except concurrent.futures.TimeoutError:
        work.cancel()  # not started yet: never made
        seconds = span or patience(client)
        raise ServerError(
            f"{what}: the device {client.device} did not answer within {seconds:g} s "
            f"(is its server running, at this address?)",
            "API_DeviceTimedOut",
        ) from None


def plugin_list(text: str) -> dict[str, str]:
    """The answer of ``listPlugins``: plugin name → first line of its documentation."""
    if text.startswith("<error>"):
        raise ServerError(f"listPlugins: {text.partition(': ')[2]}", "Dahu_Error")
    plugins = {}
    for line in text.splitlines():  # a header line, then " name : first doc line"
        name, sep, doc = line.strip().partition(" : ")
        if not sep:
            name, sep, doc = line.strip().partition(": ")
        if sep and name and " " not in name:
            plugins[name] = doc.strip()
    return plugins


# ---- at exit ---------------------------------------------------------------------------
_open: weakref.WeakSet = weakref.WeakSet()  # clients not closed yet
ending: list[threading.Thread] = []  # threads of the clients collected without close()


def close_at_exit(client: Any) -> None:
    """Close ``client`` when the interpreter exits, if it is still open then: an event
    that reaches its subscriptions while Python is finalizing made cppTango abort the
    process (``FATAL: exception not rethrown``, SIGABRT)."""
    _open.add(client)


@atexit.register
def _close_all() -> None:
    for client in list(_open):
        client.close(timeout=1.0)
    # a thread of a client (closed now or before) still inside a Tango call as Python
    # finalizes kills the process (SIGABRT, "terminate called without an active
    # exception"): a server stopped by a signal holds a call for two or three timeouts
    # and Tango's 3 s of reconnection; wait for them
    for client in list(_open):  # (an outcome's reading may be allowed longer)
        longest = max([patience(client)] + [c[2] for c in list(client._in_call.values())])
        deadline = time.monotonic() + 3 * longest + 2 * TANGO_TIMEOUT
        for thread in client._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    deadline = time.monotonic() + 3 * TANGO_TIMEOUT  # (their client's timeout is gone)
    for thread in ending:
        thread.join(max(0.0, deadline - time.monotonic()))
