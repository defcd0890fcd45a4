"""Benchmark of the DahuDS Tango device: prints JSON.

Starts ``dahu_server`` without a database (``-nodb``) on a free port, with a fresh work
directory, and measures from Python clients:

* the bounds: round trips of the C++ ``State`` command (``trivial_per_s``) and of the
  cheapest command written in Python (``getJobState`` of an ended job,
  ``python_command_per_s``: what PyTango costs any Python command, such as a one-line
  echo);
* ``pairs_per_s``: ``startJob`` + ``waitJob`` pairs (``example.square``) from one client;
  a pair is two round trips, so ``pairs_vs_python_command`` compares it with
  ``python_command_per_s / 2`` (and ``pairs_vs_bound`` with ``trivial_per_s / 2``);
* ``events_per_s``: ``startJob`` calls, back to back, until every job's ``jobSuccess``
  change event has reached the client (one round trip per job: compared with the bounds);
* ``event_latency_ms``: from ``startJob`` returning to the job's ``jobSuccess`` event
  reaching the client, jobs started at 500/s; ``event_latency_reference_ms`` is the same
  for a bare PyTango device (in its own process) whose ``startJob`` only hands a number to
  a Python thread that pushes it as the event: the machine's own floor;
* ``batch_per_s``: jobs per second submitted by one ``startJobs`` call (and
  ``batch_done_per_s`` until they have all run);
* ``latency_ms``: another client's ``startJob`` latency while ``--waiters`` clients (in a
  separate process) are blocked in ``waitJob`` on jobs that do not end.

The speed of this shared machine changes from one second to the next (the bound itself by
up to 2x within a run), so a workload and its bound are measured in turns: a turn of
the workload, then a turn of each bound, again and again; each rate is the total of its
turns (``turns`` says how many), and the latencies of Dahu and of the reference device
are taken in alternate slices.  ``python_command_alone_per_s`` are the bound's runs
before, between and after the workloads, as earlier versions of this script measured it.

    python bench/tango.py [--small] [--pairs 2000] [--events 5000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

# This file is named like PyTango's package: keep its directory out of the import path,
# once machine.py is taken from it (bench/client.py loads this file by its path).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from machine import cpu_ticks, steal_percent  # noqa: E402

sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

# Large ZeroMQ buffers at both ends: a slow moment of the client must not drop events.
os.environ.setdefault("TANGO_EVENT_BUFFER_HWM", "200000")
os.environ.setdefault("TANGO_DS_EVENT_BUFFER_HWM", "200000")

import tango  # noqa: E402

from dahu.app.localserver import LocalServer, die_with_parent  # noqa: E402

DEVICE = "id00/dahu/bench"
# The client's timeout for each command: well above the server's waitJob limit (2 s), which
# a loaded machine's reply can pass (Tango's default, 3 s, left 0.8 s).
CLIENT_TIMEOUT_MS = 30_000


def python_command_rate(proxy: tango.DeviceProxy, job_id: int, count: int) -> float:
    """Round trips of the cheapest Python command of the device (getJobState of a job
    that ended): what any command implemented in Python costs, for comparison."""
    started = time.perf_counter()
    for _ in range(count):
        proxy.getJobState(job_id)
    return count / (time.perf_counter() - started)


class Turns:
    """Seconds and counts of a workload and of its bounds (``getJobState``, ``State``
    and, with ``echo``, the reference device's ``echo``), summed over turns."""

    def __init__(
        self,
        proxy: tango.DeviceProxy,
        job_id: int | None,
        echoes: int,
        echo: tango.DeviceProxy | None = None,
    ):
        self.proxy, self.job_id, self.echoes, self.echo = proxy, job_id, echoes, echo
        self.seconds: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()
        self.per_turn: collections.defaultdict = collections.defaultdict(list)  # rates
        self.turns = 0

    def bounds(self) -> None:
        """One turn of each bound."""
        proxy, job_id = self.proxy, self.job_id
        started = time.perf_counter()
        for _ in range(self.echoes):
            proxy.getJobState(job_id)
        middle = time.perf_counter()
        for _ in range(self.echoes):
            proxy.state()
        self.add("python_command", self.echoes, middle - started)
        self.add("trivial", self.echoes, time.perf_counter() - middle)
        if self.echo is not None:
            echo = self.echo
            started = time.perf_counter()
            for i in range(self.echoes):
                echo.echo(i)
            self.add("echo", self.echoes, time.perf_counter() - started)
        self.turns += 1

    def add(self, what: str, count: int, seconds: float) -> None:
        self.counts[what] += count
        self.seconds[what] += seconds
        self.per_turn[what].append(count / seconds)

    def rate(self, what: str) -> float:
        return self.counts[what] / self.seconds[what]

    def spread(self, what: str, bound: str, scale: float = 1.0) -> dict:
        """The ratio of ``what`` to ``bound`` (times ``scale``) turn by turn, each turn
        against the bound's turn that followed it: how much one run's ratio can be
        trusted (the target is the ratio of the sums, :meth:`rate`)."""
        pairs = zip(self.per_turn[what], self.per_turn[bound], strict=True)
        ratios = sorted(w / (b * scale) for w, b in pairs)
        if not ratios:
            return {}
        return {
            "turns": len(ratios),
            "median": round(statistics.median(ratios), 3),
            "min": round(ratios[0], 3),
            "max": round(ratios[-1], 3),
        }


def pairs_in_turns(
    proxy: tango.DeviceProxy,
    job_id: int,
    count: int,
    per_turn: int = 50,
    echo: tango.DeviceProxy | None = None,
) -> Turns:
    """``count`` pairs, ``per_turn`` at a time, each turn followed by one of the bounds
    (and of the ``echo`` command of the reference device, if given)."""
    turns = Turns(proxy, job_id, 2 * per_turn, echo)
    done = 0
    while done < count:
        size = min(per_turn, count - done)
        started = time.perf_counter()
        for i in range(size):
            new = proxy.startJob(["example.square", f'{{"x": {done + i}}}'])
            state = proxy.waitJob(new)
            while state not in ("success", "failure", "aborted"):
                state = proxy.waitJob(new)
            if state != "success":
                raise SystemExit(f"job {new} ended {state}")
        turns.add("work", size, time.perf_counter() - started)
        done += size
        turns.bounds()
    return turns


def wait_subscribed(proxy: tango.DeviceProxy, heard: Callable[[int], bool]) -> None:
    """Return once a ``jobSuccess`` subscription made just now is live: Tango may drop
    the events pushed before it reaches the server (a probe job's event is lost, then).
    Starts probe jobs until ``heard(job_id)`` is true of one of them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = proxy.startJob(["example.square", '{"x": 0}'])
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            if heard(probe):
                return
            time.sleep(0.005)  # polled: the event arrives on Tango's thread
    raise SystemExit("no jobSuccess event arrived within 10 s of subscribing")


class EventWatch:
    """A ``jobSuccess`` subscription that can start jobs and wait for their events."""

    def __init__(self, proxy: tango.DeviceProxy) -> None:
        self.proxy = proxy
        self.seen: set[int] = set()
        self.arrived = threading.Condition(threading.Lock())
        self.event_id = proxy.subscribe_event(
            "jobSuccess", tango.EventType.CHANGE_EVENT, self.on_event
        )
        wait_subscribed(proxy, self.heard)

    def heard(self, job_id: int) -> bool:
        with self.arrived:
            return job_id in self.seen

    def on_event(self, event: tango.EventData) -> None:
        if event.err or event.attr_value is None:
            return
        with self.arrived:
            self.seen.add(int(event.attr_value.value))
            self.arrived.notify_all()

    def run(self, first: int, size: int) -> float:
        """Start ``size`` jobs back to back; seconds until every one's event arrived."""
        proxy = self.proxy
        started = time.perf_counter()
        ids = [proxy.startJob(["example.square", f'{{"x": {first + i}}}']) for i in range(size)]
        with self.arrived:
            if not self.arrived.wait_for(functools.partial(self.seen.issuperset, ids), 120):
                missing = len(set(ids) - self.seen)
                raise SystemExit(f"{missing} of {size} jobSuccess events never arrived")
        return time.perf_counter() - started

    def close(self) -> None:
        self.proxy.unsubscribe_event(self.event_id)


def events_in_turns(
    proxy: tango.DeviceProxy,
    job_id: int | None,
    count: int,
    per_turn: int = 1000,
    echo: tango.DeviceProxy | None = None,
) -> Turns:
    """``count`` jobs started back to back, ``per_turn`` at a time: a turn lasts until
    every one of its jobs' ``jobSuccess`` events has arrived; each turn is followed by one
    of the bounds (none with ``job_id`` None).  With ``echo`` (the reference device), its
    ``echo`` is one more bound, and the same workload on it (``reference``: a server that
    does nothing but push the events) follows each turn too."""
    turns = Turns(proxy, job_id, per_turn, echo)
    ours = EventWatch(proxy)
    theirs = EventWatch(echo) if echo is not None else None
    try:
        done = 0
        while done < count:
            size = min(per_turn, count - done)
            turns.add("work", size, ours.run(done, size))
            if job_id is not None:
                turns.bounds()
            if theirs is not None:
                turns.add("reference", size, theirs.run(done, size))
            done += size
    finally:
        ours.close()
        if theirs is not None:
            theirs.close()
    return turns


def events_rate(proxy: tango.DeviceProxy, count: int) -> float:
    """``count`` jobs started back to back until every ``jobSuccess`` event has arrived,
    in one go, without the bounds (``bench/client.py`` compares its ways with it)."""
    return events_in_turns(proxy, None, count, count).rate("work")


def event_latencies(proxy: tango.DeviceProxy, count: int, rate: float) -> list[float]:
    """Milliseconds from ``startJob`` returning to the job's ``jobSuccess`` event reaching
    the client, for ``count`` jobs started at ``rate`` per second."""
    returned: dict[int, float] = {}
    arrived: dict[int, float] = {}
    lock = threading.Lock()

    def on_event(event: tango.EventData) -> None:
        now = time.perf_counter()
        if event.err or event.attr_value is None:
            return
        with lock:
            arrived.setdefault(int(event.attr_value.value), now)

    event_id = proxy.subscribe_event("jobSuccess", tango.EventType.CHANGE_EVENT, on_event)
    try:

        def heard(job_id: int) -> bool:
            with lock:
                return job_id in arrived

        wait_subscribed(proxy, heard)
        with lock:
            arrived.clear()  # the events sent on subscription and of the probes
        period = 1.0 / rate
        started = time.perf_counter()
        for i in range(count):
            pause = started + i * period - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            job_id = proxy.startJob(["example.square", f'{{"x": {i}}}'])
            with lock:
                returned[job_id] = time.perf_counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if all(i in arrived for i in returned):
                    break
            time.sleep(0.01)
    finally:
        proxy.unsubscribe_event(event_id)
    # an event may overtake the reply of its own startJob: that is a latency of 0
    times = [max(arrived[i] - t, 0.0) * 1000 for i, t in returned.items() if i in arrived]
    if len(times) < count:
        raise SystemExit(f"only {len(times)} of {count} jobSuccess events received")
    return times


def latency_summary(times: list[float], rate: float) -> dict:
    times = sorted(times)
    return {
        "rate_per_s": rate,
        "jobs": len(times),
        "median": round(statistics.median(times), 3),
        "p99": round(times[max(int(len(times) * 0.99) - 1, 0)], 3),
        "max": round(times[-1], 3),
    }


REFERENCE_DEVICE = "bench/reference/1"


class ReferenceDevice(LocalServer):
    """The bare PyTango device of ``event_latency_reference_ms``, in its own process,
    started and stopped as the Dahu server is (its log in ``log_path``)."""

    def __init__(self, workdir: str, log_path: str) -> None:
        super().__init__(workdir, log_path, device=REFERENCE_DEVICE, instance="bench")
        command = [sys.executable, __file__, "--reference-server", "bench", "-nodb"]
        self.command = die_with_parent(
            command + ["-port", str(self.port), "-dlist", REFERENCE_DEVICE]
        )


def reference_server_main(argv: list[str]) -> int:
    """The reference device: ``startJob`` numbers the call and hands the number to a
    Python thread, which pushes it as a ``jobSuccess`` change event (what Dahu does for a
    job, without the job)."""
    import queue

    from tango.server import Device, attribute, command, run

    class Reference(Device):
        def init_device(self) -> None:
            super().init_device()
            tango.Util.instance().set_serial_model(tango.SerialModel.NO_SYNC)  # as DahuDS
            self.set_change_event("jobSuccess", True, False)
            self._count = 0
            self._last = 0
            self._queue: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=self._push_events, daemon=True).start()

        def _push_events(self) -> None:
            with tango.EnsureOmniThread():
                while True:
                    self._last = self._queue.get()
                    self.push_change_event("jobSuccess", self._last)

        @attribute(dtype=tango.DevLong)
        def jobSuccess(self) -> int:  # noqa: N802 - the name DahuDS uses
            return self._last

        @command(dtype_in=tango.DevLong, dtype_out=tango.DevLong)
        def echo(self, value: int) -> int:
            return value

        @command(dtype_in=(str,), dtype_out=tango.DevLong)
        def startJob(self, argin: list[str]) -> int:  # noqa: N802
            self._count += 1
            self._queue.put(self._count)
            return self._count

    run((Reference,), args=["tango.py", *argv])
    return 0


def batch_rates(proxy: tango.DeviceProxy, count: int) -> tuple[float, float]:
    inputs = json.dumps([{"x": i} for i in range(count)])
    finished0 = proxy.jobsFinished
    patience = proxy.get_timeout_millis()
    proxy.set_timeout_millis(max(patience, 60000))
    try:
        started = time.perf_counter()
        ids = proxy.startJobs(["example.square", inputs])
        submitted = time.perf_counter()
    finally:
        proxy.set_timeout_millis(patience)
    if len(ids) != count:
        raise SystemExit(f"startJobs returned {len(ids)} ids for {count} inputs")
    while proxy.jobsFinished - finished0 < count:
        if time.perf_counter() - started > 300:
            raise SystemExit("the batch did not finish within 300 s")
        time.sleep(0.01)
    done = time.perf_counter()
    return count / (submitted - started), count / (done - started)


def waiter_main(url: str, ids: list[int]) -> int:
    """Helper process: one client per id, each blocked in waitJob until killed."""
    proxies = [tango.DeviceProxy(url) for _ in ids]
    for proxy in proxies:
        proxy.set_timeout_millis(CLIENT_TIMEOUT_MS)
    calls = [0] * len(ids)

    def wait(index: int) -> None:
        while True:
            proxies[index].waitJob(ids[index])
            calls[index] += 1

    for index in range(len(ids)):
        threading.Thread(target=wait, args=(index,), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes it
    return 0


def latency_ms(proxy: tango.DeviceProxy, url: str, waiters: int, samples: int) -> dict:
    ids = [proxy.startJob(["example.sleep", '{"t": 600}']) for _ in range(waiters)]
    helper = subprocess.Popen(
        [sys.executable, __file__, "--waiter", url, *map(str, ids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if helper.stdout.readline().strip() != "ready":
            raise SystemExit("the waiting clients did not start")
        time.sleep(1.0)  # let every waiter reach the server and block there
        times = []
        for i in range(samples):
            started = time.perf_counter()
            proxy.startJob(["example.noop", "{}"])
            times.append((time.perf_counter() - started) * 1000)
            if i % 20 == 19:
                time.sleep(0.05)  # spread the samples over the waiters' cycles
    finally:
        helper.stdin.close()
        helper.kill()
        helper.wait()
        for job_id in ids:
            proxy.abort(job_id)
    times.sort()
    return {
        "median": round(statistics.median(times), 3),
        "p99": round(times[int(len(times) * 0.99) - 1], 3),
        "max": round(times[-1], 3),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--waiter":
        return waiter_main(argv[1], [int(i) for i in argv[2:]])
    if argv and argv[0] == "--reference-server":
        return reference_server_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--trivial", type=int, default=5000)
    parser.add_argument("--waiters", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--latency-jobs",
        type=int,
        default=2000,
        help="jobs at 500/s (and as many for the reference)",
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="parent of the server's work directory (default: the system's temporary "
        "directory; /dev/shm takes the disk out of the figures)",
    )
    args = parser.parse_args(argv)
    pairs_turn, events_turn, slices = 50, 1000, 4
    if args.small:
        args.pairs, args.events, args.batch, args.trivial = 20, 50, 200, 200
        args.waiters, args.samples, args.latency_jobs = 2, 20, 50
        pairs_turn, events_turn, slices = 10, 25, 2
    workdir = tempfile.mkdtemp(prefix="dahu-bench-tango-", dir=args.workdir)
    server = LocalServer(
        workdir, os.path.join(workdir, "server.log"), device=DEVICE, instance="bench"
    )
    reference = ReferenceDevice(workdir, os.path.join(workdir, "reference.log"))
    proxy = server.start(timeout=60)
    proxy.set_timeout_millis(CLIENT_TIMEOUT_MS)
    try:
        reference_proxy = reference.start(timeout=60)
        first = proxy.startJob(["example.square", "{}"])  # load the plugin module
        proxy.startJob(["example.noop", "{}"])
        while proxy.waitJob(first) not in ("success", "failure", "aborted"):
            pass
        alone = [python_command_rate(proxy, first, args.trivial)]
        pairs = pairs_in_turns(proxy, first, args.pairs, pairs_turn, reference_proxy)
        alone.append(python_command_rate(proxy, first, args.trivial))
        events = events_in_turns(proxy, first, args.events, events_turn, reference_proxy)
        # Dahu's latency and the reference's, in alternate slices of the same minutes
        ours: list[float] = []
        floor: list[float] = []
        size = max(args.latency_jobs // slices, 1)
        ticks = cpu_ticks()
        for _ in range(slices):
            ours += event_latencies(proxy, size, 500.0)
            floor += event_latencies(reference_proxy, size, 500.0)
        steal = steal_percent(ticks, cpu_ticks())
        batch, batch_done = batch_rates(proxy, args.batch)
        latency = latency_ms(proxy, server.url, args.waiters, args.samples)
        alone.append(python_command_rate(proxy, first, args.trivial))
        bound = {
            name: (pairs.counts[name] + events.counts[name])
            / (pairs.seconds[name] + events.seconds[name])
            for name in ("trivial", "python_command", "echo")
        }
        result = {
            "benchmark": "tango",
            "method": "turns",
            "trivial_per_s": round(bound["trivial"], 1),
            "python_command_per_s": round(bound["python_command"], 1),
            "echo_per_s": round(bound["echo"], 1),
            "pairs": args.pairs,
            "pairs_turns": pairs.turns,
            "pairs_per_s": round(pairs.rate("work"), 1),
            "pairs_vs_python_command": round(
                pairs.rate("work") / (pairs.rate("python_command") / 2), 3
            ),
            "pairs_vs_bound": round(pairs.rate("work") / (pairs.rate("trivial") / 2), 3),
            "pairs_vs_echo": round(pairs.rate("work") / (pairs.rate("echo") / 2), 3),
            "pairs_turns_python_command_per_s": round(pairs.rate("python_command"), 1),
            "pairs_vs_python_command_by_turn": pairs.spread("work", "python_command", 0.5),
            "events": args.events,
            "events_turns": events.turns,
            "events_per_s": round(events.rate("work"), 1),
            "events_vs_python_command": round(
                events.rate("work") / events.rate("python_command"), 3
            ),
            "events_vs_bound": round(events.rate("work") / events.rate("trivial"), 3),
            "events_vs_echo": round(events.rate("work") / events.rate("echo"), 3),
            # the same workload on the reference device, which does nothing but push them
            "events_reference_per_s": round(events.rate("reference"), 1),
            "events_reference_vs_echo": round(events.rate("reference") / events.rate("echo"), 3),
            "events_turns_python_command_per_s": round(events.rate("python_command"), 1),
            "events_vs_python_command_by_turn": events.spread("work", "python_command"),
            "event_latency_ms": latency_summary(ours, 500.0),
            "event_latency_reference_ms": latency_summary(floor, 500.0),
            # time the hypervisor took from this VM meanwhile: it makes the tails
            "event_latency_steal_percent": steal,
            "python_command_alone_per_s": [round(rate, 1) for rate in alone],
            "batch": args.batch,
            "batch_per_s": round(batch, 1),
            "batch_done_per_s": round(batch_done, 1),
            "waiters": args.waiters,
            "latency_ms": latency,
            "workdir": os.path.dirname(workdir),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "pytango": tango.__version__,
        }
    finally:
        reference.stop()
        server.stop(60)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
