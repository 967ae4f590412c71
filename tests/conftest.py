"""Harness for system tests: the installed `pizauth` against a local OAuth2 provider.

Every test drives the real command as a user would: write a pizauth.conf, start
`pizauth server`, run `pizauth show`, follow the URL like a browser, and look at
what `show` prints. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    PIZAUTH,
    URL_PREFIX,
    Client,
    Provider,
    Server,
    children_of,
    cmdline,
    http_get,
    title,
    wait_for,
)

# The tests import these from here; the server harness itself is shared with the
# end-to-end suite and the benchmarks.
__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "PIZAUTH",
    "URL_PREFIX",
    "Pizauth",
    "as_nobody",
    "children_of",
    "cmdline",
    "http_get",
    "title",
    "wait_for",
]
Pizauth = Server

# Under CI every test must run: a skip there means the machine lacks something CI is
# meant to provide (a Debian package, root, a working browser), and would let a broken
# feature pass unseen. Outside CI skips stay skips, with their reasons.
CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

# The only skips CI cannot avoid, by test function name, with the condition under which
# the skip is expected.
CI_ALLOWED_SKIPS = {
    # tomllib is in the standard library from Python 3.11; the project supports 3.10.
    "test_pyproject_installs_every_man_page_and_completion": sys.version_info < (3, 11),
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    if not (CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    name = getattr(item, "originalname", item.name)
    if CI_ALLOWED_SKIPS.get(name, False):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped under CI (CI={os.environ['CI']}), which must run it: {reason}"


def as_nobody(sock_path: str, request: bytes | None) -> tuple[str, int | bytes]:
    """Connect to a control socket as uid 65534 and send `request` (None: only connect).

    ("reply", bytes) or ("error", errno). Forks and drops privileges without exec, since
    the interpreter may not be readable by nobody. Needs root.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock_path)
                reply = b""
                if request is not None:
                    s.sendall(request)
                    s.shutdown(socket.SHUT_WR)
                    reply = s.makefile("rb").read()
            os.write(write_end, b"reply:" + reply)
        except OSError as e:
            os.write(write_end, f"error:{e.errno}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    kind, _, rest = answer.partition(b":")
    return ("reply", rest) if kind == b"reply" else ("error", int(rest))


@pytest.fixture
def provider() -> Iterator[Provider]:
    with Provider([Client(CLIENT_ID, CLIENT_SECRET)]) as p:
        yield p
    assert not [e for e in p.errors if "reused" in e.lower()], p.errors


@pytest.fixture
def pizauth(tmp_path: Path, provider: Provider) -> Iterator[Pizauth]:
    server = Pizauth(tmp_path, provider)
    yield server
    server.stop()
    # The parent's catch-all keeps the server alive through a bug; its log shows it.
    problems = server.log_problems()
    assert not problems, "the server logged an internal error:\n" + "\n".join(problems)
