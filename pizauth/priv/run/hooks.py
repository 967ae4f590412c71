"""Running the user's shell commands without blocking the parent
(docs/compatibility.md "Hooks never block").

Each command runs as `$SHELL -c CMD` in a session of its own, stdin from
/dev/null, with no descriptor of the server, under a small reaper process
(started by pizauth/priv/run/usercmd.py) that is a child subreaper: a timeout, the
server's shutdown or its death (even by SIGKILL) kills everything the command
started, including what left its session and double-forked. The parent's event
loop learns of a command's exit through a pidfd.

Values put into a command's environment (and error text logged) may come from a
provider; they are made safe first (see pizauth/safetext.py): a NUL would make
the command impossible to start.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pizauth.priv.run import usercmd
from pizauth.priv.state.clock import instant
from pizauth.safetext import safe_text
from pizauth.timeouts import HOOK, TRANSIENT_ERROR_IF

log = logging.getLogger("pizauth")

NOTIFY_TIMEOUT = HOOK
TRANSIENT_ERROR_IF_TIMEOUT = TRANSIENT_ERROR_IF
# An environment value: a login URL built from a long config fits; the kernel refuses
# a single string over 128 KiB (MAX_ARG_STRLEN) and the command would not start.
MAX_ENV_VALUE = 64 * 1024
# A log line quoting a failure.
MAX_LOG_TEXT = 16 * 1024

# Called with None when the command succeeded, else the error text.
Done = Callable[[str | None], None]


@dataclass
class Running:
    cmd: str
    proc: subprocess.Popen[bytes]
    pidfd: int
    deadline: float | None
    on_done: Done
    timed_out: bool = False


@dataclass
class Job:
    cmd: str
    env: dict[str, str]
    timeout: float | None
    on_done: Done


class HookRunner:
    """Starts commands and reports their end. `watch(fd, callback)` hooks into the loop;
    `clock()` is the instant now, the loop's clock, which calls enforce_timeouts."""

    def __init__(
        self,
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        clock: Callable[[], float] = instant,
    ) -> None:
        self._clock = clock
        self._watch = watch
        self._unwatch = unwatch
        self.running: dict[int, Running] = {}

    def start(self, cmd: str, env: dict[str, str], timeout: float | None, on_done: Done) -> None:
        shell = os.environ.get("SHELL")
        if not shell:
            on_done(f"Couldn't execute '{cmd}': environment variable not found")
            return
        safe_env = {k: safe_text(v, MAX_ENV_VALUE) for k, v in env.items()}
        try:
            started = usercmd.start(usercmd.find_shell(shell), cmd, safe_env)
        except (OSError, ValueError) as e:
            # ValueError: a NUL in the command or in our own environment. Whatever it is,
            # the caller hears of it, so a queue of commands never waits for ever.
            on_done(f"Couldn't execute '{cmd}': {getattr(e, 'strerror', None) or e}")
            return
        pidfd = started.pidfd
        deadline = None if timeout is None else self._clock() + timeout
        self.running[pidfd] = Running(cmd, started.proc, pidfd, deadline, on_done)
        self._watch(pidfd, lambda: self._exited(pidfd))

    def _exited(self, pidfd: int) -> None:
        job = self.running.pop(pidfd)
        self._unwatch(pidfd)
        os.close(pidfd)
        code = job.proc.wait()
        if job.timed_out:
            job.on_done(f"'{job.cmd}' exceeded timeout")
        elif code == 0:
            job.on_done(None)
        elif code > 0:
            job.on_done(f"'{job.cmd}' returned {code}")
        else:
            job.on_done(f"'{job.cmd}' returned <Unknown exit code>")

    def next_deadline(self) -> float | None:
        deadlines = [j.deadline for j in self.running.values() if j.deadline and not j.timed_out]
        return min(deadlines, default=None)

    def enforce_timeouts(self, now: float) -> None:
        for job in self.running.values():
            if job.deadline is not None and job.deadline <= now and not job.timed_out:
                job.timed_out = True
                usercmd.stop(job.proc)

    def kill_all(self) -> None:
        """At shutdown: end every command and everything it started, and reap them."""
        jobs = list(self.running.values())
        for job in jobs:
            usercmd.stop(job.proc)
        for job in jobs:
            usercmd.reap(job.proc)
            self._unwatch(job.pidfd)
            os.close(job.pidfd)
        self.running.clear()


@dataclass
class HookQueue:
    """Commands that run one at a time, in order (notifications, token events)."""

    runner: HookRunner
    jobs: deque[Job] = field(default_factory=deque)
    busy: bool = False

    def submit(self, cmd: str, env: dict[str, str], timeout: float | None) -> None:
        self.jobs.append(Job(cmd, env, timeout, log_failure))
        self._next()

    def _next(self) -> None:
        if self.busy or not self.jobs:
            return
        job = self.jobs.popleft()
        self.busy = True

        def done(error: str | None) -> None:
            self.busy = False
            job.on_done(error)
            self._next()

        self.runner.start(job.cmd, job.env, job.timeout, done)


def log_failure(error: str | None) -> None:
    if error is not None:
        log.error("%s", safe_text(error, MAX_LOG_TEXT))
