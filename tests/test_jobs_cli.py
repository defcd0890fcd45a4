"""``dahu-jobs`` on a journal written by a running ``dahu_server``, and the server's
retention setting."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from dahu.app import jobs as jobs_app
from dahu.app.localserver import LocalServer
from dahu.client import DahuClient, JobNotFound, wait
from dahu.errors import JournalError
from dahu.jobquery import open_journal
from dahu.journal import SQLiteJournal, job_file_stem
from dahu.retention import parse_retention, prune
from dahu.timespec import BadTime, parse_duration, parse_when

from .conftest import VENV_BIN, child_env, damage, running_server

DAHU_JOBS = str(VENV_BIN / "dahu-jobs")


def run(*args: str, workdir: Path | str | None = None) -> subprocess.CompletedProcess:
    command = [DAHU_JOBS, *args]
    if workdir is not None:
        command += ["--workdir", str(workdir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env())


def one_line_error(proc: subprocess.CompletedProcess, status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dahu-jobs: ") and "Traceback" not in proc.stderr
    return lines[0]


def wait_files(workdir: Path, job_id: int, plugin: str, timeout: float = 30) -> None:
    stem = job_file_stem(str(workdir), job_id, plugin)
    deadline = time.monotonic() + timeout
    while not os.path.exists(stem + ".out"):
        assert time.monotonic() < deadline, f"no files for job {job_id}"
        time.sleep(0.01)


def wait_journal_state(workdir: Path, job_id: int, state: str, timeout: float = 30) -> None:
    """Wait until the journal records ``state`` for ``job_id`` (the server notes a job
    running only once it has run for ``NOTE_RUNNING_AFTER`` seconds)."""
    deadline = time.monotonic() + timeout
    uri = f"file:{workdir / 'journal.sqlite'}?mode=ro"
    while True:
        with sqlite3.connect(uri, uri=True) as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is not None and row[0] == state:
            return
        assert time.monotonic() < deadline, f"job {job_id} is not {state} in the journal"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("jobs")  # --plugins: a mount not there (a warning only)
    extra = ["--plugins", str(base / "not-mounted")]
    with running_server(base, "test/dahu/jobs", extra_args=extra) as local:
        yield local


def test_a_plugin_directory_not_there_is_one_line_in_the_log_and_status(server):
    missing = Path(server.workdir).parent / "not-mounted"
    line = f"plugin directory {missing} does not exist: ignored"
    log = Path(server.log_path).read_text().splitlines()
    assert [entry.split(" dahu.factory: ")[-1] for entry in log if str(missing) in entry] == [line]
    assert f"\n{line} until an Init finds it\n" in server.proxy.status()  # bug: not there


@pytest.fixture(scope="module")
def history(server):
    """Jobs of every kind in the server's journal; one still running."""
    workdir = Path(server.workdir)
    with DahuClient(server.url) as dahu:
        running = dahu.submit("example.sleep", t=600)
        squares = dahu.map("example.square", [{"x": x} for x in range(40)])
        failed = dahu.submit("example.error", message="no beam")
        aborted = dahu.submit("example.sleep", t=600)
        while aborted.state != "running":
            time.sleep(0.01)
        aborted.cancel()
        wait([*squares, failed], timeout=60)
        for future in (*squares, failed):
            wait_files(workdir, future.job_id, future.plugin)
        wait_journal_state(workdir, running.job_id, "running")
        ids = {
            "running": running.job_id,
            "squares": [f.job_id for f in squares],
            "failed": failed.job_id,
            "aborted": aborted.job_id,
        }
        yield workdir, ids, dahu
        running.cancel()


# ---- list ---------------------------------------------------------------------------------
def test_list_table_and_json(history):
    workdir, ids, _ = history
    proc = run("list", "--limit", "0", workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["id", "plugin", "state", "submitted", "runtime", "error"]
    assert any(
        line.split()[:3] == [str(ids["failed"]), "example.error", "failure"] for line in lines
    )
    assert "ValueError: no beam" in proc.stdout
    proc = run("list", "--json", "--limit", "0", workdir=workdir)
    items = json.loads(proc.stdout)
    by_id = {item["id"]: item for item in items}
    assert by_id[ids["running"]]["state"] == "running"
    assert by_id[ids["aborted"]]["state"] == "aborted"
    assert by_id[ids["squares"][3]]["state"] == "success"
    assert [item["id"] for item in items] == sorted(by_id)


def test_list_filters_and_limit(history):
    workdir, ids, _ = history
    items = json.loads(run("list", "--json", "--state", "failure", workdir=workdir).stdout)
    assert [item["id"] for item in items] == [ids["failed"]]
    spelled = run("list", "--json", "--state", "FAILURE", workdir=workdir).stdout  # any case
    assert [item["id"] for item in json.loads(spelled)] == [ids["failed"]]
    assert items[0]["error"] == "ValueError: no beam"
    items = json.loads(
        run("list", "--json", "--plugin", "example.square", "--limit", "0", workdir=workdir).stdout
    )
    assert [item["id"] for item in items] == ids["squares"]
    # plugin names are not case-sensitive, in the filters as for the factory; the spaces
    # around one are not part of it, as for the device (bug: ' example.square ' found none)
    spelled = run(
        "list", "--json", "--plugin", " Example.SQUARE\t", "--limit", "0", workdir=workdir
    )
    assert [item["id"] for item in json.loads(spelled.stdout)] == ids["squares"]
    proc = run("list", "--json", "--limit", "3", "--plugin", "example.square", workdir=workdir)
    assert len(json.loads(proc.stdout)) == 3 and "the last 3 of 40" in proc.stderr
    proc = run("list", "--limit", "3", "--plugin", "example.square", workdir=workdir)
    assert len(proc.stdout.splitlines()) == 2 + 3
    assert proc.stderr.strip() == "dahu-jobs: the last 3 of 40 matching jobs (--limit 0 for all)"
    assert proc.stdout.splitlines()[-1].split()[0] == str(ids["squares"][-1])
    since = json.loads(
        run("list", "--json", "--since", "1h", "--limit", "0", workdir=workdir).stdout
    )
    assert len(since) >= 43
    proc = run("list", "--until", "2001-01-01", workdir=workdir)
    assert proc.returncode == 0 and proc.stderr.strip() == "dahu-jobs: no job matches"
    proc = run("list", "--json", "--since", "2001-01-01T00:00", "--until", "now", workdir=workdir)
    assert len(json.loads(proc.stdout)) == 43


def test_list_by_environment_workdir(history):
    workdir, ids, _ = history
    proc = subprocess.run(
        [DAHU_JOBS, "list", "--json", "--state", "failure"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(DAHU_WORKDIR=str(workdir)),
    )
    assert [item["id"] for item in json.loads(proc.stdout)] == [ids["failed"]]


# ---- show ---------------------------------------------------------------------------------
def test_queued_jobs_are_found_as_starting(history):
    workdir, _, dahu = history
    # one slot is taken by the history's running job: the first runs, the second waits
    first, queued = dahu.map("example.sleep", [{"t": 600}, {"t": 600}])
    try:
        assert queued.state == "starting"
        wait_journal_state(workdir, first.job_id, "running")  # noted after half a second
        proc = run("list", "--json", "--state", "starting", workdir=workdir)
        assert [item["id"] for item in json.loads(proc.stdout)] == [queued.job_id], proc.stderr
    finally:
        first.cancel(), queued.cancel()
        wait([first, queued], timeout=60)


def test_show(history):
    workdir, ids, _ = history
    job_id = ids["failed"]
    proc = run("show", str(job_id), workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"job {job_id}: example.error, failure\n")
    assert '"message": "no beam"' in text and "Traceback" in text
    assert "example.py" in text and "version 1.0" in text
    assert f"{job_id:05d}_example.error.inp" in text
    record = json.loads(run("show", str(ids["squares"][5]), "--json", workdir=workdir).stdout)
    assert record["output"]["result"] == 25 and record["input"]["x"] == 5
    assert record["state"] == "success" and record["submitted"] <= record["ended"]
    assert record["files"]["out"].endswith("_example.square.out")
    assert record["host"] and record["pid"] and record["module_file"].endswith("example.py")


def test_text_that_is_not_ascii_is_shown_as_written(tmp_path):
    journal = SQLiteJournal(str(tmp_path))
    job_id = journal.create("weird.plugin", {"nom": "détecteur ☢ 漢字"}, time.time())
    error = "RuntimeError: échec du détecteur ☢\nTraceback (most recent call last):\n..."
    journal.finish(job_id, "failure", {"note": "é"}, error, time.time(), time.time())
    journal.close()
    text = run("show", str(job_id), workdir=tmp_path).stdout
    assert '"nom": "détecteur ☢ 漢字"' in text and '"note": "é"' in text
    # a terminal that cannot show them (a Latin-1 or ASCII locale): escaped, no traceback
    for encoding in ("ascii", "latin-1"):
        for command in (["show", str(job_id)], ["list"], ["export", "--format", "csv"]):
            proc = subprocess.run(
                [DAHU_JOBS, *command, "--workdir", str(tmp_path)],
                capture_output=True,
                timeout=60,
                env=child_env(PYTHONIOENCODING=encoding),
            )
            assert proc.returncode == 0 and proc.stderr == b"", (encoding, command, proc.stderr)
            assert b"RuntimeError: " in proc.stdout and b"\\u2622" in proc.stdout


def strict_json(text: str):
    """``text`` read as standard JSON: NaN and Infinity, which Python writes, are refused
    (as by ``jq``, a browser's ``JSON.parse``, most languages' parsers)."""

    def refuse(word: str):
        raise ValueError(f"{word} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_of_a_job_with_nan_and_infinity_is_standard(tmp_path):
    # bug: --json, export wrote NaN and Infinity (a numpy result, a runtime), which jq
    # and JSON.parse refuse: the whole listing was unreadable
    journal = SQLiteJournal(str(tmp_path))
    job_id = journal.create("id00.fit", {"guess": float("-inf")}, time.time())
    output = {"chi2": float("nan"), "peak": float("inf")}
    journal.finish(job_id, "success", output, None, time.time(), float("inf"))
    journal.close()
    record = strict_json(run("show", str(job_id), "--json", workdir=tmp_path).stdout)
    assert record["output"] == {"chi2": "NaN", "peak": "Infinity"}
    assert (record["input"]["guess"], record["runtime"]) == ("-Infinity", "Infinity")
    (item,) = strict_json(run("list", "--json", workdir=tmp_path).stdout)
    assert item["runtime"] == "Infinity"
    figures = strict_json(run("stats", "--json", workdir=tmp_path).stdout)
    assert figures["total"]["max_s"] == "Infinity"
    line = run("export", workdir=tmp_path).stdout
    assert strict_json(line)["output"] == {"chi2": "NaN", "peak": "Infinity"}
    (row,) = csv.DictReader(io.StringIO(run("export", "--format", "csv", workdir=tmp_path).stdout))
    assert strict_json(row["output"]) == {"chi2": "NaN", "peak": "Infinity"}
    assert "inf" in run("list", workdir=tmp_path).stdout  # and the table has no traceback


def test_runtimes_of_microseconds_are_not_zero(tmp_path):
    # bug: a job of 40 µs read "0.000" in the tables, as if it took no time at all
    journal = SQLiteJournal(str(tmp_path))
    for runtime in (40e-6, 5.86e-3, 2.5):
        job_id = journal.create("id00.quick", {}, 1000.0)
        journal.finish(job_id, "success", {}, None, 1000.0, 1000.0 + runtime)
    journal.close()
    table = run("list", workdir=tmp_path).stdout
    assert [line.split()[5:] for line in table.splitlines()[2:]] == [
        ["40", "µs"], ["5.86", "ms"], ["2.5", "s"]
    ]  # fmt: skip
    assert "runtime    40 µs (4" in run("show", "1", workdir=tmp_path).stdout
    row = run("stats", workdir=tmp_path).stdout.splitlines()[2].split()
    assert row[0] == "id00.quick" and row[-4:] == ["835", "ms", "2.5", "s"]  # mean, p95
    ascii_terminal = subprocess.run(
        [DAHU_JOBS, "list", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(PYTHONIOENCODING="ascii"),
    )
    assert ascii_terminal.stdout.splitlines()[2].split()[5:] == ["40", "us"]


def test_control_characters_of_a_job_neither_break_rows_nor_drive_the_terminal(tmp_path):
    # a client's plugin name with a new line split its row in two; a terminal escape in
    # a name or an error turned the operator's terminal red (or worse)
    journal = SQLiteJournal(str(tmp_path))
    for name in ("no.such\nplugin", "\x1b[31mred.plugin"):
        job_id = journal.create(name, {}, time.time())
        error = f"KeyError: \x1b[2J{name}"
        journal.finish(job_id, "failure", None, error, time.time(), time.time())
    journal.close()
    for command in ("list", "stats"):
        text = run(command, workdir=tmp_path).stdout
        assert "\x1b" not in text and len(text.splitlines()) == 4 + (command == "stats"), text
        assert "no.such\\nplugin" in text and "\\x1b[31mred.plugin" in text
    # show wrote the error raw: ESC [2J cleared the operator's screen, NUL and the 8-bit
    # CSI (\x9b) of an input went to the terminal as they are
    journal = SQLiteJournal(str(tmp_path))
    job_id = journal.create("\x1b[31mred.plugin", {"x": "a\x9b2J"}, time.time())
    error = "ValueError: \x1b[2Jbad\x00frame\nTraceback (most recent call last):\n\tline 1"
    journal.finish(job_id, "failure", None, error, time.time(), time.time())
    journal.close()
    text = run("show", str(job_id), workdir=tmp_path).stdout
    assert not set(text) & {"\x1b", "\x00", "\x9b"}, text
    assert f"job {job_id}: \\x1b[31mred.plugin, failure" in text
    assert '"x": "a\\x9b2J"' in text
    assert "ValueError: \\x1b[2Jbad\\x00frame\nTraceback (most recent call last):\n\tline 1" in text


def test_a_plugin_name_of_a_megabyte_is_cut_in_the_tables(tmp_path):
    # bug: a script's job of a plugin name of megabytes (the device refuses such names, a
    # script may record one) made each line of list, stats and show that wide
    name = "example." + "c" * 1_000_000
    journal = SQLiteJournal(str(tmp_path))
    job_id = journal.create(name, {}, time.time())
    journal.finish(job_id, "failure", None, "no such plugin", time.time(), time.time())
    journal.close()
    for command in ("list", "stats", "show"):
        text = run(*([command, str(job_id)] if command == "show" else [command]), workdir=tmp_path)
        assert text.returncode == 0, text.stderr
        assert max(len(line) for line in text.stdout.splitlines()) < 400, command
        assert "example.ccc" in text.stdout and "..." in text.stdout, command
    exported = run("export", workdir=tmp_path).stdout  # the data itself stays whole
    assert name in exported


def test_a_work_directory_this_user_cannot_write_is_read(tmp_path):
    """Another account's work directory (the server's), or a copy on read-only media: a
    reader of a WAL journal needs to make its -shm file there, and cannot."""
    journal = SQLiteJournal(str(tmp_path))
    job_id = journal.create("example.square", {"x": 3}, time.time())
    journal.finish(job_id, "success", {"result": 9}, None, time.time(), time.time())
    journal.close()
    assert not (tmp_path / "journal.sqlite-wal").exists()  # no server writes there
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):  # root writes anyway: the -shm cannot be made
            tmp_path.chmod(0o755)
            (tmp_path / "journal.sqlite-shm").symlink_to(tmp_path / "missing" / "shm")
            tmp_path.chmod(0o555)
        proc = run("show", str(job_id), "--json", workdir=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["output"]["result"] == 9
        line = one_line_error(
            run("prune", "--keep-last", "0", "--min-age", "0", workdir=tmp_path), 3
        )
        assert line.startswith("dahu-jobs: cannot ") and f"{tmp_path}/journal.sqlite" in line
    finally:
        tmp_path.chmod(0o755)


def test_a_journal_sqlite_opens_read_only_is_not_pruned_nor_its_files(tmp_path, monkeypatch):
    # bug: a journal SQLite could open only read-only (a read-only file system, a file of
    # another account's in a directory this one may write) lost the files of its first
    # 500 jobs, then failed on the records; on a read-only file system each job was a
    # line on stderr ("cannot remove ...: the job is kept"), and the status was 0
    journal = SQLiteJournal(str(tmp_path))
    stems = []
    for x in range(3):
        job_id = journal.create("example.square", {"x": x}, time.time() - 3600)
        journal.finish(job_id, "success", {"result": x * x}, None, time.time(), time.time())
        stems.append(job_file_stem(str(tmp_path), job_id, "example.square"))
        os.makedirs(os.path.dirname(stems[-1]), exist_ok=True)
        Path(stems[-1] + ".inp").write_text("{}")
    journal.close()

    def read_only(workdir, write=False):  # as SQLite opens a journal it cannot write
        return open_journal(workdir)

    monkeypatch.setattr("dahu.retention.open_journal", read_only)
    with pytest.raises(JournalError, match="cannot prune the journal .*: attempt to write a "):
        prune(str(tmp_path), keep_last=0, min_age=0)
    assert all(os.path.exists(stem + ".inp") for stem in stems)


def test_a_journal_damaged_past_its_first_page_is_named_damaged(tmp_path):
    # bug: "dahu-jobs: cannot read the journal: database disk image is malformed", no
    # path, unlike a journal damaged where it is opened ("PATH is damaged: ...")
    journal = SQLiteJournal(str(tmp_path))
    journal.create_many("example.square", [{"x": x} for x in range(50)], time.time())
    journal.close()
    path = tmp_path / "journal.sqlite"
    page = int.from_bytes(path.read_bytes()[16:18], "big")
    with open(path, "r+b") as file:  # the schema, on the first page, is left as it was
        file.seek(page)
        file.write(b"\xff" * (path.stat().st_size - page))
    for command in (["stats"], ["export", "-o", str(tmp_path / "x.csv")]):
        line = one_line_error(run(*command, workdir=tmp_path), 3)
        assert line == f"dahu-jobs: {path} is damaged: database disk image is malformed"
    assert not (tmp_path / "x.csv").exists()  # bug: its header (and first jobs) were left


def test_an_interrupted_export_leaves_no_file(tmp_path):
    journal = SQLiteJournal(str(tmp_path))
    journal.create_many("example.noop", [{"x": "y" * 10_000}] * 5000, time.time())
    journal.close()
    target = tmp_path / "jobs.jsonl"
    command = [DAHU_JOBS, "export", "-o", str(target), "--workdir", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.monotonic() + 30
    while not (target.exists() and target.stat().st_size):  # writing: 50 MB to go
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)  # ^C
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (130, "dahu-jobs: interrupted\n")
    assert not target.exists()


@pytest.mark.parametrize("job_id", ["999999", "9" * 30])  # the second: beyond SQLite's ints
def test_show_unknown_id(history, job_id):
    workdir, _, _ = history
    line = one_line_error(run("show", job_id, workdir=workdir), 1)
    assert line == f"dahu-jobs: no job {job_id} in the journal of {workdir}"


# ---- stats, export ------------------------------------------------------------------------
def test_stats(history):
    workdir, _, _ = history
    figures = json.loads(run("stats", "--json", workdir=workdir).stdout)
    square = figures["plugins"]["example.square"]
    assert square["jobs"] == square["success"] == 40 and square["timed"] == 40
    assert 0 <= square["p95_s"] <= square["max_s"] and 0 <= square["mean_s"] <= square["max_s"]
    sleep = figures["plugins"]["example.sleep"]
    assert sleep["aborted"] >= 1 and sleep["running"] >= 1
    assert figures["plugins"]["example.error"]["failure"] == 1
    assert figures["total"]["jobs"] == sum(e["jobs"] for e in figures["plugins"].values())
    text = run("stats", "--plugin", "example.square", workdir=workdir).stdout
    header, _, row, total = text.splitlines()
    assert header.split() == [
        "plugin", "jobs", "success", "failure", "aborted", "unfinished", "mean", "p95"
    ]  # fmt: skip
    assert row.split()[:6] == ["example.square", "40", "40", "0", "0", "0"]
    assert total.split()[:2] == ["(all)", "40"]


def test_the_plugin_filter_ignores_case_beyond_ascii(tmp_path):
    # bug: --plugin étude.fit missed the jobs a client sent as ÉTUDE.Fit, which the
    # factory runs as the same plugin and stats counts in its row
    journal = SQLiteJournal(str(tmp_path))
    for name in ("ÉTUDE.Fit", "étude.fit", "etude.fit"):
        job_id = journal.create(name, {}, time.time())
        journal.finish(job_id, "success", {}, None, time.time(), time.time())
    journal.close()
    items = json.loads(run("list", "--json", "--plugin", "Étude.FIT", workdir=tmp_path).stdout)
    assert [item["plugin"] for item in items] == ["ÉTUDE.Fit", "étude.fit"]
    figures = json.loads(run("stats", "--json", "--plugin", "étude.fit", workdir=tmp_path).stdout)
    assert figures["total"]["jobs"] == figures["plugins"]["étude.fit"]["jobs"] == 2


def test_stats_count_a_plugin_however_its_jobs_spell_it(tmp_path):
    journal = SQLiteJournal(str(tmp_path))
    for name in ("EXAMPLE.Square", "example.square"):  # both run example.square
        job_id = journal.create(name, {"x": 2}, time.time())
        journal.finish(job_id, "success", {"result": 4}, None, time.time(), time.time())
    journal.close()
    figures = json.loads(run("stats", "--json", workdir=tmp_path).stdout)
    assert list(figures["plugins"]) == ["example.square"]
    assert figures["plugins"]["example.square"]["success"] == 2


def test_export_json_lines_and_csv(history, tmp_path):
    workdir, ids, _ = history
    proc = run("export", "--plugin", "example.square", workdir=workdir)
    lines = proc.stdout.splitlines()
    assert len(lines) == 40
    first = json.loads(lines[0])
    assert first["id"] == ids["squares"][0] and first["output"]["result"] == 0
    assert set(first) >= {"id", "plugin", "state", "input", "output", "error", "runtime"}
    target = tmp_path / "jobs.csv"
    proc = run("export", "-o", str(target), workdir=workdir)
    assert proc.returncode == 0 and "written to" in proc.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    failed = next(row for row in rows if row["id"] == str(ids["failed"]))
    assert failed["state"] == "failure" and failed["error"].startswith("ValueError: no beam\n")
    assert json.loads(failed["input"])["message"] == "no beam"
    assert len(rows) == len(
        json.loads(run("list", "--json", "--limit", "0", workdir=workdir).stdout)
    )
    proc = run("export", "--format", "csv", "--state", "aborted", workdir=workdir)
    assert next(csv.DictReader(io.StringIO(proc.stdout)))["state"] == "aborted"


def test_an_export_to_dash_goes_to_standard_output(history, tmp_path):
    # bug: "-o -" wrote a file named "-" in the current directory, and nothing to a pipe
    workdir, ids, _ = history
    proc = subprocess.run(
        [DAHU_JOBS, "export", "--state", "aborted", "-o", "-", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["id"] == ids["aborted"]
    assert os.listdir(tmp_path) == []


def test_an_export_onto_the_journal_is_refused_and_the_journal_kept(history, tmp_path):
    # bug: "-o WORKDIR/journal.sqlite" truncated the journal before reading it
    workdir, ids, _ = history
    before = run("list", "--json", "--limit", "0", workdir=workdir).stdout
    linked = tmp_path / "journal-link.sqlite"
    try:
        os.link(workdir / "journal.sqlite", linked)  # a hard link: another path, one file
    except OSError:  # another file system
        linked = workdir / "journal.sqlite"
    targets = [os.path.join(workdir, n) for n in ("journal.sqlite", "journal.sqlite-wal")]
    for target in [*targets, os.path.join(workdir, "./journal.sqlite"), str(linked)]:
        line = one_line_error(run("export", "-o", target, workdir=workdir), 2)
        assert line == f"dahu-jobs: will not export onto the journal itself: {target}"
    assert run("list", "--json", "--limit", "0", workdir=workdir).stdout == before
    assert json.loads(run("show", str(ids["failed"]), "--json", workdir=workdir).stdout)


def test_an_export_the_disk_cannot_hold_is_one_line_and_leaves_no_file(history, tmp_path):
    # bug: a traceback (status 1) and a half-written file, when the disk filled up
    workdir, _, _ = history
    target = tmp_path / "jobs.jsonl"

    def small_files():  # in the child: files may not grow past 2 kB (as a full disk)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [DAHU_JOBS, "export", "-o", str(target), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        preexec_fn=small_files,
    )
    line = one_line_error(proc, 2)
    assert line == f"dahu-jobs: cannot write {target}: File too large"
    assert not target.exists()
    # bug: to standard output (> FILE), a traceback; a short list's buffer failed at exit
    # ("Exception ignored ...", status 120)
    for command in (["export"], ["list", "--limit", "0"]):
        with open(target, "w") as stdout:
            proc = subprocess.run(
                [DAHU_JOBS, *command, "--workdir", str(workdir)],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                env=child_env(),
                preexec_fn=small_files,
            )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[-1] == "dahu-jobs: cannot write the output: File too large"
        assert "Traceback" not in proc.stderr, proc.stderr
    # bug: started with standard output closed (>&-), an AttributeError traceback (after
    # prune had removed its jobs)
    proc = subprocess.run(
        [DAHU_JOBS, "stats", "--workdir", str(workdir)],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        env=child_env(),
        preexec_fn=lambda: os.close(1),
    )
    assert one_line_error(proc, 2) == "dahu-jobs: standard output is closed: nowhere to write"


# ---- bad input ----------------------------------------------------------------------------
def test_bad_work_directories(tmp_path):
    missing = tmp_path / "nothing"
    line = one_line_error(run("list", workdir=missing), 3)
    assert line == f"dahu-jobs: no such work directory: {missing}"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    line = one_line_error(run("stats", workdir=foreign), 3)
    assert "is not a Dahu work directory" in line
    assert os.listdir(foreign) == []  # nothing created
    (foreign / "journal.sqlite").write_bytes(b"not a database at all" * 100)
    line = one_line_error(run("show", "1", workdir=foreign), 3)
    assert "is not a Dahu journal" in line
    (foreign / "journal.sqlite").unlink()
    db = sqlite3.connect(foreign / "journal.sqlite")
    db.execute("CREATE TABLE jobs (id)")
    db.commit()
    db.close()
    damage(foreign / "journal.sqlite")  # a journal cut short is damaged, not foreign
    line = one_line_error(run("list", workdir=foreign), 3)
    assert line.endswith("journal.sqlite is damaged: database disk image is malformed")
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "journal.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    assert "no jobs table" in one_line_error(run("export", workdir=other), 3)
    # a table jobs of another program's: not "no such column: id" (a bug)
    sqlite3.connect(other / "journal.sqlite").execute("CREATE TABLE jobs (x)").connection.commit()
    line = one_line_error(run("list", workdir=other), 3)
    assert line.endswith(
        "journal.sqlite is not a Dahu journal: its jobs table has no column id, plugin, state, ..."
    )
    assert "is not a directory" in one_line_error(run("list", workdir=other / "journal.sqlite"), 3)
    assert "no such work" in one_line_error(run("prune", "--keep-last", "1", workdir=missing), 3)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["list", "--since", "last tuesday"], "bad date 'last tuesday'"),
        (["list", "--until", "2026-13-45"], "bad date '2026-13-45'"),
        (["list", "--limit", "-1"], "expected 0 or more"),
        (["list", "--limit", "many"], "expected a whole number"),
        # bug: the bounds swapped found no job, without a word
        (["stats", "--since", "1h", "--until", "2h"], "--since is after --until (a duration"),
        (["list", "--since", "2026-11-30", "--until", "2026-11-29"], "--since is after --until"),
        (["list", "--state", "done"], "invalid choice: 'done'"),
        (["show", "abc"], "a job id is a whole number"),
        (["show"], "the following arguments are required: ID"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["prune"], "one of the arguments --before --keep-last is required"),
        (["prune", "--before", "1d", "--keep-last", "3"], "not allowed with argument"),
        (["prune", "--before", "soon"], "bad date 'soon'"),
        (["prune", "--keep-last", "1", "--min-age", "a while"], "bad duration 'a while'"),
        (["prune", "--keep-last", "1", "--min-age", "-5"], "0 s or more, not '-5'"),
        (["prune", "--keep-last", "1", "--min-age", "nan"], "0 s or more, not 'nan'"),
        # bug: "a duration of 0 s or more, not '999...'" with all its 400 digits
        (
            ["prune", "--keep-last", "1", "--min-age", "9" * 400],
            "a duration too long for a number of seconds: '99999999999999999999'... (400 char",
        ),
        (["prune", "--keep-last", "1", "--min-age", "inf"], "too long for a number of seconds"),
        (["export", "--format", "xml"], "invalid choice: 'xml'"),
        (["export", "-o", "/nonexistent/jobs.csv"], "cannot write /nonexistent/jobs.csv"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(history, args, expected):
    workdir, _, _ = history
    line = one_line_error(run(*args, workdir=workdir), 2)
    assert expected in line


def test_an_empty_work_directory_is_refused_not_the_default_one(tmp_path):
    # bug: "dahu-jobs prune -w "$DIR" --keep-last 0" with DIR unset pruned the default
    # work directory ($DAHU_WORKDIR: the server's) without a word
    journal = SQLiteJournal(str(tmp_path))
    job_id = journal.create("example.noop", {}, time.time() - 3600)
    journal.finish(job_id, "success", {}, None, time.time() - 3600, time.time() - 3600)
    journal.close()
    for args in (["prune", "-w", "", "--keep-last", "0", "--min-age", "0"], ["-w", " ", "list"]):
        proc = subprocess.run(
            [DAHU_JOBS, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(DAHU_WORKDIR=str(tmp_path)),
        )
        line = one_line_error(proc, 2)
        assert "argument -w/--workdir: an empty name (an unset variable?)" in line, line
    proc = run("stats", "--plugin", " ", workdir=tmp_path)
    assert "argument --plugin: an empty plugin name" in one_line_error(proc, 2)
    # bug: export -o "$OUT" with OUT unset wrote to standard output
    proc = run("export", "-o", "", workdir=tmp_path)
    assert "argument -o/--output: an empty name (an unset variable?)" in one_line_error(proc, 2)
    assert "example.noop" in run("list", workdir=tmp_path).stdout  # not pruned


def test_numbers_past_64_bits_mean_everything(history):
    workdir, ids, _ = history
    huge = "9" * 30
    proc = run("list", "--json", "--limit", huge, workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == len(
        json.loads(run("list", "--json", "--limit", "0", workdir=workdir).stdout)
    )
    proc = run("prune", "--keep-last", huge, "--dry-run", "--json", workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed"] == 0


def test_version_and_help():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("dahu-jobs ")
    proc = run("prune", "--help")
    assert proc.returncode == 0 and "--keep-last" in proc.stdout


def test_time_specs():
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("2D") == 2 * 86400 and parse_duration("1w") == 7 * 86400
    assert parse_when("1h", now=10_000) == 6400
    assert parse_when("now", now=5.0) == 5.0
    assert parse_when("2026-11-28T00:00:00+00:00") == 1795824000
    assert parse_when("today") <= time.time() and parse_when("yesterday") < parse_when("today")
    # bug: --until 0001-01-01 was refused ("out of the range of this system's clock") while
    # --since 99999999999d, further back, was taken: both are before any job
    assert parse_when("0001-01-01") < parse_when("0001-01-02") < 0
    assert parse_when("9999-12-31T23:59:59") > parse_when("9999-12-31") > time.time()
    assert parse_when("0001-01-01T00:00+14:00") < parse_when("0001-01-01")
    # bug: a pasted text was quoted whole in the message (a page of it for a page)
    for parse, what in ((parse_when, "date"), (parse_duration, "duration")):
        with pytest.raises(BadTime, match=rf"^bad {what} 'xxxxxxxxxxxxxxxxxxxx'\.\.\. \(300 char"):
            parse("x" * 300)
    for bad in ("", "1", "h", "-1h", "1y"):
        with pytest.raises(BadTime):
            parse_duration(bad)
    assert parse_retention("") is None and parse_retention("  ") is None
    assert parse_retention("1000").keep_last == 1000
    assert parse_retention("30d").max_age == 30 * 86400
    with pytest.raises(BadTime, match="bad retention 'forever'"):
        parse_retention("forever")
    # bug: a retention of 5,000 digits (dahu_server --retention) was a ValueError traceback
    assert parse_retention("9" * 5000).keep_last == parse_retention("9" * 30).keep_last > 10**18
    with pytest.raises(BadTime, match=r"^bad retention 'xxxxxxxxxxxxxxxxxxxx'\.\.\. \(300 char"):
        parse_retention("x" * 300)


# ---- prune ----------------------------------------------------------------------------------
def test_prune_on_a_running_server(server, history):
    workdir, ids, dahu = history
    before_list = json.loads(run("list", "--json", "--limit", "0", workdir=workdir).stdout)
    dry = json.loads(
        run(
            "prune", "--keep-last", "5", "--min-age", "0", "--dry-run", "--json", workdir=workdir
        ).stdout
    )
    assert dry["dry_run"] and dry["removed"] == len(before_list) - 5 - dry["kept_unfinished"]
    assert dry["kept_unfinished"] == 1 and dry["unfinished_ids"] == [ids["running"]]
    assert json.loads(run("list", "--json", "--limit", "0", workdir=workdir).stdout) == before_list
    by_date = json.loads(
        run(
            "prune", "--before", "now", "--min-age", "0", "--dry-run", "--json", workdir=workdir
        ).stdout
    )
    assert by_date["removed"] == len(before_list) - 1 and by_date["kept_unfinished"] == 1
    assert (
        json.loads(run("prune", "--before", "1h", "--json", workdir=workdir).stdout)["matched"] == 0
    )
    # the minimum age keeps every job that ended since: the default, 60 s, did here until
    # this test came more than a minute after the jobs ended (a loaded machine, once)
    assert jobs_app.build_parser().parse_args(["prune", "--keep-last", "5"]).min_age == 60
    recent = json.loads(
        run("prune", "--keep-last", "5", "--min-age", "1h", "--json", workdir=workdir).stdout
    )
    assert recent["removed"] == 0 and recent["kept_recent"] == dry["removed"]
    # a server writes new jobs while we prune: a long job takes the second slot, so the
    # new ones are still queued when the prune runs (once they ran, their outputs could
    # be pruned before the client reads them: --min-age 0 asks for that)
    blocker = dahu.submit("example.sleep", t=600)
    while blocker.state != "running":
        time.sleep(0.01)
    more = dahu.map("example.square", [{"x": x} for x in range(50)])  # all listed: ≤ 100
    proc = run("prune", "--keep-last", "5", "--min-age", "0", "--json", workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["removed"] >= dry["removed"]
    blocker.cancel()
    # kept unfinished: the long job, and the new ones, queued or running
    new_ids = {f.job_id for f in more} | {blocker.job_id}
    assert ids["running"] in report["unfinished_ids"]
    assert set(report["unfinished_ids"]) - {ids["running"]} <= new_ids
    assert report["kept_unfinished"] == len(report["unfinished_ids"])
    assert report["files_removed"] > 0 and report["file_bytes"] > 0
    wait(more, timeout=60)
    assert [f.result()["result"] for f in more] == [x * x for x in range(50)]
    left = json.loads(run("list", "--json", "--limit", "0", workdir=workdir).stdout)
    left_ids = [item["id"] for item in left]
    assert ids["running"] in left_ids  # unfinished: never pruned
    # the last 5 that ended are kept, the queued ones besides (until 2026-11-30 these
    # were counted among the 5, and the failed job went)
    final = ("success", "failure", "aborted")
    last_ended = [item["id"] for item in before_list if item["state"] in final][-5:]
    assert set(last_ended) <= set(left_ids) and ids["squares"][0] not in left_ids
    for job_id in set(ids["squares"]) - set(last_ended):
        stem = job_file_stem(str(workdir), job_id, "example.square")
        assert not os.path.exists(stem + ".inp") and not os.path.exists(stem + ".out")
    # the server still reads and runs jobs; ids go on
    assert dahu.submit("example.square", x=12).result(30)["result"] == 144
    assert dahu.job(more[-1].job_id).result(30)["result"] == 49**2
    # the default minimum age keeps every job that ended in the last minute: these did
    # (bug of the test: it asked it of the module's first jobs, over a minute old under load)
    recent = run("prune", "--keep-last", "0", "--dry-run", "--json", workdir=workdir)
    assert json.loads(recent.stdout)["kept_recent"] >= len(more) + 1
    one_line_error(run("show", str(ids["squares"][0]), workdir=workdir), 1)


def on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run dahu-jobs with stderr on a terminal of 100 columns: status, stdout, terminal."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen(
        [DAHU_JOBS, *args], stdout=subprocess.PIPE, stderr=slave, text=True, env=child_env()
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stdout, _ = proc.communicate(timeout=60)
    return proc.returncode, stdout, shown.decode(errors="replace")


def old_jobs(workdir: Path, count: int) -> None:
    journal = SQLiteJournal(str(workdir))
    now = time.time() - 3600
    ids = journal.create_many("example.square", [{"x": i} for i in range(count)], now)
    journal.finish_many([(i, "success", {"result": 1}, None, now, now + 1) for i in ids])
    journal.close()


def test_prune_and_export_show_their_progress_on_a_terminal(tmp_path):
    # a million jobs take about half a minute to prune, 40 s to export: both were silent
    old_jobs(tmp_path, 3000)
    calls = []
    report = prune(str(tmp_path), keep_last=1000, dry_run=True, progress=lambda *a: calls.append(a))
    assert report.removed == 2000 and calls[-1] == (2000, 2000)  # dry run: counted too
    target = tmp_path / "jobs.csv"
    status, _, shown = on_a_terminal("export", "-o", str(target), "-w", str(tmp_path))
    assert status == 0 and "exporting:" in shown and "/3000 [" in shown, shown
    assert "3000 job(s) written to" in shown
    assert len(target.read_text().splitlines()) == 3001
    status, stdout, shown = on_a_terminal("prune", "--keep-last", "1000", "-w", str(tmp_path))
    assert status == 0
    assert stdout.startswith("removed 2000 job(s) (ids 1-2000)")
    assert "pruning:" in shown and "/2000 [" in shown, shown
    quiet = run("export", "-o", str(target), workdir=tmp_path)  # not a terminal: no bar
    assert quiet.stderr == f"dahu-jobs: 1000 job(s) written to {target} (csv)\n"
    quiet = run("prune", "--keep-last", "0", workdir=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_prune_counts_only_the_jobs_it_removed(tmp_path, monkeypatch):
    """Another prune (the server's retention) may take some of the same jobs first."""
    import dahu.retention

    journal = SQLiteJournal(str(tmp_path))
    for job_id in journal.create_many("example.square", [{"x": 1}] * 10, time.time() - 3600):
        journal.finish(job_id, "success", {}, None, time.time() - 3600, time.time() - 3600)
    journal.close()
    remove_files = dahu.retention._remove_files

    def racing(workdir, job_id, *args):
        removed = remove_files(workdir, job_id, *args)
        if job_id % 2:  # the other prune deletes this record meanwhile
            with sqlite3.connect(tmp_path / "journal.sqlite") as other:
                other.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return removed

    monkeypatch.setattr(dahu.retention, "_remove_files", racing)
    assert prune(str(tmp_path), keep_last=0).removed == 5


def test_keep_last_keeps_that_many_ended_jobs_besides_the_unfinished(tmp_path):
    # bug: "--keep-last 2" with 3 jobs queued counted them among the 2: every ended
    # job's record went, those the user had asked to keep too
    old_jobs(tmp_path, 5)
    journal = SQLiteJournal(str(tmp_path))
    queued = journal.create_many("example.square", [{"x": 1}] * 3, time.time() - 3600)
    journal.close()
    report = prune(str(tmp_path), keep_last=2, min_age=0)
    assert (report.removed, report.first_id, report.last_id) == (3, 1, 3)
    assert (report.kept_unfinished, report.unfinished_ids) == (3, queued)  # said kept
    assert prune(str(tmp_path), keep_last=9, min_age=0).kept_unfinished == 3
    listed = json.loads(run("list", "--json", workdir=tmp_path).stdout)
    assert [row["id"] for row in listed] == [4, 5, *queued]


def test_a_prune_keeps_the_jobs_whose_files_a_live_script_has_yet_to_write(engine, workdir):
    # bug: a script holding ended jobs, to clean() later: "dahu-jobs prune" removed their
    # records, then clean() wrote .inp/.out files that no record named
    from dahu.job import Job

    jobs = [Job("example.square", {"x": x}) for x in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    proc = run("prune", "--keep-last", "0", "--min-age", "0", workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("removed 0 job(s) and 0 file(s)")
    assert proc.stdout.rstrip().endswith("; kept 3 whose files a live process has yet to write")
    for job in jobs:
        job.clean()
    report = json.loads(
        run("prune", "--keep-last", "0", "--min-age", "0", "--json", workdir=workdir).stdout
    )
    assert (report["removed"], report["files_removed"], report["kept_owed"]) == (3, 6, 0)
    assert not list(workdir.glob("*/*.inp")) and not list(workdir.glob("*/*.out"))


def test_a_job_whose_file_cannot_be_removed_keeps_its_record(tmp_path):
    # bug: its record was pruned all the same, leaving a file no record names (the
    # directory of another account's server, a file made read-only...), against the rule
    journal = SQLiteJournal(str(tmp_path))
    for job_id in journal.create_many("example.square", [{"x": 1}] * 3, time.time() - 3600):
        journal.finish(job_id, "success", {}, None, time.time() - 3600, time.time() - 3600)
        stem = Path(job_file_stem(str(tmp_path), job_id, "example.square"))
        stem.parent.mkdir(exist_ok=True)
        stem.with_name(stem.name + ".out").write_text("{}")
        stuck = stem.with_name(stem.name + ".inp")
        stuck.mkdir() if job_id == 2 else stuck.write_text("{}")  # unlink() cannot remove it
    journal.close()
    proc = run("prune", "--keep-last", "0", "--min-age", "0", "--json", workdir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["removed"], report["kept_stuck"]) == (2, 1)
    (line,) = proc.stderr.splitlines()
    assert line.startswith("dahu-jobs: job 2: cannot remove ") and line.endswith("the job is kept")
    assert [row["id"] for row in json.loads(run("list", "--json", workdir=tmp_path).stdout)] == [2]


def test_a_prune_that_removed_no_job_names_no_ids(tmp_path):
    # bug: with every job's file stuck it said "removed 0 job(s) (ids 1-2) and 0 file(s)"
    journal = SQLiteJournal(str(tmp_path))
    for job_id in journal.create_many("example.square", [{"x": 1}] * 2, time.time() - 3600):
        journal.finish(job_id, "success", {}, None, time.time() - 3600, time.time() - 3600)
        stem = Path(job_file_stem(str(tmp_path), job_id, "example.square"))
        stem.parent.mkdir(exist_ok=True)
        stem.with_name(stem.name + ".inp").mkdir()  # unlink() cannot remove it
    journal.close()
    summary = prune(str(tmp_path), keep_last=0, min_age=0).summary()
    assert summary.startswith("removed 0 job(s) and 0 file(s), 0 B of files;"), summary
    assert summary.endswith("; kept 2 whose files could not be removed")


def test_prune_reclaims_space_and_ids_are_never_reused(tmp_path):
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device="test/dahu/prune")
    local.start(timeout=60)
    try:
        with DahuClient(local.url) as dahu:
            futures = dahu.map("example.square", [{"x": x, "pad": "x" * 2000} for x in range(1500)])
            wait(futures, timeout=120)
            last = futures[-1].job_id
            wait_files(workdir, last, "example.square")
            journal = workdir / "journal.sqlite"
            size = journal.stat().st_size
            report = prune(str(workdir), before=time.time() + 1, min_age=0)
            assert report.removed == 1500 and report.files_removed == 3000
            assert report.journal_bytes_after < report.journal_bytes_before / 4
            assert journal.stat().st_size < size / 4
            assert not list(workdir.glob("000?"))  # emptied directories are removed
            assert dahu.submit("example.square", x=2).job_id == last + 1
    finally:
        assert local.stop() == 0
    # a restarted server on the emptied journal goes on counting
    local = LocalServer(str(workdir), str(tmp_path / "server2.log"), device="test/dahu/prune")
    local.start(timeout=60)
    try:
        with DahuClient(local.url) as dahu:
            future = dahu.submit("example.square", x=3)
            assert future.result(30)["result"] == 9
            assert future.job_id > last + 1
    finally:
        assert local.stop() == 0


# ---- the server's retention setting ---------------------------------------------------------
def test_server_retention_keeps_the_last_jobs(tmp_path):
    workdir = tmp_path / "work"
    local = LocalServer(
        str(workdir),
        str(tmp_path / "server.log"),
        max_workers=2,
        device="test/dahu/retention",
        extra_args=["--retention", "5", "--retention-interval", "0.3"],
    )
    local.start(timeout=60)
    try:
        assert "retention: keeping the last 5 jobs, pruned every 0.3 s" in local.proxy.status()
        with DahuClient(local.url) as dahu:
            long = dahu.submit("example.sleep", t=600)
            futures = dahu.map("example.square", [{"x": x} for x in range(30)])
            wait(futures, timeout=60)
            deadline = time.monotonic() + 30
            while True:
                listed = json.loads(run("list", "--json", "--limit", "0", workdir=workdir).stdout)
                if len(listed) <= 6 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            ids = [item["id"] for item in listed]
            assert ids == [long.job_id] + [f.job_id for f in futures[-5:]]  # unfinished kept
            deadline = time.monotonic() + 10
            while len(list(workdir.glob("*/*.out"))) > 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            outs = sorted(path.name for path in workdir.glob("*/*.out"))
            assert outs == [f"{f.job_id:05d}_example.square.out" for f in futures[-5:]]
            # recent jobs stay readable through the device
            assert dahu.job(futures[-1].job_id).result(30)["result"] == 29**2
            # a pruned one says so (it said "job ids run from 1 to N", N above its id)
            with pytest.raises(JobNotFound) as info:
                dahu.job(futures[0].job_id)
            assert str(info.value).endswith(
                f"no job {futures[0].job_id}: it is no longer in the journal (pruned) "
                "or was never given"
            )
            assert long.cancel()
    finally:
        assert local.stop() == 0


def test_server_retention_by_age_and_bad_settings(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "dahu_server"), "x", "--retention", "forever"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert proc.returncode == 2 and "bad retention 'forever'" in proc.stderr
    workdir = tmp_path / "work"
    local = LocalServer(
        str(workdir),
        str(tmp_path / "server.log"),
        device="test/dahu/age",
        extra_args=["--retention", "2s", "--retention-interval", "0.3"],
    )
    local.start(timeout=60)
    try:
        with DahuClient(local.url) as dahu:
            old = dahu.map("example.square", [{"x": x} for x in range(10)])
            wait(old, timeout=60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                listed = json.loads(run("list", "--json", workdir=workdir).stdout)
                if not listed:
                    break
                time.sleep(0.2)
            assert listed == []
            young = dahu.submit("example.square", x=4)
            assert young.result(30)["result"] == 16
            listed = json.loads(run("list", "--json", workdir=workdir).stdout)
            assert [item["id"] for item in listed] == [young.job_id]
    finally:
        assert local.stop() == 0


def test_percentile_is_the_nearest_rank():
    from dahu.jobquery import percentile

    assert percentile([], 0.95) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([1.0, 2.0, 3.0, 100.0], 0.95) == 100.0


def test_show_says_when_the_process_of_an_unfinished_job_is_gone(tmp_path):
    # a server killed and not started again leaves its jobs running in the journal:
    # show said "running" as of a job still at work
    workdir = tmp_path / "work"
    local = LocalServer(str(workdir), str(tmp_path / "server.log"), device="test/dahu/gone")
    proxy = local.start(timeout=60)
    try:
        cut = proxy.startJob(["example.sleep", '{"t": 600}'])
        while proxy.getJobState(cut) != "running":
            time.sleep(0.01)
        alive = run("show", str(cut), workdir=workdir)
        assert alive.returncode == 0 and "is gone" not in alive.stdout
        local.process.kill()
        local.process.wait(30)
    finally:
        local.stop()
    shown = run("show", str(cut), workdir=workdir)
    first = shown.stdout.splitlines()[0]
    assert first.startswith(f"job {cut}: example.sleep, ")
    assert f"(its process {local.process.pid} is gone: the next server" in first
    assert json.loads(run("show", str(cut), "--json", workdir=workdir).stdout)["gone"] is True
