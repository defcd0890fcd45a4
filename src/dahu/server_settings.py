"""The engine of the ``DahuDS`` server: the settings of the ``dahu_server`` command line,
the one engine of the server process (kept across a device ``Init``), its retention
schedule and its shutdown."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import engine as dahu_engine
from .engine import SHUTDOWN_REASON
from .errors import DahuError, JournalError, one_line
from .executors.thread import worker_count
from .properties import EXECUTORS
from .retention import Retention, RetentionSchedule
from .utils import freeze_while

logger = logging.getLogger(__name__)

__all__ = [
    "ServerSettings",
    "settings",
    "configure_engine",
    "configure_retention",
    "shutdown",
    "abort_while_serving",
    "shutting_down",
    "start_web",
    "stopping",
    "web_service",
    "attach_web",
    "ready_line",
    "adopt",
    "current",
    "push_lock",
    "pushed",
    "outcome_read",
]


@dataclass
class ServerSettings:
    """Settings given on the ``dahu_server`` command line; they win over device properties
    (``engine_options``: more keyword arguments of :func:`dahu.engine.configure`)."""

    workdir: str | None = None
    plugins: list[str] = field(default_factory=list)
    max_workers: int | None = None
    executor: str | None = None
    scheduler: str | None = None
    timeout: float | None = None
    recycle_jobs: int | None = None
    recycle_rss_mb: float | None = None
    retention: str | None = None
    retention_interval: float | None = None
    http: str | None = None
    http_token: str | None = None  # --http-token, else $DAHU_HTTP_TOKEN
    shutdown_timeout: float = 30.0
    engine_options: dict[str, Any] = field(default_factory=dict)
    web_error: str = ""  # why the page the http property asks for is not served (Status)

    def job_slots(self, prop: int) -> int:
        """The job slots asked for: ``--max-workers`` (it wins), else the property ``prop``;
        0: one per CPU, that the memory allows (process, dask: until 2026-11-30 given as a
        number, refused); a negative ``prop`` is a ``ValueError`` (the device is FAULT)."""
        asked = prop if self.max_workers is None else self.max_workers
        return worker_count(asked) and asked

    def work_directory(self, prop: str) -> str | None:
        """``--workdir``, else the ``workdir`` property ``prop`` (None: the default); ``~``
        is the user's home, as in ``plugins_directory`` and ``$DAHU_WORKDIR`` (until
        2026-11-30 a property ``~/dahu`` was a directory ``~`` in the server's current one)."""
        return os.path.expanduser(self.workdir or prop.strip()) or None

    def numbers(self, device: Any) -> tuple[int, float | None, int, float]:
        """The job slots, default timeout (None: no limit) and recycling (0: never) in force:
        the options, also when 0, else the device's properties; a negative (or NaN) number
        property (``max_workers``, those below), or an unknown ``executor``, is a ``ValueError``
        naming it (the device is FAULT; docs/server.md says what they meant before)."""
        if device.executor.strip().lower() not in ("", *EXECUTORS):
            raise ValueError(f"executor must be thread, process or dask, not {device.executor!r}")
        numbers = "queue_limit recycle_jobs recycle_rss_mb default_timeout wait_timeout"
        for name in numbers.split():
            if not getattr(device, name) >= 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(device, name)!r}")
        prop = device.default_timeout if device.default_timeout > 0 else None
        timeout = prop if self.timeout is None else (self.timeout or None)
        jobs = device.recycle_jobs if self.recycle_jobs is None else self.recycle_jobs
        rss_mb = device.recycle_rss_mb if self.recycle_rss_mb is None else self.recycle_rss_mb
        return self.job_slots(device.max_workers), timeout, int(jobs), float(rss_mb)


settings = ServerSettings()
"""The process's server settings (set by ``dahu_server`` before the server starts)."""

_engine: dahu_engine.Engine | None = None
_engine_lock = threading.Lock()
_stopping = threading.Event()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop Tango's server: the device aborts its jobs first."""
READS_LINGER, UNREAD_LINGER, EVENTS_LINGER = 0.5, 2.0, 0.1
"""Seconds a server stopped by a signal still answers after pushing the events of the
jobs it aborted, so that clients told read their errors; after a client's last read while
some are unread (its watcher asks about those whose events it lost: a ``dahu.client``'s
each ``poll_interval``, 1 s by default); when the device is already gone (the admin
device's ``Kill``), for ZeroMQ to send the events."""
_stop_began: float | None = None  # time.monotonic() when the jobs were aborted
_pushed_at = -math.inf  # time.monotonic() when the device last pushed an event (pushed)
_unread: set[int] = set()  # the jobs a stop aborted whose outcome no client read yet
_read_at = -math.inf  # time.monotonic() when a client last read one (outcome_read)
_recording = 0  # startJob(s) calls recording and queueing their jobs (recording_jobs)
_recorded = threading.Condition(_engine_lock)


def stopping() -> bool:
    """True once :func:`shutdown` began: the Tango loop has ended, nobody can be told."""
    return _stopping.is_set()


_retention: RetentionSchedule | None = None


def configure_engine(
    workdir: str | None,
    max_workers: int | None,
    plugin_dirs: list[str],
    executor: str = "thread",
    scheduler: str | None = None,
    timeout: float | None = None,
) -> dahu_engine.Engine:
    """Make the process's engine on first call; later calls reuse it (a device ``Init``
    keeps running jobs).  Plugin directories are added to the engine's factory."""
    global _engine
    with _engine_lock:
        engine = _engine
        if engine is None:
            options = dict(settings.engine_options)
            options.setdefault("executor_kind", executor)
            options.setdefault("default_timeout", timeout)
            if executor == "dask":
                executor_options = dict(options.get("executor_options") or {})
                executor_options.setdefault("scheduler", scheduler or "local")
                options["executor_options"] = executor_options
            engine = dahu_engine.configure(workdir=workdir, max_workers=max_workers, **options)
            _engine = engine
            holder = claim_workdir(engine.workdir)
            if holder:
                logger.warning(
                    "another dahu_server (%s) uses the work directory %s: both record jobs in "
                    "one journal (their ids never clash), but each one's counters, events and "
                    "statistics cover only its own jobs: give each server its own --workdir",
                    holder,
                    engine.workdir,
                )
                claim_later(engine)
            if engine.interrupted:
                logger.warning(
                    "%d job(s) left unfinished by a previous server marked failed (interrupted)",
                    len(engine.interrupted),
                )
            try:  # now: a client's first read of journalId must not wait for the journal
                logger.debug("journal %s", engine.journal.identity)
            except JournalError as err:  # made at a later read, once it can be written
                logger.warning("the journal has no identity yet: %s", err)
        else:
            if executor != engine.executor.name:
                logger.warning(
                    "executor %s ignored: the server uses the %s executor until it restarts",
                    executor,
                    engine.executor.name,
                )
            in_use = getattr(engine.executor, "scheduler", None)
            asked = (scheduler or "").strip()
            asked = "local" if asked.lower() in ("", "local") else asked
            if executor == "dask" and in_use is not None and asked != in_use:
                logger.warning(
                    "scheduler %s ignored: the server uses %s until it restarts",
                    asked,
                    in_use,
                )
            if workdir and os.path.abspath(workdir) != engine.workdir:
                logger.warning(
                    "work directory %s ignored: the server uses %s until it restarts",
                    workdir,
                    engine.workdir,
                )
            if engine.executor.name != "dask":  # 0 or none: the default again
                engine.executor.max_workers = max_workers or 0  # (process: what memory allows)
            elif max_workers and engine.executor.max_workers != max_workers:
                # the cluster was made with its workers
                logger.warning("max_workers %d ignored: Dask keeps its workers", max_workers)
            engine.default_timeout = timeout  # for the jobs that start from now on
            if engine.journal_fault is not None:  # Init: try the journal again now
                engine.retry_journal()
    engine.factory.add_directories(plugin_dirs)  # says which imported module one now hides
    return engine


def configure_recycling(engine: dahu_engine.Engine, jobs: int, rss_mb: float) -> None:
    """Replace the process executor's workers after ``jobs`` jobs or past ``rss_mb`` MB
    of resident memory (0: never), from the next job on; other executors have no
    worker processes to replace (a warning if asked to)."""
    jobs = jobs if jobs > 0 else 0
    rss_mb = rss_mb if 0 < rss_mb < math.inf else 0  # NaN, a negative number: never
    executor = engine.executor
    if hasattr(executor, "recycle_jobs"):
        executor.recycle_jobs = jobs or None
        executor.recycle_rss_mb = rss_mb or None
    elif jobs or rss_mb:
        logger.warning("recycle_jobs/recycle_rss_mb ignored: the %s executor", executor.name)


LOCK_NAME = "dahu_server.lock"
_claimed: Any = None  # the work directory's lock file, open for the process's life


def claim_workdir(workdir: str) -> str | None:
    """Lock ``WORKDIR/dahu_server.lock`` (``flock``) for this process's life: None, or
    who holds it already (``pid 123 on HOST``): another server on that directory."""
    global _claimed
    try:
        handle = open(os.path.join(workdir, LOCK_NAME), "a+", encoding="utf-8")
    except OSError:
        return None  # best effort: the journal says what is wrong with the directory
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return (holder or "pid unknown") if isinstance(err, BlockingIOError) else None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _claimed = handle
    return None


def claim_later(engine: dahu_engine.Engine) -> None:
    """Claim the work directory once the server holding it is gone (every 2 s, by the
    engine's watchdog): a server started after that warns of this one."""

    def again() -> None:
        if not engine._closed and claim_workdir(engine.workdir):  # still held
            engine.watchdog.call_later(2.0, again)

    engine.watchdog.call_later(2.0, again)


def configure_retention(
    engine: dahu_engine.Engine, retention: Retention | None, interval: float
) -> RetentionSchedule | None:
    """Prune the engine's work directory by ``retention`` every ``interval`` s (one
    schedule per process; a device ``Init`` replaces it); None: keep every job."""
    global _retention
    with _engine_lock:
        current = _retention
        if current is not None and (current.retention, current.interval) == (retention, interval):
            return current
        if current is not None:
            current.stop()
            _retention = None
        if retention is not None and getattr(engine.journal, "path", None):
            # files_settled: no file is written after its record is pruned; the second
            # covers the moment between a job's final record and its callback
            _retention = RetentionSchedule(
                engine.workdir, retention, interval, min_age=1.0, settled=engine.files_settled
            ).start()
        return _retention


def current_retention() -> RetentionSchedule | None:
    """The retention schedule in force (None: every job is kept)."""
    return _retention


_web: Any = None  # the dahu.web.WebService serving the page, when asked for


def start_web(address: str, token: str | None = None) -> Any:
    """Serve the read-only web page (:mod:`dahu.web`) on ``address`` from this process.

    Once per process; a token is generated (and logged) for a non-loopback address
    without one.  Raise :class:`dahu.web.WebError` when it cannot be served.
    """
    global _web
    from .web import serve

    if _web is None:
        _web, generated = serve(address, token, _engine)
        if generated:
            logger.warning("web page access token generated: %s", _web.url)
    return _web


def web_service() -> Any:
    """The process's web page service, or None."""
    return _web


def attach_web(engine: dahu_engine.Engine, http: str, token: str) -> Any:
    """The web page of the process, started by the device's ``http`` property when the
    command line started none (a failure is logged: the device runs without it), and
    shown ``engine``'s jobs; None without a page."""
    settings.web_error = ""
    if web_service() is None and http.strip():
        # as documented: the option wins over the property, $DAHU_HTTP_TOKEN is the default
        given = settings.http_token or token.strip() or os.environ.get("DAHU_HTTP_TOKEN")
        try:
            start_web(http.strip(), given or None)
        except Exception as err:  # WebError (a DahuError): busy port, bad address...
            settings.web_error = f"no web page: {one_line(str(err))}"
            logger.error("%s", settings.web_error)
    web = web_service()
    if web is not None:
        if http.strip() and http.strip() != web.address:
            logger.warning(
                "web page address %s ignored: the page is served on %s until the server restarts",
                http.strip(),
                web.address,
            )
        web.monitor.attach(engine)
    return web


_devices: dict[str, Any] = {}
"""Device name -> the object serving it now.  The admin device's ``DevRestart`` (and
``RestartServer``) replaces the object; the jobs the old one started run on and end
through the new one (their events, ``jobSuccess``/``jobFailure``)."""
ADOPTED = tuple(
    "_last _events _held _engine _wait _retention_error _web "
    "_lock _stats_thread _plugins_thread _plugins_text _plugins queue_limit".split()
)
"""What a new object serving a device takes over from the one it replaces: the last job
ids and statistics (`_last`, one dict shared, not copied: what a job ending as the object
is replaced records is what the new one shows), the events still to push, and the
settings in force (kept if a device property is now bad: `queue_limit`, read by the
state)."""


push_lock = threading.Lock()
"""Held by a device pushing an event and by one being deleted: Tango crashed (libtango,
SIGSEGV) pushing through a device object that a ``DevRestart`` was deleting."""


def adopt(device: Any) -> None:
    """Make ``device`` the object serving its name, with what the one it replaces knew."""
    name = device.get_name()
    previous = _devices.get(name)
    if previous is not None and previous is not device:
        for attribute in ADOPTED:
            if hasattr(previous, attribute):
                setattr(device, attribute, getattr(previous, attribute))
    device._name = name
    device._replaced = previous is not None and previous is not device  # a DevRestart
    device._deleted = False  # (Init: the same object is made again)
    _devices[name] = device


def current(device: Any) -> Any:
    """The object serving ``device``'s name now (``device`` itself, unless replaced)."""
    return _devices.get(device._name, device)


def ready_line(name: str, version: str, engine: dahu_engine.Engine) -> str:
    """What the log says when the device ``name`` is ready."""
    executor = engine.executor
    scheduler = getattr(executor, "scheduler", "local")
    where = (  # an external cluster's workers bound its jobs, not max_workers
        f"{getattr(executor, 'max_workers', '?')} job slots"
        if scheduler == "local"
        else f"scheduler {scheduler}"
    )
    return (
        f"DahuDS {name} ready (Dahu {version}): workdir {engine.workdir}, "
        f"{executor.name} executor, {where}, "
        f"plugins in {', '.join(engine.factory.directories)}"
    )


def abort_while_serving(linger: float) -> None:
    """The server is stopping, its device still there: abort the jobs queued or running
    and wait, within ``settings.shutdown_timeout``, until their ends are recorded, their
    files written and their events pushed; then answer ``linger`` s after the last event
    (ZeroMQ sends them from its own thread, Tango closes its socket without waiting) and
    the last first read of an aborted job's outcome, so that clients told read them.
    New jobs are refused from here on; :func:`shutdown` counts its timeout from here."""
    global _stop_began
    engine = _engine
    with _engine_lock:
        if engine is None or _stop_began is not None:
            return
        _stop_began = time.monotonic()
    stopped = {r.id: r for r in engine.live()}  # counted: a slot may abort and end them now
    deadline = engine.cycle.stop_deadline = _stop_began + settings.shutdown_timeout
    engine.cycle.halted = SHUTDOWN_REASON  # a job taken from now on: aborted
    now = time.time()  # jobs ended before, their files (then their events) not written yet
    unwritten = engine.files_settled() < now  # (none: it answers a time after ``now``)
    with _recorded:  # their clients get the ids: their jobs are aborted below (or, taken
        # by a slot meanwhile, were at once: their files and events are waited for too)
        waited = _recording > 0
        _recorded.wait_for(lambda: not _recording, max(0.0, deadline - time.monotonic()))
    seen: set[int] = set()
    waiting: list[Any] = []
    # also the jobs made meanwhile (a startJobs already past the check, a plugin's): each
    # round aborts what is new, and waits only once nothing new comes
    while (runs := [run for run in engine.live() if run.id not in seen]) or waiting:
        if runs:
            seen.update(run.id for run in runs)
            waiting += runs
            stopped.update((run.id, run) for run in runs)
            _unread.update(run.id for run in runs)  # (read once their events are pushed)
            engine.abort_all(runs, SHUTDOWN_REASON)
            continue
        for run in waiting:
            run.done.wait(max(0.0, deadline - time.monotonic()))
        waiting = []
    # the stop's and those a slot took meanwhile, halted (until 2026-11-30 not all of them)
    if aborted := sum(run.abort_reason == SHUTDOWN_REASON for run in stopped.values()):
        logger.info("stopping: %d job(s) aborted", aborted)
    if seen or waited or unwritten:
        if not engine.flush_files(max(0.0, deadline - time.monotonic())):  # events too
            return
        pushed()  # (or nobody was told)
    # linger s after the last event (none lately: at once), and read (within the timeout)
    bound, unread = max(deadline, _pushed_at + linger), lambda: UNREAD_LINGER if _unread else linger
    while min(max(_pushed_at + linger, _read_at + unread()), bound) > time.monotonic():
        time.sleep(0.05)  # (polled: the read of the last unread one shortens it)


def outcome_read(job_id: int, final: bool = True) -> None:
    """A client reads the state (not ``final``) or outcome of ``job_id``."""
    global _read_at
    if job_id in _unread:  # (empty but while a stop waits: abort_while_serving)
        _read_at = time.monotonic()
        if final:
            _unread.discard(job_id)


def pushed() -> None:
    """The device has just pushed an event (:func:`abort_while_serving`)."""
    global _pushed_at
    _pushed_at = time.monotonic()


@contextlib.contextmanager
def recording_jobs() -> Iterator[None]:
    """Around a ``startJob`` or ``startJobs`` call's recording and queueing of its jobs:
    a stop that begins meanwhile waits for it (then aborts its jobs, telling their
    clients); once the stop began, it is refused."""
    global _recording
    with _recorded:
        if shutting_down():
            raise DahuError(f"{SHUTDOWN_REASON}: it takes no new job")
        _recording += 1
    try:
        yield
    finally:
        with _recorded:
            _recording -= 1
            _recorded.notify_all()


def shutting_down() -> bool:
    """True once the server began to stop: it takes no new job."""
    return _stop_began is not None or _stopping.is_set()


def shutdown(timeout: float = 30.0) -> bool:
    """Abort the jobs still queued or running, wait (at most ``timeout`` s, counted from
    :func:`abort_while_serving` if it ran) until their outcome is recorded and their
    files written, then close the journal.

    Return True if every job ended in time.  Jobs aborted while queued end at once,
    without running their plugin.  The retention schedule, if any, stops first.
    """
    global _retention
    _stopping.set()
    if _retention is not None:
        _retention.stop()
        _retention = None
    engine = _engine
    done = engine is None or engine.shutdown(abort=True, timeout=timeout, since=_stop_began)
    if _web is not None:
        _web.stop()
    return done


FREEZE_BATCH = 10_000
"""A ``startJobs`` batch of this many jobs or more, or a queue that holds as many, is kept
out of the garbage collector's scans until a tenth of it is queued (:func:`freeze_batch`)."""
FREEZE_CHECK = 1000
"""``startJob`` looks at the length of the queue once every this many jobs."""
FREEZE_LIMIT = 600.0
"""Seconds between two full collections while a large batch is kept out of them."""


def freeze_batch(engine: dahu_engine.Engine, jobs: int) -> None:
    """If ``jobs`` (just queued, or queued now) is :data:`FREEZE_BATCH` or more, keep the
    objects of the queued jobs out of the garbage collector's scans while jobs are queued,
    or ended and waiting for their files (:func:`~dahu.utils.freeze_while`)."""
    if jobs < FREEZE_BATCH:
        return

    def busy() -> bool:  # a tenth of a batch queued, or a job's files a second late
        queued = engine.executor.counts()["queued"]
        return queued >= FREEZE_BATCH // 10 or engine.files_settled() < time.time() - 1.0

    freeze_while(busy, engine.watchdog.call_later, 1.0, FREEZE_LIMIT)
