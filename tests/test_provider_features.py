"""Endpoints from the issuer's metadata, the client secret from client_secret_cmd,
client_secret_basic, and revocation at the provider: the installed `pizauth` against
the local provider (examples/provider.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENT_ID, Client, Pizauth, Provider, http_get, wait_for
from server_harness import free_port

SECRET = "cmd-secret-7d2e9a41"  # given to the provider, printed by client_secret_cmd
OPENID = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"
# What the client sends in a 1.1-style code exchange, in this order.
EXCHANGE_FORM_KEYS = [
    "code",
    "client_id",
    "code_verifier",
    "redirect_uri",
    "grant_type",
    "client_secret",
]


@pytest.fixture
def cmd_provider() -> Iterator[Provider]:
    with Provider([Client(CLIENT_ID, SECRET)]) as p:
        yield p


@pytest.fixture
def server(tmp_path: Path, cmd_provider: Provider) -> Iterator[Pizauth]:
    s = Pizauth(tmp_path, cmd_provider)
    yield s
    s.stop()
    problems = s.log_problems()
    assert not problems, "the server logged an internal error:\n" + "\n".join(problems)


def secret_cmd(tmp: Path, secret: str = SECRET) -> str:
    """A client_secret_cmd that prints the secret kept in a file and counts its runs."""
    (tmp / "secret.txt").write_text(secret + "\nsecond line, not the secret\n")
    return f"echo run >> {tmp}/secret-runs; cat {tmp}/secret.txt"


def runs(tmp: Path) -> int:
    path = tmp / "secret-runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def issuer_account(
    name: str, issuer: str, secret: str | None = None, extra: str = "", cmd: str = ""
) -> str:
    secret_line = f'client_secret_cmd = "{cmd}";' if cmd else f'client_secret = "{secret}";'
    return (
        f'account "{name}" {{\n'
        f'  issuer = "{issuer}";\n'
        f'  client_id = "{CLIENT_ID}";\n'
        f"  {secret_line}\n"
        '  scopes = ["mail", "offline"];\n'
        f"  {extra}\n"
        "}\n"
    )


NOTIFY = 'error_notify_cmd = "echo \\"$PIZAUTH_ACCOUNT|$PIZAUTH_MSG\\" >> {tmp}/errors";'


def notified(tmp: Path) -> list[str]:
    path = tmp / "errors"
    return path.read_text().splitlines() if path.exists() else []


def configure(server: Pizauth, accounts: str, extra_globals: str = "") -> None:
    server.write_config(accounts, NOTIFY.format(tmp=server.tmp) + "\n" + extra_globals)


def login(server: Pizauth, account: str = "acct") -> tuple[int, str]:
    """Follow the login URL as a browser; the redirect listener's status and page."""
    status, headers, _ = http_get(server.auth_url(account))
    assert status == 302, status
    status, _, body = http_get(headers["location"])
    return status, body.decode()


def refresh_and_wait(server: Pizauth, provider: Provider, n: int) -> dict[str, str]:
    assert server.run("refresh", "acct").returncode == 0
    assert provider.wait_for_token_requests(n, 15)
    request = provider.token_requests[n - 1]
    assert request["grant_type"] == "refresh_token"
    new = provider.issued_access_tokens[-1]
    wait_for(lambda: server.token("acct") == new, 10, "refreshed token", server.log)
    return request


# -- issuer metadata -------------------------------------------------------------------------


def test_issuer_and_secret_command_alone_log_in_and_refresh(
    server: Pizauth, cmd_provider: Provider
) -> None:
    tmp = server.tmp
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=secret_cmd(tmp)))
    server.start()
    assert runs(tmp) == 0  # not at start-up: a locked password store must not hold it up
    assert cmd_provider.metadata_fetches == []

    url = server.auth_url()
    assert url.startswith(cmd_provider.auth_uri + "?")  # from the metadata
    token = server.authorise()
    assert cmd_provider.is_valid_access_token(token)
    exchange = cmd_provider.token_requests[0]
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["client_secret"] == SECRET  # the first line only
    assert runs(tmp) == 1

    refresh_and_wait(server, cmd_provider, 2)
    # Fetched once and kept; the secret was kept too.
    assert cmd_provider.metadata_fetches == [OPENID]
    assert runs(tmp) == 1
    assert not cmd_provider.errors


def test_metadata_dropped_on_reload(server: Pizauth, cmd_provider: Provider) -> None:
    tmp = server.tmp
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=secret_cmd(tmp)))
    server.start()
    server.authorise()
    assert server.run("reload").returncode == 0
    refresh_and_wait(server, cmd_provider, 2)
    assert cmd_provider.metadata_fetches == [OPENID, OPENID]
    assert runs(tmp) == 2  # the secret went with the old configuration


def test_rfc8414_document_when_there_is_no_openid_one(
    server: Pizauth, cmd_provider: Provider
) -> None:
    cmd_provider.metadata_not_found = {"openid-configuration"}
    configure(server, issuer_account("acct", cmd_provider.issuer, SECRET))
    server.start()
    server.authorise()
    assert cmd_provider.metadata_fetches == [OPENID, RFC8414]


def test_rfc8414_document_gives_what_the_openid_one_lacks_and_info_shows_it(
    server: Pizauth, cmd_provider: Provider
) -> None:
    cmd_provider.metadata_drop_from = {"openid-configuration": {"revocation_endpoint"}}
    configure(server, issuer_account("acct", cmd_provider.issuer, SECRET))
    server.start()
    text = server.run("info").stdout.decode()
    assert f"  account acct (issuer {cmd_provider.issuer}): endpoints not resolved yet\n" in text
    token = server.authorise()
    assert cmd_provider.metadata_fetches == [OPENID, RFC8414]
    info = json.loads(server.run("info", "-j").stdout)["server_info"]
    assert info["endpoints"] == {
        "acct": {
            "issuer": cmd_provider.issuer,
            "resolved": "yes",
            "auth_uri": cmd_provider.auth_uri,
            "token_uri": cmd_provider.token_uri,
            "device_auth_uri": cmd_provider.device_auth_uri,
            "revoke_uri": cmd_provider.revoke_uri,  # from the RFC 8414 document
        }
    }
    text = server.run("info").stdout.decode()
    assert f"  account acct (issuer {cmd_provider.issuer}): endpoints resolved\n" in text
    assert f"\n    token_uri: {cmd_provider.token_uri}\n" in text
    assert f"\n    revoke_uri: {cmd_provider.revoke_uri}\n" in text
    assert server.run("revoke", "acct").returncode == 0
    assert cmd_provider.wait_for_revocations(1, 10)
    assert not cmd_provider.is_active(token)


def test_info_of_accounts_without_issuer_is_unchanged(server: Pizauth) -> None:
    configure(server, server.account_block())
    server.start()
    info = json.loads(server.run("info", "-j").stdout)["server_info"]
    assert set(info) == {"http_port", "https_port"}
    assert "\n  account " not in server.run("info").stdout.decode()


def test_tenant_issuer(tmp_path: Path) -> None:
    with Provider([Client(CLIENT_ID, SECRET)], issuer_path="/tenant-42/v2.0") as provider:
        provider.metadata_tenant_issuer = True  # the document says .../{tenantid}/v2.0
        server = Pizauth(tmp_path, provider)
        try:
            configure(server, issuer_account("acct", provider.issuer, SECRET))
            server.start()
            assert provider.is_valid_access_token(server.authorise())
            assert provider.metadata_fetches == ["/tenant-42/v2.0" + OPENID]
        finally:
            server.stop()
        assert not server.log_problems()


def test_mismatched_issuer_is_that_accounts_error_only(
    server: Pizauth, cmd_provider: Provider
) -> None:
    with Provider([Client(CLIENT_ID, SECRET)]) as other:
        cmd_provider.metadata_issuer = other.issuer  # claims to be another issuer
        configure(
            server,
            issuer_account("bad", cmd_provider.issuer, SECRET)
            + issuer_account("good", other.issuer, SECRET),
        )
        server.start()
        shown = server.show("bad")
        assert shown.returncode == 1
        assert f"is for issuer '{other.issuer}'" in shown.stderr.decode(), shown
        wait_for(lambda: notified(server.tmp), 10, "error_notify_cmd", server.log)
        [line] = notified(server.tmp)
        assert line.startswith("bad|") and "is for issuer" in line, line
        # The other account is fine, and the bad one stays an error without a new fetch
        # or a second notification.
        assert other.is_valid_access_token(server.authorise("good"))
        assert server.show("bad").returncode == 1
        assert cmd_provider.metadata_fetches == [OPENID]
        assert len(notified(server.tmp)) == 1
        assert cmd_provider.token_requests == []


def test_missing_endpoint_the_account_needs(server: Pizauth, cmd_provider: Provider) -> None:
    cmd_provider.metadata_drop = {"authorization_endpoint"}
    configure(server, issuer_account("acct", cmd_provider.issuer, SECRET))
    server.start()
    shown = server.show()
    assert "has no authorization_endpoint" in shown.stderr.decode(), shown
    wait_for(lambda: notified(server.tmp), 10, "error_notify_cmd", server.log)


def test_configured_endpoint_wins_over_metadata(server: Pizauth, cmd_provider: Provider) -> None:
    # The document lacks an authorization endpoint, but the config has one: no fetch for it.
    cmd_provider.metadata_drop = {"authorization_endpoint"}
    configure(
        server,
        issuer_account(
            "acct", cmd_provider.issuer, SECRET, f'auth_uri = "{cmd_provider.auth_uri}";'
        ),
    )
    server.start()
    server.auth_url()
    assert cmd_provider.metadata_fetches == []
    server.authorise()  # the token endpoint comes from the document
    # The OpenID document lacks an endpoint: RFC 8414's is asked for it (and lacks it too).
    assert cmd_provider.metadata_fetches == [OPENID, RFC8414]


def test_provider_down_then_up(tmp_path: Path) -> None:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    placeholder = Provider([Client(CLIENT_ID, SECRET)])  # harness needs a provider object
    server = Pizauth(tmp_path, placeholder)
    try:
        configure(server, issuer_account("acct", issuer, SECRET))
        server.start()
        shown = server.show()
        assert shown.returncode == 1
        assert "couldn't fetch metadata" in shown.stderr.decode(), shown
        assert "couldn't fetch metadata" in server.run("status").stdout.decode()
        assert notified(tmp_path) == []  # transient: not an error to be told of
        with Provider([Client(CLIENT_ID, SECRET)], port=port) as provider:
            server.provider = provider
            assert provider.is_valid_access_token(server.authorise())
            assert provider.metadata_fetches == [OPENID]
    finally:
        server.stop()
    assert not server.log_problems()


# -- client_secret_cmd -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        ("echo 'gpg: decryption failed: No secret key' >&2; exit 2", "No secret key"),
        ("true", "printed nothing"),
        ("echo 'not a TTY' >&2; kill -9 $$", "killed by signal 9"),
    ],
    ids=["fails", "empty", "killed"],
)
def test_failing_secret_command_is_told_when_the_login_starts(
    server: Pizauth, cmd_provider: Provider, cmd: str, expected: str
) -> None:
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=cmd))
    server.start()
    # `show` runs the command before it gives out a URL: the failure instead of one, at
    # once, with no browser login done for nothing.
    shown = server.show()
    out = shown.stderr.decode()
    assert shown.returncode == 1 and out.startswith("ERROR - "), shown
    assert "client_secret_cmd" in out and expected in out, out
    assert "http" not in out and not shown.stdout, shown  # no login URL
    wait_for(lambda: notified(server.tmp), 10, "error_notify_cmd", server.log)
    [line] = notified(server.tmp)
    assert line.startswith("acct|") and "client_secret_cmd" in line and expected in line, line
    status = server.run("status").stdout.decode()
    assert "No access token; last error" in status and expected in status, status
    assert server.run("status").returncode == 0
    # Nothing reached the provider but the metadata document.
    assert cmd_provider.authorize_requests == [] and cmd_provider.token_requests == []


def test_failing_secret_command_keeps_the_token(server: Pizauth, cmd_provider: Provider) -> None:
    tmp = server.tmp
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=secret_cmd(tmp)))
    server.start()
    token = server.authorise()
    assert server.run("reload").returncode == 0  # the secret is forgotten, the token kept
    (tmp / "secret.txt").unlink()  # now `cat` fails
    assert server.run("refresh", "acct").returncode == 0
    wait_for(lambda: notified(tmp), 10, "error_notify_cmd", server.log)
    assert "No such file or directory" in notified(tmp)[0]
    assert "Refreshing acct failed" in notified(tmp)[0]
    assert server.token("acct") == token
    assert len(cmd_provider.token_requests) == 1


def test_invalid_client_runs_the_command_again(server: Pizauth, cmd_provider: Provider) -> None:
    tmp = server.tmp
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=secret_cmd(tmp, "stale")))
    server.start()
    status, page = login(server)
    assert "invalid_client" in page, page
    assert runs(tmp) == 1
    secret_cmd(tmp)  # the right secret now
    server.authorise()
    assert runs(tmp) == 2
    assert [r["client_secret"] for r in cmd_provider.token_requests] == ["stale", SECRET]


# -- token_endpoint_auth_method --------------------------------------------------------------


def test_client_secret_basic_login_and_refresh(tmp_path: Path) -> None:
    client = Client(CLIENT_ID, SECRET, token_endpoint_auth_method="client_secret_basic")
    with Provider([client]) as provider:
        server = Pizauth(tmp_path, provider)
        try:
            extra = 'token_endpoint_auth_method = "client_secret_basic";'
            configure(server, issuer_account("acct", provider.issuer, SECRET, extra))
            server.start()
            server.authorise()
            refresh_and_wait(server, provider, 2)
            # The secret only in the Basic header; client_id in the body as well.
            for request in provider.token_requests:
                assert "client_secret" not in request, request
                assert request["client_id"] == CLIENT_ID, request
            assert not provider.errors
        finally:
            server.stop()
        assert not server.log_problems()


# -- revocation ------------------------------------------------------------------------------


def test_revoke_at_the_provider(server: Pizauth, cmd_provider: Provider) -> None:
    tmp = server.tmp
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=secret_cmd(tmp)))
    server.start()
    access = server.authorise()
    refresh_token = refresh_and_wait(server, cmd_provider, 2)["refresh_token"]
    assert cmd_provider.is_active(refresh_token)
    assert server.run("revoke", "acct").returncode == 0
    assert "No access token" in server.run("status").stdout.decode()  # gone at once
    assert cmd_provider.wait_for_revocations(1, 15)
    [revocation] = cmd_provider.revocations
    assert revocation["token"] == refresh_token
    assert revocation["token_type_hint"] == "refresh_token"
    assert revocation["kind"] == "refresh_token"
    assert not cmd_provider.is_active(refresh_token)
    assert not cmd_provider.is_active(cmd_provider.issued_access_tokens[-1])
    assert cmd_provider.is_active(access) is False
    assert notified(tmp) == []


def test_revoke_sends_the_access_token_without_a_refresh_token(tmp_path: Path) -> None:
    with Provider([Client(CLIENT_ID, SECRET)], issue_refresh_tokens=False) as provider:
        server = Pizauth(tmp_path, provider)
        try:
            extra = f'revoke_uri = "{provider.revoke_uri}";'
            block = server.account_block(extra=extra, client_secret=SECRET)
            configure(server, block)  # no issuer: a configured endpoint
            server.start()
            access = server.authorise()
            assert server.run("revoke", "acct").returncode == 0
            assert provider.wait_for_revocations(1, 15)
            [revocation] = provider.revocations
            assert (revocation["token"], revocation["token_type_hint"]) == (access, "access_token")
            assert not provider.is_active(access)
            assert provider.metadata_fetches == []
        finally:
            server.stop()
        assert not server.log_problems()


def test_revoke_failure_is_notified_and_the_token_stays_gone(
    server: Pizauth, cmd_provider: Provider
) -> None:
    extra = f'revoke_uri = "{cmd_provider.base_url}/no-such-endpoint";'
    configure(server, server.account_block(extra=extra, client_secret=SECRET))
    server.start()
    server.authorise()
    assert server.run("revoke", "acct").returncode == 0
    wait_for(lambda: notified(server.tmp), 15, "error_notify_cmd", server.log)
    [line] = notified(server.tmp)
    assert line.startswith("acct|Revoking the token of acct at the provider failed: HTTP code 404")
    assert "No access token" in server.run("status").stdout.decode()
    assert server.token("acct") is None  # `show` offers a new login instead


def test_revoke_is_tried_again_when_the_provider_is_unavailable(
    server: Pizauth, cmd_provider: Provider
) -> None:
    extra = f'revoke_uri = "{cmd_provider.revoke_uri}";'
    configure(server, server.account_block(extra=extra, client_secret=SECRET))
    server.start("-v")
    server.authorise()
    refresh_token = refresh_and_wait(server, cmd_provider, 2)["refresh_token"]
    cmd_provider.fail_next_revocations = 1  # 503 temporarily_unavailable, then served
    assert server.run("revoke", "acct").returncode == 0
    assert server.token("acct") is None  # gone locally at once, whatever the provider says
    # The first retry comes within seconds (REVOKE_RETRIES), well within this wait.
    assert cmd_provider.wait_for_revocations(1, 15), server.log()
    assert cmd_provider.fail_next_revocations == 0  # the first attempt was refused
    assert cmd_provider.errors == ["/revoke: temporarily_unavailable: try again later"]
    [revocation] = cmd_provider.revocations
    assert revocation["token"] == refresh_token
    assert not cmd_provider.is_active(refresh_token)
    log = server.log()
    assert "failed (attempt 1 of 4): HTTP code 503" in log
    assert refresh_token not in log
    # A report would have come before the retry, which succeeded: none is coming.
    assert notified(server.tmp) == []


# -- secrets stay secret ---------------------------------------------------------------------


def test_secrets_absent_from_log_hooks_argv_and_titles(
    server: Pizauth, cmd_provider: Provider
) -> None:
    tmp = server.tmp
    hooks = (
        f'token_event_cmd = "env >> {tmp}/hook-env";\nauth_notify_cmd = "env >> {tmp}/hook-env";\n'
    )
    configure(server, issuer_account("acct", cmd_provider.issuer, cmd=secret_cmd(tmp)), hooks)
    server.start("-vvv")
    access = server.authorise()
    refresh = refresh_and_wait(server, cmd_provider, 2)["refresh_token"]
    new_access = cmd_provider.issued_access_tokens[-1]
    secrets = [SECRET, access, refresh, new_access]
    pids = server.pids()
    for pid in pids:
        for part in ("cmdline", "comm"):
            try:
                text = Path(f"/proc/{pid}/{part}").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert not any(s in text for s in secrets), (pid, part, text)
    assert server.run("revoke", "acct").returncode == 0
    assert cmd_provider.wait_for_revocations(1, 15)
    wait_for(
        lambda: "token_revoked" in (tmp / "hook-env").read_text(), 10, "revoke event", server.log
    )
    hook_env = (tmp / "hook-env").read_text()
    assert "PIZAUTH_ACCOUNT=acct" in hook_env
    server.stop()
    log = server.log()
    assert "client_secret_cmd" in log  # the log was verbose enough to have said things
    for secret in secrets:
        assert secret not in log
        assert secret not in hook_env
    for name in os.listdir(tmp):
        if name != "secret.txt" and (tmp / name).is_file():
            assert SECRET not in (tmp / name).read_text(errors="replace"), name


# -- a pizauth 1.1 configuration -------------------------------------------------------------


def test_a_1_1_configuration_sends_the_same_requests(pizauth: Pizauth, provider: Provider) -> None:
    pizauth.start()
    pizauth.authorise()
    [exchange] = provider.token_requests
    assert list(exchange) == EXCHANGE_FORM_KEYS
    assert pizauth.run("refresh", "acct").returncode == 0
    assert provider.wait_for_token_requests(2, 15)
    assert list(provider.token_requests[1]) == [
        "client_id",
        "refresh_token",
        "grant_type",
        "client_secret",
    ]
    assert pizauth.run("revoke", "acct").returncode == 0
    assert pizauth.token("acct") is None
    assert provider.metadata_fetches == []
    assert provider.revocations == []
