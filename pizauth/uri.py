"""Which URIs from outside (provider metadata, device verification pages) we use.

Shared by the network child, which judges what a provider sent, and the parent,
which checks it again before it builds a request or shows it to the user.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pizauth import limits

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})


def http_uri(value: object, *, https_only: bool) -> str | None:
    """`value` if it is an absolute http(s) URI we are willing to use or show, else None.

    Printable ASCII only, so it can neither hide text in a terminal nor break the
    "URL up to the first space" that scripts read from `pizauth show`; no userinfo
    (it makes hosts easy to misread) and no fragment (RFC 6749 §3.1, §3.2). With
    `https_only`, plain http is allowed for 127.0.0.1 and localhost only.
    """
    if not isinstance(value, str) or not value or len(value) > limits.MAX_URI:
        return None
    if not all("\x21" <= c <= "\x7e" for c in value):
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if not host or "@" in parts.netloc or parts.fragment or "#" in value:
        return None
    if parts.scheme == "https":
        return value
    if parts.scheme == "http" and (not https_only or host in LOOPBACK_HOSTS):
        return value
    return None
