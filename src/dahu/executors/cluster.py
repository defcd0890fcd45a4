"""The ``dask`` executor: jobs run on a Dask distributed cluster.

The scheduler address is given (``tcp://host:8786``), or ``local`` to start a
``LocalCluster`` of ``max_workers`` single-threaded worker processes with the server.
The workers must import ``dahu`` and see the plugin directories and the work directory
at the same paths as the server (a shared file system, as at a facility): a worker loads
plugin modules once per process and a plugin's ``wait_for`` reads the shared journal.

* A job waiting for another (``wait_for``, ``Job.synchronize_job``) secedes from the
  worker's thread pool while it waits, so waiters never hold every worker thread.  The
  jobs' callbacks run in the server's collector thread: one that waits for a job hands
  the collecting over to a new thread, so the outcome it waits for still arrives.
* ``abort`` sets a Dask ``Event`` that the task watches and passes to the plugin; if the
  job has not ended ``abort_grace`` seconds later the worker running it is restarted and
  the job ends ``aborted`` anyway (a task still waiting on a worker for a free thread is
  cancelled instead: the worker's running job goes on).
* A plugin's ``JOB_TIMEOUT`` is applied on the worker (the server never imports plugin
  code): the task aborts its plugin when it runs out.  The task tells the server as its
  plugin exists (:func:`.dask_task.watch_loading`), whose clock then restarts a worker
  whose plugin ignores the abort; it counts from the plugin's existence on its worker,
  not the task's wait there (:meth:`DaskExecution.time_left`).
* A worker that dies running a task (segfault, ``os._exit``) makes the job ``failure``
  with the reason; the local cluster's nanny restarts the worker.  The tasks that only
  waited on that worker (their plugin had not begun: :func:`.dask_task.plugin_began`)
  are sent again.  With an external scheduler, set
  ``distributed.scheduler.allowed-failures: 0`` so a killing task is not retried on
  other workers.  A task Dask runs again once its plugin began (its result lost with its
  worker) fails without running the plugin twice (:data:`.dask_task.RAN_BEFORE`).

The task itself, what runs on a worker, is :func:`.dask_task.run_task`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..errors import error_line
from ..states import State
from . import dask_connect, dask_task
from .base import Task, close_orphans
from .dask_task import begun_tasks, forget_runs, plugin_began, run_task, running_for
from .runner import Outcome
from .slot import serving
from .thread import option_number
from .worker import outcome_from_message

logger = logging.getLogger(__name__)

__all__ = ["DaskExecutor", "run_task"]

ATTEMPTS = 3
"""How many times a job is sent to the cluster at most: its worker died, or was
restarted, before its plugin began there (:meth:`DaskExecution.relaunched`)."""


IN_FLIGHT = 1000
"""Jobs on an external scheduler at once; the others wait in the server, where a stop ends
them at once (until 2026-11-30, 100,000: a stop of 10,000 queued jobs took over the 30 s
it has, and the rest read ``the plugin had not stopped after 30 s``, never begun)."""


class DaskExecution:
    """One job on the cluster (the ``Execution`` interface of the executors)."""

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
        self.started = time.time()
        self.settled = False  # the job's outcome was handed over (once only)
        self.lock = threading.Lock()
        self.attempt = 0
        self.sent = 0.0
        self.keys: list[str] = []  # of its tasks, one per attempt
        self.data: Any = None  # its task's result, fetched as it ended (:func:`.collect_when_done`)

    def launch(self) -> None:
        """Submit the task; its outcome reaches the engine through the collector thread."""
        executor = self.executor
        client = executor.connected()
        self.sent = time.time()  # this attempt's (its worker's events tell if it began)
        dask_task.watch_loading(executor, client)  # its clock: from its plugin on a worker
        key = f"dahu-job-{self.job_id}-{executor.token}-{self.attempt}"
        with executor._lock:  # before it is sent: its report may come at once
            executor._launched[key] = self
        where = (executor.host.workdir, executor.host.factory.directories, self.event_name)
        topic = dask_task.loading_topic(executor.token)
        try:
            args = (self.plugin_name, self.input_data, self.job_id, *where, topic)
            self.future = client.submit(run_task, *args, key=key, pure=False)
        except BaseException:
            with executor._lock:
                executor._launched.pop(key, None)
            raise
        self.attempt += 1
        self.keys.append(key)
        dask_task.collect_when_done(self, executor._completed)

    @property
    def event_name(self) -> str:
        """The name of the Dask event that aborts this job (until 2026-11-30 named after
        the work directory's path: one shared scheduler's servers of one path, on two
        computers, aborted each other's jobs of the same id)."""
        return f"dahu-abort-{self.executor.token}-{self.job_id}"

    def abort(self, reason: str = "aborted on request") -> None:
        """Tell the task to stop; give up on it after the grace period."""
        if self.abort_reason is None:
            self.abort_reason = reason
        try:
            if self.executor.client.status != "running":  # reconnecting, it would wait for
                raise ConnectionError(self.executor.lost_text)  # that, 30 s (abortJob, a stop)
            from distributed import Event

            Event(self.event_name, client=self.executor.client).set()
        except Exception as err:
            logger.warning("job %s: cannot signal the abort to the cluster: %s", self.job_id, err)
        self.executor.host.watchdog.call_later(self.executor.abort_grace, self._give_up)

    def _give_up(self) -> None:
        future = self.future
        if future is None or future.done():
            return
        restart = threading.Thread(target=self._restart_worker, args=(future,), daemon=True)
        with self.executor._lock:  # a stop lets it end (:meth:`DaskExecutor.shutdown`)
            restarts = self.executor._restarts
            restarts[:] = [thread for thread in restarts if thread.is_alive()] + [restart]
        restart.start()

    def _restart_worker(self, future: Any) -> None:
        """Restart the worker running the hung task (its nanny starts a fresh one); a task
        still waiting for a worker thread is only cancelled (restarting the worker that
        holds it would kill the job it runs)."""
        client = self.executor.client
        try:
            processing = client.processing()
            workers = [w for w, keys in processing.items() if future.key in keys]
            if workers:
                begun = client.run(begun_tasks, [future.key], workers=workers)
                running = [w for w in workers if begun.get(w)]
                if running:  # (one not begun ends as it is cancelled: nothing to say)
                    logger.warning(
                        "job %s did not stop after abort: restarting its worker", self.job_id
                    )
                    dask_task.note_restart(self.executor, processing, running, self.job_id)
                    self.executor.keep_workers()
                    client.restart_workers(running)
                    close_orphans(self.executor.host)  # the jobs its plugins made
                    return
            future.cancel()
        except Exception as err:  # e.g. a worker without a nanny: the job ends all the
            # same, its plugin left running there (as the thread executor abandons one);
            # not said of one lost with the scheduler (until 2026-11-30 it was)
            if client.status == "running":
                logger.warning(
                    "job %s: cannot restart its worker (%s): the job ends, its plugin may "
                    "run on there",
                    self.job_id,
                    error_line(err),
                )
            with contextlib.suppress(Exception):
                future.cancel()

    def time_left(self, limit: float) -> float:
        """The job's time of ``limit`` s seems up: the seconds more it gets, its clock
        counting from the begin of its plugin on a worker (it may have waited there, or
        on the scheduler, behind other tasks); ``limit`` again while it has not begun; 0
        once its time is up, or if the cluster cannot say."""
        future = self.future
        if future is None or future.done():
            return 0.0
        client = self.executor.client
        try:
            workers = [w for w, keys in client.processing().items() if future.key in keys]
            ran = client.run(running_for, future.key, workers=workers) if workers else {}
        except Exception as err:
            logger.warning("job %s: cannot ask the cluster when it began: %s", self.job_id, err)
            return 0.0
        ran_for = [t for t in ran.values() if t is not None]
        return max(0.0, limit - max(ran_for)) if ran_for else limit

    def relaunched(self) -> bool:
        """Send again a job whose worker died (``KilledWorker``) before its plugin began
        there: it waited on that worker behind another job, whose plugin crashed it; or
        one that one of our restarts of a worker (for another job's hung plugin) failed
        while it waited on that worker.  One whose plugin began there is not sent again
        (until 2026-11-30 it was after a restart of ours: its plugin ran twice).  A job is
        sent ``ATTEMPTS`` times at most.  True if it was sent."""
        future = self.future
        if self.abort_reason is not None or self.attempt >= ATTEMPTS:
            return False
        if future.status != "error":  # it ran to its end, or was cancelled
            return False
        try:
            error = future.exception()
            if type(error).__name__ != "KilledWorker":
                return False
            died_on = getattr(getattr(error, "last_worker", None), "address", None)
            if self._began_on(died_on, future.key):
                return False
            restarted = died_on in self.executor.restarted
            why = "restarted" if restarted else "died before its plugin began"
            logger.info("job %s: sent again (its worker %s)", self.job_id, why)
            self.launch()
        except Exception:  # reported as the task's outcome
            logger.exception("job %s: cannot send it again", self.job_id)
            self.future = future
            return False
        return True

    def _began_on(self, address: str | None, key: str) -> bool:
        """Whether the plugin of task ``key`` had begun on the dead worker ``address``
        (True if the scheduler cannot tell)."""
        if address is None:
            return True
        try:
            events = self.executor.client.get_events(address)
        except Exception as err:
            logger.warning(
                "job %s: cannot ask the scheduler what its worker began: %s", self.job_id, err
            )
            return True
        return plugin_began(events, key, self.sent)

    def outcome(self) -> Outcome:
        """The job's outcome once its future is done."""
        future, self.future = self.future, None
        try:
            return self._outcome(future)
        finally:  # had, it is not run again: the events its tasks set can go
            forget_runs(self.executor.client, self.keys)

    def _outcome(self, future: Any) -> Outcome:
        if self.abort_reason is not None:  # its abort event, set, would stay for good
            with contextlib.suppress(Exception):
                from distributed import Event

                Event(self.event_name, client=self.executor.client).clear()
        data, self.data = self.data, None  # read as its task ended (not kept with the job)
        if data is None and (future.cancelled() or future.status == "cancelled"):
            if self.abort_reason is None and self.executor.lost(future):
                return Outcome(
                    State.FAILURE, {}, self.executor.lost_text, self.started, time.time()
                )
            reason = self.abort_reason or "cancelled on the cluster"
            return Outcome(State.ABORTED, {}, reason, self.started, time.time())
        try:
            data = data if data is not None else future.result()
        except Exception as err:
            name = type(err).__name__
            if name == "KilledWorker":
                reason = self.executor.death_reason(err) if not self.abort_reason else ""
                from .dask_exits import stopped_meanwhile

                stopped_meanwhile(self, reason)  # by systemd's stop: aborted
                close_orphans(self.executor.host)  # the jobs its plugins made
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

    :param max_workers: workers of the local cluster (at most 10 jobs per worker are on
        it at once); unused with an external scheduler (:data:`IN_FLIGHT` jobs on it)
    :param scheduler: a scheduler address, or ``local``
    :param abort_grace: seconds a job has to stop after ``abort``: then its worker restarts
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
        from .dask_connect import cluster_size, scheduler_address

        self.scheduler = scheduler_address(scheduler)
        self.max_workers = cluster_size(max_workers, self.scheduler)
        self.abort_grace = option_number("abort_grace", abort_grace, "seconds")
        self.in_flight_limit = 10 * self.max_workers if self.scheduler == "local" else IN_FLIGHT
        self.host: Any = None
        self.client: Any = None
        self.cluster: Any = None
        self._serialize = False
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # notified as jobs are settled
        self._pending: OrderedDict[Any, None] = OrderedDict()  # O(1) cancel, in order
        self._in_flight = 0
        self._completed: queue.SimpleQueue = queue.SimpleQueue()
        self._collector: threading.Thread | None = None
        self._launched: dict[str, DaskExecution] = {}  # by task key, until settled
        self.restarted: dict[str, int] = {}  # the workers it restarted: for which job
        self.keeper: Any = None  # the local cluster's (:class:`.dask_keeper.Keeper`)
        self.connecting = threading.Lock()  # a new client is made (:meth:`connected`)
        self.retry_at = 0.0  # not before then
        self._restarts: list[threading.Thread] = []  # restarting a worker (a hung plugin's)
        # in the names of its tasks and events: its own among the servers of a scheduler
        self.token = secrets.token_hex(8)

    def attach(self, host: Any) -> None:
        """Connect to (or start) the cluster for the engine ``host``."""
        import dask
        from distributed import Client, LocalCluster

        from .dask_connect import check_scheduler
        from .dask_exits import watch_workers
        from .dask_keeper import Keeper

        self.host = host
        if self.scheduler == "local":
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self.cluster = LocalCluster(
                    n_workers=self.max_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address="127.0.0.1:0",  # no login: not for the network
                )
            self.client = Client(self.cluster)
            watch_workers(self.client)  # how its workers end; they ignore a Ctrl-C
            self.keeper = Keeper(self.cluster, self.client, self.max_workers)
        else:
            check_scheduler(self.scheduler)  # Client() would wait for ever for some
            self.client = Client(self.scheduler)
        self._collector = threading.Thread(
            target=self._collect, name="dahu-dask-collector", daemon=True
        )
        self._collector.start()

    def death_reason(self, error: Any) -> str:
        """Why a task's worker died (a ``KilledWorker``): a server restarted it, or
        :func:`.dask_exits.death_reason`; neither holds up another job's outcome (until
        2026-11-30 a 1 ms job took 5 s to end while a worker's death was looked into)."""
        from .dask_exits import death_reason

        with self._hand_over():  # a new thread collects the outcomes meanwhile
            restarted = dask_task.restart_reason(self, error)  # by this server, or another
            return restarted or death_reason(error, self.cluster is not None, self.client)

    def connected(self) -> Any:
        """The client; made again if its external scheduler is back
        (:func:`.dask_connect.connected`)."""
        from .dask_connect import connected

        return connected(self)

    @property
    def lost_text(self) -> str:
        """The error of the jobs the client lost with its scheduler."""
        return f"lost the connection to the dask scheduler {self.scheduler}"

    def lost(self, future: Any) -> bool:
        """Whether the client cancelled ``future`` as it lost its scheduler (it cancels
        every task then, and ends after ``distributed.comm.timeouts.connect`` if the
        scheduler is not back)."""
        if self.client.status != "running":
            return True
        try:
            future.result(timeout=1)
        except Exception as err:  # a FutureCancelledError
            return getattr(err, "reason", None) == "scheduler-connection-lost"
        return False

    def keep_workers(self) -> None:
        """A worker of the local cluster is restarted: watch that the cluster gets back
        to ``max_workers`` (:class:`.dask_keeper.Keeper`)."""
        if self.keeper is not None:
            self.keeper.keep()

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

    def _pump(self) -> None:
        while True:
            with self._lock:
                limit = 1 if self._serialize else self.in_flight_limit
                if not self._pending or self._in_flight >= limit:
                    return
                task = self._pending.popitem(last=False)[0]
                self._in_flight += 1
            execution = DaskExecution(self, task)
            # settled without pumping: this loop goes on (a recursion per job ended here
            # overflowed the stack of the collector thread, which then died: the jobs on
            # the cluster never ended, e.g. a stop halting 500 queued jobs in a row)
            if not task.begin(execution):  # aborted while queued: the engine ended it
                self._settle(task, None, pump=False)
                continue
            try:
                execution.launch()
            except Exception as err:
                reason = f"cannot submit to the dask cluster: {error_line(err)}"
                if isinstance(err, ConnectionError):  # no scheduler: one line a job
                    logger.warning("job %s: %s", task.job_id, reason)
                else:
                    logger.exception("job %s: cannot submit to the cluster", task.job_id)
                failed = Outcome(State.FAILURE, {}, reason, None, time.time())
                self._settle(task, failed, pump=False)

    def _settle(self, task: Task, outcome: Outcome | None, pump: bool = True) -> None:
        if outcome is not None:
            try:
                task.finish(outcome)
            except Exception:
                logger.exception("job %s: cannot record its outcome", task.job_id)
        with self._lock:
            self._in_flight -= 1  # only now: shutdown(wait=True) waits for the record
            self._drained.notify_all()
        if pump:
            self._pump()

    def _collect(self) -> None:
        me = threading.current_thread()
        while True:
            execution = self._completed.get()
            if execution is None:
                return
            with self._lock:
                self._launched.pop(execution.future.key, None)
            if execution.relaunched():
                continue
            task = execution.task
            # the job's callbacks run here: one that waits for a job hands the
            # collecting over to a new thread (:meth:`_hand_over`), so outcomes go on
            with serving(task.job_id, self._hand_over, task):
                self._settle(task, execution.outcome())
            if self._collector is not me:
                return  # another thread collects now

    @contextlib.contextmanager
    def _hand_over(self) -> Iterator[None]:
        """A callback on the collector thread waits for a job (or the collector for a dead
        worker's exit code): a new thread collects the outcomes meanwhile (this one ends
        after the callbacks)."""
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
        """Take ``task`` off the queue; False if it went to the cluster already."""
        with self._lock:
            if task not in self._pending:
                return False
            del self._pending[task]
        self._pump()
        return True

    def abandon(self, task: Task) -> bool:
        """Never needed: a hung task's worker is restarted (see :meth:`DaskExecution.abort`)."""
        return False

    def counts(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "waiting": 0}``."""
        with self._lock:
            return {"queued": len(self._pending), "running": self._in_flight, "waiting": 0}

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop (waiting for the jobs in flight with ``wait``); close the cluster."""
        if wait:
            with self._lock:
                self._drained.wait_for(lambda: not self._pending and not self._in_flight, timeout)
        self._completed.put(None)
        if self.keeper is not None:
            self.keeper.close()
        deadline = time.monotonic() + 10  # cut short, Dask logged its CancelledError
        for restart in list(self._restarts):
            restart.join(max(0.0, deadline - time.monotonic()))
        if self.client is not None:
            dask_connect.close_client(self.client)
        if self.cluster is not None:
            self.cluster.close()
