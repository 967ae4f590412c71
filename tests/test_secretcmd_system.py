"""client_secret_cmd and token_store_key_cmd as a user runs them, with the installed
`pizauth`: nothing they start outlives a shutdown, a SIGKILL of the server or their
timeout, even a process that left their session; a background child that keeps stdout
open does not delay their result; and a failure quotes their first line of stderr."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from conftest import CLIENT_SECRET, Pizauth, http_get, wait_for
from server_harness import gone
from test_store_system import configure, logged_in_store, notified, store_path

from pizauth.timeouts import SECRET_COMMAND, STORE_LAST_KEY


def escaping_sleeper(pidfile: Path) -> str:
    """A command that leaves a setsid'd, double-forked sleeper (out of its process group
    and session) which writes its pid to `pidfile`, and keeps running itself."""
    return (
        f"( setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
        "exec sleep 300' >/dev/null & ); sleep 300"
    )


def sleeper_pid(pidfile: Path, pizauth: Pizauth) -> int:
    wait_for(pidfile.exists, 15, "the command's sleeper to start", pizauth.log)
    pid = int(pidfile.read_text())
    assert not gone(pid)
    return pid


def kill_leftover(pidfile: Path) -> None:
    if pidfile.exists() and not gone(pid := int(pidfile.read_text())):
        os.kill(pid, signal.SIGKILL)


# -- client_secret_cmd -----------------------------------------------------------------------


def with_secret_cmd(pizauth: Pizauth, cmd: str) -> None:
    account = pizauth.account_block().replace(
        f'client_secret = "{CLIENT_SECRET}";', f'client_secret_cmd = "{cmd}";'
    )
    assert "client_secret_cmd" in account
    pizauth.write_config(account, 'error_notify_cmd = "echo $PIZAUTH_MSG >> notified";')


def log_in_meanwhile(pizauth: Pizauth) -> None:
    """A login, as a browser follows it, in the background: the client secret is needed
    for it (whether at its start or at its code exchange), and its command left running."""

    def browse() -> None:
        try:
            status, headers, _ = http_get(pizauth.auth_url())
            http_get(headers["location"])
        except Exception:  # noqa: BLE001 - the server may be stopped under it
            pass

    threading.Thread(target=browse, daemon=True).start()


def kill_parent(pizauth: Pizauth) -> None:
    assert pizauth.parent_pid is not None
    os.kill(pizauth.parent_pid, signal.SIGKILL)
    wait_for(lambda: gone(pizauth.parent_pid), 5, "the parent to die")  # type: ignore[arg-type]


def test_shutdown_kills_what_the_client_secret_command_started(pizauth: Pizauth) -> None:
    pidfile = pizauth.tmp / "sleeper"
    with_secret_cmd(pizauth, escaping_sleeper(pidfile))
    pizauth.start()
    try:
        log_in_meanwhile(pizauth)
        pid = sleeper_pid(pidfile, pizauth)
        assert pizauth.run("shutdown").returncode == 0
        wait_for(lambda: gone(pid), 5, "the sleeper killed at shutdown")
    finally:
        kill_leftover(pidfile)


def test_sigkill_of_the_server_kills_what_the_client_secret_command_started(
    pizauth: Pizauth,
) -> None:
    pidfile = pizauth.tmp / "sleeper"
    with_secret_cmd(pizauth, escaping_sleeper(pidfile))
    pizauth.start()
    try:
        log_in_meanwhile(pizauth)
        pid = sleeper_pid(pidfile, pizauth)
        kill_parent(pizauth)
        wait_for(lambda: gone(pid), 5, "the sleeper to die with the server")
    finally:
        kill_leftover(pidfile)


def test_a_background_child_holding_stdout_does_not_delay_the_client_secret(
    pizauth: Pizauth,
) -> None:
    pidfile = pizauth.tmp / "child"
    child = f"sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 300'"
    with_secret_cmd(pizauth, f"echo {CLIENT_SECRET}; {child} 2>/dev/null &")
    pizauth.start()
    try:
        # Within the harness's wait for a token (seconds): waiting for the child's end
        # of file would take all of SECRET_COMMAND, and then fail.
        token = pizauth.authorise()
        assert pizauth.provider.is_valid_access_token(token)
        assert pizauth.provider.token_requests[0]["client_secret"] == CLIENT_SECRET
        if pidfile.exists():  # it may have been killed before it wrote its pid
            assert gone(int(pidfile.read_text()))
    finally:
        kill_leftover(pidfile)


def test_an_empty_client_secret_is_reported_with_its_stderr(pizauth: Pizauth) -> None:
    with_secret_cmd(pizauth, "echo 'vault is locked' >&2")
    pizauth.start()
    log_in_meanwhile(pizauth)
    wait_for(lambda: "vault is locked" in notified(pizauth), 20, "error_notify_cmd", pizauth.log)
    assert "client_secret_cmd printed nothing: vault is locked" in notified(pizauth)
    assert pizauth.provider.token_requests == []


# -- token_store_key_cmd ---------------------------------------------------------------------


def key_cmd(pizauth: Pizauth, *runs: str) -> Path:
    """A store key command whose Nth run runs `runs[N]` (the last one for every run after);
    the first run is the one at start. Returns the file that counts the runs."""
    counter = pizauth.tmp / "key-runs"
    arms = "".join(f"{i}) {cmd};; " for i, cmd in enumerate(runs[:-1]))
    configure(
        pizauth,
        key_cmd=f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}; "
        f"case $n in {arms}*) {runs[-1]};; esac",
    )
    return counter


def key_runs(counter: Path) -> int:
    try:
        return int(counter.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def test_shutdown_kills_what_the_store_key_command_started(pizauth: Pizauth) -> None:
    pidfile = pizauth.tmp / "sleeper"
    # At start the key fails (the server starts without it); the first write after the
    # login runs it again, and the run at shutdown, with no key yet, fails at once.
    key_cmd(pizauth, "exit 1", escaping_sleeper(pidfile), "exit 1")
    pizauth.start()
    try:
        pizauth.authorise()  # a token to write: the key command runs
        pid = sleeper_pid(pidfile, pizauth)
        assert pizauth.run("shutdown").returncode == 0
        wait_for(lambda: gone(pid), 5, "the sleeper killed at shutdown")
    finally:
        kill_leftover(pidfile)


def test_sigkill_of_the_server_kills_what_the_store_key_command_started(
    pizauth: Pizauth,
) -> None:
    pidfile = pizauth.tmp / "sleeper"
    key_cmd(pizauth, "exit 1", escaping_sleeper(pidfile))
    pizauth.start()
    try:
        pizauth.authorise()  # a token to write: the key command runs
        pid = sleeper_pid(pidfile, pizauth)
        kill_parent(pizauth)
        wait_for(lambda: gone(pid), 5, "the sleeper to die with the server")
    finally:
        kill_leftover(pidfile)


def test_the_store_key_commands_timeout_kills_what_it_started(pizauth: Pizauth) -> None:
    pidfile = pizauth.tmp / "sleeper"
    # The timeout a user can see come to an end: at shutdown, a change not yet written
    # asks the key command once more (the run for the first write still waits), for
    # STORE_LAST_KEY. The run at start fails at once: the server starts without the key.
    counter = key_cmd(pizauth, "exit 1", "sleep 300", escaping_sleeper(pidfile))
    pizauth.start()
    pizauth.authorise()  # a token to write: the key command's second run
    wait_for(lambda: key_runs(counter) >= 2, 10, "the run for the first write", pizauth.log)
    try:
        started = time.monotonic()
        shutdown = threading.Thread(target=lambda: pizauth.run("shutdown"), daemon=True)
        shutdown.start()
        pid = sleeper_pid(pidfile, pizauth)
        shutdown.join(STORE_LAST_KEY + 20)
        assert time.monotonic() - started >= STORE_LAST_KEY  # it was the timeout
        wait_for(lambda: gone(pid), 5, "the sleeper killed at the timeout")
        assert f"timed out after {STORE_LAST_KEY:g} s" in pizauth.log()
    finally:
        kill_leftover(pidfile)


def test_a_background_child_holding_stdout_does_not_delay_the_start(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth)
    pidfile = pizauth.tmp / "child"
    child = f"sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 300'"
    configure(pizauth, key_cmd=f"cat {pizauth.tmp / 'key'}; {child} 2>/dev/null &")
    started = time.monotonic()
    try:
        # Waiting for the child's end of file held the start for all of SECRET_COMMAND,
        # and then started without the store's tokens.
        pizauth.start(timeout=SECRET_COMMAND / 6)
        assert time.monotonic() - started < SECRET_COMMAND / 6
        assert pizauth._token() is not None  # restored from the store: the key was read
        assert notified(pizauth) == ""
        assert key and store_path(pizauth).exists()
        if pidfile.exists():
            assert gone(int(pidfile.read_text()))
    finally:
        kill_leftover(pidfile)


def test_an_empty_store_key_is_reported_with_its_stderr(pizauth: Pizauth) -> None:
    logged_in_store(pizauth)
    configure(pizauth, key_cmd="echo 'vault is locked' >&2")
    pizauth.start()
    wait_for(lambda: "vault is locked" in notified(pizauth), 5, "a notice", pizauth.log)
    assert "token_store_key_cmd printed nothing: vault is locked" in notified(pizauth)
    assert "token_store_key_cmd printed nothing: vault is locked" in pizauth.log()
