"""The ``dask`` executor: jobs run on a Dask distributed cluster.

The scheduler address is given (``tcp://host:8786``), or ``local`` to start a
``LocalCluster`` of ``max_workers`` single-threaded worker processes with the server.
The workers must import ``dahu`` and see the plugin directories and the work directory
at the same paths as the server (a shared file system, as at a facility): a worker loads
plugin modules once per process and a plugin's ``wait_for`` reads the shared journal.

What a user sees of it is in docs/executors.md.  In short: a waiting job secedes from
the worker's thread pool, and a callback that waits hands the collecting of outcomes to a
new thread; a job is ``running`` (its clock started) once its task reports its start on a
Dask event topic, ``starting`` (queued) before; ``abort`` cancels a task not started, or
sets a Dask ``Event`` the task watches, and ``abort_grace`` s later restarts the worker
(tasks only waiting there are resubmitted); a plugin's ``JOB_TIMEOUT`` is applied on the
worker; a worker that dies (segfault, ``os._exit``) fails its job and is restarted by
the nanny (external scheduler: set ``distributed.scheduler.allowed-failures: 0``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..errors import error_line, one_line
from ..factory import Factory, plugin_factory
from ..journal.reader import use_reader
from ..states import State
from ..utils import seconds
from .base import Task
from .runner import Execution, Outcome
from .slot import serving
from .thread import default_workers
from .worker import outcome_from_message, outcome_message

logger = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "run_task"]

_configured: set[str] = set()
_configure_lock = threading.Lock()


def _prepare_worker(workdir: str, plugin_dirs: list[str]) -> None:
    """Once per worker process: read jobs from the shared journal, add the plugin
    directories."""
    with _configure_lock:
        if workdir in _configured:
            return
        use_reader(workdir)
        for directory in plugin_dirs:
            plugin_factory.add_directory(directory)
        _configured.add(workdir)


@contextlib.contextmanager
def _seceded() -> Iterator[None]:
    """Leave the worker's thread pool while waiting for another job."""
    from distributed import rejoin, secede

    secede()
    try:
        yield
    finally:
        rejoin()


def run_task(
    plugin_name: str,
    input_data: dict,
    job_id: int,
    workdir: str,
    plugin_dirs: list[str],
    abort_event: str,
    started_topic: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The Dask task of one job: report its start on ``started_topic``, run the plugin,
    watching for an abort; never raises."""
    from distributed import Event, get_client, get_worker

    if started_topic:  # no round trip: the event goes with the worker's next batch
        worker = get_worker()
        worker.log_event(started_topic, {"key": key, "worker": worker.address})
    _prepare_worker(workdir, plugin_dirs)
    clock: list[tuple[float, float]] = []  # (deadline, timeout) of the plugin's JOB_TIMEOUT

    def plugin_loaded(job_timeout: float | None) -> None:
        # the plugin's JOB_TIMEOUT, unless the input gives a timeout that is a number
        limit = seconds(job_timeout)
        if (
            seconds(input_data.get("job_timeout")) is None
            and limit is not None
            and 0 < limit < math.inf
        ):
            clock.append((time.monotonic() + limit, limit))

    execution = Execution(
        plugin_name,
        input_data,
        job_id,
        factory=plugin_factory,
        waiting=_seceded,
        profile_dir=workdir,
        on_plugin=plugin_loaded,
    )
    finished = threading.Event()
    event = Event(abort_event, client=get_client())

    def watch() -> None:
        while not finished.is_set():
            if clock and time.monotonic() >= clock[0][0]:
                execution.abort(f"timed out after {clock.pop()[1]:g} s")
            try:
                if event.wait(0.25):
                    execution.abort("aborted on request")
                    return
            except Exception as err:  # the scheduler went away: nothing to watch
                logger.warning("job %s: cannot watch for aborts: %r", job_id, err)
                return

    watcher = threading.Thread(target=watch, name=f"dahu-abort-{job_id}", daemon=True)
    watcher.start()
    try:
        outcome = execution.run()
    finally:
        finished.set()
    return outcome_message(outcome, job_id)


class DaskExecution:
    """One job on the cluster (the ``Execution`` interface of the executors).

    ``phase``: ``waiting`` (submitted, its task not started on a worker), ``running``
    (the task reported its start: the engine was told), ``cancelled`` (the engine ended
    the job before that), ``settled`` (its outcome was handed over).
    """

    plugin = None  # the plugin lives on a worker
    in_process = False

    def __init__(self, executor: DaskExecutor, task: Task):
        self.executor = executor
        self.task = task
        self.plugin_name = task.plugin_name
        self.input_data = task.input_data
        self.job_id = task.job_id
        self.abort_reason: str | None = None
        self.future: Any = None
        self.key = ""
        self.attempts = 0
        self.phase = "waiting"
        self.worker: str | None = None  # the worker its task started on
        self.started: float | None = None

    def launch(self) -> None:
        """Submit the task; its start and its outcome reach the collector thread."""
        executor = self.executor
        self.attempts += 1
        self.key = f"dahu-job-{self.job_id}-{id(self):x}-{self.attempts}"
        with executor._lock:
            executor._by_key[self.key] = self
        future = executor.client.submit(
            run_task,
            self.plugin_name,
            self.input_data,
            self.job_id,
            executor.host.workdir,
            executor.host.factory.directories,
            self.event_name,
            executor.started_topic,
            self.key,
            key=self.key,
            pure=False,
        )
        self.future = future
        future.add_done_callback(lambda done: executor._events.put((executor._done, self, done)))

    @property
    def event_name(self) -> str:
        """The name of the Dask event that aborts this job."""
        return f"dahu-abort-{self.executor.host.workdir}-{self.job_id}"

    def _signal_abort(self) -> None:
        try:
            from distributed import Event

            Event(self.event_name, client=self.executor.client).set()
        except Exception as err:
            logger.warning("job %s: cannot signal the abort to the cluster: %s", self.job_id, err)

    def abort(self, reason: str = "aborted on request") -> None:
        """Tell the running task to stop; restart its worker after the grace period."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self._signal_abort()
        self.executor.host.watchdog.call_later(self.executor.abort_grace, self._give_up)

    def drop(self) -> None:
        """Cancel the task of a job the engine ended before the task started (and abort
        it, should it have started meanwhile)."""
        self._signal_abort()
        try:
            self.future.cancel()
        except Exception as err:
            logger.warning("job %s: cannot cancel its task: %s", self.job_id, err)

    def _give_up(self) -> None:
        future = self.future
        if future is None or future.done():
            return
        logger.warning("job %s did not stop after abort: restarting its worker", self.job_id)
        threading.Thread(target=self._restart_worker, args=(future,), daemon=True).start()

    def _restart_worker(self, future: Any) -> None:
        """Restart the worker that runs the hung task (its nanny starts a fresh one)."""
        try:
            if self.worker is None:  # never reported its start: nothing runs it
                future.cancel()
                return
            with self.executor._lock:
                self.executor._restarted.add(self.worker)
            self.executor.client.restart_workers([self.worker])
        except Exception as err:
            logger.warning("job %s: cannot restart its worker: %s", self.job_id, err)

    def bystander(self, future: Any) -> bool:
        """True if the task, not started, was lost with a worker restarted for another
        job (it is resubmitted, at most twice)."""
        if self.attempts > 2 or future.status != "error":
            return False
        try:
            err = future.exception()
            worker = getattr(err.last_worker, "address", None)
        except Exception:
            return False
        with self.executor._lock:
            restarted = worker in self.executor._restarted
            return self.phase == "waiting" and type(err).__name__ == "KilledWorker" and restarted

    def outcome(self) -> Outcome:
        """The job's outcome once its future is done."""
        future, self.future = self.future, None
        if future.cancelled() or future.status == "cancelled":
            reason = self.abort_reason or "cancelled on the cluster"
            return Outcome(State.ABORTED, {}, reason, self.started, time.time())
        try:
            data = future.result()
        except Exception as err:
            name = type(err).__name__
            if name == "KilledWorker":
                reason = f"worker process died (dask KilledWorker: {one_line(err)})"
            else:
                reason = f"dask task failed: {error_line(err)}"
            state = State.ABORTED if self.abort_reason else State.FAILURE
            return Outcome(state, {}, self.abort_reason or reason, self.started, time.time())
        outcome = outcome_from_message(data)
        if outcome.state == State.ABORTED and self.abort_reason:
            outcome.error = self.abort_reason
        return outcome


class DaskExecutor:
    """Runs jobs on a Dask cluster (see the module doc).

    :param max_workers: workers of the local cluster; with an external scheduler, how
        many jobs are on the cluster at once (default: no bound but the cluster's)
    :param scheduler: a scheduler address, or ``local``
    :param abort_grace: seconds a job has to stop after ``abort`` before its worker is
        restarted
    """

    name = "dask"
    abandons_hung_jobs = False  # a hung task's worker is restarted instead
    isolates_plugins = True

    def __init__(
        self,
        max_workers: int | None = None,
        scheduler: str = "local",
        abort_grace: float = 2.0,
    ):
        self.scheduler = scheduler or "local"
        self.max_workers = int(max_workers or default_workers())
        self.abort_grace = abort_grace
        self.in_flight_limit = 100_000 if self.scheduler != "local" else 10 * self.max_workers
        self.host: Any = None
        self.client: Any = None
        self.cluster: Any = None
        self.started_topic = f"dahu-started-{uuid.uuid4().hex}"
        self._serialize = False
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # notified as jobs are settled
        self._pending: OrderedDict[Any, None] = OrderedDict()  # O(1) cancel, in order
        self._in_flight = 0  # submitted to the cluster, outcome not handed over
        self._phases = {"waiting": 0, "running": 0}  # of the executions in flight
        self._by_task: dict[Any, DaskExecution] = {}
        self._by_key: dict[str, DaskExecution] = {}
        self._restarted: set[str] = set()  # workers restarted for a hung job
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # starts and outcomes
        self._collector: threading.Thread | None = None

    def attach(self, host: Any) -> None:
        """Connect to (or start) the cluster for the engine ``host``."""
        import dask
        from distributed import Client, LocalCluster

        self.host = host
        if self.scheduler == "local":
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self.cluster = LocalCluster(
                    n_workers=self.max_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                )
            self.client = Client(self.cluster)
        else:
            self.client = Client(self.scheduler)
        # sent before any task: the scheduler forwards every start to this client
        self.client.subscribe_topic(self.started_topic, self._on_started)
        self._collector = threading.Thread(
            target=self._collect, name="dahu-dask-collector", daemon=True
        )
        self._collector.start()

    @property
    def serialize(self) -> bool:
        """When true, one job at a time is on the cluster."""
        return self._serialize

    @serialize.setter
    def serialize(self, value: bool) -> None:
        with self._lock:
            self._serialize = bool(value)
        self._pump()

    def submit(self, task: Task) -> None:
        """Queue ``task``; it goes to the cluster when the in-flight bound allows."""
        with self._lock:
            self._pending[task] = None
        self._pump()

    def _move(self, execution: DaskExecution, phase: str, before: tuple = ()) -> bool:
        """Move ``execution`` to ``phase`` if it is in one of ``before`` (any when empty),
        keeping the counts; call with the lock held."""
        old = execution.phase
        if before and old not in before:
            return False
        if old in self._phases:
            self._phases[old] -= 1
        if phase in self._phases:
            self._phases[phase] += 1
        execution.phase = phase
        return True

    def _pump(self) -> None:
        while True:
            with self._lock:
                limit = 1 if self._serialize else self.in_flight_limit
                if not self._pending or self._in_flight >= limit:
                    return
                task = self._pending.popitem(last=False)[0]
                self._in_flight += 1
                execution = DaskExecution(self, task)
                self._phases["waiting"] += 1
                self._by_task[task] = execution
            try:
                execution.launch()
            except Exception as err:
                logger.exception("job %s: cannot submit to the cluster", task.job_id)
                reason = f"cannot submit to the dask cluster: {error_line(err)}"
                self._settle(execution, Outcome(State.FAILURE, {}, reason, None, time.time()))

    def _settle(self, execution: DaskExecution, outcome: Outcome | None) -> None:
        """Hand ``outcome`` over (unless the engine ended the job already) and free the
        job's place on the cluster."""
        with self._lock:
            finish = self._move(execution, "settled", ("waiting", "running"))
        if finish and outcome is not None:
            try:
                execution.task.finish(outcome)
            except Exception:
                logger.exception("job %s: cannot record its outcome", execution.job_id)
        with self._lock:
            self._by_task.pop(execution.task, None)
            self._by_key.pop(execution.key, None)
            self._in_flight -= 1  # only now: shutdown(wait=True) waits for the record
            self._drained.notify_all()
        self._pump()

    def _on_started(self, event: tuple[float, Any]) -> None:
        """A task started on a worker (called on the client's event loop)."""
        msg = event[1] if isinstance(event, tuple | list) and len(event) == 2 else None
        if isinstance(msg, dict):
            self._events.put((self._started, msg.get("key"), msg.get("worker")))

    def _started(self, key: str, worker: str) -> None:
        """starting → running: the engine starts the job's clock now."""
        with self._lock:
            execution = self._by_key.get(key)
            if execution is None or execution.key != key:
                return  # ended already, or an attempt that was replaced
            if not self._move(execution, "running", ("waiting",)):
                return
            execution.worker = worker
            execution.started = time.time()
        task = execution.task
        if not task.begin(execution):  # aborted just now: the engine ended the job
            with self._lock:
                self._move(execution, "cancelled", ("running",))
            execution.drop()
            return
        # The plugin runs remotely and its module is not imported here: its JOB_TIMEOUT
        # is known only if the class is registered in this process already; the worker
        # applies it anyway.
        klass = Factory.registry.get(task.plugin_name.lower())
        task.plugin_loaded(getattr(klass, "JOB_TIMEOUT", None))

    def _done(self, execution: DaskExecution, future: Any) -> None:
        if future is not execution.future:
            return  # an attempt that was replaced
        if execution.bystander(future):
            logger.warning(
                "job %s: its task was lost with a worker restarted for another job: "
                "submitting it again",
                execution.job_id,
            )
            with self._lock:
                self._by_key.pop(execution.key, None)
            try:
                execution.launch()
                return
            except Exception as err:
                reason = f"cannot submit to the dask cluster: {error_line(err)}"
                outcome = Outcome(State.FAILURE, {}, reason, None, time.time())
                self._settle(execution, outcome)
                return
        # the job's callbacks run here: one that waits for a job hands the collecting
        # over to a new thread (:meth:`_hand_over`), so outcomes go on
        with serving(execution.job_id, self._hand_over, execution.task):
            self._settle(execution, execution.outcome())

    def _collect(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._events.get()
            if item is None:
                return
            method, *args = item
            try:
                method(*args)
            except Exception:  # the collector must go on: every job depends on it
                logger.exception("dask executor: cannot handle %s", method.__name__)
            if self._collector is not me:
                return  # another thread collects now

    @contextlib.contextmanager
    def _hand_over(self) -> Iterator[None]:
        """A callback on the collector thread waits for a job: a new thread collects the
        outcomes meanwhile (this one ends after the callbacks)."""
        with self._lock:
            if threading.current_thread() is self._collector:
                self._collector = threading.Thread(
                    target=self._collect, name="dahu-dask-collector", daemon=True
                )
                self._collector.start()
        yield

    def waiting(self) -> contextlib.AbstractContextManager:
        """Waiting happens on the workers (they secede); nothing to free here."""
        return contextlib.nullcontext()

    def cancel(self, task: Task) -> bool:
        """Take ``task`` off the queue, or cancel its task on the cluster if the task has
        not started; False if it has."""
        with self._lock:
            execution = None
            if task in self._pending:
                del self._pending[task]
            else:
                execution = self._by_task.get(task)
                if execution is None or not self._move(execution, "cancelled", ("waiting",)):
                    return False
        if execution is not None:
            execution.drop()  # its place is freed when the cluster confirms
        self._pump()
        return True

    def abandon(self, task: Task) -> bool:
        """Never needed: a hung task's worker is restarted (see :meth:`DaskExecution.abort`)."""
        return False

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "waiting": 0}``: a job whose task waits on the
        cluster is queued."""
        with self._lock:
            queued = len(self._pending) + self._phases["waiting"]
            return {"queued": queued, "running": self._phases["running"], "waiting": 0}

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop (waiting for the jobs in flight with ``wait``); close the cluster."""
        if wait:
            with self._lock:
                self._drained.wait_for(lambda: not self._pending and not self._in_flight, timeout)
        self._events.put(None)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
