"""`pizauth server`: start-up, daemonising, and handing over to the parent process.

Everything that can fail for a reason the user must hear about -- another
server running, a bad configuration, a port already taken -- happens before
the daemon detaches, and the invoking `pizauth server` waits until the daemon
answers commands before exiting 0 (docs/compatibility.md "Start-up errors").
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import sys
import time
from typing import TYPE_CHECKING

from pizauth import config as configuration
from pizauth import paths, sandbox
from pizauth.priv.keptlog import CONFIG_PERMISSIONS
from pizauth.priv.listeners import ListenError, bind_listener
from pizauth.process import (
    JOURNAL,
    KEPT,
    STDERR,
    child_args,
    harden,
    log_sink,
    set_title,
    setup_logging,
)
from pizauth.timeouts import SECRET_COMMAND, SERVER_READY

if TYPE_CHECKING:
    from pizauth.priv.keptlog import KeptLog

log = logging.getLogger("pizauth")

READY = b"R"
READY_END = b"\0"  # after READY and any notices: the daemon may keep the pipe open
READY_TIMEOUT = SERVER_READY


class StartError(Exception):
    """A start-up failure, printed raw (no «ERROR - » prefix), as pizauth 1.1 does."""


def already_running(sock_path: str) -> bool:
    """True if a server answers on the socket; a stale socket is removed."""
    if not os.path.lexists(sock_path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sock_path)
        return True
    except OSError:
        os.unlink(sock_path)
        return False
    finally:
        probe.close()


def bind_control(sock_path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)  # the socket itself 0700 (no group or other access), not just its
    # directory (docs/compatibility.md "Socket mode and removal")
    try:
        sock.bind(sock_path)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartError("pizauth authenticator already running") from None
        # Python's own errors (a path too long) have no errno and no strerror.
        raise StartError(f"Can't bind {sock_path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    sock.listen(socket.SOMAXCONN)  # mail clients run `pizauth show` in bursts
    sock.set_inheritable(True)
    return sock


def daemonise(keep_stderr: bool = False, timeout: float = READY_TIMEOUT) -> int | None:
    """Fork into the background. In the invoking process, wait for the daemon (up to
    `timeout`) and return the exit status; in the daemon, return None. With
    `keep_stderr` (the journal's stream) the daemon keeps fd 2."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        answer = _read_until_eof(ready_r, timeout)
        os.close(ready_r)
        if answer.startswith(READY):
            # What went wrong at start that did not stop it (the token store), said where
            # the user started the server.
            notices = answer[len(READY) :].removesuffix(READY_END)
            notices = notices.decode("utf-8", "replace").strip()
            if notices:
                print(notices, file=sys.stderr)
            return 0
        message = answer.decode("utf-8", "replace").strip()
        print(message or "pizauth server failed to start", file=sys.stderr)
        return 1
    os.close(ready_r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.environ["PIZAUTH_READY_FD"] = str(ready_w)
    return None


def _read_until_eof(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return out
        out += chunk
        if out.startswith(READY) and out.endswith(READY_END):
            return out
    return out or b"pizauth server did not become ready in time"


def _ready_pipe() -> int | None:
    fd = os.environ.pop("PIZAUTH_READY_FD", None)
    return int(fd) if fd is not None else None


def main(explicit_config: str | None, foreground: bool, verbosity: int, progname: str) -> int:
    try:
        sock_path = paths.socket_path(paths.runtime_dir())
        too_long = paths.socket_too_long(sock_path)
        if too_long is not None:
            # Before anything is looked at or bound there (docs/compatibility.md "Socket
            # path too long").
            raise StartError(too_long)
        if already_running(sock_path):
            raise StartError("pizauth authenticator already running")
        config_path = paths.config_path(explicit_config)
        config = configuration.load(config_path)
        http = bind_listener(config.http_listen, "http_listen")
        https = bind_listener(config.https_listen, "https_listen")
        if config.token_store:
            paths.expand_home(config.token_store)  # the parent expands it again; fail here
        control = bind_control(sock_path)
    except (StartError, ListenError, paths.PathError, configuration.ConfigError) as e:
        print(e, file=sys.stderr)
        return 1

    sink = log_sink(foreground)  # now: daemonise() replaces stderr
    warning = configuration.permission_warning(config_path, config)
    if warning and sink not in (STDERR, JOURNAL):
        # Detached, the log goes elsewhere: say it also where the user started the server.
        print(f"Warning: {warning}", file=sys.stderr)
    if not foreground:
        # The token store's key command may take its whole timeout before the server
        # serves (a password store waiting for a person).
        timeout = READY_TIMEOUT + (SECRET_COMMAND if config.token_store else 0.0)
        status = daemonise(keep_stderr=sink == JOURNAL, timeout=timeout)
        if status is not None:
            return status
    ready_fd = _ready_pipe()
    # Taken out of the environment so that neither children nor hooks inherit it.
    notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
    harden()
    set_title("pizauth: parent")
    kept, kept_fd = _keep_errors() if sink == KEPT else (None, None)
    setup_logging(verbosity, sink, progname, kept)
    sandbox.report()
    if warning:
        # At error level, as at reload: a warning is not logged without -v.
        log.error("%s", warning, extra={"kept_as": CONFIG_PERMISSIONS})

    from pizauth.priv.parent import Parent, Sockets

    def on_ready(startup_done: bool) -> None:
        """Commands are served; with `startup_done`, startup_cmd has finished too."""
        nonlocal ready_fd
        if startup_done:
            notify_systemd(notify_socket)
        elif ready_fd is not None:
            notices = "".join(f"{line}\n" for line in parent.keeper.start_problems)
            if sink in (STDERR, JOURNAL):
                notices = ""  # the log already went where the user is looking
            message = READY + notices.encode("utf-8", "replace").replace(b"\0", b"?")
            _write_all(ready_fd, message + READY_END)
            os.close(ready_fd)
            ready_fd = None

    parent = Parent(
        config,
        config_path,
        Sockets(control, http, https),
        child_args(verbosity, sink, progname),
        on_ready,
        kept,
        kept_fd,
    )
    try:
        parent.run()
    except Exception as e:
        parent.table.wipe_all()
        log.exception("pizauth server failed")
        if ready_fd is not None:
            os.write(ready_fd, f"pizauth server failed: {e}".encode())
        return 1
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _keep_errors() -> tuple[KeptLog, int]:
    """Detached with no syslog and no journal: errors are kept for `pizauth status`, and
    stderr (inherited by the children) becomes a pipe that the parent reads."""
    from pizauth.priv.keptlog import KeptLog

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    return KeptLog(), read_fd


def notify_systemd(address: str | None) -> None:
    """READY=1 on $NOTIFY_SOCKET when systemd started us as Type=notify."""
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    except OSError as e:
        log.warning("could not notify systemd: %s", e)
