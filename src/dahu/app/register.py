"""``dahu-register INSTANCE DEVICE [--plugins DIR ...]``: declare a DahuDS device in Tango.

Registers the server ``DahuDS/INSTANCE`` with the device ``DEVICE`` (``domain/family/member``)
of class ``DahuDS`` in the Tango database named by ``TANGO_HOST``, and writes the device
properties given (one option per property of :data:`dahu.properties.PROPERTIES`).
Registering again updates the properties (a device its server serves stays exported:
it is not registered anew).  The original's options (``--server``,
``--domain``, ``--family``, ``--member``, with its defaults ``dahu`` and ``id00/dahu/1``)
name them too.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from ..errors import tango_line
from ..properties import PROPERTIES

__all__ = ["main", "build_parser"]

DEVICE_RE = re.compile(r"^[^/\s]+/[^/\s]+/[^/\s]+$")
DEVICE_PARTS = (("domain", "id00"), ("family", "dahu"), ("member", "1"))
"""The original's options naming the device, with its defaults."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``dahu-register``."""
    parser = argparse.ArgumentParser(
        prog="dahu-register",
        description="Register a DahuDS device in the Tango database at TANGO_HOST.",
    )
    parser.add_argument(
        "instance",
        nargs="?",
        help="server instance name: the server is DahuDS/INSTANCE (default: dahu)",
    )
    parser.add_argument(
        "device",
        nargs="?",
        help="device name, domain/family/member (default: id00/dahu/1)",
    )
    for prop in PROPERTIES:
        prop.add_option(parser)
    legacy = parser.add_argument_group(
        "the original dahu-register's options (instead of INSTANCE and DEVICE)"
    )
    legacy.add_argument(
        "--server", "--instance", dest="server", metavar="NAME", help="INSTANCE (default: dahu)"
    )
    for part, default in DEVICE_PARTS:
        legacy.add_argument(
            f"--{part}", metavar=part.upper(), help=f"{part} of DEVICE (default: {default})"
        )
    return parser


def names(args: argparse.Namespace) -> tuple[str, str]:
    """The instance and the device named by the command line (positional arguments or
    the original's options, else the original's defaults); ValueError if they clash."""
    if args.instance and args.server and args.instance != args.server:
        raise ValueError(f"two instance names: {args.instance!r} and --server {args.server!r}")
    instance = args.instance or args.server or "dahu"
    given = {part: getattr(args, part) for part, _default in DEVICE_PARTS}
    if args.device and any(value is not None for value in given.values()):
        raise ValueError("give the device either as DEVICE or with --domain/--family/--member")
    device = args.device or "/".join(
        default if given[part] is None else given[part] for part, default in DEVICE_PARTS
    )
    return instance, device


def _check_values(
    retention: str | None, http: str | None, token: str | None, scheduler: str | None
) -> str | None:
    """Why ``--retention``, ``--http``, ``--http-token`` or ``--scheduler`` is a value the
    server would not apply (None if they are right)."""
    from ..retention import parse_retention
    from ..timespec import BadTime
    from ..web.access import MIN_TOKEN_CHARS, WebError, parse_address

    if token and len(token.strip()) < MIN_TOKEN_CHARS:  # the server: no web page, logged
        return f"argument --http-token: an access token has at least {MIN_TOKEN_CHARS} characters"

    try:
        if retention is not None:
            parse_retention(retention)
    except BadTime as err:
        return f"argument --retention: {err}"
    try:
        if http is not None:
            parse_address(http)
    except WebError as err:
        return f"argument --http: {err}"
    if scheduler is not None and scheduler.strip().lower() not in ("", "local"):
        from ..executors.dask_connect import scheduler_address  # imports Dask: only then

        try:
            scheduler_address(scheduler, "argument --scheduler")
        except ValueError as err:  # a dask server would not start
            return str(err)
    return None


def _registered(tango: Any, database: Any, device: str) -> Any:
    """The database's record of ``device`` (None if it is not registered)."""
    try:
        return database.get_device_info(device)
    except tango.DevFailed:  # DB_DeviceNotDefined
        return None


def _serving(tango: Any, record: Any) -> str | None:
    """``DEVICE is served by SERVER (pid N on HOST)`` if a running server answers for the
    device ``record`` names; None if it is not exported or does not answer."""
    if not record.exported:
        return None
    try:
        proxy = tango.DeviceProxy(record.name)
        proxy.set_timeout_millis(2000)
        proxy.ping()
    except tango.DevFailed:  # left exported by a server that died
        return None
    return f"{record.name} is served by {record.ds_full_name} (pid {record.pid} on {record.host})"


def _fail(message: str) -> int:
    sys.stderr.write(f"dahu-register: {message}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dahu-register``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check_values(args.retention, args.http, args.http_token, args.scheduler)
    if problem:  # the server would not apply it: say so now, not in its Status later
        parser.error(problem)
    try:
        args.instance, args.device = names(args)
    except ValueError as err:
        return _fail(str(err))
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
        return _fail(f"no Tango database reachable at TANGO_HOST={tango_host}: {tango_line(err)}")

    properties: dict[str, list[str]] = {}
    for prop in PROPERTIES:
        value = getattr(args, prop.name)
        if value is None or value == []:
            continue
        values = value if prop.repeated else [value]
        if prop.path:
            values = [os.path.abspath(os.path.expanduser(v)) for v in values]  # "~/dahu"
        properties[prop.name] = [str(v) for v in values]

    info = tango.DbDevInfo()
    info.server = f"DahuDS/{args.instance}"
    info._class = "DahuDS"
    info.name = args.device
    try:
        current = _registered(tango, database, args.device)
        # Tango's names are not case-sensitive: DahuDS/ID00 is the server DahuDS/id00
        where = f"{current.ds_full_name}/{current.class_name}" if current else ""
        if where.lower() != f"{info.server}/{info._class}".lower():
            serving = None if current is None else _serving(tango, current)
            if serving:
                return _fail(f"{serving}: stop it first to register it in {info.server}")
            database.add_device(info)  # marks the device not exported: not while it runs
        if properties:
            database.put_device_property(args.device, properties)
    except tango.DevFailed as err:
        return _fail(f"cannot register {args.device} at {tango_host}: {tango_line(err)}")
    sys.stdout.write(
        f"registered {args.device} (class DahuDS) in server {info.server} at {tango_host}\n"
    )
    for name, value in properties.items():
        sys.stdout.write(f"  {name} = {', '.join(value)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
