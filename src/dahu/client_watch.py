"""The fallback of :mod:`dahu.client` for lost events: no future waits for an event that
will never come (events dropped, a broken subscription, a job that ended before the
client subscribed, a server restart).  Runs in one thread of each client; see
``docs/client.md``.  Also the check that the server still numbers its jobs in the
journal the client's ids came from (:func:`check_journal`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import tango

from .client_close import release_if_idle, unsubscribe_all
from .client_stop import answered, end_stopped
from .futures import JobNotFound, ServerError
from .states import State

logger = logging.getLogger("dahu.client")
# a read that did not reach the server (refused, delayed by Tango, timed out)
UNREACHED = {"API_CantConnectToDevice", "API_ServerNotRunning", "API_DeviceTimedOut"}

__all__ = ["watch", "told", "read_journal", "check_journal", "not_fetched", "fetched"]

DEFAULT_CALL_TIMEOUT = 3.0
"""Seconds a call may take with no client timeout given (Tango's default)."""


def watch(ref: Any, proxy: tango.DeviceProxy, subscriptions: list[int]) -> None:
    """The loop of the watcher thread of the ``DahuClient`` that ``ref`` (a weak
    reference) refers to, held only during a round; once it is collected without being
    closed, its ``subscriptions`` (made through ``proxy``) are removed.

    Once no event has settled a job of ours for ``poll_interval`` s: the state of the
    oldest pending job each round, of each other one once as it becomes
    ``poll_interval`` s old, and every ``sweep_interval`` s (doubling while nothing is found;
    back to the start when jobs are submitted) a check of every pending job, for those
    that ended behind a long one; while events flow, the state of the oldest pending job
    every ``max_sweep_interval`` s.  After an event error: a check of every pending job
    at once.  The thread never dies while the client is open: the futures depend on it."""
    state: dict[str, float] = {}
    device = ""
    with tango.EnsureOmniThread():
        while True:
            client = ref()
            if client is None:  # collected, never closed (maybe before this line ran)
                unsubscribe_all(proxy, subscriptions, device)
                return
            if client._closed:
                return
            if not state:
                state["period"], state["head_asked"] = client.sweep_interval, 0.0
                state["next_sweep"] = time.monotonic() + state["period"]
            wake, interval, device = client._wake, client.poll_interval, client.device
            del client
            wake.wait(interval)
            wake.clear()
            client = ref()
            try:
                if client is not None:
                    _round(client, state)
                    release_if_idle(client)  # collected once nobody holds it
            except Exception:  # a loop boundary: log it, and try again after a pause
                logger.exception("%s: the watcher's round failed", device)
            del client


def _round(client: Any, state: dict[str, float]) -> None:
    """One round of the watcher: check what needs checking until nothing does for now
    (``state``: the sweep period and the time of the next sweep, kept between rounds)."""
    while not client._closed:
        with client._lock:
            head = next(iter(client._pending.values()), None)
            fresh, client._fresh = client._fresh, False
        if head is None:
            return  # nothing to watch
        if not _journal_ok(client):  # the server is away: next round
            end_stopped(client)  # unless it has stopped: the futures end (client_stop)
            return
        now = time.monotonic()
        if fresh:
            state["period"] = client.sweep_interval
            state["next_sweep"] = min(state["next_sweep"], now + state["period"])
        if client._suspect:
            if _sweep(client, forced=True) < 0:
                end_stopped(client)
                return  # the server is away: try again after a pause
            continue
        if now - max(client._last_event, head._since) < client.poll_interval:
            state["period"] = client.sweep_interval  # events flow: leave it to them,
            state["next_sweep"] = now + state["period"]
            _check_passed(client, now)  # those whose own event may be the one lost
            if now - max(head._since, state["head_asked"]) < client.max_sweep_interval:
                return
            state["head_asked"] = now  # but for the oldest job, whose event may be lost
            if _ask_state(client, head):
                client._suspect = True  # it was: others may have been lost too
                continue
            return
        if now >= state["next_sweep"]:
            found = _sweep(client, forced=False)
            if found < 0:
                state["next_sweep"] = time.monotonic() + state["period"]
                return
            state["period"] = (
                client.sweep_interval
                if found
                else min(2 * state["period"], client.max_sweep_interval)
            )
            state["next_sweep"] = time.monotonic() + state["period"]
            continue
        _check_young(client, head, now)
        # the oldest job asked, not waited for (waitJob: the server's wait_timeout, 2 s,
        # which put off the asking of the others: a lost event cost 4 to 5 s)
        if not _ask_state(client, head):
            return


def told(client: Any, future: Any, state: str | None, event: bool) -> None:
    """``future``'s job ended (``state``: from the server, or ``success`` by a
    ``jobSuccess`` event; None when only "not a success" is known), as an event told
    (``event``) or the watcher found: once the server has stopped, its outcome unread, it
    is waited for no longer than a return (:func:`.client_stop.end_stopped`).  An event
    also tells that events flow, and that jobs of lower ids whose events did not come
    may have lost them (:func:`_check_passed`).  Called under the client's lock."""
    if event:
        client._last_event = time.monotonic()
        client._high_event = max(client._high_event, future.job_id)
        future._told = state or State.FAILURE  # a jobFailure event: failure or aborted
    elif state in State.FINAL:
        future._told = state


def _bounded(client: Any, function: Any, *args: Any) -> Any:
    """``function(*args)``, a call of the watcher, made by one of the client's caller
    threads and waited for at most the client's timeout: a server stopped by a signal
    holds a Tango call for two or three timeouts and 3 s of reconnection, and close()
    waits for the watcher (it took 9 s).  While a call left so is still held, the server
    is away: ``ServerError`` at once (the watcher would take every caller thread)."""
    if client._closed or getattr(client, "_watch_held", False):
        raise ServerError(f"{client.device} is closed or away", "API_DeviceTimedOut")
    deadline = time.monotonic() + client._patience()
    return client._within(deadline, "watch", _held, client, function, *args)


def _held(client: Any, function: Any, *args: Any) -> Any:
    client._watch_held = True
    try:
        return function(*args)
    finally:
        client._watch_held = False


def _command(client: Any, command: str, job_id: int) -> Any:
    return client._proxy().command_inout(command, job_id)


def _journal_ok(client: Any) -> bool:
    """:func:`check_journal` for the watcher, bounded (False: the server is away); a
    server without ``journalId`` (an earlier Dahu: nothing to check) is pinged, so that
    its stop is seen too (the futures whose end it did not tell waited for ever)."""
    try:
        ok = _bounded(client, check_journal, client, 0.0)
        if client._journal is None:
            _bounded(client, lambda: client._proxy().ping())
    except (ServerError, tango.DevFailed):
        client._journal_seen = -math.inf
        return False
    if ok:
        answered(client)
    return ok


def _ask_state(client: Any, future: Any) -> bool:
    """Ask the state of ``future``'s job (``getJobState``); True if it has ended."""
    try:
        state = _bounded(client, _command, client, "getJobState", future.job_id)
    except ServerError:  # no answer in time, or no proxy could be made: next round
        client._journal_seen = -math.inf
        return False
    except tango.DevFailed as err:
        if err.args[0].reason == "Dahu_UnknownJob":  # the resolver reports it
            return client._ended(future.job_id, None)
        client._journal_seen = -math.inf  # timed out, or the server is away: check it
        return False  # next round
    # False when its event came as the server answered: not an event lost
    return state in State.FINAL and client._ended(future.job_id, state)


def _check_passed(client: Any, now: float) -> None:
    """Ask the state of the pending jobs that an event of a later job of ours passed:
    first once the passing was seen ``poll_interval`` s ago (events may come a little
    out of order), then every ``sweep_interval`` s, doubling up to ``max_sweep_interval``
    while the job runs.  One call for each such job only (a long one, a lost event),
    not for each pending job: those queued behind a long job are not passed."""
    with client._lock:
        high, passed = client._high_event, []
        for future in client._pending.values():  # oldest first: in the order of the ids
            if future.job_id > high:
                break
            passed.append(future)
    found = 0
    for future in passed:
        due, period = future._checked or (now + client.poll_interval, 0.0)
        if future._checked is None or now < due:
            future._checked = due, period
            continue
        if client._closed:
            return
        if _ask_state(client, future):
            found += 1
            continue
        period = min(max(2 * period, client.sweep_interval), client.max_sweep_interval)
        future._checked = time.monotonic() + period, period
    if found:
        logger.info("%s: %d job(s) ended without an event", client.device, found)


def _check_young(client: Any, head: Any, now: float) -> None:
    """No event told the client of a job for ``poll_interval`` s: ask the state of each
    pending job but ``head`` once, as it becomes ``poll_interval`` s old (its event may
    be the one lost: a second or two late, as when events flow, not the next sweep's
    ``sweep_interval`` s and more); later ends are the sweeps' to find."""
    cutoff = now - client.poll_interval
    with client._lock:
        young = [
            f
            for f in client._pending.values()
            if f is not head and not f._asked and f._since <= cutoff
        ]
    found = 0
    for future in young:
        if client._closed:
            return
        future._asked = True
        found += _ask_state(client, future)
    if found:
        logger.info("%s: %d job(s) ended without an event", client.device, found)


def _sweep(client: Any, forced: bool) -> int:
    """Ask the state of every pending job (older than ``poll_interval``); return how
    many had ended unnoticed, -1 if the server could not be asked (a forced sweep
    is then tried again)."""
    client._suspect = False
    cutoff = time.monotonic() - (0 if forced else client.poll_interval)
    with client._lock:
        futures = [f for f in client._pending.values() if f._since <= cutoff]
    found = 0
    for future in futures:
        if client._closed:
            break
        future._asked = True  # (not asked again as young: _check_young)
        try:
            state = _bounded(client, _command, client, "getJobState", future.job_id)
        except (tango.DevFailed, ServerError) as err:  # no answer, or no proxy made
            if isinstance(err, ServerError) or err.args[0].reason != "Dahu_UnknownJob":
                client._suspect = client._suspect or forced  # the server is away
                client._journal_seen = -math.inf
                return -1
            state = None
        if state is None or state in State.FINAL:  # (its event may have come meanwhile)
            found += client._ended(future.job_id, state)
    if found:
        logger.info("%s: %d job(s) ended without an event", client.device, found)
    return found


def not_fetched(client: Any, future: Any, err: ServerError) -> None:
    """The outcome of ``future`` could not be fetched (it is asked again): a warning for
    the first of an outage (a server restarting, stopped), not one for each of its jobs.

    A fetch that fails less than a call's timeout after another one succeeded may have
    been asked before that, during the outage it ended: it starts no new one (a second
    warning, and a second "answers again", came so now and then)."""
    with client._lock:
        late = time.monotonic() - getattr(client, "_answered", -math.inf) < (
            client.timeout or DEFAULT_CALL_TIMEOUT
        )
        client._unfetched += not late
        first, pending = client._unfetched == 1 and not late, len(client._pending) + 1
        if first:  # what its end is told as (fetched)
            client._slow = err.reason == "API_DeviceTimedOut"
    if first and err.reason == "API_DeviceTimedOut":  # sent too slowly, or no answer
        logger.warning(
            "%s: job %s: %s (asked again, allowed %g s: a large output, or a server that "
            "does not answer; a DahuClient timeout of more allows more at the first try)",
            client.device,
            future.job_id,
            err,
            future._patience / 1000,
        )
    elif first:
        logger.warning(
            "%s: job %s: %s (asked again, as the outcomes of the %d pending job(s) are, "
            "until the server answers)",
            client.device,
            future.job_id,
            err,
            pending,
        )
    else:
        logger.debug("%s: job %s: %s", client.device, future.job_id, err)


def fetched(client: Any) -> None:
    """An outcome was fetched: the end of an outage, if there was one (or of a fetch
    asked again with more time: not told as a server back)."""
    if not client._unfetched:  # the usual case: no lock taken
        return
    with client._lock:
        failed, client._unfetched = client._unfetched, 0
        client._answered = time.monotonic()  # the end of an outage
        client._stop_seen = False
    if failed:
        logger.warning(
            "%s: %s (%d fetch(es) of an outcome had failed meanwhile)",
            client.device,
            "an outcome asked again with more time arrived"
            if getattr(client, "_slow", False)
            else "the server answers again",
            failed,
        )


def read_journal(proxy: tango.DeviceProxy) -> str | None:
    """The server's ``journalId``; None for a server that has none (an earlier Dahu), ""
    when it cannot tell now (its journal cannot be written: the token is made on first
    use).  Raises ``DevFailed`` when the server cannot be reached."""
    try:
        return proxy.read_attribute("journalId").value
    except (tango.ConnectionFailed, tango.CommunicationFailed):
        raise
    except tango.DevFailed as err:
        if {error.reason for error in err.args} & UNREACHED:  # Tango's own: not the server's
            raise  # (a refused read "delayed" was a server that cannot tell: not checked)
        return None if err.args[0].reason == "API_AttrNotFound" else ""


def check_journal(client: Any, max_age: float) -> bool:
    """Make sure the server still numbers its jobs in the journal the client's job ids
    come from, unless it was seen less than ``max_age`` s ago (``math.inf``: only after
    a lost connection).  A server restarted on another journal (a fresh work directory)
    gives the same ids to other jobs: the pending futures fail with
    :class:`JobNotFound` (``Dahu_JournalChanged``) instead of taking their outcome.
    False if the server could not be asked (it is away)."""
    started = time.monotonic()
    if client._journal is None or started - client._journal_seen < max_age:
        return True
    try:
        token = read_journal(client._proxy())
    except (tango.DevFailed, ServerError):
        client._journal_seen = -math.inf
        return False
    with client._lock:
        client._journal_seen = started
        if token in (client._journal, None, ""):  # the same, or the server cannot tell
            return True
        previous, client._journal = client._journal, token
        if not previous:  # not known until now: nothing to compare with
            return True
        pending = list(client._pending.values())
        client._pending.clear()
    logger.warning(
        "%s: the server now numbers its jobs in another journal (%s, was %s): %d job(s) lost",
        client.device,
        token,
        previous,
        len(pending),
    )
    for future in pending:  # first: a callback of one may cancel() another, not yet settled
        future._final_state = State.INEXISTANT  # which must not abort the new server's job
    for future in pending:
        job_id = future.job_id
        reason = (
            f"job {job_id}: the server {client.device} now has another journal (restarted "
            f"on another work directory?): its job {job_id} is another job"
        )
        future._settle(State.INEXISTANT, error=JobNotFound(reason, "Dahu_JournalChanged"))
    return True
