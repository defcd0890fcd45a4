"""``dahu-reprocess``: the installed command run as a subprocess on archived jobs.

The archived jobs are made by really running example plugins through the engine in a
child process (the journal and the ``.inp``/``.out`` files the server writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import h5py
import numpy
import pytest

from dahu.app import reprocess_args
from dahu.compare import compare, compare_files, first_difference
from dahu.testdata import make_dataset

from .conftest import BASE_EXCEPTIONS, TROUBLE_PLUGINS

BIN = Path(sys.executable).parent
REPROCESS = str(BIN / "dahu-reprocess")
ROOT = Path(__file__).resolve().parent.parent

ARCHIVE_SCRIPT = """
import json, sys
import dahu.engine
from dahu.job import Job
dahu.engine.configure(workdir=sys.argv[1], max_workers=2)
jobs = [Job(name, data) for name, data in json.loads(sys.argv[2])]
for job in jobs:
    job.start()
for job in jobs:
    job.clean()
print(json.dumps([job.status for job in jobs]))
"""

PLUGIN_MODULE = '''
"""Plugins of the reprocessing tests."""
import os
import tempfile

import h5py
import numpy

from dahu.factory import register
from dahu.plugin import Plugin


@register
class Ramp(Plugin):
    """Write x * (0, 1, ... 9) into a new HDF5 file in outdir; return its path."""

    def process(self):
        fd, path = tempfile.mkstemp(suffix=".h5", dir=self.input["outdir"])
        os.close(fd)
        with h5py.File(path, "w") as h5:
            h5["entry/data"] = numpy.arange(10.0) * self.input.get("x", 1)
            h5["entry/title"] = "ramp"
        self.output["file"] = path


@register
class Echo(Plugin):
    """Return the names of the input keys; drops "secret" when reprocessed."""

    REPROCESS_IGNORE = ["secret"]

    def process(self):
        self.output["keys"] = sorted(self.input)
'''

EXAMPLES = [
    ["example.square", {"x": 1}],
    ["example.square", {"x": 2}],
    ["example.square", {"x": 3}],
    ["example.square", {"x": 4}],
    ["example.cube", {"x": 2}],
    ["example.error", {}],
]


def make_archive(workdir: Path, jobs: list, env: dict | None = None) -> list[str]:
    """Run ``jobs`` ([plugin, input] pairs) through the engine in a child process."""
    proc = subprocess.run(
        [sys.executable, "-c", ARCHIVE_SCRIPT, str(workdir), json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=60,
        # a crash of the process (a SIGABRT seen twice in 1,000 runs) shows its threads
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
    )
    assert proc.returncode == 0, (
        f"status {proc.returncode}: {proc.stderr[:4000]}...{proc.stderr[-3000:]}"
    )
    return json.loads(proc.stdout)


def reprocess(*args: str, env: dict | None = None, timeout: float = 60):
    """Run the installed ``dahu-reprocess``; the completed process."""
    return subprocess.run(
        [REPROCESS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def summary_of(*args: str, env: dict | None = None) -> tuple[int, dict, str]:
    """Run with ``--json``; exit status, parsed summary, stderr."""
    proc = reprocess("--json", *args, env=env)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def inputs(workdir: Path, ids: range) -> list[str]:
    """The archived ``.inp`` files of the jobs ``ids``."""
    return [str(next((workdir / "0000").glob(f"{i:05d}_*.inp"))) for i in ids]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A work directory where the example jobs 1-6 ran (4 squares, a cube, an error)."""
    workdir = tmp_path_factory.mktemp("archive") / "W"
    states = make_archive(workdir, EXAMPLES)
    assert states == ["success"] * 5 + ["failure"]
    return workdir


@pytest.fixture
def archive_copy(archive: Path, tmp_path: Path) -> Path:
    """A copy of the archive that a test may edit."""
    return Path(shutil.copytree(archive, tmp_path / "W"))


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A plugin directory with the module ``rptest`` (ramp, echo)."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "rptest.py").write_text(PLUGIN_MODULE)
    return directory


# ---- running -------------------------------------------------------------------------
def test_directory_runs_every_archived_job(archive: Path, tmp_path: Path):
    out = tmp_path / "out"
    status, summary, stderr = summary_of("-o", out, archive)
    assert status == 1  # example.error fails again
    assert summary["total"] == {
        **summary["total"],
        "jobs": 6,
        "success": 5,
        "failure": 1,
        "aborted": 0,
    }
    assert summary["plugins"]["example.square"]["success"] == 4
    assert summary["plugins"]["example.error"]["failure"] == 1
    assert summary["output_dir"] == str(out)
    assert [line for line in stderr.splitlines() if line] == [
        f"dahu-reprocess: {archive}/0000/00006_example.error.inp: "
        "job 6 failed: ValueError: this plugin always fails"
    ]
    # each run is recorded in the output directory's journal, with its .inp/.out files
    with sqlite3.connect(out / "journal.sqlite") as db:
        rows = db.execute("SELECT id, plugin, state FROM jobs ORDER BY id").fetchall()
    assert [r[2] for r in rows] == ["success"] * 5 + ["failure"]
    assert read_json(out / "0000/00003_example.square.out")["result"] == 9
    assert read_json(out / "0000/00005_example.cube.out")["result"] == 8
    new_input = read_json(out / "0000/00002_example.square.inp")
    assert new_input == {"x": 2, "plugin_name": "example.square", "job_id": 2}


def test_files_all_succeed(archive: Path, tmp_path: Path):
    proc = reprocess("-o", tmp_path / "out", *inputs(archive, range(2, 4)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].split() == [
        "plugin",
        "jobs",
        "success",
        "failure",
        "aborted",
        "total",
        "s",
        "mean",
        "ms",
    ]
    assert any(line.split()[:5] == ["example.square", "2", "2", "0", "0"] for line in lines)
    assert any(line.split()[:5] == ["total", "2", "2", "0", "0"] for line in lines)
    assert "2 job(s) in" in proc.stdout


def test_journal_ids(archive: Path, tmp_path: Path):
    status, summary, _ = summary_of("-o", tmp_path / "one", "--workdir", archive, "3")
    assert status == 0
    assert summary["total"]["jobs"] == 1
    assert read_json(tmp_path / "one/0000/00001_example.square.out")["result"] == 9

    status, summary, _ = summary_of("-o", tmp_path / "range", "--workdir", archive, "1-5")
    assert status == 0
    assert summary["total"]["success"] == 5
    assert summary["plugins"]["example.cube"]["success"] == 1

    # ids not in the journal: one line each, counted failed; the others still run
    status, summary, stderr = summary_of(
        "-o", tmp_path / "missing", "--workdir", archive, "2,99", "40-50"
    )
    assert status == 1
    assert summary["total"]["success"] == 1
    assert summary["total"]["failure"] == 2
    assert "job 99 is not in the journal" in stderr
    assert f"40-50: no job 40-50 is in the journal of {archive}" in stderr
    # bug: an id of 5,000 digits (a paste gone wrong) was a ValueError traceback
    status, summary, stderr = summary_of("-o", tmp_path / "m2", "--workdir", archive, "9" * 5000)
    assert (status, summary["total"]["failure"]) == (1, 1)
    cut = "99999999999999999999... (5000 characters)"
    assert stderr == f"dahu-reprocess: {cut}: no job {cut} is in the journal of {archive}\n"


def test_negative_journal_ids_count_back_from_the_newest_job(archive: Path, tmp_path: Path):
    # bug: "-1", the last job for "dahu-jobs show -1" and the device, was a file name:
    # "-1: no such file or directory"; a range of them, "-4--3", a usage error (an option)
    status, summary, stderr = summary_of(
        "-o", tmp_path / "out", "--workdir", archive, "-2", "-q", "-4--3", "-9,1--6"
    )  # (bug: SOURCEs after an option were "unrecognized arguments: -4--3 -9,1--6")
    assert stderr == f"dahu-reprocess: -9: job -9 is not in the journal of {archive}\n"
    assert (status, summary["total"]["success"], summary["total"]["failure"]) == (1, 4, 1)
    with sqlite3.connect(tmp_path / "out" / "journal.sqlite") as db:
        rows = db.execute("SELECT plugin, input FROM jobs ORDER BY id").fetchall()
    # -2: job 5 (the cube of 2); -4--3: jobs 3 and 4; 1--6: job 1 to the sixth last, 1
    ran = [(plugin, json.loads(text)["x"]) for plugin, text in rows]
    assert ran == [("example.cube", 2), *(("example.square", x) for x in (3, 4, 1))]


def test_journal_ids_without_journal(tmp_path: Path):
    (tmp_path / "no").mkdir()
    status, summary, stderr = summary_of("-o", tmp_path / "out", "--workdir", tmp_path / "no", "1")
    assert status == 1
    assert summary["total"]["failure"] == 1
    assert f"no journal in {tmp_path / 'no'}" in stderr
    assert not list((tmp_path / "no").iterdir())  # reading ids never creates a journal


def test_workdir_that_does_not_exist_is_refused(tmp_path: Path):
    # bug: a --workdir typo still made the output directory, with an empty journal
    proc = reprocess("-o", tmp_path / "out", "--workdir", tmp_path / "typo", "1-5")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        f"dahu-reprocess: error: work directory {tmp_path / 'typo'} does not exist"
    )
    assert proc.stdout == "" and not (tmp_path / "out").exists()
    # the same from $DAHU_WORKDIR
    env = {"DAHU_WORKDIR": str(tmp_path / "typo")}
    proc = reprocess("-o", tmp_path / "out", "1-5", env=env)
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (
        2,
        f"dahu-reprocess: error: job ids 1-5: no work directory {tmp_path / 'typo'} "
        "($DAHU_WORKDIR): give --workdir DIR",
    )
    assert not (tmp_path / "out").exists()


def test_directories_linked_from_a_source_are_searched(tmp_path: Path):
    # bug: a symbolic link to a directory of inputs (an archive of links to each day's
    # directory) was skipped: "no .inp or .json file in this directory"
    (tmp_path / "day1").mkdir()
    (tmp_path / "day1" / "a.inp").write_text('{"plugin_name": "example.square", "x": 2}')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "day1").symlink_to(tmp_path / "day1")
    (tmp_path / "src" / "same").symlink_to(tmp_path / "day1")  # the same directory: once
    (tmp_path / "src" / "day1" / "up").symlink_to(tmp_path / "src")  # a loop: no hang
    status, summary, stderr = summary_of("-o", tmp_path / "out", tmp_path / "src")
    assert status == 0, stderr
    assert summary["total"]["success"] == 1


def test_output_directory_that_is_a_source_is_refused(tmp_path: Path):
    # bug: -o SRC SRC ran the NNNN/*.inp files of the earlier runs again: 3, 6, 12 jobs...
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.inp").write_text('{"plugin_name": "example.square", "x": 2}')
    for output in (tmp_path / "src", f"{tmp_path}/src/."):  # also spelt otherwise
        proc = reprocess("-o", output, tmp_path / "src")
        assert proc.returncode == 2
        assert proc.stderr.splitlines()[-1] == (
            f"dahu-reprocess: error: the output directory {output} is also a SOURCE: the inputs "
            "its earlier runs wrote there would run again (give another -o)"
        )
    assert [p.name for p in (tmp_path / "src").iterdir()] == ["a.inp"]
    # ... or one of its directories of job files (a server's work directory, say)
    (tmp_path / "src" / "0000").mkdir()
    proc = reprocess("-o", tmp_path / "src", tmp_path / "src" / "0000")
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (
        2,
        f"dahu-reprocess: error: the output directory {tmp_path / 'src'} holds, in 0000/, "
        "a SOURCE: the inputs its earlier runs wrote there would run again (give another -o)",
    )
    (tmp_path / "src" / "0000").rmdir()
    # an output directory below the source is skipped, run after run
    for _ in range(2):
        status, summary, _ = summary_of("-o", tmp_path / "src" / "out", tmp_path / "src")
        assert status == 0 and summary["total"]["jobs"] == 1


def test_parallel_jobs(tmp_path: Path):
    sources = tmp_path / "in"
    sources.mkdir()
    for i in range(8):
        data = {"plugin_name": "example.sleep", "t": 0.3, "job_id": i + 1}
        (sources / f"{i:05d}_example.sleep.inp").write_text(json.dumps(data))
    status, summary, _ = summary_of("-j", "2", "-o", tmp_path / "out", sources)
    assert status == 0
    entry = summary["plugins"]["example.sleep"]
    assert entry["success"] == 8
    assert entry["runtime"] >= 8 * 0.3 * 0.95
    # two at a time: about half the serial time (generous bound)
    assert summary["wall_time"] < 0.8 * entry["runtime"]


def test_process_executor_gives_the_same_outputs(archive: Path, tmp_path: Path):
    out = tmp_path / "out"
    status, summary, _ = summary_of(
        "--executor", "process", "-j", "2", "--compare", "-o", out, archive
    )
    assert status == 1  # example.error fails again, as archived
    assert summary["total"]["success"] == 5 and summary["total"]["failure"] == 1
    assert read_json(out / "0000/00003_example.square.out")["result"] == 9
    assert summary["compare"]["differ"] == 0
    assert summary["compare"]["compared"] == 6


def test_bad_inputs_are_reported_and_counted(archive: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.json").write_text("this is { not JSON")
    (bad / "no_plugin.inp").write_text(json.dumps({"x": 1}))
    (bad / "number_plugin.inp").write_text(json.dumps({"plugin_name": 123}))
    (bad / "blank_plugin.inp").write_text(json.dumps({"plugin_name": "  ", "x": 1}))
    (bad / "unknown.inp").write_text(json.dumps({"plugin_name": "nosuch.plugin", "x": 1}))
    missing = tmp_path / "missing.inp"
    good = inputs(archive, range(1, 3))
    status, summary, stderr = summary_of("-o", tmp_path / "out", good[0], bad, missing, good[1])
    assert status == 1
    assert summary["total"]["success"] == 2
    assert summary["total"]["failure"] == 6
    assert summary["total"]["invalid"] == 6
    assert summary["plugins"]["nosuch.plugin"]["failure"] == 1
    lines = stderr.splitlines()
    assert len(lines) == 6, stderr
    by_source = {line.split(": ")[1]: line for line in lines}
    assert "not JSON" in by_source[str(bad / "garbage.json")]
    assert "no plugin_name" in by_source[str(bad / "no_plugin.inp")]
    # bug: a plugin_name that is not a string was "no plugin_name"
    assert "plugin_name is a JSON number" in by_source[str(bad / "number_plugin.inp")]
    # bug: an empty (or blank) one was "no plugin_name" too, where the file has one
    assert by_source[str(bad / "blank_plugin.inp")].endswith(
        ": not a job input: plugin_name is empty: expected 'module.name'"
    )
    assert "unknown plugin 'nosuch.plugin'" in by_source[str(bad / "unknown.inp")]
    assert "no such file or directory" in by_source[str(missing)]
    assert {e["source"] for e in summary["errors"]} == {
        str(bad / "garbage.json"),
        str(bad / "no_plugin.inp"),
        str(bad / "number_plugin.inp"),
        str(bad / "blank_plugin.inp"),
        str(bad / "unknown.inp"),
        str(missing),
    }


def test_many_inputs_keep_their_order_across_plugins_and_bad_inputs(tmp_path: Path):
    """More inputs than are loaded at a time, runs of one plugin then another, bad inputs
    among them: the new ids follow the inputs' order, each bad input gets its line."""
    sources = tmp_path / "in"
    sources.mkdir()
    plan = []  # (file name, plugin or None for a bad input, x)
    for i in range(40):
        if i in (5, 17, 18, 33):
            plan.append((f"{i:05d}_bad.inp", None, i))
        else:
            plan.append(
                (f"{i:05d}_job.inp", "example.cube" if 10 <= i < 25 else "example.square", i)
            )
    for name, plugin, x in plan:
        if plugin is None:
            text = "{ not JSON" if x % 2 else json.dumps({"plugin_name": "nosuch.plugin"})
        else:
            text = json.dumps({"plugin_name": plugin, "x": x, "job_id": 1000 + x})
        (sources / name).write_text(text)
    out = tmp_path / "out"
    status, summary, stderr = summary_of("-j", "2", "-o", out, sources)
    assert status == 1
    good = [(plugin, x) for _, plugin, x in plan if plugin is not None]
    assert summary["total"]["success"] == len(good) == 36
    assert summary["total"]["invalid"] == 4
    for job_id, (plugin, x) in enumerate(good, start=1):
        stem = out / "0000" / f"{job_id:05d}_{plugin}"
        assert read_json(f"{stem}.inp")["x"] == x
        assert read_json(f"{stem}.out")["result"] == (x**3 if plugin == "example.cube" else x**2)
    bad = [str(sources / name) for name, plugin, _ in plan if plugin is None]
    lines = stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == bad
    reasons = ["not JSON" if x % 2 else "unknown plugin 'nosuch.plugin'" for x in (5, 17, 18, 33)]
    assert all(reason in line for reason, line in zip(reasons, lines, strict=True))


def test_input_files_are_read_as_utf8_text(tmp_path: Path):
    """Windows newlines and a byte-order mark (a Windows editor's) are fine; bytes that
    are not UTF-8 are reported on their line, with the first one's offset."""
    sources = tmp_path / "in"
    sources.mkdir()
    (sources / "1_crlf.inp").write_bytes(b'{"plugin_name": "example.square",\r\n "x": 3}\r\n')
    (sources / "2_bom.inp").write_bytes(b'\xef\xbb\xbf{"plugin_name": "example.square"}')
    latin1 = b'{"plugin_name": "example.square", "t": "\xe9"}'
    (sources / "3_latin1.inp").write_bytes(latin1)
    status, summary, stderr = summary_of("-o", tmp_path / "out", sources)
    assert status == 1
    assert summary["total"]["success"] == 2 and summary["total"]["invalid"] == 1
    assert read_json(tmp_path / "out/0000/00001_example.square.out")["result"] == 9
    (line,) = stderr.splitlines()  # bug: the BOM was "not JSON: Unexpected UTF-8 BOM"
    offset = latin1.index(b"\xe9")
    assert line.endswith(
        f"3_latin1.inp: not UTF-8 text (JSON must be UTF-8): byte 0xe9 at offset {offset}"
    )


def test_quiet_prints_only_the_summary(archive: Path, tmp_path: Path):
    proc = reprocess("-q", "-o", tmp_path / "out", archive)
    assert proc.returncode == 1
    assert proc.stderr == ""  # the job failure is in the summary only
    assert proc.stdout.startswith("plugin")
    assert "example.error" in proc.stdout


def test_bad_usage_exits_2(tmp_path: Path, capsys):
    assert reprocess().returncode == 2
    assert reprocess("-j", "0", tmp_path).returncode == 2
    assert reprocess("--rtol", "-1", tmp_path).returncode == 2
    assert reprocess("--no-such-option", tmp_path).returncode == 2
    # the reason names what is wrong, not the program's own functions (_positive_int)
    for option, value, reason in [
        ("-j", "abc", "-j/--jobs: expected a whole number, not 'abc'"),
        ("--rtol", "abc", "--rtol: must be a finite number >= 0, not abc"),
    ]:
        proc = reprocess(option, value, tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.splitlines()[-1] == f"dahu-reprocess: error: argument {reason}"
    parser = reprocess_args.build_parser()
    # bug: more jobs at once than an engine has slots was a ValueError traceback, status 1,
    # after the output directory was made
    proc = reprocess("-j", "5000", "-o", tmp_path / "out", tmp_path)
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (
        2,
        "dahu-reprocess: error: argument -j/--jobs: must be at most 4096, not 5000",
    )
    assert not (tmp_path / "out").exists()
    # bug: so was -j 4096 --executor process (a worker process each, 20 MB when idle)
    proc = reprocess("-j", "4096", "--executor", "process", "-o", tmp_path / "out", tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.splitlines()[-1].startswith(
        "dahu-reprocess: error: argument -j/--jobs: 4096 is too many worker processes: each"
    )
    # bug: a pasted page of digits or text was quoted whole ("expected a whole number" for
    # 5,000 digits)
    for option, value, reason in [
        ("-j", "9" * 5000, "-j/--jobs: must be at most 4096, not '99999999999999999999'... (5000"),
        (
            "--rtol",
            "x" * 500,
            "--rtol: must be a finite number >= 0, not xxxxxxxxxxxxxxxxxxxx... (500",
        ),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args([option, value, "1"])
        line = capsys.readouterr().err.splitlines()[-1]
        assert line.startswith(f"dahu-reprocess: error: argument {reason} characters)")
    # bug: inf (or 1e400) was taken, and then every output compared the same
    for option in ("--rtol=inf", "--rtol=nan", "--atol=1e400", "--atol=-Infinity"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([option, "1"])
        assert info.value.code == 2
        name, value = option.split("=")
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"dahu-reprocess: error: argument {name}: must be a finite number >= 0, not {value}"
        )
    # bug: --workdir "$DIR" or -o "$DIR" with DIR unset meant the default directory
    for option in ("--workdir", "-o", "--plugins"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([option, "", "1"])
        assert info.value.code == 2
        assert "an empty name (an unset variable?)" in capsys.readouterr().err.splitlines()[-1]
    proc = reprocess("--plugins", tmp_path / "nowhere", tmp_path)
    assert proc.returncode == 2
    assert "plugin directory" in proc.stderr.splitlines()[-1]
    (tmp_path / "file").write_text("")
    assert reprocess("-o", tmp_path / "file", tmp_path).returncode == 2
    # an output directory that cannot be made (read-only disk...): one line, no traceback
    proc = reprocess("-o", tmp_path / "file" / "out", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"dahu-reprocess: error: cannot use the output directory {tmp_path}/file/out: "
        f"Not a directory: {tmp_path}/file/out"
    )


def test_default_output_is_a_new_work_directory(archive: Path, tmp_path: Path):
    status, summary, _ = summary_of(
        archive / "0000/00001_example.square.inp", env={"TMPDIR": str(tmp_path)}
    )
    assert status == 0
    out = Path(summary["output_dir"])
    assert out.parent.parent == tmp_path and out.parent.name.startswith("dahu_")
    assert (out / "journal.sqlite").is_file()


def test_progress_bar_only_on_a_terminal(archive: Path, tmp_path: Path):
    def stderr_on_tty(*args: str) -> str:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = subprocess.Popen(
            [REPROCESS, *map(str, args)], stdout=subprocess.DEVNULL, stderr=slave
        )
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            try:
                data = os.read(master, 4096) if ready else b""
            except OSError:  # the child closed the terminal
                data = b""
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert proc.wait(30) in (0, 1)
        return b"".join(chunks).decode(errors="replace")

    assert "6/6" in stderr_on_tty("-o", tmp_path / "a", archive)
    assert "6/6" not in stderr_on_tty("-q", "-o", tmp_path / "b", archive)
    assert "6/6" not in reprocess("-o", tmp_path / "c", archive).stderr


def test_reprocess_ignore_and_renumbering(plugins: Path, tmp_path: Path):
    env = {"DAHU_PLUGINS": str(plugins)}
    jobs = [["rptest.echo", {"x": 1}]] * 2 + [["rptest.echo", {"x": 3, "secret": "s"}]]
    make_archive(tmp_path / "W", jobs, env)
    archived = tmp_path / "W/0000/00003_rptest.echo.inp"
    assert read_json(archived)["secret"] == "s"
    status, summary, stderr = summary_of("--plugins", plugins, "-o", tmp_path / "out", archived)
    assert status == 0, stderr
    new_input = read_json(tmp_path / "out/0000/00001_rptest.echo.inp")
    assert new_input == {"x": 3, "plugin_name": "rptest.echo", "job_id": 1}
    assert read_json(tmp_path / "out/0000/00001_rptest.echo.out")["keys"] == [
        "job_id",
        "plugin_name",
        "x",
    ]
    # DAHU_PLUGINS works as well as --plugins
    status, _, _ = summary_of("-o", tmp_path / "out2", archived, env=env)
    assert status == 0


# ---- --compare -------------------------------------------------------------------------
def test_compare_same_outputs(archive: Path, tmp_path: Path):
    status, summary, _ = summary_of(
        "--compare", "-o", tmp_path / "a", *inputs(archive, range(1, 6))
    )
    assert status == 0
    assert summary["compare"]["compared"] == 5
    assert summary["compare"]["same"] == 5
    assert summary["compare"]["differ"] == 0

    status, summary, _ = summary_of("--compare", "-o", tmp_path / "b", "--workdir", archive, "1-5")
    assert status == 0
    assert summary["compare"]["same"] == 5


def test_compare_without_archive(tmp_path: Path):
    (tmp_path / "in.json").write_text(json.dumps({"plugin_name": "example.square", "x": 2}))
    status, summary, _ = summary_of("--compare", "-o", tmp_path / "out", tmp_path / "in.json")
    assert status == 0
    assert summary["compare"]["no_archive"] == 1
    assert summary["compare"]["compared"] == 0


def test_jobs_a_live_server_has_not_run_yet_are_not_counted_as_without_archive(tmp_path: Path):
    # bug: the ids of a live server's journal included its queued jobs: they were rerun
    # and counted "without archive", as if their jobs had given no output
    from dahu.app.reprocess_summary import format_summary
    from dahu.journal import SQLiteJournal

    workdir = tmp_path / "W"
    journal = SQLiteJournal(str(workdir))
    first, *queued = journal.create_many("example.square", [{"x": x} for x in (2, 3, 4)], 1.0)
    journal.finish(first, "success", {"result": 4, "logging": []}, None, 1.0, 2.0)
    journal.close()
    status, summary, stderr = summary_of(
        "--compare", "-o", tmp_path / "o", "--workdir", workdir, "1-3"
    )
    assert status == 0, stderr
    compare = summary["compare"]
    assert (compare["same"], compare["no_archive"], compare["unfinished_archive"]) == (1, 0, 2)
    assert (
        format_summary(summary)
        .splitlines()[-1]
        .endswith(
            "0 without archive, 2 whose job had not ended in the journal (queued or running: no archive)"
        )
    )


def test_a_journal_job_whose_plugin_name_has_blanks_runs_as_its_inp_file_does(tmp_path: Path):
    # bug: " example.square " (a job recorded with blanks around its name) failed "invalid
    # plugin name" when given by id, and ran when given by its .inp file
    from dahu.journal import SQLiteJournal

    journal = SQLiteJournal(str(tmp_path / "W"))
    journal.create_many(" example.square ", [{"x": 3}], 1.0)
    journal.close()
    status, summary, stderr = summary_of("-o", tmp_path / "o", "--workdir", tmp_path / "W", "1")
    assert (status, summary["total"]["success"]) == (0, 1), stderr
    assert list(summary["plugins"]) == ["example.square"]


def test_compare_differing_output(archive_copy: Path, tmp_path: Path):
    out_file = archive_copy / "0000/00002_example.square.out"
    out_file.write_text(json.dumps({"result": 5, "logging": []}))
    proc = reprocess("--compare", "-o", tmp_path / "out", *inputs(archive_copy, range(1, 6)))
    assert proc.returncode == 1
    text = proc.stdout
    assert "compared 5 output(s) with their archive: 4 the same, 1 differ" in text
    table = text.split("jobs that differ from their archive:")[1].splitlines()
    row = next(line for line in table if "00002_example.square.inp" in line)
    assert row.split()[0] == "2"
    assert "result" in row.split() and "5 != 4" in row

    status, summary, _ = summary_of("--compare", "-o", tmp_path / "j", *inputs(archive_copy, [2]))
    assert status == 1
    (difference,) = summary["compare"]["differences"]
    assert difference["key"] == "result"
    assert difference["plugin"] == "example.square"


def test_compare_journal_archive(archive_copy: Path, tmp_path: Path):
    with sqlite3.connect(archive_copy / "journal.sqlite") as db:
        db.execute("UPDATE jobs SET output = ? WHERE id = 4", ('{"result": 16, "extra": 1}',))
    status, summary, _ = summary_of(
        "--compare", "-o", tmp_path / "o", "--workdir", archive_copy, "1-5"
    )
    assert status == 1
    (difference,) = summary["compare"]["differences"]
    assert difference["source"] == "job 4"
    assert difference["key"] == "extra"


def test_compare_tolerances(archive_copy: Path, tmp_path: Path):
    out_file = archive_copy / "0000/00002_example.square.out"
    out_file.write_text(json.dumps({"result": 4.000001, "logging": []}))  # 2.5e-7 relative
    source = inputs(archive_copy, [2])

    def differs(*options: str) -> bool:
        status, summary, _ = summary_of("--compare", *options, "-o", tmp_path / "o", *source)
        assert status in (0, 1)
        return summary["compare"]["differ"] == 1

    assert not differs()  # default rtol 1e-6
    assert differs("--rtol", "0", "--atol", "0")
    assert differs("--rtol", "1e-7")
    assert not differs("--rtol", "0", "--atol", "1e-5")


def test_compare_hdf5_by_value(plugins: Path, tmp_path: Path):
    env = {"DAHU_PLUGINS": str(plugins)}
    files = tmp_path / "files"
    files.mkdir()
    make_archive(tmp_path / "W", [["rptest.ramp", {"x": 2, "outdir": str(files)}]], env)
    archived_h5 = read_json(tmp_path / "W/0000/00001_rptest.ramp.out")["file"]
    source = tmp_path / "W/0000/00001_rptest.ramp.inp"
    args = ["--compare", "--plugins", plugins, source]

    # a new file with the same values is the same, though its name and bytes differ
    status, summary, stderr = summary_of("-o", tmp_path / "a", *args)
    assert status == 0, stderr
    assert summary["compare"]["same"] == 1

    with h5py.File(archived_h5, "r+") as h5:
        h5["entry/data"][3] = 6 * (1 + 1e-9)
    status, summary, _ = summary_of("-o", tmp_path / "b", *args)
    assert status == 0
    status, summary, _ = summary_of("--rtol", "0", "--atol", "0", "-o", tmp_path / "c", *args)
    assert status == 1
    assert summary["compare"]["differences"][0]["key"] == "file:/entry/data[3]"

    with h5py.File(archived_h5, "r+") as h5:
        h5["entry/data"][7] = -1
        h5["entry/data"][3] = 6
    proc = reprocess("-o", tmp_path / "d", *args)
    assert proc.returncode == 1
    assert "file:/entry/data[7]" in proc.stdout
    # a member named with --ignore is not compared
    status, _, _ = summary_of("--ignore", "data", "-o", tmp_path / "e", *args)
    assert status == 0


def test_pyfai_jobs_write_new_files_and_an_unchanged_rerun_compares_the_same(tmp_path: Path):
    """The built-in pyfai.integratemanyframes drops output_file and output_dir when
    reprocessed (REPROCESS_IGNORE): the archived results are left alone, even another
    job's of the same output_dir; its REPROCESS_COMPARE_IGNORE skips what changes on every
    run (timings, time stamps, the recorded input), so no --ignore is needed."""
    data = make_dataset(tmp_path / "data", 4, (64, 64), seed=3, edf=False)
    results = tmp_path / "results"
    common = {"poni_file": data["poni_file"], "npt": 50}
    stack = data["hdf5_dataset"]
    jobs = [
        ["pyfai.integratemanyframes", {**common, "input_files": stack, "output_file": str(results / "scan1.h5")}],
        ["pyfai.integratemanyframes", {**common, "input_files": stack + "[0:2]", "output_dir": str(results)}],
        ["pyfai.integratemanyframes", {**common, "input_files": stack + "[2:4]", "output_dir": str(results)}],
        ["pyfai.integratemanyframes", {**common, "input_files": stack}],
        ["pyfai.integratemanyframes", {**common, "input_files": stack, "npt_azim": 8, "method": "bbox,csr"}],
    ]  # fmt: skip
    archive = tmp_path / "W"
    assert make_archive(archive, jobs) == ["success"] * 5
    archived = sorted(results.glob("*.h5")) + sorted(archive.glob("0000/*.h5"))
    assert len(archived) == 5

    def digests() -> list[str]:
        return [hashlib.sha256(path.read_bytes()).hexdigest() for path in archived]

    before = digests()
    status, summary, stderr = summary_of(
        "--compare", "-o", tmp_path / "a", "--workdir", archive, "1-5"
    )
    assert status == 0, (stderr, summary["compare"]["differences"])
    assert (summary["compare"]["same"], summary["compare"]["differ"]) == (5, 0)
    assert digests() == before  # no archived result was written over
    new_files = sorted((tmp_path / "a/0000").glob("*.h5"))
    assert [path.name[:5] for path in new_files] == ["00001", "00002", "00003", "00004", "00005"]
    new_output = read_json(tmp_path / "a/0000/00001_pyfai.integratemanyframes.out")
    assert new_output["output_file"] == str(new_files[0])

    # a real change is still reported: the archived intensities of job 1 doubled...
    with h5py.File(results / "scan1.h5", "r+") as h5:
        h5["entry/integrated/intensity"][...] *= 2
    # ... and pyFAI's 2D full splitting changes a few bins from run to run (docs/pyfai.md):
    # job 5's archive with one bin as another run gave it differs...
    with h5py.File(archived[-1], "r+") as h5:
        h5["entry/integrated/intensity"][0, 3, 40] *= 1.5
    status, summary, _ = summary_of("--compare", "-o", tmp_path / "b", "--workdir", archive, "1-5")
    assert status == 1
    assert [d["job_id"] for d in summary["compare"]["differences"]] == [1, 5]
    difference = summary["compare"]["differences"][0]
    assert difference["key"].startswith("output_file:/entry/integrated/intensity")
    # ... unless the intensities are skipped, as documented: the rest is still compared
    args = ["--compare", "--ignore", "intensity", "-o", tmp_path / "d", "--workdir", archive]
    status, summary, _ = summary_of(*args, "5")
    assert (status, summary["compare"]["same"]) == (0, 1)
    # ... and a rerun with another npt than the archived job's
    source = Path(inputs(archive, [4])[0])
    source.write_text(json.dumps({**read_json(source), "npt": 60}))
    status, summary, _ = summary_of("--compare", "-o", tmp_path / "c", source)
    assert status == 1
    assert summary["compare"]["differ"] == 1


# ---- Ctrl-C -----------------------------------------------------------------------------
def test_pyfai_curves_of_a_rerun_go_to_the_output_directory(tmp_path: Path):
    """pyfai.integrate_simple's curve_file is required (REPROCESS_IGNORE cannot drop it):
    its REPROCESS_RELOCATE moves a rerun's curve under the output directory, keeping its
    name, and the comparison reads both curves as tables (their headers name their own
    paths)."""
    # bug: the rerun wrote over the archived curve, then compared it with itself
    data = make_dataset(tmp_path / "data", 2, (64, 64), seed=5, edf=False)
    results = tmp_path / "results"
    common = {"poni_file": data["poni_file"], "image_file": data["hdf5_dataset"], "npt": 40}
    jobs = [
        ["pyfai.integrate_simple", {**common, "curve_file": str(results / "one.dat")}],
        ["pyfai.integrate_simple", {**common, "curve_file": str(results / "sub/one.dat")}],
    ]
    archive = tmp_path / "W"
    assert make_archive(archive, jobs) == ["success"] * 2
    archived = [results / "one.dat", results / "sub/one.dat"]
    before = [(path.read_bytes(), path.stat().st_mtime_ns) for path in archived]
    status, summary, stderr = summary_of(
        "--compare", "-o", tmp_path / "a", "--workdir", archive, "1-2"
    )
    assert status == 0, (stderr, summary["compare"]["differences"])
    assert (summary["compare"]["same"], summary["compare"]["differ"]) == (2, 0)
    assert [(path.read_bytes(), path.stat().st_mtime_ns) for path in archived] == before
    assert "pyOpenCl" not in stderr  # silx's warning when pyFAI is imported: noise here
    new = [
        Path(
            read_json(tmp_path / f"a/0000/0000{i}_pyfai.integrate_simple.out")["result"]["out_file"]
        )
        for i in (1, 2)
    ]
    assert new[0] != new[1] and [path.name for path in new] == ["one.dat", "one.dat"]
    assert all(path.is_relative_to(tmp_path / "a/relocated") and path.is_file() for path in new)
    assert numpy.array_equal(numpy.loadtxt(new[0]), numpy.loadtxt(archived[0]))

    # a real change is still reported, as a number of the curve
    lines = archived[1].read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    radial, intensity = lines[row].split()
    lines[row] = f"{radial} {float(intensity) * 2 + 1:e}"
    archived[1].write_text("\n".join(lines) + "\n")
    status, summary, _ = summary_of("--compare", "-o", tmp_path / "b", "--workdir", archive, "1-2")
    assert status == 1
    (difference,) = summary["compare"]["differences"]
    assert (difference["job_id"], difference["key"]) == (2, "result.out_file[0][1]")


def start_run(*args: str) -> subprocess.Popen:
    """``dahu-reprocess --json ARGS`` in the background."""
    command = [REPROCESS, "--json", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupted_run(out: Path, plugin: str, *args: str) -> tuple[int, str, str]:
    """``dahu-reprocess --json -o OUT ARGS``, Ctrl-C once a job of ``plugin`` runs: its
    exit status, stdout and stderr."""
    proc = start_run("-o", str(out), *args)
    try:
        wait_running(out, plugin)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr


def wait_running(out: Path, plugin: str, timeout: float = 30, wanted: str = "running") -> None:
    """Return once the output journal shows a job of ``plugin`` running (or ``wanted``)."""
    deadline = time.monotonic() + timeout
    state = None
    while state != wanted and time.monotonic() < deadline:
        if (out / "journal.sqlite").is_file():
            with sqlite3.connect(f"file:{out / 'journal.sqlite'}?mode=ro", uri=True) as db:
                try:
                    row = db.execute("SELECT state FROM jobs WHERE plugin = ?", (plugin,))
                    state = (row.fetchone() or [None])[0]
                except sqlite3.OperationalError:  # schema not written yet
                    pass
        time.sleep(0.05)
    assert state == wanted, f"no {plugin} job {wanted}"


def test_ctrl_c_aborts_and_prints_the_summary(tmp_path: Path):
    sources = tmp_path / "in"
    sources.mkdir()
    for i in range(6):
        data = {"plugin_name": "example.sleep", "t": 60}
        (sources / f"{i:05d}_example.sleep.inp").write_text(json.dumps(data))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [REPROCESS, "--json", "-j", "2", "-o", str(out), str(sources)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        count = 0
        while count < 2 and time.monotonic() < deadline:  # wait for jobs to be recorded
            if (out / "journal.sqlite").is_file():
                uri = f"file:{out / 'journal.sqlite'}?mode=ro"
                with sqlite3.connect(uri, uri=True) as db:
                    try:
                        count = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
                    except sqlite3.OperationalError:  # schema not written yet
                        count = 0
            time.sleep(0.05)
        assert count >= 2
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - started < 20  # the 60 s jobs were aborted, not waited for
    assert proc.returncode == 130
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    total = summary["total"]
    assert total["success"] == 0
    assert total["aborted"] >= 2
    assert total["aborted"] + summary["not_started"] == 6
    assert "interrupted" in stderr
    with sqlite3.connect(out / "journal.sqlite") as db:
        states = {s for (s,) in db.execute("SELECT state FROM jobs")}
    assert states == {"aborted"}


def test_ctrl_c_aborts_the_queued_jobs_without_running_them(tmp_path: Path):
    # bug: the running jobs were aborted first; each freed slot started a queued job, so
    # jobs the user interrupted ran (and succeeded) after the Ctrl-C
    sources = tmp_path / "in"
    sources.mkdir()
    (sources / "00000_example.sleep.inp").write_text(
        json.dumps({"plugin_name": "example.sleep", "t": 60})
    )
    for i in range(1, 41):
        data = {"plugin_name": "example.square", "x": i}
        (sources / f"{i:05d}_example.square.inp").write_text(json.dumps(data))
    out = tmp_path / "out"
    status, stdout, stderr = interrupted_run(out, "example.sleep", "-j", "1", str(sources))
    assert status == 130, stderr
    total = json.loads(stdout)["total"]
    assert total["success"] == 0, "jobs queued at the Ctrl-C ran"
    # the mean runtime is that of the one job that ran (it divided by all 41: 41x too low)
    assert total["ran"] == 1 and total["runtime"] > 0
    assert total["mean"] == pytest.approx(total["runtime"])
    with sqlite3.connect(out / "journal.sqlite") as db:
        states = {s for (s,) in db.execute("SELECT state FROM jobs")}
    assert states == {"aborted"}


SLOW_IMPORT = """
import pathlib, time
pathlib.Path(__file__).with_name("importing").touch()
time.sleep(120)  # heavy imports, a slow network disk

from dahu.plugin import plugin_from_function

def f(x=0):
    return x

plugin_from_function(f)
"""


def test_ctrl_c_while_a_plugin_module_is_imported(tmp_path: Path):
    # bug: the first Ctrl-C said nothing until the import ended; the second became
    # "cannot load plugin 'slowimp.f': KeyboardInterrupt", an input counted as failed;
    # one Ctrl-C now stops the import
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slowimp.py").write_text(SLOW_IMPORT)
    sources = tmp_path / "in"
    sources.mkdir()
    for i in range(3):
        (sources / f"{i}.inp").write_text(json.dumps({"plugin_name": "slowimp.f", "x": i}))
    proc = start_run("--plugins", str(plugins), "-o", str(tmp_path / "out"), str(sources))
    try:
        deadline = time.monotonic() + 30
        while not (plugins / "importing").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no import began"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        first = proc.stderr.readline()  # said at once
        assert first == "dahu-reprocess: interrupted\n"
        # the import stops there: its inputs would not start (until 2026-11-30 it went
        # on until a second Ctrl-C, tests/test_reprocess_user.py)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "cannot load plugin" not in stderr and "KeyboardInterrupt" not in stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    assert summary["total"]["jobs"] == 0 and summary["not_started"] == 3


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_plugins_raising_base_exceptions_fail_their_jobs(tmp_path: Path, executor: str):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "trouble.py").write_text(TROUBLE_PLUGINS)
    sources = tmp_path / "in"
    sources.mkdir()
    for i, (what, where, _) in enumerate(BASE_EXCEPTIONS * 2):  # more jobs than slots
        data = {"plugin_name": "trouble.raise", "what": what, "where": where}
        (sources / f"{i:05d}_trouble.raise.inp").write_text(json.dumps(data))
    args = ["-j", "2", "--executor", executor, "--plugins", plugins, "-o", tmp_path / "out"]
    status, summary, stderr = summary_of(*args, sources)
    assert status == 1, stderr
    assert summary["total"]["failure"] == 2 * len(BASE_EXCEPTIONS)
    for *_, line in BASE_EXCEPTIONS:
        assert line in stderr


def test_one_sigterm_ends_a_run_whose_plugin_ignores_abort(tmp_path: Path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "trouble.py").write_text(TROUBLE_PLUGINS)
    sources = tmp_path / "in"
    sources.mkdir()
    (sources / "00001_trouble.hang.inp").write_text(json.dumps({"plugin_name": "trouble.hang"}))
    data = {"plugin_name": "trouble.raise", "what": "SystemExit"}
    (sources / "00002_trouble.raise.inp").write_text(json.dumps(data))
    out = tmp_path / "out"
    proc = start_run("-j", "2", "--plugins", str(plugins), "-o", str(out), str(sources))
    try:
        wait_running(out, "trouble.hang")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # once
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - started < 30
    assert proc.returncode == 130
    total = json.loads(stdout)["total"]
    assert total["aborted"] == 1 and total["failure"] == 1


def test_a_thread_a_plugin_leaves_running_does_not_keep_the_tool_alive(tmp_path: Path):
    # bug: Python waits for every non-daemon thread at exit, so the run printed its
    # summary and then never ended
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "trouble.py").write_text(TROUBLE_PLUGINS)
    source = tmp_path / "00001_trouble.linger.inp"
    source.write_text(json.dumps({"plugin_name": "trouble.linger"}))
    started = time.monotonic()
    proc = reprocess("--json", "--plugins", plugins, "-o", tmp_path / "out", source, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"]["success"] == 1
    assert time.monotonic() - started < 30
    assert "exiting without waiting for 1 thread(s) that plugins left running" in proc.stderr
    assert "linger-monitor" in proc.stderr


# ---- dahu.compare, in process -------------------------------------------------------------
def test_compare_module_paths_and_reasons(tmp_path: Path):
    assert compare({"a": [1, 2.0]}, {"a": [1.0, 2]}) is None
    assert compare({"a": {"b": [[1, 2], [3, 4]]}}, {"a": {"b": [[1, 2], [3, 5]]}}) == "a.b[1][1]"
    assert compare({"a": 1}, {"a": 1, "b": 2}) == "b"
    assert compare({"a": 1, "b": 2}, {"a": 1}) == "b"
    assert compare({"a": [1, 2]}, {"a": [1, 2, 3]}) == "a"
    assert compare({"a": "x"}, {"a": 1}) == "a"
    assert compare({"a": True}, {"a": 1}) == "a"
    # bug: a boolean among numbers in a list was compared as a number ([1, True] == [1, 1])
    assert compare({"a": [1, True]}, {"a": [1, 1]}) == "a[1]"
    assert compare({"a": [[0.5, False]]}, {"a": [[0.5, 0]]}) == "a[0][1]"
    assert compare({"a": [[0.5, False]]}, {"a": [[0.5, False]]}) is None
    assert compare({"v": float("nan")}, {"v": float("nan")}) is None
    assert compare({"job_id": 1}, {"job_id": 2}) is None
    assert compare({"t": 1.0}, {"t": 2.0}, ignore={"t"}) is None
    assert compare({"v": 0.0}, {"v": 1e-13}) is None
    assert compare({"v": 100.0}, {"v": 100.01}, rtol=1e-3) is None
    difference = first_difference({"a": [1, "x"]}, {"a": [1, "y"]})
    assert (difference.path, difference.reason) == ("a[1]", "'x' != 'y'")

    one, two, three = (tmp_path / n for n in ("1.txt", "2.txt", "3.txt"))
    one.write_bytes(b"hello")
    two.write_bytes(b"hello")
    three.write_bytes(b"help!")
    assert compare({"f": str(one)}, {"f": str(two)}) is None
    assert first_difference({"f": str(one)}, {"f": str(three)}).reason == (
        "file contents differ at byte 3"
    )
    assert compare({"f": str(one)}, {"f": str(three)}, files=False) == "f"

    # text files of numbers (pyFAI's curves) compare as tables: their comment lines,
    # which hold the file's own path and the date, are skipped
    curves = [tmp_path / f"curve{i}.dat" for i in range(5)]
    rows = "  1.0e-01  4.35e+01\n  2.0e-01  4.03e+01\n"
    curves[0].write_text(f"# --> {curves[0]}\n#2th_deg  I\n{rows}")
    curves[1].write_text(f"# --> {curves[1]}\n# another date\n#2th_deg  I\n{rows}\n")
    curves[2].write_text(f"# --> {curves[2]}\n{rows.replace('4.03e+01', '4.13e+01')}")
    curves[3].write_text(f"# --> {curves[3]}\n{rows}  3.0e-01  3.9e+01\n")
    curves[4].write_text(f"# --> {curves[4]}\n{rows}end\n")
    assert compare_files(str(curves[0]), str(curves[1])) is None
    assert compare_files(str(curves[0]), str(curves[1]).replace("1.dat", "0.dat")) is None
    difference = first_difference({"out": str(curves[0])}, {"out": str(curves[2])})
    assert (difference.path, difference.reason) == ("out[1][1]", "40.3 != 41.3")
    assert compare({"out": str(curves[0])}, {"out": str(curves[2])}, rtol=0.05) is None
    assert compare_files(str(curves[0]), str(curves[3])).reason == (
        "table of 2 rows x 2 columns != 3 rows x 2 columns"
    )
    assert compare_files(str(curves[0]), str(curves[4])).reason.startswith("file ")

    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path, value in ((a, 1.0), (b, 2.0)):
        with h5py.File(path, "w") as h5:
            data = numpy.zeros((4, 3))
            data[2, 1] = value
            h5["g/d"] = data
            h5["g/s"] = "text"
            h5["g/link"] = h5py.SoftLink("/g/d")
    difference = compare_files(str(a), str(b))
    assert (difference.path, difference.reason) == ("/g/d[2][1]", "1.0 != 2.0")
    assert compare_files(str(a), str(a)) is None
    assert compare_files(str(a), str(one)).reason == "the archived file is HDF5, the new one is not"


def test_bench_runs_small(tmp_path: Path):
    """The benchmark's figures, and its turns with an "original" tool (here a stand-in
    that records each call: the real one is not installed in the test environment)."""
    original = tmp_path / "original" / "bin"
    original.mkdir(parents=True)
    (original / "python").symlink_to(os.path.realpath(sys.executable))
    calls = tmp_path / "calls"
    calls.mkdir()
    (original / "dahu-reprocess").write_text(
        "import os, sys, time\n"
        "assert sys.argv[1:] and all(a.endswith('.inp') for a in sys.argv[1:])\n"
        f"open(os.path.join({str(calls)!r}, str(time.monotonic_ns())), 'w').close()\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/reprocess.py"),
            "--small",
            "--original",
            str(original / "python"),
            "--repeat",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(list(calls.iterdir())) == 2  # one call a turn, every input file given
    ours, theirs = result["j1_runs_with_startup"], result["original_runs_with_startup"]
    assert len(ours) == len(theirs) == 2 and min(ours + theirs) > 0
    steal = result["j1_runs_steal_percent"] + result["original_runs_steal_percent"]
    assert len(steal) == 4 and all(0 <= value <= 100 for value in steal)  # each turn's
    median = statistics.median
    assert result["j1_vs_original"] == round(median(ours) / median(theirs), 3)
    assert result["jobs"] == 50
    assert result["j1"]["jobs_per_s"] > 0 and result["j2"]["jobs_per_s"] > 0
    assert result["sleep_5ms"]["jobs"] == 40 and result["sleep_5ms"]["j2_over_j1"] > 0
    numpy_work = result["numpy_5ms"]
    assert numpy_work["jobs"] == 40 and numpy_work["rounds"] >= 1
    assert numpy_work["j1"]["jobs_per_s"] > 0 and numpy_work["j2"]["jobs_per_s"] > 0
    assert numpy_work["bare_2_threads_speedup"] > 0


def test_a_quiet_run_imports_neither_numpy_nor_the_table_and_bar_modules(tmp_path: Path):
    """Start-up: a ``-q --json`` run of plain inputs needs none of the slow imports."""
    source = tmp_path / "00001_example.square.inp"
    source.write_text(json.dumps({"plugin_name": "example.square", "x": 3}))
    script = (
        "import sys\n"
        "from dahu.app.reprocess import main\n"
        f"status = main(['-q', '--json', '-o', {str(tmp_path / 'out')!r}, {str(source)!r}])\n"
        "slow = {'numpy', 'tabulate', 'tqdm', 'importlib.metadata', 'socket', 'tempfile'}\n"
        "slow = sorted((slow | {'cProfile', 'getpass'}) & set(sys.modules))\n"
        "print(status, slow, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stderr.splitlines()[-1] == "0 []"
    assert json.loads(proc.stdout)["total"]["success"] == 1
    out = tmp_path / "out" / "0000"
    assert read_json(next(out.glob("*.out")))["result"] == 9


def test_bench_numpy_plugin_runs_as_a_job(tmp_path: Path):
    """bench/plugins/benchwork.py: numpy ufuncs, the same checksum for the same input."""
    sources = tmp_path / "in"
    sources.mkdir()
    for i in range(2):
        data = {"plugin_name": "benchwork.ufuncs", "size": 1000, "rounds": 3, "x": i}
        (sources / f"{i:05d}_benchwork.ufuncs.inp").write_text(json.dumps(data))
    out = tmp_path / "out"
    status, summary, stderr = summary_of(
        "-j", "2", "--plugins", ROOT / "bench" / "plugins", "-o", out, sources
    )
    assert status == 0, stderr
    assert summary["plugins"]["benchwork.ufuncs"]["success"] == 2
    first, second = (read_json(out / f"0000/0000{i}_benchwork.ufuncs.out") for i in (1, 2))
    assert first["result"]["rounds"] == 3 and first["result"]["size"] == 1000
    values = numpy.linspace(0.0, 1.0, 1000)
    expected = sum((step + 1.0) * numpy.sin(values) for step in range(3)).sum()
    assert first["result"]["checksum"] == second["result"]["checksum"]
    assert first["result"]["checksum"] == pytest.approx(expected)


def test_main_in_process_help_and_version(capsys):
    from dahu.app.reprocess import main

    assert main(["--version"]) == 0
    assert "dahu-reprocess" in capsys.readouterr().out
    assert main([]) == 2


def test_a_full_output_disk_is_reported_and_fails_the_run(tmp_path):
    # bug: the journal refused records and outcomes; dahu-reprocess printed a traceback
    # (a record refused) or claimed success with exit status 0 (outcomes refused)
    inputs, plugins = tmp_path / "inputs", tmp_path / "plugins"
    inputs.mkdir()
    plugins.mkdir()
    (plugins / "big.py").write_text(
        "def blob(n):\n    return 'y' * n\n\n"
        "from dahu.plugin import plugin_from_function\nplugin_from_function(blob)\n"
    )
    for i, n in enumerate([10] * 20 + [20000] * 200):  # small inputs, then big outputs
        text = json.dumps({"plugin_name": "big.blob", "n": n})
        (inputs / f"{i:03d}.inp").write_text(text)

    def small_files():  # in the child: files may not grow past 1 MB (as a full disk)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [REPROCESS, "--json", "--plugins", str(plugins), "-o", str(tmp_path / "out"), str(inputs)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "cannot write the journal" in proc.stderr
    # which writes the disk refuses depends on how they were batched; what the run says
    # must add up: a success it counts is in the journal, or said to be lost
    told = json.loads(proc.stdout)["total"]["success"]
    lost = re.search(r"(\d+) outcome\(s\) could not be recorded in the journal", proc.stderr)
    with contextlib.closing(sqlite3.connect(tmp_path / "out" / "journal.sqlite")) as db:
        recorded = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'success'").fetchone()[0]
    assert told == recorded + (int(lost.group(1)) if lost else 0), proc.stderr[-2000:]
    assert lost or told < 220  # the full disk shows: inputs not run, or outcomes lost
