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

The launcher only ever sees descriptors (each with the type of the request it will
carry), never a request or a result. It runs at most limits.MAX_WORKERS workers at
once, whatever it is asked: a worker counts until the launcher has reaped it, and a
descriptor that finds every slot taken is answered REFUSED, which the network child
turns into a transient failure. It kills a worker still running WORKER_IO and
WORKER_KILL_MARGIN after its deadline (DEADLINES), so that a worker that escapes its
own timer (net/deadline.py) still ends.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time

import requests

from pizauth import ipc, limits, sandbox
from pizauth.ipc import MsgType, NetTokenResult, RefreshKind, TokenOutcome
from pizauth.net import deadline, device, metadata, revoke, tokenclient
from pizauth.process import harden, set_title
from pizauth.timeouts import (
    CODE_EXCHANGE,
    DEVICE_AUTHORIZATION,
    TOKEN_REQUEST,
    WORKER_IO,
    WORKER_KILL_MARGIN,
    WORKER_SLOT_WAIT,
)

log = logging.getLogger("pizauth")

MAX_WORKERS = limits.MAX_WORKERS
# The wall-clock time each request may take in its worker, from its first connection to
# its answer (net/deadline.py); the launcher kills a worker still running WORKER_IO (to
# read its request and write its answer) and WORKER_KILL_MARGIN after it.
DEADLINES = {
    MsgType.NET_EXCHANGE: CODE_EXCHANGE,
    MsgType.NET_REFRESH: TOKEN_REQUEST,
    MsgType.NET_DEVICE_AUTH: DEVICE_AUTHORIZATION,
    MsgType.NET_DEVICE_POLL: TOKEN_REQUEST,
    MsgType.NET_METADATA: TOKEN_REQUEST,  # every document tried, together
    MsgType.NET_REVOKE: TOKEN_REQUEST,
}
# What the launcher writes on a worker's socket before the network child sends the
# request: a worker runs on it, or every slot is taken.
STARTED, REFUSED = b"+", b"-"
# A descriptor that finds every slot taken waits this long for a worker to be reaped:
# the network child frees its slot when a worker's socket closes, a moment before the
# launcher can reap it.
ADMIT_WAIT = 2.0


class Busy(Exception):
    """No worker slot: the request was never sent to the provider."""


def kill_after(kind: int) -> float:
    """Seconds after its start that the launcher kills a worker told to run `kind`:
    the longest deadline when the network child named no request type we know."""
    try:
        limit = DEADLINES[MsgType(kind)]
    except (ValueError, KeyError):
        limit = max(DEADLINES.values())
    return limit + WORKER_IO + WORKER_KILL_MARGIN


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
            log.error("network launcher (pid %d) exited", self.pid)
            os._exit(1)

        threading.Thread(target=wait_for_exit, daemon=True).start()

    def call(self, request: bytearray, msg_type: MsgType) -> bytearray | None:
        """Run `request` (a frame of a type in DEADLINES) in a new worker.

        The worker's result frame, or None if it failed to answer. Busy if no worker
        could be had within WORKER_SLOT_WAIT: the request was not sent.
        """
        # More requests than slots wait here, each for a bounded time, so that a burst
        # fails as a transient failure rather than piling up for ever.
        if not self._slots.acquire(timeout=WORKER_SLOT_WAIT):
            raise Busy
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with mine:
                try:
                    with self._lock:
                        socket.send_fds(self.sock, [bytes([msg_type])], [theirs.fileno()])
                finally:
                    theirs.close()
                try:
                    mine.settimeout(ADMIT_WAIT + WORKER_IO)
                    admitted = mine.recv(1)
                    if admitted == REFUSED:
                        raise Busy
                    if admitted != STARTED:
                        return None  # the launcher could not fork, or is gone
                    mine.settimeout(kill_after(msg_type))
                    mine.sendall(request)
                    mine.shutdown(socket.SHUT_WR)  # the worker reads to end-of-file
                    return _one_frame(mine)
                except OSError as e:
                    log.warning("token request worker: %s", e)
                    return None
        finally:
            self._slots.release()


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
    # Workers are reaped here, so that each counts until it is gone. SIGCHLD is blocked
    # and waited for (sigtimedwait) when every slot is taken.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    sandbox.confine_launcher()
    serve_launcher(sock)


def serve_launcher(sock: socket.socket) -> None:  # pragma: no cover - forked
    """Start a worker on each descriptor received on `sock`, never more than MAX_WORKERS
    at once, until the network child closes it."""
    workers: dict[int, float] = {}  # pid -> when to kill it (monotonic)
    # Set when a descriptor was refused, until a worker is reaped: a flood is refused at
    # once, not ADMIT_WAIT per descriptor, so that it cannot hold up the requests after it.
    full = False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        _reap(workers)
        _kill_overdue(workers)
        # Wake up at least once a second to reap and to kill the overdue.
        if not poller.poll(1000):
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, 16, MAX_WORKERS)
        except OSError:
            return
        if not data:
            for fd in fds:
                os.close(fd)
            return  # the network child is gone
        for fd in fds:
            if _make_room(workers, 0.0 if full else ADMIT_WAIT):
                full = False
                _start_worker(sock, fd, data[0], workers)
            else:
                if not full:
                    log.warning("every token request worker slot is taken; refusing requests")
                full = True
                _answer(fd, REFUSED)


def _reap(workers: dict[int, float]) -> None:  # pragma: no cover - forked
    while workers:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            return
        if pid == 0:
            return
        workers.pop(pid, None)


def _kill_overdue(workers: dict[int, float]) -> None:  # pragma: no cover - forked
    now = time.monotonic()
    for pid, when in workers.items():
        if now >= when:
            log.warning("token request worker %d overran its deadline; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)  # still counted until reaped
            except ProcessLookupError:
                pass


def _make_room(workers: dict[int, float], wait: float) -> bool:  # pragma: no cover - forked
    """True once fewer than MAX_WORKERS workers are alive, waiting up to `wait` seconds."""
    end = time.monotonic() + wait
    while True:
        _reap(workers)
        if len(workers) < MAX_WORKERS:
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        signal.sigtimedwait({signal.SIGCHLD}, left)


def _answer(fd: int, verdict: bytes) -> None:  # pragma: no cover - forked
    try:
        os.write(fd, verdict)  # one byte into an empty socket: never blocks
    except OSError:
        pass
    finally:
        os.close(fd)


def _start_worker(
    launcher: socket.socket, fd: int, kind: int, workers: dict[int, float]
) -> None:  # pragma: no cover - forked
    try:
        pid = os.fork()
    except OSError as e:
        log.error("cannot start a token request worker: %s", e)
        _answer(fd, REFUSED)  # nothing was sent: the request may be tried again
        return
    if pid == 0:
        try:
            launcher.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _worker(socket.socket(fileno=fd))
        except Exception as e:  # noqa: BLE001 - the network child sees no answer
            # The type only: an exception raised mid-request might quote what it carried.
            log.warning("token request worker failed: %s", type(e).__name__)
        finally:
            os._exit(0)
    workers[pid] = time.monotonic() + kill_after(kind)
    _answer(fd, STARTED)


def _worker(conn: socket.socket) -> None:  # pragma: no cover - forked
    harden(parent_death_signal=signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    set_title("pizauth: network worker")
    sandbox.confine_worker()  # on top of the launcher's confinement: no new processes
    conn.settimeout(WORKER_IO)
    request = _one_frame(conn)
    if request is None:
        return
    msg = ipc.decode(request)
    if msg.type not in DEADLINES:
        raise ipc.ProtocolError(f"{msg.type.name} is not a provider request")
    result: ipc.Wire
    with requests.Session() as session:
        try:
            # Each call bounds itself more tightly (net/tokenclient.py); this is the whole
            # request's bound, which the launcher's kill backs up.
            with deadline.within(DEADLINES[msg.type]):
                result = _call(session, msg)
        except deadline.DeadlineExceeded:
            # A code may have been sent: an exchange fails for good, as when a worker
            # does not answer (net/child.py).
            outcome = (
                TokenOutcome.PERMANENT
                if msg.type == MsgType.NET_EXCHANGE
                else TokenOutcome.TRANSIENT
            )
            result = failure(msg.type, outcome, "timed out waiting for the provider")
        except Exception as e:  # noqa: BLE001 - every request gets an answer
            log.warning("token request failed: %s", type(e).__name__)
            result = failure(msg.type, TokenOutcome.PERMANENT, "invalid response received")
    conn.settimeout(WORKER_IO)
    conn.sendall(result.encode(msg.request_id))


def _call(session: requests.Session, msg: ipc.Message) -> ipc.Wire:  # pragma: no cover
    """The result of the provider request `msg` carries."""
    # tokenclient builds the form from the wire fields, in their declared order
    # (pizauth 1.1's), less the last one: how the client authenticates.
    if msg.type == MsgType.NET_EXCHANGE:
        exchange = ipc.NetExchange.decode(msg)
        uri, form = tokenclient.exchange_form(tuple(exchange.fields())[:-1])
        return to_wire(
            tokenclient.exchange_code(session, uri, form, auth_method=exchange.auth_method)
        )
    if msg.type == MsgType.NET_REFRESH:
        refresh = ipc.NetRefresh.decode(msg)
        uri, form = tokenclient.refresh_form(tuple(refresh.fields())[:-1])
        return to_wire(tokenclient.refresh(session, uri, form, refresh.auth_method))
    if msg.type == MsgType.NET_METADATA:
        found = metadata.fetch_metadata(session, ipc.NetMetadata.decode(msg).issuer)
        return metadata_to_wire(found)
    if msg.type in DEVICE_CALLS:
        return DEVICE_CALLS[msg.type](session, msg)
    return revoke_to_wire(_revoke(session, ipc.NetRevoke.decode(msg)))


def to_wire(result: tokenclient.TokenResult) -> NetTokenResult:
    """The NET_TOKEN_RESULT for what the token client made of a reply. Nothing over its
    limit is sent: the parent would refuse it as a protocol error and restart us."""
    outcome = TokenOutcome(result.outcome)
    message = ipc.cut(result.message, limits.MAX_RESULT_MESSAGE)
    if outcome is not TokenOutcome.OK:
        code = ipc.cut(result.provider_error, limits.MAX_ERROR_CODE)
        wait = result.retry_after if outcome is TokenOutcome.TRANSIENT else None
        return NetTokenResult(outcome, message, provider_error=code, retry_after=wait)
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
    outcome = ipc.NetOutcome(done.outcome)
    return ipc.NetRevokeResult(
        outcome,
        ipc.cut(done.message, limits.MAX_RESULT_MESSAGE),
        ipc.cut(done.provider_error, limits.MAX_ERROR_CODE),
        done.retry_after if outcome is ipc.NetOutcome.TRANSIENT else None,
    )
