"""Job futures of :mod:`dahu.client` and the errors of the client.

A :class:`JobFuture` is a :class:`concurrent.futures.Future` that knows its job on the
server; the client settles it when the job ends (see ``docs/client.md``).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import numbers
import threading
import time
from concurrent.futures import _base
from typing import Any

import tango

from .errors import DahuError
from .states import State

__all__ = [
    "JobFuture",
    "ClientError",
    "ServerError",
    "JobNotFound",
    "JobError",
    "JobFailed",
    "JobAborted",
    "ClientClosed",
]


# ---- errors ----------------------------------------------------------------------------
class ClientError(DahuError):
    """An error of the Dahu client."""


class ServerError(ClientError):
    """The device refused a request or could not be reached.

    :ivar reason: the Tango reason code (``Dahu_InvalidInput``, ``Dahu_UnknownPlugin``,
        ``API_DeviceTimedOut``, ...)
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason

    @classmethod
    def from_devfailed(cls, err: tango.DevFailed, what: str) -> ServerError:
        """The one-line error of a ``DevFailed`` raised by ``what``."""
        first = err.args[0]
        reason, desc = first.reason, " ".join(first.desc.split()) or first.reason
        if reason == "API_CorbaException" and len(err.args) > 1:
            # CORBA's words ("TRANSIENT CORBA system exception: TRANSIENT_CallTimedout"),
            # then Tango's, which say what happened (API_DeviceTimedOut): both, in short
            code = desc.rpartition(" ")[2]
            reason = err.args[1].reason
            desc = f"{' '.join(err.args[1].desc.split())}: {code}"
        klass = JobNotFound if reason == "Dahu_UnknownJob" else cls
        if reason in ("API_CantConnectToDevice", "API_ServerNotRunning"):
            # Tango's own throttling hides the cause ("The connection request was
            # delayed..."): say what a user can check instead
            desc = desc.split(" The connection request was delayed", 1)[0]
            desc += " (is its server running, at this address?)"
        elif reason == "API_DeviceNotDefined" and "OBJECT_NOT_EXIST" in desc:
            # a server that answers but serves no such device: the last moment of a stop
            desc += " (is its server stopping, or is the device served elsewhere?)"
        elif reason == "API_AttrNotFound" and "job" in desc:  # no jobSuccess/jobFailure
            desc += " (is it a DahuDS device?)"
        elif reason == "API_CantConnectToDatabase" and desc.endswith("OBJECT_NOT_EXIST_NoMatch"):
            # a server answers there, but not as a database: a URL without #dbase=no
            desc += " (a Tango server without database answers at this address: add "
            desc += "'#dbase=no' to the device's URL)"
        elif "MessageSizeExceedLimit" in desc:  # CORBA's words for a message too large
            desc += " (the message is larger than the largest one Tango may carry)"
        return klass(f"{what}: {desc}", reason)

    @property
    def hopeless(self) -> bool:
        """Whether the server answered for good, so that the same call would fail again:
        a bug of the server, or an answer too large for any Tango message."""
        lasting = self.reason in ("Dahu_InternalError", "Dahu_TooLarge")
        return lasting or "MessageSizeExceedLimit" in str(self)


class JobNotFound(ServerError, KeyError):
    """The server knows no job with this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class JobError(ClientError):
    """A job that did not succeed.

    :ivar job_id: the job's id
    :ivar state: its final state (``failure`` or ``aborted``)
    :ivar reason: the one-line reason given by the server
    :ivar traceback: the traceback text recorded with the error ("" if none)
    """

    def __init__(self, job_id: int, state: str, reason: str, traceback: str = ""):
        super().__init__(f"job {job_id} {state}: {reason}" if reason else f"job {job_id} {state}")
        self.job_id = job_id
        self.state = state
        self.reason = reason
        self.traceback = traceback

    def __reduce__(self) -> Any:  # pickled (a process pool's result), copied: whole
        return type(self), (self.job_id, self.state, self.reason, self.traceback)

    @classmethod
    def from_error_text(cls, job_id: int, text: str) -> JobError:
        """Build from the text of ``getJobError``: a reason line, then the traceback."""
        reason, _, rest = text.strip().partition("\n")
        return cls(job_id, cls.STATE, reason.strip(), rest.strip("\n"))

    STATE = "failure"


class JobFailed(JobError):
    """The job ended in ``failure``: its plugin raised, or it was interrupted by a
    server restart."""

    STATE = State.FAILURE


class JobAborted(JobError, concurrent.futures.CancelledError):
    """The job was aborted (by :meth:`JobFuture.cancel`, another client, its timeout, or
    the server shutting down).  A :class:`concurrent.futures.CancelledError` too."""

    STATE = State.ABORTED


class ClientClosed(ClientError):
    """The client was closed before the job ended (the job itself goes on)."""


# ---- futures ---------------------------------------------------------------------------
OUTCOME_MILLIS = 10_000
"""Milliseconds the first reading of a job's outcome is allowed, at least: a 100 MB
output took 5 to 7 s to arrive on a busy machine, past Tango's 3 s (asked again then,
allowed twice as long each time, the server encoded it each time)."""


def _wait_time(timeout: Any) -> float | None:
    """``timeout`` for ``Future.result``: None (as long as it takes) for ``math.inf`` or
    any longer than a thread can wait (``Future`` raised ``OverflowError``)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if timeout != timeout:  # NaN: a TimeoutError at once, "not ended within nan s"
        raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}")
    return None if timeout > 1e9 else timeout


class JobFuture(concurrent.futures.Future):
    """The future of one Dahu job.

    Besides the :class:`concurrent.futures.Future` interface it knows its job:
    :attr:`job_id`, and the properties :attr:`state`, :attr:`input`, :attr:`output`,
    :attr:`error` and :attr:`info`, which ask the server (one round trip each, except
    what the ended future knows already).
    """

    def __init__(self, client: Any, job_id: int, plugin: str | None = None):
        super().__init__()
        self.job_id = int(job_id)
        self.plugin = plugin
        self._client = client
        self._since = time.monotonic()
        self._final_state: str | None = None
        self._cancelling = threading.Lock()
        self._patience = OUTCOME_MILLIS  # ms a fetch of its outcome may take, at least
        self._checked: tuple[float, float] | None = None  # (next, period): client_watch
        self._asked = False  # its state asked by the watcher once (client_watch)
        self._told: str | None = None  # its end as told (client_watch.told): success...

    def __repr__(self) -> str:
        state = _base._STATE_TO_DESCRIPTION_MAP.get(self._state, self._state.lower())
        return f"<JobFuture job {self.job_id} {self.plugin or ''} {state}>"

    def __reduce__(self) -> Any:  # not "cannot pickle '_thread.RLock' object"
        raise TypeError(
            f"a JobFuture cannot be pickled (its client's threads settle it): pickle its "
            f"job_id ({self.job_id}) and get the job back with DahuClient.job(job_id)"
        )

    @property
    def id(self) -> int:
        """The job id (same as :attr:`job_id`)."""
        return self.job_id

    # -- Future interface
    def cancel(self) -> bool:
        """Abort the job on the server.

        Return True when the server accepted (the job was queued or running): the future
        is then cancelled at once (``result()`` raises :class:`JobAborted`) while the job
        stops as soon as its plugin notices; True again on a cancelled future, as for any
        future.  False if the job had ended already; :class:`ServerError` if the server
        cannot be asked within the client's timeout (the future goes on; an abort that
        reaches a server answering late still stops the job, and the future then ends
        with :class:`JobAborted`).
        """
        with self._cancelling:  # one at a time: a second one is told what the first did
            if self.cancelled():
                return True
            client = self._client
            # a server that does not answer: one timeout in all, not Tango's two or three
            deadline = time.monotonic() + client._patience()
            # its job N, not another server's
            client._within(deadline, "abort", client._check_journal, client.poll_interval)
            if self.done() or self._final_state is not None:  # ended, or being settled
                return False
            client._forget(self)  # the event of the abort must not settle it meanwhile
            try:
                stopping = client._within(deadline, "abort", client._call, "abort", self.job_id)
            except JobNotFound as err:  # refused, then back on another journal: not ours
                if err.reason != "Dahu_JournalChanged":
                    client._retrack(self)
                    raise
                self._settle(State.INEXISTANT, error=err)
                return False
            except BaseException:
                client._retrack(self)
                raise
            if not (stopping and self._cancel_now()):
                client._retrack(self)  # it had ended: its outcome is fetched as usual
                return False
        self._invoke_callbacks()  # not holding the lock: they may cancel other futures
        return True

    def _invoke_callbacks(self) -> None:
        """Run the done-callbacks as ``Future`` does, logging what one raises; also a
        ``SystemExit`` or ``KeyboardInterrupt`` (``sys.exit()`` in a callback), which
        ended the client's thread running it (unless it is the main thread: raised
        there): a client whose resolvers so ended never settled a future again."""
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                _base.LOGGER.exception("exception calling callback for %r", self)
            except BaseException as err:
                if threading.current_thread() is threading.main_thread():
                    raise
                logging.getLogger("dahu.client").error(
                    "%r: a done-callback raised %s in thread %s, which goes on (sys.exit() "
                    "ends a thread, not the script: call it from the main thread)",
                    self,
                    type(err).__name__,
                    threading.current_thread().name,
                )

    def _cancel_now(self) -> bool:
        """Cancel the future as ``Future.cancel()`` does, and tell ``wait()`` and
        ``as_completed()`` at once, as an executor does when it drops a cancelled task
        (``Future.cancel()`` alone leaves them waiting); the caller runs the callbacks.
        False if the future was settled meanwhile."""
        with self._condition:  # re-entrant: the calls below take it too
            if self._state != _base.PENDING:
                return self.cancelled()
            self._state = _base.CANCELLED
            self._condition.notify_all()  # result() and exception()
            self.set_running_or_notify_cancel()  # wait() and as_completed()
        return True

    def _aborted(self) -> JobAborted:
        return JobAborted(self.job_id, State.ABORTED, "aborted by cancel()")

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The job's output dict, waiting at most ``timeout`` s (``TimeoutError`` then);
        raises :class:`JobFailed` or :class:`JobAborted` if the job did not succeed."""
        return self._wait(super().result, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's :class:`JobError` (None if it succeeded), waiting at most ``timeout`` s;
        raises :class:`JobAborted` once :meth:`cancel` cancelled the future."""
        return self._wait(super().exception, timeout)

    def _wait(self, get: Any, timeout: float | None) -> Any:
        """``get(timeout)``, the ``Future`` method, with :class:`JobAborted` for a cancelled
        future and a ``TimeoutError`` that says which job (Future's says nothing)."""
        # in a callback, its thread fetches its client's outcomes meanwhile, also while it
        # waits for a job of another client (whose callbacks may wait for the first's)
        owner = getattr(threading.current_thread(), "dahu_client", lambda: None)()
        helper = self._client if owner is None else owner
        left = helper._help(self, _wait_time(timeout))
        try:
            return get(left)
        except concurrent.futures.CancelledError as err:
            if isinstance(err, JobAborted):
                raise
            raise self._aborted() from None
        except concurrent.futures.TimeoutError:
            message = f"job {self.job_id} has not ended within {timeout:g} s"
            raise concurrent.futures.TimeoutError(message) from None

    # -- the job on the server
    @property
    def state(self) -> str:
        """The job's state: the final one once the future is done, else asked now (also
        when the client was closed before the job ended: it goes on on the server)."""
        if self.cancelled():
            return State.ABORTED
        client, deadline = self._client, time.monotonic() + self._client._patience()
        if not self.done():  # its job N, not that of a server restarted on another journal
            client._within(deadline, "getJobState", client._check_journal, client.poll_interval)
        if self._final_state is not None:
            return self._final_state
        try:
            return client._ask("getJobState", self.job_id, 0, deadline)
        except JobNotFound:  # refused, then back on another journal: the future failed
            if self._final_state is None:
                raise
            return self._final_state

    @property
    def input(self) -> dict[str, Any]:
        """The job's input as the server recorded it (with ``job_id`` and ``plugin_name``)."""
        return json.loads(self._client._ask("getJobInput", self.job_id))

    @property
    def output(self) -> dict[str, Any]:
        """The job's output: the result once it succeeded, else what the server has now."""
        if self.done() and not self.cancelled() and self.exception(0) is None:
            return self.result(0)
        return json.loads(self._client._ask("getJobOutput", self.job_id))

    @property
    def error(self) -> str:
        """The job's error text: a one-line reason, then the traceback ("" if none)."""
        return self._client._ask("getJobError", self.job_id)

    @property
    def info(self) -> dict[str, Any]:
        """Times, state and provenance of the job (``getJobInfo``): id, plugin, state,
        submitted/started/ended (epoch s), runtime (s), error line, host, pid, version,
        module_file, plugin_version."""
        return json.loads(self._client._ask("getJobInfo", self.job_id))

    # -- settled by the client
    def _settle(
        self, state: str | None, output: Any = None, error: BaseException | None = None
    ) -> None:
        """Record the outcome unless the future is done already (cancelled, closed);
        ``state`` None: the job's end is not known (:attr:`state` then asks)."""
        if self.done():
            return
        previous, self._final_state = self._final_state, state  # seen by the callbacks
        try:
            if error is None:
                self.set_result(output)
            else:
                self.set_exception(error)
        except concurrent.futures.InvalidStateError:
            self._final_state = previous  # cancelled by the user meanwhile
