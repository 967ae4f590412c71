"""A compromised child is confined, shown by compromising the live children.

As root, gdb attaches to each running child (non-dumpable, but root may still
ptrace it), takes the interpreter's lock and runs Python code inside it: the
code tries what an attacker who controls the child would try (write a file,
read the configuration, reach the control socket and ask for a dump, run a
program, signal the parent) and keeps the errno it got, which gdb then
prints. Each attempt must fail; a harmless action in the same process must
succeed, so a broken injection cannot pass for a confined child.

Needs root, gdb and a kernel with Landlock; under CI they are provided and
the tests must run.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Pizauth, children_of, title, wait_for

from pizauth import landlock, sandbox

ALLOWED = 0  # the probe's result when the attempt succeeded
UNEXPECTED = -1  # the probe raised something other than OSError
DENIED = (errno.EACCES, errno.EPERM)

# Run inside the child: the attempt, then its errno (0 if it worked) in a global.
PROBE = """
try:
{body}
    _pizauth_probe = 0
except OSError as e:
    _pizauth_probe = e.errno or -2
except BaseException:
    _pizauth_probe = -1
"""
GLOBAL = (
    "(long)PyLong_AsLong((void*)PyDict_GetItemString("
    '(void*)PyModule_GetDict((void*)PyImport_AddModule("__main__")), "_pizauth_probe"))'
)


def _require() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (to ptrace a non-dumpable process)")
    if shutil.which("gdb") is None:
        missing.append("gdb")
    if not sandbox.available():
        missing.append(f"seccomp ({sandbox.unavailable()})")
    if landlock.abi() == 0:
        missing.append("a kernel with Landlock")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide " + ", ".join(missing))
        pytest.skip("needs " + ", ".join(missing))


def inject(pid: int, attempts: list[str]) -> list[int]:
    """Run each attempt (Python statements) in process `pid`; the errno of each."""
    commands = ["set confirm off", "call (int)PyGILState_Ensure()"]
    for body in attempts:
        code = PROBE.format(body="\n".join("    " + line for line in body.splitlines()))
        # Hex: no quoting to get wrong between Python, gdb and C.
        run = f"exec(bytes.fromhex('{code.encode().hex()}').decode())"
        commands += [f'call (int)PyRun_SimpleString("{run}")', f'printf "PROBE %ld\\n", {GLOBAL}']
    commands.append("call (void)PyGILState_Release($1)")
    args = ["gdb", "-nx", "-batch", "-p", str(pid)]
    for command in commands:
        args += ["-ex", command]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    results = [int(v) for v in re.findall(r"^PROBE (-?\d+)$", out.stdout, re.M)]
    assert len(results) == len(attempts), out.stdout + out.stderr
    return results


def processes(pizauth: Pizauth) -> dict[str, int]:
    """pid by role: command, network, network launcher."""
    found = {}
    # A short-lived process (a hook, a worker) may end between the listing and the read;
    # title() gives "?" for it, which names no role.
    for pid in children_of(pizauth.proc.pid):
        found[title(pid).removeprefix("pizauth: ")] = pid
        for grandchild in children_of(pid):
            found[title(grandchild).removeprefix("pizauth: ")] = grandchild
    found.pop("?", None)
    return found


@pytest.fixture
def server(pizauth: Pizauth) -> Pizauth:
    _require()
    secret = pizauth.tmp / "secret.txt"
    secret.write_text("not for a child\n")
    pizauth.start()
    wait_for(lambda: {"command", "network", "network launcher"} <= processes(pizauth).keys())
    return pizauth


def control_socket(pizauth: Pizauth) -> str:
    sockets = list((pizauth.tmp / "runtime").rglob("*.sock"))
    assert len(sockets) == 1, sockets
    return str(sockets[0])


def attacks(pizauth: Pizauth) -> dict[str, str]:
    tmp = pizauth.tmp
    return {
        "write a file": f"open('{tmp}/written', 'w').close()",
        "create a file exclusively": f"os.close(os.open('{tmp}/made', os.O_CREAT | os.O_WRONLY))",
        "read the config": f"open('{pizauth.conf}').read()",
        "read a file": f"open('{tmp}/secret.txt').read()",
        "read /proc/PARENT/environ": "open(f'/proc/{os.getppid()}/environ').read()",
        "list a directory": f"os.listdir('{tmp}')",
        "make a unix socket and dump": (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"s.connect('{control_socket(pizauth)}')\n"
            "s.sendall(b'dump:')"
        ),
        "run a program": "os.execv('/bin/true', ['true'])",
        "signal the parent": "os.kill(os.getppid(), 0)",
    }


def run_attacks(pid: int, pizauth: Pizauth, positive: str) -> dict[str, int]:
    named = {"import os (control)": "import os", "positive control": positive}
    named.update(attacks(pizauth))
    return dict(zip(named, inject(pid, list(named.values())), strict=True))


def check(results: dict[str, int], pizauth: Pizauth) -> None:
    assert results.pop("import os (control)") == ALLOWED
    assert results.pop("positive control") == ALLOWED, "injection works"
    broken = {name: errno.errorcode.get(r, r) for name, r in results.items() if r not in DENIED}
    assert not broken, f"attempts that did not fail with EACCES/EPERM: {broken}"
    assert not (pizauth.tmp / "written").exists()
    assert not (pizauth.tmp / "made").exists()
    assert "dump" not in pizauth.log()


def test_command_child_opens_no_file_and_makes_no_socket(server: Pizauth) -> None:
    pid = processes(server)["command"]
    # It may still compute and use the descriptors it has.
    results = run_attacks(pid, server, "os.getpid()")
    extra = inject(
        pid,
        [
            "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)",
            "import socket\nsocket.socketpair()",
            "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
            "open('/etc/hosts').read()",
        ],
    )
    assert extra[:3] == [errno.EPERM] * 3, extra
    assert extra[3] == errno.EACCES, "not even name resolution files"
    check(results, server)
    assert server.show().returncode == 1  # still serves clients
    assert "Access token unavailable" in server.show().stderr.decode()


@pytest.mark.parametrize("role", ["network", "network launcher"])
def test_network_side_reads_only_what_it_needs_and_reaches_no_unix_socket(
    server: Pizauth, role: str
) -> None:
    pid = processes(server)[role]
    # It resolves names and makes IP sockets: that is its job.
    results = run_attacks(
        pid,
        server,
        "import socket\nsocket.getaddrinfo('localhost', 80)\n"
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"
        "open('/etc/hosts').read()",
    )
    # A socket pair is born connected: it can reach no listening socket.
    pair = inject(
        pid,
        [
            f"import socket\na, b = socket.socketpair()\na.connect('{control_socket(server)}')",
            "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)",
        ],
    )
    assert pair[0] in (errno.EISCONN, errno.EPERM), errno.errorcode.get(pair[0], pair[0])
    assert pair[1] == errno.EPERM, "only routing netlink"
    check(results, server)


def test_token_request_by_host_name_after_lock_in(pizauth: Pizauth) -> None:
    """A confined worker resolves `localhost`, connects and gets a token, twice."""
    _require()
    uri = pizauth.provider.token_uri.replace("127.0.0.1", "localhost")
    pizauth.write_config(pizauth.account_block().replace(pizauth.provider.token_uri, uri))
    pizauth.start()
    first = pizauth.authorise()
    assert pizauth.run("refresh", "acct").returncode == 0
    wait_for(lambda: (t := pizauth._token("acct")) not in (None, first) and t, 10, "refresh")
    assert len(pizauth.provider.token_requests) == 2
    assert "internal error" not in pizauth.log()


def test_children_keep_seccomp(server: Pizauth) -> None:
    for role, pid in processes(server).items():
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), role


def test_without_landlock_the_parent_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(landlock, "abi", lambda: 0)
    monkeypatch.setattr(logging.getLogger("pizauth"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="pizauth"):
        sandbox.report()
        assert landlock.restrict(["/"]) == 0  # and a child runs on, unconfined
    assert [r.getMessage() for r in caplog.records] == [
        "the children's file access is not confined: the kernel has no Landlock"
    ]
