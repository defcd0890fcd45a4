"""The live, read-only web page of a Dahu server and its JSON endpoints.

``dahu_server --http [HOST:]PORT`` (or the device property ``http``) serves it: see
``docs/web.md``.  :mod:`.monitor` keeps what the page shows in bounded memory,
:mod:`.app` is the Tornado application, :mod:`.service` runs it in a thread of the
server and applies the access rule, :mod:`.browser` drives a headless Chromium (tests,
demo screenshot, benchmark).  Nothing here is imported unless the page is asked for.
"""

from .monitor import Monitor
from .service import WebError, WebService, is_loopback, new_token, parse_address, serve

__all__ = [
    "Monitor",
    "WebError",
    "WebService",
    "is_loopback",
    "new_token",
    "parse_address",
    "serve",
]
