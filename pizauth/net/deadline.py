"""A wall-clock bound on a call to a provider, whatever the provider does.

`requests` bounds each read, not the exchange: a server that sends a byte a second
never lets a read time out. `within(seconds)` arms a real-time interval timer whose
handler raises DeadlineExceeded in the middle of whatever blocks (connect, TLS, a read
of the headers or the body), so the whole exchange ends on time. Bounds nest: an inner
one never outlasts the outer one, and the outer one is re-armed when the inner ends.

The timer is a signal, so it works in the main thread only; a network worker
(net/worker.py) is a single-threaded process and makes its calls there. In another
thread `within` only keeps the bounds for check() and remaining(), which the token
client consults between reads. For a worker, `kill_self_after`, armed as it starts, is
the last word whatever happens.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class DeadlineExceeded(BaseException):  # noqa: N818 - says what happened
    """The bound has passed. A BaseException, so no library's `except Exception`
    between the blocked read and our code can swallow it."""


class _Bounds(threading.local):
    def __init__(self) -> None:
        self.stack: list[float] = []  # deadlines of the enclosing `within`s, outermost first


_local = _Bounds()


def _expired(signum: int, frame: object) -> None:
    raise DeadlineExceeded


def _arm(deadline: float) -> None:
    # setitimer(0) would disarm: a bound already passed fires at once instead.
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-6))


def remaining() -> float | None:
    """Seconds left of the innermost bound, None outside any."""
    bounds = _local.stack
    return None if not bounds else bounds[-1] - time.monotonic()


def check() -> None:
    """Raise DeadlineExceeded if the innermost bound has passed."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Bound the block to `seconds` of wall-clock time (less if an outer bound ends first):
    DeadlineExceeded is raised when it runs out."""
    _bounds = _local.stack
    deadline = time.monotonic() + seconds
    if _bounds:
        deadline = min(deadline, _bounds[-1])
    timed = threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, _expired)
    _bounds.append(deadline)
    try:
        if timed:
            _arm(deadline)
        yield
    finally:
        _bounds.pop()
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if _bounds:
                _arm(_bounds[-1])


# -- the hard bound of a worker ------------------------------------------------------------------

CLOCK_BOOTTIME = 7  # counts through a suspend, as the parent's timers do
SIGEV_SIGNAL = 0


class _SigEvent(ctypes.Structure):
    """struct sigevent (64 bytes on Linux): a value, the signal, how to notify."""

    _fields_ = [
        ("value", ctypes.c_void_p),
        ("signo", ctypes.c_int),
        ("notify", ctypes.c_int),
        ("_pad", ctypes.c_int * 12),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


def kill_self_after(seconds: float) -> None:
    """Have the kernel SIGKILL this process `seconds` from now (a POSIX timer whose
    signal is SIGKILL: no handler runs, nothing in the process can delay it, and no
    other process needs the right to signal this one). OSError if it cannot be armed:
    the caller must then not go on unbounded."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "timer_create"):  # glibc before 2.34 keeps the timers in librt
        libc = ctypes.CDLL("librt.so.1", use_errno=True)
    timer = ctypes.c_void_p()
    event = _SigEvent(None, signal.SIGKILL, SIGEV_SIGNAL)
    if libc.timer_create(CLOCK_BOOTTIME, ctypes.byref(event), ctypes.byref(timer)) != 0:
        raise OSError(ctypes.get_errno(), "timer_create")
    whole = int(seconds)
    when = _ITimerSpec(_TimeSpec(0, 0), _TimeSpec(whole, int((seconds - whole) * 1e9)))
    if libc.timer_settime(timer, 0, ctypes.byref(when), None) != 0:
        raise OSError(ctypes.get_errno(), "timer_settime")
