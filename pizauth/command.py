"""The command child: serves `pizauth` clients on the control socket.

Each client gets its own thread, a bounded request and a deadline, so a client
that connects and never writes delays nobody else (gap 15). Peers whose uid is
not ours are refused. The child parses each request and forwards it to the
parent as a typed message; it never sees a refresh token or client secret, and
wipes the buffer an access token was relayed through.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
import time

from pizauth import ipc, sandbox
from pizauth.ipc import MsgType
from pizauth.process import start_child

log = logging.getLogger("pizauth")

# A restore request carries a dump; nothing else comes near this.
MAX_REQUEST = ipc.MAX_MESSAGE - 1024
READ_DEADLINE = 10.0  # to send a whole request; clients half-close at once
REPLY_TIMEOUT = 30.0
MAX_CLIENTS = 256
UCRED = struct.Struct("3i")

# Requests whose arguments must be empty (spec §3).
NO_ARGS = {
    "dump": MsgType.CMD_DUMP,
    "info": MsgType.CMD_INFO,
    "reload": MsgType.CMD_RELOAD,
    "shutdown": MsgType.CMD_SHUTDOWN,
    "status": MsgType.CMD_STATUS,
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


def parse_request(raw: bytes | bytearray) -> tuple[MsgType, list[ipc.Buffer]]:
    """The message for a client request, or Reply with the answer (spec §3).

    A restore request's dump is passed on as a view of `raw`, not copied, so
    that wiping `raw` afterwards leaves no copy of it in this process.
    """
    colon = raw.find(b":")
    if colon < 0:
        log.warning("Syntactically invalid request '%s'", printable(raw))
        # An empty request is the "already running" probe: it gets no reply (spec §2.3).
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
        return NO_ARGS[name], []
    if name == "restore":
        return MsgType.CMD_RESTORE, [args]
    try:
        text = str(args, "utf-8")
    except UnicodeDecodeError:
        raise Reply("error:Account names must be UTF-8") from None
    if name == "revoke":
        return MsgType.CMD_REVOKE, [text.encode()]
    if name in ("showtoken", "refresh"):
        word, space, account = text.partition(" ")
        if not space:
            # gap 14: the original answers nothing, leaving the client puzzled.
            raise Reply(f"error:Syntactically invalid request '{printable(raw)}'")
        msg_type = MsgType.CMD_SHOW if name == "showtoken" else MsgType.CMD_REFRESH
        return msg_type, [ipc.flag(word == "withurl"), account.encode()]
    log.warning("Invalid command")
    raise Reply(f"error:Unknown command '{name}'")


def read_request(conn: socket.socket) -> bytearray:
    """Everything the client sends until it half-closes, bounded in size and time.

    Read with recv_into into buffers that are wiped when outgrown, since a
    restore request carries tokens and client secrets.
    """
    deadline = time.monotonic() + READ_DEADLINE
    buf, n = bytearray(min(4096, MAX_REQUEST + 1)), 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("client did not finish its request in time")
            conn.settimeout(remaining)
            if n == len(buf):
                bigger = bytearray(min(2 * n, MAX_REQUEST + 1))
                bigger[:n] = buf
                ipc.wipe(buf)
                buf = bigger
            got = conn.recv_into(memoryview(buf)[n:])
            if not got:
                request = bytearray(n)
                request[:] = memoryview(buf)[:n]
                return request
            n += got
            if n > MAX_REQUEST:
                _drain(conn, deadline)
                raise Reply("error:Request too large")
    finally:
        ipc.wipe(buf)


def _drain(conn: socket.socket, deadline: float) -> None:
    """Read and drop the rest of an oversized request, so the client can hear why."""
    scratch = bytearray(65536)
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            conn.settimeout(remaining)
            if not conn.recv_into(scratch):
                return
    except TimeoutError:
        pass
    finally:
        ipc.wipe(scratch)


class CommandChild:
    def __init__(self, channel: ipc.Channel, listener: socket.socket) -> None:
        self.channel = channel
        self.listener = listener
        self.uid = os.getuid()
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)

    def accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError as e:
                log.warning("accepting a client failed: %s", e)
                time.sleep(0.1)
                continue
            if not self.clients.acquire(blocking=False):
                log.warning("too many clients; refusing one")
                conn.close()
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def peer_uid(self, conn: socket.socket) -> int:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        return UCRED.unpack(creds)[1]

    def serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                uid = self.peer_uid(conn)
                if uid != self.uid:
                    log.warning("refused a client with uid %d", uid)
                    return
                self.answer(conn)
        except (OSError, TimeoutError) as e:
            log.warning("client connection: %s", e)
        finally:
            self.clients.release()

    def answer(self, conn: socket.socket) -> None:
        try:
            raw = read_request(conn)
        except Reply as r:
            conn.sendall(r.text.encode() if r.text else b"")
            return
        try:
            msg_type, fields = parse_request(raw)
            reply = self.channel.call(msg_type, fields, REPLY_TIMEOUT)
        except Reply as r:
            if r.text is not None:
                conn.sendall(r.text.encode())
            return
        finally:
            ipc.wipe(raw)  # it may have been a dump
        if reply is None:
            conn.sendall(b"error:pizauth server did not answer in time")
            return
        text = reply.fields[0]
        try:
            conn.settimeout(REPLY_TIMEOUT)
            conn.sendall(text)
        finally:
            ipc.wipe(text)  # it may have been an access token or a dump
        if msg_type == MsgType.CMD_SHUTDOWN:
            # Hold the connection until this process ends, so `pizauth shutdown`
            # returns only once the server is gone.
            threading.Event().wait()

    def handle_reply(self, msg: ipc.Message) -> None:
        if not self.channel.deliver(msg):
            ipc.wipe(msg.fields[0])
            log.debug("reply for a client that gave up waiting")

    def run(self) -> None:
        threading.Thread(target=self.accept_loop, daemon=True).start()
        self.channel.send(MsgType.CMD_READY, 0)
        ipc.serve_parent(self.channel, {MsgType.CMD_REPLY: self.handle_reply}, "command")


def main(argv: list[str]) -> None:
    fds, _ = start_child("pizauth: command", argv)
    # Before the first thread: the filter covers this thread and every one it starts.
    sandbox.confine("command child")
    channel = ipc.Channel(socket.socket(fileno=fds["channel"]))
    CommandChild(channel, socket.socket(fileno=fds["socket"])).run()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
