"""Errors kept for `pizauth status` when the detached server has nowhere to log.

With neither syslog nor the journal, the parent keeps its last warnings and
errors, and whatever its children write to stderr (their log lines, a
traceback) arrives on a pipe it reads: `status` shows them after the accounts'
lines, so no error is lost unseen. Bounded in number and in length, as a
child may write anything.

A record logged with `extra={"kept_as": TOPIC}` is about a condition that may end
(the configuration file's permissions): it replaces the earlier line of its topic,
and forget(TOPIC) removes that line once the condition no longer holds.
"""

from __future__ import annotations

import collections
import logging
import os
import time

from pizauth.process import LEVEL_NAMES
from pizauth.safetext import safe_text

MAX_KEPT = 20  # lines
MAX_LINE = 1024  # UTF-8 bytes of each line
# Lines a child writes at these levels are not errors (they arrive when -v asks for them).
_NOT_ERRORS = (b"INFO - ", b"DEBUG - ")
# The topic of the warning that the configuration file is readable by others.
CONFIG_PERMISSIONS = "config-permissions"


class KeptLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        # (when, text, topic or None)
        self.lines: collections.deque[tuple[float, str, str | None]] = collections.deque(
            maxlen=MAX_KEPT
        )
        self._partial = bytearray()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "account", None) is not None:
            return  # already in that account's status line
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format must not lose the record
            message = str(record.msg)
        topic = getattr(record, "kept_as", None)
        if topic is not None:
            self.forget(topic)
        self.keep(f"{LEVEL_NAMES.get(record.levelno, 'ERROR')} - {message}", topic)

    def keep(self, text: str, topic: str | None = None) -> None:
        self.lines.append((time.time(), safe_text(text, MAX_LINE), topic))

    def forget(self, topic: str) -> None:
        """Remove the line about `topic`: what it said no longer holds."""
        kept = [line for line in self.lines if line[2] != topic]
        self.lines.clear()
        self.lines.extend(kept)

    def read_from(self, fd: int) -> None:
        """Take what the children wrote to stderr (a non-blocking pipe)."""
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        buf = self._partial + data
        *lines, rest = bytes(buf).split(b"\n")
        # A line without its end yet, bounded: past MAX_LINE it is kept as it is.
        self._partial = bytearray(rest[:MAX_LINE])
        if len(rest) > MAX_LINE or not data:
            lines.append(rest)
            self._partial.clear()
        for line in lines:
            if line and not line.startswith(_NOT_ERRORS):
                self.keep(line[: MAX_LINE * 4].decode("utf-8", "replace"))

    def status_lines(self) -> list[str]:
        return [
            f"(log {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}) {text}"
            for t, text, _ in self.lines
        ]
