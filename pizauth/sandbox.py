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

The filter also bounds what a child may do with sockets (socket() and
socketpair() are filtered on their arguments), and Landlock (pizauth/landlock.py)
takes away the file system. confine_command(), confine_network(),
confine_launcher() and confine_worker() apply the whole confinement of each
child; each is called once, after the child has loaded what it needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib
import logging
import os
import sys
import sysconfig
import threading
from collections.abc import Iterable

from pizauth import landlock

log = logging.getLogger("pizauth")

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
CLONE_THREAD = 0x00010000
NR_SCMP_ERROR = -1

# Never needed by a child, whatever it does. io_uring can open sockets without socket(),
# where the filter below could not see them; open_by_handle_at opens a file by number.
ALWAYS_DENIED = (
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "open_by_handle_at",
)
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 2 + 8, 16
# Above every address family Linux has (46 today): the filter compares all 64 bits of
# the argument, the kernel only the low 32, so anything this large or larger is denied.
AF_LIMIT = 64
NETLINK_ROUTE = 0
# What the network side needs: TCP and DNS over IP, and the routing netlink that
# getaddrinfo reads to order a name's addresses. Not AF_UNIX: the control socket is one.
INTERNET = (AF_INET, AF_INET6, AF_NETLINK)
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
_kernel: bool | None = None


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
    global _kernel
    if _load() is None:
        return False
    if _kernel is None:  # looked up once: a confined process can no longer read /proc
        try:
            with open("/proc/self/status") as status:
                _kernel = any(line.startswith("Seccomp:") for line in status)
        except OSError:
            _kernel = False
    return _kernel


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


def _sockets(lib: ctypes.CDLL, ctx: int, domains: tuple[int, ...], pairs: bool) -> None:
    """socket() only for `domains`, socketpair() only for AF_UNIX if `pairs`."""
    eperm = SCMP_ACT_ERRNO(errno.EPERM)  # not a kill: glibc's nscd probe must just fail
    for domain in range(AF_LIMIT):
        if domain not in domains:
            _deny(lib, ctx, "socket", eperm, _ArgCmp(0, SCMP_CMP_EQ, domain, 0))
    _deny(lib, ctx, "socket", eperm, _ArgCmp(0, SCMP_CMP_GE, AF_LIMIT, 0))
    if AF_NETLINK in domains:
        _deny(
            lib,
            ctx,
            "socket",
            eperm,
            _ArgCmp(0, SCMP_CMP_EQ, AF_NETLINK, 0),
            _ArgCmp(2, SCMP_CMP_NE, NETLINK_ROUTE, 0),
        )
    if pairs:
        # A pair is born connected, so it can never reach a listening socket.
        _deny(lib, ctx, "socketpair", eperm, _ArgCmp(0, SCMP_CMP_NE, AF_UNIX, 0))
    else:
        _deny(lib, ctx, "socketpair", eperm)


def confine(
    who: str,
    new_processes: bool = False,
    warn: bool = True,
    sockets: tuple[int, ...] | None = None,
    socketpairs: bool = True,
) -> bool:
    """Install the filter in this process; False (and a warning) where that is impossible.

    `new_processes` keeps fork and process-creating clone allowed, for a process
    whose job is to start short-lived workers. `warn=False` for a process whose
    parent has already said that it could not be confined. `sockets`, if given,
    lists the only address families socket() may create (none if empty), and
    `socketpairs` whether AF_UNIX socketpair() stays allowed.
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
        if sockets is not None:
            _sockets(lib, ctx, sockets, socketpairs)
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


# -- the whole confinement of each child ---------------------------------------------------------

# Read by name resolution (glibc's files and dns modules) and by TLS (the CA bundles).
NETWORK_FILES = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/services",
    "/etc/ld.so.cache",
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
)
# Where glibc's libnss_* modules (loaded at the first name look-up) and OpenSSL's
# configuration live.
LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# Imported by a token request only once it runs (host names are encoded with the idna
# codec, a body's charset is guessed, ...): loaded before the child locks itself in.
NETWORK_MODULES = (
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "stringprep",
    "unicodedata",
    "json",
    "http.client",
    "email.parser",
    "email.feedparser",
    "ssl",
    "certifi",
    "idna",
    "urllib3",
    "charset_normalizer",
    "requests",
)


def report() -> None:
    """In the parent, once: say if the children's files cannot be confined."""
    if landlock.abi() == 0:
        log.warning("the children's file access is not confined: the kernel has no Landlock")


def interpreter_paths() -> list[str]:
    """What the interpreter reads: its standard library, its site-packages, and the
    directory of every package already loaded (an editable install lives elsewhere).

    Not sys.path as such: `python -m` puts the working directory on it.
    """
    paths = []
    for base in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix)):
        scheme = sysconfig.get_paths(vars={"base": base, "platbase": base})
        paths += [scheme[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    for name, module in list(sys.modules.items()):
        if "." in name:
            continue
        found = getattr(module, "__path__", None) or [getattr(module, "__file__", None)]
        paths += [p for p in found if isinstance(p, str)]
    home = os.path.expanduser("~")
    cwd = os.getcwd()
    # Never a directory that holds the user's files: the home directory or one above it.
    return [p for p in paths if p != cwd and not (home + "/").startswith(p.rstrip("/") + "/")]


def network_paths() -> list[str]:
    """What name resolution and TLS read, beyond the interpreter."""
    paths = list(NETWORK_FILES) + list(LIBRARY_DIRS)
    resolv = os.path.realpath("/etc/resolv.conf")
    if resolv != "/etc/resolv.conf":
        paths.append(os.path.dirname(resolv))  # replaced, not rewritten, by resolvers
    import ssl  # not at the top: the command child has no use for it

    verify = ssl.get_default_verify_paths()
    paths += [p for p in (verify.cafile, verify.capath) if p]
    paths += [os.environ[v] for v in CA_VARIABLES if os.environ.get(v)]
    try:
        import certifi

        paths.append(certifi.where())
    except ImportError:
        pass
    return paths


def _preload(modules: Iterable[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # optional (charset_normalizer): its user copes without it


def _lock_files(who: str, readable: list[str], deny_tcp: int) -> None:
    """Landlock: read only `readable`, write nothing. The parent warns where it cannot."""
    available()  # libseccomp and /proc are out of reach afterwards
    if threading.active_count() != 1:
        # Landlock binds the calling thread only: a thread already running would escape.
        log.warning("%s: file access not confined: started after its threads", who)
        return
    try:
        landlock.restrict(readable, deny_tcp=deny_tcp)
    except (landlock.LandlockError, OSError) as e:
        log.warning("%s: file access not confined: %s", who, e)


def confine_command() -> None:
    """The command child: no file to open beyond the interpreter's, no socket to make."""
    _lock_files(
        "command child",
        interpreter_paths() + ["/etc/localtime"],
        landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP,
    )
    confine("command child", sockets=(), socketpairs=False)


def confine_network() -> None:
    """The network child: reads what the interpreter, name resolution and TLS need;
    makes IP sockets and AF_UNIX pairs for its workers; no unix-domain socket."""
    _preload(NETWORK_MODULES)
    paths = interpreter_paths() + network_paths() + ["/etc/localtime"]
    _lock_files("network child", paths, landlock.NET_BIND_TCP)
    confine("network child", sockets=INTERNET, socketpairs=True)


def confine_launcher() -> None:
    """The launcher, and through it each worker: as the network child, but forks
    workers, and makes no socket pair (a worker gets its socket from the child)."""
    _preload(NETWORK_MODULES)
    paths = interpreter_paths() + network_paths() + ["/etc/localtime"]
    _lock_files("network launcher", paths, landlock.NET_BIND_TCP)
    confine("network launcher", new_processes=True, sockets=INTERNET, socketpairs=False)


def confine_worker() -> None:
    """A worker: the launcher's confinement (inherited), and no new processes."""
    # If the launcher could not be confined it has said so; one warning per token
    # request would be noise.
    confine("network worker", warn=False, sockets=INTERNET, socketpairs=False)
