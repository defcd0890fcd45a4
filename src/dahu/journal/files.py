"""The ``.inp``/``.out`` files of a job in the work directory, as Dahu users know them."""

from __future__ import annotations

import os
from typing import Any

from ..utils import NumpyEncoder

__all__ = ["job_file_stem", "write_job_files"]

_PRETTY = NumpyEncoder(indent=4)  # the original's indentation
_known_dirs: set[str] = set()


def job_file_stem(workdir: str, job_id: int, plugin: str) -> str:
    """``<workdir>/NNNN/NNNNN_<plugin>``: the path of a job's files, without extension."""
    return os.path.join(workdir, f"{job_id // 1000:04d}", f"{job_id:05d}_{plugin}")


def write_job_files(
    workdir: str, job_id: int, plugin: str, input_data: Any, output_data: Any
) -> tuple[str, str]:
    """Write ``<stem>.inp`` and ``<stem>.out`` (indented, numpy-aware JSON); return the paths."""
    stem = job_file_stem(workdir, job_id, plugin)
    directory = os.path.dirname(stem)
    if directory not in _known_dirs:
        os.makedirs(directory, exist_ok=True)
        _known_dirs.add(directory)
    paths = []
    for ext, data in ((".inp", input_data), (".out", output_data)):
        path = stem + ext
        text = _PRETTY.encode(data).encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the directory was removed behind our back
            os.makedirs(directory, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        paths.append(path)
    return paths[0], paths[1]
