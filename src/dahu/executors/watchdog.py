"""Calls functions after a delay, from one thread: job timeouts and abort grace periods.

A call that may block (a job's timeout calls its plugin's ``abort()``) runs in a thread
of its own, so that it delays no other call."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Watchdog"]


class Watchdog:
    """Calls functions after a delay, from one thread (job timeouts, abort grace periods).

    Cancelled calls are dropped lazily; the heap is rebuilt when they dominate it, so a
    server with a default timeout on every job keeps a bounded heap.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []
        self._counter = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def call_later(
        self, delay: float, function: Callable[[], Any], own_thread: bool = False
    ) -> list[Any]:
        """Call ``function()`` in ``delay`` seconds (``own_thread``: in a new thread, for
        a call that may block); return a handle for :meth:`cancel`."""
        if delay != delay:  # NaN compares false with everything: it would break the heap
            raise ValueError("a watchdog delay cannot be NaN")
        entry = [time.monotonic() + delay, next(self._counter), function, own_thread]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="dahu-watchdog", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:  # due before all others: the thread must wake sooner
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """Forget a call that has not happened yet."""
        with self._cond:
            if entry[2] is not None:
                entry[2] = None
                self._cancelled += 1
                if self._cancelled > 64 and self._cancelled > len(self._heap) // 2:
                    self._heap = [e for e in self._heap if e[2] is not None]
                    heapq.heapify(self._heap)
                    self._cancelled = 0

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    delay = self._heap[0][0] - time.monotonic() if self._heap else None
                    # a wait past threading.TIMEOUT_MAX raises: wake up and look again
                    self._cond.wait(None if delay is None else min(delay, 86400.0))
                entry = heapq.heappop(self._heap)
                function, entry[2] = entry[2], None
                if function is None:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
            if entry[3]:
                try:
                    threading.Thread(target=self._call, args=(function,), daemon=True).start()
                    continue
                except RuntimeError:  # no thread to be had: call it here
                    pass
            self._call(function)

    @staticmethod
    def _call(function: Callable[[], Any]) -> None:
        try:
            function()
        except BaseException:  # the one watchdog thread must survive any call
            logger.exception("watchdog call %r failed", function)
