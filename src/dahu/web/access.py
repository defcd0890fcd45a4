"""Where the web page listens and who may read it: addresses, loopback, access tokens."""

from __future__ import annotations

import ipaddress
import secrets

from .. import DahuError

__all__ = ["WebError", "is_loopback", "new_token", "parse_address", "DEFAULT_HOST"]

DEFAULT_HOST = "127.0.0.1"
MIN_TOKEN_CHARS = 16


class WebError(DahuError):
    """The web page cannot be served as asked (address, port, token)."""


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port); host defaults to
    127.0.0.1."""
    text = given = str(text).strip()
    host = DEFAULT_HOST
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host, text = inner, rest.lstrip(":")
    elif ":" in text:
        host, _, text = text.rpartition(":")
    try:
        port = int(text)
    except ValueError:
        # the whole address: "localhost:" is not the address ''
        raise WebError(f"web address {given!r}: expected PORT or HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise WebError(f"web port {port} is not from 0 to 65535")
    return host or DEFAULT_HOST, port


def is_loopback(host: str) -> bool:
    """True for addresses reachable from this machine only."""
    if host.lower() == "localhost":  # a host name is not case-sensitive
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random access token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)
