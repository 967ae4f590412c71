"""Revoking a token at the provider (RFC 7009).

One attempt; the parent decides whether to try again. "ok" when the provider says it
is done (200, also for a token it did not know: RFC 7009 §2.2); "transient" for
network failures and 408/429/5xx, 503 being how RFC 7009 §2.2.1 asks a client to come back
later; "permanent" otherwise, with the provider's error text when it gave one.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

from pizauth import ipc
from pizauth.ipc import NetRevoke, TokenOutcome
from pizauth.net import reply, tokenclient
from pizauth.net.tokenclient import TRANSIENT_STATUSES, _Permanent, _post, _Transient

TOKEN_TYPE_HINTS = ipc.TOKEN_TYPE_HINTS
_WHAT = "revocation endpoint"


@dataclass(frozen=True)
class Revocation:
    outcome: TokenOutcome
    message: str = ""  # for the user when not ok
    provider_error: str = ""  # the OAuth error code the provider gave, if any
    retry_after: int | None = None  # seconds the provider's Retry-After asked for, if any


def revoke_token(session: requests.Session, request: NetRevoke) -> Revocation:
    """Ask the provider to revoke the request's token; its token_type_hint is
    "access_token", "refresh_token" or "" to send none. ValueError for any other hint."""
    hint = request.token_type_hint
    if hint and hint not in TOKEN_TYPE_HINTS:
        raise ValueError("unknown token_type_hint")
    # str copies of the token and secret die with the worker (net/worker.py).
    secret = tokenclient.secret_text(request.client_secret)
    auth, headers = tokenclient.client_auth(request.client_id, secret, request.auth_method)
    form = [("token", ipc.text(memoryview(request.token)))]
    if hint:
        form.append(("token_type_hint", hint))
    form += auth
    try:
        got = _post(session, request.revoke_uri, form, headers, what=_WHAT)
    except _Transient as e:
        return Revocation(TokenOutcome.TRANSIENT, str(e))
    except _Permanent as e:
        return Revocation(TokenOutcome.PERMANENT, str(e))
    status, body = got.status, got.body
    if status == 200:
        return Revocation(TokenOutcome.OK)
    error, description = reply.oauth_error(reply.load_json(body))
    message = f"HTTP code {status}" + (
        f" ({reply.error_text(error, description)})" if error else ""
    )
    if status in TRANSIENT_STATUSES:
        return Revocation(TokenOutcome.TRANSIENT, message, error, got.retry_after)
    return Revocation(TokenOutcome.PERMANENT, message, error)
