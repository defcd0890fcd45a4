"""Keeping the local Dask cluster at its size while its workers are restarted."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LOST_WORKER_TIMEOUT", "WATCH", "Keeper"]

LOST = "distributed.deploy.lost-worker-timeout"
LOST_WORKER_TIMEOUT = "1000d"
"""The server's ``distributed.deploy.lost-worker-timeout`` (Dask's is 15 s): a local
cluster closes for good the nanny of a worker away that long after any exit of its worker,
even one back and gone again (restarting after a second exit about that much later): the
job that had begun there failed ``worker process died: exit code 0``, and the cluster could
be left with no workers, a task sent then never ending.  Its nannies run in the server's
process: one is never lost but with the server."""

WATCH = 45.0
"""Seconds the cluster's size is watched after a restart of ours."""


class Keeper:
    """Watches that the local ``cluster`` gets back to ``size`` workers after a restart.

    The cluster closes the nanny of a worker still away ``distributed.deploy.lost-worker-
    timeout`` (15 s) after it left, even one of ours restarting (a hung plugin's worker is
    killed 4 s after it is told to close; on a busy machine, or restarted twice, it is
    away longer); such a nanny is started again (until 2026-11-30 the cluster stayed a
    worker short, or with none left).  Made with the cluster, it sets the timeout to
    :data:`LOST_WORKER_TIMEOUT` in the server's process: the cluster reads it as a worker
    leaves."""

    def __init__(self, cluster: Any, client: Any, size: int):
        import dask

        dask.config.set({LOST: LOST_WORKER_TIMEOUT})  # for good, not only for a block
        self.cluster = cluster
        self.client = client
        self.size = size
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._until = 0.0  # the cluster's size is watched until then
        self._thread: threading.Thread | None = None

    def keep(self) -> None:
        """A worker is restarted: watch the cluster's size for a while."""
        with self._lock:
            self._until = time.monotonic() + WATCH
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._keep, name="dahu-dask-keeper", daemon=True
                )
                self._thread.start()

    def _keep(self) -> None:
        cluster = self.cluster
        while not self.closing.wait(0.5) and time.monotonic() < self._until:
            closed = set(cluster.worker_spec) - set(list(cluster.workers))
            if closed:
                logger.warning("starting again the closed worker(s) %s", sorted(closed))
                cluster.scale(self.size)
        with contextlib.suppress(Exception):
            left = len(self.client.scheduler_info()["workers"])
            if not self.closing.is_set() and left < self.size:
                logger.warning(
                    "the local cluster has %d of its %d workers: the jobs run on those left",
                    left,
                    self.size,
                )

    def close(self) -> None:
        """Stop watching (the cluster closes)."""
        self.closing.set()
        if self._thread is not None:
            self._thread.join(5)
