"""The machine's part in a benchmark's figures: the CPU time the hypervisor gave to other
guests (``steal``) while a run went on.

On a shared virtual machine a rate can move by half from one minute to the next; a
figure printed with the steal of its own minutes can be read for what it is.  The
benchmarks of this directory import it (run as scripts, they find it next to them).
"""

from __future__ import annotations

__all__ = ["cpu_ticks", "steal_percent", "StealMeter"]


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time counters (Linux ``/proc/stat``), None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_percent(before: list[int] | None, after: list[int] | None) -> float | None:
    """Percent of the CPU time the hypervisor gave to others (``steal``) in between."""
    if not before or not after or len(before) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=False)]
    return round(100.0 * spent[7] / max(sum(spent), 1), 1)


class StealMeter:
    """The steal over a block: ``with StealMeter() as meter: ...``, then ``meter.percent``
    (None where the counters cannot be read)."""

    def __init__(self) -> None:
        self.percent: float | None = None
        self._before: list[int] | None = None

    def __enter__(self) -> StealMeter:
        self._before = cpu_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.percent = steal_percent(self._before, cpu_ticks())
