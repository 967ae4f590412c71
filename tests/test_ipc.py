"""Framing between pizauth's processes: exact sizes, bounded, never a stray exception."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pizauth import ipc
from pizauth.ipc import MsgType


def test_round_trip_keeps_type_id_pid_and_fields() -> None:
    frame = ipc.encode(MsgType.CMD_SHOW, 7, [b"1", "naïve account".encode()], pid=42)
    msg = ipc.decode(frame)
    assert msg.type is MsgType.CMD_SHOW
    assert (msg.request_id, msg.pid) == (7, 42)
    assert [bytes(f) for f in msg.fields] == [b"1", "naïve account".encode()]


def test_header_layout_is_network_byte_order() -> None:
    frame = ipc.encode(MsgType.CMD_REVOKE, 0x01020304, [b"ab"], pid=5)
    assert frame[:16] == struct.pack("!IIII", MsgType.CMD_REVOKE, 22, 0x01020304, 5)
    assert frame[16:] == b"\x00\x00\x00\x02ab"


def test_encode_rejects_wrong_field_count() -> None:
    with pytest.raises(ipc.ProtocolError):
        ipc.encode(MsgType.CMD_SHOW, 1, [b"1"])


def test_encode_rejects_oversized_frame() -> None:
    with pytest.raises(ipc.ProtocolError):
        ipc.encode(MsgType.CMD_RESTORE, 1, [bytes(ipc.MAX_MESSAGE)])


def test_largest_frame_fits() -> None:
    payload = bytes(ipc.MAX_MESSAGE - ipc.HEADER_SIZE - 4)
    msg = ipc.decode(ipc.encode(MsgType.CMD_RESTORE, 1, [payload]))
    assert msg.fields[0].nbytes == len(payload)


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"", "short"),
        (struct.pack("!IIII", 999, 16, 0, 0), "unknown type"),
        (struct.pack("!IIII", MsgType.CMD_STATUS, 15, 0, 0), "length below header"),
        (struct.pack("!IIII", MsgType.CMD_STATUS, 17, 0, 0), "length disagrees"),
        (
            struct.pack("!IIII", MsgType.CMD_STATUS, ipc.MAX_MESSAGE + 1, 0, 0),
            "length over maximum",
        ),
        (struct.pack("!IIII", MsgType.CMD_STATUS, 20, 0, 0) + b"\0\0\0\0", "extra field"),
        (struct.pack("!IIII", MsgType.CMD_REVOKE, 16, 0, 0), "missing field"),
        (struct.pack("!IIII", MsgType.CMD_REVOKE, 22, 0, 0) + b"\0\0\0\x09ab", "overrun"),
        (struct.pack("!IIII", MsgType.CMD_REVOKE, 18, 0, 0) + b"\0\0", "truncated length"),
    ],
)
def test_malformed_frames_are_protocol_errors(frame: bytes, reason: str) -> None:
    with pytest.raises(ipc.ProtocolError):
        ipc.decode(frame)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=256))
def test_decoder_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        msg = ipc.decode(data)
    except ipc.ProtocolError:
        return
    assert ipc.HEADER_SIZE <= len(data) <= ipc.MAX_MESSAGE
    assert len(msg.fields) == ipc.FIELD_COUNTS[msg.type]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(list(MsgType)),
    st.integers(0, 2**32 - 1),
    st.data(),
)
def test_any_valid_message_round_trips(msg_type: MsgType, request_id: int, data) -> None:
    fields = data.draw(
        st.lists(
            st.binary(max_size=64),
            min_size=ipc.FIELD_COUNTS[msg_type],
            max_size=ipc.FIELD_COUNTS[msg_type],
        )
    )
    msg = ipc.decode(ipc.encode(msg_type, request_id, fields, pid=1))
    assert (msg.type, msg.request_id) == (msg_type, request_id)
    assert [bytes(f) for f in msg.fields] == fields


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 199))
def test_mutated_frames_decode_or_fail_cleanly(noise: bytes, at: int) -> None:
    frame = bytearray(
        ipc.encode(MsgType.NET_EXCHANGE, 3, [b"uri", b"id", b"1", b"s", b"c", b"v", b"r"])
    )
    at %= len(frame)
    frame[at : at + len(noise)] = noise
    try:
        ipc.decode(frame)
    except ipc.ProtocolError:
        pass


def test_pack_list_round_trip_and_flags() -> None:
    items = [b"state", b"abc", b"", b"x y"]
    assert [bytes(v) for v in ipc.unpack_list(memoryview(ipc.pack_list(items)))] == items
    assert ipc.read_flag(memoryview(ipc.flag(True))) is True
    assert ipc.read_flag(memoryview(ipc.flag(False))) is False
    with pytest.raises(ipc.ProtocolError):
        ipc.read_flag(memoryview(b"yes"))
    with pytest.raises(ipc.ProtocolError):
        ipc.text(memoryview(b"\xff"))


def test_frame_reader_reassembles_frames_split_anywhere() -> None:
    frames = [ipc.encode(MsgType.CMD_REVOKE, i, [b"account %d" % i * (i + 1)]) for i in range(20)]
    stream = b"".join(frames)
    a, b = socket.socketpair()
    a.setblocking(False)
    reader = ipc.FrameReader()
    got: list[bytearray] = []
    for i in range(0, len(stream), 7):  # dribble the stream in 7-byte pieces
        b.sendall(stream[i : i + 7])
        got.extend(reader.read_from(a) or [])
    assert [bytes(f) for f in got] == [bytes(f) for f in frames]
    b.close()
    assert reader.read_from(a) is None  # end of file
    a.close()


def test_frame_reader_rejects_oversized_header_before_reading_payload() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.sendall(struct.pack("!IIII", MsgType.CMD_STATUS, ipc.MAX_MESSAGE * 4, 0, 0))
    with pytest.raises(ipc.ProtocolError):
        ipc.FrameReader().read_from(a)
    a.close()
    b.close()


def test_wipe_zeroes_the_buffer() -> None:
    buf = bytearray(b"secret token")
    ipc.wipe(buf)
    assert buf == bytearray(len(b"secret token"))


def test_channel_call_pairs_reply_with_request() -> None:
    child, parent = socket.socketpair()
    channel = ipc.Channel(child)

    def answer_in_reverse_order() -> None:
        reader = ipc.FrameReader()
        requests = [ipc.decode(ipc.recv_frame(parent, reader)) for _ in range(2)]
        for req in reversed(requests):
            reply = ipc.encode(MsgType.CMD_REPLY, req.request_id, [b"for " + bytes(req.fields[0])])
            parent.sendall(reply)

    def pump() -> None:
        ipc.serve_parent(channel, {MsgType.CMD_REPLY: channel.deliver}, "test")

    threading.Thread(target=answer_in_reverse_order, daemon=True).start()
    threading.Thread(target=pump, daemon=True).start()
    results: dict[str, bytes] = {}

    def call(name: str) -> None:
        reply = channel.call(MsgType.CMD_REVOKE, [name.encode()], timeout=5)
        assert reply is not None
        results[name] = bytes(reply.fields[0])

    threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"a": b"for a", "b": b"for b"}
    parent.close()
    child.close()


def test_serve_parent_stops_on_protocol_error() -> None:
    child, parent = socket.socketpair()
    channel = ipc.Channel(child)
    parent.sendall(ipc.encode(MsgType.NET_EXCHANGE, 1, [b""] * 7))  # not for this child
    handled: list[ipc.Message] = []
    ipc.serve_parent(channel, {MsgType.CMD_REPLY: handled.append}, "command")
    assert handled == []
    parent.close()
    child.close()
