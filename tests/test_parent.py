"""The parent's bookkeeping that a system test cannot wait for (hours-long timers)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pizauth import config
from pizauth.priv.parent import SOCKET_TOUCH_PERIOD, Parent, Sockets
from pizauth.priv.state.clock import instant

CONF = 'account "x" { auth_uri = "http://a.com/"; client_id = "c"; token_uri = "http://t/"; }'


def test_socket_is_touched_every_six_hours(tmp_path: Path) -> None:
    path = tmp_path / "pizauth.sock"
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(path))
    os.utime(path, (1000, 1000), follow_symlinks=False)
    sockets = Sockets(control, None, None)
    parent = Parent(config.parse(CONF), "unused", sockets, [], lambda _startup_done: None)
    now = instant()
    assert parent.next_touch > now + SOCKET_TOUCH_PERIOD - 60
    parent.tick(now)
    assert path.stat().st_mtime == 1000  # not yet due
    parent.tick(parent.next_touch)
    assert path.stat().st_mtime > 1000
    assert parent.next_touch >= now + 2 * SOCKET_TOUCH_PERIOD - 60
    # The loop never sleeps past the next touch (nor past the 37 s cap).
    assert parent.next_wakeup(parent.next_touch - 5) == pytest.approx(5)
    control.close()
