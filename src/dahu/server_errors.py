"""How the Tango device reports errors: a ``DevFailed`` with a one-line description.

Every command of ``DahuDS`` is wrapped by :func:`client_errors`.  It keeps the Python
state of the thread that runs it (:mod:`dahu.server_threads`).  Dahu's own errors carry
their message and a reason code (``Dahu_InvalidInput``, ``Dahu_UnknownPlugin``,
``Dahu_UnknownJob``, ``Dahu_TryAgain``, ``Dahu_Error``); anything unexpected is logged
with its traceback on the server and reported as ``Dahu_InternalError``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import tango

from .errors import (
    MAX_REASON,
    DahuError,
    InvalidInput,
    TryAgain,
    UnknownJob,
    UnknownPlugin,
    error_line,
    one_line,
)
from .server_threads import keep_thread_state

logger = logging.getLogger(__name__)

__all__ = ["UnknownJob", "TryAgain", "one_line", "client_errors", "latin1_text", "MAX_REASON"]


def _reason_code(err: BaseException) -> str:
    for klass, code in (
        (InvalidInput, "Dahu_InvalidInput"),
        (UnknownJob, "Dahu_UnknownJob"),
        (UnknownPlugin, "Dahu_UnknownPlugin"),
        (TryAgain, "Dahu_TryAgain"),
    ):
        if isinstance(err, klass):
            return code
    return "Dahu_Error"


def client_errors(method: Callable) -> Callable:
    """Turn any exception of a command into a ``DevFailed`` with a one-line description.

    Dahu's own errors carry their message; anything unexpected is logged with its
    traceback here, and the client gets ``Type: first line``.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        keep_thread_state()  # the next command on this thread finds its Python state
        try:
            result = method(self, *args)
            return latin1_text(result) if isinstance(result, str) else result
        except tango.DevFailed:
            raise
        except DahuError as err:
            logger.debug("%s refused: %s", method.__name__, err)
            reason, text = _reason_code(err), one_line(str(err)) or type(err).__name__
        except Exception as err:
            logger.exception("%s failed", method.__name__)
            reason = "Dahu_InternalError"
            text = one_line(error_line(err))
        if not text.isascii():  # sent as UTF-8 and read as Latin-1: escapes only
            text = text.encode("ascii", "backslashreplace").decode("ascii")
        tango.Except.throw_exception(reason, text, f"DahuDS.{method.__name__}")

    return wrapper


def latin1_text(text: str) -> str:
    """``text`` as a Tango ``DevString`` can carry it: PyTango sends it as Latin-1, and
    fails the command on a character Latin-1 lacks (the theta of "2θ"), which is written
    as its escape (``\\u03b8``) instead.  Latin-1 text (``é``, ``°``) is left as it is."""
    if text.isascii():
        return text
    return text.encode("latin-1", "backslashreplace").decode("latin-1")
