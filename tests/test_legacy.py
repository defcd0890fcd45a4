"""Drop-in compatibility: plugins written for the original Dahu (2024.2.0) run unchanged.

Each plugin of ``tests/legacy_plugins`` is one pattern of the original's beamline plugins.
Every test runs its jobs twice: in this process through ``dahu.job.Job`` (as a plugin or a
script sees them) and through a real ``DahuDS`` device with a ``DeviceProxy`` (as a client
reads them, JSON decoded), and checks what a user of the original would see.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tango.test_context import DeviceTestContext

import dahu
from dahu.job import Job
from dahu.server import DahuDS

from .conftest import child_env, finish

LEGACY = Path(__file__).resolve().parent / "legacy_plugins"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


class Ran:
    """A finished job as one path shows it: state, output, input, error text, id."""

    def __init__(self, job_id: int, state: str, output: dict, inp: dict, error: str):
        self.id, self.state, self.output, self.input, self.error = (
            job_id,
            state,
            output,
            inp,
            error,
        )


class EnginePath:
    """Jobs in this process, read through the Job API after ``clean()``."""

    name = "engine"

    def __init__(self, workdir: Path):
        self.workdir = workdir

    def start(self, plugin: str, data: dict) -> int:
        job = Job(plugin, data)
        job.start()
        return job.id

    def result(self, job_id: int) -> Ran:
        job = Job.getJobFromID(job_id)
        job.join(30)
        job.clean()
        return Ran(job_id, job.status, job.output_data, job.input_data, job.error)

    def abort(self, job_id: int) -> None:
        Job.getJobFromID(job_id).abort()

    def files(self, job_id: int, plugin: str) -> tuple[str, str]:
        stem = self.workdir / f"{job_id // 1000:04d}" / f"{job_id:05d}_{plugin}"
        return (Path(str(stem) + ".inp").read_text(), Path(str(stem) + ".out").read_text())


class ServerPath:
    """Jobs through a real DahuDS device, read with the Tango commands."""

    name = "server"

    def __init__(self, proxy, workdir: Path):
        self.proxy, self.workdir = proxy, workdir

    def start(self, plugin: str, data: dict) -> int:
        return self.proxy.startJob([plugin, json.dumps(data)])

    def result(self, job_id: int) -> Ran:
        state = finish(self.proxy, job_id)
        self.proxy.cleanJob(job_id)
        return Ran(
            job_id,
            state,
            json.loads(self.proxy.getJobOutput(job_id)),
            json.loads(self.proxy.getJobInput(job_id)),
            self.proxy.getJobError(job_id),
        )

    def abort(self, job_id: int) -> None:
        self.proxy.abort(job_id)

    files = EnginePath.files


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("legacy-server")
    props = {"workdir": str(workdir), "plugins_directory": [str(LEGACY)], "max_workers": 2}
    with DeviceTestContext(DahuDS, process=True, properties=props, timeout=60) as proxy:
        yield ServerPath(proxy, workdir)


@pytest.fixture(params=["engine", "server"])
def path(request, monkeypatch):
    monkeypatch.setenv("DAHU_PLUGINS", str(LEGACY))
    if request.param == "engine":
        workdir = request.getfixturevalue("workdir")
        request.getfixturevalue("engine")
        return EnginePath(workdir)
    return request.getfixturevalue("server")


def run(path, plugin: str, data: dict | None = None) -> Ran:
    return path.result(path.start(plugin, data or {}))


# ---- life cycle ----------------------------------------------------------------------------
def test_a_bare_setup_finds_its_input(path):
    ran = run(path, "legacy.baresetup", {"x": 21})
    assert ran.state == "success", ran.error
    assert ran.output["result"] == 42


def test_an_own_setup_that_skips_plugin_setup_finds_its_input(path):
    ran = run(path, "legacy.ownsetup", {"x": "here"})
    assert ran.state == "success", ran.error
    assert ran.output["result"] == "here"


def test_a_setup_that_requires_its_input_as_argument_gets_it(path):
    ran = run(path, "legacy.requiredsetuparg", {"x": 7})
    assert ran.state == "success", ran.error
    assert ran.output["result"] == 7


def test_keys_a_plugin_adds_to_its_input_are_recorded(path):
    ran = run(path, "legacy.addsinput", {"x": 1})
    assert ran.output["result"] == 2
    assert ran.input["computed"] == 2 and ran.input["x"] == 1
    inp, out = path.files(ran.id, "legacy.addsinput")
    assert json.loads(inp)["computed"] == 2
    assert inp.startswith('{\n    "') and out.startswith('{\n    "'), "4-space JSON"


def test_log_lines_use_the_original_texts_even_after_teardown(path):
    ran = run(path, "legacy.latelog")
    assert ran.state == "success", ran.error
    assert ran.output["logging"] == [
        "Warning in LateLog: first",
        "Warning in LateLog: not fatal",
        "Warning in LateLog: after teardown",
    ]


def test_a_failed_job_output_carries_the_error_lines(path):
    ran = run(path, "legacy.fails")
    assert ran.state == "failure"
    error = ran.output["error"]
    assert isinstance(error, list) and all(isinstance(line, str) for line in error)
    assert "RuntimeError: ERROR in Fails: bad input" in error[0]
    assert any(line.startswith("Traceback") for line in error)
    assert ran.output["logging"] == ["ERROR in Fails: bad input"]
    assert ran.error.splitlines()[0] == "RuntimeError: ERROR in Fails: bad input"
    _, out = path.files(ran.id, "legacy.fails")
    assert json.loads(out)["error"] == error


def test_a_failed_setup_is_torn_down_and_its_output_kept_before_clean(engine, monkeypatch):
    # as in the original, teardown runs after a failed setup; here the plugin's output and
    # log lines are in the output at once (the original added them only at clean())
    monkeypatch.setenv("DAHU_PLUGINS", str(LEGACY))
    job = Job("legacy.setupfails", {})
    job.start()
    job.join(30)
    assert job.status == "failure"
    output = job.output_data
    assert (output["opened"], output["closed"]) == (True, True)
    assert output["logging"] == ["ERROR in SetupFails: no such file"]
    assert output["error"][0] == "RuntimeError: ERROR in SetupFails: no such file"


def test_every_finished_job_records_its_runtime(path):
    ran = run(path, "legacy.add_one", {"x": 1})
    assert ran.output["result"] == 2
    assert isinstance(ran.output["job_runtime"], float) and 0 <= ran.output["job_runtime"] < 30
    _, out = path.files(ran.id, "legacy.add_one")
    assert json.loads(out)["job_runtime"] == ran.output["job_runtime"]


def test_an_aborted_job_records_when(path):
    job_id = path.start("legacy.slow", {})
    path.abort(job_id)
    ran = path.result(job_id)
    assert ran.state == "aborted"
    assert re.fullmatch(ISO, ran.output["aborted"])


@pytest.mark.parametrize("data", [{"last": 4}, {"in_setup": True}])
def test_a_plugin_that_aborts_itself_and_returns_succeeds(path, data):
    # bug: a plugin's own self.abort() (to leave its loop) made the job 'aborted'
    # ("aborted by the plugin"); only an abort from outside does, as in the original
    ran = run(path, "legacy.stopsitself", data)
    assert (ran.state, ran.error) == ("success", "")
    assert ran.output["frames"] == (5 if "last" in data else 1)
    assert "aborted" not in ran.output


def test_a_method_the_plugin_names_but_lacks_is_skipped(path):
    # bug: AttributeError, the job failed; the original logs it and goes on
    ran = run(path, "legacy.renamed")
    assert (ran.state, ran.output["r"]) == ("success", 1)


def test_an_output_of_key_value_pairs_is_a_dict_as_in_the_original(path):
    # bug: {"result": [["a", 1], ...]}; the original gave {"a": 1, ...}
    ran = run(path, "legacy.pairs")
    assert ran.state == "success"
    assert {k: ran.output[k] for k in ("a", "b")} == {"a": 1, "b": [2, 3]}


def test_the_builtin_noop_returns_its_input(path):
    assert run(path, "example.noop", {"x": [1, 2]}).output["result"] == [1, 2]


# ---- caches: the second job finds the first one's expensive object ----------------------------
@pytest.mark.parametrize("plugin", ["legacy.cachedai", "legacy.classcache"])
def test_a_second_job_reuses_the_first_jobs_cached_object(path, plugin):
    poni = f"{plugin}-{path.name}.poni"  # a key no other test used in this process
    first = run(path, plugin, {"poni": poni})
    second = run(path, plugin, {"poni": poni})
    assert first.state == second.state == "success", first.error + second.error
    assert second.output["built"] == first.output["built"], "the cached object was rebuilt"
    assert second.output["ai_pid"] == first.output["ai_pid"]


# ---- versions and waiting ----------------------------------------------------------------------
def test_the_version_is_a_string_in_results_and_a_module(path):
    ran = run(path, "legacy.versioned")
    assert ran.state == "success", ran.error
    assert ran.output["program_version"] == dahu.__version__ == ran.output["module_version"]
    assert ran.output["module"] == "module"


def test_waiting_for_an_id_never_given_out_is_a_warning(path):
    ran = run(path, "legacy.waits", {"other": 10_000_000})
    assert ran.state == "success", ran.error
    assert "Warning in Waits: Not synchronizing job, invalid id: 10000000" in ran.output["logging"]
    assert ran.output["other_result"] is None
    assert ran.output["last_id"] >= ran.id


def test_waiting_for_a_job_gives_its_result_or_fails_naming_its_state(path):
    good = run(path, "legacy.add_one", {"x": 4})
    ran = run(path, "legacy.waits", {"other": good.id})
    assert ran.state == "success", ran.error
    assert ran.output["other_result"] == 5
    bad = run(path, "legacy.fails")
    ran = run(path, "legacy.waits", {"other": bad.id})
    assert ran.state == "failure"
    assert "ERROR in Waits: Other job ended in failure: aborting myself" in ran.error


# ---- the two paths agree -------------------------------------------------------------------
def test_engine_and_server_outputs_are_the_same(server, workdir, engine, monkeypatch):
    monkeypatch.setenv("DAHU_PLUGINS", str(LEGACY))
    local = EnginePath(workdir)
    cases = [
        ("legacy.baresetup", {"x": 3}),
        ("legacy.latelog", {}),
        ("legacy.addsinput", {"x": 5}),
        ("legacy.fails", {}),
        ("legacy.add_one", {"x": 9}),
    ]
    for plugin, data in cases:
        mine, theirs = run(local, plugin, data), run(server, plugin, data)
        for ran in (mine, theirs):
            ran.output.pop("job_runtime")
            ran.input.pop("job_id")
            if "error" in ran.output:  # file paths in the traceback differ between processes
                ran.output["error"] = ran.output["error"][0]
        assert (mine.state, mine.output, mine.input) == (theirs.state, theirs.output, theirs.input)


def test_job_attributes_plugins_use(engine, monkeypatch):
    monkeypatch.setenv("DAHU_PLUGINS", str(LEGACY))
    job = Job("legacy.add_one", {"x": 1})
    assert Job._id_class == job.id
    assert job.data_on_disk is None
    job.start()
    job.join(30)
    job.clean()
    assert os.path.isfile(job.data_on_disk + ".inp")
    assert json.load(open(job.data_on_disk + ".out"))["result"] == 2


def test_a_job_prints_as_in_the_original(engine, monkeypatch):
    monkeypatch.setenv("DAHU_PLUGINS", str(LEGACY))
    job = Job("legacy.add_one", {"x": 1})
    assert (
        repr(job)
        == f"dahu job (thread) #{job.id} using plugin legacy.add_one currently uninitialized"
    )
    job.start()
    job.join(30)
    assert str(job) == f"dahu job (thread) #{job.id} using finished plugin (legacy.add_one) success"


def test_import_dahu_alone_gives_the_original_modules(tmp_path):
    # bug: AttributeError: module 'dahu' has no attribute 'job' (the original's
    # __init__ imports job, plugin, utils and plugin_factory)
    script = (
        "import dahu\n"
        "job = dahu.job.Job('legacy.add_one', {'x': 41})\n"
        "job.start(); job.join(30)\n"
        "plugin = dahu.plugin_factory('legacy.baresetup')\n"
        "print(job.output_data['result'], isinstance(plugin, dahu.plugin.Plugin),\n"
        "      dahu.utils.get_isotime(0, for_path=True)[:2], dahu.factory.register is not None,\n"
        "      dahu.project, dahu.date == dahu.strictversion)\n"
    )
    env = child_env(DAHU_PLUGINS=str(LEGACY), DAHU_WORKDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "True", "19", "True", "dahu", "True"]


def test_a_new_device_reads_as_the_original_before_any_job(tmp_path):
    # bug: jobSuccess and jobFailure read 0 and statisticsCollected "" before the first
    # job and collection; the original's -1 and text are what its clients test for
    props = {"workdir": str(tmp_path), "plugins_directory": [str(LEGACY)]}
    with DeviceTestContext(DahuDS, process=True, properties=props, timeout=60) as proxy:
        assert (proxy.jobSuccess, proxy.jobFailure) == (-1, -1)
        assert proxy.statisticsCollected == (
            "No statistics collected yet, please use the 'collectStatistics' method first"
        )
        job_id = proxy.startJob(["legacy.add_one", '{"x": 1}'])
        assert finish(proxy, job_id) == "success"
        assert (proxy.jobSuccess, proxy.jobFailure) == (job_id, -1)


def test_hexversion_grows_from_the_originals():
    # bug: the year was packed modulo 256, so 2026.11.0 gave 0xea0b00f0, below the
    # original 2024.2.0's 0x7e80200f0: a plugin checking `hexversion >= ...` took this
    # Dahu for an older one
    version = importlib.import_module("dahu.version")
    original_2024_2_0 = 2024 << 24 | 2 << 16 | 0 << 8 | 0xF << 4  # the original's packing
    assert original_2024_2_0 == 0x7E80200F0
    major, minor, micro = version.version_info[:3]
    assert version.hexversion == major << 24 | minor << 16 | micro << 8 | 0xF << 4
    assert version.hexversion > original_2024_2_0


def test_the_original_launchers_names_of_the_device_classes_import():
    # bug: "from dahu.server import DahuDSClass, DahuDS" (the original's tango_server,
    # and servers of several classes built as it) failed with an ImportError
    import tango

    from dahu.server import DahuDSClass

    assert DahuDSClass is DahuDS.TangoClassClass
    assert issubclass(DahuDSClass, tango.DeviceClass)


def test_the_factory_imports_from_the_modules_the_original_had_it_in():
    # bug: "from dahu.plugin import plugin_factory" (and from dahu.job), which the
    # original's modules offered, failed with an ImportError
    import dahu.factory
    from dahu.job import plugin_factory as from_job
    from dahu.plugin import plugin_factory as from_plugin

    assert from_plugin is from_job is dahu.factory.plugin_factory
