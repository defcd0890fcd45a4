"""Writing integrated frames into a NeXus HDF5 file: :class:`NexusWriter`.

Used by ``pyfai.integratemanyframes`` through :mod:`dahu.integration` (which re-exports it).

A file is written as ``NAME.part`` and renamed ``NAME`` when it is closed (not when its
writer failed: a damaged frame; it stays ``NAME.part``), so that ``NAME``
is never a file cut short by a killed process (HDF5 cannot read one: ``bad object header
version number``). While it is written, ``NAME.lock`` is held (``flock``) and names the
writer: a second writer of ``NAME``, in any process of the host, is refused with
:class:`OutputInUse`, whatever ``HDF5_USE_FILE_LOCKING`` says.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import h5py
import numpy
import pyFAI
import pyFAI.units

from .errors import DahuError
from .journal.files import fitted_name

logger = logging.getLogger(__name__)

__all__ = ["WRITE_BLOCK_BYTES", "WRITE_BLOCK_FRAMES", "NexusWriter", "OutputInUse", "write_curve"]

#: Largest block of integrated frames the NeXus writer keeps before writing them.
WRITE_BLOCK_FRAMES = 64
#: Largest block of integrated frames, in bytes, the NeXus writer keeps before writing them.
WRITE_BLOCK_BYTES = 8 * 2**20


class OutputInUse(DahuError):
    """The output file is being written by another writer (named in the message)."""


def side_path(path: str, suffix: str) -> str:
    """``path`` + ``suffix`` (``.part``, ``.lock``), its name cut as a job's too long file
    names are (:func:`dahu.journal.files.fitted_name`) if it would not fit in a file name."""
    directory, name = os.path.split(path)
    return os.path.join(directory, fitted_name(name, len(suffix)) + suffix)


def claim(path: str, owner: str, key: str = "output_file") -> int:
    """Hold ``path.lock`` for writing ``path``: its descriptor, locked, holding ``owner``.

    Raises :class:`OutputInUse` naming the holder if another descriptor (of any process)
    holds it (``key``, the input naming ``path``, begins the message). A lock file left by a
    killed writer is taken over: the kernel released its lock.
    """
    lock_path = side_path(path, ".lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another writer"
            os.close(fd)
            raise OutputInUse(f"{key} '{path}' is being written by {holder}") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            # a file system without locks (some FUSE ones): write, unguarded, as HDF5 would
            logger.warning("cannot lock %s (%s): a second writer is not refused", lock_path, error)
            break
        with contextlib.suppress(FileNotFoundError):  # else its holder removed it: again
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:  # a full disk: let go, or the lock would refuse every later writer of path
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner} (pid {os.getpid()} on {socket.gethostname()})\n".encode())
    except BaseException:
        release(path, fd)
        raise
    return fd


def release(path: str, fd: int) -> None:
    """Let go of the claim ``fd`` on ``path`` (from :func:`claim`), removing its lock file."""
    with contextlib.suppress(OSError):  # removed before unlocked: a waiter then retries
        os.unlink(side_path(path, ".lock"))
    os.close(fd)


def write_curve(path: str, owner: str, write: Callable[[str], None]) -> None:
    """Write the curve file ``path`` (``integrate_simple``'s ``curve_file``) with
    ``write(name)`` (pyFAI's ``integrate1d(..., filename=name)``), as :class:`NexusWriter`
    writes its file: claimed by ``owner``, written as ``c.dat.part`` (``c.part.xrdml`` for
    ``c.xrdml``: pyFAI picks that format by the ending), renamed ``path`` once written,
    removed if ``write`` fails. The header line pyFAI writes to name the file names ``path``."""
    target = os.path.realpath(path)
    if target.endswith(".nxs"):  # pyFAI would integrate, then fail: "Implement Nexus writer"
        raise OSError("pyFAI writes no NeXus curve (.nxs): name a .dat or .xrdml file")
    if os.path.exists(target) and not os.path.isfile(target):
        write(target)  # /dev/null, a pipe: written into (a rename would replace it)
        return
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise PermissionError(f"'{path}' is read-only: it is not replaced")
    root, ending = os.path.splitext(target)
    part = f"{root}.part{ending}" if ending == ".xrdml" else side_path(target, ".part")
    lock = claim(target, owner, "curve_file")
    try:
        write(part)
        with open(part, "rb+") as stream:  # a curve is a few tens of kB
            text = stream.read()
            named = text.replace(f"# --> {part}\n".encode(), f"# --> {path}\n".encode(), 1)
            if named != text:
                stream.seek(0)
                stream.write(named)
                stream.truncate()
        os.replace(part, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    finally:
        release(target, lock)


def _errno_in(text: str) -> int | None:
    """The ``errno = 28`` in an HDF5 error message (h5py gives some as a RuntimeError)."""
    number = text.partition("errno = ")[2].partition(",")[0]
    return int(number) if number.isdigit() else None


def _free_bytes(path: str) -> float:
    """Bytes free for this process on the file system of ``path``'s directory (infinite if
    the file system cannot say: some FUSE ones give 0 blocks in all)."""
    try:
        stat = os.statvfs(os.path.dirname(path))
    except OSError:
        return math.inf
    return stat.f_bavail * stat.f_frsize if stat.f_blocks and stat.f_frsize else math.inf


class NexusWriter:
    """Streams integrated frames into a NeXus file: NXroot > NXentry > NXprocess + NXdata.

    Frames are written in order, in blocks of up to ``WRITE_BLOCK_FRAMES`` frames (and
    about ``WRITE_BLOCK_BYTES``): one HDF5 write per frame would cost a few percent of
    the integration time. :meth:`close` writes what is left. ``cached`` is the
    :class:`dahu.integration.CachedIntegrator` whose ``radial`` (and ``azimuthal``) axes
    every frame has. ``owner`` (``"job 12"``) names the writer to a second one of ``path``.
    """

    def __init__(
        self,
        path: str,
        cached: Any,
        unit: pyFAI.units.Unit,
        n_frames: int,
        errors: bool,
        owner: str = "another writer",
    ) -> None:
        self.path = path
        # through a symbolic link, as HDF5 would write: the link stays, and two names of
        # one file are one claim
        self._target = target = os.path.realpath(path)
        if os.path.exists(target) and not os.path.isfile(target):  # renaming would replace it
            raise PermissionError(f"'{path}' is not a regular file: it is not replaced")
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise PermissionError(f"'{path}' is read-only: it is not replaced")
        self._claim = claim(target, owner)  # a read-only file system fails here
        # a full disk is found before any write (HDF5 cannot recover from a failed one)
        values = len(cached.radial) * (1 if cached.azimuthal is None else len(cached.azimuthal))
        need, free = (1 + errors) * 4 * values * n_frames + 2**18, _free_bytes(target)
        if need > free:
            release(target, self._claim)
            need_mb, free_mb = math.ceil(need * 10 / 2**20) / 10, math.floor(free * 10 / 2**20) / 10
            why = f"its disk is full: it needs {need_mb} MB, {free_mb} MB are free"
            raise OSError(errno.ENOSPC, why)
        self.part = side_path(target, ".part")  # the file while it is written
        self._lost = False  # a write failed: the file is damaged, HDF5 writes to /dev/null
        memory = io.BytesIO()  # the layout is made in memory, and written by Python: see _guard
        with h5py.File(memory, "w") as self.h5:
            self._layout(cached, unit, n_frames, errors)
        try:
            with open(self.part, "wb") as stream:
                stream.write(memory.getbuffer())
            self.h5 = h5py.File(self.part, "r+")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self.part)
            release(target, self._claim)
            raise
        self.entry = self.h5["entry"]
        self.process, self.data = self.entry["process"], self.entry["integrated"]
        self.intensity, self.errors = self.data["intensity"], self.data.get("errors")

    def _layout(self, cached: Any, unit: pyFAI.units.Unit, n_frames: int, errors: bool) -> None:
        """Create the groups, axes and (empty) datasets of the file, and the write buffers."""
        path = self.path
        self.h5.attrs.update(NX_class="NXroot", default="entry", creator="dahu")
        self.h5.attrs["file_name"] = os.path.basename(path)
        entry = self.h5.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="integrated")
        entry["program_name"] = "dahu pyfai.integratemanyframes"
        entry["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        process = entry.create_group("process")
        process.attrs["NX_class"] = "NXprocess"
        process["program"] = "pyFAI"
        process["version"] = pyFAI.version
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
        units = radial_name.rpartition("_")[2]  # exit_angle_horz_deg: deg; log(q.nm)_None
        radial.attrs.update(units="" if units == "None" else units, long_name=unit.label)
        data.create_dataset("frame", data=numpy.arange(n_frames), maxshape=(None,))
        layout = {"shape": (n_frames,) + frame_shape, "maxshape": (None,) + frame_shape}
        layout.update(dtype=numpy.float32, chunks=(1,) + frame_shape, fillvalue=numpy.nan)
        intensity = data.create_dataset("intensity", **layout)
        intensity.attrs["interpretation"] = "spectrum" if len(frame_shape) == 1 else "image"
        if errors:
            data.create_dataset("errors", **layout)
        frame_bytes = 4 * int(numpy.prod(frame_shape))
        block = max(1, min(n_frames, WRITE_BLOCK_FRAMES, WRITE_BLOCK_BYTES // frame_bytes))
        self._buffers = [numpy.empty((block,) + frame_shape, numpy.float32) for _ in "ie"]
        self._first = 0  # index of the first frame in the buffers
        self._count = 0  # frames in the buffers

    def write(self, index: int, result: Any) -> None:
        """Store the integration result of frame ``index`` (frames come in order)."""
        if self._count and index != self._first + self._count:
            self.flush()
        if not self._count:
            self._first = index
        self._buffers[0][self._count] = result.intensity
        if self.errors is not None:
            self._buffers[1][self._count] = result.sigma
        self._count += 1
        if self._count == len(self._buffers[0]):
            self.flush()

    def flush(self) -> None:
        """Write the buffered frames into the file."""
        if self._count:
            block = slice(self._first, self._first + self._count)
            with self._guard():
                self.intensity[block] = self._buffers[0][: self._count]
                if self.errors is not None:
                    self.errors[block] = self._buffers[1][: self._count]
                self.h5.flush()  # a full disk fails here, not when new objects are freed
            self._count = 0

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Make a failure to write (a full disk) one line naming the file, after which HDF5
        writes into /dev/null: it cannot be told to drop what it could not write, and a file
        whose close failed crashes the process when it is freed (SIGSEGV; h5py issues 914
        and 2160). So every write goes through here and :meth:`close` never fails."""
        try:
            yield
        except (OSError, RuntimeError) as error:  # h5py: either, as HDF5's words go
            if not self._lost:
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, self.h5.id.get_vfd_handle())
                finally:
                    os.close(null)
                self._lost = True
                with contextlib.suppress(Exception):  # a failed flush leaves HDF5 half-way
                    self.h5.flush()
            number = getattr(error, "errno", None) or _errno_in(str(error))
            why = os.strerror(number) if number else "HDF5 cannot write it"
            raise OSError(number, why, self.path) from error

    def close(
        self, n_done: int, config: dict, monitor: Sequence[float] | None, failed: bool = False
    ) -> None:
        """Trim the datasets to the ``n_done`` frames written, record the configuration, close.

        The file is then renamed ``NAME``; if the writer ``failed`` (a damaged frame), it stays
        ``NAME.part``, the frames done in it, and ``NAME`` is left as it was; if a write failed
        (a full disk), ``NAME.part`` is removed: it is damaged."""
        try:
            self.flush()
            with self._guard():
                if self._lost:
                    return
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
                self.h5.flush()  # what HDF5 still holds fails here, in the guard: not in close
        finally:
            try:
                self.h5.close()
                if self._lost:
                    with contextlib.suppress(OSError):
                        os.unlink(self.part)
                elif not failed:
                    os.replace(self.part, self._target)
            finally:
                release(self._target, self._claim)
