"""The device properties of ``DahuDS``: one list, used by the device (``dahu.server``),
``dahu_server`` (its options that win over a property), ``dahu-register`` (one option per
property) and checked against ``docs/server.md`` by the tests."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Property",
    "PROPERTIES",
    "EXECUTORS",
    "DEFAULT_WAIT_TIMEOUT",
    "DEFAULT_QUEUE_LIMIT",
    "DEFAULT_RETENTION_INTERVAL",
    "MAX_RETENTION_INTERVAL",
    "directory",
    "local_directory",
    "number",
]

EXECUTORS = ("thread", "process", "dask")
DEFAULT_WAIT_TIMEOUT = 2.0
MAX_WAIT_TIMEOUT = 3600.0  # a longer wait overflows the system's timers (1e10 s did)
DEFAULT_QUEUE_LIMIT = 1000
DEFAULT_RETENTION_INTERVAL = 3600.0
MAX_RETENTION_INTERVAL = 365 * 86400.0  # a year; 1e10 s overflows the system's timers


@dataclass(frozen=True)
class Property:
    """One device property.

    :param option: the command-line option of ``dahu-register`` (and of ``dahu_server``
        when ``server_option``) that sets it
    :param server_option: ``dahu_server`` has the option too, winning over the property
    :param path: its values are paths (``dahu-register`` makes them absolute)
    :param minimum: the options refuse a number below it (and any number that is not
        finite)
    :param maximum: the options refuse a number above it
    """

    name: str
    dtype: Any
    default: Any
    doc: str
    option: str
    metavar: str | None = None
    server_option: str | None = None
    path: bool = False
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def repeated(self) -> bool:
        """A list of values (the option is repeatable)."""
        return isinstance(self.dtype, tuple)

    def add_option(self, parser: Any, option: str | None = None, help: str | None = None) -> None:
        """Add the option setting this property to an ``argparse`` parser."""
        kwargs: dict[str, Any] = {"help": help or f"the {self.name} property: {self.doc}"}
        if self.choices:
            kwargs["choices"] = list(self.choices)
        else:
            kwargs["metavar"] = self.metavar
        if self.path:  # -w "$DIR" with DIR unset must not mean the default or "."
            kwargs["type"] = directory
        if self.repeated:
            kwargs.update(action="append", default=[])
        elif self.dtype in (int, float):
            kwargs["type"] = number(self.dtype, self.minimum, self.maximum)
        parser.add_argument(option or self.option, dest=self.name, **kwargs)


def directory(text: str) -> str:
    """An ``argparse`` type: a directory name; an empty or blank one is refused (until
    2026-11-30 ``--workdir ''`` meant the default work directory, and ``--plugins ''``
    or ``dahu-register --workdir ''`` the current one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name (an unset variable?): give a directory")
    return text


def local_directory(text: str) -> str:
    """:func:`directory`, for a tool that uses it itself: a leading ``~`` is the home
    directory, as the server reads its ``--workdir`` (until 2026-11-30 ``-o '~/x'``, the
    ``~`` quoted or from a variable, made a directory named ``~`` in the current one)."""
    return os.path.expanduser(directory(text))


MAX_WORKERS = 4096
"""Most job slots (``max_workers``): a thread (or a worker process) each; a typo's
99999999999 would start threads until the system refuses them."""


def number(dtype: type, minimum: float | None, maximum: float | None) -> Callable[[str], Any]:
    """An ``argparse`` type: a finite ``dtype`` from ``minimum`` to ``maximum``, or a
    one-line reason."""

    def parse(text: str) -> Any:
        try:
            value = dtype(text)
        except ValueError:
            kind = "a whole number" if dtype is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum:.15g} or more, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected {maximum:.15g} or less, not {text}")
        return value

    return parse


PROPERTIES: tuple[Property, ...] = (
    Property(
        "plugins_directory",
        (str,),
        [],
        "directories searched for plugin modules",
        "--plugins",
        "DIR",
        server_option="--plugins",
        path=True,
    ),
    Property(
        "workdir",
        str,
        "",
        "work directory: journal and .inp/.out files (default: $DAHU_WORKDIR)",
        "--workdir",
        "DIR",
        server_option="--workdir",
        path=True,
    ),
    Property(
        "max_workers",
        int,
        0,
        "jobs running at once (0: number of CPUs)",
        "--max-workers",
        "N",
        server_option="--max-workers",
        minimum=0,
        maximum=MAX_WORKERS,
    ),
    Property(
        "queue_limit",
        int,
        DEFAULT_QUEUE_LIMIT,
        "state is ALARM while more jobs than this wait for a slot",
        "--queue-limit",
        "N",
        minimum=0,
    ),
    Property(
        "executor",
        str,
        "thread",
        "where plugins run: thread, process (isolated workers) or dask",
        "--executor",
        server_option="--executor",
        choices=EXECUTORS,
    ),
    Property(
        "scheduler",
        str,
        "local",
        "dask executor: scheduler address (tcp://host:8786) or local",
        "--scheduler",
        "ADDRESS",
        server_option="--scheduler",
    ),
    Property(
        "recycle_jobs",
        int,
        0,
        "process executor: replace a worker process after this many jobs (0: never)",
        "--recycle-jobs",
        "N",
        server_option="--recycle-jobs",
        minimum=0,
    ),
    Property(
        "recycle_rss_mb",
        float,
        0.0,
        "process executor: replace a worker process whose resident memory passed this "
        "many MB, after its job (0: never)",
        "--recycle-rss-mb",
        "MB",
        server_option="--recycle-rss-mb",
        minimum=0,
    ),
    Property(
        "default_timeout",
        float,
        0.0,
        "seconds after which a running job is aborted as timed out (0: no limit)",
        "--default-timeout",
        "S",
        server_option="--timeout",
        minimum=0,
    ),
    Property(
        "wait_timeout",
        float,
        DEFAULT_WAIT_TIMEOUT,
        "longest wait of waitJob, in seconds (keep it below the clients' timeout)",
        "--wait-timeout",
        "S",
        minimum=0,
        maximum=MAX_WAIT_TIMEOUT,
    ),
    Property(
        "http",
        str,
        "",
        "serve the read-only web page on [HOST:]PORT (host 127.0.0.1 by default)",
        "--http",
        "[HOST:]PORT",
        server_option="--http",
    ),
    Property(
        "http_token",
        str,
        "",
        "access token of the web page (generated when HOST is not a loopback address)",
        "--http-token",
        "TOKEN",
        server_option="--http-token",
    ),
    Property(
        "retention",
        str,
        "",
        "finished jobs kept in the work directory: a duration (30d, 12h) or a number of "
        "most recent jobs (100000); older ones are pruned (empty: keep every job)",
        "--retention",
        "SPEC",
        server_option="--retention",
    ),
    Property(
        "retention_interval",
        float,
        DEFAULT_RETENTION_INTERVAL,
        "seconds between two prunes by the retention setting (0 or less: 3600)",
        "--retention-interval",
        "S",
        server_option="--retention-interval",
        maximum=MAX_RETENTION_INTERVAL,
    ),
)
"""Every device property of ``DahuDS``, in the order the docs list them."""
