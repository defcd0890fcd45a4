"""How the ``DahuDS`` device pushes its change events (``jobSuccess``/``jobFailure``
per job, ``statisticsCollected``).

Events come from the engine's files thread and the device's event thread.  They are
pushed through the object serving the device now (a ``DevRestart`` replaces it), never
while one is deleted or being made (``push_lock``; libtango crashed).  The events of jobs
that end meanwhile, during an ``Init`` or a ``DevRestart``, are held and pushed, in order,
before any later one, once the device is made again and has its subscribers: a
subscriber hears of every job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import tango

from .server_settings import current, push_lock, pushed, stopping

logger = logging.getLogger(__name__)

__all__ = ["push_event", "ready_to_push", "ready_when_subscribed", "stop_pushing"]

EVENTS = ("jobSuccess", "jobFailure", "statisticsCollected")
RESUBSCRIBED_WITHIN = 30.0
"""Longest wait, after a ``DevRestart``, for Tango to give the new object its subscribers
(1.3 s after the object is made on a loaded machine: a 2 s wait gave up too early)."""


def push_event(device: Any, name: str, value: Any) -> None:
    """Push a change event of ``name`` through the object serving ``device`` now, or
    hold it while that object is being made."""
    with push_lock:
        device = current(device)
        if stopping():
            return  # the Tango loop has ended: nobody can be told
        if not getattr(device, "_ready", False):
            device._held.append((name, value))
            return
        _send(device, name, value)


def stop_pushing(device: Any) -> None:
    """``device`` is being deleted (``Init``, ``DevRestart``, stop): no event is pushed
    through it from now on, even if its event thread still waits for its subscribers."""
    with push_lock:
        device._ready = False
        device._deleted = True


def ready_to_push(device: Any) -> None:
    """``device`` is made: push the events held meanwhile, then every later one (none if
    it was deleted meanwhile: the object made next pushes them)."""
    with push_lock:  # the files thread waits for it: the held events go first
        if getattr(device, "_deleted", False):
            return
        device._ready = True
        held, device._held[:] = device._held[:], []
        for name, value in held:
            _send(device, name, value)


def subscribed(device: Any) -> tuple[str, ...]:
    """The events of ``device`` that a client is subscribed to."""
    try:
        return tuple(
            n for n in EVENTS if device.is_there_subscriber(n, tango.EventType.CHANGE_EVENT)
        )
    except tango.DevFailed:  # not there (yet): as if none
        return ()


def ready_when_subscribed(device: Any, replaced: bool) -> None:
    """``device`` is made: :func:`ready_to_push`; when it replaced another object (a
    ``DevRestart``), once it has a subscriber, at most :data:`RESUBSCRIBED_WITHIN` s.
    Tango gives that new object the subscribers of the one it deleted only once it is
    made (and the deleted one may already say it has none): the events held meanwhile,
    pushed before, reached nobody.  A ``DevRestart`` that deletes ``device`` meanwhile
    ends the wait: the events stay held for the object made next."""
    start = time.monotonic()
    while replaced and not subscribed(device) and not getattr(device, "_deleted", False):
        waited = time.monotonic() - start
        if waited >= RESUBSCRIBED_WITHIN:
            break
        time.sleep(0.002 if waited < 1.0 else 0.02)  # nobody subscribed: a slow poll
    ready_to_push(device)


def _send(device: Any, name: str, value: Any) -> None:
    """Push if a client is subscribed (Tango sends nothing to nobody; PyTango's push
    alone costs the files thread up to 100 µs)."""
    try:
        if device.is_there_subscriber(name, tango.EventType.CHANGE_EVENT):
            device.push_change_event(name, value)
            pushed()
    except tango.DevFailed as err:
        logger.warning("cannot push %s=%s: %s", name, value, err.args[0].desc)
    except Exception:
        logger.exception("cannot push %s=%s", name, value)
