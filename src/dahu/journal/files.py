"""The ``.inp``/``.out`` files of a job in the work directory, as Dahu users know them."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

from ..utils import NumpyEncoder, jsonable, text_of
from .base import HOST
from .sqlitefile import process_alive

__all__ = [
    "fitted_name",
    "job_file_dir",
    "job_file_name",
    "job_file_stem",
    "write_job_files",
    "pretty_json",
    "highest_file_id",
    "remove_dead_parts",
]

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
    encode = _EXACT.get(obj.__class__)
    if encode is not None:
        return encode(obj)
    if isinstance(obj, str):
        return _string(obj)
    text = _scalar(obj)
    if text is not None:
        return text
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        inner = _INDENTS[level + 1]
        exact = _EXACT.get
        parts = []
        for key, value in obj.items():
            # most values are plain str, int, float, bool or None: no call to _pretty
            encode = exact(value.__class__)
            text = encode(value) if encode is not None else _pretty(value, level + 1)
            if key.__class__ is not str:
                key = _key(key)
            parts.append(f"{_string(key)}: {text}")
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


_EXACT = {
    str: _string,
    int: _int,
    float: _number,
    bool: {True: "true", False: "false"}.__getitem__,
    type(None): lambda _: "null",
}
"""The encoders of the plain scalar types, by exact type (subclasses, such as an
``IntEnum``, take the general path, as in the standard encoder)."""


def pretty_json(data: Any) -> str:
    """``data`` as the original's files hold it: ``json.dumps(data, indent=4,
    cls=NumpyEncoder)``, the same text, in a fraction of the time (the standard
    library encodes indented JSON in pure Python)."""
    try:
        return _pretty(data, 0)
    except (IndexError, RecursionError):
        # deeper than the indent table, or circular: the standard encoder says which
        return _PRETTY.encode(data)


def job_file_dir(workdir: str, job_id: int) -> str:
    """``<workdir>/NNNN``: the directory of a job's files (as ``os.path.join`` makes it,
    in a fifth of the time: it is built for every job)."""
    if workdir and not workdir.endswith(os.sep):
        workdir += os.sep
    return f"{workdir}{job_id // 1000:04d}"


def job_file_stem(workdir: str, job_id: int, plugin: str) -> str:
    """``<workdir>/NNNN/NNNNN_<plugin>``: the path of a job's files, without extension."""
    return _stem_in(job_file_dir(workdir, job_id), job_id, plugin)


def _stem_in(directory: str, job_id: int, plugin: str) -> str:
    """``<directory>/NNNNN_<plugin>``, ``directory`` being :func:`job_file_dir`'s."""
    return f"{directory}{os.sep}{job_file_name(job_id, plugin)}"


NAME_MAX = 255
"""The bytes of a file name (ext4, XFS, GPFS, NFS...), its extension included."""
SUFFIX_MAX = len(".h5.part")
"""The longest extension Dahu adds to a job's name: ``.inp``, ``.out``, ``.profile``, and
pyFAI's ``.h5`` with its ``.h5.part`` and ``.h5.lock`` while it is written."""


def job_file_name(job_id: int, plugin: str) -> str:
    """``NNNNN_<plugin>``, the name of a job's files without extension, if it fits in a file
    name with any of them (:data:`SUFFIX_MAX`), else cut to fit and ended by ``~`` and a
    hash of the whole plugin name: ``00012_<start of the name>~<10 hex digits>`` (the
    original wrote no file for such a name)."""
    name = f"{job_id:05d}_{plugin}"
    if len(name) <= (NAME_MAX - SUFFIX_MAX) // 4:  # it fits (4 bytes a character at most)
        return name
    return fitted_name(name, SUFFIX_MAX, plugin)


def fitted_name(name: str, room: int, whole: str | None = None) -> str:
    """``name`` if it fits in a file name with ``room`` bytes to spare, else cut to fit and
    ended by ``~`` and 10 hex digits of a hash of ``whole`` (default ``name``)."""
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) + room <= NAME_MAX:
        return name
    whole = name if whole is None else whole
    import hashlib  # here: a long name is rare, its import is 2.5 ms of every start

    digest = hashlib.sha1(whole.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    cut = raw[: NAME_MAX - room - 1 - len(digest)].decode("utf-8", "ignore")
    return f"{cut}~{digest}"  # whole characters (a character cut in two is dropped)


_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _write(path: str, text: bytes, aside: str | None = None) -> None:
    """Create (or truncate) ``path`` with all of ``text``; written as ``aside`` first, if
    given, then renamed ``path``."""
    target = aside or path
    fd = os.open(target, _FLAGS, 0o644)
    try:
        try:
            done = 0
            while done < len(text):  # a write may take only part of it
                done += os.write(fd, text[done:])
        finally:
            os.close(fd)
        if aside:
            os.replace(aside, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)  # no truncated file (disk full...): a reader finds none instead
        raise


def highest_file_id(workdir: str) -> int:
    """The highest job id of the ``NNNN/NNNNN_<plugin>.inp``/``.out`` files in
    ``workdir``, 0 if none: a journal made where jobs ran before (it was deleted, or
    emptied) gives ids after theirs, rather than overwrite their files."""
    with contextlib.suppress(OSError):
        dirs = sorted((n for n in os.listdir(workdir) if n.isdigit()), key=int, reverse=True)
        for name in dirs:
            with contextlib.suppress(OSError):
                ids = [
                    int(file.partition("_")[0])
                    for file in os.listdir(os.path.join(workdir, name))
                    if file.partition("_")[0].isdigit() and file.endswith((".inp", ".out"))
                ]
                if ids:
                    return max(ids)
    return 0


def write_job_files(
    workdir: str,
    job_id: int,
    plugin: str,
    input_data: Any,
    output_data: Any,
    aside: bool = False,
    process: int | None = None,
) -> tuple[str, str]:
    """Write ``<stem>.inp`` and ``<stem>.out`` (indented, numpy-aware JSON); return the
    paths.  ``aside``: each one under a name of this thread first (``.PID-THREAD.part``
    in the same directory, ``.PID-THREAD-ROW.part`` with ``process``, this process's
    row in the journal's ``processes``), then renamed: files that another process may
    be writing too (a start's recovery) are never found empty or cut short, only whole
    or not yet."""
    directory = job_file_dir(workdir, job_id)
    stem = _stem_in(directory, job_id, plugin)
    part = None
    if aside:
        row = "" if process is None else f"-{process}"
        part = f"{directory}{os.sep}.{os.getpid()}-{threading.get_ident()}{row}.part"
    if directory not in _known_dirs:
        os.makedirs(directory, exist_ok=True)
        _known_dirs.add(directory)
    paths = []
    for ext, data in ((".inp", input_data), (".out", output_data)):
        path = stem + ext
        try:
            text = pretty_json(data).encode("ascii")
        except (TypeError, ValueError, RecursionError):  # as text, as the journal has it
            try:  # what JSON refuses as text, the rest as it is
                text = pretty_json(jsonable(data)).encode("ascii")
            except (TypeError, ValueError, RecursionError):  # too deep: all of it as text
                kept = {f"unserializable_{'input' if ext == '.inp' else 'output'}": text_of(data)}
                text = pretty_json(kept).encode("ascii")
        try:
            _write(path, text, part)
        except FileNotFoundError:  # the directory was removed behind our back
            os.makedirs(directory, exist_ok=True)
            _write(path, text, part)
        paths.append(path)
    return paths[0], paths[1]


def remove_dead_parts(directory: str, known: Any = None) -> int:
    """Remove the ``.PID-THREAD[-ROW].part`` files (:func:`write_job_files` with
    ``aside``) of ``directory`` whose writer is gone (a process of this host killed in
    the middle of one: only a later one is not its writer; ``known``, the journal's
    :class:`~.processes.Known`, tells two processes of one pid apart by their ROW);
    return how many went."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            pid, _, rest = entry.name[1:].partition("-")
            if not (entry.name.startswith(".") and rest.endswith(".part") and pid.isdigit()):
                continue
            row = rest[: -len(".part")].partition("-")[2]
            process = int(row) if row.isdigit() else None
            with contextlib.suppress(OSError):
                since = entry.stat().st_mtime
                if not process_alive(HOST, int(pid), since, None, known, process):
                    os.unlink(entry.path)
                    removed += 1
    return removed
