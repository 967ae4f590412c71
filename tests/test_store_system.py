"""The sealed token store as a user runs it: `pizauth server` against the local provider,
restarted, killed, given wrong keys and damaged files (docs/token-store.md)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CLIENT_SECRET, Pizauth, wait_for

from pizauth import config, ipc, limits
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, TokenTable
from pizauth.priv.storage import dump, store

NOTIFY = 'error_notify_cmd = "echo $PIZAUTH_MSG >> notified";\n'
TWO_ACCOUNTS = "acct", "other"


# -- helpers ----------------------------------------------------------------------------------


def new_key(pizauth: Pizauth, name: str = "key") -> bytes:
    """Key material in a file (what `cat FILE` prints, less its newline)."""
    material = base64.b64encode(os.urandom(33))  # 44 bytes
    (pizauth.tmp / name).write_bytes(material + b"\n")
    return material


def store_path(pizauth: Pizauth) -> Path:
    return pizauth.tmp / "state" / "pizauth" / "tokens"  # the directory does not exist yet


def configure(
    pizauth: Pizauth, key_cmd: str | None = None, accounts: tuple[str, ...] = ("acct",)
) -> None:
    key_cmd = key_cmd or f"cat {pizauth.tmp / 'key'}"
    pizauth.write_config(
        accounts="".join(pizauth.account_block(name) for name in accounts),
        globals_=(
            f'token_store = "{store_path(pizauth)}";\ntoken_store_key_cmd = "{key_cmd}";\n{NOTIFY}'
        ),
    )


def stored(path: Path, key: bytes) -> dict[str, bytes | None]:
    """Each account's access token in the store (None for no token)."""
    plaintext = store.open_sealed(path.read_bytes(), Secret(key))
    decoded = dump.decode(plaintext)
    return {
        name: None if token is None else bytes(token.access_token.view())
        for name, (_, token) in decoded.accounts.items()
    }


def stored_or_none(path: Path, key: bytes) -> dict[str, bytes | None] | None:
    try:
        return stored(path, key)
    except (OSError, store.StoreError):
        return None


def wait_stored(pizauth: Pizauth, key: bytes, account: str, token: str | None) -> None:
    want = None if token is None else token.encode()
    wait_for(
        lambda: (
            (s := stored_or_none(store_path(pizauth), key)) is not None and s.get(account) == want
        ),
        5,
        f"the store to hold {account}'s current token",
        pizauth.log,
    )


def notified(pizauth: Pizauth) -> str:
    path = pizauth.tmp / "notified"
    return path.read_text() if path.exists() else ""


def asides(pizauth: Pizauth) -> list[Path]:
    return sorted(store_path(pizauth).parent.glob("tokens.unreadable-*"))


def status(pizauth: Pizauth) -> str:
    return pizauth.run("status").stdout.decode()


def restart(pizauth: Pizauth) -> None:
    pizauth.stop()
    pizauth.start()


def grants(pizauth: Pizauth) -> tuple[int, int]:
    return len(pizauth.provider.authorize_requests), len(pizauth.provider.token_requests)


# -- restoring at start -----------------------------------------------------------------------


def test_tokens_survive_a_restart_without_a_provider_round_trip(pizauth: Pizauth) -> None:
    key = new_key(pizauth)
    configure(pizauth)
    pizauth.start()
    token = pizauth.authorise()
    wait_stored(pizauth, key, "acct", token)
    decoded = dump.decode(store.open_sealed(store_path(pizauth).read_bytes(), Secret(key)))
    refresh_token = decoded.accounts["acct"][1].refresh_token  # type: ignore[union-attr]
    assert refresh_token is not None and len(refresh_token) > 8
    pizauth.stop()

    path = store_path(pizauth)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["tokens"]  # no temporary left
    data = path.read_bytes()
    assert data.startswith(b"PZST\x01")
    for clear in (token.encode(), bytes(refresh_token.view()), CLIENT_SECRET.encode(), key):
        assert clear not in data
    assert b"acct" not in data and pizauth.provider.auth_uri.encode() not in data

    before = grants(pizauth)
    pizauth.start()
    shown = pizauth.show()
    assert (shown.returncode, shown.stdout.decode(), shown.stderr) == (0, token + "\n", b"")
    assert grants(pizauth) == before  # no login, no token request
    assert status(pizauth).startswith("acct: Active access token (obtained ")
    assert notified(pizauth) == ""


def test_info_names_the_store(pizauth: Pizauth) -> None:
    new_key(pizauth)
    configure(pizauth)
    pizauth.start()
    text = pizauth.run("info").stdout.decode()
    assert f"  token store: {store_path(pizauth)}\n" in text
    assert "not opened" not in text
    info = json.loads(pizauth.run("info", "-j").stdout)
    assert info["server_info"]["token_store"] == str(store_path(pizauth))
    assert "token_store_error" not in info["server_info"]


def test_info_without_a_store_is_unchanged(pizauth: Pizauth) -> None:
    pizauth.start()
    text = pizauth.run("info").stdout.decode()
    assert "token store" not in text
    info = json.loads(pizauth.run("info", "-j").stdout)
    assert set(info["server_info"]) == {"http_port", "https_port"}


def rewrite_store(pizauth: Pizauth, key: bytes, change: Callable[[TokenTable], None]) -> None:
    """Open the store as the server would, let `change(table)` alter it, seal it again."""
    accounts = config.load(str(pizauth.conf)).accounts
    table = TokenTable(accounts)
    plaintext = store.open_sealed(store_path(pizauth).read_bytes(), Secret(key))
    dump.merge(table, plaintext)
    change(table)
    new_plain = dump.encode(table, dump.now())
    store.write_atomic(str(store_path(pizauth)), store.seal(new_plain, Secret(key)))
    ipc.wipe(new_plain)


def test_an_expired_token_is_refreshed_at_start(pizauth: Pizauth) -> None:
    key = new_key(pizauth)
    configure(pizauth)
    pizauth.start()
    old = pizauth.authorise()
    wait_stored(pizauth, key, "acct", old)
    pizauth.stop()

    def expire(table: TokenTable) -> None:
        state = table.entries["acct"].state
        assert isinstance(state, Active) and state.refresh_token is not None
        state.expiry = dump.now().instant - 60

    rewrite_store(pizauth, key, expire)
    requests = len(pizauth.provider.token_requests)
    pizauth.start()
    # At once, not after refresh_at_least: the refresh is the first thing the server does.
    assert pizauth.provider.wait_for_token_requests(requests + 1, 5)
    assert pizauth.provider.token_requests[requests]["grant_type"] == "refresh_token"
    new = wait_for(lambda: (t := pizauth._token()) != old and t, 5, "the refreshed token")
    assert pizauth.provider.is_valid_access_token(new)
    wait_stored(pizauth, key, "acct", new)


def test_a_token_over_max_token_is_not_restored(pizauth: Pizauth) -> None:
    key = new_key(pizauth)
    configure(pizauth, accounts=TWO_ACCOUNTS)
    pizauth.start()
    kept = pizauth.authorise("acct")
    pizauth.authorise("other")
    wait_stored(pizauth, key, "other", pizauth._token("other"))
    wait_stored(pizauth, key, "acct", kept)
    pizauth.stop()

    def enlarge(table: TokenTable) -> None:
        state = table.entries["other"].state
        assert isinstance(state, Active)
        state.access_token = Secret(b"x" * (limits.MAX_TOKEN + 1))

    rewrite_store(pizauth, key, enlarge)
    pizauth.start()
    assert pizauth._token("acct") == kept
    assert status(pizauth).startswith("acct: Active access token")
    assert "other: No access token" in status(pizauth)
    wait_for(lambda: f"longer than {limits.MAX_TOKEN} bytes" in notified(pizauth), 5, "notice")


def test_restore_refuses_a_token_over_max_token(pizauth: Pizauth) -> None:
    pizauth.write_config(accounts=pizauth.account_block("acct") + pizauth.account_block("other"))
    pizauth.start()
    kept = pizauth.authorise("acct")
    pizauth.authorise("other")
    table = TokenTable(config.load(str(pizauth.conf)).accounts)
    dump.restore(table, pizauth.run("dump").stdout)
    state = table.entries["other"].state
    assert isinstance(state, Active)
    state.access_token = Secret(b"x" * (limits.MAX_TOKEN + 1))
    data = dump.dump(table)
    restart(pizauth)
    result = pizauth.run("restore", input=bytes(data))
    assert (result.returncode, result.stderr) == (0, b"")
    assert pizauth._token("acct") == kept
    assert "other: No access token" in status(pizauth)
    wait_for(lambda: "token of other not restored" in pizauth.log(), 5, "the logged reason")


# -- nothing lost -----------------------------------------------------------------------------


def logged_in_store(pizauth: Pizauth, accounts: tuple[str, ...] = ("acct",)) -> bytes:
    """A store holding a token per account, made by a first server, now stopped; its key."""
    key = new_key(pizauth)
    configure(pizauth, accounts=accounts)
    pizauth.start()
    for name in accounts:
        token = pizauth.authorise(name)
        wait_stored(pizauth, key, name, token)
    pizauth.stop()
    return key


def test_a_wrong_key_keeps_the_file_and_the_server_runs(pizauth: Pizauth) -> None:
    logged_in_store(pizauth)
    old = store_path(pizauth).read_bytes()
    new = new_key(pizauth)  # the key material changed: the store does not open
    pizauth.start()
    # Moved aside at once, so that the notice can say where it is.
    [aside] = asides(pizauth)
    assert aside.read_bytes() == old
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    assert not store_path(pizauth).exists()
    wait_for(lambda: f"kept as {aside}" in notified(pizauth), 5, "error_notify_cmd")
    assert "does not open with this key" in notified(pizauth)
    assert f"kept as {aside}" in pizauth.log()
    assert status(pizauth) == "acct: No access token\n"
    info = pizauth.run("info").stdout.decode()
    assert "  token store not opened: token store does not open with this key" in info

    # The next write makes a new store, and the one aside stays as it was.
    token = pizauth.authorise()
    wait_stored(pizauth, new, "acct", token)
    assert asides(pizauth) == [aside] and aside.read_bytes() == old


def test_a_damaged_file_keeps_the_file_and_the_server_runs(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth)
    damaged = bytearray(store_path(pizauth).read_bytes())
    damaged[60] ^= 0x01
    store_path(pizauth).write_bytes(damaged)
    pizauth.start()
    [aside] = asides(pizauth)
    assert aside.read_bytes() == damaged
    wait_for(lambda: f"kept as {aside}" in notified(pizauth), 5, "error_notify_cmd")
    assert "does not open" in notified(pizauth)
    assert status(pizauth) == "acct: No access token\n"
    token = pizauth.authorise()
    wait_stored(pizauth, key, "acct", token)
    assert asides(pizauth) == [aside]


def test_a_file_that_is_not_a_store_is_kept(pizauth: Pizauth) -> None:
    key = new_key(pizauth)
    configure(pizauth)
    store_path(pizauth).parent.mkdir(parents=True)
    store_path(pizauth).write_bytes(b"my notes, not a token store\n")
    pizauth.start()
    wait_for(lambda: "not a pizauth token store" in notified(pizauth), 5, "error_notify_cmd")
    token = pizauth.authorise()
    wait_stored(pizauth, key, "acct", token)
    [aside] = asides(pizauth)
    assert aside.read_bytes() == b"my notes, not a token store\n"


def test_a_failing_key_command_keeps_the_file_and_the_server_runs(pizauth: Pizauth) -> None:
    logged_in_store(pizauth)
    old = store_path(pizauth).read_bytes()
    configure(pizauth, key_cmd="echo no key here >&2; exit 3")
    pizauth.start()
    wait_for(lambda: "exited with status 3: no key here" in notified(pizauth), 5, "a notice")
    assert "exited with status 3: no key here" in pizauth.log()
    assert status(pizauth) == "acct: No access token\n"
    # A change: the key command is tried again, fails again, and the file stays.
    pizauth.authorise()
    wait_for(lambda: notified(pizauth).count("no key here") == 2, 5, "the retry's notice")
    assert "not written" in notified(pizauth).splitlines()[-1]
    assert store_path(pizauth).read_bytes() == old
    assert asides(pizauth) == []


def test_a_key_that_comes_back_restores_what_the_store_held(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    other = stored(store_path(pizauth), key)["other"]
    assert other is not None
    (pizauth.tmp / "key").rename(pizauth.tmp / "key.away")  # `cat` fails at start
    pizauth.start()
    wait_for(lambda: "not opened" in notified(pizauth), 5, "a notice")
    assert status(pizauth) == "acct: No access token\nother: No access token\n"
    (pizauth.tmp / "key.away").rename(pizauth.tmp / "key")
    before = grants(pizauth)
    token = pizauth.authorise("acct")  # a change: the key command runs again, and works
    wait_stored(pizauth, key, "acct", token)
    # The account that had no token meanwhile has its stored one back, without a login.
    assert pizauth._token("other") == other.decode()
    assert grants(pizauth)[0] == before[0] + 1  # the one login above
    assert stored(store_path(pizauth), key)["other"] == other
    assert asides(pizauth) == []


# -- writes -----------------------------------------------------------------------------------


def test_revoke_removes_the_account_at_the_next_write(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    pizauth.start()
    other = pizauth._token("other")
    assert pizauth.run("revoke", "acct").returncode == 0
    wait_stored(pizauth, key, "acct", None)
    assert stored(store_path(pizauth), key)["other"] == other.encode()  # type: ignore[union-attr]
    restart(pizauth)
    assert status(pizauth).startswith("acct: No access token\nother: Active access token")


def test_shutdown_leaves_the_store(pizauth: Pizauth) -> None:
    key = new_key(pizauth)
    configure(pizauth)
    pizauth.start()
    token = pizauth.authorise()
    # At once: a change not yet written when `shutdown` arrives is written before exit.
    assert pizauth.run("shutdown").returncode == 0
    assert pizauth.proc is not None
    pizauth.proc.wait(timeout=10)
    assert stored(store_path(pizauth), key) == {"acct": token.encode()}


def test_reload_that_drops_an_account_removes_it(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    pizauth.start()
    configure(pizauth, accounts=("acct",))
    assert pizauth.run("reload").returncode == 0
    wait_for(
        lambda: (s := stored_or_none(store_path(pizauth), key)) is not None and "other" not in s,
        5,
        "the dropped account to leave the store",
    )


# Every rename the parent makes, held for this many microseconds on entry.
RENAME_DELAY_US = 300_000
# The system calls Python's os.rename may use ("?": those this architecture lacks are fine).
RENAME_CALLS = "?rename,renameat,renameat2"


def tracer_of(pid: int) -> int | None:
    """The pid of the process ptracing `pid` (0 for none), None if `pid` is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return None


@contextlib.contextmanager
def renames_delayed(strace: str, pid: int, log: Path) -> Iterator[None]:
    """Hold each rename of process `pid` before it happens, from outside (strace injects
    the delay; the server has no hook for it), until the block ends."""
    with open(log, "wb") as out:
        tracer = subprocess.Popen(
            [
                strace,
                *("-qq", "-o", "/dev/null", "-p", str(pid)),
                *("-e", f"trace={RENAME_CALLS}"),
                *("-e", f"inject={RENAME_CALLS}:delay_enter={RENAME_DELAY_US}"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(
            lambda: tracer_of(pid) == tracer.pid or tracer.poll() is not None,
            10,
            "strace to attach",
        )
        if tracer.poll() is not None:
            raise AssertionError(f"strace could not attach to {pid}: {log.read_text()}")
        yield
    finally:
        if tracer.poll() is None:
            tracer.terminate()  # strace detaches and exits
        try:
            tracer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()


def test_sigkill_during_rapid_writes_always_leaves_a_store_that_opens(
    pizauth: Pizauth,
) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("needs strace (Debian package strace) to stretch the server's writes")
    if os.geteuid() != 0:
        pytest.skip("needs root: the server is not dumpable, so only CAP_SYS_PTRACE may trace it")
    key = new_key(pizauth)
    configure(pizauth)
    pizauth.start()
    pizauth.authorise()
    directory = store_path(pizauth).parent
    wait_for(store_path(pizauth).exists, 5, "the first store")
    issued = set()
    stale: set[Path] = set()  # left by the previous kill, removed by the next start
    for run in range(4):
        if pizauth.proc is None:
            pizauth.start()  # restores, which is a change, and so a write
        assert pizauth.proc is not None
        # The gap between writing the new file and renaming it over the old one, stretched.
        with renames_delayed(strace, pizauth.proc.pid, pizauth.tmp / f"strace.{run}.log"):
            issued.update(pizauth.provider.issued_access_tokens)
            pizauth.run("refresh", "acct")  # another change, and so a write
            temp = wait_for(
                lambda: [p for p in directory.glob(".tokens.tmp-*") if p not in stale],
                5,
                "a write in progress",
                pizauth.log,
            )
            os.kill(pizauth.proc.pid, signal.SIGKILL)
            pizauth.proc.wait()
        pizauth.stop()  # the children, by pid
        found = stored(store_path(pizauth), key)  # opens: the old store or the new one
        issued.update(pizauth.provider.issued_access_tokens)
        assert found["acct"] is not None and found["acct"].decode() in issued
        assert temp[0].exists()  # killed between write and rename: the temporary remains
        stale.update(temp)
    pizauth.start()
    wait_for(lambda: not list(directory.glob(".tokens.tmp-*")), 5, "stale temporaries removed")
    assert status(pizauth).startswith("acct: Active access token")


# -- a real key tool --------------------------------------------------------------------------


def test_tokens_survive_a_restart_with_age(pizauth: Pizauth) -> None:
    age, keygen = shutil.which("age"), shutil.which("age-keygen")
    if age is None or keygen is None:
        pytest.skip("needs age and age-keygen (Debian package age)")
    identity = pizauth.tmp / "identity.txt"
    subprocess.run([keygen, "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        [keygen, "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        [age, "-r", recipient, "-o", str(pizauth.tmp / "key.age")],
        input=os.urandom(48),
        check=True,
        capture_output=True,
    )
    configure(pizauth, key_cmd=f"{age} -d -i {identity} {pizauth.tmp / 'key.age'}")
    pizauth.start()
    token = pizauth.authorise()
    wait_for(store_path(pizauth).exists, 5, "the store")
    restart(pizauth)
    assert pizauth._token() == token
    assert notified(pizauth) == ""


def test_only_changes_of_tokens_ask_for_a_write() -> None:
    """A pending login is stored as no token: starting or abandoning one writes nothing."""
    from pizauth.priv.state.authurl import new_auth_request
    from pizauth.priv.state.tokens import Cause, Empty, Pending

    accounts = config.parse(
        'account "acct" { auth_uri = "http://127.0.0.1:1/a"; token_uri = "http://127.0.0.1:1/t";'
        ' client_id = "c"; }\n'
    ).accounts
    table = TokenTable(accounts)
    calls: list[None] = []
    table.on_change = lambda: calls.append(None)
    pending = Pending(new_auth_request(accounts[0], 1, None))
    table.transition("acct", pending, Cause.LOGIN)
    table.transition("acct", Empty(), Cause.LOGIN_FAILURE)
    assert calls == []
    table.transition("acct", Active(Secret(b"t"), 0.0, 10.0, None), Cause.RESTORE)
    table.transition("acct", Active(Secret(b"u"), 0.0, 10.0, None), Cause.REFRESH)
    table.transition("acct", Empty(), Cause.REVOKE)
    assert len(calls) == 3
    table.transition("acct", Active(Secret(b"v"), 0.0, 10.0, None), Cause.RESTORE)
    assert table.reload([]) == ["acct"]  # a reload that drops a token
    assert len(calls) == 5


def test_a_token_store_path_longer_than_path_max_is_refused() -> None:
    """info names the path in one reply frame: no path can make it too large."""
    long_path = "/" + "a" * 4096
    with pytest.raises(config.ConfigError, match="token_store must be shorter than 4096 bytes"):
        config.parse(f'token_store = "{long_path}";\ntoken_store_key_cmd = "true";\n')


def test_a_store_opened_late_gives_no_token_back_to_a_revoked_account(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    assert stored(store_path(pizauth), key)["other"] is not None
    (pizauth.tmp / "key").rename(pizauth.tmp / "key.away")  # `cat` fails at start
    pizauth.start()
    wait_for(lambda: "not opened" in notified(pizauth), 5, "a notice")
    # The user revokes "other" while the store is still closed...
    assert pizauth.run("revoke", "other").returncode == 0
    (pizauth.tmp / "key.away").rename(pizauth.tmp / "key")
    token = pizauth.authorise("acct")  # ...then a change opens it at last
    wait_stored(pizauth, key, "acct", token)
    # "other" stays revoked: no old token comes back, in memory or in the store.
    assert status(pizauth).endswith("other: No access token\n")
    assert stored(store_path(pizauth), key)["other"] is None
