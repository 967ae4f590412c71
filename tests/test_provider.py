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
