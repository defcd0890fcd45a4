"""The answers of the device's ``listPlugins`` and ``initPlugin``.

Under the ``thread`` executor the server imports the plugin modules itself (its jobs run
there anyway).  Under ``process`` and ``dask`` the server never imports plugin code: a
throwaway helper process (``python -m dahu.server_plugins``, a fresh interpreter)
imports the modules and sends back the listing or the docstring as JSON lines.  A module
whose import ends that process (a segfault, ``os._exit``) gets a one-line reason
(``module.<error> : cannot load: the import crashed: signal 11 (SIGSEGV)``); the helper
is started again without it to list the others.  So is a module whose import does not
finish within ``$DAHU_PLUGIN_IMPORT_TIMEOUT`` seconds (default 60): the helper is killed,
and the module's reason is ``the import did not finish within 60 s``.  Answers are kept until a module file
of the plugin directories changes (added, removed, modified).

This module imports nothing heavy: the helper process runs it.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from .errors import DahuError, UnknownPlugin, one_line, shown_name
from .executors.process import exit_text
from .factory import Factory, _list_modules, plugin_factory, plugin_settings
from .inputs import plugin_name

logger = logging.getLogger(__name__)

__all__ = ["PLUGINS_HEADER", "PluginCatalog", "ended_reason", "plugin_name_given"]


def plugin_name_given(name: Any) -> str:
    """The plugin name a client sent (``startJob``, ``startJobs``, ``initPlugin``), the
    blanks around it left out; :class:`InvalidInput` in one line if there is none."""
    return plugin_name(name, "the plugin name is empty: expected 'module.name'")


# listPlugins' first line, as the original's (clients skip it)
PLUGINS_HEADER = (
    "List of all plugin currently loaded (use initPlugin to loaded additional plugins):"
)


IMPORT_TIMEOUT_VARIABLE = "DAHU_PLUGIN_IMPORT_TIMEOUT"
IMPORT_TIMEOUT = 60.0  # seconds a plugin module's import may take in the helper


def import_timeout() -> float:
    """Seconds one module's import may take (``$DAHU_PLUGIN_IMPORT_TIMEOUT``, else 60)."""
    try:
        value = float(os.environ.get(IMPORT_TIMEOUT_VARIABLE) or IMPORT_TIMEOUT)
    except ValueError:
        value = IMPORT_TIMEOUT
    return value if 0 < value < math.inf else IMPORT_TIMEOUT


def ended_reason(returncode: int | None) -> str:
    """``the import crashed: signal 11 (SIGSEGV)`` / ``the import ended the process:
    exit code 3`` / (None: the helper was killed) ``the import did not finish within
    60 s``."""
    if returncode is None:
        return f"the import did not finish within {import_timeout():g} s"
    if returncode < 0:
        return f"the import crashed: {exit_text(returncode)}"
    return f"the import ended the process: {exit_text(returncode)}"


def _signature(directories: list[str]) -> tuple:
    """What identifies the plugin modules' files now (their paths, sizes and times)."""
    items: list[Any] = []
    for directory in directories:
        for module in _list_modules(directory):
            path = os.path.join(directory, module)
            path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
            try:
                stat = os.stat(path)
                items.append((path, stat.st_size, stat.st_mtime_ns))
            except OSError:
                items.append((path, None, None))
    return tuple(items)


class PluginCatalog:
    """``listPlugins``' and ``initPlugin``'s texts for a server, with ``factory``'s
    plugin directories; ``isolated``: never import plugin code in this process."""

    def __init__(self, factory: Factory, isolated: bool):
        self.factory = factory
        self.isolated = isolated
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # per module: no twin helpers
        self._answers: dict[Any, Any] = {}
        self._seen: tuple | None = None

    def listing(self) -> str:
        """``listPlugins``' text: the header, then `` name : first doc line`` lines."""
        try:
            if self.isolated:
                found = self._ask(("list",), "*", self._list)
            else:
                found = self.factory.list_plugins()
        except Exception as err:
            logger.exception("listing the plugins failed")
            return f"<error>: cannot list the plugins: {one_line(str(err))}"
        return "\n".join([PLUGINS_HEADER] + [f" {name} : {doc}" for name, doc in found.items()])

    def init_text(self, name: str) -> str:
        """``initPlugin``'s text: ``Plugin loaded: NAME`` and the docstring, or ``Plugin
        not found: NAME, reason`` (the original's texts)."""
        plugin = name.strip()
        try:
            if self.isolated:
                self.factory.locate(plugin)  # a plugin directory has its module
                module = plugin.lower().split(".", 1)[0]
                doc = self._ask(("doc", plugin.lower()), module, lambda d: self._one(plugin, d))
            else:
                doc = _doc(self.factory.get_class(plugin))
        except DahuError as err:
            return f"Plugin not found: {shown_name(name)}, {one_line(str(err))}"
        return f"Plugin loaded: {plugin}\n{doc or '(no documentation)'}"

    def settings(self, name: str) -> dict[str, tuple[str, ...]]:
        """The plugin's ``REPROCESS_*`` lists (:func:`~dahu.factory.plugin_settings`),
        read by the helper process when isolated; :class:`DahuError` if it cannot load."""
        plugin = name.strip()
        if not self.isolated:
            return plugin_settings(self.factory.get_class(plugin))
        self.factory.locate(plugin)
        module = plugin.lower().split(".", 1)[0]
        key = ("settings", plugin.lower())
        try:
            found = self._ask(key, module, lambda d: self._one(plugin, d, "settings"))
        except RuntimeError as err:  # the helper failed, not the module
            raise UnknownPlugin(f"cannot load plugin {plugin!r}: {err}") from None
        return {setting: tuple(values) for setting, values in found.items()}

    # ---- the helper process -------------------------------------------------------------
    def _ask(self, key: tuple, module: str, compute: Callable[[list[str]], tuple]) -> Any:
        """The answer of ``compute(directories)`` (``answer, {other key: answer}``), kept
        under ``key`` while the module files stay the same (a :class:`DahuError` it raised
        too); one helper at a time per ``module`` (``*``: every module)."""
        directories = self.factory.search_order()
        with self._lock:
            seen = _signature(directories)
            if seen != self._seen:
                self._answers.clear()
                self._seen = seen
            lock = self._locks.setdefault(module, threading.Lock())
        with lock:
            if key in self._answers:
                answer = self._answers[key]
                if isinstance(answer, DahuError):
                    raise answer
                return answer
            try:
                answer, others = compute(directories)
            except DahuError as err:  # kept too: a slow failure is not paid on every call
                answer, others = err, {}
            with self._lock:
                if self._seen == seen:
                    self._answers.update(others)
                    self._answers[key] = answer
            if isinstance(answer, DahuError):
                raise answer
            return answer

    def _list(self, directories: list[str]) -> tuple[dict[str, str], dict]:
        crashed: dict[str, str] = {}  # module -> reason
        while True:
            lines, returncode = _helper(["list", ",".join(crashed), *directories])
            if lines and "plugins" in lines[-1]:
                errors = {f"{m}.<error>": f"cannot load: {r}" for m, r in crashed.items()}
                docs = {("doc", name): doc for name, doc in lines[-1]["docs"].items()}
                return {**errors, **lines[-1]["plugins"]}, docs  # initPlugin's answers too
            loading = [line["loading"].lower() for line in lines if "loading" in line]
            if not loading or loading[-1] in crashed:
                raise RuntimeError(f"the helper process failed: {ended_reason(returncode)}")
            crashed[loading[-1]] = ended_reason(returncode)
            logger.error("plugin module %s: %s", loading[-1], crashed[loading[-1]])

    def _one(self, plugin: str, directories: list[str], want: str = "doc") -> tuple[Any, dict]:
        """A plugin's ``doc`` or ``settings`` (both kept)."""
        lines, returncode = _helper(["doc", plugin, *directories])
        answer = lines[-1] if lines else {}
        if "doc" in answer:
            both = {"doc": answer["doc"] or "", "settings": answer["settings"]}
            return both[want], {(key, plugin.lower()): value for key, value in both.items()}
        if "missing" in answer:
            raise UnknownPlugin(answer["missing"])
        if not any("loading" in line for line in lines):
            raise RuntimeError(f"the helper process failed: {ended_reason(returncode)}")
        logger.error("plugin %s: %s", plugin, ended_reason(returncode))
        raise UnknownPlugin(f"cannot load plugin {plugin!r}: {ended_reason(returncode)}")


def _helper(args: list[str]) -> tuple[list[dict[str, Any]], int | None]:
    """Run ``python -m dahu.server_plugins ARGS``: its JSON lines and its exit code (None:
    killed, as one module's import took longer than :func:`import_timeout`)."""
    limit = import_timeout()
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    received: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        for raw in process.stdout:  # type: ignore[union-attr]
            received.put(raw)
        received.put(None)

    threading.Thread(target=read, name="dahu-plugins-helper", daemon=True).start()
    lines: list[dict[str, Any]] = []
    cut = False
    while True:
        try:
            raw = received.get(timeout=limit)  # each line: the next module, or the end
        except (queue.Empty, KeyboardInterrupt) as err:  # too long, or a Ctrl-C here
            process.kill()
            process.wait()
            if isinstance(err, KeyboardInterrupt):
                raise
            return lines, None
        if raw is None:
            break
        if not cut:
            try:
                lines.append(json.loads(raw))
            except ValueError:  # cut short by the crash
                cut = True
    return lines, process.wait()


def _doc(klass: type) -> str:
    doc = (getattr(klass, "function", None) or klass).__doc__  # its own, not its base's
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def main(argv: list[str] | None = None) -> None:
    """``python -m dahu.server_plugins list SKIPPED DIR... | doc PLUGIN DIR...``: one JSON
    object a line on stdout (a module's own prints go to stderr)."""
    args = sys.argv[1:] if argv is None else argv
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def say(**message: Any) -> None:
        out.write(json.dumps(message) + "\n")

    for directory in args[2:]:
        plugin_factory.add_directory(directory)
    if args[0] == "list":
        skip = set(args[1].split(","))
        found = plugin_factory.list_plugins(skip, lambda module: say(loading=module))
        docs = {name: _doc(klass) for name, klass in Factory.registry.items()}
        say(plugins=found, docs=docs)
    else:
        say(loading=args[1])
        try:
            klass = plugin_factory.get_class(args[1])
        except DahuError as err:
            say(missing=one_line(str(err)))
        else:
            settings = {name: list(values) for name, values in plugin_settings(klass).items()}
            say(doc=_doc(klass), settings=settings)
    out.flush()
    os._exit(0)  # a thread a module started must not keep the helper alive


if __name__ == "__main__":
    main()
