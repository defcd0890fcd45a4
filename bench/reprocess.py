"""Benchmark of ``dahu-reprocess``: prints JSON.

Writes N ``example.square`` job input files, then reprocesses them with ``-j 1`` and
``-j 2`` (the CLI in a subprocess, ``-q --json``) and reports, per run, the rate the
tool measures itself (first job submitted to last job done) and the rate seen from
outside, start-up included.

    python bench/reprocess.py [-n 2000] [--small] [--original /path/to/python] [--repeat 3]

With ``--original``, the original tool (``dahu-reprocess`` next to that interpreter, the
2024.2 release in a throw-away virtual environment) reprocesses the same files, start-up
included.  Our ``-j 1`` and the original then take turns, ``--repeat`` times each (the
rates of both move by a third from one minute to the next here), and
``j1_vs_original`` is the median of our rates over the median of its rates, start-up
included; every run is in ``j1_runs_with_startup`` and ``original_runs_with_startup``,
and the CPU time the hypervisor gave to others during each run (``bench/machine.py``) in
``j1_runs_steal_percent`` and ``original_runs_steal_percent``.

Does ``-j 2`` pay off for plugins that release the GIL?  ``sleep_5ms`` runs
``example.sleep`` (5 ms) and ``numpy_5ms`` the plugin ``benchwork.ufuncs`` of
``bench/plugins`` (numpy ufuncs calibrated to about 5 ms of CPU per job here), each with
``-j 1`` and ``-j 2``; ``j2_over_j1`` is the ratio of the rates the tool measures.  For
the numpy work, ``bare_2_threads_speedup`` is what two bare threads running the same
work get on this machine at that moment: the bound for ``j2_over_j1`` (less than 2 when
other processes use the cores).

Dahu's modules are compiled to bytecode first (``compileall``), as installing a package
does: the original's are, and a development checkout under ``PYTHONDONTWRITEBYTECODE``
would otherwise compile every module at each start-up (``--no-compile`` skips it).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from machine import StealMeter  # next to this file

PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")


def write_inputs(
    directory: str, count: int, plugin: str = "example.square", **extra: float
) -> None:
    """Write ``count`` inputs laid out as the server writes them (NNNN/NNNNN_plugin.inp)."""
    for job_id in range(1, count + 1):
        sub = os.path.join(directory, f"{job_id // 1000:04d}")
        os.makedirs(sub, exist_ok=True)
        data = {"x": job_id, **extra, "plugin_name": plugin, "job_id": job_id}
        with open(os.path.join(sub, f"{job_id:05d}_{plugin}.inp"), "w") as handle:
            json.dump(data, handle, indent=2)


def run(inputs: str, output: str, workers: int, count: int, *options: str) -> dict[str, float]:
    """Reprocess ``inputs`` with ``-j workers``; the rates measured."""
    command = [sys.executable, "-m", "dahu.app.reprocess", "-q", "--json", *options]
    command += ["-j", str(workers), "-o", output, inputs]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dahu-reprocess -j {workers} exited {proc.returncode}: {proc.stderr}")
    summary = json.loads(proc.stdout)
    if summary["total"]["success"] != count:
        raise SystemExit(f"dahu-reprocess -j {workers}: {summary['total']}")
    return {
        "jobs_per_s": round(summary["jobs_per_s"], 1),
        "seconds": round(summary["wall_time"], 3),
        "jobs_per_s_with_startup": round(count / elapsed, 1),
        "seconds_with_startup": round(elapsed, 3),
    }


def run_original(python: str, inputs: str, base: str, count: int) -> dict[str, float]:
    """The original ``dahu-reprocess`` on every input file, start-up included."""
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(inputs)
        for name in names
        if name.endswith(".inp")
    )
    script = os.path.join(os.path.dirname(python), "dahu-reprocess")
    workdir = tempfile.mkdtemp(prefix="original-", dir=base)
    env = dict(os.environ, TMPDIR=workdir)  # where the original writes its files
    env.pop("PYTHONPATH", None)  # its own Dahu, whatever this run imports
    t0 = time.perf_counter()
    proc = subprocess.run(
        [python, script, *files], capture_output=True, text=True, env=env, cwd=workdir
    )
    elapsed = time.perf_counter() - t0
    shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"the original dahu-reprocess exited {proc.returncode}: {proc.stderr}")
    return {"jobs_per_s_with_startup": round(count / elapsed, 1), "seconds": round(elapsed, 3)}


def gil_free(base: str, count: int, plugin: str, **extra: float) -> dict[str, object]:
    """``-j 1`` and ``-j 2`` on ``count`` jobs of a plugin that releases the GIL."""
    inputs = os.path.join(base, f"{plugin}-inputs")
    write_inputs(inputs, count, plugin, **extra)
    runs = {
        f"j{workers}": run(
            inputs, os.path.join(base, f"{plugin}-j{workers}"), workers, count, "--plugins", PLUGINS
        )
        for workers in (1, 2)
    }
    return {
        "jobs": count,
        **runs,
        "j2_over_j1": round(runs["j2"]["jobs_per_s"] / runs["j1"]["jobs_per_s"], 3),
    }


def bare_speedup(work, jobs: int) -> float:
    """How much faster two threads run ``2 * jobs`` calls of ``work`` than one thread
    runs ``jobs`` of them: what the machine gives now, without Dahu."""

    def loop() -> None:
        for _ in range(jobs):
            work()

    start = time.perf_counter()
    loop()
    alone = time.perf_counter() - start
    threads = [threading.Thread(target=loop) for _ in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(2 * alone / (time.perf_counter() - start), 3)


def numpy_work(base: str, count: int) -> dict[str, object]:
    """``benchwork.ufuncs`` calibrated to about 5 ms per job, with ``-j 1`` and ``-j 2``."""
    sys.path.insert(0, PLUGINS)
    try:
        import benchwork
    finally:
        sys.path.remove(PLUGINS)
    rounds = benchwork.calibrate(0.005)
    start = time.perf_counter()
    for _ in range(20):
        benchwork.ufuncs(rounds=rounds)
    per_job = (time.perf_counter() - start) / 20
    figures = gil_free(base, count, "benchwork.ufuncs", rounds=rounds)
    return {
        "rounds": rounds,
        "ms_per_job": round(per_job * 1e3, 2),
        **figures,
        "bare_2_threads_speedup": bare_speedup(lambda: benchwork.ufuncs(rounds=rounds), 100),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=2000, help="inputs (default 2000)")
    parser.add_argument("--small", action="store_true", help="a tiny run (50 inputs)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--original", metavar="PYTHON", help="python of the original Dahu")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not compile Dahu's modules first"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="with --original: turns of our -j 1 and of the original (default 3)",
    )
    parser.add_argument(
        "--dir",
        help="where the inputs and outputs of both tools go (default: the temporary "
        "directory; /dev/shm/... takes the disk out)",
    )
    args = parser.parse_args(argv)
    count = 50 if args.small else args.jobs
    if not args.no_compile:
        import dahu

        compileall.compile_dir(os.path.dirname(dahu.__file__), quiet=2)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="dahu-bench-reprocess-", dir=args.dir)
    try:
        inputs = os.path.join(base, "inputs")
        write_inputs(inputs, count)
        runs = {
            f"j{workers}": run(inputs, os.path.join(base, f"out-j{workers}"), workers, count)
            for workers in (1, 2)
        }
        # plugins that release the GIL (sleeping, numpy): does -j 2 run twice as fast?
        slow = max(count // 5, 40)
        runs["sleep_5ms"] = gil_free(base, slow, "example.sleep", t=0.005)
        runs["numpy_5ms"] = numpy_work(base, slow)
        if args.original:
            # alternate: the original, ours, the original, ... in the same minutes
            ours, theirs, ours_steal, theirs_steal = [], [], [], []
            for turn in range(max(args.repeat, 1)):
                with StealMeter() as steal:
                    original = run_original(args.original, inputs, base, count)
                theirs.append(original["jobs_per_s_with_startup"])
                theirs_steal.append(steal.percent)
                if turn == 0:
                    runs["original"] = original
                output = os.path.join(base, f"out-j1-turn{turn}")
                with StealMeter() as steal:
                    ours.append(run(inputs, output, 1, count)["jobs_per_s_with_startup"])
                ours_steal.append(steal.percent)
                shutil.rmtree(output, ignore_errors=True)
            runs["j1_runs_with_startup"] = ours
            runs["original_runs_with_startup"] = theirs
            runs["j1_runs_steal_percent"] = ours_steal
            runs["original_runs_steal_percent"] = theirs_steal
            runs["j1_vs_original"] = round(statistics.median(ours) / statistics.median(theirs), 3)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    result = {
        "benchmark": "reprocess",
        "plugin": "example.square",
        "jobs": count,
        **runs,
        "bytecode_compiled": not args.no_compile,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
