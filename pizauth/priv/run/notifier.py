"""Telling the user: login reminders, errors, and token events.

auth_notify_cmd reminds of each pending login at once and then every
auth_notify_interval; error_notify_cmd reports failures (they go to the log
when it is unset, so that no error vanishes); token_event_cmd hears of every
token obtained, refreshed, revoked or invalidated. Reminders and errors run
one at a time in order, and so do events, each queue on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pizauth.config import Config
from pizauth.ipc import TokenEvent
from pizauth.priv.run.hooks import HookQueue, HookRunner
from pizauth.priv.state.tokens import DevicePending, Entry, Pending, TokenTable
from pizauth.text import shown
from pizauth.timeouts import HOOK

log = logging.getLogger("pizauth")

MIN_INTERVAL = 1.0  # a zero interval must not busy-loop


def reminder_time(entry: Entry, interval: float) -> float | None:
    state = entry.state
    if isinstance(state, DevicePending):
        if state.device_code is None:
            return None  # no user code yet
    elif not isinstance(state, Pending) or state.exchanging:
        return None
    if state.last_notification is None:
        return float("-inf")
    return state.last_notification + max(interval, MIN_INTERVAL)


def due(table: TokenTable, interval: float, now: float) -> list[Entry]:
    out = []
    for entry in table.entries.values():
        at = reminder_time(entry, interval)
        if at is not None and at <= now:
            out.append(entry)
    return out


def next_wakeup(table: TokenTable, interval: float) -> float | None:
    times = [t for e in table.entries.values() if (t := reminder_time(e, interval)) is not None]
    return min(times, default=None)


class Notifier:
    """Runs the user's notification commands; `config()` is the configuration in force."""

    def __init__(self, hooks: HookRunner, config: Callable[[], Config]) -> None:
        self._config = config
        self.notifications = HookQueue(hooks)
        self.events = HookQueue(hooks)

    def remind_due(self, table: TokenTable, now: float) -> None:
        for entry in due(table, self._config().auth_notify_interval, now):
            self.remind(entry, now)

    def next_wakeup(self, table: TokenTable) -> float | None:
        return next_wakeup(table, self._config().auth_notify_interval)

    def remind(self, entry: Entry, now: float) -> None:
        pending = entry.state
        assert isinstance(pending, Pending | DevicePending)
        pending.last_notification = now
        name = entry.account.name
        cmd = self._config().auth_notify_cmd
        if cmd:
            if isinstance(pending, DevicePending):
                # Never the device code: only what the user needs to log in.
                env = {
                    "PIZAUTH_ACCOUNT": name,
                    "PIZAUTH_URL": pending.uri,
                    "PIZAUTH_USER_CODE": pending.user_code,
                }
            else:
                env = {"PIZAUTH_ACCOUNT": name, "PIZAUTH_URL": pending.request.url}
            self.notifications.submit(cmd, env, HOOK)
        else:
            log.info(
                "%s needs authorising: run 'pizauth show %s' for the URL", shown(name), shown(name)
            )

    def error(self, name: str, message: str) -> None:
        cmd = self._config().error_notify_cmd
        if cmd:
            env = {"PIZAUTH_ACCOUNT": name, "PIZAUTH_MSG": message}
            self.notifications.submit(cmd, env, HOOK)
        else:
            # With no command, the log is where the user looks. `account`: the record is
            # also in that account's status line, so a log kept for status skips it.
            log.error("%s", message, extra={"account": name})

    def server_error(self, message: str) -> None:
        """A failure that is no one account's (the token store): always logged, and
        error_notify_cmd runs with PIZAUTH_ACCOUNT empty."""
        log.error("%s", message)
        cmd = self._config().error_notify_cmd
        if cmd:
            self.notifications.submit(cmd, {"PIZAUTH_ACCOUNT": "", "PIZAUTH_MSG": message}, HOOK)

    def event(self, name: str, event: TokenEvent | None) -> None:
        cmd = self._config().token_event_cmd
        # With no command nothing is queued, to be replayed once one is configured.
        if cmd and event is not None:
            env = {"PIZAUTH_ACCOUNT": name, "PIZAUTH_EVENT": event.value}
            self.events.submit(cmd, env, HOOK)
