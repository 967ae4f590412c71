"""`pizauth systemd-unit`: the systemd user unit, for the command that prints it.

systemd needs an absolute path in ExecStart, and where pip or pipx put `pizauth`
differs from one machine to the next; the command knows its own path, so it can
print a unit that needs no editing. share/systemd/pizauth.service is the same
text with the placeholder, for packagers.
"""

from __future__ import annotations

import os
import sys

PLACEHOLDER = "@PIZAUTH@"

TEMPLATE = """\
# systemd user unit for the pizauth server.
#
# @PIZAUTH@ stands for the absolute path of the installed pizauth command
# (systemd needs one). Install with:
#
#   mkdir -p ~/.config/systemd/user
#   sed "s|@PIZAUTH@|$(command -v pizauth)|g" share/systemd/pizauth.service \\
#       > ~/.config/systemd/user/pizauth.service
#   systemctl --user daemon-reload
#   systemctl --user enable --now pizauth.service
#
# Hook commands that need the graphical session (notify-send, a browser) need
# its variables in the user manager, for example from the session's start-up:
#   systemctl --user import-environment DISPLAY WAYLAND_DISPLAY

[Unit]
Description=pizauth OAuth2 token server
Documentation=man:pizauth(1) man:pizauth.conf(5)

[Service]
# The server sends READY=1 on $NOTIFY_SOCKET once it answers commands.
Type=notify
# -d: stay in the foreground, logging to the journal; -vv: include refreshes
# and logins that wait for the user.
ExecStart=@PIZAUTH@ server -d -vv
ExecReload=@PIZAUTH@ reload
ExecStop=@PIZAUTH@ shutdown
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=default.target
"""


class UnitError(Exception):
    """The command's path cannot be written in a unit."""


def quote(path: str) -> str:
    """`path` as one word of a systemd command line (systemd.service(5), "COMMAND LINES")."""
    if not path.isprintable():
        raise UnitError("the pizauth command's path has characters a unit cannot hold")
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if escaped != path or " " in path else path


def command_path(argv0: str) -> str:
    """The absolute path of the running `pizauth` command.

    Not resolved through symlinks: pipx's ~/.local/bin/pizauth is a symlink that
    stays valid when pipx rebuilds the venv behind it.
    """
    if os.sep in argv0:
        path = os.path.abspath(argv0)
    else:  # run with a bare name and no path: look it up as the shell did
        import shutil

        path = shutil.which(argv0) or ""
    if not path or not os.access(path, os.X_OK) or path.endswith(".py"):
        raise UnitError(f"cannot tell where the pizauth command is (run as {argv0!r})")
    return path


def render(command: str) -> str:
    """The unit, body only (the install comment is for the template), for `command`."""
    body = TEMPLATE[TEMPLATE.index("[Unit]") :]
    header = (
        "# systemd user unit for the pizauth server, printed by `pizauth systemd-unit`.\n"
        "# Install: pizauth systemd-unit > ~/.config/systemd/user/pizauth.service\n"
        "#          systemctl --user daemon-reload\n"
        "#          systemctl --user enable --now pizauth.service\n"
        "# Hook commands that need the graphical session (notify-send, a browser) need\n"
        "# its variables in the user manager, for example from the session's start-up:\n"
        "#   systemctl --user import-environment DISPLAY WAYLAND_DISPLAY\n\n"
    )
    return header + body.replace(PLACEHOLDER, quote(command))


def main(argv0: str) -> int:
    try:
        text = render(command_path(argv0))
    except UnitError as e:
        sys.stderr.write(f"ERROR - {e}\n")
        return 1
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
