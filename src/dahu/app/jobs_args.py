"""The argument types of ``dahu-jobs``: dates, counts, job ids and durations, each refused
in one line (``argparse`` prefixes the option's name)."""

from __future__ import annotations

import argparse
import os

from ..journal.base import MAX_ID
from ..properties import local_directory as workdir  # -w "$DIR", DIR unset: refused
from ..timespec import BadTime, parse_duration, parse_when

__all__ = ["workdir", "output", "plugin", "when", "count", "job_id", "seconds"]


def output(text: str) -> str:
    """A file to write; an empty name is refused (``-o "$OUT"`` with ``OUT`` unset wrote
    to standard output until 2026-11-30): ``-`` is standard output; a leading ``~`` is the
    home directory, as in ``-w``."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty name (an unset variable?): give a file, or - for standard output"
        )
    return os.path.expanduser(text)


def plugin(text: str) -> str:
    """A plugin name, without the spaces around it (the device strips them from the names
    of the jobs it starts; until 2026-11-30 ``--plugin ' example.square '`` found none)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty plugin name: give one (any case)")
    return text.strip()


def when(text: str) -> float:
    try:
        return parse_when(text)
    except BadTime as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _too_long(text: str) -> bool:
    """Whether ``text`` is a whole number of more digits than ``int()`` reads (4,300
    here; over 40 is past any job id or count)."""
    digits = text.strip().removeprefix("-")
    return len(digits) > 40 and digits.isascii() and digits.isdigit()


def count(text: str) -> int:
    if _too_long(text):
        if text.strip().startswith("-"):
            raise argparse.ArgumentTypeError(f"expected 0 or more, not {text.strip()[:20]}...")
        return MAX_ID  # more than any journal holds: all
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, not {value}")
    return value


def job_id(text: str) -> int:
    if _too_long(text):  # not "a job id is a whole number"
        raise argparse.ArgumentTypeError(
            f"no job {text.strip()[:20]}...: ids have at most 19 digits"
        )
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a job id is a whole number, not {text[:40]!r}") from None
    if value == 0:
        raise argparse.ArgumentTypeError("job ids start at 1 (-1: the last job)")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except BadTime as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    shown = (
        f"{text.strip()[:20]!r}... ({len(text.strip())} characters)"
        if len(text) > 40
        else repr(text)
    )
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"a duration of 0 s or more, not {shown}")
    if value == float("inf"):  # 1e400, or 400 digits: not "0 s or more"
        raise argparse.ArgumentTypeError(f"a duration too long for a number of seconds: {shown}")
    return value
