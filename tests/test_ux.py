"""What the user sees when something goes wrong, driven through the installed command:
Ctrl-C, help and usage errors, dump to a terminal, restore and config errors,
long account names, and the README's getting-started pieces."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PIZAUTH, Pizauth, http_get, wait_for
from server_harness import ROOT, start_detached


def run_in_pty(argv: list[str], env: dict[str, str], cwd: Path, until=None, timeout=20.0):
    """Run `argv` as the foreground job of a new terminal; returns (status, output).

    `until(output)` is polled while the command runs; when it is true, Ctrl-C is typed.
    """
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    interrupted = until is None
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process holding the terminal has gone
                chunk = b""
            out += chunk
        if not interrupted and until(out):
            os.write(master, b"\x03")  # the terminal's interrupt character
            interrupted = True
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(master)
        pytest.fail(f"{argv} did not finish; output so far: {out!r}")
    # Whatever the children wrote after the parent ended.
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            chunk = os.read(master, 4096)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    os.close(master)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


# -- Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_stops_a_foreground_server_cleanly(pizauth: Pizauth) -> None:
    pizauth.write_config()
    ready = pizauth.tmp / "ready"
    status, out = run_in_pty(
        [PIZAUTH, "server", "-dvv", "-c", str(pizauth.conf)],
        pizauth.env,
        pizauth.tmp,
        until=lambda out: ready.exists(),
    )
    assert status == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "Error" not in out, out
    assert "pizauth shut down" in out, out  # the parent's orderly shutdown ran
    # Nothing of the server is left: the socket is gone, so a new one can start.
    assert not list((pizauth.tmp / "runtime" / "pizauth").glob("*.sock"))


# -- dump to a terminal ------------------------------------------------------------------


def test_dump_to_a_terminal_refuses(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    status, out = run_in_pty([PIZAUTH, "dump"], pizauth.env, pizauth.tmp)
    assert status == 1
    assert "redirect it to a file" in out and "ERROR - " in out
    assert pizauth.run("dump").stdout  # to a pipe it still works


def test_the_dump_advice_makes_a_file_only_the_user_can_read(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    status, out = run_in_pty([PIZAUTH, "dump"], pizauth.env, pizauth.tmp)
    assert status == 1
    # The example, as a user copies it from the terminal (red: ends before the colour reset).
    found = re.search(r"for example: (.+?)(?:\x1b\[0m)?\r?\n", out)
    assert found, out
    advice = found.group(1)
    # A shell with the usual umask, which leaves a new file readable by everyone.
    bindir = os.path.dirname(PIZAUTH)
    env = dict(pizauth.env, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        ["/bin/sh", "-c", f"umask 022; {advice}"],
        env=env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, b""), advice
    (made,) = [p for p in pizauth.tmp.iterdir() if "dump" in p.name]
    assert made.stat().st_size > 0  # the dump is in it...
    assert made.stat().st_mode & 0o077 == 0, oct(made.stat().st_mode)  # ...for the user alone
    # and a restore takes it back.
    restored = subprocess.run(
        ["/bin/sh", "-c", f"pizauth restore < {made.name}"],
        env=env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    assert (restored.returncode, restored.stderr) == (0, b"")


# -- the demo ------------------------------------------------------------------------------


def test_demo_runs_and_removes_its_directory() -> None:
    import tempfile

    # A short TMPDIR of its own: the control socket's path must fit in sun_path.
    with tempfile.TemporaryDirectory(prefix="pzt") as tmp:
        tmpdir = Path(tmp)
        result = run_demo(tmpdir)
        left = list(tmpdir.iterdir())
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"token valid at the provider: True" in result.stdout
    assert left == []  # no pizauth-demo-* left behind
    # Its pizauth.conf is private, as the README asks: no warning the user did not cause,
    # at start or in `status`.
    assert b"readable by others" not in result.stdout + result.stderr, result.stdout
    assert b"Warning" not in result.stdout and b"ERROR - /" not in result.stdout
    # The URL it opens is what `pizauth login` printed, alone on its line.
    assert re.search(
        rb"\$ pizauth login officesmtp\n  http://127\.0\.0\.1:\d+/authorize\?\S+\n", result.stdout
    )


def run_demo(tmpdir: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env={**os.environ, "TMPDIR": str(tmpdir)},
        capture_output=True,
        timeout=120,
    )


# -- configuration: readable secrets, errors that name the file ------------------------------

SECRET_WARNING = "holds a client_secret and is readable by others (mode 644)"


@pytest.mark.parametrize(
    "mode,secret,warned",
    [(0o644, True, True), (0o600, True, False), (0o644, False, False), (0o640, True, False)],
)
def test_readable_config_with_secret_warns_at_start(
    pizauth: Pizauth, mode: int, secret: bool, warned: bool
) -> None:
    block = pizauth.account_block()
    if not secret:
        block = "\n".join(line for line in block.splitlines() if "client_secret" not in line)
    pizauth.write_config(accounts=block)
    pizauth.conf.chmod(mode)
    result = start_detached(pizauth)
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    if mode == 0o640:  # group-readable is also readable by others than the user
        assert "holds a client_secret and is readable by others (mode 640)" in err
        return
    if warned:
        assert err == f"Warning: {pizauth.conf} {SECRET_WARNING}: run 'chmod 600 {pizauth.conf}'\n"
    else:
        assert err == ""


def test_readable_config_warning_reaches_the_foreground_log_once(pizauth: Pizauth) -> None:
    pizauth.write_config()
    pizauth.conf.chmod(0o644)
    pizauth.start()
    assert f"ERROR - {pizauth.conf} {SECRET_WARNING}" in pizauth.log()
    assert pizauth.log().count(SECRET_WARNING) == 1  # not printed a second time


def test_config_errors_name_the_file_and_hint(pizauth: Pizauth) -> None:
    bad = pizauth.tmp / "bad.conf"
    bad.write_text("# my pizauth configuration\n" + pizauth.account_block())
    result = pizauth.run("server", "-c", str(bad))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"{bad}: Parsing error at line 1 column 1. Expected 'account' or a global option, "
        "found '#' (comments start with //)\n"
    )
    bad.write_text('account "x" {\n  client_id = "a;\n  token_uri = "http://b/";\n}\n')
    result = pizauth.run("server", "-d", "-c", str(bad))
    assert result.returncode == 1
    assert result.stderr.decode().startswith(
        f"{bad}: Parsing error at line 2 column 15. A string starts here and runs on to line 3"
    )
    # An error that already names the file does not name it twice.
    result = pizauth.run("server", "-c", str(pizauth.tmp / "missing.conf"))
    assert result.stderr.decode().count("missing.conf") == 1


@pytest.mark.parametrize("key", ["http_listen", "https_listen"])
@pytest.mark.parametrize("port", ["80800", "65536", "99999999999999999999", "8o80", ""])
def test_listen_port_out_of_range_is_a_config_error(pizauth: Pizauth, key: str, port: str) -> None:
    # Before, 80800 listened on 15264 (80800 - 65536) and 65536 on a random port.
    other = "https_listen = none;" if key == "http_listen" else ""
    pizauth.conf.write_text(f'{key} = "127.0.0.1:{port}";\n{other}\n' + pizauth.account_block())
    pizauth.conf.chmod(0o600)
    result = pizauth.run("server", "-c", str(pizauth.conf))
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"{pizauth.conf}: Line 1, column {len(key) + 4}:\n"
        f'  {key} = "127.0.0.1:{port}";\n'
        f"Invalid {key} port '{port}' in '127.0.0.1:{port}': a port is 1 to 65535,"
        " or 0 for any free port\n"
    )
    assert not os.path.exists(pizauth.sock)


def test_listen_ports_at_the_ends_of_the_range_still_work(pizauth: Pizauth) -> None:
    # 0 is pizauth 1.1's "any free port" (the default); 65535 is the highest port, above
    # Linux's default range for ports picked at random, so free here.
    pizauth.write_config(https=True)
    pizauth.conf.write_text(
        pizauth.conf.read_text().replace(
            'http_listen = "127.0.0.1:0"', 'http_listen = "127.0.0.1:65535"'
        )
    )
    pizauth.start()
    info = json.loads(pizauth.run("info", "-j").stdout)["server_info"]
    assert info["http_port"] == "65535" and info["https_port"] not in ("0", "none")


def test_reload_with_an_out_of_range_port_fails_and_changes_nothing(pizauth: Pizauth) -> None:
    pizauth.start()
    before = pizauth.run("info", "-j").stdout
    pizauth.conf.write_text(pizauth.conf.read_text().replace("127.0.0.1:0", "127.0.0.1:70000"))
    result = pizauth.run("reload")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"ERROR - {pizauth.conf}: Line 1, column 15:\n"
        '  http_listen = "127.0.0.1:70000";\n'
        "Invalid http_listen port '70000' in '127.0.0.1:70000': a port is 1 to 65535,"
        " or 0 for any free port\n"
    )
    assert pizauth.run("info", "-j").stdout == before


@pytest.mark.parametrize(
    ("where", "line", "hint"),
    [
        ("account", '  scope = ["mail"];', ' (did you mean "scopes"?)'),
        ("account", '  clientid = "x";', ' (did you mean "client_id"?)'),
        (
            "account",
            "  http_listen = none;",
            " ('http_listen' is a global option: put it outside every account block)",
        ),
        ("global", 'auth_notfy_cmd = "x";', ' (did you mean "auth_notify_cmd"?)'),
        ("global", 'acount "x" {}', ' (did you mean "account"?)'),
        (
            "global",
            'scopes = ["mail"];',
            " ('scopes' is an account option: put it inside an account block)",
        ),
        (
            "global",
            'scope = ["mail"];',
            ' (did you mean "scopes"? It goes inside an account block)',
        ),
        ("global", "xyzzy = 1;", ""),
    ],
)
def test_unknown_option_suggests_the_closest_known_one(
    pizauth: Pizauth, where: str, line: str, hint: str
) -> None:
    if where == "account":
        pizauth.write_config(accounts=pizauth.account_block(extra=line.strip()))
    else:
        pizauth.write_config(globals_=line.strip())
    text = pizauth.conf.read_text().splitlines()
    number = next(i for i, x in enumerate(text, 1) if x.strip() == line.strip())
    column = text[number - 1].index(line.strip()) + 1
    found = line.strip().split()[0]
    expected = (
        "Expected an account option or '}'"
        if where == "account"
        else "Expected 'account' or a global option"
    )
    result = pizauth.run("server", "-c", str(pizauth.conf))
    assert result.returncode == 1
    # pizauth 1.1's message as before, with the hint after it.
    assert result.stderr.decode() == (
        f"{pizauth.conf}: Parsing error at line {number} column {column}. {expected}, "
        f"found '{found}'{hint}\n"
    )


def test_long_account_name_is_shortened_in_config_errors(pizauth: Pizauth) -> None:
    long = "n" * 5000
    pizauth.write_config(accounts=pizauth.account_block(long, 'redirect_uri = "https://x/";'))
    result = pizauth.run("server", "-c", str(pizauth.conf))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert f"Account {'n' * 64}… has an 'https' redirect" in err and long not in err


def test_info_without_home_or_xdg_config_home(pizauth: Pizauth) -> None:
    import pwd

    result = subprocess.run(
        ["env", "-u", "HOME", "-u", "XDG_CONFIG_HOME", PIZAUTH, "info"],
        env=pizauth.env,
        cwd=pizauth.tmp,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0 and result.stderr == b""
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert f"  config file: {home}/.config/pizauth.conf\n" in result.stdout.decode()


# -- pizauth login: the URL alone -------------------------------------------------------------


def test_login_prints_the_url_alone_and_it_logs_in(pizauth: Pizauth) -> None:
    pizauth.start()
    result = pizauth.run("login", "acct")
    assert result.returncode == 0 and result.stderr == b"", result
    url = result.stdout.decode()
    assert url.endswith("\n") and url.count("\n") == 1
    url = url[:-1]
    assert url.startswith(pizauth.provider.auth_uri + "?")
    # The login it started is the one `show` reports, and asking again starts no other.
    assert pizauth.auth_url() == url
    assert pizauth.run("login", "acct").stdout.decode() == url + "\n"
    # That URL, opened in a browser, logs in.
    status, headers, _ = http_get(url)
    assert status == 302
    status, _, _ = http_get(headers["location"])
    assert status == 200
    token = wait_for(lambda: pizauth.token("acct"), 15, "the token")
    # With a token, nothing to open: stdout stays empty (a `| wl-copy` copies nothing),
    # stderr says why, and the token is never printed.
    result = pizauth.run("login", "acct")
    assert result.returncode == 0 and result.stdout == b""
    assert result.stderr.decode() == (
        "pizauth: acct already has an access token: no login needed"
        " ('pizauth revoke acct' forgets it)\n"
    )
    assert token.encode() not in result.stderr


def test_login_errors_are_those_of_show(pizauth: Pizauth) -> None:
    assert pizauth.run("login", "acct").stderr == pizauth.show("acct").stderr  # not running
    pizauth.start()
    result = pizauth.run("login", "nope")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == "ERROR - No account 'nope'\n"
    usage = pizauth.run("login")
    assert usage.returncode == 1 and usage.stderr.startswith(b"pizauth: missing account name\n")


def test_login_shows_the_last_error_on_stderr(pizauth: Pizauth) -> None:
    pizauth.start()
    url = pizauth.run("login", "acct").stdout.decode().strip()
    status, headers, _ = http_get(url)
    # The provider refuses: the redirect carries error=access_denied.
    location = (
        headers["location"].split("?")[0]
        + "?error=access_denied&state="
        + (url.split("state=")[1].split("&")[0])
    )
    http_get(location)
    wait_for(lambda: "last error" in pizauth.run("status").stdout.decode(), 10, "the error")
    result = pizauth.run("login", "acct")
    assert result.returncode == 0
    assert result.stdout.decode().startswith(pizauth.provider.auth_uri + "?")
    assert result.stdout.decode().count("\n") == 1
    assert result.stderr.decode().startswith("Last error (")
    assert "access_denied" in result.stderr.decode()
