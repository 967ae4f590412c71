"""The device authorization grant (RFC 8628): the request that yields a user code, and
one poll of the token endpoint.

Both are single attempts; the parent owns the schedule. What each outcome of a poll
means, and what the parent should do:

======================  ==========  =================================================
provider says           outcome     provider_error / parent's action
======================  ==========  =================================================
a token                 ok          ""; `token` holds it (a tokenclient.TokenResult)
authorization_pending   transient   "authorization_pending": poll again at the interval
slow_down               transient   "slow_down": add 5 s to the interval, poll again
HTTP 408/429/5xx,       transient   "" ("slow_down" if the body says so): poll again
network failure                     at the current interval
access_denied           permanent   "access_denied": the user refused; end the attempt
expired_token           permanent   "expired_token": the code expired; end the attempt
any other error         permanent   its error code, or "" if it gave none; end it
======================  ==========  =================================================

`outcome` alone is enough to decide whether to go on; `provider_error` says why, and
`message` is text for the user (sanitised and bounded, like all provider text here).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import requests

from pizauth import ipc, limits
from pizauth.ipc import NetDeviceAuth, NetDevicePoll, TokenOutcome
from pizauth.net import reply, tokenclient
from pizauth.net.tokenclient import TokenResult, _judge, _Permanent, _post, _Transient
from pizauth.uri import http_uri

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5  # RFC 8628 §3.2: what a client must assume when none is given
# RFC 8628 §3.2 requires expires_in; a provider that leaves it out still gets a bound on
# how long we poll: ten minutes, a typical lifetime (Microsoft's is 15, Google's 30).
DEFAULT_EXPIRES_IN = 600
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5: seconds added to the interval on every slow_down
PENDING = "authorization_pending"
SLOW_DOWN = "slow_down"
ACCESS_DENIED = "access_denied"
EXPIRED_TOKEN = "expired_token"
INVALID_RESPONSE = "invalid response received"
_WHAT = "device authorization endpoint"


@dataclass(frozen=True)
class DeviceAuthorization:
    outcome: TokenOutcome
    message: str = ""  # for the user when not ok
    provider_error: str = ""  # the OAuth error code the provider gave, if any
    device_code: bytes = field(default=b"", repr=False)  # a credential: never shown
    user_code: str = ""
    verification_uri: str = ""
    verification_uri_complete: str = ""  # "" when the provider gave none
    expires_in: int = 0  # seconds, 1..limits.MAX_SECONDS
    interval: int = 0  # seconds, 1..limits.MAX_SECONDS

    @property
    def user_uri(self) -> str:
        """The URI to show the user: the one with the code in it if there is one."""
        return self.verification_uri_complete or self.verification_uri


@dataclass(frozen=True)
class DevicePoll:
    outcome: TokenOutcome  # see the module docstring
    message: str = ""
    provider_error: str = ""
    token: TokenResult | None = None  # set exactly when outcome is OK


def request_device_authorization(
    session: requests.Session, request: NetDeviceAuth
) -> DeviceAuthorization:
    """Ask for a device code and user code (RFC 8628 §3.1, §3.2). The request's scope is
    space-separated, left out of the request when empty."""
    secret = tokenclient.secret_text(request.client_secret)
    form, headers = tokenclient.client_auth(request.client_id, secret, request.auth_method)
    if request.scope:
        form.append(("scope", request.scope))
    try:
        got = _post(session, request.device_auth_uri, form, headers, what=_WHAT)
    except _Transient as e:
        return DeviceAuthorization(TokenOutcome.TRANSIENT, str(e))
    except _Permanent as e:
        return DeviceAuthorization(TokenOutcome.PERMANENT, str(e))
    status, body = got.status, got.body
    doc = reply.load_json(body)
    error, description = reply.oauth_error(doc)
    if not 200 <= status < 300:
        message = f"HTTP code {status}" + (
            f" ({reply.error_text(error, description)})" if error else ""
        )
        transient = status in tokenclient.TRANSIENT_STATUSES
        kind = TokenOutcome.TRANSIENT if transient else TokenOutcome.PERMANENT
        return DeviceAuthorization(kind, message, error)
    if error:
        return DeviceAuthorization(
            TokenOutcome.PERMANENT, reply.error_text(error, description), error
        )
    if not isinstance(doc, dict):
        return DeviceAuthorization(TokenOutcome.PERMANENT, INVALID_RESPONSE)
    return _authorization(doc)


def _authorization(doc: dict[str, object]) -> DeviceAuthorization:
    def bad(why: str) -> DeviceAuthorization:
        return DeviceAuthorization(TokenOutcome.PERMANENT, f"{INVALID_RESPONSE}: {why}")

    device_code = doc.get("device_code")
    if not isinstance(device_code, str) or not device_code:
        return bad("no device_code")
    # A credential we send back in a form: any text will do, but not text that cannot be
    # encoded (lone surrogates) or that is too large to hold.
    if any(ord(c) < 0x20 or c == "\x7f" for c in device_code):
        return bad("device_code has control characters")
    try:
        code = device_code.encode("utf-8")
    except UnicodeEncodeError:
        return bad("device_code is not valid text")
    if len(code) > limits.MAX_DEVICE_CODE:
        return bad("device_code too long")

    user_code = doc.get("user_code")
    # The user types this in, so a cut or cleaned copy would be wrong: refuse instead.
    if not isinstance(user_code, str) or not user_code.strip():
        return bad("no user_code")
    if not user_code.isprintable() or len(user_code.encode("utf-8", "replace")) > (
        limits.MAX_PROVIDER_TEXT
    ):
        return bad("user_code is not short printable text")

    # Google names the field verification_url.
    raw_uri = doc.get("verification_uri", doc.get("verification_url"))
    uri = http_uri(raw_uri, https_only=False)
    if uri is None:
        return bad("missing or malformed verification_uri")
    complete = ""
    if doc.get("verification_uri_complete") is not None:
        complete = http_uri(doc["verification_uri_complete"], https_only=False) or ""
        if not complete:
            return bad("malformed verification_uri_complete")

    if doc.get("expires_in") is None:
        expires_in: int | None = DEFAULT_EXPIRES_IN
    else:
        expires_in = reply.seconds(doc["expires_in"])
        if expires_in is None or expires_in < 1:
            return bad("malformed expires_in")
    if doc.get("interval") is None:
        interval: int | None = DEFAULT_INTERVAL
    else:
        raw = doc["interval"]
        negative = isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw < 0
        interval = 0 if negative else reply.seconds(raw)
        if interval is None:
            return bad("malformed interval")
        interval = max(interval, 1)  # never poll back to back
    return DeviceAuthorization(
        TokenOutcome.OK,
        device_code=code,
        user_code=user_code,
        verification_uri=uri,
        verification_uri_complete=complete,
        expires_in=expires_in,
        interval=interval,
    )


def poll_device_token(session: requests.Session, request: NetDevicePoll) -> DevicePoll:
    """One device access token request (RFC 8628 §3.4), judged as in the module
    docstring."""
    code = ipc.text(memoryview(request.device_code))
    secret = tokenclient.secret_text(request.client_secret)
    auth, headers = tokenclient.client_auth(request.client_id, secret, request.auth_method)
    form = [("grant_type", DEVICE_GRANT), ("device_code", code), *auth]
    try:
        got = _post(session, request.token_uri, form, headers)
    except _Transient as e:
        return DevicePoll(TokenOutcome.TRANSIENT, str(e))
    except _Permanent as e:
        return DevicePoll(TokenOutcome.PERMANENT, str(e))
    status, body = got.status, got.body
    doc = reply.load_json(body)
    error, description = reply.oauth_error(doc)
    detail = f" ({reply.error_text(error, description)})" if error else ""
    if status in tokenclient.TRANSIENT_STATUSES:
        # Whatever else an overloaded server says, a request to slow down is safe to obey.
        return DevicePoll(
            TokenOutcome.TRANSIENT,
            f"HTTP code {status}{detail}",
            SLOW_DOWN if error == SLOW_DOWN else "",
        )
    # RFC 8628 §3.5 errors come with 400; some providers (GitHub) send them with 200.
    if error and (status == 200 or 400 <= status < 500):
        message = reply.error_text(error, description)
        if error in (PENDING, SLOW_DOWN):
            return DevicePoll(TokenOutcome.TRANSIENT, message, error)
        return DevicePoll(TokenOutcome.PERMANENT, f"HTTP code {status} ({message})", error)
    if 200 <= status < 300 and doc is None:
        # Checked here because the token parser lets a nesting too deep for Python escape.
        return DevicePoll(TokenOutcome.PERMANENT, f"{INVALID_RESPONSE}: not JSON")
    try:
        token = _judge(status, body, INVALID_RESPONSE)
    except (_Transient, _Permanent) as e:
        # _judge quotes no token, only status codes and provider error text: keep that
        # clean and bounded like the rest.
        return DevicePoll(TokenOutcome.PERMANENT, reply.provider_text(str(e)))
    return _bounded(token)


def _bounded(token: TokenResult) -> DevicePoll:
    """The token within the bounds every process holds it to."""
    for value in (token.access_token, token.refresh_token):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            return DevicePoll(
                TokenOutcome.PERMANENT, f"{INVALID_RESPONSE}: token is not valid text"
            )
        if size > limits.MAX_TOKEN:
            return DevicePoll(TokenOutcome.PERMANENT, f"{INVALID_RESPONSE}: token too long")
    if token.expires_in is not None and token.expires_in > limits.MAX_SECONDS:
        token = replace(token, expires_in=limits.MAX_SECONDS)
    return DevicePoll(TokenOutcome.OK, token=token)
