"""Benchmark of the executors: prints JSON.

For each executor (thread, process, dask with a local cluster) and the same number of
workers: jobs/s for N ``example.square`` jobs, frames/s for the pyFAI stack of
``bench/pyfai.py``; and, under ``process``, the time from ``abort`` to ``aborted`` for a
plugin that stops when asked and for a hung plugin (killed after the grace period).

    python bench/executors.py [--jobs 5000] [--frames 200] [--shape 1024 1024] [--small]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import dahu.engine
from dahu.job import Job

HERE = Path(__file__).resolve().parent

HUNG = '''
import time
from dahu.factory import register
from dahu.plugin import Plugin

@register
class Hang(Plugin):
    """Ignores abort."""
    def process(self):
        while True:
            time.sleep(0.01)
'''


def load_pyfai_bench():
    spec = importlib.util.spec_from_file_location("bench_pyfai", HERE / "pyfai.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all(jobs: list[Job], timeout: float = 3600) -> None:
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout)
        job.clean(wait=False)


def square_rate(count: int) -> float:
    run_all([Job("example.square", {"x": i}) for i in range(min(200, count))])  # warm-up
    t0 = time.perf_counter()
    jobs = [Job("example.square", {"x": i}) for i in range(count)]
    run_all(jobs)
    elapsed = time.perf_counter() - t0
    bad = [j for j in jobs if j.status != "success"]
    if bad:
        raise SystemExit(f"job {bad[0].id} ended {bad[0].status}: {bad[0].error}")
    return count / elapsed


def pyfai_rate(inputs: list[dict], frames: int) -> float:
    run_all([Job("pyfai.integratemanyframes", dict(inputs[0]))])  # builds the integrators
    t0 = time.perf_counter()
    jobs = [Job("pyfai.integratemanyframes", dict(i)) for i in inputs]
    run_all(jobs)
    elapsed = time.perf_counter() - t0
    bad = [j for j in jobs if j.status != "success"]
    if bad:
        raise SystemExit(f"pyFAI job {bad[0].id} ended {bad[0].status}: {bad[0].error}")
    return frames / elapsed


def abort_latency(name: str, data: dict) -> float:
    job = Job(name, data)
    job.start()
    deadline = time.monotonic() + 60
    while job.status != "running" and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # let the plugin enter its loop
    t0 = time.perf_counter()
    job.abort()
    job.join(60)
    if job.status != "aborted":
        raise SystemExit(f"job {job.id} ended {job.status} after abort")
    return time.perf_counter() - t0


def run(args: argparse.Namespace, base: Path) -> dict:
    """The runs of every executor kind, in work directories under ``base``."""
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "benchhang.py").write_text(textwrap.dedent(HUNG))
    os.environ["DAHU_PLUGINS"] = str(plugins)
    bench_pyfai = load_pyfai_bench()
    data_dir = Path(args.data) if args.data else base / "data"
    dataset = bench_pyfai.prepare(data_dir, frames=args.frames, shape=tuple(args.shape))
    result: dict = {
        "benchmark": "executors",
        "workers": args.workers,
        "square_jobs": args.jobs,
        "frames": args.frames,
        "shape": list(args.shape),
        "executors": {},
    }
    for kind in args.kinds:
        t0 = time.perf_counter()
        options = {"abort_grace": 2.0}
        engine = dahu.engine.configure(
            workdir=str(base / kind),
            max_workers=args.workers,
            executor_kind=kind,
            executor_options=options,
        )
        entry: dict = {"startup_s": round(time.perf_counter() - t0, 3)}
        entry["square_jobs_per_s"] = round(square_rate(args.jobs), 1)
        inputs = bench_pyfai.job_inputs(dataset, args.pyfai_jobs, str(base / kind / "out"))
        entry["pyfai_frames_per_s"] = round(pyfai_rate(inputs, args.frames), 2)
        if kind == "process":
            entry["abort_cooperative_s"] = round(abort_latency("example.sleep", {"t": 600}), 3)
            entry["abort_hung_s"] = round(abort_latency("benchhang.hang", {}), 3)
            entry["abort_grace_s"] = options["abort_grace"]
        engine.executor.shutdown(wait=True, timeout=60)
        result["executors"][kind] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1024))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pyfai-jobs", type=int, default=8, help="jobs the stack is split in")
    parser.add_argument("--kinds", nargs="+", default=["thread", "process", "dask"])
    parser.add_argument("--small", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--data", default=None, help="where the frames are (re)used")
    args = parser.parse_args(argv)
    if args.small:
        args.jobs, args.frames, args.shape, args.pyfai_jobs = 200, 8, (256, 256), 2
    base = Path(tempfile.mkdtemp(prefix="dahu-bench-exec-"))
    try:
        result = run(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # its journals, files and frames
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
