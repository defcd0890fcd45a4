"""``dahu.client``: jobs as futures, against a real ``dahu_server`` process."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import tango

from dahu import client_watch
from dahu.app.localserver import LocalServer
from dahu.client import (
    FIRST_COMPLETED,
    ClientClosed,
    ClientError,
    DahuClient,
    JobAborted,
    JobFailed,
    JobFuture,
    JobNotFound,
    ServerError,
    as_completed,
    wait,
)

from .conftest import child_env, finish, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("client"), "test/dahu/client") as local:
        yield local


@pytest.fixture
def client(server):
    with DahuClient(server.url, poll_interval=0.5) as dahu:
        yield dahu


@pytest.fixture
def proxy(server):
    """A raw Tango client of the same device."""
    return tango.DeviceProxy(server.url)


def wait_running(future: JobFuture, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while future.state != "running":
        assert time.monotonic() < deadline, f"job {future.job_id} did not start"
        time.sleep(0.01)


# ---- one job ---------------------------------------------------------------------------------
def test_a_job_succeeds_with_its_output(client):
    called = []
    future = client.submit("example.square", x=7)
    future.add_done_callback(called.append)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30)["result"] == 49
    assert future.done() and not future.cancelled() and future.exception() is None
    assert future.state == "success" and future.output["result"] == 49
    assert future.input["x"] == 7 and future.input["job_id"] == future.job_id == future.id
    info = future.info
    assert info["id"] == future.job_id and info["plugin"] == "example.square"
    assert info["state"] == "success" and info["runtime"] >= 0
    deadline = time.monotonic() + 10
    while not called and time.monotonic() < deadline:  # callbacks run in the client's thread
        time.sleep(0.01)
    assert called == [future]
    # the input as a dict, with keywords on top
    other = client.submit("example.cube", {"x": 3, "y": 1}, y=2)
    assert other.result(30)["result"] == 27 and other.input["y"] == 2


def test_a_failing_job_raises_job_failed(client):
    future = client.submit("example.error", message="bad frame")
    with pytest.raises(JobFailed) as info:
        future.result(timeout=30)
    error = info.value
    assert error.job_id == future.job_id and error.state == "failure"
    assert error.reason == "ValueError: bad frame"
    assert "Traceback" in error.traceback and "raise ValueError" in error.traceback
    assert str(error) == f"job {future.job_id} failure: ValueError: bad frame"
    assert future.exception() is error and future.state == "failure"
    assert future.error.startswith("ValueError: bad frame\n")


def test_a_result_may_wait_as_long_as_it_takes(client):
    # bug: result(timeout=math.inf), "as long as it takes" as close() takes it, raised
    # OverflowError: timestamp out of range for platform time_t
    future = client.submit("example.sleep", t=0.3)
    assert future.exception(timeout=math.inf) is None
    assert client.submit("example.sleep", t=0.3).result(timeout=1e12)["logging"] == []
    with pytest.raises(TypeError, match="^timeout must be a number of seconds or None, not str$"):
        client.submit("example.sleep", t=0.3).result(timeout="10")
    # bug: NaN raised TimeoutError at once, "job 7 has not ended within nan s"
    future = client.submit("example.sleep", t=0.3)
    for wait_for in (future.result, future.exception):
        with pytest.raises(
            ValueError, match="^timeout must be a number of seconds or None, not nan$"
        ):
            wait_for(timeout=float("nan"))
    assert future.result(timeout=30)["slept"] is True


def test_cancel_aborts_the_job(client, proxy):
    future = client.submit("example.sleep", t=60)
    wait_running(future)
    started = time.monotonic()
    assert future.cancel() is True
    assert future.cancelled() and future.done()
    with pytest.raises(JobAborted) as info:
        future.result(timeout=1)
    assert isinstance(info.value, concurrent.futures.CancelledError)
    assert info.value.job_id == future.job_id
    with pytest.raises(JobAborted):
        future.exception()
    assert future.cancel() is True  # cancelled already: True, as for any future (was False)
    assert finish(proxy, future.job_id) == "aborted"
    assert time.monotonic() - started < 5
    # re-attached later, the job reads as aborted, with the server's reason
    again = client.job(future.job_id)
    with pytest.raises(JobAborted) as info:
        again.result(timeout=30)
    assert info.value.reason == "aborted by a client" and not again.cancelled()


def test_a_cancelled_future_is_done_for_wait_and_as_completed(client):
    # bug: cancel() left the future CANCELLED but never notified: wait() and
    # as_completed() did not count it as done (they waited for their timeout, or for
    # ever), and a thread already blocked in wait() was not woken
    slow = client.submit("example.sleep", t=60)
    quick = client.submit("example.square", x=3)
    assert slow.cancel() is True
    done, not_done = wait([slow, quick], timeout=30)
    assert done == {slow, quick} and not not_done
    assert set(as_completed([slow, quick], timeout=30)) == {slow, quick}
    # a waiter blocked before the cancel, and a callback that waits too
    blocked = client.submit("example.sleep", t=60)
    seen: list = []
    blocked.add_done_callback(lambda f: seen.append(wait([f], timeout=30)[0]))
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(wait([blocked], timeout=30)))
    waiter.start()
    deadline = time.monotonic() + 10
    while not blocked._waiters:  # the thread is in wait()
        assert time.monotonic() < deadline, "the waiting thread did not start"
        time.sleep(0.01)
    started = time.monotonic()
    assert blocked.cancel() is True
    waiter.join(30)
    assert waited == [({blocked}, set())] and time.monotonic() - started < 10
    assert seen == [{blocked}]  # the callback ran in cancel()'s thread, after the notice
    late: list = []
    blocked.add_done_callback(late.append)  # on a cancelled future: at once
    assert late == [blocked] and blocked.state == "aborted"
    with pytest.raises(JobAborted):
        blocked.exception(timeout=0)


def test_a_job_aborted_by_someone_else_raises_job_aborted(client, proxy):
    future = client.submit("example.sleep", t=60)
    wait_running(future)
    assert proxy.abort(future.job_id)
    with pytest.raises(JobAborted):
        future.result(timeout=30)
    assert future.state == "aborted" and not future.cancelled()


def test_cancel_of_a_job_that_ended_returns_false(client):
    future = client.submit("example.square", x=2)
    assert future.result(30)["result"] == 4
    assert future.cancel() is False and not future.cancelled()


def test_result_timeout(client):
    # bug: the TimeoutError had no message: a log said "TimeoutError" and nothing more
    future = client.submit("example.sleep", t=60)
    with pytest.raises(TimeoutError) as info:
        future.result(timeout=0.2)
    assert str(info.value) == f"job {future.job_id} has not ended within 0.2 s"
    with pytest.raises(TimeoutError, match=f"^job {future.job_id} has not ended within 0 s$"):
        future.exception(timeout=0)
    assert not future.done()
    assert future.cancel()


def test_refused_submissions_raise_at_once(client):
    with pytest.raises(ServerError) as info:
        client.submit("nothing.here", x=1)
    assert info.value.reason == "Dahu_UnknownPlugin"
    assert "\n" not in str(info.value) and "nothing.here" in str(info.value)
    with pytest.raises(ClientError, match="not JSON-serialisable"):
        client.submit("example.square", x=object())
    with pytest.raises(ServerError) as info:
        client.map("nothing.here", [{"x": 1}])
    assert info.value.reason == "Dahu_UnknownPlugin"
    assert client.pending == 0
    assert client.map("example.square", []) == []
    with pytest.raises(TypeError, match="a plugin name must be a str, not NoneType"):
        client.submit(None, x=1)  # was Tango's "cannot be converted to DevVarStringArray"
    with pytest.raises(TypeError, match="a plugin name must be a str, not int"):
        client.map(7, [{"x": 1}])


def test_unclear_arguments_get_a_clear_error(client):
    # bug: a raw UnicodeError from Tango for a name Latin-1 cannot carry; map() of one
    # dict said "a job input must be a dict, not str"; submit() of a list said "'list'
    # object is not a mapping"
    with pytest.raises(ServerError) as info:
        client.submit("2θ.x", x=1)
    assert info.value.reason == "Dahu_UnknownPlugin"  # as the server says of "é.x"
    assert str(info.value) == (
        r"startJob: invalid plugin name '2\u03b8.x': expected 'module.name' "
        "(letters, digits, underscores)"
    )
    with pytest.raises(ServerError) as info:
        client.submit("é.x", x=1)  # this one reaches the server: the same kind of refusal
    assert info.value.reason == "Dahu_UnknownPlugin" and "invalid plugin name" in str(info.value)
    with pytest.raises(ServerError, match=r"startJobs: invalid plugin name '2\\u03b8.x'"):
        client.map("2θ.x", [{"x": 1}])
    with pytest.raises(
        TypeError, match=r"^map wants an iterable of dicts \(one per job\), not dict$"
    ):
        client.map("example.square", {"x": 1})
    with pytest.raises(TypeError, match="^map wants an iterable of dicts"):
        client.map("example.square", 5)
    with pytest.raises(TypeError, match=r"^a job input must be a dict, not int \(inputs\[1\]\)$"):
        client.map("example.square", [{"x": 1}, 2])
    with pytest.raises(TypeError, match="^a job input must be a dict, not list$"):
        client.submit("example.square", [1])
    assert client.pending == 0


def test_inputs_json_cannot_encode_are_one_line_client_errors(client):
    # bug: an input nested thousands of levels deep raised a bare RecursionError; an
    # integer of over 4,300 digits advised to call sys.set_int_max_str_digits(), which
    # would not help: the server refuses such inputs too
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(ClientError) as info:
        client.submit("example.noop", x=deep)
    assert str(info.value) == (
        "job input is not JSON-serialisable: it is nested too deeply "
        "(the server takes at most 64 levels)"
    )
    with pytest.raises(ClientError) as info:
        client.map("example.noop", [{}, {"x": 10**5000}])
    assert str(info.value) == (
        "job input (inputs[1]) is not JSON-serialisable: "
        "Exceeds the limit (4300 digits) for integer string conversion"
    )
    assert client.pending == 0


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("poll_interval", 0, ValueError),  # was accepted, and the watcher spun a CPU
        ("poll_interval", "1", TypeError),
        ("sweep_interval", -1.0, ValueError),
        ("max_sweep_interval", float("nan"), ValueError),
        ("timeout", 0, ValueError),
        ("timeout", float("inf"), ValueError),
        ("resolvers", 0, ValueError),  # was taken as 1
        ("resolvers", 2.5, TypeError),
        ("device", None, TypeError),
        ("device", "SERVER ", ValueError),  # was Tango's "dbase=no modifier is an ..."
        ("device", "", ValueError),
    ],
)
def test_settings_that_cannot_work_are_refused(server, setting, value, error):
    settings = {"device": server.url, setting: value}
    if value == "SERVER ":
        settings["device"] = server.url + " "
    with pytest.raises(error, match=f"^{setting} must be ") as info:
        DahuClient(**settings)
    assert "\n" not in str(info.value)


def test_a_bad_wait_is_refused_before_anything_is_closed(server):
    # bug: close(timeout="x") (or math.inf) raised half-way, the client marked closed
    # with its threads still running; plugins(timeout="x"): "unsupported operand"
    client = DahuClient(server.url)
    with pytest.raises(TypeError, match="^timeout must be a number of seconds, not str$"):
        client.close(timeout="x")
    with pytest.raises(ValueError, match="^timeout must be 0 or more seconds, not nan$"):
        client.plugins(timeout=float("nan"))
    assert client.submit("example.square", x=3).result(timeout=30)["result"] == 9
    client.close(timeout=math.inf)  # as long as it takes
    assert not any(thread.is_alive() for thread in client._threads)


def test_unknown_job(client):
    with pytest.raises(JobNotFound) as info:
        client.job(10**9)
    assert "no job 1000000000" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert client.pending == 0
    with pytest.raises(JobNotFound, match="no job 1000000000000: job ids are 32-bit"):
        client.job(10**12)  # was an OverflowError from Tango: "Value is too large."
    with pytest.raises(TypeError):
        client.job("7")
    with pytest.raises(TypeError, match="^a job id must be an int, not bool$"):
        client.job(True)  # was taken as job 1
    assert client.pending == 0


def test_a_negative_id_is_the_job_it_counts_back_to(client):
    # bug: the future kept the id -1; the events of the job (under its own id) never
    # reached it, and its state followed whichever job was the last one
    first = client.submit("example.sleep", t=0.5)
    last = client.submit("example.square", x=5)
    assert last.job_id == first.job_id + 1  # nobody else submits to this server now
    future = client.job(-1)
    assert future.job_id == last.job_id
    assert future.result(timeout=30)["result"] == 25
    earlier = client.job(-2)
    assert earlier.job_id == first.job_id
    client.submit("example.square", x=6).result(timeout=30)  # -1 is another job now
    assert earlier.result(timeout=30)["slept"] is True


def test_plugins(client):
    plugins = client.plugins()
    assert plugins["example.square"] == "Return x squared."
    assert "example.sleep" in plugins


# ---- many jobs -------------------------------------------------------------------------------
def test_map_of_ten_thousand_jobs(client):
    count = 10_000
    started = time.monotonic()
    futures = client.map("example.square", [{"x": x} for x in range(count)])
    assert [f.job_id for f in futures] == list(range(futures[0].job_id, futures[0].job_id + count))
    seen = set()
    for future in as_completed(futures, timeout=600):
        seen.add(future.job_id)
    assert len(seen) == count
    assert [f.result()["result"] for f in futures] == [x * x for x in range(count)]
    assert client.pending == 0
    print(f"map of {count} jobs: {count / (time.monotonic() - started):.0f} jobs/s")


def test_wait_and_as_completed(client):
    slow = client.submit("example.sleep", t=60)
    quick = client.submit("example.square", x=5)
    done, not_done = wait([slow, quick], timeout=30, return_when=FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    done, not_done = client.wait([quick], timeout=30)
    assert done == {quick} and not not_done
    assert list(client.as_completed([quick], timeout=5)) == [quick]
    slow.cancel()


def test_two_threads_share_one_client(client):
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def work(name: str, offset: int) -> None:
        try:
            singles = [client.submit("example.square", x=offset + i) for i in range(300)]
            batch = client.map("example.square", [{"x": offset + i} for i in range(300)])
            results[name] = [f.result(timeout=120)["result"] for f in singles + batch]
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n, o)) for n, o in (("a", 0), ("b", 1000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert results["a"] == [i * i for i in range(300)] * 2
    assert results["b"] == [(1000 + i) ** 2 for i in range(300)] * 2


# ---- events lost or late -----------------------------------------------------------------
def test_a_client_started_after_the_jobs_ended(server, proxy):
    good = proxy.startJob(["example.square", json.dumps({"x": 9})])
    bad = proxy.startJob(["example.error", json.dumps({"message": "old failure"})])
    assert finish(proxy, good) == "success" and finish(proxy, bad) == "failure"
    with DahuClient(server.url) as late:
        future = late.job(good)
        assert future.result(timeout=30)["result"] == 81
        assert future.input["x"] == 9 and future.state == "success"
        assert future.info["plugin"] == "example.square"
        # bug: a re-attached future did not know its plugin (its repr showed none)
        assert future.plugin == "example.square" and "example.square" in repr(future)
        failed = late.job(bad)
        with pytest.raises(JobFailed) as info:
            failed.result(timeout=30)
        assert info.value.reason == "ValueError: old failure"
        assert failed.error.startswith("ValueError: old failure")
        # a job still running when re-attached completes through the events
        running = proxy.startJob(["example.sleep", json.dumps({"t": 0.5})])
        attached = late.job(running)
        assert late.job(running) is attached
        assert attached.result(timeout=30)["logging"] == []


def test_no_future_hangs_when_events_are_dropped(server):
    with DahuClient(server.url, poll_interval=0.2, sweep_interval=0.5) as dahu:
        # drop the events: unsubscribe behind the client's back
        for subscription in dahu._subscriptions:
            dahu._events_proxy.unsubscribe_event(subscription)
        futures = dahu.map("example.square", [{"x": x} for x in range(300)])
        futures += [dahu.submit("example.error") for _ in range(3)]
        done, not_done = wait(futures, timeout=120)
        assert not not_done
        assert [f.result()["result"] for f in futures[:300]] == [x * x for x in range(300)]
        assert all(isinstance(f.exception(), JobFailed) for f in futures[300:])
        # jobs that end behind a long one are found by the sweep, not after it
        head = dahu.submit("example.sleep", t=20)
        wait_running(head)
        quick = [dahu.submit("example.square", x=x) for x in range(5)]
        done, not_done = wait(quick, timeout=10)
        assert not not_done and not head.done()
        assert head.cancel()


def test_a_lost_event_costs_a_second_or_two_while_no_other_event_comes(server):
    # bug: with a long job pending and no event coming, the watcher waited for it
    # (waitJob: the server's wait_timeout, 2 s, each round) and asked the others only at
    # its sweeps, sweep_interval s apart: a quick job whose event was lost ended 4 to 5 s
    # late with the default settings (here: at the sweep, 10 s on)
    with DahuClient(server.url, poll_interval=0.2, sweep_interval=10) as dahu:
        for subscription in dahu._subscriptions:  # no event comes
            dahu._events_proxy.unsubscribe_event(subscription)
        head = dahu.submit("example.sleep", t=60)
        wait_running(head)
        quick = dahu.submit("example.square", x=3)
        assert quick.result(timeout=5)["result"] == 9
        assert head.cancel()


def test_the_watcher_outlives_a_server_it_cannot_reach_yet(server):
    # bug: a restarting server (OBJECT_NOT_EXIST while its device is not exported yet)
    # made the watcher's first DeviceProxy fail; the thread died and, without events,
    # no future settled again (seen as a flaky crash-and-restart test)
    with DahuClient(server.url, poll_interval=0.1, sweep_interval=0.2) as dahu:
        for subscription in dahu._subscriptions:  # no events: the watcher is the only way
            dahu._events_proxy.unsubscribe_event(subscription)
        real, refused = dahu._proxy, []

        def restarting():  # the watcher's calls are made by the caller threads
            if getattr(dahu, "_watch_held", False) and len(refused) < 3:
                refused.append(1)
                raise ServerError("cannot reach it: OBJECT_NOT_EXIST", "API_CorbaException")
            return real()

        dahu._proxy = restarting
        future = dahu.submit("example.square", x=4)
        assert future.result(timeout=30)["result"] == 16
        assert len(refused) == 3
        assert all(thread.is_alive() for thread in dahu._threads)


def test_a_job_cut_by_a_server_crash_fails_after_the_restart(tmp_path):
    workdir, device = str(tmp_path / "work"), "test/dahu/crash"
    first = LocalServer(workdir, str(tmp_path / "first.log"), device=device)
    first.start(timeout=60)
    second = LocalServer(workdir, str(tmp_path / "second.log"), device=device, port=first.port)
    try:
        quick = None
        deadline = time.monotonic() + 30
        while quick is None:  # (its 0.5 s went by before the server answered, at load 39)
            try:
                quick = DahuClient(first.url, timeout=0.5, poll_interval=0.2)  # < 1 s: below
            except ServerError as err:
                assert err.reason == "API_DeviceTimedOut" and time.monotonic() < deadline
        with quick, DahuClient(first.url, timeout=1, poll_interval=0.2) as dahu:
            future = dahu.submit("example.sleep", t=600)
            wait_running(future)
            first.process.kill()  # no shutdown: the job is left running in the journal
            first.process.wait()
            deadline = time.monotonic() + 30
            while True:  # refused (one try: the next one is Tango's no sooner than 1 s later)
                with pytest.raises(ServerError) as refused:
                    quick.submit("example.square", x=6)
                if refused.value.reason != "API_DeviceTimedOut" or time.monotonic() > deadline:
                    break  # (timed out: a loaded machine took its 0.5 s before the refusal)
            assert refused.value.reason in ("API_CantConnectToDevice", "API_ServerNotRunning")
            # bug: a cancel() of a job whose server is gone said "abort: the device ...
            # did not answer within 1 s", its bounded wait ending with the refused retries
            with pytest.raises(ServerError) as cancelled:
                future.cancel()
            assert str(cancelled.value).startswith("abort: Failed to connect to device ")
            started = time.monotonic()
            with pytest.raises(ServerError) as refused:  # down: refused all along its timeout
                dahu.map("example.square", [{"x": 3}])
            assert time.monotonic() - started < 5  # not the 10 s a batch may take to record
            assert refused.value.reason in ("API_CantConnectToDevice", "API_ServerNotRunning")
            assert "(is its server running, at this address?)" in str(refused.value)
            second.start(timeout=60)
            # bug: a submit within 1 s of a refused call (above) failed at once, "startJob:
            # Failed to connect to device ...": Tango does not connect again any sooner
            assert dahu.submit("example.square", x=5).result(timeout=30)["result"] == 25
            # more than 1 s after its refused call (the map's refusals took 1 s): reached
            assert quick.submit("example.square", x=6).result(timeout=30)["result"] == 36
            with pytest.raises(JobFailed) as info:
                future.result(timeout=60)
            assert info.value.reason == "interrupted"
    finally:
        first.stop()
        if second.process is not None:  # (not started: the test failed before)
            assert second.stop() == 0


EXIT_OPEN = """
import sys
from dahu.client import DahuClient
dahu = DahuClient(sys.argv[1])
future = dahu.submit("example.sleep", t=60)
future.add_done_callback(lambda f: print(type(f.exception()).__name__, f.job_id, flush=True))
print("submitted", flush=True)
"""


def test_a_client_left_open_is_closed_when_the_interpreter_exits(server, proxy):
    # bug: a script that ended without close() kept its subscriptions while Python was
    # finalizing: an event arriving then made cppTango abort the process (SIGABRT,
    # "FATAL: exception not rethrown"), now and then, while its server's jobs ended
    done = subprocess.run(
        [sys.executable, "-c", EXIT_OPEN, server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[:2] == ["submitted", "ClientClosed"]  # closed at exit: the future failed
    assert proxy.abort(int(lines[2]))  # the job went on


def test_clients_made_at_once_subscribe_one_at_a_time(server, monkeypatch):
    # bug: clients made by several threads at once in a fresh process failed now and then,
    # "cannot connect to URL: Could not find event consumer for ptr" (cppTango's first
    # subscriptions of a process are not safe from several threads)
    subscribe, inside, overlaps = tango.DeviceProxy.subscribe_event, [], []

    def one_at_a_time(proxy, *args, **kwargs):
        inside.append(1)
        overlaps.append(len(inside) > 1)
        time.sleep(0.01)  # a wider window for another thread to come in
        try:
            return subscribe(proxy, *args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(tango.DeviceProxy, "subscribe_event", one_at_a_time)
    start, clients = threading.Barrier(4), []

    def connect():
        start.wait()
        clients.append(DahuClient(server.url))

    threads = [threading.Thread(target=connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for dahu in clients:
        dahu.close()
    assert len(clients) == 4 and len(overlaps) == 8 and not any(overlaps)


def test_close_unsubscribes_and_fails_pending_futures(server, proxy):
    dahu = DahuClient(server.url)
    future = dahu.submit("example.sleep", t=60)
    assert len(dahu._subscriptions) == 2
    dahu.close()
    assert dahu._subscriptions == []
    assert all(not thread.is_alive() for thread in dahu._threads)
    with pytest.raises(ClientClosed):
        future.result(timeout=5)
    with pytest.raises(ClientClosed):
        dahu.submit("example.square", x=1)
    with pytest.raises(ClientClosed):  # bug: it answered, as if the client were open
        dahu.plugins()
    dahu.close()  # twice: nothing more
    assert proxy.getJobState(future.job_id) in ("starting", "running")  # the job goes on
    assert future.state in ("starting", "running")  # asked: it was "inexistant"
    assert proxy.abort(future.job_id)


def test_a_client_nobody_holds_is_collected_with_its_threads(server):
    # bug: its threads held it: a script that made a client per scan without closing it
    # kept six threads and two event subscriptions of each until it exited
    import gc
    import weakref

    def scan(x):  # a client made, used and dropped, as in a scan's function
        dahu = DahuClient(server.url, poll_interval=0.1)  # (let go 0.1 s after its jobs)
        return dahu.submit("example.square", x=x).result(timeout=30)["result"], dahu

    assert scan(3)[0] == 9
    result, dahu = scan(4)
    ref, threads, subscriptions = weakref.ref(dahu), dahu._threads, dahu._subscriptions
    del dahu
    deadline = time.monotonic() + 30
    while ref() is not None or any(t.is_alive() for t in threads) or subscriptions:
        assert time.monotonic() < deadline, (ref(), [t.name for t in threads if t.is_alive()])
        gc.collect()
        time.sleep(0.01)
    with DahuClient(server.url) as dahu:  # the events of the next jobs disturb nobody
        futures = dahu.map("example.square", [{"x": x} for x in range(20)])
        assert [f.result(timeout=30)["result"] for f in futures] == [x * x for x in range(20)]
    # not while it has jobs pending: their done-callbacks run, whoever holds the client
    seen = []
    DahuClient(server.url).submit("example.sleep", t=0.3).add_done_callback(seen.append)
    while not seen:
        assert time.monotonic() < deadline + 30, "the callback never ran"
        gc.collect()
        time.sleep(0.01)
    assert seen[0].result(0)["slept"]


def _use_in_a_fork(dahu, future, answers, own_client: bool) -> None:
    """In a forked process: what a script using its parent's client is told."""
    for call in (lambda: dahu.submit("example.square", x=1), lambda: future.result()):
        started = time.monotonic()
        try:
            call()
            answers.put("answered")
        except ClientError as err:
            answers.put((str(err), time.monotonic() - started))
    dahu.close()  # no Tango call: omniORB aborts the process in a fork
    if not own_client:
        return
    warnings = []  # a client of its own gets no event: it says so
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("dahu.client").addHandler(handler)
    with DahuClient(dahu.device):
        answers.put(warnings)


def test_a_client_used_in_a_forked_process_says_so(client):
    # bug: a pool worker forked with the script's client got "startJob: the device URL did
    # not answer within 3 s (is its server running, at this address?)" after 3 s (the
    # client's threads stayed in the parent), and waited for ever in result()
    import multiprocessing

    future = client.submit("example.sleep", t=60)
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    # a client made in the fork hangs as it connects under PyTango 10.1 (the lowest
    # pyproject.toml allows), as a forked test device hangs as it stops
    own_client = tango.__version_info__[:2] >= (10, 3)
    child = context.Process(target=_use_in_a_fork, args=(client, future, answers, own_client))
    child.start()
    try:
        got = [answers.get(timeout=30) for _ in range(2)]
        warnings = answers.get(timeout=30) if own_client else None
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
        future.cancel()
    expected = (
        f"the client of {client.device} was made in process {os.getpid()}, not in this one "
        f"({child.pid}, forked from it): make a DahuClient in each process"
    )
    assert [message for message, _ in got] == [expected] * 2
    assert max(took for _, took in got) < 1.0 and child.exitcode == 0
    # bug: its jobs ended a second or two late, each (through the watcher), unexplained
    assert (
        not own_client
        or len(warnings) == 1
        and warnings[0].startswith(
            f"{client.device}: this process was forked from process {os.getpid()}, which had "
            "subscribed to Tango events: Tango sends it none"
        )
    )
    assert client.submit("example.square", x=3).result(timeout=30)["result"] == 9


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_done_callback_calling_sys_exit_leaves_the_client_working(server, proxy, caplog, raised):
    # bug: sys.exit() in a done-callback (SystemExit, not an Exception: concurrent.futures
    # lets it through) silently ended the resolver thread running it: once every resolver
    # had so ended, no future of the client was settled again (result() for ever)
    def leave(future):
        raise raised("enough")

    with DahuClient(server.url, resolvers=1) as dahu:
        first = dahu.submit("example.sleep", t=60)
        first.add_done_callback(leave)  # pending: run by the client's resolver
        proxy.abort(first.job_id)
        with pytest.raises(JobAborted):
            first.result(timeout=30)
        assert dahu.submit("example.square", x=3).result(timeout=10)["result"] == 9
    said = [r.getMessage() for r in caplog.records if "a done-callback raised" in r.getMessage()]
    assert len(said) == 1 and f"job {first.job_id} " in said[0] and raised.__name__ in said[0]


def test_close_in_a_done_callback_stops_every_thread(server):
    # bug: close() drained the stop signal meant for the thread running the callback:
    # that thread (and the client it holds) stayed blocked for ever
    dahu = DahuClient(server.url)
    closed = threading.Event()
    future = dahu.submit("example.square", x=2)
    future.add_done_callback(lambda f: (dahu.close(), closed.set()))
    assert closed.wait(30)
    deadline = time.monotonic() + 10
    while any(thread.is_alive() for thread in dahu._threads):
        assert time.monotonic() < deadline, [t.name for t in dahu._threads if t.is_alive()]
        time.sleep(0.01)
    assert future.result(0)["result"] == 4


def test_close_does_not_wait_for_a_callback_blocked_on_a_pending_future(server, proxy):
    # bug: close() joined its threads before failing the pending futures: a done-callback
    # waiting for one (result() without timeout) held close() for its whole timeout
    dahu = DahuClient(server.url)
    slow = dahu.submit("example.sleep", t=60)
    seen = []
    entered = threading.Event()

    def follow_up(_):
        entered.set()
        try:
            slow.result()
        except ClientClosed as err:
            seen.append(err)

    dahu.submit("example.square", x=3).add_done_callback(follow_up)
    assert entered.wait(30)
    started = time.monotonic()
    dahu.close(timeout=60)
    assert time.monotonic() - started < 30  # not the 60 s of its timeout
    assert len(seen) == 1 and all(not thread.is_alive() for thread in dahu._threads)
    assert proxy.abort(slow.job_id)


def test_a_job_asked_for_while_its_submission_is_in_flight_has_one_future(server, proxy):
    # bug: job(id) called while a map holding that id was still returning got a future
    # that the map's replaced in the client's bookkeeping: it never settled
    with DahuClient(server.url) as dahu:
        job_id = proxy.startJob(["example.sleep", '{"t": 0.5}'])  # as a map's, in flight
        dahu._begin()
        early = dahu.job(job_id)  # asked for by another thread meanwhile
        (mapped,) = dahu._track([job_id], "example.sleep")  # the map returns its ids
        assert mapped is early
        assert early.result(timeout=30)["job_runtime"] >= 0.5


def test_an_unreachable_device_is_one_line(server):
    url = server.url.replace(str(server.port), "1")  # nothing listens on port 1
    with pytest.raises(ServerError) as info:
        DahuClient(url, timeout=2)
    assert "\n" not in str(info.value)


def test_no_server_at_the_address_says_what_to_check():
    # bug: the reason was Tango's "The connection request was delayed. The last
    # connection request was done less than 1000 ms ago", which hides the cause
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tango://127.0.0.1:{port}/test/dahu/nobody#dbase=no"
    with pytest.raises(ServerError) as info:
        DahuClient(url)
    message = str(info.value)
    assert message.startswith(f"cannot connect to {url}: Failed to connect to device")
    assert message.endswith("(is its server running, at this address?)")
    assert "delayed" not in message and "\n" not in message
    # bug: a device found through a database that does not answer said "cannot reach",
    # where every other failure to connect says "cannot connect to"
    url = f"tango://127.0.0.1:{port}/test/dahu/nobody"
    with pytest.raises(ServerError) as info:
        DahuClient(url)
    assert str(info.value).startswith(f"cannot connect to {url}: Failed to connect to database")


def test_a_database_less_server_reached_as_a_database_says_dbase_no(server):
    # bug: a URL without "#dbase=no" of a server started without database said only
    # "Failed to connect to database on host H with port P: OBJECT_NOT_EXIST_NoMatch"
    url = server.url.removesuffix("#dbase=no")
    with pytest.raises(ServerError) as info:
        DahuClient(url)
    assert str(info.value) == (
        f"cannot connect to {url}: Failed to connect to database on host 127.0.0.1 with "
        f"port {server.port}: OBJECT_NOT_EXIST_NoMatch (a Tango server without database "
        "answers at this address: add '#dbase=no' to the device's URL)"
    )


def test_a_lost_event_is_found_while_other_events_keep_coming(server, monkeypatch):
    # bug: the watcher stayed idle as long as events of other jobs of the client kept
    # coming: a job whose own event was lost waited until the stream paused, for as long
    # as a beamline scan lasts; then (until 2026-11-30) until the oldest pending job had
    # waited max_sweep_interval (60 s by default): a minute's stall
    asked: list[int] = []
    command = client_watch._command

    def counted(client, name, job_id):
        asked.append(job_id)
        return command(client, name, job_id)

    monkeypatch.setattr(client_watch, "_command", counted)
    # (the default poll_interval, 1 s: with 0.2 s, a loaded machine's pause of the events
    # as long made the watcher ask each job once, as it must then: 58 asked, at load 39)
    with DahuClient(server.url) as dahu:
        lost: list[int] = []
        events = dahu._event

        def lossy(name, event):  # the event of the job in `lost` never arrives
            if event.attr_value is None or event.attr_value.value not in lost:
                events(name, event)

        dahu._event = lossy
        stop, done = threading.Event(), []

        def stream():  # a job of ours ends every 50 ms, others wait behind a long one
            while not stop.is_set():
                done.append(dahu.submit("example.square", x=1).result(timeout=30))
                time.sleep(0.05)

        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            deadline = time.monotonic() + 30
            while len(done) < 5:  # events flow
                assert time.monotonic() < deadline
                time.sleep(0.01)
            waiting = dahu.map("example.sleep", [{"t": 30}] + [{"t": 0}] * 50)
            future = dahu.submit("example.sleep", t=0.3)
            lost.append(future.job_id)
            assert future.result(timeout=10)["slept"] is True  # not 60 s late
            # the long job and those queued behind it were not asked one by one
            assert len(asked) < 20, asked
            assert all(f.cancel() for f in waiting if not f.done())
        finally:
            stop.set()
            streamer.join(30)


def test_a_job_whose_event_comes_as_the_watcher_asks_is_not_one_lost(server, monkeypatch, caplog):
    # bug: the watcher's question about a job whose event came while the server answered
    # counted the job as ended without its event: a line saying so, and for the oldest
    # job while events flowed, a check of every pending job (one call each)
    command = client_watch._command

    def late(client, name, job_id):  # the answer arrives after the job's event
        deadline = time.monotonic() + 30
        while not future.done():
            assert time.monotonic() < deadline, "the job's event never came"
            time.sleep(0.01)
        return command(client, name, job_id)

    monkeypatch.setattr(client_watch, "_command", late)
    caplog.set_level(logging.INFO, logger="dahu.client")
    with DahuClient(server.url, timeout=30, poll_interval=60) as dahu:  # its watcher idle
        head = dahu.submit("example.sleep", t=30)
        future = dahu.submit("example.sleep", t=1)  # still pending as the watcher looks
        client_watch._check_young(dahu, head, time.monotonic() + dahu.poll_interval)
        assert future.result(timeout=1)["slept"] is True  # its outcome, once
        assert not client_watch._ask_state(dahu, future)
        assert not [r for r in caplog.records if "without an event" in r.getMessage()]
        assert head.cancel()


def test_a_device_that_is_not_dahu_is_named_as_such(server):
    # bug: "cannot connect to URL: jobsuccess attribute not found", which reads like a
    # broken server rather than the wrong device
    url = server.url.replace("test/dahu/client", "dserver/dahuds/demo")  # its admin device
    with pytest.raises(ServerError) as info:
        DahuClient(url)
    assert str(info.value) == (
        f"cannot connect to {url}: jobsuccess attribute not found (is it a DahuDS device?)"
    )
