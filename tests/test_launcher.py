"""The network launcher (net/worker.py) against a network child that asks too much: it
never runs more than MAX_WORKERS workers at once, answers a refused request so that the
network child fails it as a transient failure, gives slots back once it has reaped their
workers, and a worker that outlives its deadline is killed.

The test process plays the network child: it forks a real launcher (as the network child
does at start-up) and talks to it over the launcher's socket as a subverted network child
could, with descriptors of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import children_of, wait_for

from pizauth import ipc, limits
from pizauth.ipc import MsgType
from pizauth.net import worker
from pizauth.net.worker import MAX_WORKERS, REFUSED, STARTED, Busy, Launcher
from pizauth.timeouts import WORKER_IO


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    launcher = Launcher(close_in_launcher=[])
    try:
        yield launcher
    finally:
        launcher.sock.close()  # the launcher sees end-of-file and exits; its workers die
        try:
            os.kill(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(launcher.pid, 0)


def ask(launcher: Launcher, count: int, kind: bytes) -> list[socket.socket]:
    """Send `count` worker sockets in one record; our ends."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
    socket.send_fds(launcher.sock, [kind], [theirs.fileno() for _, theirs in pairs])
    for _, theirs in pairs:
        theirs.close()
    return [mine for mine, _ in pairs]


def verdict(end: socket.socket) -> bytes:
    end.settimeout(10)
    return end.recv(1)


def test_the_bound_is_the_documented_one() -> None:
    assert MAX_WORKERS == limits.MAX_WORKERS == 16


def test_a_flood_of_requests_never_runs_more_than_the_bound(launcher: Launcher) -> None:
    # A full record, then one descriptor per record, some naming no request type at all.
    ends = ask(launcher, MAX_WORKERS, bytes([MsgType.NET_REFRESH]))
    for i in range(2 * MAX_WORKERS):
        ends += ask(launcher, 1, b"\xff" if i % 2 else bytes([MsgType.NET_EXCHANGE]))
    verdicts = []
    for end in ends:
        verdicts.append(verdict(end))
        assert len(children_of(launcher.pid)) <= MAX_WORKERS
    assert verdicts == [STARTED] * MAX_WORKERS + [REFUSED] * (2 * MAX_WORKERS)
    # The refused sockets are closed: their requests go nowhere.
    assert all(end.recv(1) == b"" for end in ends[MAX_WORKERS:])
    assert len(children_of(launcher.pid)) == MAX_WORKERS

    # Workers whose request never comes end (end-of-file); once reaped, their slots are free.
    for end in ends:
        end.close()
    wait_for(lambda: not children_of(launcher.pid), 10, "the workers to be reaped")
    again = ask(launcher, MAX_WORKERS, bytes([MsgType.NET_REFRESH]))
    assert [verdict(end) for end in again] == [STARTED] * MAX_WORKERS
    for end in again:
        end.close()


def test_the_network_child_fails_a_refused_request_as_busy(launcher: Launcher) -> None:
    held = ask(launcher, MAX_WORKERS, bytes([MsgType.NET_REFRESH]))
    assert [verdict(end) for end in held] == [STARTED] * MAX_WORKERS
    request = ipc.NetMetadata("https://issuer.example").encode(1)
    start = time.monotonic()
    with pytest.raises(Busy):
        launcher.call(request, MsgType.NET_METADATA)
    # Refused after a short wait for a slot to come free, not after a provider's deadline.
    assert time.monotonic() - start < worker.ADMIT_WAIT + 2
    for end in held:
        end.close()


def test_a_worker_that_outlives_its_deadline_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The launcher is forked from this process: it sees the shorter limit.
    monkeypatch.setattr(worker, "kill_after", lambda kind: 0.5)
    launcher = Launcher(close_in_launcher=[])
    try:
        (end,) = ask(launcher, 1, bytes([MsgType.NET_REFRESH]))
        assert verdict(end) == STARTED
        start = time.monotonic()
        # The worker waits up to WORKER_IO for a request that never comes: killed sooner.
        assert end.recv(1) == b""
        assert time.monotonic() - start < WORKER_IO / 2
        wait_for(lambda: not children_of(launcher.pid), 5, "the killed worker to be reaped")
    finally:
        launcher.sock.close()
        os.waitpid(launcher.pid, 0)


def test_requests_beyond_the_bound_wait_a_bounded_time(
    launcher: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The honest network child queues a request while every slot is busy with a call
    of its own, but not for ever: it fails as Busy (a transient failure) in the end."""
    monkeypatch.setattr(worker, "WORKER_SLOT_WAIT", 0.5)
    for _ in range(MAX_WORKERS):
        assert launcher._slots.acquire(blocking=False)  # sixteen calls under way
    start = time.monotonic()
    with pytest.raises(Busy):
        launcher.call(ipc.NetMetadata("https://issuer.example").encode(1), MsgType.NET_METADATA)
    assert 0.5 <= time.monotonic() - start < 2
