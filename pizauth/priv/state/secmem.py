"""Secrets in the parent: bytes in locked, unswappable, undumpable memory
(docs/architecture.md "Secrets in memory").

Every access token, refresh token, PKCE verifier and client secret the parent
holds is a Secret whose bytes live in an arena: a private anonymous mapping
that is mlocked (never written to swap), MADV_DONTDUMP (left out of core
dumps) and MADV_WIPEONFORK (a forked child sees zeros, not tokens). A Secret
never becomes a str or bytes; wipe() zeroes its bytes and returns the slot.

The arena is carved by a small first-fit allocator in GRAIN-sized units; when
it is full another arena is added. If mlock is refused (RLIMIT_MEMLOCK) the
server says so once and goes on: the other protections still hold.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import resource
import threading
from _operator import _compare_digest  # hmac.compare_digest, without hmac's OpenSSL
from collections import deque

from pizauth.ipc import Buffer

log = logging.getLogger("pizauth")

ARENA_SIZE = 64 * 1024  # a few dozen accounts' tokens; also the classic RLIMIT_MEMLOCK
GRAIN = 64  # allocation unit: slots never share a cache line, sizes leak less
MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)  # Linux >= 4.14; absent in Python 3.11
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class _Arena:
    """One mapping and its free runs, sorted by offset: [(offset, length), ...]."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.map = mmap.mmap(
            -1,
            size,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self.view = memoryview(self.map)
        self.free: list[tuple[int, int]] = [(0, size)]
        self.locked = _protect(self.map, size)

    def alloc(self, size: int) -> int | None:
        for i, (offset, length) in enumerate(self.free):
            if length >= size:
                if length == size:
                    del self.free[i]
                else:
                    self.free[i] = (offset + size, length - size)
                return offset
        return None

    def release(self, offset: int, size: int) -> None:
        runs = self.free
        i = 0
        while i < len(runs) and runs[i][0] < offset:
            i += 1
        runs.insert(i, (offset, size))
        # Coalesce with the following run, then with the preceding one.
        if i + 1 < len(runs) and offset + size == runs[i + 1][0]:
            runs[i] = (offset, size + runs[i + 1][1])
            del runs[i + 1]
        if i > 0 and runs[i - 1][0] + runs[i - 1][1] == offset:
            runs[i - 1] = (runs[i - 1][0], runs[i - 1][1] + runs[i][1])
            del runs[i]

    def in_use(self) -> int:
        return self.size - sum(length for _, length in self.free)


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def _protect(region: mmap.mmap, size: int) -> bool:
    """mlock, DONTDUMP and WIPEONFORK; True if the region is locked in memory."""
    for advice, name in ((mmap.MADV_DONTDUMP, "MADV_DONTDUMP"), (MADV_WIPEONFORK, "WIPEONFORK")):
        try:
            region.madvise(advice)
        except OSError as e:
            _warn_once(name, "secret memory: %s not supported: %s", name, e.strerror)
    libc = ctypes.CDLL(None, use_errno=True)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(size)) == 0:
        return True
    error = ctypes.get_errno()
    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    _warn_once(
        "mlock",
        "cannot lock secret memory in RAM (%s; RLIMIT_MEMLOCK is %s bytes): "
        "tokens could be written to swap",
        os.strerror(error) if error else "mlock failed",
        "unlimited" if limit == resource.RLIM_INFINITY else limit,
    )
    return False


class _Pool:
    """All arenas. Owned by the parent's thread; the lock only guards against a
    hook or test thread, and is never taken from a finaliser (see Secret.__del__)."""

    def __init__(self) -> None:
        self.arenas: list[_Arena] = []
        self.lock = threading.Lock()
        # Slots of Secrets dropped without wipe(): already zeroed, returned at the next call.
        self.orphans: deque[tuple[_Arena, int, int]] = deque()

    def _reclaim(self) -> None:
        while self.orphans:
            arena, offset, size = self.orphans.popleft()
            arena.release(offset, size)

    def alloc(self, size: int) -> tuple[_Arena, int]:
        with self.lock:
            self._reclaim()
            for arena in self.arenas:
                offset = arena.alloc(size)
                if offset is not None:
                    return arena, offset
            page = mmap.PAGESIZE
            arena = _Arena(max(ARENA_SIZE, (size + page - 1) // page * page))
            self.arenas.append(arena)
            offset = arena.alloc(size)
            assert offset is not None
            return arena, offset

    def release(self, arena: _Arena, offset: int, size: int) -> None:
        with self.lock:
            self._reclaim()
            arena.release(offset, size)


_pool = _Pool()


def stats() -> tuple[int, int, bool]:
    """(arenas, bytes in use, every arena locked) -- for tests and diagnostics."""
    with _pool.lock:
        _pool._reclaim()
        arenas = list(_pool.arenas)
    return len(arenas), sum(a.in_use() for a in arenas), all(a.locked for a in arenas)


class Secret:
    """Bytes in the arena. view() is for immediate use: after wipe() its slot may
    hold another secret."""

    __slots__ = ("_arena", "_offset", "_size", "_length")

    def __init__(self, data: Buffer) -> None:
        source = memoryview(data).cast("B")
        self._place(source.nbytes)
        if self._arena is not None:
            # A memoryview slice assignment copies straight from the source buffer; a
            # bytearray slice assignment would make a temporary copy that is never wiped.
            self._arena.view[self._offset : self._offset + self._length] = source

    def _place(self, length: int) -> None:
        self._length = length
        self._size = (length + GRAIN - 1) // GRAIN * GRAIN
        self._arena: _Arena | None = None
        self._offset = 0
        if length:
            self._arena, self._offset = _pool.alloc(self._size)

    @classmethod
    def zeros(cls, length: int) -> Secret:
        """A Secret of `length` zero bytes, to be filled in place through view()."""
        secret = cls.__new__(cls)
        secret._place(length)
        return secret

    def view(self) -> memoryview:
        if self._arena is None:
            return memoryview(b"")
        return self._arena.view[self._offset : self._offset + self._length]

    def equals(self, other: Buffer) -> bool:
        return _compare_digest(self.view(), other)

    def wipe(self) -> None:
        arena = self._arena
        if arena is None:
            return
        self._arena = None
        self._length = 0
        _zero(arena, self._offset, self._size)
        _pool.release(arena, self._offset, self._size)

    def __del__(self) -> None:
        # A safety net for a Secret dropped without wipe(): zero it now, but leave the
        # free list alone (a finaliser may run in the middle of an allocation).
        arena = getattr(self, "_arena", None)
        if arena is not None:
            self._arena = None
            _zero(arena, self._offset, self._size)
            _pool.orphans.append((arena, self._offset, self._size))

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return "Secret(...)"

    def __reduce__(self) -> object:
        raise TypeError("a Secret cannot be pickled")


def _zero(arena: _Arena, offset: int, size: int) -> None:
    arena.view[offset : offset + size] = bytes(size)


def random_urlsafe(nbytes: int) -> Secret:
    """`nbytes` random bytes, base64url-encoded without padding, made inside the arena.

    The PKCE verifier: 64 random bytes -> 86 characters, as in pizauth 1.1. Unlike
    secrets.token_urlsafe, no copy of the randomness or of its encoding is left behind
    as bytes or str.
    """
    raw = Secret.zeros(nbytes)
    try:
        buf = raw.view()
        with open("/dev/urandom", "rb", buffering=0) as source:
            got = 0
            while got < nbytes:
                n = source.readinto(buf[got:])
                if not n:
                    raise OSError(errno.EIO, "short read from /dev/urandom")
                got += n
        out = Secret.zeros((nbytes * 4 + 2) // 3)
        _b64url_into(buf, out.view())
        return out
    finally:
        raw.wipe()


def _b64url_into(src: memoryview, dst: memoryview) -> None:
    # Byte by byte: every intermediate value is below 256, so it is one of CPython's
    # preallocated small ints and no object holding secret bits is ever created.
    j = 0
    for i in range(0, len(src), 3):
        n = min(3, len(src) - i)
        b0 = src[i]
        b1 = src[i + 1] if n > 1 else 0
        b2 = src[i + 2] if n > 2 else 0
        sextets = (b0 >> 2, ((b0 & 3) << 4) | (b1 >> 4), ((b1 & 15) << 2) | (b2 >> 6), b2 & 63)
        for k in range(n + 1):
            dst[j] = _B64URL[sextets[k]]
            j += 1
