"""Connecting the ``dask`` executor to an external scheduler.

Dask's own connection waits for ever for the greeting of whatever listens at the
address: a service that is no Dask scheduler (an HTTP server, such as the scheduler's
dashboard on port 8787 given for its port 8786) never sends one, and ``Client(address)``
never returns.  :func:`check_scheduler` tries first, within the connect timeout.
:func:`connect_again` makes a new client once a scheduler the old one gave up on is back.
:func:`scheduler_address` reads the address a user gives (``--scheduler``, the
``scheduler`` property); :func:`cluster_size` holds a local cluster to what the memory
gives its workers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import error_line
from . import scheduler_address as plain_address  # the word local, blanks
from .pool_size import fitted
from .thread import worker_count

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_WORKER_MEMORY",
    "RETRY",
    "check_scheduler",
    "close_client",
    "cluster_size",
    "connect_again",
    "connected",
    "scheduler_address",
]

RETRY = 2.0
"""Seconds at least between two tries to connect again to a scheduler the client gave up
on; the jobs sent meanwhile fail at once."""

PROBE = 2.0
"""Seconds a try waits for the scheduler's host to answer at all."""

MIN_WORKER_MEMORY = 256 * 2**20
"""Bytes of memory a worker of a local cluster needs at least.  Dask gives each worker the
computer's memory divided by their number, pauses one past 80% of it and has its nanny
restart one past 95%, while a worker takes about 70 MB before any job: 4096 workers on
24 GB would get 6 MB each, and be restarted as soon as they started."""


def check_scheduler(address: str) -> None:
    """Return once a Dask scheduler at ``address`` answers a connection; raise
    ``ConnectionError`` if what listens there does not answer as one (within
    ``distributed.comm.timeouts.connect``, 30 s, and a margin), ``OSError`` if nothing
    listens there, ``ValueError`` for an address Dask cannot read."""
    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect
    from distributed.security import Security

    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    margin = min(timeout, 5.0)  # past Dask's own "Timed out trying to connect" (refused)
    args = Security().get_connection_args("client")  # as the client's (tls:// addresses)

    async def probe() -> None:
        try:
            comm = await asyncio.wait_for(
                connect(address, timeout=timeout, **args), timeout + margin
            )
        except TimeoutError:
            raise ConnectionError(
                f"no Dask scheduler answers at {address} within {timeout:g} s "
                "(a service that is not one listens there: the dashboard's port?)"
            ) from None
        await comm.close()

    with ThreadPoolExecutor(1) as pool:  # a loop of its own, even under a running one
        pool.submit(asyncio.run, probe()).result()


def connect_again(address: str) -> Any:
    """A new ``Client`` of the scheduler at ``address``, back after the old client gave up
    on it; ``OSError`` within :data:`PROBE` s if nothing listens there (Dask's own
    connection would try again for ``distributed.comm.timeouts.connect``, 30 s)."""
    from distributed import Client
    from distributed.comm.addressing import get_address_host_port

    try:
        where = get_address_host_port(address)
    except ValueError:  # not on a host's port (inproc://)
        pass
    else:
        socket.create_connection(where, timeout=PROBE).close()
    check_scheduler(address)
    return Client(address)


def connected(executor: Any) -> Any:
    """The client of the ``DaskExecutor`` ``executor``; ``ConnectionError`` if it is
    closed (a job sent to it would never end).  One that gave up on its external
    scheduler is made again once that is back at its address (tried every :data:`RETRY`
    s at most; until 2026-11-30 the server had to be restarted)."""
    client = executor.client
    if client.status not in ("closing", "closed"):
        return client
    if executor.cluster is not None:  # the local one closed: the server stops
        raise ConnectionError(f"{executor.lost_text} (restart the server to connect again)")
    with executor.connecting:
        if executor.client is client and time.monotonic() >= executor.retry_at:
            executor.retry_at = time.monotonic() + RETRY
            try:
                executor.client = connect_again(executor.scheduler)
                logger.warning("connected again to the dask scheduler %s", executor.scheduler)
            except Exception as err:
                logger.info("the dask scheduler is not back: %s", error_line(err))
        if executor.client.status in ("closing", "closed"):
            raise ConnectionError(
                f"{executor.lost_text} (not back at that address yet: the server connects "
                "again once it is)"
            )
        return executor.client


def close_client(client: Any) -> None:
    """Close ``client`` (the server stops).  One still trying to reconnect to its
    scheduler (gone less than 30 s ago) says nothing of it: until 2026-11-30 Dask logged
    as an ``ERROR`` the ``CancelledError`` of its attempt, with a traceback of some 40
    lines, or ``Failed to reconnect to scheduler after 30.00 seconds``, untrue."""

    def not_cancelled(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError):
            return False
        return not str(record.msg).startswith("Failed to reconnect to scheduler")

    dask_log = logging.getLogger("distributed.client")
    dask_log.addFilter(not_cancelled)
    try:
        client.close()
    finally:
        dask_log.removeFilter(not_cancelled)


def cluster_size(max_workers: Any, scheduler: str) -> int:
    """The workers of a cluster at ``scheduler`` (:func:`.thread.worker_count`); for a
    local one, if this computer's memory gives each fewer than :data:`MIN_WORKER_MEMORY`
    bytes, ``ValueError`` in one line (before any worker process starts), or, for the
    number of CPUs (``max_workers`` None or 0), as many as it can have, logged."""
    if scheduler != "local":
        return worker_count(max_workers)  # its own workers: max_workers is not their number
    from distributed.system import MEMORY_LIMIT  # as Dask counts it: cgroup, rlimit

    return fitted(
        *(max_workers, MEMORY_LIMIT, MIN_WORKER_MEMORY, logger),
        many="for a local Dask cluster",
        each="each worker",
        lowered="a local Dask cluster of %d workers",
        advice=", or the address of a scheduler",
    )


def scheduler_address(text: str | None, option: str = "scheduler") -> str:
    """``local`` for ``text`` empty or the word local (any case, blanks around), else the
    address, stripped; ``ValueError`` in one line, naming ``option``, for one Dask cannot
    read, or not text (until 2026-11-30 ``LOCAL`` failed with ``missing port number in
    address 'LOCAL'``, and ``8786`` with an ``AttributeError``)."""
    if text is not None and not isinstance(text, str):  # the port as a number (8786)
        raise ValueError(
            f"{option}: {text!r} is no scheduler address ({type(text).__name__}, not text): "
            "give tcp://host:8786, or local"
        )
    address = plain_address(text)
    if address == "local":
        return address
    from distributed.comm.addressing import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)  # a scheme Dask knows
        if scheme in ("tcp", "tls"):
            get_address_host_port(address)
    except ValueError as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{option}: {address!r} is no scheduler address ({why}): give tcp://host:8786, or local"
        ) from None
    return address
