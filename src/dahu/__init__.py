"""Dahu: a data-analysis job server for synchrotron beamlines.

Plugins (classes or plain functions) are loaded from plugin directories and run as
jobs; every job is recorded in a persistent journal; a Tango device (``DahuDS``) lets
the control system submit jobs and follow them.

As in the original package, ``import dahu`` gives ``dahu.job``, ``dahu.plugin``,
``dahu.factory``, ``dahu.utils``, ``dahu.cache`` and ``dahu.plugin_factory``; they are
imported on first use (a command-line tool that imports Dahu does not pay for them).
"""

from __future__ import annotations

import importlib
from typing import Any

# ``dahu.version`` is a module (as in the original) and ``from dahu import version`` gives
# the version string: the name is rebound to the string once the module is imported.
from .version import citation, hexversion, strictversion, version, version_info  # noqa: F401

__version__ = version
project = "dahu"

from .errors import DahuError  # noqa: E402 - after the version, which errors does not need

__all__ = ["DahuError", "__version__", "version"]

_SUBMODULES = frozenset({"cache", "factory", "job", "plugin", "utils"})


def __getattr__(name: str) -> Any:
    """The original's ``dahu.job``, ``dahu.plugin_factory``... imported when first read."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds it here
    if name == "plugin_factory":
        return importlib.import_module(f"{__name__}.factory").plugin_factory
    if name == "date":
        return importlib.import_module(f"{__name__}.version").__date__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
