"""Judging the pieces of a provider's reply: JSON, text, numbers and URIs.

Everything here takes what a stranger wrote and returns either a bounded, clean
value or None; nothing raises on bad input. The device, metadata and revocation
calls share it so that each refuses the same things in the same way.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math

from pizauth import limits
from pizauth.safetext import safe_text
from pizauth.timeouts import RETRY_AFTER_MAX as _RETRY_AFTER_MAX

# Digits in a string-valued number (some providers quote expires_in); more than
# this is clamped anyway, so there is no need to convert it.
_MAX_DIGITS = 20
RETRY_AFTER_MAX = int(_RETRY_AFTER_MAX)
# An HTTP-date is 29 characters; a longer Retry-After is not worth parsing.
_MAX_HEADER = 64


def load_json(body: bytes) -> object | None:
    """The JSON value of `body`, or None if it is not JSON we can hold."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested arrays; ValueError also covers integers with
        # more digits than Python will convert.
        return None


def provider_text(value: str, limit: int = limits.MAX_PROVIDER_TEXT) -> str:
    """`value` with control, surrogate and direction-changing characters replaced, cut so
    that its UTF-8 encoding is at most `limit` bytes (the same rule the token client
    applies: pizauth/safetext.py)."""
    return safe_text(value, limit)


def oauth_error(doc: object) -> tuple[str, str]:
    """(error, error_description) of an RFC 6749 §5.2 error object, both cleaned; ("", "")
    if `doc` is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return "", ""
    desc = doc.get("error_description")
    return (
        provider_text(doc["error"]),
        provider_text(desc) if isinstance(desc, str) else "",
    )


def error_text(error: str, description: str) -> str:
    return f"{error}: {description}" if description else error


def seconds(value: object) -> int | None:
    """A non-negative number of seconds, clamped to limits.MAX_SECONDS; None if `value`
    is not one. Integers, integral or huge floats and digit strings are accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if math.isnan(value):
            return None
        if value >= limits.MAX_SECONDS:  # also +inf, which JSON's 1e400 becomes
            return limits.MAX_SECONDS
        n = math.floor(value)
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        n = limits.MAX_SECONDS if len(digits) > _MAX_DIGITS else int(digits)
    else:
        return None
    if n < 0:
        return None
    return min(n, limits.MAX_SECONDS)


def retry_after(value: str | None, now: float) -> int | None:
    """The seconds a `Retry-After` header (RFC 9110 §10.2.3) asks us to wait, from 0 up to
    RETRY_AFTER_MAX; None if there is none or it is neither delta-seconds nor an HTTP-date.
    `now` is the wall-clock time (time.time()) a date is measured from; a date in the past
    is 0. Nothing a provider writes here makes this raise, overflow or take long."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "" (isdigit), nor "١٢" (isascii)
        digits = value.lstrip("0") or "0"
        n = RETRY_AFTER_MAX if len(digits) > _MAX_DIGITS else int(digits)
        return min(n, RETRY_AFTER_MAX)
    if len(value) > _MAX_HEADER:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
            when = when.replace(tzinfo=datetime.timezone.utc)
        delta = when.timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if math.isnan(delta) or delta >= RETRY_AFTER_MAX:
        return None if math.isnan(delta) else RETRY_AFTER_MAX
    return max(0, math.ceil(delta))
