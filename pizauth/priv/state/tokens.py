"""Token state per account: Empty -> Pending -> Active, and back to Empty.
A device-flow account (auth_flow = "device") is DevicePending instead of Pending.

Every change of state goes through TokenTable (transition, reload, wipe_all), which
makes it only if the state machine (priv/state/tokenstate.py) allows it, and raises the event
(if any) the machine says token_event_cmd is told of.

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
from pizauth.priv.state.clock import format_instant
from pizauth.priv.state.failures import LastError, status_suffix
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokenstate import (
    Active,
    Cause,
    DevicePending,
    Empty,
    Pending,
    TokenState,
    step,
)

__all__ = ["Active", "Cause", "DevicePending", "Empty", "Entry", "Pending", "TokenState"]


@dataclass(slots=True)
class Entry:
    account: Account
    generation: int
    state: TokenState
    # Why the last attempt for this account failed; set and cleared by the refresher.
    last_error: LastError | None = None


class TokenTable:
    """The only place tokens live. Owned by the parent's event loop (one thread)."""

    def __init__(
        self,
        accounts: Iterable[Account],
        on_event: Callable[[str, TokenEvent], None] = lambda name, event: None,
    ) -> None:
        accounts = list(accounts)
        self._generations = itertools.count()
        self.entries: dict[str, Entry] = {
            a.name: Entry(a, next(self._generations), Empty()) for a in accounts
        }
        self.client_secrets = _client_secrets(accounts)
        # Told whenever a token appears, changes or goes (every replace or reload that
        # touches an Active state): the token store is rewritten after it.
        self.on_change: Callable[[], None] = lambda: None
        # Told of each event a change raises (the parent's notifier: token_event_cmd).
        self.on_event = on_event

    def client_secret(self, name: str) -> Secret | None:
        """The account's client secret as a Secret (made once per configuration load)."""
        return self.client_secrets.get(name)

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def is_current(self, name: str, generation: int) -> bool:
        entry = self.entries.get(name)
        return entry is not None and entry.generation == generation

    def transition(self, name: str, state: TokenState, cause: Cause) -> Entry:
        """Move `name` to `state` for `cause`, if the state machine allows it (else
        IllegalTransition, and nothing changes): a new generation, the old state wiped
        (unless it is `state` itself), and the event the machine names raised."""
        entry = self.entries[name]
        event = step(entry.state, cause, state)
        tokens_changed = isinstance(entry.state, Active) or isinstance(state, Active)
        if entry.state is not state:
            entry.state.wipe()
        entry.state = state
        entry.generation = next(self._generations)
        if tokens_changed:
            self.on_change()
        if event is not None:
            self.on_event(name, event)
        return entry

    def pending_with_state(self, state: str) -> Entry | None:
        for entry in self.entries.values():
            if isinstance(entry.state, Pending) and entry.state.request.state == state:
                return entry
        return None

    def reload(self, accounts: Iterable[Account]) -> list[str]:
        """Apply a new configuration: an account whose endpoints or client changed starts
        afresh (a new entry, so a new generation), one no longer configured goes. Returns
        the accounts whose token was dropped (each is invalidated)."""
        accounts = list(accounts)
        kept = {
            a.name
            for a in accounts
            if a.name in self.entries
            and self.entries[a.name].account.security_key() == a.security_key()
        }
        # Changed accounts in the new configuration's order, then those that went. Each
        # is checked before anything changes: an illegal change leaves the table as it was.
        gone = [self.entries[a.name] for a in accounts if a.name in self.entries]
        gone += [e for name, e in self.entries.items() if name not in {a.name for a in accounts}]
        gone = [e for e in gone if e.account.name not in kept]
        events = [(e.account.name, step(e.state, Cause.RELOAD, Empty())) for e in gone]
        _wipe_secrets(self.client_secrets)
        self.client_secrets = _client_secrets(accounts)
        new: dict[str, Entry] = {}
        for account in accounts:
            if account.name in kept:
                new[account.name] = self.entries[account.name]
                new[account.name].account = account
            else:
                new[account.name] = Entry(account, next(self._generations), Empty())
        for old in gone:
            old.state.wipe()
        self.entries = new
        dropped = [name for name, event in events if event is not None]
        if dropped:
            self.on_change()
        for name, event in events:
            if event is not None:
                self.on_event(name, event)
        return dropped

    def wipe_all(self) -> None:
        """Forget every token and client secret (shutdown). The last change: no
        generation, token store write or event follows it."""
        try:
            for entry in self.entries.values():
                step(entry.state, Cause.SHUTDOWN, Empty())
        finally:  # even a bug leaves no token behind
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
