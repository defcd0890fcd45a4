"""The ``Status`` text of the ``DahuDS`` device."""

from __future__ import annotations

import logging
import time
from typing import Any

from . import __version__
from .engine import Engine
from .errors import one_line
from .job import Job
from .server_settings import current_retention, settings

__all__ = ["status_text", "statistics_text", "NO_STATISTICS_YET"]

logger = logging.getLogger("dahu.server")

NO_STATISTICS_YET = "No statistics collected yet, please use the 'collectStatistics' method first"
"""``statisticsCollected`` before any collection: the original's text."""


def statistics_text() -> str:
    """The statistics of the server's jobs, as ``statisticsCollected`` gives them: the
    table, or why it could not be made, then when and in how long it was collected."""
    started = time.perf_counter()
    try:
        text = Job.stats()
    except Exception as err:
        logger.exception("collecting statistics failed")
        text = f"statistics could not be collected: {one_line(str(err))}"
    return text + (
        f"\nstatistics collected on {time.strftime('%Y-%m-%d %H:%M:%S')} "
        f"in {time.perf_counter() - started:.3f} s"
    )


def status_text(
    engine: Engine, web: Any, queue_limit: int, bad_property: str, retention_error: str
) -> str:
    """The work directory, the web page (``web``, if any), the reason of ALARM (more than
    ``queue_limit`` jobs queued) or FAULT (the journal, a bad property), the retention in
    force (or why it is not applied), and the job counters."""
    counts = engine.counts()
    lines = [f"Dahu {__version__}, work directory {engine.workdir}"]
    if web is not None:
        host = f"[{web.host}]" if ":" in web.host else web.host  # IPv6: http://[::1]:8080/
        lines.append(f"web page: http://{host}:{web.port}/")
    elif settings.web_error:  # the http property's page could not be served
        lines.append(settings.web_error)
    if engine.journal_fault:
        lines.append(f"FAULT: the journal cannot be written: {one_line(engine.journal_fault)}")
    if bad_property:
        lines.append(f"FAULT: bad device property: {bad_property}: fix it, then Init")
    for reason in engine.factory.ignored.values():  # a mount not there yet: Init finds it
        lines.append(f"{reason} until an Init finds it")
    if counts["queued"] > queue_limit:
        lines.append(f"ALARM: {counts['queued']} jobs queued, more than {queue_limit}")
    schedule = current_retention()
    if retention_error:
        lines.append(f"retention not applied: {retention_error}")
    elif schedule is not None:
        lines.append(
            f"retention: keeping {schedule.retention.describe()}, "
            f"pruned every {schedule.interval:g} s"
        )
    lines.append(
        f"jobs: {counts['queued']} queued, {counts['running']} running, "
        f"{counts['success']} succeeded, {counts['failure']} failed, "
        f"{counts['aborted']} aborted"
    )
    return "\n".join(lines)
