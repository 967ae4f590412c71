"""Harness for system tests: the installed `pizauth` against a local OAuth2 provider.

Every test drives the real command as a user would: write a pizauth.conf, start
`pizauth server`, run `pizauth show`, follow the URL like a browser, and look at
what `show` prints. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from provider import Client, Provider  # noqa: E402

PIZAUTH = str(Path(sys.executable).with_name("pizauth"))
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-5f1c"
URL_PREFIX = "ERROR - Access token unavailable until authorised with URL "


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition"):
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def http_get(url: str, host_header: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects, as a browser's single step."""
    parts = urllib.parse.urlsplit(url)
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    conn = http.client.HTTPConnection(host, parts.port, timeout=10)
    target = parts.path + ("?" + parts.query if parts.query else "")
    headers = {"Host": host_header or parts.netloc}
    conn.request("GET", target, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def as_nobody(sock_path: str, request: bytes | None) -> tuple[str, int | bytes]:
    """Connect to a control socket as uid 65534 and send `request` (None: only connect).

    ("reply", bytes) or ("error", errno). Forks and drops privileges without exec, since
    the interpreter may not be readable by nobody. Needs root.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock_path)
                reply = b""
                if request is not None:
                    s.sendall(request)
                    s.shutdown(socket.SHUT_WR)
                    reply = s.makefile("rb").read()
            os.write(write_end, b"reply:" + reply)
        except OSError as e:
            os.write(write_end, f"error:{e.errno}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    kind, _, rest = answer.partition(b":")
    return ("reply", rest) if kind == b"reply" else ("error", int(rest))


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; fields resume after its ')'.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry))
    return found


class Pizauth:
    """One pizauth server with its own config, runtime dir and working directory."""

    def __init__(self, tmp: Path, provider: Provider) -> None:
        self.tmp = tmp
        self.provider = provider
        self.conf = tmp / "pizauth.conf"
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(tmp / "runtime"),
            "SHELL": "/bin/sh",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def account_block(self, name: str = "acct", extra: str = "") -> str:
        return (
            f'account "{name}" {{\n'
            f'  auth_uri = "{self.provider.auth_uri}";\n'
            f'  token_uri = "{self.provider.token_uri}";\n'
            f'  client_id = "{CLIENT_ID}";\n'
            f'  client_secret = "{CLIENT_SECRET}";\n'
            f"  {extra}\n"
            "}\n"
        )

    def write_config(self, accounts: str | None = None, globals_: str = "") -> None:
        self.conf.write_text(
            'http_listen = "127.0.0.1:0";\n'
            "https_listen = none;\n"
            'startup_cmd = "touch ready";\n'
            f"{globals_}\n"
            f"{accounts if accounts is not None else self.account_block()}"
        )

    def run(self, *args: str, input: bytes | None = None, timeout: float = 30):
        return subprocess.run(
            [PIZAUTH, *args],
            env=self.env,
            cwd=self.tmp,
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def start(self, *extra: str) -> None:
        if not self.conf.exists():
            self.write_config()
        ready = self.tmp / "ready"
        if ready.exists():
            ready.unlink()
        self.proc = subprocess.Popen(
            [PIZAUTH, "server", "-d", "-c", str(self.conf), *extra],
            env=self.env,
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "server.log", "wb"),  # noqa: SIM115
        )
        wait_for(
            lambda: ready.exists() or self.proc.poll() is not None, 10, "server start"
        )
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        path = self.tmp / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def show(self, account: str = "acct", *flags: str) -> subprocess.CompletedProcess[bytes]:
        return self.run("show", *flags, account)

    def auth_url(self, account: str = "acct") -> str:
        result = self.show(account)
        assert result.returncode == 1
        stderr = result.stderr.decode()
        assert stderr.startswith(URL_PREFIX), stderr
        return stderr[len(URL_PREFIX) :].strip()

    def authorise(self, account: str = "acct") -> str:
        """The whole browser round trip; returns the access token `show` then prints."""
        status, headers, _ = http_get(self.auth_url(account))
        assert status == 302, status
        status, _, body = http_get(headers["location"])
        assert status == 200, body
        assert b"pizauth processing authentication" in body
        result = wait_for(lambda: self._token(account), 10, "token after authorisation")
        return result

    def _token(self, account: str) -> str | None:
        result = self.show(account)
        if result.returncode == 0:
            return result.stdout.decode()[:-1]
        return None

    def pids(self) -> list[int]:
        """The server's processes: the parent and its children."""
        assert self.proc is not None
        return [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.run("shutdown")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture
def provider() -> Iterator[Provider]:
    with Provider([Client(CLIENT_ID, CLIENT_SECRET)]) as p:
        yield p
    assert not [e for e in p.errors if "reused" in e.lower()], p.errors


@pytest.fixture
def pizauth(tmp_path: Path, provider: Provider) -> Iterator[Pizauth]:
    server = Pizauth(tmp_path, provider)
    yield server
    server.stop()
