"""Running the user's shell commands without blocking the parent
(docs/compatibility.md "Hooks never block").

Each command runs as `$SHELL -c CMD` in a session of its own, stdin from
/dev/null, with no descriptor of the server. A timeout kills the whole process
group, so grandchildren die too (docs/compatibility.md "Hook timeouts"). The parent's event
loop learns of a command's exit through a pidfd.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pizauth.priv.clock import instant
from pizauth.timeouts import HOOK, TRANSIENT_ERROR_IF

log = logging.getLogger("pizauth")

NOTIFY_TIMEOUT = HOOK
TRANSIENT_ERROR_IF_TIMEOUT = TRANSIENT_ERROR_IF

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
    """Starts commands and reports their end. `watch(fd, callback)` hooks into the loop."""

    def __init__(
        self,
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
    ) -> None:
        self._watch = watch
        self._unwatch = unwatch
        self.running: dict[int, Running] = {}

    def start(self, cmd: str, env: dict[str, str], timeout: float | None, on_done: Done) -> None:
        shell = os.environ.get("SHELL")
        if not shell:
            on_done(f"Couldn't execute '{cmd}': environment variable not found")
            return
        try:
            proc = subprocess.Popen(
                [shell, "-c", cmd],
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                close_fds=True,
                start_new_session=True,
            )
        except OSError as e:
            on_done(f"Couldn't execute '{cmd}': {e.strerror or e}")
            return
        pidfd = os.pidfd_open(proc.pid)
        deadline = None if timeout is None else instant() + timeout
        self.running[pidfd] = Running(cmd, proc, pidfd, deadline, on_done)
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
                _kill_group(job.proc.pid)

    def kill_all(self) -> None:
        """At shutdown: end every command and its children, and reap them
        (docs/compatibility.md "Clean shutdown")."""
        for job in list(self.running.values()):
            _kill_group(job.proc.pid)
            job.proc.wait()
            self._unwatch(job.pidfd)
            os.close(job.pidfd)
        self.running.clear()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
        log.error("%s", error)
