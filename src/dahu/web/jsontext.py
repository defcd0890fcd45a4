"""The JSON text the web page sends: standard JSON only, which every parser reads.

Python writes a float that is not finite as ``NaN``, ``Infinity`` or ``-Infinity``, which
is not JSON: a browser's ``JSON.parse`` refuses the whole answer.  Such values (common in
numpy results) are sent as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(``float("NaN")`` reads them back in Python), as ``dahu-jobs`` writes them.
"""

from __future__ import annotations

from typing import Any

from ..utils import standard_json

__all__ = ["web_json"]


def web_json(obj: Any) -> str:
    """``obj`` as one line of standard JSON; non-finite floats become strings."""
    return standard_json(obj)
