"""A one-shot flag for the end of a job: the thing waiters wait for."""

from __future__ import annotations

import threading

__all__ = ["Signal"]

_SIGNAL_LOCK = threading.Lock()


class Signal:
    """A one-shot flag that can be waited for, like ``threading.Event``, but that costs
    nothing until somebody waits (most jobs are never waited for one by one)."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True  # written before _event is read: see wait()
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        event = self._event
        if event is None:
            with _SIGNAL_LOCK:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
        if self._set:  # set() ran before the event existed: it did not set it
            return True
        return event.wait(timeout)
