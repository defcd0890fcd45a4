"""Shared fixtures: a fresh engine (journal + executor) in a temporary work directory."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tango
import tango.test_context

import dahu.engine
from dahu.app.localserver import LocalServer
from dahu.factory import Factory

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


# A device under test (``DeviceTestContext(..., process=True)``) starts in a new
# interpreter, not in a fork of the test process: a fork inherits the test process's
# heap, its threads' locks and omniORB's state after hundreds of tests, and such devices
# ran 4 to 6 times slower late in the suite (one now and then never finished starting).
tango.test_context.multiprocessing = multiprocessing.get_context("spawn")


class PreparedDevice(tango.test_context.DeviceTestContext):
    """A device under test whose new interpreter first calls ``prepare`` (a module-level
    function or a ``functools.partial`` of one: it is pickled), for a test that patches
    the device's code.  (Such devices were forked from the test process, to see its
    monkeypatches: under load one now and then never finished starting, or its admin
    device refused a connection; it had inherited the test process's omniORB threads.)"""

    def __init__(self, *args, prepare, **kwargs):
        self._prepare = prepare
        super().__init__(*args, **kwargs)

    def target(self, runserver, process=False):
        # (an error in prepare is reported as the start's: the server runs nothing)
        super().target(functools.partial(self._prepared, runserver), process)

    def _prepared(self, runserver, **kwargs):
        self._prepare()
        return runserver(**kwargs)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that ran no test (a wrong path or ``-k``) fails, rather than ending with
    pytest's own "no tests ran" status 5, which CI scripts may take for a pass."""
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller decides
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nno test ran: this counts as a failure (see tests/conftest.py)")


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_removed_after_the_run(tmp_path_factory: pytest.TempPathFactory):
    """What the code under test puts in the system's temporary directory (the default
    work directories of ``dahu-reprocess`` and of plugins, browsers' profiles), here and
    in the programs the tests start, goes in a directory of this run, removed at its
    end: a few hundred directories piled up in ``/tmp`` over a day of test runs. (A
    short path: a unix socket's, such as Chromium's under it, is at most 107 bytes.)"""
    tmp_path_factory.getbasetemp()  # pytest's own (tmp_path) stays where it was
    path = tempfile.mkdtemp(prefix="dahu-tests-")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = path
    yield
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _plugin_directories_of_this_test_only():
    """Directories given to a ``Factory`` are searched by every factory of the process
    (as in the original): forget those a test gave, so that its plugin modules (often
    of the same names) are not found by the next tests."""
    before = list(Factory.configured)
    yield
    Factory.configured[:] = before


@pytest.fixture(autouse=True)
def _journal_reader_of_this_test_only():
    """A Dask task run in the test process (an in-process cluster's worker, or a call of
    ``run_task``) makes the process read jobs from its journal, as a worker does
    (``use_reader``, ``DAHU_WORKDIR``): forget it, or the next test's ``Job.getStatusFromID``
    reads that journal rather than its engine's."""
    from dahu.journal import reader

    before, workdir = reader._current, os.environ.get("DAHU_WORKDIR")
    yield
    reader._current = before
    if workdir is None:
        os.environ.pop("DAHU_WORKDIR", None)
    else:
        os.environ["DAHU_WORKDIR"] = workdir
    task = sys.modules.get("dahu.executors.dask_task")
    if before is None and task is not None:
        task._configured.clear()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A work directory for the engine under test."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def engine(workdir: Path):
    """A new engine on ``workdir``, made current for the test."""
    eng = dahu.engine.configure(workdir=str(workdir), max_workers=4)
    yield eng
    eng.executor.shutdown(wait=True, timeout=30)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty plugin directory listed in ``DAHU_PLUGINS``."""
    path = tmp_path / "plugins"
    path.mkdir()
    monkeypatch.setenv("DAHU_PLUGINS", str(path))
    return path


@contextlib.contextmanager
def running_server(base: Path, device: str, **options):
    """A database-less ``dahu_server`` in ``base`` (work directory and log), stopped at
    the end, where it must exit with status 0."""
    options.setdefault("max_workers", 2)
    local = LocalServer(str(base / "work"), str(base / "server.log"), device=device, **options)
    local.start(timeout=60)
    try:
        yield local
    finally:
        status = local.stop()
    assert status == 0, Path(local.log_path).read_text()[-2000:]


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process ``pid`` is stopped (a signal is delivered a moment later),
    every thread of it: each stops on its own, and a thread still running (its main
    thread shown stopped already) may still answer a call sent right then."""

    def states() -> list[str]:
        tasks = Path(f"/proc/{pid}/task")
        found = []
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                found.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        return found

    deadline = time.monotonic() + timeout
    while not all(state in "Tt" for state in states()):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.001)


FINAL = ("success", "failure", "aborted")


def finish(proxy, job_id: int, timeout: float = 60.0) -> str:
    """Call the device's waitJob until the job ends (each call is bounded by the device)."""
    deadline = time.monotonic() + timeout
    state = proxy.waitJob(job_id)
    while state not in FINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        state = proxy.waitJob(job_id)
    return state


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process of the test suite."""
    env = dict(os.environ)
    env.update(extra)
    return env


def damage(path) -> None:
    """Overwrite the header of the first page of the SQLite file ``path``: SQLite then
    finds it damaged (a journal cut short), not another kind of file."""
    with open(path, "r+b") as file:
        file.seek(100)
        file.write(b"\xff" * 8)


def next_item(items, seconds: float):
    """The next item of the queue ``items`` within ``seconds``, or None."""
    try:
        return items.get(timeout=seconds)
    except queue.Empty:
        return None


def wait_subscribed(proxy, next_heard, timeout: float = 30.0, plugin="example.noop") -> int:
    """Wait until a subscription to ``jobSuccess`` brings the event of a job started after
    it: ``subscribe_event`` returns before ZeroMQ has taken the subscription to the
    server (docs/server.md), and on a loaded machine the events of the jobs started right
    after reached nobody.  ``next_heard(seconds)``: the next job id heard within that
    time, or None.  Returns the last probe job's id (``plugin`` jobs: ``example.error``
    for a subscription to ``jobFailure``)."""
    deadline = time.monotonic() + timeout
    probe, heard = None, None
    while heard is None or heard != probe:
        assert time.monotonic() < deadline, "no event heard after subscribing"
        if heard is None:  # (another job's event: read on)
            probe = proxy.startJob([plugin, "{}"])
        heard = next_heard(0.5)
    return probe


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    """Wait until ``path`` exists (a plugin says it is in ``process``)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


TROUBLE_PLUGINS = '''\
"""Plugins that misbehave, for the executor tests."""
import ctypes
import os
import signal
import time

from dahu.factory import register
from dahu.plugin import Plugin


@register
class Crash(Plugin):
    """Kill the process running it: os._exit(1), os.abort(), a segfault, or a SIGSEGV it
    sends its process before it returns (creates the file ``flag``, if given, on entering;
    then waits for the file ``go``, if given)."""

    def process(self):
        if "flag" in self.input:
            open(self.input["flag"], "w").close()
        while "go" in self.input and not os.path.exists(self.input["go"]):
            time.sleep(0.01)
        if self.input.get("how") == "exit":
            os._exit(1)
        if self.input.get("how") == "abort":
            os.abort()
        if self.input.get("how") == "kill":
            os.kill(os.getpid(), signal.SIGSEGV)
            self.output["survived"] = True
            return
        ctypes.string_at(0)


@register
class Hang(Plugin):
    """Never stops, ignores abort (creates the file ``flag``, if given, on entering)."""

    def process(self):
        if "flag" in self.input:
            open(self.input["flag"], "w").close()
        while True:
            time.sleep(0.02)


@register
class Stubborn(Plugin):
    """Never stops, and its abort() never returns (it waits for a lock process holds)."""

    def process(self):
        while True:
            time.sleep(0.02)

    def abort(self):
        while True:
            time.sleep(0.02)


@register
class Patient(Plugin):
    """Runs until aborted; times out after JOB_TIMEOUT."""

    JOB_TIMEOUT = 0.5

    def process(self):
        while not self.is_aborted:
            time.sleep(0.01)


@register
class AddPrevious(Plugin):
    """Wait for job `other`, add its result to x (creates the file ``flag``, if given,
    before it waits)."""

    TIMEOUT = 60

    def process(self):
        if "flag" in self.input:
            open(self.input["flag"], "w").close()
        other = self.wait_for(self.input["other"])
        self.output["result"] = other.output_data["result"] + self.input["x"]


THROWN = {
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "BaseException": lambda: BaseException("odd"),
}


@register
class Raise(Plugin):
    """Raise the BaseException named `what` in `where` (setup, process or teardown)."""

    def setup(self, kwargs=None):
        super().setup(kwargs)
        self._throw("setup")

    def process(self):
        self._throw("process")

    def teardown(self):
        super().teardown()
        self._throw("teardown")

    def _throw(self, where):
        if self.input.get("where", "process") == where:
            raise THROWN[self.input["what"]]()


class Mute(ValueError):
    """An exception whose message cannot be read (its __str__ raises)."""

    def __str__(self):
        raise RuntimeError("no text")


@register
class Unreadable(Plugin):
    """Raise an exception whose str() raises, after writing some output."""

    def process(self):
        self.output["partial"] = 1
        raise Mute()


@register
class Linger(Plugin):
    """Start a thread that is not a daemon and never ends (a monitor loop)."""

    def process(self):
        import threading

        threading.Thread(target=_forever, name="linger-monitor", daemon=False).start()
        self.output["result"] = 1


def _forever():
    while True:
        time.sleep(0.05)


@register
class Unwritable(Plugin):
    """Leave an output no JSON text nor repr() can hold: an int of 5,000 digits
    (`how`: "huge") or lists nested 100,000 deep ("deep"); or add an object to its input
    ("input")."""

    def process(self):
        if self.input.get("how") == "input":
            self.input["handle"] = object()
            self.output["result"] = 1
        elif self.input.get("how") == "deep":
            deep = []
            for _ in range(100_000):
                deep = [deep]
            self.output["deep"] = deep
        else:
            self.output["big"] = 10**5000


@register
class Pid(Plugin):
    """Report the process id."""

    def process(self):
        self.output["pid"] = os.getpid()
'''
"""A plugin module: crashing, hanging, timing-out, raising, waiting and pid-reporting
plugins."""

BASE_EXCEPTIONS = [
    ("SystemExit", "process", "SystemExit: 3"),
    ("KeyboardInterrupt", "process", "KeyboardInterrupt"),
    ("GeneratorExit", "setup", "GeneratorExit"),
    ("BaseException", "teardown", "teardown failed: BaseException: odd"),
]
"""(what, where, first line of the job's error) for the ``trouble.raise`` plugin."""
