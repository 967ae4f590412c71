"""Hostile input gets a clear answer, and nothing breaks.

Each test sends the running server something a stranger, a broken provider or
a subverted child might send, checks the answer, and then checks that the
server still serves: `pizauth show` answers afterwards. The single-purpose
happy-path checks live in test_system.py; these are the unhappy paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import json
import logging
import os
import signal
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    URL_PREFIX,
    Pizauth,
    as_nobody,
    children_of,
    http_get,
    title,
    wait_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import INTERNAL_ERROR, account_config, follow_login

from pizauth import config, ipc, limits, timeouts
from pizauth.ipc import MsgType
from pizauth.priv.parent import Parent, Sockets
from pizauth.timeouts import EXCHANGE_PAGE

# -- helpers ----------------------------------------------------------------------------------


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def control_path(pizauth: Pizauth) -> str:
    return str(Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock")


def ask(pizauth: Pizauth, request: bytes, timeout: float = 10) -> bytes:
    """One raw request on the control socket, as a client that half-closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(control_path(pizauth))
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        return s.makefile("rb").read()


def raw_http(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to a redirect listener; whatever comes back before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)  # so a request without a blank line ends too
        except OSError as e:
            # It may answer and close before taking everything: the write fails, or the
            # shutdown finds the connection already reset.
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


def background_get(url: str) -> Callable[[], tuple[int, bytes]]:
    """GET `url` in a thread (a login page waits for its code exchange); the returned
    function waits for (status, body), longer than the parent's EXCHANGE_PAGE."""
    parts = urllib.parse.urlsplit(url)
    result: list[tuple[int, bytes]] = []

    def get() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=EXCHANGE_PAGE + 10)
        try:
            conn.request("GET", f"{parts.path}?{parts.query}", headers={"Host": parts.netloc})
            resp = conn.getresponse()
            result.append((resp.status, resp.read()))
        finally:
            conn.close()

    thread = threading.Thread(target=get, daemon=True)
    thread.start()

    def wait() -> tuple[int, bytes]:
        thread.join(EXCHANGE_PAGE + 10)
        assert result, f"no page for {url}"
        return result[0]

    return wait


def redirect_port(url: str) -> int:
    port = urllib.parse.urlsplit(query(url)["redirect_uri"]).port
    assert port is not None
    return port


def still_serves(pizauth: Pizauth, token: str | None = None) -> None:
    """`pizauth show` still answers: with the token if there is one, else with a URL."""
    result = pizauth.show()
    if token is None:
        assert result.stderr.startswith(URL_PREFIX.encode()), result.stderr
    else:
        assert (result.returncode, result.stdout.decode()) == (0, token + "\n"), result


class Stall:
    """A token endpoint that accepts connections, reads, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def stall() -> Iterator[Stall]:
    server = Stall()
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    out = []
    for child in children_of(pid):
        out += [child, *descendants(child)]
    return out


def child_pid(pizauth: Pizauth, name: str) -> int | None:
    for pid in children_of(pizauth.proc.pid):
        if title(pid) == f"pizauth: {name}":
            return pid
    return None


# -- the control socket -----------------------------------------------------------------------


def test_control_socket_odd_requests(pizauth: Pizauth) -> None:
    pizauth.start()
    # An empty request is the "already running" probe: answered by closing
    # (docs/compatibility.md "Silent empty request").
    assert ask(pizauth, b"") == b""
    assert ask(pizauth, b"\xff\xfe:x") == (
        b"error:Syntactically invalid request '<can't represent as UTF-8>'"
    )
    assert ask(pizauth, b"showtoken:withurl \xff") == b"error:Account names must be UTF-8"
    assert ask(pizauth, b"refresh:") == b"error:Syntactically invalid request 'refresh:'"
    # The name is shown with its control characters escaped (pizauth.text.shown).
    assert ask(pizauth, b"showtoken:withurl no\0such") == b"error:No account 'no\\x00such'"
    assert ask(pizauth, b"revoke:") == b"error:No account ''"
    assert ask(pizauth, b":") == b"error:Unknown command ''"
    still_serves(pizauth)


def peak_memory_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def test_oversized_request_is_refused_in_bounded_memory(pizauth: Pizauth) -> None:
    pizauth.start()
    command = child_pid(pizauth, "command")
    assert command is not None
    before = peak_memory_kib(command)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(control_path(pizauth))
        chunk = b"restore:" + b"x" * (1 << 20)
        for _ in range(32):  # 32 MiB, far over the bound
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        reply = s.makefile("rb").read()
    assert reply == b"error:Request too large"
    grown = peak_memory_kib(command) - before
    assert grown < 8 * 1024, f"the command child grew by {grown} KiB on a hostile request"
    still_serves(pizauth)


def test_silent_clients_delay_nobody(pizauth: Pizauth) -> None:
    pizauth.start()
    token = pizauth.authorise()
    silent = []
    for _ in range(30):  # connect, then never write a byte (nor half-close)
        s = socket.socket(socket.AF_UNIX)
        s.connect(control_path(pizauth))
        silent.append(s)
    started = time.monotonic()
    still_serves(pizauth, token)
    # Served behind them, it would wait out their read deadline (10 s).
    assert time.monotonic() - started < timeouts.COMMAND_READ / 2
    for s in silent:
        s.close()
    still_serves(pizauth, token)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_other_users_cannot_reach_the_control_socket(pizauth: Pizauth, tmp_path: Path) -> None:
    # test_system.py opens the permissions to show the uid check; here they are as made.
    base = tmp_path / "world"
    base.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    pizauth.env["XDG_RUNTIME_DIR"] = str(base)
    pizauth.start()
    sock_path = control_path(pizauth)
    # Neither the socket nor its directory lets anyone else in.
    assert os.stat(sock_path).st_mode & 0o077 == 0
    assert os.stat(os.path.dirname(sock_path)).st_mode & 0o777 == 0o700
    assert as_nobody(sock_path, None) == ("error", errno.EACCES)  # the directory is 0700
    still_serves(pizauth)


# -- the redirect listener --------------------------------------------------------------------


def test_oversized_and_malformed_callbacks_get_400(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.auth_url()
    port = redirect_port(url)
    state = query(url)["state"]
    host = f"Host: localhost:{port}\r\n".encode()
    cases = {
        # 16 KiB at most, as pizauth 1.1, whether in the request line or in headers
        "long line": b"GET /?" + b"a" * 20000 + b" HTTP/1.1\r\n" + host + b"\r\n",
        "many headers": b"GET / HTTP/1.1\r\n" + host + b"X-Pad: " + b"b" * 17000 + b"\r\n\r\n",
        "no host": f"GET /?state={state}&code=x HTTP/1.1\r\n\r\n".encode(),
        "two hosts": f"GET /?state={state} HTTP/1.1\r\n".encode() + host + host + b"\r\n",
        "not GET": f"POST /?state={state}&code=x HTTP/1.1\r\n".encode() + host + b"\r\n",
        "not UTF-8": b"GET /?state=\xff HTTP/1.1\r\n" + host + b"\r\n",
        "no version": f"GET /?state={state}&code=x\r\n".encode() + host + b"\r\n",
        "binary": bytes(range(256)) * 4,
    }
    for name, request in cases.items():
        response = raw_http(port, request)
        assert status_line(response) == b"HTTP/1.1 400 Bad Request", name
    assert status_line(raw_http(port, b"GET /favicon.ico HTTP/1.1\r\n" + host + b"\r\n")) == (
        b"HTTP/1.1 404 Not Found"
    )
    # The pending request is untouched and can still be completed.
    assert pizauth.auth_url() == url
    assert pizauth.provider.token_requests == []
    status, _ = follow_login(pizauth)
    assert status == 200
    wait_for(lambda: pizauth._token("acct"), 5, "token")


def test_idle_and_slow_connections_do_not_block_a_real_callback(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.auth_url()
    port = redirect_port(url)
    idle = []
    for i in range(100):  # more than the listener serves at once
        s = socket.create_connection(("127.0.0.1", port))
        if i % 10 == 0:
            s.sendall(b"GET /?state=")  # slow: a request begun and never finished
        idle.append(s)
    started = time.monotonic()
    status, body = follow_login(pizauth)
    elapsed = time.monotonic() - started
    assert status == 200, body
    # Served behind them, it would wait out their read deadline (10 s).
    limit = timeouts.REDIRECT_READ / 2
    assert elapsed < limit, f"the callback took {elapsed:.1f} s behind idle connections"
    token = wait_for(lambda: pizauth._token("acct"), 5, "token")
    for s in idle:
        s.close()
    still_serves(pizauth, token)


def test_wrong_and_replayed_state(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.auth_url()
    port = redirect_port(url)
    state = query(url)["state"]
    base = f"http://localhost:{port}/"
    for wrong in ("", "x", state[:-1], state + "x", state.upper()):
        status, _, body = http_get(base + "?" + urllib.parse.urlencode({"state": wrong}))
        assert (status, b"No pending token matches request state" in body) == (200, True)
    status, headers, _ = http_get(url)
    callback = headers["location"]
    assert http_get(callback)[0] == 200
    token = wait_for(lambda: pizauth._token("acct"), 5, "token")
    # Replaying the callback (same state and code) changes nothing.
    status, _, body = http_get(callback)
    assert status == 200 and b"No pending token matches request state" in body
    assert len(pizauth.provider.token_requests) == 1
    still_serves(pizauth, token)


def test_error_redirect_gets_a_helpful_page(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.auth_url()
    port = redirect_port(url)
    hostile = '<script>alert("x")</script>'
    target = "/?" + urllib.parse.urlencode(
        {"state": query(url)["state"], "error": "access_denied", "error_description": hostile}
    )
    response = raw_http(port, f"GET {target} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_line(head) == b"HTTP/1.1 400 Bad Request"
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert f"Content-Length: {len(body)}".encode() in head
    # docs/compatibility.md "Error page": the page says what failed and for which account; the value
    # is escaped.
    assert b"Authentication for acct failed: access_denied (&lt;script&gt;" in body
    assert b"<script>" not in body
    assert b"Run &#x27;pizauth show acct&#x27; for a new login URL." in body
    assert b"acct: No access token" in pizauth.run("status").stdout
    still_serves(pizauth)  # and a new login can start


def test_second_callback_during_an_exchange_starts_no_second_one(
    pizauth: Pizauth, stall: Stall
) -> None:
    pizauth.write_config(accounts=account_config(pizauth.provider.auth_uri, stall.uri))
    pizauth.start()
    url = pizauth.auth_url()
    port = redirect_port(url)
    callback = f"http://localhost:{port}/?state={query(url)['state']}"
    # The pages wait for the exchange, which stalls: they are answered after
    # EXCHANGE_PAGE with where the result will show.
    first = background_get(callback + "&code=first")
    wait_for(lambda: len(stall.conns) == 1, 5, "the exchange to reach the token endpoint")
    second = background_get(callback + "&code=second")
    time.sleep(0.3)  # an absence cannot be waited for: give a second exchange time to show
    assert len(stall.conns) == 1
    assert b"acct: Access token pending authentication" in pizauth.run("status").stdout
    still_serves(pizauth)
    for page in (first, second):
        status, body = page()
        assert (status, b"still completing the login" in body) == (200, True)


def test_idle_tls_handshakes_are_evicted(pizauth: Pizauth) -> None:
    pizauth.conf.write_text(
        'http_listen = none;\nhttps_listen = "127.0.0.1:0";\nstartup_cmd = "touch ready";\n'
        + pizauth.account_block(extra='redirect_uri = "https://localhost/";')
    )
    pizauth.start()
    url = pizauth.auth_url()
    port = redirect_port(url)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET /favicon.ico HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
            assert status_line(tls.recv(4096)) == b"HTTP/1.1 404 Not Found"
    assert time.monotonic() - started < timeouts.REDIRECT_READ / 2
    for s in idle:
        s.close()
    still_serves(pizauth)


# -- the token endpoint -----------------------------------------------------------------------


def test_code_exchange_failures_are_reported_and_recoverable(pizauth: Pizauth) -> None:
    pizauth.start()
    bearer = {"access_token": "at-wrong", "expires_in": 60}
    cases = [
        (
            (400, json.dumps({"error": "invalid_grant", "error_description": "code expired"})),
            "HTTP code 400 (invalid_grant: code expired)",
        ),
        ((403, "<html>Forbidden</html>"), "HTTP code 403"),
        ((200, "this is not JSON"), "Invalid JSON: "),
        ((200, json.dumps({**bearer, "token_type": "mac"})), "invalid response received"),
        ((200, json.dumps([1, 2, 3])), "invalid response received"),
        ((200, b"{" + b" " * (5 << 20) + b"}"), "response from token endpoint too large"),
    ]
    for response, message in cases:
        line = f"Authentication for acct failed: {message}"
        seen = pizauth.log().count(line)  # some messages come twice
        pizauth.provider.script_token_responses(response)
        status, _ = follow_login(pizauth)
        assert status == 200
        wait_for(
            lambda line=line, seen=seen: pizauth.log().count(line) > seen,
            10,
            f"error for {message!r}",
        )
        assert b"acct: No access token" in pizauth.run("status").stdout
        still_serves(pizauth)  # a new login can start at once
    # After all that, a real login still works.
    assert pizauth.provider.is_valid_access_token(pizauth.authorise())


def test_refresh_errors_keep_or_drop_the_token_as_they_should(pizauth: Pizauth) -> None:
    pizauth.start("-vv")
    token = pizauth.authorise()
    transient = [
        (500, json.dumps({"error": "server_error"})),
        (503, "<html>Service Unavailable</html>"),
        (429, ""),
    ]
    for n, response in enumerate(transient, start=2):
        pizauth.provider.script_token_responses(response)
        assert pizauth.run("refresh", "acct").returncode == 0
        assert pizauth.provider.wait_for_token_requests(n)
        wait_for(
            lambda code=response[0]: (
                f"Transitory refresh error for acct: HTTP code {code}" in pizauth.log()
            ),
            5,
            f"transient error {response[0]}",
        )
        still_serves(pizauth, token)  # a provider hiccup costs nobody their token
    pizauth.provider.script_token_responses(
        (400, json.dumps({"error": "invalid_grant", "error_description": "revoked"}))
    )
    assert pizauth.run("refresh", "acct").returncode == 0
    wait_for(lambda: "Permanent refresh error for acct" in pizauth.log(), 5, "permanent error")
    assert "HTTP code 400 (invalid_grant: revoked)" in pizauth.log()
    still_serves(pizauth)  # the token is gone: show offers a new login


def test_unreachable_token_endpoint_keeps_the_token(pizauth: Pizauth) -> None:
    pizauth.start("-vv")
    token = pizauth.authorise()
    token_uri = pizauth.provider.token_uri
    pizauth.provider.stop()  # the port is now closed: connection refused
    assert pizauth.run("refresh", "acct").returncode == 0
    wait_for(
        lambda: (
            f"Transitory refresh error for acct: couldn't connect to {token_uri}" in pizauth.log()
        ),
        10,
        "transient connection error",
    )
    still_serves(pizauth, token)


def test_stalled_or_refused_token_endpoint_blocks_nothing(pizauth: Pizauth, stall: Stall) -> None:
    refused = f"http://127.0.0.1:{closed_port()}/token"
    auth = pizauth.provider.auth_uri
    pizauth.write_config(
        accounts=account_config(auth, stall.uri, "stalled")
        + account_config(auth, refused)
        + pizauth.account_block("ok")
    )
    pizauth.start()
    # A code exchange against a closed port is retried (as pizauth 1.1) in the background...
    url = pizauth.auth_url("acct")
    callback = f"http://localhost:{redirect_port(url)}/?state={query(url)['state']}&code=c"
    refused_page = background_get(callback)
    # ...and one against an endpoint that never answers waits for its timeout.
    url = pizauth.auth_url("stalled")
    callback = f"http://localhost:{redirect_port(url)}/?state={query(url)['state']}&code=c"
    stalled_page = background_get(callback)
    wait_for(lambda: stall.conns, 5, "the stalled exchange to connect")
    # Each call runs in its own worker process, and the server goes on serving.
    net = child_pid(pizauth, "network")
    assert net is not None
    workers = [p for p in descendants(net) if title(p) == "pizauth: network worker"]
    assert len(workers) == 2, [title(p) for p in descendants(net)]
    status = pizauth.run("status").stdout.decode()
    assert "acct: Access token pending authentication" in status
    assert "stalled: Access token pending authentication" in status
    assert pizauth.provider.is_valid_access_token(pizauth.authorise("ok"))
    # Their pages are answered once EXCHANGE_PAGE has passed.
    assert refused_page()[0] == 200 and stalled_page()[0] == 200
    # Shutting down does not wait for stuck calls, and leaves no process behind.
    everything = [pizauth.proc.pid, *descendants(pizauth.proc.pid)]
    assert pizauth.run("shutdown").returncode == 0
    pizauth.proc.wait(timeout=5)
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in everything), 5, "all gone")


# -- the channels between the processes -------------------------------------------------------

SYS_PIDFD_GETFD = 438  # the same number on every architecture


def channel_of(pid: int) -> int:
    """Our own descriptor for `pid`'s end of its channel to the parent: the one unix
    stream socket it holds that has no address (the control socket has its path; the
    network child's socket to its launcher is a seqpacket one)."""
    named = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        stream = int(fields[4], 16) == socket.SOCK_STREAM
        named[fields[6]] = len(fields) > 7 or not stream
    candidates = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:[") and not named.get(target[8:-1], True):
            candidates.append(int(fd))
    assert len(candidates) == 1, candidates
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        ours = libc.syscall(SYS_PIDFD_GETFD, pidfd, candidates[0], 0)
        if ours < 0:
            pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
        return ours
    finally:
        os.close(pidfd)


@pytest.mark.skipif(os.geteuid() != 0, reason="taking a child's descriptor needs root")
def test_malformed_frame_from_a_child_drops_only_that_child(pizauth: Pizauth) -> None:
    pizauth.start()
    token = pizauth.authorise()
    frames = [
        struct.pack("!IIII", 999, 16, 1, 0),  # unknown type
        struct.pack("!IIII", MsgType.CMD_STATUS, ipc.MAX_MESSAGE + 1, 1, 0),  # too long
        ipc.encode(MsgType.CMD_REPLY, 1, [b"not for the parent"]),  # wrong direction
    ]
    for frame in frames:
        victim = wait_for(lambda: child_pid(pizauth, "command"), 5, "a command child")
        with socket.socket(fileno=channel_of(victim)) as channel:
            channel.sendall(frame)
        wait_for(
            lambda victim=victim: (pid := child_pid(pizauth, "command")) and pid != victim,
            5,
            "a new command child",
        )
        still_serves(pizauth, token)
    assert pizauth.log().count("protocol error from command child") == len(frames)
    assert pizauth.proc.poll() is None


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


class Flood:
    """Writes frames into a child's channel, as that child, until told to stop or the
    parent closes the channel."""

    def __init__(self, fd: int, frame: bytes) -> None:
        self.sock = socket.socket(fileno=fd)
        self.blob = frame * max(1, 65536 // len(frame))
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.sock.sendall(self.blob)
                self.sent += len(self.blob)
        except OSError:
            pass  # the parent dropped the channel

    def end(self) -> None:
        self.stop.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()


def unknown_state_callback() -> bytes:
    """A callback for no pending login: the parent answers it with a verdict each time."""
    return bytes(
        ipc.NetCallback("http", "localhost", 1, "/", False, (("state", "nope"),)).encode(1)
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="taking a child's descriptor needs root")
def test_show_answers_while_the_network_child_floods_callbacks(pizauth: Pizauth) -> None:
    pizauth.start()
    net = wait_for(lambda: child_pid(pizauth, "network"), 5, "a network child")
    flood = Flood(channel_of(net), unknown_state_callback())
    try:
        wait_for(lambda: flood.sent > 1024 * 1024, 10, "the flood to start")
        for _ in range(5):
            started = time.monotonic()
            result = pizauth.run("show", "acct", timeout=20)
            assert result.stderr.startswith(URL_PREFIX.encode()), result
            # One channel's frames never keep the parent from the other's.
            assert time.monotonic() - started < 5
        assert not flood.stop.is_set() and flood.thread.is_alive(), "the flood ended early"
    finally:
        flood.end()
    still_serves(pizauth)
    assert "internal error" not in pizauth.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="taking a child's descriptor needs root")
def test_a_child_that_never_reads_is_restarted_in_bounded_memory(pizauth: Pizauth) -> None:
    pizauth.start()
    parent = pizauth.proc.pid
    net = wait_for(lambda: child_pid(pizauth, "network"), 5, "a network child")
    before = rss_kib(parent)
    os.kill(net, signal.SIGSTOP)  # it reads nothing more; the parent's verdicts pile up
    flood = Flood(channel_of(net), unknown_state_callback())
    peak = before
    deadline = time.monotonic() + 60
    try:
        while "network child does not read its messages" not in pizauth.log():
            assert time.monotonic() < deadline, "the silent child was never dropped"
            peak = max(peak, rss_kib(parent))
            # Commands are served all along.
            assert pizauth.run("status", timeout=20).returncode == 0
    finally:
        flood.end()
    # The parent's memory stayed bounded: a few outboxes' worth, not the whole flood.
    assert peak - before < 48 * 1024, f"the parent grew by {peak - before} KiB"
    assert flood.sent > 1024 * 1024, "the flood was too small to prove anything"
    wait_for(
        lambda: (pid := child_pid(pizauth, "network")) and pid != net, 10, "a new network child"
    )
    still_serves(pizauth)
    assert "internal error" not in pizauth.log()


# The parent's dispatcher itself, fed what a subverted child could write: whatever
# arrives, the parent drops that child, wipes the frame, keeps its state and goes on.

CONF = (
    'account "x" { auth_uri = "http://a.com/"; client_id = "c"; client_secret = "s3cret";'
    ' token_uri = "http://t/"; }'
)


class InternalErrors(logging.Handler):
    """Records what the parent's catch-all logs: a handler that raised is a bug even
    though the parent goes on (it drops the child just as for a protocol error)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or INTERNAL_ERROR.search(record.getMessage()):
            self.found.append(self.format(record))


@contextlib.contextmanager
def no_internal_errors() -> Iterator[None]:
    logger = logging.getLogger("pizauth")
    handler = InternalErrors()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.found, "\n".join(handler.found)


def quiet_parent(tmp: Path) -> tuple[Parent, list[str], list[bytes], socket.socket]:
    """A Parent whose children are never started; drops and sends are recorded."""
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(tmp / "sock"))
    conf = config.parse(CONF)
    ready: list[bool] = []  # on_ready(startup_done), should both children say they serve
    p = Parent(conf, str(tmp / "no.conf"), Sockets(control, None, None), [], ready.append)
    dropped: list[str] = []
    sent: list[bytes] = []
    for child in (p.cmd, p.net):
        child.drop = lambda child=child: dropped.append(child.name)  # type: ignore[method-assign]
        child.send = lambda frame, secret=False: sent.append(bytes(frame))  # type: ignore
    return p, dropped, sent, control


def parent_under_test(tmp_path: Path) -> Iterator[tuple[Parent, list[str], list[bytes]]]:
    """The `parent` fixture (other modules register it too): a quiet parent, checked for
    internal errors, wiped after."""
    p, dropped, sent, control = quiet_parent(tmp_path)
    with no_internal_errors():
        yield p, dropped, sent
    p.table.wipe_all()
    control.close()


parent = pytest.fixture(parent_under_test, name="parent")


def frame(msg_type: int, fields: list[bytes], request_id: int = 7) -> bytearray:
    """A frame built by hand, so that it can break every rule."""
    payload = b"".join(struct.pack("!I", len(f)) + f for f in fields)
    return bytearray(struct.pack("!IIII", msg_type, 16 + len(payload), request_id, 1) + payload)


BAD_FROM_COMMAND = {
    "empty": bytearray(),
    "short header": bytearray(b"\0\0\0\2\0\0"),
    "unknown type": frame(999, []),
    "length lies": bytearray(struct.pack("!IIII", MsgType.CMD_STATUS, 99, 1, 1)),
    "too few fields": frame(MsgType.CMD_SHOW, [b"1"]),
    "too many fields": frame(MsgType.CMD_STATUS, [b"x"]),
    "field overruns": bytearray(struct.pack("!IIIII", MsgType.CMD_REVOKE, 21, 1, 1, 50) + b"x"),
    "bad flag": frame(MsgType.CMD_SHOW, [b"2", b"x"]),
    "name not UTF-8": frame(MsgType.CMD_SHOW, [b"1", b"\xff"]),
    "wrong direction": frame(MsgType.CMD_REPLY, [b"ok:"]),
    "network's message": frame(MsgType.NET_READY, [b"", b""]),
}


def test_parent_drops_a_child_that_sends_garbage(parent) -> None:  # type: ignore[no-untyped-def]
    p, dropped, sent = parent
    for name, bad in BAD_FROM_COMMAND.items():
        dropped.clear()
        p.cmd.on_frame(bad)
        assert dropped == ["command"], name
        assert not any(bad), f"{name}: frame not wiped"
    # Nothing was answered, nothing changed, and a good request is still served.
    assert sent == []
    p.cmd.on_frame(frame(MsgType.CMD_STATUS, []))
    assert sent and b"ok:x: No access token" in sent[-1]
    assert p.stopping is False


def test_parent_drops_a_network_child_that_lies_about_tokens(parent) -> None:  # type: ignore[no-untyped-def]
    p, dropped, sent = parent
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"x"]))  # starts an authorisation
    ok = [b"ok", b"", b"at-1", b"60", b"absent", b""]
    lies = {
        "unknown request": frame(MsgType.NET_TOKEN_RESULT, ok, request_id=12345),
        "odd query pairs": frame(
            MsgType.NET_CALLBACK,
            [b"http", b"localhost", b"1", b"/", b"0", ipc.pack_list([b"state"])],
        ),
        "bad port": frame(
            MsgType.NET_CALLBACK, [b"http", b"localhost", b"p", b"/", b"0", ipc.pack_list([])]
        ),
        "command's message": frame(MsgType.CMD_SHOW, [b"1", b"x"]),
        # A public key no `info` reply could carry.
        "huge public key": frame(
            MsgType.NET_READY, [b"k" * (limits.MAX_PUBLIC_KEY + 1), b"fingerprint"]
        ),
    }
    for name, bad in lies.items():
        dropped.clear()
        p.net.on_frame(bad)
        assert dropped == ["network"], name
        assert not any(bad), f"{name}: frame not wiped"
    # `info` still answers, in a frame of ordinary size.
    sent.clear()
    p.cmd.on_frame(frame(MsgType.CMD_INFO, []))
    [reply] = sent
    assert len(reply) < 1024 and b'"http_port"' in reply
    # A result for a request the parent did make, but malformed: dropped, state untouched.
    entry = p.table.get("x")
    assert entry is not None
    sent.clear()
    p.refresher.exchange(entry, "code")  # an exchange in flight, as after a callback
    [exchange] = sent
    request_id = ipc.decode(bytearray(exchange)).request_id
    for fields in (
        [b"maybe", b"", b"", b"", b"absent", b""],
        [b"ok", b"", b"", b"60", b"absent", b""],  # no access token
        [b"ok", b"", b"at-2", b"soon", b"absent", b""],
        [b"ok", b"", b"at-2", b"60", b"sometimes", b"rt-2"],
    ):
        dropped.clear()
        p.net.on_frame(frame(MsgType.NET_TOKEN_RESULT, fields, request_id=request_id))
        assert dropped == ["network"], fields
        assert type(p.table.get("x").state).__name__ == "Pending"  # type: ignore[union-attr]


FRAMES = st.one_of(
    st.binary(max_size=200).map(bytearray),
    st.builds(
        frame,
        st.sampled_from([int(t) for t in MsgType]) | st.integers(0, 2**32 - 1),
        st.lists(st.binary(max_size=40), max_size=8),
        st.integers(0, 2**32 - 1),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(FRAMES, st.sampled_from(["cmd", "net"])), min_size=1, max_size=5))
def test_parent_survives_any_frames(tmp_path_factory, frames) -> None:  # type: ignore[no-untyped-def]
    p, _, _, control = quiet_parent(tmp_path_factory.mktemp("fuzz"))
    try:
        with no_internal_errors():  # neither raises nor trips the catch-all
            for buf, peer in frames:
                getattr(p, peer).on_frame(buf)
                assert not any(buf), "frame not wiped"
    finally:
        p.table.wipe_all()
        control.close()
