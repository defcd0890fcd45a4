"""dahu-register and dahu_server against a real Tango database.

The database is PyTango's own (``python -m tango.databaseds.database``, SQLite file in
the test's directory, on a port the system picks); the server and the registration tool
are the installed entry points, run as separate processes with ``TANGO_HOST`` set.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tango

from dahu import client_probe
from dahu.app.localserver import free_port
from dahu.client import DahuClient, ServerError

from .conftest import wait_stopped

BIN = Path(sys.executable).parent
INSTANCE = "dbtest"
DATABASES: dict[str, subprocess.Popen] = {}  # TANGO_HOST -> the database's process
DEVICE = "id00/dahu/dbtest"

PLUGIN = '''\
"""A plugin that is only found through the registered plugins_directory property."""

from dahu.plugin import plugin_from_function


def hello(name="world"):
    """Say hello."""
    return f"hello {name}"


plugin_from_function(hello)
'''


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install -e .)")
    return str(path)


def database_answers(proc: subprocess.Popen, port: int, timeout: float) -> bool:
    """Whether the database started by ``proc`` answers on ``port`` (False if it exits)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            tango.Database("127.0.0.1", port)
            return True
        except tango.DevFailed:
            time.sleep(0.2)
    return False


@pytest.fixture
def database(tmp_path):
    """A Tango database on a free port; yields the TANGO_HOST value.

    The port is picked here and the database is asked whether it answers: PyTango's
    ``--port 0 --print-host-port`` needs PyTango 10.3, and pyproject.toml allows 10.1."""
    env = dict(os.environ, PYTANGO_DATABASE_NAME=str(tmp_path / "tango.db"))
    env.pop("TANGO_HOST", None)
    log = tmp_path / "database.log"
    errors = log.open("w")
    for _attempt in range(3):  # another process may take the port before the database
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tango.databaseds.database", "--host", "127.0.0.1"]
            + ["--port", str(port), "2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        if database_answers(proc, port, timeout=60):
            break
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail("the Tango database did not answer within 60 s")
    else:
        pytest.fail(f"the Tango database did not start: {log.read_text()[-2000:]}")
    DATABASES[f"127.0.0.1:{port}"] = proc
    try:
        yield f"127.0.0.1:{port}"
    finally:
        DATABASES.pop(f"127.0.0.1:{port}", None)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors.close()


def wait_for_device(url: str, server: subprocess.Popen, timeout: float = 60) -> tango.DeviceProxy:
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"dahu_server exited with status {server.returncode}"
        try:
            proxy = tango.DeviceProxy(url)
            proxy.ping()
            return proxy
        except tango.DevFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def finish(proxy: tango.DeviceProxy, job_id: int) -> str:
    deadline = time.monotonic() + 30
    state = proxy.waitJob(job_id)
    while state not in ("success", "failure", "aborted") and time.monotonic() < deadline:
        state = proxy.waitJob(job_id)
    return state


def test_register_then_serve_by_name_then_stop_cleanly(database, tmp_path, monkeypatch):
    env = dict(os.environ, TANGO_HOST=database)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dbtest.py").write_text(PLUGIN)
    workdir = tmp_path / "work"

    registered = subprocess.run(
        [
            tool("dahu-register"),
            INSTANCE,
            DEVICE,
            "--plugins",
            str(plugins),
            "--workdir",
            str(workdir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert registered.returncode == 0, registered.stderr
    assert DEVICE in registered.stdout

    log_dir = tmp_path / "logs"
    with open(tmp_path / "server.err", "w") as err:
        server = subprocess.Popen(
            [tool("dahu_server"), INSTANCE, "--log", str(log_dir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        proxy = wait_for_device(f"tango://{database}/{DEVICE}", server)
        assert proxy.get_property("plugins_directory")["plugins_directory"] == [str(plugins)]
        job_id = proxy.startJob(["dbtest.hello", json.dumps({"name": "tango"})])
        assert finish(proxy, job_id) == "success"
        assert json.loads(proxy.getJobOutput(job_id))["result"] == "hello tango"
        assert proxy.state() == tango.DevState.ON
        # bug: a second server of the same instance printed Tango's words, status 255
        second = subprocess.run(
            [tool("dahu_server"), INSTANCE, "--workdir", str(tmp_path / "other")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert second.stderr.startswith(f"dahu_server: DahuDS/{INSTANCE} is already running (pid ")
        assert second.stderr.count("\n") == 1, second.stderr
        assert proxy.getJobState(job_id) == "success"  # the first one serves on
        # bug: registering again while the server ran (to update a property, as
        # documented) marked the device not exported: every new client was refused,
        # "Device id00/dahu/dbtest is not exported", until the server restarted
        again = [tool("dahu-register"), INSTANCE, DEVICE, "--max-workers", "3"]
        registered = subprocess.run(again, env=env, capture_output=True, text=True, timeout=60)
        assert registered.returncode == 0, registered.stderr
        assert tango.DeviceProxy(f"tango://{database}/{DEVICE}").getJobState(job_id) == "success"
        # and a move to another instance while it runs is refused (it was moved, and
        # the running server's device was no longer exported)
        move = [tool("dahu-register"), "other", DEVICE]
        moved = subprocess.run(move, env=env, capture_output=True, text=True, timeout=60)
        assert moved.returncode == 1
        assert moved.stderr == (
            f"dahu-register: {DEVICE} is served by DahuDS/{INSTANCE} (pid {server.pid} on "
            f"{socket.gethostname()}): stop it first to register it in DahuDS/other\n"
        )
        assert tango.DeviceProxy(f"tango://{database}/{DEVICE}").getJobState(job_id) == "success"
        running = proxy.startJob(["example.sleep", json.dumps({"t": 600})])
        deadline = time.monotonic() + 30
        while proxy.getJobState(running) != "running":
            assert time.monotonic() < deadline, "the sleep job never ran"
            time.sleep(0.02)
        # bug: a client of a device found through the database, whose server was stopped
        # by a signal, took 9 s to fail with timeout=0.5 (holding Python's lock for 3 s)
        url = f"tango://{database}/{DEVICE}"
        server.send_signal(signal.SIGSTOP)
        try:
            wait_stopped(server.pid)
            started = time.monotonic()
            with pytest.raises(ServerError) as info:
                DahuClient(url, timeout=0.5)
            took = time.monotonic() - started
        finally:
            server.send_signal(signal.SIGCONT)
        assert took < 2.0, took
        assert str(info.value).startswith(f"cannot connect to {url}: its server at ")
        assert info.value.reason == "API_DeviceTimedOut"
        # bug: a client of a device whose Tango database was stopped by a signal took
        # minutes to fail (66 s with timeout=0.5, 229 s with the default, on a loaded
        # machine: each proxy it made waited for the database two or three times over)
        stopped_db = DATABASES[database]
        stopped_db.send_signal(signal.SIGSTOP)
        try:
            wait_stopped(stopped_db.pid)
            started = time.monotonic()
            with pytest.raises(ServerError) as info:
                DahuClient(url, timeout=0.5)
            took = time.monotonic() - started
            monkeypatch.setenv("TANGO_HOST", database)  # a name alone: TANGO_HOST's
            with pytest.raises(ServerError, match=f"its Tango database at {database} does"):
                client_probe.probe(DEVICE, 0.5)
        finally:
            stopped_db.send_signal(signal.SIGCONT)
        assert took < 2.0, took
        assert str(info.value) == (
            f"cannot connect to {url}: its Tango database at {database} does not answer "
            f"(nothing within 0.5 s: is it stopped?)"
        )
        assert info.value.reason == "API_DeviceTimedOut"
        with DahuClient(url, timeout=5) as dahu:  # the database answers again
            assert dahu.job(job_id).result(timeout=30)["result"] == "hello tango"
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    stderr = (tmp_path / "server.err").read_text()
    assert server.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    # the running job was aborted and recorded before the process exited
    with sqlite3.connect(workdir / "journal.sqlite") as db:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    assert states == {job_id: "success", running: "aborted"}
    assert (workdir / f"{job_id // 1000:04d}" / f"{job_id:05d}_dbtest.hello.out").exists()
    assert (log_dir / f"dahu_server_{INSTANCE}.log").read_text().count("stopped") == 1


def test_register_without_a_database_fails_in_one_line():
    env = dict(os.environ, TANGO_HOST=f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [tool("dahu-register"), INSTANCE, DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Tango database reachable" in lines[0], result.stderr


def test_server_without_a_database_says_where_it_looked(tmp_path):
    # it was Tango's "Can't build connection to TANGO database server, exiting", status 255
    host = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [tool("dahu_server"), INSTANCE, "--workdir", str(tmp_path)],
        env=dict(os.environ, TANGO_HOST=host),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dahu_server: no Tango database reachable at TANGO_HOST={host}: ")
    assert lines[0].endswith("(or run with -nodb)")


def test_server_of_an_instance_not_registered_says_so(database, tmp_path):
    # it was Tango's "The device server DahuDS/x is not defined in database. Exiting!",
    # status 255
    def serve(instance: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool("dahu_server"), instance, "--workdir", str(tmp_path)],
            env=dict(os.environ, TANGO_HOST=database),
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = serve("nowhere")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"dahu_server: DahuDS/nowhere is not registered in the Tango database at "
        f"TANGO_HOST={database}: run dahu-register nowhere DOMAIN/FAMILY/MEMBER first"
    )
    # bug: an instance whose device was deleted (or moved to another instance) started,
    # said "ready" and served no device
    db = tango.Database(*database.split(":"))
    info = tango.DbDevInfo()
    info.name, info._class, info.server = "id00/dahu/gone", "DahuDS", "DahuDS/emptied"
    db.add_device(info)
    db.delete_device(info.name)  # the admin device dserver/DahuDS/emptied stays
    result = serve("emptied")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"dahu_server: DahuDS/emptied has no DahuDS device in the Tango database at "
        f"TANGO_HOST={database}: run dahu-register emptied DOMAIN/FAMILY/MEMBER first"
    )


def test_register_takes_the_original_options_and_defaults(database):
    # bug: "the following arguments are required: instance, device" for the original's
    # dahu-register --server NAME --domain D --family F --member M (all optional)
    env = dict(os.environ, TANGO_HOST=database, HOME="/home/opid02")
    for argv, server, device in (
        (["--server", INSTANCE, "--domain", "id02", "--member", "7"], INSTANCE, "id02/dahu/7"),
        ([], "dahu", "id00/dahu/1"),
    ):
        # bug: a quoted "~/dahu" was registered as a directory "~" in the current one
        argv += ["--workdir", "~/dahu"]
        registered = subprocess.run(
            [tool("dahu-register"), *argv], env=env, capture_output=True, text=True, timeout=60
        )
        assert registered.returncode == 0, registered.stderr
        db = tango.Database(*database.split(":"))
        info = db.get_device_info(device)
        assert (info.class_name, info.ds_full_name) == ("DahuDS", f"DahuDS/{server}")
        assert list(db.get_device_property(device, "workdir")["workdir"]) == ["/home/opid02/dahu"]
    clash = subprocess.run(
        [tool("dahu-register"), INSTANCE, DEVICE, "--member", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert clash.returncode == 1
    assert clash.stderr == (
        "dahu-register: give the device either as DEVICE or with --domain/--family/--member\n"
    )


def test_register_refuses_a_bad_device_name():
    result = subprocess.run(
        [tool("dahu-register"), INSTANCE, "not-a-device"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "domain/family/member" in result.stderr


@pytest.mark.parametrize(
    "option, line",
    [
        (["--retention", "30x"], "argument --retention: bad retention '30x': expected a duration"),
        (["--http", "web"], "argument --http: web address 'web': expected PORT or HOST:PORT"),
        # bug: registered; a dask server then refused to start, "ValueError: scheduler:
        # 'tcp://host' is no scheduler address (missing port number in address 'host')"
        (
            ["--scheduler", "tcp://host"],
            "argument --scheduler: 'tcp://host' is no scheduler address (missing port number",
        ),
    ],
)
def test_register_refuses_what_the_server_would_not_apply(option, line):
    # bug: registered with status 0; the server then logged it and showed it in Status
    result = subprocess.run(
        [tool("dahu-register"), INSTANCE, DEVICE, *option],
        env=dict(os.environ, TANGO_HOST=f"127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"dahu-register: error: {line}")


def test_server_version_and_split_of_tango_options():
    result = subprocess.run([tool("dahu_server"), "-V"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("dahu ")

    from dahu.app.server import split_args

    own, rest = split_args(
        ["test", "-nodb", "-dlist", "id00/dahu/1", "-v4", "-d", "--plugins", "/p", "-l", "/l"]
    )
    assert own == ["-d", "--plugins", "/p", "-l", "/l"]
    assert rest == ["test", "-nodb", "-dlist", "id00/dahu/1", "-v4"]
    # the original dahu_server's spellings of Tango's trace level and trace file
    # (bug: "--verbose 4" made the server exit 2, "-f FILE" gave Tango's usage text)
    for words in (["--verbose", "4", "-f", "/t.log"], ["-v", "4", "--file=/t.log"]):
        own, rest = split_args(["test", "-nodb", *words, "-d"])
        assert (own, rest) == (["-d"], ["test", "-nodb", "-v4", "-file=/t.log"])
    # bug: the original's order, its options before the instance, was refused: "the
    # instance name must come first" for dahu_server -v 4 id00
    own, rest = split_args(["-v", "4", "-f", "/t.log", "-d", "test", "-nodb"])
    assert (own, rest) == (["-d"], ["test", "-nodb", "-v4", "-file=/t.log"])


@contextlib.contextmanager
def registered_server(database: str, tmp_path: Path):
    """``dahu-register`` then ``dahu_server`` of the test device; yields its proxy and
    stops the server (SIGTERM) at the end."""
    env = dict(os.environ, TANGO_HOST=database)
    registered = subprocess.run(
        [tool("dahu-register"), INSTANCE, DEVICE, "--workdir", str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert registered.returncode == 0, registered.stderr
    with open(tmp_path / "server.err", "w") as err:
        server = subprocess.Popen(
            [tool("dahu_server"), INSTANCE], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        yield wait_for_device(f"tango://{database}/{DEVICE}", server)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_init_applies_changed_properties_and_bounds_the_wait(database, tmp_path):
    # bugs: a default_timeout changed then Init had no effect (max_workers did); a
    # wait_timeout of 1e10 made every waitJob fail (OverflowError: timestamp out of range)
    env = dict(os.environ, TANGO_HOST=database)
    refused = subprocess.run(
        [tool("dahu-register"), INSTANCE, DEVICE, "--wait-timeout", "1e10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "expected 3600 or less, not 1e10" in refused.stderr
    with registered_server(database, tmp_path) as proxy:
        db = tango.Database(*database.split(":"))
        # a property written by hand (Jive), past what dahu-register accepts
        db.put_device_property(DEVICE, {"default_timeout": ["0.5"], "wait_timeout": ["1e10"]})
        proxy.Init()
        job = proxy.startJob(["example.sleep", json.dumps({"t": 30})])
        assert finish(proxy, job) == "aborted"  # waitJob answers (it failed on the overflow)
        assert proxy.getJobError(job).startswith("timed out after 0.5 s")


def test_init_says_which_changed_properties_wait_for_a_restart(database, tmp_path):
    # bug: a new executor, or a new http address once the page was served, was ignored
    # in silence (docs/server.md said that Init re-reads them)
    with registered_server(database, tmp_path) as proxy:
        db = tango.Database(*database.split(":"))
        # the executor in use, written by hand: not a change (it was "Thread ignored")
        db.put_device_property(DEVICE, {"http": ["127.0.0.1:0"], "executor": [" Thread "]})
        proxy.Init()  # the first address is served
        assert "web page: http://127.0.0.1:" in proxy.status()
        db.put_device_property(DEVICE, {"executor": ["process"], "http": ["127.0.0.1:1"]})
        proxy.Init()
    log = (tmp_path / "server.err").read_text()
    assert "executor process ignored: the server uses the thread executor until it restarts" in log
    assert "executor Thread ignored" not in log and "executor thread ignored" not in log
    assert "web page address 127.0.0.1:1 ignored: the page is served on 127.0.0.1:0" in log


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the default is one slot here")
def test_init_without_max_workers_gives_the_default_slots_back(database, tmp_path):
    # bug: max_workers set to 1 then deleted (or 0: the number of CPUs) kept 1 slot
    with registered_server(database, tmp_path) as proxy:
        db = tango.Database(*database.split(":"))
        db.put_device_property(DEVICE, {"max_workers": ["1"]})
        proxy.Init()
        db.delete_device_property(DEVICE, ["max_workers"])
        proxy.Init()
        jobs = [proxy.startJob(["example.sleep", json.dumps({"t": 60})]) for _ in range(2)]
        deadline = time.monotonic() + 30
        while proxy.jobsRunning < 2:
            assert time.monotonic() < deadline, "the second job never ran"
            time.sleep(0.02)
        for job in jobs:
            proxy.abort(job)


def test_a_busy_port_is_one_line_of_ours_after_omniorbs(tmp_path):
    # bug: a Python traceback ending in "RuntimeError: Caught an unknown exception!"
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [tool("dahu_server"), "t", "-nodb", "-port", str(port), "-dlist", "t/dahu/1"]
        result = subprocess.run(
            [*command, "--workdir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Address in use?" in result.stderr  # omniORB's reason
    ours = [line for line in result.stderr.splitlines() if line.startswith("dahu_server:")]
    assert ours == [
        "dahu_server: Tango could not start (Caught an unknown exception!): see omniORB above"
    ]


def test_init_with_a_bad_property_keeps_the_device_serving_in_fault(database, tmp_path):
    # bugs: Init with wait_timeout='abc' gave the client "UNKNOWN CORBA system exception",
    # the state stayed ON, statisticsCollected events were never pushed again, and Init
    # reset jobSuccess to 0
    with registered_server(database, tmp_path) as proxy:
        job = proxy.startJob(["example.square", json.dumps({"x": 3})])
        assert finish(proxy, job) == "success"
        seen: list[str] = []
        proxy.subscribe_event(
            "statisticsCollected",
            tango.EventType.CHANGE_EVENT,
            lambda event: seen.append(event.attr_value.value) if not event.err else None,
        )
        db = tango.Database(*database.split(":"))
        db.put_device_property(DEVICE, {"wait_timeout": ["abc"]})
        proxy.Init()  # no CORBA exception
        assert proxy.state() == tango.DevState.FAULT
        status = proxy.status()  # PyTango 10.3 names the property, 10.1 only the value
        assert "FAULT: bad device property: " in status and "'abc'" in status
        assert proxy.jobSuccess == job  # kept across Init
        # the same through the admin device's DevRestart (a new device object): it was
        # "Got exception when trying to build device status"
        tango.DeviceProxy(proxy.adm_name()).DevRestart(DEVICE)
        assert proxy.state() == tango.DevState.FAULT
        assert "FAULT: bad device property: " in proxy.status()
        assert proxy.jobSuccess == job
        assert finish(proxy, proxy.startJob(["example.square", "{}"])) == "success"
        before = len(seen)
        proxy.collectStatistics()
        deadline = time.monotonic() + 30
        while len(seen) == before:  # the event thread still pushes
            assert time.monotonic() < deadline, "no statisticsCollected event after Init"
            time.sleep(0.02)
        db.delete_device_property(DEVICE, ["wait_timeout"])
        proxy.Init()
        assert proxy.state() == tango.DevState.ON
        # bug: a negative max_workers meant "the number of CPUs" without a word
        db.put_device_property(DEVICE, {"max_workers": ["-2"]})
        proxy.Init()
        assert proxy.state() == tango.DevState.FAULT
        assert "FAULT: bad device property: max_workers must be a whole" in proxy.status()
        assert "not -2" in proxy.status()
        db.delete_device_property(DEVICE, ["max_workers"])
        proxy.Init()
        assert proxy.state() == tango.DevState.ON
        # bug: a negative recycle_jobs/recycle_rss_mb meant "never" without a word, and a
        # negative queue_limit kept the device in ALARM ("0 jobs queued, more than -1")
        for name, value in (
            ("queue_limit", "-1"),
            ("recycle_jobs", "-3"),
            ("recycle_rss_mb", "-1.5"),
        ):
            db.put_device_property(DEVICE, {name: [value]})
            proxy.Init()
            assert proxy.state() == tango.DevState.FAULT
            status = proxy.status()
            assert f"FAULT: bad device property: {name} must be 0 or more, not {value}:" in status
            assert "ALARM" not in status  # the queue limit in force is kept
            db.delete_device_property(DEVICE, [name])
        proxy.Init()
        assert proxy.state() == tango.DevState.ON


def test_an_init_reaching_the_object_a_dev_restart_replaced_keeps_the_events(database, tmp_path):
    # bug: an Init sent just after the admin's DevRestart, while a command of the
    # replaced object still ran (another client's waitJob), reached that object: Tango
    # refused it ("Can't find new device in device list"), but the device had taken the
    # replaced object back as its own, and pushed every later event through it: to
    # nobody, until another Init
    with registered_server(database, tmp_path) as proxy:
        heard: set[int] = set()
        proxy.subscribe_event(
            "jobSuccess",
            tango.EventType.CHANGE_EVENT,
            lambda event: event.err or heard.add(int(event.attr_value.value)),
        )
        other = tango.DeviceProxy(f"tango://{database}/{DEVICE}")
        slow = proxy.startJob(["example.sleep", json.dumps({"t": 30})])
        deadline = time.monotonic() + 30
        while proxy.getJobState(slow) != "running":
            assert time.monotonic() < deadline, "the sleep job never ran"
            time.sleep(0.02)
        assert other.getJobState(slow) == "running"  # connected, its commands known: the
        # waitJob below is sent at once (else it could come after the DevRestart, unsent:
        # AttributeError, its command list unreadable then, and the race not run)
        waiter = threading.Thread(target=lambda: other.waitJob(slow))  # 2 s: wait_timeout
        waiter.start()
        admin = tango.DeviceProxy(proxy.adm_name())
        admin.DevRestart(DEVICE)  # while the waitJob goes on
        with contextlib.suppress(tango.DevFailed):
            proxy.Init()
        waiter.join(30)
        proxy.abort(slow)
        job = proxy.startJob(["example.square", json.dumps({"x": 2})])
        assert finish(proxy, job) == "success"
        deadline = time.monotonic() + 20
        while job not in heard:
            assert time.monotonic() < deadline, "the job's event never came"
            time.sleep(0.05)
