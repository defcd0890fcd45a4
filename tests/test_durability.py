"""No job is lost when the work directory is deleted, or the journal replaced, under a
running server or engine."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time

import pytest

import dahu.engine
from dahu.app.localserver import LocalServer
from dahu.errors import JournalError
from dahu.job import Job
from dahu.journal import SQLiteJournal

from .conftest import finish

DEVICE = "test/dahu/durable"


def run(plugin: str, data: dict) -> Job:
    job = Job(plugin, data)
    job.start()
    job.join()
    return job


def recorded(path) -> dict[int, str]:
    """The state of every job in the journal file ``path``, read by another connection."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT id, state FROM jobs"))
    finally:
        db.close()


def squares(proxy, count: int = 3) -> list[int]:
    """Start ``count`` ``example.square`` jobs on the device; their ids once they all
    succeeded."""
    ids = [proxy.startJob(["example.square", json.dumps({"x": x})]) for x in range(count)]
    assert [finish(proxy, job_id) for job_id in ids] == ["success"] * count
    return ids


def test_a_work_directory_deleted_under_a_running_server_loses_no_job(tmp_path):
    # bug: the server went on writing into the deleted journal file, nothing said so, its
    # jobs were gone at the next start and their ids were given again (from 1)
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device=DEVICE)
    proxy = local.start(timeout=60)
    try:
        ids = squares(proxy)
        for job_id in ids:
            proxy.cleanJob(job_id)  # its files written: none comes while it is removed
        shutil.rmtree(workdir)
        ids += [proxy.startJob(["example.square", json.dumps({"x": x})]) for x in range(3, 6)]
        assert [finish(proxy, job_id) for job_id in ids[3:]] == ["success"] * 3
    finally:
        assert local.stop() == 0
    assert recorded(workdir / SQLiteJournal.FILENAME) == dict.fromkeys(ids, "success")
    assert "was removed (its work directory deleted?)" in (tmp_path / "server.log").read_text()
    again = LocalServer(str(workdir), str(tmp_path / "server2.log"), device=DEVICE)
    proxy = again.start(timeout=60)
    try:
        for x, job_id in enumerate(ids):
            assert json.loads(proxy.getJobOutput(job_id))["result"] == x * x
        assert proxy.startJob(["example.noop", "{}"]) > max(ids)  # no id given twice
    finally:
        again.stop()


def test_a_running_engine_puts_its_deleted_journal_back(tmp_path):
    workdir = tmp_path / "work"
    path = workdir / SQLiteJournal.FILENAME
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=1)
    try:
        first = run("example.square", {"x": 2})  # a job started: the engine's sweep runs
        shutil.rmtree(workdir)
        second = run("example.square", {"x": 3})
        deadline = time.monotonic() + 30
        while not path.exists():  # put back while the engine runs, for readers
            assert time.monotonic() < deadline, "the journal was not written again"
            time.sleep(0.05)
        assert recorded(path) == {first.id: "success", second.id: "success"}
        assert run("example.square", {"x": 4}).status == "success"
        assert not engine.journal_fault
    finally:
        engine.close()


def test_a_journal_replaced_under_a_running_engine_puts_it_at_fault(tmp_path):
    workdir = tmp_path / "work"
    path = workdir / SQLiteJournal.FILENAME
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=1)
    try:
        run("example.square", {"x": 2})
        path.unlink()
        other = SQLiteJournal(str(workdir))  # somebody else's journal now at that path
        other.close()
        deadline = time.monotonic() + 30
        while not engine.journal_fault:
            assert time.monotonic() < deadline, "the engine did not notice"
            time.sleep(0.05)
        assert "was replaced by another file" in engine.journal_fault
        assert not engine.retry_journal()  # still the wrong file: still at fault
        assert recorded(path) == {}  # the other file is left as it is
        # bug: new jobs were still taken, recorded only in the file nobody could open
        with pytest.raises(JournalError, match=r"replaced by another file: no new job$"):
            Job("example.square", {"x": 3})
        assert recorded(path) == {}
    finally:
        engine.close()


def test_a_journal_removed_under_two_writers_is_written_again_once_for_both(tmp_path):
    # bug: two servers on one work directory, its journal file removed: the first to see
    # it wrote it again; the other then found "another file" there and went to FAULT for
    # good, refusing every new job (what it recorded from then on: lost at its stop)
    workdir = tmp_path / "work"
    path = workdir / SQLiteJournal.FILENAME
    first, second = SQLiteJournal(str(workdir)), SQLiteJournal(str(workdir))
    try:
        ids = [first.create("example.square", {"x": 1}, time.time())]
        ids.append(second.create("example.square", {"x": 2}, time.time()))
        path.unlink()
        first.check_file()  # (each one twice a second): written again
        assert sorted(recorded(path)) == sorted(ids)
        second.check_file()  # the same journal, with all it recorded: it writes that one
        ids.append(second.create("example.square", {"x": 3}, time.time()))
        ids.append(first.create("example.square", {"x": 4}, time.time()))
        assert sorted(recorded(path)) == sorted(ids)
    finally:
        first.close()
        second.close()
    assert sorted(recorded(path)) == sorted(ids)


def test_minus_one_is_the_last_job_after_a_server_was_killed(tmp_path):
    # bug: after a kill -9, -1 stood for the last id the killed server had reserved
    # (64), not given: getJobState(-1) failed with "no job -1: job ids run from 1 to 64"
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device=DEVICE)
    proxy = local.start(timeout=60)
    try:
        ids = squares(proxy)
        local.process.kill()  # SIGKILL: the ids it reserved are not given back
        local.process.wait(30)
    finally:
        local.stop()
    again = LocalServer(str(workdir), str(tmp_path / "server2.log"), device=DEVICE)
    proxy = again.start(timeout=60)
    try:
        assert json.loads(proxy.getJobInfo(-1))["id"] == ids[-1]
        assert proxy.getJobState(-1) == "success"
        assert json.loads(proxy.getJobOutput(-2))["result"] == 1
        new = proxy.startJob(["example.noop", "{}"])
        assert new > ids[-1]
        assert json.loads(proxy.getJobInfo(-1))["id"] == new
    finally:
        again.stop()


def test_minus_one_is_the_last_job_while_another_process_writes_the_journal(tmp_path):
    # bug: -1 stood for the last id the other process had reserved, not given
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    other = SQLiteJournal(str(tmp_path))  # as a second server on the same directory
    try:
        ours = run("example.square", {"x": 5})
        theirs = other.create("example.noop", {}, time.time())
        assert theirs > ours.id  # from a block reserved after this process's
        assert Job.getJobFromID(-1).id == theirs
        assert Job.getStatusFromID(-1) == "uninitialized"
    finally:
        other.close()
        engine.close()


def test_a_journal_that_cannot_open_on_a_full_disk_says_the_disk_is_full(tmp_path, monkeypatch):
    # bug: on a full disk the server refused to start with SQLite's bare "disk I/O
    # error" (its shared-memory file cannot grow), which reads as a broken disk
    import dahu.journal.sqlitefile as module

    SQLiteJournal(str(tmp_path)).close()
    (tmp_path / (SQLiteJournal.FILENAME + "-shm")).mkdir()  # SQLite cannot open it
    with pytest.raises(JournalError) as refused:
        SQLiteJournal(str(tmp_path))
    assert "full" not in str(refused.value)  # room on the disk: SQLite's reason only
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: usage._replace(free=0))
    with pytest.raises(JournalError, match=r"\(its file system is full: 0 bytes free\)$"):
        SQLiteJournal(str(tmp_path))


def test_a_journal_that_opens_but_cannot_record_on_a_full_disk_says_the_disk_is_full(
    tmp_path, monkeypatch
):
    # bug: a server started on a disk with room for the journal's shared-memory file but
    # not for closing a dead server's jobs stopped with "cannot write the journal ...:
    # database or disk is full", without the reason it gives when it cannot open
    import dahu.journal.sqlitefile as module

    journal = SQLiteJournal(str(tmp_path))
    journal.create_many("example.square", [{"x": i} for i in range(300)], 1.0)
    journal.close()
    gone = subprocess.Popen(["true"])
    gone.wait()
    db = sqlite3.connect(str(tmp_path / SQLiteJournal.FILENAME))
    with db:  # queued by a server that was killed
        db.execute("UPDATE jobs SET pid = ?", (gone.pid,))
    db.close()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    journal = SQLiteJournal(str(tmp_path))
    try:  # the disk fills up: the journal cannot grow
        pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
        journal._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(JournalError) as refused:
            journal.mark_interrupted()
        assert str(refused.value) == (
            f"cannot write the journal {tmp_path / SQLiteJournal.FILENAME}: database or disk "
            "is full (its file system is full: 4096 bytes free)"
        )
    finally:
        journal.close()


def test_a_journal_that_cannot_open_on_a_read_only_file_system_says_so(tmp_path, monkeypatch):
    # bug: on a read-only file system the server refused to start with SQLite's bare
    # "unable to open database file", which names no cause
    import os

    SQLiteJournal(str(tmp_path)).close()
    (tmp_path / (SQLiteJournal.FILENAME + "-shm")).mkdir()  # SQLite cannot open it
    real = os.statvfs(tmp_path)
    flags = real.f_flag | os.ST_RDONLY
    fake = os.statvfs_result((*real[:8], flags, *real[9:]))  # f_flag is the 9th field
    monkeypatch.setattr(os, "statvfs", lambda path: fake)
    with pytest.raises(JournalError, match=r"\(its file system is read-only\)$"):
        SQLiteJournal(str(tmp_path))


def test_a_work_directory_that_is_a_file_is_named_so(tmp_path):
    # bug: a workdir property naming a file stopped the server with only "[Errno 17] File
    # exists", which reads as if the journal were there already
    (tmp_path / "scan.h5").write_text("data")
    with pytest.raises(JournalError, match=r"\(it is a file, not a directory\)$"):
        SQLiteJournal(str(tmp_path / "scan.h5"))
    assert (tmp_path / "scan.h5").read_text() == "data"


def test_a_journal_made_again_where_jobs_ran_gives_no_id_twice(tmp_path):
    # bug: a work directory whose journal was deleted (or emptied) gave ids from 1 again,
    # overwriting the .inp/.out files of the jobs that had run there
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        old = [run("example.square", {"x": x}) for x in (2, 3)]
        for job in old:
            job.clean()  # their files written
    finally:
        engine.close()
    for path in tmp_path.glob(SQLiteJournal.FILENAME + "*"):
        path.unlink()
    engine = dahu.engine.configure(workdir=str(tmp_path), max_workers=1)
    try:
        new = run("example.square", {"x": 7})
        new.clean()
        assert new.id == old[-1].id + 1
    finally:
        engine.close()
    first = tmp_path / "0000" / f"{old[0].id:05d}_example.square.out"
    assert json.loads(first.read_text())["result"] == 4  # still the old job's


def test_a_second_server_on_the_same_work_directory_is_warned_of(tmp_path):
    # bug: a second server on one work directory by mistake was accepted silently: no
    # job was lost, but each server's counters, events and statistics showed half
    workdir = tmp_path / "work"
    first = LocalServer(str(workdir), str(tmp_path / "first.log"), device=DEVICE)
    second = LocalServer(str(workdir), str(tmp_path / "second.log"), device=DEVICE + "2")
    third = LocalServer(str(workdir), str(tmp_path / "third.log"), device=DEVICE)
    first.start(timeout=60)
    try:
        proxy = second.start(timeout=60)
        try:
            assert squares(proxy, 1)  # it serves all the same
            first.stop()
            # bug: the lock went with the first server and no one took it: a third one
            # started beside the second was not warned of it
            lock, deadline = workdir / "dahu_server.lock", time.monotonic() + 30
            while lock.read_text().split()[:2] != ["pid", str(second.process.pid)]:
                assert time.monotonic() < deadline, "the second server never took the lock"
                time.sleep(0.05)
            third.start(timeout=60)
            third.stop()
        finally:
            second.stop()
    finally:
        first.stop()
    warning = f"another dahu_server (pid {first.process.pid} on "
    assert warning in (tmp_path / "second.log").read_text()
    assert "another dahu_server" not in (tmp_path / "first.log").read_text()
    warning = f"another dahu_server (pid {second.process.pid} on "
    assert warning in (tmp_path / "third.log").read_text()


def test_a_journal_that_refuses_new_jobs_puts_the_server_at_fault(tmp_path):
    # bug: on a full disk (here: a file size limit) every startJob/startJobs was refused
    # while the device said ON, its Status and its log silent: only the outcomes of
    # running jobs set FAULT, and an idle server has none
    import resource

    import tango

    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device=DEVICE)
    proxy = local.start(timeout=60)
    try:
        squares(proxy, 1)
        largest = max(path.stat().st_size for path in workdir.glob("journal.sqlite*"))
        unlimited = resource.RLIM_INFINITY
        limit = (largest + 65536, unlimited)
        resource.prlimit(local.process.pid, resource.RLIMIT_FSIZE, limit)
        big = json.dumps([{"x": x, "pad": "p" * 10000} for x in range(50)])
        with pytest.raises(tango.DevFailed, match="cannot write the journal"):
            proxy.startJobs(["example.square", big])
        assert proxy.state() == tango.DevState.FAULT
        assert "FAULT: the journal cannot be written: cannot write the journal" in proxy.status()
        resource.prlimit(local.process.pid, resource.RLIMIT_FSIZE, (unlimited, unlimited))
        proxy.Init()  # tries the journal again at once
        assert proxy.state() == tango.DevState.ON
        squares(proxy, 1)
    finally:
        assert local.stop() == 0
    assert "cannot write the journal" in (tmp_path / "server.log").read_text()


def test_a_wal_file_removed_under_a_running_server_loses_no_job_at_a_kill(tmp_path):
    # bug: with journal.sqlite-wal removed (a clean-up of files that look temporary)
    # the server went on committing into the removed file: dahu-jobs found no jobs
    # table, and a kill -9 lost every job since the last checkpoint (here: all of them)
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device=DEVICE)
    proxy = local.start(timeout=60)
    try:
        ids = squares(proxy)
        (workdir / (SQLiteJournal.FILENAME + "-wal")).unlink()
        ids += squares(proxy)
        deadline = time.monotonic() + 10
        while readable(workdir) != dict.fromkeys(ids, "success"):  # by dahu-jobs, the web
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        ids += squares(proxy)  # committed to the new -wal
        local.process.kill()
        local.process.wait(30)
    finally:
        local.stop()
    assert readable(workdir) == dict.fromkeys(ids, "success")


def readable(workdir) -> dict[int, str]:
    """What another process reads of the journal of ``workdir`` now ({} if nothing)."""
    try:
        return recorded(workdir / SQLiteJournal.FILENAME)
    except sqlite3.Error:
        return {}
