"""Processes and helpers of the end-to-end suite (its fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import PIZAUTH, Server, free_port, wait_for

E2E = Path(__file__).resolve().parent
__all__ = ["free_port", "wait_for"]  # the shared ones, re-exported for the tests
ACCOUNT = "mail"  # pizauth's account name
USER = "alice"  # the provider's account, the SMTP and IMAP user
PIZAUTH_CLIENT = ("pizauth-e2e", "pizauth-e2e-secret-9d2a")
SMTPD_CLIENT = ("smtpd", "smtpd-introspection-secret-41be")
DOVECOT_CLIENT = ("dovecot", "dovecot-introspection-secret-7c03")
# A public client for the device flow (no secret, as Microsoft's "public client flows").
DEVICE_CLIENT_ID = "pizauth-e2e-device"
# A confidential client that authenticates with HTTP Basic, oidc-provider's default.
BASIC_CLIENT = ("pizauth-e2e-basic", "pizauth-e2e-basic-secret-3e71")
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Access tokens live this long; pizauth refreshes them REFRESH_BEFORE_EXPIRY earlier.
ACCESS_TOKEN_TTL = 20
REFRESH_BEFORE_EXPIRY = 10
# The scopes pizauth asks for; the provider drops the one it does not know.
SCOPES = ["openid", "offline_access", "email", "https://mail.e2e.test/unknown"]
GRANTED_SCOPE = "openid offline_access email"
# The exact browser command line of the issue.
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync"
)
SBIN = ["/usr/local/sbin", "/usr/sbin", "/sbin"]


def scope_list() -> str:
    """SCOPES as a pizauth.conf list."""
    return ", ".join(f'"{s}"' for s in SCOPES)


def which(program: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(program, path=path)


def need(*programs: str) -> dict[str, str]:
    """The programs' paths; skip the test when one is missing."""
    found = {}
    for program in programs:
        path = which(program)
        if path is None:
            pytest.skip(f"{program} is not installed (tests/e2e/setup.sh installs it)")
        found[program] = path
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without proxies (everything is local), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: missing)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # a line being written right now
            pass
    return events


def kill_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process group started with `proc`, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
            # The leader is gone; make sure none of its group outlives it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=timeout)


def kill_marked(marker: str) -> list[int]:
    """SIGKILL, by pid, processes whose command line contains `marker` (a unique temporary
    path of ours), such as a browser that outlived the hook that started it."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except ProcessLookupError:
                pass
    return killed


def start_service(
    argv: list[str], name: str, workdir: Path, timeout: float = 30.0, **kwargs
) -> tuple[subprocess.Popen, dict]:
    """Start a program that prints one JSON line on stdout when it is ready. Skips the
    test (with its stderr) when it cannot start."""
    stderr_path = workdir / f"{name}.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            **kwargs,
        )
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not selector.select(remaining):
            kill_group(proc)
            pytest.skip(f"{name} did not start within {timeout} s\n{tail(stderr_path)}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            kill_group(proc)
            pytest.skip(f"{name} exited at start ({proc.returncode})\n{tail(stderr_path)}")
        buffer += chunk
    selector.close()
    proc.stdout.close()
    return proc, json.loads(buffer.split(b"\n", 1)[0])


class OIDCProvider:
    """The running oidc-provider: its endpoints, its event log and a few questions to it."""

    def __init__(self, issuer: str, events: Path) -> None:
        self.issuer = issuer
        self.auth_uri = f"{issuer}/auth"
        self.token_uri = f"{issuer}/token"
        self.introspection_uri = f"{issuer}/token/introspection"
        self.events_path = events

    def metadata(self) -> dict:
        """The provider's discovery document, as any client would fetch it."""
        url = f"{self.issuer}/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def events(self, kind: str | None = None, since: float = 0.0, **match) -> list[dict]:
        return [
            e
            for e in read_jsonl(self.events_path)
            if (kind is None or e["event"] == kind)
            and e["at"] >= since
            and all(e.get(k) == v for k, v in match.items())
        ]

    def deny_next_consent(self) -> None:
        request = urllib.request.Request(f"{self.issuer}/e2e/deny-next", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def introspect(self, token: str) -> dict:
        """Ask the provider about a token, as the SMTP server does."""
        body = urllib.parse.urlencode({"token": token}).encode()
        request = urllib.request.Request(self.introspection_uri, data=body)
        credentials = f"{SMTPD_CLIENT[0]}:{SMTPD_CLIENT[1]}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def describe(self) -> str:
        return tail(self.events_path, 60)


def run_provider(workdir: Path, access_token_ttl: int) -> Iterator[OIDCProvider]:
    """oidc-provider (provider.mjs) with every client of the suite, until the generator
    is closed."""
    node = need("node")["node"]
    if not (E2E / "node_modules" / "oidc-provider" / "package.json").exists():
        pytest.skip("oidc-provider is not installed: run `npm ci` in tests/e2e (setup.sh does)")
    resource_server = {
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": [],
        "response_types": [],
        "redirect_uris": [],
    }
    config = {
        "events": str(workdir / "provider-events.jsonl"),
        "account": USER,
        "access_token_ttl": access_token_ttl,
        "clients": [
            {
                "client_id": PIZAUTH_CLIENT[0],
                "client_secret": PIZAUTH_CLIENT[1],
                # A native app: any port on the loopback redirect URI, path matched exactly.
                "application_type": "native",
                "redirect_uris": ["http://localhost/"],
                "token_endpoint_auth_method": "client_secret_post",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            },
            {
                # The device flow's public client: no secret, no redirect.
                "client_id": DEVICE_CLIENT_ID,
                "application_type": "native",
                "token_endpoint_auth_method": "none",
                "grant_types": [DEVICE_CODE_GRANT, "refresh_token"],
                "response_types": [],
                "redirect_uris": [],
            },
            {
                # A confidential client with oidc-provider's default client_secret_basic.
                "client_id": BASIC_CLIENT[0],
                "client_secret": BASIC_CLIENT[1],
                "application_type": "native",
                "redirect_uris": ["http://localhost/"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            },
            {"client_id": SMTPD_CLIENT[0], "client_secret": SMTPD_CLIENT[1], **resource_server},
            {
                "client_id": DOVECOT_CLIENT[0],
                "client_secret": DOVECOT_CLIENT[1],
                **resource_server,
            },
        ],
    }
    config_path = workdir / "provider.json"
    config_path.write_text(json.dumps(config, indent=2))
    proc, ready = start_service(
        [node, str(E2E / "provider.mjs"), str(config_path)],
        "provider",
        workdir,
        cwd=E2E,
        env=clean_env(),
    )
    try:
        yield OIDCProvider(ready["issuer"], workdir / "provider-events.jsonl")
    finally:
        kill_group(proc)


class SMTPServer:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in read_jsonl(self.log) if kind is None or e["event"] == kind]


SASL_PLUGIN_GLOBS = [
    "/usr/lib/*/sasl2/libkdexoauth2.so*",
    "/usr/lib/sasl2/libkdexoauth2.so*",
    "/usr/lib64/sasl2/libkdexoauth2.so*",
]


class IMAPServer:
    def __init__(self, port: int, root: Path, mail_uid: int, mail_gid: int) -> None:
        self.port = port
        self.root = root
        self.log = root / "dovecot.log"
        self.maildir = root / "home" / USER / "Maildir"
        self.mail_uid = mail_uid
        self.mail_gid = mail_gid
        self.count = 0

    def deliver(self, subject: str) -> None:
        """Put a message straight into the user's mailbox on the server."""
        self.count += 1
        name = f"{int(time.time())}.M{self.count}P{os.getpid()}.e2e"
        tmp = self.maildir / "tmp" / name
        tmp.write_text(
            f"From: bob@e2e.test\nTo: {USER}@e2e.test\nSubject: {subject}\n"
            f"Message-ID: <e2e-{self.count}-{os.getpid()}@e2e.test>\n\n{subject}\n"
        )
        os.chown(tmp, self.mail_uid, self.mail_gid)
        tmp.rename(self.maildir / "new" / name)


def imap_greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"* OK")
    except OSError:
        return False


class Pizauth(Server):
    """The shared test server (tests/server_harness.py) whose `auth_notify_cmd` is headless
    Chromium, with msmtp and mbsync configured to take their tokens from it."""

    def __init__(self, tmp: Path, provider: OIDCProvider, chromium: str) -> None:
        env = clean_env(
            XDG_RUNTIME_DIR=str(tmp / "runtime"),
            XDG_CONFIG_HOME=str(tmp / "config"),
            HOME=str(tmp),
            SHELL="/bin/sh",
            PATH=os.pathsep.join([str(Path(PIZAUTH).parent), os.environ.get("PATH", "")]),
        )
        super().__init__(tmp, provider, env)  # type: ignore[arg-type]
        self.chromium = chromium
        # What write_config puts in: by default the code-flow account of the suite.
        self.account = ACCOUNT
        self.account_options: str | None = None  # the account block's body, if not the default
        self.global_options = ""
        self.http_listen = '"127.0.0.1:0"'
        self.auth_notify = "browser.sh"

    # -- configuration --------------------------------------------------------------

    def write_config(self) -> None:
        # The hooks are small scripts in the server's working directory (its cwd).
        (self.tmp / "browser.sh").write_text(
            "# pizauth's auth_notify_cmd: the user opens the URL in a browser.\n"
            'profile=$(mktemp -d "$PWD/chromium-profile.XXXXXX")\n'
            'printf "%s start %s %s\\n" "$(date +%s.%N)" "$PIZAUTH_ACCOUNT" "$PIZAUTH_URL"'
            " >> browser.log\n"
            f"{self.chromium} {CHROMIUM_FLAGS} "
            '--user-data-dir="$profile" --dump-dom "$PIZAUTH_URL" '
            '> "$profile.dom" 2> "$profile.stderr"\n'
            "status=$?\n"
            'printf "%s exit %s %s\\n" "$(date +%s.%N)" "$status" "$profile" >> browser.log\n'
        )
        (self.tmp / "device-browser.sh").write_text(
            "# pizauth's auth_notify_cmd for the device flow: the user opens the URL pizauth\n"
            "# gave; if it does not carry the code, they type the code pizauth gave, which is\n"
            "# what ?user_code= on the verification page does.\n"
            'profile=$(mktemp -d "$PWD/chromium-profile.XXXXXX")\n'
            "url=$PIZAUTH_URL\n"
            "case $url in\n"
            "  *[?\\&]user_code=*) ;;\n"
            '  *\\?*) url="$url&user_code=$PIZAUTH_USER_CODE" ;;\n'
            '  *) url="$url?user_code=$PIZAUTH_USER_CODE" ;;\n'
            "esac\n"
            'printf "%s start %s %s\\n" "$(date +%s.%N)" "$PIZAUTH_ACCOUNT" "$PIZAUTH_URL"'
            " >> browser.log\n"
            'printf "%s code %s\\n" "$(date +%s.%N)" "$PIZAUTH_USER_CODE" >> browser.log\n'
            f"{self.chromium} {CHROMIUM_FLAGS} "
            '--user-data-dir="$profile" --dump-dom "$url" '
            '> "$profile.dom" 2> "$profile.stderr"\n'
            "status=$?\n"
            'printf "%s exit %s %s\\n" "$(date +%s.%N)" "$status" "$profile" >> browser.log\n'
        )
        (self.tmp / "error.sh").write_text(
            'printf "%s\\t%s\\n" "$PIZAUTH_ACCOUNT" "$PIZAUTH_MSG" >> errors.log\n'
        )
        (self.tmp / "event.sh").write_text(
            'printf "%s %s\\n" "$PIZAUTH_ACCOUNT" "$PIZAUTH_EVENT" >> events.log\n'
        )
        self.conf.write_text(
            f"http_listen = {self.http_listen};\n"
            "https_listen = none;\n"
            'startup_cmd = "touch ready";\n'
            f'auth_notify_cmd = "sh {self.auth_notify}";\n'
            'error_notify_cmd = "sh error.sh";\n'
            'token_event_cmd = "sh event.sh";\n'
            f"{self.global_options}"
            f'account "{self.account}" {{\n'
            f"{self.account_options or self.code_flow_options()}"
            "}\n"
        )

    def code_flow_options(self) -> str:
        return (
            f'  auth_uri = "{self.provider.auth_uri}";\n'
            f'  token_uri = "{self.provider.token_uri}";\n'
            f'  client_id = "{PIZAUTH_CLIENT[0]}";\n'
            f'  client_secret = "{PIZAUTH_CLIENT[1]}";\n'
            f"  scopes = [{scope_list()}];\n"
            # oidc-provider keeps offline_access (so issues a refresh token) only with
            # prompt=consent, as Google does.
            '  auth_uri_fields = {"prompt": "consent"};\n'
            f"  refresh_before_expiry = {REFRESH_BEFORE_EXPIRY}s;\n"
        )

    # -- the server -----------------------------------------------------------------

    def start(self) -> None:  # type: ignore[override]
        self.write_config()  # type: ignore[call-arg]
        super().start("-vvvv", timeout=15)

    def stop(self) -> None:
        super().stop()
        kill_marked(f"{self.tmp}/")  # a browser that outlived its hook

    def show(self, account: str | None = None, *flags: str) -> subprocess.CompletedProcess[bytes]:
        return self.run("show", *flags, account or self.account)

    def token(self) -> str | None:  # type: ignore[override]
        return self._token(self.account)

    # -- what the hooks saw ---------------------------------------------------------

    def browser_runs(self) -> list[dict]:
        """One dict per Chromium run: account, url, and once it ended, status and profile."""
        runs: list[dict] = []
        path = self.tmp / "browser.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            at, what, rest = line.split(" ", 2)
            if what == "start":
                account, url = rest.split(" ", 1)
                runs.append({"account": account, "url": url, "started": float(at)})
            elif what == "code":
                runs[-1]["user_code"] = rest
            else:
                status, profile = rest.split(" ", 1)
                runs[-1].update(status=int(status), profile=profile)
        return runs

    def errors(self) -> list[str]:
        path = self.tmp / "errors.log"
        return path.read_text().splitlines() if path.exists() else []

    def token_events(self) -> list[str]:
        path = self.tmp / "events.log"
        return path.read_text().splitlines() if path.exists() else []

    def diagnostics(self) -> str:
        parts = [tail(self.tmp / "server.log"), tail(self.tmp / "browser.log")]
        for run in self.browser_runs():
            if "profile" in run:
                parts.append(tail(Path(run["profile"] + ".dom"), 10))
                parts.append(tail(Path(run["profile"] + ".stderr"), 10))
        parts += [tail(self.tmp / "errors.log"), tail(self.tmp / "events.log")]
        parts.append(self.provider.describe())
        return "\n".join(parts)

    # -- the user's view ------------------------------------------------------------

    def login(self) -> str:
        """`pizauth show` as a mail client would; the browser started by auth_notify_cmd
        does the rest. Returns the access token `show` then prints."""
        result = self.show()
        assert result.returncode == 1, result
        assert result.stderr.decode().startswith(
            "ERROR - Access token unavailable until authorised with URL "
        ), result.stderr
        return wait_for(self.token, 30, "a token after the browser's login", self.diagnostics)

    # -- mail clients ---------------------------------------------------------------

    def msmtp(
        self, smtp: SMTPServer, subject: str, passwordeval: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        rc = self.tmp / f"msmtprc-{subject.replace(' ', '-')}"
        rc.write_text(
            "defaults\n"
            f"logfile {self.tmp}/msmtp.log\n"
            "account e2e\n"
            "host 127.0.0.1\n"
            f"port {smtp.port}\n"
            f"from {USER}@e2e.test\n"
            f"user {USER}\n"
            "auth xoauth2\n"
            f'passwordeval "{passwordeval or f"pizauth show {self.account}"}"\n'
            "tls off\n"
            "account default : e2e\n"
        )
        rc.chmod(0o600)
        message = f"From: {USER}@e2e.test\nTo: bob@e2e.test\nSubject: {subject}\n\n{subject}\n"
        return subprocess.run(
            ["timeout", "30", "msmtp", "-v", "-C", str(rc), "bob@e2e.test"],
            input=message.encode(),
            capture_output=True,
            env=self.env,
            cwd=self.tmp,
            timeout=40,
            start_new_session=True,
        )

    def mbsync_config(self, imap: IMAPServer, name: str, passcmd: str | None = None) -> Path:
        local = self.tmp / f"maildir-{name}"
        local.mkdir(exist_ok=True)
        rc = self.tmp / f"mbsyncrc-{name}"
        rc.write_text(
            "IMAPAccount e2e\n"
            "Host 127.0.0.1\n"
            f"Port {imap.port}\n"
            f"User {USER}\n"
            f'PassCmd "{passcmd or f"pizauth show {self.account}"}"\n'
            "AuthMechs XOAUTH2\n"
            "SSLType None\n"
            "\n"
            "IMAPStore remote\n"
            "Account e2e\n"
            "\n"
            "MaildirStore local\n"
            f"Path {local}/\n"
            f"Inbox {local}/INBOX\n"
            "\n"
            "Channel e2e\n"
            "Far :remote:\n"
            "Near :local:\n"
            "Patterns INBOX\n"
            "Create Near\n"
            "SyncState *\n"
        )
        return rc

    def mbsync(self, imap: IMAPServer, name: str) -> subprocess.CompletedProcess[bytes]:
        """mbsync under `timeout`: with a rejected token it would wait forever."""
        rc = self.mbsync_config(imap, name)
        return subprocess.run(
            ["timeout", "30", "mbsync", "-V", "-c", str(rc), "e2e"],
            capture_output=True,
            env=self.env,
            cwd=self.tmp,
            timeout=40,
            start_new_session=True,
        )

    def synced_subjects(self, name: str) -> list[str]:
        subjects = []
        for path in sorted((self.tmp / f"maildir-{name}" / "INBOX").glob("*/*")):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("Subject: "):
                    subjects.append(line[len("Subject: ") :])
        return subjects
