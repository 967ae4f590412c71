"""What the user sees when something goes wrong, driven through the installed command:
Ctrl-C, help and usage errors, dump to a terminal, restore and config errors,
long account names, and the README's getting-started pieces."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path

import pytest
from conftest import PIZAUTH, ROOT, Pizauth


def run_in_pty(argv: list[str], env: dict[str, str], cwd: Path, until=None, timeout=20.0):
    """Run `argv` as the foreground job of a new terminal; returns (status, output).

    `until(output)` is polled while the command runs; when it is true, Ctrl-C is typed.
    """
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    interrupted = until is None
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process holding the terminal has gone
                chunk = b""
            out += chunk
        if not interrupted and until(out):
            os.write(master, b"\x03")  # the terminal's interrupt character
            interrupted = True
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(master)
        pytest.fail(f"{argv} did not finish; output so far: {out!r}")
    # Whatever the children wrote after the parent ended.
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            chunk = os.read(master, 4096)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    os.close(master)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


# -- Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_stops_a_foreground_server_cleanly(pizauth: Pizauth) -> None:
    pizauth.write_config()
    ready = pizauth.tmp / "ready"
    status, out = run_in_pty(
        [PIZAUTH, "server", "-dvv", "-c", str(pizauth.conf)],
        pizauth.env,
        pizauth.tmp,
        until=lambda out: ready.exists(),
    )
    assert status == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "Error" not in out, out
    assert "pizauth shut down" in out, out  # the parent's orderly shutdown ran
    # Nothing of the server is left: the socket is gone, so a new one can start.
    assert not list((pizauth.tmp / "runtime" / "pizauth").glob("*.sock"))


# -- dump to a terminal ------------------------------------------------------------------


def test_dump_to_a_terminal_refuses(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    status, out = run_in_pty([PIZAUTH, "dump"], pizauth.env, pizauth.tmp)
    assert status == 1
    assert "redirect it to a file" in out and "ERROR - " in out
    assert pizauth.run("dump").stdout  # to a pipe it still works


# -- the demo ------------------------------------------------------------------------------


def test_demo_runs_and_removes_its_directory() -> None:
    import tempfile

    # A short TMPDIR of its own: the control socket's path must fit in sun_path.
    with tempfile.TemporaryDirectory(prefix="pzt") as tmp:
        tmpdir = Path(tmp)
        result = run_demo(tmpdir)
        left = list(tmpdir.iterdir())
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"token valid at the provider: True" in result.stdout
    assert left == []  # no pizauth-demo-* left behind


def run_demo(tmpdir: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env={**os.environ, "TMPDIR": str(tmpdir)},
        capture_output=True,
        timeout=120,
    )
