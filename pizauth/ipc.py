"""Messages between pizauth's processes: framing, and one type per message.

A frame is a 16-byte header -- type, total length, request id, sender pid, all
u32 in network byte order -- followed by the payload: a sequence of fields,
each a u32 length and that many bytes (the layout of OpenBSD's imsg).

Each message type is a frozen dataclass below (@message) with `encode(request_id)`
and `decode(msg)`; both the sender and the receiver use it. Its fields are declared
once, each with the codec that carries it and its size limit (wire()); encoding,
decoding and the field count follow from them. Every limit is checked on both
sides: a field over it, a wrong field count or a malformed value is a
ProtocolError, which ends the peer's channel and never the process that received
it. docs/protocol.md lists every message.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, TypeVar

from pizauth import limits
from pizauth.timeouts import RETRY_AFTER_MAX

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
    # device authorization grant (RFC 8628): parent -> network child, then its answer
    NET_DEVICE_AUTH = 50
    NET_DEVICE_POLL = 51  # answered by NET_TOKEN_RESULT
    NET_DEVICE_AUTH_RESULT = 52
    # issuer metadata and revocation: parent -> network child, then its answer
    NET_METADATA = 60
    NET_METADATA_RESULT = 61
    NET_REVOKE = 62
    NET_REVOKE_RESULT = 63


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

    def read_from(self, sock: socket.socket, max_frames: int = 0) -> list[bytearray] | None:
        """Read what is available; complete frames, or None on end-of-file.

        With `max_frames`, stop once that many are whole: the rest stays in the
        socket, so one busy peer cannot keep its reader from everything else.

        If reading fails (a protocol or socket error) every byte read so far is
        wiped before the error propagates: the channel is about to be dropped.
        """
        frames: list[bytearray] = []
        try:
            return self._read(sock, frames, max_frames)
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

    def _read(
        self, sock: socket.socket, frames: list[bytearray], max_frames: int
    ) -> list[bytearray] | None:
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
                    if sock.gettimeout() is None or len(frames) == max_frames:
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


# -- field values -----------------------------------------------------------------------------


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


def number(field: memoryview, low: int, high: int) -> int:
    """ASCII digits of a value in [low, high]; the field's limit keeps int() cheap."""
    raw = bytes(field)
    if not raw.isdigit() or not raw.isascii():
        raise ProtocolError("bad number field")
    value = int(raw)
    if not low <= value <= high:
        raise ProtocolError("number field out of range")
    return value


# A provider's Retry-After, in whole seconds, as the network child read it: from 0 up to
# timeouts.RETRY_AFTER_MAX; the field is empty when there was none.
MAX_RETRY_AFTER = int(RETRY_AFTER_MAX)
MAX_RETRY_AFTER_DIGITS = len(str(MAX_RETRY_AFTER))


E = TypeVar("E", bound=enum.Enum)


def choice(field: memoryview, kind: type[E]) -> E:
    try:
        return kind(text(field))
    except ValueError:
        raise ProtocolError(f"bad {kind.__name__}") from None


def pack_list(items: Sequence[Buffer]) -> bytearray:
    """Several values as one field, in the same length-prefixed form."""
    out = bytearray()
    for item in items:
        out += FIELD_LEN.pack(memoryview(item).nbytes)
        out += item
    return out


def unpack_list(field: memoryview) -> list[memoryview]:
    return list(split_fields(field))


def cut(message: str, limit: int) -> str:
    """`message` shortened to at most `limit` UTF-8 bytes, never mid-character."""
    raw = message.encode("utf-8", "replace")
    if len(raw) <= limit:
        return message
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


# -- what travels as words ----------------------------------------------------------------------


class TokenOutcome(str, enum.Enum):
    """How a request to a provider ended, for every kind of request (token, device
    authorization, metadata, revocation). A transient failure may work later (a refresh
    is retried); a permanent one (and every failed code exchange) will not: for a token,
    the user must log in again."""

    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class RefreshKind(str, enum.Enum):
    """What a successful token reply said about the refresh token."""

    ABSENT = "absent"  # no refresh_token: keep the one we have
    STRING = "string"  # a new refresh token
    INVALID = "invalid"  # present but not a string: drop the one we have


class TokenEvent(str, enum.Enum):
    """What token_event_cmd is told in $PIZAUTH_EVENT."""

    NEW = "token_new"
    REFRESHED = "token_refreshed"
    REVOKED = "token_revoked"
    INVALIDATED = "token_invalidated"


# -- how a field travels ------------------------------------------------------------------------
#
# Each field of a message is declared once, in its dataclass, with the codec that carries it:
# `name: type = wire(Codec(...))`. The codec says how the value becomes wire fields (one, or
# two for an optional secret) and the size limit of each; encode, decode, the field count and
# LIMITS all follow from the declarations, in their order.


class Codec:
    """How one dataclass field travels: `limits` has one size limit (bytes) per wire field."""

    limits: tuple[int, ...] = ()

    def encode(self, value: Any) -> list[Buffer]:
        raise NotImplementedError

    def decode(self, fields: tuple[memoryview, ...]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Codec):
    """A str that is never secret (names, URLs, messages), as UTF-8."""

    limit: int

    @property
    def limits(self) -> tuple[int, ...]:
        return (self.limit,)

    def encode(self, value: str) -> list[Buffer]:
        return [value.encode()]

    def decode(self, fields: tuple[memoryview, ...]) -> str:
        return text(fields[0])


@dataclass(frozen=True)
class Raw(Codec):
    """A buffer as it is: a secret or a reply for a client. Decoded, a view of the frame,
    so that the receiver can copy it where it belongs and wipe the frame."""

    limit: int

    @property
    def limits(self) -> tuple[int, ...]:
        return (self.limit,)

    def encode(self, value: Buffer) -> list[Buffer]:
        return [value]

    def decode(self, fields: tuple[memoryview, ...]) -> memoryview:
        return fields[0]


@dataclass(frozen=True)
class OptionalRaw(Codec):
    """A buffer or None (a public client's secret), as a flag and the buffer ("" if None)."""

    limit: int

    @property
    def limits(self) -> tuple[int, ...]:
        return (1, self.limit)

    def encode(self, value: Buffer | None) -> list[Buffer]:
        return [flag(value is not None), b"" if value is None else value]

    def decode(self, fields: tuple[memoryview, ...]) -> memoryview | None:
        has_value, value = fields
        return value if read_flag(has_value) else None


@dataclass(frozen=True)
class Flag(Codec):
    limits = (1,)

    def encode(self, value: bool) -> list[Buffer]:
        return [flag(value)]

    def decode(self, fields: tuple[memoryview, ...]) -> bool:
        return read_flag(fields[0])


@dataclass(frozen=True)
class Number(Codec):
    """An int in [low, high] as ASCII digits; with `optional`, None travels as ""."""

    low: int
    high: int
    optional: bool = False

    @property
    def limits(self) -> tuple[int, ...]:
        return (len(str(self.high)),)

    def encode(self, value: int | None) -> list[Buffer]:
        return [b"" if value is None else str(value).encode()]

    def decode(self, fields: tuple[memoryview, ...]) -> int | None:
        if self.optional and not fields[0].nbytes:
            return None
        return number(fields[0], self.low, self.high)


@dataclass(frozen=True)
class Choice(Codec):
    """A member of a str enum, as its value."""

    kind: type[enum.Enum]

    @property
    def limits(self) -> tuple[int, ...]:
        return (max(len(member.value) for member in self.kind),)

    def encode(self, value: enum.Enum) -> list[Buffer]:
        return [self.kind(value).value.encode()]

    def decode(self, fields: tuple[memoryview, ...]) -> enum.Enum:
        return choice(fields[0], self.kind)


@dataclass(frozen=True)
class OneOf(Codec):
    """One of a few words, kept as str (`what` names it in errors)."""

    words: tuple[str, ...]
    what: str

    @property
    def limits(self) -> tuple[int, ...]:
        return (max(len(word) for word in self.words),)

    def encode(self, value: str) -> list[Buffer]:
        return [value.encode()]

    def decode(self, fields: tuple[memoryview, ...]) -> str:
        word = text(fields[0])
        if word not in self.words:
            raise ProtocolError(f"bad {self.what}")
        return word


@dataclass(frozen=True)
class Pairs(Codec):
    """(key, value) str pairs, in order, as one packed list (pack_list) of both."""

    limit: int

    @property
    def limits(self) -> tuple[int, ...]:
        return (self.limit,)

    def encode(self, value: tuple[tuple[str, str], ...]) -> list[Buffer]:
        return [pack_list([s.encode() for pair in value for s in pair])]

    def decode(self, fields: tuple[memoryview, ...]) -> tuple[tuple[str, str], ...]:
        flat = [text(v) for v in unpack_list(fields[0])]
        if len(flat) % 2:
            raise ProtocolError("odd number of query fields")
        return tuple(zip(flat[::2], flat[1::2], strict=True))


def wire(codec: Codec, default: Any = MISSING) -> Any:
    """A message field that travels by `codec` (see above)."""
    return field(default=default, metadata={"codec": codec})


# -- the messages -------------------------------------------------------------------------------

W = TypeVar("W", bound="Wire")


class Wire:
    """One message type. Its dataclass fields are its wire fields, in order, each with its
    codec (wire()); LIMITS, the size limit of each wire field, follows from them. Anything
    else on the class (TYPE, and any other ClassVar) is not a field."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    LIMITS: ClassVar[tuple[int, ...]] = ()
    # A frame of this type may hold a secret: its sender wipes it once written.
    SECRET: ClassVar[bool] = False
    # (field name, codec) in wire order, set by @message
    CODECS: ClassVar[tuple[tuple[str, Codec], ...]] = ()

    def fields(self) -> Sequence[Buffer]:
        return [f for name, codec in self.CODECS for f in codec.encode(getattr(self, name))]

    @classmethod
    def from_fields(cls: type[W], fields: tuple[memoryview, ...]) -> W:
        values: dict[str, Any] = {}
        at = 0
        for name, codec in cls.CODECS:
            width = len(codec.limits)
            values[name] = codec.decode(fields[at : at + width])
            at += width
        result = cls(**values)
        result.check()
        return result

    def check(self) -> None:
        """Refuse (ProtocolError) a decoded message whose fields disagree with each other."""

    def encode(self, request_id: int) -> bytearray:
        """The frame; a bytearray, so a sender of secrets can wipe it once sent."""
        fields = self.fields()
        _check_sizes(self.TYPE, self.LIMITS, fields)
        return encode(self.TYPE, request_id, fields)

    @classmethod
    def decode(cls: type[W], msg: Message) -> W:
        """The message `msg` carries; secret fields stay views into its frame."""
        if msg.type is not cls.TYPE:
            raise ProtocolError(f"{msg.type.name} is not {cls.TYPE.name}")
        _check_sizes(cls.TYPE, cls.LIMITS, msg.fields)
        return cls.from_fields(msg.fields)


def message(cls: type[W]) -> type[W]:
    """`cls` as a frozen, slotted dataclass whose fields, each declared with wire(), are
    its message's fields in wire order; sets its CODECS and LIMITS from them."""
    cls = dataclass(frozen=True, slots=True)(cls)
    codecs = []
    for f in dataclasses.fields(cls):
        codec = f.metadata.get("codec")
        if not isinstance(codec, Codec):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with wire()")
        codecs.append((f.name, codec))
    cls.CODECS = tuple(codecs)
    cls.LIMITS = tuple(limit for _, codec in codecs for limit in codec.limits)
    return cls


def _check_sizes(msg_type: MsgType, sizes: tuple[int, ...], fields: Sequence[Buffer]) -> None:
    if len(fields) != len(sizes):
        raise ProtocolError(f"{msg_type.name} takes {len(sizes)} fields")
    for i, (field_, limit) in enumerate(zip(fields, sizes, strict=True)):
        if memoryview(field_).nbytes > limit:
            raise ProtocolError(f"{msg_type.name} field {i} over its limit of {limit} bytes")


ACCOUNT = Text(limits.MAX_ACCOUNT_NAME)
URI = Text(limits.MAX_URI)
SECONDS = Number(0, limits.MAX_SECONDS)
RESULT_MESSAGE = Text(limits.MAX_RESULT_MESSAGE)
ERROR_CODE = Text(limits.MAX_ERROR_CODE)  # the provider's OAuth error code
OUTCOME = Choice(TokenOutcome)
# A provider's Retry-After, in whole seconds, as the network child read it: from 0 up to
# timeouts.RETRY_AFTER_MAX; the field is empty when there was none.
RETRY_AFTER = Number(0, MAX_RETRY_AFTER, optional=True)

# command child -> parent: one message per client request, answered by CMD_REPLY.


@message
class CmdReady(Wire):
    """The command child serves the control socket."""

    TYPE = MsgType.CMD_READY


@message
class CmdShow(Wire):
    TYPE = MsgType.CMD_SHOW
    withurl: bool = wire(Flag())
    account: str = wire(ACCOUNT)


@message
class CmdRefresh(Wire):
    TYPE = MsgType.CMD_REFRESH
    withurl: bool = wire(Flag())
    account: str = wire(ACCOUNT)


@message
class CmdRevoke(Wire):
    TYPE = MsgType.CMD_REVOKE
    account: str = wire(ACCOUNT)


@message
class CmdStatus(Wire):
    TYPE = MsgType.CMD_STATUS


@message
class CmdInfo(Wire):
    TYPE = MsgType.CMD_INFO


@message
class CmdReload(Wire):
    TYPE = MsgType.CMD_RELOAD


@message
class CmdShutdown(Wire):
    TYPE = MsgType.CMD_SHUTDOWN


@message
class CmdDump(Wire):
    TYPE = MsgType.CMD_DUMP


# A request's frame is at most MAX_MESSAGE: header, field length and the dump.
MAX_RESTORE = MAX_MESSAGE - 1024
# The largest dump `restore` can take back: the command child accepts requests of up to
# MAX_RESTORE bytes, «restore:» included. Here, not in priv/storage/dump.py, because the client
# refuses a larger input before connecting, and clients import nothing of the parent's.
MAX_DUMP = MAX_RESTORE - len(b"restore:")


@message
class CmdRestore(Wire):
    """A dump to restore: secret, a view of the frame, never copied."""

    TYPE = MsgType.CMD_RESTORE
    dump: Buffer = wire(Raw(MAX_RESTORE))


# parent -> command child


@message
class CmdReply(Wire):
    """The reply exactly as the client is to read it."""

    TYPE = MsgType.CMD_REPLY
    text: Buffer = wire(Raw(MAX_MESSAGE - HEADER_SIZE - FIELD_LEN.size))


class CmdSecretReply(CmdReply):
    """A CMD_REPLY holding a token or a dump: the same frame, wiped once written."""

    __slots__ = ()
    SECRET = True


# network child -> parent


@message
class NetReady(Wire):
    """The network child serves; with HTTPS, the certificate `info` shows."""

    TYPE = MsgType.NET_READY
    public_key: str = wire(Text(limits.MAX_PUBLIC_KEY))  # PEM, empty without HTTPS
    # SHA-256 of the certificate, empty without HTTPS
    fingerprint: str = wire(Text(limits.MAX_FINGERPRINT))


# A query is at most the redirect request, but each value gains a length prefix.
MAX_QUERY = 5 * limits.MAX_REDIRECT_REQUEST


@message
class NetCallback(Wire):
    """A browser's redirect request as the network child parsed it."""

    TYPE = MsgType.NET_CALLBACK
    scheme: str = wire(Text(len("https")))
    host: str = wire(Text(limits.MAX_REDIRECT_REQUEST))
    port: int = wire(Number(0, 65535))
    path: str = wire(Text(limits.MAX_REDIRECT_REQUEST))
    has_fragment: bool = wire(Flag())
    pairs: tuple[tuple[str, str], ...] = wire(Pairs(MAX_QUERY))  # the query, form-decoded

    def get(self, key: str) -> str | None:
        """The first value of `key`: a repeated parameter counts once, as the original does."""
        for k, v in self.pairs:
            if k == key:
                return v
        return None


Callback = NetCallback  # the name the redirect parser and the URL checks know it by


@message
class NetTokenResult(Wire):
    """How a NET_EXCHANGE, NET_REFRESH or NET_DEVICE_POLL with the same request id ended.
    The tokens are secret: views of the frame, copied by the parent into its own memory."""

    TYPE = MsgType.NET_TOKEN_RESULT
    outcome: TokenOutcome = wire(OUTCOME)
    message: str = wire(RESULT_MESSAGE, "")  # why it failed
    access_token: Buffer = wire(Raw(limits.MAX_TOKEN), b"")
    # seconds; None when the provider gave none
    expires_in: int | None = wire(Number(0, limits.MAX_SECONDS, optional=True), None)
    refresh_kind: RefreshKind = wire(Choice(RefreshKind), RefreshKind.ABSENT)
    refresh_token: Buffer = wire(Raw(limits.MAX_TOKEN), b"")
    provider_error: str = wire(ERROR_CODE, "")  # e.g. "invalid_client"
    # With a transient failure: the seconds the provider's Retry-After asked for, if any.
    retry_after: int | None = wire(RETRY_AFTER, None)

    def check(self) -> None:
        if self.outcome is TokenOutcome.OK and not memoryview(self.access_token).nbytes:
            raise ProtocolError("empty access token")


# parent -> network child


@message
class CallbackVerdict(Wire):
    """The parent's answer to a NET_CALLBACK: the HTTP status and page for the browser."""

    TYPE = MsgType.NET_CALLBACK_VERDICT
    status: int = wire(Number(100, 599))
    page: str = wire(Text(limits.MAX_PAGE), "")


# How the client authenticates (token_endpoint_auth_method): the config admits these only.
AUTH_METHODS = ("client_secret_post", "client_secret_basic")
AUTH_METHOD = OneOf(AUTH_METHODS, "token_endpoint_auth_method")
# Every request to a provider endpoint starts with the endpoint, the client id and the
# client secret (None for a public client); secrets (client secret, code verifier, tokens,
# device code) are buffers, never str, so that every copy can be wiped.
CLIENT_ID = Text(limits.MAX_CLIENT_ID)
CLIENT_SECRET = OptionalRaw(limits.MAX_CLIENT_SECRET)


@message
class NetExchange(Wire):
    """Exchange an authorisation code for tokens."""

    TYPE = MsgType.NET_EXCHANGE
    SECRET = True
    token_uri: str = wire(URI)
    client_id: str = wire(CLIENT_ID)
    client_secret: Buffer | None = wire(CLIENT_SECRET)
    code: str = wire(Text(limits.MAX_AUTH_CODE))
    code_verifier: Buffer = wire(Raw(limits.MAX_CODE_VERIFIER))
    redirect_uri: str = wire(URI)
    auth_method: str = wire(AUTH_METHOD, AUTH_METHODS[0])  # token_endpoint_auth_method


@message
class NetRefresh(Wire):
    """Refresh an access token."""

    TYPE = MsgType.NET_REFRESH
    SECRET = True
    token_uri: str = wire(URI)
    client_id: str = wire(CLIENT_ID)
    client_secret: Buffer | None = wire(CLIENT_SECRET)
    refresh_token: Buffer = wire(Raw(limits.MAX_TOKEN))
    auth_method: str = wire(AUTH_METHOD, AUTH_METHODS[0])  # token_endpoint_auth_method


# The device authorization grant (RFC 8628).

# A scope as sent: the configured scopes joined by spaces.
MAX_SCOPE = limits.MAX_URI


@message
class NetDeviceAuth(Wire):
    """parent -> network child: ask the device authorization endpoint for a user code."""

    TYPE = MsgType.NET_DEVICE_AUTH
    SECRET = True
    device_auth_uri: str = wire(URI)
    client_id: str = wire(CLIENT_ID)
    client_secret: Buffer | None = wire(CLIENT_SECRET)
    scope: str = wire(Text(MAX_SCOPE))  # space-separated; empty for none
    auth_method: str = wire(AUTH_METHOD)


@message
class NetDevicePoll(Wire):
    """parent -> network child: one device access token request; the device code is a
    secret (wiped by whoever made it). Answered by NET_TOKEN_RESULT."""

    TYPE = MsgType.NET_DEVICE_POLL
    SECRET = True
    token_uri: str = wire(URI)
    client_id: str = wire(CLIENT_ID)
    client_secret: Buffer | None = wire(CLIENT_SECRET)
    device_code: Buffer = wire(Raw(limits.MAX_DEVICE_CODE))
    auth_method: str = wire(AUTH_METHOD)


@message
class NetDeviceAuthResult(Wire):
    """network child -> parent: how a NET_DEVICE_AUTH with the same request id ended. The
    device code is secret: a view of the frame, copied by the parent into a Secret."""

    TYPE = MsgType.NET_DEVICE_AUTH_RESULT
    outcome: TokenOutcome = wire(OUTCOME)
    message: str = wire(RESULT_MESSAGE, "")
    provider_error: str = wire(ERROR_CODE, "")
    device_code: Buffer = wire(Raw(limits.MAX_DEVICE_CODE), b"")
    user_code: str = wire(Text(limits.MAX_PROVIDER_TEXT), "")
    verification_uri: str = wire(URI, "")
    verification_uri_complete: str = wire(URI, "")  # "" when the provider gave none
    expires_in: int = wire(SECONDS, 0)
    interval: int = wire(SECONDS, 0)

    def check(self) -> None:
        if self.outcome is not TokenOutcome.OK:
            return
        # What the user is shown and a hook is given: one line of printable text, and
        # URIs without spaces, so "the URL up to the first space" stays the URL.
        if (
            not memoryview(self.device_code).nbytes
            or not self.user_code.strip()
            or not self.verification_uri
        ):
            raise ProtocolError("incomplete device authorization")
        uris = self.verification_uri + self.verification_uri_complete
        if not self.user_code.isprintable() or not all("\x21" <= c <= "\x7e" for c in uris):
            raise ProtocolError("unprintable device authorization")
        if self.expires_in < 1 or self.interval < 1:
            raise ProtocolError("device authorization without expiry or interval")


# issuer metadata and revocation at the provider


@message
class NetMetadata(Wire):
    """Fetch the metadata of `issuer` (parent -> network child)."""

    TYPE = MsgType.NET_METADATA
    issuer: str = wire(URI)


@message
class NetMetadataResult(Wire):
    """What a NET_METADATA with the same request id found: each endpoint "" when the
    document does not have it, and every one "" unless the outcome is ok."""

    TYPE = MsgType.NET_METADATA_RESULT
    outcome: TokenOutcome = wire(OUTCOME)
    message: str = wire(RESULT_MESSAGE, "")
    authorization_endpoint: str = wire(URI, "")
    token_endpoint: str = wire(URI, "")
    device_authorization_endpoint: str = wire(URI, "")
    revocation_endpoint: str = wire(URI, "")

    def check(self) -> None:
        endpoints = (
            self.authorization_endpoint,
            self.token_endpoint,
            self.device_authorization_endpoint,
            self.revocation_endpoint,
        )
        if self.outcome is not TokenOutcome.OK and any(endpoints):
            raise ProtocolError("endpoints in a failed metadata result")


TOKEN_TYPE_HINTS = ("access_token", "refresh_token")


@message
class NetRevoke(Wire):
    """Revoke `token` at `revoke_uri` (RFC 7009)."""

    TYPE = MsgType.NET_REVOKE
    SECRET = True
    revoke_uri: str = wire(URI)
    client_id: str = wire(CLIENT_ID)
    client_secret: Buffer | None = wire(CLIENT_SECRET)
    token: Buffer = wire(Raw(limits.MAX_TOKEN))
    token_type_hint: str = wire(OneOf(TOKEN_TYPE_HINTS, "token_type_hint"))
    auth_method: str = wire(AUTH_METHOD, AUTH_METHODS[0])


@message
class NetRevokeResult(Wire):
    """How a NET_REVOKE with the same request id ended."""

    TYPE = MsgType.NET_REVOKE_RESULT
    outcome: TokenOutcome = wire(OUTCOME)
    message: str = wire(RESULT_MESSAGE, "")
    provider_error: str = wire(ERROR_CODE, "")
    # With a transient failure: the seconds the provider's Retry-After asked for, if any.
    retry_after: int | None = wire(RETRY_AFTER, None)


MESSAGES: dict[MsgType, type[Wire]] = {
    cls.TYPE: cls
    for cls in (
        CmdReady,
        CmdShow,
        CmdRefresh,
        CmdRevoke,
        CmdStatus,
        CmdInfo,
        CmdReload,
        CmdShutdown,
        CmdDump,
        CmdRestore,
        CmdReply,
        NetReady,
        NetCallback,
        NetTokenResult,
        CallbackVerdict,
        NetExchange,
        NetRefresh,
        NetDeviceAuth,
        NetDevicePoll,
        NetDeviceAuthResult,
        NetMetadata,
        NetMetadataResult,
        NetRevoke,
        NetRevokeResult,
    )
}

# Exact field count of each message type, checked by the framing layer.
FIELD_COUNTS: dict[MsgType, int] = {t: len(cls.LIMITS) for t, cls in MESSAGES.items()}


def decode_as(msg: Message) -> Wire:
    """The typed message `msg` carries, by its type."""
    return MESSAGES[msg.type].decode(msg)


# Every message the parent builds fits in a frame, given the limits above.
assert all(
    HEADER_SIZE + sum(FIELD_LEN.size + n for n in cls.LIMITS) <= MAX_MESSAGE
    for cls in MESSAGES.values()
)
