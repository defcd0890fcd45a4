"""The exceptions of Dahu, and how an error becomes a one-line reason.

Every error that Dahu itself raises (not plugin code) derives from :class:`DahuError`::

    DahuError
    ├── InvalidInput (also ValueError)   a job input that is not a JSON object
    ├── UnknownPlugin                    a plugin name that resolves to no plugin class
    ├── UnknownJob (also KeyError)       a job id that the journal does not know
    ├── JournalError                     the journal cannot be read or written
    ├── TryAgain                         an answer not ready within a bounded wait
    ├── TooLarge                         an answer larger than a Tango command can send
    └── ExecutorError                    an executor cannot take or run a job

A client always gets a one-line reason (:func:`error_line`, :func:`one_line`); the
traceback goes to the job's error record or to the log.
"""

from __future__ import annotations

__all__ = [
    "DahuError",
    "InvalidInput",
    "UnknownPlugin",
    "UnknownJob",
    "JournalError",
    "TryAgain",
    "TooLarge",
    "ExecutorError",
    "error_line",
    "one_line",
    "shown_name",
    "tango_line",
    "MAX_REASON",
    "MAX_ERROR_CHARS",
    "cut_error",
]

MAX_REASON = 500
"""Longest one-line reason given to a client, in characters."""

MAX_ERROR_CHARS = 65536
"""Longest error text (reason and traceback) a job keeps; longer ones are cut."""
MAX_ERROR_LINE = 8192
"""Longest line of a job's error text that is kept whole."""


class DahuError(Exception):
    """Base class of every error raised by Dahu itself (not by plugin code)."""


class InvalidInput(DahuError, ValueError):
    """A job input that is not a JSON object (dict, JSON text, or JSON file)."""


class UnknownPlugin(DahuError):
    """A plugin name that cannot be resolved to a registered plugin class."""


class UnknownJob(DahuError, KeyError):
    """A job id that the journal does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown job"


class JournalError(DahuError):
    """The journal cannot be read or written."""


class TryAgain(DahuError):
    """The answer is not ready within the bounded wait: the client should call again."""


class TooLarge(DahuError):
    """An answer larger than a Tango command can send (the device's client reads it
    elsewhere: the job's files, ``dahu-jobs show``)."""


class ExecutorError(DahuError):
    """An executor cannot take a job (shut down, cluster unreachable)."""


def _text(obj: object) -> str:
    """``str(obj)``; for one whose ``__str__`` raises (a plugin's exception may), what
    Python's tracebacks print: ``<exception str() failed>``."""
    try:
        return str(obj)
    except Exception:
        kind = "exception" if isinstance(obj, BaseException) else type(obj).__name__
        return f"<{kind} str() failed>"


def one_line(text: object, limit: int = MAX_REASON) -> str:
    """The first non-empty line of ``text``, stripped and cut to ``limit`` characters."""
    for line in _text(text).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def error_line(err: BaseException) -> str:
    """``Type: first line of its message``: an exception as a one-line reason."""
    text = one_line(err, limit=2**31)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def tango_line(err: BaseException) -> str:
    """A Tango ``DevFailed`` as one line: its first error's description (any other error:
    its message, or its type when it has none)."""
    args = getattr(err, "args", ())
    desc = getattr(args[0], "desc", None) if args else None
    return one_line(desc if desc is not None else err) or type(err).__name__


def shown_name(name: str) -> str:
    """A plugin name as an answer or a table shows it: a new line or an escape as its
    escape, and a name past 200 characters cut in its middle, as the reasons of a refused
    job cut it (a name of a megabyte is not echoed whole)."""
    shown = name if name.isprintable() else repr(name)[1:-1]
    return shown if len(shown) <= 200 else f"{shown[:98]}...{shown[-99:]}"


def _cut(text: str, limit: int, sep: str = "") -> str:
    """``text`` as its first and last ``limit // 2`` characters, with a marker between."""
    half = limit // 2
    return f"{text[:half]}{sep}[... {len(text) - 2 * half} characters cut ...]{sep}{text[-half:]}"


def cut_error(text: str | None) -> str | None:
    """A job's error text held to about :data:`MAX_ERROR_CHARS`: a line over
    :data:`MAX_ERROR_LINE` keeps its head and tail (a huge exception message leaves the
    traceback's frames readable), then the text keeps its head and tail."""
    if text is None or len(text) <= MAX_ERROR_CHARS:
        return text
    lines = text.split("\n")
    text = "\n".join(
        _cut(ln, MAX_ERROR_LINE, " ") if len(ln) > MAX_ERROR_LINE else ln for ln in lines
    )
    return text if len(text) <= MAX_ERROR_CHARS else _cut(text, MAX_ERROR_CHARS, "\n")
