"""Framing between pizauth's processes: exact sizes, bounded, never a stray exception."""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pizauth import ipc, limits, runtime
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
        ipc.encode(
            MsgType.NET_EXCHANGE,
            3,
            [b"uri", b"id", b"1", b"s", b"c", b"v", b"r", b"client_secret_post"],
        )
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
    channel = runtime.CallChannel(child)

    def answer_in_reverse_order() -> None:
        reader = ipc.FrameReader()
        requests = [ipc.decode(ipc.recv_frame(parent, reader)) for _ in range(2)]
        for req in reversed(requests):
            name = ipc.CmdRevoke.decode(req).account
            parent.sendall(ipc.CmdReply(b"for " + name.encode()).encode(req.request_id))

    def pump() -> None:
        # The frame is wiped once handled: what the caller keeps is a copy.
        handlers = {MsgType.CMD_REPLY: lambda rid, reply: channel.deliver(rid, bytes(reply.text))}
        channel.serve(handlers, "test")

    threading.Thread(target=answer_in_reverse_order, daemon=True).start()
    threading.Thread(target=pump, daemon=True).start()
    results: dict[str, bytes] = {}

    def call(name: str) -> None:
        reply = channel.call(ipc.CmdRevoke(name), timeout=5)
        assert reply is not None
        results[name] = reply

    threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"a": b"for a", "b": b"for b"}
    parent.close()
    child.close()


def test_serve_stops_on_a_message_not_for_this_process() -> None:
    child, parent = socket.socketpair()
    channel = runtime.CallChannel(child)
    parent.sendall(ipc.encode(MsgType.NET_EXCHANGE, 1, [b""] * 8))  # not for this child
    handled: list[object] = []
    channel.serve({MsgType.CMD_REPLY: lambda rid, msg: handled.append(msg)}, "command child")
    assert handled == []
    parent.close()
    child.close()


# -- typed messages ----------------------------------------------------------------------------

EXAMPLES: list[ipc.Wire] = [
    ipc.CmdReady(),
    ipc.CmdShow(True, "naïve account"),
    ipc.CmdRefresh(False, "x"),
    ipc.CmdRevoke("a b:c"),
    ipc.CmdStatus(),
    ipc.CmdInfo(),
    ipc.CmdReload(),
    ipc.CmdShutdown(),
    ipc.CmdDump(),
    ipc.CmdRestore(b"\0dump\xff"),
    ipc.CmdReply(b"access_token:abc"),
    ipc.NetReady("-----BEGIN PUBLIC KEY-----", "ab:cd"),
    ipc.NetCallback("http", "localhost", 8080, "/", False, (("state", "s"), ("code", ""))),
    ipc.NetTokenResult(ipc.TokenOutcome.TRANSIENT, "HTTP code 503"),
    ipc.NetTokenResult(ipc.TokenOutcome.OK, "", b"at", 3600, ipc.RefreshKind.STRING, b"rt"),
    ipc.CallbackVerdict(200, "page"),
    ipc.NetExchange("https://t/", "cid", b"secret", "code", b"verifier", "http://localhost/"),
    ipc.NetRefresh("https://t/", "cid", None, b"rt"),
    ipc.NetDeviceAuth("https://d/", "cid", b"secret", "mail offline_access", "client_secret_post"),
    ipc.NetDevicePoll("https://t/", "cid", None, b"device-code", "client_secret_basic"),
    ipc.NetDeviceAuthResult(
        ipc.TokenOutcome.OK, "", "", b"dc", "ABCD-EFGH", "https://v/", "https://v/?c=1", 600, 5
    ),
    ipc.NetRefresh("https://t/", "cid", b"s", b"rt", "client_secret_basic"),
    ipc.NetMetadata("https://issuer.example/tenant"),
    ipc.NetMetadataResult(ipc.TokenOutcome.OK, "", "https://a/", "https://t/", "", "https://r/"),
    ipc.NetMetadataResult(ipc.TokenOutcome.TRANSIENT, "HTTP code 503"),
    ipc.NetRevoke("https://r/", "cid", b"s", b"rt", "refresh_token", "client_secret_basic"),
    ipc.NetRevoke("https://r/", "cid", None, b"at", "access_token"),
    ipc.NetRevokeResult(ipc.TokenOutcome.PERMANENT, "HTTP code 400", "invalid_client"),
]


def test_unknown_auth_method_or_hint_is_a_protocol_error() -> None:
    bad_method = ipc.NetRefresh("u", "c", None, b"rt", "none").encode(1)
    with pytest.raises(ipc.ProtocolError):
        ipc.decode_as(ipc.decode(bad_method))
    bad_hint = ipc.NetRevoke("u", "c", None, b"t", "id_token").encode(1)
    with pytest.raises(ipc.ProtocolError):
        ipc.decode_as(ipc.decode(bad_hint))


def test_failed_metadata_result_carries_no_endpoints() -> None:
    frame = ipc.NetMetadataResult(ipc.TokenOutcome.PERMANENT, "bad", "https://evil/").encode(1)
    with pytest.raises(ipc.ProtocolError):
        ipc.decode_as(ipc.decode(frame))


def test_every_message_type_has_a_class_and_an_example() -> None:
    assert set(ipc.MESSAGES) == set(MsgType)
    assert {type(m) for m in EXAMPLES} == set(ipc.MESSAGES.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_typed_messages_round_trip(message: ipc.Wire) -> None:
    msg = ipc.decode(message.encode(9))
    assert (msg.type, msg.request_id) == (message.TYPE, 9)
    back = ipc.decode_as(msg)
    assert type(back) is type(message)
    assert [bytes(f) for f in back.fields()] == [bytes(f) for f in message.fields()]


def test_secret_fields_are_views_of_the_frame_never_str() -> None:
    frame = ipc.NetRefresh("u", "c", b"s3cret", b"rt-1").encode(1)
    refresh = ipc.NetRefresh.decode(ipc.decode(frame))
    assert isinstance(refresh.refresh_token, memoryview)
    assert isinstance(refresh.client_secret, memoryview)
    ipc.wipe(frame)
    assert bytes(refresh.refresh_token) == bytes(4)  # wiping the frame wipes the secret


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_field_over_its_limit_is_a_protocol_error(message: ipc.Wire) -> None:
    fields = [bytes(f) for f in message.fields()]
    for i, limit in enumerate(message.LIMITS):
        fat = list(fields)
        fat[i] = b"1" * (limit + 1)
        if ipc.HEADER_SIZE + sum(4 + len(f) for f in fat) > ipc.MAX_MESSAGE:
            continue  # the framing refuses it already
        msg = ipc.decode(ipc.encode(message.TYPE, 1, fat))
        with pytest.raises(ipc.ProtocolError, match="over its limit"):
            ipc.decode_as(msg)


def test_sender_refuses_a_field_over_its_limit() -> None:
    token = b"t" * (limits.MAX_TOKEN + 1)
    with pytest.raises(ipc.ProtocolError):
        ipc.NetRefresh("u", "c", None, token).encode(1)
    with pytest.raises(ipc.ProtocolError):
        ipc.NetTokenResult(ipc.TokenOutcome.OK, "", token).encode(1)


def test_oversized_net_ready_public_key_is_refused() -> None:
    huge = "k" * (limits.MAX_PUBLIC_KEY + 1)
    frame = ipc.encode(MsgType.NET_READY, 0, [huge.encode(), b"fp"])
    with pytest.raises(ipc.ProtocolError):
        ipc.NetReady.decode(ipc.decode(frame))


# Each message's size limits, field by field, as the protocol has them (docs/protocol.md):
# what the declarations in ipc.py must add up to.
SECRET = limits.MAX_CLIENT_SECRET
CLIENT = (limits.MAX_URI, limits.MAX_CLIENT_ID, 1, SECRET)
RESULT = (len("permanent"), limits.MAX_RESULT_MESSAGE)
SECONDS = len(str(limits.MAX_SECONDS))
RETRY = len(str(ipc.MAX_RETRY_AFTER))
METHOD = len("client_secret_basic")
WIRE_LIMITS: dict[type[ipc.Wire], tuple[int, ...]] = {
    ipc.CmdReady: (),
    ipc.CmdShow: (1, limits.MAX_ACCOUNT_NAME),
    ipc.CmdRefresh: (1, limits.MAX_ACCOUNT_NAME),
    ipc.CmdRevoke: (limits.MAX_ACCOUNT_NAME,),
    ipc.CmdStatus: (),
    ipc.CmdInfo: (),
    ipc.CmdReload: (),
    ipc.CmdShutdown: (),
    ipc.CmdDump: (),
    ipc.CmdRestore: (ipc.MAX_MESSAGE - 1024,),
    ipc.CmdReply: (ipc.MAX_MESSAGE - ipc.HEADER_SIZE - 4,),
    ipc.NetReady: (limits.MAX_PUBLIC_KEY, limits.MAX_FINGERPRINT),
    ipc.NetCallback: (
        5,
        limits.MAX_REDIRECT_REQUEST,
        5,
        limits.MAX_REDIRECT_REQUEST,
        1,
        5 * limits.MAX_REDIRECT_REQUEST,
    ),
    ipc.NetTokenResult: (
        *RESULT,
        limits.MAX_TOKEN,
        SECONDS,
        len("invalid"),
        limits.MAX_TOKEN,
        limits.MAX_ERROR_CODE,
        RETRY,
    ),
    ipc.CallbackVerdict: (3, limits.MAX_PAGE),
    ipc.NetExchange: (
        *CLIENT,
        limits.MAX_AUTH_CODE,
        limits.MAX_CODE_VERIFIER,
        limits.MAX_URI,
        METHOD,
    ),
    ipc.NetRefresh: (*CLIENT, limits.MAX_TOKEN, METHOD),
    ipc.NetDeviceAuth: (*CLIENT, limits.MAX_URI, METHOD),
    ipc.NetDevicePoll: (*CLIENT, limits.MAX_DEVICE_CODE, METHOD),
    ipc.NetDeviceAuthResult: (
        *RESULT,
        limits.MAX_ERROR_CODE,
        limits.MAX_DEVICE_CODE,
        limits.MAX_PROVIDER_TEXT,
        limits.MAX_URI,
        limits.MAX_URI,
        SECONDS,
        SECONDS,
    ),
    ipc.NetMetadata: (limits.MAX_URI,),
    ipc.NetMetadataResult: (*RESULT, *(limits.MAX_URI,) * 4),
    ipc.NetRevoke: (*CLIENT, limits.MAX_TOKEN, len("refresh_token"), METHOD),
    ipc.NetRevokeResult: (*RESULT, limits.MAX_ERROR_CODE, RETRY),
}


@pytest.mark.parametrize("cls", list(ipc.MESSAGES.values()), ids=lambda c: c.__name__)
def test_declared_fields_give_the_limits_and_field_count(cls: type[ipc.Wire]) -> None:
    declared = [f.name for f in dataclasses.fields(cls)]
    assert [name for name, _ in cls.CODECS] == declared  # every field travels, in order
    assert cls.LIMITS == tuple(n for _, codec in cls.CODECS for n in codec.limits)
    assert cls.LIMITS == WIRE_LIMITS[cls]
    assert ipc.FIELD_COUNTS[cls.TYPE] == len(cls.LIMITS)
    assert "TYPE" not in declared


# Frames as the protocol has always written them (request id 7, pid 0): the declarations
# must keep every byte.
GOLDEN = [
    (
        ipc.NetExchange(
            "https://t/", "cid", b"sec", "code", b"ver", "http://l/", "client_secret_basic"
        ),
        "000000290000006400000007000000000000000a68747470733a2f2f742f0000000363696400000001310000"
        "000373656300000004636f64650000000376657200000009687474703a2f2f6c2f00000013636c69656e74"
        "5f7365637265745f6261736963",
    ),
    (
        ipc.NetRefresh("https://t/", "cid", None, b"rt"),
        "0000002a0000004a00000007000000000000000a68747470733a2f2f742f00000003636964000000013000"
        "00000000000002727400000012636c69656e745f7365637265745f706f7374",
    ),
    (
        ipc.NetTokenResult(ipc.TokenOutcome.OK, "", b"at", 60, ipc.RefreshKind.STRING, b"rt"),
        "000000200000003e0000000700000000000000026f6b000000000000000261740000000236300000000673"
        "7472696e670000000272740000000000000000",
    ),
    (
        ipc.NetRevokeResult(ipc.TokenOutcome.TRANSIENT, "busy", "x", 30),
        "0000003f000000300000000700000000000000097472616e7369656e74000000046275737900000001780000"
        "00023330",
    ),
    (
        ipc.NetCallback("http", "h", 80, "/", True, (("state", "s"),)),
        "0000001f0000003f000000070000000000000004687474700000000168000000023830000000012f000000"
        "01310000000e0000000573746174650000000173",
    ),
]


@pytest.mark.parametrize(("message", "golden"), GOLDEN, ids=lambda m: type(m).__name__)
def test_frames_are_byte_for_byte_the_protocol(message: ipc.Wire, golden: str) -> None:
    frame = message.encode(7)
    frame[12:16] = bytes(4)  # the sender's pid
    assert bytes(frame) == bytes.fromhex(golden)
    assert ipc.decode_as(ipc.decode(frame)) == ipc.decode_as(ipc.decode(bytes.fromhex(golden)))


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(list(ipc.MESSAGES.values())), st.data())
def test_any_fields_decode_to_a_message_that_round_trips_or_fail_cleanly(
    cls: type[ipc.Wire], data
) -> None:
    """Arbitrary bytes in every field (some of them the words and numbers the fields
    expect): the typed decoder gives a message or a ProtocolError, nothing else; a message
    it gives encodes within its limits and decodes to the same fields again."""
    words = st.sampled_from(
        [b"", b"0", b"1", b"60", b"ok", b"transient", b"permanent", b"string", b"absent"]
        + [b"client_secret_post", b"refresh_token", b"https://x/", b"\xff", b"05"]
    )
    fields = [data.draw(words | st.binary(max_size=min(limit + 1, 40))) for limit in cls.LIMITS]
    frame = ipc.encode(cls.TYPE, 3, fields)
    try:
        message = ipc.decode_as(ipc.decode(frame))
    except ipc.ProtocolError:
        return
    assert type(message) is cls
    again = ipc.decode_as(ipc.decode(message.encode(3)))
    assert [bytes(f) for f in again.fields()] == [bytes(f) for f in message.fields()]


@ipc.message
class _Marked(ipc.Wire):
    """A message class with a ClassVar besides TYPE: neither is a wire field."""

    TYPE = ipc.MsgType.CMD_REVOKE
    SECRET: ClassVar[bool] = True
    account: str = ipc.wire(ipc.ACCOUNT)


def test_a_class_variable_is_not_a_wire_field() -> None:
    assert _Marked.SECRET is True
    assert _Marked.LIMITS == ipc.CmdRevoke.LIMITS
    assert bytes(_Marked("a").encode(1)) == bytes(ipc.CmdRevoke("a").encode(1))


def test_a_field_without_a_codec_is_refused() -> None:
    with pytest.raises(TypeError, match="wire"):

        @ipc.message
        class _Bare(ipc.Wire):
            TYPE = ipc.MsgType.CMD_REVOKE
            account: str


def test_every_message_fits_a_frame_at_its_limits() -> None:
    for cls in ipc.MESSAGES.values():
        size = ipc.HEADER_SIZE + sum(4 + n for n in cls.LIMITS)
        assert size <= ipc.MAX_MESSAGE, cls.__name__


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([b"maybe", b"", b"", b"", b"absent", b"", b"", b""], "bad outcome"),
        ([b"ok", b"", b"", b"60", b"absent", b"", b"", b""], "ok without a token"),
        ([b"ok", b"", b"at", b"soon", b"absent", b"", b"", b""], "expires_in not digits"),
        ([b"ok", b"", b"at", b"-1", b"absent", b"", b"", b""], "negative expires_in"),
        ([b"ok", b"", b"at", b"9" * 12, b"absent", b"", b"", b""], "expires_in over its limit"),
        ([b"ok", b"", b"at", b"60", b"sometimes", b"", b"", b""], "bad refresh kind"),
    ],
)
def test_bad_token_results_are_protocol_errors(fields: list[bytes], why: str) -> None:
    msg = ipc.decode(ipc.encode(MsgType.NET_TOKEN_RESULT, 1, fields))
    with pytest.raises(ipc.ProtocolError):
        ipc.NetTokenResult.decode(msg)


def test_enums_travel_as_their_words() -> None:
    assert ipc.TokenEvent.NEW == "token_new"
    assert [e.value for e in ipc.TokenOutcome] == ["ok", "transient", "permanent"]
    assert [k.value for k in ipc.RefreshKind] == ["absent", "string", "invalid"]


def test_cut_keeps_text_within_its_limit_on_character_boundaries() -> None:
    assert ipc.cut("short", 10) == "short"
    cut = ipc.cut("é" * 100, 51)
    assert len(cut.encode()) <= 51 and cut.endswith("...")


# -- the runtime -------------------------------------------------------------------------------


def test_request_ids_wrap_and_skip_ids_in_use() -> None:
    ids = runtime.RequestIds()
    ids._next = 0xFFFFFFFE
    assert [ids.allocate() for _ in range(3)] == [0xFFFFFFFE, 0xFFFFFFFF, 1]
    assert ids.allocate(in_use={2, 3}) == 4


def test_unknown_type_for_a_receiver_is_a_protocol_error() -> None:
    with pytest.raises(ipc.ProtocolError, match="not for the parent"):
        runtime.dispatch({}, ipc.CmdStatus().encode(1), "parent")


def test_channel_outbox_is_bounded_and_wipes_secrets() -> None:
    ours, theirs = socket.socketpair()
    pending: list[bool] = []
    channel = runtime.Channel(ours, pending.append, max_outbox=256 * 1024)
    secret = bytearray(b"s" * 65536)
    with pytest.raises(runtime.OutboxFull):
        while True:  # the peer never reads
            channel.send(bytearray(b"x" * 65536))
    assert channel.queued <= 256 * 1024 and pending[-1] is True
    with pytest.raises(runtime.OutboxFull):
        channel.send(secret, secret=True)
    assert not any(secret)  # refused, yet wiped
    channel.close()
    theirs.close()


def test_channel_reads_a_bounded_number_of_frames_per_turn() -> None:
    ours, theirs = socket.socketpair()
    channel = runtime.Channel(ours, lambda pending: None)
    theirs.sendall(b"".join(ipc.CmdStatus().encode(i) for i in range(1, 101)))
    frames = channel.read(max_frames=10)
    assert frames is not None and len(frames) == 10
    rest = channel.read(max_frames=1000)
    assert rest is not None and len(rest) == 90
    channel.close()
    theirs.close()
