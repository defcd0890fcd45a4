"""dahu.utils: JSON of numpy values, time stamps, work directories, names."""

import json
import os
import re

import numpy

from dahu.utils import NumpyEncoder, fully_qualified_name, get_isotime, get_workdir


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


def test_fully_qualified_name_is_lower_module_dot_name():
    assert fully_qualified_name(NumpyEncoder) == "dahu.utils.numpyencoder"
    assert fully_qualified_name(get_workdir) == "dahu.utils.get_workdir"
    assert fully_qualified_name(NumpyEncoder()) == "dahu.utils.numpyencoder"
