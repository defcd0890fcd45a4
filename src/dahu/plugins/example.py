"""Example plugins: small, fast, and used by the tests and the demo.

* ``example.square`` (function): ``x**2`` as ``output["result"]``
* ``example.noop`` (function): returns its input ``x``
* ``example.cube`` (class): ``x**3`` as ``output["result"]``
* ``example.sleep`` (class): sleeps ``t`` seconds, stops promptly when aborted
* ``example.error`` (class): raises in ``process``
"""

import threading

from dahu.factory import register
from dahu.plugin import Plugin, plugin_from_function

__version__ = "1.0"


def square(x=0):
    """Return x squared."""
    return x * x


def noop(x=None):
    """Return ``x`` unchanged (for measuring Dahu's own overhead)."""
    return x


plugin_from_function(square)
plugin_from_function(noop)


@register
class Cube(Plugin):
    """Return x cubed in output["result"]."""

    def process(self):
        x = self.input.get("x", 0)
        self.output["result"] = x**3


@register
class Sleep(Plugin):
    """Sleep t seconds (default 1); stops promptly when aborted."""

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()

    def process(self):
        t = float(self.input.get("t", 1.0))
        stopped = self._stop.wait(t)
        self.output["slept"] = not stopped
        self.output["t"] = t

    def abort(self):
        super().abort()
        self._stop.set()


@register
class Error(Plugin):
    """Raise an error in process (for tests and demos)."""

    def process(self):
        raise ValueError(self.input.get("message", "this plugin always fails"))
