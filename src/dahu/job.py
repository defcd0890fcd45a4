"""Jobs: one run of one plugin on one input (public API).

``Job(name, input_data)`` records the job in the journal and gets its id; ``start()``
queues it on the engine's executor, which runs the plugin (setup → process → teardown,
teardown always); the engine records the outcome in the journal, then calls the
callbacks.  The class-level methods (``getStatusFromID``, ...) answer for any job id:
from memory while the job lives, from the journal afterwards, so finished jobs need not
stay in memory.

``Job`` is only the public face: the engine owns the job's state and performs every
transition (:mod:`dahu.engine.lifecycle`).  It is a ``threading.Thread`` for
compatibility, but no thread is created per job: ``start()`` hands the job to the
engine's bounded pool (see :mod:`dahu.executors`).  In a worker process (no engine), the
class-level methods read the shared journal (:mod:`dahu.journal.reader`).
"""

from __future__ import annotations

import gc
import json
import logging
import numbers
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .engine import NOTE_RUNNING_AFTER, Engine, JobRun, get_engine
from .engine.aborts import abort_elsewhere
from .engine.foreign import settled
from .engine.served import making_engine
from .errors import DahuError, InvalidInput, JournalError, UnknownJob, one_line
from .executors.runner import Outcome
from .executors.slot import SELF_JOIN, current_job_id, released
from .factory import plugin_factory  # noqa: F401  (the original's name here)
from .inputs import parse_input, parse_inputs, plugin_name, unrecordable, whole_number
from .journal import job_file_stem, write_job_files
from .journal.reader import JournalReader, current_reader, follow
from .journal.writer import JournalLocked
from .states import State
from .statistics import format_statistics
from .utils import NumpyEncoder, gc_paused, jsonable, text_of, wait_timeout

logger = logging.getLogger(__name__)

_NEVER_STARTED = threading.Event()
"""The ``threading.Thread`` started flag of every job: its own thread is never started
(the engine runs it), as ``Thread.start`` would fail on a set flag."""

__all__ = ["Job", "parse_input", "InvalidInput"]


def _source() -> Engine | JournalReader:
    """Where job ids are looked up: the engine, or the shared journal in a worker."""
    return current_reader() or get_engine()


def _given(job_id: Any) -> Any:
    """A job id as the caller gave it, for a message: ``-5``, ``1.5`` (not ``1``)."""
    return int(job_id) if isinstance(job_id, (numbers.Integral, str)) else job_id


def _refuse_unrecordable(datas: list[dict[str, Any]]) -> None:
    """Raise :class:`InvalidInput` naming the first key or value JSON refuses in
    ``datas`` (the journal refused them): the journal records every input, to show and
    replay the job; return if they are all JSON (the journal failed for another reason)."""
    for data in datas:
        reason = unrecordable(data)
        if reason is not None:
            raise InvalidInput(f"job input is not JSON-serialisable: {reason}") from None


def _files_gone(workdir: str, job_id: int, plugin: str) -> bool:
    """Whether a job's ``.inp`` or ``.out`` file is missing (a user deleted them)."""
    stem = job_file_stem(workdir, job_id, plugin)
    return not (os.path.exists(stem + ".inp") and os.path.exists(stem + ".out"))


def _refused(engine: Engine, datas: list[dict[str, Any]], err: JournalError) -> None:
    """The journal refused the records of new jobs (``datas``): :class:`InvalidInput`
    if an input is the cause; else it cannot be written (a full disk, a lock held too
    long, a broken file) and the engine is at fault (FAULT, the reason in ``Status``,
    tried again every 10 s), as when it refuses an outcome."""
    _refuse_unrecordable(datas)
    if isinstance(err, JournalLocked):  # another process's lock, for a while: refused only
        return
    if not isinstance(err.__cause__, (TypeError, ValueError, RecursionError)):
        engine.journal_failed(None, err)


def _never_started(engine: Engine, jobs: list[Job], err: JournalError) -> None:
    """Close the ``jobs`` of a :meth:`Job.create_many` whose next records the journal
    refused: their caller gets the error and no id, so they never start; ended
    (``failure``, saying why, with their files) rather than left waiting in the journal
    for good."""
    reason = one_line(
        f"not started: the journal refused the records of the jobs created with it: {err}"
    )
    for job in jobs:
        engine.cycle.finish(job._run, Outcome(State.FAILURE, {}, reason, None, time.time()))
        engine.clean_later(job)  # its .inp/.out files, as any job that ended


class _JobClass(type):
    """Metaclass of :class:`Job`: gives the class attribute ``Job._id_class``."""

    @property
    def _id_class(cls) -> int:
        """The last job id given out (plugins compare ids with it, as in the original)."""
        return _source().last_id()


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
    NOTE_RUNNING_AFTER = NOTE_RUNNING_AFTER

    def __init__(self, name: str = "plugin.Plugin", input_data: Any = None):
        data = parse_input(input_data)
        data["plugin_name"] = name = plugin_name(name)
        engine = making_engine()  # in a Dask task, its server's
        # its record is committed with the next batch (at the latest when it starts or
        # when its id is read: nobody learns the id of a job the journal does not hold)
        try:
            run = engine.create(name, data, later=True)
        except JournalError as err:
            _refused(engine, [data], err)
            raise
        self._face(engine, run)

    # What threading.Thread.__init__ sets, as class attributes (the name is set per job):
    # no thread is made per job, and Thread.__init__ (an Event, the registry of threads)
    # cost as much as the rest of a job's creation.  Thread's own methods still find
    # what they read.
    _target, _args, _kwargs = None, (), {}  # noqa: RUF012 - never written (run() is ours)
    _daemonic, _ident, _native_id = True, None, None
    _tstate_lock, _started, _is_stopped = None, _NEVER_STARTED, False
    _initialized, _stderr, _invoke_excepthook = True, sys.stderr, None

    def _face(self, engine: Engine | None, run: JobRun) -> None:
        self._name = run.plugin_name
        self._engine = engine
        self._run = run
        run.face = weakref.ref(self)

    @classmethod
    def _over(cls, engine: Engine | None, run: JobRun) -> Job:
        """The face of ``run`` (the one that exists, else a new one)."""
        face = run.face() if run.face is not None else None
        if face is None:
            face = cls.__new__(cls)
            face._face(engine, run)
        return face

    @classmethod
    def create_many(cls, name: str, inputs: list[Any], chunk: int = 256) -> list[Job]:
        """Create one job per input (dicts, JSON texts or files), ``chunk`` journal
        records per transaction; all inputs are checked before any job is created."""
        name = plugin_name(name)
        if not isinstance(chunk, int) or chunk < 1:  # -1 created no job, without a word
            raise ValueError(f"chunk must be a whole number of 1 or more, not {chunk!r}")
        datas = parse_inputs(inputs)
        for data in datas:
            data["plugin_name"] = name
        engine = making_engine()
        jobs: list[Job] = []
        with gc_paused():
            for first in range(0, len(datas), chunk):
                try:
                    runs = engine.create_many(name, datas[first : first + chunk])
                except JournalError as err:
                    _never_started(engine, jobs, err)
                    _refused(engine, datas[first : first + chunk], err)
                    raise
                jobs.extend(cls._over(engine, run) for run in runs)
                if first + chunk < len(datas):
                    time.sleep(0)  # between chunks, let other threads reach the journal
        return jobs

    @classmethod
    def live_jobs(cls, engine: Engine | None = None) -> list[Job]:
        """The jobs of ``engine`` (default: the current one) queued or running now."""
        engine = engine or get_engine()
        return [cls._over(engine, run) for run in engine.live()]

    def __repr__(self) -> str:  # the original's text (its plugin may run in another process)
        run = self._run
        if run.state in State.FINAL:
            return (
                f"dahu job (thread) #{run.id} using finished plugin ({run.plugin_name}) {run.state}"
            )
        return f"dahu job (thread) #{run.id} using plugin {run.plugin_name} currently {run.state}"

    # ---- life cycle (performed by the engine) -------------------------------------------
    def start(self) -> None:
        """Queue the job on the engine's executor (it runs when a slot is free)."""
        self._cycle().start(self._run)

    def _cycle(self) -> Any:
        if self._run.cycle is None:
            raise DahuError(f"job {self._run.id} is not a job of this process")
        return self._run.cycle

    def run(self) -> None:
        """Start the job if it was not, and wait for its end (the engine runs it)."""
        if self._run.state == State.UNINITIALIZED:
            self.start()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the job ends (or ``timeout`` seconds).

        Unlike ``Thread.join``, waiting for a job that is not started yet is allowed: it
        waits for it to be started and to end.  Called from another job's plugin or
        callbacks, that job's executor slot is free for others while it waits (no
        deadlock when every slot waits).  From the job's own callbacks it returns at
        once; from its own plugin it raises ``RuntimeError("cannot join current
        thread")``, as the original did.
        """
        if self._run.from_journal and self.status not in State.FINAL:  # another process's
            Job.synchronize_job(self._run.id, timeout)
        self._run.wait(timeout)

    synchronize = join

    def is_alive(self) -> bool:
        """True while the job is queued or running."""
        return self.status in (State.STARTING, State.RUNNING)

    def abort(self, reason: str = "aborted on request") -> bool:
        """Ask the job to stop; True if it was queued or running and is now stopping.

        A running plugin sees ``is_aborted``; the job ends ``aborted``, with teardown and
        callbacks still run.  A job not started or already finished is left unchanged.
        With the thread executor, a plugin that ignores the abort cannot be killed: after
        the executor's grace period its job ends ``aborted`` and the plugin is abandoned
        (it runs on in its thread); the process executor kills its worker instead.  A job
        another process runs is asked of it (:mod:`dahu.engine.aborts`: False after 1.5 s).
        """
        run, reason = self._run, "aborted on request" if reason is None else str(reason)
        if run.cycle is None:  # an ended job, or another process's: asked of it
            if not run.from_journal or run.state in State.FINAL:
                return False
            return abort_elsewhere((self._engine or _source()).journal, run.id, reason)
        return run.cycle.abort(run, reason)  # (None: as no reason, not "not aborted")

    def _refuse(self, reason: str) -> None:
        """End this job, never started, as ``failure`` with ``reason`` (in the journal:
        not left ``uninitialized``) when its id cannot be handed out."""
        self._cycle().finish(self._run, Outcome(State.FAILURE, {}, reason, None, time.time()))

    def connect_callback(self, method: Callable[[Job], Any] | None = None) -> None:
        """Call ``method(job)`` when the job ends (after its outcome is recorded)."""
        if method is not None and callable(method):
            self._run.callbacks.append((method, self))

    def clean(self, force: bool = False, wait: bool = True) -> None:
        """Write ``<workdir>/NNNN/NNNNN_<plugin>.inp/.out`` and free the plugin.

        :param force: force a garbage collection afterwards
        :param wait: wait for the job to finish first (not for a job never started: as in
            the original, nothing is written then)
        """
        if wait and self._run.state != State.UNINITIALIZED:
            self.join()
        run = self._run
        if run.state not in State.FINAL:
            logger.warning("job %s is %s: not cleaned", run.id, run.state)
            return
        if run.cycle is not None:
            run.cycle.clean(run)
        if force:
            gc.collect()

    # ---- properties -----------------------------------------------------------------
    @property
    def id(self) -> int:
        """The job id (an increasing integer), once the journal holds the job's record."""
        run = self._run
        if run.record is not None and self._engine is not None:
            self._engine.settle(run)
        return run.id

    @property
    def plugin(self) -> Any:
        """The plugin instance (None before it runs, after ``clean``, and when it runs in
        another process)."""
        execution = self._run.execution
        return execution.plugin if execution is not None else None

    @property
    def data_on_disk(self) -> str | None:
        """The base path of the job's ``.inp``/``.out`` files once cleaned, else None."""
        run = self._run
        if not (run.cleaned or run.files_written):
            return None
        workdir = self._engine.workdir if self._engine is not None else _source().workdir
        return job_file_stem(workdir, run.id, run.plugin_name)

    @property
    def status(self) -> str:
        """The job state, one of ``Job.STATE`` (another process's: read in the journal)."""
        return settled(self._run, self._engine or _source())

    def _record(self) -> Any:
        source = self._engine if self._engine is not None else _source()
        record = source.journal.get(self._run.id)
        if record is None:
            # pruned since (dahu-jobs prune): no such job now (Dahu_UnknownJob on the device)
            raise UnknownJob(f"job {self._run.id} is missing from the journal")
        return record

    @property
    def input_data(self) -> dict[str, Any]:
        """The job input (with ``plugin_name`` and ``job_id``)."""
        data = self._run.input_data
        return data if data is not None else self._record().input

    @property
    def output_data(self) -> dict[str, Any]:
        """The job output (the plugin's ``output`` dict once it ran)."""
        run = self._run
        data = run.output
        if data is None:
            return self._record().output or {}
        plugin = self.plugin
        if run.state == State.RUNNING and plugin is not None:
            return plugin.output
        return data

    @property
    def error(self) -> str:
        """The error text ("" when none): one line of reason, then the traceback if any."""
        run = self._run
        if run.cleaned and not run.from_journal:
            return self._record().error or ""
        return run.error or ""

    @property
    def runtime(self) -> float | None:
        """Seconds the plugin ran (None until the job ended)."""
        run = self._run
        if run.started is None or run.ended is None:
            return None
        return run.ended - run.started

    def getName(self) -> str:  # noqa: N802 - public API
        """The plugin name of the job."""
        return self._run.plugin_name

    def setName(self, name: str) -> None:  # noqa: N802 - public API
        """Jobs cannot be renamed: their plugin is fixed when they are created."""
        if name != self._run.plugin_name:
            logger.error("job %s: a job cannot be renamed", self._run.id)

    name = property(getName, setName)

    # ---- class-level API --------------------------------------------------------------
    @classmethod
    def _resolve(cls, jobId: Any) -> int:  # noqa: N803
        if not whole_number(jobId):  # 1.5 was job 1, numpy.float32(1.5) too; NaN, inf
            return 0  # no job's id, as in the original (``inexistant``, None)
        job_id = int(jobId)
        if job_id < 0:  # -1 is the last job, as in the original
            job_id = _source().last_id() + 1 + job_id
        return job_id

    @classmethod
    def getJobFromID(cls, jobId: int) -> Job | None:  # noqa: N802,N803
        """Return the job ``jobId`` (rebuilt from the journal if it ended), or None."""
        source = _source()
        job_id = cls._resolve(jobId)
        run = source.find(job_id)
        if run is None:
            record = source.journal.get(job_id, data=False)  # its error, state, times
            if record is None:
                return None
            run = JobRun.from_record(record)
            run.input_data = run.output = None  # read when asked: hundreds of MB maybe
        return cls._over(source if isinstance(source, Engine) else None, run)

    getJobFromId = getJobFromID

    @classmethod
    def getStatusFromID(cls, jobId: int) -> str:  # noqa: N802,N803
        """Return the state of job ``jobId`` (``inexistant`` if there is none)."""
        source = _source()
        job_id = cls._resolve(jobId)
        run = source.find(job_id)
        if run is not None:
            return run.state
        return source.journal.state(job_id) or State.INEXISTANT

    getStatusFromId = getStatusFromID

    @classmethod
    def synchronize_job(cls, jobId: int, timeout: float | None = None) -> str:  # noqa: N803
        """Wait for job ``jobId`` to end (at most ``timeout`` s); return its state."""
        source = _source()
        job_id = cls._resolve(jobId)
        run = source.find(job_id)
        if run is not None:
            run.wait(timeout)
            return run.state
        if isinstance(source, JournalReader) and job_id == current_job_id():
            raise RuntimeError(SELF_JOIN)  # a plugin in a worker process waits for itself
        # Not a job of this process (e.g. a worker waiting for a job of the server, or a
        # second process on the same work directory): follow its record in the journal.
        with released():
            return follow(source.journal, job_id, wait_timeout(timeout))

    @classmethod
    def synchronize_all(cls) -> None:
        """Wait for every job of the process that is queued or running to end, oldest
        first.  From a job's plugin it raises ``RuntimeError("cannot join current
        thread")`` when it comes to that job, as the original did."""
        engine = get_engine()
        waited: set[int] = set()
        while True:
            pending = sorted(
                (run for run in engine.live() if run.id not in waited), key=lambda run: run.id
            )
            if not pending:
                return
            for run in pending:
                waited.add(run.id)  # once each: a job ending unrecorded is not waited again
                run.wait()

    @classmethod
    def cleanJobfromID(cls, jobId: int, forceGC: bool = True) -> str:  # noqa: N802,N803
        """Write the job's ``.inp``/``.out`` files and free its plugin; return a message."""
        source = _source()
        job_id = cls._resolve(jobId)
        run = source.find(job_id)
        if run is None or run.cycle is None:
            record = source.journal.get(job_id, data=False)
            if record is None:  # the id as given, as getErrorFromID says it (not -3 for -5)
                return f"job {_given(jobId)} does not exist"
            if record.state not in State.FINAL:  # another process's, at work: its files later
                return f"job {job_id} is {record.state}: not cleaned"
            if getattr(source, "recovery", None) is not None:  # a start may be writing them
                source.recovery.ensure(job_id)
            if _files_gone(source.workdir, job_id, record.plugin):
                record = source.journal.get(job_id) or record  # deleted: written again
                write_job_files(
                    source.workdir, job_id, record.plugin, record.input, record.output or {}
                )
            return f"job {job_id} cleaned"
        if run.state not in State.FINAL:
            return f"job {job_id} is {run.state}: not cleaned"
        run.cycle.clean(run)
        if forceGC:
            gc.collect()
        if run.files_written and _files_gone(source.workdir, job_id, run.plugin_name):
            record = source.journal.get(job_id)  # a user deleted them: written again
            if record is not None and run.unrecorded is None:
                source.write_files(job_id, record.plugin, record.input, record.output or {})
        return f"job {job_id} cleaned"

    cleanJobfromId = cleanJobfromID

    @classmethod
    def _data(cls, jobId: int, attribute: str, as_JSON: bool) -> Any:  # noqa: N803
        job = cls.getJobFromID(jobId)
        data = getattr(job, attribute) if job is not None else {}
        if not as_JSON:
            return data
        # compact, as the original's text of a job in memory
        try:
            return json.dumps(data, cls=NumpyEncoder, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):  # as text, as the journal has it
            try:
                return json.dumps(jsonable(data), cls=NumpyEncoder, separators=(",", ":"))
            except (ValueError, RecursionError):  # nested too deep: all of it as text
                return json.dumps({"unserializable_output": text_of(data)})

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
        return job.error if job is not None else f"job {_given(jobId)} does not exist"

    getErrorFromId = getErrorFromID

    @classmethod
    def statistics(cls) -> dict[str, Any]:
        """Per-plugin counts and runtimes of this engine's jobs, wall time, speed-up and
        the linear regression of runtime against job order (as a dict)."""
        return get_engine().statistics()

    @classmethod
    def stats(cls) -> str:
        """Return the statistics of this engine's jobs as a text table."""
        return format_statistics(cls.statistics())
