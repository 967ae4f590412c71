"""Revoking a token at the provider (RFC 7009).

One attempt; the parent decides whether to try again. "ok" when the provider says it
is done (200, also for a token it did not know: RFC 7009 §2.2); "transient" for
network failures and 408/429/5xx, 503 being how RFC 7009 §2.2.1 asks a client to come back
later; "permanent" otherwise, with the provider's error text when it gave one.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

from pizauth.net import reply, tokenclient
from pizauth.net.tokenclient import TRANSIENT_STATUSES, _Permanent, _post, _Transient

TOKEN_TYPE_HINTS = ("access_token", "refresh_token")
_WHAT = "revocation endpoint"


@dataclass(frozen=True)
class Revocation:
    outcome: str  # "ok", "transient" or "permanent"
    message: str = ""  # for the user when not ok
    provider_error: str = ""  # the OAuth error code the provider gave, if any
    retry_after: int | None = None  # seconds the provider's Retry-After asked for, if any


def revoke_token(
    session: requests.Session,
    revoke_uri: str,
    client_id: str,
    secret: str | None,
    token: str,
    token_type_hint: str = "",
    auth_method: str = tokenclient.CLIENT_SECRET_POST,
) -> Revocation:
    """Ask the provider to revoke `token`; `token_type_hint` is "access_token",
    "refresh_token" or "" to send none. ValueError for any other hint."""
    if token_type_hint and token_type_hint not in TOKEN_TYPE_HINTS:
        raise ValueError("unknown token_type_hint")
    auth, headers = tokenclient.client_auth(client_id, secret, auth_method)
    form = [("token", token)]
    if token_type_hint:
        form.append(("token_type_hint", token_type_hint))
    form += auth
    try:
        got = _post(session, revoke_uri, form, headers, what=_WHAT)
    except _Transient as e:
        return Revocation("transient", str(e))
    except _Permanent as e:
        return Revocation("permanent", str(e))
    status, body = got.status, got.body
    if status == 200:
        return Revocation("ok")
    error, description = reply.oauth_error(reply.load_json(body))
    message = f"HTTP code {status}" + (
        f" ({reply.error_text(error, description)})" if error else ""
    )
    if status in TRANSIENT_STATUSES:
        return Revocation("transient", message, error, got.retry_after)
    return Revocation("permanent", message, error)
