"""The journal's promises under group commit, seen from outside the writing process:

* a job's record is committed before its id is returned (``kill -9`` of the server right
  after ``startJob``/``startJobs`` returned: the restarted server knows the jobs);
* a finished job is never reported (``jobSuccess`` event, ``waitJob`` answer, callback,
  ``join``) before its outcome is committed: another connection to the journal file,
  opened when the report arrives, already reads the final state and the output.
"""

from __future__ import annotations

import json
import math
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tango

import dahu.engine
from dahu.app.localserver import LocalServer
from dahu.factory import register
from dahu.job import Job
from dahu.journal import SQLiteJournal, job_file_stem
from dahu.plugin import Plugin

from .conftest import child_env, finish, next_item, wait_for_file, wait_subscribed

DEVICE = "test/dahu/promises"


def committed(workdir: Path, job_id: int) -> tuple[str, dict | None] | None:
    """State and output of ``job_id`` as another process would read them now."""
    db = sqlite3.connect(f"file:{workdir / SQLiteJournal.FILENAME}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state, output FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    if row is None:
        return None
    return row[0], json.loads(row[1]) if row[1] else None


@pytest.fixture
def server(tmp_path):
    """A real ``dahu_server`` subprocess on a fresh work directory."""
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device=DEVICE)
    local.start(timeout=60)
    try:
        yield local, workdir
    finally:
        local.stop()


def test_events_come_after_the_outcome_is_committed_and_the_files_written(server):
    local, workdir = server
    proxy = local.proxy
    seen: dict[int, tuple | None] = {}
    lock = threading.Lock()
    all_seen = threading.Event()
    count = 60
    probes: queue.SimpleQueue = queue.SimpleQueue()
    floor = [math.inf]  # the jobs up to it are probes (wait_subscribed)

    def on_event(event: tango.EventData) -> None:
        if event.err or event.attr_value is None:
            return
        job_id = int(event.attr_value.value)
        if job_id <= 0:
            return
        if job_id <= floor[0]:
            probes.put(job_id)
            return
        read = committed(workdir, job_id)  # read when the event arrives, not later
        # as in the original, the job's files are written before its event is pushed
        out = Path(job_file_stem(str(workdir), job_id, "example.square") + ".out")
        on_disk = json.loads(out.read_text()) if out.exists() else None
        with lock:
            seen[job_id] = (*read, on_disk)
            if len(seen) >= count:
                all_seen.set()

    sub = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:
        floor[0] = wait_subscribed(proxy, lambda seconds: next_item(probes, seconds))
        ids = [proxy.startJob(["example.square", json.dumps({"x": x})]) for x in range(count)]
        assert all_seen.wait(60), f"{len(seen)} of {count} events"
    finally:
        proxy.unsubscribe_event(sub)
    for x, job_id in enumerate(ids):
        state, output, on_disk = seen[job_id]
        assert state == "success" and output["result"] == x * x, (job_id, seen[job_id])
        assert on_disk == output, f"job {job_id}: its .out file was not written first"
    # waitJob: each answer found the outcome in the journal file already
    more = [proxy.startJob(["example.square", json.dumps({"x": x})]) for x in range(20)]
    for x, job_id in enumerate(more):
        assert finish(proxy, job_id) == "success"
        state, output = committed(workdir, job_id)
        assert state == "success" and output["result"] == x * x


def test_callbacks_and_join_come_after_the_outcome_is_committed(workdir):
    dahu.engine.configure(workdir=str(workdir), max_workers=2)
    reads: dict[int, tuple | None] = {}

    def callback(job: Job) -> None:
        reads[job.id] = committed(workdir, job.id)

    jobs = [Job("example.square", {"x": x}) for x in range(50)]
    for job in jobs:
        job.connect_callback(callback)
        job.start()
    for x, job in enumerate(jobs):
        job.join(60)
        state, output = committed(workdir, job.id)  # right after join returned
        assert state == "success" and output["result"] == x * x
        assert reads[job.id][0] == "success"


def test_jobs_reported_by_the_journal_writer_come_after_their_commit(workdir):
    """Jobs whose callbacks are all nonblocking are reported by whichever thread commits
    their outcome (with others, in one transaction): join() and the callbacks still see
    the outcome only once it is committed, in every job."""
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=2)
    reads: dict[int, tuple | None] = {}

    @dahu.engine.nonblocking
    def callback(job: Job) -> None:
        reads[job.id] = committed(workdir, job.id)

    commits0 = engine.journal.commits
    jobs = [Job("example.square", {"x": x}) for x in range(300)]
    for job in jobs[::2]:
        job.connect_callback(callback)
    for job in jobs:
        job.start()
    for x, job in enumerate(jobs):
        job.join(60)
        assert job.status == "success"
        state, output = committed(workdir, job.id)  # right after join returned
        assert state == "success" and output["result"] == x * x
    assert all(reads[job.id][0] == "success" for job in jobs[::2])
    # the outcomes went in batches: fewer commits than jobs created and ended
    assert engine.journal.commits - commits0 < 2 * len(jobs)


_GATE = threading.Event()


class Gate(Plugin):
    """Runs until the test opens the gate (60 s at most)."""

    def process(self):
        self.output["opened"] = _GATE.wait(60)


register(Gate, "promises.gate")


def test_an_outcome_held_for_a_batch_is_reported_while_the_next_job_runs(workdir, monkeypatch):
    """An outcome that ends while jobs are queued behind it waits for others to share its
    commit, but not for them to end: the next job in its slot may run for a long time."""
    # nothing else writes meanwhile: the running job is not recorded as running
    monkeypatch.setattr(dahu.engine.core, "NOTE_RUNNING_AFTER", 3600.0)
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=1, batch_outcomes=True)
    reported = threading.Event()
    first = Job("example.square", {"x": 4})
    first.connect_callback(dahu.engine.nonblocking(lambda job: reported.set()))
    gate = Job("promises.gate", {})
    after = Job("example.square", {"x": 5})  # queued: the first outcome is held
    _GATE.clear()
    try:
        for job in (first, gate, after):
            job.start()
        assert reported.wait(10), "the held outcome was not committed while the gate ran"
        # the gate has not ended (it cannot, _GATE is shut): it may not have begun yet
        assert first.status == "success" and gate.status in ("starting", "running")
        assert committed(workdir, first.id) == ("success", first.output_data)
    finally:
        _GATE.set()
    after.join(30)
    assert after.status == "success" and gate.status == "success"
    engine.close()


def test_a_burst_of_jobs_shares_commits(workdir):
    """Batch work (dahu-reprocess): jobs queued behind each other on one slot have their
    outcomes committed together: far fewer commits than jobs, every job reported."""
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=1, batch_outcomes=True)
    ended: list[int] = []
    _GATE.clear()
    gate = Job("promises.gate", {})
    gate.start()  # holds the slot while the burst is queued
    jobs = [Job("example.square", {"x": x}) for x in range(400)]
    for job in jobs:
        job.connect_callback(dahu.engine.nonblocking(lambda job: ended.append(job.id)))
        job.start()
    commits0 = engine.journal.commits
    _GATE.set()
    for x, job in enumerate(jobs):
        job.join(60)
        assert job.status == "success" and job.output_data["result"] == x * x
    assert sorted(ended) == [job.id for job in jobs]
    assert engine.journal.commits - commits0 < len(jobs) // 4
    engine.close()


def test_a_plain_callback_runs_in_the_job_thread_and_may_wait_for_jobs(workdir):
    """A callback not marked nonblocking may wait for another job: it runs in the
    thread that ran the job, after that thread committed the outcome itself."""
    dahu.engine.configure(workdir=str(workdir), max_workers=2)
    seen: list[tuple] = []

    def callback(job: Job) -> None:
        other = Job("example.square", {"x": 7})
        other.start()
        other.join(60)
        seen.append((threading.current_thread().name, other.status, committed(workdir, job.id)))

    first = Job("example.square", {"x": 3})
    first.connect_callback(callback)
    first.start()
    first.join(60)
    assert seen and seen[0][0] == "dahu-worker"
    assert seen[0][1] == "success" and seen[0][2][0] == "success"


def test_a_callback_that_raises_leaves_the_outcome_clients_were_told(workdir, caplog):
    """A deliberate difference (docs/compat.md): the original turned the job into a
    failure; here the outcome, committed and reported before callbacks run, stays."""
    dahu.engine.configure(workdir=str(workdir), max_workers=2)
    ran: list[int] = []

    def broken(job: Job) -> None:
        raise RuntimeError("bug in a client's callback")

    job = Job("example.square", {"x": 3})
    job.connect_callback(broken)
    job.connect_callback(lambda job: ran.append(job.id))  # the others still run
    job.start()
    job.join(60)
    assert job.status == "success" and job.output_data["result"] == 9
    assert committed(workdir, job.id)[0] == "success"
    assert ran == [job.id]
    assert Job.getErrorFromId(job.id) == ""
    assert any("callback" in r.getMessage() and r.exc_info for r in caplog.records)


def test_close_commits_and_reports_every_queued_outcome(workdir):
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=2)
    ended: list[int] = []
    jobs = [Job("example.square", {"x": x}) for x in range(200)]
    for job in jobs:
        job.connect_callback(dahu.engine.nonblocking(lambda job: ended.append(job.id)))
        job.start()
    engine.close()  # without any join
    assert sorted(ended) == [job.id for job in jobs]
    for x, job in enumerate(jobs):
        state, output = committed(workdir, job.id)
        assert state == "success" and output["result"] == x * x


def test_an_in_process_job_id_is_given_once_its_record_is_committed(workdir):
    """Job() queues its record; reading job.id commits it first (another process sees
    the job as soon as its id is known), and starting a job commits the queued records."""
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=2)
    # a start's recovery reads the journal in its thread, committing in passing what is
    # queued then: a commit start() leaves to it, under way as the records are read here
    assert engine.wait_recovered(30)
    jobs = [Job("example.square", {"x": x}) for x in range(20)]
    jobs[10].start()  # commits every record queued before it too
    for job in jobs[:11]:
        assert committed(workdir, job._run.id) is not None
    jobs[10].join(60)
    assert committed(workdir, jobs[10].id)[0] == "success"
    later = Job("example.square", {"x": 1})
    assert committed(workdir, later.id) == ("uninitialized", None)


EXIT_WITHOUT_CLOSE = """
import sys, dahu.engine
from dahu.job import Job
dahu.engine.configure(workdir=sys.argv[1])
done = Job("example.square", {"x": 3}); done.start(); done.join()
never_started = Job("example.noop", {})
print(done._run.id, never_started._run.id, flush=True)
"""


def test_a_process_ending_without_closing_commits_what_it_queued(workdir):
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(workdir)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=True,
    )
    done, never_started = map(int, proc.stdout.split())
    assert committed(workdir, done) == (
        "success",
        {"result": 9, "logging": [], "job_runtime": pytest.approx(0, abs=60)},
    )
    assert committed(workdir, never_started) == ("uninitialized", None)


def test_kill_9_right_after_startjob_returns_keeps_the_jobs(tmp_path):
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device=DEVICE)
    proxy = local.start(timeout=60)
    try:
        slow = proxy.startJob(["example.sleep", '{"t": 600}'])
        quick = proxy.startJob(["example.square", '{"x": 3}'])
        batch = list(proxy.startJobs(["example.sleep", json.dumps([{"t": 600}] * 5)]))
        local.process.kill()  # SIGKILL: no shutdown, nothing flushed by the server
        local.process.wait(30)
    finally:
        local.stop()
    again = LocalServer(str(workdir), str(tmp_path / "server2.log"), device=DEVICE)
    proxy = again.start(timeout=60)
    try:
        assert proxy.getJobState(slow) == "failure"  # it was running: interrupted
        assert proxy.getJobError(slow) == "interrupted"
        assert proxy.getJobState(quick) in ("success", "failure")
        assert json.loads(proxy.getJobInput(quick))["x"] == 3
        for job_id in batch:
            assert proxy.getJobState(job_id) == "failure"
            assert json.loads(proxy.getJobInput(job_id))["t"] == 600
        assert proxy.startJob(["example.noop", "{}"]) > max(batch)
    finally:
        again.stop()


def test_a_plugin_that_outlives_the_shutdown_is_recorded_as_aborted(tmp_path):
    # bug: its job stayed "running" in the journal after the server had exited, and
    # every job ended at shutdown logged "cannot push ...: attribute not found"
    from .conftest import TROUBLE_PLUGINS

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stubborn.py").write_text(TROUBLE_PLUGINS)
    workdir, log = tmp_path / "work", tmp_path / "server.log"
    extra = ["--plugins", str(plugins), "--shutdown-timeout", "1"]
    local = LocalServer(str(workdir), str(log), device=DEVICE, max_workers=2, extra_args=extra)
    proxy = local.start(timeout=60)
    try:
        flag = tmp_path / "in-process"
        hung = proxy.startJob(["stubborn.hang", json.dumps({"flag": str(flag)})])
        sleeping = proxy.startJob(["example.sleep", '{"t": 600}'])
        queued = proxy.startJob(["example.sleep", '{"t": 600}'])
        deadline = time.monotonic() + 30
        while proxy.getJobState(hung) != "running" or proxy.getJobState(sleeping) != "running":
            assert time.monotonic() < deadline, "the jobs never ran"
            time.sleep(0.01)
        wait_for_file(flag)  # in process(), not loading (an abort then skips process)
    finally:
        status = local.stop()
    assert status == 1  # a job was still running after the timeout: said by the status
    with sqlite3.connect(workdir / "journal.sqlite") as db:
        rows = dict((r[0], r[1:]) for r in db.execute("SELECT id, state, error FROM jobs"))
    assert rows[hung] == (
        "aborted",
        "the server is shutting down (the plugin had not stopped after 1 s)",
    )
    assert rows[sleeping] == rows[queued] == ("aborted", "the server is shutting down")
    text = log.read_text()
    assert "cannot push" not in text and "Traceback" not in text, text[-2000:]


def test_a_thread_a_plugin_leaves_running_does_not_keep_the_server_alive(tmp_path):
    # bug: after "dahu_server ...: stopped" the process waited for ever for the plugin's
    # thread (Python joins every non-daemon thread at exit)
    from .conftest import TROUBLE_PLUGINS

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "trouble.py").write_text(TROUBLE_PLUGINS)
    workdir, log = tmp_path / "work", tmp_path / "server.log"
    local = LocalServer(
        str(workdir), str(log), device=DEVICE, extra_args=["--plugins", str(plugins)]
    )
    proxy = local.start(timeout=60)
    try:
        job_id = proxy.startJob(["trouble.linger", "{}"])
        assert proxy.waitJob(job_id) == "success"
    finally:
        status = local.stop(timeout=30)  # None: it had to be killed
    assert status == 0
    text = log.read_text()
    assert (
        "exiting without waiting for 1 thread(s) that plugins left running: linger-monitor" in text
    )


def test_a_stream_of_outcomes_neither_holds_a_client_nor_reorders_the_reports(tmp_path):
    # bug: after startJobs of 100,000 trivial jobs, one startJob took 9 to 15 s. The
    # client's thread, once it held the writer lock, committed and reported everyone's
    # outcomes for as long as they came, and each commit held tens of thousands of them.
    # Batches reported by two threads at once also pushed events out of order.
    from dahu.executors.watchdog import Watchdog

    journal = SQLiteJournal(str(tmp_path))
    helper = Watchdog()  # the engine hands left-over writes to its watchdog the same way
    journal.hand_off = lambda: helper.call_later(0.0, journal.drain_some)
    ids = journal.create_many("example.square", [{"x": i} for i in range(60_000)], 0.0)
    reported: list[int] = []
    produced = threading.Event()

    def producer() -> None:  # a pool thread ending jobs as fast as it can
        for job_id in ids:
            journal.finish_later(
                lambda error, job_id=job_id: reported.append(job_id),
                job_id,
                "success",
                {"result": 1},
                None,
                1.0,
                2.0,
            )
        produced.set()

    thread = threading.Thread(target=producer)
    thread.start()
    while len(reported) < 1000:  # the stream is on
        time.sleep(0.001)
    answered_during_the_stream = 0
    for i in range(20):  # a client: reads, and records it waits for
        assert journal.state(ids[i]) is not None
        journal.create("example.square", {"x": -i}, 0.0)
        answered_during_the_stream += not produced.is_set()
    thread.join(120)
    assert journal.flush(timeout=60)
    assert answered_during_the_stream == 20, "the client waited for the stream to end"
    assert reported == ids  # every outcome reported once, in the order it was written
    journal.close()


def test_writes_queued_while_a_writer_catches_up_are_committed(tmp_path, monkeypatch):
    # bug (found before it shipped): a writer past MAX_QUEUED waited for the lock and
    # committed, but left the lock without looking at what was queued meanwhile: those
    # jobs were never reported ended unless another write came
    journal = SQLiteJournal(str(tmp_path))
    first_part = journal.MAX_QUEUED + 1
    ids = journal.create_many("example.square", [{"x": i} for i in range(first_part + 50)], 0.0)
    reported = threading.Semaphore(0)

    def end(job_id: int) -> None:
        journal.finish_later(lambda error: reported.release(), job_id, "success", {}, None, 1, 2)

    commit = journal._commit
    arrived = []

    def commit_while_others_write(batch, *args):  # others end jobs during the big commit
        if len(batch) == first_part and not arrived:
            arrived.append(True)
            others = threading.Thread(target=lambda: [end(i) for i in ids[first_part:]])
            others.start()
            others.join(30)  # they find the lock taken: they leave their writes
        return commit(batch, *args)

    monkeypatch.setattr(journal, "_commit", commit_while_others_write)
    journal._lock.acquire()  # a long commit of someone else's: the writes queue up
    first = threading.Thread(target=lambda: [end(i) for i in ids[:first_part]])
    first.start()  # its last write finds the queue full: it waits for the lock
    deadline = time.monotonic() + 30
    while not journal._waiters:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    journal._lock.release()
    first.join(30)
    assert arrived
    for _ in ids:  # every job reported, though no write came after the last ones
        assert reported.acquire(timeout=30), "a queued outcome was never committed"
    journal.close()


def test_group_commit_batches_concurrent_writes(tmp_path):
    journal = SQLiteJournal(str(tmp_path))
    threads = 8
    per_thread = 200
    barrier = threading.Barrier(threads)
    ids: list[list[int]] = [[] for _ in range(threads)]

    def writer(index: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            job_id = journal.create("example.noop", {"i": i}, 0.0)
            journal.finish(job_id, "success", {"i": i}, None, 0.0, 1.0)
            ids[index].append(job_id)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    every = sorted(i for chunk in ids for i in chunk)
    assert every == list(range(1, threads * per_thread + 1))  # each its own id
    assert all(journal.get(i).state == "success" for i in every)
    # fewer transactions than writes: concurrent writers shared commits
    assert journal.commits < 2 * threads * per_thread
    journal.close()


def test_unfinished_jobs_are_found_through_the_state_index(tmp_path):
    """Start-up looks the unfinished jobs up in the index: no scan of a million rows."""
    journal = SQLiteJournal(str(tmp_path))
    journal.close()
    db = sqlite3.connect(str(tmp_path / SQLiteJournal.FILENAME))
    try:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id, host, pid, submitted FROM jobs WHERE state IN (?, ?, ?)",
            ("uninitialized", "starting", "running"),
        ).fetchall()
    finally:
        db.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "SEARCH" in details and "jobs_state" in details, details
