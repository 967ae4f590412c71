"""What the user sees when something goes wrong, driven through the installed command:
Ctrl-C, help and usage errors, dump to a terminal, restore and config errors,
long account names, and the README's getting-started pieces."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PIZAUTH, Pizauth, wait_for
from server_harness import ROOT


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


def test_the_dump_advice_makes_a_file_only_the_user_can_read(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    status, out = run_in_pty([PIZAUTH, "dump"], pizauth.env, pizauth.tmp)
    assert status == 1
    # The example, as a user copies it from the terminal (red: ends before the colour reset).
    found = re.search(r"for example: (.+?)(?:\x1b\[0m)?\r?\n", out)
    assert found, out
    advice = found.group(1)
    # A shell with the usual umask, which leaves a new file readable by everyone.
    bindir = os.path.dirname(PIZAUTH)
    env = dict(pizauth.env, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        ["/bin/sh", "-c", f"umask 022; {advice}"],
        env=env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, b""), advice
    (made,) = [p for p in pizauth.tmp.iterdir() if "dump" in p.name]
    assert made.stat().st_size > 0  # the dump is in it...
    assert made.stat().st_mode & 0o077 == 0, oct(made.stat().st_mode)  # ...for the user alone
    # and a restore takes it back.
    restored = subprocess.run(
        ["/bin/sh", "-c", f"pizauth restore < {made.name}"],
        env=env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    assert (restored.returncode, restored.stderr) == (0, b"")


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


# -- configuration: readable secrets, errors that name the file ------------------------------

SECRET_WARNING = "holds a client_secret and is readable by others (mode 644)"


def start_detached(pizauth: Pizauth):
    """`pizauth server` as a user types it (it detaches); returns what the command printed.
    The daemon is shut down again before returning."""
    env = {k: v for k, v in pizauth.env.items() if k != "JOURNAL_STREAM"}
    result = subprocess.run(
        [PIZAUTH, "server", "-c", str(pizauth.conf)],
        env=env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    if result.returncode == 0:
        assert pizauth.run("shutdown").returncode == 0
        wait_for(lambda: not os.path.exists(pizauth.sock), 10, "the server to go")
    return result


@pytest.mark.parametrize(
    "mode,secret,warned",
    [(0o644, True, True), (0o600, True, False), (0o644, False, False), (0o640, True, False)],
)
def test_readable_config_with_secret_warns_at_start(
    pizauth: Pizauth, mode: int, secret: bool, warned: bool
) -> None:
    block = pizauth.account_block()
    if not secret:
        block = "\n".join(line for line in block.splitlines() if "client_secret" not in line)
    pizauth.write_config(accounts=block)
    pizauth.conf.chmod(mode)
    result = start_detached(pizauth)
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    if mode == 0o640:  # group-readable is also readable by others than the user
        assert "holds a client_secret and is readable by others (mode 640)" in err
        return
    if warned:
        assert err == f"Warning: {pizauth.conf} {SECRET_WARNING}: run 'chmod 600 {pizauth.conf}'\n"
    else:
        assert err == ""


def test_readable_config_warning_reaches_the_foreground_log_once(pizauth: Pizauth) -> None:
    pizauth.write_config()
    pizauth.conf.chmod(0o644)
    pizauth.start()
    assert f"ERROR - {pizauth.conf} {SECRET_WARNING}" in pizauth.log()
    assert pizauth.log().count(SECRET_WARNING) == 1  # not printed a second time


def test_config_errors_name_the_file_and_hint(pizauth: Pizauth) -> None:
    bad = pizauth.tmp / "bad.conf"
    bad.write_text("# my pizauth configuration\n" + pizauth.account_block())
    result = pizauth.run("server", "-c", str(bad))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"{bad}: Parsing error at line 1 column 1. Expected 'account' or a global option, "
        "found '#' (comments start with //)\n"
    )
    bad.write_text('account "x" {\n  client_id = "a;\n  token_uri = "http://b/";\n}\n')
    result = pizauth.run("server", "-d", "-c", str(bad))
    assert result.returncode == 1
    assert result.stderr.decode().startswith(
        f"{bad}: Parsing error at line 2 column 15. A string starts here and runs on to line 3"
    )
    # An error that already names the file does not name it twice.
    result = pizauth.run("server", "-c", str(pizauth.tmp / "missing.conf"))
    assert result.stderr.decode().count("missing.conf") == 1


def test_long_account_name_is_shortened_in_config_errors(pizauth: Pizauth) -> None:
    long = "n" * 5000
    pizauth.write_config(accounts=pizauth.account_block(long, 'redirect_uri = "https://x/";'))
    result = pizauth.run("server", "-c", str(pizauth.conf))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert f"Account {'n' * 64}… has an 'https' redirect" in err and long not in err


def test_info_without_home_or_xdg_config_home(pizauth: Pizauth) -> None:
    import pwd

    result = subprocess.run(
        ["env", "-u", "HOME", "-u", "XDG_CONFIG_HOME", PIZAUTH, "info"],
        env=pizauth.env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0 and result.stderr == b""
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert f"  config file: {home}/.config/pizauth.conf\n" in result.stdout.decode()
