"""A seccomp filter for the children: each may make only the system calls it needs.

The command child and the network side (the network child, its launcher and the
launcher's workers) parse what strangers send. Each installs a filter that lists
what it may do, the way OpenBSD's pledge() lists promises: "stdio" (use what it
already holds), "rpath" (open files for reading; Landlock, pizauth/landlock.py,
decides which), "threads", "inet", "proc" (the launcher's fork), "worker start"
(what a forked worker does to itself before it confines itself further). A call
outside its list ends the process (SIGSYS): in a child that works as it should
none is ever made, so one is a bug or an attack. The process that started it
logs it (killed_message()), and the parent starts its child again. Only where a
call must fail softly in normal operation does it fail with an error instead: a
socket of a family the process may not make (glibc probes for nscd over
AF_UNIX), clone3 (ENOSYS, so that glibc falls back to clone, whose flags a
filter can read) and opening a file for writing (EACCES, as Landlock answers).

Where a call is needed only in a narrow form, its arguments are checked:
resource limits, scheduling and signals apply only to the process itself (pid 0
or its own pid, known when it builds its filter), clone only makes threads (or,
in the launcher, a plain fork), never a namespace. Nothing in any list changes a
file's mode, owner, extended attributes or times, another process's limits,
priority or memory, or the namespaces, since Landlock does not cover those.

The filter is built with libseccomp through ctypes. Where libseccomp or seccomp
is missing the children run unconfined and the parent says so once (report()). Install the
filter before starting threads: it applies to the calling thread and whatever it
creates afterwards, and can never be removed. Filters stack: a worker, forked
from the confined launcher, adds its own narrower one.

confine_command(), confine_network(), confine_launcher() and confine_worker()
apply the whole confinement of each child (Landlock first, then the filter);
each is called once, after the child has loaded what it needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib
import logging
import os
import signal
import sys
import sysconfig
import termios
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pizauth import landlock

log = logging.getLogger("pizauth")

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_CMP_NE = 1
SCMP_CMP_GE = 5
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(error: int) -> int:  # noqa: N802 - libseccomp's name
    return 0x00050000 | (error & 0xFFFF)


# -- how a promise is written ---------------------------------------------------------------------

SELF = object()  # stands for the pid of the process that builds the filter


@dataclass(frozen=True)
class Only:
    """`name` allowed only when argument `arg` masked with `mask` equals `value` (and the
    further conditions in `also`, as (arg, mask, value)). Several for one call: any."""

    name: str
    arg: int
    value: object  # an int, or SELF
    mask: int | None = None
    also: tuple[tuple[int, int, int], ...] = ()


def only(name: str, arg: int, *values: object) -> tuple[Only, ...]:
    """`name` allowed when argument `arg` is one of `values`."""
    return tuple(Only(name, arg, value) for value in values)


Promise = tuple["str | Only", ...]

# Sockets: the address families each process may make.
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 2 + 8, 16
# Above every address family Linux has (46 today): the filter compares all 64 bits of
# the argument, the kernel only the low 32, so anything this large or larger is denied.
AF_LIMIT = 64
NETLINK_ROUTE = 0
# What the network side needs: TCP and DNS over IP, and the routing netlink that
# getaddrinfo reads to order a name's addresses. Not AF_UNIX: the control socket is one.
INTERNET = (AF_INET, AF_INET6, AF_NETLINK)

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_PIDFD, CLONE_PTRACE, CLONE_VFORK, CLONE_PARENT = 0x1000, 0x2000, 0x4000, 0x8000
CLONE_THREAD, CLONE_NEWNS, CLONE_UNTRACED = 0x10000, 0x20000, 0x800000
CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x200000, 0x1000000
CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_IO = 0x10000000, 0x20000000, 0x40000000, 1 << 31
CLONE_NEW = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
CLONE_NEW |= CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
# A thread shares memory, files and signal handlers with its process; whatever else a C
# library adds (TLS, tid pointers) is its own business, a namespace or a new parent is not.
THREAD = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
NOT_IN_A_THREAD = CLONE_NEW | CLONE_PIDFD | CLONE_PTRACE | CLONE_VFORK | CLONE_PARENT
NOT_IN_A_THREAD |= CLONE_UNTRACED | CLONE_IO | 0xFF  # 0xFF: the exit signal (a process)
# What glibc's fork() passes to clone, and so os.fork(): a new process, nothing shared.
FORK = CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | signal.SIGCHLD
MUSL_FORK = signal.SIGCHLD  # musl's fork(): the same, without the tid pointers

# open() for writing: Landlock refuses it anyway; the filter answers as Landlock does.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_NO_NEW_PRIVS = 1, 4, 15, 38
SECCOMP_SET_MODE_FILTER = 1

# -- the promises ---------------------------------------------------------------------------------

# Using what the process already has: its descriptors, its memory, its threads' locks.
STDIO: Promise = (
    *("read", "readv", "pread64", "preadv", "preadv2"),  # its channel, sockets, files
    *("write", "writev", "pwrite64", "pwritev", "pwritev2"),  # its channel, sockets, stderr
    *("recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg"),  # and descriptors
    *("getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown"),  # timeouts, EOF
    *("accept", "accept4"),  # on the listening sockets the parent handed it
    *("close", "close_range", "dup", "dup2", "dup3", "pipe", "pipe2"),
    # Descriptor flags: not F_SETOWN, which would aim SIGIO at another process.
    *only("fcntl", 1, F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC),
    # Blocking mode, close-on-exec, isatty(): not TIOCSTI, which types into a terminal.
    *only("ioctl", 1, termios.FIONBIO, termios.FIOCLEX, termios.FIONCLEX, termios.TCGETS),
    *only("ioctl", 1, termios.FIONREAD, termios.TIOCGWINSZ),
    *("poll", "ppoll", "select", "pselect6", "_newselect"),  # waiting for descriptors
    *("epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2"),
    *("brk", "mmap", "munmap", "mremap", "mprotect", "madvise"),  # the heap, thread stacks
    *("futex", "futex_time64", "futex_waitv", "set_robust_list", "rseq", "set_tid_address"),
    *("clock_gettime", "clock_gettime64", "clock_getres", "gettimeofday", "time"),  # no vDSO
    *("nanosleep", "clock_nanosleep", "clock_nanosleep_time64", "sched_yield"),  # time.sleep
    *("rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall"),
    *("getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups"),
    *("getresuid", "getresgid", "getpgrp", "uname", "sysinfo", "getrusage", "times"),
    "getrandom",  # os.urandom, secrets, TLS
    *("exit", "exit_group"),
    # Its own resource limits (glibc's getrlimit and setrlimit are prlimit64 on pid 0).
    *only("prlimit64", 0, 0, SELF),
    *("getrlimit", "ugetrlimit", "setrlimit"),  # these apply to the caller only
    # Its own CPUs: glibc's malloc sizes its arenas by them, os.cpu_count may ask.
    *only("sched_getaffinity", 0, 0, SELF),
    # Signals to itself only (abort(), raise()): never to the parent or its group.
    *only("kill", 0, SELF),
    *only("tgkill", 0, SELF),
)
# Reading files: Landlock says which. Opening one for writing fails as Landlock would.
RPATH: Promise = (
    Only("open", 1, 0, WRITE_FLAGS),
    Only("openat", 2, 0, WRITE_FLAGS),
    *("stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs"),
    *("access", "faccessat", "faccessat2", "readlink", "readlinkat", "getcwd"),
    *("lseek", "getdents", "getdents64"),  # reading a file, listing a package's directory
)
# Threads, never processes: clone with a thread's flags and none of a new process's.
THREADS: Promise = (Only("clone", 0, THREAD, THREAD | NOT_IN_A_THREAD),)
# The provider's servers: name resolution and TLS over TCP; socket() is filtered apart.
INET: Promise = (
    "connect",  # TCP to the provider, UDP to the name server
    "bind",  # glibc binds its routing netlink socket (getaddrinfo's address order)
)
# The launcher forks workers (glibc's fork: clone with exactly these flags), reaps them,
# and waits for one to end when every slot is taken (signal.sigtimedwait on SIGCHLD).
PROC: Promise = (*only("clone", 0, FORK, MUSL_FORK), "wait4", "waitid", "rt_sigtimedwait")
# A worker's deadlines: SIGALRM interrupts its call (net/deadline.py's within), and a
# timer of its own SIGKILLs it if the call escapes that (kill_self_after). A timer signals
# the process that made it, never another.
DEADLINE: Promise = ("alarm", "setitimer", "getitimer", "timer_create", "timer_settime")
# A new worker hardens, names and confines itself (process.harden, set_title,
# confine_worker) under the launcher's filter, which it inherits.
WORKER_START: Promise = (
    Only("prctl", 0, PR_SET_DUMPABLE, also=((1, ~0, 0),)),  # not dumpable
    *only("prctl", 0, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, PR_SET_NAME),
    Only("seccomp", 0, SECCOMP_SET_MODE_FILTER),  # a further filter only narrows
    *("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"),  # likewise
)
# The network child waits for its launcher's exit status when the launcher dies.
REAP: Promise = ("wait4",)

# Each process's promises. A worker's filter stacks on the launcher's (inherited), so
# what it may do is what both allow.
COMMAND = STDIO + RPATH
NETWORK = STDIO + RPATH + THREADS + INET + REAP
LAUNCHER = STDIO + RPATH + INET + PROC + WORKER_START + DEADLINE
WORKER = STDIO + RPATH + INET + DEADLINE

# Failing softly, as said above: never a kill for these.
SOFT = {"clone3": errno.ENOSYS}


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
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
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


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmp: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # this architecture has no such call (arm64 has no open, x86_64 no _newselect)
    args = (_ArgCmp * len(cmp))(*cmp) if cmp else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmp), args)
    if rc < 0:
        raise SandboxError(f"seccomp rule for {name}: {errno.errorcode.get(-rc, rc)}")


def _compare(arg: int, value: int, mask: int | None) -> _ArgCmp:
    if mask is None:
        return _ArgCmp(arg, SCMP_CMP_EQ, value, 0)
    return _ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask & (2**64 - 1), value)


def _allow(lib: ctypes.CDLL, ctx: int, promise: Promise) -> None:
    for entry in dict.fromkeys(promise):
        if isinstance(entry, str):
            _rule(lib, ctx, SCMP_ACT_ALLOW, entry)
            continue
        value = os.getpid() if entry.value is SELF else entry.value
        assert isinstance(value, int)
        cmp = [_compare(entry.arg, value, entry.mask)]
        cmp += [_compare(arg, v, mask) for arg, mask, v in entry.also]
        _rule(lib, ctx, SCMP_ACT_ALLOW, entry.name, *cmp)


def _files(lib: ctypes.CDLL, ctx: int) -> None:
    """Opening for writing fails with EACCES, as Landlock answers (a library trying
    to write a cache file copes with that)."""
    eacces = SCMP_ACT_ERRNO(errno.EACCES)
    for name, arg in (("open", 1), ("openat", 2)):
        for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC):
            _rule(lib, ctx, eacces, name, _compare(arg, flag, flag))


def _sockets(lib: ctypes.CDLL, ctx: int, domains: tuple[int, ...], pairs: bool) -> None:
    """socket() only for `domains` (routing netlink only), socketpair() only for AF_UNIX
    if `pairs`; any other fails with EPERM: glibc's nscd probe must just fail."""
    eperm = SCMP_ACT_ERRNO(errno.EPERM)
    for domain in range(AF_LIMIT):
        family = _ArgCmp(0, SCMP_CMP_EQ, domain, 0)
        if domain == AF_NETLINK and domain in domains:
            route = _ArgCmp(2, SCMP_CMP_EQ, NETLINK_ROUTE)
            _rule(lib, ctx, SCMP_ACT_ALLOW, "socket", family, route)
            _rule(lib, ctx, eperm, "socket", family, _ArgCmp(2, SCMP_CMP_NE, NETLINK_ROUTE))
        else:
            _rule(lib, ctx, SCMP_ACT_ALLOW if domain in domains else eperm, "socket", family)
    _rule(lib, ctx, eperm, "socket", _ArgCmp(0, SCMP_CMP_GE, AF_LIMIT))
    if pairs:
        # A pair is born connected, so it can never reach a listening socket.
        _rule(lib, ctx, SCMP_ACT_ALLOW, "socketpair", _ArgCmp(0, SCMP_CMP_EQ, AF_UNIX))
        _rule(lib, ctx, eperm, "socketpair", _ArgCmp(0, SCMP_CMP_NE, AF_UNIX))
    else:
        _rule(lib, ctx, eperm, "socketpair")


def confine(
    who: str,
    promise: Promise,
    sockets: tuple[int, ...] = (),
    socketpairs: bool = False,
    warn: bool = True,
) -> bool:
    """Install the filter that allows `promise` in this process; False (and a warning
    unless `warn` is false) where that is impossible.

    `sockets` lists the only address families socket() may create, `socketpairs`
    whether AF_UNIX socketpair() is allowed. `warn=False` for a process whose parent
    has already said that it could not be confined.
    """
    lib = _load() if available() else None
    if lib is None:
        if warn:
            log.warning("%s is not sandboxed: %s", who, unavailable())
        return False
    ctx = lib.seccomp_init(SCMP_ACT_KILL_PROCESS)
    if not ctx:
        log.warning("%s is not sandboxed: seccomp_init failed", who)
        return False
    try:
        # A call by another architecture's numbers (int 0x80 on x86_64) ends it too.
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)
        _allow(lib, ctx, promise)
        for name, error in SOFT.items():
            _rule(lib, ctx, SCMP_ACT_ERRNO(error), name)
        _files(lib, ctx)
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


def killed_by_filter(wait_status: int) -> bool:
    """Whether a wait status (os.waitpid's) says the process was ended by its filter:
    SIGSYS, the signal a call outside the allowlist ends it with."""
    return os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGSYS


def killed_message(who: str, pid: int) -> str:
    """What is logged when `who` was ended by its filter (tests look for this)."""
    return (
        f"{who} (pid {pid}) was killed by its seccomp filter: a system call outside its "
        "allowlist (a bug in pizauth, or an attack on it)"
    )


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
    """In the parent, once: say what of the children's confinement this machine cannot
    enforce (the children then say nothing of it)."""
    if not available():
        log.warning("the children are not sandboxed: %s", unavailable())
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
    # Nothing may be written: Python would try (and fail) to save a module's bytecode.
    sys.dont_write_bytecode = True
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
    confine("command child", COMMAND, warn=False)


def confine_network() -> None:
    """The network child: reads what the interpreter, name resolution and TLS need;
    makes IP sockets and AF_UNIX pairs for its workers; no unix-domain socket."""
    _preload(NETWORK_MODULES)
    paths = interpreter_paths() + network_paths() + ["/etc/localtime"]
    _lock_files("network child", paths, landlock.NET_BIND_TCP)
    confine("network child", NETWORK, sockets=INTERNET, socketpairs=True, warn=False)


def confine_launcher() -> list[str]:
    """The launcher, and through it each worker: as the network child, but forks
    workers, and makes no socket pair (a worker gets its socket from the child).
    Returns what it may read, for its workers' own Landlock domain."""
    _preload(NETWORK_MODULES)
    paths = interpreter_paths() + network_paths() + ["/etc/localtime"]
    _lock_files("network launcher", paths, landlock.NET_BIND_TCP)
    confine("network launcher", LAUNCHER, sockets=INTERNET, warn=False)
    return paths


def confine_worker(paths: list[str]) -> None:
    """A worker: the launcher's confinement (inherited), narrowed. A Landlock domain of
    its own keeps it from signalling the launcher (a scope), and its own filter from
    forking and from touching any pid but its own."""
    if landlock.abi() and threading.active_count() == 1:
        try:
            landlock.restrict(paths, deny_tcp=landlock.NET_BIND_TCP)
        except (landlock.LandlockError, OSError):
            pass  # the launcher's domain still holds
    confine("network worker", WORKER, sockets=INTERNET, warn=False)
