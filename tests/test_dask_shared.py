"""A Dask worker of several threads that two servers share (``dask worker --nthreads 2``
on a scheduler of production and test servers, or of two beamlines).

One cluster for the module: a scheduler and one worker process of two threads.
"""

import logging
import time

import dask
import pytest

import dahu.engine
from dahu.engine import Engine
from dahu.executors.cluster import DaskExecutor
from dahu.factory import Factory
from dahu.job import Job

from .conftest import wait_for_file


@pytest.fixture(scope="module")
def scheduler():
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # as advised
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0"
        )
    client = Client(cluster)
    yield cluster.scheduler_address, client
    client.close()
    cluster.close()


@pytest.fixture
def servers(scheduler, tmp_path):
    """Two servers on that scheduler, each with its plugin directory (``a``, ``b``)."""
    previous = dahu.engine.core._current
    made = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        factory = Factory(plugin_path=[str(tmp_path / name)])
        executor = DaskExecutor(scheduler=scheduler[0], abort_grace=0.2)
        made[name] = Engine(str(tmp_path / f"work-{name}"), executor=executor, factory=factory)
    yield made
    for engine in made.values():
        engine.close()
    if previous is not None:
        dahu.engine.activate(previous)


def start(engine, name, data):
    dahu.engine.activate(engine)
    job = Job(name, data)
    job.start()
    return job


TWIN = """
import os
import logging
import time

from dahu.factory import register
from dahu.plugin import Plugin

if HOLD:  # its import waits for the file ``go``
    open(HOLD + ".importing", "w").close()
    while not os.path.exists(HOLD + ".go"):
        time.sleep(0.01)


@register
class Which(Plugin):
    def process(self):
        self.output["whose"] = WHOSE
"""


def test_a_job_never_runs_the_other_server_s_module_loaded_by_another_thread(
    scheduler, servers, tmp_path
):
    # bug: on a worker of two threads, a server's job whose module of that name the other
    # server's job was loading meanwhile (from its own directory) ran the other server's
    # plugin, and was a "success" with its output
    hold = str(tmp_path / "hold")
    for name, holds in (("a", hold), ("b", "")):
        module = f"HOLD = {holds!r}\nWHOSE = {name!r}\n" + TWIN
        (tmp_path / name / "twin_shared.py").write_text(module)
    first = start(servers["a"], "twin_shared.which", {})
    wait_for_file(tmp_path / "hold.importing")  # a's module is being imported
    second = start(servers["b"], "twin_shared.which", {})

    def loading(dask_worker=None):  # the worker's threads loading a plugin now
        import sys

        return sum(
            any(f.f_code.co_name == "search_plugin" for f in _stack(frame))
            for frame in sys._current_frames().values()
        )

    def _stack(frame):
        while frame is not None:
            yield frame
            frame = frame.f_back

    client = scheduler[1]
    deadline = time.monotonic() + 30
    while 2 not in client.run(loading).values():  # b's job waits for a's import
        assert time.monotonic() < deadline, "b's job never began to load its plugin"
        time.sleep(0.01)
    (tmp_path / "hold.go").touch()
    first.join(30)
    second.join(30)
    assert (first.status, first.output_data.get("whose")) == ("success", "a")
    assert (second.status, second.error) == (
        "failure",
        f"plugin module 'twin_shared' is loaded on this Dask worker from "
        f"{tmp_path / 'a' / 'twin_shared.py'}, not {tmp_path / 'b' / 'twin_shared.py'}: "
        "servers of different plugin directories share the worker (give each its own "
        "workers)",
    )


HUNG = """
import os
import logging
import time

from dahu.factory import register
from dahu.plugin import Plugin


@register
class Hang(Plugin):
    # creates ``flag``, then ignores its abort until ``go`` exists
    def process(self):
        open(self.input["flag"], "w").close()
        while not os.path.exists(self.input["go"]):
            time.sleep(0.02)


@register
class Held(Plugin):
    # creates ``flag``, waits for ``go``
    def process(self):
        open(self.input["flag"], "w").close()
        while not os.path.exists(self.input["go"]):
            time.sleep(0.02)
        self.output["done"] = True
"""


def test_a_job_on_a_worker_another_server_restarted_says_so(servers, tmp_path):
    # bug: a server restarts a worker whose plugin ignored its abort; the other server's
    # job whose plugin ran there failed "worker process died (tcp://...); Dask does not
    # say how: see that worker's log", as if its own plugin had crashed the worker
    (tmp_path / "a" / "hang_shared.py").write_text(HUNG)  # two names: the worker runs both
    (tmp_path / "b" / "held_shared.py").write_text(HUNG)
    go = tmp_path / "go"
    try:
        hung = start(
            servers["a"], "hang_shared.hang", {"flag": str(tmp_path / "hung"), "go": str(go)}
        )
        wait_for_file(tmp_path / "hung")
        held = start(
            servers["b"], "held_shared.held", {"flag": str(tmp_path / "held"), "go": str(go)}
        )
        wait_for_file(tmp_path / "held")  # both threads of the worker are busy
        dahu.engine.activate(servers["a"])
        assert hung.abort()
        hung.join(30)
        held.join(30)
        assert hung.status == "aborted"
        assert (held.status, held.error) == (
            "failure",
            "worker process restarted by another server sharing the Dask worker (a plugin "
            "of its there ignored its abort)",
        )
    finally:
        go.touch()


MAKER = """
from dahu.factory import register
from dahu.job import Job
from dahu.plugin import Plugin


@register
class Make(Plugin):
    # makes a job, waits for it: its id and result
    def process(self):
        job = Job("example.square", {"x": self.input["x"]})
        job.start()
        self.output["made"] = job.id
        self.output["result"] = self.wait_for(job.id).output_data["result"]
"""


def test_a_job_a_plugin_makes_on_a_shared_worker_is_its_own_server_s(servers, tmp_path):
    # bug: a job a plugin made on a Dask worker serving two servers went to the journal of
    # the first server that sent the worker a job: the other server's plugin could not
    # wait for it ("Not synchronizing job, invalid id"), nor that server answer for it
    for name in ("a", "b"):
        (tmp_path / name / f"maker_{name}.py").write_text(MAKER)
    for name, x in (("a", 2), ("b", 3)):
        job = start(servers[name], f"maker_{name}.make", {"x": x})
        job.join(30)
        assert (job.status, job.error, job.output_data.get("result")) == ("success", "", x * x)
        made = servers[name].journal.get(job.output_data["made"])
        assert (made.plugin, made.state) == ("example.square", "success")


LATE = """
from dahu.factory import register
from dahu.plugin import Plugin


@register
class Here(Plugin):
    def process(self):
        self.output["here"] = True
"""


def test_a_plugin_directory_a_worker_lacked_at_first_is_found_once_there(servers, tmp_path):
    # bug: a plugin directory that a worker did not have when its server first sent it a
    # job (not mounted there yet) was ignored by that worker for good: once there, its
    # jobs still failed "... (plugin directory /x does not exist: ignored)", untrue
    plugins = tmp_path / "a"
    (plugins / "late_shared.py").write_text(LATE)
    plugins.rename(tmp_path / "away")  # known to the server, not there for the worker
    try:
        job = start(servers["a"], "late_shared.here", {})
        job.join(30)
        assert job.status == "failure"
        assert job.error.endswith(f"(plugin directory {plugins} does not exist: ignored)")
    finally:
        (tmp_path / "away").rename(plugins)
    job = start(servers["a"], "late_shared.here", {})
    job.join(30)
    assert (job.status, job.error, job.output_data.get("here")) == ("success", "", True)


def test_a_stop_while_the_dask_scheduler_is_away_logs_no_dask_error(tmp_path, caplog):
    # bug: a server stopped while its client tried to reconnect to its scheduler (gone
    # less than 30 s before) logged a Dask ERROR: a CancelledError with a traceback of
    # some 40 lines, or "Failed to reconnect to scheduler after 30.00 seconds", untrue
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=":0")
    executor = DaskExecutor(scheduler=cluster.scheduler_address)
    engine = Engine(str(tmp_path / "work"), executor=executor)
    cluster.close()
    deadline = time.monotonic() + 30
    while executor.client.status != "connecting":  # it tries for 30 s
        assert time.monotonic() < deadline, "the client never tried to reconnect"
        time.sleep(0.01)
    with caplog.at_level(logging.INFO, logger="distributed.client"):
        engine.close()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said == []
