"""The pyFAI plugins integrate synthetic frames whose rings are known in advance.

Every frame comes from :mod:`dahu.testdata`: Gaussian rings at known q on a background, with
Poisson noise, frame ``i`` scaled by ``monitor_values[i]``. A plugin result is right when its
peaks sit where the rings were put; the same checks fail with a wrong geometry, unit or mask.
"""

import datetime
import errno
import functools
import gc
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import fabio.cbfimage
import fabio.edfimage
import fabio.tifimage
import h5py
import numpy
import pytest

import dahu.engine
from dahu import integration, nexus
from dahu.cache import DataCache
from dahu.factory import plugin_factory
from dahu.job import Job
from dahu.journal import job_file_stem
from dahu.states import State
from dahu.testdata import make_dataset, q_to_2theta

SHAPE = (256, 256)
N_FRAMES = 4
NPT = 300
MANY = "pyfai.integratemanyframes"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One data set for the whole module: 4 frames of 256x256 as EDF and as an HDF5 stack."""
    return make_dataset(tmp_path_factory.mktemp("data"), N_FRAMES, SHAPE, seed=1, mask=True)


def run(name, **params):
    """Run a plugin the way a job does: setup, process, teardown (always)."""
    plugin = plugin_factory(name)
    try:
        plugin.setup(params)
        plugin.process()
    finally:
        plugin.teardown()
    return plugin.output


def run_many(data, tmp_path, **params):
    params.setdefault("poni_file", data["poni_file"])
    params.setdefault("input_files", data["edf_files"])
    params.setdefault("npt", NPT)
    params.setdefault("output_file", str(tmp_path / "out.h5"))
    return run(MANY, **params)


def read_output(output):
    with h5py.File(output["output_file"], "r") as h5:
        nxdata = h5["entry/integrated"]
        radial = nxdata[output["unit"]][()]
        errors = nxdata["errors"][()] if "errors" in nxdata else None
        return radial, nxdata["intensity"][()], errors


def peak_position(x, y, expected, half_width):
    """Centroid of the part above half maximum of the peak searched near ``expected``."""
    keep = (x > expected - half_width) & (x < expected + half_width) & numpy.isfinite(y)
    xs, ys = x[keep], y[keep] - y[keep].min()
    ys[ys < 0.5 * ys.max()] = 0.0
    return float((xs * ys).sum() / ys.sum())


def rings_in(data, unit="q_nm^-1", shift_q=0.0):
    """Ring positions of ``data`` in ``unit`` (q or 2theta), each moved by ``shift_q`` in q."""
    rings_q = numpy.asarray(data["ring_q_nm"]) + shift_q
    if unit == "q_nm^-1":
        return rings_q
    assert unit == "2th_deg"
    return numpy.array([q_to_2theta(q, data["wavelength"]) for q in rings_q])


def find_rings(radial, curve, data, unit="q_nm^-1"):
    """Where the curve peaks near each ring, searching within 4 sigma of the ring."""
    rings = rings_in(data, unit)
    half_widths = rings_in(data, unit, 4 * data["peak_sigma_q_nm"]) - rings
    return numpy.array(
        [peak_position(radial, curve, r, w) for r, w in zip(rings, half_widths, strict=True)]
    )


def assert_rings_at(radial, curve, data, unit="q_nm^-1", ignore=()):
    """Every ring (but those indexed in ``ignore``) is found within a quarter sigma."""
    rings = rings_in(data, unit)
    tolerance = rings_in(data, unit, 0.25 * data["peak_sigma_q_nm"]) - rings
    error = numpy.abs(find_rings(radial, curve, data, unit) - rings)
    checked = [i for i in range(len(rings)) if i not in ignore]
    assert numpy.all(error[checked] < tolerance[checked]), (error, tolerance)


def test_peaks_at_known_q_for_every_frame(data, tmp_path):
    output = run_many(data, tmp_path)
    assert output["frames"] == N_FRAMES and not output["aborted"]
    assert output["unit"] == "q_nm^-1"
    assert set(output["timings"]) >= {"setup", "integration", "write"}
    radial, intensity, errors = read_output(output)
    assert intensity.shape == (N_FRAMES, NPT) and errors is None
    for curve in intensity:
        assert_rings_at(radial, curve, data)


def test_a_misspelt_key_is_named_in_a_warning(data, tmp_path, caplog):
    """The job runs with the defaults (as the original would) but says which key it ignored;
    a key unlike any the plugin reads (a client's own metadata) gets no warning."""
    output = run(MANY, poni_file=data["poni_file"], input_files=data["edf_files"][0],
                 output_file=str(tmp_path / "out.h5"), npt_rad=NPT, unt="2th_deg", NPT_AZIM=8,
                 sample="LaB6", job_timeout=60, dummy=-1)  # fmt: skip
    assert output["npt"] == 1000 and output["unit"] == "q_nm^-1" and output["npt_azim"] is None
    warnings = [line for line in output["logging"] if line.startswith("Warning")]
    assert warnings == [
        f"Warning in IntegrateManyFrames: unknown key {key!r} (did you mean {known!r}?): it is "
        "ignored"
        for key, known in [
            ("npt_rad", "npt"),
            ("unt", "unit"),
            ("NPT_AZIM", "npt_azim"),
            ("dummy", "mask"),
        ]
    ]
    assert "unknown key 'unt' (did you mean 'unit'?)" in caplog.text


def test_peaks_at_known_2theta_from_hdf5_stack(data, tmp_path):
    output = run_many(data, tmp_path, input_files=[data["hdf5_dataset"]], unit="2th_deg")
    assert output["frames"] == N_FRAMES and output["unit"] == "2th_deg"
    radial, intensity, _ = read_output(output)
    assert numpy.allclose(rings_in(data, "2th_deg"), data["ring_2th_deg"])
    for curve in intensity:
        assert_rings_at(radial, curve, data, "2th_deg")
    # The same curve read as if it were in q does not match: the check is unit-sensitive.
    with pytest.raises(AssertionError):
        assert_rings_at(radial, intensity[0], data, "q_nm^-1")


def test_wrong_distance_moves_the_peaks(data, tmp_path):
    text = open(data["poni_file"]).read()
    distance = data["distance"]
    wrong = tmp_path / "wrong.poni"
    wrong.write_text(text.replace(f"Distance: {distance}", f"Distance: {distance * 1.05}"))
    assert wrong.read_text() != text
    output = run_many(data, tmp_path, poni_file=str(wrong), input_files=data["edf_files"][:1])
    radial, intensity, _ = read_output(output)
    shift = find_rings(radial, intensity[0], data) - rings_in(data)
    # A longer distance means smaller angles for the same pixels: every ring moves down in q,
    # by about 5 % of its position, far beyond the tolerance of assert_rings_at.
    assert numpy.all(shift < -0.03 * rings_in(data)), shift
    with pytest.raises(AssertionError):
        assert_rings_at(radial, intensity[0], data)


def test_mask_hides_the_ring_under_it(data, tmp_path):
    ai = integration.load_geometry(data["poni_file"])
    q = ai.qArray(SHAPE)
    ring, sigma = data["ring_q_nm"][1], data["peak_sigma_q_nm"]
    mask = (numpy.abs(q - ring) < 3 * sigma).astype(numpy.int8)
    mask_file = str(tmp_path / "ring_mask.edf")
    fabio.edfimage.EdfImage(data=mask).write(mask_file)
    output = run_many(data, tmp_path, mask=mask_file, input_files=data["edf_files"][:1])
    radial, intensity, _ = read_output(output)
    curve = intensity[0]
    hidden = numpy.abs(radial - ring) < 2 * sigma
    assert numpy.all(curve[hidden] == 0)  # pyFAI's "empty" value for bins without pixels
    assert_rings_at(radial, curve, data, ignore=[1])


def test_a_mask_dark_or_flat_may_be_an_hdf5_dataset(data, tmp_path):
    """As frames are named in input_files: ``file.h5::/dataset`` (fabio reads it too); it
    was refused as a file that does not exist."""
    mask = fabio.open(data["mask_file"]).data
    dark = numpy.full(SHAPE, 3, numpy.int32)
    images = tmp_path / "images.h5"
    with h5py.File(images, "w") as h5:
        h5["entry/mask"], h5["entry/dark"] = mask, dark[numpy.newaxis]  # a stack of one
    frames = {"input_files": data["edf_files"][:1], "do_SA": False}
    _, expected, _ = read_output(run_many(data, tmp_path / "edf", mask=data["mask_file"], **frames))
    output = run_many(
        data, tmp_path, **frames, mask=f"{images}::/entry/mask", dark=f"{images}::/entry/dark"
    )
    _, with_dark, _ = read_output(output)
    _, unmasked, _ = read_output(run_many(data, tmp_path / "no", **frames))
    assert not numpy.allclose(unmasked, expected)  # the mask changes the curve
    seen = expected[0] != 0  # bins with pixels
    assert numpy.array_equal(with_dark[0] != 0, seen)
    assert numpy.allclose(with_dark[0][seen] + 3, expected[0][seen], atol=1e-3)
    with pytest.raises(RuntimeError, match=f"output_file '{images}' is also an input .mask."):
        run_many(data, tmp_path, **frames, mask=f"{images}::/entry/mask", output_file=str(images))
    with pytest.raises(RuntimeError, match="cannot read mask file .*: HDF5: name a dataset"):
        run_many(data, tmp_path, **frames, mask=str(images))


def test_output_is_valid_nexus(data, tmp_path):
    output = run_many(data, tmp_path, error_model="poisson")
    with h5py.File(output["output_file"], "r") as h5:
        assert h5.attrs["NX_class"] == "NXroot"
        entry = h5[h5.attrs["default"]]
        assert entry.attrs["NX_class"] == "NXentry"
        nxdata = entry[entry.attrs["default"]]
        assert nxdata.attrs["NX_class"] == "NXdata"
        signal = nxdata[nxdata.attrs["signal"]]
        axes = list(nxdata.attrs["axes"])
        assert len(axes) == signal.ndim
        for dim, name in enumerate(axes):
            assert nxdata[name].shape == (signal.shape[dim],)
            assert nxdata.attrs[f"{name}_indices"] == dim
        assert axes[-1] == "q_nm^-1" and nxdata["q_nm^-1"].attrs["units"] == "nm^-1"
        assert nxdata["errors"].shape == signal.shape
        assert entry["process"].attrs["NX_class"] == "NXprocess"
        assert "geometry" in entry["process/configuration/data"][()].decode()


def test_errors_only_with_an_error_model(data, tmp_path):
    _, intensity, errors = read_output(run_many(data, tmp_path, error_model="poisson"))
    assert errors is not None and errors.shape == intensity.shape
    populated = intensity > 0
    assert numpy.all(errors[populated] > 0)
    # Poisson counting: the relative error is far below 1 with hundreds of counts per bin.
    assert numpy.median(errors[populated] / intensity[populated]) < 0.1
    _, _, errors = read_output(run_many(data, tmp_path, error_model=None))
    assert errors is None


def test_monitor_normalisation(data, tmp_path):
    monitor = numpy.asarray(data["monitor_values"])
    _, raw, _ = read_output(run_many(data, tmp_path))
    _, normalised, _ = read_output(
        run_many(data, tmp_path, monitor_values=list(monitor), output_file=str(tmp_path / "n.h5"))
    )
    raw_level, norm_level = raw.mean(axis=1), normalised.mean(axis=1)
    assert numpy.allclose(raw_level / raw_level[0], monitor / monitor[0], rtol=0.01)
    assert numpy.allclose(norm_level / norm_level[0], 1.0, rtol=0.01)
    assert numpy.allclose(norm_level, raw_level / monitor, rtol=1e-5)


def test_2d_integration_shape_and_rings(data, tmp_path):
    output = run_many(data, tmp_path, npt_azim=36, error_model="poisson")
    assert output["npt_azim"] == 36
    with h5py.File(output["output_file"], "r") as h5:
        nxdata = h5["entry/integrated"]
        assert nxdata["intensity"].shape == (N_FRAMES, 36, NPT)
        assert nxdata["errors"].shape == (N_FRAMES, 36, NPT)
        assert list(nxdata.attrs["axes"]) == ["frame", "chi_deg", "q_nm^-1"]
        assert nxdata["chi_deg"].shape == (36,)
        radial, cake = nxdata["q_nm^-1"][()], nxdata["intensity"][0]
    assert_rings_at(radial, cake.mean(axis=0), data)


def test_dark_is_subtracted(data, tmp_path):
    dark_file = str(tmp_path / "dark.edf")
    fabio.edfimage.EdfImage(data=numpy.full(SHAPE, 5.0, numpy.float32)).write(dark_file)
    flat_file = str(tmp_path / "flat.edf")
    fabio.edfimage.EdfImage(data=numpy.ones(SHAPE, numpy.float32)).write(flat_file)
    common = {"input_files": data["edf_files"][:1], "do_SA": False}
    _, plain, _ = read_output(run_many(data, tmp_path, **common))
    _, corrected, _ = read_output(
        run_many(
            data,
            tmp_path,
            dark=dark_file,
            flat=flat_file,
            output_file=str(tmp_path / "d.h5"),
            **common,
        )
    )
    populated = plain[0] > 0
    assert numpy.allclose(plain[0][populated] - corrected[0][populated], 5.0, atol=1e-3)


def test_hdf5_frame_selection(data, tmp_path):
    stack = data["hdf5_dataset"]
    _, everything, _ = read_output(run_many(data, tmp_path, input_files=[stack]))
    output = run_many(
        data,
        tmp_path,
        input_files=[f"{stack}[1:3]", f"{stack}[0]", f"{stack}[-1]", f"{stack}[::2]"],
        output_file=str(tmp_path / "selected.h5"),
    )
    assert output["frames"] == output["total_frames"] == 6
    _, selected, _ = read_output(output)
    numpy.testing.assert_array_equal(selected, everything[[1, 2, 0, 3, 0, 2]])


def test_more_frames_than_a_write_block(data, tmp_path):
    stack = data["hdf5_dataset"]
    _, once, _ = read_output(run_many(data, tmp_path, input_files=[stack]))
    repeats = integration.WRITE_BLOCK_FRAMES // N_FRAMES + 2  # a block and a part
    output = run_many(
        data, tmp_path, input_files=[stack] * repeats, output_file=str(tmp_path / "long.h5")
    )
    assert output["frames"] == repeats * N_FRAMES > integration.WRITE_BLOCK_FRAMES
    _, intensity, _ = read_output(output)
    numpy.testing.assert_array_equal(intensity, numpy.concatenate([once] * repeats))


def test_glob_input(data, tmp_path):
    pattern = data["edf_files"][0].replace("frame_0000", "frame_*")
    assert run_many(data, tmp_path, input_files=pattern)["frames"] == N_FRAMES


def test_abort_from_another_thread_stops_within_one_frame(data, tmp_path):
    plugin = plugin_factory(MANY)
    first_done, aborted = threading.Event(), threading.Event()

    def after_frame(index, total):
        if index == 0:
            first_done.set()
            assert aborted.wait(10)

    plugin.frame_callback = after_frame
    params = {"poni_file": data["poni_file"], "input_files": [data["hdf5_dataset"]], "npt": NPT}
    plugin.setup(dict(params, output_file=str(tmp_path / "abort.h5")))
    worker = threading.Thread(target=plugin.process)
    worker.start()
    assert first_done.wait(10)
    plugin.abort()
    aborted.set()
    worker.join(10)
    assert not worker.is_alive()
    plugin.teardown()
    assert plugin.is_aborted
    output = plugin.output
    assert output["aborted"] and output["frames"] == 1 and output["total_frames"] == N_FRAMES
    radial, intensity, _ = read_output(output)
    assert intensity.shape == (1, NPT)  # what was done is written, and only that
    assert_rings_at(radial, intensity[0], data)


def test_integrate_simple_writes_a_curve(data, tmp_path):
    curve_file = str(tmp_path / "curve.dat")
    output = run(
        "pyfai.integrate_simple",
        poni_file=data["poni_file"],
        image_file=data["edf_files"][0],
        curve_file=curve_file,
        npt=NPT,
        unit="q_nm^-1",
    )
    assert output["result"] == {"out_file": curve_file}
    curve = numpy.loadtxt(curve_file)
    assert curve.shape == (NPT, 2)
    assert_rings_at(curve[:, 0], curve[:, 1], data)


def test_integrate_simple_replaces_its_curve_only_once_written(data, tmp_path, monkeypatch):
    """A job killed while pyFAI writes the curve leaves the earlier curve whole, not half of
    one; a second writer of the same curve is refused, not interleaved with the first."""
    curve = tmp_path / "curve.dat"
    curve.write_text("an earlier curve\n")
    seen = []  # what curve.dat holds while pyFAI writes: what a kill then would leave
    integrate1d = integration.AzimuthalIntegrator.integrate1d

    @functools.wraps(integrate1d)
    def watched(ai, *args, **kwargs):
        result = integrate1d(ai, *args, **kwargs)
        if kwargs.get("filename"):
            seen.append((curve.read_text(), sorted(os.listdir(tmp_path))))
        return result

    monkeypatch.setattr(integration.AzimuthalIntegrator, "integrate1d", watched)
    params = {"poni_file": data["poni_file"], "image_file": data["edf_files"][0], "npt": NPT}
    run("pyfai.integrate_simple", curve_file=str(curve), **params)
    assert seen == [("an earlier curve\n", ["curve.dat", "curve.dat.lock", "curve.dat.part"])]
    text = curve.read_text()
    assert f"# --> {curve}\n" in text and numpy.loadtxt(curve).shape == (NPT, 2)
    assert os.listdir(tmp_path) == ["curve.dat"]
    lock = nexus.claim(str(curve), "job 99")
    try:
        with pytest.raises(RuntimeError, match=r"^curve_file '.*curve.dat' is being written by "
                           r"job 99 \(pid \d+ on "):  # fmt: skip
            run("pyfai.integrate_simple", curve_file=str(curve), **params)
    finally:
        nexus.release(str(curve), lock)
    assert curve.read_text() == text


def test_an_output_that_is_not_a_regular_file_is_never_replaced(data, tmp_path):
    """Run as root, renaming NAME.h5.part over an output_file /dev/null made /dev/null a
    regular file for the whole machine. A device or a pipe is refused as output_file (HDF5
    cannot be written into one), and written into as a curve_file (as pyFAI writes it:
    /dev/null throws the curve away)."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reason = f"cannot write output file '{pipe}': '{pipe}' is not a regular file: it is not"
    with pytest.raises(RuntimeError, match=f"{reason} replaced$"):
        run_many(data, tmp_path, output_file=str(pipe))
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    read = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_text()), daemon=True)
    reader.start()
    run("pyfai.integrate_simple", poni_file=data["poni_file"], image_file=data["edf_files"][0],
        curve_file=str(pipe), npt=NPT)  # fmt: skip
    reader.join(30)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and os.listdir(tmp_path) == ["pipe"]
    assert read and f"# --> {pipe}\n" in read[0]


def test_integrate_simple_with_three_arguments_is_in_2theta(data, tmp_path):
    """As in the original: poni, image and curve file give 1000 points in 2th_deg."""
    curve_file = str(tmp_path / "curve.dat")
    run(
        "pyfai.integrate_simple",
        poni_file=data["poni_file"],
        image_file=data["edf_files"][0],
        curve_file=curve_file,
    )
    curve = numpy.loadtxt(curve_file)
    assert curve.shape == (1000, 2)
    assert "2th_deg" in open(curve_file).read()
    assert_rings_at(curve[:, 0], curve[:, 1], data, unit="2th_deg")


def test_integrate_simple_with_three_arguments_gives_the_original_curve(data, tmp_path):
    """bug: pixel splitting "full" by default, where the original called integrate1d without
    a method (pyFAI's default): the intensities differed from the original's curves."""
    import fabio
    import pyFAI

    mine, theirs = str(tmp_path / "mine.dat"), str(tmp_path / "theirs.dat")
    run(
        "pyfai.integrate_simple",
        poni_file=data["poni_file"],
        image_file=data["edf_files"][0],
        curve_file=mine,
    )
    ai = pyFAI.load(data["poni_file"])
    ai.integrate1d(fabio.open(data["edf_files"][0]).data, 1000, filename=theirs, unit="2th_deg")
    numpy.testing.assert_allclose(numpy.loadtxt(mine), numpy.loadtxt(theirs), rtol=1e-5)


def test_cache_reuses_the_integrator_of_the_same_geometry(data, tmp_path):
    DataCache().clear()
    first = run_many(data, tmp_path, npt=257)
    second = run_many(data, tmp_path, npt=257)
    assert not first["integrator"]["cached"] and second["integrator"]["cached"]
    assert first["integrator"]["key"] == second["integrator"]["key"]
    other = run_many(data, tmp_path, npt=258)
    assert (
        not other["integrator"]["cached"]
        and other["integrator"]["key"] != first["integrator"]["key"]
    )

    module = integration
    unit, method = module.parse_unit("q_nm^-1"), module.parse_method(module.DEFAULT_METHOD, 1)

    def acquire():
        ai = module.load_geometry(data["poni_file"])  # a new object each time
        return module.acquire_integrator(ai, SHAPE, 257, unit, method)

    first, reused = acquire()
    assert reused
    module.release_integrator(first)
    again, reused = acquire()
    assert reused and again is first
    # While borrowed, it is not lent again: a concurrent job gets an integrator of its own.
    other, reused = acquire()
    assert not reused and other is not first and other.key == first.key
    module.release_integrator(other)
    module.release_integrator(again)


def test_concurrent_jobs_share_the_integrator_and_agree(data, tmp_path):
    reference = read_output(run_many(data, tmp_path, input_files=[data["hdf5_dataset"]]))[1]
    outputs = {}

    def job(index):
        outputs[index] = run_many(
            data,
            tmp_path,
            input_files=[data["hdf5_dataset"]],
            output_file=str(tmp_path / f"c{index}.h5"),
        )

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outputs) == 2
    for output in outputs.values():
        numpy.testing.assert_array_equal(read_output(output)[1], reference)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, data):
    """Files that look like inputs but are not usable ones."""
    root = tmp_path_factory.mktemp("bad")
    junk = root / "junk.edf"
    junk.write_text("not an image\n")
    garbage_poni = root / "garbage.poni"
    garbage_poni.write_text("this: is not\na geometry\n")
    small = make_dataset(root / "small", 1, (128, 128), hdf5=False, mask=True)
    odd = root / "odd.h5"
    with h5py.File(odd, "w") as h5:
        h5["empty"] = numpy.zeros((0,) + SHAPE, numpy.int32)
        h5["complex"] = numpy.zeros((2,) + SHAPE, complex)
        h5["records"] = numpy.zeros((2,) + SHAPE, [("a", "i4"), ("b", "f4")])
    raw = open(data["edf_files"][0], "rb").read()
    (root / "half.edf").write_bytes(raw[: len(raw) // 2])  # an image still being written
    no_wavelength = root / "no_wavelength.poni"
    lines = open(data["poni_file"]).read().splitlines(keepends=True)
    no_wavelength.write_text("".join(x for x in lines if not x.startswith("Wavelength")))
    paths = {"junk": str(junk), "garbage_poni": str(garbage_poni), "odd": str(odd)}
    paths["no_wavelength"] = str(no_wavelength)
    text = open(data["poni_file"]).read()
    for name, old, new in [
        ("nan_distance", "Distance: 0.1", "Distance: nan"),  # a failed fit
        ("zero_pixel", '"pixel1": 0.0001', '"pixel1": 0'),  # was a TypeError
        ("negative_wavelength", "Wavelength: 1e-10", "Wavelength: -1e-10"),
        ("infinite_rot", "Rot1: 0.004", "Rot1: inf"),
    ]:
        assert old in text
        (root / f"{name}.poni").write_text(text.replace(old, new))
        paths[name] = str(root / f"{name}.poni")
    paths["half"] = str(root / "half.edf")
    paths["full_mask"] = str(root / "full_mask.edf")
    fabio.edfimage.EdfImage(data=numpy.ones(SHAPE, numpy.int8)).write(paths["full_mask"])
    paths["zero_flat"] = str(root / "zero_flat.edf")
    fabio.edfimage.EdfImage(data=numpy.zeros(SHAPE, numpy.float32)).write(paths["zero_flat"])
    paths["nan_dark"] = str(root / "nan_dark.edf")
    nan = numpy.full(SHAPE, numpy.nan, numpy.float32)
    fabio.edfimage.EdfImage(data=nan).write(paths["nan_dark"])
    frame = fabio.open(data["edf_files"][0]).data
    for kind, image in [("cbf", fabio.cbfimage.CbfImage), ("tif", fabio.tifimage.TifImage)]:
        image(data=frame).write(str(root / f"whole.{kind}"))
        raw = (root / f"whole.{kind}").read_bytes()
        (root / f"half.{kind}").write_bytes(raw[: len(raw) // 2])  # a Pilatus still writing
        paths[f"half_{kind}"] = str(root / f"half.{kind}")
    return dict(paths, small=small)


BAD_INPUTS = {
    "missing poni": ({"poni_file": "{root}/nowhere.poni"}, "nowhere.poni"),
    "no poni": ({"poni_file": None}, "poni_file is required: the pyFAI geometry (.poni) file"),
    "output_file ending with a slash": (
        {"output_file": "{root}/results/"},
        "output_file '{root}/results/' ends with '/': name a file, or use output_dir",
    ),
    "garbage poni": ({"poni_file": "{garbage_poni}"}, "garbage.poni"),
    "poni without wavelength, in q": (
        {"poni_file": "{no_wavelength}"},
        "cannot integrate with poni file '{no_wavelength}': ",  # then pyFAI's words
    ),
    "missing image": ({"input_files": ["{root}/nothing.edf"]}, "nothing.edf"),
    "unreadable image": ({"input_files": ["{junk}"]}, "junk.edf"),
    "empty glob": ({"input_files": "{root}/none_*.edf"}, "none_*.edf"),
    "missing hdf5 dataset": ({"input_files": ["{stack}::/entry/nothing"]}, "/entry/nothing"),
    "bad frame selection": ({"input_files": ["{stack}::/entry/data[a:b]"]}, "[a:b]"),
    "frame outside the stack": ({"input_files": ["{stack}::/entry/data[9]"]}, "[9]"),
    "empty frame selection": ({"input_files": ["{stack}::/entry/data[3:1]"]}, "[3:1]"),
    "missing hdf5 file": ({"input_files": ["{root}/no.h5::/entry/data"]}, "no.h5"),
    "frame shape vs detector": ({"input_files": ["{small_frame}"]}, "frame_0000.edf"),
    "mask shape": ({"mask": "{small_mask}"}, "mask.edf"),
    "unknown unit": ({"unit": "q_furlong^-1"}, "q_furlong^-1"),
    "poni of a failed fit": (
        {"poni_file": "{nan_distance}"},
        "poni file '{nan_distance}' has Distance nan: expected a positive number",
    ),
    "poni of pixels of 0 m": ({"poni_file": "{zero_pixel}"}, "has PixelSize1 None: expected a"),
    "poni of a negative wavelength": ({"poni_file": "{negative_wavelength}"}, "Wavelength -1e-10"),
    "poni of an infinite angle": ({"poni_file": "{infinite_rot}"}, "Rot1 inf: expected a finite"),
    "unknown method": ({"method": ["full", "csr", "abacus"]}, "abacus"),
    "unknown method name": ({"method": "teleport"}, "teleport"),
    "monitor count": ({"monitor_values": [1.0, 2.0]}, "monitor_values"),
    "npt": ({"npt": 0}, "npt"),
    "error model": ({"error_model": "guess"}, "guess"),
    "error model the method cannot compute": (
        {"method": ["no", "histogram", "python"], "error_model": "azimuthal"},
        "method (no, histogram, python) cannot compute error_model 'azimuthal'",
    ),
    "unwritable output": ({"output_file": "{junk}/out.h5"}, "junk.edf/out.h5"),
    "npt too large": ({"npt": 10**12}, "npt must be at most 100000, got 1000000000000"),
    "npt_azim too large": ({"npt_azim": 10**5}, "npt_azim must be at most 10000"),
    "too many 2D bins": ({"npt": 10**4, "npt_azim": 1000}, "npt * npt_azim must be at most"),
    "poni is a directory": ({"poni_file": "{root}"}, "' is a directory"),
    "poni is not a regular file": ({"poni_file": "/dev/null"}, "is not a regular file"),
    "mask is a directory": ({"mask": "{root}"}, "' is a directory"),
    "image is a directory": ({"input_files": ["{root}"]}, "' is a directory"),
    "output_dir is a file": (
        {"output_file": None, "output_dir": "{junk}"},
        "output_dir '{junk}' is not a directory",
    ),
    "monitor string": ({"monitor_values": "abc"}, "monitor_values must be a list of numbers"),
    "monitor word": ({"monitor_values": [1, "abc", 1, 1]}, "monitor_values[1] must be a positive"),
    "monitor zero in a long list": (
        {"monitor_values": [1.0] * 10**5 + [0.0]},
        "monitor_values[100000] must be a positive number, got 0.0",
    ),
    "polarization as a switch": ({"polarization_factor": True}, "polarization_factor must be"),
    "mask of every pixel": ({"mask": "{full_mask}"}, "mask file '{full_mask}' masks every pixel"),
    "flat of zeros": ({"flat": "{zero_flat}"}, "flat file '{zero_flat}' has no positive value"),
    "flat of NaN": ({"flat": "{nan_dark}"}, "flat file '{nan_dark}' has no positive value"),
    "dark of NaN": ({"dark": "{nan_dark}"}, "dark file '{nan_dark}' has no finite value"),
    "do_SA as a word": ({"do_SA": "false"}, "do_SA must be true or false, got 'false'"),
    "image still being written": (
        {"input_files": ["{half}"]},
        "cannot read image file '{half}': its data is shorter than its header says",
    ),
    "dark still being written": (
        {"dark": "{half}"},
        "cannot read dark file '{half}': its data is shorter than its header says",
    ),
    "cbf still being written": (
        {"input_files": ["{half_cbf}"]},
        "cannot read a frame of '{half_cbf}': AssertionError (a damaged or partly written",
    ),
    "tiff still being written": (
        {"input_files": ["{half_tif}"]},
        "cannot read a frame of '{half_tif}': no image data in it (still being written?)",
    ),
    "tiff dark still being written": (
        {"dark": "{half_tif}"},
        "cannot read dark file '{half_tif}': no image data in it",
    ),
    "complex hdf5 stack": (
        {"input_files": ["{odd}::/complex"]},
        "HDF5 dataset '{odd}::/complex' holds complex128: expected numbers",
    ),
    "hdf5 stack of records": ({"input_files": ["{odd}::/records"]}, "expected numbers"),
    "empty hdf5 stack": (
        {"input_files": ["{odd}::/empty"]},
        "input '{odd}::/empty' holds no frame",
    ),
    "hdf5 group for a dataset": (  # a NeXus NXdata group: its dataset is inside
        {"input_files": ["{stack}::/entry"]},
        "HDF5 dataset '/entry' is a group, not a dataset, in '{stack}'",
    ),
    "hdf5 file without its dataset": (
        {"input_files": ["{odd}"]},
        "cannot read image file '{odd}': HDF5: name a dataset, file.h5::/entry/data",
    ),
}


#: Bad inputs found only when their frame is read, after the output file is created.
FOUND_WHILE_READING = {"cbf still being written", "tiff still being written"}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gives_one_line_error_naming_it(case, data, bad_files, tmp_path):
    changes, expected = BAD_INPUTS[case]
    names = {
        "root": str(tmp_path),
        "junk": bad_files["junk"],
        "garbage_poni": bad_files["garbage_poni"],
        **{
            name: bad_files[name]
            for name in ("nan_distance", "zero_pixel", "infinite_rot", "negative_wavelength")
        },
        "no_wavelength": bad_files["no_wavelength"],
        "stack": data["hdf5_file"],
        "small_frame": bad_files["small"]["edf_files"][0],
        "small_mask": bad_files["small"]["mask_file"],
        "odd": bad_files["odd"],
        "half": bad_files["half"],
        "full_mask": bad_files["full_mask"],
        "zero_flat": bad_files["zero_flat"],
        "nan_dark": bad_files["nan_dark"],
        "half_cbf": bad_files["half_cbf"],
        "half_tif": bad_files["half_tif"],
    }

    def fill(value):
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value.format(**names) if isinstance(value, str) else value

    params = {key: fill(value) for key, value in changes.items()}
    with pytest.raises(RuntimeError) as info:
        run_many(data, tmp_path, **params)
    message = str(info.value)
    assert "\n" not in message and fill(expected) in message, message
    assert len(message) < 500, message
    # refused in setup, before anything is written, or while reading: no out.h5 either way
    assert not (tmp_path / "out.h5").exists()
    assert (tmp_path / "out.h5.part").exists() == (case in FOUND_WHILE_READING)


@pytest.mark.parametrize(
    "key", ["poni_file", "input_files", "mask", "dark", "flat", "output_file", "output_dir"]
)
def test_a_number_as_a_file_name_is_refused_and_no_descriptor_is_touched(data, tmp_path, key):
    """open(fd) would read and close the server's descriptor fd (its journal, its stdout)."""
    fd = os.open(data["poni_file"], os.O_RDONLY)
    try:
        with pytest.raises(RuntimeError) as info:
            run_many(data, tmp_path, **{key: fd})
        message = str(info.value)
        assert "\n" not in message and f"{key} must be a path" in message, message
        assert "got int" in message
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
    with pytest.raises(RuntimeError, match="input_files must be a path .* got list"):
        run_many(data, tmp_path, input_files=[data["edf_files"][0], 3])


@pytest.mark.parametrize("key", ["poni_file", "image_file", "curve_file"])
def test_integrate_simple_refuses_a_number_as_a_file_name(data, tmp_path, key):
    fd = os.open(data["poni_file"], os.O_RDONLY)
    params = {
        "poni_file": data["poni_file"],
        "image_file": data["edf_files"][0],
        "curve_file": str(tmp_path / "c.dat"),
        key: fd,
    }
    try:
        with pytest.raises(RuntimeError, match=f"{key} must be a path .* got int"):
            run("pyfai.integrate_simple", **params)
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


def test_relative_output_paths_are_reported_absolute(data, tmp_path, monkeypatch):
    """A relative output_file or output_dir lands in the current directory (the server's),
    and the output says where: an absolute path."""
    monkeypatch.chdir(tmp_path)
    output = run_many(data, tmp_path, output_file="scan1.h5", input_files=data["edf_files"][:1])
    assert output["output_file"] == str(tmp_path / "scan1.h5")
    assert read_output(output)[1].shape == (1, NPT)
    output = run_many(
        data, tmp_path, output_file=None, output_dir="results", input_files=data["edf_files"][:1]
    )
    assert os.path.isabs(output["output_file"])
    assert os.path.dirname(output["output_file"]) == str(tmp_path / "results")
    assert read_output(output)[1].shape == (1, NPT)


def test_integrate_simple_names_a_poni_without_wavelength_for_q(data, bad_files, tmp_path):
    params = {"poni_file": bad_files["no_wavelength"], "image_file": data["edf_files"][0]}
    with pytest.raises(RuntimeError, match=r"no_wavelength\.poni': .*wavelength"):
        run("pyfai.integrate_simple", **params, curve_file=str(tmp_path / "c.dat"), unit="q_A^-1")
    output = run("pyfai.integrate_simple", **params, curve_file=str(tmp_path / "c.dat"))
    assert output["result"]["out_file"] == str(tmp_path / "c.dat")  # 2theta needs none


def test_integrate_simple_reports_a_missing_poni(data, tmp_path):
    with pytest.raises(RuntimeError, match="nowhere.poni"):
        run(
            "pyfai.integrate_simple",
            poni_file=str(tmp_path / "nowhere.poni"),
            image_file=data["edf_files"][0],
            curve_file=str(tmp_path / "c.dat"),
        )


def test_as_a_job(engine, data, tmp_path):
    """Through the job machinery: the default output name carries the job id."""
    params = {"poni_file": data["poni_file"], "input_files": data["edf_files"], "npt": NPT}
    job = Job(MANY, dict(params, output_dir=str(tmp_path)))
    job.start()
    job.join(30)
    assert job.status == Job.STATE_SUCCESS, Job.getErrorFromID(job.id)
    output = job.output_data
    assert output["frames"] == N_FRAMES
    assert output["output_file"] == str(tmp_path / f"integrate_{job.id}.h5")
    radial, intensity, _ = read_output(output)
    assert_rings_at(radial, intensity[-1], data)

    failed = Job(MANY, dict(params, unit="q_furlong^-1"))
    failed.start()
    failed.join(30)
    assert failed.status == Job.STATE_FAILURE
    assert "unknown unit 'q_furlong^-1'" in Job.getErrorFromID(failed.id).splitlines()[0]


def test_as_a_job_writes_next_to_its_files_by_default(engine, data):
    params = {"poni_file": data["poni_file"], "input_files": data["edf_files"][:1], "npt": NPT}
    job = Job(MANY, params)
    job.start()
    job.join(30)
    assert job.status == Job.STATE_SUCCESS, Job.getErrorFromID(job.id)
    expected = job_file_stem(engine.workdir, job.id, MANY) + ".h5"
    assert job.output_data["output_file"] == expected
    assert read_output(job.output_data)[1].shape == (1, NPT)


def test_an_aborted_job_says_when_in_its_output(engine, data, tmp_path):
    """As every aborted Dahu job (and in the original): "aborted" is the time of the abort,
    an ISO 8601 string; the file holds the frames done, fewer than the total."""
    out = tmp_path / "aborted.h5"
    params = {"poni_file": data["poni_file"], "input_files": [data["hdf5_dataset"]] * 500}
    job = Job(MANY, dict(params, npt=NPT, output_file=str(out)))
    job.start()
    wait_for_file(f"{out}.part", job)
    job.abort()
    job.join(30)
    assert job.status == State.ABORTED, Job.getErrorFromID(job.id)
    output = job.output_data
    assert isinstance(output["aborted"], str)
    datetime.datetime.fromisoformat(output["aborted"])
    assert output["frames"] < output["total_frames"] == 500 * N_FRAMES
    assert read_output(output)[1].shape == (output["frames"], NPT)


@pytest.mark.parametrize("which", ["stack", "frame", "poni", "mask"])
def test_an_output_file_that_is_an_input_is_refused_and_left_intact(data, tmp_path, which):
    """Naming the raw data (or the geometry, the mask) as output_file must not destroy it."""
    stack, frame = tmp_path / "stack.h5", tmp_path / "frame.edf"
    poni, mask = tmp_path / "geometry.poni", tmp_path / "mask.edf"
    for source, copy in [(data["hdf5_file"], stack), (data["edf_files"][0], frame),
                         (data["poni_file"], poni), (data["mask_file"], mask)]:  # fmt: skip
        copy.write_bytes(open(source, "rb").read())
    before = {path: path.read_bytes() for path in (stack, frame, poni, mask)}
    inputs = [f"{stack}::/entry/data", str(frame)]
    target = {"stack": stack, "frame": frame, "poni": poni, "mask": mask}[which]
    with pytest.raises(RuntimeError) as info:
        run_many(data, tmp_path, poni_file=str(poni), input_files=inputs, mask=str(mask),
                 output_file=str(target))  # fmt: skip
    message = str(info.value)
    assert "\n" not in message and f"'{target}' is also an input" in message, message
    assert {path: path.read_bytes() for path in before} == before
    with pytest.raises(RuntimeError, match="is also an input .image_file."):
        run("pyfai.integrate_simple", poni_file=str(poni), image_file=str(frame),
            curve_file=str(frame))  # fmt: skip
    assert frame.read_bytes() == before[frame]


def test_an_output_file_that_is_a_directory_is_named_so(data, tmp_path):
    with pytest.raises(RuntimeError, match=f"output_file '{tmp_path}' is a directory$"):
        run_many(data, tmp_path, output_file=str(tmp_path))


@pytest.mark.parametrize(
    "curve, reason",
    [
        ("{tmp}", "curve_file '{tmp}' is a directory"),
        ("{tmp}/new/", "curve_file '{tmp}/new/' ends with '/': name a file"),
        ("{poni}/c.dat", "cannot write curve_file '{poni}/c.dat': '{poni}' is a file, not a dir"),
        ("{tmp}/c.nxs", "cannot write curve_file '{tmp}/c.nxs': pyFAI writes no NeXus curve"),
    ],
)
def test_integrate_simple_names_a_curve_file_it_cannot_write(data, tmp_path, curve, reason):
    """Was IsADirectoryError, or FileExistsError naming the poni file."""
    names = {"tmp": tmp_path, "poni": data["poni_file"]}
    params = {"poni_file": data["poni_file"], "image_file": data["edf_files"][0]}
    with pytest.raises(RuntimeError) as info:
        run("pyfai.integrate_simple", **params, curve_file=curve.format(**names))
    message = str(info.value)
    assert "\n" not in message and reason.format(**names) in message, message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["csr", "lut", "full", "full,csr", "nosplit_csr", "splitpixel"])
def test_a_short_method_name_means_what_it_means_to_pyfai(data, tmp_path, name):
    """method="csr" must give the curve pyFAI's own integrate1d(method="csr") gives (bbox
    pixel splitting), not another pixel splitting."""
    ai = integration.load_geometry(data["poni_file"])
    frame = fabio.open(data["edf_files"][0]).data
    expected = ai.integrate1d(frame, NPT, unit="q_nm^-1", method=name)
    assert integration.parse_method(name, 1) == expected.method
    assert integration.parse_method(name, 2) == ai.integrate2d(frame, NPT, 36, method=name).method
    output = run_many(data, tmp_path, method=name, input_files=data["edf_files"][:1])
    numpy.testing.assert_allclose(read_output(output)[1][0], expected.intensity, rtol=1e-6)


def test_an_opencl_method_without_opencl_is_refused_not_replaced(data, tmp_path):
    """pyFAI reads "csr_ocl" as (no, csr, cython) where OpenCL is missing: the user asked for
    the GPU and got another pixel splitting on the CPU, as a success."""
    if integration.IntegrationMethod.select_one_available(("bbox", "csr", "opencl"), dim=1):
        pytest.skip("OpenCL is available here")
    for method in ("csr_ocl", "ocl", ["bbox", "csr", "opencl"]):
        with pytest.raises(RuntimeError, match=r"method .* is not available for 1D integration"):
            run_many(data, tmp_path, method=method)


def test_any_non_zero_mask_value_masks(data, tmp_path):
    """As documented, non-zero = masked: also 256 (pyFAI's int8 cast makes it 0) or 0.5."""
    strip = fabio.open(data["mask_file"]).data != 0
    _, expected, _ = read_output(run_many(data, tmp_path, mask=data["mask_file"]))
    _, unmasked, _ = read_output(run_many(data, tmp_path))
    assert not numpy.allclose(expected, unmasked)
    for value, dtype in [(256, numpy.int32), (0.5, numpy.float32), (numpy.nan, numpy.float32)]:
        mask_file = str(tmp_path / "odd_mask.edf")
        fabio.edfimage.EdfImage(data=numpy.where(strip, value, 0).astype(dtype)).write(mask_file)
        _, intensity, _ = read_output(run_many(data, tmp_path, mask=mask_file))
        numpy.testing.assert_array_equal(intensity, expected, err_msg=f"mask value {value}")


@pytest.mark.parametrize(
    "unit, units",
    [("2th_deg", "deg"), ("q_A^-1", "A^-1"), ("d*2_nm^-2", "nm^-2"),
     ("exit_angle_horz_deg", "deg"), ("scattering_angle_vert_rad", "rad"),
     ("log(q.nm)_None", "")],
)  # fmt: skip
def test_the_radial_axis_has_the_units_of_its_unit(data, tmp_path, unit, units):
    import pyFAI.units

    if unit not in pyFAI.units.RADIAL_UNITS:  # the angle units came after pyFAI 2024.1
        pytest.skip(f"this pyFAI has no unit {unit}")
    output = run_many(data, tmp_path, unit=unit, npt=50, input_files=data["edf_files"][:1])
    with h5py.File(output["output_file"], "r") as h5:
        assert h5["entry/integrated"][unit].attrs["units"] == units


def test_integrate_simple_names_an_empty_stack(data, tmp_path):
    stack = str(tmp_path / "empty.h5")
    with h5py.File(stack, "w") as h5:
        h5["data"] = numpy.zeros((0,) + SHAPE, numpy.int32)
    with pytest.raises(RuntimeError, match=r"input '.*empty.h5::/data' holds no frame$"):
        run("pyfai.integrate_simple", poni_file=data["poni_file"], image_file=f"{stack}::/data",
            curve_file=str(tmp_path / "c.dat"))  # fmt: skip


def test_a_frame_cut_short_after_setup_fails_the_job(data, tmp_path):
    """fabio pads a short file with zeros: integrating it would give a wrong curve. The
    frames done before it stay in NAME.h5.part: NAME.h5 (an earlier run's) is not replaced
    by a file that looks complete."""
    frame = tmp_path / "frame.edf"
    raw = open(data["edf_files"][0], "rb").read()
    frame.write_bytes(raw)
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier run's file")
    plugin = plugin_factory(MANY)
    try:
        plugin.setup({"poni_file": data["poni_file"], "npt": NPT, "output_file": str(out),
                      "input_files": [*data["edf_files"][:2], str(frame)]})  # fmt: skip
        frame.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(RuntimeError, match="its data is shorter than its header says"):
            plugin.process()
    finally:
        plugin.teardown()
    assert out.read_bytes() == b"an earlier run's file"
    with h5py.File(f"{out}.part", "r") as h5:
        assert h5["entry/integrated/intensity"].shape == (2, NPT)
    assert f"failed after 2 of 3 frames, kept in {out}.part" in plugin.output["logging"][-2]
    assert not os.path.exists(f"{out}.lock")


def test_a_file_name_with_brackets_is_that_file_not_a_glob(data, tmp_path):
    frame = tmp_path / "scan[1]_0000.edf"
    frame.write_bytes(open(data["edf_files"][0], "rb").read())
    assert run_many(data, tmp_path, input_files=str(frame))["frames"] == 1


def test_a_tuple_of_input_files_is_a_list_of_them(data, tmp_path):
    """From Python, as the journal (JSON) records it: a rerun gets a list and succeeds."""
    assert run_many(data, tmp_path, input_files=tuple(data["edf_files"]))["frames"] == N_FRAMES


def test_a_json_geometry_on_one_line_is_read(data, tmp_path):
    """pyFAI reads a JSON geometry however it is laid out (json.dumps(ai.get_config()))."""
    config = integration.load_geometry(data["poni_file"]).get_config()
    compact = tmp_path / "geometry.json"
    compact.write_text(json.dumps(config))
    _, expected, _ = read_output(run_many(data, tmp_path, input_files=data["edf_files"][:1]))
    output = run_many(data, tmp_path, poni_file=str(compact), input_files=data["edf_files"][:1])
    numpy.testing.assert_array_equal(read_output(output)[1], expected)


def test_jobs_after_one_another_never_reuse_an_engine_of_other_settings(data, tmp_path):
    """The same poni and mask paths with other contents, other masks, methods, units: every
    curve is bare pyFAI's, however the integrator cache was filled before."""
    poni, mask_file = tmp_path / "g.poni", tmp_path / "m.edf"
    text = open(data["poni_file"]).read()
    strip = fabio.open(data["mask_file"]).data
    frame = fabio.open(data["edf_files"][0]).data
    runs = [({}, text, None), ({}, text, strip), ({}, text, strip.T), ({}, text, None),
            ({"unit": "2th_deg"}, text, strip.T), ({"method": "no,csr,cython"}, text, strip.T),
            ({}, text.replace("Distance: 0.1", "Distance: 0.11"), strip.T)]  # fmt: skip
    for options, geometry, mask in runs:
        poni.write_text(geometry)
        params = dict(options, poni_file=str(poni), input_files=data["edf_files"][:1])
        if mask is not None:
            fabio.edfimage.EdfImage(data=mask.astype(numpy.int8)).write(str(mask_file))
            params["mask"] = str(mask_file)
        _, intensity, _ = read_output(run_many(data, tmp_path, **params))
        method = tuple(options.get("method", "full,csr,cython").split(","))
        expected = integration.load_geometry(str(poni)).integrate1d(
            frame, NPT, unit=options.get("unit", "q_nm^-1"), method=method, mask=mask
        )
        numpy.testing.assert_allclose(intensity[0], expected.intensity, rtol=1e-5, err_msg=params)


def test_a_tilde_in_a_path_is_the_home_directory(data, tmp_path, monkeypatch):
    """``~/...`` means the home of the user running the job, for every file input, as in
    a shell: no directory named ``~`` is created in the current directory."""
    home = tmp_path / "home"
    (home / "scan").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    for name in ("poni_file", "mask_file"):
        (home / "scan" / os.path.basename(data[name])).write_bytes(open(data[name], "rb").read())
    frame = home / "scan" / "f.edf"
    frame.write_bytes(open(data["edf_files"][0], "rb").read())
    inputs = {"poni_file": "~/scan/geometry.poni", "input_files": ["~/scan/f.edf"]}
    output = run_many(data, tmp_path, **inputs, mask="~/scan/mask.edf", output_file="~/o.h5")
    assert output["output_file"] == str(home / "o.h5")
    assert read_output(output)[1].shape == (1, NPT)
    output = run_many(data, tmp_path, **inputs, output_file=None, output_dir="~/results")
    assert os.path.dirname(output["output_file"]) == str(home / "results")
    output = run(
        "pyfai.integrate_simple", poni_file="~/scan/geometry.poni", image_file="~/scan/f.edf",
        curve_file="~/curves/f.dat",
    )  # fmt: skip
    assert output["result"]["out_file"] == str(home / "curves" / "f.dat")
    assert (home / "curves" / "f.dat").is_file()
    assert os.listdir(cwd) == []


def wait_for_file(path, job, timeout=60):
    """Poll until ``path`` exists (the job started writing) or the job has ended."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and job.status not in State.FINAL:
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def process_engine(tmp_path, monkeypatch):
    """Two worker processes that do not lock HDF5 files (as on many beamline file systems)."""
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    engine = dahu.engine.configure(
        workdir=str(tmp_path / "work"), max_workers=2, executor_kind="process"
    )
    yield engine
    engine.executor.shutdown(wait=True, timeout=30)


def test_a_second_writer_of_an_output_file_is_refused(process_engine, data, tmp_path):
    """Without HDF5's locks, two worker processes wrote one file at once (and both
    succeeded); the second is refused, naming the job that writes it."""
    out = tmp_path / "shared.h5"
    params = {"poni_file": data["poni_file"], "npt": NPT, "output_file": str(out)}
    first = Job(MANY, dict(params, input_files=[data["hdf5_dataset"]] * 1000))
    first.start()
    try:
        wait_for_file(f"{out}.part", first)
        second = Job(MANY, dict(params, input_files=data["edf_files"]))
        second.start()
        second.join(60)
        assert second.status == State.FAILURE
        reason = Job.getErrorFromID(second.id).splitlines()[0]
        assert f"output_file '{out}' is being written by job {first.id} (pid" in reason, reason
    finally:
        first.abort()
        first.join(60)
    assert first.status == State.ABORTED
    assert read_output(first.output_data)[1].shape == (first.output_data["frames"], NPT)
    assert not os.path.exists(f"{out}.lock")


def test_a_writer_killed_mid_file_leaves_no_damaged_output(process_engine, data, tmp_path):
    """A worker killed while writing left an HDF5 file nobody could open (``bad object
    header version number``) under the output name; the name now keeps what it held, and
    the next job writing it works."""
    out = tmp_path / "scan.h5"
    params = {"poni_file": data["poni_file"], "npt": NPT, "output_file": str(out)}
    done = Job(MANY, dict(params, input_files=data["edf_files"][:1]))
    done.start()
    done.join(60)
    assert done.status == State.SUCCESS, Job.getErrorFromID(done.id)
    killed = Job(MANY, dict(params, input_files=[data["hdf5_dataset"]] * 1000))
    killed.start()
    wait_for_file(f"{out}.part", killed)
    for pid in process_engine.executor.worker_pids():
        os.kill(pid, signal.SIGKILL)
    killed.join(60)
    assert killed.status == State.FAILURE
    assert read_output(done.output_data)[1].shape == (1, NPT)  # the earlier, complete file
    again = Job(MANY, dict(params, input_files=data["edf_files"]))
    again.start()
    again.join(60)
    assert again.status == State.SUCCESS, Job.getErrorFromID(again.id)
    assert read_output(again.output_data)[1].shape == (N_FRAMES, NPT)
    assert sorted(os.listdir(tmp_path)) == ["scan.h5", "work"]


@pytest.mark.parametrize("limit, frames", [(20_000, 50), (60_000, 10), (300_000, 200)])
def test_a_disk_that_fills_up_fails_the_writer_and_not_the_process(tmp_path, limit, frames):
    """HDF5 cannot close a file it could not write, and freeing that file killed the process
    (SIGSEGV: the whole server, with a thread executor). A file size limit stands in for a
    disk that fills up during the job (the job checks the free space before it begins), in a
    forked process (which runs no pyFAI: its OpenMP threads would not survive a fork). The
    limit falls where the file is laid out, on the last write, among the frames."""
    cached = SimpleNamespace(radial=numpy.arange(1000.0), azimuthal=None)
    result = SimpleNamespace(intensity=numpy.ones(1000), sigma=numpy.ones(1000))
    out = tmp_path / "out.h5"
    pipe_in, pipe_out = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit: EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            unit = integration.parse_unit("q_nm^-1")
            writer, errors = None, []  # the write that fails: the layout, a frame, the end
            try:
                writer = nexus.NexusWriter(str(out), cached, unit, frames, True)  # 8 kB a frame
                for done in range(frames):
                    writer.write(done, result)
            except OSError as error:
                errors.append(str(error))
            try:
                if writer is not None:
                    writer.close(frames, {}, None, failed=True)
            except OSError as error:
                errors.append(str(error))
            os.write(pipe_out, "\n".join(errors).encode())
            del writer
            gc.collect()  # where HDF5's file was freed, and the process died
            code = 0
        finally:
            os._exit(code)
    os.close(pipe_out)
    with os.fdopen(pipe_in, "rb") as stream:
        message = stream.read().decode()
    assert os.waitpid(child, 0)[1] == 0
    assert message in ("[Errno 27] File too large", f"[Errno 27] File too large: '{out}'")
    assert os.listdir(tmp_path) == []  # no damaged .part, no lock left


def test_a_disk_too_full_for_the_file_is_found_before_it_is_written(data, tmp_path, monkeypatch):
    """The job fails before it writes (HDF5 writing on a full disk is the case above)."""
    monkeypatch.setattr(nexus, "_free_bytes", lambda path: 2**20)
    with pytest.raises(RuntimeError) as info:  # 2D: 4 frames of 300 x 360 bins, 1.6 MB + 0.25
        run_many(data, tmp_path, npt_azim=360)
    out = tmp_path / "out.h5"
    assert str(info.value).endswith(
        f"cannot write output file '{out}': [Errno 28] its disk is full: it needs 1.9 MB, 1.0 "
        "MB are free"
    )
    assert os.listdir(tmp_path) == []


def test_an_output_file_that_is_a_link_is_written_through_it(data, tmp_path):
    """The file is written as NAME.part and renamed: through a symbolic link, as HDF5 writes,
    so that the link stays a link to the new result."""
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "scan.h5"
    link = tmp_path / "scan.h5"
    link.symlink_to(real)
    output = run_many(data, tmp_path, output_file=str(link), input_files=data["edf_files"][:2])
    assert link.is_symlink() and read_output(output)[1].shape == (2, NPT)
    with h5py.File(real, "r") as h5:
        assert h5["entry/integrated/intensity"].shape == (2, NPT)
    assert sorted(os.listdir(tmp_path / "store")) == ["scan.h5"]


def test_an_output_name_near_the_longest_file_name_is_written(data, tmp_path):
    """``NAME.h5.part`` and ``NAME.h5.lock`` of a name that fits (252 bytes) but not with
    those suffixes are cut as the long names of job files are (bug: File name too long)."""
    name = "scan_" + "é" * 122 + ".h5"  # 252 bytes
    output = run_many(
        data, tmp_path, output_file=str(tmp_path / name), input_files=data["edf_files"][:1]
    )
    assert read_output(output)[1].shape == (1, NPT)
    assert os.listdir(tmp_path) == [name]  # no .part or .lock left


def test_a_curve_name_near_the_longest_file_name_is_written(data, tmp_path):
    """As for the HDF5 file above: its .part and .lock are cut to fit."""
    name = "curve_" + "é" * 122 + ".dat"  # 254 bytes
    run("pyfai.integrate_simple", poni_file=data["poni_file"], image_file=data["edf_files"][0],
        curve_file=str(tmp_path / name), npt=NPT)  # fmt: skip
    assert os.listdir(tmp_path) == [name] and numpy.loadtxt(tmp_path / name).shape == (NPT, 2)


def test_a_file_system_without_locks_still_gets_its_output(data, tmp_path, monkeypatch, caplog):
    """flock fails with ENOLCK or EOPNOTSUPP on some file systems: the job writes as HDF5
    itself would (unguarded), with a warning, rather than failing."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(nexus.fcntl, "flock", no_locks)
    output = run_many(data, tmp_path, input_files=data["edf_files"][:2])
    assert read_output(output)[1].shape == (2, NPT)
    assert "a second writer is not refused" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]


def test_a_result_open_in_a_viewer_does_not_fail_the_rerun(data, tmp_path):
    """A user looking at the last result (silx view: HDF5 holds a lock on the file) made
    the next job writing it fail: ``unable to lock file``. The new file replaces it; the
    viewer keeps the one it opened."""
    out = tmp_path / "scan.h5"
    run_many(data, tmp_path, output_file=str(out), input_files=data["edf_files"][:1])
    viewer = subprocess.Popen(
        [sys.executable, "-c", VIEWER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert viewer.stdout.readline() == b"(1, 300)\n"  # it has the file open
        output = run_many(data, tmp_path, output_file=str(out), input_files=data["edf_files"])
        assert read_output(output)[1].shape == (N_FRAMES, NPT)
        viewer.stdin.write(b"again\n")
        viewer.stdin.flush()
        assert viewer.stdout.readline() == b"(1, 300)\n"  # still the file it opened
    finally:
        viewer.stdin.close()
        assert viewer.wait(30) == 0


VIEWER = """
import sys, h5py
with h5py.File(sys.argv[1], "r") as h5:
    for line in iter(lambda: (print(h5["entry/integrated/intensity"].shape, flush=True),
                              sys.stdin.readline())[1], ""):
        pass
"""
