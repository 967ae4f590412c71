"""Framed messages between pizauth's processes (DESIGN.md, after OpenBSD's imsg).

A frame is a 16-byte header -- type, total length, request id, sender pid, all
u32 in network byte order -- followed by the payload: a sequence of fields,
each a u32 length and that many bytes. Every message type has an exact field
count; anything else is a ProtocolError, which ends the peer channel and never
the process that received it.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview

HEADER = struct.Struct("!IIII")
FIELD_LEN = struct.Struct("!I")
HEADER_SIZE = HEADER.size

# The largest frame is a `dump` reply or a `restore` request: per account two
# URIs, a client id and secret and two tokens. Real access tokens (Azure JWTs)
# reach 4 KiB, so an account is at most ~12 KiB; 1 MiB fits more than 80 such
# accounts with room to spare, yet bounds what a peer can make us buffer.
MAX_MESSAGE = 1024 * 1024


class ProtocolError(Exception):
    """A frame that breaks the framing rules; the channel it came from is dropped."""


class MsgType(enum.IntEnum):
    # command child -> parent: one per client request; parent answers CMD_REPLY
    CMD_READY = 1
    CMD_SHOW = 2
    CMD_REFRESH = 3
    CMD_REVOKE = 4
    CMD_STATUS = 5
    CMD_INFO = 6
    CMD_RELOAD = 7
    CMD_SHUTDOWN = 8
    CMD_DUMP = 9
    CMD_RESTORE = 10
    # parent -> command child
    CMD_REPLY = 20
    # network child -> parent
    NET_READY = 30
    NET_CALLBACK = 31
    NET_TOKEN_RESULT = 32
    # parent -> network child
    NET_CALLBACK_VERDICT = 40
    NET_EXCHANGE = 41
    NET_REFRESH = 42


# Exact field count of each message type (IMSG_SIZE_CHECK).
FIELD_COUNTS: dict[MsgType, int] = {
    MsgType.CMD_READY: 0,
    MsgType.CMD_SHOW: 2,  # withurl (b"1"/b"0"), account name
    MsgType.CMD_REFRESH: 2,  # withurl, account name
    MsgType.CMD_REVOKE: 1,  # account name
    MsgType.CMD_STATUS: 0,
    MsgType.CMD_INFO: 0,
    MsgType.CMD_RELOAD: 0,
    MsgType.CMD_SHUTDOWN: 0,
    MsgType.CMD_DUMP: 0,
    MsgType.CMD_RESTORE: 1,  # the dump bytes
    MsgType.CMD_REPLY: 1,  # the reply exactly as written to the client
    MsgType.NET_READY: 2,  # HTTPS public key, certificate SHA-256 (both empty without HTTPS)
    # scheme, host, port, path, has_fragment, query pairs (pack_list of k, v, k, v...)
    MsgType.NET_CALLBACK: 6,
    MsgType.NET_TOKEN_RESULT: 6,  # see TokenResult in this module
    MsgType.NET_CALLBACK_VERDICT: 2,  # HTTP status (ASCII digits), page text
    # token_uri, client_id, has_secret, client_secret, code, code_verifier, redirect_uri
    MsgType.NET_EXCHANGE: 7,
    # token_uri, client_id, has_secret, client_secret, refresh_token
    MsgType.NET_REFRESH: 5,
}


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    request_id: int
    pid: int
    fields: tuple[memoryview, ...]


def _field_sizes(fields: Sequence[Buffer]) -> int:
    return sum(FIELD_LEN.size + memoryview(f).nbytes for f in fields)


def encode(
    msg_type: MsgType, request_id: int, fields: Sequence[Buffer] = (), pid: int | None = None
) -> bytearray:
    """One frame. A bytearray, so a sender of secrets can wipe it after sending."""
    if len(fields) != FIELD_COUNTS[msg_type]:
        raise ProtocolError(f"{msg_type.name} takes {FIELD_COUNTS[msg_type]} fields")
    total = HEADER_SIZE + _field_sizes(fields)
    if total > MAX_MESSAGE:
        raise ProtocolError(f"{msg_type.name} of {total} bytes exceeds {MAX_MESSAGE}")
    frame = bytearray(total)
    HEADER.pack_into(frame, 0, msg_type, total, request_id, os.getpid() if pid is None else pid)
    # Copy through a memoryview: assigning a non-bytearray to a bytearray slice makes a
    # temporary bytearray copy of it, which would leave an unwiped copy of any secret.
    out = memoryview(frame)
    pos = HEADER_SIZE
    for f in fields:
        view = memoryview(f).cast("B")
        FIELD_LEN.pack_into(frame, pos, view.nbytes)
        pos += FIELD_LEN.size
        out[pos : pos + view.nbytes] = view
        pos += view.nbytes
    out.release()
    return frame


def split_fields(payload: memoryview) -> Iterator[memoryview]:
    """The length-prefixed fields of `payload`, which they must fill exactly."""
    pos, end = 0, payload.nbytes
    while pos < end:
        if end - pos < FIELD_LEN.size:
            raise ProtocolError("truncated field length")
        (length,) = FIELD_LEN.unpack_from(payload, pos)
        pos += FIELD_LEN.size
        if length > end - pos:
            raise ProtocolError("field overruns its frame")
        yield payload[pos : pos + length]
        pos += length


def decode_header(header: Buffer) -> tuple[MsgType, int, int, int]:
    """(type, length, request id, pid) of a header, checked before any payload is read."""
    raw_type, length, request_id, pid = HEADER.unpack_from(header)
    if not HEADER_SIZE <= length <= MAX_MESSAGE:
        raise ProtocolError(f"bad frame length {length}")
    try:
        msg_type = MsgType(raw_type)
    except ValueError:
        raise ProtocolError(f"unknown message type {raw_type}") from None
    return msg_type, length, request_id, pid


def decode(frame: Buffer) -> Message:
    """Decode exactly one whole frame, fields as views into `frame`."""
    view = memoryview(frame).cast("B")
    if view.nbytes < HEADER_SIZE:
        raise ProtocolError("short frame")
    msg_type, length, request_id, pid = decode_header(view)
    if length != view.nbytes:
        raise ProtocolError(f"frame length {length} but {view.nbytes} bytes")
    fields = tuple(split_fields(view[HEADER_SIZE:]))
    if len(fields) != FIELD_COUNTS[msg_type]:
        raise ProtocolError(f"{msg_type.name} with {len(fields)} fields")
    return Message(msg_type, request_id, pid, fields)


def pack_list(items: Sequence[Buffer]) -> bytearray:
    """Several values as one field, in the same length-prefixed form."""
    out = bytearray()
    for item in items:
        out += FIELD_LEN.pack(memoryview(item).nbytes)
        out += item
    return out


def unpack_list(field: memoryview) -> list[memoryview]:
    return list(split_fields(field))


def flag(value: bool) -> bytes:
    return b"1" if value else b"0"


def read_flag(field: memoryview) -> bool:
    if field == b"1":
        return True
    if field == b"0":
        return False
    raise ProtocolError("bad flag field")


def text(field: memoryview) -> str:
    """A field that is never secret (names, URLs, messages) as str."""
    try:
        return str(field, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("field is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class Callback:
    """A browser's redirect request as the network child parsed it (NET_CALLBACK)."""

    scheme: str
    host: str
    port: int
    path: str
    has_fragment: bool
    pairs: tuple[tuple[str, str], ...]  # the query, form-decoded, in order

    def get(self, key: str) -> str | None:
        """The first value of `key` (spec §5.4)."""
        for k, v in self.pairs:
            if k == key:
                return v
        return None

    def fields(self) -> list[Buffer]:
        flat = [s.encode() for pair in self.pairs for s in pair]
        return [
            self.scheme.encode(),
            self.host.encode(),
            str(self.port).encode(),
            self.path.encode(),
            flag(self.has_fragment),
            pack_list(flat),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> Callback:
        scheme, host, port, path, has_fragment, packed = fields
        flat = [text(v) for v in unpack_list(packed)]
        if len(flat) % 2:
            raise ProtocolError("odd number of query fields")
        try:
            port_number = int(text(port))
        except ValueError:
            raise ProtocolError("bad port") from None
        return cls(
            scheme=text(scheme),
            host=text(host),
            port=port_number,
            path=text(path),
            has_fragment=read_flag(has_fragment),
            pairs=tuple(zip(flat[::2], flat[1::2], strict=True)),
        )


class FrameReader:
    """Collects whole frames from a stream socket.

    Each frame gets its own bytearray (read with recv_into), so a receiver can
    copy secrets out of it and wipe it, and no secret lingers in a shared buffer.
    """

    def __init__(self) -> None:
        self._header = bytearray(HEADER_SIZE)
        self._have_header = 0
        self._frame: bytearray | None = None
        self._have_frame = 0

    def read_from(self, sock: socket.socket) -> list[bytearray] | None:
        """Read what is available; complete frames, or None on end-of-file.

        If reading fails (a protocol or socket error) every byte read so far is
        wiped before the error propagates: the channel is about to be dropped.
        """
        frames: list[bytearray] = []
        try:
            return self._read(sock, frames)
        except BaseException:
            for frame in frames:
                wipe(frame)
            self.wipe()
            raise

    def wipe(self) -> None:
        """Zero and forget a partly read frame (its channel is being dropped)."""
        if self._frame is not None:
            wipe(self._frame)
            self._frame = None
        wipe(self._header)
        self._have_header = self._have_frame = 0

    def _read(self, sock: socket.socket, frames: list[bytearray]) -> list[bytearray] | None:
        while True:
            try:
                if self._frame is None:
                    view = memoryview(self._header)[self._have_header :]
                    n = sock.recv_into(view)
                    if n == 0:
                        return frames or None
                    self._have_header += n
                    if self._have_header == HEADER_SIZE:
                        _, length, _, _ = decode_header(self._header)
                        self._frame = bytearray(length)
                        self._frame[:HEADER_SIZE] = self._header
                        self._have_frame = HEADER_SIZE
                        self._have_header = 0
                else:
                    view = memoryview(self._frame)[self._have_frame :]
                    n = sock.recv_into(view) if view.nbytes else 0
                    if view.nbytes and n == 0:
                        return frames or None
                    self._have_frame += n
                if self._frame is not None and self._have_frame == len(self._frame):
                    frames.append(self._frame)
                    self._frame = None
                    if sock.gettimeout() is None:
                        # Blocking socket: hand back each frame as soon as it is whole.
                        return frames
            except (BlockingIOError, InterruptedError):
                return frames


def recv_frame(sock: socket.socket, reader: FrameReader) -> bytearray | None:
    """Blocking read of the next frame (for the children's channel threads)."""
    while True:
        frames = reader.read_from(sock)
        if frames is None:
            return None
        if frames:
            assert len(frames) == 1
            return frames[0]


def wipe(buf: bytearray | memoryview) -> None:
    """Zero a buffer that held a secret."""
    view = memoryview(buf).cast("B")
    view[:] = bytes(view.nbytes)


@dataclass(slots=True)
class _Waiter:
    done: threading.Event
    reply: Message | None = None


class Channel:
    """A child's end of its channel to the parent: thread-safe sends, and calls
    that wait for the reply with the same request id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}

    def send(self, msg_type: MsgType, request_id: int, fields: Sequence[Buffer] = ()) -> None:
        frame = encode(msg_type, request_id, fields)
        try:
            with self._lock:
                self.sock.sendall(frame)
        finally:
            wipe(frame)

    def call(self, msg_type: MsgType, fields: Sequence[Buffer], timeout: float) -> Message | None:
        """Send a request and wait for the parent's reply (None on timeout)."""
        with self._lock:
            request_id = next(self._ids) % 0xFFFFFFFF + 1
            waiter = self._waiting[request_id] = _Waiter(threading.Event())
        try:
            self.send(msg_type, request_id, fields)
            waiter.done.wait(timeout)
            return waiter.reply
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def deliver(self, msg: Message) -> bool:
        """Hand a reply to the call waiting for it; False if none is waiting."""
        with self._lock:
            waiter = self._waiting.get(msg.request_id)
        if waiter is None:
            return False
        waiter.reply = msg
        waiter.done.set()
        return True


def serve_parent(
    channel: Channel, handlers: Mapping[MsgType, Callable[[Message], None]], child: str
) -> None:
    """A child's main loop: dispatch the parent's messages until the parent is gone
    or breaks the protocol; either way the child then exits."""
    log = logging.getLogger("pizauth")
    reader = FrameReader()
    while True:
        try:
            frame = recv_frame(channel.sock, reader)
            if frame is None:
                return
            msg = decode(frame)
            handler = handlers.get(msg.type)
            if handler is None:
                raise ProtocolError(f"{msg.type.name} is not for the {child} child")
            handler(msg)
        except ProtocolError as e:
            log.error("protocol error from parent: %s", e)
            return
        except OSError:
            return
