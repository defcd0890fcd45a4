"""A server that stops aborts its jobs and tells its clients, while its device still
answers (``DahuDS.signal_handler``), and takes no new job meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import sqlite3
import tempfile
import threading
import time
import types

import pytest
import tango

from dahu import server, server_events, server_settings
from dahu.app import localserver
from dahu.app.localserver import LocalServer, free_port
from dahu.client import DahuClient, JobAborted, ServerError

from .conftest import TROUBLE_PLUGINS, finish, wait_for_file

DEVICE = "test/dahu/stop"
REASON = "the server is shutting down"


class Failures:
    """The ids a raw Tango client hears of through ``jobFailure`` events."""

    def __init__(self, proxy: tango.DeviceProxy) -> None:
        self.ids: set[int] = set()
        self.arrived = threading.Condition()
        proxy.subscribe_event("jobFailure", tango.EventType.CHANGE_EVENT, self.on_event)

    def on_event(self, event: tango.EventData) -> None:
        if not event.err and event.attr_value is not None and event.attr_value.value > 0:
            with self.arrived:
                self.ids.add(int(event.attr_value.value))
                self.arrived.notify_all()

    def wait_for(self, ids: set[int], timeout: float = 20.0) -> set[int]:
        with self.arrived:
            self.arrived.wait_for(lambda: ids <= self.ids, timeout)
            return set(self.ids)


def running(proxy: tango.DeviceProxy, job_id: int) -> None:
    deadline = time.monotonic() + 30
    while proxy.getJobState(job_id) != "running":
        assert time.monotonic() < deadline, f"job {job_id} never ran"
        time.sleep(0.01)


def test_futures_and_events_hear_of_the_jobs_a_stopping_server_aborts(tmp_path):
    local = LocalServer(str(tmp_path / "work"), str(tmp_path / "log"), 1, device=DEVICE)
    proxy = local.start(timeout=60)
    failures = Failures(proxy)
    client = DahuClient(local.url)
    try:
        sleeping = client.submit("example.sleep", {"t": 600})
        queued = client.submit("example.sleep", {"t": 600})
        running(proxy, sleeping.job_id)
        assert local.stop() == 0
        # the futures end now (they used to wait until the server was back)
        for future in (sleeping, queued):
            with pytest.raises(JobAborted, match=REASON):
                future.result(timeout=20)
        wanted = {sleeping.job_id, queued.job_id}
        assert failures.wait_for(wanted) >= wanted
    finally:
        client.close()
        local.stop()


def test_a_stopping_server_refuses_new_jobs_and_still_answers(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stubborn.py").write_text(TROUBLE_PLUGINS)
    workdir, flag = tmp_path / "work", tmp_path / "in-process"
    extra = ["--plugins", str(plugins), "--shutdown-timeout", "4"]
    local = LocalServer(str(workdir), str(tmp_path / "log"), device=DEVICE, extra_args=extra)
    proxy = local.start(timeout=60)
    try:
        hung = proxy.startJob(["stubborn.hang", json.dumps({"flag": str(flag)})])
        wait_for_file(flag)  # in process(), where it ignores its abort: the stop waits
        local.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        accepted = []  # before the signal was handled
        while True:
            assert time.monotonic() < deadline, "startJob was never refused"
            try:
                accepted.append(proxy.startJob(["example.square", '{"x": 2}']))
            except tango.DevFailed as err:
                assert "the server is shutting down: it takes no new job" in err.args[0].desc
                break
            time.sleep(0.01)
        assert proxy.getJobState(hung) == "running"  # reads are still answered
        # bug: an Init meanwhile (an operator's, a script's) undid the stop: startJob took
        # new jobs again, and started them, as the server went on stopping
        proxy.Init()
        with pytest.raises(tango.DevFailed, match="the server is shutting down"):
            proxy.startJob(["example.square", '{"x": 3}'])
        assert local.process.wait(30) == 1  # a job outlived the timeout: said by the status
    finally:
        local.stop()
    with sqlite3.connect(workdir / "journal.sqlite") as db:
        ids = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY id")]
        row = db.execute("SELECT state, error FROM jobs WHERE id = ?", (hung,)).fetchone()
    assert ids == [hung, *accepted]  # a refused job left no record
    assert row == ("aborted", f"{REASON} (the plugin had not stopped after 4 s)")


def test_a_server_killed_through_its_admin_device_still_pushes_the_events(
    tmp_path, monkeypatch, caplog
):
    # and (bug) a LocalServer whose port, free when picked, was taken before its server
    # bound it (by another program, or as any connection's local port): the server
    # exited with status 1, "Failed to bind to address 0.0.0.0 port N" (the pyFAI
    # benchmark's test, once in 26 runs under load): it starts on another port
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    picked = [port]
    monkeypatch.setattr(localserver, "free_port", lambda: picked.pop() if picked else free_port())
    with taken:
        local = LocalServer(str(tmp_path / "work"), str(tmp_path / "log"), 1, device=DEVICE)
        proxy = local.start(timeout=60)
    assert local.port != port and f":{local.port}/" in local.url
    failures = Failures(proxy)
    client = DahuClient(local.url, timeout=1)
    # its resolver kept busy below; a success told waits max_sweep_interval for a return
    held = DahuClient(local.url, timeout=1, resolvers=1, max_sweep_interval=0.3)
    gate = threading.Event()
    try:
        first = held.submit("example.sleep", {"t": 600})
        first.add_done_callback(lambda _: gate.wait(30))
        running(proxy, first.job_id)
        proxy.abort(first.job_id)  # its callback holds the only resolver of held
        done = held.submit("example.square", {"x": 2})
        deadline = time.monotonic() + 20
        while held.pending:  # its success told; its output not read yet
            assert time.monotonic() < deadline, "the success of the job was never told"
            time.sleep(0.01)
        sleeping = proxy.startJob(["example.sleep", '{"t": 600}'])
        queued = proxy.startJob(["example.sleep", '{"t": 600}'])
        futures = client.map("example.sleep", [{"t": 600}] * 30)
        running(proxy, sleeping)
        admin = tango.DeviceProxy(f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no")
        admin.command_inout("Kill")
        assert failures.wait_for({sleeping, queued}) >= {sleeping, queued}
        assert local.process.wait(30) == 0
        # bug: the future waited for the server's return, for ever: its device was gone
        # when the event of its job came (OBJECT_NOT_EXIST), and its outcome unread
        for future in futures:
            with pytest.raises(JobAborted, match="its server stopped before its outcome"):
                future.result(timeout=20)
        # bug: a job whose success was told, its output not read when the server went
        # away, waited for the server's return, for ever: it fails, saying where it is
        gate.set()
        with pytest.raises(ServerError, match="succeeded, but its server stopped") as err:
            done.result(timeout=20)
        assert err.value.reason == "Dahu_ServerStopped" and done.state == "success"
        assert f"'dahu-jobs show {done.job_id}'" in str(err.value)
        deadline = time.monotonic() + 20  # one warning per client (logged once settled)
        while True:
            said = [r for r in caplog.records if "the server has stopped" in r.getMessage()]
            said = [r.levelname for r in said if r.levelname != "DEBUG"]
            if len(said) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert said == ["WARNING"] * 2
        # (bug: an outcome unread said the server's URL twice, "URL: job 7: URL: journalId
        # cannot be read (asked again ...)")
        messages = [r.getMessage() for r in caplog.records if r.name == "dahu.client"]
        assert not [m for m in messages if m.count(local.url) > 1]
    finally:
        gate.set()
        held.close()
        client.close()
        local.stop()


def test_a_success_told_gets_its_output_from_a_server_back_after_a_kill(tmp_path):
    # bug: a job whose success was told, its output unread when its server was stopped
    # by its admin device's Kill (a restart: Kill, then start), failed at once
    # (Dahu_ServerStopped), the server back a second later with the output in its journal
    local = LocalServer(str(tmp_path / "work"), str(tmp_path / "log"), 1, device=DEVICE)
    proxy = local.start(timeout=60)
    held = DahuClient(local.url, timeout=1, resolvers=1, poll_interval=0.2, max_sweep_interval=30)
    gate, again = threading.Event(), None
    try:
        first = held.submit("example.sleep", {"t": 600})
        first.add_done_callback(lambda _: gate.wait(30))  # holds the only resolver
        running(proxy, first.job_id)
        proxy.abort(first.job_id)
        done = held.submit("example.square", {"x": 3})
        deadline = time.monotonic() + 20
        while held.pending:  # its success told; its output not read yet
            assert time.monotonic() < deadline, "the success of the job was never told"
            time.sleep(0.01)
        admin = f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no"
        tango.DeviceProxy(admin).command_inout("Kill")
        assert local.process.wait(30) == 0
        gate.set()  # its output asked while the server is away: the watcher then sees it gone
        deadline = time.monotonic() + 20
        while getattr(held, "_stopped_since", None) is None and not done.done():
            assert time.monotonic() < deadline, "the watcher never saw the server stopped"
            time.sleep(0.01)
        again = LocalServer(
            str(tmp_path / "work"), str(tmp_path / "log2"), 1, device=DEVICE, port=local.port
        )
        again.start(timeout=60)
        assert done.result(timeout=20)["result"] == 9
    finally:
        gate.set()
        held.close()
        if again is not None:
            again.stop()
        local.stop()


@pytest.mark.parametrize("stop", ["Kill", "SIGKILL", "SIGTERM"])
def test_no_future_waits_for_ever_for_a_server_stopped_for_good(tmp_path, caplog, stop):
    # bug: the events a server pushes as it ends (its admin device's Kill) are lost when
    # the client takes them slowly (ZeroMQ's queue dies with the server's process; 501
    # of 3,000 with a script that held Python's lock 1.5 s), and a crash pushes none:
    # those futures waited for the server's return, for ever (a script that never ended)
    local = LocalServer(str(tmp_path / "work"), str(tmp_path / "log"), 1, device=DEVICE)
    proxy = local.start(timeout=60)
    client = DahuClient(local.url, timeout=1, poll_interval=0.2, max_sweep_interval=1)
    lost: set[int] = set()  # the jobs whose events never reach the client
    old = None
    event = client._event
    client._event = lambda name, e: (
        None
        if not e.err and e.attr_value is not None and e.attr_value.value in lost
        else event(name, e)
    )
    try:
        futures = client.map("example.sleep", [{"t": 600}] * 6)
        lost.update(f.job_id for f in futures[::2])
        running(proxy, futures[0].job_id)
        if stop == "Kill":
            admin = f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no"
            tango.DeviceProxy(admin).command_inout("Kill")
            assert local.process.wait(30) == 0
        elif stop == "SIGTERM":  # the lost ones are asked while the server answers
            local.process.send_signal(signal.SIGTERM)  # (UNREAD_LINGER; a loaded machine
            for future in futures:  # may miss it: then as after a Kill)
                with pytest.raises((JobAborted, ServerError)) as err:
                    future.result(timeout=30)
                if future.job_id not in lost or isinstance(err.value, JobAborted):
                    assert str(err.value) == f"job {future.job_id} aborted: {REASON}"
                else:
                    assert err.value.reason == "Dahu_ServerStopped"
            return
        else:  # and (bug) the client of a server without journalId (an earlier Dahu)
            old = DahuClient(local.url, timeout=1, poll_interval=0.2, max_sweep_interval=1)
            old._journal = None  # (not checked: its stop was never seen)
            futures.append(old.submit("example.sleep", t=600))
            local.process.kill()
            local.process.wait(30)
        for future in futures:
            with pytest.raises((JobAborted, ServerError)) as err:
                future.result(timeout=30)
            if stop == "SIGKILL" or future.job_id in lost:
                assert err.value.reason == "Dahu_ServerStopped"
                assert str(err.value) == (
                    f"job {future.job_id}: its server stopped before it told how the job "
                    f"ended, and has not come back within 1 s: 'dahu-jobs show "
                    f"{future.job_id}' on its work directory says"
                )
        said = [r.getMessage() for r in caplog.records if "not back" in r.getMessage()]
        ends = [f"the {n} job(s) whose end it did not tell fail" for n in (len(lost), 6, 1)]
        assert sorted(m.rpartition("of ")[2] for m in said) == (
            ends[:1] if stop == "Kill" else sorted(ends[1:])
        )
    finally:
        if old is not None:
            old.close()
        client.close()
        local.stop()


@pytest.mark.parametrize("command", ["DevRestart", "RestartServer"])
def test_jobs_running_across_a_restart_of_the_device_end_through_the_new_one(tmp_path, command):
    # bug: the admin device's DevRestart (or RestartServer) made a new device object but
    # the jobs running went on reporting to the deleted one: their events were never
    # pushed ("cannot push jobFailure=2: jobFailure attribute not found" in the log), and
    # jobSuccess/jobFailure read -1 again
    local = LocalServer(str(tmp_path / "work"), str(tmp_path / "log"), 1, device=DEVICE)
    proxy = local.start(timeout=60)
    Failures(proxy)  # a subscriber: the device pushes the events
    try:
        done = proxy.startJob(["example.square", '{"x": 2}'])
        assert finish(proxy, done) == "success"
        sleeping = proxy.startJob(["example.sleep", '{"t": 600}'])
        running(proxy, sleeping)
        admin = tango.DeviceProxy(f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no")
        admin.command_inout(command, DEVICE) if command == "DevRestart" else admin.RestartServer()
        deadline = time.monotonic() + 30
        log = tmp_path / "log"
        while log.read_text().count(f"DahuDS {DEVICE} ready") < 2:  # made again: logged
            assert time.monotonic() < deadline, "the device was not made again"
            time.sleep(0.05)
        while True:  # RestartServer answers before the device is back
            try:
                assert proxy.read_attribute("jobSuccess").value == done
                break
            except tango.DevFailed:
                assert time.monotonic() < deadline, "the device did not come back"
                time.sleep(0.1)
        assert proxy.getJobState(sleeping) == "running"  # the restart kept the job
        assert proxy.abort(sleeping)
        assert finish(proxy, sleeping) == "aborted"
        assert proxy.jobFailure == sleeping
    finally:
        assert local.stop() == 0
    assert "attribute not found" not in (tmp_path / "log").read_text()


def test_devrestart_again_and_again_while_jobs_end_keeps_the_server_up(tmp_path):
    # bug: the files thread pushed job events through a device object that DevRestart
    # was deleting: the server died of a SIGSEGV in libtango within a few restarts
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # thousands of files: fast
    with tempfile.TemporaryDirectory(dir=shm) as work:
        local = LocalServer(work, str(tmp_path / "log"), 4, device=DEVICE)
        proxy = local.start(timeout=60)
        Failures(proxy)  # a subscriber: the device pushes the events
        proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, lambda event: None)
        admin = tango.DeviceProxy(f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no")
        # jobs that end all along the restarts (recording 30,000 of them took over the
        # client's 3 s on a loaded machine: the call failed API_DeviceTimedOut)
        proxy.set_timeout_millis(60_000)
        proxy.startJobs(["example.sleep", json.dumps([{"t": 0.001}] * 30_000)])
        try:
            for _ in range(60):
                with contextlib.suppress(tango.DevFailed):  # refused: the server died
                    admin.DevRestart(DEVICE)
                time.sleep(0.1)
            assert local.process.poll() is None, "the server died"
        finally:
            assert local.stop(timeout=60) == 0


def subscription_reached_the_server(proxy: tango.DeviceProxy, heard: dict[int, int]) -> None:
    """Wait until a job's event is heard: ``subscribe_event`` returns before ZeroMQ has
    taken the subscription to the server, and the events pushed meanwhile reach nobody
    (Tango's limit, longer on a loaded machine; docs/server.md)."""
    deadline = time.monotonic() + 30
    while not heard:
        assert time.monotonic() < deadline, "no event heard after subscribing"
        probe = proxy.startJob(["example.noop", "{}"])
        finish(proxy, probe)
        until = time.monotonic() + 0.5
        while not heard and time.monotonic() < until:
            time.sleep(0.01)


def test_a_subscriber_hears_once_of_every_job_that_ends_across_dev_restarts(tmp_path):
    # bug: the events of jobs that ended while DevRestart made the device again were
    # pushed before Tango gave the new object its subscribers: nobody received them
    heard: dict[int, int] = {}
    lock = threading.Lock()

    def on_event(event: tango.EventData) -> None:
        if not event.err and event.attr_value is not None and event.attr_value.value > 0:
            with lock:
                heard[int(event.attr_value.value)] = heard.get(int(event.attr_value.value), 0) + 1

    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as work:
        local = LocalServer(work, str(tmp_path / "log"), 2, device=DEVICE)
        proxy = local.start(timeout=60)
        try:
            for name in ("jobSuccess", "jobFailure"):
                proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, on_event)
            admin = tango.DeviceProxy(
                f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no"
            )
            subscription_reached_the_server(proxy, heard)
            # jobs end all along the restarts (the first one just after the subscription)
            noop = proxy.startJobs(["example.noop", json.dumps([{}] * 300)])
            admin.DevRestart(DEVICE)
            sleeping = proxy.startJobs(["example.sleep", json.dumps([{"t": 0.002}] * 1500)])
            ids = [int(i) for i in (*noop, *sleeping)]
            for _ in range(10):
                admin.DevRestart(DEVICE)
                time.sleep(0.05)
            assert finish(proxy, ids[-1]) == "success"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with lock:  # (heard holds the probes' too)
                    if set(ids) <= heard.keys():
                        break
                time.sleep(0.05)
            with lock:
                missed = [i for i in ids if i not in heard]
                assert not missed, f"{len(missed)} job(s) never told: {missed[:10]}"
                assert all(heard[i] == 1 for i in ids)
        finally:
            assert local.stop(timeout=60) == 0


class Served:
    """An object serving a device, as Tango makes it (its subscribers given late)."""

    def __init__(self) -> None:
        self.subscribers = False
        self.pushed: list[int] = []

    def get_name(self) -> str:
        return "test/dahu/served"

    def is_there_subscriber(self, name: str, kind: object) -> bool:
        return self.subscribers

    def push_change_event(self, name: str, value: int) -> None:
        self.pushed.append(value)


def test_an_object_deleted_before_its_event_thread_saw_its_subscribers_loses_no_event(
    monkeypatch,
):
    # bug: under load, a DevRestart came before the event thread of the object the
    # previous one made saw its subscribers: that thread gave up waiting 2 s later and
    # pushed the events held meanwhile through the deleted object, to nobody (256 of
    # the 300 jobs that ended during the first of 10 DevRestart never told)
    monkeypatch.setattr(server_settings, "_devices", {})
    first = Served()
    server_settings.adopt(first)
    first._held, first.subscribers = [], True
    server_events.ready_when_subscribed(first, False)
    server_events.push_event(first, "jobSuccess", 1)
    server_events.stop_pushing(first)  # DevRestart: first deleted, its subscribers gone
    first.subscribers = False
    server_events.push_event(first, "jobSuccess", 2)  # held
    second = Served()
    server_settings.adopt(second)
    waiting = threading.Thread(target=server_events.ready_when_subscribed, args=(second, True))
    waiting.start()  # it has not seen the subscribers Tango gave second yet...
    server_events.stop_pushing(second)  # ...when another DevRestart deletes second
    waiting.join(5)
    server_events.push_event(second, "jobSuccess", 3)  # held
    third = Served()
    server_settings.adopt(third)
    third.subscribers = True
    server_events.ready_when_subscribed(third, True)
    server_events.push_event(third, "jobSuccess", 4)
    assert (first.pushed, second.pushed, third.pushed) == ([1], [], [2, 3, 4])


def test_a_dev_restart_slow_to_give_the_subscribers_to_the_new_object_loses_no_event(
    monkeypatch,
):
    # bug: on a loaded machine, Tango gave the new object the subscribers more than 2 s
    # after it was made (1.3 s measured with the test suite running beside): the device
    # stopped waiting at 2 s and pushed the events held meanwhile to nobody
    monkeypatch.setattr(server_settings, "_devices", {})
    old, new = Served(), Served()

    class Clock:  # 2.5 s go by at once
        now = 0.0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.now += seconds
            new.subscribers = self.now >= 2.5

    monkeypatch.setattr(server_events, "time", Clock())
    server_settings.adopt(old)
    old._held = []
    server_events.stop_pushing(old)
    server_events.push_event(old, "jobFailure", 7)  # held
    server_settings.adopt(new)
    server_events.ready_when_subscribed(new, True)
    assert new.pushed == [7]


def test_statistics_collected_across_a_dev_restart_are_what_the_new_device_shows(monkeypatch):
    # bug: statistics collected while a DevRestart replaced the device object were kept
    # by the deleted one: the new one's statisticsCollected and getStatistics gave the
    # text collected before, unlike the statisticsCollected event just pushed
    monkeypatch.setattr(server_settings, "_devices", {})
    old, new = Served(), Served()
    server_settings.adopt(old)
    old._last, old._events = {"statisticsCollected": "before"}, queue.SimpleQueue()

    def collect() -> str:
        server_settings.adopt(new)  # a DevRestart meanwhile
        return "after"

    monkeypatch.setattr(server, "statistics_text", collect)
    server.DahuDS._collect_statistics(old)
    assert (server.DahuDS.statisticsCollected.fget(new), old._events.get_nowait()) == (
        "after",
        ("statisticsCollected", "after"),
    )


def test_a_job_ending_as_a_dev_restart_hands_the_device_over_is_what_it_shows(monkeypatch):
    # bug: a job that ended as DevRestart's new object took over (after it had copied the
    # last job ids, before it served the device) was recorded by the deleted object only:
    # the new one's jobSuccess kept the id of the job before, although the event pushed
    # through it told of this one, until another job succeeded
    old, new = Served(), Served()
    done = types.SimpleNamespace(id=8, status="success")
    pushed: list[tuple[str, int]] = []

    class Handover(dict):  # the job ends just before the new object serves the device
        def __setitem__(self, name: str, device: object) -> None:
            if device is new:
                server.DahuDS._job_ended(old, done)
            super().__setitem__(name, device)

    monkeypatch.setattr(server_settings, "_devices", Handover())
    server_settings.adopt(old)
    old._web, old._engine = None, types.SimpleNamespace(clean_later=lambda job, push: push())
    old._push = lambda name, value: pushed.append((name, value))
    old._last = {"jobSuccess": 7, "jobFailure": -1, "statisticsCollected": ""}
    server_settings.adopt(new)
    assert pushed == [("jobSuccess", 8)]
    assert server.DahuDS.jobSuccess.fget(new) == 8


def test_a_dev_restart_while_another_client_waits_keeps_the_subscribers_told(tmp_path):
    # bug: with another client's waitJob in progress, the object DevRestart deleted said
    # it had no subscriber: the new one pushed at once, before Tango gave it the old one's,
    # and the events of the jobs that ended just after the restart reached nobody
    heard: set[int] = set()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as work:
        local = LocalServer(work, str(tmp_path / "log"), 2, device=DEVICE)
        proxy = local.start(timeout=60)
        try:
            proxy.subscribe_event(
                "jobSuccess",
                tango.EventType.CHANGE_EVENT,
                lambda event: event.err or heard.add(int(event.attr_value.value)),
            )
            admin = tango.DeviceProxy(
                f"tango://127.0.0.1:{local.port}/dserver/DahuDS/demo#dbase=no"
            )
            slow = proxy.startJob(["example.sleep", '{"t": 1}'])
            other = tango.DeviceProxy(local.url)

            def wait_for_slow() -> None:  # a call sent as the object goes fails: no matter
                with contextlib.suppress(tango.DevFailed):
                    other.waitJob(slow)

            waiter = threading.Thread(target=wait_for_slow)
            waiter.start()
            running(proxy, slow)
            batch = json.dumps([{"t": 0.001}] * 300)
            ids = [int(i) for i in proxy.startJobs(["example.sleep", batch])]
            admin.DevRestart(DEVICE)  # while the waitJob goes on
            waiter.join(10)
            assert finish(proxy, ids[-1]) == "success"
            deadline = time.monotonic() + 10
            while not set(ids) <= heard and time.monotonic() < deadline:
                time.sleep(0.05)
            missed = sorted(set(ids) - heard)
            assert not missed, f"{len(missed)} job(s) never told: {missed[:10]}"
        finally:
            assert local.stop(timeout=60) == 0


def test_a_stop_just_after_an_event_was_pushed_answers_a_moment_more(monkeypatch):
    # bug: SIGTERM just after a job's event was pushed (its files written, nothing left
    # to wait for): the server went at once, its event still in ZeroMQ's queue (lost) and
    # its client unable to read the job; after an event, it answers READS_LINGER s more
    engine = types.SimpleNamespace(
        cycle=types.SimpleNamespace(), files_settled=lambda: time.time() + 1.0, live=list
    )
    monkeypatch.setattr(server_settings, "_engine", engine)
    monkeypatch.setattr(server_settings, "_stop_began", None)
    monkeypatch.setattr(server_settings, "_pushed_at", -float("inf"))
    start = time.monotonic()
    server_settings.abort_while_serving(3600.0)  # no event lately: it goes at once
    assert time.monotonic() - start < 1800
    monkeypatch.setattr(server_settings, "_stop_began", None)
    server_settings.pushed()
    pushed = time.monotonic()
    server_settings.abort_while_serving(server_settings.READS_LINGER)
    assert time.monotonic() - pushed >= server_settings.READS_LINGER


def test_a_stop_counts_the_jobs_a_slot_aborted_before_it_looked(monkeypatch, caplog):
    # bug (stress run, loaded machine): "stopping: N job(s) aborted" left out the queued
    # jobs a slot took, aborted at once and ended between the stop's halt and its first
    # look at the live jobs (the stop's thread descheduled meanwhile): the log said fewer
    # than the journal's aborted jobs
    from dahu.engine.lifecycle import SHUTDOWN_REASON

    taken = types.SimpleNamespace(id=7, abort_reason=None, done=threading.Event())
    live = [taken]

    class Cycle:  # a slot takes the queued job as the halt is set, and ends it aborted
        def __setattr__(self, name, value):
            if name == "halted":
                taken.abort_reason = value
                taken.done.set()
                live.clear()
            object.__setattr__(self, name, value)

    engine = types.SimpleNamespace(
        cycle=Cycle(),
        files_settled=lambda: time.time() + 1.0,
        live=lambda: list(live),
        abort_all=lambda runs, reason: 0,
        flush_files=lambda timeout: True,
    )
    monkeypatch.setattr(server_settings, "_engine", engine)
    monkeypatch.setattr(server_settings, "_stop_began", None)
    monkeypatch.setattr(server_settings, "_pushed_at", -float("inf"))
    with caplog.at_level("INFO", logger="dahu.server_settings"):
        server_settings.abort_while_serving(0.0)
    assert taken.abort_reason == SHUTDOWN_REASON
    assert "stopping: 1 job(s) aborted" in caplog.text


def test_a_stopping_server_answers_while_its_clients_read_the_aborted_jobs(monkeypatch):
    # bug: a stop aborting 20,000 queued jobs answered 0.5 s after their events, then
    # went: a client's futures whose errors it had not read yet (9,260 of them) waited
    # for the server's return. Each first read of an aborted job's outcome now keeps it
    # answering READS_LINGER s more (within the shutdown timeout). A fake clock: each
    # wait of the stop is cut short by a client's read, halfway through
    clock = [1000.0]
    # 7's state, then its error; 99: not a job of the stop; 7 again: read already
    reads = [(7, False), (7, True), (99, True), (8, True), (7, True)]

    def sleep(seconds: float) -> None:
        clock[0] += seconds / 2 if reads else seconds
        if reads:
            server_settings.outcome_read(*reads.pop(0))

    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time, sleep=sleep)
    runs = [types.SimpleNamespace(id=n, done=threading.Event(), abort_reason=None) for n in (7, 8)]

    def abort_all(runs, reason):
        for run in runs:
            run.abort_reason = reason
            run.done.set()

    def flush_files(timeout):
        server_settings.pushed()  # their events
        return True

    engine = types.SimpleNamespace(
        cycle=types.SimpleNamespace(),
        files_settled=lambda: time.time() + 1.0,
        live=lambda: [run for run in runs if not run.done.is_set()],
        abort_all=abort_all,
        flush_files=flush_files,
    )
    monkeypatch.setattr(server_settings, "time", fake_time)
    monkeypatch.setattr(server_settings, "_engine", engine)
    monkeypatch.setattr(server_settings, "_stop_began", None)
    monkeypatch.setattr(server_settings, "_unread", set())
    monkeypatch.setattr(server_settings, "_read_at", -float("inf"))
    monkeypatch.setattr(server_settings, "_pushed_at", -float("inf"))
    server_settings.abort_while_serving(0.5)
    # polled each 0.05 s (0.025 while reads come): 7 at 1000.025 and 1000.05, 99, 8 at
    # 1000.1, the last unread: until 1000.6, the first poll past it
    assert clock[0] == pytest.approx(1000.625)
    assert not reads
    # bug: a client whose events of some aborted jobs were lost (ZeroMQ dropped them in
    # the burst) asks their states through its watcher, after its poll_interval (1 s by
    # default) without events: the server had gone 0.5 s after the last read, and those
    # futures waited for its return (66 of 60,000 under load). While one is unread, the
    # server answers UNREAD_LINGER s after a read
    runs[:] = [
        types.SimpleNamespace(id=n, done=threading.Event(), abort_reason=None) for n in (9, 10)
    ]
    reads[:] = [(9, True)]  # 10 never read: its client lost its event
    monkeypatch.setattr(server_settings, "_stop_began", None)
    clock[0] = 2000.0
    server_settings.abort_while_serving(0.5)
    assert server_settings.UNREAD_LINGER >= 2 * 1.0  # a default poll_interval, and a round
    assert clock[0] == pytest.approx(2000.025 + server_settings.UNREAD_LINGER, abs=0.06)


DEAF = '''
import os
import time

from dahu.factory import register
from dahu.plugin import Plugin


@register
class Deaf(Plugin):
    """Ignores its abort: returns once the file ``release`` exists (creates ``flag``)."""

    def process(self):
        open(self.input["flag"], "w").close()
        while not os.path.exists(self.input["release"]):
            time.sleep(0.02)
'''


def test_a_plugin_hung_past_a_stop_shorter_than_the_abort_grace_is_not_abandoned(
    tmp_path, plugin_dir, monkeypatch
):
    # bug (a loaded machine): --shutdown-timeout 4 and a plugin that ignores its abort:
    # when the stop came to record it more than 1 s past its timeout, the thread executor
    # had abandoned it meanwhile (5 s after the abort): its job read "did not stop within
    # 5 s; its thread is abandoned" and the server exited with status 0, where on a quiet
    # machine it read "had not stopped after 4 s", status 1. Here the abandon comes first.
    import dahu.engine
    from dahu.job import Job

    (plugin_dir / "stop_deaf.py").write_text(DEAF)  # (test_executors has a deaf.py)
    grace = 0.2
    engine = dahu.engine.configure(
        workdir=str(tmp_path / "work"), max_workers=1, executor_options={"abort_grace": grace}
    )
    flag, release = tmp_path / "in-process", tmp_path / "release"
    job = Job("stop_deaf.deaf", {"flag": str(flag), "release": str(release)})
    job.start()
    try:
        wait_for_file(flag)
        monkeypatch.setattr(server_settings, "_engine", engine)
        monkeypatch.setattr(server_settings, "_stop_began", None)
        monkeypatch.setattr(server_settings, "_unread", set())
        monkeypatch.setattr(server_settings, "_pushed_at", -float("inf"))
        monkeypatch.setattr(server_settings.settings, "shutdown_timeout", 0.1)
        server_settings.abort_while_serving(0.0)  # the signal: the job is aborted
        later = threading.Event()
        engine.watchdog.call_later(grace, later.set)  # after the abandon's time (one thread)
        assert later.wait(30)
        assert not engine.shutdown(abort=True, timeout=0.1, since=server_settings._stop_began)
        assert job.status == "aborted"
        assert job.error == f"{REASON} (the plugin had not stopped after 0.1 s)"
    finally:
        release.touch()
