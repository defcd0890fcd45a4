"""Keeping the local Dask cluster at its size while its workers are restarted."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Keeper"]


class Keeper:
    """Watches that the local ``cluster`` gets back to ``size`` workers after a restart.

    The cluster closes the nanny of a worker still away ``distributed.deploy.lost-worker-
    timeout`` (15 s) after it left, even one of ours restarting (a hung plugin's worker is
    killed 4 s after it is told to close; on a busy machine, or restarted twice, it is
    away longer); such a nanny is started again (until 2026-11-30 the cluster stayed a
    worker short, or with none left)."""

    def __init__(self, cluster: Any, client: Any, size: int):
        self.cluster = cluster
        self.client = client
        self.size = size
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._until = 0.0  # the cluster's size is watched until then
        self._thread: threading.Thread | None = None

    def keep(self) -> None:
        """A worker is restarted: watch the cluster's size for a while."""
        import dask
        from dask.utils import parse_timedelta

        lost = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
        with self._lock:
            self._until = time.monotonic() + lost + 30
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
