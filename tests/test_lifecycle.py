"""The life cycle of jobs through the engine: every transition ends, whatever the journal
or the plugin does (the three bugs of issue 10, and plugins raising BaseException)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
import types

import pytest

import dahu.engine
from dahu.errors import DahuError
from dahu.factory import register
from dahu.job import Job
from dahu.journal import JournalError, MemoryJournal, SQLiteJournal
from dahu.plugin import Plugin

from .conftest import BASE_EXCEPTIONS, TROUBLE_PLUGINS, child_env


@register
class Opaque(Plugin):
    """Leaves an output that JSON cannot encode."""

    def process(self):
        self.output["handle"] = object()


@register
class Mixed(Plugin):
    """Leaves an output with a key and a value JSON refuses, among good ones."""

    def process(self):
        self.output.update({(1, 2): "t", "handle": object(), "result": [1, 2]})


@register
class Huge(Plugin):
    """Leaves an int of 5,000 digits: neither JSON nor repr() can write it."""

    def process(self):
        self.output["big"] = 10**5000


@register
class Deep(Plugin):
    """Leaves lists nested 100,000 deep: JSON, repr() and the files all recurse too far."""

    def process(self):
        deep: list = []
        for _ in range(100_000):
            deep = [deep]
        self.output["deep"] = deep


DROPPING, LET_GO = threading.Event(), threading.Event()


@register
class SlowToDrop(Plugin):
    """Its finaliser takes its time (closing a detector, releasing a GPU)."""

    def __del__(self):
        DROPPING.set()
        LET_GO.wait(10)


FINALISED: list[int] = []


@register
class Finalised(Plugin):
    """Says when it is finalised."""

    def __del__(self):
        FINALISED.append(self.input.get("n"))


class FaultyJournal(MemoryJournal):
    """A journal whose disk is full: outcomes cannot be recorded."""

    def finish(self, *args, **kwargs):
        raise JournalError("cannot write the journal: disk full")


def run(name, data=None, timeout=10.0):
    job = Job(name, data or {})
    job.start()
    job.join(timeout)
    return job


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_unserialisable_output_ends_the_job_with_every_journal(tmp_path, kind):
    # bug: the memory journal raised TypeError, the job stayed running, join never returned
    journal = MemoryJournal() if kind == "memory" else SQLiteJournal(str(tmp_path / "j"))
    engine = dahu.engine.configure(workdir=str(tmp_path), journal=journal, max_workers=2)
    try:
        job = run("tests.test_lifecycle.opaque")
        assert job.status == "success"
        record = engine.journal.get(job.id)
        assert record.state == "success"
        assert record.output["handle"].startswith("<object object at")
        assert "output not JSON-serialisable" in record.error
        # bug: under thread the job read error "" until clean(), then the journal's note
        assert job.error == Job.getErrorFromId(job.id) == record.error
        job.clean()
        assert job.error == record.error
    finally:
        engine.close()


def test_what_json_refuses_is_text_in_the_files_and_the_getters(tmp_path):
    # bug: Job.getDataOutputFromId(id, as_JSON=True) raised TypeError, and no .out file
    # was written (the original dropped the tuple key and raised for the object)
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        job = run("tests.test_lifecycle.mixed")
        assert job.status == "success"
        text = json.loads(Job.getDataOutputFromId(job.id, as_JSON=True))
        assert text["(1, 2)"] == "t" and text["result"] == [1, 2]
        assert text["handle"].startswith("<object object at")
        job.clean()
        out = tmp_path / "0000" / f"{job.id:05d}_tests.test_lifecycle.mixed.out"
        assert json.loads(out.read_text())["(1, 2)"] == "t"
        assert json.loads(engine.output_text(job.id))["(1, 2)"] == "t"  # getJobOutput's
    finally:
        engine.close()


@pytest.mark.parametrize(
    "plugin, reason, key, text",
    [
        ("huge", "Exceeds the limit", "big", "repr() failed"),
        ("deep", "recursion", "unserializable_output", "nested too deep"),
    ],
)
def test_an_output_no_text_can_hold_fails_nothing_but_its_record(
    tmp_path, plugin, reason, key, text
):
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=2)
    try:
        job = run(f"tests.test_lifecycle.{plugin}")
        assert job.status == "success"
        record = engine.journal.get(job.id)
        assert record.state == "success"
        assert text in record.output[key]  # the value alone when it can be
        assert reason in record.error
        assert not engine.journal_fault  # the engine still takes jobs
        job.clean()
        # bug: an output nested deeper than the recursion limit got no .out file
        out = tmp_path / "0000" / f"{job.id:05d}_tests.test_lifecycle.{plugin}.out"
        assert text in json.loads(out.read_text())[key]
        assert run("example.square", {"x": 3}).output_data["result"] == 9
    finally:
        engine.close()


def test_synchronize_all_returns_after_a_journal_fault(tmp_path):
    # bug: jobs ended after a journal fault stay in memory (nothing is lost), and
    # synchronize_all then waited for them again and again
    engine = dahu.engine.configure(workdir=str(tmp_path), journal=FaultyJournal(), max_workers=2)
    try:
        jobs = [Job("example.square", {"x": i}) for i in range(3)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(10)
        assert [j.status for j in jobs] == ["success"] * 3
        assert engine.journal_fault and "disk full" in engine.journal_fault
        waiter = threading.Thread(target=Job.synchronize_all, daemon=True)
        waiter.start()
        waiter.join(10)
        assert not waiter.is_alive()
        # the outcome was not recorded: the job in memory still answers
        assert Job.getStatusFromID(jobs[1].id) == "success"
        assert Job.getDataOutputFromID(jobs[1].id)["result"] == 1
    finally:
        engine.close()


def test_a_journal_that_raises_anything_does_not_leave_a_job_running(tmp_path):
    class Broken(MemoryJournal):
        def finish(self, *args, **kwargs):
            raise RuntimeError("a bug in a journal backend")

    engine = dahu.engine.configure(workdir=str(tmp_path), journal=Broken(), max_workers=1)
    try:
        job = run("example.square", {"x": 3})
        assert job.status == "success"
        assert "a bug in a journal backend" in engine.journal_fault
        assert run("example.square", {"x": 2}).output_data["result"] == 4
    finally:
        engine.close()


@pytest.mark.parametrize("what, where, line", BASE_EXCEPTIONS)
def test_base_exceptions_from_plugins_fail_the_job(engine, plugin_dir, what, where, line):
    (plugin_dir / "trouble.py").write_text(TROUBLE_PLUGINS)
    slots = engine.executor.max_workers
    jobs = [Job("trouble.raise", {"what": what, "where": where}) for _ in range(slots + 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(10)
    assert {j.status for j in jobs} == {"failure"}
    assert jobs[0].error.splitlines()[0] == line
    assert engine.journal.get(jobs[0].id).state == "failure"
    assert run("example.square", {"x": 7}).output_data["result"] == 49


def test_a_plugin_that_cannot_be_instantiated_fails_its_job(engine, plugin_dir):
    (plugin_dir / "exits.py").write_text(
        "from dahu.factory import register\nfrom dahu.plugin import Plugin\n\n"
        "@register\nclass Now(Plugin):\n    def __init__(self):\n        raise SystemExit(5)\n"
    )
    job = run("exits.now")
    assert job.status == "failure"
    assert job.error.splitlines()[0] == "SystemExit: 5"


def test_a_plugin_module_or_init_that_raises_shows_where_in_the_error(engine, plugin_dir):
    # bug: the error was the one-line reason only (the original gave the traceback):
    # nothing said which line of the plugin's file raised
    (plugin_dir / "typo_at_import.py").write_text("x = 1\ny = undefined_name + x\n")
    (plugin_dir / "init_needs_detector.py").write_text(
        "from dahu.factory import register\nfrom dahu.plugin import Plugin\n\n"
        "@register\nclass Cam(Plugin):\n    def __init__(self):\n        Plugin.__init__(self)\n"
        "        raise RuntimeError('no detector here')\n"
    )
    imported = run("typo_at_import.f")
    made = run("init_needs_detector.cam")
    assert imported.status == made.status == "failure"
    assert imported.error.splitlines()[0] == (
        "cannot load plugin 'typo_at_import.f': NameError: name 'undefined_name' is not defined"
    )
    assert f'File "{plugin_dir / "typo_at_import.py"}", line 2' in imported.error
    assert made.error.splitlines()[0] == "RuntimeError: no detector here"
    assert f'File "{plugin_dir / "init_needs_detector.py"}", line 8, in __init__' in made.error
    assert made.output_data["error"] == made.error.splitlines()


def test_abort_of_a_queued_job_ends_it_without_running_it(engine):
    engine.executor.serialize = True
    first = Job("example.sleep", {"t": 0.3})
    queued = Job("example.square", {"x": 2})
    first.start()
    queued.start()
    assert queued.abort("not needed")
    queued.join(5)
    assert queued.status == "aborted"
    assert queued.error == "not needed"
    first.join(5)
    assert first.status == "success"
    assert not queued.abort()  # ended: nothing to abort


def test_shutdown_aborts_the_queued_jobs_without_running_them(tmp_path):
    # bug: the running jobs were aborted first, in id order; each freed slot started a
    # queued job, so under load queued jobs ran (and succeeded) during the shutdown
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=2)
    running = [Job("example.sleep", {"t": 600}) for _ in range(2)]
    queued = [Job("example.square", {"x": i}) for i in range(300)]
    for job in running + queued:
        job.start()
    deadline = time.monotonic() + 30
    while any(job.status != "running" for job in running):
        assert time.monotonic() < deadline, "the sleeping jobs never ran"
        time.sleep(0.01)
    assert engine.shutdown(timeout=30)
    assert {job.status for job in running} == {"aborted"}
    ran = [job.id for job in queued if job.status != "aborted"]
    assert not ran, f"{len(ran)} queued job(s) ran during the shutdown"
    assert {job.error for job in queued} == {"the server is shutting down"}


def test_a_halted_engine_begins_no_job(tmp_path):
    # a server stopping while a startJobs call still submits: the jobs a slot took after
    # the stop began ran to success (130,000 of 200,000 trivial jobs)
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=2)
    engine.cycle.halted = "the server is shutting down"
    jobs = [Job("example.square", {"x": i}) for i in range(20)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
    assert {(job.status, job.error) for job in jobs} == {("aborted", "the server is shutting down")}
    assert all(job.output_data.get("result") is None for job in jobs)  # never ran
    engine.cycle.halted = None
    again = Job("example.square", {"x": 3})
    again.start()
    again.join(30)
    assert again.status == "success"


def test_a_job_cannot_be_started_twice(engine):
    job = run("example.square", {"x": 1})
    with pytest.raises(RuntimeError, match="already started"):
        job.start()


def test_a_job_s_files_are_written_once_when_clean_comes_from_two_threads(tmp_path):
    # cleanJob may come while the files thread writes the same job's files: a second
    # write (truncate, then write) would show a reader an empty file meanwhile
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        job = run("example.square", {"x": 3})
        assert job.status == "success"
        writing, release = threading.Event(), threading.Event()
        calls = []
        write_files = engine.write_files

        def slow_write(*args):
            calls.append(threading.current_thread().name)
            writing.set()
            release.wait(10)
            return write_files(*args)

        engine.write_files = slow_write
        entered = threading.Event()

        def clean_again():
            entered.set()
            job.clean(wait=False)

        first = threading.Thread(target=job.clean, kwargs={"wait": False}, name="first")
        second = threading.Thread(target=clean_again, name="second")
        first.start()
        assert writing.wait(10)
        second.start()
        assert entered.wait(10)
        second.join(0.2)
        assert second.is_alive()  # waits for the first writer instead of writing again
        release.set()
        first.join(10)
        second.join(10)
        assert calls == ["first"]
        with open(job.data_on_disk + ".out", encoding="ascii") as out:
            assert '"result": 9' in out.read()
    finally:
        engine.close()


def test_a_plugin_s_slow_finaliser_delays_no_other_job_s_files_or_event(tmp_path):
    # bug: the engine's files thread dropped each ended job's plugin, then wrote the
    # next job's files and pushed its event (the device's announce): a plugin whose
    # __del__ took 2 s delayed every later job's files and event by 2 s
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        slow = run("tests.test_lifecycle.slowtodrop")
        quick = run("example.square", {"x": 2})  # the pool's one thread is done with slow
        announced = threading.Event()
        engine.clean_later(slow)
        engine.clean_later(quick, announced.set)
        assert DROPPING.wait(10)
        assert announced.wait(5), "the next job's event waited for a plugin's __del__"
        with open(quick.data_on_disk + ".out", encoding="ascii") as out:
            assert '"result": 4' in out.read()
    finally:
        LET_GO.set()
        engine.close()


def test_clean_called_by_a_script_finalises_the_plugin_before_it_returns(tmp_path):
    # as in the original: a script that cleans a job may rely on the plugin's __del__
    # (a file it closes) having run; only the server's files thread hands it over
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        job = run("tests.test_lifecycle.finalised", {"n": 7})
        run("example.square", {"x": 2})  # the pool's one thread is done with the first
        job.clean()
        assert FINALISED == [7]
    finally:
        engine.close()


def test_a_lone_surrogate_in_an_input_key_fails_its_job_and_nothing_else(tmp_path):
    # bug: the job's error ("unexpected keyword argument '\\udfff'") could not be stored:
    # the journal went to FAULT and closing the engine hung
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        job = run("example.square", '{"\\udfff": 1}')
        assert job.status == "failure"
        assert "unexpected keyword argument '\\udfff'" in job.error
        assert engine.journal_fault is None
        assert on_disk(engine, job.id).state == "failure"
        assert run("example.square", {"x": 3}).output_data["result"] == 9
    finally:
        closing = threading.Thread(target=engine.close, daemon=True)
        closing.start()
        closing.join(20)
        assert not closing.is_alive(), "closing the engine hangs"


def full_disk(journal: SQLiteJournal, full: bool) -> None:
    """Make the SQLite journal refuse every write (as a full disk does) or take them again."""
    with journal._lock:
        journal._db.execute(f"PRAGMA query_only = {'ON' if full else 'OFF'}")


def on_disk(engine, job_id):
    """A job's state and output as a new connection to the journal file reads them."""
    path = f"file:{engine.workdir}/journal.sqlite?mode=ro"
    with contextlib.closing(sqlite3.connect(path, uri=True)) as db:
        state, output = db.execute(
            "SELECT state, output FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return types.SimpleNamespace(state=state, output=json.loads(output) if output else None)


def test_outcomes_a_full_journal_refused_are_recorded_when_it_has_room_again(tmp_path):
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=2)
    try:
        jobs = [Job("example.square", {"x": i}) for i in range(3)]
        ids = [job.id for job in jobs]  # recorded: an id is given once its record is in
        full_disk(engine.journal, True)
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(10)
        assert [job.status for job in jobs] == ["success"] * 3
        assert engine.journal_fault
        assert on_disk(engine, jobs[2].id).state == "uninitialized"
        del job
        jobs[1].clean()  # its files are written; its data stay: the journal has none
        del jobs
        assert Job.getDataOutputFromID(ids[2])["result"] == 4  # still in memory
        assert not engine.retry_journal()  # still full: nothing changes
        assert engine.journal_fault and on_disk(engine, ids[0]).state == "uninitialized"
        full_disk(engine.journal, False)
        assert engine.retry_journal()
        assert engine.journal_fault is None
        for i, job_id in enumerate(ids):
            record = on_disk(engine, job_id)
            assert (record.state, record.output["result"]) == ("success", i * i)
            out = tmp_path / "0000" / f"{job_id:05d}_example.square.out"
            assert json.loads(out.read_text())["result"] == i * i
        assert engine.table.unrecorded() == []
    finally:
        engine.close()


def test_the_engine_retries_a_full_journal_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(dahu.engine.core, "JOURNAL_RETRY", 0.05)
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        job = Job("example.square", {"x": 7})
        assert job.id  # recorded
        full_disk(engine.journal, True)
        job.start()
        job.join(10)
        assert job.status == "success" and engine.journal_fault
        full_disk(engine.journal, False)
        deadline = time.monotonic() + 10
        while engine.journal_fault is not None:
            assert time.monotonic() < deadline, "the fault was never cleared"
            time.sleep(0.01)
        assert on_disk(engine, job.id).output["result"] == 49
    finally:
        engine.close()


def test_shutdown_says_when_outcomes_are_lost(tmp_path):
    # a process whose journal stays full to the end: it says so and exits with an error
    script = f"""
import sys
import dahu.engine
from dahu.job import Job
engine = dahu.engine.configure(workdir={str(tmp_path)!r}, max_workers=1)
job = Job("example.square", {{"x": 7}})
print("id", job.id)
with engine.journal._lock:
    engine.journal._db.execute("PRAGMA query_only = ON")
job.start()
job.join(10)
print("told", job.status)
sys.exit(0 if engine.shutdown(timeout=5) else 3)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "told success" in result.stdout
    assert "1 job outcome(s) the journal refused are lost" in result.stderr
    job_id = int(result.stdout.split()[1])
    again = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:  # what the next start finds: the job was interrupted, not lost without a trace
        record = again.journal.get(job_id)
        assert (record.state, record.error) == ("failure", "interrupted")
    finally:
        again.close()


def test_a_file_the_disk_cannot_hold_is_not_left_truncated(tmp_path):
    # a child with a 64 kB file size limit: writing a bigger .out file fails part way
    script = f"""
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
from dahu.journal import write_job_files
try:
    write_job_files({str(tmp_path)!r}, 5, "big.one", {{"x": 1}}, {{"blob": "x" * 200000}})
except OSError as err:
    print("refused:", err)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert "refused: [Errno 27] File too large" in result.stdout, result.stderr
    files = sorted(p.name for p in (tmp_path / "0000").iterdir())
    assert files == ["00005_big.one.inp"]  # the .out is not there half written


def test_a_job_started_while_the_engine_shuts_down_is_refused_and_recorded(tmp_path, caplog):
    # bug: Engine.shutdown() aborted only the jobs live when it began; one another thread
    # started meanwhile ran on, its outcome hit "journal is closed" and the journal kept
    # it running (under the process executor: "worker process died: exit code 0")
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    running = Job("example.sleep", {"t": 600})
    running.start()
    late = Job("example.square", {"x": 3})
    refused: list[BaseException] = []
    live = engine.live

    def live_then_start():  # another thread starts a job as the stop takes its list
        runs = live()
        try:
            late.start()
        except Exception as err:
            refused.append(err)
        return runs

    engine.live = live_then_start
    assert engine.shutdown(timeout=30)
    assert late.status == "aborted" and late.error == "the server is shutting down"
    assert len(refused) == 1 and "not started" in str(refused[0])
    assert late.output_data.get("result") is None  # never ran
    journal = SQLiteJournal(str(tmp_path))
    try:
        assert journal.get(late.id).state == "aborted"
        assert journal.get(running.id).state == "aborted"
    finally:
        journal.close()
    assert "journal" not in caplog.text, caplog.text


@pytest.mark.parametrize("stop", ["shutdown", "close"])
def test_a_job_made_after_the_engine_stopped_is_refused_in_one_clear_line(tmp_path, caplog, stop):
    # bug: it read "cannot write the journal .../journal.sqlite: Cannot operate on a
    # closed database." (a disk fault, one would think), logged as an error
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    getattr(engine, stop)()
    with pytest.raises(DahuError, match="^the engine is shut down: it takes no new job"):
        Job("example.square", {"x": 4})
    with pytest.raises(DahuError, match="^the engine is shut down"):
        Job.create_many("example.square", [{"x": 1}])
    assert "journal" not in caplog.text, caplog.text


@register
class Parent(Plugin):
    """Starts a child job (``example.square``) halfway and returns its result."""

    def process(self):
        time.sleep(self.input.get("before", 0.2))
        child = Job("example.square", {"x": 7})
        child.start()
        child.join(30)
        self.output["child"] = child.output_data.get("result")


def test_a_shutdown_that_lets_jobs_finish_lets_them_start_their_children(tmp_path):
    # with abort=False the jobs run to their end: one that starts a job of its own
    # meanwhile must not have it refused (it failed: "not started: ... shutting down")
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=2)
    parent = Job("tests.test_lifecycle.parent", {"before": 0.3})
    parent.start()
    assert engine.shutdown(abort=False, timeout=30)
    assert (parent.status, parent.output_data.get("child")) == ("success", 49), parent.error


@pytest.mark.parametrize("timeout", [float("inf"), 1e10])
def test_a_shutdown_without_bound_waits_for_the_jobs(tmp_path, timeout):
    # bug: Engine.shutdown(abort=False, timeout=float("inf")) (a script waiting as long
    # as its jobs take) raised OverflowError while a job ran: the job ran on, the
    # journal stayed open
    engine = dahu.engine.configure(workdir=str(tmp_path))
    job = Job("example.sleep", {"t": 0.3})
    job.start()
    assert engine.shutdown(abort=False, timeout=timeout)
    assert job.status == "success"
    again = dahu.engine.configure(workdir=str(tmp_path))
    assert again.close(timeout=None) == 0  # None: no bound either


def test_a_job_starting_while_the_engine_closes_ends_aborted(tmp_path, monkeypatch):
    # bug: a job whose start raced Engine.close() ended "failure: cannot queue the job:
    # the executor is shut down", as if it had failed, instead of aborted by the stop
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    job = Job("example.square", {"x": 3})
    executor = engine.executor
    submit, shutdown = executor.submit, executor.shutdown
    in_submit, shut, started = threading.Event(), threading.Event(), threading.Event()

    def late_submit(run):  # the start has passed its checks; the close goes on now
        in_submit.set()
        assert shut.wait(30)
        return submit(run)

    def watched_shutdown(*args, **kwargs):
        shutdown(*args, **kwargs)
        shut.set()
        assert started.wait(30)  # the journal stays open until the start is over

    monkeypatch.setattr(executor, "submit", late_submit)
    monkeypatch.setattr(executor, "shutdown", watched_shutdown)
    closing = threading.Thread(target=lambda: in_submit.wait(30) and engine.close())
    closing.start()
    try:
        with pytest.raises(DahuError, match=f"job {job.id} not started: the engine is closing"):
            job.start()
    finally:
        started.set()
        closing.join(30)
    assert job.status == "aborted"
    reader = SQLiteJournal(str(tmp_path))
    try:
        record = reader.get(job.id)
        assert (record.state, record.error) == ("aborted", "the engine is closing")
    finally:
        reader.close()
