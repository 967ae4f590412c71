"""Hooks: what reaches their environment, and that nothing they start outlives them.

A hook here double-forks a sleeper that calls setsid, so that it leaves the hook's
process group and session, and writes its pid; after the hook's timeout, the
server's shutdown or a SIGKILL of the server, the sleeper must be gone.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import wait_for

from pizauth.priv.run import hooks
from pizauth.priv.run.hooks import HookQueue, HookRunner


class Loop:
    """Just enough of the parent's event loop to drive a HookRunner."""

    def __init__(self) -> None:
        self.watched: dict[int, object] = {}
        # The clock the loop's turn reads: deadlines and their enforcement on one clock.
        self.runner = HookRunner(self.watched.__setitem__, self.watched.pop, time.monotonic)

    def turn(self, timeout: float = 0.05) -> None:
        self.runner.enforce_timeouts(time.monotonic())
        ready, _, _ = select.select(list(self.watched), [], [], timeout)
        for fd in ready:
            self.watched[fd]()  # type: ignore[operator]

    def until(self, condition, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            self.turn()


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> Loop:
    monkeypatch.setenv("SHELL", "/bin/sh")
    loop = Loop()
    yield loop
    loop.runner.kill_all()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def escaping_sleeper(pidfile: Path) -> str:
    """A hook that leaves a setsid'd, double-forked sleeper behind and keeps running."""
    return (
        f"( setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
        "exec sleep 300' & ) ; sleep 300"
    )


def sleeper_pid(pidfile: Path) -> int:
    wait_for(pidfile.exists, 10, "the sleeper to start")
    pid = int(pidfile.read_text())
    assert alive(pid)
    return pid


def kill_leftover(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_nul_and_control_characters_in_the_environment_are_replaced(loop, tmp_path) -> None:
    out = tmp_path / "env"
    results: list[str | None] = []
    env = {"PIZAUTH_MSG": "bad\0grant\nline\x1b[31m", "PIZAUTH_ACCOUNT": "a"}
    loop.runner.start(f'printf %s "$PIZAUTH_MSG" > {out}', env, 5, results.append)
    loop.until(lambda: results, what="the hook to end")
    assert results == [None]
    assert out.read_text() == "bad\ufffdgrant\ufffdline\ufffd[31m"


def test_a_command_that_cannot_start_does_not_wedge_the_queue(loop, tmp_path) -> None:
    queue = HookQueue(loop.runner)
    done = tmp_path / "done"
    logged: list[str | None] = []
    hooks_log = hooks.log_failure
    try:
        hooks.log_failure = logged.append  # type: ignore[assignment]
        queue.submit("true\0never", {}, 5)  # subprocess raises ValueError on a NUL
        queue.submit(f"touch {done}", {"PIZAUTH_MSG": "x\0y"}, 5)
    finally:
        hooks.log_failure = hooks_log
    loop.until(done.exists, what="the next command in the queue")
    loop.until(lambda: not queue.busy, what="the queue to empty")
    assert logged and "Couldn't execute" in str(logged[0])


def test_missing_shell_is_reported(loop, monkeypatch) -> None:
    monkeypatch.setenv("SHELL", "/nonexistent/sh")
    results: list[str | None] = []
    loop.runner.start("true", {}, 5, results.append)
    assert results == ["Couldn't execute 'true': No such file or directory"]


def test_exit_status_and_signal_are_reported(loop) -> None:
    results: list[str | None] = []
    loop.runner.start("exit 3", {}, 5, results.append)
    loop.runner.start("kill -9 $$", {}, 5, results.append)
    loop.until(lambda: len(results) == 2, what="both hooks")
    assert sorted(map(str, results)) == [
        "'exit 3' returned 3",
        "'kill -9 $$' returned <Unknown exit code>",
    ]


def test_timeout_kills_what_left_the_session(loop, tmp_path) -> None:
    pidfile = tmp_path / "sleeper"
    results: list[str | None] = []
    loop.runner.start(escaping_sleeper(pidfile), {}, 1.0, results.append)
    pid = 0
    try:
        loop.until(pidfile.exists, what="the sleeper")
        pid = sleeper_pid(pidfile)
        loop.until(lambda: results, what="the timeout")
        assert results == [f"'{escaping_sleeper(pidfile)}' exceeded timeout"]
        wait_for(lambda: not alive(pid), 5, "the sleeper to be killed")
    finally:
        kill_leftover(pid)


def test_shutdown_kills_what_left_the_session(loop, tmp_path) -> None:
    pidfile = tmp_path / "sleeper"
    loop.runner.start(escaping_sleeper(pidfile), {}, None, lambda error: None)
    pid = 0
    try:
        loop.until(pidfile.exists, what="the sleeper")
        pid = sleeper_pid(pidfile)
        loop.runner.kill_all()
        assert loop.runner.running == {}
        wait_for(lambda: not alive(pid), 5, "the sleeper to be killed")
    finally:
        kill_leftover(pid)


SERVER = textwrap.dedent(
    """
    import os, sys, time
    from pizauth.priv.run.hooks import HookRunner
    os.environ["SHELL"] = "/bin/sh"
    runner = HookRunner(lambda fd, cb: None, lambda fd: None)
    runner.start(sys.argv[1], {}, None, lambda error: None)
    print("started", flush=True)
    time.sleep(300)
    """
)


def test_sigkill_of_the_server_kills_its_hooks(tmp_path) -> None:
    pidfile = tmp_path / "sleeper"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, escaping_sleeper(pidfile)], stdout=subprocess.PIPE
    )
    pid = 0
    try:
        assert server.stdout is not None and server.stdout.readline() == b"started\n"
        pid = sleeper_pid(pidfile)
        server.kill()
        server.wait()
        wait_for(lambda: not alive(pid), 5, "the sleeper to die with the server")
    finally:
        server.kill()
        server.wait()
        kill_leftover(pid)
