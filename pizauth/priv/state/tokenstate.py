"""The token state machine: an account's token states and every change between them.

Everything that decides which state may follow which, and what token_event_cmd is told
of it, lives here: TRANSITIONS is the whole of it, as data. Each row says, for a state
kind and the cause of a change, which kind follows and which event (if any) that raises.
TokenTable (priv/state/tokens.py) makes a change only once step() has allowed it; a change
that is not in the table is a bug, and raises IllegalTransition instead of happening.

Bookkeeping changed in place (the last reminder, an exchange, poll or refresh under way,
failure counters) is not a change of state: it is not in the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pizauth.ipc import TokenEvent
from pizauth.priv.state.authurl import AuthRequest
from pizauth.priv.state.secmem import Secret


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
    priv/flows/device.py holds the schedule."""

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
    # (priv/state/binding.py); None when restored from a dump or the store, until a refresh.
    token_uri: str | None = None

    def wipe(self) -> None:
        self.access_token.wipe()
        if self.refresh_token is not None:
            self.refresh_token.wipe()


TokenState = Empty | Pending | DevicePending | Active


class Cause(enum.Enum):
    """Why a token state changes."""

    LOGIN = "login"  # `show` or `refresh` starts a login: a new URL
    DEVICE_LOGIN = "device login"  # a device login starts, its code not yet known
    DEVICE_CODE = "device code"  # the provider answered the device authorization request
    GRANT = "grant"  # a login ended with a token: a code exchange or a device poll
    REFRESH = "refresh"  # a refresh gave a new token
    LOGIN_FAILURE = "login failure"  # a redirect's error, a failed exchange or device login
    REFRESH_FAILURE = "refresh failure"  # permanent, or the token endpoint moved away
    EXPIRY = "expiry"  # expired with no refresh token to renew it
    REVOKE = "revoke"  # `pizauth revoke`
    NETWORK_LOST = "network lost"  # the network child, which made the login, went away
    RELOAD = "reload"  # the account changed or went, or the redirect port moved
    RESTORE = "restore"  # `pizauth restore`
    STORE_OPEN = "store open"  # the token store was opened
    SHUTDOWN = "shutdown"  # the server stops (or fails): every token is wiped


@dataclass(frozen=True)
class Rule:
    to: type[TokenState]
    event: TokenEvent | None


_NEW = TokenEvent.NEW
_INVALIDATED = TokenEvent.INVALIDATED

# (kind before, cause) -> (kind after, event raised). Nothing else may happen.
TRANSITIONS: dict[tuple[type[TokenState], Cause], Rule] = {
    (Empty, Cause.LOGIN): Rule(Pending, None),
    (Pending, Cause.LOGIN): Rule(Pending, None),  # `refresh`: a new URL, the old one void
    (Empty, Cause.DEVICE_LOGIN): Rule(DevicePending, None),
    (DevicePending, Cause.DEVICE_LOGIN): Rule(DevicePending, None),
    (DevicePending, Cause.DEVICE_CODE): Rule(DevicePending, None),
    (Pending, Cause.GRANT): Rule(Active, _NEW),
    (DevicePending, Cause.GRANT): Rule(Active, _NEW),
    (Active, Cause.REFRESH): Rule(Active, TokenEvent.REFRESHED),
    (Pending, Cause.LOGIN_FAILURE): Rule(Empty, None),
    (DevicePending, Cause.LOGIN_FAILURE): Rule(Empty, None),
    (Active, Cause.REFRESH_FAILURE): Rule(Empty, _INVALIDATED),
    (Active, Cause.EXPIRY): Rule(Empty, _INVALIDATED),  # pizauth 1.1: no event
    (Pending, Cause.REVOKE): Rule(Empty, None),
    (DevicePending, Cause.REVOKE): Rule(Empty, None),
    (Active, Cause.REVOKE): Rule(Empty, TokenEvent.REVOKED),  # 1.1 raised it from any state
    (Pending, Cause.NETWORK_LOST): Rule(Empty, None),
    (DevicePending, Cause.NETWORK_LOST): Rule(Empty, None),  # a token outlives the child
    (Empty, Cause.RELOAD): Rule(Empty, None),
    (Pending, Cause.RELOAD): Rule(Empty, None),
    (DevicePending, Cause.RELOAD): Rule(Empty, None),
    (Active, Cause.RELOAD): Rule(Empty, _INVALIDATED),  # pizauth 1.1: no event
    # A current token is never overwritten by an old one. pizauth 1.1 raised no event.
    (Empty, Cause.RESTORE): Rule(Active, _NEW),
    (Pending, Cause.RESTORE): Rule(Active, _NEW),
    (DevicePending, Cause.RESTORE): Rule(Active, _NEW),
    (Empty, Cause.STORE_OPEN): Rule(Active, _NEW),
    (Pending, Cause.STORE_OPEN): Rule(Active, _NEW),
    (DevicePending, Cause.STORE_OPEN): Rule(Active, _NEW),
    (Empty, Cause.SHUTDOWN): Rule(Empty, None),
    (Pending, Cause.SHUTDOWN): Rule(Empty, None),
    (DevicePending, Cause.SHUTDOWN): Rule(Empty, None),
    (Active, Cause.SHUTDOWN): Rule(Empty, None),
}

KINDS: tuple[type[TokenState], ...] = (Empty, Pending, DevicePending, Active)


class IllegalTransition(Exception):
    """A change of token state the table does not allow: a bug in the caller."""

    def __init__(self, before: type, cause: Cause, after: type) -> None:
        # Kinds and cause only: a state's fields may be secrets.
        super().__init__(
            f"illegal token state change: {before.__name__} -> {after.__name__} ({cause.value})"
        )
        self.before, self.cause, self.after = before, cause, after


def allows(state: TokenState, cause: Cause, after: type[TokenState]) -> bool:
    """Whether `cause` may move `state` to a state of kind `after`."""
    rule = TRANSITIONS.get((type(state), cause))
    return rule is not None and rule.to is after


def step(state: TokenState, cause: Cause, after: TokenState) -> TokenEvent | None:
    """The event that `cause` moving `state` to `after` raises; IllegalTransition if the
    table has no such change."""
    rule = TRANSITIONS.get((type(state), cause))
    if rule is None or type(after) is not rule.to:
        raise IllegalTransition(type(state), cause, type(after))
    return rule.event
