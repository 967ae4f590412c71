"""A seccomp filter for the children: deny the system calls they never need.

The command child and the network child parse what strangers send. Should one
of them be subverted, the filter keeps it from running a program (execve),
reading or writing another process (ptrace, process_vm_*), or starting a new
process to do either. Threads are still allowed: clone is denied only when
CLONE_THREAD is not among its flags. clone3 passes its flags in memory, where a
filter cannot see them, so it fails with ENOSYS and glibc falls back to clone.

The filter is built with libseccomp through ctypes. Where libseccomp or
seccomp is missing the child runs unconfined and says so once in the log.
Install the filter before starting threads: it applies to the calling thread
and whatever it creates afterwards, and can never be removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging

log = logging.getLogger("pizauth")

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
CLONE_THREAD = 0x00010000
NR_SCMP_ERROR = -1

# Never needed by a child, whatever it does.
ALWAYS_DENIED = ("execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev")
# Denied unless the process exists to start others (the network child's launcher).
NEW_PROCESS = ("fork", "vfork")


def SCMP_ACT_ERRNO(error: int) -> int:  # noqa: N802 - libseccomp's name
    return 0x00050000 | (error & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_lib: ctypes.CDLL | None = None
_why_not = ""


def _load() -> ctypes.CDLL | None:
    """libseccomp, looked up once: later look-ups may need to run ldconfig, which a
    confined process can no longer do."""
    global _lib, _why_not
    if _lib is not None or _why_not:
        return _lib
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        name = ctypes.util.find_library("seccomp")
        if name is None:
            _why_not = "libseccomp is not installed"
            return None
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            _why_not = f"cannot load {name}: {e}"
            return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    _lib = lib
    return lib


def available() -> bool:
    """Whether this machine can confine a process (libseccomp and a seccomp kernel)."""
    if _load() is None:
        return False
    try:
        with open("/proc/self/status") as status:
            return any(line.startswith("Seccomp:") for line in status)
    except OSError:
        return False


def unavailable() -> str:
    """Why available() is false ("" if it is not)."""
    if available():
        return ""
    return _why_not or "the kernel has no seccomp"


def prepare() -> None:
    """Load libseccomp now, while the process may still run ldconfig to find it."""
    _load()


class SandboxError(Exception):
    pass


def _deny(lib: ctypes.CDLL, ctx: int, name: str, action: int, *cmp: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == NR_SCMP_ERROR:
        return  # this architecture has no such call: nothing to deny
    args = (_ArgCmp * len(cmp))(*cmp) if cmp else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmp), args)
    if rc < 0:
        raise SandboxError(f"seccomp rule for {name}: {errno.errorcode.get(-rc, rc)}")


def confine(who: str, new_processes: bool = False, warn: bool = True) -> bool:
    """Install the filter in this process; False (and a warning) where that is impossible.

    `new_processes` keeps fork and process-creating clone allowed, for a process
    whose job is to start short-lived workers. `warn=False` for a process whose
    parent has already said that it could not be confined.
    """
    lib = _load() if available() else None
    if lib is None:
        if warn:
            log.warning("%s is not sandboxed: %s", who, unavailable())
        return False
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        log.warning("%s is not sandboxed: seccomp_init failed", who)
        return False
    try:
        eperm = SCMP_ACT_ERRNO(errno.EPERM)
        for name in ALWAYS_DENIED:
            _deny(lib, ctx, name, eperm)
        _deny(lib, ctx, "clone3", SCMP_ACT_ERRNO(errno.ENOSYS))
        if not new_processes:
            for name in NEW_PROCESS:
                _deny(lib, ctx, name, eperm)
            # clone(flags, ...) without CLONE_THREAD makes a process, not a thread.
            no_thread = _ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0)
            _deny(lib, ctx, "clone", eperm, no_thread)
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise SandboxError(f"seccomp_load: {errno.errorcode.get(-rc, rc)}")
    except SandboxError as e:
        log.warning("%s is not sandboxed: %s", who, e)
        return False
    finally:
        lib.seccomp_release(ctx)
    log.debug("%s sandboxed", who)
    return True
