"""One harness for a running `pizauth server`, shared by the tests, the end-to-end suite
and the benchmarks: write a pizauth.conf, start and stop the server, talk to its control
socket, run the local provider (examples/provider.py), follow a login URL as a browser,
and check the server's log for bugs its catch-all would otherwise hide.

Stdlib only, so that the benchmarks can use it without pytest; importing it has no side
effects beyond putting examples/ on sys.path (no signal handlers, no atexit hooks). Every
address is 127.0.0.1 or a Unix socket in the server's own temporary directory.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from provider import Client, Provider  # noqa: E402

if TYPE_CHECKING:
    from pizauth.config import Account

__all__ = ["Client", "Provider"]  # re-exported: the provider comes with the harness

# The `pizauth` that `pip install .` put beside this interpreter (else the one on PATH).
PIZAUTH = str(Path(sys.executable).with_name("pizauth"))
if not os.path.exists(PIZAUTH):
    PIZAUTH = shutil.which("pizauth") or PIZAUTH
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-5f1c"
URL_PREFIX = "ERROR - Access token unavailable until authorised with URL "
ISSUER = "https://issuer.example"  # resolved_account's

# What the parent logs when a handler raised something unexpected: it keeps serving, so
# only its log shows the bug. Both wordings the parent has used are matched.
INTERNAL_ERROR = re.compile(
    r"internal error|handling a message from the \w+ child failed", re.IGNORECASE
)
TRACEBACK = "Traceback (most recent call last)"
# What the server logs when a child made a system call outside its allowlist
# (pizauth/sandbox.py): in normal operation that never happens.
SECCOMP_KILL = "killed by its seccomp filter"

T = TypeVar("T")


class HarnessError(AssertionError):
    """A step of the harness could not be carried out (a test failure, not a crash)."""


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def has_line(path: Path) -> bool:
    """Whether `path` holds a whole line yet. A hook's `echo … >> FILE` creates the file
    before it writes, so a file that exists may still be empty."""
    try:
        return b"\n" in path.read_bytes()
    except FileNotFoundError:
        return False


def wait_for(
    condition: Callable[[], T],
    timeout: float = 5.0,
    what: str = "condition",
    details: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll `condition` until it is truthy; HarnessError (with `details()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details else ""
            raise HarnessError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


def log_problems(text: str) -> list[str]:
    """Lines of a server log that show a bug: an internal error, a Python traceback, or a
    child killed by its seccomp filter."""
    return [
        line
        for line in text.splitlines()
        if INTERNAL_ERROR.search(line) or TRACEBACK in line or SECCOMP_KILL in line
    ]


# -- talking to the server and the provider --------------------------------------------------


def http_get(url: str, host_header: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects (a browser's single step), to 127.0.0.1 only."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise HarnessError(f"refusing to contact {parts.hostname}: everything is local")
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        conn.request("GET", target, headers={"Host": host_header or parts.netloc})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def sock_request(sock_path: str, payload: bytes, timeout: float = 10.0) -> bytes:
    """One request as `pizauth` sends it: connect, write, half-close, read to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def show_request(account: str) -> bytes:
    return b"showtoken:withurl " + account.encode()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server started later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def follow_login(server: Server, account: str = "acct") -> tuple[int, bytes]:
    """A browser's two steps through `account`'s login URL: the provider's approval, which
    must redirect, then pizauth's redirect listener. The listener's status and page."""
    status, headers, _ = http_get(server.auth_url(account))
    if status != 302:
        raise HarnessError(f"{account}: the provider answered {status}")
    status, _, body = http_get(headers["location"])
    return status, body


# -- configuration -------------------------------------------------------------------------------


def account_config(
    auth_uri: str,
    token_uri: str,
    name: str = "acct",
    extra: str = "",
    client_id: str = CLIENT_ID,
    client_secret: str = CLIENT_SECRET,
) -> str:
    """An `account` block of pizauth.conf, with the test client's credentials by default."""
    return (
        f'account "{name}" {{\n'
        f'  auth_uri = "{auth_uri}";\n'
        f'  token_uri = "{token_uri}";\n'
        f'  client_id = "{client_id}";\n'
        f'  client_secret = "{client_secret}";\n'
        f"  {extra}\n"
        "}\n"
    )


def resolved_account(name: str = "a", **changes: object) -> Account:
    """A pizauth.config.Account as the parent holds it, for tests of the parent's parts on
    their own: endpoints from the issuer https://issuer.example unless `changes` say."""
    from pizauth.config import Account  # noqa: F811 - here: the harness needs only the stdlib

    base = Account(
        name=name,
        auth_uri=None,
        auth_uri_fields=(),
        client_id="cid",
        client_secret="s",
        login_hint=None,
        redirect_uri="http://localhost/",
        scopes=(),
        token_uri=None,
        refresh_at_least=3600,
        refresh_before_expiry=90,
        refresh_retry=40,
        issuer=ISSUER,
    )
    return dataclasses.replace(base, **changes)


# -- /proc -------------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (to tell a reused pid from ours), None if gone."""
    try:
        fields = stat_fields(pid)
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(stat_fields(int(entry))[1]) == pid:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def cmdline(pid: int) -> bytes:
    """Everything /proc shows as `pid`'s argv; empty once the process has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def title(pid: int) -> str:
    """The process title setproctitle gave it ("pizauth: parent", ...), "?" once gone."""
    return cmdline(pid).split(b"\0")[0].decode(errors="replace").strip() or "?"


# -- the server --------------------------------------------------------------------------------


class Server:
    """One `pizauth server -d` with its own config, runtime dir and working directory `tmp`,
    against `provider`. Its stderr (the log, in the foreground) is kept in tmp/server.log;
    each start keeps the previous run's log as server.log.N, and `log_problems()` reads
    them all."""

    def __init__(self, tmp: Path, provider: Provider, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.provider = provider
        self.conf = tmp / "pizauth.conf"
        self.runtime = tmp / "runtime"
        self.sock = str(self.runtime / "pizauth" / "pizauth.sock")
        self.env = env or {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime), "SHELL": "/bin/sh"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.parent_pid: int | None = None
        self.runs = 0
        self._known: dict[int, int | None] = {}  # pid -> start time, for killing stragglers
        # Log lines a test provoked on purpose (and checked): not problems.
        self.expected_problems: list[str] = []

    # -- configuration --

    def account_block(
        self,
        name: str = "acct",
        extra: str = "",
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
    ) -> str:
        return account_config(
            self.provider.auth_uri, self.provider.token_uri, name, extra, client_id, client_secret
        )

    def write_config(
        self, accounts: str | None = None, globals_: str = "", https: bool = False
    ) -> None:
        listen = '"127.0.0.1:0"' if https else "none"
        self.conf.write_text(
            'http_listen = "127.0.0.1:0";\n'
            f"https_listen = {listen};\n"
            'startup_cmd = "touch ready";\n'
            f"{globals_}\n"
            f"{accounts if accounts is not None else self.account_block()}"
        )
        # It holds a client secret: private, as the README asks (else the server warns).
        self.conf.chmod(0o600)

    # -- lifecycle --

    def start(self, *extra: str, timeout: float = 10.0) -> None:
        """`pizauth server -d`, returning once startup_cmd has run."""
        if not self.conf.exists():
            self.write_config()
        ready = self.tmp / "ready"
        if ready.exists():
            ready.unlink()
        self._keep_log()
        with open(self.tmp / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                [PIZAUTH, "server", "-d", "-c", str(self.conf), *extra],
                env=self.env,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.runs += 1
        self.parent_pid = self.proc.pid
        self._remember(self.proc.pid)
        wait_for(
            lambda: ready.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout,
            "server start",
            self.log,
        )
        if self.proc.poll() is not None:
            raise HarnessError(f"pizauth server exited ({self.proc.returncode}):\n{self.log()}")
        self.roles()

    def _keep_log(self) -> None:
        log = self.tmp / "server.log"
        if log.exists():
            log.rename(self.tmp / f"server.log.{self.runs}")

    def _remember(self, pid: int) -> None:
        if pid not in self._known:
            self._known[pid] = start_time(pid)

    def stop(self) -> None:
        """Shut down by request, then kill (by pid) whatever of this server is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.roles()
            try:
                sock_request(self.sock, b"shutdown:", timeout=10)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        for pid, started in self._known.items():
            while started is not None and start_time(pid) == started:
                if time.monotonic() > deadline:
                    try:
                        os.kill(pid, signal.SIGKILL)  # a straggler of this server
                    except OSError:
                        pass
                    break
                time.sleep(0.02)
        self._known.clear()
        self.proc = None

    def log(self) -> str:
        """This run's log (the server's stderr)."""
        path = self.tmp / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_problems(self) -> list[str]:
        """Internal errors, tracebacks and seccomp kills logged by any run of this server,
        but for the lines a test provoked on purpose (`expected_problems`)."""
        return [
            line
            for path in sorted(self.tmp.glob("server.log*"))
            for line in log_problems(path.read_text(errors="replace"))
            if not any(expected in line for expected in self.expected_problems)
        ]

    # -- processes --

    def roles(self) -> dict[str, int]:
        """{"parent": pid, "command": pid, "network": pid}, as many as are running."""
        if self.parent_pid is None:
            return {}
        pids = {"parent": self.parent_pid}
        for child in children_of(self.parent_pid):
            self._remember(child)
            name = title(child).removeprefix("pizauth: ")
            if name in ("command", "network"):
                pids[name] = child
        return pids

    def pids(self) -> list[int]:
        """The server's processes: the parent and all its children."""
        assert self.parent_pid is not None
        children = children_of(self.parent_pid)
        for child in children:
            self._remember(child)
        return [self.parent_pid, *children]

    # -- the command line --

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [PIZAUTH, *args],
            env=self.env,
            cwd=self.tmp,
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def show(self, account: str = "acct", *flags: str) -> subprocess.CompletedProcess[bytes]:
        return self.run("show", *flags, account)

    def _token(self, account: str = "acct") -> str | None:
        """What `pizauth show` prints, or None if it fails."""
        result = self.show(account)
        return result.stdout.decode()[:-1] if result.returncode == 0 else None

    def auth_url(self, account: str = "acct") -> str:
        result = self.show(account)
        stderr = result.stderr.decode()
        if result.returncode != 1 or not stderr.startswith(URL_PREFIX):
            raise HarnessError(f"no login URL from `pizauth show {account}`: {result}")
        # Up to the first space or newline: after a failure a «Last error» line follows.
        return stderr[len(URL_PREFIX) :].split()[0]

    def authorise(self, account: str = "acct") -> str:
        """The whole browser round trip; returns the access token `show` then prints."""
        status, body = follow_login(self, account)
        if status != 200 or b"pizauth processing authentication" not in body:
            raise HarnessError(f"{account}: the redirect listener answered {status}: {body!r}")
        return wait_for(lambda: self._token(account), 15, f"token for {account}", self.log)

    # -- the control socket, without a process per request --

    def request(self, payload: bytes, timeout: float = 10.0) -> bytes:
        return sock_request(self.sock, payload, timeout)

    def token(self, account: str) -> str | None:
        reply = self.request(show_request(account))
        prefix = b"access_token:"
        return reply[len(prefix) :].decode() if reply.startswith(prefix) else None


def start_detached(server: Server, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """`pizauth server` as a user types it (it detaches): what the command printed and its
    exit status. A server that started is checked to answer, then shut down again."""
    env = {k: v for k, v in server.env.items() if k != "JOURNAL_STREAM"}
    result = subprocess.run(
        [PIZAUTH, "server", "-c", str(server.conf)],
        env=env,
        cwd=server.tmp,
        capture_output=True,
        timeout=timeout,
    )
    if result.returncode == 0:
        assert server.run("status").returncode == 0  # up, and answering
        assert server.run("shutdown").returncode == 0
        wait_for(lambda: not os.path.exists(server.sock), 10, "the server to go")
    return result
