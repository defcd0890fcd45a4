"""Man pages of the tools installed with Dahu, rendered in roff from their argument parsers.

``python -m dahu.app.manpage`` writes ``man/dahu_server.1``, ``man/dahu-register.1``,
``man/dahu-reprocess.1`` and ``man/dahu-jobs.1`` (``--check`` only tells whether they are
up to date).  Each page's SYNOPSIS, ARGUMENTS, OPTIONS and (for a tool with
subcommands) COMMANDS come from the tool's ``build_parser()``, so they list every
option; the prose (description, environment, files, exit status) is kept here.
A tool whose module does not offer ``build_parser()`` yet is described by a parser
written here from its specification.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["PAGES", "Page", "get_parser", "main", "render", "render_page"]

MAN_DIR = Path(__file__).resolve().parents[3] / "man"
"""The ``man/`` directory of a source checkout."""


@dataclass
class Page:
    """What a man page says beyond its parser's options."""

    name: str
    module: str
    summary: str
    description: list[str]
    environment: list[tuple[str, str]] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)
    exit_status: list[tuple[str, str]] = field(default_factory=list)
    see_also: list[str] = field(default_factory=list)
    extra: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)


_ENV_PLUGINS = (
    "DAHU_PLUGINS",
    "Plugin directories, separated by ':', searched before the others.",
)
_ENV_WORKDIR = (
    "DAHU_WORKDIR",
    "The stable work directory (default $XDG_STATE_HOME/dahu, that is ~/.local/state/dahu).",
)
_ENV_TANGO = ("TANGO_HOST", "host:port of the Tango database.")

PAGES: dict[str, Page] = {
    "dahu_server": Page(
        name="dahu_server",
        module="dahu.app.server",
        summary="the Dahu data-analysis job server (Tango device server DahuDS)",
        description=[
            "dahu_server runs the Tango device DahuDS: clients submit jobs (a plugin name "
            "and a JSON input), the server runs them through Dahu plugins, records every "
            "job in a persistent journal and pushes a change event when a job ends.",
            "INSTANCE is the name of the server instance in the Tango database (see "
            "dahu-register(1)). Options that Dahu does not know, such as the Tango options "
            "below, are passed on to Tango.",
            "With --http, the server also serves a live, read-only web page and its JSON "
            "endpoints (/api): counters, running and latest jobs, failures with their "
            "reason, per-plugin statistics and plots of the last hour. It listens on "
            "127.0.0.1 unless HOST says otherwise; on any other address it requires an "
            "access token, generated and printed at start when not given. Without --http "
            "nothing listens besides Tango.",
        ],
        extra=[
            (
                "TANGO OPTIONS",
                [
                    ("-nodb", "run without a Tango database (with -port and -dlist)"),
                    ("-port N", "listen on TCP port N"),
                    ("-dlist DEV", "the device(s) to export when running without database"),
                    ("-vN", "Tango's own trace level N (1 to 5); also -v N, --verbose N"),
                    (
                        "-file=FILE",
                        "Tango's file database: the devices and properties are read from "
                        "FILE, not from TANGO_HOST; also -f FILE, --file FILE",
                    ),
                    ("-ORBendPoint giop:tcp:HOST:PORT", "the CORBA end point to listen on"),
                ],
            )
        ],
        environment=[
            _ENV_PLUGINS,
            _ENV_WORKDIR,
            _ENV_TANGO,
            ("DAHU_HTTP_TOKEN", "The web page's access token, when --http-token is not given."),
            (
                "DAHU_PLUGIN_IMPORT_TIMEOUT",
                "Seconds a plugin module's import may take when listPlugins or initPlugin "
                "asks a helper process for it (process and dask executors; default 60).",
            ),
        ],
        files=[
            ("WORKDIR/journal.sqlite", "the journal: every job, its input, output and error"),
            (
                "WORKDIR/NNNN/NNNNN_PLUGIN.inp, .out",
                "the input and output of each job, as indented JSON",
            ),
        ],
        exit_status=[
            ("0", "the server stopped normally"),
            (
                "1",
                "the server could not start (no Tango database reachable, the instance "
                "not registered, a port in use: one line says which), jobs were "
                "still running after --shutdown-timeout, or outcomes could not be recorded "
                "in the journal",
            ),
            ("2", "bad usage"),
            ("other", "Tango ended the process"),
        ],
        see_also=["dahu-register(1)", "dahu-reprocess(1)"],
    ),
    "dahu-register": Page(
        name="dahu-register",
        module="dahu.app.register",
        summary="register a Dahu device server in the Tango database",
        description=[
            "dahu-register declares, in the Tango database, the server DahuDS/INSTANCE "
            "and its DahuDS device DEVICE, so that dahu_server INSTANCE can start.",
        ],
        environment=[_ENV_TANGO],
        exit_status=[
            ("0", "the device is registered"),
            ("1", "the registration failed (for example no Tango database)"),
            ("2", "bad usage"),
        ],
        see_also=["dahu_server(1)", "dahu-reprocess(1)"],
    ),
    "dahu-reprocess": Page(
        name="dahu-reprocess",
        module="dahu.app.reprocess",
        summary="run archived Dahu jobs again and compare with what they gave",
        description=[
            "dahu-reprocess runs archived jobs again through the same plugin code as the "
            "server, -j at a time, writes their .inp/.out files and journal into an output "
            "directory, and prints a summary per plugin: jobs succeeded, failed and "
            "aborted, total and mean runtime. A progress bar is shown when standard error "
            "is a terminal.",
            "Input keys listed in a plugin's REPROCESS_IGNORE are dropped before the job "
            "runs, and the paths of those in its REPROCESS_RELOCATE are moved under "
            "DIR/relocated/ (the archived files are not written over); job_id is "
            "renumbered. An input that cannot be run (missing, not JSON, no "
            "plugin_name, unknown plugin) is reported on one line and counted as failed; "
            "the others still run.",
            "With --compare, each new output is compared with the archived one: same keys, "
            "equal values, numbers and arrays within --rtol/--atol "
            "(|new - old| <= atol + rtol * |old|), files named in the output by content, "
            "HDF5 files dataset by dataset by value, text files of numbers (pyFAI "
            "curves) as tables, their # comment lines skipped (the names in --ignore and in the "
            "plugin's REPROCESS_COMPARE_IGNORE, such as time stamps, are skipped). The jobs "
            "that differ are listed with "
            "their first differing key.",
            "Ctrl-C (or SIGTERM) stops starting jobs and aborts the running ones; the "
            "summary of what finished is still printed. A second Ctrl-C stops waiting.",
        ],
        environment=[
            (
                "DAHU_PLUGINS",
                "Plugin directories, separated by ':', searched after those of --plugins.",
            ),
            ("DAHU_WORKDIR", "The work directory whose journal holds job ids (see --workdir)."),
            ("TMPDIR", "Where the default output directory is made."),
        ],
        files=[
            ("OUTPUT/journal.sqlite", "the journal of the new runs"),
            ("OUTPUT/NNNN/NNNNN_PLUGIN.inp, .out", "the input and output of each new run"),
            ("NAME.out", "the archived output of the input file NAME.inp (for --compare)"),
        ],
        exit_status=[
            ("0", "every job succeeded (and, with --compare, none differs)"),
            (
                "1",
                "a job failed or was aborted, an input could not be run, outputs differ, "
                "or an outcome or a job's files could not be written (disk full)",
            ),
            ("2", "bad usage, or an output directory that cannot be made or used"),
            ("130", "interrupted by Ctrl-C or SIGTERM"),
        ],
        see_also=["dahu_server(1)", "dahu-register(1)", "dahu-jobs(1)"],
    ),
    "dahu-jobs": Page(
        name="dahu-jobs",
        module="dahu.app.jobs",
        summary="list, inspect, count, export and prune the jobs of a Dahu work directory",
        description=[
            "dahu-jobs reads the journal (journal.sqlite) of a Dahu work directory: every "
            "job a server or dahu-reprocess ran there, with its input, output, error, times "
            "and provenance. It opens the journal read-only, so it can run while a server "
            "writes the same journal; only prune writes.",
            "WHEN, in --since, --until and --before, is a duration back from now (90s, 10m, "
            "1h, 2d, 1w), now, today, yesterday, or an ISO 8601 date or date and time "
            "(2026-11-28, 2026-11-28T10:00, 2026-11-28 10:00:00+01:00), in local time "
            "unless it carries an offset. Times are those the jobs were submitted at.",
            "prune removes the journal records and the .inp/.out files of finished jobs "
            "(success, failure, aborted) only: jobs still queued or running are kept and "
            "counted. It deletes in short transactions, so a running server is not held "
            "up, never removes a job that ended less than --min-age ago (the server writes "
            "its files just after it ends), then gives the freed space back to the file "
            "system. Job ids are never reused. A server can prune on a schedule by itself: "
            "see --retention in dahu_server(1).",
        ],
        environment=[
            ("DAHU_WORKDIR", "The work directory when --workdir is not given."),
            ("XDG_STATE_HOME", "Without DAHU_WORKDIR, the work directory is XDG_STATE_HOME/dahu."),
        ],
        files=[
            ("WORKDIR/journal.sqlite", "the journal"),
            ("WORKDIR/NNNN/NNNNN_PLUGIN.inp, .out", "the input and output files of each job"),
        ],
        exit_status=[
            ("0", "done (also when no job matches)"),
            ("1", "show: no job with this id in the journal"),
            (
                "2",
                "bad usage: unknown command or option, bad date, duration or number, or an "
                "export file that cannot be written (or is the journal itself), or standard output "
                "that cannot be written (a full disk)",
            ),
            (
                "3",
                "the work directory does not exist, is not a Dahu work directory (no "
                "journal.sqlite, or not a Dahu journal), or its journal cannot be read or "
                "written",
            ),
            (
                "4",
                "done, but a field of some job's record could not be read (a damaged or "
                "hand-edited journal row); each is named on stderr in one line",
            ),
            (
                "130",
                "interrupted by Ctrl-C: export removes the file it was writing; what prune "
                "removed stays removed",
            ),
        ],
        see_also=["dahu_server(1)", "dahu-reprocess(1)"],
    ),
}
"""The man pages, by tool name."""


def get_parser(name: str) -> argparse.ArgumentParser:
    """The tool's parser: its module's ``build_parser()``."""
    return importlib.import_module(PAGES[name].module).build_parser()


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, minus signs, and a leading control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        name = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        name = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        name = action.dest.upper()
    arg = f"\\fI{_esc(name)}\\fR"
    return {
        "?": f"[{arg}]",
        "*": f"[{arg} ...]",
        "+": f"{arg} [{arg} ...]",
        argparse.REMAINDER: "...",
    }.get(action.nargs, arg)


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _expand_help(action: argparse.Action, prog: str) -> str:
    """The help text with its ``%(...)s`` fields filled in, as argparse does."""
    text = action.help or ""
    params = dict(vars(action), prog=prog)
    for key in [k for k, v in params.items() if v is argparse.SUPPRESS]:
        del params[key]
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    try:
        return text % params
    except (KeyError, TypeError, ValueError):
        return text


def _section(title: str) -> list[str]:
    return [f".SH {_esc(title)}"]


def _items(entries: list[tuple[str, str]], tag_font: str = "B") -> list[str]:
    lines = []
    for tag, text in entries:
        lines += [".TP", f".{tag_font} {_esc(tag)}", _esc(text)]
    return lines


def subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """The subcommands of ``parser``: (name, parser, help), in order; [] if none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return []


def _split(parser: argparse.ArgumentParser) -> tuple[list, list]:
    """The optional and positional actions of ``parser`` that have a help text."""
    # argparse keeps its actions in a private list; it is the only way to enumerate them
    actions = [a for a in parser._actions if a.help is not argparse.SUPPRESS]
    optional = [a for a in actions if a.option_strings]
    positional = [a for a in actions if not a.option_strings]
    return optional, positional


def _option_items(optional: list, prog: str) -> list[str]:
    lines = []
    for action in optional:
        tags = []
        for option in action.option_strings:
            tag = f"\\fB{_esc(option)}\\fR"
            tags.append(f"{tag} {_metavar(action)}" if _takes_value(action) else tag)
        lines += [".TP", ", ".join(tags), _esc(_expand_help(action, prog))]
    return lines


def _commands_section(page: Page, parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for name, sub, help_text in subcommands(parser):
        optional, positional = _split(sub)
        optional = [a for a in optional if "-h" not in a.option_strings]
        usage = " ".join(
            [f"\\fB{_esc(page.name)} {_esc(name)}\\fR"]
            + [_metavar(a) for a in positional]
            + (["[\\fIoptions\\fR]"] if optional else [])
        )
        lines += [".SS", usage]
        lines.append(_esc(sub.description or help_text))
        for action in positional:
            lines += [".TP", _metavar(action), _esc(_expand_help(action, page.name))]
        lines += _option_items(optional, page.name)
    return _section("COMMANDS") + lines if lines else []


def render(page: Page, parser: argparse.ArgumentParser) -> str:
    """The roff source of ``page``, with the options (and subcommands) of ``parser``."""
    optional, positional = _split(parser)
    title = page.name.upper().replace("-", "\\-")
    lines = [
        f'.\\" Generated by "python -m dahu.app.manpage" from the {page.name} argument parser.',
        '.\\" Do not edit: change the parser or dahu/app/manpage.py and regenerate.',
        f'.TH {title} 1 "" "Dahu" "User Commands"',
        ".nh",
        ".ad l",
        *_section("NAME"),
        f"{_esc(page.name)} \\- {_esc(page.summary)}",
        *_section("SYNOPSIS"),
        f".B {_esc(page.name)}",
    ]
    for action in optional:
        flag = f"\\fB{_esc(action.option_strings[0])}\\fR"
        # an unbreakable space keeps an option and its value on one line
        lines.append(f"[{flag}\\ {_metavar(action)}]" if _takes_value(action) else f"[{flag}]")
    lines += [_metavar(action) for action in positional]
    lines += _section("DESCRIPTION")
    for number, paragraph in enumerate(page.description):
        lines += ([".PP"] if number else []) + [_esc(paragraph)]
    if positional:
        lines += _section("ARGUMENTS")
        for action in positional:
            lines += [".TP", _metavar(action), _esc(_expand_help(action, page.name))]
    lines += _section("OPTIONS")
    lines += _option_items(optional, page.name)
    lines += _commands_section(page, parser)
    for title_, entries in page.extra:
        lines += _section(title_) + _items(entries)
    if page.environment:
        lines += _section("ENVIRONMENT") + _items(page.environment)
    if page.files:
        lines += _section("FILES") + _items(page.files, "I")
    if page.exit_status:
        lines += _section("EXIT STATUS") + _items(page.exit_status)
    if page.see_also:
        refs = [ref.partition("(") for ref in page.see_also]
        lines += _section("SEE ALSO")
        lines.append(", ".join(f"\\fB{_esc(n)}\\fR({s.rstrip(')')})" for n, _, s in refs))
    return "\n".join(lines) + "\n"


def render_page(name: str) -> str:
    """The roff source of the man page of tool ``name`` (real parser when available)."""
    parser = get_parser(name)
    return render(PAGES[name], parser)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the man pages; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dahu.app.manpage", description="Write the man pages of Dahu's tools."
    )
    parser.add_argument("-o", "--output", metavar="DIR", type=Path, default=MAN_DIR)
    parser.add_argument(
        "--check", action="store_true", help="only tell which pages are out of date (exit 1)"
    )
    args = parser.parse_args(argv)
    stale = []
    for name in PAGES:
        path = args.output / f"{name}.1"
        text = render_page(name)
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(str(path))
        if not args.check:
            args.output.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if args.check else "written"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
