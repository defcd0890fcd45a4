"""The ``.inp``/``.out`` files of a job in the work directory, as Dahu users know them."""

from __future__ import annotations

import json
import os
from typing import Any

from ..utils import NumpyEncoder

__all__ = ["job_file_stem", "write_job_files", "pretty_json"]

_PRETTY = NumpyEncoder(indent=4)  # the original's indentation (and the fallback below)
_default = _PRETTY.default
_string = json.encoder.encode_basestring_ascii  # C: the original's ensure_ascii strings
_int = int.__repr__
_float = float.__repr__
_INDENTS = ["\n" + "    " * level for level in range(64)]
_known_dirs: set[str] = set()


_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _number(value: float) -> str:
    text = _float(value)
    return _SPECIAL.get(text, text)


def _scalar(value: Any) -> str | None:
    """JSON text of None, a bool, an int or a float; None for anything else."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return _number(value)
    return None


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    text = _scalar(key)
    if text is None:
        raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")
    return text


def _pretty(obj: Any, level: int) -> str:
    if isinstance(obj, str):
        return _string(obj)
    text = _scalar(obj)
    if text is not None:
        return text
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        inner = _INDENTS[level + 1]
        parts = [_string(_key(k)) + ": " + _pretty(v, level + 1) for k, v in obj.items()]
        return "{" + inner + ("," + inner).join(parts) + _INDENTS[level] + "}"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        inner = _INDENTS[level + 1]
        return (
            "["
            + inner
            + ("," + inner).join([_pretty(v, level + 1) for v in obj])
            + (_INDENTS[level] + "]")
        )
    return _pretty(_default(obj), level)


def pretty_json(data: Any) -> str:
    """``data`` as the original's files hold it: ``json.dumps(data, indent=4,
    cls=NumpyEncoder)``, the same text, in a fraction of the time (the standard
    library encodes indented JSON in pure Python)."""
    try:
        return _pretty(data, 0)
    except (IndexError, RecursionError):
        # deeper than the indent table, or circular: the standard encoder says which
        return _PRETTY.encode(data)


def job_file_stem(workdir: str, job_id: int, plugin: str) -> str:
    """``<workdir>/NNNN/NNNNN_<plugin>``: the path of a job's files, without extension."""
    return os.path.join(workdir, f"{job_id // 1000:04d}", f"{job_id:05d}_{plugin}")


_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _libc_calls() -> tuple[Any, Any, Any] | None:
    """``open``, ``write`` and ``close`` of the C library, called *without* releasing
    the GIL (``ctypes.PyDLL``); None where they cannot be found (then ``os`` is used)."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None, use_errno=True)
        c_open, c_write, c_close = libc.open, libc.write, libc.close
        c_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        c_open.restype = ctypes.c_int
        c_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        c_write.restype = ctypes.c_ssize_t
        c_close.argtypes = [ctypes.c_int]
        c_close.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):
        return None
    return c_open, c_write, c_close


_LIBC = _libc_calls() if os.name == "posix" else None


def _write_holding_gil(path: str, text: bytes) -> None:
    """Create ``path`` with ``text`` while holding the GIL (see :func:`write_job_files`)."""
    import ctypes

    c_open, c_write, c_close = _LIBC  # type: ignore[misc]
    fd = c_open(os.fsencode(path), _FLAGS, 0o644)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    try:
        done = 0
        while done < len(text):
            written = c_write(fd, text[done:], len(text) - done)
            if written < 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), path)
            done += written
    finally:
        c_close(fd)


def _write(path: str, text: bytes) -> None:
    fd = os.open(path, _FLAGS, 0o644)
    try:
        done = 0
        while done < len(text):
            done += os.write(fd, text[done:])
    finally:
        os.close(fd)


def write_job_files(
    workdir: str,
    job_id: int,
    plugin: str,
    input_data: Any,
    output_data: Any,
    hold_gil: bool = False,
) -> tuple[str, str]:
    """Write ``<stem>.inp`` and ``<stem>.out`` (indented, numpy-aware JSON); return the paths.

    With ``hold_gil`` (for a disk known to be fast: tmpfs, a local SSD), the files are
    created without releasing the GIL around each of the six system calls.  In a busy
    server each release let another thread take the GIL, and getting it back cost more
    than the call: 280 to 430 µs of wall time for a trivial job's two files on tmpfs
    through the device, 100 µs holding it.  The price: while a call lasts, no other
    thread of the process runs Python code; the engine holds it only while writing files
    takes a fraction of a millisecond (:meth:`dahu.engine.Engine.write_files`).
    """
    stem = job_file_stem(workdir, job_id, plugin)
    directory = os.path.dirname(stem)
    if directory not in _known_dirs:
        os.makedirs(directory, exist_ok=True)
        _known_dirs.add(directory)
    write = _write_holding_gil if hold_gil and _LIBC is not None else _write
    paths = []
    for ext, data in ((".inp", input_data), (".out", output_data)):
        path = stem + ext
        text = pretty_json(data).encode("ascii")
        try:
            write(path, text)
        except FileNotFoundError:  # the directory was removed behind our back
            os.makedirs(directory, exist_ok=True)
            write(path, text)
        paths.append(path)
    return paths[0], paths[1]
