"""`pizauth dump` and `pizauth restore` as a user runs them across a reboot."""

from __future__ import annotations

import struct
from pathlib import Path

from conftest import CLIENT_SECRET, PIZAUTH, Pizauth, wait_for
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pizauth.priv.storage.dump import KEY

EVENTS = 'token_event_cmd = "echo $PIZAUTH_ACCOUNT $PIZAUTH_EVENT >> events";'


def status(pizauth: Pizauth) -> str:
    return pizauth.run("status").stdout.decode()


def dump(pizauth: Pizauth) -> bytes:
    result = pizauth.run("dump")
    assert (result.returncode, result.stderr) == (0, b"")
    return result.stdout


def restore(pizauth: Pizauth, data: bytes) -> tuple[int, bytes, bytes]:
    result = pizauth.run("restore", input=data)
    return result.returncode, result.stdout, result.stderr


def reboot(pizauth: Pizauth) -> None:
    """Stop the server and start a new one with the same configuration."""
    pizauth.stop()
    pizauth.start()
    assert status(pizauth) == "acct: No access token\n"


def events(pizauth: Pizauth) -> list[str]:
    path = pizauth.tmp / "events"
    return path.read_text().splitlines() if path.exists() else []


def test_restore_on_a_new_server_needs_no_login(pizauth: Pizauth) -> None:
    pizauth.start()
    token = pizauth.authorise()
    data = dump(pizauth)
    # Obfuscated (docs/compatibility.md "Dump key"): the token and the client secret cannot be
    # grepped for.
    assert token.encode() not in data and CLIENT_SECRET.encode() not in data
    logins = len(pizauth.provider.authorize_requests)
    grants = len(pizauth.provider.token_requests)
    reboot(pizauth)
    assert restore(pizauth, data) == (0, b"", b"")
    shown = pizauth.show()
    assert (shown.returncode, shown.stdout.decode(), shown.stderr) == (0, token + "\n", b"")
    assert status(pizauth).startswith("acct: Active access token (obtained ")
    assert len(pizauth.provider.authorize_requests) == logins
    assert len(pizauth.provider.token_requests) == grants


def test_restore_never_overwrites_an_active_token(pizauth: Pizauth) -> None:
    pizauth.start()
    first = pizauth.authorise()
    old_dump = dump(pizauth)
    assert pizauth.run("refresh", "acct").returncode == 0
    second = wait_for(lambda: (t := pizauth._token("acct")) != first and t, 5, "new token")
    assert restore(pizauth, old_dump) == (0, b"", b"")
    assert pizauth._token("acct") == second


def seal(plaintext: bytes) -> bytes:
    nonce = bytes(12)
    return nonce + ChaCha20Poly1305(KEY).encrypt(nonce, plaintext, None)


def test_damaged_dumps_are_refused_clearly(pizauth: Pizauth) -> None:
    pizauth.start()
    pizauth.authorise()
    data = dump(pizauth)
    reboot(pizauth)
    flipped = bytearray(data)
    flipped[20] ^= 0x10
    plaintext = ChaCha20Poly1305(KEY).decrypt(data[:12], data[12:], None)
    for bad, message in [
        (b"", "Input too short: not a pizauth dump (0 bytes)"),
        (data[:11], "Input too short: not a pizauth dump (11 bytes)"),
        (
            data[:-1],
            "Restoring dump failed: not a pizauth dump, or damaged (authentication failed)",
        ),
        (
            bytes(flipped),
            "Restoring dump failed: not a pizauth dump, or damaged (authentication failed)",
        ),
        (
            data + b"\n",
            "Restoring dump failed: not a pizauth dump, or damaged (authentication failed)",
        ),
        (
            seal(struct.pack("<Q", 2) + plaintext[8:]),
            "Unknown dump version: made by an incompatible version of pizauth "
            "(dump version 2, this pizauth reads version 1)",
        ),
        (seal(plaintext + b"\0"), "Malformed dump: 1 trailing bytes"),
    ]:
        assert restore(pizauth, bad) == (1, b"", f"ERROR - {message}\n".encode()), message
    # More than any dump can be is refused before it reaches the server.
    from pizauth.priv.storage.dump import MAX_DUMP

    too_large = f"Input too large: not a pizauth dump (a dump is at most {MAX_DUMP} bytes)"
    assert restore(pizauth, bytes(MAX_DUMP + 1)) == (1, b"", f"ERROR - {too_large}\n".encode())
    assert status(pizauth) == "acct: No access token\n"
    # The good dump still works: the refusals were about the damage and nothing else.
    assert restore(pizauth, data) == (0, b"", b"")
    assert pizauth._token("acct")


def test_restored_token_raises_token_new(pizauth: Pizauth) -> None:
    pizauth.write_config(globals_=EVENTS)
    pizauth.start()
    pizauth.authorise()
    wait_for(lambda: events(pizauth) == ["acct token_new"], 5, "token_new after login")
    data = dump(pizauth)
    reboot(pizauth)
    (pizauth.tmp / "events").unlink()
    assert restore(pizauth, data) == (0, b"", b"")
    # docs/compatibility.md "Events on restore": the original was silent, so a token_event_cmd never
    # learnt of the token.
    wait_for(lambda: events(pizauth) == ["acct token_new"], 5, "token_new after restore")
    # Restoring onto the now Active account changes nothing and says nothing: events run
    # in order, so had it raised one, it would come before the revoke's.
    assert restore(pizauth, data) == (0, b"", b"")
    assert pizauth.run("revoke", "acct").returncode == 0
    expected = ["acct token_new", "acct token_revoked"]
    wait_for(lambda: events(pizauth) == expected, 5, "token_revoked")


def test_restored_token_is_refreshed_when_due(pizauth: Pizauth) -> None:
    pizauth.provider.expires_in = 2
    pizauth.write_config(accounts=pizauth.account_block(extra="refresh_before_expiry = 0s;"))
    pizauth.start()
    first = pizauth.authorise()
    data = dump(pizauth)
    reboot(pizauth)
    before = len(pizauth.provider.token_requests)
    assert restore(pizauth, data) == (0, b"", b"")
    # The restored refresh token is used by the provider's refresh grant at expiry.
    assert pizauth.provider.wait_for_token_requests(before + 1, timeout=10), "no refresh"
    grant = pizauth.provider.token_requests[before]
    assert grant["grant_type"] == "refresh_token"
    renewed = wait_for(lambda: (t := pizauth._token("acct")) != first and t, 5, "renewed")
    assert pizauth.provider.is_valid_access_token(renewed)
    assert pizauth.provider.errors == []


def test_token_event_cmd_dump_survives_a_reboot(pizauth: Pizauth) -> None:
    # The README's recipe, minus the encryption: every token event rewrites the dump.
    saved = pizauth.tmp / "pizauth.dump"
    recipe = f"{PIZAUTH} dump > {saved}.new && mv {saved}.new {saved}"
    pizauth.write_config(globals_=f'token_event_cmd = "{recipe}";')
    pizauth.start()
    token = pizauth.authorise()
    wait_for(lambda: saved.exists(), 5, "dump written by token_event_cmd")
    data = Path(saved).read_bytes()
    reboot(pizauth)
    assert restore(pizauth, data) == (0, b"", b"")
    assert pizauth._token("acct") == token
