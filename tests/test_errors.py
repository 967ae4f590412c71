"""Failures the user can see: each account's last error in `status` and `show`, the
browser page after a failed login, the detached server's log reaching someone, the
reload permission warning, and long account names shortened in messages."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

from conftest import URL_PREFIX, Pizauth, http_get, wait_for
from server_harness import PIZAUTH, has_line

from pizauth.text import MAX_SHOWN

INVALID_CLIENT = json.dumps(
    {"error": "invalid_client", "error_description": "Client authentication failed"}
)
UNAVAILABLE = "<html>Service Unavailable</html>"
# `status` ends an account's line with "; last error <RFC 2822 time>: <text>".
LAST_ERROR = r"; last error \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}: "


def status_line(pizauth: Pizauth, account: str = "acct") -> str:
    result = pizauth.run("status")
    assert result.returncode == 0, result
    found = [
        line for line in result.stdout.decode().splitlines() if line.startswith(f"{account}: ")
    ]
    assert len(found) == 1, result.stdout
    return found[0]


def login_page(pizauth: Pizauth, account: str = "acct") -> tuple[int, str]:
    """Follow a login in the 'browser'; the redirect listener's status and page."""
    status, headers, _ = http_get(pizauth.auth_url(account))
    assert status == 302, status
    status, _, body = http_get(headers["location"])
    return status, body.decode()


def test_failed_exchange_is_shown_in_status_show_and_page(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.provider.script_token_responses((401, INVALID_CLIENT))
    status, page = login_page(pizauth)
    # The page waited for the exchange: it says the login failed and why.
    assert status == 200
    assert "Authentication for acct failed" in page, page
    assert "invalid_client: Client authentication failed" in page, page
    assert "safely close" not in page

    line = status_line(pizauth)
    assert re.fullmatch(
        r"acct: No access token"
        + LAST_ERROR
        + r"HTTP code 401 \(invalid_client: Client authentication failed\)",
        line,
    ), line

    shown = pizauth.show()
    assert shown.returncode == 1 and shown.stdout == b""
    first, second = shown.stderr.decode().splitlines()
    assert first.startswith(URL_PREFIX)
    # A script's way to take the URL (up to the first space or newline) still works.
    url = shown.stderr.decode()[len(URL_PREFIX) :].split()[0]
    assert url.startswith(pizauth.provider.auth_uri)
    assert re.fullmatch(
        r"Last error \(\d\d:\d\d:\d\d\): "
        r"HTTP code 401 \(invalid_client: Client authentication failed\)",
        second,
    ), second
    # Without the URL (-u) the message is as before, then the line.
    without = pizauth.show("acct", "-u").stderr.decode().splitlines()
    assert without[0] == "ERROR - Access token unavailable until authorised"
    assert without[1].startswith("Last error (")

    # A later success clears it; the success page and stdout are as before.
    token = pizauth.authorise()
    assert status_line(pizauth).startswith("acct: Active access token (obtained ")
    assert "last error" not in status_line(pizauth)
    ok = pizauth.show()
    assert ok.returncode == 0 and ok.stdout == token.encode() + b"\n" and ok.stderr == b""


def test_wrong_client_secret_and_callback_error(pizauth: Pizauth) -> None:
    pizauth.write_config(accounts=pizauth.account_block(client_secret="wrong"))
    pizauth.start()
    status, page = login_page(pizauth)
    assert status == 200 and "failed: HTTP code 401 (invalid_client" in page, page
    assert re.search(LAST_ERROR + r"HTTP code 401 \(invalid_client", status_line(pizauth))

    # A callback that comes back with error= is remembered too.
    url = pizauth.auth_url()
    state = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))["state"]
    redirect = re.search(r"redirect_uri=([^&]+)", url)
    assert redirect is not None
    from urllib.parse import unquote

    status, _, body = http_get(
        f"{unquote(redirect.group(1))}?state={state}&error=access_denied"
        "&error_description=The+user+said+no%1b%5b31m"
    )
    assert status == 400 and b"access_denied" in body
    line = status_line(pizauth)
    assert line.endswith(": access_denied: The user said no\ufffd[31m"), line


def test_refresh_failures_are_shown_and_cleared(pizauth: Pizauth) -> None:
    pizauth.provider.expires_in = 1
    pizauth.write_config(
        accounts=pizauth.account_block(extra="refresh_before_expiry = 0s; refresh_retry = 2s;")
    )
    pizauth.start("-vv")
    pizauth.authorise()
    pizauth.provider.expires_in = 3600
    pizauth.provider.script_token_responses((503, UNAVAILABLE))
    # The first refresh gets 503: status says so until the retry succeeds, then not.
    wait_for(lambda: "HTTP code 503" in status_line(pizauth), 10, "the 503 in status")
    assert re.search(
        r"^acct: Access token expired \(last refresh attempt .*\)" + LAST_ERROR + "HTTP code 503",
        status_line(pizauth),
    )
    shown = pizauth.show().stderr.decode().splitlines()
    assert shown[0].startswith("ERROR - Access token has expired.")
    assert re.fullmatch(r"Last error \(\d\d:\d\d:\d\d\): HTTP code 503.*", shown[1]), shown
    wait_for(lambda: "Active access token" in status_line(pizauth), 15, "the retried refresh")
    assert "last error" not in status_line(pizauth)

    # The provider down: a network error, which stays until a refresh succeeds.
    pizauth.provider.expires_in = 1
    assert pizauth.run("refresh", "acct").returncode == 0
    wait_for(lambda: pizauth.provider.wait_for_token_requests(4, 0.1), 10, "a refresh")
    pizauth.provider.stop()
    wait_for(lambda: "last error" in status_line(pizauth), 15, "the network error in status")
    line = status_line(pizauth)
    assert "HTTP code" not in line and line.split(LAST_ERROR[:13])[1], line
    assert re.search(r"(?i)refused|connect", line), line


def detached_env(pizauth: Pizauth, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in pizauth.env.items() if k != "JOURNAL_STREAM"}
    return {**env, **extra}


def start_detached(pizauth: Pizauth, env: dict[str, str], stderr: int | object) -> None:
    """`pizauth server -v` (detached, logging warnings too): returns once the daemon
    serves and startup_cmd has run."""
    ready = pizauth.tmp / "ready"
    result = subprocess.run(
        [PIZAUTH, "server", "-v", "-c", str(pizauth.conf)],
        env=env,
        cwd=pizauth.tmp,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        timeout=30,
    )
    assert result.returncode == 0
    wait_for(ready.exists, 10, "startup_cmd")


def stop_detached(pizauth: Pizauth, env: dict[str, str]) -> None:
    subprocess.run([PIZAUTH, "shutdown"], env=env, timeout=30, capture_output=True)


def bad_http_request(pizauth: Pizauth) -> None:
    """A request the network child refuses (and logs): the log reaches the user."""
    port = json.loads(pizauth.run("info", "-j").stdout)["server_info"]["http_port"]
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as conn:
        conn.sendall(b"NONSENSE\r\n\r\n")
        conn.recv(1024)


def test_detached_without_syslog_keeps_errors_for_status(pizauth: Pizauth) -> None:
    assert not os.path.exists("/dev/log"), "this test is for a machine without syslog"
    env = detached_env(pizauth)
    pizauth.write_config()
    start_detached(pizauth, env, subprocess.DEVNULL)
    try:
        pizauth.provider.script_token_responses((401, INVALID_CLIENT))
        login_page(pizauth)
        # The account's error is on its line, and not repeated below it.
        assert re.search(LAST_ERROR + "HTTP code 401", status_line(pizauth))
        # A child's log line (the network child refusing a request) is kept...
        bad_http_request(pizauth)
        wait_for(lambda: "(log " in pizauth.run("status").stdout.decode(), 10, "the kept log line")
        lines = pizauth.run("status").stdout.decode().splitlines()
        assert lines[0].startswith("acct: No access token; last error")
        assert all(re.match(r"\(log \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\) ", x) for x in lines[1:])
        assert any("WARN - " in x for x in lines[1:]), lines
        assert not any("Authentication for acct" in x for x in lines[1:]), lines
        # ...and so is the parent's own: the warning a reload gives.
        pizauth.conf.chmod(0o644)
        assert pizauth.run("reload").returncode == 0
        status = pizauth.run("status").stdout.decode()
        assert "ERROR - " + str(pizauth.conf) + " holds a client_secret" in status, status
    finally:
        stop_detached(pizauth, env)


def test_status_drops_the_permission_warning_once_it_no_longer_applies(pizauth: Pizauth) -> None:
    assert not os.path.exists("/dev/log"), "this test is for a machine without syslog"
    env = detached_env(pizauth)
    pizauth.write_config()
    pizauth.conf.chmod(0o644)
    start_detached(pizauth, env, subprocess.DEVNULL)
    warning = f"ERROR - {pizauth.conf} holds a client_secret and is readable by others"
    try:
        assert pizauth.run("status").stdout.decode().count(warning) == 1
        # Still true at a reload: said once, not piled up.
        assert pizauth.run("reload").returncode == 0
        assert pizauth.run("status").stdout.decode().count(warning) == 1
        # `chmod 600` and reload, as the warning asks: it goes.
        pizauth.conf.chmod(0o600)
        assert pizauth.run("reload").returncode == 0
        assert pizauth.run("status").stdout.decode() == "acct: No access token\n"
        # And comes back if the file becomes readable again.
        pizauth.conf.chmod(0o640)
        assert pizauth.run("reload").returncode == 0
        assert "(mode 640)" in pizauth.run("status").stdout.decode()
    finally:
        stop_detached(pizauth, env)


def test_journal_stream_gets_the_log(pizauth: Pizauth) -> None:
    log = pizauth.tmp / "journal"
    pizauth.write_config()
    with open(log, "wb") as f:
        st = os.fstat(f.fileno())
        env = detached_env(pizauth, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        start_detached(pizauth, env, f)
    try:
        pizauth.provider.script_token_responses((401, INVALID_CLIENT))
        login_page(pizauth)
        bad_http_request(pizauth)
        wait_for(lambda: "<4>WARN - " in log.read_text(), 10, "the network child's warning")
        text = log.read_text()
        assert "<3>ERROR - Authentication for acct failed: HTTP code 401" in text, text
        # Nothing is kept for status when the log has somewhere to go.
        assert "(log " not in pizauth.run("status").stdout.decode()
    finally:
        stop_detached(pizauth, env)


def test_reload_warns_of_a_readable_secret(pizauth: Pizauth) -> None:
    pizauth.write_config()
    pizauth.conf.chmod(0o600)
    pizauth.start()
    warning = "holds a client_secret and is readable by others (mode 644)"
    pizauth.conf.chmod(0o644)
    assert pizauth.run("reload").returncode == 0
    wait_for(lambda: warning in pizauth.log(), 5, "the warning")
    assert f"ERROR - {pizauth.conf} {warning}: run 'chmod 600 {pizauth.conf}'" in pizauth.log()
    pizauth.conf.chmod(0o600)
    assert pizauth.run("reload").returncode == 0
    assert pizauth.log().count(warning) == 1


def test_long_account_names_are_shortened(pizauth: Pizauth) -> None:
    long = "a" * 300
    errors = pizauth.tmp / "errors"
    pizauth.write_config(
        accounts=pizauth.account_block(long),
        globals_=f'error_notify_cmd = "printf \'%s|%s\\\\n\' \\"$PIZAUTH_ACCOUNT\\" '
        f'\\"$PIZAUTH_MSG\\" >> \'{errors}\'";',
    )
    pizauth.start()
    cut = "a" * MAX_SHOWN + "…"
    missing = pizauth.show("b" * 300)
    assert missing.stderr.decode() == f"ERROR - No account '{'b' * MAX_SHOWN}…'\n"
    pizauth.provider.script_token_responses((401, INVALID_CLIENT))
    _, page = login_page(pizauth, long)
    assert f"Authentication for {cut} failed" in page and long not in page
    wait_for(lambda: has_line(errors), 10, "error_notify_cmd")
    # The message is shortened; the account variable is the name itself.
    assert errors.read_text().startswith(f"{long}|Authentication for {cut} failed: HTTP code 401")
    # Lookups use the whole name.
    assert status_line(pizauth, long).startswith(f"{long}: No access token; last error")
