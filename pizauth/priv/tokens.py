"""Token state per account: Empty -> Pending -> Active, and back to Empty.
A device-flow account (auth_flow = "device") is DevicePending instead of Pending.

Every change of state goes through TokenTable.transition, which also says
which event (if any) token_event_cmd is told of.

Each account has a generation that changes whenever its token state is
replaced or a reload changes the account. Work that takes time (a code
exchange, a refresh) remembers the generation it started from; a result for
an older generation is discarded. Bookkeeping (reminder times, the
"refreshing" flag) is updated in place and does not change the generation, so
a reminder sent while a login completes can never throw that login away.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pizauth.config import Account
from pizauth.ipc import TokenEvent
from pizauth.priv.authurl import AuthRequest
from pizauth.priv.clock import format_instant
from pizauth.priv.failures import LastError, status_suffix
from pizauth.priv.secmem import Secret


@dataclass(slots=True)
class Empty:
    def wipe(self) -> None:
        pass


@dataclass(slots=True)
class Pending:
    request: AuthRequest
    last_notification: float | None = None
    # A code exchange is under way: a second callback (a reload of the page) must not
    # send the code again, which some providers punish by revoking the grant.
    exchanging: bool = False

    def wipe(self) -> None:
        self.request.code_verifier.wipe()


@dataclass(slots=True)
class DevicePending:
    """A device login (RFC 8628). Until the provider has answered the device
    authorization request, `device_code` is None and nothing is to be shown or polled.
    priv/device.py holds the schedule."""

    device_code: Secret | None = None  # a credential, like a refresh token
    user_code: str = ""
    uri: str = ""  # verification_uri_complete if the provider gave one, else verification_uri
    expires_at: float = float("inf")
    interval: float = 0.0  # seconds between polls: the provider's, plus 5 per slow_down
    next_poll: float = float("inf")
    polling: bool = False  # a poll is under way: never two at once
    last_notification: float | None = None

    def wipe(self) -> None:
        if self.device_code is not None:
            self.device_code.wipe()


@dataclass(slots=True)
class Active:
    access_token: Secret
    obtained: float
    expiry: float
    refresh_token: Secret | None
    ongoing_refresh: bool = False
    consecutive_refresh_fails: int = 0
    last_refresh_attempt: float | None = None
    # What the provider's Retry-After asked for with the last transient failure, if any.
    retry_after: int | None = None
    # The token endpoint that issued the token, the only one its refresh token goes to
    # (priv/binding.py); None when restored from a dump or the store, until a refresh.
    token_uri: str | None = None

    def wipe(self) -> None:
        self.access_token.wipe()
        if self.refresh_token is not None:
            self.refresh_token.wipe()


TokenState = Empty | Pending | DevicePending | Active


@dataclass(slots=True)
class Entry:
    account: Account
    generation: int
    state: TokenState
    # Why the last attempt for this account failed; set and cleared by the refresher.
    last_error: LastError | None = None


class TokenTable:
    """The only place tokens live. Owned by the parent's event loop (one thread)."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        accounts = list(accounts)
        self._generations = itertools.count()
        self.entries: dict[str, Entry] = {
            a.name: Entry(a, next(self._generations), Empty()) for a in accounts
        }
        self.client_secrets = _client_secrets(accounts)
        # Told whenever a token appears, changes or goes (every replace or reload that
        # touches an Active state): the token store is rewritten after it.
        self.on_change: Callable[[], None] = lambda: None

    def client_secret(self, name: str) -> Secret | None:
        """The account's client secret as a Secret (made once per configuration load)."""
        return self.client_secrets.get(name)

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def is_current(self, name: str, generation: int) -> bool:
        entry = self.entries.get(name)
        return entry is not None and entry.generation == generation

    def transition(self, name: str, state: TokenState, revoked: bool = False) -> TokenEvent | None:
        """Move `name` to `state` (see replace); the event this raises, if any.

        A token obtained is new, unless it replaces an active one (a refresh); an
        active token that goes is revoked if the user asked (`revoked`), else
        invalidated. Nothing else raises an event.
        """
        had_token = isinstance(self.entries[name].state, Active)
        self.replace(name, state)
        if isinstance(state, Active):
            return TokenEvent.REFRESHED if had_token else TokenEvent.NEW
        if had_token:
            return TokenEvent.REVOKED if revoked else TokenEvent.INVALIDATED
        return None

    def replace(self, name: str, state: TokenState) -> Entry:
        """Give `name` a new token state and generation, wiping the old state.
        Handlers use transition(); this is for restoring a dump."""
        entry = self.entries[name]
        tokens_changed = isinstance(entry.state, Active) or isinstance(state, Active)
        if entry.state is not state:
            entry.state.wipe()
        entry.state = state
        entry.generation = next(self._generations)
        if tokens_changed:
            self.on_change()
        return entry

    def pending_with_state(self, state: str) -> Entry | None:
        for entry in self.entries.values():
            if isinstance(entry.state, Pending) and entry.state.request.state == state:
                return entry
        return None

    def reload(self, accounts: Iterable[Account]) -> list[str]:
        """Apply a new configuration: an account whose endpoints or client changed starts
        afresh. Returns the accounts whose token was dropped (each is invalidated)."""
        accounts = list(accounts)
        _wipe_secrets(self.client_secrets)
        self.client_secrets = _client_secrets(accounts)
        dropped = []
        new: dict[str, Entry] = {}
        for account in accounts:
            old = self.entries.pop(account.name, None)
            if old is not None and old.account.security_key() == account.security_key():
                old.account = account
                new[account.name] = old
            else:
                if old is not None:
                    if isinstance(old.state, Active):
                        dropped.append(account.name)
                    old.state.wipe()
                new[account.name] = Entry(account, next(self._generations), Empty())
        for old in self.entries.values():
            if isinstance(old.state, Active):
                dropped.append(old.account.name)
            old.state.wipe()
        self.entries = new
        if dropped:
            self.on_change()
        return dropped

    def wipe_all(self) -> None:
        """Forget every token and client secret (shutdown)."""
        for entry in self.entries.values():
            entry.state.wipe()
            entry.state = Empty()
        _wipe_secrets(self.client_secrets)

    def status(self, now: float) -> str:
        lines = [
            f"{name}: {describe(entry.state, now)}{status_suffix(entry.last_error)}"
            for name, entry in self.entries.items()
        ]
        # Whole lines in byte order, as pizauth 1.1 sorts them.
        return "\n".join(sorted(lines, key=lambda s: s.encode("utf-8")))


def _client_secrets(accounts: Iterable[Account]) -> dict[str, Secret]:
    # The config's str copy cannot be wiped; this one is what requests use,
    # so no further str or bytes copy is made per request.
    return {
        a.name: Secret(a.client_secret.encode()) for a in accounts if a.client_secret is not None
    }


def _wipe_secrets(secrets: dict[str, Secret]) -> None:
    for secret in secrets.values():
        secret.wipe()
    secrets.clear()


def describe(state: TokenState, now: float) -> str:
    match state:
        case Empty():
            return "No access token"
        case Pending(last_notification=None) | DevicePending(last_notification=None):
            return "Access token pending authentication"
        case Pending(last_notification=t) | DevicePending(last_notification=t):
            return f"Access token pending authentication (last notification {format_instant(t)})"
        case Active(expiry=expiry, obtained=obtained) if expiry > now:
            return (
                f"Active access token (obtained {format_instant(obtained)}; "
                f"expires {format_instant(expiry)})"
            )
        case Active(last_refresh_attempt=None):
            return "Access token expired (refresh not yet attempted)"
        case Active(last_refresh_attempt=t):
            return f"Access token expired (last refresh attempt {format_instant(t)})"
    raise AssertionError(state)
