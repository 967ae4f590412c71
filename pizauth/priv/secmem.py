"""Secrets in the parent: byte buffers that can be wiped, never str or bytes.

Every access token, refresh token and PKCE verifier the parent holds is a
Secret. Replacing or dropping a token wipes its bytes.
"""

from __future__ import annotations

import hmac

from pizauth.ipc import Buffer


class Secret:
    __slots__ = ("_buf",)

    def __init__(self, data: Buffer) -> None:
        self._buf = bytearray(data)

    def view(self) -> memoryview:
        return memoryview(self._buf)

    def equals(self, other: Buffer) -> bool:
        return hmac.compare_digest(self._buf, other)

    def wipe(self) -> None:
        self._buf[:] = bytes(len(self._buf))
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return "Secret(...)"
