"""Old-style plugins, one per pattern of the original's beamline plugins."""

import os
import time

from dahu import version as dahu_version
from dahu.cache import DataCache
from dahu.factory import register
from dahu.job import Job
from dahu.plugin import Plugin, plugin_from_function

BUILT = []  # one entry per expensive object built in this process


class Expensive:
    """Stands for an azimuthal integrator: costly to build, kept between jobs."""

    def __init__(self, key):
        BUILT.append(key)
        self.key = key
        self.pid = os.getpid()


@register
class BareSetup(Plugin):
    """setup(self) with no argument: the input is there already (id27 style)."""

    def setup(self):
        self.scale = self.input["x"] * 2

    def process(self):
        self.output["result"] = self.scale


@register
class OwnSetup(Plugin):
    """Overrides setup(kwargs=None) without calling Plugin.setup (id02 style)."""

    def setup(self, kwargs=None):
        self.value = self.input.get("x")

    def process(self):
        self.output["result"] = self.value


@register
class RequiredSetupArg(Plugin):
    """setup(self, kwargs) with a required argument (id31 style; the original fails it)."""

    def setup(self, kwargs):
        Plugin.setup(self, kwargs)
        self.value = kwargs["x"]

    def process(self):
        self.output["result"] = self.value


@register
class AddsInput(Plugin):
    """Completes its own input; the original records the additions in the .inp file."""

    def process(self):
        self.input["computed"] = self.input["x"] + 1
        self.output["result"] = self.input["computed"]


@register
class LateLog(Plugin):
    """Logs after Plugin.teardown has put the log list into the output."""

    def process(self):
        self.log_warning("first")
        self.log_error("not fatal", do_raise=False)

    def teardown(self):
        Plugin.teardown(self)
        self.log_warning("after teardown")


@register
class Fails(Plugin):
    """log_error raises: the job fails with the original's texts."""

    def process(self):
        self.log_error("bad input")


@register
class CachedAI(Plugin):
    """Keeps its integrator with DataCache.get(key, default) (id02 style)."""

    cache = DataCache(6)

    def process(self):
        key = self.input.get("poni", "default.poni")
        value = self.cache.get(key, {})  # stores the empty dict the first time
        if "ai" not in value:
            value["ai"] = Expensive(key)
        self.output.update(built=len(BUILT), ai_pid=value["ai"].pid)


@register
class ClassCache(Plugin):
    """Class-level DataCache filled with get-then-set (id15/id31 style)."""

    _ais = DataCache(3)

    def process(self):
        key = self.input.get("poni", "default.poni")
        ai = self._ais.get(key)
        if ai is None:
            ai = self._ais[key] = Expensive(key)
        self.output.update(built=len(BUILT), ai_pid=ai.pid)


@register
class Versioned(Plugin):
    """Writes Dahu's version into its result (id15 style)."""

    def process(self):
        import sys

        import dahu.version  # noqa: F401 - as in the original, the module imports
        from dahu.version import version

        self.output["program_version"] = dahu_version
        self.output["module_version"] = version
        self.output["module"] = type(sys.modules["dahu.version"]).__name__


@register
class Waits(Plugin):
    """Waits for another job (bm29 style); TIMEOUT left to the default."""

    def process(self):
        job = self.wait_for(self.input["other"])
        self.output["other_result"] = None if job is None else job.output_data.get("result")
        self.output["last_id"] = Job._id_class


@register
class Slow(Plugin):
    """Runs until aborted."""

    def process(self):
        while not self.is_aborted:
            time.sleep(0.01)


@register
class StopsItself(Plugin):
    """Ends its own acquisition loop with self.abort(), then returns its result."""

    def setup(self):
        if self.input.get("in_setup"):
            self.abort()  # "nothing to acquire": process still runs in the original

    def process(self):
        frames = 0
        for frame in range(100):
            frames += 1
            if frame == self.input.get("last", 0):
                self.abort()
            if self.is_aborted:
                break
        self.output["frames"] = frames


@register
class Renamed(Plugin):
    """Names a set-up method it does not have (a rename left half done): the original
    logs "No such method" and runs process anyway."""

    DEFAULT_SET_UP = "prepare"

    def process(self):
        self.output["r"] = 1


@register
class Pairs(Plugin):
    """Sets its output to key-value pairs (the original's output.update() took them)."""

    def process(self):
        self.output = [("a", 1), ("b", [2, 3])]


@register
class SetupFails(Plugin):
    """Fails in setup; its teardown (called anyway, as in the original) closes what it
    opened and records it."""

    def setup(self, kwargs=None):
        Plugin.setup(self, kwargs)
        self.output["opened"] = True
        self.log_error("no such file")

    def teardown(self):
        self.output["closed"] = True
        Plugin.teardown(self)


def add_one(x):
    return x + 1


plugin_from_function(add_one)
