"""The lean `pizauth show` (pizauth.fastshow, run by bin/pizauth) says and does exactly
what the full command line (pizauth.cli.main) does, in every case: each test runs both
against the same server and compares stdout, stderr and the exit status. It also checks
which path ran, what it imported, and that it sends its request once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PIZAUTH, Pizauth, wait_for

FULL = "import sys; from pizauth.cli import main; sys.exit(main(sys.argv[1:]))"
# A command line as the OS passes it: str, or bytes for what is not UTF-8.
Args = list[str | bytes]


def run_fast(args: Args, env: dict[str, str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PIZAUTH, *args], env=env, cwd=cwd, capture_output=True, timeout=30, **kw)


def run_full(args: Args, env: dict[str, str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    # argv[0] is the command's path, as when the launcher runs: the same program name.
    return subprocess.run(
        [sys.executable, "-c", FULL, PIZAUTH, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=30,
        **kw,
    )


def same(args: Args, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run both paths; assert they agree; return the lean path's result."""
    fast = run_fast(args, env, cwd)
    full = run_full(args, env, cwd)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        full.returncode,
        full.stdout,
        full.stderr,
    ), args
    return fast


def imported(args: Args, env: dict[str, str], cwd: Path) -> set[str]:
    """The modules the launcher imports beyond those of a bare `python -S`."""

    def modules(argv: list) -> set[str]:
        r = subprocess.run(
            [sys.executable, "-S", "-X", "importtime", *argv],
            env=env,
            cwd=cwd,
            capture_output=True,
            timeout=30,
        )
        lines = r.stderr.decode(errors="replace").splitlines()
        return {ln.split("|")[-1].strip() for ln in lines if ln.startswith("import time:")}

    return modules([PIZAUTH, *args]) - modules(["-c", "pass"]) - {"imported package"}


@pytest.fixture
def two(pizauth: Pizauth) -> Pizauth:
    """A server with `acct` authorised and `other` not."""
    pizauth.write_config(pizauth.account_block("acct") + pizauth.account_block("other"))
    pizauth.start()
    pizauth.authorise("acct")
    return pizauth


def test_token_is_printed_alike_without_the_full_command_line(two: Pizauth) -> None:
    token = two.token("acct")
    assert token
    for args in (["show", "acct"], ["show", "-u", "acct"]):
        result = same(args, two.env, two.tmp)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{token}\n".encode(), b"")
    # Only the lean path ran: stdlib C modules and four small pizauth modules.
    assert imported(["show", "acct"], two.env, two.tmp) == {
        "_socket",
        "pizauth",
        "pizauth.control",
        "pizauth.fastshow",
        "pizauth.timeouts",
    }


def test_pending_replies_are_reported_alike(two: Pizauth) -> None:
    two.request(b"showtoken:withurl other")  # now pending: both runs see the same state
    with_url = same(["show", "other"], two.env, two.tmp)
    assert with_url.returncode == 1
    assert with_url.stderr.startswith(b"ERROR - Access token unavailable until authorised with")
    without = same(["show", "-u", "other"], two.env, two.tmp)
    assert without.stderr == b"ERROR - Access token unavailable until authorised\n"
    # Reported by the full client's code, from the one reply the lean path received.
    assert "pizauth.cli" in imported(["show", "other"], two.env, two.tmp)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "nosuch"],
        ["show", ""],
        ["show", b"caf\xe9"],  # not UTF-8: goes to the server as these bytes
        ["show", "-"],
    ],
)
def test_error_replies_are_reported_alike(two: Pizauth, args: Args) -> None:
    result = same(args, two.env, two.tmp)
    assert result.returncode == 1 and result.stderr.startswith(b"ERROR - ")


@pytest.mark.parametrize(
    "args",
    [
        ["show"],
        ["show", "acct", "other"],
        ["show", "-x", "acct"],
        ["show", "-u", "-u", "acct"],
        ["show", "-uu", "acct"],
        ["show", "-h"],
        ["show", "--help", "acct"],
        ["show", "--", "acct"],
        ["show", "-v", "acct"],
        ["show", "acct", "-u"],
        ["show", "-c", "x", "acct"],
        ["show", "-u"],
    ],
)
def test_other_command_lines_go_to_the_full_parser(two: Pizauth, args: Args) -> None:
    result = same(args, two.env, two.tmp)
    # Some of these are valid (options after the account, -v): whatever cli says.
    assert result.returncode in (0, 1)


def test_unusual_runtime_directories_are_left_to_the_full_path(
    two: Pizauth, tmp_path: Path
) -> None:
    # No $XDG_RUNTIME_DIR (or an empty one): a directory in $TMPDIR, with its checks. A
    # short one: pytest's tmp_path may be too long a directory for a socket path.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmpdir:
        for value in (None, ""):
            env = {k: v for k, v in two.env.items() if k != "XDG_RUNTIME_DIR"}
            if value is not None:
                env["XDG_RUNTIME_DIR"] = value
            env["TMPDIR"] = tmpdir
            result = same(["show", "acct"], env, two.tmp)
            assert b"not running" in result.stderr
    # A symbolic link where the runtime directory should be: refused.
    link = tmp_path / "link"
    link.symlink_to(two.runtime)
    result = same(["show", "acct"], dict(two.env, XDG_RUNTIME_DIR=str(link)), two.tmp)
    assert result.returncode == 1 and b"symbolic link" in result.stderr
    # A runtime directory that is a file.
    afile = tmp_path / "afile"
    afile.write_text("")
    result = same(["show", "acct"], dict(two.env, XDG_RUNTIME_DIR=str(afile)), two.tmp)
    assert result.returncode == 1 and result.stderr


def test_no_server_is_reported_alike(two: Pizauth) -> None:
    two.stop()
    result = same(["show", "acct"], two.env, two.tmp)
    assert result.stderr == (
        b"ERROR - pizauth authenticator not running or not responding (socket: %s)\n"
        % two.sock.encode()
    )


def test_a_closed_stdout_pipe_is_exit_status_1_alike(two: Pizauth) -> None:
    results = []
    for argv in (
        [PIZAUTH, "show", "acct"],
        [sys.executable, "-c", FULL, PIZAUTH, "show", "acct"],
    ):
        read, write = os.pipe()
        os.close(read)  # the reader has gone: writing the token fails
        try:
            r = subprocess.run(
                argv, stdout=write, stderr=subprocess.PIPE, env=two.env, cwd=two.tmp, timeout=30
            )
        finally:
            os.close(write)
        results.append((r.returncode, r.stderr))
    assert results[0] == results[1] == (1, b"")


# -- against a server that answers anything: every reply, and one request per run -------


class FakeServer:
    """A control socket at the runtime directory of `env` that answers every connection
    with `reply` (None: closes once the request has arrived, without reading it) and
    records the requests."""

    def __init__(self, runtime: Path) -> None:
        (runtime / "pizauth").mkdir(parents=True, mode=0o700)
        self.path = str(runtime / "pizauth" / "pizauth.sock")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.reply: bytes | None = b""
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                if self.reply is None:
                    # Close with the request unread, once it has arrived: closing earlier
                    # would race the client's write (a refused write, not an unanswered
                    # request), and the two runs compared below could meet different ends.
                    conn.recv(1, socket.MSG_PEEK)
                    self.requests.append(b"")
                    continue
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeServer, dict[str, str]]]:
    runtime = tmp_path / "runtime"
    server = FakeServer(runtime)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    yield server, env
    server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"access_token:",
        b"access_token:t\xff\x00k:en",
        b"access_token:" + b"x" * 300_000,
        b"access_tokenx:abc",
        b"pending:",
        b"pending:http://127.0.0.1/a?b=c\xff",
        b"error:No account 'a'",
        b"error:",
        b"garbage",
        b"",
        None,
    ],
)
def test_every_reply_is_reported_alike_after_one_request(
    fake: tuple[FakeServer, dict[str, str]], tmp_path: Path, reply: bytes | None
) -> None:
    server, env = fake
    server.reply = reply
    fast = run_fast(["show", "-u", "a"], env, tmp_path)
    wait_for(lambda: len(server.requests) == 1, 10, "the lean path's request")
    full = run_full(["show", "-u", "a"], env, tmp_path)
    wait_for(lambda: len(server.requests) == 2, 10, "the full path's request")
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        full.returncode,
        full.stdout,
        full.stderr,
    )
    if reply is not None:
        assert server.requests == [b"showtoken:withouturl a"] * 2
    if reply is not None and reply.startswith(b"access_token:"):
        assert (fast.returncode, fast.stdout) == (0, reply[13:] + b"\n")
    else:
        assert fast.returncode == 1 and fast.stderr.startswith(b"ERROR - ")
