"""Synthetic powder-diffraction data sets with known rings, for tests, demos and benchmarks.

A data set is a directory holding a pyFAI geometry (``geometry.poni``), N diffraction frames as
EDF files and, optionally, the same frames as one HDF5 stack (``stack.h5::/entry/data``). The
frames are computed by pyFAI from a 1D profile made of Gaussian peaks at known ``q`` positions on a
smooth background, so an azimuthal integration of any frame must show its peaks at exactly those
positions. Frame ``i`` is scaled by ``monitor_values[i]`` before Poisson noise is drawn, which makes
monitor normalisation observable.

Use it from Python (:func:`make_dataset`) or from the command line::

    python -m dahu.testdata DIR -n 10 --shape 1024 1024
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import fabio.edfimage
import h5py
import numpy
import pyFAI.detectors
from pyFAI.io.ponifile import PoniFile

from dahu.integration import AzimuthalIntegrator

logger = logging.getLogger(__name__)

__all__ = ["make_dataset", "q_to_2theta", "main"]

PONI_NAME = "geometry.poni"
STACK_NAME = "stack.h5"
STACK_PATH = "/entry/data"
MASK_NAME = "mask.edf"

#: Ring positions as fractions of the largest q whose ring is complete on the detector.
_RING_FRACTIONS = (0.25, 0.45, 0.65, 0.85)
_RING_AMPLITUDES = (400.0, 300.0, 220.0, 150.0)


def q_to_2theta(q_nm: float, wavelength_m: float) -> float:
    """Scattering angle 2θ in degrees of a scattering vector ``q_nm`` (nm⁻¹) at ``wavelength_m``."""
    wavelength_nm = wavelength_m * 1e9
    return math.degrees(2.0 * math.asin(q_nm * wavelength_nm / (4.0 * math.pi)))


def _make_integrator(
    shape: tuple[int, int], pixel_size: float, distance: float, wavelength: float
) -> AzimuthalIntegrator:
    """A slightly tilted geometry with the PONI a few pixels away from the detector centre."""
    detector = pyFAI.detectors.Detector(pixel1=pixel_size, pixel2=pixel_size, max_shape=shape)
    return AzimuthalIntegrator(
        dist=distance,
        poni1=(shape[0] / 2 + 3.3) * pixel_size,
        poni2=(shape[1] / 2 - 5.7) * pixel_size,
        rot1=0.004,
        rot2=-0.003,
        rot3=0.0,
        detector=detector,
        wavelength=wavelength,
    )


def _inscribed_q(ai: AzimuthalIntegrator, shape: tuple[int, int]) -> float:
    """Largest q (nm⁻¹) whose ring is still complete on the detector."""
    q = ai.qArray(shape)
    return float(min(q[0, :].min(), q[-1, :].min(), q[:, 0].min(), q[:, -1].min()))


def _profile(
    q_max: float, peaks: Sequence[tuple[float, float, float]], background: float
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The 1D profile I(q): Gaussian peaks (position, amplitude, sigma) on a decaying background."""
    q = numpy.linspace(0.0, q_max, 8192)
    intensity = background * (0.5 + numpy.exp(-q / (0.3 * q_max)))
    for position, amplitude, sigma in peaks:
        intensity += amplitude * numpy.exp(-0.5 * ((q - position) / sigma) ** 2)
    return q, intensity


def _check_room(directory: str, need: int) -> None:
    """Raise ``OSError`` (ENOSPC) when the file system of ``directory`` has not ``need``
    bytes free, and some more: a full disk is found before anything is written, as HDF5
    cannot recover from a failed write (the process crashes, SIGSEGV, when the file is
    freed: h5py issues 914 and 2160; until 2026-11-30 a traceback, then that crash)."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return  # the writes will say
    if not stat.f_blocks or not stat.f_frsize:  # some FUSE file systems cannot say
        return
    need, free = need + 2**18, stat.f_bavail * stat.f_frsize
    if need > free:
        need_mb, free_mb = math.ceil(need * 10 / 2**20) / 10, math.floor(free * 10 / 2**20) / 10
        why = f"its disk is full: it needs {need_mb} MB, {free_mb} MB are free"
        raise OSError(errno.ENOSPC, why, directory)


@contextlib.contextmanager
def _written(h5: h5py.File, path: str) -> Iterator[None]:
    """Write what the block puts in ``h5`` to the disk; a failure (the disk filled up
    meanwhile) is an ``OSError`` naming ``path``, after which HDF5 writes to /dev/null:
    a file whose close failed crashes the process as it is freed (as in
    :class:`dahu.nexus.NexusWriter`; until 2026-11-30 a ``RuntimeError``, then SIGSEGV)."""
    try:
        yield
        h5.flush()  # a full disk fails here, not when the file is closed
    except (OSError, RuntimeError) as error:  # h5py raises either, as HDF5's words go
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, h5.id.get_vfd_handle())
        finally:
            os.close(null)
        with contextlib.suppress(Exception):  # what HDF5 still holds goes to /dev/null
            h5.flush()
        found = re.search(r"errno = (\d+)", str(error))
        number = getattr(error, "errno", None) or (int(found[1]) if found else errno.EIO)
        raise OSError(number, os.strerror(number), path) from None


def make_dataset(
    directory: str | os.PathLike,
    n_frames: int = 3,
    shape: Sequence[int] = (512, 512),
    seed: int = 0,
    *,
    pixel_size: float = 100e-6,
    distance: float = 0.1,
    wavelength: float = 1e-10,
    peaks_q: Sequence[float] | None = None,
    background: float = 50.0,
    monitor_values: Sequence[float] | None = None,
    edf: bool = True,
    hdf5: bool = True,
    mask: bool = False,
) -> dict[str, Any]:
    """Write a synthetic data set into ``directory`` and describe it.

    :param directory: where to write; created if missing.
    :param n_frames: number of frames.
    :param shape: frame shape (rows, columns); it is also the detector's ``max_shape``.
    :param seed: seed of the noise and of the default monitor values; same seed, same files.
    :param pixel_size: square pixel size in metres.
    :param distance: sample-detector distance in metres.
    :param wavelength: X-ray wavelength in metres.
    :param peaks_q: ring positions in nm⁻¹; by default four rings spread over the detector.
    :param background: level of the smooth background, in counts.
    :param monitor_values: one scale factor per frame; by default seeded values in [0.5, 1.5].
    :param edf: write one EDF file per frame.
    :param hdf5: write all frames into one HDF5 stack ``stack.h5::/entry/data``.
    :param mask: also write ``mask.edf`` (1 = masked): a vertical strip through the centre.
    :return: a dict with ``directory``, ``poni_file``, ``edf_files``, ``hdf5_file``,
        ``hdf5_dataset`` (``"path::/entry/data"`` or None), ``mask_file`` (or None), ``shape``,
        ``n_frames``, ``monitor_values``, ``ring_q_nm`` and ``ring_2th_deg`` (sorted),
        ``peak_sigma_q_nm``, ``pixel_size``, ``distance`` and ``wavelength``.
    """
    shape = (int(shape[0]), int(shape[1]))
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if min(shape) < 16:
        raise ValueError(f"shape {shape} is too small to hold diffraction rings")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rng = numpy.random.default_rng(seed)

    ai = _make_integrator(shape, pixel_size, distance, wavelength)
    q_inner = _inscribed_q(ai, shape)
    if peaks_q is None:
        peaks_q = [round(f * q_inner, 3) for f in _RING_FRACTIONS]
    peaks_q = sorted(float(p) for p in peaks_q)
    # Peaks a few pixels wide: resolvable by any reasonable number of bins.
    sigma = 0.012 * q_inner
    amplitudes = [_RING_AMPLITUDES[i % len(_RING_AMPLITUDES)] for i in range(len(peaks_q))]
    peaks = [(q, a, sigma) for q, a in zip(peaks_q, amplitudes, strict=True)]
    q_max = float(ai.qArray(shape).max()) * 1.05
    q, intensity = _profile(q_max, peaks, background)
    base = ai.calcfrom1d(q, intensity, shape=shape, dim1_unit="q_nm^-1")
    base = numpy.maximum(base, 0.0)

    if monitor_values is None:
        monitor_values = [round(float(v), 4) for v in rng.uniform(0.5, 1.5, n_frames)]
    elif len(monitor_values) != n_frames:
        raise ValueError(f"got {len(monitor_values)} monitor values for {n_frames} frames")

    pixels = shape[0] * shape[1]
    _check_room(directory, n_frames * pixels * 4 * (edf + hdf5) + (pixels if mask else 0))
    poni_file = os.path.join(directory, PONI_NAME)
    # as ai.save() writes it, but that one appends to an existing file and, on a full disk,
    # logs its own error line and returns as if it had written it (until 2026-11-30 a
    # dahu-demo there printed that line before its own)
    with open(poni_file, "w") as handle:
        PoniFile(ai).write(handle)

    frames = numpy.empty((n_frames,) + shape, dtype=numpy.int32)
    for index, monitor in enumerate(monitor_values):
        frames[index] = rng.poisson(base * monitor)

    edf_files = []
    if edf:
        for index, monitor in enumerate(monitor_values):
            path = os.path.join(directory, f"frame_{index:04d}.edf")
            header = {"monitor": str(monitor), "frame": str(index)}
            fabio.edfimage.EdfImage(data=frames[index], header=header).write(path)
            edf_files.append(path)

    hdf5_file = hdf5_dataset = None
    if hdf5:
        hdf5_file = os.path.join(directory, STACK_NAME)
        with h5py.File(hdf5_file, "w") as h5, _written(h5, hdf5_file):
            h5.attrs["NX_class"] = "NXroot"
            h5.attrs["default"] = "entry"
            entry = h5.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            entry.attrs["signal"] = "data"
            dataset = entry.create_dataset("data", data=frames, chunks=(1,) + shape)
            dataset.attrs["interpretation"] = "image"
            entry.create_dataset("monitor", data=numpy.asarray(monitor_values, dtype=float))
        hdf5_dataset = f"{hdf5_file}::{STACK_PATH}"

    mask_file = None
    if mask:
        mask_array = numpy.zeros(shape, dtype=numpy.int8)
        centre = shape[1] // 2
        mask_array[:, centre - 4 : centre + 4] = 1
        mask_file = os.path.join(directory, MASK_NAME)
        fabio.edfimage.EdfImage(data=mask_array).write(mask_file)

    logger.info(
        "Wrote %d synthetic frames of shape %s into %s (rings at q=%s nm^-1)",
        n_frames,
        shape,
        directory,
        peaks_q,
    )
    return {
        "directory": directory,
        "poni_file": poni_file,
        "edf_files": edf_files,
        "hdf5_file": hdf5_file,
        "hdf5_dataset": hdf5_dataset,
        "mask_file": mask_file,
        "shape": shape,
        "n_frames": n_frames,
        "monitor_values": list(monitor_values),
        "ring_q_nm": peaks_q,
        "ring_2th_deg": [q_to_2theta(p, wavelength) for p in peaks_q],
        "peak_sigma_q_nm": sigma,
        "pixel_size": pixel_size,
        "distance": distance,
        "wavelength": wavelength,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dahu.testdata",
        description="Write synthetic diffraction frames with known rings and their pyFAI geometry.",
    )
    parser.add_argument("directory", help="output directory (created if missing)")
    parser.add_argument("-n", "--frames", type=int, default=3, help="number of frames (3)")
    parser.add_argument(
        "--shape", type=int, nargs=2, default=(512, 512), metavar=("ROWS", "COLS"), help="(512 512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--pixel-size", type=float, default=100e-6, help="metres (1e-4)")
    parser.add_argument("--distance", type=float, default=0.1, help="metres (0.1)")
    parser.add_argument("--wavelength", type=float, default=1e-10, help="metres (1e-10)")
    parser.add_argument("--no-edf", action="store_true", help="do not write EDF files")
    parser.add_argument("--no-hdf5", action="store_true", help="do not write the HDF5 stack")
    parser.add_argument("--mask", action="store_true", help="also write mask.edf")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write a data set and print its description as JSON."""
    args = _parser().parse_args(argv)
    try:
        description = make_dataset(
            args.directory,
            n_frames=args.frames,
            shape=args.shape,
            seed=args.seed,
            pixel_size=args.pixel_size,
            distance=args.distance,
            wavelength=args.wavelength,
            edf=not args.no_edf,
            hdf5=not args.no_hdf5,
            mask=args.mask,
        )
    except (ValueError, OSError) as error:
        sys.stderr.write(f"dahu.testdata: error: {error}\n")
        return 2
    sys.stdout.write(json.dumps(description, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
