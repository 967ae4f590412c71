"""Every client checks who answers on the control socket before it sends a byte, and says
which socket it tried: driven through the installed `pizauth` command, against a second
local user (uid 65534) listening where the victim's client connects, and against socket
paths that are not what they should be.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PIZAUTH, Pizauth

from pizauth import control

NOBODY = 65534
FORGED = b"access_token:ATTACKER"
NOT_RUNNING = "pizauth authenticator not running or not responding"
# A Unix socket's address has room for 108 bytes on Linux, one of them for the NUL.
LIMIT = 107
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


class Impostor:
    """Another user's process listening on the victim's control socket `path`: it answers
    every connection with a forged token and reports how many bytes each one sent.

    The socket is bound here (as root, so any directory will do) and listened on by a forked
    process that has become uid 65534 first: SO_PEERCRED reports the credentials of the
    process that called listen(). `chown` lists the paths to give to uid 65534 before."""

    def __init__(self, path: str, chown: tuple[str, ...] = ()) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        for p in chown:
            os.chown(p, NOBODY, NOBODY)
        report_r, report_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the impostor
            try:
                os.close(report_r)
                os.close(ready_r)
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                sock.listen(16)
                os.write(ready_w, b"r")
                while True:
                    conn, _ = sock.accept()
                    with conn:
                        conn.settimeout(10)
                        received = 0
                        try:
                            while chunk := conn.recv(65536):
                                received += len(chunk)
                            conn.sendall(FORGED)
                        except OSError:
                            pass
                        os.write(report_w, b"%d\n" % received)
            finally:
                os._exit(0)
        sock.close()
        os.close(report_w)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            assert ready.read(1) == b"r", "the impostor did not start"
        self.pid = pid
        self.reports = report_r

    def received(self) -> list[int]:
        """Stop the impostor; the number of bytes each connection to it sent."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        with os.fdopen(self.reports, "rb") as reports:
            return [int(line) for line in reports.read().split()]


@pytest.fixture
def victim(pizauth: Pizauth) -> Iterator[tuple[Pizauth, bytes]]:
    """A user's pizauth whose server has stopped, and a real dump of its tokens."""
    pizauth.start()
    pizauth.authorise()
    result = pizauth.run("dump")
    assert result.returncode == 0 and result.stdout
    pizauth.stop()
    assert not os.path.lexists(pizauth.sock)
    yield pizauth, result.stdout


def refusal(path: str, problem: str) -> bytes:
    return f"ERROR - Refusing {path}: {problem}\n".encode()


@needs_root
@pytest.mark.parametrize("case", ["directory", "socket file", "listener"])
def test_another_users_socket_gets_nothing_and_is_not_believed(
    victim: tuple[Pizauth, bytes], case: str
) -> None:
    pizauth, dump = victim
    rundir = os.path.dirname(pizauth.sock)
    if case == "directory":
        # The runtime directory and the socket in it are the other user's.
        impostor = Impostor(pizauth.sock, chown=(rundir, pizauth.sock))
        # The runtime directory's check comes first, before any command, as a start-up
        # error (no «ERROR - »).
        expected = f"Refusing {rundir}: it belongs to another user (uid {NOBODY})\n".encode()
    elif case == "socket file":
        # The directory is the victim's, the socket file in it the other user's.
        impostor = Impostor(pizauth.sock, chown=(pizauth.sock,))
        expected = refusal(pizauth.sock, f"it belongs to another user (uid {NOBODY})")
    else:
        # Every file is the victim's; only the process listening is the other user's.
        impostor = Impostor(pizauth.sock)
        expected = refusal(
            pizauth.sock, f"the process listening on it belongs to another user (uid {NOBODY})"
        )
    try:
        runs = [
            pizauth.run("show", "acct"),  # the lean path
            pizauth.run("show", "-u", "acct"),
            pizauth.run("restore", input=dump),
            pizauth.run("status"),
            pizauth.run("shutdown"),
            pizauth.run("refresh", "acct"),
            pizauth.run("revoke", "acct"),
            pizauth.run("reload"),
            pizauth.run("dump"),
        ]
        info = pizauth.run("info")
    finally:
        received = impostor.received()
    for result in runs:
        assert (result.returncode, result.stdout, result.stderr) == (1, b"", expected), result.args
    # Nothing was sent: not the request, not the dump.
    assert sum(received) == 0, received
    if case == "listener":
        # The files passed their checks: each command connected, and sent nothing; a
        # `show` twice, the lean path and then the full one, which looks again to say
        # what it finds.
        assert len(received) == len(runs) + 1 + 2
    else:
        assert received == []
    if case == "directory":
        assert (info.returncode, info.stderr) == (1, expected)
    else:
        # `info` still says what it knows, and shows nothing the impostor says.
        assert (info.returncode, info.stderr) == (0, expected)
        assert info.stdout.decode().endswith("server not running\n")


@pytest.fixture
def other_socket(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A socket of the user's own, outside the runtime directory, that answers every
    connection with a forged token; its path and the requests it received."""
    path = str(tmp_path / "elsewhere.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                requests.append(data)
                conn.sendall(FORGED)

    threading.Thread(target=serve, daemon=True).start()
    yield path, requests
    sock.close()


def test_a_symbolic_link_for_the_socket_is_not_followed(
    pizauth: Pizauth, other_socket: tuple[str, list[bytes]]
) -> None:
    target, requests = other_socket
    os.makedirs(os.path.dirname(pizauth.sock), mode=0o700)
    os.symlink(target, pizauth.sock)
    for args in (["show", "acct"], ["status"], ["restore"]):
        result = pizauth.run(*args, input=b"a dump")
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            b"",
            refusal(pizauth.sock, "it is a symbolic link"),
        )
    assert requests == []


def test_a_file_that_is_not_a_socket_is_named(pizauth: Pizauth) -> None:
    os.makedirs(os.path.dirname(pizauth.sock), mode=0o700)
    Path(pizauth.sock).write_bytes(b"")
    for args in (["show", "acct"], ["status"]):
        result = pizauth.run(*args)
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            b"",
            refusal(pizauth.sock, "it is not a socket"),
        )


@needs_root
def test_the_directory_holding_the_socket_is_checked_too(tmp_path: Path) -> None:
    # pizauth.paths has checked the runtime directory before a client gets here; this
    # check holds when the path is used, and for the lean `show` path, which has not.
    rundir = tmp_path / "pizauth"
    rundir.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(rundir / "pizauth.sock"))
    path = os.fsencode(rundir / "pizauth.sock")
    control.check_socket(path)
    os.chown(rundir, NOBODY, NOBODY)
    with pytest.raises(control.Refused) as e:
        control.check_socket(path)
    assert (e.value.path, e.value.problem) == (
        os.fsencode(rundir),
        f"it belongs to another user (uid {NOBODY})",
    )
    sock.close()


# -- the socket tried, named ---------------------------------------------------------------


def test_a_client_without_xdg_runtime_dir_names_the_socket_it_tried(pizauth: Pizauth) -> None:
    # A cron job has no $XDG_RUNTIME_DIR: it looks in $TMPDIR while the server runs.
    pizauth.start()
    user = pwd.getpwuid(os.getuid()).pw_name
    with tempfile.TemporaryDirectory(dir="/tmp") as tmpdir:
        env = {k: v for k, v in pizauth.env.items() if k != "XDG_RUNTIME_DIR"}
        env["TMPDIR"] = tmpdir
        for args in (["show", "acct"], ["status"]):
            result = subprocess.run(
                [PIZAUTH, *args], env=env, cwd=pizauth.tmp, capture_output=True, timeout=30
            )
            tried = f"{tmpdir}/runtime-{user}/pizauth/pizauth.sock"
            # pizauth 1.1's line stays a prefix, for scripts that match it.
            assert (result.returncode, result.stderr.decode()) == (
                1,
                f"ERROR - {NOT_RUNNING} (socket: {tried})\n",
            )
    # With the variable, the same command finds the server.
    assert pizauth.run("status").returncode == 0


# -- a socket path too long for a Unix socket ----------------------------------------------


def runtime_for(size: int) -> str:
    """A new directory for $XDG_RUNTIME_DIR whose control socket path is `size` bytes."""
    base = tempfile.mkdtemp(dir="/tmp")
    pad = size - len(base) - len("/") - len("/pizauth/pizauth.sock")
    assert pad > 0
    runtime = os.path.join(base, "x" * pad)
    os.mkdir(runtime, 0o700)
    assert len(os.path.join(runtime, "pizauth", "pizauth.sock")) == size
    return runtime


def test_a_socket_path_too_long_is_named_with_the_limit(pizauth: Pizauth) -> None:
    pizauth.write_config()
    runtime = runtime_for(LIMIT + 1)
    try:
        env = dict(pizauth.env, XDG_RUNTIME_DIR=runtime)
        sock = f"{runtime}/pizauth/pizauth.sock"
        message = (
            f"Control socket path too long: {sock} is 108 bytes, a Unix socket's path can "
            "have at most 107; set $XDG_RUNTIME_DIR to a shorter directory\n"
        )

        def run(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [PIZAUTH, *args], env=env, cwd=pizauth.tmp, capture_output=True, timeout=30
            )

        server = run("server", "-d", "-c", str(pizauth.conf))
        assert (server.returncode, server.stderr.decode()) == (1, message)
        assert not os.path.lexists(sock)
        for args in (["show", "acct"], ["status"], ["shutdown"]):
            result = run(*args)
            assert (result.returncode, result.stdout, result.stderr.decode()) == (
                1,
                b"",
                f"ERROR - {message}",
            )
    finally:
        subprocess.run(["rm", "-rf", os.path.dirname(runtime)], check=True)


def test_a_socket_path_at_the_limit_works(pizauth: Pizauth) -> None:
    runtime = runtime_for(LIMIT)
    try:
        pizauth.env["XDG_RUNTIME_DIR"] = runtime
        pizauth.sock = f"{runtime}/pizauth/pizauth.sock"
        pizauth.start()
        assert pizauth.authorise()
        assert pizauth.run("status").returncode == 0
        pizauth.stop()
    finally:
        subprocess.run(["rm", "-rf", os.path.dirname(runtime)], check=True)
