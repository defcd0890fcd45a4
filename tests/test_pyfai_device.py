"""The pyFAI plugins as a beamline client runs them: through a DahuDS device and DeviceProxy.

One device (in its own process) serves the module; the frames come from
:mod:`dahu.testdata`, so the integrated peaks must sit on known rings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy
import pytest
from tango.test_context import DeviceTestContext

from dahu.server import DahuDS
from dahu.testdata import make_dataset

from .conftest import finish
from .test_pyfai_plugins import assert_rings_at, read_output

SHAPE = (256, 256)
N_FRAMES = 4
NPT = 300
MANY = "pyfai.integratemanyframes"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """4 frames of 256x256 as EDF files and as an HDF5 stack, with a mask and a geometry."""
    return make_dataset(tmp_path_factory.mktemp("data"), N_FRAMES, SHAPE, seed=2, mask=True)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """A client of the module's device (2 job slots, waitJob bounded to 1 s)."""
    props = {
        "workdir": str(tmp_path_factory.mktemp("work")),
        "max_workers": 2,
        "wait_timeout": 1.0,
    }
    with DeviceTestContext(DahuDS, process=True, properties=props, timeout=60) as device:
        yield device


def many_input(data: dict, tmp_path: Path, **params) -> dict:
    params.setdefault("poni_file", data["poni_file"])
    params.setdefault("input_files", [data["hdf5_dataset"]])
    params.setdefault("npt", NPT)
    params.setdefault("output_file", str(tmp_path / "out.h5"))
    return params


def test_integratemanyframes_puts_every_frame_peaks_on_the_rings(proxy, data, tmp_path):
    job_id = proxy.startJob([MANY, json.dumps(many_input(data, tmp_path))])
    assert finish(proxy, job_id) == "success", proxy.getJobError(job_id)
    output = json.loads(proxy.getJobOutput(job_id))
    assert output["frames"] == output["total_frames"] == N_FRAMES
    assert output["output_file"] == str(tmp_path / "out.h5") and not output["aborted"]
    radial, intensity, _ = read_output(output)
    assert intensity.shape == (N_FRAMES, NPT)
    for curve in intensity:
        assert_rings_at(radial, curve, data)


def test_concurrent_integrations_agree(proxy, data, tmp_path):
    inputs = [many_input(data, tmp_path, output_file=str(tmp_path / f"{i}.h5")) for i in range(3)]
    ids = proxy.startJobs([MANY, json.dumps(inputs)])
    assert [finish(proxy, job_id) for job_id in ids] == ["success"] * 3
    curves = [read_output(json.loads(proxy.getJobOutput(job_id)))[1] for job_id in ids]
    for other in curves[1:]:
        numpy.testing.assert_array_equal(other, curves[0])


def test_integrate_simple_writes_a_curve_on_the_rings(proxy, data, tmp_path):
    curve_file = tmp_path / "curve.dat"
    params = {
        "poni_file": data["poni_file"],
        "image_file": data["edf_files"][1],
        "curve_file": str(curve_file),
    }  # the original's three arguments: 1000 points in 2theta (degrees)
    job_id = proxy.startJob(["pyfai.integrate_simple", json.dumps(params)])
    assert finish(proxy, job_id) == "success", proxy.getJobError(job_id)
    assert json.loads(proxy.getJobOutput(job_id))["result"] == {"out_file": str(curve_file)}
    curve = numpy.loadtxt(curve_file)
    assert curve.shape == (1000, 2)
    assert_rings_at(curve[:, 0], curve[:, 1], data, unit="2th_deg")


def test_abort_mid_stack_keeps_the_frames_done(proxy, data, tmp_path):
    # The same 4-frame stack listed 500 times: 2000 frames, seconds of work, no disk space.
    sources = [data["hdf5_dataset"]] * 500
    out = tmp_path / "aborted.h5"
    params = many_input(data, tmp_path, input_files=sources, output_file=str(out))
    job_id = proxy.startJob([MANY, json.dumps(params)])
    # The output file is created (as aborted.h5.part, renamed at the end) when the first
    # frame is about to be read: the job is then past its setup and in the middle of the stack.
    deadline = time.monotonic() + 30
    while not (tmp_path / "aborted.h5.part").exists():
        assert proxy.getJobState(job_id) in ("starting", "running")
        assert time.monotonic() < deadline, "the job never started integrating"
        time.sleep(0.01)
    assert proxy.abort(job_id)
    assert finish(proxy, job_id) == "aborted"
    output = json.loads(proxy.getJobOutput(job_id))
    assert output["aborted"] and output["total_frames"] == 2000
    assert output["frames"] < 2000
    radial, intensity, _ = read_output(output)
    assert intensity.shape == (output["frames"], NPT)  # what was done is written, only that
    if output["frames"]:
        assert_rings_at(radial, intensity[-1], data)
    assert "aborted" in proxy.getJobError(job_id).splitlines()[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict:
    """Inputs that look usable but are not."""
    root = tmp_path_factory.mktemp("bad")
    junk = root / "junk.edf"
    junk.write_text("not an image\n")
    small = make_dataset(root / "small", 1, (128, 128), hdf5=False, mask=True)
    return {"root": root, "junk": str(junk), "small_mask": small["mask_file"]}


def bad_inputs(data: dict, bad: dict) -> dict[str, tuple[dict, str]]:
    """Per case: the input changes and what the first line of the error must name."""
    return {
        "missing poni": ({"poni_file": str(bad["root"] / "nowhere.poni")}, "nowhere.poni"),
        "unreadable image": ({"input_files": [bad["junk"]]}, "junk.edf"),
        "bad dataset": (
            {"input_files": [f"{data['hdf5_file']}::/entry/nothing"]},
            "HDF5 dataset '/entry/nothing' not found",
        ),
        "mask shape": ({"mask": bad["small_mask"]}, "has shape (128, 128)"),
        "unknown unit": ({"unit": "q_furlong^-1"}, "unknown unit 'q_furlong^-1'"),
        "unknown method": ({"method": ["full", "csr", "abacus"]}, "abacus"),
    }


def test_each_bad_input_fails_the_job_with_a_one_line_reason(proxy, data, bad, tmp_path):
    cases = bad_inputs(data, bad)
    inputs = [
        many_input(data, tmp_path, output_file=str(tmp_path / f"{i}.h5"), **changes)
        for i, (changes, _) in enumerate(cases.values())
    ]
    ids = proxy.startJobs([MANY, json.dumps(inputs)])
    assert len(ids) == len(cases)
    for job_id, (case, (_, expected)) in zip(ids, cases.items(), strict=True):
        assert finish(proxy, job_id) == "failure", case
        first_line = proxy.getJobError(job_id).splitlines()[0]
        assert expected in first_line, (case, first_line)
        assert len(first_line) < 300 and "Traceback" not in first_line, (case, first_line)
        assert proxy.getJobState(job_id) == "failure"
    # The device is still fine: a good job after the bad ones succeeds.
    good = proxy.startJob([MANY, json.dumps(many_input(data, tmp_path))])
    assert finish(proxy, good) == "success"
