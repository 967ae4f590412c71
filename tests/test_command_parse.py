"""Control-socket requests as the command child parses them
(docs/compatibility.md "Malformed requests")."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from pizauth import ipc
from pizauth.cmd import child as command
from pizauth.cmd.child import CommandChild, Reply, RequestBuffer, parse_request
from pizauth.ipc import MsgType


def parsed(raw: bytes) -> tuple[MsgType, list[bytes]]:
    """The type and wire fields of the message a request becomes."""
    message = parse_request(raw)
    return message.TYPE, [bytes(f) for f in message.fields()]


def reply_text(raw: bytes) -> str | None:
    with pytest.raises(Reply) as info:
        parse_request(raw)
    return info.value.text


# -- parse_request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "msg_type"),
    [
        (b"dump:", MsgType.CMD_DUMP),
        (b"info:", MsgType.CMD_INFO),
        (b"reload:", MsgType.CMD_RELOAD),
        (b"shutdown:", MsgType.CMD_SHUTDOWN),
        (b"status:", MsgType.CMD_STATUS),
    ],
)
def test_commands_without_arguments(raw, msg_type):
    assert parsed(raw) == (msg_type, [])


@pytest.mark.parametrize("name", ["dump", "info", "reload", "shutdown", "status"])
def test_commands_without_arguments_reject_arguments(name):
    assert reply_text(f"{name}:x".encode()) == f"error:Unknown command '{name}'"
    assert reply_text(f"{name}: ".encode()) == f"error:Unknown command '{name}'"


@pytest.mark.parametrize(
    ("raw", "msg_type", "withurl", "name"),
    [
        (b"showtoken:withurl acct", MsgType.CMD_SHOW, b"1", b"acct"),
        (b"showtoken:withouturl acct", MsgType.CMD_SHOW, b"0", b"acct"),
        (b"showtoken:anything acct", MsgType.CMD_SHOW, b"0", b"acct"),
        (b"showtoken:WITHURL acct", MsgType.CMD_SHOW, b"0", b"acct"),
        (b"refresh:withurl acct", MsgType.CMD_REFRESH, b"1", b"acct"),
        (b"refresh:withouturl acct", MsgType.CMD_REFRESH, b"0", b"acct"),
        # the name is everything after the first space: spaces, colons, more spaces
        (b"showtoken:withurl my acct: x ", MsgType.CMD_SHOW, b"1", b"my acct: x "),
        (b"refresh:withurl  lead", MsgType.CMD_REFRESH, b"1", b" lead"),
        (b"showtoken:withurl ", MsgType.CMD_SHOW, b"1", b""),
        ("showtoken:withurl café".encode(), MsgType.CMD_SHOW, b"1", "café".encode()),
    ],
)
def test_showtoken_and_refresh(raw, msg_type, withurl, name):
    assert parsed(raw) == (msg_type, [withurl, name])


@pytest.mark.parametrize("raw", [b"showtoken:withurl", b"showtoken:", b"refresh:withouturl"])
def test_showtoken_without_space_gets_an_error_reply(raw):
    # The original writes nothing; we answer with an error the client can print.
    text = reply_text(raw)
    assert text is not None and text.startswith("error:")


@pytest.mark.parametrize(
    ("raw", "name"),
    [(b"revoke:acct", b"acct"), (b"revoke:a b:c", b"a b:c"), (b"revoke:", b"")],
)
def test_revoke_takes_whole_args_as_name(raw, name):
    assert parsed(raw) == (MsgType.CMD_REVOKE, [name])


def test_restore_passes_binary_through():
    blob = bytes(range(256)) + b":\x00:\xff"
    msg_type, fields = parsed(b"restore:" + blob)
    assert msg_type == MsgType.CMD_RESTORE
    assert [bytes(f) for f in fields] == [blob]
    assert parsed(b"restore:") == (MsgType.CMD_RESTORE, [b""])


def test_empty_request_gets_no_reply(caplog):
    caplog.set_level(logging.WARNING, logger="pizauth")
    assert reply_text(b"") is None
    assert "Syntactically invalid request ''" in caplog.text


def test_request_without_colon_gets_error_reply(caplog):
    caplog.set_level(logging.WARNING, logger="pizauth")
    text = reply_text(b"status")
    assert text is not None and text.startswith("error:")
    assert "Syntactically invalid request 'status'" in caplog.text


def test_non_utf8_request_without_colon_is_logged_as_unrepresentable(caplog):
    caplog.set_level(logging.WARNING, logger="pizauth")
    text = reply_text(b"\xff\xfe")
    assert text is not None and text.startswith("error:")
    assert "Syntactically invalid request '<can't represent as UTF-8>'" in caplog.text


def test_non_utf8_command_gets_error_reply():
    text = reply_text(b"\xffstatus:")
    assert text is not None and text.startswith("error:")
    assert "Unknown command" not in text


@pytest.mark.parametrize(
    ("raw", "cmd"),
    [
        (b"foo:", "foo"),
        (b"foo:bar", "foo"),
        (b":", ""),
        (b"STATUS:", "STATUS"),
        (b"show:withurl x", "show"),
        (b"status :", "status "),
    ],
)
def test_unknown_commands(raw, cmd):
    assert reply_text(raw) == f"error:Unknown command '{cmd}'"


def test_only_first_colon_splits_command():
    assert reply_text(b"dump::") == "error:Unknown command 'dump'"
    assert parsed(b"revoke::x") == (MsgType.CMD_REVOKE, [b":x"])


# -- RequestBuffer ---------------------------------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def read_all(buffer: RequestBuffer, server: socket.socket) -> bytearray:
    result = buffer.read_from(server)
    assert result is not None, "the request should be complete"
    return result


def test_request_until_half_close(pair):
    client, server = pair
    buffer = RequestBuffer()
    client.sendall(b"showtoken:withurl ")
    assert buffer.read_from(server) is None  # not complete until the client half-closes
    client.sendall(b"acct")
    client.shutdown(socket.SHUT_WR)
    assert read_all(buffer, server) == b"showtoken:withurl acct"


def test_request_empty(pair):
    client, server = pair
    client.shutdown(socket.SHUT_WR)
    assert read_all(RequestBuffer(), server) == b""


def test_request_grows_past_its_first_buffer_and_wipes(pair):
    client, server = pair
    data = bytes(range(256)) * 64  # 16 KiB: several doublings
    client.sendall(data)
    client.shutdown(socket.SHUT_WR)
    buffer = RequestBuffer()
    assert read_all(buffer, server) == data
    buffer.wipe()
    assert not any(buffer.buf)


def test_request_accepts_exactly_max(pair, monkeypatch):
    monkeypatch.setattr(command, "MAX_REQUEST", 64)
    client, server = pair
    client.sendall(b"r" * 64)
    client.shutdown(socket.SHUT_WR)
    assert read_all(RequestBuffer(), server) == b"r" * 64


def test_request_oversized_is_drained_then_refused(pair, monkeypatch):
    monkeypatch.setattr(command, "MAX_REQUEST", 64)
    client, server = pair
    buffer = RequestBuffer()
    client.sendall(b"restore:" + b"x" * 100)
    assert buffer.read_from(server) is None  # still reading: the client must hear why
    client.sendall(b"y" * 1000)
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(Reply) as info:
        buffer.read_from(server)
    assert info.value.text == "error:Request too large"


# -- the serving loop ------------------------------------------------------------------------


@pytest.fixture
def serving(tmp_path, monkeypatch):
    """A command child's loop on a real Unix socket, with the test as its parent."""
    monkeypatch.setattr(command, "READ_DEADLINE", 0.3)
    monkeypatch.setattr(command, "REPLY_TIMEOUT", 0.5)
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    ours, theirs = socket.socketpair()
    child = CommandChild(theirs, listener)
    thread = threading.Thread(target=child.run, daemon=True)
    thread.start()
    reader = ipc.FrameReader()
    ready = ipc.decode(ipc.recv_frame(ours, reader))
    assert ready.type == MsgType.CMD_READY
    yield path, ours, reader, (child, thread)
    ours.close()  # the loop ends when its parent goes away
    thread.join(5)
    assert not thread.is_alive()
    listener.close()


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    return s


def test_loop_relays_requests_and_replies(serving):
    path, parent, reader, _ = serving
    clients = [connect(path) for _ in range(3)]
    for i, c in enumerate(clients):
        c.sendall(b"showtoken:withurl acct%d" % i)
        c.shutdown(socket.SHUT_WR)
    requests = [ipc.decode(ipc.recv_frame(parent, reader)) for _ in clients]
    for req in reversed(requests):  # answered in any order
        text = b"access_token:for " + bytes(req.fields[1])
        parent.sendall(ipc.encode(MsgType.CMD_REPLY, req.request_id, [text]))
    for i, c in enumerate(clients):
        assert c.makefile("rb").read() == b"access_token:for acct%d" % i
        c.close()


def test_loop_stuck_clients_delay_nobody_and_are_closed(serving):
    path, parent, reader, _ = serving
    stuck = connect(path)
    stuck.sendall(b"showtoken:withurl ac")  # and never finishes
    quick = connect(path)
    quick.sendall(b"status:")
    quick.shutdown(socket.SHUT_WR)
    req = ipc.decode(ipc.recv_frame(parent, reader))
    assert req.type == MsgType.CMD_STATUS
    parent.sendall(ipc.encode(MsgType.CMD_REPLY, req.request_id, [b"ok:fine"]))
    assert quick.makefile("rb").read() == b"ok:fine"
    started = time.monotonic()
    assert stuck.recv(100) == b""  # closed at its deadline, unanswered
    assert time.monotonic() - started < 2.0


def test_loop_a_trickling_client_meets_an_overall_deadline(serving):
    path, _, _, _ = serving
    trickler = connect(path)
    started = time.monotonic()
    with pytest.raises(OSError):
        while time.monotonic() - started < 3:
            trickler.send(b"x")
            time.sleep(0.02)  # the client's own pace, not a wait for the server
    assert time.monotonic() - started < 2.0


def test_loop_answers_itself_when_the_parent_does_not(serving):
    path, parent, reader, _ = serving
    c = connect(path)
    c.sendall(b"status:")
    c.shutdown(socket.SHUT_WR)
    assert ipc.decode(ipc.recv_frame(parent, reader)).type == MsgType.CMD_STATUS
    assert c.makefile("rb").read() == b"error:pizauth server did not answer in time"


def test_non_utf8_account_name_gets_error_reply():
    for raw in (b"showtoken:withurl \xff", b"revoke:\xfe"):
        text = reply_text(raw)
        assert text is not None and text.startswith("error:")


def test_loop_sleeps_once_every_client_is_done(serving):
    """Finished clients leave no deadline behind that would wake the idle loop."""
    path, parent, reader, (child, thread) = serving
    c = connect(path)
    c.sendall(b"status:")
    c.shutdown(socket.SHUT_WR)
    req = ipc.decode(ipc.recv_frame(parent, reader))
    parent.sendall(ipc.encode(MsgType.CMD_REPLY, req.request_id, [b"ok:fine"]))
    assert c.makefile("rb").read() == b"ok:fine"
    c.close()
    parent.close()  # end the loop, so its state can be read without racing it
    thread.join(5)
    assert child.clients == 0
    assert child.next_deadline() is None
