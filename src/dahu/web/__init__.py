"""The live, read-only web page of a Dahu server and its JSON endpoints.

``dahu_server --http [HOST:]PORT`` (or the device property ``http``) serves it: see
``docs/web.md``.  :mod:`.monitor` keeps what the page shows in bounded memory,
:mod:`.app` is the Tornado application, :mod:`.access` the access rule,
:mod:`.service` runs the application in a thread of the server, :mod:`.browser` drives
a headless Chromium (tests, demo screenshot, benchmark).  Nothing here is imported
unless the page is asked for.
"""

from .access import WebError, is_loopback, new_token, parse_address
from .monitor import Monitor
from .service import WebService, serve

__all__ = [
    "Monitor",
    "WebError",
    "WebService",
    "is_loopback",
    "new_token",
    "parse_address",
    "serve",
]
