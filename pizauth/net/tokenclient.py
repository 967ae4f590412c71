"""Calls to the token endpoint and triage of what comes back.

The provider's reply is parsed and judged here, in the network child; the
parent only ever sees a typed result.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote_plus

import requests

from pizauth import ipc, limits
from pizauth.ipc import NetExchange, NetRefresh, RefreshKind, TokenOutcome
from pizauth.net import deadline, reply
from pizauth.safetext import safe_text
from pizauth.timeouts import CODE_EXCHANGE, CONNECT, TOKEN_REQUEST

TIMEOUT = TOKEN_REQUEST  # seconds, per request overall, as pizauth 1.1
MAX_BODY = limits.MAX_REPLY_BODY  # a token response is a few KiB; never buffer more
# An integer of more digits than this is not parsed (int() of a long digit string is
# quadratic) but read as "huge": larger than any bound below either way.
_MAX_DIGITS = 20
_HUGE = 10**_MAX_DIGITS
EXCHANGE_ATTEMPTS = 10
EXCHANGE_RETRY_DELAY = 6.0
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Where a provider's Retry-After says when to come back (RFC 6585 §4, RFC 9110 §15.6.4).
RETRY_AFTER_STATUSES = frozenset({429, 503})
# How the client authenticates at the token, device and revocation endpoints.
CLIENT_SECRET_POST = "client_secret_post"  # the secret in the form body
CLIENT_SECRET_BASIC = "client_secret_basic"  # HTTP Basic, RFC 6749 §2.3.1
AUTH_METHODS = (CLIENT_SECRET_POST, CLIENT_SECRET_BASIC)


@dataclass
class TokenResult:
    outcome: TokenOutcome
    message: str = ""
    access_token: str = ""
    expires_in: int | None = None
    refresh_kind: RefreshKind = RefreshKind.ABSENT
    refresh_token: str = ""
    # The provider's OAuth error code (`invalid_client`, `slow_down`...), when it gave one.
    provider_error: str = ""
    # Seconds the provider's Retry-After asked for, with a transient failure; None if none.
    retry_after: int | None = None

    def fields(self) -> list[bytes]:
        """The NET_TOKEN_RESULT fields, each within the bounds the parent accepts: the
        message goes into logs and hook environments, so it is made safe here too."""
        made_safe = ipc.NetTokenResult(
            self.outcome,
            safe_text(self.message, limits.MAX_PROVIDER_TEXT),
            self.access_token.encode(),
            self.expires_in,
            self.refresh_kind,
            self.refresh_token.encode(),
            safe_text(self.provider_error, limits.MAX_ERROR_CODE),
            self.retry_after,
        )
        return [bytes(f) for f in made_safe.fields()]


class _Failure(Exception):
    """A failed call: the message for the user, and the provider's OAuth error code."""

    def __init__(self, message: str, code: str = "", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class _Transient(_Failure):
    pass


class _Permanent(_Failure):
    pass


class _NotSent(_Transient):
    """The request never reached the server, so it is safe to send again."""


@dataclass(frozen=True)
class Reply:
    """What an endpoint answered: status, body, and the seconds its Retry-After asked us
    to wait (429 and 503 only; None when it gave none we could read)."""

    status: int
    body: bytes
    retry_after: int | None = None


def _post(
    session: requests.Session,
    uri: str,
    form: list[tuple[str, str]],
    headers: dict[str, str] | None = None,
    method: str = "POST",
    what: str = "token endpoint",
) -> Reply:
    """The reply to a form POST (or a GET, with an empty form); body read to at most
    MAX_BODY. The whole exchange, connection to last byte, ends within TIMEOUT (or the
    enclosing deadline, if sooner). `what` names the endpoint in messages."""
    try:
        with deadline.within(TIMEOUT):
            return _exchange(session, uri, form, headers or {}, method, what)
    except deadline.DeadlineExceeded:
        raise _Transient(f"timed out waiting for {uri}") from None


def _exchange(
    session: requests.Session,
    uri: str,
    form: list[tuple[str, str]],
    headers: dict[str, str],
    method: str,
    what: str,
) -> Reply:
    left = deadline.remaining() or TIMEOUT
    try:
        resp = session.request(
            method,
            uri,
            data=form,
            # No compressed body: a small one could inflate to far more than MAX_BODY
            # inside a single chunk, before the size check below could stop it.
            headers={"Accept": "application/json", "Accept-Encoding": "identity", **headers},
            timeout=(min(CONNECT, left), left),
            stream=True,
            allow_redirects=False,
        )
    except requests.ConnectTimeout as e:
        raise _NotSent(f"couldn't connect to {uri}") from e
    except requests.ConnectionError as e:
        if _never_connected(e):
            raise _NotSent(f"couldn't connect to {uri}") from e
        raise _Transient(f"couldn't connect to {uri}") from e
    except requests.Timeout as e:
        raise _Transient(f"timed out waiting for {uri}") from e
    except requests.RequestException as e:
        raise _Permanent(str(e)) from e
    with resp:
        body = bytearray()
        try:
            # Small reads, so that the deadline is also checked between them where no
            # timer can fire (a thread other than the main one).
            for chunk in resp.iter_content(1024):
                body += chunk
                if len(body) > MAX_BODY:
                    raise _Permanent(f"response from {what} too large")
                deadline.check()
        except requests.RequestException as e:
            raise _Transient(f"reading from {uri} failed") from e
        wait = None
        if resp.status_code in RETRY_AFTER_STATUSES:
            wait = reply.retry_after(resp.headers.get("Retry-After"), time.time())
        return Reply(resp.status_code, bytes(body), wait)


def _never_connected(e: requests.ConnectionError) -> bool:
    import urllib3.exceptions

    reason = getattr(e.args[0], "reason", None) if e.args else None
    # NameResolutionError is a NewConnectionError too.
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        return -_HUGE if digits.startswith("-") else _HUGE
    return int(digits)


def _parse(body: bytes) -> object:
    """The JSON document in `body`; ValueError for anything else: not JSON, not UTF-8,
    or nested too deep for the parser (which then raises RecursionError)."""
    try:
        return json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _provider_text(value: str) -> str:
    return safe_text(value, limits.MAX_PROVIDER_TEXT)


def _oauth_error(body: bytes) -> str | None:
    """`error` (with `error_description`) of an RFC 6749 §5.2 error body, if it is one;
    the provider's text made safe to log and to pass to a hook."""
    try:
        doc = _parse(body)
    except ValueError:  # UnicodeDecodeError is one
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return None
    error = _provider_text(doc["error"])
    desc = doc.get("error_description")
    if isinstance(desc, str) and desc:
        return _provider_text(f"{error}: {_provider_text(desc)}")
    return error


def _oauth_code(body: bytes) -> str:
    """The `error` code of an RFC 6749 §5.2 error body, made safe; "" if there is none."""
    try:
        doc = _parse(body)
    except ValueError:
        return ""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return ""
    return _provider_text(doc["error"])[: limits.MAX_ERROR_CODE]


def _expires_in(value: object) -> int | None:
    """expires_in bounded: absent is None; a JSON integer (bool is an int in Python, but
    not in JSON) from 0 up is clamped to MAX_SECONDS, so no arithmetic on it can
    overflow. Anything else (negative, fractional, 1e400, a string) is not a lifetime
    we can trust, and the reply is refused, as the original (an unsigned integer) does."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("expires_in")
    return min(value, limits.MAX_SECONDS)


def _token_text(value: str) -> str:
    """A token we can hold and pass on: UTF-8 encodable and at most MAX_TOKEN bytes.

    A longer one is refused rather than cut (a cut token is useless) so that no frame
    that carries it, a refresh request or a dump, can outgrow its bounds."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise ValueError("not UTF-8") from None
    if size > limits.MAX_TOKEN:
        raise _Permanent(f"token longer than {limits.MAX_TOKEN} bytes refused")
    return value


def _judge(
    status: int, body: bytes, unexpected: str, retry_after: int | None = None
) -> TokenResult:
    if not 200 <= status < 300:
        error = _oauth_error(body)
        message = f"HTTP code {status}" + (f" ({error})" if error else "")
        if status in TRANSIENT_STATUSES:
            raise _Transient(message, _oauth_code(body), retry_after)
        raise _Permanent(message, _oauth_code(body))
    try:
        doc = _parse(body)
    except ValueError as e:
        raise _Permanent(f"Invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _Permanent(unexpected)
    error = _oauth_error(body)
    if error is not None:
        raise _Permanent(error or unexpected, _oauth_code(body))  # `"error": ""` says nothing
    token, token_type = doc.get("access_token"), doc.get("token_type")
    try:
        expires_in = _expires_in(doc.get("expires_in"))
    except ValueError:
        raise _Permanent(unexpected) from None
    # Token types are case-insensitive (RFC 6749 §5.1), and expires_in is optional:
    # docs/compatibility.md "Token type case", "Optional expires_in".
    if not isinstance(token, str) or not token or not isinstance(token_type, str):
        raise _Permanent(unexpected)
    if token_type.lower() != "bearer":
        raise _Permanent(unexpected)
    if "refresh_token" not in doc:
        kind, refresh = RefreshKind.ABSENT, ""
    elif isinstance(doc["refresh_token"], str):
        kind, refresh = RefreshKind.STRING, doc["refresh_token"]
    else:
        kind, refresh = RefreshKind.INVALID, ""
    try:
        token, refresh = _token_text(token), _token_text(refresh)
    except ValueError:
        raise _Permanent(unexpected) from None
    return TokenResult(TokenOutcome.OK, "", token, expires_in, kind, refresh)


def basic_credentials(client_id: str, secret: str) -> str:
    """The Authorization header value for client_secret_basic: RFC 6749 §2.3.1 has id and
    secret form-urlencoded before they are joined, so a ':' in either survives."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def client_auth(
    client_id: str, secret: str | None, auth_method: str
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(form fields, headers) that authenticate the client with `auth_method`.

    The form always names the client by client_id: a public client has no other way,
    and with HTTP Basic RFC 6749 §2.3.1 allows it while some servers (oauthlib's, as in
    django-oauth-toolkit) require it. The secret is in the form or in the header,
    never both. ValueError for a method not in AUTH_METHODS (the config admits no other).
    """
    if auth_method not in AUTH_METHODS:
        raise ValueError("unknown token_endpoint_auth_method")
    if secret is None:
        return [("client_id", client_id)], {}
    if auth_method == CLIENT_SECRET_BASIC:
        return [("client_id", client_id)], {"Authorization": basic_credentials(client_id, secret)}
    return [("client_id", client_id), ("client_secret", secret)], {}


def authenticate_form(
    form: list[tuple[str, str]], auth_method: str
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """`form` (which carries client_id, and client_secret for a confidential client, as
    client_secret_post sends them) as `auth_method` sends it, with its headers. With
    HTTP Basic the secret moves to the header and client_id stays (see client_auth)."""
    if auth_method not in AUTH_METHODS:
        raise ValueError("unknown token_endpoint_auth_method")
    names = dict(form)
    if auth_method == CLIENT_SECRET_POST or "client_secret" not in names:
        return form, {}
    rest = [(k, v) for k, v in form if k != "client_secret"]
    return rest, {
        "Authorization": basic_credentials(names.get("client_id", ""), names["client_secret"])
    }


def exchange_code(
    session: requests.Session,
    request: NetExchange,
    sleep: Callable[[float], None] = time.sleep,
) -> TokenResult:
    """The authorisation-code grant `request` asks for. It is sent again only if it cannot
    have reached the provider or the provider refused it as overloaded
    (docs/compatibility.md "Code exchange retries"), after EXCHANGE_RETRY_DELAY or the
    provider's Retry-After if longer, and only while CODE_EXCHANGE allows."""
    token_uri, form = exchange_form(request)
    form, headers = authenticate_form(form, request.auth_method)
    last, code = "", ""
    with deadline.within(CODE_EXCHANGE):
        for attempt in range(EXCHANGE_ATTEMPTS):
            try:
                got = _post(session, token_uri, form, headers)
                return _judge(got.status, got.body, "invalid response received", got.retry_after)
            except _NotSent as e:
                last, code, wait = str(e), e.code, None
            except _Transient as e:
                if not str(e).startswith("HTTP code"):
                    # The code may have been used: re-posting it could revoke the grant.
                    return TokenResult(TokenOutcome.PERMANENT, str(e), provider_error=e.code)
                last, code, wait = str(e), e.code, e.retry_after
            except _Permanent as e:
                return TokenResult(TokenOutcome.PERMANENT, str(e), provider_error=e.code)
            pause = max(EXCHANGE_RETRY_DELAY, wait or 0)
            left = deadline.remaining()
            if attempt + 1 == EXCHANGE_ATTEMPTS or (left is not None and pause >= left):
                break
            sleep(pause)
    return TokenResult(TokenOutcome.PERMANENT, last, provider_error=code)


def refresh(session: requests.Session, request: NetRefresh) -> TokenResult:
    """One refresh-token grant attempt (`request`); the parent schedules retries.

    A reply with a token over MAX_TOKEN is a permanent failure here too, not a
    transient one: it is what this provider issues, not an outage, so a retry would get
    the same; and a provider that rotates refresh tokens has already retired the one we
    hold, so keeping it would only defer the failure. The user is told at once.
    """
    token_uri, form = refresh_form(request)
    form, headers = authenticate_form(form, request.auth_method)
    try:
        got = _post(session, token_uri, form, headers)
        return _judge(got.status, got.body, "Received JSON in unexpected format", got.retry_after)
    except _Transient as e:
        return TokenResult(
            TokenOutcome.TRANSIENT, str(e), provider_error=e.code, retry_after=e.retry_after
        )
    except _Permanent as e:
        return TokenResult(TokenOutcome.PERMANENT, str(e), provider_error=e.code)


def secret_text(secret: ipc.Buffer | None) -> str | None:
    """A secret of a request as the str a form or header needs (None stays None). The str
    copy dies with the worker process that made it (net/worker.py)."""
    return None if secret is None else ipc.text(memoryview(secret))


def exchange_form(request: NetExchange) -> tuple[str, list[tuple[str, str]]]:
    """token_uri and form of a code exchange, in pizauth 1.1's order."""
    form = [
        ("code", request.code),
        ("client_id", request.client_id),
        ("code_verifier", ipc.text(memoryview(request.code_verifier))),
        ("redirect_uri", request.redirect_uri),
        ("grant_type", "authorization_code"),
    ]
    secret = secret_text(request.client_secret)
    if secret is not None:
        form.append(("client_secret", secret))
    return request.token_uri, form


def refresh_form(request: NetRefresh) -> tuple[str, list[tuple[str, str]]]:
    """token_uri and form of a refresh, in pizauth 1.1's order."""
    form = [
        ("client_id", request.client_id),
        ("refresh_token", ipc.text(memoryview(request.refresh_token))),
        ("grant_type", "refresh_token"),
    ]
    secret = secret_text(request.client_secret)
    if secret is not None:
        form.append(("client_secret", secret))
    return request.token_uri, form
