"""The authorisation URL, PKCE, and the redirect URI a callback must match."""

from __future__ import annotations

import base64
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from pizauth.config import Account
from pizauth.ipc import Callback
from pizauth.priv.state.secmem import Secret, random_urlsafe

# The built-in SHA-256 rather than hashlib's: hashlib loads OpenSSL (3.5 MiB) into the
# parent just for the PKCE challenge (see benchmarks/profile_memory.py).
try:
    from _sha2 import sha256  # Python >= 3.12
except ImportError:
    from _sha256 import sha256

DEFAULT_PORTS = {"http": 80, "https": 443}
_SHA256_BLOCK = 64
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def form_encode(value: str) -> str:
    """application/x-www-form-urlencoded, byte for byte as the original."""
    out = []
    for byte in value.encode("utf-8"):
        if byte in _FORM_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def form_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{form_encode(k)}={form_encode(v)}" for k, v in pairs)


@dataclass(frozen=True, slots=True)
class Url:
    """A URL split the way the original's `url` crate normalises it."""

    scheme: str
    host: str
    port: int | None  # None: the scheme's default
    path: str
    query: str | None
    userinfo: str = ""  # "user:password" before the host, kept as written

    def effective_port(self) -> int | None:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme)

    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.userinfo:
            host = f"{self.userinfo}@{host}"
        if self.port is None or self.port == DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    def serialise(self) -> str:
        query = "" if self.query is None else "?" + self.query
        return f"{self.scheme}://{self.netloc()}{self.path}{query}"

    def query_pairs(self) -> list[tuple[str, str]]:
        return urllib.parse.parse_qsl(self.query or "", keep_blank_values=True)


def parse_url(uri: str) -> Url:
    """Parse a URI from the configuration (already validated as http/https)."""
    parts = urllib.parse.urlsplit(uri)
    query = parts.query if "?" in uri else None
    return Url(
        scheme=parts.scheme.lower(),
        host=(parts.hostname or "").lower(),
        port=parts.port,
        path=parts.path or "/",
        query=query,
        userinfo=parts.netloc.rpartition("@")[0],
    )


def effective_redirect_uri(account: Account, http_port: int | None, https_port: int | None) -> Url:
    """The configured redirect URI with the listener's real port
    (docs/compatibility.md "Redirect port")."""
    url = parse_url(account.redirect_uri)
    if url.scheme == "https" and https_port is not None:
        port = https_port
    else:
        port = http_port
    return Url(url.scheme, url.host, port, url.path, url.query, url.userinfo)


def _challenge(verifier: Secret) -> str:
    """The S256 code challenge of `verifier`.

    A hash object keeps the last, partial block of its input (86 - 64 = 22 bytes of
    the verifier) in a buffer that is freed unwiped. Feeding it zeros afterwards
    until two whole blocks have gone through overwrites that buffer; the digest is
    taken before, so it is unchanged.
    """
    h = sha256(verifier.view())
    digest = h.digest()
    h.update(bytes(2 * _SHA256_BLOCK - len(verifier) % _SHA256_BLOCK))
    return b64url(digest)


@dataclass(slots=True)
class AuthRequest:
    state: str
    code_verifier: Secret
    redirect_uri: str
    url: str


def new_auth_request(
    account: Account, http_port: int | None, https_port: int | None
) -> AuthRequest:
    """A fresh state, PKCE verifier and authorisation URL (docs/compatibility.md "Login hint")."""
    state = b64url(os.urandom(32))
    # Made inside the secret arena: no bytes copy of the verifier is left behind.
    verifier = random_urlsafe(64)
    challenge = _challenge(verifier)
    redirect = effective_redirect_uri(account, http_port, https_port).serialise()
    pairs = [
        ("access_type", "offline"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("client_id", account.client_id),
        ("redirect_uri", redirect),
        ("response_type", "code"),
        ("state", state),
    ]
    if account.scopes:
        pairs.append(("scope", " ".join(account.scopes)))
    pairs.extend(account.auth_uri_fields)
    if account.login_hint is not None:
        pairs.append(("login_hint", account.login_hint))
    base = parse_url(account.auth_uri)
    # An empty existing query ("…/auth?") takes no "&", as in the url crate.
    query = base.query + "&" + form_pairs(pairs) if base.query else form_pairs(pairs)
    url = Url(base.scheme, base.host, base.port, base.path, query, base.userinfo).serialise()
    return AuthRequest(state, verifier, redirect, url)


def redirect_matches(expected: Url, got: Callback) -> bool:
    """Same scheme, host, port, path; no fragment; every expected pair present."""
    if got.has_fragment:
        return False
    if (expected.scheme, expected.host, expected.effective_port(), expected.path) != (
        got.scheme.lower(),
        got.host.lower(),
        got.port,
        got.path,
    ):
        return False
    have = set(got.pairs)
    return all(pair in have for pair in expected.query_pairs())
