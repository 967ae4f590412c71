"""A token endpoint that answers the code exchange with the worst it can: the server
survives, other accounts keep their tokens, and the account can log in again."""

from __future__ import annotations

import json

from conftest import URL_PREFIX, Pizauth, wait_for
from server_harness import follow_login

from pizauth import limits


def conf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def unharmed(pizauth: Pizauth, other: str) -> None:
    assert pizauth.proc is not None and pizauth.proc.poll() is None, pizauth.log()
    assert "internal error" not in pizauth.log()
    assert pizauth.show("other").stdout.decode() == other + "\n"


def test_hostile_code_exchange_replies(pizauth: Pizauth) -> None:
    errors = pizauth.tmp / "errors"
    pizauth.write_config(
        accounts=pizauth.account_block("acct") + pizauth.account_block("other"),
        globals_="error_notify_cmd = "
        + conf_string(f"printf '%s|%s\\n' \"$PIZAUTH_ACCOUNT\" \"$PIZAUTH_MSG\" >> '{errors}'")
        + ";",
    )
    pizauth.start()
    other = pizauth.authorise("other")

    # (a) Exactly 1 MiB, nearly all of it a refresh token.
    head = '{"access_token": "at-big", "token_type": "Bearer", "refresh_token": "'
    huge = head + "r" * (limits.MAX_REPLY_BODY - len(head) - 2) + '"}'
    assert len(huge) == limits.MAX_REPLY_BODY and len(huge) - len(head) > 1_048_400
    pizauth.provider.script_token_responses((200, huge))
    status, body = follow_login(pizauth)
    assert status == 200, body
    refused = "acct|Authentication for acct failed: token longer than 16384 bytes refused"
    wait_for(lambda: refused in lines(errors), 15, "the oversized token to be refused")
    unharmed(pizauth, other)
    assert pizauth.show().stderr.startswith(URL_PREFIX.encode())  # a new login can start

    # (b) A NUL in error_description, on its way to error_notify_cmd.
    desc = json.dumps({"error": "invalid_grant", "error_description": "code\u0000expired"})
    pizauth.provider.script_token_responses((400, desc))
    status, body = follow_login(pizauth)
    assert status == 200, body
    wait_for(lambda: len(lines(errors)) == 2, 15, "error_notify_cmd")
    assert lines(errors)[1] == (
        "acct|Authentication for acct failed: HTTP code 400 (invalid_grant: code\ufffdexpired)"
    )
    unharmed(pizauth, other)

    # (c) expires_in of 400 digits: accepted, clamped, and the account still refreshes.
    forever = (
        '{"access_token": "at-forever", "token_type": "Bearer", "refresh_token": "rt-f", '
        '"expires_in": 1'
    )
    pizauth.provider.script_token_responses((200, forever + "0" * 399 + "}"))
    status, body = follow_login(pizauth)
    assert status == 200, body
    wait_for(lambda: pizauth._token("acct") == "at-forever", 15, "the clamped token")
    after = '{"access_token": "at-after", "token_type": "Bearer", "expires_in": 3600}'
    pizauth.provider.script_token_responses((200, after))
    assert pizauth.run("refresh", "acct").returncode == 0
    wait_for(lambda: pizauth._token("acct") == "at-after", 15, "a refresh after it")
    unharmed(pizauth, other)
