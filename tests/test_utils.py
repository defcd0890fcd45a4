"""dahu.utils: JSON of numpy values, time stamps, work directories, names."""

import json
import os
import re
import time

import numpy
import pytest

from dahu.utils import (
    NumpyEncoder,
    compact_json,
    dumps,
    fully_qualified_name,
    get_isotime,
    get_workdir,
)


def test_numpy_encoder_writes_arrays_and_scalars():
    data = {
        "a": numpy.arange(3),
        "f": numpy.float32(1.5),
        "i": numpy.int64(7),
        "b": numpy.bool_(True),
        "m": numpy.ones((2, 2)),
    }
    decoded = json.loads(json.dumps(data, cls=NumpyEncoder))
    assert decoded == {"a": [0, 1, 2], "f": 1.5, "i": 7, "b": True, "m": [[1.0, 1.0], [1.0, 1.0]]}


def test_numpy_encoder_writes_a_longdouble_and_refuses_a_complex_plainly():
    # bug: longdouble's item() is a longdouble again: default() recursed for ever
    # (RecursionError), and a job whose output held one lost its .out file
    total = numpy.arange(10, dtype=numpy.longdouble).sum()
    assert json.loads(json.dumps({"total": total}, cls=NumpyEncoder)) == {"total": 45.0}
    assert json.dumps(numpy.longdouble(1.5), cls=NumpyEncoder) == "1.5"
    for value in (numpy.clongdouble(1 + 2j), numpy.complex128(1 + 2j)):
        with pytest.raises(TypeError, match="complex is not JSON serializable"):
            json.dumps(value, cls=NumpyEncoder)


def test_compact_json_gives_the_standard_text_and_errors():
    """The journal's encoder: json.dumps(obj, cls=NumpyEncoder), to the character."""
    values = [
        {"a": 1, "b": [1, 2.5, None, True], "c": {"d": "\u00e9t\u00e9"}},
        "text",
        3,
        float("nan"),
        [float("inf"), -float("inf")],
        {1: 2, 2.5: 3, None: 4, False: 5},
        {"arr": numpy.arange(3), "f": numpy.float32(1.5), "s": {1}, "t": (1, 2), "b": b"xy"},
        [],
        {},
    ]
    for value in values:
        assert compact_json(value) == json.dumps(value, cls=NumpyEncoder)
        assert dumps(value) == compact_json(value)  # dumps without indent uses it
    circular: list = []
    circular.append(circular)
    for bad, message in [
        (circular, "Circular reference detected"),
        ({"x": object()}, "not JSON serializable"),
        ({(1, 2): 3}, "keys must be str"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            compact_json(bad)


def test_isotime_is_iso8601_and_path_safe():
    stamp = get_isotime(0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", stamp)
    path_form = get_isotime(0, for_path=True)
    assert ":" not in path_form
    # the original's file-name form: local date and time, "h" and "m" as separators
    assert path_form == stamp[:13] + "h" + stamp[14:16] + "m" + stamp[17:19]


def test_workdir_is_created_under_basedir(tmp_path):
    path = get_workdir(str(tmp_path))
    assert os.path.isdir(path)
    assert path.startswith(str(tmp_path))
    assert "dahu_" in path


def test_the_workdir_module_variable_of_the_original_is_the_workdir(tmp_path):
    # bug: dahu.utils.workdir, the original's module variable, raised AttributeError
    import dahu.utils

    path = get_workdir(str(tmp_path))  # made here, not in the system's temporary directory
    assert dahu.utils.workdir == path == get_workdir()
    assert os.path.isdir(dahu.utils.workdir)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        dahu.utils.nothing  # noqa: B018


def test_fully_qualified_name_is_lower_module_dot_name():
    assert fully_qualified_name(NumpyEncoder) == "dahu.utils.numpyencoder"
    assert fully_qualified_name(get_workdir) == "dahu.utils.get_workdir"
    assert fully_qualified_name(NumpyEncoder()) == "dahu.utils.numpyencoder"


def test_freeze_while_busy_keeps_what_was_frozen_before():
    # bug: once a large batch was done, the objects dahu_server froze at its start (39,165
    # there) were unfrozen with the batch's: every full collection scanned them again
    import gc
    import threading

    from dahu import utils

    gc.freeze()  # as dahu_server at its start
    try:
        busy = threading.Event()
        busy.set()
        later = lambda delay, f: threading.Timer(delay, f).start()  # noqa: E731
        utils.freeze_while(busy.is_set, later, 0.02, 60)
        busy.clear()
        deadline = time.monotonic() + 10
        while utils._frozen and time.monotonic() < deadline:
            time.sleep(0.02)
        with utils._gc_lock:  # released (the release holds the lock)
            assert not utils._frozen and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_freeze_while_busy_still_frees_the_cycles_made_meanwhile():
    # a server kept busy (a queue that never empties after a large batch) froze every
    # object made since, for ever: garbage cycles (plugins' objects) were never freed
    import gc
    import threading
    import weakref

    from dahu.utils import freeze_while

    busy = threading.Event()
    busy.set()
    freeze_while(busy.is_set, lambda delay, f: threading.Timer(delay, f).start(), 0.02, 0.2)
    try:

        class Node:
            pass

        node = Node()
        node.me = node  # a cycle: only the collector frees it
        freed = weakref.ref(node)
        del node
        gc.freeze()  # as the next check would
        deadline = time.monotonic() + 5
        while freed() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert freed() is None, "a garbage cycle stays while busy"
    finally:
        busy.clear()
    deadline = time.monotonic() + 5
    while gc.get_freeze_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gc.get_freeze_count() == 0  # released once no longer busy
