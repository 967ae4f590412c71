"""Calls to the token endpoint and triage of what comes back (spec §6.1, §6.2).

The provider's reply is parsed and judged here, in the network child; the
parent only ever sees a typed result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from pizauth import ipc
from pizauth.timeouts import CONNECT, TOKEN_REQUEST

TIMEOUT = TOKEN_REQUEST  # seconds, per request overall
MAX_BODY = 1024 * 1024  # a token response is a few KiB; never buffer more than this
EXCHANGE_ATTEMPTS = 10
EXCHANGE_RETRY_DELAY = 6.0
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class TokenResult:
    outcome: str  # "ok", "transient" or "permanent"
    message: str = ""
    access_token: str = ""
    expires_in: int | None = None
    refresh_kind: str = "absent"  # "absent", "string" or "invalid" (present but not a string)
    refresh_token: str = ""

    def fields(self) -> list[bytes]:
        """The NET_TOKEN_RESULT fields."""
        return [
            self.outcome.encode(),
            self.message.encode(),
            self.access_token.encode(),
            b"" if self.expires_in is None else str(self.expires_in).encode(),
            self.refresh_kind.encode(),
            self.refresh_token.encode(),
        ]


class _Transient(Exception):
    pass


class _Permanent(Exception):
    pass


class _NotSent(_Transient):
    """The request never reached the server, so it is safe to send again."""


def _post(session: requests.Session, uri: str, form: list[tuple[str, str]]) -> tuple[int, bytes]:
    """(status, body) of a form POST; body read to at most MAX_BODY within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    try:
        resp = session.post(
            uri,
            data=form,
            headers={"Accept": "application/json"},
            timeout=(CONNECT, TIMEOUT),
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
            for chunk in resp.iter_content(16384):
                body += chunk
                if len(body) > MAX_BODY:
                    raise _Permanent("response from token endpoint too large")
                if time.monotonic() > deadline:
                    raise _Transient(f"timed out reading from {uri}")
        except requests.RequestException as e:
            raise _Transient(f"reading from {uri} failed") from e
        return resp.status_code, bytes(body)


def _never_connected(e: requests.ConnectionError) -> bool:
    import urllib3.exceptions

    reason = getattr(e.args[0], "reason", None) if e.args else None
    # NameResolutionError is a NewConnectionError too.
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _oauth_error(body: bytes) -> str | None:
    """`error` (with `error_description`) of an RFC 6749 §5.2 error body, if it is one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return None
    desc = doc.get("error_description")
    return f"{doc['error']}: {desc}" if isinstance(desc, str) and desc else doc["error"]


def _judge(status: int, body: bytes, unexpected: str) -> TokenResult:
    if not 200 <= status < 300:
        error = _oauth_error(body)
        message = f"HTTP code {status}" + (f" ({error})" if error else "")
        if status in TRANSIENT_STATUSES:
            raise _Transient(message)
        raise _Permanent(message)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _Permanent(f"Invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _Permanent(unexpected)
    error = _oauth_error(body)
    if error is not None:
        raise _Permanent(error)
    token, token_type = doc.get("access_token"), doc.get("token_type")
    expires_in = doc.get("expires_in")
    if expires_in is not None and (
        not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0
    ):
        raise _Permanent(unexpected)
    # gap 8: token types are case-insensitive (RFC 6749 §5.1); gap 7: expires_in is optional.
    if not isinstance(token, str) or not token or not isinstance(token_type, str):
        raise _Permanent(unexpected)
    if token_type.lower() != "bearer":
        raise _Permanent(unexpected)
    if "refresh_token" not in doc:
        kind, refresh = "absent", ""
    elif isinstance(doc["refresh_token"], str):
        kind, refresh = "string", doc["refresh_token"]
    else:
        kind, refresh = "invalid", ""
    return TokenResult("ok", "", token, expires_in, kind, refresh)


def exchange_code(
    session: requests.Session,
    token_uri: str,
    form: list[tuple[str, str]],
    sleep: Callable[[float], None] = time.sleep,
) -> TokenResult:
    """The authorisation-code grant. A request is sent again only if it cannot have
    reached the provider or the provider refused it as overloaded (gaps 9, 10)."""
    last = ""
    for attempt in range(EXCHANGE_ATTEMPTS):
        if attempt:
            sleep(EXCHANGE_RETRY_DELAY)
        try:
            status, body = _post(session, token_uri, form)
            return _judge(status, body, "invalid response received")
        except _NotSent as e:
            last = str(e)
        except _Transient as e:
            if not str(e).startswith("HTTP code"):
                # The code may have been used: re-posting it could revoke the grant.
                return TokenResult("permanent", str(e))
            last = str(e)
        except _Permanent as e:
            return TokenResult("permanent", str(e))
    return TokenResult("permanent", last)


def refresh(session: requests.Session, token_uri: str, form: list[tuple[str, str]]) -> TokenResult:
    """One refresh-token grant attempt; the parent schedules retries."""
    try:
        status, body = _post(session, token_uri, form)
        return _judge(status, body, "Received JSON in unexpected format")
    except _Transient as e:
        return TokenResult("transient", str(e))
    except _Permanent as e:
        return TokenResult("permanent", str(e))


def exchange_form(fields: tuple[ipc.Buffer, ...]) -> tuple[str, list[tuple[str, str]]]:
    """token_uri and form of a NET_EXCHANGE (spec §6.1 field order)."""
    uri, client_id, has_secret, secret, code, verifier, redirect_uri = (
        ipc.text(f) for f in fields
    )
    form = [
        ("code", code),
        ("client_id", client_id),
        ("code_verifier", verifier),
        ("redirect_uri", redirect_uri),
        ("grant_type", "authorization_code"),
    ]
    if has_secret == "1":
        form.append(("client_secret", secret))
    return uri, form


def refresh_form(fields: tuple[ipc.Buffer, ...]) -> tuple[str, list[tuple[str, str]]]:
    """token_uri and form of a NET_REFRESH (spec §6.2 field order)."""
    uri, client_id, has_secret, secret, refresh_token = (ipc.text(f) for f in fields)
    form = [
        ("client_id", client_id),
        ("refresh_token", refresh_token),
        ("grant_type", "refresh_token"),
    ]
    if has_secret == "1":
        form.append(("client_secret", secret))
    return uri, form
