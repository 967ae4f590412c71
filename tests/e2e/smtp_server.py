"""The SMTP server of the end-to-end suite: aiosmtpd accepting XOAUTH2 only.

    python smtp_server.py --introspect URL --client-id ID --client-secret SECRET --log FILE

Listens on 127.0.0.1 on a port of the kernel's choosing and prints one JSON line
{"port": N} on stdout once it accepts connections. A bearer token is accepted only when
the provider's introspection endpoint says it is active and belongs to the user named
in the XOAUTH2 string. Every authentication attempt and every message received is
appended to the log file as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
import time
import urllib.parse
import urllib.request

from aiosmtpd.smtp import SMTP, AuthResult


class Handler:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def record(self, **event: object) -> None:
        with open(self.args.log, "a") as f:
            f.write(json.dumps({"at": time.time(), **event}) + "\n")

    def introspect(self, token: str) -> dict:
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        credentials = f"{self.args.client_id}:{self.args.client_secret}".encode()
        request = urllib.request.Request(
            self.args.introspect,
            data=body,
            headers={
                "Authorization": "Basic " + base64.b64encode(credentials).decode(),
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.load(response)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            response = await server.challenge_auth("")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)
            blob = response
        # user=USER ^A auth=Bearer TOKEN ^A ^A
        parts = blob.decode(errors="replace").split("\x01")
        fields = dict(part.split("=", 1) for part in parts if "=" in part)
        user = fields.get("user", "")
        auth = fields.get("auth", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, self.introspect, token)
        except Exception as e:  # the provider is down or answered nonsense
            self.record(event="auth", user=user, token=token, error=repr(e), accepted=False)
            answer = {"active": False}
        accepted = bool(token) and answer.get("active") is True and answer.get("sub") == user
        self.record(
            event="auth",
            user=user,
            token=token,
            active=answer.get("active"),
            sub=answer.get("sub"),
            accepted=accepted,
        )
        if accepted:
            return AuthResult(success=True, auth_data=token)
        # RFC-less but universal XOAUTH2 failure: a JSON challenge, then 535.
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"})
        await server.challenge_auth(error)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        self.record(
            event="message",
            token=session.auth_data,
            mail_from=envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            data=envelope.content.decode(errors="replace"),
        )
        return "250 2.0.0 Message accepted"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--introspect", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    handler = Handler(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="smtp.e2e.test",
            auth_required=True,
            # Everything is on 127.0.0.1: XOAUTH2 without TLS, as msmtp's `tls off`.
            auth_require_tls=False,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
        ),
        "127.0.0.1",
        0,
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
