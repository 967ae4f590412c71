"""The command child: serves `pizauth` clients on the control socket.

One thread and one selector serve every client, each with a bounded request
and a deadline, so a client that connects and never writes delays nobody else,
and a burst of mail clients costs no thread start-ups. Peers whose uid is not
ours are refused. The child parses each request and forwards it to the parent
as a typed message; it never sees a refresh token or client secret, and wipes
the buffer an access token or a dump was relayed through.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from pizauth import ipc, limits, runtime, sandbox
from pizauth.ipc import Buffer, MsgType
from pizauth.process import start_child
from pizauth.timeouts import COMMAND_READ as READ_DEADLINE
from pizauth.timeouts import COMMAND_REPLY as REPLY_TIMEOUT

log = logging.getLogger("pizauth")

# A restore request carries a dump; nothing else comes near this.
MAX_REQUEST = ipc.MAX_RESTORE
MAX_CLIENTS = 512  # open at once; well inside the usual 1024 descriptors
UCRED = struct.Struct("3i")

# Requests whose arguments must be empty.
NO_ARGS: dict[str, ipc.Wire] = {
    "dump": ipc.CmdDump(),
    "info": ipc.CmdInfo(),
    "reload": ipc.CmdReload(),
    "shutdown": ipc.CmdShutdown(),
    "status": ipc.CmdStatus(),
}


class Reply(Exception):
    """A request answered by the child itself, without asking the parent."""

    def __init__(self, text: str | None) -> None:
        super().__init__(text)
        self.text = text


def printable(raw: bytes | bytearray, limit: int = 200) -> str:
    """A request as logs and error replies show it, cut short if long."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "<can't represent as UTF-8>"
    return text if len(text) <= limit else text[:limit] + "..."


def parse_request(raw: bytes | bytearray) -> ipc.Wire:
    """The message for a client request, or Reply with the answer.

    A restore request's dump is passed on as a view of `raw`, not copied, so
    that wiping `raw` afterwards leaves no copy of it in this process.
    """
    colon = raw.find(b":")
    if colon < 0:
        log.warning("Syntactically invalid request '%s'", printable(raw))
        # An empty request is the "already running" probe: it gets no reply.
        raise Reply(f"error:Syntactically invalid request '{printable(raw)}'" if raw else None)
    command, args = bytes(raw[:colon]), memoryview(raw)[colon + 1 :]
    try:
        name = command.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("Syntactically invalid request '%s'", printable(raw))
        raise Reply(f"error:Syntactically invalid request '{printable(raw)}'") from None
    if name in NO_ARGS:
        if args.nbytes:
            raise Reply(f"error:Unknown command '{name}'")
        return NO_ARGS[name]
    if name == "restore":
        return ipc.CmdRestore(args)
    try:
        text = str(args, "utf-8")
    except UnicodeDecodeError:
        raise Reply("error:Account names must be UTF-8") from None
    if name == "revoke":
        return ipc.CmdRevoke(_account(text))
    if name in ("showtoken", "refresh"):
        word, space, account = text.partition(" ")
        if not space:
            # pizauth 1.1 answers nothing here, leaving the client puzzled.
            raise Reply(f"error:Syntactically invalid request '{printable(raw)}'")
        kind = ipc.CmdShow if name == "showtoken" else ipc.CmdRefresh
        return kind(word == "withurl", _account(account))
    log.warning("Invalid command")
    raise Reply(f"error:Unknown command '{name}'")


def _account(name: str) -> str:
    """A name no account can have (longer than any message may carry) is answered here,
    as the parent would answer it."""
    if len(name.encode()) > limits.MAX_ACCOUNT_NAME:
        raise Reply(f"error:No account '{name}'")
    return name


class RequestBuffer:
    """A client's request, read as it arrives until the client half-closes.

    Read with recv_into into buffers that are wiped when outgrown or done with,
    since a restore request carries tokens and client secrets. Past MAX_REQUEST
    the rest is read and dropped, so that the client can still hear why.
    """

    def __init__(self) -> None:
        self.buf = bytearray(min(4096, MAX_REQUEST + 1))
        self.n = 0
        self.too_large = False

    def read_from(self, conn: socket.socket) -> bytearray | None:
        """Read what is there. At end-of-file the request (a copy of exactly its
        bytes: the caller wipes it), or Reply if it was too large; else None."""
        while True:
            if self.n == len(self.buf):
                if self.too_large:
                    self.n = 0  # draining: reuse the buffer
                else:
                    bigger = bytearray(min(2 * self.n, MAX_REQUEST + 1))
                    memoryview(bigger)[: self.n] = memoryview(self.buf)[: self.n]
                    ipc.wipe(self.buf)
                    self.buf = bigger
            try:
                got = conn.recv_into(memoryview(self.buf)[self.n :])
            except (BlockingIOError, InterruptedError):
                return None
            if not got:
                if self.too_large:
                    raise Reply("error:Request too large")
                request = bytearray(self.n)
                # View to view: a bytearray slice assigned from a memoryview would make a
                # temporary copy of the request (a dump, perhaps) and free it unwiped.
                memoryview(request)[:] = memoryview(self.buf)[: self.n]
                return request
            self.n += got
            if self.n > MAX_REQUEST:
                self.too_large = True

    def wipe(self) -> None:
        """Zero the request and let its memory go."""
        ipc.wipe(self.buf)
        self.buf = bytearray()


@dataclass(eq=False)
class Client:
    sock: socket.socket
    deadline: float
    request: RequestBuffer = field(default_factory=RequestBuffer)
    reply: memoryview | None = None  # what is left to write
    reply_frame: bytearray | None = None  # the parent's frame it lies in, wiped once written
    request_id: int | None = None  # while the parent is answering it
    hold: bool = False  # after replying to shutdown: keep the connection until we exit


class CommandChild:
    def __init__(self, channel: socket.socket, listener: socket.socket) -> None:
        self.channel = runtime.Channel(channel, self._parent_pending)
        self.listener = listener
        self.uid = os.getuid()
        self.sel = selectors.DefaultSelector()
        self.waiting: dict[int, Client] = {}  # request id -> client awaiting the parent
        self.ids = runtime.RequestIds()
        self.handlers: runtime.Handlers = {MsgType.CMD_REPLY: self.handle_reply}
        self.deadlines: list[tuple[float, int, Client]] = []
        self.tiebreak = itertools.count()
        self.clients = 0
        self.held: list[Client] = []  # shutdown clients, answered, open until we exit

    # -- clients ------------------------------------------------------------------------------

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accepting a client failed: %s", e)
                return
            uid = self.peer_uid(conn)
            if uid != self.uid:
                log.warning("refused a client with uid %d", uid)
                conn.close()
                continue
            if self.clients >= MAX_CLIENTS:
                log.warning("too many clients; refusing one")
                conn.close()
                continue
            conn.setblocking(False)
            client = Client(conn, time.monotonic() + READ_DEADLINE)
            self.clients += 1
            self.sel.register(conn, selectors.EVENT_READ, lambda c=client: self.readable(c))
            self.expire_at(client)

    def peer_uid(self, conn: socket.socket) -> int:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        return UCRED.unpack(creds)[1]

    def expire_at(self, client: Client) -> None:
        heapq.heappush(self.deadlines, (client.deadline, next(self.tiebreak), client))

    def readable(self, client: Client) -> None:
        try:
            raw = client.request.read_from(client.sock)
        except Reply as r:
            self.answer(client, (r.text or "").encode())
            return
        except OSError as e:
            log.warning("client connection: %s", e)
            self.close(client)
            return
        if raw is None:
            return
        self.sel.unregister(client.sock)
        try:
            message = parse_request(raw)
            request_id = self.ids.allocate(self.waiting)
            self.channel.send(message.encode(request_id), secret=True)  # it may carry a dump
        except Reply as r:
            self.answer(client, (r.text or "").encode())
            return
        finally:
            ipc.wipe(raw)  # it may have been a dump
        client.hold = isinstance(message, ipc.CmdShutdown)
        client.deadline = time.monotonic() + REPLY_TIMEOUT
        client.request_id = request_id
        self.expire_at(client)
        self.waiting[request_id] = client

    def answer(self, client: Client, text: Buffer, frame: bytearray | None = None) -> None:
        """Write `text` to the client (it lies in `frame`, if the parent sent it)."""
        client.request.wipe()
        client.reply, client.reply_frame = memoryview(text), frame
        client.deadline = time.monotonic() + REPLY_TIMEOUT
        self.expire_at(client)
        if self._registered(client):
            self.sel.modify(client.sock, selectors.EVENT_WRITE, lambda: self.writable(client))
        else:
            self.sel.register(client.sock, selectors.EVENT_WRITE, lambda: self.writable(client))
        self.writable(client)

    def _registered(self, client: Client) -> bool:
        try:
            self.sel.get_key(client.sock)
            return True
        except KeyError:
            return False

    def writable(self, client: Client) -> None:
        assert client.reply is not None
        try:
            while client.reply.nbytes:
                client.reply = client.reply[client.sock.send(client.reply) :]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("client connection: %s", e)
        if client.hold and client.reply.nbytes == 0:
            # Keep the connection open until this process ends, so that `pizauth shutdown`
            # returns only once the server is gone.
            self._forget(client)
            self.held.append(client)
            return
        self.close(client)

    def _forget(self, client: Client) -> None:
        if client.reply_frame is not None:
            ipc.wipe(client.reply_frame)  # it may have held an access token or a dump
            client.reply_frame = None
        client.reply = None
        if self._registered(client):
            self.sel.unregister(client.sock)

    def close(self, client: Client) -> None:
        if client.sock.fileno() < 0:
            return
        self._forget(client)
        client.request.wipe()
        client.sock.close()
        self.clients -= 1
        if len(self.deadlines) > 4 * self.clients + 64:
            # Done clients' entries otherwise stay until their deadline: drop them now.
            self.deadlines = [e for e in self.deadlines if e[2].sock.fileno() >= 0]
            heapq.heapify(self.deadlines)

    def next_deadline(self) -> float | None:
        """The earliest deadline that still matters. Entries of clients that are done, or
        whose deadline has moved, are dropped here, so they cost no wake-up."""
        while self.deadlines:
            deadline, _, client = self.deadlines[0]
            if client.deadline == deadline and client.sock.fileno() >= 0 and not client.hold:
                return deadline
            heapq.heappop(self.deadlines)
        return None

    def expire(self, now: float) -> None:
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, client = heapq.heappop(self.deadlines)
            if client.reply is not None:
                self.close(client)  # it does not read its reply
            elif client.request_id is not None:
                del self.waiting[client.request_id]
                client.request_id = None
                self.answer(client, b"error:pizauth server did not answer in time")
            else:
                log.warning("client did not finish its request in time")
                self.close(client)

    # -- the parent ---------------------------------------------------------------------------

    def _parent_pending(self, pending: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        if self.sel.get_key(self.channel.sock).events != events:
            self.sel.modify(self.channel.sock, events)

    def from_parent(self, mask: int = selectors.EVENT_READ) -> bool:
        """Handle the parent's frames; False once the parent is gone or breaks the protocol."""
        try:
            if mask & selectors.EVENT_WRITE:
                self.channel.flush()
            if not mask & selectors.EVENT_READ:
                return True
            frames = self.channel.read()
        except (ipc.ProtocolError, OSError) as e:
            log.error("channel to parent: %s", e)
            return False
        if frames is None:
            return False
        for i, frame in enumerate(frames):
            try:
                runtime.dispatch(self.handlers, frame, "command child")
            except ipc.ProtocolError as e:
                for unread in frames[i:]:
                    ipc.wipe(unread)
                log.error("protocol error from parent: %s", e)
                return False
        return True

    def handle_reply(self, request_id: int, reply: ipc.CmdReply) -> None:
        """The parent's answer: written to the client from the frame it came in, which is
        wiped once written (it may hold a token or a dump)."""
        frame = memoryview(reply.text).obj  # decoded fields are views of their frame
        assert isinstance(frame, bytearray)
        client = self.waiting.pop(request_id, None)
        if client is None:
            ipc.wipe(frame)
            log.debug("reply for a client that gave up waiting")
            return
        client.request_id = None
        self.answer(client, reply.text, frame)

    def run(self) -> None:
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self.accept)
        self.sel.register(self.channel.sock, selectors.EVENT_READ, self.from_parent)
        self.channel.send(ipc.CmdReady().encode(0))
        while True:
            deadline = self.next_deadline()
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            for key, mask in self.sel.select(timeout):
                if key.fileobj is self.channel.sock:
                    if not self.from_parent(mask):
                        return
                else:
                    key.data()
            self.expire(time.monotonic())


def main(argv: list[str]) -> None:
    fds, _ = start_child("pizauth: command", argv)
    sandbox.confine_command()
    channel = socket.socket(fileno=fds["channel"])
    CommandChild(channel, socket.socket(fileno=fds["socket"])).run()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
