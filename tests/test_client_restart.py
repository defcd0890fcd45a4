"""``dahu.client`` across server restarts, against real ``dahu_server`` processes."""

from __future__ import annotations

import time

import pytest
import tango

from dahu.app.localserver import LocalServer
from dahu.client import DahuClient, JobFuture, ServerError

from .conftest import finish


def wait_running(future: JobFuture, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while future.state != "running":
        assert time.monotonic() < deadline, f"job {future.job_id} did not start"
        time.sleep(0.01)


def test_a_server_restarted_on_a_new_journal_does_not_settle_the_old_jobs(tmp_path):
    # bug: the new server numbers its jobs from 1 again, and the client's future of the
    # old server's job 1 took the outcome of the new server's job 1 (another job)
    device = "test/dahu/fresh"
    first = LocalServer(str(tmp_path / "a"), str(tmp_path / "a.log"), device=device)
    first.start(timeout=60)
    second = LocalServer(
        str(tmp_path / "b"), str(tmp_path / "b.log"), device=device, port=first.port
    )
    try:
        with DahuClient(first.url, poll_interval=0.2) as dahu:
            old = dahu.submit("example.sleep", t=600)
            wait_running(old)
            first.process.kill()
            first.process.wait()
            second.start(timeout=60)
            proxy = tango.DeviceProxy(second.url)
            other = proxy.startJob(["example.square", '{"x": 3}'])
            assert other == old.job_id  # the same id: another job
            assert finish(proxy, other) == "success"
            with pytest.raises(ServerError) as info:
                old.result(timeout=60)
            assert info.value.reason == "Dahu_JournalChanged"
            assert "another journal" in str(info.value) and "\n" not in str(info.value)
            # the client goes on with the new server's jobs
            assert dahu.submit("example.square", x=5).result(timeout=30)["result"] == 25
            assert dahu.job(other).result(timeout=30)["result"] == 9
    finally:
        first.stop()
        assert second.stop() == 0
