"""Which URIs from outside (provider metadata, device verification pages) we use.

Shared by the network child, which judges what a provider sent, and the parent,
which checks it again before it builds a request or shows it to the user.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pizauth import limits

LOOPBACK_NAMES = frozenset({"localhost"})


def loopback_host(host: str | None) -> bool:
    """Whether `host` (as urlsplit's hostname gives it) is this machine: localhost,
    127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_uri(value: object, *, https_only: bool) -> str | None:
    """`value` if it is an absolute http(s) URI we are willing to use or show, else None.

    Printable ASCII only, so it can neither hide text in a terminal nor break the
    "URL up to the first space" that scripts read from `pizauth show`; no userinfo
    (it makes hosts easy to misread) and no fragment (RFC 6749 §3.1, §3.2). With
    `https_only`, plain http is allowed for loopback hosts only (loopback_host).
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
    if parts.scheme == "http" and (not https_only or loopback_host(host)):
        return value
    return None


def endpoint_allowed(issuer: str, endpoint: str) -> bool:
    """Whether an endpoint that `issuer`'s metadata names may be used: https, or plain
    http when both the issuer and the endpoint are on this machine (a provider under
    test). A remote issuer that names an http endpoint, even a loopback one, would send
    codes and tokens in the clear or to whatever listens on this machine's port."""
    try:
        scheme = urlsplit(endpoint).scheme
        issuer_host = urlsplit(issuer).hostname
        endpoint_host = urlsplit(endpoint).hostname
    except ValueError:
        return False
    if scheme == "https":
        return True
    return scheme == "http" and loopback_host(issuer_host) and loopback_host(endpoint_host)
