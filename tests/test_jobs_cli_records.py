"""``dahu-jobs`` on journals a user may meet: the last job by ``-1``, damaged records."""

from __future__ import annotations

import time

from dahu.journal import SQLiteJournal

from .test_jobs_cli import one_line_error, run


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
