#!/usr/bin/env python3
"""A small local OAuth2 authorisation server for testing and demonstrating pizauth.

Stdlib only, listens on 127.0.0.1 only.  It auto-approves every authorisation request (there is
no login page) but otherwise verifies what a real provider verifies: registered clients and
redirect URIs, PKCE (S256 only), single-use and short-lived authorisation codes, client
authentication at the token endpoint, refresh tokens (optionally rotated).  It also has a
device authorization endpoint (RFC 8628) whose user codes a test approves or denies (through
``approve_device``/``deny_device`` or the page at ``verification_uri``), authorization server
metadata (RFC 8414 and OpenID discovery) and a revocation endpoint (RFC 7009).

Used two ways:

* by the system tests, which import it (``from provider import Client, Provider``), configure
  knobs (``expires_in``, ``deny_next``, ``script_token_responses``) and inspect what pizauth sent
  (``token_requests``, ``authorize_requests``, ``errors``);
* as a "try it" demo: ``python examples/provider.py [--port N] [--expires-in S]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import html
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

HOST = "127.0.0.1"  # Never anything else: this server hands out tokens to whoever asks.
MAX_BODY = 64 * 1024
# RFC 6749 §5.1: token responses MUST NOT be cached.
_JSON_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}
CODE_LIFETIME = 60.0  # seconds; RFC 6749 §4.1.2 recommends at most 10 minutes.

# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) without padding is always 43 characters.
_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 7636 §4.1: 43-128 characters from the unreserved set.
_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
# RFC 8628 §6.1: user codes from consonants only, so they can't spell words or be misread.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_LIFETIME = 600  # seconds, the expires_in of a device authorization
DEVICE_INTERVAL = 5  # seconds; also what a client must assume when none is given (§3.2)
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), separated by single spaces.
_SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
METADATA_DOCUMENTS = ("openid-configuration", "oauth-authorization-server")
# Default redirect allow list: loopback, explicit port, path "/" (RFC 8252 §7.3 style).
_LOOPBACK_REDIRECT_RE = re.compile(r"http://(?:localhost|127\.0\.0\.1):([0-9]{1,5})/")


@dataclass
class Client:
    client_id: str
    client_secret: str | None  # None = public client (no secret required)
    # Exact-match allow list; empty = any http://localhost:PORT/ or http://127.0.0.1:PORT/.
    redirect_uris: tuple[str, ...] = ()
    # "client_secret_post" or "client_secret_basic" (RFC 8414 names): the only way this
    # client may send its secret.  None accepts either.
    token_endpoint_auth_method: str | None = None
    # Scopes this client may ask for at the device endpoint; None = any well-formed scope.
    allowed_scopes: tuple[str, ...] | None = None


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    issued_at: float
    used: bool = False


@dataclass
class _DeviceCode:
    client_id: str
    scope: str
    user_code: str
    expires_at: float  # monotonic
    interval: int  # seconds; grows by 5 on every slow_down
    status: str = "pending"  # "pending", "approved" or "denied"
    used: bool = False
    last_poll: float | None = None
    polls: list[float] | None = None  # monotonic times of every token request for it


@dataclass
class _AccessToken:
    client_id: str
    family: str  # the authorisation code this token descends from
    expires_at: float | None  # monotonic; None = never expires


@dataclass
class _RefreshToken:
    client_id: str
    family: str
    scope: str


class _TokenError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge for ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _loopback_redirect_ok(uri: str) -> bool:
    m = _LOOPBACK_REDIRECT_RE.fullmatch(uri)
    return m is not None and 1 <= int(m.group(1)) <= 65535


def _single_valued(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """First value of each parameter, plus the names that were repeated.

    RFC 6749 §3.1: parameters MUST NOT be included more than once.
    """
    out: dict[str, str] = {}
    dups: list[str] = []
    for k, v in pairs:
        if k in out:
            if k not in dups:
                dups.append(k)
        else:
            out[k] = v
    return out, dups


class Provider:
    """An OAuth2 authorisation server on 127.0.0.1, serving in a daemon thread."""

    def __init__(
        self,
        clients: Sequence[Client],
        *,
        expires_in: int | None = 3600,
        issue_refresh_tokens: bool = True,
        rotate_refresh_tokens: bool = False,
        token_type: str = "Bearer",
        port: int = 0,
        device_interval: int | None = DEVICE_INTERVAL,
        verification_uri_complete: bool = True,
        issuer_path: str = "",
    ) -> None:
        self._clients = {c.client_id: c for c in clients}
        if len(self._clients) != len(clients):
            raise ValueError("duplicate client_id")
        self.issue_refresh_tokens = issue_refresh_tokens
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.token_type = token_type
        self._port = port
        self.code_lifetime = CODE_LIFETIME  # seconds; tests may lower it to exercise expiry
        # Device flow knobs.  device_interval None: the reply has no interval (clients use 5).
        self.device_interval = device_interval
        self.device_code_lifetime: float = DEVICE_CODE_LIFETIME
        self.verification_uri_complete = verification_uri_complete
        # Polls this much early are tolerated (loopback timing jitter), no more.
        self.device_poll_slack = 0.1
        # Metadata knobs: the issuer is base_url + issuer_path (no trailing slash).
        if issuer_path and (not issuer_path.startswith("/") or issuer_path.endswith("/")):
            raise ValueError("issuer_path must start with '/' and not end with one")
        self.issuer_path = issuer_path
        self.metadata_not_found: set[str] = set()  # names from METADATA_DOCUMENTS
        self.metadata_issuer: str | None = None  # served instead of the real issuer
        # Microsoft style: the first segment of issuer_path is served as "{tenantid}".
        self.metadata_tenant_issuer = False
        self.metadata_drop: set[str] = set()  # endpoint names left out of the document
        # oauthlib (django-oauth-toolkit) style: a device authorization request must name
        # its client_id in the body, even when the client authenticates with HTTP Basic.
        self.device_requires_client_id = False
        # The Retry-After header (RFC 9110 §10.2.3) of scripted 429 and 503 /token replies
        # and of the 503 of fail_next_revocations; None sends none.
        self.retry_after: str | None = None
        # Endpoint names left out of one document only, by its name in METADATA_DOCUMENTS
        # (an OpenID document without revocation_endpoint that RFC 8414's has, say).
        self.metadata_drop_from: dict[str, set[str]] = {}

        self._lock = threading.Lock()
        # One Condition on the same lock: waiters see every state change atomically.
        self._cond = threading.Condition(self._lock)
        self._expires_in = expires_in
        self._deny_next = 0
        self._fail_revocations = 0
        self._scripted: deque[tuple[int, bytes]] = deque()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._revoked_families: set[str] = set()
        self._token_requests: list[dict[str, str]] = []
        self._authorize_requests: list[dict[str, str]] = []
        self._issued_access_tokens: list[str] = []
        self._errors: list[str] = []
        self._device_codes: dict[str, _DeviceCode] = {}
        self._device_requests: list[dict[str, str]] = []
        self._metadata_fetches: list[str] = []
        self._revoked_access: set[str] = set()
        self._revocations: list[dict[str, str]] = []

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Provider:
        if self._server is not None:
            raise RuntimeError("provider already started")
        server = _Server((HOST, self._port), _Handler)
        server.provider = self
        stopping = threading.Event()
        self._server, self._stopping = server, stopping
        self._thread = threading.Thread(
            target=self._serve,
            args=(server, stopping),
            name=f"oauth2-provider-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    @staticmethod
    def _serve(server: _Server, stopping: threading.Event) -> None:
        # Not serve_forever(): its poll interval would make every stop() take that long.  Here
        # handle_request() blocks until a connection arrives and stop() wakes it with one.
        while not stopping.is_set():
            server.handle_request()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        try:
            socket.create_connection(server.server_address[:2], timeout=5).close()
        except OSError:
            pass  # the loop is not blocked in accept, so it will see the flag anyway
        thread.join()
        server.server_close()
        self._server = self._thread = None

    def __enter__(self) -> Provider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("provider not started")
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def auth_uri(self) -> str:
        return self.base_url + "/authorize"

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"

    @property
    def device_auth_uri(self) -> str:
        return self.base_url + "/device_authorization"

    @property
    def verification_uri(self) -> str:
        return self.base_url + "/device"

    @property
    def revoke_uri(self) -> str:
        return self.base_url + "/revoke"

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    # -- knobs -----------------------------------------------------------------------------------

    @property
    def expires_in(self) -> int | None:
        with self._lock:
            return self._expires_in

    @expires_in.setter
    def expires_in(self, value: int | None) -> None:
        with self._lock:
            self._expires_in = value

    @property
    def deny_next(self) -> int:
        with self._lock:
            return self._deny_next

    @deny_next.setter
    def deny_next(self, value: int) -> None:
        if value < 0:
            raise ValueError("deny_next must be >= 0")
        with self._lock:
            self._deny_next = value

    @property
    def fail_next_revocations(self) -> int:
        """How many of the next /revoke requests are still to be answered 503
        temporarily_unavailable (RFC 7009 §2.2.1) without revoking anything."""
        with self._lock:
            return self._fail_revocations

    @fail_next_revocations.setter
    def fail_next_revocations(self, value: int) -> None:
        if value < 0:
            raise ValueError("fail_next_revocations must be >= 0")
        with self._lock:
            self._fail_revocations = value

    def script_token_responses(self, *responses: tuple[int, str | bytes]) -> None:
        """Answer the next ``len(responses)`` /token requests with these, unprocessed."""
        with self._lock:
            for status, body in responses:
                self._scripted.append((status, body.encode() if isinstance(body, str) else body))

    # -- observations (snapshots, so callers never see a list mutate under them) -----------------

    @property
    def token_requests(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(r) for r in self._token_requests]

    @property
    def authorize_requests(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(r) for r in self._authorize_requests]

    @property
    def issued_access_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issued_access_tokens)

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def wait_for_token_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` /token requests have been processed; False on timeout.

        A request counts once its outcome is decided (tokens issued or error recorded), which
        may be a moment before the response bytes reach the client.
        """
        with self._cond:
            return self._cond.wait_for(lambda: len(self._token_requests) >= n, timeout)

    def is_valid_access_token(self, token: str) -> bool:
        with self._lock:
            return self._access_active(token)

    def _access_active(self, token: str) -> bool:
        at = self._access.get(token)
        if at is None or at.family in self._revoked_families or token in self._revoked_access:
            return False
        return at.expires_at is None or time.monotonic() < at.expires_at

    def is_active(self, token: str) -> bool:
        """Introspection (RFC 7662 style): an unexpired, unrevoked access or refresh token."""
        with self._lock:
            if self._access_active(token):
                return True
            rt = self._refresh.get(token)
            return rt is not None and rt.family not in self._revoked_families

    # -- device flow: observations and the user's side -------------------------------------------

    @property
    def device_requests(self) -> list[dict[str, str]]:
        """The form of every device authorization request, in order."""
        with self._lock:
            return [dict(r) for r in self._device_requests]

    @property
    def user_codes(self) -> list[str]:
        """User codes issued so far, oldest first."""
        with self._lock:
            return [dc.user_code for dc in self._device_codes.values()]

    def wait_for_device_requests(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._device_requests) >= n, timeout)

    def _device_by_user_code(self, user_code: str) -> _DeviceCode:
        # Users type codes in any case, with or without the dash (RFC 8628 §6.1).
        wanted = user_code.upper().replace("-", "").replace(" ", "")
        for dc in self._device_codes.values():
            if dc.user_code.replace("-", "") == wanted:
                return dc
        raise KeyError(user_code)

    def _decide_device(self, user_code: str, status: str) -> None:
        with self._cond:
            dc = self._device_by_user_code(user_code)
            if dc.status != "pending" or dc.used or time.monotonic() >= dc.expires_at:
                raise ValueError(f"user code {user_code!r} is no longer pending")
            dc.status = status
            self._cond.notify_all()

    def approve_device(self, user_code: str) -> None:
        """The user logs in and approves; KeyError if unknown, ValueError if not pending."""
        self._decide_device(user_code, "approved")

    def deny_device(self, user_code: str) -> None:
        """The user refuses; the next poll gets access_denied."""
        self._decide_device(user_code, "denied")

    def expire_device(self, user_code: str) -> None:
        """Make the device code expire now."""
        with self._cond:
            self._device_by_user_code(user_code).expires_at = time.monotonic()

    def device_polls(self, user_code: str) -> list[float]:
        """time.monotonic() of every token request made with this user code's device code."""
        with self._lock:
            return list(self._device_by_user_code(user_code).polls or [])

    def device_interval_of(self, user_code: str) -> int:
        """The interval now required between polls (after any slow_down)."""
        with self._lock:
            return self._device_by_user_code(user_code).interval

    # -- metadata and revocation: observations ---------------------------------------------------

    @property
    def metadata_fetches(self) -> list[str]:
        """The path of every metadata request, including those answered 404."""
        with self._lock:
            return list(self._metadata_fetches)

    @property
    def revocations(self) -> list[dict[str, str]]:
        """Each accepted revocation request: token, token_type_hint ("" if none), client_id
        and kind ("access_token", "refresh_token" or "unknown")."""
        with self._lock:
            return [dict(r) for r in self._revocations]

    def wait_for_revocations(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._revocations) >= n, timeout)

    # -- /authorize ------------------------------------------------------------------------------

    def _authorize(self, query: str) -> tuple[int, dict[str, str], bytes]:
        """Returns (status, headers, body)."""
        params, dups = _single_valued(parse_qsl(query, keep_blank_values=True))
        with self._lock:
            self._authorize_requests.append(dict(params))
            reason = self._check_authorize(params, dups)
            if reason is not None:
                self._errors.append(f"/authorize: {reason}")
                # Never redirect on these errors: the redirect_uri may be an attacker's (§4.1.2.1).
                return 400, {"Content-Type": "text/plain; charset=utf-8"}, reason.encode() + b"\n"
            redirect_uri, state = params["redirect_uri"], params["state"]
            if self._deny_next > 0:
                self._deny_next -= 1
                reply = {"error": "access_denied", "state": state}
            else:
                code = "code-" + secrets.token_urlsafe(24)
                self._codes[code] = _Code(
                    client_id=params["client_id"],
                    redirect_uri=redirect_uri,
                    challenge=params["code_challenge"],
                    scope=params.get("scope", ""),
                    issued_at=time.monotonic(),
                )
                reply = {"code": code, "state": state}
        sep = "&" if "?" in redirect_uri else "?"
        return 302, {"Location": redirect_uri + sep + urlencode(reply)}, b""

    def _check_authorize(self, p: dict[str, str], dups: list[str]) -> str | None:
        """The reason the request is refused, or None.  Caller holds the lock."""
        if dups:
            return f"repeated parameter(s): {', '.join(dups)}"
        if p.get("response_type") != "code":
            return f"response_type must be 'code', got {p.get('response_type')!r}"
        client = self._clients.get(p.get("client_id", ""))
        if client is None:
            return f"unknown client_id {p.get('client_id')!r}"
        redirect_uri = p.get("redirect_uri")
        if redirect_uri is None:
            return "missing redirect_uri"
        allowed = (
            redirect_uri in client.redirect_uris
            if client.redirect_uris
            else _loopback_redirect_ok(redirect_uri)
        )
        if not allowed:
            return f"redirect_uri {redirect_uri!r} not registered for {client.client_id!r}"
        if "code_challenge" not in p:
            return "missing code_challenge (PKCE is required)"
        if not _CHALLENGE_RE.fullmatch(p["code_challenge"]):
            return "code_challenge is not 43 base64url characters"
        if p.get("code_challenge_method") != "S256":
            return f"code_challenge_method must be 'S256', got {p.get('code_challenge_method')!r}"
        if not p.get("state"):
            return "missing state"
        return None

    # -- /token ----------------------------------------------------------------------------------

    def _token(
        self, params: dict[str, str], dups: list[str], authorization: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._token_requests.append(dict(params))
            try:
                if self._scripted:
                    status, body = self._scripted.popleft()
                    headers = {"Content-Type": "application/json"}
                    if status in (429, 503) and self.retry_after is not None:
                        headers["Retry-After"] = self.retry_after
                    return status, headers, body
                try:
                    payload = self._token_locked(params, dups, authorization)
                except _TokenError as e:
                    self._errors.append(f"/token: {e.error}: {e.description}")
                    err = {"error": e.error, "error_description": e.description}
                    return e.status, {**e.headers, **_JSON_HEADERS}, json.dumps(err).encode()
                return 200, dict(_JSON_HEADERS), json.dumps(payload).encode()
            finally:
                # Notify last so a waiter that wakes can already see the tokens issued.
                self._cond.notify_all()

    def _record_transport_error(self, status: int, error: str, description: str) -> bytes:
        """For /token requests rejected before their form could be parsed."""
        with self._lock:
            self._token_requests.append({})
            self._errors.append(f"/token: {error}: {description}")
            self._cond.notify_all()
        return json.dumps({"error": error, "error_description": description}).encode()

    def _record_error(self, endpoint: str) -> Callable[[int, str, str], bytes]:
        """A recorder for requests to `endpoint` rejected before their form was parsed."""

        def record(status: int, error: str, description: str) -> bytes:
            with self._lock:
                self._errors.append(f"{endpoint}: {error}: {description}")
            return json.dumps({"error": error, "error_description": description}).encode()

        return record

    def _authenticate(self, params: dict[str, str], authorization: str | None) -> Client:
        """client_secret_basic or client_secret_post (RFC 6749 §2.3.1)."""
        basic: tuple[str, str] | None = None
        if authorization is not None:
            scheme, _, cred = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise _TokenError(401, "invalid_client", f"unsupported auth scheme {scheme!r}")
            try:
                raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _TokenError(401, "invalid_client", "malformed Basic credentials") from None
            user, sep, pw = raw.partition(":")
            if not sep:
                raise _TokenError(401, "invalid_client", "malformed Basic credentials")
            # §2.3.1: both halves are form-urlencoded before being joined.
            basic = (unquote(user.replace("+", " ")), unquote(pw.replace("+", " ")))

        if basic is not None:
            if "client_secret" in params:
                raise _TokenError(400, "invalid_request", "more than one client auth method")
            if params.get("client_id", basic[0]) != basic[0]:
                raise _TokenError(400, "invalid_request", "client_id differs from Basic user")
            client_id, secret = basic
            challenge = {"WWW-Authenticate": 'Basic realm="token"'}  # §5.2: MUST on Basic 401
        else:
            if "client_id" not in params:
                raise _TokenError(401, "invalid_client", "no client authentication")
            client_id, secret = params["client_id"], params.get("client_secret")
            challenge = {}

        client = self._clients.get(client_id)
        if client is None:
            raise _TokenError(401, "invalid_client", f"unknown client {client_id!r}", challenge)
        method = client.token_endpoint_auth_method
        if method == "client_secret_post" and basic is not None:
            raise _TokenError(
                401, "invalid_client", "client must use client_secret_post", challenge
            )
        if method == "client_secret_basic" and basic is None and client.client_secret is not None:
            raise _TokenError(401, "invalid_client", "client must use client_secret_basic")
        if client.client_secret is not None:
            if secret is None:
                raise _TokenError(401, "invalid_client", "missing client_secret", challenge)
            if not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
                raise _TokenError(401, "invalid_client", "wrong client_secret", challenge)
        return client

    def _token_locked(
        self, p: dict[str, str], dups: list[str], authorization: str | None
    ) -> dict[str, Any]:
        if dups:
            raise _TokenError(400, "invalid_request", f"repeated parameter(s): {', '.join(dups)}")
        client = self._authenticate(p, authorization)
        grant_type = p.get("grant_type")
        if grant_type is None:
            raise _TokenError(400, "invalid_request", "missing grant_type")
        if grant_type == "authorization_code":
            return self._grant_code(client, p)
        if grant_type == "refresh_token":
            return self._grant_refresh(client, p)
        if grant_type == DEVICE_GRANT:
            return self._grant_device(client, p)
        raise _TokenError(400, "unsupported_grant_type", f"grant_type {grant_type!r}")

    def _grant_code(self, client: Client, p: dict[str, str]) -> dict[str, Any]:
        for name in ("code", "redirect_uri", "code_verifier"):
            if name not in p:
                raise _TokenError(400, "invalid_request", f"missing {name}")
        code = self._codes.get(p["code"])
        if code is None:
            raise _TokenError(400, "invalid_grant", "unknown authorization code")
        if code.client_id != client.client_id:
            raise _TokenError(400, "invalid_grant", "code was issued to another client")
        if code.used:
            # RFC 6749 §4.1.2: a replayed code suggests theft; revoke what it produced.
            self._revoked_families.add(p["code"])
            raise _TokenError(400, "invalid_grant", "code already used; its tokens are revoked")
        if time.monotonic() - code.issued_at > self.code_lifetime:
            raise _TokenError(400, "invalid_grant", "code expired")
        if p["redirect_uri"] != code.redirect_uri:
            raise _TokenError(400, "invalid_grant", "redirect_uri differs from /authorize")
        verifier = p["code_verifier"]
        if not _VERIFIER_RE.fullmatch(verifier):
            raise _TokenError(400, "invalid_grant", "malformed code_verifier")
        if not hmac.compare_digest(s256(verifier), code.challenge):
            raise _TokenError(400, "invalid_grant", "code_verifier does not match code_challenge")
        # Only a fully verified exchange consumes the code, so a failed attempt can be retried.
        code.used = True
        return self._issue(client, p["code"], code.scope, new_refresh=self.issue_refresh_tokens)

    def _grant_refresh(self, client: Client, p: dict[str, str]) -> dict[str, Any]:
        if "refresh_token" not in p:
            raise _TokenError(400, "invalid_request", "missing refresh_token")
        rt = self._refresh.get(p["refresh_token"])
        if rt is None or rt.family in self._revoked_families:
            raise _TokenError(400, "invalid_grant", "unknown or revoked refresh token")
        if rt.client_id != client.client_id:
            raise _TokenError(400, "invalid_grant", "refresh token was issued to another client")
        if "scope" in p and not set(p["scope"].split()) <= set(rt.scope.split()):
            raise _TokenError(400, "invalid_scope", "scope exceeds the original grant")
        if self.rotate_refresh_tokens:
            del self._refresh[p["refresh_token"]]
        return self._issue(client, rt.family, rt.scope, new_refresh=self.rotate_refresh_tokens)

    def _grant_device(self, client: Client, p: dict[str, str]) -> dict[str, Any]:
        if "device_code" not in p:
            raise _TokenError(400, "invalid_request", "missing device_code")
        dc = self._device_codes.get(p["device_code"])
        if dc is None:
            raise _TokenError(400, "invalid_grant", "unknown device code")
        if dc.client_id != client.client_id:
            raise _TokenError(400, "invalid_grant", "device code was issued to another client")
        now = time.monotonic()
        assert dc.polls is not None
        dc.polls.append(now)
        if dc.used:
            raise _TokenError(400, "invalid_grant", "device code already used")
        if now >= dc.expires_at:
            raise _TokenError(400, "expired_token", "device code expired")
        too_soon = dc.last_poll is not None and now - dc.last_poll < dc.interval - (
            self.device_poll_slack
        )
        dc.last_poll = now
        if too_soon:
            dc.interval += 5  # RFC 8628 §3.5
            raise _TokenError(400, "slow_down", f"poll at most every {dc.interval} s")
        if dc.status == "pending":
            raise _TokenError(400, "authorization_pending", "the user has not decided yet")
        dc.used = True  # a decision is final either way
        if dc.status == "denied":
            raise _TokenError(400, "access_denied", "the user denied the request")
        family = "device-" + secrets.token_urlsafe(12)
        return self._issue(client, family, dc.scope, new_refresh=self.issue_refresh_tokens)

    # -- /device_authorization (RFC 8628 §3.1) ---------------------------------------------------

    def _device_authorization(
        self, params: dict[str, str], dups: list[str], authorization: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        with self._cond:
            self._device_requests.append(dict(params))
            try:
                payload = self._device_authorization_locked(params, dups, authorization)
            except _TokenError as e:
                self._errors.append(f"/device_authorization: {e.error}: {e.description}")
                err = {"error": e.error, "error_description": e.description}
                return e.status, {**e.headers, **_JSON_HEADERS}, json.dumps(err).encode()
            finally:
                self._cond.notify_all()
            return 200, dict(_JSON_HEADERS), json.dumps(payload).encode()

    def _device_authorization_locked(
        self, p: dict[str, str], dups: list[str], authorization: str | None
    ) -> dict[str, Any]:
        if dups:
            raise _TokenError(400, "invalid_request", f"repeated parameter(s): {', '.join(dups)}")
        if self.device_requires_client_id and "client_id" not in p:
            raise _TokenError(400, "invalid_request", "Missing client_id parameter.")
        client = self._authenticate(p, authorization)
        scope = p.get("scope", "")
        if scope and not _SCOPE_RE.fullmatch(scope):
            raise _TokenError(400, "invalid_scope", "malformed scope")
        if client.allowed_scopes is not None and not set(scope.split()) <= set(
            client.allowed_scopes
        ):
            raise _TokenError(400, "invalid_scope", "scope not allowed for this client")
        device_code = "dc-" + secrets.token_urlsafe(24)
        raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
        user_code = raw[:4] + "-" + raw[4:]
        interval = DEVICE_INTERVAL if self.device_interval is None else self.device_interval
        lifetime = self.device_code_lifetime
        self._device_codes[device_code] = _DeviceCode(
            client.client_id,
            scope,
            user_code,
            time.monotonic() + lifetime,
            interval,
            polls=[],
        )
        payload: dict[str, Any] = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_uri,
            "expires_in": int(lifetime),
        }
        if self.verification_uri_complete:
            payload["verification_uri_complete"] = (
                self.verification_uri + "?" + urlencode({"user_code": user_code})
            )
        if self.device_interval is not None:
            payload["interval"] = self.device_interval
        return payload

    # -- /device: the page a person (or a test's browser) enters the user code on ----------------

    def _device_page(self, query: str) -> tuple[int, dict[str, str], bytes]:
        params = dict(parse_qsl(query))
        code = html.escape(params.get("user_code", ""), quote=True)
        body = (
            "<!doctype html><title>Device login</title>"
            '<form method="post" action="/device">'
            f'<label>Code <input name="user_code" value="{code}"></label>'
            '<button name="action" value="approve">Approve</button>'
            '<button name="action" value="deny">Deny</button></form>'
        )
        return 200, {"Content-Type": "text/html; charset=utf-8"}, body.encode()

    def _device_decision(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        action = params.get("action", "approve")
        if action not in ("approve", "deny"):
            return 400, _TEXT, b"action must be approve or deny\n"
        try:
            self._decide_device(
                params.get("user_code", ""), "approved" if action == "approve" else "denied"
            )
        except KeyError:
            return 400, _TEXT, b"unknown user code\n"
        except ValueError:
            return 400, _TEXT, b"this code is no longer pending\n"
        return 200, _TEXT, (b"approved\n" if action == "approve" else b"denied\n")

    # -- metadata (RFC 8414, OpenID Connect Discovery) -------------------------------------------

    def _metadata(self, path: str) -> tuple[int, dict[str, str], bytes] | None:
        """The answer for a metadata path, or None if `path` is not one."""
        for name in METADATA_DOCUMENTS:
            suffix = "/.well-known/" + name
            # Appended to the issuer (OpenID style), or inserted before its path (RFC 8414 §3).
            if path not in (self.issuer_path + suffix, suffix + self.issuer_path):
                continue
            with self._lock:
                self._metadata_fetches.append(path)
                if name in self.metadata_not_found:
                    return 404, _TEXT, b"not found\n"
                issuer = self.issuer
                if self.metadata_tenant_issuer:
                    rest = self.issuer_path.split("/", 2)[2:]  # drop "" and the first segment
                    issuer = self.base_url + "/{tenantid}" + "".join("/" + r for r in rest)
                if self.metadata_issuer is not None:
                    issuer = self.metadata_issuer
                doc: dict[str, Any] = {
                    "issuer": issuer,
                    "authorization_endpoint": self.auth_uri,
                    "token_endpoint": self.token_uri,
                    "device_authorization_endpoint": self.device_auth_uri,
                    "revocation_endpoint": self.revoke_uri,
                    "response_types_supported": ["code"],
                    "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "client_secret_basic",
                    ],
                }
                for key in self.metadata_drop | self.metadata_drop_from.get(name, set()):
                    doc.pop(key, None)
            return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()
        return None

    # -- /revoke (RFC 7009) ----------------------------------------------------------------------

    def _revoke(
        self, params: dict[str, str], dups: list[str], authorization: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        with self._cond:
            try:
                if self._fail_revocations:
                    self._fail_revocations -= 1
                    self._cond.notify_all()
                    wait = {} if self.retry_after is None else {"Retry-After": self.retry_after}
                    raise _TokenError(503, "temporarily_unavailable", "try again later", wait)
                if dups:
                    raise _TokenError(
                        400, "invalid_request", f"repeated parameter(s): {', '.join(dups)}"
                    )
                client = self._authenticate(params, authorization)
                if "token" not in params:
                    raise _TokenError(400, "invalid_request", "missing token")
                token = params["token"]
                rt, at = self._refresh.get(token), self._access.get(token)
                owner = rt.client_id if rt else at.client_id if at else None
                if owner is not None and owner != client.client_id:
                    raise _TokenError(400, "unauthorized_client", "token belongs to another client")
            except _TokenError as e:
                self._errors.append(f"/revoke: {e.error}: {e.description}")
                err = {"error": e.error, "error_description": e.description}
                return e.status, {**e.headers, **_JSON_HEADERS}, json.dumps(err).encode()
            if rt is not None:
                # §2.1: revoking a refresh token also ends the access tokens of its grant.
                self._revoked_families.add(rt.family)
                kind = "refresh_token"
            elif at is not None:
                self._revoked_access.add(token)
                kind = "access_token"
            else:
                kind = "unknown"  # §2.2: an unknown token is not an error
            self._revocations.append(
                {
                    "token": token,
                    "token_type_hint": params.get("token_type_hint", ""),
                    "client_id": client.client_id,
                    "kind": kind,
                }
            )
            self._cond.notify_all()
        return 200, dict(_JSON_HEADERS), b""

    def _issue(
        self, client: Client, family: str, scope: str, *, new_refresh: bool
    ) -> dict[str, Any]:
        # Prefixes make tokens easy to spot in memory dumps and logs.
        access = "at-" + secrets.token_urlsafe(24)
        now = time.monotonic()
        expires_in = self._expires_in
        self._access[access] = _AccessToken(
            client.client_id, family, None if expires_in is None else now + expires_in
        )
        self._issued_access_tokens.append(access)
        payload: dict[str, Any] = {"access_token": access, "token_type": self.token_type}
        if expires_in is not None:
            payload["expires_in"] = expires_in
        if new_refresh:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self._refresh[refresh] = _RefreshToken(client.client_id, family, scope)
            payload["refresh_token"] = refresh
        payload["scope"] = scope
        return payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    timeout = None  # handle_request() waits for a connection indefinitely
    request_queue_size = 64  # parallel test clients must not see refused connections
    provider: Provider

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-request is normal in tests; anything else is a bug worth seeing.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        with self.provider._lock:
            self.provider._errors.append(f"internal error: {exc!r}")


_POST_ONLY = frozenset({"/token", "/device_authorization", "/revoke"})


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a stalled client must not pin a thread forever
    server_version = "pizauth-test-provider"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the demo don't want per-request noise on stderr

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _text(self, status: int, text: str) -> None:
        self._send(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode() + b"\n")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        provider = self.server.provider
        if url.path == "/authorize":
            self._send(*provider._authorize(url.query))
        elif url.path == "/device":
            self._send(*provider._device_page(url.query))
        elif url.path in _POST_ONLY:
            self._send(405, {"Allow": "POST"}, b"")
        else:
            answer = provider._metadata(url.path)
            if answer is None:
                self._text(404, "not found")
            else:
                self._send(*answer)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        provider = self.server.provider
        if path == "/authorize":
            self._send(405, {"Allow": "GET"}, b"")
        elif path == "/token":
            self._post_form(provider._token, provider._record_transport_error)
        elif path == "/device_authorization":
            self._post_form(
                provider._device_authorization, provider._record_error("/device_authorization")
            )
        elif path == "/revoke":
            self._post_form(provider._revoke, provider._record_error("/revoke"))
        elif path == "/device":
            self._post_form(
                lambda params, dups, _auth: provider._device_decision(params),
                provider._record_error("/device"),
            )
        else:
            self._text(404, "not found")

    def _post_form(
        self,
        handle: Callable[
            [dict[str, str], list[str], str | None], tuple[int, dict[str, str], bytes]
        ],
        record: Callable[[int, str, str], bytes],
    ) -> None:
        """Read a form body within bounds and pass it to `handle`; malformed bodies are
        answered here, as an RFC 6749 §5.2 error that `record` notes."""

        def reject(status: int, error: str, description: str) -> None:
            self.close_connection = True  # the body may be unread
            body = record(status, error, description)
            self._send(status, dict(_JSON_HEADERS), body)

        length_hdr = self.headers.get("Content-Length")
        if length_hdr is None or not length_hdr.isdigit():
            return reject(411, "invalid_request", "missing or malformed Content-Length")
        length = int(length_hdr)
        if length > MAX_BODY:
            return reject(413, "invalid_request", f"body over {MAX_BODY} bytes")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return reject(400, "invalid_request", f"Content-Type {ctype!r} is not a form")
        raw = self.rfile.read(length)
        if len(raw) != length:
            return reject(400, "invalid_request", "body shorter than Content-Length")
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return reject(400, "invalid_request", "body is not a UTF-8 form")
        params, dups = _single_valued(pairs)
        self._send(*handle(params, dups, self.headers.get("Authorization")))


# -- demo --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Local OAuth2 provider for trying pizauth.")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    ap.add_argument("--expires-in", type=int, default=3600, help="access token lifetime, seconds")
    args = ap.parse_args(argv)

    stop = threading.Event()

    def on_sigterm(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    client = Client("demo-client", "demo-secret")
    with Provider([client], expires_in=args.expires_in, port=args.port) as provider:
        print(f"auth_uri:        {provider.auth_uri}")
        print(f"token_uri:       {provider.token_uri}")
        print(f"device_auth_uri: {provider.device_auth_uri}")
        print(f"revoke_uri:      {provider.revoke_uri}")
        print(f"issuer:          {provider.issuer}")
        print(
            f"""
Example pizauth.conf:

account "demo" {{
    auth_uri = "{provider.auth_uri}";
    token_uri = "{provider.token_uri}";
    client_id = "{client.client_id}";
    client_secret = "{client.client_secret}";
}}

account "demo-device" {{
    auth_flow = "device";
    device_auth_uri = "{provider.device_auth_uri}";
    token_uri = "{provider.token_uri}";
    client_id = "{client.client_id}";
    client_secret = "{client.client_secret}";
}}

Authorisation requests are approved automatically; a device login is approved
on the page at its URL. Ctrl-C to stop.""",
            flush=True,
        )
        try:
            while not stop.wait(1.0):  # a timed wait keeps Ctrl-C responsive everywhere
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
