"""``dahu.client`` at the edges: answers Tango cannot carry, several threads at one
future, jobs that time out (against a real ``dahu_server`` process)."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import tango

from dahu import client_probe, client_watch
from dahu.client import ClientClosed, DahuClient, JobAborted, JobFailed, JobNotFound, ServerError
from dahu.client_args import chunks
from dahu.inputs import MAX_BATCH_JOBS, MAX_INPUT_CHARS

from .conftest import running_server, wait_stopped

BULKY = '''\
"""A plugin with an output as large as asked."""
from dahu.plugin import plugin_from_function


def text(n=1):
    """Return n characters."""
    return "b" * int(n)


plugin_from_function(text)
'''


def heard_of_a_job(dahu: DahuClient) -> None:
    """Submit ``example.square`` jobs until the event of one settles its future: a client
    whose watcher is kept idle (``poll_interval=60``) finds a lost event 60 s late, and
    the event of a job that ends before the client's subscription has reached the server
    is lost (once in 7 runs at load 39: "job 7 has not ended within 30 s")."""
    deadline = time.monotonic() + 30
    while True:
        future = dahu.submit("example.square", x=2)
        try:
            assert future.result(timeout=1)["result"] == 4
            return
        except concurrent.futures.TimeoutError:
            assert time.monotonic() < deadline, "no event reached the client"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server whose Tango messages are at most 1 MB, with the plugin ``bulky.text``."""
    base = tmp_path_factory.mktemp("client_limits")
    (base / "plugins").mkdir()
    (base / "plugins" / "bulky.py").write_text(BULKY)
    extra = ["--plugins", str(base / "plugins"), "-ORBgiopMaxMsgSize", "1000000"]
    with running_server(base, "test/dahu/limits", extra_args=extra) as local:
        yield local


def test_an_output_too_large_for_tango_fails_the_future(small_server):
    # bug: getJobOutput failed with MARSHAL_MessageSizeExceedLimitOnServer and the client
    # asked again every second or so, for ever: result() never returned (the server
    # encoded the whole output each time) and the log filled with the same warning
    with DahuClient(small_server.url, poll_interval=0.2) as dahu:
        future = dahu.submit("bulky.text", n=2_000_000)
        with pytest.raises(ServerError) as info:
            future.result(timeout=30)
        message = str(info.value)
        assert message.startswith(f"job {future.job_id}: getJobOutput: ")
        # since 2026-11-30 the server refuses it itself, below the limit of its messages
        # (its -ORBgiopMaxMsgSize), saying where to read it; hopeless: asked once
        assert info.value.reason == "Dahu_TooLarge" and "\n" not in message
        assert f"the output of job {future.job_id} is 2 MiB, more than a Tango command " in message
        assert f"_bulky.text.out or with dahu-jobs show {future.job_id} -w " in message
        assert future.state == "success"  # the job itself succeeded: its output is kept
        assert dahu.pending == 0
        small = dahu.submit("bulky.text", n=10)  # the client goes on
        assert small.result(timeout=30)["result"] == "b" * 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("client_cancel"), "test/dahu/cancel") as local:
        yield local


def test_threads_cancelling_one_future_all_hear_true(server):
    # bug: the threads that lost the race got False ("the job had ended already") although
    # the job was aborted and the future cancelled; a second cancel() could also requeue
    # the future, so that the first one's cancel returned False too
    with DahuClient(server.url) as dahu:
        for _ in range(3):
            future = dahu.submit("example.sleep", t=60)
            while future.state != "running":
                time.sleep(0.01)
            called = []
            future.add_done_callback(called.append)
            start = threading.Barrier(6)
            answers = []

            def cancel(future=future, start=start, answers=answers):
                start.wait()
                answers.append(future.cancel())

            threads = [threading.Thread(target=cancel) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert answers == [True] * 6
            assert future.cancelled() and called == [future]
            with pytest.raises(JobAborted, match="aborted by cancel"):
                future.result(0)


def test_a_server_that_does_not_answer_is_named_as_such(server):
    # bug: the reason was API_CorbaException and the message CORBA's words alone,
    # "startJob: TRANSIENT CORBA system exception: TRANSIENT_CallTimedout"
    with DahuClient(server.url, timeout=0.5, poll_interval=60) as dahu:  # watcher idle
        heard_of_a_job(dahu)
        slow = dahu.submit("example.sleep", t=60)
        os.kill(server.process.pid, signal.SIGSTOP)  # a server that does not answer
        try:
            wait_stopped(server.process.pid)  # not answering a call sent right after
            # bug: each took Tango's 3 s of reconnection (state 4 s), not the client's 0.5 s
            for call in (
                lambda: dahu.submit("example.square", x=3),
                lambda: slow.state,
                lambda: slow.info,
                lambda: dahu.job(slow.job_id - 1),
            ):
                started = time.monotonic()
                with pytest.raises(ServerError) as info:
                    call()
                assert time.monotonic() - started < 1.0
                assert info.value.reason == "API_DeviceTimedOut" and "\n" not in str(info.value)
            # bug: cancel() took 3.5 s or more (Tango's timeout, then its reconnection's
            # 3 s, for the journal check and again for the abort), not the client's 0.5 s
            started = time.monotonic()
            with pytest.raises(ServerError) as cancelled:
                slow.cancel()
            assert time.monotonic() - started < 2.0
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert cancelled.value.reason == "API_DeviceTimedOut"
        assert str(cancelled.value) == (
            f"abort: the device {server.url} did not answer within 0.5 s "
            "(is its server running, at this address?)"
        )
        # the server answers again: the job can be cancelled (unless the abort, had the
        # server answered before Tango gave up on it, already stopped the job)
        slow.cancel()
        with pytest.raises(JobAborted, match="aborted by (a client|cancel)"):
            slow.result(timeout=30)
        assert str(info.value) == (
            f"getJobInfo: the device {server.url} did not answer within 0.5 s "
            "(is its server running, at this address?)"
        )


def test_a_thread_s_first_call_to_a_stopped_server_does_not_freeze_the_others(server):
    # bug: a thread's first call made its proxy from the device's name, which connects
    # holding Python's lock: with the server stopped every other thread of the client
    # stood still 3 s (the calls above, bounded to 0.5 s, took 3 to 10 s now and then)
    with DahuClient(server.url, timeout=0.5, poll_interval=60) as dahu:
        heard_of_a_job(dahu)
        gaps, calls = [], []

        def first_call() -> None:  # a thread of the client that has no proxy yet
            started = time.monotonic()
            with pytest.raises(tango.DevFailed):
                dahu._proxy().command_inout("getJobState", 1)
            calls.append(time.monotonic() - started)

        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            wait_stopped(server.process.pid)
            caller = threading.Thread(target=first_call)
            caller.start()
            last = time.monotonic()
            while caller.is_alive():  # this thread goes on meanwhile
                time.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert len(calls) == 1 and max(gaps) < 1.0, (calls, max(gaps))
        assert dahu.submit("example.square", x=3).result(timeout=30)["result"] == 9


def test_a_client_of_a_stopped_server_fails_in_its_timeout_freezing_nobody(server):
    # bug: DahuClient() took 9 s to fail with timeout=0.5 (6 s with the default): making
    # its first DeviceProxy waited 3 s holding Python's lock (every thread of the script
    # stood still), then its first call took Tango's reconnection
    gaps, done = [], threading.Event()

    def tick() -> None:  # another thread of the user's process
        last = time.monotonic()
        while not done.is_set():
            time.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        wait_stopped(server.process.pid)
        ticker = threading.Thread(target=tick)
        ticker.start()
        started = time.monotonic()
        with pytest.raises(ServerError) as info:
            DahuClient(server.url, timeout=0.5)
        took = time.monotonic() - started
        done.set()
        ticker.join(30)
        # nor is it a server that has stopped for good (the failures told would end)
        assert client_probe.stopped(server.url, 0.2) is False
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert took < 2.0 and max(gaps) < 1.0, (took, max(gaps))
    assert client_probe.stopped(server.url, 5) is False  # it answers
    *start, name = server.url.split("/", 3)  # bug: a name in capitals was a stopped server
    assert (
        client_probe.stopped("/".join([*start, name.upper()]).replace("#DBASE=NO", "#dbase=no"), 5)
        is False
    )
    assert client_probe.stopped(server.url.replace("/dahu/", "/gone/"), 5) is True
    assert info.value.reason == "API_DeviceTimedOut"
    assert str(info.value) == (
        f"cannot connect to {server.url}: its server at 127.0.0.1:{server.port} does not "
        "answer (nothing within 0.5 s: is it stopped?)"
    )
    with DahuClient(server.url, timeout=0.5) as dahu:  # a server that answers: no change
        assert dahu.submit("example.square", x=5).result(timeout=30)["result"] == 25


def test_a_database_that_does_not_answer_is_named_unless_another_one_does(server, monkeypatch):
    # a database stopped by a signal made a client take minutes to fail (test_tango_db);
    # Tango tries the next database of TANGO_HOST after a silent one: not refused then
    with socket.socket() as silent:  # connections taken (its backlog), never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        monkeypatch.setenv("TANGO_HOST", f"127.0.0.1:{port}")
        with pytest.raises(ServerError) as info:
            client_probe.probe("id00/dahu/1", 0.2)
        assert str(info.value) == (
            f"cannot connect to id00/dahu/1: its Tango database at 127.0.0.1:{port} does not "
            f"answer (nothing within 0.2 s: is it stopped?)"
        )
        with socket.socket() as slow:  # answers (closes) a moment after it is asked
            slow.bind(("127.0.0.1", 0))
            slow.listen()

            def answer_late():
                connection, _ = slow.accept()
                with connection:
                    connection.recv(100)
                    time.sleep(0.02)

            threading.Thread(target=answer_late, daemon=True).start()
            second = f"127.0.0.1:{slow.getsockname()[1]}"
            monkeypatch.setenv("TANGO_HOST", f"127.0.0.1:{port},{second}")
            # (bug: the second one had only what the first one left of the 0.5 s; 0.2 s
            # and an answer 0.1 s late failed now and then on a loaded machine)
            assert client_probe.silent_database("id00/dahu/1", 0.5) is None
        assert client_probe.silent_database(server.url, 0.2) is None  # no database


def test_close_with_the_server_stopped_takes_about_the_client_s_timeout(server, monkeypatch):
    # bug: close() waits for the watcher, whose call to a server stopped by a signal took
    # Tango's timeout and its 3 s of reconnection: 3.5 s with timeout=0.5, 9 s with the
    # default (and a close(timeout) shorter than that left the call in a daemon thread:
    # the script then died at exit, SIGSEGV or "terminate called")
    stopped, asked = threading.Event(), threading.Event()
    real_read = client_watch.read_journal

    def read_journal(proxy):
        if stopped.is_set():
            asked.set()
        return real_read(proxy)

    monkeypatch.setattr(client_watch, "read_journal", read_journal)
    dahu = DahuClient(server.url, timeout=0.5, poll_interval=0.05)
    slow = dahu.submit("example.sleep", t=60)  # pending: the watcher asks every round
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        wait_stopped(server.process.pid)
        stopped.set()
        assert asked.wait(10)  # the watcher's call to the stopped server has started
        started = time.monotonic()
        dahu.close()
        took = time.monotonic() - started
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    tango.DeviceProxy(server.url).abort(slow.job_id)
    assert took < 2.0, took


def test_close_does_not_wait_for_a_fetch_the_stopped_server_holds(server):
    # bug: a resolver already fetching an outcome as the server was stopped by a signal
    # held close() for Tango's timeouts and 3 s of reconnection: 3.9 s with timeout=0.5
    # (and it logged "asked again ... until the server answers" after close() returned)
    dahu = DahuClient(server.url, timeout=0.5, resolvers=1, poll_interval=60)
    inside, release = threading.Event(), threading.Event()
    real_call = dahu._call

    def held_call(command, argument=None, millis=0):
        if command == "getJobOutput" and not inside.is_set():
            inside.set()
            assert release.wait(30)  # then asks the stopped server
        return real_call(command, argument, millis)

    dahu._call = held_call
    future = dahu.submit("example.square", x=3)
    assert inside.wait(30)
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        wait_stopped(server.process.pid)
        release.set()
        started = time.monotonic()
        dahu.close()
        took = time.monotonic() - started
        assert future.done()  # failed at once, not left pending by close()
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert took < 2.0, took
    with pytest.raises(ClientClosed):
        future.result(0)
    dahu._threads[0].join(30)  # its call, left to Tango, ends: the thread with it
    assert not dahu._threads[0].is_alive()


def test_a_close_shorter_than_a_callback_still_stops_its_thread(server):
    # bug: close() drained the stop signal of a resolver it had not waited for (running a
    # done-callback past close's timeout): the thread waited for ever, and the script's
    # exit waited for it (3 timeouts and 6 s)
    dahu = DahuClient(server.url, resolvers=1)
    entered, release = threading.Event(), threading.Event()
    future = dahu.submit("example.square", x=2)
    future.add_done_callback(lambda _: (entered.set(), release.wait(30)))
    assert entered.wait(30)
    dahu.close(timeout=0)
    release.set()
    dahu._threads[0].join(30)
    assert not dahu._threads[0].is_alive()


def test_the_exit_waits_for_the_threads_of_a_closed_client_still_in_a_call(monkeypatch):
    # bug: close(timeout) returned with resolver threads still inside a Tango call to a
    # server stopped by a signal; a script ending then died as Python finalized while
    # they were (SIGABRT, "terminate called without an active exception", 3 times in 3)
    from dahu import client_calls

    calling = threading.Event()

    class Closed:  # a client closed, one of its threads still in a device call
        timeout = 0.5
        _threads = [threading.Thread(target=calling.wait, args=(30,), daemon=True)]
        _in_call: dict = {}

        def close(self, timeout):
            pass

    client = Closed()
    client._threads[0].start()
    monkeypatch.setattr(client_calls, "_open", {client})
    threading.Timer(0.2, calling.set).start()  # the call ends (the server answers again)
    client_calls._close_all()  # what runs at exit
    assert not client._threads[0].is_alive()


def _devfailed(*errors: tuple[str, str]) -> tango.DevFailed:
    stack = []
    for reason, desc in errors:
        error = tango.DevError()
        error.reason, error.desc, error.origin = reason, desc, "Connection::command_inout()"
        stack.append(error)
    return tango.DevFailed(*stack)


def test_a_call_that_timed_out_has_the_reason_api_device_timed_out():
    # the stack PyTango 10 raises for a call past the client's timeout; the reason was
    # API_CorbaException where the documentation says API_DeviceTimedOut
    err = _devfailed(
        ("API_CorbaException", "TRANSIENT CORBA system exception: TRANSIENT_CallTimedout"),
        ("API_DeviceTimedOut", "Timeout (3000 mS) exceeded on device d/e/f, command startJob"),
    )
    error = ServerError.from_devfailed(err, "startJob")
    assert error.reason == "API_DeviceTimedOut"
    assert str(error) == (
        "startJob: Timeout (3000 mS) exceeded on device d/e/f, command startJob: "
        "TRANSIENT_CallTimedout"
    )
    unknown = ServerError.from_devfailed(_devfailed(("Dahu_UnknownJob", "no job 5")), "abort")
    assert isinstance(unknown, JobNotFound) and str(unknown) == "abort: no job 5"


def test_a_call_to_a_server_that_no_longer_serves_the_device_says_what_to_check():
    # the stack PyTango 10 raises for a call in the last moment of a server's stop (its
    # device deleted, its port still open): it said only "OBJECT_NOT_EXIST_NoMatch"
    err = _devfailed(
        ("API_CorbaException", "OBJECT_NOT_EXIST CORBA system exception: OBJECT_NOT_EXIST_NoMatch"),
        ("API_DeviceNotDefined", "Failed to connect to device test/dahu/m"),
    )
    error = ServerError.from_devfailed(err, "startJob")
    assert error.reason == "API_DeviceNotDefined"
    assert str(error) == (
        "startJob: Failed to connect to device test/dahu/m: OBJECT_NOT_EXIST_NoMatch "
        "(is its server stopping, or is the device served elsewhere?)"
    )


def test_a_journal_id_read_that_did_not_reach_the_server_is_not_a_check():
    # bug: a read Tango did not even try ("The connection request was delayed", a plain
    # DevFailed) counted as a server that cannot tell its journal: the check passed, and
    # was not made again for poll_interval s, while the server back was another one
    class Proxy:
        def __init__(self, *errors):
            self.errors = errors

        def read_attribute(self, name):
            raise _devfailed(*self.errors)

    delayed = ("API_CantConnectToDevice", "The connection request was delayed.")
    with pytest.raises(tango.DevFailed):
        client_watch.read_journal(Proxy(delayed))
    timed_out = ("API_DeviceTimedOut", "Timeout (3000 mS) exceeded on device d/e/f")
    with pytest.raises(tango.DevFailed):
        client_watch.read_journal(Proxy(("API_CorbaException", "TRANSIENT"), timed_out))
    # the server's own answers: no such attribute (an earlier Dahu), or it cannot tell
    assert client_watch.read_journal(Proxy(("API_AttrNotFound", "no journalId"))) is None
    assert client_watch.read_journal(Proxy(("PyDs_PythonError", "no identity yet"))) == ""


def test_a_timeout_under_a_millisecond_is_one_not_none(server):
    # bug: timeout=0.0004 became Tango's 0 ms, which is no timeout at all: a call waited
    # for as long as the server took, the opposite of what was asked
    with DahuClient(server.url) as dahu:
        job = dahu.submit("example.sleep", t=30)
        dahu.timeout = 0.0004  # as if given to DahuClient (whose own calls might time out)
        try:
            proxy = dahu._new_proxy()
            millis = proxy.get_timeout_millis()
            assert millis == 1
            proxy.set_timeout_millis(3000)  # what PyTango asks once first, not timed here
            proxy.command_query("waitJob")
            proxy.set_timeout_millis(millis)
            with pytest.raises(tango.DevFailed) as info:
                proxy.command_inout("waitJob", job.job_id)  # the server waits for seconds
            # timed out as it called, or (a loaded machine, once) as it connected again
            reasons = {error.reason for error in info.value.args}
            assert reasons & {"API_DeviceTimedOut", "API_CantConnectToDevice"}, reasons
        finally:
            dahu.timeout = None  # cancel()'s calls could not be made in under 1 ms
            assert job.cancel()


def test_a_job_that_times_out_is_aborted(server):
    # docs/client.md said JobFailed ("the plugin raised, or timed out"): the server makes
    # a job whose time is up "aborted", so the future raises JobAborted, and exception()
    # returns it (the future itself was not cancelled)
    with DahuClient(server.url) as dahu:
        future = dahu.submit("example.sleep", t=60, job_timeout=0.5)
        with pytest.raises(JobAborted) as info:
            future.result(timeout=30)
        assert info.value.reason == "timed out after 0.5 s"
        assert future.state == "aborted" and not future.cancelled()
        assert future.exception(0) is info.value


def test_a_done_callback_may_wait_for_another_job(server):
    # bug: a callback runs in one of the client's threads, the ones that fetch outcomes;
    # callbacks waiting for other jobs of the client (result()) left no thread to fetch
    # them: each waited for its whole timeout, or for ever
    with DahuClient(server.url, resolvers=1) as dahu:
        results, errors = [], []

        def chain(future):
            try:
                then = dahu.submit("example.square", x=future.result()["result"])
                results.append(then.result(timeout=10)["result"])
                then.exception(timeout=10)
            except Exception as err:  # a callback's error would only be logged
                errors.append(repr(err))

        futures = dahu.map("example.square", [{"x": x} for x in range(4)])
        for future in futures:
            future.add_done_callback(chain)
        deadline = time.monotonic() + 60
        while len(results) + len(errors) < 4:
            assert time.monotonic() < deadline, (results, errors)
            time.sleep(0.01)
        assert errors == [] and sorted(results) == [x**4 for x in range(4)]


def test_done_callbacks_of_two_clients_may_wait_for_each_other_s_jobs(server):
    # bug: a callback waiting for a job of another client fetched nothing meanwhile: with
    # the callbacks of each client waiting for a job of the other, every resolver of both
    # waited, and each callback ran out its timeout
    with (
        DahuClient(server.url, resolvers=1) as first,
        DahuClient(server.url, resolvers=1) as second,
    ):
        results, errors = [], []

        def back(future):  # a callback of second: waits for a job of first
            try:
                results.append(first.submit("example.square", x=2).result(timeout=10)["result"])
            except Exception as err:  # a callback's error would only be logged
                errors.append(repr(err))

        def forth(future):  # a callback of first: waits for a job of second
            try:
                then = second.submit("example.square", x=3)
                then.add_done_callback(back)
                results.append(then.result(timeout=10)["result"])
            except Exception as err:
                errors.append(repr(err))

        for future in first.map("example.square", [{"x": x} for x in range(4)]):
            future.add_done_callback(forth)
        deadline = time.monotonic() + 60
        while len(results) + len(errors) < 8:
            assert time.monotonic() < deadline, (results, errors)
            time.sleep(0.01)
        assert errors == [] and sorted(results) == [4] * 4 + [9] * 4


def test_events_kept_while_submissions_overlap_are_bounded(small_server, monkeypatch):
    # bug: events of jobs not (yet) ours are kept while a submission is in flight, and
    # cleared only when none is: threads whose submissions always overlap made the store
    # grow with the ids of every other client's jobs, for as long as the client lived
    import dahu.client

    monkeypatch.setattr(dahu.client, "EARLY_MAX", 5)
    with DahuClient(small_server.url) as ours, DahuClient(small_server.url) as theirs:
        ours._begin()  # a submission in flight for the whole test
        try:
            futures = theirs.map("bulky.text", [{"n": 1}] * 20)
            assert [f.result(timeout=30)["result"] for f in futures] == ["b"] * 20
            last = max(f.job_id for f in futures)  # events come in order: the last one
            deadline = time.monotonic() + 30
            while last not in ours._early and time.monotonic() < deadline:
                time.sleep(0.05)  # the events reach our client too: poll its store
            assert len(ours._early) == 5 and set(ours._early) <= {f.job_id for f in futures}
        finally:
            ours._track([], "bulky.text")
        assert ours._early == {}


def test_a_cancel_that_overlaps_close_does_not_leave_its_future_pending(server):
    # bug: cancel() stops following the future while it asks the server; when the answer
    # was "it had ended" (or an error) after close() had run, the future was handed to
    # resolver threads that were gone: result() without a timeout waited for ever
    dahu = DahuClient(server.url)
    future = dahu.submit("example.sleep", t=60)
    asked, closed = threading.Event(), threading.Event()
    real_call = dahu._call

    def slow_abort(command, argument=None):
        if command != "abort":
            return real_call(command, argument)
        asked.set()
        assert closed.wait(30)  # the server answers after close() returned
        return False  # "the job had ended already"

    dahu._call = slow_abort
    answers = []
    canceller = threading.Thread(target=lambda: answers.append(future.cancel()))
    canceller.start()
    assert asked.wait(30)
    dahu.close()
    closed.set()
    canceller.join(30)
    assert answers == [False]
    with pytest.raises(ClientClosed):
        future.result(timeout=10)
    assert real_call("abort", future.job_id)


def test_outcomes_left_in_the_queue_at_close_are_not_asked_for(server):
    # bug: the resolvers went on fetching every outcome queued before close() (their
    # futures failed with ClientClosed all the same): with the server stopped by a signal
    # each call took Tango's timeout and reconnection, and close() its whole 10 s
    dahu = DahuClient(server.url, resolvers=1)
    inside, release, asked_after_close = threading.Event(), threading.Event(), []
    real_call = dahu._call

    def held_call(command, argument=None, millis=0):
        if dahu._closed:
            asked_after_close.append(argument)
        elif not inside.is_set():  # the first outcome's fetch waits: the others queue up
            inside.set()
            assert release.wait(30)
        return real_call(command, argument, millis)

    dahu._call = held_call
    futures = dahu.map("example.square", [{"x": x} for x in range(20)])
    assert inside.wait(30)
    deadline = time.monotonic() + 30
    while dahu.pending:  # every job's event has come: its outcome is queued
        assert time.monotonic() < deadline, dahu.pending
        time.sleep(0.01)
    closer = threading.Thread(target=dahu.close)
    closer.start()
    while not dahu._closed:
        time.sleep(0.001)
    release.set()
    closer.join(30)
    assert asked_after_close == []
    assert all(future.done() for future in futures)
    failed = [future for future in futures if isinstance(future.exception(0), ClientClosed)]
    assert len(failed) >= 19  # the first one's fetch may end as a success


def test_the_state_of_a_future_failed_by_the_retry_of_its_own_call_is_inexistant(server):
    # bug: state's getJobState, refused then made again once the server was back on
    # another journal, raised JobNotFound although the future had failed, "inexistant"
    with DahuClient(server.url, poll_interval=300, sweep_interval=300) as dahu:
        future = dahu.submit("example.sleep", t=600)
        real_ask = dahu._ask

        def restarted(command, argument=None, millis=0, deadline=0.0):
            if command != "getJobState":
                return real_ask(command, argument, millis, deadline)
            error = JobNotFound(f"job {argument}: another journal", "Dahu_JournalChanged")
            future._settle("inexistant", error=error)  # what the journal check does
            raise error

        dahu._ask = restarted
        dahu._journal_seen = time.monotonic()  # checked just before: not again
        assert future.state == "inexistant"
        with pytest.raises(JobNotFound):
            future.result(0)
        assert real_ask("abort", future.job_id)


def test_a_cancel_as_close_shuts_its_caller_thread_down_answers_false(server):
    # bug: a cancel() that found the client open, then its caller thread shut down by
    # close(), raised RuntimeError: cannot schedule new futures after shutdown
    dahu = DahuClient(server.url)
    future = dahu.submit("example.sleep", t=60)
    callers = dahu._caller()  # what the cancel() found, just before close()
    dahu.close()
    dahu._caller = lambda: callers
    assert future.cancel() is False  # ClientClosed: the job goes on
    assert future.state in ("starting", "running")
    assert dahu._call("abort", future.job_id)


def test_a_map_past_one_call_is_refused_whole_or_not_at_all(server):
    # bug: a map whose inputs need several startJobs calls sent them one by one; an input
    # the server refuses in a later call raised after the jobs of the first call had
    # started, and the caller had no future for them (nor their ids)
    proxy = tango.DeviceProxy(server.url)
    deep: dict = {}
    for _ in range(70):
        deep = {"a": deep}
    big = "b" * 9_000_000  # two of them pass the 16 MiB of one call
    with DahuClient(server.url) as dahu:
        last = proxy.startJob(["example.square", "{}"])
        with pytest.raises(ServerError) as info:
            dahu.map("example.noop", [{"x": big}, {"x": big}, {"x": deep}])
        assert proxy.startJob(["example.square", "{}"]) == last + 1  # no job started
        assert str(info.value) == (
            "startJobs: job input is nested deeper than 64 levels (inputs[2])"
        )
        assert info.value.reason == "Dahu_InvalidInput"
        futures = dahu.map("example.noop", [{"x": big}, {"x": "c"}, {"x": big}])
        assert [len(f.result(timeout=60)["result"]) for f in futures] == [9_000_000, 1, 9_000_000]


def test_a_map_is_split_under_the_server_s_cap_of_jobs_per_call():
    # the server refuses a startJobs of more than MAX_BATCH_JOBS jobs: map splits them
    texts = ["{}"] * (MAX_BATCH_JOBS + 1)
    assert [len(batch) for batch in chunks(texts, MAX_INPUT_CHARS - 2)] == [MAX_BATCH_JOBS, 1]
    assert [len(batch) for batch in chunks(["{}"] * 5, 100, most=2)] == [2, 2, 1]


class _SlowOutputs:
    """A proxy whose getJobOutput takes ``needed`` ms to arrive: with a shorter timeout,
    it times out (as a large output on a busy machine or network does)."""

    def __init__(self, proxy, needed=15_000):
        self._proxy = proxy
        self.needed = needed
        self.asked: list[int] = []  # the timeout of each getJobOutput, ms

    def __getattr__(self, name):
        return getattr(self._proxy, name)

    def command_inout(self, command, *args):
        millis = self._proxy.get_timeout_millis()
        if command == "getJobOutput":
            self.asked.append(millis)
        if command == "getJobOutput" and millis < self.needed:
            raise _devfailed(
                ("API_CorbaException", "TRANSIENT CORBA system exception: TRANSIENT_CallTimedout"),
                ("API_DeviceTimedOut", f"Timeout ({millis} mS) exceeded, command getJobOutput"),
            )
        return self._proxy.command_inout(command, *args)


def test_an_output_slower_to_arrive_than_the_timeout_is_read_all_the_same(server, caplog):
    # bug: getJobOutput past the client's timeout was asked again, with the same timeout,
    # every second or so for ever: result() never returned, and the server encoded and
    # sent the whole output each time
    with DahuClient(server.url, timeout=3, poll_interval=0.1) as dahu:
        real = dahu._new_proxy
        dahu._new_proxy = lambda: _SlowOutputs(real())
        future = dahu.submit("example.square", x=6)
        assert future.result(timeout=10)["result"] == 36
        assert dahu._proxy().get_timeout_millis() == 3000  # only that call had more time
    # (bug: its warning said the server was away: "... until the server answers")
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said[0].endswith(
        "(asked again, allowed 20 s: a large output, or a server that does not answer; "
        "a DahuClient timeout of more allows more at the first try)"
    )
    # bug: its arrival was told as the end of an outage: "the server answers again"
    assert said[1:] == [
        f"{server.url}: an outcome asked again with more time arrived (1 fetch(es) of an "
        "outcome had failed meanwhile)"
    ]


def test_a_large_output_is_read_at_the_first_try_without_a_warning(server, caplog):
    # bug: a 100 MB output took 5 to 7 s to arrive on a busy machine, past the client's
    # 3 s: its reading failed, with a warning that the server was away ("asked again
    # ... until the server answers"), and was asked again: 8 to 10 s, the server
    # encoding the output twice or three times
    with DahuClient(server.url, poll_interval=0.1) as dahu:
        real, slow = dahu._new_proxy, []
        dahu._new_proxy = lambda: slow.append(_SlowOutputs(real(), needed=7000)) or slow[-1]
        future = dahu.submit("example.square", x=6)
        assert future.result(timeout=30)["result"] == 36
        asked = [millis for proxy in slow for millis in proxy.asked]
        assert asked == [10_000]  # once, allowed 10 s
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class _Outage:
    """A proxy whose getJobOutput fails while ``down`` (as during a ``DevRestart``)."""

    down = True
    failed = 0

    def __init__(self, proxy):
        self._proxy = proxy

    def __getattr__(self, name):
        return getattr(self._proxy, name)

    def command_inout(self, command, *args):
        if command == "getJobOutput" and _Outage.down:
            _Outage.failed += 1
            raise _devfailed(("API_CommunicationFailed", "Failed to connect: OBJECT_NOT_EXIST"))
        return self._proxy.command_inout(command, *args)


def test_an_outcome_whose_fetch_failed_is_asked_again_at_once(server):
    # bug: a fetch that failed once (a server back a moment before: Tango's reconnection
    # delay refused it) waited for the watcher's next round, poll_interval s later: with
    # poll_interval=60 a test's result(timeout=30) failed so now and then
    with DahuClient(server.url, poll_interval=60) as dahu:
        real_call, refused = dahu._call, []

        def refused_once(command, argument=None, millis=0):
            if command == "getJobOutput" and not refused:
                refused.append(argument)
                raise ServerError("getJobOutput: delayed", "API_CantConnectToDevice")
            return real_call(command, argument, millis)

        dahu._call = refused_once
        future = dahu.submit("example.square", x=3)
        assert future.result(timeout=30)["result"] == 9
        assert refused == [future.job_id]


def test_an_outage_is_one_warning_not_one_per_job(server, caplog):
    # bug: a DevRestart while outcomes were fetched logged one warning per job
    # ("job N: getJobOutput: Failed to connect to device ..."): 1,200 lines for 1,500 jobs
    caplog.set_level("DEBUG", logger="dahu.client")
    _Outage.down, _Outage.failed = True, 0
    with DahuClient(server.url, poll_interval=0.05, sweep_interval=0.05) as dahu:
        real = dahu._new_proxy
        dahu._new_proxy = lambda: _Outage(real())
        futures = dahu.map("example.square", [{"x": i} for i in range(20)])
        deadline = time.monotonic() + 20
        while _Outage.failed < 40:  # every job failed, most of them twice
            assert time.monotonic() < deadline, f"{_Outage.failed} failures"
            time.sleep(0.01)
        _Outage.down = False
        assert [f.result(timeout=20)["result"] for f in futures] == [i * i for i in range(20)]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "getJobOutput: Failed to connect: OBJECT_NOT_EXIST (asked again, as " in warnings[0]
    assert "pending job(s) are, until the server answers)" in warnings[0]
    assert warnings[1].startswith(f"{server.url}: the server answers again (")


def test_a_fetch_that_fails_just_after_an_outage_ended_starts_no_new_one(caplog):
    # bug: a fetch asked during the outage that failed just after another one had
    # succeeded (two threads fetch) made a new outage: a second warning, and a second
    # "the server answers again (1 fetch(es) ...)" (the test above, once under load)
    from types import SimpleNamespace

    from dahu.client_watch import fetched, not_fetched

    client = SimpleNamespace(
        _lock=threading.Lock(), _unfetched=0, _pending={}, timeout=None, device="d"
    )
    job = SimpleNamespace(job_id=7)
    error = ServerError("getJobOutput: Failed to connect", "API_CommunicationFailed")
    with caplog.at_level("DEBUG", logger="dahu.client"):
        not_fetched(client, job, error)  # the outage
        not_fetched(client, job, error)
        fetched(client)  # its end
        not_fetched(client, job, error)  # asked before its end, failed after
        fetched(client)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert (
        warnings[1]
        == "d: the server answers again (2 fetch(es) of an outcome had failed meanwhile)"
    )


def test_pickling_a_future_says_what_to_pickle_instead(server):
    # bug: pickle and copy failed with "cannot pickle '_thread.RLock' object", which
    # says nothing of the future nor of what to do
    import copy
    import pickle

    with DahuClient(server.url) as dahu:
        future = dahu.submit("example.square", x=2)
        for attempt in (pickle.dumps, copy.copy):
            with pytest.raises(TypeError) as info:
                attempt(future)
            assert str(info.value) == (
                "a JobFuture cannot be pickled (its client's threads settle it): pickle its "
                f"job_id ({future.job_id}) and get the job back with DahuClient.job(job_id)"
            )
        assert dahu.job(future.job_id).result(timeout=30)["result"] == 4
        # bug: the client itself (given to a process pool) said "cannot pickle
        # '_thread._local' object", and copy.copy made a client sharing its state
        for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError) as info:
                attempt(dahu)
            assert str(info.value) == (
                "a DahuClient cannot be pickled nor copied (its threads and subscriptions "
                f"are its process's): pass the device name ({server.url!r}) and make a "
                "DahuClient in each process"
            )


def test_a_future_followed_again_while_job_id_made_another_one_still_ends(server):
    # bug: a future out of the client's books for a moment (its cancel() failed, its
    # outcome could not be read) was tracked again only if no other future of its job
    # was: job(id) asked meanwhile made one, and the first future waited for ever
    with DahuClient(server.url, poll_interval=0.2) as dahu:
        future = dahu.submit("example.sleep", t=1)
        while future.state != "running":
            time.sleep(0.01)
        asked, go = threading.Event(), threading.Event()
        real_call = dahu._call

        def unreachable_abort(command, argument=None, millis=0):
            if command != "abort":
                return real_call(command, argument, millis)
            asked.set()
            assert go.wait(30)
            raise ServerError("abort: Failed to connect to device", "API_ServerNotRunning")

        dahu._call = unreachable_abort
        errors = []
        canceller = threading.Thread(target=lambda: errors.append(_raised(future.cancel)))
        canceller.start()
        assert asked.wait(30)
        other = dahu.job(future.job_id)  # while cancel() waits for the server
        go.set()
        canceller.join(30)
        assert errors == [ServerError]
        assert other.result(timeout=30)["slept"] is True
        assert future.result(timeout=10)["slept"] is True


def _raised(call):
    try:
        call()
    except Exception as err:
        return type(err)
    return None


def test_job_errors_cross_processes_whole(server):
    # bug: pickle (a process pool returning the error) and deepcopy of a JobFailed or
    # JobAborted failed: "JobError.__init__() missing 2 required positional arguments"
    import copy
    import pickle

    with DahuClient(server.url) as dahu:
        error = dahu.submit("example.error", message="no beam").exception(timeout=30)
    for again in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert type(again) is JobFailed and str(again) == str(error)
        assert (again.job_id, again.state, again.reason) == (error.job_id, "failure", error.reason)
        assert again.traceback == error.traceback and "raise ValueError" in again.traceback
    aborted = pickle.loads(pickle.dumps(JobAborted(7, "aborted", "aborted by cancel()")))
    assert isinstance(aborted, JobAborted) and str(aborted) == "job 7 aborted: aborted by cancel()"


def test_plugins_asks_again_while_the_listing_outlasts_the_client_s_timeout(small_server):
    # bug: plugins() gave up at the first Tango timeout (API_DeviceTimedOut): a client
    # whose timeout is short, or a server too busy to say "try again" within 3 s while it
    # imports the plugin modules, got an error for a read it may simply repeat
    plugins = Path(small_server.workdir).parent / "plugins"
    (plugins / "slowlist.py").write_text(
        "import time\ntime.sleep(2)\n\nfrom dahu.plugin import plugin_from_function\n\n\n"
        "def slow():\n    'Slow to import.'\n\n\nplugin_from_function(slow)\n"
    )
    with DahuClient(small_server.url, timeout=0.5) as client:
        listed = client.plugins(timeout=60)
    assert listed["slowlist.slow"] == "Slow to import."
    assert "bulky.text" in listed
