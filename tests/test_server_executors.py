"""The DahuDS device under each executor (thread, process, dask), through real
DeviceProxy clients: the same states, outputs, events and files, and a crashing, hung or
BaseException-raising plugin does not take the server down."""

from __future__ import annotations

import json
import os
import queue
import time
from pathlib import Path

import pytest
import tango

from dahu.app.localserver import LocalServer
from dahu.factory import Factory
from dahu.journal import job_file_stem
from dahu.server_plugins import PLUGINS_HEADER, PluginCatalog

from .conftest import (
    BASE_EXCEPTIONS,
    TROUBLE_PLUGINS,
    finish,
    next_item,
    wait_for_file,
    wait_subscribed,
)


@pytest.fixture(scope="module", params=["thread", "process", "dask"])
def device(request, tmp_path_factory):
    """A real ``dahu_server`` process (a fresh interpreter: a Dask client must not be
    forked) with the executor under test."""
    base = tmp_path_factory.mktemp(request.param)
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "devtrouble.py").write_text(TROUBLE_PLUGINS)
    (plugins / "devbadimport.py").write_text(BAD_IMPORT)
    (plugins / "devfork.py").write_text(FORK_RETURNS)
    (plugins / "devsegv.py").write_text("import ctypes\n\nctypes.string_at(0)\n")
    mp = pytest.MonkeyPatch()
    if request.param != "thread":  # that one imports plugin modules in the server itself
        (plugins / "devhang.py").write_text("import time\n\ntime.sleep(600)\n")
        mp.setenv("DAHU_PLUGIN_IMPORT_TIMEOUT", "5")  # the server's helper process reads it
    workdir = base / "work"
    server = LocalServer(
        str(workdir),
        str(base / "server.log"),
        max_workers=2,
        device="test/dahu/executors",
        extra_args=["--executor", request.param, "--plugins", str(plugins)],
    )
    try:
        proxy = server.start(timeout=60)
    finally:
        mp.undo()
    try:
        yield proxy, workdir, request.param
    finally:
        status = server.stop()
    assert status == 0, (base / "server.log").read_text()[-2000:]


BAD_IMPORT = '''"""Ends the process that imports it."""
import os

os._exit(3)
'''


FORK_RETURNS = '''
import os
from dahu.plugin import plugin_from_function


def returns(x=0):
    """Forks; the child returns from the plugin too (no exec, no os._exit)."""
    pid = os.fork()
    if pid == 0:
        return {"who": "child", "x": x}
    os.waitpid(pid, 0)
    return {"who": "parent", "x": x}


plugin_from_function(returns)
'''


def start(proxy, plugin: str, **data) -> int:
    return proxy.startJob([plugin, json.dumps(data)])


def test_jobs_outputs_events_and_files(device):
    proxy, workdir, _ = device
    events: queue.SimpleQueue = queue.SimpleQueue()
    sub = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, lambda e: events.put(e))
    try:

        def next_heard(seconds):
            event = next_item(events, seconds)
            return None if event is None or event.err else event.attr_value.value

        wait_subscribed(proxy, next_heard)
        ids = [start(proxy, "example.square", x=x) for x in range(5)]
        assert [finish(proxy, i) for i in ids] == ["success"] * 5
        assert [json.loads(proxy.getJobOutput(i))["result"] for i in ids] == [0, 1, 4, 9, 16]
        seen = set()
        deadline = time.monotonic() + 30
        while not set(ids) <= seen and time.monotonic() < deadline:
            event = events.get(timeout=30)
            if not event.err:
                seen.add(event.attr_value.value)
        assert set(ids) <= seen
    finally:
        proxy.unsubscribe_event(sub)
    stem = job_file_stem(str(workdir), ids[2], "example.square")
    deadline = time.monotonic() + 10
    while not Path(stem + ".out").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(Path(stem + ".out").read_text())["result"] == 4


@pytest.mark.parametrize("how", ["exit", "segv"])
def test_crashing_plugin_fails_and_server_goes_on(device, how):
    proxy, _, kind = device
    if kind == "thread":
        pytest.skip("in the thread executor plugin code runs in the server: use process")
    job_id = start(proxy, "devtrouble.crash", how=how)
    assert finish(proxy, job_id) == "failure"
    assert "worker process died" in proxy.getJobError(job_id).splitlines()[0]
    assert finish(proxy, start(proxy, "example.cube", x=2)) == "success"


@pytest.mark.parametrize("how", ["huge", "deep", "input"])
def test_data_no_text_can_hold_is_recorded_and_the_server_goes_on(device, how):
    # bugs: the journal failed on such an output, and the server went to FAULT, refusing
    # every job; getJobOutput/getJobInput of the job still in memory raised
    proxy, _, _ = device
    job_id = start(proxy, "devtrouble.unwritable", how=how)
    state = finish(proxy, job_id, timeout=60)
    for _cleaned in (False, True):  # maybe in memory just after the end, then the journal's
        error, output = proxy.getJobError(job_id), json.loads(proxy.getJobOutput(job_id))
        assert json.loads(proxy.getJobInput(job_id))["how"] == how
        assert json.loads(proxy.getJobInfo(job_id))["state"] == state
        if how == "input":
            assert (state, output["result"]) == ("success", 1)
        elif state == "success":
            key, text = ("big", "repr() failed") if how == "huge" else ("", "too deep")
            assert text in output[key or "unserializable_output"], output
            assert "output not JSON-serialisable" in error, error  # also before clean
        else:  # the Dask executor pickles the output back: it may fail there
            assert state == "failure" and error.splitlines()[0].strip(), error
        proxy.cleanJob(job_id)
    assert proxy.state() == tango.DevState.ON
    assert finish(proxy, start(proxy, "example.square", x=5), timeout=60) == "success"


def test_plugin_failure(device):
    proxy, _, _ = device
    job_id = start(proxy, "example.error", message="no beam")
    assert finish(proxy, job_id) == "failure"
    assert proxy.getJobError(job_id).splitlines()[0] == "ValueError: no beam"


@pytest.mark.parametrize("what, where, line", BASE_EXCEPTIONS)
def test_base_exceptions_fail_the_job_and_the_server_goes_on(device, what, where, line):
    proxy, _, _ = device
    ids = [start(proxy, "devtrouble.raise", what=what, where=where) for _ in range(3)]
    assert [finish(proxy, i) for i in ids] == ["failure"] * 3  # more than the 2 slots
    assert proxy.getJobError(ids[0]).splitlines()[0] == line
    assert finish(proxy, start(proxy, "example.square", x=3)) == "success"


# before the hung-plugin test: a Dask worker restart it asks for may still be under way
# afterwards and fail the next job's task (a known race of the dask executor)
def test_start_job_never_imports_plugin_code_in_an_isolating_server(device):
    proxy, _, kind = device
    if kind == "thread":
        pytest.skip("the thread executor runs (and imports) plugins in the server by design")
    job_id = start(proxy, "devbadimport.anything")  # its module ends the process importing it
    assert finish(proxy, job_id, timeout=60) == "failure"
    assert "worker process died" in proxy.getJobError(job_id)
    with pytest.raises(tango.DevFailed, match="no module 'nomodule'"):
        start(proxy, "nomodule.anything")
    after = start(proxy, "example.square", x=4)
    assert finish(proxy, after, timeout=60) == "success", proxy.getJobError(after)


def answer(command, *args):
    """A command that may answer Dahu_TryAgain (modules still loading), called again."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return command(*args)
        except tango.DevFailed as err:
            if err.args[0].reason != "Dahu_TryAgain" or time.monotonic() > deadline:
                raise


def test_list_and_init_plugins_never_import_plugin_code_in_an_isolating_server(device):
    # bug: listPlugins and initPlugin imported the plugin modules in the server: a
    # module whose import segfaults (or calls os._exit) ended the server
    proxy, workdir, kind = device
    if kind == "thread":
        pytest.skip("the thread executor imports plugins in the server by design")
    lines = answer(proxy.listPlugins).splitlines()
    assert lines[0].startswith("List of all plugin currently loaded")
    assert " devsegv.<error> : cannot load: the import crashed: signal 11 (SIGSEGV)" in lines
    assert " devbadimport.<error> : cannot load: the import ended the process: exit code 3" in lines
    # bug: a module whose import hung kept listPlugins answering "try again" for ever
    assert " devhang.<error> : cannot load: the import did not finish within 5 s" in lines
    assert " example.square : Return x squared." in lines
    assert (
        " devfork.returns : Forks; the child returns from the plugin too (no exec, no os._exit)."
        in lines
    )
    assert answer(proxy.initPlugin, "devsegv.x") == (
        "Plugin not found: devsegv.x, cannot load plugin 'devsegv.x': "
        "the import crashed: signal 11 (SIGSEGV)"
    )
    assert answer(proxy.initPlugin, "devbadimport.x").endswith("ended the process: exit code 3")
    assert answer(proxy.initPlugin, "devhang.x").endswith("the import did not finish within 5 s")
    assert (
        answer(proxy.initPlugin, "example.square")
        == "Plugin loaded: example.square\nReturn x squared."
    )
    assert answer(proxy.initPlugin, "devfork.nothing") == (
        "Plugin not found: devfork.nothing, unknown plugin 'devfork.nothing': "
        f"module 'devfork' ({workdir.parent / 'plugins' / 'devfork.py'}) does not define it"
    )
    assert proxy.state() == tango.DevState.ON
    assert finish(proxy, start(proxy, "example.square", x=7), timeout=60) == "success"


def test_abort_hung_plugin_and_timeout(device):
    proxy, _, _ = device
    job_id = start(proxy, "devtrouble.hang")
    deadline = time.monotonic() + 30
    while proxy.getJobState(job_id) != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.abort(job_id) is True
    assert finish(proxy, job_id, timeout=30) == "aborted"
    timed = start(proxy, "devtrouble.hang", job_timeout=0.3)
    assert finish(proxy, timed, timeout=30) == "aborted"
    assert proxy.getJobError(timed).startswith("timed out after 0.3 s")
    assert finish(proxy, start(proxy, "example.square", x=3)) == "success"


def test_wait_for_chain_longer_than_the_pool(device):
    proxy, _, _ = device
    head = start(proxy, "example.square", x=2)
    chain = [head]
    for _ in range(4):
        chain.append(start(proxy, "devtrouble.addprevious", other=chain[-1], x=1))
    assert finish(proxy, chain[-1], timeout=120) == "success"
    assert json.loads(proxy.getJobOutput(chain[-1]))["result"] == 4 + 4


def test_a_process_a_plugin_forks_does_not_shift_the_outcomes_of_later_jobs(device):
    # bug: the plugin's forked child returned too and its 'done' message was taken for
    # the job's outcome (the child's output); every later job on that worker then ended
    # with the output of the job before it, all 'success'
    proxy, _, kind = device
    if kind != "process":
        pytest.skip("a plugin forking the server or a Dask worker is not supported")
    job_id = start(proxy, "devfork.returns", x=1)
    assert finish(proxy, job_id) == "success"
    assert json.loads(proxy.getJobOutput(job_id))["result"] == {"who": "parent", "x": 1}
    for t in (0.2, 0.1, 0.3, 0.05):
        job_id = start(proxy, "example.sleep", t=t)
        assert finish(proxy, job_id) == "success"
        assert json.loads(proxy.getJobOutput(job_id))["t"] == t


MARKED = '''"""Writes the id of the process importing it."""
import os
from dahu.plugin import plugin_from_function

with open(os.path.join(os.path.dirname(__file__), "imported-by"), "a") as marks:
    marks.write(f"{os.getpid()}\\n")


def first(x=0):
    """The first plugin.

    More about it."""
    return x
plugin_from_function(first)
'''


def test_the_plugin_listing_of_an_isolating_server_is_made_by_a_helper_process(tmp_path):
    # the same texts as the server's own imports gave, never imported here, and kept
    # until a module file of the plugin directories changes
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "marked.py").write_text(MARKED)
    catalog = PluginCatalog(Factory(plugin_path=[str(plugins)]), isolated=True)
    lines = catalog.listing().splitlines()
    assert lines[0] == PLUGINS_HEADER
    assert " marked.first : The first plugin." in lines
    assert " example.square : Return x squared." in lines
    expected = "Plugin loaded: marked.first\nThe first plugin.\n\nMore about it."
    assert catalog.init_text(" marked.first ") == expected
    marks = (plugins / "imported-by").read_text().split()
    assert len(marks) == 1 and int(marks[0]) != os.getpid()  # once, by a helper process
    assert catalog.listing().splitlines() == lines  # kept
    (plugins / "marked.py").write_text(
        MARKED + "\n\ndef second():\n    '''Two.'''\nplugin_from_function(second)\n"
    )
    assert " marked.second : Two." in catalog.listing().splitlines()
    assert catalog.init_text("marked.second") == "Plugin loaded: marked.second\nTwo."
    assert catalog.init_text("marked.third").startswith("Plugin not found: marked.third, ")
    assert os.getpid() not in {int(pid) for pid in (plugins / "imported-by").read_text().split()}
    in_process = PluginCatalog(Factory(plugin_path=[str(plugins)]), isolated=False)
    assert in_process.init_text("marked.first") == expected  # the thread executor's text
    assert " marked.second : Two." in in_process.listing().splitlines()


def test_the_server_recycles_its_worker_processes_as_told(tmp_path):
    # bug: recycle_jobs and recycle_rss_mb were executor options only: a server could
    # not set them (a plugin that leaks memory grew its worker for weeks)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "where.py").write_text(
        "import os\nfrom dahu.plugin import plugin_from_function\n\n\n"
        "def pid():\n    return {'pid': os.getpid()}\n\n\nplugin_from_function(pid)\n"
    )
    server = LocalServer(
        str(tmp_path / "work"),
        str(tmp_path / "server.log"),
        max_workers=1,
        device="test/dahu/recycling",
        extra_args=["--executor", "process", "--recycle-jobs", "2", "--plugins", str(plugins)],
    )
    proxy = server.start(timeout=60)
    try:
        pids = []
        for _ in range(5):
            job_id = start(proxy, "where.pid")
            assert finish(proxy, job_id) == "success"
            pids.append(json.loads(proxy.getJobOutput(job_id))["result"]["pid"])
        assert server.process.pid not in pids
    finally:
        assert server.stop() == 0
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids


FLAGS = '''
import os
import time

from dahu.factory import register
from dahu.plugin import Plugin


@register
class Flags(Plugin):
    """Creates the file flag, then runs until aborted."""

    def process(self):
        open(self.input["flag"], "w").close()
        while not self.is_aborted:
            time.sleep(0.01)
'''


def test_a_terminal_ctrl_c_stops_the_server_and_aborts_its_jobs(tmp_path):
    # bug: Ctrl-C in the terminal of a dahu_server --executor process sent SIGINT to its
    # worker processes too (one process group): they died with KeyboardInterrupt
    # tracebacks and their jobs ended "failure: worker process died: signal 2 (SIGINT)"
    # instead of being aborted by the server's shutdown
    import signal
    import subprocess

    import psutil

    from dahu.journal.reader import JournalReader

    workdir = tmp_path / "work"
    log = tmp_path / "server.log"
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "flagging.py").write_text(FLAGS)
    server = LocalServer(
        str(workdir),
        str(log),
        max_workers=2,
        device="test/dahu/ctrlc",
        extra_args=["--executor", "process", "--plugins", str(tmp_path / "plugins")],
    )
    with open(log, "w") as out:  # a process group of its own, as a terminal's job is
        process = subprocess.Popen(
            server.command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                proxy = tango.DeviceProxy(server.url)
                proxy.ping()
                break
            except tango.DevFailed:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        flags = [tmp_path / f"flag{i}" for i in range(2)]
        jobs = [start(proxy, "flagging.flags", flag=str(flag)) for flag in flags]
        for flag in flags:
            wait_for_file(flag)
        # and, as systemd's stop does, a SIGTERM to each worker too: they leave the stop
        # to the server (they died of it, their jobs failing "worker process died: signal
        # 15 (SIGTERM)" when the server heard of it before it aborted them)
        workers = [p for p in psutil.Process(process.pid).children() if "worker" in p.cmdline()[2]]
        assert len(workers) == 2
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            said = f"worker {worker.pid}: SIGTERM ignored"
            while said not in log.read_text() and (
                worker.is_running() or all(proxy.getJobState(job) == "running" for job in jobs)
            ):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader = JournalReader(str(workdir))
    assert [reader.state(job) for job in jobs] == ["aborted", "aborted"], log.read_text()
    assert "KeyboardInterrupt" not in log.read_text()
