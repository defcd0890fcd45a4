"""``dahu.client`` across server restarts, against real ``dahu_server`` processes."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest
import tango

from dahu import client_calls
from dahu.app.localserver import LocalServer
from dahu.client import DahuClient, JobFuture, ServerError


def wait_running(future: JobFuture, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while future.state != "running":
        assert time.monotonic() < deadline, f"job {future.job_id} did not start"
        time.sleep(0.01)


def test_a_server_restarted_on_a_new_journal_does_not_settle_the_old_jobs(tmp_path, monkeypatch):
    # bug: the new server numbers its jobs from 1 again, and the client's future of the
    # old server's job 1 took the outcome of the new server's job 1 (another job)
    device = "test/dahu/fresh"
    first = LocalServer(str(tmp_path / "a"), str(tmp_path / "a.log"), device=device)
    first.start(timeout=60)
    second = LocalServer(
        str(tmp_path / "b"), str(tmp_path / "b.log"), device=device, port=first.port
    )
    journal = f"file:{tmp_path / 'a' / 'journal.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(journal, uri=True)) as db:  # made at start: a
        assert db.execute("SELECT count(*) FROM identity").fetchone() == (1,)  # read waits not
    try:
        quick = DahuClient(first.url, timeout=10, poll_interval=0.2)
        with quick, DahuClient(first.url, poll_interval=0.2) as dahu:
            old = dahu.submit("example.sleep", t=600)
            wait_running(old)
            real_call_once, restarted = client_calls._call_once, []

            def restarted_as_it_is_called(client, command, *args):
                if client is quick and command == "startJob" and not restarted:
                    restarted.append(command)  # the journal was checked just before
                    first.process.kill()
                    first.process.wait()
                    second.start(timeout=60)
                    raise ServerError("startJob: Failed to connect", "API_CantConnectToDevice")
                return real_call_once(client, command, *args)

            monkeypatch.setattr(client_calls, "_call_once", restarted_as_it_is_called)
            # bug: the refused startJob, tried again, made the new server's job 1, whose
            # future then failed "the server now has another journal" (Dahu_JournalChanged)
            submitted = quick.submit("example.square", x=3)
            assert restarted
            other = submitted.job_id
            assert other == old.job_id  # the same id: another job
            assert submitted.result(timeout=30)["result"] == 9
            with pytest.raises(ServerError) as info:
                old.result(timeout=60)
            assert info.value.reason == "Dahu_JournalChanged"
            assert "another journal" in str(info.value) and "\n" not in str(info.value)
            assert old.state == "inexistant"  # not the new server's job of that id
            # the client goes on with the new server's jobs
            assert dahu.submit("example.square", x=5).result(timeout=30)["result"] == 25
            assert dahu.job(other).result(timeout=30)["result"] == 9
    finally:
        first.stop()
        assert second.stop() == 0


@pytest.mark.parametrize("refused", [False, True], ids=["checked", "refused-then-back"])
def test_cancelling_a_job_of_the_old_journal_leaves_the_new_servers_job_alone(
    tmp_path, monkeypatch, refused
):
    # bug: cancel() of the old server's job 1 aborted the new server's job 1, another
    # job, before anything had noticed the restart (the watcher idle: long intervals),
    # and its state was that job's
    device = "test/dahu/cancel-fresh"
    first = LocalServer(str(tmp_path / "a"), str(tmp_path / "a.log"), device=device)
    first.start(timeout=60)
    second = LocalServer(
        str(tmp_path / "b"), str(tmp_path / "b.log"), device=device, port=first.port
    )
    try:
        with DahuClient(first.url, poll_interval=300, sweep_interval=300) as dahu:
            old = dahu.submit("example.sleep", t=600)
            # a callback of a future that the journal check fails, cancelling another
            # one: it was run by cancel()'s caller thread, and its cancel() waited for
            # that thread, busy running it: "did not answer within 3 s" after 3 s
            sibling, third, heard = dahu.map("example.sleep", [{"t": 600}] * 2) + [[]]
            sibling.add_done_callback(lambda _: heard.append(third.cancel()))
            first.process.kill()
            first.process.wait()
            second.start(timeout=60)
            proxy = tango.DeviceProxy(second.url)
            other = proxy.startJob(["example.sleep", '{"t": 600}'])
            assert other == old.job_id
            dahu._journal_seen -= 300  # as if the last check were older than poll_interval
            if refused:  # bug: checked just before, the abort refused (the server was
                # restarting) was made again on the new server: its job 1 aborted
                dahu._journal_seen = time.monotonic()
                real_call_once = client_calls._call_once

                def restarting(client, command, *args):
                    if command == "abort" and not refused_once:
                        refused_once.append(command)
                        raise ServerError("abort: Failed to connect", "API_CantConnectToDevice")
                    return real_call_once(client, command, *args)

                refused_once: list = []
                monkeypatch.setattr(client_calls, "_call_once", restarting)
            started = time.monotonic()
            assert old.cancel() is False  # not this server's job: nothing to abort
            # (refused: once, then asked again after Tango's 1 s of reconnection)
            assert heard == [False] and time.monotonic() - started < 2 + refused
            assert old.state == "inexistant"  # not the new server's job 1's "running"
            with pytest.raises(ServerError, match="another journal"):
                old.result(timeout=10)
            assert proxy.getJobState(other) in ("starting", "running")
            assert proxy.abort(other)
    finally:
        first.stop()
        assert second.stop() == 0


def test_a_server_that_cannot_give_its_journal_id_is_still_a_server_to_connect_to(tmp_path):
    # bug (of journalId's first version): a server whose journal could not make its
    # token (its disk full, here a journal that refuses it) refused every client:
    # "cannot connect to ...", although it ran and served jobs
    import sqlite3

    from dahu.journal import SQLiteJournal

    SQLiteJournal(str(tmp_path / "work")).close()
    with sqlite3.connect(tmp_path / "work" / SQLiteJournal.FILENAME) as db:
        db.execute("CREATE VIEW identity AS SELECT 'x' AS token WHERE 0")  # refuses a token
    local = LocalServer(
        str(tmp_path / "work"), str(tmp_path / "server.log"), device="test/dahu/noid"
    )
    proxy = local.start(timeout=60)
    try:
        with pytest.raises(tango.DevFailed):  # what the client reads at connect
            proxy.read_attribute("journalId")
        with DahuClient(local.url, poll_interval=0.2) as dahu:
            assert dahu.submit("example.square", x=4).result(timeout=30)["result"] == 16
            assert "example.square" in dahu.plugins()
    finally:
        assert local.stop() == 0
    assert "the journal has no identity yet" in (tmp_path / "server.log").read_text()
