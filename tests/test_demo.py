"""``dahu-demo``, run as a user runs it: a subprocess, a real server, real files."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys

import h5py
import numpy
import pytest

from dahu.app.demo import DemoFailed, check_rings, generate
from dahu.web.browser import find_chromium

from .conftest import VENV_BIN, child_env

DEMO = str(VENV_BIN / "dahu-demo")


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DEMO, *args], capture_output=True, text=True, timeout=timeout, env=child_env()
    )


def png_size(path) -> tuple[int, int]:
    """Width and height of a PNG file, checking its signature and header chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head[:8]
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_demo_runs_everything_and_exits_0(tmp_path):
    result = run_demo("--output", str(tmp_path), "--frames", "3", "--shape", "256", "256")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # the table: every job with its state, the failure shown as the expected one
    rows = {line.split()[1]: line for line in out.splitlines() if line[:5].strip().isdigit()}
    for plugin in ("example.square", "example.cube", "pyfai.integrate_simple"):
        assert " success " in rows[plugin], rows
    assert " success " in rows["pyfai.integratemanyframes"] and "3/3 frames" in out
    assert " failure " in rows["example.error"] and "ok (failure expected)" in out
    assert "UNEXPECTED" not in out
    assert "Statistics" in out and "pyfai.integratemanyframes" in out
    assert "exit status 0" in out and "everything went as expected" in out
    # the outputs it says it wrote
    results = tmp_path / "results"
    width, height = png_size(results / "integrated.png")
    assert width > 100 and height > 100
    with h5py.File(results / "integrated.h5", "r") as h5:
        assert h5["entry/integrated/intensity"].shape[0] == 3
    assert (results / "frame_0000.dat").is_file()
    assert len(list((tmp_path / "work").glob("*/*.inp"))) == 7
    assert len(list((tmp_path / "work").glob("*/*.out"))) == 7
    assert "peaks of all 4 curves on the rings" in out
    # the screenshot of the server's web page, as a browser shows it
    assert "web page of the server: http://127.0.0.1:" in out
    if find_chromium() is not None:
        assert f"screenshot of the web page: {tmp_path / 'dashboard.png'}" in out
        width, height = png_size(tmp_path / "dashboard.png")
        assert width >= 1000 and height >= 600
    else:
        assert "no screenshot of the web page: chromium is not installed" in out


def test_generate_only_writes_the_data_set(tmp_path):
    target = tmp_path / "data"
    result = run_demo("--generate-only", str(target), "--frames", "2", "--shape", "128", "96")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in target.iterdir()) == [
        "frame_0000.edf",
        "frame_0001.edf",
        "geometry.poni",
        "stack.h5",
    ]
    with h5py.File(target / "stack.h5", "r") as h5:
        assert h5["entry/data"].shape == (2, 128, 96)
    assert "generated 2 frames of 128x96" in result.stdout


def test_a_problem_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_demo("--output", str(tmp_path / "file" / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("dahu-demo: failed: [Errno 20] Not a directory")


def test_bad_frames_and_shapes_are_refused_before_anything_is_made(tmp_path):
    # bugs: -n 0 made the output directory, then failed with status 1; --shape 64 64 ran
    # everything, then failed its own peak check (rings narrower than a pixel)
    for args, message in (
        (["-n", "0"], "argument -n/--frames: expected a number of frames, 1 or more, not '0'"),
        (
            ["--shape", "64", "64"],
            "argument --shape: frames of 64x64 are too small to check "
            "the rings (narrower than a pixel): give 128 pixels or more a side",
        ),
        (
            ["--generate-only", str(tmp_path / "out"), "--shape", "8", "32"],
            "argument --shape: expected a number of pixels, 16 or more, not '8'",
        ),
        (  # bug: --generate-only "$DIR", DIR unset, ran the whole demo in ./demo-output
            ["--generate-only", ""],
            "argument --generate-only: an empty name (an unset variable?): give a directory",
        ),
    ):
        result = run_demo("--output", str(tmp_path / "out"), *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines()[-1] == f"dahu-demo: error: {message}"
        assert not (tmp_path / "out").exists()


def write_curves(tmp_path, radial, curves):
    """An integratemanyframes file of ``curves`` and an integrate_simple file of the first."""
    with h5py.File(tmp_path / "many.h5", "w") as h5:
        h5["entry/integrated/q_nm^-1"] = radial
        h5["entry/integrated/intensity"] = numpy.array(curves)
    numpy.savetxt(tmp_path / "simple.dat", numpy.column_stack([radial, curves[0]]))
    return str(tmp_path / "many.h5"), str(tmp_path / "simple.dat")


def peaks(radial, centres, sigma):
    return 10 + sum(100 * numpy.exp(-0.5 * ((radial - c) / sigma) ** 2) for c in centres)


@pytest.mark.parametrize(
    "gap, sigma, step, shift, right",
    [
        (1.0, 0.01, 0.001, 0.0, True),  # bins narrower than the rings: a quarter of their
        (1.0, 0.01, 0.001, 0.004, False),  # width
        (1.0, 0.01, 0.04, 0.0, True),  # bins wider than the rings: half a bin (was an
        (1.0, 0.01, 0.04, 0.05, False),  # empty window); a wrong integration is caught
        # bins so wide (8192 x 128 frames) that 4 of them reach the next ring
        (0.6, 0.04, 0.155, 0.0, True),
        (0.6, 0.04, 0.155, 0.2, False),
    ],
)
def test_the_peak_check_allows_for_the_bins_and_catches_a_wrong_curve(
    tmp_path, gap, sigma, step, shift, right
):
    rings = [1.0, 1.0 + gap]
    data = {"ring_q_nm": rings, "peak_sigma_q_nm": sigma}
    radial = numpy.arange(0.5, 2.5, step) + step / 3  # the rings off the bins' centres
    fine = numpy.arange(0.5, 2.5, 0.0001)
    exact = peaks(fine, [ring + shift for ring in rings], sigma)
    # each bin holds the mean of the profile over its width, as an integration gives
    curve = numpy.interp(
        radial, fine, numpy.convolve(exact, numpy.ones(int(step / 0.0001)), "same")
    )
    paths = write_curves(tmp_path, radial, [curve, curve])
    if right:
        assert check_rings(*paths, data).startswith("peaks of all 3 curves on the rings")
    else:
        with pytest.raises(DemoFailed, match="the peak of the ring at q="):
            check_rings(*paths, data)


def test_bad_seconds_are_refused_before_anything_runs(tmp_path):
    # bug: --timeout -1 started the server and ran every job, then failed with
    # "no end event for job(s) [6, 7] within -1 s"
    for option, value, bound in (
        ("--timeout", "-1", "more than 0"),
        ("--load", "nan", "0 or more"),
    ):
        result = run_demo("--output", str(tmp_path / "out"), option, value)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1] == (
            f"dahu-demo: error: argument {option}: expected a number of seconds, {bound}, "
            f"not '{value}'"
        )
        assert not (tmp_path / "out").exists()


def test_ctrl_c_is_one_line_and_status_130(tmp_path):
    # bug: Ctrl-C printed a KeyboardInterrupt traceback
    proc = subprocess.Popen(
        [DEMO, "--output", str(tmp_path), "--frames", "1", "--shape", "128", "128"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env(), "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout.readline().startswith("dahu-demo: output directory")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (130, "dahu-demo: interrupted\n")


def test_a_full_disk_is_one_line(tmp_path, caplog):
    # bug: on a full disk, pyFAI's own "IOError: while writing to file `.../geometry.poni`"
    # log line came before the demo's one-line failure (pyFAI did not write the geometry,
    # said so, and went on); here in the test process: the demo's start takes seconds
    import resource

    import dahu.testdata  # noqa: F401 - imported before the limit: a .pyc cut short at
    # the limit would break later imports

    caplog.clear()  # silx's warning as pyFAI is imported: not a line of the demo's
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))  # less than the geometry file
    try:
        with pytest.raises(DemoFailed) as failed:
            generate(str(tmp_path / "data"), 1, (128, 128))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(failed.value) == "cannot generate the data set: [Errno 27] File too large"
    assert [record.getMessage() for record in caplog.records] == []  # no line of pyFAI's


def test_a_disk_too_full_for_the_data_set_is_found_before_writing(tmp_path, monkeypatch):
    # bug: when the disk filled up as the HDF5 stack was written, h5py raised a
    # RuntimeError (a traceback of many lines, not the demo's one line), and the process
    # then crashed (SIGSEGV) as HDF5 freed the file it had failed to close
    import os

    import dahu.testdata  # noqa: F401 - imported before os.statvfs is replaced

    full = os.statvfs_result((4096, 4096, 1000, 10, 10, 100, 10, 10, 0, 255))  # 40 kB free
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(DemoFailed) as failed:
        generate(str(tmp_path / "data"), 2, (128, 128))
    assert str(failed.value) == (
        "cannot generate the data set: [Errno 28] its disk is full: it needs 0.5 MB, "
        f"0.0 MB are free: '{tmp_path / 'data'}'"
    )
    assert list((tmp_path / "data").iterdir()) == []  # nothing written


FILLING_DISK = """
import gc, resource, sys
from dahu.app.demo import DemoFailed, generate
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:  # 2 EDF files of 66 kB, then an HDF5 stack of 141 kB: it fails
    generate(sys.argv[1], 2, (128, 128))
except DemoFailed as error:
    print(error)
gc.collect()  # frees what h5py left: the crash came here
"""


def test_a_disk_that_fills_up_as_the_stack_is_written_is_one_line(tmp_path):
    # bug: h5py raised a RuntimeError (a traceback of many lines, not the demo's one line)
    # and the process then crashed (SIGSEGV) as HDF5 freed the file it failed to close;
    # files may not grow past 100 kB here, as on a disk that fills up meanwhile
    result = subprocess.run(
        [sys.executable, "-c", FILLING_DISK, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(PYTHONDONTWRITEBYTECODE="1"),  # no .pyc cut short at the limit
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == (
        "cannot generate the data set: [Errno 27] File too large: "
        f"'{tmp_path / 'data' / 'stack.h5'}'\n"
    )
