"""The Tornado application: the pages, the static files, the JSON endpoints, the event stream.

Every endpoint is a GET (the page is read-only; jobs are started, aborted and cleaned by
Tango clients only).  Errors are JSON objects ``{"error": "one line"}`` with a 4xx status
(5xx only for a bug, logged here with its traceback); no traceback is ever sent.
``docs/web.md`` lists the endpoints.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import time
from typing import Any
from urllib.parse import quote, unquote

import tornado.iostream
import tornado.web

from ..errors import JournalError
from ..jobquery import journal_states
from ..journal.base import MAX_ID
from ..states import State
from .access import is_loopback
from .history import ENDED, FAILED, job_details, latest_jobs, live_jobs
from .jsontext import web_json
from .monitor import WINDOW

logger = logging.getLogger(__name__)

__all__ = ["make_app", "STATIC_DIR", "plotly_dir"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOKEN_COOKIE = "dahu_token_{port}"  # per port: the cookies of a host are shared by its ports
MAX_LIMIT = 1000
STALLED_PUSHES = 30  # events a page may miss (not reading) before it is disconnected
STREAM_BUFFER = 256 * 1024  # bytes the kernel may hold for one event stream


def plotly_dir() -> str:
    """The directory of ``plotly.min.js`` inside the installed ``plotly`` package."""
    import plotly

    return os.path.join(os.path.dirname(os.path.abspath(plotly.__file__)), "package_data")


class ClientError(tornado.web.HTTPError):
    """A request the server cannot answer: status and a one-line reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason=None)
        self.text = reason


class _Base(tornado.web.RequestHandler):
    """Access rule (token, Host) and one-line JSON errors, shared by every handler."""

    service: Any

    def initialize(self, service: Any) -> None:
        self.service = service

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")

    def _token_given(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[7:].strip()
        query = self.get_query_argument("token", None)
        if query:
            return query
        cookie = self.get_cookie(TOKEN_COOKIE.format(port=self.service.port))
        return None if cookie is None else unquote(cookie)

    def prepare(self) -> None:
        service = self.service
        if service.loopback:
            # DNS rebinding: a page of another site must not reach a loopback-only server
            host = self.request.host or ""
            name = host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
            if not is_loopback(name.strip("[]")):
                raise ClientError(403, f"host {host[:80]!r} refused: use 127.0.0.1")
        token = service.token
        if token:
            given = self._token_given() or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise ClientError(401, "a valid access token is required (?token=... or header)")
            if self.get_query_argument("token", None):
                # the page's own requests (fetch, EventSource) then carry it as a cookie
                # quoted: a cookie cannot hold a space, a ; or an é of a token
                cookie = quote(token, safe="")
                name = TOKEN_COOKIE.format(port=self.service.port)
                self.set_cookie(name, cookie, httponly=True, samesite="Strict")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ClientError):
            text = error.text
        elif status_code == 405:
            text = f"{self.request.method} refused: the page is read-only (GET only)"
        elif status_code == 404:  # a static file that is not there: Tornado says "Not Found"
            text = f"no such page: {self.request.path[:100]}"
        elif isinstance(error, tornado.web.HTTPError) and status_code < 500:
            text = error.log_message or self._reason
        else:
            text = "internal error: see the server log"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"error": text, "status": status_code}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            logger.debug("%s %s: %s", self.request.method, self.request.uri, value)
        else:
            logger.error(
                "%s %s failed", self.request.method, self.request.uri, exc_info=(typ, value, tb)
            )

    # read-only: every other method is refused with 405 by Tornado

    @property
    def monitor(self) -> Any:
        monitor = self.service.monitor
        if monitor.engine is None:
            raise ClientError(503, "the server is starting: try again")
        return monitor

    def send_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(web_json(data))

    def one_argument(self, name: str) -> str | None:
        """The query argument ``name``, or None; given twice, a 400 (Tornado keeps the last
        one: ``state=failure&state=aborted`` would list the aborted jobs alone)."""
        values = self.get_query_arguments(name)
        if len(values) > 1:
            raise ClientError(400, f"{name} is given {len(values)} times: give it once")
        return values[0] if values else None

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        """A query argument that must be an integer in [low, high]."""
        raw = self.one_argument(name)
        if raw is None:
            return default
        if not raw:  # Tornado strips the blanks: "limit=%20" (an unset variable) is empty
            raise ClientError(400, f"{name} is empty: give an integer from {low} to {high}")
        if _too_long(raw):
            raise ClientError(
                400, f"{name} must be from {low} to {high}, not {raw.strip()[:20]}..."
            )
        try:
            value = _integer(raw)
        except ValueError:
            raise ClientError(400, f"{name} must be an integer, not {raw[:40]!r}") from None
        if not low <= value <= high:
            raise ClientError(400, f"{name} must be from {low} to {high}, not {value}")
        return value

    def state_argument(self) -> str | None:
        state = self.one_argument("state")
        state = state.lower() if state is not None else None  # any case, as plugin=
        if state is not None and state not in State.ALL:
            raise ClientError(400, f"state must be one of {', '.join(State.ALL)}")
        return state


REFUSED_PAGE = (
    b'<!doctype html><html lang="en"><meta charset="utf-8"><title>Dahu: access refused</title>'
    b"<p>Dahu: a valid access token is required (?token=... or header).</p>"
    b"<p>If this page worked before, the server was started again with a new token: open "
    b"the address it printed at start, with its <code>?token=</code>.</p></html>"
)


class PageHandler(_Base):
    """An HTML page of the static directory (``index.html``, ``job.html``)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code != 401:
            super().write_error(status_code, **kwargs)
            return
        # a person reloading the page: a page that says what to do, not JSON
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(REFUSED_PAGE)

    def initialize(self, service: Any, page: str) -> None:  # type: ignore[override]
        super().initialize(service)
        self.page = page

    def get(self, *args: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-ancestors 'none'",
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        with open(os.path.join(STATIC_DIR, self.page), "rb") as page:
            self.finish(page.read())


class StaticHandler(_Base, tornado.web.StaticFileHandler):
    """Static files (scripts, styles), behind the same access rule as the rest."""

    def initialize(self, service: Any, path: str) -> None:  # type: ignore[override]
        _Base.initialize(self, service)
        tornado.web.StaticFileHandler.initialize(self, path)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")  # revalidated by ETag: cheap, never stale


class IndexHandler(_Base):
    """``GET /api``: the endpoints, for a monitoring script to discover."""

    def get(self) -> None:
        self.send_json(
            {
                "endpoints": {
                    "/api/summary": "everything the page shows",
                    "/api/counters": "jobs queued, running, ended (since start, last hour)",
                    "/api/running": "running jobs with elapsed time (?limit=)",
                    "/api/jobs": "latest ended jobs (?limit=&state=&plugin=)",
                    "/api/failures": "latest failed or aborted jobs (?limit=)",
                    "/api/jobs/ID": "one job: info, input, output, full error",
                    "/api/plugins": "per-plugin statistics since the server started",
                    "/api/series": "jobs/s, runtime percentiles, queue (?window=seconds)",
                    "/api/events": "server-sent events: a summary every second",
                },
                "version": self.service.version,
                # what the page costs the server: everything web runs in this thread
                "web_thread_cpu_s": time.thread_time(),
            }
        )


class SummaryHandler(_Base):
    def get(self) -> None:
        self.send_json(self.monitor.summary())


class CountersHandler(_Base):
    def get(self) -> None:
        self.send_json(self.monitor.counters())


class RunningHandler(_Base):
    def get(self) -> None:
        limit = self.int_argument("limit", 50, 1, MAX_LIMIT)
        self.send_json({"running": self.monitor.running(limit)})


class JobsHandler(_Base):
    """``GET /api/jobs``: the latest jobs from the journal (from the monitor's memory
    when the journal is not a file)."""

    async def get(self) -> None:
        monitor = self.monitor
        limit = self.int_argument("limit", 25, 1, MAX_LIMIT)
        state = self.state_argument()
        plugin = self.one_argument("plugin")
        if plugin is not None and not plugin.strip():  # as state=: not "no job"
            raise ClientError(400, "plugin must be a plugin name, not empty")
        states = ENDED if state is None else journal_states(state)
        jobs = await self.read_journal(limit, states, plugin)
        if jobs is None:
            jobs = monitor.recent(limit, state, plugin)
        for job in jobs:  # a job not ended: its live state wins over the journal's
            run = None if job["state"] in State.FINAL else monitor.engine.find(job["id"])
            if run is not None:
                job["state"] = run.state
        if state is not None:
            jobs = [job for job in jobs if job["state"] in journal_states(state)]
        if state in (State.STARTING, State.RUNNING):  # ours, also those the journal lags on
            listed = {job["id"] for job in jobs}
            live = live_jobs(monitor.engine, state, plugin)
            jobs += [job for job in live if job["id"] not in listed]
            jobs = sorted(jobs, key=lambda job: job["id"], reverse=True)[:limit]
        self.send_json({"jobs": jobs})

    async def read_journal(
        self, limit: int, states: tuple[str, ...], plugin: str | None = None
    ) -> list[dict[str, Any]] | None:
        journal = self.monitor.engine.journal
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, latest_jobs, journal, limit, states, plugin)
        except JournalError as err:
            raise ClientError(503, str(err)) from None


class FailuresHandler(JobsHandler):
    async def get(self) -> None:
        monitor = self.monitor
        limit = self.int_argument("limit", 25, 1, MAX_LIMIT)
        jobs = await self.read_journal(limit, FAILED)
        self.send_json({"failures": monitor.failures(limit) if jobs is None else jobs})


class PluginsHandler(_Base):
    def get(self) -> None:
        self.send_json({"plugins": self.monitor.plugins()})


class SeriesHandler(_Base):
    def get(self) -> None:
        window = self.int_argument("window", WINDOW, 10, WINDOW)
        self.send_json(self.monitor.series(window))


def _too_long(raw: str) -> bool:
    """Whether ``raw`` is a whole number of more digits than any job id or limit has (over
    4,300, ``int()`` refuses it: it is not "not an integer")."""
    digits = raw.strip().removeprefix("-")
    return len(digits) > 40 and digits.isascii() and digits.isdigit()


def _integer(raw: str) -> int:
    """``raw`` as an integer in ASCII digits, with an optional sign; ``ValueError`` else
    (``int()`` alone also reads ``1_0`` as 10, and the digits of other scripts)."""
    digits = raw.strip().removeprefix("-").removeprefix("+") if raw.isascii() else ""
    if not digits.isdigit():
        raise ValueError(raw)
    return int(raw)


def _job_answer(engine: Any, job_id: int) -> str | None:
    """The JSON text of one job, or None; read and encoded off the event loop."""
    details = job_details(engine, job_id)
    return None if details is None else web_json(details)


class JobHandler(_Base):
    """``GET /api/jobs/ID``: one job from the journal, whatever its age."""

    async def get(self, raw_id: str) -> None:
        engine = self.monitor.engine
        if _too_long(raw_id):
            reason = engine.no_such_job(MAX_ID + 1).split(": ", 1)[1]
            raise ClientError(404, f"no job {raw_id.strip()[:20]}... (too many digits): {reason}")
        try:
            job_id = _integer(raw_id)
        except ValueError:
            raise ClientError(400, f"a job id is an integer, not {raw_id[:40]!r}") from None
        if job_id < 0:  # -1 is the last job, as for the device and Job.getJobFromID
            job_id = engine.last_id() + 1 + job_id
            if job_id < 1:
                raise ClientError(404, engine.no_such_job(int(raw_id)))
        if job_id < 1:
            raise ClientError(404, f"no job {job_id}: job ids start at 1")
        loop = asyncio.get_running_loop()
        try:
            text = await loop.run_in_executor(None, _job_answer, engine, job_id)
        except JournalError as err:
            raise ClientError(503, str(err)) from None
        if text is None:
            raise ClientError(404, engine.no_such_job(job_id))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(text)


class EventsHandler(_Base):
    """``GET /api/events``: server-sent events, one ``summary`` event per second."""

    async def get(self) -> None:
        self.monitor  # noqa: B018 - 503 while the server starts
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        self.closed = asyncio.get_running_loop().create_future()
        stream = self.request.connection.stream
        if stream is not None and stream.socket is not None:
            # a page that stops reading must be noticed soon: keep the kernel's buffer small
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER)
        self.write("retry: 2000\n\n")
        await self.flush()
        self.service.broadcaster.add(self)
        try:
            await self.closed
        finally:
            self.service.broadcaster.discard(self)

    def on_connection_close(self) -> None:
        closed = getattr(self, "closed", None)
        if closed is not None and not closed.done():
            closed.set_result(None)

    sending = False
    missed = 0

    async def send(self, chunk: bytes) -> None:
        """Write one event, unless the previous one is still on its way (a page that
        does not read is disconnected after ``STALLED_PUSHES`` missed events)."""
        if self.sending:
            self.missed += 1
            if self.missed >= STALLED_PUSHES:
                logger.info(
                    "web page %s stopped reading its events: closed", self.request.remote_ip
                )
                self.request.connection.close()
                self.on_connection_close()
            return
        self.sending, self.missed = True, 0
        try:
            self.write(chunk)
            await self.flush()
        except tornado.iostream.StreamClosedError:
            self.on_connection_close()
        finally:
            self.sending = False


class NotFoundHandler(_Base):
    def get(self, *args: str) -> None:
        raise ClientError(404, f"no such page: {self.request.path[:100]}")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests go to the debug log (a bug's 5xx is logged with its traceback already):
    a page left open or a monitoring script must not fill the server's log."""
    if logger.isEnabledFor(logging.DEBUG):
        request = handler.request
        logger.debug(
            "%d %s %s (%s) %.1f ms",
            handler.get_status(),
            request.method,
            request.uri,
            request.remote_ip,
            1000.0 * request.request_time(),
        )


def make_app(service: Any) -> tornado.web.Application:
    """The application of one :class:`~dahu.web.service.WebService`."""
    options = {"service": service}
    routes = [
        (r"/", PageHandler, {**options, "page": "index.html"}),
        (r"/jobs/([^/]+)", PageHandler, {**options, "page": "job.html"}),
        (r"/static/(plotly\.min\.js)", StaticHandler, {**options, "path": plotly_dir()}),
        (r"/static/([a-z0-9_-]+\.(?:js|css|svg))", StaticHandler, {**options, "path": STATIC_DIR}),
        (r"/api/?", IndexHandler, options),
        (r"/api/summary", SummaryHandler, options),
        (r"/api/counters", CountersHandler, options),
        (r"/api/running", RunningHandler, options),
        (r"/api/jobs", JobsHandler, options),
        (r"/api/jobs/([^/]+)", JobHandler, options),
        (r"/api/failures", FailuresHandler, options),
        (r"/api/plugins", PluginsHandler, options),
        (r"/api/series", SeriesHandler, options),
        (r"/api/events", EventsHandler, options),
        (r"(.*)", NotFoundHandler, options),
    ]
    return tornado.web.Application(
        routes,
        compress_response=False,
        xsrf_cookies=False,
        serve_traceback=False,
        log_function=_log_request,
    )
