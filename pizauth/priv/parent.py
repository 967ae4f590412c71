"""The parent process: holds every token, decides, and talks only to its children.

It never opens a network connection and never reads from a socket client: the
command child and the network child parse what strangers send and pass the
parent typed, framed messages. One dispatch table per peer says what each may
ask (STYLE.md); an unknown type or a malformed frame drops that child, which
is then restarted. Everything runs on one thread around a selector.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from pizauth import config as configuration
from pizauth import ipc
from pizauth.ipc import MsgType
from pizauth.priv import notifier, refresher
from pizauth.priv.authurl import (
    effective_redirect_uri,
    new_auth_request,
    redirect_matches,
)
from pizauth.priv.children import RESTART_DELAY, Child
from pizauth.priv.clock import instant
from pizauth.priv.hooks import NOTIFY_TIMEOUT, TRANSIENT_ERROR_IF_TIMEOUT, HookQueue, HookRunner
from pizauth.priv.listeners import ListenError, bind_listener
from pizauth.priv.secmem import Secret
from pizauth.priv.tokens import Active, Empty, Entry, Pending, TokenTable

log = logging.getLogger("pizauth")

PROCESSING_PAGE = "pizauth processing authentication: you can safely close this page."
NO_PENDING_PAGE = "No pending token matches request state: request a fresh token"
# spec §6.3: every 6th consecutive transient failure asks transient_error_if_cmd
TRANSIENT_ARBITRATION_EVERY = 6
# spec §2.4: files in $XDG_RUNTIME_DIR untouched for 6 h may be reaped.
SOCKET_TOUCH_PERIOD = 6 * 3600.0


@dataclass(slots=True)
class Sockets:
    """What server start-up bound before the parent took over; reload may re-bind
    the listeners (gap 20)."""

    control: socket.socket
    http: socket.socket | None
    https: socket.socket | None

    def listener_fds(self) -> dict[str, int]:
        fds = {}
        if self.http is not None:
            fds["http"] = self.http.fileno()
        if self.https is not None:
            fds["https"] = self.https.fileno()
        return fds


def _port(sock: socket.socket | None) -> int | None:
    return None if sock is None else sock.getsockname()[1]


@dataclass(frozen=True, slots=True)
class NetRequest:
    kind: str  # "exchange" or "refresh"
    account: str
    generation: int


class Parent:
    def __init__(
        self,
        config: configuration.Config,
        config_path: str,
        sockets: Sockets,
        child_args: list[str],
        on_ready: Callable[[bool], None],
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.sockets = sockets
        self.http_port = _port(sockets.http)
        self.https_port = _port(sockets.https)
        self.on_ready = on_ready
        self.table = TokenTable(config.accounts)
        self.sel = selectors.DefaultSelector()
        self.hooks = HookRunner(self.watch, self.unwatch)
        self.notifications = HookQueue(self.hooks)
        self.events = HookQueue(self.hooks)
        self.net_requests: dict[int, NetRequest] = {}
        self.next_request_id = 1
        self.stopping = False
        self.reload_requested = False
        self.ready = False
        self.cmd_ready = self.net_ready = False
        self.restart_at: dict[str, float] = {}
        self.https_pub_key = ""
        self.https_fingerprint = ""
        self.next_touch = instant() + SOCKET_TOUCH_PERIOD
        self.net = self._child("network", "pizauth.net", sockets.listener_fds(), child_args)
        self.cmd = self._child(
            "command", "pizauth.command", {"socket": sockets.control.fileno()}, child_args
        )
        self.net.on_frame = self._dispatcher(self.net, self.NET_HANDLERS)
        self.cmd.on_frame = self._dispatcher(self.cmd, self.CMD_HANDLERS)
        self.net.on_exit = lambda: self._child_exited(self.net)
        self.cmd.on_exit = lambda: self._child_exited(self.cmd)

    # -- the event loop ----------------------------------------------------------------------

    def _child(self, name: str, module: str, fds: dict[str, int], args: list[str]) -> Child:
        return Child(name, module, fds, args, self.watch, self.unwatch, self._set_writing)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, (callback, None))

    def unwatch(self, fd: int) -> None:
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _set_writing(self, fd: int, on_writable: Callable[[], None] | None) -> None:
        """Also wait for `fd` to be writable (a child's queued frames), or stop."""
        key = self.sel.get_key(fd)
        read_cb, _ = key.data
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on_writable else 0)
        if key.events != events:
            self.sel.modify(fd, events, (read_cb, on_writable))

    def run(self) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self.watch(wake_r.fileno(), lambda: _drain(wake_r))
        self.net.start()
        self.cmd.start()
        while not self.stopping:
            if self.reload_requested:
                self.reload_requested = False
                error = self.reload()
                if error:
                    log.error("reload failed: %s", error)
            now = instant()
            self.tick(now)
            if self.stopping:
                break
            timeout = self.next_wakeup(now)
            for key, mask in self.sel.select(timeout):
                read_cb, write_cb = key.data
                if mask & selectors.EVENT_WRITE and write_cb is not None:
                    write_cb()
                if mask & selectors.EVENT_READ:
                    read_cb()
                if self.stopping:
                    break
        self.shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    def tick(self, now: float) -> None:
        self.hooks.enforce_timeouts(now)
        if now >= self.next_touch:
            self.next_touch = now + SOCKET_TOUCH_PERIOD
            self.touch_socket()
        for name, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[name]
                (self.net if name == "network" else self.cmd).start()
        for entry in refresher.due(self.table, now):
            self.start_refresh(entry, now)
        for entry in notifier.due(self.table, self.config.auth_notify_interval, now):
            self.remind(entry, now)

    def next_wakeup(self, now: float) -> float:
        candidates = [
            refresher.next_wakeup(self.table),
            notifier.next_wakeup(self.table, self.config.auth_notify_interval),
            self.hooks.next_deadline(),
            self.next_touch,
            *self.restart_at.values(),
        ]
        soonest = min((t for t in candidates if t is not None), default=now + refresher.MAX_SLEEP)
        return min(max(soonest - now, 0.0), refresher.MAX_SLEEP)

    def _dispatcher(
        self, child: Child, handlers: dict[MsgType, Callable[[Parent, ipc.Message], None]]
    ) -> Callable[[bytearray], None]:
        def dispatch(frame: bytearray) -> None:
            try:
                msg = ipc.decode(frame)
                handler = handlers.get(msg.type)
                if handler is None:
                    raise ipc.ProtocolError(f"{msg.type.name} is not for the parent")
                handler(self, msg)
            except ipc.ProtocolError as e:
                log.error("protocol error from %s child: %s", child.name, e)
                child.drop()
            except Exception:
                # A bug must not cost the user every token: drop the peer, keep the state.
                log.exception("handling a message from the %s child failed", child.name)
                child.drop()
            finally:
                ipc.wipe(frame)

        return dispatch

    def _child_exited(self, child: Child) -> None:
        if self.stopping:
            return
        if child is self.net:
            self._net_requests_lost()
        # Restart on the same sockets; throttle a child that dies as soon as it starts.
        delay = RESTART_DELAY if instant() - child.started_at < 1.0 else 0.0
        self.restart_at[child.name] = instant() + delay

    def _net_requests_lost(self) -> None:
        for request in self.net_requests.values():
            entry = self.table.get(request.account)
            if entry is None or entry.generation != request.generation:
                continue
            if request.kind == "exchange" and isinstance(entry.state, Pending):
                # The code may or may not have been used: the user can simply log in again.
                entry.state.exchanging = False
            elif request.kind == "refresh" and isinstance(entry.state, Active):
                self._refresh_transient(entry, "network process restarted", instant())
        self.net_requests.clear()

    # -- the command child ------------------------------------------------------------------

    def reply(self, msg: ipc.Message, text: str) -> None:
        self.cmd.send(ipc.encode(MsgType.CMD_REPLY, msg.request_id, [text.encode("utf-8")]))

    def reply_secret(self, msg: ipc.Message, payload: bytearray) -> None:
        """A reply carrying a token or a dump: every copy we made is wiped once sent."""
        frame = ipc.encode(MsgType.CMD_REPLY, msg.request_id, [payload])
        ipc.wipe(payload)
        self.cmd.send(frame, secret=True)

    def _entry_or_reply(self, msg: ipc.Message, name: str) -> Entry | None:
        entry = self.table.get(name)
        if entry is None:
            self.reply(msg, f"error:No account '{name}'")
        return entry

    def handle_cmd_ready(self, msg: ipc.Message) -> None:
        self.cmd_ready = True
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        """Both children serve: run startup_cmd and tell whoever waits (spec §7.4)."""
        if self.ready or not (self.cmd_ready and self.net_ready):
            return
        self.ready = True
        self.on_ready(False)  # commands are served: `pizauth server` may return
        if self.config.startup_cmd:

            def done(error: str | None) -> None:
                if error is not None:
                    log.error("%s", error)
                self.on_ready(True)

            # spec §7.4: no timeout, no extra environment; READY=1 once it has finished.
            self.hooks.start(self.config.startup_cmd, {}, None, done)
        else:
            self.on_ready(True)

    def handle_show(self, msg: ipc.Message) -> None:
        withurl, name = ipc.read_flag(msg.fields[0]), ipc.text(msg.fields[1])
        entry = self._entry_or_reply(msg, name)
        if entry is None:
            return
        now = instant()
        match entry.state:
            case Empty():
                self.reply_pending(msg, self.start_auth(entry), withurl)
            case Pending():
                self.reply_pending(msg, entry.state, withurl)
            case Active() as active:
                self._show_active(msg, entry, active, withurl, now)

    def _show_active(
        self, msg: ipc.Message, entry: Entry, active: Active, withurl: bool, now: float
    ) -> None:
        if active.expiry > now:
            reply = bytearray(b"access_token:")
            reply += active.access_token.view()
            self.reply_secret(msg, reply)
        elif active.refresh_token is None:
            # Expired and nothing to refresh it with: the user must log in again.
            self._invalidate(entry)
            self.reply_pending(msg, self.start_auth(entry), withurl)
        elif active.ongoing_refresh or (refresher.refresh_time(entry) or now) > now:
            # A refresh is running, or failed and is retried after refresh_retry (gap 25).
            self.reply(
                msg,
                "error:Access token has expired. "
                "Refreshing is in progress but has not yet succeeded",
            )
        else:
            self.start_refresh(entry, now)
            self.reply(msg, "error:Access token has expired. Refreshing initiated")

    def reply_pending(self, msg: ipc.Message, pending: Pending, withurl: bool) -> None:
        self.reply(msg, "pending:" + (pending.request.url if withurl else ""))

    def handle_refresh(self, msg: ipc.Message) -> None:
        withurl, name = ipc.read_flag(msg.fields[0]), ipc.text(msg.fields[1])
        entry = self._entry_or_reply(msg, name)
        if entry is None:
            return
        match entry.state:
            case Empty() | Pending():
                self.reply_pending(msg, self.start_auth(entry), withurl)
            case Active():
                self.start_refresh(entry, instant())
                self.reply(msg, "scheduled:")

    def handle_revoke(self, msg: ipc.Message) -> None:
        name = ipc.text(msg.fields[0])
        entry = self._entry_or_reply(msg, name)
        if entry is None:
            return
        if not isinstance(entry.state, Empty):
            had_token = isinstance(entry.state, Active)
            self.table.replace(name, Empty())
            if had_token:  # gap 22: no event when nothing was revoked
                self.event(name, "token_revoked")
        self.reply(msg, "ok:")

    def handle_status(self, msg: ipc.Message) -> None:
        self.reply(msg, "ok:" + self.table.status(instant()))

    def handle_info(self, msg: ipc.Message) -> None:
        info = {
            "http_port": "none" if self.http_port is None else str(self.http_port),
            "https_port": "none" if self.https_port is None else str(self.https_port),
        }
        if self.https_pub_key:
            info["https_pub_key"] = self.https_pub_key
            info["https_cert_sha256"] = self.https_fingerprint  # gap 29
        self.reply(msg, json.dumps(info, separators=(",", ":")))

    def handle_reload(self, msg: ipc.Message) -> None:
        error = self.reload()
        self.reply(msg, "ok:" if error is None else "error:" + error)

    def handle_shutdown(self, msg: ipc.Message) -> None:
        # Wipe first: whatever happens next, no token outlives the request.
        self.table.wipe_all()
        self.reply(msg, "ok:")
        self.stopping = True

    def handle_dump(self, msg: ipc.Message) -> None:
        from pizauth.priv import dump  # cryptography is ~7 MiB: loaded only when asked for

        data = dump.dump(self.table)
        if len(data) > dump.MAX_DUMP:
            ipc.wipe(data)
            # A dump that restore could not take back would be a silent loss later.
            self.reply(msg, "error:Dump too large to be restored")
            return
        self.reply_secret(msg, data)  # raw bytes, no prefix (spec §3); wiped once sent

    def handle_restore(self, msg: ipc.Message) -> None:
        from pizauth.priv import dump

        try:
            restored = dump.restore(self.table, msg.fields[0])
        except dump.DumpError as e:
            self.reply(msg, f"error:{e}")  # spec §8.2: nothing has changed
            return
        for name in restored:
            self.event(name, "token_new")  # gap 22: the original emits no event
        self.reply(msg, "ok:")
        # Nothing to wake: the loop recomputes refresh and reminder times every iteration.

    CMD_HANDLERS: dict[MsgType, Callable[[Parent, ipc.Message], None]] = {
        MsgType.CMD_READY: handle_cmd_ready,
        MsgType.CMD_SHOW: handle_show,
        MsgType.CMD_REFRESH: handle_refresh,
        MsgType.CMD_REVOKE: handle_revoke,
        MsgType.CMD_STATUS: handle_status,
        MsgType.CMD_INFO: handle_info,
        MsgType.CMD_RELOAD: handle_reload,
        MsgType.CMD_SHUTDOWN: handle_shutdown,
        MsgType.CMD_DUMP: handle_dump,
        MsgType.CMD_RESTORE: handle_restore,
    }

    # -- the network child ------------------------------------------------------------------

    def verdict(self, msg: ipc.Message, status: int, page: str = "") -> None:
        frame = ipc.encode(
            MsgType.NET_CALLBACK_VERDICT, msg.request_id, [b"%d" % status, page.encode()]
        )
        self.net.send(frame)

    def handle_net_ready(self, msg: ipc.Message) -> None:
        self.https_pub_key = ipc.text(msg.fields[0])
        self.https_fingerprint = ipc.text(msg.fields[1])
        self.net_ready = True
        self._maybe_ready()

    def handle_callback(self, msg: ipc.Message) -> None:
        url = ipc.Callback.from_fields(msg.fields)
        # spec §5.4 steps 5-10, in this order.
        state = url.get("state")
        if state is None:
            self.verdict(msg, 404)
            return
        entry = self.table.pending_with_state(state)
        if entry is None:
            self.verdict(msg, 200, NO_PENDING_PAGE)
            return
        expected = effective_redirect_uri(entry.account, self.http_port, self.https_port)
        if not redirect_matches(expected, url):
            self.verdict(msg, 404)
            return
        name = entry.account.name
        error = url.get("error")
        if error is not None:
            self.table.replace(name, Empty())
            # gap 36: a page that says what failed and what to do (the network child escapes it).
            description = url.get("error_description")
            reason = f"{error} ({description})" if description else error
            self.verdict(
                msg,
                400,
                f"Authentication for {name} failed: {reason}. "
                f"Run 'pizauth show {name}' for a new login URL.",
            )
            self.notify_error(name, f"Authentication for {name} failed: {error}")
            return
        code = url.get("code")
        if code is None:
            self.verdict(msg, 400)
            return
        pending = entry.state
        assert isinstance(pending, Pending)
        self.verdict(msg, 200, PROCESSING_PAGE)
        if pending.exchanging:
            return  # gap 12: the first callback's exchange is already under way
        pending.exchanging = True
        self._send_token_request(
            entry,
            MsgType.NET_EXCHANGE,
            [
                code.encode(),
                pending.request.code_verifier.view(),
                pending.request.redirect_uri.encode(),
            ],
        )

    def handle_token_result(self, msg: ipc.Message) -> None:
        request = self.net_requests.pop(msg.request_id, None)
        if request is None:
            raise ipc.ProtocolError(f"token result for unknown request {msg.request_id}")
        outcome, message = bytes(msg.fields[0]), ipc.text(msg.fields[1])
        if outcome not in (b"ok", b"transient", b"permanent"):
            raise ipc.ProtocolError("bad token outcome")
        entry = self.table.get(request.account)
        if entry is None or entry.generation != request.generation:
            return  # spec §5.1: stale results are discarded silently
        now = instant()
        if outcome == b"ok":
            self._token_received(entry, msg, request.kind, now)
        elif request.kind == "exchange":
            self.table.replace(entry.account.name, Empty())
            self.notify_error(
                entry.account.name, f"Authentication for {entry.account.name} failed: {message}"
            )
        elif outcome == b"transient":
            self._refresh_transient(entry, message, now)
        else:
            log.info("Permanent refresh error for %s: %s", entry.account.name, message)
            self._invalidate(entry)
            # gap 3: a token that can no longer be refreshed is news the user needs.
            self.notify_error(
                entry.account.name,
                f"Refreshing {entry.account.name} failed permanently: {message}",
            )

    def _token_received(self, entry: Entry, msg: ipc.Message, kind: str, now: float) -> None:
        access, expires_raw, refresh_kind, refresh = msg.fields[2:6]
        if not access.nbytes:
            raise ipc.ProtocolError("empty access token")
        account = entry.account
        try:
            expires_in = int(ipc.text(expires_raw)) if expires_raw.nbytes else None
        except ValueError:
            raise ipc.ProtocolError("bad expires_in") from None
        if expires_in is None:
            expires_in = account.refresh_at_least  # gap 7: expires_in is only recommended
        old = entry.state
        refresh_token: Secret | None
        match bytes(refresh_kind):
            case b"string":
                refresh_token = Secret(refresh)
            case b"absent" if isinstance(old, Active) and old.refresh_token is not None:
                refresh_token = Secret(old.refresh_token.view())  # spec §6.2: keep the old one
            case b"absent" | b"invalid":
                refresh_token = None
            case _:
                raise ipc.ProtocolError("bad refresh token kind")
        self.table.replace(
            account.name, Active(Secret(access), now, now + expires_in, refresh_token)
        )
        self.event(account.name, "token_new" if kind == "exchange" else "token_refreshed")

    def _refresh_transient(self, entry: Entry, message: str, now: float) -> None:
        active = entry.state
        assert isinstance(active, Active)
        active.last_refresh_attempt = now
        active.consecutive_refresh_fails += 1
        name = entry.account.name
        cmd = self.config.transient_error_if_cmd
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
                    log.error("Permanent refresh error for %s: %s", name, error)
                    self._invalidate(current)

            active.ongoing_refresh = True
            self.hooks.start(cmd, {"PIZAUTH_ACCOUNT": name}, TRANSIENT_ERROR_IF_TIMEOUT, judged)
            return
        active.ongoing_refresh = False
        log.info("Transitory refresh error for %s: %s", name, message)

    NET_HANDLERS: dict[MsgType, Callable[[Parent, ipc.Message], None]] = {
        MsgType.NET_READY: handle_net_ready,
        MsgType.NET_CALLBACK: handle_callback,
        MsgType.NET_TOKEN_RESULT: handle_token_result,
    }

    # -- token flow ---------------------------------------------------------------------------

    def _net_request(self, request: NetRequest) -> int:
        request_id = self.next_request_id
        self.next_request_id = (self.next_request_id % 0xFFFFFFFF) + 1
        self.net_requests[request_id] = request
        return request_id

    def start_auth(self, entry: Entry) -> Pending:
        """A new authorisation request; the notifier reminds at once (spec §5.1)."""
        request = new_auth_request(entry.account, self.http_port, self.https_port)
        pending = Pending(request)
        self.table.replace(entry.account.name, pending)
        return pending

    def start_refresh(self, entry: Entry, now: float) -> None:
        active = entry.state
        if not isinstance(active, Active) or active.ongoing_refresh:
            return
        if active.refresh_token is None:
            if active.expiry <= now:
                self._invalidate(entry)  # gap 23: kept until it really expired
            return
        log.info("starting inner refresh")
        active.ongoing_refresh = True
        active.last_refresh_attempt = now
        self._send_token_request(entry, MsgType.NET_REFRESH, [active.refresh_token.view()])

    def _send_token_request(self, entry: Entry, msg_type: MsgType, grant: list[ipc.Buffer]) -> None:
        """NET_EXCHANGE or NET_REFRESH: endpoint and client credentials, then the grant."""
        account = entry.account
        secret = self.table.client_secret(account.name)  # a Secret: no str or bytes copy
        kind = "exchange" if msg_type == MsgType.NET_EXCHANGE else "refresh"
        request_id = self._net_request(NetRequest(kind, account.name, entry.generation))
        fields = [
            account.token_uri.encode(),
            account.client_id.encode(),
            ipc.flag(secret is not None),
            b"" if secret is None else secret.view(),
            *grant,
        ]
        self.net.send(ipc.encode(msg_type, request_id, fields), secret=True)

    def _invalidate(self, entry: Entry) -> None:
        self.table.replace(entry.account.name, Empty())
        self.event(entry.account.name, "token_invalidated")

    def remind(self, entry: Entry, now: float) -> None:
        pending = entry.state
        assert isinstance(pending, Pending)
        pending.last_notification = now
        name = entry.account.name
        cmd = self.config.auth_notify_cmd
        if cmd:
            env = {"PIZAUTH_ACCOUNT": name, "PIZAUTH_URL": pending.request.url}
            self.notifications.submit(cmd, env, NOTIFY_TIMEOUT)
        else:
            log.info("%s needs authorising: run 'pizauth show %s' for the URL", name, name)

    def notify_error(self, name: str, message: str) -> None:
        cmd = self.config.error_notify_cmd
        if cmd:
            env = {"PIZAUTH_ACCOUNT": name, "PIZAUTH_MSG": message}
            self.notifications.submit(cmd, env, NOTIFY_TIMEOUT)
        else:
            log.error("%s", message)  # gap 2: never let an error vanish

    def event(self, name: str, event: str) -> None:
        cmd = self.config.token_event_cmd
        # gap 21: with no command, nothing is queued to be replayed later.
        if cmd:
            env = {"PIZAUTH_ACCOUNT": name, "PIZAUTH_EVENT": event}
            self.events.submit(cmd, env, NOTIFY_TIMEOUT)

    # -- reload and shutdown -----------------------------------------------------------------

    def reload(self) -> str | None:
        """Re-read the configuration (spec §8.3); the error text if it is bad."""
        try:
            config = configuration.load(self.config_path)
            self._rebind(config)
        except (configuration.ConfigError, ListenError) as e:
            return str(e)
        self.config = config  # first: events run the new token_event_cmd (spec §7.2)
        for name in self.table.reload(config.accounts):
            self.event(name, "token_invalidated")  # gap 22
        return None

    def touch_socket(self) -> None:
        """Keep the socket from being reaped as stale (spec §2.4; also when detached, gap 4)."""
        try:
            os.utime(self.sockets.control.getsockname(), follow_symlinks=False)
        except OSError:
            pass

    def _rebind(self, config: configuration.Config) -> None:
        """Bind changed listener addresses and restart the network child on them."""
        old = self.config
        changed = {
            what: address
            for what, address, before in (
                ("http", config.http_listen, old.http_listen),
                ("https", config.https_listen, old.https_listen),
            )
            if address != before
        }
        if not changed:
            return
        # Bind everything first, so a bad address leaves the running server untouched.
        fresh: dict[str, socket.socket | None] = {}
        try:
            for what, address in changed.items():
                fresh[what] = bind_listener(address, f"{what}_listen")
        except ListenError:
            for sock in fresh.values():
                if sock is not None:
                    sock.close()
            raise
        for what, sock in fresh.items():
            previous = getattr(self.sockets, what)
            if previous is not None:
                previous.close()
            setattr(self.sockets, what, sock)
        self.http_port = _port(self.sockets.http)
        self.https_port = _port(self.sockets.https)
        self.net.fds = self.sockets.listener_fds()
        self.net.drop()  # restarted on the new sockets once it has exited
        # Pending URLs name the old redirect port: those logins must start afresh.
        for entry in self.table.entries.values():
            if isinstance(entry.state, Pending):
                self.table.replace(entry.account.name, Empty())

    def shutdown(self) -> None:
        self.table.wipe_all()
        # The socket goes first: once `pizauth shutdown` sees its connection close
        # (when the command child ends), nothing of the server is left to find.
        try:
            os.unlink(self.sockets.control.getsockname())
        except OSError:
            pass
        self.cmd.flush(timeout=1.0)
        for child in (self.cmd, self.net):
            child.stop()
        self.hooks.kill_all()
        log.info("pizauth shut down")


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except (BlockingIOError, InterruptedError):
        pass
