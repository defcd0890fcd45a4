"""Dahu: a data-analysis job server for synchrotron beamlines.

Plugins (classes or plain functions) are loaded from plugin directories and run as
jobs; every job is recorded in a persistent journal; a Tango device (``DahuDS``) lets
the control system submit jobs and follow them.
"""

# ``dahu.version`` is a module (as in the original) and ``from dahu import version`` gives
# the version string: the name is rebound to the string once the module is imported.
from .version import hexversion, strictversion, version, version_info  # noqa: F401

__version__ = version

from .errors import DahuError  # noqa: E402 - after the version, which errors does not need

__all__ = ["DahuError", "__version__", "version"]
