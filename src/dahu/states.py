"""The job states: one set of strings, as the public API names them."""

from __future__ import annotations

__all__ = ["State"]


class State:
    """Job state strings (the values of ``Job.STATE_*``)."""

    INEXISTANT = "inexistant"
    UNINITIALIZED = "uninitialized"
    STARTING = "starting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    ABORTED = "aborted"

    ALL = (UNINITIALIZED, STARTING, RUNNING, SUCCESS, FAILURE, ABORTED)
    FINAL = frozenset({SUCCESS, FAILURE, ABORTED})
