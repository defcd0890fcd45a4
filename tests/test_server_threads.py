"""Tango's request threads keep their Python state between commands (dahu.server_threads):
a thread-local value set by one command is still there at the next one on that thread,
and the number of threads that keep theirs is bounded."""

from __future__ import annotations

import threading

import pytest
from tango.server import Device, command
from tango.test_context import DeviceTestContext

from dahu import server_threads
from dahu.server_errors import client_errors

_seen = threading.local()


class Counting(Device):
    """Each command counts the calls that its thread's Python state has seen."""

    @command(dtype_out=(int,))
    @client_errors
    def count(self) -> list[int]:
        _seen.calls = getattr(_seen, "calls", 0) + 1
        return [threading.get_native_id(), _seen.calls, server_threads.kept_threads()]

    @command(dtype_out=(int,))
    def count_unwrapped(self) -> list[int]:  # PyTango's own way: a new state each time
        _seen.plain = getattr(_seen, "plain", 0) + 1
        return [threading.get_native_id(), _seen.plain]


@pytest.fixture(scope="module")
def device():
    with DeviceTestContext(Counting, process=True, timeout=30) as proxy:
        yield proxy


def test_a_request_thread_keeps_its_python_state_from_one_command_to_the_next(device):
    answers = [list(device.count()) for _ in range(20)]
    by_thread: dict[int, list[int]] = {}
    for native_id, calls, _ in answers:
        by_thread.setdefault(native_id, []).append(calls)
    # each thread counted every call it ran: its thread-local state was never lost
    for counts in by_thread.values():
        assert counts == list(range(1, len(counts) + 1))
    assert 1 <= answers[-1][2] <= server_threads.MAX_KEPT


def test_without_it_pytango_gives_a_thread_a_new_state_for_each_command():
    # the reason for the module: on a thread that has not run a wrapped command, each
    # command starts from a new Python state (the thread-local value is gone)
    with DeviceTestContext(Counting, process=True, timeout=30) as fresh:
        assert [list(fresh.count_unwrapped())[1] for _ in range(5)] == [1] * 5
        fresh.count()  # from now on the thread keeps its state, whichever command runs
        assert [list(fresh.count_unwrapped())[1] for _ in range(3)] == [1, 2, 3]


def test_at_most_max_kept_threads_keep_their_state(monkeypatch):
    monkeypatch.setattr(server_threads, "MAX_KEPT", server_threads.kept_threads() + 2)
    done = []

    def run() -> None:
        server_threads.keep_thread_state()
        server_threads.keep_thread_state()  # a second call in a thread changes nothing
        done.append(server_threads.kept_threads())

    for _ in range(5):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    assert done[-1] == server_threads.MAX_KEPT
    assert sorted(done) == done and len(set(done)) == 2  # two threads kept, three not
