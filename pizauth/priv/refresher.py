"""When each Active token is refreshed (spec §6.4)."""

from __future__ import annotations

from pizauth.priv.tokens import Active, Entry, TokenTable

# No timer sleeps longer than this, so a machine waking from suspend (or a
# clock oddity) is noticed within 37 s (spec §6.4).
MAX_SLEEP = 37.0
# Zero intervals would busy-loop (gap 24): never retry faster than this.
MIN_RETRY = 1.0


def refresh_time(entry: Entry) -> float | None:
    """The instant `entry` is due for refresh, or None if it is not waiting for one."""
    state = entry.state
    if not isinstance(state, Active) or state.ongoing_refresh:
        return None
    if state.refresh_token is None:
        # Nothing to refresh with: keep the token until it really expires (gap 23).
        return state.expiry
    account = entry.account
    if state.last_refresh_attempt is not None:
        return state.last_refresh_attempt + max(account.refresh_retry, MIN_RETRY)
    return min(
        state.expiry - account.refresh_before_expiry,
        state.obtained + account.refresh_at_least,
    )


def due(table: TokenTable, now: float) -> list[Entry]:
    out = []
    for entry in table.entries.values():
        at = refresh_time(entry)
        if at is not None and at <= now:
            out.append(entry)
    return out


def next_wakeup(table: TokenTable) -> float | None:
    times = [t for e in table.entries.values() if (t := refresh_time(e)) is not None]
    return min(times, default=None)
