"""A token endpoint that trickles its reply a byte a second: a refresh and a login each
end within the documented deadline (TOKEN_REQUEST, from the connection to the last byte),
not when the provider chooses, and the account's last error says why.

`requests` bounds each read, so such a provider used to hold a refresh until the
worker's alarm and a login for minutes. The endpoint here forwards to the real test
provider until it is told to trickle, so that the account first gets a token by an
ordinary login.
"""

from __future__ import annotations

import http.client
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from conftest import Pizauth, http_get, wait_for
from test_errors import status_line

from pizauth.ipc import NetRefresh
from pizauth.net import tokenclient
from pizauth.timeouts import TOKEN_REQUEST

# What a deadline may overrun by on a loaded machine: the worker's start, the parent's
# loop turn, and `status` itself.
MARGIN = 6.0
REPLY = b'{"access_token": "never", "token_type": "Bearer", "expires_in": 3600}'


class Trickler(socketserver.ThreadingTCPServer):
    """A token endpoint on 127.0.0.1: forwards to `upstream`, or trickles its reply a byte
    a second from the first byte of the status line (`headers_too`) or of the body."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.trickle = False
        self.headers_too = True
        self.stop = threading.Event()
        self.trickled = threading.Event()  # a trickled reply has begun
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


class _Handler(socketserver.StreamRequestHandler):
    server: Trickler

    def handle(self) -> None:
        headers: dict[str, str] = {}
        self.rfile.readline()  # the request line
        while (line := self.rfile.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", "0")))
        if not self.server.trickle:
            self._forward(headers, body)
            return
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(REPLY)
        )
        if not self.server.headers_too:
            self.wfile.write(head)
            head = b""
        self.server.trickled.set()
        for i in range(len(head + REPLY)):
            try:
                self.wfile.write((head + REPLY)[i : i + 1])
            except OSError:
                return  # the client gave up: what the test waits for
            if self.server.stop.wait(1.0):
                return

    def _forward(self, headers: dict[str, str], body: bytes) -> None:
        sent = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        got = requests.post(self.server.upstream, data=body, headers=sent, timeout=10)
        self.wfile.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (got.status_code, len(got.content)) + got.content
        )


@pytest.fixture
def trickler(pizauth: Pizauth) -> Iterator[Trickler]:
    server = Trickler(pizauth.provider.token_uri)
    try:
        yield server
    finally:
        server.close()


def configure(pizauth: Pizauth, trickler: Trickler) -> None:
    block = pizauth.account_block("acct").replace(pizauth.provider.token_uri, trickler.uri)
    pizauth.write_config(accounts=block)
    pizauth.start()


def timed_out(pizauth: Pizauth, trickler: Trickler) -> str:
    line = status_line(pizauth)
    return line if f"timed out waiting for {trickler.uri}" in line else ""


def test_a_trickled_refresh_ends_within_the_deadline(pizauth: Pizauth, trickler: Trickler) -> None:
    configure(pizauth, trickler)
    token = pizauth.authorise()
    trickler.trickle = True  # from the status line's first byte
    assert pizauth.run("refresh", "acct").returncode == 0
    assert trickler.trickled.wait(10)
    start = time.monotonic()
    line = wait_for(
        lambda: timed_out(pizauth, trickler), TOKEN_REQUEST + MARGIN + 10, "the refresh to end"
    )
    assert time.monotonic() - start <= TOKEN_REQUEST + MARGIN, line
    # A transient failure: the token is kept and the refresh will be tried again.
    assert pizauth._token() == token
    assert pizauth.proc is not None and pizauth.proc.poll() is None
    assert "internal error" not in pizauth.log()


def test_a_trickled_code_exchange_ends_within_the_deadline(
    pizauth: Pizauth, trickler: Trickler
) -> None:
    configure(pizauth, trickler)
    trickler.trickle = True
    trickler.headers_too = False  # the headers at once, then the body a byte a second
    status, headers, _ = http_get(pizauth.auth_url())
    assert status == 302, status
    callback = urllib.parse.urlsplit(headers["location"])
    browser = http.client.HTTPConnection("127.0.0.1", callback.port, timeout=TOKEN_REQUEST * 2)
    start = time.monotonic()
    try:
        browser.request(
            "GET", f"{callback.path}?{callback.query}", headers={"Host": callback.netloc}
        )
        # The page waits for the exchange a while, then says where the result will show.
        assert browser.getresponse().status == 200
    finally:
        browser.close()
    assert trickler.trickled.is_set()
    line = wait_for(
        lambda: timed_out(pizauth, trickler), TOKEN_REQUEST + MARGIN + 10, "the login to end"
    )
    assert time.monotonic() - start <= TOKEN_REQUEST + MARGIN, line
    assert line.startswith("acct: No access token"), line
    # The user can log in again at once.
    trickler.trickle = False
    assert pizauth.authorise()


@pytest.mark.parametrize("headers_too", [True, False])
def test_the_token_client_bounds_the_whole_exchange(
    monkeypatch: pytest.MonkeyPatch, headers_too: bool
) -> None:
    """The same, in the token client alone with a shorter bound: trickled headers or a
    trickled body end the call on time."""
    monkeypatch.setattr(tokenclient, "TIMEOUT", 2.0)
    server = Trickler("http://127.0.0.1:9/unused")
    server.trickle, server.headers_too = True, headers_too
    try:
        start = time.monotonic()
        with requests.Session() as session:
            result = tokenclient.refresh(session, NetRefresh(server.uri, "c", None, b"rt"))
        elapsed = time.monotonic() - start
        assert (result.outcome, result.message) == (
            "transient",
            f"timed out waiting for {server.uri}",
        )
        assert elapsed <= 2.5, elapsed
    finally:
        server.close()
