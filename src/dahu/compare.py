"""Compare a job's new output with the one it gave before (regression testing).

Two outputs are the same when they have the same keys and equal values, where

* numbers (and arrays of numbers) are equal within a relative and an absolute tolerance,
  the archived value being the reference: ``|new - old| <= atol + rtol * |old|``
  (NaN equals NaN, booleans are compared exactly),
* two different strings that both name existing files are equal when the files are:
  HDF5 files dataset by dataset, by value (attributes are not compared); text files of
  numbers (pyFAI's ``.dat``/``.xy``/``.chi`` curves: ``#`` comment lines, then columns)
  as tables of numbers, their comment lines skipped (pyFAI writes the file's own path and
  the date there); other files byte by byte,
* keys (and HDF5 members) whose name is in ``ignore`` are skipped at any depth.

:func:`first_difference` returns the first :class:`Difference` (a key path such as
``result.peaks[3]`` or ``nexus:/entry/data[2][7]``, and a short reason) or None;
:func:`compare` returns only the path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_IGNORE",
    "DEFAULT_RTOL",
    "Difference",
    "compare",
    "compare_files",
    "first_difference",
]

DEFAULT_RTOL = 1e-6
"""Default relative tolerance on numbers."""

DEFAULT_ATOL = 1e-12
"""Default absolute tolerance on numbers."""

DEFAULT_IGNORE = frozenset({"job_id", "job_runtime", "aborted"})  # differ on every run
"""Keys never compared: a reprocessed job is renumbered."""


class _LazyNumpy:
    """Stands for numpy until first used, then imports it and is replaced by it: importing
    this module (``dahu-reprocess`` does, for its defaults) does not import numpy."""

    def __getattr__(self, name: str) -> Any:
        import numpy

        globals()["numpy"] = numpy
        return getattr(numpy, name)


numpy: Any = _LazyNumpy()

_BLOCK = 1 << 22  # elements of an HDF5 dataset read at once
_TABLE_BYTES = 64 << 20  # a larger text file is compared byte by byte only
_SHOWN = 60  # characters of a value shown in a reason


@dataclass(frozen=True)
class Difference:
    """Where two outputs first differ (``path``) and how (``reason``)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '(output)'}: {self.reason}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _key(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _index(path: str, index: tuple[int, ...]) -> str:
    return path + "".join(f"[{i}]" for i in index)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, numpy.number)) and not isinstance(
        value, (bool, numpy.bool_)
    )


def _holds_bool(value: Any) -> bool:
    """Whether a list (or tuple, at any depth) holds a boolean among numbers."""
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(item) for item in value)
    return isinstance(value, (bool, numpy.bool_))


class _Comparer:
    """One comparison: the tolerances and the names to skip."""

    def __init__(self, rtol: float, atol: float, ignore: Collection[str], files: bool):
        self.rtol = rtol
        self.atol = atol
        self.ignore = frozenset(ignore)
        self.files = files

    # ---- JSON-like values ----------------------------------------------------------
    def value(self, old: Any, new: Any, path: str) -> Difference | None:
        if isinstance(old, dict) and isinstance(new, dict):
            return self.mapping(old, new, path)
        if isinstance(old, (list, tuple, numpy.ndarray)) and isinstance(
            new, (list, tuple, numpy.ndarray)
        ):
            return self.sequence(old, new, path)
        if _is_number(old) and _is_number(new):
            if self.close(old, new):
                return None
            return Difference(path, f"{_show(old)} != {_show(new)}")
        if isinstance(old, str) and isinstance(new, str):
            return self.string(old, new, path)
        if type(old) is not type(new) and not (
            isinstance(old, (bool, numpy.bool_)) and isinstance(new, (bool, numpy.bool_))
        ):
            return Difference(
                path, f"type {type(old).__name__} != {type(new).__name__} ({_show(new)})"
            )
        if old == new:
            return None
        return Difference(path, f"{_show(old)} != {_show(new)}")

    def mapping(self, old: dict, new: dict, path: str) -> Difference | None:
        for key, value in old.items():
            if key in self.ignore:
                continue
            if key not in new:
                return Difference(_key(path, key), "missing from the new output")
            found = self.value(value, new[key], _key(path, key))
            if found is not None:
                return found
        for key in new:
            if key not in old and key not in self.ignore:
                return Difference(_key(path, key), "not in the archived output")
        return None

    def sequence(self, old: Any, new: Any, path: str) -> Difference | None:
        if len(old) != len(new):
            return Difference(path, f"length {len(old)} != {len(new)}")
        arrays = self.numeric_arrays(old, new)
        if arrays is not None:
            return self.arrays(arrays[0], arrays[1], path)
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = self.value(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None

    @staticmethod
    def numeric_arrays(old: Any, new: Any) -> tuple[numpy.ndarray, numpy.ndarray] | None:
        """Both sequences as numeric arrays of one shape, or None (then compared item by item)."""
        try:
            a, b = numpy.asarray(old), numpy.asarray(new)
        except (ValueError, TypeError):  # ragged
            return None
        if a.dtype.kind not in "iufc" or b.dtype.kind not in "iufc" or a.shape != b.shape:
            return None
        if _holds_bool(old) or _holds_bool(new):  # [1, True] is not [1, 1]
            return None
        return a, b

    def close(self, old: Any, new: Any) -> bool:
        """Whether two numbers are equal within the tolerances (NaN equals NaN)."""
        if isinstance(old, int) and isinstance(new, int) and old == new:
            return True  # exact, even for integers too large for a float
        if isinstance(old, complex) or isinstance(new, complex):
            return bool(numpy.isclose(new, old, self.rtol, self.atol, equal_nan=True))
        try:
            a, b = float(old), float(new)
        except OverflowError:
            return old == new
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(b - a) <= self.atol + self.rtol * abs(a)

    def arrays(
        self, old: numpy.ndarray, new: numpy.ndarray, path: str, offset: int = 0
    ) -> Difference | None:
        """Compare two numeric arrays of one shape; the first element out of tolerance.

        ``offset`` is added to the first index (the arrays are a block of a larger one).
        """
        same = numpy.isclose(new, old, self.rtol, self.atol, equal_nan=True)
        if same.all():
            return None
        index = tuple(int(i) for i in numpy.argwhere(~same)[0])
        shown = (index[0] + offset, *index[1:]) if index else index
        return Difference(
            _index(path, shown), f"{_show(old[index].item())} != {_show(new[index].item())}"
        )

    def string(self, old: str, new: str, path: str) -> Difference | None:
        if old == new:
            return None
        if self.files and os.path.isfile(old) and os.path.isfile(new):
            try:
                found = self.file(old, new)
            except OSError as err:  # unreadable: a truncated HDF5 file (a disk filled up)...
                line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                return Difference(path, f"cannot compare the files: {line}")
            if found is None:
                return None
            sep = ":" if found.path.startswith("/") else ""
            return Difference(f"{path}{sep}{found.path}", found.reason)
        if self.files and _same_directory_moved(old, new):
            return None
        if self.files and os.path.isabs(old) and os.path.isfile(new) and not os.path.exists(old):
            return Difference(path, f"the archived file {old} is gone")  # cleaned, moved
        return Difference(path, f"{_show(old)} != {_show(new)}")

    # ---- files -----------------------------------------------------------------------
    def file(self, old: str, new: str) -> Difference | None:
        import h5py  # only when a file is compared: h5py is slow to import

        old_h5, new_h5 = h5py.is_hdf5(old), h5py.is_hdf5(new)
        if old_h5 and new_h5:
            with h5py.File(old, "r") as a, h5py.File(new, "r") as b:
                return self.group(a, b, "/", set())
        if old_h5:
            return Difference("", "the archived file is HDF5, the new one is not")
        if new_h5:
            return Difference("", "the new file is HDF5, the archived one is not")
        found = _bytes(old, new)
        if found is None:
            return None
        tables = _table(old), _table(new)
        if tables[0] is None or tables[1] is None:
            return found
        if tables[0].shape != tables[1].shape:
            return Difference("", f"table of {_shape(tables[0])} != {_shape(tables[1])}")
        return self.arrays(tables[0], tables[1], "")

    def group(self, old: Any, new: Any, path: str, seen: set) -> Difference | None:
        import h5py

        # hard links may make cycles: each group is visited once
        ident = (old.file.filename, hash(old.id))
        if ident in seen:
            return None
        seen.add(ident)
        names = [n for n in old if n not in self.ignore]
        for name in names:
            member = path.rstrip("/") + "/" + name
            if name not in new:
                return Difference(member, "missing from the new file")
            old_link, new_link = old.get(name, getlink=True), new.get(name, getlink=True)
            if type(old_link) is not type(new_link):
                return Difference(member, "link kinds differ")
            if isinstance(old_link, h5py.SoftLink):
                if old_link.path != new_link.path:
                    return Difference(member, f"link {old_link.path} != {new_link.path}")
                continue
            if isinstance(old_link, h5py.ExternalLink):
                if (old_link.filename, old_link.path) != (new_link.filename, new_link.path):
                    return Difference(member, "external links differ")
                continue
            a, b = old[name], new[name]
            if isinstance(a, h5py.Group) != isinstance(b, h5py.Group):
                return Difference(member, "a group in one file, a dataset in the other")
            found = (
                self.group(a, b, member, seen)
                if isinstance(a, h5py.Group)
                else self.dataset(a, b, member)
            )
            if found is not None:
                return found
        for name in new:
            if name not in old and name not in self.ignore:
                return Difference(path.rstrip("/") + "/" + name, "not in the archived file")
        return None

    def dataset(self, old: Any, new: Any, path: str) -> Difference | None:
        if old.shape != new.shape:
            return Difference(path, f"shape {old.shape} != {new.shape}")
        if old.shape is None:  # empty dataset
            return None
        numeric = old.dtype.kind in "iufc" and new.dtype.kind in "iufc"
        if not numeric:
            return self.value(_plain(old[()]), _plain(new[()]), path)
        if old.ndim == 0:
            return self.value(old[()].item(), new[()].item(), path)
        for offset, block_old, block_new in _blocks(old, new):
            found = self.arrays(block_old, block_new, path, offset)
            if found is not None:
                return found
        return None


def _same_directory_moved(old: str, new: str) -> bool:
    """Both name existing directories of one name: a directory the plugin writes in,
    given a new place for the rerun (``REPROCESS_RELOCATE``).  Its files are compared
    where the output names them."""
    old_name, new_name = os.path.basename(old.rstrip("/")), os.path.basename(new.rstrip("/"))
    return bool(old_name) and old_name == new_name and os.path.isdir(old) and os.path.isdir(new)


def _plain(value: Any) -> Any:
    """An HDF5 value as JSON-like data (bytes decoded, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, numpy.ndarray):
        if value.dtype.names:
            return [_plain(v) for v in value.tolist()]
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def _blocks(old: Any, new: Any) -> Iterator[tuple[int, numpy.ndarray, numpy.ndarray]]:
    """Read two datasets of one shape in blocks along the first axis."""
    row = max(1, int(numpy.prod(old.shape[1:])))
    step = max(1, _BLOCK // row)
    for start in range(0, old.shape[0], step):
        yield start, old[start : start + step], new[start : start + step]


def _table(path: str) -> numpy.ndarray | None:
    """A text file of numbers as a 2-D array (rows of one length; blank lines and ``#``
    comment lines skipped), or None if it is not one."""
    if os.path.getsize(path) > _TABLE_BYTES:
        return None
    rows = []
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                rows.append([float(field) for field in line.split()])
            except ValueError:
                return None
    if not rows or len({len(row) for row in rows}) != 1:
        return None
    return numpy.array(rows)


def _shape(table: numpy.ndarray) -> str:
    return f"{table.shape[0]} rows x {table.shape[1]} columns"


def _bytes(old: str, new: str) -> Difference | None:
    size_old, size_new = os.path.getsize(old), os.path.getsize(new)
    if size_old != size_new:
        return Difference("", f"file sizes differ: {size_old} != {size_new} bytes")
    offset = 0
    with open(old, "rb") as a, open(new, "rb") as b:
        while True:
            chunk_a, chunk_b = a.read(1 << 20), b.read(1 << 20)
            if chunk_a != chunk_b:
                at = next(
                    (i for i, (x, y) in enumerate(zip(chunk_a, chunk_b, strict=False)) if x != y),
                    min(len(chunk_a), len(chunk_b)),
                )
                return Difference("", f"file contents differ at byte {offset + at}")
            if not chunk_a:
                return None
            offset += len(chunk_a)


def first_difference(
    old: Any,
    new: Any,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    ignore: Collection[str] = DEFAULT_IGNORE,
    files: bool = True,
) -> Difference | None:
    """Return where ``new`` first differs from the archived ``old``, or None if the same.

    :param rtol: relative tolerance on numbers (relative to the archived value)
    :param atol: absolute tolerance on numbers
    :param ignore: keys and HDF5 member names not compared, at any depth
    :param files: compare the files that differing path strings name, by content
    """
    return _Comparer(rtol, atol, ignore, files).value(old, new, "")


def compare(
    old: Any,
    new: Any,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    ignore: Collection[str] = DEFAULT_IGNORE,
    files: bool = True,
) -> str | None:
    """Return the key path where ``new`` first differs from ``old`` ("" for the whole
    value), or None if they are the same (see :func:`first_difference`)."""
    found = first_difference(old, new, rtol, atol, ignore, files)
    return None if found is None else found.path


def compare_files(
    old: str,
    new: str,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    ignore: Collection[str] = DEFAULT_IGNORE,
) -> Difference | None:
    """Compare two files by content (HDF5 by value); the first difference or None."""
    return _Comparer(rtol, atol, ignore, True).file(old, new)
