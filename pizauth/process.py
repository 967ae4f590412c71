"""What every pizauth server process does to itself: title, hardening, logging."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Iterator

log = logging.getLogger("pizauth")

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

# How a child is started: `python -c CHILD_PROLOGUE MODULE ARGS...`. A process is
# dumpable (ptrace-able, /proc/PID/mem readable by its uid) from exec until it says
# otherwise, so the first thing a child runs, before any module of pizauth or its
# dependencies is imported, is PR_SET_DUMPABLE 0 (4, 0). SECURITY.md says what is left.
CHILD_PROLOGUE = (
    "import ctypes,sys\n"
    "ctypes.CDLL(None).prctl(4,0,0,0,0)\n"
    "import runpy\n"
    "runpy.run_module(sys.argv.pop(1),run_name='__main__',alter_sys=True)\n"
)

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


# Where a server process logs (see log_sink):
STDERR = "stderr"  # «LEVEL - message» on stderr (in the foreground, or into the parent)
JOURNAL = "journal"  # stderr is the journal's stream: each line with its priority
SYSLOG = "syslog"
KEPT = "kept"  # nowhere outside: the parent keeps errors for `pizauth status`
SINKS = (STDERR, JOURNAL, SYSLOG, KEPT)

SYSLOG_PATH = "/dev/log"
# sd-daemon(3) priority prefixes, which journald reads from a stream.
_JOURNAL_PRIORITY = {logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def journal_stream() -> bool:
    """True if stderr is the journal stream systemd gave us (JOURNAL_STREAM names its
    device and inode): an inherited variable with another stderr does not count."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, colon, ino = value.partition(":")
    if not colon:
        return False
    try:
        st = os.fstat(2)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def syslog_listens(path: str = SYSLOG_PATH) -> bool:
    """True if a syslog daemon accepts messages on `path` (the file alone is not enough)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return True
            except OSError:
                continue
    return False


def log_sink(foreground: bool) -> str:
    """Where the server logs: the journal if systemd gave stderr to it; else stderr in
    the foreground; detached, syslog if one listens, else kept for `pizauth status`,
    so that no error is lost unseen. Decided before the children are confined, as
    they cannot open a socket later."""
    if journal_stream():
        return JOURNAL
    if foreground:
        return STDERR
    return SYSLOG if syslog_listens() else KEPT


def child_sink(sink: str) -> str:
    """A child logs where the parent does; when the parent keeps errors, the child's
    stderr is a pipe that the parent reads."""
    return STDERR if sink == KEPT else sink


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 7)
        text = f"{LEVEL_NAMES.get(record.levelno, 'ERROR')} - {record.getMessage()}"
        # Every line keeps the priority: journald reads each line as an entry of its own.
        return f"<{priority}>" + text.replace("\n", "\n" + f"<{priority}>")


def setup_logging(
    verbosity: int, sink: str, progname: str, kept: logging.Handler | None = None
) -> None:
    """stderr as «LEVEL - message» in the foreground; when detached, see log_sink.
    `kept` is the handler that keeps errors for the KEPT sink."""
    logger = logging.getLogger("pizauth")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(LEVELS[min(verbosity, len(LEVELS) - 1)])
    handler: logging.Handler
    if sink == KEPT and kept is not None:
        handler = kept
    elif sink == JOURNAL:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter())
    elif sink == SYSLOG:
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


def child_args(verbosity: int, sink: str, progname: str) -> list[str]:
    return ["--verbosity", str(verbosity), "--progname", progname, "--log", child_sink(sink)]


def parse_child_args(argv: list[str]) -> tuple[dict[str, int], int, str, str]:
    """(descriptors by name, verbosity, log sink, progname) from a child's command line."""
    fds: dict[str, int] = {}
    verbosity, sink, progname = 0, STDERR, "pizauth"
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt == "--syslog":
            sink = SYSLOG
            i += 1
            continue
        value = argv[i + 1]
        if opt == "--verbosity":
            verbosity = int(value)
        elif opt == "--log":
            sink = value if value in SINKS else STDERR
        elif opt == "--progname":
            progname = value
        else:
            fds[opt.removeprefix("--")] = int(value)
        i += 2
    return fds, verbosity, sink, progname


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
    fds, verbosity, sink, progname = parse_child_args(argv)
    set_title(title)
    setup_logging(verbosity, sink, progname)
    if os.getppid() == 1:
        sys.exit(0)  # the parent died before PDEATHSIG was armed
    return fds, progname
