"""The network child: redirect listeners and token-endpoint calls.

It accepts browser redirects on the listening sockets the parent handed it,
asks the parent to judge each callback, and performs the token requests the
parent asks for. It holds no token state of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable

import requests

from pizauth import ipc
from pizauth.ipc import MsgType
from pizauth.net import redirect, tls, tokenclient
from pizauth.process import start_child

log = logging.getLogger("pizauth")

MAX_CONNECTIONS = 64  # concurrent callback connections; more wait in the backlog
VERDICT_TIMEOUT = 10.0


class NetChild:
    def __init__(self, channel: ipc.Channel, listeners: dict[str, socket.socket]) -> None:
        self.channel = channel
        self.listeners = listeners
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.tls: ssl.SSLContext | None = None

    # -- redirect listener --------------------------------------------------------------------

    def accept_loop(self, scheme: str, listener: socket.socket) -> None:
        while True:
            self.slots.acquire()
            try:
                conn, _ = listener.accept()
            except OSError as e:
                self.slots.release()
                log.warning("accepting a %s connection failed: %s", scheme, e)
                time.sleep(0.1)
                continue
            threading.Thread(target=self.serve, args=(scheme, conn), daemon=True).start()

    def serve(self, scheme: str, conn: socket.socket) -> None:
        try:
            if scheme == "https":
                assert self.tls is not None
                conn.settimeout(redirect.READ_TIMEOUT)
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn:
                status, page = self.judge(scheme, conn)
                conn.settimeout(redirect.READ_TIMEOUT)
                conn.sendall(redirect.response(status, page))
        except (OSError, TimeoutError) as e:
            log.warning("callback connection: %s", e)
            conn.close()
        finally:
            self.slots.release()

    def judge(self, scheme: str, conn: socket.socket) -> tuple[int, str]:
        try:
            raw = redirect.read_request(conn, time.monotonic() + redirect.DEADLINE)
            callback = redirect.parse_request(raw, scheme)
        except redirect.BadRequest as e:
            log.warning("%s", e)
            return 400, ""
        if callback.get("state") is None:
            return 404, ""  # spec §5.4 step 5, e.g. /favicon.ico
        reply = self.channel.call(MsgType.NET_CALLBACK, callback.fields(), VERDICT_TIMEOUT)
        if reply is None:
            return 503, ""
        return int(ipc.text(reply.fields[0])), ipc.text(reply.fields[1])

    # -- messages from the parent -------------------------------------------------------------

    def handle_verdict(self, msg: ipc.Message) -> None:
        if not self.channel.deliver(msg):
            log.debug("verdict for a callback that gave up waiting")

    def handle_exchange(self, msg: ipc.Message) -> None:
        uri, form = tokenclient.exchange_form(msg.fields)
        self._in_thread(msg.request_id, lambda s: tokenclient.exchange_code(s, uri, form))

    def handle_refresh(self, msg: ipc.Message) -> None:
        uri, form = tokenclient.refresh_form(msg.fields)
        self._in_thread(msg.request_id, lambda s: tokenclient.refresh(s, uri, form))

    def _in_thread(
        self, request_id: int, call: Callable[[requests.Session], tokenclient.TokenResult]
    ) -> None:
        def run() -> None:
            with requests.Session() as session:
                try:
                    result = call(session)
                except Exception as e:  # noqa: BLE001 - every request gets an answer
                    log.warning("token request failed: %s", type(e).__name__)
                    result = tokenclient.TokenResult("permanent", "invalid response received")
            self.channel.send(MsgType.NET_TOKEN_RESULT, request_id, result.fields())

        threading.Thread(target=run, daemon=True).start()

    def run(self) -> None:
        cert = tls.make_certificate() if "https" in self.listeners else None
        self.tls = cert.context if cert else None
        for scheme, listener in self.listeners.items():
            threading.Thread(target=self.accept_loop, args=(scheme, listener), daemon=True).start()
        ready = [cert.public_key.encode(), cert.fingerprint.encode()] if cert else [b"", b""]
        self.channel.send(MsgType.NET_READY, 0, ready)
        handlers = {
            MsgType.NET_CALLBACK_VERDICT: self.handle_verdict,
            MsgType.NET_EXCHANGE: self.handle_exchange,
            MsgType.NET_REFRESH: self.handle_refresh,
        }
        ipc.serve_parent(self.channel, handlers, "network")


def main(argv: list[str]) -> None:
    fds, _ = start_child("pizauth: network", argv)
    channel = ipc.Channel(socket.socket(fileno=fds.pop("channel")))
    listeners = {scheme: socket.socket(fileno=fd) for scheme, fd in fds.items()}
    NetChild(channel, listeners).run()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
