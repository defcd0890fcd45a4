"""``dahu.client`` across server restarts, against real ``dahu_server`` processes."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest
import tango

from dahu.app.localserver import LocalServer
from dahu.client import DahuClient, JobFuture, ServerError

from .conftest import finish


def wait_running(future: JobFuture, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while future.state != "running":
        assert time.monotonic() < deadline, f"job {future.job_id} did not start"
        time.sleep(0.01)


def test_a_server_restarted_on_a_new_journal_does_not_settle_the_old_jobs(tmp_path):
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
        with DahuClient(first.url, poll_interval=0.2) as dahu:
            old = dahu.submit("example.sleep", t=600)
            wait_running(old)
            first.process.kill()
            first.process.wait()
            second.start(timeout=60)
            proxy = tango.DeviceProxy(second.url)
            other = proxy.startJob(["example.square", '{"x": 3}'])
            assert other == old.job_id  # the same id: another job
            assert finish(proxy, other) == "success"
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


def test_cancelling_a_job_of_the_old_journal_leaves_the_new_servers_job_alone(tmp_path):
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
            started = time.monotonic()
            assert old.cancel() is False  # not this server's job: nothing to abort
            assert heard == [False] and time.monotonic() - started < 2
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
