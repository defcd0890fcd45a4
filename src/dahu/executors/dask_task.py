"""The task of the ``dask`` executor: what runs on a Dask worker for one job.

:func:`run_task` runs the plugin (a plugin's ``wait_for`` reads the shared journal),
watches for an abort (a Dask ``Event``) and applies the plugin's ``JOB_TIMEOUT``.  It
notes when the plugin begins; the server asks the workers (``Client.run``) which tasks'
plugins have begun (:func:`begun_tasks`: only their workers are restarted after an
ignored abort) and for how long (:func:`running_for`: a job's timeout counts from there).
It tells the server when the plugin exists, its import done (:func:`watch_loading`).
It notes it on the scheduler too, among the events of its worker: when the worker dies,
the server sends again the tasks whose plugins had not begun there (:func:`plugin_began`).
A task Dask runs again after its plugin began fails instead of running it twice
(:data:`RAN_BEFORE`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import DahuError
from ..factory import BUILTIN_PLUGIN_DIR, Factory, plugin_factory
from ..journal.reader import reading, use_reader
from ..states import State
from ..utils import not_seconds, seconds
from .runner import Execution, Outcome
from .worker import outcome_message

logger = logging.getLogger(__name__)

__all__ = [
    "RAN_BEFORE",
    "begun_tasks",
    "collect_when_done",
    "forget_runs",
    "loading_topic",
    "note_restart",
    "plugin_began",
    "ran_event",
    "restart_reason",
    "run_task",
    "running_for",
    "watch_loading",
]

_configured: set[str] = set()
_directories: set[str] = set()  # the plugin directories added here
_configure_lock = threading.Lock()


def _prepare_worker(workdir: str, plugin_dirs: list[str]) -> None:
    """Once per worker process: read jobs from the shared journal; a job a plugin makes
    here (``Job(...)``) goes to its server's work directory (:mod:`dahu.engine.served`;
    from a thread the plugin starts, the first server's).  Add the plugin directories
    this process has not (a server adds some at a device ``Init``: until 2026-11-30 a
    worker never saw them)."""
    with _configure_lock:
        if workdir not in _configured:
            if not _configured:  # this process's own engine, made on first use, opens it
                os.environ["DAHU_WORKDIR"] = workdir
            use_reader(workdir)
            _configured.add(workdir)
        for directory in plugin_dirs:
            # one not there at first (not mounted yet) is added once it is (until
            # 2026-11-30 never: its jobs failed "... does not exist: ignored", untrue)
            late = directory in plugin_factory.ignored and os.path.isdir(directory)
            if directory not in _directories or late:
                plugin_factory.add_directory(directory)
                _directories.add(directory)
        # its server's directories first: its module, not another server's of that name
        own = [
            d for d in plugin_dirs if d != BUILTIN_PLUGIN_DIR and d not in plugin_factory.ignored
        ]
        if plugin_factory.directories[: len(own)] != own:
            for directory in reversed(own):
                plugin_factory.add_directory(directory, first=True)


class _ServerFactory(Factory):
    """The factory of one server's jobs on this worker: its directories first, whatever
    another server's task here does meanwhile; a module of the plugin's name loaded from
    another server's directory is refused, checked once the class is had (another task
    of this worker may have loaded it meanwhile).  Until 2026-11-30 the tasks shared the
    worker's factory, each putting its own server's directories first: on a worker of
    several threads a job could load the other server's module of that name, and end a
    ``success`` with that plugin's output."""

    def __call__(self, plugin_name: str) -> Any:
        klass = self.get_class(plugin_name)
        foreign = _foreign_module(plugin_name, self)
        if foreign is not None:
            raise DahuError(foreign)
        return klass()


_factories: dict[tuple[str, ...], _ServerFactory] = {}  # by a server's plugin directories


def _server_factory(plugin_dirs: list[str]) -> _ServerFactory:
    """The factory of the jobs of the server of ``plugin_dirs`` (made once)."""
    with _configure_lock:
        factory = _factories.get(tuple(plugin_dirs))
        if factory is None or any(os.path.isdir(d) for d in factory.ignored):  # one is there now
            factory = _factories[tuple(plugin_dirs)] = _ServerFactory()
            for directory in reversed(plugin_dirs):
                if directory != BUILTIN_PLUGIN_DIR:
                    factory.add_directory(directory, first=True)
        return factory


def _foreign_module(plugin_name: str, factory: Factory = plugin_factory) -> str | None:
    """Why the plugin ``plugin_name`` cannot run on this worker: its module is loaded here
    from another file than its server's plugin directories give (another server's module
    of that name: until 2026-11-30 it ran, and its output was the job's); else None."""
    module_name = plugin_name.lower().split(".", 1)[0] if isinstance(plugin_name, str) else ""
    loaded = getattr(Factory.modules.get(module_name), "__file__", None)
    expected = factory._module_path(module_name) if loaded else None
    if not loaded or not expected:
        return None
    if os.path.basename(loaded) == "__init__.py":  # a package: its directory
        loaded = os.path.dirname(loaded)
    if os.path.abspath(loaded) == os.path.abspath(expected):
        return None
    return (
        f"plugin module {module_name!r} is loaded on this Dask worker from {loaded}, not "
        f"{expected}: servers of different plugin directories share the worker (give each "
        "its own workers)"
    )


@contextlib.contextmanager
def _seceded(execution: Execution) -> Iterator[None]:
    """Leave the worker's thread pool while ``execution`` waits for another job."""
    from distributed import rejoin, secede

    secede()
    try:
        yield
    finally:
        # aborted, the job ends: it does not wait for a thread of the worker (behind a
        # long job, past its grace its worker would be restarted, killing that job)
        if not execution.abort_requested:
            rejoin()


def run_task(
    plugin_name: str,
    input_data: dict,
    job_id: int,
    workdir: str,
    plugin_dirs: list[str],
    abort_event: str,
    loaded_topic: str = "",
) -> dict[str, Any]:
    """The Dask task of one job: run the plugin, watching for an abort; never raises."""
    from distributed import Event, get_client, get_worker

    _prepare_worker(workdir, plugin_dirs)
    factory = _server_factory(plugin_dirs)
    foreign = _foreign_module(plugin_name, factory)
    if foreign is not None:
        now = time.time()
        return outcome_message(Outcome(State.FAILURE, {}, foreign, now, now), job_id)
    clock: list[tuple[float, float]] = []  # (deadline, timeout) of the plugin's JOB_TIMEOUT

    def plugin_loaded(job_timeout: float | None) -> None:
        _plugin_loaded[key] = time.monotonic()  # the job's time counts from here
        # the plugin's JOB_TIMEOUT, unless the input gives a timeout that is a number
        limit = seconds(job_timeout)
        if (
            seconds(input_data.get("job_timeout")) is None
            and limit is not None
            and 0 < limit < math.inf
        ):
            clock.append((time.monotonic() + limit, limit))
        if loaded_topic:  # the server starts the job's clock (:func:`watch_loading`)
            report = {"key": key, "job_timeout": limit}
            if limit is None and job_timeout is not None:  # the server logs it (as others)
                report["ignored"] = not_seconds(job_timeout)
            with contextlib.suppress(Exception):
                get_client().log_event(loaded_topic, report)

    execution = Execution(
        plugin_name,
        input_data,
        job_id,
        factory=factory,
        waiting=lambda: _seceded(execution),
        profile_dir=workdir,
        on_plugin=plugin_loaded,
    )
    finished = threading.Event()
    event = Event(abort_event, client=get_client())
    now = time.time()
    if event.is_set():  # aborted while the task waited for a worker: do not begin
        return outcome_message(Outcome(State.ABORTED, {}, "aborted on request", now, now), job_id)
    worker = get_worker()
    key = worker.get_current_task()
    ran = Event(ran_event(key), client=get_client())
    if ran.is_set():  # Dask runs it again: its worker died, and the outcome with it
        return outcome_message(Outcome(State.FAILURE, {}, RAN_BEFORE, now, now), job_id)
    ran.set()  # the server clears it once it has the outcome
    # noted on the scheduler before the plugin begins: should the worker die, the jobs
    # whose plugins had not begun there are sent again (:func:`plugin_began`)
    get_client().log_event(worker.address, {"action": BEGUN, "key": key})
    _plugin_begun[key] = time.monotonic()  # from now on an abort past its grace restarts it

    def watch() -> None:
        # polls the event: a wait on it would stay on the scheduler after the job ended,
        # and a stop closing the scheduler then logged its CancelledError's traceback
        while not finished.wait(0.25):
            if clock and time.monotonic() >= clock[0][0]:
                execution.abort(f"timed out after {clock.pop()[1]:g} s")
            try:
                if event.is_set():
                    execution.abort("aborted on request")
                    return
            except Exception as err:  # the scheduler went away: nothing to watch
                if not finished.is_set():  # a job ended just before a stop says nothing
                    logger.warning("job %s: cannot watch for aborts: %r", job_id, err)
                return

    watcher = threading.Thread(target=watch, name=f"dahu-abort-{job_id}", daemon=True)
    watcher.start()
    try:
        with reading(workdir):  # its own server's journal, of the several a worker serves
            outcome = execution.run()
    finally:
        finished.set()
        _plugin_begun.pop(key, None)
        _plugin_loaded.pop(key, None)
    message = outcome_message(outcome, job_id)
    # let go of the plugin now, in a thread of its own (a slow __del__ delays no task):
    # its wait_for hook and the execution make a cycle that would keep it, and what it
    # holds (memory, open files), until the garbage collector's next full pass
    held, execution.plugin = [execution.plugin], None
    threading.Thread(target=held.clear, name=f"dahu-drop-{job_id}", daemon=True).start()
    return message


RAN_BEFORE = (
    "its worker died, or left the cluster, after the plugin began: its outcome is lost "
    "(the plugin is not run twice)"
)
"""The error of a job whose task Dask runs again: a worker died running it (with
``allowed-failures`` above 0), or with its result before the server had it (Dask
recomputes a lost result, even with ``allowed-failures`` 0), or was closed while it ran
(retired: a cluster scaled down, ``dask worker --lifetime``; until 2026-11-30 the error
said the worker died): until 2026-11-30 its plugin ran twice, as would one that writes
files or moves motors."""


def ran_event(key: str) -> str:
    """The name of the Dask event a task sets as it begins its plugin (see
    :data:`RAN_BEFORE`)."""
    return f"dahu-ran-{key}"


def forget_runs(client: Any, keys: list[str]) -> None:
    """On the server, once it has a job's outcome: clear the events its tasks ``keys``
    set (:func:`ran_event`), without waiting for the scheduler."""

    async def clear() -> None:
        with contextlib.suppress(Exception):  # the scheduler is gone: they went too
            for key in keys:
                await client.scheduler.event_clear(name=ran_event(key))

    with contextlib.suppress(Exception):  # the client is closed
        client.loop.add_callback(clear)


FETCH = 10.0
"""Seconds the server waits at most for the result of an ended task (its worker died as it
was read: Dask runs the task again); then the collector reads it."""


def collect_when_done(execution: Any, completed: Any) -> None:
    """On the server: once the task of ``execution`` (a ``DaskExecution``) is done, read its
    result at once (Dask's callback thread) into ``execution.data``, then queue the
    execution on ``completed`` for the collector thread, which records the outcomes one
    after the other.  The worker holds the result until it is read: should it die
    meanwhile (another job crashes it, or ignores its abort), Dask runs the task again,
    and the job fails with :data:`RAN_BEFORE`.  Until 2026-11-30 results were read by the
    collector: on a busy cluster a worker's crash lost the outcomes of the jobs that had
    ended there before it (16 of 200 jobs ended ``success`` failed so, with a crash in
    every 33 jobs)."""

    def done(future: Any) -> None:
        if future.status == "finished":
            with contextlib.suppress(Exception):  # the collector reads it, or its error
                execution.data = future.result(timeout=FETCH)
                # had: Dask no longer runs the task again should its worker die (the
                # server clears its RAN_BEFORE event once it recorded the outcome)
                future.release()
        completed.put(execution)

    execution.future.add_done_callback(done)


BEGUN = "dahu-plugin-begun"
"""The action of the event a task logs, under its worker's address, as its plugin begins."""

_plugin_begun: dict[str, float] = {}
"""On a worker: the tasks whose plugin has begun (past the abort check), by key: when
(``time.monotonic()``)."""


_plugin_loaded: dict[str, float] = {}
"""On a worker: the tasks whose plugin exists (its module imported, its class made), by
key: when (``time.monotonic()``)."""


def begun_tasks(keys: list[str], dask_worker: Any = None) -> list[str]:
    """On a worker (``Client.run``): those of the tasks ``keys`` whose plugin has begun
    there (it runs, or waits for a job, seceded).  A task still checking whether it was
    aborted before it began is not one: it ends by itself (until 2026-11-30 its worker was
    restarted then, killing the job that began there next)."""
    return [key for key in keys if key in _plugin_begun]


def running_for(key: str, dask_worker: Any = None) -> float | None:
    """On a worker (``Client.run``): seconds since the plugin of task ``key`` exists there
    (while it loads, since it began), None if it has not begun (it waits for a thread of
    the worker, or is not there)."""
    began = _plugin_loaded.get(key, _plugin_begun.get(key))
    return None if began is None else time.monotonic() - began


def loading_topic(token: str) -> str:
    """The topic of the scheduler's events by which the tasks of the server of ``token``
    say that their plugin exists (:func:`watch_loading`)."""
    return f"dahu-plugin-loaded-{token}"


def watch_loading(executor: Any, client: Any) -> None:
    """On the server, once per ``client`` of the ``DaskExecutor`` ``executor``: start a
    job's clock as its plugin exists on its worker, with the plugin's ``JOB_TIMEOUT``
    (:meth:`.engine.lifecycle.LifeCycle.arm_timeout`); until then the clock of a loading
    plugin runs (the server's default gives it 60 s at least).  Until 2026-11-30 the clock
    started as the task was sent, the plugin's import counted in the job's time (with
    ``--timeout 2``, a module taking 5 s to import ended ``timed out after 2 s``), and a
    ``JOB_TIMEOUT`` above the server's default did not lift it."""
    connection = (client, getattr(client, "scheduler_comm", None))
    watched = getattr(executor, "loading_watched", (None, None))
    if watched[0] is connection[0] and watched[1] is connection[1]:
        return
    # a client connected again to a scheduler back at its address (restarted) does not
    # subscribe again by itself: the reports would be lost from then on
    executor.loading_watched = connection

    def loaded(event: Any) -> None:
        message = event[1] if isinstance(event[1], dict) else {}
        execution = executor._launched.get(message.get("key"))  # None once settled
        if execution is not None:
            if message.get("ignored"):  # as the other executors say it
                logger.warning("job %s: ignoring timeout %s", execution.job_id, message["ignored"])
            try:
                execution.task.plugin_loaded(message.get("job_timeout"))
            except Exception:
                logger.exception("job %s: cannot start its clock", execution.job_id)

    client.subscribe_topic(loading_topic(executor.token), loaded)


def plugin_began(events: Any, key: str, since: float) -> bool:
    """On the server: whether the plugin of task ``key``, sent at ``since`` (``time.time()``),
    had begun on a worker now dead, from that worker's ``events`` on the scheduler
    (``Client.get_events(address)``: ``(time, message)``, the oldest first).  True when
    they cannot tell: the scheduler keeps the last 1000 events of a worker, and those
    from the task's sending on, or since the worker joined, may be gone."""
    messages = [message for _, message in events if isinstance(message, dict)]
    if any(m.get("action") == BEGUN and m.get("key") == key for m in messages):
        return True
    if not events:
        return True
    oldest_time, oldest = events[0]
    joined = isinstance(oldest, dict) and oldest.get("action") == "add-worker"
    return not (joined or oldest_time <= since)  # all kept since it joined, or was sent


RESTARTED = "dahu-worker-restarted"
"""The action of the event a server logs on the scheduler, under a worker's address, as
it restarts that worker (a plugin there ignored its abort), with the tasks it held."""


def note_restart(executor: Any, processing: dict, addresses: list[str], job_id: int) -> None:
    """Before the ``DaskExecutor`` ``executor`` restarts the workers ``addresses`` for its
    job ``job_id``: note it, for its own jobs that die with them, and on the scheduler, for
    those of the other servers sharing the workers (the tasks each held: ``processing``)."""
    executor.restarted.update(dict.fromkeys(addresses, job_id))
    for address in addresses:
        keys = [str(key) for key in processing.get(address, ())]
        with contextlib.suppress(Exception):  # its jobs then read as a death
            executor.client.log_event(address, {"action": RESTARTED, "keys": keys})


def restart_reason(executor: Any, error: Any) -> str:
    """Why a task's worker died (a ``KilledWorker`` ``error``) if a server restarted it:
    the ``DaskExecutor`` ``executor`` (a plugin of its own ignored its abort), or another
    server sharing the worker (until 2026-11-30 that one's jobs there failed ``worker
    process died (...); Dask does not say how``); else ``""``."""
    address = getattr(getattr(error, "last_worker", None), "address", None)
    if address is None:
        return ""
    if address in executor.restarted:  # (until 2026-11-30 it did not say which job)
        job_id = executor.restarted[address]
        return f"worker process restarted: job {job_id}'s plugin there ignored its abort"
    try:
        events = executor.client.get_events(address)
    except Exception:  # no scheduler to ask
        return ""
    key = str(getattr(error, "task", None))
    for _, event in events:
        if isinstance(event, dict) and event.get("action") == RESTARTED:
            if key in event.get("keys", ()):
                return (
                    "worker process restarted by another server sharing the Dask worker "
                    "(a plugin of its there ignored its abort)"
                )
    return ""
