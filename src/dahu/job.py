"""Jobs: one run of one plugin on one input (public API).

``Job(name, input_data)`` records the job in the journal and gets its id; ``start()``
queues it on the engine's executor; the executor calls ``run()``, which runs the plugin
(setup → process → teardown, teardown always), records the outcome in the journal, then
calls the callbacks.  The class-level methods (``getStatusFromID``, ...) answer for any
job id: from the job object while it is alive, from the journal afterwards, so finished
jobs need not stay in memory.

``Job`` is a ``threading.Thread`` for compatibility, but no thread is created per job:
``start()`` hands the job to the engine's bounded pool (see :mod:`dahu.executor`).
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import DahuError
from .engine import Engine, get_engine
from .inputs import InvalidInput, parse_input
from .journal import JournalError, job_file_stem, write_job_files
from .runner import Outcome
from .states import State
from .statistics import format_statistics
from .utils import NumpyEncoder, gc_paused, get_isotime

logger = logging.getLogger(__name__)

__all__ = ["Job", "parse_input", "InvalidInput"]


class _JobClass(type):
    """Metaclass of :class:`Job`: gives the class attribute ``Job._id_class``."""

    @property
    def _id_class(cls) -> int:
        """The last job id given out (plugins compare ids with it, as in the original)."""
        return get_engine().journal.last_id()


class Job(threading.Thread, metaclass=_JobClass):
    """One job: a plugin name, an input dict, a state, an output or an error."""

    STATE_INEXISTANT = State.INEXISTANT
    STATE_UNINITIALIZED = State.UNINITIALIZED
    STATE_STARTING = State.STARTING
    STATE_RUNNING = State.RUNNING
    STATE_SUCCESS = State.SUCCESS
    STATE_FAILURE = State.FAILURE
    STATE_ABORTED = State.ABORTED
    STATE = list(State.ALL)
    FINAL_STATES = State.FINAL
    NOTE_RUNNING_AFTER = 0.5  # seconds: longer jobs are recorded as running (at most 2x)

    _lock = threading.Lock()
    _live: dict[int, Job] = {}  # jobs not finished yet
    _recent: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __init__(
        self, name: str = "plugin.Plugin", input_data: Any = None, *, _job_id: int | None = None
    ):
        engine = get_engine()
        if _job_id is None:
            data = parse_input(input_data)
            if not isinstance(name, str) or not name:
                raise InvalidInput("plugin name must be a non-empty string")
            data["plugin_name"] = name
            _job_id = engine.journal.create(name, data, time.time())
        else:  # recorded already by create_many
            data = input_data
        self._engine: Engine = engine
        self._jobId = _job_id
        data["job_id"] = self._jobId
        threading.Thread.__init__(self, name=name, daemon=True)
        self._plugin_name = name
        self._input_data: dict[str, Any] | None = data
        self._output_data: dict[str, Any] | None = {}
        self._error: str | None = None
        self._status = State.UNINITIALIZED
        self._callbacks: list[Callable[[Job], Any]] = []
        self._done = threading.Event()
        self._execution: Any = None
        self._abort_reason: str | None = None
        self._timer: Any = None
        self._noted_running = False
        self._outcome_recorded = False
        self._runner: int | None = None
        self._cleaned = False
        self._files_written = False
        self._from_journal = False
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._aborted_at: float | None = None
        self._submitted = time.time()
        with Job._lock:
            Job._live[self._jobId] = self

    @classmethod
    def create_many(cls, name: str, inputs: list[Any], chunk: int = 256) -> list[Job]:
        """Create one job per input (dicts, JSON texts or files), ``chunk`` journal
        records per transaction; all inputs are checked before any job is created."""
        if not isinstance(name, str) or not name:
            raise InvalidInput("plugin name must be a non-empty string")
        datas = [parse_input(item) for item in inputs]
        for data in datas:
            data["plugin_name"] = name
        journal = get_engine().journal
        jobs: list[Job] = []
        with gc_paused():
            for first in range(0, len(datas), chunk):
                part = datas[first : first + chunk]
                ids = journal.create_many(name, part, time.time())
                jobs.extend(cls(name, d, _job_id=i) for d, i in zip(part, ids, strict=True))
                time.sleep(0)  # between chunks, let other threads reach the journal
        return jobs

    @classmethod
    def live_jobs(cls, engine: Engine | None = None) -> list[Job]:
        """The jobs of ``engine`` (default: the current one) queued or running now."""
        engine = engine or get_engine()
        with cls._lock:
            jobs = list(cls._live.values())
        return [
            j for j in jobs if j._engine is engine and j._status in (State.STARTING, State.RUNNING)
        ]

    def __repr__(self) -> str:
        return f"<Job {self._jobId} {self._plugin_name} {self._status}>"

    # ---- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Queue the job on the engine's executor (it runs when a slot is free)."""
        with Job._lock:
            if self._status != State.UNINITIALIZED:
                raise RuntimeError(f"job {self._jobId} was already started")
            self._status = State.STARTING
        self._engine.executor.submit(self)

    def run(self) -> None:
        """Run the plugin and record the outcome; called by the executor, never raises."""
        self._runner = threading.get_ident()
        execution = self._begin()
        outcome = execution.run() if execution is not None else self._aborted_outcome()
        self._finish(outcome)

    def _aborted_outcome(self) -> Outcome:
        return Outcome(State.ABORTED, {}, self._abort_reason, None, time.time())

    def _begin(self) -> Any:
        """Make the job ``running``: return the execution to run, or None if aborted first.

        Most jobs are short: the journal learns their start time with the outcome (one
        write less per job).  A job still running after :attr:`NOTE_RUNNING_AFTER`
        seconds is recorded as ``running``, for readers of the journal in other
        processes.  A job unfinished in the journal when its process dies is
        ``interrupted`` whether it was queued or running.
        """
        if self._abort_reason is not None:
            return None
        execution = self._engine.executor.execution(
            self._plugin_name,
            self._input_data or {},
            self._jobId,
            self._engine,
            on_plugin=self._arm_timeout,
        )
        with Job._lock:
            self._execution = execution
            self._status = State.RUNNING
        self._started_at = time.time()
        self._engine.watch_running()
        if self._abort_reason is not None:  # abort arrived in between
            execution.abort(self._abort_reason)
        return execution

    def _note_running(self) -> None:
        """Record ``running`` in the journal once (never over a final state)."""
        if self._status == State.RUNNING and not self._noted_running:
            self._noted_running = True
            try:
                self._engine.journal.set_state(self._jobId, State.RUNNING, self._started_at)
            except JournalError as err:
                self._journal_failed(err)

    def _arm_timeout(self, plugin_timeout: float | None) -> None:
        """Start the job's clock: the input's ``job_timeout``, else the plugin's
        ``JOB_TIMEOUT``, else the engine's default; abort the job when it runs out."""
        timeout = self._input_data.get("job_timeout") if self._input_data else None
        if timeout is None:
            timeout = plugin_timeout
        if timeout is None:
            timeout = self._engine.default_timeout
        try:
            timeout = float(timeout) if timeout is not None else None
        except (TypeError, ValueError):
            logger.warning("job %s: ignoring timeout %r: not a number", self._jobId, timeout)
            timeout = None
        if timeout is not None and timeout > 0:
            ref = weakref.ref(self)

            def expire() -> None:
                job = ref()
                if job is not None and job._status == State.RUNNING:
                    logger.warning("job %s timed out after %g s: aborting it", job.id, timeout)
                    job.abort(f"timed out after {timeout:g} s")

            self._timer = self._engine.watchdog.call_later(timeout, expire)

    def _journal_failed(self, err: Exception) -> None:
        self._engine.journal_fault = str(err)
        logger.error("job %s: %s", self._jobId, err)

    def _abandon_if_stuck(self) -> None:
        """Grace period after an abort is over: end the job even if its plugin runs on."""
        executor = self._engine.executor
        if self._status != State.RUNNING or self._runner is None:
            return
        if executor.abandon(self._runner):
            grace = executor.abort_grace
            reason = f"{self._abort_reason} (the plugin did not stop within {grace:g} s)"
            self._finish(Outcome(State.ABORTED, {}, reason, None, time.time()))

    def _finish(self, outcome: Outcome) -> None:
        with Job._lock:
            if self._outcome_recorded:  # an abandoned plugin that returned at last
                logger.warning(
                    "job %s: late %s from an abandoned plugin ignored", self._jobId, outcome.state
                )
                return
            self._outcome_recorded = True
        if self._timer is not None:
            self._engine.watchdog.cancel(self._timer)
            self._timer = None
        output = self._final_output(outcome)
        final_input = None
        if outcome.input is not None and outcome.input != self._input_data:
            # a plugin that added keys to its input has them recorded, as in the original
            final_input = self._input_data = {**(self._input_data or {}), **outcome.input}
        self._output_data = output
        self._error = outcome.error
        self._started_at, self._ended_at = outcome.started, outcome.ended
        try:
            self._engine.journal.finish(
                self._jobId,
                outcome.state,
                output,
                outcome.error,
                outcome.started,
                outcome.ended,
                outcome.module_file,
                outcome.plugin_version,
                final_input,
            )
        except JournalError as err:
            self._journal_failed(err)
        with Job._lock:
            self._status = outcome.state
            # a job whose record could not be written stays in memory: nothing is lost
            if self._engine.journal_fault is None:
                if Job._live.get(self._jobId) is self:
                    del Job._live[self._jobId]
                    Job._recent[self._jobId] = self
        self._engine.count_finished(outcome.state)
        if outcome.state == State.FAILURE:
            logger.debug("job %s failed: %s", self._jobId, (outcome.error or "").split("\n")[0])
        for callback in list(self._callbacks):
            try:
                callback(self)
            except Exception:
                logger.exception("job %s: callback %r failed", self._jobId, callback)
        self._done.set()

    def _final_output(self, outcome: Outcome) -> dict[str, Any]:
        """The output clients read: the plugin's, with ``job_runtime``, and the
        original's ``error`` (list of lines) or ``aborted`` (time) keys."""
        output = dict(outcome.output) if isinstance(outcome.output, dict) else {}
        ended = outcome.ended if outcome.ended is not None else time.time()
        begun = outcome.started if outcome.started is not None else self._submitted
        output["job_runtime"] = max(ended - begun, 0.0)
        if outcome.state == State.FAILURE and outcome.error:
            output["error"] = outcome.error.splitlines()
        elif outcome.state == State.ABORTED:
            output["aborted"] = get_isotime(self._aborted_at or ended)
        return output

    def _write_files(self) -> None:
        """Write the ``.inp``/``.out`` files of the ended job (done as soon as it ends)."""
        try:
            write_job_files(
                self._engine.workdir,
                self._jobId,
                self._plugin_name,
                self._input_data,
                self._output_data,
            )
            self._files_written = True
        except (OSError, TypeError, ValueError) as err:
            logger.error("job %s: cannot write its .inp/.out files: %s", self._jobId, err)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the job ends (or ``timeout`` seconds).

        Unlike ``Thread.join``, waiting for a job that is not started yet is allowed: it
        waits for it to be started and to end.  Called from the job's own callbacks it
        returns at once.
        """
        if self._runner == threading.get_ident() or self._from_journal:
            return
        self._done.wait(timeout)

    synchronize = join

    def is_alive(self) -> bool:
        """True while the job is queued or running."""
        return self._status in (State.STARTING, State.RUNNING)

    def abort(self, reason: str = "aborted on request") -> bool:
        """Ask the job to stop; True if it was queued or running and is now stopping.

        A running plugin sees ``is_aborted``; the job ends ``aborted``, with teardown and
        callbacks still run.  A job not started or already finished is left unchanged.
        """
        with Job._lock:
            status = self._status
            if status not in (State.STARTING, State.RUNNING) or self._abort_reason:
                logger.warning("job %s is %s: nothing to abort", self._jobId, status)
                return False
            self._abort_reason = reason
            self._aborted_at = time.time()
            execution = self._execution
        if execution is not None:
            execution.abort(reason)
            if getattr(self._engine.executor, "abandons_hung_jobs", False):
                self._engine.watchdog.call_later(
                    self._engine.executor.abort_grace, self._abandon_if_stuck
                )
        elif status == State.STARTING:
            self._engine.executor.cancel(self)
        return True

    def connect_callback(self, method: Callable[[Job], Any] | None = None) -> None:
        """Call ``method(job)`` when the job ends (after its outcome is recorded)."""
        if method is not None and callable(method):
            self._callbacks.append(method)

    def clean(self, force: bool = False, wait: bool = True) -> None:
        """Write ``<workdir>/NNNN/NNNNN_<plugin>.inp/.out`` and free the plugin.

        :param force: force a garbage collection afterwards
        :param wait: wait for the job to finish first
        """
        if wait:
            self.join()
        if self._status not in State.FINAL:
            logger.warning("job %s is %s: not cleaned", self._jobId, self._status)
            return
        if not self._cleaned:
            if not self._files_written:
                self._write_files()
            self._execution = None
            self._callbacks = []
            if self._engine.journal_fault is None:
                # the journal answers from now on
                self._cleaned = True
                self._input_data = self._output_data = None
        if force:
            gc.collect()

    # ---- properties -----------------------------------------------------------------
    @property
    def id(self) -> int:
        """The job id (an increasing integer)."""
        return self._jobId

    @property
    def plugin(self) -> Any:
        """The plugin instance (None before it runs and after ``clean``)."""
        return self._execution.plugin if self._execution is not None else None

    @property
    def data_on_disk(self) -> str | None:
        """The base path of the job's ``.inp``/``.out`` files once cleaned, else None."""
        if not (self._cleaned or self._files_written):
            return None
        return job_file_stem(self._engine.workdir, self._jobId, self._plugin_name)

    @property
    def status(self) -> str:
        """The job state, one of ``Job.STATE``."""
        return self._status

    def _record(self):
        record = self._engine.journal.get(self._jobId)
        if record is None:
            raise DahuError(f"job {self._jobId} is missing from the journal")
        return record

    @property
    def input_data(self) -> dict[str, Any]:
        """The job input (with ``plugin_name`` and ``job_id``)."""
        data = self._input_data
        return data if data is not None else self._record().input

    @property
    def output_data(self) -> dict[str, Any]:
        """The job output (the plugin's ``output`` dict once it ran)."""
        data = self._output_data
        if data is not None:
            plugin = self.plugin
            if self._status == State.RUNNING and plugin is not None:
                return plugin.output
            return data
        return self._record().output or {}

    @property
    def error(self) -> str:
        """The error text ("" when none): one line of reason, then the traceback if any."""
        if self._cleaned:
            return self._record().error or ""
        return self._error or ""

    @property
    def runtime(self) -> float | None:
        """Seconds the plugin ran (None until the job ended)."""
        if self._started_at is None or self._ended_at is None:
            return None
        return self._ended_at - self._started_at

    def getName(self) -> str:  # noqa: N802 - public API
        """The plugin name of the job."""
        return self._plugin_name

    def setName(self, name: str) -> None:  # noqa: N802 - public API
        """Jobs cannot be renamed: their plugin is fixed when they are created."""
        if name != self._plugin_name:
            logger.error("job %s: a job cannot be renamed", self._jobId)

    name = property(getName, setName)

    # ---- class-level API --------------------------------------------------------------
    @classmethod
    def _resolve(cls, jobId: Any) -> int:  # noqa: N803
        job_id = int(jobId)
        if job_id < 0:  # -1 is the last job, as in the original
            job_id = get_engine().journal.last_id() + 1 + job_id
        return job_id

    @classmethod
    def _lookup(cls, job_id: int) -> Job | None:
        with cls._lock:
            job = cls._live.get(job_id) or cls._recent.get(job_id)
        # a job of a previous engine (another work directory) is not this engine's job
        return job if job is not None and job._engine is get_engine() else None

    @classmethod
    def _from_record(cls, record: Any) -> Job:
        job = cls.__new__(cls)
        threading.Thread.__init__(job, name=record.plugin, daemon=True)
        job.__dict__.update(
            _engine=get_engine(),
            _jobId=record.id,
            _plugin_name=record.plugin,
            _input_data=None,
            _output_data=None,
            _error=record.error,
            _status=record.state,
            _callbacks=[],
            _done=threading.Event(),
            _execution=None,
            _abort_reason=None,
            _timer=None,
            _noted_running=True,
            _outcome_recorded=True,
            _runner=None,
            _cleaned=True,
            _files_written=True,
            _from_journal=True,
            _started_at=record.started,
            _ended_at=record.ended,
            _aborted_at=None,
            _submitted=record.submitted,
        )
        job._done.set()
        return job

    @classmethod
    def getJobFromID(cls, jobId: int) -> Job | None:  # noqa: N802,N803
        """Return the job ``jobId`` (rebuilt from the journal if it ended), or None."""
        job_id = cls._resolve(jobId)
        job = cls._lookup(job_id)
        if job is not None:
            return job
        record = get_engine().journal.get(job_id)
        return cls._from_record(record) if record is not None else None

    getJobFromId = getJobFromID

    @classmethod
    def getStatusFromID(cls, jobId: int) -> str:  # noqa: N802,N803
        """Return the state of job ``jobId`` (``inexistant`` if there is none)."""
        job_id = cls._resolve(jobId)
        job = cls._lookup(job_id)
        if job is not None:
            return job._status
        return get_engine().journal.state(job_id) or State.INEXISTANT

    getStatusFromId = getStatusFromID

    @classmethod
    def synchronize_job(cls, jobId: int, timeout: float | None = None) -> str:  # noqa: N803
        """Wait for job ``jobId`` to end (at most ``timeout`` s); return its state."""
        job_id = cls._resolve(jobId)
        job = cls._lookup(job_id)
        if job is not None:
            job.join(timeout)
            return job._status
        # Not a job of this process (e.g. a worker process waiting for a job of the
        # server): follow its record in the shared journal.
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            state = cls.getStatusFromID(job_id)
            if state in State.FINAL or state == State.INEXISTANT:
                return state
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return state
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, 0.1)

    @classmethod
    def synchronize_all(cls) -> None:
        """Wait for every job of the process to end."""
        while True:
            with cls._lock:
                pending = [j for j in cls._live.values() if j._status != State.UNINITIALIZED]
            if not pending:
                return
            for job in pending:
                job.join()

    @classmethod
    def cleanJobfromID(cls, jobId: int, forceGC: bool = True) -> str:  # noqa: N802,N803
        """Write the job's ``.inp``/``.out`` files and free its plugin; return a message."""
        job_id = cls._resolve(jobId)
        job = cls._lookup(job_id)
        if job is None:
            record = get_engine().journal.get(job_id)
            if record is None:
                return f"job {job_id} does not exist"
            write_job_files(
                get_engine().workdir, job_id, record.plugin, record.input, record.output or {}
            )
            return f"job {job_id} cleaned"
        if job._status not in State.FINAL:
            return f"job {job_id} is {job._status}: not cleaned"
        job.clean(force=forceGC, wait=False)
        return f"job {job_id} cleaned"

    cleanJobfromId = cleanJobfromID

    @classmethod
    def _data(cls, jobId: int, attribute: str, as_JSON: bool) -> Any:  # noqa: N803
        job = cls.getJobFromID(jobId)
        data = getattr(job, attribute) if job is not None else {}
        return json.dumps(data, cls=NumpyEncoder) if as_JSON else data

    @classmethod
    def getDataOutputFromID(cls, jobId: int, as_JSON: bool = False) -> Any:  # noqa: N802,N803
        """Return the output of job ``jobId`` (a dict, or JSON text if ``as_JSON``)."""
        return cls._data(jobId, "output_data", as_JSON)

    getDataOutputFromId = getDataOutputFromID

    @classmethod
    def getDataInputFromID(cls, jobId: int, as_JSON: bool = False) -> Any:  # noqa: N802,N803
        """Return the input of job ``jobId`` (a dict, or JSON text if ``as_JSON``)."""
        return cls._data(jobId, "input_data", as_JSON)

    getDataInputFromId = getDataInputFromID

    @classmethod
    def getErrorFromID(cls, jobId: int) -> str:  # noqa: N802,N803
        """Return the error text of job ``jobId`` ("" when it has none)."""
        job = cls.getJobFromID(jobId)
        return job.error if job is not None else f"job {int(jobId)} does not exist"

    getErrorFromId = getErrorFromID

    @classmethod
    def statistics(cls) -> dict[str, Any]:
        """Per-plugin counts and runtimes of this engine's jobs, wall time, speed-up and
        the linear regression of runtime against job order (as a dict)."""
        engine = get_engine()
        return engine.journal.summary(engine.first_id)

    @classmethod
    def stats(cls) -> str:
        """Return the statistics of this engine's jobs as a text table."""
        return format_statistics(cls.statistics())
