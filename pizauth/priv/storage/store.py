"""The sealed token store: a file that lets tokens survive a restart (docs/token-store.md).

Only the parent reads and writes it: the parent alone holds the tokens, and needs
no network to seal them, so no child gains file access or sees a token for it.

File layout (all of it authenticated; the header is the associated data):

    offset  size  field
    0       4     magic b"PZST"
    4       1     version (1)
    5       32    salt, fresh on every write
    37      12    nonce, fresh on every write
    49      n+16  ChaCha20-Poly1305(plaintext) and its tag

The key is HKDF-SHA256(key material, salt, INFO), so every write uses a key of
its own. The plaintext is the caller's (the parent uses the `pizauth dump`
encoding, before that format's obfuscation).

A file is replaced atomically: a new file in the same directory, written, fsynced,
renamed over the old one, and the directory fsynced. A store that could not be
opened is never overwritten: it is moved aside first (Store.save).

The parent's use (priv/storage/storekeeper.py): at start, check_aead() once; then run the
key command (secretcmd.run_blocking with STORE_KEY) and, if Store.exists(),
Store.load(key) (or Store.key_failed(message)), then dump.merge the plaintext,
calling Store.not_opened(message) if it does not decode; a file that did not
open is moved aside at once (Store.set_aside), so that the user can be told
where. On every change of token state, WriteSchedule.changed(now); when
WriteSchedule.take(now) says so, call Store.save(dump.encode(table, ...), key),
wiping the plaintext afterwards.

Keys: the key material is a Secret; each file key is derived into a Secret too, and
the cipher is given a view of it and dropped before it is wiped (_with_cipher).

cryptography is imported only when something is sealed or opened, so that a
parent with no store configured does not load it.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pizauth import ipc
from pizauth.ipc import Buffer
from pizauth.priv.state.secmem import Secret

MAGIC = b"PZST"
VERSION = 1
SALT_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = len(MAGIC) + 1 + SALT_LEN + NONCE_LEN
INFO = b"pizauth token store v1"
# A store holds what a dump holds, and a dump fits in one message.
MAX_PLAINTEXT = ipc.MAX_MESSAGE
MAX_STORE = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN


T = TypeVar("T")


class StoreError(Exception):
    """A store that cannot be read, opened or written; str(err) is for the user."""


# -- sealing ------------------------------------------------------------------------------

# An AEAD constructor: key buffer -> cipher with encrypt/decrypt (and, in newer
# cryptography, encrypt_into/decrypt_into). ChaCha20Poly1305 unless a test gives another.
Aead = Callable[[memoryview], Any]


def chacha20poly1305() -> Aead:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305


def _derive(key: Secret, salt: Buffer) -> Secret:
    """The file key, in the locked arena; the caller wipes it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(salt), info=INFO)
    out = Secret.zeros(32)
    derive_into = getattr(hkdf, "derive_into", None)
    if derive_into is not None:
        derive_into(key.view(), out.view())
    else:
        # cryptography < 47 only returns an immutable `bytes`, which cannot be wiped:
        # copied into the arena and dropped at once.
        out.view()[:] = hkdf.derive(key.view())
    return out


def _with_cipher(key: Secret, salt: Buffer, aead: Aead | None, use: Callable[[Any], T]) -> T:
    """use(cipher) with the file key of `key` and `salt`.

    The cipher is handed a view of the file key in the arena, not a copy: cryptography
    does not promise to copy a key (built against OpenSSL < 3.2 its ChaCha20Poly1305
    keeps a reference and reads it at every call). So the key is wiped only once `use`
    has returned and the cipher has been dropped with its frame (`use` keeps no
    reference to it): nothing reads it after that.
    """
    derived = _derive(key, salt)
    try:
        return _use(aead or chacha20poly1305(), derived, use)
    finally:
        derived.wipe()


def _use(aead: Aead, derived: Secret, use: Callable[[Any], T]) -> T:
    # The cipher's one reference is this frame's argument to `use`: gone when it returns.
    return use(aead(derived.view()))


def _seal(plaintext: Buffer, key: Secret, salt_nonce: Buffer, aead: Aead | None) -> bytearray:
    plain = memoryview(plaintext).cast("B")
    if plain.nbytes > MAX_PLAINTEXT:
        raise StoreError(f"token store content too large ({plain.nbytes} bytes)")
    out = bytearray(HEADER_LEN + plain.nbytes + TAG_LEN)
    salt_at = len(MAGIC) + 1
    out[: len(MAGIC)] = MAGIC
    out[len(MAGIC)] = VERSION
    out[salt_at:HEADER_LEN] = salt_nonce
    salt = bytes(out[salt_at : salt_at + SALT_LEN])
    nonce = bytes(out[salt_at + SALT_LEN : HEADER_LEN])
    header = bytes(out[:HEADER_LEN])

    def encrypt(cipher: Any) -> None:
        encrypt_into = getattr(cipher, "encrypt_into", None)
        if encrypt_into is not None:
            encrypt_into(nonce, plain, header, memoryview(out)[HEADER_LEN:])
        else:
            # cryptography < 44 returns `bytes`; it is ciphertext, so nothing is exposed.
            out[HEADER_LEN:] = cipher.encrypt(nonce, plain, header)

    _with_cipher(key, salt, aead, encrypt)
    return out


def seal(plaintext: Buffer, key: Secret, aead: Aead | None = None) -> bytearray:
    """The store file's bytes for `plaintext` under `key`, with a fresh salt and nonce."""
    return _seal(plaintext, key, os.urandom(SALT_LEN + NONCE_LEN), aead)


def open_sealed(data: Buffer, key: Secret, aead: Aead | None = None) -> bytearray:
    """The plaintext of a store file, which the caller must wipe; or StoreError."""
    from cryptography.exceptions import InvalidTag

    view = memoryview(data).cast("B")
    if view.nbytes < len(MAGIC) + 1 or view[: len(MAGIC)] != MAGIC:
        raise StoreError("not a pizauth token store")
    if view[len(MAGIC)] != VERSION:
        raise StoreError(
            f"token store format version {view[len(MAGIC)]} was made by an "
            f"incompatible version of pizauth (this one reads version {VERSION})"
        )
    if view.nbytes < HEADER_LEN + TAG_LEN:
        raise StoreError("token store is damaged (truncated)")
    salt_at = len(MAGIC) + 1
    salt = bytes(view[salt_at : salt_at + SALT_LEN])
    nonce = bytes(view[salt_at + SALT_LEN : HEADER_LEN])
    header = bytes(view[:HEADER_LEN])
    sealed = view[HEADER_LEN:]
    plain = bytearray(sealed.nbytes - TAG_LEN)

    def decrypt(cipher: Any) -> bool:
        # The tag's failure is a result, not an exception: an exception's traceback
        # would keep this frame, and the cipher with it, after the key is wiped.
        try:
            decrypt_into = getattr(cipher, "decrypt_into", None)
            if decrypt_into is not None:
                decrypt_into(nonce, sealed, header, plain)
            else:
                plain[:] = cipher.decrypt(nonce, sealed, header)
        except InvalidTag:
            return False
        return True

    if not _with_cipher(key, salt, aead, decrypt):
        ipc.wipe(plain)  # decrypt_into may have written unauthenticated plaintext
        raise StoreError(
            "token store does not open with this key (wrong key, or the file is damaged)"
        )
    return plain


_PROBE = b"pizauth token store self-test"


def check_aead(aead: Aead | None = None) -> str | None:
    """Whether the AEAD, used exactly as the store uses it, does what the store relies on;
    None if it does, else why not (for the user). Run once at start, before the store
    is used: a file sealed under one key must not open under another, two keys must
    give two ciphertexts, and a file must open under its own key."""
    a, b = Secret(os.urandom(32)), Secret(os.urandom(32))
    salt_nonce = os.urandom(SALT_LEN + NONCE_LEN)
    try:
        under_a = _seal(_PROBE, a, salt_nonce, aead)
        if under_a == _seal(_PROBE, b, salt_nonce, aead):
            return "it sealed the same data under two different keys into the same bytes"
        try:
            ipc.wipe(open_sealed(under_a, b, aead))
        except StoreError:
            pass
        else:
            return "a file sealed under one key opened with another"
        if open_sealed(under_a, a, aead) != _PROBE:
            return "a file it sealed did not open to what was sealed"
    except StoreError as e:
        return f"a file it sealed did not open with its own key ({e})"
    except Exception as e:  # a broken build may fail in any way: say which
        return f"it failed: {type(e).__name__}: {e}"
    finally:
        a.wipe()
        b.wipe()
    return None


# -- files --------------------------------------------------------------------------------


def read(path: str, what: str = "token store", limit: int = MAX_STORE) -> bytearray | None:
    """The store file's bytes, or None if there is none; StoreError if it is unreadable.

    A symbolic link, a FIFO or anything but a regular file is refused, as is one
    larger than `limit` (MAX_STORE for the store itself).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"{what} {path} is a symbolic link") from None
        raise StoreError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise StoreError(f"{what} {path} is too large ({info.st_size} bytes)")
        buf = bytearray(info.st_size + 1)  # one more, to notice a file that grew
        have = 0
        view = memoryview(buf)
        while have < len(buf):
            n = os.readv(fd, [view[have:]])
            if n == 0:
                break
            have += n
        view.release()
        if have > info.st_size:
            raise StoreError(f"{what} {path} changed while it was read")
        del buf[have:]
        return buf
    except OSError as e:
        raise StoreError(f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def make_dirs(directory: str) -> None:
    """Create `directory` and its missing parents with mode 0700; existing ones are kept."""
    missing = []
    d = os.path.abspath(directory)
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # whatever the umask took away


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{os.urandom(6).hex()}")


def write_atomic(path: str, data: Buffer) -> None:
    """Replace `path` by a file holding `data`, mode 0600, so that a crash at any point
    leaves either the old file or the new one. OSError on failure (the old file stays)."""
    directory = os.path.dirname(os.path.abspath(path))
    make_dirs(directory)
    temp = _temp_name(os.path.abspath(path))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data).cast("B")
            done = 0
            while done < view.nbytes:
                done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def move_aside(path: str, now: float | None = None) -> str:
    """Rename `path` to PATH.unreadable-TIMESTAMP, never over an existing file; the new
    path. OSError on failure (then `path` is where it was)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    base = f"{path}.unreadable-{stamp}"
    for i in range(1000):
        aside = base if i == 0 else f"{base}-{i}"
        try:
            # link() fails if `aside` exists: no race can make us overwrite a file.
            os.link(path, aside, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A file system without hard links: rename, checking first.
            if os.path.lexists(aside):
                continue
            os.rename(path, aside)
        else:
            os.unlink(path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        return aside
    raise OSError(errno.EEXIST, f"too many files named {base}*")


def remove_stale_temps(path: str) -> list[str]:
    """Delete temporary files a killed server left next to `path`; their names."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.tmp-"
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue  # a write in progress in another process
        try:
            os.unlink(os.path.join(directory, entry))
            removed.append(entry)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own writes are never in progress while we look
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# -- the rule: never overwrite what could not be opened -----------------------------------


class Status(enum.Enum):
    ABSENT = "absent"  # no store file: nothing to protect
    OPENED = "opened"  # the file opened with our key: ours to replace
    KEY_FAILED = "key failed"  # the key command failed, so the file was not tried
    UNOPENED = "unopened"  # the file was unreadable, damaged, or not for this key
    UNUSABLE = "unusable"  # the cipher failed its self-test: the file is not touched


class Store:
    """One store file and what is known about it.

    The parent calls load() at start (or key_failed() if the key command failed),
    set_aside() if it did not open, then save() for each write. A file that exists and
    was never opened is moved aside, never overwritten.
    """

    def __init__(self, path: str, aead: Aead | None = None) -> None:
        self.path = path
        self.aead = aead  # None: ChaCha20Poly1305; tests give a cipher of their own
        self.status = Status.ABSENT
        self.error: str | None = None  # why the file was not opened, for info and logs

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def load(self, key: Secret) -> bytearray | None:
        """The plaintext (the caller wipes it), None if there is no store; StoreError if
        the file cannot be read or opened, and then it will be moved aside, not
        overwritten."""
        remove_stale_temps(self.path)
        try:
            data = read(self.path)
            if data is None:
                self.status, self.error = Status.ABSENT, None
                return None
            try:
                plaintext = open_sealed(data, key, self.aead)
            finally:
                ipc.wipe(data)
        except StoreError as e:
            self.status, self.error = Status.UNOPENED, str(e)
            raise
        self.status, self.error = Status.OPENED, None
        return plaintext

    def key_failed(self, error: str) -> None:
        """The key command failed before the store could be opened."""
        if self.status is not Status.OPENED and self.exists():
            self.status, self.error = Status.KEY_FAILED, error

    def not_opened(self, error: str) -> None:
        """The file opened but its content could not be used (the caller's decoding
        failed): keep it, as if it had not opened."""
        self.status, self.error = Status.UNOPENED, error

    def unusable(self, error: str) -> None:
        """The cipher cannot be trusted: the file is neither read nor written."""
        self.status, self.error = Status.UNUSABLE, error

    def set_aside(self) -> str:
        """Move a file that did not open to PATH.unreadable-TIMESTAMP, so that nothing
        overwrites it; the new path. StoreError if it cannot be moved (it then stays
        unopened, and save() tries again)."""
        try:
            moved = move_aside(self.path)
        except OSError as e:
            raise StoreError(
                f"cannot move the unopened token store {self.path} aside: {e.strerror}"
            ) from None
        self.status = Status.ABSENT  # self.error stays: `info` still says why
        return moved

    def save(self, plaintext: Buffer, key: Secret) -> str | None:
        """Seal and write `plaintext`; the path the old file was moved to, if it was.

        StoreError (the old file untouched, or aside) if it cannot be written."""
        if self.status is Status.UNUSABLE:
            raise StoreError(f"token store {self.path} not written: {self.error}")
        moved = None
        if self.status in (Status.KEY_FAILED, Status.UNOPENED) and self.exists():
            moved = self.set_aside()
        data = seal(plaintext, key, self.aead)
        try:
            write_atomic(self.path, data)
        except OSError as e:
            raise StoreError(f"cannot write token store {self.path}: {e.strerror}") from None
        finally:
            ipc.wipe(data)
        self.status, self.error = Status.OPENED, None
        return moved


# -- when to write ------------------------------------------------------------------------


@dataclass
class WriteSchedule:
    """Changes within `delay` seconds of the first one are written together.

    The first change after a write sets the due time; later changes do not move it,
    so no change waits longer than `delay` to be written.
    """

    delay: float = 1.0
    due: float | None = None

    def changed(self, now: float) -> None:
        if self.due is None:
            self.due = now + self.delay

    def next_write_due(self) -> float | None:
        """The instant at which the loop should write, or None if nothing is pending."""
        return self.due

    def take(self, now: float) -> bool:
        """True (once) if a write is due at `now`: the caller writes the current state."""
        if self.due is not None and self.due <= now:
            self.due = None
            return True
        return False
