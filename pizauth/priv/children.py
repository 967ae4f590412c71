"""The parent's handle on a child process: start by fork+exec, channel, restart.

A child is `python -m PACKAGE` so that it inherits no memory of the parent; the
descriptors it needs (its channel and any listening socket) are passed
explicitly and named on its command line.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

from pizauth import ipc, runtime, sandbox
from pizauth.priv.state.clock import instant
from pizauth.process import CHILD_PROLOGUE, interrupts_ignored
from pizauth.timeouts import CHILD_STOP

log = logging.getLogger("pizauth")

# A child that keeps dying straight after start is restarted at most this often.
RESTART_DELAY = 0.5
# Bytes queued for a child that does not read them, after which it is dropped (and
# restarted): enough for several of the largest replies, little for the parent's memory.
MAX_OUTBOX = 4 * ipc.MAX_MESSAGE


class Child:
    def __init__(
        self,
        name: str,
        module: str,
        fds: dict[str, int],
        args: list[str],
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        set_writing: Callable[[int, Callable[[], None] | None], None],
        on_frame: Callable[[bytearray], None] = lambda frame: None,
        on_exit: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.module = module
        self.fds = fds
        self.args = args
        self._watch = watch
        self._unwatch = unwatch
        self._set_writing = set_writing
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: runtime.Channel | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0
        # Counts starts: request ids begin again in every new child, so an answer for an
        # earlier one's request must never reach the new one (Parent.client_request_id).
        self.incarnation = 0
        self.on_frame = on_frame
        self.on_exit = on_exit

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-c", CHILD_PROLOGUE, self.module]  # non-dumpable first
        argv += ["--channel", str(theirs.fileno())]
        for key, fd in self.fds.items():
            argv += [f"--{key}", str(fd)]
        argv += self.args
        with interrupts_ignored():
            self.proc = subprocess.Popen(
                argv,
                pass_fds=[theirs.fileno(), *self.fds.values()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        theirs.close()
        fd = ours.fileno()
        self.channel = runtime.Channel(
            ours,
            lambda pending: self._set_writing(fd, self.writable if pending else None),
            MAX_OUTBOX,
        )
        self.started_at = instant()
        self.incarnation += 1
        self.pidfd = os.pidfd_open(self.proc.pid)
        self._watch(fd, self._readable)
        self._watch(self.pidfd, self._exited)
        log.debug("started %s child, pid %d", self.name, self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def send(self, frame: bytearray, secret: bool = False) -> None:
        """Queue a frame; a frame with `secret` set is wiped once it has been written."""
        if self.channel is None:
            if secret:
                ipc.wipe(frame)
            return
        try:
            self.channel.send(frame, secret)
        except runtime.OutboxFull as e:
            log.error("%s child does not read its messages (%s): restarting it", self.name, e)
            self.drop()
        except OSError as e:
            log.warning("%s child channel: %s", self.name, e)
            self.drop()

    def post(self, message: ipc.Wire, request_id: int = 0) -> None:
        """Encode and queue `message`; wiped once written if its type is SECRET.
        ipc.ProtocolError, with nothing queued, if a value is over its limit."""
        self.send(message.encode(request_id), message.SECRET)

    def writable(self) -> None:
        if self.channel is None:
            return
        try:
            self.channel.flush()
        except OSError as e:
            log.warning("%s child channel: %s", self.name, e)
            self.drop()

    def flush(self, timeout: float) -> None:
        """Write what is queued, waiting up to `timeout` (at shutdown)."""
        if self.channel is not None:
            self.channel.flush_blocking(timeout)

    def _readable(self) -> None:
        if self.channel is None:
            return  # dropped earlier in this turn of the loop (a failed write, say)
        try:
            frames = self.channel.read()
        except ipc.ProtocolError as e:
            log.error("protocol error from %s child: %s", self.name, e)
            self.drop()
            return
        except OSError as e:
            log.warning("%s child channel: %s", self.name, e)
            self.drop()
            return
        if frames is None:
            self.drop()
            return
        for frame in frames:
            if self.channel is None:
                ipc.wipe(frame)
                continue
            self.on_frame(frame)

    def drop(self) -> None:
        """Close the channel and end the child; its exit then starts a new one."""
        if self.channel is not None:
            self._unwatch(self.channel.fileno())
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def _exited(self) -> None:
        assert self.proc is not None and self.pidfd is not None
        self.drop()
        code = self.proc.wait()
        self._unwatch(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        if code == -signal.SIGSYS:  # Popen's way of saying "killed by SIGSYS"
            log.error("%s", sandbox.killed_message(f"{self.name} child", self.proc.pid))
        else:
            log.error("%s child (pid %d) exited with status %d", self.name, self.proc.pid, code)
        self.proc = None
        self.on_exit()

    def stop(self) -> None:
        """Terminate and reap (shutdown)."""
        self.drop()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=CHILD_STOP)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.pidfd is not None:
                self._unwatch(self.pidfd)
                os.close(self.pidfd)
                self.pidfd = None
            self.proc = None
