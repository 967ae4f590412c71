"""The redirect listener: reading a browser's callback request.

Parsing is deliberately strict and bounded: 16 KiB at most, a read timeout
and an overall deadline per connection, so a slow or idle client holds only
its own thread, never the listener (docs/compatibility.md "Redirect listener bounds").
"""

from __future__ import annotations

import html
import re
import socket
import time
import urllib.parse

from pizauth import ipc
from pizauth.timeouts import REDIRECT_READ, REDIRECT_REQUEST

MAX_REQUEST = 16384
READ_TIMEOUT = REDIRECT_READ
DEADLINE = REDIRECT_REQUEST

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
# A reg-name, IPv4 address or bracketed IPv6 literal, with an optional port (RFC 3986).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(:[0-9]*)?")


class BadRequest(Exception):
    """A request answered with 400; the message is what is logged."""


def read_request(conn: socket.socket, deadline: float) -> bytes:
    """Bytes up to the blank line ending the headers (or EOF), at most MAX_REQUEST."""
    buf = bytearray()
    while True:
        end = _header_end(buf)
        if end is not None:
            return bytes(buf[:end])
        if len(buf) >= MAX_REQUEST:
            raise BadRequest("HTTP request exceeds maximum permitted size")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        conn.settimeout(min(READ_TIMEOUT, remaining))
        chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk


def _header_end(buf: bytearray) -> int | None:
    """Where the first blank line starts, whichever line ending the client uses."""
    found = [i for m in (b"\r\n\r\n", b"\n\n", b"\n\r\n") if (i := buf.find(m)) >= 0]
    return min(found, default=None)


def parse_request(raw: bytes, scheme: str) -> ipc.Callback:
    """The callback a request carries, or BadRequest: the checks pizauth 1.1 makes, plus
    those of docs/compatibility.md "Redirect checks"."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Malformed HTTP request") from None
    lines = text.split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or parts[0] != "GET":
        raise BadRequest("Malformed HTTP request")
    target = parts[1]
    headers: list[list[str]] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line.strip():
            break
        if line[0] in " \t":
            if not headers:
                raise BadRequest("Malformed HTTP header")
            headers[-1][1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("Malformed HTTP header")
        headers.append([name, value.lstrip(" \t")])
    hosts = [v.strip() for n, v in headers if n.strip().lower() == "host"]
    if not hosts:
        raise BadRequest("No host field specified in HTTP request")
    if len(hosts) > 1:
        raise BadRequest("Repeated 'host' field in HTTP header")
    if not _HOST.fullmatch(hosts[0]):
        raise BadRequest(f"Invalid request URI: invalid host '{hosts[0]}'")
    try:
        url = urllib.parse.urlsplit(f"{scheme}://{hosts[0]}{target}")
        port = url.port
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Invalid request URI: {e}") from None
    if not target.startswith("/") or not url.hostname:
        raise BadRequest("Invalid request URI: not an origin-form target")
    return ipc.Callback(
        scheme=scheme,
        host=url.hostname,
        port=port if port is not None else (443 if scheme == "https" else 80),
        path=url.path or "/",
        has_fragment="#" in target,
        pairs=tuple(pairs),
    )


def response(status: int, page: str = "") -> bytes:
    """A complete response; the page text is escaped (it may echo a stranger's input)."""
    body = f"<html><body><h2>{html.escape(page)}</h2></body></html>".encode() if page else b""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
        f"Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n"
        f"Connection: close\r\n\r\n"
    )
    return head.encode() + body
