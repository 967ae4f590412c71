"""Runs one user command and answers for every process it starts (run as a script, not
imported; pizauth/priv/run/usercmd.py starts it).

    python -I -S reaper.py PARENT_PID SHELL CMD [--end-with-shell]

A hook may leave its session and double-fork (`setsid cmd &`), so neither its
process group nor its session finds all it started. This process is a child
subreaper (PR_SET_CHILD_SUBREAPER): whatever the hook orphans is re-parented to
it, not to init, and so can always be found among its own children. On SIGTERM
(the hook's timeout, the server's shutdown) or when the server dies, even by
SIGKILL (PR_SET_PDEATHSIG), it kills every descendant and reaps them before it
exits. When the hook's shell ends by itself, it exits with the shell's status,
and what the hook left running in the background (a browser it opened) goes on;
with --end-with-shell (a secret command, whose output is complete when its shell
has exited) that is killed and reaped first.

The command's stdin, stdout and stderr are this process's: it never reads them.

Standard library only, and `-S`: it starts in a few milliseconds.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:  # CONFIG_PROC_CHILDREN
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # The command name may hold spaces and ')': the fields resume after the last.
            if int(stat.rpartition(")")[2].split()[1]) == me:
                found.append(int(entry))
    return found


def _kill_tree(hook: int | None) -> None:
    """SIGKILL every descendant: a killed process's children come to us, so repeat
    until there is no child left to reap."""
    if hook is not None:
        try:
            os.killpg(hook, signal.SIGKILL)  # most of the tree at once
        except OSError:
            pass
    while True:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except _Stop:
            continue


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent, shell, cmd = int(argv[1]), argv[2], argv[3]
    end_with_shell = argv[4:] == ["--end-with-shell"]
    libc = ctypes.CDLL(None, use_errno=True)
    hook = None
    try:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            return 1  # the server died before the death signal was armed
        hook = os.fork()
        if hook == 0:  # pragma: no cover - the hook's shell
            try:
                # As a shell started by a shell: Python ignores SIGPIPE and SIGXFSZ, and
                # an ignored signal stays ignored across exec.
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(signum, signal.SIG_DFL)
                os.setsid()
                os.execv(shell, [shell, "-c", cmd])
            finally:
                os._exit(127)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == hook:
                break
        # The hook is done: a SIGTERM from now on (a shutdown at this very moment) has
        # nothing left to stop, and must not raise outside this `try`.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if end_with_shell:
            # Not the shell's group: the shell is reaped, its id may be anyone's now.
            _kill_tree(None)
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _kill_tree(hook)
        return 1
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # died of a signal: so do we, so that the server sees it as such
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot be handled
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
