"""Every command README.md, docs/install.md, docs/development.md, docs/performance.md
and the man pages show, run as a user would type it, so that they stay true: the
installed `pizauth` against a real server and the local provider, the file recipes (man
pages, completions, the unit, age keys) in a home of their own, the by-hand age recipe
from `pizauth dump` to `pizauth restore`, and the demo provider's output.

The commands are taken from the documents themselves (the Markdown documents' ```sh
blocks and `$ ` lines, the man pages' literal blocks and .Dl lines), so a new example is
checked as soon as it is written: it must be run by one of the scenarios below or be in
NOT_RUN with the reason it cannot run here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, Client, Provider, http_get, wait_for
from server_harness import ROOT, free_port

BIN = Path(sys.executable).parent
# Markdown documents (their ```sh blocks and `$ ` lines), then the man pages.
MARKDOWN = ("README.md", "docs/install.md", "docs/development.md", "docs/performance.md")
MAN_PAGES = ("man/pizauth.1", "man/pizauth.conf.5")
DOCUMENTS = MARKDOWN + MAN_PAGES


@dataclass(frozen=True)
class Example:
    where: str
    command: str
    output: tuple[str, ...]  # what the document shows it printing (`$ ` examples only)


def examples() -> list[Example]:
    found: list[Example] = []
    for doc in MARKDOWN:
        text = (ROOT / doc).read_text()
        for lang, body in re.findall(r"^ *```([^\n]*)\n(.*?)^ *```$", text, re.M | re.S):
            found += _block(doc, body, lang.strip() == "sh")
    for page in MAN_PAGES:
        text = (ROOT / page).read_text()
        for body in re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", text, re.M | re.S):
            found += _block(page, body.replace("\\e", "\\"), False)
        # A display line that is a command (not mdoc macros such as `.Dl Ar name No = ...`).
        for line in re.findall(r"^\.Dl (.*)$", text, re.M):
            if not re.match(r"[A-Z][a-z]? ", line):
                found.append(Example(page, line, ()))
    return found


def _block(where: str, body: str, is_shell: bool) -> list[Example]:
    """A block with `$ ` lines holds those commands, each followed by its output; any
    other shell block is one command per line (`\\` continues one, `#` lines are comments)."""
    lines = body.splitlines()
    if any(line.lstrip().startswith("$ ") for line in lines):
        out: list[Example] = []
        for line in lines:
            if line.lstrip().startswith("$ "):
                out.append(Example(where, line.lstrip()[2:], ()))
            elif out:
                out[-1] = Example(where, out[-1].command, (*out[-1].output, line))
        return out
    if not is_shell:
        return []
    commands, current = [], ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.lstrip() if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        commands.append(Example(where, current.strip(), ()))
        current = ""
    return commands


# What each scenario below runs, by the command's text.
FILE_RECIPE = re.compile(r"^(install -Dm644 |mkdir -p |age-keygen |pizauth systemd-unit > )")
SERVER_COMMAND = re.compile(r"^pizauth (server|status|show|login|info)\b")
AGE_RESTORE = re.compile(r"^age -d -i \S+ \S+ \| pizauth restore$")
DEMO_PROVIDER = re.compile(r"^python3 examples/provider\.py --port \d+$")

TESTED_ELSEWHERE = "installs from the package registry and runs for minutes;"
STORE_RECIPE = "a token store recipe: tests/test_store_recipes.py runs it as a normal user"
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/python examples/demo.py": (
        f"{TESTED_ELSEWHERE} the demo itself runs in "
        "tests/test_ux.py::test_demo_runs_and_removes_its_directory"
    ),
    "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/pytest -n 4": (
        f"{TESTED_ELSEWHERE} it is how this suite is run"
    ),
    "pip install .            # into a venv, or: pipx install .": (
        f"{TESTED_ELSEWHERE} tests/test_packaging.py::"
        "test_pip_install_puts_man_pages_and_completions_in_the_venv does it"
    ),
    "python3 -m venv .venv && .venv/bin/pip install '.[test]'": TESTED_ELSEWHERE,
    ".venv/bin/pip install -q --no-deps . && rm -rf build   # again after each change to "
    "pizauth/, bin/, man/ or share/": "how this suite's venv is kept current; .ci/run installs",
    ".venv/bin/pytest -n 4       # everything, in parallel: about five minutes on 2 cores": (
        TESTED_ELSEWHERE
    ),
    ".venv/bin/ruff check .": "a development check, run by .ci/run",
    "systemctl --user daemon-reload && systemctl --user enable --now pizauth": (
        "needs a running systemd user manager; tests/test_packaging.py::"
        "test_installed_unit_passes_systemd_analyze_verify checks the unit"
    ),
    "systemctl --user daemon-reload": "needs a running systemd user manager",
    "systemctl --user enable --now pizauth": "needs a running systemd user manager",
    "systemctl --user enable --now pizauth.service": "needs a running systemd user manager",
    "systemctl --user reload pizauth.service": "needs a running systemd user manager",
    "(umask 077 && head -c 32 /dev/urandom | base64 > ~/.config/pizauth/store.key)": (STORE_RECIPE),
    'head -c 32 /dev/urandom | base64 | age -r "$(age-keygen -y ~/.config/pizauth/identity.txt)"'
    " -o ~/.config/pizauth/key.age": STORE_RECIPE,
    "(umask 077; pizauth dump > pizauth.dump)": (
        "the advice `pizauth dump` gives; tests/test_ux.py::"
        "test_the_dump_advice_makes_a_file_only_the_user_can_read runs it"
    ),
    "ERROR - pizauth authenticator not running or not responding (socket: PATH)": (
        "what a client prints, not a command; tests/test_client_checks.py checks it"
    ),
    "ssh -L 8765:127.0.0.1:8765 host     # then, in that session:": (
        "needs an ssh server on another machine; the `pizauth login` run inside the "
        "tunnel is run here"
    ),
    "python3 -m venv /tmp/v && /tmp/v/bin/pip install . && /tmp/v/bin/python "
    "benchmarks/run_all.py": f"{TESTED_ELSEWHERE} a benchmark",
    "/tmp/v/bin/python benchmarks/run_all.py --quick   # short smoke run; NOT the targets' "
    "conditions": "a benchmark, minutes long",
    "/tmp/v/bin/python benchmarks/bench_throughput.py --seconds 10 --rounds 3   # any one row": (
        "a benchmark, minutes long"
    ),
    "/tmp/v/bin/python benchmarks/profile_server.py    # py-spy profile of the server under "
    "load (pip install py-spy)": "a benchmark, and needs py-spy from the registry",
    "/tmp/v/bin/python benchmarks/profile_memory.py    # RSS each package adds to each "
    "process": "a benchmark, minutes long",
}


def test_every_documented_command_is_run_here_or_excused() -> None:
    found = examples()
    assert len(found) > 30  # the extraction sees the documents' examples
    unhandled = [
        e
        for e in found
        if e.command not in NOT_RUN
        and not any(p.search(e.command) for p in (FILE_RECIPE, SERVER_COMMAND, AGE_RESTORE))
        and not DEMO_PROVIDER.search(e.command)
    ]
    assert unhandled == [], "run these in a scenario below, or say in NOT_RUN why not"
    commands = {e.command for e in found}
    assert [c for c in NOT_RUN if c not in commands] == [], "stale NOT_RUN entries"


# -- the environment: a user's home, this venv's pizauth first on PATH ---------------------


def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    fake = tmp_path / "fakebin"
    fake.mkdir()
    # The clipboard: `wl-copy` reads what to copy from stdin, as the real one does.
    wl_copy = fake / "wl-copy"
    wl_copy.write_text('#!/bin/sh\ncat > "$HOME/clipboard"\n')
    wl_copy.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "PIZAUTH")) and k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")
    }
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(tmp_path / "rt"),
        PATH=os.pathsep.join([str(BIN), str(fake), os.environ.get("PATH", "/usr/bin:/bin")]),
        SHELL="/bin/sh",
    )
    return env


def sh(command: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


# -- file recipes: man pages, completions, the unit, age keys ----------------------------------


@pytest.mark.parametrize("where", DOCUMENTS)
def test_file_recipes_run(tmp_path: Path, where: str) -> None:
    recipe = [e.command for e in examples() if e.where == where and FILE_RECIPE.search(e.command)]
    if where == "man/pizauth.conf.5":
        assert recipe == []
        return
    env = user_env(tmp_path)
    home = Path(env["HOME"])
    for command in recipe:  # in the document's order, from the source tree
        result = sh(command, env)
        assert result.returncode == 0, (command, result.stderr)
        installed = re.match(r"install -Dm644 (\S+) ~/(\S+)$", command)
        if installed:
            target = home / installed.group(2)
            assert target.read_bytes() == (ROOT / installed.group(1)).read_bytes()
            assert target.stat().st_mode & 0o777 == 0o644
    if any("systemd-unit" in c for c in recipe):
        unit = (home / ".config/systemd/user/pizauth.service").read_text()
        assert f"ExecStart={BIN / 'pizauth'} server -d" in unit
    if any(c.startswith("age-keygen") for c in recipe):
        assert (home / ".config/pizauth/key.pub").read_text().startswith("age1")
        assert (home / ".config/pizauth/key").stat().st_mode & 0o077 == 0


# -- pizauth's own commands against a server ---------------------------------------------------


@pytest.fixture
def provider() -> Iterator[Provider]:
    with Provider([Client(CLIENT_ID, CLIENT_SECRET)], device_interval=1) as p:
        yield p


def write_user_config(env: dict[str, str], provider: Provider, extra: str = "") -> Path:
    """~/.config/pizauth.conf with the accounts the examples name: "work" (a device
    login, as README's "Without a browser: the device flow" shows it) and "officesmtp"
    (a code login)."""
    conf = Path(env["HOME"]) / ".config" / "pizauth.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.touch(mode=0o600)
    conf.write_text(
        f"{extra}\n"
        'account "work" {\n'
        '  auth_flow = "device";\n'
        f'  device_auth_uri = "{provider.device_auth_uri}";\n'
        f'  token_uri = "{provider.token_uri}";\n'
        f'  client_id = "{CLIENT_ID}";\n  client_secret = "{CLIENT_SECRET}";\n'
        "}\n"
        'account "officesmtp" {\n'
        f'  auth_uri = "{provider.auth_uri}";\n'
        f'  token_uri = "{provider.token_uri}";\n'
        f'  client_id = "{CLIENT_ID}";\n  client_secret = "{CLIENT_SECRET}";\n'
        "}\n"
    )
    return conf


def pattern(shown: str) -> re.Pattern[str]:
    """A line of shown output as a pattern: `...` stands for anything, a URL for any URL,
    and a device code for any code."""
    out = ""
    for part in re.split(r"(\.\.\.|https?://\S+|\b[A-Z]{4}-[A-Z]{4}\b)", shown):
        if part == "...":
            out += ".*"
        elif re.fullmatch(r"https?://\S+", part):
            out += r"https?://.*" if part.endswith("...") else r"https?://\S+"
        elif re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", part):
            out += "[A-Z]{4}-[A-Z]{4}"
        else:
            out += re.escape(part)
    return re.compile(out)


class Session:
    """The user at a terminal, with a server and the local provider."""

    def __init__(self, env: dict[str, str], provider: Provider) -> None:
        self.env = env
        self.provider = provider

    def pizauth(self, *args: str) -> subprocess.CompletedProcess:
        return sh(" ".join(["pizauth", *args]), self.env)

    def has_token(self, account: str) -> bool:
        return self.pizauth("show", account).returncode == 0

    def authorise(self, account: str) -> None:
        """The user opens the login URL and logs in."""
        if self.has_token(account):
            return
        url = self.pizauth("login", account).stdout.strip()
        if account == "work":  # a device login: approve its code
            self.provider.approve_device(self.provider.user_codes[-1])
        else:
            status, headers, _ = http_get(url)
            assert status == 302
            assert http_get(headers["location"])[0] == 200
        wait_for(lambda: self.has_token(account), 15, f"a token for {account}")

    def run(self, example: Example) -> None:
        words = example.command.split()
        account = words[2] if len(words) > 2 and words[1] in ("show", "login") else None
        # Bring the account to the state the example shows.
        wants_url = example.output[:1] and example.output[0].startswith("ERROR - ")
        if account and (words[1] == "login" or wants_url):
            self.pizauth("revoke", account)
        elif account:
            self.authorise(account)
        result = sh(example.command, self.env)
        printed = (result.stdout + result.stderr).splitlines()
        assert result.returncode == (1 if wants_url else 0), (example, result)
        if words[1] == "show" and not wants_url:
            # A token: the document's is an example of one, not this provider's.
            assert result.stdout.count("\n") == 1 and result.stderr == "", result
            return
        for line in example.output:
            assert any(pattern(line).fullmatch(p) for p in printed), (example, printed)
        if words[1] == "login":
            # The URL alone, on stdout or on the clipboard it was piped to.
            url = result.stdout
            if "| wl-copy" in example.command:
                url = (Path(self.env["HOME"]) / "clipboard").read_text()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\S+\n", url), url
            assert result.stderr == "" or account == "work", result.stderr
        if "jq -r .server_info.https_cert_sha256" in example.command:
            assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}\n", result.stdout)


def test_pizauth_commands_run_as_shown(tmp_path: Path, provider: Provider) -> None:
    if shutil.which("jq") is None and not os.environ.get("CI"):
        pytest.skip("jq is not installed (.ci/run installs it)")
    env = user_env(tmp_path)
    write_user_config(env, provider)
    session = Session(env, provider)
    found = [e for e in examples() if SERVER_COMMAND.search(e.command)]
    # pizauth(1)'s examples start the server; README's assume one.
    found.sort(key=lambda e: e.where != "man/pizauth.1")
    assert found[0].command == "pizauth server"
    try:
        for example in found:
            session.run(example)
    finally:
        sh("pizauth shutdown", env)


# -- the by-hand age recipe: dump on every token event, restore after a restart --------------


def test_age_recipe_keeps_tokens_over_a_restart(tmp_path: Path, provider: Provider) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Persisting tokens across reboots by hand", 1)[1].split("\n## ")[0]
    [event_cmd] = re.findall(r"^token_event_cmd = .*;$", section, re.M)
    in_readme = [e for e in examples() if e.where == "README.md"]
    keys = [
        e.command
        for e in in_readme
        if re.search("^" + re.escape(e.command) + "$", section, re.M)
        and FILE_RECIPE.search(e.command)
    ]
    assert [k.split()[0] for k in keys] == ["mkdir", "age-keygen", "age-keygen"]
    restores = {e.command for e in examples() if AGE_RESTORE.search(e.command)}
    [restore] = restores  # README's and pizauth(1)'s are the same command
    # ...and pizauth(1) shows the same token_event_cmd.
    assert event_cmd in (ROOT / "man/pizauth.1").read_text()
    env = user_env(tmp_path)
    home = Path(env["HOME"])
    for command in keys:  # the key pair, as the section says to make it
        assert sh(command, env).returncode == 0, command
    (home / ".cache").mkdir()  # every desktop has one
    write_user_config(env, provider, event_cmd)
    session = Session(env, provider)
    try:
        assert session.pizauth("server").returncode == 0
        session.authorise("officesmtp")
        token = session.pizauth("show", "officesmtp").stdout
        dump = home / ".cache" / "pizauth.age"
        opens = "age -d -i ~/.config/pizauth/key ~/.cache/pizauth.age > /dev/null"
        wait_for(lambda: dump.exists() and sh(opens, env).returncode == 0, 15, "the dump")
        assert token.strip().encode() not in dump.read_bytes()
        assert session.pizauth("shutdown").returncode == 0
        assert session.pizauth("server").returncode == 0
        assert not session.has_token("officesmtp")
        result = sh(restore, env)
        assert (result.returncode, result.stderr) == (0, ""), result
        assert session.pizauth("show", "officesmtp").stdout == token
    finally:
        sh("pizauth shutdown", env)


# -- the demo provider prints what README shows ---------------------------------------------------


def test_demo_provider_prints_what_the_readme_shows() -> None:
    readme = (ROOT / "README.md").read_text()
    [shown] = [e for e in examples() if DEMO_PROVIDER.search(e.command)]
    documented_port = shown.command.rsplit(" ", 1)[1]
    port = str(free_port())
    proc = subprocess.Popen(
        [sys.executable, "examples/provider.py", "--port", port],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or "Ctrl-C to stop." not in lines[-1]:
            line = proc.stdout.readline()
            assert line, f"the provider exited: {lines}"
            lines.append(line.rstrip("\n"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert lines == [x.replace(documented_port, port) for x in shown.output]
    assert f"--port {documented_port}" in readme
    # The blocks it prints are a configuration pizauth takes as it is.
    from pizauth import config

    printed = "\n".join(lines)
    blocks = printed.split("Example pizauth.conf:", 1)[1].rsplit("Authorisation", 1)[0]
    parsed = config.parse(blocks)
    assert [(a.name, a.auth_flow) for a in parsed.accounts] == [
        ("demo", "code"),
        ("demo-device", "device"),
    ]
