"""System tests for the token lifecycle: hooks, refresh outcomes, reload, daemon mode.

Every test drives the installed `pizauth` against the local provider (examples/provider.py).
Hooks write what they see to files in the test's directory; the tests wait for those files
rather than sleeping. Intervals in the configurations are short (1 s) so the file runs quickly;
the hook-timeout test takes the fixed 10 s notify timeout once.
"""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import (
    CLIENT_SECRET,
    PIZAUTH,
    URL_PREFIX,
    Pizauth,
    children_of,
    http_get,
    title,
    wait_for,
)
from server_harness import follow_login

INVALID_GRANT = json.dumps({"error": "invalid_grant", "error_description": "token revoked"})
UNAVAILABLE = json.dumps({"error": "temporarily_unavailable"})
EXPIRED_MESSAGES = (
    b"ERROR - Access token has expired. Refreshing is in progress but has not yet succeeded\n",
    b"ERROR - Access token has expired. Refreshing initiated\n",
)


# -- helpers -----------------------------------------------------------------------------------


def conf_string(text: str) -> str:
    """`text` as a pizauth.conf STRING (only `\\` and `"` need escaping)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def event_cmd(path: Path) -> str:
    return f"echo \"$PIZAUTH_ACCOUNT $PIZAUTH_EVENT\" >> '{path}'"


def error_cmd(path: Path) -> str:
    return f"echo \"$PIZAUTH_ACCOUNT|$PIZAUTH_MSG\" >> '{path}'"


def status(pizauth: Pizauth) -> dict[str, str]:
    result = pizauth.run("status")
    assert result.returncode == 0, result.stderr
    # Each account's state, without the last error that ends a line after a failure
    # (tests/test_errors.py checks that part).
    return {
        name: state.split("; last error ", 1)[0]
        for name, state in (line.split(": ", 1) for line in result.stdout.decode().splitlines())
    }


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait a while to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def daemon_parents(cwd: Path) -> list[int]:
    """Pids of live `pizauth: parent` processes working in `cwd` (each test has its own).

    Not by environment: setting the process title overwrites /proc/PID/environ. Not by the
    socket's SO_PEERCRED either: that names the process that called listen(), which is the
    `pizauth server` that forked the daemon and has exited.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or title(int(entry)) != "pizauth: parent":
            continue
        try:
            where = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if where == str(cwd) and alive(int(entry)):
            found.append(int(entry))
    return found


def socket_path(pizauth: Pizauth) -> Path:
    return Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock"


def new_token(pizauth: Pizauth, old: str, account: str = "acct", timeout: float = 5) -> str:
    return wait_for(
        lambda: (t := pizauth._token(account)) and t != old and t, timeout, "a new token"
    )


# -- 1. auth_notify_cmd -------------------------------------------------------------------------


def test_auth_notify_cmd_environment_and_reminders(pizauth: Pizauth) -> None:
    # The server's own environment must not smuggle in PIZAUTH_* variables of the test runner.
    pizauth.env = {k: v for k, v in pizauth.env.items() if not k.startswith("PIZAUTH_")}
    notified = pizauth.tmp / "notified"
    envs = pizauth.tmp / "envs"
    envs.mkdir()
    cmd = (
        f"echo \"$PIZAUTH_ACCOUNT $(date +%s.%N)\" >> '{notified}'; "
        # Written aside and renamed, so the test never reads a half-written file.
        f"env > '{envs}'/tmp.$$; mv '{envs}'/tmp.$$ '{envs}'/$PIZAUTH_ACCOUNT"
    )
    pizauth.write_config(
        accounts=pizauth.account_block("acct") + pizauth.account_block("other"),
        globals_=f"auth_notify_cmd = {conf_string(cmd)};\nauth_notify_interval = 1s;",
    )
    pizauth.start()
    url = pizauth.auth_url("acct")
    other_url = pizauth.auth_url("other")

    def runs(account: str) -> list[float]:
        return [float(t) for a, t in (x.split() for x in lines(notified)) if a == account]

    # Notified at once, then reminded every second while pending.
    wait_for(lambda: len(runs("acct")) >= 2, 5, "a reminder for acct")
    times = runs("acct")
    assert times[1] - times[0] >= 0.9, times  # the interval is respected, no busy loop

    env = dict(
        line.split("=", 1) for line in (envs / "acct").read_text().splitlines() if "=" in line
    )
    assert env["PIZAUTH_ACCOUNT"] == "acct"
    assert env["PIZAUTH_URL"] == url
    assert sorted(k for k in env if k.startswith("PIZAUTH_")) == ["PIZAUTH_ACCOUNT", "PIZAUTH_URL"]
    assert CLIENT_SECRET not in (envs / "acct").read_text()
    assert "(last notification " in status(pizauth)["acct"]

    token = pizauth.authorise("acct")
    # A reminder for acct started just before the login may still write its line: count
    # acct's once the still-pending account has been reminded since (hooks run one at a time).
    other_before = len(runs("other"))
    wait_for(lambda: len(runs("other")) >= other_before + 1, 5, "a reminder for other")
    after_login = len(runs("acct"))
    # Two more reminders for the still-pending account: time enough for two of acct's.
    wait_for(lambda: len(runs("other")) >= other_before + 3, 10, "reminders for other")
    assert len(runs("acct")) == after_login, "reminded after the account was authorised"

    other_env = (envs / "other").read_text()
    assert f"PIZAUTH_URL={other_url}\n" in other_env
    assert token not in other_env
    assert CLIENT_SECRET not in other_env


# -- 2. token_event_cmd -------------------------------------------------------------------------


def test_token_events_in_order_exactly_once_and_one_at_a_time(pizauth: Pizauth) -> None:
    events = pizauth.tmp / "events"
    # Each run brackets a short sleep: overlapping runs would interleave start/end lines.
    cmd = (
        f"echo \"start $PIZAUTH_ACCOUNT $PIZAUTH_EVENT\" >> '{events}'; sleep 0.3; "
        f"echo \"end $PIZAUTH_ACCOUNT $PIZAUTH_EVENT\" >> '{events}'"
    )
    pizauth.write_config(
        accounts=pizauth.account_block("a") + pizauth.account_block("b"),
        globals_=f"token_event_cmd = {conf_string(cmd)};",
    )
    pizauth.start()
    first_a = pizauth.authorise("a")
    pizauth.authorise("b")
    assert pizauth.run("refresh", "a").returncode == 0
    new_token(pizauth, first_a, "a")
    # Two revokes in quick succession: the second event waits for the first to finish.
    assert pizauth.run("revoke", "a").returncode == 0
    assert pizauth.run("revoke", "b").returncode == 0
    # docs/compatibility.md "Events on revoke": revoking an Empty or a Pending account revokes
    # nothing, so no event.
    assert pizauth.run("revoke", "a").returncode == 0
    pizauth.auth_url("a")
    assert pizauth.run("revoke", "a").returncode == 0
    # A new login, then a refresh answered 400: the token is invalidated.
    pizauth.authorise("a")
    n = len(pizauth.provider.token_requests)
    pizauth.provider.script_token_responses((400, INVALID_GRANT))
    assert pizauth.run("refresh", "a").returncode == 0
    assert pizauth.provider.wait_for_token_requests(n + 1)
    wait_for(lambda: status(pizauth)["a"] == "No access token", 5, "a invalidated")
    # A last event as a sentinel: everything queued before it has run by the time it ends.
    pizauth.authorise("b")
    expected = [
        "a token_new",
        "b token_new",
        "a token_refreshed",
        "a token_revoked",
        "b token_revoked",
        "a token_new",
        "a token_invalidated",
        "b token_new",
    ]
    wait_for(lambda: len(lines(events)) >= 2 * len(expected), 10, "all events")
    assert lines(events) == [f"{half} {e}" for e in expected for half in ("start", "end")]


# -- 3. transient refresh failure, then success ---------------------------------------------------


def test_refresh_503_then_200_refreshes_without_user_action(pizauth: Pizauth) -> None:
    events = pizauth.tmp / "events"
    pizauth.provider.expires_in = 1
    pizauth.write_config(
        accounts=pizauth.account_block(extra="refresh_before_expiry = 0s; refresh_retry = 1s;"),
        globals_=f"token_event_cmd = {conf_string(event_cmd(events))};",
    )
    pizauth.start("-vv")
    first = pizauth.authorise()
    pizauth.provider.expires_in = 3600  # the refreshed token lives long: exactly one refresh
    pizauth.provider.script_token_responses((503, UNAVAILABLE))
    # The refresher tries at expiry (503), then again refresh_retry later (200).
    assert pizauth.provider.wait_for_token_requests(3, timeout=10)
    renewed = new_token(pizauth, first)
    assert pizauth.provider.is_valid_access_token(renewed)
    requests = pizauth.provider.token_requests
    assert [r["grant_type"] for r in requests] == [
        "authorization_code",
        "refresh_token",
        "refresh_token",
    ]
    assert requests[1]["refresh_token"] == requests[2]["refresh_token"]
    assert "INFO - Transitory refresh error for acct: HTTP code 503" in pizauth.log()
    wait_for(lambda: len(lines(events)) >= 2, 5, "events")
    assert lines(events) == ["acct token_new", "acct token_refreshed"]


# -- 4. permanent refresh failure -------------------------------------------------------------


def test_refresh_400_invalidates_and_runs_error_notify_cmd(pizauth: Pizauth) -> None:
    errors = pizauth.tmp / "errors"
    pizauth.write_config(globals_=f"error_notify_cmd = {conf_string(error_cmd(errors))};")
    pizauth.start()
    pizauth.authorise()
    pizauth.provider.script_token_responses((400, INVALID_GRANT))
    assert pizauth.run("refresh", "acct").returncode == 0
    wait_for(lambda: lines(errors), 5, "error notification")
    [line] = lines(errors)
    account, _, message = line.partition("|")
    assert account == "acct"
    assert "acct" in message and "invalid_grant" in message, message
    assert status(pizauth)["acct"] == "No access token"
    assert pizauth.show().stderr.startswith(URL_PREFIX.encode())


# -- 5. hook timeout kills the process group (docs/compatibility.md "Hook timeouts") ----------


def test_hook_past_timeout_is_killed_with_its_children(pizauth: Pizauth) -> None:
    shell_pid = pizauth.tmp / "shell.pid"
    grandchild_pid = pizauth.tmp / "grandchild.pid"
    events = pizauth.tmp / "events"
    cmd = (
        'if [ "$PIZAUTH_EVENT" = token_new ]; then '
        f"echo $$ > '{shell_pid}.tmp'; mv '{shell_pid}.tmp' '{shell_pid}'; "
        f"sleep 300 & echo $! > '{grandchild_pid}.tmp'; "
        f"mv '{grandchild_pid}.tmp' '{grandchild_pid}'; sleep 300; "
        f"else {event_cmd(events)}; fi"
    )
    pizauth.write_config(globals_=f"token_event_cmd = {conf_string(cmd)};")
    pizauth.start("-v")
    pizauth.authorise()
    wait_for(lambda: shell_pid.exists() and grandchild_pid.exists(), 5, "hook started")
    pids = [int(shell_pid.read_text()), int(grandchild_pid.read_text())]
    assert all(alive(p) for p in pids)
    # When the hook wrote its pid (the test may see it much later under load).
    started = shell_pid.stat().st_mtime
    try:
        wait_for(lambda: not any(alive(p) for p in pids), 20, "hook and grandchild killed")
    finally:
        for pid in pids:  # never leave a `sleep 300` behind, whatever the outcome
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert time.time() - started > 5  # killed by the 10 s timeout, not for another reason
    wait_for(lambda: "exceeded timeout" in pizauth.log(), 5, "timeout logged")
    assert f"ERROR - '{cmd}' exceeded timeout\n" in pizauth.log()
    # The event queue goes on after a timeout.
    assert pizauth.run("revoke", "acct").returncode == 0
    wait_for(lambda: lines(events), 5, "next event")
    assert lines(events) == ["acct token_revoked"]


# -- 6. transient_error_if_cmd ------------------------------------------------------------------


def give_verdict(tmp: Path, consultation: int, exit_status: str) -> None:
    """Written aside and renamed: the waiting hook never reads a half-written verdict."""
    (tmp / "verdict.tmp").write_text(exit_status + "\n")
    (tmp / "verdict.tmp").rename(tmp / f"verdict.{consultation}")


def test_transient_error_if_cmd_every_sixth_failure(pizauth: Pizauth) -> None:
    consulted = pizauth.tmp / "consulted"
    events = pizauth.tmp / "events"
    # The hook says it was consulted, then waits for the verdict the test writes for that
    # consultation (verdict.1, verdict.2): while it waits, the server retries nothing, so
    # the test counts the requests made before the consultation however slow it is.
    arbiter = (
        f"echo \"$PIZAUTH_ACCOUNT\" >> '{consulted}'; n=$(wc -l < '{consulted}'); "
        f"v='{pizauth.tmp}'/verdict.$n; while [ ! -e \"$v\" ]; do sleep 0.02; done; "
        'exit $(cat "$v")'
    )
    pizauth.write_config(
        accounts=pizauth.account_block(extra="refresh_retry = 1s;"),
        globals_=f"transient_error_if_cmd = {conf_string(arbiter)};\n"
        f"token_event_cmd = {conf_string(event_cmd(events))};",
    )
    pizauth.start()
    token = pizauth.authorise()
    pizauth.provider.script_token_responses(*[(503, UNAVAILABLE)] * 12)
    assert pizauth.run("refresh", "acct").returncode == 0

    # Consulted after the 6th consecutive failure (1 code grant + 6 refreshes), not before.
    wait_for(lambda: lines(consulted), 15, "first consultation")
    assert lines(consulted) == ["acct"]
    assert len(pizauth.provider.token_requests) == 7
    give_verdict(pizauth.tmp, 1, "0")
    # Exit 0: the failures really are transient, the token is kept.
    wait_for(lambda: len(pizauth.provider.token_requests) > 7, 15, "the next retry")
    assert pizauth._token("acct") == token
    assert status(pizauth)["acct"].startswith("Active access token")

    # The count goes on (no success in between): consulted again at the 12th; exit 1 drops it.
    wait_for(lambda: len(lines(consulted)) == 2, 15, "second consultation")
    assert len(pizauth.provider.token_requests) == 13
    give_verdict(pizauth.tmp, 2, "1")
    wait_for(lambda: status(pizauth)["acct"] == "No access token", 5, "token invalidated")
    wait_for(lambda: len(lines(events)) >= 2, 5, "events")
    assert lines(events) == ["acct token_new", "acct token_invalidated"]
    assert f"ERROR - Permanent refresh error for acct: '{arbiter}' returned 1\n" in pizauth.log()


# -- 7. reload --------------------------------------------------------------------------------


def test_reload_keeps_or_drops_tokens_and_applies_new_timings(pizauth: Pizauth) -> None:
    events = pizauth.tmp / "events"
    event_global = f"token_event_cmd = {conf_string(event_cmd(events))};\n"
    pizauth.write_config(
        accounts="".join(pizauth.account_block(n) for n in ("a", "b", "c")),
        globals_=event_global,
    )
    pizauth.start()
    token_a = pizauth.authorise("a")
    pizauth.authorise("b")
    pizauth.authorise("c")
    wait_for(lambda: len(lines(events)) >= 3, 5, "token_new events")
    # New globals and timings for a (its token's refresh time is now in the past: refresh at
    # expiry - 3599 s); a security field changed for b; c removed; d added.
    pizauth.provider.expires_in = 7200  # so the refreshed token is not due again at once
    pizauth.write_config(
        accounts=pizauth.account_block("a", "refresh_before_expiry = 3599s; refresh_retry = 2s;")
        + pizauth.account_block("b", 'auth_uri_fields = {"prompt": "consent"};')
        + pizauth.account_block("d"),
        globals_=event_global
        + "auth_notify_interval = 7m;\nrefresh_retry = 3s;\nrefresh_at_least = 2h;\n"
        + 'error_notify_cmd = "true";',
    )
    result = pizauth.run("reload")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    states = status(pizauth)
    assert sorted(states) == ["a", "b", "d"]
    assert states["b"] == "No access token"
    assert states["d"] == "No access token"
    assert pizauth.run("show", "c").stderr == b"ERROR - No account 'c'\n"
    # a kept its token, and the new timing took effect without any other trigger.
    assert pizauth.provider.wait_for_token_requests(4)
    assert pizauth.provider.token_requests[3]["grant_type"] == "refresh_token"
    new_token(pizauth, token_a, "a")
    assert pizauth.run("revoke", "a").returncode == 0  # sentinel event
    wait_for(lambda: lines(events)[-1:] == ["a token_revoked"], 5, "sentinel event")
    after_reload = lines(events)[3:]
    # The two drops are emitted by the reload itself, before a's refresh.
    assert sorted(after_reload[:2]) == ["b token_invalidated", "c token_invalidated"]
    assert after_reload[2:] == ["a token_refreshed", "a token_revoked"]


def test_broken_reload_changes_nothing_and_sighup_reloads(pizauth: Pizauth) -> None:
    pizauth.start("-v")
    token = pizauth.authorise()
    good = pizauth.conf.read_text()
    broken = (
        good + 'account "new" {\n  auth_uri = "http://a.com";\n  token_uri = "http://a.com";\n}\n'
    )
    pizauth.conf.write_text(broken)
    line = broken.count("\n", 0, broken.index('account "new"')) + 1
    result = pizauth.run("reload")
    assert result.returncode == 1
    expected = (
        f'ERROR - {pizauth.conf}: Line {line}, column 1:\n  account "new" {{\n'
        "client_id not specified\n"
    )
    assert result.stderr == expected.encode()
    assert list(status(pizauth)) == ["acct"]  # "new" was not added
    assert pizauth._token("acct") == token

    # SIGHUP reloads (docs/compatibility.md "Signals") rather than killing the server.
    pizauth.conf.write_text(good + pizauth.account_block("new"))
    pizauth.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "new" in status(pizauth), 5, "account added by SIGHUP")
    assert status(pizauth)["new"] == "No access token"
    assert pizauth._token("acct") == token
    # A broken config on SIGHUP is logged and changes nothing either.
    pizauth.conf.write_text(broken.replace('account "new"', 'account "newer"'))
    pizauth.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "client_id not specified" in pizauth.log(), 5, "reload error logged")
    assert "ERROR - " in pizauth.log()
    assert pizauth.proc.poll() is None
    assert sorted(status(pizauth)) == ["acct", "new"]
    assert pizauth._token("acct") == token


# -- 8. daemon mode ---------------------------------------------------------------------------


@pytest.fixture
def daemon_cleanup(pizauth: Pizauth):
    """Kill whatever daemon a test leaves behind (found by its working directory)."""
    yield
    for pid in daemon_parents(pizauth.tmp):
        for p in [pid, *children_of(pid)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.usefixtures("daemon_cleanup")
def test_daemon_serves_when_server_returns_and_sigterm_cleans_up(pizauth: Pizauth) -> None:
    pizauth.write_config()
    result = pizauth.run("server", "-c", str(pizauth.conf))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    # No waiting: the daemon answers as soon as `pizauth server` has returned.
    assert pizauth.run("status").stdout == b"acct: No access token\n"
    [pid] = daemon_parents(pizauth.tmp)  # found by its cwd: the daemon keeps the caller's
    assert os.getsid(pid) == pid  # detached into its own session
    for fd in (0, 1):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    # Without syslog (or the journal), stderr is the pipe the errors are kept from.
    stderr = os.readlink(f"/proc/{pid}/fd/2")
    assert stderr == "/dev/null" if os.path.exists("/dev/log") else stderr.startswith("pipe:")
    wait_for((pizauth.tmp / "ready").exists, 5, "startup_cmd in the server's cwd")
    # `ready` exists once `touch` has run; the startup_cmd's shell may still be a child of
    # the parent for a while under load. Then only the two children are left.
    wait_for(
        lambda: (
            sorted(title(c) for c in children_of(pid)) == ["pizauth: command", "pizauth: network"]
        ),
        10,
        "the command and network children alone",
        lambda: str([title(c) for c in children_of(pid)]),
    )
    children = children_of(pid)
    token = pizauth.authorise()
    assert pizauth.provider.is_valid_access_token(token)

    second = pizauth.run("server", "-c", str(pizauth.conf))
    assert (second.returncode, second.stderr) == (1, b"pizauth authenticator already running\n")
    assert daemon_parents(pizauth.tmp) == [pid]

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not any(alive(p) for p in [pid, *children]), 5, "daemon gone")
    assert not socket_path(pizauth).exists()
    assert pizauth.run("status").stderr == (
        b"ERROR - pizauth authenticator not running or not responding (socket: %s)\n"
        % pizauth.sock.encode()
    )


@pytest.mark.usefixtures("daemon_cleanup")
def test_daemon_reports_taken_https_port_and_leaves_nothing(pizauth: Pizauth) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    pizauth.conf.write_text(
        f'http_listen = "127.0.0.1:0";\nhttps_listen = "127.0.0.1:{port}";\n'
        + pizauth.account_block()
    )
    try:
        result = pizauth.run("server", "-c", str(pizauth.conf))
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.startswith(f"Can't bind https_listen to '127.0.0.1:{port}'".encode())
    assert result.stderr.endswith(b"\n") and result.stderr.count(b"\n") == 1
    assert daemon_parents(pizauth.tmp) == []
    assert not socket_path(pizauth).exists()


# -- 9. token endpoint leniency and error bodies (docs/compatibility.md) ----------------------


def rfc2822(text: str) -> float:
    return email.utils.parsedate_to_datetime(text).timestamp()


def test_missing_expires_in_gives_a_usable_token(pizauth: Pizauth) -> None:
    pizauth.provider.expires_in = None
    pizauth.write_config(accounts=pizauth.account_block(extra="refresh_at_least = 20m;"))
    pizauth.start()
    token = pizauth.authorise()
    assert pizauth.provider.is_valid_access_token(token)
    state = status(pizauth)["acct"]
    assert state.startswith("Active access token (obtained "), state
    obtained, expires = (
        state.removeprefix("Active access token (obtained ").rstrip(")").split("; expires ")
    )
    # docs/compatibility.md "Optional expires_in": without expires_in the token counts as good for
    # refresh_at_least.
    assert abs(rfc2822(expires) - rfc2822(obtained) - 1200) <= 1
    # A refresh answered without expires_in does not invalidate the token either.
    assert pizauth.run("refresh", "acct").returncode == 0
    assert pizauth.provider.wait_for_token_requests(2)
    renewed = new_token(pizauth, token)
    assert pizauth.provider.is_valid_access_token(renewed)


def test_lowercase_bearer_is_accepted(pizauth: Pizauth) -> None:
    pizauth.provider.token_type = "bearer"
    pizauth.start()
    token = pizauth.authorise()
    assert pizauth.provider.is_valid_access_token(token)
    assert pizauth.run("refresh", "acct").returncode == 0
    assert pizauth.provider.is_valid_access_token(new_token(pizauth, token))
    assert status(pizauth)["acct"].startswith("Active access token")


def test_code_exchange_error_description_reaches_error_notify_cmd(pizauth: Pizauth) -> None:
    errors = pizauth.tmp / "errors"
    pizauth.write_config(globals_=f"error_notify_cmd = {conf_string(error_cmd(errors))};")
    pizauth.start()
    description = "The authorization code has expired (test 4711)"
    pizauth.provider.script_token_responses(
        (400, json.dumps({"error": "invalid_grant", "error_description": description}))
    )
    status_code, body = follow_login(pizauth)
    assert status_code == 200, body
    wait_for(lambda: lines(errors), 5, "error notification")
    [line] = lines(errors)
    assert line.startswith("acct|Authentication for acct failed: "), line
    assert description in line
    assert "invalid_grant" in line
    assert len(pizauth.provider.token_requests) == 1  # a 400 is not retried
    assert status(pizauth)["acct"] == "No access token"


# -- 10. tokens without refresh token, show on an expired token (docs/compatibility.md) -------


def test_token_without_refresh_token_is_kept_until_it_expires(pizauth: Pizauth) -> None:
    events = pizauth.tmp / "events"
    pizauth.provider.issue_refresh_tokens = False
    pizauth.provider.expires_in = 2
    # Default refresh_before_expiry (90 s) is longer than the token's life.
    pizauth.write_config(globals_=f"token_event_cmd = {conf_string(event_cmd(events))};")
    pizauth.start()
    token = pizauth.authorise()
    # Nothing to refresh with: `refresh` must not throw the still-valid token away.
    assert pizauth.run("refresh", "acct").returncode == 0
    assert pizauth._token("acct") == token
    result = wait_for(
        lambda: (r := pizauth.show()).returncode != 0 and r, 10, "token given up at expiry"
    )
    # Dropped only once the provider no longer accepts it either.
    assert not pizauth.provider.is_valid_access_token(token)
    assert result.stderr.startswith(URL_PREFIX.encode()), result.stderr
    assert [r["grant_type"] for r in pizauth.provider.token_requests] == ["authorization_code"]
    wait_for(lambda: len(lines(events)) >= 2, 5, "events")
    assert lines(events) == ["acct token_new", "acct token_invalidated"]


def test_show_on_expired_token_does_not_hammer_the_provider(pizauth: Pizauth) -> None:
    pizauth.provider.expires_in = 1
    pizauth.write_config(
        accounts=pizauth.account_block(extra="refresh_before_expiry = 0s; refresh_retry = 30s;")
    )
    pizauth.start()
    pizauth.authorise()
    pizauth.provider.script_token_responses(*[(503, UNAVAILABLE)] * 20)
    assert pizauth.provider.wait_for_token_requests(2, timeout=5)  # the scheduled refresh
    wait_for(
        lambda: status(pizauth)["acct"].startswith("Access token expired (last refresh attempt "),
        5,
        "transient failure recorded",
    )
    for _ in range(10):
        result = pizauth.show()
        assert result.returncode == 1
        # After the message, the line that says why the last refresh failed.
        message, last_error = result.stderr.split(b"\n", 1)
        assert message + b"\n" in EXPIRED_MESSAGES, result.stderr
        assert last_error.startswith(b"Last error (") and last_error.endswith(b"\n")
    # docs/compatibility.md "Show on an expired token": the next attempt waits for refresh_retry
    # however often `show` asks.
    assert not pizauth.provider.wait_for_token_requests(3, timeout=0.5)
    assert len(pizauth.provider.token_requests) == 2


# -- 11. duplicate callbacks (docs/compatibility.md "Duplicate callbacks") --------------------


def test_duplicate_callback_exchanges_the_code_once(pizauth: Pizauth) -> None:
    pizauth.start()
    status_code, headers, _ = http_get(pizauth.auth_url())
    assert status_code == 302
    callback = headers["location"]
    barrier = threading.Barrier(4)

    def browser() -> int:
        barrier.wait()
        return http_get(callback)[0]

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: browser(), range(4)))
    assert statuses == [200] * 4
    token = wait_for(lambda: pizauth._token("acct"), 10, "token")
    assert not pizauth.provider.wait_for_token_requests(2, timeout=0.5)
    assert len(pizauth.provider.token_requests) == 1
    assert pizauth.provider.errors == []
    assert pizauth.provider.is_valid_access_token(token)


# -- 12. NOTIFY_SOCKET ------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield path, sock
    sock.close()


def test_notify_socket_receives_ready(pizauth: Pizauth, notify_socket) -> None:
    path, sock = notify_socket
    pizauth.env["NOTIFY_SOCKET"] = str(path)
    pizauth.start()
    assert sock.recv(4096) == b"READY=1"
    assert pizauth.run("status").returncode == 0


def test_notify_socket_ready_after_startup_cmd(pizauth: Pizauth, notify_socket) -> None:
    path, sock = notify_socket
    pizauth.env["NOTIFY_SOCKET"] = str(path)
    # READY=1 once startup_cmd has finished, as pizauth 1.1, e.g. a `pizauth restore` of saved
    # tokens, so that units ordered after pizauth see them.
    pizauth.conf.write_text(
        'http_listen = "127.0.0.1:0";\nhttps_listen = none;\n'
        'startup_cmd = "sleep 0.5; touch ready";\n' + pizauth.account_block()
    )
    ready = pizauth.tmp / "ready"
    server = subprocess.Popen(
        [PIZAUTH, "server", "-d", "-c", str(pizauth.conf)],
        env=pizauth.env,
        cwd=pizauth.tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pizauth.proc = server  # so the fixture shuts it down
    assert sock.recv(4096) == b"READY=1"
    assert ready.exists(), "READY=1 sent before startup_cmd finished"


def test_rust_era_startup_cmd_systemd_notify_fails_without_speaking_for_the_server(
    pizauth: Pizauth, notify_socket
) -> None:
    # docs/compatibility.md "startup_cmd = "systemd-notify --ready"": the server notifies
    # systemd itself; the old hook fails (and says so), and never reaches the socket.
    if shutil.which("systemd-notify") is None and not os.environ.get("CI"):
        pytest.skip("systemd-notify is not installed (.ci/run installs systemd)")
    path, sock = notify_socket
    pizauth.env["NOTIFY_SOCKET"] = str(path)
    pizauth.conf.write_text(
        'http_listen = "127.0.0.1:0";\nhttps_listen = none;\n'
        'startup_cmd = "systemd-notify --ready";\n' + pizauth.account_block()
    )
    pizauth.conf.chmod(0o600)
    with open(pizauth.tmp / "server.log", "wb") as log:
        pizauth.proc = subprocess.Popen(
            [PIZAUTH, "server", "-d", "-c", str(pizauth.conf)],
            env=pizauth.env,
            cwd=pizauth.tmp,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    assert sock.recv(4096) == b"READY=1"
    failed = "ERROR - 'systemd-notify --ready' returned 1"
    wait_for(lambda: failed in pizauth.log(), 10, "the hook's failure", pizauth.log)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):  # the hook has ended and sent nothing
        sock.recv(4096)
    assert pizauth.run("status").returncode == 0


# -- 13. errors without error_notify_cmd (docs/compatibility.md) ------------------------------


def test_authentication_errors_are_logged_without_error_notify_cmd(pizauth: Pizauth) -> None:
    pizauth.start()  # no -v: only error-level messages reach the log
    pizauth.provider.deny_next = 1
    status_code, _ = follow_login(pizauth)
    assert status_code == 400
    wait_for(lambda: "access_denied" in pizauth.log(), 5, "denial logged")
    assert "ERROR - Authentication for acct failed: access_denied\n" in pizauth.log()

    pizauth.provider.script_token_responses((400, INVALID_GRANT))
    assert follow_login(pizauth)[0] == 200
    wait_for(lambda: "HTTP code 400" in pizauth.log(), 5, "exchange failure logged")
    logged = [x for x in pizauth.log().splitlines() if "HTTP code 400" in x]
    assert logged[0].startswith("ERROR - Authentication for acct failed: HTTP code 400"), logged
