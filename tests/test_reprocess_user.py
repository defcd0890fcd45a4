"""``dahu-reprocess`` as a beamline user meets it: plugins written the plain way (an
output JSON cannot hold, a result file at a path of their input, an ``abort()`` that
blocks) and the command's output read by other programs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_reprocess import (
    REPROCESS,
    interrupted_run,
    make_archive,
    reprocess,
    start_run,
    summary_of,
    wait_running,
)

USER_PLUGINS = '''
"""Plugins written as a beamline user writes them."""
import threading
import time

import numpy

from dahu.factory import register
from dahu.plugin import Plugin


@register
class Histogram(Plugin):
    """Counts keyed by numpy integers (JSON keys must be str), and an object."""

    def process(self):
        values = numpy.array(self.input.get("values", [1, 2, 2]))
        counts = zip(*numpy.unique(values, return_counts=True))
        self.output["counts"] = {k: int(n) for k, n in counts}


@register
class Write(Plugin):
    """Write x to the file out_file (whose directory existed when the job first ran)."""

    REPROCESS_RELOCATE = ["out_file"]

    def process(self):
        with open(self.input["out_file"], "w") as handle:
            handle.write(f"{self.input['x']}\\n")
        self.output["out_file"] = self.input["out_file"]


@register
class Save(Plugin):
    """Write x to result.txt in the directory output_dir (which existed when it first ran)."""

    REPROCESS_RELOCATE = ["output_dir"]

    def process(self):
        path = f"{self.input['output_dir']}/result.txt"
        with open(path, "w") as handle:
            handle.write(f"{self.input['x']}\\n")
        self.output["file"] = path
        self.output["dir"] = self.input["output_dir"]


@register
class Locked(Plugin):
    """Holds a lock while it works; abort() takes that lock, so it blocks meanwhile."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.stop = False

    def process(self):
        with self.lock:
            time.sleep(self.input.get("t", 60))

    def abort(self):
        with self.lock:
            self.stop = True
'''


def user_plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "user.py").write_text(USER_PLUGINS)
    return directory


def write_inputs(directory: Path, *inputs: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(inputs, 1):
        (directory / f"{i:05d}_{data['plugin_name']}.inp").write_text(json.dumps(data))
    return directory


def test_an_unchanged_rerun_of_an_output_json_cannot_hold_compares_the_same(tmp_path: Path):
    # bug: --compare encoded the new output without the fallback the .out file uses (the
    # text of what JSON refuses): "reprocessing error: keys must be str, int..." as a
    # difference, and a traceback on stderr
    plugins = user_plugins(tmp_path)
    sources = write_inputs(tmp_path / "in", {"plugin_name": "user.histogram"})
    status, _, stderr = summary_of("--plugins", plugins, "-o", tmp_path / "a", sources)
    assert status == 0, stderr
    archived = tmp_path / "a"
    status, summary, stderr = summary_of(
        "--compare", "--plugins", plugins, "-o", tmp_path / "b", archived
    )
    assert summary["compare"]["differences"] == []
    assert (status, summary["compare"]["same"]) == (0, 1), stderr
    assert "Traceback" not in stderr


def test_relocated_paths_have_their_directory_made(tmp_path: Path):
    # bug: REPROCESS_RELOCATE gave the path a directory nobody made, so a plugin that
    # writes its file where its input says (as it did when the job first ran) failed
    plugins = user_plugins(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    inputs = [
        {"plugin_name": "user.write", "x": x, "out_file": str(data / "r.txt")} for x in (1, 2)
    ]
    sources = write_inputs(tmp_path / "in", *inputs)
    out = tmp_path / "out"
    status, summary, stderr = summary_of("--plugins", plugins, "-o", out, sources)
    assert (status, summary["total"]["success"]) == (0, 2), stderr
    written = sorted((out / "relocated").glob("*/*/r.txt"))
    assert [path.read_text() for path in written] == ["1\n", "2\n"]
    assert not (data / "r.txt").exists()


def test_a_relocated_directory_is_made(tmp_path: Path):
    # bug: a key naming a directory (output_dir) was given a new path inside the job's new
    # directory, but nothing made it: the plugin writing a file in it failed
    plugins = user_plugins(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    sources = write_inputs(
        tmp_path / "in", {"plugin_name": "user.save", "x": 7, "output_dir": f"{data}/"}
    )
    out = tmp_path / "out"
    status, summary, stderr = summary_of("--plugins", plugins, "-o", out, sources)
    assert (status, summary["total"]["success"]) == (0, 1), stderr
    (written,) = (out / "relocated").glob("*/*/data/result.txt")
    assert written.read_text() == "7\n"
    assert not list(data.iterdir())


def test_a_relocated_directory_in_the_output_compares_the_same(tmp_path: Path):
    # bug: the output naming its relocated output_dir made every rerun differ
    plugins = user_plugins(tmp_path)
    (tmp_path / "data").mkdir()
    job = {"plugin_name": "user.save", "x": 7, "output_dir": f"{tmp_path / 'data'}/"}
    sources = write_inputs(tmp_path / "in", job)
    status, _, stderr = summary_of("--plugins", plugins, "-o", tmp_path / "a", sources)
    assert status == 0, stderr
    args = ("--compare", "--plugins", plugins, "-o", tmp_path / "b", tmp_path / "a")
    status, summary, stderr = summary_of(*args)
    assert (status, summary["compare"]["same"]) == (0, 1), summary["compare"]
    # what is in the directory is still compared
    (plugins / "user.py").write_text(USER_PLUGINS.replace("{self.input['x']}", "x"))
    status, summary, _ = summary_of(*args[:-3], tmp_path / "c", tmp_path / "a")
    (difference,) = summary["compare"]["differences"]
    assert difference["key"] == "file"


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path):
    # bug: `dahu-reprocess --json ... | head -1` ended in a BrokenPipeError traceback
    sources = write_inputs(tmp_path / "in", *[{"plugin_name": "nope.x"} for _ in range(2000)])
    command = (
        f"'{REPROCESS}' -q --json -o '{tmp_path / 'out'}' '{sources}' 2>'{tmp_path}/err' | head -1"
    )
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == "{\n"
    stderr = (tmp_path / "err").read_text()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    assert proc.returncode == 1  # the inputs could not be run, whoever reads the summary


def test_one_sigterm_ends_a_run_whose_plugin_abort_blocks(tmp_path: Path):
    # bug: the plugin's abort() ran in the main thread; one that blocks (it waits for a
    # lock process() holds) kept a SIGTERMed run waiting for ever
    plugins = user_plugins(tmp_path)
    sources = write_inputs(tmp_path / "in", {"plugin_name": "user.locked", "t": 600})
    out = tmp_path / "out"
    proc = start_run("--plugins", str(plugins), "-o", str(out), str(sources))
    try:
        wait_running(out, "user.locked")
        started = time.monotonic()
        proc.terminate()  # once
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - started < 30
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    # its plugin's thread is abandoned after the abort grace: the job still gets its state
    assert summary["interrupted"] and summary["still_running"] == 0
    assert summary["total"]["aborted"] == 1


SIGNAL_WHILE_LISTING = """
import os, signal, sys, time
import dahu.app.reprocess as reprocess

SIGNAL = getattr(signal, sys.argv.pop(1))

def expand_sources(*args, **kwargs):  # a long walk of a large archive, signalled
    os.kill(os.getpid(), SIGNAL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return []

reprocess.expand_sources = expand_sources
reprocess.cli()
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_sources_are_listed_ends_the_run_as_interrupted(
    tmp_path: Path, name: str
):
    # bug: the run's handlers came once the inputs were listed (a long walk of a large
    # archive): a Ctrl-C then was a KeyboardInterrupt traceback, a SIGTERM killed it silently
    command = [sys.executable, "-c", SIGNAL_WHILE_LISTING, name, "-o", str(tmp_path / "o"), "x"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "dahu-reprocess: interrupted\n"


def test_an_archived_file_that_cannot_be_read_is_a_one_line_difference(tmp_path: Path):
    # bug: a truncated archived HDF5 file (the disk filled up when the job first ran)
    # made h5py raise: a traceback per job on stderr, "reprocessing error: ..." as reason
    plugins = user_plugins(tmp_path)
    (plugins / "h5.py").write_text(
        "import h5py\nfrom dahu.plugin import plugin_from_function\n\n\n"
        "def save(path=''):\n"
        "    with h5py.File(path, 'w') as h5:\n"
        "        h5['data'] = list(range(100))\n"
        "    return {'file': path}\n\n\n"
        "save.REPROCESS_RELOCATE = ['path']\nplugin_from_function(save)\n"
    )
    archived = tmp_path / "archived.h5"
    archived.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(992))  # truncated: a disk filled up
    sources = write_inputs(tmp_path / "in", {"plugin_name": "h5.save", "path": str(archived)})
    (sources / "00001_h5.save.out").write_text(json.dumps({"result": {"file": str(archived)}}))
    status, summary, stderr = summary_of(
        "--compare", "--plugins", plugins, "-o", tmp_path / "b", sources
    )
    (difference,) = summary["compare"]["differences"]
    assert difference["key"] == "result.file"
    assert difference["reason"].startswith("cannot compare the files: Unable to ")
    assert "\n" not in difference["reason"]
    assert (status, "Traceback" in stderr) == (1, False), stderr


def test_ids_are_read_from_a_journal_this_process_cannot_write(tmp_path: Path):
    # bug: ids were read through a writer's connection, which needs the journal's -shm
    # file: on a read-only archive (or another user's work directory, no server running)
    # every id was "cannot open the journal ...: unable to open database file". The
    # -shm file that cannot be made is a dangling link here: root may write anywhere.
    archive = tmp_path / "W"
    sources = write_inputs(
        tmp_path / "in", *[{"plugin_name": "example.square", "x": x} for x in (2, 3)]
    )
    status, _, stderr = summary_of("-o", archive, sources)
    assert status == 0, stderr
    before = (archive / "journal.sqlite").read_bytes()
    (archive / "journal.sqlite-shm").symlink_to(tmp_path / "no" / "such" / "directory")
    status, summary, stderr = summary_of(
        "--compare", "-o", tmp_path / "b", "--workdir", archive, "1-2"
    )
    assert (status, summary["total"]["success"], summary["compare"]["same"]) == (0, 2, 2), stderr
    assert (archive / "journal.sqlite").read_bytes() == before


def test_one_sigterm_ends_a_run_while_a_plugin_module_is_imported(tmp_path: Path):
    # bug: the first signal let the import go on, and only a second one stopped it: one
    # that never ends (a module waiting for a network disk) kept a run that got its
    # single SIGTERM (a batch system's) going for ever
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stuck.py").write_text(
        "import pathlib, time\n"
        "pathlib.Path(__file__).with_name('importing').touch()\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    sources = write_inputs(tmp_path / "in", {"plugin_name": "stuck.f"}, {"plugin_name": "stuck.f"})
    proc = start_run("--plugins", str(plugins), "-o", str(tmp_path / "out"), str(sources))
    try:
        deadline = time.monotonic() + 30
        while not (plugins / "importing").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no import began"
            time.sleep(0.01)
        proc.terminate()  # once
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "cannot load plugin" not in stderr and "KeyboardInterrupt" not in stderr
    summary = json.loads(stdout)
    assert (summary["total"]["jobs"], summary["not_started"]) == (0, 2)


def test_one_sigterm_ends_a_run_reading_a_pipe_no_one_writes(tmp_path: Path):
    # bug: the first signal said "interrupted" and the read went on (Python retries it):
    # a SOURCE such as <(ssh host cat f) that stalls kept a run that got its single
    # SIGTERM going for ever
    (tmp_path / "a.inp").write_text(json.dumps({"plugin_name": "example.square", "x": 2}))
    fifo = tmp_path / "b.inp"
    os.mkfifo(fifo)
    proc = start_run("-o", str(tmp_path / "out"), str(tmp_path / "a.inp"), str(fifo))
    writer = None
    try:
        deadline = time.monotonic() + 30
        while writer is None:  # opens once the run opened the pipe to read it
            assert time.monotonic() < deadline and proc.poll() is None, "the pipe is not read"
            with contextlib.suppress(OSError):
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            time.sleep(0.01)
        proc.terminate()  # once
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        if writer is not None:
            os.close(writer)
    assert proc.returncode == 130, stderr
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr
    summary = json.loads(stdout)
    assert (summary["total"]["jobs"], summary["not_started"]) == (0, 2)


def test_spaces_around_a_plugin_name_are_dropped_as_by_the_device(tmp_path: Path):
    # bug: " example.square " was an invalid plugin name, counted in a row of its own
    # that the table showed as a second "example.square"
    sources = write_inputs(
        tmp_path / "in",
        {"plugin_name": " example.square ", "x": 2},
        {"plugin_name": "Example.Square\t", "x": 3},
    )
    status, summary, stderr = summary_of("-o", tmp_path / "out", sources)
    assert status == 0, stderr
    assert list(summary["plugins"]) == ["example.square"]
    assert summary["plugins"]["example.square"]["success"] == 2


def test_a_job_that_timed_out_names_its_input(tmp_path: Path):
    # bug: a job aborted by its timeout was counted (aborted 1, exit status 1) but its
    # input was named nowhere: among thousands, which one was it?
    sources = write_inputs(
        tmp_path / "in",
        {"plugin_name": "example.square", "x": 2},
        {"plugin_name": "example.sleep", "t": 600, "job_timeout": 0.2},
    )
    status, summary, stderr = summary_of("-o", tmp_path / "out", sources)
    assert status == 1
    source = str(sources / "00002_example.sleep.inp")
    assert f"dahu-reprocess: {source}: job 2 aborted: timed out after 0.2 s" in stderr
    assert summary["aborted_jobs"] == [
        {"source": source, "plugin": "example.sleep", "job_id": 2, "error": "timed out after 0.2 s"}
    ]


def test_jobs_aborted_by_ctrl_c_are_not_counted_without_archive(tmp_path: Path):
    # bug: --compare counted every job it did not compare as "without archive", the jobs
    # a Ctrl-C aborted too, whose archive was there
    sources = write_inputs(tmp_path / "in", *[{"plugin_name": "example.sleep", "t": 600}] * 2)
    for source in sources.glob("*.inp"):
        source.with_suffix(".out").write_text(json.dumps({"slept": True, "t": 600}))
    status, stdout, stderr = interrupted_run(
        tmp_path / "out", "example.sleep", "--compare", str(sources)
    )
    assert status == 130, stderr
    summary = json.loads(stdout)
    assert summary["total"]["aborted"] == 2
    assert (summary["compare"]["compared"], summary["compare"]["no_archive"]) == (0, 0)


CTRL_C_AGAIN_AT_THE_SUMMARY = """
import os, signal
import dahu.app.reprocess as reprocess

summarize = reprocess.summarize
run = reprocess.Reprocessor.run

def interrupted_run(self):  # a Ctrl-C came: nothing more starts
    self.stop.set()
    run(self)

def impatient_summary(*args):  # the user's second Ctrl-C, as the summary is made
    os.kill(os.getpid(), signal.SIGINT)
    return summarize(*args)

reprocess.Reprocessor.run = interrupted_run
reprocess.summarize = impatient_summary
reprocess.cli()
"""


def test_another_ctrl_c_while_the_summary_is_printed_is_not_a_traceback(tmp_path: Path):
    # bug: a Ctrl-C pressed again just after the run's (an impatient user's third, or a
    # second once the jobs had stopped) came while the summary was made: a traceback
    # from tabulate, no summary, and the journal not closed
    sources = write_inputs(tmp_path / "in", {"plugin_name": "example.square", "x": 2})
    command = [
        sys.executable,
        "-c",
        CTRL_C_AGAIN_AT_THE_SUMMARY,
        "-o",
        str(tmp_path / "o"),
        str(sources),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130
    assert "interrupted: 1 input(s) not started" in proc.stdout


CTRL_C_TWICE_AS_A_RESULT_IS_RECORDED = """
import os, signal
import dahu.app.reprocess as reprocess

record = reprocess.Reprocessor._record

def impatient_record(self, result):  # a user's Ctrl-C twice, as the last result is recorded
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    record(self, result)

reprocess.Reprocessor._record = impatient_record
reprocess.cli()
"""


def test_a_second_ctrl_c_with_no_job_left_keeps_the_last_result(tmp_path: Path):
    # bug: it said "not waiting for 0 job(s) that did not stop", and the result being
    # recorded was lost: the job that had succeeded was missing from the summary
    sources = write_inputs(tmp_path / "in", {"plugin_name": "example.square", "x": 2})
    script = CTRL_C_TWICE_AS_A_RESULT_IS_RECORDED
    command = [sys.executable, "-c", script, "--json", "-o", str(tmp_path / "o"), str(sources)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "dahu-reprocess: interrupted\n"
    assert json.loads(proc.stdout)["total"]["success"] == 1


def test_a_directory_that_cannot_be_read_is_reported(tmp_path: Path, monkeypatch):
    # bug: os.walk skips what it cannot list: the inputs under a directory of another
    # user (or a flaky network disk) were left out without a word, and a source
    # directory that could not be read said "no .inp or .json file in this directory"
    from dahu.app.sources import expand_sources

    write_inputs(tmp_path / "a" / "open", {"plugin_name": "example.square"})
    write_inputs(tmp_path / "a" / "locked", {"plugin_name": "example.square"})
    write_inputs(tmp_path / "b", {"plugin_name": "example.square"})
    locked = {str(tmp_path / "a" / "locked"), str(tmp_path / "b")}
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    items = expand_sources([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path))
    assert [(item.label, item.error) for item in items] == [
        (str(tmp_path / "a" / "locked"), "cannot read this directory: Permission denied"),
        (str(tmp_path / "a" / "open" / "00001_example.square.inp"), None),
        (str(tmp_path / "b"), "cannot read this directory: Permission denied"),
    ]


def test_an_input_from_a_pipe_runs(tmp_path: Path):
    # bug: a SOURCE that is not a regular file (a pipe: <(...), /dev/stdin) was "no such
    # file or directory", although it was there to be read
    out = tmp_path / "out"
    data = '{"plugin_name": "example.square", "x": 3}'
    command = f"'{REPROCESS}' -q --json -o '{out}' <(echo '{data}')"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"]["success"] == 1
    (output,) = out.glob("0000/*.out")
    assert json.loads(output.read_text())["result"] == 9


def test_a_failed_job_compares_by_its_reason_not_its_traceback(tmp_path: Path):
    # bug: the traceback lines of a failed job's error were compared too: with the plugin
    # edited above the failing line (or Dahu upgraded), every failed job of an unchanged
    # behaviour "differed" at error[N] by a line number or a path
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    module = (
        "from dahu.plugin import plugin_from_function\n\n\n"
        "def f(x=0):\n"
        "    raise ValueError(f'bad x {x}')\n\n\n"
        "plugin_from_function(f)\n"
    )
    (plugins / "failing.py").write_text(module)
    sources = write_inputs(tmp_path / "in", {"plugin_name": "failing.f", "x": 1})
    status, _, stderr = summary_of("--plugins", plugins, "-o", tmp_path / "a", sources)
    assert status == 1, stderr
    (plugins / "failing.py").write_text('"""Edited."""\n\n' + module)  # the lines move
    args = ("--compare", "--plugins", plugins, "-o", tmp_path / "b", tmp_path / "a")
    status, summary, stderr = summary_of(*args)
    assert summary["compare"]["differences"] == []
    (plugins / "failing.py").write_text(module.replace("bad x", "wrong x"))
    status, summary, stderr = summary_of(*args[:-3], tmp_path / "c", tmp_path / "a")
    (difference,) = summary["compare"]["differences"]
    assert (difference["key"], difference["reason"]) == (
        "error[0]",
        "'ValueError: bad x 1' != 'ValueError: wrong x 1'",
    )


def test_an_archived_file_that_is_gone_is_said_so(tmp_path: Path):
    # bug: the output named a file the archive no longer has (cleaned, moved): the
    # reason was the two paths, cut, as if the plugin had written elsewhere
    from dahu.compare import first_difference

    new = tmp_path / "new.h5"
    new.write_bytes(b"data")
    gone = str(tmp_path / "archive" / "processed" / "sample_0001" / "00012_pyfai.h5")
    difference = first_difference({"file": gone}, {"file": str(new)})
    assert (difference.path, difference.reason) == ("file", f"the archived file {gone} is gone")


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_what_plugins_print_does_not_spoil_the_json_summary(tmp_path: Path, executor: str):
    # bug: what a plugin printed went to standard output with the summary, so that
    # `dahu-reprocess -q --json ... > report.json` was not JSON
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "chatty.py").write_text(
        "from dahu.plugin import plugin_from_function\n\n\n"
        "def f(x=0):\n"
        "    print('integrating frame', x)\n"
        "    return x\n\n\n"
        "plugin_from_function(f)\n"
    )
    sources = write_inputs(tmp_path / "in", {"plugin_name": "chatty.f", "x": 7})
    args = ("-q", "--executor", executor, "--plugins", plugins, "-o", tmp_path / "out", sources)
    status, summary, stderr = summary_of(*args)  # the whole standard output is JSON
    assert (status, summary["total"]["success"]) == (0, 1), stderr
    assert "integrating frame 7" in stderr


def test_a_plugins_option_naming_a_file_says_so(tmp_path: Path):
    # bug: "plugin directory X does not exist" for a file that exists (a plugin module
    # given instead of its directory)
    module = tmp_path / "mine.py"
    module.write_text("")
    proc = subprocess.run(
        [REPROCESS, "--plugins", str(module), "x"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        f"dahu-reprocess: error: plugin directory {module} is not a directory"
    )


def test_one_summary_row_however_the_inputs_spell_the_plugin(tmp_path: Path):
    # bug: EXAMPLE.Square and example.square were two rows (the runtimes in neither)
    sources = tmp_path / "in"
    sources.mkdir()
    for i, name in enumerate(("EXAMPLE.Square", "example.square", "Example.SQUARE")):
        (sources / f"{i}.inp").write_text(json.dumps({"plugin_name": name, "x": i}))
    status, summary, _ = summary_of("-o", tmp_path / "out", sources)
    assert status == 0
    assert list(summary["plugins"]) == ["example.square"]
    row = summary["plugins"]["example.square"]
    assert row["jobs"] == row["success"] == row["ran"] == 3
    assert row["runtime"] == summary["total"]["runtime"] > 0


ECHO_PLUGIN = """
from dahu.factory import register
from dahu.plugin import Plugin

@register
class Echo(Plugin):
    REPROCESS_IGNORE = ["secret"]

    def process(self):
        self.output["keys"] = sorted(self.input)
"""


def test_a_module_crashing_at_import_under_the_process_executor_fails_its_inputs_only(
    tmp_path: Path,
):
    # bug: the tool imported every plugin module itself (for its REPROCESS_* lists): a
    # module ending the process at import ended the whole run, without a summary
    plugins, sources = tmp_path / "plugins", tmp_path / "in"
    plugins.mkdir()
    sources.mkdir()
    (plugins / "crasher.py").write_text("import os\nos._exit(7)\n")
    (plugins / "quiet.py").write_text(ECHO_PLUGIN)
    inputs = [("crasher.boom", {}), ("quiet.echo", {"secret": 1, "x": 2}), ("example.square", {})]
    for i, (name, data) in enumerate(inputs, 1):
        (sources / f"{i}.inp").write_text(json.dumps({"plugin_name": name, **data}))
    out = tmp_path / "out"
    args = ("--executor", "process", "--plugins", str(plugins), "-o", str(out), str(sources))
    status, summary, stderr = summary_of(*args)
    assert status == 1
    assert summary["total"]["success"] == 2 and summary["total"]["invalid"] == 1
    (error,) = summary["errors"]
    assert error["source"] == str(sources / "1.inp")
    assert error["error"].endswith(
        "cannot load plugin 'crasher.boom': the import ended the process: exit code 7"
    )
    echoed = json.loads(next(out.rglob("*quiet.echo.out")).read_text())
    assert echoed["keys"] == ["job_id", "plugin_name", "x"]  # REPROCESS_IGNORE still read


def test_a_reprocess_ignore_of_one_name_without_its_list_drops_that_key(tmp_path: Path):
    # bug: REPROCESS_IGNORE = "output_file" (a string) dropped the keys "o", "u", "t"...
    # (as the original did): the rerun wrote over the archived result
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "writer.py").write_text(
        "from dahu.factory import register\nfrom dahu.plugin import Plugin\n\n"
        "@register\nclass Out(Plugin):\n    REPROCESS_IGNORE = 'output_file'\n\n"
        "    def process(self):\n        if 'output_file' in self.input:\n"
        "            open(self.input['output_file'], 'w').write('rerun')\n"
    )
    archived = tmp_path / "result.txt"
    archived.write_text("archived")
    sources = write_inputs(
        tmp_path / "in", {"plugin_name": "writer.out", "output_file": str(archived)}
    )
    status, _, stderr = summary_of("--plugins", plugins, "-o", tmp_path / "out", sources)
    assert status == 0, stderr
    assert archived.read_text() == "archived"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_the_plugins_option_comes_before_dahu_plugins(tmp_path: Path, executor: str):
    # bug: DAHU_PLUGINS (the production plugins, set at login) came first: --plugins
    # ~/dev/plugins, the plugin under test, was never run, and --compare said "the same"
    for version in ("prod", "dev"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "mymod.py").write_text(
            "from dahu.factory import register\nfrom dahu.plugin import Plugin\n\n"
            f"@register\nclass Calc(Plugin):\n    REPROCESS_IGNORE = ['{version}']\n\n"
            f"    def process(self):\n        self.output['keys'] = sorted(self.input)\n"
        )
    sources = write_inputs(tmp_path / "in", {"plugin_name": "mymod.calc", "prod": 1, "dev": 2})
    env = {"DAHU_PLUGINS": str(tmp_path / "prod")}
    args = ("--executor", executor, "--plugins", tmp_path / "dev", "-o", tmp_path / "out")
    status, _, stderr = summary_of(*args, sources, env=env)
    assert status == 0, stderr
    output = json.loads(next((tmp_path / "out").rglob("*.out")).read_text())
    assert output["keys"] == ["job_id", "plugin_name", "prod"]  # dev's code and settings


WAITING_IMPORT = """
import pathlib, time
here = pathlib.Path(__file__)
here.with_name("importing").touch()
deadline = time.monotonic() + 60
while not here.with_name("release").exists() and time.monotonic() < deadline:
    time.sleep(0.01)  # heavy imports, a slow network disk

from dahu.plugin import plugin_from_function

def f(x=0):
    return x

plugin_from_function(f)
"""


def test_jobs_ready_run_while_the_next_plugin_module_is_imported(tmp_path: Path):
    # bug: the jobs of the inputs before began only once the next input's plugin module
    # was imported (a module taking 30 s to import held them 30 s)
    plugins, sources, out = tmp_path / "plugins", tmp_path / "in", tmp_path / "out"
    plugins.mkdir()
    sources.mkdir()
    (plugins / "waitimp.py").write_text(WAITING_IMPORT)
    (sources / "1.inp").write_text(json.dumps({"plugin_name": "example.square", "x": 4}))
    (sources / "2.inp").write_text(json.dumps({"plugin_name": "waitimp.f", "x": 1}))
    proc = start_run("-j", "2", "--plugins", str(plugins), "-o", str(out), str(sources))
    try:
        deadline = time.monotonic() + 30
        while not (plugins / "importing").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no import began"
            time.sleep(0.01)
        wait_running(out, "example.square", wanted="success")  # the import still waits
        (plugins / "release").touch()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["total"]["success"] == 2


def test_a_dead_worker_is_reported_once_per_job(tmp_path: Path):
    # bug: without -q each job whose worker process died was told twice on standard
    # error: by the executor's log line, then by the tool's own line
    plugins, sources = tmp_path / "plugins", tmp_path / "in"
    plugins.mkdir()
    sources.mkdir()
    (plugins / "dying.py").write_text(
        "import os\nfrom dahu.plugin import plugin_from_function\n"
        "def die(**kw):\n    os._exit(3)\nplugin_from_function(die)\n"
    )
    (sources / "1.inp").write_text(json.dumps({"plugin_name": "dying.die"}))
    args = ["--executor", "process", "--plugins", str(plugins), "-o", str(tmp_path / "out")]
    proc = subprocess.run(
        [REPROCESS, *args, str(sources)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    died = [line for line in proc.stderr.splitlines() if "worker process died" in line]
    assert died == [
        f"dahu-reprocess: {sources / '1.inp'}: job 1 failed: worker process died: exit code 3"
    ]
    debug = subprocess.run(
        [REPROCESS, "-d", *args[:-1], str(tmp_path / "out2"), str(sources)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ERROR dahu.executors.process: job 1: worker process died" in debug.stderr


def test_a_failed_job_archived_by_the_original_dahu_compares_by_its_reason(tmp_path: Path):
    # bug: the original Dahu (2024.2.0) wrote a failed job's error as the traceback text
    # first, then "<class 'TypeError'>: reason", then the frames: a rerun of its archive
    # with --compare found every failed job different at error[0], the same failure too
    archive = tmp_path / "dahu_2026-11-30T06h31m02" / "0000"
    archive.mkdir(parents=True)
    job = {"x": "a", "plugin_name": "example.square", "job_id": 4}
    (archive / "00004_example.square.inp").write_text(json.dumps(job, indent=4))
    reason = "can't multiply sequence by non-int of type 'str'"
    error = [  # as the original's Job._log_error wrote it
        "Traceback (most recent call last):\n"
        '  File ".../dahu/job.py", line 215, in _run_\n    method()\n'
        f"TypeError: {reason}\n\nError {reason} while calling example.square.process",
        f"<class 'TypeError'>: {reason}",
        '  File ".../dahu/job.py", line 215, in _run_',
        "\t\tmethod()",
    ]
    out = {"error": error, "logging": [], "job_runtime": 0.1}
    (archive / "00004_example.square.out").write_text(json.dumps(out, indent=4))
    status, summary, stderr = summary_of("--compare", "-o", tmp_path / "new", archive)
    assert summary["total"]["failure"] == 1, stderr
    assert (summary["compare"]["same"], summary["compare"]["differences"]) == (1, [])

    from dahu.app.sources import reason_only  # an exception of a plugin's own module

    original = ["Traceback ...", "<class 'id00.BeamLost'>: no beam\nat all", "  File ..."]
    assert reason_only({"error": original}) == {"error": ["BeamLost: no beam"]}


def test_an_archive_of_the_original_reprocess_tool_compares_on_what_it_wrote(tmp_path: Path):
    # bug: the original's dahu-reprocess (2024.2.0) wrote a failed job's .out without
    # "error" (and without "logging" when its setup failed: it skipped the teardown);
    # an unchanged rerun of its archive differed: "error: not in the archived output"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "id00t.py").write_text(
        "from dahu.factory import register\n"
        "from dahu.plugin import Plugin\n\n\n"
        "@register\n"
        "class Fails(Plugin):\n"
        "    def process(self):\n"
        "        self.output['partial'] = self.input['x']\n"
        "        raise RuntimeError('no beam')\n\n\n"
        "@register\n"
        "class FailSetup(Plugin):\n"
        "    def setup(self, kwargs=None):\n"
        "        raise ValueError('bad setup')\n"
    )
    # as that tool wrote them (checked against its real output): NNNNN_<class name>
    # side by side in <tmp>/dahu_<time>, numbered from 0; plugin.output + job_runtime
    archive = tmp_path / "dahu_2026-11-30T14h58m56"
    archive.mkdir()
    jobs = [
        ("Fails", {"plugin_name": "id00t.fails", "x": 3}, {"partial": 3, "logging": []}),
        ("FailSetup", {"plugin_name": "id00t.failsetup", "x": 3}, {}),
        ("square", {"plugin_name": "example.square", "x": "a"}, {"logging": []}),
        ("Fails", {"plugin_name": "id00t.fails", "x": 4}, {"partial": 5, "logging": []}),
    ]
    for i, (name, job, out) in enumerate(jobs):
        name = "example.square" if name == "square" else name  # a function's plugin
        (archive / f"{i:05d}_{name}.inp").write_text(json.dumps({**job, "job_id": i}, indent=4))
        output = json.dumps({**out, "job_runtime": 0.000339508056640625}, indent=4)
        (archive / f"{i:05d}_{name}.out").write_text(output)
    args = ("--compare", "--plugins", plugins, "-o", tmp_path / "new", archive)
    status, summary, stderr = summary_of(*args)
    assert summary["total"]["failure"] == 4, stderr
    compare = summary["compare"]
    assert (compare["same"], compare["differ"]) == (3, 1), compare["differences"]
    # what it wrote is still compared
    assert [(d["job_id"], d["key"], d["reason"]) for d in compare["differences"]] == [
        (4, "partial", "5 != 4")
    ]
    # the layout of a server (NNNN/): a job that succeeded there (writing no result key)
    # and fails now differs
    server = tmp_path / "W" / "0000"
    server.mkdir(parents=True)
    (server / "00004_example.square.inp").write_text(json.dumps(jobs[2][1]))
    (server / "00004_example.square.out").write_text('{"logging": []}')  # no result
    status, summary, stderr = summary_of("--compare", "-o", tmp_path / "new2", server)
    assert [(d["key"], d["reason"]) for d in summary["compare"]["differences"]] == [
        ("error", "not in the archived output")
    ]


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_quiet_pyfai_runs_print_no_third_party_warning(tmp_path: Path, executor: str):
    # bug: with pyFAI plugins every -q run printed silx's "WARNING silx.opencl.common:
    # Unable to import pyOpenCl" (once per worker process): -q is the summary alone
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ocl.py").write_text(
        "import silx.opencl.common  # as pyFAI imports it: warns without pyopencl\n"
        "from dahu.plugin import plugin_from_function\n\n\n"
        "def f(x=0):\n"
        "    return x\n\n\n"
        "plugin_from_function(f)\n"
    )
    sources = write_inputs(tmp_path / "in", {"plugin_name": "ocl.f", "x": 7})
    args = ("-q", "--executor", executor, "--plugins", plugins, "-o", tmp_path / "out", sources)
    proc = reprocess(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[2].startswith("ocl.f ")
    # -d shows it, with everything else
    assert "Unable to import pyOpenCl" in reprocess("-d", *args).stderr


def test_an_input_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path: Path):
    # bug: a Latin-1 file ("caf\xe9") was "not JSON: 'utf-8' codec can't decode byte 0xe9
    # in position 54: invalid continuation byte"; an archived .out the same, with its path
    sources = tmp_path / "in"
    sources.mkdir()
    latin = b'{"plugin_name": "example.square", "name": "caf\xe9"}'
    (sources / "1.inp").write_bytes(latin)
    (sources / "2.inp").write_bytes(b"\xef\xbb\xbf" + latin)  # a byte-order mark first
    (sources / "3.inp").write_text('{"plugin_name": "example.square", "x": 3}')
    (sources / "3.out").write_bytes(latin)
    status, summary, stderr = summary_of("--compare", "-o", tmp_path / "out", sources)
    assert status == 1
    reason = "not UTF-8 text (JSON must be UTF-8): byte 0xe9 at offset"
    offset = latin.index(b"\xe9")
    assert stderr.splitlines() == [
        f"dahu-reprocess: {sources / '1.inp'}: {reason} {offset}",
        f"dahu-reprocess: {sources / '2.inp'}: {reason} {offset + 3}",
    ]
    (difference,) = summary["compare"]["differences"]
    assert difference["reason"] == (
        f"cannot read the archived output {sources / '3.out'}: {reason} {offset}"
    )


def test_a_dash_reads_one_input_from_standard_input(tmp_path: Path):
    # bug: `dahu-reprocess -` was a file named "-": "no such file or directory"
    data = '{"plugin_name": "example.square", "x": 4}'
    proc = subprocess.run(
        [REPROCESS, "-q", "--json", "-o", str(tmp_path / "out"), "-"],
        input=data,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"]["success"] == 1
    (output,) = (tmp_path / "out").glob("0000/*.out")
    assert json.loads(output.read_text())["result"] == 16
    proc = subprocess.run(  # an input that cannot be run is named as standard input
        [REPROCESS, "-q", "-o", str(tmp_path / "out"), "-"],
        input="{",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("dahu-reprocess: (standard input): not JSON: "), proc.stderr
    proc = reprocess("-o", tmp_path / "twice", "-", "-")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "dahu-reprocess: error: SOURCE - (standard input) is given more than once: "
        "it holds one input"
    )
    assert not (tmp_path / "twice").exists()


def test_ids_of_a_journal_damaged_past_its_first_page_are_one_line(tmp_path: Path):
    # bug: a journal whose table of jobs is damaged (its schema, on the first page, is
    # not) ended the run with a traceback of sqlite3.DatabaseError
    workdir = tmp_path / "W"
    make_archive(workdir, [["example.square", {"x": x}] for x in range(6)])
    journal = workdir / "journal.sqlite"
    page = int.from_bytes(journal.read_bytes()[16:18], "big")
    with open(journal, "r+b") as file:
        file.seek(page)
        file.write(b"\xff" * (journal.stat().st_size - page))
    proc = reprocess("-q", "-o", tmp_path / "out", "--workdir", workdir, "1-6")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"dahu-reprocess: 1-6: cannot read the journal {journal}: database disk image is malformed"
    ]


def test_a_summary_that_cannot_be_written_is_one_line_and_status_2(tmp_path: Path):
    # bug: `--json > report.json` on a full disk ended with an OSError traceback (the
    # journal left unclosed), and with standard output closed (>&-) the jobs ran and
    # the summary went nowhere, status 0
    import resource

    inputs = write_inputs(tmp_path / "in", {"plugin_name": "example.square", "x": 3})
    report = tmp_path / "report.json"
    limit = 1 << 20
    with open(report, "wb") as file:
        file.truncate(limit)  # at the size limit below: any write fails, as on a full disk
    with open(report, "ab") as stdout:
        proc = subprocess.run(
            [REPROCESS, "--json", "-o", str(tmp_path / "out"), str(inputs)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "dahu-reprocess: cannot write the summary: File too large\n"
    (output,) = (tmp_path / "out").glob("0000/*.out")  # the job ran and was recorded
    assert json.loads(output.read_text())["result"] == 9
    command = f"'{REPROCESS}' -o '{tmp_path / 'closed'}' '{inputs}' >&-"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "dahu-reprocess: error: standard output is closed: nowhere to print the summary"
    )
    assert not (tmp_path / "closed").exists()


def test_a_file_name_that_is_not_utf8_is_shown_escaped_in_the_summary(tmp_path: Path):
    # bug: an archive from a Latin-1 share ("caf\xe9.inp") whose output differed ended
    # the run with a UnicodeEncodeError traceback instead of the summary
    sources = tmp_path / "in"
    sources.mkdir()
    stem = os.fsencode(sources) + b"/caf\xe9"
    with open(stem + b".inp", "w") as file:
        file.write('{"plugin_name": "example.square", "x": 3}')
    with open(stem + b".out", "w") as file:
        file.write('{"result": 10}')
    proc = reprocess("-q", "--compare", "-o", tmp_path / "out", sources)
    assert (proc.returncode, proc.stderr) == (1, "")
    (row,) = [line for line in proc.stdout.splitlines() if "10 != 9" in line]
    assert row.split()[:3] == ["1", f"{sources}/caf\\udce9.inp", "example.square"]


def test_an_empty_input_says_so(tmp_path: Path):
    # bug: an empty .inp (a disk that filled up as it was archived) was "not JSON:
    # Expecting value: line 1 column 1 (char 0)"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.inp").write_bytes(b"")
    (tmp_path / "in" / "blank.inp").write_bytes(b" \r\n")
    proc = reprocess("-q", "-o", tmp_path / "out", tmp_path / "in")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"dahu-reprocess: {tmp_path / 'in' / name}: not JSON: it is empty"
        for name in ("blank.inp", "empty.inp")
    ]


def test_a_journal_given_as_an_input_file_says_how_to_give_its_jobs(tmp_path: Path):
    # bug: `dahu-reprocess W/journal.sqlite` was "not UTF-8 text ... byte 0xeb at offset 31"
    workdir = tmp_path / "W"
    make_archive(workdir, [["example.square", {"x": 2}]])
    proc = reprocess("-q", "-o", tmp_path / "out", workdir / "journal.sqlite")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"dahu-reprocess: {workdir}/journal.sqlite: a journal, not a job input: give job "
        f"ids, e.g. --workdir {workdir} 1-10\n"
    )


def test_file_names_with_new_lines_are_one_line_each_escaped(tmp_path: Path):
    # bug: a file name holding a new line split dahu-reprocess's stderr line about it in
    # two (and a row of the table of differences), and a terminal escape in one drove the
    # terminal; dahu-jobs shows them escaped
    sources = tmp_path / "in"
    sources.mkdir()
    (sources / "bad\nname.inp").write_text('{"plugin_name": "example.square", "x": "a"}')
    (sources / "not\njson.inp").write_text("nojson")
    (sources / "un\x1b[2Jknown.inp").write_text('{"plugin_name": "example.squar\\nre"}')
    (sources / "d\nf.inp").write_text('{"plugin_name": "example.square", "x": 2}')
    (sources / "d\nf.out").write_text('{"result": 5}')
    out = tmp_path / "out\nput"
    proc = reprocess("--compare", "-o", out, sources, tmp_path / "miss\ning")
    assert proc.returncode == 1, proc.stderr
    assert sorted(proc.stderr.splitlines()) == [
        f"dahu-reprocess: {sources}/bad\\nname.inp: job 1 failed: TypeError: can't "
        "multiply sequence by non-int of type 'str'",
        f"dahu-reprocess: {sources}/not\\njson.inp: not JSON: Expecting value: line 1 "
        "column 1 (char 0)",
        f"dahu-reprocess: {sources}/un\\x1b[2Jknown.inp: invalid plugin name "
        "'example.squar\\nre': expected 'module.name' (letters, digits, underscores)",
        f"dahu-reprocess: {tmp_path}/miss\\ning: no such file or directory",
    ]
    lines = proc.stdout.splitlines()
    assert "example.squar\\nre " in proc.stdout
    assert f"output in {tmp_path}/out\\nput" in proc.stdout
    assert lines[-1].split()[:4] == ["2", f"{sources}/d\\nf.inp", "example.square", "result"]


def test_a_job_aborted_or_interrupted_in_its_archive_is_not_compared_as_a_difference(
    tmp_path: Path,
):
    # bug: an archived job that was aborted (a timeout, an operator), or left running by a
    # server that died, has only part of its output; its rerun, which ran to its end, was
    # reported as a regression ("slept: False != True", "error: missing from the new
    # output"), with nothing saying why, and the run ended with status 1
    from dahu.app.reprocess_summary import format_summary

    sources = write_inputs(tmp_path / "in", *[{"plugin_name": "example.sleep", "t": 0.01}] * 4)
    outputs = [
        {"slept": False, "t": 0.01, "aborted": "2026-11-30T17:30:43+00:00"},
        {"error": ["interrupted: its process, pid 4242 on vm, died"]},
        {"error": ["interrupted"]},
        {"slept": True, "t": 0.01},
    ]
    for source, output in zip(sorted(sources.glob("*.inp")), outputs, strict=True):
        source.with_suffix(".out").write_text(json.dumps({**output, "logging": []}))
    status, summary, stderr = summary_of("--compare", "-o", tmp_path / "out", sources)
    compare = summary["compare"]
    assert compare["differences"] == [], stderr
    assert (compare["compared"], compare["same"], compare["no_archive"]) == (1, 1, 0)
    assert compare["incomplete_archive"] == 3
    assert status == 0, stderr
    text = format_summary(summary)
    assert "3 whose archived job was aborted or interrupted (not compared)" in text
    from dahu.app.sources import incomplete  # a plugin's own key of that name: a whole output

    assert not incomplete({"aborted": 3}) and not incomplete({"error": ["interrupted x"]})


def test_an_archive_of_the_original_tool_in_a_folder_named_by_digits_is_still_one(
    tmp_path: Path,
):
    # bug: the original tool's flat archive (NNNNN_<class>.out) copied into a folder whose
    # name is all digits (a date: 20241130, a run number: 12) was taken for a server's
    # NNNN/ folder: an unchanged failed job differed, "error: not in the archived output"
    from dahu.app.sources import comparable
    from dahu.compare import first_difference

    archived = {"partial": 3, "logging": [], "job_runtime": 0.1}
    new = {**archived, "error": ["RuntimeError: no beam", "Traceback ..."]}
    for folder in ("20241130", "12", "0001", "dahu_2026-11-30T14h58m56"):
        path = str(tmp_path / folder / "00004_Fails.out")
        assert first_difference(*comparable(archived, new, path)) is None, folder
    # where a server writes it, NNNN/ holding the ids of its thousand: "error" is compared
    for path in ("W/0000/00004_id00t.fails.out", "W/0012/12004_id00t.fails.out"):
        difference = first_difference(*comparable(archived, new, str(tmp_path / path)))
        assert difference is not None and difference.path == "error", path


def test_an_input_file_larger_than_a_journal_row_is_one_line(tmp_path: Path, monkeypatch):
    # bug: a file no job input can be (a data dump named .json in a directory given as
    # SOURCE, a pipe that never ends) was read whole: a MemoryError traceback ended the
    # run, after the machine ran out of memory
    from dahu.app import sources

    monkeypatch.setattr(sources, "MAX_INPUT_BYTES", 4096, raising=False)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"plugin_name": "example.square", "pad": "x" * 5000}))
    loaded = sources.load(sources.Item(str(big), path=str(big)))
    assert str(loaded.error) == (
        "too large for a job input: over 4,096 bytes, more than the journal records"
    )
    big.write_text(json.dumps({"plugin_name": "example.square", "pad": "x" * 4000}))
    assert sources.load(sources.Item(str(big), path=str(big))).error is None


def test_a_named_pipe_in_a_directory_source_does_not_hang_the_run(tmp_path: Path):
    # bug: a FIFO named .inp below a directory SOURCE was opened as a file: the run
    # waited for good for a writer, and no input of the directory ever ran
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.inp").write_text(json.dumps({"plugin_name": "example.square", "x": 3}))
    os.mkfifo(inputs / "b.inp")
    status, summary, stderr = summary_of("-o", tmp_path / "out", inputs)
    assert (status, summary["total"]["success"], summary["total"]["failure"]) == (1, 1, 1)
    assert stderr == (
        f"dahu-reprocess: {inputs / 'b.inp'}: a named pipe, not a file: a directory SOURCE "
        "runs its files (give it by name to read it)\n"
    )
