"""The `pizauth dump` format (pizauth 1.1's, byte for byte), and what `pizauth restore`
does with one.

A dump is NONCE(12) || ChaCha20-Poly1305(plaintext) under a fixed, published key, so
it is byte-compatible with the Rust pizauth 1.1 both ways. The plaintext is bincode-1:
little-endian fixed-width integers, u64 length prefixes, Option = u8 0/1 + value,
enum = u32 variant index + fields, Time = u64 seconds + u32 nanoseconds since 1970.

The key is public: this only keeps tokens away from `grep` and `strings`
(docs/compatibility.md "Dump key").
Users who keep dumps on disk must encrypt them themselves (e.g. with age).

Secrets: the plaintext and the output are bytearrays of their final size (a growing
bytearray may leave copies behind when it is reallocated), tokens are copied from and
into Secret buffers, and every buffer this module allocates is wiped once used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pizauth import ipc, limits
from pizauth.config import NEWER_DESTINATION, V11_DESTINATION, Account
from pizauth.ipc import Buffer
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, DevicePending, Empty, Pending, TokenTable
from pizauth.priv.state.tokenstate import Cause, allows
from pizauth.text import shown

log = logging.getLogger("pizauth")

# The original's key. Published, so this is obfuscation, not encryption.
KEY = bytes.fromhex("66a247a85e48cfecaaed9b36eba97d5350d4286375097a44eeffb9c4546b65a3")
NONCE_LEN = 12
TAG_LEN = 16
VERSION = 1
# The largest dump `restore` can take back (ipc.MAX_DUMP). A larger dump is refused
# when it is made rather than when it is needed.
MAX_DUMP = ipc.MAX_DUMP

# bincode enum variants of TokenStateDump.
_EMPTY, _ACTIVE = 0, 1
_U8, _U32, _U64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<Q")
_U64_MAX = 2**64 - 1
_NANOS = 1_000_000_000


class DumpError(Exception):
    """A dump that cannot be restored; str(err) is the reply text."""


class Now(NamedTuple):
    """The wall clock and the instant clock, read together, to convert between them."""

    wall: float
    instant: float


def now() -> Now:
    return Now(time.time(), instant())


class Time(NamedTuple):
    """A wall-clock time as bincode stores a Rust SystemTime."""

    secs: int
    nanos: int


# The auth_uri_fields entry that binds a token to the settings newer than pizauth 1.1
# (docs/compatibility.md "Dumps of accounts with newer settings").
BINDING_FIELD = "pizauth-newer-settings"


def binding(account: Account) -> tuple[tuple[str, str], ...]:
    """The auth_uri_fields entry that stands for `account`'s newer settings (config.py
    Account.newer_destination): none for an account that uses none of them, so that its
    dump is pizauth 1.1's byte for byte; else one pair whose value is a digest of them."""
    newer = account.newer_destination()
    if not newer:
        return ()
    canonical = json.dumps([[name, value] for name, value in newer], separators=(",", ":"))
    return ((BINDING_FIELD, "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()),)


@dataclass(frozen=True, slots=True)
class AccountDump:
    """What must match the configured account for a dumped token to be restored."""

    auth_uri: str
    auth_uri_fields: tuple[tuple[str, str], ...]
    client_id: str
    client_secret: str | None
    redirect_uri: str  # as written in the config, not the effective one
    scopes: tuple[str, ...]
    token_uri: str

    @classmethod
    def of(cls, account: Account) -> AccountDump:
        # A device account has no auth_uri: its device_auth_uri takes that place, so
        # that a token goes back only to an account with the same endpoints
        # (docs/compatibility.md "Device logins in dumps").
        auth_uri = account.device_auth_uri if account.auth_flow == "device" else account.auth_uri
        return cls(
            auth_uri or "",
            # Where pizauth 1.1's layout has room for it: a 1.1 reader decodes it as an
            # extra field, and so never gives the token to an account of its own.
            account.auth_uri_fields + binding(account),
            account.client_id,
            account.client_secret,
            account.redirect_uri,
            account.scopes,
            account.token_uri or "",
        )

    def changes(self, other: AccountDump) -> list[str]:
        """The settings that differ between the two, by name, for the log."""
        changed = [
            name
            for name in V11_DESTINATION
            if name != "auth_uri_fields" and getattr(self, name) != getattr(other, name)
        ]
        mine, theirs = _split_binding(self.auth_uri_fields), _split_binding(other.auth_uri_fields)
        if mine[0] != theirs[0]:
            changed.append("auth_uri_fields")
        if mine[1] != theirs[1]:
            changed.append("one of " + ", ".join(NEWER_DESTINATION))
        return changed


def _split_binding(
    fields: tuple[tuple[str, str], ...],
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    return (
        tuple(f for f in fields if f[0] != BINDING_FIELD),
        tuple(f for f in fields if f[0] == BINDING_FIELD),
    )


@dataclass(slots=True)
class ActiveDump:
    access_token: Secret
    obtained: Time
    expiry: Time
    refresh_token: Secret | None

    def wipe(self) -> None:
        self.access_token.wipe()
        if self.refresh_token is not None:
            self.refresh_token.wipe()


# None is the Empty variant; Pending is dumped as Empty, as pizauth 1.1 does, and so is
# DevicePending (a device code is not worth keeping: the login is simply started again).
TokenDump = ActiveDump | None


@dataclass(slots=True)
class Dump:
    version: int
    accounts: dict[str, tuple[AccountDump, TokenDump]]

    def wipe(self) -> None:
        for _, token in self.accounts.values():
            if token is not None:
                token.wipe()


# -- time ---------------------------------------------------------------------------------


def to_time(at: float, clock: Now) -> Time:
    """Instant `at` as wall-clock time: now ± (at − instant now)."""
    wall = clock.wall + (at - clock.instant)
    if not (math.isfinite(wall) and 0 <= wall <= _U64_MAX):
        # Not representable (before 1970, or absurdly far ahead): "now", as the original
        # does when it cannot convert an instant.
        wall = max(clock.wall, 0.0)
    secs = math.floor(wall)
    nanos = round((wall - secs) * _NANOS)
    if nanos == _NANOS:
        secs, nanos = secs + 1, 0
    return Time(min(secs, _U64_MAX), nanos)


def to_instant(t: Time, clock: Now) -> float:
    """The inverse of to_time, relative to `clock`."""
    return clock.instant + ((t.secs - clock.wall) + t.nanos / _NANOS)


# -- encoding -----------------------------------------------------------------------------


class _Pieces:
    """The plaintext as a list of pieces, joined once into a buffer of its final size.

    Tokens are memoryviews of their Secrets, so no copy of them is made but the one in
    the plaintext, which the caller wipes.
    """

    def __init__(self) -> None:
        self.parts: list[memoryview] = []
        self.size = 0

    def raw(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        self.parts.append(view)
        self.size += view.nbytes

    def u32(self, n: int) -> None:
        self.raw(_U32.pack(n))

    def u64(self, n: int) -> None:
        self.raw(_U64.pack(n))

    def blob(self, data: Buffer) -> None:
        self.u64(memoryview(data).nbytes)
        self.raw(data)

    def string(self, s: str) -> None:
        self.blob(s.encode("utf-8"))

    def tag(self, present: bool) -> None:
        """An Option's tag; the value follows if present."""
        self.raw(b"\x01" if present else b"\x00")

    def time(self, t: Time) -> None:
        self.u64(t.secs)
        self.u32(t.nanos)

    def join(self) -> bytearray:
        out = bytearray(self.size)
        # Assigned through a memoryview: a bytearray slice assigned anything but a
        # bytearray first copies it into a temporary bytearray, freed unwiped.
        target = memoryview(out)
        pos = 0
        for part in self.parts:
            target[pos : pos + part.nbytes] = part
            pos += part.nbytes
            part.release()  # so a Secret can be wiped and freed again
        target.release()
        self.parts.clear()
        return out


def _account(p: _Pieces, a: AccountDump) -> None:
    p.string(a.auth_uri)
    p.u64(len(a.auth_uri_fields))
    for key, value in a.auth_uri_fields:
        p.string(key)
        p.string(value)
    p.string(a.client_id)
    p.tag(a.client_secret is not None)
    if a.client_secret is not None:
        p.string(a.client_secret)
    p.string(a.redirect_uri)
    p.u64(len(a.scopes))
    for scope in a.scopes:
        p.string(scope)
    p.string(a.token_uri)


def encode(table: TokenTable, clock: Now) -> bytearray:
    """The bincode plaintext of every configured account. Wipe it after use."""
    p = _Pieces()
    p.u64(VERSION)
    p.u64(len(table.entries))
    for name, entry in table.entries.items():
        p.string(name)
        _account(p, AccountDump.of(entry.account))
        match entry.state:
            case Active() as active:
                p.u32(_ACTIVE)
                p.blob(active.access_token.view())
                p.time(to_time(active.obtained, clock))
                p.time(to_time(active.expiry, clock))
                p.tag(active.refresh_token is not None)
                if active.refresh_token is not None:
                    p.blob(active.refresh_token.view())
            case Empty() | Pending() | DevicePending():
                p.u32(_EMPTY)
    return p.join()


def seal(plaintext: Buffer, nonce: Buffer) -> bytearray:
    """NONCE || ChaCha20-Poly1305(plaintext, no associated data) under KEY."""
    nonce = bytes(nonce)
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    plain = memoryview(plaintext).cast("B")
    out = bytearray(NONCE_LEN + plain.nbytes + TAG_LEN)
    target = memoryview(out)  # no temporary copy (see _Pieces.join)
    target[:NONCE_LEN] = nonce
    cipher = ChaCha20Poly1305(KEY)
    encrypt_into = getattr(cipher, "encrypt_into", None)
    if encrypt_into is not None:
        encrypt_into(nonce, plain, None, target[NONCE_LEN:])
    else:
        # cryptography < 44 only returns an immutable `bytes`, which cannot be wiped
        # (it holds the tokens under a public key): drop it at once.
        target[NONCE_LEN:] = cipher.encrypt(nonce, plain, None)
    target.release()
    return out


def dump(table: TokenTable, clock: Now | None = None, nonce: Buffer | None = None) -> bytearray:
    """The `dump:` reply for `table`: raw bytes, no prefix."""
    plaintext = encode(table, clock or now())
    try:
        return seal(plaintext, os.urandom(NONCE_LEN) if nonce is None else nonce)
    finally:
        ipc.wipe(plaintext)


# -- decoding -----------------------------------------------------------------------------


def open_sealed(data: Buffer) -> bytearray:
    """Check and decrypt a dump; the plaintext, which the caller must wipe."""
    view = memoryview(data).cast("B")
    if view.nbytes < NONCE_LEN:
        raise DumpError(f"Input too short: not a pizauth dump ({view.nbytes} bytes)")
    nonce, sealed = bytes(view[:NONCE_LEN]), view[NONCE_LEN:]
    if sealed.nbytes < TAG_LEN:
        raise DumpError(f"Restoring dump failed: not a pizauth dump ({view.nbytes} bytes)")
    cipher = ChaCha20Poly1305(KEY)
    plain = bytearray(sealed.nbytes - TAG_LEN)
    try:
        decrypt_into = getattr(cipher, "decrypt_into", None)
        if decrypt_into is not None:
            decrypt_into(nonce, sealed, None, plain)
        else:
            # cryptography < 44: the `bytes` it returns cannot be wiped; see seal().
            memoryview(plain)[:] = cipher.decrypt(nonce, sealed, None)  # no temporary
    except InvalidTag:
        ipc.wipe(plain)  # decrypt_into may have written unauthenticated plaintext
        raise DumpError(
            "Restoring dump failed: not a pizauth dump, or damaged (authentication failed)"
        ) from None
    return plain


def is_utf8(data: memoryview) -> bool:
    """Whether `data` is valid UTF-8 (RFC 3629), checked without making it a str."""
    i, n = 0, data.nbytes
    while i < n:
        b = data[i]
        if b < 0x80:
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif b == 0xE0:
            need, lo, hi = 2, 0xA0, 0xBF  # no overlong forms
        elif b == 0xED:
            need, lo, hi = 2, 0x80, 0x9F  # no surrogates
        elif 0xE1 <= b <= 0xEF:
            need, lo, hi = 2, 0x80, 0xBF
        elif b == 0xF0:
            need, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= b <= 0xF3:
            need, lo, hi = 3, 0x80, 0xBF
        elif b == 0xF4:
            need, lo, hi = 3, 0x80, 0x8F  # nothing above U+10FFFF
        else:
            return False
        if i + need >= n or not lo <= data[i + 1] <= hi:
            return False
        for j in range(i + 2, i + need + 1):
            if not 0x80 <= data[j] <= 0xBF:
                return False
        i += need + 1
    return True


class _Reader:
    """Strict, bounded bincode reading: nothing is allocated beyond what the input holds."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n > self.data.nbytes - self.pos:
            raise DumpError(
                f"Malformed dump: {n} bytes wanted at offset {self.pos}, "
                f"{self.data.nbytes - self.pos} left"
            )
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def _int(self, fmt: struct.Struct) -> int:
        return fmt.unpack(self.take(fmt.size))[0]

    def u32(self) -> int:
        return self._int(_U32)

    def u64(self) -> int:
        return self._int(_U64)

    def count(self) -> int:
        """A sequence length; every element takes at least one byte."""
        n = self.u64()
        if n > self.data.nbytes - self.pos:
            raise DumpError(f"Malformed dump: length {n} at offset {self.pos - 8} is too large")
        return n

    def blob(self) -> memoryview:
        return self.take(self.count())

    def string(self) -> str:
        at = self.pos
        try:
            return str(self.blob(), "utf-8")
        except UnicodeDecodeError:
            raise DumpError(f"Malformed dump: string at offset {at} is not UTF-8") from None

    def secret(self) -> Secret:
        at = self.pos
        view = self.blob()
        if not is_utf8(view):  # a Rust String: the original would refuse it too
            raise DumpError(f"Malformed dump: string at offset {at} is not UTF-8")
        return Secret(view)

    def present(self) -> bool:
        """An Option's tag."""
        tag = self._int(_U8)
        if tag > 1:
            raise DumpError(f"Malformed dump: invalid Option tag {tag} at offset {self.pos - 1}")
        return tag == 1

    def time(self) -> Time:
        secs, nanos = self.u64(), self.u32()
        if nanos >= _NANOS:
            raise DumpError(f"Malformed dump: {nanos} nanoseconds at offset {self.pos - 4}")
        return Time(secs, nanos)


def _read_account(r: _Reader) -> AccountDump:
    auth_uri = r.string()
    auth_uri_fields = tuple((r.string(), r.string()) for _ in range(r.count()))
    client_id = r.string()
    client_secret = r.string() if r.present() else None
    redirect_uri = r.string()
    scopes = tuple(r.string() for _ in range(r.count()))
    token_uri = r.string()
    return AccountDump(
        auth_uri, auth_uri_fields, client_id, client_secret, redirect_uri, scopes, token_uri
    )


def _read_token(r: _Reader) -> TokenDump:
    variant = r.u32()
    if variant == _EMPTY:
        return None
    if variant != _ACTIVE:
        raise DumpError(f"Malformed dump: unknown token state {variant} at offset {r.pos - 4}")
    access = r.secret()
    try:
        obtained, expiry = r.time(), r.time()
        refresh = r.secret() if r.present() else None
    except DumpError:
        access.wipe()
        raise
    return ActiveDump(access, obtained, expiry, refresh)


def decode(plaintext: Buffer) -> Dump:
    """The whole of a plaintext, or DumpError; tokens are copied into Secrets."""
    r = _Reader(memoryview(plaintext).cast("B"))
    version = r.u64()
    if version != VERSION:
        # Checked before the rest, whose layout a later version may change.
        raise DumpError(
            f"Unknown dump version: made by an incompatible version of pizauth "
            f"(dump version {version}, this pizauth reads version {VERSION})"
        )
    result = Dump(version, {})
    try:
        for _ in range(r.count()):
            at = r.pos
            name = r.string()
            entry = (_read_account(r), _read_token(r))
            if name in result.accounts:
                if entry[1] is not None:
                    entry[1].wipe()
                raise DumpError(f"Malformed dump: account '{name}' at offset {at} repeated")
            result.accounts[name] = entry
        if r.pos != r.data.nbytes:
            raise DumpError(f"Malformed dump: {r.data.nbytes - r.pos} trailing bytes")
    except DumpError:
        result.wipe()
        raise
    return result


# -- restoring ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Merged:
    """What a merge did: the accounts that received a token, those whose token was
    refused (with the reason, for error_notify_cmd and the log), and those whose token
    was left out because it is no longer theirs to have (with the reason, for the log)."""

    restored: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    left_out: tuple[tuple[str, str], ...] = ()


def _too_long(token: ActiveDump) -> str | None:
    # A longer token could not have come from the network child, and would make the
    # frame that refreshes it larger than a message may be.
    for what, secret in (
        ("access token", token.access_token),
        ("refresh token", token.refresh_token),
    ):
        if secret is not None and len(secret) > limits.MAX_TOKEN:
            return f"its {what} is longer than {limits.MAX_TOKEN} bytes"
    return None


def merge(
    table: TokenTable,
    plaintext: Buffer,
    clock: Now | None = None,
    only: Collection[str] | None = None,
    revoked: Mapping[str, float] | None = None,
    cause: Cause = Cause.RESTORE,
) -> Merged:
    """Decode a dump's plaintext and merge it into `table` by pizauth 1.1's rule; with
    `only`, into those accounts alone; with `revoked` (account name -> wall-clock time
    of a revoke), never a token obtained before that account's revoke. Each token given
    back is a change for `cause` (restore, or the token store opened) and raises its event.

    Everything is decoded before anything changes, so a DumpError leaves `table` as it
    was. The caller wipes `plaintext`.
    """
    dumped = decode(plaintext)
    clock = clock or now()
    restored = []
    refused = []
    left_out = []
    try:
        for name, entry in table.entries.items():
            account_dump, token = dumped.accounts.get(name, (None, None))
            if token is None or account_dump is None:
                continue
            if only is not None and name not in only:
                continue
            # A token only goes back to the very account it was issued for: every
            # setting that decides where it is sent must be as it was.
            expected = AccountDump.of(entry.account)
            if account_dump != expected:
                changed = ", ".join(account_dump.changes(expected))
                left_out.append((name, f"its settings changed since ({changed}): it needs a login"))
                continue
            if revoked is not None and name in revoked:
                obtained = token.obtained.secs + token.obtained.nanos / _NANOS
                if obtained <= revoked[name]:
                    left_out.append((name, "it was revoked while the store could not be opened"))
                    continue
            # A current token is never overwritten by an old one (the state machine's rule).
            if not allows(entry.state, cause, Active):
                continue
            why = _too_long(token)
            if why is not None:
                refused.append((name, why))
                continue
            state = Active(
                token.access_token,
                to_instant(token.obtained, clock),
                to_instant(token.expiry, clock),
                token.refresh_token,
            )
            del dumped.accounts[name]  # its Secrets now belong to the table
            table.transition(name, state, cause)  # a new generation: in-flight work is dropped
            restored.append(name)
    finally:
        dumped.wipe()  # tokens that were not restored
    return Merged(tuple(restored), tuple(refused), tuple(left_out))


def restore(table: TokenTable, data: Buffer, clock: Now | None = None) -> list[str]:
    """Merge a dump into `table`, by pizauth 1.1's rule; the accounts that received a token.

    Everything is decoded before anything changes, so an error leaves `table` as it was.
    A token too long to be refreshed is left out, and the log says so.
    """
    plaintext = open_sealed(data)
    try:
        merged = merge(table, plaintext, clock)
    finally:
        ipc.wipe(plaintext)
    for name, why in merged.refused + merged.left_out:
        log.error("restore: token of %s not restored: %s", shown(name), why)
    return list(merged.restored)
