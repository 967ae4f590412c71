"""When pending accounts are reminded with auth_notify_cmd (spec §7.1)."""

from __future__ import annotations

from pizauth.priv.tokens import Entry, Pending, TokenTable

MIN_INTERVAL = 1.0  # gap 24: a zero interval must not busy-loop


def reminder_time(entry: Entry, interval: float) -> float | None:
    state = entry.state
    if not isinstance(state, Pending) or state.exchanging:
        return None
    if state.last_notification is None:
        return float("-inf")
    return state.last_notification + max(interval, MIN_INTERVAL)


def due(table: TokenTable, interval: float, now: float) -> list[Entry]:
    out = []
    for entry in table.entries.values():
        at = reminder_time(entry, interval)
        if at is not None and at <= now:
            out.append(entry)
    return out


def next_wakeup(table: TokenTable, interval: float) -> float | None:
    times = [t for e in table.entries.values() if (t := reminder_time(e, interval)) is not None]
    return min(times, default=None)
