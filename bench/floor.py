"""The floor of issue 11's two Tango ratios on this machine: prints JSON.

A bare PyTango device (in its own process, database-less, ``NO_SYNC`` as ``DahuDS``) that
does what the issue requires of any job server and nothing more:

* ``startJob`` decodes the JSON input, commits the job's row to SQLite (WAL,
  ``synchronous=NORMAL``, as Dahu's journal) before the id goes back, and hands the id
  to one worker thread;
* the worker thread computes the square, commits the outcomes of every job it finds
  queued in one transaction (group commit), wakes ``waitJob`` and pushes each id as a
  ``jobSuccess`` change event (one thread hop per job; no ``.inp``/``.out`` files, no
  plugin life cycle, no statistics);
* ``waitJob`` returns once the job's outcome is committed.

Its two workloads are ``bench/tango.py``'s: ``startJob`` + ``waitJob`` pairs from one
client, and ``startJob`` x N until every event has arrived, each turn followed by a turn
of the device's own one-line Python ``echo`` command (the bound): ``pairs_vs_echo``
compares the pairs with half the echo rate, ``events_vs_echo`` the events with it.  A
job server that keeps the issue's promises cannot do better than this device here.

    python bench/floor.py [--small] [--pairs 2000] [--events 5000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

# bench/tango.py is named like PyTango's package: keep this directory out of the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

# As bench/tango.py: large ZeroMQ buffers at both ends (a slow client drops no event).
os.environ.setdefault("TANGO_EVENT_BUFFER_HWM", "200000")
os.environ.setdefault("TANGO_DS_EVENT_BUFFER_HWM", "200000")

import tango  # noqa: E402

from dahu.app.localserver import die_with_parent, free_port  # noqa: E402

DEVICE = "bench/floor/1"


def server_main(argv: list[str]) -> int:
    """The floor device (``--server INSTANCE -nodb -port P -dlist DEVICE``), its journal
    in ``$FLOOR_DIR``."""
    from tango.server import Device, attribute, command, run

    class Floor(Device):
        def init_device(self) -> None:
            super().init_device()
            tango.Util.instance().set_serial_model(tango.SerialModel.NO_SYNC)
            self.set_change_event("jobSuccess", True, False)
            path = os.path.join(os.environ["FLOOR_DIR"], "floor.sqlite")
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, plugin TEXT,"
                " input TEXT, state TEXT, output TEXT)"
            )
            self._lock = threading.Lock()
            self._done = threading.Condition()
            self._finished: set[int] = set()
            self._last = 0
            self._queue: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=self._work, daemon=True).start()

        def _work(self) -> None:
            with tango.EnsureOmniThread():
                while True:
                    batch = [self._queue.get()]
                    while True:
                        try:
                            batch.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                    rows = [(json.dumps({"result": x * x}), i) for i, x in batch]
                    with self._lock:
                        self._db.execute("BEGIN")
                        self._db.executemany(
                            "UPDATE jobs SET state='success', output=? WHERE id=?", rows
                        )
                        self._db.execute("COMMIT")
                    with self._done:
                        self._finished.update(i for i, _ in batch)
                        self._done.notify_all()
                    for i, _ in batch:
                        self._last = i
                        self.push_change_event("jobSuccess", i)

        @attribute(dtype=tango.DevLong)
        def jobSuccess(self) -> int:  # noqa: N802 - the name DahuDS uses
            return self._last

        @command(dtype_in=tango.DevLong, dtype_out=tango.DevLong)
        def echo(self, value: int) -> int:
            return value

        @command(dtype_in=(str,), dtype_out=tango.DevLong)
        def startJob(self, argin: list[str]) -> int:  # noqa: N802
            x = json.loads(argin[1])["x"]
            with self._lock:  # autocommitted: the record exists before the id goes back
                cursor = self._db.execute(
                    "INSERT INTO jobs (plugin, input, state) VALUES (?, ?, 'queued')",
                    (argin[0], argin[1]),
                )
            job_id = cursor.lastrowid
            self._queue.put((job_id, x))
            return job_id

        @command(dtype_in=tango.DevLong, dtype_out=str)
        def waitJob(self, job_id: int) -> str:  # noqa: N802
            with self._done:
                ended = self._done.wait_for(lambda: job_id in self._finished, 2)
            return "success" if ended else "running"

    run((Floor,), args=["floor.py", *argv])
    return 0


def connect(url: str) -> tango.DeviceProxy:
    """A proxy of the floor device once it answers (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            proxy = tango.DeviceProxy(url)
            proxy.ping()
            proxy.set_timeout_millis(30_000)
            return proxy
        except tango.DevFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polled: the device's process starts


def pairs(proxy: tango.DeviceProxy, count: int, per_turn: int) -> tuple[float, float]:
    """Pairs per second and echoes per second, in alternate turns."""
    work = echo = 0.0
    done = 0
    while done < count:
        size = min(per_turn, count - done)
        started = time.perf_counter()
        for i in range(size):
            job_id = proxy.startJob(["example.square", json.dumps({"x": i})])
            while proxy.waitJob(job_id) != "success":
                pass
        middle = time.perf_counter()
        for i in range(2 * size):
            proxy.echo(i)
        work += middle - started
        echo += time.perf_counter() - middle
        done += size
    return count / work, 2 * count / echo


def events(proxy: tango.DeviceProxy, count: int, per_turn: int) -> tuple[float, float]:
    """Jobs per second until every event arrived, and echoes per second, in turns."""
    seen: set[int] = set()
    arrived = threading.Condition()

    def on_event(event: tango.EventData) -> None:
        if event.err or event.attr_value is None:
            return
        with arrived:
            seen.add(int(event.attr_value.value))
            arrived.notify_all()

    event_id = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:
        deadline = time.monotonic() + 10
        while True:  # a probe job's event: the subscription is live
            probe = proxy.startJob(["example.square", '{"x": 0}'])
            with arrived:
                if arrived.wait_for(functools.partial(seen.__contains__, probe), 0.5):
                    break
            if time.monotonic() > deadline:
                raise SystemExit("no jobSuccess event arrived within 10 s of subscribing")
        work = echo = 0.0
        done = 0
        while done < count:
            size = min(per_turn, count - done)
            started = time.perf_counter()
            ids = [proxy.startJob(["example.square", json.dumps({"x": i})]) for i in range(size)]
            with arrived:
                if not arrived.wait_for(functools.partial(seen.issuperset, ids), 120):
                    raise SystemExit("jobSuccess events never arrived")
            middle = time.perf_counter()
            for i in range(size):
                proxy.echo(i)
            work += middle - started
            echo += time.perf_counter() - middle
            done += size
        return count / work, count / echo
    finally:
        proxy.unsubscribe_event(event_id)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--server":
        return server_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--small", action="store_true", help="a tiny run (a smoke test)")
    args = parser.parse_args(argv)
    pairs_turn, events_turn = 50, 1000
    if args.small:
        args.pairs, args.events, pairs_turn, events_turn = 20, 50, 10, 25
    workdir = tempfile.mkdtemp(prefix="dahu-floor-")
    port = free_port()
    command = [sys.executable, os.path.abspath(__file__), "--server", "floor", "-nodb"]
    server = subprocess.Popen(
        die_with_parent(command + ["-port", str(port), "-dlist", DEVICE]),
        env=dict(os.environ, FLOOR_DIR=workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proxy = connect(f"tango://127.0.0.1:{port}/{DEVICE}#dbase=no")
        pairs_rate, pairs_echo = pairs(proxy, args.pairs, pairs_turn)
        events_rate, events_echo = events(proxy, args.events, events_turn)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "floor",
                "pairs": args.pairs,
                "pairs_per_s": round(pairs_rate, 1),
                "pairs_turns_echo_per_s": round(pairs_echo, 1),
                "pairs_vs_echo": round(pairs_rate / (pairs_echo / 2), 3),
                "events": args.events,
                "events_per_s": round(events_rate, 1),
                "events_turns_echo_per_s": round(events_echo, 1),
                "events_vs_echo": round(events_rate / events_echo, 3),
                "targets": {"pairs_vs_echo": 0.75, "events_vs_echo": 0.6},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
