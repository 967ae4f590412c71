"""The control-socket client behind show, refresh, revoke, reload, status, shutdown, info,
dump and restore.

One request per connection, as in pizauth 1.1: connect, write the request, half-close, read the
reply until EOF. Replies are handled as bytes so a token or status text reaches stdout
exactly as the server sent it, whatever the locale.

Before it sends a byte, every command checks who it is talking to (pizauth.control's
`check_socket` and `check_peer`, which the lean `show` path runs too): the runtime
directory and the socket must be this user's own, and so must the process listening on
it. Otherwise the command fails, naming the path and what is wrong with it.

`pizauth show` runs every few minutes from mail clients, so this module stays lean: it
uses the C module `_socket` rather than `socket` (whose Python wrapper also imports
`selectors`, `enum`, `array`, ... — about 4 ms, more than all of pizauth's own code on
this path) and nothing else beyond pizauth.paths, pizauth.timeouts and pizauth.control
(whose `exchange` it uses, as the lean `show` in pizauth.fastshow does).
"""

import _socket
import os
import time

from pizauth.control import ExchangeFailed, Refused, check_peer, check_socket, exchange
from pizauth.paths import display_path, os_error_text, socket_too_long
from pizauth.timeouts import CLIENT_REPLY

# How long to wait for the server at each step (connect, write, each read). The server
# answers every request from memory, so a healthy one replies in milliseconds; 60 s
# leaves ample room for a loaded machine, while a wedged server (or something else
# listening on our socket) cannot hang the mail client that called `pizauth show`
# forever.
REPLY_TIMEOUT = CLIENT_REPLY

NOT_RUNNING = "pizauth authenticator not running or not responding"
NOT_WRITEABLE = "Socket not writeable"


class ClientError(Exception):
    """A failed client command; str(exc) is what the user sees after «ERROR - »."""


class Untrusted(ClientError):
    """The control socket, its directory or the process listening on it is not this
    user's own: nothing was sent."""


def not_running(sock_path: str) -> ClientError:
    """pizauth 1.1's message, then the socket tried: a cron job without $XDG_RUNTIME_DIR
    looks elsewhere than the server it means (docs/compatibility.md "Socket path in
    errors"). A script matching the old text as a prefix still matches."""
    return ClientError(f"{NOT_RUNNING} (socket: {display_path(sock_path)})")


def _untrusted(e: Refused) -> Untrusted:
    return Untrusted(f"Refusing {display_path(os.fsdecode(e.path))}: {e.problem}")


def _connect(sock_path: str, timeout: float | None) -> _socket.socket:
    too_long = socket_too_long(sock_path)
    if too_long is not None:
        raise ClientError(too_long)
    path = os.fsencode(sock_path)
    try:
        check_socket(path)
    except Refused as e:
        raise _untrusted(e) from None
    except OSError:
        # Nothing there (or nothing this user may look at): no server to talk to.
        raise not_running(sock_path) from None
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                s.connect(path)
                break
            except BlockingIOError:
                # A Unix socket whose backlog is full refuses a connect with a timeout at
                # once (EAGAIN): the server is busy, not gone, so try again until the timeout.
                if deadline is not None and time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
    except OSError:
        # A stale socket, one removed an instant ago, a full backlog that outlasts the
        # timeout: to the user these all mean the same thing.
        s.close()
        raise not_running(sock_path) from None
    try:
        check_peer(s, path)
    except Refused as e:
        s.close()
        raise _untrusted(e) from None
    return s


def request(sock_path: str, payload: bytes, *, timeout: float | None = REPLY_TIMEOUT) -> bytes:
    """Send one request to the server at `sock_path` and return its whole reply.

    Raises ClientError: Untrusted if the socket or its listener is not this user's own,
    «…not running or not responding (socket: PATH)» if the connection cannot be made or
    no reply arrives within `timeout`, «Socket not writeable» if the request cannot be
    sent, otherwise the OS error text.
    """
    s = _connect(sock_path, timeout)
    try:
        return exchange(s, payload)
    except ExchangeFailed as e:
        raise failure(e, sock_path) from None


def failure(e: ExchangeFailed, sock_path: str) -> ClientError:
    """What the user is told when the exchange on the connected socket at `sock_path`
    failed."""
    if not e.sent:
        return ClientError(NOT_WRITEABLE)
    if isinstance(e.error, TimeoutError):
        return not_running(sock_path)
    return ClientError(os_error_text(e.error))


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def malformed(reply: bytes) -> ClientError:
    """The error for a reply that does not have an expected form."""
    return ClientError(f"Malformed response '{_text(reply)}'")


def _split(reply: bytes) -> tuple[bytes, bytes | None]:
    """Split a reply at its first «:» into (kind, rest); rest is None without a colon."""
    kind, colon, rest = reply.partition(b":")
    return kind, (rest if colon else None)


def _unavailable(url: bytes) -> ClientError:
    # With `-u` the server sends `pending:` with no URL; the original then printed
    # «...with URL » with a dangling space. Only mention a URL if there is one
    # (docs/compatibility.md "Pending without a URL").
    if not url:
        return ClientError("Access token unavailable until authorised")
    return ClientError(f"Access token unavailable until authorised with URL {_text(url)}")


def _fail(reply: bytes, *, pending_ok: bool = False) -> ClientError:
    """The error for any reply that is not the command's success form."""
    kind, rest = _split(reply)
    if rest is not None:
        if kind == b"error":
            return ClientError(_text(rest))  # a «Last error» line, if any, follows as sent
        if pending_ok and kind == b"pending":
            # The URL ends at a newline: after it a server may add one «Last error» line
            # (docs/protocol.md "Last error").
            url, newline, extra = rest.partition(b"\n")
            return ClientError(str(_unavailable(url)) + (("\n" + _text(extra)) if newline else ""))
    return malformed(reply)


def expect_ok(reply: bytes) -> None:
    """Interpret a reload/revoke/restore reply: exactly `ok:` is success."""
    if reply != b"ok:":
        raise _fail(reply)


def _token_request(kind: bytes, account: str, with_url: bool) -> bytes:
    # fsencode: an account name given as undecodable bytes on the command line goes
    # back to the server as those same bytes.
    return kind + (b":withurl " if with_url else b":withouturl ") + os.fsencode(account)


def show_token(sock_path: str, account: str, with_url: bool = True) -> bytes:
    """The access token for `account` (without a newline)."""
    reply = request(sock_path, _token_request(b"showtoken", account, with_url))
    return show_result(reply, sock_path)


def show_result(reply: bytes | ExchangeFailed, sock_path: str) -> bytes:
    """The token in a `showtoken` reply from the socket at `sock_path`, else the
    ClientError `show` reports. The lean path (pizauth.fastshow) hands over every outcome
    but a token here, so that both say the same."""
    if isinstance(reply, ExchangeFailed):
        raise failure(reply, sock_path)
    kind, rest = _split(reply)
    if kind == b"access_token" and rest is not None:
        return rest
    raise _fail(reply, pending_ok=True)


def refresh(sock_path: str, account: str, with_url: bool = True) -> None:
    """Ask the server to refresh `account`'s token; success means `scheduled:`."""
    reply = request(sock_path, _token_request(b"refresh", account, with_url))
    if reply != b"scheduled:":
        raise _fail(reply, pending_ok=True)


def revoke(sock_path: str, account: str) -> None:
    expect_ok(request(sock_path, b"revoke:" + os.fsencode(account)))


def reload(sock_path: str) -> None:
    expect_ok(request(sock_path, b"reload:"))


def status(sock_path: str) -> bytes:
    """The status text (one line per account, without a final newline)."""
    reply = request(sock_path, b"status:")
    kind, rest = _split(reply)
    if kind == b"ok" and rest is not None:
        return rest
    raise _fail(reply)


def dump(sock_path: str) -> bytes:
    """The server's dump, uninterpreted, unless it is an `error:` reply.

    The original copies any reply to stdout. Ours can be an error (the server did not
    answer in time, the dump is too large), and `pizauth dump > file` must not replace
    a good dump with that text and exit 0. A real dump starts with a random nonce, which
    begins with «error:» once in 2**48 dumps.
    """
    reply = request(sock_path, b"dump:")
    if reply.startswith(b"error:"):
        raise _fail(reply)
    return reply


def restore(sock_path: str, data: bytes) -> None:
    """Hand a dump (already read in full by the caller) back to the server."""
    expect_ok(request(sock_path, b"restore:" + data))


def shutdown(sock_path: str, *, timeout: float | None = REPLY_TIMEOUT) -> None:
    """Ask the server to shut down and wait until it has closed the connection.

    Success only depends on the request being written; what happens afterwards (EOF,
    a reply, a reset, a timeout) is ignored. Waiting for EOF means `pizauth shutdown`
    returns once the server is gone, instead of racing it as the original did.
    """
    s = _connect(sock_path, timeout)
    try:
        exchange(s, b"shutdown:")
    except ExchangeFailed as e:
        if not e.sent:
            raise failure(e, sock_path) from None


def login(sock_path: str, account: str) -> tuple[bytes, bytes, bytes] | None:
    """The URL of `account`'s pending login, starting one if none is under way, as
    (URL, user code or b"", last error line or b""); None if the account has a token.

    It asks what `pizauth show` asks, so a login starts exactly as `show` starts one; the
    token of an account that has one is read and dropped, never printed.
    """
    reply = request(sock_path, _token_request(b"showtoken", account, True))
    kind, rest = _split(reply)
    if kind == b"access_token" and rest is not None:
        return None
    if kind == b"pending" and rest:
        # `URL` or, for a device login, `URL and code CODE`; a «Last error» line may follow
        # (docs/protocol.md). A URL has no spaces.
        first, _, last_error = rest.partition(b"\n")
        url, _, code = first.partition(b" and code ")
        if url and b" " not in url:
            return url, code, last_error
    raise _fail(reply, pending_ok=True)
