"""dahu.job.Job through the public API: states, aliases, input forms, abort, wait_for."""

import datetime
import decimal
import json
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction

import numpy
import pytest

import dahu.engine.aborts
from dahu.job import InvalidInput, Job
from dahu.journal import SQLiteJournal, job_file_stem

from .conftest import TROUBLE_PLUGINS


def run(name, data=None, timeout=20):
    job = Job(name, data or {})
    job.start()
    job.join(timeout)
    return job


def test_states_constants():
    assert Job.STATE_INEXISTANT == "inexistant"
    assert Job.STATE == ["uninitialized", "starting", "running", "success", "failure", "aborted"]


def test_square_job_output_and_class_getters(engine):
    job = run("example.square", {"x": 7})
    assert job.status == Job.STATE_SUCCESS
    assert job.output_data["result"] == 49
    assert job.input_data == {"x": 7, "plugin_name": "example.square", "job_id": job.id}
    for get_status in (Job.getStatusFromID, Job.getStatusFromId):
        assert get_status(job.id) == "success"
    for get_output in (Job.getDataOutputFromID, Job.getDataOutputFromId):
        assert get_output(job.id)["result"] == 49
        assert json.loads(get_output(job.id, as_JSON=True))["result"] == 49
    for get_input in (Job.getDataInputFromID, Job.getDataInputFromId):
        assert get_input(job.id)["x"] == 7
        # compact text, as the original gives for a job in memory
        assert get_input(job.id, as_JSON=True).startswith('{"x":7,"plugin_name":"example.square"')
    for get_error in (Job.getErrorFromID, Job.getErrorFromId):
        assert get_error(job.id) == ""
    for get_job in (Job.getJobFromID, Job.getJobFromId):
        assert get_job(job.id).id == job.id
    assert Job.synchronize_job(job.id, 1) == "success"
    job.clean()  # the same compact text once the data lives in the journal only
    assert Job.getDataInputFromId(job.id, as_JSON=True).startswith('{"x":7,"plugin_name":')
    assert job.name == job.getName() == "example.square"
    assert isinstance(job, threading.Thread)


def test_input_as_json_text_and_file(engine, tmp_path):
    assert run("example.cube", '{"x": 3}').output_data["result"] == 27
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"x": 4}))
    assert run("example.cube", str(path)).output_data["result"] == 64
    path.write_text('{"x": ')
    with pytest.raises(InvalidInput, match=f"job input file {path} is not valid JSON"):
        Job("example.cube", str(path))
    # bug: an empty file was "not valid JSON: Expecting value: line 1 column 1 (char 0)"
    path.write_text(" \n")
    with pytest.raises(InvalidInput) as info:
        Job("example.cube", str(path))
    assert str(info.value) == f'job input file {path} is empty: give a JSON object, e.g. "{{}}"'
    assert run("example.noop", None).output_data["result"] is None  # None: no input


def test_an_input_file_not_utf8_is_refused_as_dahu_reprocess_refuses_it(engine, tmp_path):
    # bug: two texts for one fault: Job(path) and the device's startJob said "is not UTF-8
    # text: 'utf-8' codec can't decode byte 0xe9 in position 10: invalid continuation
    # byte", dahu-reprocess "not UTF-8 text (JSON must be UTF-8): byte 0xe9 at offset 10";
    # and a byte-order mark (a Windows editor's) that dahu-reprocess took was "not valid
    # JSON: Unexpected UTF-8 BOM" for Job(path)
    from dahu.app.sources import InputError, expand_sources, load_input

    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"plugin_name": "example.cube", "t": "caf\u00e9"}'.encode("latin-1"))
    reason = "not UTF-8 text (JSON must be UTF-8): byte 0xe9 at offset 41"
    with pytest.raises(InvalidInput) as info:
        Job("example.cube", str(latin1))
    assert str(info.value) == f"job input file {latin1} is {reason}"
    with pytest.raises(InputError) as info:
        load_input(*expand_sources([str(latin1)], str(tmp_path)))
    assert str(info.value) == reason
    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"x": 2}')
    assert run("example.cube", str(bom)).output_data["result"] == 8


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (42, "JSON object"),
        ("", "job input is empty"),
        ("  \n", "job input is empty"),
        ("/no/such/input.json", "job input is neither JSON nor a file: '/no/such/input.json'"),
    ],
)
def test_bad_input_is_refused_with_one_line(engine, bad, reason):
    with pytest.raises(InvalidInput) as info:
        Job("example.square", bad)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (
            {"when": datetime.datetime(2024, 2, 22)},
            "input['when'] is of type datetime.datetime, which JSON cannot hold",
        ),
        (
            {"x": [1, {"o": object()}]},
            "input['x'][1]['o'] is of type object, which JSON cannot hold",
        ),
        ({(1, 2): 3}, "key (1, 2) of input is of type tuple (JSON keys are text)"),
    ],
)
def test_an_input_json_cannot_hold_is_refused_as_invalid_input(engine, bad, reason):
    # bug: Job() raised dahu.errors.JournalError, not the InvalidInput (a ValueError)
    # that callers catch for bad inputs
    last = Job._id_class
    for create in (
        lambda: Job("example.noop", bad),
        lambda: Job.create_many("example.noop", [{}, bad]),
    ):
        with pytest.raises(InvalidInput) as info:
            create()
        assert str(info.value) == f"job input is not JSON-serialisable: {reason}"
    assert Job._id_class == last  # no job was recorded
    assert run("example.noop", {"x": 1}).output_data["result"] == 1


def test_failure_keeps_reason_and_traceback(engine):
    job = run("example.error", {"message": "detector on fire"})
    assert job.status == Job.STATE_FAILURE
    lines = job.error.splitlines()
    assert lines[0] == "ValueError: detector on fire"
    assert any("Traceback" in line for line in lines)
    assert job.output_data["logging"] == []  # teardown ran


def test_unknown_plugin_fails_with_reason_naming_plugin_and_dirs(engine):
    job = run("nosuchmodule.plugin", {})
    assert job.status == Job.STATE_FAILURE
    assert job.error.startswith("unknown plugin 'nosuchmodule.plugin'")
    assert "plugins" in job.error and "\n" not in job.error
    assert "None" not in job.error


def test_a_plugin_name_with_blanks_is_read_as_the_device_reads_it(engine):
    # bug: Job(" ") made a job that failed "invalid plugin name" while Job("") raised,
    # and Job("example.square ") failed where the device's startJob ran example.square
    for blank in ("", " ", "\t\n"):
        with pytest.raises(InvalidInput, match="^plugin name must be a non-empty string$"):
            Job(blank, {})
        with pytest.raises(InvalidInput, match="^plugin name must be a non-empty string$"):
            Job.create_many(blank, [{}])
    job = run(" example.square ", {"x": 3})
    assert (job.status, job.output_data["result"], job.name) == ("success", 9, "example.square")
    (many,) = Job.create_many("example.square\n", [{"x": 2}])
    assert many.name == "example.square"
    # bug: one input given alone was read as a list: a dict as its keys ("job input is
    # neither JSON nor a file: 'x'"), a JSON text as its characters
    for alone, kind in (({"x": 2}, "dict"), ('{"x": 2}', "str"), (None, "NoneType")):
        with pytest.raises(InvalidInput) as info:
            Job.create_many("example.square", alone)
        assert str(info.value) == (
            "job inputs must be a list of inputs (dicts, JSON texts or files); "
            f"got {kind}: give [input] for one"
        )
    # bug: chunk=-1 created none of the jobs and returned [], without a word
    for chunk in (0, -1, 2.5):
        with pytest.raises(
            ValueError, match=f"^chunk must be a whole number of 1 or more, not {chunk}$"
        ):
            Job.create_many("example.square", [{"x": 2}] * 3, chunk=chunk)


def test_join_refuses_a_nan_timeout(engine):
    # bug: join(float("nan")) and synchronize_job(id, NaN) returned at once, the job still
    # running, as if it had ended (Thread.join raises)
    job = Job("example.square", {"x": 5})
    with pytest.raises(ValueError, match="^timeout NaN is not a number of seconds$"):
        job.join(float("nan"))
    with pytest.raises(ValueError, match="^timeout NaN is not a number of seconds$"):
        Job.synchronize_job(job.id, float("nan"))


def test_a_job_timeout_too_large_for_a_float_is_ignored_in_one_short_line(engine, caplog):
    # bug: "ignoring timeout 1000...000: not a number", with all its 401 digits
    job = run("example.square", {"x": 2, "job_timeout": 10**400})
    assert job.status == "success"
    (line,) = [r.getMessage() for r in caplog.records if "ignoring timeout" in r.getMessage()]
    assert line == (
        f"job {job.id}: ignoring timeout 10000000000000000000... (401 characters): "
        "too large for a number of seconds"
    )


def test_callbacks_receive_the_finished_job(engine):
    seen = []
    job = Job("example.square", {"x": 2})
    job.connect_callback(lambda j: seen.append((j.id, j.status, j.output_data["result"])))
    job.start()
    job.join(10)
    assert seen == [(job.id, "success", 4)]


def test_join_before_start_waits_instead_of_raising(engine):
    job = Job("example.square", {"x": 5})
    job.join(0.05)  # not started: waits (times out), does not raise
    assert job.status == Job.STATE_UNINITIALIZED
    result = {}
    waiter = threading.Thread(target=lambda: result.update(state=Job.synchronize_job(job.id, 20)))
    waiter.start()
    job.start()
    waiter.join(20)
    assert result["state"] == Job.STATE_SUCCESS
    # bug: a wait "forever" as a huge number raised OverflowError while the job ran
    for forever in (1e10, float("inf")):
        job = Job("example.sleep", {"t": 0.05})
        job.start()
        job.join(forever)
        assert job.status == Job.STATE_SUCCESS


def test_abort_running_job(engine):
    called = threading.Event()
    job = Job("example.sleep", {"t": 30})
    job.connect_callback(lambda j: called.set())
    job.start()
    deadline = time.monotonic() + 10
    while job.status != Job.STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(0.005)
    t0 = time.monotonic()
    assert job.abort() is True
    job.join(5)
    assert time.monotonic() - t0 < 1.0
    assert job.status == Job.STATE_ABORTED
    assert job.output_data["slept"] is False  # the plugin saw the abort
    assert "logging" in job.output_data  # teardown ran
    assert called.is_set()
    assert "aborted" in job.error
    # bug: a reason that is not text (abort(42)) was the job's error as it was: 42, an int
    other = Job("example.sleep", {"t": 30})
    other.start()
    while other.status != Job.STATE_RUNNING and time.monotonic() < deadline + 10:
        time.sleep(0.005)
    assert other.abort(42) is True
    other.join(10)
    assert (other.status, other.error) == (Job.STATE_ABORTED, "42")


BAD_ABORT = """
import threading
from dahu.factory import register
from dahu.plugin import Plugin

@register
class BadAbort(Plugin):
    def __init__(self):
        Plugin.__init__(self)
        self._stopped = threading.Event()

    def process(self):
        self._stopped.wait(30)

    def abort(self):
        Plugin.abort(self)
        self._stopped.set()
        raise RuntimeError("abort broke")
"""


def test_a_plugin_whose_abort_raises_still_ends_aborted(engine, plugin_dir, caplog):
    # the original deadlocked here (its error handler took the lock abort held)
    (plugin_dir / "badabort.py").write_text(BAD_ABORT)
    job = Job("badabort.badabort", {})
    job.start()
    deadline = time.monotonic() + 10
    while job.status != Job.STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(0.005)
    job.abort()
    job.join(10)
    assert job.status == Job.STATE_ABORTED
    assert "the plugin's abort() failed" in caplog.text


CIRCULAR = """
from dahu.factory import register
from dahu.plugin import Plugin

@register
class Circular(Plugin):
    def process(self):
        loop = {"a": 1}
        loop["me"] = loop
        self.output.update(loop=loop, kept=[1, 2])
"""


def test_an_output_holding_itself_keeps_the_rest_and_its_files(engine, plugin_dir):
    # bug: a circular value (RecursionError in jsonable) made getDataOutputFromId(as_JSON)
    # raise, the .out file unwritten, and the journal keep the whole output as one repr
    (plugin_dir / "circular.py").write_text(CIRCULAR)
    job = Job("circular.circular", {})
    job.start()
    job.join(10)
    assert job.status == "success"
    text = json.loads(Job.getDataOutputFromId(job.id, as_JSON=True))
    assert text["kept"] == [1, 2] and text["loop"]["a"] == 1
    assert text["loop"]["me"] == "{'a': 1, 'me': {...}}"
    job.clean()
    stem = job_file_stem(str(engine.workdir), job.id, "circular.circular")
    out = json.loads(open(stem + ".out").read())
    assert out["kept"] == [1, 2] and out["loop"]["me"] == text["loop"]["me"]
    assert job.output_data["loop"]["a"] == 1  # the journal's record, after clean


BIG_INT = """
from dahu.factory import register
from dahu.plugin import Plugin

@register
class BigInt(Plugin):
    def process(self):
        self.output.update(big=10**5000, kept=[1, 2])
"""


def test_an_output_with_an_int_too_long_for_text_keeps_the_rest(engine, plugin_dir):
    # bug: an int of over 4,300 digits (Python will not write it as text) made
    # getDataOutputFromId(as_JSON) raise, the .out file unwritten, the output lost
    (plugin_dir / "bigint.py").write_text(BIG_INT)
    job = Job("bigint.bigint", {})
    job.start()
    job.join(10)
    assert job.status == "success"
    text = json.loads(Job.getDataOutputFromId(job.id, as_JSON=True))
    assert text["kept"] == [1, 2] and "repr() failed" in text["big"]
    job.clean()
    stem = job_file_stem(str(engine.workdir), job.id, "bigint.bigint")
    assert json.loads(open(stem + ".out").read())["kept"] == [1, 2]
    assert job.output_data["kept"] == [1, 2]


DEEP = """
from dahu.factory import register
from dahu.plugin import Plugin

@register
class Deep(Plugin):
    def process(self):
        deep = []
        for _ in range(100_000):
            deep = [deep]
        self.output.update(deep=deep, kept=1)
"""


def test_the_json_getter_of_an_output_nested_too_deep_answers(engine, plugin_dir):
    # bug: getDataOutputFromId(id, as_JSON=True) raised RecursionError while the job
    # was in memory; it gives what the journal keeps
    (plugin_dir / "deep.py").write_text(DEEP)
    job = Job("deep.deep", {})
    job.start()
    job.join(10)
    assert job.status == "success"
    text = json.loads(Job.getDataOutputFromId(job.id, as_JSON=True))
    assert "nested too deep" in text["unserializable_output"]


def test_long_jobs_are_recorded_as_running_in_the_journal(engine):
    from dahu.journal import SQLiteJournal

    job = Job("example.sleep", {"t": 30})
    job.start()
    reader = SQLiteJournal(str(engine.workdir), create=False)  # as another process sees it
    try:
        deadline = time.monotonic() + 10
        while reader.state(job.id) != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.state(job.id) == "running"
        assert reader.get(job.id).started is not None
        job.abort()
        job.join(10)
        assert reader.state(job.id) == "aborted"
    finally:
        reader.close()


def test_abort_of_a_job_not_running_changes_nothing(engine):
    job = run("example.square", {"x": 1})
    assert job.abort() is False
    assert job.status == Job.STATE_SUCCESS
    fresh = Job("example.square", {"x": 1})
    assert fresh.abort() is False
    assert fresh.status == Job.STATE_UNINITIALIZED


def test_ids_unique_and_increasing_under_concurrent_creation(engine):
    per_thread = {}

    def create(n):
        per_thread[n] = [Job("example.noop", {}).id for _ in range(100)]

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [i for ids in per_thread.values() for i in ids]
    assert len(set(all_ids)) == 800
    for ids in per_thread.values():
        assert ids == sorted(ids)
    assert sorted(all_ids) == list(range(min(all_ids), min(all_ids) + 800))


def test_negative_ids_count_from_the_last_job(engine):
    first = run("example.square", {"x": 2})
    last = run("example.square", {"x": 3})
    assert Job.getDataOutputFromID(-1)["result"] == 9
    assert Job.getDataOutputFromID(-2)["result"] == 4
    assert Job.getJobFromID(-1).id == last.id
    assert first.id == last.id - 1


def test_unknown_id(engine):
    assert Job.getStatusFromID(99999) == Job.STATE_INEXISTANT
    assert Job.getJobFromID(99999) is None
    assert "does not exist" in Job.getErrorFromID(99999)
    assert Job.cleanJobfromID(99999) == "job 99999 does not exist"
    # bug: a negative id past the first job was named as resolved: "job -3 does not
    # exist" for -5 (with one job), where getErrorFromID said "job -5 does not exist"
    run("example.square", {"x": 1})
    assert Job.cleanJobfromID(-5) == Job.getErrorFromID(-5) == "job -5 does not exist"
    # bug: an id that is not whole was cut: 1.5 gave job 1's state and output, and NaN
    # raised "cannot convert float NaN to integer"; the original found no such job
    # (and numpy's and the standard library's numbers that are not whole: numpy.float32(1.5)
    # read job 1 until 2026-11-30)
    halves = (numpy.float32(1.5), numpy.array(1.5), decimal.Decimal("1.5"), Fraction(3, 2))
    for bad in (1.5, float("nan"), -0.5, *halves):
        assert Job.getStatusFromID(bad) == Job.STATE_INEXISTANT
        assert Job.getJobFromID(bad) is None and Job.getDataOutputFromID(bad) == {}
        assert Job.synchronize_job(bad, 1) == Job.STATE_INEXISTANT
        assert Job.cleanJobfromID(bad) == Job.getErrorFromID(bad) == f"job {bad} does not exist"


def test_clean_writes_files_and_frees_memory(engine):
    job = run("example.square", {"x": 6})
    job.clean()
    stem = job_file_stem(str(engine.workdir), job.id, "example.square")
    inp = json.loads(open(stem + ".inp").read())
    out = json.loads(open(stem + ".out").read())
    assert inp == {"x": 6, "plugin_name": "example.square", "job_id": job.id}
    assert out["result"] == 36
    assert open(stem + ".out").read().startswith("{\n  ")  # pretty JSON
    assert job.plugin is None
    assert job.output_data["result"] == 36  # answered by the journal
    assert Job.cleanJobfromID(job.id) == f"job {job.id} cleaned"
    assert Job.cleanJobfromId(job.id) == f"job {job.id} cleaned"


def test_clean_of_an_unfinished_job_of_another_process_writes_no_files(engine):
    # bug: a second server on the work directory answered cleanJob of the first one's
    # running job "job N cleaned", and wrote it a .out file of {} while it ran
    other = SQLiteJournal(str(engine.workdir))  # as another server on the directory
    try:
        job_id = other.create("example.sleep", {"t": 60}, time.time())
        other.set_state(job_id, "running", time.time())
        assert Job.cleanJobfromID(job_id) == f"job {job_id} is running: not cleaned"
        stem = job_file_stem(str(engine.workdir), job_id, "example.sleep")
        assert not os.path.exists(stem + ".out") and not os.path.exists(stem + ".inp")
    finally:
        other.close()


def test_abort_with_no_reason_is_an_abort_asked(engine):
    # bug: abort(None) recorded no reason: a queued job ended aborted with no error, and
    # a second abort(None) answered True again, as if none had been asked before
    engine.executor.max_workers = 1
    first = Job("example.sleep", {"t": 60})
    first.start()
    queued = Job("example.square", {"x": 1})
    queued.start()
    assert queued.abort(None) is True and queued.abort(None) is False
    queued.join(30)
    assert (queued.status, queued.error) == ("aborted", "aborted on request")
    assert first.abort(None) is True and first.abort(None) is False
    first.join(30)
    assert (first.status, first.error) == ("aborted", "aborted on request")


_OWNER = """
import sys, time, dahu.engine
from dahu.job import Job
dahu.engine.configure(workdir=sys.argv[1])
job = Job("example.sleep", {"t": 120}); job.start()
print(job.id, flush=True)
begun = time.monotonic(); job.join(120)
print(job.status, time.monotonic() - begun, Job.getErrorFromID(job.id), flush=True)
"""


def test_abort_of_a_running_job_of_another_process_stops_it(engine):
    # bug: abort() of a job that another process runs (a second server on the work
    # directory, a worker process whose plugin made it) answered False, the job ran on
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(engine.workdir)], stdout=subprocess.PIPE, text=True
    )
    try:
        job_id = int(owner.stdout.readline())
        job = Job.getJobFromID(job_id)
        assert job.status not in Job.FINAL_STATES and job.plugin is None  # not ours
        assert job.abort("stop that") is True
        # bug: join() of another process's job returned at once, its status kept as seen
        job.join(60)
        assert (job.status, job.error, job.is_alive()) == ("aborted", "stop that", False)
        state, seconds, error = owner.stdout.readline().split(maxsplit=2)
        assert (state, error.strip()) == ("aborted", "stop that")
        assert float(seconds) < 60
        assert Job.getJobFromID(job_id).abort() is False  # ended: nothing to abort
    finally:
        owner.kill()
        owner.wait()


def test_abort_of_a_job_whose_process_does_not_answer_is_false(engine, monkeypatch):
    monkeypatch.setattr(dahu.engine.aborts, "ANSWER_WAIT", 0.3)
    other = SQLiteJournal(str(engine.workdir))  # a process that takes no abort
    try:
        job_id = other.create("example.sleep", {"t": 60}, time.time())
        other.set_state(job_id, "running", time.time())
        assert Job.getJobFromID(job_id).abort() is False
        assert engine.journal._read("SELECT * FROM abort_requests") == []  # withdrawn
        assert Job.getStatusFromID(job_id) == "running"
    finally:
        other.close()


def test_an_abort_its_process_took_late_is_told_true(engine, monkeypatch):
    # an engine that took the request just as its asker's wait ran out aborts the job:
    # the asker must not withdraw it and say False (the job ended aborted all the same)
    from dahu.journal import aborts

    monkeypatch.setattr(dahu.engine.aborts, "ANSWER_WAIT", 1.0)
    other = SQLiteJournal(str(engine.workdir))  # the process running the job
    try:
        job_id = other.create("example.sleep", {"t": 60}, time.time())
        other.set_state(job_id, "running", time.time())

        def late_owner():
            while not (rows := aborts.asked(other)):
                time.sleep(0.01)
            assert aborts.take(other, rows[0][0])
            time.sleep(1.1)  # (past the asker's wait: it withdraws, or waits for this)
            aborts.answer(other, rows[0][0], True)

        owner = threading.Thread(target=late_owner)
        owner.start()
        assert Job.getJobFromID(job_id).abort() is True
        owner.join(10)
        assert engine.journal._read("SELECT * FROM abort_requests") == []
    finally:
        other.close()


def test_clean_of_a_job_never_started_returns_at_once(engine):
    # bug: clean() (wait=True) waited for the job to be started and to end: the thread
    # that would start it hung for ever; the original returns at once, writing nothing
    job = Job("example.square", {"x": 6})
    cleaner = threading.Thread(target=job.clean, daemon=True)
    cleaner.start()
    cleaner.join(10)
    assert not cleaner.is_alive(), "clean() of a job never started hangs"
    assert (job.status, job.data_on_disk) == ("uninitialized", None)
    job.start()  # it can still run, and be cleaned then
    job.clean()
    assert job.output_data["result"] == 36 and job.data_on_disk is not None


def test_finished_jobs_do_not_stay_in_memory(engine):
    import gc
    import weakref

    ids, plugins, faces = [], [], []
    for i in range(50):
        job = Job("example.square", {"x": i})
        job.connect_callback(lambda job: plugins.append(weakref.ref(job.plugin)))
        job.start()
        ids.append(job.id)
        faces.append(weakref.ref(job))
    Job.synchronize_all()
    assert len(plugins) == 50
    assert engine.live() == []
    del job
    gc.collect()
    assert [ref() for ref in faces + plugins] == [None] * 100  # neither jobs nor plugins
    assert Job.getDataOutputFromID(ids[10])["result"] == 100


def test_stats_table(engine):
    for x in range(5):
        run("example.square", {"x": x})
    run("example.error")
    text = Job.stats()
    assert "example.square" in text and "example.error" in text
    assert "total wall time" in text
    assert "speed-up" in text
    assert "regression" in text
    stats = Job.statistics()
    assert stats["plugins"]["example.square"]["success"] == 5
    assert stats["plugins"]["example.error"]["failure"] == 1


def test_stats_table_writes_long_runtimes_whole_and_a_falling_regression_plainly():
    # bug: tabulate read the table's numbers again and wrote them its own way: 14 days of
    # runtime read "1.23457e+06" and a mean of 72 min "4.3215e+06"; and a regression
    # falling with the job order read "1.000 ms + -0.000001 ms per job"
    from dahu.statistics import format_statistics

    entry = {"count": 3, "success": 3, "failure": 0, "aborted": 0}
    summary = {
        "plugins": {"id00.integrate": {**entry, "runtime": 1234567.891, "mean": 4321.5}},
        "regression": {"intercept": 0.001, "slope": -1e-9},
        **{"jobs": 3, "finished": 3, "ran": 3, "total_runtime": 1234567.891},
        **{"wall_time": 9, "speedup": 1},
    }
    text = format_statistics(summary)
    assert text.splitlines()[2].split()[-2:] == ["1234567.891", "4321500.000"]
    assert text.endswith("execution time regression: 1.000 ms - 0.000001 ms per job")


def test_mean_runtime_is_that_of_the_jobs_that_ran(engine):
    # bug: the mean divided the runtime by every ended job, those aborted before they
    # started too (dahu-jobs stats, which reads the journal, divided by those that ran)
    sleepers = [Job("example.sleep", {"t": 60}) for _ in range(10)]  # 4 slots: 6 queued
    for job in sleepers:
        job.start()
    deadline = time.monotonic() + 30
    while sum(job.status == "running" for job in sleepers) < 4:
        assert time.monotonic() < deadline, [job.status for job in sleepers]
        time.sleep(0.01)
    for job in reversed(sleepers):  # the queued ones first: they never run
        job.abort()
    for job in sleepers:
        job.join(30)
    assert engine.journal.flush(30)
    for stats in (Job.statistics(), engine.journal.summary()):
        entry = stats["plugins"]["example.sleep"]
        assert entry["aborted"] == 10 and entry["ran"] == 4
        assert entry["mean"] == pytest.approx(entry["runtime"] / 4)
        # bug: the dict's "finished" counted the jobs that ran (4), where Job.stats()'s
        # text and the device's jobsFinished say "finished" of the jobs ended (10)
        assert (stats["finished"], stats["ran"]) == (10, 4)
    assert "\njobs: 10, finished: 10, ran: 4\n" in Job.stats()


WAITER = (
    TROUBLE_PLUGINS
    + '''

@register
class Impatient(Plugin):
    """Wait at most 0.2 s for job `other`."""

    TIMEOUT = 0.2

    def process(self):
        self.wait_for(self.input["other"])
'''
)


def test_wait_for_reads_another_jobs_result(engine, plugin_dir):
    (plugin_dir / "chain.py").write_text(WAITER)
    first = Job("example.square", {"x": 3})
    second = Job("chain.addprevious", {"other": first.id, "x": 1})
    second.start()
    first.start()
    second.join(20)
    assert second.status == Job.STATE_SUCCESS, second.error
    assert second.output_data["result"] == 10


def test_wait_for_failed_or_never_started_job_fails_the_waiter(engine, plugin_dir):
    (plugin_dir / "chain.py").write_text(WAITER)
    failed = run("example.error")
    waiter = run("chain.addprevious", {"other": failed.id, "x": 1})
    assert waiter.status == Job.STATE_FAILURE
    assert "Other job ended in failure: aborting myself" in waiter.error.splitlines()[0]
    never = Job("example.square", {"x": 1})
    impatient = run("chain.impatient", {"other": never.id})
    assert impatient.status == Job.STATE_FAILURE
    assert "did not finish within 0.2 s (state uninitialized)" in impatient.error
    # as in the original: an id never given out is a warning, and the waiter goes on
    missing = run("chain.impatient", {"other": 999999})
    assert missing.status == Job.STATE_SUCCESS, missing.error
    expected = "Warning in Impatient: Not synchronizing job, invalid id: 999999"
    assert expected in missing.output_data["logging"]


def test_wait_for_chain_longer_than_the_pool_does_not_deadlock(engine, plugin_dir):
    (plugin_dir / "chain.py").write_text(WAITER)
    assert engine.executor.max_workers == 4
    head = Job("example.square", {"x": 2})
    chain = [head]
    for _ in range(10):  # each waits for the previous one
        chain.append(Job("chain.addprevious", {"other": chain[-1].id, "x": 1}))
    for job in reversed(chain):  # waiters first: they take every slot
        job.start()
    chain[-1].join(30)
    assert chain[-1].status == Job.STATE_SUCCESS, chain[-1].error
    assert chain[-1].output_data["result"] == 4 + 10


def test_serialize_runs_one_at_a_time(engine):
    engine.executor.serialize = True
    jobs = [Job("example.sleep", {"t": 0.05}) for _ in range(4)]
    for job in jobs:
        job.start()
    Job.synchronize_all()
    assert all(j.runtime >= 0.05 for j in jobs)
    records = [engine.journal.get(j.id) for j in jobs]
    spans = sorted((r.started, r.ended) for r in records)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 1e-3
    engine.executor.serialize = False


JOINERS = '''
from dahu.factory import register
from dahu.job import Job
from dahu.plugin import Plugin


@register
class Parent(Plugin):
    """Start a sub-job and wait for it with the public API (`how`: join or sync)."""

    def process(self):
        sub = Job("example.square", {"x": self.input["x"]})
        sub.start()
        if self.input["how"] == "join":
            sub.join(10)
            self.output["child"] = sub.status
        else:
            self.output["child"] = Job.synchronize_job(sub.id, 10)


@register
class Myself(Plugin):
    """Wait for its own job: `how` is join, sync, all, wait_for or wait_for_last."""

    TIMEOUT = 30

    def process(self):
        own = self.input["job_id"]
        how = self.input["how"]
        if how == "join":
            Job.getJobFromID(own).join(30)
        elif how == "sync":
            Job.synchronize_job(own, 30)
        elif how == "all":
            Job.synchronize_all()
        elif how == "wait_for":
            self.wait_for(own)
        else:
            self.wait_for(-1)
'''


@pytest.mark.parametrize("how", ["join", "sync"])
def test_plugins_joining_sub_jobs_on_every_slot_do_not_deadlock(engine, plugin_dir, how):
    # bug: each parent kept its slot while it waited: with every slot held by a parent,
    # the sub-jobs stayed 'starting' until the parents' timeout (for ever without one)
    (plugin_dir / "joiners.py").write_text(JOINERS)
    started = time.monotonic()
    parents = [Job("joiners.parent", {"x": x, "how": how}) for x in range(2 * 4)]
    for parent in parents:
        parent.start()
    for parent in parents:
        parent.join(30)
    assert [p.status for p in parents] == ["success"] * 8, parents[0].error
    assert [p.output_data["child"] for p in parents] == ["success"] * 8
    assert time.monotonic() - started < 8  # no parent waited for its 10 s timeout


def test_callbacks_waiting_for_follow_up_jobs_on_every_slot_do_not_deadlock(engine):
    # bug: a callback kept its job's slot while it waited: the follow-ups never started
    seen = {}

    def chain(job):
        follow_up = Job("example.square", {"x": job.output_data["result"]})
        follow_up.start()
        follow_up.join(10)
        seen[job.id] = (follow_up.status, follow_up.output_data.get("result"))

    jobs = [Job("example.square", {"x": x}) for x in range(2 * 4)]
    for job in jobs:
        job.connect_callback(chain)
        job.start()
    for job in jobs:
        job.join(30)
    assert seen == {job.id: ("success", (x * x) ** 2) for x, job in enumerate(jobs)}


@pytest.mark.parametrize("how", ["join", "sync", "all"])
def test_a_plugin_joining_its_own_job_fails_at_once_as_in_the_original(engine, plugin_dir, how):
    # the original's Thread.join raised; ours returned at once (join) or waited (all)
    (plugin_dir / "joiners.py").write_text(JOINERS)
    started = time.monotonic()
    job = run("joiners.myself", {"how": how}, timeout=30)
    assert job.status == Job.STATE_FAILURE
    assert job.error.splitlines()[0] == "RuntimeError: cannot join current thread"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("how", ["wait_for", "wait_for_last"])
def test_wait_for_its_own_job_fails_at_once_without_spinning(engine, plugin_dir, how):
    # bug: wait_for(own id) spun at full CPU for TIMEOUT s, then reported a timeout
    (plugin_dir / "joiners.py").write_text(JOINERS)
    cpu, started = time.process_time(), time.monotonic()
    job = run("joiners.myself", {"how": how}, timeout=60)
    assert job.status == Job.STATE_FAILURE
    reason = f"cannot wait for job {job.id}: it is this job (cannot join current thread)"
    assert job.error.splitlines()[0] == f"RuntimeError: ERROR in Myself: {reason}"
    assert time.monotonic() - started < 5
    assert time.process_time() - cpu < 2


def test_the_jobs_of_a_create_many_the_journal_refused_halfway_never_stay_queued(workdir):
    # bug: startJobs of 1,000 jobs on a disk that filled up after the first 256 records
    # answered an error (no id) and left those 256 "uninitialized" in the journal for
    # good: never run, held in memory, shown as waiting by dahu-jobs
    import dahu.engine
    from dahu.errors import JournalError
    from dahu.journal import MemoryJournal

    class FillsUp(MemoryJournal):
        def create_many(self, plugin, inputs, submitted):
            if self.last_id() >= 4:
                raise JournalError("cannot write the journal: disk full") from OSError(28, "full")
            return super().create_many(plugin, inputs, submitted)

    journal = FillsUp()
    engine = dahu.engine.configure(workdir=str(workdir), journal=journal)
    try:
        with pytest.raises(JournalError, match="disk full"):
            Job.create_many("example.square", [{"x": x} for x in range(10)], chunk=4)
        records = list(journal.select())
        assert [record.state for record in records] == ["failure"] * 4
        assert records[0].error == (
            "not started: the journal refused the records of the jobs created with it: "
            "cannot write the journal: disk full"
        )
        assert not engine.live() and engine.journal_fault is not None
        assert engine.flush_files(timeout=30)
        stem = job_file_stem(str(workdir), records[0].id, "example.square")
        assert json.loads(open(stem + ".out").read())["error"][0] == records[0].error
    finally:
        engine.close()


def test_a_huge_error_message_is_cut_with_its_head_and_tail_kept(engine):
    # bug: a plugin raising an exception with a message of megabytes put it whole (twice:
    # reason and traceback) into the journal, the .out file and getJobError
    from dahu.errors import MAX_ERROR_CHARS

    message = "start " + "x" * 1_000_000 + " end"
    job = run("example.error", {"message": message})
    assert job.status == Job.STATE_FAILURE
    error = job.error
    assert len(error) <= MAX_ERROR_CHARS + 200
    assert error.startswith("ValueError: start xxx")
    assert "characters cut" in error
    assert "Traceback (most recent call last)" in error  # the frames are kept
    assert 'example.py", line' in error
    assert error.rstrip().endswith(" end")
    job.clean()
    stem = job_file_stem(str(engine.workdir), job.id, "example.error")
    out = json.loads(open(stem + ".out").read())
    assert len("\n".join(out["error"])) <= MAX_ERROR_CHARS + 200
    assert Job.getErrorFromID(job.id) == error  # as the journal has it
