"""The command line of ``dahu-reprocess``: its options (also used to write its man page)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from .. import __version__
from ..compare import DEFAULT_ATOL, DEFAULT_RTOL
from ..executors.pool_size import process_workers
from ..journal import default_workdir
from ..properties import MAX_WORKERS
from ..properties import local_directory as directory  # ~ is the home directory
from ..timespec import quoted
from .sources import IDS

__all__ = ["PROG", "build_parser", "usage_problems"]

PROG = "dahu-reprocess"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # also past 4,300 digits
        if text.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"must be at most {MAX_WORKERS}, not {quoted(text)}"
            ) from None
        raise argparse.ArgumentTypeError(f"expected a whole number, not {quoted(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    if value > MAX_WORKERS:  # a thread (or a process) each: before anything is made
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WORKERS}, not {value}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and math.isfinite(value)):  # inf would make every number the same
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {shown}")
    return value


_HELP = {
    "sources": "a job input file (.inp or .json), - for one input read from standard input, "
    "a directory searched recursively for them, "
    "or job ids (3, 1-5, 1-3,7; -1 the newest, -3--1 the last three) from the journal of "
    "--workdir",
    "output": "directory for the new journal and .inp/.out files "
    "(default: a new work directory, <tmp>/dahu_<user>/<date-time>_<pid>)",
    "workdir": "work directory whose journal holds the job ids given as SOURCE "
    "(default: $DAHU_WORKDIR, else ~/.local/state/dahu)",
    "plugins": "add a plugin directory, searched before those of DAHU_PLUGINS (repeatable)",
    "compare": "compare each new output with the archived one (the .out next to the .inp, "
    "or the journal's); list the jobs that differ",
    "rtol": "relative tolerance on numbers for --compare (default %(default)g)",
    "atol": "absolute tolerance on numbers for --compare (default %(default)g)",
    "ignore": "output key or HDF5 member name not compared, at any depth (repeatable; "
    "job_id is never compared)",
}


class _Parser(argparse.ArgumentParser):
    """Job ids counted back from the newest (``-3--1``, ``-2,-1``) are SOURCEs, not
    options (argparse takes only ``-1`` for one, as a negative number)."""

    def _parse_optional(self, arg_string: str) -> Any:
        return None if IDS.match(arg_string) else super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dahu-reprocess`` (also used to write its man page)."""
    parser = _Parser(
        prog=PROG,
        description="Run archived Dahu jobs again, in parallel, print a summary, and "
        "optionally compare the new outputs with the archived ones.",
    )
    add = parser.add_argument
    add("sources", nargs="+", metavar="SOURCE", help=_HELP["sources"])
    add("-o", "--output", type=directory, metavar="DIR", help=_HELP["output"])
    add("-j", "--jobs", type=_positive_int, default=1, metavar="N", help="jobs run at once")
    add("--workdir", type=directory, metavar="DIR", help=_HELP["workdir"])
    add(
        "--plugins",
        action="append",
        default=[],
        type=directory,
        metavar="DIR",
        help=_HELP["plugins"],
    )
    add(
        "--executor",
        choices=["thread", "process"],
        default="thread",
        help="where the plugins run: threads of this process (default) or isolated "
        "worker processes (a crashing plugin then fails only its job)",
    )
    add("--compare", action="store_true", help=_HELP["compare"])
    add("--rtol", type=_tolerance, default=DEFAULT_RTOL, metavar="X", help=_HELP["rtol"])
    add("--atol", type=_tolerance, default=DEFAULT_ATOL, metavar="X", help=_HELP["atol"])
    add("--ignore", action="append", default=[], metavar="KEY", help=_HELP["ignore"])
    add("-q", "--quiet", action="store_true", help="print only the summary: no progress bar")
    add("--json", action="store_true", help="print the summary as JSON")
    add("-d", "--debug", action="store_true", help="log debugging messages")
    add("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def usage_problems(args: argparse.Namespace) -> list[str]:
    """What makes the parsed ``args`` unusable, found before anything is made: one line each."""
    named = [("plugin directory", d) for d in args.plugins] + [("work directory", args.workdir)]
    problems = [  # a --workdir typo: no output directory made for jobs that cannot run
        f"{what} {d} {'is not a directory' if os.path.exists(d) else 'does not exist'}"
        for what, d in named
        if d and not os.path.isdir(d)
    ]
    ids = [s for s in args.sources if IDS.match(s) and not os.path.exists(s)]
    if ids and not args.workdir and not os.path.isdir(default := default_workdir()):
        origin = "$DAHU_WORKDIR" if os.environ.get("DAHU_WORKDIR") else "the default"
        problems.append(
            f"job ids {ids[0]}: no work directory {default} ({origin}): give --workdir DIR"
        )
    if args.executor == "process":  # -j 4096: a worker process each, 20 MB when idle
        try:
            process_workers(args.jobs)
        except ValueError as err:
            problems.append(f"argument -j/--jobs: {err}".replace("max_workers ", "", 1))
    if sys.stdout is None:  # started with standard output closed (>&-): as dahu-jobs
        problems.append("standard output is closed: nowhere to print the summary")
    if args.sources.count("-") > 1:
        problems.append("SOURCE - (standard input) is given more than once: it holds one input")
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        problems.append(f"output {args.output} is not a directory")
    output = os.path.realpath(args.output) if args.output else None
    for source in args.sources if output else []:
        # its NNNN/*.inp files, from earlier runs, would run again: twice as many each time
        below = os.path.relpath(os.path.realpath(source), output).split(os.sep)[0]
        if os.path.isdir(source) and (below == os.curdir or below.isdigit()):
            where = "is also" if below == os.curdir else f"holds, in {below}/,"
            problems.append(
                f"the output directory {args.output} {where} a SOURCE: the inputs its "
                "earlier runs wrote there would run again (give another -o)"
            )
            break
    return problems
