"""``dahu-jobs`` on journals a user may meet: the last job by ``-1``, damaged records."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

import dahu.engine
from dahu.errors import JournalError
from dahu.job import Job
from dahu.journal import SQLiteJournal, job_file_stem
from dahu.retention import prune
from dahu.web.monitor import Monitor

from .test_jobs_cli import one_line_error, run
from .test_reprocess import reprocess, summary_of


def _journal(workdir, count: int = 3) -> None:
    journal = SQLiteJournal(str(workdir))
    journal.create_many("example.noop", [{"n": n} for n in range(1, count + 1)], time.time())
    journal.close()


def test_show_minus_one_is_the_last_job(tmp_path):
    # bug: "show -1" was refused ("job ids start at 1") while the device takes -1
    _journal(tmp_path)
    proc = run("show", "-1", "--json", workdir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"id": 3' in proc.stdout
    assert '"id": 2' in run("show", "-2", "--json", workdir=tmp_path).stdout
    line = one_line_error(run("show", "-4", workdir=tmp_path), 1)
    assert line == f"dahu-jobs: no job -4 in the journal of {tmp_path}"
    line = one_line_error(run("show", "0", workdir=tmp_path), 2)
    assert "job ids start at 1 (-1: the last job)" in line
    # bug: on an empty journal, "no job -1 in the journal of DIR", as if it held others
    empty = tmp_path / "empty"
    _journal(empty, 0)
    for job_id in ("-1", "1"):
        line = one_line_error(run("show", job_id, workdir=empty), 1)
        assert line == f"dahu-jobs: no job {job_id}: the journal of {empty} is empty"


def test_show_of_a_pruned_job_says_it_was_pruned(tmp_path):
    # bug: "no job -2 in the journal of DIR", naming neither the job nor why it is gone,
    # while the device and the web page say "no job 3: it is no longer in the journal (pruned)"
    journal = SQLiteJournal(str(tmp_path))
    then = time.time() - 3600
    ids = journal.create_many("example.noop", [{"n": n} for n in range(4)], then)
    journal.finish_many([(i, "success", {}, None, then, then + 1) for i in ids])
    journal.close()
    assert prune(str(tmp_path), keep_last=1, min_age=0).removed == 3
    pruned = f"it is no longer in the journal of {tmp_path} (pruned) or was never given"
    assert (
        one_line_error(run("show", "-2", workdir=tmp_path), 1)
        == f"dahu-jobs: no job 3 (-2): {pruned}"
    )
    assert one_line_error(run("show", "1", workdir=tmp_path), 1) == f"dahu-jobs: no job 1: {pruned}"
    line = one_line_error(run("show", "5", workdir=tmp_path), 1)
    assert line == f"dahu-jobs: no job 5 in the journal of {tmp_path}"  # never given
    # dahu-reprocess says it too (it said "job 1 is not in the journal of DIR")
    proc = reprocess("-q", "-o", tmp_path / "out", "--workdir", tmp_path, "1", "2-3", "5")
    assert proc.stderr.splitlines() == [
        f"dahu-reprocess: 1: job 1 is not in the journal of {tmp_path} (pruned, or never given)",
        f"dahu-reprocess: 2-3: no job 2-3 is in the journal of {tmp_path} (pruned, or never given)",
        f"dahu-reprocess: 5: job 5 is not in the journal of {tmp_path}",
    ]


def _damage(workdir, sql: str) -> None:
    with sqlite3.connect(workdir / "journal.sqlite") as db:
        db.execute(sql)
    db.close()


def test_a_damaged_row_is_named_and_the_other_jobs_are_read(tmp_path):
    # bug: a hand-edited row (input that is not JSON, a runtime that is text) made
    # show/export a JSONDecodeError traceback and list/stats a TypeError, for every job
    _journal(tmp_path, 4)
    _damage(tmp_path, "UPDATE jobs SET input = '{bad' WHERE id = 2")
    _damage(tmp_path, "UPDATE jobs SET runtime = 'x', ended = 5 WHERE id = 3")
    bad_input = "dahu-jobs: job 2: its input in the journal is unreadable: not JSON ("
    bad_runtime = "dahu-jobs: job 3: its runtime in the journal is unreadable: not a number ('x')"
    proc = run("export", workdir=tmp_path)
    assert proc.returncode == 4, proc.stderr
    jobs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [job["id"] for job in jobs] == [1, 2, 3, 4]
    assert jobs[1]["input"] is None and jobs[2]["runtime"] is None
    assert jobs[3]["input"] == {"n": 4, "job_id": 4}
    first, second = proc.stderr.splitlines()
    assert first.startswith(bad_input) and second == bad_runtime
    proc = run("show", "2", workdir=tmp_path)
    assert proc.returncode == 4 and proc.stderr.startswith(bad_input)
    assert "input:\n(unreadable: not JSON (" in proc.stdout
    for command in (["list"], ["stats", "--json"]):
        proc = run(*command, workdir=tmp_path)
        assert (proc.returncode, proc.stderr) == (4, bad_runtime + "\n"), command
    assert json.loads(run("stats", "--json", workdir=tmp_path).stdout)["total"]["jobs"] == 4
    assert run("list", workdir=tmp_path).stdout.count("example.noop") == 4
    assert run("show", "1", workdir=tmp_path).returncode == 0  # the other jobs: as before
    # bug: a time no date is (1e300, infinity) was an OverflowError traceback for list/show
    _damage(tmp_path, "UPDATE jobs SET submitted = 1e300, started = 9e999 WHERE id = 4")
    proc = run("list", workdir=tmp_path)
    assert "1e+300 (not a date)" in proc.stdout and "Traceback" not in proc.stderr
    proc = run("show", "4", workdir=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "submitted  1e+300 (not a date)\nstarted    inf (not a date)\n" in proc.stdout
    # bug: a runtime no job has (1e300) was a number of hours 300 digits long
    _damage(tmp_path, "UPDATE jobs SET runtime = 1e300 WHERE id = 4")
    proc = run("show", "4", workdir=tmp_path)
    assert "\nruntime    1e+300 (not a duration)\n" in proc.stdout
    for command in ("list", "stats"):
        proc = run(command, workdir=tmp_path)
        assert "e+300 (not a duration)" in proc.stdout and " h " not in proc.stdout, command


def test_the_engine_names_a_damaged_field_in_one_line(engine, workdir):
    # the device's getJobInput / getJobOutput of such a job: a one-line reason
    first = Job("example.square", {"x": 3})
    second = Job("example.square", {"x": 4})
    for job in (first, second):
        job.start()
        job.join()
    assert engine.journal.flush(timeout=30)  # their outcomes are committed
    _damage(workdir, f"UPDATE jobs SET output = '{{\"result\": ' WHERE id = {first.id}")
    _damage(workdir, f"UPDATE jobs SET input = '[[[' WHERE id = {second.id}")
    with pytest.raises(JournalError) as info:
        engine.journal.output_text(first.id)
    assert str(info.value).startswith(f"job {first.id}: its output in the journal is unreadable")
    with pytest.raises(JournalError, match=f"^job {second.id}: its input in the journal is unr"):
        engine.journal.get(second.id)
    assert "\n" not in str(info.value)
    # getJobInfo (no input nor output in it) still answers: a damaged number is null
    _damage(workdir, f"UPDATE jobs SET runtime = 'x' WHERE id = {second.id}")
    details = engine.info(second.id)
    assert details["id"] == second.id and details["runtime"] is None
    assert details["state"] == "success"


def test_numbers_past_int_digit_limit_are_not_called_not_numbers(tmp_path):
    # bug: "show 999...9" (5,000 digits) said "a job id is a whole number, not '999...'"
    # and wrote all 5,000 digits; "--limit 999...9" too
    _journal(tmp_path)
    huge = "9" * 5000
    line = one_line_error(run("show", huge, workdir=tmp_path), 2)
    assert "no job 99999999999999999999...: ids have at most 19 digits" in line
    assert len(line) < 200
    proc = run("list", "--json", "--limit", huge, workdir=tmp_path)
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 3
    line = one_line_error(run("list", "--limit", "-" + huge, workdir=tmp_path), 2)
    assert "expected 0 or more" in line and len(line) < 200


def test_reprocess_refuses_a_job_whose_input_is_unreadable(tmp_path):
    # the input of a damaged row is not run as {} (it would "succeed" on no data)
    journal = SQLiteJournal(str(tmp_path / "work"))
    journal.create_many("example.square", [{"x": x} for x in (1, 2, 3)], time.time())
    journal.close()
    _damage(tmp_path / "work", "UPDATE jobs SET input = '{bad' WHERE id = 2")
    args = ["--workdir", str(tmp_path / "work"), "-o", str(tmp_path / "out"), "1-3"]
    status, summary, stderr = summary_of(*args)
    assert status == 1 and summary["total"]["success"] == 2, stderr
    assert "job 2: its input in the journal is unreadable: not JSON (" in stderr


def test_an_engine_starts_on_a_journal_with_a_damaged_row(workdir):
    # bug: the start's search for missing .inp/.out files read the latest records and
    # raised on a damaged one: no server could start on that work directory any more
    journal = SQLiteJournal(str(workdir))
    ids = journal.create_many("example.square", [{"x": x} for x in (1, 2, 3)], time.time())
    now = time.time()
    journal.finish_many([(i, "success", {"result": i}, None, now, now) for i in ids])
    journal.close()
    _damage(workdir, "UPDATE jobs SET pid = 2147483000")  # a process that is gone
    _damage(workdir, f"UPDATE jobs SET input = '{{bad' WHERE id = {ids[1]}")
    engine = dahu.engine.configure(workdir=str(workdir), max_workers=1)
    try:
        job = Job("example.square", {"x": 5})
        job.start()
        job.join()
        assert job.status == "success"
        assert engine.wait_recovered(10)  # the files: in a thread
        stems = [job_file_stem(str(workdir), i, "example.square") for i in ids]
        assert [os.path.exists(stem + ".inp") for stem in stems] == [True, False, True]
        monitor = Monitor()
        monitor.attach(engine)  # the web page's tables, filled from the journal
        assert [item["id"] for item in monitor.recent()][-3:] == ids[::-1]
    finally:
        engine.executor.shutdown(wait=True, timeout=30)


def test_bytes_in_a_text_column_are_shown_as_text(tmp_path):
    # bug: a blob written into the plugin or error column made show and stats a TypeError
    _journal(tmp_path)
    _damage(tmp_path, "UPDATE jobs SET plugin = x'ff41', error = x'4f4bff' WHERE id = 2")
    for command in (["list"], ["stats"], ["show", "2"], ["export"]):
        proc = run(*command, workdir=tmp_path)
        assert (proc.returncode, proc.stderr) == (0, ""), command
        assert "\ufffd" in proc.stdout or "\\ufffd" in proc.stdout, command
