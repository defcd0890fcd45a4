"""The job journal: a persistent record of every job, so that no job is ever lost.

:class:`Journal` is the documented interface, implemented by
:class:`~dahu.journal.sqlite.SQLiteJournal` (the real one, a SQLite file
``journal.sqlite`` in the work directory) and :class:`~dahu.journal.memory.MemoryJournal`
(for tests and throw-away runs).  ``tests/test_journal.py`` states the contract and runs
it against both; a new backend subclasses :class:`Journal` and is added there.

The life of a record: :meth:`Journal.create` (state ``uninitialized``, committed before
the id is returned) → :meth:`Journal.set_state` (``running``) → :meth:`Journal.finish`
(final state, output, error, times, plugin provenance).  When a journal is opened,
records left unfinished by a process that no longer runs are closed as ``failure`` with
the error ``interrupted``.

The contract, for every implementation (all methods are thread-safe):

* an input that is not JSON-serialisable makes ``create``/``create_many`` raise
  :class:`~dahu.errors.JournalError` and records nothing;
* an output that is not JSON-serialisable is recorded with what JSON refuses as text
  (:func:`dahu.utils.jsonable`; if even that fails, as ``{"unserializable_output":
  repr}``) and the error says so: ``finish`` never fails on plugin data;
* ``set_state``/``finish`` on an unknown id do nothing; ``set_state`` never replaces a
  final state;
* a storage failure is raised as :class:`~dahu.errors.JournalError`, never as the
  backend's own exception.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import JournalError, one_line
from ..utils import compact_json, jsonable, safe_str, text_of, utf8_text

__all__ = [
    "JobRecord",
    "checked_output",
    "decode_record",
    "unreadable_field",
    "unreadable_numbers",
    "as_text",
    "Journal",
    "JournalError",
    "default_workdir",
    "encode_input",
    "encode_final_input",
    "encode_noted",
    "encode_output",
    "INTERRUPTED",
    "HOST",
    "MAX_ID",
    "MAX_OUTPUT_CHARS",
    "storable_id",
]

MAX_ID = 2**63 - 1
"""The largest id a journal can hold (SQLite's INTEGER)."""


def storable_id(job_id: int) -> bool:
    """True if ``job_id`` can name a record (from 1 to :data:`MAX_ID`): a larger number
    cannot even be looked up, it is simply not a job."""
    return 0 < job_id <= MAX_ID


INTERRUPTED = "interrupted"
"""The error of a job whose process died before it ended."""
HOST = os.uname().nodename  # socket.gethostname(), without importing socket
logger = logging.getLogger(__name__)


def default_workdir() -> str:
    """The stable work directory: ``$DAHU_WORKDIR``, else ``$XDG_STATE_HOME/dahu``
    (``~/.local/state/dahu``)."""
    env = os.environ.get("DAHU_WORKDIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state_home, "dahu")


def encode_input(input_data: Any) -> str:
    """A job input as compact JSON; :class:`JournalError` if it cannot be."""
    try:
        return compact_json(input_data)
    except (TypeError, ValueError, RecursionError) as err:
        raise JournalError(f"job input is not JSON-serialisable: {err}") from err


def encode_final_input(job_id: int, input_data: Any) -> str | None:
    """The plugin's final input as JSON, or None (logged) if it is not serialisable."""
    if input_data is None:
        return None
    try:
        return compact_json(input_data)
    except Exception:  # plugin data: whatever its encoding raises, the record is kept
        try:
            text = compact_json(jsonable(input_data))
        except Exception:
            text = None  # the input recorded at its creation stays
        logger.warning("job %s: its final input is not JSON-serialisable", job_id)
        return text


MAX_OUTPUT_CHARS = 900_000_000
"""Longest output the journal records: SQLite refuses a row over 1,000,000,000 bytes
(``string or blob too big``), and would refuse it at every try."""
LARGE_OUTPUT = 2**20
"""Characters of a recorded output from which the journal notes its length (an output
too large for a Tango answer is refused without encoding it again)."""
LARGE_KEPT = 64
"""The large outputs whose length the journal keeps, the last recorded."""


def encode_output(
    output: Any, error: str | None, limit: int | None = None
) -> tuple[str | None, str | None]:
    """A job output as compact JSON and its error; an output that is not serialisable is
    kept as its ``repr``, one over ``limit`` (default :data:`MAX_OUTPUT_CHARS`) as a note,
    and the error says so (a plugin's output never breaks a record)."""
    limit = MAX_OUTPUT_CHARS if limit is None else limit
    error = utf8_text(error)
    if output is None:
        return None, error
    try:
        text = compact_json(output)
        if len(text) <= limit:
            return text, error
        note = (
            f"output of {len(text) / 1e6:.0f} MB not recorded: the journal takes "
            f"{limit / 1e6:.0f} MB at most (the job's .out file holds it)"
        )
        return compact_json({"unrecorded_output": note}), (error + "\n" if error else "") + note
    except Exception as err:  # plugin data: whatever its encoding raises, the record is kept
        note = f"output not JSON-serialisable: {safe_str(err)}"
        try:  # keys and values JSON refuses as text, the rest as it is
            text = compact_json(jsonable(output))
            note += " (what JSON cannot hold is kept as text)"
        except Exception:  # too deep, an int of over 4,300 digits...: all of it as text
            text = compact_json({"unserializable_output": text_of(output)})
        return text, (error + "\n" if error else "") + note


def encode_noted(
    output: Any, error: str | None, noted: Callable[[str], Any] | None
) -> tuple[str | None, str | None]:
    """:func:`encode_output`, calling ``noted`` with the error if it notes something."""
    text, recorded = encode_output(output, error)
    if noted is not None and recorded != error:
        noted(recorded)
    return text, recorded


@dataclass
class JobRecord:
    """Everything the journal knows about one job."""

    id: int
    plugin: str
    state: str
    input: dict[str, Any]
    output: dict[str, Any] | None = None
    error: str | None = None
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None
    runtime: float | None = None
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    module_file: str | None = None
    plugin_version: str | None = None
    #: the row of the process that recorded it in the journal's table ``processes``
    #: (:mod:`dahu.journal.processes`; None: unknown)
    process: int | None = None
    #: the fields whose stored value could not be read (a damaged or hand-edited row),
    #: each with its reason; those fields are None (the input: ``{}``)
    unreadable: dict[str, str] = field(default_factory=dict)


_NUMBERS = {6: "submitted", 7: "started", 8: "ended", 9: "runtime", 11: "pid"}
_TEXTS = (1, 2, 5, 10, 12, 13, 14)  # plugin, state, error, host, version, module, its version


def decode_record(row: tuple, strict: bool = True) -> JobRecord:
    """The record of a journal row (``id, plugin, state, input, output, error, submitted,
    started, ended, runtime, host, pid, version, module_file, plugin_version``, and maybe
    ``process``).  A field whose stored value cannot be read (an input or output that is
    not JSON, a time that is not a number: a damaged or hand-edited row) raises a one-line :class:`JournalError`
    naming the job and the field; unless not ``strict``: it is then None (the input
    ``{}``) and its reason is in :attr:`JobRecord.unreadable`."""
    data, unreadable = list(row), {}
    as_text(data, _TEXTS)
    for index, name in ((3, "input"), (4, "output")):
        try:
            data[index] = json.loads(data[index]) if data[index] else None
        except (ValueError, TypeError, RecursionError) as err:
            data[index], unreadable[name] = None, _not_json(err)
    unreadable.update(unreadable_numbers(data, _NUMBERS))
    if unreadable and strict:
        name, reason = next(iter(unreadable.items()))
        raise JournalError(unreadable_field(data[0], name, reason))
    if data[3] is None:
        data[3] = {}
    if isinstance(data[3], dict):
        data[3]["job_id"] = data[0]
    return JobRecord(*data, unreadable=unreadable)


def as_text(data: list, indices: Any) -> None:
    """Make text of the bytes at ``indices`` of ``data`` (a blob in a text column of a
    hand-edited row; an undecodable byte is U+FFFD)."""
    for index in indices:
        if isinstance(data[index], bytes):
            data[index] = data[index].decode("utf-8", "replace")


def unreadable_numbers(data: list, names: dict[int, str]) -> dict[str, str]:
    """Set to None the values of ``data`` at the indices of ``names`` that are not numbers
    (a ``pid``: not an int); their names and reasons."""
    unreadable = {}
    for index, name in names.items():
        value = data[index]
        if value is not None and not isinstance(value, int if name == "pid" else (int, float)):
            data[index], unreadable[name] = None, f"not a number ({safe_str(value)[:40]!r})"
    return unreadable


def _not_json(err: BaseException) -> str:
    return f"not JSON ({one_line(str(err), 100)})"


def checked_output(job_id: int, text: str | None, valid: int) -> str:
    """The output text of a job a client reads (``{}`` when none), ``valid`` if SQLite's
    ``json_valid`` takes it: one it does not (NaN, Infinity are JSON to Python only) is
    decoded, and a text that is not JSON (a damaged row) is a one-line JournalError."""
    if text and not valid:
        try:
            json.loads(text)
        except (ValueError, TypeError, RecursionError) as err:
            raise JournalError(unreadable_field(job_id, "output", _not_json(err))) from None
    return text or "{}"


def unreadable_field(job_id: Any, name: str, reason: str) -> str:
    """The one line that tells a field of a job's record cannot be read."""
    return f"job {job_id}: its {name} in the journal is unreadable: {reason}"


class Journal(abc.ABC):
    """The documented interface of a job journal (see the module doc for the contract)."""

    workdir: str | None = None

    @functools.cached_property
    def identity(self) -> str:
        """A token naming this journal: the same in every process that writes it (an id
        is the same job), another one for another journal (a fresh work directory numbers
        its jobs from 1 again).  Clients compare it across a server restart."""
        return os.urandom(16).hex()  # not uuid: 1.6 ms more of a command line's start

    @abc.abstractmethod
    def create(self, plugin: str, input_data: dict[str, Any], submitted: float) -> int:
        """Record a new job (state ``uninitialized``); return its id, larger than any before."""

    def create_later(
        self,
        then: Callable[[BaseException | None], Any],
        plugin: str,
        input_data: dict[str, Any],
        submitted: float,
    ) -> tuple[int, Any]:
        """:meth:`create`, committed with the next batch instead of now: return the id
        and a token for :meth:`settle`; ``then(None)`` (or ``then(error)``) once
        committed.  The record is committed at the latest by the next write of any
        thread, :meth:`commit_soon`, :meth:`settle` or :meth:`flush`.  This default
        records it at once."""
        job_id = self.create(plugin, input_data, submitted)
        then(None)
        return job_id, None

    def commit_soon(self) -> None:  # noqa: B027 - optional for implementations
        """Start committing what :meth:`create_later` queued (without waiting for it)."""

    def settle(self, token: Any) -> None:  # noqa: B027 - optional for implementations
        """Return once the record of ``token`` (from :meth:`create_later`) is committed."""

    def create_many(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[int]:
        """Record several jobs at once (all or none); return their increasing ids."""
        for data in inputs:
            encode_input(data)  # refuse them all before recording any
        return [self.create(plugin, data, submitted) for data in inputs]

    @abc.abstractmethod
    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        """Record a non-final state change (``running``); a job whose final state is
        recorded already keeps it; an unknown id is ignored."""

    def state(self, job_id: int) -> str | None:
        """The state of ``job_id`` only (None if unknown): cheaper than :meth:`get`."""
        record = self.get(job_id)
        return record.state if record is not None else None

    @abc.abstractmethod
    def finish(
        self,
        job_id: int,
        state: str,
        output: dict[str, Any] | None,
        error: str | None,
        started: float | None,
        ended: float | None,
        module_file: str | None = None,
        plugin_version: str | None = None,
        input_data: dict[str, Any] | None = None,
        noted: Callable[[str], Any] | None = None,
    ) -> None:
        """Record the final state of a job, its output or error, and its times; with
        ``input_data``, replace the recorded input (the plugin's final input; kept as it
        was if that one is not serialisable).  An unknown id is ignored; an output that is
        not serialisable is kept as its ``repr``, and ``noted`` (if given) is called with
        the error as recorded, which notes it, before the outcome is recorded (the engine
        shows the job with that error, as the journal will)."""

    def finish_later(
        self,
        then: Callable[[BaseException | None], Any],
        *outcome: Any,
        hold: bool = False,
        **named: Any,
    ) -> None:
        """:meth:`finish` (``outcome``: its arguments), committed with the next batch
        instead of now: ``then(None)``
        is called once the outcome is committed (``then(error)`` if it could not be), from
        whichever thread committed it.  The caller goes on meanwhile.

        With ``hold``, more outcomes are coming: the journal may keep this one queued
        until a batch is worth a commit, at the latest until the next write of any thread,
        :meth:`commit_soon` or :meth:`flush` (the caller arranges for one soon).

        This default records it at once and calls ``then`` in the calling thread."""
        try:
            self.finish(*outcome, **named)
        except Exception as err:
            then(err)
        else:
            then(None)

    def flush(self, timeout: float | None = None) -> bool:
        """Return once every write queued by :meth:`finish_later` or :meth:`create_later`
        is committed and its ``then`` has run (at most ``timeout`` s); True if so."""
        return True

    def finish_many(
        self,
        outcomes: list[
            tuple[int, str, dict[str, Any] | None, str | None, float | None, float | None]
        ],
    ) -> None:
        """Record the final state of several jobs at once: ``(job_id, state, output,
        error, started, ended)`` each (the bulk path: imports, benchmarks)."""
        for job_id, state, output, error, started, ended in outcomes:
            self.finish(job_id, state, output, error, started, ended)

    @abc.abstractmethod
    def get(self, job_id: int, data: bool = True) -> JobRecord | None:
        """Return a copy of the record of ``job_id`` (input with ``job_id`` set), or None;
        without its ``data`` (input ``{}``, output None): not read, however large."""

    @functools.cached_property
    def _large_outputs(self) -> collections.OrderedDict[int, int]:
        return collections.OrderedDict()

    def note_output(self, job_id: int, text: str | None) -> None:
        """Remember the length of ``text``, the output of ``job_id`` as recorded, if it is
        large (:data:`LARGE_OUTPUT` characters or more; the last :data:`LARGE_KEPT`)."""
        if text is not None and len(text) >= LARGE_OUTPUT:
            self._large_outputs[job_id] = len(text)
            if len(self._large_outputs) > LARGE_KEPT:
                with contextlib.suppress(KeyError):  # another thread took it out
                    self._large_outputs.popitem(last=False)

    def input_chars(self, job_id: int) -> int | None:
        """The length of the JSON text of ``job_id``'s input as recorded, if the journal
        can tell without reading it whole, else None."""
        return None

    def output_chars(self, job_id: int) -> int | None:
        """The length of :meth:`output_text` of ``job_id`` if it is a large output this
        process recorded lately (:meth:`note_output`), else None: known without reading it
        (nor encoding it while the job is in memory)."""
        return self._large_outputs.get(job_id)

    def output_text(self, job_id: int) -> str | None:
        """The output of ``job_id`` as the JSON text recorded (``{}`` when it has none),
        or None if there is no such job: what a client reads, without decoding it."""
        record = self.get(job_id)
        if record is None:
            return None
        return encode_output(record.output or {}, None)[0]

    @abc.abstractmethod
    def last_id(self) -> int:
        """The highest id ever given (pruned records included), 0 when empty."""

    def newest_id(self) -> int:
        """The id of the newest job recorded (or given by this process), 0 when none:
        the job ``-1`` stands for.  Unlike :meth:`last_id`, not an id reserved and never
        given (by a process killed, or another one writing the same journal)."""
        return self.last_id()

    @abc.abstractmethod
    def select(
        self,
        first: int | None = None,
        last: int | None = None,
        state: str | None = None,
        data: bool = True,
    ) -> Iterator[JobRecord]:
        """Iterate over the records with ``first <= id <= last`` (and ``state``), by id,
        without their ``data`` as :meth:`get` gives them; a field that cannot be read (a
        damaged row) is named in the record's ``unreadable`` (:func:`decode_record`),
        where :meth:`get` raises."""

    @abc.abstractmethod
    def mark_interrupted(self) -> list[int]:
        """Close as ``failure``/``interrupted`` the unfinished jobs of dead processes."""

    @abc.abstractmethod
    def summary(self, first: int = 0) -> dict[str, Any]:
        """Aggregates of the jobs with ``id >= first`` (see
        :func:`dahu.statistics.aggregate`)."""

    def probe(self) -> None:  # noqa: B027 - optional for implementations
        """Commit a write that changes nothing; :class:`~dahu.errors.JournalError` if
        the journal cannot be written (the engine's test before it clears a fault)."""

    def check_file(self) -> None:  # noqa: B027 - optional for implementations
        """Put the journal's storage back if it was removed while in use (the work
        directory deleted); :class:`~dahu.errors.JournalError` if it cannot be."""

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release the journal's resources."""
