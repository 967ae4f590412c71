"""Running a user command whose stdout is secret material, without blocking the parent.

`client_secret_cmd` and `token_store_key_cmd` run as `$SHELL -c COMMAND` (/bin/sh
when SHELL is unset) the one way every user command runs (priv/run/usercmd.py): under
a reaper that is a child subreaper, stdin from /dev/null, in a session of their
own, with no descriptor of the server. A timeout, the server's shutdown and its
death (even by SIGKILL) kill everything the command started, including what left
its session.

The output is complete when the command's shell has exited: the reaper then
kills what it left running (a background process holding stdout open cannot
delay the result) and exits, and what is in the pipe is read, bounded by the
limits below, without waiting for an end of file.

The command writes its stdout straight into a pipe the parent reads (the reaper
only holds the write end, never reads it). The output goes from the pipe into a
bytearray of fixed size (a growing one would leave copies behind when
reallocated), from there into a Secret, and the bytearray is wiped: it never
becomes a str or bytes. stderr is read only for its first line, which goes, made
printable and short, into every error message; stdout is never quoted.

The parent's loop drives it like priv/run/hooks.HookRunner: `watch(fd, callback)` and
`unwatch(fd)` register descriptors with its selector, `next_deadline()` and
`enforce_timeouts(now)` fit its timer, and `on_done` receives a Secret (which the
receiver owns and must wipe) or a CommandError. `run_blocking` does the same with
a selector of its own, for start-up.
"""

from __future__ import annotations

import errno
import os
import selectors
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pizauth import ipc, limits
from pizauth.priv.run import usercmd
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.timeouts import SECRET_COMMAND

# How long a command may take: long enough for a person to unlock a password store.
TIMEOUT = SECRET_COMMAND
# Store key material: enough for any key file or passphrase; less than 32 bytes is
# too little entropy to be worth sealing tokens with.
MIN_KEY = 32
MAX_KEY = 4 * 1024
# After a client secret's first line, the rest of stdout is read and thrown away (a
# `pass show` entry has more lines), up to this much.
MAX_DISCARDED = 64 * 1024
# The part of stderr kept for the error message.
MAX_STDERR_LINE = 200
# What one turn of the loop reads of a command's stderr, beyond the part kept.
MAX_STDERR_READ = 64 * 1024
_READ_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Output:
    """What a command must print, and what the error messages call it."""

    name: str  # the config option, e.g. "client_secret_cmd"
    first_line: bool  # the first line less "\n"; else all of it less one trailing "\n"
    min_bytes: int
    max_bytes: int


CLIENT_SECRET = Output("client_secret_cmd", True, 1, limits.MAX_CLIENT_SECRET)
STORE_KEY = Output("token_store_key_cmd", False, MIN_KEY, MAX_KEY)


@dataclass(frozen=True, slots=True)
class CommandError:
    """Why a command gave no secret; `message` is for the user (log, error_notify_cmd)."""

    message: str


Result = Secret | CommandError
Done = Callable[[Result], None]


@dataclass(eq=False)
class _Job:
    output: Output
    proc: subprocess.Popen[bytes]
    pidfd: int
    stdout: int | None
    stderr: int | None
    # The timeout; once the reaper was told to stop, when it is killed if still there.
    deadline: float
    on_done: Done
    timeout: float
    # Sized once: the secret plus its newline, plus one byte to notice too much.
    buf: bytearray = field(default_factory=bytearray)
    have: int = 0
    line_end: int | None = None  # first-line mode: where the first "\n" is
    discarded: int = 0
    err: bytearray = field(default_factory=lambda: bytearray(MAX_STDERR_LINE * 4))
    err_have: int = 0
    too_much: str | None = None
    timed_out: bool = False
    stopping: bool = False  # the reaper was told to kill it all
    killed: bool = False  # ...and, as it did not, was killed


class SecretCommands:
    """Runs secret commands and reports each result once through its `on_done`;
    `clock()` is the instant now, the clock of whoever calls enforce_timeouts."""

    def __init__(
        self,
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = instant,
    ) -> None:
        self._clock = clock
        self._watch = watch
        self._unwatch = unwatch
        self.timeout = timeout
        self.running: list[_Job] = []

    def start(self, cmd: str, output: Output, env: Mapping[str, str], on_done: Done) -> None:
        """Start `cmd`; `env` is added to the server's environment (e.g. PIZAUTH_ACCOUNT).

        Never raises for a command that cannot be started: on_done gets a CommandError,
        possibly before start returns.
        """
        shell = os.environ.get("SHELL") or "/bin/sh"
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            # The write ends go to the command as they are: its output never passes
            # through the reaper.
            started = usercmd.start(
                usercmd.find_shell(shell),
                cmd,
                env,
                stdout=out_w,
                stderr=err_w,
                end_with_shell=True,
            )
        except (OSError, ValueError) as e:
            for fd in (out_r, err_r):
                os.close(fd)
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            on_done(CommandError(f"{output.name}: cannot run {shell}: {reason}"))
            return
        finally:
            os.close(out_w)
            os.close(err_w)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        job = _Job(
            output,
            started.proc,
            started.pidfd,
            out_r,
            err_r,
            self._clock() + self.timeout,
            on_done,
            self.timeout,
            bytearray(output.max_bytes + (1 if output.first_line else 2)),
        )
        self.running.append(job)
        self._watch(out_r, lambda: self._read_stdout(job))
        self._watch(err_r, lambda: self._read_stderr(job))
        self._watch(started.pidfd, lambda: self._exited(job))

    # -- events -----------------------------------------------------------------------

    def _read_stdout(self, job: _Job) -> None:
        """Read what stdout holds now; bounded, as each read fills the secret's buffer
        or counts towards MAX_DISCARDED."""
        while job.stdout is not None:
            if job.line_end is None and job.have < len(job.buf):
                target = memoryview(job.buf)[job.have :]
                n = _read_into(job.stdout, target)
                target.release()
                if n is None:
                    return
                if n == 0:
                    self._close_stdout(job)
                    return
                start, job.have = job.have, job.have + n
                if job.output.first_line:
                    end = job.buf.find(b"\n", start, job.have)
                    if end >= 0:
                        # Keep the line; what followed it in this read is not the secret.
                        job.line_end = end
                        job.discarded = job.have - end - 1
                        ipc.wipe(memoryview(job.buf)[end:])
                        job.have = end
                continue
            if job.line_end is None:
                # The buffer is full and no line ended (or the key is too long).
                self._overflow(job)
                return
            scratch = bytearray(_READ_CHUNK)
            n = _read_into(job.stdout, memoryview(scratch))
            ipc.wipe(scratch)
            if n is None:
                return
            if n == 0:
                self._close_stdout(job)
                return
            job.discarded += n
            if job.discarded > MAX_DISCARDED:
                self._overflow(job)
                return

    def _read_stderr(self, job: _Job, budget: int = MAX_STDERR_READ) -> None:
        """Keep the start of stderr, throw the rest away; at most `budget` bytes a call,
        so that a command that floods stderr cannot hold the loop."""
        while job.stderr is not None and budget > 0:
            if job.err_have < len(job.err):
                target = memoryview(job.err)[job.err_have :]
                n = _read_into(job.stderr, target)
                target.release()
                if n:
                    job.err_have += n
            else:
                scratch = bytearray(_READ_CHUNK)
                n = _read_into(job.stderr, memoryview(scratch))
            if n is None:
                return
            if n == 0:
                self._close_stderr(job)
                return
            budget -= n

    def _exited(self, job: _Job) -> None:
        """The reaper has exited: the shell has, and all it started is dead (but for a
        process that got the pipe from outside, which is not waited for)."""
        self._unwatch(job.pidfd)
        os.close(job.pidfd)
        job.pidfd = -1
        job.proc.wait()
        # What was written before the exit is in the pipes: read it, not waiting for
        # an end of file.
        self._read_stdout(job)
        if job.stderr is not None and job.err_have < len(job.err):
            self._read_stderr(job, len(job.err) - job.err_have)
        self._finish(job)

    def _overflow(self, job: _Job) -> None:
        limit = job.output.max_bytes
        if job.line_end is None and job.output.first_line:
            job.too_much = f"{job.output.name} printed a first line longer than {limit} bytes"
        elif job.line_end is None:
            job.too_much = f"{job.output.name} printed more than {limit} bytes"
        else:
            job.too_much = f"{job.output.name} printed more than {MAX_DISCARDED} bytes"
        self._close_stdout(job)
        if job.pidfd >= 0:
            self._stop(job)

    def _stop(self, job: _Job) -> None:
        """Tell the reaper to kill it all; its exit ends the job."""
        if not job.stopping:
            job.stopping = True
            job.deadline = self._clock() + usercmd.REAPER_GRACE
            usercmd.stop(job.proc)

    def _close_stdout(self, job: _Job) -> None:
        if job.stdout is not None:
            self._unwatch(job.stdout)
            os.close(job.stdout)
            job.stdout = None

    def _close_stderr(self, job: _Job) -> None:
        if job.stderr is not None:
            self._unwatch(job.stderr)
            os.close(job.stderr)
            job.stderr = None

    def next_deadline(self) -> float | None:
        return min((j.deadline for j in self.running if not j.killed), default=None)

    def enforce_timeouts(self, now: float) -> None:
        for job in list(self.running):
            if job.killed or job.deadline > now:
                continue
            if not job.stopping:
                job.timed_out = True
                self._stop(job)
            else:  # a reaper that does not end when told to
                job.killed = True
                usercmd.kill_reaper(job.proc)

    def kill_all(self) -> None:
        """At shutdown: end every command and all it started, reap them; no on_done is
        called."""
        jobs = list(self.running)
        for job in jobs:
            usercmd.stop(job.proc)
        for job in jobs:
            usercmd.reap(job.proc)
            self._release(job)

    # -- the end ----------------------------------------------------------------------

    def _finish(self, job: _Job) -> None:
        result = self._result(job)
        self._release(job)
        job.on_done(result)

    def _result(self, job: _Job) -> Result:
        name = job.output.name
        code = job.proc.returncode
        # stderr usually says why (a locked vault, a wrong passphrase); never stdout.
        line = first_line(job.err, job.err_have)

        def failed(text: str) -> CommandError:
            return CommandError(f"{text}: {line}" if line else text)

        if job.too_much is not None:
            return failed(job.too_much)
        if job.timed_out:
            return failed(f"{name} timed out after {job.timeout:g} s")
        if code != 0:
            if code < 0:
                return failed(f"{name} was killed by signal {-code}")
            return failed(f"{name} exited with status {code}")
        n = job.have
        if not job.output.first_line and n and job.buf[n - 1] == 0x0A:
            n -= 1  # one trailing newline, as `echo` and most tools print
        if n == 0:
            return failed(f"{name} printed nothing")
        if n > job.output.max_bytes:
            return failed(f"{name} printed more than {job.output.max_bytes} bytes")
        if n < job.output.min_bytes:
            return failed(
                f"{name} printed {n} bytes: the key must be at least {job.output.min_bytes} bytes"
            )
        return Secret(memoryview(job.buf)[:n])

    def _release(self, job: _Job) -> None:
        self._close_stdout(job)
        self._close_stderr(job)
        if job.pidfd >= 0:
            self._unwatch(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = -1
        ipc.wipe(job.buf)
        ipc.wipe(job.err)
        self.running.remove(job)


def first_line(data: bytearray, length: int) -> str:
    """The first line of `data[:length]`, printable and at most MAX_STDERR_LINE long."""
    end = data.find(b"\n", 0, length)
    text = bytes(data[: length if end < 0 else end]).decode("utf-8", "replace").rstrip("\r")
    # No control characters: the line ends up in logs and notifications.
    text = "".join(c if c.isprintable() else "?" for c in text).strip()
    if len(text) > MAX_STDERR_LINE:
        text = text[: MAX_STDERR_LINE - 3] + "..."
    return text


def _read_into(fd: int, target: memoryview) -> int | None:
    """Bytes read into `target` (0 at end of file), or None if nothing is there yet."""
    try:
        return os.readv(fd, [target])
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno == errno.EINTR:
            return None
        raise


def run_blocking(
    cmd: str, output: Output, env: Mapping[str, str], timeout: float = TIMEOUT
) -> Result:
    """Run `cmd` to its end (or its timeout) with a selector of its own: for start-up."""
    sel = selectors.DefaultSelector()
    results: list[Result] = []
    runner = SecretCommands(
        lambda fd, callback: sel.register(fd, selectors.EVENT_READ, callback),
        sel.unregister,
        timeout,
    )
    try:
        runner.start(cmd, output, env, results.append)
        while not results:
            deadline = runner.next_deadline()
            wait = None if deadline is None else max(0.0, deadline - instant())
            for key, _ in sel.select(wait):
                if key.fileobj in sel.get_map():
                    key.data()
            runner.enforce_timeouts(instant())
    finally:
        runner.kill_all()
        sel.close()
    return results[0]
