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

It checks the control socket and exchanges the request with pizauth.control, as every
client does. Handing over to pizauth.cli is the one import that way round: pizauth.cli
never imports this module.
"""

import _socket
import posix
import sys

from pizauth.control import (
    SOCKET_PATH_MAX,
    ExchangeFailed,
    Refused,
    check_peer,
    check_socket,
    exchange,
)
from pizauth.timeouts import CLIENT_REPLY

RUNTIME_LEAF = b"pizauth"  # as pizauth.paths, in bytes: paths go to the OS as bytes
SOCKET_LEAF = b"pizauth.sock"
_DIR_FLAGS = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC


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
