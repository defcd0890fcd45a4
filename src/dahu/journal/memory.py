"""A journal kept in memory: the contract of :class:`~dahu.journal.base.Journal`,
nothing survives the process (for tests and throw-away runs)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .. import __version__
from ..states import State
from ..statistics import aggregate
from ..utils import utf8_text
from .base import HOST, JobRecord, Journal, encode_final_input, encode_input, encode_noted

__all__ = ["MemoryJournal"]


class MemoryJournal(Journal):
    """A journal kept in memory: same contract, nothing survives the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, JobRecord] = {}
        self._last = 0
        self.workdir = None

    def _new(self, plugin: str, text: str, submitted: float) -> int:
        """Record one job (lock held)."""
        self._last += 1
        self._records[self._last] = JobRecord(
            self._last,
            utf8_text(plugin),  # as SQLite has it
            State.UNINITIALIZED,
            json.loads(text),
            submitted=submitted,
            host=HOST,
            pid=os.getpid(),
            version=__version__,
        )
        return self._last

    def create(self, plugin: str, input_data: dict[str, Any], submitted: float) -> int:
        text = encode_input(input_data)
        with self._lock:
            return self._new(plugin, text, submitted)

    def create_many(self, plugin: str, inputs: list[dict[str, Any]], submitted: float) -> list[int]:
        texts = [encode_input(data) for data in inputs]
        with self._lock:
            return [self._new(plugin, text, submitted) for text in texts]

    def set_state(self, job_id: int, state: str, started: float | None = None) -> None:
        with self._lock:
            record = self._records.get(job_id)
            if record is None or record.state in State.FINAL:
                return
            record.state = state
            record.started = started if started is not None else record.started

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
        noted: Any = None,
    ) -> None:
        text, error = encode_noted(output, error, noted)
        self.note_output(job_id, text)
        final_input = encode_final_input(job_id, input_data)
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return
            if final_input is not None:
                record.input = json.loads(final_input)
            record.state, record.error = state, error
            record.output = json.loads(text) if text is not None else None
            record.started, record.ended = started, ended
            if started is not None and ended is not None:
                record.runtime = ended - started
            record.module_file = utf8_text(module_file)
            record.plugin_version = utf8_text(plugin_version)

    def get(self, job_id: int, data: bool = True) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return None
            copy = replace(record, input=json.loads(json.dumps(record.input)) if data else {})
            copy.output = json.loads(json.dumps(record.output)) if data else None
        copy.input["job_id"] = job_id
        return copy

    def last_id(self) -> int:
        with self._lock:
            return self._last

    def select(
        self,
        first: int | None = None,
        last: int | None = None,
        state: str | None = None,
        data: bool = True,
    ) -> Iterator[JobRecord]:
        with self._lock:
            ids = sorted(self._records)
        for job_id in ids:
            if (first is None or job_id >= first) and (last is None or job_id <= last):
                record = self.get(job_id, data)
                if record is not None and (state is None or record.state == state):
                    yield record

    def mark_interrupted(self) -> list[int]:
        return []  # nothing outlives the process that holds it

    def summary(self, first: int = 0) -> dict[str, Any]:
        with self._lock:
            rows = [
                (r.plugin, r.state, r.started, r.ended, r.runtime)
                for i, r in sorted(self._records.items())
                if i >= first
            ]
        return aggregate(rows)
