"""The Python client of a Dahu server: jobs as futures.

::

    from dahu.client import DahuClient, JobFailed, as_completed

    with DahuClient("id00/dahu/1") as dahu:
        future = dahu.submit("example.square", x=7)
        print(future.result(timeout=60))            # {'result': 49, 'logging': []}
        for future in as_completed(dahu.map("example.square", [{"x": i} for i in range(100)])):
            print(future.job_id, future.result()["result"])

A :class:`JobFuture` is a :class:`concurrent.futures.Future`: ``result(timeout)`` gives
the job's output dict or raises :class:`JobFailed` / :class:`JobAborted`,
``add_done_callback``, :func:`as_completed` and :func:`wait` work as with any executor,
and ``cancel()`` aborts the job on the server.

Completion is learnt from the device's ``jobSuccess``/``jobFailure`` change events (one
subscription each per client), read by a small pool of threads that fetch the outcome;
a watcher thread sees to it that no future hangs when events are lost (``getJobState``
of the pending jobs when no event came for a while, every pending job after an event
error, all of them now and then).  ``docs/client.md`` is the reference."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import tango

from .client_args import check_settings, chunks, encode_input, encode_inputs, job_number, wait_time
from .client_calls import (
    ask,
    call,
    callers,
    close_at_exit,
    new_proxy,
    patience,
    plugin_list,
    same_process,
    spare_proxies,
    subscribed,
    within,
)
from .client_close import (
    abandoned,
    close,
    handler,
    hold,
    release_if_idle,
    resolver,
    resolver_call,
    unsubscribe,
)
from .client_probe import probe
from .client_watch import check_journal, fetched, not_fetched, read_journal, told, watch
from .futures import (
    ClientClosed,
    ClientError,
    JobAborted,
    JobError,
    JobFailed,
    JobFuture,
    JobNotFound,
    ServerError,
)
from .inputs import MAX_INPUT_CHARS
from .states import State

logger = logging.getLogger(__name__)

__all__ = [
    "DahuClient",
    "JobFuture",
    "ClientError",
    "ServerError",
    "JobNotFound",
    "JobError",
    "JobFailed",
    "JobAborted",
    "ClientClosed",
    "as_completed",
    "wait",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ALL_COMPLETED",
]

EARLY_MAX = 100_000  # jobs ended while submissions were in flight, kept at most
as_completed = concurrent.futures.as_completed
wait = concurrent.futures.wait
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED

_RETRY_REASONS = {"Dahu_TryAgain", "API_DeviceTimedOut"}  # listPlugins: asked again
# one subscription at a time: the first ones of a process, made by several threads at
# once, could fail in cppTango ("Could not find event consumer for ptr")
_SUBSCRIBING = threading.Lock()
CHANGE_EVENT = tango.EventType.CHANGE_EVENT


# ---- the client ------------------------------------------------------------------------
class DahuClient:
    """A client of one ``DahuDS`` device: submits jobs and follows them as futures.

    :param device: a Tango device name (``id00/dahu/1``, with ``TANGO_HOST``) or a full
        URL (``tango://host:10123/id00/dahu/1#dbase=no``)
    :param timeout: the Tango client timeout of each call, in seconds (default: Tango's,
        3 s); ``map`` and the reading of a slow outcome allow themselves more
    :param resolvers: threads that fetch the outcome of ended jobs
    :param poll_interval: seconds without an event after which the watcher asks the
        server about the pending jobs (``getJobState``)
    :param sweep_interval: seconds between two checks of every pending job (doubling up
        to ``max_sweep_interval`` while the checks find nothing that events missed)

    Settings that could not work (an interval that is not a positive number, ...) raise
    ``TypeError``/``ValueError`` at once.

    Thread-safe: futures can be submitted and waited for from any number of threads.
    Each thread that calls the device gets its own ``DeviceProxy``.  ``close()`` (or
    leaving a ``with`` block) unsubscribes and stops the threads; futures still pending
    then fail with :class:`ClientClosed` (their jobs go on on the server).
    """

    def __init__(
        self,
        device: str,
        timeout: float | None = None,
        resolvers: int = 4,
        poll_interval: float = 1.0,
        sweep_interval: float = 2.0,
        max_sweep_interval: float = 60.0,
    ):
        check_settings(
            device, timeout, resolvers, poll_interval, sweep_interval, max_sweep_interval
        )
        self.device = device
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.max_sweep_interval = max_sweep_interval
        self._local = threading.local()
        self._pid = os.getpid()  # its threads run in this process only
        self._lock = threading.Lock()
        self._pending: dict[int, JobFuture] = {}  # insertion order: oldest first
        self._early: dict[int, str | None] = {}  # ended while a submission was in flight
        self._submitting = 0
        self._closed = False
        self._suspect = False  # events may have been lost: check every pending job
        self._fresh = False  # jobs were submitted since the watcher last looked
        self._unfetched = 0  # outcomes not fetched since the last one fetched (an outage)
        self._last_event = time.monotonic()  # last job of ours learnt from an event
        self._high_event = 0  # the highest id of ours an event reported (client_watch)
        self._wake = threading.Event()
        self._outcomes: queue.SimpleQueue = queue.SimpleQueue()
        probe(device, self._patience())  # a stopped server: fail in its time, not 6 to 9 s
        self._events_proxy = self._new_proxy()
        self._subscriptions: list[int] = []
        self._in_call: dict[threading.Thread, tuple[JobFuture, float, float]] = {}  # resolvers
        self._callers: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            self._events_proxy.ping()
            self._spares = spare_proxies(self, resolvers)  # the watcher asks through callers
            self._journal, self._journal_seen = read_journal(self._events_proxy), time.monotonic()
            ref = weakref.ref(self)  # the threads and handlers hold it weakly: see there
            for name in ("jobSuccess", "jobFailure"):  # each event handed over at once
                with _SUBSCRIBING:  # see there
                    self._subscriptions.append(
                        self._events_proxy.subscribe_event(name, CHANGE_EVENT, handler(ref, name))
                    )
        except tango.DevFailed as err:
            self._unsubscribe()
            raise ServerError.from_devfailed(err, f"cannot connect to {device}") from None
        subscribed(self)  # (a process forked from one that subscribed gets no events)
        loops = [(resolver, (ref, self._outcomes), f"dahu-client-{i}") for i in range(resolvers)]
        loops.append((watch, (ref, self._events_proxy, self._subscriptions), "dahu-client-watch"))
        self._threads = [
            threading.Thread(target=f, args=a, name=n, daemon=True) for f, a, n in loops
        ]
        for thread in self._threads:
            thread.dahu_client = ref  # whose outcomes it fetches while a callback waits
            thread.start()
        self._finalizer = weakref.finalize(
            self, abandoned, self._outcomes, self._wake, self._threads
        )
        self._finalizer.atexit = False  # closed at exit (close_at_exit), not abandoned
        close_at_exit(self)

    _check_journal = check_journal  # (self, max_age): JobFuture.cancel's too

    # ---- context manager -----------------------------------------------------------------
    def __enter__(self) -> DahuClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DahuClient {self.device}: {len(self._pending)} pending>"

    def __reduce__(self) -> Any:  # not "cannot pickle '_thread._local' object"
        raise TypeError(
            f"a DahuClient cannot be pickled nor copied (its threads and subscriptions are "
            f"its process's): pass the device name ({self.device!r}) and make a "
            f"DahuClient in each process"
        )

    # ---- calls ---------------------------------------------------------------------------
    _new_proxy = new_proxy  # (self): a proxy of the device for one thread

    def _proxy(self) -> tango.DeviceProxy:
        """This thread's proxy (DeviceProxy calls from many threads are kept apart)."""
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            proxy = self._local.proxy = self._new_proxy()
        return proxy

    _call = call  # (self, command, argument=None, millis=0): a refusal tried again
    _ask = ask  # (self, command, argument=None, millis=0, deadline=0): call, bounded
    _within = within  # (self, deadline, what, function, *args): JobFuture.cancel's
    _patience = patience  # (self): seconds a call may take
    _caller = callers  # (self): the threads making the calls of within (None once closed)

    # ---- submitting ----------------------------------------------------------------------
    def submit(
        self, plugin: str, input: dict[str, Any] | None = None, /, **kwargs: Any
    ) -> JobFuture:
        """Start one job of ``plugin``; return its future.

        The input is ``input`` (a dict) updated with the keyword arguments:
        ``submit("example.square", x=7)`` or ``submit("example.square", {"x": 7})``.
        Raises :class:`ServerError` at once if the server refuses it (unknown plugin,
        input too large), :class:`ClientError` for an input JSON cannot encode.
        """
        text = encode_input(plugin, input, kwargs)
        deadline = self._begin()
        ids: list[int] = []
        try:
            ids = [int(self._ask("startJob", [plugin, text], 0, deadline))]
        finally:
            futures = self._track(ids, plugin)
        return futures[0]

    def map(self, plugin: str, inputs: Iterable[dict[str, Any]]) -> list[JobFuture]:
        """Start one job of ``plugin`` per input with a single ``startJobs`` call; return
        their futures in the order of the inputs.

        The whole batch is refused if one input is invalid.  More calls are made only
        past the server's limits of one call (16 MiB of JSON, 100,000 jobs), each checked;
        if a later call fails all the same (a timeout), the jobs of those before go on.
        """
        texts = encode_inputs(plugin, inputs)
        futures: list[JobFuture] = []
        if not texts:
            return futures
        for chunk in chunks(texts, MAX_INPUT_CHARS - 2):
            self._begin("startJobs")
            ids: list[int] = []
            try:
                # a large batch takes longer to record than one call's default timeout
                text, millis = "[" + ",".join(chunk) + "]", 10_000 + 2 * len(chunk)
                ids = [int(i) for i in self._ask("startJobs", [plugin, text], millis)]
            finally:
                futures += self._track(ids, plugin)
        return futures

    def job(self, job_id: int) -> JobFuture:
        """The future of an existing job (submitted by anyone, maybe long ago).

        Raises :class:`JobNotFound` if the server knows no such job.  A job that has
        ended already gives a future that is done as soon as its outcome is fetched.  A
        negative id counts from the last job (``-1``: the last one), as on the device."""
        job_id = job_number(job_id)  # an int, or TypeError: not "1.5", "7" nor True
        if not -(2**31) <= job_id < 2**31:  # Tango's DevLong: the device could not be asked
            raise JobNotFound(f"no job {job_id}: job ids are 32-bit", "Dahu_UnknownJob")
        if job_id < 0:
            job_id = int(json.loads(self._ask("getJobInfo", job_id))["id"])
        deadline = time.monotonic() + self._patience()  # not a future of another journal:
        self._within(deadline, "getJobInfo", check_journal, self, self.poll_interval)
        future = JobFuture(self, job_id)
        tracked = self._register(future)  # before asking: an event from now on is not missed
        if tracked is not future:
            return tracked
        try:
            info = json.loads(self._ask("getJobInfo", job_id, 0, deadline))
        except ServerError:
            self._forget(future)
            raise
        future.plugin, state = info.get("plugin"), info.get("state")
        if state in State.FINAL:
            self._ended(job_id, state)
        return future

    def plugins(self, timeout: float = 60.0) -> dict[str, str]:
        """The plugins the server offers: name → first line of its documentation."""
        deadline = time.monotonic() + wait_time("timeout", timeout)
        while True:
            if self._closed:
                raise ClientClosed(f"the client of {self.device} is closed")
            try:
                return plugin_list(self._ask("listPlugins"))
            except ServerError as err:  # still loading the modules (or too busy to say)
                if err.reason not in _RETRY_REASONS or time.monotonic() > deadline:
                    raise

    @staticmethod
    def as_completed(
        futures: Iterable[concurrent.futures.Future], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future]:
        """The futures as they complete (:func:`concurrent.futures.as_completed`)."""
        return concurrent.futures.as_completed(futures, timeout)

    @staticmethod
    def wait(
        futures: Iterable[concurrent.futures.Future],
        timeout: float | None = None,
        return_when: str = ALL_COMPLETED,
    ) -> Any:
        """Wait for the futures (:func:`concurrent.futures.wait`): ``(done, not_done)``."""
        return concurrent.futures.wait(futures, timeout, return_when)

    @property
    def pending(self) -> int:
        """Futures of this client whose job has not ended yet."""
        with self._lock:
            return len(self._pending)

    # ---- bookkeeping ---------------------------------------------------------------------
    def _begin(self, command: str = "startJob") -> float:
        """A submission starts: events of jobs not tracked yet are kept until it ends;
        return the deadline of its call (the journal check's too: its ids are of the
        journal of our futures)."""
        deadline = time.monotonic() + self._patience()
        self._within(deadline, command, check_journal, self, self.poll_interval)
        with self._lock:
            if self._closed:
                raise ClientClosed(f"the client of {self.device} is closed")
            self._submitting += 1
        return deadline

    def _track(self, ids: list[int], plugin: str) -> list[JobFuture]:
        """A submission ended: make the futures of its ``ids``."""
        futures = [JobFuture(self, i, plugin) for i in ids]
        with self._lock:  # queued under the lock: close() then finds what it must settle
            closed = self._closed
            for i, future in enumerate(futures):
                if future.job_id in self._early:
                    self._outcomes.put((future, self._early.pop(future.job_id)))
                elif not closed:  # job(id) may have asked for it meanwhile: that future
                    futures[i] = self._pending.setdefault(future.job_id, future)
                    hold(self)
            self._submitting -= 1
            if not self._submitting:
                self._early.clear()
            self._fresh = True
        if closed:  # closed during the call: nobody would settle them
            for future in futures:
                future._settle(None, error=self._closed_error(future))
        return futures

    def _register(self, future: JobFuture) -> JobFuture:
        """Track ``future`` (or return the future already tracking its job)."""
        with self._lock:
            if self._closed:
                raise ClientClosed(f"the client of {self.device} is closed")
            hold(self)
            return self._pending.setdefault(future.job_id, future)

    def _retrack(self, future: JobFuture) -> None:
        """Follow ``future`` again after :meth:`_forget` (its job may have ended since)."""
        with self._lock:  # not after close() drained the queue: nobody would fetch it
            if not self._closed:
                self._outcomes.put((future, None))  # fetched now; tracked again if not ended
                return
        future._settle(None, error=self._closed_error(future))

    def _forget(self, future: JobFuture) -> None:
        with self._lock:
            if self._pending.get(future.job_id) is future:
                del self._pending[future.job_id]

    def _ended(self, job_id: int, state: str | None, event: bool = False) -> bool:
        """Job ``job_id`` ended (``state``, or None when only "not a success" is known);
        ``event``: learnt from a change event (the watcher then stays idle).  False if
        no pending future of ours was ended so (told already, or none)."""
        with self._lock:
            future = self._pending.pop(job_id, None)
            if future is None:
                if self._submitting:
                    self._early[job_id] = state
                    if len(self._early) > EARLY_MAX:  # submissions may overlap for ever
                        del self._early[next(iter(self._early))]
                return False
            told(self, future, state, event)  # the watcher's clues: events flow, jobs passed
            self._outcomes.put((future, state))  # which holds the client until it is read
            if not self._pending:
                release_if_idle(self, locked=True)
        return True

    def _event(self, name: str, event: Any) -> None:
        """A change event of ``jobSuccess``/``jobFailure`` (Tango's event thread)."""
        if self._closed:
            return
        if event.err:
            errors = event.errors or ()
            logger.info(
                "%s: event error on %s: %s",
                self.device,
                name,
                errors[0].desc.strip() if errors else "?",
            )
            self._suspect = True  # events may have been missed: check every job
            self._journal_seen = -math.inf  # and the server's journal (a restart)
            self._wake.set()
            return
        value = event.attr_value.value if event.attr_value is not None else None
        if value and value > 0:  # -1: no job ended so yet (the value sent on subscribing)
            self._ended(int(value), State.SUCCESS if name == "jobSuccess" else None, event=True)

    # ---- threads -------------------------------------------------------------------------
    def _resolve(self, future: JobFuture, state: str | None) -> None:
        try:
            self._fetch(future, state)
        except JobNotFound as err:
            future._settle(State.INEXISTANT, error=err)
        except ServerError as err:  # asked again (the watcher) unless hopeless
            if err.hopeless:
                future._settle(None, error=ServerError(f"job {future.job_id}: {err}", err.reason))
                return
            if self._closed:  # a call close() did not wait for: not asked again
                future._settle(None, error=self._closed_error(future))
                return
            if err.reason == "API_DeviceTimedOut":  # too slow to send: allow twice as long
                future._patience = 2 * max(future._patience, self._proxy().get_timeout_millis())
            not_fetched(self, future, err)  # one warning for an outage, not one per job
            self._requeue(future)
            self._suspect = True
            self._wake.set()  # asked again by the watcher now, not poll_interval s later
        except Exception as err:  # a loop boundary: the future must not hang
            logger.exception("%s: job %s: cannot fetch its outcome", self.device, future.job_id)
            future._settle(None, error=ClientError(f"job {future.job_id}: {err}"))
        else:
            fetched(self)

    def _help(self, future: JobFuture, timeout: float | None) -> float | None:
        """A wait for ``future`` in a done-callback, run by one of our threads: fetch
        outcomes meanwhile (callbacks waiting idle could leave no thread to fetch them);
        return the time left of ``timeout``."""
        if future.done():
            return timeout
        same_process(self)  # forked: nobody here would ever settle it
        if threading.current_thread() not in self._threads:
            return timeout
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while not future.done() and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return 0.0
            try:
                item = self._outcomes.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            if item is None:  # closing: the stop signal is the loop's
                self._outcomes.put(None)
                break
            self._resolve(*item)
        return None if timeout is None else max(0.0, deadline - time.monotonic())

    def _fetch(self, future: JobFuture, state: str | None) -> None:
        if future.done() or self._closed:  # settled meanwhile (cancelled, of another
            return future._settle(None, error=self._closed_error(future))  # journal), closed
        # each call waited for by close() no longer than it may take (a stopped server)
        if not resolver_call(self, future, 0, check_journal, self, math.inf):  # same journal
            raise ServerError("journalId cannot be read", "API_CantConnectToDevice")
        job_id, millis = future.job_id, future._patience
        if state is None:
            state = resolver_call(self, future, 0, self._call, "getJobState", job_id)
        if state == State.SUCCESS:
            text = resolver_call(self, future, millis, self._call, "getJobOutput", job_id, millis)
            future._settle(state, output=json.loads(text))
        elif state in State.FINAL:
            klass = JobAborted if state == State.ABORTED else JobFailed
            text = resolver_call(self, future, millis, self._call, "getJobError", job_id, millis)
            error = klass.from_error_text(job_id, text)
            future._settle(state, error=error)
        else:  # not ended after all (a stale value): keep waiting
            self._requeue(future)

    def _requeue(self, future: JobFuture) -> None:
        other = None
        with self._lock:
            if not self._closed and not future.done():
                other = self._pending.setdefault(future.job_id, future)
                hold(self)
                if other is future:
                    return
        if other is not None:  # job(id) made another future of the job meanwhile:
            other.add_done_callback(lambda _: self._retrack(future))  # fetched after it
        elif not future.done():
            future._settle(None, error=self._closed_error(future))

    def _closed_error(self, future: JobFuture) -> ClientClosed:
        return ClientClosed(
            f"job {future.job_id}: the client of {self.device} was closed before it ended"
        )

    # ---- closing -------------------------------------------------------------------------
    _unsubscribe = unsubscribe  # (self): the subscriptions that are left
    close = close  # (self, timeout=10.0): see client_close
