"""Plugins: the unit of work that Dahu runs (public API).

A plugin is a class derived from :class:`Plugin` (registered with
``dahu.factory.register``) or a plain function turned into one by
:func:`plugin_from_function`.  A job fills ``plugin.input`` with the job's input, calls ``setup()``, then
``process()``, then ``teardown()`` (always, even when ``process`` fails); ``abort()`` may be called from
another thread at any time and sets ``is_aborted``, which a long ``process`` should check.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from .executors.slot import SELF_JOIN, current_job_id, released
from .factory import Factory, plugin_factory  # noqa: F401  (the original's name here)
from .utils import fully_qualified_name

logger = logging.getLogger(__name__)

__all__ = ["Plugin", "PluginFromFunction", "plugin_from_function", "RESERVED_KEYS"]

RESERVED_KEYS = frozenset({"job_id", "plugin_name", "do_profiling", "job_timeout"})
"""Input keys that Dahu adds or interprets itself; not passed to function plugins."""


class Plugin:
    """Base class of class plugins.

    * gets its input parameters as a dictionary in :meth:`setup` (``self.input``),
    * does its work in :meth:`process`,
    * leaves its result in ``self.output`` (a dictionary),
    * may be stopped with :meth:`abort` (it sets ``self.is_aborted``).

    ``TIMEOUT`` (seconds, default 10; None for no limit) bounds how long :meth:`wait_for`
    waits.
    ``JOB_TIMEOUT`` (seconds, or None) bounds the whole job: past it the job is aborted
    and its error says it timed out (the input key ``job_timeout`` overrides it, and it
    overrides the server's default).
    """

    DEFAULT_SET_UP = "setup"
    DEFAULT_PROCESS = "process"
    DEFAULT_TEAR_DOWN = "teardown"
    DEFAULT_ABORT = "abort"
    REPROCESS_IGNORE: list[str] = []
    REPROCESS_RELOCATE: list[str] = []
    TIMEOUT: float | None = 10.0
    JOB_TIMEOUT: float | None = None
    # Dahu's own attribute is kept out of the instance's __dict__: a plugin that writes
    # ``json.dumps(vars(self))`` (or copies its __dict__) sees only its own, as in the
    # original; subclasses have a __dict__ as ever
    __slots__ = ("_dahu_waiting", "__dict__", "__weakref__")

    def __init__(self) -> None:
        self.input: dict[str, Any] = {}
        self.output: dict[str, Any] = {}
        self._logging: list[str] = []
        self.is_aborted = False
        # Set by the executor: a context manager that frees the job's worker slot while
        # the plugin waits for another job, so waiters never starve the jobs they wait for.
        # Named for Dahu: a plugin's own ``self._waiting`` must not clash with it.
        self._dahu_waiting: Callable[[], Any] = released

    def get_name(self) -> str:
        """Return the plugin's class name."""
        return self.__class__.__name__

    def setup(self, kwargs: dict[str, Any] | None = None) -> None:
        """Second constructor: the job's input is already in ``self.input``;
        ``kwargs``, if given, is merged into it."""
        if kwargs is not None:
            self.input.update(kwargs)

    def process(self) -> None:
        """Do the work; the result goes into ``self.output``."""

    def teardown(self) -> None:
        """Release resources; always run, even if ``process`` failed.

        Puts the plugin's log list itself into ``self.output["logging"]``: lines logged
        afterwards still reach the output (when the output is a dict: a plugin may have
        set it to key-value pairs, which the job turns into one).
        """
        if isinstance(self.output, dict):
            self.output["logging"] = self._logging

    def get_info(self) -> str:
        """Return the plugin's log lines as one text."""
        return "\n".join(self._logging)

    def abort(self) -> None:
        """Ask the plugin to stop: sets ``is_aborted``, which ``process`` should check."""
        self.is_aborted = True

    def log_error(self, txt: str, do_raise: bool = True) -> None:
        """Record ``ERROR in <Class>: txt`` in the job's log and raise it as a
        ``RuntimeError``; with ``do_raise=False`` record ``Warning in <Class>: txt``."""
        if not do_raise:
            self.log_warning(txt)
            return
        line = f"ERROR in {self.get_name()}: {txt}"
        logger.error("%s", line)
        self._logging.append(line)
        raise RuntimeError(line)

    def log_warning(self, txt: str) -> None:
        """Record ``Warning in <Class>: txt`` in the job's log."""
        line = f"Warning in {self.get_name()}: {txt}"
        logger.warning("%s", line)
        self._logging.append(line)

    def wait_for(self, job_id: int) -> Any:
        """Wait for the job ``job_id`` to finish and return it (a ``dahu.job.Job``).

        Waits at most ``TIMEOUT`` seconds (10 by default, no limit when None) and stops
        waiting if this plugin is aborted.  An id beyond the last one given out is
        logged as a warning and None is returned (this job goes on).  Fails this plugin
        (``log_error``) if the other job ended in another state than ``success``, does
        not exist, did not finish in time, or is this very job (-1 included).  While it
        waits, the job's executor slot is free for other jobs.
        """
        from .job import Job

        job_id = int(job_id)
        if job_id > Job._id_class:
            self.log_warning(f"Not synchronizing job, invalid id: {job_id}")
            return None
        job_id = Job._resolve(job_id)  # -1: the last job
        own = current_job_id()
        if own is None:  # a thread the plugin started
            own = self.input.get("job_id")
        if job_id == own:
            self.log_error(f"cannot wait for job {job_id}: it is this job ({SELF_JOIN})")
        timeout = self.TIMEOUT
        deadline = None if timeout is None else time.monotonic() + timeout
        state = Job.getStatusFromID(job_id)
        with self._dahu_waiting():
            # each turn waits for the job's end (at most 0.5 s, to see an abort); a job
            # that is gone ends the loop: nothing would wait, the loop would spin
            while (
                not self.is_aborted
                and state not in Job.FINAL_STATES
                and state != Job.STATE_INEXISTANT
            ):
                slice_ = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if slice_ <= 0:
                    break
                state = Job.synchronize_job(job_id, slice_)
        if state == Job.STATE_INEXISTANT:
            self.log_error(f"cannot wait for job {job_id}: no such job")
        if self.is_aborted:
            self.log_error(f"aborted while waiting for job {job_id}")
        if state == Job.STATE_SUCCESS:
            return Job.getJobFromID(job_id)
        if state in Job.FINAL_STATES:
            self.log_error(f"Other job ended in {state}: aborting myself")
        self.log_error(
            f"Timeout while waiting other job to finish: job {job_id} did not finish "
            f"within {timeout} s (state {state})"
        )
        return None


class PluginFromFunction(Plugin):
    """Template of the plugins made from a function: ``output["result"]`` is its result.

    An instance is also callable, for debugging: ``instance(**kwargs)`` runs it on
    ``kwargs`` and returns ``function(**kwargs)``.
    """

    function: Callable[..., Any] | None = None

    def __call__(self, **kwargs: Any) -> Any:
        """Run the plugin on ``kwargs`` (merged into its input) and return the result."""
        self.input.update(kwargs)
        self.process()
        self.teardown()
        return self.output["result"]

    def process(self) -> None:
        """Call the function with the input (less Dahu's own keys) as keyword arguments."""
        kwargs = {k: v for k, v in self.input.items() if k not in RESERVED_KEYS}
        try:
            self.output["result"] = self.function(**kwargs)
        except TypeError as err:
            if err.__traceback__ is None or err.__traceback__.tb_next is not None:
                raise  # raised inside the function, not by the call
            hint = _did_you_mean(self.function, kwargs, str(err))
            if not hint:
                raise
            raise TypeError(f"{err}; {hint}") from None


def _did_you_mean(function: Callable[..., Any], kwargs: dict[str, Any], error: str) -> str:
    """``did you mean 'npt'?`` when ``error`` (of calling ``function(**kwargs)``) names an
    unexpected key close to one of its parameters ("" otherwise): the job fails as in the
    original, with its message (``f() got an unexpected keyword argument 'npt_rad'``)."""
    try:
        params = [
            name
            for name, param in inspect.signature(function).parameters.items()
            if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):  # no signature (a builtin)
        return ""
    for key in kwargs:
        if key not in params and error.endswith(f"keyword argument {key!r}"):
            close = difflib.get_close_matches(key, params, n=1)
            return f"did you mean {close[0]!r}?" if close else ""
    return ""


def plugin_from_function(function: Callable[..., Any]) -> str:
    """Make a plugin class from ``function``, register it, and return its plugin name.

    The name is the function's lower-case ``module.name`` (e.g. ``example.square``).  The
    class is named ``module.name`` as the function is spelt, as in the original: that is
    what ``get_name()`` returns.  Anything without a ``__name__`` (a ``functools.partial``,
    a callable object) is a ``TypeError``.
    """
    if not callable(function) or not isinstance(getattr(function, "__name__", None), str):
        raise TypeError(
            f"plugin_from_function needs a function with a name (def), not "
            f"{type(function).__name__}: {function!r:.100}"
        )
    name = fully_qualified_name(function)
    klass = type(
        f"{function.__module__}.{function.__name__}",
        (PluginFromFunction,),
        {
            "function": staticmethod(function),
            "__doc__": function.__doc__,
            "__module__": function.__module__,
        },
    )
    Factory.register(klass, name)
    return name
