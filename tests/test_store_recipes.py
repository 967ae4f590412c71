"""Every token store recipe in README.md and docs/token-store.md, run as printed by a
normal (non-root) user: the recipe's shell commands make the key, the server is started
with the recipe's key command, a login is stored, and a restarted server has the token
back with no request to the provider.

The user is `pizauth-test` (created with `useradd -m` when missing, by one test worker
while the others wait; it needs root). It runs the installed pizauth, or, when that
Python is out of its reach (a venv whose interpreter lives under /root), a copy of the
installed pizauth and its run-time dependencies beside a Python of the same version it
can run.

Not run: the desktop keyring (secret-tool needs a D-Bus session with an unlocked
keyring daemon). systemd-creds as a normal user needs systemd 256; on an older systemd
the test checks that the recipe fails as the docs say, and that `pizauth server` says
why at start.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, PIZAUTH, Provider, http_get, wait_for
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
USER = "pizauth-test"
# In root's own /run, not the world-writable /tmp: see ensure_user.
USERADD_LOCK = "/run/pizauth-test-useradd.lock"
DOCS = ("README.md", "docs/token-store.md")
NOT_RUN = {"secret-tool lookup service pizauth key token-store": "needs a desktop keyring"}


# -- the recipes, as printed ------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    doc: str
    heading: str
    setup: str | None  # the shell block before the key command's block, if it is one
    key_cmd: str  # as written in the configuration, unescaped
    token_store: str

    @property
    def id(self) -> str:
        return f"{self.doc}: {self.heading}: {self.key_cmd.split()[0]}"


def recipes() -> list[Recipe]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        store = re.search(r'^token_store = "([^"]+)";$', text, re.M)
        assert store, f"{doc} names no token_store"
        heading = ""
        previous: tuple[str, str] | None = None  # (language, body) of the block before
        for match in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```$", text, re.M | re.S):
            if match.group(1):
                heading, previous = match.group(1).lstrip("# "), None
                continue
            lang, body = match.group(2), match.group(3)
            key = re.search(r'^token_store_key_cmd = "((?:[^"\\]|\\.)*)";$', body, re.M)
            if key:
                setup = previous[1] if previous and previous[0] == "sh" else None
                cmd = key.group(1).replace('\\"', '"').replace("\\\\", "\\")
                found.append(Recipe(doc, heading, setup, cmd, store.group(1)))
            previous = (lang, body)
    # A key command shown again without its setup (a summary) is the same recipe.
    with_setup = {(r.doc, r.key_cmd) for r in found if r.setup is not None}
    return [r for r in found if r.setup is not None or (r.doc, r.key_cmd) not in with_setup]


RECIPES = recipes()


def test_the_readme_leads_with_a_recipe_any_user_can_run() -> None:
    first = next(r for r in RECIPES if r.doc == "README.md")
    assert first.key_cmd == "cat ~/.config/pizauth/store.key"
    assert first.setup is not None


def test_every_recipe_is_run_or_says_why_not() -> None:
    runnable = {r.key_cmd for r in RECIPES if r.key_cmd not in NOT_RUN}
    assert {
        "cat ~/.config/pizauth/store.key",
        "age -d -i ~/.config/pizauth/identity.txt ~/.config/pizauth/key.age",
        "systemd-creds --user decrypt --name=pizauth-key ~/.config/pizauth/key.cred -",
        'cat "$CREDENTIALS_DIRECTORY/pizauth-key"',
        "pass show pizauth/token-store",
    } == runnable
    assert set(NOT_RUN) <= {r.key_cmd for r in RECIPES}
    # docs/token-store.md says which ones the suite does not run, and why.
    doc = (ROOT / "docs/token-store.md").read_text()
    assert "Not run by the test suite: it needs a desktop session's D-Bus" in doc


# -- the user and a pizauth it can run --------------------------------------------------------


@pytest.fixture(scope="session")
def user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root, to create and become the user pizauth-test")
    return ensure_user(USER)


def ensure_user(name: str) -> pwd.struct_passwd:
    """The user `name`, created if missing. Parallel test workers (pytest -n) may all find
    it missing at once, and a second useradd fails rather than waits while the first holds
    /etc/passwd's lock: one creates it under USERADD_LOCK while the others wait, then find it.
    """
    fd = os.open(USERADD_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)
        except KeyError:
            made = subprocess.run(["useradd", "-m", name], capture_output=True)
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise AssertionError(f"useradd -m {name} failed: {made.stderr!r}") from None
    finally:
        os.close(fd)  # and with it the lock


def as_user(
    user: pwd.struct_passwd,
    home: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 60,
    **kwargs: object,
) -> subprocess.CompletedProcess[bytes]:
    clean = {
        "HOME": str(home),
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SHELL": "/bin/sh",
        "XDG_RUNTIME_DIR": str(home / "run"),
        **(env or {}),
    }
    command = ["runuser", "-u", user.pw_name, "--", "env", "-i"]
    command += [f"{k}={v}" for k, v in clean.items()]
    return subprocess.run(
        command + args,
        cwd=home,
        capture_output=True,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def _runnable(user: pwd.struct_passwd, pizauth: str) -> bool:
    """Whether the user can run `pizauth` as far as a command that imports the server's
    dependencies (`dump`, which then finds no server)."""
    home = Path(tempfile.mkdtemp(prefix="pizauth-probe-", dir="/tmp"))
    try:
        os.chown(home, user.pw_uid, user.pw_gid)
        probe = as_user(user, home, [pizauth, "dump"], timeout=30)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return b"not running" in probe.stderr


@pytest.fixture(scope="session")
def user_pizauth(user: pwd.struct_passwd) -> Iterator[str]:
    if _runnable(user, PIZAUTH):
        yield PIZAUTH
        return
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    python = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if python is None:
        pytest.skip(f"the test Python is out of {USER}'s reach and there is no /usr/bin/{version}")
    copy = Path(tempfile.mkdtemp(prefix="pizauth-user-install-", dir="/tmp"))
    try:
        os.chmod(copy, 0o755)
        subprocess.run([python, "-m", "venv", "--without-pip", str(copy)], check=True)
        site = Path(sysconfig.get_path("purelib", vars={"base": str(copy), "platbase": str(copy)}))
        for dist in _closure("pizauth"):
            for file in dist.files or ():
                source = Path(dist.locate_file(file))
                if file.parts[0] == ".." or not source.is_file():
                    continue  # the script and data files outside site-packages
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        shutil.copy2(PIZAUTH, copy / "bin" / "pizauth")
        subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
        pizauth = str(copy / "bin" / "pizauth")
        assert _runnable(user, pizauth), f"{USER} cannot run the copy in {copy}"
        yield pizauth
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _closure(name: str) -> list[metadata.Distribution]:
    """`name`'s distribution and those it needs at run time (no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or ():
            req = Requirement(text)  # packaging: pytest's own dependency
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


# -- one recipe, from making the key to a restart ------------------------------------------------


@pytest.fixture
def home(user: pwd.struct_passwd) -> Iterator[Path]:
    """A home of the user's own, fresh for each recipe."""
    path = Path(tempfile.mkdtemp(prefix="pizauth-recipe-", dir="/tmp"))
    (path / "run").mkdir(mode=0o700)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)
    path.chmod(0o700)
    yield path
    subprocess.run(["chmod", "-R", "u+rwX", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


class UserServer:
    def __init__(self, user: pwd.struct_passwd, home: Path, pizauth: str, env: dict[str, str]):
        self.user, self.home, self.pizauth, self.env = user, home, pizauth, env
        self.conf = home / "pizauth.conf"

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return as_user(self.user, self.home, [self.pizauth, *args], self.env)

    def start(self) -> subprocess.CompletedProcess[bytes]:
        result = self.run("server", "-c", str(self.conf))
        assert result.returncode == 0, result.stderr
        return result

    def stop(self) -> None:
        if self.run("shutdown").returncode == 0:
            sock = self.home / "run" / "pizauth" / "pizauth.sock"
            wait_for(lambda: not sock.exists(), 10, "the user's server to stop")

    def token(self) -> str | None:
        shown = self.run("show", "acct")
        return shown.stdout.decode().strip() if shown.returncode == 0 else None

    def login(self) -> str:
        shown = self.run("show", "acct")
        url = shown.stderr.decode().split("authorised with URL ", 1)[1].split()[0]
        status, headers, _ = http_get(url)
        assert status == 302, status
        status, _, _ = http_get(headers["location"])
        assert status == 200
        return wait_for(self.token, 15, "the user's token")


def configure(server: UserServer, recipe: Recipe, provider: Provider) -> None:
    key_cmd = recipe.key_cmd.replace("\\", "\\\\").replace('"', '\\"')
    server.conf.write_text(
        'http_listen = "127.0.0.1:0";\n'
        "https_listen = none;\n"
        f'token_store = "{recipe.token_store}";\n'
        f'token_store_key_cmd = "{key_cmd}";\n'
        'account "acct" {\n'
        f'  auth_uri = "{provider.auth_uri}";\n'
        f'  token_uri = "{provider.token_uri}";\n'
        f'  client_id = "{CLIENT_ID}";\n'
        f'  client_secret = "{CLIENT_SECRET}";\n'
        "}\n"
    )
    os.chown(server.conf, server.user.pw_uid, server.user.pw_gid)
    server.conf.chmod(0o600)


def prepare(recipe: Recipe, user: pwd.struct_passwd, home: Path) -> dict[str, str]:
    """What the recipe assumes is there already; the environment the server needs."""
    if recipe.key_cmd.startswith("pass "):
        if shutil.which("pass") is None or shutil.which("gpg") is None:
            pytest.skip("needs pass and gpg (Debian package pass)")
        # pass needs a GnuPG key to encrypt to: one without a passphrase, for no prompt.
        made = as_user(
            user,
            home,
            [
                "sh",
                "-c",
                "gpg --batch --passphrase '' --quick-gen-key "
                f"'pizauth test <{USER}@localhost>' default default never && "
                f"pass init {USER}@localhost",
            ],
        )
        assert made.returncode == 0, made.stderr
    if recipe.key_cmd.startswith("age ") and shutil.which("age") is None:
        pytest.skip("needs age (Debian package age)")
    if "CREDENTIALS_DIRECTORY" in recipe.key_cmd:
        # What systemd hands a unit with LoadCredentialEncrypted=: a private directory
        # with the decrypted credential in it.
        creds = home / "credentials"
        creds.mkdir(mode=0o700)
        (creds / "pizauth-key").write_bytes(os.urandom(32).hex().encode() + b"\n")
        (creds / "pizauth-key").chmod(0o400)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(creds)], check=True)
        return {"CREDENTIALS_DIRECTORY": str(creds)}
    return {}


def systemd_version() -> int:
    out = subprocess.run(["systemd-creds", "--version"], capture_output=True, text=True).stdout
    return int(out.split()[1])


RUN = [r for r in RECIPES if r.key_cmd not in NOT_RUN]


@pytest.mark.parametrize("recipe", RUN, ids=[r.id for r in RUN])
def test_a_recipe_works_as_printed_for_a_normal_user(
    recipe: Recipe,
    user: pwd.struct_passwd,
    user_pizauth: str,
    home: Path,
    provider: Provider,
) -> None:
    env = prepare(recipe, user, home)
    server = UserServer(user, home, user_pizauth, env)
    configure(server, recipe, provider)
    creds = recipe.key_cmd.startswith("systemd-creds")
    if creds and shutil.which("systemd-creds") is None:
        pytest.skip("needs systemd-creds (Debian package systemd)")
    if recipe.setup is not None:
        made = as_user(user, home, ["sh", "-c", recipe.setup])
        if creds and systemd_version() < 256:
            # As the docs say: a normal user cannot seal a credential before systemd 256.
            assert made.returncode != 0
            assert b"unrecognized option '--user'" in made.stderr, made.stderr
            # Nor does it work without --user, which is what the README warns of.
            plain = as_user(user, home, ["sh", "-c", recipe.setup.replace("--user ", "")])
            assert plain.returncode != 0
            assert (
                b"Failed to determine local credential host secret: Permission denied"
                in plain.stderr
            ), plain.stderr
            err = server.start().stderr.decode()
            assert err.startswith(f"token store {home}/.local/state/pizauth/tokens cannot be ")
            assert "token_store_key_cmd exited with status" in err
            server.stop()
            return
        assert made.returncode == 0, made.stderr
    try:
        assert server.start().stderr == b""  # the key is there and long enough
        token = server.login()
        store = home / ".local" / "state" / "pizauth" / "tokens"
        wait_for(store.exists, 5, "the store")
        assert store.stat().st_uid == user.pw_uid
        server.stop()
        requests = len(provider.token_requests)
        assert server.start().stderr == b""
        assert server.token() == token  # back, with no new login
        assert len(provider.token_requests) == requests  # and no provider round trip
    finally:
        server.stop()
        if recipe.key_cmd.startswith("pass "):
            as_user(user, home, ["gpgconf", "--kill", "gpg-agent"])
