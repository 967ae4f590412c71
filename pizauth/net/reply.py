"""Judging the pieces of a provider's reply: JSON, text, numbers and URIs.

Everything here takes what a stranger wrote and returns either a bounded, clean
value or None; nothing raises on bad input. The device, metadata and revocation
calls share it so that each refuses the same things in the same way.
"""

from __future__ import annotations

import json
import math

from pizauth import limits
from pizauth.safetext import safe_text

# Digits in a string-valued number (some providers quote expires_in); more than
# this is clamped anyway, so there is no need to convert it.
_MAX_DIGITS = 20


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


