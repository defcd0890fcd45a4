"""The life cycle of a job: every state transition, in one place.

::

    uninitialized ──start──▶ starting ──begin──▶ running ──finish──▶ success | failure | aborted
                                │                   │
                                └──abort (queued)───┴──abort/timeout──▶ aborted
                                                    └──abort ignored past the grace──▶ aborted (abandoned)

A job of a process that died is closed by the journal as ``failure``/``interrupted``.
:class:`JobRun` holds the state of one job while it lives in this process; it is what the
executors receive (the :class:`~dahu.executors.base.Task` interface: ``begin``,
``plugin_loaded``, ``finish``).  :class:`LifeCycle` performs the transitions: it records
them in the journal, arms the job's clock, runs the callbacks and wakes the waiters.
``dahu.job.Job`` is only a face over a :class:`JobRun`.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import DahuError, JournalError, error_line, one_line
from ..executors.runner import Outcome
from ..executors.slot import SELF_JOIN, released, serves
from ..journal.base import JobRecord
from ..states import State
from ..utils import get_isotime, not_seconds, seconds, utf8_text, wait_timeout
from .flag import Signal

logger = logging.getLogger(__name__)

__all__ = ["JobRun", "LifeCycle", "NOTE_RUNNING_AFTER", "nonblocking"]


def nonblocking(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a job callback as one that returns at once: it queues work elsewhere, never
    waits for a job, and takes no lock that code reading or writing jobs may hold.

    A job whose callbacks are all so marked does not hold its thread until its outcome
    is committed: the job is reported (callbacks, waiters) by whichever thread commits
    the outcome, possibly one that was reading the journal."""
    method.dahu_nonblocking = True  # type: ignore[attr-defined]
    return method


NOTE_RUNNING_AFTER = 0.5
"""Seconds after which a running job is recorded as ``running`` in the journal (at most
twice that): short jobs cost one journal write less; other processes see long ones."""

SHUTDOWN_REASON = "the server is shutting down"
"""The error of the jobs a stopping server or engine aborts."""

LOADING_AT_LEAST = 60.0
"""Seconds the engine's default timeout gives a plugin to load at least (its
``JOB_TIMEOUT``, which may lift the default, is known only once it has loaded)."""

HOLD_FOR = 0.002
"""Seconds an outcome may wait in the journal's queue for others to share its commit,
when the thread that ran the job has queued jobs to run next (engines made with
``batch_outcomes``)."""


class JobRun:
    """The state of one job in this process (owned by the engine's :class:`LifeCycle`)."""

    __slots__ = (
        "id",
        "job_id",
        "plugin_name",
        "input_data",
        "output",
        "error",
        "state",
        "started",
        "ended",
        "callbacks",
        "done",
        "execution",
        "abort_reason",
        "timer",
        "noted_running",
        "recorded",
        "runner",
        "callback_thread",
        "cleaned",
        "files_written",
        "from_journal",
        "submitted",
        "aborted_at",
        "face",
        "cycle",
        "record",
        "unrecorded",
        "__weakref__",
    )

    def __init__(self, cycle: LifeCycle | None, job_id: int, plugin: str, input_data: Any):
        self.cycle = cycle
        self.id = self.job_id = job_id  # job_id: the name the executors know it by
        self.plugin_name = plugin
        self.input_data: dict[str, Any] | None = input_data
        self.output: dict[str, Any] | None = {}
        self.error: str | None = None
        self.state = State.UNINITIALIZED
        self.started: float | None = None
        self.ended: float | None = None
        self.callbacks: list[tuple[Callable[[Any], Any], Any]] = []
        self.done = Signal()
        self.execution: Any = None
        self.abort_reason: str | None = None
        self.timer: Any = None
        self.noted_running = False
        self.recorded = False  # the outcome was handed over (once only)
        self.runner: int | None = None  # the thread running the plugin in this process
        self.callback_thread: int | None = None  # the thread running the callbacks now
        self.cleaned = False
        self.files_written = False
        self.from_journal = False
        self.submitted = time.time()
        self.aborted_at: float | None = None
        self.face: Any = None  # a weak reference to the dahu.job.Job showing this run
        self.record: Any = None  # the journal's token while its record is not committed
        #: the arguments of ``Journal.finish`` while the journal has not taken the outcome
        self.unrecorded: tuple | None = None

    @classmethod
    def from_record(cls, record: JobRecord) -> JobRun:
        """An ended (or foreign) job as the journal knows it: nothing to run, nothing to
        wait for in this process."""
        run = cls(None, record.id, record.plugin, record.input)
        run.output = record.output or {}
        run.error = record.error
        run.state = record.state
        run.started, run.ended = record.started, record.ended
        run.submitted = record.submitted
        run.noted_running = run.recorded = run.cleaned = run.files_written = True
        run.from_journal = True
        run.done.set()
        return run

    def __repr__(self) -> str:
        return f"<JobRun {self.id} {self.plugin_name} {self.state}>"

    # ---- the executors' interface (dahu.executors.base.Task) ---------------------------
    def begin(self, execution: Any) -> bool:
        """The job got a slot: it runs with ``execution``; False if it was aborted."""
        return self.cycle.begin(self, execution)

    def plugin_loaded(self, job_timeout: float | None) -> None:
        """The plugin exists: start the job's clock (see :meth:`LifeCycle.arm_timeout`)."""
        self.cycle.arm_timeout(self, job_timeout)

    def finish(self, outcome: Outcome) -> None:
        """The run ended with ``outcome``."""
        self.cycle.finish(self, outcome)

    # ---- reading ----------------------------------------------------------------------
    def is_alive(self) -> bool:
        """True while queued or running."""
        return self.state in (State.STARTING, State.RUNNING)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ended and its callbacks ran; True if it has.

        From a job's plugin or callbacks, the job's executor slot is free for other jobs
        while it waits (:func:`~dahu.executors.slot.released`).  From the job's own
        callbacks it returns at once; from its own plugin it raises ``RuntimeError``
        (``cannot join current thread``, as the original's ``Thread.join``): it would
        wait for itself.
        """
        if self.done.is_set():
            return True
        me = threading.get_ident()
        if me == self.callback_thread:
            return False
        if me == self.runner or serves(self):
            raise RuntimeError(SELF_JOIN)
        with released():  # past 1e9 s, forever; NaN: ValueError
            return self.done.wait(wait_timeout(timeout))


def final_output(run: JobRun, outcome: Outcome) -> dict[str, Any]:
    """The output clients read: the plugin's, with ``job_runtime``, and the original's
    ``error`` (list of lines) or ``aborted`` (time) keys."""
    output = dict(outcome.output) if isinstance(outcome.output, dict) else {}
    ended = outcome.ended if outcome.ended is not None else time.time()
    begun = outcome.started if outcome.started is not None else run.submitted
    output["job_runtime"] = max(ended - begun, 0.0)
    if outcome.state == State.FAILURE and outcome.error:
        output["error"] = outcome.error.splitlines()
    elif outcome.state == State.ABORTED:
        output["aborted"] = get_isotime(run.aborted_at or ended)
    return output


class LifeCycle:
    """Performs every state transition of the jobs of one engine."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.lock = engine.table.lock  # one lock for the table and the states
        self._hold_armed = False  # a timer will commit the held outcomes
        self.files_lock = threading.Lock()  # a job's files are written by one thread
        self.halted: str | None = None  # set (a reason): queued jobs end aborted, none begins
        self.refusing: str | None = None  # set (a reason) by Engine.shutdown/close: none starts
        self.stop_deadline = math.inf  # past it a stop records its hung jobs: none abandoned
        #: a refused start records its job's end before the journal closes, or not at all
        self.stop_lock = threading.RLock()
        self.journal_closing = False

    # ---- transitions ------------------------------------------------------------------
    def start(self, run: JobRun) -> None:
        """uninitialized → starting: queue the job on the executor."""
        with self.lock:
            if run.state != State.UNINITIALIZED:
                raise RuntimeError(f"job {run.id} was already started")
            refused = self.refusing
            if refused is None:
                run.state = State.STARTING
        if refused is not None:
            self._refuse(run, refused)
        if run.record is not None:
            self.engine.journal.commit_soon()  # its record (and those queued before it)
        try:
            self.engine.executor.submit(run)
        except Exception as err:
            if self.refusing is not None:  # the engine began to stop meanwhile
                with self.lock:
                    run.state = State.UNINITIALIZED  # not started, as if refused at once
                self._refuse(run, self.refusing)
            error = f"cannot queue the job: {error_line(err)}"
            self.finish(run, Outcome(State.FAILURE, {}, error), now=True)  # failed as it raises
            raise

    def _refuse(self, run: JobRun, reason: str) -> None:
        """The engine is stopping: ``run`` ends ``aborted`` without running (recorded, unless
        the journal is closing already: then it stays not started), and the caller is told."""
        with self.stop_lock:
            if not self.journal_closing:
                with self.lock:
                    run.state = State.STARTING
                    run.abort_reason, run.aborted_at = reason, time.time()
                self.finish(run, Outcome(State.ABORTED, {}, reason, None, time.time()))
        raise DahuError(f"job {run.id} not started: {reason}, it takes no new job")

    def begin(self, run: JobRun, execution: Any) -> bool:
        """starting → running, or → aborted if an abort came while it was queued."""
        with self.lock:
            if run.abort_reason is None and self.halted is not None:
                run.abort_reason = self.halted
            aborted = run.abort_reason is not None
            if not aborted:
                run.execution = execution
                run.state = State.RUNNING
                run.started = time.time()
                if getattr(execution, "in_process", False):
                    run.runner = threading.get_ident()
        if aborted:
            self.finish(run, Outcome(State.ABORTED, {}, run.abort_reason, None, time.time()))
            return False
        self.engine.watch_running()
        # until the plugin exists (its import or __init__ may hang), the limit known now
        self.arm_timeout(run, None, loading=True)
        return True

    def note_running(self, run: JobRun) -> None:
        """Record ``running`` in the journal once (never over a final state)."""
        if run.state == State.RUNNING and not run.noted_running:
            run.noted_running = True
            try:
                self.engine.journal.set_state(run.id, State.RUNNING, run.started)
            except JournalError as err:
                self.engine.journal_failed(run.id, err)

    def arm_timeout(self, run: JobRun, plugin_timeout: float | None, loading: bool = False) -> None:
        """Start the job's clock: the input's ``job_timeout``, else the plugin's
        ``JOB_TIMEOUT``, else the engine's default; abort the job when it runs out (the
        clock armed while its plugin loads, ``loading``, is replaced)."""
        if run.timer is not None:
            self.engine.watchdog.cancel(run.timer)
            run.timer = None
        timeout = None
        values = ((run.input_data or {}).get("job_timeout"), plugin_timeout)
        for source, value in enumerate((*values, self.engine.default_timeout)):
            if value is None:
                continue
            # a value that is not a number (NaN, a string, a bool) is ignored: the next
            # one applies, so that a bad input key cannot lift the server's default
            number = seconds(value)
            if number is None:
                if loading or source == 1:  # said once: the others were said at begin
                    logger.warning("job %s: ignoring timeout %s", run.id, not_seconds(value))
                continue
            if loading and source == 2 and 0 < number < math.inf:
                number = max(number, LOADING_AT_LEAST)
            timeout = number
            break
        if timeout is None or timeout <= 0 or math.isinf(timeout):
            return  # no limit
        ref = weakref.ref(run)
        note = " (the plugin was still loading)" if loading else ""

        def expire() -> None:
            target = ref()
            if target is None or target.state != State.RUNNING or target.abort_reason:
                return  # (aborted already: by the clock of its plugin's loading, say)
            # the executor may know that its plugin began later (dask: it waited on the
            # cluster) and give it the rest of its time
            more = getattr(target.execution, "time_left", lambda limit: 0.0)(timeout)
            if more > 0:
                target.timer = self.engine.watchdog.call_later(more, expire, own_thread=True)
                return
            self.abort(target, f"timed out after {timeout:g} s{note}", warn=True)

        run.timer = self.engine.watchdog.call_later(timeout, expire, own_thread=True)

    def abort(self, run: JobRun, reason: str, quiet: bool = False, warn: bool = False) -> bool:
        """Ask a queued or running job to stop; True if it is now stopping.

        A queued job ends ``aborted`` at once (its plugin never runs); a running plugin is
        asked to stop and the job ends ``aborted`` when it returns (if before it heard, too).
        With an executor that cannot kill plugins, one that ignores the abort for
        ``abort_grace`` seconds is abandoned: its job ends ``aborted``, its slot freed.
        """
        with self.lock:
            state = run.state
            if state not in (State.STARTING, State.RUNNING) or run.abort_reason:
                doing = "already being aborted" if run.abort_reason else state
                log = logger.debug if quiet else logger.info  # quiet: the engine's abort_all
                log("job %s is %s: nothing to abort", run.id, doing)
                return False
            run.abort_reason, run.aborted_at = reason, time.time()
            execution = run.execution
        if warn:  # by the abort taken: two clocks that expire at once say it once
            logger.warning("job %s %s: aborting it", run.id, reason)
        executor = self.engine.executor
        if execution is not None:
            aborting = getattr(executor, "aborting", None)
            if aborting is not None:  # a plugin back from waiting for a job: no slot wait
                aborting(run)
            execution.abort(reason)
            if getattr(executor, "abandons_hung_jobs", False):
                self.engine.watchdog.call_later(
                    executor.abort_grace, lambda: self.abandon_if_stuck(run)
                )
        elif state == State.STARTING and executor.cancel(run):
            self.finish(run, Outcome(State.ABORTED, {}, reason, None, time.time()))
        return True

    def abandon_if_stuck(self, run: JobRun) -> None:
        """running → aborted, its plugin running on: it ignored its abort (before a stop's deadline)."""
        executor = self.engine.executor
        if run.state != State.RUNNING or run.recorded or time.monotonic() >= self.stop_deadline:
            return
        if executor.abandon(run):
            grace = executor.abort_grace
            reason = (
                f"{run.abort_reason} (the plugin did not stop within {grace:g} s; "
                f"its thread is abandoned)"
            )
            self.finish(run, Outcome(State.ABORTED, {}, reason, run.started, time.time()))

    def finish(self, run: JobRun, outcome: Outcome, now: bool = False) -> None:
        """→ success | failure | aborted: record the outcome, run the callbacks, wake the
        waiters.  Called once per job (a late outcome of an abandoned plugin is ignored);
        never raises, and the waiters are woken whatever happens (``now``: before it
        returns, as below for blocking callbacks: a start that raises).

        The outcome is committed before anyone is told.  When every callback of the job is
        marked :func:`nonblocking` (or it has none), the calling thread does not wait for
        that: the journal commits the outcome with others in its next batch, the thread
        that commits it reports the job (state, callbacks, waiters), and the executor's
        thread goes on with the next job.  Other callbacks (user code, which may wait for
        other jobs) run in the calling thread after it committed the outcome itself."""
        with self.lock:
            if run.recorded:
                logger.warning(
                    "job %s: late %s from an abandoned plugin ignored", run.id, outcome.state
                )
                return
            run.recorded = True
        engine = self.engine
        deferred = False
        recorded = False
        try:
            if run.timer is not None:
                engine.watchdog.cancel(run.timer)
                run.timer = None
            if run.abort_reason and outcome.state != State.ABORTED:  # abort() said True:
                outcome.state, outcome.error = State.ABORTED, run.abort_reason  # as it said
            output = final_output(run, outcome)
            final_input = None
            if outcome.input is not None and outcome.input != run.input_data:
                # a plugin that added keys to its input has them recorded, as in the original
                final_input = run.input_data = {**(run.input_data or {}), **outcome.input}
            run.output, run.error = output, utf8_text(outcome.error)
            run.started, run.ended = outcome.started, outcome.ended
            record = (
                run.id,
                outcome.state,
                output,
                run.error,
                outcome.started,
                outcome.ended,
                outcome.module_file,
                outcome.plugin_version,
                final_input,
            )
            noted = functools.partial(setattr, run, "error")  # an output JSON cannot hold
            if not now and all(getattr(m, "dahu_nonblocking", False) for m, _ in run.callbacks):
                state = outcome.state
                run.runner = None  # its thread goes on with other jobs

                def committed(error: BaseException | None) -> None:
                    if error is not None:
                        run.unrecorded = record
                        engine.journal_failed(run.id, error)
                    self._report(run, state, error is None)

                # batch work, more jobs queued: this thread runs one next; its outcome
                # may share a commit with theirs (a timer commits it soon if nothing
                # else does)
                backlog = getattr(engine.executor, "backlog", None)
                hold = bool(engine.batch_outcomes and backlog is not None and backlog())
                try:
                    engine.journal.finish_later(committed, *record, hold=hold, noted=noted)
                    deferred = True
                except Exception as err:  # e.g. the journal is closed: report it now
                    run.unrecorded = record
                    engine.journal_failed(run.id, err)
                else:
                    if hold:
                        self._commit_held_soon()
                return
            try:
                engine.journal.finish(*record, noted=noted)
                recorded = True
            except Exception as err:  # a journal must not leave a job running forever
                run.unrecorded = record
                engine.journal_failed(run.id, err)
        finally:
            if not deferred:
                self._report(run, outcome.state, recorded)

    def _commit_held_soon(self) -> None:
        """Have the outcomes held back (see :meth:`finish`) committed within
        :data:`HOLD_FOR` seconds, if no other write commits them first: one timer at a
        time, armed by the first outcome held after the last one fired."""
        if self._hold_armed:
            return
        self._hold_armed = True  # cleared before the commit: a later hold arms another
        journal = self.engine.journal

        def commit() -> None:
            self._hold_armed = False
            try:
                journal.commit_soon()
            except Exception:  # reported by the writes themselves
                logger.exception("journal: cannot commit the held outcomes")

        self.engine.watchdog.call_later(HOLD_FOR, commit)

    def _report(self, run: JobRun, state: str, recorded: bool) -> None:
        """The outcome is recorded (or could not be): set the final state, run the
        callbacks, wake the waiters."""
        engine = self.engine
        try:
            with self.lock:
                run.state = state
                engine.table.ended(run, recorded)
            engine.count_finished(run)
            self._callbacks(run)
        finally:
            run.done.set()

    def _callbacks(self, run: JobRun) -> None:
        if run.state == State.FAILURE:
            logger.debug("job %s failed: %s", run.id, one_line(run.error or ""))
        callbacks, run.callbacks = run.callbacks, []
        if not callbacks:
            return
        run.callback_thread = threading.get_ident()
        try:
            for method, face in callbacks:
                try:
                    method(face)
                except BaseException:  # a callback must not stop the others, nor the waiters
                    logger.exception("job %s: callback %r failed", run.id, method)
        finally:
            run.callback_thread = None

    def clean(self, run: JobRun) -> None:
        """Write an ended job's ``.inp``/``.out`` files once; free its data once journaled."""
        if run.state not in State.FINAL or run.cleaned:
            return
        engine = self.engine
        if not run.files_written:
            # once: cleanJob may come while the files thread writes them, and a second
            # write (truncate, then write) would show a reader an empty file meanwhile
            with self.files_lock:
                if not run.files_written:
                    run.files_written = engine.write_files(
                        run.id, run.plugin_name, run.input_data, run.output
                    )
        held, run.execution = [run.execution], None
        if threading.current_thread() is engine._cleaner:  # the files thread: a plugin's
            engine.dropping.append(held)  # __del__ must not delay other jobs' files, events
        else:  # at once, as in the original: clean() returns after the plugin's __del__
            held.clear()
        run.callbacks = []
        if run.unrecorded is None:
            run.cleaned = True  # the journal answers from now on
            run.input_data = run.output = None
