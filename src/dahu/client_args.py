"""The arguments of :mod:`dahu.client`, checked before anything is sent: the settings of
a ``DahuClient``, plugin names and job inputs.  Each refusal is one line that names the
argument (``TypeError``/``ValueError``), or the ``ServerError`` the server would give.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from .futures import ClientError, ServerError
from .inputs import MAX_BATCH_JOBS, MAX_DEPTH, InvalidInput, parse_job_input
from .utils import NumpyEncoder

__all__ = [
    "check_settings",
    "chunks",
    "encode_input",
    "encode_inputs",
    "job_number",
    "wait_time",
]

_ENCODER = NumpyEncoder(separators=(",", ":"))


def _seconds(name: str, value: Any) -> None:
    """``value`` must be a positive, finite number of seconds."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")


def wait_time(name: str, value: Any) -> float:
    """``value``, seconds to wait (0 or more), checked before anything is done; infinity
    is a billion seconds (a thread cannot wait longer)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:  # NaN too
        raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")
    return min(float(value), 1e9)


def check_settings(
    device: Any,
    timeout: Any,
    resolvers: Any,
    poll_interval: Any,
    sweep_interval: Any,
    max_sweep_interval: Any,
) -> None:
    """Refuse the settings of a ``DahuClient`` that could not work (an interval of 0
    would spin a CPU)."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a str (a device name or URL), not {type(device).__name__}")
    if not device.strip() or device != device.strip():  # Tango: "dbase=no modifier is ..."
        raise ValueError(
            f"device must be a device name or URL without spaces around, not {device!r}"
        )
    if timeout is not None:
        _seconds("timeout", timeout)
        if timeout * 1000 >= 2**31:  # Tango's timeout is a 32-bit count of milliseconds
            raise ValueError(f"timeout must be less than {2**31 // 1000} s, not {timeout!r}")
    if not isinstance(resolvers, numbers.Integral) or isinstance(resolvers, bool):
        raise TypeError(f"resolvers must be an int, not {type(resolvers).__name__}")
    if resolvers < 1:
        raise ValueError(f"resolvers must be at least 1, not {resolvers!r}")
    _seconds("poll_interval", poll_interval)
    _seconds("sweep_interval", sweep_interval)
    _seconds("max_sweep_interval", max_sweep_interval)


def job_number(job_id: Any) -> int:
    """``job_id`` as an int: an int (or numpy integer), not a bool (``True`` is no job 1),
    a float nor a text."""
    if isinstance(job_id, bool) or not isinstance(job_id, numbers.Integral):
        raise TypeError(f"a job id must be an int, not {type(job_id).__name__}")
    return int(job_id)


def _check_plugin(plugin: Any, what: str) -> None:
    if not isinstance(plugin, str):
        raise TypeError(f"a plugin name must be a str, not {type(plugin).__name__}")
    try:
        plugin.encode("latin-1")
    except UnicodeEncodeError:  # Tango could not send it; no plugin has such a name
        raise ServerError(
            f"{what}: invalid plugin name {ascii(plugin)}: expected 'module.name' "
            f"(letters, digits, underscores)",
            "Dahu_UnknownPlugin",
        ) from None


def _encode(data: Any, where: str = "") -> str:
    if not isinstance(data, dict):
        raise TypeError(f"a job input must be a dict, not {type(data).__name__}{where}")
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as err:  # not the advice meant for the server's code
        reason = str(err).split("; use sys.set_int_max_str_digits()", 1)[0]
    except RecursionError:
        reason = f"it is nested too deeply (the server takes at most {MAX_DEPTH} levels)"
    raise ClientError(f"job input{where} is not JSON-serialisable: {reason}")


def encode_input(plugin: Any, data: Any, kwargs: dict[str, Any]) -> str:
    """The JSON text of one job's input (``submit``): ``data`` updated with ``kwargs``."""
    _check_plugin(plugin, "startJob")
    if data is None:
        data = {}
    elif not isinstance(data, dict):  # not "'list' object is not a mapping"
        raise TypeError(f"a job input must be a dict, not {type(data).__name__}")
    return _encode({**data, **kwargs})


def encode_inputs(plugin: Any, inputs: Any) -> list[str]:
    """The JSON texts of the inputs of ``map``, one per job."""
    _check_plugin(plugin, "startJobs")
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise TypeError(
            f"map wants an iterable of dicts (one per job), not {type(inputs).__name__}"
        )
    return [_encode(item, f" (inputs[{i}])") for i, item in enumerate(inputs)]


def chunks(texts: list[str], limit: int, most: int = MAX_BATCH_JOBS) -> list[list[str]]:
    """Split encoded inputs into batches whose JSON array stays within ``limit`` chars
    and ``most`` inputs (the server's limits of one ``startJobs`` call).

    Several batches are several calls, and a refusal of one would come after the jobs
    of the calls before it had started: each input is then checked first with the
    server's own rules (size, nesting), so that ``map`` refuses all of them or none."""
    batches: list[list[str]] = [[]]
    size = 0
    for text in texts:
        if batches[-1] and (size + len(text) + 1 > limit or len(batches[-1]) >= most):
            batches.append([])
            size = 0
        batches[-1].append(text)
        size += len(text) + 1
    if len(batches) > 1:
        for i, text in enumerate(texts):
            try:
                parse_job_input(text)
            except InvalidInput as err:
                raise ServerError(f"startJobs: {err} (inputs[{i}])", "Dahu_InvalidInput") from None
    return batches if texts else []
