"""Connecting the ``dask`` executor to an external scheduler.

Dask's own connection waits for ever for the greeting of whatever listens at the
address: a service that is no Dask scheduler (an HTTP server, such as the scheduler's
dashboard on port 8787 given for its port 8786) never sends one, and ``Client(address)``
never returns.  :func:`check_scheduler` tries first, within the connect timeout.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

__all__ = ["check_scheduler"]


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
