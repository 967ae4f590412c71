"""Control-socket requests as the command child parses them (spec §3, gaps 14, 15)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from pizauth import command
from pizauth.command import Reply, parse_request, read_request
from pizauth.ipc import MsgType


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
    assert parse_request(raw) == (msg_type, [])


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
    assert parse_request(raw) == (msg_type, [withurl, name])


@pytest.mark.parametrize("raw", [b"showtoken:withurl", b"showtoken:", b"refresh:withouturl"])
def test_showtoken_without_space_gets_an_error_reply(raw):
    # gap 14: the original writes nothing; we answer with an error the client can print.
    text = reply_text(raw)
    assert text is not None and text.startswith("error:")


@pytest.mark.parametrize(
    ("raw", "name"),
    [(b"revoke:acct", b"acct"), (b"revoke:a b:c", b"a b:c"), (b"revoke:", b"")],
)
def test_revoke_takes_whole_args_as_name(raw, name):
    assert parse_request(raw) == (MsgType.CMD_REVOKE, [name])


def test_restore_passes_binary_through():
    blob = bytes(range(256)) + b":\x00:\xff"
    msg_type, fields = parse_request(b"restore:" + blob)
    assert msg_type == MsgType.CMD_RESTORE
    assert [bytes(f) for f in fields] == [blob]
    assert parse_request(b"restore:") == (MsgType.CMD_RESTORE, [b""])


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
    assert parse_request(b"revoke::x") == (MsgType.CMD_REVOKE, [b":x"])


# -- read_request ----------------------------------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_read_request_until_half_close(pair):
    client, server = pair
    client.sendall(b"showtoken:withurl acct")
    client.shutdown(socket.SHUT_WR)
    assert read_request(server) == b"showtoken:withurl acct"


def test_read_request_empty(pair):
    client, server = pair
    client.shutdown(socket.SHUT_WR)
    assert read_request(server) == b""


def test_read_request_accepts_exactly_max(pair, monkeypatch):
    monkeypatch.setattr(command, "MAX_REQUEST", 64)
    client, server = pair
    client.sendall(b"r" * 64)
    client.shutdown(socket.SHUT_WR)
    assert read_request(server) == b"r" * 64


def test_read_request_oversized(pair, monkeypatch):
    monkeypatch.setattr(command, "MAX_REQUEST", 64)
    client, server = pair
    client.sendall(b"restore:" + b"x" * 100)
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(Reply) as info:
        read_request(server)
    assert info.value.text == "error:Request too large"


def test_read_request_oversized_and_never_half_closed(pair, monkeypatch):
    monkeypatch.setattr(command, "MAX_REQUEST", 64)
    monkeypatch.setattr(command, "READ_DEADLINE", 0.2)
    client, server = pair
    client.sendall(b"restore:" + b"x" * 100)
    start = time.monotonic()
    with pytest.raises(Reply) as info:
        read_request(server)
    assert info.value.text == "error:Request too large"
    assert time.monotonic() - start < 2.0


def test_read_request_peer_never_half_closes(pair, monkeypatch):
    monkeypatch.setattr(command, "READ_DEADLINE", 0.2)
    client, server = pair
    client.sendall(b"status:")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        read_request(server)
    assert time.monotonic() - start < 2.0


def test_read_request_deadline_is_overall_not_per_read(pair, monkeypatch):
    """A client trickling a byte at a time must not hold its thread past the deadline."""
    monkeypatch.setattr(command, "READ_DEADLINE", 0.3)
    client, server = pair
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.02):
            try:
                client.send(b"x")
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            read_request(server)
    finally:
        stop.set()
        thread.join()
    assert time.monotonic() - start < 2.0


def test_non_utf8_account_name_gets_error_reply():
    for raw in (b"showtoken:withurl \xff", b"revoke:\xfe"):
        text = reply_text(raw)
        assert text is not None and text.startswith("error:")
