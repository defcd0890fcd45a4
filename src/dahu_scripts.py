"""The entry points of Dahu's console scripts (``[project.scripts]`` in ``pyproject.toml``).

Each imports its tool's module only once it runs, so that a Ctrl-C while that module is
imported (the first 0.1 to 0.2 s of a run, longer on a busy machine) or before the tool
handles Ctrl-C itself ends the command with one line, ``PROG: interrupted``, and the
status 130, as a Ctrl-C later does, not with a traceback of the imports.  A module of its
own, outside the ``dahu`` package, which imports nothing that Python has not imported at
its start: a module of the package would be imported after ``dahu`` and ``dahu.app``
(``typing``, ``re``, ``logging``: 0.03 s, 0.17 s on a busy machine), whose Ctrl-C would
still be a traceback.  Only one in Python's own start (some hundredths of a second) is.
"""

from __future__ import annotations

import sys

__all__ = ["dahu_server", "dahu_register", "dahu_reprocess", "dahu_jobs", "dahu_demo", "run"]

EXIT_INTERRUPTED = 130


def run(prog: str, module: str, function: str) -> object:
    """Import ``module`` and call its ``function`` (a tool's entry point): its result,
    or 130 when a Ctrl-C (SIGINT) interrupted them with a ``KeyboardInterrupt``."""
    try:
        __import__(module)  # not importlib: Python's start has not imported it
        return getattr(sys.modules[module], function)()
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED


def dahu_server() -> object:
    return run("dahu_server", "dahu.app.server", "cli")


def dahu_register() -> object:
    return run("dahu-register", "dahu.app.register", "main")


def dahu_reprocess() -> object:
    return run("dahu-reprocess", "dahu.app.reprocess", "cli")


def dahu_jobs() -> object:
    return run("dahu-jobs", "dahu.app.jobs", "main")


def dahu_demo() -> object:
    return run("dahu-demo", "dahu.app.demo", "main")
