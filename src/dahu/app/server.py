"""``dahu_server INSTANCE [options] [Tango options]``: run the DahuDS Tango device server.

Dahu's own options are taken out of the command line; everything else goes to Tango
unchanged, so ``dahu_server test -nodb -port 10123 -dlist id00/dahu/1`` runs without a
database and ``dahu_server test`` runs against ``TANGO_HOST``.  Own options are matched
exactly (never as prefixes or bundled letters), because Tango's single-dash options such
as ``-dlist`` or ``-v4`` would otherwise be mistaken for ``-d`` or ``-l``.

SIGINT/SIGTERM stop the Tango loop; then the jobs still queued or running are aborted
and their outcome recorded in the journal before the process exits.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import logging
import logging.handlers
import os
import sys
from typing import Any

from .. import __version__
from ..errors import tango_line
from ..properties import PROPERTIES, local_directory, number
from . import leave

logger = logging.getLogger(__name__)

__all__ = ["main", "split_args"]

MAX_SHUTDOWN_TIMEOUT = 86400.0  # a day; 1e10 s overflows the system's timers

# Own options: flags, then options taking a value (each also in build_parser()).
FLAGS = {"-d", "--debug", "-V", "--version", "-h", "--help"}
VALUED = {"-l", "--log", "--shutdown-timeout"} | {
    p.server_option for p in PROPERTIES if p.server_option
}
_SERVER_HELP = {
    "plugins_directory": "plugin directory (repeatable), added to the device property's",
    "workdir": "work directory: journal, .inp/.out files (wins over the device property)",
    "max_workers": "jobs running at once, 0: the number of CPUs (wins over the device property)",
    "executor": "where plugins run (wins over the device property; default thread): "
    "thread = in the server, process = isolated worker processes, dask = a Dask cluster",
    "scheduler": "with --executor dask: the scheduler address (tcp://host:8786) or 'local' "
    "(default) to start a local cluster",
    "recycle_jobs": "with --executor process: replace a worker process after N jobs (wins "
    "over the device property; default 0: never)",
    "recycle_rss_mb": "with --executor process: replace a worker process whose resident memory "
    "passed MB megabytes, after its job (wins over the device property; default 0: never)",
    "default_timeout": "abort a running job after this long unless its plugin or input says "
    "otherwise (default: no limit; wins over the device property)",
    "http": "serve the read-only web page and its JSON endpoints on PORT of HOST "
    "(default host 127.0.0.1; wins over the device property http)",
    "http_token": "access token of the web page (at least 16 characters; default "
    "$DAHU_HTTP_TOKEN); generated and printed when HOST is not a loopback address",
    "retention": "prune old finished jobs (journal records and .inp/.out files) on a schedule: "
    "SPEC is a duration (30d, 12h: keep the jobs submitted since) or a number of most "
    "recent jobs to keep (100000); wins over the device property (default: keep all)",
    "retention_interval": "seconds between two prunes by --retention (wins over the device "
    "property; default 3600)",
}


def _check_values(args: argparse.Namespace) -> str | None:
    """Why ``--retention``/``--retention-interval``, ``--scheduler``, ``--http`` or
    ``--http-token`` cannot be applied (None if they can)."""
    from ..retention import parse_retention
    from ..timespec import BadTime
    from ..web.access import MIN_TOKEN_CHARS, WebError, parse_address

    if args.http_token and len(args.http_token) < MIN_TOKEN_CHARS:  # also for the property's page
        return f"argument --http-token: an access token has at least {MIN_TOKEN_CHARS} characters"
    if args.scheduler is not None and not args.scheduler.strip():  # it meant the property's
        return "argument --scheduler: an empty address (an unset variable?): give one, or local"
    if args.scheduler is not None and args.scheduler.strip().lower() != "local":
        from ..executors.dask_connect import scheduler_address

        try:
            scheduler_address(args.scheduler, "argument --scheduler")
        except ValueError as err:
            return str(err)
    try:
        if args.http is not None:  # --http "" was no page, without a word
            parse_address(args.http)
    except WebError as err:
        return f"argument --http: {err}"

    if args.retention is not None:
        try:
            parse_retention(args.retention)
        except BadTime as err:
            return f"argument --retention: {err}"
    if args.retention_interval is not None and not args.retention_interval > 0:
        return f"argument --retention-interval: expected more than 0 s, not {args.retention_interval:g}"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The parser of Dahu's own options."""
    parser = argparse.ArgumentParser(
        prog="dahu_server",
        description="Run the DahuDS Tango device server (data-analysis jobs).",
        epilog="Any other option is passed to Tango, e.g. -nodb -port 10123 "
        "-dlist id00/dahu/1, -v4, -ORBendPoint giop:tcp::10123.",
    )
    parser.add_argument("instance", help="server instance name (DahuDS/INSTANCE)")
    parser.add_argument("-V", "--version", action="version", version=f"dahu {__version__}")
    parser.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "-l",
        "--log",
        type=local_directory,
        metavar="DIR",
        help="also log to DIR/dahu_server_INSTANCE.log",
    )
    for prop in PROPERTIES:
        if prop.server_option:
            prop.add_option(parser, prop.server_option, _SERVER_HELP[prop.name])
    parser.add_argument(
        "--shutdown-timeout",
        metavar="S",
        type=number(float, 0, MAX_SHUTDOWN_TIMEOUT),  # inf: a traceback at the stop
        default=30.0,
        help="on SIGINT/SIGTERM, how long to wait for aborted jobs to end (default 30)",
    )
    return parser


# The original dahu_server's spellings of two Tango options, given to Tango its way
TANGO_SPELLINGS = {"-v": "-v{}", "--verbose": "-v{}", "-f": "-file={}", "--file": "-file={}"}


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split the command line into Dahu's own options and the rest (for Tango).  The
    original's ``-v/--verbose LEVEL`` and ``-f/--file FILE`` become Tango's ``-vLEVEL``
    and ``-file=FILE``, put after the rest: the original took them before the instance
    (``dahu_server -v 4 id00``), which Tango wants first."""
    own: list[str] = []
    rest: list[str] = []
    spelt: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        key = token.split("=", 1)[0] if token.startswith("--") else token
        if key in TANGO_SPELLINGS:
            value = token.split("=", 1)[1] if "=" in token else next(tokens, None)
            if value is None or (key in ("-v", "--verbose") and not value.isdigit()):
                rest += [token] if value is None else [token, value]
            else:
                spelt.append(TANGO_SPELLINGS[key].format(value))
            continue
        if key in FLAGS:
            own.append(token)
        elif key in VALUED:
            own.append(token)
            if "=" not in token:
                value = next(tokens, None)
                if value is not None:
                    own.append(value)
        else:
            rest.append(token)
    return own, rest + spelt


# Tango's options spelt with two dashes (PyTango also takes their abbreviations)
TANGO_LONG = ("host", "port", "nodb", "dlist", "verbose", "file", "dbg")


def stray_option(tango_args: list[str], parser: argparse.ArgumentParser) -> str | None:
    """Why a ``--name`` left for Tango is neither Dahu's nor Tango's (a misspelt option:
    Tango would refuse it with its own usage, naming no option of Dahu), or None."""
    for token in tango_args:
        name = token[2:].split("=", 1)[0]
        if not token.startswith("--") or not name or name.startswith("ORB"):
            continue
        if any(option.startswith(name) for option in TANGO_LONG):
            continue
        ours = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(token.split("=", 1)[0], ours, n=1, cutoff=0.7)
        hint = f": did you mean {close[0]}?" if close else " (see dahu_server --help)"
        return f"unrecognized option {token}{hint}"
    return None


def setup_logging(debug: bool, log_dir: str | None, instance: str) -> None:
    """Log to stderr, and to a rotating file in ``log_dir`` when given."""
    level = logging.DEBUG if debug else logging.INFO
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, f"dahu_server_{instance}.log")
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=20 * 2**20, backupCount=5
        )
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def _database_problem(tango: Any, instance: str, tango_args: list[str]) -> str | None:
    """Why the server cannot start from the Tango database, in one line; None if it can
    (or if it runs without one).  Tango's own messages do not say where it looked."""
    if any(arg == "-nodb" or arg.startswith("-file") for arg in tango_args):
        return None
    where = os.environ.get("TANGO_HOST")
    at = f" at TANGO_HOST={where}" if where else ""
    try:
        database = tango.Database()
        registered = list(database.get_device_class_list(f"DahuDS/{instance}"))
    except tango.DevFailed as err:
        return f"no Tango database reachable{at}: {tango_line(err)} (or run with -nodb)"
    if not registered:  # Tango: "... is not defined in database. Exiting!", status 255
        return (
            f"DahuDS/{instance} is not registered in the Tango database{at}: "
            f"run dahu-register {instance} DOMAIN/FAMILY/MEMBER first"
        )
    if not any(kind.lower() == "dahuds" for kind in registered[1::2]):  # its device deleted
        return (  # or moved: Tango would serve its admin device alone, and we say ready
            f"DahuDS/{instance} has no DahuDS device in the Tango database{at}: "
            f"run dahu-register {instance} DOMAIN/FAMILY/MEMBER first"
        )
    return _running_already(tango, database, instance)


def _running_already(tango: Any, database: Any, instance: str) -> str | None:
    """``DahuDS/instance is already running...`` if its admin device answers (Tango's own
    words: "This server is already running, exiting!", status 255)."""
    admin = f"dserver/DahuDS/{instance}"
    try:
        info = database.get_device_info(admin)
        if not info.exported:
            return None
        proxy = tango.DeviceProxy(admin)
        proxy.set_timeout_millis(2000)
        proxy.ping()
    except tango.DevFailed:  # not exported, or left exported by a process that died
        return None
    return (
        f"DahuDS/{instance} is already running (pid {info.pid} on {info.host}): "
        "stop it first, or start another instance"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dahu_server``; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    own, rest = split_args(argv)
    parser = build_parser()
    if rest and not rest[0].startswith("-"):
        instance, tango_args = rest[0], rest[1:]
        own.insert(0, instance)  # not the value of an option that lacks one
    else:
        instance, tango_args = None, rest
    args, unknown = parser.parse_known_args(own)
    if instance is None or unknown:
        parser.error("the instance name must come first: dahu_server INSTANCE [options]")
    if "/" in instance or not instance.strip():  # as dahu-register (DahuDS/INSTANCE)
        parser.error(f"invalid instance name {instance!r}")
    problem = stray_option(tango_args, parser) or _check_values(args)
    if problem:
        parser.error(problem)
    try:
        setup_logging(args.debug, args.log, instance)
    except OSError as err:  # -l /etc/passwd: a traceback until 2026-11-30
        sys.stderr.write(f"dahu_server: cannot log to {args.log}: {err.strerror or err}\n")
        return 1

    # Imported here so that --help and --version answer without loading Tango.
    import tango
    from tango.server import run

    from .. import server
    from ..server_errors import follow_orb_options

    problem = _database_problem(tango, instance, tango_args)
    if problem:
        sys.stderr.write(f"dahu_server: {problem}\n")
        return 1
    server.settings.workdir = args.workdir
    server.settings.plugins = list(args.plugins_directory)
    server.settings.max_workers = args.max_workers
    server.settings.executor = args.executor
    server.settings.scheduler = args.scheduler
    server.settings.timeout = args.default_timeout
    server.settings.recycle_jobs = args.recycle_jobs
    server.settings.recycle_rss_mb = args.recycle_rss_mb
    server.settings.retention = args.retention
    server.settings.retention_interval = args.retention_interval
    server.settings.http = args.http
    server.settings.http_token = args.http_token or os.environ.get("DAHU_HTTP_TOKEN") or None
    server.settings.shutdown_timeout = args.shutdown_timeout
    follow_orb_options(tango_args)  # the longest answer a command may send
    if args.http:
        from ..server_settings import start_web
        from ..web import WebError

        try:
            web = start_web(args.http, server.settings.http_token)
        except WebError as err:
            sys.stderr.write(f"dahu_server: {err}\n")
            return 1
        sys.stderr.write(f"dahu_server: web page at {web.url}\n")

    ready = False

    def started() -> None:
        nonlocal ready
        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's way (full collections scan far fewer objects).
        gc.collect()
        gc.freeze()
        ready = True
        logger.info("dahu_server %s: ready", instance)

    status = 0
    try:
        run(
            (server.DahuDS,),
            args=["DahuDS", instance, *tango_args],
            post_init_callback=started,
            raises=True,
        )
    except tango.DevFailed as err:
        sys.stderr.write(f"dahu_server: {tango_line(err)}\n")
        status = 1
    except RuntimeError as err:  # Tango's start failed (omniORB said why, e.g. a busy port)
        if ready:
            raise
        sys.stderr.write(f"dahu_server: Tango could not start ({err}): see omniORB above\n")
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        logger.info("dahu_server %s: stopping", instance)
        if not server.shutdown(args.shutdown_timeout):
            status = status or 1
    logger.info("dahu_server %s: stopped", instance)
    return status


def cli() -> None:
    """The ``dahu_server`` command: :func:`main`, then exit without waiting for threads
    that plugins left running (:func:`dahu.app.leave`)."""
    leave(main())


if __name__ == "__main__":
    cli()
