"""The client's side of the control socket: who may answer, and one request/reply exchange.

Every client, the lean `show` (pizauth.fastshow) and every other command (pizauth.client),
uses these, so that there is one of each: `check_socket` and `check_peer`, which every
client runs before it sends a byte (another local user must not be able to answer in the
server's place: a `show` would print that user's token into a mail client, a `restore`
would hand over every token), and `exchange`, the one request/reply exchange on a
connected control socket.

It is on the lean `show` path, so it imports only what an interpreter started without
`site` has already loaded (`sys`, `posix`) and the C module `_socket`: no `os`, no `stat`.
"""

import _socket
import posix
import sys

_CHUNK = 65536
# A Unix socket's address holds at most 108 bytes on Linux; pizauth 1.1 (Rust's standard
# library) and portable programs keep one of them for the terminating NUL.
SOCKET_PATH_MAX = 107
# File types in st_mode (the `stat` module is not loaded without `site`).
_S_IFMT = 0o170000
_S_IFLNK = 0o120000
_S_IFDIR = 0o040000
_S_IFSOCK = 0o140000
_UCRED_SIZE = 12  # struct ucred: pid, uid, gid, each 32 bits


class Refused(Exception):
    """The control socket at a path may not be used: `path` (the socket, or the runtime
    directory holding it) and what is wrong with it (`problem`, which follows «Refusing
    PATH: » in the message)."""

    def __init__(self, path: bytes, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


def _own(path: bytes, kind: int, kind_name: str) -> None:
    st = posix.lstat(path)  # the name itself: a symbolic link is not followed
    fmt = st.st_mode & _S_IFMT
    if fmt == _S_IFLNK:
        raise Refused(path, "it is a symbolic link")
    if fmt != kind:
        raise Refused(path, f"it is not {kind_name}")
    if st.st_uid != posix.getuid():
        raise Refused(path, f"it belongs to another user (uid {st.st_uid})")


def check_socket(path: bytes) -> None:
    """Before connecting to the control socket at `path`: raises Refused unless the
    directory holding it is a directory and the socket a socket, neither a symbolic link,
    both owned by this process's uid; OSError if either cannot be looked at (nothing is
    there: no server)."""
    parent = path.rpartition(b"/")[0] or (b"/" if path[:1] == b"/" else b".")
    _own(parent, _S_IFDIR, "a directory")
    _own(path, _S_IFSOCK, "a socket")


def check_peer(s: _socket.socket, path: bytes) -> None:
    """After connecting `s` to the control socket at `path`, before sending anything:
    raises Refused unless the process that listens there runs as this process's uid.
    SO_PEERCRED gives the credentials, recorded by the kernel, of the process that called
    listen() on the socket: another user cannot make them ours, whoever owns the file."""
    try:
        ucred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED_SIZE)
    except OSError:
        ucred = b""
    if len(ucred) != _UCRED_SIZE:
        raise Refused(path, "the user of the process listening on it cannot be read")
    uid = int.from_bytes(ucred[4:8], sys.byteorder)
    if uid != posix.getuid():
        raise Refused(path, f"the process listening on it belongs to another user (uid {uid})")


class ExchangeFailed(Exception):
    """The exchange failed with `error`, before (`sent` false) or after the request was
    written in full."""

    def __init__(self, sent: bool, error: OSError) -> None:
        super().__init__(sent, error)
        self.sent = sent
        self.error = error


def exchange(s: _socket.socket, payload: bytes) -> bytes:
    """Write `payload` on the connected socket `s`, half-close, read the reply to EOF, and
    close `s`; raises ExchangeFailed."""
    try:
        try:
            s.sendall(payload)
        except OSError as e:
            raise ExchangeFailed(False, e) from None
        try:
            # Half-close: the server reads the request until EOF.
            s.shutdown(_socket.SHUT_WR)
            buf = bytearray()
            while True:
                chunk = s.recv(_CHUNK)
                if not chunk:
                    return bytes(buf)
                buf += chunk
        except OSError as e:
            raise ExchangeFailed(True, e) from None
    finally:
        s.close()
