"""Runtime directory, control-socket and configuration-file paths.

This module is on the `pizauth show` path, so it imports nothing but `os`.
"""

import os

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


def _make_private_dir(p: str) -> None:
    # Single level, not recursive (as the original): a missing parent is an error.
    if not os.path.exists(p):
        try:
            os.mkdir(p, 0o700)
        except OSError as e:
            # A directory that appeared between the check and mkdir was made by another
            # pizauth command (two mail clients calling `pizauth show` at once): fine.
            if not (isinstance(e, FileExistsError) and os.path.isdir(p)):
                raise PathError(f"Can't create cache dir: {os_error_text(e)}") from None
    # chmod unconditionally, even if the directory already existed: mkdir's mode is
    # subject to the umask, and a pre-existing directory may be too open.
    try:
        os.chmod(p, 0o700)
    except OSError:
        raise PathError(f"Can't set permissions for {display_path(p)} to 0700 (octal)") from None


def runtime_dir() -> str:
    """Create (if needed) and return the runtime directory `<base>/pizauth`.

    Raises PathError with the exact fatal message on failure.
    """
    base = _env("XDG_RUNTIME_DIR")
    if base is None:
        base = os.path.join(_env("TMPDIR") or "/tmp", f"runtime-{_username()}")
    _make_private_dir(base)
    rundir = os.path.join(base, RUNTIME_LEAF)
    _make_private_dir(rundir)
    return rundir


def socket_path(rundir: str) -> str:
    """The control socket inside the runtime directory."""
    return os.path.join(rundir, SOCKET_LEAF)


def _config_candidates() -> list[str]:
    candidates = []
    xdg = _env("XDG_CONFIG_HOME")
    if xdg is not None:
        candidates.append(os.path.join(xdg, CONFIG_LEAF))
    home = _env("HOME")
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
    home = _env("HOME")
    if home is None:
        import pwd  # lazily, as in _username()

        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = None
    # A relative home would make the path depend on the working directory.
    if not home or not os.path.isabs(home):
        raise PathError(f"Can't expand '~' in {display_path(p)}: no absolute home directory")
    return os.path.join(home, p[2:])
