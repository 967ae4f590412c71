"""Revoking a token at the provider (RFC 7009) after `pizauth revoke` forgot it.

The token is gone locally before any of this starts, and nothing here brings it
back. With a revocation endpoint (revoke_uri, or the issuer's
revocation_endpoint) the refresh token, or the access token when there is none,
goes to the network child (NET_REVOKE), whose worker sends it authenticated as
for the token endpoint and exits. The parent keeps its copy, a Secret, until
the revocation has ended, and then wipes it.

A transient failure (the provider unreachable or busy, the network child lost,
the endpoint or client secret not to be had for now) is tried again after each
delay of REVOKE_RETRIES in turn; the copy waits in the meantime, so that a token
the user asked to revoke does not stay valid because of one dropped connection.
error_notify_cmd hears only of a revocation given up: a permanent failure at
once, a transient one once the retries are spent. At most
MAX_REVOCATIONS_WAITING wait; beyond that the one asked for first is given up.
A waiting revocation survives a reload that leaves its account as it was; one
whose account a reload changed or removed is given up, so that neither its
token nor the new client secret goes to an endpoint the user has moved away
from. A new login of the account does not cancel it. Shutdown wipes them all.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pizauth import ipc, runtime
from pizauth.config import Account
from pizauth.ipc import NetRevokeResult, TokenOutcome
from pizauth.limits import MAX_REVOCATIONS_WAITING
from pizauth.priv.flows.provider import NETWORK_LOST, Outcome, Resolver, Unready
from pizauth.priv.run.notifier import Notifier
from pizauth.priv.state.clock import instant
from pizauth.priv.state.failures import retry_delay
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, TokenState
from pizauth.text import shown
from pizauth.timeouts import REVOKE_RETRIES, REVOKE_RETRY_AFTER_MAX

log = logging.getLogger("pizauth")

ATTEMPTS = 1 + len(REVOKE_RETRIES)
ACCOUNT_CHANGED = "not tried again: a reload changed or removed the account"
TOO_MANY = f"not tried again: more than {MAX_REVOCATIONS_WAITING} revocations were waiting"
NOT_AT_PROVIDER = "The token of {} was forgotten locally but not revoked at the provider"
NO_ENDPOINT = "the account has no revocation endpoint (revoke_uri, or the issuer's metadata)"


def token_to_revoke(state: TokenState) -> tuple[Secret, str] | None:
    """A copy of the token to revoke for `state`, with its token_type_hint: the refresh
    token (revoking it ends its access tokens too), else the access token."""
    if not isinstance(state, Active):
        return None
    if state.refresh_token is not None:
        return Secret(state.refresh_token.view()), "refresh_token"
    return Secret(state.access_token.view()), "access_token"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One token to revoke (owned: wiped when the revocation ends), asked for at
    `requested`, with the attempts made so far and how the last one failed."""

    account: Account
    token: Secret
    hint: str
    requested: float
    attempts: int = 0
    last_error: str = ""


class Revoker:
    """`call` asks the network child (runtime.Calls.call); `current(name)` is the
    account of that name in the configuration in force; `clock()` the instant now."""

    def __init__(
        self,
        resolver: Resolver,
        call: runtime.Caller,
        notifier: Notifier,
        current: Callable[[str], Account | None],
        clock: Callable[[], float] = instant,
    ) -> None:
        self.resolver = resolver
        self._call = call
        self.notifier = notifier
        self._current = current
        self._clock = clock
        # By id of the Secret: tokens at the network child, and tokens whose endpoint or
        # client secret is still being found (so that shutdown can wipe them).
        self.sent: dict[int, Revocation] = {}
        self.resolving: dict[int, Revocation] = {}
        self.waiting: list[tuple[float, Revocation]] = []  # (when to try again, what)

    def revoke(self, account: Account, token: Secret, hint: str) -> None:
        """Revoke `token` (which this now owns) at `account`'s revocation endpoint, if
        it has one; without one there is nothing to do, as in pizauth 1.1."""
        self._attempt(Revocation(account, token, hint, self._clock()))

    def _attempt(self, revocation: Revocation) -> None:
        key = id(revocation.token)
        self.resolving[key] = revocation  # wiped at shutdown if never resolved

        def resolved(outcome: Outcome) -> None:
            if self.resolving.pop(key, None) is None:
                return  # wiped at shutdown meanwhile
            if isinstance(outcome, Unready):
                self._failed(revocation, outcome.message, outcome.transient)
                return
            target = outcome.account
            if target.revoke_uri is None:
                revocation.token.wipe()
                self._only_local(target)
                return
            secret = outcome.secret
            message = ipc.NetRevoke(
                target.revoke_uri,
                target.client_id,
                None if secret is None else secret.view(),
                revocation.token.view(),
                revocation.hint,
                target.token_endpoint_auth_method,
            )
            try:
                self._call(
                    message,
                    lambda result: self._result(key, result),
                    lambda: self._lost(key),
                )
            except ipc.ProtocolError as e:
                self._failed(revocation, str(e), transient=False)
                return
            self.sent[key] = revocation
            log.info("revoking the token of %s at the provider", shown(target.name))

        self.resolver.resolve(revocation.account, "revoke_uri", True, resolved, optional=True)

    def _only_local(self, account: Account) -> None:
        """Say that a token was forgotten here but is still valid at the provider. The
        reply to `revoke` is pizauth 1.1's `ok:`, which a 1.1 client takes only as it is,
        so it cannot carry this: the log says it, and error_notify_cmd too for an account
        with an issuer, whose metadata was looked in for a revocation endpoint and had
        none. An account with neither (every pizauth 1.1 configuration) only forgets
        locally, as it did in 1.1, without a notification."""
        name = account.name
        message = f"{NOT_AT_PROVIDER.format(shown(name))}: {NO_ENDPOINT}"
        if account.issuer is None:
            log.info("%s", message)
            return
        log.warning("%s", message)
        self.notifier.error(name, message)

    def _result(self, key: int, result: NetRevokeResult) -> None:
        """The NET_REVOKE_RESULT of the revocation of token `key`."""
        revocation = self.sent.pop(key, None)
        if revocation is None:
            return  # wiped at shutdown meanwhile
        name = revocation.account.name
        if result.provider_error == "invalid_client":
            self.resolver.forget_secret(name)
        if result.outcome is TokenOutcome.OK:
            revocation.token.wipe()
            log.info("token of %s revoked at the provider", shown(name))
        else:
            transient = result.outcome is TokenOutcome.TRANSIENT
            self._failed(revocation, result.message, transient, result.retry_after)

    def _lost(self, key: int) -> None:
        revocation = self.sent.pop(key, None)
        if revocation is not None:
            self._failed(revocation, NETWORK_LOST, transient=True)

    # -- retries -------------------------------------------------------------------------

    def _failed(
        self,
        revocation: Revocation,
        message: str,
        transient: bool,
        retry_after: int | None = None,
    ) -> None:
        failed = dataclasses.replace(
            revocation, attempts=revocation.attempts + 1, last_error=message
        )
        if not transient or failed.attempts >= ATTEMPTS:
            self._give_up(failed, message)
            return
        # The provider's Retry-After may put the next attempt off, within bounds.
        delay = retry_delay(
            REVOKE_RETRIES[failed.attempts - 1], retry_after, REVOKE_RETRY_AFTER_MAX
        )
        log.warning(
            "revoking the token of %s at the provider failed (attempt %d of %d): %s;"
            " trying again in %g s",
            shown(failed.account.name),
            failed.attempts,
            ATTEMPTS,
            message,
            delay,
        )
        self.waiting.append((self._clock() + delay, failed))
        if len(self.waiting) > MAX_REVOCATIONS_WAITING:
            first = min(range(len(self.waiting)), key=lambda i: self.waiting[i][1].requested)
            _, oldest = self.waiting.pop(first)
            self._give_up(oldest, f"{oldest.last_error}; {TOO_MANY}")

    def _give_up(self, revocation: Revocation, message: str) -> None:
        revocation.token.wipe()
        name = revocation.account.name
        tried = f" after {revocation.attempts} attempts" if revocation.attempts > 1 else ""
        self.notifier.error(
            name, f"Revoking the token of {shown(name)} at the provider failed{tried}: {message}"
        )

    def next_wakeup(self) -> float | None:
        return min((at for at, _ in self.waiting), default=None)

    def tick(self, now: float) -> None:
        """Try again each revocation whose delay has passed."""
        due = [revocation for at, revocation in self.waiting if at <= now]
        if not due:
            return
        self.waiting = [(at, revocation) for at, revocation in self.waiting if at > now]
        for revocation in due:
            current = self._current(revocation.account.name)
            if current is None or current.security_key() != revocation.account.security_key():
                self._give_up(revocation, f"{revocation.last_error}; {ACCOUNT_CHANGED}")
            else:
                self._attempt(revocation)

    def wipe_all(self) -> None:
        """At shutdown: forget every token still waiting for its revocation."""
        for revocation in self.sent.values():
            revocation.token.wipe()
        self.sent.clear()
        for revocation in self.resolving.values():
            revocation.token.wipe()
        self.resolving.clear()
        for _, revocation in self.waiting:
            revocation.token.wipe()
        self.waiting.clear()
