"""Binding the redirect listeners' TCP sockets, at start and on reload
(docs/compatibility.md "Listeners on reload")."""

from __future__ import annotations

import socket


class ListenError(Exception):
    """A listener address that cannot be used; the text is for the user."""


def bind_listener(address: str | None, what: str) -> socket.socket | None:
    """A listening TCP socket for `host:port` (names resolved), or None for `none`."""
    if address is None:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenError(f"Invalid {what} address '{address}': expected HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, OverflowError) as e:
        raise ListenError(f"Can't resolve {what} address '{address}': {e}") from None
    error: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(64)
            sock.set_inheritable(True)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise ListenError(f"Can't bind {what} to '{address}': {error.strerror if error else '?'}")
