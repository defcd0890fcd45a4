"""A headless Chromium driven through the Chrome DevTools protocol (CDP).

Used to look at the web page as a person does: the tests, the demo's screenshot and the
benchmark.  Debian's ``chromium`` package is enough: the browser is started with a fresh
profile and ``--remote-debugging-port=0``; the port it picked is read from the profile's
``DevToolsActivePort`` file and the page target is driven over one WebSocket
(``websocket-client``).

    with Browser() as browser:
        browser.open("http://127.0.0.1:8080/")
        browser.wait_for("document.querySelectorAll('#recent tbody tr').length > 2")
        browser.screenshot("page.png")
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections import deque
from typing import Any

from .. import DahuError

logger = logging.getLogger(__name__)

__all__ = ["Browser", "BrowserError", "find_chromium", "CHROMIUM_FLAGS"]

# What a headless Chromium needs as root in a container, and nothing that phones home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]


class BrowserError(DahuError):
    """Chromium could not be started or did not answer as expected."""


def find_chromium() -> str | None:
    """The Chromium executable (``$DAHU_CHROMIUM``, else ``chromium`` on the PATH)."""
    for name in (os.environ.get("DAHU_CHROMIUM"), "chromium", "chromium-browser"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


class Browser:
    """One headless Chromium with one page, driven synchronously over CDP.

    :param width, height: the window size (and so the screenshot's)
    :param executable: Chromium's path (default :func:`find_chromium`)
    :param timeout: seconds to wait for the browser to start and for each call
    """

    def __init__(
        self,
        width: int = 1440,
        height: int = 1000,
        executable: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        import websocket

        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="dahu-chromium-", dir=_short_temporary_directory())
        self.errors: deque[str] = deque(maxlen=100)  # JavaScript exceptions and errors
        self._ids = itertools.count(1)
        self._events: deque[dict[str, Any]] = deque(maxlen=1000)
        command = [
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # its temporary files (a directory of its singleton socket, left behind at each
        # run otherwise) go in the profile, removed with it
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": self.profile},
        )
        try:
            port = self._devtools_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
                targets = json.load(r)
            page = next(t for t in targets if t.get("type") == "page")
            self._ws = websocket.create_connection(
                page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True
            )
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int:
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with status {self.process.returncode}")
            try:
                with open(path, encoding="utf-8") as file:
                    first = file.readline().strip()
                if first:
                    return int(first)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)  # the browser is starting: look again
        raise BrowserError(f"chromium did not open its DevTools port within {self.timeout:g} s")

    # ---- the protocol -----------------------------------------------------------------
    def _receive(self) -> dict[str, Any]:
        message = json.loads(self._ws.recv())
        method = message.get("method")
        if method == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(str(text))
        elif method == "Runtime.consoleAPICalled" and message["params"].get("type") == "error":
            args = message["params"].get("args", [])
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in args))
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events met on the way are kept)."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def _wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        for index, event in enumerate(self._events):
            if event["method"] == method:
                del self._events[index]
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._receive()
            if message.get("method") == method:
                return message
            if "method" in message:
                self._events.append(message)
        raise BrowserError(f"no {method} within {timeout:g} s")

    # ---- what a test does --------------------------------------------------------------
    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self._events.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self._wait_event("Page.loadEventFired", self.timeout)

    def viewport(self, width: int, height: int) -> None:
        """Lay pages out for a screen of this size (a phone's 375 px too: a headless
        window is at least 500 px wide)."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:60]!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value (BrowserError after
        ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {timeout:g} s: {expression}")
            time.sleep(0.1)  # the page updates itself: look again

    def text(self, selector: str) -> str:
        """The visible text of the first element matching a CSS selector ("" if none)."""
        return self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"
        )

    def screenshot(self, path: str) -> str:
        """Save a PNG of the whole page; return its path."""
        size = self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        result = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        )
        with open(path, "wb") as file:
            file.write(base64.b64decode(result["data"]))
        return path

    def js_heap(self, collect: bool = True) -> int:
        """Bytes of JavaScript heap the page uses (after a garbage collection)."""
        if collect:
            self.call("HeapProfiler.collectGarbage")
        return int(self.call("Runtime.getHeapUsage")["usedSize"])

    def pids(self) -> list[int]:
        """The browser's process and its children (renderers, GPU, utilities)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        ws = getattr(self, "_ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:  # closing a broken socket: nothing left to do
                logger.debug("closing the DevTools socket failed", exc_info=True)
        helpers = self.pids()[1:]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _end(helpers)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _end(pids: list[int], timeout: float = 5.0) -> None:
    """Wait until the browser's helper processes (network service, renderers) have
    ended, killing those still running after ``timeout``: they may write into the
    profile for a moment after the browser itself has exited, which left profiles
    half-removed now and then."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass

    def running(p: psutil.Process) -> bool:
        try:  # an ended helper may stay a zombie until the system reaps it
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while (procs := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)  # they are ending: look again
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _short_temporary_directory() -> str | None:
    """The temporary directory, or ``/tmp`` where its path is too long for Chromium: its
    singleton socket (``<profile>/.org.chromium.Chromium.XXXXXX/SingletonSocket``) must
    fit a unix socket's 107 bytes, or it aborts as it starts."""
    if len(tempfile.gettempdir()) <= 38 or not os.access("/tmp", os.W_OK):
        return None
    return "/tmp"
