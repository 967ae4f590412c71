"""What the token store promises, tried as a user would: a store that could not be opened
is said where `pizauth server` was typed; a revoke made while the store was closed sticks
across restarts; a stored or dumped token goes back only to an account whose settings
still send it where it came from (docs/token-store.md)."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, Client, Pizauth, Provider, wait_for
from server_harness import start_detached as harness_start_detached
from test_store_system import (
    TWO_ACCOUNTS,
    asides,
    configure,
    logged_in_store,
    new_key,
    notified,
    status,
    store_path,
    stored,
    wait_stored,
)

from pizauth.priv.state.secmem import Secret
from pizauth.priv.storage import dump, store


def revoked_list(pizauth: Pizauth) -> Path:
    return store_path(pizauth).with_name("tokens.revoked")


def start_detached(pizauth: Pizauth) -> subprocess.CompletedProcess[bytes]:
    """The harness's start_detached, which must succeed: a store problem is said, and the
    server starts anyway."""
    result = harness_start_detached(pizauth)
    assert result.returncode == 0, result.stderr
    return result


# -- said at start ----------------------------------------------------------------------------


def test_a_store_that_opens_says_nothing(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth)
    result = start_detached(pizauth)
    assert result.stderr == b""
    assert notified(pizauth) == ""
    assert stored(store_path(pizauth), key)["acct"] is not None


def test_a_failing_key_command_is_said_at_start(pizauth: Pizauth) -> None:
    logged_in_store(pizauth)
    old = store_path(pizauth).read_bytes()
    configure(pizauth, key_cmd="echo the vault is locked >&2; echo more >&2; exit 3")
    err = start_detached(pizauth).stderr.decode()
    assert err == (
        f"token store {store_path(pizauth)} not opened, starting without its tokens: "
        "token_store_key_cmd exited with status 3: the vault is locked "
        "(it is tried again before the next write)\n"
    )
    assert err.strip() in notified(pizauth)  # error_notify_cmd heard the same
    assert store_path(pizauth).read_bytes() == old and asides(pizauth) == []


@pytest.mark.parametrize("with_file", [False, True], ids=["no store yet", "a store"])
def test_a_short_key_is_said_at_start_not_after_the_first_login(
    pizauth: Pizauth, with_file: bool
) -> None:
    if with_file:
        logged_in_store(pizauth)
    else:
        configure(pizauth)
    (pizauth.tmp / "key").write_bytes(b"0123456789abcdef\n")  # 16 bytes
    err = start_detached(pizauth).stderr.decode()
    short = "token_store_key_cmd printed 16 bytes: the key must be at least 32 bytes"
    assert short in err
    assert err.startswith(f"token store {store_path(pizauth)} ")
    assert short in notified(pizauth)
    assert store_path(pizauth).exists() == with_file  # nothing written, nothing moved
    assert asides(pizauth) == []


@pytest.mark.parametrize("damage", ["wrong key", "damaged file", "not a store"])
def test_a_store_that_does_not_open_is_said_at_start_with_where_it_went(
    pizauth: Pizauth, damage: str
) -> None:
    logged_in_store(pizauth)
    path = store_path(pizauth)
    if damage == "wrong key":
        new_key(pizauth)
    elif damage == "damaged file":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x80
        path.write_bytes(data)
    else:
        path.write_bytes(b"my notes\n")
    before = path.read_bytes()
    err = start_detached(pizauth).stderr.decode()
    [aside] = asides(pizauth)
    assert aside.read_bytes() == before
    why = (
        "not a pizauth token store"
        if damage == "not a store"
        else "token store does not open with this key (wrong key, or the file is damaged)"
    )
    assert err == (
        f"token store {path} not opened: {why}: starting without its tokens; "
        f"the file is kept as {aside}\n"
    )
    assert f"kept as {aside}" in notified(pizauth)


def test_the_foreground_log_gets_the_notice_once(pizauth: Pizauth) -> None:
    """In the foreground the log is stderr: the notice is not printed a second time."""
    logged_in_store(pizauth)
    new_key(pizauth)
    pizauth.start()
    wait_for(lambda: "kept as" in notified(pizauth), 5, "the notice")
    assert pizauth.log().count("kept as") == 1


# -- revokes stick ----------------------------------------------------------------------------


def test_a_revoke_while_the_store_is_closed_sticks_across_restarts(pizauth: Pizauth) -> None:
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    plaintext = store.open_sealed(store_path(pizauth).read_bytes(), Secret(key))
    [(_, old)] = [v for n, v in dump.decode(plaintext).accounts.items() if n == "other"]
    assert old is not None and old.refresh_token is not None
    old_access, old_refresh = bytes(old.access_token.view()), bytes(old.refresh_token.view())

    (pizauth.tmp / "key").rename(pizauth.tmp / "key.away")  # the key command fails
    pizauth.start()
    wait_for(lambda: "not opened" in notified(pizauth), 5, "a notice")
    assert pizauth.run("revoke", "other").returncode == 0
    # Remembered beside the store: a name and a time, no token, private.
    listed = revoked_list(pizauth)
    assert stat.S_IMODE(listed.stat().st_mode) == 0o600
    assert set(json.loads(listed.read_text())["revoked"]) == {"other"}
    assert old_access not in listed.read_bytes() and old_refresh not in listed.read_bytes()
    pizauth.stop()

    (pizauth.tmp / "key.away").rename(pizauth.tmp / "key")  # the key works again
    requests_before = len(pizauth.provider.token_requests)
    pizauth.start()
    assert status(pizauth).startswith("acct: Active access token")
    assert status(pizauth).endswith("other: No access token\n")
    assert (
        "token of other not restored from the store: it was revoked while the store "
        "could not be opened"
    ) in pizauth.log()
    # The store is rewritten without it, and the list is used up.
    wait_for(lambda: not revoked_list(pizauth).exists(), 5, "the list to be consumed")
    assert stored(store_path(pizauth), key)["other"] is None
    # The provider never saw the old token again.
    shown = pizauth.show("other")
    assert shown.returncode == 1 and b"authorised with URL" in shown.stderr
    after = pizauth.provider.token_requests[requests_before:]
    assert all(r.get("refresh_token") != old_refresh.decode() for r in after)
    assert old_access.decode() not in pizauth.run("show", "acct").stdout.decode()
    pizauth.stop()
    pizauth.start()
    assert status(pizauth).endswith("other: No access token\n")


def test_a_new_login_after_a_revoke_is_kept(pizauth: Pizauth) -> None:
    """The list only holds back tokens obtained before the revoke."""
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    (pizauth.tmp / "key").rename(pizauth.tmp / "key.away")
    pizauth.start()
    wait_for(lambda: "not opened" in notified(pizauth), 5, "a notice")
    assert pizauth.run("revoke", "other").returncode == 0
    (pizauth.tmp / "key.away").rename(pizauth.tmp / "key")
    token = pizauth.authorise("other")  # a new login; its write opens the store
    wait_stored(pizauth, key, "other", token)
    pizauth.stop()
    pizauth.start()
    assert pizauth.token("other") == token


def test_a_revoke_while_the_store_is_aside_is_kept_while_the_file_is(pizauth: Pizauth) -> None:
    """A file moved aside could be put back: the revoke must hold against it too."""
    key = logged_in_store(pizauth, TWO_ACCOUNTS)
    (pizauth.tmp / "key").rename(pizauth.tmp / "key.right")
    new_key(pizauth)  # a wrong key: the store is moved aside at start
    pizauth.start()
    [aside] = asides(pizauth)
    assert pizauth.run("revoke", "other").returncode == 0
    assert revoked_list(pizauth).exists()
    pizauth.stop()
    # The user puts the old file and key back, as docs/token-store.md says.
    aside.rename(store_path(pizauth))
    (pizauth.tmp / "key.right").rename(pizauth.tmp / "key")
    pizauth.start()
    assert status(pizauth).endswith("other: No access token\n")
    assert status(pizauth).startswith("acct: Active access token")
    wait_for(lambda: not revoked_list(pizauth).exists(), 5, "the list to be consumed")
    assert stored(store_path(pizauth), key)["other"] is None


# -- tokens go back only where they came from ---------------------------------------------------


@pytest.fixture
def second_provider() -> Iterator[Provider]:
    with Provider([Client(CLIENT_ID, CLIENT_SECRET)]) as p:
        yield p


def issuer_block(issuer: str) -> str:
    return (
        'account "acct" {\n'
        f'  issuer = "{issuer}";\n'
        f'  client_id = "{CLIENT_ID}";\n'
        f'  client_secret = "{CLIENT_SECRET}";\n'
        "}\n"
    )


def token_uri_block(pizauth: Pizauth, token_uri: str) -> str:
    return pizauth.account_block().replace(pizauth.provider.token_uri, token_uri)


def configure_block(pizauth: Pizauth, block: str) -> None:
    pizauth.write_config(
        accounts=block,
        globals_=(
            f'token_store = "{store_path(pizauth)}";\n'
            f'token_store_key_cmd = "cat {pizauth.tmp / "key"}";\n'
            'error_notify_cmd = "echo $PIZAUTH_MSG >> notified";\n'
        ),
    )


@pytest.mark.parametrize("setting", ["issuer", "token_uri"])
def test_a_stored_token_is_not_sent_to_a_new_endpoint(
    pizauth: Pizauth, second_provider: Provider, setting: str
) -> None:
    first, second = pizauth.provider, second_provider

    def block(p: Provider) -> str:
        return (
            issuer_block(p.issuer) if setting == "issuer" else token_uri_block(pizauth, p.token_uri)
        )

    key = new_key(pizauth)
    configure_block(pizauth, block(first))
    pizauth.start()
    token = pizauth.authorise()
    wait_stored(pizauth, key, "acct", token)
    pizauth.stop()

    configure_block(pizauth, block(second))
    pizauth.start()
    assert status(pizauth) == "acct: No access token\n"
    changed = "one of auth_flow, device_auth_uri, issuer" if setting == "issuer" else "token_uri"
    assert "token of acct not restored from the store: its settings changed since (" in (
        pizauth.log()
    )
    assert changed in pizauth.log() and "it needs a login" in pizauth.log()
    shown = pizauth.show()  # a login is what the account needs now
    assert shown.returncode == 1 and b"authorised with URL" in shown.stderr
    assert second.token_requests == []  # nothing of the old grant went to the new endpoint
    assert len(first.token_requests) == 1  # nor to the old one: only the first login


def test_a_dump_is_not_restored_into_an_account_with_another_issuer(
    pizauth: Pizauth, second_provider: Provider
) -> None:
    pizauth.write_config(accounts=issuer_block(pizauth.provider.issuer))
    pizauth.start()
    pizauth.authorise()
    dumped = pizauth.run("dump").stdout
    pizauth.stop()
    pizauth.write_config(accounts=issuer_block(second_provider.issuer))
    pizauth.start()
    result = pizauth.run("restore", input=dumped)
    assert result.returncode == 0
    assert status(pizauth) == "acct: No access token\n"
    assert "restore: token of acct not restored: its settings changed since" in pizauth.log()
    assert second_provider.token_requests == []
    # The same issuer takes it back, as before.
    pizauth.stop()
    pizauth.write_config(accounts=issuer_block(pizauth.provider.issuer))
    pizauth.start()
    assert pizauth.run("restore", input=dumped).returncode == 0
    assert status(pizauth).startswith("acct: Active access token")
