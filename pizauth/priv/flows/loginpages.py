"""The browser's page after a login: written once the code exchange has ended.

The network child holds the browser's connection until the parent's verdict
arrives. A callback that brings a code is answered when the exchange it starts
(or the one already under way for that login) ends: success or the reason it
failed. An exchange can take longer than a browser should wait, so after
EXCHANGE_PAGE seconds the page says where the result will show instead.
"""

from __future__ import annotations

from collections.abc import Callable

from pizauth.priv.state.clock import instant
from pizauth.text import shown
from pizauth.timeouts import EXCHANGE_PAGE

PROCESSING_PAGE = "pizauth processing authentication: you can safely close this page."
STILL_COMPLETING_PAGE = (
    "pizauth is still completing the login: the result will show in `pizauth status`."
)


def failed_page(name: str, reason: str) -> str:
    """The page for a login that failed; `reason` is safe, bounded text."""
    return (
        f"Authentication for {shown(name)} failed: {reason}. "
        f"Run 'pizauth show {shown(name)}' for a new login URL."
    )


class LoginPages:
    """Callbacks waiting for their account's code exchange to end.

    `send(request_id, status, page)` answers one callback; `clock()` is the instant
    now (the parent's loop calls expire with the same clock).
    """

    def __init__(
        self, send: Callable[[int, int, str], None], clock: Callable[[], float] = instant
    ) -> None:
        self._send = send
        self._clock = clock
        self.waiting: dict[str, list[tuple[int, float]]] = {}  # account -> (request, deadline)

    def wait(self, name: str, request_id: int) -> None:
        """A callback that waits for `name`'s exchange, EXCHANGE_PAGE seconds at most."""
        self.waiting.setdefault(name, []).append((request_id, self._clock() + EXCHANGE_PAGE))

    def done(self, name: str, error: str | None) -> None:
        """The account's exchange ended: None for success, else why it failed."""
        for request_id, _ in self.waiting.pop(name, []):
            if error is None:
                self._send(request_id, 200, PROCESSING_PAGE)
            else:
                self._send(request_id, 200, failed_page(name, error))

    def expire(self, now: float) -> None:
        """Answer the callbacks that have waited EXCHANGE_PAGE seconds."""
        for name in list(self.waiting):
            late = [w for w in self.waiting[name] if w[1] <= now]
            if not late:
                continue
            self.waiting[name] = [w for w in self.waiting[name] if w[1] > now]
            if not self.waiting[name]:
                del self.waiting[name]
            for request_id, _ in late:
                self._send(request_id, 200, STILL_COMPLETING_PAGE)

    def next_wakeup(self) -> float | None:
        return min((d for ws in self.waiting.values() for _, d in ws), default=None)

    def forget(self) -> None:
        """The network child went away: the browsers' connections went with it."""
        self.waiting.clear()
