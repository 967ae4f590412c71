"""Revokes the token store could not record yet (docs/token-store.md "Revoking while
the store is closed").

`pizauth revoke ACCOUNT` while the store file could not be opened (its key command
failed, the key did not open it) cannot take the token out of that file. So that no
later start gives the token back, the account's name and the time of the revoke go
into a small file next to the store, PATH.revoked: unsealed (it holds no token, only
account names and times), mode 0600, replaced atomically like the store. A start
that opens the store leaves out every token of such an account obtained before its
revoke. The list is deleted once the store has been written without those tokens
and no file moved aside (PATH.unreadable-*) may still hold one of them.

It is JSON: {"version": 1, "revoked": {"ACCOUNT": SECONDS_SINCE_1970, ...}}.
"""

from __future__ import annotations

import json
import math
import os

from pizauth.priv.storage import store
from pizauth.priv.storage.store import StoreError

SUFFIX = ".revoked"
VERSION = 1
# Far more than any configuration's account names, each revoked once.
MAX_SIZE = 256 * 1024


def path_of(store_path: str) -> str:
    return store_path + SUFFIX


def read(store_path: str) -> dict[str, float]:
    """Account name -> time of its revoke ({} if there is no list); StoreError if the list
    exists but cannot be read or is not one."""
    path = path_of(store_path)
    data = store.read(path, "list of revoked accounts", MAX_SIZE)
    if data is None:
        return {}
    try:
        parsed = json.loads(bytes(data))
        if parsed.get("version") != VERSION:
            raise ValueError(f"version {parsed.get('version')!r}")
        revoked = parsed["revoked"]
        if not isinstance(revoked, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and math.isfinite(v)
            for k, v in revoked.items()
        ):
            raise ValueError("not a list of accounts and times")
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise StoreError(f"list of revoked accounts {path} is damaged ({e})") from None
    return {name: float(when) for name, when in revoked.items()}


def add(store_path: str, name: str, when: float) -> None:
    """Record that `name` was revoked at wall-clock time `when`; StoreError on failure."""
    try:
        revoked = read(store_path)
    except StoreError:
        revoked = {}  # a damaged list is replaced: what it held is lost either way
    revoked[name] = max(when, revoked.get(name, when))
    data = json.dumps({"version": VERSION, "revoked": revoked}, sort_keys=True).encode()
    if len(data) > MAX_SIZE:
        raise StoreError(f"list of revoked accounts {path_of(store_path)} would be too large")
    try:
        store.write_atomic(path_of(store_path), data)
    except OSError as e:
        raise StoreError(f"cannot write {path_of(store_path)}: {e.strerror}") from None


def asides_exist(store_path: str) -> bool:
    """Whether a store file moved aside (PATH.unreadable-*) is there, or may be."""
    directory, name = os.path.split(os.path.abspath(store_path))
    try:
        return any(entry.startswith(f"{name}.unreadable-") for entry in os.listdir(directory))
    except FileNotFoundError:
        return False
    except OSError:
        return True


def consume(store_path: str) -> bool:
    """After a write of the store: delete the list, unless a file moved aside may still
    hold a revoked token (it could be renamed back). Whether it was deleted."""
    path = path_of(store_path)
    if not os.path.lexists(path) or asides_exist(store_path):
        return False
    try:
        os.unlink(path)
    except OSError:
        return False  # tried again after the next write
    return True
