"""Small-file I/O that does not release the GIL, for fast disks.

``os.open``/``os.read``/``os.write``/``os.close`` release the GIL around each system
call.  In a process where other threads want it (a server's job threads, the job slot
that ``dahu-reprocess`` feeds), each release hands the GIL over, and getting it back
costs more than the call itself on tmpfs or a local SSD: 280 to 430 µs of wall time for
a trivial job's two files through the device, 100 µs holding it.  These functions make
the same calls through the C library with ``ctypes.PyDLL``, which keeps the GIL.

The price: while a call lasts, no other thread of the process runs Python code.  Use
them only for small files on a disk measured to be fast (:class:`Speed`); elsewhere the
``os`` functions are right.  :data:`AVAILABLE` is False where the C library's functions
cannot be found (then callers use ``os``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["AVAILABLE", "Speed", "read_file", "write_file"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC
_CHUNK = 1 << 16


def _libc() -> Any:
    """The C library's ``open``, ``read``, ``write``, ``close`` and ``ctypes``, or None."""
    if os.name != "posix":
        return None
    try:
        import ctypes

        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is kept during calls
        c_open, c_read, c_write, c_close = libc.open, libc.read, libc.write, libc.close
    except (ImportError, OSError, AttributeError):
        return None
    c_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    c_open.restype = ctypes.c_int
    c_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    c_read.restype = ctypes.c_ssize_t
    c_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    c_write.restype = ctypes.c_ssize_t
    c_close.argtypes = [ctypes.c_int]
    c_close.restype = ctypes.c_int
    return c_open, c_read, c_write, c_close, ctypes


_LIBC = _libc()
AVAILABLE = _LIBC is not None
_buffers = threading.local()


def _error(path: str) -> OSError:
    code = _LIBC[4].get_errno()
    return OSError(code, os.strerror(code), path)


def write_file(path: str, data: bytes) -> None:
    """Create (or truncate) ``path`` with ``data`` (mode 0o644 less the umask), as
    ``os.open``/``os.write``/``os.close`` would, keeping the GIL."""
    c_open, _, c_write, c_close, _ = _LIBC
    fd = c_open(os.fsencode(path), _WRITE_FLAGS, 0o644)
    if fd < 0:
        raise _error(path)
    try:
        done = 0
        while done < len(data):
            written = c_write(fd, data[done:], len(data) - done)
            if written < 0:
                raise _error(path)
            done += written
    finally:
        c_close(fd)


def read_file(path: str) -> bytes:
    """The bytes of ``path``, as ``os.open``/``os.read``/``os.close`` give them, keeping
    the GIL."""
    c_open, c_read, _, c_close, ctypes = _LIBC
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = ctypes.create_string_buffer(_CHUNK)
    fd = c_open(os.fsencode(path), os.O_RDONLY | _CLOEXEC, 0)
    if fd < 0:
        raise _error(path)
    try:
        chunks = []
        while True:
            count = c_read(fd, buffer, _CHUNK)
            if count < 0:
                raise _error(path)
            if count == 0:
                return b"".join(chunks)
            chunks.append(ctypes.string_at(buffer, count))
    finally:
        c_close(fd)


class Speed:
    """A running mean of how long some I/O takes (seconds), and whether it is fast
    enough to be done holding the GIL (below ``limit``; a single call 8 times slower
    than the limit brings the mean above it)."""

    def __init__(self, limit: float):
        self.limit = limit
        self.mean = 0.0

    def fast(self) -> bool:
        return AVAILABLE and self.mean < self.limit

    def add(self, seconds: float) -> None:
        self.mean += (seconds - self.mean) / 8
