"""What the parent does for each request of a `pizauth` client.

The command child parsed the request; these answer it from the token table,
with the replies pizauth 1.1 gives, and start logins and refreshes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pizauth import ipc
from pizauth.priv.flows.provider import Outcome, Unready
from pizauth.priv.flows.refresher import refresh_time
from pizauth.priv.flows.revocation import token_to_revoke
from pizauth.priv.state.clock import instant
from pizauth.priv.state.failures import show_line
from pizauth.priv.state.tokens import Active, DevicePending, Empty, Entry, Pending
from pizauth.priv.state.tokenstate import Cause
from pizauth.text import shown
from pizauth.timeouts import RESOLVE_WAIT

if TYPE_CHECKING:
    from pizauth.priv.flows.device import DeviceFlow
    from pizauth.priv.flows.provider import Resolver
    from pizauth.priv.flows.refresher import Refresher
    from pizauth.priv.flows.revocation import Revoker
    from pizauth.priv.keptlog import KeptLog
    from pizauth.priv.run.notifier import Notifier
    from pizauth.priv.state.tokens import TokenTable
    from pizauth.priv.storage.storekeeper import StoreKeeper


class Replies:
    """Answers to the command child's requests. `post` queues a message for the command
    child; `client_request_id` turns the parent's tagged request id back into the child's
    own, or None if an earlier command child asked (its clients are gone: the answer is
    dropped, never given to the new one)."""

    def __init__(
        self,
        post: Callable[[ipc.Wire, int], None],
        client_request_id: Callable[[int], int | None],
    ) -> None:
        self._post = post
        self._client_request_id = client_request_id

    def reply(self, request_id: int, text: str) -> None:
        client = self._client_request_id(request_id)
        if client is None:
            return  # asked of a command child that has restarted since
        self._post(ipc.CmdReply(text.encode("utf-8")), client)

    def reply_secret(self, request_id: int, payload: bytearray) -> None:
        """A reply carrying a token or a dump: every copy we made is wiped once sent."""
        client = self._client_request_id(request_id)
        if client is None:
            ipc.wipe(payload)
            return
        try:
            self._post(ipc.CmdSecretReply(payload), client)  # secret by its type
        finally:
            ipc.wipe(payload)


@dataclass(frozen=True, slots=True)
class Listening:
    """What `info` tells of the redirect listeners: their ports, and the HTTPS key the
    network child reported ("" until it has)."""

    http_port: int | None
    https_port: int | None
    https_pub_key: str
    https_fingerprint: str


@dataclass(frozen=True, slots=True)
class Collaborators:
    """Everything the commands use. `listening()` is read at each `info` (a reload may
    rebind the listeners), `reload()` re-reads the configuration (the error text or
    None), `stop()` ends the parent's loop, `clock()` is the instant now (the loop's)."""

    table: TokenTable
    refresher: Refresher
    device: DeviceFlow
    resolver: Resolver
    revoker: Revoker
    keeper: StoreKeeper
    notifier: Notifier
    replies: Replies
    kept: KeptLog | None
    listening: Callable[[], Listening]
    reload: Callable[[], str | None]
    stop: Callable[[], None]
    clock: Callable[[], float] = instant


class Commands:
    def __init__(self, c: Collaborators) -> None:
        self._c = c

    def reply(self, request_id: int, text: str) -> None:
        self._c.replies.reply(request_id, text)

    def reply_secret(self, request_id: int, payload: bytearray) -> None:
        self._c.replies.reply_secret(request_id, payload)

    def _entry_or_reply(self, request_id: int, name: str) -> Entry | None:
        entry = self._c.table.get(name)
        if entry is None:
            self.reply(request_id, f"error:No account '{shown(name)}'")
        return entry

    def show(self, request_id: int, msg: ipc.CmdShow) -> None:
        entry = self._entry_or_reply(request_id, msg.account)
        if entry is None:
            return
        now = self._c.clock()
        state = entry.state
        if _device(entry) and not isinstance(state, Active):
            self._c.device.show(request_id, entry, msg.withurl)
            return
        needs_login = isinstance(state, Empty) or (
            isinstance(state, Active) and state.expiry <= now and state.refresh_token is None
        )
        if (
            needs_login
            and not _device(entry)
            and not self._auth_uri_known(request_id, entry, lambda: self.show(request_id, msg))
        ):
            return
        # After the usual message, one line that says why the last attempt failed; a
        # reply with no error is pizauth 1.1's, byte for byte (docs/protocol.md).
        extra = "" if entry.last_error is None else "\n" + show_line(entry.last_error, now)
        match entry.state:
            case Empty():
                pending = self._c.refresher.start_auth(entry)
                self.reply_pending(request_id, pending, msg.withurl, extra)
            case Pending() as pending:
                self.reply_pending(request_id, pending, msg.withurl, extra)
            case Active() as active:
                self._show_active(request_id, entry, active, msg.withurl, now, extra)

    def _show_active(
        self, request_id: int, entry: Entry, active: Active, withurl: bool, now: float, extra: str
    ) -> None:
        if active.expiry > now:
            reply = bytearray(b"access_token:")
            reply += active.access_token.view()
            self.reply_secret(request_id, reply)
        elif active.refresh_token is None:
            # Expired and nothing to refresh it with: the user must log in again.
            self._c.refresher.change(entry, Empty(), Cause.EXPIRY)
            if _device(entry):
                self._c.device.show(request_id, entry, withurl)
                return
            self.reply_pending(request_id, self._c.refresher.start_auth(entry), withurl, extra)
        elif active.ongoing_refresh or (refresh_time(entry) or now) > now:
            # A refresh is running, or failed and is retried after refresh_retry.
            self.reply(
                request_id,
                "error:Access token has expired. "
                "Refreshing is in progress but has not yet succeeded" + extra,
            )
        else:
            self._c.refresher.start_refresh(entry, now)
            self.reply(request_id, "error:Access token has expired. Refreshing initiated" + extra)

    def reply_pending(
        self, request_id: int, pending: Pending, withurl: bool, extra: str = ""
    ) -> None:
        self.reply(request_id, "pending:" + (pending.request.url if withurl else "") + extra)

    def refresh(self, request_id: int, msg: ipc.CmdRefresh) -> None:
        entry = self._entry_or_reply(request_id, msg.account)
        if entry is None:
            return
        if _device(entry) and not isinstance(entry.state, Active):
            # A device login in progress goes on: a new one would void the code shown.
            self._c.device.show(request_id, entry, msg.withurl)
            return
        again = lambda: self.refresh(request_id, msg)  # noqa: E731
        if not isinstance(entry.state, Active) and not self._auth_uri_known(
            request_id, entry, again
        ):
            return
        match entry.state:
            case Empty() | Pending():
                pending = self._c.refresher.start_auth(entry)
                self.reply_pending(request_id, pending, msg.withurl)
            case Active():
                self._c.refresher.start_refresh(entry, self._c.clock())
                self.reply(request_id, "scheduled:")

    def revoke(self, request_id: int, msg: ipc.CmdRevoke) -> None:
        entry = self._entry_or_reply(request_id, msg.account)
        if entry is None:
            return
        # A copy for the provider, taken before the local one is wiped.
        to_revoke = token_to_revoke(entry.state)
        if not isinstance(entry.state, Empty):
            self._c.refresher.change(entry, Empty(), Cause.REVOKE)
        self._c.keeper.revoked(entry.account.name)  # also out of a store opened later
        self.reply(request_id, "ok:")
        if to_revoke is not None:
            self._c.revoker.revoke(entry.account, *to_revoke)  # in the background

    def _auth_uri_known(self, request_id: int, entry: Entry, again: Callable[[], None]) -> bool:
        """Whether a login can start for `entry` now: its URL can be made and its client
        secret is held. If not, its authorisation endpoint (issuer metadata) and client
        secret (client_secret_cmd) are being resolved, and the request is answered once
        that is done: `again` runs it anew, or the client hears what failed (a failing
        client_secret_cmd is told before any browser login, not after it)."""
        resolver = self._c.resolver
        account = entry.account
        if resolver.login_ready(account):
            return True
        name = account.name

        def resolved(outcome: Outcome) -> None:
            current = self._c.table.get(name)
            if isinstance(outcome, Unready):
                if current is not None:
                    self._c.refresher.failed(current, outcome.message, self._c.clock())
                if outcome.notify:
                    self._c.notifier.error(name, f"{shown(name)}: {outcome.message}")
                self.reply(request_id, "error:" + outcome.message)
            elif current is not None and resolver.login_ready(current.account):
                again()
            else:
                self.reply(request_id, "error:the account changed meanwhile: try again")

        waiting = resolver.waiting_for(account)
        resolver.resolve(
            account, "auth_uri", True, resolver.bounded(resolved, RESOLVE_WAIT, waiting)
        )
        return False

    def status(self, request_id: int, msg: ipc.CmdStatus) -> None:
        text = self._c.table.status(self._c.clock())
        kept = self._c.kept
        if kept is not None and kept.lines:
            # Errors with nowhere else to go, after the accounts (docs/compatibility.md).
            text = "\n".join([text] * bool(text) + kept.status_lines())
        self.reply(request_id, "ok:" + text)

    def info(self, request_id: int, msg: ipc.CmdInfo) -> None:
        listening = self._c.listening()
        info = {
            "http_port": "none" if listening.http_port is None else str(listening.http_port),
            "https_port": "none" if listening.https_port is None else str(listening.https_port),
        }
        if listening.https_pub_key:
            info["https_pub_key"] = listening.https_pub_key
            info["https_cert_sha256"] = listening.https_fingerprint  # an addition to pizauth 1.1
        keeper = self._c.keeper
        if keeper.path is not None:
            # Additions to pizauth 1.1, only when a token store is configured.
            info["token_store"] = keeper.path
            if keeper.error is not None:
                info["token_store_error"] = keeper.error
        # An addition to pizauth 1.1, only when some account has an issuer: what its
        # metadata resolved to (or that it is not resolved yet, or why it failed).
        resolver = self._c.resolver
        endpoints = {
            entry.account.name: resolver.endpoints(entry.account)
            for entry in self._c.table.entries.values()
            if entry.account.issuer is not None
        }
        out: dict[str, object] = dict(info)
        if endpoints:
            out["endpoints"] = endpoints
        self.reply(request_id, json.dumps(out, separators=(",", ":")))

    def reload(self, request_id: int, msg: ipc.CmdReload) -> None:
        error = self._c.reload()
        self.reply(request_id, "ok:" if error is None else "error:" + error)

    def shutdown(self, request_id: int, msg: ipc.CmdShutdown) -> None:
        # Wipe first: whatever happens next, no token outlives the request. A change
        # not yet in the token store is written before (the store stays for the next start).
        self._c.keeper.last_write()
        self._c.table.wipe_all()
        self.reply(request_id, "ok:")
        self._c.stop()

    def dump(self, request_id: int, msg: ipc.CmdDump) -> None:
        from pizauth.priv.storage import dump  # cryptography is ~7 MiB: loaded only when asked for

        data = dump.dump(self._c.table)
        if len(data) > dump.MAX_DUMP:
            ipc.wipe(data)
            # A dump that restore could not take back would be a silent loss later.
            self.reply(request_id, "error:Dump too large to be restored")
            return
        self.reply_secret(request_id, data)  # raw bytes, no prefix; wiped once sent

    def restore(self, request_id: int, msg: ipc.CmdRestore) -> None:
        from pizauth.priv.storage import dump

        try:
            dump.restore(self._c.table, msg.dump)
        except dump.DumpError as e:
            self.reply(request_id, f"error:{e}")  # nothing has changed
            return
        # Each restored token raised token_new (pizauth 1.1 raises none): the table did.
        self.reply(request_id, "ok:")
        # Nothing to wake: the loop recomputes refresh and reminder times every iteration.


def _device(entry: Entry) -> bool:
    """Whether `entry` logs in with the device flow (priv/flows/device.py)."""
    return entry.account.auth_flow == "device" or isinstance(entry.state, DevicePending)
