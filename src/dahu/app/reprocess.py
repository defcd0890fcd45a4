"""``dahu-reprocess``: run archived jobs again, in parallel, and compare with what they gave.

Each SOURCE is a job input file (``.inp``/``.json`` as the server writes them), a
directory searched recursively for such files, or job ids (``3``, ``1-5``, ``1-3,7``)
read from the journal of ``--workdir``.  The inputs run as Dahu jobs in this process
(``-j`` at once) on an engine whose work directory is the output directory, so each run
is recorded in its journal and gets its ``.inp``/``.out`` files there.  A summary table
follows; ``--compare`` also checks each new output against the archived one (see
:mod:`dahu.compare`).

Exit status: 0 all jobs succeeded (and, with ``--compare``, none differ), 1 a job
failed, was aborted or differs, an input could not be run, or an outcome or a job's
files could not be written to the output directory (disk full), 2 bad usage, 130
interrupted (Ctrl-C or SIGTERM: running jobs are aborted, the summary still printed).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ..compare import DEFAULT_IGNORE, Difference, first_difference
from ..engine import configure, nonblocking
from ..errors import DahuError, JournalError, one_line
from ..factory import plugin_factory, plugin_settings
from ..job import Job
from ..journal import default_workdir
from ..states import State
from ..utils import get_workdir
from . import leave, quiet_third_parties
from .jobtable import shown
from .reprocess_args import PROG, build_parser, usage_problems
from .reprocess_summary import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    format_summary,
    print_summary,
    summarize,
    summary_stdout,
)
from .sources import (
    InputError,
    Item,
    Loaded,
    Relocator,
    comparable,
    expand_sources,
    incomplete,
    load,
    load_archive,
)

logger = logging.getLogger(__name__)

__all__ = [
    "build_parser",
    "main",
    "expand_sources",
    "Item",
    "Result",
    "summarize",
    "format_summary",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
]

INVALID = "(invalid input)"


@dataclass
class Result:
    """What became of one item."""

    source: str
    plugin: str
    state: str
    job_id: int | None = None
    error: str | None = None
    invalid: bool = False
    compared: bool = False
    difference: Difference | None = None
    incomplete_archive: bool = False  # its archived job was aborted or interrupted


# ---- running --------------------------------------------------------------------------
class _NoBar:
    """The progress bar when none is shown (``-q``, or standard error not a terminal)."""

    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Reprocessor:
    """Runs the items as jobs on ``engine``, at most ``window`` in flight, and tallies.

    The main thread reads the inputs, in order, while the jobs run: when half the window
    has ended it reads the next inputs and creates their jobs, those of consecutive
    inputs of one plugin together (one journal transaction).  The jobs' callbacks hand
    their results over in a list and wake the main thread only when it has something to
    do (half the window ended, or every job), so that it does not take turns with the
    workers on every job; it wakes every 0.1 s anyway (progress bar, Ctrl-C).
    """

    def __init__(self, args: argparse.Namespace, engine: Any, items: list[Item]):
        self.args = args
        self.engine = engine
        self.settings = lambda name: plugin_settings(plugin_factory.get_class(name))
        if engine.executor.isolates_plugins:  # plugin modules are imported by a helper
            from ..server_plugins import PluginCatalog

            self.settings = PluginCatalog(plugin_factory, True).settings
        self.items = items
        # 64 inputs at least: with fewer, the job slot waited for the main thread's
        # refills (2,000 trivial jobs, -j 1, tmpfs: 0.94 to 1.10 s with 8, 0.68 to 0.86 s
        # with 32 to 256)
        self.window = max(8 * args.jobs, 64)
        # refill when this many jobs are left: half the window, and a job per slot at least
        self.low = max(self.window // 2, args.jobs)
        self.ignore = DEFAULT_IGNORE | set(args.ignore)
        self.results: list[Result] = []
        self.pending: dict[int, Job] = {}
        self.ended_jobs: collections.deque[tuple[Result, Job]] = collections.deque()
        self.wake = threading.Event()  # set by a callback when the main thread is needed
        self.stop = threading.Event()
        self.forced = False
        # the main thread imports a plugin module or reads an input: either may never end
        self.interruptible = False
        self.aborting = False
        self.hurry = False  # a second Ctrl-C: stop waiting for the aborted jobs
        self.give_up_at = float("inf")
        self.started = self.ended = time.monotonic()
        self.relocate = Relocator(engine.workdir)  # REPROCESS_RELOCATE's paths
        self.bar: Any = _NoBar()
        if not args.quiet and sys.stderr.isatty():
            from tqdm import tqdm  # only when the bar shows: a tenth of a -q run's start-up

            self.bar = tqdm(total=len(items), unit="job", file=sys.stderr)

    def say(self, text: str) -> None:
        """Print one line on stderr, above the progress bar (a file name's new lines and
        terminal escapes shown escaped, ``\\n``, as ``dahu-jobs`` shows them)."""
        text = shown(text)
        if self.bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.write(text, file=sys.stderr)

    def run(self) -> None:
        """Submit every item (``window`` in flight at most) and collect every result."""
        self.started = time.monotonic()
        with self._signals(), contextlib.ExitStack() as stack:
            if not self.bar.disable:
                # imported here: it pulls asyncio in, a tenth of the start-up of a -q run
                from tqdm.contrib.logging import logging_redirect_tqdm

                stack.enter_context(logging_redirect_tqdm())
            self._loop()
        self.ended = time.monotonic()
        self.bar.close()

    def _loop(self) -> None:
        """Submit the items and record the results until every job has ended."""
        items = iter(self.items)
        more = True
        while more or self.pending:
            if self.stop.is_set():
                if not self.pending:
                    return
                if not self.aborting:
                    self._abort_all()
                elif self.hurry or time.monotonic() > self.give_up_at:
                    self._give_up()
                    return
            elif more and len(self.pending) <= self.low:
                more = self._refill(items)
                continue
            self.wake.wait(0.1)
            self.wake.clear()  # before taking the list: a later callback sets it again
            self._reap()

    def _refill(self, items: Iterator[Item]) -> bool:
        """Read inputs until the window is full, then create and start their jobs;
        False when every item has been read."""
        ready: list[Loaded] = []
        more = True
        while len(self.pending) + len(ready) < self.window and not self.stop.is_set():
            item = next(items, None)
            if item is None:
                more = False
                break
            self.interruptible = True  # a read may block (a pipe no one writes): a signal stops it
            try:
                ready.append(load(item))
            except KeyboardInterrupt:
                if not self.stop.is_set():  # not a signal of ours: as it was
                    raise
            finally:
                self.interruptible = False
        if not self.stop.is_set():  # interrupted while reading: those are not started
            self._submit(ready)
        return more

    def _reap(self) -> None:
        """Record the results the callbacks left, and write the jobs' files."""
        ended = self.ended_jobs
        while ended:
            result, job = ended.popleft()
            self.pending.pop(job.id, None)
            # here, not in the engine's files thread (clean_later): with outcomes
            # committed in batches (held while jobs are queued), a third thread doing
            # small system calls made all three wait for the GIL after each one
            # (10,000 trivial jobs, -j 1, tmpfs, alternated runs: 3.3 to 3.4 s there,
            # 2.3 to 2.9 s here)
            try:
                job.clean(wait=False)
            except Exception:  # a loop boundary: the job must still be reported
                logger.exception("job %s: cannot write its files", job.id)
            self._record(result)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First SIGINT/SIGTERM: stop submitting and abort the jobs; second: stop waiting."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop.is_set():  # the loop gives up at its next turn: not a raise, which
                self.hurry = True  # would lose the result being recorded
                return
            self.stop.set()
            # said at once, even when the main thread is busy (importing a slow plugin
            # module): os.write, as print() may be the call this handler interrupted
            os.write(2, f"{'' if self.bar.disable else chr(10)}{PROG}: interrupted\n".encode())
            if self.interruptible:  # for jobs that will not start: stop it (it may never end)
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _give_up(self) -> None:
        """Stop waiting for jobs that did not stop (their plugin ignores the abort)."""
        self.forced = True
        self.say(f"{PROG}: not waiting for {len(self.pending)} job(s) that did not stop")

    def _abort_all(self) -> None:
        # every job ends within the executor's grace period after its abort (a plugin
        # that ignores it is abandoned or killed): wait a little longer, never forever
        grace = float(getattr(self.engine.executor, "abort_grace", 5.0))
        self.give_up_at = time.monotonic() + grace + 5.0
        self.aborting = True
        self.say(f"{PROG}: aborting {len(self.pending)} job(s)")
        # the engine runs only this tool's jobs: every pending one is live there; in a
        # thread of its own, as a plugin's abort() may block (it waits for a lock its
        # process() holds): the main thread still gives up on time
        live, why = self.engine.live(), "interrupted by the user"
        threading.Thread(target=self.engine.abort_all, args=(live, why), daemon=True).start()

    def _submit(self, ready: list[Loaded]) -> None:
        """Create and start the jobs of the loaded items, in order; record those in error.

        Consecutive items of one plugin are created together (their journal records in
        one transaction)."""
        group: list[tuple[Loaded, dict[str, Any]]] = []
        for loaded in ready:
            if self.stop.is_set():  # a Ctrl-C while a plugin module was imported
                return  # the rest are not started (nor the group: it would be aborted)
            plugin, data = loaded.plugin, loaded.data
            if group and group[0][0].plugin != plugin:  # started before a (slow) import
                self._start(group)
                group = []
            try:
                if loaded.error is not None:
                    raise loaded.error
                self.interruptible = True
                try:
                    settings = self.settings(plugin)
                finally:
                    self.interruptible = False
            except (DahuError, KeyboardInterrupt) as err:
                if self.stop.is_set():  # a signal broke the import: not the input's fault
                    return
                if isinstance(err, KeyboardInterrupt):  # not a signal of ours: as it was
                    raise
                self._start(group)
                group = []
                self._invalid(loaded, err)
                continue
            drop = {"job_id", "plugin_name", *settings["REPROCESS_IGNORE"]}
            loaded.ignore = frozenset(settings["REPROCESS_COMPARE_IGNORE"])
            data = {k: v for k, v in (data or {}).items() if k not in drop}
            self.relocate(data, settings["REPROCESS_RELOCATE"])
            group.append((loaded, data))
        if not self.stop.is_set():
            self._start(group)

    def _invalid(self, loaded: Loaded, err: DahuError) -> None:
        plugin = loaded.plugin or INVALID
        self._record(Result(loaded.item.label, plugin, State.FAILURE, None, str(err), True))

    def _start(self, group: list[tuple[Loaded, dict[str, Any]]]) -> None:
        """Create the jobs of ``group`` (items of one plugin) and start them."""
        if not group:
            return
        jobs: list[tuple[Loaded, Job]] = []
        if len(group) > 1:
            # the engine's create_many, not Job.create_many: that one yields the GIL
            # (time.sleep(0)) after each chunk, and this thread then waits to get it back
            # while the job slot it should feed runs dry
            plugin = group[0][0].plugin
            try:
                runs = self.engine.create_many(
                    plugin, [{**data, "plugin_name": plugin} for _, data in group]
                )
                made = [Job.getJobFromID(run.id) for run in runs]
                jobs = list(zip((loaded for loaded, _ in group), made, strict=True))
            except DahuError:  # none was created: each on its own, to tell which fails
                jobs = []
        if not jobs:
            for loaded, data in group:
                try:
                    jobs.append((loaded, Job(loaded.plugin, data)))
                except DahuError as err:
                    self._invalid(loaded, err)
        for loaded, job in jobs:
            try:
                job_id = job.id  # a Job's record is committed here, when its id is asked
            except DahuError as err:  # the journal refused it (disk full): no such job
                self._invalid(loaded, err)
                continue
            self.pending[job_id] = job
            job.connect_callback(self._callback(loaded))
            with contextlib.suppress(DahuError):  # "cannot queue": its callback reports it
                job.start()

    def _callback(self, loaded: Loaded) -> Any:
        # it only compares and hands the result over: the job need not hold its slot
        # until its outcome is committed (dahu.engine.nonblocking)
        return nonblocking(lambda job: self._ended(job, loaded))

    def _ended(self, job: Any, loaded: Loaded) -> None:
        """Callback, in the thread that committed the job's outcome (its worker, the
        main thread or the engine's timer): compare, hand the result over."""
        state = job.status
        error = one_line(job.error) if state != State.SUCCESS else None
        result = Result(loaded.item.label, loaded.plugin, state, job.id, error)
        try:
            if self.args.compare and state in (State.SUCCESS, State.FAILURE):
                self._compare(result, loaded, job.output_data)
        except Exception as err:  # a loop boundary: the job must still be reported
            logger.exception("job %s: cannot compare its output", job.id)
            result.difference = result.difference or Difference("", f"reprocessing error: {err}")
        finally:
            self.ended_jobs.append((result, job))  # thread-safe; taken by _reap
            # wake the main thread when it has work: a refill, or the last jobs ended
            if len(self.ended_jobs) >= len(self.pending) - self.low or self.stop.is_set():
                self.wake.set()

    def _compare(self, result: Result, loaded: Loaded, output: Any) -> None:
        item, archive, path = loaded.item, loaded.archive, None
        if item.path is not None:
            try:
                path, archive = load_archive(item)
            except InputError as err:
                result.compared, result.difference = True, Difference("", str(err))
                return
            if path is None:
                return
        elif archive is None:
            return
        if incomplete(archive):  # only part of an output: no reference for a rerun
            result.incomplete_archive = True
            return
        result.compared = True
        args = self.args
        ignore = self.ignore | loaded.ignore
        old, new = comparable(archive, output, path)  # as the .out file holds it
        result.difference = first_difference(old, new, args.rtol, args.atol, ignore)

    def _record(self, result: Result) -> None:
        self.results.append(result)
        self.bar.update(1)
        ended = {State.FAILURE: "failed", State.ABORTED: "aborted"}.get(result.state)
        if result.invalid:
            self.say(f"{PROG}: {result.source}: {result.error}")
        elif ended and not self.args.quiet and not (self.stop.is_set() and ended == "aborted"):
            # an abort but Ctrl-C's is a timeout (JOB_TIMEOUT, job_timeout): which input?
            self.say(f"{PROG}: {result.source}: job {result.job_id} {ended}: {result.error}")


def main(argv: list[str] | None = None) -> int:
    """Run ``dahu-reprocess`` with ``argv`` (default: the command line); the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_intermixed_args(argv)  # SOURCEs after options too
    except SystemExit as exc:  # --help, --version, or bad usage (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.debug:
        quiet_third_parties()  # silx's "Unable to import pyOpenCl", once per worker
    problems = usage_problems(args)
    if problems:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {shown(problems[0])}", file=sys.stderr)
        return EXIT_USAGE
    # each failed job is reported once, by this tool, with its reason (not by its executor)
    executor_log = logging.getLogger("dahu.executors.process")
    if not args.debug:
        executor_log.addFilter(_not_a_job_failure)
    try:
        with summary_stdout() as out:  # what plugins print goes to standard error meanwhile
            return _run(args, out)
    finally:
        executor_log.removeFilter(_not_a_job_failure)


def _not_a_job_failure(record: logging.LogRecord) -> bool:
    return not getattr(record, "job_failure", False)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    """Run the jobs of ``args``, print the summary on ``out``; the exit status."""
    for directory in reversed(args.plugins):  # before DAHU_PLUGINS': the plugin under test
        plugin_factory.add_directory(directory, first=True)
    output_dir = os.path.abspath(args.output or get_workdir())
    try:
        os.makedirs(output_dir, exist_ok=True)
        engine = configure(
            workdir=output_dir,
            max_workers=args.jobs,
            executor_kind=args.executor,
            batch_outcomes=True,  # batch work: outcomes share commits
        )
    except (OSError, JournalError) as err:  # a read-only or full disk...
        text = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) else str(err)
        text = shown(f"cannot use the output directory {output_dir}: {text}")
        print(f"{PROG}: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    # listing the inputs may take long (a large archive): a Ctrl-C or SIGTERM meanwhile
    # ends the run as one during the run does, nothing having started
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        items = expand_sources(args.sources, args.workdir or default_workdir(), output_dir)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        engine.close()
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    run = Reprocessor(args, engine, items)
    run.run()
    with _signals_ignored(run.stop.is_set()):
        summary = summarize(run, output_dir)
        written = print_summary(summary, args.json, out)  # not on a full disk (> FILE)
        status = summary["exit_status"] if written else max(summary["exit_status"], EXIT_USAGE)
        if not run.forced:  # else jobs still run in their threads: leave the journal open
            lost = engine.close()
            if lost or engine.files_failed:
                print(
                    f"{PROG}: {lost} outcome(s) could not be recorded in the journal and "
                    f"{engine.files_failed} job(s) have no .inp/.out files in {shown(output_dir)} "
                    "(disk full? see the errors above)",
                    file=sys.stderr,
                )
                status = max(status, 1)
    return status


@contextlib.contextmanager
def _signals_ignored(interrupted: bool) -> Iterator[None]:
    """Once a run was interrupted, what is left (its summary, the journal's last commits)
    takes a moment: a Ctrl-C or SIGTERM meanwhile would only break it (a traceback, no
    summary), and is ignored."""
    if not interrupted or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cli() -> None:
    """The ``dahu-reprocess`` command: :func:`main`, then exit without waiting for threads
    that plugins left running (:func:`dahu.app.leave`)."""
    leave(main())


if __name__ == "__main__":
    cli()
