"""What every pizauth process does with its channels: one runtime for all three.

- RequestIds: the ids that pair a reply with its request, wrapping in one place.
- dispatch: a frame to the handler its type has in the receiver's table; a type
  the receiver has no handler for is a ProtocolError.
- Channel: a non-blocking channel (the parent's to each child, the command
  child's to the parent): whole frames in, a bounded number per turn of the
  loop, and an outbox whose secret frames are wiped once written.
- Calls: the parent's requests in flight to the network child: one id space and
  one pending table, each request answered once, by its result or by the loss of
  the child.
- CallChannel: the network child's blocking channel, shared by its threads,
  where a thread can wait for the reply to its own request.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from pizauth import ipc
from pizauth.ipc import MsgType, Wire

log = logging.getLogger("pizauth")

# A handler gets the request id and the typed message (see ipc.MESSAGES).
Handler = Callable[[int, Any], None]
Handlers = Mapping[MsgType, Handler]

# Frames read from one channel before the loop turns to the others.
FRAMES_PER_TURN = 32


class RequestIds:
    """Request ids from 1 to 2**32 - 1 (0 is for messages that expect no reply)."""

    def __init__(self) -> None:
        self._next = 1

    def allocate(self, in_use: Container[int] = ()) -> int:
        """The next id, skipping any still waiting for its reply."""
        while True:
            request_id = self._next
            self._next = request_id % 0xFFFFFFFF + 1
            if request_id not in in_use:
                return request_id


def dispatch(handlers: Handlers, frame: ipc.Buffer, receiver: str) -> None:
    """Decode `frame` and run its handler. ProtocolError if either fails to agree."""
    msg = ipc.decode(frame)
    handler = handlers.get(msg.type)
    if handler is None:
        raise ipc.ProtocolError(f"{msg.type.name} is not for the {receiver}")
    handler(msg.request_id, ipc.decode_as(msg))


def type_name(frame: ipc.Buffer) -> str:
    """A frame's type as logs name it, whatever the frame holds."""
    try:
        return ipc.MsgType(ipc.HEADER.unpack_from(frame)[0]).name
    except (ValueError, struct.error):
        return "a malformed frame"


class OutboxFull(Exception):
    """The peer does not read what it is sent; its channel is to be dropped."""


@dataclass(slots=True)
class _Queued:
    view: memoryview  # what is left to write
    frame: bytearray
    secret: bool


class Channel:
    """A non-blocking stream channel to a peer process.

    `on_pending(True)` asks the owner's loop to call flush() when the socket is
    writable; `on_pending(False)` stops it. Errors propagate: the owner decides
    whether a peer that breaks the rules is dropped or ends the process.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_pending: Callable[[bool], None],
        max_outbox: int | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._on_pending = on_pending
        self._max_outbox = max_outbox
        self._outbox: deque[_Queued] = deque()
        self._queued = 0  # bytes in the outbox
        self._reader = ipc.FrameReader()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def queued(self) -> int:
        return self._queued

    def send(self, frame: bytearray, secret: bool = False) -> None:
        """Queue `frame` and write what the socket takes. A `secret` frame is wiped
        once written. OutboxFull if the peer has left too much unread."""
        if self._max_outbox is not None and self._queued + len(frame) > self._max_outbox:
            if secret:
                ipc.wipe(frame)
            raise OutboxFull(f"{self._queued} bytes unread")
        self._outbox.append(_Queued(memoryview(frame), frame, secret))
        self._queued += len(frame)
        self.flush()

    def flush(self) -> None:
        while self._outbox:
            head = self._outbox[0]
            try:
                n = self.sock.send(head.view)
            except (BlockingIOError, InterruptedError):
                break
            self._queued -= n
            if n < head.view.nbytes:
                head.view = head.view[n:]
                break
            self._outbox.popleft()
            head.view.release()
            if head.secret:
                ipc.wipe(head.frame)
        self._on_pending(bool(self._outbox))

    def flush_blocking(self, timeout: float) -> None:
        """Write what is queued, waiting up to `timeout` (at shutdown)."""
        self.sock.settimeout(timeout)
        try:
            while self._outbox:
                head = self._outbox.popleft()
                self.sock.sendall(head.view)
                if head.secret:
                    ipc.wipe(head.frame)
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)

    def read(self, max_frames: int = FRAMES_PER_TURN) -> list[bytearray] | None:
        """Whole frames available now (at most `max_frames`), or None at end-of-file."""
        return self._reader.read_from(self.sock, max_frames)

    def close(self) -> None:
        """Wipe what is queued and what was half read, and close."""
        for queued in self._outbox:
            if queued.secret:
                ipc.wipe(queued.frame)
        self._outbox.clear()
        self._queued = 0
        self._reader.wipe()  # a frame cut short may hold half a token
        self.sock.close()


@dataclass(frozen=True, slots=True)
class Call:
    """A request in flight: its type, the result type it expects, and what to do with
    that result or with the loss of the peer."""

    request: type[Wire]
    expects: type[Wire]
    on_result: Callable[[Any], None]
    on_lost: Callable[[], None]


# What a module is given to make a call: Calls.call.
Caller = Callable[[Wire, Callable[[Any], None], Callable[[], None]], int]


class Calls:
    """Requests to one peer that answer each with one result under the same id.

    `post(message, request_id)` encodes and queues a message for the peer (secret
    or not by its type); `results` maps each request type to the one result type it
    is answered with. The request ids, the table of requests in flight and the check
    of every result are here and nowhere else: a module says what it sends and what
    to do with the result (`on_result`) or with the loss of the peer (`on_lost`), and
    exactly one of the two is called, once.
    """

    def __init__(
        self, post: Callable[[Wire, int], None], results: Mapping[type[Wire], type[Wire]]
    ) -> None:
        self._post = post
        self._results = results
        self._ids = RequestIds()
        self.pending: dict[int, Call] = {}

    def call(
        self, message: Wire, on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> int:
        """Send `message`; its request id. ipc.ProtocolError, with nothing sent or
        pending, if it cannot be encoded (a configured value over its limit)."""
        expects = self._results[type(message)]
        request_id = self._ids.allocate(self.pending)
        self._post(message, request_id)
        self.pending[request_id] = Call(type(message), expects, on_result, on_lost)
        return request_id

    def result(self, request_id: int, msg: Any) -> None:
        """A result from the peer (a dispatch handler). One for no request in flight, or
        of another type than its request expects, is a ProtocolError: the peer lies.
        A result its on_result refuses (ProtocolError) stays pending, so that its
        on_lost runs when the peer that sent it is dropped."""
        call = self.pending.get(request_id)
        if call is None:
            raise ipc.ProtocolError(f"{msg.TYPE.name} for unknown request {request_id}")
        if type(msg) is not call.expects:
            raise ipc.ProtocolError(
                f"{msg.TYPE.name} for request {request_id}, a {call.request.TYPE.name}"
            )
        del self.pending[request_id]
        try:
            call.on_result(msg)
        except ipc.ProtocolError:
            self.pending[request_id] = call
            raise

    def lost(self) -> None:
        """The peer is gone: no result will come. Each call's on_lost, once, in the
        order the calls were made; a call made meanwhile waits for the next loss."""
        pending, self.pending = self.pending, {}
        for call in pending.values():
            call.on_lost()


@dataclass(slots=True)
class _Waiter:
    done: threading.Event
    reply: Any = None


class CallChannel:
    """A blocking channel shared by threads: thread-safe sends, and calls that wait
    for the reply with the same request id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._ids = RequestIds()
        self._waiting: dict[int, _Waiter] = {}

    def send(self, message: Wire, request_id: int = 0) -> None:
        frame = message.encode(request_id)
        try:
            with self._lock:
                self.sock.sendall(frame)
        finally:
            ipc.wipe(frame)

    def call(self, message: Wire, timeout: float) -> Any:
        """Send a request and wait for the reply's typed message (None on timeout)."""
        with self._lock:
            request_id = self._ids.allocate(self._waiting)
            waiter = self._waiting[request_id] = _Waiter(threading.Event())
        try:
            self.send(message, request_id)
            waiter.done.wait(timeout)
            return waiter.reply
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def deliver(self, request_id: int, reply: Any) -> bool:
        """Hand a reply to the call waiting for it; False if none is waiting."""
        with self._lock:
            waiter = self._waiting.get(request_id)
        if waiter is None:
            return False
        waiter.reply = reply
        waiter.done.set()
        return True

    def serve(self, handlers: Handlers, receiver: str) -> None:
        """Dispatch the peer's messages until it is gone or breaks the protocol. Each
        frame is wiped once handled: a handler copies what it keeps."""
        reader = ipc.FrameReader()
        while True:
            try:
                frame = ipc.recv_frame(self.sock, reader)
                if frame is None:
                    return
                try:
                    dispatch(handlers, frame, receiver)
                finally:
                    ipc.wipe(frame)
            except ipc.ProtocolError as e:
                log.error("protocol error from parent: %s", e)
                return
            except OSError:
                return
