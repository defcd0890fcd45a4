"""Where ``dahu-reprocess`` finds its jobs: ``.inp``/``.json`` files, directories of them,
and id ranges of a journal; each becomes an :class:`Item` (one job to run again)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import DahuError, JournalError, one_line
from ..inputs import InvalidInput, json_file_text, json_kind
from ..jobquery import get as get_record
from ..jobquery import highest_id, open_journal, resolve
from ..journal import INTERRUPTED, SQLiteJournal
from ..journal.base import MAX_ID
from ..states import State
from ..utils import dumps, jsonable

__all__ = [
    "IDS",
    "InputError",
    "Item",
    "Loaded",
    "as_archived",
    "comparable",
    "incomplete",
    "expand_sources",
    "load",
    "load_input",
    "load_archive",
    "reason_only",
]

INPUT_EXTENSIONS = (".inp", ".json")
STDIN = "(standard input)"  # how the SOURCE "-" is named in messages and the summary
IDS = re.compile(r"^-?\d+(--?\d+)?(,-?\d+(--?\d+)?)*$")  # job ids: 3, 1-5, 1-3,7, -1, -3--1
MAX_INPUT_BYTES = 1_000_000_000
"""Bytes of an input file read at most: SQLite refuses a longer row, no job records it
(a data file named ``.json``, a pipe that never ends, were read until memory ran out)."""
_RANGE = re.compile(r"(-?\d+)(?:-(-?\d+))?")  # one part: 1-5, -3--1 (from the third last)
# the reason of a failed job in an archive of the original Dahu (2024.2.0): the second
# line of its error, after the traceback text ("<class 'id00.BeamLost'>: no beam")
_ORIGINAL_REASON = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>: ?(.*)", re.DOTALL)
# the original's dahu-reprocess wrote NNNNN_<class>.inp/.out side by side in one directory
# (the servers, its and this one, write them in NNNN/): it never wrote a failed job's
# "error", nor, when its setup failed, the "logging" its teardown adds
_ORIGINAL_TOOL_FILE = re.compile(r"\d{5,}_[^/]+\.out")
_ORIGINAL_TOOL_NEVER_WROTE = frozenset({"error", "logging"})


class InputError(DahuError):
    """An input that cannot be run; its message is one line."""


@dataclass
class Item:
    """One thing to reprocess: an input file, a job of a journal, or a source in error."""

    label: str
    path: str | None = None
    journal: Any = None
    job_id: int | None = None
    error: str | None = None
    unfinished: bool = False  # a job the journal has not seen end (queued, running)


# ---- sources ------------------------------------------------------------------------
def _walk(directory: str, exclude: str | None) -> Iterator[Item]:
    """Input files under ``directory``, sorted, skipping the ``exclude`` directory, through
    symbolic links to directories; a directory that cannot be read is an item in error
    (os.walk would skip it silently)."""
    unreadable: list[Item] = []

    def refused(err: OSError) -> None:
        reason = f"cannot read this directory: {err.strerror or err}"
        unreadable.append(Item(err.filename or directory, error=reason))

    seen = {os.path.realpath(directory)}  # a directory linked twice (or to its parent): once
    for root, dirs, files in os.walk(directory, onerror=refused, followlinks=True):
        yield from unreadable
        unreadable.clear()
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if real != exclude and real not in seen:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if name.endswith(INPUT_EXTENSIONS):
                path = os.path.join(root, name)
                yield Item(path, path=path, error=_not_a_file(path))
    yield from unreadable


def _not_a_file(path: str) -> str | None:
    """Why ``path``, found in a directory, is not read: a named pipe (its reading waits
    for a writer: until 2026-11-30 the run hung there), a socket, a device; else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # (a dangling link: its reading says why)
        return None
    if stat.S_ISREG(mode):
        return None
    kind = (
        "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    )
    return f"{kind}, not a file: a directory SOURCE runs its files (give it by name to read it)"


class _Journal:
    """The journal of the work directory the ids are read from, on a read-only connection:
    reading it never writes there (nor creates a journal), and works where this process
    cannot write (a read-only archive, another user's work directory)."""

    def __init__(self, workdir: str):
        if not os.path.isfile(os.path.join(workdir, SQLiteJournal.FILENAME)):
            raise InputError(f"no journal in {workdir}")
        try:
            self.db = open_journal(workdir)
        except JournalError as err:
            raise InputError(one_line(err)) from err
        self.path = os.path.join(workdir, SQLiteJournal.FILENAME)

    def ids(self, first: int, last: int) -> list[tuple[int, str]]:
        """The ids from ``first`` to ``last`` that are in the journal, in order, each with
        its state."""
        last = min(last, MAX_ID)
        sql = "SELECT id, state FROM jobs WHERE id BETWEEN ? AND ? ORDER BY id"
        try:
            return list(self.db.execute(sql, (first, last))) if first <= last else []
        except sqlite3.Error as err:
            raise InputError(f"cannot read the journal {self.path}: {err}") from err

    def highest(self) -> int:
        """The highest id ever given in this journal (pruned records count), 0 if it
        cannot be read (it only words a message)."""
        try:
            return highest_id(self.db)
        except JournalError:
            return 0

    def resolve(self, job_id: int) -> int:
        """``job_id``; a negative one counted back from the newest job (``-1``), as
        ``dahu-jobs show`` and the device count it."""
        try:
            return resolve(self.db, job_id)
        except JournalError as err:
            raise InputError(one_line(err)) from err

    def get(self, job_id: int) -> Any:
        """The record of ``job_id``, or None."""
        try:
            record = get_record(self.db, job_id)
        except JournalError as err:
            raise InputError(one_line(err)) from err
        if record is not None and "input" in record.unreadable:  # not run with {} instead
            raise InputError(
                f"its input in the journal is unreadable: {record.unreadable['input']}"
            )
        return record


def _journal_items(spec: str, workdir: str, journal: Any) -> list[Item]:
    items = []
    for part in spec.split(","):
        first, last = _RANGE.fullmatch(part).groups()  # type: ignore[union-attr]
        # past 19 digits, no job's id (int() refused 4,300 of them: a traceback)
        given = [
            int(n) if len(n.lstrip("-0")) <= 19 else MAX_ID + 1 for n in (first, last or first)
        ]
        part = part if len(part) <= 40 else f"{part[:20]}... ({len(part)} characters)"
        try:  # -1: the newest job (until 2026-11-30 a file name: no such file)
            lo, hi = (journal.resolve(n) if n < 0 else n for n in given)
            if hi < lo:
                items.append(Item(part, error=f"empty id range in {workdir}"))
                continue
            found = journal.ids(lo, hi)
        except InputError as err:  # a damaged journal: one line, as for the other sources
            items.append(Item(part, error=str(err)))
            continue
        items.extend(
            Item(f"job {i}", journal=journal, job_id=i, unfinished=state not in State.FINAL)
            for i, state in found
        )
        if not found:
            named = f"{lo} ({given[0]})" if given[0] < 0 < lo else str(given[0])
            what = f"job {named} is not" if lo == hi <= MAX_ID else f"no job {part} is"
            # ids given before: as dahu-jobs show and the device say it
            why = " (pruned, or never given)" if 1 <= lo <= journal.highest() else ""
            items.append(Item(part, error=f"{what} in the journal of {workdir}{why}"))
    return items


def expand_sources(sources: list[str], workdir: str, exclude: str | None = None) -> list[Item]:
    """Turn the SOURCE arguments into items, in order; unusable ones carry an error.

    :param workdir: the work directory whose journal holds the ids given as sources
    :param exclude: a directory never searched for inputs (the output directory)
    """
    items: list[Item] = []
    journal: Any = None
    exclude = os.path.realpath(exclude) if exclude else None
    for source in sources:
        if source == "-":  # as Unix tools: one input, read from standard input (./- is a file)
            items.append(Item(STDIN, path="/dev/stdin"))
        elif os.path.isdir(source):
            found = list(_walk(source, exclude))
            items.extend(found or [Item(source, error="no .inp or .json file in this directory")])
        elif os.path.basename(source) == SQLiteJournal.FILENAME and os.path.isfile(source):
            where = os.path.dirname(source) or "."  # not "not UTF-8 text ... at offset 31"
            hint = f"give job ids, e.g. --workdir {where} 1-10"
            items.append(Item(source, error=f"a journal, not a job input: {hint}"))
        elif os.path.exists(source):  # a file, or a pipe (<(...), /dev/stdin)
            items.append(Item(source, path=source))
        elif IDS.match(source):
            try:
                journal = journal or _Journal(workdir)
            except DahuError as err:
                items.append(Item(source, error=str(err)))
                continue
            items.extend(_journal_items(source, workdir, journal))
        else:
            items.append(Item(source, error="no such file or directory"))
    return items


def _read_text(path: str) -> str:
    """The text of a UTF-8 file, newlines translated as ``open()`` does.

    Four system calls for a small file instead of the nine of ``open().read()`` (which
    also asks whether it is a terminal, seeks and stats it twice): each one lets another
    thread take the GIL, and the caller, which feeds the job slots, waits to get it back.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_INPUT_BYTES:  # (until 2026-11-30 read whole: a MemoryError)
                raise InputError(
                    f"too large for a job input: over {MAX_INPUT_BYTES:,} bytes, "
                    "more than the journal records"
                )
    finally:
        os.close(fd)
    try:
        text = json_file_text(b"".join(chunks))
    except InvalidInput as err:
        raise InputError(str(err)) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def load_input(item: Item) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """Return the plugin name, the input and (journal items) the archived output."""
    if item.error:
        raise InputError(item.error)
    if item.journal is not None:
        record = item.journal.get(item.job_id)
        if record is None:
            raise InputError(f"job {item.job_id} vanished from the journal")
        return record.plugin.strip(), record.input, record.output  # as a file's name below
    try:
        text = _read_text(item.path)
        if not text.strip():  # a disk that filled up as it was written; stdin of a cron job
            raise InputError("not JSON: it is empty")  # not "Expecting value: line 1 ..."
        data = json.loads(text)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}") from err
    except (ValueError, RecursionError) as err:
        raise InputError(f"not JSON: {one_line(err)}") from err
    if not isinstance(data, dict):
        raise InputError(f"not a job input: a JSON {json_kind(data)}, not an object")
    plugin = data.get("plugin_name")
    if plugin is not None and not isinstance(plugin, str):
        raise InputError(f"not a job input: plugin_name is a JSON {json_kind(plugin)}")
    plugin = plugin and plugin.strip()  # as the device drops the spaces around a name
    if not plugin:  # "" or blanks: as the device words an empty name
        why = "plugin_name is empty: expected 'module.name'" if "plugin_name" in data else ""
        raise InputError(f"not a job input: {why or 'no plugin_name'}")
    return plugin, data, None


def load_archive(item: Item) -> tuple[str | None, Any]:
    """The archived output of a file item: ``(its .out file, output)``, ``(None, None)``
    if there is none; raises InputError if unreadable."""
    path = os.path.splitext(item.path)[0] + ".out"
    if not os.path.isfile(path):
        return None, None
    try:
        return path, json.loads(_read_text(path))
    except (OSError, ValueError, InputError) as err:
        reason = getattr(err, "strerror", None) or one_line(err)
        raise InputError(f"cannot read the archived output {path}: {reason}") from err


def as_archived(output: Any) -> Any:
    """A job's output as its ``.out`` file (and the journal) hold it: numpy values, tuples
    and sets as JSON has them, what JSON refuses (a numpy key, an object) as its text."""
    try:
        return json.loads(dumps(output))
    except (TypeError, ValueError):
        return json.loads(dumps(jsonable(output)))


def reason_only(output: Any) -> Any:
    """``output`` with a failed job's ``"error"`` (its lines: the reason, then the
    traceback) cut to the reason: ``--compare`` compares what a job gave, not where the
    code that failed stands (file paths and line numbers change with any edit).  An error
    as the original Dahu wrote it is cut to its reason written as Dahu writes it."""
    if isinstance(output, dict) and isinstance(output.get("error"), list) and output["error"]:
        lines = output["error"]
        found = (
            len(lines) > 1 and isinstance(lines[1], str) and _ORIGINAL_REASON.fullmatch(lines[1])
        )
        if not found:
            return {**output, "error": lines[:1]}
        text = one_line(found[2], limit=2**31)
        return {**output, "error": [f"{found[1]}: {text}" if text else found[1]]}
    return output


def comparable(archive: Any, output: Any, path: str | None = None) -> tuple[Any, Any]:
    """The archived output (of the ``.out`` file ``path``, if any) and a job's new output
    as ``--compare`` compares them (:func:`reason_only`).  An archive of the original's
    ``dahu-reprocess`` is compared on what that tool wrote: the keys it never wrote are
    dropped from the new output (until 2026-11-30 an unchanged failed job differed,
    ``error: not in the archived output``)."""
    old, new = reason_only(archive), reason_only(as_archived(output))
    if path and isinstance(old, dict) and isinstance(new, dict) and _by_original_tool(path):
        new = {k: v for k, v in new.items() if k in old or k not in _ORIGINAL_TOOL_NEVER_WROTE}
    return old, new


def _by_original_tool(path: str) -> bool:
    """Whether the ``.out`` file ``path`` is one the original's ``dahu-reprocess`` wrote:
    ``NNNNN_<class>.out``, but not in the ``NNNN`` folder a server writes job NNNNN's
    files in (``%04d`` of the id // 1000): the original tool's flat archive may have been
    copied into a folder named by digits (a date, a run number)."""
    name = os.path.basename(path)
    if not _ORIGINAL_TOOL_FILE.fullmatch(name):
        return False
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    job_id = int(name.partition("_")[0])
    return not (folder.isdigit() and folder == f"{job_id // 1000:04d}")


def incomplete(archive: Any) -> bool:
    """Whether an archived output is only part of what its job would have given: the job
    was aborted (its ``aborted`` key), or its server died as it ran (the next one recorded
    its error as ``interrupted``, see :func:`dahu.journal.sqlitefile.close_dead`)."""
    if not isinstance(archive, dict):
        return False
    error = archive.get("error")
    reason = error[0] if isinstance(error, list) and error else None
    died = reason == INTERRUPTED or (
        isinstance(reason, str) and reason.startswith(f"{INTERRUPTED}: its process, pid ")
    )
    return isinstance(archive.get("aborted"), str) or died  # the time of the abort


@dataclass
class Loaded:
    """An item whose input was read: the input, or why it cannot be run."""

    item: Item
    plugin: str = ""
    data: dict[str, Any] | None = None
    archive: Any = None
    error: DahuError | None = None
    ignore: frozenset[str] = frozenset()  # its plugin's REPROCESS_COMPARE_IGNORE


def load(item: Item) -> Loaded:
    """Read ``item``'s input; what cannot be run is kept as its error."""
    try:
        plugin, data, archive = load_input(item)
    except DahuError as err:
        return Loaded(item, error=err)
    return Loaded(item, plugin, data, archive)


# ---- what a plugin asks of dahu-reprocess -------------------------------------------
class Relocator:
    """Gives the paths of a plugin's ``REPROCESS_RELOCATE`` keys (files it writes, or
    directories it writes in) a new directory per job (made here), keeping their names, so
    that the archived files are not written over: ``WORKDIR/relocated/<date-time>-<pid>/
    000001``, ``000002``... (one directory per run of the tool).  A path that names an
    existing directory is made too, in the new one."""

    def __init__(self, workdir: str):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.base = os.path.join(workdir, "relocated", f"{stamp}-{os.getpid()}")
        self.jobs = 0  # jobs whose paths were moved so far

    def __call__(self, data: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Move the paths of ``keys`` in ``data`` (a job's input) to the next directory."""
        moving = [key for key in keys if isinstance(data.get(key), str) and data[key].strip()]
        if not moving:
            return
        self.jobs += 1
        directory = os.path.join(self.base, f"{self.jobs:06d}")
        made = [directory]  # the archived path's directory existed
        for key in moving:
            path = os.path.join(directory, os.path.basename(data[key].rstrip("/")))
            if os.path.isdir(data[key]):  # a directory the plugin writes in (output_dir)
                made.append(path)
            data[key] = path
        for path in made:
            with contextlib.suppress(OSError):  # else the plugin says why it cannot write there
                os.makedirs(path, exist_ok=True)
