"""The journal: one contract for every implementation, then restarts of real processes."""

import contextlib
import http
import io
import json
import logging
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types

import numpy
import pytest

import dahu.engine
from dahu.job import Job
from dahu.journal import (
    INTERRUPTED,
    JournalError,
    MemoryJournal,
    SQLiteJournal,
    job_file_stem,
    write_job_files,
)

from .conftest import child_env, damage, wait_for_file


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

    def test_create_refuses_an_input_json_cannot_encode_and_records_nothing(self, journal):
        journal.create("example.noop", {}, 1.0)
        with pytest.raises(JournalError, match="not JSON-serialisable"):
            journal.create("example.noop", {"handle": object()}, 2.0)
        assert journal.last_id() == 1
        assert journal.get(2) is None

    def test_create_many_records_all_in_order_or_none(self, journal):
        ids = journal.create_many("example.square", [{"x": i} for i in range(5)], 3.0)
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert [journal.get(i).input["x"] for i in ids] == list(range(5))
        assert {journal.state(i) for i in ids} == {"uninitialized"}
        with pytest.raises(JournalError):
            journal.create_many("example.square", [{"x": 1}, {"x": object()}], 4.0)
        assert journal.last_id() == ids[-1]
        assert journal.create_many("example.square", [], 5.0) == []

    def test_unknown_ids_are_ignored_by_writes_and_unknown_to_reads(self, journal):
        journal.set_state(404, "running", 1.0)
        journal.finish(404, "success", {"result": 1}, None, 1.0, 2.0)
        assert journal.get(404) is None
        assert journal.state(404) is None
        assert journal.last_id() == 0
        assert list(journal.select()) == []

    def test_output_text_is_the_recorded_output(self, journal):
        assert journal.output_text(404) is None
        job_id = journal.create("example.square", {"x": 3}, 1.0)
        assert journal.output_text(job_id) == "{}"
        journal.finish(job_id, "failure", {"error": ["ValueError: no", "line"]}, "x", 1.0, 2.0)
        assert json.loads(journal.output_text(job_id)) == journal.get(job_id).output

    def test_later_writes_are_committed_then_reported(self, journal):
        reports: list = []
        job_id, token = journal.create_later(reports.append, "example.square", {"x": 2}, 1.0)
        journal.settle(token)
        assert journal.get(job_id).state == "uninitialized"
        journal.finish_later(reports.append, job_id, "success", {"result": 4}, None, 1.0, 2.0)
        assert journal.flush(10)
        assert reports == [None, None]
        assert journal.get(job_id).output == {"result": 4}
        assert journal.last_id() == job_id

    def test_text_with_lone_surrogates_is_recorded_escaped(self, journal):
        # a KeyError of a "\\udfff" JSON key, a file name with an undecodable byte
        job_id = journal.create("example.\udce9", {"\udfff": "x"}, 1.0)
        error = "KeyError: '\udfff' in /data/caf\udce9.edf"
        journal.finish(job_id, "failure", {"f": "caf\udce9"}, error, 1.0, 2.0, "/p/\udce9.py")
        record = journal.get(job_id)
        assert record.error == "KeyError: '\\udfff' in /data/caf\\udce9.edf"
        assert record.plugin == "example.\\udce9"
        assert record.output == {"f": "caf\udce9"}  # JSON: kept as it was
        assert record.input["\udfff"] == "x"

    def test_finish_keeps_what_json_cannot_encode_as_text_and_the_rest_as_it_is(self, journal):
        # bug: one object in an output replaced all of it by 1,000 characters of repr
        job_id = journal.create("example.noop", {}, 1.0)
        output = {"handle": object(), "result": [1.5, 2], (1, 2): "t", "n": {"s": {3}}}
        journal.finish(job_id, "success", output, None, 1.0, 2.0)
        record = journal.get(job_id)
        assert record.state == "success"
        assert record.output["handle"].startswith("<object object at")
        assert record.output["result"] == [1.5, 2]
        assert record.output["(1, 2)"] == "t"
        assert record.output["n"] == {"s": [3]}
        assert record.error.startswith("output not JSON-serialisable")
        assert record.error.endswith("(what JSON cannot hold is kept as text)")
        other = journal.create("example.noop", {}, 1.0)
        journal.finish(other, "failure", {"x": {1, 2}, "y": object()}, "ValueError: bad", 1, 2)
        error = journal.get(other).error.splitlines()
        assert error[0] == "ValueError: bad"  # the reason stays first
        assert error[1].startswith("output not JSON-serialisable")

    def test_an_id_beyond_what_a_journal_can_hold_is_no_job(self, journal):
        # bug: SQLite raised OverflowError, a traceback in dahu-jobs and a 500 on the web
        job_id = journal.create("example.noop", {}, 1.0)
        huge = 10**30
        assert journal.get(huge) is None and journal.state(huge) is None
        assert journal.output_text(huge) is None
        assert [r.id for r in journal.select(1, huge)] == [job_id]
        assert [r.id for r in journal.select(huge, None)] == []

    def test_finish_keeps_an_output_whose_repr_fails_too(self, journal):
        # bug: an int of over 4,300 digits made both the encoding and repr() raise, and
        # the journal failed (the server went to FAULT and refused every new job)
        class Touchy:
            def __repr__(self):
                raise RuntimeError("no repr")

        for output, key in (({"big": 10**5000}, "big"), ({"t": Touchy()}, "t")):
            job_id = journal.create("example.noop", {}, 1.0)
            journal.finish(job_id, "success", output, None, 1.0, 2.0)
            record = journal.get(job_id)
            assert record.state == "success"
            assert "repr() failed" in record.output[key]
            assert record.error.startswith("output not JSON-serialisable")
        assert journal.get(journal.create("example.noop", {}, 1.0)).state == "uninitialized"

    def test_finish_may_replace_the_input_with_the_plugins_final_one(self, journal):
        job_id = journal.create("example.noop", {"x": 1}, 1.0)
        journal.finish(job_id, "success", {}, None, 1.0, 2.0, input_data={"x": 1, "y": 2})
        assert journal.get(job_id).input == {"x": 1, "y": 2, "job_id": job_id}
        journal.finish(job_id, "success", {}, None, 1.0, 2.0, input_data={"x": 1, "o": object()})
        assert journal.get(job_id).input["o"].startswith("<object object at")  # as text
        journal.finish(job_id, "success", {}, None, 1.0, 2.0, input_data={"big": 10**5000})
        assert "repr() failed" in journal.get(job_id).input["big"]  # as text too

    def test_records_are_copies(self, journal):
        job_id = journal.create("example.noop", {"x": [1]}, 1.0)
        journal.finish(job_id, "success", {"result": [2]}, None, 1.0, 2.0)
        record = journal.get(job_id)
        record.input["x"].append(99)
        record.output["result"].append(99)
        again = journal.get(job_id)
        assert again.input["x"] == [1]
        assert again.output == {"result": [2]}

    def test_select_bounds_are_optional_and_inclusive(self, journal):
        ids = [journal.create("example.noop", {}, 1.0) for _ in range(4)]
        assert [r.id for r in journal.select()] == ids
        assert [r.id for r in journal.select(first=ids[2])] == ids[2:]
        assert [r.id for r in journal.select(last=ids[1])] == ids[:2]
        assert list(journal.select(state="success")) == []

    def test_jobs_of_this_live_process_are_never_marked_interrupted(self, journal):
        job_id = journal.create("example.noop", {}, time.time())  # (a real submission time:
        journal.set_state(job_id, "running", time.time())  # a pid is told apart by it)
        assert journal.mark_interrupted() == []
        assert journal.state(job_id) == "running"

    def test_summary_from_a_first_id(self, journal):
        first = journal.create("example.a", {}, 0.0)
        journal.finish(first, "success", {}, None, 0.0, 1.0)
        second = journal.create("example.b", {}, 0.0)
        journal.finish(second, "failure", None, "boom", 1.0, 3.0)
        summary = journal.summary(second)
        assert list(summary["plugins"]) == ["example.b"]
        assert summary["plugins"]["example.b"]["failure"] == 1
        assert summary["jobs"] == 1 and summary["total_runtime"] == pytest.approx(2.0)

    def test_a_broken_store_raises_journal_error_from_every_method(self, journal, tmp_path):
        if isinstance(journal, MemoryJournal):
            pytest.skip("memory cannot break")
        import sqlite3

        job_id = journal.create("example.noop", {}, 1.0)
        db = sqlite3.connect(journal.path)
        db.execute("DROP TABLE jobs")
        db.commit()
        db.close()
        calls = [
            lambda: journal.create("example.noop", {}, 1.0),
            lambda: journal.create_many("example.noop", [{}], 1.0),
            lambda: journal.set_state(job_id, "running", 1.0),
            lambda: journal.finish(job_id, "success", {}, None, 1.0, 2.0),
            lambda: journal.state(job_id),
            lambda: journal.get(job_id),
            lambda: journal.last_id(),
            lambda: list(journal.select()),
            lambda: journal.mark_interrupted(),
            lambda: journal.summary(),
        ]
        for call in calls:
            with pytest.raises(JournalError):
                call()


def test_a_row_sqlite_cannot_bind_fails_alone_and_nothing_hangs(tmp_path):
    # bug: an error other than SQLite's in a batch left the other writes of the batch
    # unreported (their jobs never ended) and made flush() wait for ever
    journal = SQLiteJournal(str(tmp_path))
    try:
        good = journal.create("example.square", {"x": 2}, 1.0)
        reports: dict = {}
        outcome = ("success", {"result": 4}, None, 1.0, 2.0)
        journal.finish_later(lambda e: reports.setdefault("bad", e), 2**70, *outcome, hold=True)
        journal.finish_later(lambda e: reports.setdefault("good", e), good, *outcome, hold=True)
        assert journal.flush(10)
        assert reports["good"] is None
        assert isinstance(reports["bad"], JournalError) and "too large" in str(reports["bad"])
        assert journal.get(good).output == {"result": 4}
        # create_many: all its rows or none
        with pytest.raises(JournalError):
            journal.finish_many(
                [(good, "failure", {}, None, 1.0, 2.0), (2**70, "x", {}, None, 1, 2)]
            )
        assert journal.get(good).state == "success"
    finally:
        journal.close()


def test_journal_refuses_a_newer_schema(tmp_path):
    import sqlite3

    SQLiteJournal(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(Exception, match="newer than this Dahu"):
        SQLiteJournal(str(tmp_path))


@pytest.mark.parametrize(
    "make, reason",
    [
        ("CREATE TABLE jobs (name TEXT, salary INT)", "its jobs table has no column id"),
        ("CREATE TABLE photos (name TEXT)", "it has tables of its own ('photos')"),
        (None, "file is not a database"),
        ("damaged", "database disk image is malformed"),  # a journal cut short
    ],
)
def test_another_programs_file_is_refused_in_one_line_and_left_as_it_was(tmp_path, make, reason):
    # bug: a SQLite file of another program given as the journal was refused with "no
    # such column: state" (a table jobs of its own), or adopted: Dahu's tables were added
    # into it (other tables); and it was switched to WAL mode first in both cases
    path = tmp_path / "journal.sqlite"
    if make is None:
        path.write_bytes(b"not a database" * 100)
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE jobs (id)" if make == "damaged" else make)
        db.commit()
        db.close()
    if make == "damaged":
        damage(path)
    before = path.read_bytes()
    with pytest.raises(JournalError) as refused:
        SQLiteJournal(str(tmp_path))
    message = str(refused.value)
    # bug: a damaged journal "is not a Dahu journal"
    what = "damaged" if make == "damaged" else "not a Dahu journal"
    assert message.startswith(f"{path} is {what}: {reason}")
    assert message.endswith("; nothing was written to it") and "\n" not in message
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["journal.sqlite"]


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


def test_a_script_that_ends_without_joining_its_jobs_waits_for_them(workdir):
    # bug: a script that started jobs and ended without joining them exited at once:
    # its jobs never ran, and the next start closed them as interrupted (the original's
    # job threads made Python wait for them)
    script = (
        "import sys, dahu.engine\n"
        "from dahu.job import Job\n"
        "dahu.engine.configure(workdir=sys.argv[1])\n"
        "Job('example.sleep', {'t': 0.3}).start()\n"
        "Job('example.square', {'x': 4}).start()\n"
        "Job('example.square', {'x': 5})  # created, never started: not waited for\n"
    )
    subprocess.run([sys.executable, "-c", script, str(workdir)], env=child_env(), timeout=60)
    journal = SQLiteJournal(str(workdir))
    try:
        slept, square, never = journal.select(1, 3)
        assert (slept.state, slept.output["slept"]) == ("success", True)
        assert (square.state, square.output["result"]) == ("success", 16)
        assert never.state == "uninitialized"
    finally:
        journal.close()


def child(workdir, mode):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(workdir), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def test_a_journal_keeps_its_identity_and_another_one_has_another(tmp_path):
    # what a client compares across a server restart (journalId): the same journal, the
    # same jobs under the same ids; a fresh work directory numbers other jobs from 1
    first = SQLiteJournal(str(tmp_path / "a"))
    token = first.identity
    first.close()
    again, other = SQLiteJournal(str(tmp_path / "a")), SQLiteJournal(str(tmp_path / "b"))
    try:
        assert again.identity == token and len(token) == 32
        assert other.identity != token
        assert MemoryJournal().identity != MemoryJournal().identity
    finally:
        again.close()
        other.close()


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
    # ids are never reused; the ids the killed process had reserved and not given are
    # skipped (at most one block of them)
    new_id = Job("example.noop", {}).id
    assert queued_id < new_id <= queued_id + SQLiteJournal.ID_BLOCK


def test_a_running_engine_closes_the_jobs_of_a_process_that_died_beside_it(workdir, monkeypatch):
    # bug: two servers on one work directory (or a server and a dahu-reprocess), one
    # killed with jobs running and queued: the other answered "running" (waitJob,
    # getJobState) and "uninitialized" for them for good, until a server started again
    from dahu.engine import orphans
    from dahu.journal.base import HOST

    monkeypatch.setattr(orphans, "CHECK_EVERY", 0.1)
    engine = dahu.engine.configure(workdir=str(workdir))
    try:
        proc = child(workdir, "hang")
        running_id, queued_id = map(int, proc.stdout.readline().split())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        reason = f"interrupted: its process, pid {proc.pid} on {HOST}, died"
        assert Job.synchronize_job(running_id, 30) == "failure"  # as waitJob follows it
        for job_id, plugin in ((running_id, "example.sleep"), (queued_id, "example.square")):
            assert Job.getStatusFromID(job_id) == "failure"
            assert Job.getErrorFromID(job_id) == reason
            stem = job_file_stem(str(workdir), job_id, plugin)
            wait_for_file(pathlib.Path(stem + ".out"))  # written as at a start
            assert json.loads(open(stem + ".out").read()) == {"error": [reason]}
            assert json.loads(open(stem + ".inp").read())["job_id"] == job_id
        assert Job("example.square", {"x": 3}).id > queued_id  # this engine goes on
    finally:
        engine.close()


def test_a_process_dying_beside_a_start_writing_files_has_its_jobs_closed_at_once(
    workdir, monkeypatch
):
    # bug: a server that had just started after a kill with 100,000 jobs queued closed
    # the jobs of a server beside it killed meanwhile only once it had written the
    # files of the first: their clients read "running" for 10 s more
    from dahu.engine import orphans

    monkeypatch.setattr(orphans, "CHECK_EVERY", 0.1)
    journal = SQLiteJournal(str(workdir))
    journal.create_many("example.square", [{"x": i} for i in range(20)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    gate = a_slow_recovery_disk(monkeypatch)  # each file: 10 s until the gate opens
    engine = dahu.engine.configure(workdir=str(workdir))
    proc = child(workdir, "hang")
    try:
        running_id = int(proc.stdout.readline().split()[0])
        proc.kill()
        proc.wait(timeout=30)
        assert Job.synchronize_job(running_id, 30) == "failure"
        assert not engine.wait_recovered(0)  # the start's files: still being written
        gate.set()
        stem = job_file_stem(str(workdir), running_id, "example.sleep")
        wait_for_file(pathlib.Path(stem + ".out"))  # then its files
    finally:
        gate.set()
        engine.close()


UNFINISHED = ("uninitialized", "starting", "running")


def test_the_jobs_of_a_process_of_another_pid_namespace_are_closed_once_it_died(
    workdir, monkeypatch
):
    # bug: two servers on one work directory in two containers of one host name, each
    # with its own pid namespace: each took the other's pid for dead (it sees no such
    # process) and closed its running jobs as interrupted, at a start and every 2 s
    from dahu.app.jobs import main as jobs_main
    from dahu.engine import orphans
    from dahu.journal.base import HOST

    monkeypatch.setattr(orphans, "CHECK_EVERY", 0.1)
    looks, owners = [], orphans.unfinished_owners
    monkeypatch.setattr(orphans, "unfinished_owners", lambda j: looks.append(1) or owners(j))
    engine = dahu.engine.configure(workdir=str(workdir))
    proc = child(workdir, "hang")  # its lock held as long as it runs
    try:
        running_id, queued_id = map(int, proc.stdout.readline().split())
        gone = subprocess.Popen(["true"])
        gone.wait()
        db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
        with db:  # as another namespace sees it: a pid that runs nothing here
            db.execute("UPDATE jobs SET pid = ? WHERE pid = ?", (gone.pid, proc.pid))
            db.execute(
                "UPDATE processes SET pid = ?, pidns = 'pid:[4026500000]' WHERE pid = ?",
                (gone.pid, proc.pid),
            )
        db.close()
        seen = len(looks)
        deadline = time.monotonic() + 30
        while len(looks) < seen + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(looks) >= seen + 3  # the watch looked, and left them alone
        assert Job.getStatusFromID(running_id) in UNFINISHED
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):
            assert jobs_main(["show", str(running_id), "-w", str(workdir)]) == 0
        assert "is gone" not in shown.getvalue()  # nor does dahu-jobs show say it died
        beside = dahu.engine.Engine(workdir=str(workdir))  # and so does a start
        try:
            assert beside.interrupted == []
        finally:
            beside.close()
        assert Job.getStatusFromID(running_id) in UNFINISHED
    finally:
        proc.kill()
        proc.wait(timeout=30)
    try:  # dead: its lock went with it
        assert Job.synchronize_job(running_id, 30) == "failure"
        reason = f"interrupted: its process, pid {gone.pid} on {HOST}, died"
        assert Job.getErrorFromID(queued_id) == reason
    finally:
        engine.close()


def test_two_processes_of_one_pid_in_two_namespaces_are_told_apart_by_their_jobs(
    workdir, monkeypatch
):
    # bug: two servers of one host name on one work directory, both pid 1 of their
    # containers: the jobs one recorded after the other started were judged by the
    # other's lock: closed as interrupted while their own server ran, once the other
    # was killed; left unfinished after their own server died, while the other ran
    import fcntl
    import struct

    from dahu.engine import orphans
    from dahu.journal import processes
    from dahu.journal.base import HOST

    monkeypatch.setattr(orphans, "CHECK_EVERY", 0.1)
    proc = child(workdir, "hang")  # A: its lock held as long as it runs
    other = watching = None
    try:
        running_id, queued_id = map(int, proc.stdout.readline().split())
        db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
        with db:  # A as pid 1 of a container; B, pid 1 of another, begun after A
            db.execute("UPDATE jobs SET pid = 1 WHERE pid = ?", (proc.pid,))
            db.execute(
                "UPDATE processes SET pid = 1, pidns = 'pid:[4026500000]' WHERE pid = ?",
                (proc.pid,),
            )
            begun = db.execute("SELECT started FROM processes WHERE pid = 1").fetchone()[0]
            db.execute(
                "INSERT INTO processes VALUES (?, 1, ?, ?, 'pid:[4026500001]', 100000)",
                (HOST, begun + 0.001, processes.BOOT),
            )
        db.close()
        # B killed (its lock free), A running: a start leaves A's jobs alone
        beside = SQLiteJournal(str(workdir))
        try:
            assert beside.mark_interrupted() == []
        finally:
            beside.close()
        # B running (its lock held here), A killed: a running engine closes A's jobs
        other = os.open(processes.lock_path(beside), os.O_RDWR)
        lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 100000, 1, 0)
        fcntl.fcntl(other, fcntl.F_OFD_SETLK, lock)
        watching = dahu.engine.configure(workdir=str(workdir))
        assert watching.interrupted == []
    finally:
        proc.kill()
        proc.wait(timeout=30)
    try:
        assert Job.synchronize_job(running_id, 30) == "failure"
        reason = f"interrupted: its process, pid 1 on {HOST}, died"
        assert Job.getErrorFromID(queued_id) == reason
    finally:
        if watching is not None:
            watching.close()
        if other is not None:
            os.close(other)


def test_a_lock_file_deleted_while_processes_run_does_not_make_them_dead(workdir, caplog):
    # bug: journal.sqlite-processes deleted while servers of other pid namespaces ran
    # (a clean-up of the work directory): the next writer made a new one, where none of
    # their locks were, and a start closed their running jobs as interrupted
    from dahu.journal import processes

    first = SQLiteJournal(str(workdir))
    job_id = first.create("example.square", {"x": 1}, time.time())
    second = None
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        with first.transaction() as db:  # as if of another namespace: its lock tells
            db.execute("UPDATE processes SET pid = ?, pidns = 'pid:[4026500000]'", (gone.pid,))
            db.execute("UPDATE jobs SET pid = ?", (gone.pid,))
        os.unlink(processes.lock_path(first))
        second = SQLiteJournal(str(workdir))  # a start: makes the file again
        assert second.mark_interrupted() == []
        assert second.state(job_id) == "uninitialized"
        with caplog.at_level(logging.WARNING, logger="dahu.journal"):
            first.check_file()  # (twice a second): its lock taken again, on the new file
        assert "its lock is taken again on the file there now" in caplog.text
        known = processes.known(second._read, second.path)
        rowid = first._alive[1]
        there = os.stat(processes.lock_path(first))
        assert known.files[rowid] == (there.st_dev, there.st_ino)
        assert known.alive(gone.pid, time.time(), rowid) is True
        assert second.mark_interrupted() == []
        os.close(first._alive[0])  # as when it dies: its lock goes
        first._alive = None
        assert second.mark_interrupted() == [job_id]
    finally:
        first.close()
        if second is not None:
            second.close()


def test_an_idle_engine_takes_its_lock_again_on_a_lock_file_made_again(workdir, caplog):
    # bug: only an engine that had run a job checked its files: a server idle since its
    # start kept its lock on the removed file (the others took it for a process that may
    # run, also once it died), and the removed journal file went unnoticed
    from dahu.journal import processes

    engine = dahu.engine.configure(workdir=str(workdir))
    try:
        path = processes.lock_path(engine.journal)
        with caplog.at_level(logging.WARNING, logger="dahu.journal"):
            os.unlink(path)
            deadline = time.monotonic() + 30
            while "its lock is taken again" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert os.path.exists(path) and "its lock is taken again" in caplog.text
        known = processes.known(engine.journal._read, engine.journal.path)
        rowid = engine.journal._alive[1]
        there = os.stat(path)
        assert known.files[rowid] == (there.st_dev, there.st_ino)
    finally:
        engine.close()


def test_a_process_of_another_boot_is_judged_by_its_pid():
    # a journal written before the machine restarted, or copied from a machine of the
    # same host name: no lock of this kernel tells of its processes, their pids do
    from dahu.journal import processes

    known = processes.Known(
        [(1, 11, 10.0, "an earlier boot", "pid:[4026500000]", 11)]
        + [(2, 12, 10.0, processes.BOOT, "pid:[4026500000]", 12)]
        + [(3, 13, 10.0, processes.BOOT, processes.PIDNS, 13)],
        None,
    )
    assert known.alive(11, 20.0) is None
    assert known.alive(12, 20.0) is True  # another namespace, its lock file gone: it may run
    assert known.alive(12, 5.0) is None  # a job before it began: not its
    assert known.alive(13, 20.0) is None  # this namespace: its pid tells
    assert known.alive(14, 20.0) is None  # no row: its pid tells


def test_a_dead_pid_1_recovery_and_part_files_are_told_from_another_pid_1(workdir):
    # bug: two servers of one host name on one work directory, both pid 1 of their
    # containers: a start of A killed as it wrote a dead process's files was taken for
    # alive while B (begun after A) ran, and its .part files stayed; and B's, A's
    import fcntl
    import struct

    from dahu.journal import pending, processes
    from dahu.journal.base import HOST
    from dahu.journal.files import remove_dead_parts

    journal = SQLiteJournal(str(workdir))
    held = None
    try:
        mark = pending.begin(journal, 10)
        db = sqlite3.connect(journal.path)
        with db:  # A (lock free: killed), then B (lock held: running), both pid 1
            rows = []
            for offset, ns in ((100001, "pid:[4026500000]"), (100000, "pid:[4026500001]")):
                row = (HOST, time.time() - 60 + len(rows), processes.BOOT, ns, offset)
                sql = "INSERT INTO processes VALUES (?, 1, ?, ?, ?, ?)"
                rows.append(db.execute(sql, row).lastrowid)
            a, b = rows
            db.execute("UPDATE recoveries SET pid = 1 WHERE rowid = ?", (mark,))
            db.execute("UPDATE recovery_processes SET process = ? WHERE recovery = ?", (a, mark))
        db.close()
        held = os.open(processes.lock_path(journal), os.O_RDWR)
        lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 100000, 1, 0)
        fcntl.fcntl(held, fcntl.F_OFD_SETLK, lock)
        assert [p.rowid for p in pending.left_by_dead(journal)] == [mark]
        directory = workdir / "0000"
        directory.mkdir()
        for row in (a, b):
            (directory / f".1-7-{row}.part").write_text("{")
        known = processes.known(journal._read, journal.path)
        assert remove_dead_parts(str(directory), known) == 1
        assert os.listdir(directory) == [f".1-7-{b}.part"]
    finally:
        journal.close()
        if held is not None:
            os.close(held)


def test_a_writer_records_its_namespace_while_it_runs_and_not_after(workdir):
    from dahu.journal import processes

    journal = SQLiteJournal(str(workdir))
    rows = journal._read("SELECT pid, boot, pidns, lock FROM processes")
    assert rows == [(os.getpid(), processes.BOOT, processes.PIDNS, rows[0][3])]
    known = processes.Known(
        [(1, os.getpid() + 1, 1.0, *rows[0][1:2], "pid:[1]", rows[0][3])],
        processes.lock_path(journal),
    )
    assert known.alive(os.getpid() + 1, 2.0) is True  # its lock is held
    journal.close()
    assert known.alive(os.getpid() + 1, 2.0) is False  # gone with it
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    assert db.execute("SELECT COUNT(*) FROM processes").fetchone()[0] == 0  # its row too
    db.close()


UNSHARE = ["unshare", "--pid", "--fork", "--map-root-user", "--mount-proc"]

IN_ANOTHER_NAMESPACE = """
import os, sys, dahu.engine
engine = dahu.engine.Engine(workdir=sys.argv[1])
print(os.getpid(), sorted(engine.interrupted), flush=True)
engine.close()
"""


def test_a_start_in_another_pid_namespace_leaves_a_live_server_jobs_alone(workdir):
    # the same in a real second pid namespace (a container of the same host name)
    start = [*UNSHARE, sys.executable, "-c", IN_ANOTHER_NAMESPACE, str(workdir)]
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30)
    except OSError:
        pytest.skip("no unshare here")
    if probe.returncode:
        pytest.skip(f"no pid namespace of our own here: {probe.stderr.decode().strip()}")
    proc = child(workdir, "hang")
    try:
        running_id, queued_id = map(int, proc.stdout.readline().split())
        there = subprocess.run(start, capture_output=True, text=True, timeout=60, env=child_env())
        assert there.stdout.split(maxsplit=1) == ["1", "[]\n"], there.stderr
        reader = SQLiteJournal(str(workdir), create=False)
        assert reader.get(running_id).state in UNFINISHED
        reader.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    there = subprocess.run(start, capture_output=True, text=True, timeout=60, env=child_env())
    assert there.stdout.split(maxsplit=1) == ["1", f"[{running_id}, {queued_id}]\n"]


def test_the_jobs_of_a_killed_process_not_yet_reaped_are_closed(workdir, monkeypatch):
    # bug: a server killed by a script that had not waited for it yet (a zombie) was
    # taken for a running one: its jobs stayed unfinished for the other servers
    from dahu.engine import orphans

    monkeypatch.setattr(orphans, "CHECK_EVERY", 0.1)
    engine = dahu.engine.configure(workdir=str(workdir))
    proc = child(workdir, "hang")
    try:
        running_id = int(proc.stdout.readline().split()[0])
        proc.send_signal(signal.SIGKILL)  # and not waited for
        assert Job.synchronize_job(running_id, 30) == "failure"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        engine.close()


@pytest.mark.parametrize("refusal", ["NoSuchProcess", "AccessDenied"])
def test_the_jobs_of_a_process_that_cannot_be_looked_at_are_left_alone(
    workdir, monkeypatch, refusal
):
    # bug: a server of another user on the work directory, /proc mounted with hidepid
    # (its entry hidden, or unreadable): taken for dead, its running jobs were closed as
    # interrupted by a start, and now by a running server every 2 s
    import psutil

    journal = SQLiteJournal(str(workdir))
    job_id = journal.create("example.sleep", {"t": 60}, time.time())
    journal.close()
    of_a_dead_process(workdir)
    reader = SQLiteJournal(str(workdir))
    pid = reader.get(job_id).pid
    reader.close()

    def hidden(asked):
        raise getattr(psutil, refusal)(asked)

    def kill(asked, signal):  # a process of another user: signals refused
        raise PermissionError(1, "Operation not permitted") if asked == pid else OSError()

    monkeypatch.setattr(psutil, "Process", hidden)
    monkeypatch.setattr(os, "kill", kill)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.interrupted == []
        assert engine.journal.get(job_id).state == "uninitialized"
    finally:
        engine.close()


def test_files_a_killed_process_left_unwritten_are_written_at_the_next_start(workdir):
    # bug: a server killed after a job's outcome was committed but before its files were
    # written left it without .inp/.out files for good; interrupted jobs never had any
    first = child(workdir, "run")
    done_id = int(first.communicate(timeout=60)[0])
    stem = job_file_stem(str(workdir), done_id, "example.square")
    written = json.loads(open(stem + ".out").read())
    proc = child(workdir, "hang")
    running_id, queued_id = map(int, proc.stdout.readline().split())
    for ext in (".inp", ".out"):
        os.remove(stem + ext)  # as if killed between the commit and the files
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    engine = dahu.engine.configure(workdir=str(workdir))
    assert engine.wait_recovered(10)  # in a thread: the engine answers at once
    assert engine.recovered == 3
    assert json.loads(open(stem + ".out").read()) == written
    assert json.loads(open(stem + ".inp").read())["x"] == 2
    for job_id, plugin in ((running_id, "example.sleep"), (queued_id, "example.square")):
        cut = job_file_stem(str(workdir), job_id, plugin)
        assert json.loads(open(cut + ".inp").read())["job_id"] == job_id
        assert json.loads(open(cut + ".out").read()) == {"error": [INTERRUPTED]}
    engine.close()
    again = dahu.engine.configure(workdir=str(workdir))
    assert again.wait_recovered(10) and again.recovered == 0  # once only


def of_a_dead_process(workdir) -> None:
    """Make every record of the journal of ``workdir`` that of a process that is gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    with db:
        db.execute("UPDATE jobs SET pid = ?", (gone.pid,))
    db.close()


def test_every_interrupted_job_gets_its_files_however_long_the_queue_was(workdir, monkeypatch):
    # bug: only the interrupted jobs among the last WINDOW (2,000) ids got their files:
    # a server killed with 5,000 jobs of a startJobs queued left 2,900 of them without
    # .inp/.out files, at that start and every later one
    import psutil

    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 40)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(100)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    # bug: the start asked the system about the dead process once per job it left
    # (70 us each: 7 s of a restart with 100,000 jobs queued, the device not answering)
    asked, process = [], psutil.Process
    monkeypatch.setattr(psutil, "Process", lambda *pid: asked.append(pid) or process(*pid))

    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert sorted(engine.interrupted) == ids
        assert engine.wait_recovered(10)  # in a thread: the engine answers at once
        assert engine.recovered == len(ids)
        # bug: their output (getJobOutput) read {}, their .out file {"error": [...]}
        assert json.loads(engine.output_text(ids[0])) == {"error": [INTERRUPTED]}
        assert len([pid for pid in asked if pid]) <= 2  # once to close them, once for files
        for job_id in ids:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}
            assert json.loads(open(stem + ".inp").read())["job_id"] == job_id
    finally:
        engine.close()


def a_slow_recovery_disk(monkeypatch) -> threading.Event:
    """The recovery thread's disk is slow (each file waits) until the gate returned is set."""
    from dahu.engine import recovery

    gate, write = threading.Event(), recovery.Recovery.write

    def slow(self, record):
        gate.wait(10)
        return write(self, record)

    monkeypatch.setattr(recovery.Recovery, "write", slow)
    return gate


def test_a_start_answers_before_the_interrupted_jobs_files_are_written(workdir, monkeypatch):
    # bug: the start wrote the files of every job queued at a kill before it returned:
    # the device answered nothing, not even State, for 8 to 15 s after a kill with
    # 100,000 jobs queued (37 s for 20,000 on a busy disk)

    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(300)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    gate = a_slow_recovery_disk(monkeypatch)
    engine = dahu.engine.configure(workdir=str(workdir))
    try:
        assert sorted(engine.interrupted) == ids
        assert not engine.wait_recovered(0) and engine.recovered == 0
        assert engine.files_settled() == 0.0  # a prune waits for them
        job = Job("example.square", {"x": 3})
        job.start()
        job.join(5)
        assert job.output_data["result"] == 9
        stem = job_file_stem(str(workdir), ids[-1], "example.square")
        assert not os.path.exists(stem + ".out")
        # a client asking for a job's files does not wait for the others'
        assert Job.cleanJobfromID(ids[-1]) == f"job {ids[-1]} cleaned"
        assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}
    finally:
        gate.set()
        engine.close()  # it waits for them all
    assert engine.recovered == len(ids) - 1  # (the one cleaned was written by cleanJob)
    for job_id in ids:
        stem = job_file_stem(str(workdir), job_id, "example.square")
        assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}
        assert json.loads(open(stem + ".inp").read())["job_id"] == job_id


def test_a_stop_waiting_for_a_dead_server_files_says_so(workdir, monkeypatch, caplog):
    # bug: a server stopped soon after a start that had 130,000 files of a killed
    # server's queue to write waited 19 s (minutes on a slow disk) after "stopping"
    # without a word of why

    journal = SQLiteJournal(str(workdir))
    journal.create_many("example.square", [{"x": i} for i in range(20)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    gate = a_slow_recovery_disk(monkeypatch)
    engine = dahu.engine.Engine(workdir=str(workdir))
    stop = threading.Thread(target=engine.shutdown)
    try:
        with caplog.at_level(logging.INFO, logger="dahu.engine"):
            stop.start()
            deadline = time.monotonic() + 10
            while "are written first" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stop.is_alive()  # it waits for them, and says so
    finally:
        gate.set()
        stop.join(10)
    said = [r.getMessage() for r in caplog.records if "are written first" in r.getMessage()]
    assert said == [
        "stopping: the .inp/.out files a dead process left unwritten are written first "
        "(0 so far; a kill now leaves the rest to the next start)"
    ]


def test_a_stop_leaves_the_dead_server_files_to_the_next_start_at_its_timeout(
    workdir, monkeypatch, caplog
):
    # bug: a stop waited for every file a dead server left, whatever its timeout said
    # (dahu_server --shutdown-timeout 5 took 19 s after a start with 150,000 to write)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(20)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    gate = a_slow_recovery_disk(monkeypatch)  # each file: 10 s until the gate opens
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        begun = time.monotonic()
        with caplog.at_level(logging.INFO, logger="dahu.engine"):
            assert engine.shutdown(timeout=0.2)
        assert time.monotonic() - begun < 8  # (not 20 files of 10 s)
    finally:
        gate.set()
    assert engine.recovery.wait(10)  # the thread ends without writing more
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    kept = db.execute("SELECT COUNT(*) FROM processes WHERE pid = ?", (os.getpid(),))
    assert kept.fetchone()[0] == 1  # its namespace too: the next start may be elsewhere
    db.close()
    said = [r.getMessage() for r in caplog.records if "the next start" in r.getMessage()]
    assert said[-1] == (
        "stopping after 0.2 s: 0 job(s) got the .inp/.out files a dead process left "
        "unwritten, the next start writes the rest"
    )
    again = dahu.engine.Engine(workdir=str(workdir))  # the rest: written now
    try:
        assert again.wait_recovered(10) and again.recovered == len(ids)
    finally:
        again.close()
    for job_id in ids:
        stem = job_file_stem(str(workdir), job_id, "example.square")
        assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}


def test_a_close_leaves_the_dead_server_files_to_the_next_start_at_its_timeout(
    workdir, monkeypatch, caplog
):
    # bug: Engine.close() (a script's, dahu-reprocess's) waited for every file a dead
    # server left, without bound (3.5 s for 30,000 on tmpfs; minutes on a slow disk)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(20)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    gate = a_slow_recovery_disk(monkeypatch)  # each file: 10 s until the gate opens
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        begun = time.monotonic()
        with caplog.at_level(logging.INFO, logger="dahu.engine"):
            assert engine.close(timeout=0.2) == 0
        assert time.monotonic() - begun < 8  # (not 20 files of 10 s)
    finally:
        gate.set()
    assert engine.recovery.wait(10)  # the thread ends without writing more
    said = [r.getMessage() for r in caplog.records if "the next start" in r.getMessage()]
    assert said[-1] == (
        "stopping after 0.2 s: 0 job(s) got the .inp/.out files a dead process left "
        "unwritten, the next start writes the rest"
    )
    again = dahu.engine.Engine(workdir=str(workdir))  # the rest: written now
    try:
        assert again.wait_recovered(10) and again.recovered == len(ids)
    finally:
        again.close()


SLOW_DISK_EXIT_BOUNDED = """
import sys, time
import dahu.engine
from dahu.engine import recovery
recovery.EXIT_WAIT = 0.2
write = recovery.Recovery.write
def slow(self, record):  # a very slow disk: 60 s a job
    time.sleep(60)
    return write(self, record)
recovery.Recovery.write = slow
dahu.engine.configure(workdir=sys.argv[1])  # and the script ends without closing it
"""


def test_a_script_ending_without_closing_leaves_the_dead_server_files_to_the_next_start(
    workdir,
):
    # bug: a script ending without closing its engine waited at its exit for every file
    # a dead server left, without bound
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(5)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    code = [sys.executable, "-c", SLOW_DISK_EXIT_BOUNDED, str(workdir)]
    done = subprocess.run(code, env=child_env(), timeout=50, capture_output=True, text=True)
    assert done.returncode == 0
    assert "exiting after 0.2 s: 0 job(s) got the .inp/.out files" in done.stderr
    again = dahu.engine.Engine(workdir=str(workdir))  # the rest: written now
    try:
        assert again.wait_recovered(10) and again.recovered == len(ids)
    finally:
        again.close()


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 8 MB (tmpfs: as root only)."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_start_leaves_the_journal_room_on_a_nearly_full_disk(small_disk, caplog):
    # bug: room made on a full disk was filled at once by the next start's writing of
    # the files a dead server left (here 1,500 jobs): the journal refused every new job
    # (database or disk is full), the server at fault again
    from dahu.engine import recovery

    journal = SQLiteJournal(str(small_disk))
    pad = "p" * 1500
    journal.create_many("example.square", [{"x": i, "pad": pad} for i in range(1500)], 1.0)
    journal.close()
    of_a_dead_process(small_disk)
    engine = dahu.engine.configure(workdir=str(small_disk))
    try:
        with caplog.at_level(logging.WARNING, logger="dahu.engine"):
            assert engine.wait_recovered(30)
        for x in range(10):  # the journal's own writes: room for them
            job = Job("example.square", {"x": x})
            job.start()
            assert job.join(10) is None and job.status == "success"
        assert 0 < engine.recovered < 1500  # the files: as many as the room allows
        keep = min(recovery.KEEP_FREE, shutil.disk_usage(small_disk).total // 20)
        left = [
            r.getMessage() for r in caplog.records if "left to the next start" in r.getMessage()
        ]
        assert len(left) == 1 and f"less than the {keep} kept for the journal" in left[0]
        assert engine.journal_fault is None
    finally:
        engine.close()


def test_a_full_disk_at_a_start_logs_the_refused_files_once(workdir, monkeypatch, caplog):
    # bug: a start on a full disk logged one error per job left by the dead server
    # (100,000 lines "job N: cannot write its .inp/.out files: [Errno 28] ...")
    from dahu.engine import recovery

    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(200)], 1.0)
    journal.close()
    of_a_dead_process(workdir)

    def full(*args, **named):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recovery, "write_job_files", full)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10)
        assert (engine.recovered, engine.files_failed) == (0, len(ids))
    finally:
        engine.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"job {ids[0]}: cannot write its .inp/.out files: [Errno 28] No space left on device"
        " (the next ones refused at this start are counted, not logged each)",
        f"{len(ids)} job(s) left by a dead process got no .inp/.out files: the disk refused them",
    ]


def test_a_full_disk_logs_the_files_it_refuses_once_not_once_a_job(workdir, monkeypatch, caplog):
    # bug: a full disk logged one error line per job that ended ("job N: cannot write
    # its .inp/.out files: [Errno 28] No space left on device: PATH"): as many lines as
    # jobs in a burst
    from dahu.engine import refusals

    write, full = refusals.write_job_files, [True]

    def disk(*args, **named):
        if full[0]:
            raise OSError(28, "No space left on device")
        return write(*args, **named)

    monkeypatch.setattr(refusals, "write_job_files", disk)
    engine = dahu.engine.configure(workdir=str(workdir))
    try:
        jobs = [Job("example.square", {"x": x}) for x in range(30)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(30)
            job.clean()  # its files: refused
        full[0] = False  # room made: the next job's files are written
        again = Job("example.square", {"x": 2})
        again.start()
        again.join(30)
        again.clean()
        assert os.path.exists(job_file_stem(str(workdir), again.id, "example.square") + ".out")
        assert engine.files_failed == len(jobs)
    finally:
        engine.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"job {jobs[0].id}: cannot write its .inp/.out files: [Errno 28] No space left on "
        "device (the next jobs refused so are counted, not logged each)",
        "29 more job(s) got no .inp/.out files: No space left on device",
    ]


def closed_by_a_start_killed_as_it_wrote(workdir, count: int, written: int) -> list[int]:
    """``count`` jobs of a dead process, closed as interrupted all at once by a start
    that was killed once it had written the files of the first ``written``: their ids."""
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(count)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    with db:  # closed by that start, all at once
        db.execute("UPDATE jobs SET state = 'failure', error = ?, ended = 5.0", (INTERRUPTED,))
    db.close()
    for job_id in ids[:written]:  # it had written these when it was killed
        write_job_files(str(workdir), job_id, "example.square", {}, {"error": [INTERRUPTED]})
    return ids


def test_a_kill_while_a_start_wrote_the_interrupted_jobs_files_loses_none(workdir):
    # bug: a start writes the files of the jobs it closed as interrupted (one end time
    # for all) in the order of their ids; killed meanwhile (or refused by a full disk),
    # the next start saw the first ids' files, stopped there, and the others never got
    # theirs (here 100 of 300; 4,770 of 5,000 after a full disk was given room again)
    ids = closed_by_a_start_killed_as_it_wrote(workdir, 300, 200)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10)
        assert engine.recovered == 100
        for job_id in ids[200:]:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}
    finally:
        engine.close()


def test_a_kill_while_a_start_wrote_more_interrupted_files_than_it_looks_back_loses_none(
    workdir, monkeypatch
):
    # bug: past REACH (100,000) ids, a start killed while it wrote the files of the jobs
    # it closed as interrupted left the oldest of them without files for good: the next
    # start looked REACH ids back only (here REACH 30: ids[20:70] never got theirs)
    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 10)
    monkeypatch.setattr(recovery, "REACH", 30)
    ids = closed_by_a_start_killed_as_it_wrote(workdir, 100, 20)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10)
        assert engine.recovered == 80
        for job_id in ids[20:]:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}
    finally:
        engine.close()


def test_files_another_process_writes_too_at_its_start_are_never_seen_empty(workdir, monkeypatch):
    # bug: a start's recovery and another process's (a worker process's own engine, a
    # second server started with it) may both find a dead job's files missing and both
    # write them: the second one truncated the files the first had written whole, and a
    # reader then found an empty .out (a client told the job ended reads it)
    from dahu.journal import files

    journal = SQLiteJournal(str(workdir))
    (job_id,) = journal.create_many("example.square", [{"x": 3}], 1.0)
    journal.finish_many([(job_id, "success", {"result": 9}, None, 1.0, 2.0)])
    journal.close()
    of_a_dead_process(workdir)
    stem = job_file_stem(str(workdir), job_id, "example.square")
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10) and engine.recovered == 1
        seen = []

        class Reader:  # what a reader finds while a writer has written nothing yet
            def __getattr__(self, name):
                return getattr(os, name)

            def write(self, fd, data):
                for ext in (".inp", ".out"):
                    with open(stem + ext) as file:
                        seen.append(file.read())
                return os.write(fd, data)

        monkeypatch.setattr(files, "os", Reader())
        # the other process's writer: it found them missing before this one wrote them
        assert engine.recovery.write(engine.journal.get(job_id))
        monkeypatch.undo()
        assert [text for text in seen if not text.endswith("}")] == []  # none empty
        assert len(seen) == 4 and json.loads(seen[-1]) == {"result": 9}
        assert json.loads(open(stem + ".out").read()) == {"result": 9}
        assert not [name for name in os.listdir(os.path.dirname(stem)) if "part" in name]
    finally:
        engine.close()


def dead_jobs_ended_without_files(workdir, count):
    """``count`` jobs that a killed process ended (long ago) and left without files."""
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(count)], 1.0)
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 2.0 + i) for i in ids])
    journal.close()
    of_a_dead_process(workdir)
    return ids


def test_a_script_that_did_not_clean_its_jobs_is_not_said_to_have_died(workdir, caplog):
    # bug: the files of the jobs of a script that ended without clean() were written by
    # the next start, logged "(a process died)", though nothing died
    dead_jobs_ended_without_files(workdir, 2)
    with caplog.at_level(logging.WARNING, logger="dahu.engine.recovery"):
        engine = dahu.engine.Engine(workdir=str(workdir))
        try:
            assert engine.wait_recovered(10) and engine.recovered == 2
        finally:
            engine.close()
    told = [r.getMessage() for r in caplog.records if "without their .inp/.out" in r.getMessage()]
    assert told == [
        "2 job(s) ended without their .inp/.out files (their process ended before it wrote "
        "them: killed, or a script that did not clean() them): written now"
    ]


KILLED_AS_IT_WRITES = """
import os, sys, time, dahu.engine
from dahu.journal import files
replace = os.replace

def hang(source, target):  # the kill comes as the first file is written aside
    if source.endswith(".part"):
        print("writing", flush=True)
        time.sleep(600)
    replace(source, target)

files.os.replace = hang
dahu.engine.Engine(workdir=sys.argv[1])
time.sleep(600)
"""


def test_a_kill_in_the_middle_of_a_job_file_leaves_no_part_file(workdir):
    # bug: a start killed -9 as it wrote a dead server's files left
    # NNNN/.PID-THREAD.part beside the job files for good (and a prune of every job
    # of that directory left it, and the directory)
    from dahu.retention import prune

    ids = dead_jobs_ended_without_files(workdir, 3)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_AS_IT_WRITES, str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout.readline() == "writing\n"
    finally:
        proc.kill()
        proc.wait(30)
    directory = workdir / "0000"
    assert [n for n in os.listdir(directory) if n.endswith(".part")]  # left by the kill
    parts = f"{directory}/.{os.getpid()}-1.part"  # one of a live process: kept
    open(parts, "w").close()
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10) and engine.recovered == 3
    finally:
        engine.close()
    assert [n for n in os.listdir(directory) if n.endswith(".part")] == [os.path.basename(parts)]
    for job_id in ids:
        stem = job_file_stem(str(workdir), job_id, "example.square")
        assert json.loads(open(stem + ".out").read())["result"] == job_id
    os.rename(parts, f"{directory}/.{proc.pid}-1.part")  # a dead one's, no start since
    assert prune(str(workdir), keep_last=0, min_age=0).removed == 3
    assert not directory.exists()


def test_a_prune_removes_the_directories_a_killed_prune_emptied(workdir):
    # bug: a dahu-jobs prune killed (or ^C) before its end had removed the files and
    # records of its first batches, not yet their emptied directories: no later prune
    # removed them (it removes only those of the jobs it removes itself)
    from dahu.retention import prune

    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(1002)], 1.0)
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 2.0) for i in ids])
    journal.close()
    for job_id in ids[999:]:
        write_job_files(str(workdir), job_id, "example.square", {}, {"result": job_id})
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    with db:  # the killed prune's first batches: their files and records gone
        db.execute("DELETE FROM jobs WHERE id < 1000")
    db.close()
    (workdir / "0000").mkdir()
    assert prune(str(workdir), keep_last=0, min_age=0).removed == 3
    assert sorted(n for n in os.listdir(workdir) if n.isdigit()) == []


def test_a_prune_while_a_start_writes_a_job_files_leaves_no_file_without_record(
    workdir, monkeypatch
):
    # bug: "dahu-jobs prune --min-age 0" in another process while a start wrote the
    # files a killed server left unwritten: the prune removed a job (no files yet), then
    # the start wrote its files: .inp/.out files of a job no journal knows
    from dahu import retention
    from dahu.engine import recovery

    ids = dead_jobs_ended_without_files(workdir, 3)
    write = recovery.write_job_files

    def pruned_meanwhile(workdir_, job_id, *args, **named):  # the start read the record
        if job_id == ids[0]:
            retention.prune(str(workdir), keep_last=2, min_age=0)
        return write(workdir_, job_id, *args, **named)

    monkeypatch.setattr(recovery, "write_job_files", pruned_meanwhile)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10)
        assert engine.journal.get(ids[0]) is None
        stem = job_file_stem(str(workdir), ids[0], "example.square")
        assert not os.path.exists(stem + ".inp") and not os.path.exists(stem + ".out")
        assert os.path.exists(job_file_stem(str(workdir), ids[1], "example.square") + ".out")
    finally:
        engine.close()


def test_a_start_writing_a_job_files_during_a_prune_leaves_no_file_without_record(
    workdir, monkeypatch
):
    # the other order: the prune removed the job's files (none), the start wrote them
    # and found the record still there, then the prune removed the record
    from dahu import retention
    from dahu.journal import pending

    ids = dead_jobs_ended_without_files(workdir, 3)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10) and engine.recovered == 3
        stem = job_file_stem(str(workdir), ids[0], "example.square")
        for ext in (".inp", ".out"):
            os.remove(stem + ext)  # as if not written yet when the prune came
        remove, record, came = retention._remove_files, engine.journal.get(ids[0]), []

        def start_writes_meanwhile(workdir_, job_id, *args):
            removed = remove(workdir_, job_id, *args)
            if job_id == ids[0] and not came:
                came.append(job_id)  # the start's recovery, between files and record
                assert engine.recovery.write(record)
                engine.recovery.confirm()
            return removed

        monkeypatch.setattr(retention, "_remove_files", start_writes_meanwhile)
        under_way = pending.begin(engine.journal, ids[-1])  # as while it writes them
        assert retention.prune(str(workdir), keep_last=2, min_age=0).removed == 1
        pending.end(engine.journal, [under_way])
        assert not os.path.exists(stem + ".inp") and not os.path.exists(stem + ".out")
    finally:
        engine.close()


def test_a_start_killed_while_it_wrote_a_dead_server_files_leaves_none_to_the_next(
    workdir, monkeypatch
):
    # bug: a start writes the files of the queue it closed as interrupted first, then
    # those of the jobs the dead server had ended without them; killed in between (or
    # after its own jobs had ended, their files written), the next start saw those
    # newest files first, took every older end for written, and 100 jobs never got theirs
    from dahu.engine import recovery

    ended = dead_jobs_ended_without_files(workdir, 100)
    journal = SQLiteJournal(str(workdir))
    queued = journal.create_many("example.square", [{"x": i} for i in range(60)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    write = recovery.Recovery.write

    def killed_after_the_queue(self, record):
        if record.id in ended:
            raise RuntimeError("killed")  # stands for the kill: the thread ends there
        return write(self, record)

    monkeypatch.setattr(recovery.Recovery, "write", killed_after_the_queue)
    engine = dahu.engine.Engine(workdir=str(workdir))
    assert engine.wait_recovered(10) and engine.recovered == len(queued)
    engine.close()
    monkeypatch.undo()
    of_a_dead_process(workdir)
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    with db:  # that start's process is gone too
        db.execute("UPDATE recoveries SET pid = (SELECT pid FROM jobs LIMIT 1)")
    db.close()

    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10) and engine.recovered == len(ended)
        for job_id in ended:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read()) == {"result": job_id}
    finally:
        engine.close()
    again = dahu.engine.Engine(workdir=str(workdir))  # done with: not looked at again
    try:
        assert again.wait_recovered(10) and again.recovered == 0
    finally:
        again.close()
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    assert db.execute("SELECT COUNT(*) FROM recoveries").fetchone() == (0,)
    db.close()


SLOW_DISK_EXIT = """
import sys, time
import dahu.engine
from dahu.engine import recovery
write = recovery.Recovery.write
def slow(self, record):  # a slow disk: 1 ms a job
    time.sleep(0.001)
    return write(self, record)
recovery.Recovery.write = slow
dahu.engine.configure(workdir=sys.argv[1])  # and the script ends without closing it
"""


def test_a_script_ending_at_once_leaves_the_interrupted_jobs_files_written(workdir):
    # bug (of the start writing them in a thread): a script that opened an engine on
    # the work directory and ended left none of them written
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(200)], 1.0)
    journal.close()
    of_a_dead_process(workdir)
    code = [sys.executable, "-c", SLOW_DISK_EXIT, str(workdir)]
    subprocess.run(code, env=child_env(), timeout=60, check=True)
    for job_id in ids:
        stem = job_file_stem(str(workdir), job_id, "example.square")
        assert json.loads(open(stem + ".out").read()) == {"error": [INTERRUPTED]}


def test_a_journal_copied_from_another_machine_names_the_jobs_it_leaves_unfinished(workdir, caplog):
    # bug: a journal copied from a crashed machine kept its jobs queued or running for
    # good, and nothing said why (another host's jobs are left alone: a server of a
    # shared work directory may run them there)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(3)], 1.0)
    journal.close()
    db = sqlite3.connect(str(workdir / SQLiteJournal.FILENAME))
    with db:
        db.execute("UPDATE jobs SET host = 'beamline-old'")
    db.close()
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.interrupted == []
        assert engine.journal.get(ids[0]).state == "uninitialized"
    finally:
        engine.close()
    path = workdir / SQLiteJournal.FILENAME
    assert (
        f"journal {path}: 3 unfinished job(s) of another host, beamline-old, left as they"
        " are: their server may run there (only a start there closes them)"
    ) in [r.getMessage() for r in caplog.records]


def test_the_jobs_of_a_dead_server_with_this_process_pid_are_interrupted(workdir):
    # bug: a server started again with the pid of the one that was killed (pid 1 in a
    # container restarted) took its jobs for its own: they stayed queued or running for
    # good, without files, and nothing was logged
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": 1}, {"x": 2}], time.time() - 3600)
    journal.close()  # recorded with this process's pid, an hour before it started
    engine = dahu.engine.configure(workdir=str(workdir))
    try:
        assert sorted(engine.interrupted) == ids
        assert engine.wait_recovered(10) and engine.recovered == 2
        job = Job("example.sleep", {"t": 0.2})  # its own jobs are not taken for dead ones
        job.start()
        beside = dahu.engine.Engine(workdir=str(workdir))
        beside.close()
        assert beside.interrupted == []
        job.join(10)
        assert job.status == "success"
    finally:
        engine.close()


def test_a_files_thread_far_behind_at_a_kill_leaves_no_job_without_files(workdir, monkeypatch):
    # bug: a burst of trivial jobs outruns the files thread (60,000 ended jobs without
    # files at a kill -9 here); the next start wrote those of the last 2,000 ids only,
    # and took the file the kill left empty (created, not written yet) for a whole one
    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 40)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(150)], 1.0)
    journal.finish_many([(i, "success", {"result": i * i}, None, 1.0, 2.0 + i) for i in ids])
    queued = journal.create_many("example.square", [{"x": 0}] * 60, 1.0)  # never started
    journal.close()
    for job_id in ids[:60]:  # the files thread had written these
        write_job_files(str(workdir), job_id, "example.square", {"x": 0}, {"result": 0})
    cut = job_file_stem(str(workdir), ids[59], "example.square") + ".out"
    open(cut, "w").close()  # the kill came between its creation and its write
    of_a_dead_process(workdir)

    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert sorted(engine.interrupted) == queued
        assert engine.wait_recovered(10)  # in a thread: the engine answers at once
        assert engine.recovered == 91 + len(queued)
        for job_id in ids[59:]:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read())["result"] == job_id * job_id
            assert json.loads(open(stem + ".inp").read())["x"] == job_id - 1
    finally:
        engine.close()


def test_the_files_of_a_live_process_jobs_are_left_to_it(workdir):
    # a second engine on the directory (a worker process, a tool beside the server) must
    # not write the files the server's own files thread may be writing at that moment
    engine = dahu.engine.configure(workdir=str(workdir))
    job = Job("example.square", {"x": 2})
    job.start()
    job.join()
    job.clean()
    stem = job_file_stem(str(workdir), job.id, "example.square")
    for ext in (".inp", ".out"):
        os.remove(stem + ext)  # as if still queued for the server's files thread
    beside = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert beside.wait_recovered(10)  # in a thread: the engine answers at once
        assert beside.recovered == 0
        assert not os.path.exists(stem + ".inp") and not os.path.exists(stem + ".out")
    finally:
        beside.close()
        engine.close()


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


def test_a_worker_ending_after_the_journal_closed_leaves_its_jobs_to_the_next_start(
    workdir, caplog
):
    # bug: a process worker that ended just after the server's stop (its journal closed)
    # logged "cannot close the jobs of an ended worker process: ... Cannot operate on a
    # closed database"; its plugins' jobs are closed at the next start, as any dead one's
    from dahu.executors.base import close_orphans

    journal = SQLiteJournal(str(workdir))
    job_id = journal.create("example.sleep", {}, time.time())
    journal.close()
    of_a_dead_process(workdir)
    with caplog.at_level(logging.WARNING, logger="dahu"):
        close_orphans(types.SimpleNamespace(journal=journal))
        assert journal.mark_interrupted() == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    again = SQLiteJournal(str(workdir))
    assert again.mark_interrupted() == [job_id]
    assert again.get(job_id).error == INTERRUPTED
    again.close()


def test_opening_without_create_needs_an_existing_journal(tmp_path):

    with pytest.raises(JournalError, match="no journal in"):
        SQLiteJournal(str(tmp_path / "empty"), create=False)
    assert not (tmp_path / "empty").exists()
    SQLiteJournal(str(tmp_path)).close()
    SQLiteJournal(str(tmp_path), create=False).close()


# ---- the .inp/.out text ------------------------------------------------------------------
PRETTY_CASES = [
    {},
    [],
    {"x": 1, "plugin_name": "example.square", "job_id": 12},
    {
        "a": [1, 2.5, None, True, False, 'é\n"\\', {"b": [], "c": {}}],
        3: 2,
        2.5: 3,
        True: 4,
        None: 5,
    },
    [float("nan"), float("inf"), -float("inf"), 1e300, -0.0, 0.1],
    # dict values: special floats, bools, None, a big int, int and str subclasses
    {
        "nan": float("nan"),
        "inf": -float("inf"),
        "t": True,
        "n": None,
        "big": 10**30,
        "enum": http.HTTPStatus.OK,
        "sub": type("Text", (str,), {})("é"),
        "list": [],
    },
    {"deep": [[[[{"k": [1, {"l": "m"}]}]]]]},
    "text",
    7,
    None,
]


@pytest.mark.parametrize("data", PRETTY_CASES + ["numpy"], ids=repr)
def test_job_files_hold_the_originals_indented_json(data):
    """The fast encoder of the files gives exactly json.dumps(indent=4, NumpyEncoder)."""
    import numpy

    from dahu.journal.files import pretty_json
    from dahu.utils import NumpyEncoder

    if data == "numpy":
        data = {
            "image": numpy.arange(6.0).reshape(2, 3),
            "f32": numpy.float32(1.5),
            "i64": numpy.int64(7),
            "pair": (1, 2),
            "set": {3},
            "raw": b"xy",
        }
    assert pretty_json(data) == json.dumps(data, indent=4, cls=NumpyEncoder)


@pytest.mark.parametrize("workdir", ["/data/dahu", "/data/dahu/", "relative", "rel/", ""])
def test_job_file_paths_are_the_joined_paths(workdir):
    """The files' paths, built with f-strings, are those os.path.join gives."""
    for job_id in (5, 999, 1000, 12345, 1234567):
        stem = job_file_stem(workdir, job_id, "example.square")
        assert stem == os.path.join(
            workdir, f"{job_id // 1000:04d}", f"{job_id:05d}_example.square"
        )


@pytest.mark.parametrize("job_id", [7, 12345678])
def test_a_plugin_name_too_long_for_a_file_name_gets_its_files_under_a_cut_one(tmp_path, job_id):
    # bug: a plugin name over about 245 characters gave no .inp/.out files at all
    # (ENAMETOOLONG, logged), and nothing for dahu-jobs show or a prune to find
    names = ["id31." + "a" * 300, "id31." + "a" * 300 + "b", "id31.étude_" + "é" * 200]
    stems = []
    for name in names:
        inp, out = write_job_files(str(tmp_path), job_id, name, {"x": 1}, {"y": 2})
        stem = job_file_stem(str(tmp_path), job_id, name)
        assert (inp, out) == (stem + ".inp", stem + ".out")
        assert json.loads(open(out).read()) == {"y": 2}
        file_name = os.path.basename(inp).encode()
        assert 245 < len(file_name) <= 255 and file_name.startswith(f"{job_id:05d}_id31.".encode())
        # room for the longest name Dahu makes from it too: NAME.h5.part (pyFAI)
        assert len(os.path.basename(stem + ".h5.part").encode()) <= 255
        stems.append(stem)
    assert len(set(stems)) == 3  # the same start, different names: different files
    short = job_file_stem(str(tmp_path), job_id, "id31." + "a" * 200)  # fits: as it was
    assert short.endswith(f"{job_id:05d}_id31.{'a' * 200}")


def test_job_files_encoder_refuses_what_json_refuses():
    from dahu.journal.files import pretty_json

    with pytest.raises(TypeError, match="not JSON serializable"):
        pretty_json({"o": object()})
    with pytest.raises(TypeError, match="keys must be"):
        pretty_json({(1, 2): 1})
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        pretty_json(circular)
    deep = inner = []
    for _ in range(200):  # deeper than its indent table: the standard encoder takes over
        inner.append([])
        inner = inner[0]
    assert pretty_json(deep) == json.dumps(deep, indent=4)


def test_ids_are_consecutive_in_a_process_and_never_shared(tmp_path):
    """Ids come from blocks reserved in the journal: one writer gets consecutive ids
    whatever the sizes asked for; two writers on one journal never get the same id."""
    journal = SQLiteJournal(str(tmp_path))
    ids = [journal.create("example.noop", {}, 1.0) for _ in range(50)]
    ids += journal.create_many("example.noop", [{}] * 30, 2.0)
    ids += journal.create_many("example.noop", [{}] * 100, 3.0)
    ids += [journal.create_later(lambda error: None, "example.noop", {}, 4.0)[0] for _ in range(5)]
    assert journal.flush(10)
    assert ids == list(range(1, 186))
    other = SQLiteJournal(str(tmp_path))  # as a second process on the same directory
    theirs = [other.create("example.noop", {}, 5.0) for _ in range(35)]
    # one record at a time, queued: more than a block (ID_BLOCK) of them
    theirs += [
        other.create_later(lambda error: None, "example.noop", {}, 5.5)[0] for _ in range(70)
    ]
    assert other.flush(10)
    ours = journal.create_many("example.noop", [{}] * 70, 6.0)
    assert not set(theirs) & set(ours) and not set(theirs + ours) & set(ids)
    assert theirs == sorted(theirs) and ours == sorted(ours)
    other.close()
    journal.close()
    again = SQLiteJournal(str(tmp_path))  # a clean close gave the unused ids back
    assert again.create("example.noop", {}, 7.0) == max(theirs + ours) + 1
    again.close()


def test_another_process_sees_the_last_id_given_not_the_block_reserved(tmp_path):
    # bug: a process reading the journal (a process worker, a Dask worker) took the end
    # of the server's reserved block for the last id: job -1 and the ids not given yet
    # were misread there
    writer = SQLiteJournal(str(tmp_path))
    ids = [writer.create("example.noop", {}, 1.0) for _ in range(12)]
    reader = SQLiteJournal(str(tmp_path))
    assert reader.last_id() == writer.last_id() == ids[-1] == 12
    writer.create("example.noop", {}, 2.0)
    assert reader.last_id() == 13
    reader.close()
    writer.close()


def test_a_write_the_disk_refuses_reports_the_disks_error_and_leaves_no_transaction(tmp_path):
    # a child whose files may not grow: SQLite rolls the batch back itself; the error
    # reported was ROLLBACK's ("cannot rollback - no transaction is active")
    script = f"""
import os, resource, signal
from dahu.journal import JournalError, SQLiteJournal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
journal = SQLiteJournal({str(tmp_path)!r})
first = journal.create("example.square", {{"x": 1}}, 1.0)
size = max(os.path.getsize(os.path.join({str(tmp_path)!r}, f)) for f in os.listdir({str(tmp_path)!r}))
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20000, resource.RLIM_INFINITY))
try:
    journal.create_many("example.square", [{{"blob": "x" * 5000}}] * 200, 1.0)
except JournalError as err:
    print("refused:", err)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
second = journal.create("example.square", {{"x": 2}}, 1.0)  # room again: it writes
journal.finish(second, "success", {{"r": 4}}, None, 1.0, 2.0)
print("after:", journal.get(second).state)
journal.close()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: cannot write the journal" in result.stdout
    assert "cannot rollback" not in result.stdout
    assert "after: success" in result.stdout


def test_a_write_waiting_for_another_process_lock_holds_up_no_read(tmp_path):
    # bug: a write waiting for a lock another process held (a prune's VACUUM, a sqlite3
    # shell, a second server: up to the 30 s busy timeout) held the journal's one
    # connection, so every read of a finished job (getJobState, getJobOutput, -1...)
    # waited too: the device stopped answering any client until the lock went
    import threading

    journal = SQLiteJournal(str(tmp_path))
    journal.RECORD_WAIT = 30.0  # the record below waits for the lock, however slow the test
    old = journal.create("example.square", {"x": 3}, 1.0)
    journal.finish(old, "success", {"result": 9}, None, 1.0, 2.0)
    other = sqlite3.connect(journal.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    created: list[int] = []
    writer = threading.Thread(
        target=lambda: created.append(journal.create("example.noop", {}, 3.0)), daemon=True
    )
    try:
        writer.start()
        deadline = time.monotonic() + 10
        while journal._lock.acquire(blocking=False):  # until the writer waits for SQLite
            journal._lock.release()
            assert time.monotonic() < deadline
        answers: list = []
        reader = threading.Thread(
            target=lambda: answers.append((journal.get(old).output, journal.state(old))),
            daemon=True,
        )
        reader.start()
        reader.join(5)
        assert answers == [({"result": 9}, "success")]
    finally:
        other.execute("ROLLBACK")
        other.close()
    writer.join(30)
    assert created == [old + 1] and journal.get(old + 1).state == "uninitialized"
    journal.close()


LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class LockedByAnotherProcess:
    """A second process holding the journal's write lock (as a ``sqlite3`` shell does)
    until :meth:`release`."""

    def __init__(self, path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout.readline() == "locked\n"

    def release(self):
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def refused_in_time(path, make_job):
    """``make_job()`` is refused within a client's 3 s, in one line naming the cause."""
    begun = time.monotonic()
    with pytest.raises(JournalError) as refused:
        make_job()
    assert time.monotonic() - begun < 3.0
    message = str(refused.value)
    assert f"the journal {path} is locked by another process" in message, message
    assert "\n" not in message and "job not recorded" in message


def test_a_job_is_refused_in_seconds_while_another_process_holds_the_journal(engine, workdir):
    # bug: startJob waited up to the 30 s busy timeout for another process's lock (a
    # sqlite3 shell, a long prune): the client gave up after 3 s, and the job could still
    # run later under an id nobody was given
    engine.journal.RECORD_WAIT = 1.0  # the test's time; 2 s by default
    path = workdir / "journal.sqlite"
    lock = LockedByAnotherProcess(path)  # before any id is reserved: the reservation waits
    refused_in_time(path, lambda: Job("example.square", {"x": 1}))
    assert engine.journal_fault is None  # refused, not at fault (FAULT on the device)
    lock.release()
    sleeper = Job("example.sleep", {"t": 600})
    sleeper.start()
    while sleeper.status != "running":
        assert sleeper.status in ("starting", "uninitialized")
        time.sleep(0.01)
    lock = LockedByAnotherProcess(path)
    try:
        # the record waits for SQLite's lock itself
        refused_in_time(path, lambda: Job("example.square", {"x": 2}).id)
        assert Job.getStatusFromID(-1) == "running"  # -1: the sleeper, not the refused job
        # an outcome waits for it in another thread, holding the journal's writer lock
        sleeper.abort("stop")
        deadline = time.monotonic() + 10
        while engine.journal._lock.acquire(blocking=False):
            engine.journal._lock.release()
            assert time.monotonic() < deadline
        refused_in_time(path, lambda: Job("example.square", {"x": 3}).id)
    finally:
        lock.release()
    sleeper.join(30)
    assert sleeper.status == "aborted"
    after = Job("example.square", {"x": 4})
    after.start()
    after.join(30)
    assert after.status == "success" and engine.journal_fault is None
    engine.journal.flush(30)
    records = {r.id: (r.plugin, r.input.get("x"), r.state) for r in engine.journal.select()}
    # the refused jobs were never recorded, nor run
    assert sorted(records.values(), key=str) == sorted(
        [("example.sleep", None, "aborted"), ("example.square", 4, "success")], key=str
    )


def test_a_reader_opens_the_journal_at_once_while_another_process_holds_its_lock(tmp_path):
    # bug: opening a journal set auto_vacuum, which waits for the write lock: a worker
    # process's first read of another job (wait_for, getDataOutputFromId) stalled 30 s
    # while a prune or a sqlite3 shell held it, then found no such job ("inexistant")
    from dahu.journal.reader import JournalReader

    journal = SQLiteJournal(str(tmp_path))
    done = journal.create("example.square", {"x": 3}, 1.0)
    journal.finish(done, "success", {"result": 9}, None, 1.0, 2.0)
    journal.close()
    lock = LockedByAnotherProcess(tmp_path / "journal.sqlite")
    try:
        begun = time.monotonic()
        assert JournalReader(str(tmp_path)).state(done) == "success"
        assert time.monotonic() - begun < 3.0
    finally:
        lock.release()


def test_after_a_refused_record_no_read_nor_record_waits_for_the_lock(tmp_path):
    # bug: a refused record put the outcomes of its batch back in the queue, and the
    # next thread answering a client (a read, another record refused meanwhile)
    # committed them in passing, waiting 30 s for the other process's lock
    journal = SQLiteJournal(str(tmp_path))
    journal.RECORD_WAIT = 0.5
    journal.hand_off = lambda: None  # the engine's watchdog, which would commit them later
    done = journal.create("example.square", {"x": 3}, 1.0)  # a block of ids reserved
    lock = LockedByAnotherProcess(tmp_path / "journal.sqlite")
    try:
        outcomes: list = []
        journal.finish_later(outcomes.append, done, "success", {}, None, 1.0, 2.0, hold=True)
        created = journal.create_later(outcomes.append, "example.square", {"x": 4}, 3.0)
        refused_in_time(journal.path, lambda: journal.settle(created[1]))
        begun = time.monotonic()
        assert journal.state(done) == "uninitialized"  # a read: its outcome is not in yet
        assert time.monotonic() - begun < 1.0
        refused_in_time(journal.path, lambda: journal.create("example.square", {"x": 5}, 4.0))
    finally:
        lock.release()
    assert journal.flush(30) and outcomes == [None]
    assert journal.state(done) == "success"
    journal.close()


def test_a_journal_another_process_keeps_locked_at_the_start_says_so(tmp_path, monkeypatch, caplog):
    # bug: a server started while a sqlite3 shell held the journal's lock stopped after
    # 30 s with SQLite's bare "database is locked", which names no cause; then, it said
    # nothing for those 30 s. Now the log says what it waits for after a second, and it
    # gives up after 10 s
    import dahu.journal.sqlitefile

    SQLiteJournal(str(tmp_path)).close()
    path = tmp_path / "journal.sqlite"
    lock = LockedByAnotherProcess(path)
    opened: list = []
    opener = threading.Thread(target=lambda: opened.append(SQLiteJournal(str(tmp_path))))
    try:
        opener.start()
        deadline = time.monotonic() + 8  # said after 1 s; 2.5 s was tight under load
        while "waiting up to 10 s for it" not in caplog.text:
            assert time.monotonic() < deadline, "nothing said of the lock"
            time.sleep(0.02)
        line = next(r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage())
        assert line.startswith(f"the journal {path} is locked by another process (a sqlite3 ")
        assert f"it is open in pid {lock.proc.pid} (" in line and not opened
    finally:
        lock.release()
    opener.join(10)
    opened.pop().close()  # it opens once the lock is let go
    monkeypatch.setattr(dahu.journal.sqlitefile, "OPEN_WAIT", 0.2)  # the test's time
    lock = LockedByAnotherProcess(path)
    try:
        with pytest.raises(JournalError) as refused:
            SQLiteJournal(str(tmp_path))
    finally:
        lock.release()
    assert str(refused.value) == (
        f"cannot open the journal in {tmp_path}: database is locked (another process "
        "held its write lock for 0.2 s: a sqlite3 shell?)"
    )


READER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN")
db.execute("SELECT COUNT(*) FROM jobs").fetchall()  # a snapshot, kept (a long listing)
print("reading", flush=True)
sys.stdin.readline()
"""


def test_a_prune_beside_a_long_reader_keeps_no_job_from_being_recorded(tmp_path):
    # bug: the checkpoint that ends a prune (dahu-jobs prune, the server's retention)
    # waited up to 30 s for any reader holding a snapshot (a long dahu-jobs list, a
    # sqlite3 shell) while holding the journal's write lock: no job could be recorded
    from dahu.retention import prune

    journal = SQLiteJournal(str(tmp_path))
    ids = journal.create_many("example.square", [{"x": x} for x in range(300)], 1.0)
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 2.0) for i in ids])
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, journal.path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert reader.stdout.readline() == "reading\n"
        begun = time.monotonic()
        report = prune(str(tmp_path), keep_last=10, min_age=0)
        assert report.removed == 290
        assert time.monotonic() - begun < 10.0
        recorded = journal.create("example.square", {"x": 1}, 3.0)  # not refused
        assert journal.get(recorded).state == "uninitialized"
    finally:
        reader.stdin.close()
        reader.wait(30)
    journal.close()


def test_a_prune_on_a_journal_another_process_keeps_locked_says_so(tmp_path, monkeypatch):
    # bug: after 30 s, only SQLite's "database is locked", which names no cause
    import dahu.jobquery
    from dahu.retention import prune

    journal = SQLiteJournal(str(tmp_path))
    ids = journal.create_many("example.square", [{"x": x} for x in range(3)], 1.0)
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 2.0) for i in ids])
    journal.close()
    connect = dahu.jobquery._connect

    def impatient(*args, **named):  # the test's time: 0.1 s, not 30 s
        db, tables, version = connect(*args, **named)
        db.execute("PRAGMA busy_timeout=100")
        return db, tables, version

    monkeypatch.setattr(dahu.jobquery, "_connect", impatient)
    lock = LockedByAnotherProcess(tmp_path / "journal.sqlite")
    try:
        with pytest.raises(JournalError) as refused:
            prune(str(tmp_path), keep_last=1, min_age=0)
    finally:
        lock.release()
    assert str(refused.value) == (
        f"cannot prune the journal {tmp_path / 'journal.sqlite'}: database is locked "
        "(another process held its write lock for 30 s: a sqlite3 shell?)"
    )


def test_an_ended_job_left_without_files_behind_later_ends_gets_them(workdir, monkeypatch):
    # bug: a server killed while job 60's outcome was committed but not yet reported
    # (files follow the reports), after queued jobs aborted later had theirs written:
    # the search met those first, found no file missing there and stopped
    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 40)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(120)], 1.0)
    ran, queued = ids[:60], ids[60:]
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 2.0 + i) for i in ran])
    aborted = queued[-10:]  # queued, aborted by a client, files written
    journal.finish_many([(i, "aborted", {}, "aborted by a client", None, 500.0) for i in aborted])
    journal.close()
    for job_id in ran[:-1] + aborted:
        write_job_files(str(workdir), job_id, "example.square", {"x": 0}, {"result": 0})
    of_a_dead_process(workdir)

    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert len(engine.interrupted) == 50
        assert engine.wait_recovered(10)  # in a thread: the engine answers at once
        assert engine.recovered == 51  # the interrupted ones, and the last that ran
        stem = job_file_stem(str(workdir), ran[-1], "example.square")
        assert json.loads(open(stem + ".out").read())["result"] == ran[-1]
    finally:
        engine.close()


def test_the_last_ends_among_a_queue_cut_short_get_their_files(workdir, monkeypatch):
    # bug: a server killed during a startJobs of 2,000 jobs (queued while other
    # clients' jobs came and ended) had jobs 99 and 100 (ids below the queue cut short)
    # end last without files; the search met 50 jobs with files above the queue first,
    # which ended earlier, and stopped
    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 40)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(200)], 1.0)
    ran, others = ids[:100], ids[140:]  # ids[100:140]: queued, never started
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 100.0 + i) for i in ran])
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, i - 140.0) for i in others])
    journal.close()
    for job_id in ran[:-2] + others:
        write_job_files(str(workdir), job_id, "example.square", {"x": 0}, {"result": 0})
    of_a_dead_process(workdir)

    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert len(engine.interrupted) == 40
        assert engine.wait_recovered(10)  # in a thread: the engine answers at once
        assert engine.recovered == 42
        for job_id in ran[-2:]:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read())["result"] == job_id
    finally:
        engine.close()


def test_the_last_ends_of_a_startjobs_far_below_later_ids_get_their_files(workdir, monkeypatch):
    # bug: a kill loop's startJobs of 2,000 jobs, queued while other clients' jobs came
    # (higher ids, ended earlier), had its last 15 jobs end last, 2,600 ids below the
    # queue cut short: the search found 50 jobs with files among the higher ids and
    # stopped; it now goes on down while jobs ended after those 50
    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 40)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(300)], 1.0)
    batch, others = ids[:150], ids[150:260]  # ids[260:]: queued, never started
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 1000.0 + i) for i in batch])
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, float(i)) for i in others])
    journal.close()
    for job_id in batch[:-10] + others:
        write_job_files(str(workdir), job_id, "example.square", {"x": 0}, {"result": 0})
    of_a_dead_process(workdir)

    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10)  # in a thread: the engine answers at once
        assert engine.recovered == 40 + 10
        for job_id in batch[-10:]:
            stem = job_file_stem(str(workdir), job_id, "example.square")
            assert json.loads(open(stem + ".out").read())["result"] == job_id
    finally:
        engine.close()


def test_files_deleted_by_a_user_are_not_all_written_again(workdir, monkeypatch):
    # the search for files a killed process left unwritten goes back window by window
    # while files are missing: bounded, so that a user who deleted the job files of a
    # long journal does not get them all back at the next start
    from dahu.engine import recovery

    monkeypatch.setattr(recovery, "WINDOW", 10)
    monkeypatch.setattr(recovery, "REACH", 30)
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": i} for i in range(100)], 1.0)
    journal.finish_many([(i, "success", {"result": i}, None, 1.0, 2.0 + i) for i in ids])
    journal.close()
    of_a_dead_process(workdir)
    engine = dahu.engine.Engine(workdir=str(workdir))
    try:
        assert engine.wait_recovered(10)  # in a thread: the engine answers at once
        assert engine.recovered == 30
        assert os.path.exists(job_file_stem(str(workdir), ids[-30], "example.square") + ".out")
        assert not os.path.exists(job_file_stem(str(workdir), ids[-31], "example.square") + ".out")
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_an_output_sqlite_cannot_hold_is_recorded_as_a_note(
    kind, tmp_path, plugin_dir, monkeypatch
):
    # bug: an output over SQLite's 1,000,000,000 bytes ("x" * 1_000_000_100) was refused
    # at every try ("string or blob too big"): the device stayed FAULT for good, the job
    # "running" in the journal; here SQLite's limit is lowered to 100 kB, ours to 50 kB
    import dahu.journal.base

    engine = dahu.engine.configure(workdir=str(tmp_path / "work"), executor_kind=kind)
    (plugin_dir / "bulky.py").write_text(
        "from dahu.plugin import plugin_from_function\n\n\n"
        "def text(n=1):\n    return 'x' * int(n)\n\n\nplugin_from_function(text)\n"
    )
    monkeypatch.setattr(dahu.journal.base, "MAX_OUTPUT_CHARS", 50_000, raising=False)
    engine.journal._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
    job = Job("bulky.text", {"n": 200_000})
    job.start()
    job.join()
    job.clean()
    assert engine.journal_fault is None
    record = engine.journal.get(job.id)
    assert record.state == "success"
    note = "output of 0 MB not recorded: the journal takes 0 MB at most (the job's .out file"
    assert record.output["unrecorded_output"].startswith(note)
    assert record.error.startswith(note)
    with open(job.data_on_disk + ".out") as out:  # whole: the worker sent it all
        assert json.load(out)["result"] == "x" * 200_000
    engine.shutdown(timeout=30)


@pytest.mark.parametrize("name", ["a b", "x#y", "q?r", "%41", "p%20c", "é ü"])
def test_a_work_directory_of_any_name_holds_its_own_journal(tmp_path, name):
    # the journal is opened through a SQLite URI: the characters that end its path (?, #)
    # or begin an escape (%) must name this directory, not another one
    workdir = tmp_path / name
    journal = SQLiteJournal(str(workdir))
    job_id = journal.create("example.square", {"x": 3}, time.time())
    journal.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    reader = SQLiteJournal(str(workdir), create=False)
    try:
        assert reader.get(job_id).input["x"] == 3
    finally:
        reader.close()
