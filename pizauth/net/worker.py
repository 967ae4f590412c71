"""Token-endpoint calls in short-lived processes, so that no token outlives its call.

`requests` and `json` leave str copies of every token they touch in the heap of
the process that ran them, and Python cannot wipe a str. So each call runs in
a worker process that exits as soon as it has answered: its memory dies with
it. Workers are forked by a launcher, a single-threaded process that the
network child forks at start-up, before it has any thread, any secret or any
private key, and before its seccomp filter forbids it to make processes:

    network child --SCM_RIGHTS: one end of a new socketpair--> launcher
    launcher --fork--> worker: reads one NET_EXCHANGE, NET_REFRESH or NET_DEVICE_POLL
    frame on that socket, makes the call, writes one NET_TOKEN_RESULT frame, exits
    (a NET_DEVICE_AUTH is answered by one NET_DEVICE_AUTH_RESULT frame instead).

The launcher only ever sees descriptors, never a request or a result.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import requests

from pizauth import ipc, limits, sandbox
from pizauth.ipc import MsgType, NetTokenResult, RefreshKind, TokenOutcome
from pizauth.net import device, metadata, revoke, tokenclient
from pizauth.process import harden, set_title
from pizauth.timeouts import COMMAND_REPLY, CONNECT, WORKER_IO

log = logging.getLogger("pizauth")

MAX_WORKERS = 16  # calls at once; more wait for a free slot
# The longest a worker may take, after which it is killed: a code exchange makes up to
# EXCHANGE_ATTEMPTS attempts of (connect + read) plus the delay between them.
_ATTEMPT = CONNECT + 2 * tokenclient.TIMEOUT
DEADLINES = {
    MsgType.NET_EXCHANGE: int(
        tokenclient.EXCHANGE_ATTEMPTS * (_ATTEMPT + tokenclient.EXCHANGE_RETRY_DELAY)
    ),
    MsgType.NET_REFRESH: int(_ATTEMPT),
    # A `pizauth show` waits for this one: it must end before the command child gives
    # up on the parent, so that the user hears why it failed.
    MsgType.NET_DEVICE_AUTH: int(COMMAND_REPLY) - 5,
    MsgType.NET_DEVICE_POLL: int(_ATTEMPT),
    # Up to three documents are tried in turn (net/metadata.py).
    MsgType.NET_METADATA: int(3 * _ATTEMPT),
    MsgType.NET_REVOKE: int(_ATTEMPT),
}


class Launcher:
    """The network child's handle on its launcher process."""

    def __init__(self, close_in_launcher: list[int]) -> None:
        """Fork the launcher. Call before starting any thread; `close_in_launcher`
        names descriptors of the network child that the launcher must not keep."""
        # SEQPACKET: one record per request, so descriptors never arrive merged.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the launcher process
            try:
                ours.close()
                for fd in close_in_launcher:
                    os.close(fd)
                _launcher(theirs, os.getppid())
            finally:
                os._exit(0)
        theirs.close()
        self.pid = pid
        self.sock = ours
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_WORKERS)

    def watch(self) -> None:
        """End the network child if the launcher dies, so that the parent restarts both:
        a network child that can no longer start workers would fail every token request."""

        def wait_for_exit() -> None:
            try:
                while self.sock.recv(1):
                    pass
            except OSError:
                pass
            try:
                _, status = os.waitpid(self.pid, 0)
            except OSError:
                status = 0
            if sandbox.killed_by_filter(status):
                log.error("%s", sandbox.killed_message("network launcher", self.pid))
            else:
                log.error("network launcher (pid %d) exited", self.pid)
            os._exit(1)

        threading.Thread(target=wait_for_exit, daemon=True).start()

    def call(self, request: bytearray, msg_type: MsgType) -> bytearray | None:
        """Run `request` (a NET_EXCHANGE or NET_REFRESH frame) in a new worker.

        The worker's NET_TOKEN_RESULT frame, or None if it failed to answer.
        """
        with self._slots:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with mine:
                try:
                    with self._lock:
                        socket.send_fds(self.sock, [b"W"], [theirs.fileno()])
                finally:
                    theirs.close()
                mine.settimeout(DEADLINES[msg_type] + 5.0)
                try:
                    mine.sendall(request)
                    mine.shutdown(socket.SHUT_WR)  # the worker reads to end-of-file
                    return _one_frame(mine)
                except OSError as e:
                    log.warning("token request worker: %s", e)
                    return None


def _one_frame(sock: socket.socket) -> bytearray | None:
    """The single frame a worker writes before it exits (EOF ends it)."""
    reader = ipc.FrameReader()
    frames: list[bytearray] = []
    try:
        while (got := reader.read_from(sock)) is not None:
            frames += got
    except ipc.ProtocolError as e:
        log.warning("token request worker: %s", e)
    except OSError as e:
        log.warning("token request worker: %s", e)
    if len(frames) == 1:
        return frames[0]
    for frame in frames:
        ipc.wipe(frame)
    return None


def _launcher(sock: socket.socket, network_child: int) -> None:  # pragma: no cover - forked
    harden(parent_death_signal=signal.SIGKILL)
    if os.getppid() != network_child:
        return  # the network child died before the death signal was armed
    set_title("pizauth: network launcher")
    signal.signal(signal.SIGCHLD, _reap)
    paths = sandbox.confine_launcher()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 16, MAX_WORKERS)
        except OSError:
            return
        if not data:
            return  # the network child is gone
        for fd in fds:
            _start_worker(sock, fd, paths)


def _reap(signum: int, frame: object) -> None:  # pragma: no cover - in the launcher
    """SIGCHLD: collect the workers that have ended; say so of one its filter killed."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if sandbox.killed_by_filter(status):
            log.error("%s", sandbox.killed_message("network worker", pid))


def _start_worker(launcher: socket.socket, fd: int, paths: list[str]) -> None:  # pragma: no cover
    try:
        pid = os.fork()
    except OSError as e:
        log.error("cannot start a token request worker: %s", e)
        os.close(fd)  # the network child sees end-of-file: the request failed
        return
    if pid == 0:
        try:
            launcher.close()
            _worker(socket.socket(fileno=fd), paths)
        except Exception as e:  # noqa: BLE001 - the network child sees no answer
            # The type only: an exception raised mid-request might quote what it carried.
            log.warning("token request worker failed: %s", type(e).__name__)
        finally:
            os._exit(0)
    os.close(fd)


def _worker(conn: socket.socket, paths: list[str]) -> None:  # pragma: no cover - forked
    harden(parent_death_signal=signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    set_title("pizauth: network worker")
    sandbox.confine_worker(paths)  # on top of the launcher's confinement: no new processes
    conn.settimeout(WORKER_IO)
    request = _one_frame(conn)
    if request is None:
        return
    msg = ipc.decode(request)
    if msg.type not in DEADLINES:
        raise ipc.ProtocolError(f"{msg.type.name} is not a provider request")
    # SIGALRM's default action ends the process: a hard bound whatever the call does.
    signal.alarm(DEADLINES[msg.type])
    result: ipc.Wire
    with requests.Session() as session:
        try:
            # tokenclient builds the form from the wire fields, in their declared order
            # (pizauth 1.1's), less the last one: how the client authenticates.
            if msg.type == MsgType.NET_EXCHANGE:
                exchange = ipc.NetExchange.decode(msg)
                uri, form = tokenclient.exchange_form(tuple(exchange.fields())[:-1])
                result = to_wire(
                    tokenclient.exchange_code(session, uri, form, auth_method=exchange.auth_method)
                )
            elif msg.type == MsgType.NET_REFRESH:
                refresh = ipc.NetRefresh.decode(msg)
                uri, form = tokenclient.refresh_form(tuple(refresh.fields())[:-1])
                result = to_wire(tokenclient.refresh(session, uri, form, refresh.auth_method))
            elif msg.type == MsgType.NET_METADATA:
                found = metadata.fetch_metadata(session, ipc.NetMetadata.decode(msg).issuer)
                result = metadata_to_wire(found)
            elif msg.type in DEVICE_CALLS:
                result = DEVICE_CALLS[msg.type](session, msg)
            else:
                result = revoke_to_wire(_revoke(session, ipc.NetRevoke.decode(msg)))
        except Exception as e:  # noqa: BLE001 - every request gets an answer
            log.warning("token request failed: %s", type(e).__name__)
            result = failure(msg.type, TokenOutcome.PERMANENT, "invalid response received")
    conn.settimeout(WORKER_IO)
    conn.sendall(result.encode(msg.request_id))


def to_wire(result: tokenclient.TokenResult) -> NetTokenResult:
    """The NET_TOKEN_RESULT for what the token client made of a reply. Nothing over its
    limit is sent: the parent would refuse it as a protocol error and restart us."""
    outcome = TokenOutcome(result.outcome)
    message = ipc.cut(result.message, limits.MAX_RESULT_MESSAGE)
    if outcome is not TokenOutcome.OK:
        code = ipc.cut(result.provider_error, limits.MAX_ERROR_CODE)
        return NetTokenResult(outcome, message, provider_error=code)
    access, refresh = result.access_token.encode(), result.refresh_token.encode()
    if len(access) > limits.MAX_TOKEN or len(refresh) > limits.MAX_TOKEN:
        return NetTokenResult(TokenOutcome.PERMANENT, "token from token endpoint too large")
    expires_in = None if result.expires_in is None else min(result.expires_in, limits.MAX_SECONDS)
    return NetTokenResult(
        outcome, "", access, expires_in, RefreshKind(result.refresh_kind), refresh
    )


def failure(msg_type: MsgType, outcome: TokenOutcome, message: str) -> ipc.Wire:
    """The result a request of `msg_type` gets when its call could not be made."""
    if msg_type == MsgType.NET_DEVICE_AUTH:
        return ipc.NetDeviceAuthResult(outcome, message)
    if msg_type == MsgType.NET_METADATA:
        return ipc.NetMetadataResult(ipc.NetOutcome(outcome.value), message)
    if msg_type == MsgType.NET_REVOKE:
        return ipc.NetRevokeResult(ipc.NetOutcome(outcome.value), message)
    return NetTokenResult(outcome, message)


def _device_auth(session: requests.Session, msg: ipc.Message) -> ipc.NetDeviceAuthResult:
    request = ipc.NetDeviceAuth.decode(msg)
    secret = None if request.client_secret is None else ipc.text(request.client_secret)
    got = device.request_device_authorization(
        session,
        request.device_auth_uri,
        request.client_id,
        secret,
        request.scope,
        request.auth_method,
    )
    return device_auth_to_wire(got)


def device_auth_to_wire(got: device.DeviceAuthorization) -> ipc.NetDeviceAuthResult:
    """The NET_DEVICE_AUTH_RESULT for what the device endpoint said, within its limits."""
    outcome = TokenOutcome(got.outcome)
    message = ipc.cut(got.message, limits.MAX_RESULT_MESSAGE)
    code = ipc.cut(got.provider_error, limits.MAX_ERROR_CODE)
    if outcome is not TokenOutcome.OK:
        return ipc.NetDeviceAuthResult(outcome, message, code)
    if len(got.user_code.encode()) > limits.MAX_PROVIDER_TEXT:
        return ipc.NetDeviceAuthResult(TokenOutcome.PERMANENT, "user_code too long")
    return ipc.NetDeviceAuthResult(
        outcome,
        device_code=got.device_code,
        user_code=got.user_code,
        verification_uri=got.verification_uri,
        verification_uri_complete=got.verification_uri_complete,
        expires_in=min(got.expires_in, limits.MAX_SECONDS),
        interval=min(got.interval, limits.MAX_SECONDS),
    )


def _device_poll(session: requests.Session, msg: ipc.Message) -> NetTokenResult:
    request = ipc.NetDevicePoll.decode(msg)
    secret = None if request.client_secret is None else ipc.text(request.client_secret)
    code = ipc.text(request.device_code)
    got = device.poll_device_token(
        session, request.token_uri, request.client_id, secret, code, request.auth_method
    )
    return poll_to_wire(got, code)


def poll_to_wire(got: device.DevicePoll, device_code: str) -> NetTokenResult:
    """The NET_TOKEN_RESULT of one device poll. A provider that quotes the device code
    in its error text must not get it into the parent's log or a hook's environment."""
    if got.outcome == "ok":
        assert got.token is not None
        return to_wire(got.token)
    message = got.message.replace(device_code, "[device code]") if device_code else got.message
    return NetTokenResult(
        TokenOutcome(got.outcome),
        ipc.cut(message, limits.MAX_RESULT_MESSAGE),
        provider_error=ipc.cut(got.provider_error, limits.MAX_ERROR_CODE),
    )


DEVICE_CALLS = {MsgType.NET_DEVICE_AUTH: _device_auth, MsgType.NET_DEVICE_POLL: _device_poll}


def _revoke(session: requests.Session, msg: ipc.NetRevoke) -> revoke.Revocation:  # pragma: no cover
    # str copies of the token and secret die with this process (see the module docstring).
    secret = None if msg.client_secret is None else ipc.text(memoryview(msg.client_secret))
    return revoke.revoke_token(
        session,
        msg.revoke_uri,
        msg.client_id,
        secret,
        ipc.text(memoryview(msg.token)),
        msg.token_type_hint,
        msg.auth_method,
    )


def metadata_to_wire(found: metadata.Metadata) -> ipc.NetMetadataResult:
    """The NET_METADATA_RESULT for a metadata fetch, each part within its limit."""
    outcome = ipc.NetOutcome(found.outcome)
    message = ipc.cut(found.message, limits.MAX_RESULT_MESSAGE)
    if outcome is not ipc.NetOutcome.OK:
        return ipc.NetMetadataResult(outcome, message)
    return ipc.NetMetadataResult(
        outcome,
        message,
        found.authorization_endpoint,
        found.token_endpoint,
        found.device_authorization_endpoint,
        found.revocation_endpoint,
    )


def revoke_to_wire(done: revoke.Revocation) -> ipc.NetRevokeResult:
    return ipc.NetRevokeResult(
        ipc.NetOutcome(done.outcome),
        ipc.cut(done.message, limits.MAX_RESULT_MESSAGE),
        ipc.cut(done.provider_error, limits.MAX_ERROR_CODE),
    )
