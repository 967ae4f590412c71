"""What every pizauth server process does to itself: title, hardening, logging."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import sys
from collections.abc import Iterator

log = logging.getLogger("pizauth")

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

# -v count -> level, as pizauth 1.1 (error, warn, info, debug); its trace maps to debug.
LEVELS = [logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
LEVEL_NAMES = {
    logging.ERROR: "ERROR",
    logging.WARNING: "WARN",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
    logging.CRITICAL: "ERROR",
}


def _prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def harden(parent_death_signal: int | None = None) -> None:
    """No core dumps, not ptrace-able by the same uid, no new privileges.

    Called again in every process after exec, which resets the dumpable flag.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if parent_death_signal is not None:
        _prctl(PR_SET_PDEATHSIG, parent_death_signal)


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency, but a title is not worth dying for
        return
    setproctitle.setproctitle(title)


class _StderrFormatter(logging.Formatter):
    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = f"{LEVEL_NAMES.get(record.levelno, 'ERROR')} - {record.getMessage()}"
        if self.colour and record.levelno >= logging.ERROR:
            return f"\x1b[31m{text}\x1b[0m"
        return text


class _SyslogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        import syslog

        priority = {
            logging.ERROR: syslog.LOG_ERR,
            logging.WARNING: syslog.LOG_WARNING,
            logging.INFO: syslog.LOG_INFO,
        }.get(record.levelno, syslog.LOG_DEBUG if record.levelno < logging.INFO else syslog.LOG_ERR)
        try:
            syslog.syslog(priority, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never take the server down
            pass


def setup_logging(verbosity: int, use_syslog: bool, progname: str) -> None:
    """stderr as «LEVEL - message» in the foreground, syslog when detached."""
    logger = logging.getLogger("pizauth")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(LEVELS[min(verbosity, len(LEVELS) - 1)])
    handler: logging.Handler
    if use_syslog:
        import syslog

        # Opened in the process that logs, so the pid is the daemon's
        # (docs/compatibility.md "Syslog pid").
        # Connected now (LOG_NDELAY): a confined child may not create the socket later.
        syslog.openlog(progname, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_USER)
        handler = _SyslogHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter(sys.stderr.isatty()))
    logger.addHandler(handler)


def child_args(verbosity: int, use_syslog: bool, progname: str) -> list[str]:
    args = ["--verbosity", str(verbosity), "--progname", progname]
    return args + (["--syslog"] if use_syslog else [])


def parse_child_args(argv: list[str]) -> tuple[dict[str, int], int, bool, str]:
    """(descriptors by name, verbosity, syslog, progname) from a child's command line."""
    fds: dict[str, int] = {}
    verbosity, use_syslog, progname = 0, False, "pizauth"
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt == "--syslog":
            use_syslog = True
            i += 1
            continue
        value = argv[i + 1]
        if opt == "--verbosity":
            verbosity = int(value)
        elif opt == "--progname":
            progname = value
        else:
            fds[opt.removeprefix("--")] = int(value)
        i += 2
    return fds, verbosity, use_syslog, progname


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT while children are started, so that they start with it ignored.

    Ctrl-C on `pizauth server -d` reaches the terminal's whole foreground process
    group. Only the parent must act on it (it stops its children in order); a child
    that took it too would die with a KeyboardInterrupt traceback. An ignored signal
    stays ignored across exec and Python keeps it so, which covers the child's
    imports too, before start_child() runs.
    """
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def start_child(title: str, argv: list[str]) -> tuple[dict[str, int], str]:
    """Common start of a child: hardening, title, logging. Returns (fds, progname)."""
    # The parent alone handles Ctrl-C (see interrupts_ignored); this also covers a
    # child started some other way. Forked helpers (the network launcher and its
    # workers) inherit it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    harden(parent_death_signal=signal.SIGKILL)
    fds, verbosity, use_syslog, progname = parse_child_args(argv)
    set_title(title)
    setup_logging(verbosity, use_syslog, progname)
    if os.getppid() == 1:
        sys.exit(0)  # the parent died before PDEATHSIG was armed
    return fds, progname
