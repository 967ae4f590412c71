"""Before a request to the provider: the account's endpoints and client secret.

An endpoint written in the configuration is used as it is. One left out, for an
account with an `issuer`, comes from the issuer's metadata, which the network
child fetches (NET_METADATA) when an account first needs it. Nothing the network
child said outlives it: the answer is kept until the configuration is reloaded or
that network child exits or is restarted (network_lost), whichever comes first, and
a failure to fetch is not kept at all, so the next need tries again. A document the
network child judged unusable (another issuer, a malformed endpoint), or that names a
plain http endpoint for an issuer not on this machine (uri.endpoint_allowed, checked
again here whatever the child says), is kept as such: none of its endpoints is used
until it is forgotten.

A `client_secret_cmd` runs when its secret is first needed (never at start-up: a
locked password store must not hold up the server), without blocking the loop
(priv/run/secretcmd.py). The secret is kept in the locked arena until a reload, the
shutdown, or the token endpoint's `invalid_client` (forget_secret), after which
the next need runs the command again.

Everything here answers through callbacks, possibly before `resolve` returns:
the parent is one loop and never waits. A caller must check, when its callback
runs, that the account is still in the state it started from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pizauth import ipc, runtime
from pizauth.config import Account
from pizauth.ipc import NetMetadataResult, TokenOutcome
from pizauth.priv.run import secretcmd
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.text import shown
from pizauth.uri import endpoint_allowed, http_uri

log = logging.getLogger("pizauth")

# Each endpoint option of an account, and the metadata field that fills it in.
ENDPOINTS = {
    "auth_uri": "authorization_endpoint",
    "token_uri": "token_endpoint",
    "device_auth_uri": "device_authorization_endpoint",
    "revoke_uri": "revocation_endpoint",
}
NETWORK_LOST = "network process restarted"
RELOADED = "the configuration was reloaded"


@dataclass(frozen=True, slots=True)
class Ready:
    """The account with every endpoint known filled in, and its client secret: the
    resolver's or the table's Secret, to be used at once and never kept or wiped."""

    account: Account
    secret: Secret | None


@dataclass(frozen=True, slots=True)
class Unready:
    """Why the request cannot be made now. `transient`: it may work on the next try.
    `notify`: error_notify_cmd should hear of it (the resolver says so once for a
    document it cannot use, and for every failed client_secret_cmd)."""

    message: str
    transient: bool
    notify: bool


Outcome = Ready | Unready
Done = Callable[[Outcome], None]


def configured(table_secret: Callable[[str], Secret | None]) -> Callable[..., None]:
    """A resolve() for when there is no resolver: the configuration as written."""

    def resolve(
        account: Account, endpoint: str, with_secret: bool, done: Done, optional: bool = False
    ) -> None:
        done(Ready(account, table_secret(account.name) if with_secret else None))

    return resolve


class Resolver:
    """`call` asks the network child (runtime.Calls.call); `table_secret(name)` is the
    configured client_secret as a Secret; watch/unwatch register descriptors with the
    parent's selector (for client_secret_cmd); `clock()` is the instant now (the
    parent's loop ticks with the same clock)."""

    def __init__(
        self,
        call: runtime.Caller,
        table_secret: Callable[[str], Secret | None],
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        clock: Callable[[], float] = instant,
    ) -> None:
        self._call = call
        self._clock = clock
        self._table_secret = table_secret
        self.commands = secretcmd.SecretCommands(watch, unwatch, clock=clock)
        # Per issuer: a usable document, or one judged unusable ("permanent").
        self.metadata: dict[str, NetMetadataResult] = {}
        # Counts reloads and losses of the network child: the result of a fetch asked
        # for before the last one is dropped (not taken for a protocol error).
        self.epoch = 0
        self.waiting: dict[str, list[Callable[[NetMetadataResult], None]]] = {}
        self.secrets: dict[str, Secret] = {}  # account -> from its client_secret_cmd
        self.secret_waiting: dict[str, list[Callable[[Secret | None, str], None]]] = {}
        self.reported: set[str] = set()  # accounts told of an unusable document
        self.timers: list[tuple[float, Callable[[], None]]] = []

    # -- what callers use ---------------------------------------------------------------

    def known(self, account: Account) -> Account:
        """`account` with the endpoints a usable cached document gives filled in."""
        if account.issuer is None:
            return account
        found = self.metadata.get(account.issuer)
        if found is None or found.outcome is not TokenOutcome.OK:
            return account
        return _filled(account, found)

    def ready(self, account: Account, endpoint: str) -> bool:
        """Whether `endpoint` of `account` is known now (no fetch needed)."""
        return getattr(self.known(account), endpoint) is not None

    def login_ready(self, account: Account) -> bool:
        """Whether a login can start now: the authorisation endpoint known and the client
        secret held (a client_secret_cmd that fails is told at once, not after the
        browser login)."""
        if not self.ready(account, "auth_uri"):
            return False
        return account.client_secret_cmd is None or account.name in self.secrets

    def waiting_for(self, account: Account) -> str:
        """What a login of `account` still waits for, for a `show` that cannot wait longer."""
        if not self.ready(account, "auth_uri"):
            return f"still fetching the metadata of {account.issuer}: try again"
        return f"client_secret_cmd for {shown(account.name)} still running: try again"

    def endpoints(self, account: Account) -> dict[str, str]:
        """What `info` says of an account with an issuer: whether its endpoints are
        resolved ("resolved": "yes", "no" or "failed", with "error"), and each one known."""
        out = {"issuer": account.issuer or ""}
        found = self.metadata.get(account.issuer or "")
        if found is None:
            out["resolved"] = "no"
        elif found.outcome is not TokenOutcome.OK:
            out["resolved"] = "failed"
            out["error"] = found.message
        else:
            out["resolved"] = "yes"
        known = self.known(account)
        for field in ENDPOINTS:
            value = getattr(known, field)
            if value is not None:
                out[field] = value
        return out

    def resolve(
        self, account: Account, endpoint: str, with_secret: bool, done: Done, optional: bool = False
    ) -> None:
        """Call `done` once `endpoint` (a key of ENDPOINTS) and, with `with_secret`, the
        client secret are known, or with why not. With `optional`, an endpoint neither
        configured nor published is no error: `done` gets a Ready whose account lacks it
        (and no secret is fetched for it)."""

        def have(found: NetMetadataResult | None) -> None:
            outcome = self._endpoint(account, endpoint, optional, found)
            if isinstance(outcome, Unready):
                done(outcome)
            elif not with_secret or getattr(outcome, endpoint) is None:
                done(Ready(outcome, None))
            else:
                self._secret(outcome, done)

        if getattr(account, endpoint) is not None or account.issuer is None:
            have(None)
        elif account.issuer in self.metadata:
            have(self.metadata[account.issuer])
        else:
            self._fetch(account.issuer, have)

    def bounded(self, done: Done, limit: float, message: str) -> Done:
        """`done`, called once: with the outcome, or with a transient Unready(`message`)
        if it has not come within `limit` seconds (a client cannot wait for ever)."""
        called = False

        def once(outcome: Outcome) -> None:
            nonlocal called
            if not called:
                called = True
                done(outcome)

        self.timers.append((self._clock() + limit, lambda: once(Unready(message, True, False))))
        return once

    def forget_secret(self, name: str) -> None:
        """The provider refused the client (invalid_client): run the command again next time."""
        secret = self.secrets.pop(name, None)
        if secret is not None:
            secret.wipe()
            log.info("client secret of %s forgotten: the provider refused it", shown(name))

    # -- the loop's timers ---------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        times = [at for at, _ in self.timers]
        deadline = self.commands.next_deadline()
        if deadline is not None:
            times.append(deadline)
        return min(times, default=None)

    def tick(self, now: float) -> None:
        self.commands.enforce_timeouts(now)
        due = [callback for at, callback in self.timers if at <= now]
        self.timers = [(at, callback) for at, callback in self.timers if at > now]
        for callback in due:
            callback()

    # -- metadata ------------------------------------------------------------------------

    def _endpoint(
        self, account: Account, endpoint: str, optional: bool, found: NetMetadataResult | None
    ) -> Account | Unready:
        if found is None:
            if getattr(account, endpoint) is None and not optional:
                # The configuration refuses this; kept as an error rather than a crash.
                return Unready(f"{endpoint} is not configured", False, True)
            return account
        if found.outcome is not TokenOutcome.OK:
            transient = found.outcome is TokenOutcome.TRANSIENT
            return Unready(found.message, transient, self._first_report(account, transient))
        filled = _filled(account, found)
        if getattr(filled, endpoint) is None and not optional:
            message = (
                f"the metadata of issuer {account.issuer} has no {ENDPOINTS[endpoint]}"
                f" and {endpoint} is not configured"
            )
            return Unready(message, False, self._first_report(account, False))
        return filled

    def _first_report(self, account: Account, transient: bool) -> bool:
        # An unusable document is told of once per account: later needs meet the same one.
        if transient or account.name in self.reported:
            return False
        self.reported.add(account.name)
        return True

    def _fetch(self, issuer: str, then: Callable[[NetMetadataResult], None]) -> None:
        waiting = self.waiting.get(issuer)
        if waiting is not None:
            waiting.append(then)  # one fetch per issuer, whoever needs it
            return
        self.waiting[issuer] = [then]
        epoch = self.epoch

        def lost() -> None:
            if epoch == self.epoch:
                self._fetched(issuer, NetMetadataResult(TokenOutcome.TRANSIENT, NETWORK_LOST))

        try:
            self._call(
                ipc.NetMetadata(issuer), lambda result: self._result(issuer, epoch, result), lost
            )
        except ipc.ProtocolError as e:  # an issuer over its limit: the config allows none
            self._fetched(issuer, NetMetadataResult(TokenOutcome.PERMANENT, str(e)))
            return
        log.info("fetching the metadata of %s", issuer)

    def _result(self, issuer: str, epoch: int, result: NetMetadataResult) -> None:
        """The NET_METADATA_RESULT of a fetch; dropped if asked for before a reload."""
        if epoch != self.epoch:
            return
        endpoints = (
            result.authorization_endpoint,
            result.token_endpoint,
            result.device_authorization_endpoint,
            result.revocation_endpoint,
        )
        # The network child judged them; checked again, as they reach the user's browser.
        if any(uri and http_uri(uri, https_only=False) is None for uri in endpoints):
            raise ipc.ProtocolError("malformed endpoint in a metadata result")
        self._fetched(issuer, _allowed(issuer, result))

    def _fetched(self, issuer: str, result: NetMetadataResult) -> None:
        if result.outcome is not TokenOutcome.TRANSIENT:
            self.metadata[issuer] = result
        if result.outcome is not TokenOutcome.OK:
            log.info("metadata of %s: %s", issuer, result.message)
        for then in self.waiting.pop(issuer, []):
            then(result)

    # -- the client secret ---------------------------------------------------------------

    def _secret(self, account: Account, done: Done) -> None:
        name = account.name
        if account.client_secret_cmd is None:
            done(Ready(account, self._table_secret(name)))
            return
        secret = self.secrets.get(name)
        if secret is not None:
            done(Ready(account, secret))
            return

        def then(secret: Secret | None, error: str) -> None:
            if secret is None:
                done(Unready(error, True, True))
            else:
                done(Ready(account, secret))

        waiting = self.secret_waiting.get(name)
        if waiting is not None:
            waiting.append(then)  # the command is running for another request
            return
        self.secret_waiting[name] = [then]
        log.info("running client_secret_cmd for %s", shown(name))

        def finished(result: secretcmd.Result) -> None:
            waiters = self.secret_waiting.pop(name, [])
            if isinstance(result, secretcmd.CommandError):
                log.info("client_secret_cmd for %s: %s", shown(name), result.message)
                for waiter in waiters:
                    waiter(None, result.message)
                return
            old = self.secrets.pop(name, None)
            if old is not None:
                old.wipe()
            self.secrets[name] = result
            for waiter in waiters:
                waiter(result, "")

        self.commands.start(
            account.client_secret_cmd, secretcmd.CLIENT_SECRET, {"PIZAUTH_ACCOUNT": name}, finished
        )

    # -- endings -------------------------------------------------------------------------

    def network_lost(self, why: str = NETWORK_LOST) -> None:
        """The network child went away: fetches in flight fail, transiently, and every
        document it gave is forgotten. A child that lied once and was then killed must
        not go on steering other accounts' codes and tokens (tests/test_child_lies.py)."""
        self.epoch += 1
        for issuer in list(self.waiting):
            self._fetched(issuer, NetMetadataResult(TokenOutcome.TRANSIENT, why))
        if self.metadata:
            log.info("issuer metadata forgotten: %s", why)
        self.metadata.clear()
        self.reported.clear()

    def reload(self) -> None:
        """A new configuration: forget every document and secret; whoever waits is told."""
        self.commands.kill_all()  # no on_done: the waiters are told here
        secret_waiting, self.secret_waiting = self.secret_waiting, {}
        for name, waiters in secret_waiting.items():
            for waiter in waiters:
                waiter(None, f"client_secret_cmd for {shown(name)} not finished: {RELOADED}")
        self.network_lost(RELOADED)
        self._forget()

    def shutdown(self) -> None:
        """End every command and wipe every secret; nobody is told (all is ending)."""
        self.commands.kill_all()
        self.secret_waiting.clear()
        self.waiting.clear()
        self._forget()

    def _forget(self) -> None:
        for secret in self.secrets.values():
            secret.wipe()
        self.secrets.clear()
        self.metadata.clear()
        self.reported.clear()


def _allowed(issuer: str, result: NetMetadataResult) -> NetMetadataResult:
    """`result`, or an unusable one if it names an endpoint `issuer` may not use."""
    for meta in ENDPOINTS.values():
        uri = getattr(result, meta)
        if uri and not endpoint_allowed(issuer, uri):
            return NetMetadataResult(
                TokenOutcome.PERMANENT,
                f"the metadata of issuer {issuer} names a plain http {meta} ({uri});"
                " only an issuer on this machine may",
            )
    return result


def _filled(account: Account, found: NetMetadataResult) -> Account:
    """`account` with each endpoint it leaves out taken from `found`: the config wins."""
    changes = {
        field: getattr(found, meta)
        for field, meta in ENDPOINTS.items()
        if getattr(account, field) is None and getattr(found, meta)
    }
    return dataclasses.replace(account, **changes) if changes else account
