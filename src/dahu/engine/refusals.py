"""The ``.inp``/``.out`` files of the engine's jobs (its files thread, a journal writable
again), and the disk's refusals of them told once: a full disk refuses the files of
every job that ends, and a burst of 100,000 jobs made as many error lines.

The first refusal of a kind (``[Errno 28] No space left on device``) is logged with the
job and its reason; the next ones of that kind are counted, and told in one line once a
job's files are written again, a refusal of another kind comes, or the engine stops."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..journal import write_job_files

logger = logging.getLogger(__name__)

__all__ = ["write_files", "tell_refused"]

_lock = threading.Lock()


def write_files(engine: Any, job_id: int, plugin: str, input_data: Any, output: Any) -> bool:
    """Write the ``.inp``/``.out`` files of job ``job_id`` of ``engine``; False (logged,
    or counted: see the module) if they cannot be."""
    try:
        write_job_files(engine.workdir, job_id, plugin, input_data, output)
    except Exception as err:  # the disk, or plugin data no JSON text can hold
        engine.files_failed += 1
        kind = (type(err), getattr(err, "errno", None) or str(err))
        with _lock:
            refused = getattr(engine, "files_refused", None)
            if refused is not None and refused[0] == kind:
                refused[1] += 1
                return False
            engine.files_refused = [kind, 0, err]
        if refused is not None:
            _tell(refused)
        logger.error(
            "job %s: cannot write its .inp/.out files: %s (the next jobs refused so are "
            "counted, not logged each)",
            *(job_id, err),
        )
        return False
    if getattr(engine, "files_refused", None) is not None:  # (no lock: none, mostly)
        tell_refused(engine)
    return True


def tell_refused(engine: Any) -> None:
    """Log how many jobs' files were refused since the first one logged, if any."""
    with _lock:
        refused, engine.files_refused = getattr(engine, "files_refused", None), None
    if refused is not None:
        _tell(refused)


def _tell(refused: list) -> None:
    if refused[1]:
        error = refused[2]
        reason = getattr(error, "strerror", None) or str(error)
        logger.error("%d more job(s) got no .inp/.out files: %s", refused[1], reason)
