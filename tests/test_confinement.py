"""A compromised child is confined, shown by compromising the live children.

As root, gdb attaches to each running child (non-dumpable, but root may still
ptrace it), takes the interpreter's lock and runs Python code inside it: the
code tries what an attacker who controls the child would try (write a file,
read the configuration, reach the control socket and ask for a dump, run a
program, signal the parent, change a file's mode, owner, attributes or times,
change the parent's limits, priority or CPUs, make a namespace) and keeps the
errno it got, which gdb then prints. Each attempt must fail: with an error, or,
for a system call outside the child's seccomp allowlist, by the child's death
by SIGSYS, which the test checks was logged as such (and after which the
parent starts the child again). A harmless action in the same process must
succeed, so a broken injection cannot pass for a confined child.

Needs root, gdb and a kernel with Landlock; under CI they are provided and
the tests must run.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import Pizauth, children_of, http_get, title, wait_for

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


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def inject(pid: int, attempts: list[str], allow_death: bool = False) -> list[int | None]:
    """Run each attempt (Python statements) in process `pid`; the errno of each. With
    `allow_death`, the process may die on the way: None for what did not come back."""
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
    # No core file: gdb may crash when the process dies under it (a filter's kill).
    out = subprocess.run(
        args, capture_output=True, text=True, timeout=60, preexec_fn=_no_core_dumps
    )
    results: list[int | None] = [int(v) for v in re.findall(r"^PROBE (-?\d+)$", out.stdout, re.M)]
    if allow_death and len(results) < len(attempts) and not alive(pid):
        results += [None] * (len(attempts) - len(results))
    assert len(results) == len(attempts), out.stdout + out.stderr
    return results


def processes(pizauth: Pizauth) -> dict[str, int]:
    """pid by role: command, network, network launcher, network worker (if one runs)."""
    found = {}
    # A short-lived process (a hook, a worker) may end between the listing and the read;
    # title() gives "?" for it, which names no role.
    generation = children_of(pizauth.proc.pid)
    for _ in range(3):  # children, the launcher, workers
        for pid in generation:
            found[title(pid).removeprefix("pizauth: ")] = pid
        generation = [c for pid in generation for c in children_of(pid)]
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


def test_without_seccomp_or_landlock_the_parent_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(landlock, "abi", lambda: 0)
    monkeypatch.setattr(sandbox, "_lib", None)
    monkeypatch.setattr(sandbox, "_why_not", "libseccomp is not installed")
    monkeypatch.setattr(logging.getLogger("pizauth"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="pizauth"):
        sandbox.report()
        # And a child runs on, unconfined, without saying it again.
        assert landlock.restrict(["/"]) == 0
        assert sandbox.confine("command child", sandbox.COMMAND, warn=False) is False
        assert sandbox.confine("network child", sandbox.NETWORK, warn=False) is False
    assert [r.getMessage() for r in caplog.records] == [
        "the children are not sandboxed: libseccomp is not installed",
        "the children's file access is not confined: the kernel has no Landlock",
    ]


SCOPED = """
import os, socket, sys
from pizauth import landlock
assert landlock.restrict([], scoped=True) >= 6
out = []
try:
    os.kill(os.getppid(), 0)
    out.append("signal: allowed")
except OSError as e:
    out.append(f"signal: {e.errno}")
try:
    socket.socket(socket.AF_UNIX).connect("\\0" + sys.argv[1])
    out.append("abstract socket: allowed")
except OSError as e:
    out.append(f"abstract socket: {e.errno}")
print(out)
"""


def test_landlock_scopes_keep_a_process_from_signalling_or_reaching_outside_its_domain() -> None:
    """Beneath the seccomp filter (which already allows a signal only to the process
    itself, and no AF_UNIX socket() on the network side): Landlock's scopes."""
    _require()
    if landlock.abi() < 6:
        pytest.skip(f"Landlock ABI {landlock.abi()} has no scopes (6 or newer)")
    name = f"pizauth-scope-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("\0" + name)
        listener.listen(1)
        # A control, unconfined: the same code reaches both.
        free = SCOPED.replace("assert landlock.restrict([], scoped=True) >= 6", "")
        for code, expected in ((free, 0), (SCOPED, errno.EPERM)):
            result = subprocess.run(
                [sys.executable, "-c", code, name], capture_output=True, text=True, timeout=30
            )
            want = "allowed" if expected == 0 else str(expected)
            assert result.stdout.strip() == str([f"signal: {want}", f"abstract socket: {want}"]), (
                result.stderr
            )


def test_a_kill_by_the_filter_is_told_from_an_exit() -> None:
    core = 0x80  # the core-dump flag of a wait status
    assert sandbox.killed_by_filter(signal.SIGSYS)
    assert sandbox.killed_by_filter(signal.SIGSYS | core)
    assert not sandbox.killed_by_filter(signal.SIGSYS << 8)  # exit(31)
    assert not sandbox.killed_by_filter(signal.SIGKILL)
    assert not sandbox.killed_by_filter(0)


# -- what Landlock cannot take away: metadata, other processes, namespaces ------------------------

# The role's name in the server's log, as sandbox.killed_message() gives it.
LOG_NAMES = {
    "command": "command child",
    "network": "network child",
    "network launcher": "network launcher",
    "network worker": "network worker",
}


def syscall_number(name: str) -> int:
    lib = sandbox._load()
    assert lib is not None
    return int(lib.seccomp_syscall_resolve_name(name.encode()))


def metadata_attacks(pizauth: Pizauth, home: Path, parent: int) -> dict[str, str]:
    """Each changes something Landlock has no right for; each must fail or end the child."""
    conf, key = pizauth.conf, home / ".ssh" / "id_ed25519"
    libc = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    raise_errno = "if rc < 0:\n    raise OSError(ctypes.get_errno(), 'failed')"
    return {
        "chmod the config": f"os.chmod('{conf}', 0o666)",
        # -100: AT_FDCWD. (os.chmod makes a chmod call, not fchmodat.)
        "fchmodat the config's directory": f"{libc}"
        f"rc = libc.fchmodat(-100, b'{conf.parent}', 0o777, 0)\n{raise_errno}",
        "chmod ~/.ssh": f"os.chmod('{home}/.ssh', 0o777)",
        "chmod a private key": f"os.chmod('{key}', 0o644)",
        "fchown stderr": "os.fchown(2, 1, 1)",
        "setxattr the config": f"os.setxattr('{conf}', 'user.pizauth', b'x')",
        "utimensat the config": f"os.utime('{conf}', (0, 0))",
        "prlimit64 on the parent": "import resource\n"
        f"soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        f"resource.prlimit({parent}, resource.RLIMIT_NOFILE, (soft - 1, hard))",
        "setpriority on the parent": f"os.setpriority(os.PRIO_PROCESS, {parent}, 10)",
        "sched_setaffinity on the parent": f"os.sched_setaffinity({parent}, {{0}})",
        "unshare a user namespace": f"{libc}rc = libc.unshare(0x10000000)\n{raise_errno}",
        "run a program": "os.execv('/bin/true', ['true'])",
        "signal the parent": f"os.kill({parent}, 0)",
        "io_uring_setup": f"{libc}params = ctypes.create_string_buffer(120)\n"
        f"rc = libc.syscall({syscall_number('io_uring_setup')}, 1, params)\n{raise_errno}",
    }


def parent_state(pid: int) -> dict[str, str]:
    """What an attack on the parent would change: its limits, nice value and CPUs."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        "limits": Path(f"/proc/{pid}/limits").read_text(),
        "nice": Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16],
        "cpus": re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)[1],  # type: ignore[index]
    }


def modes(paths: list[Path]) -> dict[str, tuple[int, int, int, list[str]]]:
    return {
        str(p): (p.stat().st_mode, p.stat().st_uid, p.stat().st_mtime_ns, os.listxattr(p))
        for p in paths
    }


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def home(pizauth: Pizauth) -> Path:
    """A home directory with an ~/.ssh and a private key, as the server's HOME."""
    home = pizauth.tmp / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh").chmod(0o700)
    key = home / ".ssh" / "id_ed25519"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    pizauth.env["HOME"] = str(home)
    return home


class SilentEndpoint:
    """A token endpoint that accepts and never answers: a worker waits on it, alive."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"
        self.held: list[socket.socket] = []

    def wait_for_call(self) -> None:
        self.sock.settimeout(15)
        conn, _ = self.sock.accept()
        self.held.append(conn)


def start_worker(pizauth: Pizauth, endpoint: SilentEndpoint) -> None:
    """Log in to the account whose token endpoint never answers: its exchange's worker
    then waits for a reply. (The browser's page waits for the exchange: not read.)"""
    status, headers, _ = http_get(pizauth.auth_url("silent"))
    assert status == 302
    redirect = urllib.parse.urlsplit(headers["location"])
    browser = socket.create_connection(("127.0.0.1", redirect.port))
    request = f"GET {redirect.path}?{redirect.query} HTTP/1.1\r\nHost: {redirect.netloc}\r\n\r\n"
    browser.sendall(request.encode())
    endpoint.held.append(browser)
    endpoint.wait_for_call()


def role_pid(pizauth: Pizauth, role: str, old: int | None) -> int:
    return wait_for(
        lambda: (pid := processes(pizauth).get(role)) not in (None, old) and pid,
        15,
        f"a {role} other than {old}",
    )


@pytest.mark.parametrize("role", ["command", "network", "network launcher", "network worker"])
def test_child_changes_no_file_metadata_no_other_process_and_no_namespace(
    pizauth: Pizauth, home: Path, role: str
) -> None:
    """Each attack in a live child fails: with an error, or by the child's death by
    SIGSYS (logged as such), after which the parent has the child started again. The
    files, the parent's limits, nice value and CPUs, and the token are as they were."""
    _require()
    endpoint = SilentEndpoint()
    silent = pizauth.account_block("silent").replace(pizauth.provider.token_uri, endpoint.uri)
    pizauth.write_config(pizauth.account_block() + silent)
    pizauth.start()
    token = pizauth.authorise()
    parent = pizauth.proc.pid
    cpus = os.sched_getaffinity(parent)
    files = [pizauth.conf, pizauth.conf.parent, home / ".ssh", home / ".ssh" / "id_ed25519"]
    before_files, before_parent = modes(files), parent_state(parent)
    outcomes: dict[str, str] = {}
    pid: int | None = None
    for name, code in metadata_attacks(pizauth, home, parent).items():
        if name == "sched_setaffinity on the parent" and cpus == {0}:
            code = code.replace("{0}", "{1}")
        if pid is None or not alive(pid):  # the first attack, or the last one killed it
            if role == "network worker":
                start_worker(pizauth, endpoint)
            pid = role_pid(pizauth, role, pid)
        results = inject(pid, ["import os", code], allow_death=True)
        assert results[0] == ALLOWED, "injection works"
        if results[1] is not None:
            outcomes[name] = errno.errorcode.get(results[1], "succeeded")
            continue
        wait_for(lambda: not alive(pid), 5, f"{role} (pid {pid}) to end")  # noqa: B023
        killed = sandbox.killed_message(LOG_NAMES[role], pid)
        wait_for(lambda: killed in pizauth.log(), 10, killed, pizauth.log)  # noqa: B023
        pizauth.expected_problems.append(killed)  # provoked: not a bug
        outcomes[name] = "killed by SIGSYS"
    failed = {n: o for n, o in outcomes.items() if o not in ("EPERM", "EACCES", "killed by SIGSYS")}
    assert not failed, f"attacks that did not fail: {failed} (all: {outcomes})"
    assert len(outcomes) == len(metadata_attacks(pizauth, home, parent))
    assert modes(files) == before_files
    assert parent_state(parent) == before_parent
    if role != "command":
        role_pid(pizauth, "network", None)  # back, to serve a login
    assert pizauth.show().stdout.decode() == token + "\n"  # every token is still there
    assert pizauth.run("status").returncode == 0
