"""Secret commands (client_secret_cmd, token_store_key_cmd): output, errors, timeouts."""

from __future__ import annotations

import gc
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_for
from server_harness import gone

from pizauth import limits
from pizauth.priv.run import secretcmd, usercmd
from pizauth.priv.run.secretcmd import CLIENT_SECRET, STORE_KEY, CommandError, run_blocking
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret

KEY = "k" * 40


def secret_bytes(result: secretcmd.Result) -> bytes:
    assert isinstance(result, Secret), result
    value = bytes(result.view())
    result.wipe()
    return value


def error(result: secretcmd.Result) -> str:
    assert isinstance(result, CommandError), result
    return result.message


def open_fds() -> set[str]:
    gc.collect()  # what earlier tests left for the collector is closed now, not meanwhile
    return set(os.listdir("/proc/self/fd"))


def no_new_fds(before: set[str]) -> bool:
    """Whether nothing is open that was not open at `before`. Not equality: a thread an
    earlier test left in this process (a fake server's) may close one of its own."""
    return open_fds() <= before


# -- output ---------------------------------------------------------------------------------


def test_client_secret_is_the_first_line_less_the_newline() -> None:
    result = run_blocking("printf 's3cret\\nsecond line\\nthird\\n'", CLIENT_SECRET, {})
    assert isinstance(result, Secret)
    assert secret_bytes(result) == b"s3cret"


def test_client_secret_without_a_newline_is_all_of_it() -> None:
    assert secret_bytes(run_blocking("printf 'abc def'", CLIENT_SECRET, {})) == b"abc def"


def test_client_secret_keeps_bytes_that_are_not_utf8() -> None:
    result = run_blocking("printf '\\377\\001x\\n'", CLIENT_SECRET, {})
    assert secret_bytes(result) == b"\xff\x01x"


def test_client_secret_with_a_long_remainder_after_the_first_line() -> None:
    # A `pass show` entry has more lines; they are read and dropped, not an error.
    cmd = "printf 'first\\n'; head -c 50000 /dev/zero"
    assert secret_bytes(run_blocking(cmd, CLIENT_SECRET, {})) == b"first"


def test_client_secret_remainder_is_bounded() -> None:
    cmd = f"printf 'first\\n'; head -c {secretcmd.MAX_DISCARDED + 10} /dev/zero"
    assert "printed more than" in error(run_blocking(cmd, CLIENT_SECRET, {}))


def test_client_secret_at_the_limit_and_over_it() -> None:
    n = limits.MAX_CLIENT_SECRET
    ok = run_blocking(f"head -c {n} /dev/zero | tr '\\0' a; echo", CLIENT_SECRET, {})
    assert secret_bytes(ok) == b"a" * n
    long = run_blocking(f"head -c {n + 1} /dev/zero | tr '\\0' a; echo", CLIENT_SECRET, {})
    assert error(long) == f"client_secret_cmd printed a first line longer than {n} bytes"


def test_an_endless_first_line_is_cut_off_and_its_writer_killed() -> None:
    started = time.monotonic()
    result = run_blocking("yes | tr -d '\\n'", CLIENT_SECRET, {}, timeout=30)
    assert "longer than" in error(result)
    assert time.monotonic() - started < 10


def test_empty_output_and_empty_first_line() -> None:
    assert error(run_blocking("true", CLIENT_SECRET, {})) == "client_secret_cmd printed nothing"
    result = run_blocking("printf '\\nsecond\\n'", CLIENT_SECRET, {})
    assert error(result) == "client_secret_cmd printed nothing"
    assert error(run_blocking("true", STORE_KEY, {})) == "token_store_key_cmd printed nothing"


@pytest.mark.parametrize("output", [CLIENT_SECRET, STORE_KEY], ids=lambda o: o.name)
def test_every_failure_quotes_the_first_line_of_stderr(output: secretcmd.Output) -> None:
    name = output.name
    locked = "echo 'vault is locked' >&2; echo 'second line' >&2"
    assert error(run_blocking(locked, output, {})) == f"{name} printed nothing: vault is locked"
    failed = run_blocking(f"{locked}; exit 2", output, {})
    assert error(failed) == f"{name} exited with status 2: vault is locked"
    slow = run_blocking(f"{locked}; sleep 300", output, {}, timeout=0.5)
    assert error(slow) == f"{name} timed out after 0.5 s: vault is locked"
    flood = run_blocking(f"{locked}; yes", output, {})
    assert error(flood).endswith(" bytes: vault is locked") and "printed" in error(flood)
    if output is STORE_KEY:
        short = run_blocking(f"{locked}; echo short", output, {})
        assert error(short).endswith("at least 32 bytes: vault is locked")


@pytest.mark.parametrize(
    ("cmd", "output"),
    [
        ("echo s3cret; exit 1", STORE_KEY),  # a failure after the output
        ("echo s3cret", STORE_KEY),  # too short
        ("echo s3cret; sleep 300", CLIENT_SECRET),  # the timeout
        ("printf s3cret; yes | tr -d '\\n'", CLIENT_SECRET),  # a first line too long
    ],
    ids=["exit", "short", "timeout", "long"],
)
def test_stdout_is_never_quoted_in_a_failure(cmd: str, output: secretcmd.Output) -> None:
    message = error(run_blocking(f"echo 'why it failed' >&2; {cmd}", output, {}, timeout=1.0))
    assert message.endswith(": why it failed") and "s3cret" not in message


def test_stdin_is_dev_null() -> None:
    # A command that reads stdin gets end of file at once instead of hanging.
    result = run_blocking("cat", CLIENT_SECRET, {}, timeout=10)
    assert error(result) == "client_secret_cmd printed nothing"


def test_store_key_is_all_of_stdout_less_one_trailing_newline() -> None:
    assert secret_bytes(run_blocking(f"echo {KEY}", STORE_KEY, {})) == KEY.encode()
    two = run_blocking(f"printf '{KEY}\\nmore\\n\\n'", STORE_KEY, {})
    assert secret_bytes(two) == f"{KEY}\nmore\n".encode()
    raw = run_blocking(f"printf '{KEY}'", STORE_KEY, {})
    assert secret_bytes(raw) == KEY.encode()


def test_store_key_shorter_than_32_bytes_is_refused() -> None:
    result = run_blocking("echo " + "x" * 31, STORE_KEY, {})
    assert error(result) == (
        "token_store_key_cmd printed 31 bytes: the key must be at least 32 bytes"
    )
    # The newline does not count towards the 32.
    assert secret_bytes(run_blocking("echo " + "x" * 32, STORE_KEY, {})) == b"x" * 32


def test_store_key_is_bounded() -> None:
    n = secretcmd.MAX_KEY
    ok = run_blocking(f"head -c {n} /dev/zero | tr '\\0' k; echo", STORE_KEY, {})
    assert secret_bytes(ok) == b"k" * n
    over = run_blocking(f"head -c {n + 1} /dev/zero | tr '\\0' k", STORE_KEY, {})
    assert error(over) == f"token_store_key_cmd printed more than {n} bytes"
    huge = run_blocking("yes", STORE_KEY, {}, timeout=30)
    assert error(huge) == f"token_store_key_cmd printed more than {n} bytes"


# -- failures ---------------------------------------------------------------------------------


def test_non_zero_exit_names_the_status_and_the_first_stderr_line() -> None:
    cmd = "echo out; echo 'gpg: decryption failed' >&2; echo more >&2; exit 3"
    assert error(run_blocking(cmd, CLIENT_SECRET, {})) == (
        "client_secret_cmd exited with status 3: gpg: decryption failed"
    )
    assert error(run_blocking("exit 2", STORE_KEY, {})) == (
        "token_store_key_cmd exited with status 2"
    )


def test_stderr_line_is_made_safe_and_short() -> None:
    cmd = "printf 'a\\033[31mb\\tc\\r\\n' >&2; exit 1"
    assert error(run_blocking(cmd, CLIENT_SECRET, {})).endswith(": a?[31mb?c")
    long = run_blocking("head -c 100000 /dev/zero | tr '\\0' e >&2; exit 1", CLIENT_SECRET, {})
    message = error(long)
    line = message.split(": ", 1)[1]
    assert len(line) == secretcmd.MAX_STDERR_LINE and line.endswith("...")
    bad = run_blocking("printf '\\377\\376x' >&2; exit 1", CLIENT_SECRET, {})
    assert error(bad).endswith(": \ufffd\ufffdx")


def test_a_secret_printed_before_a_failure_is_not_returned() -> None:
    result = run_blocking("echo s3cret; exit 1", CLIENT_SECRET, {})
    assert "s3cret" not in error(result)


def test_killed_by_a_signal() -> None:
    result = run_blocking("kill -TERM $$", CLIENT_SECRET, {})
    assert error(result) == "client_secret_cmd was killed by signal 15"


def test_timeout_kills_the_process_group_grandchildren_included(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The grandchild keeps stdout open: only killing the group ends it.
    cmd = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait"
    started = time.monotonic()
    result = run_blocking(cmd, CLIENT_SECRET, {}, timeout=1.0)
    assert error(result) == "client_secret_cmd timed out after 1 s"
    assert time.monotonic() - started < 10
    grandchild, shell = (int(p) for p in pids.read_text().split())
    wait_for(lambda: gone(grandchild), 5, "grandchild killed")
    assert gone(shell)


def test_timeout_message_uses_the_default_of_three_minutes() -> None:
    assert secretcmd.TIMEOUT == 180
    runner = secretcmd.SecretCommands(lambda fd, cb: None, lambda fd: None)
    assert runner.timeout == 180


def escaping_sleeper(pidfile: Path) -> str:
    """Shell text that leaves a setsid'd, double-forked sleeper (out of the command's
    group and session) which writes its pid to `pidfile`; stdout goes to /dev/null."""
    return (
        f"( setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
        "exec sleep 300' >/dev/null & )"
    )


def sleeper_pid(pidfile: Path) -> int:
    wait_for(pidfile.exists, 10, "the sleeper to start")
    pid = int(pidfile.read_text())
    assert not gone(pid)
    return pid


def kill_leftover(pidfile: Path) -> None:
    if pidfile.exists() and not gone(pid := int(pidfile.read_text())):
        os.kill(pid, 9)


CHILD = "sh -c 'echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; exec sleep 300'"
# The shell exits once the child runs (has its pid written).
UNTIL_CHILD = "until [ -e {pid} ]; do sleep 0.01; done"


@pytest.mark.parametrize(
    "cmd",
    [
        # A background child that keeps stdout open, in each way a shell can leave one.
        f"printf s3cret; ( {CHILD} & ); {UNTIL_CHILD}",
        f"echo s3cret; {CHILD} 2>/dev/null & {UNTIL_CHILD}",
        f"setsid {CHILD} & {UNTIL_CHILD}; echo s3cret",
    ],
    ids=["subshell", "background", "setsid"],
)
def test_a_background_child_holding_stdout_does_not_delay_the_result(
    tmp_path: Path, cmd: str
) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    try:
        # The default timeout: waiting for the child's end of file would take all of it.
        result = run_blocking(cmd.format(pid=pidfile), CLIENT_SECRET, {})
        elapsed = time.monotonic() - started
        assert secret_bytes(result) == b"s3cret"
        # Well within the timeout: the reaper is given REAPER_GRACE to end the child.
        assert elapsed < usercmd.REAPER_GRACE < secretcmd.TIMEOUT
        assert gone(int(pidfile.read_text()))  # killed when the shell exited
    finally:
        kill_leftover(pidfile)


def test_a_whole_key_written_just_before_the_exit_is_read(tmp_path: Path) -> None:
    n = secretcmd.MAX_KEY
    pidfile = tmp_path / "pid"
    child = f"{CHILD} & {UNTIL_CHILD}".format(pid=pidfile)
    cmd = f"head -c {n} /dev/zero | tr '\\0' k; echo; {child}"
    started = time.monotonic()
    try:
        assert secret_bytes(run_blocking(cmd, STORE_KEY, {})) == b"k" * n
        assert time.monotonic() - started < usercmd.REAPER_GRACE
        assert gone(int(pidfile.read_text()))
    finally:
        kill_leftover(pidfile)


def test_output_is_read_when_the_exit_is_seen_before_it() -> None:
    """The loop may see the exit before stdout's readiness: what is in the pipe is read
    then, all of it, without waiting for more."""
    callbacks: dict[int, Callable[[], None]] = {}
    runner = secretcmd.SecretCommands(callbacks.__setitem__, callbacks.__delitem__)
    results: list[secretcmd.Result] = []
    n = secretcmd.MAX_KEY
    runner.start(f"head -c {n} /dev/zero | tr '\\0' k", STORE_KEY, {}, results.append)
    pidfd = runner.running[0].pidfd
    wait_for(lambda: select.select([pidfd], [], [], 0)[0], 10, "the command's exit")
    callbacks[pidfd]()  # the exit alone
    assert [secret_bytes(r) for r in results] == [b"k" * n]
    assert callbacks == {} and runner.running == []


def test_timeout_kills_what_left_the_session(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    try:
        result = run_blocking(f"{escaping_sleeper(pidfile)}; sleep 300", STORE_KEY, {}, 1.0)
        assert error(result) == "token_store_key_cmd timed out after 1 s"
        pid = int(pidfile.read_text())  # it ran: its pid was written before the timeout
        wait_for(lambda: gone(pid), 5, "the sleeper killed")
    finally:
        kill_leftover(pidfile)


def test_kill_all_kills_what_left_the_session(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    loop = Loop()
    results: list[secretcmd.Result] = []
    try:
        cmd = f"{escaping_sleeper(pidfile)}; sleep 300"
        loop.runner.start(cmd, CLIENT_SECRET, {}, results.append)
        pid = sleeper_pid(pidfile)
        loop.runner.kill_all()
        wait_for(lambda: gone(pid), 5, "the sleeper killed")
        assert results == [] and loop.runner.running == [] and loop.sel.get_map() == {}
    finally:
        kill_leftover(pidfile)


SERVER = textwrap.dedent(
    """
    import sys, time
    from pizauth.priv.run import secretcmd, usercmd
    runner = secretcmd.SecretCommands(lambda fd, cb: None, lambda fd: None)
    runner.start(sys.argv[1], secretcmd.CLIENT_SECRET, {}, print)
    print("started", flush=True)
    time.sleep(300)
    """
)


def test_sigkill_of_the_server_kills_what_left_the_session(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cmd = f"{escaping_sleeper(pidfile)}; sleep 300"
    server = subprocess.Popen([sys.executable, "-c", SERVER, cmd], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"started\n"
        pid = sleeper_pid(pidfile)
        server.kill()
        server.wait()
        wait_for(lambda: gone(pid), 5, "the sleeper to die with the server")
    finally:
        server.kill()
        server.wait()
        kill_leftover(pidfile)


def test_a_reaper_that_does_not_end_when_told_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    loop = Loop(timeout=0.5)
    results: list[secretcmd.Result] = []
    loop.runner.start(f"echo $$ > {pidfile}; exec sleep 300", STORE_KEY, {}, results.append)
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, "the shell's pid")
        os.kill(loop.runner.running[0].proc.pid, signal.SIGSTOP)  # deaf to its SIGTERM
        started = time.monotonic()
        wait_for(lambda: loop.turn() or results, usercmd.REAPER_GRACE + 5, "the result")
        assert time.monotonic() - started >= usercmd.REAPER_GRACE
        assert [error(r) for r in results] == ["token_store_key_cmd timed out after 0.5 s"]
        assert loop.runner.running == [] and loop.sel.get_map() == {}
    finally:
        kill_leftover(pidfile)  # with its reaper killed, nothing else ends the shell


def test_the_secret_never_passes_through_the_reaper(tmp_path: Path) -> None:
    """The reaper holds the pipe's write end as the command's stdout, but reads nothing:
    its own descriptors 1 and 2 are the pipes, and no read end of them."""
    pidfile = tmp_path / "pid"
    loop = Loop()
    results: list[secretcmd.Result] = []
    try:
        loop.runner.start(f"echo $PPID > {pidfile}; sleep 300", CLIENT_SECRET, {}, results.append)
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, "the reaper's pid")
        reaper = int(pidfile.read_text())
        job = loop.runner.running[0]
        assert reaper == job.proc.pid
        assert job.stdout is not None and job.stderr is not None
        read_ends = {os.readlink(f"/proc/self/fd/{fd}") for fd in (job.stdout, job.stderr)}
        fds = {
            fd: os.readlink(f"/proc/{reaper}/fd/{fd}") for fd in os.listdir(f"/proc/{reaper}/fd")
        }
        assert fds["0"] == "/dev/null"
        assert {fds["1"], fds["2"]} == read_ends  # the same pipes...
        for fd in ("1", "2"):  # ...open for writing only
            flags = int(Path(f"/proc/{reaper}/fdinfo/{fd}").read_text().split()[3], 8)
            assert flags & os.O_ACCMODE == os.O_WRONLY
    finally:
        loop.runner.kill_all()
        assert results == []


def test_missing_shell_falls_back_to_bin_sh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHELL", raising=False)
    assert secret_bytes(run_blocking("echo via-sh", CLIENT_SECRET, {})) == b"via-sh"
    monkeypatch.setenv("SHELL", "")
    assert secret_bytes(run_blocking("echo via-sh", CLIENT_SECRET, {})) == b"via-sh"


def test_a_shell_that_cannot_run_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/nonexistent/shell")
    before = open_fds()
    message = error(run_blocking("echo x", CLIENT_SECRET, {}))
    assert message.startswith("client_secret_cmd: cannot run /nonexistent/shell: ")
    assert no_new_fds(before)


# -- environment ------------------------------------------------------------------------------


def test_environment_is_the_servers_plus_pizauth_account(tmp_path: Path) -> None:
    dump = tmp_path / "environ"
    # The shell's environment exactly as it was executed, before it adds PWD and such.
    cmd = f"cat /proc/$$/environ > {dump}; echo ok"
    result = run_blocking(cmd, CLIENT_SECRET, {"PIZAUTH_ACCOUNT": "gm\u00e4il"})
    assert secret_bytes(result) == b"ok"
    entries = dump.read_bytes().split(b"\0")[:-1]
    env = dict(e.split(b"=", 1) for e in entries)
    expected = {**os.environb, b"PIZAUTH_ACCOUNT": "gm\u00e4il".encode()}
    assert env == expected


def test_an_earlier_secret_is_not_in_a_later_commands_environment(tmp_path: Path) -> None:
    first = run_blocking("echo TOPSECRET-7c1e", CLIENT_SECRET, {"PIZAUTH_ACCOUNT": "a"})
    assert isinstance(first, Secret)
    dump = tmp_path / "environ"
    second = run_blocking(f"cat /proc/$$/environ > {dump}; echo x", CLIENT_SECRET, {})
    assert secret_bytes(second) == b"x"
    assert b"TOPSECRET-7c1e" not in dump.read_bytes()
    first.wipe()


# -- the non-blocking API ---------------------------------------------------------------------


class Loop:
    """A minimal stand-in for the parent's selector loop."""

    def __init__(self, timeout: float = secretcmd.TIMEOUT) -> None:
        self.sel = selectors.DefaultSelector()
        self.runner = secretcmd.SecretCommands(
            lambda fd, cb: self.sel.register(fd, selectors.EVENT_READ, cb),
            self.sel.unregister,
            timeout,
        )

    def turn(self, wait: float = 0.1) -> None:
        for key, _ in self.sel.select(wait):
            if key.fd in self.sel.get_map():
                key.data()
        self.runner.enforce_timeouts(instant())


def test_commands_run_side_by_side_without_blocking_the_loop(tmp_path: Path) -> None:
    loop = Loop()
    results: dict[str, secretcmd.Result] = {}
    release = tmp_path / "release"
    slow = f"while [ ! -e {release} ]; do sleep 0.05; done; echo slow-secret"
    loop.runner.start(slow, CLIENT_SECRET, {}, lambda r: results.setdefault("slow", r))
    loop.runner.start("echo fast-secret", CLIENT_SECRET, {}, lambda r: results.setdefault("f", r))
    assert not results  # start() returns before the commands have done anything
    deadline = loop.runner.next_deadline()
    assert deadline is not None and deadline > instant() + 170
    wait_for(lambda: loop.turn() or "f" in results, 10, "fast command")
    assert "slow" not in results
    assert secret_bytes(results["f"]) == b"fast-secret"
    release.touch()
    wait_for(lambda: loop.turn() or "slow" in results, 10, "slow command")
    assert secret_bytes(results["slow"]) == b"slow-secret"
    assert loop.runner.running == [] and loop.runner.next_deadline() is None
    assert loop.sel.get_map() == {}


def test_each_command_reports_once_and_leaves_no_descriptor() -> None:
    before = open_fds()
    loop = Loop(timeout=0.5)
    results: list[secretcmd.Result] = []
    for cmd in ("echo one", "exit 4", "sleep 30", "true"):
        loop.runner.start(cmd, CLIENT_SECRET, {}, results.append)
    wait_for(lambda: loop.turn() or len(results) == 4, 10, "all four")
    for _ in range(5):
        loop.turn(0.01)
    assert len(results) == 4
    messages = sorted(r.message if isinstance(r, CommandError) else "secret" for r in results)
    assert messages == [
        "client_secret_cmd exited with status 4",
        "client_secret_cmd printed nothing",
        "client_secret_cmd timed out after 0.5 s",
        "secret",
    ]
    for r in results:
        if isinstance(r, Secret):
            r.wipe()
    loop.sel.close()
    assert no_new_fds(before)


def test_kill_all_ends_running_commands_without_reporting(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    loop = Loop()
    results: list[secretcmd.Result] = []
    loop.runner.start(f"sleep 300 & echo $! > {pidfile}; wait", CLIENT_SECRET, {}, results.append)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, "pid file")
    loop.runner.kill_all()
    wait_for(lambda: gone(int(pidfile.read_text())), 5, "grandchild killed")
    assert results == [] and loop.runner.running == [] and loop.sel.get_map() == {}


def test_first_line_helper_bounds_and_cleans() -> None:
    data = bytearray(b"one\x07two\r\nthree")
    assert secretcmd.first_line(data, len(data)) == "one?two"
    assert secretcmd.first_line(data, 3) == "one"
    assert secretcmd.first_line(bytearray(), 0) == ""


# -- real key tools (Debian packages age and systemd) -------------------------------------------


def needs(*tools: str) -> None:
    """Skip (outside CI; tests/conftest.py fails a skip under CI, where .ci/run installs
    them) when a tool of a Debian package is not installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (not installed)")


def test_store_key_from_age_opens_what_it_sealed(tmp_path: Path) -> None:
    from pizauth.priv.storage import store

    needs("age", "age-keygen")
    identity, encrypted = tmp_path / "identity.txt", tmp_path / "key.age"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        f"head -c 32 /dev/urandom | base64 | age -r {recipient} -o {encrypted}",
        shell=True,
        check=True,
    )
    cmd = f"age -d -i {identity} {encrypted}"
    key = run_blocking(cmd, STORE_KEY, {})
    assert isinstance(key, Secret) and len(key) == 44
    data = store.seal(bytearray(b"tokens"), key)
    key.wipe()
    again = run_blocking(cmd, STORE_KEY, {})
    assert isinstance(again, Secret)
    assert store.open_sealed(data, again) == b"tokens"
    again.wipe()
    failed = run_blocking(f"age -d -i {identity} {tmp_path / 'missing'}", STORE_KEY, {})
    assert error(failed).startswith("token_store_key_cmd exited with status 1: ")


def test_store_key_from_systemd_creds_without_a_running_systemd(tmp_path: Path) -> None:
    # --with-key=host needs no TPM and no running systemd, but root (the host key
    # in /var/lib/systemd is root's).
    needs("systemd-creds")
    cred = tmp_path / "key.cred"
    subprocess.run(
        "head -c 32 /dev/urandom | base64 | "
        f"systemd-creds encrypt --with-key=host --name=pizauth-key - {cred}",
        shell=True,
        check=True,
        capture_output=True,
    )
    key = run_blocking(f"systemd-creds decrypt --name=pizauth-key {cred} -", STORE_KEY, {})
    assert isinstance(key, Secret) and len(key) == 44
    key.wipe()
    wrong = run_blocking(f"systemd-creds decrypt --name=other {cred} -", STORE_KEY, {})
    assert error(wrong).startswith("token_store_key_cmd exited with status 1")


def test_too_much_output_is_reported_even_when_the_exit_is_seen_first() -> None:
    callbacks: dict[int, Callable[[], None]] = {}
    runner = secretcmd.SecretCommands(callbacks.__setitem__, callbacks.__delitem__)
    results: list[secretcmd.Result] = []
    runner.start("head -c 10000 /dev/zero", STORE_KEY, {}, results.append)
    pidfd = runner.running[0].pidfd
    wait_for(lambda: select.select([pidfd], [], [], 0)[0], 10, "the command's exit")
    callbacks[pidfd]()  # the exit first: the output is read then
    assert [error(r) for r in results] == [
        f"token_store_key_cmd printed more than {secretcmd.MAX_KEY} bytes"
    ]
    assert callbacks == {} and runner.running == []
