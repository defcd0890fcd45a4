"""A database-less ``dahu_server`` subprocess on a free local port, with a client.

Used by the demo, the benchmarks and the tests that need a server in its own, fresh
process.  A port is free when picked, not when the server binds it a second later: a
server that finds its port taken starts again on another one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from ..errors import DahuError

__all__ = ["LocalServer", "ServerFailed", "die_with_parent", "free_port"]

DEVICE = "demo/dahu/1"


class ServerFailed(DahuError):
    """The local server did not start or answer."""


def free_port() -> int:
    """A TCP port that is free on this host now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Runs the command given after it, asking Linux first to SIGTERM it when its parent dies
# (PR_SET_PDEATHSIG survives exec): a demo or benchmark killed outright leaves no server.
# An exec wrapper rather than preexec_fn, which may deadlock in a process with threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n    ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(command: list[str]) -> list[str]:
    """``command`` run so that it gets SIGTERM when this process dies (on Linux)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


class LocalServer:
    """A database-less ``dahu_server`` subprocess on a free local port, with a client.

    :param workdir: the server's work directory (journal, ``.inp``/``.out`` files)
    :param log_path: where the server's stdout and stderr go
    :param max_workers: job slots (``--max-workers``); None for the server's default
    :param device: the device name; :attr:`url` is its database-less address
    :param extra_args: more ``dahu_server`` options (``--executor process``, ...)
    :param port: the TCP port (default: a free one), e.g. to restart a server where its
        clients expect it
    """

    def __init__(
        self,
        workdir: str,
        log_path: str,
        max_workers: int | None = None,
        device: str = DEVICE,
        instance: str = "demo",
        extra_args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.log_path = log_path
        self.device = device
        self._port_given = port is not None
        script = os.path.join(os.path.dirname(sys.executable), "dahu_server")
        launcher = (
            [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "dahu.app.server"]
        )
        self._launcher = [*die_with_parent(launcher), instance, "-nodb"]
        self._options = ["-dlist", device, "--workdir", workdir]
        if max_workers:
            self._options += ["--max-workers", str(max_workers)]
        self._options += list(extra_args or [])
        self._use_port(port or free_port())
        self.process: subprocess.Popen | None = None
        self.proxy: Any = None

    def _use_port(self, port: int) -> None:
        """Run the server on ``port``: its :attr:`url` and :attr:`command`."""
        self.port = port
        self.url = f"tango://127.0.0.1:{port}/{self.device}#dbase=no"
        self.command = [*self._launcher, "-port", str(port), *self._options]

    def _lost_its_port(self) -> bool:
        """True if the server exited as the port it was given was taken (free when it
        was picked, taken meanwhile: by another program, or any connection's local
        port), and the port was one we picked: then it may run on another one."""
        if self._port_given:
            return False
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                text = log.read()
        except OSError:
            return False
        return f"Failed to bind to address 0.0.0.0 port {self.port}." in text

    def start(self, timeout: float = 30.0) -> Any:
        """Start the server and return a ``DeviceProxy`` once the device answers ``ping``."""
        import tango

        os.makedirs(self.workdir, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    if self._lost_its_port() and time.monotonic() < deadline:
                        self._use_port(free_port())
                        return self.start(max(0.0, deadline - time.monotonic()))
                    raise ServerFailed(
                        f"dahu_server exited with status {self.process.returncode} "
                        f"(see {self.log_path})"
                    )
                try:
                    proxy = tango.DeviceProxy(self.url)
                    proxy.ping()
                    self.proxy = proxy
                    return proxy
                except tango.DevFailed:
                    if time.monotonic() > deadline:
                        raise ServerFailed(
                            f"dahu_server did not answer within {timeout:g} s (see {self.log_path})"
                        ) from None
                    time.sleep(0.05)  # the server is starting: poll again
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server and wait for it to exit; its exit status (killed after
        ``timeout`` s: None)."""
        self.proxy = None
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return None
        return process.returncode
