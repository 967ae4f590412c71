"""The lean path of `pizauth show ACCOUNT`, which mail clients run every few minutes.

bin/pizauth runs `main` for a `show`. It uses only modules that an interpreter started
without `site` has already loaded (`sys`, `posix`), plus the C module `_socket`: no `os`
(about 2.5 ms with what it imports), no pizauth.cli. It handles the common case itself:
`show [-u] ACCOUNT`, a private runtime directory under $XDG_RUNTIME_DIR, a server that
answers with a token. Anything else it leaves to the full command line, so that every
message and exit status stays the one pizauth.cli gives:

- an unusual command line or runtime directory: pizauth.cli.main runs the whole command,
  before anything has been sent to the server;
- a control socket that is not there, not this user's own or not answered by this user's
  process, or a failure to connect: pizauth.cli.main runs the whole command, which looks
  again and says what it finds; nothing has been sent;
- any reply but a token, or a failure once connected: pizauth.cli.finish_show reports
  that outcome. The request is never sent twice: `show` changes the server's state (its
  first call for an account may start a refresh).

Two things here are used by pizauth.client for every command, so that there is one of
each: `check_socket` and `check_peer`, which every client runs before it sends a byte
(another local user must not be able to answer in the server's place: a `show` would
print that user's token into a mail client, a `restore` would hand over every token),
and `exchange`, the one request/reply exchange on a connected control socket.
"""

import _socket
import posix
import sys

from pizauth.timeouts import CLIENT_REPLY

RUNTIME_LEAF = b"pizauth"  # as pizauth.paths, in bytes: paths go to the OS as bytes
SOCKET_LEAF = b"pizauth.sock"
_CHUNK = 65536
_DIR_FLAGS = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
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


def _join(base: bytes, leaf: bytes) -> bytes:
    # As os.path.join for a relative leaf: no doubled slash, which would count against
    # the length limit of a socket address.
    return base + leaf if base.endswith(b"/") else base + b"/" + leaf


def _private_dir(p: bytes) -> bool:
    """What pizauth.paths does to a runtime directory outside a shared one, but quietly:
    False for anything it would complain about."""
    try:
        posix.mkdir(p, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        fd = posix.open(p, _DIR_FLAGS)
    except OSError:
        return False
    try:
        if posix.fstat(fd).st_uid != posix.getuid():
            return False
        posix.fchmod(fd, 0o700)
    except OSError:
        return False
    finally:
        posix.close(fd)
    return True


def _socket_path() -> bytes | None:
    """The control socket, as pizauth.paths finds it, if that needs nothing unusual."""
    base = posix.environ.get(b"XDG_RUNTIME_DIR")
    # Unset or empty: the runtime directory goes into a shared /tmp, whose checks and
    # messages are pizauth.paths' alone.
    if not base or not _private_dir(base):
        return None
    rundir = _join(base, RUNTIME_LEAF)
    if not _private_dir(rundir):
        return None
    return _join(rundir, SOCKET_LEAF)


def _request(argv: list[str]) -> bytes | None:
    """The `showtoken` request for `show [-u] ACCOUNT`, None for any other command line."""
    if len(argv) == 3:
        with_url, account = True, argv[2]
    elif len(argv) == 4 and argv[2] == "-u":
        with_url, account = False, argv[3]
    else:
        return None
    # An option where the account should be: the full parser says what is wrong.
    if len(account) > 1 and account[0] == "-":
        return None
    # As os.fsencode: an undecodable account name goes back as the bytes it was given as.
    name = account.encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
    return (b"showtoken:withurl " if with_url else b"showtoken:withouturl ") + name


def _connect(path: bytes) -> _socket.socket | None:
    """The connected socket, checked; None for anything else. Nothing has been sent yet,
    so the full path may look again and say what it finds."""
    if len(path) > SOCKET_PATH_MAX:
        return None
    try:
        check_socket(path)
    except (OSError, Refused):
        return None
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(CLIENT_REPLY)
    try:
        s.connect(path)
        check_peer(s, path)
    except (OSError, Refused):
        # Not running, a full backlog (which pizauth.client waits out), or not ours.
        s.close()
        return None
    return s


def _write(data: bytes) -> int:
    """As pizauth.cli writes to stdout: 1 if that fails, with fd 1 then pointed at
    /dev/null so that the interpreter's final flush does not complain."""
    out = sys.stdout
    try:
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
    except OSError:
        try:
            posix.dup2(posix.open("/dev/null", posix.O_WRONLY), out.fileno())
        except (OSError, ValueError):
            pass
        return 1
    return 0


def _show(argv: list[str]) -> int:
    request = _request(argv) if argv[1:2] == ["show"] else None
    path = _socket_path() if request is not None else None
    streams = sys.stdout is not None and sys.stderr is not None
    s = _connect(path) if path is not None and streams else None
    if s is None:
        from pizauth.cli import main

        return main(argv)
    outcome: bytes | ExchangeFailed
    try:
        outcome = exchange(s, request)
    except ExchangeFailed as e:
        outcome = e
    if isinstance(outcome, bytes) and outcome.startswith(b"access_token:"):
        if _write(outcome[13:] + b"\n") != 0:
            return 1
        # Done, and everything written: leave without the interpreter's clean-up, which
        # takes longer than all of the above (this process registered no atexit handler
        # and holds nothing that needs closing).
        posix._exit(0)
    from pizauth.cli import finish_show

    return finish_show(outcome, path)


def main(argv: list[str] | None = None) -> int:
    """Run `pizauth show …` (`argv`, default sys.argv); return the exit status, or, once
    a token has been printed, end the process with status 0."""
    try:
        return _show(sys.argv if argv is None else argv)
    except KeyboardInterrupt:
        # As pizauth.cli: Ctrl-C is exit status 1, no traceback.
        return 1
