"""Which token endpoint a token may be sent to: the one that issued it.

A token obtained through token endpoint E (a code exchange, a refresh, a device
login) records E (`Active.token_uri`). Its refresh token is only ever sent to E:
if the endpoints resolved now (issuer metadata fetched again, by a network child
that may since have been restarted) name another token endpoint, the token is
dropped and the account needs a new login, rather than a credential issued by one
server going to another. A token whose endpoint is not known (restored from a dump
or from the token store, which record no endpoint) is bound to the endpoint of its
first refresh. This is the one place the rule lives.
"""

from __future__ import annotations

from pizauth.priv.state.tokens import Active


def refused(active: Active, token_uri: str) -> str | None:
    """Why `active`'s refresh token must not go to `token_uri`, or None if it may (an
    unbound token is bound to `token_uri` here)."""
    if active.token_uri is None:
        active.token_uri = token_uri
        return None
    if active.token_uri == token_uri:
        return None
    return (
        f"the token endpoint is now {token_uri}, not {active.token_uri} that issued the"
        " token: log in again"
    )
