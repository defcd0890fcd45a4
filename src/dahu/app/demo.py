"""``dahu-demo``: Dahu end to end, as a beamline uses it, in a few seconds.

Starts a database-less ``dahu_server`` on a free local port, generates diffraction frames
with known rings (:mod:`dahu.testdata`), submits example jobs (one of them fails on
purpose) and two pyFAI integrations through a real ``DeviceProxy``, follows them by their
``jobSuccess``/``jobFailure`` change events, prints a table of the jobs, the server's
statistics and where the outputs are, saves a screenshot of the server's web page
(``dashboard.png``, when Chromium is installed), plots the integrated curves into a PNG
next to the HDF5 output, checks that the peaks sit on the known rings, and stops the
server with SIGTERM. The exit status is 0 only when everything went as expected.

    dahu-demo [--output DIR] [--frames N] [--shape H W] [--load SECONDS]
    dahu-demo --generate-only DIR [--frames N] [--shape H W]

:class:`~dahu.app.localserver.LocalServer` (a ``dahu_server`` subprocess and a client of it) is also used by the
benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..properties import local_directory  # ~ is the home directory; "" is refused
from .demopage import keep_busy, save_screenshot
from .localserver import LocalServer, ServerFailed, free_port

__all__ = ["DemoFailed", "main", "ring_errors"]

DEVICE = "demo/dahu/1"
NPT = 500
EXPECTED_FAILURE = "expected failure: this job fails on purpose"
#: The smallest frame side the demo checks: below it, the generated rings are narrower than
#: a pixel, and no integration finds their peaks within a quarter of their width.
MIN_SIDE = 128
#: The smallest frame side ``--generate-only`` writes (:func:`dahu.testdata.make_dataset`'s).
MIN_GENERATED_SIDE = 16


class DemoFailed(Exception):
    """Something did not go as the demo expects; the message is the one-line reason."""


def ring_errors(
    radial: numpy.ndarray, curve: numpy.ndarray, rings: Sequence[float], sigma: float
) -> numpy.ndarray:
    """Distance from each ring to the peak of ``curve`` found near it (inf when none is).

    The window around a ring is 4 ``sigma`` wide on each side, or 2 bins of ``radial``
    when they are wider, but never reaches half-way to another ring (the bins of a frame
    much longer than wide span a large q range). The peak position is the centroid of
    the part of the window above half its maximum.
    """
    gap = float(numpy.diff(sorted(rings)).min()) if len(rings) > 1 else numpy.inf
    half_width = min(max(4 * sigma, 2 * bin_width(radial)), gap / 2)
    errors = []
    for ring in rings:
        keep = (numpy.abs(radial - ring) < half_width) & numpy.isfinite(curve)
        if not keep.any():
            errors.append(numpy.inf)
            continue
        x, y = radial[keep], curve[keep] - curve[keep].min()
        y[y < 0.5 * y.max()] = 0.0
        errors.append(abs(float((x * y).sum() / y.sum()) - ring) if y.sum() > 0 else numpy.inf)
    return numpy.array(errors)


def bin_width(radial: numpy.ndarray) -> float:
    """The width of the bins of a curve's radial axis (0 for fewer than two bins)."""
    return float(numpy.median(numpy.diff(radial))) if len(radial) > 1 else 0.0


@dataclass
class DemoJob:
    """A job the demo submits and the state it must end in; filled in as it runs."""

    plugin: str
    params: dict[str, Any]
    expected: str = "success"
    job_id: int = 0
    state: str = "?"
    output: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    runtime: float | None = None  # seconds the plugin ran (getJobInfo)

    @property
    def reason(self) -> str:
        """The first line of the job's error ("" if none)."""
        return self.error.partition("\n")[0]

    def result(self) -> str:
        """A short description of what the job produced, for the table."""
        out = self.output
        if self.state != "success":
            return self.reason if len(self.reason) <= 60 else self.reason[:57] + "..."
        if self.plugin == "pyfai.integratemanyframes":
            name = os.path.basename(out.get("output_file", "?"))
            return f"{out.get('frames')}/{out.get('total_frames')} frames -> {name}"
        if self.plugin == "pyfai.integrate_simple":
            return f"curve -> {os.path.basename(self.params['curve_file'])}"
        return str(out.get("result"))

    def problem(self) -> str | None:
        """Why the job did not go as expected, or None when it did."""
        if self.state != self.expected:
            reason = f": {self.reason}" if self.reason else ""
            return (
                f"job {self.job_id} ({self.plugin}) ended {self.state}, not {self.expected}{reason}"
            )
        out, x = self.output, self.params.get("x")
        wrong = {
            "example.square": lambda: x is not None and out.get("result") != x * x,
            "example.cube": lambda: x is not None and out.get("result") != x**3,
            "example.error": lambda: EXPECTED_FAILURE not in self.reason,
            "pyfai.integratemanyframes": lambda: out.get("frames") != out.get("total_frames"),
            "pyfai.integrate_simple": lambda: not os.path.isfile(self.params["curve_file"]),
        }.get(self.plugin, lambda: False)()
        return f"job {self.job_id} ({self.plugin}) gave an unexpected result" if wrong else None


def demo_jobs(data: dict[str, Any], results: str) -> list[DemoJob]:
    """The demo's jobs: examples, one failure on purpose, and two integrations."""
    jobs = [DemoJob("example.square", {"x": x}) for x in (3, 7, 12)]
    jobs.append(DemoJob("example.cube", {"x": 3}))
    jobs.append(DemoJob("example.error", {"message": EXPECTED_FAILURE}, expected="failure"))
    many = {
        "poni_file": data["poni_file"],
        "input_files": [data["hdf5_dataset"]],
        "npt": NPT,
        "monitor_values": data["monitor_values"],
        "error_model": "poisson",
        "output_file": os.path.join(results, "integrated.h5"),
    }
    jobs.append(DemoJob("pyfai.integratemanyframes", many))
    simple = {
        "poni_file": data["poni_file"],
        "image_file": data["edf_files"][0],
        "curve_file": os.path.join(results, "frame_0000.dat"),
        "npt": NPT,
        "unit": "q_nm^-1",  # plotted with the other curves (its default is 2th_deg)
    }
    jobs.append(DemoJob("pyfai.integrate_simple", simple))
    return jobs


def run_jobs(proxy: Any, jobs: list[DemoJob], timeout: float) -> None:
    """Submit ``jobs`` and follow them by their end events until each has ended."""
    import tango

    events: queue.Queue = queue.Queue()

    def on_event(event: Any) -> None:  # Tango's event thread: only enqueue
        if not event.err and event.attr_value is not None:
            events.put(int(event.attr_value.value))

    subscriptions = [
        proxy.subscribe_event(name, tango.EventType.CHANGE_EVENT, on_event)
        for name in ("jobSuccess", "jobFailure")
    ]
    try:
        squares = [job for job in jobs if job.plugin == "example.square"]
        ids = proxy.startJobs(["example.square", json.dumps([job.params for job in squares])])
        for job, job_id in zip(squares, ids, strict=True):
            job.job_id = int(job_id)
        for job in jobs:
            if not job.job_id:
                job.job_id = proxy.startJob([job.plugin, json.dumps(job.params)])
        print(f"submitted {len(jobs)} jobs; following their jobSuccess/jobFailure events")
        pending = {job.job_id: job for job in jobs}
        deadline = time.monotonic() + timeout
        while pending:
            try:
                job_id = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoFailed(
                    f"no end event for job(s) {sorted(pending)} within {timeout:g} s"
                ) from None
            job = pending.pop(job_id, None)
            if job is None:  # the current value sent on subscription, or a repeat
                continue
            job.state = proxy.getJobState(job_id)
            print(f"  job {job_id:>3} {job.plugin:<26} {job.state}")
    finally:
        for subscription in subscriptions:
            proxy.unsubscribe_event(subscription)
    for job in jobs:
        job.output = json.loads(proxy.getJobOutput(job.job_id))
        job.error = proxy.getJobError(job.job_id)
        proxy.cleanJob(job.job_id)  # its .inp/.out files are written when this returns


def read_runtimes(proxy: Any, jobs: list[DemoJob]) -> None:
    """Ask the server how long each job's plugin ran (``getJobInfo``)."""
    for job in jobs:
        job.runtime = json.loads(proxy.getJobInfo(job.job_id))["runtime"]


def load_curves(h5_path: str, curve_path: str) -> tuple[numpy.ndarray, ...]:
    """The q axis and curves of the NeXus file, and the (q, I) columns of the curve file."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        nxdata = h5["entry/integrated"]
        radial, intensity = nxdata["q_nm^-1"][()], nxdata["intensity"][()]
    return radial, intensity, numpy.loadtxt(curve_path)


def plot_curves(h5_path: str, curve_path: str, data: dict[str, Any], png_path: str) -> None:
    """Plot every integrated frame (and the integrate_simple curve) with the known rings."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    radial, intensity, simple = load_curves(h5_path, curve_path)
    figure = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    count = len(intensity)
    for index, curve in enumerate(intensity):
        label = f"frames 0-{count - 1} (integratemanyframes, / monitor)" if index == 0 else None
        axes.plot(radial, curve, color=cmap(index / max(1, count - 1)), lw=0.8, label=label)
    monitor = data["monitor_values"][0]
    axes.plot(simple[:, 0], simple[:, 1] / monitor, "k--", lw=1, label="frame 0 (integrate_simple)")
    for ring in data["ring_q_nm"]:
        axes.axvline(ring, color="tab:red", ls=":", lw=1)
    axes.set_xlabel("q (nm$^{-1}$)")
    axes.set_ylabel("intensity / monitor")
    axes.set_title(f"Dahu demo: {count} frames integrated; dotted lines: the known rings")
    axes.legend()
    figure.savefig(png_path, dpi=100)


def check_rings(h5_path: str, curve_path: str, data: dict[str, Any]) -> str:
    """Check that every curve peaks on the known rings; a one-line account of it.

    Raise :class:`DemoFailed` when a peak is further than a quarter of a ring's width away,
    or half a bin of its curve when the bins are wider (a peak one bin wide is found at the
    bin's centre).
    """
    radial, intensity, simple = load_curves(h5_path, curve_path)
    sigma, rings = data["peak_sigma_q_nm"], data["ring_q_nm"]
    curves = [(radial, curve) for curve in intensity] + [(simple[:, 0], simple[:, 1])]
    errors = numpy.array([ring_errors(x, y, rings, sigma) for x, y in curves])
    tolerances = numpy.array([max(0.25 * sigma, 0.5 * bin_width(x)) for x, _ in curves])
    ratios = errors / tolerances[:, None]
    frame, ring = numpy.unravel_index(int(numpy.argmax(ratios)), errors.shape)
    worst, tolerance = float(errors[frame, ring]), float(tolerances[frame])
    if not worst < tolerance:
        raise DemoFailed(
            f"curve {frame}: the peak of the ring at q={rings[ring]:.3f} nm^-1 is "
            f"{worst:.4f} nm^-1 away (tolerance {tolerance:.4f})"
        )
    listed = ", ".join(f"{q:.3f}" for q in rings)
    return (
        f"peaks of all {len(errors)} curves on the rings at q = {listed} nm^-1 "
        f"(furthest {worst:.4f} nm^-1 away, tolerance {tolerance:.4f} nm^-1)"
    )


def _seconds(text: str, least: float = 0.0, strict: bool = True) -> float:
    """A finite number of seconds above ``least`` (or at least it, not ``strict``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < least or (strict and value == least):
        bound = f"more than {least:g}" if strict else f"{least:g} or more"
        raise argparse.ArgumentTypeError(f"expected a number of seconds, {bound}, not {text!r}")
    return value


def _count(text: str, least: int = 1, what: str = "a number of frames") -> int:
    """An integer of at least ``least``."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, {least} or more, not {text!r}")
    return value


def _side(text: str) -> int:
    return _count(text, MIN_GENERATED_SIDE, "a number of pixels")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``dahu-demo``."""
    parser = argparse.ArgumentParser(
        prog="dahu-demo",
        description="Run a database-less Dahu server, submit example and pyFAI jobs through "
        "Tango, follow them by events, show the results and plot the integrated curves.",
    )
    parser.add_argument(  # an empty DIR ("$DIR", DIR unset) is refused, as by the other tools
        "-o",
        "--output",
        type=local_directory,
        metavar="DIR",
        help="output directory (default ./demo-output/<time>)",
    )
    parser.add_argument("-n", "--frames", type=_count, default=10, help="frames to generate (10)")
    parser.add_argument(
        "--shape",
        type=_side,
        nargs=2,
        default=(512, 512),
        metavar=("H", "W"),
        help=f"frame size in pixels (512 512): {MIN_SIDE} or more, "
        f"{MIN_GENERATED_SIDE} or more with --generate-only",
    )
    parser.add_argument(  # empty: until 2026-11-30 the whole demo ran, in ./demo-output
        "--generate-only",
        type=local_directory,
        metavar="DIR",
        help="only write the synthetic data set (frames, HDF5 stack, geometry) into DIR",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds to wait for the jobs (60)"
    )
    parser.add_argument(
        "--load",
        type=lambda text: _seconds(text, strict=False),
        default=0.0,
        metavar="SECONDS",
        help="after the demo's jobs, keep the server busy this long (about 200 jobs/s) "
        "before the screenshot of the web page, so that its plots show something (0)",
    )
    return parser


def generate(directory: str, frames: int, shape: Sequence[int]) -> dict[str, Any]:
    """Write the data set and say what was written."""
    from ..testdata import make_dataset

    try:
        data = make_dataset(directory, frames, shape, seed=0)
    except (ValueError, OSError) as err:
        raise DemoFailed(f"cannot generate the data set: {err}") from err
    rings = ", ".join(f"{q:.3f}" for q in data["ring_q_nm"])
    print(
        f"generated {frames} frames of {shape[0]}x{shape[1]} in {directory}: EDF files, "
        f"{os.path.basename(data['hdf5_file'])}, {os.path.basename(data['poni_file'])} "
        f"(rings at q = {rings} nm^-1)"
    )
    return data


def run_demo(args: argparse.Namespace) -> list[str]:
    """The demo proper; returns the problems found (none when all went as expected)."""
    from tabulate import tabulate

    from ..journal import job_file_stem

    output = os.path.abspath(
        args.output or os.path.join("demo-output", time.strftime("%Y%m%d-%H%M%S"))
    )
    data_dir, workdir = os.path.join(output, "data"), os.path.join(output, "work")
    results = os.path.join(output, "results")
    os.makedirs(results, exist_ok=True)
    print(f"dahu-demo: output directory {output}")
    data = generate(data_dir, args.frames, args.shape)
    http_port = free_port()
    server = LocalServer(
        workdir, os.path.join(output, "server.log"), extra_args=["--http", str(http_port)]
    )
    problems: list[str] = []
    started = time.perf_counter()
    proxy = server.start()
    # the first pyFAI job's startJob imports pyFAI: seconds on a busy machine
    proxy.set_timeout_millis(15_000)
    try:
        print(
            f"dahu_server up in {time.perf_counter() - started:.1f} s: {server.url} "
            f"(log {server.log_path})"
        )
        jobs = demo_jobs(data, results)
        run_jobs(proxy, jobs, args.timeout)
        read_runtimes(proxy, jobs)
        page = f"http://127.0.0.1:{http_port}/"
        print(f"web page of the server: {page}")
        last_job = max(job.job_id for job in jobs)
        if args.load > 0:
            count = keep_busy(proxy, args.load)
            print(f"kept the server busy for {args.load:g} s: {count} more jobs")
            last_job = proxy.startJob(["example.square", json.dumps({"x": 1})])
        shot = save_screenshot(page, os.path.join(output, "dashboard.png"), last_job)
        if shot:
            print(f"screenshot of the web page: {shot}")
        rows = []
        for job in jobs:
            problem = job.problem()
            problems += [problem] if problem else []
            check = "ok" if job.expected == "success" else f"ok ({job.expected} expected)"
            check = "UNEXPECTED" if problem else check
            runtime = 1000 * job.runtime if job.runtime is not None else None
            rows.append([job.job_id, job.plugin, job.state, runtime, job.result(), check])
        headers = ["job", "plugin", "state", "runtime (ms)", "result", "check"]
        print()
        print(tabulate(rows, headers=headers, floatfmt=".1f", missingval="-"))
        print("(runtime: how long the plugin ran, from getJobInfo)")
        print("\nStatistics (getStatistics):")
        print(proxy.getStatistics())
    finally:
        status = server.stop()
    print(f"\ndahu_server stopped with SIGTERM: exit status {status}")
    if status != 0:
        problems.append(f"dahu_server exited with status {status} (see {server.log_path})")

    many = next(job for job in jobs if job.plugin == "pyfai.integratemanyframes")
    simple = next(job for job in jobs if job.plugin == "pyfai.integrate_simple")
    h5_path, curve_path = many.output.get("output_file", ""), simple.params["curve_file"]
    print("\nOutputs:")
    print(f"  work directory (journal):   {workdir}")
    for job in jobs:
        stem = job_file_stem(workdir, job.job_id, job.plugin)
        for path in (f"{stem}.inp", f"{stem}.out"):
            problems += [] if os.path.isfile(path) else [f"job {job.job_id}: {path} is missing"]
        print(f"  job {job.job_id:>3} input/output:     {stem}.inp/.out")
    print(f"  integrated frames (NeXus):  {h5_path}")
    print(f"  curve of frame 0:           {curve_path}")
    if os.path.isfile(h5_path) and os.path.isfile(curve_path):
        png_path = os.path.splitext(h5_path)[0] + ".png"
        plot_curves(h5_path, curve_path, data, png_path)
        print(f"  plot:                       {png_path}")
        try:
            print("\n" + check_rings(h5_path, curve_path, data))
        except (DemoFailed, ServerFailed) as err:
            problems.append(str(err))
    else:
        problems.append("no integrated curves to plot")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dahu-demo``: 0 when everything went as expected, else 1 (2: bad
    usage, 130: interrupted)."""
    import tango

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.generate_only and min(args.shape) < MIN_SIDE:
        parser.error(
            f"argument --shape: frames of {args.shape[0]}x{args.shape[1]} are too small to "
            f"check the rings (narrower than a pixel): give {MIN_SIDE} pixels or more a side"
        )
    try:
        if args.generate_only:
            generate(os.path.abspath(args.generate_only), args.frames, args.shape)
            return 0
        problems = run_demo(args)
    except (DemoFailed, ServerFailed, OSError) as err:
        problems = [str(err)]
    except tango.DevFailed as err:  # a refused call: Tango's own one-line description
        problems = [f"Tango: {err.args[0].desc.strip().partition(chr(10))[0]}"]
    except KeyboardInterrupt:  # Ctrl-C: the server, if started, was stopped on the way out
        sys.stderr.write("dahu-demo: interrupted\n")
        return 130
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        sys.stderr.write(f"dahu-demo: failed: {problems[0]}{more}\n")
        return 1
    print("\ndahu-demo: everything went as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
