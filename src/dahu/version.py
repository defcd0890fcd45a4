"""Dahu's version, as the module the original package had (``import dahu.version``).

``version`` is the installed distribution's version string (plugins write it into their
results); ``version_info`` its numeric parts, ``hexversion`` them packed as the original
packed them (as Python packs its own, the year not cut to a byte), ``strictversion`` the
bare ``X.Y.Z`` form, ``citation`` how to cite Dahu.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["version", "version_info", "hexversion", "strictversion", "citation", "__date__"]

# The one place the version is written: pyproject.toml reads it from here at build time
# (a literal, so that importing Dahu needs no package metadata lookup).
version = "2026.11.0"


class VersionInfo(NamedTuple):
    """The parts of :data:`version`: ``(major, minor, micro, releaselevel, serial)``."""

    major: int
    minor: int
    micro: int
    releaselevel: str
    serial: int


def _parse(text: str) -> VersionInfo:
    numbers = [int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3]]
    numbers += [0] * (3 - len(numbers))
    return VersionInfo(numbers[0], numbers[1], numbers[2], "final", 0)


version_info = _parse(version)
strictversion = f"{version_info.major}.{version_info.minor}.{version_info.micro}"
# packed as the original packed it (the year is not cut to a byte: 2024.2.0 is 0x7e80200f0),
# so that the number grows from the original's versions to these
hexversion = (
    version_info.major << 24 | version_info.minor << 16 | version_info.micro << 8 | 0xF << 4
)
__date__ = strictversion
citation = "Dahu: a data-analysis job server for synchrotron beamlines, version " + version
