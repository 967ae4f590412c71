"""Token-endpoint calls in short-lived processes, so that no token outlives its call.

`requests` and `json` leave str copies of every token they touch in the heap of
the process that ran them, and Python cannot wipe a str. So each call runs in
a worker process that exits as soon as it has answered: its memory dies with
it. Workers are forked by a launcher, a single-threaded process that the
network child forks at start-up, before it has any thread, any secret or any
private key, and before its seccomp filter forbids it to make processes:

    network child --SCM_RIGHTS: one end of a new socketpair--> launcher
    launcher --fork--> worker: reads one request frame on that socket, makes the
    call, writes one frame of the call's result type, exits (the calls and their
    results: net/calls.py).

The launcher only ever sees descriptors (each with the type of the request it will
carry), never a request or a result. It runs at most limits.MAX_WORKERS workers at
once, whatever it is asked: a worker counts until the launcher has reaped it, and a
descriptor that finds every slot taken is answered REFUSED, which the network child
turns into a transient failure. A new worker first arms a kernel timer that SIGKILLs
it WORKER_IO and WORKER_KILL_MARGIN after its call's deadline (net/calls.py), so that it
ends even if its call escapes its own bound (net/deadline.py); the launcher itself may
signal no process but its own (pizauth/sandbox.py).
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
from pizauth.ipc import MsgType, TokenOutcome
from pizauth.net import deadline
from pizauth.net.calls import CALLS
from pizauth.process import harden, set_title
from pizauth.timeouts import WORKER_IO, WORKER_KILL_MARGIN, WORKER_SLOT_WAIT

log = logging.getLogger("pizauth")

MAX_WORKERS = limits.MAX_WORKERS
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
    """Seconds after its start that a worker told to run `kind` is killed: its call's
    deadline (net/calls.py), WORKER_IO to read its request and write its answer, and
    WORKER_KILL_MARGIN; the longest deadline when the network child named no request
    type we know."""
    try:
        limit = CALLS[MsgType(kind)].deadline
    except (ValueError, KeyError):
        limit = max(call.deadline for call in CALLS.values())
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
        """Run `request` (a frame of a request type in calls.CALLS) in a new worker.

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
    paths = sandbox.confine_launcher()
    serve_launcher(sock, paths)


def serve_launcher(sock: socket.socket, paths: list[str]) -> None:  # pragma: no cover - forked
    """Start a worker on each descriptor received on `sock`, never more than MAX_WORKERS
    at once, until the network child closes it. `paths` is what a worker may read."""
    workers: set[int] = set()
    # Set when a descriptor was refused, until a worker is reaped: a flood is refused at
    # once, not ADMIT_WAIT per descriptor, so that it cannot hold up the requests after it.
    full = False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        _reap(workers)
        # Wake up at least once a second to reap.
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
                _start_worker(sock, fd, data[0], workers, paths)
            else:
                if not full:
                    log.warning("every token request worker slot is taken; refusing requests")
                full = True
                _answer(fd, REFUSED)


def _reap(workers: set[int]) -> None:  # pragma: no cover - forked
    """Collect the workers that have ended; say so of one its filter killed."""
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            return
        if pid == 0:
            return
        workers.discard(pid)
        if sandbox.killed_by_filter(status):
            log.error("%s", sandbox.killed_message("network worker", pid))


def _make_room(workers: set[int], wait: float) -> bool:  # pragma: no cover - forked
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
    launcher: socket.socket, fd: int, kind: int, workers: set[int], paths: list[str]
) -> None:  # pragma: no cover - forked
    try:
        pid = os.fork()
    except OSError as e:
        log.error("cannot start a token request worker: %s", e)
        _answer(fd, REFUSED)  # nothing was sent: the request may be tried again
        return
    if pid == 0:
        try:
            # First of all: whatever the worker does from here on, it ends in time.
            deadline.kill_self_after(kill_after(kind))
            launcher.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _worker(socket.socket(fileno=fd), paths)
        except Exception as e:  # noqa: BLE001 - the network child sees no answer
            # The type only: an exception raised mid-request might quote what it carried.
            log.warning("token request worker failed: %s", type(e).__name__)
        finally:
            os._exit(0)
    workers.add(pid)
    _answer(fd, STARTED)


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
    call = CALLS.get(msg.type)
    if call is None:
        raise ipc.ProtocolError(f"{msg.type.name} is not a provider request")
    result: ipc.Wire
    with requests.Session() as session:
        try:
            # Each call bounds itself more tightly (net/tokenclient.py); this is the whole
            # request's bound, which the kernel timer armed at fork backs up.
            with deadline.within(call.deadline):
                result = call.handler(session, call.request.decode(msg))
        except deadline.DeadlineExceeded:
            # Reported as when the worker does not answer: a code may have been sent.
            result = call.failure(call.lost, "timed out waiting for the provider")
        except Exception as e:  # noqa: BLE001 - every request gets an answer
            log.warning("token request failed: %s", type(e).__name__)
            result = call.failure(TokenOutcome.PERMANENT, "invalid response received")
    conn.settimeout(WORKER_IO)
    conn.sendall(result.encode(msg.request_id))
