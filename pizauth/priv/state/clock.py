"""Instants for expiry and schedules: a clock that keeps counting across suspend."""

from __future__ import annotations

import time

# As pizauth 1.1: CLOCK_BOOTTIME where the platform has it, so a laptop that
# slept through an expiry notices it on waking.
_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def instant() -> float:
    return time.clock_gettime(_CLOCK)


def wall_time(at: float) -> float:
    """The wall-clock time of instant `at`, as now ± the instant difference."""
    return time.time() + (at - instant())


def format_instant(at: float) -> str:
    """RFC 2822 local time with an unpadded day, as `status` shows it."""
    try:
        t = time.localtime(wall_time(at))
    except (OverflowError, OSError, ValueError):
        return "<unknown time>"
    return time.strftime("%a, ", t) + str(t.tm_mday) + time.strftime(" %b %Y %H:%M:%S %z", t)
