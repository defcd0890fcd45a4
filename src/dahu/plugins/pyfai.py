"""Azimuthal integration of diffraction images with pyFAI.

Plugins:

* ``pyfai.integrate_simple``: one image into one 1D curve file (pyFAI's ASCII format).
* ``pyfai.integratemanyframes``: a series of frames (image files, globs, ``file.h5::/dataset``
  stacks) into one NeXus HDF5 file, in 1D or 2D, with optional mask, dark, flat, polarisation,
  monitor normalisation and error model. It can be aborted between two frames.

Building the sparse-matrix (CSR) engine of an integrator costs far more than integrating one
frame, so ready-to-use integrators are kept in the shared :class:`~dahu.cache.DataCache`, keyed
by everything the engine depends on (geometry, shape, mask, npt, unit, method, npt_azim). A
pyFAI integrator must not integrate in two threads at once (its engine keeps a per-call buffer),
so each key holds a pool: a job borrows an integrator for its whole run and gives it back in
``teardown``; consecutive jobs reuse it, concurrent jobs get one each and run in parallel.

This file is loaded by Dahu's plugin factory under the module name ``pyfai``, outside
``sys.modules``: it only uses absolute imports.
"""

import glob
import hashlib
import json
import logging
import operator
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fabio
import h5py
import numpy
import pyFAI
import pyFAI.units
from pyFAI.integrator.azimuthal import AzimuthalIntegrator
from pyFAI.method_registry import IntegrationMethod, Method

from dahu.cache import DataCache
from dahu.factory import register
from dahu.plugin import Plugin, plugin_from_function
from dahu.utils import get_workdir

# The factory loads this file as module "pyfai"; log under the dahu hierarchy all the same.
logger = logging.getLogger("dahu.plugins." + __name__.rpartition(".")[2])

DEFAULT_METHOD = ("full", "csr", "cython")
DEFAULT_UNIT = "q_nm^-1"
DEFAULT_NPT = 1000
ERROR_MODELS = ("poisson", "azimuthal", "hybrid")
_CACHE_PREFIX = "pyfai.integrator"
#: Idle integrators kept per cache key: enough for every worker thread of a small server.
MAX_IDLE_INTEGRATORS = 4


class InputError(RuntimeError):
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

    def take(self) -> "CachedIntegrator | None":
        """An idle integrator, now lent to the caller, or None if all are in use."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give_back(self, integrator: "CachedIntegrator") -> None:
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
    """One input file (or HDF5 dataset) and what its header says about its frames."""

    label: str
    path: str
    h5path: str | None
    nframes: int
    shape: tuple[int, ...]


def load_geometry(poni_file: str) -> AzimuthalIntegrator:
    """Read a pyFAI ``.poni`` file, refusing files that do not describe a geometry."""
    if not poni_file or not os.path.isfile(poni_file):
        raise InputError(f"poni file '{poni_file}' does not exist")
    try:
        with open(poni_file, encoding="utf-8") as stream:
            # "Key: value" lines (poni) or '"key": value,' lines (JSON poni)
            keys = {line.partition(":")[0].strip(' \t{"').lower() for line in stream}
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read poni file '{poni_file}': {error}") from error
    if not keys & {"distance", "dist"} or not keys & {"detector", "pixelsize1"}:
        raise InputError(f"poni file '{poni_file}' has no distance or detector: not a geometry")
    try:
        return pyFAI.load(poni_file)
    except Exception as error:  # pyFAI raises anything from KeyError to JSONDecodeError
        raise InputError(f"invalid poni file '{poni_file}': {error}") from error


def parse_unit(unit: Any) -> pyFAI.units.Unit:
    """The pyFAI radial unit named ``unit`` (e.g. ``"q_nm^-1"``, ``"2th_deg"``, ``"r_mm"``)."""
    if not isinstance(unit, str) or unit not in pyFAI.units.RADIAL_UNITS:
        known = ", ".join(list(pyFAI.units.RADIAL_UNITS)[:11])
        raise InputError(f"unknown unit {unit!r}: expected one of {known}, ...")
    return pyFAI.units.to_unit(unit)


def parse_method(method: Any, dim: int) -> IntegrationMethod:
    """The available pyFAI method for ``method``: (split, algo, impl), "split,algo,impl" or "csr"."""
    if isinstance(method, str):
        parts = [p.strip() for p in method.replace(",", " ").split()]
        if len(parts) != 3:
            request = Method.parsed(method)
            if request.split is None and request.algo is None and request.impl is None:
                raise InputError(f"unknown method {method!r}: expected (split, algo, impl)")
            parts = [request.split, request.algo, request.impl]
    elif isinstance(method, Sequence) and len(method) == 3:
        parts = list(method)
    else:
        raise InputError(f"unknown method {method!r}: expected (split, algo, impl)")
    try:
        request = Method(dim, *parts)
    except (ValueError, TypeError) as error:
        raise InputError(f"unknown method {method!r}: {error}") from error
    selected = IntegrationMethod.select_one_available(request, dim=dim, degradable=False)
    if selected is None:
        raise InputError(f"method {method!r} is not available for {dim}D integration here")
    return selected


def positive_int(value: Any, name: str) -> int:
    """``value`` as a positive integer, or an error naming the input ``name``."""
    try:
        number = operator.index(value)
    except TypeError:
        number = 0
    if number < 1 or isinstance(value, bool):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return number


def read_image(path: str, what: str) -> numpy.ndarray:
    """First frame of the image file ``path`` (any fabio format); ``what`` names it in errors."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise InputError(f"{what} file '{path}' does not exist")
    try:
        with fabio.open(path) as image:
            return numpy.array(image.data)
    except Exception as error:  # fabio raises whatever the format reader raises
        raise InputError(f"cannot read {what} file '{path}': {error}") from error


def expand_inputs(input_files: Any) -> list[FrameSource]:
    """Describe the frames of ``input_files``: a path, a glob or a list of them.

    ``file.h5::/path/to/dataset`` names an HDF5 dataset: a 2D dataset is one frame, each slice
    of a 3D dataset along its first axis is one frame. Any other path is opened by fabio.
    """
    items = [input_files] if isinstance(input_files, str) else input_files
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"input_files must be a non-empty path, glob or list, got {input_files!r}")
    paths: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"input_files must hold paths, got {item!r}")
        if any(char in item for char in "*?[") and "::" not in item:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise InputError(f"no input file matches '{item}'")
            paths.extend(matches)
        else:
            paths.append(item)
    return [_describe(path) for path in paths]


def _describe(label: str) -> FrameSource:
    path, sep, h5path = label.partition("::")
    if not os.path.isfile(path):
        raise InputError(f"image file '{path}' does not exist")
    if sep:
        try:
            with h5py.File(path, "r") as h5:
                dataset = h5.get(h5path)
                if not isinstance(dataset, h5py.Dataset):
                    raise InputError(f"HDF5 dataset '{h5path}' not found in '{path}'")
                shape = dataset.shape
        except OSError as error:
            raise InputError(f"cannot read HDF5 file '{path}': {error}") from error
        if len(shape) not in (2, 3):
            raise InputError(f"HDF5 dataset '{label}' has shape {shape}: expected 2D or 3D")
        if len(shape) == 2:
            return FrameSource(label, path, h5path, 1, shape)
        return FrameSource(label, path, h5path, shape[0], shape[1:])
    try:
        header = fabio.openheader(path)
        return FrameSource(label, path, None, int(header.nframes), tuple(header.shape))
    except Exception as error:  # fabio raises whatever the format reader raises
        raise InputError(f"cannot read image file '{path}': {error}") from error


def iter_frames(sources: Sequence[FrameSource]) -> Iterator[tuple[str, numpy.ndarray]]:
    """Yield ``(label, frame)`` for every frame of ``sources``, reading one frame at a time."""
    for source in sources:
        try:
            if source.h5path is not None:
                with h5py.File(source.path, "r") as h5:
                    dataset = h5[source.h5path]
                    for index in range(source.nframes):
                        frame = dataset[index] if dataset.ndim == 3 else dataset[()]
                        yield f"{source.label}[{index}]", frame
            else:
                with fabio.open(source.path) as image:
                    for index in range(source.nframes):
                        frame = image.data if index == 0 else image.getframe(index).data
                        yield f"{source.label}[{index}]", frame
        except (OSError, KeyError, ValueError) as error:
            raise InputError(f"cannot read a frame of '{source.label}': {error}") from error


def _integrate(ai: AzimuthalIntegrator, frame: numpy.ndarray, npt: int, npt_azim: int | None, **kw):
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
    start = time.perf_counter()
    if mask is not None:
        if ai.detector.mask is not None:
            mask = numpy.logical_or(mask, ai.detector.mask)
        ai.detector.mask = mask
    blank = numpy.zeros(shape, dtype=numpy.float32)
    result = _integrate(ai, blank, npt, npt_azim, unit=unit, method=method)
    azimuthal = numpy.array(result.azimuthal) if npt_azim else None
    integrator = CachedIntegrator(ai, digest, numpy.array(result.radial), azimuthal, pool)
    logger.info("Built %s integrator %s in %.3fs", method, digest[:12], time.perf_counter() - start)
    return integrator, False


def release_integrator(integrator: CachedIntegrator) -> None:
    """Give back an integrator borrowed with :func:`acquire_integrator`, for the next job."""
    integrator.pool.give_back(integrator)


def integrate_simple(
    poni_file: str,
    image_file: str,
    curve_file: str,
    npt: int = DEFAULT_NPT,
    unit: str = DEFAULT_UNIT,
    method: Sequence[str] | str = DEFAULT_METHOD,
) -> dict[str, str]:
    """Integrate the first frame of ``image_file`` into the 1D curve file ``curve_file``.

    The curve is written in pyFAI's ASCII format (radial, intensity) with the geometry in its
    header. Returns ``{"out_file": curve_file}``.
    """
    ai = load_geometry(poni_file)
    the_unit = parse_unit(unit)
    the_method = parse_method(method, 1)
    npt = positive_int(npt, "npt")
    label, frame = next(iter_frames(expand_inputs(image_file)))
    _check_shape(ai, frame.shape, label, poni_file)
    os.makedirs(os.path.dirname(os.path.abspath(curve_file)), exist_ok=True)
    integrator, _ = acquire_integrator(ai, frame.shape, npt, the_unit, the_method)
    try:
        integrator.ai.integrate1d(frame, npt, unit=the_unit, method=the_method, filename=curve_file)
    finally:
        release_integrator(integrator)
    return {"out_file": curve_file}


plugin_from_function(integrate_simple)


def _check_shape(ai: AzimuthalIntegrator, shape: tuple[int, ...], label: str, poni: str) -> None:
    expected = ai.detector.max_shape
    if len(shape) != 2:
        raise InputError(f"frame '{label}' has shape {tuple(shape)}: expected a 2D image")
    if expected is not None and tuple(shape) != tuple(expected):
        raise InputError(
            f"frame '{label}' has shape {tuple(shape)} but the detector of '{poni}' "
            f"is {tuple(expected)}"
        )


class _NexusWriter:
    """Streams integrated frames into a NeXus file: NXroot > NXentry > NXprocess + NXdata."""

    def __init__(
        self,
        path: str,
        cached: CachedIntegrator,
        unit: pyFAI.units.Unit,
        n_frames: int,
        errors: bool,
    ) -> None:
        self.path = path
        self.h5 = h5py.File(path, "w")
        self.h5.attrs.update(NX_class="NXroot", default="entry", creator="dahu")
        self.h5.attrs["file_name"] = os.path.basename(path)
        entry = self.h5.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="integrated")
        entry["program_name"] = "dahu pyfai.integratemanyframes"
        entry["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.entry = entry
        self.process = entry.create_group("process")
        self.process.attrs["NX_class"] = "NXprocess"
        self.process["program"] = "pyFAI"
        self.process["version"] = pyFAI.version
        data = entry.create_group("integrated")
        data.attrs.update(NX_class="NXdata", signal="intensity")
        radial_name = unit.name
        frame_shape = (len(cached.radial),)
        axes = ["frame", radial_name]
        if cached.azimuthal is not None:
            frame_shape = (len(cached.azimuthal), len(cached.radial))
            axes = ["frame", "chi_deg", radial_name]
            chi = data.create_dataset("chi_deg", data=cached.azimuthal)
            chi.attrs.update(units="deg", long_name="Azimuthal angle chi (deg)")
        data.attrs["axes"] = axes
        for index, name in enumerate(axes):
            data.attrs[f"{name}_indices"] = index
        radial = data.create_dataset(radial_name, data=cached.radial)
        radial.attrs.update(units=radial_name.partition("_")[2], long_name=unit.label)
        data.create_dataset("frame", data=numpy.arange(n_frames), maxshape=(None,))
        layout = {"shape": (n_frames,) + frame_shape, "maxshape": (None,) + frame_shape}
        layout.update(dtype=numpy.float32, chunks=(1,) + frame_shape, fillvalue=numpy.nan)
        self.intensity = data.create_dataset("intensity", **layout)
        self.intensity.attrs["interpretation"] = "spectrum" if len(frame_shape) == 1 else "image"
        self.errors = data.create_dataset("errors", **layout) if errors else None
        self.data = data

    def write(self, index: int, result: Any) -> None:
        """Store the integration result of frame ``index``."""
        self.intensity[index] = result.intensity
        if self.errors is not None:
            self.errors[index] = result.sigma

    def close(self, n_done: int, config: dict, monitor: Sequence[float] | None) -> None:
        """Trim the datasets to the ``n_done`` frames written, record the configuration, close."""
        try:
            for name in ("frame", "intensity", "errors"):
                if name in self.data:
                    self.data[name].resize(n_done, axis=0)
            if monitor is not None:
                self.data["monitor"] = numpy.asarray(monitor[:n_done], dtype=float)
            note = self.process.create_group("configuration")
            note.attrs["NX_class"] = "NXnote"
            note["type"] = "text/json"
            note["data"] = json.dumps(config, default=str)
            self.entry["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        finally:
            self.h5.close()


@dataclass
class Settings:
    """The validated inputs of :class:`IntegrateManyFrames`."""

    poni_file: str
    ai: AzimuthalIntegrator
    unit: pyFAI.units.Unit
    npt: int
    npt_azim: int | None
    method: IntegrationMethod
    sources: list[FrameSource]
    images: dict[str, numpy.ndarray]
    monitor: list[float] | None
    error_model: str | None
    polarization: float | None
    do_sa: bool

    @property
    def total(self) -> int:
        """Number of frames in the input."""
        return sum(source.nframes for source in self.sources)


def parse_settings(params: dict[str, Any]) -> Settings:
    """Validate the input of :class:`IntegrateManyFrames`; raise :class:`InputError` if bad."""
    poni_file = params.get("poni_file")
    ai = load_geometry(poni_file)
    unit = parse_unit(params.get("unit", DEFAULT_UNIT))
    npt = positive_int(params.get("npt", DEFAULT_NPT), "npt")
    npt_azim = params.get("npt_azim")
    npt_azim = None if npt_azim is None else positive_int(npt_azim, "npt_azim")
    method = parse_method(params.get("method", DEFAULT_METHOD), 2 if npt_azim else 1)
    error_model = params.get("error_model")
    if error_model is not None:
        error_model = str(error_model).lower()
        if error_model not in ERROR_MODELS:
            raise InputError(f"unknown error_model {error_model!r}: expected one of {ERROR_MODELS}")
    polarization = params.get("polarization_factor")
    if polarization is not None and not (
        isinstance(polarization, (int, float)) and -1 <= polarization <= 1
    ):
        raise InputError(f"polarization_factor must be a number in [-1, 1], got {polarization!r}")
    sources = expand_inputs(params.get("input_files"))
    shape = tuple(sources[0].shape)
    for source in sources:
        _check_shape(ai, source.shape, source.label, poni_file)
        if tuple(source.shape) != shape:
            raise InputError(f"frame shape {source.shape} of '{source.label}' differs from {shape}")
    images = {}
    for name in ("mask", "dark", "flat"):
        if params.get(name) is not None:
            images[name] = read_image(params[name], name)
            if images[name].shape != shape:
                raise InputError(
                    f"{name} file '{params[name]}' has shape {images[name].shape} "
                    f"but the frames are {shape}"
                )
    settings = Settings(
        poni_file, ai, unit, npt, npt_azim, method, sources, images, None, error_model,
        polarization, bool(params.get("do_SA", True)),
    )  # fmt: skip
    monitor = params.get("monitor_values")
    if monitor is not None:
        try:
            values = numpy.asarray(monitor, dtype=float)
        except (TypeError, ValueError):
            values = numpy.zeros(0)
        if values.ndim != 1 or not numpy.all(numpy.isfinite(values) & (values > 0)):
            raise InputError(f"monitor_values must be a list of positive numbers, got {monitor!r}")
        if len(values) != settings.total:
            raise InputError(f"monitor_values has {len(values)} values for {settings.total} frames")
        settings.monitor = values.tolist()
    return settings


@register
class IntegrateManyFrames(Plugin):
    """Azimuthal integration of many frames into one NeXus HDF5 file.

    Inputs: ``poni_file``, ``input_files`` (path, glob, ``file.h5::/dataset`` or a list of
    them), ``npt`` (1000), ``unit`` ("q_nm^-1"), ``method`` (("full", "csr", "cython")),
    ``npt_azim`` (2D integration when given), ``mask``, ``dark``, ``flat`` (image files),
    ``polarization_factor``, ``do_SA`` (True), ``monitor_values`` (one per frame),
    ``error_model`` ("poisson", "azimuthal", "hybrid"), ``output_file`` (or ``output_dir``).

    Output: ``output_file``, ``frames`` (integrated), ``total_frames``, ``aborted``, ``unit``,
    ``timings`` (seconds) and ``integrator`` (cache key, whether it was reused).

    ``frame_callback``, if set, is called as ``frame_callback(index, total)`` after each frame.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frame_callback: Callable[[int, int], None] | None = None
        self.settings: Settings | None = None
        self.integrator: CachedIntegrator | None = None
        self.reused = False
        self.timings: dict[str, float] = {}

    def setup(self, kwargs: dict | None = None) -> None:
        """Validate the inputs and fetch (or build) the integrator."""
        super().setup(kwargs)
        start = time.perf_counter()
        try:
            settings = self.settings = parse_settings(self.input)
            self.integrator, self.reused = acquire_integrator(
                settings.ai, settings.sources[0].shape, settings.npt, settings.unit,
                settings.method, settings.npt_azim, settings.images.get("mask"),
            )  # fmt: skip
        except InputError as error:
            self.log_error(str(error))
        self.timings["setup"] = time.perf_counter() - start

    def _output_path(self) -> str:
        path = self.input.get("output_file")
        if not path:
            directory = self.input.get("output_dir") or get_workdir()
            job = self.input.get("job_id") or uuid.uuid4().hex[:12]
            path = os.path.join(directory, f"integrate_{job}.h5")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return path

    def _config(self) -> dict[str, Any]:
        """What the output file records about how it was made: the input, completed."""
        config = {k: v for k, v in self.input.items() if k != "input_files"}
        config.update(
            geometry=self.settings.ai.get_config(),
            method=list(self.settings.method.method[1:4]),
            input_files=[source.label for source in self.settings.sources],
        )
        return config

    def process(self) -> None:
        """Integrate every frame, checking for an abort request before each one."""
        if self.settings is None or self.integrator is None:
            self.log_error("pyfai.integratemanyframes: process() called without a valid setup()")
        try:
            self._process(self.settings, self.integrator)
        except InputError as error:
            self.log_error(str(error))

    def _process(self, settings: Settings, integrator: CachedIntegrator) -> None:
        timings = {"read": 0.0, "integration": 0.0, "write": 0.0}
        start = time.perf_counter()
        total = settings.total
        path = self.input.get("output_file")
        try:
            path = self._output_path()
            writer = _NexusWriter(
                path, integrator, settings.unit, total, bool(settings.error_model)
            )
        except OSError as error:
            raise InputError(f"cannot write output file '{path}': {error}") from error
        timings["write"] += time.perf_counter() - start
        frames = iter_frames(settings.sources)
        kwargs = {
            "unit": settings.unit,
            "method": settings.method,
            "correctSolidAngle": settings.do_sa,
            "polarization_factor": settings.polarization,
            "dark": settings.images.get("dark"),
            "flat": settings.images.get("flat"),
            "error_model": settings.error_model,
        }
        done = 0
        try:
            while not self.is_aborted:
                tick = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                label, frame = item
                _check_shape(integrator.ai, frame.shape, label, settings.poni_file)
                tock = time.perf_counter()
                factor = 1.0 if settings.monitor is None else settings.monitor[done]
                result = _integrate(
                    integrator.ai, frame, settings.npt, settings.npt_azim,
                    normalization_factor=factor, **kwargs,
                )  # fmt: skip
                tack = time.perf_counter()
                writer.write(done, result)
                timings["read"] += tock - tick
                timings["integration"] += tack - tock
                timings["write"] += time.perf_counter() - tack
                done += 1
                if self.frame_callback is not None:
                    self.frame_callback(done - 1, total)
        finally:
            frames.close()
            tick = time.perf_counter()
            writer.close(done, self._config(), settings.monitor)
            timings["write"] += time.perf_counter() - tick
        self.timings.update(timings, process=time.perf_counter() - start)
        aborted = self.is_aborted and done < total
        if aborted:
            self.log_warning(f"aborted after {done} of {total} frames; partial output in {path}")
        self.output.update(
            output_file=path,
            frames=done,
            total_frames=total,
            aborted=aborted,
            unit=settings.unit.name,
            npt=settings.npt,
            npt_azim=settings.npt_azim,
            error_model=settings.error_model,
            timings=dict(self.timings),
            integrator={"key": integrator.key, "cached": self.reused},
        )

    def abort(self) -> None:
        """Stop after the frame being integrated; what was done so far is written and returned."""
        super().abort()
        logger.info("job %s: abort requested", self.input.get("job_id"))

    def teardown(self) -> None:
        """Give the integrator back for the next job and drop the input description."""
        if self.integrator is not None:
            release_integrator(self.integrator)
        self.settings = None
        self.integrator = None
        super().teardown()
