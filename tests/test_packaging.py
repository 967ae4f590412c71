"""What a user gets besides the module: `--version`, the man pages, shell completions
and the systemd unit, and that `pip install` puts them where tools look for them.

Tests that need a tool (mandoc, zsh, fish, systemd-analyze, man) skip, saying so, where
it is missing; .ci/run installs the first three.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pizauth
from pizauth import cli, config

ROOT = Path(__file__).resolve().parent.parent
MAN1 = ROOT / "man" / "pizauth.1"
MAN5 = ROOT / "man" / "pizauth.conf.5"
COMPLETIONS = ROOT / "share" / "completions"
BASH_COMPLETION = COMPLETIONS / "pizauth.bash"
ZSH_COMPLETION = COMPLETIONS / "_pizauth"
FISH_COMPLETION = COMPLETIONS / "pizauth.fish"
UNIT = ROOT / "share" / "systemd" / "pizauth.service"
BIN = Path(sys.executable).parent
PIZAUTH = str(BIN / "pizauth")
VERSION = importlib.metadata.version("pizauth")

# Names a completion must cope with: a word-breaking ':' for bash, a space, and the
# two escapes of the config grammar.
ACCOUNTS = ["work", "wo:rk2", "my account", 'q"uo\\te']
COMMANDS = sorted(cli._COMMANDS)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs mandoc, zsh and fish)")
    return path


def run(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture
def user(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose pizauth.conf has ACCOUNTS, and a commented-out one,
    with this venv's pizauth first on PATH and no server running."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    block = 'auth_uri = "http://a.example/"; token_uri = "http://a.example/"; client_id = "x";'
    lines = [f'account "{config_quote(name)}" {{ {block} }}' for name in ACCOUNTS]
    lines[1] = "  " + lines[1].replace("account ", "account", 1)  # indented, no space
    lines.append('// account "commented" {')
    (home / ".config" / "pizauth.conf").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PIZAUTH"))}
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(tmp_path / "rt"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        TERM="dumb",
    )
    return env


def config_quote(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def test_user_fixture_config_is_what_pizauth_info_reports(user: dict[str, str]) -> None:
    conf = Path(user["HOME"]) / ".config" / "pizauth.conf"
    assert [a.name for a in config.load(str(conf)).accounts] == ACCOUNTS
    info = run([PIZAUTH, "info"], user)
    assert f"  config file: {conf}\n" in info.stdout


# -- --version ---------------------------------------------------------------------------


def test_version_is_the_package_metadata() -> None:
    assert pizauth.__version__ == VERSION


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag_prints_name_and_version(user: dict[str, str], flag: str) -> None:
    result = run([PIZAUTH, flag], user)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"pizauth {VERSION}\n", "")
    assert not Path(user["XDG_RUNTIME_DIR"]).exists(), "--version needs no runtime directory"


def test_version_flag_uses_the_name_run_as(user: dict[str, str], tmp_path: Path) -> None:
    link = tmp_path / "pz"
    link.symlink_to(PIZAUTH)
    assert run([str(link), "-V"], user).stdout == f"pz {VERSION}\n"


@pytest.mark.parametrize("args", [["--version", "show"], ["show", "--version"], ["-V", "-V"]])
def test_version_flag_with_anything_else_is_a_usage_error(
    user: dict[str, str], args: list[str]
) -> None:
    result = run([PIZAUTH, *args], user)
    assert result.returncode == 1
    assert result.stdout == ""
    problem, usage = result.stderr.split("\n", 1)
    assert problem in (
        "pizauth: '--version' takes no arguments",
        "pizauth: '-V' takes no arguments",
        "pizauth: unknown option '--version'",
    )
    # The original's usage lines come first, unchanged.
    assert usage.startswith("Usage:\n  pizauth dump\n  pizauth info [-j]\n")


def test_info_shows_the_same_version(user: dict[str, str]) -> None:
    human = run([PIZAUTH, "info"], user)
    assert human.stdout.startswith(f"pizauth version {VERSION}:\n")
    machine = json.loads(run([PIZAUTH, "info", "-j"], user).stdout)
    assert machine["pizauth_version"] == VERSION


def test_version_and_show_do_not_import_importlib_metadata(user: dict[str, str]) -> None:
    # cli.py's rule: `show` runs every few minutes, so nothing slow on its path.
    code = (
        "import sys\n"
        "from pizauth import cli\n"
        "codes = [cli.main(['pizauth', '--version']), cli.main(['pizauth', 'show', 'work'])]\n"
        "print(codes, sorted(m for m in sys.modules if m.startswith('importlib.metadata')))\n"
    )
    result = run([sys.executable, "-S", "-c", code], dict(user, PYTHONPATH=str(ROOT)))
    assert result.stdout == f"pizauth {VERSION}\n[0, 1] []\n", result.stderr
    assert "not running" in result.stderr


# -- man pages ---------------------------------------------------------------------------


def section(text: str, name: str) -> str:
    match = re.search(rf"^\.Sh {name}\n(.*?)(?=^\.Sh |\Z)", text, re.M | re.S)
    assert match, f"no {name} section"
    return match.group(1)


def item(text: str, head: str) -> str:
    """The `.It` entry starting with the line `head`, up to the next entry of its list."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line == head or line.startswith(head + " ")]
    assert starts, f"no entry {head!r}"
    out, depth = [lines[starts[0]]], 0
    for line in lines[starts[0] + 1 :]:
        if line.startswith(".Bl"):
            depth += 1
        elif line.startswith(".El"):
            if depth == 0:
                break
            depth -= 1
        elif line.startswith(".It") and depth == 0:
            break
        out.append(line)
    return "\n".join(out)


def literal_blocks(text: str) -> list[str]:
    blocks = re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", text, re.M | re.S)
    return [b.replace("\\e", "\\") for b in blocks]


@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_man_page_lints_clean(page: Path) -> None:
    mandoc = need("mandoc")
    result = run([mandoc, "-T", "lint", "-W", "warning", str(page)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_man_page_renders(page: Path) -> None:
    mandoc = need("mandoc")
    text = re.sub(".\b", "", run([mandoc, "-T", "utf8", str(page)]).stdout)  # no overstrike
    assert "NAME" in text and "DESCRIPTION" in text
    assert "pizauth" in text.split("DESCRIPTION")[1]


def test_pizauth_1_has_the_expected_sections() -> None:
    text = MAN1.read_text()
    for name in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
        "SECURITY CONSIDERATIONS",
    ):
        assert section(text, name).strip()


def test_pizauth_1_documents_every_command_and_option() -> None:
    text = MAN1.read_text()
    synopsis, description = section(text, "SYNOPSIS"), section(text, "DESCRIPTION")
    options = {
        "show": cli._SHOW_OPTS,
        "refresh": cli._SHOW_OPTS,
        "info": cli._INFO_OPTS,
        "server": cli._SERVER_OPTS,
    }
    for usage in cli._USAGE_LINES:
        command, *rest = usage.split(" ", 1)
        # The synopsis has each command, with the flags of its usage line.
        chunk = re.search(rf"^\.Cm {command}\n(.*?)(?=^\.Nm|\Z)", synopsis, re.M | re.S)
        assert chunk, f"{command} not in SYNOPSIS"
        flags = "".join(re.findall(r"Fl ([A-Za-z]+)", chunk.group(1)))
        for letter in re.findall(r"\[-(\w+)", rest[0] if rest else ""):
            assert set(letter) <= set(flags), (command, letter)
        # The description has an entry for it naming each option the parser accepts.
        entry = item(description, f".It Cm {command}")
        for short, (long, _) in options.get(command, {}).items():
            assert f"Fl {short}" in entry, (command, short)
            if long:
                assert f"Fl \\-{long}" in entry, (command, long)
    extra = {u.split()[0] for u in cli._MORE_USAGE_LINES if not u.startswith("-")}
    assert set(cli._COMMANDS) == {u.split()[0] for u in cli._USAGE_LINES} | extra
    for short, (long, _) in cli._COMMON.items():
        assert f".Fl {short}\n" in description and f"Fl \\-{long}" in description
    assert ".Fl V | -version" in synopsis
    assert ".It Fl V , Fl \\-version" in description


def test_pizauth_1_documents_the_environment() -> None:
    text = MAN1.read_text()
    environment = section(text, "ENVIRONMENT")
    for name in ("XDG_RUNTIME_DIR", "TMPDIR", "XDG_CONFIG_HOME", "HOME", "SHELL", "NOTIFY_SOCKET"):
        assert re.search(rf"^\.It Ev {name}$", environment, re.M), name


def hook_variables() -> set[str]:
    from pizauth.priv.flows import refresher
    from pizauth.priv.run import notifier

    sources = inspect.getsource(notifier) + inspect.getsource(refresher)
    return set(re.findall(r'"(PIZAUTH_[A-Z_]+)"', sources))


def test_hook_variables_are_those_the_server_sets() -> None:
    names = hook_variables()
    assert names == {
        "PIZAUTH_ACCOUNT",
        "PIZAUTH_URL",
        "PIZAUTH_USER_CODE",
        "PIZAUTH_MSG",
        "PIZAUTH_EVENT",
    }
    for page in (MAN1, MAN5):
        environment = section(page.read_text(), "ENVIRONMENT")
        documented = set(re.findall(r"^\.It Ev (PIZAUTH_\w+)$", environment, re.M))
        assert documented == names, page.name


def test_token_events_are_those_the_server_raises() -> None:
    from pizauth.ipc import TokenEvent

    raised = {event.value for event in TokenEvent}
    assert raised == {"token_new", "token_refreshed", "token_invalidated", "token_revoked"}
    entry = item(MAN5.read_text(), ".It Ic token_event_cmd No = Ar string ;")
    assert set(re.findall(r"^\.It Li (token_\w+)$", entry, re.M)) == raised


def test_pizauth_1_documents_every_info_json_key(user: dict[str, str]) -> None:
    from pizauth.priv.commands import Commands

    keys = set(json.loads(run([PIZAUTH, "info", "-j"], user).stdout))
    assert "server_info" not in keys  # no server: add it and what the server answers
    keys.add("server_info")
    keys |= set(re.findall(r'"(\w+)"', inspect.getsource(Commands.info)))
    keys -= {"none"}
    assert {"http_port", "https_port", "https_pub_key", "https_cert_sha256"} <= keys
    entry = item(section(MAN1.read_text(), "DESCRIPTION"), ".It Cm info")
    for key in keys:
        assert f".It Li {key}\n" in entry or f".Li {key}\n" in entry, key


def test_pizauth_1_security_notes_cover_dumps() -> None:
    security = section(MAN1.read_text(), "SECURITY CONSIDERATIONS")
    for words in ("dump", "refresh tokens", "client_secret", "published", "Encrypt"):
        assert words in security, words


# Every keyword of the configuration grammar but `account` and `none`.
CONFIG_KEYWORDS = (
    "auth_error_cmd auth_notify_cmd auth_notify_interval auth_uri auth_uri_fields client_id "
    "client_secret error_notify_cmd http_listen https_listen login_hint refresh_retry "
    "redirect_uri refresh_before_expiry refresh_at_least scopes startup_cmd token_event_cmd "
    "token_uri transient_error_if_cmd"
).split()


def test_pizauth_conf_5_documents_every_setting() -> None:
    text = MAN5.read_text()
    source = inspect.getsource(config)
    for keyword in CONFIG_KEYWORDS:
        assert keyword in source, f"{keyword} is not in the grammar any more"
        assert re.search(rf"^\.It Ic {keyword}( |$)", text, re.M), keyword
    # Per-account and global settings, from the dataclasses the parser builds.
    accounts = re.search(r"^\.Ss Account settings\n(.*?)^\.Ss ", text, re.M | re.S).group(1)
    globals_ = re.search(r"^\.Ss Global settings\n(.*?)^\.Ss ", text, re.M | re.S).group(1)
    for field in config.Account.__dataclass_fields__:
        if field != "name":
            assert f".It Ic {field} " in accounts, field
    for field in config.Config.__dataclass_fields__:
        if field != "accounts":
            assert f".It Ic {field} " in globals_, field


def time_value(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and seconds // size < 100:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def test_pizauth_conf_5_gives_the_defaults() -> None:
    text = MAN5.read_text()
    defaults = {
        "auth_notify_interval": time_value(config.DEFAULT_AUTH_NOTIFY_INTERVAL),
        "refresh_at_least": time_value(config.DEFAULT_REFRESH_AT_LEAST),
        "refresh_before_expiry": time_value(config.DEFAULT_REFRESH_BEFORE_EXPIRY),
        "refresh_retry": time_value(config.DEFAULT_REFRESH_RETRY),
        "http_listen": config.DEFAULT_LISTEN,
        "https_listen": config.DEFAULT_LISTEN,
        "redirect_uri": config.DEFAULT_REDIRECT_URI,
    }
    assert defaults["auth_notify_interval"] == "15m" and defaults["refresh_at_least"] == "90m"
    globals_ = text.split(".Ss Global settings", 1)[1]
    for option, value in defaults.items():
        where = text if option == "redirect_uri" else globals_
        entry = item(where, f".It Ic {option} No =")
        assert re.search(rf"default is\s+(\.Qq )?{re.escape(value)}(?!\w)", entry), option


def test_configuration_examples_parse() -> None:
    examples = literal_blocks(section(MAN5.read_text(), "EXAMPLES"))
    assert len(examples) >= 3
    with_accounts = [e for e in examples if 'account "' in e]
    base = with_accounts[0]
    assert [a.name for a in config.parse(base).accounts] == ["work", "personal"]
    for example in examples:
        text = example if 'account "' in example else example + base
        config.parse(text)  # raises ConfigError if the page shows a broken example
    # Configuration lines in pizauth(1)'s examples too.
    for example in literal_blocks(section(MAN1.read_text(), "EXAMPLES")):
        if "_cmd = " in example:
            config.parse(example + base)


def test_configuration_example_notify_commands_unescape() -> None:
    examples = literal_blocks(section(MAN5.read_text(), "EXAMPLES"))
    notify = next(e for e in examples if "auth_notify_cmd" in e)
    parsed = config.parse(
        notify + 'account "x" { auth_uri = "http://a/"; token_uri = "http://a/"; client_id = ""; }'
    )
    assert parsed.auth_notify_cmd == (
        "notify-send -t 30000 pizauth"
        ' "Log in to $PIZAUTH_ACCOUNT: run pizauth show $PIZAUTH_ACCOUNT"'
    )


def documented_examples() -> list[str]:
    """Every example a user may copy: the code blocks of README.md and docs/*.md and their
    inline code that sets a `*_cmd`, and both man pages' literal blocks."""
    examples: list[str] = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        examples += re.findall(r"^ *```[^\n]*\n(.*?)^ *```$", text, re.M | re.S)
        examples += [c for c in re.findall(r"`([^`\n]+)`", text) if "_cmd = " in c]
    for page in (MAN1, MAN5):
        examples += literal_blocks(page.read_text())
    return examples


# The hooks run through the shell: "$PIZAUTH_URL" anywhere in a command line ends up in
# some command's arguments, which every local user can read in /proc.
URL_EXPANSION = re.compile(r"\$\{?PIZAUTH_URL\b")


def test_no_example_puts_the_login_url_on_a_command_line() -> None:
    examples = documented_examples()
    notify = [e for e in examples if "auth_notify_cmd = " in e]
    assert len(notify) >= 2  # README's and pizauth.conf(5)'s
    assert [e for e in examples if URL_EXPANSION.search(e)] == []
    # The check sees what it is meant to see.
    assert URL_EXPANSION.search('auth_notify_cmd = "xdg-open \\"${PIZAUTH_URL}\\"";')


def test_readme_notify_examples_parse_and_name_the_account() -> None:
    readme = (ROOT / "README.md").read_text()
    block = next(e for e in documented_examples() if "auth_notify_cmd = " in e and "error_" in e)
    assert block in readme
    parsed = config.parse(
        block + 'account "x" { auth_uri = "http://a/"; token_uri = "http://a/"; client_id = ""; }'
    )
    assert parsed.auth_notify_cmd and "pizauth show $PIZAUTH_ACCOUNT" in parsed.auth_notify_cmd
    assert parsed.error_notify_cmd and "$PIZAUTH_MSG" in parsed.error_notify_cmd
    # The quick start says which redirect URI to register, and uses no deprecated option.
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "`http://localhost/`" in quick
    assert not re.search(r"^\s*login_hint\s*=", quick, re.M)


# -- installation ------------------------------------------------------------------------

DATA_FILES = {
    "share/man/man1/pizauth.1": MAN1,
    "share/man/man5/pizauth.conf.5": MAN5,
    "share/bash-completion/completions/pizauth.bash": BASH_COMPLETION,
    "share/zsh/site-functions/_pizauth": ZSH_COMPLETION,
    "share/fish/vendor_completions.d/pizauth.fish": FISH_COMPLETION,
}


def test_pyproject_installs_every_man_page_and_completion() -> None:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    installed = {
        f"{directory}/{Path(source).name}": ROOT / source
        for directory, sources in data_files.items()
        for source in sources
    }
    assert installed == DATA_FILES
    shipped = set((ROOT / "man").iterdir()) | set(COMPLETIONS.iterdir())
    assert shipped == set(DATA_FILES.values())


def pip_install(
    tmp_path: Path, python: Path, *args: str, env: dict[str, str] | None = None
) -> None:
    """`pip install --no-deps` for the interpreter `python` of a copy of the checkout (so
    that the build leaves nothing in the working tree), with more install options `args`."""
    src = tmp_path / "src"
    if not src.exists():
        src.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        for name in ("pizauth", "bin", "man", "share"):
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    pip += [*args, str(src)]
    result = run(pip, env)
    if result.returncode != 0 and re.search(
        r"No matching distribution|Could not find a version|Failed to establish|Network is",
        result.stdout + result.stderr,
    ):
        pytest.skip(f"pip cannot fetch the build requirements: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr


def no_server_env(tmp_path: Path, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PYTHON"))}
    return dict(env, XDG_RUNTIME_DIR=str(tmp_path / "rt"), PATH=path)


def not_running(env: dict[str, str]) -> str:
    sock = f"{env['XDG_RUNTIME_DIR']}/pizauth/pizauth.sock"
    return f"ERROR - pizauth authenticator not running or not responding (socket: {sock})\n"


def test_pip_install_puts_man_pages_and_completions_in_the_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).check_returncode()
    pip_install(tmp_path, venv / "bin" / "python")
    for path, source in DATA_FILES.items():
        assert (venv / path).read_bytes() == source.read_bytes(), path
    # The installed command works (--version and a `show` need none of the dependencies),
    # with the venv's interpreter whatever is on PATH, also through a symbolic link
    # elsewhere (pipx's).
    env = no_server_env(tmp_path, "/usr/bin:/bin")
    link = tmp_path / "links" / "pizauth"
    link.parent.mkdir()
    link.symlink_to(venv / "bin" / "pizauth")
    for command in (str(venv / "bin" / "pizauth"), str(link)):
        assert run([command, "--version"], env).stdout == f"pizauth {VERSION}\n"
        show = run([command, "show", "acct"], env)
        assert (show.returncode, show.stdout, show.stderr) == (1, "", not_running(env))


def test_pip_install_user_runs_with_the_interpreter_it_was_installed_for(
    tmp_path: Path,
) -> None:
    # `pip install --user` puts the script into ~/.local/bin, with no Python beside it; the
    # first `python3` on PATH may be another interpreter, without pizauth.
    base = Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
    if not base.exists():
        pytest.skip(f"no {base} to install for with --user")
    userbase = tmp_path / "userbase"
    env = dict(os.environ, PYTHONUSERBASE=str(userbase))
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    pip_install(tmp_path, base, "--user", env=env)
    script = userbase / "bin" / "pizauth"
    assert script.read_text().startswith("#!/bin/sh\n")
    decoys = tmp_path / "decoys"
    decoys.mkdir()
    for name in ("python3", "python"):
        decoy = decoys / name
        decoy.write_text("#!/bin/sh\necho wrong interpreter >&2; exit 7\n")
        decoy.chmod(0o755)
    path = f"{decoys}{os.pathsep}{base.parent}{os.pathsep}/usr/bin:/bin"
    env = dict(no_server_env(tmp_path, path), PYTHONUSERBASE=str(userbase))
    version = run([str(script), "--version"], env)
    assert (version.returncode, version.stdout, version.stderr) == (0, f"pizauth {VERSION}\n", "")
    show = run([str(script), "show", "acct"], env)
    assert (show.returncode, show.stdout, show.stderr) == (1, "", not_running(env))
    # Without a pythonX.Y on PATH it can only try python3, as before.
    bare = run([str(script), "--version"], dict(env, PATH=f"{decoys}{os.pathsep}/nonexistent"))
    assert (bare.returncode, bare.stderr) == (7, "wrong interpreter\n")


# -- bash completion ---------------------------------------------------------------------

BASH_DRIVER = r"""
source "$1" || exit 1
COMP_LINE=$2 COMP_POINT=${#2} COMP_WORDS=(pizauth) COMP_CWORD=0
_pizauth pizauth "$3" ""
for w in "${COMPREPLY[@]}"; do printf '%s\n' "$w"; done
"""
WORD_BREAKS = " \t\n\"'><=;|&(:"  # bash's default COMP_WORDBREAKS


def bash_complete(env: dict[str, str], line: str, text: str | None = None, cwd=None) -> list[str]:
    """COMPREPLY for the command line `line` with the cursor at its end. `text` is the
    word readline completes, which bash passes to the function: by default the text
    after the last word-breaking character."""
    if text is None:
        text = re.split("[" + re.escape(WORD_BREAKS) + "]", line)[-1]
    bash = shutil.which("bash") or "/bin/bash"
    result = run(
        [bash, "--norc", "--noprofile", "-c", BASH_DRIVER, "_", str(BASH_COMPLETION), line, text],
        env,
        cwd=cwd,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.splitlines()


BASH_ESCAPED = ["work", "wo:rk2", "my\\ account", 'q\\"uo\\\\te']


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("pizauth ", COMMANDS),
        ("pizauth s", ["server", "show", "shutdown", "status", "systemd-unit"]),
        ("pizauth -", ["-V", "--version", "-h", "--help"]),
        ("pizauth show ", BASH_ESCAPED),
        ("pizauth refresh ", BASH_ESCAPED),
        ("pizauth revoke ", BASH_ESCAPED),
        ("pizauth login ", BASH_ESCAPED),
        ("pizauth login -", ["-h", "--help"]),
        ("pizauth l", ["login"]),
        ("pizauth show w", ["work", "wo:rk2"]),
        ("pizauth show -u ", BASH_ESCAPED),
        ("pizauth show -- ", BASH_ESCAPED),
        ("pizauth show work ", []),
        ("pizauth show -u work ", []),
        ("pizauth show x", []),
        ("pizauth show -", ["-u", "-h", "--help"]),
        ("pizauth show -u -", ["-h", "--help"]),
        ("pizauth revoke -", ["-h", "--help"]),
        ("pizauth info -", ["-j", "-c", "--config=", "-h", "--help"]),
        ("pizauth info -j -", ["-c", "--config=", "-h", "--help"]),
        ("pizauth server -", ["-c", "--config=", "-d", "-v", "--verbose", "-h", "--help"]),
        ("pizauth server -dv -", ["-c", "--config=", "-v", "--verbose", "-h", "--help"]),
        ("pizauth server --config=x -", ["-d", "-v", "--verbose", "-h", "--help"]),
        ("pizauth server --help -", ["-c", "--config=", "-d", "-v", "--verbose"]),
        ("pizauth status -", ["-h", "--help"]),
        ("pizauth status ", []),
        ("pizauth shutdown ", []),
        ("pizauth bogus ", []),
        ("pizauth bogus -", []),
    ],
)
def test_bash_completes(user: dict[str, str], line: str, expected: list[str]) -> None:
    assert bash_complete(user, line) == expected


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        # readline replaces the text after the last ':' only
        ("pizauth show wo:", "", ["rk2"]),
        ("pizauth show wo:r", "r", ["rk2"]),
        # backslash-escaped, double- and single-quoted words
        ("pizauth show my\\ ", "my\\ ", ["my\\ account"]),
        ('pizauth show "my ', "my ", ["my account"]),
        ("pizauth show 'my", "my", ["my account"]),
        ('pizauth show q\\"', 'q\\"', ['q\\"uo\\\\te']),
    ],
)
def test_bash_completes_awkward_account_names(
    user: dict[str, str], line: str, text: str, expected: list[str]
) -> None:
    assert bash_complete(user, line, text) == expected


def test_bash_completes_files_after_c(user: dict[str, str], tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "alt.conf").write_text("")
    (files / "other").write_text("")
    for line in ("pizauth server -c ", "pizauth info -c ", "pizauth server -dc "):
        assert sorted(bash_complete(user, line, cwd=files)) == ["alt.conf", "other"], line
    assert bash_complete(user, "pizauth server -c a", cwd=files) == ["alt.conf"]
    assert bash_complete(user, "pizauth info --config=a", cwd=files) == ["alt.conf"]
    # -c takes no file for show, and a file is no account
    assert bash_complete(user, "pizauth show -c ", cwd=files) == BASH_ESCAPED


def test_bash_reads_accounts_from_the_config_file_info_reports(
    user: dict[str, str], tmp_path: Path
) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "pizauth.conf").write_text(
        'account "elsewhere" { auth_uri = "http://a/"; token_uri = "http://a/"; client_id = ""; }'
    )
    assert bash_complete(dict(user, XDG_CONFIG_HOME=str(xdg)), "pizauth show ") == ["elsewhere"]
    # No configuration file (or no pizauth at all): no accounts, and no noise.
    empty = dict(user, HOME=str(tmp_path / "nobody"))
    assert bash_complete(empty, "pizauth show ") == []
    assert bash_complete(user, "/nonexistent/pizauth show ") == []


def test_bash_registers_the_completion(user: dict[str, str]) -> None:
    result = run(
        ["bash", "--norc", "--noprofile", "-c", f"source {BASH_COMPLETION}; complete -p"], user
    )
    assert result.stdout.strip().splitlines() == ["complete -F _pizauth pizauth"]


class Terminal:
    """An interactive bash on a pseudo-terminal, to see what readline really inserts."""

    def __init__(self, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
        self.output = b""
        self.seen = 0  # output before this has been matched
        self.expect(self.PROMPT)

    PROMPT = "pz$ "

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def expect(self, wanted: str, timeout: float = 15.0) -> None:
        """Wait until `wanted` follows what was matched before."""
        deadline = time.monotonic() + timeout
        while (at := self.output.find(wanted.encode(), self.seen)) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{wanted!r} not in terminal output {self.output[-500:]!r}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    break
        self.seen = at + len(wanted)

    def line(self, text: str) -> None:
        """Type a line once the prompt is there (input typed ahead of readline is mangled)."""
        self.send(text + "\n")
        self.expect(self.PROMPT)

    def close(self) -> None:
        os.close(self.fd)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)


@pytest.fixture
def terminal(user: dict[str, str]) -> Iterator[Terminal]:
    term = Terminal(dict(user, INPUTRC="/dev/null", PS1=Terminal.PROMPT, PZ=str(BASH_COMPLETION)))
    # Under load, the first line typed is sometimes mangled (its '/' lost): type
    # until the completion is known to be loaded.
    for _ in range(5):
        term.line('source "$PZ" && echo "$((6 * 7))" loaded')
        if b"42 loaded" in term.output:
            break
    else:
        pytest.fail(f"could not load the completion: {term.output[-500:]!r}")
    # `pizauth` shows its arguments, except `info`, which the completion runs.
    term.line(
        'pizauth() { if [ "$1" = info ]; then command pizauth "$@"; '
        "else printf '<%s>' \"$@\"; echo; fi; }"
    )
    yield term
    term.close()


@pytest.mark.parametrize(
    ("typed", "arguments"),
    [
        ("pizauth sho\t", "<show>"),
        ("pizauth show my\t", "<show><my account>"),
        ("pizauth show wo:\t", "<show><wo:rk2>"),
        ('pizauth show "my\t', "<show><my account>"),
        ("pizauth show q\t", '<show><q"uo\\te>'),
        ("pizauth show -u my\t", "<show><-u><my account>"),
    ],
)
def test_bash_readline_inserts_words_the_command_receives_intact(
    terminal: Terminal, typed: str, arguments: str
) -> None:
    terminal.send(typed + "\n")
    terminal.expect(arguments + "\r\n")


# -- zsh completion ----------------------------------------------------------------------

# Completes one line in an interactive zsh on a zpty and prints every match that
# reaches compadd as <<match>>, then <<DONE>>.
ZSH_CAPTURE = r"""
zmodload zsh/zpty || exit 1
zpty z zsh -f -i
out=""
read_until() {  # read from the terminal until the output matches $1, at most 20 s
  local chunk
  integer end=$(( SECONDS + 20 ))
  while (( SECONDS < end )); do
    while zpty -r -t z chunk; do out+=$chunk; done
    [[ $out == $~1 ]] && return 0
    sleep 0.05
  done
  print -r -- "timed out waiting for $1 in: ${(q+)out}"
  exit 1
}
# Input typed before the shell has set up its terminal may be lost: say hello until
# the shell answers.
for i in {1..100}; do
  zpty -w z "print HAND''SHAKE"
  sleep 0.1
  while zpty -r -t z chunk; do out+=$chunk; done
  [[ $out == *HANDSHAKE* ]] && break
done
zpty -w z "fpath=(${(q)1} \$fpath)"
zpty -w z 'autoload -U compinit && compinit -u -D'
zpty -w z "zstyle ':completion:*' list-grouped false"
zpty -w z 'compadd() { builtin compadd -O __hits "$@"; (( $#__hits )) && print -rl -- "<<${(@)^__hits}>>"; builtin compadd "$@" }'
zpty -w z 'comppostfuncs=(__done); __done() { print -r -- "<<DONE>>" }'
zpty -w z 'bindkey "^I" complete-word'
# (the echo of this line does not match the pattern, its output does)
zpty -w z "PROMPT=''; print READY''NOW"
read_until '*READYNOW*'
out=""
zpty -w -n z "$2"$'\t'
read_until '*<<DONE>>*'
print -r -- "$out"
zpty -d z
"""  # noqa: E501


def zsh_complete(env: dict[str, str], line: str, cwd=None) -> list[str]:
    zsh = need("zsh")
    result = run([zsh, "-f", "-c", ZSH_CAPTURE, "_", str(COMPLETIONS), line], env, cwd=cwd)
    matches = re.findall(r"<<(.*?)>>", result.stdout)
    assert matches and matches[-1] == "DONE", result.stdout + result.stderr
    return matches[:-1]


def test_zsh_completion_is_valid_zsh() -> None:
    zsh = need("zsh")
    result = run([zsh, "-n", str(ZSH_COMPLETION)])
    assert (result.returncode, result.stderr) == (0, "")
    assert ZSH_COMPLETION.read_text().startswith("#compdef pizauth\n")


def test_zsh_completes_commands_and_accounts(user: dict[str, str]) -> None:
    assert sorted(zsh_complete(user, "pizauth ")) == COMMANDS
    assert sorted(zsh_complete(user, "pizauth show ")) == sorted(ACCOUNTS)
    assert sorted(zsh_complete(user, "pizauth revoke w")) == ["wo:rk2", "work"]
    assert sorted(zsh_complete(user, "pizauth refresh -u ")) == sorted(ACCOUNTS)
    assert sorted(zsh_complete(user, "pizauth login ")) == sorted(ACCOUNTS)
    assert zsh_complete(user, "pizauth show my\\ ") == ["my account"]
    assert not set(ACCOUNTS) & set(zsh_complete(user, "pizauth show work "))


@pytest.mark.parametrize(
    ("line", "present", "absent"),
    [
        ("pizauth -", {"-V", "--version", "-h", "--help"}, {"-u"}),
        ("pizauth show -", {"-u", "-h", "-v"}, {"-c", "-d", "-j"}),
        ("pizauth info -", {"-j", "-c", "--config"}, {"-d", "-u"}),
        ("pizauth server -", {"-c", "--config", "-d", "-v"}, {"-j", "-u"}),
        ("pizauth status -", {"-h", "-v"}, {"-u", "-c", "-d", "-j"}),
    ],
)
def test_zsh_completes_options(
    user: dict[str, str], line: str, present: set[str], absent: set[str]
) -> None:
    matches = set(zsh_complete(user, line))
    assert present <= matches and not absent & matches, matches


def test_zsh_completes_files_after_c(user: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "alt.conf").write_text("")
    assert "alt.conf" in zsh_complete(user, "pizauth server -c al", cwd=tmp_path)


# -- fish completion ---------------------------------------------------------------------


def fish_complete(env: dict[str, str], line: str, cwd=None) -> list[str]:
    fish = need("fish")
    script = "source $argv[1]; complete -C $argv[2]"
    result = run([fish, "--no-config", "-c", script, str(FISH_COMPLETION), line], env, cwd=cwd)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [candidate.split("\t")[0] for candidate in result.stdout.splitlines()]


def test_fish_completion_is_valid_fish() -> None:
    fish = need("fish")
    result = run([fish, "--no-execute", str(FISH_COMPLETION)])
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("pizauth ", COMMANDS),
        ("pizauth -", ["--version", "-V"]),
        ("pizauth show ", sorted(ACCOUNTS)),
        ("pizauth revoke w", ["wo:rk2", "work"]),
        ("pizauth refresh -u ", sorted(ACCOUNTS)),
        ("pizauth login ", sorted(ACCOUNTS)),
        ("pizauth login work ", []),
        ("pizauth show work ", []),
        ("pizauth status ", []),
        ("pizauth show -", ["--help", "--verbose", "-h", "-u", "-v"]),
        ("pizauth info -", ["--config", "--help", "--verbose", "-c", "-h", "-j", "-v"]),
        ("pizauth server -", ["--config", "--help", "--verbose", "-c", "-d", "-h", "-v"]),
    ],
)
def test_fish_completes(user: dict[str, str], line: str, expected: list[str]) -> None:
    assert sorted(fish_complete(user, line)) == sorted(expected)


def test_fish_completes_files_after_c(user: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "alt.conf").write_text("")
    assert fish_complete(user, "pizauth server -c al", cwd=tmp_path) == ["alt.conf"]


# -- systemd unit --------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in current, f"{key} set twice"
            current[key] = value
    return sections


def install_unit(command: str, home: Path) -> Path:
    """Install the unit as README.md says, with `command` as the `pizauth` it runs."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"^mkdir -p ~/.config/systemd/user\npizauth (systemd-unit > \S+)$", readme, re.M
    )
    assert match, "README.md has no line installing the unit"
    script = f"mkdir -p ~/.config/systemd/user\n'{command}' {match.group(1)}\n"
    unit_dir = home / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    result = run(["bash", "-c", script], dict(os.environ, HOME=str(home)), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return unit_dir / "pizauth.service"


def test_unit_template() -> None:
    unit = unit_settings(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split() == ["@PIZAUTH@", "server", "-d", "-vv"]
    assert service["ExecReload"] == "@PIZAUTH@ reload"
    assert service["ExecStop"] == "@PIZAUTH@ shutdown"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert "man:pizauth(1)" in unit["Unit"]["Documentation"]
    # The server stays in the foreground (so systemd's main process is the one sending
    # READY=1) with options the command line accepts.
    args = service["ExecStart"].split()[1:]
    found, free = cli._parse(args[1:], cli._SERVER_OPTS)
    assert "d" in found and free == []


def test_printed_unit_is_the_template_for_the_commands_own_path(
    user: dict[str, str], tmp_path: Path
) -> None:
    from pizauth import unit as unitmod

    assert UNIT.read_text() == unitmod.TEMPLATE  # packagers' copy and the printed one agree
    result = run([PIZAUTH, "systemd-unit"], user)
    assert result.returncode == 0, result.stderr
    service = unit_settings(result.stdout)["Service"]
    assert service["ExecStart"] == f"{PIZAUTH} server -d -vv"
    assert service["ExecReload"] == f"{PIZAUTH} reload"
    # Through a symlink (pipx's ~/.local/bin/pizauth), the unit names the symlink,
    # which stays valid when the venv behind it is rebuilt.
    link_dir = tmp_path / "my bin%"
    link_dir.mkdir()
    (link_dir / "pizauth").symlink_to(PIZAUTH)
    linked = run([str(link_dir / "pizauth"), "systemd-unit"], user)
    service = unit_settings(linked.stdout)["Service"]
    assert service["ExecStop"] == f'"{link_dir}/pizauth" shutdown'.replace("%", "%%")


def test_readme_installs_the_unit_with_the_commands_absolute_path(tmp_path: Path) -> None:
    installed = install_unit(PIZAUTH, tmp_path / "home")
    text = installed.read_text()
    assert "@PIZAUTH@" not in text
    service = unit_settings(text)["Service"]
    for key in ("ExecStart", "ExecReload", "ExecStop"):
        executable = service[key].split()[0]
        assert executable == PIZAUTH and os.path.isabs(executable)
        assert os.stat(executable).st_mode & stat.S_IXUSR


def systemd_verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    # Documentation=man:... is checked too: let man find our pages.
    man = tmp_path / "manpath"
    for page in (MAN1, MAN5):
        target = man / f"man{page.suffix[1:]}" / page.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, target)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), MANPATH=str(man))
    return run([analyze, "verify", "--user", str(unit)], env)


def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    good = install_unit(PIZAUTH, tmp_path / "home")
    result = systemd_verify(good, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pizauth" not in result.stdout + result.stderr
    # ... which does check the command: a missing one fails.
    bad = tmp_path / "other" / "pizauth.service"
    bad.parent.mkdir()
    bad.write_text(UNIT.read_text().replace("@PIZAUTH@", "/nonexistent/pizauth"))
    result = systemd_verify(bad, tmp_path)
    assert result.returncode != 0 and "/nonexistent/pizauth" in result.stderr
