"""Plugin factory: finds plugin modules in plugin directories and instantiates plugins.

Plugin names are fully qualified ``module.name`` strings, case-insensitive.  A module is a
``.py`` file or a package directory (with ``__init__.py``) inside a plugin directory.
Directories are searched in this order: those listed in ``DAHU_PLUGINS``
(``os.pathsep``-separated), those configured (``Factory(plugin_path=...)`` or
:meth:`Factory.add_directory`), then the built-in ``dahu/plugins``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import reprlib
import sys
import threading
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from .errors import DahuError, UnknownPlugin, error_line, one_line
from .utils import fully_qualified_name

logger = logging.getLogger(__name__)

__all__ = [
    "load_source",
    "Factory",
    "plugin_factory",
    "plugin_settings",
    "register",
    "UnknownPlugin",
]

BUILTIN_PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
# the module part may have dashes: a file id-02.py is a plugin module (as in the original)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
MAX_NAME_CHARS = 1000
"""Longest plugin name: a job records its name (journal, events, files); a client's name
of 50 MB, its module existing, made a job of 200 MB of journal."""


def _valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_CHARS and _NAME_RE.match(name) is not None


def load_source(module_name: str, file_path: str) -> ModuleType:
    """Load the module ``module_name`` from ``file_path`` without adding it to ``sys.modules``.

    ``file_path`` is a ``.py`` file, or a package directory (or its ``__init__.py``).  A
    package is kept in ``sys.modules`` under its own name, because its relative imports
    need it there; a plain module file is there only while its code runs.
    """
    is_package = os.path.isdir(file_path) or os.path.basename(file_path) == "__init__.py"
    if is_package:
        directory = file_path if os.path.isdir(file_path) else os.path.dirname(file_path)
        init = os.path.join(directory, "__init__.py")
        if module_name in sys.modules:
            existing = getattr(sys.modules[module_name], "__file__", None)
            if existing and os.path.abspath(existing) == os.path.abspath(init):
                return sys.modules[module_name]
            raise DahuError(
                f"plugin package {module_name!r} in {directory} clashes with the installed "
                f"module of the same name"
            )
        spec = importlib.util.spec_from_file_location(
            module_name, init, submodule_search_locations=[directory]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None or spec.loader is None:
        raise DahuError(f"cannot load plugin module {module_name!r} from {file_path}")
    module = importlib.util.module_from_spec(spec)
    # While its code runs, the module must be findable (dataclasses, pickle and typing
    # look their module up in sys.modules); a plain module is removed again afterwards.
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        if previous is not None:
            sys.modules[module_name] = previous
        raise
    if not is_package:
        if previous is not None:
            sys.modules[module_name] = previous
        else:
            sys.modules.pop(module_name, None)
    return module


def _list_modules(directory: str) -> list[str]:
    """The plugin modules of a directory: its ``*.py`` files and its packages."""
    modules = []
    try:
        entries = sorted(os.listdir(directory))
    except OSError:  # removed since it was added
        return modules
    for entry in entries:
        path = os.path.join(directory, entry)
        if entry.endswith(".py") and entry != "__init__.py" and os.path.isfile(path):
            modules.append(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            modules.append(entry)
    return modules


class Factory:
    """Instantiates plugins by name; ``Factory()(name)`` returns a new plugin instance.

    The registry of plugin classes is shared by every factory (class attributes), so a
    plugin registered with :func:`register` anywhere can be instantiated by any factory.
    """

    registry: dict[str, type] = {}
    modules: dict[str, ModuleType] = {}
    plugin_dirs: dict[str, list[str]] = {}
    # directories given to any factory (plugin_path, add_directory): every factory
    # searches them after its own, as in the original, where the list was shared
    configured: list[str] = []
    reg_sem = threading.Semaphore()
    # one lock per module being imported: a module whose import hangs blocks only the
    # jobs of its own plugins, not the loading of every other module (reg_sem did)
    _importing: dict[str, threading.Lock] = {}

    def __init__(self, workdir: str | None = None, plugin_path: list[str] | str | None = None):
        self.workdir = workdir
        self._dirs: list[str] = []
        self.ignored: dict[str, str] = {}  # directory: why add_directory left it out
        self._env_seen: str | None = None
        self._env_lock = threading.Lock()
        if isinstance(plugin_path, str):
            plugin_path = [p for p in plugin_path.split(os.pathsep) if p]
        for directory in plugin_path or []:
            self.add_directory(directory)
        self.add_directory(BUILTIN_PLUGIN_DIR)
        self._sync_env()

    def _sync_env(self) -> None:
        """Put the directories of ``DAHU_PLUGINS`` first in the search order (re-read on use)."""
        env = os.environ.get("DAHU_PLUGINS", "")
        if env == self._env_seen:
            return
        with self._env_lock:  # another thread must not see the new value half applied
            if env == self._env_seen:
                return
            for directory in reversed([d for d in env.split(os.pathsep) if d]):
                self.add_directory(directory, first=True)
            self._env_seen = env

    @property
    def directories(self) -> list[str]:
        """The plugin directories of this factory, in search order."""
        return list(self._dirs)

    def add_directory(self, directory: str, first: bool = False) -> None:
        """Add a plugin directory and index its modules.

        It is searched after the directories already known but before the built-in one,
        or before all of them when ``first`` is true.
        """
        directory = os.path.abspath(os.path.expanduser(directory))
        if not os.path.isdir(directory):  # not mounted yet? a server then warns, not fails
            why = "is not a directory" if os.path.exists(directory) else "does not exist"
            self.ignored[directory] = f"plugin directory {directory} {why}: ignored"
            logger.warning("%s", self.ignored[directory])
            return
        self.ignored.pop(directory, None)
        modules = _list_modules(directory)
        with self.reg_sem:
            Factory.plugin_dirs[directory] = modules
            if not first and directory != BUILTIN_PLUGIN_DIR:
                if directory not in Factory.configured:
                    Factory.configured.append(directory)
            if directory in self._dirs:
                self._dirs.remove(directory)
            if first:
                self._dirs.insert(0, directory)
            elif directory != BUILTIN_PLUGIN_DIR and BUILTIN_PLUGIN_DIR in self._dirs:
                self._dirs.insert(self._dirs.index(BUILTIN_PLUGIN_DIR), directory)
            else:
                self._dirs.append(directory)

    def add_directories(self, directories: Collection[str]) -> None:
        """:meth:`add_directory` each, in order (a device's ``Init``); then log each plugin
        module imported from a directory that another one now comes before: the process
        keeps the module it imported (its registered plugins) until it restarts."""
        for directory in directories:
            self.add_directory(directory)
        with self.reg_sem:
            for name, module in sorted(Factory.modules.items()):
                path, loaded = self._module_path(name), getattr(module, "__file__", None)
                if path and loaded and path not in (loaded, os.path.dirname(loaded)):
                    logger.warning(
                        "plugin module %s: %s comes first in the plugin directories now, "
                        "but %s was imported: its jobs run that one until the server restarts",
                        name,
                        path,
                        loaded,
                    )

    def _search_order(self) -> list[str]:
        """This factory's directories, then those other factories were given, then the
        built-in one (a snapshot: read without the lock too)."""
        own = [d for d in tuple(self._dirs) if d != BUILTIN_PLUGIN_DIR]
        shared = [d for d in tuple(Factory.configured) if d not in own]
        return own + shared + ([BUILTIN_PLUGIN_DIR] if BUILTIN_PLUGIN_DIR in self._dirs else [])

    def search_order(self) -> list[str]:
        """Every directory this factory searches, in order (``DAHU_PLUGINS`` re-read)."""
        self._sync_env()
        return self._search_order()

    def _module_path(self, module_name: str) -> str | None:
        for directory in self._search_order():
            for candidate in Factory.plugin_dirs.get(directory, ()):
                if candidate.lower() == module_name:
                    path = os.path.join(directory, candidate)
                    return path if os.path.isdir(path) else path + ".py"
        return None

    def _find_module(self, module_name: str) -> str | None:
        """:meth:`_module_path`, indexing the directories again on a miss (a module added
        since they were indexed); the caller holds ``reg_sem``."""
        path = self._module_path(module_name)
        if path is None:
            for directory in self._search_order():
                Factory.plugin_dirs[directory] = _list_modules(directory)
            path = self._module_path(module_name)
        return path

    def search_plugin(self, plugin_name: str) -> type | None:
        """Find, load and return the class of ``plugin_name`` (``module.name``), or None.

        The module is the first component of the name; loading it registers its plugins.
        """
        key = plugin_name.lower()
        if key in Factory.registry:
            return Factory.registry[key]
        if not _valid_name(plugin_name):
            return None
        self._sync_env()
        module_name = key.split(".", 1)[0]
        with self.reg_sem:
            if key in Factory.registry or module_name in Factory.modules:
                return Factory.registry.get(key)
            path = self._find_module(module_name)
            if path is None:
                return None
            importing = Factory._importing.setdefault(module_name, threading.Lock())
        with importing:
            if module_name not in Factory.modules:
                logger.debug("loading plugin module %s from %s", module_name, path)
                Factory.modules[module_name] = load_source(module_name, path)
        return Factory.registry.get(key)

    def locate(self, plugin_name: str) -> None:
        """Check that ``plugin_name`` can be found without importing any plugin code: it
        is registered, or a plugin directory has its module; :class:`UnknownPlugin`
        otherwise.  (Whether the module defines it is known only once it is loaded.)"""
        key = plugin_name.lower() if isinstance(plugin_name, str) else ""
        if key in Factory.registry:
            return
        if _valid_name(key):
            self._sync_env()
            module_name = key.split(".", 1)[0]
            # no lock here: another thread may hold it for seconds, importing a module
            if module_name in Factory.modules or self._module_path(module_name):
                return
            with self.reg_sem:
                if self._find_module(module_name):
                    return
        raise UnknownPlugin(self.describe_failure(plugin_name))

    def describe_failure(self, plugin_name: str) -> str:
        """A one-line reason why ``plugin_name`` cannot be instantiated (a name of
        100 kB is cut: the reason is read, not the name)."""
        name = _shown(plugin_name)
        if isinstance(plugin_name, str) and len(plugin_name) > MAX_NAME_CHARS:
            return (
                f"invalid plugin name {name}: {len(plugin_name):,} characters, more than "
                f"the {MAX_NAME_CHARS:,} a plugin name may have"
            )
        if not isinstance(plugin_name, str) or not _NAME_RE.match(plugin_name):
            return (
                f"invalid plugin name {name}: expected 'module.name' (letters, digits, underscores)"
            )
        module_name = plugin_name.lower().split(".", 1)[0]
        module = _shown(module_name)
        self._sync_env()
        dirs = ", ".join(self._search_order()) or "(none)"
        if module_name in Factory.modules:
            # which file, and the same module name in later directories, hidden by it
            where = getattr(Factory.modules[module_name], "__file__", None)
            home = os.path.dirname(where or "")
            if os.path.basename(where or "") == "__init__.py":  # a package
                home = os.path.dirname(home)
            hidden = [
                d
                for d in self._search_order()
                if d != home and module_name in (m.lower() for m in Factory.plugin_dirs.get(d, ()))
            ]
            also = (
                f" (the module {module} of {', '.join(hidden)} is hidden by it)" if hidden else ""
            )
            return (
                f"unknown plugin {name}: module {module} ({where}) does not define it{also}"
                if where
                else f"unknown plugin {name}: module {module} does not define it"
            )
        left_out = "".join(f" ({why})" for why in self.ignored.values())  # not mounted?
        if module_name == "__main__":  # a script's plugin, asked for in a worker process
            left_out += (
                " (a plugin that a script registers is known to the script's process only: "
                "put it in a plugin directory for the process and dask executors)"
            )
        return f"unknown plugin {name}: no module {module} found in {dirs}{left_out}"

    def get_class(self, plugin_name: str) -> type:
        """Return the registered class of ``plugin_name`` or raise :class:`UnknownPlugin`."""
        try:
            klass = self.search_plugin(plugin_name)
        except DahuError:
            raise
        except BaseException as err:  # SystemExit or worse from a module's code included
            raise UnknownPlugin(
                f"cannot load plugin {_shown(plugin_name)}: {error_line(err)}"
            ) from err
        if klass is None:
            raise UnknownPlugin(self.describe_failure(plugin_name))
        return klass

    def __call__(self, plugin_name: str) -> Any:
        """Return a new instance of the plugin ``plugin_name``."""
        return self.get_class(plugin_name)()

    def list_plugins(
        self, skip: Collection[str] = (), on_module: Callable[[str], None] | None = None
    ) -> dict[str, str]:
        """Load every module of every plugin directory; return ``{name: first doc line}``.

        A module that fails to load is listed as ``module.<error>`` with the reason.
        Modules named (lower case) in ``skip`` are not loaded; ``on_module(name)`` is
        called before each module is.
        """
        found: dict[str, str] = {}
        self._sync_env()
        with self.reg_sem:  # the modules added or removed since they were indexed
            for directory in self._search_order():
                Factory.plugin_dirs[directory] = _list_modules(directory)
        for directory in self._search_order():
            for module_name in Factory.plugin_dirs.get(directory, ()):
                if module_name.lower() in skip:
                    continue
                if on_module is not None:
                    on_module(module_name)
                try:
                    self.search_plugin(f"{module_name}._")
                except BaseException as err:  # a module's SystemExit must not end us
                    found[f"{module_name.lower()}.<error>"] = f"cannot load: {error_line(err)}"
        for name, klass in sorted(Factory.registry.items()):
            doc = (getattr(klass, "function", None) or klass).__doc__ or ""
            found[name] = one_line(doc)
        return found

    @classmethod
    def register(cls, klass: type, fqn: str | None = None) -> type:
        """Register ``klass`` as a plugin under ``fqn`` (default: its ``module.name``).

        Usable as a class decorator: ``@register``.
        """
        name = (fqn or fully_qualified_name(klass)).lower()
        previous = Factory.registry.get(name)
        Factory.registry[name] = klass
        if previous is not None and _where(previous) != _where(klass):  # not a reload
            logger.warning(
                "plugin %s: %s replaces %s (the last one registered runs)",
                name,
                _where(klass),
                _where(previous),
            )
        return klass


plugin_factory = Factory()
"""The process-wide factory used by jobs."""

register = plugin_factory.register


REPROCESS_SETTINGS = ("REPROCESS_IGNORE", "REPROCESS_COMPARE_IGNORE", "REPROCESS_RELOCATE")
"""The lists a plugin may give ``dahu-reprocess`` (see docs/reprocess.md)."""


def plugin_settings(klass: Any) -> dict[str, tuple[str, ...]]:
    """A plugin's ``REPROCESS_*`` lists: the class attributes, or for a plugin made from a
    function, the function's attributes of those names (empty when not given; a single
    string is a list of that name: the original Dahu dropped the keys named by its letters,
    and a rerun wrote over the archived file)."""
    function = getattr(klass, "function", None)
    found = {n: getattr(klass, n, None) or getattr(function, n, None) for n in REPROCESS_SETTINGS}
    # one name written without its list ("output_file") is that name, not its letters
    return {n: (v,) if isinstance(v, str) else tuple(v or ()) for n, v in found.items()}


def _where(klass: Any) -> str:
    """``module.Class`` of a plugin class, for the log."""
    return f"{getattr(klass, '__module__', '?')}.{getattr(klass, '__qualname__', klass)}"


_NAMES = reprlib.Repr()  # a plugin name in a reason: cut in its middle, about 200 characters
_NAMES.maxstring = _NAMES.maxother = 200
_shown = _NAMES.repr
