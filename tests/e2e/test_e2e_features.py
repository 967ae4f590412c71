"""The device flow, issuer discovery with a client secret from a command and revocation at
the provider, and the sealed token store, among the real programs of the suite
(conftest.py): oidc-provider, headless Chromium, msmtp, aiosmtpd, age, systemd-creds."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import (
    BASIC_CLIENT,
    DEVICE_CLIENT_ID,
    DEVICE_CODE_GRANT,
    GRANTED_SCOPE,
    PIZAUTH_CLIENT,
    REFRESH_BEFORE_EXPIRY,
    USER,
    OIDCProvider,
    Pizauth,
    SMTPServer,
    need,
    run_provider,
    scope_list,
    wait_for,
)

# Long enough that no refresh falls inside a test: a restored token must be the same one.
LONG_ACCESS_TOKEN_TTL = 600
# RFC 8628: without an `interval` from the provider (oidc-provider gives none), 5 s.
DEFAULT_DEVICE_INTERVAL = 5
DEVICE_PROMPT = re.compile(
    r"ERROR - Access token unavailable until authorised with URL (\S+) and code (\S+)\n"
)


@pytest.fixture(scope="module")
def oidc_provider(workdir: Path) -> Iterator[OIDCProvider]:
    """This module's provider: as the suite's, with longer-lived access tokens."""
    yield from run_provider(workdir, LONG_ACCESS_TOKEN_TTL)


def unique(what: str) -> str:
    return f"e2e {what} {uuid.uuid4().hex[:8]}"


def sends_mail(pz: Pizauth, smtp: SMTPServer, provider: OIDCProvider, client: str) -> str:
    """msmtp sends one message with the token `pizauth show` gives; the SMTP server
    accepted it after asking the provider. Returns the token msmtp used."""
    subject = unique("msmtp")
    result = pz.msmtp(smtp, subject)
    assert result.returncode == 0, result.stderr.decode(errors="replace") + pz.diagnostics()
    [message] = [m for m in smtp.events("message") if f"Subject: {subject}" in m["data"]]
    used = message["token"]
    issued = {e["jti"] for e in provider.events("access_token.saved", client=client)}
    assert used in issued, provider.describe()
    [auth] = [a for a in smtp.events("auth") if a["token"] == used]
    assert auth["user"] == USER and auth["accepted"] is True, auth
    return used


def server_texts(pz: Pizauth) -> str:
    """Everything the server wrote where a secret must never be: its logs, the hooks'
    logs, and the command lines of its processes."""
    parts = [p.read_text(errors="replace") for p in sorted(pz.tmp.glob("server.log*"))]
    for name in ("errors.log", "events.log", "browser.log"):
        path = pz.tmp / name
        if path.exists():
            parts.append(path.read_text(errors="replace"))
    if pz.proc is not None and pz.proc.poll() is None:
        for pid in pz.pids():
            try:
                parts.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(parts)


# -- the device authorization grant ----------------------------------------------------------


def test_device_flow_with_browser_then_msmtp(
    pizauth_e2e: Pizauth, oidc_provider: OIDCProvider, smtp_server: SMTPServer
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    metadata = provider.metadata()
    pz.account = "device"
    pz.auth_notify = "device-browser.sh"
    pz.http_listen = "none"  # every account uses the device flow: no listener needed
    pz.account_options = (
        '  auth_flow = "device";\n'
        f'  device_auth_uri = "{metadata["device_authorization_endpoint"]}";\n'
        f'  token_uri = "{metadata["token_endpoint"]}";\n'
        f'  client_id = "{DEVICE_CLIENT_ID}";\n'
        f"  scopes = [{scope_list()}];\n"
        f"  refresh_before_expiry = {REFRESH_BEFORE_EXPIRY}s;\n"
    )
    pz.start()
    since = time.time()

    first = pz.show()
    assert first.returncode == 1, first
    prompt = DEVICE_PROMPT.fullmatch(first.stderr.decode())
    assert prompt, first.stderr
    uri, user_code = prompt.groups()

    # What pizauth asked for and what it printed: the provider's own answer.
    [authorization] = provider.events("device_authorization", since=since)
    assert authorization == {
        **authorization,
        "status": 200,
        "client": DEVICE_CLIENT_ID,
        "auth_method": "none",
        "scope": GRANTED_SCOPE,
    }, authorization
    assert uri == authorization["verification_uri_complete"]
    assert user_code == authorization["user_code"]

    # While the request is pending, `show` repeats it (or, if the browser was quick,
    # already prints the token); either way no second device request is made.
    again = pz.show()
    if again.returncode == 1:
        assert again.stderr == first.stderr
    without_url = pz.show(None, "-u")
    if without_url.returncode == 1:
        assert without_url.stderr.decode() == (
            f"ERROR - Access token unavailable until authorised with code {user_code}\n"
        )
    token = wait_for(pz.token, 60, "a token after the device login", pz.diagnostics)
    assert len(provider.events("device_authorization", since=since)) == 1, provider.describe()

    # auth_notify_cmd ran the browser once, with the URL and code `show` printed; the
    # browser submitted that code on the provider's page and ended on its success page.
    runs = wait_for(lambda: [r for r in pz.browser_runs() if "status" in r], 30, "chromium")
    assert len(runs) == 1, pz.diagnostics()
    [run] = runs
    assert (run["account"], run["url"], run["user_code"]) == ("device", uri, user_code)
    assert run["status"] == 0, pz.diagnostics()
    assert "e2e-device-success" in Path(run["profile"] + ".dom").read_text(), pz.diagnostics()
    submitted = provider.events("code_verification", since=since, user_code=user_code)
    assert submitted and submitted[0]["status"] == 200, provider.describe()
    assert provider.events("device.confirm_page", since=since, user_code=user_code)
    assert provider.events("device.success", since=since, client=DEVICE_CLIENT_ID)
    assert [e["result"] for e in provider.events("interaction", since=since)] == [
        "login",
        "consent",
    ]

    # The token came from polling with the device code the provider handed out, no faster
    # than the default interval, and ended with one success.
    [device_code] = {
        e["jti"] for e in provider.events("device_code.saved", since=since, client=DEVICE_CLIENT_ID)
    }
    polls = provider.events("token_request", since=since, grant_type=DEVICE_CODE_GRANT)
    assert polls, provider.describe()
    assert all(
        p["device_code"] == device_code
        and p["client"] == DEVICE_CLIENT_ID
        and p["auth_method"] == "none"
        for p in polls
    ), polls
    assert [p["status"] for p in polls] == [400] * (len(polls) - 1) + [200], polls
    assert all(p.get("error") == "authorization_pending" for p in polls[:-1]), polls
    gaps = [b["at"] - a["at"] for a, b in zip(polls, polls[1:], strict=False)]
    assert all(gap >= DEFAULT_DEVICE_INTERVAL - 0.5 for gap in gaps), gaps
    issued = {e["jti"]: e for e in provider.events("access_token.saved", client=DEVICE_CLIENT_ID)}
    # oidc-provider names the grant "device_code" in the tokens it issues.
    assert token in issued and issued[token]["gty"] == "device_code", provider.describe()
    assert issued[token]["scope"] == GRANTED_SCOPE
    assert provider.events("refresh_token.saved", since=since, client=DEVICE_CLIENT_ID)
    assert provider.events("device_code.consumed", since=since, jti=device_code)

    wait_for(lambda: "device token_new" in pz.token_events(), 15, "token_new", pz.diagnostics)
    assert sends_mail(pz, smtp_server, provider, DEVICE_CLIENT_ID) == token
    assert pz.errors() == []
    # The device code is a credential: nowhere in what the server wrote or shows.
    assert device_code not in server_texts(pz)


# -- issuer discovery, client_secret_cmd, client_secret_basic, revocation ----------------------


def test_issuer_secret_cmd_basic_auth_and_revocation(
    pizauth_e2e: Pizauth, oidc_provider: OIDCProvider, smtp_server: SMTPServer
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    metadata = provider.metadata()
    secret_file = pz.tmp / "client-secret"
    secret_file.write_text(BASIC_CLIENT[1] + "\n")
    secret_file.chmod(0o600)
    # No endpoint and no secret in the configuration. oidc-provider, as Google, keeps
    # offline_access (a refresh token, which revocation is about) only with prompt=consent.
    pz.account_options = (
        f'  issuer = "{provider.issuer}";\n'
        f'  client_id = "{BASIC_CLIENT[0]}";\n'
        f'  client_secret_cmd = "cat {secret_file}";\n'
        f"  scopes = [{scope_list()}];\n"
        '  auth_uri_fields = {"prompt": "consent"};\n'
    )
    pz.start()
    since = time.time()
    token = pz.login()

    # The browser went to the discovered authorisation endpoint; the code exchange went to
    # the discovered token endpoint with HTTP Basic, as the client is registered.
    [run] = pz.browser_runs()
    assert run["url"].startswith(metadata["authorization_endpoint"] + "?"), run
    [exchange] = provider.events("token_request", since=since, grant_type="authorization_code")
    assert exchange == {
        **exchange,
        "status": 200,
        "client": BASIC_CLIENT[0],
        "auth_method": "client_secret_basic",
        "code_verifier": True,
    }, exchange
    assert sends_mail(pz, smtp_server, provider, BASIC_CLIENT[0]) == token

    [refresh_token] = [
        e["jti"]
        for e in provider.events("refresh_token.saved", since=since)
        if e["client"] == BASIC_CLIENT[0]
    ]
    assert provider.introspect(refresh_token)["active"] is True
    assert provider.introspect(token)["active"] is True

    revoked = pz.run("revoke", pz.account)
    assert revoked.returncode == 0, revoked
    # At the provider, in the background: the refresh token, authenticated as for the
    # token endpoint; the provider then ends the whole grant.
    [revocation] = wait_for(
        lambda: provider.events("revocation", since=since),
        15,
        "a revocation request",
        pz.diagnostics,
    )
    assert revocation == {
        **revocation,
        "status": 200,
        "client": BASIC_CLIENT[0],
        "auth_method": "client_secret_basic",
        "token": refresh_token,
        "token_type_hint": "refresh_token",
    }, revocation
    wait_for(lambda: provider.introspect(refresh_token)["active"] is False, 10, "inactive RT")
    wait_for(lambda: provider.introspect(token)["active"] is False, 10, "inactive AT")

    # The secret came from the command only: never on a line the server wrote or a title.
    assert BASIC_CLIENT[1] not in server_texts(pz)
    assert BASIC_CLIENT[1] not in pz.conf.read_text()
    assert pz.errors() == []
    assert not provider.events("token_request", since=since, client=BASIC_CLIENT[0], status=401)


# -- the sealed token store with real key tools -----------------------------------------------


def age_key(tmp: Path) -> str:
    """An age identity and 48 random bytes encrypted to it; the command that decrypts."""
    tools = need("age", "age-keygen")
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    identity = keys / "identity.txt"
    subprocess.run([tools["age-keygen"], "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        [tools["age-keygen"], "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        [tools["age"], "-r", recipient, "-o", str(keys / "key.age")],
        input=os.urandom(48),
        check=True,
        capture_output=True,
    )
    return f"age -d -i {identity} {keys / 'key.age'}"


def systemd_creds_key(tmp: Path) -> str:
    """48 random bytes sealed with the host key by systemd-creds (no running systemd is
    needed, but reading the host key, /var/lib/systemd/credential.secret, needs root)."""
    tool = need("systemd-creds")["systemd-creds"]
    if os.geteuid() != 0:
        pytest.skip("systemd-creds --with-key=host needs root to read the host key")
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    (keys / "key.bin").write_bytes(os.urandom(48))
    subprocess.run(
        [
            tool,
            "encrypt",
            "--with-key=host",
            "--name=pizauth-key",
            str(keys / "key.bin"),
            str(keys / "key.cred"),
        ],
        check=True,
        capture_output=True,
    )
    (keys / "key.bin").unlink()
    return f"systemd-creds decrypt --name=pizauth-key {keys / 'key.cred'} -"


@pytest.mark.parametrize("key_tool", [age_key, systemd_creds_key], ids=["age", "systemd-creds"])
def test_token_store_survives_restart(
    pizauth_e2e: Pizauth,
    oidc_provider: OIDCProvider,
    smtp_server: SMTPServer,
    key_tool: Callable[[Path], str],
) -> None:
    pz, provider = pizauth_e2e, oidc_provider
    key_cmd = key_tool(pz.tmp)
    store = pz.tmp / "state" / "pizauth" / "tokens"  # its directory does not exist yet
    pz.global_options = f'token_store = "{store}";\ntoken_store_key_cmd = "{key_cmd}";\n'
    pz.start()
    since = time.time()
    token = pz.login()
    [refresh_token] = [
        e["jti"]
        for e in provider.events("refresh_token.saved", since=since)
        if e["client"] == PIZAUTH_CLIENT[0]
    ]
    wait_for(store.exists, 10, "the token store to be written", pz.diagnostics)

    shutdown = pz.run("shutdown")
    assert shutdown.returncode == 0, shutdown
    assert pz.proc is not None
    pz.proc.wait(timeout=15)

    # What is left on disk: private, and nothing in it readable.
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    # Nothing the server keeps beside the store (in its 0700 directory) is in clear either.
    for path in store.parent.iterdir():
        sealed = path.read_bytes()
        for clear in (token, refresh_token, PIZAUTH_CLIENT[1], pz.account):
            assert clear.encode() not in sealed, f"{clear!r} is in {path.name} in clear"

    restarted = time.time()
    pz.start()
    # Restored before the server answered: the same token at once, no provider round trip.
    again = pz.show()
    assert again.returncode == 0, again.stderr.decode() + pz.diagnostics()
    assert again.stdout.decode() == token + "\n"
    assert provider.events("token_request", since=restarted) == [], provider.describe()
    assert len(pz.browser_runs()) == 1
    assert sends_mail(pz, smtp_server, provider, PIZAUTH_CLIENT[0]) == token
    assert pz.errors() == []
