"""The network child: redirect listeners and token-endpoint calls.

It accepts browser redirects on the listening sockets the parent handed it,
asks the parent to judge each callback, and relays the token requests the
parent asks for to short-lived worker processes (net/worker.py), so that it
keeps no token once a request is done. It holds no token state of its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import ssl
import sys
import threading
import time

from pizauth import ipc, runtime, sandbox
from pizauth.ipc import MsgType, TokenOutcome
from pizauth.net import redirect
from pizauth.net.calls import CALLS
from pizauth.net.worker import Busy, Launcher
from pizauth.process import start_child
from pizauth.timeouts import VERDICT as VERDICT_TIMEOUT

log = logging.getLogger("pizauth")

MAX_CONNECTIONS = 64  # callback connections served at once (see Connections)
BUSY = "too many requests to providers at once: try again"


class Connections:
    """The open callback connections, bounded so that idle clients cannot lock out a login.

    At most MAX_CONNECTIONS are served at once. When all are taken, a new
    connection closes the oldest one that is still sending its request: a
    browser sends its request the moment it has connected, so only a slow or
    idle client is ever evicted, and idle connections cannot lock a real
    callback out. A connection whose request has been read is never evicted.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.keys = itertools.count()
        self.reading: dict[int, socket.socket] = {}  # insertion order = oldest first
        self.open = 0

    def admit(self, conn: socket.socket) -> int | None:
        """A key for a new connection, or None if it must be refused."""
        with self.lock:
            if self.open >= self.limit:
                if not self.reading or self.open >= 2 * self.limit:
                    return None  # every slot is busy with a real request
                victim = self.reading.pop(next(iter(self.reading)))  # the oldest
                try:
                    # The plain socket's shutdown, also for a TLS socket: its thread then
                    # sees end-of-file at once and frees the slot.
                    socket.socket.shutdown(victim, socket.SHUT_RDWR)
                except OSError:
                    pass
            key = next(self.keys)
            self.reading[key] = conn
            self.open += 1
            return key

    def wrapped(self, key: int, conn: socket.socket) -> None:
        """The connection is now `conn` (TLS): evict that one if need be."""
        with self.lock:
            if key in self.reading:
                self.reading[key] = conn

    def request_read(self, key: int) -> None:
        with self.lock:
            self.reading.pop(key, None)

    def close(self, key: int) -> None:
        with self.lock:
            self.reading.pop(key, None)
            self.open -= 1


class NetChild:
    def __init__(
        self,
        channel: runtime.CallChannel,
        listeners: dict[str, socket.socket],
        launcher: Launcher,
    ) -> None:
        self.channel = channel
        self.listeners = listeners
        self.launcher = launcher
        self.connections = Connections(MAX_CONNECTIONS)
        self.tls: ssl.SSLContext | None = None

    # -- redirect listener --------------------------------------------------------------------

    def accept_loop(self, scheme: str, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as e:
                log.warning("accepting a %s connection failed: %s", scheme, e)
                time.sleep(0.1)
                continue
            key = self.connections.admit(conn)
            if key is None:
                log.warning("too many callback connections; refusing one")
                conn.close()
                continue
            threading.Thread(target=self.serve, args=(scheme, conn, key), daemon=True).start()

    def serve(self, scheme: str, conn: socket.socket, key: int) -> None:
        try:
            conn.settimeout(redirect.READ_TIMEOUT)
            if scheme == "https":
                assert self.tls is not None
                conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                self.connections.wrapped(key, conn)
                conn.do_handshake()
            with conn:
                status, page = self.judge(scheme, conn, key)
                conn.settimeout(redirect.READ_TIMEOUT)
                conn.sendall(redirect.response(status, page))
        except (OSError, TimeoutError) as e:
            log.warning("callback connection: %s", e)
            conn.close()
        finally:
            self.connections.close(key)

    def judge(self, scheme: str, conn: socket.socket, key: int) -> tuple[int, str]:
        try:
            raw = redirect.read_request(conn, time.monotonic() + redirect.DEADLINE)
            self.connections.request_read(key)
            callback = redirect.parse_request(raw, scheme)
        except redirect.BadRequest as e:
            log.warning("%s", e)
            return 400, ""
        if callback.get("state") is None:
            return 404, ""  # not a login (a browser's /favicon.ico): the parent need not know
        try:
            verdict = self.channel.call(callback, VERDICT_TIMEOUT)
        except ipc.ProtocolError as e:  # a part over its limit (the request's bounds forbid it)
            log.warning("callback not passed on: %s", e)
            return 400, ""
        if verdict is None:
            return 503, ""
        return verdict.status, verdict.page

    # -- messages from the parent -------------------------------------------------------------

    def handle_verdict(self, request_id: int, verdict: ipc.CallbackVerdict) -> None:
        if not self.channel.deliver(request_id, verdict):
            log.debug("verdict for a callback that gave up waiting")

    def handle_token_request(self, request_id: int, message: ipc.Wire) -> None:
        """A request to the provider (one of net/calls.py's CALLS): run it in a worker
        process (net/worker.py)."""
        # The worker's copy, wiped once sent; the parent's frame is wiped on return.
        request = message.encode(request_id)
        threading.Thread(
            target=self._relay, args=(message.TYPE, request_id, request), daemon=True
        ).start()

    def _relay(self, msg_type: MsgType, request_id: int, request: bytearray) -> None:
        call = CALLS[msg_type]
        try:
            result = self.launcher.call(request, msg_type)
        except Busy:
            # Every worker slot taken: the request never left, so even an exchange may be
            # tried again (its code is unused).
            log.warning("no token request worker free; the request fails for now")
            self.channel.send(call.failure(TokenOutcome.TRANSIENT, BUSY), request_id)
            return
        finally:
            ipc.wipe(request)
        try:
            if result is not None:
                reply = ipc.decode(result)
                if reply.request_id == request_id and reply.type == call.result.TYPE:
                    self.channel.send(ipc.decode_as(reply), request_id)
                    return
                log.warning("token request worker answered another request")
        except ipc.ProtocolError as e:
            log.warning("token request worker: %s", e)
        finally:
            if result is not None:
                ipc.wipe(result)
        # No answer (the worker crashed or was killed for overrunning its deadline).
        self.channel.send(call.lost_result(), request_id)

    def run(self) -> None:
        cert = None
        if "https" in self.listeners:
            from pizauth.net import tls  # cryptography: only when HTTPS is on

            cert = tls.make_certificate()
        self.tls = cert.context if cert else None
        # Before the first thread: the filter covers this thread and every one it starts.
        sandbox.confine_network()
        self.launcher.watch()
        for scheme, listener in self.listeners.items():
            threading.Thread(target=self.accept_loop, args=(scheme, listener), daemon=True).start()
        ready = ipc.NetReady(cert.public_key, cert.fingerprint) if cert else ipc.NetReady("", "")
        self.channel.send(ready)
        handlers: runtime.Handlers = {
            MsgType.NET_CALLBACK_VERDICT: self.handle_verdict,
            **{msg_type: self.handle_token_request for msg_type in CALLS},
        }
        self.channel.serve(handlers, "network child")


def main(argv: list[str]) -> None:
    fds, _ = start_child("pizauth: network", argv)
    sandbox.prepare()  # find libseccomp while ldconfig may still be run
    # Forked first: while this process has one thread, no secret and no TLS key.
    launcher = Launcher(close_in_launcher=list(fds.values()))
    channel = runtime.CallChannel(socket.socket(fileno=fds.pop("channel")))
    listeners = {scheme: socket.socket(fileno=fd) for scheme, fd in fds.items()}
    NetChild(channel, listeners, launcher).run()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
