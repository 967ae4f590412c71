"""Binding the redirect listeners' TCP sockets, at start and on reload
(docs/compatibility.md "Listeners on reload")."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pizauth.config import Config


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


@dataclass(slots=True)
class Sockets:
    """What server start-up bound before the parent took over; a reload that
    changes a listen address binds a new listener."""

    control: socket.socket
    http: socket.socket | None
    https: socket.socket | None

    def listener_fds(self) -> dict[str, int]:
        fds = {}
        if self.http is not None:
            fds["http"] = self.http.fileno()
        if self.https is not None:
            fds["https"] = self.https.fileno()
        return fds

    def rebind(self, old: Config, new: Config) -> bool:
        """Bind the listeners whose address `new` changes; whether any changed.
        Everything is bound first, so a bad address leaves the running server untouched."""
        changed = {
            what: address
            for what, address, before in (
                ("http", new.http_listen, old.http_listen),
                ("https", new.https_listen, old.https_listen),
            )
            if address != before
        }
        fresh: dict[str, socket.socket | None] = {}
        try:
            for what, address in changed.items():
                fresh[what] = bind_listener(address, f"{what}_listen")
        except ListenError:
            for sock in fresh.values():
                if sock is not None:
                    sock.close()
            raise
        for what, sock in fresh.items():
            previous = getattr(self, what)
            if previous is not None:
                previous.close()
            setattr(self, what, sock)
        return bool(changed)


def port_of(sock: socket.socket | None) -> int | None:
    return None if sock is None else sock.getsockname()[1]
