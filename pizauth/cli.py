"""`pizauth` command line: argument parsing and dispatch, as pizauth 1.1 has them.

`pizauth show` is run by mail clients every few minutes, so this module imports only
`os`, `sys` and pizauth.paths at load time; everything else is imported by the command
that needs it (pizauth.client by the client commands, json by `info`, pizauth.server by
`server`). The option parser is hand-written for the same reason: `getopt` and
`argparse` pull in `re`, `gettext`, ...
"""

from __future__ import annotations

import os
import sys

from pizauth import __version__, paths

TYPE_CHECKING = False  # not `typing`: the show path stays lean
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from pizauth.control import ExchangeFailed

_USAGE_LINES = (
    "dump",
    "info [-j]",
    "refresh [-u] <account>",
    "restore",  # listed before reload, as in the original
    "reload",
    "revoke <account>",
    "server [-c <config-path>] [-dv]",
    "show [-u] <account>",
    "shutdown",
    "status",
)


# After the original's lines, which stay as they were for anyone matching them: the
# commands and options it did not list.
_MORE_USAGE_LINES = (
    "login <account>",
    "systemd-unit",
    "-V | --version",
    "-h | --help",
)
_OPTIONS = """Options:
  -c <config-path>, --config=<config-path>
          info, server: the configuration file to use
  -d      server: stay in the foreground and log to stderr
  -j      info: print JSON
  -u      show, refresh: leave the authorisation URL out of the message
  -v, --verbose
          more log messages (repeat for more)
  -h, --help
          this help
"""


class _UsageError(Exception):
    """Bad command line: str(e) says what is wrong, then the usage follows; exit 1."""


class _Help(Exception):
    """`-h`/`--help`: the usage on stdout, exit 0."""


class _Ctx:
    __slots__ = ("argv0", "progname", "rundir", "sock")

    def __init__(self, argv0: str, progname: str, rundir: str) -> None:
        self.argv0 = argv0
        self.progname = progname
        self.rundir = rundir
        self.sock = paths.socket_path(rundir)


def shown(text: str) -> str:
    """A command-line word as a message may quote it (only on error paths: imported late)."""
    from pizauth.text import shown

    return shown(text)


def _progname(argv0: str) -> str:
    name = os.path.basename(argv0)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = ""
    return name or "pizauth"


def _usage_text(progname: str) -> str:
    lines = (*_USAGE_LINES, *_MORE_USAGE_LINES)
    return "Usage:\n" + "".join(f"  {progname} {u}\n" for u in lines) + _OPTIONS


def _usage(progname: str, problem: str) -> int:
    """What is wrong, in one line, then the usage; on stderr, exit 1."""
    sys.stderr.write(f"{progname}: {problem}\n{_usage_text(progname)}")
    return 1


def _help(progname: str) -> int:
    # On stdout, so that `pizauth --help | less` works.
    return _out(_usage_text(progname).encode("utf-8", errors="replace"))


def _fatal(msg: str) -> int:
    """A start-up error: printed raw, no «ERROR - » prefix."""
    sys.stderr.write(msg + "\n")
    return 1


def _log_error(msg: str) -> int:
    """A client error, in the original's stderr-logger format; red only on a terminal."""
    err = sys.stderr
    if err is None:
        return 1
    line = f"ERROR - {msg}"
    if err.isatty():
        line = f"\x1b[31m{line}\x1b[0m"
    err.write(line + "\n")
    return 1


def _out(data: bytes) -> int:
    """Write `data` to stdout; 1 if that fails (e.g. the reader has gone away)."""
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError:
        # Point fd 1 at /dev/null so the interpreter's final flush of the unwritten
        # data does not print a traceback-like complaint at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    return 0


# ---------------------------------------------------------------------------------------
# Option parsing: Rust `getopts` semantics ("floating frees"), as the original used.

_FLAG = 0  # may be given at most once
_MULTI = 1  # may be repeated (-v)
_MAYBE = 2  # optional argument (-c): -cPATH, -c PATH, --config=PATH

# short name -> (long name or "", kind); every command accepts these two.
_COMMON: dict[str, tuple[str, int]] = {"h": ("help", _FLAG), "v": ("verbose", _MULTI)}
_SHOW_OPTS = {"u": ("", _FLAG)}
_INFO_OPTS = {"c": ("config", _MAYBE), "j": ("", _FLAG)}
_SERVER_OPTS = {"c": ("config", _MAYBE), "d": ("", _FLAG)}


def _is_option(arg: str) -> bool:
    # As getopts: "-" alone is a positional argument.
    return len(arg) > 1 and arg[0] == "-"


def _parse(
    args: list[str], extra: dict[str, tuple[str, int]] | None = None
) -> tuple[dict[str, list[str | None]], list[str]]:
    """Parse `args` getopts-style into ({short name: [value or None, ...]}, positionals).

    Options and positionals may be mixed; short flags group (`-dv`); an option taking an
    optional argument consumes the rest of its group (`-cPATH`) or else the next word
    unless that looks like an option (`-c PATH`), but a long one only takes `=VALUE`
    (`--config PATH` leaves PATH positional); `--` ends options. Raises _UsageError for
    an unknown option, an argument to a flag (`--help=x`) or a repeated non-`-v` option.
    """
    spec = dict(_COMMON)
    if extra:
        spec.update(extra)
    longs = {long: short for short, (long, _) in spec.items() if long}
    found: dict[str, list[str | None]] = {}
    free: list[str] = []
    i = 0
    while i < len(args):
        cur = args[i]
        i += 1
        if not _is_option(cur):
            free.append(cur)
            continue
        if cur == "--":
            free.extend(args[i:])
            break
        inline: str | None = None  # text attached to the option (--x=VAL, -cVAL)
        if cur[1] == "-":
            name, eq, value = cur[2:].partition("=")
            if eq:
                inline = value
            # getopts reads a one-letter long name as the short option: --v is -v.
            short = name if len(name) == 1 else longs.get(name, "")
            if short not in spec:
                raise _UsageError(f"unknown option '{shown(cur.partition('=')[0])}'")
            names = [short]
            was_long = True
        else:
            names = []
            for j in range(1, len(cur)):
                ch = cur[j]
                if ch not in spec:
                    raise _UsageError(f"unknown option '-{shown(ch)}'")
                names.append(ch)
                if spec[ch][1] == _MAYBE and j + 1 < len(cur):
                    inline = cur[j + 1 :]
                    break
            was_long = False
        for pos, name in enumerate(names, start=1):
            val: str | None = None
            if spec[name][1] == _MAYBE:
                if inline is not None:
                    val, inline = inline, None
                elif not was_long and pos == len(names) and i < len(args):
                    if not _is_option(args[i]):
                        val = args[i]
                        i += 1
            elif pos == len(names) and inline is not None:
                raise _UsageError(f"option '{_option_name(name, spec)}' takes no value")
            found.setdefault(name, []).append(val)
    for name, vals in found.items():
        if spec[name][1] != _MULTI and len(vals) > 1:
            raise _UsageError(f"option '{_option_name(name, spec)}' given more than once")
    if "h" in found:
        raise _Help
    return found, free


def _option_name(short: str, spec: dict[str, tuple[str, int]]) -> str:
    long = spec[short][0]
    return f"-{short}" + (f"/--{long}" if long else "")


def _check(free: list[str], wanted: tuple[str, ...] = ()) -> None:
    """Exactly the positional arguments named in `wanted`, or a _UsageError."""
    if len(free) < len(wanted):
        raise _UsageError(f"missing {wanted[len(free)]}")
    if len(free) > len(wanted):
        raise _UsageError(f"unexpected argument '{shown(free[len(wanted)])}'")


def _config_opt(found: dict[str, list[str | None]]) -> str | None:
    """The `-c` value, or None if `-c` was not given.

    A `-c` without a path (bare at the end, followed by another option, `--config`
    without `=`, or an empty path) is a usage error: the original silently used the
    default file instead, which hides typos (docs/compatibility.md "Config option without a path").
    """
    vals = found.get("c")
    if vals is None:
        return None
    if not vals[0]:
        raise _UsageError("option '-c/--config' needs a path: -c PATH or --config=PATH")
    return vals[0]


# ---------------------------------------------------------------------------------------
# Commands. Each takes the context and the arguments after the command name, and
# returns the exit status.


def _ask(call: Callable[[ModuleType], bytes | None], newline: bool = False) -> int:
    """Run `call` with the client module: its bytes go to stdout (with a newline if
    asked), a client error to stderr as «ERROR - …»."""
    from pizauth import client

    try:
        out = call(client)
    except client.ClientError as e:
        return _log_error(str(e))
    if out is None:
        return 0
    return _out(out + b"\n" if newline else out)


def _cmd_show(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args, _SHOW_OPTS)
    _check(free, ("account name",))
    return _ask(lambda c: c.show_token(ctx.sock, free[0], with_url="u" not in found), True)


def finish_show(outcome: bytes | ExchangeFailed, sock: bytes) -> int:
    """Report a `show` reply other than a token, or a failed exchange, that the lean path
    (pizauth.fastshow) received on the socket at `sock`: the same output and exit status
    as `_cmd_show`."""
    return _ask(lambda c: c.show_result(outcome, os.fsdecode(sock)), True)


def _cmd_login(ctx: _Ctx, args: list[str]) -> int:
    """The login URL alone on stdout, for a browser or a clipboard (`| wl-copy`), starting
    a login if none is under way; a device login's code and the last error on stderr."""
    found, free = _parse(args)
    _check(free, ("account name",))
    from pizauth import client

    try:
        pending = client.login(ctx.sock, free[0])
    except client.ClientError as e:
        return _log_error(str(e))
    if pending is None:
        sys.stderr.write(
            f"{ctx.progname}: {shown(free[0])} already has an access token: no login needed"
            f" ('{ctx.progname} revoke {shown(free[0])}' forgets it)\n"
        )
        return 0
    url, code, last_error = pending
    if code:
        sys.stderr.write(f"Enter the code {code.decode(errors='replace')} at this URL\n")
    if last_error:
        sys.stderr.write(last_error.decode(errors="replace") + "\n")
    return _out(url + b"\n")


def _cmd_refresh(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args, _SHOW_OPTS)
    _check(free, ("account name",))
    return _ask(lambda c: c.refresh(ctx.sock, free[0], with_url="u" not in found))


def _cmd_revoke(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free, ("account name",))
    return _ask(lambda c: c.revoke(ctx.sock, free[0]))


def _cmd_reload(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free)
    return _ask(lambda c: c.reload(ctx.sock))


def _cmd_status(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free)
    return _ask(lambda c: c.status(ctx.sock), True)


def _cmd_shutdown(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free)
    return _ask(lambda c: c.shutdown(ctx.sock))


def _cmd_dump(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free)
    if sys.stdout is not None and sys.stdout.isatty():
        # Binary output would garble the terminal, and a dump holds secrets: refuse
        # before asking the server for it.
        # The example makes the file private: a plain `> file` would be readable by every
        # local user under the usual umask 022.
        return _log_error(
            "the dump is binary and holds secrets: redirect it to a file only you can read, "
            "for example: (umask 077; pizauth dump > pizauth.dump)"
        )
    return _ask(lambda c: c.dump(ctx.sock))  # raw bytes, no newline, as pizauth 1.1


def _cmd_restore(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free)
    # All of stdin first, then connect (as pizauth 1.1), so a slow producer (`age -d` asking
    # for a passphrase) holds no connection open.
    from pizauth.ipc import MAX_DUMP

    try:
        # Bounded: `pizauth restore < /dev/zero` must fail, not fill the memory.
        data = sys.stdin.buffer.read(MAX_DUMP + 1) if sys.stdin is not None else b""
    except OSError as e:
        return _log_error(paths.os_error_text(e))
    if len(data) > MAX_DUMP:
        return _log_error(
            f"Input too large: not a pizauth dump (a dump is at most {MAX_DUMP} bytes)"
        )
    return _ask(lambda c: c.restore(ctx.sock, data))


def _server_info(sock: str) -> dict | None:
    """The server's `info:` object, or None if no server gives a usable answer."""
    import json

    from pizauth import client

    try:
        reply = client.request(sock, b"info:")
        info = json.loads(reply)
    except client.Untrusted as e:
        # Whatever answers there is not our server: say so, and show no port or key of
        # its (a forged HTTPS key would vouch for another's listener).
        _log_error(str(e))
        return None
    except (client.ClientError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    # The human form prints these; anything else is not an answer from our server.
    for key in ("http_port", "https_port"):
        if not isinstance(info.get(key), str):
            return None
    if not isinstance(info.get("https_pub_key", ""), str):
        return None
    return info


def _cmd_info(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args, _INFO_OPTS)
    explicit = _config_opt(found)
    _check(free)
    info = _server_info(ctx.sock)
    try:
        # Informational only: a missing default config file is no reason to fail;
        # show where it is expected (docs/compatibility.md "Info without a config file").
        conf = paths.config_path(explicit, must_exist=False)
    except paths.PathError as e:
        return _fatal(str(e))
    cache = paths.display_path(ctx.rundir)
    conf = paths.display_path(conf)
    if "j" in found:
        import json

        out: dict[str, object] = {
            "cache_directory": cache,
            "config_file": conf,
            "executed_as": ctx.progname,
            "info_format_version": 2,
            "pizauth_version": __version__,
            "server_running": info is not None,
        }
        if info is not None:
            out["server_info"] = info
        text = json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        text += "\n"
    else:
        text = (
            f"{ctx.progname} version {__version__}:\n"
            f"  cache directory: {cache}\n"
            f"  config file: {conf}\n"
        )
        if info is None:
            text += "server not running\n"
        else:
            text += f"server running:\n  HTTP port: {info['http_port']}\n"
            text += f"  HTTPS port: {info['https_port']}\n"
            if "https_pub_key" in info:
                text += f"  HTTPS public key: {info['https_pub_key']}\n"
            if isinstance(info.get("https_cert_sha256"), str):
                # The fingerprint browsers show (docs/compatibility.md "Certificate fingerprint")
                text += f"  HTTPS certificate SHA-256: {info['https_cert_sha256']}\n"
            if isinstance(info.get("token_store"), str):
                # Only when one is configured: otherwise the output is pizauth 1.1's.
                text += f"  token store: {info['token_store']}\n"
                if isinstance(info.get("token_store_error"), str):
                    text += f"  token store not opened: {info['token_store_error']}\n"
            text += _endpoints_text(info.get("endpoints"))
    return _out(text.encode("utf-8", errors="replace"))


# What `info` says of an account's endpoints, by the server's "resolved" word.
_RESOLVED = {"yes": "endpoints resolved", "no": "endpoints not resolved yet"}
_ENDPOINT_NAMES = ("auth_uri", "token_uri", "device_auth_uri", "revoke_uri")


def _endpoints_text(endpoints: object) -> str:
    """The lines for accounts with an issuer (none otherwise: then `info` is 1.1's)."""
    from pizauth.text import shown

    if not isinstance(endpoints, dict):
        return ""
    text = ""
    for name, found in sorted(endpoints.items()):
        if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
            continue
        resolved = found.get("resolved", "")
        state = _RESOLVED.get(resolved, f"endpoints not resolved: {found.get('error', '')}")
        issuer = found.get("issuer", "")
        text += f"  account {shown(name)} (issuer {shown(issuer, 4096)}): {shown(state, 1200)}\n"
        for key in _ENDPOINT_NAMES:
            if key in found:
                text += f"    {key}: {shown(found[key], 4096)}\n"
    return text


def _cmd_server(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args, _SERVER_OPTS)
    explicit = _config_opt(found)
    _check(free)
    from pizauth.server import main as server_main

    return server_main(explicit, "d" in found, len(found.get("v", ())), ctx.progname)


def _cmd_systemd_unit(ctx: _Ctx, args: list[str]) -> int:
    found, free = _parse(args)
    _check(free)
    from pizauth import unit

    return unit.main(ctx.argv0)


_COMMANDS = {
    "dump": _cmd_dump,
    "info": _cmd_info,
    "login": _cmd_login,
    "refresh": _cmd_refresh,
    "reload": _cmd_reload,
    "restore": _cmd_restore,
    "revoke": _cmd_revoke,
    "server": _cmd_server,
    "show": _cmd_show,
    "shutdown": _cmd_shutdown,
    "status": _cmd_status,
    # Not in the original's usage lines: listed after them.
    "systemd-unit": _cmd_systemd_unit,
}


def main(argv: list[str] | None = None) -> int:
    """Run the `pizauth` command line `argv` (default sys.argv); return the exit status."""
    if argv is None:
        argv = sys.argv
    progname = _progname(argv[0] if argv else "")
    try:
        return _main(progname, argv)
    except KeyboardInterrupt:
        # Ctrl-C before a command has set up its own handling: no traceback.
        return 1


def _main(progname: str, argv: list[str]) -> int:
    if len(argv) < 2:
        return _usage(progname, "missing command")
    if argv[1] in ("-V", "--version", "-h", "--help"):
        # Ours, not the original's; they need no runtime directory.
        if len(argv) > 2:
            return _usage(progname, f"'{argv[1]}' takes no arguments")
        if argv[1] in ("-h", "--help"):
            return _help(progname)
        return _out(f"{progname} {__version__}\n".encode())
    # The runtime directory is prepared before dispatch, even for an unknown command,
    # as the original does.
    try:
        rundir = paths.runtime_dir()
    except paths.PathError as e:
        return _fatal(str(e))
    cmd = _COMMANDS.get(argv[1])
    if cmd is None:
        return _usage(progname, f"unknown command '{shown(argv[1])}'")
    try:
        return cmd(_Ctx(argv[0], progname, rundir), argv[2:])
    except _UsageError as e:
        return _usage(progname, str(e))
    except _Help:
        return _help(progname)


if __name__ == "__main__":
    # `python -m pizauth.cli`: argv[0] is the path of this file, not a program name.
    sys.exit(main(["pizauth", *sys.argv[1:]]))
