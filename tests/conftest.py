"""Harness for system tests: the installed `pizauth` against a local OAuth2 provider.

Every test drives the real command as a user would: write a pizauth.conf, start
`pizauth server`, run `pizauth show`, follow the URL like a browser, and look at
what `show` prints. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import types
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


# -- unit and system tests ------------------------------------------------------------------
#
# A test is a system test when its function, a fixture of ours it uses, or a function or
# class of the test suite that these name (to any depth) names one of PROCESS_NAMES: it
# starts a real `pizauth server`, the local provider or another process. Every other test
# is a unit test.
# New tests are so classified without anyone marking them; `-m "not system"` runs the unit
# tests in seconds. An explicit @pytest.mark.system or @pytest.mark.unit wins.

TESTS = Path(__file__).resolve().parent
PROCESS_NAMES = frozenset(
    {
        "Server",  # server_harness: a real `pizauth server`
        "Pizauth",
        "Provider",  # examples/provider.py: the local provider (a server thread)
        "PIZAUTH",  # the installed command, run by subprocess
        "subprocess",
        "Popen",
        "fork",
        "forkpty",
        "execv",
        "execvp",
        "spawnv",
        "system",  # os.system
        # pizauth's own parts that start processes: the network child's worker launcher,
        # the hook and secret-command runners (through the reaper and usercmd).
        "Launcher",
        "HookRunner",
        "HookQueue",
        "SecretCommands",
        "run_blocking",
        "usercmd",
        "reaper",
    }
)


def _code_names(code: types.CodeType) -> set[str]:
    """The global and attribute names `code` and the functions nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _ours(obj: object) -> bool:
    """Whether `obj` is a function or class of the test suite (not of pytest or pizauth)."""
    try:
        source = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(TESTS)


def _reachable(obj: object, found: dict[int, object]) -> None:
    """Add to `found` function or class `obj` of ours and every one of ours it names."""
    obj = inspect.unwrap(obj) if inspect.isfunction(obj) else obj
    if id(obj) in found:
        return
    found[id(obj)] = obj
    if inspect.isclass(obj):
        for member in vars(obj).values():
            if inspect.isfunction(member):
                _reachable(member, found)
    elif inspect.isfunction(obj):
        for name in _code_names(obj.__code__):
            used = obj.__globals__.get(name)
            if (inspect.isfunction(used) or inspect.isclass(used)) and _ours(used):
                _reachable(used, found)


def _starts_processes(roots: list[object]) -> bool:
    """Whether `roots`, or a function or class of ours they name (to any depth), names one
    of PROCESS_NAMES."""
    found: dict[int, object] = {}
    for root in roots:
        _reachable(root, found)
    return any(
        _code_names(f.__code__) & PROCESS_NAMES for f in found.values() if inspect.isfunction(f)
    )


def is_system_test(item: pytest.Item) -> bool:
    """Whether the test, or a fixture of ours it uses, starts processes (PROCESS_NAMES)."""
    if not isinstance(item, pytest.Function):
        return False
    fixtures = getattr(item, "_fixtureinfo", None)
    fixture_funcs = [
        definition.func
        for definitions in (fixtures.name2fixturedefs.values() if fixtures else ())
        for definition in definitions
        if _ours(definition.func)
    ]
    return _starts_processes([item.function, *fixture_funcs])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("system") or item.get_closest_marker("unit"):
            continue
        item.add_marker(pytest.mark.system if is_system_test(item) else pytest.mark.unit)


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
