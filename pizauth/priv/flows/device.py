"""Device logins (RFC 8628) for accounts with auth_flow = "device": the parent's side.

`pizauth show` on such an account with no token asks the network child for a device
authorization (NET_DEVICE_AUTH) and answers the client once it has the user code.
The account is then DevicePending: the device code lives in a Secret, and the token
endpoint is polled (NET_DEVICE_POLL, one at a time) every `interval` seconds, 5 more
after every slow_down, until a token arrives (Active, as after a code exchange), the
user refuses, or the code expires (back to Empty, and error_notify_cmd says why).
Transient failures keep polling at the current interval.

How the reply to `show` travels (docs/protocol.md "Device logins"): with the URL, as
`pending:URI and code CODE`, so that any client prints "...with URL URI and code
CODE"; without (`-u`), as `error:Access token unavailable until authorised with code
CODE`, so that any client prints that line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pizauth import ipc, limits, runtime
from pizauth.ipc import NetDeviceAuthResult, NetTokenResult, TokenOutcome
from pizauth.priv.flows.provider import Outcome, Ready, Unready
from pizauth.priv.flows.refresher import NetRequest, Refresher, RequestKind
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import DevicePending, Empty, Entry, TokenTable
from pizauth.priv.state.tokenstate import Cause
from pizauth.text import shown as shown_name

log = logging.getLogger("pizauth")

DEFAULT_INTERVAL = 5.0  # RFC 8628 §3.2: what a client assumes when the provider gives none
SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: added to the interval on every slow_down
MIN_INTERVAL = 1.0  # never poll back to back, whatever the provider says
SLOW_DOWN = "slow_down"
ACCESS_DENIED = "access_denied"
EXPIRED_TOKEN = "expired_token"


# -- the schedule: plain functions of the state ---------------------------------------------------


def first_interval(interval: int | None) -> float:
    """The polling interval a device authorization starts with."""
    if not interval:
        return DEFAULT_INTERVAL
    return min(max(float(interval), MIN_INTERVAL), float(limits.MAX_SECONDS))


def after_poll(state: DevicePending, provider_error: str, now: float) -> None:
    """A poll ended without a token and the attempt goes on: when to poll next. The
    interval only ever grows, and is counted from the answer, so that the time between
    two requests is never shorter than it."""
    if provider_error == SLOW_DOWN:
        state.interval = min(state.interval + SLOW_DOWN_STEP, float(limits.MAX_SECONDS))
    state.polling = False
    state.next_poll = now + state.interval


def poll_time(state: object) -> float | None:
    """When `state` is due to be polled, or None if it is not waiting for a poll."""
    if not isinstance(state, DevicePending) or state.device_code is None or state.polling:
        return None
    return state.next_poll


def expiry_time(state: object) -> float | None:
    if not isinstance(state, DevicePending) or state.device_code is None:
        return None
    return state.expires_at


def next_wakeup(table: TokenTable) -> float | None:
    times = [
        t
        for entry in table.entries.values()
        for t in (poll_time(entry.state), expiry_time(entry.state))
        if t is not None
    ]
    return min(times, default=None)


def failure_message(name: str, provider_error: str, message: str) -> str:
    """What error_notify_cmd is told when a device login ends without a token."""
    if provider_error == ACCESS_DENIED:
        why = "the authorisation request was denied"
    elif provider_error == EXPIRED_TOKEN:
        why = "the device code expired"
    else:
        why = message or "unknown error"
    name = shown_name(name)
    return f"Authentication for {name} failed: {why}. Run 'pizauth show {name}' for a new code."


@dataclass(slots=True)
class _Waiting:
    """The `pizauth show`s (request id, with URL) that wait for a device authorization
    of the account in its `generation`."""

    clients: list[tuple[int, bool]] = field(default_factory=list)
    generation: int = -1


class DeviceFlow:
    """Device logins in progress. `reply(request_id, text)` answers a client; `call`
    asks the network child (runtime.Calls.call); `clock()` is the instant now (the
    parent's loop ticks with the same clock)."""

    def __init__(
        self,
        table: TokenTable,
        refresher: Refresher,
        reply: Callable[[int, str], None],
        call: runtime.Caller,
        clock: Callable[[], float] = instant,
    ) -> None:
        self.table = table
        self.refresher = refresher
        self._reply = reply
        self._call = call
        self._clock = clock
        # By account: the clients of the device authorization at the network child.
        self.authorizing: dict[str, _Waiting] = {}
        # By account: logins whose endpoints or client secret are still being found.
        self.resolving: dict[str, _Waiting] = {}

    # -- `pizauth show` ---------------------------------------------------------------------

    def show(self, request_id: int, entry: Entry, withurl: bool) -> None:
        """Answer `show` (or `refresh`) for a device account that has no token."""
        state = entry.state
        if isinstance(state, DevicePending) and state.device_code is not None:
            self._reply(request_id, shown(state, withurl))
            return
        resolving = self.resolving.get(entry.account.name)
        if isinstance(state, DevicePending) and resolving is not None:
            # Endpoints or the client secret are still being found: wait for them too.
            resolving.clients.append((request_id, withurl))
            return
        authorizing = self.authorizing.get(entry.account.name)
        if (
            isinstance(state, DevicePending)
            and authorizing is not None
            and authorizing.generation == entry.generation
        ):
            # The authorization request is under way: this client waits for it too.
            authorizing.clients.append((request_id, withurl))
            return
        self._start(request_id, entry, withurl)

    def _start(self, request_id: int, entry: Entry, withurl: bool) -> None:
        self.refresher.change(entry, DevicePending(), Cause.DEVICE_LOGIN)
        name, generation = entry.account.name, entry.generation
        waiting = self.resolving[name] = _Waiting([(request_id, withurl)])

        def resolved(outcome: Outcome) -> None:
            # The device endpoint (configured or from the issuer's metadata) and the
            # client secret (configured or from client_secret_cmd) are known, or not.
            if self.resolving.get(name) is waiting:
                del self.resolving[name]
            current = self.table.get(name)
            if current is None or current.generation != generation:
                for client, _ in waiting.clients:
                    self._reply(
                        client, f"error:Device authorization for {shown_name(name)} was cancelled"
                    )
                return
            if isinstance(outcome, Unready):
                self._not_authorized(current, waiting, outcome)
                return
            self._authorize(current, waiting, outcome)

        self.refresher.resolve(entry.account, "device_auth_uri", True, resolved)

    def _not_authorized(self, entry: Entry, waiting: _Waiting, why: Unready) -> None:
        name = entry.account.name
        self.refresher.failed(entry, why.message, self._clock())
        self.refresher.change(entry, Empty(), Cause.LOGIN_FAILURE)
        if why.notify:
            self.refresher.notifier.error(
                name, f"Device authorization for {shown_name(name)} failed: {why.message}"
            )
        for client, _ in waiting.clients:
            self._reply(
                client, f"error:Device authorization for {shown_name(name)} failed: {why.message}"
            )

    def _authorize(self, entry: Entry, waiting: _Waiting, ready: Ready) -> None:
        account = ready.account
        if account.device_auth_uri is None:
            self._not_authorized(
                entry, waiting, Unready("no device authorization endpoint", False, False)
            )
            return
        message = ipc.NetDeviceAuth(
            account.device_auth_uri,
            account.client_id,
            None if ready.secret is None else ready.secret.view(),
            " ".join(account.scopes),
            account.token_endpoint_auth_method,
        )
        name, generation = entry.account.name, entry.generation
        request = NetRequest(RequestKind.DEVICE_AUTH, name, generation)
        clients = _Waiting(list(waiting.clients), generation)

        def lost() -> None:
            failed = NetDeviceAuthResult(TokenOutcome.TRANSIENT, "network process restarted")
            self._authorized(clients, request, failed)

        try:
            self._call(message, lambda result: self._authorized(clients, request, result), lost)
        except ipc.ProtocolError as e:  # a configured value over its limit
            self._not_authorized(entry, waiting, Unready(str(e), False, False))
            return
        self.authorizing[name] = clients

    # -- results from the network child --------------------------------------------------------

    def _authorized(
        self, waiting: _Waiting, request: NetRequest, result: NetDeviceAuthResult
    ) -> None:
        """The NET_DEVICE_AUTH_RESULT of a device authorization."""
        name = request.account
        if self.authorizing.get(name) is waiting:
            del self.authorizing[name]
        clients = waiting.clients
        entry = self.table.get(name)
        if entry is None or entry.generation != request.generation:
            # Revoked or reloaded meanwhile: the clients still get an answer.
            for client, _ in clients:
                self._reply(
                    client, f"error:Device authorization for {shown_name(name)} was cancelled"
                )
            return
        if result.outcome is not TokenOutcome.OK:
            self.refresher.failed(entry, result.message, self._clock())  # status says it
            self.refresher.change(entry, Empty(), Cause.LOGIN_FAILURE)
            text = f"Device authorization request for {shown_name(name)} failed: {result.message}"
            if result.outcome is TokenOutcome.TRANSIENT:
                text += "; try again later"
            log.info("%s", text)
            for client, _ in clients:
                self._reply(client, "error:" + text)
            return
        now = self._clock()
        interval = first_interval(result.interval)
        state = DevicePending(
            device_code=Secret(result.device_code),
            user_code=result.user_code,
            uri=result.verification_uri_complete or result.verification_uri,
            expires_at=now + result.expires_in,
            interval=interval,
            next_poll=now + interval,
        )
        self.refresher.change(entry, state, Cause.DEVICE_CODE)  # reminded of at once
        for client, withurl in clients:
            self._reply(client, shown(state, withurl))

    def poll_result(self, request: NetRequest, result: NetTokenResult) -> None:
        """The NET_TOKEN_RESULT of a NET_DEVICE_POLL."""
        if result.provider_error == "invalid_client":
            self.refresher.forget_secret(request.account)  # client_secret_cmd runs again
        entry = self.table.get(request.account)
        if entry is None or entry.generation != request.generation:
            return  # revoked, reloaded or ended meanwhile
        state = entry.state
        if not isinstance(state, DevicePending):
            return
        now = self._clock()
        name = entry.account.name
        if result.outcome is TokenOutcome.OK:
            self.refresher.token_received(entry, result, now, request.endpoint)  # wipes the code
        elif result.outcome is TokenOutcome.TRANSIENT:
            if result.provider_error not in ("authorization_pending", SLOW_DOWN):
                log.info("Transitory error polling for %s: %s", shown_name(name), result.message)
            after_poll(state, result.provider_error, now)
        else:
            self._end(entry, failure_message(name, result.provider_error, result.message))

    def _end(self, entry: Entry, message: str) -> None:
        self.refresher.failed(entry, message, self._clock())  # status and show say it
        self.refresher.change(entry, Empty(), Cause.LOGIN_FAILURE)  # wipes the device code
        self.refresher.notifier.error(entry.account.name, message)

    # -- the schedule ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Poll what is due; end what has expired."""
        for entry in list(self.table.entries.values()):
            state = entry.state
            expires = expiry_time(state)
            if expires is not None and expires <= now:
                self._end(entry, failure_message(entry.account.name, EXPIRED_TOKEN, ""))
                continue
            at = poll_time(state)
            if at is not None and at <= now:
                self._poll(entry, now)

    def _poll(self, entry: Entry, now: float) -> None:
        state = entry.state
        assert isinstance(state, DevicePending) and state.device_code is not None
        state.polling = True
        name, generation = entry.account.name, entry.generation

        def resolved(outcome: Outcome) -> None:
            current = self.table.get(name)
            if current is None or current.generation != generation:
                return  # revoked, reloaded or ended meanwhile
            pending = current.state
            if not isinstance(pending, DevicePending) or pending.device_code is None:
                return
            request = NetRequest(RequestKind.DEVICE_POLL, name, generation)
            if isinstance(outcome, Unready):
                # Like a failed poll: a transient failure polls again at the interval.
                kind = TokenOutcome.TRANSIENT if outcome.transient else TokenOutcome.PERMANENT
                self.poll_result(request, NetTokenResult(kind, outcome.message))
                return
            if outcome.account.token_uri is None:
                self.poll_result(request, NetTokenResult(TokenOutcome.PERMANENT, "no token_uri"))
                return
            token_uri = outcome.account.token_uri
            poll = ipc.NetDevicePoll(
                token_uri,
                current.account.client_id,
                None if outcome.secret is None else outcome.secret.view(),
                pending.device_code.view(),
                current.account.token_endpoint_auth_method,
            )
            sent = NetRequest(RequestKind.DEVICE_POLL, name, generation, token_uri)
            try:
                self._call(
                    poll, lambda result: self.poll_result(sent, result), lambda: self._lost(sent)
                )
            except ipc.ProtocolError as e:  # a configured value over its limit
                self.poll_result(request, NetTokenResult(TokenOutcome.PERMANENT, str(e)))

        self.refresher.resolve(entry.account, "token_uri", True, resolved)

    def _lost(self, request: NetRequest) -> None:
        """The network child went away before answering a poll: poll again later."""
        entry = self.table.get(request.account)
        if entry is not None and entry.generation == request.generation:
            if isinstance(entry.state, DevicePending):
                after_poll(entry.state, "", self._clock())


def shown(state: DevicePending, withurl: bool) -> str:
    """The reply to `show` for a device login (see the module docstring)."""
    if withurl:
        return f"pending:{state.uri} and code {state.user_code}"
    return f"error:Access token unavailable until authorised with code {state.user_code}"
