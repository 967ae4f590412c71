"""Harness for the end-to-end suite: pizauth among real, independently written programs.

The chain, all on 127.0.0.1:

* the certified OpenID provider `oidc-provider` (npm, run by provider.mjs) is the
  authorisation server;
* Debian's headless `chromium`, run by pizauth's `auth_notify_cmd`, is the user
  (browser.sh for the code flow; device-browser.sh opens the device flow's verification
  page with the code pizauth handed to the hook);
* `msmtp` (`auth xoauth2`, `passwordeval "pizauth show mail"`) sends to an `aiosmtpd`
  server (smtp_server.py) that checks each bearer token at the provider;
* `mbsync` (`AuthMechs XOAUTH2`, `PassCmd "pizauth show mail"`, the kdexoauth2 SASL
  plugin) syncs from a private Dovecot whose `passdb oauth2` checks the token at the
  provider.

Each component is a fixture that skips, with the reason, the tests that need it when it
is not installed or does not start (tests/e2e/setup.sh installs everything). Every
process is started in its own process group, with a deadline, and killed at teardown.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    ACCESS_TOKEN_TTL,
    CHROMIUM_FLAGS,
    DOVECOT_CLIENT,
    E2E,
    SASL_PLUGIN_GLOBS,
    SMTPD_CLIENT,
    USER,
    IMAPServer,
    OIDCProvider,
    Pizauth,
    SMTPServer,
    clean_env,
    free_port,
    imap_greets,
    kill_group,
    kill_marked,
    need,
    run_provider,
    start_service,
    tail,
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A temporary directory that Dovecot's unprivileged processes may traverse
    (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pizauth-e2e-"))
    path.chmod(0o755)
    yield path
    kill_marked(f"{path}/")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def oidc_provider(workdir: Path) -> Iterator[OIDCProvider]:
    yield from run_provider(workdir, ACCESS_TOKEN_TTL)


@pytest.fixture(scope="module")
def browser(workdir: Path) -> str:
    """Headless Chromium, checked once: it must load a page and print its DOM."""
    chromium = need("chromium")["chromium"]
    profile = tempfile.mkdtemp(prefix="chromium-check-", dir=workdir)
    page = workdir / "check.html"
    page.write_text("<p>chromium-works</p>")
    argv = [chromium, *CHROMIUM_FLAGS.split(), f"--user-data-dir={profile}"]
    try:
        result = subprocess.run(
            [*argv, "--dump-dom", page.as_uri()],
            capture_output=True,
            timeout=60,
            env=clean_env(HOME=str(workdir)),
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        kill_marked(f"{profile}")
        pytest.skip("chromium did not load a local page within 60 s")
    if b"chromium-works" not in result.stdout:
        stderr = result.stderr.decode(errors="replace")[-2000:]
        pytest.skip(f"chromium does not work here: {stderr}")
    return chromium


@pytest.fixture(scope="module")
def smtp_server(workdir: Path, oidc_provider: OIDCProvider) -> Iterator[SMTPServer]:
    need("msmtp")
    if importlib.util.find_spec("aiosmtpd") is None:
        pytest.skip("aiosmtpd is not installed in this Python (tests/e2e/setup.sh installs it)")
    log = workdir / "smtp.jsonl"
    proc, ready = start_service(
        [
            sys.executable,
            str(E2E / "smtp_server.py"),
            "--introspect",
            oidc_provider.introspection_uri,
            "--client-id",
            SMTPD_CLIENT[0],
            "--client-secret",
            SMTPD_CLIENT[1],
            "--log",
            str(log),
        ],
        "smtpd",
        workdir,
        env=clean_env(),
    )
    yield SMTPServer(ready["port"], log)
    kill_group(proc)


@pytest.fixture(scope="module")
def imap_server(workdir: Path, oidc_provider: OIDCProvider) -> Iterator[IMAPServer]:
    dovecot = need("dovecot", "mbsync")["dovecot"]
    if not any(glob.glob(g) for g in SASL_PLUGIN_GLOBS):
        pytest.skip(
            "the XOAUTH2 SASL plugin for mbsync is not installed "
            "(libsasl2-modules-kdexoauth2; tests/e2e/setup.sh installs it)"
        )
    root = workdir / "dovecot"
    if os.geteuid() == 0:
        # Dovecot refuses to run its login processes, or to access mail, as root.
        try:
            login_user = pwd.getpwnam("dovenull").pw_name
            internal_user = pwd.getpwnam("dovecot").pw_name
            mail_user = pwd.getpwnam("nobody")
        except KeyError as e:
            pytest.skip(f"Dovecot's system users are missing: {e}")
    else:
        me = pwd.getpwuid(os.geteuid())
        login_user = internal_user = me.pw_name
        mail_user = me
    for sub in ("base", "state", f"home/{USER}/Maildir/cur", f"home/{USER}/Maildir/new"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "home" / USER / "Maildir" / "tmp").mkdir(exist_ok=True)
    for dirpath, _, _ in os.walk(root / "home"):
        os.chown(dirpath, mail_user.pw_uid, mail_user.pw_gid)
    issuer = urllib.parse.urlsplit(oidc_provider.issuer)
    (root / "oauth2.conf.ext").write_text(
        "introspection_mode = post\n"
        f"introspection_url = http://{DOVECOT_CLIENT[0]}:{DOVECOT_CLIENT[1]}@{issuer.netloc}"
        "/token/introspection\n"
        "force_introspection = yes\n"
        "username_attribute = sub\n"
        "active_attribute = active\n"
        "active_value = true\n"
        "timeout_msecs = 10000\n"
    )
    proc = None
    for _attempt in range(3):  # the port we picked may be taken by the time Dovecot binds
        port = free_port()
        (root / "dovecot.conf").write_text(
            f"base_dir = {root}/base\n"
            f"state_dir = {root}/state\n"
            "instance_name = pizauth-e2e\n"
            "protocols = imap\n"
            "listen = 127.0.0.1\n"
            "ssl = no\n"
            "disable_plaintext_auth = no\n"
            "auth_mechanisms = xoauth2 oauthbearer\n"
            f"default_login_user = {login_user}\n"
            f"default_internal_user = {internal_user}\n"
            f"log_path = {root}/dovecot.log\n"
            "auth_verbose = yes\n"
            "auth_debug = yes\n"
            "mail_location = maildir:~/Maildir\n"
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {root}/oauth2.conf.ext\n"
            "}\n"
            "userdb {\n"
            "  driver = static\n"
            f"  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={root}/home/%u\n"
            "}\n"
            "service imap-login {\n"
            "  inet_listener imap {\n"
            "    address = 127.0.0.1\n"
            f"    port = {port}\n"
            "  }\n"
            "  inet_listener imaps {\n"
            "    port = 0\n"
            "  }\n"
            "}\n"
        )
        with open(root / "dovecot.stdout", "wb") as out:
            proc = subprocess.Popen(
                [dovecot, "-F", "-c", str(root / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=clean_env(),
            )
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if imap_greets(port):
                break
            time.sleep(0.1)
        if proc.poll() is None and imap_greets(port):
            break
        kill_group(proc)
        proc = None
    if proc is None:
        pytest.skip(
            f"dovecot did not start\n{tail(root / 'dovecot.stdout')}\n{tail(root / 'dovecot.log')}"
        )
    yield IMAPServer(port, root, mail_user.pw_uid, mail_user.pw_gid)
    kill_group(proc)


@pytest.fixture
def pizauth_e2e(tmp_path: Path, oidc_provider: OIDCProvider, browser: str) -> Iterator[Pizauth]:
    server = Pizauth(tmp_path, oidc_provider, browser)
    yield server
    server.stop()
    problems = server.log_problems()
    assert not problems, "the server logged an internal error:\n" + "\n".join(problems)
