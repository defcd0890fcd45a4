"""The ``process`` executor: plugins run in long-lived, isolated worker processes.

Each slot of the pool (a thread of :class:`~dahu.executors.thread.ThreadExecutor`) owns one
worker process (``python -m dahu.executors.worker``), started on first use as a fresh interpreter
(safe in a multi-threaded Tango server).  Plugin modules are imported in the worker once
and reused, so caches stay warm between jobs.

* A worker that dies (segfault, ``os._exit``, out of memory) turns its job into
  ``failure`` with the reason (``worker process died: signal 11 (SIGSEGV)``); the next
  job on that slot gets a new worker.  The server keeps serving.  A job whose worker
  died before it began there (before the worker's ``begin``) is never blamed: it is sent
  to a new worker, once.  One that died while the previous job's plugin was still being
  let go there (its ``__del__``, which may have done it) says the job may be innocent.
* ``abort`` asks the plugin first; if the job has not ended ``abort_grace`` seconds
  later the worker is killed.  The job ends ``aborted`` either way.
* Workers can be recycled after ``recycle_jobs`` jobs or once their resident memory
  passes ``recycle_rss_mb``.
* Every message of a worker names its job: one for another job (a stray or stale
  message) is logged and ignored, never taken for this job's outcome.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from ..errors import error_line
from ..states import State
from .base import Task, close_orphans
from .pool_size import process_workers
from .runner import Outcome
from .thread import ThreadExecutor, option_number
from .worker import LOST_PIPE, outcome_from_message

logger = logging.getLogger(__name__)
NEVER = "0 or None: never"

WORKER_START = 60.0
"""Seconds a job's clock waits, at most, for the worker process started for it to take
it (``begin``): an interpreter slow to start (a loaded machine) is not the job's time."""

__all__ = ["ProcessExecutor", "WorkerProcess"]


def exit_text(exitcode: int) -> str:
    """``signal 11 (SIGSEGV)`` for a process killed by a signal, else ``exit code 1``."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"signal {-exitcode} ({name})"
    return f"exit code {exitcode}"


def death_reason(exitcode: int | None) -> str:
    """``worker process died: signal 11 (SIGSEGV)`` / ``... exit code 1``."""
    if exitcode is None:
        return "worker process died"
    if exitcode == LOST_PIPE:
        return (
            f"worker process died: it lost its pipe to the server (did the plugin close its "
            f"file descriptors?), exit code {exitcode}"
        )
    return f"worker process died: {exit_text(exitcode)}"


def after_job(worker: WorkerProcess) -> str:
    """`` after job 12 ended`` (the last job that worker ran), or ""."""
    return f" after job {worker.last_job} ended" if worker.last_job is not None else ""


class WorkerProcess:
    """One worker process (``python -m dahu.executors.worker``) and the server's end of
    its pipe.

    A plain subprocess rather than ``multiprocessing``: it never re-imports the server's
    main module and inherits none of its threads.
    """

    def __init__(self, workdir: str, plugin_dirs: list[str]):
        ours, theirs = socket.socketpair()
        level = logging.getLogger("dahu").getEffectiveLevel()
        command = [sys.executable, "-m", __package__ + ".worker", str(theirs.fileno()), workdir]
        command.append(str(level))
        # a process group of its own: a terminal's Ctrl-C (SIGINT to the server's group)
        # is the server's to handle, which aborts the jobs and then stops the workers
        self.process = subprocess.Popen(
            [*command, *plugin_dirs],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.plugin_dirs = list(plugin_dirs)
        self.jobs = 0
        self.last_job: int | None = None  # the last job whose outcome came back
        # earlier jobs whose plugin was still being let go (its __del__) as this one began
        self.letting_go: set[int] = set()
        self.rss = 0  # its memory after its last job (settled: once its plugin was let go)
        self.settled = True
        self._send_lock = threading.Lock()
        self._stopped = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        """The exit code (negative: killed by that signal), None while it runs."""
        return self.process.poll()

    def is_alive(self) -> bool:
        """True while the worker runs."""
        return self.process.poll() is None

    def send(self, message: tuple) -> bool:
        """Send a message; False if the worker is gone."""
        try:
            with self._send_lock:
                if self._stopped:
                    return False
                self.conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def released(self, message: tuple) -> bool:
        """Take a ``released`` message (a job's plugin let go) or a ``memory`` one (the
        memory once they are); False for any other message."""
        if message[0] == "released" and len(message) == 2:
            self.letting_go.discard(message[1])
        elif message[0] == "memory" and len(message) == 3:
            self.rss, self.settled = message[2], True
        else:
            return False
        return True

    def settle(self, timeout: float = 2.0) -> None:
        """Between two jobs: its memory once the plugins of the jobs before are let go
        (``timeout`` s at most)."""
        if self.settled or not self.send(("memory",)):
            return
        deadline = time.monotonic() + timeout
        try:
            while not self.settled and self.conn.poll(max(0.0, deadline - time.monotonic())):
                message = self.conn.recv()
                if not self.released(message):
                    logger.warning(
                        "worker %s: ignored a %r message between jobs", self.pid, message[0]
                    )
        except (EOFError, OSError):  # it died: the next job finds out
            pass

    def kill(self) -> None:
        """Kill the worker now, with the processes its plugins started (its process
        group): an external program a hung plugin waits for must not outlive its job."""
        if self.process.returncode is None:  # not reaped yet: its pid names its group
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.is_alive():
            self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 5.0, wait: bool = True) -> None:
        """Ask the worker to stop (it gives a plugin still being let go, its ``__del__``,
        up to 3 s); kill it if it does not, with ``wait`` (else :meth:`finish` does).
        Safe to call more than once, from several threads (the pool thread and
        ``shutdown`` may both do it)."""
        with self._send_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                self.conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if wait:
            self.finish(timeout)

    def finish(self, timeout: float = 5.0) -> None:
        """Wait for a worker told to stop; kill it if it has not ended within ``timeout``."""
        try:
            self.process.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill()
        with self._send_lock:
            self.conn.close()


class RemoteExecution:
    """Runs one job in a worker process (the ``Execution`` interface of the executors)."""

    plugin = None  # the plugin lives in the worker
    in_process = False

    def __init__(self, executor: ProcessExecutor, worker: WorkerProcess, task: Task):
        self.executor = executor
        self.worker = worker
        self.plugin_name = task.plugin_name
        self.input_data = task.input_data
        self.job_id = task.job_id
        self.on_plugin = task.plugin_loaded
        self.abort_reason: str | None = None
        self.killed = False
        self._done = threading.Event()
        self.created = time.monotonic()
        self.begun: float | None = None  # when its worker took it

    def time_left(self, limit: float) -> float:
        """The job's time of ``limit`` s seems up: the seconds more it gets, its clock
        counting from its begin in its worker (started for it, maybe); ``limit`` again
        while it has not begun, for :data:`WORKER_START` s; 0 once its time is up."""
        if self.begun is None:
            return limit if time.monotonic() - self.created < WORKER_START else 0.0
        return max(0.0, limit - (time.monotonic() - self.begun))

    def abort(self, reason: str = "aborted on request") -> None:
        """Ask the plugin to stop; kill the worker if it has not after the grace period."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self.worker.send(("abort", self.job_id, reason))
        self.executor.host.watchdog.call_later(self.executor.abort_grace, self._kill)

    def _kill(self) -> None:
        if not self._done.is_set() and self.worker.is_alive():
            logger.warning(
                "job %s did not stop %g s after abort: killing worker %s",
                self.job_id,
                self.executor.abort_grace,
                self.worker.pid,
            )
            self.killed = True
            self.worker.kill()

    def run(self) -> Outcome:
        """Send the job, follow the worker's messages, never raise."""
        started = time.time()
        try:
            outcome = self._follow(started, again=True)
            if outcome is None:  # its worker died before it began: once more, on a new one
                try:
                    self.worker = self.executor.worker_process()
                except Exception as err:  # as ThreadExecutor._run says it
                    logger.exception("job %s: cannot start", self.job_id)
                    reason = f"cannot start the job: {error_line(err)}"
                    return Outcome(State.FAILURE, {}, reason, started, time.time())
                outcome = self._follow(started, again=False)
            return outcome
        finally:
            self._done.set()

    def _follow(self, started: float, again: bool) -> Outcome | None:
        """Send the job to :attr:`worker` and follow its messages; None if the worker died
        before it began the job (before its ``begin``), which may then be sent again."""
        waiting = None
        begun = False
        try:
            if not self.worker.send(("run", self.job_id, self.plugin_name, self.input_data)):
                return self._died(started, begun, again)
            if self.abort_reason is not None:  # an abort sent before the job was: again
                self.worker.send(("abort", self.job_id, self.abort_reason))
            while True:
                if not self.worker.conn.poll(0.25):
                    if not self.worker.is_alive() and not self.worker.conn.poll(0):
                        return self._died(started, begun, again)
                    continue
                try:
                    message = self.worker.conn.recv()
                except (EOFError, OSError):
                    return self._died(started, begun, again)
                kind = message[0]
                if self.worker.released(message):
                    continue
                if len(message) < 2 or message[1] != self.job_id:
                    # not this job's (a stale or stray message): never its outcome
                    logger.warning(
                        "job %s: ignored a %r message of worker %s for job %r",
                        self.job_id,
                        kind,
                        self.worker.pid,
                        message[1] if len(message) > 1 else None,
                    )
                    continue
                if kind == "begin":
                    begun, self.begun = True, time.monotonic()
                    self.worker.letting_go = set(message[2] if len(message) > 2 else ())
                elif kind == "plugin" and self.on_plugin is not None:
                    self.on_plugin(message[2])
                elif kind == "waiting" and waiting is None:
                    waiting = self.executor.waiting(self._done.is_set)
                    waiting.__enter__()
                elif kind == "resumed" and waiting is not None:
                    waiting.__exit__(None, None, None)
                    waiting = None
                elif kind == "done":
                    return self._outcome(message[2])
        finally:
            if waiting is not None:  # the worker died waiting: no slot to wait for
                self._done.set()
                waiting.__exit__(None, None, None)

    def _outcome(self, data: dict[str, Any]) -> Outcome:
        self.worker.jobs += 1
        self.worker.last_job = self.job_id
        self.worker.rss = data.get("rss", 0)  # with its plugin still held: see settle
        self.worker.settled = False
        return outcome_from_message(data)

    def _died(self, started: float, begun: bool, again: bool) -> Outcome | None:
        """The outcome of a job whose worker died: None if it may be sent again (``again``:
        the worker died before it began the job, which is never blamed for it)."""
        try:
            self.worker.process.wait(5)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.executor.discard(self.worker)
        self.executor.close_orphans()
        if self.killed or self.abort_reason is not None:
            reason = self.abort_reason or "aborted on request"
            if self.killed:
                reason += f" (worker killed after {self.executor.abort_grace:g} s)"
            return Outcome(State.ABORTED, {}, reason, started, time.time())
        reason = death_reason(self.worker.exitcode)
        if not begun:
            logger.warning(
                "job %s: %s (pid %s) before the job began%s: %s",
                self.job_id,
                reason,
                self.worker.pid,
                after_job(self.worker),
                "it is sent to a new worker" if again else "it is not sent again",
            )
            if again:
                return None
            reason += ", before the job began"
        elif self.worker.letting_go:  # its __del__ may have done it: the job may be innocent
            earlier = ", ".join(str(job) for job in sorted(self.worker.letting_go))
            jobs = "jobs" if len(self.worker.letting_go) > 1 else "job"
            reason += (
                f", as the plugin of {jobs} {earlier} was still being let go there (its "
                "__del__): this job may be innocent"
            )
        # marked: a tool that reports every failed job itself leaves this line out
        logger.error("job %s: %s", self.job_id, reason, extra={"job_failure": True})
        return Outcome(State.FAILURE, {}, reason, started, time.time())


class ProcessExecutor(ThreadExecutor):
    """A pool of ``max_workers`` long-lived worker processes (see the module doc).

    :param recycle_jobs: replace a worker after this many jobs (None: never)
    :param recycle_rss_mb: replace a worker whose memory passed this many MB (None: never)
    :param abort_grace: seconds a plugin has to stop after ``abort`` before its worker is
        killed
    """

    name = "process"
    _count = staticmethod(process_workers)  # as many as the memory allows
    abandons_hung_jobs = False  # its workers are killed instead
    isolates_plugins = True

    def __init__(
        self,
        max_workers: int | None = None,
        recycle_jobs: int | None = None,
        recycle_rss_mb: float | None = None,
        abort_grace: float = 2.0,
        idle_timeout: float = 600.0,
    ):
        super().__init__(max_workers, idle_timeout=idle_timeout)
        self.recycle_jobs = option_number("recycle_jobs", recycle_jobs, "jobs", NEVER, whole=True)
        self.recycle_rss_mb = option_number("recycle_rss_mb", recycle_rss_mb, "MB", NEVER)
        self.abort_grace = option_number("abort_grace", abort_grace, "seconds")
        self._local = threading.local()
        self._workers: set[WorkerProcess] = set()
        self._workers_lock = threading.Lock()

    def worker_process(self) -> WorkerProcess:
        """This slot's worker process: a new one if it has none, or a dead or worn-out
        one."""
        worker = getattr(self._local, "worker", None)
        if worker is not None and not worker.is_alive():  # it died between two jobs
            logger.warning(
                "worker %s: %s%s",
                worker.pid,
                death_reason(worker.exitcode),
                after_job(worker),
            )
            self.discard(worker)
            self.close_orphans()
            worker = None
        if worker is not None and (why := self._worn_out(worker)):
            logger.info("recycling worker %s %s", worker.pid, why)
            self.discard(worker)
            worker.stop()
            self.close_orphans()
            worker = None
        if worker is None:
            worker = WorkerProcess(self.host.workdir, self.host.factory.directories)
            with self._workers_lock:
                self._workers.add(worker)
            self._local.worker = worker
        return worker

    def _worn_out(self, worker: WorkerProcess) -> str:
        """Why ``worker`` is to be replaced now ("" if it is not)."""
        if worker.plugin_dirs != self.host.factory.directories:  # a device Init added one
            return "for the new plugin directories"
        if self.recycle_jobs and worker.jobs >= self.recycle_jobs:
            return f"after {worker.jobs} jobs"
        limit = (self.recycle_rss_mb or 0) * 2**20
        if limit and worker.rss > limit:
            worker.settle()  # its memory once the plugin it held is let go
        if limit and worker.rss > limit:
            return (
                f"at {worker.rss / 2**20:.0f} MB of memory (recycle_rss_mb {self.recycle_rss_mb:g})"
            )
        return ""

    def discard(self, worker: WorkerProcess) -> None:
        """Forget a worker (dead or recycled); its slot starts a new one when needed."""
        with self._workers_lock:
            self._workers.discard(worker)
        if getattr(self._local, "worker", None) is worker:
            self._local.worker = None

    def close_orphans(self) -> None:
        """After a worker process ended: close the jobs its plugins made (see
        :func:`~dahu.executors.base.close_orphans`)."""
        close_orphans(self.host)

    def execution(self, task: Task) -> RemoteExecution:
        """A :class:`RemoteExecution` on this slot's worker process."""
        return RemoteExecution(self, self.worker_process(), task)

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers."""
        with self._workers_lock:
            return sorted(w.pid for w in self._workers if w.is_alive())

    def _thread_exit(self) -> None:
        worker = getattr(self._local, "worker", None)
        if worker is not None:
            self.discard(worker)
            worker.stop()
            self.close_orphans()

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs (waiting for them with ``wait``), then stop every worker."""
        super().shutdown(wait, timeout)
        with self._workers_lock:
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:  # all at once: each may give its plugin's __del__ its time
            worker.stop(wait=False)
        deadline = time.monotonic() + 5.0
        for worker in workers:
            worker.finish(deadline - time.monotonic())
        if workers:
            self.close_orphans()
