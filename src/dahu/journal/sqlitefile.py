"""The journal's SQLite file seen from outside a journal object: a connection for the
readers beside the server, the identity of the file, why it may not open."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import urllib.parse

__all__ = ["connect_file", "file_identity", "full_disk_reason"]


def connect_file(path: str, write: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """A connection to the existing journal file ``path``, read-only unless ``write``
    (for readers beside the server: ``dahu-jobs``, the web page); never creates one.
    ``immutable``: read the file as it is, without the ``-shm`` file a reader of a WAL
    journal otherwise makes (for a directory this process cannot write)."""
    uri = f"file:{urllib.parse.quote(path)}?mode={'rw' if write else 'ro'}"
    if immutable:
        uri += "&immutable=1"
    return sqlite3.connect(
        uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
    )


def file_identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at ``path``; None if there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def full_disk_reason(workdir: str) -> str:
    """Why a journal may not open (`` (its file system is full: ...)``), or ``""``: on a
    full disk SQLite says only ``disk I/O error`` (its shared-memory file cannot grow)."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(workdir).free
        if free < 1 << 20:
            return f" (its file system is full: {free} bytes free)"
    return ""
