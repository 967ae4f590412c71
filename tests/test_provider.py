"""Tests for the local OAuth2 provider fixture (examples/provider.py), over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from provider import Client, Provider  # noqa: E402

REDIRECT = "http://localhost:8765/"
FIXED_REDIRECT = "http://127.0.0.1:9/cb?x=1"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
def provider() -> Iterator[Provider]:
    clients = [
        Client("app", "s3cret"),
        Client("fixed", "fixed-secret", redirect_uris=(FIXED_REDIRECT,)),
        Client("pub", None),
    ]
    with Provider(clients) as p:
        yield p


def authorize(p: Provider, **overrides: str | None) -> requests.Response:
    """GET /authorize with valid defaults; an override of None drops that parameter."""
    _, challenge = pkce()
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-1",
        "scope": "mail offline",
    }
    params.update(overrides)
    sent = {k: v for k, v in params.items() if v is not None}
    return requests.get(p.auth_uri, params=sent, allow_redirects=False, timeout=5)


def get_code(p: Provider, client_id: str = "app", redirect_uri: str = REDIRECT) -> tuple[str, str]:
    """A fresh (code, verifier) pair."""
    verifier, challenge = pkce()
    r = authorize(p, client_id=client_id, redirect_uri=redirect_uri, code_challenge=challenge)
    assert r.status_code == 302, r.text
    q = parse_qs(urlsplit(r.headers["Location"]).query)
    return q["code"][0], verifier


def token(p: Provider, auth: tuple[str, str] | None = None, **form: str) -> requests.Response:
    return requests.post(p.token_uri, data=form, auth=auth, timeout=5)


def exchange(p: Provider, code: str, verifier: str, **extra: str) -> requests.Response:
    form = {
        "grant_type": "authorization_code",
        "client_id": "app",
        "client_secret": "s3cret",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    form.update(extra)
    return token(p, **form)


def refresh(p: Provider, rt: str, **extra: str) -> requests.Response:
    form = {
        "grant_type": "refresh_token",
        "client_id": "app",
        "client_secret": "s3cret",
        "refresh_token": rt,
    }
    form.update(extra)
    return token(p, **form)


def assert_error(r: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert body["error"] == error
    assert body["error_description"]
    return body


# -- happy path ------------------------------------------------------------------------------


def test_happy_path(provider: Provider) -> None:
    assert provider.base_url.startswith("http://127.0.0.1:")
    r = authorize(provider)
    assert r.status_code == 302
    loc = urlsplit(r.headers["Location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT
    q = parse_qs(loc.query)
    assert q["state"] == ["st-1"]
    assert provider.authorize_requests[0]["client_id"] == "app"

    # Re-do with a known verifier for the exchange.
    code, verifier = get_code(provider)
    r = exchange(provider, code, verifier)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "mail offline"
    at, rt = body["access_token"], body["refresh_token"]
    assert at.startswith("at-") and len(at) >= 23
    assert rt.startswith("rt-") and len(rt) >= 23
    assert provider.is_valid_access_token(at)
    assert provider.issued_access_tokens == [at]

    r = refresh(provider, rt)
    assert r.status_code == 200, r.text
    body2 = r.json()
    assert "refresh_token" not in body2  # no rotation by default
    assert body2["access_token"] != at
    assert provider.is_valid_access_token(body2["access_token"])
    assert refresh(provider, rt).status_code == 200  # still valid without rotation

    reqs = provider.token_requests
    assert [q["grant_type"] for q in reqs] == ["authorization_code"] + ["refresh_token"] * 2
    assert reqs[0]["code_verifier"] == verifier
    assert provider.errors == []


def test_redirect_uri_with_query_gets_ampersand(provider: Provider) -> None:
    r = authorize(provider, client_id="fixed", redirect_uri=FIXED_REDIRECT)
    assert r.status_code == 302
    loc = r.headers["Location"]
    assert loc.startswith(FIXED_REDIRECT + "&code=")
    assert parse_qs(urlsplit(loc).query)["x"] == ["1"]


def test_basic_auth_accepted(provider: Provider) -> None:
    code, verifier = get_code(provider)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    r = token(provider, auth=("app", "s3cret"), code_verifier=verifier, **form)
    assert r.status_code == 200, r.text
    assert provider.errors == []


def test_basic_and_post_auth_together_rejected(provider: Provider) -> None:
    code, verifier = get_code(provider)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    r2 = token(
        provider, auth=("app", "s3cret"), client_secret="s3cret", code_verifier=verifier, **form
    )
    assert_error(r2, 400, "invalid_request")


def test_public_client_needs_no_secret(provider: Provider) -> None:
    code, verifier = get_code(provider, client_id="pub")
    r = exchange(provider, code, verifier, client_id="pub", client_secret="")
    assert r.status_code == 200, r.text
    form = {
        "grant_type": "refresh_token",
        "client_id": "pub",
        "refresh_token": r.json()["refresh_token"],
    }
    assert token(provider, **form).status_code == 200


# -- /authorize rejections -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "nobody"},
        {"client_id": None},
        {"response_type": "token"},
        {"code_challenge": None},
        {"code_challenge": "short"},
        {"code_challenge": "=" * 43},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
        {"state": None},
        {"state": ""},
        {"redirect_uri": None},
        {"redirect_uri": "https://localhost:8765/"},
        {"redirect_uri": "http://localhost/"},
        {"redirect_uri": "http://localhost:8765/cb"},
        {"redirect_uri": "http://localhost:99999/"},
        {"redirect_uri": "http://evil.example:8765/"},
        {"redirect_uri": "http://localhost:8765/?x=1"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_authorize_rejections(provider: Provider, overrides: dict[str, str | None]) -> None:
    r = authorize(provider, **overrides)
    assert r.status_code == 400
    assert "Location" not in r.headers  # errors are never redirected
    assert r.text.strip()
    assert len(provider.errors) == 1 and provider.errors[0] in ("/authorize: " + r.text.strip())


def test_fixed_redirect_list_is_exact(provider: Provider) -> None:
    assert authorize(provider, client_id="fixed", redirect_uri=REDIRECT).status_code == 400
    r = authorize(provider, client_id="fixed", redirect_uri=FIXED_REDIRECT + "&y=2")
    assert r.status_code == 400


@pytest.mark.parametrize("uri", ["http://localhost:1/", "http://127.0.0.1:65535/"])
def test_default_loopback_redirects_allowed(provider: Provider, uri: str) -> None:
    assert authorize(provider, redirect_uri=uri).status_code == 302


def test_repeated_authorize_parameter_rejected(provider: Provider) -> None:
    _, challenge = pkce()
    url = (
        f"{provider.auth_uri}?response_type=code&client_id=app&redirect_uri={REDIRECT}"
        f"&code_challenge={challenge}&code_challenge_method=S256&state=a&state=b"
    )
    r = requests.get(url, allow_redirects=False, timeout=5)
    assert r.status_code == 400
    assert "state" in r.text


def test_deny_next(provider: Provider) -> None:
    provider.deny_next = 2
    for _ in range(2):
        r = authorize(provider, state="s-x")
        assert r.status_code == 302
        q = parse_qs(urlsplit(r.headers["Location"]).query)
        assert q == {"error": ["access_denied"], "state": ["s-x"]}
    assert provider.deny_next == 0
    r = authorize(provider)
    assert "code" in parse_qs(urlsplit(r.headers["Location"]).query)
    assert provider.errors == []
    with pytest.raises(ValueError):
        provider.deny_next = -1


# -- /token rejections -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "creds",
    [
        {"client_secret": "wrong"},
        {"client_secret": None},
        {"client_id": "nobody"},
        {"client_id": None, "client_secret": None},
    ],
)
def test_client_authentication_failures(provider: Provider, creds: dict[str, str | None]) -> None:
    code, verifier = get_code(provider)
    form = {
        "grant_type": "authorization_code",
        "client_id": "app",
        "client_secret": "s3cret",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    form.update(creds)  # type: ignore[arg-type]
    r = token(provider, **{k: v for k, v in form.items() if v is not None})
    assert_error(r, 401, "invalid_client")
    assert provider.errors and "invalid_client" in provider.errors[0]
    assert provider.issued_access_tokens == []
    # The code was not consumed by the failed attempt.
    assert exchange(provider, code, verifier).status_code == 200


def test_wrong_basic_secret_has_www_authenticate(provider: Provider) -> None:
    r = token(provider, auth=("app", "nope"), grant_type="refresh_token", refresh_token="rt-x")
    assert_error(r, 401, "invalid_client")
    assert r.headers["WWW-Authenticate"].startswith("Basic")


def test_wrong_pkce_verifier(provider: Provider) -> None:
    code, verifier = get_code(provider)
    other, _ = pkce()
    body = assert_error(exchange(provider, code, other), 400, "invalid_grant")
    assert "code_verifier" in body["error_description"]
    assert_error(exchange(provider, code, "too-short"), 400, "invalid_grant")
    assert_error(exchange(provider, code, verifier, code_verifier=""), 400, "invalid_grant")
    assert len(provider.errors) == 3
    assert provider.issued_access_tokens == []


def test_missing_verifier_is_invalid_request(provider: Provider) -> None:
    code, _ = get_code(provider)
    form = {
        "grant_type": "authorization_code",
        "client_id": "app",
        "client_secret": "s3cret",
        "code": code,
        "redirect_uri": REDIRECT,
    }
    assert_error(token(provider, **form), 400, "invalid_request")


def test_redirect_uri_mismatch_at_token(provider: Provider) -> None:
    code, verifier = get_code(provider)
    r = exchange(provider, code, verifier, redirect_uri="http://localhost:8766/")
    body = assert_error(r, 400, "invalid_grant")
    assert "redirect_uri" in body["error_description"]


def test_reused_code_revokes_its_tokens(provider: Provider) -> None:
    code, verifier = get_code(provider)
    first = exchange(provider, code, verifier).json()
    at, rt = first["access_token"], first["refresh_token"]
    at2 = refresh(provider, rt).json()["access_token"]
    assert provider.is_valid_access_token(at) and provider.is_valid_access_token(at2)
    assert provider.errors == []

    body = assert_error(exchange(provider, code, verifier), 400, "invalid_grant")
    assert "already used" in body["error_description"]
    assert not provider.is_valid_access_token(at)
    assert not provider.is_valid_access_token(at2)  # descendants are revoked too
    assert_error(refresh(provider, rt), 400, "invalid_grant")

    # Unrelated grants are unaffected.
    c2, v2 = get_code(provider)
    assert provider.is_valid_access_token(exchange(provider, c2, v2).json()["access_token"])


def test_code_belongs_to_client(provider: Provider) -> None:
    code, verifier = get_code(provider, client_id="pub")
    assert_error(exchange(provider, code, verifier), 400, "invalid_grant")


def test_unknown_and_expired_codes(provider: Provider) -> None:
    _, verifier = get_code(provider)
    assert_error(exchange(provider, "code-nope", verifier), 400, "invalid_grant")
    code, verifier = get_code(provider)
    provider.code_lifetime = -1  # avoid a 60 s sleep
    body = assert_error(exchange(provider, code, verifier), 400, "invalid_grant")
    assert "expired" in body["error_description"]


def test_unsupported_and_missing_grant_type(provider: Provider) -> None:
    creds = {"client_id": "app", "client_secret": "s3cret"}
    assert_error(token(provider, grant_type="password", **creds), 400, "unsupported_grant_type")
    assert_error(token(provider, **creds), 400, "invalid_request")


def test_bad_refresh_tokens(provider: Provider) -> None:
    assert_error(refresh(provider, "rt-unknown"), 400, "invalid_grant")
    code, verifier = get_code(provider, client_id="pub")
    pub_rt = exchange(provider, code, verifier, client_id="pub").json()["refresh_token"]
    assert_error(refresh(provider, pub_rt), 400, "invalid_grant")  # another client's token


def test_refresh_scope_cannot_grow(provider: Provider) -> None:
    code, verifier = get_code(provider)
    rt = exchange(provider, code, verifier).json()["refresh_token"]
    assert refresh(provider, rt, scope="mail").status_code == 200
    assert_error(refresh(provider, rt, scope="mail admin"), 400, "invalid_scope")


def test_repeated_token_parameter_rejected(provider: Provider) -> None:
    body = (
        "grant_type=refresh_token&client_id=app&client_secret=s3cret"
        "&refresh_token=a&refresh_token=b"
    )
    r = requests.post(
        provider.token_uri,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert_error(r, 400, "invalid_request")


def test_non_form_body_rejected(provider: Provider) -> None:
    r = requests.post(provider.token_uri, json={"grant_type": "refresh_token"}, timeout=5)
    assert_error(r, 400, "invalid_request")
    assert provider.token_requests == [{}]  # still counted


def raw_http(p: Provider, request: bytes) -> bytes:
    port = int(p.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_body_rejected_unread(provider: Provider) -> None:
    # Only headers are sent: if the server tried to read the body, this would time out.
    resp = raw_http(
        provider,
        b"POST /token HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 65537\r\n\r\n",
    )
    assert resp.startswith(b"HTTP/1.0 413")
    assert provider.wait_for_token_requests(1, timeout=0)


def test_missing_content_length(provider: Provider) -> None:
    resp = raw_http(provider, b"POST /token HTTP/1.0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.0 411")


# -- knobs -----------------------------------------------------------------------------------


def test_scripted_responses(provider: Provider) -> None:
    provider.script_token_responses((503, "Service Unavailable"), (200, b"{not json"))
    code, verifier = get_code(provider)
    r1 = exchange(provider, code, verifier)
    assert (r1.status_code, r1.text) == (503, "Service Unavailable")
    r2 = exchange(provider, code, verifier)
    assert (r2.status_code, r2.content) == (200, b"{not json")
    assert provider.issued_access_tokens == []
    # Scripted requests are recorded, and the code was never looked at, so it still works.
    assert len(provider.token_requests) == 2
    assert exchange(provider, code, verifier).status_code == 200
    assert provider.errors == []


def test_rotation() -> None:
    with Provider([Client("app", "s3cret")], rotate_refresh_tokens=True) as p:
        code, verifier = get_code(p)
        rt1 = exchange(p, code, verifier).json()["refresh_token"]
        body = refresh(p, rt1).json()
        rt2 = body["refresh_token"]
        assert rt2 != rt1 and rt2.startswith("rt-")
        assert_error(refresh(p, rt1), 400, "invalid_grant")
        assert refresh(p, rt2).status_code == 200


def test_expires_in_knob_and_token_type() -> None:
    with Provider([Client("app", "s3cret")], expires_in=None, token_type="bearer") as p:
        code, verifier = get_code(p)
        body = exchange(p, code, verifier).json()
        assert "expires_in" not in body
        assert body["token_type"] == "bearer"
        assert p.is_valid_access_token(body["access_token"])  # never expires

        p.expires_in = 0
        body = refresh(p, body["refresh_token"]).json()
        assert body["expires_in"] == 0
        assert not p.is_valid_access_token(body["access_token"])
    assert not p.is_valid_access_token("at-never-issued")


def test_no_refresh_tokens() -> None:
    with Provider([Client("app", "s3cret")], issue_refresh_tokens=False) as p:
        code, verifier = get_code(p)
        body = exchange(p, code, verifier).json()
        assert "refresh_token" not in body
        assert p.is_valid_access_token(body["access_token"])


def test_wait_for_token_requests(provider: Provider) -> None:
    assert not provider.wait_for_token_requests(1, timeout=0.01)
    assert provider.wait_for_token_requests(0, timeout=0)
    n = 8
    threads = [threading.Thread(target=refresh, args=(provider, f"rt-{i}")) for i in range(n)]
    for t in threads:
        t.start()
    assert provider.wait_for_token_requests(n)
    for t in threads:
        t.join()
    assert len(provider.errors) == n


def test_observations_are_snapshots(provider: Provider) -> None:
    authorize(provider)
    provider.authorize_requests.clear()
    provider.errors.append("x")
    assert len(provider.authorize_requests) == 1
    assert provider.errors == []


# -- HTTP plumbing and lifecycle -------------------------------------------------------------


def test_other_paths(provider: Provider) -> None:
    assert requests.get(provider.base_url + "/", timeout=5).status_code == 404
    assert requests.post(provider.base_url + "/nope", timeout=5).status_code == 404
    assert requests.get(provider.token_uri, timeout=5).status_code == 405
    assert requests.post(provider.auth_uri, timeout=5).status_code == 405
    assert provider.token_requests == []


def test_lifecycle() -> None:
    p = Provider([Client("app", "s3cret")])
    with pytest.raises(RuntimeError):
        _ = p.base_url
    p.start()
    url = p.base_url
    with pytest.raises(RuntimeError):
        p.start()
    p.stop()
    p.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/authorize", timeout=5)


def test_quiet(provider: Provider, capfd: pytest.CaptureFixture[str]) -> None:
    authorize(provider)
    requests.get(provider.base_url + "/missing", timeout=5)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_demo_main() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "provider.py"), "--expires-in", "42"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # Don't let a broken demo hang the suite.
    watchdog = threading.Timer(10, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        auth_uri = proc.stdout.readline().split()[1]
        token_uri = proc.stdout.readline().split()[1]
        assert auth_uri.startswith("http://127.0.0.1:") and auth_uri.endswith("/authorize")
        verifier, challenge = pkce()
        r = requests.get(
            auth_uri,
            params={
                "response_type": "code",
                "client_id": "demo-client",
                "redirect_uri": REDIRECT,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": "s",
            },
            allow_redirects=False,
            timeout=5,
        )
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }
        body = requests.post(token_uri, data=form, timeout=5).json()
        assert body["expires_in"] == 42
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=5) == 0
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- device authorization (RFC 8628) ---------------------------------------------------------

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def device_provider() -> Iterator[Provider]:
    clients = [
        Client("app", "s3cret"),
        Client("pub", None),
        Client("basic", "b&s:ecret", token_endpoint_auth_method="client_secret_basic"),
        Client("post", "p-secret", token_endpoint_auth_method="client_secret_post"),
        Client("narrow", None, allowed_scopes=("mail",)),
    ]
    # Interval 0: tests that are not about pacing may poll back to back.
    with Provider(clients, device_interval=0) as p:
        yield p


def device_start(
    p: Provider, auth: tuple[str, str] | None = None, **form: str
) -> requests.Response:
    form.setdefault("client_id", "pub")
    form.setdefault("scope", "mail offline_access")
    return requests.post(p.device_auth_uri, data=form, auth=auth, timeout=5)


def device_poll(p: Provider, device_code: str, client_id: str = "pub") -> requests.Response:
    return token(p, grant_type=DEVICE_GRANT, device_code=device_code, client_id=client_id)


def test_device_authorization_reply(device_provider: Provider) -> None:
    r = device_start(device_provider)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device_code"] and body["verification_uri"] == device_provider.verification_uri
    assert len(body["user_code"]) == 9 and body["user_code"][4] == "-"
    assert body["verification_uri_complete"] == (
        device_provider.verification_uri + "?user_code=" + body["user_code"]
    )
    assert body["expires_in"] == 600 and body["interval"] == 0
    assert device_provider.user_codes == [body["user_code"]]
    assert device_provider.device_requests[0]["scope"] == "mail offline_access"


def test_device_reply_can_omit_interval_and_complete_uri() -> None:
    with Provider(
        [Client("pub", None)], device_interval=None, verification_uri_complete=False
    ) as p:
        body = device_start(p).json()
        assert "interval" not in body and "verification_uri_complete" not in body
        # Without an interval the client must use 5 seconds.
        assert p.device_interval_of(body["user_code"]) == 5


def test_device_flow_pending_then_approved(device_provider: Provider) -> None:
    body = device_start(device_provider).json()
    assert_error(device_poll(device_provider, body["device_code"]), 400, "authorization_pending")
    device_provider.approve_device(body["user_code"].lower().replace("-", ""))
    r = device_poll(device_provider, body["device_code"])
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["scope"] == "mail offline_access" and tokens["refresh_token"]
    assert device_provider.is_valid_access_token(tokens["access_token"])
    # Single use: the device code is spent.
    assert_error(device_poll(device_provider, body["device_code"]), 400, "invalid_grant")
    assert len(device_provider.device_polls(body["user_code"])) == 3
    # The refresh token works as for the code flow.
    r = refresh(device_provider, tokens["refresh_token"], client_id="pub", client_secret="")
    assert r.status_code == 200, r.text


def test_device_flow_denied(device_provider: Provider) -> None:
    body = device_start(device_provider).json()
    device_provider.deny_device(body["user_code"])
    assert_error(device_poll(device_provider, body["device_code"]), 400, "access_denied")
    assert_error(device_poll(device_provider, body["device_code"]), 400, "invalid_grant")
    with pytest.raises(ValueError):
        device_provider.approve_device(body["user_code"])
    with pytest.raises(KeyError):
        device_provider.approve_device("BCDF-GHJK-X")


def test_device_code_expires(device_provider: Provider) -> None:
    body = device_start(device_provider).json()
    device_provider.expire_device(body["user_code"])
    assert_error(device_poll(device_provider, body["device_code"]), 400, "expired_token")
    with pytest.raises(ValueError):
        device_provider.approve_device(body["user_code"])


def test_device_code_lifetime_knob() -> None:
    with Provider([Client("pub", None)], device_interval=0) as p:
        p.device_code_lifetime = 0
        body = device_start(p).json()
        assert body["expires_in"] == 0
        assert_error(device_poll(p, body["device_code"]), 400, "expired_token")


def test_slow_down_grows_the_interval() -> None:
    with Provider([Client("pub", None)], device_interval=1) as p:
        body = device_start(p).json()
        code, user = body["device_code"], body["user_code"]
        assert_error(device_poll(p, code), 400, "authorization_pending")
        assert_error(device_poll(p, code), 400, "slow_down")
        assert p.device_interval_of(user) == 6
        assert_error(device_poll(p, code), 400, "slow_down")
        assert p.device_interval_of(user) == 11
        polls = p.device_polls(user)
        assert len(polls) == 3 and polls == sorted(polls)


def test_polling_at_the_interval_is_not_slowed_down() -> None:
    import time

    with Provider([Client("pub", None)], device_interval=1) as p:
        body = device_start(p).json()
        assert_error(device_poll(p, body["device_code"]), 400, "authorization_pending")
        time.sleep(1.0)  # the interval itself is what is under test
        assert_error(device_poll(p, body["device_code"]), 400, "authorization_pending")
        first, second = p.device_polls(body["user_code"])
        assert second - first >= 1.0 - p.device_poll_slack
        assert p.device_interval_of(body["user_code"]) == 1


def test_device_code_is_bound_to_its_client(device_provider: Provider) -> None:
    body = device_start(device_provider).json()
    device_provider.approve_device(body["user_code"])
    r = token(
        device_provider,
        grant_type=DEVICE_GRANT,
        device_code=body["device_code"],
        client_id="app",
        client_secret="s3cret",
    )
    assert_error(r, 400, "invalid_grant")
    assert_error(device_poll(device_provider, "dc-unknown"), 400, "invalid_grant")
    assert_error(
        token(device_provider, grant_type=DEVICE_GRANT, client_id="pub"), 400, "invalid_request"
    )


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "nobody"}, 401, "invalid_client"),
        ({"client_id": "app"}, 401, "invalid_client"),  # confidential, no secret
        ({"client_id": "app", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"scope": "a  b"}, 400, "invalid_scope"),
        ({"scope": 'a"b'}, 400, "invalid_scope"),
        ({"client_id": "narrow", "scope": "mail admin"}, 400, "invalid_scope"),
    ],
)
def test_device_authorization_rejections(
    device_provider: Provider, form: dict[str, str], status: int, error: str
) -> None:
    assert_error(device_start(device_provider, **form), status, error)
    assert device_provider.user_codes == []


def test_device_authorization_checks_confidential_clients(device_provider: Provider) -> None:
    r = device_start(device_provider, client_id="app", client_secret="s3cret")
    assert r.status_code == 200, r.text
    r = device_start(device_provider, client_id="narrow", scope="mail")
    assert r.status_code == 200, r.text


def test_device_authorization_repeated_parameter(device_provider: Provider) -> None:
    r = requests.post(
        device_provider.device_auth_uri,
        data=[("client_id", "pub"), ("scope", "a"), ("scope", "b")],
        timeout=5,
    )
    assert_error(r, 400, "invalid_request")


def test_device_verification_page(device_provider: Provider) -> None:
    body = device_start(device_provider).json()
    page = requests.get(body["verification_uri_complete"], timeout=5)
    assert page.status_code == 200 and 'name="user_code"' in page.text
    assert f'value="{body["user_code"]}"' in page.text
    # What a browser sends when the person presses Approve.
    r = requests.post(
        device_provider.verification_uri,
        data={"user_code": body["user_code"], "action": "approve"},
        timeout=5,
    )
    assert r.status_code == 200 and r.text == "approved\n"
    assert device_poll(device_provider, body["device_code"]).status_code == 200
    again = requests.post(
        device_provider.verification_uri, data={"user_code": body["user_code"]}, timeout=5
    )
    assert again.status_code == 400
    unknown = requests.post(
        device_provider.verification_uri, data={"user_code": "ZZZZ-ZZZZ"}, timeout=5
    )
    assert unknown.status_code == 400 and "unknown" in unknown.text


def test_device_verification_page_deny_and_escaping(device_provider: Provider) -> None:
    body = device_start(device_provider).json()
    page = requests.get(device_provider.verification_uri, params={"user_code": '"><x'}, timeout=5)
    assert "<x" not in page.text and "&quot;&gt;&lt;x" in page.text
    r = requests.post(
        device_provider.verification_uri,
        data={"user_code": body["user_code"], "action": "deny"},
        timeout=5,
    )
    assert r.text == "denied\n"
    assert_error(device_poll(device_provider, body["device_code"]), 400, "access_denied")


def test_device_endpoints_need_post(device_provider: Provider) -> None:
    assert requests.get(device_provider.device_auth_uri, timeout=5).status_code == 405
    assert requests.get(device_provider.revoke_uri, timeout=5).status_code == 405


# -- client authentication methods -----------------------------------------------------------


def basic_header(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined and base64ed."""
    from urllib.parse import quote_plus

    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_basic_client_with_form_urlencoded_credentials(device_provider: Provider) -> None:
    headers = basic_header("basic", "b&s:ecret")
    r = requests.post(
        device_provider.device_auth_uri, data={"scope": "x"}, headers=headers, timeout=5
    )
    assert r.status_code == 200, r.text


def test_basic_client_rejects_secret_in_body(device_provider: Provider) -> None:
    r = device_start(device_provider, client_id="basic", client_secret="b&s:ecret")
    assert_error(r, 401, "invalid_client")
    code, verifier = get_code(device_provider, client_id="basic")
    r = exchange(device_provider, code, verifier, client_id="basic", client_secret="b&s:ecret")
    assert_error(r, 401, "invalid_client")


def test_post_client_rejects_basic(device_provider: Provider) -> None:
    r = requests.post(
        device_provider.device_auth_uri,
        data={"scope": "x"},
        headers=basic_header("post", "p-secret"),
        timeout=5,
    )
    assert_error(r, 401, "invalid_client")
    assert device_start(device_provider, client_id="post", client_secret="p-secret").ok


# -- metadata (RFC 8414, OpenID discovery) ---------------------------------------------------


@pytest.mark.parametrize("name", ["openid-configuration", "oauth-authorization-server"])
def test_metadata_documents(device_provider: Provider, name: str) -> None:
    r = requests.get(device_provider.issuer + "/.well-known/" + name, timeout=5)
    assert r.status_code == 200
    doc = r.json()
    assert doc["issuer"] == device_provider.issuer == device_provider.base_url
    assert doc["authorization_endpoint"] == device_provider.auth_uri
    assert doc["token_endpoint"] == device_provider.token_uri
    assert doc["device_authorization_endpoint"] == device_provider.device_auth_uri
    assert doc["revocation_endpoint"] == device_provider.revoke_uri
    assert device_provider.metadata_fetches == ["/.well-known/" + name]


def test_metadata_switches(device_provider: Provider) -> None:
    p = device_provider
    oidc = p.issuer + "/.well-known/openid-configuration"
    p.metadata_not_found.add("openid-configuration")
    assert requests.get(oidc, timeout=5).status_code == 404
    assert requests.get(p.issuer + "/.well-known/oauth-authorization-server", timeout=5).ok
    p.metadata_not_found.clear()
    p.metadata_issuer = "https://evil.example"
    assert requests.get(oidc, timeout=5).json()["issuer"] == "https://evil.example"
    p.metadata_issuer = None
    p.metadata_drop.add("revocation_endpoint")
    doc = requests.get(oidc, timeout=5).json()
    assert "revocation_endpoint" not in doc and "token_endpoint" in doc
    assert len(p.metadata_fetches) == 4


def test_metadata_under_an_issuer_path_and_microsoft_style() -> None:
    with Provider([Client("pub", None)], issuer_path="/common/v2.0") as p:
        assert p.issuer == p.base_url + "/common/v2.0"
        appended = p.issuer + "/.well-known/openid-configuration"
        assert requests.get(appended, timeout=5).json()["issuer"] == p.issuer
        inserted = p.base_url + "/.well-known/oauth-authorization-server/common/v2.0"
        assert requests.get(inserted, timeout=5).json()["issuer"] == p.issuer
        # Not this issuer's metadata.
        assert (
            requests.get(p.base_url + "/.well-known/openid-configuration", timeout=5).status_code
            == 404
        )
        p.metadata_tenant_issuer = True
        doc = requests.get(appended, timeout=5).json()
        assert doc["issuer"] == p.base_url + "/{tenantid}/v2.0"
        assert len(p.metadata_fetches) == 3  # the 404 for a foreign path is not counted
    with pytest.raises(ValueError):
        Provider([], issuer_path="common/")


# -- revocation (RFC 7009) -------------------------------------------------------------------


def revoke(p: Provider, tok: str, hint: str | None = None, **creds: str) -> requests.Response:
    form = {"token": tok, **(creds or {"client_id": "app", "client_secret": "s3cret"})}
    if hint is not None:
        form["token_type_hint"] = hint
    return requests.post(p.revoke_uri, data=form, timeout=5)


def fresh_tokens(p: Provider) -> dict[str, Any]:
    code, verifier = get_code(p)
    r = exchange(p, code, verifier)
    assert r.status_code == 200, r.text
    return r.json()


def test_revoking_a_refresh_token(device_provider: Provider) -> None:
    p = device_provider
    tokens = fresh_tokens(p)
    rt, at = tokens["refresh_token"], tokens["access_token"]
    assert p.is_active(rt) and p.is_active(at)
    r = revoke(p, rt, "refresh_token")
    assert r.status_code == 200
    assert p.revocations == [
        {
            "token": rt,
            "token_type_hint": "refresh_token",
            "client_id": "app",
            "kind": "refresh_token",
        }
    ]
    assert not p.is_active(rt) and not p.is_active(at)
    assert_error(refresh(p, rt), 400, "invalid_grant")


def test_revoking_an_access_token_keeps_the_refresh_token(device_provider: Provider) -> None:
    p = device_provider
    tokens = fresh_tokens(p)
    assert revoke(p, tokens["access_token"]).status_code == 200
    assert p.revocations[0]["kind"] == "access_token"
    assert p.revocations[0]["token_type_hint"] == ""
    assert not p.is_active(tokens["access_token"])
    assert p.is_active(tokens["refresh_token"])
    assert refresh(p, tokens["refresh_token"]).status_code == 200


def test_revoking_an_unknown_token_is_not_an_error(device_provider: Provider) -> None:
    assert revoke(device_provider, "rt-nope", "refresh_token").status_code == 200
    assert device_provider.revocations[0]["kind"] == "unknown"
    assert device_provider.wait_for_revocations(1, timeout=0)


def test_revocation_authenticates_the_client(device_provider: Provider) -> None:
    p = device_provider
    tokens = fresh_tokens(p)
    rt = tokens["refresh_token"]
    assert_error(revoke(p, rt, client_id="app", client_secret="wrong"), 401, "invalid_client")
    assert_error(revoke(p, rt, client_id="app"), 401, "invalid_client")
    assert_error(revoke(p, rt, client_id="pub"), 400, "unauthorized_client")
    r = requests.post(p.revoke_uri, data={"client_id": "app", "client_secret": "s3cret"}, timeout=5)
    assert_error(r, 400, "invalid_request")
    assert p.revocations == [] and p.is_active(rt)


def test_revocation_with_basic_client(device_provider: Provider) -> None:
    p = device_provider
    r = requests.post(
        p.revoke_uri, data={"token": "x"}, headers=basic_header("basic", "b&s:ecret"), timeout=5
    )
    assert r.status_code == 200
    r = requests.post(
        p.revoke_uri,
        data={"token": "x", "client_id": "basic", "client_secret": "b&s:ecret"},
        timeout=5,
    )
    assert_error(r, 401, "invalid_client")
    assert len(p.revocations) == 1
