"""The text of ``dahu-jobs``: its tables, escaped cells, runtimes, and the one line that
tells a field of a job's record is unreadable (a damaged or hand-edited journal row)."""

from __future__ import annotations

import re
import sys
from typing import IO, Any

from ..errors import shown_name
from ..journal.base import unreadable_field
from ..timespec import format_duration
from ..utils import one_line

__all__ = ["Unreadable", "write_table", "shown", "cut", "runtime_text", "micro"]


class Unreadable:
    """Says on stderr, in one line each, which fields of which jobs could not be read;
    true once it said one (the command's exit status then tells it)."""

    def __init__(self, prog: str) -> None:
        self.prog, self.count = prog, 0

    def __call__(self, job_id: Any, name: str, reason: str) -> None:
        self.count += 1
        sys.stderr.write(f"{self.prog}: {shown(unreadable_field(job_id, name, reason))}\n")

    def record(self, record: Any) -> None:
        for name, reason in record.unreadable.items():
            self(record.id, name, reason)

    def __bool__(self) -> bool:
        return self.count > 0


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str, lines: bool = False) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``): a plugin name
    a client sent with a new line or a terminal escape neither breaks a table's rows nor
    drives the terminal; with ``lines``, new lines and tabs are kept (a traceback)."""
    control = _CONTROL_BUT_LINES if lines else _CONTROL
    return control.sub(lambda match: repr(match.group())[1:-1], text)


def shown_plugin(name: str) -> str:
    """A plugin name as the tables show it: :func:`shown`, and past 200 characters cut
    in its middle as the device's answers cut it (a script may record a name of
    megabytes: each row was that wide)."""
    return shown_name(shown(name))


def cut(text: str | None, width: int = 60) -> str:
    return shown(one_line(text or "", width))


def runtime_text(value: float | None, out: IO[str]) -> str:
    """``105 µs``, ``5.86 ms``, ``2.5 s``: not ``0.000`` for a job of a few µs."""
    return format_duration(value, micro(out))


def micro(out: IO[str]) -> str:
    try:
        "µ".encode(out.encoding or "ascii")
    except (UnicodeEncodeError, LookupError, TypeError):
        return "us"  # a terminal that cannot show µ
    return "µs"


def write_table(headers: list[str], rows: Any, cells: Any, out: IO[str]) -> None:
    """The table ``tabulate`` writes (its ``simple`` format, text cells), written row by
    row: ``cells(row)`` is made twice (widths, then lines) rather than kept, so that a
    million jobs start coming at once and take no memory (tabulate took a minute and
    1.7 GB before writing the first line)."""
    widths = [len(header) + 2 for header in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells(row), strict=True)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    out.write("\n" + "  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(cells(row), widths, strict=True)).rstrip())
        out.write("\n")
