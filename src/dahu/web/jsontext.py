"""The JSON text the web page sends: standard JSON only, which every parser reads.

Python writes a float that is not finite as ``NaN``, ``Infinity`` or ``-Infinity``, which
is not JSON: a browser's ``JSON.parse`` refuses the whole answer.  Such values (common in
numpy results) are sent as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(``float("NaN")`` reads them back in Python).
"""

from __future__ import annotations

import json
from typing import Any

from ..utils import NumpyEncoder, compact_json

__all__ = ["web_json"]

_STRICT = NumpyEncoder(allow_nan=False)


def web_json(obj: Any) -> str:
    """``obj`` as one line of standard JSON; non-finite floats become strings."""
    try:
        return _STRICT.encode(obj)
    except ValueError as err:
        if not str(err).startswith("Out of range float"):
            raise
    # rare: write it as Python does, then read the non-standard words back as strings
    return _STRICT.encode(json.loads(compact_json(obj), parse_constant=str))
