"""Provider calls of the network side: client authentication, the device authorization
grant, issuer metadata and revocation.

Most tests talk to the local provider (examples/provider.py) on 127.0.0.1, which checks
what a real provider checks; malformed replies come from a small scripted server.
Every call must end in a typed result, never an exception.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from pizauth import limits
from pizauth.ipc import (
    NetDeviceAuth,
    NetDevicePoll,
    NetExchange,
    NetMetadata,
    NetRefresh,
    NetRevoke,
)
from pizauth.net import device, metadata, reply, revoke, tokenclient
from pizauth.net.device import DeviceAuthorization, poll_device_token, request_device_authorization
from pizauth.net.metadata import fetch_metadata, issuer_matches
from pizauth.net.revoke import revoke_token
from pizauth.net.tokenclient import CLIENT_SECRET_BASIC, CLIENT_SECRET_POST

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from provider import Client, Provider, s256  # noqa: E402

BASIC_SECRET = "b&s:ecret w+%"  # every character RFC 6749 §2.3.1 encoding must handle
REDIRECT = "http://127.0.0.1:8765/"
SCOPES = "mail offline_access"


@pytest.fixture
def provider() -> Iterator[Provider]:
    clients = [
        Client("app", "app-secret"),
        Client("pub", None),
        Client("basic", BASIC_SECRET, token_endpoint_auth_method=CLIENT_SECRET_BASIC),
        Client("post", "p-secret", token_endpoint_auth_method=CLIENT_SECRET_POST),
        Client("narrow", None, allowed_scopes=("mail",)),
    ]
    # Interval 0: tests that are not about pacing may poll back to back.
    with Provider(clients, device_interval=0) as p:
        yield p


SECRETS = {"app": "app-secret", "pub": None, "basic": BASIC_SECRET, "post": "p-secret"}


def secret_of(client_id: str) -> bytes | None:
    """The client's secret as a request to the network side carries it."""
    secret = SECRETS.get(client_id)
    return None if secret is None else secret.encode()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no proxy from the environment for 127.0.0.1
        yield s


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Hostile:
    """An HTTP server that answers each path with a scripted (status, body)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                path = urllib.parse.urlsplit(self.path).path
                server.requests.append((self.command, path, dict(self.headers), data))
                status, payload = server.answers.get(path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, path: str, status: int, payload: bytes | object) -> str:
        """Script `path`'s answer; returns its URI."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.answers[path] = (status, raw)
        return self.base_url + path


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


def authorization_code(
    p: Provider, client_id: str, method: str = CLIENT_SECRET_POST
) -> NetExchange:
    """A code from /authorize, as the code exchange request that posts it."""
    verifier = secrets.token_urlsafe(48)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        "state": "st",
    }
    r = requests.get(p.auth_uri, params=params, allow_redirects=False, timeout=5)
    assert r.status_code == 302, r.text
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["Location"]).query)["code"][0]
    return NetExchange(
        p.token_uri, client_id, secret_of(client_id), code, verifier.encode(), REDIRECT, method
    )


def start(p: Provider, session: requests.Session, client_id: str = "pub", method: str = "post"):
    return request_device_authorization(
        session,
        NetDeviceAuth(
            p.device_auth_uri, client_id, secret_of(client_id), SCOPES, f"client_secret_{method}"
        ),
    )


def poll(p: Provider, session: requests.Session, auth: DeviceAuthorization, client_id="pub"):
    method = CLIENT_SECRET_BASIC if client_id == "basic" else CLIENT_SECRET_POST
    return poll_device_token(
        session,
        NetDevicePoll(p.token_uri, client_id, secret_of(client_id), auth.device_code, method),
    )


def device_token(p: Provider, session: requests.Session, client_id: str = "pub"):
    """A token through the device flow; returns (access token, refresh token)."""
    method = "basic" if client_id == "basic" else "post"
    auth = start(p, session, client_id, method)
    assert auth.outcome == "ok", auth.message
    p.approve_device(auth.user_code)
    result = poll(p, session, auth, client_id)
    assert result.outcome == "ok" and result.token is not None, result.message
    return result.token.access_token, result.token.refresh_token


# -- client authentication ---------------------------------------------------------------------


def test_basic_credentials_form_urlencode_before_base64() -> None:
    header = tokenclient.basic_credentials("my id:1", BASIC_SECRET)
    assert header.startswith("Basic ")
    decoded = base64.b64decode(header[6:]).decode()
    assert decoded == "my+id%3A1:b%26s%3Aecret+w%2B%25"


def test_client_auth_fields() -> None:
    assert tokenclient.client_auth("c", "s", CLIENT_SECRET_POST) == (
        [("client_id", "c"), ("client_secret", "s")],
        {},
    )
    # With Basic the secret is in the header only, and client_id in the body too (RFC 6749
    # §2.3.1 allows it; oauthlib-based servers require it).
    form, headers = tokenclient.client_auth("c", "s", CLIENT_SECRET_BASIC)
    assert form == [("client_id", "c")]
    assert headers["Authorization"] == tokenclient.basic_credentials("c", "s")
    # A public client names itself in the body whatever the method.
    assert tokenclient.client_auth("c", None, CLIENT_SECRET_BASIC) == ([("client_id", "c")], {})
    with pytest.raises(ValueError):
        tokenclient.client_auth("c", "s", "private_key_jwt")


def test_exchange_and_refresh_with_basic(provider: Provider, session) -> None:
    request = authorization_code(provider, "basic", CLIENT_SECRET_BASIC)
    result = tokenclient.exchange_code(session, request)
    assert result.outcome == "ok", result.message
    assert provider.is_valid_access_token(result.access_token)
    sent = provider.token_requests[-1]
    assert "client_secret" not in sent and sent["client_id"] == "basic"
    refresh_request = NetRefresh(
        provider.token_uri,
        "basic",
        BASIC_SECRET.encode(),
        result.refresh_token.encode(),
        CLIENT_SECRET_BASIC,
    )
    again = tokenclient.refresh(session, refresh_request)
    assert again.outcome == "ok", again.message
    assert "client_secret" not in provider.token_requests[-1]
    assert provider.token_requests[-1]["client_id"] == "basic"
    assert provider.errors == []


def test_default_is_still_post(provider: Provider, session) -> None:
    request = authorization_code(provider, "post")
    result = tokenclient.exchange_code(session, request)
    assert result.outcome == "ok", result.message
    assert provider.token_requests[-1]["client_secret"] == "p-secret"


@pytest.mark.parametrize(
    ("client_id", "method", "why"),
    [
        ("basic", CLIENT_SECRET_POST, "client must use client_secret_basic"),
        ("post", CLIENT_SECRET_BASIC, "client must use client_secret_post"),
    ],
)
def test_wrong_method_is_refused_by_the_provider(provider, session, client_id, method, why):
    request = authorization_code(provider, client_id, method)
    result = tokenclient.exchange_code(session, request)
    assert result.outcome == "permanent"
    assert result.message.startswith("HTTP code 401 (invalid_client")
    assert provider.errors == [f"/token: invalid_client: {why}"]
    assert SECRETS[client_id] not in result.message


def test_basic_for_a_public_client_sends_client_id(provider: Provider, session) -> None:
    request = authorization_code(provider, "pub", CLIENT_SECRET_BASIC)
    result = tokenclient.exchange_code(session, request)
    assert result.outcome == "ok", result.message
    assert provider.token_requests[-1]["client_id"] == "pub"


# -- device authorization request --------------------------------------------------------------


def test_device_authorization_ok(provider: Provider, session) -> None:
    auth = start(provider, session)
    assert auth.outcome == "ok", auth.message
    assert provider.user_codes == [auth.user_code]
    assert auth.verification_uri == provider.verification_uri
    assert auth.verification_uri_complete == (
        provider.verification_uri + "?user_code=" + auth.user_code
    )
    assert auth.user_uri == auth.verification_uri_complete
    assert auth.expires_in == 600
    assert auth.interval == 1  # the provider said 0: never poll back to back
    assert auth.device_code.startswith(b"dc-")
    assert provider.device_requests == [{"client_id": "pub", "scope": SCOPES}]
    assert "dc-" not in repr(auth)  # the device code is a credential


def test_device_authorization_defaults() -> None:
    with (
        Provider([Client("pub", None)], device_interval=None, verification_uri_complete=False) as p,
        requests.Session() as s,
    ):
        auth = start(p, s)
        assert (auth.outcome, auth.interval, auth.verification_uri_complete) == ("ok", 5, "")
        assert auth.user_uri == p.verification_uri


def test_device_authorization_basic(provider: Provider, session) -> None:
    auth = start(provider, session, "basic", "basic")
    assert auth.outcome == "ok", auth.message
    # The secret in the Basic header only; client_id in the body too.
    assert provider.device_requests == [{"client_id": "basic", "scope": SCOPES}]


def test_device_authorization_basic_with_an_oauthlib_provider(provider: Provider, session) -> None:
    """oauthlib (django-oauth-toolkit) refuses a device authorization request whose body
    does not name client_id, even with HTTP Basic: pizauth names it."""
    provider.device_requires_client_id = True
    creds = tokenclient.basic_credentials("basic", BASIC_SECRET)
    refused = session.post(
        provider.device_auth_uri, data={"scope": SCOPES}, headers={"Authorization": creds}
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    auth = start(provider, session, "basic", "basic")
    assert auth.outcome == "ok", auth.message
    assert provider.device_requests[-1] == {"client_id": "basic", "scope": SCOPES}
    # ...and then polls with it too, the secret in the header only.
    provider.approve_device(auth.user_code)
    result = poll(provider, session, auth, "basic")
    assert result.outcome == "ok", result.message
    assert provider.token_requests[-1]["client_id"] == "basic"
    assert "client_secret" not in provider.token_requests[-1]


def test_device_authorization_wrong_method(provider: Provider, session) -> None:
    auth = start(provider, session, "basic", "post")
    assert (auth.outcome, auth.provider_error) == ("permanent", "invalid_client")
    assert auth.message.startswith("HTTP code 401 (invalid_client")
    assert BASIC_SECRET not in auth.message


def test_device_authorization_scope_refused(provider: Provider, session) -> None:
    auth = start(provider, session, "narrow")
    assert (auth.outcome, auth.provider_error) == ("permanent", "invalid_scope")
    assert auth.message == "HTTP code 400 (invalid_scope: scope not allowed for this client)"


def test_device_authorization_unreachable(session, closed_port) -> None:
    uri = f"http://127.0.0.1:{closed_port}/device"
    auth = request_device_authorization(
        session, NetDeviceAuth(uri, "pub", None, "", CLIENT_SECRET_POST)
    )
    assert (auth.outcome, auth.message) == ("transient", f"couldn't connect to {uri}")


GOOD_DEVICE = {
    "device_code": "dc-1",
    "user_code": "ABCD-EFGH",
    "verification_uri": "https://example.com/device",
    "expires_in": 900,
    "interval": 5,
}
HUGE = int("9" * 400)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, {"expires_in": 900, "interval": 5}),
        ({"expires_in": HUGE, "interval": HUGE}, {"expires_in": limits.MAX_SECONDS}),
        ({"expires_in": "1800"}, {"expires_in": 1800}),
        ({"interval": None}, {"interval": 5}),
        ({"interval": -3}, {"interval": 1}),
        ({"expires_in": None}, {"expires_in": device.DEFAULT_EXPIRES_IN}),
        # Google's name for it.
        ({"verification_uri": None, "verification_url": "https://g.co/d"}, {}),
        ({"user_code": "12 34"}, {"user_code": "12 34"}),
    ],
)
def test_device_reply_accepted(hostile: Hostile, session, change, expected) -> None:
    doc = {k: v for k, v in {**GOOD_DEVICE, **change}.items() if v is not None}
    uri = hostile.answer("/device", 200, doc)
    auth = request_device_authorization(
        session, NetDeviceAuth(uri, "pub", None, SCOPES, CLIENT_SECRET_POST)
    )
    assert auth.outcome == "ok", auth.message
    for name, value in expected.items():
        assert getattr(auth, name) == value
    assert 1 <= auth.interval <= limits.MAX_SECONDS


@pytest.mark.parametrize(
    "change",
    [
        {"device_code": None},
        {"device_code": 12},
        {"device_code": "d\x00c"},
        {"device_code": "x" * (limits.MAX_DEVICE_CODE + 1)},
        {"device_code": "\ud800"},
        {"user_code": None},
        {"user_code": " "},
        {"user_code": "AB\x00CD"},
        {"user_code": "AB\u202eCD"},
        {"user_code": "\ud800"},
        {"user_code": "A" * (limits.MAX_PROVIDER_TEXT + 1)},
        {"verification_uri": None},
        {"verification_uri": "javascript:alert(1)"},
        {"verification_uri": "https://example.com/a b"},
        {"verification_uri": "https://example.com/\x00"},
        {"verification_uri": "https://ex\u0430mple.com/"},
        {"verification_uri": "https://user@evil.example/"},
        {"verification_uri": "https://example.com/" + "a" * limits.MAX_URI},
        {"verification_uri_complete": "file:///etc/passwd"},
        {"verification_uri_complete": 7},
        {"expires_in": -1},
        {"expires_in": 0},
        {"expires_in": "soon"},
        {"expires_in": True},
        {"interval": [5]},
    ],
)
def test_device_reply_refused(hostile: Hostile, session, change) -> None:
    doc = {k: v for k, v in {**GOOD_DEVICE, **change}.items() if v is not None}
    uri = hostile.answer("/device", 200, json.dumps(doc).encode())
    auth = request_device_authorization(
        session, NetDeviceAuth(uri, "pub", None, SCOPES, CLIENT_SECRET_POST)
    )
    assert auth.outcome == "permanent"
    assert auth.message.startswith(device.INVALID_RESPONSE)
    assert auth.device_code == b"" and auth.user_code == ""


@pytest.mark.parametrize(
    ("status", "payload", "outcome"),
    [
        (200, b"not json", "permanent"),
        (200, b"[" * 100_000 + b"]" * 100_000, "permanent"),
        (200, b"[1, 2]", "permanent"),
        (200, b'{"expires_in": ' + b"9" * 5000 + b"}", "permanent"),
        (200, b" " * (limits.MAX_REPLY_BODY + 1), "permanent"),
        (503, b"", "transient"),
        (429, b"{}", "transient"),
        (404, b"", "permanent"),
    ],
)
def test_device_hostile_replies(hostile: Hostile, session, status, payload, outcome) -> None:
    uri = hostile.answer("/device", status, payload)
    auth = request_device_authorization(
        session, NetDeviceAuth(uri, "pub", None, SCOPES, CLIENT_SECRET_POST)
    )
    assert auth.outcome == outcome
    assert auth.device_code == b""


def test_device_error_text_is_cleaned(hostile: Hostile, session) -> None:
    desc = "bad\x00\x1b[31mred\u202e\ud800" + "x" * 5000
    uri = hostile.answer("/device", 400, {"error": "invalid_\x00client", "error_description": desc})
    auth = request_device_authorization(
        session, NetDeviceAuth(uri, "pub", None, SCOPES, CLIENT_SECRET_POST)
    )
    assert auth.outcome == "permanent"
    assert auth.provider_error == "invalid_\ufffdclient"
    assert auth.message.startswith("HTTP code 400 (invalid_\ufffdclient: bad\ufffd\ufffd[31mred")
    for c in "\x00\x1b\u202e\ud800":
        assert c not in auth.message
    assert len(auth.message.encode()) <= 2 * limits.MAX_PROVIDER_TEXT + 100


# -- polling the token endpoint ------------------------------------------------------------------


def test_poll_pending_then_token(provider: Provider, session) -> None:
    auth = start(provider, session)
    pending = poll(provider, session, auth)
    assert (pending.outcome, pending.provider_error, pending.token) == (
        "transient",
        device.PENDING,
        None,
    )
    provider.approve_device(auth.user_code)
    got = poll(provider, session, auth)
    assert (got.outcome, got.provider_error) == ("ok", "")
    assert got.token is not None and got.token.outcome == "ok"
    assert provider.is_valid_access_token(got.token.access_token)
    assert got.token.refresh_kind == "string" and got.token.expires_in == 3600
    sent = provider.token_requests[-1]
    assert sent["grant_type"] == device.DEVICE_GRANT and sent["device_code"].startswith("dc-")
    # Single use: the code is spent.
    again = poll(provider, session, auth)
    assert (again.outcome, again.provider_error) == ("permanent", "invalid_grant")


def test_poll_with_basic(provider: Provider, session) -> None:
    access, refresh_token = device_token(provider, session, "basic")
    assert provider.is_valid_access_token(access) and refresh_token
    assert all("client_secret" not in r for r in provider.token_requests)


def test_poll_denied(provider: Provider, session) -> None:
    auth = start(provider, session)
    provider.deny_device(auth.user_code)
    result = poll(provider, session, auth)
    assert (result.outcome, result.provider_error) == ("permanent", device.ACCESS_DENIED)
    assert result.message == "HTTP code 400 (access_denied: the user denied the request)"


def test_poll_expired(provider: Provider, session) -> None:
    auth = start(provider, session)
    provider.expire_device(auth.user_code)
    result = poll(provider, session, auth)
    assert (result.outcome, result.provider_error) == ("permanent", device.EXPIRED_TOKEN)


def test_poll_too_fast_gets_slow_down(session) -> None:
    with Provider([Client("pub", None)], device_interval=5) as p:
        auth = start(p, session)
        assert auth.interval == 5
        first = poll(p, session, auth)
        second = poll(p, session, auth)  # at once, well within the interval
        assert (first.outcome, first.provider_error) == ("transient", device.PENDING)
        assert (second.outcome, second.provider_error) == ("transient", device.SLOW_DOWN)
        assert p.device_interval_of(auth.user_code) == 10


def test_poll_unreachable_is_transient(session, closed_port) -> None:
    uri = f"http://127.0.0.1:{closed_port}/token"
    result = poll_device_token(
        session, NetDevicePoll(uri, "pub", None, b"dc-1", CLIENT_SECRET_POST)
    )
    assert (result.outcome, result.provider_error) == ("transient", "")


@pytest.mark.parametrize(
    ("status", "payload", "outcome", "provider_error"),
    [
        (503, b"", "transient", ""),
        (500, {"error": "access_denied"}, "transient", ""),  # the status decides
        (429, {"error": "slow_down"}, "transient", "slow_down"),
        (200, {"error": "authorization_pending"}, "transient", "authorization_pending"),
        (401, {"error": "invalid_client"}, "permanent", "invalid_client"),
        (400, {"error": "invalid_request\x00"}, "permanent", "invalid_request\ufffd"),
        (400, b"not json", "permanent", ""),
        (200, b"not json", "permanent", ""),
        (200, b"[" * 100_000 + b"]" * 100_000, "permanent", ""),
        (200, {"access_token": "at", "token_type": "MAC"}, "permanent", ""),
        (200, {"access_token": "a\ud800", "token_type": "Bearer"}, "permanent", ""),
        (
            200,
            {"access_token": "a" * (limits.MAX_TOKEN + 1), "token_type": "bearer"},
            "permanent",
            "",
        ),
        (200, b" " * (limits.MAX_REPLY_BODY + 1), "permanent", ""),
        (302, b"", "permanent", ""),
    ],
)
def test_poll_replies(hostile: Hostile, session, status, payload, outcome, provider_error) -> None:
    uri = hostile.answer("/token", status, payload)
    result = poll_device_token(
        session, NetDevicePoll(uri, "pub", None, b"dc-1", CLIENT_SECRET_POST)
    )
    assert (result.outcome, result.provider_error) == (outcome, provider_error)
    assert (result.token is not None) == (outcome == "ok")
    assert "\x00" not in result.message and "\ud800" not in result.message


def test_poll_clamps_expires_in(hostile: Hostile, session) -> None:
    doc = b'{"access_token": "at", "token_type": "Bearer", "expires_in": ' + b"9" * 400 + b"}"
    uri = hostile.answer("/token", 200, doc)
    result = poll_device_token(
        session, NetDevicePoll(uri, "pub", None, b"dc-1", CLIENT_SECRET_POST)
    )
    assert result.outcome == "ok" and result.token is not None
    assert result.token.expires_in == limits.MAX_SECONDS


def test_poll_sends_basic_and_no_secret_in_body(hostile: Hostile, session) -> None:
    uri = hostile.answer("/token", 400, {"error": "authorization_pending"})
    poll_device_token(
        session, NetDevicePoll(uri, "cid", b"s:e", bytearray(b"dc-1"), CLIENT_SECRET_BASIC)
    )
    _, _, headers, body = hostile.requests[-1]
    assert headers["Authorization"] == tokenclient.basic_credentials("cid", "s:e")
    assert urllib.parse.parse_qsl(body.decode()) == [
        ("grant_type", device.DEVICE_GRANT),
        ("device_code", "dc-1"),
        ("client_id", "cid"),
    ]


# -- metadata ----------------------------------------------------------------------------------


def endpoints(m: metadata.Metadata) -> tuple[str, str, str, str]:
    return (
        m.authorization_endpoint,
        m.token_endpoint,
        m.device_authorization_endpoint,
        m.revocation_endpoint,
    )


def test_metadata_openid(provider: Provider, session) -> None:
    m = fetch_metadata(session, NetMetadata(provider.issuer))
    assert (m.outcome, m.message) == ("ok", "")
    assert endpoints(m) == (
        provider.auth_uri,
        provider.token_uri,
        provider.device_auth_uri,
        provider.revoke_uri,
    )
    assert provider.metadata_fetches == ["/.well-known/openid-configuration"]


def test_metadata_falls_back_to_rfc8414(session) -> None:
    with Provider([Client("pub", None)], issuer_path="/tenant/v2.0") as p:
        p.metadata_not_found = {"openid-configuration"}
        m = fetch_metadata(session, NetMetadata(p.issuer))
        assert m.outcome == "ok", m.message
        assert m.token_endpoint == p.token_uri
        assert p.metadata_fetches == [
            "/tenant/v2.0/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant/v2.0",
        ]


def test_metadata_not_found_anywhere(session) -> None:
    with Provider([Client("pub", None)], issuer_path="/x") as p:
        p.metadata_not_found = set(("openid-configuration", "oauth-authorization-server"))
        m = fetch_metadata(session, NetMetadata(p.issuer))
        assert (m.outcome, m.message) == ("permanent", f"no metadata found for issuer {p.issuer}")
        assert endpoints(m) == ("", "", "", "")
        assert len(p.metadata_fetches) == 3  # both RFC 8414 forms differ under a path


def test_metadata_trailing_slash_in_issuer(provider: Provider, session) -> None:
    m = fetch_metadata(session, NetMetadata(provider.issuer + "/"))
    assert m.outcome == "permanent" and "is for issuer" in m.message  # exact match only
    assert provider.metadata_fetches == ["/.well-known/openid-configuration"]


@pytest.mark.parametrize("tenant", ["common", "organizations", "consumers", "9188040d-6c67"])
def test_metadata_microsoft_tenant_issuer(session, tenant) -> None:
    with Provider([Client("pub", None)], issuer_path=f"/{tenant}/v2.0") as p:
        p.metadata_tenant_issuer = True
        m = fetch_metadata(session, NetMetadata(p.issuer))
        assert m.outcome == "ok", m.message
        assert m.device_authorization_endpoint == p.device_auth_uri


def test_metadata_issuer_mismatch(provider: Provider, session) -> None:
    provider.metadata_issuer = "https://evil.example"
    m = fetch_metadata(session, NetMetadata(provider.issuer))
    assert m.outcome == "permanent"
    assert m.message == (
        f"metadata from {provider.issuer}/.well-known/openid-configuration is for issuer "
        f"'https://evil.example', not '{provider.issuer}'"
    )
    assert endpoints(m) == ("", "", "", "")


def test_metadata_dropped_endpoints(provider: Provider, session) -> None:
    provider.metadata_drop = {"revocation_endpoint", "device_authorization_endpoint"}
    m = fetch_metadata(session, NetMetadata(provider.issuer))
    assert m.outcome == "ok"
    assert endpoints(m) == (provider.auth_uri, provider.token_uri, "", "")


def test_metadata_rfc8414_fills_in_what_the_openid_document_lacks(
    provider: Provider, session
) -> None:
    provider.metadata_drop_from = {"openid-configuration": {"revocation_endpoint"}}
    m = fetch_metadata(session, NetMetadata(provider.issuer))
    assert m.outcome == "ok", m.message
    assert m.revocation_endpoint == provider.revoke_uri
    assert provider.metadata_fetches == [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ]


OPENID_PATH = "/.well-known/openid-configuration"
RFC8414_PATH = "/.well-known/oauth-authorization-server"


def test_metadata_fill_in_never_replaces_the_first_documents(hostile: Hostile, session) -> None:
    hostile.answer(OPENID_PATH, 200, metadata_doc(hostile))
    later = metadata_doc(
        hostile,
        token_endpoint="https://other.example/token",
        revocation_endpoint="https://example.com/revoke",
    )
    hostile.answer(RFC8414_PATH, 200, later)
    m = fetch_metadata(session, NetMetadata(hostile.base_url))
    assert endpoints(m) == (
        "http://127.0.0.1:1/auth",
        "https://example.com/token",  # the first document's
        "http://localhost:1/device",
        "https://example.com/revoke",  # only what it lacked
    )


@pytest.mark.parametrize(
    ("status", "later", "outcome"),
    [
        (503, b"", "transient"),  # asked again later rather than kept without it
        (200, {"issuer": "https://evil.example", "revocation_endpoint": "https://e/r"}, "ok"),
        (200, {"revocation_endpoint": "javascript:x"}, "ok"),
        (404, b"", "ok"),
    ],
)
def test_metadata_fill_in_that_fails(hostile: Hostile, session, status, later, outcome) -> None:
    hostile.answer(OPENID_PATH, 200, metadata_doc(hostile))
    if isinstance(later, dict):
        later = metadata_doc(hostile, **later)
    hostile.answer(RFC8414_PATH, status, later)
    m = fetch_metadata(session, NetMetadata(hostile.base_url))
    assert m.outcome == outcome, m.message
    if outcome == "ok":  # the first document alone
        assert m.token_endpoint == "https://example.com/token" and m.revocation_endpoint == ""


@pytest.mark.parametrize(
    ("published", "configured", "match"),
    [
        ("https://a.example", "https://a.example", True),
        ("https://a.example", "https://a.example/", False),
        ("https://a.example", "https://b.example", False),
        ("https://l.example/{tenantid}/v2.0", "https://l.example/common/v2.0", True),
        ("https://l.example/{tenantid}/v2.0", "https://l.example/9188040d-6c67/v2.0", True),
        ("https://l.example/{tenantid}/v2.0", "https://l.example/a/b/v2.0", False),
        ("https://l.example/{tenantid}/v2.0", "https://l.example//v2.0", False),
        ("https://l.example/{tenantid}/v2.0", "https://l.example/common/v2.1", False),
        ("https://l.example/{tenantid}/v2.0", "https://m.example/common/v2.0", False),
        ("https://l.example/{tenantid}", "https://l.example/common/v2.0", False),
        ("https://{tenantid}.example/v2.0", "https://l.example/v2.0", False),
        ("https://l.example/x{tenantid}/v2.0", "https://l.example/xcommon/v2.0", False),
        ("https://l.example/.*/v2.0", "https://l.example/common/v2.0", False),
    ],
)
def test_issuer_matches(published, configured, match) -> None:
    assert issuer_matches(published, configured) is match


def metadata_doc(hostile: Hostile, **change: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "issuer": hostile.base_url,
        "token_endpoint": "https://example.com/token",
        "authorization_endpoint": "http://127.0.0.1:1/auth",
        "device_authorization_endpoint": "http://localhost:1/device",
    }
    doc.update(change)
    return {k: v for k, v in doc.items() if v is not None}


def test_metadata_loopback_http_endpoints_allowed(hostile: Hostile, session) -> None:
    hostile.answer("/.well-known/openid-configuration", 200, metadata_doc(hostile))
    m = fetch_metadata(session, NetMetadata(hostile.base_url))
    assert m.outcome == "ok", m.message
    assert endpoints(m) == (
        "http://127.0.0.1:1/auth",
        "https://example.com/token",
        "http://localhost:1/device",
        "",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"token_endpoint": "http://example.com/token"},
        {"token_endpoint": "javascript:alert(1)"},
        {"token_endpoint": "https://example.com/t oken"},
        {"token_endpoint": "https://example.com/t\x00"},
        {"token_endpoint": "https://example.com/t#frag"},
        {"token_endpoint": "https://example.com:99999/t"},
        {"token_endpoint": "https://example.com/" + "a" * limits.MAX_URI},
        {"revocation_endpoint": 5},
        {"device_authorization_endpoint": ["https://example.com/"]},
        {"issuer": None},
        {"issuer": 1},
    ],
)
def test_metadata_bad_document(hostile: Hostile, session, change) -> None:
    hostile.answer("/.well-known/openid-configuration", 200, metadata_doc(hostile, **change))
    m = fetch_metadata(session, NetMetadata(hostile.base_url))
    assert m.outcome == "permanent"
    assert m.message.startswith(f"metadata from {hostile.base_url}/.well-known/")
    assert endpoints(m) == ("", "", "", "")


@pytest.mark.parametrize(
    ("status", "payload", "outcome", "message"),
    [
        (503, b"", "transient", "HTTP code 503"),
        (500, b"", "transient", "HTTP code 500"),
        (403, b"", "permanent", "HTTP code 403"),
        (301, b"", "permanent", "HTTP code 301"),
        (200, b"<html>", "permanent", "is not a JSON object"),
        (200, b'["issuer"]', "permanent", "is not a JSON object"),
        (200, b"[" * 100_000 + b"]" * 100_000, "permanent", "is not a JSON object"),
        (200, b'{"n": ' + b"9" * 5000 + b"}", "permanent", "is not a JSON object"),
        (200, b" " * (limits.MAX_REPLY_BODY + 1), "permanent", "too large"),
    ],
)
def test_metadata_hostile_replies(hostile: Hostile, session, status, payload, outcome, message):
    hostile.answer("/.well-known/openid-configuration", status, payload)
    m = fetch_metadata(session, NetMetadata(hostile.base_url))
    assert m.outcome == outcome
    assert message in m.message
    assert endpoints(m) == ("", "", "", "")


def test_metadata_mismatch_text_is_cleaned(hostile: Hostile, session) -> None:
    doc = metadata_doc(hostile, issuer="https://e\x00vil\u202e" + "x" * 5000)
    hostile.answer("/.well-known/openid-configuration", 200, doc)
    m = fetch_metadata(session, NetMetadata(hostile.base_url))
    assert m.outcome == "permanent"
    assert "\x00" not in m.message and "\u202e" not in m.message
    assert len(m.message) < limits.MAX_PROVIDER_TEXT + 500


def test_metadata_unreachable_is_transient(session, closed_port) -> None:
    m = fetch_metadata(session, NetMetadata(f"http://127.0.0.1:{closed_port}"))
    assert m.outcome == "transient" and "couldn't connect" in m.message


@pytest.mark.parametrize(
    "issuer", ["http://example.com", "ftp://127.0.0.1", "https://a.example/?q=1", "", "x" * 9000]
)
def test_metadata_refuses_bad_issuer_without_fetching(session, issuer) -> None:
    m = fetch_metadata(session, NetMetadata(issuer))
    assert m.outcome == "permanent" and "is not an https URL" in m.message


# -- revocation --------------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["pub", "basic", "post"])
def test_revoke_refresh_token(provider: Provider, session, client_id) -> None:
    access, refresh_token = device_token(provider, session, client_id)
    method = CLIENT_SECRET_BASIC if client_id == "basic" else CLIENT_SECRET_POST
    result = revoke_token(
        session,
        NetRevoke(
            provider.revoke_uri,
            client_id,
            secret_of(client_id),
            refresh_token.encode(),
            "refresh_token",
            method,
        ),
    )
    assert result == revoke.Revocation("ok")
    assert provider.revocations == [
        {
            "token": refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": client_id,
            "kind": "refresh_token",
        }
    ]
    assert not provider.is_active(refresh_token) and not provider.is_active(access)


def test_revoke_access_token_without_hint(provider: Provider, session) -> None:
    access, refresh_token = device_token(provider, session)
    result = revoke_token(session, NetRevoke(provider.revoke_uri, "pub", None, access.encode(), ""))
    assert result.outcome == "ok"
    assert provider.revocations[0]["token_type_hint"] == ""
    assert not provider.is_active(access) and provider.is_active(refresh_token)


def test_revoke_unknown_token_is_ok(provider: Provider, session) -> None:
    result = revoke_token(session, NetRevoke(provider.revoke_uri, "pub", None, b"never-issued", ""))
    assert result.outcome == "ok"
    assert provider.revocations[0]["kind"] == "unknown"


def test_revoke_other_clients_token(provider: Provider, session) -> None:
    _, refresh_token = device_token(provider, session)
    result = revoke_token(
        session,
        NetRevoke(
            provider.revoke_uri, "app", b"app-secret", refresh_token.encode(), "refresh_token"
        ),
    )
    assert (result.outcome, result.provider_error) == ("permanent", "unauthorized_client")
    assert result.message == "HTTP code 400 (unauthorized_client: token belongs to another client)"
    assert provider.is_active(refresh_token)


def test_revoke_wrong_secret(provider: Provider, session) -> None:
    result = revoke_token(session, NetRevoke(provider.revoke_uri, "app", b"nope-secret", b"t", ""))
    assert (result.outcome, result.provider_error) == ("permanent", "invalid_client")
    assert "nope-secret" not in result.message


def test_revoke_refuses_unknown_hint(provider: Provider, session) -> None:
    with pytest.raises(ValueError):
        revoke_token(session, NetRevoke(provider.revoke_uri, "pub", None, b"t", "id_token"))


@pytest.mark.parametrize(
    ("status", "payload", "outcome", "message"),
    [
        (503, b"", "transient", "HTTP code 503"),
        (502, b"<html>", "transient", "HTTP code 502"),
        (400, {"error": "invalid_token"}, "permanent", "HTTP code 400 (invalid_token)"),
        (
            400,
            {"error": "unsupported_token_type", "error_description": "no\x00pe"},
            "permanent",
            "HTTP code 400 (unsupported_token_type: no\ufffdpe)",
        ),
        (400, b"[" * 100_000, "permanent", "HTTP code 400"),
        (404, b"", "permanent", "HTTP code 404"),
    ],
)
def test_revoke_replies(hostile: Hostile, session, status, payload, outcome, message) -> None:
    uri = hostile.answer("/revoke", status, payload)
    result = revoke_token(session, NetRevoke(uri, "cid", b"sec", b"the-token", "refresh_token"))
    assert (result.outcome, result.message) == (outcome, message)
    _, _, headers, body = hostile.requests[-1]
    assert urllib.parse.parse_qsl(body.decode()) == [
        ("token", "the-token"),
        ("token_type_hint", "refresh_token"),
        ("client_id", "cid"),
        ("client_secret", "sec"),
    ]
    assert "Authorization" not in headers


def test_revoke_unreachable_is_transient(session, closed_port) -> None:
    uri = f"http://127.0.0.1:{closed_port}/revoke"
    result = revoke_token(session, NetRevoke(uri, "pub", None, b"t", ""))
    assert (result.outcome, result.message) == ("transient", f"couldn't connect to {uri}")


def test_revoke_oversized_reply(hostile: Hostile, session) -> None:
    uri = hostile.answer("/revoke", 200, b" " * (limits.MAX_REPLY_BODY + 1))
    result = revoke_token(session, NetRevoke(uri, "pub", None, b"t", ""))
    assert (result.outcome, result.message) == (
        "permanent",
        "response from revocation endpoint too large",
    )


# -- judging pieces of replies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (3600, 3600),
        (HUGE, limits.MAX_SECONDS),
        (float("inf"), limits.MAX_SECONDS),
        (5.7, 5),
        ("90", 90),
        ("9" * 400, limits.MAX_SECONDS),
        (-1, None),
        (float("nan"), None),
        (True, None),
        ("-5", None),
        ("٣", None),  # a digit, but not an ASCII one
        (None, None),
        ({}, None),
    ],
)
def test_seconds(value, expected) -> None:
    assert reply.seconds(value) == expected


def test_provider_text_bounds_on_a_character_boundary() -> None:
    text = reply.provider_text("é" * 2000)
    assert len(text.encode()) <= limits.MAX_PROVIDER_TEXT
    assert set(text) == {"é"}
    assert reply.provider_text("a\x00b\x7fc\u2028d\ud800") == "a\ufffdb\ufffdc\ufffdd\ufffd"
