"""Azimuthal integration of diffraction images with pyFAI.

Plugins:

* ``pyfai.integrate_simple``: one image into one 1D curve file (pyFAI's ASCII format).
* ``pyfai.integratemanyframes``: a series of frames (image files, globs, ``file.h5::/dataset``
  stacks or ``file.h5::/dataset[start:stop]`` parts of them) into one NeXus HDF5 file, in 1D
  or 2D, with optional mask, dark, flat, polarisation, monitor normalisation and error model.
  It can be aborted between two frames.

The reading, parsing, integrator cache and NeXus writing live in :mod:`dahu.integration`;
this file holds the plugins and the validation of their inputs. A job borrows a cached
integrator for its whole run and gives it back in ``teardown``
(see :func:`dahu.integration.acquire_integrator`).

This file is loaded by Dahu's plugin factory under the module name ``pyfai``, outside
``sys.modules``: it only uses absolute imports.
"""

import inspect
import logging
import math
import os
import reprlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy
import pyFAI.units
from pyFAI.method_registry import IntegrationMethod

from dahu.engine import get_engine
from dahu.executors.slot import current_job_id
from dahu.factory import register
from dahu.inputs import misspelt_keys
from dahu.integration import (
    DEFAULT_METHOD,
    DEFAULT_NPT,
    DEFAULT_UNIT,
    ERROR_MODELS,
    MAX_BINS_2D,
    MAX_NPT,
    MAX_NPT_AZIM,
    AzimuthalIntegrator,
    CachedIntegrator,
    FrameSource,
    InputError,
    NexusWriter,
    OutputInUse,
    acquire_integrator,
    check_error_model,
    check_shape,
    expand_inputs,
    integrate,
    iter_frames,
    load_geometry,
    parse_method,
    parse_unit,
    positive_int,
    read_image,
    release_integrator,
)
from dahu.journal import job_file_stem
from dahu.nexus import write_curve
from dahu.plugin import RESERVED_KEYS, Plugin, plugin_from_function
from dahu.utils import get_workdir

# The factory loads this file as module "pyfai"; log under the dahu hierarchy all the same.
logger = logging.getLogger("dahu.plugins." + __name__.rpartition(".")[2])

#: The inputs that name files or directories; those marked True may be a list of them.
PATH_INPUTS = {
    "poni_file": False,
    "input_files": True,
    "image_file": True,
    "curve_file": False,
    "mask": False,
    "dark": False,
    "flat": False,
    "output_file": False,
    "output_dir": False,
}


def check_paths(params: dict[str, Any]) -> None:
    """Refuse a file or directory input that is not a path (a string, or a list of them).

    Python's ``open(3)`` reads file descriptor 3 of the server, then closes it: a number
    where a file name belongs must never get that far.
    """
    for key, lists in PATH_INPUTS.items():
        value = params.get(key)
        if value is None or isinstance(value, str):
            continue
        if lists and isinstance(value, (list, tuple)) and all(isinstance(i, str) for i in value):
            continue
        kind = "a path (a string) or a list of paths" if lists else "a path (a string)"
        raise InputError(f"{key} must be {kind}, got {type(value).__name__} {reprlib.repr(value)}")


def expand_home(params: dict[str, Any]) -> dict[str, Any]:
    """The file and directory inputs of ``params`` with a leading ``~`` or ``~user`` expanded
    (as a shell would, to the home of the user running the job), so that ``~/scan1.h5`` is
    written in that home, not in a new directory named ``~``. Non-paths are left as they are,
    for :func:`check_paths` to refuse."""
    expanded: dict[str, Any] = {}
    for key, lists in PATH_INPUTS.items():
        value = params.get(key)
        if isinstance(value, str):
            expanded[key] = os.path.expanduser(value)
        elif lists and isinstance(value, (list, tuple)):
            expanded[key] = [os.path.expanduser(v) if isinstance(v, str) else v for v in value]
    return expanded


def check_not_an_input(key: str, path: str, inputs: dict[str, Any]) -> None:
    """Refuse to write ``path`` (the input ``key``) over one of the files it reads:
    ``inputs`` maps input names to a path or a list of them. A raw data stack named as
    ``output_file`` would be truncated before its frames are read."""
    if not os.path.exists(path):
        return
    for name, value in inputs.items():
        for other in [value] if isinstance(value, str) else value or ():
            other = other.partition("::")[0]  # an HDF5 dataset: its file
            if os.path.exists(other) and os.path.samefile(path, other):
                raise InputError(
                    f"{key} '{path}' is also an input ({name}): it would be overwritten"
                )


def prepare_output(key: str, path: str, inputs: dict[str, Any], hint: str = "name a file") -> str:
    """``path`` (the input ``key``) made absolute, its directory made, or a one-line error:
    it ends with "/" (``hint`` says what to do), names a directory or one of the ``inputs``
    (see :func:`check_not_an_input`), or its directory cannot be made."""
    if path.endswith(os.sep):  # abspath would drop the "/" and write a file of that name
        raise InputError(f"{key} '{path}' ends with '/': {hint}")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise InputError(f"{key} '{path}' is a directory")
    check_not_an_input(key, path, inputs)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        while not os.path.exists(parent):  # makedirs says "File exists" for a file on the way
            parent = os.path.dirname(parent)
        why = error if os.path.isdir(parent) else f"'{parent}' is a file, not a directory"
        raise InputError(f"cannot write {key} '{path}': {why}") from error
    return path


def borrow_integrator(poni_file: str, ai: AzimuthalIntegrator, *args: Any) -> Any:
    """:func:`~dahu.integration.acquire_integrator` (``ai``, then its ``args``), with what
    pyFAI refuses while building the engine (``wavelength is needed for q calculation``, for
    a geometry without one; a ``RuntimeError`` in pyFAI 2024.1) as a one-line error
    naming the poni file."""
    try:
        return acquire_integrator(ai, *args)
    except (ValueError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "wavelength" not in str(error):
            raise
        raise InputError(f"cannot integrate with poni file '{poni_file}': {error}") from error


#: The method of ``integrate_simple`` when none is given: pyFAI's own default for
#: ``integrate1d``, which the original's ``integrate_simple`` used (it named no method).
SIMPLE_METHOD = inspect.signature(AzimuthalIntegrator.integrate1d).parameters["method"].default


def integrate_simple(
    poni_file: str,
    image_file: str,
    curve_file: str,
    npt: int = DEFAULT_NPT,
    unit: str = "2th_deg",
    method: Sequence[str] | str = SIMPLE_METHOD,
) -> dict[str, str]:
    """Integrate the first frame of ``image_file`` into the 1D curve file ``curve_file``
    (in ``2th_deg`` with pyFAI's default method by default, as in the original).

    The curve is written in pyFAI's ASCII format (radial, intensity) with the geometry in its
    header. Returns ``{"out_file": curve_file}``.
    """
    paths = {"poni_file": poni_file, "image_file": image_file, "curve_file": curve_file}
    check_paths(paths)
    paths = expand_home(paths)
    poni_file, image_file, curve_file = paths["poni_file"], paths["image_file"], paths["curve_file"]
    ai = load_geometry(poni_file)
    the_unit = parse_unit(unit)
    the_method = parse_method(method, 1)
    npt = positive_int(npt, "npt", MAX_NPT)
    sources = expand_inputs(image_file)
    label, frame = next(iter_frames(sources))
    check_shape(ai, frame.shape, label, poni_file)
    prepare_output("curve_file", curve_file, {
        "poni_file": poni_file, "image_file": [source.path for source in sources],
    })  # fmt: skip
    integrator, _ = borrow_integrator(poni_file, ai, frame.shape, npt, the_unit, the_method)
    job = current_job_id()
    try:  # as NAME.part, renamed once whole; a second writer is refused
        write_curve(curve_file, "another writer" if job is None else f"job {job}", lambda name: (
            integrator.ai.integrate1d(frame, npt, unit=the_unit, method=the_method, filename=name)
        ))  # fmt: skip
    except OutputInUse as error:
        raise InputError(str(error)) from error
    except OSError as error:
        raise InputError(f"cannot write curve_file '{curve_file}': {error}") from error
    finally:
        release_integrator(integrator)
    return {"out_file": curve_file}


#: ``dahu-reprocess`` writes a rerun's curve into its output directory, never over the
#: archived one (the key is required: it cannot be dropped)
integrate_simple.REPROCESS_RELOCATE = ["curve_file"]  # type: ignore[attr-defined]
plugin_from_function(integrate_simple)


#: The inputs ``pyfai.integratemanyframes`` reads; of the others, one that looks misspelt is
#: named in a warning (see :func:`dahu.inputs.misspelt_keys`).
MANY_INPUTS = frozenset(PATH_INPUTS).difference({"image_file", "curve_file"}).union({
    "npt", "unit", "method", "npt_azim", "polarization_factor", "do_SA", "monitor_values",
    "error_model",
})  # fmt: skip
#: pyFAI's names (``integrate1d`` arguments, the original's ``id15`` plugin) and what does it here
PYFAI_NAMES = {"npt_rad": "npt", "correctSolidAngle": "do_SA", "filename": "output_file",
    "dummy": "mask", "delta_dummy": "mask", "wavelength": "poni_file", "norm": "monitor_values",
    "normalization_factor": "monitor_values"}  # fmt: skip


def positive_number(value: Any, name: str) -> float:
    """``value`` as a finite positive float, or an error naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0) or isinstance(value, bool):
        raise InputError(f"{name} must be a positive number, got {reprlib.repr(value)}")
    return number


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
    check_paths(params)
    poni_file = params.get("poni_file")
    if poni_file is None:  # else: "poni file must be a path (a string), got NoneType"
        raise InputError("poni_file is required: the pyFAI geometry (.poni) file")
    ai = load_geometry(poni_file)
    unit = parse_unit(params.get("unit", DEFAULT_UNIT))
    npt = positive_int(params.get("npt", DEFAULT_NPT), "npt", MAX_NPT)
    npt_azim = params.get("npt_azim")
    npt_azim = None if npt_azim is None else positive_int(npt_azim, "npt_azim", MAX_NPT_AZIM)
    if npt_azim and npt * npt_azim > MAX_BINS_2D:
        raise InputError(
            f"npt * npt_azim must be at most {MAX_BINS_2D}, got {npt} * {npt_azim} bins"
        )
    method = parse_method(params.get("method", DEFAULT_METHOD), 2 if npt_azim else 1)
    error_model = params.get("error_model")
    if error_model is not None:
        error_model = str(error_model).lower()
        if error_model not in ERROR_MODELS:
            raise InputError(f"unknown error_model {error_model!r}: expected one of {ERROR_MODELS}")
        check_error_model(method, error_model)
    polarization = params.get("polarization_factor")
    if polarization is not None and (  # true is not a factor: 1 would be a silent choice
        isinstance(polarization, bool)
        or not (isinstance(polarization, (int, float)) and -1 <= polarization <= 1)
    ):
        raise InputError(f"polarization_factor must be a number in [-1, 1], got {polarization!r}")
    do_sa = params.get("do_SA", True)
    if do_sa not in (True, False):  # bool("false") is True
        raise InputError(f"do_SA must be true or false, got {reprlib.repr(do_sa)}")
    sources = expand_inputs(params.get("input_files"))
    shape = tuple(sources[0].shape)
    for source in sources:
        check_shape(ai, source.shape, source.label, poni_file)
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
    if "mask" in images:  # pyFAI casts a mask to int8: 256 or 0.5 would mask nothing
        images["mask"] = images["mask"] != 0
        if images["mask"].all():  # pyFAI would give curves of zeros (at a radial axis of 0)
            raise InputError(f"mask file '{params['mask']}' masks every pixel (0 is valid)")
    if "dark" in images and not numpy.isfinite(images["dark"]).any():  # curves of zeros too
        raise InputError(f"dark file '{params['dark']}' has no finite value")
    if "flat" in images and not (images["flat"] > 0).any():  # 0 masks a pixel (NaN > 0: no)
        raise InputError(f"flat file '{params['flat']}' has no positive value")
    settings = Settings(
        poni_file, ai, unit, npt, npt_azim, method, sources, images, None, error_model,
        polarization, bool(do_sa),
    )  # fmt: skip
    monitor = params.get("monitor_values")
    if monitor is not None:
        if not isinstance(monitor, (list, tuple, numpy.ndarray)):
            raise InputError(
                f"monitor_values must be a list of numbers, got {reprlib.repr(monitor)}"
            )
        values = numpy.asarray(
            [positive_number(v, f"monitor_values[{i}]") for i, v in enumerate(monitor)]
        )
        if len(values) != settings.total:
            raise InputError(f"monitor_values has {len(values)} values for {settings.total} frames")
        settings.monitor = values.tolist()
    return settings


@register
class IntegrateManyFrames(Plugin):
    """Azimuthal integration of many frames into one NeXus HDF5 file.

    Inputs: ``poni_file``, ``input_files`` (path, glob, ``file.h5::/dataset``, a frame
    selection ``file.h5::/dataset[start:stop]``, or a list of them), ``npt`` (1000),
    ``unit`` ("q_nm^-1"), ``method`` (("full", "csr", "cython")), ``npt_azim`` (2D
    integration when given), ``mask``, ``dark``, ``flat`` (image files),
    ``polarization_factor``, ``do_SA`` (True), ``monitor_values`` (one per frame),
    ``error_model`` ("poisson", "azimuthal", "hybrid"), ``output_file`` (or ``output_dir``;
    by default a job writes ``NNNNN_pyfai.integratemanyframes.h5`` next to its ``.inp`` file).

    Output: ``output_file``, ``frames`` (integrated), ``total_frames``, ``aborted``, ``unit``,
    ``npt``, ``npt_azim``, ``error_model``, ``timings`` (seconds) and ``integrator`` (cache
    key, whether it was reused).

    ``frame_callback``, if set, is called as ``frame_callback(index, total)`` after each frame.
    """

    #: Dropped by ``dahu-reprocess``: a new run writes next to its own job files, never
    #: over the archived result (or, with ``output_dir``, another job's).
    REPROCESS_IGNORE = ["output_file", "output_dir"]
    #: Not compared by ``dahu-reprocess --compare``: what differs on every run (output keys
    #: ``timings``, ``cached``; HDF5 members ``start_time``, ``end_time``, and
    #: ``configuration``, the job's input, whose job id and output path change).
    REPROCESS_COMPARE_IGNORE = ["timings", "cached", "start_time", "end_time", "configuration"]

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
        self.input.update(expand_home(self.input))
        for warning in misspelt_keys(self.input, MANY_INPUTS | RESERVED_KEYS, PYFAI_NAMES):
            self.log_warning(warning)
        try:
            settings = self.settings = parse_settings(self.input)
            self.integrator, self.reused = borrow_integrator(
                settings.poni_file, settings.ai, settings.sources[0].shape, settings.npt,
                settings.unit, settings.method, settings.npt_azim, settings.images.get("mask"),
            )  # fmt: skip
        except InputError as error:
            self.log_error(str(error))
        self.timings["setup"] = time.perf_counter() - start

    def _output_path(self) -> str:
        """``output_file``; else ``integrate_<job id>.h5`` in ``output_dir``; else, for a job,
        next to its ``.inp``/``.out`` files in the work directory; else a new directory.

        The path is made absolute (a relative one is taken from the current directory of
        the process: the server's), and its directory is created."""
        path = self.input.get("output_file")
        directory = self.input.get("output_dir")
        job = self.input.get("job_id")
        if not path and not directory and job is not None:
            # a job exists only once an engine does: its work directory is the right place
            path = job_file_stem(get_engine().workdir, job, self.input.get("plugin_name", "pyfai"))
            path += ".h5"
        elif not path:
            directory = os.path.abspath(directory or get_workdir())
            if os.path.exists(directory) and not os.path.isdir(directory):
                raise InputError(f"output_dir '{directory}' is not a directory")
            path = os.path.join(directory, f"integrate_{job or uuid.uuid4().hex[:12]}.h5")
        inputs = {name: self.input.get(name) for name in ("poni_file", "mask", "dark", "flat")}
        inputs["input_files"] = [source.path for source in self.settings.sources]
        return prepare_output("output_file", path, inputs, "name a file, or use output_dir")

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
        except (InputError, OSError) as error:  # OSError: the output file, a full disk
            self.log_error(str(error))

    def _process(self, settings: Settings, integrator: CachedIntegrator) -> None:
        timings = {"read": 0.0, "integration": 0.0, "write": 0.0}
        start = time.perf_counter()
        total = settings.total
        path = self._output_path()
        owner = f"job {self.input['job_id']}" if "job_id" in self.input else "another writer"
        try:
            writer = NexusWriter(
                path, integrator, settings.unit, total, bool(settings.error_model), owner
            )
        except OSError as error:
            raise InputError(f"cannot write output file '{path}': {error}") from error
        except OutputInUse as error:
            raise InputError(str(error)) from error
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
        done, failed = 0, True
        try:
            while not self.is_aborted:
                tick = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                label, frame = item
                check_shape(integrator.ai, frame.shape, label, settings.poni_file)
                tock = time.perf_counter()
                factor = 1.0 if settings.monitor is None else settings.monitor[done]
                result = integrate(
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
            failed = False
        finally:
            frames.close()
            tick = time.perf_counter()
            writer.close(done, self._config(), settings.monitor, failed)
            timings["write"] += time.perf_counter() - tick
            if failed and os.path.exists(writer.part):  # the error follows (a damaged frame)
                self.log_warning(f"failed after {done} of {total} frames, kept in {writer.part}")
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
