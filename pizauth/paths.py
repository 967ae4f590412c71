"""Runtime directory, control-socket and configuration-file paths.

This module is on the `pizauth show` path, so it imports nothing but `os` (and the lean
pizauth.control, for the longest socket path).
"""

import os

from pizauth.control import SOCKET_PATH_MAX

RUNTIME_LEAF = "pizauth"
SOCKET_LEAF = "pizauth.sock"
CONFIG_LEAF = "pizauth.conf"

# Shown instead of a path whose bytes are not valid UTF-8 (the original's wording).
NON_UTF8_PATH = "<path cannot be represented as UTF-8>"


class PathError(Exception):
    """A fatal start-up error; str(exc) is the exact message printed raw on stderr."""


def os_error_text(e: OSError) -> str:
    """Format an OSError like Rust's io::Error does («TEXT (os error N)»), so that
    messages embedding an OS error read the same as the original's."""
    if e.errno is not None:
        return f"{os.strerror(e.errno)} (os error {e.errno})"
    return str(e)


def display_path(p: str) -> str:
    """`p` as it may be printed: paths from the environment can carry undecodable bytes
    (surrogate escapes), which the original replaces with a fixed placeholder."""
    try:
        p.encode("utf-8")
    except UnicodeEncodeError:
        return NON_UTF8_PATH
    return p


def _env(name: str) -> str | None:
    # An empty value is treated as unset, as the XDG base-dir spec says
    # (docs/compatibility.md "Empty environment variables"): otherwise
    # XDG_RUNTIME_DIR="" would make every command work relative to the cwd.
    return os.environ.get(name) or None


def _username() -> str:
    # `pwd` is a built-in module and is only needed when $XDG_RUNTIME_DIR is unset,
    # so it is imported here rather than on every `pizauth show`.
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "unknown-user"


def _passwd_home() -> str | None:
    """The home directory in the password database, for when $HOME is unset (services,
    `env -i`); None if there is none, or only a relative one."""
    import pwd  # lazily, as in _username()

    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None
    return home if os.path.isabs(home) else None


def _make_private_dir(p: str, strict: bool = False) -> None:
    """Make `p` (one level, not recursive, as the original) or take the existing one,
    checked through a descriptor so that nothing is followed or changed by name: in a
    shared directory such as /tmp another user may have put a symbolic link or a
    directory of their own there first. `strict`: an existing directory that others
    could have used (any group or other permission) is refused, not tightened."""
    created = True
    try:
        os.mkdir(p, 0o700)
    except FileExistsError:
        # Another pizauth command may have made it an instant ago (two mail clients
        # calling `pizauth show` at once): fine, if it passes the checks below.
        created = False
    except OSError as e:
        raise PathError(f"Can't create cache dir: {os_error_text(e)}") from None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(p, flags)
    except OSError as e:
        if os.path.islink(p):
            raise PathError(f"Refusing {display_path(p)}: it is a symbolic link") from None
        raise PathError(f"Can't create cache dir: {os_error_text(e)}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise PathError(
                f"Refusing {display_path(p)}: it belongs to another user (uid {st.st_uid})"
            )
        if strict and not created and st.st_mode & 0o077:
            raise PathError(
                f"Refusing {display_path(p)}: its permissions are {st.st_mode & 0o777:o}, "
                "not 700, so other users may have used it; remove it and try again"
            )
        # Even a directory we made: mkdir's mode is subject to the umask.
        try:
            os.fchmod(fd, 0o700)
        except OSError:
            raise PathError(
                f"Can't set permissions for {display_path(p)} to 0700 (octal)"
            ) from None
    finally:
        os.close(fd)


def runtime_dir() -> str:
    """Create (if needed) and return the runtime directory `<base>/pizauth`.

    Raises PathError with the exact fatal message on failure.
    """
    base = _env("XDG_RUNTIME_DIR")
    if base is None:
        # A shared directory: whatever is at this name may have been put there by
        # someone else, so an existing one must already be private.
        base = os.path.join(_env("TMPDIR") or "/tmp", f"runtime-{_username()}")
        _make_private_dir(base, strict=True)
    else:
        _make_private_dir(base)
    rundir = os.path.join(base, RUNTIME_LEAF)
    _make_private_dir(rundir)
    return rundir


def socket_path(rundir: str) -> str:
    """The control socket inside the runtime directory."""
    return os.path.join(rundir, SOCKET_LEAF)


def socket_too_long(sock: str) -> str | None:
    """The message for a control socket path longer than a Unix socket's address can hold
    (the server could not bind it, a client not connect to it); None if it fits."""
    size = len(os.fsencode(sock))
    if size <= SOCKET_PATH_MAX:
        return None
    return (
        f"Control socket path too long: {display_path(sock)} is {size} bytes, "
        f"a Unix socket's path can have at most {SOCKET_PATH_MAX}; "
        "set $XDG_RUNTIME_DIR to a shorter directory"
    )


def _config_candidates() -> list[str]:
    candidates = []
    xdg = _env("XDG_CONFIG_HOME")
    if xdg is not None:
        candidates.append(os.path.join(xdg, CONFIG_LEAF))
    home = _env("HOME") or (None if candidates else _passwd_home())
    if home is not None:
        candidates.append(os.path.join(home, ".config", CONFIG_LEAF))
    if not candidates:
        raise PathError("Neither $XDG_CONFIG_HOME or $HOME set")
    return candidates


def config_path(explicit: str | None, *, must_exist: bool = True) -> str:
    """The configuration file to use.

    An explicit (`-c`) path is returned as given, unchecked. Otherwise
    `$XDG_CONFIG_HOME/pizauth.conf` and then `$HOME/.config/pizauth.conf` are tried in
    that order, as the man page promises (the original never falls back:
    docs/compatibility.md "Config file fallback"); the first regular file wins. If none is,
    PathError names the last path tried — unless `must_exist` is false (for `info`:
    docs/compatibility.md "Info without a config file"), in which case the preferred path is
    returned so the user sees where the file is expected.
    """
    if explicit is not None:
        return explicit
    candidates = _config_candidates()
    for c in candidates:
        if os.path.isfile(c):
            return c
    if not must_exist:
        return candidates[0]
    raise PathError(f"No config file found at {display_path(candidates[-1])}")


def expand_home(p: str) -> str:
    """`p` with a leading "~/" replaced by the home directory ($HOME, else the password
    database); other paths unchanged. Used for token_store, which the config parser has
    already checked is absolute or starts with "~/"."""
    if not p.startswith("~/"):
        return p
    home = _env("HOME") or _passwd_home()
    # A relative home would make the path depend on the working directory.
    if not home or not os.path.isabs(home):
        raise PathError(f"Can't expand '~' in {display_path(p)}: no absolute home directory")
    return os.path.join(home, p[2:])
