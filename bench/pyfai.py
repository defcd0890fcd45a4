"""Benchmark of azimuthal integration: a bare pyFAI loop against Dahu jobs through the device.

Integrates the frames of one generated HDF5 stack (``stack.h5::/entry/data``, made once by
:mod:`dahu.testdata` and reused) with the plugins' default settings (1000 bins in q_nm^-1,
method full/csr/cython, solid-angle correction), and prints JSON:

* ``bare_fps[W]``: frames per second of W threads, each integrating its share of the frames
  with its own ``AzimuthalIntegrator``, reading them from the stack (engines built first);
* ``dahu_fps[W]``: the same frames as W ``pyfai.integratemanyframes`` jobs submitted with
  ``startJobs`` to a database-less ``dahu_server --max-workers W`` and followed with
  ``waitJob`` until the last one ends (integrators warmed up by earlier jobs, each job
  writing its NeXus file);
* ``ratio[W]`` = dahu / bare (target: ``target_ratio``), and ``speedup_2_over_1`` of
  2 workers over 1 for both.

Each figure is the best of ``--repeat`` runs; the runs of (a) and (b) alternate, and
``ratio_paired_median`` is the median over the rounds of the ratio of their (b) and (a): on a
shared, noisy machine, both should agree before the ratio is trusted.

pyFAI's engines use OpenMP: both measurements run with the same ``OMP_NUM_THREADS``
(``--omp-threads``, default 1: one core per worker), reported as ``omp_num_threads``.

    python bench/pyfai.py [--frames 200] [--shape 1024 1024] [--workers 1 2] [--small]

``prepare`` and ``job_inputs`` are importable by other benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

DATASET_JSON = "dataset.json"
DEVICE = "bench/pyfai/1"
TARGET_RATIO = 0.95
FINAL = ("success", "failure", "aborted")
# The client's timeout for each command: well above the server's waitJob limit (2 s), which
# a loaded machine's reply can pass (2.17 s was seen against Tango's default of 3 s).
CLIENT_TIMEOUT_MS = 30_000
BIN = os.path.dirname(sys.executable)
_HERE = os.path.dirname(os.path.abspath(__file__))


def _import_tango() -> Any:
    """PyTango, not ``bench/tango.py``, whose directory may be on the import path."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    try:
        import tango
    finally:
        sys.path[:] = saved
    return tango


def prepare(
    directory: str | os.PathLike, frames: int = 200, shape: Sequence[int] = (1024, 1024)
) -> dict[str, Any]:
    """Generate the data set in ``directory`` once: a geometry and ONE HDF5 stack of frames.

    A data set of the same size already there (described by ``dataset.json``) is reused.
    Returns the description of :func:`dahu.testdata.make_dataset` (``poni_file``,
    ``hdf5_file``, ``hdf5_dataset``, ``n_frames``, ``shape``, ``ring_q_nm``, ...).
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, DATASET_JSON)
    try:
        with open(path, encoding="utf-8") as stream:
            known = json.load(stream)
        if (
            known["n_frames"] == frames
            and list(known["shape"]) == [int(n) for n in shape]
            and os.path.isfile(known["hdf5_file"])
            and os.path.isfile(known["poni_file"])
        ):
            return known
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from dahu.testdata import make_dataset

    description = make_dataset(directory, frames, shape, seed=0, edf=False, hdf5=True)
    description["shape"] = list(description["shape"])
    with open(path + ".tmp", "w", encoding="utf-8") as stream:
        json.dump(description, stream, indent=1)
    os.replace(path + ".tmp", path)  # written last: a half-made data set is never reused
    return description


def shares(total: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` bounds of ``parts`` contiguous, nearly equal, non-empty shares."""
    parts = max(1, min(parts, total))
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def job_inputs(dataset: dict[str, Any], jobs: int, out_dir: str | os.PathLike) -> list[dict]:
    """Split the frames of ``dataset`` into ``jobs`` ``pyfai.integratemanyframes`` inputs.

    Each input integrates a contiguous part of the stack (``stack.h5::/entry/data[a:b]``)
    with the plugin's default settings into its own file ``out_dir/part_NNN.h5``.
    """
    out_dir = os.fspath(out_dir)
    return [
        {
            "poni_file": dataset["poni_file"],
            "input_files": [f"{dataset['hdf5_dataset']}[{start}:{stop}]"],
            "output_file": os.path.join(out_dir, f"part_{index:03d}.h5"),
        }
        for index, (start, stop) in enumerate(shares(dataset["n_frames"], jobs))
    ]


# ---- (a) the bare pyFAI loop ----------------------------------------------------------------
def bare_loop(dataset: dict[str, Any], workers: int) -> float:
    """Seconds for ``workers`` threads to integrate every frame, once their engines are built."""
    import h5py
    import numpy
    import pyFAI

    from dahu.integration import DEFAULT_METHOD, DEFAULT_NPT, DEFAULT_UNIT

    stack, _, h5path = dataset["hdf5_dataset"].partition("::")
    parts = shares(dataset["n_frames"], workers)
    # the clock starts as the threads are released, by the last to arrive: the main thread,
    # starting it once it ran again, missed the work done meanwhile on a loaded machine
    # (the bare rate overstated, up to a dahu/bare ratio of 0.000)
    released: list[float] = []
    ready = threading.Barrier(len(parts) + 1, action=lambda: released.append(time.perf_counter()))
    errors: list[BaseException] = []
    options = {"unit": DEFAULT_UNIT, "method": DEFAULT_METHOD, "correctSolidAngle": True}

    def work(start: int, stop: int) -> None:
        try:
            ai = pyFAI.load(dataset["poni_file"])
            ai.integrate1d(numpy.zeros(dataset["shape"], numpy.float32), DEFAULT_NPT, **options)
        except BaseException as error:
            errors.append(error)
            ready.abort()
            raise
        ready.wait()
        try:
            with h5py.File(stack, "r") as h5:
                frames = h5[h5path]
                for index in range(start, stop):
                    ai.integrate1d(frames[index], DEFAULT_NPT, **options)
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=work, args=part) for part in parts]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - (released or [time.perf_counter()])[0]
    if errors:
        raise SystemExit(f"bare pyFAI loop failed: {errors[0]!r}")
    return elapsed


# ---- (b) Dahu jobs through the device ---------------------------------------------------------
class Server:
    """A database-less ``dahu_server --max-workers W`` subprocess and a client of it."""

    def __init__(self, workdir: str, workers: int) -> None:
        _import_tango()  # PyTango in sys.modules before dahu.app.demo imports "tango"
        from dahu.app.localserver import LocalServer

        log = os.path.join(workdir, "server.log")
        self.server = LocalServer(workdir, log, max_workers=workers, device=DEVICE)
        self.proxy = self.server.start(timeout=60)
        self.proxy.set_timeout_millis(CLIENT_TIMEOUT_MS)

    def run(self, inputs: list[dict]) -> tuple[float, list[dict]]:
        """Submit ``inputs`` in one ``startJobs`` call; seconds until the last job ended,
        and the outputs."""
        started = time.perf_counter()
        ids = self.proxy.startJobs(["pyfai.integratemanyframes", json.dumps(inputs)])
        for job_id in ids:
            state = self.proxy.waitJob(job_id)
            while state not in FINAL:
                state = self.proxy.waitJob(job_id)
            if state != "success":
                error = self.proxy.getJobError(job_id).partition("\n")[0]
                raise SystemExit(f"job {job_id} ended {state}: {error}")
        elapsed = time.perf_counter() - started
        return elapsed, [json.loads(self.proxy.getJobOutput(job_id)) for job_id in ids]

    def warm_up(self, dataset: dict[str, Any], workers: int, out_dir: str) -> None:
        """One single-frame job per slot, at once: each builds an integrator and leaves it in
        the cache, as on a server that has been running for a while.  Again until every
        job of a round found one (at most 5 rounds): on a loaded machine the jobs of the
        first round may run one after the other, the second reusing the first's, and
        the cache then holds fewer integrators than slots."""
        warm = job_inputs(dataset, workers, out_dir)
        for item, (start, _) in zip(warm, shares(dataset["n_frames"], workers), strict=True):
            item["input_files"] = [f"{dataset['hdf5_dataset']}[{start}]"]
        for round_ in range(5):
            _, outputs = self.run(warm)
            if round_ and all(output["integrator"]["cached"] for output in outputs):
                return

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it to exit."""
        self.server.stop()


def summarize(outputs: list[dict]) -> dict[str, Any]:
    """What the jobs of one run report: how many, integrators reused, where time went."""
    timings = [output["timings"] for output in outputs]
    return {
        "jobs": len(outputs),
        "integrators_reused": sum(bool(o["integrator"]["cached"]) for o in outputs),
        "job_seconds": {
            key: round(sum(t.get(key, 0.0) for t in timings), 3)
            for key in ("setup", "read", "integration", "write", "process")
        },
    }


def measure(
    dataset: dict[str, Any], workers: int, workdir: str, repeat: int, jobs_per_worker: int
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Seconds of each run of (a) the bare loop and (b) the Dahu jobs with ``workers``
    workers, and what the jobs of the fastest (b) run report.

    The runs alternate, a then b, so that a busy moment of the machine affects both.
    """
    server = Server(workdir, workers)
    try:
        server.warm_up(dataset, workers, os.path.join(workdir, "warmup"))
        bare, dahu, details = [], [], {}
        for run in range(repeat):
            bare.append(bare_loop(dataset, workers))
            inputs = job_inputs(dataset, workers * jobs_per_worker, os.path.join(workdir, str(run)))
            elapsed, outputs = server.run(inputs)
            done = sum(output["frames"] for output in outputs)
            if done != dataset["n_frames"]:
                raise SystemExit(f"the jobs integrated {done} of {dataset['n_frames']} frames")
            if not dahu or elapsed < min(dahu):
                details = summarize(outputs)
            dahu.append(elapsed)
        return bare, dahu, details
    finally:
        server.stop()


def significant(value: float) -> float:
    """``value`` to three significant digits (a ratio of 0.0004 is not shown as 0)."""
    return float(f"{value:.3g}")


# ---- main -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames to integrate (200)")
    parser.add_argument(
        "--shape", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"), help="(1024 1024)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker counts (1 2)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; best kept (5)")
    parser.add_argument("--jobs-per-worker", type=int, default=1, help="Dahu jobs per worker (1)")
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of both measurements (default: $OMP_NUM_THREADS, else 1)",
    )
    parser.add_argument("--data", help="data set directory, reused if it matches (default: temp)")
    parser.add_argument("--workdir", help="server work directory (default: temp, removed)")
    parser.add_argument(
        "--small", action="store_true", help="tiny run: 8 frames of 256x256, 1 repeat"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON figures."""
    args = build_parser().parse_args(argv)
    if args.small:
        args.frames, args.shape, args.repeat = 8, (256, 256), 1
    omp = args.omp_threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    # Before pyFAI (hence OpenMP) is loaded here, and inherited by the server.
    os.environ["OMP_NUM_THREADS"] = str(omp)
    import pyFAI

    from dahu.integration import DEFAULT_METHOD, DEFAULT_NPT, DEFAULT_UNIT

    scratch = tempfile.mkdtemp(prefix="dahu-bench-pyfai-")
    try:
        data_dir = args.data or os.path.join(scratch, "data")
        dataset = prepare(data_dir, args.frames, args.shape)
        workdir_root = args.workdir or os.path.join(scratch, "work")
        bare, dahu, paired, details = {}, {}, {}, {}
        for workers in args.workers:
            key = str(workers)
            workdir = os.path.join(workdir_root, f"workers{workers}")
            os.makedirs(workdir, exist_ok=True)
            seconds_a, seconds_b, details[key] = measure(
                dataset, workers, workdir, max(1, args.repeat), args.jobs_per_worker
            )
            bare[key], dahu[key] = args.frames / min(seconds_a), args.frames / min(seconds_b)
            paired[key] = statistics.median(
                a / b for a, b in zip(seconds_a, seconds_b, strict=True)
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def speedup(rates: dict[str, float]) -> float | None:
        return round(rates["2"] / rates["1"], 3) if "1" in rates and "2" in rates else None

    result = {
        "benchmark": "pyfai",
        "frames": args.frames,
        "shape": list(args.shape),
        "npt": DEFAULT_NPT,
        "unit": DEFAULT_UNIT,
        "method": list(DEFAULT_METHOD),
        "omp_num_threads": omp,
        "workers": list(args.workers),
        "repeat": args.repeat,
        "bare_fps": {k: round(v, 2) for k, v in bare.items()},
        "dahu_fps": {k: round(v, 2) for k, v in dahu.items()},
        "ratio": {k: significant(dahu[k] / bare[k]) for k in bare},
        "ratio_paired_median": {k: significant(v) for k, v in paired.items()},
        "target_ratio": TARGET_RATIO,
        "speedup_2_over_1": {"bare": speedup(bare), "dahu": speedup(dahu)},
        "dahu_jobs": details,
        "cpus": os.cpu_count(),
        "pyfai": pyFAI.version,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
