"""Benchmark of the core engine: prints JSON.

Creates, starts and cleans N ``example.square`` jobs through the Python API (in waves of
``--wave`` jobs, as a server sees them arrive), and reports the rate and the growth of the
process's resident memory per job after a warm-up.

    python bench/engine.py [-n 20000] [--workdir DIR] [--original /path/to/python]

With ``--original``, the same pattern runs in that interpreter's Dahu (the original
2024.2 in a throw-away virtual environment: ``Job(name, data).start()``, ``join()``,
``clean()``), its files in the same file system, both run ``--repeat`` times
alternately, and ``vs_original`` is our median rate over its median rate.  File creation
dominates on a slow disk: ``--workdir /dev/shm/...`` shows Dahu's own cost.

``steal_percent`` (and, with ``--original``, ``runs_steal_percent`` and
``original_runs_steal_percent``) is the CPU time the hypervisor gave to others during
each run (``bench/machine.py``): on a shared virtual machine, a slow run often has it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

import dahu.engine
from dahu.job import Job
from machine import StealMeter  # next to this file


def run_jobs(count: int, wave: int) -> None:
    done = 0
    while done < count:
        jobs = [Job("example.square", {"x": i}) for i in range(min(wave, count - done))]
        for job in jobs:
            job.start()
        for job in jobs:
            job.clean(wait=True)
            if job.status != Job.STATE_SUCCESS:
                raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
        done += len(jobs)


ORIGINAL = """
import json, sys, time
from dahu.job import Job

def run(n, wave):
    done = 0
    while done < n:
        jobs = [Job("example.square", {"x": i}) for i in range(min(wave, n - done))]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
            job.clean()
        done += len(jobs)

n, wave, warmup = map(int, sys.argv[1:4])
run(warmup, wave)
t0 = time.perf_counter()
run(n, wave)
print(json.dumps({"jobs_per_s": n / (time.perf_counter() - t0)}))
"""


def original_rate(python: str, jobs: int, wave: int, warmup: int, parent: str) -> float:
    """The rate of the same pattern in the original Dahu (its files under ``parent``)."""
    env = dict(os.environ, TMPDIR=parent)  # the original writes under tempfile.gettempdir()
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [python, "-c", ORIGINAL, str(jobs), str(wave), str(warmup)],
        capture_output=True,
        text=True,
        env=env,
        cwd=parent,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the original failed: {proc.stderr[-1000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["jobs_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=20000)
    parser.add_argument("--wave", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--workers", type=int, default=None, help="job slots (default: CPUs)")
    parser.add_argument("--original", metavar="PYTHON", help="python of the original Dahu")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each, alternated, with --original"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="dahu-bench-")
    os.makedirs(workdir, exist_ok=True)
    engine = dahu.engine.configure(workdir=workdir, max_workers=args.workers)
    proc = psutil.Process()
    run_jobs(args.warmup, args.wave)
    gc.collect()
    rss0 = proc.memory_info().rss
    commits0 = getattr(engine.journal, "commits", 0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with StealMeter() as steal:
        run_jobs(args.jobs, args.wave)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # less sensitive than wall time to a busy machine
    gc.collect()
    rss1 = proc.memory_info().rss
    result = {
        "benchmark": "engine",
        "jobs": args.jobs,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(args.jobs / elapsed, 1),
        "cpu_us_per_job": round(cpu / args.jobs * 1e6, 1),
        "rss_growth_kb_per_job": round((rss1 - rss0) / 1024 / args.jobs, 4),
        "rss_mb": round(rss1 / 2**20, 1),
        "steal_percent": steal.percent,
        # group commit: 2.0 would be one transaction per journal write (create, finish)
        "journal_commits_per_job": round(
            (getattr(engine.journal, "commits", 0) - commits0) / args.jobs, 3
        ),
        "workdir": workdir,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    if args.original:
        # alternate: ours, the original, ours, ... (--repeat times each); on a shared
        # machine the rates move from one minute to the next: medians, and every run
        ours, theirs = [result["jobs_per_s"]], []
        ours_steal, theirs_steal = [steal.percent], []
        for turn in range(args.repeat):
            original_dir = tempfile.mkdtemp(prefix="dahu-bench-original-", dir=workdir)
            with StealMeter() as steal:
                theirs.append(
                    original_rate(args.original, args.jobs, args.wave, args.warmup, original_dir)
                )
            theirs_steal.append(steal.percent)
            if turn + 1 < args.repeat:
                t0 = time.perf_counter()
                with StealMeter() as steal:
                    run_jobs(args.jobs, args.wave)
                ours.append(args.jobs / (time.perf_counter() - t0))
                ours_steal.append(steal.percent)
        result["runs_jobs_per_s"] = [round(rate, 1) for rate in ours]
        result["original_runs_jobs_per_s"] = [round(rate, 1) for rate in theirs]
        # the machine's share: steal in each run (the original's includes its start-up)
        result["runs_steal_percent"] = ours_steal
        result["original_runs_steal_percent"] = theirs_steal
        result["median_jobs_per_s"] = round(statistics.median(ours), 1)
        result["original_jobs_per_s"] = round(statistics.median(theirs), 1)
        result["vs_original"] = round(
            result["median_jobs_per_s"] / result["original_jobs_per_s"], 3
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
