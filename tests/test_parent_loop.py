"""The parent's loop when a child goes away at an awkward moment: nothing crashes the
server, nothing waits for ever, and no answer reaches a client it was not meant for."""

from __future__ import annotations

import selectors
import socket

import pytest
from test_hostile import frame, parent_under_test

from pizauth import ipc
from pizauth.ipc import MsgType
from pizauth.priv.children import Child
from pizauth.priv.parent import REQUEST_ID_SPAN
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active
from pizauth.priv.state.tokenstate import Cause

parent = pytest.fixture(parent_under_test, name="parent")


def replies(sent: list[bytes]) -> list[tuple[int, bytes]]:
    """(request id, reply text) of each CMD_REPLY the parent sent."""
    out = []
    for raw in sent:
        msg = ipc.decode(bytearray(raw))
        if msg.type == MsgType.CMD_REPLY:
            out.append((msg.request_id, bytes(msg.fields[0])))
    return out


def test_a_child_dropped_earlier_in_the_same_turn_is_not_read() -> None:
    # Writing to a child that has died drops it; the same turn of the loop may still
    # report it readable. That must be a no-op, not an AssertionError that ends the
    # server and every token with it.
    sel = selectors.DefaultSelector()
    child = Child(
        "network",
        "pizauth.net",
        {},
        [],
        lambda fd, cb: sel.register(fd, selectors.EVENT_READ, (cb, None)),
        lambda fd: None,
        lambda fd, cb: None,
    )
    assert child.channel is None
    child._readable()  # noqa: SLF001 - what the loop calls for a stale key


def test_the_loop_skips_a_key_an_earlier_callback_unregistered(parent) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = parent
    a, b = socket.socketpair()
    calls: list[str] = []
    p.watch(a.fileno(), lambda: calls.append("read"))
    key = p.sel.get_key(a.fileno())
    p.unwatch(a.fileno())  # as Child.drop does, from the callback of another descriptor
    p._serve(key, selectors.EVENT_READ)  # noqa: SLF001
    assert calls == []
    a.close()
    b.close()


def test_a_late_answer_never_reaches_a_restarted_command_childs_client(parent) -> None:  # type: ignore[no-untyped-def]
    p, _, sent = parent
    p.cmd.on_frame(frame(MsgType.CMD_STATUS, [], request_id=5))
    # On the wire the command child sees its own request id, whatever the parent tags.
    assert [rid for rid, _ in replies(sent)] == [5]
    tagged = p.cmd.incarnation * REQUEST_ID_SPAN + 5
    sent.clear()
    p.cmd.incarnation += 1  # the command child restarted: request id 5 is someone else's now
    p.commands.reply(tagged, "access_token:not-for-you")
    payload = bytearray(b"access_token:secret")
    p.commands.reply_secret(tagged, payload)
    assert sent == []
    assert not any(payload), "an undelivered secret reply must still be wiped"
    # Requests of the new command child are answered as usual.
    p.cmd.on_frame(frame(MsgType.CMD_STATUS, [], request_id=5))
    assert [rid for rid, _ in replies(sent)] == [5]


def test_requests_made_while_the_network_child_is_down_fail_when_it_restarts(parent) -> None:  # type: ignore[no-untyped-def]
    p, _, _ = parent
    now = instant()
    entry = p.table.get("x")
    assert entry is not None
    p.refresher.change(entry, Active(Secret(b"at"), now, now + 3600, Secret(b"rt")), Cause.RESTORE)
    entry = p.table.get("x")
    # The network child has exited (its cleanup ran) and is not restarted yet: a refresh
    # asked for now goes nowhere.
    p.refresher.start_refresh(entry, now)
    assert [c.request for c in p.netcalls.pending.values()] == [ipc.NetRefresh]
    assert isinstance(entry.state, Active) and entry.state.ongoing_refresh
    started: list[str] = []
    p.net.start = lambda: started.append("network")  # type: ignore[method-assign]
    p.restart_at["network"] = now
    p.tick(instant())
    assert started == ["network"]
    # Failed as a transient error: retried after refresh_retry, not stuck "in progress".
    assert p.netcalls.pending == {}
    assert isinstance(entry.state, Active) and not entry.state.ongoing_refresh
