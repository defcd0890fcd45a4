"""How the Tango device reports errors: a ``DevFailed`` with a one-line description.

Every command of ``DahuDS`` is wrapped by :func:`client_errors`.  It keeps the Python
state of the thread that runs it (:mod:`dahu.server_threads`).  Dahu's own errors carry
their message and a reason code (``Dahu_InvalidInput``, ``Dahu_UnknownPlugin``,
``Dahu_UnknownJob``, ``Dahu_TryAgain``, ``Dahu_TooLarge``, ``Dahu_Error``); anything
unexpected is logged with its traceback on the server and reported as
``Dahu_InternalError``.  An answer a Tango message cannot hold is refused with
``Dahu_TooLarge`` (:data:`MAX_ANSWER_CHARS`), not with omniORB's ``MARSHAL`` error.
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
    TooLarge,
    TryAgain,
    UnknownJob,
    UnknownPlugin,
    error_line,
    one_line,
)
from .journal import job_file_stem
from .server_threads import keep_thread_state

logger = logging.getLogger(__name__)

__all__ = [
    "UnknownJob",
    "TryAgain",
    "one_line",
    "client_errors",
    "latin1_text",
    "sendable",
    "job_answer",
    "input_answer",
    "follow_orb_options",
    "MAX_REASON",
]

TANGO_MAX_MESSAGE = 256 * 1024 * 1024
"""Bytes of one Tango message at most: omniORB's ``giopMaxMsgSize``, which Tango sets in
every server and client (the ``ORBgiopMaxMsgSize`` environment variable does not change
it; a server's ``-ORBgiopMaxMsgSize N`` option does).  A longer answer failed with
``MARSHAL_MessageSizeExceedLimitOnServer``."""
HEADERS = 4096
"""Bytes left for a reply's headers (37 measured)."""
MAX_ANSWER_CHARS = TANGO_MAX_MESSAGE - HEADERS
"""Characters of a command's text answer at most (a ``DevString`` is Latin-1, a byte a
character); see :func:`follow_orb_options`."""
MIB = 1024 * 1024


def _reason_code(err: BaseException) -> str:
    for klass, code in (
        (InvalidInput, "Dahu_InvalidInput"),
        (UnknownJob, "Dahu_UnknownJob"),
        (UnknownPlugin, "Dahu_UnknownPlugin"),
        (TryAgain, "Dahu_TryAgain"),
        (TooLarge, "Dahu_TooLarge"),
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
            if isinstance(result, str):
                return sendable(result, f"the answer of {method.__name__}")
            return result
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


def sendable(text: str, what: str, where: Callable[[], str] | None = None) -> str:
    """``text`` as a command answers it (:func:`latin1_text`); if it is more than
    :data:`MAX_ANSWER_CHARS`, :class:`TooLarge`, saying ``where()`` to read it instead."""
    text = latin1_text(text)
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    raise _too_large(len(text), what, where)


def _too_large(chars: int, what: str, where: Callable[[], str] | None) -> TooLarge:
    size, limit = chars / MIB, MAX_ANSWER_CHARS / MIB
    return TooLarge(
        f"{what} is {size:.0f} MiB, more than a Tango command can send ({limit:.0f} MiB)"
        + (f": {where()}" if where is not None else "")
    )


def job_answer(text: str | Callable[[], str], what: str, job_id: int, engine: Any) -> str:
    """``text``, the ``input`` or ``output`` (``what``) of job ``job_id`` of ``engine``,
    as a command answers it (:func:`sendable`); too large, the error says where to read
    it: the job's ``.inp``/``.out`` file, or ``dahu-jobs show``.  ``text`` may be the
    function that makes it: a text the journal knows too large is then refused without
    it (:meth:`~dahu.journal.base.Journal.output_chars`, ``input_chars``)."""

    def _input_chars() -> int | None:  # of a job out of memory: not decoded to be refused
        run = engine.table.find(job_id)
        return engine.journal.input_chars(job_id) if run is None or run.input_data is None else None

    def where() -> str:
        workdir, plugin = engine.workdir, engine.info(job_id)["plugin"]
        path = job_file_stem(workdir, job_id, plugin) + (".out" if what == "output" else ".inp")
        return f"read it from {path} or with dahu-jobs show {job_id} -w {workdir}"

    if callable(text):
        chars = engine.journal.output_chars(job_id) if what == "output" else _input_chars()
        if chars is not None and chars > MAX_ANSWER_CHARS and engine.info(job_id):  # not pruned
            raise _too_large(chars, f"the {what} of job {job_id}", where)  # JSON text: ASCII
        text = text()
    return sendable(text, f"the {what} of job {job_id}", where)


def input_answer(job: Any, engine: Any) -> str:
    """The input of ``job`` (a :class:`dahu.job.Job`) as ``getJobInput`` answers it
    (:func:`job_answer`): made only if it can be sent."""
    return job_answer(lambda: engine.input_text(job.id, job.input_data), "input", job.id, engine)


def follow_orb_options(tango_args: list[str]) -> None:
    """Hold answers to the ``-ORBgiopMaxMsgSize N`` of the server's command line, if
    given (N >= 8192; 0, omniORB's "no limit", leaves Tango's)."""
    global MAX_ANSWER_CHARS
    for option, value in zip(tango_args, tango_args[1:], strict=False):
        if option == "-ORBgiopMaxMsgSize" and value.isdigit() and int(value) >= 8192:
            MAX_ANSWER_CHARS = int(value) - HEADERS
