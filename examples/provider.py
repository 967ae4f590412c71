#!/usr/bin/env python3
"""A small local OAuth2 authorisation server for testing and demonstrating pizauth.

Stdlib only, listens on 127.0.0.1 only.  It auto-approves every authorisation request (there is
no login page) but otherwise verifies what a real provider verifies: registered clients and
redirect URIs, PKCE (S256 only), single-use and short-lived authorisation codes, client
authentication at the token endpoint, refresh tokens (optionally rotated).

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
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
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
CODE_LIFETIME = 60.0  # seconds; RFC 6749 §4.1.2 recommends at most 10 minutes.

# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) without padding is always 43 characters.
_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 7636 §4.1: 43-128 characters from the unreserved set.
_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
# Default redirect allow list: loopback, explicit port, path "/" (RFC 8252 §7.3 style).
_LOOPBACK_REDIRECT_RE = re.compile(r"http://(?:localhost|127\.0\.0\.1):([0-9]{1,5})/")


@dataclass
class Client:
    client_id: str
    client_secret: str | None  # None = public client (no secret required)
    # Exact-match allow list; empty = any http://localhost:PORT/ or http://127.0.0.1:PORT/.
    redirect_uris: tuple[str, ...] = ()


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    issued_at: float
    used: bool = False


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
    ) -> None:
        self._clients = {c.client_id: c for c in clients}
        if len(self._clients) != len(clients):
            raise ValueError("duplicate client_id")
        self.issue_refresh_tokens = issue_refresh_tokens
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.token_type = token_type
        self._port = port
        self.code_lifetime = CODE_LIFETIME  # seconds; tests may lower it to exercise expiry

        self._lock = threading.Lock()
        # One Condition on the same lock: waiters see every state change atomically.
        self._cond = threading.Condition(self._lock)
        self._expires_in = expires_in
        self._deny_next = 0
        self._scripted: deque[tuple[int, bytes]] = deque()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._revoked_families: set[str] = set()
        self._token_requests: list[dict[str, str]] = []
        self._authorize_requests: list[dict[str, str]] = []
        self._issued_access_tokens: list[str] = []
        self._errors: list[str] = []

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
            at = self._access.get(token)
            if at is None or at.family in self._revoked_families:
                return False
            return at.expires_at is None or time.monotonic() < at.expires_at

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
                    return status, {"Content-Type": "application/json"}, body
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
        if url.path == "/authorize":
            self._send(*self.server.provider._authorize(url.query))
        elif url.path == "/token":
            self._send(405, {"Allow": "POST"}, b"")
        else:
            self._text(404, "not found")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/authorize":
            self._send(405, {"Allow": "GET"}, b"")
        elif path == "/token":
            self._post_token()
        else:
            self._text(404, "not found")

    def _post_token(self) -> None:
        provider = self.server.provider

        def reject(status: int, error: str, description: str) -> None:
            self.close_connection = True  # the body may be unread
            body = provider._record_transport_error(status, error, description)
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
        self._send(*provider._token(params, dups, self.headers.get("Authorization")))


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
        print(f"auth_uri:  {provider.auth_uri}")
        print(f"token_uri: {provider.token_uri}")
        print(
            f"""
Example pizauth.conf:

account "demo" {{
    auth_uri = "{provider.auth_uri}";
    token_uri = "{provider.token_uri}";
    client_id = "{client.client_id}";
    client_secret = "{client.client_secret}";
}}

Authorisation requests are approved automatically. Ctrl-C to stop.""",
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
