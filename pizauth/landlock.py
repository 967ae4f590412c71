"""Landlock: a child gives up the file system, keeping read access to a few paths.

Landlock is a Linux security module any process may use on itself (with
no_new_privs set, which every pizauth process does). A process builds a ruleset
that lists the access rights it will no longer have ("handled") except beneath
the paths it names, then restricts itself; the restriction can never be lifted
and is inherited by every process it forks. It applies to the calling thread
only, so it must be installed before the process starts any thread.

The system calls are made through ctypes; each kernel knows the rights of its
ABI version only, so only those are handled. Where the kernel has no Landlock
the process runs with its files unconfined; the parent says so once (abi()).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable

# The same numbers on every architecture (the unified system call table).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
# Rights that only ever apply to a file, as opposed to a directory's contents.
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | (1 << 15)
READ = READ_FILE | READ_DIR

# Every file-system right, by the ABI version that introduced it.
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
_NET_ABI = 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
_SCOPE_ABI = 6


class _RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr (its ABI 6 size; a kernel that knows fewer fields
    accepts the zeros it does not know)."""

    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    """struct landlock_path_beneath_attr, which the kernel declares packed."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class LandlockError(Exception):
    pass


def _syscall(*args: object) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(*args)
    if rc < 0:
        e = ctypes.get_errno()
        raise LandlockError(os.strerror(e) if e else "failed")
    return rc


def abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none (or it is disabled)."""
    try:
        return _syscall(
            ctypes.c_long(_SYS_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_CREATE_RULESET_VERSION),
        )
    except (LandlockError, OSError, AttributeError):
        return 0


def restrict(readable: Iterable[str], deny_tcp: int = 0, scoped: bool = True) -> int:
    """Restrict this thread (and what it later forks) to reading beneath `readable`.

    No file anywhere may be written, created, removed or executed; only the paths
    in `readable` that exist may be read (a directory: everything beneath it).
    `deny_tcp` (NET_BIND_TCP, NET_CONNECT_TCP) is also taken where the kernel
    can; `scoped` cuts off abstract unix sockets and signals to processes
    outside this one's domain. Returns the ABI version used; 0 if the kernel has
    no Landlock, in which case nothing is restricted.
    """
    version = abi()
    if version == 0:
        return 0
    attr = _RulesetAttr(_FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= version)], 0, 0)
    if version >= _NET_ABI:
        attr.handled_access_net = deny_tcp
    if version >= _SCOPE_ABI and scoped:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    ruleset = _syscall(
        ctypes.c_long(_SYS_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        ctypes.c_uint32(0),
    )
    try:
        for path in dict.fromkeys(readable):
            _allow_read(ruleset, path)
        _syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return version


def _allow_read(ruleset: int, path: str) -> None:
    try:
        # O_PATH follows symbolic links: the rule is on what the path names now.
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
            return  # nothing there to read
        raise LandlockError(f"{path}: {e.strerror}") from None
    try:
        rights = READ if stat.S_ISDIR(os.fstat(fd).st_mode) else READ & _FILE_RIGHTS
        beneath = _PathBeneathAttr(rights, fd)
        _syscall(
            ctypes.c_long(_SYS_ADD_RULE),
            ctypes.c_int(ruleset),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(beneath),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)
