"""The parent process: holds every token, decides, and talks only to its children.

It never opens a network connection and never reads from a socket client: the
command child and the network child parse what strangers send and pass the
parent typed, framed messages. One dispatch table per peer says what each may
ask; an unknown type or a malformed frame drops that child, which is then
restarted. Everything runs on one thread around a selector; refresher.py and
notifier.py hold what the messages set in motion.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pizauth import config as configuration
from pizauth import ipc, runtime
from pizauth.ipc import MsgType
from pizauth.priv.children import RESTART_DELAY, Child
from pizauth.priv.commands import Collaborators, Commands, Listening, Replies
from pizauth.priv.flows.device import DeviceFlow
from pizauth.priv.flows.device import next_wakeup as next_poll
from pizauth.priv.flows.loginpages import LoginPages
from pizauth.priv.flows.provider import Resolver
from pizauth.priv.flows.refresher import MAX_SLEEP, Refresher
from pizauth.priv.flows.refresher import next_wakeup as next_refresh
from pizauth.priv.flows.revocation import Revoker
from pizauth.priv.keptlog import CONFIG_PERMISSIONS
from pizauth.priv.listeners import ListenError, Sockets, port_of
from pizauth.priv.run.hooks import HookRunner
from pizauth.priv.run.notifier import Notifier
from pizauth.priv.state.authurl import effective_redirect_uri, redirect_matches
from pizauth.priv.state.clock import instant
from pizauth.priv.state.failures import callback_error
from pizauth.priv.state.tokens import DevicePending, Empty, Pending, TokenTable
from pizauth.priv.state.tokenstate import Cause
from pizauth.priv.storage.storekeeper import StoreKeeper
from pizauth.priv.untrusted import received
from pizauth.text import shown
from pizauth.timeouts import SHUTDOWN_FLUSH

# Request ids are u32 on the wire; above them, which start of the command child asked.
REQUEST_ID_SPAN = 1 << 32
# What the parent asks of the network child, and the one result type each is answered
# with (runtime.Calls refuses any other).
NET_RESULTS: dict[type[ipc.Wire], type[ipc.Wire]] = {
    ipc.NetExchange: ipc.NetTokenResult,
    ipc.NetRefresh: ipc.NetTokenResult,
    ipc.NetDevicePoll: ipc.NetTokenResult,
    ipc.NetDeviceAuth: ipc.NetDeviceAuthResult,
    ipc.NetMetadata: ipc.NetMetadataResult,
    ipc.NetRevoke: ipc.NetRevokeResult,
}

if TYPE_CHECKING:
    from pizauth.priv.keptlog import KeptLog

log = logging.getLogger("pizauth")

# Why a login whose URL came from the network child ended when that child did.
NETWORK_RESTARTED = "the network process restarted during the login: log in again"
NO_PENDING_PAGE = "No pending token matches request state: request a fresh token"
# Files in $XDG_RUNTIME_DIR untouched for 6 hours may be removed by the system.
SOCKET_TOUCH_PERIOD = 6 * 3600.0


class Parent:
    def __init__(
        self,
        config: configuration.Config,
        config_path: str,
        sockets: Sockets,
        child_args: list[str],
        on_ready: Callable[[bool], None],
        kept: KeptLog | None = None,
        kept_fd: int | None = None,
        *,
        clock: Callable[[], float] = instant,
    ) -> None:
        # One clock for the loop and every flow's timers, so that a test can drive both.
        self.clock = clock
        self.config = config
        self.config_path = config_path
        self.sockets = sockets
        self.http_port = port_of(sockets.http)
        self.https_port = port_of(sockets.https)
        self.https_pub_key = ""
        self.https_fingerprint = ""
        self.on_ready = on_ready
        # Errors kept for `status` when there is nowhere to log, and the pipe the
        # children's stderr arrives on (server.py).
        self.kept = kept
        self.kept_fd = kept_fd
        self.stopping = False
        self.reload_requested = False
        self.ready = False
        self.cmd_ready = self.net_ready = False
        self.restart_at: dict[str, float] = {}
        self.next_touch = clock() + SOCKET_TOUCH_PERIOD
        self.sel = selectors.DefaultSelector()

        # The tokens, the user's hooks their changes run, and the token store.
        self.hooks = HookRunner(self.watch, self.unwatch, clock)
        self.notifier = notifier = Notifier(self.hooks, lambda: self.config)
        # Each event a change of token state raises goes to token_event_cmd.
        self.table = TokenTable(config.accounts, lambda name, event: notifier.event(name, event))
        self.keeper = StoreKeeper(
            config, self.table, notifier, self.watch, self.unwatch, clock=clock
        )

        # Requests to the provider, all through the network child (runtime.Calls):
        # endpoints from issuer metadata and secrets from client_secret_cmd before any of
        # them, token requests, revocation at the provider after `revoke`.
        self.netcalls = runtime.Calls(
            lambda msg, request_id: self.net.post(msg, request_id), NET_RESULTS
        )
        self.resolver = Resolver(
            self.netcalls.call, self.table.client_secret, self.watch, self.unwatch, clock
        )
        # The browser waiting on a login is answered once its code exchange has ended.
        self.login_pages = LoginPages(self.verdict, clock)
        self.refresher = Refresher(
            self.table,
            lambda: self.config,
            lambda: (self.http_port, self.https_port),
            notifier,
            self.hooks,
            self.netcalls.call,
            exchange_done=self.login_pages.done,
            resolve=self.resolver.resolve,
            known=self.resolver.known,
            forget_secret=self.resolver.forget_secret,
            clock=clock,
        )
        self.revoker = Revoker(
            self.resolver,
            self.netcalls.call,
            notifier,
            lambda name: self.config.account(name),
            clock,
        )

        # What a client asks for, answered through the command child.
        replies = Replies(
            lambda msg, request_id: self.cmd.post(msg, request_id), self.client_request_id
        )
        self.device = DeviceFlow(
            self.table, self.refresher, replies.reply, self.netcalls.call, clock
        )
        self.commands = Commands(self._collaborators(replies))

        # The children, each with what it may send (the dispatch tables below); run()
        # starts them. Every text a child sends is cleaned before any handler sees it
        # (priv/untrusted.py).
        self.net = self._child(
            "network",
            "pizauth.net",
            sockets.listener_fds(),
            child_args,
            received(self.net_handlers()),
            lambda: self.net,
        )
        self.cmd = self._child(
            "command",
            "pizauth.cmd",
            {"socket": sockets.control.fileno()},
            child_args,
            self._tagged(received(self.cmd_handlers())),
            lambda: self.cmd,
        )

    def _collaborators(self, replies: Replies) -> Collaborators:
        def stop() -> None:
            self.stopping = True

        return Collaborators(
            table=self.table,
            refresher=self.refresher,
            device=self.device,
            resolver=self.resolver,
            revoker=self.revoker,
            keeper=self.keeper,
            notifier=self.notifier,
            replies=replies,
            kept=self.kept,
            listening=self.listening,
            reload=self.reload,
            stop=stop,
            clock=self.clock,
        )

    def listening(self) -> Listening:
        """The redirect listeners as they are now (a reload may rebind them)."""
        return Listening(
            self.http_port, self.https_port, self.https_pub_key, self.https_fingerprint
        )

    # -- the dispatch tables: what each child may send --------------------------------------

    def cmd_handlers(self) -> runtime.Handlers:
        return {
            MsgType.CMD_READY: self.handle_cmd_ready,
            MsgType.CMD_SHOW: self.commands.show,
            MsgType.CMD_REFRESH: self.commands.refresh,
            MsgType.CMD_REVOKE: self.commands.revoke,
            MsgType.CMD_STATUS: self.commands.status,
            MsgType.CMD_INFO: self.commands.info,
            MsgType.CMD_RELOAD: self.commands.reload,
            MsgType.CMD_SHUTDOWN: self.commands.shutdown,
            MsgType.CMD_DUMP: self.commands.dump,
            MsgType.CMD_RESTORE: self.commands.restore,
        }

    def net_handlers(self) -> runtime.Handlers:
        return {
            MsgType.NET_READY: self.handle_net_ready,
            MsgType.NET_CALLBACK: self.handle_callback,
            # Every result goes to the call that asked for it, checked there.
            **{result.TYPE: self.netcalls.result for result in NET_RESULTS.values()},
        }

    # -- the event loop ----------------------------------------------------------------------

    def _child(
        self,
        name: str,
        module: str,
        fds: dict[str, int],
        args: list[str],
        handlers: runtime.Handlers,
        itself: Callable[[], Child],
    ) -> Child:
        """A child whose frames go to `handlers`; `itself()` is the Child made here, for
        its frames' and its exit's handling, which can only run once it exists."""
        return Child(
            name,
            module,
            fds,
            args,
            self.watch,
            self.unwatch,
            self._set_writing,
            on_frame=self._dispatcher(itself, handlers),
            on_exit=lambda: self._child_exited(itself()),
        )

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
        if self.kept is not None and self.kept_fd is not None:
            kept, kept_fd = self.kept, self.kept_fd
            self.watch(kept_fd, lambda: kept.read_from(kept_fd))
        self.net.start()
        self.cmd.start()
        # Before the loop: the children start meanwhile, but no request is answered (and
        # READY is not sent) until the stored tokens are back.
        self.keeper.restore_at_start()
        while not self.stopping:
            if self.reload_requested:
                self.reload_requested = False
                error = self.reload()
                if error:
                    log.error("reload failed: %s", error)
            now = self.clock()
            self.tick(now)
            if self.stopping:
                break
            timeout = self.next_wakeup(now)
            for key, mask in self.sel.select(timeout):
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # unregistered by an earlier callback of this batch
                self._serve(key, mask)
                if self.stopping:
                    break
        self.shutdown()

    def _serve(self, key: selectors.SelectorKey, mask: int) -> None:
        """Run a ready descriptor's callbacks. One callback may drop a child whose
        descriptor is later in the same batch: a key no longer registered is skipped.
        A bug costs that one event, never the server and every token."""
        read_cb, write_cb = key.data
        try:
            if mask & selectors.EVENT_WRITE and write_cb is not None:
                write_cb()
            if mask & selectors.EVENT_READ and self.sel.get_map().get(key.fd) is key:
                read_cb()
        except Exception:
            log.exception("internal error in the parent's loop")

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
                if name == "network":
                    # Requests made since it exited went nowhere: fail them now.
                    self._network_lost()
                    self.net.start()
                else:
                    self.cmd.start()
        self.resolver.tick(now)
        self.revoker.tick(now)
        self.refresher.refresh_due(now)
        self.device.tick(now)
        self.notifier.remind_due(self.table, now)
        self.login_pages.expire(now)
        self.keeper.tick(now)

    def next_wakeup(self, now: float) -> float:
        candidates = [
            next_refresh(self.table),
            next_poll(self.table),
            self.notifier.next_wakeup(self.table),
            self.hooks.next_deadline(),
            self.login_pages.next_wakeup(),
            self.resolver.next_wakeup(),
            self.revoker.next_wakeup(),
            self.keeper.next_wakeup(),
            self.next_touch,
            *self.restart_at.values(),
        ]
        soonest = min((t for t in candidates if t is not None), default=now + MAX_SLEEP)
        return min(max(soonest - now, 0.0), MAX_SLEEP)

    def _tagged(self, handlers: runtime.Handlers) -> runtime.Handlers:
        """The command child's handlers, given request ids that carry which start of the
        child asked, so that Replies can drop an answer the parent had deferred
        (an issuer lookup, a device login) for a command child that has since restarted."""

        def tag(handler: Callable[[int, Any], None]) -> Callable[[int, Any], None]:
            return lambda request_id, msg: handler(
                self.cmd.incarnation * REQUEST_ID_SPAN + request_id, msg
            )

        return {msg_type: tag(handler) for msg_type, handler in handlers.items()}

    def client_request_id(self, tagged: int) -> int | None:
        """The command child's own request id for a tagged one, or None if it was asked
        by an earlier command child (its clients are gone; the new one must not get it)."""
        incarnation, request_id = divmod(tagged, REQUEST_ID_SPAN)
        return request_id if incarnation == self.cmd.incarnation else None

    def _dispatcher(
        self, itself: Callable[[], Child], handlers: runtime.Handlers
    ) -> Callable[[bytearray], None]:
        def dispatch(frame: bytearray) -> None:
            child = itself()
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
            self._network_lost()
        # Restart on the same sockets; throttle a child that dies as soon as it starts.
        # How long the process lived is real time, as its start was (priv/children.py).
        delay = RESTART_DELAY if instant() - child.started_at < 1.0 else 0.0
        self.restart_at[child.name] = self.clock() + delay

    def _network_lost(self) -> None:
        """No answer will come for what the network child was asked: fail it all. And
        nothing it said outlives it: issuer metadata, logins whose URL an issuer's
        document gave, device logins (their code and page came from it), its HTTPS key."""
        self.netcalls.lost()  # each request's on_lost, once
        self.resolver.network_lost()
        self.login_pages.forget()
        self.https_pub_key = self.https_fingerprint = ""
        for entry in self.table.entries.values():
            state = entry.state
            from_child = isinstance(state, DevicePending) or (
                isinstance(state, Pending) and entry.account.auth_uri is None
            )
            if from_child:
                self.refresher.failed(entry, NETWORK_RESTARTED, self.clock())
                self.refresher.change(entry, Empty(), Cause.NETWORK_LOST)

    # -- the command child ------------------------------------------------------------------

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

    # -- the network child ------------------------------------------------------------------

    def verdict(self, request_id: int, status: int, page: str = "") -> None:
        self.net.post(ipc.CallbackVerdict(status, page), request_id)

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
            description = url.get("error_description")
            self.refresher.failed(entry, callback_error(error, description), self.clock())
            self.refresher.change(entry, Empty(), Cause.LOGIN_FAILURE)
            # A page that says what failed and what to do (the network child escapes it).
            reason = f"{error} ({description})" if description else error
            self.verdict(
                request_id,
                400,
                f"Authentication for {shown(name)} failed: {reason}. "
                f"Run 'pizauth show {shown(name)}' for a new login URL.",
            )
            self.notifier.error(name, f"Authentication for {shown(name)} failed: {shown(error)}")
            return
        code = url.get("code")
        if code is None:
            self.verdict(request_id, 400)
            return
        # The page waits for the exchange's outcome (priv/flows/loginpages.py); registered
        # first, as a request that cannot even be sent fails at once.
        self.login_pages.wait(name, request_id)
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
        self.resolver.reload()  # documents and secrets of the old configuration go
        warning = configuration.permission_warning(self.config_path, config)
        if self.kept is not None:
            self.kept.forget(CONFIG_PERMISSIONS)  # `chmod 600` then reload: it goes
        if warning:
            # At error level: a warning is not logged without -v, and this one matters.
            log.error("%s", warning, extra={"kept_as": CONFIG_PERMISSIONS})
        self.keeper.reloaded(config)
        self.table.reload(config.accounts)  # each token dropped raises token_invalidated
        return None

    def touch_socket(self) -> None:
        """Keep the socket from being removed as stale, also when detached."""
        try:
            os.utime(self.sockets.control.getsockname(), follow_symlinks=False)
        except OSError:
            pass

    def _rebind(self, config: configuration.Config) -> None:
        """Bind changed listener addresses and restart the network child on them."""
        if not self.sockets.rebind(self.config, config):
            return
        self.http_port = port_of(self.sockets.http)
        self.https_port = port_of(self.sockets.https)
        self.net.fds = self.sockets.listener_fds()
        self.net.drop()  # restarted on the new sockets once it has exited
        # Pending URLs name the old redirect port: those logins must start afresh.
        for entry in self.table.entries.values():
            if isinstance(entry.state, Pending):
                self.refresher.change(entry, Empty(), Cause.RELOAD)

    def shutdown(self) -> None:
        self.keeper.last_write()  # the store stays, for the next start
        self.table.wipe_all()
        self.resolver.shutdown()
        self.revoker.wipe_all()
        self.keeper.close()
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
