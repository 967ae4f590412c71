"""The installed `pizauth` driven as a user would, against the local provider."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import (
    CLIENT_SECRET,
    URL_PREFIX,
    Pizauth,
    as_nobody,
    children_of,
    http_get,
    title,
    wait_for,
)
from server_harness import has_line

from pizauth.priv.children import RESTART_DELAY


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_first_show_gives_url_then_login_gives_token(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.auth_url()
    params = query(url)
    assert url.startswith(pizauth.provider.auth_uri + "?access_type=offline&code_challenge=")
    assert params["code_challenge_method"] == "S256"
    assert params["redirect_uri"].startswith("http://localhost:")
    assert CLIENT_SECRET not in url
    # While pending, show keeps giving the same URL.
    assert pizauth.auth_url() == url

    token = pizauth.authorise()
    assert pizauth.provider.is_valid_access_token(token)
    assert pizauth.provider.errors == []
    grants = [r["grant_type"] for r in pizauth.provider.token_requests]
    assert grants == ["authorization_code"]
    again = pizauth.show()
    assert (again.returncode, again.stdout.decode(), again.stderr) == (0, token + "\n", b"")


def test_token_is_renewed_at_expiry(pizauth: Pizauth) -> None:
    pizauth.provider.expires_in = 1
    pizauth.write_config(accounts=pizauth.account_block(extra="refresh_before_expiry = 0s;"))
    pizauth.start()
    first = pizauth.authorise()
    assert pizauth.provider.wait_for_token_requests(2, timeout=5), "no refresh within 5 s"
    renewed = wait_for(
        lambda: (t := pizauth._token("acct")) and t != first and t, 5, "renewed token"
    )
    assert pizauth.provider.is_valid_access_token(renewed)
    refresh = pizauth.provider.token_requests[1]
    assert refresh["grant_type"] == "refresh_token"
    assert refresh["client_secret"] == CLIENT_SECRET
    assert pizauth.provider.errors == []


def test_show_without_url(pizauth: Pizauth) -> None:
    pizauth.start()
    result = pizauth.show("acct", "-u")
    assert result.returncode == 1
    # No dangling "with URL " when the URL is withheld (docs/compatibility.md "Pending without a
    # URL").
    assert result.stderr == b"ERROR - Access token unavailable until authorised\n"
    # -u still started the request: a later show has a URL.
    assert pizauth.auth_url().startswith(pizauth.provider.auth_uri)


def test_unknown_account(pizauth: Pizauth) -> None:
    pizauth.start()
    for command in (["show", "nope"], ["refresh", "nope"], ["revoke", "nope"]):
        result = pizauth.run(*command)
        assert result.returncode == 1
        assert result.stderr == b"ERROR - No account 'nope'\n"


def test_revoke_forgets_the_token(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    result = pizauth.run("revoke", "acct")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert pizauth.show().stderr.startswith(URL_PREFIX.encode())
    assert b"acct: Access token pending authentication" in pizauth.run("status").stdout


def test_refresh_gets_a_new_token(pizauth: Pizauth) -> None:
    pizauth.start()
    first = pizauth.authorise()
    result = pizauth.run("refresh", "acct")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert pizauth.provider.wait_for_token_requests(2)
    wait_for(lambda: pizauth._token("acct") not in (None, first), 5, "refreshed token")


def test_refresh_of_pending_account_starts_a_new_request(pizauth: Pizauth) -> None:
    pizauth.start()
    old = pizauth.auth_url()
    result = pizauth.run("refresh", "acct")
    assert result.returncode == 1
    new = result.stderr.decode()[len(URL_PREFIX) :].strip()
    assert new != old and query(new)["state"] != query(old)["state"]
    # The old URL's state no longer matches anything.
    status, headers, _ = http_get(old)
    status, _, body = http_get(headers["location"])
    assert status == 200
    assert b"No pending token matches request state" in body


def test_status_lines(pizauth: Pizauth) -> None:
    accounts = "".join(pizauth.account_block(name) for name in ("b one", "a two", "c three"))
    pizauth.write_config(accounts=accounts)
    pizauth.start()
    pizauth.auth_url("b one")
    pizauth.authorise("c three")
    lines = pizauth.run("status").stdout.decode().splitlines()
    assert lines[0] == "a two: No access token"
    assert lines[1].startswith("b one: Access token pending authentication")
    assert lines[2].startswith("c three: Active access token (obtained ")
    assert "; expires " in lines[2]


def test_info_json_keys(pizauth: Pizauth) -> None:
    pizauth.start()
    result = pizauth.run("info", "-j", "-c", str(pizauth.conf))
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert sorted(info) == [
        "cache_directory",
        "config_file",
        "executed_as",
        "info_format_version",
        "pizauth_version",
        "server_info",
        "server_running",
    ]
    assert info["server_running"] is True
    assert info["info_format_version"] == 2
    assert info["server_info"]["https_port"] == "none"
    assert int(info["server_info"]["http_port"]) > 0
    human = pizauth.run("info", "-c", str(pizauth.conf)).stdout.decode()
    assert f"  HTTP port: {info['server_info']['http_port']}\n" in human


def test_already_running_and_not_running(pizauth: Pizauth) -> None:
    result = pizauth.run("status")
    assert result.stderr == (
        b"ERROR - pizauth authenticator not running or not responding (socket: %s)\n"
        % pizauth.sock.encode()
    )
    assert result.returncode == 1
    pizauth.start()
    second = pizauth.run("server", "-d", "-c", str(pizauth.conf))
    assert second.returncode == 1
    assert second.stderr == b"pizauth authenticator already running\n"
    assert pizauth.run("status").returncode == 0  # the first server is unharmed


def test_stale_socket_is_replaced(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.proc.send_signal(signal.SIGKILL)
    pizauth.proc.wait()
    sock = Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock"
    assert sock.exists()
    pizauth.start()
    assert pizauth.run("status").returncode == 0


def test_shutdown_leaves_no_process_and_no_socket(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    pids = pizauth.pids()
    assert len(pids) == 3
    result = pizauth.run("shutdown")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    pizauth.proc.wait(timeout=5)
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 5, "processes gone")
    sock = Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock"
    assert not sock.exists()
    assert pizauth.run("show", "acct").stderr.startswith(b"ERROR - pizauth authenticator not")


def test_sigterm_is_a_clean_shutdown(pizauth: Pizauth) -> None:
    pizauth.start()
    pids = pizauth.pids()
    pizauth.proc.send_signal(signal.SIGTERM)
    assert pizauth.proc.wait(timeout=5) == 0
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 5, "processes gone")
    assert not (Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock").exists()


def test_config_errors_are_clear(pizauth: Pizauth) -> None:
    pizauth.conf.write_text('account "x" {\n  auth_uri = "http://a.com";\n}\n')
    result = pizauth.run("server", "-d", "-c", str(pizauth.conf))
    assert result.returncode == 1
    assert result.stderr == (
        f'{pizauth.conf}: Line 1, column 1:\n  account "x" {{\nclient_id not specified\n'.encode()
    )
    pizauth.conf.write_text('http_listen = "127.0.0.1:0"\n')
    result = pizauth.run("server", "-d", "-c", str(pizauth.conf))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{pizauth.conf}: Parsing error at line 2 column 1.".encode())
    assert b"Traceback" not in result.stderr
    missing = pizauth.run("server", "-d", "-c", str(pizauth.tmp / "missing.conf"))
    assert missing.returncode == 1
    assert missing.stderr.startswith(f'Can\'t read "{pizauth.tmp}/missing.conf": '.encode())


def test_port_in_use_fails_before_detaching(pizauth: Pizauth) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    pizauth.conf.write_text(
        f'http_listen = "127.0.0.1:{port}";\nhttps_listen = none;\n' + pizauth.account_block()
    )
    # Without -d: the invoking command must report the failure itself
    # (docs/compatibility.md "Start-up errors").
    result = pizauth.run("server", "-c", str(pizauth.conf))
    taken.close()
    assert result.returncode == 1
    assert result.stderr.startswith(f"Can't bind http_listen to '127.0.0.1:{port}'".encode())


def test_daemon_mode_returns_once_show_answers(pizauth: Pizauth) -> None:
    pizauth.write_config()
    result = pizauth.run("server", "-c", str(pizauth.conf))
    try:
        assert (result.returncode, result.stderr) == (0, b"")
        # No waiting: the daemon answers the moment `pizauth server` has returned.
        assert pizauth.auth_url().startswith(pizauth.provider.auth_uri)
    finally:
        assert pizauth.run("shutdown").returncode == 0


def test_process_titles_and_secrets_not_in_argv(pizauth: Pizauth) -> None:
    pizauth.start()
    token = pizauth.authorise()
    titles = {}
    for pid in pizauth.pids():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for secret in (token, CLIENT_SECRET):
            assert secret.encode() not in cmdline
            assert secret.encode() not in environ
        titles[pid] = cmdline.rstrip(b"\0").decode()
    assert sorted(titles.values()) == ["pizauth: command", "pizauth: network", "pizauth: parent"]


def test_verbose_log_holds_no_secret(pizauth: Pizauth) -> None:
    pizauth.provider.expires_in = 1
    pizauth.write_config(accounts=pizauth.account_block(extra="refresh_before_expiry = 0s;"))
    pizauth.start("-vvvv")
    pizauth.authorise()
    assert pizauth.provider.wait_for_token_requests(2)
    wait_for(lambda: "starting inner refresh" in pizauth.log(), 5, "refresh logged")
    log = pizauth.log()
    for secret in [CLIENT_SECRET, *pizauth.provider.issued_access_tokens]:
        assert secret not in log
    for request in pizauth.provider.token_requests:
        for key in ("code", "code_verifier", "refresh_token"):
            if key in request:
                assert request[key] not in log


def test_stuck_client_does_not_delay_show(pizauth: Pizauth) -> None:
    pizauth.start()
    token = pizauth.authorise()
    sock_path = str(Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock")
    stuck = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        s.sendall(b"showtoken:withurl ac")  # and never finish the request
        stuck.append(s)
    started = time.monotonic()
    result = pizauth.show()
    elapsed = time.monotonic() - started
    assert result.stdout.decode() == token + "\n"
    assert elapsed < 5, f"show took {elapsed:.1f} s behind stuck clients"
    for s in stuck:
        s.close()


def test_malformed_request_gets_an_answer(pizauth: Pizauth) -> None:
    pizauth.start()
    sock_path = str(Path(pizauth.env["XDG_RUNTIME_DIR"]) / "pizauth" / "pizauth.sock")
    for request, reply in [
        (b"showtoken:", b"error:Syntactically invalid request 'showtoken:'"),
        (b"bogus:x", b"error:Unknown command 'bogus'"),
        (b"status:extra", b"error:Unknown command 'status'"),
        (b"no colon", b"error:Syntactically invalid request 'no colon'"),
    ]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock_path)
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            assert s.makefile("rb").read() == reply
    assert pizauth.run("status").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_other_uid_is_refused(pizauth: Pizauth) -> None:
    # A runtime directory outside pytest's private tmp tree, opened to everyone below,
    # so that only the server's uid check stands in the way.
    base = Path(tempfile.mkdtemp(prefix="pizauth-uid-"))
    pizauth.env["XDG_RUNTIME_DIR"] = str(base)
    pizauth.start("-v")
    rundir = base / "pizauth"
    os.chmod(base, 0o755)
    os.chmod(rundir, 0o755)
    os.chmod(rundir / "pizauth.sock", 0o777)
    kind, answer = as_nobody(str(rundir / "pizauth.sock"), b"status:")
    # Connected, then refused without a word: an empty reply, or, as the server may close
    # before or while the request arrives, a broken pipe or a reset.
    assert (kind, answer) == ("reply", b"") or (
        kind == "error" and answer in (errno.EPIPE, errno.ECONNRESET)
    ), (kind, answer)
    assert "refused a client with uid 65534" in wait_for(
        lambda: "refused" in pizauth.log() and pizauth.log(), 5, "refusal logged"
    )
    assert pizauth.run("status").returncode == 0
    pizauth.stop()
    shutil.rmtree(base)


def exited(pid: int) -> bool:
    """Gone, or a zombie: dead, just not yet reaped (an orphan waits for init to do it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def named_child(pizauth: Pizauth, name: str) -> int | None:
    """The pid of the server process with this title (children and grandchildren)."""
    kids = children_of(pizauth.proc.pid)
    for pid in kids + [g for k in kids for g in children_of(k)]:
        if title(pid) == name:
            return pid
    return None


def age(pid: int) -> float:
    """Seconds since `pid` started."""
    start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def test_crashed_children_are_restarted_and_nothing_is_lost(pizauth: Pizauth) -> None:
    pizauth.write_config(accounts=pizauth.account_block("a") + pizauth.account_block("b"))
    pizauth.start()
    token = pizauth.authorise("a")
    url_b = pizauth.auth_url("b")
    port = urllib.parse.urlsplit(query(url_b)["redirect_uri"]).port
    # The network child's launcher too: without it no token request could be made.
    for name in ("pizauth: network", "pizauth: command", "pizauth: network launcher"):
        pid = named_child(pizauth, name)
        assert pid is not None, name
        # A child that dies in its first second is restarted only after RESTART_DELAY
        # (against crash loops); this one has been serving, so it is restarted at once.
        wait_for(lambda pid=pid: age(pid) > 1.1, 3, f"{name} to have run for a second")
        os.kill(pid, signal.SIGKILL)
        # A new child of that kind serves again. The bound is not a performance figure:
        # a restart is a fresh interpreter, whose start-up a loaded machine stretches.
        bound = RESTART_DELAY + 10
        wait_for(
            lambda pid=pid, name=name: (new := named_child(pizauth, name)) and new != pid,
            bound,
            f"{name} restarted",
        )
        if name == "pizauth: command":
            wait_for(lambda: pizauth.run("status").returncode == 0, bound, "command child serving")
        else:
            wait_for(
                lambda: http_get(f"http://localhost:{port}/favicon.ico")[0] == 404,
                bound,
                "network child serving",
            )
        assert pizauth._token("a") == token
    # The pending authorisation survived and can still be completed on the same port.
    assert pizauth.auth_url("b") == url_b
    status, headers, _ = http_get(url_b)
    status, _, body = http_get(headers["location"])
    assert status == 200
    wait_for(lambda: pizauth._token("b"), 5, "token for b")


def test_children_exit_when_parent_dies(pizauth: Pizauth) -> None:
    pizauth.start()

    def tree() -> list[int]:
        children = children_of(pizauth.proc.pid)
        return children + [g for c in children for g in children_of(c)]

    # The network child is the launcher's child. Wait for exactly these three: a process
    # caught between fork and exec has no title of its own yet.
    expected = ["pizauth: command", "pizauth: network", "pizauth: network launcher"]
    wait_for(lambda: sorted(title(p) for p in tree()) == expected, 5, "the three children")
    everything = tree()
    assert sorted(title(p) for p in everything) == expected
    pizauth.proc.send_signal(signal.SIGKILL)
    pizauth.proc.wait()
    wait_for(lambda: all(exited(p) for p in everything), 10, "children exit")


def test_redirect_error_is_reported(pizauth: Pizauth) -> None:
    notified = pizauth.tmp / "notified"
    pizauth.write_config(
        globals_=f'error_notify_cmd = "echo \\"$PIZAUTH_ACCOUNT|$PIZAUTH_MSG\\" > {notified}";'
    )
    pizauth.start()
    pizauth.provider.deny_next = 1
    status, headers, _ = http_get(pizauth.auth_url())
    status, _, body = http_get(headers["location"])
    assert status == 400
    assert b"access_denied" in body
    assert wait_for(lambda: has_line(notified), 5, "error notification")
    assert notified.read_text() == "acct|Authentication for acct failed: access_denied\n"
    assert b"acct: No access token" in pizauth.run("status").stdout


def test_redirect_listener_check_order(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.auth_url()
    redirect = query(url)["redirect_uri"]
    port = urllib.parse.urlsplit(redirect).port
    base = f"http://localhost:{port}"
    assert http_get(base + "/favicon.ico")[0] == 404
    assert http_get(base + "/?state=nope&code=x")[0] == 200
    state = query(url)["state"]
    # The right state at the wrong path, or via 127.0.0.1 instead of localhost: 404.
    assert http_get(f"{base}/other?state={state}&code=x")[0] == 404
    assert http_get(f"{base}/?state={state}&code=x", host_header=f"127.0.0.1:{port}")[0] == 404
    # No code: 400, and the request stays pending.
    assert http_get(f"{base}/?state={state}")[0] == 400
    assert pizauth.auth_url() == url
    assert pizauth.provider.token_requests == []


def test_reload_keeps_tokens_unless_security_fields_change(pizauth: Pizauth) -> None:
    pizauth.write_config(accounts=pizauth.account_block("a") + pizauth.account_block("b"))
    pizauth.start()
    token_a = pizauth.authorise("a")
    pizauth.authorise("b")
    pizauth.write_config(
        accounts=pizauth.account_block("a", "refresh_retry = 5s;")
        + pizauth.account_block("b", 'scopes = ["mail"];')
    )
    assert pizauth.run("reload").returncode == 0
    assert pizauth._token("a") == token_a
    assert pizauth.show("b").stderr.startswith(URL_PREFIX.encode())
    pizauth.conf.write_text("broken")
    result = pizauth.run("reload")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"ERROR - {pizauth.conf}: Parsing error at line 1 column 1.".encode()
    )
    assert pizauth._token("a") == token_a


def test_reload_rebinds_changed_listener(pizauth: Pizauth) -> None:
    pizauth.start()
    old_url = pizauth.auth_url()
    old_port = urllib.parse.urlsplit(query(old_url)["redirect_uri"]).port
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    new_port = free.getsockname()[1]
    free.close()
    pizauth.conf.write_text(
        pizauth.conf.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{new_port}"', 1)
    )
    assert pizauth.run("reload").returncode == 0
    info = json.loads(pizauth.run("info", "-j", "-c", str(pizauth.conf)).stdout)
    assert info["server_info"]["http_port"] == str(new_port)
    # The pending login named the old port; the next one names the new port and works.
    new_url = wait_for(lambda: (u := pizauth.auth_url()) != old_url and u, 5, "new URL")
    assert urllib.parse.urlsplit(query(new_url)["redirect_uri"]).port == new_port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()
    assert pizauth.authorise()
