"""The demo's look at the web page: an optional steady load, then a screenshot.

``dahu-demo`` serves the page (``--http``) of its server; once its jobs have ended, it
may keep the server busy for ``--load`` seconds (jobs per second, a few slow jobs, a
failure now and then) so that the plots have something to show, and saves what a person
sees in a browser as ``dashboard.png`` (headless Chromium, :mod:`dahu.web.browser`).
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["keep_busy", "save_screenshot"]

LOAD_BATCH = 20  # jobs per startJobs call during the load
LOAD_PERIOD = 0.1  # seconds between two batches: 200 jobs/s


def keep_busy(proxy: Any, seconds: float) -> int:
    """Submit a steady load for ``seconds``: quick jobs, slow ones and the odd failure
    (about 200 jobs/s).

    Return how many jobs were submitted.  Their outcome is not checked: they are there
    for the page's plots and tables.  A server too busy to answer ends the load early.
    """
    import tango

    if seconds <= 0:
        return 0
    timeout = proxy.get_timeout_millis()
    proxy.set_timeout_millis(max(timeout, 10_000))  # a busy machine: be patient
    try:
        return _load(proxy, seconds)
    except tango.DevFailed as err:
        reason = err.args[0].desc.strip().partition("\n")[0]
        print(f"the load stopped early: {reason}")
        return 0
    finally:
        proxy.set_timeout_millis(timeout)


def _load(proxy: Any, seconds: float) -> int:
    submitted = 0
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        inputs = [{"x": submitted + i} for i in range(LOAD_BATCH)]
        proxy.startJobs(["example.square", json.dumps(inputs)])
        submitted += LOAD_BATCH
        if tick % 20 == 0:  # every 2 s, a job that runs a while
            proxy.startJob(["example.sleep", json.dumps({"t": 3.0})])
            submitted += 1
        if tick % 70 == 35:  # now and then, a failure
            message = "expected failure: a frame without monitor value"
            proxy.startJob(["example.error", json.dumps({"message": message})])
            submitted += 1
        tick += 1
        next_tick = start + tick * LOAD_PERIOD
        time.sleep(max(0.0, next_tick - time.monotonic()))  # pace the load
    return submitted


def save_screenshot(url: str, path: str, last_job: int, timeout: float = 60.0) -> str | None:
    """Open the page in headless Chromium once it lists ``last_job``; save a PNG.

    Return the path, or None (with the reason printed) when Chromium is not installed.
    """
    from ..web.browser import Browser, BrowserError, find_chromium

    if find_chromium() is None:
        print("no screenshot of the web page: chromium is not installed")
        return None
    try:
        with Browser(width=1440, height=1000) as browser:
            browser.open(url)
            browser.wait_for(
                "Array.from(document.querySelectorAll('#recent tbody tr, #failures tbody tr'))"
                f".some(r => Number(r.cells[0].innerText) >= {int(last_job)})"
                " && document.querySelectorAll('.chart .main-svg').length >= 3",
                timeout,
            )
            browser.screenshot(path)
    except BrowserError as err:
        print(f"no screenshot of the web page: {err}")
        return None
    return path
