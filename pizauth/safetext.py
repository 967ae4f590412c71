"""Text from outside made safe to log and to put in a hook's environment.

A provider chooses its error text, so it may hold a NUL (which no environment
variable can carry: subprocess refuses it), a newline or an escape sequence
(which forge or garble a log line or a terminal), a lone surrogate (which
cannot be encoded to UTF-8), or megabytes. Such characters become U+FFFD and
the text is cut to a number of UTF-8 bytes. Imports nothing, for the parent's
sake.
"""

REPLACEMENT = "\ufffd"

_UNSAFE = [
    *range(0x00, 0x20),  # C0 controls: NUL, newline, escape...
    *range(0x7F, 0xA0),  # DEL and the C1 controls
    *range(0xD800, 0xE000),  # surrogates: not encodable as UTF-8
    0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),  # bidi marks
    0x2028, 0x2029,  # line and paragraph separators
]  # fmt: skip
_TABLE = dict.fromkeys(_UNSAFE, REPLACEMENT)


def safe_text(text: str, limit: int) -> str:
    """`text` with every control character replaced, at most `limit` UTF-8 bytes long."""
    # Cut first (a character takes at most 4 bytes), so a huge text costs no more work
    # than a short one.
    cleaned = text[:limit].translate(_TABLE)
    encoded = cleaned.encode("utf-8")
    if len(encoded) <= limit:
        return cleaned
    return encoded[:limit].decode("utf-8", "ignore")  # drop a character cut in half
