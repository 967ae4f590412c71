"""pizauth among real programs: oidc-provider, headless Chromium, msmtp, aiosmtpd, mbsync,
Dovecot. See conftest.py for the chain; every test starts its own pizauth server."""

from __future__ import annotations

import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path

from .harness import (
    ACCESS_TOKEN_TTL,
    ACCOUNT,
    DOVECOT_CLIENT,
    GRANTED_SCOPE,
    PIZAUTH_CLIENT,
    SCOPES,
    SMTPD_CLIENT,
    USER,
    IMAPServer,
    OIDCProvider,
    Pizauth,
    SMTPServer,
    kill_group,
    wait_for,
)

PROCESSING = "pizauth processing authentication: you can safely close this page."


def issued_to_pizauth(provider: OIDCProvider, since: float) -> dict[str, dict]:
    """The access tokens the provider issued to pizauth's client, by token."""
    return {
        e["jti"]: e
        for e in provider.events("access_token.saved", since=since, client=PIZAUTH_CLIENT[0])
    }


def unique(what: str) -> str:
    return f"e2e {what} {uuid.uuid4().hex[:8]}"


def test_login_with_real_browser_and_certified_provider(
    pizauth_e2e: Pizauth, oidc_provider: OIDCProvider
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    pz.start()
    since = time.time()
    token = pz.login()

    # The browser ran once, from auth_notify_cmd, with the URL `show` printed, and ended
    # on pizauth's page.
    runs = wait_for(lambda: [r for r in pz.browser_runs() if "status" in r], 15, "chromium to exit")
    assert len(runs) == 1, pz.diagnostics()
    run = runs[0]
    assert run["account"] == ACCOUNT
    assert run["status"] == 0, pz.diagnostics()
    assert PROCESSING in Path(run["profile"] + ".dom").read_text(), pz.diagnostics()
    url = urllib.parse.urlsplit(run["url"])
    query = dict(urllib.parse.parse_qsl(url.query))
    assert run["url"].startswith(provider.auth_uri + "?")
    assert query["client_id"] == PIZAUTH_CLIENT[0]
    assert query["code_challenge_method"] == "S256"
    assert query["scope"] == " ".join(SCOPES)
    assert query["prompt"] == "consent"
    redirect_uri = query["redirect_uri"]
    assert urllib.parse.urlsplit(redirect_uri).hostname == "localhost"
    assert urllib.parse.urlsplit(redirect_uri).path == "/"

    # What the provider saw: PKCE, the unknown scope dropped, the code sent back to
    # pizauth with `iss=` appended, the code exchanged with the secret in the body.
    [request] = provider.events("authorization_request", since=since)
    assert request["status"] == 303, request
    assert request["redirect_uri"] == redirect_uri
    assert request["scope"] == GRANTED_SCOPE
    back = [
        e
        for e in provider.events("authorization_resume", since=since)
        if (e.get("location") or "").startswith(redirect_uri + "?")
    ]
    assert len(back) == 1, provider.describe()
    back_query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back[0]["location"]).query))
    assert back_query["iss"] == provider.issuer
    assert back_query["state"] == query["state"]
    assert "code" in back_query
    [exchange] = provider.events("token_request", since=since, grant_type="authorization_code")
    assert exchange == {
        **exchange,
        "status": 200,
        "client": PIZAUTH_CLIENT[0],
        "auth_method": "client_secret_post",
        "code_verifier": True,
    }, exchange
    issued = issued_to_pizauth(provider, since)
    assert [e["gty"] for e in issued.values()][0] == "authorization_code", issued
    assert token in issued, provider.describe()
    assert issued[token]["scope"] == GRANTED_SCOPE
    assert provider.events("refresh_token.saved", since=since, gty="authorization_code")

    # A resource server asking the provider about the token pizauth shows.
    answer = provider.introspect(token)
    assert answer["active"] is True, answer
    assert answer["sub"] == USER
    assert answer["client_id"] == PIZAUTH_CLIENT[0]

    wait_for(lambda: f"{ACCOUNT} token_new" in pz.token_events(), 15, "token_new", pz.diagnostics)
    assert pz.errors() == []


def test_msmtp_sends_with_token_from_pizauth(
    pizauth_e2e: Pizauth, oidc_provider: OIDCProvider, smtp_server: SMTPServer
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    pz.start()
    since = time.time()
    pz.login()
    subject = unique("msmtp")
    result = pz.msmtp(smtp_server, subject)
    assert result.returncode == 0, result.stderr.decode(errors="replace")

    [message] = [m for m in smtp_server.events("message") if f"Subject: {subject}" in m["data"]]
    assert message["rcpt_tos"] == ["bob@e2e.test"]
    used = message["token"]
    assert used in issued_to_pizauth(provider, since), provider.describe()
    [auth] = [a for a in smtp_server.events("auth") if a["token"] == used]
    assert auth["user"] == USER and auth["accepted"] is True
    assert provider.events(
        "introspection", since=since, caller=SMTPD_CLIENT[0], token=used, active=True
    )


def test_mbsync_syncs_with_token_from_pizauth(
    pizauth_e2e: Pizauth, oidc_provider: OIDCProvider, imap_server: IMAPServer
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    subject = unique("mbsync")
    imap_server.deliver(subject)
    pz.start()
    since = time.time()
    pz.login()
    result = pz.mbsync(imap_server, "first")
    assert result.returncode == 0, (
        f"mbsync exited {result.returncode} (124: timed out, the token was rejected)\n"
        f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
    )
    assert subject in pz.synced_subjects("first")

    issued = issued_to_pizauth(provider, since)
    checked = provider.events("introspection", since=since, caller=DOVECOT_CLIENT[0])
    assert checked, provider.describe()
    assert all(e["token"] in issued and e["active"] is True for e in checked), checked


def test_refresh_for_real(
    pizauth_e2e: Pizauth,
    oidc_provider: OIDCProvider,
    smtp_server: SMTPServer,
    imap_server: IMAPServer,
) -> None:
    """After the first access token expired, msmtp and mbsync use one that pizauth got by
    its own refresh (with the rotated refresh token), and no browser ran again."""
    pz, provider = pizauth_e2e, oidc_provider
    pz.start()
    since = time.time()
    first = pz.login()
    from_exchange = [
        e["jti"]
        for e in provider.events("refresh_token.saved", since=since, client=PIZAUTH_CLIENT[0])
        if e["gty"] == "authorization_code"
    ]
    assert len(from_exchange) == 1, (
        f"one refresh token from the code exchange?\n{provider.describe()}"
    )
    first_refresh_token = from_exchange[0]

    before = unique("before expiry")
    imap_server.deliver(before)
    assert pz.msmtp(smtp_server, before).returncode == 0
    result = pz.mbsync(imap_server, "refresh")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert before in pz.synced_subjects("refresh")

    # The provider itself says when the first token has expired.
    wait_for(
        lambda: provider.introspect(first)["active"] is False,
        ACCESS_TOKEN_TTL + 20,
        "the first access token to expire",
    )
    expired_at = time.time()

    after = unique("after expiry")
    imap_server.deliver(after)
    result = pz.msmtp(smtp_server, after)
    assert result.returncode == 0, (
        f"msmtp failed after the first token expired\n{result.stderr.decode(errors='replace')}"
        f"\n{pz.diagnostics()}"
    )
    result = pz.mbsync(imap_server, "refresh")
    assert result.returncode == 0, (
        f"mbsync exited {result.returncode} after the first token expired\n"
        f"{result.stderr.decode(errors='replace')}\n{pz.diagnostics()}"
    )
    assert after in pz.synced_subjects("refresh")

    # Both used a token other than the first, obtained with a refresh_token grant.
    issued = issued_to_pizauth(provider, since)
    [message] = [m for m in smtp_server.events("message") if f"Subject: {after}" in m["data"]]
    imap_checks = provider.events("introspection", since=expired_at, caller=DOVECOT_CLIENT[0])
    assert imap_checks, provider.describe()
    used = {message["token"]} | {e["token"] for e in imap_checks}
    for token in used:
        assert token != first
        assert token in issued, provider.describe()
        assert "refresh_token" in issued[token]["gty"].split(), issued[token]
    assert all(e["active"] is True for e in imap_checks), imap_checks

    # Every refresh presented the refresh token the previous grant returned (rotation),
    # with the client secret in the body, and never one twice.
    refreshes = provider.events("token_request", since=since, grant_type="refresh_token")
    assert refreshes, provider.describe()
    assert all(
        r["status"] == 200
        and r["client"] == PIZAUTH_CLIENT[0]
        and r["auth_method"] == "client_secret_post"
        for r in refreshes
    ), refreshes
    presented = [r["refresh_token"] for r in refreshes]
    rotated = [first_refresh_token] + [
        e["jti"]
        for e in provider.events("refresh_token.saved", since=since, client=PIZAUTH_CLIENT[0])
        if "refresh_token" in e["gty"].split()
    ]
    assert presented == rotated[: len(presented)], (presented, rotated)
    assert len(set(presented)) == len(presented)
    consumed = {e["jti"] for e in provider.events("refresh_token.consumed", since=since)}
    assert set(presented) <= consumed

    # No browser, no new authorisation request, no error.
    assert len(pz.browser_runs()) == 1, pz.diagnostics()
    assert len(provider.events("authorization_request", since=since)) == 1
    assert pz.errors() == []
    assert f"{ACCOUNT} token_refreshed" in pz.token_events()

    # Control: the servers do reject the expired first token.
    result = pz.msmtp(smtp_server, unique("expired"), passwordeval=f"echo {first}")
    assert result.returncode != 0
    assert [a for a in smtp_server.events("auth") if a["token"] == first][-1]["accepted"] is False
    rc = pz.mbsync_config(imap_server, "expired", passcmd=f"echo {first}")
    checked_at = time.time()
    proc = subprocess.Popen(
        ["timeout", "30", "mbsync", "-c", str(rc), "e2e"],
        env=pz.env,
        cwd=pz.tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Rejected, mbsync waits forever: watch Dovecot's question to the provider instead.
        checks = wait_for(
            lambda: provider.events(
                "introspection", since=checked_at, caller=DOVECOT_CLIENT[0], token=first
            ),
            30,
            "Dovecot to check the expired token",
        )
        assert all(c["active"] is False for c in checks), checks
    finally:
        kill_group(proc)
    assert pz.synced_subjects("expired") == []


def test_denied_consent_reaches_error_notify_then_new_authorisation_succeeds(
    pizauth_e2e: Pizauth, oidc_provider: OIDCProvider
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    pz.start()
    since = time.time()
    provider.deny_next_consent()
    first = pz.show()
    assert first.returncode == 1, first

    # The provider sends the browser back with error=access_denied; pizauth tells the user.
    errors = wait_for(pz.errors, 30, "error_notify_cmd", pz.diagnostics)
    assert errors == [f"{ACCOUNT}\tAuthentication for {ACCOUNT} failed: access_denied"]
    denials = [
        e
        for e in provider.events("authorization_resume", since=since)
        if "error=access_denied" in (e.get("location") or "")
    ]
    assert len(denials) == 1, provider.describe()
    assert "iss=" in denials[0]["location"]
    assert pz.token() is None

    # The next `show` starts a new authorisation, which the user accepts.
    token = pz.login()
    runs = pz.browser_runs()
    assert len(runs) == 2, pz.diagnostics()
    assert runs[0]["url"] != runs[1]["url"]
    assert "access_denied" in Path(runs[0]["profile"] + ".dom").read_text()
    assert token in issued_to_pizauth(provider, since)
    assert pz.errors() == errors
    assert [e["result"] for e in provider.events("interaction", since=since, prompt="consent")] == [
        "error",
        "consent",
    ]
    wait_for(lambda: f"{ACCOUNT} token_new" in pz.token_events(), 15, "token_new", pz.diagnostics)
