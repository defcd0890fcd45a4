"""The page's HTTP server: Tornado's, but a request whose address and headers are longer
than Tornado reads (:data:`MAX_HEADER_BYTES`) gets an answer, 431 with a one-line reason,
instead of a connection closed without a word (an empty reply, for curl or a browser),
and one Tornado cannot read as HTTP (a garbage request line, two ``Host`` headers, a
``Content-Length`` that is no number) the 400 Tornado writes with the one-line JSON
reason every other error of the page has, instead of an empty body.

Tornado closes such a connection at once.  The server keeps a duplicate of each
connection's socket; when Tornado closed one for a request too long to read, the answer
is written on the duplicate, and what the client still sends is read and dropped for a
moment before it is closed: closed with unread data, the socket would be reset, and the
client could lose the answer.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import tornado.gen
import tornado.httpserver
import tornado.iostream

__all__ = ["MAX_HEADER_BYTES", "HTTPServer"]

MAX_HEADER_BYTES = 65536  # Tornado's default
LINGER = 2.0  # seconds the rest of a refused request is read before the socket is closed


TORNADO_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"  # what Tornado writes, with no body
MALFORMED = (
    "the request is not HTTP this server can read: a malformed request line or header "
    "(a header line without a colon, no Host header or two, a Content-Length that is no "
    "number or over 100 MB)"
)
TOO_LONG = (
    f"the request's address and headers are longer than {MAX_HEADER_BYTES} bytes: ask with "
    "a shorter address"
)


def _answer(status: int = 431, reason: str = TOO_LONG) -> bytes:
    body = json.dumps({"error": reason, "status": status}).encode()
    title = "Request Header Fields Too Large" if status == 431 else "Bad Request"
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, answering 431 to a request too long to read, and a
    one-line JSON 400 to one it cannot read."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, max_header_size=MAX_HEADER_BYTES, **kwargs)
        self._spares: dict[Any, socket.socket] = {}

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        try:
            self._spares[stream] = stream.socket.dup()
        except OSError:  # out of file descriptors: served, without the answer
            pass
        write = stream.write

        def answer(data: Any) -> Any:  # Tornado's 400 to a request it could not read
            return write(_answer(400, MALFORMED) if data == TORNADO_400 else data)

        stream.write = answer  # type: ignore[method-assign]
        super().handle_stream(stream, address)

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        stream = getattr(server_conn, "stream", None)
        spare = self._spares.pop(stream, None)
        if spare is None:
            return
        if isinstance(getattr(stream, "error", None), tornado.iostream.UnsatisfiableReadError):
            stream.io_loop.spawn_callback(_refuse, spare)
        else:
            spare.close()


async def _refuse(spare: socket.socket) -> None:
    stream = tornado.iostream.IOStream(spare)
    deadline = stream.io_loop.time() + LINGER
    try:
        await stream.write(_answer())
        spare.shutdown(socket.SHUT_WR)
        while True:  # until the client closes, or the moment is over
            read = stream.read_bytes(65536, partial=True)
            await tornado.gen.with_timeout(
                deadline, read, quiet_exceptions=tornado.iostream.StreamClosedError
            )
    except (tornado.iostream.StreamClosedError, TimeoutError, OSError):
        pass
    finally:
        stream.close()
