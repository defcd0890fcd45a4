"""The DahuDS device under several clients at once (a beamline control system): one
submits a large batch while another asks for the last job, Init while jobs end, the
DevLong limit of job ids."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import tango
from tango.test_context import DeviceTestContext

from dahu.server import DahuDS

from .conftest import finish


def start_device(workdir: Path, **properties) -> DeviceTestContext:
    props = {"workdir": str(workdir), "max_workers": 2, "wait_timeout": 1.0, **properties}
    return DeviceTestContext(DahuDS, process=True, properties=props, timeout=60)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with start_device(tmp_path_factory.mktemp("work")) as proxy:
        yield proxy


@pytest.fixture
def other(proxy):
    """A second, independent client of the same device, patient with large batches."""
    client = tango.DeviceProxy(proxy.dev_name())
    client.set_timeout_millis(60_000)
    return client


def test_the_last_job_is_a_job_while_another_client_records_a_batch(proxy, other):
    # bug: -1 stood for the last id a startJobs batch had taken, before its records were
    # written: while another client's batch was being recorded (seconds for a large
    # one), getJobState(-1), abort(-1), waitJob(-1) answered "no job -1: job ids run
    # from 1 to N", N being that very job
    first = proxy.startJob(["example.noop", "{}"])
    batch: list[int] = []
    submitter = threading.Thread(
        target=lambda: batch.extend(other.startJobs(["example.noop", json.dumps([{}] * 20_000)]))
    )
    submitter.start()
    answers, refusals = 0, []
    while submitter.is_alive():
        try:
            proxy.getJobState(-1)
            answers += 1
        except tango.DevFailed as err:
            refusals.append(err.args[0].desc)
    submitter.join()
    assert batch and batch[0] > first
    assert answers > 10  # it asked while the batch was recorded
    assert refusals == [], refusals[:3]
    assert finish(proxy, -1) == "success"
