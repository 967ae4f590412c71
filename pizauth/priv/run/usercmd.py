"""Starting one of the user's shell commands, the one way every command is started.

Hooks (priv/run/hooks.py) and secret commands (priv/run/secretcmd.py) alike run as
`SHELL -c CMD` under a reaper process (priv/run/reaper.py, run as a script): stdin
from /dev/null, the shell in a session of its own, no descriptor of the server
but the ones named here. The reaper is a child subreaper, so that on the
command's timeout, at shutdown and when the server dies (even by SIGKILL)
everything the command started is killed, including what left its session and
double-forked.

A secret command's stdout and stderr are pipes whose write ends become the
reaper's fds 1 and 2, and so the shell's: the command writes straight into the
pipe the parent reads. The reaper never reads from them, so the secret never
passes through its memory. With `end_with_shell`, the reaper also kills what
the command left running once the shell has exited, so that a background
process holding stdout open cannot delay the result.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
# How long a reaper may take to kill its command's processes once told to.
REAPER_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class Started:
    """A running command: its reaper, and a pidfd that becomes readable when it exits."""

    proc: subprocess.Popen[bytes]
    pidfd: int


def find_shell(shell: str) -> str:
    """The program `shell` names, found as exec would find it; OSError if it cannot run.

    The reaper execs the shell: found here, a missing one is reported as such rather
    than as the reaper's exit status."""
    path = shell if "/" in shell else shutil.which(shell)
    if path is None or not os.access(path, os.X_OK):
        error = errno.ENOENT if path is None or not os.path.exists(path) else errno.EACCES
        raise OSError(error, os.strerror(error))
    return path


def start(
    shell: str,
    cmd: str,
    env: Mapping[str, str],
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    end_with_shell: bool = False,
) -> Started:
    """Start `shell -c cmd` (the shell as find_shell returned it) under a reaper, with
    `env` added to the server's environment. `stdout` and `stderr`, when given, are
    descriptors the command writes to (the caller keeps and closes its own copies).

    Raises OSError, or ValueError for a NUL in the command or the environment."""
    argv = [sys.executable, "-I", "-S", REAPER, str(os.getpid()), shell, cmd]
    if end_with_shell:
        argv.append("--end-with-shell")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, **env},
        close_fds=True,
        start_new_session=True,
    )
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        stop(proc)
        reap(proc)
        raise
    return Started(proc, pidfd)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask a command's reaper to kill everything the command started, then exit."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass


def kill_reaper(proc: subprocess.Popen[bytes]) -> None:
    """A reaper that did not end within REAPER_GRACE of stop(): kill it and its group
    (it is a session leader; the command's shell is in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a reaper told to stop(), killing it if it takes longer than REAPER_GRACE."""
    try:
        proc.wait(REAPER_GRACE)
    except subprocess.TimeoutExpired:
        kill_reaper(proc)
        proc.wait()
