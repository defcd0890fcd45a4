"""The engine: the job table, the life cycle, the journal, the executor and the work
directory that the jobs of a process share.

One engine is current per process.  It is made on first use from the environment
(``DAHU_WORKDIR``, see :func:`dahu.journal.default_workdir`) or explicitly with
:func:`configure` (the server and ``dahu-reprocess`` do).  Opening an engine on a work
directory closes, as ``failure``/``interrupted``, the jobs that a dead process left
unfinished there (writes their files: :mod:`.recovery`; later deaths: :mod:`.orphans`)."""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from ..errors import DahuError, JournalError, one_line
from ..executors import Watchdog, make_executor_with
from ..executors.thread import option_number
from ..factory import Factory, plugin_factory
from ..journal import Journal, SQLiteJournal
from ..journal.base import encode_output, storable_id
from ..states import State
from ..statistics import RunningStatistics
from ..utils import compact_json
from .aborts import take_asked
from .lifecycle import NOTE_RUNNING_AFTER, JobRun, LifeCycle
from .orphans import recover_and_watch
from .refusals import write_files
from .stopping import close, shut_down, wait_at_exit
from .table import DROP_AFTER, DROP_WAVE, JobTable, drop_later

logger = logging.getLogger(__name__)
NO_LIMIT = "None or 0: no limit"

JOURNAL_RETRY = 10.0
"""Seconds between two tries to give the journal the outcomes it refused (disk full...)."""

CLOSED = "the engine is shut down: it takes no new job (dahu.engine.configure makes one)"

__all__ = ["Engine", "configure", "get_engine", "activate"]


class Engine:
    """Holds what every job of the process shares, and owns the jobs while they live.

    :param workdir: the stable work directory (journal, files); not blank (``ValueError``)
    :param journal: a journal; default a :class:`~dahu.journal.SQLiteJournal` in ``workdir``
    :param executor: where plugins run; default a :class:`~dahu.executors.ThreadExecutor`
    :param max_workers: slots of the executor (None or 0: the number of CPUs; a negative
        or fractional number is a ``ValueError``)
    :param executor_kind: ``thread`` (default), ``process`` or ``dask`` when no executor
        is given; ``executor_options`` go to its constructor
    :param default_timeout: seconds after which a running job is aborted as timed out
        (None or 0: no limit; not a number, or a negative one: ``ValueError``); a plugin's
        ``JOB_TIMEOUT`` or the input key ``job_timeout`` override it
    :param recover: close the unfinished jobs of dead processes as ``interrupted``
    :param batch_outcomes: let the outcome of a job that ends while others wait for a
        slot wait for theirs to share a commit (at most 32 of them, 2 ms): for batch
        work such as ``dahu-reprocess`` (10,000 jobs: about 10% less time); a server
        answering clients keeps it off (with it, ``startJobs`` bursts through the device
        ran slower, their commits and reports moved to the timer's thread)
    """

    def __init__(
        self,
        workdir: str | None = None,
        journal: Journal | None = None,
        executor: Any = None,
        max_workers: int | None = None,
        factory: Factory = plugin_factory,
        executor_kind: str = "thread",
        executor_options: dict[str, Any] | None = None,
        default_timeout: float | None = None,
        recover: bool = True,
        batch_outcomes: bool = False,
    ):
        if isinstance(workdir, str) and not workdir.strip():  # os.environ.get("DIR", "")
            raise ValueError(f"workdir must name a directory (None: the default), not {workdir!r}")
        timeout = option_number("default_timeout", default_timeout, "seconds", NO_LIMIT)
        if isinstance(executor, str):  # executor="process": executor_kind's, a name
            raise TypeError(f"executor takes an executor, not a name: executor_kind={executor!r}")
        if executor is None:  # first: a bad option leaves the journal untouched
            executor = make_executor_with(executor_kind, max_workers, executor_options)
        self.journal = journal if journal is not None else SQLiteJournal(workdir)
        self.workdir = os.path.abspath(
            workdir or getattr(self.journal, "workdir", None) or os.getcwd()
        )
        self.interrupted = self.journal.mark_interrupted() if recover else []
        self.first_id = self.journal.last_id() + 1
        self.factory = factory
        self.default_timeout = timeout
        self.batch_outcomes = batch_outcomes
        self.watchdog = Watchdog()
        if hasattr(self.journal, "drain_some"):  # a client's command never commits for long
            drain = self.journal.drain_some
            self.journal.hand_off = lambda: self.watchdog.call_later(0.0, drain)
        self.table = JobTable()
        self.cycle = LifeCycle(self)
        self.journal_fault: str | None = None
        self._faults = 0  # journal writes refused so far (a retry clears only what it saw)
        self.files_failed = 0  # jobs whose .inp/.out files could not be written
        self._retry_armed = False
        self._retry_lock = threading.Lock()
        self._lock = threading.Lock()
        self.finished = {State.SUCCESS: 0, State.FAILURE: 0, State.ABORTED: 0}
        self.stats = RunningStatistics()
        self._to_clean: queue.SimpleQueue = queue.SimpleQueue()
        self._unwritten: collections.deque[float] = collections.deque()  # end times, FIFO
        self._cleaner: threading.Thread | None = None
        #: the plugins of the jobs the files thread ended, for :func:`.table.drop_later`
        self.dropping: list[list] = []
        #: the files thread's context manager factory (the device's: EnsureOmniThread)
        self.thread_context: Callable[[], Any] | None = None
        self.on_finished: Callable[[JobRun], Any] | None = None  # told of each ended job
        self._sweeping = self._closed = False
        self.executor = executor
        if hasattr(executor, "attach"):
            executor.attach(self)
        # the files a dead process left unwritten, in a thread; then those that die (.orphans)
        self.recovery = recover_and_watch(self) if recover else None
        wait_at_exit(self)  # a script that ends with jobs started: they run to their end

    @property
    def recovered(self) -> int:
        """How many jobs got the files a dead process left unwritten, so far (all of
        them once :meth:`wait_recovered` returns True)."""
        return self.recovery.written if self.recovery is not None else 0

    def wait_recovered(self, timeout: float | None = None) -> bool:
        """Wait until the files a dead process left unwritten are written (the stop waits
        for it too); True if they are."""
        return self.recovery is None or self.recovery.wait(timeout)

    # ---- jobs ---------------------------------------------------------------------------
    def create(self, plugin: str, input_data: dict[str, Any], later: bool = False) -> JobRun:
        """Record a new job in the journal and keep it live.  With ``later``, its record
        is queued and committed with the next batch (at the latest when the job starts,
        or when its id is asked for: :meth:`settle`)."""
        self._refuse_if_closed()
        token = None
        if later:

            def created(error: BaseException | None) -> None:
                if error is not None:
                    self.journal_failed(job_id, error)

            job_id, token = self.journal.create_later(created, plugin, input_data, time.time())
        else:
            job_id = self.journal.create(plugin, input_data, time.time())
        self.stats.created(plugin)
        input_data["job_id"] = job_id
        run = JobRun(self.cycle, job_id, plugin, input_data)
        run.record = token
        self.table.add(run)
        return run

    def _refuse_if_closed(self) -> None:
        if self._closed:  # its journal is closed: no record could be written
            raise DahuError(CLOSED)

    def settle(self, run: JobRun) -> None:
        """Return once the journal holds the record of ``run`` (see :meth:`create`)."""
        token = run.record
        if token is not None:
            try:
                self.journal.settle(token)
            except JournalError:
                if run.state == State.UNINITIALIZED:
                    self.table.forget(run)  # not recorded, never started: no such job
                raise
            finally:
                run.record = None

    def create_many(self, plugin: str, inputs: list[dict[str, Any]]) -> list[JobRun]:
        """Record several jobs in one journal transaction; keep them live."""
        self._refuse_if_closed()
        ids = self.journal.create_many(plugin, inputs, time.time())
        self.stats.created(plugin, len(ids))
        runs = []
        for job_id, data in zip(ids, inputs, strict=True):
            data["job_id"] = job_id
            run = JobRun(self.cycle, job_id, plugin, data)
            self.table.add(run)
            runs.append(run)
        return runs

    def output_text(self, job_id: int) -> str | None:
        """A job's output as JSON text, as the journal records it: the journal's own text
        (no decoding) once the job is out of memory, the same encoding while it is in
        memory (an output JSON cannot hold becomes its ``repr``: plugin data never makes
        this raise).  None if the job is unknown or has no output yet."""
        run = self.table.find(job_id)
        if run is None or run.output is None:  # not in memory, or cleaned: freed
            return self.journal.output_text(job_id)
        return encode_output(run.output, None)[0]

    def input_text(self, job_id: int, data: Any) -> str:
        """``data``, the input of job ``job_id``, as JSON text; the input the journal
        recorded if a plugin added to it what JSON cannot hold."""
        try:
            return compact_json(data)
        except Exception:  # e.g. an object, an int of over 4,300 digits
            record = self.journal.get(job_id)
            return compact_json(record.input if record is not None else {})

    def info(self, job_id: int) -> dict[str, Any] | None:
        """What the journal knows of a job besides its input and output (the live state
        wins; the first line of its error; a damaged field is null); None if the job is unknown."""
        # without its input and output (300 MB: not read); a damaged row: named, not raised
        found = self.journal.select(job_id, job_id, data=False) if storable_id(job_id) else ()
        record = next(iter(found), None)
        if record is None:
            return None
        run = self.table.find(job_id)
        return {
            "id": record.id,
            "plugin": record.plugin,
            "state": run.state if run is not None else record.state,
            "submitted": record.submitted,
            "started": record.started or (run.started if run is not None else None),
            "ended": record.ended,
            "runtime": record.runtime,
            "error": one_line(record.error or ""),
            "host": record.host,
            "pid": record.pid,
            "version": record.version,
            "module_file": record.module_file,
            "plugin_version": record.plugin_version,
        }

    def last_id(self) -> int:
        """The id of the newest job in the journal (``-1``; see ``Journal.newest_id``)."""
        return self.journal.newest_id()

    def no_such_job(self, job_id: int) -> str:
        """Why ``job_id`` cannot be read, in one line (for a client's error)."""
        last = self.journal.last_id()
        if not last:
            return f"no job {job_id}: the journal has no job yet"
        if 1 <= job_id <= last:  # an id below the last one: pruned, or skipped by a crash
            return f"no job {job_id}: it is no longer in the journal (pruned) or was never given"
        return f"no job {job_id}: job ids run from 1 to {last}"

    def find(self, job_id: int) -> JobRun | None:
        """The run of ``job_id`` if it is in memory (live, or ended and referenced)."""
        return self.table.find(job_id)

    def live(self) -> list[JobRun]:
        """The jobs queued or running now."""
        return [run for run in self.table.live() if run.is_alive()]

    def abort_all(self, runs: list[JobRun], reason: str) -> int:
        """Abort ``runs`` (from :meth:`live`), the queued first, newest first: the pool
        takes the oldest, and each running job aborted frees a slot for the next one.
        Return how many were still queued or running (and not being aborted already)."""
        order = sorted(runs, key=lambda run: (run.state != State.STARTING, -run.id))
        live = [run for run in order if run.state not in State.FINAL and not run.abort_reason]
        return sum(self.cycle.abort(run, reason, quiet=True) for run in live)  # (a slot's too)

    def journal_failed(self, job_id: int | None, err: BaseException) -> None:
        """The journal refused a write: the engine is at fault (the server's state says
        FAULT), keeps in memory the jobs whose outcome it refused, and tries again every
        :data:`JOURNAL_RETRY` seconds (:meth:`retry_journal`)."""
        with self._lock:
            self.journal_fault = str(err) or type(err).__name__
            self._faults += 1
        if isinstance(err, JournalError):
            logger.error("%s%s", "" if job_id is None else f"job {job_id}: ", err)
        else:
            logger.exception("job %s: the journal failed", job_id)
        self._arm_retry()

    def _arm_retry(self) -> None:
        """Have :meth:`_retry_soon` run in :data:`JOURNAL_RETRY` s (once at a time; not
        once the engine is closed)."""
        with self._lock:
            arm = not self._retry_armed and not self._closed
            self._retry_armed = self._retry_armed or arm
        if arm:
            self.watchdog.call_later(JOURNAL_RETRY, self._retry_soon)

    def _retry_soon(self) -> None:
        """The watchdog's turn: retry, and come back later while the journal refuses."""
        with self._lock:
            self._retry_armed = False
        try:
            ok = self.retry_journal()
        except Exception:  # a journal backend's bug must not stop the watchdog
            logger.exception("journal: the retry failed")
            ok = False
        if not ok:
            self._arm_retry()

    def retry_journal(self) -> bool:
        """Give the journal the outcomes it refused, oldest first, and clear the fault
        if it takes them all and a test write; True if the journal is not at fault
        (then) any more.  Runs by itself every :data:`JOURNAL_RETRY` seconds while at
        fault; the device's ``Init`` and :meth:`close` call it too."""
        with self._retry_lock:
            if self.journal_fault is None:
                return True
            faults = self._faults
            late = 0
            try:
                for run in self.table.unrecorded():
                    if run.unrecorded is not None:
                        self.journal.finish(*run.unrecorded)
                        run.unrecorded = None
                        late += 1
                    self.table.recorded(run)
                    with self.cycle.files_lock:  # as LifeCycle.clean: written once
                        if not run.files_written:
                            run.files_written = self.write_files(
                                run.id, run.plugin_name, run.input_data, run.output
                            )
                self.journal.probe()
            except Exception as err:
                logger.warning(
                    "journal still at fault (%d late outcome(s) recorded): %s",
                    late,
                    one_line(str(err) or type(err).__name__),
                )
                return False
            with self._lock:
                if self._faults == faults:  # no write refused meanwhile
                    self.journal_fault = None
            logger.warning(
                "journal writable again: %d outcome(s) it had refused are recorded", late
            )
            return self.journal_fault is None

    def write_files(self, job_id: int, plugin: str, input_data: Any, output: Any) -> bool:
        """Write a job's ``.inp``/``.out`` files; False (logged once: .refusals) if not."""
        return write_files(self, job_id, plugin, input_data, output)

    def watch_running(self) -> None:
        """Start (once) the sweep: every :data:`~.lifecycle.NOTE_RUNNING_AFTER` s the jobs
        running since that long are written ``running`` (readers in other processes see
        them), the journal's file is checked (put back if the work directory was
        deleted) and the aborts other processes ask are taken (:mod:`.aborts`)."""
        if self._sweeping:
            return
        with self._lock:
            if self._sweeping:
                return
            self._sweeping = True
        period = NOTE_RUNNING_AFTER

        def sweep() -> None:
            now, live = time.time(), self.live()
            for run in live:
                started = run.started
                if started is not None and now - started >= period:
                    self.cycle.note_running(run)
            take_asked(self, live)  # the aborts other processes ask of its jobs
            if self.journal_fault is None:  # at fault: the retry's probe checks it
                try:
                    self.journal.check_file()
                except JournalError as err:
                    self.journal_failed(None, err)
            if not self._closed:
                self.watchdog.call_later(period, sweep)

        self.watchdog.call_later(period, sweep)

    def clean_later(self, job: Any, announce: Callable[[], Any] | None = None) -> None:
        """Call ``job.clean(wait=False)`` in a background thread: write the ended job's
        ``.inp``/``.out`` files and free its data; then ``announce()``, if given, there
        (the device pushes the job's event: a client told a job ended finds its files).

        Two files may take a millisecond on a busy disk: done there, they delay neither
        the job's end nor its event (the journal already holds the outcome)."""
        with self._lock:
            if self._cleaner is None:  # known once started: shutdown joins it unlocked
                cleaner = threading.Thread(target=self._clean_jobs, name="dahu-files", daemon=True)
                cleaner.start()
                self._cleaner = cleaner
            run = getattr(job, "_run", None)  # the job's run: its end time, if known
            self._unwritten.append(getattr(run, "ended", None) or time.time())
            # queued under the same lock: the files thread takes the jobs in the order
            # of _unwritten, so its popleft() removes the written job's own end time
            self._to_clean.put((job, announce))

    def files_settled(self) -> float:
        """A time (epoch s) before which every job that ended has its ``.inp``/``.out``
        files written by :meth:`clean_later`: now when none is waiting for the writer.
        The retention prunes only such jobs, so that no file is written after its job's
        record is gone (none while the start writes those a dead process left)."""
        if not self.wait_recovered(0):  # those of jobs that ended before the start
            return 0.0
        with self._lock:
            return min(self._unwritten) if self._unwritten else time.time()

    def flush_files(self, timeout: float | None = None) -> bool:
        """Wait until the files of the jobs given to :meth:`clean_later` are written;
        True if they are (False: ``timeout`` s passed)."""
        if self._cleaner is None:
            return True
        marker = threading.Event()
        self._to_clean.put(marker)
        return marker.wait(timeout)

    def _clean_jobs(self) -> None:
        context = self.thread_context() if self.thread_context is not None else nullcontext()
        with context:
            while True:
                try:  # the plugins of the jobs it ended go to the dropping thread once it
                    item = self._to_clean.get(timeout=DROP_AFTER if self.dropping else None)
                except queue.Empty:  # has had nothing to do for a while, or DROP_WAVE at
                    item = ()  # a time: not a wake of that thread per job
                if item == () or item is None or len(self.dropping) >= DROP_WAVE:
                    drop_later(self.dropping)
                    self.dropping = []
                if item is None:
                    return
                if isinstance(item, threading.Event):  # flush_files: all before it written
                    item.set()
                elif item:  # a job (not the () of a wait that timed out)
                    self._clean_one(*item)

    def _clean_one(self, job: Any, announce: Callable[[], Any] | None) -> None:
        """Write the job's files, then announce it (see :meth:`clean_later`)."""
        try:
            job.clean(wait=False)
        except Exception:
            logger.exception("job %s: cannot write its files", job.id)
        finally:
            with self._lock:
                self._unwritten.popleft()
        if announce is not None:
            try:
                announce()
            except Exception:
                logger.exception("job %s: its announcement failed", job.id)

    def shutdown(
        self, abort: bool = True, timeout: float = 30.0, since: float | None = None
    ) -> bool:
        """Stop: abort (or let finish) the jobs queued or running, wait at most ``timeout``
        s from ``since`` (a ``time.monotonic()``; default now) for their outcome to be recorded
        and files written, stop the executor and close the journal.  True if every job
        ended in time and the journal holds every outcome (see :meth:`retry_journal`).

        From the moment it begins (``abort=False``: once no job is left, or the time is
        up), ``Job.start`` raises ``DahuError`` and ends its job ``aborted`` (the stop's
        reason) without running it: every job the stop waits for is known to it, and
        every outcome is recorded before the journal closes."""
        return shut_down(self, abort, timeout, since)

    def count_finished(self, run: JobRun) -> None:
        """Count one job ended (its state and times in the statistics, the web page's)."""
        with self._lock:
            self.finished[run.state] = self.finished.get(run.state, 0) + 1
        self.stats.ended(run.plugin_name, run.state, run.started, run.ended)
        if self.on_finished is not None:  # every job: a plugin's too, not only a client's
            self.on_finished(run)

    def statistics(self) -> dict[str, Any]:
        """The statistics of this engine's jobs (see :func:`dahu.statistics.aggregate`),
        kept up to date as jobs end: no scan of the journal."""
        unfinished: dict[str, dict[str, int]] = {}
        for run in self.table.live():
            states = unfinished.setdefault(run.plugin_name, {})
            states[run.state] = states.get(run.state, 0) + 1
        return self.stats.summary(unfinished)

    def counts(self) -> dict[str, int]:
        """Jobs queued, running and finished (per final state) since the engine started."""
        counts = dict(self.executor.counts())
        with self._lock:
            counts.update(self.finished)
        counts["finished"] = sum(self.finished.values())
        return counts

    def close(self, timeout: float | None = 30.0) -> int:
        """Stop the executor (waiting for its jobs), wait for the jobs' files, and for
        the files a dead process left unwritten at most ``timeout`` s more (None: all;
        the next start writes the rest), and close the journal; return how many outcomes
        the journal refused to the end (lost: see :meth:`retry_journal`), 0 when it holds
        them all.  A job starting meanwhile ends aborted, ``the engine is closing``."""
        return close(self, timeout)


_current: Engine | None = None
_current_lock = threading.Lock()


def get_engine() -> Engine:
    """Return the process's engine, making the default one on first use."""
    global _current
    engine = _current
    if engine is None:
        with _current_lock:
            if _current is None:
                _current = Engine()
            engine = _current
    return engine


def configure(**kwargs: Any) -> Engine:
    """Make a new engine (arguments as :class:`Engine`) the process's current one.

    Jobs of a previous engine keep their journal; new jobs use the new one.
    """
    return activate(Engine(**kwargs))


def activate(engine: Engine) -> Engine:
    """Make ``engine`` (made earlier) the process's current one again."""
    global _current
    with _current_lock:
        _current = engine
    return engine
