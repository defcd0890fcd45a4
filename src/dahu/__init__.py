"""Dahu: a data-analysis job server for synchrotron beamlines.

Plugins (classes or plain functions) are loaded from plugin directories and run as
jobs; every job is recorded in a persistent journal; a Tango device (``DahuDS``) lets
the control system submit jobs and follow them.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("dahu")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

version = __version__

from .errors import DahuError  # noqa: E402 - after the version, which errors does not need


__all__ = ["DahuError", "__version__", "version"]
