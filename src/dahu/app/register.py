"""``dahu-register INSTANCE DEVICE [--plugins DIR ...]``: declare a DahuDS device in Tango.

Registers the server ``DahuDS/INSTANCE`` with the device ``DEVICE`` (``domain/family/member``)
of class ``DahuDS`` in the Tango database named by ``TANGO_HOST``, and writes its device
properties (``plugins_directory``, and ``workdir``/``max_workers``/``queue_limit``/
``wait_timeout``/``executor``/``scheduler``/``default_timeout`` when given).  Registering again updates the properties.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

__all__ = ["main"]

DEVICE_RE = re.compile(r"^[^/\s]+/[^/\s]+/[^/\s]+$")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``dahu-register``."""
    parser = argparse.ArgumentParser(
        prog="dahu-register",
        description="Register a DahuDS device in the Tango database at TANGO_HOST.",
    )
    parser.add_argument("instance", help="server instance name: the server is DahuDS/INSTANCE")
    parser.add_argument("device", help="device name, domain/family/member (e.g. id00/dahu/1)")
    parser.add_argument(
        "--plugins",
        metavar="DIR",
        action="append",
        default=[],
        help="plugin directory (repeatable): the plugins_directory property",
    )
    parser.add_argument("--workdir", metavar="DIR", help="the workdir property")
    parser.add_argument("--max-workers", metavar="N", type=int, help="the max_workers property")
    parser.add_argument("--queue-limit", metavar="N", type=int, help="the queue_limit property")
    parser.add_argument(
        "--wait-timeout", metavar="S", type=float, help="the wait_timeout property (seconds)"
    )
    parser.add_argument(
        "--executor", choices=["thread", "process", "dask"], help="the executor property"
    )
    parser.add_argument("--scheduler", metavar="ADDRESS", help="the scheduler property (dask)")
    parser.add_argument(
        "--default-timeout", metavar="S", type=float, help="the default_timeout property"
    )
    parser.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="the http property: serve the read-only web page there",
    )
    return parser


def _fail(message: str) -> int:
    sys.stderr.write(f"dahu-register: {message}\n")
    return 1


def _first_line(err: Exception) -> str:
    args = getattr(err, "args", ())
    text = getattr(args[0], "desc", None) if args else None
    text = str(text if text is not None else err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dahu-register``; return the exit status."""
    args = build_parser().parse_args(argv)
    if not DEVICE_RE.match(args.device):
        return _fail(f"invalid device name {args.device!r}: expected domain/family/member")
    if "/" in args.instance or not args.instance.strip():
        return _fail(f"invalid instance name {args.instance!r}")

    import tango  # here, so that --help answers without loading Tango

    tango_host = os.environ.get("TANGO_HOST")
    if not tango_host:
        return _fail("TANGO_HOST is not set: it names the Tango database (host:port)")
    try:
        database = tango.Database()
    except tango.DevFailed as err:
        return _fail(f"no Tango database reachable at TANGO_HOST={tango_host}: {_first_line(err)}")

    properties: dict[str, list[str]] = {}
    if args.plugins:
        properties["plugins_directory"] = [os.path.abspath(d) for d in args.plugins]
    if args.workdir:
        properties["workdir"] = [os.path.abspath(args.workdir)]
    for name in (
        "max_workers",
        "queue_limit",
        "wait_timeout",
        "executor",
        "scheduler",
        "default_timeout",
        "http",
    ):
        value = getattr(args, name)
        if value is not None:
            properties[name] = [str(value)]

    info = tango.DbDevInfo()
    info.server = f"DahuDS/{args.instance}"
    info._class = "DahuDS"
    info.name = args.device
    try:
        database.add_device(info)
        if properties:
            database.put_device_property(args.device, properties)
    except tango.DevFailed as err:
        return _fail(f"cannot register {args.device} at {tango_host}: {_first_line(err)}")
    sys.stdout.write(
        f"registered {args.device} (class DahuDS) in server {info.server} at {tango_host}\n"
    )
    for name, value in properties.items():
        sys.stdout.write(f"  {name} = {', '.join(value)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
