"""Command-line entry points: dahu_server, dahu-register, dahu-reprocess."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import NoReturn

logger = logging.getLogger(__name__)

#: seconds the tools wait, at exit, for threads that plugins started and left running
THREAD_GRACE = 2.0

#: third-party loggers whose warnings are noise in a tool's output: silx's "Unable to import
#: pyOpenCl" when pyFAI is imported (the plugins integrate on the CPU)
NOISY_LOGGERS = ("silx.opencl.common",)
#: the environment variable naming them (space-separated) to the worker processes
QUIET_LOGGERS = "DAHU_QUIET_LOGGERS"


def quiet_third_parties() -> None:
    """Show only the errors of :data:`NOISY_LOGGERS`, in this process and in the worker
    processes it starts (``--executor process``)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ[QUIET_LOGGERS] = " ".join(NOISY_LOGGERS)


def leave(status: int, grace: float = THREAD_GRACE) -> NoReturn:
    """Exit with ``status``, even if plugins left threads running.

    Python waits for every non-daemon thread before a process ends: one that a plugin
    started and never stops (a monitor loop, a busy ``ThreadPoolExecutor``) would keep
    ``dahu_server`` or ``dahu-reprocess`` alive for ever after their work is done.  Such
    threads get ``grace`` seconds to end; then the process exits without them, and says
    which ones it left.
    """
    deadline = time.monotonic() + grace
    for thread in _leftovers():
        thread.join(max(0.0, deadline - time.monotonic()))
    left = _leftovers()
    if not left:
        sys.exit(status)
    names = ", ".join(sorted(thread.name for thread in left))
    logger.warning(
        "exiting without waiting for %d thread(s) that plugins left running: %s", len(left), names
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe
            pass
    os._exit(status)


def _leftovers() -> list[threading.Thread]:
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
