"""How many worker processes the ``process`` executor may have: what the memory allows.

An idle worker takes about 20 MB (resident: the interpreter, numpy, Dahu), a working one
its plugin's data on top; ``--max-workers 4096`` was taken, and a burst of jobs would
have started 4,096 workers (80 GB idle) on a computer of 24 GB.  As for a local Dask
cluster (:func:`~.dask_connect.cluster_size`), a number of workers that gives each less
than :data:`MIN_WORKER_MEMORY` of the memory is refused in one line; the number of
CPUs, asked for by None or 0, is lowered to what the memory allows, logged."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from .thread import worker_count

logger = logging.getLogger(__name__)

__all__ = ["MIN_WORKER_MEMORY", "fitted", "memory_limit", "process_workers"]

MIN_WORKER_MEMORY = 128 * 2**20
"""Bytes of memory a worker process needs at least: about 20 MB idle, and its plugin's
data (a pyFAI integration's worker: 100 MB and more)."""

_CGROUP_LIMITS = (
    "/sys/fs/cgroup/memory.max",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
)


def memory_limit() -> int:
    """Bytes of memory this process and its children may use: the computer's, or its
    control group's when that is less (a container, a batch job)."""
    import psutil  # (here: it imports socket, which a quiet dahu-reprocess need not)

    limit = psutil.virtual_memory().total
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="ascii") as file:
                limit = min(limit, int(file.read().strip()))  # ("max": no limit)
    return limit


def fitted(
    max_workers: Any,
    memory: int,
    minimum: int,
    log: logging.Logger,
    many: str = "worker processes",
    each: str = "each",
    lowered: str = "%d worker processes",
    advice: str = "",
) -> int:
    """The workers ``max_workers`` asks for (:func:`.thread.worker_count`), if ``memory``
    gives each ``minimum`` bytes: else ``ValueError`` in one line ("too many ``many``:
    ``each`` would get ...", then ``advice``), or, for the number of CPUs (None or 0), as
    many as it can have, logged on ``log`` (``lowered``: their kind, with ``%d``)."""
    workers, given = worker_count(max_workers), bool(max_workers)
    most = max(1, memory // minimum)
    if workers <= most:
        return workers
    if not given:
        log.warning(
            f"{lowered}, not one per CPU (%d): %.1f GB of memory gives %d MB to each of %d at most",
            *(most, workers, memory / 2**30, minimum // 2**20, most),
        )
        return most
    raise ValueError(
        f"max_workers {workers} is too many {many}: {each} would get "
        f"{memory // workers // 2**20} MB of this computer's {memory / 2**30:.1f} GB, "
        f"under the {minimum // 2**20} MB one needs: give {most} or fewer{advice}"
    )


def process_workers(max_workers: Any) -> int:
    """The worker processes ``max_workers`` asks for, if the memory gives each
    :data:`MIN_WORKER_MEMORY` (:func:`fitted`)."""
    return fitted(max_workers, memory_limit(), MIN_WORKER_MEMORY, logger)
