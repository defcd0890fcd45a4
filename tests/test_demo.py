"""``dahu-demo``, run as a user runs it: a subprocess, a real server, real files."""

from __future__ import annotations

import struct
import subprocess

import h5py

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
    result = run_demo("--output", str(tmp_path), "--frames", "0")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("dahu-demo: failed: cannot generate the data set")


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
