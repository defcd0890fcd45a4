"""One run of one plugin: setup → process → teardown, with abort and profiling.

:class:`Execution` is what every executor runs, in the server's threads or in a
worker process; it knows nothing about journals or Tango.  Whatever the plugin raises,
``BaseException`` included (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``),
ends the run as ``failure`` with a one-line reason: a plugin never kills the thread that
runs it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DahuError, cut_error, error_line
from ..factory import Factory, plugin_factory
from ..journal.files import job_file_name
from ..states import State
from .slot import SlotHook, serving

logger = logging.getLogger(__name__)

__all__ = ["Execution", "Outcome"]

ABORT_CALL_WAIT = 1.0
"""Seconds :meth:`Execution.abort` waits for the plugin's ``abort()`` to return; a thread
that aborts several jobs in a row (the shutdown) waits that long for them all."""

_aborting = threading.local()  # per aborting thread: until when its aborts may wait


@dataclass
class Outcome:
    """What a plugin run produced."""

    state: str
    output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    module_file: str | None = None
    plugin_version: str | None = None
    #: the plugin's ``input`` at the end (plugins may add keys; the ``.inp`` file keeps them)
    input: dict[str, Any] | None = None


_PROVENANCE: dict[type, tuple[str | None, str | None]] = {}


def plugin_provenance(plugin: Any) -> tuple[str | None, str | None]:
    """Return the plugin's module file and its version (if the plugin or module declares
    one); looked up once per plugin class."""
    klass = type(plugin)
    known = _PROVENANCE.get(klass)
    if known is None:
        known = _PROVENANCE[klass] = _provenance(klass)
    return known


def _provenance(klass: type) -> tuple[str | None, str | None]:
    module = sys.modules.get(klass.__module__) or Factory.modules.get(
        klass.__module__.split(".")[0].lower()
    )
    module_file = getattr(module, "__file__", None)
    version = getattr(klass, "VERSION", None) or getattr(klass, "__version__", None)
    if version is None and module is not None:
        version = getattr(module, "__version__", None) or getattr(module, "VERSION", None)
    return module_file, (str(version) if version is not None else None)


_SETUP_WANTS_INPUT: dict[type, bool] = {}


def _setup_args(plugin: Any) -> tuple:
    """``()`` for the usual ``setup(self)`` / ``setup(self, kwargs=None)``; the input for a
    ``setup(self, kwargs)`` whose argument is required (the original fails those with a
    ``TypeError``; such plugins ship with it, e.g. ``id31.Integrate``)."""
    klass = type(plugin)
    wants = _SETUP_WANTS_INPUT.get(klass)
    if wants is None:
        try:
            params = inspect.signature(getattr(plugin, plugin.DEFAULT_SET_UP)).parameters
            wants = any(
                p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                for p in params.values()
            )
        except (AttributeError, TypeError, ValueError):  # no signature (or no method)
            wants = False
        _SETUP_WANTS_INPUT[klass] = wants
    return (dict(plugin.input),) if wants else ()


class Execution:
    """Runs the plugin ``plugin_name`` on ``input_data`` once.

    :param waiting: a context manager factory entered while the plugin waits for another
        job (the executor frees the worker slot there)
    :param profile_dir: where ``"do_profiling": true`` writes its profile file
    :param on_plugin: called with the plugin's ``JOB_TIMEOUT`` once it is instantiated
    """

    in_process = True  # the plugin runs in this process (see the executors' interface)

    def __init__(
        self,
        plugin_name: str,
        input_data: dict[str, Any],
        job_id: int | None = None,
        factory: Factory = plugin_factory,
        waiting: Callable[[], Any] | None = None,
        profile_dir: str | None = None,
        on_plugin: Callable[[float | None], Any] | None = None,
    ):
        self.plugin_name = plugin_name
        self.input_data = input_data
        self.job_id = job_id
        self.factory = factory
        self.waiting = waiting or contextlib.nullcontext
        self.profile_dir = profile_dir
        self.on_plugin = on_plugin
        self.plugin: Any = None
        self.abort_requested = False
        self.abort_reason: str | None = None

    def abort(self, reason: str = "aborted on request") -> None:
        """Ask the plugin to stop (now, or as soon as it exists)."""
        if not self.abort_requested:
            self.abort_reason = reason
        self.abort_requested = True
        plugin = self.plugin
        if plugin is not None:
            self._ask_plugin(plugin)

    def _ask_plugin(self, plugin: Any) -> None:
        """Call the plugin's ``abort()`` in a thread of its own, waiting for it at most
        :data:`ABORT_CALL_WAIT` s: one that never returns must not hold the caller (a
        job's timeout; a client's ``abort`` command; the shutdown, which aborts every job
        in turn: 1 s for them all, not 1 s each)."""

        def call() -> None:
            try:
                getattr(plugin, plugin.DEFAULT_ABORT)()
            except BaseException:
                logger.exception("job %s: the plugin's abort() failed", self.job_id)

        caller = threading.Thread(target=call, name=f"dahu-abort-{self.job_id}", daemon=True)
        try:
            caller.start()
        except RuntimeError:  # no thread to be had: call it here
            call()
            return
        now = time.monotonic()
        until = getattr(_aborting, "until", 0.0)
        if now - until > ABORT_CALL_WAIT:  # not one of a series of aborts: a wait of its own
            until = _aborting.until = now + ABORT_CALL_WAIT
        wait = until - now
        caller.join(max(0.0, wait))
        if wait > 0 and caller.is_alive():  # (one of a series not waited for: not said)
            logger.error(
                "job %s: the plugin's abort() did not return within %.3g s; it goes on in "
                "its own thread",
                self.job_id,
                wait,
            )

    def _call(self, plugin: Any, method_name: str, *args: Any) -> None:
        method = getattr(plugin, method_name, None)
        if not callable(method):  # as the original: said in the log, the job goes on
            name = type(plugin).__name__
            logger.error("job %s: no such method %s in class %s", self.job_id, method_name, name)
            return
        method(*args)

    def _process(self, plugin: Any) -> None:
        if not self.input_data.get("do_profiling"):
            self._call(plugin, plugin.DEFAULT_PROCESS)
            return
        import cProfile  # only for do_profiling

        profiler = cProfile.Profile()
        try:
            profiler.runcall(self._call, plugin, plugin.DEFAULT_PROCESS)
        finally:
            directory = self.profile_dir or os.getcwd()
            os.makedirs(directory, exist_ok=True)
            # cut as the job's .inp/.out files are, if too long for a file name
            path = os.path.join(
                directory, job_file_name(self.job_id, self.plugin_name) + ".profile"
            )
            profiler.dump_stats(path)
            logger.info("job %s: profile written to %s", self.job_id, path)

    def run(self) -> Outcome:
        """Run setup, process, teardown; never raises."""
        started = time.time()
        try:
            plugin = self.factory(self.plugin_name)
        except BaseException as err:
            # Dahu's own reasons (unknown plugin...) are one line already; the traceback
            # of plugin code (its module's import, its __init__) follows, as for setup
            reason = str(err) if isinstance(err, DahuError) and str(err) else error_line(err)
            cause = err if not isinstance(err, DahuError) else err.__cause__
            if cause is not None:
                reason += "\n" + "".join(traceback.format_exception(cause)).rstrip("\n")
            return Outcome(State.FAILURE, {}, cut_error(reason), started, time.time())
        # wait_for from a thread the plugin started gives the job's slot back too
        plugin._dahu_waiting = SlotHook(self.waiting)
        self.plugin = plugin
        with serving(self.job_id, self.waiting):
            return self._run(plugin, started)

    def _run(self, plugin: Any, started: float) -> Outcome:
        """Run the plugin made by :meth:`run` (marked as this job's, see :mod:`.slot`)."""
        if self.on_plugin is not None:
            self.on_plugin(getattr(plugin, "JOB_TIMEOUT", None))
        if self.abort_requested:
            self.abort(self.abort_reason or "aborted on request")
        state, error = State.SUCCESS, None
        try:
            # as in the original: the input is in place before setup(), called bare
            plugin.input.update(self.input_data)
            self._call(plugin, plugin.DEFAULT_SET_UP, *_setup_args(plugin))
            # only an abort from outside stops the job: a plugin's own abort() (to
            # leave its loop) is the plugin's business, as in the original
            if not self.abort_requested:
                self._process(plugin)
        except BaseException as err:
            state = State.FAILURE
            error = f"{error_line(err)}\n{traceback.format_exc()}"
        finally:
            try:
                self._call(plugin, plugin.DEFAULT_TEAR_DOWN)
            except BaseException as err:
                if state == State.SUCCESS:
                    state = State.FAILURE
                    error = f"teardown failed: {error_line(err)}\n{traceback.format_exc()}"
                else:
                    error = f"{error}\nteardown failed too: {error_line(err)}"
        if self.abort_requested:
            state = State.ABORTED
            error = self.abort_reason or "aborted on request"
        output = getattr(plugin, "output", None)
        if not isinstance(output, dict):
            try:  # key-value pairs, which the original's output.update() took
                output = dict(output)
            except (TypeError, ValueError):
                output = {"result": output}
        module_file, version = plugin_provenance(plugin)
        final_input = getattr(plugin, "input", None)
        final_input = final_input if isinstance(final_input, dict) else None
        return Outcome(
            state, output, cut_error(error), started, time.time(), module_file, version, final_input
        )
