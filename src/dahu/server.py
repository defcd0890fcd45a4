"""The Tango device server ``DahuDS``: a thin translation layer over the core engine.

Clients (BLISS macros, beamline scripts, GUIs) call the commands below; everything about
jobs is done by :mod:`dahu.job` and the engine.  ``docs/server.md`` is the reference.

* Concurrency: synchronous green mode with the Tango serial model ``NO_SYNC``, so each
  request runs at once in its own omniORB thread and a client blocked in ``waitJob``
  never delays another client.  Every command is thread-safe.
* ``waitJob`` waits at most ``wait_timeout`` (default 2 s, below the 3 s default client
  timeout) and returns the state then: a state that is not final means "call again".
* Events (``jobSuccess``/``jobFailure`` per job, ``statisticsCollected``) are pushed by
  one thread inside ``tango.EnsureOmniThread()``; job callbacks only enqueue.
* A job input is a JSON object of at most :data:`MAX_INPUT_CHARS` characters nested at
  most :data:`MAX_DEPTH` levels; every refusal is a ``DevFailed`` with a one-line reason.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from typing import Any

import numpy
import tango
from tango import AttrWriteType, DevLong, DevState, DevVarLongArray
from tango.server import Device, attribute, command, device_property

from . import __version__
from .engine import SHUTDOWN_REASON, nonblocking
from .errors import DahuError, InvalidInput, TryAgain, UnknownJob, one_line, shown_name, tango_line
from .executors import scheduler_address
from .inputs import MAX_BATCH_JOBS, MAX_DEPTH, MAX_INPUT_CHARS, parse_job_input, parse_job_inputs
from .job import Job
from .properties import DEFAULT_RETENTION_INTERVAL, MAX_WAIT_TIMEOUT, PROPERTIES
from .retention import parse_retention
from .server_errors import client_errors, input_answer, job_answer, latin1_text
from .server_events import push_event, ready_when_subscribed, stop_pushing
from .server_plugins import PluginCatalog, plugin_name_given
from .server_settings import (
    EVENTS_LINGER,
    FREEZE_CHECK,
    READS_LINGER,
    STOP_SIGNALS,
    ServerSettings,
    abort_while_serving,
    adopt,
    attach_web,
    configure_engine,
    configure_recycling,
    configure_retention,
    current,
    freeze_batch,
    outcome_read,
    ready_line,
    recording_jobs,
    settings,
    shutdown,
    shutting_down,
)
from .server_status import NO_STATISTICS_YET, statistics_text, status_text
from .server_threads import within
from .states import State
from .utils import compact_json, gc_paused

logger = logging.getLogger(__name__)

__all__ = [
    "DahuDS",
    "DahuDSClass",
    "ServerSettings",
    "settings",
    "shutdown",
    "parse_job_input",
    "MAX_INPUT_CHARS",
    "MAX_BATCH_JOBS",
    "MAX_DEPTH",
    "UnknownJob",
    "TryAgain",
]

INT32_MAX = 2**31 - 1
NO_JOB_YET = -1
"""``jobSuccess``/``jobFailure`` before any job ended in that state, as in the original."""


# ---- the device ----------------------------------------------------------------------
class DahuDS(Device):
    """Data-analysis job server: runs Dahu plugins as jobs, on request of Tango clients."""

    # one device property per entry of dahu.properties.PROPERTIES (the class namespace
    # is a dict: the names are defined here, as if written one by one)
    for _prop in PROPERTIES:
        locals()[_prop.name] = device_property(
            dtype=_prop.dtype, default_value=_prop.default, doc=_prop.doc
        )
    del _prop

    # ---- life cycle --------------------------------------------------------------------
    def init_device(self) -> None:
        """Configure the engine, set up the events and start the event thread; a device
        property of the wrong type at an ``Init`` keeps the settings in force (FAULT)."""
        if hasattr(self, "_name") and current(self) is not self:  # replaced by DevRestart,
            # reached while a command of it still ran: Tango refuses this Init afterwards
            return logger.warning("Init of the device object a DevRestart replaced: ignored")
        self._bad_property = ""
        adopt(self)  # after a DevRestart: what the deleted object knew
        kept = getattr(self, "queue_limit", None)  # in force while the property is bad
        try:
            super().init_device()
            max_workers, timeout, *recycling = settings.numbers(self)  # a negative one: FAULT
            # Requests must not queue behind each other (waitJob blocks its caller only).
            tango.Util.instance().set_serial_model(tango.SerialModel.NO_SYNC)
            workdir = settings.work_directory(self.workdir)
            dirs = [d for d in (self.plugins_directory or []) if d.strip()] + list(settings.plugins)
            self._engine = configure_engine(  # (process: more workers than memory: FAULT)
                workdir,
                max_workers,
                dirs,
                executor=settings.executor or self.executor.strip().lower() or "thread",
                scheduler=scheduler_address(settings.scheduler or self.scheduler),
                timeout=timeout,
            )
        except (tango.DevFailed, ValueError, TypeError) as err:  # PyTango's ValueError
            if not hasattr(self, "_engine"):  # at start: the server refuses to run
                raise
            self.queue_limit = kept
            self._bad_property = one_line(
                tango_line(err) if isinstance(err, tango.DevFailed) else str(err)
            )
            logger.error("Init: %s: the settings in force are kept", self._bad_property)
            return self._start_pusher()
        self._engine.thread_context = tango.EnsureOmniThread  # it pushes the job events
        configure_recycling(self._engine, *recycling)
        self._wait = min(float(self.wait_timeout), MAX_WAIT_TIMEOUT)  # negative, NaN: FAULT
        self._retention_error = ""
        spec = settings.retention if settings.retention is not None else self.retention
        interval = settings.retention_interval or (
            self.retention_interval if self.retention_interval > 0 else DEFAULT_RETENTION_INTERVAL
        )
        try:
            configure_retention(self._engine, parse_retention(spec), interval)
        except DahuError as err:  # keep serving; Status tells why nothing is pruned
            self._retention_error = one_line(str(err))
            logger.error("retention not applied: %s", self._retention_error)
        self._web = attach_web(self._engine, self.http, self.http_token)
        if not hasattr(self, "_last"):  # kept across Init and shared across DevRestart
            self._last = dict(jobSuccess=NO_JOB_YET, jobFailure=NO_JOB_YET, statisticsCollected="")
        self._lock = threading.Lock()
        self._stats_thread: threading.Thread | None = None
        self._plugins_thread: threading.Thread | None = None
        self._plugins_text: str | None = None
        # under process and dask, plugin modules are imported by a helper process only
        self._plugins = PluginCatalog(self._engine.factory, self._engine.executor.isolates_plugins)
        self._start_pusher()
        for signo in STOP_SIGNALS:
            self.register_signal(int(signo), False)  # in the signal thread
        logger.info("%s", ready_line(self.get_name(), __version__, self._engine))

    def _start_pusher(self) -> None:
        if not hasattr(self, "_events"):  # kept across Init: no event is lost
            self._events: queue.SimpleQueue = queue.SimpleQueue()
            self._held: list[tuple[str, Any]] = []  # (Init) pushed once it is made
        for name in ("jobSuccess", "jobFailure", "statisticsCollected"):
            self.set_change_event(name, True, False)
        self._pusher = threading.Thread(target=self._push_events, name="dahu-events", daemon=True)
        self._pusher.start()

    def delete_device(self) -> None:
        """Stop the event thread (jobs keep running: ``Init`` must not lose them).  When
        the server stops, first abort the jobs and push their events (clients hear)."""
        if getattr(self, "_engine", None) and tango.Util.instance().is_svr_shutting_down():
            abort_while_serving(EVENTS_LINGER)  # not done yet: stopped by the admin's Kill
        stop_pushing(self)  # no event is pushed through this object from now on
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            self._events.put(None)
            pusher.join(5.0)
            self._pusher = None

    def signal_handler(self, signo: int) -> None:
        """SIGTERM, SIGINT: the server stops once this returns.  The device still
        answers here: abort the jobs, push their events and answer for a moment more."""
        abort_while_serving(READS_LINGER)

    def _push_events(self) -> None:
        """Push the events of the device's other threads (job events: the files thread)."""
        with tango.EnsureOmniThread():
            ready_when_subscribed(self, getattr(self, "_replaced", False))
            while True:
                item = self._events.get()
                if item is None:
                    return
                self._push(*item)

    @nonblocking
    def _job_ended(self, job: Job) -> None:
        """Job callback: record the id; the engine's files thread writes its files, then
        pushes its event (the engine tells the web page itself)."""
        job_id = job.id
        device = current(self)  # a DevRestart may have replaced self
        name = "jobSuccess" if job.status == State.SUCCESS else "jobFailure"
        self._last[name] = job_id  # the one dict of every object that served the device
        device._engine.clean_later(job, functools.partial(device._push, name, job_id))

    def _push(self, name: str, value: Any) -> None:
        """Push a change event of ``name`` (held while the device is being made)."""
        push_event(self, name, value)

    # ---- state -------------------------------------------------------------------------
    def dev_state(self) -> DevState:
        """FAULT if the journal cannot be written, ALARM if more than ``queue_limit`` jobs
        are queued, RUNNING while jobs are queued or running, else ON."""
        engine = self._engine
        if engine.journal_fault or self._bad_property:
            return DevState.FAULT
        counts = engine.executor.counts()
        if counts["queued"] > self.queue_limit:
            return DevState.ALARM
        if counts["queued"] or counts["running"] or counts.get("waiting"):
            return DevState.RUNNING
        return DevState.ON

    def dev_status(self) -> str:
        """The work directory, the web page, the reason of ALARM or FAULT, the retention
        in force, and the job counters."""
        faults = (self._bad_property, self._retention_error)
        return latin1_text(status_text(self._engine, self._web, self.queue_limit, *faults))

    # ---- jobs ----------------------------------------------------------------------------
    def _plugin(self, name: Any) -> str:
        if shutting_down():
            raise DahuError(f"{SHUTDOWN_REASON}: it takes no new job")
        name = plugin_name_given(name)
        # UnknownPlugin (one-line reason) if no plugin directory has its module; the
        # module is imported where the job runs (never here: a client must not wait
        # for, nor the server suffer from, a plugin module's import)
        self._engine.factory.locate(name)
        return name

    def _submit(self, job: Job) -> int:
        job_id = job.id  # its record is committed first (a journal error refuses it)
        job.connect_callback(self._job_ended)
        job.start()
        return job_id

    def _beyond_devlong(self, jobs: list[Job]) -> DahuError:
        """The refusal of ``jobs`` whose ids do not all fit a DevLong; they end failed."""
        ids = f"id {jobs[0].id} does" if len(jobs) == 1 else f"ids {jobs[0].id} to {jobs[-1].id} do"
        reason = f"job {ids} not fit a DevLong (at most {INT32_MAX}): start a new work directory"
        for job in jobs:
            job._refuse(reason)
        return DahuError(reason)

    def _job(self, job_id: int) -> Job:
        job = Job.getJobFromID(job_id)
        if job is None:
            raise self._unknown(job_id)
        return job

    def _unknown(self, job_id: int) -> UnknownJob:
        return UnknownJob(self._engine.no_such_job(job_id))

    @command(
        dtype_in=(str,),
        dtype_out=DevLong,
        doc_in="[plugin name, job input as a JSON object]",
        doc_out="the job id",
    )
    @client_errors
    def startJob(self, argin: list[str]) -> int:  # noqa: N802 - Tango interface
        """Create a job and queue it; return its id."""
        if len(argin) != 2:
            raise InvalidInput(
                f"startJob expects [plugin name, JSON object], got {len(argin)} string(s)"
            )
        name = self._plugin(argin[0])
        job_input = parse_job_input(argin[1])
        with recording_jobs():  # a stop that begins meanwhile waits
            job = Job(name, job_input)
            if job.id > INT32_MAX:
                raise self._beyond_devlong([job])
            if job.id % FREEZE_CHECK == 0:  # a queue filled job by job: as a large batch
                freeze_batch(self._engine, self._engine.executor.counts()["queued"])
            return self._submit(job)

    @command(
        dtype_in=(str,),
        dtype_out=DevVarLongArray,
        doc_in="[plugin name, JSON array of job inputs (objects)]",
        doc_out="the job ids, in the order of the inputs",
    )
    @client_errors
    def startJobs(self, argin: list[str]) -> numpy.ndarray:  # noqa: N802
        """Create and queue one job per input of a JSON array; return their ids."""
        if len(argin) != 2:
            raise InvalidInput(
                f"startJobs expects [plugin name, JSON array of objects], "
                f"got {len(argin)} string(s)"
            )
        name = self._plugin(argin[0])
        with gc_paused(), recording_jobs():  # a stop that begins meanwhile waits
            jobs = Job.create_many(name, parse_job_inputs(argin[1]))
            if jobs and jobs[-1].id > INT32_MAX:
                raise self._beyond_devlong(jobs)
            ids = numpy.fromiter((self._submit(job) for job in jobs), numpy.int32, len(jobs))
            freeze_batch(self._engine, len(jobs))
        return ids

    @command(dtype_in=DevLong, dtype_out=bool, doc_in="job id", doc_out="True if it is stopping")
    @client_errors
    def abort(self, job_id: int) -> bool:
        """Ask a job to stop: True when it was queued or running and is now stopping."""
        return self._job(job_id).abort("aborted by a client")

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="the job state")
    @client_errors
    def getJobState(self, job_id: int) -> str:  # noqa: N802
        """The state of a job: uninitialized, starting, running, success, failure, aborted."""
        state = Job.getStatusFromID(job_id)
        if state == State.INEXISTANT:
            raise self._unknown(job_id)
        outcome_read(job_id, final=False)  # (read next: its error or output)
        return state

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="the job state")
    @client_errors
    def waitJob(self, job_id: int) -> str:  # noqa: N802
        """Wait for a job to end, at most ``wait_timeout`` s; return its state then.

        A state that is not final (``starting``, ``running``) means it timed out: call again.
        """
        state = Job.synchronize_job(job_id, self._wait)
        if state == State.INEXISTANT:
            raise self._unknown(job_id)
        return state

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="the output, JSON")
    @client_errors
    def getJobOutput(self, job_id: int) -> str:  # noqa: N802
        """The output of a job as a JSON object ({} while it has none)."""
        if (wanted := job_id) < 0 and (job_id := Job._resolve(wanted)) < 1:
            raise self._unknown(wanted)  # counted from the last job once only
        outcome_read(job_id)

        def text() -> str:  # as the journal records it
            return self._engine.output_text(job_id) or compact_json(self._job(job_id).output_data)

        return job_answer(text, "output", job_id, self._engine)

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="the input, JSON")
    @client_errors
    def getJobInput(self, job_id: int) -> str:  # noqa: N802
        """The input of a job as a JSON object (with ``plugin_name`` and ``job_id``)."""
        return input_answer(self._job(job_id), self._engine)

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="the error text")
    @client_errors
    def getJobError(self, job_id: int) -> str:  # noqa: N802
        """The error of a job: one line of reason, then the traceback ("" if none)."""
        outcome_read(job_id)  # (a stopping server answers while its clients read)
        return self._job(job_id).error

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="JSON object")
    @client_errors
    def getJobInfo(self, job_id: int) -> str:  # noqa: N802
        """What the journal knows of a job besides its input and output, as JSON: id,
        plugin, state, submitted/started/ended (epoch seconds), runtime (s), the first line
        of its error, and provenance (host, pid, Dahu version, plugin module and version)."""
        info = self._engine.info(Job._resolve(job_id))
        if info is None:
            raise self._unknown(job_id)
        return json.dumps(info)

    @command(dtype_in=DevLong, dtype_out=str, doc_in="job id", doc_out="what was done")
    @client_errors
    def cleanJob(self, job_id: int) -> str:  # noqa: N802
        """Write the job's .inp/.out files and free its memory (done anyway when it ends)."""
        self._job(job_id)
        return Job.cleanJobfromID(job_id, forceGC=False)

    @command(dtype_in=str, dtype_out=str, doc_in="plugin name", doc_out="what happened")
    @client_errors
    def initPlugin(self, name: str) -> str:  # noqa: N802
        """Load a plugin; return its docstring, or why it cannot be loaded.  A module
        slower to import than ``wait_timeout``: ``Dahu_TryAgain``, as for listPlugins."""
        name = plugin_name_given(name)  # "" refused as startJob refuses it
        busy = f"plugin {shown_name(name)} is still loading: call initPlugin again"
        return within(max(self._wait, 0.1), lambda: self._plugins.init_text(name), busy)

    @command(dtype_out=str, doc_out="one line per plugin: name: first line of its doc")
    @client_errors
    def listPlugins(self) -> str:  # noqa: N802
        """Every plugin of the plugin directories, with the first line of its doc.

        Loading every module may take long: past ``wait_timeout`` the command fails with
        reason ``Dahu_TryAgain`` ("still loading") and a later call gets the list.
        """
        with self._lock:
            thread = self._plugins_thread
            if thread is None or (not thread.is_alive() and self._plugins_text is not None):
                self._plugins_text = None
                thread = threading.Thread(
                    target=self._list_plugins, name="dahu-plugins", daemon=True
                )
                self._plugins_thread = thread
                thread.start()
        thread.join(self._wait)
        text = self._plugins_text
        if thread.is_alive() or text is None:
            raise TryAgain("plugin modules are still loading: call listPlugins again")
        return text

    def _list_plugins(self) -> None:
        self._plugins_text = self._plugins.listing()

    # ---- statistics ------------------------------------------------------------------------
    @command(doc_in="none: collects in the background, then pushes statisticsCollected")
    @client_errors
    def collectStatistics(self) -> None:  # noqa: N802
        """Collect statistics on this server's jobs in the background; when done,
        ``statisticsCollected`` is updated and its change event pushed."""
        with self._lock:
            if self._stats_thread is not None and self._stats_thread.is_alive():
                return
            thread = threading.Thread(
                target=self._collect_statistics, name="dahu-statistics", daemon=True
            )
            thread.start()  # then shown: getStatistics joins it without the lock
            self._stats_thread = thread

    def _collect_statistics(self) -> None:
        self._last["statisticsCollected"] = text = statistics_text()  # shared by its objects
        self._events.put(("statisticsCollected", text))

    @command(dtype_out=str, doc_out="the statistics, as a text table")
    @client_errors
    def getStatistics(self) -> str:  # noqa: N802
        """The last statistics collected (collected now if none was)."""
        thread = self._stats_thread
        if thread is not None:
            thread.join(self._wait)
        if not self._last["statisticsCollected"]:
            self._collect_statistics()
        return self._last["statisticsCollected"]

    # ---- attributes ------------------------------------------------------------------------
    @attribute(dtype=DevLong)
    def jobSuccess(self) -> int:  # noqa: N802
        """Id of the last job that ended in success."""
        return self._last["jobSuccess"]

    @attribute(dtype=DevLong)
    def jobFailure(self) -> int:  # noqa: N802
        """Id of the last job that ended in failure or was aborted."""
        return self._last["jobFailure"]

    @attribute(dtype=str)
    def journalId(self) -> str:  # noqa: N802
        """A token of the journal the job ids come from: another token, other jobs."""
        return self._engine.journal.identity

    @attribute(dtype=str)
    def statisticsCollected(self) -> str:  # noqa: N802
        """The last statistics collected by collectStatistics (the original's text until
        then)."""
        return self._last["statisticsCollected"] or NO_STATISTICS_YET

    @attribute(dtype=bool, access=AttrWriteType.READ_WRITE)
    def serialize(self) -> bool:
        """When true, jobs run one at a time."""
        return bool(self._engine.executor.serialize)

    @serialize.write
    def serialize(self, value: bool) -> None:
        """Run jobs one at a time (true) or up to the number of slots (false)."""
        logger.info("serialize set to %s", bool(value))
        executor = self._engine.executor
        executor.serialize = bool(value)

    @attribute(dtype=DevLong)
    def jobsQueued(self) -> int:  # noqa: N802
        """Jobs waiting for a free slot."""
        return self._engine.executor.counts()["queued"]

    @attribute(dtype=DevLong)
    def jobsRunning(self) -> int:  # noqa: N802
        """Jobs running (including those waiting for another job)."""
        counts = self._engine.executor.counts()
        return counts["running"] + counts.get("waiting", 0)

    @attribute(dtype=DevLong)
    def jobsFinished(self) -> int:  # noqa: N802
        """Jobs ended since the server started."""
        return self._engine.counts()["finished"]

    @attribute(dtype=DevLong)
    def jobsSucceeded(self) -> int:  # noqa: N802
        """Jobs ended in success since the server started."""
        return self._engine.counts()["success"]

    @attribute(dtype=DevLong)
    def jobsFailed(self) -> int:  # noqa: N802
        """Jobs ended in failure since the server started."""
        return self._engine.counts()["failure"]

    @attribute(dtype=DevLong)
    def jobsAborted(self) -> int:  # noqa: N802
        """Jobs aborted since the server started."""
        return self._engine.counts()["aborted"]


# the original's name: its launchers, Util.add_class(DahuDSClass, DahuDS, "DahuDS"), run
DahuDSClass = DahuDS.TangoClassClass
