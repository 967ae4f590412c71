"""Text from outside (account names, command-line words) made fit for a message.

On the `pizauth show` path: imports nothing.
"""

# An account name or a command-line word longer than this is cut in messages: a
# name of a megabyte would otherwise bury the message, and the start is enough
# to recognise it.
MAX_SHOWN = 64


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` for a one-line message: cut to `limit` characters plus «…», and every
    character that is not printable (terminal escapes, newlines, undecodable bytes)
    written as a Python escape, so it can neither drive the terminal nor fake a line."""
    cut = len(text) > limit
    out = []
    for ch in text[:limit] if cut else text:
        if ch.isprintable():
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])  # '\x1b', '\n', '\udcff', '\u202e'
    return "".join(out) + ("…" if cut else "")
