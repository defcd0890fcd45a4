"""The journal: one contract for every implementation, then restarts of real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

from dahu.journal import INTERRUPTED, MemoryJournal, SQLiteJournal, job_file_stem

from .conftest import child_env


@pytest.fixture(params=["memory", "sqlite"])
def journal(request, tmp_path):
    if request.param == "memory":
        yield MemoryJournal()
    else:
        db = SQLiteJournal(str(tmp_path))
        yield db
        db.close()


class TestJournalContract:
    """What every journal implementation promises."""

    def test_create_returns_increasing_ids_with_record(self, journal):
        first = journal.create("example.square", {"x": 1, "plugin_name": "example.square"}, 1.0)
        second = journal.create("example.cube", {"x": 2}, 2.0)
        assert second > first >= 1
        assert journal.last_id() == second
        record = journal.get(first)
        assert record.plugin == "example.square"
        assert record.state == "uninitialized"
        assert record.input == {"x": 1, "plugin_name": "example.square", "job_id": first}
        assert record.submitted == 1.0
        assert record.pid == os.getpid()
        assert record.host and record.version

    def test_finish_records_outcome_and_provenance(self, journal):
        job_id = journal.create("example.square", {"x": 3}, 1.0)
        journal.set_state(job_id, "running", 2.0)
        assert journal.get(job_id).state == "running"
        journal.finish(
            job_id, "success", {"result": numpy.int64(9)}, None, 2.0, 2.5, "/p/example.py", "1.0"
        )
        record = journal.get(job_id)
        assert record.state == "success"
        assert record.output == {"result": 9}
        assert record.runtime == pytest.approx(0.5)
        assert (record.module_file, record.plugin_version) == ("/p/example.py", "1.0")

    def test_a_final_state_is_never_overwritten_by_a_running_one(self, journal):
        job_id = journal.create("example.square", {}, 1.0)
        journal.finish(job_id, "success", {"result": 1}, None, 1.0, 2.0)
        journal.set_state(job_id, "running", 1.0)
        assert journal.get(job_id).state == "success"
        assert journal.state(job_id) == "success"

    def test_missing_id_is_none(self, journal):
        assert journal.get(12345) is None
        assert journal.last_id() == 0

    def test_select_by_range_and_state(self, journal):
        ids = [journal.create("example.noop", {"i": i}, float(i)) for i in range(5)]
        journal.finish(ids[1], "failure", None, "boom", 1.0, 2.0)
        assert [r.id for r in journal.select(ids[1], ids[3])] == ids[1:4]
        assert [r.id for r in journal.select(state="failure")] == [ids[1]]

    def test_summary_counts_and_regression(self, journal):
        for i in range(4):
            job_id = journal.create("example.square", {}, 0.0)
            journal.finish(job_id, "success", {}, None, float(i), float(i) + 1 + i)
        summary = journal.summary()
        assert summary["plugins"]["example.square"]["success"] == 4
        assert summary["total_runtime"] == pytest.approx(1 + 2 + 3 + 4)
        assert summary["wall_time"] == pytest.approx(7.0)
        assert summary["regression"]["slope"] == pytest.approx(1.0)
        assert summary["regression"]["intercept"] == pytest.approx(1.0)


def test_journal_refuses_a_newer_schema(tmp_path):
    import sqlite3

    SQLiteJournal(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(Exception, match="newer than this Dahu"):
        SQLiteJournal(str(tmp_path))


CHILD = """
import sys, dahu.engine
from dahu.job import Job
dahu.engine.configure(workdir=sys.argv[1])
mode = sys.argv[2]
if mode == "run":
    for x in range(3):
        job = Job("example.square", {"x": x}); job.start(); job.join(); job.clean()
    print(job.id, flush=True)
elif mode == "hang":
    job = Job("example.sleep", {"t": 600}); job.start()
    queued = Job("example.square", {"x": 1})  # created, never started
    while job.status != "running":
        pass
    print(job.id, queued.id, flush=True)
    job.join()
"""


def child(workdir, mode):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(workdir), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def test_restart_continues_ids_and_reads_old_jobs(workdir):
    first = child(workdir, "run")
    last_of_first = int(first.communicate(timeout=60)[0])
    second = child(workdir, "run")
    last_of_second = int(second.communicate(timeout=60)[0])
    assert last_of_second == last_of_first + 3

    import dahu.engine
    from dahu.job import Job

    dahu.engine.configure(workdir=str(workdir))
    assert Job.getStatusFromID(last_of_first) == "success"
    assert Job.getDataOutputFromID(last_of_first)["result"] == 4
    assert Job.getDataInputFromID(last_of_first)["x"] == 2
    assert Job.getErrorFromID(last_of_first) == ""
    new = Job("example.square", {"x": 1})
    assert new.id == last_of_second + 1
    stem = job_file_stem(str(workdir), last_of_first, "example.square")
    assert json.loads(open(stem + ".out").read())["result"] == 4


def test_sigkill_mid_job_marks_it_interrupted(workdir):
    proc = child(workdir, "hang")
    running_id, queued_id = map(int, proc.stdout.readline().split())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    import dahu.engine
    from dahu.job import Job

    t0 = time.monotonic()
    engine = dahu.engine.configure(workdir=str(workdir))
    assert time.monotonic() - t0 < 5
    assert sorted(engine.interrupted) == [running_id, queued_id]
    for job_id in (running_id, queued_id):
        assert Job.getStatusFromID(job_id) == "failure"
        assert Job.getErrorFromID(job_id) == INTERRUPTED
        assert Job.getDataInputFromID(job_id)["job_id"] == job_id
    assert Job("example.noop", {}).id == queued_id + 1


def test_live_process_jobs_are_not_marked_interrupted(workdir):
    proc = child(workdir, "hang")
    try:
        running_id, _ = map(int, proc.stdout.readline().split())
        journal = SQLiteJournal(str(workdir))
        assert journal.mark_interrupted() == []
        assert journal.get(running_id).state != "failure"
        journal.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_opening_without_create_needs_an_existing_journal(tmp_path):
    from dahu.journal import JournalError

    with pytest.raises(JournalError, match="no journal in"):
        SQLiteJournal(str(tmp_path / "empty"), create=False)
    assert not (tmp_path / "empty").exists()
    SQLiteJournal(str(tmp_path)).close()
    SQLiteJournal(str(tmp_path), create=False).close()
