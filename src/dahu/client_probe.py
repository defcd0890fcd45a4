"""Whether the server of a device answers at all, asked before :mod:`dahu.client` makes
its first ``DeviceProxy``: making one connects holding Python's lock, and a server
stopped by a signal (or swapping) held it 3 s, then the first call took Tango's
reconnection: a client took 6 to 9 s to fail, every thread of the process frozen for
3 s of them.  The question is a GIOP ``LocateRequest`` on a plain socket (no lock held
while it waits), which a CORBA server answers at once from its own threads, whatever
its device is doing; see ``docs/client.md``.  The device's Tango database is asked so
first (a stopped one made each proxy wait for it: minutes).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from typing import Any

import tango

from .futures import ServerError

__all__ = ["probe", "address", "answers", "stopped", "silent_database"]

# [tango://][host:port/]domain/family/member[#dbase=no]; an alias is not probed
_NAME = re.compile(r"(?:tango://)?(?:([^/:#]+):(\d+)/)?([^/#]+/[^/#]+/[^/#]+)(#dbase=no)?", re.I)
TAG_INTERNET_IOP = 0
LOCATE_REPLY = 4  # a GIOP message type
UNKNOWN_OBJECT = 0  # a LocateReply's status: the server has no such object
REFUSED = "refused"  # nothing listens at the address
UNEXPORTED = "unexported"  # the database's record of a device no server serves
DATABASE_KEY = b"database"  # the object key of a Tango database server


def probe(device: str, seconds: float) -> None:
    """Raise :class:`ServerError` (``API_DeviceTimedOut``) if the server of ``device`` is
    reached but answers nothing within ``seconds``.  Anything else (no such device, a
    refused connection, a name that cannot be resolved) is left to Tango, which says it
    as it makes the proxy."""
    if silent := silent_database(device, seconds):
        raise ServerError(
            f"cannot connect to {device}: its Tango database at {silent} does not answer "
            f"(nothing within {seconds:g} s: is it stopped?)",
            "API_DeviceTimedOut",
        )
    where = address(device)
    if where is not None and answers(*where, seconds) is False:
        host, port, _ = where
        raise ServerError(
            f"cannot connect to {device}: its server at {host}:{port} does not answer "
            f"(nothing within {seconds:g} s: is it stopped?)",
            "API_DeviceTimedOut",
        )


def silent_database(device: str, seconds: float) -> str | None:
    """The address of the Tango database of ``device`` (``HOST:PORT``; those of
    ``TANGO_HOST``, comma-separated, for a name without one) when it is reached but
    none answers a ``LocateRequest`` within ``seconds`` (stopped by a signal, swapping):
    cppTango's calls to it wait its timeout two or three times over, for each proxy
    made (a ``DahuClient`` took minutes to fail).  None otherwise (no database, one
    that answers or cannot be reached: Tango says it)."""
    match = _NAME.fullmatch(device)
    if match is None or match.group(4):  # an alias (Tango's to find), or no database
        return None
    host, port = match.group(1, 2)
    found = [(host, int(port))] if host else []
    for item in [] if host else os.environ.get("TANGO_HOST", "").split(","):
        name, _, number = item.strip().rpartition(":")
        if name and number.isdigit():
            found.append((name, int(number)))
    for name, number in found:  # each its time: Tango tries the next after a silent one
        if _locate(name, number, DATABASE_KEY, seconds) is not False:
            return None
    return ",".join(f"{name}:{number}" for name, number in found) or None


def address(device: str) -> tuple[str, int, bytes] | None:
    """The host, port and object key of ``device``'s server: from the name of a device
    without database, from the database's record of the device otherwise (None when it
    cannot be known: Tango will say why)."""
    where = _record(device)
    return where if where != UNEXPORTED else None


def _record(device: str) -> tuple[str, int, bytes] | str | None:
    """:func:`address`, or ``UNEXPORTED`` when the database records the device as not
    exported (a server that stopped unexports its devices)."""
    match = _NAME.fullmatch(device)
    if match is None:
        return None
    host, port, name, no_database = match.groups()
    if no_database:
        return (host, int(port), name.lower().encode()) if host else None  # as Tango keys it
    try:
        database = tango.Database(host, int(port)) if host else tango.Database()
        info = database.import_device(name)
    except tango.DevFailed:
        return None
    return _iiop(info.ior) if info.exported else UNEXPORTED


def stopped(device: str, seconds: float) -> bool:
    """Whether the server of ``device`` has stopped, for sure: nothing listens at its
    address any more, its server answers that it has no such object (stopped by the
    admin device's ``Kill``, it deletes its device before it ends), or the database
    records the device as not exported.  False while it cannot be told (no answer within
    ``seconds``: a server stopped by a signal, swapping; a host that cannot be reached;
    a database that does not answer)."""
    if silent_database(device, seconds):
        return False
    where = _record(device)
    if where is None or where == UNEXPORTED:
        return where == UNEXPORTED
    answer = _locate(*where, seconds)  # (not "in": False == 0, a status)
    return answer == REFUSED or (type(answer) is int and answer == UNKNOWN_OBJECT)


def answers(host: str, port: int, key: bytes, seconds: float) -> bool | None:
    """Whether the server at ``host``:``port`` answers a ``LocateRequest`` of ``key``
    within ``seconds`` (any answer, "no such object" included); None when no connection
    could be made (refused: the server is not running; unreachable: Tango may know other
    addresses of it) or it broke: Tango says what it finds."""
    answer = _locate(host, port, key, seconds)
    return None if answer in (None, REFUSED) else answer is not False


def _locate(host: str, port: int, key: bytes, seconds: float) -> int | str | bool | None:
    """The answer of the server at ``host``:``port`` to a ``LocateRequest`` of ``key``:
    its locate status (``UNKNOWN_OBJECT``, 1: here...), True for another answer (the
    connection closed...), False for none within ``seconds``, ``REFUSED`` when nothing
    listens there, None when no connection could be made otherwise or it broke."""
    body = struct.pack("<IH2xI", 1, 0, len(key)) + key  # request 1, a key address
    request = b"GIOP\x01\x02\x01\x03" + struct.pack("<I", len(body)) + body
    deadline = time.monotonic() + seconds
    try:
        sock = socket.create_connection((host, port), seconds)
    except ConnectionRefusedError:
        return REFUSED
    except OSError:
        return None
    with sock:  # connected: the system took the call, whether the process runs or not
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(request)
            reply = b""
            while len(reply) < 20:  # the GIOP header, the request id, the status
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                if not (chunk := sock.recv(20 - len(reply))):
                    return True  # the connection closed: the server answered
                reply += chunk
        except TimeoutError:
            return bool(reply)
        except OSError:
            return None
    if reply[:4] != b"GIOP" or reply[7] != LOCATE_REPLY:
        return True
    return struct.unpack_from("<I" if reply[6] & 1 else ">I", reply, 16)[0]


def _iiop(ior: str) -> tuple[str, int, bytes] | None:
    """Host, port and object key of the first IIOP profile of a stringified IOR."""
    if not ior[:4].upper() == "IOR:":
        return None
    try:
        data = _Cdr(bytes.fromhex(ior[4:]))
        data.octets()  # the type id
        for _ in range(data.ulong()):
            tag, profile = data.ulong(), data.octets()
            if tag == TAG_INTERNET_IOP:
                inner = _Cdr(profile)
                inner.pos += 2  # the IIOP version
                return (
                    inner.octets().rstrip(b"\0").decode("latin-1"),
                    inner.ushort(),
                    inner.octets(),
                )
    except (ValueError, struct.error, IndexError):
        return None
    return None


class _Cdr:
    """A reader of a CDR encapsulation (its first octet says the byte order)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 1
        self.order = "<" if data[0] else ">"

    def _read(self, code: str, size: int) -> Any:
        self.pos += -self.pos % size  # aligned from the start of the encapsulation
        (value,) = struct.unpack_from(self.order + code, self.data, self.pos)
        self.pos += size
        return value

    def ulong(self) -> int:
        return self._read("I", 4)

    def ushort(self) -> int:
        return self._read("H", 2)

    def octets(self) -> bytes:
        size = self.ulong()
        if self.pos + size > len(self.data):
            raise ValueError("an IOR cut short")
        value, self.pos = self.data[self.pos : self.pos + size], self.pos + size
        return value
