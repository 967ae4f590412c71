"""The parent's requests to the network child (runtime.Calls): one request-id space and
one table of requests in flight for every module that asks. A result for no request in
flight, or of another type than its request expects, is refused there and drops the
child; when the child is lost each request's on_lost runs once; a message goes out
secret or not by its type."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_hostile import no_internal_errors
from token_states import put

from pizauth import config, ipc, runtime
from pizauth.ipc import MsgType, TokenOutcome
from pizauth.priv.parent import NET_RESULTS, Parent, Sockets
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, DevicePending

CONF = (
    'account "r" { auth_uri = "http://127.0.0.1:9/auth"; token_uri = "http://127.0.0.1:9/t";'
    ' revoke_uri = "http://127.0.0.1:9/revoke"; client_id = "c"; client_secret = "s3cret"; }\n'
    'account "d" { auth_flow = "device"; device_auth_uri = "http://127.0.0.1:9/device";'
    ' token_uri = "http://127.0.0.1:9/t"; client_id = "c"; }\n'
    'account "i" { issuer = "http://127.0.0.1:9"; client_id = "c"; }\n'
)

# A result of each type, for any request.
RESULTS: dict[MsgType, ipc.Wire] = {
    MsgType.NET_TOKEN_RESULT: ipc.NetTokenResult(TokenOutcome.PERMANENT, "no"),
    MsgType.NET_DEVICE_AUTH_RESULT: ipc.NetDeviceAuthResult(TokenOutcome.PERMANENT, "no"),
    MsgType.NET_METADATA_RESULT: ipc.NetMetadataResult(TokenOutcome.PERMANENT, "no"),
    MsgType.NET_REVOKE_RESULT: ipc.NetRevokeResult(TokenOutcome.PERMANENT, "no"),
}


class Recorded:
    """What the parent queued for its children, and which children it dropped."""

    def __init__(self) -> None:
        self.frames: list[tuple[ipc.Message, bool]] = []  # decoded, and sent as secret
        self.dropped: list[str] = []

    def sent(self, msg_type: MsgType) -> list[tuple[int, bool]]:
        """(request id, secret) of each frame of `msg_type`."""
        return [(m.request_id, secret) for m, secret in self.frames if m.type is msg_type]

    def request_id(self, msg_type: MsgType) -> int:
        [(request_id, _)] = self.sent(msg_type)
        return request_id

    def replies(self) -> list[str]:
        return [bytes(m.fields[0]).decode() for m, _ in self.frames if m.type is MsgType.CMD_REPLY]


@contextlib.contextmanager
def recorded_parent(tmp_path: Path, conf: str, **options: Any) -> Iterator[tuple[Parent, Recorded]]:
    """A Parent for `conf` whose children never start: what it sends them is recorded,
    and dropping one is recorded rather than done. `options` go to Parent (clock=)."""
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(tmp_path / "sock"))
    p = Parent(
        config.parse(conf), "unused", Sockets(control, None, None), [], lambda _: None, **options
    )
    seen = Recorded()
    for child in (p.cmd, p.net):

        def send(frame: bytearray, secret: bool = False) -> None:
            seen.frames.append((ipc.decode(bytearray(frame)), secret))

        child.send = send  # type: ignore[method-assign]
        child.drop = lambda child=child: seen.dropped.append(child.name)  # type: ignore[method-assign]
    try:
        with no_internal_errors():
            yield p, seen
    finally:
        p.table.wipe_all()
        p.revoker.wipe_all()
        control.close()


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[tuple[Parent, Recorded]]:
    with recorded_parent(tmp_path, CONF) as (p, seen):
        yield p, seen


def show(p: Parent, name: str, request_id: int) -> None:
    p.cmd.on_frame(ipc.CmdShow(True, name).encode(request_id))


def refresh(p: Parent, name: str) -> Active:
    now = instant()
    entry = p.table.entries[name]
    put(p.table, name, Active(Secret(b"at"), now, now - 1, Secret(b"rt")))
    p.refresher.start_refresh(entry, now)
    assert isinstance(entry.state, Active)
    return entry.state


def answer(p: Parent, result: ipc.Wire, request_id: int) -> None:
    p.net.on_frame(result.encode(request_id))


# -- at the parent ----------------------------------------------------------------------------


def test_each_message_goes_out_secret_or_not_by_its_type(parent) -> None:  # type: ignore[no-untyped-def]
    p, seen = parent
    refresh(p, "r")
    show(p, "d", 1)  # a device authorization
    show(p, "i", 2)  # the issuer's metadata first
    p.revoker.revoke(p.config.account("r"), Secret(b"rt-old"), "refresh_token")
    p.verdict(3, 404)
    p.cmd.on_frame(ipc.CmdStatus().encode(4))
    secret = {m.type: s for m, s in seen.frames}
    assert secret == {
        MsgType.NET_REFRESH: True,
        MsgType.NET_DEVICE_AUTH: True,
        MsgType.NET_REVOKE: True,
        MsgType.NET_METADATA: False,
        MsgType.NET_CALLBACK_VERDICT: False,
        MsgType.CMD_REPLY: False,  # a status; a token or a dump goes as CmdSecretReply
    }
    assert all(s == ipc.MESSAGES[m.type].SECRET for m, s in seen.frames)
    assert ipc.CmdSecretReply.SECRET and ipc.CmdSecretReply.TYPE is MsgType.CMD_REPLY
    # Every request that carries a client secret, a code or a token is secret by its type.
    assert {cls for cls in NET_RESULTS if cls.SECRET} == {
        ipc.NetExchange,
        ipc.NetRefresh,
        ipc.NetDeviceAuth,
        ipc.NetDevicePoll,
        ipc.NetRevoke,
    }


@pytest.mark.parametrize("result_type", list(RESULTS))
def test_a_result_for_no_request_drops_the_network_child(parent, result_type) -> None:  # type: ignore[no-untyped-def]
    p, seen = parent
    refresh(p, "r")
    answer(p, RESULTS[result_type], 12345)
    assert seen.dropped == ["network"]
    assert len(p.netcalls.pending) == 1  # the refresh still waits for its own result


@pytest.mark.parametrize(
    ("request_type", "wrong"),
    [
        (MsgType.NET_DEVICE_AUTH, MsgType.NET_TOKEN_RESULT),  # once taken as a failed login
        (MsgType.NET_REFRESH, MsgType.NET_DEVICE_AUTH_RESULT),
        (MsgType.NET_REFRESH, MsgType.NET_REVOKE_RESULT),
        (MsgType.NET_METADATA, MsgType.NET_TOKEN_RESULT),
        (MsgType.NET_REVOKE, MsgType.NET_METADATA_RESULT),
    ],
)
def test_a_result_of_another_type_than_its_request_expects_drops_the_network_child(
    parent,  # type: ignore[no-untyped-def]
    request_type: MsgType,
    wrong: MsgType,
) -> None:
    p, seen = parent
    active = refresh(p, "r")
    show(p, "d", 1)
    show(p, "i", 2)
    p.revoker.revoke(p.config.account("r"), Secret(b"rt-old"), "refresh_token")
    before = dict(p.netcalls.pending)
    answer(p, RESULTS[wrong], seen.request_id(request_type))
    assert seen.dropped == ["network"]
    # Refused before anything changed: every request still waits, for its loss now.
    assert p.netcalls.pending == before
    assert active.ongoing_refresh and isinstance(p.table.entries["d"].state, DevicePending)
    assert seen.replies() == [] and p.revoker.sent


def test_on_lost_runs_once_for_each_request_in_flight(parent) -> None:  # type: ignore[no-untyped-def]
    p, seen = parent
    active = refresh(p, "r")
    show(p, "d", 1)
    show(p, "i", 2)
    p.revoker.revoke(p.config.account("r"), Secret(b"rt-old"), "refresh_token")
    ids = [request_id for m, _ in seen.frames if (request_id := m.request_id)]
    assert sorted(p.netcalls.pending) == sorted(ids) and len(ids) == 4  # one id space
    p.net.on_exit()  # the network child exited
    p.net.start = lambda: None  # type: ignore[method-assign]
    p.restart_at["network"] = instant()
    p.tick(instant())  # restarted: the loss is told again, to nobody
    assert p.netcalls.pending == {}
    assert active.consecutive_refresh_fails == 1 and not active.ongoing_refresh
    assert [r.split(":")[0] for r in seen.replies()] == ["error", "error"]  # d and i, once
    [(_, revocation)] = p.revoker.waiting
    assert revocation.attempts == 1 and revocation.last_error == "network process restarted"
    # A result the lost child owed, now come from the new one: refused.
    answer(p, RESULTS[MsgType.NET_TOKEN_RESULT], seen.request_id(MsgType.NET_REFRESH))
    assert seen.dropped == ["network"]


# -- the runtime's calls on their own ---------------------------------------------------------


class Peer:
    """A peer that records what it was asked and answers nothing by itself."""

    def __init__(self) -> None:
        self.asked: list[tuple[type[ipc.Wire], int]] = []
        self.calls = runtime.Calls(self.post, NET_RESULTS)
        self.events: list[tuple[str, Any]] = []

    def post(self, message: ipc.Wire, request_id: int) -> None:
        ipc.wipe(message.encode(request_id))  # over a limit: ProtocolError, as a channel's
        self.asked.append((type(message), request_id))

    def call(self, name: str, message: ipc.Wire | None = None) -> int:
        return self.calls.call(
            message or ipc.NetMetadata(name),
            lambda result: self.events.append((name, result)),
            lambda: self.events.append((name, "lost")),
        )


def test_calls_refuse_unknown_ids_and_mismatched_types() -> None:
    peer = Peer()
    request_id = peer.call("a")
    with pytest.raises(ipc.ProtocolError, match="unknown request"):
        peer.calls.result(request_id + 1, RESULTS[MsgType.NET_METADATA_RESULT])
    with pytest.raises(ipc.ProtocolError, match="NET_METADATA"):
        peer.calls.result(request_id, RESULTS[MsgType.NET_TOKEN_RESULT])
    assert peer.events == [] and list(peer.calls.pending) == [request_id]
    peer.calls.result(request_id, RESULTS[MsgType.NET_METADATA_RESULT])
    assert peer.events == [("a", RESULTS[MsgType.NET_METADATA_RESULT])]
    with pytest.raises(ipc.ProtocolError, match="unknown request"):  # answered once
        peer.calls.result(request_id, RESULTS[MsgType.NET_METADATA_RESULT])


def test_calls_lost_runs_each_on_lost_once_in_order() -> None:
    peer = Peer()
    first, second = peer.call("a"), peer.call("b")
    assert first != second
    peer.calls.lost()
    peer.calls.lost()
    assert peer.events == [("a", "lost"), ("b", "lost")]
    assert peer.calls.pending == {}
    with pytest.raises(ipc.ProtocolError):
        peer.calls.result(first, RESULTS[MsgType.NET_METADATA_RESULT])


def test_a_result_its_receiver_refuses_stays_pending_until_lost() -> None:
    peer = Peer()

    def refuse(result: object) -> None:
        raise ipc.ProtocolError("a lie")

    request_id = peer.calls.call(ipc.NetMetadata("x"), refuse, lambda: peer.events.append("lost"))
    with pytest.raises(ipc.ProtocolError, match="a lie"):
        peer.calls.result(request_id, RESULTS[MsgType.NET_METADATA_RESULT])
    peer.calls.lost()
    assert peer.events == ["lost"]


def test_a_request_that_cannot_be_encoded_is_never_pending() -> None:
    peer = Peer()
    with pytest.raises(ipc.ProtocolError):
        peer.call("a", ipc.NetMetadata("https://x/" + "a" * 100_000))
    assert peer.calls.pending == {} and peer.asked == []
    peer.calls.lost()
    assert peer.events == []
