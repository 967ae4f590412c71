"""The sealed token store: format, authentication, atomic replace, and never losing a file."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import wait_for
from token_states import put

from pizauth import config
from pizauth.priv.state import secmem
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, Empty, TokenTable
from pizauth.priv.storage import dump, store
from pizauth.priv.storage.dump import Now
from pizauth.priv.storage.store import Status, Store, StoreError, WriteSchedule
from pizauth.priv.storage.storekeeper import StoreKeeper

KEY = Secret(b"key material from the key command, 40 b")
OTHER_KEY = Secret(b"another key material, also long enough!!")
ACCESS = b"ya29.ACCESS-TOKEN-5e2b"
REFRESH = b"1//REFRESH-TOKEN-77aa"
ACCOUNT = "work-account-name"
PLAIN = b"account:" + ACCOUNT.encode() + b";access:" + ACCESS + b";refresh:" + REFRESH


def sealed(plaintext: bytes = PLAIN, key: Secret = KEY) -> bytearray:
    return store.seal(bytearray(plaintext), key)


# -- format -----------------------------------------------------------------------------------


def test_round_trip() -> None:
    data = sealed()
    assert store.open_sealed(data, KEY) == PLAIN
    assert store.open_sealed(store.seal(bytearray(), KEY), KEY) == b""


def test_layout() -> None:
    data = sealed()
    assert data[:4] == b"PZST" and data[4] == 1
    assert store.HEADER_LEN == 4 + 1 + 32 + 12
    assert len(data) == store.HEADER_LEN + len(PLAIN) + 16


def test_every_write_has_a_fresh_salt_and_nonce() -> None:
    a, b = sealed(), sealed()
    assert a != b
    assert a[5:37] != b[5:37]  # salt
    assert a[37:49] != b[37:49]  # nonce
    assert a[49:] != b[49:]  # so the ciphertexts differ too


def test_tampering_with_any_byte_is_detected() -> None:
    data = sealed()
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(StoreError) as e:
                store.open_sealed(bad, KEY)
            if i < 4:
                assert str(e.value) == "not a pizauth token store"
            elif i == 4:
                assert "incompatible version of pizauth" in str(e.value)
            else:
                assert "does not open with this key" in str(e.value)


def test_truncated_or_extended_files_are_refused() -> None:
    data = sealed()
    for n in range(len(data)):
        with pytest.raises(StoreError):
            store.open_sealed(data[:n], KEY)
    with pytest.raises(StoreError):
        store.open_sealed(data + b"\0", KEY)


def test_wrong_key_is_refused() -> None:
    with pytest.raises(StoreError, match="wrong key, or the file is damaged"):
        store.open_sealed(sealed(), OTHER_KEY)
    # A key that differs only in its last byte, or is a prefix of the right one.
    with pytest.raises(StoreError):
        store.open_sealed(sealed(), Secret(bytes(KEY.view())[:-1] + b"!"))
    with pytest.raises(StoreError):
        store.open_sealed(sealed(), Secret(bytes(KEY.view())[:32]))


def test_other_files_are_not_stores() -> None:
    for data in (b"", b"PZS", b"age-encryption.org/v1\n", b"\0" * 100):
        with pytest.raises(StoreError, match="not a pizauth token store"):
            store.open_sealed(data, KEY)
    with pytest.raises(StoreError, match="version 2 was made by an incompatible version"):
        store.open_sealed(b"PZST\x02" + bytes(100), KEY)


def test_no_token_secret_or_account_name_in_clear() -> None:
    data = bytes(sealed())
    for needle in (ACCESS, REFRESH, ACCOUNT.encode(), b"access", bytes(KEY.view())):
        assert needle not in data
        # Not in small pieces either.
        assert not any(needle[i : i + 6] in data for i in range(len(needle) - 5))


def test_the_dump_encoding_round_trips_through_the_store() -> None:
    text = f"""account "{ACCOUNT}" {{
        auth_uri = "https://auth.example/a";
        client_id = "cid";
        client_secret = "CLIENT-SECRET-31f0";
        scopes = ["mail"];
        token_uri = "https://auth.example/t";
    }}"""
    table = TokenTable(config.parse(text).accounts)
    put(table, ACCOUNT, Active(Secret(ACCESS), 4990.5, 8600.25, Secret(REFRESH)))
    clock = Now(wall=1_700_000_000.0, instant=5000.0)
    plaintext = dump.encode(table, clock)
    data = bytes(store.seal(plaintext, KEY))
    for needle in (ACCESS, REFRESH, ACCOUNT.encode(), b"CLIENT-SECRET-31f0", b"auth.example"):
        assert needle not in data
    opened = store.open_sealed(data, KEY)
    assert opened == plaintext
    decoded = dump.decode(opened)
    _, token = decoded.accounts[ACCOUNT]
    assert token is not None and bytes(token.access_token.view()) == ACCESS
    assert token.refresh_token is not None and bytes(token.refresh_token.view()) == REFRESH
    decoded.wipe()


def test_content_size_is_bounded() -> None:
    with pytest.raises(StoreError, match="too large"):
        store.seal(bytearray(store.MAX_PLAINTEXT + 1), KEY)


# -- reading ----------------------------------------------------------------------------------


def test_read_missing_file_is_none(tmp_path: Path) -> None:
    assert store.read(str(tmp_path / "nope")) is None


def test_read_refuses_symlinks_fifos_directories_and_huge_files(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(sealed())
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StoreError, match="is a symbolic link"):
        store.read(str(link))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        store.read(str(fifo))  # and does not block waiting for a writer
    with pytest.raises(StoreError, match="not a regular file"):
        store.read(str(tmp_path))
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(store.MAX_STORE + 1)
    with pytest.raises(StoreError, match="too large"):
        store.read(str(huge))
    assert store.read(str(real)) == real.read_bytes()


# -- writing ----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_write_creates_directories_0700_and_file_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "tokens"
        store.write_atomic(str(path), sealed())
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert store.open_sealed(store.read(str(path)) or b"", KEY) == PLAIN


def test_write_keeps_an_existing_directorys_mode(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    store.write_atomic(str(directory / "tokens"), sealed())
    assert mode(directory) == 0o755
    assert mode(directory / "tokens") == 0o600


def test_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    store.write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600
    assert os.listdir(tmp_path) == ["tokens"]


def test_write_replaces_a_symlink_rather_than_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not ours")
    path = tmp_path / "tokens"
    path.symlink_to(target)
    store.write_atomic(str(path), b"new")
    assert target.read_bytes() == b"not ours"
    assert not path.is_symlink() and path.read_bytes() == b"new"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.mkdir()  # rename of a file over a directory fails
    with pytest.raises(OSError):
        store.write_atomic(str(path), b"new")
    assert os.listdir(tmp_path) == ["tokens"] and path.is_dir()


WRITER = textwrap.dedent(
    """
    import os
    import sys
    import time
    from pizauth.priv.storage import store
    from pizauth.priv.state.secmem import Secret

    # Stretch the gap between writing the new file and renaming it over the old one
    # (in this writer process only), so that a kill at a random moment often lands in it.
    rename = os.rename

    def slow_rename(src, dst):
        time.sleep(0.003)
        rename(src, dst)

    os.rename = slow_rename
    key = Secret(b"k" * 40)
    path = sys.argv[1]
    i = 0
    while True:
        i += 1
        store.write_atomic(path, store.seal(bytearray(b"generation %d " % i + bytes(5000)), key))
    """
)


def test_sigkill_in_the_middle_of_rapid_writes_always_leaves_a_store_that_opens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "tokens"
    key = Secret(b"k" * 40)
    rng = random.Random(1)
    generations = set()
    torn = 0
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        try:
            before = path.read_bytes() if path.exists() else None
            wait_for(lambda b=before: path.exists() and path.read_bytes() != b, 20, "a write")
            # An arbitrary moment of the write loop: this wait is the point of the test.
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        plain = store.open_sealed(path.read_bytes(), key)
        assert plain.startswith(b"generation ")
        generations.add(bytes(plain[:20]))
        # A kill between write and rename leaves a temporary file, which is cleaned up.
        torn += len(store.remove_stale_temps(str(path)))
        assert os.listdir(path.parent) == ["tokens"]
    assert len(generations) > 1
    assert torn > 0, "no kill landed in the middle of a write"


def test_stale_temporaries_of_a_live_process_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    live = tmp_path / f".tokens.tmp-{os.getppid()}-abc"
    dead = tmp_path / ".tokens.tmp-999999999-abc"
    other = tmp_path / ".other.tmp-1-abc"
    for p in (live, dead, other):
        p.write_bytes(b"x")
    assert store.remove_stale_temps(str(path)) == [dead.name]
    assert live.exists() and other.exists() and not dead.exists()


# -- moving aside -----------------------------------------------------------------------------


def test_move_aside_renames_with_a_timestamp_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    when = 1_700_000_000.0
    path.write_bytes(b"first")
    first = store.move_aside(str(path), when)
    assert first == f"{path}.unreadable-20231114T221320Z"
    assert not path.exists() and Path(first).read_bytes() == b"first"
    path.write_bytes(b"second")
    second = store.move_aside(str(path), when)
    assert second == first + "-1"
    assert Path(first).read_bytes() == b"first" and Path(second).read_bytes() == b"second"


def test_move_aside_of_a_symlink_moves_the_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"t")
    path = tmp_path / "tokens"
    path.symlink_to(target)
    aside = Path(store.move_aside(str(path)))
    assert aside.is_symlink() and target.read_bytes() == b"t" and not path.exists()


def test_move_aside_of_a_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.move_aside(str(tmp_path / "tokens"))


# -- the Store rule ---------------------------------------------------------------------------


def asides(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".unreadable-" in p.name)


def test_fresh_store_is_written_and_reopened(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "tokens"))
    assert s.load(KEY) is None and s.status is Status.ABSENT
    assert s.save(b"one", KEY) is None and s.status is Status.OPENED
    again = Store(s.path)
    assert again.load(KEY) == b"one" and again.status is Status.OPENED
    assert again.save(b"two", KEY) is None
    assert asides(tmp_path) == []
    assert Store(s.path).load(KEY) == b"two"


def test_a_store_that_does_not_open_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    store.write_atomic(str(path), sealed())
    original = path.read_bytes()
    s = Store(str(path))
    with pytest.raises(StoreError):
        s.load(OTHER_KEY)
    assert s.status is Status.UNOPENED and "does not open" in (s.error or "")
    moved = s.save(b"new", OTHER_KEY)
    assert moved is not None and Path(moved).read_bytes() == original
    assert s.status is Status.OPENED
    assert store.open_sealed(path.read_bytes(), OTHER_KEY) == b"new"
    # The aside file still opens with the old key: nothing was lost.
    assert store.open_sealed(Path(moved).read_bytes(), KEY) == PLAIN
    # Later writes replace the new store in place.
    assert s.save(b"newer", OTHER_KEY) is None and len(asides(tmp_path)) == 1


def test_a_damaged_store_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    damaged = bytearray(sealed())
    damaged[60] ^= 1
    path.write_bytes(damaged)
    s = Store(str(path))
    with pytest.raises(StoreError):
        s.load(KEY)
    moved = s.save(b"new", KEY)
    assert moved is not None and Path(moved).read_bytes() == damaged


def test_a_store_not_opened_because_the_key_failed_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(sealed())
    original = path.read_bytes()
    s = Store(str(path))
    s.key_failed("token_store_key_cmd exited with status 1")
    assert s.status is Status.KEY_FAILED and s.error is not None
    moved = s.save(b"new", KEY)
    assert moved is not None and Path(moved).read_bytes() == original


def test_key_failure_with_no_file_leaves_nothing_to_protect(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "tokens"))
    s.key_failed("token_store_key_cmd printed nothing")
    assert s.status is Status.ABSENT
    assert s.save(b"x", KEY) is None and asides(tmp_path) == []


def test_content_that_did_not_decode_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    store.write_atomic(str(path), sealed(b"not a dump"))
    s = Store(str(path))
    assert s.load(KEY) == b"not a dump"
    s.not_opened("Malformed dump")
    moved = s.save(b"new", KEY)
    assert moved is not None and store.open_sealed(Path(moved).read_bytes(), KEY) == b"not a dump"


def test_a_failed_write_keeps_the_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens"
    s = Store(str(path))
    s.save(b"one", KEY)

    def fsync_fails(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store.os, "fsync", fsync_fails)
    with pytest.raises(StoreError, match="cannot write token store .*: Input/output error"):
        s.save(b"two", KEY)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["tokens"]
    assert store.open_sealed(path.read_bytes(), KEY) == b"one"


# -- debounce ---------------------------------------------------------------------------------


def test_changes_within_a_second_are_written_together() -> None:
    w = WriteSchedule()
    assert w.next_write_due() is None and not w.take(100.0)
    w.changed(10.0)
    w.changed(10.4)
    w.changed(10.9)
    assert w.next_write_due() == 11.0  # the first change is never kept waiting longer
    assert not w.take(10.99)
    assert w.take(11.0)
    assert not w.take(11.0) and w.next_write_due() is None
    w.changed(12.5)
    assert w.next_write_due() == 13.5


def test_load_removes_temporaries_a_killed_server_left(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    store.write_atomic(str(path), sealed())
    stale = tmp_path / ".tokens.tmp-999999999-0a0b"
    stale.write_bytes(b"half a store")
    assert Store(str(path)).load(KEY) == PLAIN
    assert os.listdir(tmp_path) == ["tokens"]


# -- the key's lifetime: a cipher that reads its key at every call ------------------------------


class LazyAead:
    """A ChaCha20-Poly1305 that keeps a reference to the key buffer it is given and reads it
    at every call, as cryptography's AEADs do when built against OpenSSL < 3.2 (and its
    AES-CCM on every build). Each call also checks that the key has not been wiped yet."""

    buffers: list[memoryview] = []  # every key buffer handed over, to look at afterwards

    def __init__(self, key: memoryview) -> None:
        self.key = key
        LazyAead.buffers.append(key)

    def _cipher(self) -> object:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        material = bytes(self.key)
        assert material != bytes(len(material)), "the key was wiped before a call that reads it"
        return ChaCha20Poly1305(material)

    def encrypt(self, nonce: bytes, data: object, aad: bytes) -> bytes:
        return self._cipher().encrypt(nonce, data, aad)  # type: ignore[attr-defined]

    def decrypt(self, nonce: bytes, data: object, aad: bytes) -> bytes:
        return self._cipher().decrypt(nonce, data, aad)  # type: ignore[attr-defined]


class KeyBlindAead(LazyAead):
    """A broken build: seals under 32 zero bytes whatever key it is given."""

    def _cipher(self) -> object:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        return ChaCha20Poly1305(bytes(32))


def zero_key_forgery(plaintext: bytes) -> bytes:
    """A store file an attacker makes without any key: sealed under 32 zero bytes."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    header = store.MAGIC + bytes([store.VERSION]) + os.urandom(store.SALT_LEN + store.NONCE_LEN)
    nonce = header[-store.NONCE_LEN :]
    return header + ChaCha20Poly1305(bytes(32)).encrypt(nonce, plaintext, header)


def test_a_cipher_that_reads_its_key_late_still_refuses_a_wrong_key_and_a_forgery() -> None:
    LazyAead.buffers.clear()
    data = store.seal(bytearray(PLAIN), KEY, LazyAead)
    plain = store.open_sealed(data, KEY, LazyAead)
    assert plain == PLAIN
    # Interoperable with the real cipher: the lazy one sealed under the derived key.
    assert store.open_sealed(data, KEY) == PLAIN
    with pytest.raises(StoreError, match="does not open with this key"):
        store.open_sealed(data, OTHER_KEY, LazyAead)
    with pytest.raises(StoreError, match="does not open with this key"):
        store.open_sealed(zero_key_forgery(PLAIN), KEY, LazyAead)
    assert store.check_aead(LazyAead) is None


def test_the_file_key_lives_in_the_locked_arena_and_is_wiped_once_the_cipher_is_gone() -> None:
    import mmap

    LazyAead.buffers.clear()
    in_use = secmem.stats()[1]
    store.seal(bytearray(PLAIN), KEY, LazyAead)
    [buffer] = LazyAead.buffers
    assert isinstance(buffer.obj, mmap.mmap)  # a view of the arena, not a copy on the heap
    assert bytes(buffer) == bytes(32)  # wiped after its last use (the cipher checked that)
    assert secmem.stats()[1] == in_use  # and its slot given back


def test_the_self_test_refuses_a_cipher_that_ignores_its_key() -> None:
    problem = store.check_aead(KeyBlindAead)
    assert problem == "it sealed the same data under two different keys into the same bytes"
    assert store.check_aead() is None  # the real one


def test_the_self_test_refuses_a_cipher_that_opens_under_any_key() -> None:
    class OpensAnything(LazyAead):
        def decrypt(self, nonce: bytes, data: object, aad: bytes) -> bytes:
            return bytes(len(memoryview(data)) - store.TAG_LEN)  # type: ignore[arg-type]

    assert store.check_aead(OpensAnything) == "a file sealed under one key opened with another"


def test_the_self_test_reports_a_cipher_that_fails() -> None:
    class Fails(LazyAead):
        def encrypt(self, nonce: bytes, data: object, aad: bytes) -> bytes:
            raise RuntimeError("unsupported cipher")

    assert store.check_aead(Fails) == "it failed: RuntimeError: unsupported cipher"


class Notices:
    """The StoreKeeper's notifier, recording what it is told."""

    def __init__(self) -> None:
        self.server_errors: list[str] = []
        self.errors: list[tuple[str, str]] = []
        self.events: list[str] = []

    def server_error(self, message: str) -> None:
        self.server_errors.append(message)

    def error(self, name: str, message: str) -> None:
        self.errors.append((name, message))

    def event(self, name: str, event: object) -> None:
        self.events.append(name)


def keeper(tmp_path: Path, aead: object = None) -> tuple[StoreKeeper, Notices, TokenTable]:
    conf = config.parse(
        CONF + f'token_store = "{tmp_path / "tokens"}";\n'
        f'token_store_key_cmd = "echo ran >> {tmp_path / "runs"}; echo {"k" * 40}";\n'
    )
    table = TokenTable(conf.accounts)
    notices = Notices()
    kept = StoreKeeper(
        conf,
        table,
        notices,
        lambda fd, cb: None,
        lambda fd: None,
        aead,  # type: ignore[arg-type]
    )
    return kept, notices, table


def test_a_server_whose_cipher_fails_the_self_test_does_not_use_the_store(
    tmp_path: Path,
) -> None:
    key = Secret(b"k" * 40)
    table = TokenTable(config.parse(CONF).accounts)
    put(table, "acct", Active(Secret(ACCESS), 0.0, 3600.0, None))
    old = store.seal(dump.encode(table, Now(1.7e9, 0.0)), key)
    (tmp_path / "tokens").write_bytes(old)

    kept, notices, table = keeper(tmp_path, KeyBlindAead)
    kept.restore_at_start()
    [problem] = kept.start_problems
    assert problem.startswith(f"token store {tmp_path / 'tokens'} not used, starting without it: ")
    assert "the encryption library fails its self-test: it sealed the same data" in problem
    assert "cryptography " in problem  # which build it is
    assert notices.server_errors == [problem]  # error_notify_cmd and the log
    assert not (tmp_path / "runs").exists()  # the key command did not even run
    assert isinstance(table.entries["acct"].state, Empty)
    assert kept.error is not None and "self-test" in kept.error  # `pizauth info`
    # No write ever: the file stays as it was, and nothing is moved aside.
    put(table, "acct", Active(Secret(b"new"), 0.0, 3600.0, None))
    kept.tick(float("inf"))
    kept.last_write()
    kept.close()
    assert (tmp_path / "tokens").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]


def test_a_server_whose_cipher_passes_the_self_test_uses_the_store(tmp_path: Path) -> None:
    kept, notices, table = keeper(tmp_path, LazyAead)
    kept.restore_at_start()
    assert kept.start_problems == [] and notices.server_errors == []
    assert (tmp_path / "runs").read_text() == "ran\n"  # the key, at start, with no file yet
    put(table, "acct", Active(Secret(ACCESS), 0.0, 3600.0, None))
    kept.tick(float("inf"))
    kept.close()
    plain = store.open_sealed((tmp_path / "tokens").read_bytes(), Secret(b"k" * 40))
    assert ACCESS in plain


CONF = (
    'account "acct" { auth_uri = "http://127.0.0.1:1/a"; token_uri = "http://127.0.0.1:1/t";'
    ' client_id = "c"; }\n'
)


def test_a_damaged_list_of_revokes_gives_no_token_back_and_is_used_up(tmp_path: Path) -> None:
    from pizauth.priv.storage import storerevoked

    key = Secret(b"k" * 40)
    table = TokenTable(config.parse(CONF).accounts)
    put(table, "acct", Active(Secret(ACCESS), 0.0, 3600.0, None))
    (tmp_path / "tokens").write_bytes(store.seal(dump.encode(table, Now(1.7e9, 0.0)), key))
    (tmp_path / "tokens.revoked").write_text('{"version": 1, "revoked": ["acct"]}')

    kept, notices, table = keeper(tmp_path)
    kept.restore_at_start()
    [problem] = kept.start_problems
    assert problem.startswith(f"list of revoked accounts {tmp_path / 'tokens.revoked'} is damaged")
    assert problem.endswith("no token is restored from the token store; the accounts need a login")
    assert isinstance(table.entries["acct"].state, Empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tokens", "tokens.revoked"]
    # The store opened: the next write replaces it, without the token, and uses the list up.
    put(table, "acct", Active(Secret(b"new"), 0.0, 3600.0, None))
    kept.tick(float("inf"))
    kept.close()
    assert not (tmp_path / "tokens.revoked").exists()
    assert storerevoked.read(str(tmp_path / "tokens")) == {}


def test_the_list_of_revokes_is_private_and_holds_names_and_times(tmp_path: Path) -> None:
    from pizauth.priv.storage import storerevoked

    path = str(tmp_path / "state" / "tokens")
    storerevoked.add(path, "work", 100.0)
    storerevoked.add(path, 'home\n"x', 200.0)
    storerevoked.add(path, "work", 50.0)  # an earlier time never moves it back
    assert storerevoked.read(path) == {"work": 100.0, 'home\n"x': 200.0}
    assert mode(tmp_path / "state" / "tokens.revoked") == 0o600
    assert mode(tmp_path / "state") == 0o700
    (tmp_path / "state" / "tokens.unreadable-20260101T000000Z").write_bytes(b"aside")
    assert storerevoked.consume(path) is False  # a file aside may be put back
    (tmp_path / "state" / "tokens.unreadable-20260101T000000Z").unlink()
    assert storerevoked.consume(path) is True
    assert storerevoked.read(path) == {}
