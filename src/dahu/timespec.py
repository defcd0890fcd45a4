"""Times written by people: durations (``90s``, ``10m``, ``1h``, ``2d``, ``1w``) and
dates (``2026-11-28``, ``2026-11-28T10:00``, ``2026-11-28 10:00:00+01:00``).

Used by ``dahu-jobs`` (``--since``, ``--until``, ``--before``) and by the server's
retention setting.  Every refusal is a :class:`BadTime` whose message is one line.
"""

from __future__ import annotations

import datetime
import re
import time

from .errors import DahuError

__all__ = [
    "BadTime",
    "UNITS",
    "LONGEST_RUNTIME",
    "parse_duration",
    "parse_when",
    "format_time",
    "format_duration",
    "quoted",
]

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
"""Seconds per unit of a duration."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])\s*$", re.IGNORECASE)


class BadTime(DahuError, ValueError):
    """A duration or a date that cannot be understood."""


def quoted(text: str) -> str:
    """``text`` quoted for a message, cut past 40 characters (a pasted file, not a date)."""
    return repr(text) if len(text or "") <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def parse_duration(text: str) -> float:
    """Seconds of a duration written as a number and a unit: ``90s``, ``10m``, ``1.5h``,
    ``2d``, ``1w``."""
    match = _DURATION.match(text or "")
    if not match:
        raise BadTime(
            f"bad duration {quoted(text)}: expected a number and a unit s, m, h, d or w (e.g. 12h)"
        )
    return float(match.group(1)) * UNITS[match.group(2).lower()]


def parse_when(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``text``: a duration back from ``now`` (``1h`` is an hour ago),
    ``now``, ``today``/``yesterday`` (local midnight), or an ISO 8601 date or date and
    time (local time unless it carries an offset or ``Z``)."""
    now = time.time() if now is None else now
    value = (text or "").strip()
    if _DURATION.match(value):
        return now - parse_duration(value)
    lowered = value.lower()
    if lowered == "now":
        return now
    if lowered in ("today", "yesterday"):
        midnight = datetime.datetime.fromtimestamp(now).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if lowered == "yesterday":
            midnight -= datetime.timedelta(days=1)
        return midnight.timestamp()
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadTime(
            f"bad date {quoted(text)}: expected a date such as 2026-11-28 or 2026-11-28T10:00, "
            "or a duration back from now such as 1h or 2d"
        ) from None
    try:
        return when.timestamp()  # naive: local time
    except (ValueError, OverflowError):  # 0001-01-01 in local time may be year 0
        pass
    try:  # a date at the ends of the calendar, which the local clock has no offset for:
        # read as UTC (hours off at most), as 99999999999d, before any job, is taken
        return when.replace(tzinfo=when.tzinfo or datetime.UTC).timestamp()
    except (ValueError, OverflowError):
        raise BadTime(f"bad date {quoted(text)}: out of the range of this system's clock") from None


def format_time(epoch: float | None) -> str:
    """``2026-11-28 10:00:01`` in local time ("" for None); a number no date is (a
    hand-edited journal's ``1e300``, infinity) as it is: ``1e+300 (not a date)``."""
    if epoch is None:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    except (OverflowError, OSError, ValueError):
        return f"{epoch:g} (not a date)"


def _significant(value: float) -> str:
    """Three significant digits, no exponent: ``3.21``, ``58.6``, ``105``."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


LONGEST_RUNTIME = 100 * 365.25 * 86400.0
"""Seconds past which a runtime is no job's (a hand-edited journal's ``1e300``)."""


def format_duration(seconds: float | None, micro: str = "µs") -> str:
    """A runtime as a person reads it, three significant digits below a minute:
    ``0.4 µs``, ``3.21 µs``, ``105 µs``, ``5.86 ms``, ``2.5 s``, ``12.3 s``, then
    ``2 min 5.0 s``, ``1 h 2 min`` ("" for None).  ``micro`` is the unit of microseconds
    (``us`` where ``µ`` cannot be shown).  A number no runtime is (negative, over a
    century, infinity, NaN) is shown as it is: ``1e+300 (not a duration)``."""
    if seconds is None:
        return ""
    if not 0 <= seconds <= LONGEST_RUNTIME:  # NaN too: not a made-up figure
        return f"{seconds:g} (not a duration)"
    if seconds == 0:
        return "0 s"
    for scale, unit in ((1e-6, micro), (1e-3, "ms"), (1.0, "s")):
        value = float(f"{seconds / scale:.3g}")  # 999.7 µs is 1 ms, not 1e+03 µs
        if value < 1000 and (unit != "s" or value < 60):
            return f"{_significant(value)} {unit}"
    tenths = round(seconds * 10)  # 59.96 s is 1 min 0.0 s, not 0 min 60.0 s
    if tenths < 36000:
        return f"{tenths // 600} min {tenths % 600 / 10:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min"
