"""Messages between pizauth's processes: framing, and one type per message.

A frame is a 16-byte header -- type, total length, request id, sender pid, all
u32 in network byte order -- followed by the payload: a sequence of fields,
each a u32 length and that many bytes (the layout of OpenBSD's imsg).

Each message type is a frozen dataclass below with `encode(request_id)` and
`decode(msg)`; both the sender and the receiver use it. Every field has a
size limit, checked on both sides: a field over it, a wrong field count or a
malformed value is a ProtocolError, which ends the peer's channel and never
the process that received it. docs/protocol.md lists every message.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

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


def _optional_number(value: int | None) -> bytes:
    return b"" if value is None else str(value).encode()


def _retry_after(field: memoryview) -> int | None:
    return number(field, 0, MAX_RETRY_AFTER) if field.nbytes else None


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
    """How a token request ended. A transient failure of a refresh is retried later;
    a permanent one (and every failed code exchange) needs the user to log in again."""

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


# -- the messages -------------------------------------------------------------------------------

W = TypeVar("W", bound="Wire")


class Wire:
    """One message type: its fields, each with a size limit in bytes (LIMITS, in
    field order). Subclasses give `fields()` and `from_fields()`."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    LIMITS: ClassVar[tuple[int, ...]] = ()
    # A frame of this type may hold a secret: its sender wipes it once written.
    SECRET: ClassVar[bool] = False

    def fields(self) -> Sequence[Buffer]:
        return ()

    @classmethod
    def from_fields(cls: type[W], fields: tuple[memoryview, ...]) -> W:
        return cls()

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


def _check_sizes(msg_type: MsgType, sizes: tuple[int, ...], fields: Sequence[Buffer]) -> None:
    if len(fields) != len(sizes):
        raise ProtocolError(f"{msg_type.name} takes {len(sizes)} fields")
    for i, (field, limit) in enumerate(zip(fields, sizes, strict=True)):
        if memoryview(field).nbytes > limit:
            raise ProtocolError(f"{msg_type.name} field {i} over its limit of {limit} bytes")


def _name(field: memoryview) -> str:
    return text(field)


# command child -> parent: one message per client request, answered by CMD_REPLY.


@dataclass(frozen=True, slots=True)
class CmdReady(Wire):
    """The command child serves the control socket."""

    TYPE = MsgType.CMD_READY


@dataclass(frozen=True, slots=True)
class CmdShow(Wire):
    TYPE = MsgType.CMD_SHOW
    LIMITS = (1, limits.MAX_ACCOUNT_NAME)
    withurl: bool
    account: str

    def fields(self) -> Sequence[Buffer]:
        return [flag(self.withurl), self.account.encode()]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> CmdShow:
        return cls(read_flag(fields[0]), _name(fields[1]))


@dataclass(frozen=True, slots=True)
class CmdRefresh(Wire):
    TYPE = MsgType.CMD_REFRESH
    LIMITS = (1, limits.MAX_ACCOUNT_NAME)
    withurl: bool
    account: str

    def fields(self) -> Sequence[Buffer]:
        return [flag(self.withurl), self.account.encode()]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> CmdRefresh:
        return cls(read_flag(fields[0]), _name(fields[1]))


@dataclass(frozen=True, slots=True)
class CmdRevoke(Wire):
    TYPE = MsgType.CMD_REVOKE
    LIMITS = (limits.MAX_ACCOUNT_NAME,)
    account: str

    def fields(self) -> Sequence[Buffer]:
        return [self.account.encode()]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> CmdRevoke:
        return cls(_name(fields[0]))


@dataclass(frozen=True, slots=True)
class CmdStatus(Wire):
    TYPE = MsgType.CMD_STATUS


@dataclass(frozen=True, slots=True)
class CmdInfo(Wire):
    TYPE = MsgType.CMD_INFO


@dataclass(frozen=True, slots=True)
class CmdReload(Wire):
    TYPE = MsgType.CMD_RELOAD


@dataclass(frozen=True, slots=True)
class CmdShutdown(Wire):
    TYPE = MsgType.CMD_SHUTDOWN


@dataclass(frozen=True, slots=True)
class CmdDump(Wire):
    TYPE = MsgType.CMD_DUMP


# A request's frame is at most MAX_MESSAGE: header, field length and the dump.
MAX_RESTORE = MAX_MESSAGE - 1024


@dataclass(frozen=True, slots=True)
class CmdRestore(Wire):
    """A dump to restore: secret, a view of the frame, never copied."""

    TYPE = MsgType.CMD_RESTORE
    LIMITS = (MAX_RESTORE,)
    dump: Buffer

    def fields(self) -> Sequence[Buffer]:
        return [self.dump]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> CmdRestore:
        return cls(fields[0])


# parent -> command child


@dataclass(frozen=True, slots=True)
class CmdReply(Wire):
    """The reply exactly as the client is to read it; it may hold a token or a dump."""

    TYPE = MsgType.CMD_REPLY
    SECRET = True
    LIMITS = (MAX_MESSAGE - HEADER_SIZE - FIELD_LEN.size,)
    text: Buffer

    def fields(self) -> Sequence[Buffer]:
        return [self.text]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> CmdReply:
        return cls(fields[0])


# network child -> parent


@dataclass(frozen=True, slots=True)
class NetReady(Wire):
    """The network child serves; with HTTPS, the certificate `info` shows."""

    TYPE = MsgType.NET_READY
    LIMITS = (limits.MAX_PUBLIC_KEY, limits.MAX_FINGERPRINT)
    public_key: str  # PEM, empty without HTTPS
    fingerprint: str  # SHA-256 of the certificate, empty without HTTPS

    def fields(self) -> Sequence[Buffer]:
        return [self.public_key.encode(), self.fingerprint.encode()]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetReady:
        return cls(text(fields[0]), text(fields[1]))


# A query is at most the redirect request, but each value gains a length prefix.
MAX_QUERY = 5 * limits.MAX_REDIRECT_REQUEST


@dataclass(frozen=True, slots=True)
class NetCallback(Wire):
    """A browser's redirect request as the network child parsed it."""

    TYPE = MsgType.NET_CALLBACK
    LIMITS = (
        len("https"),
        limits.MAX_REDIRECT_REQUEST,
        len("65535"),
        limits.MAX_REDIRECT_REQUEST,
        1,
        MAX_QUERY,
    )
    scheme: str
    host: str
    port: int
    path: str
    has_fragment: bool
    pairs: tuple[tuple[str, str], ...]  # the query, form-decoded, in order

    def get(self, key: str) -> str | None:
        """The first value of `key`: a repeated parameter counts once, as the original does."""
        for k, v in self.pairs:
            if k == key:
                return v
        return None

    def fields(self) -> Sequence[Buffer]:
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
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetCallback:
        scheme, host, port, path, has_fragment, packed = fields
        flat = [text(v) for v in unpack_list(packed)]
        if len(flat) % 2:
            raise ProtocolError("odd number of query fields")
        return cls(
            scheme=text(scheme),
            host=text(host),
            port=number(port, 0, 65535),
            path=text(path),
            has_fragment=read_flag(has_fragment),
            pairs=tuple(zip(flat[::2], flat[1::2], strict=True)),
        )


Callback = NetCallback  # the name the redirect parser and the URL checks know it by


@dataclass(frozen=True, slots=True)
class NetTokenResult(Wire):
    """How a NET_EXCHANGE or NET_REFRESH with the same request id ended. The tokens are
    secret: views of the frame, copied by the parent into its own memory."""

    TYPE = MsgType.NET_TOKEN_RESULT
    LIMITS = (
        len("permanent"),
        limits.MAX_RESULT_MESSAGE,
        limits.MAX_TOKEN,
        len(str(limits.MAX_SECONDS)),
        len("invalid"),
        limits.MAX_TOKEN,
        limits.MAX_ERROR_CODE,
        MAX_RETRY_AFTER_DIGITS,
    )
    outcome: TokenOutcome
    message: str = ""  # why it failed
    access_token: Buffer = b""
    expires_in: int | None = None  # seconds; None when the provider gave none
    refresh_kind: RefreshKind = RefreshKind.ABSENT
    refresh_token: Buffer = b""
    provider_error: str = ""  # the provider's OAuth error code, e.g. "invalid_client"
    # With a transient failure: the seconds the provider's Retry-After asked for, if any.
    retry_after: int | None = None

    def fields(self) -> Sequence[Buffer]:
        return [
            self.outcome.value.encode(),
            self.message.encode(),
            self.access_token,
            b"" if self.expires_in is None else str(self.expires_in).encode(),
            self.refresh_kind.value.encode(),
            self.refresh_token,
            self.provider_error.encode(),
            _optional_number(self.retry_after),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetTokenResult:
        outcome, message, access, expires, kind, refresh, provider_error, wait = fields
        result = cls(
            outcome=choice(outcome, TokenOutcome),
            message=text(message),
            access_token=access,
            expires_in=number(expires, 0, limits.MAX_SECONDS) if expires.nbytes else None,
            refresh_kind=choice(kind, RefreshKind),
            refresh_token=refresh,
            provider_error=text(provider_error),
            retry_after=_retry_after(wait),
        )
        if result.outcome is TokenOutcome.OK and not access.nbytes:
            raise ProtocolError("empty access token")
        return result


# parent -> network child


@dataclass(frozen=True, slots=True)
class CallbackVerdict(Wire):
    """The parent's answer to a NET_CALLBACK: the HTTP status and page for the browser."""

    TYPE = MsgType.NET_CALLBACK_VERDICT
    LIMITS = (3, limits.MAX_PAGE)
    status: int
    page: str = ""

    def fields(self) -> Sequence[Buffer]:
        return [b"%d" % self.status, self.page.encode()]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> CallbackVerdict:
        return cls(number(fields[0], 100, 599), text(fields[1]))


_CLIENT_LIMITS = (limits.MAX_URI, limits.MAX_CLIENT_ID, 1, limits.MAX_CLIENT_SECRET)
# How the client authenticates (token_endpoint_auth_method): the config admits these only.
AUTH_METHODS = ("client_secret_post", "client_secret_basic")
_AUTH_METHOD_LIMIT = max(len(m) for m in AUTH_METHODS)


def auth_method(field: memoryview) -> str:
    method = text(field)
    if method not in AUTH_METHODS:
        raise ProtocolError("bad token_endpoint_auth_method")
    return method


def _client_fields(uri: str, client_id: str, secret: Buffer | None) -> list[Buffer]:
    """The first four fields of every request to a provider endpoint (_CLIENT_LIMITS)."""
    return [
        uri.encode(),
        client_id.encode(),
        flag(secret is not None),
        b"" if secret is None else secret,
    ]


def _client_from(fields: tuple[memoryview, ...]) -> tuple[str, str, memoryview | None]:
    """(endpoint URI, client id, client secret or None) from those four fields."""
    uri, client_id, has_secret, secret = fields[:4]
    return text(uri), text(client_id), secret if read_flag(has_secret) else None


@dataclass(frozen=True, slots=True)
class NetExchange(Wire):
    """Exchange an authorisation code for tokens. Secrets (client secret, code
    verifier) are buffers, never str, so that every copy can be wiped."""

    TYPE = MsgType.NET_EXCHANGE
    SECRET = True
    LIMITS = (
        *_CLIENT_LIMITS,
        limits.MAX_AUTH_CODE,
        limits.MAX_CODE_VERIFIER,
        limits.MAX_URI,
        _AUTH_METHOD_LIMIT,
    )
    token_uri: str
    client_id: str
    client_secret: Buffer | None
    code: str
    code_verifier: Buffer
    redirect_uri: str
    auth_method: str = AUTH_METHODS[0]  # token_endpoint_auth_method

    def fields(self) -> Sequence[Buffer]:
        return [
            *_client_fields(self.token_uri, self.client_id, self.client_secret),
            self.code.encode(),
            self.code_verifier,
            self.redirect_uri.encode(),
            self.auth_method.encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetExchange:
        code, verifier, redirect_uri, method = fields[4:]
        return cls(
            *_client_from(fields),
            text(code),
            verifier,
            text(redirect_uri),
            auth_method(method),
        )


@dataclass(frozen=True, slots=True)
class NetRefresh(Wire):
    """Refresh an access token (secrets as buffers, as in NetExchange)."""

    TYPE = MsgType.NET_REFRESH
    SECRET = True
    LIMITS = (*_CLIENT_LIMITS, limits.MAX_TOKEN, _AUTH_METHOD_LIMIT)
    token_uri: str
    client_id: str
    client_secret: Buffer | None
    refresh_token: Buffer
    auth_method: str = AUTH_METHODS[0]  # token_endpoint_auth_method

    def fields(self) -> Sequence[Buffer]:
        return [
            *_client_fields(self.token_uri, self.client_id, self.client_secret),
            self.refresh_token,
            self.auth_method.encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetRefresh:
        refresh_token, method = fields[4:]
        return cls(
            *_client_from(fields),
            refresh_token,
            auth_method(method),
        )


# The device authorization grant (RFC 8628).

# A scope as sent: the configured scopes joined by spaces.
MAX_SCOPE = limits.MAX_URI


@dataclass(frozen=True, slots=True)
class NetDeviceAuth(Wire):
    """parent -> network child: ask the device authorization endpoint for a user code."""

    TYPE = MsgType.NET_DEVICE_AUTH
    SECRET = True
    LIMITS = (*_CLIENT_LIMITS, MAX_SCOPE, _AUTH_METHOD_LIMIT)
    device_auth_uri: str
    client_id: str
    client_secret: Buffer | None
    scope: str  # space-separated; empty for none
    auth_method: str

    def fields(self) -> Sequence[Buffer]:
        return [
            *_client_fields(self.device_auth_uri, self.client_id, self.client_secret),
            self.scope.encode(),
            self.auth_method.encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetDeviceAuth:
        scope, method = fields[4:]
        return cls(
            *_client_from(fields),
            text(scope),
            auth_method(method),
        )


@dataclass(frozen=True, slots=True)
class NetDevicePoll(Wire):
    """parent -> network child: one device access token request; the device code is a
    secret (a buffer, wiped by whoever made it). Answered by NET_TOKEN_RESULT."""

    TYPE = MsgType.NET_DEVICE_POLL
    SECRET = True
    LIMITS = (*_CLIENT_LIMITS, limits.MAX_DEVICE_CODE, _AUTH_METHOD_LIMIT)
    token_uri: str
    client_id: str
    client_secret: Buffer | None
    device_code: Buffer
    auth_method: str

    def fields(self) -> Sequence[Buffer]:
        return [
            *_client_fields(self.token_uri, self.client_id, self.client_secret),
            self.device_code,
            self.auth_method.encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetDevicePoll:
        device_code, method = fields[4:]
        return cls(
            *_client_from(fields),
            device_code,
            auth_method(method),
        )


@dataclass(frozen=True, slots=True)
class NetDeviceAuthResult(Wire):
    """network child -> parent: how a NET_DEVICE_AUTH with the same request id ended. The
    device code is secret: a view of the frame, copied by the parent into a Secret."""

    TYPE = MsgType.NET_DEVICE_AUTH_RESULT
    LIMITS = (
        len("permanent"),
        limits.MAX_RESULT_MESSAGE,
        limits.MAX_ERROR_CODE,
        limits.MAX_DEVICE_CODE,
        limits.MAX_PROVIDER_TEXT,
        limits.MAX_URI,
        limits.MAX_URI,
        len(str(limits.MAX_SECONDS)),
        len(str(limits.MAX_SECONDS)),
    )
    outcome: TokenOutcome
    message: str = ""
    provider_error: str = ""
    device_code: Buffer = b""
    user_code: str = ""
    verification_uri: str = ""
    verification_uri_complete: str = ""  # "" when the provider gave none
    expires_in: int = 0
    interval: int = 0

    def fields(self) -> Sequence[Buffer]:
        return [
            self.outcome.value.encode(),
            self.message.encode(),
            self.provider_error.encode(),
            self.device_code,
            self.user_code.encode(),
            self.verification_uri.encode(),
            self.verification_uri_complete.encode(),
            str(self.expires_in).encode(),
            str(self.interval).encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetDeviceAuthResult:
        outcome, message, error, code, user_code, uri, complete, expires_in, interval = fields
        result = cls(
            outcome=choice(outcome, TokenOutcome),
            message=text(message),
            provider_error=text(error),
            device_code=code,
            user_code=text(user_code),
            verification_uri=text(uri),
            verification_uri_complete=text(complete),
            expires_in=number(expires_in, 0, limits.MAX_SECONDS),
            interval=number(interval, 0, limits.MAX_SECONDS),
        )
        if result.outcome is TokenOutcome.OK:
            # What the user is shown and a hook is given: one line of printable text, and
            # URIs without spaces, so "the URL up to the first space" stays the URL.
            if not code.nbytes or not result.user_code.strip() or not result.verification_uri:
                raise ProtocolError("incomplete device authorization")
            uris = result.verification_uri + result.verification_uri_complete
            if not result.user_code.isprintable() or not all("\x21" <= c <= "\x7e" for c in uris):
                raise ProtocolError("unprintable device authorization")
            if result.expires_in < 1 or result.interval < 1:
                raise ProtocolError("device authorization without expiry or interval")
        return result


# issuer metadata and revocation at the provider


class NetOutcome(str, enum.Enum):
    """How a metadata fetch or a revocation ended: a transient failure may work later."""

    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class NetMetadata(Wire):
    """Fetch the metadata of `issuer` (parent -> network child)."""

    TYPE = MsgType.NET_METADATA
    LIMITS = (limits.MAX_URI,)
    issuer: str

    def fields(self) -> Sequence[Buffer]:
        return [self.issuer.encode()]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetMetadata:
        return cls(text(fields[0]))


@dataclass(frozen=True, slots=True)
class NetMetadataResult(Wire):
    """What a NET_METADATA with the same request id found: each endpoint "" when the
    document does not have it, and every one "" unless the outcome is ok."""

    TYPE = MsgType.NET_METADATA_RESULT
    LIMITS = (len("permanent"), limits.MAX_RESULT_MESSAGE, *(limits.MAX_URI,) * 4)
    outcome: NetOutcome
    message: str = ""
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    device_authorization_endpoint: str = ""
    revocation_endpoint: str = ""

    def fields(self) -> Sequence[Buffer]:
        return [
            self.outcome.value.encode(),
            self.message.encode(),
            self.authorization_endpoint.encode(),
            self.token_endpoint.encode(),
            self.device_authorization_endpoint.encode(),
            self.revocation_endpoint.encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetMetadataResult:
        outcome, message, *endpoints = fields
        result = cls(choice(outcome, NetOutcome), text(message), *(text(e) for e in endpoints))
        if result.outcome is not NetOutcome.OK and any(endpoints):
            raise ProtocolError("endpoints in a failed metadata result")
        return result


TOKEN_TYPE_HINTS = ("access_token", "refresh_token")


@dataclass(frozen=True, slots=True)
class NetRevoke(Wire):
    """Revoke `token` at `revoke_uri` (RFC 7009); secrets as buffers, as in NetExchange."""

    TYPE = MsgType.NET_REVOKE
    SECRET = True
    LIMITS = (*_CLIENT_LIMITS, limits.MAX_TOKEN, len("refresh_token"), _AUTH_METHOD_LIMIT)
    revoke_uri: str
    client_id: str
    client_secret: Buffer | None
    token: Buffer
    token_type_hint: str
    auth_method: str = AUTH_METHODS[0]

    def fields(self) -> Sequence[Buffer]:
        return [
            *_client_fields(self.revoke_uri, self.client_id, self.client_secret),
            self.token,
            self.token_type_hint.encode(),
            self.auth_method.encode(),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetRevoke:
        token, hint, method = fields[4:]
        if text(hint) not in TOKEN_TYPE_HINTS:
            raise ProtocolError("bad token_type_hint")
        return cls(
            *_client_from(fields),
            token,
            text(hint),
            auth_method(method),
        )


@dataclass(frozen=True, slots=True)
class NetRevokeResult(Wire):
    """How a NET_REVOKE with the same request id ended."""

    TYPE = MsgType.NET_REVOKE_RESULT
    LIMITS = (
        len("permanent"),
        limits.MAX_RESULT_MESSAGE,
        limits.MAX_ERROR_CODE,
        MAX_RETRY_AFTER_DIGITS,
    )
    outcome: NetOutcome
    message: str = ""
    provider_error: str = ""
    # With a transient failure: the seconds the provider's Retry-After asked for, if any.
    retry_after: int | None = None

    def fields(self) -> Sequence[Buffer]:
        return [
            self.outcome.value.encode(),
            self.message.encode(),
            self.provider_error.encode(),
            _optional_number(self.retry_after),
        ]

    @classmethod
    def from_fields(cls, fields: tuple[memoryview, ...]) -> NetRevokeResult:
        outcome, message, provider_error, wait = fields
        return cls(
            choice(outcome, NetOutcome), text(message), text(provider_error), _retry_after(wait)
        )


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
