"""The `pizauth` command line: parsing, usage, requests sent and replies interpreted
(pizauth 1.1's command line and socket protocol). Most tests run the CLI in a subprocess
against a scripted fake server."""

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import pytest

from pizauth import cli, client

REPO = Path(__file__).resolve().parent.parent

USAGE = """Usage:
  pizauth dump
  pizauth info [-j]
  pizauth refresh [-u] <account>
  pizauth restore
  pizauth reload
  pizauth revoke <account>
  pizauth server [-c <config-path>] [-dv]
  pizauth show [-u] <account>
  pizauth shutdown
  pizauth status
  pizauth login <account>
  pizauth systemd-unit
  pizauth -V | --version
  pizauth -h | --help
Options:
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


def usage_error(problem: str, progname: str = "pizauth") -> str:
    """A bad command line's stderr: what is wrong, in one line, then the usage."""
    return f"{progname}: {problem}\n" + USAGE.replace("pizauth ", f"{progname} ")


NOT_RUNNING = "pizauth authenticator not running or not responding"


class Env:
    """A scratch directory: runtime dir `rt`, home `home`, and a subprocess runner."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rt = root / "rt"
        self.rundir = self.rt / "pizauth"
        self.sock = self.rundir / "pizauth.sock"
        self.home = root / "home"
        self.home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        self.env.update(XDG_RUNTIME_DIR=str(self.rt), HOME=str(self.home))
        # pizauth 1.1's line, then the socket tried.
        self.not_running = f"ERROR - {NOT_RUNNING} (socket: {self.sock})\n"

    def run(self, *args, env=None, **kw) -> subprocess.CompletedProcess:
        full_env = dict(self.env, **(env or {}))
        return subprocess.run(
            [sys.executable, "-m", "pizauth.cli", *args],
            env=full_env,
            cwd=REPO,
            capture_output=True,
            timeout=20,
            **kw,
        )

    def server(self, reply: bytes | None = b"", delay: float = 0.0) -> "FakeServer":
        self.rundir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.rt, 0o700)
        os.chmod(self.rundir, 0o700)
        self.sock.unlink(missing_ok=True)
        return FakeServer(str(self.sock), reply, delay)


class FakeServer:
    """Answers one connection: reads the request until EOF, records it, waits `delay`
    (cut short by finish()), writes `reply` (nothing if None) and closes."""

    def __init__(self, path: str, reply: bytes | None, delay: float) -> None:
        self.reply = reply
        self.delay = delay
        self.request: bytes | None = None
        self.done = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(20)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            self.request = bytes(data)
            self.done.wait(self.delay)
            if self.reply is not None:
                try:
                    conn.sendall(self.reply)
                except OSError:  # the client gave up waiting
                    pass

    def finish(self) -> bytes | None:
        self.done.set()
        self.thread.join(20)
        self.listener.close()
        return self.request


@pytest.fixture
def e():
    # Not tmp_path: AF_UNIX paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="pz", dir="/tmp"))
    try:
        yield Env(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def inproc(e, monkeypatch):
    """Run cli.main() in this process with e's environment."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(e.rt))
    monkeypatch.setenv("HOME", str(e.home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return e


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# -- usage -----------------------------------------------------------------------------


def test_no_arguments_usage_before_anything(e):
    r = e.run()
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", usage_error("missing command"))
    assert not e.rt.exists()


def test_unknown_command_usage_after_runtime_dir(e):
    r = e.run("bogus")
    expected = usage_error("unknown command 'bogus'")
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", expected)
    assert mode(e.rt) == 0o700
    assert mode(e.rundir) == 0o700


@pytest.mark.parametrize(
    "args", [["-h"], ["--help"], ["show", "-h", "acct"], ["server", "--help"], ["info", "-jh"]]
)
def test_help_is_usage_on_stdout(e, args):
    # On stdout with status 0, so that `pizauth --help | less` shows it.
    r = e.run(*args)
    assert (r.returncode, r.stdout.decode(), r.stderr) == (0, USAGE, b"")


def test_usage_names_every_option_the_parser_accepts():
    for spec in (cli._COMMON, cli._SHOW_OPTS, cli._INFO_OPTS, cli._SERVER_OPTS):
        for short, (long, _) in spec.items():
            assert f"  -{short}" in USAGE, short
            if long:
                assert f"--{long}" in USAGE, long
    assert "--config=<config-path>" in USAGE and "-V | --version" in USAGE


def test_progname_in_usage(e):
    script = Path(sys.executable).parent / "pizauth"
    if not script.exists():
        pytest.skip("console script not installed")
    link = e.root / "mypizauth"
    link.symlink_to(script)
    r = subprocess.run([str(link), "status", "-x"], env=e.env, capture_output=True, timeout=20)
    assert r.returncode == 1
    assert r.stderr.decode() == usage_error("unknown option '-x'", "mypizauth")


CONFIG_NEEDS_PATH = "option '-c/--config' needs a path: -c PATH or --config=PATH"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["show"], "missing account name"),
        (["show", "a", "b"], "unexpected argument 'b'"),
        (["show", "-x", "a"], "unknown option '-x'"),
        (["show", "-u", "-u", "a"], "option '-u' given more than once"),
        (["show", "-uu", "a"], "option '-u' given more than once"),
        (["show", "-uj", "a"], "unknown option '-j'"),
        (["show", "--bogus", "a"], "unknown option '--bogus'"),
        (["show", "--u=1", "a"], "option '-u' takes no value"),
        (["show", "--", "a", "b"], "unexpected argument 'b'"),
        (["show", "-u"], "missing account name"),
        (["refresh"], "missing account name"),
        (["refresh", "-c", "a"], "unknown option '-c'"),
        (["revoke"], "missing account name"),
        (["revoke", "-u", "a"], "unknown option '-u'"),
        (["revoke", "a", "b"], "unexpected argument 'b'"),
        (["status", "x"], "unexpected argument 'x'"),
        (["status", "-"], "unexpected argument '-'"),
        (["status", "--", "-v"], "unexpected argument '-v'"),
        (["status", "--verbose=2"], "option '-v/--verbose' takes no value"),
        (["status", "-j"], "unknown option '-j'"),
        (["reload", "-d"], "unknown option '-d'"),
        (["shutdown", "now"], "unexpected argument 'now'"),
        (["dump", "x"], "unexpected argument 'x'"),
        (["restore", "-"], "unexpected argument '-'"),
        (["info", "x"], "unexpected argument 'x'"),
        (["info", "-j", "-j"], "option '-j' given more than once"),
        (["info", "-u"], "unknown option '-u'"),
        (
            ["info", "-c"],
            CONFIG_NEEDS_PATH,
        ),  # bare -c: docs/compatibility.md "Config option without a path"
        (["info", "-c", "-j"], CONFIG_NEEDS_PATH),
        (["info", "--config"], CONFIG_NEEDS_PATH),
        (["info", "--config="], CONFIG_NEEDS_PATH),
        (
            ["info", "--config", "x.conf"],
            CONFIG_NEEDS_PATH,
        ),  # x.conf becomes a positional
        (["info", "-c", "a", "-c", "b"], "option '-c/--config' given more than once"),
        (["server", "-c"], CONFIG_NEEDS_PATH),
        (["server", "-dc"], CONFIG_NEEDS_PATH),
        (["server", "x"], "unexpected argument 'x'"),
        (["server", "-d", "-d"], "option '-d' given more than once"),
        (["server", "-j"], "unknown option '-j'"),
        (
            ["server", "--config", "x.conf"],
            CONFIG_NEEDS_PATH,
        ),
    ],
)
def test_usage(inproc, capsys, args, problem):
    assert cli.main(["pizauth", *args]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", usage_error(problem))


def test_argv_fallbacks(inproc, capsys):
    assert cli.main([]) == 1
    assert capsys.readouterr().err == usage_error("missing command")
    assert cli.main(["/usr/local/bin/pz"]) == 1
    assert capsys.readouterr().err == usage_error("missing command", "pz")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["-x"], "unknown command '-x'"),
        (["a" * 100], f"unknown command '{'a' * 64}…'"),  # a long word is cut
        (["\x1b[2J"], "unknown command '\\x1b[2J'"),  # a terminal escape is shown, not sent
        (["show", "-\x1b"], "unknown option '-\\x1b'"),
        (["--help", "show"], "'--help' takes no arguments"),
    ],
)
def test_usage_error_says_what_is_wrong(e, args, problem):
    r = e.run(*args)
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", usage_error(problem))


# -- the runtime directory -------------------------------------------------------------


def test_runtime_dir_error_is_raw(e):
    r = e.run("show", "acct", env={"XDG_RUNTIME_DIR": str(e.root / "no" / "rt")})
    assert r.returncode == 1
    assert r.stderr.decode() == "Can't create cache dir: No such file or directory (os error 2)\n"
    assert r.stdout == b""


def test_empty_xdg_runtime_dir_uses_tmpdir(e):
    r = e.run("bogus", env={"XDG_RUNTIME_DIR": "", "TMPDIR": str(e.root)})
    assert r.returncode == 1
    (made,) = e.root.glob("runtime-*")
    assert mode(made) == 0o700
    assert mode(made / "pizauth") == 0o700


# -- no server -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["show", "acct"],
        ["show", "-u", "acct"],
        ["refresh", "acct"],
        ["revoke", "acct"],
        ["status"],
        ["reload"],
        ["shutdown"],
    ],
)
def test_not_running(e, args):
    r = e.run(*args)
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", e.not_running)


def test_stale_socket_is_not_running(e):
    e.rundir.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(e.sock))
    s.close()  # the file stays, nobody listens
    r = e.run("status", "-v")
    assert (r.returncode, r.stderr.decode()) == (1, e.not_running)


# -- requests and replies --------------------------------------------------------------

ACCESS = "Access token unavailable until authorised"


def err(msg: str) -> str:
    return f"ERROR - {msg}\n"


def bad(reply: str) -> str:
    return err(f"Malformed response '{reply}'")


CASES = [
    # args, reply, request expected, exit, stdout, stderr
    (["show", "acct"], b"access_token:tok", b"showtoken:withurl acct", 0, "tok\n", ""),
    (["show", "acct"], b"access_token:a:b", b"showtoken:withurl acct", 0, "a:b\n", ""),
    (["show", "acct"], b"access_token:", b"showtoken:withurl acct", 0, "\n", ""),
    (["show", "-u", "acct"], b"access_token:t", b"showtoken:withouturl acct", 0, "t\n", ""),
    (["show", "acct", "-u"], b"access_token:t", b"showtoken:withouturl acct", 0, "t\n", ""),
    (["show", "-vu", "acct"], b"access_token:t", b"showtoken:withouturl acct", 0, "t\n", ""),
    (["show", "-uvvv", "a"], b"access_token:t", b"showtoken:withouturl a", 0, "t\n", ""),
    (["show", "--u", "a"], b"access_token:t", b"showtoken:withouturl a", 0, "t\n", ""),
    (["show", "--verbose", "a"], b"access_token:t", b"showtoken:withurl a", 0, "t\n", ""),
    (["show", "--", "-u"], b"access_token:t", b"showtoken:withurl -u", 0, "t\n", ""),
    (["show", "-u", "--", "-v"], b"access_token:t", b"showtoken:withouturl -v", 0, "t\n", ""),
    (["show", "-"], b"access_token:t", b"showtoken:withurl -", 0, "t\n", ""),
    (["show", "my acct:x"], b"access_token:t", b"showtoken:withurl my acct:x", 0, "t\n", ""),
    (
        ["show", "acct"],
        b"pending:http://127.0.0.1:1/authorize?a=b&c=d",
        b"showtoken:withurl acct",
        1,
        "",
        err(f"{ACCESS} with URL http://127.0.0.1:1/authorize?a=b&c=d"),
    ),
    # Gap 13: no dangling « with URL » when the server sends no URL.
    (["show", "-u", "acct"], b"pending:", b"showtoken:withouturl acct", 1, "", err(ACCESS)),
    (
        ["show", "acct"],
        b"error:No account 'acct'",
        b"showtoken:withurl acct",
        1,
        "",
        err("No account 'acct'"),
    ),
    (
        ["show", "acct"],
        b"error:Access token has expired. Refreshing initiated",
        b"showtoken:withurl acct",
        1,
        "",
        err("Access token has expired. Refreshing initiated"),
    ),
    (["show", "a"], b"", b"showtoken:withurl a", 1, "", bad("")),
    (["show", "a"], b"bogus", b"showtoken:withurl a", 1, "", bad("bogus")),
    (["show", "a"], b"ok:", b"showtoken:withurl a", 1, "", bad("ok:")),
    (
        ["show", "a"],
        b"access_token\xff",
        b"showtoken:withurl a",
        1,
        "",
        bad("access_token\ufffd"),
    ),
    (["refresh", "acct"], b"scheduled:", b"refresh:withurl acct", 0, "", ""),
    (["refresh", "-u", "a b"], b"scheduled:", b"refresh:withouturl a b", 0, "", ""),
    (
        ["refresh", "acct"],
        b"pending:http://x/",
        b"refresh:withurl acct",
        1,
        "",
        err(f"{ACCESS} with URL http://x/"),
    ),
    (["refresh", "-u", "a"], b"pending:", b"refresh:withouturl a", 1, "", err(ACCESS)),
    (["refresh", "a"], b"error:No account 'a'", b"refresh:withurl a", 1, "", err("No account 'a'")),
    (["refresh", "a"], b"scheduled:x", b"refresh:withurl a", 1, "", bad("scheduled:x")),
    (["refresh", "a"], b"access_token:t", b"refresh:withurl a", 1, "", bad("access_token:t")),
    (["revoke", "a b:c"], b"ok:", b"revoke:a b:c", 0, "", ""),
    (["revoke", "--", "--help"], b"ok:", b"revoke:--help", 0, "", ""),
    (["revoke", "a"], b"error:No account 'a'", b"revoke:a", 1, "", err("No account 'a'")),
    (["revoke", "a"], b"ok:x", b"revoke:a", 1, "", bad("ok:x")),
    (["revoke", "a"], b"ok", b"revoke:a", 1, "", bad("ok")),
    (["reload"], b"ok:", b"reload:", 0, "", ""),
    (["reload", "-vvvv"], b"ok:", b"reload:", 0, "", ""),
    (["reload"], b"error:line 1\nline 2", b"reload:", 1, "", err("line 1\nline 2")),
    (["reload"], b"pending:", b"reload:", 1, "", bad("pending:")),
    (
        ["status"],
        "ok:a: No access token\nb\u00e9: Active access token".encode(),
        b"status:",
        0,
        "a: No access token\nb\u00e9: Active access token\n",
        "",
    ),
    (["status"], b"ok:", b"status:", 0, "\n", ""),
    (["status"], b"error:No accounts configured", b"status:", 1, "", err("No accounts configured")),
    (["status"], b"status", b"status:", 1, "", bad("status")),
    (["shutdown"], None, b"shutdown:", 0, "", ""),
    (["shutdown"], b"ok:", b"shutdown:", 0, "", ""),
    (["shutdown", "-v"], b"garbage", b"shutdown:", 0, "", ""),
]


@pytest.mark.parametrize("args,reply,sent,code,out,err", CASES)
def test_request_and_reply(e, args, reply, sent, code, out, err):
    srv = e.server(reply)
    r = e.run(*args)
    assert srv.finish() == sent
    assert (r.returncode, r.stdout.decode(), r.stderr.decode()) == (code, out, err)


def test_undecodable_account_name_passes_through(e):
    srv = e.server(b"access_token:t")
    r = subprocess.run(
        [sys.executable, "-m", "pizauth.cli", "show", b"caf\xe9"],
        env=e.env,
        cwd=REPO,
        capture_output=True,
        timeout=20,
    )
    assert srv.finish() == b"showtoken:withurl caf\xe9"
    assert r.returncode == 0


def test_token_is_written_raw(e):
    srv = e.server(b"access_token:\xe2\x82\xac")
    r = e.run("show", "a", env={"LC_ALL": "C", "PYTHONIOENCODING": "ascii"})
    srv.finish()
    assert (r.returncode, r.stdout) == (0, b"\xe2\x82\xac\n")


def test_closed_stdout(e):
    srv = e.server(b"access_token:tok")
    rd, wr = os.pipe()
    os.close(rd)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pizauth.cli", "show", "a"],
            env=e.env,
            cwd=REPO,
            stdout=wr,
            stderr=subprocess.PIPE,
            timeout=20,
        )
    finally:
        os.close(wr)
    srv.finish()
    assert (r.returncode, r.stderr) == (1, b"")


def test_shutdown_waits_for_the_server_to_close(e):
    srv = e.server(None, delay=0.5)
    start = time.monotonic()
    r = e.run("shutdown")
    elapsed = time.monotonic() - start
    assert srv.finish() == b"shutdown:"
    assert r.returncode == 0
    assert elapsed >= 0.45


def test_error_is_red_on_a_terminal(inproc, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(["pizauth", "status"]) == 1
    assert err.getvalue() == "\x1b[31m" + inproc.not_running[:-1] + "\x1b[0m\n"


# -- dump and restore ------------------------------------------------------------------

DUMP = b"\x00\xffnonce-bytes\n\r:error:binary"  # any bytes at all, even a newline


@pytest.mark.parametrize("reply", [DUMP, b"", b"ok:x"])
def test_dump_copies_the_reply_to_stdout(e, reply):
    srv = e.server(reply)
    r = e.run("dump")
    assert srv.finish() == b"dump:"
    # As pizauth 1.1: raw bytes, no newline added; an empty reply is an empty dump, exit 0.
    assert (r.returncode, r.stdout, r.stderr) == (0, reply, b"")


def test_dump_error_reply_writes_nothing(e):
    # `pizauth dump > file` must not replace a good dump with an error text.
    srv = e.server(b"error:pizauth server did not answer in time")
    r = e.run("dump")
    srv.finish()
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode() == err("pizauth server did not answer in time")


def test_dump_and_restore_not_running(e):
    r = e.run("dump")
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", e.not_running)
    r = e.run("restore", input=DUMP)
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", e.not_running)


@pytest.mark.parametrize("data", [DUMP, b"", bytes(range(256)) * 300])
def test_restore_sends_all_of_stdin(e, data):
    srv = e.server(b"ok:")
    r = e.run("restore", input=data)
    assert srv.finish() == b"restore:" + data
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


@pytest.mark.parametrize(
    "reply, stderr",
    [
        (b"error:Restoring dump failed", err("Restoring dump failed")),
        (b"error:Unknown dump version", err("Unknown dump version")),
        (b"ok:x", bad("ok:x")),
        (b"", bad("")),
    ],
)
def test_restore_replies(e, reply, stderr):
    srv = e.server(reply)
    r = e.run("restore", input=DUMP)
    srv.finish()
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", stderr)


def test_restore_reads_stdin_before_connecting(e):
    # No server yet: a client that connected before reading stdin would fail at once.
    e.rundir.mkdir(parents=True)
    p = subprocess.Popen(
        [sys.executable, "-m", "pizauth.cli", "restore"],
        env=e.env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        p.stdin.write(DUMP[:5])
        p.stdin.flush()
        # A negative cannot be waited for: give a wrong client half a second to fail.
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=0.5)
        srv = e.server(b"ok:")
        p.stdin.write(DUMP[5:])
        p.stdin.close()
        code = p.wait(timeout=20)
        out, error = p.stdout.read(), p.stderr.read()
    finally:
        p.kill()
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()
    assert srv.finish() == b"restore:" + DUMP
    assert (code, out, error) == (0, b"", b"")


# -- info ------------------------------------------------------------------------------


def human(e, conf: str, server: str = "server not running\n") -> str:
    return (
        f"pizauth version 1.1.0:\n  cache directory: {e.rundir}\n  config file: {conf}\n" + server
    )


def test_info_no_server(e):
    r = e.run("info", "-c", "my.conf")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.decode() == human(e, "my.conf")


@pytest.mark.parametrize("opt", [["-cmy.conf"], ["--config=my.conf"], ["-vc", "my.conf"]])
def test_info_config_option_forms(e, opt):
    r = e.run("info", *opt)
    assert r.stdout.decode() == human(e, "my.conf")


def test_info_json_no_server(e):
    r = e.run("info", "-j", "-c", "x")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.decode() == (
        f'{{"cache_directory":"{e.rundir}","config_file":"x","executed_as":"pizauth",'
        '"info_format_version":2,"pizauth_version":"1.1.0","server_running":false}\n'
    )


def test_info_with_server(e):
    srv = e.server(b'{"https_port":"none","http_port":"41321"}')
    r = e.run("info", "-c", "x")
    assert srv.finish() == b"info:"
    assert r.returncode == 0
    assert r.stdout.decode() == human(
        e, "x", "server running:\n  HTTP port: 41321\n  HTTPS port: none\n"
    )


def test_info_with_https(e):
    srv = e.server(b'{"http_port":"1","https_port":"2","https_pub_key":"04:8A:1F"}')
    r = e.run("info", "-c", "x")
    srv.finish()
    assert r.stdout.decode() == human(
        e,
        "x",
        "server running:\n  HTTP port: 1\n  HTTPS port: 2\n  HTTPS public key: 04:8A:1F\n",
    )


def test_info_with_https_fingerprint(e):
    srv = e.server(
        b'{"http_port":"1","https_port":"2","https_pub_key":"04:8A:1F","https_cert_sha256":"AB:CD"}'
    )
    r = e.run("info", "-c", "x")
    srv.finish()
    assert r.stdout.decode() == human(
        e,
        "x",
        "server running:\n  HTTP port: 1\n  HTTPS port: 2\n  HTTPS public key: 04:8A:1F\n"
        "  HTTPS certificate SHA-256: AB:CD\n",
    )


def test_info_json_with_server(e):
    srv = e.server(b'{"https_pub_key":"04:AB","https_port":"2","http_port":"1"}')
    r = e.run("info", "-j", "-c", "x")
    srv.finish()
    assert r.returncode == 0
    line = r.stdout.decode()
    assert line == (
        f'{{"cache_directory":"{e.rundir}","config_file":"x","executed_as":"pizauth",'
        '"info_format_version":2,"pizauth_version":"1.1.0","server_info":'
        '{"http_port":"1","https_port":"2","https_pub_key":"04:AB"},"server_running":true}\n'
    )
    assert json.loads(line)["server_running"] is True


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"http_port": 1, "https_port": "none"}',
        b'{"http_port": "1"}',
        b'{"http_port": "1", "https_port": "2", "https_pub_key": null}',
        b"\xff",
    ],
)
def test_info_bad_reply_is_not_running(e, reply):
    srv = e.server(reply)
    r = e.run("info", "-c", "x")
    srv.finish()
    assert (r.returncode, r.stdout.decode()) == (0, human(e, "x"))


def test_info_default_config(e):
    conf = e.home / ".config" / "pizauth.conf"
    # Missing: shown where it is expected, no failure
    # (docs/compatibility.md "Info without a config file").
    r = e.run("info")
    assert (r.returncode, r.stdout.decode(), r.stderr) == (0, human(e, str(conf)), b"")
    xdg = e.root / "xdg"
    r = e.run("info", env={"XDG_CONFIG_HOME": str(xdg)})
    assert r.stdout.decode() == human(e, f"{xdg}/pizauth.conf")
    # Present under $HOME only: that is the file in use.
    conf.parent.mkdir()
    conf.write_text("")
    r = e.run("info", env={"XDG_CONFIG_HOME": str(xdg)})
    assert r.stdout.decode() == human(e, str(conf))


def test_info_neither_home_nor_xdg(e):
    import pwd

    env = dict(e.env)
    env.pop("HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    r = subprocess.run(
        [sys.executable, "-m", "pizauth.cli", "info"],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=20,
    )
    # The home directory comes from the password database then.
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.decode() == human(e, f"{home}/.config/pizauth.conf")


# -- server dispatch -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], (None, False, 0)),
        (["-d"], (None, True, 0)),
        (["-dv", "-v"], (None, True, 2)),
        (["-vvvv"], (None, False, 4)),
        (["-c", "a.conf"], ("a.conf", False, 0)),
        (["-ca.conf", "-d"], ("a.conf", True, 0)),
        (["-dca.conf"], ("a.conf", True, 0)),
        (["-dc", "a.conf"], ("a.conf", True, 0)),
        (["--config=a=b.conf", "--verbose"], ("a=b.conf", False, 1)),
        (["-c", "-"], ("-", False, 0)),
    ],
)
def test_server_dispatch(inproc, monkeypatch, args, expected):
    calls = []

    def fake_main(explicit, foreground, verbosity, progname):
        calls.append((explicit, foreground, verbosity, progname))
        return 7

    monkeypatch.setitem(sys.modules, "pizauth.server", types.SimpleNamespace(main=fake_main))
    assert cli.main(["/bin/pz", "server", *args]) == 7
    assert calls == [(*expected, "pz")]


# -- the client module directly --------------------------------------------------------


def test_request_timeout(e):
    srv = e.server(b"late", delay=10)
    start = time.monotonic()
    with pytest.raises(client.ClientError) as exc:
        client.request(str(e.sock), b"status:", timeout=0.3)
    assert str(exc.value) == f"{NOT_RUNNING} (socket: {e.sock})"
    assert time.monotonic() - start < 1.5
    srv.finish()


def test_shutdown_ignores_timeout(e):
    srv = e.server(None, delay=10)
    assert client.shutdown(str(e.sock), timeout=0.3) is None
    srv.finish()


def test_dump_and_restore_requests(e):
    srv = e.server(b"\x00binary\xff")
    assert client.dump(str(e.sock)) == b"\x00binary\xff"
    assert srv.finish() == b"dump:"
    srv = e.server(b"ok:")
    client.restore(str(e.sock), b"\x01\x02")
    assert srv.finish() == b"restore:\x01\x02"
    srv = e.server(b"error:Unknown dump version")
    with pytest.raises(client.ClientError, match="^Unknown dump version$"):
        client.restore(str(e.sock), b"")
    srv.finish()


# -- the `show` path stays lean --------------------------------------------------------


def test_show_imports_only_what_it_needs(e):
    code = (
        "import sys; sys.stderr.write('@@start\\n'); sys.stderr.flush(); "
        "from pizauth.cli import main; sys.argv=['pizauth','show','x']; main()"
    )
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=e.env,
        cwd=REPO,
        capture_output=True,
        timeout=20,
    )
    lines = r.stderr.decode().splitlines()
    assert e.not_running.strip() in lines  # it did run
    # Modules imported by site (e.g. .pth hooks of the venv) are not ours to judge.
    ours = lines[lines.index("@@start") + 1 :]
    imported = {ln.split("|")[-1].strip() for ln in ours if ln.startswith("import time:")}
    imported.discard("imported package")
    assert imported, r.stderr.decode()
    ours_pkg = {
        "pizauth",
        "pizauth.cli",
        "pizauth.client",
        "pizauth.control",
        "pizauth.fastshow",
        "pizauth.paths",
        "pizauth.timeouts",
    }
    outside = {
        m
        for m in imported
        if m not in ours_pkg and m.partition(".")[0] not in sys.stdlib_module_names
    }
    assert outside == set()
    assert {m for m in imported if m.startswith("pizauth")} <= ours_pkg
    for heavy in ("re", "json", "logging", "argparse", "getopt", "typing", "socket"):
        assert heavy not in imported, heavy


def test_client_waits_while_the_backlog_is_full(tmp_path, monkeypatch):
    """A burst of clients fills the server's backlog; `show` must wait, not give up."""
    path = str(tmp_path / "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(0)
    queued = []
    while True:  # fill the backlog until a connect with a timeout is refused at once
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(1)
        try:
            probe.connect(path)
        except BlockingIOError:
            probe.close()
            break
        queued.append(probe)
    retried = threading.Event()
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (retried.set(), real_sleep(s)))
    result: list[bytes] = []
    caller = threading.Thread(
        target=lambda: result.append(client.request(path, b"status:", timeout=10))
    )
    caller.start()
    assert retried.wait(10), "the client never met a full backlog"
    for q in queued:  # still in the backlog until accepted, but at end-of-file
        q.close()
    for _ in range(len(queued) + 1):  # the server catches up and answers everyone
        conn, _ = server.accept()
        conn.settimeout(10)
        request = b""
        while chunk := conn.recv(4096):  # up to the client's half-close
            request += chunk
        if request:  # the probes sent nothing
            conn.sendall(b"ok:fine")
        conn.close()
    caller.join(10)
    assert result == [b"ok:fine"]
    server.close()
