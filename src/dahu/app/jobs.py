"""``dahu-jobs``: list, inspect, count, export and prune the jobs of a work directory.

Reads the journal (``journal.sqlite``) of ``--workdir`` (default ``$DAHU_WORKDIR``, else
``~/.local/state/dahu``) on a read-only connection, so it can run while a server writes
the same journal; only ``prune`` writes (see :mod:`dahu.retention`).

Exit status: 0 done, 1 no job with the id given to ``show``, 2 bad usage (unknown
option, bad date or number, an export file or standard output that cannot be written), 3 the work directory is missing, is not a Dahu work
directory, or its journal cannot be read or written, 4 done, but fields of some jobs
could not be read (a damaged row: each named on stderr), 130 interrupted (^C).  Every error is
one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
from typing import IO, Any, NoReturn

from tabulate import tabulate

from .. import __version__
from ..jobquery import Filters, count, get, latest, missing, open_journal, records, statistics
from ..journal import JournalError, default_workdir, job_file_stem, processes
from ..journal.sqlite import SQLiteJournal, process_alive
from ..retention import DEFAULT_MIN_AGE, prune
from ..states import State
from ..timespec import LONGEST_RUNTIME, format_duration, format_time
from ..utils import one_line, standard_json
from . import jobs_args as types
from .jobtable import Unreadable, cut, micro, runtime_text, shown, shown_plugin, write_table

__all__ = [
    "build_parser",
    "main",
    "EXIT_OK",
    "EXIT_NOT_FOUND",
    "EXIT_USAGE",
    "EXIT_WORKDIR",
    "EXIT_UNREADABLE",
]

PROG = "dahu-jobs"
EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_WORKDIR, EXIT_UNREADABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # as a shell says of a command ended by ^C
DEFAULT_LIMIT = 50
EXPORT_FIELDS = [
    "id",
    "plugin",
    "state",
    "submitted",
    "started",
    "ended",
    "runtime",
    "host",
    "pid",
    "version",
    "module_file",
    "plugin_version",
    "error",
    "input",
    "output",
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``dahu-jobs: ...``), status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {PROG} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dahu-jobs`` (also used to write its man page)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-w",
        "--workdir",
        metavar="DIR",
        type=types.workdir,
        default=argparse.SUPPRESS,
        help="the work directory (default: $DAHU_WORKDIR, else ~/.local/state/dahu)",
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument(
        "--plugin", type=types.plugin, metavar="NAME", help="only jobs of this plugin (any case)"
    )
    filters.add_argument(
        "--state",
        type=str.lower,
        choices=State.ALL,
        help="only jobs in this state, any case (the journal records a queued job as uninitialized: "
        "starting finds those)",
    )
    filters.add_argument(
        "--since",
        type=types.when,
        metavar="WHEN",
        help="only jobs submitted at or after WHEN: a duration back from now (90s, 10m, "
        "1h, 2d, 1w), today, yesterday, or a date (2026-11-28, 2026-11-28T10:00)",
    )
    filters.add_argument(
        "--until", type=types.when, metavar="WHEN", help="only jobs submitted at or before WHEN"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON, for scripts")

    parser = Parser(
        prog=PROG,
        description="List, inspect, count, export and prune the jobs recorded in the journal "
        "of a Dahu work directory. Safe while a server runs on it.",
        parents=[common],
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="list, show, stats, export or prune"
    )

    add = commands.add_parser(
        "list",
        parents=[common, filters, as_json],
        help="the most recent jobs, as a table (or JSON)",
        description="The most recent jobs that match, oldest first.",
    )
    add.add_argument(
        "--limit",
        type=types.count,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N jobs, the most recent (default {DEFAULT_LIMIT}; 0: all)",
    )
    add = commands.add_parser(
        "show",
        parents=[common, as_json],
        help="one job: input, output, error, times, provenance, files",
        description="Everything the journal knows of one job.",
    )
    add.add_argument("job_id", type=types.job_id, metavar="ID", help="the job id (-1: the last)")
    commands.add_parser(
        "stats",
        parents=[common, filters, as_json],
        help="per plugin: jobs, successes, failures, aborts, mean and p95 runtime",
        description="Counts and runtimes of the jobs that match, per plugin and in all.",
    )
    add = commands.add_parser(
        "export",
        parents=[common, filters],
        help="the jobs that match, whole, as CSV or JSON lines",
        description="Write every job that matches, with its input, output and error.",
    )
    add.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        help="JSON lines (one object per job) or CSV (input and output as JSON text); "
        "default: csv when the output file ends with .csv, else jsonl",
    )
    add.add_argument(
        "-o",
        "--output",
        type=types.output,
        metavar="FILE",
        help="write to FILE (default, or -: stdout)",
    )
    add = commands.add_parser(
        "prune",
        parents=[common, as_json],
        help="remove old finished jobs and their .inp/.out files, reclaim the space",
        description="Remove the records and files of old finished jobs; jobs not finished "
        "are never touched. Safe while a server runs.",
    )
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--before", type=types.when, metavar="WHEN", help="remove jobs submitted before WHEN"
    )
    which.add_argument(
        "--keep-last",
        type=types.count,
        metavar="N",
        help="remove all but the N most recent jobs that ended (unfinished ones are kept)",
    )
    add.add_argument("--dry-run", action="store_true", help="only tell what would be removed")
    add.add_argument(
        "--min-age",
        type=types.seconds,
        default=DEFAULT_MIN_AGE,
        metavar="SECONDS",
        help="keep jobs that ended less than this long ago, as their files may still be "
        "being written (default %(default)g; 30s, 5m also accepted)",
    )
    return parser


# ---- commands ---------------------------------------------------------------------------
def _filters(args: argparse.Namespace) -> Filters:
    return Filters(args.plugin, args.state, args.since, args.until)


def cmd_list(db: Any, args: argparse.Namespace, out: IO[str]) -> int:
    """``list``."""
    filters = _filters(args)
    rows = latest(db, filters, args.limit or None, args.unreadable)
    if args.json:
        keys = ["id", "plugin", "state", "submitted", "started", "ended", "runtime", "error"]
        # one job at a time, as json.dump(items, indent=1) writes them: the text of a
        # million jobs is not held whole in memory
        out.write("[" if rows else "[]\n")
        for index, row in enumerate(rows):
            item = dict(zip(keys, row, strict=True))
            item["error"] = one_line(item["error"] or "")
            text = standard_json(item, indent=1).replace("\n", "\n ")
            out.write(("\n " if index == 0 else ",\n ") + text)
        out.write("\n]\n" if rows else "")
    else:
        unit = micro(out)

        def cells(row: tuple) -> tuple[str, ...]:
            i, plugin, state, submitted, _, _, runtime, error = row
            runtime = format_duration(runtime, unit)
            return str(i), shown_plugin(plugin), state, format_time(submitted), runtime, cut(error)

        headers = ["id", "plugin", "state", "submitted", "runtime", "error"]
        write_table(headers, rows, cells, out)
        if not rows:
            sys.stderr.write(f"{PROG}: no job matches\n")
    if args.limit and len(rows) == args.limit:  # said on stderr: the JSON stays clean
        total = count(db, filters)
        if total > len(rows):
            sys.stderr.write(
                f"{PROG}: the last {len(rows)} of {total} matching jobs (--limit 0 for all)\n"
            )
    return EXIT_OK


def _files(workdir: str, job_id: int, plugin: str) -> dict[str, str | None]:
    stem = job_file_stem(workdir, job_id, plugin)
    return {
        ext: (stem + "." + ext if os.path.isfile(stem + "." + ext) else None)
        for ext in ("inp", "out")
    }


def _record_dict(record: Any) -> dict[str, Any]:
    """The record's fields (one that cannot be read: None, ``show`` says why)."""
    return {
        name: None if name in record.unreadable else getattr(record, name) for name in EXPORT_FIELDS
    }


def _json_field(record: Any, name: str) -> str:
    if name in record.unreadable:
        return f"(unreadable: {record.unreadable[name]})"
    value = getattr(record, name)  # détecteur, not d\u00e9...
    return "(none)" if value is None else json.dumps(value, indent=2, ensure_ascii=False)


GONE = (
    "the next server or engine on this work directory (a running one: within seconds) "
    "records it failure, interrupted"
)


def cmd_show(db: Any, args: argparse.Namespace, out: IO[str]) -> int:
    """``show ID``."""
    record = get(db, args.job_id)
    if record is None:
        sys.stderr.write(f"{PROG}: {missing(db, args.job_id, args.workdir)}\n")
        return EXIT_NOT_FOUND
    args.unreadable.record(record)
    files = _files(args.workdir, record.id, record.plugin)
    # not ended, and the process that ran it is gone (killed, and not started again)
    path = os.path.join(args.workdir, SQLiteJournal.FILENAME)
    known = processes.known(lambda sql, values: db.execute(sql, values).fetchall(), path)
    gone = record.state not in State.FINAL and not process_alive(
        record.host, record.pid, record.submitted, None, known, record.process
    )
    if args.json:
        record_json = {**_record_dict(record), "files": files, "gone": gone}
        out.write(standard_json(record_json, indent=1) + "\n")
        return EXIT_OK
    lines = [
        f"job {record.id}: {shown_plugin(record.plugin)}, {record.state}"
        + (f" (its process {record.pid} is gone: {GONE})" if gone else ""),
        f"submitted  {format_time(record.submitted)}",
        f"started    {format_time(record.started)}",
        f"ended      {format_time(record.ended)}",
        f"runtime    {runtime_text(record.runtime, out)} ({record.runtime:.9g} s)"
        if record.runtime is not None and 0 <= record.runtime <= LONGEST_RUNTIME
        else f"runtime    {runtime_text(record.runtime, out)}".rstrip(),
        f"host       {record.host or ''} (pid {record.pid}), Dahu {record.version or '?'}",
        f"plugin     {record.module_file or '?'}, version {record.plugin_version or '?'}",
        f"files      {files['inp'] or '(no .inp)'}, {files['out'] or '(no .out)'}",
    ]
    # a terminal escape in a name or an error (ESC [2J) is shown, it does not clear the
    # screen; the error's and the JSON's lines stay lines
    lines = [shown(line) for line in lines]
    for name in ("input", "output"):
        lines += [f"{name}:", shown(_json_field(record, name), lines=True)]
    lines += ["error:", shown(record.error or "(none)", lines=True)]
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def cmd_stats(db: Any, args: argparse.Namespace, out: IO[str]) -> int:
    """``stats``."""
    figures = statistics(db, _filters(args), args.unreadable)
    if args.json:
        out.write(standard_json(figures, indent=1) + "\n")
        return EXIT_OK
    rows = []
    for name, entry in [*figures["plugins"].items(), ("(all)", figures["total"])]:
        unfinished = entry["jobs"] - sum(entry[s] for s in State.FINAL)
        rows.append(
            [
                shown_plugin(name),
                entry["jobs"],
                entry["success"],
                entry["failure"],
                entry["aborted"],
                unfinished,
                runtime_text(entry["mean_s"], out),
                runtime_text(entry["p95_s"], out),
            ]
        )
    headers = ["plugin", "jobs", "success", "failure", "aborted", "unfinished", "mean", "p95"]
    out.write(tabulate(rows, headers=headers, disable_numparse=True) + "\n")
    return EXIT_OK


def _same_file(one: str, other: str) -> bool:
    """Whether two names are one file: a symbolic or a hard link to it too."""
    try:
        return os.path.samefile(one, other)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(one) == os.path.realpath(other)


def cmd_export(db: Any, args: argparse.Namespace, out: IO[str]) -> int:
    """``export``."""
    if args.output == "-":  # standard output, as for other tools (not a file named "-")
        args.output = None
    kind = args.format or ("csv" if (args.output or "").lower().endswith(".csv") else "jsonl")
    target = out
    if args.output:
        journal = os.path.join(args.workdir, SQLiteJournal.FILENAME)
        mine = [journal + suffix for suffix in ("", "-wal", "-shm", "-journal")]
        if any(_same_file(args.output, name) for name in mine):
            sys.stderr.write(f"{PROG}: will not export onto the journal itself: {args.output}\n")
            return EXIT_USAGE
        try:
            target = open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as err:
            sys.stderr.write(f"{PROG}: cannot write {args.output}: {err.strerror or err}\n")
            return EXIT_USAGE
    written = 0
    filters = _filters(args)
    found: Any = records(db, filters)
    if sys.stderr.isatty() and (args.output or not out.isatty()):  # a bar beside no output
        from tqdm import tqdm  # a million jobs take about 40 s

        total = count(db, filters)
        found = tqdm(found, total=total, unit="job", desc="exporting", file=sys.stderr, leave=False)
    try:
        if kind == "csv":
            writer = csv.writer(target)
            writer.writerow(EXPORT_FIELDS)
            for record in found:
                args.unreadable.record(record)
                row = _record_dict(record)
                row["input"] = standard_json(row["input"])
                row["output"] = standard_json(row["output"]) if row["output"] is not None else ""
                writer.writerow(["" if row[k] is None else row[k] for k in EXPORT_FIELDS])
                written += 1
        else:
            for record in found:
                args.unreadable.record(record)
                target.write(standard_json(_record_dict(record)) + "\n")
                written += 1
        if target is not out:
            target.close()
    except (OSError, KeyboardInterrupt, JournalError) as err:  # disk full, ^C, a damaged
        if target is out:  # journal (until 2026-11-30 its first jobs were left in the file):
            raise  # no half-written file is left
        with contextlib.suppress(OSError):
            target.close()
        with contextlib.suppress(OSError):
            os.remove(args.output)
        if isinstance(err, (KeyboardInterrupt, JournalError)):
            raise
        sys.stderr.write(f"{PROG}: cannot write {args.output}: {err.strerror or err}\n")
        return EXIT_USAGE
    finally:
        if target is not out and not target.closed:
            target.close()
        found.close()  # the bar, or the generator
    if args.output:
        sys.stderr.write(f"{PROG}: {written} job(s) written to {args.output} ({kind})\n")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: IO[str]) -> int:
    """``prune``: a progress bar on a terminal (a million jobs take about half a minute)."""
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="job", desc="pruning", file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.set_description("reclaiming the space")

    try:
        report = prune(
            args.workdir,
            before=args.before,
            keep_last=args.keep_last,
            dry_run=args.dry_run,
            min_age=args.min_age,
            progress=progress if sys.stderr.isatty() and not args.dry_run else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        out.write(standard_json(report.as_dict(), indent=1) + "\n")
    else:
        out.write(report.summary() + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run ``dahu-jobs`` with ``argv`` (default: the command line); the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        since, until = getattr(args, "since", None), getattr(args, "until", None)
        if since is not None and until is not None and since > until:  # none could match
            parser.error(
                "--since is after --until (a duration is back from now: --since 2h --until 1h)"
            )
    except SystemExit as exc:  # --help, --version, or bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.workdir = os.path.abspath(getattr(args, "workdir", None) or default_workdir())
    logging.basicConfig(format=f"{PROG}: %(message)s")  # a prune's warnings: one line each
    out = sys.stdout
    if out is None:  # started with standard output closed (>&-): nothing is done
        sys.stderr.write(f"{PROG}: standard output is closed: nowhere to write\n")
        return EXIT_USAGE
    with contextlib.suppress(AttributeError, ValueError):
        # a job's text (é, ☢) on a terminal that cannot show it: escaped, not a traceback
        out.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        if args.command == "prune":
            status = cmd_prune(args, out)
            out.flush()
            return status
        db = open_journal(args.workdir)
        try:
            commands = {
                "list": cmd_list,
                "show": cmd_show,
                "stats": cmd_stats,
                "export": cmd_export,
            }
            args.unreadable = Unreadable(PROG)  # said on stderr, one line per field
            status = commands[args.command](db, args, out)
            out.flush()  # a full disk is told here, not ignored at exit
            return EXIT_UNREADABLE if status == EXIT_OK and args.unreadable else status
        finally:
            db.close()
    except JournalError as err:
        sys.stderr.write(f"{PROG}: {one_line(str(err))}\n")
        return EXIT_WORKDIR
    except KeyboardInterrupt:  # ^C: what prune did so far stands (see docs/jobs.md)
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        _drop_output()
        return EXIT_OK
    except OSError as err:  # standard output on a full disk (> FILE): one line, not a traceback
        sys.stderr.write(f"{PROG}: cannot write the output: {err.strerror or err}\n")
        _drop_output()
        return EXIT_USAGE


def _drop_output() -> None:
    """What is left in standard output's buffer goes nowhere: flushed at exit, it would
    fail again (a traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
