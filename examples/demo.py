"""Watch pizauth do its job end to end, on 127.0.0.1 only, with no real provider.

    python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/python examples/demo.py

It starts the local OAuth2 provider in examples/provider.py, a `pizauth server`
with its own configuration and runtime directory (your own pizauth, if any, is
not touched), runs `pizauth show` the way msmtp would, plays the browser, and
shows the token, a refresh and `pizauth status`, then shuts the server down.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provider import Client, Provider  # noqa: E402

PIZAUTH = str(Path(sys.executable).with_name("pizauth"))


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    print("$ pizauth " + " ".join(args))
    result = subprocess.run([PIZAUTH, *args], env=env, capture_output=True, text=True)
    for line in (result.stdout + result.stderr).splitlines():
        print("  " + line)
    return result


def browser_get(url: str) -> tuple[int, str, str]:
    """One browser step: (status, Location header, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    conn.request("GET", parts.path + "?" + parts.query, headers={"Host": parts.netloc})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, resp.getheader("Location") or "", body


def current_token(env: dict[str, str]) -> str | None:
    """What `pizauth show` prints, quietly; None while it has no token."""
    result = subprocess.run(
        [PIZAUTH, "show", "officesmtp"], env=env, capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def wait_until(condition, timeout: float = 10.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise SystemExit("demo: timed out")


def main() -> int:
    if not Path(PIZAUTH).exists():
        print(f"demo: {PIZAUTH} not found; install pizauth into this Python first:")
        print("  python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/python " + __file__)
        return 1
    # Removed at the end, with the demo's pizauth.conf and runtime directory in it.
    with tempfile.TemporaryDirectory(prefix="pizauth-demo-") as tmp:
        return demo(Path(tmp))


def demo(work: Path) -> int:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(work / "runtime"), "SHELL": "/bin/sh"}
    with Provider([Client("demo-client", "demo-secret")], expires_in=4) as provider:
        conf = work / "pizauth.conf"
        # Readable by you alone, as the README asks of yours: it holds a client secret.
        conf.touch(mode=0o600)
        conf.write_text(
            f"""// A configuration like a real one, pointed at the local provider.
http_listen = "127.0.0.1:0";
https_listen = none;
account "officesmtp" {{
    auth_uri = "{provider.auth_uri}";
    token_uri = "{provider.token_uri}";
    client_id = "demo-client";
    client_secret = "demo-secret";
    scopes = ["offline_access", "https://outlook.office.com/SMTP.Send"];
    refresh_before_expiry = 2s;
}}
"""
        )
        step(f"pizauth.conf ({conf})")
        print(conf.read_text())
        step("Start the server (it detaches once it answers commands)")
        if run(env, "server", "-c", str(conf)).returncode:
            return 1
        try:
            step("A mail client asks for a token: none yet, so pizauth gives a URL")
            run(env, "show", "officesmtp")
            step("The user takes the URL alone, for the browser")
            url = run(env, "login", "officesmtp").stdout.strip()
            step("The user opens the URL; the provider signs them in and redirects")
            status, location, _ = browser_get(url)
            print(f"  provider: {status}, redirect to {location.split('?')[0]}?code=...&state=...")
            status, _, body = browser_get(location)
            print(f"  pizauth's redirect listener: {status}: {body}")
            step("pizauth has exchanged the code (PKCE S256); the mail client retries")
            token = wait_until(lambda: current_token(env))
            run(env, "show", "officesmtp")
            step("The token expires in 4 s; pizauth refreshes it 2 s before, by itself")
            renewed = wait_until(lambda: (t := current_token(env)) != token and t)
            run(env, "show", "officesmtp")
            run(env, "status")
            grants = [r["grant_type"] for r in provider.token_requests]
            print(f"\n  the provider saw: {', '.join(grants)}")
            print(f"  token valid at the provider: {provider.is_valid_access_token(renewed)}")
        finally:
            step("Shut down: every token is wiped, nothing was written to disk")
            run(env, "shutdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
