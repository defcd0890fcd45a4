"""Job inputs: JSON objects, from the Python API and from clients.

:func:`parse_input` accepts a dict, JSON text or the path of a JSON file.  A client-facing input is a JSON object of at most :data:`MAX_INPUT_CHARS` characters,
nested at most :data:`MAX_DEPTH` levels; anything else is refused with an
:class:`~dahu.job.InvalidInput` whose message is one line.
"""

from __future__ import annotations

import codecs
import difflib
import json
import numbers
import os
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from .errors import InvalidInput
from .utils import compact_json

__all__ = [
    "InvalidInput",
    "MAX_BATCH_JOBS",
    "MAX_INPUT_CHARS",
    "MAX_DEPTH",
    "json_file_text",
    "json_kind",
    "misspelt_keys",
    "parse_input",
    "parse_job_input",
    "parse_job_inputs",
    "parse_inputs",
    "plugin_name",
    "unrecordable",
]

MAX_INPUT_CHARS = 16 * 2**20
"""Largest JSON text accepted for one ``startJob`` or ``startJobs`` call (16 MiB)."""
MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted in a job input."""
MAX_BATCH_JOBS = 100_000
"""Most jobs one ``startJobs`` call creates (16 MiB of ``{}`` would be 5.6 million jobs,
7 GB of server memory; 100,000 take about 5 s to record and 140 MB)."""


def json_file_text(data: bytes) -> str:
    """The text of a JSON file's bytes: UTF-8, a byte-order mark (as some Windows editors
    write) left out; else :class:`InvalidInput` naming the first byte that is not (the
    words of ``Job(path)``, the device's ``startJob`` and ``dahu-reprocess``)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:  # Latin-1 ("caf\xe9"): utf-8-sig counts after the mark
        offset = err.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)
        raise InvalidInput(
            f"not UTF-8 text (JSON must be UTF-8): byte 0x{data[offset]:02x} at offset {offset}"
        ) from None


def parse_input(input_data: Any) -> dict[str, Any]:
    """Turn a dict, a JSON string or the path of a JSON file into a new dict."""
    if input_data is None:
        return {}
    if isinstance(input_data, dict):
        return dict(input_data)
    if isinstance(input_data, (bytes, bytearray)):
        input_data = input_data.decode("utf-8", errors="replace")
    if isinstance(input_data, os.PathLike):
        input_data = os.fspath(input_data)
    if not isinstance(input_data, str):
        raise InvalidInput(f"job input must be a JSON object, got {type(input_data).__name__}")
    text = input_data.strip()
    if not text:  # the original raised a JSONDecodeError (its server answered -1)
        raise InvalidInput('job input is empty: give a JSON object, e.g. "{}"')
    path = None  # the JSON file the text came from
    if not text.startswith(("{", "[", '"')) and os.path.isfile(text):
        path = text
        try:
            with open(path, "rb") as handle:
                text = json_file_text(handle.read())
        except OSError as err:
            raise InvalidInput(f"cannot read job input file {input_data}: {err}") from err
        except InvalidInput as err:  # saved in Latin-1, or not text at all
            raise InvalidInput(f"job input file {path} is {err}") from None
        if not text.strip():  # a disk that filled up as it was written
            raise InvalidInput(f'job input file {path} is empty: give a JSON object, e.g. "{{}}"')
    try:
        value = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer of over 4,300 digits
        if path is None and not text.startswith(("{", "[", '"')):
            raise InvalidInput(f"job input is neither JSON nor a file: {_cut(text)}") from err
        what = f"job input file {path}" if path else "job input"
        raise InvalidInput(f"{what} is not valid JSON: {_json_error(err)}") from err
    except RecursionError as err:
        raise InvalidInput("job input is nested too deeply") from err
    if not isinstance(value, dict):
        raise InvalidInput(f"job input must be a JSON object, got {json_kind(value)}")
    return value


def parse_inputs(inputs: Any) -> list[dict[str, Any]]:
    """Each of ``inputs`` (``Job.create_many``'s: a list, or any iterable but a mapping or
    a text) through :func:`parse_input`; one input given alone is refused in one line
    (a dict was read as its keys: ``job input is neither JSON nor a file: 'x'``)."""
    if isinstance(inputs, (Mapping, str, bytes)) or not hasattr(inputs, "__iter__"):
        raise InvalidInput(
            "job inputs must be a list of inputs (dicts, JSON texts or files); "
            f"got {_type_name(inputs)}: give [input] for one"
        )
    return [parse_input(item) for item in inputs]


def plugin_name(name: Any, empty: str = "plugin name must be a non-empty string") -> str:
    """The plugin name given, the blanks around it left out (as the device's ``startJob``);
    :class:`InvalidInput` ``empty`` if there is none (``""``, ``" "``)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(empty)
    return name.strip()


def unrecordable(data: dict[str, Any]) -> str | None:
    """Why JSON cannot record the job input ``data``, in one line: the first key or
    value it refuses (``input['when'] is of type datetime.datetime, which JSON cannot
    hold``), breadth first; None if there is none (the journal refused it for another
    reason)."""
    queue: deque[tuple[Any, str]] = deque([(data, "input")])
    while queue:
        item, where = queue.popleft()
        if isinstance(item, dict):
            for key, value in item.items():
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    kind = _type_name(key)
                    return f"key {key!r} of {where} is of type {kind} (JSON keys are text)"
                queue.append((value, f"{where}[{key!r}]"))
        elif isinstance(item, (list, tuple)):
            queue.extend((value, f"{where}[{index}]") for index, value in enumerate(item))
        else:
            try:
                compact_json(item)
            except Exception:  # TypeError, ValueError, RecursionError
                return f"{where} is of type {_type_name(item)}, which JSON cannot hold"
    return None


def _type_name(value: Any) -> str:
    klass = type(value)
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _cut(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, cut to about ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _json_error(err: ValueError) -> str:
    """What ``json.loads`` found wrong, without advice meant for the server's code
    (``use sys.set_int_max_str_digits()``)."""
    return str(err).split("; use sys.", 1)[0]


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_INPUT_CHARS:
        raise _too_big(what, len(text), "characters")
    return text


def _too_big(what: str, size: int, unit: str) -> InvalidInput:
    """The refusal of an input past the limit, in exact figures: just past it, "16.0 MiB,
    more than the 16 MiB limit" said nothing."""
    return InvalidInput(
        f"{what} is {size:,} {unit}, more than the {MAX_INPUT_CHARS // 2**20} MiB limit "
        f"({MAX_INPUT_CHARS:,} {unit})"
    )


def _check_depth(value: Any, what: str) -> None:
    if _depth(value) > MAX_DEPTH:
        raise InvalidInput(f"{what} is nested deeper than {MAX_DEPTH} levels")


def parse_job_input(text: Any) -> dict[str, Any]:
    """Decode one job input (JSON object text, or a JSON file path as in the original)
    within the documented limits; raise :class:`~dahu.job.InvalidInput` otherwise."""
    text = _check_text(text, "job input")
    path = text.strip()
    from_file = not path.startswith(("{", "[", '"')) and os.path.isfile(path)
    if from_file and os.path.getsize(path) > MAX_INPUT_CHARS:  # the same limits as inline
        raise _too_big(f"job input file {path}", os.path.getsize(path), "bytes")
    try:
        data = parse_input(text)
    except InvalidInput as err:
        if "nested too deeply" in str(err):
            raise InvalidInput(f"job input is nested deeper than {MAX_DEPTH} levels") from None
        raise
    # counting brackets is cheap and bounds the depth: walk only when it could be too deep
    if from_file or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_depth(data, "job input")
    return data


def parse_job_inputs(text: Any) -> list[dict[str, Any]]:
    """Decode the JSON array of job inputs of ``startJobs`` within the documented limits."""
    text = _check_text(text, "job inputs")
    if not text.strip():  # as startJob's (not "Expecting value: line 1 column 1 (char 0)")
        raise InvalidInput('job inputs are empty: give a JSON array of objects, e.g. "[{}]"')
    try:
        items = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer of over 4,300 digits
        raise InvalidInput(f"job inputs are not valid JSON: {_json_error(err)}") from None
    except RecursionError:
        raise InvalidInput(f"job inputs are nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(items, list):
        raise InvalidInput(f"job inputs must be a JSON array of objects, got {json_kind(items)}")
    if len(items) > MAX_BATCH_JOBS:
        raise InvalidInput(
            f"startJobs takes at most {MAX_BATCH_JOBS:,} jobs per call, got {len(items):,}: "
            f"split them into several calls (dahu.client's map does)"
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"job input #{index} must be a JSON object, got {json_kind(item)}")
    if text.count("{") + text.count("[") > MAX_DEPTH:
        for item in items:
            _check_depth(item, "a job input")
    return items


def json_kind(value: Any) -> str:
    """What ``value`` is in JSON's words: object, array, string, boolean, number, null."""
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def misspelt_keys(
    data: dict[str, Any], known: Collection[str], aliases: Mapping[str, str] | None = None
) -> list[str]:
    """A warning for each key of ``data`` that is not ``known`` but looks like one that is
    (``"unt"`` for ``"unit"``, ``"NPT"``; or is one of ``aliases``, other names of known
    keys): a plugin would ignore it, leaving the default in force. Other keys get none: the
    original's plugins ignore keys they do not read, and clients send such keys."""
    lower = {key.lower(): key for key in known}
    warnings = []
    for key in data:
        if not isinstance(key, str) or key in known:
            continue
        close = difflib.get_close_matches(key.lower(), lower, 1, 0.6)
        guess = (aliases or {}).get(key) or (lower[close[0]] if close else None)
        if guess is not None:
            warnings.append(f"unknown key {key!r} (did you mean {guess!r}?): it is ignored")
    return warnings


def whole_number(value: Any) -> bool:
    """False for a number that is not whole (1.5, ``numpy.float32(1.5)``, NaN, inf): no
    job's id (until 2026-11-30 such a number was truncated to a job's); True otherwise
    (integers, strings and what is no number are left to ``int``)."""
    if isinstance(value, (numbers.Integral, str)) or not hasattr(value, "__float__"):
        return True
    try:
        return bool(value == int(value))
    except (ValueError, OverflowError, TypeError):
        return False
