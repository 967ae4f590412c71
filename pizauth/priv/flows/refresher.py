"""Getting tokens: code exchanges, refreshes, and what their results do.

The parent asks the network child for each token request (NET_EXCHANGE,
NET_REFRESH) through the runtime's calls (runtime.Calls), each remembered with the
account's generation, so that a result for an account whose state has since
changed is dropped.
When each Active token is due for refresh is decided here too.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pizauth import ipc, runtime
from pizauth.config import Account, Config
from pizauth.ipc import NetTokenResult, RefreshKind, TokenOutcome
from pizauth.priv.flows.provider import Outcome, Unready, configured
from pizauth.priv.run.hooks import HookRunner
from pizauth.priv.run.notifier import Notifier
from pizauth.priv.state import binding
from pizauth.priv.state.authurl import new_auth_request
from pizauth.priv.state.clock import instant
from pizauth.priv.state.failures import LastError, retry_delay
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, Empty, Entry, Pending, TokenState, TokenTable
from pizauth.priv.state.tokenstate import Cause
from pizauth.text import shown
from pizauth.timeouts import TRANSIENT_ERROR_IF

log = logging.getLogger("pizauth")

# No timer sleeps longer than this, so a machine waking from suspend (or a clock
# oddity) notices a token that expired while it slept within 37 s, as pizauth 1.1 does.
MAX_SLEEP = 37.0
# Zero intervals would busy-loop: never retry faster than this.
MIN_RETRY = 1.0
# Every 6th consecutive transient failure asks transient_error_if_cmd whether to give up.
TRANSIENT_ARBITRATION_EVERY = 6
# Why a login's browser page cannot say how it ended: a reload changed the account.
STALE_EXCHANGE = "the account changed while the login completed: log in again"


def refresh_time(entry: Entry) -> float | None:
    """The instant `entry` is due for refresh, or None if it is not waiting for one."""
    state = entry.state
    if not isinstance(state, Active) or state.ongoing_refresh:
        return None
    if state.refresh_token is None:
        # Nothing to refresh with: keep the token until it really expires.
        return state.expiry
    account = entry.account
    if state.last_refresh_attempt is not None:
        normal = max(account.refresh_retry, MIN_RETRY)
        return state.last_refresh_attempt + retry_delay(normal, state.retry_after)
    return min(
        state.expiry - account.refresh_before_expiry,
        state.obtained + account.refresh_at_least,
    )


def due(table: TokenTable, now: float) -> list[Entry]:
    out = []
    for entry in table.entries.values():
        at = refresh_time(entry)
        if at is not None and at <= now:
            out.append(entry)
    return out


def next_wakeup(table: TokenTable) -> float | None:
    times = [t for e in table.entries.values() if (t := refresh_time(e)) is not None]
    return min(times, default=None)


class RequestKind(str, enum.Enum):
    EXCHANGE = "exchange"
    REFRESH = "refresh"
    DEVICE_AUTH = "device authorization"
    DEVICE_POLL = "device poll"


@dataclass(frozen=True, slots=True)
class NetRequest:
    kind: RequestKind
    account: str
    generation: int
    endpoint: str = ""  # the token endpoint it went to (a token is bound to it)


class Refresher:
    """Token requests, and every state change their results make.

    `call` asks the network child (runtime.Calls.call); `config()` is the
    configuration in force; ports() the redirect listeners' (http, https) ports.
    `exchange_done(account, error)` is told how each code exchange ended (None or why
    it failed), so that the browser waiting on the login can be answered
    (priv/flows/loginpages.py). `resolve`, `known` and `forget_secret` are the resolver's
    (priv/flows/provider.py): each account's endpoints and client secret before a request;
    without a resolver, the configuration as written. `clock()` is the instant now (the
    parent's loop ticks with the same clock).
    """

    def __init__(
        self,
        table: TokenTable,
        config: Callable[[], Config],
        ports: Callable[[], tuple[int | None, int | None]],
        notifier: Notifier,
        hooks: HookRunner,
        call: runtime.Caller,
        *,
        exchange_done: Callable[[str, str | None], None] = lambda name, error: None,
        resolve: Callable[..., None] | None = None,
        known: Callable[[Account], Account] = lambda account: account,
        forget_secret: Callable[[str], None] = lambda name: None,
        clock: Callable[[], float] = instant,
    ) -> None:
        self._clock = clock
        self.table = table
        self._config = config
        self._ports = ports
        self.notifier = notifier
        self.hooks = hooks
        self._call = call
        self.exchange_done = exchange_done
        self.resolve: Callable[..., None] = (
            configured(table.client_secret) if resolve is None else resolve
        )
        self.known = known
        self.forget_secret = forget_secret

    # -- starting -------------------------------------------------------------------------------

    def start_auth(self, entry: Entry) -> Pending:
        """A new authorisation request; the notifier reminds of it at once."""
        request = new_auth_request(self.known(entry.account), *self._ports())
        pending = Pending(request)
        self.change(entry, pending, Cause.LOGIN)
        return pending

    def refresh_due(self, now: float) -> None:
        for entry in due(self.table, now):
            self.start_refresh(entry, now)

    def start_refresh(self, entry: Entry, now: float) -> None:
        active = entry.state
        if not isinstance(active, Active) or active.ongoing_refresh:
            return
        if active.refresh_token is None:
            if active.expiry <= now:
                self.change(entry, Empty(), Cause.EXPIRY)  # kept while it lasted, now gone
            return
        log.info("starting inner refresh")
        active.ongoing_refresh = True
        active.last_refresh_attempt = now
        refresh_token = active.refresh_token
        self._when_resolved(
            entry,
            RequestKind.REFRESH,
            lambda account, secret: ipc.NetRefresh(
                account.token_uri or "",
                account.client_id,
                secret,
                refresh_token.view(),
                account.token_endpoint_auth_method,
            ),
        )

    def exchange(self, entry: Entry, code: str) -> None:
        """Exchange the code a callback brought, unless an exchange is already under way."""
        pending = entry.state
        assert isinstance(pending, Pending)
        if pending.exchanging:
            return  # a second callback with the same state: the first one's code is in use
        pending.exchanging = True
        self._when_resolved(
            entry,
            RequestKind.EXCHANGE,
            lambda account, secret: ipc.NetExchange(
                account.token_uri or "",
                account.client_id,
                secret,
                code,
                pending.request.code_verifier.view(),
                pending.request.redirect_uri,
                account.token_endpoint_auth_method,
            ),
        )

    def _when_resolved(
        self,
        entry: Entry,
        kind: RequestKind,
        build: Callable[[Account, memoryview | None], ipc.Wire],
    ) -> None:
        """Send the request `build` makes once the token endpoint and client secret are
        known (at once when the configuration has them), if the account has not changed."""
        name, generation = entry.account.name, entry.generation

        def resolved(outcome: Outcome) -> None:
            current = self.table.get(name)
            if current is None or current.generation != generation:
                if kind == RequestKind.EXCHANGE:
                    self.exchange_done(name, STALE_EXCHANGE)
                return
            if isinstance(outcome, Unready):
                self._not_sent(current, kind, outcome)
                return
            if kind == RequestKind.REFRESH and isinstance(current.state, Active):
                why = binding.refused(current.state, outcome.account.token_uri or "")
                if why is not None:
                    self._unbound(current, why)
                    return
            secret = None if outcome.secret is None else outcome.secret.view()
            self._request(current, kind, build(outcome.account, secret))

        self.resolve(entry.account, "token_uri", True, resolved)

    def _not_sent(self, entry: Entry, kind: RequestKind, why: Unready) -> None:
        """No request could be made: a failed exchange, or a refresh that keeps the token
        and is tried again after refresh_retry."""
        name = entry.account.name
        if kind == RequestKind.REFRESH and why.notify:
            # A refresh's transient failure is not otherwise reported.
            self.notifier.error(name, f"Refreshing {shown(name)} failed: {why.message}")
        outcome = TokenOutcome.TRANSIENT if kind == RequestKind.REFRESH else TokenOutcome.PERMANENT
        self._result(NetRequest(kind, name, entry.generation), NetTokenResult(outcome, why.message))

    def _unbound(self, entry: Entry, why: str) -> None:
        """The token endpoint moved away from the one that issued the token: the token is
        dropped unsent and the user told to log in again (priv/state/binding.py)."""
        name = entry.account.name
        log.error("Refreshing %s: %s", shown(name), why)
        self.failed(entry, why, self._clock())
        self.change(entry, Empty(), Cause.REFRESH_FAILURE)
        self.notifier.error(name, f"Refreshing {shown(name)} failed permanently: {why}")

    def _client_secret(self, entry: Entry) -> memoryview | None:
        secret = self.table.client_secret(entry.account.name)  # a Secret: no str or bytes copy
        return None if secret is None else secret.view()

    def _request(self, entry: Entry, kind: RequestKind, message: ipc.Wire) -> None:
        name, generation = entry.account.name, entry.generation
        request = NetRequest(kind, name, generation, getattr(message, "token_uri", ""))
        try:
            self._call(
                message, lambda result: self._result(request, result), lambda: self._lost(request)
            )
        except ipc.ProtocolError as e:
            # A configured value over its limit: fail this request, not the server.
            self._result(
                NetRequest(kind, name, generation), NetTokenResult(TokenOutcome.PERMANENT, str(e))
            )

    # -- results --------------------------------------------------------------------------------

    def _result(self, request: NetRequest, result: NetTokenResult) -> None:
        """The NET_TOKEN_RESULT of an exchange or a refresh."""
        if result.provider_error == "invalid_client":
            self.forget_secret(request.account)  # a client_secret_cmd runs again next time
        entry = self.table.get(request.account)
        if entry is None or entry.generation != request.generation:
            if request.kind == RequestKind.EXCHANGE:
                self.exchange_done(request.account, STALE_EXCHANGE)
            return  # the account changed meanwhile: the result is stale
        name = entry.account.name
        now = self._clock()
        if result.outcome is TokenOutcome.OK:
            cause = Cause.REFRESH if request.kind == RequestKind.REFRESH else Cause.GRANT
            self._token_received(entry, result, now, request.endpoint, cause)
            if request.kind == RequestKind.EXCHANGE:
                self.exchange_done(name, None)
        elif request.kind == RequestKind.EXCHANGE:
            self.failed(entry, result.message, now)
            self.change(entry, Empty(), Cause.LOGIN_FAILURE)
            self.notifier.error(name, f"Authentication for {shown(name)} failed: {result.message}")
            self.exchange_done(name, result.message)
        elif result.outcome is TokenOutcome.TRANSIENT:
            self.transient_failure(entry, result.message, now, result.retry_after)
        else:
            log.info("Permanent refresh error for %s: %s", shown(name), result.message)
            self.failed(entry, result.message, now)
            self.change(entry, Empty(), Cause.REFRESH_FAILURE)
            # A token that can no longer be refreshed is news the user needs.
            self.notifier.error(
                name, f"Refreshing {shown(name)} failed permanently: {result.message}"
            )

    def failed(self, entry: Entry, message: str, now: float) -> None:
        """Remember why the account's last attempt failed (`status` and `show` say it);
        `message` is already safe and bounded. The next token obtained clears it."""
        entry.last_error = LastError(message, now)

    def token_received(
        self, entry: Entry, result: NetTokenResult, now: float, endpoint: str
    ) -> None:
        """A token a device login obtained through token endpoint `endpoint`."""
        self._token_received(entry, result, now, endpoint, Cause.GRANT)

    def _token_received(
        self, entry: Entry, result: NetTokenResult, now: float, endpoint: str, cause: Cause
    ) -> None:
        # expires_in is only recommended (RFC 6749): without it, refresh_at_least decides.
        expires_in = result.expires_in
        if expires_in is None:
            expires_in = entry.account.refresh_at_least
        old = entry.state
        refresh_token: Secret | None = None
        if result.refresh_kind is RefreshKind.STRING:
            refresh_token = Secret(result.refresh_token)
        elif (
            result.refresh_kind is RefreshKind.ABSENT
            and isinstance(old, Active)
            and old.refresh_token is not None
        ):
            refresh_token = Secret(old.refresh_token.view())  # RFC 6749 §6: keep the old one
        entry.last_error = None
        active = Active(Secret(result.access_token), now, now + expires_in, refresh_token)
        active.token_uri = endpoint or None
        self.change(entry, active, cause)

    def transient_failure(
        self, entry: Entry, message: str, now: float, retry_after: int | None = None
    ) -> None:
        """A refresh that may work later: retried after refresh_retry (or the provider's
        Retry-After, within bounds: failures.retry_delay), and every so often
        transient_error_if_cmd is asked whether to give up instead."""
        active = entry.state
        assert isinstance(active, Active)
        active.last_refresh_attempt = now
        active.retry_after = retry_after
        active.consecutive_refresh_fails += 1
        self.failed(entry, message, now)
        name = entry.account.name
        cmd = self._config().transient_error_if_cmd
        if cmd and active.consecutive_refresh_fails % TRANSIENT_ARBITRATION_EVERY == 0:
            generation = entry.generation

            def judged(error: str | None) -> None:
                if not self.table.is_current(name, generation):
                    return
                current = self.table.entries[name]
                if error is None:
                    assert isinstance(current.state, Active)
                    current.state.ongoing_refresh = False
                else:
                    log.error("Permanent refresh error for %s: %s", shown(name), error)
                    self.change(current, Empty(), Cause.REFRESH_FAILURE)

            active.ongoing_refresh = True
            self.hooks.start(cmd, {"PIZAUTH_ACCOUNT": name}, TRANSIENT_ERROR_IF, judged)
            return
        active.ongoing_refresh = False
        log.info("Transitory refresh error for %s: %s", shown(name), message)

    def _lost(self, request: NetRequest) -> None:
        """The network child went away before answering `request`."""
        entry = self.table.get(request.account)
        if entry is None or entry.generation != request.generation:
            return
        if request.kind == RequestKind.EXCHANGE and isinstance(entry.state, Pending):
            # The code may or may not have been used: the user can simply log in again.
            entry.state.exchanging = False
        elif request.kind == RequestKind.REFRESH and isinstance(entry.state, Active):
            self.transient_failure(entry, "network process restarted", self._clock())

    def change(self, entry: Entry, state: TokenState, cause: Cause) -> None:
        """A change of `entry`'s token state for `cause`: the table makes it, if the state
        machine allows it, and raises its event (priv/state/tokenstate.py)."""
        self.table.transition(entry.account.name, state, cause)
