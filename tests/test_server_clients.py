"""The DahuDS device under several clients at once (a beamline control system): one
submits a large batch while another asks for the last job, Init while jobs end, the
DevLong limit of job ids."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
import tango
from tango.test_context import DeviceTestContext

from dahu.app.localserver import LocalServer
from dahu.journal.sqlite import SQLiteJournal
from dahu.server import DahuDS

from .conftest import finish, next_item, wait_subscribed


def start_device(workdir: Path, **properties) -> DeviceTestContext:
    props = {"workdir": str(workdir), "max_workers": 2, "wait_timeout": 1.0, **properties}
    return DeviceTestContext(DahuDS, process=True, properties=props, timeout=60)


@pytest.fixture(scope="module")
def proxy():
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # thousands of job files: fast
    with tempfile.TemporaryDirectory(dir=shm) as work, start_device(Path(work)) as proxy:
        yield proxy


@pytest.fixture
def other(proxy):
    """A second, independent client of the same device, patient with large batches."""
    client = tango.DeviceProxy(proxy.dev_name())
    client.set_timeout_millis(60_000)
    return client


def test_the_last_job_is_a_job_while_another_client_records_a_batch(proxy, other):
    # bug: -1 stood for the last id a startJobs batch had taken, before its records were
    # written: while another client's batch was being recorded (seconds for a large
    # one), getJobState(-1), abort(-1), waitJob(-1) answered "no job -1: job ids run
    # from 1 to N", N being that very job
    first = proxy.startJob(["example.noop", "{}"])
    batch: list[int] = []
    submitter = threading.Thread(
        target=lambda: batch.extend(other.startJobs(["example.noop", json.dumps([{}] * 20_000)]))
    )
    submitter.start()
    answers, refusals = 0, []
    while submitter.is_alive():
        try:
            proxy.getJobState(-1)
            answers += 1
        except tango.DevFailed as err:
            refusals.append(err.args[0].desc)
    submitter.join()
    assert batch and batch[0] > first
    assert answers > 10  # it asked while the batch was recorded
    assert refusals == [], refusals[:3]
    assert finish(proxy, -1) == "success"


def test_every_job_has_its_event_across_init(proxy, other):
    # bug: the event of a job that ended while the device ran Init was dropped: a
    # subscriber never heard of it
    events: queue.SimpleQueue = queue.SimpleQueue()

    def on_event(event):
        if not event.err and event.attr_value is not None:
            events.put(int(event.attr_value.value))

    subscription = other.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:
        wait_subscribed(proxy, lambda seconds: next_item(events, seconds))
        ids = [
            int(i) for i in proxy.startJobs(["example.sleep", json.dumps([{"t": 0.002}] * 2000)])
        ]
        for _ in range(8):  # Init, again and again, while the jobs end
            proxy.init()
            time.sleep(0.1)
        assert finish(proxy, ids[-1]) == "success"
        heard: list[int] = []
        deadline = time.monotonic() + 60  # after the events of the jobs of other tests
        while not set(ids) <= set(heard) and time.monotonic() < deadline:
            try:
                heard.append(events.get(timeout=0.5))
            except queue.Empty:
                pass
    finally:
        other.unsubscribe_event(subscription)
    missing = sorted(set(ids) - set(heard))
    assert missing == [], f"{len(missing)} job(s) without their event: {missing[:10]}"
    mine = [job_id for job_id in heard if job_id in set(ids)]
    assert len(mine) == len(set(mine)), "an event pushed twice"


def test_ids_past_the_devlong_limit_are_refused_and_their_jobs_end(tmp_path):
    # bug: a job whose id did not fit a DevLong was refused but left in the journal
    # "uninitialized" for good: -1 stood for it, waitJob(-1) never saw it end, and the
    # next start closed it as "interrupted" (a process died)
    journal = SQLiteJournal(str(tmp_path))
    journal.close()
    with contextlib.closing(sqlite3.connect(tmp_path / SQLiteJournal.FILENAME)) as db, db:
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (2**31 - 3,))
    with start_device(tmp_path) as proxy:
        fits = [proxy.startJob(["example.square", "{}"]) for _ in range(2)]
        assert fits == [2**31 - 2, 2**31 - 1]
        for call, argin in ((proxy.startJob, "{}"), (proxy.startJobs, "[{}, {}]")):
            with pytest.raises(tango.DevFailed) as info:
                call(["example.square", argin])
            assert "not fit a DevLong (at most 2147483647)" in info.value.args[0].desc
        assert proxy.waitJob(-1) == "failure"  # the last refused job: it ended
        error = proxy.getJobError(-1)
        assert error.startswith("job ids 2147483649 to 2147483650 do not fit a DevLong")
        assert all(finish(proxy, job_id) == "success" for job_id in fits)
        assert proxy.jobsRunning == proxy.jobsQueued == 0
    with contextlib.closing(sqlite3.connect(tmp_path / SQLiteJournal.FILENAME)) as db:
        states = dict(db.execute("SELECT id, state FROM jobs WHERE id > ?", (2**31 - 1,)))
    assert states == {2**31: "failure", 2**31 + 1: "failure", 2**31 + 2: "failure"}


def test_a_stop_with_many_jobs_queued_logs_one_true_line(tmp_path):
    # bug: the slots aborted the queue's head while the stop aborted its tail: each job
    # the two met on logged "job N is already being aborted: nothing to abort" (one line
    # per queued job, 75,000 here), and "stopping: N job(s) aborted" counted only the tail
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as work:
        local = LocalServer(work, str(tmp_path / "log"), 2, device="test/dahu/1")
        proxy = local.start(timeout=60)
        try:
            proxy.set_timeout_millis(60_000)
            proxy.startJobs(["example.sleep", json.dumps([{"t": 0.01}] * 5000)])
        finally:
            assert local.stop() == 0
        with contextlib.closing(sqlite3.connect(Path(work) / SQLiteJournal.FILENAME)) as db:
            aborted = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'aborted'").fetchone()
    log = (tmp_path / "log").read_text()
    assert "nothing to abort" not in log
    assert f"stopping: {aborted[0]} job(s) aborted" in log
