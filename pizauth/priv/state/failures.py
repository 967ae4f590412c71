"""Each account's last failure, so that `status` and `show` can say why.

A failed code exchange, a failed refresh and a login callback that came back
with `error=` each leave their text here, with when it happened; the next token
obtained clears it. The text is already safe (no control characters) and
bounded when it arrives: a token result's message is made so by the network
side, and a callback's error is passed through callback_error().
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pizauth.limits import MAX_ERROR_CODE, MAX_PROVIDER_TEXT
from pizauth.priv.state.clock import format_instant, wall_time
from pizauth.safetext import safe_text
from pizauth.timeouts import RETRY_AFTER_MAX


@dataclass(frozen=True, slots=True)
class LastError:
    message: str
    at: float  # an instant (priv/state/clock.py)


def retry_delay(normal: float, retry_after: int | None, limit: float = RETRY_AFTER_MAX) -> float:
    """How long to wait before trying a transient failure again: `normal`, or longer if
    the provider's Retry-After asked for more, but never more than `limit` (the network
    child bounds it to RETRY_AFTER_MAX too; this process does not trust it to)."""
    if retry_after is None:
        return normal
    return max(normal, min(float(retry_after), limit))


def callback_error(error: str, description: str | None) -> str:
    """A login callback's `error` and `error_description` as one safe, bounded text."""
    text = safe_text(error, MAX_ERROR_CODE)
    if description:
        text += ": " + safe_text(description, MAX_PROVIDER_TEXT)
    return text


def status_suffix(error: LastError | None) -> str:
    """What ends an account's `status` line: nothing while there is no error."""
    if error is None:
        return ""
    return f"; last error {format_instant(error.at)}: {error.message}"


def show_line(error: LastError, now: float) -> str:
    """The line `show` adds after its message: the time alone if it is today."""
    try:
        t = time.localtime(wall_time(error.at))
        today = time.localtime(wall_time(now))
    except (OverflowError, OSError, ValueError):
        return f"Last error: {error.message}"
    fmt = "%H:%M:%S" if t[:3] == today[:3] else "%Y-%m-%d %H:%M:%S"
    return f"Last error ({time.strftime(fmt, t)}): {error.message}"
