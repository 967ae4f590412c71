"""Revoking a token at the provider (RFC 7009) after `pizauth revoke` forgot it.

The token is gone locally before any of this starts, and nothing here brings it
back. With a revocation endpoint (revoke_uri, or the issuer's
revocation_endpoint) the refresh token, or the access token when there is none,
goes to the network child (NET_REVOKE), whose worker sends it authenticated as
for the token endpoint and exits. The parent keeps its copy, a Secret, until
the result (NET_REVOKE_RESULT) and then wipes it. Any failure is reported
through error_notify_cmd; there is no second attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pizauth import ipc, runtime
from pizauth.config import Account
from pizauth.ipc import NetOutcome, NetRevokeResult
from pizauth.priv.notifier import Notifier
from pizauth.priv.provider import NETWORK_LOST, Outcome, Resolver, Unready
from pizauth.priv.secmem import Secret
from pizauth.priv.tokens import Active, TokenState
from pizauth.text import shown

log = logging.getLogger("pizauth")


def token_to_revoke(state: TokenState) -> tuple[Secret, str] | None:
    """A copy of the token to revoke for `state`, with its token_type_hint: the refresh
    token (revoking it ends its access tokens too), else the access token."""
    if not isinstance(state, Active):
        return None
    if state.refresh_token is not None:
        return Secret(state.refresh_token.view()), "refresh_token"
    return Secret(state.access_token.view()), "access_token"


class Revoker:
    """`send(frame)` queues a secret frame for the network child."""

    def __init__(
        self, resolver: Resolver, send: Callable[[bytearray], None], notifier: Notifier
    ) -> None:
        self.resolver = resolver
        self._send = send
        self.notifier = notifier
        self.pending: dict[int, tuple[str, Secret]] = {}  # request id -> account, token
        # Tokens whose endpoint or client secret is still being found.
        self.resolving: dict[int, Secret] = {}
        self._ids = runtime.RequestIds()

    def revoke(self, account: Account, token: Secret, hint: str) -> None:
        """Revoke `token` (which this now owns) at `account`'s revocation endpoint, if
        it has one; without one there is nothing to do, as in pizauth 1.1."""
        name = account.name
        self.resolving[id(token)] = token  # wiped at shutdown if never resolved

        def resolved(outcome: Outcome) -> None:
            if self.resolving.pop(id(token), None) is None:
                return  # wiped at shutdown meanwhile
            if isinstance(outcome, Unready):
                token.wipe()
                self._failed(name, outcome.message)
                return
            target = outcome.account
            if target.revoke_uri is None:
                token.wipe()
                return
            secret = outcome.secret
            request_id = self._ids.allocate(self.pending)
            try:
                frame = ipc.NetRevoke(
                    target.revoke_uri,
                    target.client_id,
                    None if secret is None else secret.view(),
                    token.view(),
                    hint,
                    target.token_endpoint_auth_method,
                ).encode(request_id)
            except ipc.ProtocolError as e:
                token.wipe()
                self._failed(name, str(e))
                return
            self.pending[request_id] = (name, token)
            log.info("revoking the token of %s at the provider", shown(name))
            self._send(frame)

        self.resolver.resolve(account, "revoke_uri", True, resolved, optional=True)

    def result(self, request_id: int, result: NetRevokeResult) -> None:
        """NET_REVOKE_RESULT: a result for a revocation never asked for is a protocol error."""
        pending = self.pending.pop(request_id, None)
        if pending is None:
            raise ipc.ProtocolError(f"revocation result for unknown request {request_id}")
        name, token = pending
        token.wipe()
        if result.provider_error == "invalid_client":
            self.resolver.forget_secret(name)
        if result.outcome is NetOutcome.OK:
            log.info("token of %s revoked at the provider", shown(name))
        else:
            self._failed(name, result.message)

    def _failed(self, name: str, message: str) -> None:
        self.notifier.error(
            name, f"Revoking the token of {shown(name)} at the provider failed: {message}"
        )

    def network_lost(self) -> None:
        pending, self.pending = self.pending, {}
        for name, token in pending.values():
            token.wipe()
            self._failed(name, NETWORK_LOST)

    def wipe_all(self) -> None:
        """At shutdown: forget every token still waiting for its revocation."""
        for _, token in self.pending.values():
            token.wipe()
        self.pending.clear()
        for token in self.resolving.values():
            token.wipe()
        self.resolving.clear()
