"""Azimuthal-integration machinery shared by the pyFAI plugins, benchmarks and the demo.

* Reading inputs: :func:`load_geometry` (``.poni`` files), :func:`expand_inputs` and
  :func:`iter_frames` (image files, globs, ``file.h5::/dataset`` stacks, one frame at a time),
  :func:`read_image` (mask, dark, flat).
* Parsing settings: :func:`parse_unit`, :func:`parse_method`, :func:`positive_int`,
  :func:`check_shape`; every bad value raises :class:`InputError` with a one-line message
  naming the offending file or value.
* The integrator cache: :func:`acquire_integrator` / :func:`release_integrator`.
* Writing results: :class:`NexusWriter` (from :mod:`dahu.nexus`) streams integrated frames
  into a NeXus HDF5 file.

Building the sparse-matrix (CSR) engine of an integrator costs far more than integrating one
frame, so ready-to-use integrators are kept in the shared :class:`~dahu.cache.DataCache`, keyed
by everything the engine depends on (geometry, shape, mask, npt, unit, method, npt_azim). A
pyFAI integrator must not integrate in two threads at once (its engine keeps a per-call buffer),
so each key holds a pool: a job borrows an integrator for its whole run and gives it back when
done; consecutive jobs reuse it, concurrent jobs get one each and run in parallel.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import math
import operator
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fabio
import h5py
import numpy
import pyFAI
import pyFAI.detectors
import pyFAI.units

try:  # pyFAI >= 2025.1
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
except ImportError:  # pyFAI 2024
    from pyFAI.azimuthalIntegrator import AzimuthalIntegrator
from pyFAI.method_registry import IntegrationMethod, Method

from .cache import DataCache
from .errors import DahuError
from .nexus import WRITE_BLOCK_BYTES, WRITE_BLOCK_FRAMES, NexusWriter, OutputInUse

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_NPT",
    "DEFAULT_UNIT",
    "ERROR_MODELS",
    "MAX_BINS_2D",
    "MAX_IDLE_INTEGRATORS",
    "MAX_NPT",
    "MAX_NPT_AZIM",
    "WRITE_BLOCK_BYTES",
    "WRITE_BLOCK_FRAMES",
    "AzimuthalIntegrator",
    "CachedIntegrator",
    "FrameSource",
    "InputError",
    "IntegratorPool",
    "NexusWriter",
    "OutputInUse",
    "acquire_integrator",
    "check_error_model",
    "check_file",
    "check_shape",
    "expand_inputs",
    "integrate",
    "iter_frames",
    "load_geometry",
    "parse_method",
    "parse_unit",
    "positive_int",
    "read_image",
    "release_integrator",
]

#: The plugins' default integration method (split, algorithm, implementation).
DEFAULT_METHOD = ("full", "csr", "cython")
#: The plugins' default radial unit.
DEFAULT_UNIT = "q_nm^-1"
#: The plugins' default number of radial bins.
DEFAULT_NPT = 1000
#: Most radial bins (``npt``): building a 1D engine of 10**5 bins took 0.2 GB and 0.7 s,
#: one of 10**6 bins 2.3 GB and 14 s; pyFAI hangs on a MemoryError (pyFAI 2026.9).
MAX_NPT = 100_000
#: Most azimuthal bins (``npt_azim``), and of a 2D integration (``npt * npt_azim``: about
#: 0.2 kB each, so 0.8 GB for 4 million, e.g. 10000 x 360 or 1000 x 3600).
MAX_NPT_AZIM = 10_000
MAX_BINS_2D = 4_000_000
#: Error models accepted by ``error_model``.
ERROR_MODELS = ("poisson", "azimuthal", "hybrid")
_CACHE_PREFIX = "pyfai.integrator"
#: Idle integrators kept per cache key: enough for every worker thread of a small server.
MAX_IDLE_INTEGRATORS = 4


class InputError(DahuError, RuntimeError):
    """A bad plugin input; its message is one line naming the offending file or value."""


class IntegratorPool:
    """The ready integrators of one cache key; each is lent to one job at a time.

    pyFAI's sparse-matrix engines keep their preprocessed image in the engine object, so two
    threads must never integrate with the same integrator at once (results get mixed up). Jobs
    therefore borrow an integrator: consecutive jobs reuse the same one, concurrent jobs each
    get their own, so they integrate in parallel (pyFAI releases the GIL while integrating).
    """

    def __init__(self, key: str, max_idle: int = MAX_IDLE_INTEGRATORS) -> None:
        self.key = key
        self.max_idle = max_idle
        self._idle: list[CachedIntegrator] = []
        self._lock = threading.Lock()

    def take(self) -> CachedIntegrator | None:
        """An idle integrator, now lent to the caller, or None if all are in use."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give_back(self, integrator: CachedIntegrator) -> None:
        """Return a borrowed integrator; beyond ``max_idle`` idle ones it is dropped."""
        with self._lock:
            if len(self._idle) < self.max_idle and all(i is not integrator for i in self._idle):
                self._idle.append(integrator)


@dataclass(frozen=True)
class CachedIntegrator:
    """An integrator whose engine is built, with the axes every integration with it produces."""

    ai: AzimuthalIntegrator
    key: str
    radial: numpy.ndarray
    azimuthal: numpy.ndarray | None
    pool: IntegratorPool


@dataclass(frozen=True)
class FrameSource:
    """One input file (or HDF5 dataset) and what its header says about its frames.

    ``selection`` holds the frame indices of a ``file.h5::/dataset[start:stop]`` selection
    (None: every frame); ``nframes`` counts the frames selected.
    """

    label: str
    path: str
    h5path: str | None
    nframes: int
    shape: tuple[int, ...]
    selection: range | None = None


def check_file(path: Any, what: str) -> str:
    """``path`` if it names a regular file, else an error saying what it is (``what`` file)."""
    if not isinstance(path, str):  # open(3) would read, then close, file descriptor 3
        raise InputError(f"{what} file must be a path (a string), got {type(path).__name__}")
    if os.path.isdir(path):
        raise InputError(f"{what} file '{path}' is a directory")
    if not os.path.isfile(path):
        reason = "is not a regular file" if os.path.exists(path) else "does not exist"
        raise InputError(f"{what} file '{path}' {reason}")
    return path


def load_geometry(poni_file: str) -> AzimuthalIntegrator:
    """Read a pyFAI ``.poni`` file, refusing files that do not describe a geometry."""
    check_file(poni_file, "poni")
    try:
        with open(poni_file, encoding="utf-8") as stream:
            text = stream.read(2**20)  # a geometry is a few hundred bytes
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read poni file '{poni_file}': {error}") from error
    try:  # JSON, on one line or many, its geometry maybe in a section ("poni": {...})
        config = json.loads(text)
    except ValueError:
        config = None
    if isinstance(config, dict):
        parts = [config, *(value for value in config.values() if isinstance(value, dict))]
        keys = {str(key).lower() for part in parts for key in part}
    else:  # "Key: value" lines
        keys = {line.partition(":")[0].strip(' \t{"').lower() for line in text.splitlines()}
    if not keys & {"distance", "dist"} or not keys & {"detector", "pixelsize1"}:
        raise InputError(f"poni file '{poni_file}' has no distance or detector: not a geometry")
    try:
        ai = AzimuthalIntegrator()
        # pyFAI.load() would run a full gc.collect() (tens of ms, holding the GIL and so
        # stalling every other job); nothing here needs it: refcounting frees the arrays.
        ai.auto_gc = False
        ai = ai.load(poni_file)
    except Exception as error:  # pyFAI raises anything from KeyError to JSONDecodeError
        raise InputError(f"invalid poni file '{poni_file}': {error}") from error
    # pyFAI loads a failed fit's NaN, or a pixel size of 0 (as None: a TypeError when the
    # engine is built), and integrates nonsense with them without a word
    numbers = {"Distance": ai.dist, "PixelSize1": ai.detector.pixel1}
    numbers.update(PixelSize2=ai.detector.pixel2, Wavelength=ai.wavelength or 1.0)
    numbers.update(Poni1=ai.poni1, Poni2=ai.poni2, Rot1=ai.rot1, Rot2=ai.rot2, Rot3=ai.rot3)
    for name, value in numbers.items():
        number = value if isinstance(value, (int, float, numpy.floating)) else math.nan
        signed = name.startswith(("Poni", "Rot"))  # 0 or less is fine
        if not math.isfinite(number) or not (signed or number > 0):
            why = f"{name} {value}: expected a {'finite' if signed else 'positive'} number"
            raise InputError(f"poni file '{poni_file}' has {why}")
    return ai


def parse_unit(unit: Any) -> pyFAI.units.Unit:
    """The pyFAI radial unit named ``unit`` (e.g. ``"q_nm^-1"``, ``"2th_deg"``, ``"r_mm"``)."""
    if not isinstance(unit, str) or unit not in pyFAI.units.RADIAL_UNITS:
        known = ", ".join(list(pyFAI.units.RADIAL_UNITS)[:11])
        raise InputError(f"unknown unit {unit!r}: expected one of {known}, ...")
    return pyFAI.units.to_unit(unit)


def parse_method(method: Any, dim: int) -> IntegrationMethod:
    """The available pyFAI method for ``method``: (split, algo, impl), "split,algo,impl", "csr"."""
    if isinstance(method, str):
        parts = [p.strip() for p in method.replace(",", " ").split()]
        # pyFAI ignores words it does not know (None, 2024: "*"); "splitpixel": its old name
        wild = all(p in (None, "*") for p in Method.parsed(method)[1:4])  # of full,histogram
        if len(parts) != 3 and wild and method != "splitpixel":
            raise InputError(f"unknown method {method!r}: expected (split, algo, impl)")
    elif isinstance(method, Sequence) and len(method) == 3:
        parts = list(method)
    else:
        raise InputError(f"unknown method {method!r}: expected (split, algo, impl)")
    try:  # a short name ("csr", "full,csr") means what it means to pyFAI's integrate1d
        request = Method(dim, *parts, None) if len(parts) == 3 else method  # target: any
    except (ValueError, TypeError) as error:
        raise InputError(f"unknown method {method!r}: {error}") from error
    selected = IntegrationMethod.select_one_available(request, dim=dim, degradable=False)
    # a short name's OpenCL ("csr_ocl") falls back to Cython without OpenCL, unlike a triple
    wanted = Method.parsed(method).impl if request is method else None
    if selected is None or wanted not in (None, "*", selected.method.impl):
        raise InputError(f"method {method!r} is not available for {dim}D integration here")
    return selected


@functools.lru_cache(maxsize=64)
def _error_model_failure(method: IntegrationMethod, error_model: str) -> str | None:
    """Why ``method`` cannot compute ``error_model``, found by integrating a tiny blank image
    (a few ms, once per pair); None if it can."""
    detector = pyFAI.detectors.Detector(1e-4, 1e-4, max_shape=(8, 8))
    ai = AzimuthalIntegrator(dist=0.1, poni1=4e-4, poni2=4e-4, detector=detector)
    ai.auto_gc, ai.wavelength = False, 1e-10
    npt_azim = 4 if method.dimension == 2 else None
    try:
        with _BUILDING:  # it builds an engine, if a tiny one
            integrate(ai, numpy.ones((8, 8)), 4, npt_azim, method=method, error_model=error_model)
    except Exception as error:  # pyFAI raises NotImplementedError, or anything its engine does
        return _why(error).splitlines()[0]
    return None


def check_error_model(method: IntegrationMethod, error_model: str | None) -> None:
    """Refuse an ``error_model`` that ``method`` cannot compute (pyFAI 2026: numpy's histogram
    with ``"azimuthal"``), before any frame is read or any file written."""
    if error_model is not None and (why := _error_model_failure(method, error_model)):
        split, algo, impl = method.method[1:4]
        raise InputError(
            f"method ({split}, {algo}, {impl}) cannot compute error_model {error_model!r}: {why}"
        )


def positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """``value`` as a positive integer (at most ``maximum``), or an error naming ``name``."""
    try:
        number = operator.index(value)
    except TypeError:
        number = 0
    if number < 1 or isinstance(value, bool):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and number > maximum:
        raise InputError(f"{name} must be at most {maximum}, got {number}")
    return number


def _complete(image: Any, data: bool = True) -> Any:
    """The fabio ``image``, if its data is all there: fabio pads a file that is shorter than
    its header says (one still being written) with zeros, and only logs it; a short TIFF
    gives no data at all. ``data=False`` for a header read alone."""
    if image.incomplete_file:
        raise ValueError("its data is shorter than its header says (still being written?)")
    if data and not isinstance(image.data, numpy.ndarray):
        raise ValueError("no image data in it (still being written?)")
    return image


def _why(error: Exception) -> str:
    """The message of ``error``, or its type when it has none (fabio's ``AssertionError``)."""
    return str(error) or f"{type(error).__name__} (a damaged or partly written file?)"


def read_image(path: str, what: str) -> numpy.ndarray:
    """First frame of the image file ``path`` (any fabio format, or an HDF5 dataset written as
    in ``input_files``: ``mask.h5::/entry/mask``); ``what`` names it in errors."""
    if "::" in path:
        _, frame = next(iter_frames([_describe(path, what)]))
        return numpy.array(frame)
    check_file(path, what)
    try:
        with fabio.open(path) as image:
            return numpy.array(_complete(image).data)
    except Exception as error:  # fabio raises whatever the format reader raises
        why = "HDF5: name a dataset, file.h5::/entry/data" if h5py.is_hdf5(path) else _why(error)
        raise InputError(f"cannot read {what} file '{path}': {why}") from error


def expand_inputs(input_files: Any) -> list[FrameSource]:
    """Describe the frames of ``input_files``: a path, a glob or a list of them.

    ``file.h5::/path/to/dataset`` names an HDF5 dataset: a 2D dataset is one frame, each slice
    of a 3D dataset along its first axis is one frame; ``file.h5::/dataset[10:20]`` (Python
    slice syntax: ``[i]``, ``[start:stop]``, ``[start:stop:step]``) selects some of them.
    Any other path is opened by fabio.
    """
    items = [input_files] if isinstance(input_files, str) else input_files
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"input_files must be a non-empty path, glob or list, got {input_files!r}")
    paths: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"input_files must hold paths, got {item!r}")
        if any(char in item for char in "*?[") and "::" not in item and not os.path.exists(item):
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise InputError(f"no input file matches '{item}'")
            paths.extend(matches)
        else:
            paths.append(item)
    sources = [_describe(path) for path in paths]
    if empty := [source.label for source in sources if not source.nframes]:
        raise InputError(f"input '{empty[0]}' holds no frame")
    return sources


def _parse_selection(text: str, label: str, count: int) -> range:
    """The frame indices selected by ``text`` (``"5"``, ``"10:20"``, ``":100:2"``) of ``count``."""
    parts = text.split(":")
    try:
        values = [int(part) if part.strip() else None for part in parts]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3 or (len(values) == 1 and values[0] is None) or values[2:] == [0]:
        raise InputError(
            f"bad frame selection [{text}] in '{label}': expected [i], [start:stop] "
            "or [start:stop:step]"
        )
    if len(values) == 1:
        index = values[0] + count if values[0] < 0 else values[0]
        if not 0 <= index < count:
            raise InputError(f"frame [{text}] of '{label}' is outside its {count} frames")
        return range(index, index + 1)
    selected = range(count)[slice(*values)]
    if not selected:
        raise InputError(f"frame selection [{text}] of '{label}' selects none of its {count}")
    return selected


def _describe(label: str, what: str = "image") -> FrameSource:
    path, sep, h5path = label.partition("::")
    check_file(path, what)
    if not sep:
        try:
            header = _complete(fabio.openheader(path), data=False)
            return FrameSource(label, path, None, int(header.nframes), tuple(header.shape))
        except Exception as error:  # fabio raises whatever the format reader raises
            why = "HDF5: name a dataset, file.h5::/entry/data" if h5py.is_hdf5(path) else error
            raise InputError(f"cannot read image file '{path}': {why}") from error
    selection_text = None
    if h5path.endswith("]") and "[" in h5path:
        h5path, _, selection_text = h5path[:-1].rpartition("[")
    try:
        with h5py.File(path, "r") as h5:
            dataset = h5.get(h5path)
            if not isinstance(dataset, h5py.Dataset):
                found = "not found" if dataset is None else "is a group, not a dataset,"
                raise InputError(f"HDF5 dataset '{h5path}' {found} in '{path}'")
            shape, dtype = dataset.shape, dataset.dtype
    except OSError as error:
        raise InputError(f"cannot read HDF5 file '{path}': {error}") from error
    if dtype.kind not in "biuf":  # pyFAI drops the imaginary part, and fails on the others
        raise InputError(f"HDF5 dataset '{label}' holds {dtype}: expected numbers")
    if len(shape) not in (2, 3):
        raise InputError(f"HDF5 dataset '{label}' has shape {shape}: expected 2D or 3D")
    if len(shape) == 2:
        if selection_text is not None:
            raise InputError(f"HDF5 dataset '{path}::{h5path}' is one frame: nothing to select")
        return FrameSource(label, path, h5path, 1, shape)
    if selection_text is None:
        return FrameSource(label, path, h5path, shape[0], shape[1:])
    selection = _parse_selection(selection_text, label, shape[0])
    return FrameSource(label, path, h5path, len(selection), shape[1:], selection)


def iter_frames(sources: Sequence[FrameSource]) -> Iterator[tuple[str, numpy.ndarray]]:
    """Yield ``(label, frame)`` for every frame of ``sources``, reading one frame at a time.

    A frame's label is its file (and dataset) with its index in it: ``stack.h5::/data[12]``.
    """
    for source in sources:
        try:
            if source.h5path is not None:
                base = f"{source.path}::{source.h5path}"
                indices = source.selection or range(source.nframes)
                with h5py.File(source.path, "r") as h5:
                    dataset = h5[source.h5path]
                    for index in indices:
                        frame = dataset[index] if dataset.ndim == 3 else dataset[()]
                        yield f"{base}[{index}]", frame
            else:
                with fabio.open(source.path) as image:
                    for index in range(source.nframes):
                        frame = _complete(image if index == 0 else image.getframe(index)).data
                        yield f"{source.label}[{index}]", frame
        except Exception as error:  # fabio raises whatever the format reader raises
            raise InputError(f"cannot read a frame of '{source.label}': {_why(error)}") from error


def integrate(
    ai: AzimuthalIntegrator, frame: numpy.ndarray, npt: int, npt_azim: int | None, **kw: Any
) -> Any:
    """Integrate ``frame`` in 1D (``npt`` bins), or in 2D when ``npt_azim`` is given."""
    if npt_azim:
        return ai.integrate2d(frame, npt, npt_azim, **kw)
    return ai.integrate1d(frame, npt, **kw)


def acquire_integrator(
    ai: AzimuthalIntegrator,
    shape: tuple[int, int],
    npt: int,
    unit: pyFAI.units.Unit,
    method: IntegrationMethod,
    npt_azim: int | None = None,
    mask: numpy.ndarray | None = None,
) -> tuple[CachedIntegrator, bool]:
    """Borrow a ready integrator for the geometry of ``ai`` and these settings.

    Returns it and whether it was reused from the cache. When none is idle, ``ai`` itself
    (a fresh object, e.g. from :func:`load_geometry`) gets the mask and its engine built by a
    first integration. Give it back with :func:`release_integrator` when done.
    """
    parts = {
        "geometry": ai.get_config(),
        "shape": list(shape),
        "mask": None if mask is None else hashlib.sha1(numpy.ascontiguousarray(mask)).hexdigest(),
        "npt": npt,
        "npt_azim": npt_azim,
        "unit": unit.name,
        "method": list(method.method[:4]),
    }
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    pool = DataCache().setdefault((_CACHE_PREFIX, digest), IntegratorPool(digest))
    integrator = pool.take()
    if integrator is not None:
        return integrator, True
    with _BUILDING:
        return _build(ai, shape, npt, unit, method, npt_azim, mask, digest, pool), False


_BUILDING = threading.Lock()
"""One engine built at a time in a process: a process running two first jobs in two
threads died of SIGABRT while building an engine, twice in the test suite's runs of
2026-11-30 (building in two threads at once is the suspect, not proven)."""


def _build(
    ai: AzimuthalIntegrator,
    shape: tuple[int, int],
    npt: int,
    unit: pyFAI.units.Unit,
    method: IntegrationMethod,
    npt_azim: int | None,
    mask: numpy.ndarray | None,
    digest: str,
    pool: IntegratorPool,
) -> CachedIntegrator:
    """Build the engine of ``ai`` for these settings by integrating a blank frame."""
    start = time.perf_counter()
    if mask is not None:
        if ai.detector.mask is not None:
            mask = numpy.logical_or(mask, ai.detector.mask)
        ai.detector.mask = mask
    blank = numpy.zeros(shape, dtype=numpy.float32)
    result = integrate(ai, blank, npt, npt_azim, unit=unit, method=method)
    azimuthal = numpy.array(result.azimuthal) if npt_azim else None
    integrator = CachedIntegrator(ai, digest, numpy.array(result.radial), azimuthal, pool)
    logger.info("Built %s integrator %s in %.3fs", method, digest[:12], time.perf_counter() - start)
    return integrator


def release_integrator(integrator: CachedIntegrator) -> None:
    """Give back an integrator borrowed with :func:`acquire_integrator`, for the next job."""
    integrator.pool.give_back(integrator)


def check_shape(ai: AzimuthalIntegrator, shape: tuple[int, ...], label: str, poni: str) -> None:
    """Refuse a frame that is not 2D or does not match the detector of the geometry ``poni``."""
    expected = ai.detector.max_shape
    if len(shape) != 2:
        raise InputError(f"frame '{label}' has shape {tuple(shape)}: expected a 2D image")
    if expected is not None and tuple(shape) != tuple(expected):
        raise InputError(
            f"frame '{label}' has shape {tuple(shape)} but the detector of '{poni}' "
            f"is {tuple(expected)}"
        )
