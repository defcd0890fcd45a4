"""The worker process of the ``process`` executor.

It imports plugin modules once and keeps them (and their ``DataCache``) between jobs.
It talks to the server over a pipe:

server → worker: ``("run", job_id, plugin, input)``, ``("abort", job_id, reason)``,
``("stop",)``; worker → server: ``("begin", job_id, earlier)`` as it takes the job (before
anything of it runs: a worker that dies before the server heard it never began the job;
``earlier``: the jobs whose plugin is still being let go, its ``__del__`` run, after their
outcome), ``("plugin", job_id, job_timeout)`` once the plugin is instantiated,
``("waiting", job_id)`` / ``("resumed", job_id)`` around ``wait_for``, ``("done", job_id,
outcome)`` with the output as JSON text, and ``("released", job_id)`` once a job a
``begin`` named as ``earlier`` is let go.  The server matches every message to its job by
``job_id`` and ignores one for another job (``released`` aside).  Between two jobs, the
server may ask ``("memory",)``: the worker answers ``("memory", None, rss)`` once the
plugins of the jobs before are let go (1 s at most), what they held no longer counted.

A process a plugin forks (``os.fork()`` without ``exec``) that returns from the plugin
instead of ending ends there (``os._exit``: 0 if the plugin succeeded, the code of a
``sys.exit(code)``, else 1): only the worker itself talks to the server, and the fork's
outcome is never reported.
``multiprocessing``, ``subprocess`` and fork + ``exec`` are not affected.

The signals that dump core (``SIGSEGV``, ``SIGABRT``...) are blocked in the worker's loop
and taken by the thread of the running job (and the threads its plugin starts): one a
plugin sends its own process (``os.kill(os.getpid(), signal.SIGSEGV)``) ends the thread
that runs it, which so never sends a ``done`` (the process dies only once the kernel
starts dumping its core: a ``done`` sent meanwhile by the job's thread made the job a
``success``).  One sent to an idle worker (no job thread) waits for the next ``run``, and
ends the worker before it sends ``begin``.

SIGINT is said in the log and ignored (it used to end the worker's loop with a
``KeyboardInterrupt`` traceback: the worker died, its job's outcome sent or not).  So is
SIGTERM while the server that started the worker runs (systemd's stop sends it to every
process of the service at once: the server aborts the jobs, then stops its workers); a
worker whose server is gone ends on it.

A plugin's ``wait_for`` reads the other job's record in the server's journal through a
:class:`~dahu.journal.reader.JournalReader` (the work directory is shared), so jobs in
different workers can wait for each other; no engine is made in a worker.

The threads that run plugin code (the job's, which also lets the plugin go once its
outcome is sent, and the one calling its ``abort()``) take those signals: a program the
plugin starts there inherits the default mask (until 2026-11-30 one started from its
``abort()`` or ``__del__`` had them blocked, and ignored a ``SIGSEGV``/``SIGABRT`` it sent
itself or got).

``python -m dahu.executors.worker`` (or ``python -m dahu.worker``) runs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

from ..errors import error_line
from ..factory import plugin_factory
from ..journal.base import encode_final_input, encode_output
from ..journal.reader import use_reader
from ..states import State
from .runner import Execution, Outcome

logger = logging.getLogger(__name__)

__all__ = ["LOST_PIPE", "worker_main", "outcome_message", "outcome_from_message"]

LOST_PIPE = 86
"""The exit code of a worker that cannot send an outcome on its pipe (closed by its
plugin, or the server is gone)."""

CORE_SIGNALS = {
    signal.SIGABRT,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGQUIT,
    signal.SIGSEGV,
    signal.SIGSYS,
    signal.SIGTRAP,
    signal.SIGXCPU,
    signal.SIGXFSZ,
}
"""The signals whose default action dumps core: taken by the job threads (module doc)."""

LET_GO_WAIT = 0.25
"""Seconds a job waits, before its ``begin``, for the plugins of the jobs before it to be
let go (a slow ``__del__`` holds it no longer)."""

LET_GO_AT_STOP = 3.0
"""Seconds a worker told to stop (or whose server is gone) gives the plugins still being
let go (a ``__del__`` closing a file) before it ends (the server kills it after 5)."""

_self: psutil.Process | None = None  # this process, for the memory reported per outcome


def _rss() -> int:
    global _self
    if _self is None or _self.pid != os.getpid():  # made once per process (forks too)
        _self = psutil.Process()
    return _self.memory_info().rss


def outcome_message(outcome: Outcome, job_id: int | None = None) -> dict[str, Any]:
    """The picklable, JSON-safe form of an outcome sent back to the server."""
    # whole: the server writes it to the .out file, and records it if the journal can
    output, error = encode_output(outcome.output, outcome.error, limit=2**62)
    final_input = encode_final_input(job_id, outcome.input)
    return {
        "state": outcome.state,
        "output": output,
        "error": error,
        "started": outcome.started,
        "ended": outcome.ended,
        "module_file": outcome.module_file,
        "plugin_version": outcome.plugin_version,
        "input": final_input,  # None: the server keeps the input it sent
        "rss": _rss(),
    }


def outcome_from_message(data: dict[str, Any]) -> Outcome:
    """The outcome back from :func:`outcome_message`, on the server's side."""
    return Outcome(
        data["state"],
        json.loads(data["output"]) if data["output"] else {},
        data["error"],
        data["started"],
        data["ended"],
        data["module_file"],
        data["plugin_version"],
        json.loads(data["input"]) if data.get("input") else None,
    )


def fork_exit_code(outcome: Outcome) -> int:
    """The exit code of a forked process that returned from the plugin with ``outcome``:
    0 if it succeeded, the code of a ``sys.exit(code)``, else 1."""
    if outcome.state == State.SUCCESS:
        return 0
    match = re.match(r"SystemExit(?:: (-?\d+))?$", (outcome.error or "").split("\n", 1)[0])
    if match:
        return int(match.group(1) or 0) & 0xFF
    return 1


def leave_fork(job_id: int, outcome: Outcome) -> None:
    """End a process a plugin forked that returned from the plugin (it must neither
    report an outcome nor serve jobs), with :func:`fork_exit_code`."""
    logger.warning(
        "job %s: a process the plugin forked (pid %d) returned from it: it ends here, "
        "its outcome is not reported",
        job_id,
        os.getpid(),
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(fork_exit_code(outcome))


def _ignore_interrupt(signum: int, frame: Any) -> None:
    """SIGINT (a plugin's ``os.kill(os.getpid(), SIGINT)`` or ``_thread.interrupt_main()``,
    a ``kill -INT``): said and ignored; the server stops its workers itself."""
    logger.warning("worker %d: SIGINT ignored (the server stops its workers)", os.getpid())


def _defer_termination(server_pid: int) -> Any:
    """The worker's SIGTERM handler: while the server that started it runs, the signal is
    said in the log and ignored (systemd sends it to every process of the service at
    once: the server, stopping, aborts the jobs and then stops its workers); without the
    server, it ends the process as it would have.  (A process a plugin forks has the
    default action back.)"""
    worker_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() == worker_pid and os.getppid() == server_pid:
            logger.warning(
                "worker %d: SIGTERM ignored while the server runs (it stops its workers)",
                worker_pid,
            )
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    return handler


def worker_main(conn: Any, workdir: str, plugin_dirs: list[str], log_level: int) -> None:
    """Serve jobs from the server until told to stop or the pipe closes."""
    from ..app import QUIET_LOGGERS

    logging.basicConfig(
        level=log_level, format=f"%(asctime)s worker-{os.getpid()} %(levelname)s %(message)s"
    )
    for name in os.environ.get(QUIET_LOGGERS, "").split():  # as in the tool that started us
        logging.getLogger(name).setLevel(logging.ERROR)
    use_reader(workdir)
    # a job a plugin makes here (Job(...)) goes to the server's work directory: this
    # process's own engine, made on first use, opens the same journal
    os.environ["DAHU_WORKDIR"] = workdir
    for directory in plugin_dirs:
        plugin_factory.add_directory(directory)
    signal.pthread_sigmask(signal.SIG_BLOCK, CORE_SIGNALS)
    with contextlib.suppress(ValueError):  # not the main thread (a test's)
        signal.signal(signal.SIGINT, _ignore_interrupt)
        signal.signal(signal.SIGTERM, _defer_termination(os.getppid()))
        # a process a plugin forks (multiprocessing) ends on it at once, as usual: a
        # Python handler would run only once its C code (numpy) returned
        os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    send_lock = threading.Lock()
    # jobs whose plugin is being let go (its __del__ run) after their outcome; told: those
    # a "begin" named, whose end of it the server is to hear ("released")
    let_go = threading.Condition(send_lock)
    letting_go: set[int] = set()
    told: set[int] = set()
    current: dict[int, Execution] = {}
    waits: dict[int, int] = {}  # job id -> waits for other jobs (its plugin's threads')
    waits_lock = threading.Lock()
    worker_pid = os.getpid()

    def send(message: tuple) -> None:
        if os.getpid() != worker_pid:  # a process the plugin forked: not on our pipe
            return
        with send_lock:
            conn.send(message)

    def run(job_id: int) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CORE_SIGNALS)  # (inherited: blocked)
        execution = current[job_id]
        try:
            outcome = execution.run()
        except BaseException as err:  # Execution.run does not raise; belt and braces
            outcome = Outcome(State.FAILURE, {}, f"worker error: {error_line(err)}")
        if os.getpid() != worker_pid:
            leave_fork(job_id, outcome)
        current.pop(job_id, None)
        with send_lock:
            letting_go.add(job_id)
        try:
            send(("done", job_id, outcome_message(outcome, job_id)))
        except OSError as err:
            # the server is gone, or the plugin closed the pipe (its file descriptors):
            # nobody to serve; waiting on the pipe would leave the job running for ever
            logger.error("job %s: cannot send its outcome, the worker ends: %s", job_id, err)
            os._exit(LOST_PIPE)
        # the plugin is let go here (its __del__ runs), with the signals still unblocked:
        # a program it starts inherits this thread's mask.  Then they are blocked: this
        # thread takes no signal the next job's plugin sends (that job's thread is to)
        del execution
        signal.pthread_sigmask(signal.SIG_BLOCK, CORE_SIGNALS)
        with let_go:
            letting_go.discard(job_id)
            let_go.notify_all()
            if job_id in told:
                told.discard(job_id)
                with contextlib.suppress(OSError):  # the next "done" says it
                    conn.send(("released", job_id))

    def abort(job_id: int, reason: str) -> None:
        # the plugin's abort() runs here: a program it starts inherits this mask (put
        # back after: the loop's own thread runs it when no thread could be started)
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, CORE_SIGNALS)
        try:
            execution = current.get(job_id)
            if execution is not None:
                execution.abort(reason)
            del execution  # the last reference, maybe: its plugin's __del__ runs here
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    while True:
        try:
            message = conn.recv()
        except EOFError:  # the server closed its end: nothing more to serve
            break
        except OSError as err:  # our end is gone (a plugin closed its descriptors)
            logger.error("the worker's pipe to the server is gone, the worker ends: %s", err)
            os._exit(LOST_PIPE)
        kind = message[0]
        if kind == "run":
            job_id, plugin_name, input_data = message[1:4]
            # one sent while no job ran ends this worker now, before the job begins
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signal.sigpending() & CORE_SIGNALS)
            with let_go:  # and the earlier jobs whose plugin is still being let go
                # given a moment first: a job's thread that has not run since it sent its
                # outcome (the GIL) would have the job it lets go named for nothing
                let_go.wait_for(lambda: not letting_go, LET_GO_WAIT)
                told.update(letting_go)
                conn.send(("begin", job_id, sorted(letting_go)))

            @contextlib.contextmanager
            def waiting(job_id: int = job_id) -> Iterator[None]:
                # said once for the job, however many of its plugin's threads wait: the
                # slot comes back when the last wait is over, not the first
                with waits_lock:
                    waits[job_id] = waits.get(job_id, 0) + 1
                    if waits[job_id] == 1:
                        send(("waiting", job_id))
                try:
                    yield
                finally:
                    with waits_lock:
                        waits[job_id] -= 1
                        if not waits[job_id]:
                            del waits[job_id]
                            send(("resumed", job_id))

            # never held by this loop, not even for a moment: a job that ended before
            # the loop went on had its plugin let go (its __del__ run) here, and the
            # next job waited for it; its own thread lets it go, after its outcome
            current[job_id] = Execution(
                plugin_name,
                input_data,
                job_id,
                factory=plugin_factory,
                waiting=waiting,
                profile_dir=workdir,
                on_plugin=lambda t, job_id=job_id: send(("plugin", job_id, t)),
            )
            try:
                threading.Thread(target=run, args=(job_id,), daemon=True).start()
            except RuntimeError as err:  # no thread to be had: plugins left too many
                del current[job_id]
                reason = f"cannot start a thread to run it: {err}; the worker ends"
                logger.error("job %s: %s", job_id, reason)
                outcome = Outcome(State.FAILURE, {}, reason, None, time.time())
                send(("done", job_id, outcome_message(outcome, job_id)))
                break  # the next job gets a new worker, without those threads
        elif kind == "abort":  # in a thread of its own, for the same reason
            try:
                threading.Thread(target=abort, args=message[1:3], daemon=True).start()
            except RuntimeError:  # no thread to be had: here, then
                abort(*message[1:3])
        elif kind == "memory":  # recycle_rss_mb: what it leaks, not what plugins held
            with let_go:
                let_go.wait_for(lambda: not letting_go, 1.0)
                conn.send(("memory", None, _rss()))
        elif kind == "stop":
            break
    with let_go:  # a plugin whose __del__ still runs (closing its files) is given its time
        if not let_go.wait_for(lambda: not letting_go, LET_GO_AT_STOP):
            logger.warning(
                "the worker ends while the plugin of job(s) %s is still being let go (its "
                "__del__ took over %g s)",
                ", ".join(str(job) for job in sorted(letting_go)),
                LET_GO_AT_STOP,
            )


def main(argv: list[str] | None = None) -> None:
    """``python -m dahu.executors.worker FD WORKDIR LOGLEVEL [PLUGIN_DIR ...]`` (started
    by the process executor, not by hand)."""
    from multiprocessing.connection import Connection

    from ..app import leave

    args = sys.argv[1:] if argv is None else argv
    conn = Connection(int(args[0]))
    worker_main(conn, args[1], args[3:], int(args[2]))
    # a thread a plugin left running must not keep the worker alive until it is killed
    leave(0, grace=0.5)


if __name__ == "__main__":
    main()
