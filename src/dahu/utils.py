"""Small helpers shared by Dahu and its plugins (public API)."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import error_line, one_line

__all__ = [
    "NumpyEncoder",
    "get_isotime",
    "get_workdir",
    "fully_qualified_name",
    "dumps",
    "compact_json",
    "gc_paused",
    "freeze_while",
    "error_line",
    "one_line",
    "seconds",
]


class NumpyEncoder(json.JSONEncoder):
    """JSON encoder that also writes numpy arrays (as lists) and numpy scalars."""

    def default(self, obj: Any) -> Any:
        # numpy is not imported here (it would cost a tenth of a second to every tool
        # that imports Dahu): an object can be a numpy one only once numpy is imported
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            if isinstance(obj, numpy.ndarray):
                return obj.tolist()
            if isinstance(obj, numpy.generic):
                value = obj.item()
                if isinstance(value, numpy.generic):  # longdouble: no Python type holds it
                    value = complex(value) if numpy.iscomplexobj(value) else float(value)
                return value
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        if isinstance(obj, bytes):
            return obj.decode("utf-8", errors="replace")
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        return super().default(obj)


_COMPACT = NumpyEncoder()
_STRICT = NumpyEncoder(allow_nan=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
# The C encoder of ``_COMPACT``, made once: ``JSONEncoder.encode`` makes a new one (and
# its circular-reference table) on every call, which took half the time of encoding a
# job's small input or output.  Without the table, a circular structure ends in a
# RecursionError, and the standard encoder is then asked for its own error.
_compact_c = (
    _c_make_encoder(
        None,
        lambda obj: _COMPACT.default(obj),  # looked up at each call, as encode() does
        json.encoder.encode_basestring_ascii,
        None,
        _COMPACT.key_separator,
        _COMPACT.item_separator,
        False,
        False,
        True,
    )
    if _c_make_encoder is not None
    else None
)


def compact_json(obj: Any) -> str:
    """``obj`` as one line of JSON: ``json.dumps(obj, cls=NumpyEncoder)``, the same text
    and the same errors, in half the time."""
    if _compact_c is None:
        return _COMPACT.encode(obj)
    try:
        return "".join(_compact_c(obj, 0))
    except RecursionError:
        return _COMPACT.encode(obj)  # "Circular reference detected", or its RecursionError


_KEYS = (str, int, float, bool, type(None))


#: ints of up to this many bits have fewer than 4,300 digits (Python's default limit
#: for writing an int as text)
_SAFE_INT_BITS = 14_000


def jsonable(obj: Any, limit: int = 1000) -> Any:
    """A copy of ``obj`` that JSON can encode, as close to it as can be: a key JSON
    refuses (a tuple...) becomes its ``str``, a value neither JSON nor
    :class:`NumpyEncoder` takes (an object...) its ``repr`` (at most ``limit``
    characters), and so does a dict or list inside itself (``{'a': 1, 'me': {...}}``) and
    an int too long for Python to write.
    Everything else is kept as it is.  Raises what a structure too deep raises
    (``RecursionError``)."""
    return _jsonable(obj, limit, set())


def _jsonable(obj: Any, limit: int, inside: set[int]) -> Any:
    """:func:`jsonable`; ``inside`` holds the ids of the containers being converted."""
    if isinstance(obj, (dict, list)):
        if id(obj) in inside:
            return text_of(obj, repr, limit)
        inside.add(id(obj))
        try:
            if isinstance(obj, list):
                return [_jsonable(value, limit, inside) for value in obj]
            return {
                (key if isinstance(key, _KEYS) else text_of(key, str, limit)): _jsonable(
                    value, limit, inside
                )
                for key, value in obj.items()
            }
        finally:
            inside.discard(id(obj))
    if isinstance(obj, int) and obj.bit_length() > _SAFE_INT_BITS:
        try:  # Python refuses to write an int of over 4,300 digits as text
            str(obj)
        except ValueError:
            return text_of(obj, repr, limit)
        return obj
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    try:
        converted = _COMPACT.default(obj)  # numpy, sets, tuples, bytes, paths
    except Exception:
        return text_of(obj, repr, limit)
    return _jsonable(converted, limit, inside)


def text_of(obj: Any, how: Callable[[Any], str] = repr, limit: int = 1000) -> str:
    """``how(obj)`` cut to ``limit`` characters, or a placeholder if it raises (an int of
    over 4,300 digits, a class whose ``__repr__`` fails)."""
    try:
        return how(obj)[:limit]
    except RecursionError:
        return f"<{type(obj).__name__} object nested too deep to be written>"
    except Exception as err:
        return f"<{type(obj).__name__} object: {how.__name__}() failed: {safe_str(err)}>"


def safe_str(obj: Any) -> str:
    """``str(obj)``, or the name of its type if that raises."""
    try:
        return str(obj)
    except Exception:
        return type(obj).__name__


def utf8_text(text: Any) -> Any:
    """``text`` with any lone surrogate (a file name's undecodable byte, a ``\\udXXX`` JSON
    escape) written as its escape: text UTF-8, SQLite and Tango can carry.  Anything that
    is not a string is returned as it is."""
    if not isinstance(text, str) or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def standard_json(obj: Any, indent: int | None = None) -> str:
    """``obj`` as standard JSON, which every parser reads: a float that is not finite
    (NaN, ±Infinity, which Python writes as the words ``NaN``, ``Infinity``) is written
    as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (``float()`` reads it back).
    ASCII, with :class:`NumpyEncoder`; one line, or indented by ``indent``."""
    encoder = _STRICT if indent is None else NumpyEncoder(allow_nan=False, indent=indent)
    try:
        return encoder.encode(obj)
    except ValueError as err:
        if not str(err).startswith("Out of range float"):
            raise
    # rare: write it as Python does, then read the non-standard words back as strings
    return encoder.encode(json.loads(compact_json(obj), parse_constant=str))


def dumps(obj: Any, indent: int | None = None) -> str:
    """Serialise ``obj`` to JSON with :class:`NumpyEncoder`."""
    if indent is None:
        return compact_json(obj)
    return json.dumps(obj, cls=NumpyEncoder, indent=indent)


def get_isotime(forceTime: float | None = None, for_path: bool = False) -> str:  # noqa: N803
    """Return the local time as an ISO-8601 string with the UTC offset.

    :param forceTime: a time stamp (seconds since the epoch) to format instead of now
    :param for_path: give the form used in file names, ``2024-02-22T14h05m09``
    """
    when = time.time() if forceTime is None else forceTime
    local = time.localtime(when)
    if for_path:  # the original's file-name form: local time, no offset, no ":"
        return time.strftime("%Y-%m-%dT%Hh%Mm%S", local)
    offset = time.strftime("%z", local)
    offset = f"{offset[:3]}:{offset[3:]}" if len(offset) == 5 else offset
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + offset


_workdir: tuple[int, str] | None = None  # (pid, path) of this process's directory
_workdir_lock = threading.Lock()


def get_workdir(basedir: str | None = None) -> str:
    """Return this process's working directory, creating it on first use.

    The directory is ``<basedir>/dahu_<user>/<date-time>_<pid>``, ``basedir`` being the
    system's temporary directory by default.  Every call in one process returns the same
    directory, unless ``basedir`` names another place (then a directory is made there
    and kept from then on).
    """
    global _workdir
    base = os.path.abspath(basedir) if basedir else None
    with _workdir_lock:
        if _workdir is not None and _workdir[0] == os.getpid():
            path = _workdir[1]
            if base is None or path.startswith(base + os.sep):
                return path
        import getpass  # here: it and tempfile cost a command line's start 5 ms
        import tempfile

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        name = f"{get_isotime(for_path=True)}_{os.getpid()}"
        path = os.path.join(base or tempfile.gettempdir(), f"dahu_{user}", name)
        os.makedirs(path, exist_ok=True)
        _workdir = (os.getpid(), path)
        return path


def __getattr__(name: str) -> Any:
    """``dahu.utils.workdir``: the original's module variable, the directory of
    :func:`get_workdir` (the original made it when ``dahu`` was imported)."""
    if name == "workdir":
        return get_workdir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fully_qualified_name(obj: Any) -> str:
    """Return the lower-case ``module.name`` of a class, a function or an instance."""
    if not hasattr(obj, "__qualname__") and not hasattr(obj, "__name__"):
        obj = obj.__class__
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__name__", None) or obj.__class__.__name__
    return f"{module}.{name}".lower() if module else name.lower()


_gc_pauses = 0
_gc_lock = threading.Lock()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many long-lived objects are made.

    Creating a batch of jobs allocates many small objects that all stay alive; the
    collector would scan them again and again.  Nested and concurrent pauses are
    counted; the collector resumes after the last one (unless it was off before).
    """
    global _gc_pauses
    with _gc_lock:
        paused = _gc_pauses > 0 or gc.isenabled()
        if paused:
            _gc_pauses += 1
            gc.disable()
    try:
        yield
    finally:
        if paused:
            with _gc_lock:
                _gc_pauses -= 1
                if _gc_pauses == 0:
                    gc.enable()


_frozen = False  # objects were frozen by freeze_while, and a check to release them is due


def freeze_while(
    busy: Callable[[], bool], call_later: Callable[..., Any], period: float, limit: float
) -> None:
    """Take every object the collector tracks out of its scans (``gc.freeze()``) until
    ``busy()`` is false, checked every ``period`` s through ``call_later(delay, f)``;
    meanwhile, each check freezes the objects made since.

    For the objects of a large batch of queued jobs, and of those that ended and wait for
    their files: otherwise each full collection scans them all (seconds holding the GIL
    for 400,000 jobs).  Frozen objects that become cyclic garbage are collected once they
    are released; while ``busy()`` stays true, every ``limit`` s they are released and
    collected (one full collection), then frozen again: that garbage does not pile up.
    Objects frozen before (``dahu_server`` freezes its long-lived ones as it starts) are
    frozen again at the end, after a full collection, with those made since that
    survive it (until 2026-11-30 the release left them all to the collector for good).
    """
    global _frozen
    since = time.monotonic()
    kept = gc.get_freeze_count() > 0

    def check() -> None:
        global _frozen
        nonlocal since
        with _gc_lock:
            if not busy():
                _frozen = False
                gc.unfreeze()
                if kept:
                    gc.collect()
                    gc.freeze()
                return
            if time.monotonic() - since >= limit:
                gc.unfreeze()
                gc.collect()
                since = time.monotonic()
            gc.freeze()
        call_later(period, check)

    with _gc_lock:
        gc.freeze()
        if _frozen:
            return
        _frozen = True
    call_later(period, check)


def seconds(value: Any) -> float | None:
    """``value`` (a job timeout, from a job input or a plugin) as a number of seconds;
    None if it is not a number: text that is not one (``"30"`` is 30), a bool, None or
    NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def not_seconds(value: Any) -> str:
    """Why :func:`seconds` found no number in ``value``, in one short line: its text
    (cut past 40 characters) and ``not a number``, or ``too large`` for an integer of
    hundreds of digits (no float holds it)."""
    text = repr(value)
    text = f"{text[:20]}... ({len(text)} characters)" if len(text) > 40 else text
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{text}: too large for a number of seconds"
    return f"{text}: not a number"


def wait_timeout(timeout: float | None) -> float | None:
    """A timeout to wait with (``Event.wait``): None past 1e9 s (forever: 1e10 overflowed
    the system's timers); NaN, which ``Event.wait`` took as no wait at all, is a
    ``ValueError`` in one line, as ``Thread.join`` refuses it."""
    if timeout is not None and timeout != timeout:
        raise ValueError("timeout NaN is not a number of seconds")
    return None if timeout is None or timeout > 1e9 else timeout
