"""The parent process: holds every token, decides, and talks only to its children.

It never opens a network connection and never reads from a socket client: the
command child and the network child parse what strangers send and pass the
parent typed, framed messages. One dispatch table per peer says what each may
ask; an unknown type or a malformed frame drops that child, which is then
restarted. Everything runs on one thread around a selector; refresher.py and
notifier.py hold what the messages set in motion.
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
from pizauth import ipc, runtime
from pizauth.ipc import MsgType, TokenEvent
from pizauth.priv.authurl import effective_redirect_uri, redirect_matches
from pizauth.priv.children import RESTART_DELAY, Child
from pizauth.priv.clock import instant
from pizauth.priv.hooks import HookRunner
from pizauth.priv.listeners import ListenError, bind_listener
from pizauth.priv.notifier import Notifier
from pizauth.priv.refresher import MAX_SLEEP, Refresher, refresh_time
from pizauth.priv.refresher import next_wakeup as next_refresh
from pizauth.priv.tokens import Active, Empty, Entry, Pending, TokenTable
from pizauth.timeouts import SHUTDOWN_FLUSH

log = logging.getLogger("pizauth")

PROCESSING_PAGE = "pizauth processing authentication: you can safely close this page."
NO_PENDING_PAGE = "No pending token matches request state: request a fresh token"
# Files in $XDG_RUNTIME_DIR untouched for 6 hours may be removed by the system.
SOCKET_TOUCH_PERIOD = 6 * 3600.0


@dataclass(slots=True)
class Sockets:
    """What server start-up bound before the parent took over; a reload that
    changes a listen address binds a new listener."""

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
        self.notifier = Notifier(self.hooks, lambda: self.config)
        self.refresher = Refresher(
            self.table,
            lambda: self.config,
            lambda: (self.http_port, self.https_port),
            self.notifier,
            self.hooks,
            lambda frame: self.net.send(frame, secret=True),
        )
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
            "command", "pizauth.cmd", {"socket": sockets.control.fileno()}, child_args
        )
        self.net.on_frame = self._dispatcher(self.net, self.net_handlers())
        self.cmd.on_frame = self._dispatcher(self.cmd, self.cmd_handlers())
        self.net.on_exit = lambda: self._child_exited(self.net)
        self.cmd.on_exit = lambda: self._child_exited(self.cmd)

    # -- the dispatch tables: what each child may send --------------------------------------

    def cmd_handlers(self) -> runtime.Handlers:
        return {
            MsgType.CMD_READY: self.handle_cmd_ready,
            MsgType.CMD_SHOW: self.handle_show,
            MsgType.CMD_REFRESH: self.handle_refresh,
            MsgType.CMD_REVOKE: self.handle_revoke,
            MsgType.CMD_STATUS: self.handle_status,
            MsgType.CMD_INFO: self.handle_info,
            MsgType.CMD_RELOAD: self.handle_reload,
            MsgType.CMD_SHUTDOWN: self.handle_shutdown,
            MsgType.CMD_DUMP: self.handle_dump,
            MsgType.CMD_RESTORE: self.handle_restore,
        }

    def net_handlers(self) -> runtime.Handlers:
        return {
            MsgType.NET_READY: self.handle_net_ready,
            MsgType.NET_CALLBACK: self.handle_callback,
            MsgType.NET_TOKEN_RESULT: self.refresher.result,
        }

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
        self.refresher.refresh_due(now)
        self.notifier.remind_due(self.table, now)

    def next_wakeup(self, now: float) -> float:
        candidates = [
            next_refresh(self.table),
            self.notifier.next_wakeup(self.table),
            self.hooks.next_deadline(),
            self.next_touch,
            *self.restart_at.values(),
        ]
        soonest = min((t for t in candidates if t is not None), default=now + MAX_SLEEP)
        return min(max(soonest - now, 0.0), MAX_SLEEP)

    def _dispatcher(self, child: Child, handlers: runtime.Handlers) -> Callable[[bytearray], None]:
        def dispatch(frame: bytearray) -> None:
            try:
                runtime.dispatch(handlers, frame, "parent")
            except ipc.ProtocolError as e:
                log.error("protocol error from %s child: %s", child.name, e)
                child.drop()
            except Exception:
                # A bug must not cost the user every token: drop the peer, keep the state.
                log.exception(
                    "internal error handling %s from the %s child",
                    runtime.type_name(frame),
                    child.name,
                )
                child.drop()
            finally:
                ipc.wipe(frame)

        return dispatch

    def _child_exited(self, child: Child) -> None:
        if self.stopping:
            return
        if child is self.net:
            self.refresher.network_lost()
        # Restart on the same sockets; throttle a child that dies as soon as it starts.
        delay = RESTART_DELAY if instant() - child.started_at < 1.0 else 0.0
        self.restart_at[child.name] = instant() + delay

    # -- the command child ------------------------------------------------------------------

    def reply(self, request_id: int, text: str) -> None:
        self.cmd.send(ipc.CmdReply(text.encode("utf-8")).encode(request_id))

    def reply_secret(self, request_id: int, payload: bytearray) -> None:
        """A reply carrying a token or a dump: every copy we made is wiped once sent."""
        frame = ipc.CmdReply(payload).encode(request_id)
        ipc.wipe(payload)
        self.cmd.send(frame, secret=True)

    def _entry_or_reply(self, request_id: int, name: str) -> Entry | None:
        entry = self.table.get(name)
        if entry is None:
            self.reply(request_id, f"error:No account '{name}'")
        return entry

    def handle_cmd_ready(self, request_id: int, msg: ipc.CmdReady) -> None:
        self.cmd_ready = True
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        """Both children serve: run startup_cmd and tell whoever waits."""
        if self.ready or not (self.cmd_ready and self.net_ready):
            return
        self.ready = True
        self.on_ready(False)  # commands are served: `pizauth server` may return
        if self.config.startup_cmd:

            def done(error: str | None) -> None:
                if error is not None:
                    log.error("%s", error)
                self.on_ready(True)

            # As in pizauth 1.1: no timeout, no extra environment; ready once it has finished.
            self.hooks.start(self.config.startup_cmd, {}, None, done)
        else:
            self.on_ready(True)

    def handle_show(self, request_id: int, msg: ipc.CmdShow) -> None:
        entry = self._entry_or_reply(request_id, msg.account)
        if entry is None:
            return
        now = instant()
        match entry.state:
            case Empty():
                pending = self.refresher.start_auth(entry)
                self.reply_pending(request_id, pending, msg.withurl)
            case Pending() as pending:
                self.reply_pending(request_id, pending, msg.withurl)
            case Active() as active:
                self._show_active(request_id, entry, active, msg.withurl, now)

    def _show_active(
        self, request_id: int, entry: Entry, active: Active, withurl: bool, now: float
    ) -> None:
        if active.expiry > now:
            reply = bytearray(b"access_token:")
            reply += active.access_token.view()
            self.reply_secret(request_id, reply)
        elif active.refresh_token is None:
            # Expired and nothing to refresh it with: the user must log in again.
            self.refresher.change(entry, Empty())
            self.reply_pending(request_id, self.refresher.start_auth(entry), withurl)
        elif active.ongoing_refresh or (refresh_time(entry) or now) > now:
            # A refresh is running, or failed and is retried after refresh_retry.
            self.reply(
                request_id,
                "error:Access token has expired. "
                "Refreshing is in progress but has not yet succeeded",
            )
        else:
            self.refresher.start_refresh(entry, now)
            self.reply(request_id, "error:Access token has expired. Refreshing initiated")

    def reply_pending(self, request_id: int, pending: Pending, withurl: bool) -> None:
        self.reply(request_id, "pending:" + (pending.request.url if withurl else ""))

    def handle_refresh(self, request_id: int, msg: ipc.CmdRefresh) -> None:
        entry = self._entry_or_reply(request_id, msg.account)
        if entry is None:
            return
        match entry.state:
            case Empty() | Pending():
                pending = self.refresher.start_auth(entry)
                self.reply_pending(request_id, pending, msg.withurl)
            case Active():
                self.refresher.start_refresh(entry, instant())
                self.reply(request_id, "scheduled:")

    def handle_revoke(self, request_id: int, msg: ipc.CmdRevoke) -> None:
        entry = self._entry_or_reply(request_id, msg.account)
        if entry is None:
            return
        if not isinstance(entry.state, Empty):
            self.refresher.change(entry, Empty(), revoked=True)
        self.reply(request_id, "ok:")

    def handle_status(self, request_id: int, msg: ipc.CmdStatus) -> None:
        self.reply(request_id, "ok:" + self.table.status(instant()))

    def handle_info(self, request_id: int, msg: ipc.CmdInfo) -> None:
        info = {
            "http_port": "none" if self.http_port is None else str(self.http_port),
            "https_port": "none" if self.https_port is None else str(self.https_port),
        }
        if self.https_pub_key:
            info["https_pub_key"] = self.https_pub_key
            info["https_cert_sha256"] = self.https_fingerprint  # an addition to pizauth 1.1
        self.reply(request_id, json.dumps(info, separators=(",", ":")))

    def handle_reload(self, request_id: int, msg: ipc.CmdReload) -> None:
        error = self.reload()
        self.reply(request_id, "ok:" if error is None else "error:" + error)

    def handle_shutdown(self, request_id: int, msg: ipc.CmdShutdown) -> None:
        # Wipe first: whatever happens next, no token outlives the request.
        self.table.wipe_all()
        self.reply(request_id, "ok:")
        self.stopping = True

    def handle_dump(self, request_id: int, msg: ipc.CmdDump) -> None:
        from pizauth.priv import dump  # cryptography is ~7 MiB: loaded only when asked for

        data = dump.dump(self.table)
        if len(data) > dump.MAX_DUMP:
            ipc.wipe(data)
            # A dump that restore could not take back would be a silent loss later.
            self.reply(request_id, "error:Dump too large to be restored")
            return
        self.reply_secret(request_id, data)  # raw bytes, no prefix; wiped once sent

    def handle_restore(self, request_id: int, msg: ipc.CmdRestore) -> None:
        from pizauth.priv import dump

        try:
            restored = dump.restore(self.table, msg.dump)
        except dump.DumpError as e:
            self.reply(request_id, f"error:{e}")  # nothing has changed
            return
        for name in restored:
            self.notifier.event(name, TokenEvent.NEW)  # pizauth 1.1 emits none
        self.reply(request_id, "ok:")
        # Nothing to wake: the loop recomputes refresh and reminder times every iteration.

    # -- the network child ------------------------------------------------------------------

    def verdict(self, request_id: int, status: int, page: str = "") -> None:
        self.net.send(ipc.CallbackVerdict(status, page).encode(request_id))

    def handle_net_ready(self, request_id: int, msg: ipc.NetReady) -> None:
        self.https_pub_key = msg.public_key
        self.https_fingerprint = msg.fingerprint
        self.net_ready = True
        self._maybe_ready()

    def handle_callback(self, request_id: int, url: ipc.NetCallback) -> None:
        # The checks in the order pizauth 1.1 makes them, so each answer is the same.
        state = url.get("state")
        if state is None:
            self.verdict(request_id, 404)
            return
        entry = self.table.pending_with_state(state)
        if entry is None:
            self.verdict(request_id, 200, NO_PENDING_PAGE)
            return
        expected = effective_redirect_uri(entry.account, self.http_port, self.https_port)
        if not redirect_matches(expected, url):
            self.verdict(request_id, 404)
            return
        name = entry.account.name
        error = url.get("error")
        if error is not None:
            self.refresher.change(entry, Empty())
            # A page that says what failed and what to do (the network child escapes it).
            description = url.get("error_description")
            reason = f"{error} ({description})" if description else error
            self.verdict(
                request_id,
                400,
                f"Authentication for {name} failed: {reason}. "
                f"Run 'pizauth show {name}' for a new login URL.",
            )
            self.notifier.error(name, f"Authentication for {name} failed: {error}")
            return
        code = url.get("code")
        if code is None:
            self.verdict(request_id, 400)
            return
        self.verdict(request_id, 200, PROCESSING_PAGE)
        self.refresher.exchange(entry, code)

    # -- reload and shutdown -----------------------------------------------------------------

    def reload(self) -> str | None:
        """Re-read the configuration; the error text if it is bad (nothing changes then)."""
        try:
            config = configuration.load(self.config_path)
            self._rebind(config)
        except (configuration.ConfigError, ListenError) as e:
            return str(e)
        self.config = config  # first: the events below run the new token_event_cmd
        for name in self.table.reload(config.accounts):
            self.notifier.event(name, TokenEvent.INVALIDATED)
        return None

    def touch_socket(self) -> None:
        """Keep the socket from being removed as stale, also when detached."""
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
                self.refresher.change(entry, Empty())

    def shutdown(self) -> None:
        self.table.wipe_all()
        # The socket goes first: once `pizauth shutdown` sees its connection close
        # (when the command child ends), nothing of the server is left to find.
        try:
            os.unlink(self.sockets.control.getsockname())
        except OSError:
            pass
        self.cmd.flush(timeout=SHUTDOWN_FLUSH)
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
