"""Secrets that stay secret, measured from outside (docs/architecture.md "Secrets in memory").

The system tests read the server's processes the way an attacker with root
would: every readable mapping through /proc/PID/mem, plus /proc/PID/status,
smaps and limits. They need root (CAP_SYS_PTRACE), because every pizauth
process is non-dumpable and so not readable by its own uid; elsewhere they
skip. The arena and the seccomp filter are also tested on their own.
"""

from __future__ import annotations

import base64
import ctypes
import gc
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import conftest
import pytest
import server_harness
from conftest import CLIENT_SECRET, Pizauth, children_of, title, wait_for

from pizauth import sandbox
from pizauth.priv.state import secmem
from pizauth.priv.state.secmem import Secret

# Mappings that are not memory of the process (reading them fails or means nothing).
UNREADABLE = ("[vvar]", "[vvar_vclock]", "[vsyscall]")
CHUNK = 1 << 20
PR_CAPBSET_DROP = 24
CAP_SYS_PTRACE = 19
CAP_IPC_LOCK = 14


def descendants(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        found += [child, *descendants(child)]
    return found


def regions(pid: int) -> Iterable[tuple[int, int]]:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if "r" not in fields[1] or (len(fields) > 5 and fields[5] in UNREADABLE):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        yield start, end


def occurrences(pid: int, needles: dict[str, bytes]) -> dict[str, int]:
    """How often each needle occurs anywhere in `pid`'s readable memory."""
    counts = dict.fromkeys(needles, 0)
    overlap = max(len(n) for n in needles.values()) - 1
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for start, end in regions(pid):
            tail = b""
            for pos in range(start, end, CHUNK):
                try:
                    chunk = os.pread(fd, min(CHUNK, end - pos), pos)
                except OSError:
                    tail = b""
                    continue  # a guard page or a range that vanished meanwhile
                data = tail + chunk
                for name, needle in needles.items():
                    # Count starts inside this chunk only, so an overlap is not counted twice.
                    i = data.find(needle)
                    while i >= 0:
                        if i + len(needle) > len(tail):
                            counts[name] += 1
                        i = data.find(needle, i + 1)
                tail = data[-overlap:] if overlap else b""
    finally:
        os.close(fd)
    return counts


def found(pid: int, needles: dict[str, bytes]) -> dict[str, int]:
    """The needles found in `pid`'s memory, with a control: its own title must be found,
    or the scan read nothing and proves nothing."""
    counts = occurrences(pid, {**needles, "(control)": title(pid).encode()})
    assert counts.pop("(control)"), f"could not read the memory of pid {pid}"
    return {k: v for k, v in counts.items() if v}


def roles(pizauth: Pizauth) -> dict[str, list[int]]:
    """The parent, and each child with everything it started (the network child's helpers)."""
    out = {"parent": [pizauth.proc.pid]}
    for child in children_of(pizauth.proc.pid):
        name = title(child).removeprefix("pizauth: ")
        out[name] = [child, *descendants(child)]
    return out


def status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def workers_done(pizauth: Pizauth) -> bool:
    """No token-endpoint call is running: the network child has only its launcher left."""
    net = roles(pizauth).get("network", [])
    return len(net) == 2


@pytest.fixture
def session(pizauth: Pizauth) -> dict[str, bytes]:
    """A full authorisation and one refresh; the secrets they involved."""
    if os.geteuid() != 0:
        pytest.skip("reading another process's memory needs root (CAP_SYS_PTRACE)")
    pizauth.start()
    first = pizauth.authorise()
    assert pizauth.run("refresh", "acct").returncode == 0
    assert pizauth.provider.wait_for_token_requests(2)
    second = wait_for(lambda: (t := pizauth._token("acct")) not in (None, first) and t, 5, "new")
    exchange, refresh = pizauth.provider.token_requests
    wait_for(lambda: workers_done(pizauth), 5, "token workers to exit")
    return {
        "first access token": first.encode(),
        "second access token": second.encode(),
        "refresh token": refresh["refresh_token"].encode(),
        "code verifier": exchange["code_verifier"].encode(),
        "client secret": CLIENT_SECRET.encode(),
    }


def test_children_hold_no_token_after_use(pizauth: Pizauth, session: dict[str, bytes]) -> None:
    processes = roles(pizauth)
    assert sorted(processes) == ["command", "network", "parent"], processes
    tokens = {k: v for k, v in session.items() if k != "client secret"}
    # The parent legitimately holds the current token pair (in its arena).
    assert found(pizauth.proc.pid, tokens) != {}
    for role in ("command", "network"):
        for pid in processes[role]:
            assert found(pid, session) == {}, f"{role} ({title(pid)}, pid {pid})"


def test_nothing_holds_a_token_after_revoke(pizauth: Pizauth, session: dict[str, bytes]) -> None:
    assert pizauth.run("revoke", "acct").returncode == 0
    tokens = {k: v for k, v in session.items() if k != "client secret"}
    for role, pids in roles(pizauth).items():
        for pid in pids:
            assert found(pid, tokens) == {}, f"{role} ({title(pid)}, pid {pid})"
    assert pizauth.show().returncode == 1  # and the server still answers


def test_command_child_keeps_no_copy_of_a_restored_dump(
    pizauth: Pizauth, session: dict[str, bytes]
) -> None:
    dump = pizauth.run("dump").stdout
    assert len(dump) > 100
    restored = pizauth.run("restore", input=dump)
    assert restored.returncode == 0, restored
    # The dump is ciphertext: any 24 bytes of it are found only where a copy is.
    pieces = {f"dump[{i}:]": dump[i : i + 24] for i in (0, len(dump) // 2, len(dump) - 24)}
    for pid in roles(pizauth)["command"]:
        assert found(pid, pieces) == {}, f"command child ({title(pid)}, pid {pid})"


def test_parent_arena_is_locked_and_not_dumped(pizauth: Pizauth, session: dict[str, bytes]) -> None:
    pid = pizauth.proc.pid
    locked_kb = int(status_field(pid, "VmLck").split()[0])
    assert locked_kb > 0, "no locked memory in the parent"
    smaps = Path(f"/proc/{pid}/smaps").read_text()
    # Each mapping's block ends with its VmFlags line; the arena is locked (lo) and
    # excluded from core dumps (dd).
    flags = re.findall(r"^VmFlags: (.*)$", smaps, re.M)
    assert any({"lo", "dd"} <= set(f.split()) for f in flags), flags


def drop_ptrace_capability() -> None:
    """Take CAP_SYS_PTRACE out of this process's bounding set: after exec, root no longer
    has it, and only then does the kernel's dumpable check decide (see below)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


def wrap_pizauth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prelude: str) -> None:
    """Make the harness run `pizauth` (server and commands) after `prelude` (Python)."""
    wrapper = tmp_path / "pizauth-wrapped"
    wrapper.write_text(
        f"#!{sys.executable}\nimport ctypes, os, resource, sys\n{prelude}\n"
        f"os.execv({conftest.PIZAUTH!r}, [{conftest.PIZAUTH!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    # The harness starts the server through server_harness.PIZAUTH; conftest re-exports it.
    monkeypatch.setattr(server_harness, "PIZAUTH", str(wrapper))
    monkeypatch.setattr(conftest, "PIZAUTH", str(wrapper))


def drop_capability_code(capability: int) -> str:
    return (
        f"if ctypes.CDLL(None).prctl({PR_CAPBSET_DROP}, {capability}, 0, 0, 0):\n"
        f"    sys.exit('cannot drop capability {capability}')"
    )


@pytest.fixture
def without_ptrace_capability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the server (and every pizauth command) without CAP_SYS_PTRACE."""
    wrap_pizauth(tmp_path, monkeypatch, drop_capability_code(CAP_SYS_PTRACE))


def readable_by_same_uid(pid: int) -> bool:
    """Whether a process of our uid and capabilities, less CAP_SYS_PTRACE, may open
    `pid`'s memory. With equal capabilities the kernel refuses exactly when the target
    is not dumpable (PR_SET_DUMPABLE 0): what stops a same-uid attacker reading tokens."""
    probe = f"open('/proc/{pid}/mem', 'rb')"
    result = subprocess.run(
        [sys.executable, "-c", probe], preexec_fn=drop_ptrace_capability, capture_output=True
    )
    if result.returncode and b"PermissionError" not in result.stderr:
        raise AssertionError(result.stderr.decode())
    return result.returncode == 0


def test_no_process_can_dump_core_or_be_read(
    without_ptrace_capability: None, pizauth: Pizauth, session: dict[str, bytes]
) -> None:
    control = subprocess.Popen(["sleep", "30"], preexec_fn=drop_ptrace_capability)
    try:
        assert readable_by_same_uid(control.pid), "the probe cannot even read a plain process"
    finally:
        control.kill()
        control.wait()
    for role, pids in roles(pizauth).items():
        for pid in pids:
            limits = Path(f"/proc/{pid}/limits").read_text()
            line = next(x for x in limits.splitlines() if x.startswith("Max core file size"))
            assert line.split()[4:6] == ["0", "0"], f"{role}: {line}"
            assert status_field(pid, "NoNewPrivs") == "1", role
            assert not readable_by_same_uid(pid), f"{role} ({title(pid)}) is dumpable"


def test_server_without_locked_memory_says_so_once_and_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pizauth: Pizauth
) -> None:
    # RLIMIT_MEMLOCK 0; root would be exempt through CAP_IPC_LOCK, so drop that too.
    prelude = "resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))"
    if os.geteuid() == 0:
        prelude += "\n" + drop_capability_code(CAP_IPC_LOCK)
    wrap_pizauth(tmp_path, monkeypatch, prelude)
    pizauth.start("-v")  # warnings
    token = pizauth.authorise()
    pizauth.run("refresh", "acct")
    assert pizauth.provider.wait_for_token_requests(2)
    wait_for(lambda: pizauth._token("acct") not in (None, token), 5, "refreshed token")
    assert pizauth.log().count("cannot lock secret memory in RAM") == 1, pizauth.log()
    assert "RLIMIT_MEMLOCK is 0 bytes" in pizauth.log()
    assert status_field(pizauth.proc.pid, "VmLck") == "0 kB"


@pytest.mark.skipif(not sandbox.available(), reason=f"no seccomp here: {sandbox.unavailable()}")
def test_children_are_sandboxed(pizauth: Pizauth, session: dict[str, bytes]) -> None:
    processes = roles(pizauth)
    assert status_field(pizauth.proc.pid, "Seccomp") == "0"  # the parent runs hooks
    for role in ("command", "network"):
        for pid in processes[role]:
            assert status_field(pid, "Seccomp") == "2", f"{role} ({title(pid)})"


# -- the seccomp filter itself, in a throwaway process -----------------------------------------

CONFINED = """
import os, sys, threading
from pizauth import sandbox
assert sandbox.confine("test", sandbox.{promise})
results = {{}}
t = threading.Thread(target=lambda: results.setdefault("thread", "ran"))
t.start(); t.join()
print(results, flush=True)
if sys.argv[1] == "fork":
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
elif sys.argv[1] == "exec":
    os.execv("/bin/true", ["true"])
print("allowed", flush=True)
"""


@pytest.mark.skipif(not sandbox.available(), reason=f"no seccomp here: {sandbox.unavailable()}")
@pytest.mark.parametrize(
    ("promise", "threads", "fork"),
    [("NETWORK", "ran", "killed"), ("LAUNCHER", None, "allowed")],
    ids=["child", "launcher"],
)
def test_filter_ends_a_process_that_execs_or_forks_but_not_its_threads(
    promise: str, threads: str | None, fork: str
) -> None:
    """A call outside the allowlist ends the process by SIGSYS: exec always, fork outside
    the launcher; threads where they are promised (the launcher has none)."""
    outcomes = {}
    for attempt in ("fork", "exec"):
        code = CONFINED.format(promise=promise)
        if threads is None:
            code = code.replace("t.start(); t.join()", "")
        result = subprocess.run(
            [sys.executable, "-c", code, attempt], capture_output=True, text=True
        )
        expected = {"thread": threads} if threads else {}
        assert result.stdout.splitlines()[0] == str(expected), result.stderr
        outcomes[attempt] = (
            "killed" if result.returncode == -signal.SIGSYS else result.stdout.splitlines()[-1]
        )
    assert outcomes == {"fork": fork, "exec": "killed"}


# -- the arena ---------------------------------------------------------------------------------


def test_secret_lives_in_the_arena_and_wipe_zeroes_it() -> None:
    secret = Secret(b"rt-secret-bytes")
    view = secret.view()
    assert bytes(view) == b"rt-secret-bytes" and len(secret) == 15
    assert secret.equals(b"rt-secret-bytes") and not secret.equals(b"rt-secret-byteX")
    assert "secret" not in repr(secret)
    arena = next(a for a in secmem._pool.arenas if view.obj is a.map)  # in an arena's mapping
    offset = bytes(arena.view).find(b"rt-secret-bytes")
    secret.wipe()
    assert bytes(arena.view[offset : offset + 15]) == bytes(15)
    assert len(secret) == 0 and bytes(secret.view()) == b""
    secret.wipe()  # twice is harmless


def test_dropped_secret_is_zeroed_and_its_slot_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pool of its own: a Secret another test left in a reference cycle would be freed
    # by the gc.collect() below and change the count.
    monkeypatch.setattr(secmem, "_pool", secmem._Pool())
    _, used_before, _ = secmem.stats()
    secret = Secret(b"x" * 100)
    arena = next(a for a in secmem._pool.arenas if secret.view().obj is a.map)
    offset = bytes(arena.view).find(b"x" * 100)
    del secret
    gc.collect()
    assert bytes(arena.view[offset : offset + 100]) == bytes(100)
    assert secmem.stats()[1] == used_before


def test_arena_grows_when_full_and_shrinks_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secmem, "_pool", secmem._Pool())  # not the arenas of other tests
    arenas_before, used_before, _ = secmem.stats()
    many = [Secret(bytes([i % 256]) * 4000) for i in range(40)]  # 160 KB: several arenas
    big = Secret(b"j" * (secmem.ARENA_SIZE + 1))  # larger than one arena
    arenas, used, _ = secmem.stats()
    assert arenas_before == 0 and arenas == 4  # 3 of ARENA_SIZE and one of its own for `big`
    assert used >= 40 * 4000 + secmem.ARENA_SIZE + 1
    assert all(bytes(s.view()) == bytes([i % 256]) * 4000 for i, s in enumerate(many))
    assert bytes(big.view()) == b"j" * (secmem.ARENA_SIZE + 1)
    for s in [*many, big]:
        s.wipe()
    assert secmem.stats()[1] == used_before


def test_pkce_verifier_is_made_in_the_arena() -> None:
    verifier = secmem.random_urlsafe(64)
    text = bytes(verifier.view())
    assert len(text) == 86 and re.fullmatch(rb"[A-Za-z0-9_-]{86}", text)
    assert base64.urlsafe_b64decode(text + b"==") != bytes(64)
    assert bytes(secmem.random_urlsafe(64).view()) != text
    verifier.wipe()


def vm_flags(smaps: str, address: int) -> list[str]:
    """The VmFlags of the mapping that holds `address` (adjacent arenas may be one mapping)."""
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        start, end = (int(x, 16) for x in block.split(" ", 1)[0].split("-"))
        if start <= address < end:
            return re.search(r"^VmFlags: (.*)$", block, re.M)[1].split()  # type: ignore[index]
    raise AssertionError(f"no mapping holds {address:x}")


def test_arena_is_locked_and_not_dumped_in_this_process() -> None:
    secret = Secret(b"probe")
    try:
        arena = next(a for a in secmem._pool.arenas if secret.view().obj is a.map)
        address = ctypes.addressof(ctypes.c_char.from_buffer(arena.map))
        flags = vm_flags(Path("/proc/self/smaps").read_text(), address)
        assert "dd" in flags, flags  # MADV_DONTDUMP
        if arena.locked:
            assert "lo" in flags, flags
    finally:
        secret.wipe()


def test_without_libseccomp_a_child_runs_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox, "_lib", None)
    monkeypatch.setattr(sandbox, "_why_not", "libseccomp is not installed")
    logger = logging.getLogger("pizauth")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="pizauth"):
        assert sandbox.confine("command child", sandbox.COMMAND) is False
        assert sandbox.confine("network worker", sandbox.WORKER, warn=False) is False
    assert not sandbox.available()
    assert sandbox.unavailable() == "libseccomp is not installed"
    assert [r.getMessage() for r in caplog.records] == [
        "command child is not sandboxed: libseccomp is not installed"
    ]


def test_parent_keeps_no_piece_of_the_pkce_verifier_after_login(
    pizauth: Pizauth, session: dict[str, bytes]
) -> None:
    verifier = session["code verifier"]
    # Any 16 consecutive characters would be a piece worth finding; the hash's leftover
    # block was the last 22.
    pieces = {
        f"verifier[{i}:{i + 16}]": verifier[i : i + 16] for i in range(0, len(verifier) - 15, 8)
    }
    pieces["verifier tail"] = verifier[-16:]
    assert found(pizauth.proc.pid, pieces) == {}
